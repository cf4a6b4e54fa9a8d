//! Marketo programs -> a CRM campaign table, one way.
//!
//! Each cycle this step browses the programs created or updated since its watermark (Asset API
//! `earliestUpdatedAt`/`latestUpdatedAt`, 200 a call; the first run reads them all), keeps those
//! the mapping's `[programs]` selection names (by name, tag or folder; the browse carries no
//! tags, so with a tag selection each changed program is read once by id for them), and hands
//! them to the two-way runner: a linked program's row is updated by its changed fields, a new
//! one is created keyed by the CRM column holding the program id (`keys.crm_marketo_id`), so a
//! re-run after a crash creates no second row. Programs are never written in Marketo.
//!
//! The browse runs at most every `sync.programs_browse_secs` (an hour by default; a due ledger
//! entry brings it forward), so an idle day costs 24 calls. A row the CRM refuses goes to the error ledger; its
//! program is read again by id when the entry is due.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ObjectFamily, due_errors, record_invalid_value};
use crate::config::ProgramSelection;
use crate::engine::pipeline::commit;
use crate::engine::pipeline::spec::TwoWaySpec;
use crate::engine::pipeline::two_way::{Observed, Seen, SidePair, TwoWay, unreadable};
use crate::engine::pipeline::write::CRM_ROW_BATCH;
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::programs::{MAX_BROWSE, Program, ProgramBrowse};
use crate::model::{FieldType, Fields, Side, Value};
use crate::store::{Direction, StepCommit, SyncError, Watermark};

/// The step's name (timings, warnings).
pub const OBJECT: &str = "programs";
/// The watermark queue of the browse.
const QUEUE: &str = "browse";

/// Returns the plan of the programs mapping, if one is synced.
pub fn plan_of(plans: &Plans) -> Option<&Plan> {
    plans
        .objects
        .values()
        .find(|p| p.kind() == crate::mapping::MarketoKind::Program)
}

/// Returns the mapping's program selection (every program when it lists none).
pub fn selection(ctx: &Context, object: &str) -> ProgramSelection {
    ctx.mappings
        .iter()
        .find(|m| m.object == object)
        .and_then(|m| m.file.programs.clone())
        .unwrap_or_default()
}

/// Returns true when the selection takes the program: it lists nothing, or the program's name,
/// one of its tags (`Type: Value`, case and spaces around the colon ignored), or its folder
/// (by name or id).
pub fn selected(selection: &ProgramSelection, p: &Program) -> bool {
    if selection.is_all() {
        return true;
    }
    let tag_text = |t: &str| {
        t.split_once(':')
            .map(|(k, v)| format!("{}:{}", k.trim(), v.trim()).to_lowercase())
            .unwrap_or_else(|| t.trim().to_lowercase())
    };
    let folder_id = p.folder_id().map(|id| id.to_string());
    selection.names.contains(&p.name)
        || selection.folders.iter().any(|f| {
            Some(f.as_str()) == p.folder_name() || Some(f.as_str()) == folder_id.as_deref()
        })
        || selection.tags.iter().any(|wanted| {
            p.tags
                .iter()
                .any(|t| tag_text(&format!("{}:{}", t.tag_type, t.tag_value)) == tag_text(wanted))
        })
}

/// Returns an Asset API datetime (`2015-05-21T22:45:13Z+0000`) as an instant.
pub fn asset_time(text: &str) -> Option<DateTime<Utc>> {
    let plain = text.strip_suffix("+0000").unwrap_or(text);
    DateTime::parse_from_rfc3339(plain)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Returns the raw source fields of a program (see [`crate::marketo::programs::PROGRAM_FIELDS`]).
pub fn raw_fields(p: &Program) -> Fields {
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let at = |v: &Option<String>| {
        v.as_deref()
            .and_then(asset_time)
            .map_or(Value::Null, Value::DateTime)
    };
    let tags: Vec<String> = p
        .tags
        .iter()
        .map(|t| format!("{}: {}", t.tag_type, t.tag_value))
        .collect();
    let mut raw = Fields::new();
    raw.insert("id".into(), Value::Int(p.id));
    raw.insert("name".into(), Value::Text(p.name.clone()));
    raw.insert("description".into(), text(&p.description));
    raw.insert("type".into(), text(&p.program_type));
    raw.insert("channel".into(), text(&p.channel));
    raw.insert("status".into(), text(&p.status));
    raw.insert("workspace".into(), text(&p.workspace));
    raw.insert("url".into(), text(&p.url));
    raw.insert("createdAt".into(), at(&p.created_at));
    raw.insert("updatedAt".into(), at(&p.updated_at));
    raw.insert(
        "folderId".into(),
        p.folder_id().map_or(Value::Null, Value::Int),
    );
    raw.insert(
        "folderName".into(),
        p.folder_name()
            .map_or(Value::Null, |n| Value::Text(n.to_owned())),
    );
    raw.insert(
        "tags".into(),
        if tags.is_empty() {
            Value::Null
        } else {
            Value::Text(tags.join("; "))
        },
    );
    raw
}

/// Returns the value of a Marketo id for the CRM column `column` of `schema` (an integer
/// column takes the number, any other the text).
pub(crate) fn id_value(schema: &crate::model::ObjectSchema, column: &str, id: &str) -> Value {
    match schema.field(column).map(|f| &f.ty) {
        Some(FieldType::Integer) => id.parse().map_or(Value::Text(id.to_owned()), Value::Int),
        _ => Value::Text(id.to_owned()),
    }
}

/// Browses the programs of the window (all of them without one), 200 a call.
///
/// # Errors
///
/// A Marketo failure, or cancellation.
async fn browse(
    ctx: &Context,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    cancel: &CancellationToken,
) -> Result<BTreeMap<i64, Program>, EngineError> {
    let mut out = BTreeMap::new();
    let mut offset = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .browse_programs(&ProgramBrowse {
                offset,
                max_return: MAX_BROWSE,
                filter: None,
                earliest_updated_at: window.map(|w| w.0),
                latest_updated_at: window.map(|w| w.1),
            })
            .await?;
        let n = page.len();
        out.extend(page.into_iter().map(|p| (p.id, p)));
        if n < MAX_BROWSE as usize {
            return Ok(out);
        }
        offset += MAX_BROWSE;
    }
}

/// Returns the step's spec: programs are never written in Marketo; ledger entries by program
/// id; linked rows updated by the table's primary key `pk`.
fn spec(pk: &str) -> TwoWaySpec {
    TwoWaySpec {
        family: Some(ObjectFamily::Programs),
        ledger: Direction::MarketoToCrm,
        first: Side::Crm,
        update_key: pk.to_owned(),
        keys_in_base: false,
    }
}

/// Copies the programs created or updated in Marketo since the last cycle (and those waiting in
/// the error ledger) to the CRM campaign table. Does nothing when no programs mapping is synced.
///
/// # Errors
///
/// A whole-call failure of Marketo, the CRM or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let Some(plan) = plan_of(plans) else {
        return Ok(());
    };
    let object = plan.object.as_str();
    let chosen = selection(ctx, object);
    let now = ctx.clock.now();
    let stored = ctx.store.watermark(Side::Marketo, object, QUEUE).await?;
    let mut previous: BTreeMap<String, SyncError> = BTreeMap::new();
    for e in due_errors(ctx, object, Direction::MarketoToCrm).await? {
        previous.insert(e.record_key.clone(), e);
    }
    let every = chrono::Duration::seconds(
        i64::try_from(ctx.settings.sync.programs_browse_secs).unwrap_or(i64::MAX),
    );
    if previous.is_empty() && stored.as_ref().is_some_and(|w| now - w.at < every) {
        return Ok(());
    }
    let overlap = chrono::Duration::from_std(ctx.settings.sync.overlap())
        .unwrap_or_else(|_| chrono::Duration::minutes(5));
    let window = stored.map(|w| (w.at - overlap, now));
    let mut programs = browse(ctx, window, cancel).await?;
    for key in previous.keys() {
        if let Ok(id) = key.parse::<i64>()
            && !programs.contains_key(&id)
            && let Some(p) = ctx.marketo.get_program(id).await?
        {
            programs.insert(id, p);
        }
    }
    if !chosen.tags.is_empty() {
        for p in programs.values_mut().filter(|p| p.tags.is_empty()) {
            if let Some(full) = ctx.marketo.get_program(p.id).await? {
                p.tags = full.tags;
            }
        }
    }
    programs.retain(|_, p| selected(&chosen, p));
    summary.counts_mut(object, Direction::MarketoToCrm).read += programs.len() as u64;
    let mut commit = StepCommit {
        watermarks: vec![Watermark {
            system: Side::Marketo,
            object: object.to_owned(),
            queue: QUEUE.to_owned(),
            at: now,
            tie: None,
            cursor: None,
        }],
        ..StepCommit::default()
    };
    if programs.is_empty() {
        if !options.dry_run {
            commit::finish(ctx, commit).await?;
        }
        return Ok(());
    }
    let crm_schema = ctx.crm.describe(&plan.crm_object).await?;
    let sides = side_pairs(
        ctx,
        plan,
        &crm_schema,
        &programs,
        &previous,
        &mut commit,
        summary,
    )
    .await?;
    let pk = crm_schema.id_field.clone().unwrap_or_else(|| "id".into());
    let spec = spec(&pk);
    let runner = TwoWay {
        ctx,
        plan,
        spec: &spec,
        previous: &previous,
        marketo: None,
    };
    let n = sides.len();
    runner.run(sides, commit, summary, options, cancel).await?;
    info!(object, programs = n, "programs copied to the crm");
    Ok(())
}

/// Returns the runner's pairs of the programs read: each with its link and CRM row, or new
/// (keyed by the program id in the CRM's Marketo-id column). A program the mapping cannot
/// read goes to the ledger.
///
/// # Errors
///
/// A CRM or store failure.
async fn side_pairs(
    ctx: &Context,
    plan: &Plan,
    crm_schema: &crate::model::ObjectSchema,
    programs: &BTreeMap<i64, Program>,
    previous: &BTreeMap<String, SyncError>,
    commit: &mut StepCommit,
    summary: &mut CycleSummary,
) -> Result<Vec<SidePair>, EngineError> {
    let object = plan.object.as_str();
    let direction = Direction::MarketoToCrm;
    let keys: Vec<String> = programs.keys().map(i64::to_string).collect();
    let mut links: BTreeMap<String, (String, Fields)> = BTreeMap::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_marketo_keys(object, chunk).await? {
            if l.tombstone.is_none() {
                links.insert(l.marketo_key.clone(), (l.crm_key.clone(), l.base.clone()));
            }
        }
    }
    let crm_keys: Vec<String> = links.values().map(|(c, _)| c.clone()).collect();
    let mut rows: BTreeMap<String, (Fields, DateTime<Utc>)> = BTreeMap::new();
    for chunk in crm_keys.chunks(CRM_ROW_BATCH) {
        for r in ctx.crm.get(&plan.crm_object, chunk).await? {
            rows.insert(r.id, (r.fields, r.modified_at));
        }
    }
    let mut out = Vec::new();
    for (id, p) in programs {
        let key = id.to_string();
        let updated = p.updated_at.as_deref().and_then(asset_time);
        let marketo = match Observed::read(plan, Side::Marketo, raw_fields(p), updated) {
            Ok(o) => o,
            Err(e) => {
                let prev = previous.get(&key);
                record_invalid_value(ctx, commit, summary, object, direction, &key, &e, prev);
                continue;
            }
        };
        let mut crm_extra = Fields::new();
        let (crm, crm_key, base) = match links.get(&key) {
            Some((crm_key, base)) => {
                let crm = match rows.get(crm_key) {
                    None => Seen::Missing,
                    Some((raw, at)) => {
                        match Observed::read(plan, Side::Crm, raw.clone(), Some(*at)) {
                            Ok(o) => Seen::Read(o),
                            Err(e) => {
                                unreadable(summary, object, direction, crm_key, &e);
                                continue;
                            }
                        }
                    }
                };
                (crm, Some(crm_key.clone()), Some(base.clone()))
            }
            None => {
                let column = plan.crm_marketo_id.clone();
                crm_extra.insert(column.clone(), id_value(crm_schema, &column, &key));
                (Seen::Missing, None, None)
            }
        };
        out.push(SidePair {
            marketo_key: key.clone(),
            crm_key,
            ledger_key: key,
            read_from: direction,
            base,
            marketo: Seen::Read(marketo),
            crm,
            key_fields: Fields::new(),
            marketo_extra: Fields::new(),
            crm_extra,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program() -> Program {
        serde_json::from_value(json!({
            "id": 1107, "name": "Spring Webinar", "type": "Event", "channel": "Webinar",
            "createdAt": "2015-05-21T22:45:13Z+0000", "updatedAt": "2015-05-22T10:00:00Z+0000",
            "folder": {"type": "Folder", "value": 19, "folderName": "Events"},
            "tags": [{"tagType": "Region", "tagValue": "EMEA"}]
        }))
        .unwrap()
    }

    #[test]
    fn selection_takes_names_tags_and_folders() {
        let p = program();
        let by = |names: &[&str], tags: &[&str], folders: &[&str]| ProgramSelection {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            folders: folders.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(selected(&ProgramSelection::default(), &p));
        assert!(selected(&by(&["Spring Webinar"], &[], &[]), &p));
        assert!(selected(&by(&[], &["region:emea"], &[]), &p));
        assert!(selected(&by(&[], &[], &["Events"]), &p));
        assert!(selected(&by(&[], &[], &["19"]), &p));
        assert!(!selected(&by(&["Other"], &["Region: AMER"], &["20"]), &p));
    }

    #[test]
    fn raw_fields_flatten_the_folder_tags_and_asset_dates() {
        let raw = raw_fields(&program());
        assert_eq!(raw["folderId"], Value::Int(19));
        assert_eq!(raw["folderName"], Value::Text("Events".into()));
        assert_eq!(raw["tags"], Value::Text("Region: EMEA".into()));
        assert!(matches!(raw["createdAt"], Value::DateTime(_)));
    }
}
