//! One-shot runs through `claude -p`, each in a fresh staging directory.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use super::files;
use super::types::{Model, Prompt, RunId};
use super::{now, Caller, EventStream, Forge};
use crate::agent::{ClaudeError, EventSink, RunOutput};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{NewRun, Recorded, RunBegun, RunEnd, RunOutcome, Runs, Stamp};
use crate::quota::Limits;
use crate::telemetry::genai::AgentSpan;
use crate::values::Timestamp;
use crate::wire;

/// Slack on top of the longest timeout before a staging directory without a recorded end is
/// taken for abandoned.
const RUN_REAP_SLACK_SECS: u64 = 60;

impl From<&ClaudeError> for Error {
    fn from(e: &ClaudeError) -> Error {
        match e {
            ClaudeError::Timeout { .. } => {
                Error::timeout("the run did not finish within its timeout")
            }
            ClaudeError::Spawn(fault) => {
                tracing::error!(error = %e, "claude could not be started");
                Error::agent(format!(
                    "the agent CLI (claude) is not available on this worker: {fault}"
                ))
            }
            other => Error::agent(other.to_string()),
        }
    }
}

impl Forge {
    pub async fn run(&self, caller: &Caller, req: wire::RunRequest) -> Result<wire::Run> {
        self.live_run(caller, req, None).await
    }

    /// A run whose events also go to `events` as claude prints them (stream-json), before its
    /// reply: checked, admitted, recorded, staged and run, its end recorded.
    pub async fn live_run(
        &self,
        caller: &Caller,
        req: wire::RunRequest,
        events: Option<EventStream>,
    ) -> Result<wire::Run> {
        let mut plan = self.plan_run(req, &caller.limits)?;
        let attachments = std::mem::take(&mut plan.attachments);
        // Waiting for a slot is part of the timeout (see `admit`).
        let received = Instant::now();
        let _slot = self
            .admit(received, plan.budget, self.runs.acquire())
            .await?;
        let run_id = RunId::new();
        let run = NewRun {
            run_id,
            app: caller.app.to_string(),
            model: plan.model.as_str().to_string(),
            prompt: Recorded::of(plan.prompt.as_str(), self.settings.ledger_keep_text),
        };
        let by = Stamp::now(&self.settings.worker_id);
        let begun = self.ledger.begin_run(run, by, (*caller.limits).clone());
        if let RunBegun::Refused(refused) = begun.await? {
            return Err(super::apps::refusal(caller.app.as_str(), &refused));
        }
        let started = Instant::now();
        let left = || plan.budget.saturating_sub(received.elapsed());
        let staged = (&run_id, attachments);
        let agent = AgentSpan::run(plan.model.as_str());
        agent.prompt(plan.prompt.as_str());
        let ran = self
            .stage_and_run(caller, staged, &plan, left, events)
            .instrument(agent.span().clone())
            .await;
        if let Ran::Claude(Ok(output)) = &ran {
            agent.tokens(output.result.input_tokens, output.result.output_tokens);
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let (reply, end) = self.settle(&run_id.as_string(), plan.model.as_str(), ran, duration_ms);
        run_span_ended(agent, &reply, end.cost_usd);
        let (outcome, cost) = (end.outcome, end.cost_usd);
        self.ledger
            .finish_run(run_id, Timestamp::now(), end)
            .await?;
        let model = plan.model.as_str();
        crate::telemetry::run(caller.app.as_str(), model, outcome.as_str(), cost);
        log_run_end(&run_id, caller, &reply, outcome, duration_ms);
        reply
    }

    /// A run's request, checked against the limits.
    fn plan_run(&self, req: wire::RunRequest, limits: &Limits) -> Result<RunPlan> {
        Ok(RunPlan {
            prompt: Prompt::parse(req.prompt, self.settings.max_prompt_bytes)?,
            model: Model::parse(req.model.as_deref().unwrap_or(&self.settings.default_model))?,
            budget: Duration::from_secs(self.timeout_within(req.timeout_secs, limits)?),
            attachments: self.attachments(&req.files)?,
        })
    }

    /// Stages the run's files (`attachments`) in its directory and runs claude there with the time `left`;
    /// at the end of the shutdown grace the run is dropped, which kills its process group.
    async fn stage_and_run(
        &self,
        caller: &Caller,
        (run_id, attachments): (&RunId, Vec<files::Attachment>),
        plan: &RunPlan,
        left: impl Fn() -> Duration,
        events: Option<EventStream>,
    ) -> Ran {
        let id = run_id.as_string();
        let dir = self.settings.runs_root.join(&id);
        let paths = match stage(&dir, attachments).await {
            Ok(paths) => paths,
            Err(e) => return Ran::Staging(e),
        };
        let text = files::with_header(&paths, plan.prompt.as_str());
        let staged = Staged {
            id: &id,
            app: caller.app.as_str(),
            dir: &dir,
        };
        let ran = self.claude_run(staged, plan.model.as_str(), &text, left(), events);
        tokio::select! {
            ran = ran => Ran::Claude(ran),
            _ = self.stopping.cancelled() => Ran::Interrupted,
        }
    }

    /// The reply of a run and the ledger's record of its end.
    fn settle(
        &self,
        id: &str,
        model: &str,
        outcome: Ran,
        duration_ms: u64,
    ) -> (Result<wire::Run>, RunEnd) {
        match outcome {
            Ran::Claude(Ok(output)) => {
                let (run, end) = self.settle_output(id, model, output, duration_ms);
                (Ok(run), end)
            }
            Ran::Claude(Err(e)) => {
                let err = Error::from(&e);
                let end = RunEnd {
                    error: Some(e.to_string()),
                    exit_code: e.exit_code(),
                    duration_ms: Some(duration_ms),
                    cost_usd: e.cost_usd(),
                    stderr_tail: e.stderr().filter(|s| !s.is_empty()).map(str::to_string),
                    ..RunEnd::of(RunOutcome::Failed(err.kind))
                };
                (Err(err), end)
            }
            Ran::Interrupted => {
                let end = RunEnd {
                    error: Some(SHUT_DOWN_RUNNING.into()),
                    duration_ms: Some(duration_ms),
                    ..RunEnd::of(RunOutcome::Interrupted)
                };
                (Err(Error::at_capacity(SHUT_DOWN_RUNNING)), end)
            }
            Ran::Staging(e) => {
                let end = RunEnd {
                    error: Some(format!("staging the run: {e}")),
                    duration_ms: Some(duration_ms),
                    ..RunEnd::of(RunOutcome::Failed(ErrorKind::Internal))
                };
                (Err(Error::internal(format!("staging run {id}: {e}"))), end)
            }
        }
    }

    /// A run claude finished: its result (`ok` false for an error result) and its record.
    fn settle_output(
        &self,
        id: &str,
        model: &str,
        RunOutput { result, stderr }: RunOutput,
        duration_ms: u64,
    ) -> (wire::Run, RunEnd) {
        let keep = self.settings.ledger_keep_text;
        let failed = result.failed();
        let error = failed.then(|| result.error_message());
        let end = RunEnd {
            outcome: if failed {
                RunOutcome::ErrorResult
            } else {
                RunOutcome::Ok
            },
            result: result.result.as_deref().map(|r| Recorded::of(r, keep)),
            error: error.clone(),
            exit_code: Some(0),
            duration_ms: Some(duration_ms),
            cost_usd: result.cost_usd,
            stderr_tail: failed.then_some(stderr).filter(|s| !s.is_empty()),
        };
        let run = wire::Run {
            run_id: id.to_string(),
            ok: !failed,
            result: result.result,
            error,
            model: model.to_string(),
            exit_code: Some(0),
            duration_ms,
            cost_usd: result.cost_usd,
        };
        (run, end)
    }

    /// claude, with its events numbered and sent on as they come when the caller streams.
    async fn claude_run(
        &self,
        Staged { id, app, dir }: Staged<'_>,
        model: &str,
        text: &str,
        left: Duration,
        out: Option<EventStream>,
    ) -> std::result::Result<RunOutput, ClaudeError> {
        let Some(out) = out else {
            return self.claude.run(app, dir, model, text, left).await;
        };
        let (sink, mut events) = EventSink::channel(64);
        let run = async move {
            let ran = self
                .claude
                .run_streamed(app, dir, model, text, left, &sink)
                .await;
            drop(sink);
            ran
        };
        let relay = async {
            let mut seq = 0;
            while let Some(body) = events.recv().await {
                seq += 1;
                let event = wire::Event {
                    session_id: None,
                    turn: None,
                    run_id: Some(id.to_string()),
                    seq,
                    at: now(),
                    body,
                };
                let _ = out.send(event).await;
            }
        };
        tokio::join!(run, relay).0
    }

    /// Removes the staging directories of runs that ended more than `runs_retention_secs` ago.
    /// A directory whose run has no recorded end (the worker died, or the ledger has no row) goes
    /// once it is that old and older than any run can last. Returns how many were removed.
    pub async fn sweep_runs(&self) -> Result<u64> {
        let root = &self.settings.runs_root;
        let retention = self.settings.runs_retention_secs;
        let cutoff = Timestamp::seconds_from_now(-(retention as i64));
        let abandoned_after = Duration::from_secs(
            retention.max(self.settings.max_timeout_secs + RUN_REAP_SLACK_SECS),
        );

        let mut dirs = Vec::new();
        let mut entries = match tokio::fs::read_dir(root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::internal(format!("reading {}: {e}", root.display()))),
        };
        while let Some(entry) = entries.next_entry().await.map_err(Error::internal)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = RunId::parse(&name) else {
                continue;
            };
            if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                dirs.push((id, name));
            }
        }
        if dirs.is_empty() {
            return Ok(0);
        }
        let ids = dirs.iter().map(|(id, _)| *id).collect();
        let ends = self.ledger.runs_finished_at(ids).await?;

        let mut removed = 0;
        for (id, name) in dirs {
            let path = root.join(&name);
            let expired = match ends.get(&id) {
                Some(Some(finished_at)) => *finished_at < cutoff,
                _ => older_than(&path, abandoned_after).await,
            };
            if !expired {
                continue;
            }
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => removed += 1,
                // Another worker sharing the directory got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(run = %name, error = %e, "could not remove a run's staging directory")
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed expired run staging directories");
        }
        Ok(removed)
    }
}

/// A run's request, checked.
struct RunPlan {
    prompt: Prompt,
    model: Model,
    /// Its timeout, counted from when the worker took it.
    budget: Duration,
    attachments: Vec<files::Attachment>,
}

/// How a run's end is logged: finished, timed out, or failed.
/// Ends a run's span: its cost, its result (when the operator opted in) or its error's kind.
fn run_span_ended(agent: AgentSpan, reply: &Result<wire::Run>, cost_usd: Option<f64>) {
    agent.cost(cost_usd);
    match reply {
        Ok(run) if run.ok => agent.ended(Ok("end_turn"), run.result.as_deref()),
        Ok(_) => agent.ended(Err("error_result"), None),
        Err(err) => agent.ended(Err(err.kind.code()), None),
    }
}

fn log_run_end(
    id: &RunId,
    caller: &Caller,
    reply: &Result<wire::Run>,
    outcome: RunOutcome,
    duration_ms: u64,
) {
    match reply {
        Ok(run) => {
            tracing::info!(run = %id, app = %caller.app, model = %run.model, ok = run.ok, duration_ms, "run finished")
        }
        Err(err) if err.kind == ErrorKind::Timeout => {
            tracing::info!(run = %id, app = %caller.app, "run timed out")
        }
        Err(err) => {
            tracing::warn!(run = %id, app = %caller.app, %outcome, error = %err, "run failed")
        }
    }
}

enum Ran {
    Claude(std::result::Result<RunOutput, ClaudeError>),
    /// Killed at the end of the shutdown grace.
    Interrupted,
    Staging(std::io::Error),
}

/// Why a run killed at shutdown ended.
const SHUT_DOWN_RUNNING: &str = "the worker shut down during the run; it was killed";

/// A run's id, its app and its staging directory.
struct Staged<'a> {
    id: &'a str,
    app: &'a str,
    dir: &'a Path,
}

/// Creates the run's staging directory and writes the attachments into it; returns their
/// absolute paths.
async fn stage(dir: &Path, attachments: Vec<files::Attachment>) -> std::io::Result<Vec<String>> {
    tokio::fs::create_dir_all(dir).await?;
    let written = files::write(dir, attachments).await?;
    Ok(written
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

async fn older_than(path: &Path, age: Duration) -> bool {
    let modified = tokio::fs::metadata(path).await.and_then(|m| m.modified());
    match modified {
        Ok(t) => SystemTime::now()
            .duration_since(t)
            .is_ok_and(|elapsed| elapsed > age),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Acpx;
    use crate::config::Config;
    use crate::domain::Settings;
    use crate::ledger::Ledger;

    fn forge(dir: &Path) -> std::sync::Arc<Forge> {
        let config = Config {
            db_path: dir.join("ledger.db"),
            acpx_sessions_cwd: dir.join("sessions"),
            runs_dir: dir.join("runs"),
            runs_retention_secs: 3600,
            max_timeout_secs: 60,
            ..Config::default()
        };
        let ledger = Ledger::open(&config.db_path).unwrap();
        Forge::new(
            Settings::from_config(&config, "w1".into()),
            ledger,
            std::sync::Arc::new(Acpx::new("acpx", 0)),
            std::sync::Arc::new(crate::agent::Confinement::none()),
        )
        .unwrap()
    }

    async fn record(forge: &Forge, id: &str, finished_at: Option<Timestamp>) {
        let l = forge.ledger();
        let id = RunId::parse(id).unwrap();
        l.begin_run(
            NewRun {
                run_id: id,
                app: "a".into(),
                model: "sonnet".into(),
                prompt: Recorded::of("p", true),
            },
            Stamp {
                worker_id: "w1".into(),
                at: Timestamp::seconds_from_now(-8000),
            },
            Default::default(),
        )
        .await
        .unwrap();
        if let Some(at) = finished_at {
            let end = RunEnd::of(RunOutcome::Ok);
            l.finish_run(id, at, end).await.unwrap();
        }
    }

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    }

    #[tokio::test]
    async fn the_sweep_removes_only_expired_staging_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let forge = forge(tmp.path());
        let root = forge.settings.runs_root.clone();
        let ids: Vec<String> = (0..5).map(|_| RunId::new().as_string()).collect();
        for id in &ids {
            std::fs::create_dir(root.join(id)).unwrap();
            std::fs::write(root.join(id).join("notes.md"), "x").unwrap();
        }
        // Ended two hours ago; ended just now; still running (an old directory all the same).
        record(&forge, &ids[0], Some(Timestamp::seconds_from_now(-7200))).await;
        record(&forge, &ids[1], Some(Timestamp::now())).await;
        record(&forge, &ids[2], None).await;
        age(&root.join(&ids[2]), 600);
        // No row at all: one abandoned long ago, one just made.
        age(&root.join(&ids[3]), 7200);
        std::fs::create_dir(root.join("not-a-run")).unwrap();
        age(&root.join("not-a-run"), 7200);

        assert_eq!(forge.sweep_runs().await.unwrap(), 2);
        let left = |i: usize| root.join(&ids[i]).exists();
        assert!(!left(0) && !left(3), "expired directories are gone");
        assert!(left(1) && left(2) && left(4), "the rest stay");
        assert!(root.join("not-a-run").exists());
        assert_eq!(forge.sweep_runs().await.unwrap(), 0);
    }
}
