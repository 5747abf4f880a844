//! A turn's recorded events read with `forge.session.events`, through the sidecar's stream
//! relay (the same first-frame path as its server-sent events).

use super::{typed, Admin, Sidecar};
use crate::client::{Caller, Frame};
use crate::domain::Op;
use crate::error::Error;
use crate::http::forward::reply_parts;
use crate::http::sse::next_frame;
use crate::wire;

/// A turn's events and how it ended.
pub(super) struct Replay {
    pub(super) events: Vec<wire::Event>,
    pub(super) end: Result<wire::Turn, Error>,
}

/// The events `asked` names, to the turn's end: call it for a turn that has ended, or it
/// follows the turn until it does.
pub(super) async fn replay(s: &Sidecar, admin: &Admin, asked: &wire::EventsRequest) -> Replay {
    let mut events = Vec::new();
    let end = read(s, admin, asked, &mut events).await;
    Replay { events, end }
}

async fn read(
    s: &Sidecar,
    admin: &Admin,
    asked: &wire::EventsRequest,
    events: &mut Vec<wire::Event>,
) -> Result<wire::Turn, Error> {
    let body = serde_json::to_vec(asked).map_err(Error::internal)?;
    let caller = Caller::new(Some(&admin.0.authorization), None);
    let subject = Op::SessionEvents.subject();
    let (mut frame, mut rest) = s.first_frame(subject, caller, body.into()).await?;
    loop {
        match frame {
            Frame::Event(event) => events.push(event),
            Frame::Heartbeat => {}
            Frame::Reply(reply) => return typed(reply_parts(reply)),
        }
        frame = next_frame(&mut rest)
            .await
            .map_err(|err| s.stream_failure(subject, err))?;
    }
}
