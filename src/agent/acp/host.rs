//! One agent process of one (app, agent), spoken to over ACP on its stdio, hosting every open
//! session of that app and agent that this worker serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    InitializeRequest, LoadSessionRequest, NewSessionRequest, RequestPermissionRequest, SessionId,
    SessionNotification,
};
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Agent, ByteStreams, Client};
use tokio::io::AsyncBufReadExt;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::routes::Routes;
use crate::agent::confine::Jail;
use crate::agent::process::{Spawned, Spec};
use crate::agent::AgentError;

/// Time allowed for `initialize`, `session/new` and `session/load`.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the agent's last stderr lines are kept for the message of a crash.
const STDERR_LINES: usize = 20;

/// A running agent process and its connection. Dropped: the process group is killed.
pub struct Live {
    pub cx: ConnectionTo<Agent>,
    pub can_load: bool,
    pub pid: Option<u32>,
    pub routes: Arc<Routes>,
    /// Our session id → the agent's, for the sessions this process serves.
    sessions: Mutex<HashMap<String, Served>>,
    /// Cancelled when the connection has ended (the agent exited or closed its stdout).
    pub ended: CancellationToken,
    stderr: Arc<Mutex<Vec<String>>>,
    _driver: AbortOnDropHandle<()>,
    _process: Spawned,
}

/// A session this process serves: the agent's id for it, and the last turn it ran here.
#[derive(Clone)]
struct Served {
    id: SessionId,
    last_turn: u64,
}

/// What starting a session in a process gave: the agent's id, and whether its history is gone.
pub struct Attached {
    pub agent_id: SessionId,
    pub history_lost: bool,
}

impl Live {
    /// Starts `argv` under `jail` in `dir` and initializes ACP with it.
    pub async fn start(
        argv: &[String],
        dir: &std::path::Path,
        jail: Option<&Jail>,
    ) -> Result<Live, AgentError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| AgentError::Failed("the agent's command is empty".into()))?;
        let unavailable = |e: std::io::Error| AgentError::Unavailable {
            program: program.clone(),
            reason: e.to_string(),
        };
        let mut process = Spawned::start(Spec {
            program,
            args,
            cwd: Some(dir),
            keep_stdin: true,
            jail,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
        let stdin = process.take_stdin().expect("stdin is kept");
        let stdout = process.take_stdout();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(keep_stderr(
            process.take_stderr(),
            stderr.clone(),
            process.id(),
        ));
        let routes = Arc::new(Routes::default());
        let ended = CancellationToken::new();
        let (cx_tx, cx_rx) = tokio::sync::oneshot::channel();
        let transport = ByteStreams::new(stdin.compat_write(), stdout.compat());
        let driver = tokio::spawn(drive(transport, routes.clone(), cx_tx, ended.clone()));
        let cx = cx_rx
            .await
            .map_err(|_| AgentError::Failed("the agent's connection did not start".into()))?;
        let mut live = Live {
            cx,
            can_load: false,
            pid: process.id(),
            routes,
            sessions: Mutex::new(HashMap::new()),
            ended,
            stderr,
            _driver: AbortOnDropHandle::new(driver),
            _process: process,
        };
        let init = live
            .setup(InitializeRequest::new(ProtocolVersion::V1))
            .await?;
        live.can_load = init.agent_capabilities.load_session;
        Ok(live)
    }

    /// A setup request, within `SETUP_TIMEOUT`, failing as the agent's exit when it exits.
    async fn setup<R>(&self, request: R) -> Result<R::Response, AgentError>
    where
        R: agent_client_protocol::JsonRpcRequest,
    {
        let sent = self.cx.send_request(request).block_task();
        tokio::select! {
            r = tokio::time::timeout(SETUP_TIMEOUT, sent) => match r {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) if self.ended.is_cancelled() => Err(self.exited(&e.to_string())),
                Ok(Err(e)) => Err(AgentError::Failed(format!("the agent refused: {e}"))),
                Err(_) => Err(AgentError::Failed(format!(
                    "the agent did not answer within {}s", SETUP_TIMEOUT.as_secs()
                ))),
            },
            _ = self.ended.cancelled() => Err(self.exited("")),
        }
    }

    /// The error of a turn or request cut off by the agent's exit, with its last words.
    pub fn exited(&self, detail: &str) -> AgentError {
        let said = self.stderr.lock().expect("stderr lock").join("\n");
        let mut m = String::from("the agent process exited");
        if !detail.is_empty() {
            m.push_str(&format!(" ({detail})"));
        }
        if !said.is_empty() {
            m.push_str(&format!(": {said}"));
        }
        AgentError::Failed(m)
    }

    /// A new agent session working in `cwd`.
    pub async fn new_session(
        &self,
        ours: &str,
        cwd: &std::path::Path,
        last_turn: u64,
    ) -> Result<SessionId, AgentError> {
        let made = self
            .setup(NewSessionRequest::new(cwd.to_path_buf()))
            .await?;
        self.serve(ours, made.session_id.clone(), last_turn);
        Ok(made.session_id)
    }

    /// The agent session of ours in this process for turn `turn`: the one it served the
    /// turn before, or else loaded again from the id the ledger kept (`session/load`, when the
    /// agent can: the session's last turns may have run in another worker's process), or new
    /// (its history is gone).
    pub async fn attach(
        &self,
        ours: &str,
        kept: Option<&str>,
        cwd: &std::path::Path,
        turn: u64,
    ) -> Result<Attached, AgentError> {
        let served = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(ours)
            .cloned();
        match (served, kept) {
            (Some(s), _) if s.last_turn + 1 == turn => Ok(Attached {
                agent_id: s.id,
                history_lost: false,
            }),
            (_, Some(id)) if self.can_load => {
                let id = SessionId::new(id.to_string());
                self.setup(LoadSessionRequest::new(id.clone(), cwd.to_path_buf()))
                    .await?;
                self.serve(ours, id.clone(), turn - 1);
                Ok(Attached {
                    agent_id: id,
                    history_lost: false,
                })
            }
            (Some(s), _) => Ok(Attached {
                agent_id: s.id,
                history_lost: false,
            }),
            (None, _) => Ok(Attached {
                agent_id: self.new_session(ours, cwd, turn - 1).await?,
                history_lost: kept.is_some(),
            }),
        }
    }

    pub fn served(&self, ours: &str) -> Option<SessionId> {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(ours).map(|s| s.id.clone())
    }

    /// Records that this process served turn `turn` of our session.
    pub fn served_turn(&self, ours: &str, turn: u64) {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get_mut(ours) {
            s.last_turn = turn;
        }
    }

    fn serve(&self, ours: &str, id: SessionId, last_turn: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.insert(ours.to_string(), Served { id, last_turn });
    }

    /// Stops serving a session; `true` when it was the last one.
    pub fn release(&self, ours: &str) -> bool {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.remove(ours);
        sessions.is_empty()
    }
}

/// Runs the connection until the agent hangs up (or the process is dropped): updates and
/// permission requests go to the turn of their session.
async fn drive<O, I>(
    transport: ByteStreams<O, I>,
    routes: Arc<Routes>,
    cx_tx: tokio::sync::oneshot::Sender<ConnectionTo<Agent>>,
    ended: CancellationToken,
) where
    O: futures::AsyncWrite + Send + 'static,
    I: futures::AsyncRead + Send + 'static,
{
    let (updates, permissions) = (routes.clone(), routes);
    let result = Client
        .v1()
        .name("clawdforge")
        .on_receive_notification(
            async move |n: SessionNotification, _cx| {
                updates.update(&n);
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest, responder, _cx| {
                permissions.permission(request, responder);
                Ok(())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
            let _ = cx_tx.send(cx.clone());
            cx.incoming_closed().await;
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "the agent's connection ended");
    }
    ended.cancel();
}

/// Logs the agent's stderr and keeps its last lines.
async fn keep_stderr(
    stderr: tokio::process::ChildStderr,
    kept: Arc<Mutex<Vec<String>>>,
    pid: Option<u32>,
) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(pid, "agent: {line}");
        let mut kept = kept.lock().expect("stderr lock");
        if kept.len() == STDERR_LINES {
            kept.remove(0);
        }
        kept.push(line.chars().take(500).collect());
    }
}
