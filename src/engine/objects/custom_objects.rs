//! The demo CRM's custom table -> the Marketo custom object, by the object's dedupe field(s)
//! (the mapping's `keys.marketo_crm_key`, `vin` for `car_c`), linked to the Marketo lead of the
//! record's CRM contact (`leadId`).
//!
//! One way only: the simulator emits no "Added to <object>" activities, so Marketo-side custom
//! object records are not copied to the CRM.

use tokio_util::sync::CancellationToken;

use super::{Family, KeysFn, PushSpec, key_text, push_step, raw_key};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::model::{Fields, Value};

/// The raw CRM column of a custom record holding its contact id.
pub const CONTACT_COLUMN: &str = "contact_id";

/// The standard objects: every other plan is a custom object.
const STANDARD: &[&str] = &[
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

/// Syncs created and updated CRM records of every enabled custom object to Marketo
/// (createOrUpdate, dedupeBy dedupeFields), with `leadId` set from the linked contact when the
/// CRM row has one (a contact not linked yet waits in the error ledger, retryable).
///
/// # Errors
///
/// A whole-call failure of the CRM, Marketo or the store, or cancellation.
pub async fn run(
    ctx: &Context,
    plans: &Plans,
    summary: &mut CycleSummary,
    options: &CycleOptions,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for plan in custom_plans(plans) {
        let key_name = plan.marketo_crm_key.clone();
        let canonical_key = plan
            .fields
            .iter()
            .find(|f| f.marketo.as_deref() == Some(key_name.as_str()))
            .map(|f| f.name.clone());
        let keys: &KeysFn = &move |change, _raw, canonical, leads| {
            let key = match &canonical_key {
                Some(name) => key_text(canonical.get(name)),
                None => Some(change.id.clone()),
            }
            .ok_or_else(|| {
                (
                    "missing_key".to_owned(),
                    format!("record {} has no value for {key_name}", change.id),
                    false,
                )
            })?;
            let mut k = Fields::new();
            k.insert(key_name.clone(), Value::Text(key.clone()));
            if let Some(contact) = raw_key(change, CONTACT_COLUMN) {
                let lead = *leads.get(&contact).ok_or_else(|| {
                    (
                        "contact_not_linked".to_owned(),
                        format!("contact {contact} has no Marketo lead yet"),
                        true,
                    )
                })?;
                k.insert("leadId".into(), Value::Int(lead));
            }
            Ok((key, k))
        };
        let spec = PushSpec {
            family: Family::Custom(plan.marketo_object.clone()),
            keys,
            contact_column: Some(CONTACT_COLUMN),
        };
        push_step(ctx, plan, spec, summary, options, cancel).await?;
    }
    Ok(())
}
