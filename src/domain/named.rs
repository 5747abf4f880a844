//! Sessions reached by their app, agent and name rather than by id (the agent protocol's
//! `{agent}.{owner}.{session}`): every app with a live token has a standing session named
//! `default` of each agent, created on its first turn (and again once it was closed); every
//! other open session goes by its name, or by its id when it has none.

use std::collections::BTreeSet;

use super::request::Request;
use super::types::{AppName, SessionId, SessionName};
use super::{Caller, Forge};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{Sessions, Tokens};
use crate::wire;

/// The name of the session every app has of every agent, created on first use.
pub const STANDING: &str = "default";

/// A session as its app, agent and name point at it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedSession {
    pub app: AppName,
    pub agent: String,
    pub name: SessionName,
}

impl NamedSession {
    /// Whether it is the standing session (created when it is not open).
    pub fn standing(&self) -> bool {
        self.name.as_str() == STANDING
    }
}

fn no_such_session() -> Error {
    Error::not_found("no such session")
}

impl Forge {
    /// The configured agents' names.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.settings.agents.keys().map(String::as_str)
    }

    /// Every session of `agents` a caller can reach by name: for each app with a live token,
    /// the standing session of each agent and each open session (by its id when unnamed).
    pub async fn named_sessions(&self, agents: &[String]) -> Result<BTreeSet<NamedSession>> {
        let tokens = self.ledger.list_tokens().await?;
        let apps: BTreeSet<String> = tokens
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .map(|t| t.app)
            .collect();
        let standing = SessionName::parse(STANDING)?;
        let mut named = BTreeSet::new();
        for app in apps {
            for agent in agents {
                named.insert(NamedSession {
                    app: AppName::stored(app.clone()),
                    agent: agent.clone(),
                    name: standing.clone(),
                });
            }
            for row in self.ledger.sessions_of(app.clone()).await? {
                if row.open && agents.contains(&row.agent) {
                    let name = row.name.unwrap_or_else(|| row.session_id.to_string());
                    named.insert(NamedSession {
                        app: AppName::stored(app.clone()),
                        agent: row.agent,
                        name: SessionName::parse(&name)?,
                    });
                }
            }
        }
        Ok(named)
    }

    /// The open session `named` points at, for `caller`: `not_found` when it is another app's
    /// or there is none; the standing session is created (as a create of the caller's would
    /// be, under its policy) when it is not open.
    pub(super) async fn named_session_id(
        &self,
        caller: &Caller,
        named: &NamedSession,
    ) -> Result<SessionId> {
        if caller.app != named.app {
            return Err(no_such_session());
        }
        if let Some(id) = self.open_named(named).await? {
            return Ok(id);
        }
        if !named.standing() {
            return Err(no_such_session());
        }
        let create = wire::CreateSession {
            agent: Some(named.agent.clone()),
            files: Vec::new(),
            name: Some(STANDING.to_string()),
        };
        let caller = self
            .police(caller.clone(), &Request::SessionCreate(create.clone()))
            .await?;
        match self.create_session(&caller, create).await {
            Ok(session) => SessionId::parse(&session.session_id),
            // Another turn created it meanwhile.
            Err(err) if err.kind == ErrorKind::Conflict => self.open_named(named).await?.ok_or(err),
            Err(err) => Err(err),
        }
    }

    /// The id of the open session `named` points at, if there is one.
    async fn open_named(&self, named: &NamedSession) -> Result<Option<SessionId>> {
        let rows = self.ledger.sessions_of(named.app.to_string()).await?;
        Ok(rows
            .into_iter()
            .find(|row| {
                let name = match &row.name {
                    Some(name) => name.clone(),
                    None => row.session_id.to_string(),
                };
                row.open && row.agent == named.agent && name == named.name.as_str()
            })
            .map(|row| row.session_id))
    }
}
