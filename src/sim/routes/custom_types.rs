//! Custom activity types: describe, create, add attributes, approve, discard a draft, delete.
//! A created type is a draft until approved; only approved types take records.

use serde_json::{Value, json};

use super::{Ctx, Reply, Req};
use crate::sim::catalog::{CUSTOM_TYPE_BASE, CustomAttr, CustomType};
use crate::sim::clock::fmt_time;

/// Most attributes of one custom activity type (besides the primary one).
pub const MAX_ATTRIBUTES: usize = 20;

const DATA_TYPES: &[&str] = &[
    "string", "boolean", "integer", "float", "link", "email", "currency", "date", "datetime",
    "phone", "text",
];

fn attr_json(a: &CustomAttr) -> Value {
    json!({"apiName": a.0, "name": a.1, "dataType": a.2})
}

/// Returns a type as the custom activity type routes show it (the draft's attributes when
/// `draft` and a draft exists).
pub fn type_json(t: &CustomType, draft: bool) -> Value {
    let attrs = match (&t.draft, draft || !t.approved) {
        (Some(d), true) => d,
        _ => &t.attributes,
    };
    json!({
        "id": t.id, "apiName": t.api_name, "name": t.name, "description": t.description,
        "triggerName": t.trigger_name, "filterName": t.filter_name,
        "primaryAttribute": attr_json(&t.primary),
        "attributes": attrs.iter().map(attr_json).collect::<Vec<_>>(),
        "status": if draft && t.draft.is_some() { "draft" } else { t.status() },
        "createdAt": fmt_time(t.created_at), "updatedAt": fmt_time(t.updated_at),
    })
}

fn not_found(api_name: &str) -> Reply {
    Reply::err("1013", format!("Activity type '{api_name}' not found"))
}

/// `GET /rest/v1/activities/external/type/{apiName}/describe.json[?draft=true]`.
pub fn describe(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let draft = req.q("draft") == Some("true");
    match ctx.st.db.catalog.custom_types.get(req.p("apiName")) {
        Some(t) if draft && t.draft.is_none() && t.approved => Reply::err(
            "1013",
            format!("No draft of activity type '{}'", t.api_name),
        ),
        Some(t) => Reply::result(vec![type_json(t, draft)]),
        None => not_found(req.p("apiName")),
    }
}

fn text(req: &Req, name: &str) -> Option<String> {
    req.b(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_attr(v: &Value) -> Result<CustomAttr, Reply> {
    let field = |name: &str| v.get(name).and_then(Value::as_str).unwrap_or_default();
    let (api, name) = (field("apiName"), field("name"));
    if api.is_empty() || name.is_empty() {
        return Err(Reply::err(
            "1003",
            "Attribute apiName and name cannot be blank",
        ));
    }
    let data_type = match field("dataType") {
        "" => "string",
        t => t,
    };
    if !DATA_TYPES.contains(&data_type) {
        return Err(Reply::err(
            "1003",
            format!("Invalid dataType '{data_type}' for attribute '{api}'"),
        ));
    }
    Ok((api.to_string(), name.to_string(), data_type.to_string()))
}

/// `POST /rest/v1/activities/external/type.json`: creates a draft type.
pub fn create(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let fields = ["apiName", "name", "triggerName", "filterName"].map(|n| text(req, n));
    let [Some(api_name), Some(name), Some(trigger), Some(filter)] = fields else {
        return Reply::err(
            "1003",
            "apiName, name, triggerName and filterName are required",
        );
    };
    let primary = match req.b("primaryAttribute").map(parse_attr) {
        Some(Ok(p)) => p,
        Some(Err(reply)) => return reply,
        None => return Reply::err("1003", "primaryAttribute is required"),
    };
    let types = &ctx.st.db.catalog.custom_types;
    let clash = types.values().find(|t| {
        t.api_name == api_name
            || t.name == name
            || t.trigger_name == trigger
            || t.filter_name == filter
    });
    if let Some(t) = clash {
        return Reply::err(
            "1003",
            format!("Activity type '{}' already uses this name", t.api_name),
        );
    }
    let id = types
        .values()
        .map(|t| t.id)
        .max()
        .unwrap_or(CUSTOM_TYPE_BASE)
        + 1;
    let t = CustomType {
        id,
        api_name: api_name.clone(),
        name,
        description: text(req, "description").unwrap_or_default(),
        trigger_name: trigger,
        filter_name: filter,
        primary,
        attributes: Vec::new(),
        draft: Some(Vec::new()),
        approved: false,
        created_at: ctx.now,
        updated_at: ctx.now,
    };
    let answer = type_json(&t, true);
    ctx.st.db.catalog.custom_types.insert(api_name, t);
    Reply::result(vec![answer])
}

/// `POST /rest/v1/activities/external/type/{apiName}/attributes/create.json`: adds attributes
/// to the type's draft (at most [`MAX_ATTRIBUTES`]).
pub fn add_attributes(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let mut new = Vec::new();
    for v in req
        .b("attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match parse_attr(v) {
            Ok(a) => new.push(a),
            Err(reply) => return reply,
        }
    }
    if new.is_empty() {
        return Reply::err("1003", "attributes cannot be blank");
    }
    let now = ctx.now;
    let Some(t) = ctx.st.db.catalog.custom_types.get_mut(req.p("apiName")) else {
        return not_found(req.p("apiName"));
    };
    let mut draft = t.draft.clone().unwrap_or_else(|| t.attributes.clone());
    for a in new {
        if a.0 == t.primary.0 || draft.iter().any(|d| d.0 == a.0 || d.1 == a.1) {
            return Reply::err("1003", format!("Attribute '{}' already exists", a.0));
        }
        draft.push(a);
    }
    if draft.len() > MAX_ATTRIBUTES {
        return Reply::err(
            "1003",
            format!("Too many attributes, the maximum is {MAX_ATTRIBUTES}"),
        );
    }
    t.draft = Some(draft);
    t.updated_at = now;
    Reply::result(vec![type_json(t, true)])
}

/// `POST /rest/v1/activities/external/type/{apiName}/approve.json`: the draft becomes the
/// approved version.
pub fn approve(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let Some(t) = ctx.st.db.catalog.custom_types.get_mut(req.p("apiName")) else {
        return not_found(req.p("apiName"));
    };
    let Some(draft) = t.draft.take() else {
        return Reply::err(
            "1003",
            format!("Activity type '{}' has no draft", t.api_name),
        );
    };
    t.attributes = draft;
    t.approved = true;
    t.updated_at = now;
    Reply::result(vec![type_json(t, false)])
}

/// `POST /rest/v1/activities/external/type/{apiName}/discardDraft.json`.
pub fn discard_draft(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(t) = ctx.st.db.catalog.custom_types.get_mut(req.p("apiName")) else {
        return not_found(req.p("apiName"));
    };
    if !t.approved || t.draft.take().is_none() {
        return Reply::err(
            "1003",
            format!("Activity type '{}' has no draft to discard", t.api_name),
        );
    }
    Reply::result(vec![type_json(t, false)])
}

/// `POST /rest/v1/activities/external/type/{apiName}/delete.json`.
pub fn delete(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match ctx.st.db.catalog.custom_types.remove(req.p("apiName")) {
        Some(t) => Reply::result(vec![json!({"id": t.id, "apiName": t.api_name})]),
        None => not_found(req.p("apiName")),
    }
}
