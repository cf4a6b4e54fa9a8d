//! A record's contact as a field (`contact_field`).
//!
//! HubSpot ties a custom object's record to a contact by an association (v4), not by a
//! property, while the engine reads a custom record's contact from a field. With
//! `contact_field` set, reads fill that field with the id of the record's associated contact
//! (the lowest id when several are associated, none: null), and writes associate each record
//! written with the contact the field names, with the default (unlabelled) association type.
//! Associations to other contacts are left in place.

use std::collections::BTreeMap;

use super::HubSpotCrm;
use super::client::Request;
use super::config::ObjectOptions;
use super::model::{BatchResponse, StandardError};
use crate::crm::{CrmError, CrmRecord, Refusal, RefusalReason, WriteResult};
use crate::model::{FieldDef, FieldType, Fields, Value};

/// The HubSpot object type contacts are.
const CONTACTS: &str = "contacts";
/// The most inputs one v4 association batch write takes here.
const WRITE_BATCH: usize = 100;

/// Returns the definition of the contact field (text: a contact id).
pub(super) fn field_def(name: &str) -> FieldDef {
    FieldDef {
        searchable: false,
        ..FieldDef::new(name, FieldType::Text { max_len: None })
    }
}

/// Sets the contact field of each record to its associated contact's id (or null).
///
/// # Errors
/// A remote failure of the association read.
pub(super) async fn fill(
    crm: &HubSpotCrm,
    o: &ObjectOptions,
    records: &mut [CrmRecord],
) -> Result<(), CrmError> {
    let Some(field) = &o.contact_field else {
        return Ok(());
    };
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let contacts = read(crm, &o.object_type, &ids).await?;
    for r in records {
        let value = contacts
            .get(&r.id)
            .cloned()
            .map_or(Value::Null, Value::Text);
        r.fields.insert(field.clone(), value);
    }
    Ok(())
}

/// Returns the lowest associated contact id of each record that has one.
async fn read(
    crm: &HubSpotCrm,
    object_type: &str,
    ids: &[String],
) -> Result<BTreeMap<String, String>, CrmError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for item in super::feed::read_associations(crm, object_type, CONTACTS, ids).await? {
        let lowest = item
            .to
            .iter()
            .map(super::model::AssociatedTo::to_id)
            .min_by_key(|id| (id.len(), id.clone()));
        if let Some(id) = lowest {
            out.insert(item.from.id.clone(), id);
        }
    }
    Ok(out)
}

/// Takes the contact field out of each record of a batch (it is not a HubSpot property) and
/// returns the records without it and each one's contact id (none when null or absent).
pub(super) fn split(o: &ObjectOptions, batch: &[Fields]) -> (Vec<Fields>, Vec<Option<String>>) {
    let Some(field) = &o.contact_field else {
        return (batch.to_vec(), vec![None; batch.len()]);
    };
    batch
        .iter()
        .map(|fields| {
            let mut fields = fields.clone();
            let contact = fields
                .remove(field)
                .filter(|v| !v.is_null())
                .map(|v| v.to_text())
                .filter(|t| !t.trim().is_empty());
            (fields, contact)
        })
        .unzip()
}

/// Associates each record written (created or updated) with its contact. A record whose
/// association HubSpot refuses (no such contact) becomes a retryable refusal naming the contact:
/// its properties are written, and sending it again (keyed, so idempotent) retries the
/// association.
///
/// # Errors
/// A whole-call failure of the association write.
pub(super) async fn associate(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    results: &mut [WriteResult],
    contacts: &[Option<String>],
) -> Result<(), CrmError> {
    let pending: Vec<(usize, String, String)> = results
        .iter()
        .zip(contacts)
        .enumerate()
        .filter_map(|(i, (r, c))| match (r, c) {
            (WriteResult::Created { id } | WriteResult::Updated { id }, Some(c)) => {
                Some((i, id.clone(), c.clone()))
            }
            _ => None,
        })
        .collect();
    for chunk in pending.chunks(WRITE_BATCH) {
        let inputs: Vec<serde_json::Value> = chunk
            .iter()
            .map(|(_, from, to)| serde_json::json!({ "from": { "id": from }, "to": { "id": to } }))
            .collect();
        let request = Request::post(
            format!(
                "/crm/v4/associations/{}/{CONTACTS}/batch/associate/default",
                o.object_type
            ),
            serde_json::json!({ "inputs": inputs }),
            format!("associate {name} with contacts"),
        );
        let answer: BatchResponse<serde_json::Value> = crm.client.send(&request).await?;
        for error in &answer.errors {
            let named = error.ids();
            let about = |(_, from, to): &&(usize, String, String)| {
                named.contains(from) || named.contains(to)
            };
            for (i, _, contact) in chunk.iter().filter(about) {
                results[*i] = WriteResult::Refused(refused(contact, error));
            }
        }
    }
    Ok(())
}

fn refused(contact: &str, error: &StandardError) -> Refusal {
    Refusal {
        reason: RefusalReason::ForeignKey,
        remote_code: error.category.clone(),
        message: format!(
            "written, but hubspot refused its association to contact {contact}: {}",
            error.message.as_deref().unwrap_or("no message")
        ),
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contact_field_is_split_off_writes() {
        let o: ObjectOptions = serde_json::from_value(serde_json::json!({
            "object_type": "cars", "contact_field": "contact_id"
        }))
        .unwrap();
        let mut a = Fields::new();
        a.insert("vin".into(), Value::Text("V1".into()));
        a.insert("contact_id".into(), Value::Text("51".into()));
        let mut b = Fields::new();
        b.insert("vin".into(), Value::Text("V2".into()));
        b.insert("contact_id".into(), Value::Null);
        let (rest, contacts) = split(&o, &[a, b]);
        assert_eq!(contacts, vec![Some("51".to_owned()), None]);
        assert!(rest.iter().all(|f| !f.contains_key("contact_id")));
        assert_eq!(rest[0]["vin"], Value::Text("V1".into()));
    }
}
