//! The Synadia Agent Protocol (v0.3) on NATS, a second transport of the pipeline: for every
//! session a caller can reach by name ([`Forge::named_sessions`]), a micro service `agents`
//! with a `prompt` and a `status` endpoint and a heartbeat. A prompt is a turn of that session
//! through [`Forge::serve`] (`prompt.rs` its body, `outlet.rs` its way back); `status` and the
//! heartbeat say the service is there (`liveness.rs`). The services follow the ledger: they
//! are reconciled with it every few seconds (`registry.rs`).

mod liveness;
mod names;
mod outlet;
mod prompt;
mod query;
mod registry;

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::task::TaskTracker;

use self::outlet::{named_in, own_subject, AgentOutlet};
use self::prompt::PromptBody;
use self::registry::Registry;
use crate::domain::{Forge, Op};
use crate::wire;

/// How often the services are brought in line with the ledger's apps, tokens and sessions.
const RECONCILE_EVERY: Duration = Duration::from_secs(3);

/// What every session's service shares.
#[derive(Clone)]
struct Shared {
    client: async_nats::Client,
    forge: Arc<Forge>,
    tracker: TaskTracker,
    heartbeat: Duration,
    /// The agents exposed: those whose names are subject tokens.
    agents: Arc<Vec<String>>,
}

/// The agent protocol served: the sessions' services, kept in line with the ledger, and this
/// worker's own subject for prompts other workers pass on.
pub struct Agents {
    registry: Arc<tokio::sync::Mutex<Registry>>,
    reconcile: tokio::task::JoinHandle<()>,
    own: tokio::task::JoinHandle<()>,
}

/// Starts serving the agent protocol: every named session's service registered before it
/// returns. Requests run in `tracker`.
pub async fn start(
    client: async_nats::Client,
    forge: Arc<Forge>,
    tracker: TaskTracker,
    heartbeat: Duration,
) -> Result<Agents, async_nats::Error> {
    let shared = Shared {
        client: client.clone(),
        agents: Arc::new(exposed_agents(&forge)),
        forge: forge.clone(),
        tracker,
        heartbeat,
    };
    let messages = client.subscribe(own_subject(forge.worker_id())).await?;
    let own = tokio::spawn(own_loop(messages, shared.clone()));
    let registry = Arc::new(tokio::sync::Mutex::new(Registry::default()));
    registry::reconcile(&shared, &registry).await;
    let reconcile = tokio::spawn(registry::keep_reconciled(
        shared,
        registry.clone(),
        RECONCILE_EVERY,
    ));
    Ok(Agents {
        registry,
        reconcile,
        own,
    })
}

impl Agents {
    /// Stops the services (no more prompts); prompts in flight go on. Returns the loop of the
    /// worker's own subject, which goes on until the worker is done with its turns.
    pub async fn stop_intake(self) -> tokio::task::JoinHandle<()> {
        self.reconcile.abort();
        registry::stop_all(&self.registry).await;
        self.own
    }
}

/// The configured agents whose names can be subject tokens; the others are said once.
fn exposed_agents(forge: &Forge) -> Vec<String> {
    let (exposed, hidden): (Vec<&str>, Vec<&str>) =
        forge.agent_names().partition(|a| names::exposable_agent(a));
    for agent in hidden {
        tracing::warn!(
            agent,
            "not served over the agent protocol: an agent's name there is 1-63 of a-z, 0-9 and '-'"
        );
    }
    exposed.into_iter().map(String::from).collect()
}

/// Serves one prompt through the pipeline.
async fn serve(forge: &Forge, mut outlet: AgentOutlet) {
    let token = super::token(&outlet.message);
    let body = PromptBody {
        named: outlet.named.clone(),
        payload: outlet.message.payload.clone(),
    };
    forge
        .serve(Op::SessionTurn, token.as_deref(), body, &mut outlet)
        .await;
}

/// Every prompt another worker passed on to this one, served in its own task.
async fn own_loop(mut messages: async_nats::Subscriber, shared: Shared) {
    while let Some(message) = messages.next().await {
        let shared = shared.clone();
        shared.tracker.clone().spawn(async move {
            match passed_on(&shared.client, shared.forge.clone(), message).await {
                Some(outlet) => serve(&shared.forge, outlet).await,
                None => tracing::debug!("a prompt passed on without its session ignored"),
            }
        });
    }
}

/// The way back of a prompt another worker passed on: it names its session and carries the
/// caller's reply subject; it is acknowledged at once, so the other worker knows it is served.
async fn passed_on(
    client: &async_nats::Client,
    forge: Arc<Forge>,
    message: Message,
) -> Option<AgentOutlet> {
    let named = named_in(&message)?;
    let carried = message.headers.as_ref()?.get(wire::REPLY_TO_HEADER)?;
    let reply = Subject::from(carried.as_str());
    let ack = message.reply.clone()?;
    if let Err(e) = client.publish(ack, Bytes::new()).await {
        tracing::warn!(error = %e, "acknowledging a prompt passed on");
    }
    Some(AgentOutlet {
        client: client.clone(),
        forge,
        message,
        reply,
        named,
        passed_on: true,
        answered: false,
    })
}
