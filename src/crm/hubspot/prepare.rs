//! `marketo-sync crm prepare` for HubSpot: creates the unique Marketo-id property of every
//! writable record object that names one (`marketo_id_property`) and does not have it yet, as a
//! single-line text property whose values HubSpot keeps unique (`hasUniqueValue`), so that
//! upserts can be keyed by it. A property that exists already is left as it is; one that exists
//! without unique values is reported, since HubSpot does not let an existing property become
//! unique.

use secrecy::{ExposeSecret, SecretString};

use super::client::{Client, Request};
use super::config::{HubSpotOptions, Kind};
use super::{client_for, property_listing};
use crate::crm::CrmError;

/// What `prepare` did for one configured object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The property was created.
    Created {
        /// The configured object.
        object: String,
        /// Its HubSpot object type.
        object_type: String,
        /// The property.
        property: String,
    },
    /// The property exists with unique values: nothing to do.
    Present {
        /// The configured object.
        object: String,
        /// The property.
        property: String,
    },
    /// The property exists but does not require unique values: it cannot key upserts, and
    /// HubSpot cannot make it unique; delete it in HubSpot (or name another) and run again.
    NotUnique {
        /// The configured object.
        object: String,
        /// The property.
        property: String,
    },
}

impl std::fmt::Display for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Created {
                object,
                object_type,
                property,
            } => write!(
                f,
                "{object}: created the unique property `{property}` on HubSpot {object_type}"
            ),
            Prepared::Present { object, property } => {
                write!(f, "{object}: the unique property `{property}` is there")
            }
            Prepared::NotUnique { object, property } => write!(
                f,
                "{object}: property `{property}` exists but does not require unique values, so \
                 it cannot key upserts (HubSpot cannot make an existing property unique: delete \
                 it or name another in marketo_id_property)"
            ),
        }
    }
}

/// Runs [`prepare`] for the `[crm]` settings of a configuration (as [`crate::crm::registry::build`]
/// takes them): the HubSpot adapter's options, the base URL `crm.url` when given, and the token
/// from the file or environment variable the options name.
///
/// # Errors
/// Another adapter than `hubspot`, invalid options, a missing token, or as [`prepare`].
pub async fn prepare_configured(
    adapter: &str,
    url: Option<&SecretString>,
    options: &serde_json::Value,
) -> Result<Vec<Prepared>, CrmError> {
    if adapter != super::ADAPTER_NAME {
        return Err(CrmError::Config {
            message: format!(
                "`crm prepare` prepares a HubSpot portal; crm.adapter is `{}` (the sql adapter's \
                 Marketo-id columns belong to the database schema)",
                adapter
            ),
        });
    }
    let mut options = HubSpotOptions::from_json(options)?;
    if let Some(url) = url {
        options.base_url = url.expose_secret().to_owned();
    }
    let token = options.read_token()?;
    prepare(&options, token).await
}

/// Creates the missing Marketo-id properties of `options`' writable record objects and returns
/// what was done for each object that names one, in name order.
///
/// # Errors
/// A bad base URL, or a remote failure (a refused token, a missing `crm.schemas.*.write` scope).
pub async fn prepare(
    options: &HubSpotOptions,
    token: SecretString,
) -> Result<Vec<Prepared>, CrmError> {
    let client = client_for(options, token)?;
    let mut out = Vec::new();
    for (name, o) in &options.objects {
        let Some(property) = o.marketo_id_property.clone() else {
            continue;
        };
        if o.kind() != Kind::Records || !o.writable {
            continue;
        }
        let object = name.clone();
        let properties = property_listing(&client, name, &o.object_type).await?;
        let found = properties.iter().find(|p| p.name == property);
        out.push(match found {
            Some(p) if p.has_unique_value => Prepared::Present { object, property },
            Some(_) => Prepared::NotUnique { object, property },
            None => {
                // A property belongs to a group that exists: the group of the object's first
                // property (HubSpot refuses an unknown group).
                let group = properties
                    .iter()
                    .find_map(|p| p.group_name.clone())
                    .unwrap_or_else(|| format!("{}information", o.object_type));
                create(&client, name, &o.object_type, &property, &group).await?;
                Prepared::Created {
                    object,
                    object_type: o.object_type.clone(),
                    property,
                }
            }
        });
    }
    Ok(out)
}

async fn create(
    client: &Client,
    name: &str,
    object_type: &str,
    property: &str,
    group: &str,
) -> Result<(), CrmError> {
    let body = serde_json::json!({
        "name": property,
        "label": "Marketo id",
        "description": "The id of the linked Marketo record, written by marketo-sync.",
        "type": "string",
        "fieldType": "text",
        "groupName": group,
        "hasUniqueValue": true,
        "formField": false,
    });
    let request = Request::post(
        format!("/crm/v3/properties/{object_type}"),
        body,
        format!("create property {property} of {name}"),
    );
    client.send_json(&request).await?;
    Ok(())
}
