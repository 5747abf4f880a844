//! The native backend: the worker speaks ACP (the `agent-client-protocol` crate) to the agent
//! itself. One agent process per (app, agent command) hosts all of that app's open sessions
//! of that agent on this worker; it is started on the first need, stopped after `idle`
//! without a turn, and started again after a crash, loading each session it then serves again
//! with `session/load` when the agent can. A turn is `session/prompt`; its updates arrive as
//! notifications and become the contract's events; cancel is `session/cancel`.

mod asks;
mod auth;
mod host;
mod prompt;
mod routes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_client_protocol::v1::schema::CancelNotification;

pub use self::auth::AuthPlan;
pub use self::host::Greeting;
pub(crate) use self::host::Live;
use self::prompt::prompt;
use super::backend::{
    AgentError, AgentSession, Answer, Backend, Opened, Prompt, StopReason, TurnEnd,
};
use super::confine::{app_dir_name, Confinement, Work};
use super::fault::AgentLabel;
use crate::agent::def::AgentAuth;
use crate::wire::EventBody;

/// Below the sessions' root, where the native backend's sessions live, one directory per app.
pub const APPS_DIR: &str = "apps";

/// Which process hosts a session: its app's, for its agent's command and authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostKey {
    app: String,
    command: String,
    auth: Option<AgentAuth>,
}

/// The agent process of one key, while it runs, and what tells when it was last used.
#[derive(Default)]
struct Host {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    /// Turns running now.
    turns: AtomicUsize,
    /// When the last turn (or open) ended.
    last_used: Mutex<Option<Instant>>,
    /// Whether a task is waiting to stop the process once it is idle (one per host).
    reaper: AtomicBool,
}

#[derive(Clone)]
pub struct Acp {
    inner: Arc<Inner>,
}

struct Inner {
    confinement: Arc<Confinement>,
    idle: Duration,
    /// How long a permission request left to the caller waits for an answer.
    permission_timeout: Duration,
    hosts: Mutex<HashMap<HostKey, Arc<Host>>>,
}

impl Acp {
    pub fn new(confinement: Arc<Confinement>, idle: Duration, permission_timeout: Duration) -> Acp {
        Acp {
            inner: Arc::new(Inner {
                confinement,
                idle,
                permission_timeout,
                hosts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The app agent processes running now (one being started counts).
    fn running(&self) -> usize {
        let hosts = self.inner.hosts.lock().expect("hosts lock");
        hosts
            .values()
            .filter(|host| match host.live.try_lock() {
                Ok(slot) => slot.as_ref().is_some_and(|l| !l.ended.is_cancelled()),
                Err(_) => true,
            })
            .count()
    }

    fn host(&self, s: &AgentSession) -> Arc<Host> {
        let key = HostKey {
            app: s.app.clone(),
            command: s.command.spec().to_string(),
            auth: s.auth.clone(),
        };
        let mut hosts = self.inner.hosts.lock().expect("hosts lock");
        hosts.entry(key).or_default().clone()
    }

    /// The session's host process, started (or started again after a crash) when it is not
    /// running. It works in the directory of the app's sessions: the parent of the session's.
    async fn live(&self, host: &Host, s: &AgentSession) -> Result<Arc<Live>, AgentError> {
        let mut slot = host.live.lock().await;
        if let Some(live) = slot.as_ref().filter(|l| !l.ended.is_cancelled()) {
            return Ok(live.clone());
        }
        let argv = s.command.acp_argv().ok_or_else(|| {
            AgentError::Failed(format!("{:?} has no ACP command", s.command.spec()))
        })?;
        let dir = app_dir(s)?;
        let jail = self
            .inner
            .confinement
            .jail(&s.app, &dir, Work::Native)
            .map_err(|e| AgentError::Failed(format!("preparing the app's home: {e}")))?;
        let label = AgentLabel::new(&s.agent, &argv);
        let auth = AuthPlan::native(s.auth.clone());
        let live = Arc::new(Live::start(label, &dir, jail.as_ref(), auth).await?);
        tracing::info!(pid = live.pid, app = %s.app, "agent process started");
        *slot = Some(live.clone());
        Ok(live)
    }

    /// After a turn: the host's process is stopped once it has had no turn for `idle`, by one
    /// waiting task per host.
    fn arm_idle_stop(&self, host: Arc<Host>) {
        *host.last_used.lock().expect("last_used lock") = Some(Instant::now());
        if host.reaper.swap(true, Ordering::SeqCst) {
            return;
        }
        let idle = self.inner.idle;
        tokio::spawn(async move {
            loop {
                let last = host
                    .last_used
                    .lock()
                    .expect("last_used lock")
                    .unwrap_or_else(Instant::now);
                // While a turn runs, the process is not idle: look again later.
                let due = if host.turns.load(Ordering::SeqCst) > 0 {
                    Instant::now() + idle
                } else {
                    last + idle
                };
                tokio::time::sleep_until(due.into()).await;
                let mut slot = host.live.lock().await;
                let last = host
                    .last_used
                    .lock()
                    .expect("last_used lock")
                    .unwrap_or_else(Instant::now);
                let quiet = host.turns.load(Ordering::SeqCst) == 0 && last.elapsed() >= idle;
                if quiet || slot.is_none() {
                    if let Some(live) = slot.take() {
                        tracing::info!(pid = live.pid, "agent process idle; stopping it");
                    }
                    // Cleared under the lock: a turn that starts the process again arms anew.
                    host.reaper.store(false, Ordering::SeqCst);
                    return;
                }
            }
        });
    }

    async fn turn(
        &self,
        host: &Arc<Host>,
        s: &AgentSession,
        p: &Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        let live = self.live(host, s).await?;
        let attached = live
            .attach(&s.id, s.state.as_deref(), &s.cwd, p.turn)
            .await?;
        if attached.history_lost {
            p.sink
                .emit(EventBody::Notice {
                    text: "the agent was started again and cannot load sessions: \
                           this session's earlier turns are gone from its memory"
                        .into(),
                })
                .await;
        }
        // Cancelled before the agent has it: it is never sent. (An agent may not hear a
        // session/cancel that comes right behind the prompt, and then runs it.)
        if p.cancel.is_cancelled() {
            return Ok(TurnEnd {
                output: String::new(),
                stop_reason: StopReason::Cancelled,
            });
        }
        let ended = prompt(
            &live,
            &attached.agent_id,
            s,
            p,
            self.inner.permission_timeout,
        )
        .await;
        live.served_turn(&s.id, p.turn);
        ended
    }
}

/// Where a native session of `app` works: `<root>/apps/<app>/<id>`. Its parent is the one
/// directory of the app's that the app's agent process may write.
pub fn session_dir(root: &Path, app: &str, id: &str) -> PathBuf {
    root.join(APPS_DIR).join(app_dir_name(app)).join(id)
}

/// The directory of the app's native sessions: the parent of the session's. A session made on
/// the acpx backend (whose agent was switched to `acp` since) lives elsewhere, and is refused
/// rather than given a process that could write every app's sessions.
fn app_dir(s: &AgentSession) -> Result<PathBuf, AgentError> {
    let root = s.cwd.ancestors().nth(3);
    let id = s.cwd.file_name().and_then(|n| n.to_str());
    match (root, id) {
        (Some(root), Some(id)) if session_dir(root, &s.app, id) == s.cwd => {
            Ok(s.cwd.parent().expect("has a root").to_path_buf())
        }
        _ => Err(AgentError::Failed(
            "this session was made on the acpx backend; its agent is now configured with \
             backend = \"acp\": create a new session"
                .into(),
        )),
    }
}

#[async_trait::async_trait]
impl Backend for Acp {
    fn agent_processes(&self) -> Vec<(&'static str, usize)> {
        vec![("acp", self.running())]
    }

    fn name(&self) -> &'static str {
        "acp"
    }

    async fn version(&self) -> Result<String, AgentError> {
        Ok("ACP v1".into())
    }

    /// A new session in the host's process; the process is stopped once idle whether the
    /// session could be made or not (an agent that wants credentials it cannot get is not kept).
    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError> {
        let host = self.host(session);
        let live = self.live(&host, session).await?;
        let made = live.new_session(&session.id, &session.cwd, 0).await;
        self.arm_idle_stop(host);
        Ok(Opened {
            state: Some(made?.to_string()),
        })
    }

    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        let host = self.host(session);
        host.turns.fetch_add(1, Ordering::SeqCst);
        let ended = self.turn(&host, session, &prompt).await;
        host.turns.fetch_sub(1, Ordering::SeqCst);
        self.arm_idle_stop(host);
        ended
    }

    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError> {
        let host = self.host(session);
        let live = host.live.lock().await.clone();
        let Some(live) = live else { return Ok(false) };
        let Some(id) = live
            .served(&session.id)
            .filter(|id| live.routes.running(id))
        else {
            return Ok(false);
        };
        let _ = live.cx.send_notification(CancelNotification::new(id));
        Ok(true)
    }

    /// The process stops serving the session, and stops when it was its last one.
    async fn close(&self, session: &AgentSession) -> Result<(), AgentError> {
        let host = self.host(session);
        let mut slot = host.live.lock().await;
        let last = slot.as_ref().is_some_and(|live| live.release(&session.id));
        if last && host.turns.load(Ordering::SeqCst) == 0 {
            if let Some(live) = slot.take() {
                tracing::info!(
                    pid = live.pid,
                    "agent process has no session left; stopping it"
                );
            }
        }
        Ok(())
    }

    async fn forget(&self, _session: &AgentSession) -> Result<(), AgentError> {
        Ok(())
    }

    async fn answer(
        &self,
        session: &AgentSession,
        request_id: &str,
        option_id: &str,
    ) -> Result<Answer, AgentError> {
        let live = self.host(session).live.lock().await.clone();
        let agent_id = live.as_ref().and_then(|l| l.served(&session.id));
        Ok(match (live, agent_id) {
            (Some(live), Some(id)) => live.routes.waiting.answer(&id, request_id, option_id),
            _ => Answer::NotWaiting,
        })
    }
}

impl std::fmt::Debug for Acp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acp")
            .field("idle", &self.inner.idle)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::def::{AgentCommand, BackendKind, PermissionPolicy};

    fn session(app: &str, cwd: &str) -> AgentSession {
        AgentSession {
            id: "s".into(),
            app: app.into(),
            agent: "agent".into(),
            cwd: cwd.into(),
            command: AgentCommand::Custom("agent".into()),
            backend: BackendKind::Acp,
            permissions: PermissionPolicy::AllowAll,
            auth: None,
            state: None,
        }
    }

    #[test]
    fn the_process_works_in_its_apps_directory_and_nowhere_wider() {
        let dir = app_dir(&session("notes", "/data/sessions/apps/notes/s")).unwrap();
        assert_eq!(dir, std::path::Path::new("/data/sessions/apps/notes"));
        // A session made on acpx lives directly in the root: its parent holds every app's.
        assert!(app_dir(&session("notes", "/data/sessions/s")).is_err());
        assert!(app_dir(&session("notes", "/data/sessions/apps/other/s")).is_err());
        assert!(app_dir(&session("..", "/data/sessions/apps/../s")).is_err());
    }
}
