//! The operator's `clawdforge token` command, run as the real binary against a worker's ledger.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clawdforge::error::ErrorKind;
use clawdforge::wire;

use crate::harness::{Forge, Options};
use crate::sessions::kind;

/// Runs `clawdforge <args>` in `dir` with exactly the environment `env` (plus PATH).
fn clawdforge(dir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawdforge"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running clawdforge")
}

/// Runs a `clawdforge token …` command with the deployment's environment: the same ledger.
fn token(forge: &Forge, args: &[&str]) -> Output {
    let mut full = vec!["token"];
    full.extend_from_slice(args);
    clawdforge(forge.dir.path(), &forge.env, &full)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "clawdforge failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

#[tokio::test]
async fn a_minted_token_works_against_a_worker_and_is_revoked_at_once() {
    let forge = Forge::start().await;
    let out = ok(token(&forge, &["create", "--app", "notes"]));
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let (token_id, secret) = (field("token_id"), field("token "));
    assert_eq!(field("app"), "notes");
    assert_eq!(field("admin"), "no");
    assert!(secret.starts_with("cf_"), "{text}");
    assert!(stderr(&out).contains("shown only now"), "{}", stderr(&out));

    // The worker accepts it, as the app it was minted for.
    let app = forge.admin.with_token(Some(secret.clone()));
    app.list_sessions().await.unwrap();
    assert_eq!(
        kind(app.create_token("other", false).await),
        ErrorKind::Forbidden
    );
    let listed = forge.admin.list_tokens().await.unwrap();
    assert!(listed
        .tokens
        .iter()
        .any(|t| t.token_id == token_id && t.app == "notes" && !t.admin));

    // `list` shows it in a table, never the token itself.
    let table = stdout(&ok(token(&forge, &["list"])));
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("TOKEN_ID") && header.contains("REVOKED_AT"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with(&token_id)).unwrap();
    assert!(
        row.contains("notes") && row.trim_end().ends_with('-'),
        "{row}"
    );
    assert!(!table.contains(&secret));

    // Revoked on the ledger, it is refused by the running worker at its next request.
    let out = ok(token(&forge, &["revoke", &token_id]));
    assert!(stdout(&out).contains(&token_id));
    assert_eq!(kind(app.list_sessions().await), ErrorKind::Unauthorized);
    let listed: wire::TokenList =
        serde_json::from_str(&stdout(&ok(token(&forge, &["list", "--json"])))).unwrap();
    let info = listed
        .tokens
        .iter()
        .find(|t| t.token_id == token_id)
        .unwrap();
    assert!(info.revoked_at.is_some());
    // Revoking again answers the same, and changes nothing.
    let again = ok(token(&forge, &["revoke", &token_id]));
    assert_eq!(stdout(&again), stdout(&out));
    let listed_again: wire::TokenList =
        serde_json::from_str(&stdout(&ok(token(&forge, &["list", "--json"])))).unwrap();
    assert_eq!(listed_again, listed);
}

#[tokio::test]
async fn the_first_admin_token_needs_no_bootstrap_variable() {
    let forge = Forge::start_with(Options {
        env: vec![("ADMIN_BOOTSTRAP_TOKEN".into(), String::new())],
        ..Default::default()
    })
    .await;
    // Without the bootstrap variable, the harness's root token is nobody.
    assert_eq!(
        kind(forge.admin.list_tokens().await),
        ErrorKind::Unauthorized
    );
    let out = ok(token(
        &forge,
        &["create", "--app", "ops", "--admin", "--json"],
    ));
    let created: wire::TokenCreated = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(created.admin);
    assert_eq!(created.app, "ops");

    // An admin over NATS: it mints an app token there, and that one works too.
    let admin = forge.admin.with_token(Some(created.token));
    let minted = admin.create_token("photos", false).await.unwrap();
    let photos = admin.with_token(Some(minted.token));
    photos.list_sessions().await.unwrap();
    let table = stdout(&ok(token(&forge, &["list"])));
    assert!(table.contains(&created.token_id) && table.contains(&minted.token_id));
}

#[test]
fn token_commands_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let env = vec![("DB_PATH".to_string(), ledger.to_string_lossy().into_owned())];
    let run = |args: &[&str]| {
        let mut full = vec!["token"];
        full.extend_from_slice(args);
        clawdforge(dir.path(), &env, &full)
    };

    // No ledger yet: listing and revoking say so and create nothing.
    let out = run(&["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no ledger at"), "{}", stderr(&out));
    assert!(!ledger.exists());

    // Minting creates it.
    ok(run(&["create", "--app", "notes"]));
    assert!(ledger.exists());

    let unknown = uuid::Uuid::new_v4().to_string();
    let out = run(&["revoke", &unknown]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("no token with id {unknown}")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    let out = run(&["revoke", "not-a-uuid"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid token_id"),
        "{}",
        stderr(&out)
    );

    let out = run(&["create", "--app", "bad app"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid app"), "{}", stderr(&out));
    let out = run(&["create"]);
    assert!(!out.status.success(), "--app is required");

    // One token in the ledger: the valid one.
    let table = stdout(&ok(run(&["list"])));
    assert_eq!(table.lines().count(), 2, "{table}");
}

/// Every configuration error, whichever command meets it, reads `clawdforge: configuration: …`,
/// names its variable, and exits with 2.
#[test]
fn configuration_errors_name_the_setting_with_one_prefix_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let under_a_file = file.join("ledger.db").to_string_lossy().into_owned();
    // (environment, command, what the error names)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str], &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("DB_PATH", under_a_file.as_str())],
            &["worker"],
            "DB_PATH (db_path)",
        ),
        (
            vec![("DB_PATH", under_a_file.as_str())],
            &["token", "create", "--app", "a"],
            "DB_PATH (db_path)",
        ),
        (
            vec![("ACPX_SESSIONS_CWD", under_a_file.as_str())],
            &["worker"],
            "ACPX_SESSIONS_CWD (acpx_sessions_cwd)",
        ),
        (
            vec![("CLAWDFORGE_MAX_LIVE_SESSIONS", "lots")],
            &["sidecar"],
            "CLAWDFORGE_MAX_LIVE_SESSIONS",
        ),
    ];
    let cidr = vec![("ALLOW_CIDRS", "10.0.0.0/33")];
    let mut all = cases;
    for command in [
        &["worker"][..],
        &["sidecar"],
        &["serve"],
        &["token", "list"],
        &["healthcheck"],
        &["config"],
    ] {
        all.push((cidr.clone(), command, "the prefix length 33 is too long"));
    }
    for (env, args, named) in all {
        // A usable ledger unless the case names another (a later variable wins).
        let ok_ledger = dir.path().join("ok.db").to_string_lossy().into_owned();
        let env: Vec<(String, String)> = [("DB_PATH", ok_ledger.as_str())]
            .iter()
            .chain(&env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = clawdforge(dir.path(), &env, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("clawdforge: configuration: ") && last.contains(named),
            "{args:?} {env:?}: {err}"
        );
    }
    // The unusable ledger is named by its path, once.
    let out = clawdforge(
        dir.path(),
        &[("DB_PATH".into(), under_a_file.clone())],
        &["worker"],
    );
    let err = stderr(&out);
    assert_eq!(err.matches(&under_a_file).count(), 1, "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn config_prints_every_value_with_its_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clawdforge.toml");
    std::fs::write(&file, "max_live_sessions = 7\n").unwrap();
    let env: Vec<(String, String)> = [
        ("CLAWDFORGE_CONFIG", file.to_string_lossy().as_ref()),
        ("BIND_PORT", "9100"),
        ("ADMIN_BOOTSTRAP_TOKEN", "very-secret-root"),
        ("NATS_URL", "nats://forge:nats-secret@127.0.0.1:4222"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = ok(clawdforge(dir.path(), &env, &["config"]));
    let text = stdout(&out);
    let row = |key: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("bind_port"), ["bind_port", "9100", "env", "BIND_PORT"]);
    assert_eq!(
        row("max_live_sessions"),
        ["max_live_sessions", "7", "file", file.to_str().unwrap()]
    );
    assert_eq!(row("default_model"), ["default_model", "sonnet", "default"]);
    assert_eq!(
        row("nats_url")[1],
        "nats://forge:***@127.0.0.1:4222",
        "{text}"
    );
    assert!(row("admin_bootstrap_token").join(" ").contains("hidden"));
    assert!(!text.contains("very-secret-root") && !text.contains("nats-secret"));
    // A header, every key the environment sets, and the tables (agents, app_defaults).
    assert_eq!(
        text.lines().count(),
        1 + clawdforge::config::env_keys().len() + 2
    );
}

#[test]
fn every_help_points_to_the_configuration_table() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["worker", "--help"],
        &["sidecar", "--help"],
        &["serve", "--help"],
        &["token", "--help"],
        &["token", "create", "--help"],
        &["token", "list", "--help"],
        &["token", "revoke", "--help"],
        &["config", "--help"],
        &["healthcheck", "--help"],
    ] {
        let text = stdout(&ok(clawdforge(dir.path(), &[], args)));
        assert!(
            text.contains("configuration table of docs/configuration.md")
                && text.contains("`clawdforge config`"),
            "{args:?}:\n{text}"
        );
    }
    let guide = include_str!("../../docs/configuration.md");
    assert!(guide.contains("\n| key | environment | default | meaning |\n"));
}

#[test]
fn healthcheck_says_nats_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "nats://127.0.0.1:{}",
        crate::harness::free_port("127.0.0.1")
    );
    let out = clawdforge(
        dir.path(),
        &[("NATS_URL".into(), url.clone())],
        &["healthcheck"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("NATS at {url} is unreachable")),
        "{err}"
    );
}
