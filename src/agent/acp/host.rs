//! One agent process of one (app, agent), spoken to over ACP on its stdio, hosting every open
//! session of that app and agent that this worker serves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    AuthMethod, InitializeRequest, InitializeResponse, LoadSessionRequest, NewSessionRequest,
    RequestPermissionRequest, SessionId, SessionNotification,
};
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Agent, ByteStreams, Client, ErrorCode};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::auth::AuthPlan;
use super::routes::Routes;
use crate::agent::backend::AgentError;
use crate::agent::confine::{search_path, Jail};
use crate::agent::fault::{
    useful_line, AgentFault, AgentLabel, AuthGap, AuthOffer, Ending, Fault, Phase,
};
use crate::agent::process::{Spawned, Spec};

/// Time allowed for `initialize`, `session/new` and `session/load`.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the agent's last stderr lines are kept for the message of a crash.
const STDERR_LINES: usize = 40;
/// Once the agent's connection has ended, how long its exit status and the rest of its stderr
/// may take to come.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long a process that is told to stop may take to be gone.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What the agent said of itself in its `initialize` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    pub protocol_version: u16,
    /// `agentInfo`: its name and version.
    pub agent_info: Option<String>,
    pub auth_methods: Vec<AuthOffer>,
    pub can_load: bool,
}

impl Greeting {
    fn of(init: &InitializeResponse) -> Greeting {
        Greeting {
            protocol_version: init.protocol_version.as_u16(),
            agent_info: init
                .agent_info
                .as_ref()
                .map(|info| format!("{} {}", info.name, info.version)),
            auth_methods: init
                .auth_methods
                .iter()
                .map(|m| AuthOffer {
                    id: m.id().to_string(),
                    name: m.name().to_string(),
                    terminal: matches!(m, AuthMethod::Terminal(_)),
                })
                .collect(),
            can_load: init.agent_capabilities.load_session,
        }
    }
}

/// A running agent process and its connection. Dropped: the process group is killed.
pub struct Live {
    pub cx: ConnectionTo<Agent>,
    pub greeting: Greeting,
    pub pid: Option<u32>,
    pub routes: Arc<Routes>,
    /// Our session id → the agent's, for the sessions this process serves.
    sessions: Mutex<HashMap<String, Served>>,
    /// Cancelled when the connection has ended (the agent exited or closed its stdout).
    pub ended: CancellationToken,
    label: AgentLabel,
    process: Watched,
    /// Why the process ended, made (and logged) once for every turn it cut off.
    failure: tokio::sync::OnceCell<AgentError>,
    /// What it does when the agent asks for credentials.
    auth: AuthPlan,
    /// How authenticating went, the first time the agent asked: once per process.
    signed_in: tokio::sync::OnceCell<Result<(), AgentError>>,
    _driver: AbortOnDropHandle<()>,
}

/// Why a setup request has no answer: the agent's error, or its exit or silence.
enum Unanswered {
    Error(agent_client_protocol::Error),
    Failed(AgentError),
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
    /// Starts the agent (`label`'s command) under `jail` in `dir` and initializes ACP with it;
    /// `auth` says how to answer it when it asks for credentials.
    pub async fn start(
        label: AgentLabel,
        dir: &std::path::Path,
        jail: Option<&Jail>,
        auth: AuthPlan,
    ) -> Result<Live, AgentError> {
        let mut process = spawn(&label, dir, jail).await?;
        let stdin = process.take_stdin().expect("stdin is kept");
        let stdout = process.take_stdout();
        let pid = process.id();
        let process = Watched::new(process);
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
            greeting: Greeting::default(),
            pid,
            routes,
            sessions: Mutex::new(HashMap::new()),
            ended,
            label,
            process,
            failure: tokio::sync::OnceCell::new(),
            auth,
            signed_in: tokio::sync::OnceCell::new(),
            _driver: AbortOnDropHandle::new(driver),
        };
        let init = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(live.auth.capabilities());
        let init = live.setup(init, Phase::Start).await?;
        live.greeting = Greeting::of(&init);
        Ok(live)
    }

    /// A setup request, within `SETUP_TIMEOUT`, failing as the agent's exit when it exits.
    async fn setup<R>(&self, request: R, phase: Phase) -> Result<R::Response, AgentError>
    where
        R: agent_client_protocol::JsonRpcRequest,
    {
        let method = request.method().to_string();
        match self.ask(request, phase).await {
            Ok(response) => Ok(response),
            Err(Unanswered::Error(e)) => Err(self.refused(&method, phase, &e).await),
            Err(Unanswered::Failed(e)) => Err(e),
        }
    }

    /// A setup request and the agent's answer or error, within `SETUP_TIMEOUT`.
    async fn ask<R>(&self, request: R, phase: Phase) -> Result<R::Response, Unanswered>
    where
        R: agent_client_protocol::JsonRpcRequest,
    {
        let method = request.method().to_string();
        let sent = self.cx.send_request(request).block_task();
        let failed = |e| Err(Unanswered::Failed(e));
        tokio::select! {
            r = tokio::time::timeout(SETUP_TIMEOUT, sent) => match r {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) if self.gone(&e) => failed(self.exited(phase).await),
                Ok(Err(e)) => Err(Unanswered::Error(e)),
                Err(_) => failed(AgentError::Failed(format!(
                    "{} did not answer {method} within {} s", self.label, SETUP_TIMEOUT.as_secs()
                ))),
            },
            _ = self.ended.cancelled() => failed(self.exited(phase).await),
        }
    }

    /// A request that starts a session (`session/new`, `session/load`): when the agent answers
    /// that it needs authentication, it is authenticated (once per process) and asked again.
    async fn session_setup<R>(&self, request: R) -> Result<R::Response, AgentError>
    where
        R: agent_client_protocol::JsonRpcRequest + Clone,
    {
        match self.ask(request.clone(), Phase::Session).await {
            Ok(response) => Ok(response),
            Err(Unanswered::Error(e)) if e.code == ErrorCode::AUTH_REQUIRED => {
                self.sign_in().await?;
                self.setup(request, Phase::Session).await
            }
            Err(Unanswered::Error(e)) => {
                let method = request.method().to_string();
                Err(self.refused(&method, Phase::Session, &e).await)
            }
            Err(Unanswered::Failed(e)) => Err(e),
        }
    }

    /// Authenticates the agent as its plan says, the first time it asks; later calls get how
    /// that went.
    async fn sign_in(&self) -> Result<(), AgentError> {
        let first = || self.authenticate();
        self.signed_in.get_or_init(first).await.clone()
    }

    async fn authenticate(&self) -> Result<(), AgentError> {
        let offers = &self.greeting.auth_methods;
        let read = |name: &str| std::env::var(name).ok();
        let request = match self.auth.request(offers, read) {
            Ok(request) => request,
            Err(gap) => return Err(self.needs_auth(gap)),
        };
        let method = request.method_id.to_string();
        match self.ask(request, Phase::Session).await {
            Ok(_) => {
                tracing::info!(agent = %self.label.name, pid = self.pid, %method, "agent authenticated");
                Ok(())
            }
            Err(Unanswered::Error(e)) => Err(self.needs_auth(AuthGap::Refused {
                method,
                said: one_line(&e),
            })),
            Err(Unanswered::Failed(e)) => Err(e),
        }
    }

    fn needs_auth(&self, gap: AuthGap) -> AgentError {
        let offers = self.greeting.auth_methods.clone();
        self.fault(Fault::NeedsAuth { offers, gap })
    }

    /// Whether `e` says that the connection is gone.
    fn gone(&self, e: &agent_client_protocol::Error) -> bool {
        agent_client_protocol::is_connection_terminated(e)
            || agent_client_protocol::is_incoming_transport_closed(e)
            || self.ended.is_cancelled()
    }

    /// Why a request of ours failed: the agent's exit, its wish for credentials, or its error.
    pub async fn refused(
        &self,
        method: &str,
        phase: Phase,
        e: &agent_client_protocol::Error,
    ) -> AgentError {
        if self.gone(e) {
            self.exited(phase).await
        } else if e.code == ErrorCode::AUTH_REQUIRED {
            // Past the start of a session, authentication is not tried (again).
            self.needs_auth(self.auth.still_asked())
        } else {
            AgentError::Failed(format!(
                "{} answered {method} with an error: {e}",
                self.label
            ))
        }
    }

    /// The error of a request or turn cut off by the agent's exit, with the line of its
    /// stderr that says why; made once per process, however many turns it cut off.
    pub async fn exited(&self, phase: Phase) -> AgentError {
        let made = self.failure.get_or_init(|| async {
            let (ending, stderr) = self.process.ending().await;
            let said = useful_line(&stderr);
            let fault = match ending {
                Some(ending) => Fault::Ended {
                    ending,
                    phase,
                    said,
                },
                None => Fault::HungUp { phase, said },
            };
            AgentFault {
                agent: self.label.clone(),
                fault,
            }
            .report(&stderr)
        });
        made.await.clone()
    }

    fn fault(&self, fault: Fault) -> AgentError {
        let agent = self.label.clone();
        AgentFault { agent, fault }.report(&self.process.stderr_tail())
    }

    /// Stops the process and waits (a few seconds at most) until it is gone.
    pub async fn stop(self) {
        self.process.stop().await;
    }

    /// A new agent session working in `cwd`.
    pub async fn new_session(
        &self,
        ours: &str,
        cwd: &std::path::Path,
        last_turn: u64,
    ) -> Result<SessionId, AgentError> {
        let made = self
            .session_setup(NewSessionRequest::new(cwd.to_path_buf()))
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
            (_, Some(id)) if self.greeting.can_load => {
                let id = SessionId::new(id.to_string());
                let load = LoadSessionRequest::new(id.clone(), cwd.to_path_buf());
                self.session_setup(load).await?;
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

/// An agent's error on one line: its message (or code) and its data as compact JSON, clipped.
fn one_line(e: &agent_client_protocol::Error) -> String {
    let mut said = if e.message.is_empty() {
        i32::from(e.code).to_string()
    } else {
        e.message.clone()
    };
    if let Some(data) = &e.data {
        said.push_str(&format!(" ({data})"));
    }
    crate::error::clip(&said, 300)
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

/// Starts the agent's process; a program that cannot be started is said with the PATH it was
/// looked up on.
async fn spawn(
    label: &AgentLabel,
    dir: &std::path::Path,
    jail: Option<&Jail>,
) -> Result<Spawned, AgentError> {
    let (program, args) = label
        .argv
        .split_first()
        .ok_or_else(|| AgentError::Failed(format!("agent `{}` has no command", label.name)))?;
    let spawned = Spawned::start(Spec {
        program,
        args,
        cwd: Some(dir),
        keep_stdin: true,
        jail,
        ..Default::default()
    })
    .await;
    spawned.map_err(|e| {
        let path = search_path(jail);
        AgentFault::not_started(label.clone(), &e, &path.to_string_lossy()).report("")
    })
}

/// The agent's process seen from outside its connection: the tail of its stderr and how it
/// ended. Dropped: the process group is killed.
struct Watched {
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_closed: CancellationToken,
    exit: watch::Receiver<Option<Ending>>,
    stop: CancellationToken,
    _watcher: AbortOnDropHandle<()>,
}

impl Watched {
    fn new(mut process: Spawned) -> Watched {
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_closed = CancellationToken::new();
        let pid = process.id();
        tokio::spawn(keep_stderr(
            process.take_stderr(),
            stderr.clone(),
            pid,
            stderr_closed.clone(),
        ));
        let (exit_tx, exit) = watch::channel(None);
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(wait_for_exit(process, exit_tx, stop.clone()));
        Watched {
            stderr,
            stderr_closed,
            exit,
            stop,
            _watcher: AbortOnDropHandle::new(watcher),
        }
    }

    fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().expect("stderr lock");
        kept.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How the process ended and what it wrote to stderr, once both are in (within
    /// `EXIT_WAIT`; `None`: it has not exited).
    async fn ending(&self) -> (Option<Ending>, String) {
        let mut exit = self.exit.clone();
        let both = async {
            let _ = exit.wait_for(Option::is_some).await;
            self.stderr_closed.cancelled().await;
        };
        let _ = tokio::time::timeout(EXIT_WAIT, both).await;
        let ending = *exit.borrow();
        (ending, self.stderr_tail())
    }

    async fn stop(&self) {
        self.stop.cancel();
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(STOP_WAIT, exit.wait_for(Option::is_some)).await;
    }
}

/// Waits for the process to exit (killing it when `stop` is cancelled) and tells how it ended.
async fn wait_for_exit(
    mut process: Spawned,
    exit: watch::Sender<Option<Ending>>,
    stop: CancellationToken,
) {
    let exited = tokio::select! {
        status = process.exit() => Some(status),
        _ = stop.cancelled() => None,
    };
    let status = match exited {
        Some(status) => status,
        None => {
            process.kill();
            process.exit().await
        }
    };
    if let Ok(status) = status {
        let _ = exit.send(Some(Ending::of(status)));
    }
}

/// Logs the agent's stderr and keeps its last lines; `closed` is cancelled at its end.
async fn keep_stderr(
    stderr: tokio::process::ChildStderr,
    kept: Arc<Mutex<VecDeque<String>>>,
    pid: Option<u32>,
    closed: CancellationToken,
) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(pid, "agent: {line}");
        let mut kept = kept.lock().expect("stderr lock");
        if kept.len() == STDERR_LINES {
            kept.pop_front();
        }
        kept.push_back(line.chars().take(500).collect());
    }
    closed.cancel();
}
