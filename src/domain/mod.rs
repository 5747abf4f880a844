//! The Forge service: tokens, sessions and runs. The only business logic; it knows nothing of
//! subjects, status codes or JSON framing.

pub mod agents;
pub mod apps;
pub mod files;
pub mod limits;
pub mod named;
pub mod ops;
pub mod request;
pub mod types;

mod cancel;
mod events;
mod gauges;
mod owners;
mod permissions;
mod runs;
mod service;
mod sessions;
mod sweeper;
mod taken;
mod tally;
pub mod tokens;
mod turns;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::agent::check::Checker;
use crate::agent::{Backend, Claude, ClaudeOptions, Confinement};
use crate::config::{AgentDef, Config};
use crate::error::{Error, Result};
use crate::ledger::{Ledger, Sessions, Tokens};
use crate::wire;

pub use named::{NamedSession, STANDING};
pub use ops::Op;
pub use owners::{Route, Step};
pub use request::{Reply, Request};
pub use service::{outcome_of, Body, Handed, Outcome, Outlet};
pub use tokens::Caller;
pub use turns::EventStream;

/// The crate version, reported by health and the NATS service.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a probe of the agent CLIs stays fresh for health.
const TOOL_PROBE_TTL: Duration = Duration::from_secs(30);

/// The settings the domain needs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub worker_id: String,
    pub admin_bootstrap_token: Option<String>,
    pub ledger_keep_text: bool,
    pub sessions_root: PathBuf,
    pub default_agent: String,
    pub agents: BTreeMap<String, AgentDef>,
    pub max_live_sessions: u64,
    pub session_ttl_secs: u64,
    pub session_hard_ttl_secs: u64,
    pub sweep_interval_secs: u64,
    pub worker_heartbeat_secs: u64,
    pub max_concurrent_turns: usize,
    pub max_queued_turns: usize,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    pub max_prompt_bytes: usize,
    pub max_files: usize,
    pub max_files_bytes: usize,
    pub claude_bin: String,
    pub claude_permission_mode: Option<String>,
    pub claude_allowed_tools: Option<String>,
    pub claude_max_turns: Option<u32>,
    pub default_model: String,
    /// Root of the runs' staging directories: `<runs_root>/<run_id>`.
    pub runs_root: PathBuf,
    pub max_concurrent_runs: usize,
    pub max_queued_runs: usize,
    pub runs_retention_secs: u64,
    /// The policy of apps that have none of their own, field by field.
    pub app_defaults: crate::wire::PolicyFields,
}

impl Settings {
    pub fn from_config(config: &Config, worker_id: String) -> Settings {
        let (default_agent, agents) = config.agent_table();
        Settings {
            worker_id,
            admin_bootstrap_token: config
                .admin_bootstrap_token
                .clone()
                .filter(|t| !t.is_empty()),
            ledger_keep_text: config.ledger_keep_text,
            sessions_root: config.acpx_sessions_cwd.clone(),
            default_agent,
            agents,
            max_live_sessions: config.max_live_sessions,
            session_ttl_secs: config.session_ttl_secs,
            session_hard_ttl_secs: config.session_hard_ttl_secs,
            sweep_interval_secs: config.sweep_interval_secs,
            worker_heartbeat_secs: config.worker_heartbeat_secs,
            max_concurrent_turns: config.max_concurrent_turns,
            max_queued_turns: config.max_queued_turns,
            default_timeout_secs: config.default_timeout_secs,
            max_timeout_secs: config.max_timeout_secs,
            max_prompt_bytes: config.max_prompt_bytes,
            max_files: config.max_files,
            max_files_bytes: config.max_files_bytes,
            claude_bin: config.claude_bin.clone(),
            claude_permission_mode: config.claude_permission_mode.clone(),
            claude_allowed_tools: config.claude_allowed_tools.clone(),
            claude_max_turns: config.claude_max_turns,
            default_model: config.default_model.clone(),
            runs_root: config.runs_dir.clone(),
            max_concurrent_runs: config.max_concurrent_runs,
            max_queued_runs: config.max_queued_runs,
            runs_retention_secs: config.runs_retention_secs,
            app_defaults: config.app_defaults.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ToolProbe {
    at: Option<Instant>,
    agent_version: Option<String>,
    claude_present: bool,
}

/// The service. Cheap to share: wrap it in an `Arc`.
pub struct Forge {
    settings: Settings,
    ledger: Ledger,
    /// The backend of sessions.
    agent: Arc<dyn Backend>,
    claude: Claude,
    confinement: Arc<Confinement>,
    turns: limits::Limiter,
    runs: limits::Limiter,
    session_locks: limits::KeyedLocks,
    /// Held while a turn of the session is numbered and queued for it (see `take_turn`).
    numbering: limits::KeyedLocks,
    /// Turns this worker is running, to cancel them at close and at shutdown.
    running_turns: cancel::RunningTurns,
    /// Cancelled when the shutdown grace is over: queued requests give up, runs are killed.
    stopping: CancellationToken,
    probe: Mutex<ToolProbe>,
    /// Starts the configured agents to see whether they work (health's `agents`).
    checker: Checker,
    agent_checks: agents::AgentChecks,
    /// The apps' limits as last read.
    policies: apps::PolicyCache,
    /// The open sessions' gauges last reported.
    reported: gauges::Reported,
    /// The acpx sessions this worker ran a turn of: their agent may be a process it started.
    hosted: owners::Hosted,
}

impl Forge {
    /// Builds the service; creates the sessions' and the runs' root directories. Runs are
    /// started under `confinement` (the sessions' backend has its own).
    pub fn new(
        mut settings: Settings,
        ledger: Ledger,
        agent: Arc<dyn Backend>,
        confinement: Arc<Confinement>,
    ) -> std::io::Result<Arc<Forge>> {
        std::fs::create_dir_all(&settings.sessions_root)?;
        settings.sessions_root = std::fs::canonicalize(&settings.sessions_root)?;
        std::fs::create_dir_all(&settings.runs_root)?;
        settings.runs_root = std::fs::canonicalize(&settings.runs_root)?;
        let claude = Claude::new(
            settings.claude_bin.clone(),
            ClaudeOptions {
                permission_mode: settings.claude_permission_mode.clone(),
                allowed_tools: settings.claude_allowed_tools.clone(),
                max_turns: settings.claude_max_turns,
            },
        )
        .confined(confinement.clone());
        let checker = Checker::new(confinement.clone(), settings.sessions_root.clone());
        Ok(Arc::new(Forge {
            turns: limits::Limiter::new(
                "concurrent turns",
                settings.max_concurrent_turns,
                settings.max_queued_turns,
            ),
            runs: limits::Limiter::new(
                "concurrent runs",
                settings.max_concurrent_runs,
                settings.max_queued_runs,
            ),
            claude,
            confinement,
            settings,
            ledger,
            agent,
            session_locks: limits::KeyedLocks::default(),
            numbering: limits::KeyedLocks::default(),
            running_turns: Default::default(),
            stopping: CancellationToken::new(),
            probe: Mutex::new(ToolProbe::default()),
            checker,
            agent_checks: Default::default(),
            policies: Default::default(),
            reported: Default::default(),
            hosted: Default::default(),
        }))
    }

    pub fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Warns when the bootstrap token overrides tokens that exist in the ledger.
    pub async fn startup_checks(&self) -> Result<()> {
        if self.settings.admin_bootstrap_token.is_some() {
            let active = self.ledger.active_token_count().await?;
            if active > 0 {
                tracing::warn!(
                    active_tokens = active,
                    "ADMIN_BOOTSTRAP_TOKEN is set while the ledger holds tokens; it stays a root \
                     override until it is unset"
                );
            }
        }
        let probe = self.tool_probe().await;
        if probe.agent_version.is_none() {
            tracing::warn!(
                backend = self.agent.name(),
                "the sessions' agent runner is not available: sessions will fail"
            );
        }
        Ok(())
    }

    async fn tool_probe(&self) -> ToolProbe {
        let mut probe = self.probe.lock().await;
        if probe.at.is_none_or(|at| at.elapsed() > TOOL_PROBE_TTL) {
            probe.agent_version = self.agent.version().await.ok();
            probe.claude_present = on_path(&self.settings.claude_bin);
            probe.at = Some(Instant::now());
        }
        probe.clone()
    }

    pub async fn health(&self) -> wire::Health {
        let probe = self.tool_probe().await;
        let open = self.ledger.open_session_count().await;
        if let Err(e) = &open {
            tracing::error!(error = %e, "health: ledger unreadable");
        }
        let writable = self.ledger.check_writable();
        if let Err(why) = &writable {
            tracing::error!(error = %why, "health: the ledger cannot be written");
        }
        wire::Health {
            ok: open.is_ok() && writable.is_ok() && probe.agent_version.is_some(),
            ledger_writable: writable.is_ok(),
            version: VERSION.to_string(),
            worker_id: self.settings.worker_id.clone(),
            acpx_present: probe.agent_version.is_some(),
            acpx_version: probe.agent_version,
            claude_present: probe.claude_present,
            open_sessions: open.unwrap_or(0),
            confined: self.confinement.confined(),
            landlock_abi: self.confinement.abi(),
            agents: self.agent_checks.current(),
        }
    }
}

impl From<crate::ledger::LedgerError> for Error {
    fn from(e: crate::ledger::LedgerError) -> Error {
        Error::internal(e)
    }
}

/// A request that could not start within its timeout.
fn did_not_start(budget: Duration) -> Error {
    Error::timeout(format!(
        "no room to start within the timeout of {} s (earlier requests held this worker or this \
         session); it did not run",
        budget.as_secs()
    ))
}

/// What a request waiting for its turn hears when the worker stops before it started.
const SHUT_DOWN_WAITING: &str = "the worker shut down before this request started; send it again";

impl Forge {
    /// Waits for `admission` (a session's earlier turns, a free slot), for at most `budget`: a
    /// request's timeout counts from when the worker takes it, so a caller waiting `timeout_secs`
    /// plus a margin never misses a reply to work that started late. Past the budget the request
    /// answers `timeout` without having run; at shutdown, `at_capacity`.
    async fn admit<T>(
        &self,
        received: Instant,
        budget: Duration,
        admission: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let left = budget.saturating_sub(received.elapsed());
        // Biased: once the worker stops, a request that was still waiting does not start, even
        // if its slot came free at the same moment.
        tokio::select! {
            biased;
            _ = self.stopping.cancelled() => Err(Error::at_capacity(SHUT_DOWN_WAITING)),
            admitted = tokio::time::timeout(left, admission) => {
                admitted.unwrap_or_else(|_| Err(did_not_start(budget)))
            }
        }
    }

    /// Waits `pause` before trying again to start, unless that would take the request past its
    /// `budget` (counted from `received`) or the worker stops meanwhile.
    async fn pause_before_retry(
        &self,
        pause: Duration,
        received: Instant,
        budget: Duration,
    ) -> Result<()> {
        if received.elapsed() + pause >= budget {
            return Err(did_not_start(budget));
        }
        tokio::select! {
            biased;
            _ = self.stopping.cancelled() => Err(Error::at_capacity(SHUT_DOWN_WAITING)),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    /// At the end of the shutdown grace: requests still waiting give up, runs are killed, and
    /// the turns still running are told to stop, all at once; they answer `cancelled`. Returns
    /// how many turns were running.
    pub fn interrupt_in_flight(&self) -> usize {
        self.stopping.cancel();
        self.cancel_running_turns()
    }

    /// A request's `timeout_secs`, checked against the configured default and maximum.
    fn timeout_secs(&self, requested: Option<u64>) -> Result<u64> {
        types::timeout_secs(
            requested,
            self.settings.default_timeout_secs,
            self.settings.max_timeout_secs,
        )
    }

    /// A request's attached files, decoded and checked against the configured limits.
    fn attachments(&self, uploads: &[wire::FileUpload]) -> Result<Vec<files::Attachment>> {
        files::decode(
            uploads,
            self.settings.max_files,
            self.settings.max_files_bytes,
        )
    }
}

/// Whether `bin` names an executable file, directly or on PATH.
fn on_path(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cwd = std::env::current_dir().unwrap_or_default();
    crate::agent::process::which(bin, &path, &cwd).is_some()
}

/// Now, as the ledger and the wire write it: RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
