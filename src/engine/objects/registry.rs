//! The one list of cycle steps, in the whitepaper's order (DESIGN section 4, Apply).
//!
//! The cycle, `sync --once` and the tests iterate [`STEPS`]; nothing else names a step by a
//! string. Adding an object on an existing Marketo family is its spec file plus one line here;
//! an object whose mapping files name a new kind of Marketo object also adds that kind to
//! [`crate::mapping::kinds::KINDS`] (its spellings, how its schema is read, how long it is kept).

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use super::{
    activities, companies, custom_activities, custom_objects, deletions, opportunities,
    program_members, programs, roles, salespersons, static_lists,
};
use crate::engine::Context;
use crate::engine::pipeline::Scope;
use crate::engine::{CycleOptions, CycleSummary, EngineError, Tunables, leads};
use crate::mapping::{MarketoKind, Plans};
use crate::marketo::endpoint::families::ObjectFamily;

/// What every step receives.
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// The engine's context (clients, store, settings, clock).
    pub ctx: &'a Context,
    /// The cycle's thresholds.
    pub tunables: &'a Tunables,
    /// The compiled plans of this cycle.
    pub plans: &'a Plans,
    /// The cycle's options (dry run).
    pub options: &'a CycleOptions,
    /// Stops the step between pages and batches.
    pub cancel: &'a CancellationToken,
}

/// The future of one running step.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send + 'a>>;

/// The body of a step.
pub type StepFn = for<'a> fn(StepInput<'a>, &'a mut CycleSummary) -> StepFuture<'a>;

/// The body of a step over the records of a [`Scope`]: one CRM record on demand
/// (`sync --record`, `POST /sync/crm/{object}/{id}`), through the same pipeline as the cycle.
pub type RecordFn = for<'a> fn(StepInput<'a>, Scope<'a>, &'a mut CycleSummary) -> StepFuture<'a>;

/// What a failure of the whole step (not of one record) does to the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The cycle fails (the leads step: without leads nothing else is worth syncing).
    FailCycle,
    /// The failure becomes a warning and the cycle goes on with the next step; the step's
    /// watermarks stay where they were.
    Warn,
}

/// One registered step.
pub struct Step {
    /// The step's name (timings, warnings, `sync.objects` for single-object steps).
    pub name: &'static str,
    /// Runs the step.
    pub run: StepFn,
    /// What a whole-step failure does.
    pub on_failure: OnFailure,
    /// The steps whose records this step's records reference (roles reference opportunities):
    /// when one of them failed in this cycle, this step is skipped (its watermarks stay), rather
    /// than writing records whose parents did not arrive.
    pub after: &'static [&'static str],
    /// Syncs one CRM record of the step's objects now; `None` when the step syncs on the poll
    /// only (see the table of `http::crm_sync` for which and why).
    pub record: Option<RecordFn>,
    /// The Marketo family whose records the deletions step deletes when their CRM records are
    /// deleted ([`deletions::run`], in the reverse of this list's order: children first).
    pub deletes: Option<ObjectFamily>,
}

/// Adapts an object module's `run(ctx, plans, summary, options, cancel)` into a [`StepFn`]; with
/// `scoped`, its `run(ctx, plans, scope, summary, options, cancel)` is both the cycle's step (over
/// [`Scope::Feed`]) and the [`RecordFn`] of one record.
macro_rules! object_step {
    (@deletes) => { None };
    (@deletes $family:expr) => { Some($family) };
    ($name:expr, scoped $run:path $(, after $after:expr)* $(, deletes $family:expr)?) => {{
        fn record<'a>(
            input: StepInput<'a>,
            scope: Scope<'a>,
            summary: &'a mut CycleSummary,
        ) -> StepFuture<'a> {
            Box::pin($run(
                input.ctx,
                input.plans,
                scope,
                summary,
                input.options,
                input.cancel,
            ))
        }
        fn run<'a>(input: StepInput<'a>, summary: &'a mut CycleSummary) -> StepFuture<'a> {
            record(input, Scope::Feed, summary)
        }
        Step {
            name: $name,
            run,
            on_failure: OnFailure::Warn,
            after: &[$($after),*],
            record: Some(record as RecordFn),
            deletes: object_step!(@deletes $($family)?),
        }
    }};
    ($name:expr, $run:path $(, after $after:expr)*) => {{
        fn run<'a>(input: StepInput<'a>, summary: &'a mut CycleSummary) -> StepFuture<'a> {
            Box::pin($run(
                input.ctx,
                input.plans,
                summary,
                input.options,
                input.cancel,
            ))
        }
        Step {
            name: $name,
            run,
            on_failure: OnFailure::Warn,
            after: &[$($after),*],
            record: None,
            deletes: None,
        }
    }};
}

/// Every step of a cycle, in the order it runs.
pub const STEPS: &[Step] = &[
    object_step!(salespersons::OBJECT, scoped salespersons::run, deletes ObjectFamily::SalesPersons),
    object_step!(companies::OBJECT, scoped companies::run, deletes ObjectFamily::Companies),
    Step {
        name: leads::LINK_OBJECT,
        run: run_leads,
        on_failure: OnFailure::FailCycle,
        after: &[],
        // The lead's own on-demand path (`leads::sync_crm_record`): matching and merges.
        record: None,
        // Leads follow their own delete policy (`sync.lead_deletes`) in their step.
        deletes: None,
    },
    object_step!(
        opportunities::OBJECT,
        scoped opportunities::run,
        deletes ObjectFamily::Opportunities
    ),
    object_step!(
        roles::OBJECT,
        scoped roles::run,
        after opportunities::OBJECT,
        deletes ObjectFamily::Roles
    ),
    object_step!("deletions", deletions::run),
    object_step!(CUSTOM_OBJECTS, scoped custom_objects::run),
    object_step!(programs::OBJECT, programs::run),
    object_step!(program_members::OBJECT, program_members::run, after programs::OBJECT),
    object_step!(static_lists::OBJECT, static_lists::run),
    object_step!(activities::OBJECT, activities::run),
    object_step!(custom_activities::OBJECT, custom_activities::run),
];

/// The step of every custom object.
pub const CUSTOM_OBJECTS: &str = "custom_objects";

/// Returns the registered step named `name`.
pub fn step(name: &str) -> Option<&'static Step> {
    STEPS.iter().find(|s| s.name == name)
}

/// Returns the registered step that syncs `plan`'s records: the step of its name, or the custom
/// objects' step for a custom object.
pub fn step_of(plans: &Plans, plan: &crate::mapping::Plan) -> Option<&'static Step> {
    if plan.kind() == MarketoKind::Lead {
        return step(leads::LINK_OBJECT);
    }
    step(&plan.object).or_else(|| {
        custom_objects::custom_plans(plans)
            .iter()
            .any(|p| p.object == plan.object)
            .then(|| step(CUSTOM_OBJECTS))
            .flatten()
    })
}

/// The leads step: [`leads::run`] with the plan whose Marketo object is the lead.
fn run_leads<'a>(input: StepInput<'a>, summary: &'a mut CycleSummary) -> StepFuture<'a> {
    Box::pin(async move {
        let Some(plan) = input
            .plans
            .objects
            .values()
            .find(|p| p.kind() == MarketoKind::Lead)
        else {
            return Ok(());
        };
        let (ctx, options, cancel) = (input.ctx, input.options, input.cancel);
        leads::run(ctx, input.tunables, plan, summary, options, cancel).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deletions step deletes the registered families children first (a role before its
    /// opportunity, an opportunity before its company), the reverse of the whitepaper's write
    /// order.
    #[test]
    fn deletions_run_children_before_their_parents() {
        let order: Vec<&str> = STEPS
            .iter()
            .rev()
            .filter(|s| s.deletes.is_some())
            .map(|s| s.name)
            .collect();
        assert_eq!(
            order,
            [
                roles::OBJECT,
                opportunities::OBJECT,
                companies::OBJECT,
                salespersons::OBJECT
            ]
        );
        let family = |name: &str| step(name).and_then(|s| s.deletes.clone());
        assert_eq!(family(roles::OBJECT), Some(ObjectFamily::Roles));
        assert_eq!(
            family(leads::LINK_OBJECT),
            None,
            "leads follow their own policy"
        );
    }
}
