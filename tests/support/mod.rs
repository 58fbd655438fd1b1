//! The shared test harness: sample app repositories made with real `git`,
//! hosts, and a runner for the real `slipway` binary. Every test gets its
//! own temporary directory, removed on drop, so tests run in parallel.

#![allow(dead_code)]

/// Declares, for one transport, a test per story (a function taking the
/// `--ssh` value) of the module it is used in.
macro_rules! stories_over {
    ($transport:ident, $($story:ident,)*) => {
        mod $transport {
            $(
                #[test]
                fn $story() {
                    super::$story(stringify!($transport));
                }
            )*
        }
    };
}

/// Every story over the system OpenSSH client (what `auto` picks where `ssh`
/// is installed) and over the built-in libssh2 client.
macro_rules! stories_over_each_transport {
    ($($story:ident,)*) => {
        stories_over!(openssh, $($story,)*);
        stories_over!(libssh2, $($story,)*);
    };
}

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
