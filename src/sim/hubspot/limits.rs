//! HubSpot's API limits: requests per rolling 10 seconds and per day by account tier, and the
//! search endpoints' own per-second limit.
//!
//! Figures follow HubSpot's usage guidelines
//! (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>) and the
//! changelog "Increasing our API limits" (private apps: Free and Starter 100 / 10 s and 250,000
//! a day; Professional 190 / 10 s and 625,000; Enterprise 190 / 10 s and 1,000,000; the API
//! limit increase 250 / 10 s and 1,000,000), and the search guide (five requests per second per
//! account, no rate-limit headers on search answers). The daily count turns at midnight in the
//! portal's time zone.

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use chrono_tz::Tz;

/// An account tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Free or Starter.
    Starter,
    /// Professional.
    Professional,
    /// Enterprise.
    Enterprise,
    /// Any tier with the API limit increase.
    ApiAddOn,
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "free" | "starter" => Tier::Starter,
            "professional" | "pro" => Tier::Professional,
            "enterprise" => Tier::Enterprise,
            "api-add-on" | "addon" | "api_add_on" => Tier::ApiAddOn,
            other => {
                return Err(format!(
                    "unknown HubSpot tier {other:?} (expected free, starter, professional, enterprise or api-add-on)"
                ));
            }
        })
    }
}

/// The limits a portal enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Requests per rolling 10 seconds (search excluded).
    pub per_ten_seconds: usize,
    /// Requests per day.
    pub daily: u64,
    /// Search requests per second.
    pub search_per_second: usize,
    /// The portal's time zone (the daily count turns at its midnight).
    pub time_zone: Tz,
}

impl RateLimits {
    /// Returns the limits of a tier.
    pub fn for_tier(tier: Tier) -> Self {
        let (per_ten_seconds, daily) = match tier {
            Tier::Starter => (100, 250_000),
            Tier::Professional => (190, 625_000),
            Tier::Enterprise => (190, 1_000_000),
            Tier::ApiAddOn => (250, 1_000_000),
        };
        Self {
            per_ten_seconds,
            daily,
            search_per_second: 5,
            time_zone: chrono_tz::America::New_York,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::for_tier(Tier::Professional)
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The rolling 10-second window (`TEN_SECONDLY_ROLLING`).
    TenSecondly,
    /// The search endpoints' per-second limit (`SECONDLY`).
    SearchSecondly,
    /// The daily limit (`DAILY`).
    Daily,
}

impl Refusal {
    /// Returns the `policyName` of the 429 body.
    pub fn policy_name(self) -> &'static str {
        match self {
            Refusal::TenSecondly => "TEN_SECONDLY_ROLLING",
            Refusal::SearchSecondly => "SECONDLY",
            Refusal::Daily => "DAILY",
        }
    }

    /// Returns the `message` of the 429 body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TenSecondly => "You have reached your ten_secondly_rolling limit.",
            Refusal::SearchSecondly => "You have reached your secondly limit.",
            Refusal::Daily => "You have reached your daily limit.",
        }
    }
}

/// The counters behind the limits.
#[derive(Debug, Default)]
pub struct Usage {
    window: VecDeque<DateTime<Utc>>,
    search_window: VecDeque<DateTime<Utc>>,
    daily: BTreeMap<NaiveDate, u64>,
}

fn slide(window: &mut VecDeque<DateTime<Utc>>, horizon: DateTime<Utc>) {
    while window.front().is_some_and(|t| *t <= horizon) {
        window.pop_front();
    }
}

impl Usage {
    fn day(limits: &RateLimits, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&limits.time_zone).date_naive()
    }

    /// Checks whether a call may run now.
    ///
    /// # Errors
    ///
    /// Returns the limit that refuses it.
    pub fn check(
        &mut self,
        limits: &RateLimits,
        now: DateTime<Utc>,
        search: bool,
    ) -> Result<(), Refusal> {
        if self.used_today(limits, now) >= limits.daily {
            return Err(Refusal::Daily);
        }
        if search {
            slide(&mut self.search_window, now - ChronoDuration::seconds(1));
            if self.search_window.len() >= limits.search_per_second {
                return Err(Refusal::SearchSecondly);
            }
        } else {
            slide(&mut self.window, now - ChronoDuration::seconds(10));
            if self.window.len() >= limits.per_ten_seconds {
                return Err(Refusal::TenSecondly);
            }
        }
        Ok(())
    }

    /// Counts a call that ran.
    pub fn count(&mut self, limits: &RateLimits, now: DateTime<Utc>, search: bool) {
        *self.daily.entry(Self::day(limits, now)).or_default() += 1;
        if search {
            self.search_window.push_back(now);
        } else {
            self.window.push_back(now);
        }
    }

    /// Returns the calls counted in the day containing `now`.
    pub fn used_today(&self, limits: &RateLimits, now: DateTime<Utc>) -> u64 {
        self.daily
            .get(&Self::day(limits, now))
            .copied()
            .unwrap_or(0)
    }

    /// Spends the rest of today's calls.
    pub fn spend_today(&mut self, limits: &RateLimits, now: DateTime<Utc>) {
        let used = self.daily.entry(Self::day(limits, now)).or_default();
        *used = (*used).max(limits.daily);
    }

    /// Returns the `X-HubSpot-RateLimit-*` headers as of `now`.
    pub fn headers(&mut self, limits: &RateLimits, now: DateTime<Utc>) -> Vec<(String, String)> {
        slide(&mut self.window, now - ChronoDuration::seconds(10));
        let used = self.used_today(limits, now);
        vec![
            ("X-HubSpot-RateLimit-Daily".into(), limits.daily.to_string()),
            (
                "X-HubSpot-RateLimit-Daily-Remaining".into(),
                limits.daily.saturating_sub(used).to_string(),
            ),
            (
                "X-HubSpot-RateLimit-Interval-Milliseconds".into(),
                "10000".into(),
            ),
            (
                "X-HubSpot-RateLimit-Max".into(),
                limits.per_ten_seconds.to_string(),
            ),
            (
                "X-HubSpot-RateLimit-Remaining".into(),
                limits
                    .per_ten_seconds
                    .saturating_sub(self.window.len())
                    .to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rolls_and_search_has_its_own_limit() {
        let limits = RateLimits {
            per_ten_seconds: 3,
            daily: 5,
            ..RateLimits::default()
        };
        let t0 = super::super::model::parse_ts("2024-01-10T12:00:00Z").unwrap();
        let mut usage = Usage::default();
        for _ in 0..3 {
            usage.check(&limits, t0, false).unwrap();
            usage.count(&limits, t0, false);
        }
        assert_eq!(usage.check(&limits, t0, false), Err(Refusal::TenSecondly));
        assert_eq!(usage.check(&limits, t0, true), Ok(()));
        let later = t0 + ChronoDuration::seconds(10);
        assert_eq!(usage.check(&limits, later, false), Ok(()));
        usage.count(&limits, later, true);
        usage.count(&limits, later, true);
        assert_eq!(usage.check(&limits, later, false), Err(Refusal::Daily));
        // The day turns at midnight New York time (05:00 UTC in January).
        let next_day = super::super::model::parse_ts("2024-01-11T05:00:00Z").unwrap();
        assert_eq!(usage.check(&limits, next_day, false), Ok(()));
    }
}
