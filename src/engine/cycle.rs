//! The [`Engine`]: one cycle (schema, gather, reconcile, apply, commit), the quota governor and
//! the on-demand sync of one lead.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::leads;
use super::objects::{self, OnFailure};
use super::{
    Context, CrmRecordOutcome, CycleOptions, CycleSummary, EngineError, OnDemandOutcome, Runner,
};
use crate::crm::CrmError;
use crate::engine::pipeline::Scope;
use crate::mapping::{
    MarketoKind, PlanField, Plans, SchemaSet, SchemaSource, SchemaTtl, carries, compile_all,
};
use crate::marketo::describe::StandardObject;
use crate::marketo::usage::{QuotaGovernor, QuotaPolicy, QuotaVerdict};
use crate::marketo::{Disposition, UsageSnapshot};
use crate::model::{FieldType, ObjectSchema, Side};
use crate::store::{
    CycleCount, CycleOutcome, CycleRecord, Direction, SchemaRecord, StepTiming, marketo_day,
};
use crate::telemetry::events::FieldAvailability;

/// Tunable thresholds of a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// Changed leads above which the Marketo gather uses a Bulk Lead Extract instead of Get Leads
    /// by id.
    pub bulk_extract_threshold: usize,
    /// Records above which writes to Marketo go through Bulk Import instead of REST batches.
    pub bulk_import_threshold: usize,
    /// Changes read from the CRM per call.
    pub crm_page: usize,
    /// Time between status polls of a bulk export.
    pub export_poll: std::time::Duration,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            bulk_extract_threshold: 1_200,
            bulk_import_threshold: 3_000,
            crm_page: 1_000,
            export_poll: std::time::Duration::from_secs(30),
        }
    }
}

/// The sync engine: runs cycles and on-demand syncs against one [`Context`].
pub struct Engine {
    ctx: Context,
    tunables: Tunables,
    plans: Mutex<Option<Plans>>,
    /// The mapping problems logged last cycle, so an unchanged problem is logged once, not
    /// every five minutes (the summary and the status page still carry it every cycle).
    logged_problems: Mutex<BTreeSet<String>>,
    /// Per (mapping object, field): the CRM column type the field last synced with, so that a
    /// column retyped while running (text to integer, ...) into a type the mapping cannot carry
    /// disables the field until the column has that type again.
    crm_types: Mutex<HashMap<(String, String), FieldType>>,
    /// Per (mapping object, field): whether it was disabled at the last schema refresh, so that
    /// a field switching off or on is reported (log line and gauge) once, when it switches.
    field_states: Mutex<HashMap<(String, String), bool>>,
    /// The shared-quota governor: the day's budget after the last usage read, and the calls
    /// on-demand work spent today.
    quota: QuotaGovernor,
}

impl Engine {
    /// Returns an engine with the default thresholds and the configured
    /// `marketo.bulk_import_threshold`.
    pub fn new(ctx: Context) -> Engine {
        let tunables = Tunables {
            bulk_import_threshold: ctx.settings.marketo.bulk_import_threshold,
            ..Tunables::default()
        };
        Engine::with_tunables(ctx, tunables)
    }

    /// Returns an engine with explicit thresholds.
    pub fn with_tunables(ctx: Context, tunables: Tunables) -> Engine {
        Engine {
            tunables,
            plans: Mutex::new(None),
            logged_problems: Mutex::new(BTreeSet::new()),
            crm_types: Mutex::new(HashMap::new()),
            field_states: Mutex::new(HashMap::new()),
            quota: QuotaGovernor::new(quota_policy(&ctx.settings.marketo)),
            ctx,
        }
    }

    /// Returns the engine's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Returns the thresholds.
    pub fn tunables(&self) -> &Tunables {
        &self.tunables
    }

    /// Returns the shared-quota governor.
    pub fn quota(&self) -> &QuotaGovernor {
        &self.quota
    }

    /// Reads the instance's usage when an hour has passed since the last read (the caller
    /// persists that call with its own), then returns
    /// `Err(Paused)` when today's calls reached the day's budget, and with `on_demand`, whether
    /// the on-demand share is spent (`Ok(false)`).
    async fn check_quota(&self, on_demand: bool) -> Result<bool, EngineError> {
        let now = self.ctx.clock.now();
        let mut used = self.ctx.store.api_usage(marketo_day(now)).await?.calls;
        if self.quota.read_due(now) {
            // The read's own call is persisted by the caller with the rest of its calls.
            let before = self.ctx.marketo.usage();
            if let Err(e) = self.quota.refresh(&self.ctx.marketo, used, now).await {
                warn!(error = %e, "cannot read the instance's API usage; the own budget holds");
            }
            used += self.ctx.marketo.usage().calls.saturating_sub(before.calls);
        }
        match self.quota.verdict(used, on_demand, now) {
            QuotaVerdict::Allowed => Ok(true),
            QuotaVerdict::OnDemandSpent { used, budget } => {
                info!(
                    used,
                    budget,
                    "on-demand share of the Marketo budget spent; the next poll carries the records"
                );
                Ok(false)
            }
            QuotaVerdict::Spent { used, budget } => Err(EngineError::Paused {
                reason: format!("daily Marketo call budget spent ({used} of {budget} calls)"),
                until: Some(crate::marketo::limiter::next_day_turn(now)),
            }),
        }
    }

    /// Syncs a batch of webhook leads through the lead mapping; `None` without one.
    async fn sync_batch(
        &self,
        lead_ids: &[i64],
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<(i64, OnDemandOutcome)>>, EngineError> {
        let plans = self.current_plans().await?;
        let Some(plan) = plans
            .objects
            .values()
            .find(|p| p.kind() == MarketoKind::Lead)
        else {
            return Ok(None);
        };
        leads::sync_batch(&self.ctx, plan, lead_ids, cancel)
            .await
            .map(Some)
            .map_err(|e| as_pause(e, self.ctx.clock.now()))
    }

    /// Returns the plans of the last schema refresh, refreshing them when there was none.
    async fn current_plans(&self) -> Result<Plans, EngineError> {
        let cached = self.plans.lock().ok().and_then(|p| p.clone());
        match cached {
            Some(p) => Ok(p),
            None => self.refresh_schemas(&mut CycleSummary::default()).await,
        }
    }

    /// Loads the persisted usage of today into the client (counters never go down).
    async fn restore_usage(&self) -> Result<(), EngineError> {
        let snapshot = self.ctx.marketo.usage();
        let stored = self.ctx.store.api_usage(snapshot.day).await?;
        self.ctx.marketo.restore_usage(UsageSnapshot {
            day: snapshot.day,
            calls: stored.calls,
            bulk_bytes: stored.bulk_bytes,
        });
        Ok(())
    }

    /// Adds the calls made since `before` to the store's usage of today.
    async fn persist_usage(&self, before: &UsageSnapshot) -> Result<u64, EngineError> {
        let after = self.ctx.marketo.usage();
        let (calls, bytes) = if after.day == before.day {
            (
                after.calls.saturating_sub(before.calls),
                after.bulk_bytes.saturating_sub(before.bulk_bytes),
            )
        } else {
            (after.calls, after.bulk_bytes)
        };
        if calls > 0 || bytes > 0 {
            self.ctx
                .store
                .add_api_usage(marketo_day(self.ctx.clock.now()), calls, bytes)
                .await?;
        }
        Ok(calls)
    }

    /// Describes every synced object on both sides, stores the schemas and compiles the plans.
    /// A field that vanished, became read-only or whose CRM column was retyped into a type the
    /// mapping cannot carry is disabled with a warning (logged once, in every summary) and the
    /// `mksync_disabled_fields` gauge; it syncs again when the column is back as it was. A CRM
    /// object whose structural column (primary key, modified time, Marketo id) is gone gets no
    /// plan: its step fails with a warning naming the column, and the other objects sync.
    ///
    /// # Errors
    ///
    /// Returns an error when Describe Lead fails, or the CRM's describe of the lead object fails
    /// for another reason than its catalog (the database unreachable).
    pub async fn refresh_schemas(&self, summary: &mut CycleSummary) -> Result<Plans, EngineError> {
        let ctx = &self.ctx;
        let mut set = SchemaSet::default();
        let now = ctx.clock.now();
        let objects = &ctx.settings.sync.objects;
        let mut crm_objects = Vec::new();
        let mut marketo_objects = Vec::new();
        let mut lead_crm = None;
        let mut activities = false;
        // Objects whose describe failed: their mappings' "no such object" problems would only
        // repeat the describe warning, wrongly.
        let mut undescribed: BTreeSet<(Side, String)> = BTreeSet::new();
        for m in ctx.mappings.iter() {
            if !objects.contains(&m.object) {
                continue;
            }
            if m.file.is_activities() {
                activities = true;
                crm_objects.push(m.file.crm_object.clone());
                for a in &m.file.activities {
                    if let Some(o) = &a.crm_object {
                        crm_objects.push(o.clone());
                    }
                }
                continue;
            }
            if m.file.kind() == MarketoKind::Lead {
                lead_crm = Some(m.file.crm_object.clone());
            }
            crm_objects.push(m.file.crm_object.clone());
            marketo_objects.push(m.file.marketo_schema_object());
        }
        crm_objects.sort();
        crm_objects.dedup();
        marketo_objects.sort();
        marketo_objects.dedup();
        for object in &marketo_objects {
            if let Some(ttl) = marketo_schema_ttl(&ctx.settings, object)
                && let Some(stored) = ctx.store.schema(Side::Marketo, object).await?
                && now - stored.fetched_at < ttl
                && let Ok(schema) = serde_json::from_value::<ObjectSchema>(stored.schema.clone())
            {
                set.insert(schema);
                continue;
            }
            let fetched = match MarketoKind::of(object).schema_source() {
                SchemaSource::Lead => ctx.marketo.describe_lead2().await.map(|d| d.to_schema()),
                SchemaSource::Standard(o) => describe_std(ctx, o, object).await,
                SchemaSource::Fixed => ctx.marketo.object_schema(object).await,
                SchemaSource::CustomObject => ctx
                    .marketo
                    .describe_custom_object(object)
                    .await
                    .map(|m| m.to_schema(object)),
            };
            let schema = match fetched {
                Ok(s) => s,
                Err(e) if object == "lead" => return Err(e.into()),
                Err(e) => {
                    summary
                        .warnings
                        .push(format!("describe of marketo `{object}` failed: {e}"));
                    undescribed.insert((Side::Marketo, object.clone()));
                    continue;
                }
            };
            let mut schema = crate::mapping::programs::complete(schema);
            schema.object = object.clone();
            self.store_schema(summary, &schema).await?;
            set.insert(schema);
        }
        for object in &crm_objects {
            match ctx.crm.describe(object).await {
                Ok(schema) => {
                    self.store_schema(summary, &schema).await?;
                    set.insert(schema);
                }
                Err(e)
                    if lead_crm.as_deref() == Some(object.as_str())
                        && !matches!(e, CrmError::UnknownName { .. } | CrmError::Schema { .. }) =>
                {
                    return Err(e.into());
                }
                Err(e) if lead_crm.as_deref() == Some(object.as_str()) => {
                    // The lead step cannot run without its structural columns; the other
                    // objects can.
                    warn!(error = %e, "the lead step cannot run: crm schema");
                    summary.warnings.push(format!("step `leads` failed: {e}"));
                }
                Err(e) => {
                    undescribed.insert((Side::Crm, object.clone()));
                    // Name the steps that cannot run without it (their plans are missing).
                    let steps: Vec<String> = ctx
                        .mappings
                        .iter()
                        .filter(|m| objects.contains(&m.object) && m.file.crm_object == *object)
                        .map(|m| format!("`{}`", m.object))
                        .collect();
                    let steps = if steps.is_empty() {
                        String::new()
                    } else {
                        format!(" (step {} cannot run)", steps.join(", "))
                    };
                    summary
                        .warnings
                        .push(format!("describe of crm `{object}` failed{steps}: {e}"));
                }
            }
        }
        if activities {
            match self.activity_schemas(now, summary.dry_run).await {
                Ok(list) => {
                    for schema in list {
                        set.insert(schema);
                    }
                }
                Err(e) => summary
                    .warnings
                    .push(format!("activity types could not be read: {e}")),
            }
        }
        let (mut plans, mut problems) = compile_all(&ctx.settings, &ctx.mappings, &set);
        let unread: BTreeSet<String> = ctx
            .mappings
            .iter()
            .filter(|m| {
                undescribed.contains(&(Side::Marketo, m.file.marketo_schema_object()))
                    || undescribed.contains(&(Side::Crm, m.file.crm_object.clone()))
            })
            .map(|m| m.file_name())
            .collect();
        problems.retain(|p| !unread.contains(&p.file));
        let mut current: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for (column, reason) in self.disable_retyped(&mut plans) {
            // The field is off: its type-mismatch warning would only repeat the reason.
            let label = format!("CRM field `{column}` (");
            current.retain(|w| !(w.contains("type mismatch") && w.contains(&label)));
            current.insert(reason);
        }
        self.publish_field_states(&plans);
        if let Ok(mut logged) = self.logged_problems.lock() {
            for problem in current.difference(&logged) {
                warn!(problem = %problem, "mapping problem against the live schema");
            }
            *logged = current.clone();
        }
        summary.warnings.extend(current);
        if let Ok(mut cached) = self.plans.lock() {
            *cached = Some(plans.clone());
        }
        Ok(plans)
    }

    /// Disables the fields whose CRM column changed type since they last synced into one the
    /// mapping cannot carry, and returns each one's CRM column and warning. A field whose new
    /// type still carries every value takes it as its new type.
    fn disable_retyped(&self, plans: &mut Plans) -> Vec<(String, String)> {
        let mut warnings = Vec::new();
        let Ok(mut known) = self.crm_types.lock() else {
            return warnings;
        };
        for plan in plans.objects.values_mut() {
            let mut disable = Vec::new();
            for f in plan.enabled_fields() {
                let (Some(column), Some(now)) = (f.crm.as_deref(), f.crm_ty.as_ref()) else {
                    continue;
                };
                let key = (plan.object.clone(), f.name.clone());
                let Some(before) = known.get(&key) else {
                    known.insert(key, now.clone());
                    continue;
                };
                if before == now {
                    continue;
                }
                if carried(f, before) && !carried(f, now) {
                    disable.push((
                        f.name.clone(),
                        column.to_owned(),
                        format!(
                            "CRM column `{column}` of `{}` changed type from {} to {} while running, \
                             which the mapping cannot carry: field `{}` of `{}` is disabled until \
                             the column is {} again",
                            plan.crm_object,
                            before.describe(),
                            now.describe(),
                            f.name,
                            plan.object,
                            before.describe()
                        ),
                    ));
                } else {
                    known.insert(key, now.clone());
                }
            }
            for (field, column, reason) in disable {
                plan.disable_field(&field, &reason);
                warnings.push((column, reason));
            }
        }
        warnings
    }

    /// Reports each field that switched off or on since the last refresh (one log line and the
    /// `mksync_disabled_fields` gauge), never again while it stays so.
    fn publish_field_states(&self, plans: &Plans) {
        let Ok(mut seen) = self.field_states.lock() else {
            return;
        };
        for plan in plans.objects.values() {
            for f in &plan.fields {
                let disabled = f.disabled.is_some();
                let key = (plan.object.clone(), f.name.clone());
                let before = seen.insert(key, disabled);
                if before == Some(disabled) || (before.is_none() && !disabled) {
                    continue;
                }
                FieldAvailability {
                    object: &plan.object,
                    field: &f.name,
                    disabled: f.disabled.as_deref(),
                }
                .emit();
            }
        }
    }

    /// Returns the activity types as schemas `activity:<id>`, read from Marketo once a day
    /// (the fetch time is kept in the store's schema record `activity_types`).
    async fn activity_schemas(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Vec<ObjectSchema>, EngineError> {
        const KEY: &str = "activity_types";
        if let Some(stored) = self.ctx.store.schema(Side::Marketo, KEY).await?
            && now - stored.fetched_at < chrono::Duration::hours(24)
            && let Ok(list) = serde_json::from_value::<Vec<ObjectSchema>>(stored.schema.clone())
        {
            return Ok(list);
        }
        let types = self.ctx.marketo.activity_types().await?;
        let list: Vec<ObjectSchema> = types
            .iter()
            .map(super::objects::activities::activity_schema)
            .collect();
        if dry_run {
            return Ok(list);
        }
        let json = serde_json::to_value(&list).unwrap_or_default();
        let hash = crate::model::fields_hash(
            &[(KEY.to_owned(), crate::model::Value::Text(json.to_string()))]
                .into_iter()
                .collect(),
        );
        self.ctx
            .store
            .put_schema(&SchemaRecord {
                side: Side::Marketo,
                object: KEY.into(),
                hash,
                schema: json,
                fetched_at: now,
            })
            .await?;
        Ok(list)
    }

    async fn store_schema(
        &self,
        summary: &mut CycleSummary,
        schema: &ObjectSchema,
    ) -> Result<(), EngineError> {
        let hash = schema.hash();
        let previous = self.ctx.store.schema(schema.side, &schema.object).await?;
        if let Some(prev) = &previous
            && prev.hash != hash
        {
            summary.warnings.push(format!(
                "{} schema of `{}` changed since the last cycle",
                schema.side.as_str(),
                schema.object
            ));
        }
        if summary.dry_run {
            // A dry run writes nothing to the store, the schemas included.
            return Ok(());
        }
        if previous.as_ref().is_none_or(|p| p.hash != hash) || previous.is_none() {
            self.ctx
                .store
                .put_schema(&SchemaRecord {
                    side: schema.side,
                    object: schema.object.clone(),
                    hash,
                    schema: serde_json::to_value(schema).unwrap_or_default(),
                    fetched_at: self.ctx.clock.now(),
                })
                .await?;
        } else if let Some(prev) = previous {
            // Unchanged: refresh only the fetch time, so daily objects know when they were read.
            self.ctx
                .store
                .put_schema(&SchemaRecord {
                    fetched_at: self.ctx.clock.now(),
                    ..prev
                })
                .await?;
        }
        Ok(())
    }

    async fn cycle_body(
        &self,
        options: &CycleOptions,
        cancel: &CancellationToken,
        summary: &mut CycleSummary,
        steps: &mut Vec<StepTiming>,
    ) -> Result<(), EngineError> {
        let t = Timer::start(&self.ctx, "schema");
        let plans = self.refresh_schemas(summary).await?;
        steps.push(t.stop());
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // The steps that failed, and the objects that got no plan (their describe failed):
        // the steps whose records reference them wait for the next cycle.
        let mut failed: BTreeSet<&str> = plans.missing.iter().map(String::as_str).collect();
        for registered in objects::STEPS {
            if let Some(parent) = registered.after.iter().find(|p| failed.contains(*p)) {
                let step = registered.name;
                warn!(step, parent, "step skipped: a step it depends on failed");
                summary.warnings.push(format!(
                    "step `{step}` skipped: `{parent}`, whose records it references, did not sync in this cycle"
                ));
                failed.insert(step);
                continue;
            }
            let ok = self
                .run_registered(registered, &plans, summary, steps, options, cancel)
                .await?;
            if !ok {
                failed.insert(registered.name);
            }
        }
        Ok(())
    }

    /// Runs one registered step and returns whether it succeeded. A step that fails as a whole
    /// is, unless it is registered as [`OnFailure::FailCycle`], reported as a warning and the
    /// cycle goes on with the next one (its watermarks stay where they were); a cancellation or
    /// a quota pause stops the cycle.
    async fn run_registered(
        &self,
        registered: &'static objects::Step,
        plans: &Plans,
        summary: &mut CycleSummary,
        steps: &mut Vec<StepTiming>,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<bool, EngineError> {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let step = registered.name;
        let t = Timer::start(&self.ctx, step);
        let input = objects::StepInput {
            ctx: &self.ctx,
            tunables: &self.tunables,
            plans,
            options,
            cancel,
        };
        let result = (registered.run)(input, summary).await;
        if result.is_ok() || registered.on_failure == OnFailure::Warn {
            steps.push(t.stop());
        }
        match result {
            Ok(()) => Ok(true),
            Err(error) if registered.on_failure == OnFailure::FailCycle => Err(error),
            Err(error @ (EngineError::Cancelled | EngineError::Paused { .. })) => Err(error),
            Err(error) => {
                // Its CRM writes were not recorded: the next read must see them.
                self.ctx.crm.forget_own_writes();
                warn!(step, error = %error, "object step failed; the cycle goes on");
                summary
                    .warnings
                    .push(format!("step `{step}` failed: {error}"));
                Ok(false)
            }
        }
    }
}

/// Returns how long a stored Describe of Marketo object `object` is reused, `None` to describe
/// it every cycle: the lead every cycle (its fields drift most, and a field removed must stop
/// its writes at once), roles and salespersons once a day, the others per
/// `sync.marketo_schema_ttl_secs`.
fn marketo_schema_ttl(
    settings: &crate::config::Settings,
    object: &str,
) -> Option<chrono::Duration> {
    match MarketoKind::of(object).schema_ttl() {
        SchemaTtl::EveryCycle => None,
        SchemaTtl::Daily => Some(chrono::Duration::hours(24)),
        SchemaTtl::Setting => match settings.sync.marketo_schema_ttl_secs {
            0 => None,
            secs => Some(chrono::Duration::seconds(
                i64::try_from(secs).unwrap_or(i64::MAX),
            )),
        },
    }
}

/// Returns true when the field's values travel between its Marketo type and the CRM type `crm`
/// unchanged in every direction it syncs.
fn carried(f: &PlanField, crm: &FieldType) -> bool {
    let Some(marketo) = f.marketo_ty.as_ref() else {
        return true;
    };
    let into_crm = !f.direction.writes_to(Side::Crm) || carries(marketo, crm);
    let from_crm = !f.direction.reads_from(Side::Crm) || carries(crm, marketo);
    into_crm && from_crm
}

async fn describe_std(
    ctx: &Context,
    object: StandardObject,
    name: &str,
) -> Result<ObjectSchema, crate::marketo::Error> {
    ctx.marketo
        .describe_object(object)
        .await
        .map(|m| m.to_schema(name))
}

struct Timer {
    step: &'static str,
    at: DateTime<Utc>,
    started: Instant,
}

impl Timer {
    fn start(ctx: &Context, step: &'static str) -> Timer {
        Timer {
            step,
            at: ctx.clock.now(),
            started: Instant::now(),
        }
    }

    fn stop(self) -> StepTiming {
        StepTiming {
            step: self.step.to_owned(),
            started_at: self.at,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn counts_of(summary: &CycleSummary) -> Vec<CycleCount> {
    let mut out = Vec::new();
    for (object, dirs) in &summary.objects {
        for (dir, c) in dirs {
            out.push(CycleCount {
                object: object.clone(),
                direction: Some(*dir),
                read: c.read,
                created: c.created,
                updated: c.updated,
                deleted: c.deleted,
                conflicts: c.conflicts,
                skipped: c.skipped,
                failed: c.failed,
            });
        }
    }
    out
}

/// Returns the shared-quota policy of the Marketo settings.
pub fn quota_policy(m: &crate::config::MarketoSettings) -> QuotaPolicy {
    QuotaPolicy {
        daily_budget: u64::from(m.daily_call_budget),
        instance_quota: m.instance_daily_quota,
        share: m.quota_share,
        on_demand_share: m.on_demand_share,
    }
}

/// Returns the pause a Marketo error asks for, if it is a daily-quota error.
fn as_pause(error: EngineError, now: DateTime<Utc>) -> EngineError {
    match &error {
        EngineError::Marketo(e) if e.disposition() == Disposition::PauseUntilDayTurns => {
            EngineError::Paused {
                reason: format!("marketo daily quota: {e}"),
                until: Some(crate::marketo::limiter::next_day_turn(now)),
            }
        }
        _ => error,
    }
}

#[async_trait]
impl Runner for Engine {
    async fn run_one_cycle(
        &self,
        options: &CycleOptions,
        cancel: &CancellationToken,
    ) -> Result<CycleSummary, EngineError> {
        self.restore_usage().await?;
        let before = self.ctx.marketo.usage();
        if let Err(e) = self.check_quota(false).await {
            self.persist_usage(&before).await?;
            return Err(e);
        }
        let started = self.ctx.clock.now();
        let id = uuid::Uuid::new_v4();
        let mut summary = CycleSummary {
            id: Some(id),
            started_at: Some(started),
            dry_run: options.dry_run,
            ..CycleSummary::default()
        };
        let mut record = CycleRecord {
            id,
            started_at: started,
            ended_at: None,
            outcome: CycleOutcome::Running,
            steps: Vec::new(),
            counts: Vec::new(),
            api_calls: 0,
            message: None,
        };
        if !options.dry_run {
            self.ctx.store.record_cycle(&record).await?;
        }
        let mut steps = Vec::new();
        let result = self
            .cycle_body(options, cancel, &mut summary, &mut steps)
            .await
            .map_err(|e| match e {
                EngineError::Marketo(crate::marketo::Error::Cancelled { .. })
                    if cancel.is_cancelled() =>
                {
                    EngineError::Cancelled
                }
                e => as_pause(e, self.ctx.clock.now()),
            });
        if result.is_err() {
            // The CRM writes of the unfinished step were not recorded: the next read must see
            // them (they may hide the user's own change they overwrote).
            self.ctx.crm.forget_own_writes();
        }
        let calls = self.persist_usage(&before).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot persist the api usage");
            0
        });
        summary.marketo_calls = calls;
        if options.dry_run {
            // The counts of a dry run are those of its planned writes.
            summary.count_plan();
        }
        summary.ended_at = Some(self.ctx.clock.now());
        record.ended_at = summary.ended_at;
        record.steps = steps;
        record.counts = counts_of(&summary);
        record.api_calls = calls;
        record.outcome = match &result {
            Ok(()) if summary.failed() > 0 => CycleOutcome::Partial,
            Ok(()) => CycleOutcome::Succeeded,
            Err(EngineError::Cancelled) => CycleOutcome::Cancelled,
            Err(_) => CycleOutcome::Failed,
        };
        record.message = result.as_ref().err().map(|e| e.to_string());
        if !options.dry_run
            && let Err(e) = self.ctx.store.record_cycle(&record).await
        {
            warn!(error = %e, "cannot record the cycle");
        }
        if options.dry_run {
            info!(cycle = %id, calls, planned = summary.plan.len(), "dry run finished; nothing written");
        } else {
            info!(cycle = %id, calls, outcome = record.outcome.as_str(), "cycle finished");
        }
        result.map(|()| summary)
    }

    async fn sync_lead_now(
        &self,
        lead_id: i64,
        cancel: &CancellationToken,
    ) -> Result<OnDemandOutcome, EngineError> {
        let mut out = self.sync_leads_now(&[lead_id], cancel).await?;
        Ok(out.pop().map_or(OnDemandOutcome::NotFound, |(_, o)| o))
    }

    async fn sync_leads_now(
        &self,
        lead_ids: &[i64],
        cancel: &CancellationToken,
    ) -> Result<Vec<(i64, OnDemandOutcome)>, EngineError> {
        let all = |o: OnDemandOutcome| lead_ids.iter().map(|id| (*id, o.clone())).collect();
        self.on_demand(all(OnDemandOutcome::Deferred), async {
            self.sync_batch(lead_ids, cancel)
                .await
                .map(|o| o.unwrap_or_else(|| all(OnDemandOutcome::NotSynced)))
        })
        .await
    }

    async fn sync_crm_record_now(
        &self,
        object: &str,
        crm_id: &str,
        cancel: &CancellationToken,
    ) -> Result<CrmRecordOutcome, EngineError> {
        let plans = self.current_plans().await?;
        let Some(plan) = plans
            .objects
            .values()
            .find(|p| p.object == object || p.crm_object == object)
        else {
            if poll_only_object(&plans, object) {
                return Ok(CrmRecordOutcome::PollOnly);
            }
            let known = plans.objects.values().map(|p| p.object.clone()).collect();
            return Ok(CrmRecordOutcome::UnknownObject { known });
        };
        if plan.kind() == MarketoKind::Lead {
            return self
                .on_demand(CrmRecordOutcome::Deferred, async {
                    let result = leads::sync_crm_record(&self.ctx, plan, crm_id, cancel)
                        .await
                        .map_err(|e| as_pause(e, self.ctx.clock.now()));
                    if result.is_err() {
                        self.ctx.crm.forget_own_writes();
                    }
                    result
                })
                .await;
        }
        let Some(record) = objects::step_of(&plans, plan).and_then(|s| s.record) else {
            return Ok(CrmRecordOutcome::PollOnly);
        };
        self.on_demand(CrmRecordOutcome::Deferred, async {
            let result = self.sync_one(&plans, plan, record, crm_id, cancel).await;
            if result.is_err() {
                self.ctx.crm.forget_own_writes();
            }
            result.map_err(|e| as_pause(e, self.ctx.clock.now()))
        })
        .await
    }
}

/// Returns true when `object` names a synced object that has no plan in `plans.objects`
/// because it syncs activities (Marketo activity types, CRM events sent as custom activities):
/// those sync on the poll only.
fn poll_only_object(plans: &Plans, object: &str) -> bool {
    let activity = plans
        .activities
        .values()
        .any(|p| p.object == object || p.crm_object == object);
    let custom_activity = plans
        .custom_activities
        .iter()
        .any(|(name, c)| name == object || c.plan.crm_object == object);
    activity || custom_activity
}

/// Returns what an on-demand step did to the record `crm_id` of `object`, from its counts and
/// the record's open ledger entry (`open`): not read (no live record), refused (written or
/// waiting in the ledger), written, or already agreed.
fn record_outcome(
    summary: &CycleSummary,
    object: &str,
    open: Option<&crate::store::SyncError>,
) -> CrmRecordOutcome {
    let counts = |d: Direction| summary.objects.get(object).and_then(|c| c.get(&d)).cloned();
    let push = counts(Direction::CrmToMarketo).unwrap_or_default();
    let pull = counts(Direction::MarketoToCrm).unwrap_or_default();
    if push.read == 0 {
        return CrmRecordOutcome::NotFound;
    }
    if let Some(e) = open {
        return CrmRecordOutcome::Refused {
            code: e.code.clone(),
            message: e.message.clone(),
        };
    }
    if push.created + push.updated + pull.created + pull.updated > 0 {
        CrmRecordOutcome::Synced
    } else {
        CrmRecordOutcome::Unchanged
    }
}

impl Engine {
    /// Syncs the CRM record `crm_id` of `plan` through its step's [`objects::RecordFn`] (the
    /// cycle's pipeline over one record: gather by id, pair with its link and Marketo record,
    /// reconcile, write, commit) and returns what happened to it.
    async fn sync_one(
        &self,
        plans: &Plans,
        plan: &crate::mapping::Plan,
        record: objects::RecordFn,
        crm_id: &str,
        cancel: &CancellationToken,
    ) -> Result<CrmRecordOutcome, EngineError> {
        let options = CycleOptions::default();
        let input = objects::StepInput {
            ctx: &self.ctx,
            tunables: &self.tunables,
            plans,
            options: &options,
            cancel,
        };
        let scope = Scope::Record {
            object: &plan.object,
            id: crm_id,
        };
        let mut summary = CycleSummary::default();
        record(input, scope, &mut summary).await?;
        if let Some(w) = summary.warnings.first() {
            // A step that skipped itself (native CRM sync owns the object in Marketo).
            return Err(EngineError::Config(w.clone()));
        }
        let open = self
            .ctx
            .store
            .list_errors(&crate::store::ErrorFilter {
                status: Some(crate::store::ErrorStatus::Open),
                object: Some(plan.object.clone()),
                limit: 1000,
            })
            .await?
            .into_iter()
            .filter(|e| e.record_key == crm_id)
            .min_by_key(|e| e.direction != Direction::CrmToMarketo);
        Ok(record_outcome(&summary, &plan.object, open.as_ref()))
    }
}

impl Engine {
    /// Runs on-demand `work` within the on-demand share of the quota: `deferred` when the share
    /// is spent (the next poll carries the records); the calls it made are counted to the day
    /// and to the on-demand share.
    async fn on_demand<T>(
        &self,
        deferred: T,
        work: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.restore_usage().await?;
        let before = self.ctx.marketo.usage();
        let result = match self.check_quota(true).await {
            Ok(false) => Ok(deferred),
            Ok(true) => work.await,
            Err(e) => Err(e),
        };
        let calls = self.persist_usage(&before).await?;
        self.quota.add_on_demand(calls, self.ctx.clock.now());
        result
    }
}
