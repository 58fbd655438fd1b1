//! Triggers: what asked for a deploy, and which environment it maps to.
