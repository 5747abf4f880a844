//! Traces over OTLP/HTTP, off unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other standard `OTEL_*` variables
//! (service name, resource attributes, headers, sampler, batch delays) apply as the
//! OpenTelemetry SDK reads them.
//!
//! The `tracing` spans of the service become OpenTelemetry spans: one trace per request,
//! continuing the caller's W3C `traceparent` (a NATS or HTTP header) and carried on with a
//! request the sidecar forwards or a worker passes on ([`TraceContext`]). Before export, a
//! session id is replaced by its hash ([`Redacting`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The span field that names a session: exported only as [`SESSION_HASH`].
const SESSION_FIELD: &str = "session";
/// The attribute a session's hash is exported as (GenAI's conversation id).
pub const SESSION_HASH: &str = "gen_ai.conversation.id";

static EXPORTING: AtomicBool = AtomicBool::new(false);
static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Whether the operator opted in to prompts and outputs in traces
/// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`).
pub fn capture_content() -> bool {
    exporting() && CAPTURE_CONTENT.load(Ordering::Relaxed)
}

/// What the environment asks of traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// An OTLP endpoint is set (and the SDK not disabled, the exporter not `none`).
    pub export: bool,
    pub capture_content: bool,
    /// `OTEL_SERVICE_NAME` or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_named: bool,
}

impl TraceSettings {
    pub fn from_env(env: &[(String, String)]) -> TraceSettings {
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let truthy = |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .is_some();
        let exporter_none = get("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
        TraceSettings {
            export: endpoint && !exporter_none && !truthy("OTEL_SDK_DISABLED"),
            capture_content: truthy("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
            service_named: get("OTEL_SERVICE_NAME").is_some()
                || get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name=")),
        }
    }
}

/// The process's trace pipeline, while it exports: [`Tracing::shutdown`] sends what is left.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting, as `service` unless the environment names the service; the layer to
    /// add to the subscriber. `None` when traces are off.
    pub fn start<S>(
        settings: &TraceSettings,
        service: &'static str,
    ) -> anyhow::Result<
        Option<(
            Tracing,
            tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>,
        )>,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if !settings.export {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        let mut resource = Resource::builder().with_attribute(KeyValue::new(
            "service.instance.id",
            uuid::Uuid::new_v4().to_string(),
        ));
        if !settings.service_named {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Redacting(exporter))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("clawdforge");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
        CAPTURE_CONTENT.store(settings.capture_content, Ordering::Relaxed);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false);
        Ok(Some((Tracing { provider }, layer)))
    }

    /// Sends the spans not yet exported and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("clawdforge: sending the last traces: {e}");
        }
    }
}

/// The tracer the layer records with.
pub type Tracer = opentelemetry_sdk::trace::Tracer;

/// A W3C trace context as a request carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The trace context of a NATS message's headers.
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
        let headers = headers?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        Some(TraceContext {
            traceparent: get(TRACEPARENT)?,
            tracestate: get(TRACESTATE),
        })
    }

    /// The trace context of an HTTP request's headers.
    pub fn from_http(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
        let get = |name: &str| headers.get(name)?.to_str().ok().map(str::to_string);
        Some(TraceContext {
            traceparent: get(TRACEPARENT)?,
            tracestate: get(TRACESTATE),
        })
    }

    /// Sets the trace context's headers (replacing any the message had).
    pub fn write_nats(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent.as_str());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.as_str());
        }
    }

    /// The context of the current span, when it is exported; else `received` as it came, so
    /// that a caller's trace goes on through a process that does not export.
    pub fn outgoing(received: Option<&TraceContext>) -> Option<TraceContext> {
        if exporting() {
            let cx = tracing::Span::current().context();
            if cx.span().span_context().is_valid() {
                let mut carrier = HashMap::new();
                TraceContextPropagator::new().inject_context(&cx, &mut carrier);
                return Some(TraceContext {
                    traceparent: carrier.remove(TRACEPARENT)?,
                    tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
                });
            }
        }
        received.cloned()
    }

    /// Makes `span` a child of this context (when traces are exported; a malformed
    /// `traceparent` starts a new trace).
    pub fn continue_in(received: Option<&TraceContext>, span: &tracing::Span) {
        let Some(received) = received.filter(|_| exporting()) else {
            return;
        };
        let mut carrier = HashMap::new();
        carrier.insert(TRACEPARENT.to_string(), received.traceparent.clone());
        if let Some(state) = &received.tracestate {
            carrier.insert(TRACESTATE.to_string(), state.clone());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// The hash a session id is exported as: enough to follow one session across traces, not to
/// learn its id.
pub fn session_hash(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..8])
}

/// The exporter, with each session id replaced by its hash before the spans leave the process.
#[derive(Debug)]
pub struct Redacting<E>(pub E);

impl<E: SpanExporter> SpanExporter for Redacting<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &mut batch {
            redact(&mut span.attributes);
            for event in span.events.events.iter_mut() {
                redact(&mut event.attributes);
            }
        }
        self.0.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn redact(attributes: &mut [KeyValue]) {
    for kv in attributes.iter_mut() {
        if kv.key.as_str() == SESSION_FIELD {
            let hashed = session_hash(&kv.value.as_str());
            *kv = KeyValue::new(Key::from_static_str(SESSION_HASH), Value::from(hashed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert!(!TraceSettings::from_env(&env(&[])).export);
        assert!(!TraceSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).export);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(TraceSettings::from_env(&env(&on)).export);
        let traces = [(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://h:4318/v1/traces",
        )];
        assert!(TraceSettings::from_env(&env(&traces)).export);
        let none = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert!(!TraceSettings::from_env(&env(&none)).export);
        let disabled = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(!TraceSettings::from_env(&env(&disabled)).export);
    }

    #[test]
    fn content_is_captured_only_when_asked() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(!TraceSettings::from_env(&env(&[on])).capture_content);
        let asked = [
            on,
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "TRUE"),
        ];
        assert!(TraceSettings::from_env(&env(&asked)).capture_content);
    }

    #[test]
    fn a_session_id_leaves_only_hashed() {
        let id = "0b6f3a6e-9d43-4a8e-9b1e-6f7c9e1d2a3b";
        let mut attributes = vec![
            KeyValue::new("op", "session.turn"),
            KeyValue::new(SESSION_FIELD, id),
        ];
        redact(&mut attributes);
        assert_eq!(attributes[0], KeyValue::new("op", "session.turn"));
        assert_eq!(attributes[1].key.as_str(), SESSION_HASH);
        let hashed = attributes[1].value.as_str();
        assert_eq!(hashed, session_hash(id));
        assert_eq!(hashed.len(), 16);
        assert!(!hashed.contains(&id[..8]));
    }
}
