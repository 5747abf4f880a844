//! The OpenAPI document of the sidecar, generated from the wire types and the handlers'
//! annotations, served at `/openapi.json`.

use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::api_docs as routes;
use super::health::SidecarHealth;
use super::multipart::{RunForm, TurnForm};
use super::routes::PermissionChoice;
use crate::config::BackendKind;
use crate::error::ErrorKind;
use crate::wire;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "clawdforge sidecar",
        description = "The HTTP side of clawdforge: each route is one NATS subject of the wire \
                       contract (subjects.md), with the same JSON. Every request must come from an \
                       address in the allowlist (loopback always); others get 403 `forbidden`. \
                       Errors carry `{\"error\": {\"code\", \"message\"}}` and the status of their \
                       kind."
    ),
    paths(
        routes::run,
        routes::create_session,
        routes::list_sessions,
        routes::get_session,
        routes::close_session,
        routes::turn,
        routes::cancel_turn,
        routes::answer_permission,
        routes::events,
        routes::create_token,
        routes::list_tokens,
        routes::revoke_token,
        routes::healthz,
        routes::openapi,
        routes::metrics,
        routes::set_app,
        routes::get_app,
        routes::list_apps,
        routes::usage,
        routes::admin_usage,
        routes::admin_sessions,
    ),
    components(schemas(
        wire::FileUpload,
        wire::CreateSession,
        wire::TurnRequest,
        wire::RunRequest,
        wire::TokenCreate,
        wire::Session,
        wire::SessionStatus,
        wire::SessionList,
        wire::SessionsAsked,
        wire::SessionPage,
        wire::SessionClosed,
        wire::Cancelled,
        wire::PermissionAnswer,
        wire::PermissionAnswered,
        wire::PermissionOption,
        PermissionChoice,
        wire::Turn,
        wire::Event,
        wire::EventBody,
        wire::Run,
        wire::TokenCreated,
        wire::TokenInfo,
        wire::TokenList,
        wire::TokenRevoked,
        wire::Health,
        wire::AgentHealth,
        BackendKind,
        wire::ErrorBody,
        wire::ErrorDetail,
        wire::PolicySet,
        wire::PolicyFields,
        wire::Policy,
        wire::PolicyList,
        wire::Source,
        wire::Usage,
        wire::LimitUsage,
        wire::UsageDay,
        wire::UsageDays,
        crate::quota::Amount,
        crate::quota::Window,
        crate::agent::def::PermissionPolicy,
        ErrorKind,
        SidecarHealth,
        RunForm,
        TurnForm,
    )),
    modifiers(&CommonResponses),
    tags(
        (name = "sessions", description = "Sessions driven through acpx"),
        (name = "runs", description = "One-shot runs of claude"),
        (name = "admin", description = "App tokens, apps' policies and usage; an admin token is needed"),
        (name = "usage", description = "What the caller's app used of its limits"),
        (name = "health", description = "Health and this document; no token needed"),
    )
)]
pub struct ApiDoc;

/// The answers every route may give: the allowlist's 403 everywhere; and on the routes that take
/// a token, the token errors, the body limit, and the sidecar's own failures.
struct CommonResponses;

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let secured = op.security.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                };
                if secured {
                    add(
                        "401",
                        "unauthorized: no token, or an unknown or revoked one",
                    );
                    add(
                        "403",
                        "forbidden: an admin route with an app token, or a client outside the allowlist",
                    );
                    add(
                        "413",
                        "payload_too_large: the body, prompt or files are over the limits",
                    );
                    add(
                        "429",
                        "quota_exceeded: a limit of the app's policy (`limit` names it; \
                         `retry_after_secs` and `Retry-After` say when it frees, where it does)",
                    );
                    add("500", "internal");
                    add(
                        "503",
                        "at_capacity: no worker available, NATS not reachable, or the workers are full",
                    );
                } else {
                    add("403", "forbidden: a client outside the allowlist");
                }
            }
        }
    }
}

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_operations() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let mut described = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut routed: std::collections::BTreeSet<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(method, path, _)| (method.to_string(), path.to_string()))
            .collect();
        routed.insert(("GET".into(), super::super::OPENAPI_PATH.into()));
        routed.insert(("GET".into(), super::super::METRICS_PATH.into()));
        assert_eq!(described, routed);
    }

    #[test]
    fn every_route_is_described() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (method, path, _) in super::super::ROUTES {
            let op = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} is missing");
            assert!(op["responses"]["200"].is_object(), "{method} {path}");
            assert!(op["responses"]["403"].is_object(), "{method} {path}");
        }
        assert!(doc["paths"]["/openapi.json"]["get"].is_object());
        let turn = &doc["paths"]["/sessions/{id}/turn"]["post"];
        assert!(turn["requestBody"]["content"]["multipart/form-data"].is_object());
        assert!(turn["requestBody"]["content"]["application/json"].is_object());
        assert_eq!(
            turn["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        let ok = &turn["responses"]["200"]["content"];
        assert_eq!(
            ok["application/json"]["schema"]["$ref"],
            "#/components/schemas/Turn"
        );
        let events = &ok["text/event-stream"];
        assert_eq!(events["schema"]["type"], "string");
        assert!(events["example"]
            .as_str()
            .unwrap()
            .ends_with("event: turn\ndata: {\"session_id\":\"…\",\"turn\":1,\"output\":\"Hello\",\"stop_reason\":\"end_turn\",\"duration_ms\":812}\n\n"));
        assert!(turn["description"]
            .as_str()
            .unwrap()
            .contains("Accept: text/event-stream"));
        assert!(doc["components"]["schemas"]["Event"].is_object());
        let cancel = &doc["paths"]["/sessions/{id}/cancel"]["post"];
        assert_eq!(
            cancel["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Cancelled"
        );
        assert!(cancel["responses"]["404"].is_object());
        let events = &doc["paths"]["/sessions/{id}/events"]["get"];
        let ok = &events["responses"]["200"]["content"];
        assert_eq!(
            ok.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["text/event-stream"],
            "the events route always streams"
        );
        assert!(ok["text/event-stream"]["example"]
            .as_str()
            .unwrap()
            .starts_with("id: 3\nevent: message\n"));
        let params: Vec<(&str, &str)> = events["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert_eq!(
            params,
            [
                ("path", "id"),
                ("query", "turn"),
                ("query", "after"),
                ("header", "Last-Event-ID")
            ]
        );
        assert!(events["description"]
            .as_str()
            .unwrap()
            .contains("wins over the query's `after`"));
        assert_eq!(
            doc["paths"]["/sessions"]["get"]["responses"]["401"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn schemas_follow_the_wire_types() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let required = |name: &str| -> Vec<String> {
            let mut r: Vec<String> = schemas[name]["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            r.sort();
            r
        };
        assert_eq!(required("TurnRequest"), ["prompt", "session_id"]);
        assert_eq!(required("RunRequest"), ["prompt"]);
        assert_eq!(required("TokenCreate"), ["app"]);
        assert_eq!(
            required("SidecarHealth"),
            ["nats_connected", "ok", "workers"]
        );
        assert_eq!(required("AgentHealth"), ["backend", "name", "ready"]);
        assert!(!required("Health").contains(&"agents".to_string()));
        assert_eq!(
            schemas["Health"]["properties"]["agents"]["items"]["$ref"],
            "#/components/schemas/AgentHealth"
        );
        let backends: Vec<&str> = schemas["BackendKind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(backends, ["acpx", "acp"]);
        let kinds: Vec<&str> = schemas["ErrorKind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let codes: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(kinds, codes);
        let status: Vec<&str> = schemas["SessionStatus"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(status, ["open", "closed"]);
    }
}
