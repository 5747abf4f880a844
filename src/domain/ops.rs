//! Every operation of the contract, once: its NATS subject, its HTTP route, whether its reply
//! streams, where it is served and who may call it. The NATS endpoints, the subjects requests
//! are passed on with, the sidecar's router and its OpenAPI document are all read from here.

use crate::wire::subject;

/// One operation of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    SessionCreate,
    SessionTurn,
    SessionCancel,
    SessionPermission,
    SessionEvents,
    SessionClose,
    SessionGet,
    SessionList,
    Run,
    TokenCreate,
    TokenList,
    TokenRevoke,
    Health,
    AppSet,
    AppGet,
    AppList,
    Usage,
    AdminUsage,
    AdminSessionList,
}

/// Whether an operation's reply is a stream of events (contract v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    Never,
    /// When the caller asks (`Forge-Stream: 1`, or `Accept: text/event-stream` over HTTP).
    OnRequest,
    Always,
}

/// Which worker serves an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Whichever worker of the queue group takes it.
    Anywhere,
    /// The worker that owns the session (a native session's agent process lives there).
    Owner,
    /// The worker running the session's current turn.
    TurnHolder,
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any valid token; the caller sees its own app's sessions only.
    App,
    /// An admin token.
    Admin,
}

/// The HTTP methods of the sidecar's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// An operation's HTTP route on the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// In axum's syntax: `/sessions/{id}`.
    pub path: &'static str,
}

const fn route(method: Method, path: &'static str) -> Route {
    Route { method, path }
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 19] = [
        Op::SessionCreate,
        Op::SessionTurn,
        Op::SessionCancel,
        Op::SessionPermission,
        Op::SessionEvents,
        Op::SessionClose,
        Op::SessionGet,
        Op::SessionList,
        Op::Run,
        Op::TokenCreate,
        Op::TokenList,
        Op::TokenRevoke,
        Op::Health,
        Op::AppSet,
        Op::AppGet,
        Op::AppList,
        Op::Usage,
        Op::AdminUsage,
        Op::AdminSessionList,
    ];

    /// Its NATS subject.
    pub const fn subject(self) -> &'static str {
        match self {
            Op::SessionCreate => subject::SESSION_CREATE,
            Op::SessionTurn => subject::SESSION_TURN,
            Op::SessionCancel => subject::SESSION_CANCEL,
            Op::SessionPermission => subject::SESSION_PERMISSION,
            Op::SessionEvents => subject::SESSION_EVENTS,
            Op::SessionClose => subject::SESSION_CLOSE,
            Op::SessionGet => subject::SESSION_GET,
            Op::SessionList => subject::SESSION_LIST,
            Op::Run => subject::RUN,
            Op::TokenCreate => subject::TOKEN_CREATE,
            Op::TokenList => subject::TOKEN_LIST,
            Op::TokenRevoke => subject::TOKEN_REVOKE,
            Op::Health => subject::HEALTH,
            Op::AppSet => subject::APP_SET,
            Op::AppGet => subject::APP_GET,
            Op::AppList => subject::APP_LIST,
            Op::Usage => subject::USAGE,
            Op::AdminUsage => subject::ADMIN_USAGE,
            Op::AdminSessionList => subject::ADMIN_SESSION_LIST,
        }
    }

    /// Its name in logs and metric labels: the subject without `forge.`.
    pub fn name(self) -> &'static str {
        let s = self.subject();
        s.strip_prefix("forge.").unwrap_or(s)
    }

    /// The operation of a NATS subject.
    pub fn from_subject(subject: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.subject() == subject)
    }

    /// Its route on the sidecar.
    pub const fn route(self) -> Route {
        use Method::{Delete, Get, Post, Put};
        match self {
            Op::SessionCreate => route(Post, "/sessions"),
            Op::SessionTurn => route(Post, "/sessions/{id}/turn"),
            Op::SessionCancel => route(Post, "/sessions/{id}/cancel"),
            Op::SessionPermission => route(Post, "/sessions/{id}/permissions/{request_id}"),
            Op::SessionEvents => route(Get, "/sessions/{id}/events"),
            Op::SessionClose => route(Delete, "/sessions/{id}"),
            Op::SessionGet => route(Get, "/sessions/{id}"),
            Op::SessionList => route(Get, "/sessions"),
            Op::Run => route(Post, "/run"),
            Op::TokenCreate => route(Post, "/admin/tokens"),
            Op::TokenList => route(Get, "/admin/tokens"),
            Op::TokenRevoke => route(Delete, "/admin/tokens/{id}"),
            Op::Health => route(Get, "/healthz"),
            Op::AppSet => route(Put, "/admin/apps/{app}"),
            Op::AppGet => route(Get, "/admin/apps/{app}"),
            Op::AppList => route(Get, "/admin/apps"),
            Op::Usage => route(Get, "/usage"),
            Op::AdminUsage => route(Get, "/admin/usage"),
            Op::AdminSessionList => route(Get, "/admin/sessions"),
        }
    }

    /// Whether its reply streams.
    pub const fn streams(self) -> Streams {
        match self {
            Op::SessionTurn | Op::Run => Streams::OnRequest,
            Op::SessionEvents => Streams::Always,
            _ => Streams::Never,
        }
    }

    /// Which worker serves it.
    pub const fn served(self) -> Served {
        match self {
            Op::SessionTurn | Op::SessionClose => Served::Owner,
            Op::SessionCancel | Op::SessionPermission => Served::TurnHolder,
            _ => Served::Anywhere,
        }
    }

    /// Who may call it.
    pub const fn access(self) -> Access {
        match self {
            Op::Health => Access::Public,
            Op::TokenCreate | Op::TokenList | Op::TokenRevoke => Access::Admin,
            Op::AppSet | Op::AppGet | Op::AppList | Op::AdminUsage => Access::Admin,
            Op::AdminSessionList => Access::Admin,
            _ => Access::App,
        }
    }

    /// Whether another worker may pass it on to the one that serves it.
    pub const fn passed_on(self) -> bool {
        !matches!(self.served(), Served::Anywhere)
    }

    /// The operations another worker may pass on to this one.
    pub fn passed_on_ops() -> impl Iterator<Item = Op> {
        Op::ALL.into_iter().filter(|op| op.passed_on())
    }
}

/// Every subject the worker serves, in [`Op::ALL`]'s order.
pub const SUBJECTS: [&str; Op::ALL.len()] = {
    let mut out = [""; Op::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = Op::ALL[i].subject();
        i += 1;
    }
    out
};

/// Every route of the sidecar that is an operation: method, path, subject.
pub const ROUTES: [(&str, &str, &str); Op::ALL.len()] = {
    let mut out = [("", "", ""); Op::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        let (op, route) = (Op::ALL[i], Op::ALL[i].route());
        out[i] = (route.method.as_str(), route.path, op.subject());
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_operation_is_listed_twice() {
        let ops: HashSet<Op> = Op::ALL.into_iter().collect();
        let subjects: HashSet<&str> = SUBJECTS.into_iter().collect();
        let routes: HashSet<(&str, &str)> = ROUTES.iter().map(|(m, p, _)| (*m, *p)).collect();
        assert_eq!(ops.len(), Op::ALL.len());
        assert_eq!(subjects.len(), Op::ALL.len());
        assert_eq!(routes.len(), Op::ALL.len());
        for op in Op::ALL {
            assert_eq!(Op::from_subject(op.subject()), Some(op));
        }
    }

    #[test]
    fn the_admin_operations_are_the_admin_subjects() {
        for op in Op::ALL {
            let admin = op.subject().starts_with("forge.admin.");
            assert_eq!(op.access() == Access::Admin, admin, "{op:?}");
        }
        assert_eq!(
            Op::passed_on_ops().collect::<Vec<_>>(),
            [
                Op::SessionTurn,
                Op::SessionCancel,
                Op::SessionPermission,
                Op::SessionClose
            ]
        );
    }
}
