//! The sync cycle.
