//! The shared test harness: sample app repositories made with real `git`,
//! hosts, and a runner for the real `slipway` binary. Every test gets its
//! own temporary directory, removed on drop, so tests run in parallel.

#![allow(dead_code)]

pub mod app;
pub mod git_host;
pub mod graphite;
pub mod hostile_tar;
pub mod nginx;
pub mod releases;
pub mod run;
pub mod server;
pub mod sshd;
pub mod standin;
pub mod synapse;

pub use app::{App, LocalHosts};
pub use run::Run;
