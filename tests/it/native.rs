//! The native (`backend = "acp"`) backend: one agent process per app hosting its sessions,
//! crash and idle restarts with the sessions loaded again, and permission policies (these on
//! both backends).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{CreateSession, EventBody, PermissionDecision};

use crate::harness::{agent_command, agent_pid, agent_processes, running, Forge, Options, Via};
use crate::sessions::{kind, turn};

pub async fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "agent process {pid} is still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn session(app: &ForgeClient) -> String {
    app.create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id
}

#[tokio::test]
async fn one_agent_process_hosts_every_session_of_an_app() {
    let forge = Forge::start_via(Via::Acp).await;
    let mut pids = Vec::new();
    for name in ["left", "right"] {
        let app = forge.app(name).await;
        let mut mine = BTreeSet::new();
        for _ in 0..4 {
            let id = session(&app).await;
            for n in 1..=2 {
                let t = app.turn(&turn(&id, &format!("{n} #count"))).await.unwrap();
                assert!(t.output.starts_with(&format!("echo: {n} #count [n=")));
                mine.insert(agent_pid(&t.output));
            }
        }
        assert_eq!(
            mine.len(),
            1,
            "{name}: one process for its sessions: {mine:?}"
        );
        pids.extend(mine);
    }
    assert_ne!(pids[0], pids[1], "each app has its own agent process");
    let homes = forge.dir.path().join("data/homes");
    assert_eq!(
        agent_processes(&homes),
        pids.iter().copied().collect(),
        "8 open sessions of 2 apps: 2 agent processes"
    );
}

#[tokio::test]
async fn an_agent_that_crashes_fails_its_turns_and_the_next_turns_load_their_sessions() {
    let forge = Forge::start_via(Via::Acp).await;
    let app = forge.app("fragile").await;
    let (a, b, c) = (
        session(&app).await,
        session(&app).await,
        session(&app).await,
    );
    let first = app.turn(&turn(&a, "warm #count")).await.unwrap();
    // In the sessions' directories: the confined agent may write nowhere else.
    let running = |id: &str| forge.session_dir(id).join("running");
    let held = |id: &str| {
        let (app, id) = (app.clone(), id.to_string());
        let prompt = format!(
            "held #on-prompt={} #wait-file={}",
            running(&id).display(),
            forge.session_dir(&id).join("never").display()
        );
        tokio::spawn(async move { app.turn(&turn(&id, &prompt)).await })
    };
    let (ha, hb) = (held(&a), held(&b));
    wait_for_file(&running(&a)).await;
    wait_for_file(&running(&b)).await;
    assert_eq!(
        kind(app.turn(&turn(&c, "#crash")).await),
        ErrorKind::AgentError
    );
    assert_eq!(kind(ha.await.unwrap()), ErrorKind::AgentError);
    assert_eq!(kind(hb.await.unwrap()), ErrorKind::AgentError);
    wait_until_gone(agent_pid(&first.output)).await;

    let mut pids = BTreeSet::new();
    for id in [&a, &b, &c] {
        let t = app.turn(&turn(id, "again #origin #count #history")).await;
        let t = t.unwrap();
        assert!(
            t.output
                .starts_with("echo: again #origin #count #history [n=")
                && t.output.contains("[origin=load]")
                && t.output.ends_with("|again]"),
            "loaded into the new process: {}",
            t.output
        );
        pids.insert(agent_pid(&t.output));
    }
    assert_eq!(pids.len(), 1, "one new process: {pids:?}");
    // What each session was told before the crash came back with it.
    let told = app.turn(&turn(&a, "last #history")).await.unwrap();
    assert!(
        told.output.ends_with("[history=warm|held|again|last]"),
        "{}",
        told.output
    );
    assert!(!pids.contains(&agent_pid(&first.output)));
    let events = forge.all_events().into_iter();
    let failed = events.filter(|e| e.is_turn() && e.outcome == "agent_error");
    assert_eq!(failed.count(), 3);
}

#[tokio::test]
async fn an_idle_agent_process_stops_and_the_next_turn_starts_it_with_the_session_loaded() {
    let forge = Forge::start_with(Options {
        via: Via::Acp,
        env: vec![("CLAWDFORGE_AGENT_IDLE_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let app = forge.app("sleepy").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "one #origin #count")).await.unwrap();
    assert!(first.output.contains("[origin=new]"), "{}", first.output);
    let pid = agent_pid(&first.output);
    wait_until_gone(pid).await;
    forge
        .wait_for_log(&["agent process idle; stopping it"])
        .await;
    let second = app.turn(&turn(&id, "two #origin #count #history")).await;
    let second = second.unwrap();
    assert!(
        second
            .output
            .starts_with("echo: two #origin #count #history [n=1 pid=")
            && second.output.contains("[origin=load]")
            && second.output.ends_with("[history=one|two]"),
        "the new process remembers the first turn: {}",
        second.output
    );
    assert_ne!(agent_pid(&second.output), pid);
}

/// Named agents `all`, `reads` and `deny`, through `via`, with those permission policies.
fn policy_agents(via: Via) -> String {
    let backend = match via {
        Via::Acpx => "acpx",
        Via::Acp => "acp",
    };
    ["allow_all", "allow_reads", "deny_all"]
        .iter()
        .map(|p| {
            format!(
                "[agents.{p}]\ncommand = {:?}\nbackend = \"{backend}\"\npermissions = \"{p}\"\n",
                agent_command("")
            )
        })
        .collect()
}

async fn permissions_follow_the_agents_policy_and_each_decision_is_an_event(via: Via) {
    let forge = Forge::start_with(Options {
        config_toml: Some(policy_agents(via)),
        ..Default::default()
    })
    .await;
    let app = forge.app("careful").await;
    let cases = [
        ("allow_all", "execute", "allow", PermissionDecision::Allowed),
        ("allow_reads", "read", "allow", PermissionDecision::Allowed),
        (
            "allow_reads",
            "execute",
            "reject",
            PermissionDecision::Rejected,
        ),
        ("deny_all", "read", "reject", PermissionDecision::Rejected),
    ];
    for (agent, tool, chosen, decision) in cases {
        let s = app
            .create_session(&CreateSession {
                agent: Some(agent.into()),
                files: vec![],
                name: None,
            })
            .await
            .unwrap();
        let req = turn(&s.session_id, &format!("#permission={tool}"));
        let mut decisions = Vec::new();
        let t = app
            .turn_streaming(&req, Duration::from_secs(60), |e| {
                if let EventBody::Permission {
                    decision, title, ..
                } = &e.body
                {
                    decisions.push((*decision, title.clone()));
                }
            })
            .await
            .unwrap();
        assert!(
            t.output.ends_with(&format!("[permission={chosen}]")),
            "{agent} {tool}: {}",
            t.output
        );
        assert_eq!(
            decisions,
            vec![(decision, Some(format!("Try {tool}")))],
            "{agent} {tool}"
        );
    }
}

crate::both_backends!(permissions_follow_the_agents_policy_and_each_decision_is_an_event);

#[tokio::test]
async fn a_worker_killed_mid_session_loses_nothing_the_survivor_loads_the_session() {
    let mut forge = Forge::start_via(Via::Acp).await;
    let app = forge.app("durable").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "one #origin #count")).await.unwrap();
    assert!(first.output.contains("[origin=new]"), "{}", first.output);
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    forge.kill_worker_and_wait(0).await;
    let second = app.turn(&turn(&id, "two #origin #count #history")).await;
    let second = second.unwrap();
    assert_eq!(second.turn, 2);
    assert!(
        second
            .output
            .starts_with("echo: two #origin #count #history [n=1 pid=")
            && second.output.contains("[origin=load]")
            && second.output.ends_with("[history=one|two]"),
        "the survivor's own agent process, with the session loaded: {}",
        second.output
    );
    assert_ne!(agent_pid(&second.output), agent_pid(&first.output));
    // The killed worker's agent went with it (its stdin closed).
    wait_until_gone(agent_pid(&first.output)).await;
}

#[tokio::test]
async fn an_agent_that_cannot_load_sessions_starts_them_anew_and_the_turn_says_so() {
    let forge = Forge::start_with(Options {
        env: vec![
            ("ACPX_AGENT".into(), agent_command(" --no-load")),
            ("CLAWDFORGE_AGENT_IDLE_SECS".into(), "1".into()),
        ],
        via: Via::Acp,
        ..Default::default()
    })
    .await;
    let app = forge.app("forgetful").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "one #count")).await.unwrap();
    wait_until_gone(agent_pid(&first.output)).await;
    let mut notices = Vec::new();
    let second = app
        .turn_streaming(&turn(&id, "two #origin"), Duration::from_secs(60), |e| {
            if let EventBody::Notice { text } = &e.body {
                notices.push(text.clone());
            }
        })
        .await
        .unwrap();
    assert!(second.output.ends_with("[origin=new]"), "{}", second.output);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("earlier turns are gone"), "{notices:?}");
}
