//! A prompt's way back (§6, §9 of the protocol), as the pipeline's [`Outlet`]: an `ack`
//! status first, each message of the agent as a `response` chunk, an `ack` again while the
//! turn is quiet, an error as one message with the service error headers, and last a
//! zero-byte message without headers.

use std::future::Future;
use std::time::Duration;

use async_nats::{HeaderMap, Message, Subject};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use std::sync::Arc;

use tokio::task::JoinSet;

use super::query::{self, Asked};
use crate::domain::{Forge, Handed, NamedSession, Op, Outcome, Outlet, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::nats::hand::hand_over;
use crate::telemetry::trace::TraceContext;
use crate::wire;

/// How often a running turn with nothing to say acknowledges again: callers give a stream up
/// after 60 s without a message.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The header that tells the worker a prompt is passed on to which session it names:
/// `<app> <agent> <name>`.
pub const NAMED_HEADER: &str = "Forge-Named-Session";

/// The status of an error kind among the protocol's (§9.2).
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::BadRequest | ErrorKind::PayloadTooLarge => 400,
        ErrorKind::Unauthorized => 401,
        ErrorKind::Forbidden => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict => 409,
        ErrorKind::AtCapacity | ErrorKind::QuotaExceeded => 429,
        ErrorKind::AgentError | ErrorKind::Timeout | ErrorKind::Internal => 500,
    }
}

/// The error message: its status and text in the headers, `{"error", "message"}` its body.
pub fn error_message(err: &Error) -> (HeaderMap, Bytes) {
    let text: String = err
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(
        wire::ERROR_CODE_HEADER,
        status(err.kind).to_string().as_str(),
    );
    headers.insert(wire::ERROR_HEADER, text.as_str());
    let body = json!({"error": err.kind.code(), "message": err.message});
    (headers, body.to_string().into())
}

/// One chunk of the stream, `{"type": …, "data": …}` in that order, as the protocol writes it.
#[derive(serde::Serialize)]
struct Chunk<'a, T: serde::Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

/// The bytes of a chunk of `kind` carrying `data`.
pub fn chunk(kind: &str, data: impl serde::Serialize) -> Bytes {
    let chunk = Chunk { kind, data };
    serde_json::to_vec(&chunk)
        .expect("a chunk serializes")
        .into()
}

/// The way back of one prompt.
pub struct AgentOutlet {
    pub client: async_nats::Client,
    pub forge: Arc<Forge>,
    /// The prompt as it came (its headers and payload go along when it is passed on).
    pub message: Message,
    /// The caller's reply subject.
    pub reply: Subject,
    pub named: NamedSession,
    /// The prompt came from another worker.
    pub passed_on: bool,
    pub answered: bool,
}

impl AgentOutlet {
    async fn publish(&self, body: Bytes) {
        if let Err(e) = self.client.publish(self.reply.clone(), body).await {
            tracing::debug!(error = %e, "a prompt's reply could not be sent");
        }
    }

    /// The `ack` status.
    pub async fn ack(&self) {
        self.publish(chunk("status", "ack")).await;
    }

    /// The end of the stream: a zero-byte message without headers.
    async fn end(&self) {
        self.publish(Bytes::new()).await;
    }

    async fn error(&self, err: &Error) {
        let (headers, body) = error_message(err);
        let sent = self
            .client
            .publish_with_headers(self.reply.clone(), headers, body);
        if let Err(e) = sent.await {
            tracing::debug!(error = %e, "a prompt's error could not be sent");
        }
    }

    /// The result last, then the end.
    async fn finish(&self, result: Result<Reply>) {
        if let Err(err) = result {
            self.error(&err).await;
        }
        self.end().await;
    }

    /// Relays the text of the agent's messages while `work` runs, acknowledging again while
    /// there is nothing to send; then its result.
    async fn relay<F>(&self, work: F, mut events: mpsc::Receiver<wire::Event>) -> Result<Reply>
    where
        F: Future<Output = Result<Reply>>,
    {
        tokio::pin!(work);
        let start = tokio::time::Instant::now() + KEEP_ALIVE;
        let mut quiet = tokio::time::interval_at(start, KEEP_ALIVE);
        let (mut open, mut done) = (true, None);
        // The turn's open questions: dropped (no longer asked) when it ends.
        let mut asks = JoinSet::new();
        // Every message of the turn goes out before its end.
        loop {
            tokio::select! {
                biased;
                event = events.recv(), if open => match event {
                    Some(event) => {
                        if self.relay_event(event, &mut asks).await {
                            quiet.reset();
                        }
                    }
                    None => open = false,
                },
                result = &mut work, if done.is_none() => done = Some(result),
                _ = quiet.tick() => self.ack().await,
            }
            if !open {
                if let Some(result) = done.take() {
                    return result;
                }
            }
        }
    }
}

impl AgentOutlet {
    /// Sends what the caller is told of `event`: a message's text as a `response`, a
    /// permission request as a `query` (asked in `asks`). Whether anything was sent.
    async fn relay_event(&self, event: wire::Event, asks: &mut JoinSet<()>) -> bool {
        match event.body {
            wire::EventBody::Message { text } => {
                self.publish(chunk("response", &text)).await;
                true
            }
            wire::EventBody::PermissionRequest {
                request_id,
                title,
                options,
                ..
            } => {
                let asked = Asked {
                    session_id: event.session_id.unwrap_or_default(),
                    request_id,
                    title,
                    options,
                };
                let token = crate::nats::token(&self.message);
                let (client, forge) = (self.client.clone(), self.forge.clone());
                asks.spawn(query::ask(client, forge, token, self.reply.clone(), asked));
                true
            }
            _ => false,
        }
    }
}

impl Outlet for AgentOutlet {
    fn passed_on(&self) -> bool {
        self.passed_on
    }

    fn stream_asked(&self) -> bool {
        true
    }

    fn pass_on(&mut self, _op: Op, worker_id: &str) -> impl Future<Output = Handed> + Send {
        let mut message = self.message.clone();
        let named = &self.named;
        let header = format!("{} {} {}", named.app, named.agent, named.name.as_str());
        message
            .headers
            .get_or_insert_with(HeaderMap::new)
            .insert(NAMED_HEADER, header.as_str());
        let target = own_subject(worker_id);
        let client = self.client.clone();
        let reply = self.reply.clone();
        let worker_id = worker_id.to_string();
        async move { hand_over(&client, &message, &reply, target, &worker_id).await }
    }

    fn reply(&mut self, reply: Result<Reply>) -> impl Future<Output = ()> + Send {
        self.answered = true;
        self.finish(reply)
    }

    fn stream<F>(
        &mut self,
        events: mpsc::Receiver<wire::Event>,
        work: F,
    ) -> impl Future<Output = Outcome> + Send
    where
        F: Future<Output = Result<Reply>> + Send,
    {
        self.answered = true;
        async move {
            let result = self.relay(work, events).await;
            let outcome = crate::domain::outcome_of(&result);
            self.finish(result).await;
            outcome
        }
    }

    fn answered(&self) -> bool {
        self.answered
    }

    fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_nats(self.message.headers.as_ref())
    }
}

/// A worker's own subject for prompts other workers pass on to it.
pub fn own_subject(worker_id: &str) -> String {
    wire::worker_subject(worker_id, "forge.agents.prompt")
}

/// The tokens of the session a prompt passed on names.
pub fn named_in(message: &Message) -> Option<NamedSession> {
    use crate::domain::types::{AppName, SessionName};
    let value = message.headers.as_ref()?.get(NAMED_HEADER)?;
    let mut parts = value.as_str().split(' ');
    let (app, agent, name) = (parts.next()?, parts.next()?, parts.next()?);
    let named = NamedSession {
        app: AppName::parse(app).ok()?,
        agent: agent.to_string(),
        name: SessionName::parse(name).ok()?,
    };
    // Only what this worker would expose itself.
    super::names::exposable_agent(&named.agent).then_some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_written_as_the_protocol_writes_them() {
        assert_eq!(
            &chunk("status", "ack")[..],
            br#"{"type":"status","data":"ack"}"#
        );
        assert_eq!(
            &chunk("response", "a \"b\"")[..],
            br#"{"type":"response","data":"a \"b\""}"#
        );
    }
}
