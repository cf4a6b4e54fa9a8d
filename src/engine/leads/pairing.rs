//! Pairing: each lead and CRM record read this cycle is paired by store link, then by the keys
//! each side holds of the other (the lead's CRM-key field, the record's Marketo-id column),
//! then by the match fields ([`super::matching`]); the pairs are reconciled three-way against
//! the link's base and written ([`super::write`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_util::sync::CancellationToken;

use super::LINK_OBJECT;
use super::conversion::hold_crm_leads;
use super::gather::fetch_leads;
use super::matching::match_pairs;
use super::records::{CRec, MLead, Pair, c_rec, live};
use super::step::Step;
use super::write;
use crate::config::{DeletePolicy, SyncSettings};
use crate::engine::reconcile::{FieldRule, Reconciled, SideState, reconcile};
use crate::engine::{CycleSummary, EngineError};
use crate::model::{Fields, Side};
use crate::store::{Link, TombstoneKind};

/// The pairs of one run, with their index by lead id and by CRM key.
#[derive(Default)]
struct Pairs {
    list: Vec<Pair>,
    by_m: HashMap<i64, usize>,
    by_c: HashMap<String, usize>,
}

/// Pairs, matches, reconciles and writes; the step's commit collects the results.
pub(super) async fn sync_pairs(
    step: &mut Step<'_>,
    mut ms: BTreeMap<i64, MLead>,
    mut cs: BTreeMap<String, CRec>,
    summary: &mut CycleSummary,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let links = links_of(step, &mut ms, &mut cs).await?;
    let mut pairs = Pairs::from_links(links);
    pairs.add_leads(ms);
    pairs.add_crm_records(cs);
    read_crm_partners(step, &mut pairs).await?;
    read_lead_partners(step, &mut pairs, summary).await?;
    let mut pairs = pairs.list;
    match_pairs(step, &mut pairs, summary).await?;
    hold_crm_leads(step, &mut pairs, summary).await?;
    for p in &pairs {
        tracing::debug!(
            lead = ?p.m_id,
            crm = ?p.c_id,
            linked = p.link.is_some(),
            lead_read = p.m.is_some(),
            crm_read = p.c.is_some(),
            "lead pair"
        );
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    write::write_pairs(step, pairs, summary, cancel).await?;
    Ok(())
}

/// Returns the live links of the records read and of the keys they hold of the other side,
/// after leaving out the records a deletion settled.
async fn links_of(
    step: &Step<'_>,
    ms: &mut BTreeMap<i64, MLead>,
    cs: &mut BTreeMap<String, CRec>,
) -> Result<Vec<Link>, EngineError> {
    let ctx = step.ctx;
    let store = &ctx.store;
    let m_keys: Vec<String> = ms.keys().map(i64::to_string).collect();
    let c_keys: Vec<String> = cs.keys().cloned().collect();
    let m_links = store.links_by_marketo_keys(LINK_OBJECT, &m_keys).await?;
    let c_links = store.links_by_crm_keys(LINK_OBJECT, &c_keys).await?;
    // A record whose partner was deleted or merged away on the other side, with a policy that
    // deleted or flagged it, is settled: what was read of it is older than that, so it must not
    // come back as a new record on the other side.
    let (retired_m, retired_c) = retired(&m_links, &c_links, &step.ctx.settings.sync);
    ms.retain(|id, _| !retired_m.contains(&id.to_string()));
    cs.retain(|id, _| !retired_c.contains(id));
    if !retired_m.is_empty() || !retired_c.is_empty() {
        tracing::debug!(
            ?retired_m,
            ?retired_c,
            "records settled by a deletion left out"
        );
    }
    let mut links = live(m_links);
    links.extend(live(c_links));
    // Keys the records hold of the other side.
    let held_crm: Vec<String> = ms.values().filter_map(|m| m.crm_key.clone()).collect();
    let held_m: Vec<String> = cs.values().filter_map(|c| c.marketo_key.clone()).collect();
    links.extend(live(store.links_by_crm_keys(LINK_OBJECT, &held_crm).await?));
    links.extend(live(
        store.links_by_marketo_keys(LINK_OBJECT, &held_m).await?,
    ));
    Ok(links)
}

/// Returns the Marketo ids and CRM keys (from these links) of records whose partner left its
/// side under a delete or merge policy other than `ignore`, and that have no live link since.
fn retired(
    m_links: &[Link],
    c_links: &[Link],
    sync: &SyncSettings,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let settled = |l: &Link, side: Side| {
        let Some(t) = &l.tombstone else { return false };
        if t.side != side {
            return false;
        }
        match (side, &t.kind) {
            // Marketo deleted or merged the lead; the CRM record followed the policy.
            (Side::Marketo, TombstoneKind::Deleted) => sync.lead_deletes != DeletePolicy::Ignore,
            (Side::Marketo, TombstoneKind::Merged { .. }) => {
                sync.lead_merges != DeletePolicy::Ignore
            }
            // The CRM deleted the record; the lead followed the policy.
            (Side::Crm, TombstoneKind::Deleted) => sync.lead_deletes == DeletePolicy::Delete,
            // The CRM merged the record; the lead was merged into the survivor's.
            (Side::Crm, TombstoneKind::Merged { .. }) => true,
        }
    };
    let all_live = || {
        m_links
            .iter()
            .chain(c_links)
            .filter(|l| l.tombstone.is_none())
    };
    let live_m: BTreeSet<&str> = all_live().map(|l| l.marketo_key.as_str()).collect();
    let live_c: BTreeSet<&str> = all_live().map(|l| l.crm_key.as_str()).collect();
    let m = m_links
        .iter()
        .filter(|l| settled(l, Side::Crm) && !live_m.contains(l.marketo_key.as_str()))
        .map(|l| l.marketo_key.clone())
        .collect();
    let c = c_links
        .iter()
        .filter(|l| settled(l, Side::Marketo) && !live_c.contains(l.crm_key.as_str()))
        .map(|l| l.crm_key.clone())
        .collect();
    (m, c)
}

impl Pairs {
    /// One pair per link (the first link of a lead or a CRM record wins).
    fn from_links(links: Vec<Link>) -> Self {
        let mut pairs = Pairs::default();
        for l in links {
            let Ok(m_id) = l.marketo_key.parse::<i64>() else {
                continue;
            };
            if pairs.by_m.contains_key(&m_id) || pairs.by_c.contains_key(&l.crm_key) {
                continue;
            }
            pairs.push(Pair {
                m_id: Some(m_id),
                c_id: Some(l.crm_key.clone()),
                link: Some(l),
                ..Pair::default()
            });
        }
        pairs
    }

    /// Adds `pair`, indexed by its ids.
    fn push(&mut self, pair: Pair) {
        let i = self.list.len();
        if let Some(m) = pair.m_id {
            self.by_m.insert(m, i);
        }
        if let Some(c) = &pair.c_id {
            self.by_c.insert(c.clone(), i);
        }
        self.list.push(pair);
    }

    /// Places each lead read: in its link's pair, else in the pair of the CRM key it holds,
    /// else in a new pair (claiming that key when no pair has it).
    fn add_leads(&mut self, ms: BTreeMap<i64, MLead>) {
        for (id, m) in ms {
            if let Some(&i) = self.by_m.get(&id) {
                self.list[i].m = Some(m);
                continue;
            }
            if let Some(key) = m.crm_key.clone()
                && let Some(&i) = self.by_c.get(&key)
                && self.list[i].m_id.is_none()
            {
                self.list[i].m_id = Some(id);
                self.list[i].m = Some(m);
                self.by_m.insert(id, i);
                continue;
            }
            let c_id = m.crm_key.clone().filter(|k| !self.by_c.contains_key(k));
            self.push(Pair {
                m_id: Some(id),
                c_id,
                m: Some(m),
                ..Pair::default()
            });
        }
    }

    /// Places each CRM record read: in its link's pair, else in the pair of the lead id it
    /// holds (a new one when no pair has that lead), else in a new pair.
    fn add_crm_records(&mut self, cs: BTreeMap<String, CRec>) {
        for (id, c) in cs {
            if let Some(&i) = self.by_c.get(&id) {
                self.list[i].c = Some(c);
                continue;
            }
            if let Some(mk) = c.marketo_key.as_deref().and_then(|k| k.parse::<i64>().ok()) {
                match self.by_m.get(&mk) {
                    Some(&i) if self.list[i].c_id.is_none() => {
                        self.list[i].c_id = Some(id.clone());
                        self.list[i].c = Some(c);
                        self.by_c.insert(id, i);
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        self.push(Pair {
                            m_id: Some(mk),
                            c_id: Some(id),
                            c: Some(c),
                            ..Pair::default()
                        });
                        continue;
                    }
                }
            }
            self.push(Pair {
                c_id: Some(id),
                c: Some(c),
                ..Pair::default()
            });
        }
    }
}

/// Reads the CRM record of each unlinked pair whose CRM key is known but not read; a key
/// pointing at nothing is dropped (the pair is matched or created instead).
async fn read_crm_partners(step: &Step<'_>, pairs: &mut Pairs) -> Result<(), EngineError> {
    let (ctx, plan) = (step.ctx, step.plan);
    let unread = |p: &Pair| p.link.is_none() && p.c.is_none();
    let need_c: Vec<String> = pairs
        .list
        .iter()
        .filter(|p| unread(p))
        .filter_map(|p| p.c_id.clone())
        .collect();
    if need_c.is_empty() {
        return Ok(());
    }
    for r in ctx.crm.get(&plan.crm_object, &need_c).await? {
        if let (Some(&i), Ok(c)) = (
            pairs.by_c.get(&r.id),
            c_rec(plan, &r.id, r.modified_at, &r.fields),
        ) {
            // A lead's CRM key that the record does not return (it names another lead, as
            // a merge winner inheriting the loser's key does) is no claim.
            let claims_other = matches!(
                (&c.marketo_key, pairs.list[i].m_id),
                (Some(k), Some(m)) if *k != m.to_string()
            );
            if !claims_other {
                pairs.list[i].c = Some(c);
            }
        }
    }
    drop_unread_keys(pairs);
    Ok(())
}

/// Drops the CRM key of each unlinked pair whose record was not read (gone, or claiming
/// another lead), then joins the leads left alone with the records claiming them
/// ([`join_claimants`]).
fn drop_unread_keys(pairs: &mut Pairs) {
    let unread = |p: &Pair| p.link.is_none() && p.c.is_none();
    for p in pairs.list.iter_mut().filter(|p| unread(p)) {
        if let Some(key) = p.c_id.take() {
            tracing::debug!(lead = ?p.m_id, crm = %key, "a lead's crm key names no record that is its partner");
        }
    }
    join_claimants(pairs);
}

/// Joins each unlinked lead left without a CRM record (its CRM-key field named a record gone
/// or claiming another lead) with the lone CRM record read this cycle that holds its id.
///
/// Such a record was placed alone by [`Pairs::add_crm_records`], since the lead's pair held
/// the key it named then. Left apart, the lead would get a "new" CRM record through the upsert
/// keyed by the Marketo-id column, which lands on that very record, while the record got a new
/// lead of its own: two leads linked to one record. Found by the convergence harness (seed
/// 220053, engine as a child process): a cycle killed after taking over contact 17 for the
/// merge winner lead 16, whose CRM key named contact 16, merged away in the CRM since.
fn join_claimants(pairs: &mut Pairs) {
    let lone_c = |p: &Pair| p.link.is_none() && p.m_id.is_none() && p.c.is_some();
    let mut claimants: HashMap<i64, usize> = HashMap::new();
    for (i, p) in pairs.list.iter().enumerate().filter(|(_, p)| lone_c(p)) {
        let claim = p.c.as_ref().and_then(|c| c.marketo_key.as_deref());
        if let Some(m) = claim.and_then(|k| k.trim().parse::<i64>().ok()) {
            // Two records claiming one lead: neither is joined here (matching holds them).
            if claimants.insert(m, i).is_some() {
                claimants.insert(m, usize::MAX);
            }
        }
    }
    let mut joined: BTreeSet<usize> = BTreeSet::new();
    for i in 0..pairs.list.len() {
        let p = &pairs.list[i];
        if p.link.is_some() || p.c_id.is_some() || p.m.is_none() {
            continue;
        }
        let Some(&j) = p.m_id.and_then(|m| claimants.get(&m)) else {
            continue;
        };
        if j == usize::MAX {
            continue;
        }
        let c = pairs.list[j].c.take();
        let c_id = pairs.list[j].c_id.take();
        tracing::debug!(lead = ?pairs.list[i].m_id, crm = ?c_id, "a lone crm record holding the lead's id joins it");
        pairs.list[i].c = c;
        pairs.list[i].c_id = c_id;
        joined.insert(j);
    }
    if joined.is_empty() {
        return;
    }
    // The emptied pairs go; the indexes are rebuilt.
    let mut list = std::mem::take(&mut pairs.list);
    let mut i = 0;
    list.retain(|_| {
        let keep = !joined.contains(&i);
        i += 1;
        keep
    });
    *pairs = Pairs::default();
    for p in list {
        pairs.push(p);
    }
}

/// Reads the lead of each unlinked pair whose lead id is known but not read; an id pointing at
/// nothing is dropped.
async fn read_lead_partners(
    step: &Step<'_>,
    pairs: &mut Pairs,
    summary: &mut CycleSummary,
) -> Result<(), EngineError> {
    let unread = |p: &Pair| p.link.is_none() && p.m.is_none();
    let need_m: Vec<i64> = pairs
        .list
        .iter()
        .filter(|p| unread(p))
        .filter_map(|p| p.m_id)
        .collect();
    if need_m.is_empty() {
        return Ok(());
    }
    for m in fetch_leads(step.ctx, step.plan, &need_m, summary).await? {
        if let Some(&i) = pairs.by_m.get(&m.id) {
            pairs.list[i].m = Some(m);
        }
    }
    for p in pairs.list.iter_mut().filter(|p| unread(p)) {
        p.m_id = None;
    }
    Ok(())
}

/// Reconciles one pair three-way against its link's agreed values (none when not linked: every
/// value read is new) with the lead plan's `rules`; a side not read is unchanged. The cycle's
/// pairs and bootstrap's linked leads ([`super::inbound`]) are reconciled by this one function.
pub(super) fn reconcile_pair(
    rules: &[FieldRule],
    link: Option<&Link>,
    m: Option<&MLead>,
    c: Option<&CRec>,
) -> Reconciled {
    let empty = Fields::new();
    let base = link.map_or(&empty, |l| &l.base);
    reconcile(
        rules,
        base,
        m.map(|m| SideState {
            fields: &m.canon,
            modified_at: m.at,
        }),
        c.map(|c| SideState {
            fields: &c.canon,
            modified_at: Some(c.at),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(id: i64, crm_key: Option<&str>) -> MLead {
        MLead {
            id,
            canon: Fields::new(),
            at: None,
            crm_key: crm_key.map(str::to_owned),
            external_company_id: None,
        }
    }

    fn contact(id: &str, marketo_key: Option<&str>) -> CRec {
        CRec {
            id: id.to_owned(),
            canon: Fields::new(),
            at: chrono::DateTime::UNIX_EPOCH,
            marketo_key: marketo_key.map(str::to_owned),
        }
    }

    /// Seed 220053's cycle after the kill: merge winner lead 16 still names contact 16 (merged
    /// away in the CRM, so not read), and contact 17, taken over for lead 16 by the killed
    /// cycle, holds lead 16's id. They end in one pair, not two lone ones.
    #[test]
    fn a_lead_whose_crm_key_names_a_gone_record_joins_the_record_holding_its_id() {
        let mut pairs = Pairs::default();
        pairs.add_leads(BTreeMap::from([(16, lead(16, Some("16")))]));
        pairs.add_crm_records(BTreeMap::from([(
            "17".to_owned(),
            contact("17", Some("16")),
        )]));
        assert_eq!(pairs.list.len(), 2, "the record is placed alone first");
        drop_unread_keys(&mut pairs);
        assert_eq!(pairs.list.len(), 1);
        let p = &pairs.list[0];
        assert_eq!((p.m_id, p.c_id.as_deref()), (Some(16), Some("17")));
        assert!(p.m.is_some() && p.c.is_some());
        assert_eq!(pairs.by_m[&16], 0);
        assert_eq!(pairs.by_c["17"], 0);
    }

    /// Two lone records holding one lead's id: neither is joined (matching decides).
    #[test]
    fn two_records_holding_one_lead_id_are_not_joined() {
        let mut pairs = Pairs::default();
        pairs.add_leads(BTreeMap::from([(16, lead(16, Some("16")))]));
        pairs.add_crm_records(BTreeMap::from([
            ("17".to_owned(), contact("17", Some("16"))),
            ("18".to_owned(), contact("18", Some("16"))),
        ]));
        drop_unread_keys(&mut pairs);
        assert_eq!(pairs.list.len(), 3);
        assert!(
            pairs
                .list
                .iter()
                .all(|p| p.m_id.is_none() || p.c_id.is_none())
        );
    }

    /// A linked lead keeps its link's record; a lone record claiming it stays alone.
    #[test]
    fn a_linked_lead_is_not_joined() {
        let link = crate::engine::pipeline::commit::link(
            LINK_OBJECT,
            "16",
            "20",
            Fields::new(),
            chrono::DateTime::UNIX_EPOCH,
        );
        let mut pairs = Pairs::from_links(vec![link]);
        pairs.add_leads(BTreeMap::from([(16, lead(16, Some("20")))]));
        pairs.add_crm_records(BTreeMap::from([(
            "17".to_owned(),
            contact("17", Some("16")),
        )]));
        drop_unread_keys(&mut pairs);
        assert_eq!(pairs.list.len(), 2);
        assert_eq!(pairs.list[0].c_id.as_deref(), Some("20"));
    }
}
