//! The agent protocol's row: a short native turn prompted over the Synadia Agent Protocol
//! (a prompt, its ack, its response chunks and its terminator) against the same turn of the
//! same session through `forge.session.turn`, interleaved on one deployment.

use std::time::Duration;

use async_nats::HeaderMap;
use clawdforge::wire::CreateSession;
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::harness::Forge;
use crate::{interleaved, latency_row, real, start_forge, turn, Report};

const APP: &str = "bench-protocol";

pub async fn rows(standin: &real::Standin, report: &mut Report, quick: bool) {
    let on = [("CLAWDFORGE_AGENT_PROTOCOL", "true")];
    let forge = start_forge(standin, &on).await;
    let app = forge.app(APP).await;
    let named = CreateSession {
        agent: Some("native".into()),
        name: Some("bench".into()),
        ..Default::default()
    };
    let sid = app.create_session(&named).await.unwrap().session_id;
    let caller = Caller::new(&forge, app.token().unwrap()).await;
    let n = if quick { 150 } else { 500 };
    let samples = interleaved(2, n, |v, i| {
        let (app, sid, caller) = (&app, &sid, &caller);
        async move {
            let text = format!("short turn {i}");
            if v == 0 {
                app.turn(&turn(sid, &text)).await.unwrap();
            } else {
                caller.prompt(&text).await;
            }
        }
    })
    .await;
    let what = "short turn (acp) p50";
    let (p50, paired) = latency_row(
        report,
        what,
        "over the agent protocol",
        "forge.session.turn",
        &samples,
    );
    let ratio = 1.0 + p50 / 100.0;
    let verdict = if ratio < 1.2 { "under" } else { "NOT under" };
    report.note(&format!(
        "agent protocol: a short turn's p50 is {ratio:.2}× forge.session.turn's (paired \
         {paired:+.1} %): {verdict} the goal of 1.2×"
    ));
}

/// A caller of the protocol as the SDKs are: one subscription for every prompt's replies.
struct Caller {
    nats: async_nats::Client,
    prefix: String,
    replies: Mutex<async_nats::Subscriber>,
    headers: HeaderMap,
}

impl Caller {
    /// Returns once the session's `agents` service answers (the workers register it within
    /// their reconcile period).
    async fn new(forge: &Forge, token: &str) -> Caller {
        let nats = async_nats::connect(&forge.nats.url).await.unwrap();
        let prefix = nats.new_inbox();
        let replies = nats.subscribe(format!("{prefix}.*")).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", format!("Bearer {token}").as_str());
        let caller = Caller {
            nats,
            prefix,
            replies: Mutex::new(replies),
            headers,
        };
        for _ in 0..100 {
            if caller.try_prompt("warm up").await {
                return caller;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the session's agents service never answered");
    }

    async fn prompt(&self, text: &str) {
        assert!(self.try_prompt(text).await, "a prompt failed");
    }

    /// A prompt and its whole stream, to its terminator: whether a response came and no error.
    async fn try_prompt(&self, text: &str) -> bool {
        let mut replies = self.replies.lock().await;
        let reply = format!("{}.{}", self.prefix, uuid::Uuid::new_v4().simple());
        let subject = format!("agents.prompt.native.{APP}.bench");
        let body = text.to_string().into();
        let sent = self.nats.publish_with_reply_and_headers(
            subject,
            reply.clone(),
            self.headers.clone(),
            body,
        );
        sent.await.unwrap();
        let mut answered = false;
        let wait = Duration::from_secs(30);
        while let Ok(Some(m)) = tokio::time::timeout(wait, replies.next()).await {
            // What is left of an earlier prompt given up on.
            if m.subject.as_str() != reply {
                continue;
            }
            // An error (or "no responders" before the service is there) has headers.
            if m.headers.is_some() || m.status.is_some() {
                return false;
            }
            if m.payload.is_empty() {
                return answered;
            }
            answered |= m.payload.starts_with(br#"{"type":"response""#);
        }
        false
    }
}
