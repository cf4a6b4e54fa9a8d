//! The pair stage: each gathered record is mapped to canonical values (the canonical stage),
//! given its key on the other side by the spec's key hook, and paired with its link; a linked
//! record whose agreed values did not change needs no write.

use std::collections::BTreeMap;

use super::spec::ObjectSpec;
use super::write::{PlannedWrite, waits_for_parent};
use super::{key_text, to_record};
use crate::crm::{Change, ChangeKind};
use crate::engine::ledger::Failure;
use crate::engine::objects::LEAD_LINK_OBJECT;
use crate::engine::{Context, EngineError};
use crate::mapping::Plan;
use crate::model::{Fields, Side};
use crate::store::{Link, Tombstone, TombstoneKind};

/// What the pair stage decided for one gathered record.
#[derive(Debug)]
pub(crate) enum Pairing {
    /// The record cannot be written (a value the mapping cannot read, a missing key): its
    /// failure goes to the ledger.
    Refused {
        /// The record's key on its side.
        key: String,
        /// Why.
        failure: Failure,
    },
    /// The record's parent is not linked yet (`*_not_linked`).
    WaitsForParent {
        /// The record's key on its side.
        key: String,
        /// The parent's refusal, retryable.
        failure: Failure,
    },
    /// The link's agreed values equal the record: nothing to write.
    Unchanged {
        /// The record's key on its side.
        key: String,
    },
    /// The record is written (on a dry run, planned).
    Write(PlannedWrite),
}

/// Returns the links of `object` by CRM key: for a key with several links (a record re-keyed
/// or re-linked after a merge keeps its old, tombstoned link beside the new one), the live one.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn links_by_crm(
    ctx: &Context,
    object: &str,
    keys: &[String],
) -> Result<BTreeMap<String, Link>, EngineError> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_crm_keys(object, chunk).await? {
            keep_live(&mut out, l);
        }
    }
    Ok(out)
}

/// Adds `link` under its CRM key unless a live link already holds the key.
fn keep_live(out: &mut BTreeMap<String, Link>, link: Link) {
    match out.get(&link.crm_key) {
        Some(held) if held.tombstone.is_none() => {}
        _ => {
            out.insert(link.crm_key.clone(), link);
        }
    }
}

/// How many CRM merges [`lead_ids_by_contact`] follows from a merged-away contact.
const MERGE_HOPS: usize = 8;

/// Returns the Marketo lead id linked to each CRM contact id, from the leads' live links.
///
/// A contact the CRM merged into another one resolves to its survivor's lead (following a chain
/// of merges): a CRM that leaves a merged-away contact's roles and custom records pointing at
/// it means them for the survivor, as Marketo moves a merged lead's roles to the winner.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn lead_ids_by_contact(
    ctx: &Context,
    contact_ids: &[String],
) -> Result<BTreeMap<String, i64>, EngineError> {
    let mut out = BTreeMap::new();
    // Each contact still to resolve, by the contact whose link is looked up next.
    let mut pending: BTreeMap<String, Vec<String>> = contact_ids
        .iter()
        .map(|c| (c.clone(), vec![c.clone()]))
        .collect();
    for _ in 0..=MERGE_HOPS {
        if pending.is_empty() {
            break;
        }
        let keys: Vec<String> = pending.keys().cloned().collect();
        let mut next: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (contact, link) in resolve_contacts(ctx, &keys).await? {
            let Some(asked) = pending.remove(&contact) else {
                continue;
            };
            match link {
                Resolved::Lead(id) => out.extend(asked.into_iter().map(|a| (a, id))),
                Resolved::MergedInto(into) => next.entry(into).or_default().extend(asked),
            }
        }
        pending = next;
    }
    Ok(out)
}

/// What a contact's lead links say: its live lead, or the CRM contact it was merged into.
enum Resolved {
    Lead(i64),
    MergedInto(String),
}

/// Returns, for each of these contacts that has one, its live lead or its CRM-side merge.
async fn resolve_contacts(
    ctx: &Context,
    contacts: &[String],
) -> Result<BTreeMap<String, Resolved>, EngineError> {
    let mut out = BTreeMap::new();
    for chunk in contacts.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx.store.links_by_crm_keys(LEAD_LINK_OBJECT, chunk).await? {
            match &l.tombstone {
                None => {
                    if let Ok(id) = l.marketo_key.parse::<i64>() {
                        out.insert(l.crm_key, Resolved::Lead(id));
                    }
                }
                Some(Tombstone {
                    kind: TombstoneKind::Merged { into },
                    side: Side::Crm,
                    ..
                }) if *into != l.crm_key => {
                    out.entry(l.crm_key)
                        .or_insert_with(|| Resolved::MergedInto(into.clone()));
                }
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// Returns the CRM contact id linked to each of these Marketo lead ids, from the leads' live
/// links (the Marketo -> CRM counterpart of [`lead_ids_by_contact`]).
///
/// # Errors
///
/// A store failure.
pub(crate) async fn contacts_by_lead(
    ctx: &Context,
    lead_ids: &[String],
) -> Result<BTreeMap<String, String>, EngineError> {
    let mut out = BTreeMap::new();
    for chunk in lead_ids.chunks(crate::store::KEYS_PER_LOOKUP) {
        for l in ctx
            .store
            .links_by_marketo_keys(LEAD_LINK_OBJECT, chunk)
            .await?
        {
            if l.tombstone.is_none() {
                out.insert(l.marketo_key, l.crm_key);
            }
        }
    }
    Ok(out)
}

/// Returns the raw CRM field of a change as key text.
pub(crate) fn raw_key(change: &Change, column: &str) -> Option<String> {
    match &change.kind {
        ChangeKind::Upserted { fields } => key_text(fields.get(column)),
        ChangeKind::Deleted(_) => None,
    }
}

/// Pairs every created or updated CRM record with its link and decides what to write.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn pair_push(
    ctx: &Context,
    plan: &Plan,
    spec: &ObjectSpec<'_>,
    upserts: &[&Change],
) -> Result<Vec<Pairing>, EngineError> {
    let ids: Vec<String> = upserts.iter().map(|c| c.id.clone()).collect();
    let links = links_by_crm(ctx, &plan.object, &ids).await?;
    let leads = match spec.contact_column {
        Some(column) => {
            let contacts: Vec<String> = upserts.iter().filter_map(|c| raw_key(c, column)).collect();
            lead_ids_by_contact(ctx, &contacts).await?
        }
        None => BTreeMap::new(),
    };
    let mut out = Vec::with_capacity(upserts.len());
    for change in upserts {
        if let ChangeKind::Upserted { fields } = &change.kind {
            out.push(pair_one(
                plan,
                spec,
                change,
                fields,
                links.get(&change.id),
                &leads,
            ));
        }
    }
    Ok(out)
}

/// Pairs one CRM record: canonical values, its Marketo key, and what changed since its link.
fn pair_one(
    plan: &Plan,
    spec: &ObjectSpec<'_>,
    change: &Change,
    raw: &Fields,
    link: Option<&Link>,
    leads: &BTreeMap<String, i64>,
) -> Pairing {
    let key = change.id.clone();
    let canonical = match plan.to_canonical(Side::Crm, raw) {
        Ok(c) => c,
        Err(e) => {
            let failure = Failure::invalid_value(&e);
            return Pairing::Refused { key, failure };
        }
    };
    let (marketo_key, key_fields) = match spec.keys.keys(plan, change, raw, &canonical, leads) {
        Ok(k) => k,
        Err(failure) if waits_for_parent(&failure.code) => {
            return Pairing::WaitsForParent { key, failure };
        }
        Err(failure) => return Pairing::Refused { key, failure },
    };
    let mut base = canonical.clone();
    for (k, v) in &key_fields {
        base.insert(format!("key:{k}"), v.clone());
    }
    let existing = link.filter(|l| l.tombstone.is_none());
    if existing.is_some_and(|l| l.base == base && l.marketo_key == marketo_key) {
        return Pairing::Unchanged { key };
    }
    let linked = existing.filter(|l| l.marketo_key == marketo_key);
    // Only changed fields are written to a linked record; a new one gets every field.
    let to_send: Fields = match linked {
        Some(l) => canonical
            .iter()
            .filter(|(k, v)| l.base.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => canonical,
    };
    let mut record = to_record(&plan.render(Side::Marketo, &to_send));
    for (k, v) in &key_fields {
        record.insert(k.clone(), v.to_json());
    }
    let replaces = existing
        .filter(|l| l.marketo_key != marketo_key)
        .map(|l| l.marketo_key.clone());
    // The linked record's values on the Marketo side are the link's agreed base.
    let before = linked.map(|l| to_record(&plan.render(Side::Marketo, &l.base)));
    Pairing::Write(PlannedWrite {
        crm_key: key,
        marketo_key,
        record,
        base,
        replaces,
        before,
        key_names: key_fields.into_keys().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fields, Side};
    use crate::store::{Tombstone, TombstoneKind};

    fn link(marketo: &str, dead: bool) -> Link {
        Link {
            object: "program_members".into(),
            marketo_key: marketo.into(),
            crm_key: "row-2".into(),
            base: Fields::new(),
            base_hash: String::new(),
            agreed_at: chrono::DateTime::UNIX_EPOCH,
            tombstone: dead.then_some(Tombstone {
                kind: TombstoneKind::Deleted,
                side: Side::Marketo,
                at: chrono::DateTime::UNIX_EPOCH,
            }),
        }
    }

    #[test]
    fn a_crm_key_with_a_dead_and_a_live_link_keeps_the_live_one_in_either_order() {
        for order in [[true, false], [false, true]] {
            let mut out = BTreeMap::new();
            for dead in order {
                keep_live(&mut out, link(if dead { "1107:3" } else { "1107:7" }, dead));
            }
            assert_eq!(out["row-2"].marketo_key, "1107:7", "{order:?}");
        }
        // Two dead links: the last read stands (either says the record is gone).
        let mut out = BTreeMap::new();
        keep_live(&mut out, link("1107:3", true));
        keep_live(&mut out, link("1107:5", true));
        assert!(out["row-2"].tombstone.is_some());
    }
}
