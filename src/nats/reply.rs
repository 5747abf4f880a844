//! What every reply on NATS shares: the room its headers need, and the form of an error.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::wire;

/// Room left in a message for the reply's headers.
const HEADER_ROOM: usize = 4096;

/// A reply the server would refuse must not vanish: the caller hears why instead.
pub(super) fn fit(reply: Bytes, max_payload: usize) -> Result<Bytes> {
    if max_payload > 0 && reply.len() + HEADER_ROOM > max_payload {
        return Err(Error::payload_too_large(format!(
            "the reply is {} bytes, more than the NATS server's max_payload of {max_payload}",
            reply.len()
        )));
    }
    Ok(reply)
}

/// The headers and JSON body of an error reply.
pub fn error_reply(err: &Error) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        wire::ERROR_CODE_HEADER,
        err.kind.status().to_string().as_str(),
    );
    // Header values cannot hold line breaks.
    let message: String = err
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(wire::ERROR_HEADER, message.as_str());
    let body = serde_json::to_vec(&wire::ErrorBody::from(err)).expect("error body serializes");
    (headers, body.into())
}
