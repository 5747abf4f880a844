use super::*;

fn parse(text: &str) -> Result<ClaudeResult, String> {
    ClaudeResult::parse(text.as_bytes())
}

#[test]
fn a_successful_result() {
    let r = parse(
        r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2150,
                "num_turns":1,"result":"4","session_id":"s","total_cost_usd":0.0421,
                "usage":{"input_tokens":3},"permission_denials":[]}"#,
    )
    .unwrap();
    assert_eq!(
        r,
        ClaudeResult {
            subtype: Some("success".into()),
            is_error: false,
            result: Some("4".into()),
            errors: vec![],
            cost_usd: Some(0.0421),
            input_tokens: Some(3),
            output_tokens: None,
        }
    );
    assert!(!r.failed());
}

#[test]
fn is_error_with_subtype_success_is_a_failure() {
    let r = parse(
        r#"{"type":"result","subtype":"success","is_error":true,
                "result":"API Error: 529 overloaded","total_cost_usd":0}"#,
    )
    .unwrap();
    assert!(r.failed());
    assert_eq!(
        r.error_message(),
        "the agent reported an error (success): API Error: 529 overloaded"
    );
}

#[test]
fn error_subtypes_are_failures_and_name_their_errors() {
    let r = parse(
        r#"{"type":"result","subtype":"error_during_execution","is_error":true,
                "errors":["tool failed","then another"],"total_cost_usd":0.5}"#,
    )
    .unwrap();
    assert!(r.failed());
    assert_eq!(r.result, None);
    assert_eq!(r.cost_usd, Some(0.5));
    assert_eq!(
        r.error_message(),
        "the agent reported an error (error_during_execution): tool failed; then another"
    );
    let r = parse(r#"{"type":"result","subtype":"error_max_turns","is_error":false}"#).unwrap();
    assert!(r.failed());
    assert!(r.error_message().contains("error_max_turns"));
    assert!(r.error_message().contains("no details"));
}

#[test]
fn verbose_arrays_and_extra_lines_yield_the_last_result() {
    let array = r#"[{"type":"system","subtype":"init"},
            {"type":"assistant","message":{}},
            {"type":"result","subtype":"success","is_error":false,"result":"done"}]"#;
    assert_eq!(parse(array).unwrap().result.as_deref(), Some("done"));
    let lines = "warning: something\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\"}\n";
    assert_eq!(parse(lines).unwrap().result.as_deref(), Some("ok"));
}

#[test]
fn anything_else_is_bad_output() {
    for bad in [
        "",
        "   \n",
        "not json",
        "[1,2]",
        "42",
        r#"{"type":"assistant"}"#,
        r#"{"type":"result","subtype":"success"}"#,
        r#"{"type":"result","is_error":"no"}"#,
        r#"{"type":"result","is_error":false,"result":5}"#,
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    assert!(ClaudeResult::parse(b"\xff\xfe").is_err());
}

#[test]
fn the_command_line_holds_the_options_and_never_the_prompt() {
    let claude = Claude::new(
        "claude",
        ClaudeOptions {
            permission_mode: Some("acceptEdits".into()),
            allowed_tools: Some("Read,Edit".into()),
            max_turns: Some(3),
        },
    );
    let args = claude.args("opus");
    assert_eq!(
        args,
        [
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
        ]
    );
    let plain = Claude::new("claude", ClaudeOptions::default());
    let args = plain.args("sonnet");
    assert_eq!(args, ["-p", "--output-format", "json", "--model", "sonnet"]);
    let blank = Claude::new(
        "claude",
        ClaudeOptions {
            permission_mode: Some(" ".into()),
            ..Default::default()
        },
    );
    assert!(!blank
        .args("sonnet")
        .contains(&"--permission-mode".to_string()));
}

/// A `claude` made of a shell script, in a fresh directory that is also the run's cwd.
fn script(body: &str) -> (tempfile::TempDir, Claude) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("claude");
    std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let claude = Claude::new(bin.to_string_lossy(), ClaudeOptions::default());
    (dir, claude)
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn the_prompt_arrives_whole_on_stdin_whatever_its_size() {
    // Answers with where it ran, how the prompt came and how long it was.
    let (dir, claude) = script(
        r#"if [ "$6" = "--" ]; then p="$7"; via=argv; else p="$(cat)"; via=stdin; fi
printf '{"type":"result","subtype":"success","is_error":false,"result":"%s %s %s","total_cost_usd":0.25}' "$(pwd)" "$via" "${#p}""#,
    );
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    for (len, via) in [(10, "stdin"), (200_000, "stdin"), (300_000, "stdin")] {
        let out = claude
            .run("t", &cwd, "sonnet", &"y".repeat(len), 10 * SECOND)
            .await
            .unwrap();
        assert_eq!(
            out.result.result.unwrap(),
            format!("{} {via} {len}", cwd.display())
        );
        assert_eq!(out.result.cost_usd, Some(0.25));
    }
}

#[tokio::test]
async fn a_failing_exit_names_the_code_and_keeps_stderr() {
    let (dir, claude) = script("echo starting >&2; echo 'it broke' >&2; exit 3");
    let err = claude
        .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), Some(3));
    assert_eq!(err.stderr(), Some("starting\nit broke"));
    assert_eq!(err.to_string(), "claude exited with code 3: it broke");

    let (dir, claude) = script(
        r#"echo '{"type":"result","subtype":"error_max_turns","is_error":true,"total_cost_usd":1.5}'; exit 1"#,
    );
    let err = claude
        .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("error_max_turns"), "{err}");
    assert_eq!(err.cost_usd(), Some(1.5));

    let (dir, claude) = script("echo not json");
    let err = claude
        .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClaudeError::BadOutput {
                exit_code: Some(0),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_binary_cannot_be_started() {
    let claude = Claude::new("/nonexistent/claude", ClaudeOptions::default());
    let err = claude
        .run("t", Path::new("/"), "sonnet", "hi", SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err, ClaudeError::Spawn(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "agent `claude` could not be started: `/nonexistent/claude` does not exist"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_whole_group() {
    let (dir, claude) = script("echo waiting >&2; sleep 300 & echo $! > child.pid; wait");
    let started = std::time::Instant::now();
    let err = claude
        .run("t", dir.path(), "sonnet", "hi", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(started.elapsed() < 10 * SECOND);
    assert_eq!(
        err,
        ClaudeError::Timeout {
            stderr: "waiting".into()
        }
    );
    let pid = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
    assert!(
        gone(pid.trim().parse().unwrap()).await,
        "the background child survived"
    );
}

/// Whether `pid` has ended (it may linger as a zombie until its new parent reaps it).
async fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        if stat.map(|s| s.contains(") Z")).unwrap_or(true) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[test]
fn stream_json_lines_become_the_contracts_events() {
    let events = |line: &str| stream_events(line.as_bytes());
    assert_eq!(
        events(
            r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"hi"},{"type":"tool_use","id":"t1","name":"Edit","input":{"file_path":"/w/a.rs"}}]}}"#
        ),
        vec![
            EventBody::Thought { text: "hm".into() },
            EventBody::Message { text: "hi".into() },
            EventBody::ToolCall {
                tool_call_id: "t1".into(),
                title: "Edit".into(),
                kind: None,
                status: Some("in_progress".into()),
                locations: vec!["/w/a.rs".into()],
            },
        ]
    );
    assert_eq!(
        events(
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":"no"}]}}"#
        ),
        vec![EventBody::ToolCallUpdate {
            tool_call_id: "t1".into(),
            title: None,
            status: Some("failed".into()),
        }]
    );
    assert!(events(r#"{"type":"system","subtype":"init"}"#).is_empty());
    assert!(events("not json").is_empty());
}
