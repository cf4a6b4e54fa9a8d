//! Companies, sales persons, opportunities, opportunity roles and the custom object `car_c`:
//! describe, sync (with `dedupeBy`), query (incl. compound keys via `_method=GET`) and delete.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::{Ctx, Reply, Req, batch_size, input_objects, offset_from, paged};
use crate::sim::clock::fmt_time;
use crate::sim::schema::{ObjKind, describe_object, value_problem};
use crate::sim::state::{Db, ObjStore};

/// The custom object type the simulator knows.
pub const CUSTOM_OBJECT: &str = "car_c";

fn kind_of(req: &Req) -> Result<ObjKind, Reply> {
    let path = req.path.as_str();
    if path.starts_with("/rest/v1/opportunities/roles") {
        Ok(ObjKind::Role)
    } else if path.starts_with("/rest/v1/opportunities") {
        Ok(ObjKind::Opportunity)
    } else if path.starts_with("/rest/v1/companies") {
        Ok(ObjKind::Company)
    } else if path.starts_with("/rest/v1/salespersons") {
        Ok(ObjKind::SalesPerson)
    } else if req.p("customObjectName") == CUSTOM_OBJECT {
        Ok(ObjKind::Car)
    } else {
        Err(Reply::err(
            "1003",
            format!("Custom object '{}' not found", req.p("customObjectName")),
        ))
    }
}

/// Returns 1018 when native CRM sync blocks this call.
fn crm_blocked(ctx: &Ctx<'_>, kind: ObjKind, write: bool) -> Option<Reply> {
    if !ctx.st.config.native_crm_sync {
        return None;
    }
    let blocked = kind == ObjKind::Role || (write && kind != ObjKind::Car);
    blocked.then(|| {
        Reply::err(
            "1018",
            "CRM Enabled: the object is managed by the native CRM sync",
        )
    })
}

fn created_text(ctx: &Ctx<'_>) -> String {
    fmt_time(ctx.st.clock.start() - chrono::Duration::days(1000))
}

/// `GET .../describe.json` for every non-lead object.
pub fn describe(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match kind_of(req) {
        Ok(kind) => Reply::result(vec![describe_object(kind, &created_text(ctx))]),
        Err(reply) => reply,
    }
}

/// `GET /rest/v1/customobjects.json`.
pub fn list_custom(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let names = req.q_list("names");
    if !names.is_empty() && !names.iter().any(|n| n == CUSTOM_OBJECT) {
        return Reply::result(vec![]);
    }
    let mut meta = describe_object(ObjKind::Car, &created_text(ctx));
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("fields");
    }
    Reply::result(vec![meta])
}

fn field_known(kind: ObjKind, name: &str) -> bool {
    kind.schema().fields.iter().any(|f| f.0 == name) || (name == "marketoGuid" && kind.guid_keyed())
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

fn record_matches(
    kind: ObjKind,
    record: &crate::sim::state::ObjRecord,
    field: &str,
    wanted: &str,
) -> bool {
    match field {
        "id" if !kind.guid_keyed() => record.id.to_string() == wanted,
        "marketoGUID" | "marketoGuid" => record.guid == wanted,
        other => record.values.get(other).is_some_and(|v| text(v) == wanted),
    }
}

/// Finds a record by the keys in `input` (`dedupeFields` or `idField`).
fn find_by(
    db: &Db,
    kind: ObjKind,
    by_id: bool,
    input: &Map<String, Value>,
) -> Result<Option<i64>, String> {
    let schema = kind.schema();
    let store = db.objs(kind);
    if by_id {
        let Some(value) = input
            .get(schema.id_field)
            .or_else(|| input.get("marketoGuid"))
        else {
            return Err(format!(
                "Value for required field '{}' not found",
                schema.id_field
            ));
        };
        return Ok(if kind.guid_keyed() {
            store.by_guid(&text(value))
        } else {
            text(value)
                .parse::<i64>()
                .ok()
                .filter(|id| store.records.contains_key(id))
        });
    }
    match ObjStore::key_of(kind, input) {
        Some(key) => Ok(store.by_key.get(&key).copied()),
        None => {
            let missing = schema
                .dedupe
                .iter()
                .find(|f| input.get(**f).is_none_or(Value::is_null))
                .copied()
                .unwrap_or("dedupe field");
            Err(format!("Value for required field '{missing}' not found"))
        }
    }
}

fn ident(kind: ObjKind, store: &ObjStore, seq: usize, id: i64, status: &str) -> Value {
    if kind.guid_keyed() {
        let guid = store
            .records
            .get(&id)
            .map(|r| r.guid.clone())
            .unwrap_or_default();
        json!({"seq": seq, "status": status, "marketoGUID": guid})
    } else {
        json!({"seq": seq, "status": status, "id": id})
    }
}

fn skip(seq: usize, code: &str, message: impl Into<String>) -> Value {
    json!({"seq": seq, "status": "skipped", "reasons": [{"code": code, "message": message.into()}]})
}

/// `POST` sync (or `_method=GET` query) for every non-lead object.
pub fn sync_or_query(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    if req.method_get {
        return query(ctx, req);
    }
    let kind = match kind_of(req) {
        Ok(kind) => kind,
        Err(reply) => return reply,
    };
    if let Some(reply) = crm_blocked(ctx, kind, true) {
        return reply;
    }
    let action = req
        .b("action")
        .and_then(Value::as_str)
        .unwrap_or("createOrUpdate");
    if !matches!(action, "createOnly" | "updateOnly" | "createOrUpdate") {
        return Reply::err("1003", format!("Invalid action '{action}'"));
    }
    let dedupe_by = req
        .b("dedupeBy")
        .and_then(Value::as_str)
        .unwrap_or("dedupeFields");
    if !matches!(dedupe_by, "dedupeFields" | "idField") {
        return Reply::err("1003", format!("Invalid dedupeBy '{dedupe_by}'"));
    }
    let by_id = dedupe_by == "idField";
    if by_id && action == "createOnly" {
        return Reply::err("1003", "dedupeBy idField is not allowed with createOnly");
    }
    let Some(items) = req.b("input").and_then(Value::as_array) else {
        return Reply::err("1003", "input cannot be blank");
    };
    if items.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for (seq, input) in input_objects(req).into_iter().enumerate() {
        if let Some(bad) = input.keys().find(|k| !field_known(kind, k)) {
            results.push(skip(seq, "1006", format!("Field '{bad}' not found")));
            continue;
        }
        // A value of the wrong type or too long for its field is refused, never shortened.
        if let Some(message) = input.iter().find_map(|(name, value)| {
            let (_, _, data_type, _) = kind.schema().fields.iter().find(|f| f.0 == name)?;
            value_problem(name, data_type, value)
        }) {
            results.push(skip(seq, "1001", message));
            continue;
        }
        if let Some((code, message)) = ctx.st.refusal_for(&input) {
            results.push(skip(seq, &code, message));
            continue;
        }
        let existing = match find_by(&ctx.st.db, kind, by_id, &input) {
            Ok(found) => found,
            Err(message) => {
                results.push(skip(seq, "1003", message));
                continue;
            }
        };
        let key = ObjStore::key_of(kind, &input).unwrap_or_else(|| format!("{existing:?}"));
        if !seen.insert(key) {
            results.push(skip(seq, "1036", "Duplicate object in input"));
            continue;
        }
        match (action, existing) {
            ("createOnly", Some(_)) => {
                results.push(skip(seq, "1017", "Record already exists"));
                continue;
            }
            ("updateOnly", None) => {
                results.push(skip(seq, "1013", "Record not found"));
                continue;
            }
            (_, None) if by_id => {
                results.push(skip(seq, "1013", "Record not found"));
                continue;
            }
            _ => {}
        }
        if existing.is_none() {
            if kind == ObjKind::Opportunity && input.get("name").is_none_or(Value::is_null) {
                results.push(skip(
                    seq,
                    "1003",
                    "Value for required field 'name' not found",
                ));
                continue;
            }
            if kind == ObjKind::Role {
                let opp = input
                    .get("externalOpportunityId")
                    .map(text)
                    .unwrap_or_default();
                if !ctx
                    .st
                    .db
                    .objs(ObjKind::Opportunity)
                    .by_key
                    .contains_key(&opp)
                {
                    results.push(skip(seq, "1013", format!("Opportunity '{opp}' not found")));
                    continue;
                }
                let lead = input
                    .get("leadId")
                    .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
                if lead.is_none_or(|id| ctx.st.db.lead(id).is_none()) {
                    results.push(skip(seq, "1004", "Lead not found"));
                    continue;
                }
            }
        }
        let (created, id) = ctx.st.db.put_object(kind, existing, &input, ctx.now);
        let status = if created { "created" } else { "updated" };
        results.push(ident(kind, ctx.st.db.objs(kind), seq, id, status));
    }
    Reply::result(results)
}

/// `GET` query (and `POST ?_method=GET`, with compound keys in a JSON `input`).
pub fn query(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let kind = match kind_of(req) {
        Ok(kind) => kind,
        Err(reply) => return reply,
    };
    if let Some(reply) = crm_blocked(ctx, kind, false) {
        return reply;
    }
    let schema = kind.schema();
    let filter = req.q("filterType").map(str::to_string).or_else(|| {
        req.b("filterType")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(filter) = filter else {
        return Reply::err("1003", "filterType cannot be blank");
    };
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
        fields.push(schema.id_field.to_string());
        fields.extend(schema.dedupe.iter().map(|s| s.to_string()));
        fields.push("updatedAt".into());
        fields.push("createdAt".into());
        fields.dedup();
    }
    if let Some(bad) = fields.iter().find(|f| !field_known(kind, f)) {
        return Reply::err("1006", format!("Field '{bad}' not found"));
    }
    let filter_fields: Vec<&str> = match filter.as_str() {
        "dedupeFields" => schema.dedupe.to_vec(),
        "idField" => vec![schema.id_field],
        other => {
            let ok = schema
                .searchable
                .iter()
                .any(|set| set.len() == 1 && set[0] == other)
                || other == schema.id_field;
            if !ok {
                return Reply::err("1003", format!("Invalid filterType '{other}'"));
            }
            vec![
                schema
                    .searchable
                    .iter()
                    .flat_map(|s| s.iter())
                    .find(|f| **f == other)
                    .copied()
                    .unwrap_or(schema.id_field),
            ]
        }
    };
    // Each wanted key is one value per filter field.
    let mut wanted: Vec<Vec<String>> = Vec::new();
    if let Some(inputs) = req.b("input").and_then(Value::as_array) {
        for input in inputs {
            let row: Option<Vec<String>> = filter_fields
                .iter()
                .map(|f| input.get(*f).map(text))
                .collect();
            match row {
                Some(row) => wanted.push(row),
                None => {
                    return Reply::err(
                        "1003",
                        format!("Input must carry {}", filter_fields.join(", ")),
                    );
                }
            }
        }
    } else {
        if filter_fields.len() > 1 {
            return Reply::err(
                "1003",
                "Compound keys need POST ?_method=GET with a JSON input",
            );
        }
        wanted = req
            .q_list("filterValues")
            .into_iter()
            .map(|v| vec![v])
            .collect();
    }
    if wanted.is_empty() {
        return Reply::err("1003", "filterValues cannot be blank");
    }
    if wanted.len() > 300 {
        return Reply::err("1003", "Too many filterValues, the maximum is 300");
    }
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let store = ctx.st.db.objs(kind);
    let mut ids = Vec::new();
    for row in &wanted {
        if filter_fields == schema.dedupe {
            if let Some(id) = store.by_key.get(&row.join("\u{1f}"))
                && !ids.contains(id)
            {
                ids.push(*id);
            }
            continue;
        }
        for record in store.records.values() {
            if filter_fields
                .iter()
                .zip(row)
                .all(|(f, v)| record_matches(kind, record, f, v))
                && !ids.contains(&record.id)
            {
                ids.push(record.id);
            }
        }
    }
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| store.records.get(id))
        .enumerate()
        .map(|(seq, record)| {
            let mut out = Db::obj_json(kind, record, &fields);
            out.insert("seq".into(), json!(seq));
            Value::Object(out)
        })
        .collect();
    paged(items, offset, size)
}

/// `POST .../delete.json` with `deleteBy`.
pub fn delete(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let kind = match kind_of(req) {
        Ok(kind) => kind,
        Err(reply) => return reply,
    };
    if let Some(reply) = crm_blocked(ctx, kind, true) {
        return reply;
    }
    let delete_by = req
        .b("deleteBy")
        .and_then(Value::as_str)
        .unwrap_or("dedupeFields");
    if !matches!(delete_by, "dedupeFields" | "idField") {
        return Reply::err("1003", format!("Invalid deleteBy '{delete_by}'"));
    }
    let inputs = input_objects(req);
    if inputs.is_empty() {
        return Reply::err("1003", "input cannot be blank");
    }
    if inputs.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let mut results = Vec::new();
    for (seq, input) in inputs.iter().enumerate() {
        match find_by(&ctx.st.db, kind, delete_by == "idField", input) {
            Err(message) => results.push(skip(seq, "1003", message)),
            Ok(None) => results.push(skip(seq, "1013", "Record not found")),
            Ok(Some(id)) => {
                let answer = ident(kind, ctx.st.db.objs(kind), seq, id, "deleted");
                if let Some(record) = ctx.st.db.objs_mut(kind).remove(kind, id)
                    && kind == ObjKind::Role
                    && let Some(lead_id) = record.values.get("leadId").and_then(Value::as_i64)
                {
                    let opp = record.values.get("externalOpportunityId").map(text);
                    let mut attrs = Map::new();
                    attrs.insert(
                        "Role".into(),
                        record.values.get("role").cloned().unwrap_or(Value::Null),
                    );
                    ctx.st
                        .db
                        .log_activity(lead_id, ctx.now, 35, (None, opp), attrs, None);
                }
                results.push(answer);
            }
        }
    }
    Reply::result(results)
}
