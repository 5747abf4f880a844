//! The sidecar: the HTTP endpoints of the old service, each translated into a NATS request
//! through [`ForgeClient`] and its reply translated back. It checks the IP allowlist and the body
//! size; everything else (tokens, validation, sessions) is the workers' business. It holds no
//! ledger and runs no agent.

mod allowlist;
pub mod multipart;
mod openapi;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;

pub use allowlist::{Access, CidrError, Denied};
pub use openapi::ApiDoc;
pub use routes::SidecarHealth;

use crate::client::ForgeClient;
use crate::config::{env_names, Config};
use crate::error::Error;
use crate::wire::{self, subject};

/// Every route of the sidecar that is a subject of the contract: method, path, subject.
pub const ROUTES: [(&str, &str, &str); 10] = [
    ("POST", "/run", subject::RUN),
    ("POST", "/sessions", subject::SESSION_CREATE),
    ("GET", "/sessions", subject::SESSION_LIST),
    ("GET", "/sessions/{id}", subject::SESSION_GET),
    ("DELETE", "/sessions/{id}", subject::SESSION_CLOSE),
    ("POST", "/sessions/{id}/turn", subject::SESSION_TURN),
    ("POST", "/admin/tokens", subject::TOKEN_CREATE),
    ("GET", "/admin/tokens", subject::TOKEN_LIST),
    ("DELETE", "/admin/tokens/{id}", subject::TOKEN_REVOKE),
    ("GET", "/healthz", subject::HEALTH),
];

/// Where the OpenAPI document of these routes is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// What the sidecar is configured with, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access: Access,
    /// Largest request body read; larger ones get 413 `payload_too_large`.
    pub max_request_bytes: usize,
}

impl Settings {
    /// Reads `allow_cidrs`, `trusted_proxies` and `max_request_bytes`. A bad CIDR is an error that
    /// names the setting.
    pub fn from_config(config: &Config) -> Result<Settings, CidrError> {
        let setting = |key: &str| {
            let names = env_names(key);
            let env = names.last().expect("every key has an environment name");
            format!("{env} (config key {key})")
        };
        Ok(Settings {
            access: Access::parse(
                &config.allow_cidrs,
                &setting("allow_cidrs"),
                &config.trusted_proxies,
                &setting("trusted_proxies"),
            )?,
            max_request_bytes: config.max_request_bytes,
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
}

impl Sidecar {
    /// A sidecar that talks through `client` (its own token is not used: each request carries
    /// its caller's). Turn and run timeouts follow `client.default_agent_timeout`.
    pub fn new(client: ForgeClient, settings: Settings) -> Sidecar {
        Sidecar {
            client,
            max_request_bytes: settings.max_request_bytes,
            access: Arc::new(settings.access),
            openapi: openapi::document().into(),
        }
    }
}

/// The sidecar's routes, behind the allowlist and the body limit.
pub fn router(sidecar: Sidecar) -> Router {
    let access = sidecar.access.clone();
    Router::new()
        .route("/run", post(routes::run))
        .route(
            "/sessions",
            post(routes::create_session).get(routes::list_sessions),
        )
        .route(
            "/sessions/{id}",
            get(routes::get_session).delete(routes::close_session),
        )
        .route("/sessions/{id}/turn", post(routes::turn))
        .route(
            "/admin/tokens",
            post(routes::create_token).get(routes::list_tokens),
        )
        .route("/admin/tokens/{id}", delete(routes::revoke_token))
        .route("/healthz", get(routes::healthz))
        .route(OPENAPI_PATH, get(routes::openapi))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(sidecar.max_request_bytes))
        .layer(axum::middleware::from_fn_with_state(
            access,
            allowlist::guard,
        ))
        .with_state(sidecar)
}

/// Serves `router` on `listener` until `shutdown` completes; then takes no new connections and
/// returns once the requests in flight are answered.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A JSON response with `status`.
fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// The contract's error reply: the kind's status and `{"error": {"code", "message"}}`.
pub fn error_response(err: &Error) -> Response {
    let status = StatusCode::from_u16(err.kind.status()).expect("the table holds valid statuses");
    let body = serde_json::to_vec(&wire::ErrorBody::from(err)).expect("error body serializes");
    json_response(status, body)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

fn body_too_large(limit: usize) -> Error {
    Error::payload_too_large(format!("the request body is larger than {limit} bytes"))
}
