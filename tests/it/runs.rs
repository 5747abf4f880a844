//! One-shot runs (`forge.run`) against the stand-in `claude` of tests/fixtures.

use std::path::PathBuf;
use std::time::Duration;

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{subject, Run, RunRequest};

use crate::harness::{repo, tool, Forge, Options};
use crate::ledger;
use crate::sessions::{file, kind};

const COST: f64 = 0.0123;

/// The harness's environment for runs: the stand-in as CLAUDE_BIN, and the project's Node
/// first on PATH for its `#!/usr/bin/env node`.
pub fn claude_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let node_dir = tool("node").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        node_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stand_in = repo().join("tests/fixtures/claude");
    let mut env = vec![
        (
            "CLAUDE_BIN".to_string(),
            stand_in.to_string_lossy().into_owned(),
        ),
        ("PATH".to_string(), path),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

async fn start(extra: &[(&str, &str)]) -> Forge {
    Forge::start_with(Options {
        env: claude_env(extra),
        ..Default::default()
    })
    .await
}

pub fn run(prompt: &str) -> RunRequest {
    RunRequest {
        prompt: prompt.into(),
        model: None,
        timeout_secs: None,
        files: vec![],
    }
}

fn runs_root(forge: &Forge) -> PathBuf {
    std::fs::canonicalize(forge.dir.path().join("data/runs")).unwrap()
}

/// What the stand-in wrote about its invocation into the run's staging directory.
pub fn stand_in_record(forge: &Forge, run_id: &str) -> serde_json::Value {
    let path = runs_root(forge).join(run_id).join("claude-stand-in.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), forge.logs()));
    serde_json::from_str(&text).unwrap()
}

/// The only run of `app` in the ledger.
pub fn only_run_of(forge: &Forge, app: &str) -> ledger::Run {
    let mut rows = forge.runs();
    rows.retain(|r| r.app == app);
    assert_eq!(rows.len(), 1, "runs of {app}: {rows:?}");
    rows.remove(0)
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Whether `pid` has ended (it may linger as a zombie until its new parent reaps it).
pub async fn gone(pid: i64) -> bool {
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        if stat.map(|s| s.contains(") Z")).unwrap_or(true) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub async fn wait_for_running_runs(forge: &Forge, n: usize) {
    for _ in 0..500 {
        let running = forge
            .runs()
            .iter()
            .filter(|r| r.outcome == "running")
            .count();
        if running >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} runs never showed as running\n{}", forge.logs());
}

#[tokio::test]
async fn a_run_answers_with_the_result_and_is_recorded() {
    let forge = start(&[]).await;
    let app = forge.app("oneshot").await;

    let r = app.run(&run("what is 2 + 2?")).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result.as_deref(), Some("what is 2 + 2?"));
    assert_eq!(r.error, None);
    assert_eq!(
        r.model, "sonnet",
        "DEFAULT_MODEL when the request names none"
    );
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.cost_usd, Some(COST));
    assert!(uuid::Uuid::try_parse(&r.run_id).is_ok(), "{}", r.run_id);

    let record = stand_in_record(&forge, &r.run_id);
    assert_eq!(record["model"], "sonnet");
    assert_eq!(
        record["prompt_via"], "stdin",
        "never on the command line, which other processes can read"
    );
    assert_eq!(record["options"], serde_json::json!({}));
    assert_eq!(
        record["cwd"].as_str().unwrap(),
        runs_root(&forge).join(&r.run_id).to_str().unwrap(),
        "claude runs in the run's own staging directory"
    );

    let row = only_run_of(&forge, "oneshot");
    assert_eq!(row.run_id, r.run_id);
    assert_eq!(row.model, "sonnet");
    assert_eq!(row.outcome, "ok");
    assert_eq!(row.prompt.as_deref(), Some("what is 2 + 2?"));
    assert_eq!(row.prompt_sha256, sha256("what is 2 + 2?"));
    assert_eq!(row.result.as_deref(), Some("what is 2 + 2?"));
    assert_eq!(row.exit_code, Some(0));
    assert_eq!(row.duration_ms, Some(r.duration_ms as i64));
    assert_eq!(row.cost_usd, Some(COST));
    assert_eq!(row.error, None);
    assert_eq!(row.stderr_tail, None);
    assert!(row.finished_at.unwrap() >= row.created_at);
    assert!(!row.worker_id.is_empty());

    // A second run gets a directory of its own.
    let r2 = app.run(&run("again")).await.unwrap();
    assert_ne!(r2.run_id, r.run_id);
    assert!(runs_root(&forge).join(&r2.run_id).is_dir());
}

#[tokio::test]
async fn the_command_line_model_options_and_a_prompt_that_looks_like_an_option() {
    let forge = start(&[
        ("CLAWDFORGE_CLAUDE_PERMISSION_MODE", "acceptEdits"),
        ("CLAWDFORGE_CLAUDE_ALLOWED_TOOLS", "Read,Edit"),
        ("CLAWDFORGE_CLAUDE_MAX_TURNS", "3"),
    ])
    .await;
    let app = forge.app("cli").await;

    let prompt = "--help -p \"quoted\" 'single' $HOME `tick` \\ back\nline two\ttab ✓";
    let r = app
        .run(&RunRequest {
            model: Some("opus".into()),
            ..run(prompt)
        })
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.result.as_deref(),
        Some(prompt),
        "the prompt arrives byte-exact"
    );
    assert_eq!(r.model, "opus");
    let record = stand_in_record(&forge, &r.run_id);
    assert_eq!(record["model"], "opus");
    assert_eq!(
        record["argv"],
        serde_json::json!([
            "-p",
            "--output-format",
            "json",
            "--model",
            "opus",
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "Read,Edit",
            "--max-turns",
            "3",
        ])
    );

    for bad in ["-p", "--model", "a b", ""] {
        let req = RunRequest {
            model: Some(bad.into()),
            ..run("hi")
        };
        assert_eq!(kind(app.run(&req).await), ErrorKind::BadRequest, "{bad:?}");
    }
}

#[tokio::test]
async fn a_prompt_too_long_for_argv_arrives_whole() {
    let forge = start(&[]).await;
    let app = forge.app("big").await;
    let prompt = format!("{}\nend ✓", "0123456789abcdef".repeat(150 * 1024 / 16));
    let r = app.run(&run(&prompt)).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result.as_deref(), Some(prompt.as_str()));
    let record = stand_in_record(&forge, &r.run_id);
    assert_eq!(record["prompt_via"], "stdin");
    assert_eq!(
        record["argv"],
        serde_json::json!(["-p", "--output-format", "json", "--model", "sonnet"])
    );
}

#[tokio::test]
async fn files_are_staged_and_listed_ahead_of_the_prompt() {
    let forge = start(&[("CLAWDFORGE_LEDGER_KEEP_TEXT", "false")]).await;
    let app = forge.app("files").await;
    let r = app
        .run(&RunRequest {
            files: vec![
                file("notes.md", "# notes\n"),
                file("data.json", "{\"a\":1}"),
            ],
            ..run("summarise these")
        })
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let dir = runs_root(&forge).join(&r.run_id);
    let notes = dir.join("notes.md");
    let data = dir.join("data.json");
    let expected = format!(
        "[Attached files]\n- {}\n- {}\n\nsummarise these",
        notes.display(),
        data.display()
    );
    assert_eq!(r.result.as_deref(), Some(expected.as_str()));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "# notes\n");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "{\"a\":1}");

    // With ledger_keep_text off, the ledger holds sizes and hashes: of the prompt as sent.
    let row = only_run_of(&forge, "files");
    assert_eq!(row.prompt, None);
    assert_eq!(row.prompt_bytes, "summarise these".len() as i64);
    assert_eq!(row.prompt_sha256, sha256("summarise these"));
    assert_eq!(row.result, None);
    assert_eq!(row.result_bytes, Some(expected.len() as i64));

    // Bad names are refused before anything is staged or recorded.
    let staged = std::fs::read_dir(runs_root(&forge)).unwrap().count();
    for bad in ["../escape.md", "a/b.md", "..", "", "/etc/passwd", "x\ny"] {
        let req = RunRequest {
            files: vec![file(bad, "x")],
            ..run("hi")
        };
        assert_eq!(kind(app.run(&req).await), ErrorKind::BadRequest, "{bad:?}");
    }
    let twice = RunRequest {
        files: vec![file("a.md", "1"), file("a.md", "2")],
        ..run("hi")
    };
    assert_eq!(kind(app.run(&twice).await), ErrorKind::BadRequest);
    assert_eq!(
        std::fs::read_dir(runs_root(&forge)).unwrap().count(),
        staged
    );
    only_run_of(&forge, "files");
    assert!(!forge.dir.path().join("data/escape.md").exists());
}

#[tokio::test]
async fn every_failure_kind_answers_and_is_recorded() {
    let forge = start(&[]).await;

    // A non-zero exit: agent_error, with the exit code and stderr in the ledger.
    let app = forge.app("exit").await;
    let err = app.run(&run("fail please #exit=3")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AgentError, "{err}");
    assert!(err.to_string().contains("code 3"), "{err}");
    let row = only_run_of(&forge, "exit");
    assert_eq!(row.outcome, "agent_error");
    assert_eq!(row.exit_code, Some(3));
    assert!(row.finished_at.is_some());
    assert!(row.error.unwrap().contains("code 3"));
    let tail = row.stderr_tail.unwrap();
    assert!(tail.contains("failing with code 3 as asked"), "{tail}");

    // Output that is not the result JSON: agent_error, although the exit was 0.
    let app = forge.app("garbage").await;
    let err = app.run(&run("#garbage")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AgentError, "{err}");
    let row = only_run_of(&forge, "garbage");
    assert_eq!(row.outcome, "agent_error");
    assert_eq!(row.exit_code, Some(0));
    assert!(row.error.unwrap().contains("unexpected claude output"));

    // is_error with subtype "success": a Run that is not ok, with the agent's words.
    let app = forge.app("refused").await;
    let r = app.run(&run("#error-result")).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.result.as_deref(), Some("stand-in: the model refused"));
    let error = r.error.clone().unwrap();
    assert!(error.contains("the model refused"), "{error}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.cost_usd, Some(COST));
    let row = only_run_of(&forge, "refused");
    assert_eq!(row.outcome, "error_result");
    assert_eq!(row.error, Some(error));
    assert_eq!(row.result.as_deref(), Some("stand-in: the model refused"));
    assert_eq!(row.cost_usd, Some(COST));

    // An error subtype without a result text.
    let app = forge.app("tool-failed").await;
    let r = app.run(&run("#error-during-execution")).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.result, None);
    let error = r.error.unwrap();
    assert!(error.contains("error_during_execution"), "{error}");
    assert!(error.contains("a tool failed"), "{error}");
    assert_eq!(only_run_of(&forge, "tool-failed").outcome, "error_result");

    // A timeout: the reply says so, the ledger too.
    let app = forge.app("slow").await;
    let req = RunRequest {
        timeout_secs: Some(1),
        ..run("#sleep=20000")
    };
    assert_eq!(kind(app.run(&req).await), ErrorKind::Timeout);
    let row = only_run_of(&forge, "slow");
    assert_eq!(row.outcome, "timeout");
    assert_eq!(row.exit_code, None);
    assert!(row.duration_ms.unwrap() >= 1000);
}

#[tokio::test]
async fn a_timeout_leaves_no_process_behind() {
    let forge = start(&[]).await;
    let app = forge.app("hang").await;
    let req = RunRequest {
        timeout_secs: Some(2),
        ..run("start a child and hang #spawn-hang")
    };
    assert_eq!(kind(app.run(&req).await), ErrorKind::Timeout);
    let row = only_run_of(&forge, "hang");
    assert_eq!(row.outcome, "timeout");
    let dir = runs_root(&forge).join(&row.run_id);
    let claude_pid = stand_in_record(&forge, &row.run_id)["pid"]
        .as_i64()
        .unwrap();
    let child_pid: i64 = std::fs::read_to_string(dir.join("child.pid"))
        .expect("the stand-in's child wrote its pid")
        .trim()
        .parse()
        .unwrap();
    assert!(gone(claude_pid).await, "claude ({claude_pid}) survived");
    assert!(gone(child_pid).await, "its child ({child_pid}) survived");
}

#[tokio::test]
async fn a_run_ends_when_claude_exits_and_what_it_left_behind_is_killed() {
    let forge = start(&[]).await;
    let app = forge.app("leaves").await;
    let req = RunRequest {
        timeout_secs: Some(30),
        ..run("answer, leaving a child that holds stdout #spawn-exit")
    };
    let reply = app
        .run(&req)
        .await
        .expect("the run answers when claude exits");
    assert!(reply.ok, "{reply:?}");
    assert_eq!(
        reply.result.as_deref(),
        Some("answer, leaving a child that holds stdout #spawn-exit")
    );
    let row = only_run_of(&forge, "leaves");
    assert_eq!(row.outcome, "ok");
    let child_pid: i64 =
        std::fs::read_to_string(runs_root(&forge).join(&row.run_id).join("child.pid"))
            .expect("the stand-in's child wrote its pid")
            .trim()
            .parse()
            .unwrap();
    assert!(gone(child_pid).await, "the child ({child_pid}) survived");
}

#[tokio::test]
async fn runs_queue_beyond_their_bound_then_answer_at_capacity() {
    let forge = start(&[
        ("CLAWDFORGE_MAX_CONCURRENT_RUNS", "1"),
        ("CLAWDFORGE_MAX_QUEUED_RUNS", "1"),
    ])
    .await;
    let app = forge.app("busy").await;
    let release = forge.dir.path().join("release");
    let held = |word: &str| {
        let app = app.clone();
        let req = run(&format!("{word} #wait-file={}", release.display()));
        tokio::spawn(async move { app.run(&req).await })
    };
    let first = held("first");
    wait_for_running_runs(&forge, 1).await;
    // The first holds the one slot until released: of two more, one waits in the queue and the
    // other finds it full, at once.
    let either = futures::future::select(held("a"), held("b"));
    let answered = tokio::time::timeout(Duration::from_secs(30), either).await;
    let (refused, queued) = match answered.expect("neither run was refused") {
        futures::future::Either::Left((done, other)) => (done, other),
        futures::future::Either::Right((done, other)) => (done, other),
    };
    assert_eq!(kind(refused.unwrap()), ErrorKind::AtCapacity);
    let rows = |forge: &Forge| forge.rows_in("runs");
    std::fs::write(&release, "").unwrap();
    assert!(first.await.unwrap().unwrap().ok);
    let queued: Run = queued.await.unwrap().unwrap();
    assert!(queued.ok);
    assert_eq!(rows(&forge), 2, "the refused run left no row");
}

#[tokio::test]
async fn requests_are_checked_before_anything_runs() {
    // The default harness points CLAUDE_BIN at nothing.
    let forge = Forge::start().await;
    let app = forge.app("checks").await;

    let anonymous: ForgeClient = app.with_token(None);
    assert_eq!(
        kind(anonymous.run(&run("hi")).await),
        ErrorKind::Unauthorized
    );
    assert_eq!(kind(app.run(&run("  \n")).await), ErrorKind::BadRequest);
    let huge = "x".repeat(256 * 1024 + 1);
    assert_eq!(kind(app.run(&run(&huge)).await), ErrorKind::PayloadTooLarge);
    for t in [0, 1801] {
        let req = RunRequest {
            timeout_secs: Some(t),
            ..run("hi")
        };
        assert_eq!(kind(app.run(&req).await), ErrorKind::BadRequest, "{t}");
    }
    let token = forge.admin.create_token("raw", false).await.unwrap().token;
    for body in [
        &br#"{"prompt": "hi", "extra": 1}"#[..],
        br#"{"model": "sonnet"}"#,
        br#"{"prompt": 5}"#,
        b"[]",
    ] {
        let reply = forge
            .admin
            .raw(
                subject::RUN,
                Some(&token),
                body.to_vec().into(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, Some(400), "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(
        forge.rows_in("runs"),
        0,
        "refused requests leave no run behind"
    );

    // A worker without the claude CLI: agent_error, recorded.
    let err = app.run(&run("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AgentError);
    assert!(err.to_string().contains("not available"), "{err}");
    assert_eq!(only_run_of(&forge, "checks").outcome, "agent_error");
}

/// A reply larger than the NATS server accepts is answered with payload_too_large, not lost.
#[tokio::test]
async fn a_reply_too_large_for_nats_is_refused_not_lost() {
    let forge = start(&[]).await;
    let app = forge.app("big-replies").await;
    let mut req = run("#big=2000000");
    req.timeout_secs = Some(30);
    // Answered with its own error, not left to time out.
    let err = app.run(&req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err:?}");
    assert_eq!(
        only_run_of(&forge, "big-replies").outcome,
        "ok",
        "the run itself succeeded and is recorded"
    );
}

#[tokio::test]
async fn a_streamed_run_sends_claudes_events_as_it_prints_them_then_the_run() {
    let forge = start(&[]).await;
    let app = forge.app("live-runs").await;
    let release = forge.dir.path().join("release");
    let req = run(&format!("go #wait-file={}", release.display()));
    let mut stream = app
        .open_stream(subject::RUN, &req, Duration::from_secs(60))
        .await
        .unwrap();
    use clawdforge::client::Frame;
    use clawdforge::wire::EventBody;
    // claude printed its thinking before it waits: the event comes while the run runs.
    let first = match stream.next().await {
        Some(Ok(Frame::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    };
    assert!(
        matches!(&first.body, EventBody::Thought { text } if text == "reading the prompt"),
        "{first:?}"
    );
    assert_eq!((first.seq, first.session_id.as_deref()), (1, None));
    let run_id = first
        .run_id
        .clone()
        .expect("a run's event carries its run_id");
    assert!(!release.exists());
    std::fs::write(&release, "").unwrap();

    let mut events = vec![first];
    let mut reply = None;
    while let Some(frame) = stream.next().await {
        match frame.unwrap() {
            Frame::Event(e) => events.push(e),
            Frame::Heartbeat => {}
            Frame::Reply(r) => reply = Some(r),
        }
    }
    let done: Run = reply.expect("the final message").parse().unwrap();
    assert_eq!(done.run_id, run_id);
    assert!(done.ok, "{done:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            "thought",
            "tool_call",
            "tool_call_update",
            "message",
            "usage"
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(
        matches!(&events[1].body, EventBody::ToolCall { title, locations, .. }
        if title == "Read" && locations == &["/tmp/stand-in.md".to_string()])
    );
    assert!(
        matches!(&events[3].body, EventBody::Message { text } if Some(text) == done.result.as_ref())
    );
    assert!(matches!(events[4].body, EventBody::Usage { cost_usd: Some(c), .. } if c == COST));
    // The stand-in was asked for stream-json, which claude -p gives only with --verbose.
    let argv = stand_in_record(&forge, &run_id)["argv"].clone();
    assert_eq!(argv[2], "stream-json");
    assert_eq!(argv[3], "--verbose");
}
