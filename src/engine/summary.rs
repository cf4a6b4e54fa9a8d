//! The summary of one cycle: what `sync --once` prints and the store keeps.
//!
//! On a dry run the planned writes are the one source of truth: every step records what it
//! would write as a [`PlannedChange`] (per record, with each field's value before and after),
//! and the created, updated, deleted and waiting counts are derived from that plan by
//! [`CycleSummary::count_plan`], so the counts and the plan cannot disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;

use crate::model::{Fields, Side};
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
    /// Records that wait for their parent (a contact, an account, a lead) to be linked first:
    /// on a dry run, the parent's own write is planned but not made, so the dependent record
    /// would be written by the cycle after the parent's. Not a failure.
    pub waiting: u64,
}

/// What a planned write does to its target record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlannedAction {
    /// A new record on the target side.
    Create,
    /// Fields of an existing record change.
    Update,
    /// The target record is deleted.
    Delete,
    /// The target record is flagged deleted (its deleted-flag field set).
    FlagDeleted,
    /// Two Marketo leads are merged (the loser goes away).
    Merge,
    /// A CRM record is re-pointed to another Marketo lead (a merge winner takes it over).
    Repoint,
    /// A converted CRM lead's Marketo lead moves to its contact.
    Convert,
    /// Nothing is written yet: the record's parent is not linked (see [`ObjectCounts::waiting`]).
    WaitsForParent,
}

impl PlannedAction {
    /// Returns the label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            PlannedAction::Create => "create",
            PlannedAction::Update => "update",
            PlannedAction::Delete => "delete",
            PlannedAction::FlagDeleted => "flag deleted",
            PlannedAction::Merge => "merge",
            PlannedAction::Repoint => "re-point",
            PlannedAction::Convert => "convert",
            PlannedAction::WaitsForParent => "waits for its parent",
        }
    }

    /// Adds one record with this action to `counts`.
    fn count(self, counts: &mut ObjectCounts) {
        match self {
            PlannedAction::Create => counts.created += 1,
            PlannedAction::Update | PlannedAction::Repoint | PlannedAction::Convert => {
                counts.updated += 1;
            }
            PlannedAction::Delete | PlannedAction::FlagDeleted | PlannedAction::Merge => {
                counts.deleted += 1;
            }
            PlannedAction::WaitsForParent => counts.waiting += 1,
        }
    }
}

/// One field of a planned write: its value on the target side now, and after the write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field's name on the target side.
    pub field: String,
    /// The value before the write; `None` (left out of the JSON) for a new record, which has
    /// no value yet; JSON `null` for an empty value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Json>,
    /// The value written.
    pub after: Json,
}

/// One record a dry run would write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    /// The object (as counted in [`CycleSummary::objects`]).
    pub object: String,
    /// Which way the record travels.
    pub direction: Direction,
    /// What happens to the target record.
    pub action: PlannedAction,
    /// The key of the target record, when it exists (a CRM id, a Marketo lead id or dedupe key).
    pub target_key: Option<String>,
    /// The key of the record on the source side, when there is one.
    pub source_key: Option<String>,
    /// The fields written, each with its value before and after.
    pub changes: Vec<FieldChange>,
    /// Why, for actions that write no fields (waits, merges, deletes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PlannedChange {
    /// Returns a planned write with no field changes yet.
    pub fn new(object: &str, direction: Direction, action: PlannedAction) -> PlannedChange {
        PlannedChange {
            object: object.to_owned(),
            direction,
            action,
            target_key: None,
            source_key: None,
            changes: Vec::new(),
            note: None,
        }
    }

    /// Sets the target record's key.
    #[must_use]
    pub fn target(mut self, key: impl Into<String>) -> PlannedChange {
        self.target_key = Some(key.into());
        self
    }

    /// Sets the source record's key.
    #[must_use]
    pub fn source(mut self, key: impl Into<String>) -> PlannedChange {
        self.source_key = Some(key.into());
        self
    }

    /// Sets the note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> PlannedChange {
        self.note = Some(note.into());
        self
    }

    /// Adds the fields of `after` (target-side names) with their values in `before` (`None`
    /// for every field when the record is new). Fields named in `keys` identify the record and
    /// are left out of an update's changes.
    #[must_use]
    pub fn fields<'a>(
        mut self,
        after: impl IntoIterator<Item = (&'a String, &'a Json)>,
        before: Option<&serde_json::Map<String, Json>>,
        keys: &[&str],
    ) -> PlannedChange {
        for (field, value) in after {
            let is_new = self.action == PlannedAction::Create;
            if !is_new && keys.contains(&field.as_str()) {
                continue;
            }
            self.changes.push(FieldChange {
                field: field.clone(),
                before: if is_new {
                    None
                } else {
                    Some(
                        before
                            .and_then(|b| b.get(field))
                            .cloned()
                            .unwrap_or(Json::Null),
                    )
                },
                after: value.clone(),
            });
        }
        self
    }
}

/// Returns fields as a JSON map (the shape of [`PlannedChange::fields`]' arguments).
pub fn json_fields(fields: &Fields) -> serde_json::Map<String, Json> {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
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
    /// The planned writes, on a dry run (one per record).
    pub plan: Vec<PlannedChange>,
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

    /// Adds a planned write (dry run).
    pub fn planned(&mut self, change: PlannedChange) {
        self.plan.push(change);
    }

    /// Sets the created, updated, deleted and waiting counts of every object from the plan
    /// (a dry run's counts are those of its planned writes, nothing else).
    pub fn count_plan(&mut self) {
        for counts in self.objects.values_mut().flat_map(|d| d.values_mut()) {
            counts.created = 0;
            counts.updated = 0;
            counts.deleted = 0;
            counts.waiting = 0;
        }
        let plan = std::mem::take(&mut self.plan);
        for change in &plan {
            change
                .action
                .count(self.counts_mut(&change.object, change.direction));
        }
        self.plan = plan;
    }

    /// Returns the summary as text for a terminal: the planned writes (dry run) with each
    /// field's value before and after, the counts per object and direction, and the warnings.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            let _ = writeln!(out, "Planned writes ({}):", self.plan.len());
            if self.plan.is_empty() {
                let _ = writeln!(out, "  none: both sides agree");
            } else {
                let _ = writeln!(out, "{}", plan_table(&self.plan));
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "Counts:");
        let _ = writeln!(out, "{}", counts_table(&self.objects));
        if !self.warnings.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "Warnings ({}):", self.warnings.len());
            for w in &self.warnings {
                let _ = writeln!(out, "  - {w}");
            }
        }
        let _ = writeln!(out);
        let took = match (self.started_at, self.ended_at) {
            (Some(a), Some(b)) => format!(" in {:.1} s", (b - a).num_milliseconds() as f64 / 1e3),
            _ => String::new(),
        };
        if self.dry_run {
            let _ = writeln!(
                out,
                "Dry run{took}: nothing was written to Marketo, the CRM or the state store \
                 ({} Marketo calls were used to read).",
                self.marketo_calls
            );
        } else {
            let _ = writeln!(
                out,
                "Cycle {} finished{took}: {} Marketo calls, {} failed record(s).",
                self.id.map(|i| i.to_string()).unwrap_or_default(),
                self.marketo_calls,
                self.failed()
            );
        }
        out
    }
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::MarketoToCrm => "marketo → crm",
        Direction::CrmToMarketo => "crm → marketo",
    }
}

fn side_of(d: Direction, target: bool) -> Side {
    if target {
        d.target()
    } else {
        d.target().other()
    }
}

/// Returns a value as table text: strings without quotes, `(empty)` for null, `–` for no value
/// yet, long values cut at 40 characters.
fn cell(value: Option<&Json>) -> String {
    let text = match value {
        None => return "–".to_owned(),
        Some(Json::Null) => return "(empty)".to_owned(),
        Some(Json::String(s)) if s.is_empty() => return "(empty)".to_owned(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(39).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    t
}

/// Returns the plan as a table: one row per record and field, with the value before and after.
pub fn plan_table(plan: &[PlannedChange]) -> comfy_table::Table {
    let mut t = table();
    t.set_header(vec![
        "Object",
        "Direction",
        "Record",
        "Action",
        "Field",
        "Before",
        "After",
    ]);
    for change in plan {
        let source = side_of(change.direction, false).as_str();
        let target = side_of(change.direction, true).as_str();
        let record = match (&change.source_key, &change.target_key) {
            (Some(s), _) if change.action == PlannedAction::WaitsForParent => {
                format!("{source} {s}")
            }
            (Some(s), Some(t)) => format!("{source} {s} → {target} {t}"),
            (Some(s), None) => format!("{source} {s} → new"),
            (None, Some(t)) => format!("{target} {t}"),
            (None, None) => "new".to_owned(),
        };
        let first = vec![
            change.object.clone(),
            direction_label(change.direction).to_owned(),
            record,
            change.action.label().to_owned(),
        ];
        if change.changes.is_empty() {
            let mut row = first;
            row.extend([
                String::new(),
                String::new(),
                change.note.clone().unwrap_or_default(),
            ]);
            t.add_row(row);
            continue;
        }
        for (i, f) in change.changes.iter().enumerate() {
            let mut row = if i == 0 {
                first.clone()
            } else {
                vec![String::new(); 4]
            };
            row.extend([
                f.field.clone(),
                cell(f.before.as_ref()),
                cell(Some(&f.after)),
            ]);
            t.add_row(row);
        }
        if let Some(note) = &change.note {
            t.add_row(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                note.clone(),
            ]);
        }
    }
    t
}

/// Returns the counts as a table: one row per object and direction.
pub fn counts_table(
    objects: &BTreeMap<String, BTreeMap<Direction, ObjectCounts>>,
) -> comfy_table::Table {
    let mut t = table();
    t.set_header(vec![
        "Object",
        "Direction",
        "Read",
        "Create",
        "Update",
        "Delete",
        "Waiting",
        "Skipped",
        "Conflicts",
        "Failed",
    ]);
    for (object, dirs) in objects {
        for (d, c) in dirs {
            t.add_row(vec![
                object.clone(),
                direction_label(*d).to_owned(),
                c.read.to_string(),
                c.created.to_string(),
                c.updated.to_string(),
                c.deleted.to_string(),
                c.waiting.to_string(),
                c.skipped.to_string(),
                c.conflicts.to_string(),
                c.failed.to_string(),
            ]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dry_run_counts_come_from_the_plan() {
        let mut s = CycleSummary {
            dry_run: true,
            ..CycleSummary::default()
        };
        // A stray count from a write path is replaced by the plan's.
        s.counts_mut("leads", Direction::MarketoToCrm).created = 7;
        s.counts_mut("leads", Direction::MarketoToCrm).read = 3;
        s.planned(PlannedChange::new(
            "leads",
            Direction::MarketoToCrm,
            PlannedAction::Create,
        ));
        s.planned(PlannedChange::new(
            "roles",
            Direction::CrmToMarketo,
            PlannedAction::WaitsForParent,
        ));
        s.count_plan();
        let leads = s.objects["leads"][&Direction::MarketoToCrm];
        assert_eq!((leads.read, leads.created), (3, 1));
        let roles = s.objects["roles"][&Direction::CrmToMarketo];
        assert_eq!((roles.waiting, roles.failed), (1, 0));
        assert_eq!(s.failed(), 0);
    }

    #[test]
    fn updates_keep_before_values_and_leave_keys_out() {
        let after = serde_json::Map::from_iter([
            ("id".to_owned(), json!(4)),
            ("email".to_owned(), json!("new@example.com")),
            ("phone".to_owned(), json!("1")),
        ]);
        let before = serde_json::Map::from_iter([("email".to_owned(), json!("old@example.com"))]);
        let c = PlannedChange::new("leads", Direction::CrmToMarketo, PlannedAction::Update).fields(
            &after,
            Some(&before),
            &["id"],
        );
        assert_eq!(c.changes.len(), 2);
        assert_eq!(c.changes[0].before, Some(json!("old@example.com")));
        assert_eq!(c.changes[1].before, Some(Json::Null));
        let created = PlannedChange::new("leads", Direction::CrmToMarketo, PlannedAction::Create)
            .fields(&after, Some(&before), &["id"]);
        assert_eq!(created.changes.len(), 3);
        assert!(created.changes.iter().all(|f| f.before.is_none()));
    }

    #[test]
    fn the_text_shows_before_and_after() {
        let mut s = CycleSummary {
            dry_run: true,
            ..CycleSummary::default()
        };
        let after = serde_json::Map::from_iter([("email".to_owned(), json!("new@example.com"))]);
        let before = serde_json::Map::from_iter([("email".to_owned(), json!("old@example.com"))]);
        s.planned(
            PlannedChange::new("leads", Direction::CrmToMarketo, PlannedAction::Update)
                .source("12")
                .target("4")
                .fields(&after, Some(&before), &[]),
        );
        s.count_plan();
        let text = s.render_text();
        assert!(text.contains("old@example.com"), "{text}");
        assert!(text.contains("new@example.com"), "{text}");
        assert!(text.contains("crm 12 → marketo 4"), "{text}");
        assert!(text.contains("nothing was written"), "{text}");
    }
}
