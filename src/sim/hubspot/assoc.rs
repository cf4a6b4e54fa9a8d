//! Associations v4: single and batch create (with labels), read, archive, default
//! associations, and the label definitions between two object types.
//!
//! Shapes follow `PublicApiSpecs/CRM/Associations/Rollouts/130902/v4/associations.json`
//! (`AssociationSpec`, `LabelsBetweenObjectPair`, `PublicAssociationMultiPost`,
//! `PublicFetchAssociationsBatchRequest`, `PublicAssociationMultiWithLabel`, batch create 201 /
//! read 200, both 207 with `errors`, archive 204) and
//! `PublicApiSpecs/CRM/Associations Schema/Rollouts/130902/v4/associationsSchema.json` (labels).
//! Every association also carries the unlabeled default type and exists in both directions,
//! as HubSpot's associations guide describes.

use serde_json::{Value, json};

use super::model::{ApiError, AssocCategory, Portal, fmt_ts};
use super::objects::MAX_BATCH;
use super::server::{Ctx, Reply, Req};

fn id_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn types_of(portal: &Portal, req: &Req, from: &str, to: &str) -> Result<(usize, usize), ApiError> {
    Ok((
        portal.type_or_err(req.p(from))?,
        portal.type_or_err(req.p(to))?,
    ))
}

fn labels_between(
    portal: &Portal,
    from_ty: usize,
    from_id: u64,
    to_ty: usize,
    to_id: u64,
) -> Value {
    let from = &portal.types[from_ty].type_id;
    let to = &portal.types[to_ty].type_id;
    let labels: Vec<String> = portal
        .assoc
        .get(&(from.clone(), from_id, to.clone(), to_id))
        .map(|types| {
            types
                .iter()
                .filter_map(|id| {
                    portal
                        .assoc_type(from, to, *id)
                        .and_then(|t| t.label.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"fromObjectTypeId": from, "fromObjectId": from_id.to_string(),
           "toObjectTypeId": to, "toObjectId": to_id.to_string(), "labels": labels})
}

fn specs(list: Option<&Value>) -> Result<Vec<u32>, ApiError> {
    let Some(list) = list.and_then(Value::as_array) else {
        return Err(ApiError::validation(
            "association types must be an array of AssociationSpec",
        ));
    };
    let mut out = Vec::new();
    for spec in list {
        let Some(id) = spec.get("associationTypeId").and_then(Value::as_u64) else {
            return Err(ApiError::validation(
                "every AssociationSpec needs associationTypeId",
            ));
        };
        let category = spec
            .get("associationCategory")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(
            category,
            "HUBSPOT_DEFINED" | "USER_DEFINED" | "INTEGRATOR_DEFINED"
        ) {
            return Err(ApiError::validation(format!(
                "Invalid associationCategory {category:?}"
            )));
        }
        out.push(id as u32);
    }
    Ok(out)
}

fn check_category(
    portal: &Portal,
    from_ty: usize,
    to_ty: usize,
    list: &Value,
) -> Result<(), ApiError> {
    for spec in list.as_array().cloned().unwrap_or_default() {
        let id = spec
            .get("associationTypeId")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let category = spec
            .get("associationCategory")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(t) = portal.assoc_type(
            &portal.types[from_ty].type_id,
            &portal.types[to_ty].type_id,
            id,
        ) && t.category.as_str() != category
        {
            return Err(ApiError::validation(format!(
                "association type {id} is {}, not {category}",
                t.category.as_str()
            )));
        }
    }
    Ok(())
}

fn associate_all(
    portal: &mut Portal,
    from_ty: usize,
    from_id: u64,
    to_ty: usize,
    to_id: u64,
    body: &Value,
) -> Result<Value, ApiError> {
    let ids = specs(Some(body))?;
    check_category(portal, from_ty, to_ty, body)?;
    for type_id in ids {
        portal.associate(from_ty, from_id, to_ty, to_id, type_id)?;
    }
    let from_id = portal.types[from_ty].resolve(from_id);
    let to_id = portal.types[to_ty].resolve(to_id);
    Ok(labels_between(portal, from_ty, from_id, to_ty, to_id))
}

/// `PUT /crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}`
/// with a body of `AssociationSpec`s: 201 `LabelsBetweenObjectPair`.
pub fn put(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "objectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let (Some(from_id), Some(to_id)) = (
        id_of(Some(&json!(req.p("objectId")))),
        id_of(Some(&json!(req.p("toObjectId")))),
    ) else {
        return ApiError::validation("object ids must be numeric").into();
    };
    let body = req.body.clone().unwrap_or(Value::Null);
    match associate_all(portal, from_ty, from_id, to_ty, to_id, &body) {
        Ok(v) => Reply::Json(201, v),
        Err(e) => e.into(),
    }
}

/// `DELETE /crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}`:
/// removes every association between the pair; 204.
pub fn delete(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "objectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    if let (Ok(from_id), Ok(to_id)) = (req.p("objectId").parse(), req.p("toObjectId").parse()) {
        portal.dissociate(from_ty, from_id, to_ty, to_id, None);
    }
    Reply::NoContent
}

fn default_result(
    portal: &mut Portal,
    from_ty: usize,
    from_id: u64,
    to_ty: usize,
    to_id: u64,
) -> Result<Value, ApiError> {
    let from = portal.types[from_ty].type_id.clone();
    let to = portal.types[to_ty].type_id.clone();
    let type_id = portal.default_assoc_type(&from, &to);
    portal.associate(from_ty, from_id, to_ty, to_id, type_id)?;
    Ok(
        json!({"from": {"id": from_id.to_string()}, "to": {"id": to_id.to_string()},
              "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}),
    )
}

fn batch_answer(ok_status: u16, results: Vec<Value>, errors: Vec<Value>, now: &str) -> Reply {
    let mut out =
        json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now});
    if errors.is_empty() {
        return Reply::Json(ok_status, out);
    }
    out["numErrors"] = json!(errors.len());
    out["errors"] = Value::Array(errors);
    Reply::Json(207, out)
}

/// `PUT /crm/v4/objects/{fromObjectType}/{fromObjectId}/associations/default/{toObjectType}/{toObjectId}`.
pub fn put_default(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = fmt_ts(ctx.now);
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "fromObjectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let (Ok(from_id), Ok(to_id)) = (req.p("fromObjectId").parse(), req.p("toObjectId").parse())
    else {
        return ApiError::validation("object ids must be numeric").into();
    };
    match default_result(portal, from_ty, from_id, to_ty, to_id) {
        Ok(v) => batch_answer(200, vec![v], vec![], &now),
        Err(e) => e.into(),
    }
}

/// `GET /crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}` (`limit` up to 500,
/// `after`).
pub fn page(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "objectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let Ok(id) = req.p("objectId").parse::<u64>() else {
        return ApiError::validation("object id must be numeric").into();
    };
    let limit = req
        .q("limit")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, 500);
    let after = req
        .q("after")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let id = portal.types[from_ty].resolve(id);
    let all = assoc_items(portal, from_ty, id, to_ty);
    let end = (after + limit).min(all.len());
    let mut out = json!({"results": all.get(after.min(end)..end).unwrap_or_default()});
    if end < all.len() {
        out["paging"] = json!({"next": {"after": end.to_string()}});
    }
    Reply::ok(out)
}

fn assoc_items(portal: &Portal, from_ty: usize, id: u64, to_ty: usize) -> Vec<Value> {
    let from = &portal.types[from_ty].type_id;
    let to = &portal.types[to_ty].type_id;
    portal
        .associations_of(from_ty, id, to_ty)
        .into_iter()
        .map(|(to_id, types)| {
            let specs: Vec<Value> = types
                .iter()
                .filter_map(|t| portal.assoc_type(from, to, *t).map(|a| a.json()))
                .collect();
            json!({"toObjectId": to_id.to_string(), "associationTypes": specs})
        })
        .collect()
}

fn batch_inputs(req: &Req) -> Result<Vec<Value>, ApiError> {
    let list = req
        .b("inputs")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ApiError::validation("inputs is required and must be an array"))?;
    if list.len() > MAX_BATCH * 10 {
        return Err(ApiError::validation(format!(
            "Batch of {} inputs exceeds the limit of {}",
            list.len(),
            MAX_BATCH * 10
        )));
    }
    Ok(list)
}

/// Returns the object types a batch call names and its inputs.
fn batch_call(portal: &Portal, req: &Req) -> Result<(usize, usize, Vec<Value>), ApiError> {
    let (from_ty, to_ty) = types_of(portal, req, "fromObjectType", "toObjectType")?;
    Ok((from_ty, to_ty, batch_inputs(req)?))
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/create`.
pub fn batch_create(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = fmt_ts(ctx.now);
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &list {
        let from_id = id_of(input.pointer("/from/id"));
        let to_id = id_of(input.pointer("/to/id"));
        let outcome = match (from_id, to_id) {
            (Some(f), Some(t)) => associate_all(
                portal,
                from_ty,
                f,
                to_ty,
                t,
                input.get("types").unwrap_or(&Value::Null),
            ),
            _ => Err(ApiError::validation("every input needs from.id and to.id")),
        };
        match outcome {
            Ok(v) => results.push(v),
            Err(e) => {
                let mut e = e;
                if let Some(f) = from_id {
                    e = e.ctx("fromObjectId", f.to_string());
                }
                if let Some(t) = to_id {
                    e = e.ctx("toObjectId", t.to_string());
                }
                errors.push(e.standard());
            }
        }
    }
    batch_answer(201, results, errors, &now)
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default`.
pub fn batch_default(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = fmt_ts(ctx.now);
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &list {
        let outcome = match (
            id_of(input.pointer("/from/id")),
            id_of(input.pointer("/to/id")),
        ) {
            (Some(f), Some(t)) => default_result(portal, from_ty, f, to_ty, t),
            _ => Err(ApiError::validation("every input needs from.id and to.id")),
        };
        match outcome {
            Ok(v) => results.push(v),
            Err(e) => errors.push(e.standard()),
        }
    }
    batch_answer(200, results, errors, &now)
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read`: an id with no
/// associations answers an `OBJECT_NOT_FOUND` error (`NO_ASSOCIATIONS_FOUND`) in a 207.
pub fn batch_read(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let now = fmt_ts(ctx.now);
    let portal = &ctx.st.portal;
    let (from_ty, to_ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &list {
        let Some(id) = id_of(input.get("id")) else {
            return ApiError::validation("every input needs an id").into();
        };
        let after = input
            .get("after")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        let resolved = portal.types[from_ty].resolve(id);
        let items = assoc_items(portal, from_ty, resolved, to_ty);
        if items.is_empty() {
            let from = &portal.types[from_ty];
            let to = &portal.types[to_ty];
            let mut e = ApiError::new(
                404,
                "OBJECT_NOT_FOUND",
                format!(
                    "No {} is associated with {} {id}.",
                    to.singular, from.singular
                ),
            )
            .ctx("fromObjectId", id.to_string());
            e.sub_category = Some("crm.associations.NO_ASSOCIATIONS_FOUND".into());
            errors.push(e.standard());
            continue;
        }
        let end = (after + 500).min(items.len());
        let mut item = json!({"from": {"id": id.to_string()}, "to": items.get(after.min(end)..end).unwrap_or_default()});
        if end < items.len() {
            item["paging"] = json!({"next": {"after": end.to_string()}});
        }
        results.push(item);
    }
    batch_answer(200, results, errors, &now)
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/archive`: removes every
/// association of each pair; 204.
pub fn batch_archive(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    for input in &list {
        let Some(from_id) = id_of(input.pointer("/from/id")) else {
            continue;
        };
        for to in input
            .get("to")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if let Some(to_id) = id_of(to.get("id")) {
                portal.dissociate(from_ty, from_id, to_ty, to_id, None);
            }
        }
    }
    Reply::NoContent
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive`: removes
/// the named types only (the unlabeled default removes them all); 204.
pub fn batch_archive_labels(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty, list) = match batch_call(portal, req) {
        Ok(call) => call,
        Err(e) => return e.into(),
    };
    for input in &list {
        let (Some(from_id), Some(to_id)) = (
            id_of(input.pointer("/from/id")),
            id_of(input.pointer("/to/id")),
        ) else {
            continue;
        };
        let ids = match specs(input.get("types")) {
            Ok(ids) => ids,
            Err(e) => return e.into(),
        };
        for type_id in ids {
            portal.dissociate(from_ty, from_id, to_ty, to_id, Some(type_id));
        }
    }
    Reply::NoContent
}

/// `GET /crm/v4/associations/{fromObjectType}/{toObjectType}/labels`.
pub fn labels(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "fromObjectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let from = portal.types[from_ty].type_id.clone();
    let to = portal.types[to_ty].type_id.clone();
    portal.default_assoc_type(&from, &to);
    let results: Vec<Value> = portal
        .assoc_types_between(&from, &to)
        .into_iter()
        .map(|t| t.json())
        .collect();
    Reply::ok(json!({"results": results}))
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/labels` (`{label, name}`):
/// defines a user label pair and answers its specs.
pub fn create_label(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let portal = &mut ctx.st.portal;
    let (from_ty, to_ty) = match types_of(portal, req, "fromObjectType", "toObjectType") {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let Some(label) = req
        .b("label")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return ApiError::validation("label is required").into();
    };
    let from = portal.types[from_ty].type_id.clone();
    let to = portal.types[to_ty].type_id.clone();
    if portal
        .assoc_types_between(&from, &to)
        .iter()
        .any(|t| t.label.as_deref() == Some(label))
    {
        return ApiError::new(
            409,
            "CONFLICT",
            format!("A label {label:?} already exists between {from} and {to}"),
        )
        .into();
    }
    let forward = portal.add_assoc_type(&from, &to, AssocCategory::UserDefined, Some(label));
    let results: Vec<Value> = portal
        .assoc_types
        .iter()
        .filter(|t| t.type_id == forward || (t.inverse == forward && t.from == to))
        .map(|t| t.json())
        .collect();
    Reply::ok(json!({"results": results}))
}
