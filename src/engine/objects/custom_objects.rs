//! Custom objects, both ways.
//!
//! CRM -> Marketo: the CRM table's created and updated rows are written to the Marketo custom
//! object by its dedupe field (the mapping's `keys.marketo_crm_key`, `vin` for `car_c`), linked to
//! the Marketo lead of the row's CRM contact ([`LEAD_FIELD`]).
//!
//! Marketo -> CRM (when a mapped field flows to the CRM): records added in Marketo are found
//! through the custom object's "added" activity and copied to the CRM table; see
//! [`from_marketo`]. Both directions key a record pair by the key field's value, so each
//! direction sees the other's writes as agreed values and nothing comes back.

pub mod from_marketo;

use tokio_util::sync::CancellationToken;

use super::{KeyHook, KeysFn, ObjectFamily, ObjectSpec, Scope, key_text, raw_key, run_push};
use crate::engine::ledger::Failure;
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::model::{Fields, Value};

/// The raw CRM column of a custom record holding its contact id.
pub const CONTACT_COLUMN: &str = "contact_id";
/// The custom object field linking a record to its Marketo lead.
pub const LEAD_FIELD: &str = "leadId";

/// The standard objects: every other plan is a custom object.
const STANDARD: &[&str] = &[
    crate::mapping::programs::PROGRAM,
    crate::mapping::programs::PROGRAM_MEMBER,
    crate::mapping::lists::STATIC_LIST,
    "company",
    "lead",
    "opportunity",
    "opportunity_role",
    "salesperson",
];

/// Returns the plans of enabled custom objects.
pub fn custom_plans(plans: &Plans) -> Vec<&Plan> {
    plans
        .objects
        .values()
        .filter(|p| !STANDARD.contains(&p.marketo_object.as_str()))
        .filter(|p| !p.marketo_object.starts_with("activit"))
        .collect()
}

/// Returns the canonical name of the field mapped to the plan's Marketo key field, if mapped.
pub fn marketo_key_field(plan: &Plan) -> Option<String> {
    plan.fields
        .iter()
        .find(|f| f.marketo.as_deref() == Some(plan.marketo_crm_key.as_str()))
        .map(|f| f.name.clone())
}

/// Syncs created and updated CRM records of every enabled custom object to Marketo
/// (createOrUpdate, dedupeBy dedupeFields), with `leadId` set from the linked contact when the
/// CRM row has one (a contact not linked yet waits in the error ledger, retryable); then copies
/// the records added in Marketo to the CRM ([`from_marketo::run`]).
///
/// Runs over the records of `scope`: on demand, one CRM record of the custom object the scope
/// names, CRM -> Marketo only (the Marketo -> CRM read is the poll's).
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    scope: Scope<'_>,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for plan in custom_plans(plans)
        .into_iter()
        .filter(|p| scope.covers(&p.object))
    {
        let key_name = plan.marketo_crm_key.clone();
        let canonical_key = marketo_key_field(plan);
        let keys: &KeysFn = &move |change, _raw, canonical, leads| {
            let key = match &canonical_key {
                Some(name) => key_text(canonical.get(name)),
                None => Some(change.id.clone()),
            }
            .ok_or_else(|| {
                Failure::new(
                    "missing_key",
                    format!("record {} has no value for {key_name}", change.id),
                    false,
                )
            })?;
            let mut k = Fields::new();
            k.insert(key_name.clone(), Value::Text(key.clone()));
            if let Some(contact) = raw_key(change, CONTACT_COLUMN) {
                let lead = *leads.get(&contact).ok_or_else(|| {
                    Failure::new(
                        "contact_not_linked",
                        format!("contact {contact} has no Marketo lead yet"),
                        true,
                    )
                })?;
                k.insert(LEAD_FIELD.into(), Value::Int(lead));
            }
            Ok((key, k))
        };
        let spec = ObjectSpec {
            family: ObjectFamily::Custom(plan.marketo_object.clone()),
            keys: KeyHook::Custom(keys),
            contact_column: Some(CONTACT_COLUMN),
        };
        run_push(ctx, plan, &spec, scope, summary, options, cancel).await?;
        if scope.is_feed() {
            from_marketo::run(ctx, plan, summary, options, cancel).await?;
        }
    }
    Ok(())
}
