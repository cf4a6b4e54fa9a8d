//! The records of the lead step: a Marketo lead and a CRM record as read this cycle (mapped to
//! canonical values), the pair the two form, and the small readers every stage shares.

use chrono::{DateTime, Utc};

use crate::engine::Context;
use crate::mapping::Plan;
use crate::marketo::Record;
use crate::marketo::model::parse_marketo_datetime;
use crate::model::{Fields, Side, Value};
use crate::store::Link;

/// A Marketo lead as read this cycle.
#[derive(Debug, Clone)]
pub(super) struct MLead {
    pub id: i64,
    pub canon: Fields,
    pub at: Option<DateTime<Utc>>,
    pub crm_key: Option<String>,
    pub external_company_id: Option<String>,
}

/// A CRM record as read this cycle.
#[derive(Debug, Clone)]
pub(super) struct CRec {
    pub id: String,
    pub canon: Fields,
    pub at: DateTime<Utc>,
    pub marketo_key: Option<String>,
}

/// A Marketo lead and a CRM record that belong together (either may be unknown yet).
#[derive(Debug, Default)]
pub(super) struct Pair {
    pub m_id: Option<i64>,
    pub c_id: Option<String>,
    pub link: Option<Link>,
    pub m: Option<MLead>,
    pub c: Option<CRec>,
}

impl Pair {
    /// The key of the pair's CRM -> Marketo ledger entry: the CRM id, else the lead id.
    pub(super) fn record_key(&self) -> String {
        self.c_id
            .clone()
            .or_else(|| self.m_id.map(|m| m.to_string()))
            .unwrap_or_default()
    }
}

/// Returns a JSON value as key text (none for null or blank).
pub(super) fn text_of(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Returns a value as text (none for null or blank).
pub(super) fn value_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        other => {
            let t = other.to_text();
            (!t.trim().is_empty()).then_some(t)
        }
    }
}

/// Returns a value as a Marketo lead id, when it holds one.
pub(super) fn lead_id_of(v: Option<&Value>) -> Option<i64> {
    value_text(v).and_then(|t| t.trim().parse::<i64>().ok())
}

/// Returns the Marketo fields read of a lead: the mapped ones and the keys the step needs.
pub(super) fn lead_read_fields(plan: &Plan) -> Vec<String> {
    let mut fields = plan.read_fields(Side::Marketo);
    for extra in [
        "id",
        "updatedAt",
        "externalCompanyId",
        plan.marketo_crm_key.as_str(),
    ] {
        if !fields.iter().any(|f| f == extra) {
            fields.push(extra.to_owned());
        }
    }
    fields
}

/// Returns the lead of a Marketo record (none without an id).
pub(super) fn m_lead(plan: &Plan, raw: &Record) -> Option<Result<MLead, String>> {
    m_lead_fields(plan, &crate::engine::pipeline::from_record(raw))
}

/// Returns the lead of Marketo values (none without an id).
pub(super) fn m_lead_fields(plan: &Plan, fields: &Fields) -> Option<Result<MLead, String>> {
    let id = match fields.get("id")? {
        Value::Int(i) => *i,
        other => other.to_text().trim().parse().ok()?,
    };
    Some(
        plan.to_canonical(Side::Marketo, fields)
            .map(|canon| MLead {
                id,
                canon,
                at: match fields.get("updatedAt") {
                    Some(Value::DateTime(t)) => Some(*t),
                    Some(v) => parse_marketo_datetime(&v.to_text()),
                    None => None,
                },
                crm_key: value_text(fields.get(&plan.marketo_crm_key)),
                external_company_id: value_text(fields.get("externalCompanyId")),
            })
            .map_err(|e| e.to_string()),
    )
}

/// Returns the record of a CRM row.
pub(super) fn c_rec(
    plan: &Plan,
    id: &str,
    at: DateTime<Utc>,
    fields: &Fields,
) -> Result<CRec, String> {
    plan.to_canonical(Side::Crm, fields)
        .map(|canon| CRec {
            id: id.to_owned(),
            canon,
            at,
            marketo_key: value_text(fields.get(&plan.crm_marketo_id)),
        })
        .map_err(|e| e.to_string())
}

/// Returns the live links (no tombstone).
pub(super) fn live(links: Vec<Link>) -> Vec<Link> {
    links
        .into_iter()
        .filter(|l| l.tombstone.is_none())
        .collect()
}

/// Returns a record's match key: its match-field values, lowercased (none when one is empty).
pub(super) fn match_key(plan: &Plan, canon: &Fields) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for f in &plan.match_fields {
        out.push(value_text(canon.get(f))?.to_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

/// Returns the CRM object's primary-key field (`id` when the CRM does not say).
pub(super) async fn crm_pk(ctx: &Context, plan: &Plan) -> String {
    ctx.crm
        .describe(&plan.crm_object)
        .await
        .ok()
        .and_then(|s| s.id_field)
        .unwrap_or_else(|| "id".to_owned())
}
