//! The routing model: versions, identity, services and the ordered rules.
//!
//! `rules/*.yaml -> raw (serde, unknown keys rejected) -> compile (every error with file and
//! line) -> model -> decide (pure)`. Raw types never reach the request path.

pub mod compile;
pub mod decide;
pub mod model;
pub mod raw;

pub use compile::{compile, load, LoadedRules, RuleSource};
pub use decide::{decide, explain, Decision, Explanation};
