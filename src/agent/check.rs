//! Whether each configured agent can work: `clawdforge agents check` and the `agents` of
//! `forge.health`. Each agent is started as the worker starts a native agent process, in the
//! jail of a pseudo app `@check`, and asked `initialize` and `session/new` over ACP — an acpx
//! agent too, through the ACP command acpx would run for it (acpx itself needs a prompt) — and
//! never a prompt, so no model is called. An agent that asks for credentials is authenticated
//! as a session's would be (a native agent with its `auth`; acpx authenticates its own agents
//! itself, which the check does not copy). A failure reads as a session's would (`fault`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::acp::{AuthPlan, Greeting, Live, APPS_DIR};
use super::backend::AgentError;
use super::confine::{app_dir_name, search_path, Confinement, Jail, Work};
use super::fault::AgentLabel;
use super::process::which;
use crate::agent::def::{AgentDef, BackendKind};
use crate::wire;

/// The app whose home and directory the checks use.
/// Not a valid app name (apps are letters, digits, `-`, `_` and `.`), so no app shares its home.
pub const CHECK_APP: &str = "@check";
/// How long one agent may take to start and answer `initialize` and `session/new`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where checked agents work, and their jail; or why there is none.
type Place = Result<(PathBuf, Option<Jail>), String>;

/// Starts agents to see whether they work, confined as the worker confines them.
#[derive(Debug, Clone)]
pub struct Checker {
    confinement: Arc<Confinement>,
    sessions_root: PathBuf,
}

/// What the check of one agent found.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub backend: BackendKind,
    /// The ACP command line it was started with; `None`: it has none.
    pub argv: Option<Vec<String>>,
    /// The executable its command resolves to on the agents' PATH.
    pub found: Option<PathBuf>,
    /// Its answer to `initialize`, when it gave one.
    pub greeting: Option<Greeting>,
    /// `Ok`: it opened a session; else why not.
    pub outcome: Result<(), AgentError>,
}

impl Checker {
    /// Checks run in `<sessions_root>/apps/@check`, with `@check`'s home.
    pub fn new(confinement: Arc<Confinement>, sessions_root: PathBuf) -> Checker {
        Checker {
            confinement,
            sessions_root,
        }
    }

    /// Checks every agent of `agents` in one jail made for them all: at once, but agents of one
    /// program one after the other — they share `@check`'s home, and two Codex processes that
    /// start at once in a new home race to make its state database (one fails to initialize).
    pub async fn check_all(&self, agents: &BTreeMap<String, AgentDef>) -> Vec<Report> {
        let place = self.place();
        let mut by_program: BTreeMap<Option<String>, Vec<(&String, &AgentDef)>> = BTreeMap::new();
        for (name, def) in agents {
            let program = def.command.acp_argv().and_then(|a| a.first().cloned());
            by_program.entry(program).or_default().push((name, def));
        }
        let groups = by_program.into_values().map(|group| async {
            let mut reports = Vec::new();
            for (name, def) in group {
                reports.push(self.check_in(&place, name, def).await);
            }
            reports
        });
        let mut reports: Vec<Report> = futures::future::join_all(groups)
            .await
            .into_iter()
            .flatten()
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    /// The directory the checked agents work in, and their jail: `@check`'s, made once.
    fn place(&self) -> Place {
        let dir = self
            .sessions_root
            .join(APPS_DIR)
            .join(app_dir_name(CHECK_APP));
        let made =
            std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()));
        let jail = self.confinement.jail(CHECK_APP, &dir, Work::Native);
        let jail = jail.map_err(|e| format!("preparing the home of {CHECK_APP}: {e}"));
        made.and(jail).map(|jail| (dir, jail))
    }

    /// Starts the agent, asks `initialize` and `session/new`, and stops it.
    async fn check_in(&self, place: &Place, name: &str, def: &AgentDef) -> Report {
        let argv = def.command.acp_argv();
        let mut report = Report {
            name: name.to_string(),
            backend: def.backend,
            argv: argv.clone(),
            found: None,
            greeting: None,
            outcome: Ok(()),
        };
        let (argv, (dir, jail)) = match (argv, place) {
            (Some(argv), Ok(place)) => (argv, place),
            (None, _) => {
                let spec = def.command.spec();
                let why = format!("no ACP command is known for acpx's built-in agent `{spec}`");
                report.outcome = Err(AgentError::Failed(format!("agent `{name}`: {why}")));
                return report;
            }
            (_, Err(why)) => {
                report.outcome = Err(AgentError::Failed(format!("agent `{name}`: {why}")));
                return report;
            }
        };
        let label = AgentLabel::new(name, &argv);
        let program = label.argv.first().map(String::as_str).unwrap_or_default();
        report.found = which(program, &search_path(jail.as_ref()), dir);
        let cwd = dir.join(uuid::Uuid::new_v4().simple().to_string());
        let auth = match def.backend {
            BackendKind::Acp => AuthPlan::native(def.auth.clone()),
            BackendKind::Acpx => AuthPlan::ByAcpx,
        };
        let started = start(&label, dir, jail.as_ref(), auth, &cwd, &mut report.greeting);
        report.outcome = match tokio::time::timeout(CHECK_TIMEOUT, started).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AgentError::Failed(format!(
                "{label} did not answer initialize and session/new within {} s",
                CHECK_TIMEOUT.as_secs()
            ))),
        };
        let _ = std::fs::remove_dir_all(&cwd);
        report
    }
}

/// Starts the agent in `dir`, keeps its `initialize` answer in `greeting`, opens a session in
/// `cwd` (authenticating as `auth` says when the agent asks), and stops the agent.
async fn start(
    label: &AgentLabel,
    dir: &Path,
    jail: Option<&Jail>,
    auth: AuthPlan,
    cwd: &Path,
    greeting: &mut Option<Greeting>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(cwd).map_err(|e| {
        AgentError::Failed(format!(
            "agent `{}`: making {}: {e}",
            label.name,
            cwd.display()
        ))
    })?;
    let live = Live::start(label.clone(), dir, jail, auth).await?;
    *greeting = Some(live.greeting.clone());
    let opened = live.new_session("check", cwd, 0).await.map(|_| ());
    live.stop().await;
    opened
}

impl Report {
    pub fn ready(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The agent as `forge.health` shows it.
    pub fn health(&self) -> wire::AgentHealth {
        let greeting = self.greeting.as_ref();
        wire::AgentHealth {
            name: self.name.clone(),
            backend: self.backend,
            ready: self.ready(),
            reason: self.outcome.as_ref().err().map(ToString::to_string),
            version: greeting.and_then(|g| g.agent_info.clone()),
            protocol_version: greeting.map(|g| g.protocol_version),
            auth_methods: greeting.map(|g| g.auth_methods.iter().map(|m| m.id.clone()).collect()),
        }
    }

    /// The agent as `agents check --json` shows it: as health does, with its command and
    /// where its program was found.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.health()).expect("plain data");
        v["command"] = json!(self.argv.as_ref().map(|a| a.join(" ")));
        v["found"] = json!(self.found);
        v
    }

    /// The agent as `agents check` prints it: a headline, then one fact a line.
    pub fn text(&self) -> String {
        let state = if self.ready() { "ready" } else { "NOT READY" };
        let mut out = format!("{} ({}): {state}\n", self.name, self.backend.as_str());
        let mut fact = |key: &str, value: &str| {
            let _ = writeln!(out, "  {key:<9} {value}");
        };
        let command = self.argv.as_ref().map(|a| a.join(" "));
        fact("command", command.as_deref().unwrap_or("-"));
        let found = self.found.as_ref().map(|p| p.display().to_string());
        fact("found", found.as_deref().unwrap_or("no"));
        if let Some(g) = &self.greeting {
            fact(
                "version",
                g.agent_info.as_deref().unwrap_or("(no agentInfo)"),
            );
            fact("protocol", &g.protocol_version.to_string());
            let offers: Vec<String> = g.auth_methods.iter().map(ToString::to_string).collect();
            let offers = offers.join(", ");
            fact("auth", if offers.is_empty() { "none" } else { &offers });
        }
        if let Err(e) = &self.outcome {
            fact("reason", &e.to_string());
        }
        out
    }
}
