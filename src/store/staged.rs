//! A view of a store that holds one step's writes back until the step commits them, in ONE
//! transaction.
//!
//! A step that works in stages (the lead step applies merges, then deletions, then pairs the
//! rest) must see its own earlier stages' links: pairing must not match a record that a merge
//! of the same step already linked. Committing each stage makes the links visible, but leaves a
//! half-written step behind when the process dies between two commits (merge links recorded,
//! watermarks not moved). [`StagedStore`] gives the same visibility without the commits: its
//! link reads see the staged links over the stored ones, and [`StagedStore::commit_staged`]
//! writes everything (links, ledger, conflicts, watermarks) at once. A step killed before that
//! leaves the store exactly as it found it, and the next cycle re-reads from the old
//! watermarks.
//!
//! Every other call goes to the store underneath, unstaged (a bulk job is recorded before it is
//! enqueued, as its contract says).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::{
    ApiUsage, BulkJob, Conflict, ConflictFilter, CycleRecord, ErrorFilter, ErrorStatus,
    JobDirection, Lease, LedgerSummary, Link, LinkCount, PauseState, SchemaRecord, StateStore,
    StepCommit, StoreCounts, StoreError, StoreTotals, SyncError, Watermark,
};
use crate::model::Side;

/// A store whose commits are staged until [`StagedStore::commit_staged`]; its link reads see
/// the staged links.
pub struct StagedStore {
    inner: Arc<dyn StateStore>,
    staged: Mutex<StepCommit>,
}

impl StagedStore {
    /// Returns a staging view of `inner` with nothing staged.
    pub fn new(inner: Arc<dyn StateStore>) -> StagedStore {
        StagedStore {
            inner,
            staged: Mutex::new(StepCommit::default()),
        }
    }

    /// Adds `commit` to the staged writes (after those staged before it: a later link of the
    /// same key replaces an earlier one).
    pub fn stage(&self, commit: StepCommit) {
        let mut staged = self.lock();
        let StepCommit {
            watermarks,
            links_upsert,
            links_delete,
            errors_upsert,
            errors_resolve,
            conflicts,
            jobs,
        } = commit;
        staged.watermarks.extend(watermarks);
        // A link staged for upsert and then for deletion must end deleted: the store deletes
        // before it upserts, so the earlier upsert is dropped here.
        for key in &links_delete {
            staged
                .links_upsert
                .retain(|l| !(l.object == key.object && l.marketo_key == key.marketo_key));
        }
        staged.links_delete.extend(links_delete);
        staged.links_upsert.extend(links_upsert);
        staged.errors_upsert.extend(errors_upsert);
        staged.errors_resolve.extend(errors_resolve);
        staged.conflicts.extend(conflicts);
        staged.jobs.extend(jobs);
    }

    /// Returns true when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Stages `last` and writes everything staged to the store in one transaction; nothing is
    /// staged afterwards, whether it succeeded or not.
    ///
    /// # Errors
    ///
    /// As [`StateStore::commit`]; then nothing of the step was written.
    pub async fn commit_staged(&self, last: StepCommit) -> Result<(), StoreError> {
        self.stage(last);
        let all = std::mem::take(&mut *self.lock());
        self.inner.commit(all).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StepCommit> {
        // A panic while holding the lock cannot leave a half-extended commit that matters:
        // the step that panicked never commits.
        self.staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns the staged links of `object` by Marketo key (the last staged version of each)
    /// and the staged deletions.
    fn staged_links(&self, object: &str) -> (BTreeMap<String, Link>, BTreeSet<String>) {
        let staged = self.lock();
        let mut links = BTreeMap::new();
        for l in staged.links_upsert.iter().filter(|l| l.object == object) {
            links.insert(l.marketo_key.clone(), l.clone());
        }
        let deleted = staged
            .links_delete
            .iter()
            .filter(|k| k.object == object && !links.contains_key(&k.marketo_key))
            .map(|k| k.marketo_key.clone())
            .collect();
        (links, deleted)
    }

    /// Returns the stored links read for `keys` with the staged ones laid over them: a stored
    /// link whose Marketo key is staged is replaced by the staged version (which may point at
    /// another CRM record) or dropped when staged for deletion, and the staged links whose
    /// `key_of` is among `keys` are added.
    fn overlay(
        &self,
        object: &str,
        stored: Vec<Link>,
        keys: &[String],
        key_of: fn(&Link) -> &String,
    ) -> Vec<Link> {
        let (staged, deleted) = self.staged_links(object);
        let mut out: Vec<Link> = stored
            .into_iter()
            .filter(|l| !staged.contains_key(&l.marketo_key) && !deleted.contains(&l.marketo_key))
            .collect();
        let wanted: BTreeSet<&String> = keys.iter().collect();
        out.extend(staged.into_values().filter(|l| wanted.contains(key_of(l))));
        out
    }
}

#[async_trait::async_trait]
impl StateStore for StagedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn statements_executed(&self) -> u64 {
        self.inner.statements_executed()
    }

    /// Stages the commit: it is written with the rest of the step by
    /// [`StagedStore::commit_staged`].
    async fn commit(&self, commit: StepCommit) -> Result<(), StoreError> {
        self.stage(commit);
        Ok(())
    }

    async fn links_by_marketo_keys(
        &self,
        object: &str,
        keys: &[String],
    ) -> Result<Vec<Link>, StoreError> {
        let stored = self.inner.links_by_marketo_keys(object, keys).await?;
        Ok(self.overlay(object, stored, keys, |l| &l.marketo_key))
    }

    async fn links_by_crm_keys(
        &self,
        object: &str,
        keys: &[String],
    ) -> Result<Vec<Link>, StoreError> {
        let stored = self.inner.links_by_crm_keys(object, keys).await?;
        Ok(self.overlay(object, stored, keys, |l| &l.crm_key))
    }

    async fn links_page(
        &self,
        object: &str,
        after_marketo_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Link>, StoreError> {
        let (staged, deleted) = self.staged_links(object);
        let stored = self
            .inner
            .links_page(object, after_marketo_key, limit)
            .await?;
        // The page covers keys up to its last one, or all keys when it is not full.
        let full = stored.len() >= limit as usize;
        let upto = if full {
            stored.last().map(|l| l.marketo_key.clone())
        } else {
            None
        };
        let mut page: BTreeMap<String, Link> = stored
            .into_iter()
            .filter(|l| !deleted.contains(&l.marketo_key))
            .map(|l| (l.marketo_key.clone(), l))
            .collect();
        for (key, link) in staged {
            let after = after_marketo_key.is_none_or(|a| key.as_str() > a);
            let within = upto.as_ref().is_none_or(|u| &key <= u);
            if after && within {
                page.insert(key, link);
            }
        }
        Ok(page.into_values().take(limit as usize).collect())
    }

    async fn watermark(
        &self,
        system: Side,
        object: &str,
        queue: &str,
    ) -> Result<Option<Watermark>, StoreError> {
        self.inner.watermark(system, object, queue).await
    }

    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        self.inner.watermarks().await
    }

    async fn reset_watermark(&self, watermark: &Watermark) -> Result<(), StoreError> {
        self.inner.reset_watermark(watermark).await
    }

    async fn upsert_job(&self, job: &BulkJob) -> Result<(), StoreError> {
        self.inner.upsert_job(job).await
    }

    async fn job(&self, direction: JobDirection, id: &str) -> Result<Option<BulkJob>, StoreError> {
        self.inner.job(direction, id).await
    }

    async fn unfinished_jobs(&self, direction: JobDirection) -> Result<Vec<BulkJob>, StoreError> {
        self.inner.unfinished_jobs(direction).await
    }

    async fn add_api_usage(
        &self,
        day: NaiveDate,
        calls: u64,
        bulk_bytes: u64,
    ) -> Result<ApiUsage, StoreError> {
        self.inner.add_api_usage(day, calls, bulk_bytes).await
    }

    async fn api_usage(&self, day: NaiveDate) -> Result<ApiUsage, StoreError> {
        self.inner.api_usage(day).await
    }

    async fn put_schema(&self, schema: &SchemaRecord) -> Result<(), StoreError> {
        self.inner.put_schema(schema).await
    }

    async fn schema(&self, side: Side, object: &str) -> Result<Option<SchemaRecord>, StoreError> {
        self.inner.schema(side, object).await
    }

    async fn record_cycle(&self, cycle: &CycleRecord) -> Result<(), StoreError> {
        self.inner.record_cycle(cycle).await
    }

    async fn cycles_since(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CycleRecord>, StoreError> {
        self.inner.cycles_since(since, limit).await
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        self.inner.totals().await
    }

    async fn ledger_summary(&self) -> Result<Vec<LedgerSummary>, StoreError> {
        self.inner.ledger_summary().await
    }

    async fn link_counts(&self) -> Result<Vec<LinkCount>, StoreError> {
        self.inner.link_counts().await
    }

    async fn recent_cycles(&self, limit: u32) -> Result<Vec<CycleRecord>, StoreError> {
        self.inner.recent_cycles(limit).await
    }

    async fn errors_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SyncError>, StoreError> {
        self.inner.errors_due(now, limit).await
    }

    async fn list_errors(&self, filter: &ErrorFilter) -> Result<Vec<SyncError>, StoreError> {
        self.inner.list_errors(filter).await
    }

    async fn error(&self, id: Uuid) -> Result<Option<SyncError>, StoreError> {
        self.inner.error(id).await
    }

    async fn set_error_status(
        &self,
        id: Uuid,
        status: ErrorStatus,
        next_retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        self.inner.set_error_status(id, status, next_retry_at).await
    }

    async fn recent_conflicts(&self, limit: u32) -> Result<Vec<Conflict>, StoreError> {
        self.inner.recent_conflicts(limit).await
    }

    async fn list_conflicts(&self, filter: &ConflictFilter) -> Result<Vec<Conflict>, StoreError> {
        self.inner.list_conflicts(filter).await
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.counts().await
    }

    async fn try_acquire_lease(
        &self,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.try_acquire_lease(instance, holder, ttl).await
    }

    async fn renew_lease(
        &self,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew_lease(instance, holder, ttl).await
    }

    async fn release_lease(&self, instance: &str, holder: &str) -> Result<bool, StoreError> {
        self.inner.release_lease(instance, holder).await
    }

    async fn pause(
        &self,
        reason: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<PauseState, StoreError> {
        self.inner.pause(reason, until).await
    }

    async fn pause_for_quota(
        &self,
        reason: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<PauseState>, StoreError> {
        self.inner.pause_for_quota(reason, until).await
    }

    async fn resume(&self) -> Result<bool, StoreError> {
        self.inner.resume().await
    }

    async fn pause_state(&self) -> Result<Option<PauseState>, StoreError> {
        self.inner.pause_state().await
    }

    async fn lease(&self, instance: &str) -> Result<Option<Lease>, StoreError> {
        self.inner.lease(instance).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fields;

    fn link(marketo: &str, crm: &str) -> Link {
        Link {
            object: "leads".into(),
            marketo_key: marketo.into(),
            crm_key: crm.into(),
            base: Fields::new(),
            base_hash: String::new(),
            agreed_at: Utc::now(),
            tombstone: None,
        }
    }

    #[tokio::test]
    async fn staged_links_are_read_over_the_stored_ones_and_written_in_one_commit() {
        let inner = crate::store::open("sqlite::memory:").await.expect("store");
        inner
            .commit(StepCommit {
                links_upsert: vec![link("1", "a")],
                ..StepCommit::default()
            })
            .await
            .expect("seed");
        let staged = StagedStore::new(inner.clone());
        // A stage repoints lead 1 from record a to record b.
        staged.stage(StepCommit {
            links_upsert: vec![link("1", "b"), link("2", "c")],
            ..StepCommit::default()
        });
        let keys = |ls: Vec<Link>| -> Vec<(String, String)> {
            let mut out: Vec<_> = ls.into_iter().map(|l| (l.marketo_key, l.crm_key)).collect();
            out.sort();
            out
        };
        let by_crm = staged
            .links_by_crm_keys("leads", &["a".into(), "b".into()])
            .await
            .expect("read");
        assert_eq!(keys(by_crm), vec![("1".into(), "b".into())]);
        let by_marketo = staged
            .links_by_marketo_keys("leads", &["1".into(), "2".into()])
            .await
            .expect("read");
        assert_eq!(
            keys(by_marketo),
            vec![("1".into(), "b".into()), ("2".into(), "c".into())]
        );
        // Nothing reached the store yet; then all of it in one commit.
        let stored = inner
            .links_by_marketo_keys("leads", &["1".into(), "2".into()])
            .await
            .expect("read");
        assert_eq!(keys(stored), vec![("1".into(), "a".into())]);
        staged
            .commit_staged(StepCommit::default())
            .await
            .expect("commit");
        assert!(staged.is_empty());
        let stored = inner
            .links_by_marketo_keys("leads", &["1".into(), "2".into()])
            .await
            .expect("read");
        assert_eq!(
            keys(stored),
            vec![("1".into(), "b".into()), ("2".into(), "c".into())]
        );
    }
}
