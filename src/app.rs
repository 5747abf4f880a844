//! The composition root: builds the ledger, the agent runners and the service, connects to NATS,
//! and shuts down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::agent::Acpx;
use crate::config::Config;
use crate::domain::{Forge, Settings};
use crate::ledger::Ledger;

/// Connects to NATS with the configured credentials. Retries in the background when the server
/// is not up yet, and reconnects for ever after a loss.
pub async fn connect_nats(config: &Config, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::info!(event = %other, "NATS"),
            }
        });
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.nats_token {
        options = options.token(token.clone());
    }
    if let Some(creds) = &config.nats_creds_file {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
    }
    let servers = config
        .nats_servers()
        .map_err(|e| anyhow::anyhow!("NATS_URL: {e}"))?;
    options
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))
}

/// A worker id that names the host, unique per process.
pub fn worker_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &short[..8])
}

/// Builds the domain service from the configuration.
pub async fn build_forge(config: &Config, worker_id: String) -> anyhow::Result<Arc<Forge>> {
    let db_path = config.db_path.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::open(&db_path))
        .await?
        .context("opening the ledger")?;
    let acpx = Acpx::new(config.acpx_bin.clone(), config.acpx_ttl_secs);
    let forge =
        Forge::new(Settings::from_config(config, worker_id), ledger, acpx).with_context(|| {
            format!(
                "preparing the sessions directory {}",
                config.acpx_sessions_cwd.display()
            )
        })?;
    forge.startup_checks().await?;
    Ok(forge)
}

/// Runs a worker until `shutdown` completes, then drains: no new requests; in-flight turns and
/// runs get `shutdown_grace_secs`, then are cancelled and recorded as interrupted.
pub async fn run_worker(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let id = worker_id();
    let forge = build_forge(&config, id.clone()).await?;
    let client = connect_nats(&config, &format!("clawdforge-worker {id}")).await?;
    let worker = crate::nats::start(client.clone(), forge.clone(), &crate::nats::SUBJECTS)
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
    let background = spawn_lifecycle(&config, forge.clone());
    tracing::info!(worker_id = %id, nats = %config.nats_url, ledger = %config.db_path.display(), "worker ready");
    shutdown.await;
    tracing::info!("shutting down: no new requests");
    let tracker = worker.stop_intake().await;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        let cancelled = forge.cancel_running_turns().await;
        tracing::warn!(
            in_flight = tracker.len(),
            cancelled,
            "grace period over; cancelling what is left"
        );
        // A cancelled turn answers within a moment; give the replies a chance to go out.
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    background.abort();
    match forge
        .stopped("the worker shut down before this finished")
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(interrupted = n, "recorded unfinished work as interrupted"),
        Err(e) => tracing::error!(error = %e, "recording the shutdown"),
    }
    let _ = client.flush().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The worker's background jobs: its heartbeat, and the sweep (which one worker at a time runs).
fn spawn_lifecycle(config: &Config, forge: Arc<Forge>) -> tokio::task::JoinHandle<()> {
    let heartbeat = Duration::from_secs(config.worker_heartbeat_secs.max(1));
    let sweep = Duration::from_secs(config.sweep_interval_secs.max(1));
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(heartbeat);
        let mut sweeps = tokio::time::interval(sweep);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if let Err(e) = forge.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
                _ = sweeps.tick() => {
                    match forge.sweep().await {
                        Ok(r) if r.closed + r.deleted > 0 => {
                            tracing::info!(closed = r.closed, deleted = r.deleted, "sweep");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweep failed"),
                    }
                }
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
