//! API usage and error statistics (`/rest/v1/stats/...`).

use serde::Deserialize;

use super::Client;
use super::error::Error;
use super::transport::Call;

/// Calls by one API user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCount {
    /// The API user.
    pub user_id: String,
    /// Calls made.
    #[serde(default)]
    pub count: u64,
}

/// One day of API usage across all integrations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageDay {
    /// The day.
    pub date: String,
    /// Calls counted.
    #[serde(default)]
    pub total: u64,
    /// Calls by user.
    #[serde(default)]
    pub users: Vec<UserCount>,
}

/// Errors by code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCount {
    /// The Marketo code.
    #[serde(deserialize_with = "super::model::code_as_string")]
    pub error_code: String,
    /// How many.
    #[serde(default)]
    pub count: u64,
}

/// One day of API errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorsDay {
    /// The day.
    pub date: String,
    /// Errors counted.
    #[serde(default)]
    pub total: u64,
    /// Errors by code.
    #[serde(default)]
    pub errors: Vec<ErrorCount>,
}

impl Client {
    /// Reads today's API usage of the whole subscription (`GET /rest/v1/stats/usage.json`).
    ///
    /// Returns the day's totals (the quota governor compares them with the daily quota).
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn usage_today(&self) -> Result<Vec<UsageDay>, Error> {
        Ok(self
            .call::<UsageDay>(&Call::get("/rest/v1/stats/usage.json"))
            .await?
            .records())
    }

    /// Reads the last 7 days of API usage (`GET /rest/v1/stats/usage/last7days.json`).
    ///
    /// Returns one entry per day.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn usage_last_7_days(&self) -> Result<Vec<UsageDay>, Error> {
        let call = Call::get("/rest/v1/stats/usage/last7days.json");
        Ok(self.call::<UsageDay>(&call).await?.records())
    }

    /// Reads today's API errors (`GET /rest/v1/stats/errors.json`).
    ///
    /// Returns the day's error counts.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn errors_today(&self) -> Result<Vec<ErrorsDay>, Error> {
        Ok(self
            .call::<ErrorsDay>(&Call::get("/rest/v1/stats/errors.json"))
            .await?
            .records())
    }

    /// Reads the last 7 days of API errors (`GET /rest/v1/stats/errors/last7days.json`).
    ///
    /// Returns one entry per day.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn errors_last_7_days(&self) -> Result<Vec<ErrorsDay>, Error> {
        let call = Call::get("/rest/v1/stats/errors/last7days.json");
        Ok(self.call::<ErrorsDay>(&call).await?.records())
    }
}

/// How often the shared quota is read at most (`/rest/v1/stats/usage.json`).
pub const QUOTA_REFRESH: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How the service shares the instance's daily quota with the other integrations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaPolicy {
    /// The service's own daily call budget (`marketo.daily_call_budget`).
    pub daily_budget: u64,
    /// The instance's daily quota; 0 turns the usage reads off.
    pub instance_quota: u64,
    /// The share of what is left of the instance's quota the service may spend.
    pub share: f64,
    /// The share of the day's budget on-demand work may spend.
    pub on_demand_share: f64,
}

/// What the governor allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaVerdict {
    /// Calls may be made.
    Allowed,
    /// The day's budget is spent (the service's own, or its share of the instance's).
    Spent {
        /// Calls the service made today.
        used: u64,
        /// The day's budget.
        budget: u64,
    },
    /// The on-demand share is spent; the next poll carries on-demand records.
    OnDemandSpent {
        /// On-demand calls made today.
        used: u64,
        /// The on-demand budget.
        budget: u64,
    },
}

/// Keeps the service within its share of the instance's daily quota, read from
/// `/rest/v1/stats/usage.json` at most once per [`QUOTA_REFRESH`], and on-demand work within
/// its part of that budget.
///
/// After a read at which the instance had spent `U` of its quota `Q` and the service `O`, the
/// day's budget is `min(daily_budget, O + share × (Q − U))`. The on-demand budget is
/// `on_demand_share` of that; on-demand calls are counted in memory per Marketo day.
#[derive(Debug)]
pub struct QuotaGovernor {
    policy: QuotaPolicy,
    state: std::sync::Mutex<GovernorState>,
}

#[derive(Debug, Default)]
struct GovernorState {
    day: Option<chrono::NaiveDate>,
    read_at: Option<chrono::DateTime<chrono::Utc>>,
    allowance: Option<u64>,
    on_demand_calls: u64,
}

impl QuotaGovernor {
    /// Returns a governor that has read nothing yet.
    pub fn new(policy: QuotaPolicy) -> QuotaGovernor {
        QuotaGovernor {
            policy,
            state: std::sync::Mutex::new(GovernorState::default()),
        }
    }

    fn lock(&self, now: chrono::DateTime<chrono::Utc>) -> std::sync::MutexGuard<'_, GovernorState> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let today = super::limiter::marketo_day(now);
        if state.day != Some(today) {
            *state = GovernorState {
                day: Some(today),
                ..GovernorState::default()
            };
        }
        state
    }

    /// Returns whether a usage read is due at `now` (never read today, or an hour has passed).
    pub fn read_due(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.policy.instance_quota > 0
            && self
                .lock(now)
                .read_at
                .is_none_or(|at| now - at >= QUOTA_REFRESH)
    }

    /// Reads the instance's usage when a read is due and updates the day's budget; `own_calls`
    /// are the service's calls of today before the read. A failed read keeps the last budget
    /// and is not retried before the hour is over.
    ///
    /// # Errors
    ///
    /// Returns the read's call-level error.
    pub async fn refresh(
        &self,
        client: &Client,
        own_calls: u64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        if !self.read_due(now) {
            return Ok(());
        }
        self.lock(now).read_at = Some(now);
        let days = client.usage_today().await?;
        self.record_usage(&days, own_calls, now);
        Ok(())
    }

    /// Sets the day's budget from a usage reading (the largest day total in `days`).
    pub fn record_usage(
        &self,
        days: &[UsageDay],
        own_calls: u64,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let used = days.iter().map(|d| d.total).max().unwrap_or(0);
        let left = self
            .policy
            .instance_quota
            .saturating_sub(used.max(own_calls));
        // Truncating is the conservative rounding of a share of calls.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let share = (left as f64 * self.policy.share).floor() as u64;
        let mut state = self.lock(now);
        state.read_at = Some(now);
        state.allowance = Some(own_calls.saturating_add(share));
    }

    /// Returns the day's budget: the service's own (0 means none), or less after a usage read.
    pub fn budget(&self, now: chrono::DateTime<chrono::Utc>) -> u64 {
        let own = match self.policy.daily_budget {
            0 => u64::MAX,
            b => b,
        };
        let allowance = self.lock(now).allowance;
        allowance.map_or(own, |a| a.min(own))
    }

    /// Returns the part of the day's budget on-demand work may spend.
    pub fn on_demand_budget(&self, now: chrono::DateTime<chrono::Utc>) -> u64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let part = (self.budget(now) as f64 * self.policy.on_demand_share).floor() as u64;
        part
    }

    /// Returns what is allowed now, given the service's `used` calls of today; with
    /// `on_demand`, the on-demand budget is checked too.
    pub fn verdict(
        &self,
        used: u64,
        on_demand: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> QuotaVerdict {
        let budget = self.budget(now);
        if used >= budget {
            return QuotaVerdict::Spent { used, budget };
        }
        if on_demand {
            let spent = self.lock(now).on_demand_calls;
            let od_budget = self.on_demand_budget(now);
            if spent >= od_budget {
                return QuotaVerdict::OnDemandSpent {
                    used: spent,
                    budget: od_budget,
                };
            }
        }
        QuotaVerdict::Allowed
    }

    /// Counts `calls` made by on-demand work today.
    pub fn add_on_demand(&self, calls: u64, now: chrono::DateTime<chrono::Utc>) {
        let mut state = self.lock(now);
        state.on_demand_calls = state.on_demand_calls.saturating_add(calls);
    }

    /// Returns the on-demand calls counted today.
    pub fn on_demand_calls(&self, now: chrono::DateTime<chrono::Utc>) -> u64 {
        self.lock(now).on_demand_calls
    }
}

#[cfg(test)]
mod tests {
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{method, path};

    fn policy() -> super::QuotaPolicy {
        super::QuotaPolicy {
            daily_budget: 10_000,
            instance_quota: 50_000,
            share: 0.5,
            on_demand_share: 0.2,
        }
    }

    fn day(total: u64) -> super::UsageDay {
        super::UsageDay {
            date: "2026-11-24".into(),
            total,
            users: Vec::new(),
        }
    }

    #[test]
    fn the_budget_is_the_share_of_what_the_instance_has_left() {
        let now: chrono::DateTime<chrono::Utc> = "2026-11-24T15:00:00Z".parse().unwrap();
        let g = super::QuotaGovernor::new(policy());
        assert_eq!(g.budget(now), 10_000, "before any read, the own budget");
        // Others spent 45,000 of 50,000; the service 1,000 of it: 4,000 left, half is ours.
        g.record_usage(&[day(46_000)], 1_000, now);
        assert_eq!(g.budget(now), 3_000);
        assert_eq!(g.on_demand_budget(now), 600);
        assert_eq!(
            g.verdict(3_000, false, now),
            super::QuotaVerdict::Spent {
                used: 3_000,
                budget: 3_000
            }
        );
        // A quiet instance leaves the service's own budget in force.
        g.record_usage(&[day(100)], 100, now);
        assert_eq!(g.budget(now), 10_000);
        // No own budget (0): only the instance's share limits.
        let unlimited = super::QuotaGovernor::new(super::QuotaPolicy {
            daily_budget: 0,
            ..policy()
        });
        assert_eq!(
            unlimited.verdict(1_000_000, true, now),
            super::QuotaVerdict::Allowed
        );
        unlimited.record_usage(&[day(46_000)], 1_000, now);
        assert_eq!(unlimited.budget(now), 3_000);
    }

    #[test]
    fn on_demand_stops_at_its_share_and_the_day_turn_resets_it() {
        let now: chrono::DateTime<chrono::Utc> = "2026-11-24T15:00:00Z".parse().unwrap();
        let g = super::QuotaGovernor::new(policy());
        assert_eq!(g.verdict(10, true, now), super::QuotaVerdict::Allowed);
        g.add_on_demand(2_000, now);
        assert_eq!(
            g.verdict(10, true, now),
            super::QuotaVerdict::OnDemandSpent {
                used: 2_000,
                budget: 2_000
            }
        );
        assert_eq!(g.verdict(10, false, now), super::QuotaVerdict::Allowed);
        let tomorrow = now + chrono::TimeDelta::days(1);
        assert_eq!(g.verdict(10, true, tomorrow), super::QuotaVerdict::Allowed);
    }

    #[tokio::test]
    async fn usage_is_read_at_most_once_an_hour() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/stats/usage.json"))
            .respond_with(ok(json!([{"date": "2026-11-24", "total": 49_000}])))
            .expect(2)
            .mount(&server)
            .await;
        let t0: chrono::DateTime<chrono::Utc> = "2026-11-24T15:00:00Z".parse().unwrap();
        let g = super::QuotaGovernor::new(policy());
        for minutes in [0, 1, 30, 59] {
            let at = t0 + chrono::TimeDelta::minutes(minutes);
            g.refresh(&client, 0, at).await.unwrap();
        }
        assert_eq!(g.budget(t0), 500);
        g.refresh(&client, 0, t0 + chrono::TimeDelta::minutes(60))
            .await
            .unwrap();
        server.verify().await;
    }

    #[tokio::test]
    async fn usage_and_errors_parse() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/stats/usage.json"))
            .respond_with(ok(json!([{"date": "2026-11-24", "total": 21,
                "users": [{"userId": "api@x.com", "count": 21}]}])))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/stats/errors.json"))
            .respond_with(ok(json!([{"date": "2026-11-24", "total": 3,
                "errors": [{"errorCode": "606", "count": 3}]}])))
            .mount(&server)
            .await;
        let u = client.usage_today().await.unwrap();
        assert_eq!(u[0].total, 21);
        assert_eq!(u[0].users[0].count, 21);
        let e = client.errors_today().await.unwrap();
        assert_eq!(e[0].errors[0].error_code, "606");
    }
}
