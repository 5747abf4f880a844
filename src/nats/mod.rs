//! The worker's NATS endpoints: decode → domain → encode. Served with the async-nats service
//! API as service `clawdforge`, every endpoint in queue group `forge`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::service::{Request, ServiceExt};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod stream;

use std::time::Duration;

use crate::domain::{Caller, Forge, Route, Step, VERSION};
use crate::error::{Error, Result};
use crate::wire::{self, decode, subject};

/// Every subject the worker serves (and its own, `wire::worker_subject`).
pub const SUBJECTS: [&str; 13] = [
    subject::SESSION_CREATE,
    subject::SESSION_TURN,
    subject::SESSION_CANCEL,
    subject::SESSION_PERMISSION,
    subject::SESSION_EVENTS,
    subject::SESSION_CLOSE,
    subject::SESSION_GET,
    subject::SESSION_LIST,
    subject::RUN,
    subject::TOKEN_CREATE,
    subject::TOKEN_LIST,
    subject::TOKEN_REVOKE,
    subject::HEALTH,
];

/// A running service: its endpoints feed `tracker` one task per request.
pub struct Worker {
    service: async_nats::service::Service,
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// The worker's own subjects (requests other workers pass on to it), served until the
    /// worker is done with its turns, after its intake has stopped.
    own: Vec<tokio::task::JoinHandle<()>>,
    pub tracker: TaskTracker,
}

/// A worker that takes no more requests: its requests in flight go on in `tracker`, and its
/// own subjects stay served (a cancel or permission answer for a turn running here still
/// reaches it) until `close_own`.
pub struct Draining {
    pub tracker: TaskTracker,
    own: Vec<tokio::task::JoinHandle<()>>,
}

impl Draining {
    pub fn close_own(self) {
        for l in self.own {
            l.abort();
        }
    }
}

/// Registers the service and starts serving every subject this worker implements.
pub async fn start(
    client: async_nats::Client,
    forge: Arc<Forge>,
    subjects: &[&str],
    stream_heartbeat: Duration,
) -> std::result::Result<Worker, async_nats::Error> {
    let metadata = HashMap::from([("worker_id".to_string(), forge.worker_id().to_string())]);
    let service = client
        .service_builder()
        .description("clawdforge: coding agents over NATS")
        .queue_group(wire::QUEUE_GROUP)
        .metadata(metadata)
        .start(wire::SERVICE_NAME, VERSION)
        .await?;
    let tracker = TaskTracker::new();
    let way_back = move |client: &async_nats::Client| WayBack {
        client: client.clone(),
        max_payload: client.server_info().max_payload,
        stream_heartbeat,
    };
    let mut loops = Vec::new();
    for subject in subjects.iter().copied() {
        let mut endpoint = service.endpoint(subject).await?;
        let (forge, tracker, client) = (forge.clone(), tracker.clone(), client.clone());
        loops.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                tracker.spawn(handle(forge.clone(), request, way_back(&client)));
            }
        }));
    }
    let mut own = Vec::new();
    for verb in wire::PASSED_ON {
        let mut messages = client
            .subscribe(wire::worker_subject(forge.worker_id(), verb))
            .await?;
        let (forge, tracker, client) = (forge.clone(), tracker.clone(), client.clone());
        own.push(tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let served = handle_passed_on(forge.clone(), message, verb, way_back(&client));
                tracker.spawn(served);
            }
        }));
    }
    // Once the server has answered a ping, it has every subscription above: a worker that says
    // it is ready gets requests. Without NATS yet, the subscriptions go out once it connects.
    if client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    }
    Ok(Worker {
        service,
        loops,
        own,
        tracker,
    })
}

impl Worker {
    /// Stops taking requests from the queue group; requests already taken go on.
    pub async fn stop_intake(self) -> Draining {
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "stopping the NATS service");
        }
        for l in self.loops {
            l.abort();
        }
        self.tracker.close();
        Draining {
            tracker: self.tracker,
            own: self.own,
        }
    }
}

/// Room left in a message for the reply's headers.
const HEADER_ROOM: usize = 4096;

/// What a request's handler needs to answer it, one message or a stream.
struct WayBack {
    client: async_nats::Client,
    max_payload: usize,
    stream_heartbeat: Duration,
}

/// A reply the server would refuse must not vanish: the caller hears why instead.
fn fit(reply: Bytes, max_payload: usize) -> Result<Bytes> {
    if max_payload > 0 && reply.len() + HEADER_ROOM > max_payload {
        return Err(Error::payload_too_large(format!(
            "the reply is {} bytes, more than the NATS server's max_payload of {max_payload}",
            reply.len()
        )));
    }
    Ok(reply)
}

/// Whether the reply is a stream: asked for on a subject that streams, or always
/// (`forge.session.events`).
fn wants_stream(subject: &str, headers: Option<&HeaderMap>) -> bool {
    let asked = headers
        .and_then(|h| h.get(wire::STREAM_HEADER))
        .is_some_and(|v| v.as_str().trim() == "1");
    let streams = [subject::SESSION_TURN, subject::RUN];
    (asked && streams.contains(&subject)) || subject == subject::SESSION_EVENTS
}

async fn handle(forge: Arc<Forge>, request: Request, way_back: WayBack) {
    let Some(reply) = request.message.reply.clone() else {
        tracing::debug!(subject = %request.message.subject, "message without a reply subject ignored");
        return;
    };
    let replier = Replier {
        message: &request.message,
        to: To::Service(&request),
        max_payload: way_back.max_payload,
    };
    let subject = request.message.subject.to_string();
    serve(&forge, &subject, false, reply, replier, way_back).await;
}

/// A request another worker passed on to this one: acknowledged at once (the other worker
/// then knows it is served here), then served as `subject`, its replies to the caller's reply
/// subject it carries in `Forge-Reply-To`.
async fn handle_passed_on(
    forge: Arc<Forge>,
    message: async_nats::Message,
    subject: &'static str,
    way_back: WayBack,
) {
    let carried = message
        .headers
        .as_ref()
        .and_then(|h| h.get(wire::REPLY_TO_HEADER))
        .map(|v| async_nats::Subject::from(v.as_str()));
    let (Some(ack), Some(reply)) = (message.reply.clone(), carried) else {
        tracing::debug!(
            subject,
            "a request passed on without its reply subjects ignored"
        );
        return;
    };
    if let Err(e) = way_back.client.publish(ack, Bytes::new()).await {
        tracing::warn!(error = %e, "acknowledging a request passed on");
    }
    let replier = Replier {
        message: &message,
        to: To::Caller(way_back.client.clone(), reply.clone()),
        max_payload: way_back.max_payload,
    };
    serve(&forge, subject, true, reply, replier, way_back).await;
}

/// Serves one request as `subject`: passed on to the worker that serves it, streamed, or
/// answered once.
async fn serve(
    forge: &Forge,
    subject: &str,
    passed_on: bool,
    reply: async_nats::Subject,
    replier: Replier<'_>,
    way_back: WayBack,
) {
    let message = replier.message;
    let headers = message.headers.as_ref();
    let auth = headers
        .and_then(|h| {
            h.get(wire::AUTHORIZATION)
                .or_else(|| h.get("authorization"))
        })
        .map(|v| v.as_str().to_string());
    let token = wire::bearer(auth.as_deref());
    let body = &message.payload;
    // Every log line of the request carries its subject, and its app once authenticated.
    let span = tracing::info_span!("request", subject, app = tracing::field::Empty);
    if !passed_on && wire::PASSED_ON.contains(&subject) {
        let passing = pass_on(forge, message, subject, token, &way_back.client);
        if passing.instrument(span.clone()).await {
            return;
        }
    }
    if wants_stream(subject, headers) {
        let streamer = stream::Streamer {
            client: way_back.client,
            reply,
            heartbeat: way_back.stream_heartbeat,
            max_payload: way_back.max_payload,
        };
        let work = |events| streamed(forge, subject, token, body, events);
        let final_kind = if subject == subject::RUN {
            "run"
        } else {
            "turn"
        };
        let served = AssertUnwindSafe(streamer.serve(final_kind, work)).catch_unwind();
        if served.instrument(span).await.is_err() {
            tracing::error!(subject, "the handler panicked");
        }
        return;
    }
    if subject == subject::SESSION_TURN {
        let answered = AssertUnwindSafe(answer_turn(forge, &replier, token));
        if answered.catch_unwind().instrument(span).await.is_err() {
            tracing::error!(subject, "the handler panicked");
        }
        return;
    }
    let request_ref = RequestRef {
        subject,
        token,
        body,
    };
    let result = AssertUnwindSafe(dispatch(forge, request_ref))
        .catch_unwind()
        .instrument(span)
        .await
        .unwrap_or_else(|_| Err(Error::internal(format!("handler for {subject} panicked"))));
    replier.send(result).await;
}

/// Where a request's one reply goes: back through the service, or, for a request another
/// worker passed on, to the caller's reply subject it carried.
struct Replier<'a> {
    message: &'a async_nats::Message,
    to: To<'a>,
    max_payload: usize,
}

enum To<'a> {
    Service(&'a Request),
    Caller(async_nats::Client, async_nats::Subject),
}

impl Replier<'_> {
    /// Sends the one reply of the request.
    async fn send(&self, result: Result<Bytes>) {
        let subject = self.message.subject.as_str();
        let (headers, body) = match result.and_then(|reply| fit(reply, self.max_payload)) {
            Ok(reply) => (None, reply),
            Err(err) => {
                if err.kind == crate::error::ErrorKind::PayloadTooLarge {
                    tracing::warn!(subject, error = %err, "reply too large");
                }
                let (headers, body) = error_reply(&err);
                (Some(headers), body)
            }
        };
        let sent = match (&self.to, headers) {
            (To::Caller(client, to), headers) => {
                let headers = headers.unwrap_or_default();
                let sent = client.publish_with_headers(to.clone(), headers, body);
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
}

/// `forge.session.turn` (not streamed): authenticated, then decoded once. A turn asked with
/// `"wait": false` is answered as soon as it is numbered, and goes on here (the worker's
/// shutdown waits for it like for any request); a turn refused before it is numbered answers
/// its error.
async fn answer_turn(forge: &Forge, replier: &Replier<'_>, token: Option<&str>) {
    let decoded = async {
        let caller = authenticate(forge, token).await?;
        let req: wire::TurnRequest = decode(&replier.message.payload)?;
        Ok::<_, Error>((caller, req))
    };
    let (caller, req) = match decoded.await {
        Ok(decoded) => decoded,
        Err(err) => return replier.send(Err(err)).await,
    };
    if req.wait != Some(false) {
        let reply = encode(forge.turn(&caller, req).await);
        return replier.send(reply).await;
    }
    let (numbered, mut accepted) = oneshot::channel();
    let turn = forge.live_turn(&caller, req, None, Some(numbered));
    tokio::pin!(turn);
    tokio::select! {
        biased;
        Ok(taken) = &mut accepted => {
            replier.send(encode(Ok(taken))).await;
            let _ = turn.await;
        }
        ended = &mut turn => {
            let reply = match accepted.try_recv() {
                Ok(taken) => encode(Ok(taken)),
                Err(_) => ended.map(|_| Bytes::new()),
            };
            replier.send(reply).await;
        }
    }
}

/// What the handlers read of a request.
#[derive(Clone, Copy)]
struct RequestRef<'a> {
    subject: &'a str,
    token: Option<&'a str>,
    body: &'a [u8],
}

/// How long a worker waits for another to acknowledge a request passed on before it takes
/// the request (and a turn's session) itself.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A turn, close, cancel or permission answer that another worker serves (see `Forge::route`)
/// is passed on to that worker's own subject with the caller's headers and its reply subject
/// (in `Forge-Reply-To`), as a request the worker acknowledges at once; it then answers the
/// caller directly, streams included. `true` once passed on. A worker that does not
/// acknowledge is gone: a turn's session is taken over, and the request served here.
async fn pass_on(
    forge: &Forge,
    message: &async_nats::Message,
    subject: &str,
    token: Option<&str>,
    client: &async_nats::Client,
) -> bool {
    #[derive(serde::Deserialize)]
    struct About {
        session_id: String,
    }
    let (Ok(caller), Ok(about)) = (
        forge.authenticate(token).await,
        serde_json::from_slice::<About>(&message.payload),
    ) else {
        return false;
    };
    let step = match subject {
        subject::SESSION_TURN => Step::Turn,
        subject::SESSION_CLOSE => Step::Close,
        subject::SESSION_CANCEL => Step::Cancel,
        _ => Step::Permission,
    };
    // Twice at most: a takeover lost to a third worker routes once more, to that worker.
    for _ in 0..2 {
        let Route::On {
            worker_id,
            generation,
        } = forge.route(&caller, step, &about.session_id).await
        else {
            return false;
        };
        match hand_over(message, subject, &worker_id, client).await {
            Handed::Taken => {
                tracing::debug!(worker = %worker_id, session = %about.session_id, "{subject} passed on");
                return true;
            }
            Handed::Failed => return false,
            Handed::Gone => {}
        }
        let Some(generation) = generation else {
            tracing::info!(worker = %worker_id, "the worker holding the turn does not answer");
            return false;
        };
        tracing::info!(worker = %worker_id, "the session's owner does not answer");
        if forge
            .take_over(&about.session_id, &worker_id, generation)
            .await
        {
            return false;
        }
    }
    false
}

/// How passing a request on to another worker went.
enum Handed {
    /// The worker acknowledged it: it answers the caller.
    Taken,
    /// The worker is not there (no subscriber, or no acknowledgement in time).
    Gone,
    /// It could not be sent; it is served here.
    Failed,
}

async fn hand_over(
    message: &async_nats::Message,
    subject: &str,
    worker_id: &str,
    client: &async_nats::Client,
) -> Handed {
    use async_nats::RequestErrorKind;
    let reply = message.reply.clone().expect("checked by the caller");
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(wire::REPLY_TO_HEADER, reply.as_str());
    let target = wire::worker_subject(worker_id, subject);
    let sent = client.request_with_headers(target, headers, message.payload.clone());
    match tokio::time::timeout(ACK_TIMEOUT, sent).await {
        Ok(Ok(_)) => Handed::Taken,
        Err(_) => Handed::Gone,
        Ok(Err(e))
            if matches!(
                e.kind(),
                RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
            ) =>
        {
            Handed::Gone
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, worker = %worker_id, "passing a request on");
            Handed::Failed
        }
    }
}

/// A streamed request, authenticated and decoded like any other, its events into `events` as
/// they happen: a live turn, or a turn replayed and followed.
async fn streamed(
    forge: &Forge,
    subject: &str,
    token: Option<&str>,
    body: &[u8],
    events: mpsc::Sender<wire::Event>,
) -> Result<Bytes> {
    let caller = authenticate(forge, token).await?;
    match subject {
        subject::SESSION_EVENTS => encode(forge.follow_turn(&caller, decode(body)?, events).await),
        subject::RUN => encode(forge.live_run(&caller, decode(body)?, Some(events)).await),
        _ => encode(
            forge
                .live_turn(&caller, decode(body)?, Some(events), None)
                .await,
        ),
    }
}

async fn authenticate(forge: &Forge, token: Option<&str>) -> Result<Caller> {
    let caller = forge.authenticate(token).await?;
    tracing::Span::current().record("app", caller.app.as_str());
    Ok(caller)
}

/// The headers and JSON body of an error reply.
pub fn error_reply(err: &Error) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        wire::ERROR_CODE_HEADER,
        err.kind.status().to_string().as_str(),
    );
    // Header values cannot hold line breaks.
    let message: String = err
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(wire::ERROR_HEADER, message.as_str());
    let body = serde_json::to_vec(&wire::ErrorBody::from(err)).expect("error body serializes");
    (headers, body.into())
}

fn encode<T: Serialize>(result: Result<T>) -> Result<Bytes> {
    result.map(|v| serde_json::to_vec(&v).expect("reply serializes").into())
}

/// Authenticates (every subject but health), then decodes the body and calls the domain: an
/// unauthenticated caller learns nothing, not even whether its body was well-formed.
async fn dispatch(forge: &Forge, r: RequestRef<'_>) -> Result<Bytes> {
    let RequestRef {
        subject,
        token,
        body,
    } = r;
    if subject == subject::HEALTH {
        let wire::Empty {} = decode(body)?;
        return encode(Ok(forge.health().await));
    }
    let caller = &authenticate(forge, token).await?;
    if subject.starts_with("forge.admin.") && !caller.admin {
        return Err(Error::forbidden("this needs an admin token"));
    }
    match subject {
        subject::SESSION_CREATE => encode(forge.create_session(caller, decode(body)?).await),
        subject::SESSION_CLOSE => encode(forge.close_session(caller, decode(body)?).await),
        subject::SESSION_CANCEL => encode(forge.cancel_turn(caller, decode(body)?).await),
        subject::SESSION_PERMISSION => encode(forge.answer_permission(caller, decode(body)?).await),
        subject::SESSION_GET => encode(forge.get_session(caller, decode(body)?).await),
        subject::SESSION_LIST => encode(forge.list_sessions(caller, decode(body)?).await),
        subject::RUN => encode(forge.run(caller, decode(body)?).await),
        subject::TOKEN_CREATE => encode(forge.create_token(caller, decode(body)?).await),
        subject::TOKEN_LIST => encode(forge.list_tokens(caller, decode(body)?).await),
        subject::TOKEN_REVOKE => encode(forge.revoke_token(caller, decode(body)?).await),
        other => Err(Error::not_found(format!("no such subject {other}"))),
    }
}
