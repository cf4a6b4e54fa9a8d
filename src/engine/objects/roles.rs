//! CRM opportunity contact roles -> Marketo opportunity roles, deduplicated on
//! (`externalOpportunityId`, `leadId`, `role`). `leadId` is the Marketo lead linked to the role's
//! CRM contact; a role whose contact is not linked yet waits in the error ledger (retryable).

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    KeyHook, KeysFn, ObjectFamily, ObjectSpec, Scope, key_text, raw_key, run_push,
    skip_when_native_sync,
};
use crate::engine::ledger::Failure;
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::{Plan, Plans};
use crate::marketo::Record;
use crate::model::{Fields, Value};

/// The `sync.objects` name of this step's mapping.
pub const OBJECT: &str = "roles";
/// The raw CRM column of a role holding its opportunity id.
pub const OPPORTUNITY_COLUMN: &str = "opportunity_id";
/// The raw CRM column of a role holding its contact id.
pub const CONTACT_COLUMN: &str = "contact_id";

/// Returns the link key of a role: `externalOpportunityId|leadId|role`.
pub fn role_key(opportunity: &str, lead_id: i64, role: &str) -> String {
    format!("{opportunity}|{lead_id}|{role}")
}

/// Returns the Marketo dedupe fields of a role link key (see [`role_key`]).
pub fn parse_role_key(key: &str) -> Option<(String, i64, String)> {
    let mut parts = key.splitn(3, '|');
    let opp = parts.next()?.to_owned();
    let lead = parts.next()?.parse().ok()?;
    let role = parts.next()?.to_owned();
    Some((opp, lead, role))
}

/// The roles' delete hook: the dedupe record (`externalOpportunityId`, `leadId`, `role`) of a
/// role link key, or `None` for a key that is not one.
pub(crate) fn delete_key(_plan: &Plan, marketo_key: &str) -> Option<Record> {
    let (opp, lead, role) = parse_role_key(marketo_key)?;
    let mut r = Record::new();
    r.insert("externalOpportunityId".into(), json!(opp));
    r.insert("leadId".into(), json!(lead));
    r.insert("role".into(), json!(role));
    Some(r)
}

/// Syncs created and updated CRM roles to Marketo opportunity roles (createOrUpdate, dedupeBy
/// dedupeFields). Does nothing when the object is not enabled.
///
/// Runs over the records of `scope` (the feed, or one CRM role on demand).
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
    let Some(plan) = plans.objects.get(OBJECT) else {
        return Ok(());
    };
    let keys: &KeysFn = &|change, _raw, canonical, leads| {
        let opp = raw_key(change, OPPORTUNITY_COLUMN).ok_or_else(|| {
            Failure::new(
                "missing_opportunity",
                format!("role {} has no {OPPORTUNITY_COLUMN}", change.id),
                false,
            )
        })?;
        let contact = raw_key(change, CONTACT_COLUMN).ok_or_else(|| {
            Failure::new(
                "missing_contact",
                format!("role {} has no {CONTACT_COLUMN}", change.id),
                false,
            )
        })?;
        let lead = *leads.get(&contact).ok_or_else(|| {
            Failure::new(
                "contact_not_linked",
                format!("contact {contact} has no Marketo lead yet"),
                true,
            )
        })?;
        let role = key_text(canonical.get("role")).unwrap_or_default();
        let mut k = Fields::new();
        k.insert("externalOpportunityId".into(), Value::Text(opp.clone()));
        k.insert("leadId".into(), Value::Int(lead));
        k.insert("role".into(), Value::Text(role.clone()));
        Ok((role_key(&opp, lead, &role), k))
    };
    let spec = ObjectSpec {
        family: ObjectFamily::Roles,
        keys: KeyHook::Composite {
            keys,
            delete: delete_key,
        },
        contact_column: Some(CONTACT_COLUMN),
    };
    let result = run_push(ctx, plan, &spec, scope, summary, options, cancel).await;
    skip_when_native_sync(result, OBJECT, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_keys_round_trip_even_with_bars_in_the_role() {
        let k = role_key("17", 42, "Decision|Maker");
        assert_eq!(
            parse_role_key(&k),
            Some(("17".to_owned(), 42, "Decision|Maker".to_owned()))
        );
        assert_eq!(parse_role_key("17|x|r"), None);
    }
}
