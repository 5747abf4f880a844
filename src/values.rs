//! Values the domain and the ledger both name: ids and timestamps. Once one exists, it is
//! valid.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Parses an id as the contract writes it: a hyphenated UUID (upper case is taken too). Other
/// forms `uuid` would take (braced, URN, without hyphens) are refused, so that one id has one
/// spelling on the wire.
fn parse_uuid(s: &str, field: &str) -> Result<Uuid> {
    match Uuid::try_parse(s) {
        Ok(id) if s.len() == uuid::fmt::Hyphenated::LENGTH => Ok(id),
        _ => Err(Error::bad_request(format!(
            "invalid {field} {:?}: expected a UUID like 123e4567-e89b-42d3-a456-426614174000",
            crate::error::clip(s, 80)
        ))),
    }
}

/// An id type: a random UUID, written in its lowercase hyphenated form.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> $name {
                $name(Uuid::new_v4())
            }

            pub fn parse(s: &str) -> Result<$name> {
                parse_uuid(s, $field).map($name)
            }

            pub fn as_string(&self) -> String {
                self.0.hyphenated().to_string()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<$name> {
                $name::parse(s)
            }
        }
    };
}

uuid_id!(
    /// A session's id.
    SessionId,
    "session_id"
);
uuid_id!(
    /// A run's id; also the name of its staging directory.
    RunId,
    "run_id"
);
uuid_id!(
    /// A token's id.
    TokenId,
    "token_id"
);
uuid_id!(
    /// A turn taken and numbered, not yet begun.
    WaitId,
    "wait_id"
);

/// An instant, to the millisecond, written as RFC 3339 in UTC with milliseconds
/// (`2026-01-01T00:00:00.000Z`). That form has one width, so the text sorts as the time does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::at(Utc::now())
    }

    /// `secs` seconds from now (ago, when negative).
    pub fn seconds_from_now(secs: i64) -> Timestamp {
        Timestamp::at(Utc::now() + chrono::Duration::seconds(secs))
    }

    /// `t`, to the millisecond.
    pub fn at(t: DateTime<Utc>) -> Timestamp {
        let millis = t.timestamp_millis();
        Timestamp(DateTime::from_timestamp_millis(millis).expect("a millisecond of a time"))
    }

    /// The time it is.
    pub fn utc(self) -> DateTime<Utc> {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> std::result::Result<Timestamp, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|t| Timestamp::at(t.with_timezone(&Utc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_back_as_written_and_sort_as_time() {
        let text = "2026-01-01T00:00:00.120Z";
        let t: Timestamp = text.parse().unwrap();
        assert_eq!(t.to_string(), text);
        let later: Timestamp = "2026-01-01T01:00:00+01:00".parse().unwrap();
        assert!(later < t, "an hour ahead of UTC is earlier");
        let now = Timestamp::now();
        assert_eq!(now.to_string().parse::<Timestamp>().unwrap(), now);
        assert!(Timestamp::seconds_from_now(-60) < now);
    }
}
