//! Multi-turn sessions: create, get, list, close. Turns are in `turns.rs`.

use std::path::Path;

use tracing::Instrument;

use super::files::{self, Attachment};
use super::types::{AppName, SessionId, SessionName};
use super::{Caller, Forge};
use crate::agent::AgentSession;
use crate::config::{AgentCommand, AgentDef, BackendKind, PermissionPolicy};
use crate::error::{Error, Result};
use crate::ledger::{
    CloseOutcome, CreateOutcome, EventDetail, EventOutcome, SessionEvent, SessionFilter,
    SessionRow, Sessions, Stamp,
};
use crate::quota::Limits;
use crate::values::Timestamp;
use crate::wire;

fn session_reply(row: SessionRow) -> wire::Session {
    wire::Session {
        status: if row.open {
            wire::SessionStatus::Open
        } else {
            wire::SessionStatus::Closed
        },
        session_id: row.session_id.to_string(),
        app: row.app,
        agent: row.agent,
        created_at: row.created_at.to_string(),
        last_turn_at: row.last_turn_at.map(|t| t.to_string()),
        closed_at: row.closed_at.map(|t| t.to_string()),
        turns: row.turns,
        running_turn: row.running_turn,
        name: row.name,
    }
}

/// The sessions `forge.admin.session.list` answers without a `limit`, and at most.
const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

/// How long a close waits for the cancelled turn of its session to end before it stops the
/// agent anyway.
const CLOSE_WAITS_FOR_TURN: std::time::Duration = std::time::Duration::from_secs(30);

impl Forge {
    /// The session `id` if it exists and belongs to `caller`; `not_found` otherwise.
    pub(super) async fn owned_session(
        &self,
        caller: &Caller,
        id: &SessionId,
    ) -> Result<SessionRow> {
        match self.ledger.session(*id).await? {
            Some(row) if caller.app == row.app => Ok(row),
            _ => Err(Error::not_found("no such session")),
        }
    }

    /// The session `id` if it exists and `caller` may watch it: its own app's, or any app's for
    /// an admin (get, events, cancel, permission answers: what the console reads and stops);
    /// `not_found` otherwise.
    pub(super) async fn watched_session(
        &self,
        caller: &Caller,
        id: &SessionId,
    ) -> Result<SessionRow> {
        match self.ledger.session(*id).await? {
            Some(row) if caller.admin || caller.app == row.app => Ok(row),
            _ => Err(Error::not_found("no such session")),
        }
    }

    /// What the agent backend needs to reach the session of `row`.
    /// The session's agent keeps the command it was created with; its backend and permissions
    /// are the configured agent's of that name (acpx, allow all, if the name is gone).
    pub(super) fn agent_session(&self, row: &SessionRow) -> AgentSession {
        let def = self.settings.agents.get(&row.agent);
        AgentSession {
            id: row.session_id.to_string(),
            app: row.app.clone(),
            agent: row.agent.clone(),
            cwd: row.cwd.clone().into(),
            // The ledger holds what this worker wrote, from the configured commands.
            command: AgentCommand::parse(&row.agent_command)
                .unwrap_or_else(|_| AgentCommand::Custom(row.agent_command.clone())),
            backend: def.map_or(BackendKind::Acpx, |d| d.backend),
            permissions: def.map_or(PermissionPolicy::AllowAll, |d| d.permissions),
            auth: def.and_then(|d| d.auth.clone()),
            state: row.agent_state.clone(),
        }
    }

    /// What the agent backend needs to reach the session of `row` for a caller under `limits`:
    /// its permissions no more than the app's policy allows.
    pub(super) fn agent_session_under(&self, row: &SessionRow, limits: &Limits) -> AgentSession {
        let mut session = self.agent_session(row);
        session.permissions =
            Forge::capped_permissions(limits, session.backend, session.permissions);
        session
    }

    /// Where a new session of `app` works: `<root>/<id>`, or for a native agent process, which
    /// hosts all of an app's sessions and may write only below one directory of the app's,
    /// `<root>/apps/<app>/<id>`.
    fn session_dir(&self, def: &AgentDef, app: &str, id: &str) -> std::path::PathBuf {
        let root = &self.settings.sessions_root;
        match def.backend {
            BackendKind::Acpx => root.join(id),
            BackendKind::Acp => crate::agent::acp::session_dir(root, app, id),
        }
    }

    /// The configured agent a create names, or the default one.
    fn pick_agent(&self, name: Option<String>) -> Result<(String, AgentDef)> {
        let name = name.unwrap_or_else(|| self.settings.default_agent.clone());
        match self.settings.agents.get(&name) {
            Some(def) => Ok((name, def.clone())),
            None => Err(Error::bad_request(format!(
                "unknown agent {name:?}; configured agents: {}",
                self.settings
                    .agents
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub async fn create_session(
        &self,
        caller: &Caller,
        req: wire::CreateSession,
    ) -> Result<wire::Session> {
        let (agent, def) = self.pick_agent(req.agent)?;
        let name = req.name.as_deref().map(SessionName::parse).transpose()?;
        let attachments = self.attachments(&req.files)?;
        let id = SessionId::new();
        let cwd = self.session_dir(&def, caller.app.as_str(), &id.as_string());
        let row = SessionRow {
            pending_files: attachments
                .iter()
                .map(|a| cwd.join(a.name.as_str()).to_string_lossy().into_owned())
                .collect(),
            session_id: id,
            app: caller.app.to_string(),
            agent,
            agent_command: def.command.spec().to_string(),
            cwd: cwd.to_string_lossy().into_owned(),
            open: true,
            created_at: Timestamp::now(),
            last_turn_at: None,
            closed_at: None,
            turns: 0,
            agent_state: None,
            running_turn: None,
            name: name.map(SessionName::into_string),
        };
        let span = tracing::info_span!("create", session = %row.session_id, app = %row.app);
        async {
            self.reserve_session(&row, &caller.limits).await?;
            let started = self.start_session(&row, attachments, &caller.limits).await;
            if let Err(err) = self.record_create(&row, started).await {
                self.undo_create(&row, &err).await;
                return Err(err);
            }
            tracing::info!(agent = %row.agent, "session created");
            Ok(session_reply(row))
        }
        .instrument(span)
        .await
    }

    /// The ledger's row of the new session, within the cap of open sessions.
    async fn reserve_session(&self, row: &SessionRow, limits: &Limits) -> Result<()> {
        let created = self
            .ledger
            .create_session(
                row.clone(),
                self.settings.worker_id.clone(),
                self.settings.max_live_sessions,
                limits.clone(),
            )
            .await?;
        match created {
            CreateOutcome::AtCapacity { open } => Err(Error::at_capacity(format!(
                "{open} sessions are open; the limit is {}",
                self.settings.max_live_sessions
            ))),
            CreateOutcome::Refused(refused) => Err(super::apps::refusal(&row.app, &refused)),
            CreateOutcome::NameTaken => Err(Error::conflict(format!(
                "an open session of agent {:?} is named {:?} already",
                row.agent,
                row.name.as_deref().unwrap_or_default()
            ))),
            CreateOutcome::Created => Ok(()),
        }
    }

    /// The session's directory, its files and its agent session.
    async fn start_session(
        &self,
        row: &SessionRow,
        attachments: Vec<Attachment>,
        limits: &Limits,
    ) -> Result<()> {
        let cwd = Path::new(&row.cwd);
        tokio::fs::create_dir_all(cwd)
            .await
            .map_err(Error::internal)?;
        files::write(cwd, attachments)
            .await
            .map_err(Error::internal)?;
        let session = self.agent_session_under(row, limits);
        let opened = self.agent.open(&session).await?;
        if let Some(state) = opened.state {
            // A native session lives in this worker's agent process: this worker owns it.
            let owner =
                (session.backend == BackendKind::Acp).then(|| self.settings.worker_id.clone());
            self.ledger
                .set_agent_state(row.session_id, state, owner)
                .await?;
        }
        Ok(())
    }

    /// Records how the create went. An agent session the ledger could not record as made is
    /// closed again rather than left open.
    async fn record_create(&self, row: &SessionRow, started: Result<()>) -> Result<()> {
        let (outcome, error) = match &started {
            Ok(()) => (EventOutcome::Ok, None),
            Err(e) => (EventOutcome::Failed(e.kind), Some(e.message.clone())),
        };
        let finished = self
            .ledger
            .finish_create(row.session_id, outcome, error)
            .await;
        match (started, finished) {
            (Err(err), _) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => {
                tracing::error!(error = %e, "could not record a create");
                if let Err(e) = self.agent.close(&self.agent_session(row)).await {
                    tracing::warn!(error = %e, "closing the agent session failed");
                }
                Err(Error::internal(e))
            }
        }
    }

    /// Nothing half-made stays behind a failed create: the session is closed with the reason,
    /// its directory removed.
    async fn undo_create(&self, row: &SessionRow, err: &Error) {
        let detail = EventDetail {
            error: Some(err.message.clone()),
            ..EventDetail::of(EventOutcome::CreateFailed)
        };
        if let Err(e) = self
            .ledger
            .close_session(
                row.session_id,
                row.app.clone(),
                SessionEvent::Close,
                Stamp::now(&self.settings.worker_id),
                detail,
            )
            .await
        {
            tracing::error!(error = %e, "could not record a failed create");
        }
        let _ = tokio::fs::remove_dir_all(&row.cwd).await;
        tracing::warn!(error = %err, "session create failed");
    }

    pub async fn get_session(&self, caller: &Caller, id: SessionId) -> Result<wire::Session> {
        Ok(session_reply(self.watched_session(caller, &id).await?))
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
        _req: wire::Empty,
    ) -> Result<wire::SessionList> {
        let rows = self.ledger.sessions_of(caller.app.to_string()).await?;
        Ok(wire::SessionList {
            sessions: rows.into_iter().map(session_reply).collect(),
        })
    }

    /// `forge.admin.session.list`: every app's sessions that match, newest first, a page.
    pub async fn admin_sessions(&self, asked: wire::SessionsAsked) -> Result<wire::SessionPage> {
        let app = asked.app.as_deref().map(AppName::parse).transpose()?;
        let limit = asked.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::bad_request(format!("limit must be 1 to {MAX_PAGE}")));
        }
        let filter = SessionFilter {
            app: app.map(|a| a.to_string()),
            agent: asked.agent,
            open: asked.status.map(|s| s == wire::SessionStatus::Open),
            offset: asked.offset.unwrap_or(0),
            limit,
        };
        let (rows, total) = self.ledger.sessions_matching(filter).await?;
        Ok(wire::SessionPage {
            sessions: rows.into_iter().map(session_reply).collect(),
            total,
        })
    }

    /// After the ledger has closed a session: cancels the turn of it this worker is running
    /// (it answers `cancelled`), waits for it to end, then stops the agent. A session the
    /// backend fails to close is closed all the same (acpx: its agent ends with the idle TTL).
    async fn stop_session_agent(&self, row: &SessionRow) {
        self.cancel_running_turn(&row.session_id.to_string(), "session closed");
        // Turns queued behind it find the session closed; the agent stops once none runs here.
        let _idle = tokio::time::timeout(
            CLOSE_WAITS_FOR_TURN,
            self.session_locks.lock(&row.session_id.to_string()),
        )
        .await
        .ok();
        if let Err(e) = self.agent.close(&self.agent_session(row)).await {
            tracing::warn!(session = %row.session_id, error = %e, "closing the agent session failed");
        }
    }

    pub async fn close_session(
        &self,
        caller: &Caller,
        id: SessionId,
    ) -> Result<wire::SessionClosed> {
        let row = self.owned_session(caller, &id).await?;
        let closed = |already_closed| wire::SessionClosed {
            session_id: id.as_string(),
            closed: true,
            already_closed,
        };
        if !row.open {
            return Ok(closed(true));
        }
        // The ledger first: from here on every new turn of the session is a conflict.
        let outcome = self
            .ledger
            .close_session(
                row.session_id,
                caller.app.to_string(),
                SessionEvent::Close,
                Stamp::now(&self.settings.worker_id),
                EventDetail::of(EventOutcome::Ok),
            )
            .await?;
        match outcome {
            CloseOutcome::Closed => {}
            CloseOutcome::AlreadyClosed => return Ok(closed(true)),
            CloseOutcome::NotFound => return Err(Error::not_found("no such session")),
        }
        self.stop_session_agent(&row).await;
        tracing::info!(session = %row.session_id, "session closed");
        Ok(closed(false))
    }
}
