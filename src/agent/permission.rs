//! ACP's permission requests in the contract's terms, for every backend: which options allow,
//! which option a policy selects, what an answer decided, and the `permission` event that says
//! so. A request is ACP's JSON (`session/request_permission`'s params, or the request as acpx
//! printed it), so acpx's NDJSON and a native connection are read the same way.

use serde_json::Value;

use super::updates;
use crate::agent::def::PermissionPolicy;
use crate::wire::{DecidedBy, EventBody, PermissionDecision, PermissionOption};

/// The option kinds a policy selects, in order of preference.
const ALLOW_KINDS: [&str; 2] = ["allow_once", "allow_always"];
const REJECT_KINDS: [&str; 2] = ["reject_once", "reject_always"];

/// Whether an option of this kind (`allow_once`, `allow_always`, …) allows what was asked.
pub fn allows(option_kind: &str) -> bool {
    option_kind.starts_with("allow")
}

/// The decision of selecting an option of this kind.
pub fn decision_of_kind(option_kind: &str) -> PermissionDecision {
    if allows(option_kind) {
        PermissionDecision::Allowed
    } else {
        PermissionDecision::Rejected
    }
}

/// What an answer to a permission request decided: its `outcome` (`selected`/`cancelled`) and
/// the `kind` of the option it selected.
pub fn decision(outcome: Option<&str>, option_kind: Option<&Value>) -> PermissionDecision {
    match (outcome, option_kind.and_then(Value::as_str)) {
        (Some("selected"), Some(kind)) => decision_of_kind(kind),
        (Some("cancelled"), _) => PermissionDecision::Cancelled,
        _ => PermissionDecision::Rejected,
    }
}

/// Whether `policy` allows a tool call of this kind (ACP's `toolCall.kind`); `ask` decides
/// nothing itself and so allows nothing.
pub fn policy_allows(policy: PermissionPolicy, tool_kind: &str) -> bool {
    match policy {
        PermissionPolicy::AllowAll => true,
        PermissionPolicy::AllowReads => matches!(tool_kind, "read" | "search"),
        PermissionPolicy::DenyAll | PermissionPolicy::Ask => false,
    }
}

/// What `policy` selects for a request: the id of the first option of the right kind and its
/// decision, or `None` when the request offers no such option (the answer is then
/// `cancelled`).
pub fn by_policy(
    policy: PermissionPolicy,
    request: &Value,
) -> Option<(String, PermissionDecision)> {
    let kind = request["toolCall"]["kind"].as_str().unwrap_or_default();
    let allow = policy_allows(policy, kind);
    let wanted = if allow { ALLOW_KINDS } else { REJECT_KINDS };
    let offered = request["options"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chosen = wanted
        .iter()
        .find_map(|k| offered.iter().find(|o| o["kind"] == *k))?;
    let id = chosen["optionId"].as_str()?;
    let decision = if allow {
        PermissionDecision::Allowed
    } else {
        PermissionDecision::Rejected
    };
    Some((id.to_string(), decision))
}

/// The options a request offers, as the contract names them.
pub fn options(request: &Value) -> Vec<PermissionOption> {
    let listed = request["options"].as_array().map(Vec::as_slice);
    listed
        .unwrap_or_default()
        .iter()
        .filter_map(|o| {
            Some(PermissionOption {
                option_id: o["optionId"].as_str()?.to_string(),
                name: o["name"].as_str().unwrap_or_default().to_string(),
                kind: o["kind"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The kind of the option `option_id` of a request; empty when it offers none such.
pub fn kind_of(request: &Value, option_id: &str) -> String {
    options(request)
        .into_iter()
        .find(|o| o.option_id == option_id)
        .map(|o| o.kind)
        .unwrap_or_default()
}

/// The request's tool call: its title and id, as events name it.
pub fn tool_call(request: &Value) -> (Option<String>, Option<String>) {
    let call = &request["toolCall"];
    (
        updates::string(&call["title"]),
        updates::string(&call["toolCallId"]),
    )
}

/// The `permission` event of a request decided `by` someone.
pub fn event(request: &Value, decision: PermissionDecision, by: DecidedBy) -> EventBody {
    let (title, tool_call_id) = tool_call(request);
    EventBody::Permission {
        title,
        tool_call_id,
        decision,
        by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(kind: &str) -> Value {
        serde_json::json!({
            "sessionId": "s",
            "toolCall": {"toolCallId": "c1", "title": "t", "kind": kind},
            "options": [
                {"optionId": "yes", "name": "Allow", "kind": "allow_once"},
                {"optionId": "no", "name": "Reject", "kind": "reject_once"}
            ]
        })
    }

    #[test]
    fn each_policy_selects_the_option_of_its_kind() {
        use PermissionPolicy::*;
        let cases = [
            (AllowAll, "edit", "yes", PermissionDecision::Allowed),
            (AllowReads, "read", "yes", PermissionDecision::Allowed),
            (AllowReads, "search", "yes", PermissionDecision::Allowed),
            (AllowReads, "execute", "no", PermissionDecision::Rejected),
            (DenyAll, "read", "no", PermissionDecision::Rejected),
            (Ask, "read", "no", PermissionDecision::Rejected),
        ];
        for (policy, kind, option, decision) in cases {
            let chosen = by_policy(policy, &asked(kind));
            assert_eq!(chosen, Some((option.into(), decision)), "{policy:?} {kind}");
        }
        let mut only_allow = asked("execute");
        only_allow["options"].as_array_mut().unwrap().pop();
        assert_eq!(by_policy(DenyAll, &only_allow), None);
    }

    #[test]
    fn an_answer_allows_only_by_an_allowing_option() {
        let kind = |k: &str| Value::String(k.into());
        for (outcome, option_kind, want) in [
            (
                Some("selected"),
                Some("allow_once"),
                PermissionDecision::Allowed,
            ),
            (
                Some("selected"),
                Some("allow_always"),
                PermissionDecision::Allowed,
            ),
            (
                Some("selected"),
                Some("reject_once"),
                PermissionDecision::Rejected,
            ),
            (Some("selected"), None, PermissionDecision::Rejected),
            (Some("cancelled"), None, PermissionDecision::Cancelled),
            (None, Some("allow_once"), PermissionDecision::Rejected),
        ] {
            let k = option_kind.map(kind);
            assert_eq!(
                decision(outcome, k.as_ref()),
                want,
                "{outcome:?} {option_kind:?}"
            );
        }
        assert_eq!(kind_of(&asked("read"), "no"), "reject_once");
        assert_eq!(kind_of(&asked("read"), "maybe"), "");
    }
}
