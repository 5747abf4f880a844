//! The console in a real browser: headless Chromium (Debian's `chromium`) driven over WebDriver
//! by its `chromedriver`, both installed by scripts/setup-tools.sh. One browser for the whole
//! test. On failure a screenshot is kept in the test's own temp dir (its path is printed).
//! With `CLAWDFORGE_SCREENSHOTS_DIR` set, the pages the docs show are saved there.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{CreateSession, Turn};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::harness::{asking_agent_toml, free_port, http_client, Forge, Options, ROOT_TOKEN};
use crate::sessions::{kind, turn};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it answers `/status`.
    async fn start(dir: &Path) -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run scripts/setup-tools.sh (it installs the Debian packages \
                 chromium and chromium-driver)"
            );
        }
        let port = free_port("127.0.0.1");
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_client()
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A headless Chromium with a fresh profile in `dir`, and none of its own network
    /// traffic (the network is closed: without these flags it waits on outbound connections).
    async fn browser(&self, dir: &Path) -> Client {
        let profile = dir.join("profile");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1100,900".into(),
        ];
        let capabilities = json!({
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `steps` with the browser; on a failure saves a screenshot of where it stood into `dir`,
/// keeps `dir`, and fails with the path.
async fn with_screenshot_on_failure<F>(browser: &Client, dir: tempfile::TempDir, steps: F)
where
    F: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(steps).catch_unwind().await;
    if let Err(panic) = outcome {
        let shot = dir.path().join("failure.png");
        if let Ok(png) = browser.screenshot().await {
            std::fs::write(&shot, png).unwrap();
        }
        let kept: PathBuf = dir.keep();
        eprintln!(
            "the browser test failed: screenshot and chromedriver log in {}",
            kept.display()
        );
        std::panic::resume_unwind(panic);
    }
}

/// The text of the page's `main`, as the browser shows it.
async fn body_text(browser: &Client) -> String {
    let body = browser.find(Locator::Css("main")).await.unwrap();
    body.text().await.unwrap()
}

/// Saves a screenshot of the page for the docs when `CLAWDFORGE_SCREENSHOTS_DIR` says where.
async fn screenshot_for_docs(browser: &Client, name: &str) {
    if let Ok(dir) = std::env::var("CLAWDFORGE_SCREENSHOTS_DIR") {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(name), png).unwrap();
    }
}

/// The page does not scroll sideways at the browser's width.
async fn fits_the_width(browser: &Client) -> bool {
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    fits.as_bool().unwrap()
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn path_of(browser: &Client) -> String {
    browser.current_url().await.unwrap().path().to_string()
}

/// Waits until the browser has loaded a page where the script `condition` is true: a click
/// that submits a form returns before the next page is there.
async fn wait_until(browser: &Client, condition: &str) {
    let script = format!("return document.readyState === 'complete' && ({condition});");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = browser.execute(&script, vec![]).await;
        if matches!(ready, Ok(serde_json::Value::Bool(true))) {
            return;
        }
        assert!(Instant::now() < deadline, "the page never met {condition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the browser is at `path`.
async fn wait_for_path(browser: &Client, path: &str) {
    wait_until(browser, &format!("location.pathname === {path:?}")).await;
}

#[tokio::test]
async fn in_a_browser_an_admin_logs_in_watches_answers_and_cancels_turns_and_logs_out() {
    // The test agent, native, asking the caller for every permission.
    let forge = Forge::start_with(Options {
        config_toml: Some(asking_agent_toml()),
        ..Default::default()
    })
    .await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let notes = forge.app("notes").await;
    let session = notes
        .create_session(&CreateSession::default())
        .await
        .unwrap();
    let asked = turn(
        &session.session_id,
        "hello from the browser test #cost=0.12",
    );
    notes.turn(&asked).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::start(dir.path()).await;
    let browser = driver.browser(dir.path()).await;
    let base = sidecar.base.clone();
    let release = dir.path().join("release");
    let steps = async {
        steps(&browser, &base, &forge.admin, &session.session_id).await;
        live_steps(&browser, &base, &notes, &session.session_id, &release).await;
        log_out(&browser, &base).await;
    };
    with_screenshot_on_failure(&browser, dir, steps).await;
    browser.close().await.unwrap();
}

async fn steps(browser: &Client, base: &str, admin: &ForgeClient, session_id: &str) {
    let url = |path: &str| format!("{base}{path}");
    // Not logged in: the login form.
    browser.goto(&url("/console")).await.unwrap();
    assert_eq!(path_of(browser).await, "/console/login");
    fill(browser, "#token", ROOT_TOKEN).await;
    click(browser, "form.card button[type=submit]").await;
    wait_for_path(browser, "/console").await;
    let overview = body_text(browser).await;
    assert!(overview.contains("notes"), "{overview}");
    screenshot_for_docs(browser, "console-overview.png").await;

    // The session the app created, from the list, and its turn's events.
    browser.goto(&url("/console/sessions")).await.unwrap();
    click(
        browser,
        &format!("a[href='/console/sessions/{session_id}']"),
    )
    .await;
    wait_for_path(browser, &format!("/console/sessions/{session_id}")).await;
    let page = body_text(browser).await;
    assert!(page.contains("echo: hello from the browser test"), "{page}");
    assert!(page.contains("Tool call"), "{page}");

    // At 360 px the pages fit the width (tables scroll in their own box).
    browser.set_window_size(360, 800).await.unwrap();
    for path in [
        "/console",
        "/console/sessions",
        "/console/tokens",
        "/console/apps",
    ] {
        browser.goto(&url(path)).await.unwrap();
        assert!(fits_the_width(browser).await, "{path} is wider than 360 px");
    }
    browser.set_window_size(1100, 900).await.unwrap();

    // Mint a token: shown once; it works until it is revoked from the list.
    browser.goto(&url("/console/tokens")).await.unwrap();
    fill(browser, "#mint-app", "web").await;
    click(browser, "form.card button[type=submit]").await;
    wait_until(browser, "document.getElementById('minted-token') !== null").await;
    let minted = browser.find(Locator::Id("minted-token")).await.unwrap();
    let secret = minted.text().await.unwrap();
    let web = admin.with_token(Some(secret.clone()));
    web.list_sessions().await.unwrap();
    let token_id = super::newest_token_id(admin).await;
    let revoke = format!("button[aria-label='Revoke token {token_id}']");
    click(browser, &revoke).await;
    // Back on the list, without the secret and without that token's button.
    wait_until(browser, "document.getElementById('minted-token') === null").await;
    assert_eq!(path_of(browser).await, "/console/tokens");
    assert!(browser.find(Locator::Css(&revoke)).await.is_err());
    assert!(!body_text(browser).await.contains(&secret));
    assert_eq!(kind(web.list_sessions().await), ErrorKind::Unauthorized);
}

/// Log out: the console is closed to this browser again.
async fn log_out(browser: &Client, base: &str) {
    let url = |path: &str| format!("{base}{path}");
    click(browser, "form.logout button").await;
    wait_for_path(browser, "/console/login").await;
    browser.goto(&url("/console/sessions")).await.unwrap();
    assert_eq!(path_of(browser).await, "/console/login");
}

/// The session's next turn, taken by the app meanwhile (streamed, so that it may be asked for
/// permissions).
fn turn_meanwhile(app: &ForgeClient, session_id: &str, prompt: &str) -> JoinHandle<Turn> {
    let (app, asked) = (app.clone(), turn(session_id, prompt));
    tokio::spawn(async move {
        let turn = app.turn_streaming(&asked, Duration::from_secs(60), |_| {});
        turn.await.expect("the turn's reply")
    })
}

/// The text of the live view's list of events.
async fn live_text(browser: &Client) -> String {
    let list = browser.find(Locator::Id("live-events")).await.unwrap();
    list.text().await.unwrap()
}

/// A running turn's events appear as they come, tool call included; a permission request is
/// answered from the page; a running turn is cancelled from the page.
async fn live_steps(
    browser: &Client,
    base: &str,
    app: &ForgeClient,
    session_id: &str,
    release: &Path,
) {
    let page = format!("{base}/console/sessions/{session_id}");
    // A turn held until `release` exists: what it says before is on the page while it runs.
    let held = format!("hold #wait-file={}", release.display());
    let held = turn_meanwhile(app, session_id, &held);
    wait_for_running(app, session_id, 2).await;
    browser.goto(&page).await.unwrap();
    wait_until(
        browser,
        "/waiting for/.test(document.getElementById('live-events').textContent)",
    )
    .await;
    assert!(!live_text(browser).await.contains("Echo tool"));
    std::fs::write(release, "go").unwrap();
    wait_until(
        browser,
        "/^Ended: end_turn/.test(document.getElementById('live-state').textContent)",
    )
    .await;
    // Came over the live stream: the page was drawn while the turn ran.
    let live = live_text(browser).await;
    assert!(
        live.contains("Tool call") && live.contains("Echo tool"),
        "{live}"
    );
    assert!(live.contains("echo: hold"), "{live}");
    assert_eq!(held.await.unwrap().stop_reason, "end_turn");

    // A turn that asks for a permission: the request is answered from the page.
    let asking = turn_meanwhile(app, session_id, "ask #permission=execute");
    wait_for_running(app, session_id, 3).await;
    browser.goto(&page).await.unwrap();
    wait_until(
        browser,
        "document.querySelector('form.answer button[value=allow]') !== null",
    )
    .await;
    let show = "document.getElementById('live').parentElement.scrollIntoView(); return true;";
    browser.execute(show, vec![]).await.unwrap();
    screenshot_for_docs(browser, "console-live-turn.png").await;
    click(browser, "form.answer button[value=allow]").await;
    let answered = asking.await.unwrap();
    assert!(
        answered.output.ends_with("[permission=allow]"),
        "{}",
        answered.output
    );

    // A turn that would never end, cancelled from the page.
    let hanging = turn_meanwhile(app, session_id, "wait #hang #say=working");
    wait_for_running(app, session_id, 4).await;
    browser.goto(&page).await.unwrap();
    wait_until(
        browser,
        "/working/.test(document.getElementById('live-events').textContent)",
    )
    .await;
    click(browser, "#cancel-turn").await;
    assert_eq!(hanging.await.unwrap().stop_reason, "cancelled");
    wait_until(
        browser,
        "/cancelled/.test(document.querySelector('main').textContent)",
    )
    .await;
}

/// Waits until the session's turn `n` runs.
async fn wait_for_running(app: &ForgeClient, session_id: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get_session(session_id).await.unwrap().running_turn != Some(n) {
        assert!(Instant::now() < deadline, "turn {n} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
