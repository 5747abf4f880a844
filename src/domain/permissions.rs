//! `forge.session.permission`: the caller's answer to a permission request of a running turn
//! (policy `ask`), reaching the worker that holds the turn (see [`Forge::route`]).

use super::request::PermissionAsked;
use super::{Caller, Forge};
use crate::agent::Answer;
use crate::error::{Error, Result};
use crate::wire;

impl Forge {
    pub async fn answer_permission(
        &self,
        caller: &Caller,
        req: PermissionAsked,
    ) -> Result<wire::PermissionAnswered> {
        let id = req.session_id;
        let row = self.watched_session(caller, &id).await?;
        let session = self.agent_session(&row);
        let span = tracing::info_span!("permission", session = %row.session_id, app = %caller.app);
        let _entered = span.enter();
        let answer = self
            .agent
            .answer(&session, &req.request_id, &req.option_id)
            .await?;
        let accepted = match answer {
            Answer::Taken => true,
            Answer::NotWaiting => false,
            Answer::UnknownOption { offered } => {
                return Err(Error::bad_request(format!(
                    "option_id {:?} is not one of the request's options: {}",
                    req.option_id,
                    offered.join(", ")
                )))
            }
        };
        tracing::info!(request = %req.request_id, accepted, "permission answered by the caller");
        Ok(wire::PermissionAnswered {
            session_id: row.session_id.to_string(),
            request_id: req.request_id,
            accepted,
        })
    }
}
