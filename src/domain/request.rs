//! The requests and replies of the operations, typed: what the pipeline hands the handlers, and
//! what they give back for the transport to send.

use serde::Serialize;

use super::ops::Op;
use crate::error::Result;
use crate::wire;

/// One request of an operation, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    SessionCreate(wire::CreateSession),
    SessionTurn(wire::TurnRequest),
    SessionCancel(wire::SessionRef),
    SessionPermission(wire::PermissionAnswer),
    SessionEvents(wire::EventsRequest),
    SessionClose(wire::SessionRef),
    SessionGet(wire::SessionRef),
    SessionList(wire::Empty),
    Run(wire::RunRequest),
    TokenCreate(wire::TokenCreate),
    TokenList(wire::Empty),
    TokenRevoke(wire::TokenRevoke),
    Health(wire::Empty),
}

impl Request {
    /// The request of `op` in the JSON body of the contract; `bad_request` with serde's reason
    /// when the body is not one.
    pub fn from_json(op: Op, body: &[u8]) -> Result<Request> {
        use wire::decode;
        Ok(match op {
            Op::SessionCreate => Request::SessionCreate(decode(body)?),
            Op::SessionTurn => Request::SessionTurn(decode(body)?),
            Op::SessionCancel => Request::SessionCancel(decode(body)?),
            Op::SessionPermission => Request::SessionPermission(decode(body)?),
            Op::SessionEvents => Request::SessionEvents(decode(body)?),
            Op::SessionClose => Request::SessionClose(decode(body)?),
            Op::SessionGet => Request::SessionGet(decode(body)?),
            Op::SessionList => Request::SessionList(decode(body)?),
            Op::Run => Request::Run(decode(body)?),
            Op::TokenCreate => Request::TokenCreate(decode(body)?),
            Op::TokenList => Request::TokenList(decode(body)?),
            Op::TokenRevoke => Request::TokenRevoke(decode(body)?),
            Op::Health => Request::Health(decode(body)?),
        })
    }

    /// Its operation.
    pub fn op(&self) -> Op {
        match self {
            Request::SessionCreate(_) => Op::SessionCreate,
            Request::SessionTurn(_) => Op::SessionTurn,
            Request::SessionCancel(_) => Op::SessionCancel,
            Request::SessionPermission(_) => Op::SessionPermission,
            Request::SessionEvents(_) => Op::SessionEvents,
            Request::SessionClose(_) => Op::SessionClose,
            Request::SessionGet(_) => Op::SessionGet,
            Request::SessionList(_) => Op::SessionList,
            Request::Run(_) => Op::Run,
            Request::TokenCreate(_) => Op::TokenCreate,
            Request::TokenList(_) => Op::TokenList,
            Request::TokenRevoke(_) => Op::TokenRevoke,
            Request::Health(_) => Op::Health,
        }
    }
}

/// The `session_id` of a JSON body, read leniently (any other field, or none, is fine): where
/// a request about a session is served is known before the caller is.
pub fn session_in_json(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct About {
        session_id: String,
    }
    serde_json::from_slice::<About>(body)
        .ok()
        .map(|a| a.session_id)
}

/// The reply of an operation, serialized as the wire type it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Session(wire::Session),
    Sessions(wire::SessionList),
    Turn(wire::Turn),
    Accepted(wire::TurnAccepted),
    Cancelled(wire::Cancelled),
    Permission(wire::PermissionAnswered),
    Closed(wire::SessionClosed),
    Run(wire::Run),
    TokenCreated(wire::TokenCreated),
    Tokens(wire::TokenList),
    TokenRevoked(wire::TokenRevoked),
    Health(wire::Health),
}

macro_rules! replies {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Reply {
            fn from(reply: $ty) -> Reply {
                Reply::$variant(reply)
            }
        })*
    };
}

replies!(
    Session(wire::Session),
    Sessions(wire::SessionList),
    Turn(wire::Turn),
    Accepted(wire::TurnAccepted),
    Cancelled(wire::Cancelled),
    Permission(wire::PermissionAnswered),
    Closed(wire::SessionClosed),
    Run(wire::Run),
    TokenCreated(wire::TokenCreated),
    Tokens(wire::TokenList),
    TokenRevoked(wire::TokenRevoked),
    Health(wire::Health),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_serializes_as_the_wire_type_it_holds() {
        let closed = wire::SessionClosed {
            session_id: "s".into(),
            closed: true,
            already_closed: false,
        };
        assert_eq!(
            serde_json::to_value(Reply::from(closed.clone())).unwrap(),
            serde_json::to_value(closed).unwrap()
        );
    }

    #[test]
    fn the_session_is_read_leniently() {
        assert_eq!(
            session_in_json(br#"{"prompt":"x","session_id":"abc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(session_in_json(br#"{"session_id":5}"#), None);
        assert_eq!(session_in_json(b"nope"), None);
        let decoded = Request::from_json(Op::SessionGet, br#"{"session_id":"abc"}"#).unwrap();
        assert_eq!(decoded.op(), Op::SessionGet);
        assert!(Request::from_json(Op::SessionGet, br#"{"session":"abc"}"#).is_err());
    }
}
