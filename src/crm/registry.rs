//! The one place where CRM adapters are registered by name.

use std::sync::Arc;

use secrecy::SecretString;

use super::{Crm, CrmError};

/// The names of the registered adapters.
pub const ADAPTERS: &[&str] = &["sql"];

/// Returns a connected adapter built from its registered name, its URL and its options.
///
/// # Errors
/// [`CrmError::UnknownAdapter`] (listing the known names), invalid options, a configured name
/// missing from the CRM's catalog, or a connection failure.
pub async fn build(
    adapter: &str,
    url: &SecretString,
    options: &serde_json::Value,
) -> Result<Arc<dyn Crm>, CrmError> {
    match adapter {
        "sql" => {
            let options = super::sql::SqlOptions::from_json(options)?;
            Ok(Arc::new(super::sql::SqlCrm::connect(url, options).await?))
        }
        other => Err(CrmError::UnknownAdapter {
            name: other.to_owned(),
            known: ADAPTERS.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_adapters_are_named_with_the_known_ones() {
        let url = SecretString::from("x://");
        let err = build("salesforce", &url, &serde_json::json!({}))
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
}
