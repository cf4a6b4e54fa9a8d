//! Leads one way, Marketo -> CRM, over pairs already linked: bootstrap's window holding leads an
//! earlier run (or the cycle) linked. Each lead is reconciled with its CRM record, read now,
//! against the link's agreed values by the cycle's own reconcile
//! ([`super::pairing::reconcile_pair`], the lead plan's field rules and policies), and its CRM
//! row is rendered as the cycle renders an update ([`super::write::CrmUpdate`]), so only what
//! Marketo changed since is written.
//!
//! Nothing is written to Marketo. A field the CRM changed since (alone, or winning a conflict
//! by its policy) is neither written nor agreed: it keeps its agreed value, so it stays changed
//! on the CRM side and the next cycle carries it to Marketo (and records the conflict then). A
//! `newest_wins` conflict is left to the cycle too: a lead export carries no modification time,
//! so the CRM side counts as the newer one.

use std::collections::BTreeMap;

use super::pairing::reconcile_pair;
use super::records::{CRec, MLead, crm_pk};
use super::write::CrmUpdate;
use crate::engine::reconcile::{self, FieldConflict, Reconciled};
use crate::engine::{Context, EngineError};
use crate::mapping::Plan;
use crate::model::Fields;
use crate::store::Link;

/// A linked lead as a bootstrap export read it.
pub(crate) struct LinkedLead<'a> {
    /// The lead's live link.
    pub link: &'a Link,
    /// The lead's canonical values.
    pub canonical: &'a Fields,
}

/// What a one-way pass does with one linked lead.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// The linked CRM record was not found (deleted in the CRM, or unreadable through the
    /// mapping): nothing is written; the cycle's deletion handling settles the pair.
    Gone,
    /// Reconciled against the link's agreed values.
    Reconciled {
        /// The CRM row to write (keyed by [`InboundBatch::key_column`]); `None` when Marketo
        /// changed nothing the CRM lacks.
        row: Option<Fields>,
        /// The agreed values once the row is written (or now, with nothing to write).
        agreed: Fields,
        /// The conflicts settled for Marketo's value (recorded once the row is written).
        conflicts: Vec<FieldConflict>,
    },
}

/// The one-way pass over a batch of linked leads.
#[derive(Debug)]
pub(crate) struct InboundBatch {
    /// The CRM column the rows are keyed by (the primary key: the linked record, whatever its
    /// Marketo-id column holds).
    pub key_column: String,
    /// One entry per lead, in input order.
    pub leads: Vec<Inbound>,
}

/// Reads the CRM records of `leads` (one read) and reconciles each lead with its record.
///
/// # Errors
///
/// A whole-call CRM failure.
pub(crate) async fn reconcile_inbound(
    ctx: &Context,
    plan: &Plan,
    leads: &[LinkedLead<'_>],
) -> Result<InboundBatch, EngineError> {
    let key_column = crm_pk(ctx, plan).await;
    let mut crm: BTreeMap<String, CRec> = BTreeMap::new();
    if !leads.is_empty() {
        let keys = leads.iter().map(|l| l.link.crm_key.clone()).collect();
        super::gather::read_crm_into(ctx, plan, keys, &mut crm).await?;
    }
    let rules = reconcile::rules(plan);
    let leads = leads
        .iter()
        .map(|lead| match crm.get(&lead.link.crm_key) {
            None => Inbound::Gone,
            Some(c) => {
                let m = MLead {
                    id: lead.link.marketo_key.parse().unwrap_or_default(),
                    canon: lead.canonical.clone(),
                    at: None,
                    crm_key: None,
                    external_company_id: None,
                };
                let r = reconcile_pair(&rules, Some(lead.link), Some(&m), Some(c));
                let r = toward_crm(r);
                let update = CrmUpdate {
                    pk: &key_column,
                    m_key: &lead.link.marketo_key,
                    c_id: &lead.link.crm_key,
                    c: Some(c),
                    linked: true,
                };
                Inbound::Reconciled {
                    row: update.row(plan, &r.to_crm),
                    agreed: r.agreed(&lead.link.base),
                    conflicts: r.conflicts,
                }
            }
        })
        .collect();
    Ok(InboundBatch { key_column, leads })
}

/// Keeps what a reconcile sends from Marketo to the CRM: its writes to Marketo are dropped and
/// their fields keep their agreed value in the base (so they stay changed on the CRM side for
/// the next cycle), and so are the conflicts those writes settled.
fn toward_crm(mut r: Reconciled) -> Reconciled {
    for name in r.to_marketo.keys() {
        r.agreed_changes.remove(name);
    }
    let deferred = std::mem::take(&mut r.to_marketo);
    r.conflicts.retain(|c| !deferred.contains_key(&c.field));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reconcile::reconcile;
    use crate::engine::reconcile::test_support::{fields, rule as rule_of, side};
    use crate::mapping::{Direction, Policy};

    fn rule(name: &str, policy: Policy) -> reconcile::FieldRule {
        rule_of(name, Direction::Both, policy)
    }

    fn one_way(
        rules: &[reconcile::FieldRule],
        base: &Fields,
        m: &Fields,
        c: &Fields,
    ) -> Reconciled {
        toward_crm(reconcile(rules, base, side(m), side(c)))
    }

    /// Marketo's change is written and agreed; the CRM's stays unagreed for the next cycle.
    #[test]
    fn a_crm_edit_is_neither_written_to_marketo_nor_agreed() {
        let rules = [
            rule("title", Policy::CrmWins),
            rule("first", Policy::CrmWins),
        ];
        let base = fields(&[("title", "CTO"), ("first", "Ada")]);
        let m = fields(&[("title", "CEO"), ("first", "Ada")]);
        let c = fields(&[("title", "CTO"), ("first", "Edited")]);
        let out = one_way(&rules, &base, &m, &c);
        assert_eq!(out.to_crm, fields(&[("title", "CEO")]));
        assert!(out.to_marketo.is_empty());
        assert_eq!(
            out.agreed(&base),
            fields(&[("title", "CEO"), ("first", "Ada")])
        );
    }

    /// A conflict the CRM wins is left to the cycle (not recorded here); one Marketo wins is
    /// written and recorded.
    #[test]
    fn conflicts_follow_the_field_policy_and_the_crm_s_wins_wait_for_the_cycle() {
        let base = fields(&[("title", "CTO")]);
        let m = fields(&[("title", "CEO")]);
        let c = fields(&[("title", "VP")]);
        let out = one_way(&[rule("title", Policy::CrmWins)], &base, &m, &c);
        assert!(out.is_noop(), "{out:?}");
        assert_eq!(out.agreed(&base), base);
        assert!(out.conflicts.is_empty());

        let out = one_way(&[rule("title", Policy::MarketoWins)], &base, &m, &c);
        assert_eq!(out.to_crm, m);
        assert_eq!(out.agreed(&base), m);
        assert_eq!(out.conflicts.len(), 1);
    }

    /// A field the CRM filled that the link never agreed on is not agreed either.
    #[test]
    fn a_field_new_on_the_crm_side_stays_out_of_the_agreed_values() {
        let rules = [rule("phone", Policy::CrmWins)];
        let out = one_way(
            &rules,
            &Fields::new(),
            &Fields::new(),
            &fields(&[("phone", "1")]),
        );
        assert!(out.is_noop());
        let agreed = out.agreed(&Fields::new());
        assert!(agreed.is_empty(), "{agreed:?}");
    }
}
