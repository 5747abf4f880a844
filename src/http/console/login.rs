//! The login form, the login (the token checked by an admin operation through NATS) and the
//! logout.

use std::time::Instant;

use askama::Template;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::view::Chrome;
use super::{auth, Admin, CsrfOnly, Page, Sidecar};
use crate::domain::Op;
use crate::error::ErrorKind;
use crate::wire;

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    chrome: Chrome,
    message: Option<String>,
}

fn login_page(status: StatusCode, message: Option<&str>) -> Page {
    let page = LoginPage {
        chrome: Chrome::anonymous(),
        message: message.map(str::to_string),
    };
    match Page::render(&page) {
        Page::Html(_, html) => Page::Html(status, html),
        other => other,
    }
}

/// `GET /console/login`.
#[tracing::instrument(name = "console.login_form", skip_all)]
pub(super) async fn form(admin: Option<Admin>) -> Page {
    match admin {
        Some(_) => Page::see_other("/console"),
        None => login_page(StatusCode::OK, None),
    }
}

#[derive(Deserialize)]
pub(super) struct Credentials {
    token: String,
}

/// `POST /console/login`: the token is taken only if an admin operation accepts it.
#[tracing::instrument(name = "console.login", skip_all)]
pub(super) async fn submit(
    State(s): State<Sidecar>,
    headers: HeaderMap,
    Form(credentials): Form<Credentials>,
) -> Response {
    let token = credentials.token.trim();
    if token.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, Some("Enter an admin token.")).into_response();
    }
    let authorization = format!("Bearer {token}");
    let checked: Result<wire::TokenList, _> = s
        .call_as(&authorization, Op::TokenList, &wire::Empty {})
        .await;
    let refused = match checked.map_err(|e| e.kind) {
        Ok(_) => None,
        Err(ErrorKind::Unauthorized) => Some("This token is unknown or revoked."),
        Err(ErrorKind::Forbidden) => {
            Some("This token is not an admin token: the console needs an admin token.")
        }
        Err(_) => Some("The token could not be checked: no worker answered. Try again."),
    };
    if let Some(message) = refused {
        tracing::info!("a console login was refused");
        return login_page(StatusCode::UNAUTHORIZED, Some(message)).into_response();
    }
    let login = s.logins.start(token, Instant::now());
    tracing::info!("an operator logged in to the console");
    let secure = s.console.secure_cookie || auth::over_https(&headers);
    let cookie = auth::login_cookie(&login.id, s.logins.lifetime(), secure);
    with_cookie(Page::see_other("/console"), &cookie)
}

/// `POST /console/logout`: ends the login here and clears the browser's cookie.
#[tracing::instrument(name = "console.logout", skip_all)]
pub(super) async fn logout(
    State(s): State<Sidecar>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(page) = admin.check_csrf(&form.csrf) {
        return page.into_response();
    }
    s.logins.end(&admin.0.id);
    let secure = s.console.secure_cookie || auth::over_https(&headers);
    with_cookie(
        Page::see_other("/console/login"),
        &auth::cleared_cookie(secure),
    )
}

fn with_cookie(page: Page, cookie: &cookie::Cookie<'_>) -> Response {
    let mut response = page.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}
