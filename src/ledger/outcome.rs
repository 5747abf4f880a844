//! How a session event or a run ended, as the `outcome` column keeps it: a state while it
//! runs, then a result, or the code of the error it ended with.

use std::fmt;
use std::str::FromStr;

use crate::error::ErrorKind;

/// The outcome of a session event: a turn's, a create's, a close's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Under way (a turn running, a create whose agent session is being made).
    Running,
    Ok,
    /// A turn the caller cancelled.
    Cancelled,
    /// A turn whose worker stopped before it ended, or that never began for that reason.
    Interrupted,
    /// The close of a session whose create failed.
    CreateFailed,
    /// Ended with this error.
    Failed(ErrorKind),
}

/// The outcome of a one-shot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Running,
    Ok,
    /// claude ran and answered with an error result.
    ErrorResult,
    /// Its worker stopped before it ended.
    Interrupted,
    /// Ended with this error.
    Failed(ErrorKind),
}

/// A stored outcome this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Running => "running",
            EventOutcome::Ok => "ok",
            EventOutcome::Cancelled => "cancelled",
            EventOutcome::Interrupted => "interrupted",
            EventOutcome::CreateFailed => "create_failed",
            EventOutcome::Failed(kind) => kind.code(),
        }
    }
}

impl FromStr for EventOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<EventOutcome, UnknownOutcome> {
        Ok(match s {
            "running" => EventOutcome::Running,
            "ok" => EventOutcome::Ok,
            "cancelled" => EventOutcome::Cancelled,
            "interrupted" => EventOutcome::Interrupted,
            "create_failed" => EventOutcome::CreateFailed,
            code => EventOutcome::Failed(
                ErrorKind::from_code(code).ok_or_else(|| UnknownOutcome(s.to_string()))?,
            ),
        })
    }
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Ok => "ok",
            RunOutcome::ErrorResult => "error_result",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Failed(kind) => kind.code(),
        }
    }
}

impl FromStr for RunOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<RunOutcome, UnknownOutcome> {
        Ok(match s {
            "running" => RunOutcome::Running,
            "ok" => RunOutcome::Ok,
            "error_result" => RunOutcome::ErrorResult,
            "interrupted" => RunOutcome::Interrupted,
            code => RunOutcome::Failed(
                ErrorKind::from_code(code).ok_or_else(|| UnknownOutcome(s.to_string()))?,
            ),
        })
    }
}

impl fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_back_as_stored() {
        let events = [
            EventOutcome::Running,
            EventOutcome::Ok,
            EventOutcome::Cancelled,
            EventOutcome::Interrupted,
            EventOutcome::CreateFailed,
        ];
        let failed = ErrorKind::ALL.map(EventOutcome::Failed);
        for o in events.into_iter().chain(failed) {
            assert_eq!(o.as_str().parse::<EventOutcome>(), Ok(o));
        }
        let runs = [
            RunOutcome::Running,
            RunOutcome::Ok,
            RunOutcome::ErrorResult,
            RunOutcome::Interrupted,
        ];
        for o in runs
            .into_iter()
            .chain(ErrorKind::ALL.map(RunOutcome::Failed))
        {
            assert_eq!(o.as_str().parse::<RunOutcome>(), Ok(o));
        }
        assert_eq!(EventOutcome::Failed(ErrorKind::Timeout).as_str(), "timeout");
        assert!("nonsense".parse::<EventOutcome>().is_err());
    }
}
