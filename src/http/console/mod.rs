//! The operator's console at `/console`: server-rendered pages (askama templates, checked at
//! compile time, escaped) for an admin token. It reads and acts only through the wire contract,
//! as the sidecar's routes do: each page sends its requests with the login's admin token through
//! [`Sidecar::request`] and NATS. It is not an operation of the contract: it is not in the
//! operations table nor in the OpenAPI document. Every asset is served from the binary.
//!
//! One module per page group: `auth` (logins, cookie, CSRF), `login` (the forms), `overview`,
//! `sessions` (the list and one session), `apps` (policies, usage, the limits' form), `tokens`
//! (mint, revoke), `runs` (spend per app and day, charts drawn as SVG by `chart`), `live` (a running turn's events, its cancel and its permission request).

mod apps;
mod auth;
mod chart;
mod live;
mod login;
mod overview;
mod replay;
mod runs;
mod sessions;
mod tokens;
mod view;

use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::forward::reply_parts;
use super::Sidecar;
use crate::client::{Caller, CONTROL_TIMEOUT};
use crate::domain::Op;
use crate::error::{Error, ErrorKind};
use crate::telemetry::trace::TraceContext;
use crate::wire;

pub(crate) use auth::Logins;

/// Where the console lives.
pub const CONSOLE_PATH: &str = "/console";

/// What the console is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// How long a login lasts (`console_session_secs`).
    pub session: Duration,
    /// The cookie is `Secure` on every answer (`console_secure_cookie`).
    pub secure_cookie: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            session: Duration::from_secs(8 * 3600),
            secure_cookie: false,
        }
    }
}

/// The console's routes.
pub(super) fn routes() -> Router<Sidecar> {
    Router::new()
        .route(CONSOLE_PATH, get(overview::page))
        .route("/console/login", get(login::form).post(login::submit))
        .route("/console/logout", post(login::logout))
        .route("/console/sessions", get(sessions::list))
        .route("/console/sessions/{id}", get(sessions::one))
        .route("/console/sessions/{id}/events", get(live::events))
        .route("/console/sessions/{id}/cancel", post(live::cancel))
        .route(
            "/console/sessions/{id}/permissions/{request_id}",
            post(live::answer),
        )
        .route("/console/runs", get(runs::page))
        .route("/console/apps", get(apps::list))
        .route("/console/apps/{app}", get(apps::one).post(apps::set))
        .route("/console/tokens", get(tokens::list).post(tokens::mint))
        .route("/console/tokens/{id}/revoke", post(tokens::revoke))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/live.js", get(script))
}

/// A form that carries nothing but the login's CSRF token (logout, cancel, revoke).
#[derive(serde::Deserialize)]
pub(super) struct CsrfOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

/// The logged-in admin a page is for: its login (token, CSRF token).
pub(super) struct Admin(auth::Login);

impl Admin {
    /// The login the request's cookie names, if it is one that has not ended.
    fn of(parts: &Parts, s: &Sidecar) -> Option<Admin> {
        let id = auth::login_cookie_value(&parts.headers)?;
        s.logins.find(&id, Instant::now()).map(Admin)
    }
}

/// A page for the logged-in only: without a login, the answer is the way to the login form.
impl FromRequestParts<Sidecar> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Sidecar) -> Result<Admin, Response> {
        Admin::of(parts, s).ok_or_else(|| Redirect::to("/console/login").into_response())
    }
}

impl OptionalFromRequestParts<Sidecar> for Admin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Sidecar,
    ) -> Result<Option<Admin>, Self::Rejection> {
        Ok(Admin::of(parts, s))
    }
}

impl Admin {
    fn csrf(&self) -> &str {
        self.0.csrf.as_str()
    }

    /// `bad_request` unless `given` is this login's CSRF token.
    fn check_csrf(&self, given: &str) -> Result<(), Page> {
        if self.0.csrf.matches(given) {
            Ok(())
        } else {
            Err(Page::error(
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from the console: reload the page and try again.",
            ))
        }
    }
}

impl Sidecar {
    /// `req` as a request of `op` with the admin's token, its reply typed: what every page
    /// reads and does.
    async fn console_call<Req: Serialize, T: DeserializeOwned>(
        &self,
        admin: &Admin,
        op: Op,
        req: &Req,
    ) -> Result<T, Error> {
        self.call_as(&admin.0.authorization, op, req).await
    }

    /// `req` as a request of `op` with the `Authorization` value `authorization`, typed.
    async fn call_as<Req: Serialize, T: DeserializeOwned>(
        &self,
        authorization: &str,
        op: Op,
        req: &Req,
    ) -> Result<T, Error> {
        let body = serde_json::to_vec(req).map_err(Error::internal)?;
        let trace = TraceContext::outgoing(None);
        let caller = Caller::new(Some(authorization), trace.as_ref());
        let reply = self
            .request(op, caller, body.into(), CONTROL_TIMEOUT)
            .await?;
        typed(reply_parts(reply))
    }
}

/// A worker's reply as `T`, or the contract error it carries.
fn typed<T: DeserializeOwned>((status, body): (StatusCode, bytes::Bytes)) -> Result<T, Error> {
    if status != StatusCode::OK {
        let err: wire::ErrorBody = serde_json::from_slice(&body).map_err(Error::internal)?;
        return Err(err.into());
    }
    serde_json::from_slice(&body).map_err(Error::internal)
}

/// What a page handler answers: a page, or an error page, or a redirect.
pub(super) enum Page {
    Html(StatusCode, String),
    Redirect(Redirect),
}

impl Page {
    fn render(template: &impl Template) -> Page {
        match template.render() {
            Ok(html) => Page::Html(StatusCode::OK, html),
            Err(e) => {
                tracing::error!(error = %e, "a console page failed to render");
                Page::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The page failed to render.",
                )
            }
        }
    }

    /// The error page: `message` under the console's header, with `status`.
    fn error(status: StatusCode, message: &str) -> Page {
        let page = view::ErrorPage {
            chrome: view::Chrome::anonymous(),
            title: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        let html = page.render().unwrap_or_else(|_| message.to_string());
        Page::Html(status, html)
    }

    /// The same page with `status` (a redirect stays as it is).
    fn with_status(self, status: StatusCode) -> Page {
        match self {
            Page::Html(StatusCode::OK, html) => Page::Html(status, html),
            other => other,
        }
    }

    fn see_other(to: &str) -> Page {
        Page::Redirect(Redirect::to(to))
    }
}

impl From<Error> for Page {
    /// A contract error as a page: its status and its message.
    fn from(err: Error) -> Page {
        let status =
            StatusCode::from_u16(err.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match err.kind {
            ErrorKind::Unauthorized => {
                "The admin token of this login is no longer valid: log out and log in again."
                    .to_string()
            }
            _ => err.message,
        };
        Page::error(status, &message)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self {
            Page::Html(status, html) => {
                let mut response = (status, Html(html)).into_response();
                // Pages carry a CSRF token and operator data: never kept by a cache.
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Page::Redirect(redirect) => redirect.into_response(),
        }
    }
}

async fn script() -> Response {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("live.js"),
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// The stylesheet's colour named `--name`, or the literal `#rrggbb`.
    fn colour(name: &str) -> [f64; 3] {
        let css = include_str!("console.css");
        let hex = match name.strip_prefix("--") {
            Some(_) => {
                let at = css.find(&format!("{name}: #")).expect("a colour variable");
                &css[at + name.len() + 3..at + name.len() + 9]
            }
            None => &name[1..],
        };
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        [channel(0), channel(2), channel(4)]
    }

    /// WCAG 2's contrast ratio of two colours.
    fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |c: [f64; 3]| 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        let (x, y) = (luminance(colour(a)), luminance(colour(b)));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn every_text_colour_on_its_background_meets_wcag_aa() {
        let pairs = [
            ("--fg", "--bg"),
            ("--muted", "--bg"),
            ("--link", "--bg"),
            ("--ok", "--bg"),
            ("--bad", "--bg"),
            ("--accent", "--bg"),
            ("--fg", "--panel"),
            ("--muted", "--panel"),
            ("--link", "--panel"),
            ("#ffffff", "--accent"),
            ("#ffffff", "--bad"),
            ("#6a1b9a", "--bg"),
            ("--fg", "#fff8e1"),
            ("--muted", "#fff8e1"),
        ];
        for (text, background) in pairs {
            let ratio = contrast(text, background);
            assert!(ratio >= 4.5, "{text} on {background}: {ratio:.2}");
        }
        // The check can fail.
        assert!(contrast("#777777", "--bg") < 4.5);
    }
}
