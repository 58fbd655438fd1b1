//! slipway's integration tests: one binary, one shared harness
//! (`tests/support/`), real git, real files, real servers.

#[path = "../support/mod.rs"]
mod support;

mod artifact_trust;
mod bounds;
mod ci;
mod deb;
mod fault_stories;
mod faults;
mod help;
mod hooks;
mod local;
mod notify;
mod operator;
mod operator_history;
mod output;
mod ssh;
mod ssh_setups;
mod strategies;
mod trust;
