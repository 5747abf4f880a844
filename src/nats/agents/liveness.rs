//! Liveness (§8 of the protocol): the heartbeat a session's service publishes every interval,
//! and the same payload as the `status` endpoint's answer, which needs no token.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::names::Tokens;

/// What a session's service says of itself.
pub struct Liveness {
    pub tokens: Tokens,
    pub instance_id: String,
    pub interval: Duration,
}

impl Liveness {
    /// `{"agent", "owner", "session", "instance_id", "ts", "interval_s"}`, `ts` now.
    pub fn payload(&self) -> Bytes {
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let body = json!({
            "agent": self.tokens.agent,
            "owner": self.tokens.owner,
            "session": self.tokens.session,
            "instance_id": self.instance_id,
            "ts": ts,
            "interval_s": self.interval.as_secs(),
        });
        body.to_string().into()
    }
}

/// Publishes the heartbeat now, then every interval.
pub async fn beat(client: async_nats::Client, liveness: std::sync::Arc<Liveness>) {
    let subject = liveness.tokens.heartbeat();
    let mut every = tokio::time::interval(liveness.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = client.publish(subject.clone(), liveness.payload()).await {
            tracing::debug!(error = %e, subject, "a heartbeat could not be sent");
        }
    }
}

/// Answers every `status` request with the liveness payload.
pub async fn answer_status(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    liveness: std::sync::Arc<Liveness>,
) {
    use futures::StreamExt;
    while let Some(request) = endpoint.next().await {
        if let Err(e) = request.respond(Ok(liveness.payload())).await {
            tracing::debug!(error = %e, "a status request could not be answered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_heartbeat_the_sdk_reads() {
        let liveness = Liveness {
            tokens: Tokens {
                agent: "claude".into(),
                owner: "notes".into(),
                session: "default".into(),
            },
            instance_id: "abc".into(),
            interval: Duration::from_secs(30),
        };
        let v: serde_json::Value = serde_json::from_slice(&liveness.payload()).unwrap();
        assert_eq!(v["agent"], "claude");
        assert_eq!(v["owner"], "notes");
        assert_eq!(v["session"], "default");
        assert_eq!(v["instance_id"], "abc");
        assert_eq!(v["interval_s"], 30);
        let ts = v["ts"].as_str().unwrap();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
