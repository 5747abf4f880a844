//! The ledger: every token, session, turn and run (the records), and what the workers sharing
//! it agree through it (the coordination: heartbeats, leases, the owners of sessions, the turns
//! taken and not yet begun).
//!
//! The traits of [`records`] and [`coordination`] are the ledger's API, one per concern;
//! [`Ledger`] implements them all on one SQLite file (`sqlite/`, the only module that imports
//! rusqlite). Another engine is another type implementing the same traits.

mod apps;
mod coordination;
mod outcome;
mod records;
mod rows;
mod sqlite;

use std::path::PathBuf;

pub use apps::Apps;
pub use coordination::{Owner, Ownership, Reserved, TurnWaits, Workers};
pub use outcome::{EventOutcome, RunOutcome, UnknownOutcome};
pub use records::{Recovery, Runs, Sessions, Tokens, Turns};
pub use rows::{
    Admission, BeginTurn, CloseOutcome, CreateOutcome, DayRow, EventDetail, EventRow, Idle,
    Interrupted, Lease, NewRun, PolicyRow, Recorded, RunBegun, RunEnd, RunRow, SessionEvent,
    SessionFilter, SessionRow, Stamp, TokenRow, TurnRow, TurnStart, Used,
};
pub use sqlite::Ledger;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite opened the file, but only for reading.
    #[error("it is read-only for this worker ({reason})")]
    ReadOnly { reason: String },
    #[error("ledger migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ledger: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger task failed: {0}")]
    Task(String),
}

pub type LedgerResult<T> = Result<T, LedgerError>;

#[cfg(test)]
mod tests;
