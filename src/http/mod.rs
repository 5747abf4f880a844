//! The sidecar: the HTTP endpoints of the old service, each translated into a NATS request
//! through [`ForgeClient`] and its reply translated back. It checks the IP allowlist and the body
//! size; everything else (tokens, validation, sessions) is the workers' business. It holds no
//! ledger and runs no agent.

mod allowlist;
mod api_docs;
mod console;
mod forward;
mod health;
pub mod multipart;
mod openapi;
mod routes;
mod server;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;

pub use allowlist::{Access, CidrError, Denied};
pub use console::{ConsoleSettings, CONSOLE_PATH};
pub use health::SidecarHealth;
pub use openapi::ApiDoc;
pub use server::{serve, ConnLimits};

use crate::client::ForgeClient;
use crate::config::{env_names, Config};
use crate::error::Error;
use crate::wire;

/// Every route of the sidecar that is an operation: method, path, subject.
pub use crate::domain::ops::ROUTES;

/// Where the OpenAPI document of these routes is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// The sidecar's Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// What the sidecar is configured with, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access: Access,
    /// Largest request body read; larger ones get 413 `payload_too_large`.
    pub max_request_bytes: usize,
    /// What a connection may hold before and between requests; given to [`serve`].
    pub conn: ConnLimits,
    /// How often the workers send a heartbeat on a streamed reply (`stream_heartbeat_secs`): a
    /// stream silent for three of these is given up.
    pub stream_heartbeat: Duration,
    /// The operator's console: how long a login lasts, whether its cookie is always `Secure`.
    pub console: ConsoleSettings,
}

impl Settings {
    /// Reads `allow_cidrs`, `trusted_proxies` and `max_request_bytes`; the connection limits are
    /// the defaults. A bad CIDR is an error that names the setting.
    pub fn from_config(config: &Config) -> Result<Settings, CidrError> {
        let setting = |key: &str| {
            let names = env_names(key);
            let env = names.last().expect("every key has an environment name");
            format!("{env} (config key {key})")
        };
        if config.stream_heartbeat_secs >= config.http_idle_timeout_secs {
            tracing::warn!(
                stream_heartbeat_secs = config.stream_heartbeat_secs,
                http_idle_timeout_secs = config.http_idle_timeout_secs,
                "a streamed turn whose agent is quiet is closed as idle between heartbeats: \
                 keep stream_heartbeat_secs below http_idle_timeout_secs"
            );
        }
        Ok(Settings {
            access: Access::parse(
                &config.allow_cidrs,
                &setting("allow_cidrs"),
                &config.trusted_proxies,
                &setting("trusted_proxies"),
            )?,
            max_request_bytes: config.max_request_bytes,
            conn: ConnLimits {
                header_read_timeout: Duration::from_secs(config.http_header_timeout_secs),
                idle_timeout: Duration::from_secs(config.http_idle_timeout_secs),
                max_connections: config.http_max_connections,
            },
            stream_heartbeat: Duration::from_secs(config.stream_heartbeat_secs),
            console: ConsoleSettings {
                session: Duration::from_secs(config.console_session_secs),
                secure_cookie: config.console_secure_cookie,
            },
        })
    }
}

/// The state every handler shares.
#[derive(Clone)]
pub struct Sidecar {
    client: ForgeClient,
    max_request_bytes: usize,
    access: Arc<Access>,
    openapi: Bytes,
    /// How long a streamed reply may stay silent: three heartbeats.
    stall: Duration,
    metrics: crate::telemetry::Metrics,
    /// The console's logins, and its settings.
    logins: console::Logins,
    console: ConsoleSettings,
}

impl Sidecar {
    /// A sidecar that talks through `client` (its own token is not used: each request carries
    /// its caller's). Turn and run timeouts follow `client.default_agent_timeout`; a streamed
    /// turn has none of its own, it lasts while the worker's heartbeats come.
    pub fn new(client: ForgeClient, settings: Settings) -> Sidecar {
        Sidecar {
            client,
            max_request_bytes: settings.max_request_bytes,
            access: Arc::new(settings.access),
            openapi: openapi::document().into(),
            stall: settings.stream_heartbeat.saturating_mul(3),
            metrics: crate::telemetry::Metrics::install(),
            logins: console::Logins::new(settings.console.session),
            console: settings.console,
        }
    }
}

/// The sidecar's routes, behind the allowlist and the body limit.
pub fn router(sidecar: Sidecar) -> Router {
    let access = sidecar.access.clone();
    routes::routes()
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(sidecar.max_request_bytes))
        .layer(axum::middleware::from_fn_with_state(
            access,
            allowlist::guard,
        ))
        .with_state(sidecar)
}

/// A JSON response with `status`.
fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// The contract's error reply: the kind's status and `{"error": {"code", "message"}}`; with
/// `Retry-After` when it says when to try again.
pub fn error_response(err: &Error) -> Response {
    let status = StatusCode::from_u16(err.kind.status()).expect("the table holds valid statuses");
    retry_after(json_response(status, error_body(err)), err.retry_after_secs)
}

/// `response` with a `Retry-After` of `secs`, if given.
fn retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
    }
    response
}

/// `{"error": {"code", "message"}}`.
fn error_body(err: &Error) -> Vec<u8> {
    serde_json::to_vec(&wire::ErrorBody::from(err)).expect("error body serializes")
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

fn body_too_large(limit: usize) -> Error {
    Error::payload_too_large(format!("the request body is larger than {limit} bytes"))
}
