//! The Synadia Agent Protocol (v0.3), driven by its own Python SDK (synadia-ai-agents 0.8.1,
//! unchanged) from tests/fixtures/agent_protocol.py: discovery, a two-turn conversation with an
//! app's standing session, status and heartbeats, and the refusals.

use crate::harness::{env_of, repo, tool, Forge, Options, Via};

/// The default agent (the test ACP agent, natively) as the agent protocol names it.
const AGENT: &str = "default";

async fn start_forge() -> Forge {
    Forge::start_with(Options {
        via: Via::Acp,
        env: env_of(&[
            ("CLAWDFORGE_AGENT_PROTOCOL", "true"),
            ("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS", "1"),
        ]),
        ..Default::default()
    })
    .await
}

async fn token_of(forge: &Forge, app: &str) -> String {
    forge.admin.create_token(app, false).await.unwrap().token
}

/// Runs the caller script against `app`'s standing session with `token`; its JSON.
async fn caller(forge: &Forge, app: &str, token: &str, mode: &str) -> serde_json::Value {
    let out = tokio::process::Command::new(tool("python"))
        .arg(repo().join("tests/fixtures/agent_protocol.py"))
        .args([forge.nats.url.as_str(), AGENT, app, token, mode])
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
