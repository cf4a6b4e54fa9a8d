//! The typed options of the HubSpot adapter (`[crm.options]` when `crm.adapter = "hubspot"`).
//!
//! The private-app access token is never part of these options: they only name where it is
//! read from (an environment variable or a file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::crm::CrmError;

/// The default API root.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// The environment variable read for the token when the options name none.
pub const DEFAULT_TOKEN_ENV: &str = "HUBSPOT_ACCESS_TOKEN";
/// The most results one search query can page through (HubSpot's documented cap).
pub const SEARCH_RESULT_CAP: usize = 10_000;

/// The options of the HubSpot adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotOptions {
    /// The API root (default `https://api.hubapi.com`); tests point it at a simulator.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The environment variable holding the private-app access token (default
    /// `HUBSPOT_ACCESS_TOKEN`); ignored when `token_file` is set.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding the private-app access token (surrounding white space is trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The account's API tier, which sets the requests allowed per 10 seconds and per day.
    #[serde(default)]
    pub tier: Tier,
    /// Overrides the tier's requests per 10 seconds.
    #[serde(default)]
    pub requests_per_10s: Option<u32>,
    /// Overrides the tier's daily request cap.
    #[serde(default)]
    pub daily_limit: Option<u64>,
    /// Search requests allowed per second (HubSpot's search endpoints have their own, lower
    /// limit; default 4).
    #[serde(default = "default_search_per_second")]
    pub search_per_second: u32,
    /// The overlap window re-read on every poll, in seconds (default 300).
    #[serde(default = "default_overlap")]
    pub overlap_seconds: u64,
    /// The most results one search query pages through before the feed narrows its time window
    /// (default and maximum 10,000, HubSpot's cap).
    #[serde(default = "default_search_cap")]
    pub search_result_cap: usize,
    /// How long a schema read from the Properties API is reused by `describe`, in seconds
    /// (default 60): the engine describes an object several times a cycle, and a property
    /// deleted in HubSpot is seen within this time.
    #[serde(default = "default_schema_ttl")]
    pub schema_ttl_seconds: u64,
    /// The time-out of one request, in seconds (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// How often a request failing with 429, 5xx or a time-out is retried (default 5).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// The objects, by the name the engine and mappings use.
    pub objects: BTreeMap<String, ObjectOptions>,
}

/// HubSpot API limit tiers of a private app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Free and Starter: 100 requests per 10 s, 250,000 per day.
    #[default]
    Starter,
    /// Professional: 190 requests per 10 s, 625,000 per day.
    Professional,
    /// Enterprise: 190 requests per 10 s, 1,000,000 per day.
    Enterprise,
    /// The API limit increase add-on: 250 requests per 10 s, 1,000,000 more per day
    /// (on top of Professional).
    ApiAddOn,
}

impl Tier {
    /// Returns the requests allowed per 10 seconds.
    pub fn requests_per_10s(self) -> u32 {
        match self {
            Tier::Starter => 100,
            Tier::Professional | Tier::Enterprise => 190,
            Tier::ApiAddOn => 250,
        }
    }

    /// Returns the requests allowed per day.
    pub fn daily_limit(self) -> u64 {
        match self {
            Tier::Starter => 250_000,
            Tier::Professional => 625_000,
            Tier::Enterprise => 1_000_000,
            Tier::ApiAddOn => 1_625_000,
        }
    }
}

/// What backs one configured object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectOptions {
    /// The HubSpot object type: `contacts`, `companies`, `deals`, a custom object's
    /// `2-...` id (or fully qualified name), `owners` (read-only), or `associations` (the
    /// labelled associations between `from` and `to`, one record per pair and label).
    pub object_type: String,
    /// The unique property holding the Marketo id (the default upsert key); required when
    /// `writable` is set on a record object.
    #[serde(default)]
    pub marketo_id_property: Option<String>,
    /// The properties read; every property the Properties API lists when absent.
    #[serde(default)]
    pub properties: Option<Vec<String>>,
    /// Writes are allowed (default false).
    #[serde(default)]
    pub writable: bool,
    /// Record objects only: a field (not a HubSpot property) holding the id of the contact the
    /// record is associated with: reads fill it from the record's contact associations, writes
    /// associate the record with the contact it names. A custom object mapped to a Marketo
    /// custom object sets it to `contact_id`, the field the engine links records to leads by.
    #[serde(default)]
    pub contact_field: Option<String>,
    /// `associations` only: the object type associations are read from (default `deals`).
    #[serde(default)]
    pub from: Option<String>,
    /// `associations` only: the object type associations point to (default `contacts`).
    #[serde(default)]
    pub to: Option<String>,
    /// `associations` only: the field holding the `from` record's id (default `opportunity_id`).
    #[serde(default)]
    pub from_field: Option<String>,
    /// `associations` only: the field holding the `to` record's id (default `contact_id`).
    #[serde(default)]
    pub to_field: Option<String>,
    /// `associations` only: the label that marks the primary record (`is_primary` is true for
    /// it); none by default.
    #[serde(default)]
    pub primary_label: Option<String>,
}

/// What kind of HubSpot resource backs an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A CRM object type with properties, search and batch endpoints.
    Records,
    /// The owners listing.
    Owners,
    /// Labelled associations from one object type to another.
    Associations {
        from: String,
        to: String,
        from_field: String,
        to_field: String,
        primary_label: Option<String>,
    },
}

impl ObjectOptions {
    /// Returns true for the object types HubSpot can merge (contacts, companies, deals and
    /// tickets, by name or by type id); custom objects cannot be merged.
    pub(crate) fn mergeable(&self) -> bool {
        matches!(
            self.object_type.as_str(),
            "contacts" | "companies" | "deals" | "tickets" | "0-1" | "0-2" | "0-3" | "0-5"
        )
    }

    pub(crate) fn kind(&self) -> Kind {
        match self.object_type.as_str() {
            "owners" => Kind::Owners,
            "associations" => Kind::Associations {
                from: self.from.clone().unwrap_or_else(|| "deals".to_owned()),
                to: self.to.clone().unwrap_or_else(|| "contacts".to_owned()),
                from_field: self
                    .from_field
                    .clone()
                    .unwrap_or_else(|| "opportunity_id".to_owned()),
                to_field: self
                    .to_field
                    .clone()
                    .unwrap_or_else(|| "contact_id".to_owned()),
                primary_label: self.primary_label.clone(),
            },
            _ => Kind::Records,
        }
    }
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_owned()
}
fn default_search_per_second() -> u32 {
    4
}
fn default_overlap() -> u64 {
    300
}
fn default_search_cap() -> usize {
    SEARCH_RESULT_CAP
}
fn default_schema_ttl() -> u64 {
    60
}
fn default_timeout() -> u64 {
    30
}
fn default_retries() -> usize {
    5
}

impl HubSpotOptions {
    /// Returns the options read from their JSON form, checked.
    ///
    /// # Errors
    /// [`CrmError::Config`] naming the bad key and why.
    pub fn from_json(json: &serde_json::Value) -> Result<HubSpotOptions, CrmError> {
        let options: HubSpotOptions =
            serde_json::from_value(json.clone()).map_err(|e| config(format!("{e}")))?;
        options.check()?;
        Ok(options)
    }

    fn check(&self) -> Result<(), CrmError> {
        url::Url::parse(&self.base_url)
            .map_err(|e| config(format!("base_url `{}` is not a URL: {e}", self.base_url)))?;
        if self.search_result_cap == 0 || self.search_result_cap > SEARCH_RESULT_CAP {
            return Err(config(format!(
                "search_result_cap must be between 1 and {SEARCH_RESULT_CAP}"
            )));
        }
        if self.search_per_second == 0 || self.requests_per_10s == Some(0) {
            return Err(config(
                "search_per_second and requests_per_10s must be at least 1".to_owned(),
            ));
        }
        if self.objects.is_empty() {
            return Err(config("objects: at least one object is needed".to_owned()));
        }
        for (name, o) in &self.objects {
            if o.object_type.trim().is_empty() {
                return Err(config(format!("objects.{name}.object_type is empty")));
            }
            let assoc_keys = o.from.is_some()
                || o.to.is_some()
                || o.from_field.is_some()
                || o.to_field.is_some()
                || o.primary_label.is_some();
            match o.kind() {
                Kind::Records => {
                    if assoc_keys {
                        return Err(config(format!(
                            "objects.{name}: from, to, from_field, to_field and primary_label \
                             only apply to object_type = \"associations\""
                        )));
                    }
                    if o.writable && o.marketo_id_property.is_none() {
                        return Err(config(format!(
                            "objects.{name}: a writable object needs marketo_id_property (the \
                             unique property holding the Marketo id)"
                        )));
                    }
                }
                Kind::Owners | Kind::Associations { .. } if o.contact_field.is_some() => {
                    return Err(config(format!(
                        "objects.{name}: contact_field only applies to record objects"
                    )));
                }
                Kind::Owners => {
                    if o.writable || assoc_keys {
                        return Err(config(format!(
                            "objects.{name}: owners are read-only and take no association keys"
                        )));
                    }
                }
                Kind::Associations { .. } => {
                    if o.writable || o.marketo_id_property.is_some() {
                        return Err(config(format!(
                            "objects.{name}: associations are read-only and have no \
                             marketo_id_property"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns the requests allowed per 10 seconds.
    pub fn requests_per_10s(&self) -> u32 {
        self.requests_per_10s
            .unwrap_or_else(|| self.tier.requests_per_10s())
    }

    /// Returns the requests allowed per day.
    pub fn daily_limit(&self) -> u64 {
        self.daily_limit.unwrap_or_else(|| self.tier.daily_limit())
    }

    /// Returns the overlap window.
    pub fn overlap(&self) -> Duration {
        Duration::from_secs(self.overlap_seconds)
    }

    /// Returns the access token from `token_file`, or else from `token_env` (default
    /// `HUBSPOT_ACCESS_TOKEN`).
    ///
    /// # Errors
    /// [`CrmError::Config`] naming the file or variable (never its content) when it cannot be
    /// read or is empty.
    pub fn read_token(&self) -> Result<SecretString, CrmError> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config(format!(
                    "token_file `{}` cannot be read: {e}",
                    path.display()
                ))
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(config(format!("token_file `{}` is empty", path.display())));
            }
            return Ok(SecretString::from(token.to_owned()));
        }
        let var = self.token_env.as_deref().unwrap_or(DEFAULT_TOKEN_ENV);
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_owned())),
            _ => Err(config(format!(
                "the access token is missing: set the environment variable `{var}` or \
                 token_file (the token is never read from the configuration file)"
            ))),
        }
    }
}

fn config(message: String) -> CrmError {
    CrmError::Config {
        message: format!("hubspot adapter options: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({ "objects": { "contacts": {
            "object_type": "contacts", "marketo_id_property": "marketo_id", "writable": true
        } } })
    }

    #[test]
    fn defaults_follow_the_tier_and_hubspot_limits() {
        let o = HubSpotOptions::from_json(&base()).unwrap();
        assert_eq!(o.base_url, DEFAULT_BASE_URL);
        assert_eq!(o.requests_per_10s(), 100);
        assert_eq!(o.daily_limit(), 250_000);
        assert_eq!(o.search_result_cap, 10_000);
        let mut pro = base();
        pro["tier"] = serde_json::json!("professional");
        let o = HubSpotOptions::from_json(&pro).unwrap();
        assert_eq!(o.requests_per_10s(), 190);
        assert_eq!(o.daily_limit(), 625_000);
    }

    #[test]
    fn bad_options_are_refused_with_the_key_named() {
        let mut unknown = base();
        unknown["token"] = serde_json::json!("pat-na1-secret");
        let err = HubSpotOptions::from_json(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `token`"), "{err}");
        assert!(!err.contains("pat-na1-secret"), "{err}");

        let mut no_key = base();
        no_key["objects"]["contacts"]
            .as_object_mut()
            .unwrap()
            .remove("marketo_id_property");
        let err = HubSpotOptions::from_json(&no_key).unwrap_err().to_string();
        assert!(
            err.contains("objects.contacts") && err.contains("marketo_id_property"),
            "{err}"
        );

        let mut cap = base();
        cap["search_result_cap"] = serde_json::json!(20_000);
        assert!(HubSpotOptions::from_json(&cap).is_err());

        let mut owners = base();
        owners["objects"]["owners"] =
            serde_json::json!({ "object_type": "owners", "writable": true });
        let err = HubSpotOptions::from_json(&owners).unwrap_err().to_string();
        assert!(err.contains("objects.owners"), "{err}");
    }

    #[test]
    fn associations_default_to_deal_contact_roles() {
        let o: ObjectOptions =
            serde_json::from_value(serde_json::json!({ "object_type": "associations" })).unwrap();
        assert_eq!(
            o.kind(),
            Kind::Associations {
                from: "deals".into(),
                to: "contacts".into(),
                from_field: "opportunity_id".into(),
                to_field: "contact_id".into(),
                primary_label: None,
            }
        );
    }

    #[test]
    fn the_token_comes_from_a_file_never_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  pat-na1-abc \n").unwrap();
        let mut json = base();
        json["token_file"] = serde_json::json!(path);
        let o = HubSpotOptions::from_json(&json).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(o.read_token().unwrap().expose_secret(), "pat-na1-abc");
        let mut missing = base();
        missing["token_env"] = serde_json::json!("MKSYNC_TEST_NO_SUCH_VARIABLE_HS");
        let err = HubSpotOptions::from_json(&missing)
            .unwrap()
            .read_token()
            .unwrap_err()
            .to_string();
        assert!(err.contains("MKSYNC_TEST_NO_SUCH_VARIABLE_HS"), "{err}");
    }
}
