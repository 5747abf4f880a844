//! The `forge.*` protocol on NATS: a request's JSON body as the pipeline's [`Body`], and its
//! way back as an [`Outlet`]: one reply through the service (or, for a request another worker
//! passed on, to the caller's reply subject it carried), a stream of events, or the request
//! handed on to another worker's own subject.

use std::future::Future;
use std::time::Duration;

use async_nats::service::Request as ServiceRequest;
use async_nats::{Message, Subject};
use bytes::Bytes;

use super::hand::hand_over;
use super::reply::{error_reply, fit};
use super::stream::Streamer;
use crate::domain::ops::Streams;
use crate::domain::request::session_in_json;
use tokio::sync::mpsc;

use crate::domain::{Body, Handed, Op, Outcome, Outlet, Reply, Request};
use crate::error::{ErrorKind, Result};
use crate::telemetry::trace::TraceContext;
use crate::wire;

/// What every request's way back shares.
#[derive(Clone)]
pub(super) struct WayBack {
    pub client: async_nats::Client,
    pub max_payload: usize,
    pub stream_heartbeat: Duration,
}

/// The JSON body of a request.
pub(super) struct JsonBody(pub Bytes);

impl Body for JsonBody {
    fn session_hint(&self) -> Option<crate::values::SessionId> {
        session_in_json(&self.0)
    }

    fn decode(&self, op: Op) -> Result<Request> {
        Request::from_json(op, &self.0)
    }
}

/// Where a request's one reply goes.
enum To {
    /// Back through the service.
    Service(Box<ServiceRequest>),
    /// To the caller's reply subject carried by a request another worker passed on.
    Caller(Subject),
}

/// The way back of one request on NATS.
pub(super) struct NatsOutlet {
    way: WayBack,
    op: Op,
    message: Message,
    /// The caller's reply subject (a stream's messages go there).
    reply: Subject,
    to: To,
    answered: bool,
}

impl NatsOutlet {
    /// A request taken from the queue group; `None` when it has no reply subject.
    pub fn service(way: WayBack, op: Op, request: ServiceRequest) -> Option<NatsOutlet> {
        let reply = request.message.reply.clone()?;
        Some(NatsOutlet {
            way,
            op,
            message: request.message.clone(),
            reply,
            to: To::Service(Box::new(request)),
            answered: false,
        })
    }

    /// A request another worker passed on: it carries the caller's reply subject in
    /// `Forge-Reply-To`; it is acknowledged at once, so the other worker knows it is served.
    pub async fn passed_on(way: WayBack, op: Op, message: Message) -> Option<NatsOutlet> {
        let carried = message.headers.as_ref()?.get(wire::REPLY_TO_HEADER)?;
        let reply = Subject::from(carried.as_str());
        let ack = message.reply.clone()?;
        if let Err(e) = way.client.publish(ack, Bytes::new()).await {
            tracing::warn!(error = %e, "acknowledging a request passed on");
        }
        Some(NatsOutlet {
            way,
            op,
            message,
            reply: reply.clone(),
            to: To::Caller(reply),
            answered: false,
        })
    }

    pub fn message(&self) -> &Message {
        &self.message
    }

    async fn send(&self, result: Result<Reply>) {
        let subject = self.message.subject.as_str();
        let (headers, body) = match result.and_then(|r| fit(encode(&r), self.way.max_payload)) {
            Ok(body) => (None, body),
            Err(err) => {
                if err.kind == ErrorKind::PayloadTooLarge {
                    tracing::warn!(subject, error = %err, "reply too large");
                }
                let (headers, body) = error_reply(&err);
                (Some(headers), body)
            }
        };
        let sent = match (&self.to, headers) {
            (To::Caller(to), headers) => {
                let headers = headers.unwrap_or_default();
                let sent = self
                    .way
                    .client
                    .publish_with_headers(to.clone(), headers, body);
                sent.await.map_err(|e| e.to_string())
            }
            (To::Service(request), None) => {
                request.respond(Ok(body)).await.map_err(|e| e.to_string())
            }
            (To::Service(request), Some(headers)) => {
                let sent = request.respond_with_headers(Ok(body), headers);
                sent.await.map_err(|e| e.to_string())
            }
        };
        if let Err(e) = sent {
            tracing::warn!(subject, error = %e, "could not send the reply");
        }
    }

    fn streamer(&self) -> Streamer {
        Streamer {
            client: self.way.client.clone(),
            reply: self.reply.clone(),
            heartbeat: self.way.stream_heartbeat,
            max_payload: self.way.max_payload,
        }
    }
}

impl Outlet for NatsOutlet {
    fn passed_on(&self) -> bool {
        matches!(self.to, To::Caller(_))
    }

    fn stream_asked(&self) -> bool {
        let headers = self.message.headers.as_ref();
        headers
            .and_then(|h| h.get(wire::STREAM_HEADER))
            .is_some_and(|v| v.as_str().trim() == "1")
    }

    fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_nats(self.message.headers.as_ref())
    }

    fn pass_on(&mut self, op: Op, worker_id: &str) -> impl Future<Output = Handed> + Send {
        let target = wire::worker_subject(worker_id, op.subject());
        hand_over(
            &self.way.client,
            &self.message,
            &self.reply,
            target,
            worker_id,
        )
    }

    fn reply(&mut self, reply: Result<Reply>) -> impl Future<Output = ()> + Send {
        self.answered = true;
        async move {
            if self.streamed() {
                // A streamed request refused before it ran: its stream is the error alone.
                let streamer = self.streamer();
                streamer
                    .finish(final_kind(self.op), reply.map(|r| encode(&r)))
                    .await;
            } else {
                self.send(reply).await;
            }
        }
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
        let streamer = self.streamer();
        let final_kind = final_kind(self.op);
        async move { streamer.serve(final_kind, events, work).await }
    }

    fn answered(&self) -> bool {
        self.answered
    }
}

impl NatsOutlet {
    /// Whether the reply is a stream: asked for on an operation that streams on request, or
    /// always (`forge.session.events`).
    fn streamed(&self) -> bool {
        match self.op.streams() {
            Streams::Never => false,
            Streams::OnRequest => self.stream_asked(),
            Streams::Always => true,
        }
    }
}

/// The final message of a stream: `run` for a run, `turn` otherwise.
fn final_kind(op: Op) -> &'static str {
    if op == Op::Run {
        "run"
    } else {
        "turn"
    }
}

fn encode(reply: &Reply) -> Bytes {
    serde_json::to_vec(reply).expect("reply serializes").into()
}
