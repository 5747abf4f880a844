//! The sidecar's routes, one per operation of the table (`domain::ops`): each takes the path and
//! the body, forwards them as the operation's NATS request, and gives back the reply's body with
//! the status of its error kind.

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    body_too_large, health, json_response, multipart, sse, Sidecar, METRICS_PATH, OPENAPI_PATH,
};
use crate::client::{CONTROL_TIMEOUT, CREATE_TIMEOUT};
use crate::domain::ops::{self, Op};
use crate::error::Error;
use crate::wire;

type Result<T, E = Error> = std::result::Result<T, E>;

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|r| Error::bad_request(format!("invalid path: {}", r.body_text())))
}

fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large(limit)
        } else {
            Error::bad_request(format!(
                "could not read the request body: {}",
                r.body_text()
            ))
        }
    })
}

fn to_body<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .expect("request serializes")
        .into()
}

/// A JSON body as it came, or a form read into the same JSON; and the `timeout_secs` it asks for.
async fn body_or_form(sidecar: &Sidecar, headers: &HeaderMap, request: Request) -> Result<Body> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if multipart::is_form(content_type) {
        let form = Multipart::from_request(request, sidecar)
            .await
            .map_err(|r| {
                Error::bad_request(format!("invalid multipart body: {}", r.body_text()))
            })?;
        let fields = multipart::read_form(form, sidecar.max_request_bytes).await?;
        Ok(Body::Form(fields))
    } else {
        let bytes = Bytes::from_request(request, sidecar).await;
        Ok(Body::Json(read_body(bytes, sidecar.max_request_bytes)?))
    }
}

enum Body {
    Json(Bytes),
    Form(Map<String, Value>),
}

/// The `timeout_secs` a request body asks for, read leniently: the worker judges the body.
fn requested_timeout(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Timeout {
        timeout_secs: Option<u64>,
    }
    serde_json::from_slice::<Timeout>(body).ok()?.timeout_secs
}

fn differs_from_path(field: &str) -> Error {
    let what = field.strip_suffix("_id").unwrap_or(field);
    Error::bad_request(format!(
        "{field} in the body differs from the {what} in the path"
    ))
}

fn session_id_differs() -> Error {
    differs_from_path("session_id")
}

/// Puts the path's session id into a JSON turn body (see [`with_path_field`]).
fn with_session_id(body: Bytes, id: &str) -> Result<Bytes> {
    with_path_field(body, "session_id", id)
}

/// Puts `field` = `id`, from the path, into a JSON body. A body that is not a JSON object goes
/// on unchanged, for the worker to reject as it would over NATS; one that already holds the same
/// value goes on unchanged too. Otherwise the field is written in ahead of the others, leaving
/// the rest byte for byte as it came.
fn with_path_field(body: Bytes, field: &str, id: &str) -> Result<Bytes> {
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(to_body(&serde_json::json!({ field: id })));
    };
    if body[start] != b'{' {
        return Ok(body);
    }
    let Ok(object) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return Ok(body);
    };
    match object.get(field) {
        Some(Value::String(given)) if given == id => Ok(body),
        Some(_) => Err(differs_from_path(field)),
        None => {
            let id = serde_json::to_vec(id).expect("a string serializes");
            let mut out = Vec::with_capacity(body.len() + id.len() + 16);
            out.extend_from_slice(&body[..=start]);
            out.extend_from_slice(&serde_json::to_vec(field).expect("a string serializes"));
            out.push(b':');
            out.extend_from_slice(&id);
            if !object.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&body[start + 1..]);
            Ok(out.into())
        }
    }
}

/// How long the sidecar waits for a worker's reply to a control operation: creating or
/// closing a session starts or stops an agent session.
fn control_timeout(op: Op) -> Duration {
    match op {
        Op::SessionCreate | Op::SessionClose => CREATE_TIMEOUT,
        _ => CONTROL_TIMEOUT,
    }
}

/// An operation whose body goes on as it came (`POST /sessions`, `POST /admin/tokens`).
async fn forward_body(
    op: Op,
    s: Sidecar,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = read_body(body, s.max_request_bytes)?;
    Ok(s.forward(op, &headers, body, control_timeout(op)).await)
}

/// An operation without a body (`GET /sessions`, `GET /admin/tokens`).
async fn forward_empty(op: Op, s: Sidecar, headers: HeaderMap) -> Response {
    let body = to_body(&wire::Empty {});
    s.forward(op, &headers, body, control_timeout(op)).await
}

/// An operation on the session, token or app of the path, without a body.
async fn forward_path(
    op: Op,
    s: Sidecar,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = path_id(path)?;
    let body = match op {
        Op::TokenRevoke => to_body(&wire::TokenRevoke { token_id: id }),
        Op::AppGet => to_body(&wire::AppRef { app: id }),
        _ => to_body(&wire::SessionRef { session_id: id }),
    };
    Ok(s.forward(op, &headers, body, control_timeout(op)).await)
}

/// `PUT /admin/apps/{app}`: the body with the path's app in it.
async fn set_app(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let app = path_id(path)?;
    let body = with_path_field(read_body(body, s.max_request_bytes)?, "app", &app)?;
    Ok(s.forward(Op::AppSet, &headers, body, CONTROL_TIMEOUT).await)
}

/// `GET /admin/usage?app=&from=&to=`: the query as the body.
async fn admin_usage(
    State(s): State<Sidecar>,
    query: Result<Query<wire::UsageAsked>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let Query(asked) =
        query.map_err(|r| Error::bad_request(format!("invalid query: {}", r.body_text())))?;
    let body = to_body(&asked);
    Ok(s.forward(Op::AdminUsage, &headers, body, CONTROL_TIMEOUT)
        .await)
}

/// `GET /admin/sessions?app=&agent=&status=&offset=&limit=`: the query as the body.
async fn admin_sessions(
    State(s): State<Sidecar>,
    query: Result<Query<wire::SessionsAsked>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let Query(asked) =
        query.map_err(|r| Error::bad_request(format!("invalid query: {}", r.body_text())))?;
    let body = to_body(&asked);
    Ok(
        s.forward(Op::AdminSessionList, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

/// The handler of `op`'s route. A match on every operation: one without a handler does not
/// compile.
fn handler(op: Op) -> MethodRouter<Sidecar> {
    let method = match op.route().method {
        ops::Method::Get => MethodFilter::GET,
        ops::Method::Post => MethodFilter::POST,
        ops::Method::Put => MethodFilter::PUT,
        ops::Method::Delete => MethodFilter::DELETE,
    };
    let body = move |State(s), headers, body| forward_body(op, s, headers, body);
    let empty = move |State(s), headers| forward_empty(op, s, headers);
    let path = move |State(s), path, headers| forward_path(op, s, path, headers);
    match op {
        Op::SessionCreate | Op::TokenCreate => on(method, body),
        Op::SessionList | Op::TokenList | Op::AppList | Op::Usage => on(method, empty),
        Op::SessionGet | Op::SessionClose | Op::SessionCancel | Op::TokenRevoke | Op::AppGet => {
            on(method, path)
        }
        Op::AppSet => on(method, set_app),
        Op::AdminUsage => on(method, admin_usage),
        Op::AdminSessionList => on(method, admin_sessions),
        Op::SessionTurn => on(method, turn),
        Op::Run => on(method, run),
        Op::SessionPermission => on(method, answer_permission),
        Op::SessionEvents => on(method, events),
        Op::Health => on(method, health::healthz),
    }
}

/// The sidecar's routes: every operation's, and the OpenAPI document ([`not_found`] is the
/// fallback).
pub(super) fn routes() -> Router<Sidecar> {
    let router = Op::ALL.into_iter().fold(Router::new(), |router, op| {
        router.route(op.route().path, handler(op))
    });
    router
        .route(OPENAPI_PATH, get(openapi))
        .route(METRICS_PATH, get(health::metrics))
        .merge(super::console::routes())
        .fallback(not_found)
}

pub async fn run(
    State(s): State<Sidecar>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response> {
    let (body, timeout_secs) = match body_or_form(&s, &headers, request).await? {
        Body::Json(body) => {
            let timeout = requested_timeout(&body);
            (body, timeout)
        }
        Body::Form(fields) => {
            let timeout = fields.get("timeout_secs").and_then(Value::as_u64);
            (to_body(&fields), timeout)
        }
    };
    if sse::wanted(&headers) {
        return Ok(s.stream(Op::Run, &headers, body).await);
    }
    let timeout = s.client.agent_timeout(timeout_secs);
    Ok(s.forward(Op::Run, &headers, body, timeout).await)
}

pub async fn turn(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response> {
    let id = path_id(path)?;
    let (body, timeout_secs) = match body_or_form(&s, &headers, request).await? {
        Body::Json(body) => {
            let body = with_session_id(body, &id)?;
            let timeout = requested_timeout(&body);
            (body, timeout)
        }
        Body::Form(mut fields) => {
            match fields.get("session_id") {
                Some(Value::String(given)) if *given == id => {}
                Some(_) => return Err(session_id_differs()),
                None => {}
            }
            fields.insert("session_id".into(), Value::String(id));
            let timeout = fields.get("timeout_secs").and_then(Value::as_u64);
            (to_body(&fields), timeout)
        }
    };
    if sse::wanted(&headers) {
        return Ok(s.stream(Op::SessionTurn, &headers, body).await);
    }
    let timeout = s.client.agent_timeout(timeout_secs);
    Ok(s.forward(Op::SessionTurn, &headers, body, timeout).await)
}

/// The body of `POST /sessions/{id}/permissions/{request_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionChoice {
    /// One of the `options` of the `permission_request` event.
    option_id: String,
}

pub async fn answer_permission(
    State(s): State<Sidecar>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let (session_id, request_id) = path
        .map(|Path(ids)| ids)
        .map_err(|r| Error::bad_request(format!("invalid path: {}", r.body_text())))?;
    let body = read_body(body, s.max_request_bytes)?;
    let choice: PermissionChoice = wire::decode(&body)?;
    let body = to_body(&wire::PermissionAnswer {
        session_id,
        request_id,
        option_id: choice.option_id,
    });
    Ok(
        s.forward(Op::SessionPermission, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

/// The query of `GET /sessions/{id}/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The turn's number; without it, the session's latest turn.
    turn: Option<u64>,
    /// Only the events with a greater `seq`; without it, from the turn's start. A
    /// `Last-Event-ID` header takes its place.
    after: Option<u64>,
}

pub async fn events(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let session_id = path_id(path)?;
    let Query(query) =
        query.map_err(|r| Error::bad_request(format!("invalid query: {}", r.body_text())))?;
    let after = sse::last_event_id(&headers)?.or(query.after);
    let body = to_body(&wire::EventsRequest {
        session_id,
        turn: query.turn,
        after,
    });
    Ok(s.stream(Op::SessionEvents, &headers, body).await)
}

pub async fn openapi(State(s): State<Sidecar>) -> Response {
    json_response(StatusCode::OK, s.openapi.clone())
}

pub async fn not_found(method: Method, uri: Uri) -> Error {
    Error::not_found(format!("no route for {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use axum::response::IntoResponse;

    /// A router whose matched routes answer 418 without running their handler.
    async fn matched_only() -> Router {
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .unwrap();
        let settings = super::super::Settings {
            access: super::super::Access::parse("", "A", "", "P").unwrap(),
            max_request_bytes: 1024,
            conn: Default::default(),
            stream_heartbeat: Duration::from_secs(15),
            console: Default::default(),
        };
        let sidecar = Sidecar::new(crate::client::ForgeClient::new(nats, None), settings);
        let teapot = axum::middleware::from_fn(|r: Request, next: axum::middleware::Next| async {
            let matched = r.extensions().get::<axum::extract::MatchedPath>().is_some();
            if matched {
                StatusCode::IM_A_TEAPOT.into_response()
            } else {
                next.run(r).await
            }
        });
        routes().route_layer(teapot).with_state(sidecar)
    }

    async fn status(app: &Router, method: &str, path: &str) -> StatusCode {
        use tower::ServiceExt;
        let request = axum::http::Request::builder().method(method).uri(path);
        let request = request.body(axum::body::Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn every_operation_has_its_route() {
        let app = matched_only().await;
        for op in Op::ALL {
            let route = op.route();
            let path = route.path.replace("{id}", "x").replace("{request_id}", "y");
            let path = path.replace("{app}", "notes");
            let status = status(&app, route.method.as_str(), &path).await;
            assert_eq!(status, StatusCode::IM_A_TEAPOT, "{op:?}");
        }
        // A path no operation routes is not matched: the check can fail. (Each operation's
        // handler is registered for its own method by `handler`.)
        assert_ne!(
            status(&app, "GET", "/nowhere").await,
            StatusCode::IM_A_TEAPOT
        );
    }

    fn injected(body: &str, id: &str) -> Result<String> {
        with_session_id(Bytes::from(body.to_string()), id)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn the_path_session_id_goes_into_the_body() {
        assert_eq!(
            injected(r#"{"prompt": "hi"}"#, "abc").unwrap(),
            r#"{"session_id":"abc","prompt": "hi"}"#
        );
        assert_eq!(
            injected("  { }", "abc").unwrap(),
            r#"  {"session_id":"abc" }"#
        );
        assert_eq!(injected("", "abc").unwrap(), r#"{"session_id":"abc"}"#);
        let same = r#"{"prompt":"hi","session_id":"abc"}"#;
        assert_eq!(injected(same, "abc").unwrap(), same);
        // Quotes in the id are escaped, not spliced in.
        assert_eq!(injected("{}", "a\"b").unwrap(), r#"{"session_id":"a\"b"}"#);
    }

    #[test]
    fn a_different_session_id_in_the_body_is_bad_request() {
        for body in [
            r#"{"session_id":"other","prompt":"hi"}"#,
            r#"{"session_id":12,"prompt":"hi"}"#,
            r#"{"session_id":null}"#,
        ] {
            assert_eq!(
                injected(body, "abc").unwrap_err().kind,
                ErrorKind::BadRequest,
                "{body}"
            );
        }
    }

    #[test]
    fn what_is_not_a_json_object_goes_on_unchanged() {
        for body in [
            "{not json",
            "[1]",
            "null",
            "\u{feff}{}",
            "{\"prompt\": \"hi\"} trailing",
        ] {
            assert_eq!(injected(body, "abc").unwrap(), body);
        }
    }

    #[test]
    fn the_requested_timeout_is_read_leniently() {
        assert_eq!(
            requested_timeout(br#"{"prompt":"x","timeout_secs":42}"#),
            Some(42)
        );
        assert_eq!(requested_timeout(br#"{"prompt":"x"}"#), None);
        assert_eq!(requested_timeout(br#"{"timeout_secs":"soon"}"#), None);
        assert_eq!(requested_timeout(b"{nope"), None);
    }
}
