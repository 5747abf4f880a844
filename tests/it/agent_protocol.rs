//! The Synadia Agent Protocol (v0.3), driven by its own Python SDK (synadia-ai-agents 0.8.1,
//! unchanged) from tests/fixtures/agent_protocol.py: discovery, a two-turn conversation with an
//! app's standing session, status and heartbeats, and the refusals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clawdforge::wire::CreateSession;
use serde_json::json;

use crate::harness::{asking_agent_toml, env_of, repo, tool, Forge, Options, Via, CLUSTERED};

/// The default agent (the test ACP agent, natively) as the agent protocol names it.
const AGENT: &str = "default";

const ON: [(&str, &str); 2] = [
    ("CLAWDFORGE_AGENT_PROTOCOL", "true"),
    ("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS", "1"),
];

async fn start_forge() -> Forge {
    Forge::start_with(Options {
        via: Via::Acp,
        env: env_of(&ON),
        ..Default::default()
    })
    .await
}

async fn token_of(forge: &Forge, app: &str) -> String {
    forge.admin.create_token(app, false).await.unwrap().token
}

/// Runs the caller script against `app`'s standing session with `token`; its JSON.
async fn caller(forge: &Forge, app: &str, token: &str, mode: &str) -> serde_json::Value {
    caller_at(forge, &forge.nats.url, app, token, &[mode]).await
}

/// Runs the caller script through the NATS server at `url` with `args` after the app's token
/// (its mode and the mode's arguments); its JSON.
async fn caller_at(
    forge: &Forge,
    url: &str,
    app: &str,
    token: &str,
    args: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new(tool("python"))
        .arg(repo().join("tests/fixtures/agent_protocol.py"))
        .args([url, AGENT, app, token])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", forge.logs());
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\n{}", forge.logs()))
}

/// Sessions of `app` in the ledger: (name, turns) each.
fn sessions_of(forge: &Forge, app: &str) -> Vec<(Option<String>, i64)> {
    let ledger = forge.ledger();
    let mut rows = ledger
        .prepare("SELECT name, turns FROM sessions WHERE app = ?1 ORDER BY created_at")
        .unwrap();
    rows.query_map([app], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn a_python_caller_discovers_an_agent_and_holds_a_conversation() {
    let forge = start_forge().await;
    let token = token_of(&forge, "notes").await;
    let seen = caller(&forge, "notes", &token, "converse").await;
    assert_eq!(seen["found"], 1, "{seen}");
    let metadata = &seen["metadata"];
    assert_eq!(metadata["agent"], AGENT, "{seen}");
    assert_eq!(metadata["owner"], "notes", "{seen}");
    assert_eq!(metadata["session"], "default", "{seen}");
    assert_eq!(metadata["protocol_version"], "0.3", "{seen}");
    assert_eq!(seen["session_name"], "default", "{seen}");
    assert_eq!(
        seen["prompt_subject"],
        "agents.prompt.default.notes.default"
    );
    assert_eq!(seen["queue_group"], "agents");
    assert_eq!(seen["endpoints"], serde_json::json!(["prompt", "status"]));
    assert_eq!(seen["prompt_metadata"]["attachments_ok"], "true", "{seen}");
    assert_eq!(seen["prompt_metadata"]["max_payload"], "1MB", "{seen}");
    // Liveness: status needs no token; the heartbeat beats at the configured interval.
    let status = &seen["status"];
    assert_eq!(status["agent"], AGENT, "{seen}");
    assert_eq!(status["owner"], "notes", "{seen}");
    assert_eq!(status["interval_s"], 1, "{seen}");
    let beat = &seen["heartbeats"][0];
    assert_eq!(beat["session"], "default", "{seen}");
    assert_eq!(beat["instance_id"], status["instance_id"], "{seen}");
    // Two turns of one session: the second sees the first; thoughts and tool calls are not
    // response text; the stream starts with the ack.
    assert_eq!(
        seen["turns"],
        serde_json::json!([
            "echo: first #history [history=first]",
            "echo: second #history [history=first|second]"
        ]),
        "{seen}"
    );
    for kinds in seen["kinds"].as_array().unwrap() {
        assert_eq!(kinds[0], "status:ack", "{seen}");
        assert!(kinds.as_array().unwrap().contains(&"response".into()));
    }
    assert_eq!(sessions_of(&forge, "notes"), [(Some("default".into()), 2)]);
}

#[tokio::test]
async fn a_refused_token_runs_nothing_and_another_apps_token_finds_no_session() {
    let forge = start_forge().await;
    // An app whose name is no plain token: discovered under its escaped name.
    token_of(&forge, "Photo.Box").await;
    let notes = token_of(&forge, "notes").await;
    let unknown = caller(&forge, "Photo.Box", "not-a-token", "refused").await;
    assert_eq!(unknown["owner"], "UGhvdG8uQm94", "{unknown}");
    assert_eq!(unknown["found"], 1, "{unknown}");
    let error = unknown["error"].as_str().unwrap_or_default();
    assert!(error.contains("service error 401"), "{unknown}");
    let other = caller(&forge, "Photo.Box", &notes, "refused").await;
    let error = other["error"].as_str().unwrap_or_default();
    assert!(error.contains("service error 404"), "{other}");
    // Nothing ran, nothing was created.
    assert_eq!(sessions_of(&forge, "Photo.Box"), []);
    assert_eq!(sessions_of(&forge, "notes"), []);
}

/// Waits until a worker's `agents` service of `owner` answers discovery.
async fn wait_registered(forge: &Forge, owner: &str) {
    use futures::StreamExt;
    let client = async_nats::connect(&forge.nats.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("$SRV.INFO.agents", inbox, "".into())
            .await
            .unwrap();
        let wait = std::time::Duration::from_millis(300);
        while let Ok(Some(reply)) = tokio::time::timeout(wait, replies.next()).await {
            // Before any service is there, the server's "no responders" (empty) comes.
            let info: Option<serde_json::Value> = serde_json::from_slice(&reply.payload).ok();
            if info.is_some_and(|info| info["metadata"]["owner"] == owner) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agents service of {owner}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The README's script, as it is there, against the test deployment.
#[tokio::test]
async fn the_readme_script_holds_two_turns() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("a Python block in the README")
        + 10;
    let script = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(script.lines().count() <= 20, "{script}");
    let forge = start_forge().await;
    let token = token_of(&forge, "demo").await;
    wait_registered(&forge, "demo").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two_turns.py");
    std::fs::write(
        &file,
        script.replace("nats://127.0.0.1:4222", &forge.nats.url),
    )
    .unwrap();
    let out = tokio::process::Command::new(tool("python"))
        .arg(&file)
        .arg(&token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "echo: hello\necho: and again\n");
}

/// Discovers `app`'s sessions (session token → services found) until `until` holds of them.
async fn sessions_until(
    forge: &Forge,
    app: &str,
    token: &str,
    until: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = caller_at(forge, &forge.nats.url, app, token, &["sessions"]).await;
        let sessions: BTreeMap<String, u64> =
            serde_json::from_value(seen["sessions"].clone()).unwrap();
        if until(&sessions) {
            return sessions;
        }
        assert!(
            Instant::now() < deadline,
            "discovery stayed at {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Turns of the session `id` in the ledger.
fn turns_of(forge: &Forge, id: &str) -> i64 {
    let ledger = forge.ledger();
    ledger
        .query_row(
            "SELECT turns FROM sessions WHERE session_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

/// Sessions made through `forge.session.create` are discovered, a named one by its name and
/// another by its id, and prompted there; closed through `forge.session.close`, a session
/// leaves discovery.
#[tokio::test]
async fn sessions_opened_and_closed_through_forge_come_and_go_in_discovery() {
    let forge = start_forge().await;
    let app = forge.app("notes").await;
    let token = app.token().unwrap().to_string();
    let named = CreateSession {
        name: Some("work".into()),
        ..Default::default()
    };
    let named = app.create_session(&named).await.unwrap().session_id;
    let unnamed = app.create_session(&CreateSession::default()).await.unwrap();
    let unnamed = unnamed.session_id;
    let seen = sessions_until(&forge, "notes", &token, |s| {
        s.contains_key("work") && s.contains_key(&unnamed)
    })
    .await;
    let expected = BTreeMap::from([
        ("default".into(), 1),
        ("work".into(), 1),
        (unnamed.clone(), 1),
    ]);
    assert_eq!(seen, expected);

    let args = ["prompt", &unnamed, "hi"];
    let prompted = caller_at(&forge, &forge.nats.url, "notes", &token, &args).await;
    assert_eq!(prompted["turns"], json!(["echo: hi"]));
    assert_eq!(
        (turns_of(&forge, &unnamed), turns_of(&forge, &named)),
        (1, 0)
    );

    app.close_session(&named).await.unwrap();
    let seen = sessions_until(&forge, "notes", &token, |s| !s.contains_key("work")).await;
    let expected = BTreeMap::from([("default".into(), 1), (unnamed, 1)]);
    assert_eq!(seen, expected);
}

/// Two workers, each on its own server of a cluster: each registers the app's session, a caller
/// finds both; prompts through either server are turns of the one session, in the agent process
/// of the worker that created it: a prompt the other worker got is passed on to it.
#[tokio::test]
async fn two_workers_register_each_and_pass_prompts_on_to_the_sessions_owner() {
    let mut forge = Forge::start_with(Options {
        via: Via::Acp,
        nats_config: Some(CLUSTERED.into()),
        env: env_of(&ON),
        ..Default::default()
    })
    .await;
    forge.spawn_far_worker().await;
    let urls = [forge.nats.url.clone(), forge.more_nats[0].url.clone()];
    let token = token_of(&forge, "pair").await;
    let both = sessions_until(&forge, "pair", &token, |s| s.get("default") == Some(&2)).await;
    assert_eq!(both, BTreeMap::from([("default".into(), 2)]));

    let first = ["prompt", "default", "one #history"];
    let first = caller_at(&forge, &urls[0], "pair", &token, &first).await;
    assert_eq!(first["turns"], json!(["echo: one #history [history=one]"]));
    let id: String = forge
        .ledger()
        .query_row(
            "SELECT session_id FROM sessions WHERE app = 'pair'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (owner, generation) = forge.owner(&id);
    let owner = forge.worker_index(&owner.expect("an owner"));
    // Through the other worker's server, which prefers its own subscriber, the other worker
    // (it only prefers: prompts go on until one was passed on, twelve at most).
    let mut said = vec!["one".to_string()];
    while said.len() < 13 && forge.passed_on_count(&id) == 0 {
        let word = format!("n{}", said.len() + 1);
        said.push(word.clone());
        let args = ["prompt", "default", &format!("{word} #history")];
        let seen = caller_at(&forge, &urls[1 - owner], "pair", &token, &args).await;
        let expected = format!("echo: {word} #history [history={}]", said.join("|"));
        assert_eq!(seen["turns"], json!([expected]), "{seen}");
    }
    let (owner_id, now) = forge.owner(&id);
    assert_eq!(now, generation, "the session never moved");
    let ran: Vec<String> = forge
        .turn_events(&id)
        .into_iter()
        .map(|e| e.worker_id)
        .collect();
    assert_eq!(
        ran,
        vec![owner_id.unwrap(); said.len()],
        "every turn ran on the owner"
    );
    let passed = forge.passed_on_count(&id);
    assert!(passed >= 1, "none of {} passed on", said.len() - 1);
}

/// With `permissions = "ask"`, a permission request is a query: a reply naming an option (id
/// or name, any case) answers it, anything else rejects it; the decisions are the caller's,
/// recorded with the turn as any answer.
#[tokio::test]
async fn a_permission_request_is_a_query_the_callers_reply_answers() {
    let toml = asking_agent_toml();
    // The agent's table is all the configuration's (Via::Acp would write one too).
    let forge = Forge::start_with(Options {
        via: Via::Acpx,
        config_toml: Some(toml),
        env: env_of(&ON),
        ..Default::default()
    })
    .await;
    let token = token_of(&forge, "asker").await;
    let mut outputs = Vec::new();
    for answer in ["ALLOW", "not sure"] {
        let args = ["ask", answer, "#permission=execute"];
        let seen = caller_at(&forge, &forge.nats.url, "asker", &token, &args).await;
        assert_eq!(
            seen["queries"],
            json!(["Try execute — reply one of: allow (Allow), reject (Reject)"]),
            "{seen}"
        );
        outputs.push(seen["turns"][0].as_str().unwrap().to_string());
    }
    assert!(outputs[0].ends_with("[permission=allow]"), "{outputs:?}");
    assert!(outputs[1].ends_with("[permission=reject]"), "{outputs:?}");
    let decided: Vec<(String, String)> = forge
        .ledger()
        .prepare("SELECT body FROM turn_events WHERE type = 'permission' ORDER BY turn")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|body| {
            let body: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
            let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
            (field("decision"), field("by"))
        })
        .collect();
    let by_caller = |d: &str| (d.to_string(), "caller".to_string());
    assert_eq!(decided, [by_caller("allowed"), by_caller("rejected")]);
}
