//! The gather stage: a CRM object's change feed from its stored cursor, the records of due
//! ledger retries, and the Marketo activity queues (read through one paging token each).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::crm::{Change, ChangeKind, Cursor, FeedNeeds};
use crate::engine::objects::deletions;
use crate::engine::{Context, EngineError};
use crate::mapping::Plan;
use crate::marketo::activities::{Activity, ActivityFilter};
use crate::model::Side;
use crate::store::{Direction, ErrorFilter, ErrorStatus, SyncError, Watermark};

/// The watermark queue of the create/update steps on a CRM object's change feed.
pub const UPSERTS_QUEUE: &str = "upserts";
/// The watermark queue of the deletions step on a CRM object's change feed.
pub const DELETES_QUEUE: &str = "deletes";

/// Changes read per call of the CRM change feed.
const CRM_PAGE: usize = 500;

/// The CRM changes read for one step, and the watermark that commits them.
pub(crate) struct Gathered {
    /// The last change per record id, oldest first.
    pub changes: Vec<Change>,
    /// The watermark to commit once the step's writes are applied (none when nothing was read).
    pub watermark: Option<Watermark>,
}

/// Returns the changes of a CRM object after the stored cursor of `queue`, read for a step that
/// acts on the changes `needs` names (the adapter may skip reading the other kinds).
///
/// # Errors
///
/// A CRM or store failure.
pub(crate) async fn gather_crm(
    ctx: &Context,
    object: &str,
    crm_object: &str,
    queue: &str,
    needs: FeedNeeds,
    cancel: &CancellationToken,
) -> Result<Gathered, EngineError> {
    let stored = ctx.store.watermark(Side::Crm, object, queue).await?;
    let mut cursor: Option<Cursor> = stored.as_ref().and_then(|w| w.cursor.clone()).map(Cursor);
    let mut latest: BTreeMap<String, Change> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut high = stored.as_ref().map(|w| w.at);
    let mut read_any = false;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .crm
            .changes_for(crm_object, cursor.as_ref(), CRM_PAGE, needs)
            .await?;
        for change in page.changes {
            read_any = true;
            high = Some(high.map_or(change.modified_at, |h| h.max(change.modified_at)));
            if !latest.contains_key(&change.id) {
                order.push(change.id.clone());
            }
            latest.insert(change.id.clone(), change);
        }
        let moved = cursor.as_ref() != Some(&page.next);
        cursor = Some(page.next);
        if !page.more || !moved {
            break;
        }
    }
    let changes = order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect();
    let watermark = match (read_any, cursor, high) {
        (true, Some(c), Some(at)) => Some(Watermark {
            system: Side::Crm,
            object: object.to_owned(),
            queue: queue.to_owned(),
            at,
            tie: None,
            cursor: Some(c.0),
        }),
        _ => None,
    };
    Ok(Gathered { changes, watermark })
}

/// Returns the open ledger entries of `object` (both directions).
pub(crate) async fn open_errors(
    ctx: &Context,
    object: &str,
) -> Result<Vec<SyncError>, EngineError> {
    let filter = ErrorFilter {
        status: Some(ErrorStatus::Open),
        object: Some(object.to_owned()),
        limit: 1000,
    };
    Ok(ctx.store.list_errors(&filter).await?)
}

/// Returns the open errors of `object` in `direction` that are due for a retry now.
///
/// # Errors
///
/// A store failure.
pub(crate) async fn due_errors(
    ctx: &Context,
    object: &str,
    direction: Direction,
) -> Result<Vec<SyncError>, EngineError> {
    let now = ctx.clock.now();
    Ok(open_errors(ctx, object)
        .await?
        .into_iter()
        .filter(|e| e.direction == direction)
        .filter(|e| e.next_retry_at.is_some_and(|t| t <= now))
        .collect())
}

/// Adds the CRM records of due retryable errors to `gathered` (when not already there).
///
/// # Errors
///
/// A CRM or store failure.
pub(crate) async fn add_retries(
    ctx: &Context,
    object: &str,
    crm_object: &str,
    gathered: &mut Gathered,
    previous: &mut BTreeMap<String, SyncError>,
) -> Result<(), EngineError> {
    let now = ctx.clock.now();
    let mut due: BTreeSet<String> = BTreeSet::new();
    for e in open_errors(ctx, object).await? {
        // Refused deletes are retried by the deletions step.
        if e.direction != Direction::CrmToMarketo
            || e.record_key.starts_with(deletions::DELETE_PREFIX)
        {
            continue;
        }
        if e.next_retry_at.is_some_and(|t| t <= now) {
            due.insert(e.record_key.clone());
        }
        previous.insert(e.record_key.clone(), e);
    }
    let have: BTreeSet<String> = gathered.changes.iter().map(|c| c.id.clone()).collect();
    let ids: Vec<String> = due.into_iter().filter(|k| !have.contains(k)).collect();
    if ids.is_empty() {
        return Ok(());
    }
    for record in ctx.crm.get(crm_object, &ids).await? {
        gathered.changes.push(Change {
            id: record.id,
            modified_at: record.modified_at,
            kind: ChangeKind::Upserted {
                fields: record.fields,
            },
        });
    }
    Ok(())
}

/// One read of an activity queue.
pub(crate) struct QueueRead {
    /// The activities read, by `marketoGUID` (a re-read page adds nothing twice).
    pub activities: BTreeMap<String, Activity>,
    /// The queue's next watermark (the paging token where the read ended), which the caller
    /// commits with what it wrote.
    pub watermark: Watermark,
    /// What `stop` answered when it ended the read before the end of the feed.
    pub stopped: Option<u64>,
    /// The date of the first activity read.
    pub first: Option<DateTime<Utc>>,
}

/// Reads one activity queue (activities of `type_id`) from its stored paging token (created
/// from the watermark's time when the queue has none, e.g. after a bulk export; from the
/// object's low watermark on its first read) to the end of the feed, or until `stop`, asked
/// after each page with (activities read, first date, latest date), answers something.
pub(crate) async fn read_activity_queue(
    ctx: &Context,
    object: &str,
    queue: &str,
    type_id: i64,
    stop: &mut (dyn FnMut(u64, DateTime<Utc>, DateTime<Utc>) -> Option<u64> + Send),
    cancel: &CancellationToken,
) -> Result<QueueRead, EngineError> {
    let stored = ctx.store.watermark(Side::Marketo, object, queue).await?;
    let since = stored
        .as_ref()
        .map_or_else(|| ctx.settings.bootstrap.low_watermark(object), |w| w.at);
    let mut token = match stored
        .as_ref()
        .and_then(|w| w.cursor.as_ref())
        .and_then(|c| c.as_str())
    {
        Some(t) => t.to_owned(),
        None => ctx.marketo.paging_token(since).await?,
    };
    let mut high = since;
    let mut first: Option<DateTime<Utc>> = None;
    let mut activities: BTreeMap<String, Activity> = BTreeMap::new();
    let mut read = 0u64;
    let mut stopped = None;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let page = ctx
            .marketo
            .get_activities(&token, &[type_id], &ActivityFilter::default())
            .await?;
        let n = page.records.len();
        for a in page.records {
            high = high.max(a.activity_date);
            first = Some(first.map_or(a.activity_date, |f| f.min(a.activity_date)));
            read += 1;
            if let Some(k) = a.key() {
                activities.insert(k, a);
            }
        }
        if let Some(t) = page.next_page_token {
            token = t;
        }
        if !page.more_result || n == 0 {
            break;
        }
        if let Some(f) = first
            && let Some(answer) = stop(read, f, high)
        {
            stopped = Some(answer);
            break;
        }
    }
    Ok(QueueRead {
        activities,
        watermark: Watermark {
            system: Side::Marketo,
            object: object.to_owned(),
            queue: queue.to_owned(),
            at: high,
            tie: None,
            cursor: Some(json!(token)),
        },
        stopped,
        first,
    })
}

impl Gathered {
    /// Returns the created and updated records (tombstones are the deletions step's).
    pub(crate) fn upserts(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| matches!(c.kind, ChangeKind::Upserted { .. }))
            .collect()
    }
}

/// What a step reads from the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The object's change feed from its stored cursor, with the due ledger retries (a cycle).
    Feed,
    /// One record by its CRM id (`sync --record`, `POST /sync/crm/{object}/{id}`): read by id,
    /// alone (no due retry, no drift read joins it), and no watermark moves, so the next cycle
    /// still reads the feed's copy of it (and finds it agreed).
    Record {
        /// The `sync.objects` name of the record's mapping.
        object: &'a str,
        /// The record's CRM id.
        id: &'a str,
    },
}

impl Scope<'_> {
    /// Returns true for a cycle's scope (the feed and everything a cycle also reads).
    pub fn is_feed(&self) -> bool {
        matches!(self, Scope::Feed)
    }

    /// Returns true when the scope covers the object `object` (every object for the feed).
    pub fn covers(&self, object: &str) -> bool {
        match self {
            Scope::Feed => true,
            Scope::Record { object: o, .. } => *o == object,
        }
    }
}

/// Returns the changes of `plan`'s CRM object in `scope` (see [`crm_with_retries`] for the
/// feed; one record read by id otherwise, or nothing when the CRM has no live record of that
/// id), and its open ledger entries of the push direction by record key.
///
/// # Errors
///
/// A CRM or store failure, or cancellation.
pub(crate) async fn crm_in_scope(
    ctx: &Context,
    plan: &Plan,
    scope: Scope<'_>,
    cancel: &CancellationToken,
) -> Result<(Gathered, BTreeMap<String, SyncError>), EngineError> {
    let Scope::Record { id, .. } = scope else {
        return crm_with_retries(ctx, plan, cancel).await;
    };
    let mut previous = BTreeMap::new();
    for e in open_errors(ctx, &plan.object).await? {
        if e.direction == Direction::CrmToMarketo
            && !e.record_key.starts_with(deletions::DELETE_PREFIX)
        {
            previous.insert(e.record_key.clone(), e);
        }
    }
    let changes = ctx
        .crm
        .get(&plan.crm_object, &[id.to_owned()])
        .await?
        .into_iter()
        .map(|record| Change {
            id: record.id,
            modified_at: record.modified_at,
            kind: ChangeKind::Upserted {
                fields: record.fields,
            },
        })
        .collect();
    let gathered = Gathered {
        changes,
        watermark: None,
    };
    Ok((gathered, previous))
}

/// Returns the changes of `plan`'s CRM object on the create/update queue, with the records of
/// its due ledger retries added, and its open ledger entries by record key.
///
/// # Errors
///
/// A CRM or store failure, or cancellation.
pub(crate) async fn crm_with_retries(
    ctx: &Context,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Result<(Gathered, BTreeMap<String, SyncError>), EngineError> {
    let (object, crm_object) = (plan.object.as_str(), plan.crm_object.as_str());
    let mut gathered = gather_crm(
        ctx,
        object,
        crm_object,
        UPSERTS_QUEUE,
        FeedNeeds::Upserts,
        cancel,
    )
    .await?;
    let mut previous = BTreeMap::new();
    add_retries(ctx, object, crm_object, &mut gathered, &mut previous).await?;
    Ok((gathered, previous))
}
