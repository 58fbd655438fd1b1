//! slipway ships a git commit to a cluster of servers.
//!
//! The pipeline, one module per stage, data flowing one way:
//!
//! ```text
//! trigger ─► plan ─► source/build ─► artifact ─► rollout ─► notify
//! ```
//!
//! See `ARCHITECTURE.md` for the map and the invariants each stage keeps.

pub mod artifact;
pub mod build;
pub mod cli;
pub mod config;
pub mod limits;
pub mod notify;
pub mod pipeline;
pub mod plan;
pub mod rollout;
pub mod scratch;
pub mod source;
pub mod transport;
pub mod trigger;
