//! A typed NATS client of the wire contract: what the sidecar, the tests, the benchmarks and
//! Rust apps use to talk to the workers.

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::telemetry::trace::TraceContext;
use crate::wire::{self, subject};

/// Time allowed for requests that run no agent.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a turn's or run's own timeout, for the worker to report it.
pub const AGENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);
/// Creating a session starts an agent session through acpx.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The worker answered with an error of the contract.
    #[error("{0}")]
    Api(Error),
    #[error("no worker is available")]
    NoResponders,
    #[error("the request timed out")]
    TimedOut,
    #[error("nats: {0}")]
    Transport(String),
    #[error("unexpected reply: {0}")]
    Decode(String),
}

impl ClientError {
    /// The contract kind of this failure, as the sidecar reports it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Api(e) => e.kind,
            ClientError::NoResponders => ErrorKind::AtCapacity,
            ClientError::TimedOut => ErrorKind::Timeout,
            ClientError::Transport(_) => ErrorKind::AtCapacity,
            ClientError::Decode(_) => ErrorKind::Internal,
        }
    }
}

/// A worker's answer to `$SRV.PING`: its service instance id and the `worker_id` its health
/// reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPing {
    pub id: String,
    pub worker_id: Option<String>,
}

/// A reply as it came: the error status from the headers (if any) and the body.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: Option<u16>,
    pub body: Bytes,
}

impl RawReply {
    /// The typed reply, or the contract error it carries.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        if self.status.is_some() {
            let body: wire::ErrorBody = serde_json::from_slice(&self.body).map_err(|e| {
                ClientError::Decode(format!("error reply without a valid body: {e}"))
            })?;
            return Err(ClientError::Api(body.into()));
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// One message of a streamed reply (contract v2), in the order they come.
#[derive(Debug, Clone)]
pub enum Frame {
    Event(wire::Event),
    Heartbeat,
    /// The final message: the Turn (or Run), or the error it ended with.
    Reply(RawReply),
}

/// A streamed reply being read: frames until the sentinel.
pub struct ReplyStream {
    messages: async_nats::Subscriber,
    /// Past this without a message (three missed heartbeats), the stream is given up.
    stall: Duration,
    ended: bool,
}

impl ReplyStream {
    /// The next frame; `None` after the end of the stream. A stream that stalls, or that no
    /// worker takes, ends with that error.
    pub async fn next(&mut self) -> Option<Result<Frame, ClientError>> {
        if self.ended {
            return None;
        }
        let message = match tokio::time::timeout(self.stall, self.messages.next()).await {
            Err(_) => return self.end(Err(ClientError::TimedOut)),
            Ok(None) => {
                return self.end(Err(ClientError::Transport("the stream was closed".into())))
            }
            Ok(Some(m)) => m,
        };
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return self.end(Err(ClientError::NoResponders));
        }
        let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name));
        let frame = match header(wire::EVENT_HEADER).map(|v| v.as_str()) {
            None if message.payload.is_empty() => {
                self.ended = true;
                return None;
            }
            Some("heartbeat") => Frame::Heartbeat,
            Some("turn" | "run" | "error") | None => Frame::Reply(RawReply {
                status: header(wire::ERROR_CODE_HEADER)
                    .map(|v| v.as_str().parse::<u16>().unwrap_or(500)),
                body: message.payload,
            }),
            Some(_) => match serde_json::from_slice(&message.payload) {
                Ok(event) => Frame::Event(event),
                Err(e) => return Some(Err(ClientError::Decode(format!("an event: {e}")))),
            },
        };
        Some(Ok(frame))
    }

    fn end(&mut self, result: Result<Frame, ClientError>) -> Option<Result<Frame, ClientError>> {
        self.ended = true;
        Some(result)
    }

    /// Reads the stream to its end: each event to `on_event` as it comes, then the typed reply.
    pub async fn finish<T: DeserializeOwned>(
        mut self,
        mut on_event: impl FnMut(&wire::Event),
    ) -> Result<T, ClientError> {
        let mut reply = None;
        while let Some(frame) = self.next().await {
            match frame? {
                Frame::Event(e) => on_event(&e),
                Frame::Heartbeat => {}
                Frame::Reply(r) => reply = Some(r),
            }
        }
        match reply {
            Some(r) => r.parse(),
            None => Err(ClientError::Decode(
                "the stream ended without its final message".into(),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ForgeClient {
    nats: async_nats::Client,
    token: Option<String>,
    /// The trace the requests belong to, if the caller gave one.
    trace: Option<TraceContext>,
    /// The timeout a turn or run gets when its request names none (the workers' default).
    pub default_agent_timeout: Duration,
}

pub fn is_connected(nats: &async_nats::Client) -> bool {
    nats.connection_state() == async_nats::connection::State::Connected
}

/// Waits up to `max` for `nats` to be connected (at start, or after a loss); true when it is.
pub async fn wait_connected(nats: &async_nats::Client, max: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + max;
    while !is_connected(nats) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// What a request carries for its caller besides its body: the `Authorization` header value as
/// the caller gave it, and the trace it belongs to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub authorization: Option<&'a str>,
    pub trace: Option<&'a TraceContext>,
}

impl<'a> Caller<'a> {
    pub fn new(authorization: Option<&'a str>, trace: Option<&'a TraceContext>) -> Self {
        Caller {
            authorization,
            trace,
        }
    }

    fn write(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.authorization {
            headers.insert(wire::AUTHORIZATION, value);
        }
        if let Some(trace) = self.trace {
            trace.write_nats(headers);
        }
    }
}

impl ForgeClient {
    pub fn new(nats: async_nats::Client, token: Option<String>) -> ForgeClient {
        ForgeClient {
            nats,
            token,
            trace: None,
            default_agent_timeout: Duration::from_secs(120),
        }
    }

    /// The same connection, its requests in the trace of `trace` (a W3C `traceparent`, and
    /// `tracestate`): the service's spans of each request are its children.
    pub fn with_trace(&self, trace: TraceContext) -> ForgeClient {
        ForgeClient {
            trace: Some(trace),
            ..self.clone()
        }
    }

    /// The same connection, another token.
    pub fn with_token(&self, token: Option<String>) -> ForgeClient {
        ForgeClient {
            token,
            ..self.clone()
        }
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn connected(&self) -> bool {
        is_connected(&self.nats)
    }

    /// Waits up to `max` for the connection to NATS (being made at start, or after a loss);
    /// true when connected.
    pub async fn wait_connected(&self, max: Duration) -> bool {
        wait_connected(&self.nats, max).await
    }

    /// Sends `body` to `subject` with a bearer token, and returns the reply as it came.
    pub async fn raw(
        &self,
        subject: &str,
        token: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<RawReply, ClientError> {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let trace = TraceContext::outgoing(self.trace.as_ref());
        let caller = Caller::new(authorization.as_deref(), trace.as_ref());
        self.forward(subject, caller, body, timeout).await
    }

    /// Sends `body` to `subject` with the caller's headers (what the sidecar does), and
    /// returns the reply as it came.
    pub async fn forward(
        &self,
        subject: &str,
        caller: Caller<'_>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<RawReply, ClientError> {
        let mut headers = HeaderMap::new();
        caller.write(&mut headers);
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(timeout));
        let message = self
            .nats
            .send_request(subject.to_string(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoResponders,
                RequestErrorKind::TimedOut => ClientError::TimedOut,
                RequestErrorKind::MaxPayloadExceeded => ClientError::Api(Error::payload_too_large(
                    "the request is larger than the NATS server's max_payload",
                )),
                _ => ClientError::Transport(e.to_string()),
            })?;
        let status = message
            .headers
            .as_ref()
            .and_then(|h| h.get(wire::ERROR_CODE_HEADER))
            .map(|v| v.as_str().parse::<u16>().unwrap_or(500));
        Ok(RawReply {
            status,
            body: message.payload,
        })
    }

    /// A typed request with this client's token.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.raw(subject, self.token.as_deref(), body.into(), timeout)
            .await?
            .parse()
    }

    /// How long to wait for a turn or run that asked for `timeout_secs`.
    pub fn agent_timeout(&self, timeout_secs: Option<u64>) -> Duration {
        timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.default_agent_timeout)
            .saturating_add(AGENT_TIMEOUT_MARGIN)
    }

    pub async fn create_session(
        &self,
        req: &wire::CreateSession,
    ) -> Result<wire::Session, ClientError> {
        self.call(subject::SESSION_CREATE, req, CREATE_TIMEOUT)
            .await
    }

    pub async fn turn(&self, req: &wire::TurnRequest) -> Result<wire::Turn, ClientError> {
        let timeout = self.agent_timeout(req.timeout_secs);
        self.call(subject::SESSION_TURN, req, timeout).await
    }

    /// A turn asked with `"wait": false`: the answer comes as soon as the turn is numbered;
    /// the turn goes on (follow it with `forge.session.events`).
    pub async fn turn_nowait(
        &self,
        req: &wire::TurnRequest,
    ) -> Result<wire::TurnAccepted, ClientError> {
        let req = wire::TurnRequest {
            wait: Some(false),
            ..req.clone()
        };
        self.call(subject::SESSION_TURN, &req, CONTROL_TIMEOUT)
            .await
    }

    /// A turn whose events come as they happen (`Forge-Stream: 1`), each to `on_event`; then
    /// its reply. `stall` is how long the stream may stay silent: three heartbeats.
    pub async fn turn_streaming(
        &self,
        req: &wire::TurnRequest,
        stall: Duration,
        on_event: impl FnMut(&wire::Event),
    ) -> Result<wire::Turn, ClientError> {
        self.call_streaming(subject::SESSION_TURN, req, stall, on_event)
            .await
    }

    /// A run whose events come as claude prints them (`Forge-Stream: 1`), each to
    /// `on_event`; then its reply.
    pub async fn run_streaming(
        &self,
        req: &wire::RunRequest,
        stall: Duration,
        on_event: impl FnMut(&wire::Event),
    ) -> Result<wire::Run, ClientError> {
        self.call_streaming(subject::RUN, req, stall, on_event)
            .await
    }

    /// `forge.session.events`: the turn's recorded events, then its live ones while it runs,
    /// each to `on_event`; then how it ended.
    pub async fn follow_turn(
        &self,
        req: &wire::EventsRequest,
        stall: Duration,
        on_event: impl FnMut(&wire::Event),
    ) -> Result<wire::Turn, ClientError> {
        self.call_streaming(subject::SESSION_EVENTS, req, stall, on_event)
            .await
    }

    /// A typed request with this client's token that asks for a streamed reply: each event to
    /// `on_event`, then the typed reply.
    pub async fn call_streaming<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        req: &Req,
        stall: Duration,
        on_event: impl FnMut(&wire::Event),
    ) -> Result<Resp, ClientError> {
        self.open_stream(subject, req, stall)
            .await?
            .finish(on_event)
            .await
    }

    /// The stream of a typed request with this client's token, to read frame by frame.
    pub async fn open_stream<Req: Serialize>(
        &self,
        subject: &str,
        req: &Req,
        stall: Duration,
    ) -> Result<ReplyStream, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        let authorization = self.token.as_deref().map(|t| format!("Bearer {t}"));
        let trace = TraceContext::outgoing(self.trace.as_ref());
        let caller = Caller::new(authorization.as_deref(), trace.as_ref());
        self.stream(subject, caller, body.into(), stall).await
    }

    /// Sends a request that asks for a streamed reply, with the caller's headers, and returns
    /// the stream.
    pub async fn stream(
        &self,
        subject: &str,
        caller: Caller<'_>,
        body: Bytes,
        stall: Duration,
    ) -> Result<ReplyStream, ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let inbox = self.nats.new_inbox();
        let messages = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| transport(&e))?;
        let mut headers = HeaderMap::new();
        headers.insert(wire::STREAM_HEADER, "1");
        caller.write(&mut headers);
        self.nats
            .publish_with_reply_and_headers(subject.to_string(), inbox, headers, body)
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    ClientError::Api(Error::payload_too_large(
                        "the request is larger than the NATS server's max_payload",
                    ))
                }
                _ => transport(&e),
            })?;
        Ok(ReplyStream {
            messages,
            stall,
            ended: false,
        })
    }

    /// Stops the session's running turn, wherever it runs (`forge.session.cancel`).
    pub async fn cancel_turn(&self, session_id: &str) -> Result<wire::Cancelled, ClientError> {
        let req = wire::SessionRef {
            session_id: session_id.into(),
        };
        self.call(subject::SESSION_CANCEL, &req, CONTROL_TIMEOUT)
            .await
    }

    /// Answers permission request `request_id` of the session's running turn with one of its
    /// options (`forge.session.permission`).
    pub async fn answer_permission(
        &self,
        session_id: &str,
        request_id: &str,
        option_id: &str,
    ) -> Result<wire::PermissionAnswered, ClientError> {
        let req = wire::PermissionAnswer {
            session_id: session_id.into(),
            request_id: request_id.into(),
            option_id: option_id.into(),
        };
        self.call(subject::SESSION_PERMISSION, &req, CONTROL_TIMEOUT)
            .await
    }

    pub async fn close_session(
        &self,
        session_id: &str,
    ) -> Result<wire::SessionClosed, ClientError> {
        let req = wire::SessionRef {
            session_id: session_id.into(),
        };
        self.call(subject::SESSION_CLOSE, &req, CREATE_TIMEOUT)
            .await
    }

    pub async fn get_session(&self, session_id: &str) -> Result<wire::Session, ClientError> {
        let req = wire::SessionRef {
            session_id: session_id.into(),
        };
        self.call(subject::SESSION_GET, &req, CONTROL_TIMEOUT).await
    }

    pub async fn list_sessions(&self) -> Result<wire::SessionList, ClientError> {
        self.call(subject::SESSION_LIST, &wire::Empty {}, CONTROL_TIMEOUT)
            .await
    }

    /// `forge.admin.session.list`: every app's sessions that match, a page of them.
    pub async fn admin_sessions(
        &self,
        asked: &wire::SessionsAsked,
    ) -> Result<wire::SessionPage, ClientError> {
        self.call(subject::ADMIN_SESSION_LIST, asked, CONTROL_TIMEOUT)
            .await
    }

    pub async fn run(&self, req: &wire::RunRequest) -> Result<wire::Run, ClientError> {
        let timeout = self.agent_timeout(req.timeout_secs);
        self.call(subject::RUN, req, timeout).await
    }

    pub async fn create_token(
        &self,
        app: &str,
        admin: bool,
    ) -> Result<wire::TokenCreated, ClientError> {
        let req = wire::TokenCreate {
            app: app.into(),
            admin,
        };
        self.call(subject::TOKEN_CREATE, &req, CONTROL_TIMEOUT)
            .await
    }

    pub async fn list_tokens(&self) -> Result<wire::TokenList, ClientError> {
        self.call(subject::TOKEN_LIST, &wire::Empty {}, CONTROL_TIMEOUT)
            .await
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<wire::TokenRevoked, ClientError> {
        let req = wire::TokenRevoke {
            token_id: token_id.into(),
        };
        self.call(subject::TOKEN_REVOKE, &req, CONTROL_TIMEOUT)
            .await
    }

    /// `forge.admin.app.set`: changes the fields `change` holds.
    pub async fn set_app_policy(
        &self,
        change: &wire::PolicySet,
    ) -> Result<wire::Policy, ClientError> {
        self.call(subject::APP_SET, change, CONTROL_TIMEOUT).await
    }

    pub async fn app_policy(&self, app: &str) -> Result<wire::Policy, ClientError> {
        let req = wire::AppRef { app: app.into() };
        self.call(subject::APP_GET, &req, CONTROL_TIMEOUT).await
    }

    pub async fn app_policies(&self) -> Result<wire::PolicyList, ClientError> {
        self.call(subject::APP_LIST, &wire::Empty {}, CONTROL_TIMEOUT)
            .await
    }

    /// `forge.usage`: the caller's app.
    pub async fn usage(&self) -> Result<wire::Usage, ClientError> {
        self.call(subject::USAGE, &wire::Empty {}, CONTROL_TIMEOUT)
            .await
    }

    pub async fn admin_usage(
        &self,
        asked: &wire::UsageAsked,
    ) -> Result<wire::UsageDays, ClientError> {
        self.call(subject::ADMIN_USAGE, asked, CONTROL_TIMEOUT)
            .await
    }

    pub async fn health(&self) -> Result<wire::Health, ClientError> {
        self.call(subject::HEALTH, &wire::Empty {}, CONTROL_TIMEOUT)
            .await
    }

    /// The workers that answer `$SRV.PING.clawdforge` within `wait`.
    pub async fn ping_workers(&self, wait: Duration) -> Result<Vec<WorkerPing>, ClientError> {
        let inbox = self.nats.new_inbox();
        let mut replies = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.nats
            .publish_with_reply(
                format!("$SRV.PING.{}", wire::SERVICE_NAME),
                inbox,
                Bytes::new(),
            )
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut ids = Vec::new();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = replies.next() => match msg {
                    Some(msg) => {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.payload) {
                            if let Some(id) = v["id"].as_str() {
                                ids.push(WorkerPing {
                                    id: id.to_string(),
                                    worker_id: v["metadata"]["worker_id"].as_str().map(str::to_string),
                                });
                            }
                        }
                    }
                    None => break,
                }
            }
        }
        Ok(ids)
    }
}
