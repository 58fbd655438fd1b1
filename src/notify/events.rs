//! Which moments a notifier is told about: the `events = [...]` key.
//!
//! Owns [`Events`]. Invariant: `slipway notify test` reaches every
//! notifier whatever its list says, so a test never depends on config.

use super::config::{Keys, NotifyConfigError};
use super::message::Kind;

/// The set of moments a notifier wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events(Vec<Kind>);

impl Events {
    /// Reads `events` from `keys`; absent means `default`.
    pub fn parse(keys: &Keys<'_>, default: &[Kind]) -> Result<Self, NotifyConfigError> {
        let Some(names) = keys.strings("events")? else {
            return Ok(Self(default.to_vec()));
        };
        names
            .iter()
            .map(|name| {
                Kind::parse(name).ok_or_else(|| {
                    keys.invalid(
                        "events",
                        format!(
                            "`{name}` is not an event; use any of: started, succeeded, failed, rolled-back, frozen, unfrozen"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn only(kinds: &[Kind]) -> Self {
        Self(kinds.to_vec())
    }

    pub fn wants(&self, kind: Kind) -> bool {
        kind == Kind::Test || self.0.contains(&kind)
    }
}
