//! The worker's NATS transport: the `forge.*` endpoints, each a loop that hands every request
//! to the pipeline ([`Forge::serve`]) with its body and its way back (`forge.rs`). Served with
//! the async-nats service API as service `clawdforge`, every endpoint in queue group `forge`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use tokio_util::task::TaskTracker;

pub mod agents;
mod forge;
mod hand;
mod reply;
mod stream;

use self::forge::{JsonBody, NatsOutlet, WayBack};
pub use self::reply::error_reply;
pub use crate::domain::ops::SUBJECTS;
use crate::domain::{Forge, Op, VERSION};
use crate::wire;

/// A running service: its endpoints feed `tracker` one task per request.
pub struct Worker {
    service: async_nats::service::Service,
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// The worker's own subjects (requests other workers pass on to it), served until the
    /// worker is done with its turns, after its intake has stopped.
    own: Vec<tokio::task::JoinHandle<()>>,
    /// The agent protocol's services, when it is on.
    agents: Option<agents::Agents>,
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

/// Registers the service and starts serving `ops` on their subjects, and the operations
/// other workers pass on on this worker's own subjects; with `agent_heartbeat`, the agent
/// protocol too, its services beating that often.
pub async fn start(
    client: async_nats::Client,
    forge: Arc<Forge>,
    ops: &[Op],
    stream_heartbeat: Duration,
    agent_heartbeat: Option<Duration>,
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
    let way = WayBack {
        client: client.clone(),
        max_payload: client.server_info().max_payload,
        stream_heartbeat,
    };
    let mut loops = Vec::new();
    for op in ops.iter().copied() {
        let endpoint = service.endpoint(op.subject()).await?;
        loops.push(tokio::spawn(endpoint_loop(
            endpoint,
            op,
            forge.clone(),
            tracker.clone(),
            way.clone(),
        )));
    }
    let mut own = Vec::new();
    for op in Op::passed_on_ops() {
        let subject = wire::worker_subject(forge.worker_id(), op.subject());
        let messages = client.subscribe(subject).await?;
        let (forge, tracker, way) = (forge.clone(), tracker.clone(), way.clone());
        own.push(tokio::spawn(own_loop(messages, op, forge, tracker, way)));
    }
    let agents = match agent_heartbeat {
        Some(every) => Some(agents::start(client.clone(), forge, tracker.clone(), every).await?),
        None => None,
    };
    // Once the server has answered a ping, it has every subscription above: a worker that says
    // it is ready gets requests. Without NATS yet, the subscriptions go out once it connects.
    if client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    }
    Ok(Worker {
        service,
        loops,
        own,
        agents,
        tracker,
    })
}

/// Every request of `op` from the queue group, served in its own task.
async fn endpoint_loop(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    op: Op,
    forge: Arc<Forge>,
    tracker: TaskTracker,
    way: WayBack,
) {
    while let Some(request) = endpoint.next().await {
        let Some(mut outlet) = NatsOutlet::service(way.clone(), op, request) else {
            tracing::debug!(
                subject = op.subject(),
                "message without a reply subject ignored"
            );
            continue;
        };
        let forge = forge.clone();
        tracker.spawn(async move {
            let token = token(outlet.message());
            let body = JsonBody(outlet.message().payload.clone());
            forge.serve(op, token.as_deref(), body, &mut outlet).await;
        });
    }
}

/// Every request of `op` another worker passed on to this one, served in its own task.
async fn own_loop(
    mut messages: async_nats::Subscriber,
    op: Op,
    forge: Arc<Forge>,
    tracker: TaskTracker,
    way: WayBack,
) {
    while let Some(message) = messages.next().await {
        let (forge, way) = (forge.clone(), way.clone());
        tracker.spawn(async move {
            let Some(mut outlet) = NatsOutlet::passed_on(way, op, message).await else {
                let subject = op.subject();
                tracing::debug!(
                    subject,
                    "a request passed on without its reply subjects ignored"
                );
                return;
            };
            let token = token(outlet.message());
            let body = JsonBody(outlet.message().payload.clone());
            forge.serve(op, token.as_deref(), body, &mut outlet).await;
        });
    }
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
        let mut own = self.own;
        if let Some(agents) = self.agents {
            own.push(agents.stop_intake().await);
        }
        self.tracker.close();
        Draining {
            tracker: self.tracker,
            own,
        }
    }
}

/// The bearer token of a request's `Authorization` header.
fn token(message: &async_nats::Message) -> Option<String> {
    let headers = message.headers.as_ref()?;
    let value = headers
        .get(wire::AUTHORIZATION)
        .or_else(|| headers.get("authorization"))?;
    wire::bearer(Some(value.as_str())).map(str::to_string)
}
