//! Properties, schemas and owners.
//!
//! - Properties follow `PublicApiSpecs/CRM/Properties/Rollouts/*/v3/properties.json`
//!   (`CollectionResponsePropertyNoPaging`, `PropertyCreate` answering 201 `Property`,
//!   `DELETE` answering 204; a deleted property is archived: gone from reads, listed with
//!   `archived=true`).
//! - Schemas follow `PublicApiSpecs/CRM/Schemas/Rollouts/*/v3/schemas.json`
//!   (`CollectionResponseObjectSchemaNoPaging`, `ObjectSchema`).
//! - Owners follow `PublicApiSpecs/CRM/Owners/Rollouts/*/v3/owners.json`
//!   (`CollectionResponsePublicOwnerForwardPaging`, `limit` up to 500, `after`, `email`,
//!   `archived`; `idProperty` `id` or `userId` on the single read).

use serde_json::{Value, json};

use super::model::{ApiError, PropOption, PropType, PropertyDef, fmt_ts};
use super::server::{Ctx, Reply, Req, flag};

fn type_of(ctx: &Ctx<'_>, req: &Req) -> Result<usize, ApiError> {
    ctx.st.portal.type_or_err(req.p("objectType"))
}

/// `GET /crm/v3/properties/{objectType}`.
pub fn properties(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match type_of(ctx, req) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let archived = flag(req, "archived");
    let results: Vec<Value> = ctx.st.portal.types[ty]
        .properties
        .values()
        .filter(|p| p.archived == archived)
        .map(PropertyDef::json)
        .collect();
    Reply::ok(json!({"results": results}))
}

fn property_not_found(name: &str, type_id: &str) -> ApiError {
    ApiError::new(
        404,
        "OBJECT_NOT_FOUND",
        format!("Unable to find property {name} for object type {type_id}"),
    )
    .ctx("propertyName", name)
}

/// `GET /crm/v3/properties/{objectType}/{propertyName}`.
pub fn property(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match type_of(ctx, req) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let object = &ctx.st.portal.types[ty];
    let name = req.p("propertyName");
    match object.properties.get(name) {
        Some(def) if def.archived == flag(req, "archived") => Reply::ok(def.json()),
        _ => property_not_found(name, &object.type_id).into(),
    }
}

/// Parses a `PropertyCreate` body into a definition.
///
/// # Errors
///
/// Returns a 400 `VALIDATION_ERROR` naming the bad member.
pub fn parse_property_create(body: &Value) -> Result<PropertyDef, ApiError> {
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    let name = field("name");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ApiError::validation(format!(
            "Property name {name:?} is invalid: use lower-case letters, digits and underscores"
        ))
        .ctx("propertyName", name));
    }
    for required in ["label", "type", "fieldType", "groupName"] {
        if field(required).is_empty() {
            return Err(ApiError::validation(format!("{required} is required")));
        }
    }
    let Some(ptype) = PropType::parse(field("type")) else {
        return Err(ApiError::validation(format!(
            "Unknown property type {:?} (expected string, number, date, datetime, enumeration or bool)",
            field("type")
        )));
    };
    let mut def = PropertyDef::new(name, field("label"), ptype, field("fieldType"));
    def.group_name = field("groupName").to_string();
    def.description = field("description").to_string();
    def.hubspot_defined = false;
    def.has_unique_value = body
        .get("hasUniqueValue")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (i, option) in body
        .get("options")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let value = option
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if value.is_empty() {
            return Err(ApiError::validation(format!("option {i} needs a value")));
        }
        def.options.push(PropOption {
            label: option
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or(value)
                .to_string(),
            value: value.to_string(),
            display_order: option
                .get("displayOrder")
                .and_then(Value::as_i64)
                .unwrap_or(i as i64),
            hidden: option
                .get("hidden")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    if ptype == PropType::Bool && def.options.is_empty() {
        for (i, (value, label)) in [("true", "Yes"), ("false", "No")].iter().enumerate() {
            def.options.push(PropOption {
                label: (*label).into(),
                value: (*value).into(),
                display_order: i as i64,
                hidden: false,
            });
        }
    }
    if ptype == PropType::Enumeration && def.options.is_empty() {
        return Err(ApiError::validation(format!(
            "Enumeration property {name} needs options"
        )));
    }
    Ok(def)
}

/// Adds a property definition to type `ty` (201 `Property`; 409 `CONFLICT` when the name is
/// taken).
///
/// # Errors
///
/// Returns `CONFLICT` for a name in use.
pub fn add_property(
    portal: &mut super::model::Portal,
    ty: usize,
    mut def: PropertyDef,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value, ApiError> {
    let object = &mut portal.types[ty];
    if object
        .properties
        .get(&def.name)
        .is_some_and(|p| !p.archived)
    {
        return Err(ApiError::new(
            409,
            "CONFLICT",
            format!("A property named '{}' already exists.", def.name),
        )
        .ctx("name", def.name.clone()));
    }
    def.created_at = now;
    let json = def.json();
    object.properties.insert(def.name.clone(), def);
    Ok(json)
}

/// `POST /crm/v3/properties/{objectType}`.
pub fn create_property(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match type_of(ctx, req) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    let body = req.body.clone().unwrap_or(Value::Null);
    let def = match parse_property_create(&body) {
        Ok(def) => def,
        Err(e) => return e.into(),
    };
    match add_property(&mut ctx.st.portal, ty, def, ctx.now) {
        Ok(json) => Reply::Json(201, json),
        Err(e) => e.into(),
    }
}

/// Archives a property (an admin deleting it). HubSpot-defined properties cannot be deleted.
///
/// # Errors
///
/// Returns `OBJECT_NOT_FOUND` or `VALIDATION_ERROR`.
pub fn drop_property(
    portal: &mut super::model::Portal,
    ty: usize,
    name: &str,
) -> Result<(), ApiError> {
    let object = &mut portal.types[ty];
    let type_id = object.type_id.clone();
    match object.properties.get_mut(name) {
        Some(def) if !def.archived => {
            if def.hubspot_defined {
                return Err(ApiError::validation(format!(
                    "{name} is a HubSpot defined property and cannot be deleted"
                )));
            }
            def.archived = true;
            Ok(())
        }
        _ => Err(property_not_found(name, &type_id)),
    }
}

/// `DELETE /crm/v3/properties/{objectType}/{propertyName}`: 204.
pub fn archive_property(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match type_of(ctx, req) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    match drop_property(&mut ctx.st.portal, ty, req.p("propertyName")) {
        Ok(()) => Reply::NoContent,
        Err(e) => e.into(),
    }
}

fn schema_json(ctx: &Ctx<'_>, ty: usize) -> Value {
    let portal = &ctx.st.portal;
    let object = &portal.types[ty];
    let associations: Vec<Value> = portal
        .assoc_types
        .iter()
        .filter(|t| t.from == object.type_id && t.label.is_none())
        .map(|t| {
            json!({"id": t.type_id.to_string(), "fromObjectTypeId": t.from, "toObjectTypeId": t.to,
                   "name": format!("{}_to_{}", object.singular, portal.type_index(&t.to).map(|i| portal.types[i].singular.clone()).unwrap_or_default()),
                   "createdAt": fmt_ts(object.created_at), "updatedAt": fmt_ts(object.created_at)})
        })
        .collect();
    object.schema_json(portal.portal_id, associations)
}

/// `GET /crm/v3/schemas`: the custom object schemas.
pub fn schemas(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let results: Vec<Value> = (0..ctx.st.portal.types.len())
        .filter(|i| ctx.st.portal.types[*i].custom)
        .map(|i| schema_json(ctx, i))
        .collect();
    Reply::ok(json!({"results": results}))
}

/// `GET /crm/v3/schemas/{objectType}`.
pub fn schema(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match type_of(ctx, req) {
        Ok(ty) => Reply::ok(schema_json(ctx, ty)),
        Err(e) => e.into(),
    }
}

/// `GET /crm/v3/owners`.
pub fn owners(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let limit = match req.q("limit") {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return ApiError::validation(format!("limit must be from 1 to 500, got {text}"))
                    .into();
            }
        },
    };
    let after: u64 = match req.q("after").map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return ApiError::validation("after must be a paging cursor").into(),
    };
    let archived = flag(req, "archived");
    let email = req.q("email");
    let mut matching = ctx.st.portal.owners.iter().filter(|o| {
        o.id >= after
            && o.archived == archived
            && email.is_none_or(|e| o.email.eq_ignore_ascii_case(e))
    });
    let results: Vec<Value> = matching.by_ref().take(limit).map(|o| o.json()).collect();
    let mut out = json!({"results": results});
    if let Some(next) = matching.next() {
        out["paging"] = json!({"next": {"after": next.id.to_string()}});
    }
    Reply::ok(out)
}

/// `GET /crm/v3/owners/{ownerId}`.
pub fn owner(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let key = req.p("ownerId");
    let by_user = req.q("idProperty") == Some("userId");
    let archived = flag(req, "archived");
    let found = ctx.st.portal.owners.iter().find(|o| {
        let id = if by_user { o.user_id } else { o.id };
        id.to_string() == key && o.archived == archived
    });
    match found {
        Some(o) => Reply::ok(o.json()),
        None => ApiError::new(404, "OBJECT_NOT_FOUND", format!("Owner {key} not found"))
            .ctx("id", key)
            .into(),
    }
}
