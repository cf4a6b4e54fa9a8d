//! Activities: types, paging tokens, lead activities, lead changes, deleted leads, custom activities.

use serde_json::{Map, Value, json};

use super::{Ctx, Reply, Req, batch_size, input_objects};
use crate::sim::catalog::{CUSTOM_TYPE_BASE, CustomType};
use crate::sim::clock::{fmt_time, parse_time};
use crate::sim::schema::{activity_types, value_problem};
use crate::sim::state::Activity;

/// The most bytes of one custom activity attribute value.
pub const CUSTOM_ATTRIBUTE_BYTES: usize = 65_536;

/// Days Delete Lead records stay visible through Get Deleted Leads.
pub const DELETED_RETENTION_DAYS: i64 = 14;

/// `GET /rest/v1/activities/types.json`: the standard types and the approved custom types.
pub fn types(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let mut out: Vec<Value> = activity_types()
        .into_iter()
        .filter(|t| t["id"].as_i64().is_some_and(|id| id < CUSTOM_TYPE_BASE))
        .collect();
    out.extend(
        ctx.st
            .db
            .catalog
            .custom_types
            .values()
            .filter(|t| t.approved)
            .map(|t| {
                json!({"id": t.id, "name": t.name, "description": t.description,
                    "primaryAttribute": {"name": t.primary.1, "dataType": t.primary.2},
                    "attributes": t.attributes.iter().map(|a| json!({"name": a.1, "dataType": a.2})).collect::<Vec<_>>()})
            }),
    );
    Reply::result(out)
}

/// `GET /rest/v1/activities/external/types.json`: the custom activity types (ids from 100000),
/// with their API names and approval status.
pub fn external_types(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let custom = ctx
        .st
        .db
        .catalog
        .custom_types
        .values()
        .map(|t| super::custom_types::type_json(t, false))
        .collect();
    Reply::result(custom)
}

fn token(date: &str, last_id: i64) -> String {
    data_encoding::BASE32.encode(format!("{date},{last_id}").as_bytes())
}

fn token_position(req: &Req) -> Result<i64, Reply> {
    let raw = req.q("nextPageToken").unwrap_or_default();
    data_encoding::BASE32
        .decode(raw.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.rsplit_once(',').and_then(|(_, id)| id.parse().ok()))
        .ok_or_else(|| Reply::err("1003", "Invalid nextPageToken"))
}

/// `GET /rest/v1/activities/pagingtoken.json?sinceDatetime=`.
pub fn paging_token(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let raw = req.q("sinceDatetime").unwrap_or_default();
    let Some(since) = parse_time(raw) else {
        return Reply::err("1003", format!("Invalid sinceDatetime '{raw}'"));
    };
    let before = ctx.st.db.last_id_before(since);
    Reply::Ok(json!({"nextPageToken": token(&fmt_time(since), before)}))
}

/// Returns an activity as the REST API shows it.
pub fn activity_json(a: &Activity) -> Value {
    let attributes: Vec<Value> = a
        .attributes()
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut v = json!({
        "id": a.id, "marketoGUID": a.id.to_string(), "leadId": a.lead_id,
        "activityDate": fmt_time(a.date), "activityTypeId": a.type_id,
    });
    if let Some(id) = a.primary_id {
        v["primaryAttributeValueId"] = json!(id);
    }
    if let Some(value) = &a.primary_value {
        v["primaryAttributeValue"] = json!(value);
    }
    v["attributes"] = Value::Array(attributes);
    v
}

fn ids_param(req: &Req, name: &str) -> Result<Vec<i64>, Reply> {
    let mut out = Vec::new();
    for text in req.q_list(name) {
        match text.parse() {
            Ok(id) => out.push(id),
            Err(_) => return Err(Reply::err("1003", format!("Invalid {name} value '{text}'"))),
        }
    }
    Ok(out)
}

/// Pages through the activity log after the token's position.
fn page(ctx: &Ctx<'_>, req: &Req, keep: impl Fn(&Activity) -> Option<Value>) -> Reply {
    let after = match token_position(req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let size = match batch_size(req) {
        Ok(size) => size,
        Err(reply) => return reply,
    };
    let lead_ids = match ids_param(req, "leadIds") {
        Ok(ids) if ids.len() > 30 => {
            return Reply::err("1003", "Too many leadIds, the maximum is 30");
        }
        Ok(ids) => ids,
        Err(reply) => return reply,
    };
    let list = match req.q("listId").map(str::parse::<i64>) {
        None => None,
        Some(Ok(id)) => match ctx.st.db.lists.get(&id) {
            Some(list) => Some(list.members.clone()),
            None => return Reply::err("1013", format!("List '{id}' not found")),
        },
        Some(Err(_)) => return Reply::err("1003", "Invalid listId"),
    };
    let mut items = Vec::new();
    let mut last = after;
    let mut last_date = fmt_time(ctx.now);
    let mut more = false;
    for a in ctx.st.db.feed_after(after) {
        if items.len() >= size {
            more = true;
            break;
        }
        last = a.id;
        last_date = fmt_time(a.date);
        if !lead_ids.is_empty() && !lead_ids.contains(&a.lead_id) {
            continue;
        }
        if list.as_ref().is_some_and(|m| !m.contains(&a.lead_id)) {
            continue;
        }
        if let Some(v) = keep(a.as_ref()) {
            items.push(v);
        }
    }
    let mut out = json!({"nextPageToken": token(&last_date, last), "moreResult": more});
    if !items.is_empty() {
        out["result"] = Value::Array(items);
    }
    Reply::Ok(out)
}

/// `GET /rest/v1/activities.json`.
pub fn list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let types = match ids_param(req, "activityTypeIds") {
        Ok(t) if t.len() > 10 => {
            return Reply::err("1003", "Too many activityTypeIds, the maximum is 10");
        }
        Ok(t) => t,
        Err(reply) => return reply,
    };
    page(ctx, req, |a| {
        (a.type_id != 37 && types.contains(&(a.type_id as i64))).then(|| activity_json(a))
    })
}

/// `GET /rest/v1/activities/leadchanges.json`.
pub fn lead_changes(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let fields = req.q_list("fields");
    page(ctx, req, |a| match (a.type_id, &a.change) {
        (12, _) => {
            let mut v = activity_json(a);
            v["fields"] = json!([]);
            Some(v)
        }
        (13, Some((id, name, old, new))) if fields.iter().any(|f| f == name) => {
            let mut v = activity_json(a);
            if let Some(obj) = v.as_object_mut() {
                obj.remove("primaryAttributeValueId");
                obj.remove("primaryAttributeValue");
            }
            v["fields"] = json!([{"id": id, "name": name, "newValue": new, "oldValue": old}]);
            let attrs: Vec<Value> = a
                .attributes()
                .iter()
                .filter(|(k, _)| *k == "Reason" || *k == "Source")
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            v["attributes"] = Value::Array(attrs);
            Some(v)
        }
        _ => None,
    })
}

/// `GET /rest/v1/activities/deletedleads.json`.
///
/// Delete records older than 14 days are pruned, as Marketo may do.
pub fn deleted_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let horizon = ctx.now - chrono::Duration::days(DELETED_RETENTION_DAYS);
    page(ctx, req, |a| {
        (a.type_id == 37 && a.date >= horizon).then(|| {
            let mut v = activity_json(a);
            v["attributes"] = json!([]);
            v
        })
    })
}

/// `POST /rest/v1/activities/external.json`.
pub fn add_custom(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let inputs = input_objects(req);
    if inputs.is_empty() {
        return Reply::err("1003", "input cannot be blank");
    }
    if inputs.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let mut results = Vec::new();
    for input in inputs {
        let skip = |code: &str, message: String| json!({"status": "skipped", "errors": [{"code": code, "message": message}]});
        if let Some((code, message)) = ctx.st.refusal_for(&input) {
            results.push(skip(&code, message));
            continue;
        }
        let type_id = input
            .get("activityTypeId")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let Some(kind) = ctx.st.db.catalog.approved_type(type_id).cloned() else {
            results.push(skip("1003", format!("Invalid activityTypeId '{type_id}'")));
            continue;
        };
        let lead_id = input.get("leadId").and_then(Value::as_i64).unwrap_or(0);
        if ctx.st.db.lead(lead_id).is_none() {
            results.push(skip("1004", "Lead not found".into()));
            continue;
        }
        let Some(date) = input
            .get("activityDate")
            .and_then(Value::as_str)
            .and_then(parse_time)
        else {
            results.push(skip("1003", "Invalid activityDate".into()));
            continue;
        };
        let attrs = match custom_attributes(&kind, &input) {
            Ok(attrs) => attrs,
            Err((code, message)) => {
                results.push(skip(code, message));
                continue;
            }
        };
        let Some(primary) = input
            .get("primaryAttributeValue")
            .filter(|v| !crate::sim::state::is_empty(v))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        else {
            results.push(skip("1003", "primaryAttributeValue cannot be blank".into()));
            continue;
        };
        if let Some(problem) = value_problem(&kind.primary.0, &kind.primary.2, &json!(primary)) {
            results.push(skip("1003", problem));
            continue;
        }
        let primary = Some(primary);
        // Activities are kept in id order; a custom activity is logged at call time and carries
        // its own activityDate.
        let id = ctx.st.db.log_activity(
            lead_id,
            ctx.now,
            type_id as u32,
            (None, primary),
            attrs,
            None,
        );
        if let Some(last) = ctx.st.db.activities.last_mut() {
            last.date = date;
        }
        results.push(json!({"id": id, "marketoGUID": id.to_string(), "status": "added"}));
    }
    Reply::result(results)
}

/// Returns the attributes of one custom activity record keyed by display name, each checked
/// against the type (by API name or display name) and its data type.
fn custom_attributes(
    kind: &CustomType,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, (&'static str, String)> {
    let mut attrs = Map::new();
    for attr in input
        .get("attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = attr
            .get("apiName")
            .or_else(|| attr.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(def) = kind.attributes.iter().find(|a| a.0 == name || a.1 == name) else {
            return Err((
                "1006",
                format!(
                    "Attribute '{name}' not found in activity type '{}'",
                    kind.api_name
                ),
            ));
        };
        let value = attr.get("value").cloned().unwrap_or(Value::Null);
        if let Some(problem) = value_problem(&def.0, &def.2, &value) {
            return Err(("1003", problem));
        }
        // Marketo caps a custom activity attribute at 65,536 bytes besides the characters of
        // its type, and never shortens a value.
        if let Some(text) = value.as_str()
            && text.len() > CUSTOM_ATTRIBUTE_BYTES
        {
            return Err((
                "1003",
                format!(
                    "Invalid value for field '{}': {} bytes, the maximum is {CUSTOM_ATTRIBUTE_BYTES}",
                    def.0,
                    text.len()
                ),
            ));
        }
        attrs.insert(def.1.clone(), value);
    }
    Ok(attrs)
}
