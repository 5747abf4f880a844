//! The agent runners: acpx for sessions, `claude -p` for one-shot runs. The only module that
//! spawns processes.

pub mod acpx;
pub mod claude;
pub mod process;

pub use acpx::{Acpx, AcpxError, TurnOutput};
pub use claude::{Claude, ClaudeError, ClaudeOptions, ClaudeResult, RunOutput};
