//! Batch writes: upserts keyed by a unique property (`batch/upsert` with `idProperty`), updates
//! by `hs_object_id` (`batch/update`, update-only), archives (`batch/archive`).
//!
//! Every record is checked before it is sent (unknown or read-only property, a value that does
//! not fit: refused, never shortened). HubSpot's answer maps back to the input by the key (HubSpot
//! does not promise its results keep the input order): a result is a write, an entry of `errors`
//! naming the key is that record's refusal. HubSpot refuses some batches as a whole for one
//! record's error (a 4xx for the call); such a batch is split in halves and sent again until the
//! refusing record is alone, so one bad record never fails the others. A record HubSpot answered
//! nothing about is sent again on its own once, then reported `not_written`.

use std::collections::{BTreeMap, HashMap};

use futures::future::BoxFuture;

use super::client::{HubSpotError, Request};
use super::config::{Kind, ObjectOptions};
use super::model::{BatchResponse, PublicObject, StandardError};
use super::schema::{self, ID_PROPERTY};
use super::{HubSpotCrm, MAX_BATCH};
use crate::crm::{CrmError, Refusal, RefusalReason, WriteResult};
#[cfg(test)]
use crate::model::Value;
use crate::model::{FieldDef, Fields};

/// The longest remote message kept in a refusal, in characters.
const MAX_MESSAGE_CHARS: usize = 500;

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `batch/upsert` keyed by a unique property.
    Upsert,
    /// `batch/update` by `hs_object_id`.
    Update,
}

/// One record ready to send.
#[derive(Debug, Clone)]
struct Prepared {
    /// Its position in the input.
    index: usize,
    /// The key value (`hs_object_id` in update mode).
    key: String,
    properties: BTreeMap<String, String>,
}

/// Returns the records' outcomes, in input order.
pub(super) async fn upsert(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    key_field: &str,
    batch: &[Fields],
) -> Result<Vec<WriteResult>, CrmError> {
    writable(name, o)?;
    let props = crm.props(name).await?;
    let mode = if key_field == ID_PROPERTY {
        Mode::Update
    } else {
        let key = props.iter().find(|f| f.name == key_field);
        let usable =
            key.is_some_and(|f| f.unique) || (key_field == "email" && o.object_type == "contacts");
        if !usable {
            return Err(CrmError::Schema {
                object: name.to_owned(),
                message: format!(
                    "key field `{key_field}` is not a unique HubSpot property, so it cannot key \
                     upserts"
                ),
            });
        }
        Mode::Upsert
    };
    let mut results: Vec<Option<WriteResult>> = vec![None; batch.len()];
    let mut ready = Vec::new();
    for (index, fields) in batch.iter().enumerate() {
        match prepare(index, fields, key_field, mode, &props) {
            Ok(p) => ready.push(p),
            Err(refusal) => results[index] = Some(WriteResult::Refused(refusal)),
        }
    }
    let ctx = WriteCtx {
        crm,
        name,
        object_type: &o.object_type,
        key_field,
        mode,
    };
    // HubSpot takes at most MAX_BATCH inputs a call: a larger batch is sent in calls of that size.
    while !ready.is_empty() {
        let rest = ready.split_off(ready.len().min(MAX_BATCH));
        for (index, result) in ctx.send(ready, true).await? {
            results[index] = Some(result);
        }
        ready = rest;
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| WriteResult::Refused(not_written())))
        .collect())
}

fn writable(name: &str, o: &ObjectOptions) -> Result<(), CrmError> {
    if !o.writable || o.kind() != Kind::Records {
        return Err(CrmError::NotWritable {
            object: name.to_owned(),
        });
    }
    Ok(())
}

fn not_written() -> Refusal {
    Refusal {
        reason: RefusalReason::NotWritten,
        remote_code: None,
        message: "hubspot reported no outcome for this record".to_owned(),
        retryable: true,
    }
}

/// Checks one record and renders its properties.
fn prepare(
    index: usize,
    fields: &Fields,
    key_field: &str,
    mode: Mode,
    props: &[FieldDef],
) -> Result<Prepared, Refusal> {
    let key = match fields.get(key_field) {
        Some(v) if !v.is_null() && !v.to_text().trim().is_empty() => v.to_text(),
        _ => {
            return Err(Refusal::new(
                RefusalReason::MissingKey,
                format!("`{key_field}` has no value"),
            ));
        }
    };
    let mut properties = BTreeMap::new();
    for (name, value) in fields {
        if mode == Mode::Update && name == ID_PROPERTY {
            continue;
        }
        let Some(def) = props.iter().find(|f| f.name == *name) else {
            let reason = RefusalReason::UnknownField {
                field: name.clone(),
            };
            return Err(Refusal::new(reason.clone(), reason.to_string()));
        };
        if def.read_only {
            let reason = RefusalReason::ReadOnlyField {
                field: name.clone(),
            };
            return Err(Refusal::new(reason.clone(), reason.to_string()));
        }
        match schema::render_value(value, def) {
            Ok(text) => {
                properties.insert(name.clone(), text);
            }
            Err(reason) => {
                let message = match &reason {
                    RefusalReason::InvalidValue => {
                        format!("the value of `{name}` is not a valid {}", def.ty.describe())
                    }
                    other => other.to_string(),
                };
                return Err(Refusal::new(reason, message));
            }
        }
    }
    Ok(Prepared {
        index,
        key,
        properties,
    })
}

struct WriteCtx<'a> {
    crm: &'a HubSpotCrm,
    name: &'a str,
    object_type: &'a str,
    key_field: &'a str,
    mode: Mode,
}

impl WriteCtx<'_> {
    /// Sends `records` and returns each one's outcome; splits a batch HubSpot refuses as a whole.
    /// `resend` allows one more call for records HubSpot answered nothing about.
    fn send(
        &self,
        records: Vec<Prepared>,
        resend: bool,
    ) -> BoxFuture<'_, Result<Vec<(usize, WriteResult)>, CrmError>> {
        Box::pin(async move {
            let answer = match self.call(&records).await {
                Ok(a) => a,
                Err(e) => {
                    let Some((status, error)) = e.refused() else {
                        return Err(e.into());
                    };
                    if records.len() == 1 {
                        return Ok(vec![(
                            records[0].index,
                            WriteResult::Refused(refusal(status, error)),
                        )]);
                    }
                    let mut left = records;
                    let right = left.split_off(left.len() / 2);
                    let mut out = self.send(left, resend).await?;
                    out.extend(self.send(right, resend).await?);
                    return Ok(out);
                }
            };
            let ids = self.keys_of_unlabelled(&records, &answer).await?;
            let (mut out, silent) = self.match_answer(&records, &answer, &ids);
            if !silent.is_empty() {
                if resend {
                    for record in silent {
                        out.extend(self.send(vec![record], false).await?);
                    }
                } else {
                    out.extend(
                        silent
                            .into_iter()
                            .map(|r| (r.index, WriteResult::Refused(not_written()))),
                    );
                }
            }
            Ok(out)
        })
    }

    async fn call(
        &self,
        records: &[Prepared],
    ) -> Result<BatchResponse<PublicObject>, HubSpotError> {
        let (path, inputs): (&str, Vec<serde_json::Value>) = match self.mode {
            Mode::Upsert => (
                "upsert",
                records
                    .iter()
                    .map(|r| {
                        let mut properties = r.properties.clone();
                        properties.insert(self.key_field.to_owned(), r.key.clone());
                        serde_json::json!({
                            "idProperty": self.key_field, "id": r.key, "properties": properties
                        })
                    })
                    .collect(),
            ),
            Mode::Update => (
                "update",
                records
                    .iter()
                    .map(|r| serde_json::json!({ "id": r.key, "properties": r.properties }))
                    .collect(),
            ),
        };
        let request = Request::post(
            format!("/crm/v3/objects/{}/batch/{path}", self.object_type),
            serde_json::json!({ "inputs": inputs }),
            format!("write {}", self.name),
        );
        self.crm.client.send(&request).await
    }

    /// Returns the key of each upsert result that does not carry its key property, by reading
    /// the records back by that property (one `batch/read` with `idProperty`), so that results
    /// are never matched to records by position.
    async fn keys_of_unlabelled(
        &self,
        records: &[Prepared],
        answer: &BatchResponse<PublicObject>,
    ) -> Result<HashMap<String, String>, CrmError> {
        let unlabelled = self.mode == Mode::Upsert
            && answer.results.iter().any(|o| {
                o.properties
                    .get(self.key_field)
                    .cloned()
                    .flatten()
                    .is_none()
            });
        if !unlabelled {
            return Ok(HashMap::new());
        }
        let inputs: Vec<serde_json::Value> = records
            .iter()
            .map(|r| serde_json::json!({ "id": r.key }))
            .collect();
        let request = Request::post(
            format!("/crm/v3/objects/{}/batch/read", self.object_type),
            serde_json::json!({
                "idProperty": self.key_field, "properties": [self.key_field], "inputs": inputs
            }),
            format!("read back {} by {}", self.name, self.key_field),
        );
        let read: BatchResponse<PublicObject> = match self.crm.client.send(&request).await {
            Ok(r) => r,
            Err(e) if e.refused().is_some() => return Ok(HashMap::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(read
            .results
            .into_iter()
            .filter_map(|o| {
                let key = o.properties.get(self.key_field).cloned().flatten()?;
                Some((o.id, key))
            })
            .collect())
    }

    /// Maps HubSpot's answer back to the records (by key, or by the result's id through
    /// `keys_by_id`); returns the outcomes and the records HubSpot said nothing about.
    fn match_answer(
        &self,
        records: &[Prepared],
        answer: &BatchResponse<PublicObject>,
        keys_by_id: &HashMap<String, String>,
    ) -> (Vec<(usize, WriteResult)>, Vec<Prepared>) {
        let norm = |s: &str| s.trim().to_lowercase();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (pos, r) in records.iter().enumerate() {
            by_key.insert(norm(&r.key), pos);
        }
        let mut outcome: Vec<Option<WriteResult>> = vec![None; records.len()];
        for object in &answer.results {
            let key = match self.mode {
                Mode::Update => Some(object.id.clone()),
                Mode::Upsert => object
                    .properties
                    .get(self.key_field)
                    .cloned()
                    .flatten()
                    .or_else(|| keys_by_id.get(&object.id).cloned()),
            };
            let pos = match key.and_then(|k| by_key.get(&norm(&k)).copied()) {
                Some(p) => Some(p),
                // One record sent, one result back: it is that record's.
                None if records.len() == 1 && answer.results.len() == 1 => Some(0),
                None => None,
            };
            if let Some(pos) = pos {
                let id = object.id.clone();
                outcome[pos] = Some(if object.new == Some(true) {
                    WriteResult::Created { id }
                } else {
                    WriteResult::Updated { id }
                });
            }
        }
        for error in &answer.errors {
            let mut named: Vec<usize> = error
                .ids()
                .iter()
                .filter_map(|id| by_key.get(&norm(id)).copied())
                .collect();
            if named.is_empty() {
                let open: Vec<usize> = (0..records.len())
                    .filter(|p| outcome[*p].is_none())
                    .collect();
                if open.len() == 1 {
                    named = open;
                }
            }
            for pos in named {
                if outcome[pos].is_none() {
                    outcome[pos] = Some(WriteResult::Refused(refusal(207, error)));
                }
            }
        }
        let mut out = Vec::new();
        let mut silent = Vec::new();
        for (pos, result) in outcome.into_iter().enumerate() {
            match result {
                Some(r) => out.push((records[pos].index, r)),
                None => silent.push(records[pos].clone()),
            }
        }
        (out, silent)
    }
}

/// Returns HubSpot's error about one record as a typed refusal.
pub(crate) fn refusal(status: u16, error: &StandardError) -> Refusal {
    let category = error.category.clone().unwrap_or_else(|| "ERROR".to_owned());
    let detail = validation_detail(error);
    let code = detail
        .as_ref()
        .map(|(code, _)| code.clone())
        .or_else(|| error.errors.iter().find_map(|d| d.code.clone()))
        .or_else(|| error.sub_category_text().map(str::to_owned));
    let field = detail.and_then(|(_, f)| f).or_else(|| {
        error.errors.iter().find_map(|d| {
            d.context
                .get("propertyName")
                .and_then(|v| v.first().cloned())
        })
    });
    let code_upper = code.clone().unwrap_or_default().to_ascii_uppercase();
    let reason = match category.as_str() {
        "OBJECT_NOT_FOUND" => RefusalReason::NotFound,
        "CONFLICT" => RefusalReason::Unique,
        _ if code_upper.contains("PROPERTY_DOESNT_EXIST") => RefusalReason::UnknownField {
            field: field.clone().unwrap_or_default(),
        },
        _ if code_upper.contains("READ_ONLY") => RefusalReason::ReadOnlyField {
            field: field.clone().unwrap_or_default(),
        },
        _ if code_upper.contains("REQUIRED") => RefusalReason::NotNull,
        _ if code_upper.contains("DUPLICATE") || code_upper.contains("UNIQUE") => {
            RefusalReason::Unique
        }
        _ if status == 404 => RefusalReason::NotFound,
        _ if status == 409 => RefusalReason::Unique,
        _ => RefusalReason::InvalidValue,
    };
    let remote_code = match &code {
        Some(c) if *c != category => format!("{category}/{c}"),
        _ => category.clone(),
    };
    let message: String = error
        .message
        .clone()
        .unwrap_or_else(|| format!("hubspot refused the record ({status})"))
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect();
    Refusal {
        reason,
        remote_code: Some(remote_code),
        message,
        retryable: false,
    }
}

/// Returns the code and property of HubSpot's validation message
/// (`Property values were not valid: [{"isValid":false,"error":"INVALID_OPTION","name":"x",...}]`).
fn validation_detail(error: &StandardError) -> Option<(String, Option<String>)> {
    let message = error.message.as_deref()?;
    let start = message.find('[')?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&message[start..]).ok()?;
    let first = list.first()?;
    let code = first.get("error")?.as_str()?.to_owned();
    let name = first
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    Some((code, name))
}

/// Archives records by id; returns one outcome per id, in input order (`not_found` for an id
/// with no live record, checked by one batch read first, since HubSpot's archive answers 204 for
/// unknown ids too).
pub(super) async fn archive(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    ids: &[String],
) -> Result<Vec<WriteResult>, CrmError> {
    writable(name, o)?;
    let live = crm.read_by_ids(name, o, ids).await?;
    let mut results: Vec<Option<WriteResult>> = vec![None; ids.len()];
    let mut found: Vec<(usize, String)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if live.iter().any(|r| r.id == *id) {
            found.push((i, id.clone()));
        } else {
            results[i] = Some(WriteResult::Refused(Refusal::new(
                RefusalReason::NotFound,
                format!("no live {} record with id {id}", o.object_type),
            )));
        }
    }
    // At most MAX_BATCH ids a call.
    while !found.is_empty() {
        let rest = found.split_off(found.len().min(MAX_BATCH));
        for (i, result) in archive_split(crm, name, &o.object_type, found).await? {
            results[i] = Some(result);
        }
        found = rest;
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| WriteResult::Refused(not_written())))
        .collect())
}

fn archive_split<'a>(
    crm: &'a HubSpotCrm,
    name: &'a str,
    object_type: &'a str,
    ids: Vec<(usize, String)>,
) -> BoxFuture<'a, Result<Vec<(usize, WriteResult)>, CrmError>> {
    Box::pin(async move {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<serde_json::Value> = ids
            .iter()
            .map(|(_, id)| serde_json::json!({ "id": id }))
            .collect();
        let request = Request::post(
            format!("/crm/v3/objects/{object_type}/batch/archive"),
            serde_json::json!({ "inputs": inputs }),
            format!("delete {name}"),
        );
        match crm.client.send_json(&request).await {
            Ok(_) => Ok(ids
                .into_iter()
                .map(|(i, id)| (i, WriteResult::Deleted { id }))
                .collect()),
            Err(e) => {
                let Some((status, error)) = e.refused() else {
                    return Err(e.into());
                };
                if ids.len() == 1 {
                    return Ok(vec![(
                        ids[0].0,
                        WriteResult::Refused(refusal(status, error)),
                    )]);
                }
                let mut left = ids;
                let right = left.split_off(left.len() / 2);
                let mut out = archive_split(crm, name, object_type, left).await?;
                out.extend(archive_split(crm, name, object_type, right).await?);
                Ok(out)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldType;

    #[test]
    fn hubspot_error_categories_become_typed_refusals() {
        let e: StandardError = serde_json::from_value(serde_json::json!({
            "status": "error", "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"colour\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"colour\"}]",
            "context": { "ids": ["m-1"] }
        }))
        .unwrap();
        let r = refusal(207, &e);
        assert_eq!(
            r.reason,
            RefusalReason::UnknownField {
                field: "colour".into()
            }
        );
        assert_eq!(
            r.remote_code.as_deref(),
            Some("VALIDATION_ERROR/PROPERTY_DOESNT_EXIST")
        );
        let e = StandardError {
            category: Some("OBJECT_NOT_FOUND".into()),
            ..StandardError::default()
        };
        assert_eq!(refusal(207, &e).reason, RefusalReason::NotFound);
        let e = StandardError {
            category: Some("CONFLICT".into()),
            message: Some("Contact already exists".into()),
            ..StandardError::default()
        };
        assert_eq!(refusal(409, &e).reason, RefusalReason::Unique);
        let e: StandardError = serde_json::from_value(serde_json::json!({
            "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"x was not one of the allowed options\",\"error\":\"INVALID_OPTION\",\"name\":\"dealstage\"}]"
        }))
        .unwrap();
        assert_eq!(refusal(400, &e).reason, RefusalReason::InvalidValue);
    }

    #[test]
    fn records_are_checked_before_they_are_sent() {
        let props = vec![
            FieldDef {
                unique: true,
                ..FieldDef::new(
                    "marketo_id",
                    FieldType::Text {
                        max_len: Some(65_536),
                    },
                )
            },
            FieldDef::new("firstname", FieldType::Text { max_len: Some(3) }),
            FieldDef {
                read_only: true,
                ..FieldDef::new("createdate", FieldType::DateTime)
            },
        ];
        let mut f = Fields::new();
        f.insert("firstname".into(), Value::from("Ada"));
        assert_eq!(
            prepare(0, &f, "marketo_id", Mode::Upsert, &props)
                .unwrap_err()
                .reason,
            RefusalReason::MissingKey
        );
        f.insert("marketo_id".into(), Value::Int(42));
        let p = prepare(0, &f, "marketo_id", Mode::Upsert, &props).unwrap();
        assert_eq!(p.key, "42");
        assert_eq!(p.properties["firstname"], "Ada");
        f.insert("firstname".into(), Value::from("Adaline"));
        assert!(matches!(
            prepare(0, &f, "marketo_id", Mode::Upsert, &props)
                .unwrap_err()
                .reason,
            RefusalReason::TooLong {
                max_chars: 3,
                actual_chars: 7,
                ..
            }
        ));
        f.insert("firstname".into(), Value::from("Ada"));
        f.insert("createdate".into(), Value::Null);
        assert!(matches!(
            prepare(0, &f, "marketo_id", Mode::Upsert, &props)
                .unwrap_err()
                .reason,
            RefusalReason::ReadOnlyField { .. }
        ));
        f.remove("createdate");
        f.insert("colour".into(), Value::from("red"));
        assert!(matches!(
            prepare(0, &f, "marketo_id", Mode::Upsert, &props)
                .unwrap_err()
                .reason,
            RefusalReason::UnknownField { .. }
        ));
    }
}
