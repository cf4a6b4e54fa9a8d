//! API limits: the 100 calls / 20 s sliding window (606), 10 in flight (615), the daily quota
//! (607, the day turns at midnight America/Chicago) and the bulk export byte quota.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};

use super::clock::quota_day;

/// Calls allowed per window.
pub const WINDOW_CALLS: usize = 100;
/// Window length in seconds.
pub const WINDOW_SECS: i64 = 20;
/// Calls allowed in flight.
pub const MAX_IN_FLIGHT: usize = 10;

/// Limit counters.
#[derive(Debug, Default)]
pub struct Limits {
    window: VecDeque<DateTime<Utc>>,
    /// Counted calls per quota day.
    pub daily: BTreeMap<NaiveDate, u64>,
    /// Counted calls per quota day and route path.
    pub daily_by_api: BTreeMap<NaiveDate, BTreeMap<String, u64>>,
    /// Error codes per quota day.
    pub errors: BTreeMap<NaiveDate, BTreeMap<String, u64>>,
    /// Export bytes per quota day.
    pub export_bytes: BTreeMap<NaiveDate, u64>,
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// 606.
    Rate,
    /// 607.
    Daily,
}

impl Limits {
    /// Checks the daily quota and the window before a call.
    ///
    /// # Errors
    ///
    /// Returns which limit refuses the call.
    pub fn check(&mut self, now: DateTime<Utc>, daily_quota: u64) -> Result<(), LimitError> {
        if self.daily.get(&quota_day(now)).copied().unwrap_or(0) >= daily_quota {
            return Err(LimitError::Daily);
        }
        let horizon = now - ChronoDuration::seconds(WINDOW_SECS);
        while self.window.front().is_some_and(|t| *t <= horizon) {
            self.window.pop_front();
        }
        if self.window.len() >= WINDOW_CALLS {
            return Err(LimitError::Rate);
        }
        Ok(())
    }

    /// Counts a call answered by `path` (window and daily quota).
    pub fn count(&mut self, now: DateTime<Utc>, path: &str, in_window: bool) {
        let day = quota_day(now);
        *self.daily.entry(day).or_default() += 1;
        *self
            .daily_by_api
            .entry(day)
            .or_default()
            .entry(path.to_string())
            .or_default() += 1;
        if in_window {
            self.window.push_back(now);
        }
    }

    /// Records an error code for the error statistics.
    pub fn record_error(&mut self, now: DateTime<Utc>, code: &str) {
        *self
            .errors
            .entry(quota_day(now))
            .or_default()
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Returns the counted calls of the quota day containing `now`.
    pub fn used_today(&self, now: DateTime<Utc>) -> u64 {
        self.daily.get(&quota_day(now)).copied().unwrap_or(0)
    }

    /// Returns export bytes used in the quota day containing `now`.
    pub fn export_bytes_today(&self, now: DateTime<Utc>) -> u64 {
        self.export_bytes.get(&quota_day(now)).copied().unwrap_or(0)
    }

    /// Adds export bytes to the quota day containing `at`.
    pub fn add_export_bytes(&mut self, at: DateTime<Utc>, bytes: u64) {
        *self.export_bytes.entry(quota_day(at)).or_default() += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides_and_quota_resets_at_chicago_midnight() {
        let mut limits = Limits::default();
        let t0 = crate::sim::clock::parse_time("2024-01-10T05:00:00Z").unwrap();
        for _ in 0..WINDOW_CALLS {
            limits.check(t0, 1000).unwrap();
            limits.count(t0, "/x", true);
        }
        assert_eq!(limits.check(t0, 1000), Err(LimitError::Rate));
        assert_eq!(limits.check(t0 + ChronoDuration::seconds(20), 1000), Ok(()));
        assert_eq!(
            limits.check(t0 + ChronoDuration::seconds(20), 100),
            Err(LimitError::Daily)
        );
        assert_eq!(limits.check(t0 + ChronoDuration::hours(1), 100), Ok(()));
    }
}
