//! Streamed replies (contract v2): the events of a live turn as they happen, heartbeats while
//! nothing else goes out, then one final message and the empty sentinel — all published to the
//! request's reply subject, in order, from one task.

use std::future::Future;
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::reply::{error_reply, fit};
use crate::domain::{Outcome, Reply};
use crate::error::Result;
use crate::wire;

/// The way back of one streamed request.
pub(super) struct Streamer {
    pub client: async_nats::Client,
    pub reply: Subject,
    pub heartbeat: Duration,
    pub max_payload: usize,
}

impl Streamer {
    async fn send(&self, kind: &str, headers: Option<HeaderMap>, body: Bytes) {
        let mut headers = headers.unwrap_or_default();
        headers.insert(wire::EVENT_HEADER, kind);
        if let Err(e) = self
            .client
            .publish_with_headers(self.reply.clone(), headers, body)
            .await
        {
            tracing::debug!(error = %e, "a streamed message could not be sent");
        }
    }

    async fn event(&self, event: &wire::Event) {
        let body = serde_json::to_vec(event).expect("an event serializes");
        self.send(event.body.kind(), None, body.into()).await;
    }

    /// The final message (`final_kind` with the reply, or `error`), then the sentinel.
    pub(super) async fn finish(&self, final_kind: &str, result: Result<Bytes>) {
        match result.and_then(|body| fit(body, self.max_payload)) {
            Ok(body) => self.send(final_kind, None, body).await,
            Err(err) => {
                let (headers, body) = error_reply(&err);
                self.send("error", Some(headers), body).await;
            }
        }
        if let Err(e) = self.client.publish(self.reply.clone(), Bytes::new()).await {
            tracing::debug!(error = %e, "the end of a stream could not be sent");
        }
    }

    /// Runs `work` and relays the events it sends into `events` as they come, with heartbeats
    /// while there is nothing to send; then the final message and the sentinel. `work` fails
    /// before anything ran: then the stream is its error alone. Returns the result's outcome.
    pub async fn serve<Fut>(
        &self,
        final_kind: &str,
        events: mpsc::Receiver<wire::Event>,
        work: Fut,
    ) -> Outcome
    where
        Fut: Future<Output = Result<Reply>>,
    {
        let result = self.relay(work, events).await;
        let outcome = crate::domain::outcome_of(&result);
        let encoded = result.map(|r| serde_json::to_vec(&r).expect("reply serializes").into());
        self.finish(final_kind, encoded).await;
        outcome
    }

    async fn relay<Fut: Future<Output = Result<Reply>>>(
        &self,
        work: Fut,
        mut events: mpsc::Receiver<wire::Event>,
    ) -> Result<Reply> {
        tokio::pin!(work);
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut beat = tokio::time::interval_at(start, self.heartbeat);
        let (mut open, mut done) = (true, None);
        // Events first: every event of the turn goes out before its final message.
        loop {
            tokio::select! {
                biased;
                event = events.recv(), if open => match event {
                    Some(event) => {
                        self.event(&event).await;
                        beat.reset();
                    }
                    None => open = false,
                },
                result = &mut work, if done.is_none() => done = Some(result),
                _ = beat.tick() => self.send("heartbeat", None, Bytes::from_static(b"{}")).await,
            }
            if !open {
                if let Some(result) = done.take() {
                    return result;
                }
            }
        }
    }
}
