//! Apps' policies, the limits counted in the transactions that admit work, and usage by day.

use super::{by, ledger, session};
use crate::ledger::*;
use crate::quota::{Limit, Limits};
use crate::values::{SessionId, Timestamp};
use crate::wire::PolicySet;

fn now_session(id: &str, app: &str) -> SessionRow {
    SessionRow {
        created_at: Timestamp::now(),
        ..session(id, app)
    }
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

fn refusals(l: &Ledger, app: &str, limit: Limit) -> u64 {
    let conn = rusqlite::Connection::open(l.path()).unwrap();
    conn.query_row(
        "SELECT COALESCE(SUM(refused), 0) FROM app_refusals WHERE app = ?1 AND limit_name = ?2",
        [app, limit.name()],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

#[tokio::test]
async fn a_change_keeps_the_fields_it_leaves_out() {
    let (_d, l) = ledger();
    let set = |json: &str| serde_json::from_str::<PolicySet>(json).unwrap();
    let at = Timestamp::now();
    l.set_policy(
        set(r#"{"app": "a", "max_open_sessions": 2, "turns_per_day": 9}"#),
        at,
    )
    .await
    .unwrap();
    let row = l
        .set_policy(set(r#"{"app": "a", "turns_per_day": null}"#), at)
        .await
        .unwrap();
    assert_eq!(row.fields.max_open_sessions, Some(2));
    assert_eq!(row.fields.turns_per_day, None);
    assert_eq!(l.policy("a".into()).await.unwrap().unwrap(), row);
    assert_eq!(l.policy("b".into()).await.unwrap(), None);
    l.insert_token(TokenRow {
        token_id: "t".into(),
        app: "b".into(),
        admin: false,
        token_hash: "h".into(),
        created_at: at,
        revoked_at: None,
    })
    .await
    .unwrap();
    assert_eq!(l.app_names().await.unwrap(), ["a", "b"]);
}

#[tokio::test]
async fn a_create_past_the_apps_open_sessions_writes_only_its_refusal() {
    let (_d, l) = ledger();
    let two = limits(|l| l.max_open_sessions = Some(2));
    for id in ["s1", "s2"] {
        let made = l.create_session(now_session(id, "a"), "w".into(), 10, two.clone());
        assert_eq!(made.await.unwrap(), CreateOutcome::Created);
    }
    let third = l.create_session(now_session("s3", "a"), "w".into(), 10, two.clone());
    let CreateOutcome::Refused(refused) = third.await.unwrap() else {
        panic!("the third is refused")
    };
    assert_eq!(refused.limit, Limit::MaxOpenSessions);
    assert_eq!(refused.retry_after_secs, None);
    assert_eq!(l.session("s3".into()).await.unwrap(), None);
    assert!(l.events_of("s3".into()).await.unwrap().is_empty());
    assert_eq!(refusals(&l, "a", Limit::MaxOpenSessions), 1);
    // Another app's sessions are not counted against this one.
    let other = l.create_session(now_session("s4", "b"), "w".into(), 10, two);
    assert_eq!(other.await.unwrap(), CreateOutcome::Created);
}

#[tokio::test]
async fn requests_per_minute_refuse_past_the_limit_with_when_to_retry() {
    let (_d, l) = ledger();
    let at = Timestamp::now();
    for _ in 0..2 {
        assert_eq!(l.count_request("a".into(), 2, at).await.unwrap(), None);
    }
    let refused = l.count_request("a".into(), 2, at).await.unwrap().unwrap();
    assert_eq!(refused.limit, Limit::RequestsPerMinute);
    let retry = refused.retry_after_secs.unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(l.count_request("b".into(), 2, at).await.unwrap(), None);
    let used = l.used("a".into(), at, at).await.unwrap();
    assert_eq!(
        used.requests_this_minute, 2,
        "the refused one is not counted"
    );
    assert_eq!(refusals(&l, "a", Limit::RequestsPerMinute), 1);
}

/// Begins and ends a turn of `id` whose agent reported the session had cost `reported`.
async fn turn_reporting(l: &Ledger, id: &str, reported: Option<f64>) {
    let started = l
        .begin_turn(TurnStart {
            session_id: id.into(),
            app: "a".into(),
            by: by("w", Timestamp::now()),
            prompt: Recorded::of("p", true),
            alive_since: Timestamp::now(),
            wait_id: None,
        })
        .await
        .unwrap();
    let BeginTurn::Started { event_id, .. } = started else {
        panic!("{started:?}")
    };
    let detail = EventDetail {
        reported_cost_usd: reported,
        ..EventDetail::of(EventOutcome::Ok)
    };
    let at = Timestamp::now();
    l.finish_turn(id.into(), event_id, at, detail)
        .await
        .unwrap();
}

#[tokio::test]
async fn agents_cost_counts_each_turns_growth_of_the_sessions_reported_cost() {
    let (_d, l) = ledger();
    for id in ["s1", "s2"] {
        let made = l.create_session(now_session(id, "a"), "w".into(), 10, Limits::default());
        made.await.unwrap();
    }
    // ACP reports the session's cost so far: 0.10, then 0.25 (this turn: 0.15), a turn that
    // reported nothing, then 0.05 after the count started again (an agent that loaded the
    // session anew): 0.05. Another session's reports are its own.
    for reported in [Some(0.10), Some(0.25), None, Some(0.05)] {
        turn_reporting(&l, "s1", reported).await;
    }
    turn_reporting(&l, "s2", Some(0.5)).await;
    let at = Timestamp::now();
    let used = l.used("a".into(), at, at).await.unwrap();
    assert!((used.agent_usd_this_month - 0.80).abs() < 1e-9, "{used:?}");
    assert_eq!(used.turns_today, 5);
    let capped = Admission {
        limits: limits(|l| l.agent_usd_per_month = Some(0.80)),
        alive_since: at,
    };
    let taken = l.reserve_turn(
        SessionId::new().to_string().as_str().into(),
        "s1".into(),
        "a".into(),
        by("w", at),
        capped,
    );
    let Reserved::Refused(refused) = taken.await.unwrap() else {
        panic!("the budget is spent")
    };
    assert_eq!(refused.limit, Limit::AgentUsdPerMonth);
    assert!(refused.retry_after_secs.unwrap() > 0);
    let day = l.usage_days(
        Some("a".into()),
        at.utc().date_naive(),
        at.utc().date_naive(),
    );
    let day = day.await.unwrap();
    assert_eq!(day.len(), 1);
    assert_eq!((day[0].sessions_created, day[0].turns), (2, 5));
    assert!((day[0].agent_usd - 0.80).abs() < 1e-9);
    assert_eq!(day[0].refused.get(&Limit::AgentUsdPerMonth), Some(&1));
}

#[tokio::test]
async fn runs_are_admitted_within_their_apps_concurrency_and_spend() {
    let (_d, l) = ledger();
    let run = |id: &str| NewRun {
        run_id: id.into(),
        app: "a".into(),
        model: "sonnet".into(),
        prompt: Recorded::of("p", true),
    };
    let one = limits(|l| {
        l.max_concurrent_runs = Some(1);
        l.runs_usd_per_day = Some(1.0);
    });
    let now = || by("w", Timestamp::now());
    assert_eq!(
        l.begin_run(run("r1"), now(), one.clone()).await.unwrap(),
        RunBegun::Begun
    );
    let second = l.begin_run(run("r2"), now(), one.clone()).await.unwrap();
    assert!(matches!(second, RunBegun::Refused(r) if r.limit == Limit::MaxConcurrentRuns));
    let end = RunEnd {
        cost_usd: Some(1.5),
        ..RunEnd::of(RunOutcome::Ok)
    };
    l.finish_run("r1".into(), Timestamp::now(), end)
        .await
        .unwrap();
    let third = l.begin_run(run("r3"), now(), one.clone()).await.unwrap();
    let RunBegun::Refused(spent) = third else {
        panic!("the day's budget is spent")
    };
    assert_eq!(spent.limit, Limit::RunsUsdPerDay);
    assert!(
        spent
            .message
            .contains("runs_usd_per_day = 1 USD (used: 1.5 USD"),
        "{}",
        spent.message
    );
    assert_eq!(l.run("r2".into()).await.unwrap(), None);
    assert_eq!(l.run("r3".into()).await.unwrap(), None);
    let today = Timestamp::now().utc().date_naive();
    let days = l.usage_days(None, today, today).await.unwrap();
    let a = days.iter().find(|d| d.app == "a").unwrap();
    assert_eq!((a.runs, a.runs_usd), (1, 1.5));
    assert_eq!(a.refused.len(), 2);
}
