//! Traces over OTLP/HTTP, received by a real OTLP/HTTP receiver on loopback that decodes each
//! export's protobuf (opentelemetry-proto): a streamed turn with a tool call, passed on from
//! the worker it reached to the session's owner, is one trace — the caller's `traceparent`,
//! the first worker's request span, the owner's request span, its `invoke_agent` span and the
//! tool call's `execute_tool` span, each the child of the one before; the same through the
//! sidecar from an HTTP `traceparent`. Session ids leave only hashed; prompts and outputs only
//! from a worker whose operator opted in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use clawdforge::client::ForgeClient;
use clawdforge::telemetry::trace::TraceContext;
use clawdforge::wire::CreateSession;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::harness::{env_of, http_client, Forge, Options, Via, CLUSTERED};
use crate::sessions::turn;

const CAPTURE: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";
const STALL: Duration = Duration::from_secs(60);

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    instance: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Got>>>;

/// An OTLP/HTTP receiver on a port of its own: every span of every export.
async fn receiver() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, spans)
}

async fn export(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut got = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let resource = attributes(&resource.attributes);
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(Got {
                    service: resource["service.name"].clone(),
                    instance: resource["service.instance.id"].clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    let text = |kv: &KeyValue| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    kvs.iter().map(|kv| (kv.key.clone(), text(kv))).collect()
}

/// A new trace of the test's, as a caller would send it: (trace id, parent span id).
fn new_trace() -> (TraceContext, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let context = TraceContext {
        traceparent: format!("00-{trace_id}-{parent}-01"),
        tracestate: Some("forge=test".into()),
    };
    (context, trace_id, parent)
}

fn hashed(session_id: &str) -> String {
    hex::encode(&Sha256::digest(session_id.as_bytes())[..8])
}

/// Two workers, each on its own server of one NATS cluster, exporting traces to `endpoint`;
/// only the second records prompts and outputs. A client of each server.
async fn two_traced_workers(endpoint: &str) -> (Forge, ForgeClient, ForgeClient) {
    let mut forge = Forge::start_with(Options {
        workers: 1,
        via: Via::Acp,
        nats_config: Some(CLUSTERED.into()),
        env: env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]),
        ..Default::default()
    })
    .await;
    let far_connection = forge.spawn_far_worker_with(&[(CAPTURE, "true")]).await;
    let near = forge.app("traced").await;
    let far = ForgeClient::new(far_connection, near.token().map(str::to_string));
    (forge, near, far)
}

/// A session owned by each worker (created through one server, then the other, until both
/// own one).
async fn a_session_on_each(forge: &Forge, clients: [&ForgeClient; 2]) -> [String; 2] {
    let mut owned: [Option<String>; 2] = [None, None];
    for n in 0..12 {
        if let [Some(a), Some(b)] = &owned {
            return [a.clone(), b.clone()];
        }
        let client = clients[n % 2];
        let id = client
            .create_session(&CreateSession::default())
            .await
            .unwrap()
            .session_id;
        let owner = forge.owner(&id).0.expect("an owner");
        owned[forge.worker_index(&owner)].get_or_insert(id);
    }
    panic!("twelve sessions, and a worker owns none: {owned:?}");
}

/// Stops every worker with SIGTERM (their last spans are sent as they stop) and waits.
fn stop_workers(forge: &mut Forge) {
    for w in &mut forge.workers {
        kill(Pid::from_raw(w.child.id() as i32), Signal::SIGTERM).unwrap();
    }
    for w in &mut forge.workers {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "a worker stopped with {status}");
    }
}

/// One line per span: its trace, id, parent, name and worker, for a failure's message.
fn summary(spans: &[Got]) -> String {
    let line = |s: &Got| {
        let (trace, instance) = (&s.trace_id[..8], &s.instance[..8]);
        let (id, parent, name) = (&s.span_id, &s.parent, &s.name);
        format!("{trace} {id} <- {parent:16} {name} @{instance}")
    };
    spans.iter().map(line).collect::<Vec<_>>().join("\n")
}

fn in_trace<'a>(spans: &'a [Got], trace_id: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

fn child_named<'a>(spans: &[&'a Got], parent: &str, name: &str) -> Option<&'a Got> {
    spans
        .iter()
        .copied()
        .find(|s| s.parent == parent && s.name == name)
}

/// Whether `span` descends from the span `ancestor` in `spans`.
fn descends(spans: &[&Got], span: &Got, ancestor: &str) -> bool {
    let mut at = span.parent.clone();
    for _ in 0..spans.len() {
        if at == ancestor {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at) {
            Some(parent) => at = parent.parent.clone(),
            None => return false,
        }
    }
    false
}

// The receiver runs on the runtime's other threads while the test waits for processes to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_passed_on_between_workers_is_one_trace_down_to_its_tool_call() {
    let (endpoint, received) = receiver().await;
    let (mut forge, near, far) = two_traced_workers(&endpoint).await;
    let [quiet, capturing] = a_session_on_each(&forge, [&near, &far]).await;
    // Through the server of the worker that does not own the session: passed on, as a rule
    // (the cluster prefers a local subscriber, it does not promise one).
    let mut traces = Vec::new();
    for n in 0..4 {
        let (context, trace_id, parent) = new_trace();
        let req = turn(&quiet, &format!("secret-prompt-{n}"));
        let traced = far.with_trace(context);
        let streamed = traced.turn_streaming(&req, STALL, |_| {}).await.unwrap();
        assert!(streamed.output.contains("secret-prompt"));
        traces.push((trace_id, parent));
    }
    let (context, captured_trace, _) = new_trace();
    let req = turn(&capturing, "shared-prompt");
    far.with_trace(context).turn(&req).await.unwrap();
    let (context, http_trace, http_parent) = new_trace();
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let got = http_client()
        .get(sidecar.url(&format!("/sessions/{quiet}")))
        .bearer_auth(near.token().unwrap())
        .header("traceparent", &context.traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let mut sidecar = sidecar;
    assert!(sidecar.terminate(Duration::from_secs(30)).is_some());
    stop_workers(&mut forge);

    let spans = received.lock().unwrap().clone();
    let passed_on = traces
        .iter()
        .filter(|(trace_id, parent)| passed_on_trace(&in_trace(&spans, trace_id), parent, &quiet))
        .count();
    assert!(
        passed_on >= 1,
        "no turn was passed on:\n{}\n{}",
        summary(&spans),
        forge.logs()
    );
    through_the_sidecar(&in_trace(&spans, &http_trace), &http_parent);
    content_only_where_asked(&spans, &in_trace(&spans, &captured_trace));
    for id in [&quiet, &capturing] {
        let leaked: Vec<_> = spans
            .iter()
            .filter(|s| s.attributes.values().any(|v| v.contains(id.as_str())))
            .collect();
        assert!(leaked.is_empty(), "a session id left unhashed: {leaked:#?}");
    }
}

/// Checks a trace of a turn of `session_id`; `false` if its turn was served where it arrived.
fn passed_on_trace(spans: &[&Got], caller_parent: &str, session_id: &str) -> bool {
    let first = child_named(spans, caller_parent, "forge.session.turn")
        .unwrap_or_else(|| panic!("no request span under the caller's: {spans:#?}"));
    assert_eq!(first.kind, SpanKind::Server as i32);
    let Some(owner) = child_named(spans, &first.span_id, "forge.session.turn") else {
        // Served by the worker it reached: then that one ran the agent.
        let agent = spans.iter().find(|s| s.name.starts_with("invoke_agent"));
        assert!(agent.is_some_and(|a| a.instance == first.instance));
        return false;
    };
    assert_ne!(
        owner.instance, first.instance,
        "passed on to another worker"
    );
    assert_eq!(owner.service, "clawdforge-worker");
    assert_eq!(
        owner.attributes["gen_ai.conversation.id"],
        hashed(session_id)
    );
    let agent = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent "))
        .unwrap_or_else(|| panic!("no invoke_agent span: {spans:#?}"));
    assert!(descends(spans, agent, &owner.span_id), "{spans:#?}");
    assert_eq!(agent.instance, owner.instance);
    let agent_name = &agent.attributes["gen_ai.agent.name"];
    assert_eq!(agent.name, format!("invoke_agent {agent_name}"));
    assert_eq!(agent.attributes["gen_ai.operation.name"], "invoke_agent");
    assert_eq!(agent.attributes["clawdforge.stop_reason"], "end_turn");
    let tool = child_named(spans, &agent.span_id, "execute_tool Echo tool")
        .unwrap_or_else(|| panic!("no execute_tool span under invoke_agent: {spans:#?}"));
    assert_eq!(tool.attributes["gen_ai.operation.name"], "execute_tool");
    assert_eq!(tool.attributes["gen_ai.tool.name"], "Echo tool");
    assert_eq!(tool.attributes["clawdforge.tool.status"], "completed");
    true
}

/// The sidecar's span continues the HTTP `traceparent`; the worker's is its child.
fn through_the_sidecar(spans: &[&Got], caller_parent: &str) {
    let http = child_named(spans, caller_parent, "HTTP forge.session.get")
        .unwrap_or_else(|| panic!("no sidecar span under the caller's: {spans:#?}"));
    assert_eq!(http.service, "clawdforge-sidecar");
    assert_eq!(http.kind, SpanKind::Server as i32);
    let served = child_named(spans, &http.span_id, "forge.session.get")
        .unwrap_or_else(|| panic!("no worker span under the sidecar's: {spans:#?}"));
    assert_eq!(served.service, "clawdforge-worker");
}

/// Prompts and outputs appear in the capturing worker's agent span, and nowhere else.
fn content_only_where_asked(all: &[Got], captured: &[&Got]) {
    let agent = captured
        .iter()
        .find(|s| s.name.starts_with("invoke_agent "))
        .unwrap_or_else(|| panic!("no invoke_agent span: {captured:#?}"));
    assert!(agent.attributes["gen_ai.input.messages"].contains("shared-prompt"));
    assert!(agent.attributes["gen_ai.output.messages"].contains("shared-prompt"));
    let leaked: Vec<_> = all
        .iter()
        .filter(|s| s.attributes.values().any(|v| v.contains("secret-prompt")))
        .collect();
    assert!(leaked.is_empty(), "a prompt not asked for: {leaked:#?}");
}
