//! The summary of one cycle: what `sync --once` prints and the store keeps.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::Direction;

/// Counts for one object in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObjectCounts {
    /// Records read from the source side.
    pub read: u64,
    /// Records created on the target side.
    pub created: u64,
    /// Records updated on the target side.
    pub updated: u64,
    /// Records deleted (or flagged deleted) on the target side.
    pub deleted: u64,
    /// Field conflicts settled by policy.
    pub conflicts: u64,
    /// Records read but with nothing to write (echoes, unchanged, filtered).
    pub skipped: u64,
    /// Records the target rejected (kept in the error ledger).
    pub failed: u64,
}

/// The summary of one cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleSummary {
    /// The cycle's id (as recorded in the store).
    pub id: Option<uuid::Uuid>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// True when nothing was written (dry run).
    pub dry_run: bool,
    /// Counts per object and direction.
    pub objects: BTreeMap<String, BTreeMap<Direction, ObjectCounts>>,
    /// Marketo API calls this cycle used.
    pub marketo_calls: u64,
    /// Bulk-extract bytes this cycle downloaded.
    pub bulk_bytes: u64,
    /// Warnings for operators (schema drift, disabled mappings, pauses).
    pub warnings: Vec<String>,
    /// The planned writes, on a dry run.
    pub plan: Vec<serde_json::Value>,
}

impl CycleSummary {
    /// Returns the counts of one object in one direction, created empty when absent.
    pub fn counts_mut(&mut self, object: &str, direction: Direction) -> &mut ObjectCounts {
        self.objects
            .entry(object.to_owned())
            .or_default()
            .entry(direction)
            .or_default()
    }

    /// Returns the total of failed records over every object and direction.
    pub fn failed(&self) -> u64 {
        self.objects
            .values()
            .flat_map(|d| d.values())
            .map(|c| c.failed)
            .sum()
    }
}
