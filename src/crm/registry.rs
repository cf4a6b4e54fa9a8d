//! The one place where CRM adapters are registered.
//!
//! Each adapter is one folder under `src/crm/` plus one [`Registration`] in [`ADAPTERS`]: its
//! name, how it is reached, and how it is built from its typed options. The settings
//! validation, `validate` and the engine all go through this list, so a new adapter is not
//! named anywhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::SecretString;

use super::{Crm, CrmError};

/// What building an adapter returns.
pub type Built = Pin<Box<dyn Future<Output = Result<Arc<dyn Crm>, CrmError>> + Send>>;

/// How an adapter is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A connection URL (`crm.url`, `MKSYNC__CRM__URL` or `crm.url_file`) is required.
    Url,
    /// The adapter authenticates otherwise (a token from its own options' secret source);
    /// `crm.url` is optional and, when given, passed through.
    Own,
}

/// One registered adapter.
pub struct Registration {
    /// The name given in `crm.adapter`.
    pub name: &'static str,
    /// One line for error messages and docs.
    pub summary: &'static str,
    /// How the adapter is reached.
    pub connection: Connection,
    /// Connects and returns the adapter.
    pub build: fn(Option<SecretString>, serde_json::Value) -> Built,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

fn build_sql(url: Option<SecretString>, options: serde_json::Value) -> Built {
    Box::pin(async move {
        let url = url.ok_or_else(|| CrmError::Config {
            message: "the sql adapter needs a connection URL (`crm.url`)".to_owned(),
        })?;
        let options = super::sql::SqlOptions::from_json(&options)?;
        let crm: Arc<dyn Crm> = Arc::new(super::sql::SqlCrm::connect(&url, options).await?);
        Ok(crm)
    })
}

fn build_hubspot(url: Option<SecretString>, options: serde_json::Value) -> Built {
    Box::pin(async move {
        let options = super::hubspot::HubSpotOptions::from_json(&options)?;
        let crm = super::hubspot::HubSpotCrm::connect(url.as_ref(), options).await?;
        let crm: Arc<dyn Crm> = Arc::new(crm);
        Ok(crm)
    })
}

/// Every adapter this build knows.
pub const ADAPTERS: &[Registration] = &[
    Registration {
        name: "sql",
        summary: "a SQL database (PostgreSQL, MySQL/MariaDB, SQLite) opened directly",
        connection: Connection::Url,
        build: build_sql,
    },
    Registration {
        name: "hubspot",
        summary: "HubSpot's CRM over its REST API, with a private-app access token",
        connection: Connection::Own,
        build: build_hubspot,
    },
];

/// Returns the names of the registered adapters, comma-separated, for messages.
#[must_use]
pub fn known() -> String {
    ADAPTERS
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns the registration named `name`.
///
/// # Errors
/// [`CrmError::UnknownAdapter`], listing the known names.
pub fn find(name: &str) -> Result<&'static Registration, CrmError> {
    ADAPTERS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| CrmError::UnknownAdapter {
            name: name.to_owned(),
            known: known(),
        })
}

/// Returns a connected adapter built from its registered name, its URL (when it has one) and
/// its options.
///
/// # Errors
/// [`CrmError::UnknownAdapter`] (listing the known names), invalid options, a missing URL for an
/// adapter reached by URL, a configured name missing from the CRM's catalog, or a connection
/// failure.
pub async fn build(
    adapter: &str,
    url: Option<&SecretString>,
    options: &serde_json::Value,
) -> Result<Arc<dyn Crm>, CrmError> {
    let registration = find(adapter)?;
    (registration.build)(url.cloned(), options.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_adapters_are_named_with_the_known_ones() {
        let url = SecretString::from("x://");
        let err = build("salesforce", Some(&url), &serde_json::json!({}))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("salesforce") && text.contains("sql"),
            "{text}"
        );
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn a_url_adapter_without_a_url_is_refused_before_connecting() {
        let err = build("sql", None, &serde_json::json!({}))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("crm.url"), "{err}");
    }
}
