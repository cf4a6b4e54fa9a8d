//! The sync cycle.
pub mod reconcile;
