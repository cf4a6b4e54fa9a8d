//! Matching by the plan's match fields (email by default) and same-key groups: one-sided,
//! unlinked pairs are matched with each other and against the other system, so that the sync
//! never creates a second record with the same key on the other side itself.
//!
//! Per match key, with the unlinked one-sided records of both sides (read this cycle or found
//! by looking the key up on the other side):
//! - one on each side: they are paired;
//! - only one side has any: the oldest (lowest id) is created on the other side, each other one
//!   is held as a duplicate of it;
//! - two or more on one side and at least one on the other, or the key already belongs to a
//!   linked record: every unlinked record of the key is held.
//!
//! A held record is one error-ledger entry (code `duplicate` or `ambiguous_match`) naming every
//! record of the key by id, and nothing is written for it; a later cycle that finds it still
//! ambiguous updates that entry (same record key) instead of adding one. It syncs once an
//! operator merges the duplicates, edits the key or discards the entry and edits the record.

use std::collections::{BTreeMap, BTreeSet};

use super::LINK_OBJECT;
use super::gather::find_leads;
use super::records::{CRec, MLead, Pair, c_rec, live, match_key, value_text};
use super::step::Step;
use crate::engine::ledger::Failure;
use crate::engine::{CycleSummary, EngineError};
use crate::model::Value;
use crate::store::Direction;

/// The unlinked records of one match key.
#[derive(Default)]
struct KeyGroup {
    /// Indices of the pairs holding only a Marketo lead.
    m_pairs: Vec<usize>,
    /// Indices of the pairs holding only a CRM record.
    c_pairs: Vec<usize>,
    /// Free (unlinked, not read this cycle) Marketo leads found by the key.
    m_found: Vec<MLead>,
    /// Free CRM records found by the key.
    c_found: Vec<CRec>,
    /// Marketo leads with the key that are already linked, with their CRM record.
    m_taken: Vec<(i64, Option<String>)>,
    /// CRM records with the key that are already linked, with their Marketo lead.
    c_taken: Vec<(String, Option<String>)>,
}

/// The groups of one matching run, by match key.
type Groups = BTreeMap<Vec<String>, KeyGroup>;

/// What happens to the unlinked records of one match key.
enum Decision {
    /// One record on each side: pair the lone pair(s) (indices into the pairs).
    Pair { m: Option<usize>, c: Option<usize> },
    /// One record on one side, none on the other: it is created there.
    Create,
    /// The listed pairs are held: nothing is written for them, each is one ledger entry.
    Hold {
        held: Vec<usize>,
        code: &'static str,
        message: String,
    },
}

/// A pair holding only an unlinked Marketo lead.
fn lone_m(p: &Pair) -> bool {
    p.link.is_none() && p.c_id.is_none() && p.m.is_some()
}

/// A pair holding only an unlinked CRM record.
fn lone_c(p: &Pair) -> bool {
    p.link.is_none() && p.m_id.is_none() && p.c.is_some()
}

/// Matches one-sided, unlinked pairs (see the module docs); held pairs are dropped from
/// `pairs` and put in the ledger.
pub(super) async fn match_pairs(
    step: &mut Step<'_>,
    pairs: &mut Vec<Pair>,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let plan = step.plan;
    let Some(first) = plan.match_fields.first().cloned() else {
        return Ok(());
    };
    let mut groups: Groups = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        if lone_m(p)
            && let Some(k) = p.m.as_ref().and_then(|m| match_key(plan, &m.canon))
        {
            groups.entry(k).or_default().m_pairs.push(i);
        } else if lone_c(p)
            && let Some(k) = p.c.as_ref().and_then(|c| match_key(plan, &c.canon))
        {
            groups.entry(k).or_default().c_pairs.push(i);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    find_crm_records(step, &first, pairs, &mut groups).await?;
    find_marketo_leads(step, &first, pairs, &mut groups).await?;
    for (key, group) in groups {
        match group.decide(pairs, &key) {
            Decision::Pair { m, c } => join(pairs, group, m, c),
            Decision::Create => {}
            Decision::Hold {
                held,
                code,
                message,
            } => {
                let failure = Failure::new(code, message, false);
                hold(step, pairs, &key, &group, held, &failure, summary);
            }
        }
    }
    pairs.retain(|p| p.m.is_some() || p.c.is_some() || p.link.is_some());
    Ok(())
}

/// Looks the match keys of Marketo-only groups up in the CRM, adding the records found to the
/// groups (free, or taken by a link or a pair of this cycle).
async fn find_crm_records(
    step: &Step<'_>,
    first: &str,
    pairs: &[Pair],
    groups: &mut Groups,
) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let wanted: Vec<Value> = groups
        .values()
        .flat_map(|g| g.m_pairs.iter())
        .filter_map(|i| pairs[*i].m.as_ref())
        .filter_map(|m| m.canon.get(first).filter(|v| !v.is_null()).cloned())
        .collect();
    let Some(crm_field) = plan.field(first).and_then(|f| f.crm.clone()) else {
        return Ok(());
    };
    if wanted.is_empty() {
        return Ok(());
    }
    let mut found = Vec::new();
    for chunk in wanted.chunks(300) {
        found.extend(
            ctx.crm
                .find_folded(&plan.crm_object, &crm_field, chunk)
                .await?,
        );
    }
    let keys: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    let linked: BTreeMap<String, String> =
        live(ctx.store.links_by_crm_keys(LINK_OBJECT, &keys).await?)
            .into_iter()
            .map(|l| (l.crm_key, l.marketo_key))
            .collect();
    let lone: BTreeSet<&str> = pairs
        .iter()
        .filter(|p| lone_c(p))
        .filter_map(|p| p.c_id.as_deref())
        .collect();
    let partner: BTreeMap<&str, Option<i64>> = pairs
        .iter()
        .filter(|p| !lone_c(p))
        .filter_map(|p| Some((p.c_id.as_deref()?, p.m_id)))
        .collect();
    for r in found {
        if lone.contains(r.id.as_str()) {
            continue;
        }
        let Ok(c) = c_rec(plan, &r.id, r.modified_at, &r.fields) else {
            continue;
        };
        let Some(group) = match_key(plan, &c.canon).and_then(|k| groups.get_mut(&k)) else {
            continue;
        };
        if group.c_found.iter().any(|f| f.id == c.id)
            || group.c_taken.iter().any(|(id, _)| *id == c.id)
        {
            continue;
        }
        if let Some(m) = linked.get(&c.id) {
            group.c_taken.push((c.id.clone(), Some(m.clone())));
        } else if let Some(m) = partner.get(c.id.as_str()) {
            group.c_taken.push((c.id.clone(), m.map(|m| m.to_string())));
        } else {
            group.c_found.push(c);
        }
    }
    Ok(())
}

/// Looks the match keys of CRM-only groups up in Marketo, adding the leads found to the groups
/// (free, or taken by a link or a pair of this cycle).
async fn find_marketo_leads(
    step: &Step<'_>,
    first: &str,
    pairs: &[Pair],
    groups: &mut Groups,
) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let wanted: Vec<String> = groups
        .values()
        .flat_map(|g| g.c_pairs.iter())
        .filter_map(|i| pairs[*i].c.as_ref())
        .filter_map(|c| value_text(c.canon.get(first)))
        .collect();
    let Some(m_field) = plan.field(first).and_then(|f| f.marketo.clone()) else {
        return Ok(());
    };
    if wanted.is_empty() {
        return Ok(());
    }
    let found = find_leads(ctx, plan, &m_field, &wanted).await?;
    let keys: Vec<String> = found.iter().map(|m| m.id.to_string()).collect();
    let linked: BTreeMap<String, String> =
        live(ctx.store.links_by_marketo_keys(LINK_OBJECT, &keys).await?)
            .into_iter()
            .map(|l| (l.marketo_key, l.crm_key))
            .collect();
    let lone: BTreeSet<i64> = pairs
        .iter()
        .filter(|p| lone_m(p))
        .filter_map(|p| p.m_id)
        .collect();
    let partner: BTreeMap<i64, Option<String>> = pairs
        .iter()
        .filter(|p| !lone_m(p))
        .filter_map(|p| Some((p.m_id?, p.c_id.clone())))
        .collect();
    for m in found {
        if lone.contains(&m.id) {
            continue;
        }
        let Some(group) = match_key(plan, &m.canon).and_then(|k| groups.get_mut(&k)) else {
            continue;
        };
        if group.m_found.iter().any(|f| f.id == m.id)
            || group.m_taken.iter().any(|(id, _)| *id == m.id)
        {
            continue;
        }
        if let Some(c) = linked.get(&m.id.to_string()) {
            group.m_taken.push((m.id, Some(c.clone())));
        } else if let Some(c) = partner.get(&m.id) {
            group.m_taken.push((m.id, c.clone()));
        } else {
            group.m_found.push(m);
        }
    }
    Ok(())
}

/// Pairs the one record of each side of a group: two lone pairs become one, or a lone pair
/// takes the record found on the other side.
fn join(pairs: &mut [Pair], group: KeyGroup, m: Option<usize>, c: Option<usize>) {
    match (m, c) {
        (Some(i), Some(j)) => {
            let other = std::mem::take(&mut pairs[j]);
            pairs[i].c_id = other.c_id;
            pairs[i].c = other.c;
        }
        (Some(i), None) => {
            if let Some(c) = group.c_found.into_iter().next() {
                pairs[i].c_id = Some(c.id.clone());
                pairs[i].c = Some(c);
            }
        }
        (None, Some(j)) => {
            if let Some(m) = group.m_found.into_iter().next() {
                pairs[j].m_id = Some(m.id);
                pairs[j].m = Some(m);
            }
        }
        (None, None) => {}
    }
}

/// Holds the pairs `held` of a group: each is emptied (nothing is written for it), counted as
/// failed and put in the ledger with every record of the key.
fn hold(
    step: &mut Step<'_>,
    pairs: &mut [Pair],
    key: &[String],
    group: &KeyGroup,
    held: Vec<usize>,
    failure: &Failure,
    summary: &mut CycleSummary,
) {
    let object = step.plan.object.clone();
    let ids = serde_json::json!({
        "match_key": key,
        "marketo_leads": group.all_marketo(pairs),
        "crm_records": group.all_crm(pairs),
    });
    for i in held {
        let p = std::mem::take(&mut pairs[i]);
        let (direction, record_key) = match (p.m_id, p.c_id) {
            (Some(m), None) => (Direction::MarketoToCrm, m.to_string()),
            (None, Some(c)) => (Direction::CrmToMarketo, c),
            _ => continue,
        };
        summary.counts_mut(&object, direction).failed += 1;
        step.error(direction, record_key, None, ids.clone(), failure.clone());
    }
}

/// Orders ids as numbers when both are, as text otherwise (the oldest record first).
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Sorts ids oldest first and drops repeats.
fn sorted_ids(mut ids: Vec<String>) -> Vec<String> {
    ids.sort_by(|a, b| id_order(a, b));
    ids.dedup();
    ids
}

impl KeyGroup {
    fn all_marketo(&self, pairs: &[Pair]) -> Vec<String> {
        sorted_ids(
            self.m_pairs
                .iter()
                .filter_map(|i| pairs[*i].m_id)
                .chain(self.m_found.iter().map(|m| m.id))
                .chain(self.m_taken.iter().map(|(id, _)| *id))
                .map(|id| id.to_string())
                .collect(),
        )
    }

    fn all_crm(&self, pairs: &[Pair]) -> Vec<String> {
        sorted_ids(
            self.c_pairs
                .iter()
                .filter_map(|i| pairs[*i].c_id.clone())
                .chain(self.c_found.iter().map(|c| c.id.clone()))
                .chain(self.c_taken.iter().map(|(id, _)| id.clone()))
                .collect(),
        )
    }

    /// Names every record of the key, by side.
    fn names(&self, pairs: &[Pair]) -> String {
        let m = self.all_marketo(pairs);
        let c = self.all_crm(pairs);
        let mut parts = Vec::new();
        if !m.is_empty() {
            parts.push(format!("Marketo leads [{}]", m.join(", ")));
        }
        if !c.is_empty() {
            parts.push(format!("CRM records [{}]", c.join(", ")));
        }
        parts.join(" and ")
    }

    /// The lone pairs of the key.
    fn lone(&self) -> Vec<usize> {
        self.m_pairs.iter().chain(&self.c_pairs).copied().collect()
    }

    fn decide(&self, pairs: &[Pair], key: &[String]) -> Decision {
        let key = key.join(" ");
        // The key already belongs to a linked pair: every new record of it is a duplicate.
        if let Some(links) = self.describe_taken() {
            return Decision::Hold {
                held: self.lone(),
                code: "duplicate",
                message: format!(
                    "duplicate match key `{key}`: {} share it, and {links}; nothing is synced for the \
                     unlinked ones until the duplicates are merged, the key is edited or this \
                     error is discarded",
                    self.names(pairs)
                ),
            };
        }
        let m_count = self.m_pairs.len() + self.m_found.len();
        let c_count = self.c_pairs.len() + self.c_found.len();
        match (m_count, c_count) {
            (1, 1) => Decision::Pair {
                m: self.m_pairs.first().copied(),
                c: self.c_pairs.first().copied(),
            },
            (0 | 1, 0) | (0, 1) => Decision::Create,
            (_, 0) | (0, _) => self.keep_oldest(pairs, &key, m_count > 0),
            _ => Decision::Hold {
                held: self.lone(),
                code: "ambiguous_match",
                message: format!(
                    "ambiguous match: {} share the match key `{key}`; nothing is synced for the unlinked \
                     ones until the duplicates are merged, the key is edited or this error is \
                     discarded",
                    self.names(pairs)
                ),
            },
        }
    }

    /// Duplicates on one side only (Marketo when `marketo`): the oldest is created, the others
    /// are held.
    fn keep_oldest(&self, pairs: &[Pair], key: &str, marketo: bool) -> Decision {
        let mut ids: Vec<(String, usize)> = self
            .lone()
            .into_iter()
            .filter_map(|i| {
                let p = &pairs[i];
                let id = p.m_id.map(|m| m.to_string()).or_else(|| p.c_id.clone())?;
                Some((id, i))
            })
            .collect();
        ids.sort_by(|a, b| id_order(&a.0, &b.0));
        let Some((kept, _)) = ids.first().cloned() else {
            return Decision::Create;
        };
        let (side, other) = if marketo {
            ("Marketo", "CRM")
        } else {
            ("CRM", "Marketo")
        };
        Decision::Hold {
            held: ids.into_iter().skip(1).map(|(_, i)| i).collect(),
            code: "duplicate",
            message: format!(
                "duplicate match key `{key}`: {} share it; only the oldest {side} record \
                 ({kept}) is synced to the {other}, the others are held until the \
                 duplicates are merged, the key is edited or this error is discarded",
                self.names(pairs)
            ),
        }
    }

    /// Returns the links that already hold this key, as words, if any.
    fn describe_taken(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (m, c) in &self.m_taken {
            parts.push(match c {
                Some(c) => format!("Marketo lead {m} is already linked to CRM record {c}"),
                None => format!("Marketo lead {m} is already paired"),
            });
        }
        for (c, m) in &self.c_taken {
            parts.push(match m {
                Some(m) => format!("CRM record {c} is already linked to Marketo lead {m}"),
                None => format!("CRM record {c} is already paired"),
            });
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
