//! What an object contributes to the pipeline: a small [`ObjectSpec`] naming its Marketo
//! family and its hooks. Everything else (gather, pair, write, commit) is the pipeline's.

use std::collections::BTreeMap;

use crate::crm::Change;
use crate::engine::ledger::Failure;
use crate::mapping::Plan;
use crate::marketo::Record;
use crate::marketo::endpoint::families::ObjectFamily;
use crate::model::{Fields, Side, Value};
use crate::store::Direction;

/// Builds the Marketo key of one CRM change: (change, raw CRM fields, canonical fields, lead ids
/// by CRM contact id) -> (link key, Marketo key fields), or the record's refusal (a code ending
/// in `_not_linked` means its parent is not linked yet).
pub(crate) type KeysFn = dyn Fn(&Change, &Fields, &Fields, &BTreeMap<String, i64>) -> Result<(String, Fields), Failure>
    + Sync;

/// Returns the Marketo dedupe record that deletes the record with this link key (`None` when
/// the key names no record).
pub(crate) type DeleteKeyFn = fn(&Plan, &str) -> Option<Record>;

/// How an object's records are keyed in Marketo.
pub(crate) enum KeyHook<'a> {
    /// By the CRM id, in the plan's Marketo CRM-key field (salespersons, opportunities).
    CrmId,
    /// By the object's own hook (custom objects' key and lead); its link key is the value of
    /// the plan's Marketo CRM-key field.
    Custom(&'a KeysFn),
    /// By several dedupe fields joined into the link key (roles): `keys` builds them, `delete`
    /// parses a link key back into the dedupe record that deletes it.
    Composite {
        /// Builds the link key and the dedupe fields.
        keys: &'a KeysFn,
        /// Parses a link key into its dedupe record.
        delete: DeleteKeyFn,
    },
}

impl KeyHook<'_> {
    /// Returns the link key and the Marketo key fields of one CRM change.
    ///
    /// # Errors
    ///
    /// The record's refusal, from the object's hook.
    pub(crate) fn keys(
        &self,
        plan: &Plan,
        change: &Change,
        raw: &Fields,
        canonical: &Fields,
        leads: &BTreeMap<String, i64>,
    ) -> Result<(String, Fields), Failure> {
        match self {
            KeyHook::CrmId => {
                let mut k = Fields::new();
                k.insert(plan.marketo_crm_key.clone(), Value::Text(change.id.clone()));
                Ok((change.id.clone(), k))
            }
            KeyHook::Custom(hook) | KeyHook::Composite { keys: hook, .. } => {
                hook(change, raw, canonical, leads)
            }
        }
    }

    /// Returns the Marketo dedupe record that deletes the record with this link key.
    pub(crate) fn delete_key(&self, plan: &Plan, marketo_key: &str) -> Option<Record> {
        match self {
            KeyHook::Composite { delete, .. } => delete(plan, marketo_key),
            KeyHook::CrmId | KeyHook::Custom(_) => delete_by_crm_key(plan, marketo_key),
        }
    }
}

/// Returns the Marketo dedupe record of a record keyed by the plan's Marketo CRM-key field.
pub(crate) fn delete_by_crm_key(plan: &Plan, marketo_key: &str) -> Option<Record> {
    let mut r = Record::new();
    r.insert(
        plan.marketo_crm_key.clone(),
        serde_json::Value::String(marketo_key.to_owned()),
    );
    Some(r)
}

/// The spec of an object synced CRM -> Marketo through [`super::run_push`].
pub(crate) struct ObjectSpec<'a> {
    /// The Marketo family written to.
    pub family: ObjectFamily,
    /// How records are keyed in Marketo.
    pub keys: KeyHook<'a>,
    /// The raw CRM column holding a contact id whose linked Marketo lead the keys need.
    pub contact_column: Option<&'a str>,
}

/// The spec of an object synced both ways (or Marketo -> CRM) through
/// [`super::two_way::TwoWay`]: where its records go in Marketo, how its pairs are named in the
/// ledger, which side is written first, and how its CRM rows are keyed.
pub(crate) struct TwoWaySpec {
    /// The Marketo family written to; `None` for an object whose runner writes Marketo through
    /// its own [`super::two_way::MarketoSide`] hook (leads).
    pub family: Option<ObjectFamily>,
    /// The direction whose ledger names a pair: [`Direction::CrmToMarketo`] by its CRM key
    /// (companies), [`Direction::MarketoToCrm`] by its Marketo key (custom objects read from
    /// Marketo).
    pub ledger: Direction,
    /// The side written first; the other side's write of a pair waits while the first fails.
    pub first: Side,
    /// The CRM column an update of a linked row is keyed by (the Marketo-id column, or the
    /// table's primary key). A new row is always keyed by the Marketo-id column.
    pub update_key: String,
    /// True when the agreed values keep the Marketo key fields as `key:<field>` (the form the
    /// CRM -> Marketo direction of the same object keeps, see [`super::pair`]).
    pub keys_in_base: bool,
}

impl TwoWaySpec {
    /// Returns the spec of records copied from Marketo into the CRM (bootstrap's opportunities,
    /// roles and salespersons): ledger entries by Marketo key, the CRM written first, linked
    /// rows updated by the Marketo-id column that created them.
    pub(crate) fn marketo_to_crm(family: ObjectFamily, plan: &Plan) -> TwoWaySpec {
        TwoWaySpec {
            family: Some(family),
            ledger: Direction::MarketoToCrm,
            first: Side::Crm,
            update_key: plan.crm_marketo_id.clone(),
            keys_in_base: false,
        }
    }
}
