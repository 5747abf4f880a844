//! Sessions through the acpx CLI (pinned: 0.19.1): the first [`Backend`].
//!
//! Every call names the session by our UUID and runs in the session's own directory, so the
//! acpx scope key (agent command, cwd, name) is unique. acpx's queue owner keeps the agent warm
//! between turns and serialises turns of one session, across worker processes too. A turn is
//! `acpx prompt`, whose NDJSON (the raw ACP messages of both directions, each written as soon as
//! acpx has it) is read line by line and turned into the contract's events.
//!
//! A cancel is `acpx cancel`, sent again until that output shows acpx's `session/cancel` to the
//! agent, or the prompt's end. A prompt the worker gives up on is read (and cancelled) on in the
//! background, and the session's next prompt waits for its end.
//!
//! By concern: `command` builds acpx's argv and runs it, `turn` drives a prompt, `stream`
//! reads acpx's output into events, `record` knows acpx's files, `failure` how a call
//! failed.

mod command;
mod failure;
mod record;
mod stream;
mod turn;

use std::sync::Arc;

use self::command::Cli;
use self::failure::Failure;
use self::record::delete_record;
pub(super) use self::record::reads_from_cwd;
pub use self::stream::PromptStream;
use self::turn::Prompts;
use super::backend::{AgentError, AgentSession, Backend, Opened, Prompt, TurnEnd};
use super::confine::Confinement;

#[derive(Debug, Clone)]
pub struct Acpx {
    cli: Cli,
    prompts: Prompts,
}

#[async_trait::async_trait]
impl Backend for Acpx {
    fn name(&self) -> &'static str {
        "acpx"
    }

    async fn version(&self) -> Result<String, AgentError> {
        self.cli.version_text().await.map_err(|f| self.cli.error(f))
    }

    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError> {
        let out = self.cli.session_command(session, "new").await;
        let out = out.map_err(|f| self.cli.error(f))?;
        let record = out
            .json_lines()
            .find_map(|v| v["acpxRecordId"].as_str().map(str::to_string));
        Ok(Opened { state: record })
    }

    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        let result = self.prompts.run(session, &prompt).await;
        if result == Err(Failure::Timeout) {
            // acpx cancels a turn at its own --timeout; this makes sure, for the slack case.
            let _ = self.cancel(session).await;
        }
        result.map_err(|f| self.cli.error(f))
    }

    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError> {
        self.cli
            .cancel(session)
            .await
            .map_err(|f| self.cli.error(f))
    }

    async fn close(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.cli
            .command(session, &["sessions", "close", &session.id])
            .await
            .map(drop)
            .map_err(|f| self.cli.error(f))
    }

    async fn forget(&self, session: &AgentSession) -> Result<(), AgentError> {
        let Some(record) = &session.state else {
            return Ok(());
        };
        let Some(home) = self.cli.home(&session.app) else {
            return Ok(());
        };
        delete_record(&home, record)
            .map(drop)
            .map_err(|e| AgentError::Failed(format!("removing acpx's record failed: {e}")))
    }
}

impl Acpx {
    pub fn new(bin: impl Into<String>, ttl_secs: u64) -> Acpx {
        let cli = Cli::new(bin.into(), ttl_secs, Arc::new(Confinement::none()));
        Acpx {
            prompts: Prompts::new(cli.clone()),
            cli,
        }
    }

    /// Runs every command of a session in its app's home, under `confinement`.
    pub fn confined(self, confinement: Arc<Confinement>) -> Acpx {
        let cli = self.cli.confined(confinement);
        Acpx {
            prompts: self.prompts.with_cli(cli.clone()),
            cli,
        }
    }

    pub fn bin(&self) -> &str {
        self.cli.bin()
    }
}
