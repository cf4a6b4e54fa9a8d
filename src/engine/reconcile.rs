//! Three-way reconciliation of one record pair against the values both sides last agreed on.
//!
//! For every mapped field the engine knows three values: `base` (what both sides held after the
//! last successful sync), the Marketo value and the CRM value (each absent when that side did not
//! report the record this cycle, which means "unchanged"). A field that changed on one side flows
//! to the other; a field that changed on both sides to different values is a conflict settled by
//! the field's policy; a value equal to `base` is an echo of our own write and is dropped.

use chrono::{DateTime, Utc};

use crate::mapping::{Direction, Plan, PlanField, Policy};
use crate::model::{Fields, Side, Value};

/// The rule for one canonical field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRule {
    /// The canonical field name.
    pub name: String,
    /// Which way it may flow.
    pub direction: Direction,
    /// How a conflict on it is settled.
    pub policy: Policy,
    /// The mapped field, when it opts into shortening (`shorten = true`): a side that holds the
    /// shortened form of the agreed value has not changed it, so the cut value never flows back
    /// over the long one.
    pub shortened: Option<Box<PlanField>>,
}

impl FieldRule {
    /// Returns the rule of one mapped field.
    pub fn of(field: &PlanField) -> FieldRule {
        FieldRule {
            name: field.name.clone(),
            direction: field.direction,
            policy: field.policy,
            shortened: field.shorten.then(|| Box::new(field.clone())),
        }
    }

    /// Returns `value` when `side` changed the field since `base`: it differs from the agreed
    /// value and is not the shortened form that the sync itself wrote there.
    fn changed<'v>(&self, side: Side, value: Option<&'v Value>, base: &Value) -> Option<&'v Value> {
        value.filter(|v| {
            *v != base
                && self
                    .shortened
                    .as_ref()
                    .and_then(|f| f.shortened_echo(side, base))
                    .as_ref()
                    != Some(*v)
        })
    }
}

/// Returns the rules of a plan's enabled fields.
pub fn rules(plan: &Plan) -> Vec<FieldRule> {
    plan.enabled_fields().map(FieldRule::of).collect()
}

/// One side's view of the record this cycle.
#[derive(Debug, Clone, Copy)]
pub struct SideState<'a> {
    /// The canonical values read this cycle.
    pub fields: &'a Fields,
    /// When that side last modified the record, if known.
    pub modified_at: Option<DateTime<Utc>>,
}

/// A conflict: both sides changed a field to different values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The canonical field name.
    pub field: String,
    /// The last agreed value.
    pub base: Value,
    /// Marketo's value.
    pub marketo: Value,
    /// The CRM's value.
    pub crm: Value,
    /// The side whose value was kept.
    pub winner: Side,
    /// The policy that decided.
    pub policy: Policy,
}

impl FieldConflict {
    /// Returns the store record of this conflict (both values, the base, the winner and the
    /// policy that decided), and counts it in the conflict metric.
    pub fn record(
        &self,
        object: &str,
        marketo_key: &str,
        crm_key: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> crate::store::Conflict {
        crate::telemetry::events::ConflictResolved {
            object,
            winner: self.winner,
            fields: 1,
        }
        .emit();
        crate::store::Conflict {
            id: 0,
            object: object.to_owned(),
            marketo_key: marketo_key.to_owned(),
            crm_key: crm_key.to_owned(),
            field: self.field.clone(),
            marketo_value: self.marketo.clone(),
            crm_value: self.crm.clone(),
            base_value: (!self.base.is_null()).then(|| self.base.clone()),
            winner: self.winner,
            policy: policy_name(self.policy).to_owned(),
            at,
        }
    }
}

/// Returns the policy's name as the mapping files spell it.
pub fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::CrmWins => "crm_wins",
        Policy::MarketoWins => "marketo_wins",
        Policy::NewestWins => "newest_wins",
    }
}

/// What reconciling one pair decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Fields to write to Marketo (canonical names and values).
    pub to_marketo: Fields,
    /// Fields to write to the CRM.
    pub to_crm: Fields,
    /// The agreed values that move once both writes succeed (the rest stay as in `base`): the
    /// base is not copied for a pair that changes nothing, most pairs of a large read.
    pub agreed_changes: Fields,
    /// Conflicts settled on the way.
    pub conflicts: Vec<FieldConflict>,
}

impl Reconciled {
    /// Returns true when nothing needs writing on either side.
    pub fn is_noop(&self) -> bool {
        self.to_marketo.is_empty() && self.to_crm.is_empty()
    }

    /// Returns the new agreed values: `base` (the one reconciled against) with the changes.
    pub fn agreed(&self, base: &Fields) -> Fields {
        let mut agreed = base.clone();
        agreed.extend(
            self.agreed_changes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        agreed
    }

    /// Returns true when the new agreed values equal `base`.
    pub fn agrees_with(&self, base: &Fields) -> bool {
        self.agreed_changes
            .iter()
            .all(|(k, v)| base.get(k) == Some(v))
    }
}

/// Returns the writes and the new agreed state for one linked pair.
///
/// `base` holds the last agreed values; a field missing from `base` counts as null. A side passed
/// as `None` did not change this cycle. Fields not named in `rules` are ignored.
pub fn reconcile(
    rules: &[FieldRule],
    base: &Fields,
    marketo: Option<SideState<'_>>,
    crm: Option<SideState<'_>>,
) -> Reconciled {
    let mut out = Reconciled::default();
    // One side read exactly the agreed values and the other did not change: no field changed
    // (most pairs of a large read). One walk over both maps is cheaper than looking each rule's
    // field up in both.
    if let (Some(read), None) | (None, Some(read)) = (marketo, crm)
        && same_fields(read.fields, base)
    {
        return out;
    }
    let null = Value::Null;
    for rule in rules {
        let base_value = base.get(&rule.name).unwrap_or(&null);
        let m_value = marketo.and_then(|s| s.fields.get(&rule.name));
        let c_value = crm.and_then(|s| s.fields.get(&rule.name));
        let m_changed = rule.changed(Side::Marketo, m_value, base_value);
        let c_changed = rule.changed(Side::Crm, c_value, base_value);
        match (m_changed, c_changed) {
            (None, None) => {}
            (Some(m), None) => {
                flow(&mut out, rule, Side::Marketo, m);
            }
            (None, Some(c)) => {
                flow(&mut out, rule, Side::Crm, c);
            }
            (Some(m), Some(c)) if m == c => {
                // Both sides made the same edit: nothing to write, just agree on it.
                out.agreed_changes.insert(rule.name.clone(), m.clone());
            }
            (Some(m), Some(c)) => {
                let winner = settle(rule, marketo, crm);
                let (kept, lost_side_needs) = match winner {
                    Side::Marketo => (m, Side::Crm),
                    Side::Crm => (c, Side::Marketo),
                };
                out.conflicts.push(FieldConflict {
                    field: rule.name.clone(),
                    base: base_value.clone(),
                    marketo: m.clone(),
                    crm: c.clone(),
                    winner,
                    policy: rule.policy,
                });
                if rule.direction.reads_from(winner) {
                    target_mut(&mut out, lost_side_needs).insert(rule.name.clone(), kept.clone());
                    out.agreed_changes.insert(rule.name.clone(), kept.clone());
                } else {
                    // The winner may not write to the other side: each side keeps its value
                    // and the agreed state follows the side the field flows from.
                    let source_value = match winner {
                        Side::Marketo => c,
                        Side::Crm => m,
                    };
                    out.agreed_changes
                        .insert(rule.name.clone(), source_value.clone());
                }
            }
        }
    }
    out
}

/// Returns true when both records hold the same fields with equal values (values compared
/// first: they tell records apart sooner than the names do).
fn same_fields(a: &Fields, b: &Fields) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((a_name, a_value), (b_name, b_value))| a_value == b_value && a_name == b_name)
}

fn flow(out: &mut Reconciled, rule: &FieldRule, source: Side, value: &Value) {
    if rule.direction.reads_from(source) {
        target_mut(out, source.other()).insert(rule.name.clone(), value.clone());
        out.agreed_changes.insert(rule.name.clone(), value.clone());
    }
    // A change that may not flow leaves `agreed` alone, so the field stays "changed" on that
    // side and is written back the next time the other side changes it.
}

fn target_mut(out: &mut Reconciled, target: Side) -> &mut Fields {
    match target {
        Side::Marketo => &mut out.to_marketo,
        Side::Crm => &mut out.to_crm,
    }
}

fn settle(rule: &FieldRule, marketo: Option<SideState<'_>>, crm: Option<SideState<'_>>) -> Side {
    match rule.policy {
        Policy::CrmWins => Side::Crm,
        Policy::MarketoWins => Side::Marketo,
        Policy::NewestWins => {
            let m = marketo.and_then(|s| s.modified_at);
            let c = crm.and_then(|s| s.modified_at);
            match (m, c) {
                (Some(m), Some(c)) if m > c => Side::Marketo,
                (Some(_), None) => Side::Marketo,
                _ => Side::Crm,
            }
        }
    }
}

/// Rules, records and side states for the tests of reconciling modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A rule without shortening.
    pub(crate) fn rule(name: &str, direction: Direction, policy: Policy) -> FieldRule {
        FieldRule {
            name: name.to_owned(),
            direction,
            policy,
            shortened: None,
        }
    }

    /// Text fields.
    pub(crate) fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Text((*v).to_owned())))
            .collect()
    }

    /// A side that read `f`, with no modification time.
    pub(crate) fn side(f: &Fields) -> Option<SideState<'_>> {
        Some(SideState {
            fields: f,
            modified_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{fields, rule, side};
    use super::*;

    #[test]
    fn a_change_on_one_side_flows_to_the_other() {
        let rules = [rule("title", Direction::Both, Policy::CrmWins)];
        let base = fields(&[("title", "CTO")]);
        let m = fields(&[("title", "CEO")]);
        let out = reconcile(&rules, &base, side(&m), None);
        assert_eq!(out.to_crm, fields(&[("title", "CEO")]));
        assert!(out.to_marketo.is_empty());
        assert_eq!(out.agreed(&base), fields(&[("title", "CEO")]));
        assert!(!out.agrees_with(&base));
        assert!(out.conflicts.is_empty());
    }

    #[test]
    fn an_echo_of_our_own_write_is_dropped() {
        let rules = [rule("title", Direction::Both, Policy::CrmWins)];
        let base = fields(&[("title", "CEO")]);
        let m = fields(&[("title", "CEO")]);
        let c = fields(&[("title", "CEO")]);
        let out = reconcile(&rules, &base, side(&m), side(&c));
        assert!(out.is_noop());
        assert_eq!(out.agreed(&base), base);
        assert!(out.agrees_with(&base));
    }

    #[test]
    fn both_sides_changed_is_settled_by_policy_and_recorded() {
        let base = fields(&[("title", "CTO")]);
        let m = fields(&[("title", "CEO")]);
        let c = fields(&[("title", "VP")]);
        let crm_wins = [rule("title", Direction::Both, Policy::CrmWins)];
        let out = reconcile(&crm_wins, &base, side(&m), side(&c));
        assert_eq!(out.to_marketo, fields(&[("title", "VP")]));
        assert!(out.to_crm.is_empty());
        assert_eq!(out.conflicts.len(), 1);
        assert_eq!(out.conflicts[0].winner, Side::Crm);
        assert_eq!(out.conflicts[0].marketo, Value::Text("CEO".into()));
        assert_eq!(out.conflicts[0].crm, Value::Text("VP".into()));

        let marketo_wins = [rule("title", Direction::Both, Policy::MarketoWins)];
        let out = reconcile(&marketo_wins, &base, side(&m), side(&c));
        assert_eq!(out.to_crm, fields(&[("title", "CEO")]));
        assert_eq!(out.agreed(&base), fields(&[("title", "CEO")]));
    }

    #[test]
    fn newest_wins_compares_modification_times() {
        let base = fields(&[("title", "CTO")]);
        let m = fields(&[("title", "CEO")]);
        let c = fields(&[("title", "VP")]);
        let rules = [rule("title", Direction::Both, Policy::NewestWins)];
        let early = "2026-01-01T00:00:00Z".parse().unwrap();
        let late = "2026-01-02T00:00:00Z".parse().unwrap();
        let out = reconcile(
            &rules,
            &base,
            Some(SideState {
                fields: &m,
                modified_at: Some(late),
            }),
            Some(SideState {
                fields: &c,
                modified_at: Some(early),
            }),
        );
        assert_eq!(out.conflicts[0].winner, Side::Marketo);
        assert_eq!(out.to_crm, fields(&[("title", "CEO")]));
    }

    #[test]
    fn same_edit_on_both_sides_is_not_a_conflict() {
        let rules = [rule("title", Direction::Both, Policy::CrmWins)];
        let base = fields(&[("title", "CTO")]);
        let m = fields(&[("title", "CEO")]);
        let out = reconcile(&rules, &base, side(&m), side(&m));
        assert!(out.is_noop());
        assert!(out.conflicts.is_empty());
        assert_eq!(out.agreed(&base), m);
    }

    #[test]
    fn one_way_fields_do_not_flow_backwards() {
        let rules = [rule("score", Direction::ToCrm, Policy::MarketoWins)];
        let base = fields(&[("score", "10")]);
        let c = fields(&[("score", "99")]);
        let out = reconcile(&rules, &base, None, side(&c));
        assert!(out.is_noop());
        assert_eq!(out.agreed(&base), base);
    }

    #[test]
    fn a_side_that_read_the_agreed_values_changes_nothing() {
        let rules = [
            rule("title", Direction::Both, Policy::CrmWins),
            rule("born", Direction::Both, Policy::CrmWins),
        ];
        let mut base = fields(&[("title", "CEO")]);
        base.insert("born".into(), Value::Date("1990-01-02".parse().unwrap()));
        // The same canonical value of another kind is the same value.
        let m = fields(&[("title", "CEO"), ("born", "1990-01-02")]);
        for (marketo, crm) in [(side(&m), None), (None, side(&m)), (side(&base), None)] {
            let out = reconcile(&rules, &base, marketo, crm);
            assert_eq!(out, Reconciled::default());
        }
        // The other side's change still flows.
        let c = fields(&[("title", "VP")]);
        let out = reconcile(&rules, &base, side(&base), side(&c));
        assert_eq!(out.to_marketo, c);
        // A field no rule names does not count.
        let mut extra = base.clone();
        extra.insert("secret".into(), Value::from("x"));
        assert!(reconcile(&rules, &base, side(&extra), None).is_noop());
    }

    #[test]
    fn unmapped_fields_are_ignored_and_new_fields_start_from_null() {
        let rules = [rule("email", Direction::Both, Policy::CrmWins)];
        let base = Fields::new();
        let c = fields(&[("email", "a@example.com"), ("secret", "x")]);
        let out = reconcile(&rules, &base, None, side(&c));
        assert_eq!(out.to_marketo, fields(&[("email", "a@example.com")]));
    }
}
