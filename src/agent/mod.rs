//! The agent backends, behind one trait: open a session, prompt it (typed events into a sink,
//! a cancellation, a deadline), cancel, close. acpx is the first backend; `claude -p` runs
//! one-shot runs. The only module that spawns processes.
//!
//! The trait and what it speaks are in `backend`, which every backend imports; this module
//! only puts the backends together.

pub mod acp;
pub mod acpx;
mod backend;
pub mod check;
pub mod claude;
pub mod confine;
pub mod def;
pub mod fault;
mod permission;
pub mod process;
mod updates;

use crate::agent::def::BackendKind;

pub use acp::{Acp, APPS_DIR};
pub use acpx::Acpx;
pub use backend::{
    AgentError, AgentSession, Answer, Backend, EventSink, Opened, Prompt, StopReason, TurnEnd,
    CANCEL_GRACE,
};
pub use claude::{Claude, ClaudeError, ClaudeOptions, ClaudeResult, RunOutput};
pub use confine::{app_dir_name, ConfineError, ConfineSettings, Confinement};

/// Whether an attached file may not have this name: a file an agent runner would read as its
/// own configuration from the session's directory.
pub fn reserved_file_name(name: &str) -> bool {
    acpx::reads_from_cwd(name)
}

/// The backends of sessions, each session sent to the one its agent is configured with.
#[derive(Debug, Clone)]
pub struct Backends {
    pub acpx: Acpx,
    pub acp: Acp,
}

impl Backends {
    fn of(&self, s: &AgentSession) -> &dyn Backend {
        match s.backend {
            BackendKind::Acpx => &self.acpx,
            BackendKind::Acp => &self.acp,
        }
    }
}

#[async_trait::async_trait]
impl Backend for Backends {
    fn name(&self) -> &'static str {
        "acpx+acp"
    }

    fn agent_processes(&self) -> Vec<(&'static str, usize)> {
        let mut all = self.acpx.agent_processes();
        all.extend(self.acp.agent_processes());
        all
    }

    /// acpx's version: the one runner health reports.
    async fn version(&self) -> Result<String, AgentError> {
        self.acpx.version().await
    }

    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError> {
        self.of(session).open(session).await
    }

    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        self.of(session).prompt(session, prompt).await
    }

    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError> {
        self.of(session).cancel(session).await
    }

    async fn close(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.of(session).close(session).await
    }

    async fn forget(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.of(session).forget(session).await
    }

    async fn answer(
        &self,
        session: &AgentSession,
        request_id: &str,
        option_id: &str,
    ) -> Result<Answer, AgentError> {
        self.of(session)
            .answer(session, request_id, option_id)
            .await
    }
}
