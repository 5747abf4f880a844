//! A worker's `/metrics` on `metrics_addr`: a small HTTP server of its own, apart from the
//! sidecar, that answers only `GET /metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Brings gauges up to date before a scrape renders them.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A running `/metrics` server; stopped when dropped or by [`MetricsServer::stop`].
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Serves `metrics` at `GET /metrics` on `addr` (`host:port`; port 0 picks one), each scrape
/// after `refresh`.
pub async fn serve_metrics(
    addr: &str,
    metrics: Metrics,
    refresh: Refresh,
) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let scrape = move || {
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        async move {
            refresh().await;
            ([(CONTENT_TYPE, TEXT_FORMAT)], metrics.render())
        }
    };
    let router = Router::new().route("/metrics", get(scrape));
    let stop = CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(stopped);
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(%addr, "metrics ready");
    Ok(MetricsServer { addr, stop, task })
}
