//! The lead step's state: what it stages for its ONE store commit (links, tombstones, ledger
//! entries through the one retry policy, conflicts, watermarks), the open ledger entries of
//! leads, and the plan rows of a dry run.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::LINK_OBJECT;
use crate::engine::cycle::Tunables;
use crate::engine::ledger::{Failure, Subject};
use crate::engine::pipeline::commit::{error_key, ledger_entry, link};
use crate::engine::summary::PlannedChange;
use crate::engine::{Context, EngineError};
use crate::mapping::Plan;
use crate::model::{Fields, Side};
use crate::store::{
    Direction, ErrorFilter, ErrorKey, ErrorStatus, Link, StagedStore, StepCommit, SyncError,
    Tombstone, TombstoneKind,
};

/// Due ledger entries of leads read again per step (the earliest due first).
const DUE_PER_STEP: usize = 1_000;

/// The step's accumulated store writes and the settings of one run.
pub(super) struct Step<'a> {
    pub ctx: &'a Context,
    pub plan: &'a Plan,
    pub commit: StepCommit,
    pub dry_run: bool,
    pub plan_out: Vec<PlannedChange>,
    /// The open lead entries due for a retry now.
    pub due: Vec<ErrorKey>,
    /// Every open lead entry (resolved when its record goes through; the previous entry when
    /// it fails again).
    pub open: HashMap<ErrorKey, SyncError>,
    pub bulk_import_threshold: usize,
    pub poll: std::time::Duration,
    pub cancel: CancellationToken,
}

impl<'a> Step<'a> {
    /// Starts a cycle's lead step: the open lead ledger entries and those due now.
    pub(super) async fn start(
        ctx: &'a Context,
        plan: &'a Plan,
        tunables: &Tunables,
        dry_run: bool,
        cancel: &CancellationToken,
    ) -> Result<Self, EngineError> {
        let open = open_errors(ctx).await?;
        let now = ctx.clock.now();
        let mut due: Vec<&SyncError> = open
            .values()
            .filter(|e| e.next_retry_at.is_some_and(|t| t <= now))
            .collect();
        due.sort_by_key(|e| e.next_retry_at);
        let due = due
            .into_iter()
            .take(DUE_PER_STEP)
            .map(|e| error_key(&e.object, e.direction, &e.record_key))
            .collect();
        Ok(Step {
            ctx,
            plan,
            commit: StepCommit::default(),
            dry_run,
            plan_out: Vec::new(),
            due,
            open,
            bulk_import_threshold: tunables.bulk_import_threshold,
            poll: tunables.export_poll,
            cancel: cancel.clone(),
        })
    }

    /// Starts the step of one on-demand lead (webhooks): no retries, REST writes only.
    pub(super) async fn on_demand(
        ctx: &'a Context,
        plan: &'a Plan,
        cancel: &CancellationToken,
    ) -> Result<Self, EngineError> {
        Ok(Step {
            ctx,
            plan,
            commit: StepCommit::default(),
            dry_run: false,
            plan_out: Vec::new(),
            due: Vec::new(),
            open: open_errors(ctx).await?,
            bulk_import_threshold: usize::MAX,
            poll: std::time::Duration::from_secs(5),
            cancel: cancel.clone(),
        })
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    /// Records one refused lead in the ledger through the pipeline's [`ledger_entry`]: the open
    /// entry of the same key keeps its id and first sighting, and only a retryable failure is
    /// scheduled.
    pub(super) fn error(
        &mut self,
        direction: Direction,
        record_key: String,
        other_key: Option<String>,
        payload: serde_json::Value,
        failure: Failure,
    ) {
        let key = error_key(LINK_OBJECT, direction, &record_key);
        let subject = Subject {
            object: LINK_OBJECT,
            direction,
            record_key: &record_key,
            other_key,
            payload,
        };
        let entry = ledger_entry(self.ctx, subject, failure, self.open.get(&key));
        self.commit.errors_upsert.push(entry);
    }

    /// Links lead `m_id` and CRM record `c_id`, agreeing on `base` now.
    pub(super) fn link(&mut self, m_id: i64, c_id: &str, base: Fields) {
        let l = link(LINK_OBJECT, &m_id.to_string(), c_id, base, self.now());
        self.commit.links_upsert.push(l);
    }

    /// Tombstones `link`: its record left `side` (deleted or merged).
    pub(super) fn tombstone(&mut self, link: &Link, kind: TombstoneKind, side: Side) {
        let mut l = link.clone();
        l.tombstone = Some(Tombstone {
            kind,
            side,
            at: self.now(),
        });
        self.commit.links_upsert.push(l);
    }

    /// Stages what the step has learned so far, so that the staged store's link reads of the
    /// stages after see it (nothing on a dry run).
    pub(super) fn stage(&mut self, staged: &StagedStore) {
        if !self.dry_run {
            staged.stage(std::mem::take(&mut self.commit));
        }
    }
}

/// Returns the open lead errors by key.
async fn open_errors(ctx: &Context) -> Result<HashMap<ErrorKey, SyncError>, EngineError> {
    let errors = ctx
        .store
        .list_errors(&ErrorFilter {
            status: Some(ErrorStatus::Open),
            object: Some(LINK_OBJECT.to_owned()),
            limit: 100_000,
        })
        .await?;
    Ok(errors
        .into_iter()
        .map(|e| (error_key(&e.object, e.direction, &e.record_key), e))
        .collect())
}
