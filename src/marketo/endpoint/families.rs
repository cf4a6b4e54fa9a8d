//! The object families the engine writes by dedupe fields: one typed [`ObjectFamily`] that owns
//! the wire details of a write (which endpoint, `action`, `dedupeBy`), so that the engine names
//! a family and hands it records, never an endpoint or a wire parameter.

use crate::marketo::{Client, DedupeBy, Error, Record, RecordResult, SyncAction};

/// A Marketo object family written and deleted by its dedupe fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectFamily {
    /// SalesPersons, deduplicated on `externalSalesPersonId`.
    SalesPersons,
    /// Companies, deduplicated on `externalCompanyId`.
    Companies,
    /// Opportunities, deduplicated on `externalOpportunityId`.
    Opportunities,
    /// Opportunity roles, deduplicated on (`externalOpportunityId`, `leadId`, `role`).
    Roles,
    /// A custom object by its API name, deduplicated on its dedupe fields.
    Custom(String),
}

impl ObjectFamily {
    /// Returns the family's name in log lines and error messages.
    pub fn label(&self) -> &str {
        match self {
            ObjectFamily::SalesPersons => "salespersons",
            ObjectFamily::Companies => "companies",
            ObjectFamily::Opportunities => "opportunities",
            ObjectFamily::Roles => "opportunity roles",
            ObjectFamily::Custom(name) => name,
        }
    }

    /// Creates or updates `records` (createOrUpdate, dedupeBy dedupeFields) and returns one
    /// result per record, in order.
    ///
    /// # Errors
    ///
    /// A whole-call failure (transport, authentication, a call-level Marketo error).
    pub async fn upsert(
        &self,
        client: &Client,
        records: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        let (a, d) = (SyncAction::CreateOrUpdate, DedupeBy::DedupeFields);
        match self {
            ObjectFamily::SalesPersons => client.sync_salespersons(a, d, records).await,
            ObjectFamily::Companies => client.sync_companies(a, d, records).await,
            ObjectFamily::Opportunities => client.sync_opportunities(a, d, records).await,
            ObjectFamily::Roles => client.sync_opportunity_roles(a, d, records).await,
            ObjectFamily::Custom(name) => client.sync_custom_objects(name, a, d, records).await,
        }
    }

    /// Deletes the records whose dedupe fields `keys` holds and returns one result per record.
    ///
    /// # Errors
    ///
    /// A whole-call failure (transport, authentication, a call-level Marketo error).
    pub async fn delete(
        &self,
        client: &Client,
        keys: &[Record],
    ) -> Result<Vec<RecordResult>, Error> {
        let d = DedupeBy::DedupeFields;
        match self {
            ObjectFamily::SalesPersons => client.delete_salespersons(d, keys).await,
            ObjectFamily::Companies => client.delete_companies(d, keys).await,
            ObjectFamily::Opportunities => client.delete_opportunities(d, keys).await,
            ObjectFamily::Roles => client.delete_opportunity_roles(d, keys).await,
            ObjectFamily::Custom(name) => client.delete_custom_objects(name, d, keys).await,
        }
    }
}
