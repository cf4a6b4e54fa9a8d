//! What an object contributes to the pipeline: a small [`ObjectSpec`] naming its Marketo
//! family and its hooks. Everything else (gather, pair, write, commit) is the pipeline's.

use std::collections::BTreeMap;

use crate::crm::Change;
use crate::engine::ledger::Failure;
use crate::mapping::Plan;
use crate::marketo::endpoint::families::ObjectFamily;
use crate::model::{Fields, Value};

/// Builds the Marketo key of one CRM change: (change, raw CRM fields, canonical fields, lead ids
/// by CRM contact id) -> (link key, Marketo key fields), or the record's refusal (a code ending
/// in `_not_linked` means its parent is not linked yet).
pub(crate) type KeysFn = dyn Fn(&Change, &Fields, &Fields, &BTreeMap<String, i64>) -> Result<(String, Fields), Failure>
    + Sync;

/// How an object's records are keyed in Marketo.
pub(crate) enum KeyHook<'a> {
    /// By the CRM id, in the plan's Marketo CRM-key field (salespersons, opportunities).
    CrmId,
    /// By the object's own hook (roles' three dedupe fields, custom objects' key and lead).
    Custom(&'a KeysFn),
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
            KeyHook::Custom(hook) => hook(change, raw, canonical, leads),
        }
    }
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
