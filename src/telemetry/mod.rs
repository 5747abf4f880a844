//! What the service measures, under the names DESIGN.md's "Metrics and traces" table gives
//! (Prometheus naming: units in the names, `_total` counters, seconds; labels bounded — an op,
//! an outcome, an agent, a backend, an app, an event type, a limit, never an id).
//!
//! The figures are recorded through the `metrics` crate's macros, which cost nothing while no
//! recorder is installed: a worker installs one only when `metrics_addr` is set, the sidecar
//! always. [`Metrics::render`] gives the Prometheus text.

pub mod genai;
mod process;
mod serve;
pub mod trace;
mod usd;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use serve::{serve_metrics, MetricsServer, Refresh, TEXT_FORMAT};

/// The series, by name.
pub mod names {
    pub const REQUESTS: &str = "clawdforge_requests_total";
    pub const REQUEST_DURATION: &str = "clawdforge_request_duration_seconds";
    pub const TURNS: &str = "clawdforge_turns_total";
    pub const TURN_DURATION: &str = "clawdforge_turn_duration_seconds";
    pub const TURN_FIRST_EVENT: &str = "clawdforge_turn_first_event_seconds";
    pub const EVENTS: &str = "clawdforge_events_total";
    pub const TOOL_CALLS: &str = "clawdforge_tool_calls_total";
    pub const RUNS: &str = "clawdforge_runs_total";
    pub const RUN_COST: &str = "clawdforge_run_cost_usd_total";
    pub const AGENT_COST: &str = "clawdforge_agent_cost_usd_total";
    pub const SESSIONS_OPEN: &str = "clawdforge_sessions_open";
    pub const TURNS_RUNNING: &str = "clawdforge_turns_running";
    pub const TURNS_QUEUED: &str = "clawdforge_turns_queued";
    pub const RUNS_RUNNING: &str = "clawdforge_runs_running";
    pub const AGENT_PROCESSES: &str = "clawdforge_agent_processes";
    pub const QUOTA_REFUSALS: &str = "clawdforge_quota_refusals_total";
    pub const WORKERS: &str = "clawdforge_workers";
    pub const BUDGET: &str = "clawdforge_budget_usd";
    pub const BUDGET_USED: &str = "clawdforge_budget_used_usd";
}

/// Histogram buckets, in seconds: from a control operation's milliseconds to a long turn's
/// minutes.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// The process's metrics recorder, once installed.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// Installs the process's recorder (once; later calls get the same one).
    pub fn install() -> Metrics {
        INSTALLED
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                    .expect("buckets are given")
                    .build_recorder();
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("a metrics recorder was installed already");
                }
                describe();
                Metrics { handle }
            })
            .clone()
    }

    /// The Prometheus text of every series, the process's own figures read now.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&usd::text(&USD_HELP));
        text.push_str(&process::text());
        text
    }
}

/// The dollar counters, and what each is.
const USD_HELP: [(&str, &str); 2] = [
    (names::RUN_COST, "USD of one-shot runs, by app"),
    (
        names::AGENT_COST,
        "USD the agents reported for turns, by app and agent",
    ),
];

/// Says what each series is (`# HELP`).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(
        REQUESTS,
        "Requests served, by operation and outcome (ok or the error kind)"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time to serve a request, by operation"
    );
    describe_counter!(
        TURNS,
        "Turns ended, by agent, backend and outcome (stop reason or error kind)"
    );
    describe_histogram!(
        TURN_DURATION,
        Unit::Seconds,
        "Time the agent took over a turn"
    );
    describe_histogram!(
        TURN_FIRST_EVENT,
        Unit::Seconds,
        "Time to a turn's first event"
    );
    describe_counter!(EVENTS, "Events of turns, by type");
    describe_counter!(TOOL_CALLS, "Tool calls, by agent, kind and final status");
    describe_counter!(RUNS, "One-shot runs ended, by model and outcome");
    describe_gauge!(
        SESSIONS_OPEN,
        "Open sessions in the ledger, by app and agent"
    );
    describe_gauge!(TURNS_RUNNING, "Turns this worker is running");
    describe_gauge!(
        TURNS_QUEUED,
        "Turns waiting on this worker for a slot or their session"
    );
    describe_gauge!(RUNS_RUNNING, "Runs this worker is running");
    describe_gauge!(
        AGENT_PROCESSES,
        "Agent processes this worker holds, by backend"
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Requests refused by a limit of the app's policy"
    );
    describe_gauge!(WORKERS, "Workers answering the sidecar's ping");
    describe_gauge!(
        BUDGET,
        "An app's budget in dollars, by app and limit (the budgets that are set)"
    );
    describe_gauge!(
        BUDGET_USED,
        "What an app spent in its budget's current window, from the ledger, by app and limit"
    );
}

/// A request served: its operation, `ok` or its error kind, how long it took.
pub fn request(op: &'static str, outcome: &'static str, seconds: f64) {
    counter!(names::REQUESTS, "op" => op, "outcome" => outcome).increment(1);
    histogram!(names::REQUEST_DURATION, "op" => op).record(seconds);
}

/// A turn ended.
pub fn turn(agent: &str, backend: &'static str, outcome: &'static str, seconds: f64) {
    let (agent, backend) = (agent.to_string(), backend);
    counter!(names::TURNS, "agent" => agent.clone(), "backend" => backend, "outcome" => outcome)
        .increment(1);
    histogram!(names::TURN_DURATION, "agent" => agent, "backend" => backend).record(seconds);
}

/// A turn's first event came `seconds` after it began.
pub fn first_event(agent: &str, backend: &'static str, seconds: f64) {
    histogram!(names::TURN_FIRST_EVENT, "agent" => agent.to_string(), "backend" => backend)
        .record(seconds);
}

/// An event of a turn or a run.
pub fn event(kind: &'static str) {
    counter!(names::EVENTS, "type" => kind).increment(1);
}

/// ACP's tool kinds and tool call statuses: what an agent says of a tool call is counted under
/// one of these, anything else as `other`, so that no agent can make a label unbounded.
const TOOL_KINDS: [&str; 10] = [
    "read",
    "edit",
    "delete",
    "move",
    "search",
    "execute",
    "think",
    "fetch",
    "switch_mode",
    "other",
];
const TOOL_STATUSES: [&str; 4] = ["pending", "in_progress", "completed", "failed"];

/// `value` if it is one of `known`, else `other`.
fn known_or_other(value: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

/// A tool call, at its final status.
pub fn tool_call(agent: &str, kind: &str, status: &str) {
    let labels = [
        ("agent", agent.to_string()),
        ("kind", known_or_other(kind, &TOOL_KINDS).to_string()),
        ("status", known_or_other(status, &TOOL_STATUSES).to_string()),
    ];
    counter!(names::TOOL_CALLS, &labels).increment(1);
}

/// How many models the runs' counter names; runs of any other model are counted as `other`.
/// The caller names a run's model, so the label is bounded here.
const MAX_MODELS: usize = 32;

static MODELS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The `model` label of a run of `model`: the model, among the first [`MAX_MODELS`] seen, else
/// `other`.
fn model_label(model: &str) -> String {
    let mut seen = MODELS.lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(model) {
        return model.to_string();
    }
    if seen.len() < MAX_MODELS {
        seen.insert(model.to_string());
        return model.to_string();
    }
    "other".to_string()
}

/// A run ended, with what it cost.
pub fn run(app: &str, model: &str, outcome: &'static str, cost_usd: Option<f64>) {
    counter!(names::RUNS, "model" => model_label(model), "outcome" => outcome).increment(1);
    if let Some(usd) = cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
        usd::add(names::RUN_COST, vec![("app", app.to_string())], usd);
    }
}

/// A turn's own cost, as its agent reported it.
pub fn agent_cost(app: &str, agent: &str, usd: f64) {
    if usd.is_finite() && usd > 0.0 {
        let labels = vec![("app", app.to_string()), ("agent", agent.to_string())];
        usd::add(names::AGENT_COST, labels, usd);
    }
}

/// A request refused by `limit` of `app`'s policy.
pub fn quota_refused(app: &str, limit: &'static str) {
    counter!(names::QUOTA_REFUSALS, "app" => app.to_string(), "limit" => limit).increment(1);
}

/// This worker's work in flight.
pub fn in_flight(turns_running: usize, turns_queued: usize, runs_running: usize) {
    gauge!(names::TURNS_RUNNING).set(turns_running as f64);
    gauge!(names::TURNS_QUEUED).set(turns_queued as f64);
    gauge!(names::RUNS_RUNNING).set(runs_running as f64);
}

/// The agent processes this worker holds on `backend`.
pub fn agent_processes(backend: &'static str, n: usize) {
    gauge!(names::AGENT_PROCESSES, "backend" => backend).set(n as f64);
}

/// Open sessions of `app` with `agent`.
pub fn sessions_open(app: &str, agent: &str, n: u64) {
    let labels = [("app", app.to_string()), ("agent", agent.to_string())];
    gauge!(names::SESSIONS_OPEN, &labels).set(n as f64);
}

/// `app`'s budget `limit` (in dollars), and what it spent of it in the current window; a
/// budget no longer set is removed.
pub fn budget(app: &str, limit: &'static str, budget_usd: Option<f64>, used_usd: f64) {
    let labels = [("app", app.to_string()), ("limit", limit.to_string())];
    match budget_usd {
        Some(usd) => {
            gauge!(names::BUDGET, &labels).set(usd);
            gauge!(names::BUDGET_USED, &labels).set(used_usd);
        }
        None => {
            gauge!(names::BUDGET, &labels).set(f64::NAN);
            gauge!(names::BUDGET_USED, &labels).set(f64::NAN);
        }
    }
}

/// Workers answering the sidecar's ping.
pub fn workers(n: usize) {
    gauge!(names::WORKERS).set(n as f64);
}

#[cfg(test)]
mod tests {
    #[test]
    fn tool_kinds_and_statuses_are_acps_or_other() {
        use super::{known_or_other, TOOL_KINDS, TOOL_STATUSES};
        assert_eq!(known_or_other("read", &TOOL_KINDS), "read");
        assert_eq!(known_or_other("switch_mode", &TOOL_KINDS), "switch_mode");
        assert_eq!(known_or_other("call-7f3a9c", &TOOL_KINDS), "other");
        assert_eq!(known_or_other("completed", &TOOL_STATUSES), "completed");
        assert_eq!(known_or_other("Done!", &TOOL_STATUSES), "other");
    }

    #[test]
    fn runs_name_a_bounded_number_of_models() {
        let labels: Vec<String> = (0..super::MAX_MODELS + 10)
            .map(|n| super::model_label(&format!("model-{n}")))
            .collect();
        let named = labels.iter().filter(|l| *l != "other").count();
        assert!(named <= super::MAX_MODELS, "{labels:?}");
        assert_eq!(labels.last().unwrap(), "other");
        assert_eq!(super::model_label("model-0"), labels[0]);
    }
}
