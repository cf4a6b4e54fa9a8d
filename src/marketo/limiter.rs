//! The client's limiter: a sliding 20 s window, a concurrency cap, and daily counters keyed
//! by the Marketo day (midnight America/Chicago).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::America::Chicago;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::Error;

/// Length of Marketo's rate window.
pub const WINDOW: Duration = Duration::from_secs(20);

/// Today's counted usage, for persisting across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSnapshot {
    /// The Marketo day (America/Chicago) the counters belong to.
    pub day: NaiveDate,
    /// REST/bulk calls counted (identity calls excluded).
    pub calls: u64,
    /// Bulk-extract bytes counted.
    pub bulk_bytes: u64,
}

/// Returns the Marketo day (the date in America/Chicago) of an instant.
pub fn marketo_day(now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&Chicago).date_naive()
}

/// Returns the UTC instant at which the Marketo day after `now`'s begins.
pub fn next_day_turn(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = marketo_day(now).succ_opt().unwrap_or(NaiveDate::MAX);
    let midnight = tomorrow.and_hms_opt(0, 0, 0).unwrap_or_default();
    midnight
        .and_local_timezone(Chicago)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24))
}

type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// One limiter per client, shared by every clone and every task.
pub(crate) struct Limiter {
    calls_per_window: usize,
    window: Mutex<VecDeque<Instant>>,
    semaphore: Arc<Semaphore>,
    usage: Mutex<UsageSnapshot>,
    daily_budget: u64,
    bulk_budget: u64,
    wall: WallClock,
}

/// Held while a call is in flight; releases its concurrency slot on drop.
pub(crate) struct CallPermit {
    _permit: OwnedSemaphorePermit,
}

impl Limiter {
    pub(crate) fn new(calls_per_20s: u32, concurrency: usize, daily: u64, bulk: u64) -> Self {
        Self::with_wall_clock(calls_per_20s, concurrency, daily, bulk, Arc::new(Utc::now))
    }

    pub(crate) fn with_wall_clock(
        calls_per_20s: u32,
        concurrency: usize,
        daily: u64,
        bulk: u64,
        wall: WallClock,
    ) -> Self {
        let day = marketo_day(wall());
        Limiter {
            calls_per_window: calls_per_20s.max(1) as usize,
            window: Mutex::new(VecDeque::new()),
            semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
            usage: Mutex::new(UsageSnapshot {
                day,
                calls: 0,
                bulk_bytes: 0,
            }),
            daily_budget: daily,
            bulk_budget: bulk,
            wall,
        }
    }

    fn usage_now(&self) -> MutexGuard<'_, UsageSnapshot> {
        let today = marketo_day((self.wall)());
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if usage.day < today {
            *usage = UsageSnapshot {
                day: today,
                calls: 0,
                bulk_bytes: 0,
            };
        }
        usage
    }

    /// Returns today's counters (reset when the Marketo day has turned).
    pub(crate) fn snapshot(&self) -> UsageSnapshot {
        *self.usage_now()
    }

    /// Replaces the counters with persisted ones; a snapshot of an earlier day is ignored.
    pub(crate) fn restore(&self, snap: UsageSnapshot) {
        let mut usage = self.usage_now();
        if snap.day == usage.day {
            usage.calls = usage.calls.max(snap.calls);
            usage.bulk_bytes = usage.bulk_bytes.max(snap.bulk_bytes);
        }
    }

    /// Checks the daily budget, then waits for a concurrency slot and a window slot, and
    /// counts the call.
    pub(crate) async fn acquire(&self) -> Result<CallPermit, Error> {
        self.check_daily()?;
        let permit =
            self.semaphore
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Cancelled {
                    what: "limiter closed".into(),
                })?;
        self.take_window_slot().await;
        let mut usage = self.usage_now();
        if usage.calls >= self.daily_budget {
            return Err(Error::DailyBudgetSpent {
                day: usage.day,
                calls: usage.calls,
                budget: self.daily_budget,
            });
        }
        usage.calls += 1;
        Ok(CallPermit { _permit: permit })
    }

    /// Takes one more window slot and counts one more call for a request re-sent under the
    /// same concurrency permit (414 → `_method=GET`, token replay).
    pub(crate) async fn acquire_extra(&self) -> Result<(), Error> {
        self.check_daily()?;
        self.take_window_slot().await;
        self.usage_now().calls += 1;
        Ok(())
    }

    /// Removes one call from today's count (Marketo does not count 601/602/604/605/608/611).
    pub(crate) fn uncount(&self) {
        let mut usage = self.usage_now();
        usage.calls = usage.calls.saturating_sub(1);
    }

    fn check_daily(&self) -> Result<(), Error> {
        let usage = self.usage_now();
        if usage.calls >= self.daily_budget {
            return Err(Error::DailyBudgetSpent {
                day: usage.day,
                calls: usage.calls,
                budget: self.daily_budget,
            });
        }
        Ok(())
    }

    /// Fails when today's bulk bytes have reached the budget.
    pub(crate) fn check_bulk(&self) -> Result<(), Error> {
        let usage = self.usage_now();
        if usage.bulk_bytes >= self.bulk_budget {
            return Err(Error::BulkBudgetSpent {
                day: usage.day,
                bytes: usage.bulk_bytes,
                budget: self.bulk_budget,
            });
        }
        Ok(())
    }

    /// Adds exported bytes to today's bulk counter.
    pub(crate) fn add_bulk_bytes(&self, bytes: u64) {
        let mut usage = self.usage_now();
        usage.bulk_bytes = usage.bulk_bytes.saturating_add(bytes);
    }

    /// Marks the window as full for `wait` (Marketo said 606), so that no task of this client
    /// calls again before then.
    pub(crate) fn saturate_window(&self, wait: Duration) {
        let until = Instant::now() + wait;
        // An entry leaves the window 20 s after its timestamp.
        let stamp = until.checked_sub(WINDOW).unwrap_or_else(Instant::now);
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.clear();
        window.extend(std::iter::repeat_n(stamp, self.calls_per_window));
    }

    async fn take_window_slot(&self) {
        loop {
            let wait_until = {
                let now = Instant::now();
                let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(front) = window.front() {
                    if now.duration_since(*front) >= WINDOW {
                        window.pop_front();
                    } else {
                        break;
                    }
                }
                if window.len() < self.calls_per_window {
                    window.push_back(now);
                    return;
                }
                // The oldest call leaves the window at front + 20 s.
                window.front().map(|f| *f + WINDOW).unwrap_or(now)
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn many_tasks_never_exceed_the_window_or_the_concurrency() {
        let limiter = Arc::new(Limiter::new(7, 3, 1_000, 0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let (l, inf, max, st) = (
                limiter.clone(),
                in_flight.clone(),
                max_in_flight.clone(),
                starts.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _p = l.acquire().await.unwrap();
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                st.lock().unwrap().push(Instant::now());
                // Calls take between 0.1 and 4 s.
                tokio::time::sleep(Duration::from_millis(100 + (i * 397) % 3900)).await;
                inf.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(max_in_flight.load(Ordering::SeqCst) <= 3);
        assert_eq!(max_in_flight.load(Ordering::SeqCst), 3, "the cap is used");
        let mut starts = starts.lock().unwrap().clone();
        starts.sort();
        assert_eq!(starts.len(), 40);
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| t.duration_since(*s) < WINDOW)
                .count();
            assert!(in_window <= 7, "{in_window} calls within 20 s of call {i}");
        }
        // 40 calls at 7 per window need at least 5 full windows.
        assert!(Instant::now().duration_since(t0) >= Duration::from_secs(100));
        assert_eq!(limiter.snapshot().calls, 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_daily_budget_refuses_without_waiting() {
        let limiter = Limiter::new(100, 5, 2, 10);
        limiter.acquire().await.unwrap();
        limiter.acquire().await.unwrap();
        let err = limiter.acquire().await.err().unwrap();
        assert_eq!(
            err.disposition(),
            crate::marketo::error::Disposition::PauseUntilDayTurns
        );
        limiter.add_bulk_bytes(10);
        assert!(matches!(
            limiter.check_bulk(),
            Err(Error::BulkBudgetSpent { bytes: 10, .. })
        ));
    }

    #[test]
    fn counters_reset_when_the_chicago_day_turns_and_restore_keeps_the_larger() {
        // 05:59 UTC on 2026-11-24 is 23:59 in Chicago (CST, UTC-6) on 2026-11-23.
        let now = Arc::new(Mutex::new(
            "2026-11-24T05:59:00Z".parse::<DateTime<Utc>>().unwrap(),
        ));
        let clock = now.clone();
        let limiter =
            Limiter::with_wall_clock(100, 5, 100, 100, Arc::new(move || *clock.lock().unwrap()));
        let day = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(limiter.snapshot().day, day);
        limiter.restore(UsageSnapshot {
            day,
            calls: 42,
            bulk_bytes: 7,
        });
        assert_eq!(limiter.snapshot().calls, 42);
        // A snapshot from an older day is ignored.
        limiter.restore(UsageSnapshot {
            day: day.pred_opt().unwrap(),
            calls: 99,
            bulk_bytes: 99,
        });
        assert_eq!(limiter.snapshot().calls, 42);
        *now.lock().unwrap() = "2026-11-24T06:00:00Z".parse().unwrap();
        let snap = limiter.snapshot();
        assert_eq!(snap.day, day.succ_opt().unwrap());
        assert_eq!((snap.calls, snap.bulk_bytes), (0, 0));
    }

    #[test]
    fn next_day_turn_is_chicago_midnight() {
        let now: DateTime<Utc> = "2026-07-01T12:00:00Z".parse().unwrap();
        // CDT is UTC-5 in July.
        assert_eq!(
            next_day_turn(now),
            "2026-07-02T05:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
