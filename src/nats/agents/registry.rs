//! The sessions' services: one `agents` micro service per named session, registered when the
//! ledger has it and stopped when it no longer does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::liveness::{answer_status, beat, Liveness};
use super::names::{size_text, Tokens, PROTOCOL_VERSION, QUEUE_GROUP, SERVICE};
use super::outlet::AgentOutlet;
use super::{serve, Shared};
use crate::domain::{NamedSession, VERSION};

/// The max_payload stated when the server's is not known yet.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// One session's service and the tasks that serve it.
pub struct Registered {
    service: Service,
    tasks: Vec<JoinHandle<()>>,
}

impl Registered {
    async fn stop(self) {
        if let Err(e) = self.service.stop().await {
            tracing::debug!(error = %e, "stopping an agent's service");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The services registered, by the session each serves.
pub type Registry = BTreeMap<NamedSession, Registered>;

/// Reconciles `registry` with the ledger every `every`.
pub async fn keep_reconciled(shared: Shared, registry: Arc<Mutex<Registry>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        reconcile(&shared, &registry).await;
    }
}

/// Registers the services of the sessions the ledger has and this worker serves not yet, and
/// stops those of sessions it no longer has.
pub async fn reconcile(shared: &Shared, registry: &Mutex<Registry>) {
    let wanted = match shared.forge.named_sessions(&shared.agents).await {
        Ok(wanted) => wanted,
        Err(e) => {
            tracing::warn!(error = %e, "reading the agents' sessions");
            return;
        }
    };
    let mut registry = registry.lock().await;
    let gone: Vec<NamedSession> = registry
        .keys()
        .filter(|named| !wanted.contains(*named))
        .cloned()
        .collect();
    for named in gone {
        if let Some(registered) = registry.remove(&named) {
            registered.stop().await;
            tracing::debug!(app = %named.app, agent = named.agent, session = named.name.as_str(), "agent service stopped");
        }
    }
    for named in wanted {
        if registry.contains_key(&named) {
            continue;
        }
        match register(shared, &named).await {
            Ok(registered) => {
                tracing::debug!(app = %named.app, agent = named.agent, session = named.name.as_str(), "agent service registered");
                registry.insert(named, registered);
            }
            Err(e) => {
                tracing::warn!(error = %e, app = %named.app, "registering an agent's service")
            }
        }
    }
}

/// Stops every service.
pub async fn stop_all(registry: &Mutex<Registry>) {
    let mut registry = registry.lock().await;
    for (_, registered) in std::mem::take(&mut *registry) {
        registered.stop().await;
    }
}

fn strings<const N: usize>(pairs: [(&str, &str); N]) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The service of `named`: its metadata, its `prompt` and `status` endpoints, its heartbeat.
async fn register(shared: &Shared, named: &NamedSession) -> Result<Registered, async_nats::Error> {
    let tokens = Tokens::of(named);
    let metadata = strings([
        ("agent", &tokens.agent),
        ("owner", &tokens.owner),
        ("session", &tokens.session),
        ("protocol_version", PROTOCOL_VERSION),
    ]);
    let service = shared
        .client
        .service_builder()
        .description(format!(
            "clawdforge: agent {} of app {}",
            named.agent, named.app
        ))
        .queue_group(QUEUE_GROUP)
        .metadata(metadata)
        .start(SERVICE, VERSION)
        .await?;
    let max_payload = match shared.client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        n => n,
    };
    let prompt = service
        .endpoint_builder()
        .name("prompt")
        .queue_group(QUEUE_GROUP)
        .metadata(strings([
            ("max_payload", &size_text(max_payload)),
            ("attachments_ok", "true"),
        ]))
        .add(tokens.prompt())
        .await?;
    let status = service
        .endpoint_builder()
        .name("status")
        .queue_group(QUEUE_GROUP)
        .add(tokens.status())
        .await?;
    let liveness = Arc::new(Liveness {
        instance_id: service.info().await.id,
        tokens,
        interval: shared.heartbeat,
    });
    let client = shared.client.clone();
    let tasks = vec![
        tokio::spawn(take_prompts(prompt, named.clone(), shared.clone())),
        tokio::spawn(answer_status(status, liveness.clone())),
        tokio::spawn(beat(client, liveness)),
    ];
    Ok(Registered { service, tasks })
}

/// Every prompt to `named`, acknowledged at once and served in its own task.
async fn take_prompts(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    named: NamedSession,
    shared: Shared,
) {
    while let Some(request) = endpoint.next().await {
        let Some(reply) = request.message.reply.clone() else {
            tracing::debug!("a prompt without a reply subject ignored");
            continue;
        };
        let outlet = AgentOutlet {
            client: shared.client.clone(),
            forge: shared.forge.clone(),
            message: request.message.clone(),
            reply,
            named: named.clone(),
            passed_on: false,
            answered: false,
        };
        let forge = shared.forge.clone();
        shared.tracker.spawn(async move {
            outlet.ack().await;
            serve(&forge, outlet).await;
        });
    }
}
