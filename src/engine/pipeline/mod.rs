//! The sync pipeline: one runner for every object, in stages named as DESIGN section 2 says:
//! gather -> canonical -> pair -> reconcile -> render -> write -> commit.
//!
//! - [`gather`]: the CRM change feed from its stored cursor, due ledger retries, Marketo reads;
//!   or, on demand ([`Scope::Record`]: `sync --record`, `POST /sync/crm/{object}/{id}`), one CRM
//!   record read by id, which then runs through the same pair, write and commit stages (no
//!   watermark moves, so the next cycle finds the record agreed).
//! - [`pair`]: canonical values (the mapping), the spec's key hook, the record's link, and what
//!   changed since the agreed values (`base`); two-way objects settle both sides' changes with
//!   [`crate::engine::reconcile`].
//! - [`write`]: the one place that writes through the endpoint seams or, on a dry run, plans;
//!   it counts every record from its outcome.
//! - [`commit`]: one [`crate::store::StepCommit`] per step.
//! - [`two_way`]: the reconcile, render, write and commit stages of an object that flows both
//!   ways or from Marketo to the CRM ([`two_way::TwoWay`], used by leads, companies, programs,
//!   list and program members, and custom objects read from Marketo): the object gathers its
//!   record pairs, the runner does the rest. Leads, which are no object family, bring their own
//!   Marketo side ([`two_way::MarketoSide`]: lead writes with company routing).
//!
//! An object contributes an [`spec::ObjectSpec`] (CRM -> Marketo: its Marketo family and key
//! hooks) or a [`spec::TwoWaySpec`] (both ways: ledger keying, write order, CRM key); the registry
//! ([`crate::engine::objects::registry`]) lists the steps in the order they run.
//!
//! # Delivery guarantee
//!
//! At least once, idempotently. A step commits its watermarks, links, ledger entries and
//! resolved entries in ONE store transaction after its writes; a crash before the commit
//! re-reads the same changes on the next cycle and writes them again, and every write is an
//! upsert keyed by an external id (the CRM key in a Marketo dedupe field, the Marketo id in a
//! CRM column), so a re-run creates no duplicate and loses no change. A record the remote
//! refuses goes to the error ledger and is retried by the ledger's policy; it never holds back
//! the watermark of the others. On a dry run nothing is written or committed.

pub mod commit;
pub mod gather;
pub mod pair;
pub mod spec;
pub mod two_way;
pub mod write;

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::Plan;
use crate::marketo::Record;
use crate::model::{Fields, Value};
use crate::store::Direction;

pub use gather::Scope;
use spec::ObjectSpec;
use write::RowTarget;

/// Runs a one-way CRM -> Marketo step over the records of `scope`: gather the changes (and due
/// retries) of the feed, or one CRM record read by id (on demand, no watermark moves), pair them
/// with their links, write only changed records in batches (or plan them on a dry run), delete
/// the old Marketo record of each record whose dedupe fields changed, and commit.
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub(crate) async fn run_push(
    ctx: &Context,
    plan: &Plan,
    spec: &ObjectSpec<'_>,
    scope: Scope<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let object = plan.object.as_str();
    let direction = Direction::CrmToMarketo;
    let (mut gathered, previous) = gather::crm_in_scope(ctx, plan, scope, cancel).await?;
    let mut step = commit::start(&mut gathered);
    let upserts = gathered.upserts();
    summary.counts_mut(object, direction).read += upserts.len() as u64;
    let pairings = pair::pair_push(ctx, plan, spec, &upserts).await?;
    let target = RowTarget {
        object,
        direction,
        previous: &previous,
    };
    let writes = write::settle(ctx, &target, pairings, options.dry_run, &mut step, summary);
    if options.dry_run {
        return Ok(());
    }
    let rekeyed: BTreeMap<String, String> = writes
        .iter()
        .filter_map(|w| w.replaces.clone().map(|old| (w.crm_key.clone(), old)))
        .collect();
    let family = &spec.family;
    write::apply_marketo(
        ctx, object, family, writes, &previous, &mut step, summary, cancel,
    )
    .await?;
    write::delete_replaced(ctx, plan, spec, &rekeyed, &mut step, summary).await?;
    commit::finish(ctx, step).await
}

/// Returns the value as JSON for a Marketo record.
pub(crate) fn to_record(fields: &Fields) -> Record {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
}

/// Returns the Marketo record's values as [`Fields`].
pub(crate) fn from_record(record: &Record) -> Fields {
    record
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_json(v)))
        .collect()
}

/// Returns a value as key text (`12` for an integer, the text itself, empty for null).
pub(crate) fn key_text(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = v.to_text();
            (!t.is_empty()).then_some(t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_treats_null_and_empty_as_absent() {
        assert_eq!(key_text(Some(&Value::Int(12))), Some("12".into()));
        assert_eq!(key_text(Some(&Value::Null)), None);
        assert_eq!(key_text(Some(&Value::Text(String::new()))), None);
        assert_eq!(key_text(None), None);
    }
}
