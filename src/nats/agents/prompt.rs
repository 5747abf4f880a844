//! A prompt's payload (§5 of the protocol) as the pipeline's [`Body`]: plain UTF-8 text, or a
//! JSON envelope `{"prompt", "attachments": [{"filename", "content"}]}` (base64 content; other
//! fields tolerated), a turn of the session its subject names.

use bytes::Bytes;
use serde::Deserialize;

use crate::domain::request::TurnAsked;
use crate::domain::{Body, NamedSession, Op, Request};
use crate::error::{Error, Result};
use crate::values::SessionId;
use crate::wire;

/// What a prompt asks: its text and its attached files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompted {
    pub text: String,
    pub files: Vec<wire::FileUpload>,
}

#[derive(Deserialize)]
struct Envelope {
    prompt: String,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

#[derive(Deserialize)]
struct Attachment {
    filename: String,
    content: String,
}

/// The payload read as §5.3 says: after leading blanks, `{` starts an envelope; anything else
/// is the text. An empty payload, an envelope that is not one, or an empty prompt is
/// `bad_request`.
pub fn read(payload: &[u8]) -> Result<Prompted> {
    if payload.is_empty() {
        return Err(Error::bad_request("the prompt is empty"));
    }
    let start = payload
        .iter()
        .position(|b| !matches!(b, b'\t' | b'\n' | b'\r' | b' '));
    let prompted = if start.is_some_and(|i| payload[i] == b'{') {
        envelope(payload)?
    } else {
        let text = std::str::from_utf8(payload)
            .map_err(|_| Error::bad_request("the prompt is not UTF-8 text"))?;
        Prompted {
            text: text.to_string(),
            files: Vec::new(),
        }
    };
    if prompted.text.is_empty() {
        return Err(Error::bad_request("the prompt is empty"));
    }
    Ok(prompted)
}

/// A JSON envelope: its prompt, its attachments as a turn's files.
fn envelope(payload: &[u8]) -> Result<Prompted> {
    let envelope: Envelope = serde_json::from_slice(payload)
        .map_err(|e| Error::bad_request(format!("not a prompt envelope: {e}")))?;
    let files = envelope.attachments.into_iter().map(|a| wire::FileUpload {
        name: a.filename,
        content_base64: a.content,
    });
    Ok(Prompted {
        text: envelope.prompt,
        files: files.collect(),
    })
}

/// A prompt to the named session of its subject.
pub struct PromptBody {
    pub named: NamedSession,
    pub payload: Bytes,
}

impl Body for PromptBody {
    fn session_hint(&self) -> Option<SessionId> {
        None
    }

    fn decode(&self, _op: Op) -> Result<Request> {
        Err(Error::internal(
            "a prompt is a turn of the session it names",
        ))
    }

    fn named_session(&self) -> Option<&NamedSession> {
        Some(&self.named)
    }

    fn decode_in(&self, _op: Op, id: SessionId) -> Result<Request> {
        let prompted = read(&self.payload)?;
        Ok(Request::SessionTurn(TurnAsked {
            session_id: id,
            prompt: prompted.text,
            files: prompted.files,
            timeout_secs: None,
            wait: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn text_or_envelope() {
        assert_eq!(read(b"hello").unwrap().text, "hello");
        assert_eq!(read(b"  not { json").unwrap().text, "  not { json");
        let envelope = read(
            br#" {"prompt":"look","attachments":[{"filename":"a.txt","content":"aGk=","mime":"x"}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(envelope.text, "look");
        assert_eq!(
            envelope.files,
            [wire::FileUpload {
                name: "a.txt".into(),
                content_base64: "aGk=".into()
            }]
        );
    }

    #[test]
    fn empty_or_broken_prompts_are_bad_requests() {
        for bad in [
            &b""[..],
            b"{",
            br#"{"attachments":[]}"#,
            br#"{"prompt":5}"#,
            br#"{"prompt":""}"#,
            b"\xff\xfe",
        ] {
            let err = read(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest, "{bad:?}");
        }
    }
}
