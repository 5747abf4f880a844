//! Answering an agent that asks for credentials (ACP error -32000 "authentication required" to
//! `session/new` or `session/load`): with the `authenticate` method the operator configured for
//! it (`auth` of `[agents.NAME]`), sent once per agent process, never a method that needs a
//! browser or a terminal. The variable a method needs is read from the worker's environment
//! here, first: an agent may take `authenticate` without looking (Gemini CLI does).

use agent_client_protocol::v1::schema::{
    AuthCapabilities, AuthenticateRequest, ClientCapabilities, Meta,
};
use serde_json::json;

use crate::agent::def::{AgentAuth, GATEWAY_METHOD};
use crate::agent::fault::{AuthGap, AuthOffer};

/// What a process does when its agent asks for credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum AuthPlan {
    /// Authenticates with the configured method (native backend); with none, says what to
    /// configure.
    #[default]
    Unconfigured,
    Configured(AgentAuth),
    /// Nothing: acpx authenticates its agents by itself (`agents check` of an acpx agent).
    ByAcpx,
}

impl AuthPlan {
    /// The plan of a native agent with `auth` configured, or not.
    pub fn native(auth: Option<AgentAuth>) -> AuthPlan {
        auth.map_or(AuthPlan::Unconfigured, AuthPlan::Configured)
    }

    /// What the client tells the agent it can do in `initialize`: a `gateway` method is offered
    /// (by codex-acp, by Claude Code's adapter) only to a client that says it takes one.
    pub fn capabilities(&self) -> ClientCapabilities {
        let caps = ClientCapabilities::new();
        match self {
            AuthPlan::Configured(AgentAuth::Gateway { .. }) => {
                let meta = Meta::from_iter([(GATEWAY_METHOD.to_string(), json!(true))]);
                caps.auth(AuthCapabilities::new().meta(meta))
            }
            _ => caps,
        }
    }

    /// The `authenticate` request to send an agent that offers `offers`, or why there is none.
    /// `var` reads the worker's environment.
    pub fn request(
        &self,
        offers: &[AuthOffer],
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<AuthenticateRequest, AuthGap> {
        let AuthPlan::Configured(auth) = self else {
            return Err(self.still_asked());
        };
        let method = auth.method().to_string();
        if !offers.iter().any(|o| o.id == method) {
            return Err(AuthGap::NotOffered { method });
        }
        let value = var(auth.variable()).filter(|v| !v.trim().is_empty());
        let Some(value) = value else {
            let variable = auth.variable().to_string();
            return Err(AuthGap::Missing { method, variable });
        };
        let request = AuthenticateRequest::new(method);
        Ok(match auth {
            AgentAuth::Key { .. } => request,
            AgentAuth::Gateway { base_url, .. } => {
                let gateway = json!({
                    "baseUrl": base_url,
                    "headers": { "Authorization": format!("Bearer {value}") },
                });
                request.meta(Meta::from_iter([(GATEWAY_METHOD.to_string(), gateway)]))
            }
        })
    }

    /// Why an agent that asks for credentials (again) is not authenticated, past what this plan
    /// does.
    pub fn still_asked(&self) -> AuthGap {
        match self {
            AuthPlan::Unconfigured => AuthGap::Unconfigured,
            AuthPlan::ByAcpx => AuthGap::ByAcpx,
            AuthPlan::Configured(auth) => AuthGap::Rejected {
                method: auth.method().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(ids: &[&str]) -> Vec<AuthOffer> {
        ids.iter()
            .map(|id| AuthOffer {
                id: id.to_string(),
                name: String::new(),
                terminal: false,
            })
            .collect()
    }

    fn key() -> AuthPlan {
        AuthPlan::Configured(AgentAuth::Key {
            method: "api-key".into(),
            env: "OPENAI_API_KEY".into(),
        })
    }

    #[test]
    fn a_key_method_is_sent_only_when_offered_and_its_variable_is_set() {
        let set = |_: &str| Some("sk-dummy".to_string());
        let unset = |_: &str| None;
        let sent = key().request(&offers(&["api-key"]), set).unwrap();
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            json!({"methodId": "api-key"})
        );
        assert_eq!(
            key().request(&offers(&["api-key"]), unset).unwrap_err(),
            AuthGap::Missing {
                method: "api-key".into(),
                variable: "OPENAI_API_KEY".into()
            }
        );
        let blank = |_: &str| Some(" ".to_string());
        assert!(key().request(&offers(&["api-key"]), blank).is_err());
        assert_eq!(
            key().request(&offers(&["chat-gpt"]), set).unwrap_err(),
            AuthGap::NotOffered {
                method: "api-key".into()
            }
        );
        assert_eq!(
            AuthPlan::Unconfigured.request(&offers(&["api-key"]), set),
            Err(AuthGap::Unconfigured)
        );
        assert_eq!(
            serde_json::to_value(key().capabilities()).unwrap()["auth"],
            json!({"terminal": false})
        );
    }

    #[test]
    fn a_gateway_gets_its_url_and_token_and_the_client_says_it_takes_one() {
        let gateway = AuthPlan::Configured(AgentAuth::Gateway {
            base_url: "http://127.0.0.1:9/v1".into(),
            token_env: "GW_TOKEN".into(),
        });
        let var = |name: &str| (name == "GW_TOKEN").then(|| "t0ken".to_string());
        let sent = gateway.request(&offers(&["gateway"]), var).unwrap();
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            json!({"methodId": "gateway", "_meta": {"gateway": {
                "baseUrl": "http://127.0.0.1:9/v1",
                "headers": {"Authorization": "Bearer t0ken"}
            }}})
        );
        assert_eq!(
            serde_json::to_value(gateway.capabilities()).unwrap()["auth"],
            json!({"terminal": false, "_meta": {"gateway": true}})
        );
    }
}
