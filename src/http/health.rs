//! `GET /healthz`: a worker's health as the sidecar sees it, with NATS and the workers.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Sidecar;
use crate::client::WorkerPing;
use crate::domain::Op;
use crate::wire;

/// How long `/healthz` collects the workers' answers to `$SRV.PING`.
const PING_WAIT: Duration = Duration::from_millis(250);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: a worker's Health (`forge.health`), plus what the sidecar sees of NATS and the
/// workers. When no worker answers, `ok` is false and the worker's fields are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SidecarHealth {
    /// A worker answered and is healthy.
    pub ok: bool,
    pub version: Option<String>,
    pub worker_id: Option<String>,
    pub acpx_present: Option<bool>,
    pub acpx_version: Option<String>,
    pub claude_present: Option<bool>,
    pub open_sessions: Option<u64>,
    pub ledger_writable: Option<bool>,
    pub confined: Option<bool>,
    pub landlock_abi: Option<u32>,
    /// The worker's configured agents, as it last checked them.
    pub agents: Option<Vec<wire::AgentHealth>>,
    /// The sidecar's NATS connection is up.
    pub nats_connected: bool,
    /// Worker instances that answered `$SRV.PING`.
    pub workers: u64,
}

impl SidecarHealth {
    pub fn new(health: Option<wire::Health>, nats_connected: bool, workers: u64) -> Self {
        match health {
            Some(h) => SidecarHealth {
                ok: h.ok,
                version: Some(h.version),
                worker_id: Some(h.worker_id),
                acpx_present: Some(h.acpx_present),
                acpx_version: h.acpx_version,
                claude_present: Some(h.claude_present),
                open_sessions: Some(h.open_sessions),
                ledger_writable: Some(h.ledger_writable),
                confined: Some(h.confined),
                landlock_abi: h.landlock_abi,
                agents: Some(h.agents),
                nats_connected,
                workers,
            },
            None => SidecarHealth {
                ok: false,
                version: None,
                worker_id: None,
                acpx_present: None,
                acpx_version: None,
                claude_present: None,
                open_sessions: None,
                ledger_writable: None,
                confined: None,
                landlock_abi: None,
                agents: None,
                nats_connected,
                workers,
            },
        }
    }
}

/// A worker's health and the workers that answer `$SRV.PING` (none when NATS is down).
pub(super) async fn health_and_workers(s: &Sidecar) -> (Option<wire::Health>, Vec<WorkerPing>) {
    if !s.nats_connected() {
        return (None, Vec::new());
    }
    let (health, pings) = tokio::join!(
        s.client
            .call::<_, wire::Health>(Op::Health.subject(), &wire::Empty {}, HEALTH_TIMEOUT),
        s.client.ping_workers(PING_WAIT),
    );
    if let Err(e) = &health {
        tracing::debug!(error = %e, "healthz: no health from a worker");
    }
    (health.ok(), pings.unwrap_or_default())
}

pub async fn healthz(State(s): State<Sidecar>) -> Response {
    let (health, pings) = health_and_workers(&s).await;
    let reply = SidecarHealth::new(health, s.nats_connected(), pings.len() as u64);
    let status = if reply.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(reply)).into_response()
}

/// `GET /metrics`: the sidecar's metrics in the Prometheus text format, with the workers that
/// answer its ping now.
pub async fn metrics(State(s): State<Sidecar>) -> Response {
    let workers = if s.nats_connected() {
        s.client
            .ping_workers(PING_WAIT)
            .await
            .map(|ids| ids.len())
            .unwrap_or(0)
    } else {
        0
    };
    crate::telemetry::workers(workers);
    let text = s.metrics.render();
    ([(CONTENT_TYPE, crate::telemetry::TEXT_FORMAT)], text).into_response()
}
