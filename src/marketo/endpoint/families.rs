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
    /// Programs: read-only through the API (they are built in Marketo); writes are refused.
    Programs,
    /// Program members, keyed by (`programId`, `leadId`): a write sets the member's
    /// `statusName` (Change Lead Program Status, any status of the channel, adding a lead that is
    /// not a member yet); a delete removes the lead from the program.
    ProgramMembers,
    /// Static list membership, keyed by (`listId`, `leadId`): a write with `member` true (or
    /// absent) adds the lead to the list, with `member` false removes it; a delete removes it.
    ListMembers,
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
            ObjectFamily::Programs => "programs",
            ObjectFamily::ProgramMembers => "program members",
            ObjectFamily::ListMembers => "static list members",
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
            ObjectFamily::Programs => Err(read_only_programs()),
            ObjectFamily::ProgramMembers => member_statuses(client, records).await,
            ObjectFamily::ListMembers => list_membership(client, records, false).await,
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
            ObjectFamily::Programs => Err(read_only_programs()),
            ObjectFamily::ProgramMembers => remove_members(client, keys).await,
            ObjectFamily::ListMembers => list_membership(client, keys, true).await,
        }
    }
}

/// The refusal of a program write.
fn read_only_programs() -> Error {
    Error::invalid(
        "/rest/asset/v1/programs.json",
        "programs are read-only for the sync",
    )
}

/// Returns a member record's (`programId`, `leadId`), or the skipped result of a record that
/// lacks one.
fn member_key(record: &Record) -> Result<(i64, i64), RecordResult> {
    let int = |name: &str| {
        record.get(name).and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    match (int("programId"), int("leadId")) {
        (Some(p), Some(l)) => Ok((p, l)),
        _ => Err(skipped("1003", "programId and leadId are required")),
    }
}

fn skipped(code: &str, message: &str) -> RecordResult {
    RecordResult {
        seq: None,
        status: crate::marketo::RecordStatus::Skipped,
        id: None,
        marketo_guid: None,
        reasons: vec![crate::marketo::model::WireError {
            code: code.into(),
            message: message.into(),
        }],
    }
}

/// Sets the members' statuses, one Change Lead Program Status call per (program, status) and
/// 300 leads. A lead already in the status (1037) counts as updated; a status the program's
/// channel lacks (1025, a call-level error on this route) or an unknown program (1013) is a
/// skipped result for each record of that call, so one bad status never fails the others.
async fn member_statuses(client: &Client, records: &[Record]) -> Result<Vec<RecordResult>, Error> {
    use std::collections::BTreeMap;
    let mut out: Vec<Option<RecordResult>> = vec![None; records.len()];
    let mut groups: BTreeMap<(i64, String), Vec<(usize, i64)>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let status = record.get("statusName").and_then(|v| v.as_str());
        match (member_key(record), status) {
            (Ok((program, lead)), Some(status)) => groups
                .entry((program, status.to_owned()))
                .or_default()
                .push((i, lead)),
            (Err(r), _) => out[i] = Some(r),
            (Ok(_), None) => out[i] = Some(skipped("1003", "statusName is required")),
        }
    }
    for ((program, status), members) in groups {
        for chunk in members.chunks(crate::marketo::leads::MAX_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|(_, l)| *l).collect();
            let results = match client
                .change_lead_program_status(program, &status, &ids)
                .await
            {
                Ok(r) => r,
                Err(e) if matches!(e.code(), Some("1025" | "1013")) => {
                    let message = e.to_string();
                    let code = e.code().unwrap_or_default().to_owned();
                    ids.iter().map(|_| skipped(&code, &message)).collect()
                }
                Err(e) => return Err(e),
            };
            for ((i, _), mut r) in chunk.iter().zip(results) {
                if r.reasons.iter().any(|w| w.code == "1037") {
                    r.status = crate::marketo::RecordStatus::Updated;
                    r.reasons.clear();
                }
                r.seq = Some(*i);
                out[*i] = Some(r);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| skipped("1003", "no result")))
        .collect())
}

/// Removes the members from their programs, one call per program and 300 leads.
async fn remove_members(client: &Client, keys: &[Record]) -> Result<Vec<RecordResult>, Error> {
    use std::collections::BTreeMap;
    let mut out: Vec<Option<RecordResult>> = vec![None; keys.len()];
    let mut groups: BTreeMap<i64, Vec<(usize, i64)>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        match member_key(key) {
            Ok((program, lead)) => groups.entry(program).or_default().push((i, lead)),
            Err(r) => out[i] = Some(r),
        }
    }
    for (program, members) in groups {
        for chunk in members.chunks(crate::marketo::leads::MAX_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|(_, l)| *l).collect();
            let results = client.delete_program_members(program, &ids).await?;
            for ((i, _), mut r) in chunk.iter().zip(results) {
                r.seq = Some(*i);
                out[*i] = Some(r);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| skipped("1003", "no result")))
        .collect())
}

/// Adds leads to or removes them from static lists (`member` false, or `remove_all`), one call
/// per (list, add or remove) and 300 leads. Removing a lead that is not in the list (1015)
/// counts as done: the wanted state holds.
async fn list_membership(
    client: &Client,
    records: &[Record],
    remove_all: bool,
) -> Result<Vec<RecordResult>, Error> {
    use std::collections::BTreeMap;
    let int = |record: &Record, name: &str| {
        record.get(name).and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let mut out: Vec<Option<RecordResult>> = vec![None; records.len()];
    let mut groups: BTreeMap<(i64, bool), Vec<(usize, i64)>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let add = !remove_all
            && record
                .get("member")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
        match (int(record, "listId"), int(record, "leadId")) {
            (Some(list), Some(lead)) => groups.entry((list, add)).or_default().push((i, lead)),
            _ => out[i] = Some(skipped("1003", "listId and leadId are required")),
        }
    }
    for ((list, add), members) in groups {
        for chunk in members.chunks(crate::marketo::leads::MAX_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|(_, l)| *l).collect();
            let results = if add {
                client.add_to_list(list, &ids).await?
            } else {
                client.remove_from_list(list, &ids).await?
            };
            for ((i, _), mut r) in chunk.iter().zip(results) {
                use crate::marketo::RecordStatus;
                if !add && r.reasons.iter().any(|w| w.code == "1015") {
                    r.status = RecordStatus::Removed;
                    r.reasons.clear();
                }
                // The write stage counts a membership added as created, removed as updated; the
                // deletions step a removal as deleted.
                r.status = match r.status {
                    RecordStatus::Added => RecordStatus::Created,
                    RecordStatus::Removed if remove_all => RecordStatus::Deleted,
                    RecordStatus::Removed => RecordStatus::Updated,
                    other => other,
                };
                r.seq = Some(*i);
                out[*i] = Some(r);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| skipped("1003", "no result")))
        .collect())
}
