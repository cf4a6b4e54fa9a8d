//! The simulator's controllable clock.
//!
//! Sim time is a start instant plus the time elapsed since start (read from `tokio::time`, so
//! paused-clock tests drive it) plus an offset that the admin API can advance.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, Utc};
use chrono_tz::America::Chicago;

/// A clock that reads `start + elapsed + offset`.
#[derive(Debug, Clone)]
pub struct SimClock {
    start: DateTime<Utc>,
    base: tokio::time::Instant,
    offset: ChronoDuration,
}

impl SimClock {
    /// Returns a clock that reads `start` now.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            start,
            base: tokio::time::Instant::now(),
            offset: ChronoDuration::zero(),
        }
    }

    /// Returns the current sim time.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        let elapsed = ChronoDuration::from_std(elapsed).unwrap_or(ChronoDuration::zero());
        self.start + elapsed + self.offset
    }

    /// Moves the clock forward by `by` (never backwards).
    pub fn advance(&mut self, by: std::time::Duration) {
        if let Ok(by) = ChronoDuration::from_std(by) {
            self.offset += by;
        }
    }

    /// Returns the instant the clock started from.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }
}

/// Returns the Marketo quota day (the calendar day in America/Chicago) of an instant.
pub fn quota_day(at: DateTime<Utc>) -> NaiveDate {
    let local = at.with_timezone(&Chicago);
    NaiveDate::from_ymd_opt(local.year(), local.month(), local.day()).unwrap_or(at.date_naive())
}

/// Formats an instant the way Marketo's REST and bulk APIs do (`2017-09-08T16:39:14Z`).
pub fn fmt_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a Marketo datetime (`Z`, `+0000`, `-08:00`, `Z+0000`, legacy `YYYY-MM-DD hh:mm:ss`, or a date).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let text = text
        .strip_suffix("+0000")
        .filter(|t| t.ends_with('Z'))
        .unwrap_or(text);
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Some(naive.and_utc());
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|d| d.and_utc());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_day_turns_at_chicago_midnight() {
        let before = parse_time("2024-01-10T05:59:59Z").unwrap();
        let after = parse_time("2024-01-10T06:00:00Z").unwrap();
        assert_eq!(
            quota_day(before),
            NaiveDate::from_ymd_opt(2024, 1, 9).unwrap()
        );
        assert_eq!(
            quota_day(after),
            NaiveDate::from_ymd_opt(2024, 1, 10).unwrap()
        );
    }

    #[test]
    fn parses_marketo_datetime_shapes() {
        let want = parse_time("2015-05-21T22:45:13Z").unwrap();
        assert_eq!(parse_time("2015-05-21T22:45:13Z+0000"), Some(want));
        assert_eq!(parse_time("2015-05-21T22:45:13+0000"), Some(want));
        assert_eq!(parse_time("2015-05-21T15:45:13-07:00"), Some(want));
        assert_eq!(parse_time("2015-05-21 22:45:13"), Some(want));
        assert_eq!(parse_time("nonsense"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_follows_tokio_time_and_offset() {
        let start = parse_time("2024-01-01T00:00:00Z").unwrap();
        let mut clock = SimClock::new(start);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        clock.advance(std::time::Duration::from_secs(50));
        assert_eq!(clock.now(), start + ChronoDuration::seconds(60));
    }
}
