//! CRM v3 object routes: list, read, create, update, archive, merge, the five batch operations
//! and search, for contacts, companies, deals and custom objects.
//!
//! Each handler follows the operation of the same path in
//! `PublicApiSpecs/CRM/{Contacts,Companies,Deals}/Rollouts/424/v3/*.json` (and the generic
//! `objects` spec for custom object types) in `HubSpot/HubSpot-public-api-spec-collection`:
//! `limit` (at most 100) and `after` on lists, `properties`, `propertiesWithHistory`,
//! `associations`, `archived` and `idProperty` on reads; batch inputs of at most 100; batch
//! create answering 201, read, update and upsert 200, and 207 `…WithErrors` when some inputs
//! failed; batch archive 204.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::model::{ApiError, ObjectType, Portal};
use super::search::Query;
use super::server::{Ctx, Reply, Req, flag};

/// Largest batch.
pub const MAX_BATCH: usize = 100;
/// Largest list page.
pub const MAX_LIST_LIMIT: usize = 100;

fn object_not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        "OBJECT_NOT_FOUND",
        "Object not found.  objectId are usually numeric.",
    )
    .ctx("id", id)
}

/// Returns the name an association type has in the `associations` member of a v3 read
/// (`contact_to_company`, `contact_to_company_unlabeled`, or a user label's name).
fn assoc_type_name(portal: &Portal, from_ty: usize, to_ty: usize, type_id: u32) -> String {
    let from = &portal.types[from_ty];
    let to = &portal.types[to_ty];
    let base = format!("{}_to_{}", from.singular, to.singular);
    let Some(t) = portal.assoc_type(&from.type_id, &to.type_id, type_id) else {
        return base;
    };
    match &t.label {
        Some(label) if t.category == super::model::AssocCategory::UserDefined => {
            label.to_lowercase().replace(' ', "_")
        }
        Some(_) => base,
        None => {
            let has_primary = portal
                .assoc_types_between(&from.type_id, &to.type_id)
                .iter()
                .any(|o| {
                    o.category == super::model::AssocCategory::HubspotDefined && o.label.is_some()
                });
            if has_primary {
                format!("{base}_unlabeled")
            } else {
                base
            }
        }
    }
}

/// Returns the key a type has in the `associations` member (`contacts`, or a custom object's
/// fully qualified name).
fn assoc_key(object: &ObjectType) -> String {
    object.fqn.clone().unwrap_or_else(|| object.name.clone())
}

fn with_associations(portal: &Portal, ty: usize, json: &mut Value, id: u64, names: &[String]) {
    let mut out = Map::new();
    for name in names {
        let Some(to_ty) = portal.type_index(name) else {
            continue;
        };
        let mut results = Vec::new();
        for (to_id, types) in portal.associations_of(ty, id, to_ty) {
            for type_id in types {
                results.push(json!({"id": to_id.to_string(),
                                    "type": assoc_type_name(portal, ty, to_ty, type_id)}));
            }
        }
        if !results.is_empty() {
            out.insert(assoc_key(&portal.types[to_ty]), json!({"results": results}));
        }
    }
    if !out.is_empty() {
        json["associations"] = Value::Object(out);
    }
}

fn limit_of(req: &Req, default: usize, max: usize) -> Result<usize, ApiError> {
    match req.q("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(format!(
                "limit must be a number from 1 to {max}, got {text}"
            ))),
        },
    }
}

/// `GET /crm/v3/objects/{objectType}` (`get-/crm/v3/objects/contacts`).
pub fn list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let limit = match limit_of(req, 10, MAX_LIST_LIMIT) {
        Ok(n) => n,
        Err(e) => return e.into(),
    };
    let after: u64 = match req.q("after").map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return ApiError::validation("after must be a paging cursor from paging.next.after")
                .into();
        }
    };
    let archived = flag(req, "archived");
    let names = req.q_list("properties");
    let history = req.q_list("propertiesWithHistory");
    let assoc = req.q_list("associations");
    let object = &portal.types[ty];
    let mut page = object
        .records
        .range(after..)
        .filter(|(_, r)| r.archived_at.is_some() == archived);
    let mut results = Vec::new();
    for (_, rec) in page.by_ref().take(limit) {
        let mut json = object.record_json(rec, &names, &history);
        with_associations(portal, ty, &mut json, rec.id, &assoc);
        results.push(json);
    }
    let mut out = json!({"results": results});
    if let Some((next, _)) = page.next() {
        out["paging"] = json!({"next": {"after": next.to_string(),
            "link": format!("?after={next}")}});
    }
    Reply::ok(out)
}

fn find_one(
    object: &ObjectType,
    key: &str,
    id_property: Option<&str>,
    archived: bool,
) -> Result<u64, ApiError> {
    if let Some(prop) = id_property {
        if !object.is_id_property(prop) {
            return Err(ApiError::validation(format!(
                "{prop} is not a unique property of {}; idProperty must name a property with unique values",
                object.name
            )));
        }
        let found = if archived {
            object
                .records
                .values()
                .find(|r| r.archived_at.is_some() && r.props.get(prop).is_some_and(|v| v == key))
                .map(|r| r.id)
        } else {
            object.find_by(prop, key).map(|r| r.id)
        };
        return found.ok_or_else(|| object_not_found(key));
    }
    let id: u64 = key.parse().map_err(|_| object_not_found(key))?;
    if archived {
        return object
            .records
            .get(&id)
            .filter(|r| r.archived_at.is_some())
            .map(|r| r.id)
            .ok_or_else(|| object_not_found(key));
    }
    object
        .live(id)
        .map(|r| r.id)
        .ok_or_else(|| object_not_found(key))
}

/// `GET /crm/v3/objects/{objectType}/{objectId}`: a merged-away id answers with the survivor.
pub fn get(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let object = &portal.types[ty];
    let id = match find_one(
        object,
        req.p("objectId"),
        req.q("idProperty"),
        flag(req, "archived"),
    ) {
        Ok(id) => id,
        Err(e) => return e.into(),
    };
    let Some(rec) = object.records.get(&id) else {
        return object_not_found(req.p("objectId")).into();
    };
    let mut json = object.record_json(
        rec,
        &req.q_list("properties"),
        &req.q_list("propertiesWithHistory"),
    );
    with_associations(portal, ty, &mut json, id, &req.q_list("associations"));
    Reply::ok(json)
}

fn apply_create_associations(
    portal: &mut Portal,
    ty: usize,
    id: u64,
    input: &Value,
) -> Result<(), ApiError> {
    let Some(list) = input.get("associations").and_then(Value::as_array) else {
        return Ok(());
    };
    for item in list {
        let to_id: u64 = item
            .pointer("/to/id")
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::validation("association needs to.id"))?;
        for spec in item
            .get("types")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let type_id = spec
                .get("associationTypeId")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32;
            let from = portal.types[ty].type_id.clone();
            let Some(to_type) = portal
                .assoc_types
                .iter()
                .find(|t| t.from == from && t.type_id == type_id)
                .map(|t| t.to.clone())
            else {
                return Err(ApiError::validation(format!(
                    "{type_id} is not a valid association type id from {from}"
                )));
            };
            let Some(to_ty) = portal.type_index(&to_type) else {
                continue;
            };
            portal.associate(ty, id, to_ty, to_id, type_id)?;
        }
    }
    Ok(())
}

fn props_of(input: &Value) -> Map<String, Value> {
    input
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `POST /crm/v3/objects/{objectType}`: 201 with the created record.
pub fn create(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let portal = &mut ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let input = req.body.clone().unwrap_or(Value::Null);
    let id = match portal.create(ty, &props_of(&input), now) {
        Ok(id) => id,
        Err(e) => return e.into(),
    };
    if let Err(e) = apply_create_associations(portal, ty, id, &input) {
        return e.into();
    }
    let object = &portal.types[ty];
    match object.records.get(&id) {
        Some(rec) => Reply::Json(201, object.record_json(rec, &[], &[])),
        None => object_not_found(&id.to_string()).into(),
    }
}

/// `PATCH /crm/v3/objects/{objectType}/{objectId}` (`idProperty` allowed).
pub fn update(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let portal = &mut ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let id = match find_one(
        &portal.types[ty],
        req.p("objectId"),
        req.q("idProperty"),
        false,
    ) {
        Ok(id) => id,
        Err(e) => return e.into(),
    };
    let input = req.body.clone().unwrap_or(Value::Null);
    match portal.update(ty, id, &props_of(&input), now) {
        Ok((id, _)) => {
            let object = &portal.types[ty];
            match object.records.get(&id) {
                Some(rec) => Reply::ok(object.record_json(rec, &[], &[])),
                None => object_not_found(&id.to_string()).into(),
            }
        }
        Err(e) => e.into(),
    }
}

/// `DELETE /crm/v3/objects/{objectType}/{objectId}`: 204, also for an id that is not there.
pub fn archive(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let portal = &mut ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    if let Ok(id) = req.p("objectId").parse() {
        portal.archive(ty, id, now);
    }
    Reply::NoContent
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `POST /crm/v3/objects/{objectType}/merge` (`PublicMergeInput`): 200 with the survivor.
pub fn merge(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let portal = &mut ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let primary = id_text(req.b("primaryObjectId")).and_then(|s| s.parse::<u64>().ok());
    let loser = id_text(req.b("objectIdToMerge")).and_then(|s| s.parse::<u64>().ok());
    let (Some(primary), Some(loser)) = (primary, loser) else {
        return ApiError::validation("primaryObjectId and objectIdToMerge are required record ids")
            .into();
    };
    match portal.merge(ty, primary, loser, now) {
        Ok(id) => {
            let object = &portal.types[ty];
            match object.records.get(&id) {
                Some(rec) => Reply::ok(object.record_json(rec, &[], &[])),
                None => object_not_found(&id.to_string()).into(),
            }
        }
        Err(e) => e.into(),
    }
}

fn inputs(req: &Req) -> Result<Vec<Value>, ApiError> {
    let Some(list) = req.b("inputs").and_then(Value::as_array) else {
        return Err(ApiError::validation(
            "inputs is required and must be an array",
        ));
    };
    if list.len() > MAX_BATCH {
        return Err(ApiError::validation(format!(
            "Batch of {} inputs exceeds the limit of {MAX_BATCH}",
            list.len()
        ))
        .ctx("maxInputs", MAX_BATCH.to_string()));
    }
    Ok(list.clone())
}

/// Returns the object type a batch call names and its inputs.
fn batch_call(portal: &Portal, req: &Req) -> Result<(usize, Vec<Value>), ApiError> {
    Ok((portal.type_or_err(req.p("objectType"))?, inputs(req)?))
}

/// Returns the JSON of a written record as HubSpot answers a batch write: its default
/// properties plus every property the input set (and an upsert's `idProperty`, whose value the
/// record now holds), so that a client maps each result back to its input without reading it
/// again; the input's `objectWriteTraceId`, and for an upsert whether it was `new`.
fn written(object: &ObjectType, id: u64, input: &Value, new: Option<bool>) -> Option<Value> {
    let rec = object.records.get(&id)?;
    let mut names = object.default_props.clone();
    let set = props_of(input).into_iter().map(|(name, _)| name);
    let key = input
        .get("idProperty")
        .and_then(Value::as_str)
        .map(str::to_owned);
    for name in set.chain(key) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut json = object.record_json(rec, &names, &[]);
    if let Some(new) = new {
        json["new"] = json!(new);
    }
    if let Some(trace) = input.get("objectWriteTraceId") {
        json["objectWriteTraceId"] = trace.clone();
    }
    Some(json)
}

/// Renders a batch answer: `ok_status` when every input succeeded, else 207 with `errors`.
fn batch_reply(ok_status: u16, results: Vec<Value>, errors: Vec<Value>, now: &str) -> Reply {
    let mut out = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": now,
        "completedAt": now,
    });
    if errors.is_empty() {
        return Reply::Json(ok_status, out);
    }
    out["numErrors"] = json!(errors.len());
    out["errors"] = Value::Array(errors);
    Reply::Json(207, out)
}

fn item_error(mut error: ApiError, input: &Value, id: Option<&str>) -> Value {
    if let Some(id) = id
        && !error.context.contains_key("ids")
    {
        error = error.ctx("ids", id);
    }
    if let Some(trace) = input.get("objectWriteTraceId").and_then(Value::as_str) {
        error = error.ctx("objectWriteTraceId", trace);
    }
    error.standard()
}

/// `POST /crm/v3/objects/{objectType}/batch/read`: missing ids come back as one
/// `OBJECT_NOT_FOUND` error listing them (207).
pub fn batch_read(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = super::model::fmt_ts(ctx.now);
    let portal = &ctx.st.portal;
    let (ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let object = &portal.types[ty];
    let names: Vec<String> = req
        .b("properties")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let history: Vec<String> = req
        .b("propertiesWithHistory")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let id_property = req.b("idProperty").and_then(Value::as_str);
    let archived = flag(req, "archived");
    let mut seen = BTreeSet::new();
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &list {
        let Some(key) = id_text(input.get("id")) else {
            return ApiError::validation("every input needs an id").into();
        };
        match find_one(object, &key, id_property, archived) {
            Ok(id) => {
                if seen.insert(id)
                    && let Some(rec) = object.records.get(&id)
                {
                    results.push(object.record_json(rec, &names, &history));
                }
            }
            Err(e) if e.category == "VALIDATION_ERROR" => return e.into(),
            Err(_) => missing.push(key),
        }
    }
    let mut errors = Vec::new();
    if !missing.is_empty() {
        let mut error = ApiError::new(
            404,
            "OBJECT_NOT_FOUND",
            format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                object.singular.to_ascii_uppercase()
            ),
        );
        for key in missing {
            error = error.ctx("ids", key);
        }
        errors.push(error.standard());
    }
    batch_reply(200, results, errors, &now)
}

/// `POST /crm/v3/objects/{objectType}/batch/create`: 201, or 207 with one error per refused
/// input (`VALIDATION_ERROR`, `CONFLICT`), its `objectWriteTraceId` in the context.
pub fn batch_create(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let stamp = super::model::fmt_ts(now);
    let portal = &mut ctx.st.portal;
    let (ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &list {
        let created = portal
            .create(ty, &props_of(input), now)
            .and_then(|id| apply_create_associations(portal, ty, id, input).map(|()| id));
        match created {
            Ok(id) => {
                results.extend(written(&portal.types[ty], id, input, None));
            }
            Err(e) => errors.push(item_error(e, input, None)),
        }
    }
    batch_reply(201, results, errors, &stamp)
}

fn duplicate_ids(keys: &[String]) -> Option<ApiError> {
    let mut seen = BTreeSet::new();
    let dups: BTreeSet<&String> = keys.iter().filter(|k| !seen.insert(*k)).collect();
    if dups.is_empty() {
        return None;
    }
    let list: Vec<&str> = dups.iter().map(|s| s.as_str()).collect();
    Some(ApiError::validation(format!(
        "Duplicate IDs found in batch input: [{}]. IDs must be unique",
        list.join(", ")
    )))
}

/// `POST /crm/v3/objects/{objectType}/batch/update` (by id or `idProperty`): 200, or 207 with
/// `OBJECT_NOT_FOUND`, `VALIDATION_ERROR` or `CONFLICT` per refused input.
pub fn batch_update(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let stamp = super::model::fmt_ts(now);
    let portal = &mut ctx.st.portal;
    let (ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut keys = Vec::new();
    for input in &list {
        match id_text(input.get("id")) {
            Some(k) => keys.push(k),
            None => return ApiError::validation("every input needs an id").into(),
        }
    }
    if let Some(e) = duplicate_ids(&keys) {
        return e.into();
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (input, key) in list.iter().zip(&keys) {
        let id_property = input.get("idProperty").and_then(Value::as_str);
        let updated = find_one(&portal.types[ty], key, id_property, false)
            .and_then(|id| portal.update(ty, id, &props_of(input), now));
        match updated {
            Ok((id, _)) => {
                results.extend(written(&portal.types[ty], id, input, None));
            }
            Err(e) => errors.push(item_error(e, input, Some(key))),
        }
    }
    batch_reply(200, results, errors, &stamp)
}

/// `POST /crm/v3/objects/{objectType}/batch/upsert`: each input names a unique-value
/// `idProperty`; an existing record is updated (`new: false`), else one is created with that
/// value (`new: true`).
pub fn batch_upsert(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let stamp = super::model::fmt_ts(now);
    let portal = &mut ctx.st.portal;
    let (ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut keys = Vec::new();
    for input in &list {
        let Some(key) = id_text(input.get("id")) else {
            return ApiError::validation("every input needs an id").into();
        };
        let Some(prop) = input.get("idProperty").and_then(Value::as_str) else {
            return ApiError::validation("every upsert input needs an idProperty").into();
        };
        if prop == "hs_object_id" || !portal.types[ty].is_id_property(prop) {
            return ApiError::validation(format!(
                "{prop} is not a unique property of {}; upsert needs an idProperty with unique values",
                portal.types[ty].name
            ))
            .ctx("propertyName", prop)
            .into();
        }
        keys.push(format!("{prop}={key}"));
    }
    if let Some(e) = duplicate_ids(&keys) {
        return e.into();
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &list {
        let key = id_text(input.get("id")).unwrap_or_default();
        let prop = input
            .get("idProperty")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let props = props_of(input);
        let existing = portal.types[ty].find_by(prop, &key).map(|r| r.id);
        let outcome = match existing {
            Some(id) => portal
                .update(ty, id, &props, now)
                .map(|(id, _)| (id, false)),
            None => {
                let mut with_key = props.clone();
                with_key.insert(prop.to_string(), json!(key));
                portal.create(ty, &with_key, now).map(|id| (id, true))
            }
        };
        match outcome {
            Ok((id, new)) => {
                results.extend(written(&portal.types[ty], id, input, Some(new)));
            }
            Err(e) => errors.push(item_error(e, input, Some(&key))),
        }
    }
    batch_reply(200, results, errors, &stamp)
}

/// `POST /crm/v3/objects/{objectType}/batch/archive`: 204; ids that are not there are ignored.
pub fn batch_archive(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = ctx.now;
    let portal = &mut ctx.st.portal;
    let (ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    for input in &list {
        if let Some(id) = id_text(input.get("id")).and_then(|s| s.parse().ok()) {
            portal.archive(ty, id, now);
        }
    }
    Reply::NoContent
}

/// `POST /crm/v3/objects/{objectType}/search`.
pub fn search(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &ctx.st.portal;
    let ty = match portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let body = req.body.clone().unwrap_or_else(|| json!({}));
    match Query::parse(&body, &portal.types[ty]) {
        Ok(query) => Reply::ok(query.run(&portal.types[ty])),
        Err(e) => e.into(),
    }
}
