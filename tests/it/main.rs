//! slipway's integration tests: one binary, one shared harness
//! (`tests/support/`), real git, real files, real servers.

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod artifact_trust;
mod bounds;
mod ci;
mod cleanup;
mod deb;
mod fault_stories;
mod faults;
mod help;
mod hooks;
mod local;
mod lock;
mod notify;
mod operator;
mod operator_history;
mod output;
mod remote;
mod ssh;
mod ssh_setups;
mod strategies;
mod trust;
