//! The operator's console over plain HTTP: login with an admin token only, the cookie, CSRF on
//! every form, logout; the pages show what a test app did, and every page is valid HTML.

mod browser;

use std::time::Duration;

use clawdforge::error::ErrorKind;
use clawdforge::wire::CreateSession;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use crate::harness::{Forge, HttpProcess, Via, ROOT_TOKEN};
use crate::sessions::turn;

/// A browser of the console, without a browser: it keeps the login cookie itself and follows
/// no redirect, so each answer is seen as it came.
pub struct Console {
    /// The sidecar's address, `http://host:port`.
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

/// A page as it came: status, where it redirects, its cookie, its text.
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub text: String,
}

impl Console {
    pub fn new(sidecar: &HttpProcess) -> Console {
        Console::at(sidecar.url(""))
    }

    /// The console of the sidecar at `base` (`http://host:port`).
    pub fn at(base: String) -> Console {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Console {
            base,
            http,
            cookie: None,
        }
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(c) => request.header(COOKIE, c),
            None => request,
        };
        let response = request.send().await.expect("an HTTP answer");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_string())
        };
        let (location, set_cookie) = (header(LOCATION), header(SET_COOKIE));
        Answer {
            status: response.status(),
            location,
            set_cookie,
            text: response.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.answer(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `path` as a valid HTML page with status 200.
    pub async fn page(&self, path: &str) -> String {
        let answer = self.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
        assert_valid_html(path, &answer.text);
        answer.text
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let body = serde_urlencoded::to_string(form).unwrap();
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.answer(request).await
    }

    /// Logs in with `token`; the answer is the login's.
    pub async fn login(&mut self, token: &str) -> Answer {
        let answer = self.post("/console/login", &[("token", token)]).await;
        if let Some(cookie) = &answer.set_cookie {
            self.cookie = Some(cookie.split(';').next().unwrap().to_string());
        }
        answer
    }
}

/// The value of the first `name="csrf"` field of a page.
pub fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a CSRF field");
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The parse errors of `html`, parsed as a browser would (html5ever's list).
pub fn html_errors(html: &str) -> Vec<String> {
    use html5ever::tendril::TendrilSink;
    let dom = html5ever::parse_document(markup5ever_rcdom::RcDom::default(), Default::default())
        .one(html);
    let errors = dom.errors.borrow();
    errors.iter().map(|e| e.to_string()).collect()
}

/// Fails on any parse error of `html`.
pub fn assert_valid_html(what: &str, html: &str) {
    let errors = html_errors(html);
    assert!(
        errors.is_empty(),
        "{what} is not valid HTML: {errors:?}\n{html}"
    );
}

#[test]
fn the_validity_check_finds_what_a_browser_would_repair() {
    let page = |body: &str| {
        format!(
            "<!DOCTYPE html><html lang=en><head><title>t</title></head><body>{body}</body></html>"
        )
    };
    assert!(html_errors(&page("<p>a</p>")).is_empty());
    assert!(!html_errors(&page("<p>a</div>")).is_empty());
    assert!(!html_errors(&page("<p a=1 a=2>x</p>")).is_empty());
    assert!(!html_errors("<p>no doctype</p>").is_empty());
}

#[tokio::test]
async fn only_an_admin_logs_in_and_the_pages_show_what_an_app_did() {
    let forge = Forge::start_via(Via::Acp).await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let notes = forge.app("notes").await;
    let session = notes
        .create_session(&CreateSession::default())
        .await
        .unwrap();
    let prompt = "hello <b>console</b> & co #cost=0.25";
    notes
        .turn(&turn(&session.session_id, prompt))
        .await
        .unwrap();
    let mut console = Console::new(&sidecar);

    // Without a login every page leads to the form.
    for path in ["/console", "/console/sessions", "/console/sessions/x"] {
        let answer = console.get(path).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.location.as_deref(), Some("/console/login"));
    }
    console.page("/console/login").await;
    let wrong = console.login("cf_not_a_token").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("unknown or revoked"), "{}", wrong.text);
    let app_token = notes.token().unwrap().to_string();
    let not_admin = console.login(&app_token).await;
    assert_eq!(not_admin.status, StatusCode::UNAUTHORIZED);
    assert!(not_admin.text.contains("not an admin token"));
    assert!(wrong.set_cookie.is_none() && not_admin.set_cookie.is_none());
    assert_valid_html("the refused login", &not_admin.text);

    let login = console.login(ROOT_TOKEN).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    assert_eq!(login.location.as_deref(), Some("/console"));
    let cookie = login.set_cookie.unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains(ROOT_TOKEN),
        "the cookie holds an opaque id: {cookie}"
    );

    // The overview counts the app's open session; the list and the session's page show it.
    let overview = console.page("/console").await;
    assert!(
        overview.contains(">notes</a></td><td>1</td><td>0</td>"),
        "{overview}"
    );
    let listed = console
        .page("/console/sessions?app=notes&status=open")
        .await;
    assert!(listed.contains(&session.session_id), "{listed}");
    let none = console.page("/console/sessions?app=other").await;
    assert!(!none.contains(&session.session_id) && none.contains("No sessions match"));
    let page = console
        .page(&format!("/console/sessions/{}", session.session_id))
        .await;
    // The agent's answer, escaped, its thought and its tool call.
    assert!(
        page.contains("echo: hello &#60;b&#62;console&#60;/b&#62; &#38; co"),
        "{page}"
    );
    assert!(
        page.contains("Tool call") && page.contains("Thought"),
        "{page}"
    );
    assert!(page.contains("Ended: end_turn"), "{page}");

    // The session's ended turn over the live view's events route: replayed, then its end.
    let events = format!("/console/sessions/{}/events?turn=1", session.session_id);
    let events = console.get(&events).await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(events.text.contains("event: tool_call"), "{}", events.text);
    assert!(events.text.contains("event: turn"), "{}", events.text);
    // Acting on a turn needs the page's CSRF token too.
    let cancel = format!("/console/sessions/{}/cancel", session.session_id);
    assert_eq!(
        console.post(&cancel, &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let answer = format!("/console/sessions/{}/permissions/p1", session.session_id);
    let answer = console.post(&answer, &[("option_id", "allow")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    // Logging out needs the page's CSRF token.
    let csrf = csrf_of(&overview);
    let forged = console.post("/console/logout", &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let forged = console.post("/console/logout", &[("csrf", "0000")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    console.page("/console").await;
    let out = console.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    // The old cookie is worth nothing now.
    let after = console.get("/console").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location.as_deref(), Some("/console/login"));
}

/// The text of the element whose start tag ends with `marker` (e.g. `id="minted-token">`).
/// The id of the token minted last.
pub async fn newest_token_id(admin: &clawdforge::client::ForgeClient) -> String {
    let tokens = admin.list_tokens().await.unwrap().tokens;
    tokens.last().unwrap().token_id.clone()
}

fn text_after<'p>(page: &'p str, marker: &str) -> &'p str {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {page}"));
    let rest = &page[at + marker.len()..];
    &rest[..rest.find('<').unwrap()]
}

#[tokio::test]
async fn tokens_are_shown_once_and_revoked_and_an_edited_limit_refuses_the_next_request() {
    let forge = Forge::start_via(Via::Acp).await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let mut console = Console::new(&sidecar);
    assert_eq!(
        console.login(ROOT_TOKEN).await.status,
        StatusCode::SEE_OTHER
    );
    let csrf = csrf_of(&console.page("/console/tokens").await);
    let tokens = || async { forge.admin.list_tokens().await.unwrap().tokens.len() };
    let before = tokens().await;

    // Minting: refused without the form's token; shown once with it.
    let forged = console.post("/console/tokens", &[("app", "web")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(tokens().await, before);
    let minted = console
        .post("/console/tokens", &[("csrf", &csrf), ("app", "web")])
        .await;
    assert_eq!(minted.status, StatusCode::OK, "{}", minted.text);
    assert_valid_html("the minted token's page", &minted.text);
    let secret = text_after(&minted.text, r#"id="minted-token">"#).to_string();
    assert!(secret.starts_with("cf_"), "{secret}");
    let web = forge.admin.with_token(Some(secret.clone()));
    web.list_sessions().await.unwrap();
    let listed = console.page("/console/tokens").await;
    assert!(!listed.contains(&secret), "shown again: {listed}");

    // A limit edited on the app's page refuses the next request over it.
    console.page("/console/apps").await;
    let edit = [("csrf", csrf.as_str()), ("max_open_sessions", "1")];
    let saved = console.post("/console/apps/web", &edit).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.text);
    let page = console.page("/console/apps/web").await;
    assert!(
        page.contains(r#"name="max_open_sessions" value="1""#),
        "{page}"
    );
    web.create_session(&CreateSession::default()).await.unwrap();
    let refused = web.create_session(&CreateSession::default()).await;
    assert_eq!(crate::sessions::kind(refused), ErrorKind::QuotaExceeded);
    let bad = [("csrf", csrf.as_str()), ("max_open_sessions", "two")];
    let bad = console.post("/console/apps/web", &bad).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.text.contains("Not changed: max_open_sessions"),
        "{}",
        bad.text
    );
    // The refusal is counted: the overview's chart, the runs page.
    let overview = console.page("/console").await;
    assert!(overview.contains("<title>web: 1</title>"), "{overview}");
    let runs = console.page("/console/runs").await;
    assert!(runs.contains("max_open_sessions: 1"), "{runs}");
    let forged = console.post("/console/apps/web", &edit[1..]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // Revoking it from the list: the token is refused from then on.
    let token_id = newest_token_id(&forge.admin).await;
    let path = format!("/console/tokens/{token_id}/revoke");
    assert_eq!(console.post(&path, &[]).await.status, StatusCode::FORBIDDEN);
    web.list_sessions().await.unwrap();
    let revoked = console.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert_eq!(
        crate::sessions::kind(web.list_sessions().await),
        ErrorKind::Unauthorized
    );
    let listed = console.page("/console/tokens").await;
    assert!(
        !listed.contains(&format!("Revoke token {token_id}")),
        "{listed}"
    );
}
