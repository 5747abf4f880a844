//! The one request pipeline: every request of every transport goes through [`Forge::serve`]:
//! routed (here, or passed on to the worker that serves it) → authenticated → access → decoded
//! → policy (the app's limits) → handled → its outcome recorded, inside one span with its op, app and session.
//! A transport gives the pipeline a [`Body`] (the request as it came, decoded only once the
//! caller is known) and an [`Outlet`] (the way back). A request that points at its session by
//! name (the agent protocol's) is routed once the caller is known and the session found.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::named::NamedSession;
use super::ops::{Access, Op, Served, Streams};
use super::owners::{Route, Step};
use super::request::{Reply, Request, TurnAsked};
use super::{Caller, Forge};
use crate::error::{Error, ErrorKind, Result};
use crate::telemetry::trace::TraceContext;
use crate::values::SessionId;
use crate::wire;

/// How many events of a streamed request may wait for the transport before the turn's reading
/// slows down.
const EVENT_QUEUE: usize = 64;

/// A request's body as a transport received it: decoded into a [`Request`] only once the caller
/// is authenticated (an unauthenticated caller learns nothing, not even whether its body was
/// well-formed).
pub trait Body: Send {
    /// The session the request is about, read leniently before anything else: where it is
    /// served. `None` when the body does not say (the request is then served here).
    fn session_hint(&self) -> Option<SessionId>;
    /// The request, or `bad_request`.
    fn decode(&self, op: Op) -> Result<Request>;
    /// The session the request points at by its app, agent and name instead of by id (the
    /// agent protocol's): found once the caller is known, then passed on to its owner like any
    /// session's request, and decoded with [`Body::decode_in`]. `None` for a body that does not.
    fn named_session(&self) -> Option<&NamedSession> {
        None
    }
    /// The request of a body that points at a named session, that session being `id`.
    fn decode_in(&self, op: Op, id: SessionId) -> Result<Request> {
        let _ = id;
        self.decode(op)
    }
}

/// How passing a request on to another worker went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// The worker acknowledged it: it answers the caller.
    Taken,
    /// The worker is not there (no subscriber, or no acknowledgement in time).
    Gone,
    /// It could not be sent; it is served here.
    Failed,
}

/// The way back of one request, given by its transport.
pub trait Outlet: Send {
    /// The request came from another worker, which routed it here: it is served here.
    fn passed_on(&self) -> bool;
    /// The caller asked for the reply as a stream (read for operations that stream on request).
    fn stream_asked(&self) -> bool;
    /// Hands the request as it came to `worker_id`, which then answers the caller.
    fn pass_on(&mut self, op: Op, worker_id: &str) -> impl Future<Output = Handed> + Send;
    /// Sends the request's one reply (or, once a stream has begun, its final message).
    fn reply(&mut self, reply: Result<Reply>) -> impl Future<Output = ()> + Send;
    /// Runs `work` while sending the events it gives `events`' sender as they come, then its
    /// result as the final message. Returns the result's outcome.
    fn stream<F>(
        &mut self,
        events: mpsc::Receiver<wire::Event>,
        work: F,
    ) -> impl Future<Output = Outcome> + Send
    where
        F: Future<Output = Result<Reply>> + Send;
    /// Whether anything has been sent to the caller yet.
    fn answered(&self) -> bool;
    /// The W3C trace context the request came with, if any.
    fn trace(&self) -> Option<TraceContext>;
}

/// A request's span. Exported, it is named by the request's subject, as the server's span.
fn request_span(op: Op) -> tracing::Span {
    use tracing::field::Empty;
    if crate::telemetry::trace::exporting() {
        tracing::info_span!(
            "request",
            otel.name = op.subject(),
            otel.kind = "server",
            op = op.name(),
            app = Empty,
            session = Empty,
        )
    } else {
        let subject = op.subject();
        tracing::info_span!(
            "request",
            op = op.name(),
            subject,
            app = Empty,
            session = Empty
        )
    }
}

/// A request refused before it was handled: its error is its reply.
async fn refused(err: Error, outlet: &mut impl Outlet) -> Outcome {
    let outcome = Err(err.kind);
    outlet.reply(Err(err)).await;
    outcome
}

/// How a request ended: `Ok`, or the kind of its error. A request passed on to another worker
/// has no outcome here: that worker records it.
pub type Outcome = std::result::Result<(), ErrorKind>;

/// The outcome of a handler's result.
pub fn outcome_of<T>(result: &Result<T>) -> Outcome {
    result.as_ref().map(|_| ()).map_err(|e| e.kind)
}

impl Forge {
    /// Serves one request of `op`: see the module's doc.
    pub async fn serve(
        &self,
        op: Op,
        token: Option<&str>,
        body: impl Body,
        outlet: &mut impl Outlet,
    ) {
        let span = request_span(op);
        TraceContext::continue_in(outlet.trace().as_ref(), &span);
        let received = Instant::now();
        let steps = AssertUnwindSafe(self.steps(op, token, &body, outlet)).catch_unwind();
        let outcome = match steps.instrument(span.clone()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let _enter = span.enter();
                tracing::error!(subject = op.subject(), "the handler panicked");
                let err = Error::internal(format!("handler for {} panicked", op.subject()));
                let outcome = Some(Err(err.kind));
                if !outlet.answered() {
                    outlet.reply(Err(err)).await;
                }
                outcome
            }
        };
        if let Some(outcome) = outcome {
            span.in_scope(|| self.record(op, outcome, received));
        }
    }

    /// The pipeline's steps; `None` when the request was passed on.
    async fn steps(
        &self,
        op: Op,
        token: Option<&str>,
        body: &impl Body,
        outlet: &mut impl Outlet,
    ) -> Option<Outcome> {
        let session = body.session_hint();
        if let Some(id) = &session {
            tracing::Span::current().record("session", tracing::field::display(id));
        }
        if op.passed_on() && !outlet.passed_on() {
            if let Some(id) = &session {
                if self.pass_on(op, *id, outlet).await {
                    return None;
                }
            }
        }
        let admitted = async {
            let caller = self.admit_caller(op, token).await?;
            let named = match (body.named_session(), &caller) {
                (Some(named), Some(caller)) => Some(self.named_session_id(caller, named).await?),
                _ => None,
            };
            Ok::<_, Error>((caller, named))
        };
        let (caller, named) = match admitted.await {
            Ok(admitted) => admitted,
            Err(err) => return Some(refused(err, outlet).await),
        };
        if let Some(id) = named {
            tracing::Span::current().record("session", tracing::field::display(&id));
            if op.passed_on() && !outlet.passed_on() && self.pass_on(op, id, outlet).await {
                return None;
            }
        }
        let decided = async {
            let request = match named {
                Some(id) => body.decode_in(op, id)?,
                None => body.decode(op)?,
            };
            let caller = match caller {
                Some(caller) => Some(self.police(caller, &request).await?),
                None => None,
            };
            Ok::<_, Error>((caller, request))
        };
        let (caller, request) = match decided.await {
            Ok(decided) => decided,
            Err(err) => return Some(refused(err, outlet).await),
        };
        Some(self.handle(caller, request, outlet).await)
    }

    /// Authenticate → access. A public operation has no caller.
    async fn admit_caller(&self, op: Op, token: Option<&str>) -> Result<Option<Caller>> {
        if op.access() == Access::Public {
            return Ok(None);
        }
        let caller = self.authenticate(token).await?;
        tracing::Span::current().record("app", caller.app.as_str());
        if op.access() == Access::Admin && !caller.admin {
            return Err(Error::forbidden("this needs an admin token"));
        }
        Ok(Some(caller))
    }

    /// Where the request's outcome goes once it is known: its metrics, and a trace line.
    fn record(&self, op: Op, outcome: Outcome, received: Instant) {
        let elapsed = received.elapsed().as_secs_f64();
        let label = match outcome {
            Ok(()) => "ok",
            Err(kind) => kind.code(),
        };
        crate::telemetry::request(op.name(), label, elapsed);
        tracing::trace!(
            op = op.name(),
            outcome = label,
            elapsed_ms = elapsed * 1000.0,
            "served"
        );
    }

    /// A turn, close, cancel or permission answer that another worker serves (see
    /// [`Forge::route`]) is passed on to it; it then answers the caller, streams included.
    /// `true` once passed on. A worker that does not acknowledge is gone: a turn's session is
    /// taken over, and the request served here.
    async fn pass_on(&self, op: Op, session_id: SessionId, outlet: &mut impl Outlet) -> bool {
        let step = match op.served() {
            Served::Owner if op == Op::SessionClose => Step::Close,
            Served::Owner => Step::Turn,
            Served::TurnHolder if op == Op::SessionCancel => Step::Cancel,
            Served::TurnHolder => Step::Permission,
            Served::Anywhere => return false,
        };
        // Twice at most: a takeover lost to a third worker routes once more, to that worker.
        for _ in 0..2 {
            let Route::On {
                worker_id,
                generation,
            } = self.route(step, session_id).await
            else {
                return false;
            };
            match outlet.pass_on(op, &worker_id).await {
                Handed::Taken => {
                    let subject = op.subject();
                    tracing::debug!(worker = %worker_id, session = %session_id, "{subject} passed on");
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
            if self.take_over(session_id, &worker_id, generation).await {
                return false;
            }
        }
        false
    }

    /// The handler of `request`, its reply sent once or streamed.
    async fn handle(
        &self,
        caller: Option<Caller>,
        request: Request,
        outlet: &mut impl Outlet,
    ) -> Outcome {
        let op = request.op();
        let Some(caller) = caller else {
            let reply = Ok(Reply::Health(self.health().await));
            outlet.reply(reply).await;
            return Ok(());
        };
        let streamed = match op.streams() {
            Streams::Never => false,
            Streams::OnRequest => outlet.stream_asked(),
            Streams::Always => true,
        };
        if streamed {
            return self.streamed(&caller, request, outlet).await;
        }
        if let Request::SessionTurn(req) = request {
            return self.answer_turn(&caller, req, outlet).await;
        }
        let result = self.answer(&caller, request).await;
        let outcome = outcome_of(&result);
        outlet.reply(result).await;
        outcome
    }

    /// A request answered once.
    async fn answer(&self, caller: &Caller, request: Request) -> Result<Reply> {
        let c = caller;
        Ok(match request {
            Request::SessionCreate(r) => self.create_session(c, r).await?.into(),
            Request::SessionTurn(r) => self.turn(c, r).await?.into(),
            Request::SessionCancel(r) => self.cancel_turn(c, r).await?.into(),
            Request::SessionPermission(r) => self.answer_permission(c, r).await?.into(),
            Request::SessionClose(r) => self.close_session(c, r).await?.into(),
            Request::SessionGet(r) => self.get_session(c, r).await?.into(),
            Request::SessionList(r) => self.list_sessions(c, r).await?.into(),
            Request::Run(r) => self.run(c, r).await?.into(),
            Request::TokenCreate(r) => self.create_token(c, r).await?.into(),
            Request::TokenList(r) => self.list_tokens(c, r).await?.into(),
            Request::TokenRevoke(r) => self.revoke_token(c, r).await?.into(),
            Request::Health(_) => self.health().await.into(),
            Request::AppSet(r) => self.set_app_policy(r).await?.into(),
            Request::AppGet(app) => self.get_app_policy(app).await?.into(),
            Request::AppList(_) => self.list_app_policies().await?.into(),
            Request::Usage(_) => self.usage(c).await?.into(),
            Request::AdminUsage(r) => self.admin_usage(r).await?.into(),
            Request::AdminSessionList(r) => self.admin_sessions(r).await?.into(),
            Request::SessionEvents(_) => {
                return Err(Error::internal("forge.session.events always streams"))
            }
        })
    }

    /// A streamed request: a live turn or run, or a turn replayed and followed.
    async fn streamed(
        &self,
        caller: &Caller,
        request: Request,
        outlet: &mut impl Outlet,
    ) -> Outcome {
        let (events, relayed) = mpsc::channel(EVENT_QUEUE);
        let work = async move {
            match request {
                Request::SessionEvents(r) => {
                    self.follow_turn(caller, r, events).await.map(Reply::from)
                }
                Request::Run(r) => self
                    .live_run(caller, r, Some(events))
                    .await
                    .map(Reply::from),
                Request::SessionTurn(r) => {
                    let turn = self.live_turn(caller, r, Some(events), None);
                    turn.await.map(Reply::from)
                }
                other => self.answer(caller, other).await,
            }
        };
        outlet.stream(relayed, work).await
    }

    /// A turn answered once. Asked with `"wait": false`, it is answered as soon as it is
    /// numbered, and goes on here (the worker's shutdown waits for it like for any request); a
    /// turn refused before it is numbered answers its error. Its outcome is the turn's.
    async fn answer_turn(
        &self,
        caller: &Caller,
        req: TurnAsked,
        outlet: &mut impl Outlet,
    ) -> Outcome {
        if req.wait {
            let result = self.turn(caller, req).await.map(Reply::from);
            let outcome = outcome_of(&result);
            outlet.reply(result).await;
            return outcome;
        }
        let (numbered, mut accepted) = oneshot::channel();
        let turn = self.live_turn(caller, req, None, Some(numbered));
        tokio::pin!(turn);
        tokio::select! {
            biased;
            Ok(taken) = &mut accepted => {
                outlet.reply(Ok(taken.into())).await;
                outcome_of(&turn.await)
            }
            ended = &mut turn => {
                let outcome = outcome_of(&ended);
                let reply = match accepted.try_recv() {
                    Ok(taken) => Ok(taken.into()),
                    Err(_) => ended.map(Reply::from),
                };
                outlet.reply(reply).await;
                outcome
            }
        }
    }
}
