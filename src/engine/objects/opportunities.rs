//! CRM opportunities -> Marketo opportunities, by `externalOpportunityId` = the CRM opportunity
//! id. The attribution-critical fields (amount, isClosed, isWon, closeDate, externalCreatedDate,
//! externalCompanyId, externalSalesPersonId) come from the mapping file.

use tokio_util::sync::CancellationToken;

use super::{KeyHook, ObjectFamily, ObjectSpec, Scope, run_push, skip_when_native_sync};
use crate::engine::{Context, CycleOptions, CycleSummary, EngineError};
use crate::mapping::Plans;

/// The `sync.objects` name of this step's mapping.
pub const OBJECT: &str = "opportunities";

/// Syncs created and updated CRM opportunities to Marketo (createOrUpdate, dedupeBy
/// dedupeFields on `externalOpportunityId`). Does nothing when the object is not enabled.
///
/// Runs over the records of `scope` (the feed, or one CRM record on demand).
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
    let spec = ObjectSpec {
        family: ObjectFamily::Opportunities,
        keys: KeyHook::CrmId,
        contact_column: None,
    };
    let result = run_push(ctx, plan, &spec, scope, summary, options, cancel).await;
    skip_when_native_sync(result, OBJECT, summary)
}
