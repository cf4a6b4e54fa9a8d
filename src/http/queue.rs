//! [`OnDemandQueue`]: the in-memory queue between the webhook receiver and the engine.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::webhook::{EnqueueError, Enqueued, WebhookLead, WebhookSink};
use crate::telemetry::events::WebhookQueueDepth;

/// The default number of leads the queue holds.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How many recently seen delivery ids are remembered after their lead left the queue.
const RECENT_DELIVERIES: usize = 4_096;

/// A bounded FIFO of leads to sync now, shared by the webhook receiver and the engine.
///
/// Duplicates collapse: a lead already waiting is not queued twice (the sync reads the lead's
/// current state when it runs, so one pending sync covers every event before it), and a
/// `deliveryId` seen among the last few thousand deliveries is a duplicate even after its lead
/// was taken, so Marketo's re-deliveries do not cause a second sync.
#[derive(Debug)]
pub struct OnDemandQueue {
    capacity: usize,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<WebhookLead>,
    queued_leads: HashSet<i64>,
    recent_order: VecDeque<String>,
    recent: HashSet<String>,
    closed: bool,
}

impl State {
    fn remember_delivery(&mut self, id: &str) {
        if self.recent.insert(id.to_owned()) {
            self.recent_order.push_back(id.to_owned());
            while self.recent_order.len() > RECENT_DELIVERIES {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }
}

impl Default for OnDemandQueue {
    fn default() -> Self {
        OnDemandQueue::new(DEFAULT_CAPACITY)
    }
}

impl OnDemandQueue {
    /// Returns an empty queue holding at most `capacity` leads (at least 1).
    pub fn new(capacity: usize) -> OnDemandQueue {
        OnDemandQueue {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the queue, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `lead` unless it is a duplicate (see the type's docs).
    ///
    /// # Errors
    ///
    /// Returns [`EnqueueError::Full`] at capacity and [`EnqueueError::Closed`] after
    /// [`OnDemandQueue::close`].
    pub fn push(&self, lead: WebhookLead) -> Result<Enqueued, EnqueueError> {
        let depth = {
            let mut state = self.lock();
            if state.closed {
                return Err(EnqueueError::Closed);
            }
            if let Some(id) = &lead.delivery_id
                && state.recent.contains(id)
            {
                return Ok(Enqueued::Duplicate);
            }
            if state.queued_leads.contains(&lead.lead_id) {
                if let Some(id) = &lead.delivery_id {
                    state.remember_delivery(id);
                }
                return Ok(Enqueued::Duplicate);
            }
            if state.queue.len() >= self.capacity {
                return Err(EnqueueError::Full {
                    capacity: self.capacity,
                });
            }
            if let Some(id) = &lead.delivery_id {
                state.remember_delivery(id);
            }
            state.queued_leads.insert(lead.lead_id);
            state.queue.push_back(lead);
            state.queue.len()
        };
        WebhookQueueDepth { depth }.emit();
        self.notify.notify_one();
        Ok(Enqueued::New)
    }

    /// Returns the oldest waiting lead without waiting, or `None` when the queue is empty.
    pub fn try_next(&self) -> Option<WebhookLead> {
        let (lead, depth) = {
            let mut state = self.lock();
            let lead = state.queue.pop_front()?;
            state.queued_leads.remove(&lead.lead_id);
            (lead, state.queue.len())
        };
        WebhookQueueDepth { depth }.emit();
        Some(lead)
    }

    /// Takes up to `max` of the oldest waiting leads without waiting (empty when none wait).
    pub fn take_batch(&self, max: usize) -> Vec<WebhookLead> {
        let (batch, depth) = {
            let mut state = self.lock();
            let n = max.min(state.queue.len());
            let batch: Vec<WebhookLead> = state.queue.drain(..n).collect();
            for lead in &batch {
                state.queued_leads.remove(&lead.lead_id);
            }
            (batch, state.queue.len())
        };
        if !batch.is_empty() {
            WebhookQueueDepth { depth }.emit();
        }
        batch
    }

    /// Waits for at least one lead, then up to `window` more while fewer than `max` wait (so
    /// that a burst of webhooks shares one Get Leads call of 300 ids), and takes up to `max`
    /// leads; returns an empty batch when `cancel` fires, or when the queue is closed and empty.
    pub async fn next_batch(
        &self,
        max: usize,
        window: std::time::Duration,
        cancel: &CancellationToken,
    ) -> Vec<WebhookLead> {
        let Some(first) = self.next(cancel).await else {
            return Vec::new();
        };
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let full = {
                let state = self.lock();
                state.closed || state.queue.len() + 1 >= max
            };
            if full {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut notified => {}
            }
        }
        let mut batch = vec![first];
        batch.extend(self.take_batch(max.saturating_sub(1)));
        batch
    }

    /// Waits for the next lead; returns `None` when `cancel` fires, or when the queue is closed
    /// and empty.
    pub async fn next(&self, cancel: &CancellationToken) -> Option<WebhookLead> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a push between the check and the wait is not lost.
            notified.as_mut().enable();
            if let Some(lead) = self.try_next() {
                return Some(lead);
            }
            if self.lock().closed {
                return None;
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut notified => {}
            }
        }
    }

    /// Returns how many leads are waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Returns whether no lead is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Stops accepting leads; waiting consumers drain what is left and then get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[async_trait]
impl WebhookSink for OnDemandQueue {
    async fn enqueue(&self, lead: WebhookLead) -> Result<Enqueued, EnqueueError> {
        self.push(lead)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;

    fn lead(id: i64, delivery: Option<&str>) -> WebhookLead {
        WebhookLead {
            lead_id: id,
            email: None,
            event: None,
            delivery_id: delivery.map(str::to_owned),
            received_at: Utc::now(),
        }
    }

    #[test]
    fn collapses_the_same_lead_while_queued() {
        let queue = OnDemandQueue::new(10);
        assert_eq!(queue.push(lead(1, None)), Ok(Enqueued::New));
        assert_eq!(queue.push(lead(1, None)), Ok(Enqueued::Duplicate));
        assert_eq!(queue.push(lead(2, None)), Ok(Enqueued::New));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.try_next().map(|l| l.lead_id), Some(1));
        // Taken, so a new event for lead 1 queues it again.
        assert_eq!(queue.push(lead(1, None)), Ok(Enqueued::New));
        assert_eq!(queue.try_next().map(|l| l.lead_id), Some(2));
        assert_eq!(queue.try_next().map(|l| l.lead_id), Some(1));
        assert_eq!(queue.try_next(), None);
    }

    #[test]
    fn collapses_a_redelivery_even_after_the_lead_was_taken() {
        let queue = OnDemandQueue::new(10);
        assert_eq!(queue.push(lead(7, Some("d-1"))), Ok(Enqueued::New));
        assert!(queue.try_next().is_some());
        assert_eq!(queue.push(lead(7, Some("d-1"))), Ok(Enqueued::Duplicate));
        assert_eq!(queue.push(lead(7, Some("d-2"))), Ok(Enqueued::New));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn forgets_old_deliveries_beyond_its_memory() {
        let queue = OnDemandQueue::new(RECENT_DELIVERIES + 10);
        for i in 0..=RECENT_DELIVERIES as i64 {
            let id = format!("d-{i}");
            assert_eq!(queue.push(lead(i + 1, Some(&id))), Ok(Enqueued::New));
        }
        while queue.try_next().is_some() {}
        // d-0 was pushed out of memory by the later ones; the newest is still remembered.
        assert_eq!(queue.push(lead(1, Some("d-0"))), Ok(Enqueued::New));
        let newest = format!("d-{RECENT_DELIVERIES}");
        assert_eq!(queue.push(lead(1, Some(&newest))), Ok(Enqueued::Duplicate));
    }

    #[test]
    fn refuses_when_full_or_closed() {
        let queue = OnDemandQueue::new(1);
        assert_eq!(queue.push(lead(1, None)), Ok(Enqueued::New));
        assert_eq!(
            queue.push(lead(2, None)),
            Err(EnqueueError::Full { capacity: 1 })
        );
        queue.close();
        assert_eq!(queue.push(lead(3, None)), Err(EnqueueError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn next_waits_for_a_push_and_stops_on_cancel() {
        let queue = Arc::new(OnDemandQueue::new(10));
        let cancel = CancellationToken::new();
        let consumer = {
            let queue = Arc::clone(&queue);
            let cancel = cancel.clone();
            tokio::spawn(async move { queue.next(&cancel).await.map(|l| l.lead_id) })
        };
        tokio::task::yield_now().await;
        assert!(!consumer.is_finished());
        queue.enqueue(lead(5, None)).await.expect("queued");
        assert_eq!(consumer.await.expect("join"), Some(5));

        let waiting = {
            let queue = Arc::clone(&queue);
            let cancel = cancel.clone();
            tokio::spawn(async move { queue.next(&cancel).await })
        };
        tokio::task::yield_now().await;
        cancel.cancel();
        assert_eq!(waiting.await.expect("join"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_its_window_for_more_leads() {
        let queue = Arc::new(OnDemandQueue::new(1_000));
        let cancel = CancellationToken::new();
        let window = std::time::Duration::from_millis(500);
        let t0 = tokio::time::Instant::now();
        let pusher = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                // One webhook every 10 ms: 100 arrive within the first batch's window.
                for id in 1..=200 {
                    queue.push(lead(id, None)).expect("queued");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
        };
        let first = queue.next_batch(300, window, &cancel).await;
        assert_eq!(tokio::time::Instant::now() - t0, window);
        assert!((49..=51).contains(&first.len()), "{}", first.len());
        pusher.await.expect("join");
        // A full batch does not wait.
        let t1 = tokio::time::Instant::now();
        let rest = queue.next_batch(100, window, &cancel).await;
        assert_eq!(rest.len(), 100);
        assert_eq!(tokio::time::Instant::now(), t1);
    }

    #[tokio::test]
    async fn batches_take_the_oldest_up_to_the_limit() {
        let queue = OnDemandQueue::new(1_000);
        let cancel = CancellationToken::new();
        for id in 1..=700 {
            queue.push(lead(id, None)).expect("queued");
        }
        let first = queue
            .next_batch(300, std::time::Duration::ZERO, &cancel)
            .await;
        assert_eq!(first.len(), 300);
        assert_eq!(first[0].lead_id, 1);
        assert_eq!(first[299].lead_id, 300);
        // Taken leads queue again on a new event.
        assert_eq!(queue.push(lead(1, None)), Ok(Enqueued::New));
        assert_eq!(
            queue
                .next_batch(300, std::time::Duration::ZERO, &cancel)
                .await
                .len(),
            300
        );
        let last: Vec<i64> = queue
            .next_batch(300, std::time::Duration::ZERO, &cancel)
            .await
            .iter()
            .map(|l| l.lead_id)
            .collect();
        assert_eq!(last.len(), 101);
        assert_eq!(last.last(), Some(&1));
        queue.close();
        assert!(
            queue
                .next_batch(300, std::time::Duration::ZERO, &cancel)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn close_drains_then_ends() {
        let queue = OnDemandQueue::new(10);
        let cancel = CancellationToken::new();
        queue.push(lead(1, None)).expect("queued");
        queue.close();
        assert_eq!(queue.next(&cancel).await.map(|l| l.lead_id), Some(1));
        assert_eq!(queue.next(&cancel).await, None);
    }
}
