//! Permission requests as queries (§7 of the protocol): a turn's `permission_request` becomes a
//! `query` chunk naming the tool and its options, with a reply subject of the worker's; the
//! caller's one reply (text, or an envelope's prompt) naming an option by id or name
//! (case-insensitive) answers it, anything else rejects it. The answer goes through the
//! pipeline as a `forge.session.permission` of the prompt's caller, recorded as any; a request
//! nobody answers is rejected at the agent's permission timeout, as today.

use std::future::Future;
use std::sync::Arc;

use async_nats::Subject;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::outlet::chunk;
use super::prompt;
use crate::domain::{Forge, Handed, Op, Outcome, Outlet, Reply};
use crate::error::Result;
use crate::nats::forge::JsonBody;
use crate::telemetry::trace::TraceContext;
use crate::wire::{self, PermissionOption};

/// A query chunk's data, its fields in the protocol's order.
#[derive(serde::Serialize)]
struct Query<'a> {
    id: &'a str,
    reply_subject: &'a str,
    prompt: &'a str,
}

/// Where a query's reply subject is: `forge.query.<random id>`.
pub const QUERY_PREFIX: &str = "forge.query";

/// A permission request of a running turn, as the caller is asked it.
pub struct Asked {
    pub session_id: String,
    pub request_id: String,
    pub title: Option<String>,
    pub options: Vec<PermissionOption>,
}

impl Asked {
    /// The question: the tool, then each option's id and name.
    pub fn question(&self) -> String {
        let title = self.title.as_deref().unwrap_or("A tool call");
        let options: Vec<String> = self
            .options
            .iter()
            .map(|o| format!("{} ({})", o.option_id, o.name))
            .collect();
        format!("{title} — reply one of: {}", options.join(", "))
    }

    /// The option a reply names (its id or name, case-insensitive, the reply read as a prompt
    /// is), or else the first that rejects.
    pub fn chosen(&self, reply: &[u8]) -> Option<&PermissionOption> {
        let named = prompt::read(reply).ok().and_then(|p| {
            let text = p.text.trim().to_string();
            self.options.iter().find(|o| {
                o.option_id.eq_ignore_ascii_case(&text) || o.name.eq_ignore_ascii_case(&text)
            })
        });
        named.or_else(|| self.options.iter().find(|o| o.kind.starts_with("reject")))
    }
}

/// Asks the caller at `reply` and answers the request with what it replies, as the caller with
/// `token`. Runs until answered (or aborted with its turn).
pub async fn ask(
    client: async_nats::Client,
    forge: Arc<Forge>,
    token: Option<String>,
    reply: Subject,
    asked: Asked,
) {
    // Under forge.>, which app users may publish to (and accounts import), unlike _INBOX.>.
    let inbox = format!("{QUERY_PREFIX}.{}", uuid::Uuid::new_v4().simple());
    let mut replies = match client.subscribe(inbox.clone()).await {
        Ok(replies) => replies,
        Err(e) => {
            tracing::warn!(error = %e, "a permission query could not be asked");
            return;
        }
    };
    let data = Query {
        id: &asked.request_id,
        reply_subject: &inbox,
        prompt: &asked.question(),
    };
    if let Err(e) = client.publish(reply, chunk("query", data)).await {
        tracing::debug!(error = %e, "a permission query could not be sent");
        return;
    }
    let Some(answer) = replies.next().await else {
        return;
    };
    let Some(option) = asked.chosen(&answer.payload) else {
        return;
    };
    let body = json!({
        "session_id": asked.session_id,
        "request_id": asked.request_id,
        "option_id": option.option_id,
    });
    let mut outlet = Answer::default();
    let body = JsonBody(body.to_string().into());
    forge
        .serve(Op::SessionPermission, token.as_deref(), body, &mut outlet)
        .await;
    if let Some(Err(err)) = outlet.result {
        tracing::info!(error = %err, "a permission query's answer was refused");
    }
}

/// Where the pipeline's reply to a query's answer goes: kept, for the log.
#[derive(Default)]
struct Answer {
    result: Option<Result<Reply>>,
}

impl Outlet for Answer {
    fn passed_on(&self) -> bool {
        false
    }

    fn stream_asked(&self) -> bool {
        false
    }

    /// The turn runs here, where its stream is: never passed on.
    async fn pass_on(&mut self, _op: Op, _worker_id: &str) -> Handed {
        Handed::Failed
    }

    fn reply(&mut self, reply: Result<Reply>) -> impl Future<Output = ()> + Send {
        self.result = Some(reply);
        async {}
    }

    async fn stream<F>(&mut self, _events: mpsc::Receiver<wire::Event>, work: F) -> Outcome
    where
        F: Future<Output = Result<Reply>> + Send,
    {
        let result = work.await;
        let outcome = crate::domain::outcome_of(&result);
        self.result = Some(result);
        outcome
    }

    fn answered(&self) -> bool {
        self.result.is_some()
    }

    fn trace(&self) -> Option<TraceContext> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(id: &str, name: &str, kind: &str) -> PermissionOption {
        PermissionOption {
            option_id: id.into(),
            name: name.into(),
            kind: kind.into(),
        }
    }

    fn asked() -> Asked {
        Asked {
            session_id: "s".into(),
            request_id: "r".into(),
            title: Some("Run tests".into()),
            options: vec![
                option("ok-1", "Allow once", "allow_once"),
                option("no-1", "Deny", "reject_once"),
            ],
        }
    }

    #[test]
    fn the_question_names_the_tool_and_the_options() {
        assert_eq!(
            asked().question(),
            "Run tests — reply one of: ok-1 (Allow once), no-1 (Deny)"
        );
    }

    #[test]
    fn a_reply_names_an_option_by_id_or_name_anything_else_rejects() {
        let asked = asked();
        let id = |reply: &[u8]| asked.chosen(reply).map(|o| o.option_id.as_str());
        assert_eq!(id(b"OK-1"), Some("ok-1"));
        assert_eq!(id(b" allow once\n"), Some("ok-1"));
        assert_eq!(id(br#"{"prompt":"Allow Once"}"#), Some("ok-1"));
        assert_eq!(id(b"deny"), Some("no-1"));
        assert_eq!(id(b"yes please"), Some("no-1"));
        assert_eq!(id(b""), Some("no-1"));
    }
}
