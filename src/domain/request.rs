//! The requests and replies of the operations, typed: what the pipeline hands the handlers, and
//! what they give back for the transport to send.

use serde::Serialize;

use super::ops::Op;
use super::types::AppName;
use crate::error::Result;
use crate::values::{SessionId, TokenId};
use crate::wire;

/// One request of an operation, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    SessionCreate(wire::CreateSession),
    SessionTurn(TurnAsked),
    SessionCancel(SessionId),
    SessionPermission(PermissionAsked),
    SessionEvents(FollowAsked),
    SessionClose(SessionId),
    SessionGet(SessionId),
    SessionList(wire::Empty),
    Run(wire::RunRequest),
    TokenCreate(wire::TokenCreate),
    TokenList(wire::Empty),
    TokenRevoke(TokenId),
    Health(wire::Empty),
    AppSet(wire::PolicySet),
    AppGet(AppName),
    AppList(wire::Empty),
    Usage(wire::Empty),
    AdminUsage(wire::UsageAsked),
    AdminSessionList(wire::SessionsAsked),
}

/// `forge.session.turn`, its session parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnAsked {
    pub session_id: SessionId,
    pub prompt: String,
    pub files: Vec<wire::FileUpload>,
    pub timeout_secs: Option<u64>,
    /// `false`: answered as soon as the turn is numbered.
    pub wait: bool,
}

/// `forge.session.events`, its session parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowAsked {
    pub session_id: SessionId,
    pub turn: Option<u64>,
    pub after: Option<u64>,
}

/// `forge.session.permission`, its session parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionAsked {
    pub session_id: SessionId,
    pub request_id: String,
    pub option_id: String,
}

/// A session reference's id, parsed.
fn session_ref(body: &[u8]) -> Result<SessionId> {
    let r: wire::SessionRef = wire::decode(body)?;
    SessionId::parse(&r.session_id)
}

fn turn_asked(body: &[u8]) -> Result<TurnAsked> {
    let r: wire::TurnRequest = wire::decode(body)?;
    Ok(TurnAsked {
        session_id: SessionId::parse(&r.session_id)?,
        prompt: r.prompt,
        files: r.files,
        timeout_secs: r.timeout_secs,
        wait: r.wait != Some(false),
    })
}

fn follow_asked(body: &[u8]) -> Result<FollowAsked> {
    let r: wire::EventsRequest = wire::decode(body)?;
    Ok(FollowAsked {
        session_id: SessionId::parse(&r.session_id)?,
        turn: r.turn,
        after: r.after,
    })
}

fn permission_asked(body: &[u8]) -> Result<PermissionAsked> {
    let r: wire::PermissionAnswer = wire::decode(body)?;
    Ok(PermissionAsked {
        session_id: SessionId::parse(&r.session_id)?,
        request_id: r.request_id,
        option_id: r.option_id,
    })
}

fn app_ref(body: &[u8]) -> Result<AppName> {
    let r: wire::AppRef = wire::decode(body)?;
    AppName::parse(&r.app)
}

fn token_ref(body: &[u8]) -> Result<TokenId> {
    let r: wire::TokenRevoke = wire::decode(body)?;
    TokenId::parse(&r.token_id)
}

impl Request {
    /// The request of `op` in the JSON body of the contract, its ids parsed; `bad_request` with
    /// serde's reason when the body is not one, or with the id's when an id is not one.
    pub fn from_json(op: Op, body: &[u8]) -> Result<Request> {
        use wire::decode;
        Ok(match op {
            Op::SessionCreate => Request::SessionCreate(decode(body)?),
            Op::SessionTurn => Request::SessionTurn(turn_asked(body)?),
            Op::SessionCancel => Request::SessionCancel(session_ref(body)?),
            Op::SessionPermission => Request::SessionPermission(permission_asked(body)?),
            Op::SessionEvents => Request::SessionEvents(follow_asked(body)?),
            Op::SessionClose => Request::SessionClose(session_ref(body)?),
            Op::SessionGet => Request::SessionGet(session_ref(body)?),
            Op::SessionList => Request::SessionList(decode(body)?),
            Op::Run => Request::Run(decode(body)?),
            Op::TokenCreate => Request::TokenCreate(decode(body)?),
            Op::TokenList => Request::TokenList(decode(body)?),
            Op::TokenRevoke => Request::TokenRevoke(token_ref(body)?),
            Op::Health => Request::Health(decode(body)?),
            Op::AppSet => Request::AppSet(decode(body)?),
            Op::AppGet => Request::AppGet(app_ref(body)?),
            Op::AppList => Request::AppList(decode(body)?),
            Op::Usage => Request::Usage(decode(body)?),
            Op::AdminUsage => Request::AdminUsage(decode(body)?),
            Op::AdminSessionList => Request::AdminSessionList(decode(body)?),
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
            Request::AppSet(_) => Op::AppSet,
            Request::AppGet(_) => Op::AppGet,
            Request::AppList(_) => Op::AppList,
            Request::Usage(_) => Op::Usage,
            Request::AdminUsage(_) => Op::AdminUsage,
            Request::AdminSessionList(_) => Op::AdminSessionList,
        }
    }
}

/// The `session_id` of a JSON body, read leniently (any other field, or none, is fine): where
/// a request about a session is served is known before the caller is. `None` when there is no
/// session id in it.
pub fn session_in_json(body: &[u8]) -> Option<SessionId> {
    #[derive(serde::Deserialize)]
    struct About {
        session_id: String,
    }
    let about = serde_json::from_slice::<About>(body).ok()?;
    SessionId::parse(&about.session_id).ok()
}

/// The reply of an operation, serialized as the wire type it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Session(wire::Session),
    Sessions(wire::SessionList),
    SessionPage(wire::SessionPage),
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
    Policy(wire::Policy),
    Policies(wire::PolicyList),
    Usage(wire::Usage),
    UsageDays(wire::UsageDays),
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
    SessionPage(wire::SessionPage),
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
    Policy(wire::Policy),
    Policies(wire::PolicyList),
    Usage(wire::Usage),
    UsageDays(wire::UsageDays),
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
        let id = SessionId::new();
        let body = format!(r#"{{"prompt":"x","session_id":"{id}"}}"#);
        assert_eq!(session_in_json(body.as_bytes()), Some(id));
        assert_eq!(session_in_json(br#"{"session_id":"abc"}"#), None);
        assert_eq!(session_in_json(br#"{"session_id":5}"#), None);
        assert_eq!(session_in_json(b"nope"), None);
        let body = format!(r#"{{"session_id":"{id}"}}"#);
        let decoded = Request::from_json(Op::SessionGet, body.as_bytes()).unwrap();
        assert_eq!(decoded, Request::SessionGet(id));
        let bad = Request::from_json(Op::SessionGet, br#"{"session_id":"abc"}"#).unwrap_err();
        assert_eq!(bad.kind, crate::error::ErrorKind::BadRequest);
        assert!(Request::from_json(Op::SessionGet, br#"{"session":"abc"}"#).is_err());
    }
}
