//! How the agent protocol names a session on the bus: its subject tokens (agent, owner,
//! session) and the subjects made of them, and the sizes its metadata states.

use base64::Engine;

use crate::domain::NamedSession;

/// The protocol version the services state (`protocol_version`).
pub const PROTOCOL_VERSION: &str = "0.3";
/// The micro service name every agent registers under.
pub const SERVICE: &str = "agents";
/// The queue group of every endpoint.
pub const QUEUE_GROUP: &str = "agents";

/// Whether an agent's name can be a subject's agent token as the SDKs write it:
/// 1-63 of `a-z`, `0-9` and `-`, never escaped.
pub fn exposable_agent(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The owner token of an app: its name when it is a plain token (`a-z`, `0-9`, `_`, `-`),
/// otherwise its UTF-8 in base64url without padding, as the SDKs escape it.
pub fn owner_token(app: &str) -> String {
    let plain = !app.is_empty()
        && app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if plain {
        app.to_string()
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(app.as_bytes())
    }
}

/// The subject tokens of one named session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub agent: String,
    pub owner: String,
    pub session: String,
}

impl Tokens {
    pub fn of(named: &NamedSession) -> Tokens {
        Tokens {
            agent: named.agent.clone(),
            owner: owner_token(named.app.as_str()),
            session: named.name.as_str().to_string(),
        }
    }

    fn subject(&self, verb: &str) -> String {
        format!(
            "agents.{verb}.{}.{}.{}",
            self.agent, self.owner, self.session
        )
    }

    /// Where prompts come.
    pub fn prompt(&self) -> String {
        self.subject("prompt")
    }

    /// Where liveness is asked.
    pub fn status(&self) -> String {
        self.subject("status")
    }

    /// Where heartbeats go.
    pub fn heartbeat(&self) -> String {
        self.subject("hb")
    }
}

/// A size as the `max_payload` metadata writes it: a whole number of `GB`, `MB` or `KB`
/// (base 1024) when it is one, else bytes.
pub fn size_text(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes > 0 && bytes.is_multiple_of(*unit))
        .map(|(unit, name)| format!("{}{name}", bytes / unit))
        .unwrap_or_else(|| format!("{bytes}B"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::{AppName, SessionName};

    #[test]
    fn owners_are_escaped_as_the_sdk_does() {
        assert_eq!(owner_token("notes"), "notes");
        assert_eq!(owner_token("my_app-2"), "my_app-2");
        assert_eq!(owner_token("My App"), "TXkgQXBw");
        assert_eq!(owner_token("Notes"), "Tm90ZXM");
        assert_eq!(owner_token("a.b"), "YS5i");
    }

    #[test]
    fn agents_are_plain_tokens_or_not_exposed() {
        assert!(exposable_agent("claude"));
        assert!(exposable_agent("default"));
        assert!(exposable_agent("gpt-5"));
        assert!(!exposable_agent("my_agent"));
        assert!(!exposable_agent("Claude"));
        assert!(!exposable_agent(""));
        assert!(!exposable_agent(&"a".repeat(64)));
    }

    #[test]
    fn subjects_and_sizes() {
        let named = NamedSession {
            app: AppName::parse("Notes").unwrap(),
            agent: "claude".into(),
            name: SessionName::parse("default").unwrap(),
        };
        let tokens = Tokens::of(&named);
        assert_eq!(tokens.prompt(), "agents.prompt.claude.Tm90ZXM.default");
        assert_eq!(tokens.status(), "agents.status.claude.Tm90ZXM.default");
        assert_eq!(tokens.heartbeat(), "agents.hb.claude.Tm90ZXM.default");
        assert_eq!(size_text(1048576), "1MB");
        assert_eq!(size_text(8 * 1048576), "8MB");
        assert_eq!(size_text(1 << 30), "1GB");
        assert_eq!(size_text(65536), "64KB");
        assert_eq!(size_text(1000), "1000B");
        assert_eq!(size_text(0), "0B");
    }
}
