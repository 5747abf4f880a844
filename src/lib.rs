//! clawdforge: lets the apps on a home server or LAN drive coding agents over NATS.
//!
//! See `subjects.md` for the wire contract and `README.md` for running it.

pub mod agent;
pub mod app;
pub mod cidr;
pub mod client;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod ledger;
pub mod nats;
pub mod operator;
pub mod quota;
pub mod secrets;
pub mod telemetry;
pub mod values;
pub mod wire;
