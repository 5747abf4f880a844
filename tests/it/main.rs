//! Integration tests: real nats-server, real worker processes, real acpx, the test ACP agent.

mod asks;
mod auth;
mod cancel;
mod cli;
mod confinement;
mod deploy;
mod diagnosis;
mod docs;
mod faults;
mod harness;
mod http;
mod input;
mod ledger;
mod lifecycle;
mod metrics;
mod native;
mod native_faults;
mod operator;
mod owners;
mod quota;
mod real;
mod runs;
mod sessions;
mod streaming;
mod tokens;
mod workers;
