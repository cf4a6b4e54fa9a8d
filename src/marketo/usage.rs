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

#[cfg(test)]
mod tests {
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{method, path};

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
