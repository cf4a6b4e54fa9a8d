//! Lead routes: describe, sync, query, get by id, delete, merge.

use serde_json::{Map, Value, json};

use super::{Ctx, Reply, Req, batch_size, input_objects, offset_from, paged};
use crate::sim::schema::{describe_lead, describe_lead2, lead_field};
use crate::sim::state::{LeadWrite, is_empty};

const DEFAULT_FIELDS: &[&str] = &[
    "id",
    "email",
    "updatedAt",
    "createdAt",
    "firstName",
    "lastName",
];

/// `GET /rest/v1/leads/describe.json`.
pub fn describe(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let hidden = &ctx.st.hidden_lead_fields;
    Reply::result(
        describe_lead()
            .into_iter()
            .filter(|f| {
                !f["rest"]["name"]
                    .as_str()
                    .is_some_and(|n| hidden.contains(n))
            })
            .collect(),
    )
}

/// `GET /rest/v1/leads/describe2.json`.
pub fn describe2(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let hidden = &ctx.st.hidden_lead_fields;
    let mut result = describe_lead2();
    for r in &mut result {
        if let Some(fields) = r["fields"].as_array_mut() {
            fields.retain(|f| !f["name"].as_str().is_some_and(|n| hidden.contains(n)));
        }
    }
    Reply::result(result)
}

/// Returns the requested `fields` (default set when absent).
///
/// # Errors
///
/// Returns 1006 naming the first unknown field.
pub fn requested_fields(req: &Req) -> Result<Vec<String>, Reply> {
    let mut fields = req.q_list("fields");
    if fields.is_empty()
        && let Some(list) = req.b("fields").and_then(Value::as_array)
    {
        fields = list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    if fields.is_empty() {
        return Ok(DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect());
    }
    for name in &fields {
        if lead_field(name).is_none() {
            return Err(Reply::err("1006", format!("Field '{name}' not found")));
        }
    }
    Ok(fields)
}

fn skipped(code: &str, message: String) -> Value {
    json!({"status": "skipped", "reasons": [{"code": code, "message": message}]})
}

fn check_value(name: &str, value: &Value) -> Option<String> {
    let (_, field) = lead_field(name)?;
    crate::sim::schema::value_problem(name, field.data_type, value)
}

/// Applies one Sync Leads record.
pub(super) fn sync_one(
    ctx: &mut Ctx<'_>,
    action: &str,
    lookup: &str,
    input: &Map<String, Value>,
) -> LeadWrite {
    for (name, value) in input {
        let Some((_, field)) = lead_field(name) else {
            return LeadWrite::Skipped("1006", format!("Field '{name}' not found"));
        };
        if field.read_only && name != "id" {
            return LeadWrite::Skipped("1006", format!("Field '{name}' is read only"));
        }
        if let Some(message) = check_value(name, value) {
            return LeadWrite::Skipped("1001", message);
        }
    }

    let searchable = lead_field(lookup).is_some_and(|(_, f)| f.searchable);
    if !searchable {
        return LeadWrite::Skipped("1011", format!("Field '{lookup}' not supported for lookup"));
    }
    if action == "createDuplicate" {
        return LeadWrite::Created(ctx.st.db.create_lead(input, ctx.now, "Web service API"));
    }
    let key = if action == "updateOnly" && input.contains_key("id") {
        "id"
    } else {
        lookup
    };
    if input.contains_key("id") && action != "updateOnly" {
        return LeadWrite::Skipped("1003", "Field 'id' is only allowed with updateOnly".into());
    }
    let value = input
        .get(key)
        .filter(|v| !is_empty(v))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    let matches = match &value {
        Some(v) => ctx.st.db.find_leads(key, v),
        None if action == "createOnly" => Vec::new(),
        None => {
            return LeadWrite::Skipped("1003", format!("Value for lookup field '{key}' not found"));
        }
    };
    match (action, matches.as_slice()) {
        ("createOnly", []) | ("createOrUpdate", []) => {
            LeadWrite::Created(ctx.st.db.create_lead(input, ctx.now, "Web service API"))
        }
        ("createOnly", _) => LeadWrite::Skipped("1005", "Lead already exists".into()),
        ("updateOnly", []) => LeadWrite::Skipped("1004", "Lead not found".into()),
        (_, [id]) => {
            let id = *id;
            let Some(lead) = ctx.st.db.lead(id).map(std::borrow::Cow::into_owned) else {
                return LeadWrite::Skipped("1004", "Lead not found".into());
            };
            let refused = ctx.st.db.refused_company_fields(&lead, input);
            if let Some(name) = refused.first() {
                return LeadWrite::Skipped(
                    "1021",
                    format!(
                        "Company update not allowed during syncLead: '{name}' belongs to the linked company"
                    ),
                );
            }
            ctx.st.db.update_lead(id, input, ctx.now, "Sync Leads");
            LeadWrite::Updated(id)
        }
        _ => LeadWrite::Skipped("1007", "Multiple lead match lookup criteria".into()),
    }
}

/// `POST /rest/v1/leads.json` (Sync Leads, or Get Leads by Filter Type with `_method=GET`).
pub fn sync_or_query(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    if req.method_get {
        return query(ctx, req);
    }
    let action = req
        .b("action")
        .and_then(Value::as_str)
        .unwrap_or("createOrUpdate");
    if !matches!(
        action,
        "createOnly" | "updateOnly" | "createOrUpdate" | "createDuplicate"
    ) {
        return Reply::err("1003", format!("Invalid action '{action}'"));
    }
    let lookup = req
        .b("lookupField")
        .and_then(Value::as_str)
        .unwrap_or("email");
    let Some(items) = req.b("input").and_then(Value::as_array) else {
        return Reply::err("1003", "input cannot be blank");
    };
    if items.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let inputs = input_objects(req);
    let mut results = Vec::with_capacity(inputs.len());
    for input in &inputs {
        if let Some((code, message)) = ctx.st.refusal_for(input) {
            results.push(skipped(&code, message));
            continue;
        }
        results.push(match sync_one(ctx, action, lookup, input) {
            LeadWrite::Created(id) => json!({"id": id, "status": "created"}),
            LeadWrite::Updated(id) => json!({"id": id, "status": "updated"}),
            LeadWrite::Skipped(code, message) => skipped(code, message),
        });
    }
    Reply::result(results)
}

/// `GET /rest/v1/leads.json` (Get Leads by Filter Type).
pub fn query(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(filter) = req.q("filterType") else {
        return Reply::err("1003", "filterType cannot be blank");
    };
    let values = req.q_list("filterValues");
    if values.is_empty() {
        return Reply::err("1003", "filterValues cannot be blank");
    }
    if !lead_field(filter).is_some_and(|(_, f)| f.searchable) {
        return Reply::err(
            "1011",
            format!("Field '{filter}' not supported for filterType"),
        );
    }
    if values.len() > 300 {
        return Reply::err("1003", "Too many filterValues, the maximum is 300");
    }
    let fields = match requested_fields(req) {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let mut ids = Vec::new();
    for value in &values {
        for id in ctx.st.db.find_leads(filter, value) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.len() > 1000 {
        return Reply::err("1003", "Too many results match the filter");
    }
    let db = &ctx.st.db;
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| db.lead(*id))
        .map(|lead| db.lead_json(&lead, &fields))
        .collect();
    paged(items, offset, size)
}

/// `GET /rest/v1/lead/{leadId}.json`.
pub fn get_by_id(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Ok(id) = req.p("leadId").parse::<i64>() else {
        return Reply::err("1003", format!("Invalid lead id '{}'", req.p("leadId")));
    };
    let fields = match requested_fields(req) {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    let db = &ctx.st.db;
    Reply::result(
        db.lead(id)
            .map(|lead| db.lead_json(&lead, &fields))
            .into_iter()
            .collect(),
    )
}

/// `POST /rest/v1/leads/delete.json`.
pub fn delete(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let mut ids: Vec<Value> = input_objects(req)
        .into_iter()
        .map(|o| o.get("id").cloned().unwrap_or(Value::Null))
        .collect();
    if ids.is_empty() {
        ids = req.q_list("id").into_iter().map(Value::String).collect();
    }
    if ids.is_empty() {
        return Reply::err("1003", "input cannot be blank");
    }
    if ids.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let mut results = Vec::new();
    for raw in ids {
        let id = raw
            .as_i64()
            .or_else(|| raw.as_str().and_then(|s| s.parse().ok()));
        match id {
            Some(id) if ctx.st.db.delete_lead(id, ctx.now) => results.push(json!({"id": id, "status": "deleted"})),
            Some(id) => results.push(json!({"id": id, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]})),
            None => results.push(skipped("1003", format!("Invalid lead id {raw}"))),
        }
    }
    Reply::result(results)
}

/// `POST /rest/v1/leads/{leadId}/merge.json?leadId=|leadIds=`.
pub fn merge(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Ok(winner) = req.p("leadId").parse::<i64>() else {
        return Reply::err("1003", format!("Invalid lead id '{}'", req.p("leadId")));
    };
    let mut raw = req.q_list("leadIds");
    raw.extend(req.q_list("leadId"));
    if raw.is_empty() {
        return Reply::err("1003", "leadId or leadIds cannot be blank");
    }
    if raw.len() > 25 {
        return Reply::err("1080", "Too many leadIds, the maximum is 25");
    }
    let mut losers = Vec::new();
    for text in &raw {
        match text.parse::<i64>() {
            Ok(id) => losers.push(id),
            Err(_) => return Reply::err("1003", format!("Invalid lead id '{text}'")),
        }
    }
    match ctx.st.db.merge_leads(winner, &losers, ctx.now) {
        Ok(()) => Reply::Ok(json!({})),
        Err(id) => Reply::err("1004", format!("Lead '{id}' not found")),
    }
}
