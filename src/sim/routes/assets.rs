//! Asset API routes beyond programs: static lists (browse, create, get, update, delete, by
//! name), program by name, folder by name, segmentations and segments, emails, folder tokens.
//!
//! Asset routes answer `success:true` with a warning and no `result` when nothing matches, take
//! `offset`/`maxReturn` (default 20, at most 200) paging, and form-encoded writes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{Ctx, Reply, Req};
use crate::sim::catalog::FOLDERS;
use crate::sim::clock::{fmt_time, parse_time};
use crate::sim::state::StaticList;

const NO_ASSETS: &str = "No assets found for the given search criteria.";

/// Returns the Asset API's answer for `items` (the "no assets" warning when empty).
pub fn asset_result(items: Vec<Value>) -> Reply {
    if items.is_empty() {
        return Reply::Ok(json!({"errors": [], "warnings": [NO_ASSETS]}));
    }
    Reply::Ok(json!({"errors": [], "warnings": [], "result": items}))
}

/// Returns an Asset API datetime (`...Z+0000`).
pub fn asset_time(at: DateTime<Utc>) -> String {
    format!("{}+0000", fmt_time(at))
}

/// Returns (offset, maxReturn) of an Asset API browse.
///
/// # Errors
///
/// Returns 1003 when `maxReturn` is not 1..=200.
pub fn window(req: &Req) -> Result<(usize, usize), Reply> {
    let max = match req.q("maxReturn") {
        None => 20,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(Reply::err(
                    "1003",
                    format!("Invalid maxReturn '{text}', must be 1 to 200"),
                ));
            }
        },
    };
    let offset = req.q("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((offset, max))
}

/// A date window, either end open.
pub type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Returns the `earliestUpdatedAt`/`latestUpdatedAt` window (either end open).
///
/// # Errors
///
/// Returns 1003 naming an unreadable date.
pub fn updated_window(req: &Req) -> Result<Window, Reply> {
    let read = |name: &str| match req.q(name) {
        None => Ok(None),
        Some(text) => parse_time(text)
            .map(Some)
            .ok_or_else(|| Reply::err("1003", format!("Invalid {name} '{text}'"))),
    };
    Ok((read("earliestUpdatedAt")?, read("latestUpdatedAt")?))
}

/// Returns whether an asset created at `created` and last updated at `updated` was created or
/// updated within the window.
pub fn in_window((from, to): Window, created: DateTime<Utc>, updated: DateTime<Utc>) -> bool {
    let inside = |at: DateTime<Utc>| from.is_none_or(|f| at >= f) && to.is_none_or(|t| at <= t);
    inside(created) || inside(updated)
}

/// A form field, or the same member of a JSON body.
fn field(req: &Req, name: &str) -> Option<String> {
    req.q(name)
        .map(str::to_string)
        .or_else(|| req.b(name).and_then(Value::as_str).map(str::to_string))
}

fn list_json(l: &StaticList) -> Value {
    json!({
        "id": l.id, "name": l.name, "description": l.description,
        "createdAt": asset_time(l.created_at), "updatedAt": asset_time(l.updated_at),
        "folder": {"id": l.folder.0, "type": l.folder.1},
        "computedUrl": format!("https://app-sim.marketo.com/#ST{}A1", l.id),
        "workspace": "Default",
    })
}

fn folder_of(text: &str) -> Option<(i64, &'static str)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let id = v.get("id").and_then(Value::as_i64)?;
    let kind = match v.get("type").and_then(Value::as_str)? {
        "Folder" => "Folder",
        "Program" => "Program",
        _ => return None,
    };
    Some((id, kind))
}

/// `GET /rest/asset/v1/folder/byName.json?name=&type=`: the marketing folder of that exact name
/// (`type=Program` finds none: "Not applicable for Programs").
pub fn folder_by_name(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let name = req.q("name").unwrap_or_default();
    let kind = req.q("type").unwrap_or("Folder");
    if !matches!(kind, "Folder" | "Program") {
        return Reply::err("1003", format!("Invalid folder type '{kind}'"));
    }
    let at = asset_time(ctx.now - chrono::Duration::days(90));
    let items = FOLDERS
        .iter()
        .filter(|(_, n)| kind == "Folder" && *n == name)
        .map(|(id, n)| {
            json!({
                "id": id, "name": n, "description": "",
                "createdAt": at, "updatedAt": at,
                "folderId": {"id": id, "type": "Folder"},
                "folderType": "Marketing Folder",
                "parent": {"id": 15, "type": "Folder"},
                "path": format!("/Marketing Activities/{n}"),
                "isArchive": false, "isSystem": false,
                "url": format!("https://app-sim.marketo.com/#MF{id}A1"),
                "workspace": "Default",
            })
        })
        .collect();
    asset_result(items)
}

/// `GET /rest/asset/v1/staticLists.json?folder=&offset=&maxReturn=&earliestUpdatedAt=&latestUpdatedAt=`.
pub fn static_lists(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (offset, max) = match window(req) {
        Ok(w) => w,
        Err(reply) => return reply,
    };
    let dates = match updated_window(req) {
        Ok(d) => d,
        Err(reply) => return reply,
    };
    let folder = match req.q("folder").map(folder_of) {
        Some(None) => {
            return Reply::err("1003", "Invalid folder, expected {\"id\":..,\"type\":..}");
        }
        Some(found) => found,
        None => None,
    };
    let items = ctx
        .st
        .db
        .lists
        .values()
        .filter(|l| folder.is_none_or(|f| l.folder == f))
        .filter(|l| in_window(dates, l.created_at, l.updated_at))
        .skip(offset)
        .take(max)
        .map(list_json)
        .collect();
    asset_result(items)
}

fn list_id(req: &Req) -> Option<i64> {
    req.p("id").parse().ok()
}

/// `GET /rest/asset/v1/staticList/{id}.json`.
pub fn static_list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let found = list_id(req).and_then(|id| ctx.st.db.lists.get(&id));
    asset_result(found.map(list_json).into_iter().collect())
}

/// `GET /rest/asset/v1/staticList/byName.json?name=`.
pub fn static_list_by_name(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let name = req.q("name").unwrap_or_default();
    let found = ctx.st.db.lists.values().find(|l| l.name == name);
    asset_result(found.map(list_json).into_iter().collect())
}

fn name_taken(ctx: &Ctx<'_>, name: &str, except: Option<i64>) -> bool {
    ctx.st
        .db
        .lists
        .values()
        .any(|l| l.name == name && Some(l.id) != except)
}

/// `POST /rest/asset/v1/staticLists.json` (form `folder={"id":..,"type":..}&name=&description=`):
/// creates an empty list; names are unique (709).
pub fn create_static_list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(name) = field(req, "name").filter(|n| !n.trim().is_empty()) else {
        return Reply::err("701", "name cannot be blank");
    };
    let folder_text = field(req, "folder").or_else(|| req.b("folder").map(Value::to_string));
    let Some(folder) = folder_text.as_deref().and_then(folder_of) else {
        return Reply::err("701", "folder cannot be blank");
    };
    let folder_ok = match folder.1 {
        "Program" => ctx.st.db.programs.contains_key(&folder.0),
        _ => FOLDERS.iter().any(|(id, _)| *id == folder.0),
    };
    if !folder_ok {
        return Reply::err("702", format!("Folder {} not found", folder.0));
    }
    if name_taken(ctx, &name, None) {
        return Reply::err("709", format!("Static list '{name}' already exists"));
    }
    let id = ctx
        .st
        .db
        .catalog
        .next_list_id
        .max(ctx.st.db.lists.keys().next_back().copied().unwrap_or(0) + 1);
    ctx.st.db.catalog.next_list_id = id + 1;
    let list = StaticList {
        id,
        name,
        created_at: ctx.now,
        updated_at: ctx.now,
        description: field(req, "description").unwrap_or_default(),
        folder,
        members: BTreeSet::new(),
    };
    let answer = list_json(&list);
    ctx.st.db.lists.insert(id, list);
    asset_result(vec![answer])
}

/// `POST /rest/asset/v1/staticList/{id}.json` (form `name=&description=`).
pub fn update_static_list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(id) = list_id(req).filter(|id| ctx.st.db.lists.contains_key(id)) else {
        return Reply::err("702", format!("Static list {} not found", req.p("id")));
    };
    let name = field(req, "name").filter(|n| !n.trim().is_empty());
    if let Some(name) = &name
        && name_taken(ctx, name, Some(id))
    {
        return Reply::err("709", format!("Static list '{name}' already exists"));
    }
    let description = field(req, "description");
    let now = ctx.now;
    let Some(list) = ctx.st.db.lists.get_mut(&id) else {
        return Reply::err("702", format!("Static list {id} not found"));
    };
    if let Some(name) = name {
        list.name = name;
    }
    if let Some(description) = description {
        list.description = description;
    }
    list.updated_at = now;
    asset_result(vec![list_json(list)])
}

/// `POST /rest/asset/v1/staticList/{id}/delete.json`.
pub fn delete_static_list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match list_id(req).and_then(|id| ctx.st.db.lists.remove(&id)) {
        Some(list) => asset_result(vec![json!({"id": list.id})]),
        None => Reply::err("702", format!("Static list {} not found", req.p("id"))),
    }
}

/// `GET /rest/asset/v1/program/byName.json?name=&includeTags=`.
pub fn program_by_name(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let name = req.q("name").unwrap_or_default();
    let found = ctx.st.db.programs.values().find(|p| p.name == name);
    let mut items = Vec::new();
    if let Some(p) = found {
        let mut item = super::misc::program_json(p);
        if req.q("includeTags") == Some("true") {
            item["tags"] = super::misc::tags_json(p);
        }
        items.push(item);
    }
    asset_result(items)
}

fn status_matches(req: &Req, item: &Map<String, Value>) -> bool {
    req.q("status")
        .is_none_or(|s| item.get("status").and_then(Value::as_str) == Some(s))
}

/// `GET /rest/asset/v1/segmentation.json?status=`.
pub fn segmentations(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let items = ctx
        .st
        .db
        .catalog
        .segmentations
        .iter()
        .filter(|(s, _)| status_matches(req, s))
        .map(|(s, _)| Value::Object(s.clone()))
        .collect();
    asset_result(items)
}

/// `GET /rest/asset/v1/segmentation/{id}/segments.json?status=&offset=&maxReturn=`.
pub fn segments(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (offset, max) = match window(req) {
        Ok(w) => w,
        Err(reply) => return reply,
    };
    let id = req.p("id").parse::<i64>().ok();
    let items = ctx
        .st
        .db
        .catalog
        .segmentations
        .iter()
        .filter(|(s, _)| s.get("id").and_then(Value::as_i64) == id)
        .flat_map(|(_, segs)| segs.iter())
        .filter(|s| status_matches(req, s))
        .skip(offset)
        .take(max)
        .map(|s| Value::Object(s.clone()))
        .collect();
    asset_result(items)
}

/// `GET /rest/asset/v1/emails.json?status=&folder=&offset=&maxReturn=&earliestUpdatedAt=&latestUpdatedAt=`.
pub fn emails(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (offset, max) = match window(req) {
        Ok(w) => w,
        Err(reply) => return reply,
    };
    let dates = match updated_window(req) {
        Ok(d) => d,
        Err(reply) => return reply,
    };
    let folder = req.q("folder").and_then(folder_of);
    let items = ctx
        .st
        .db
        .catalog
        .emails
        .iter()
        .filter(|e| status_matches(req, e))
        .filter(|e| {
            folder.is_none_or(|(id, kind)| {
                e["folder"]["value"].as_i64() == Some(id) && e["folder"]["type"] == kind
            })
        })
        .filter(|e| {
            let at = e["updatedAt"].as_str().and_then(parse_time);
            at.is_some_and(|at| in_window(dates, at, at))
        })
        .skip(offset)
        .take(max)
        .map(|e| Value::Object(e.clone()))
        .collect();
    asset_result(items)
}

/// `GET /rest/asset/v1/email/{id}.json`.
pub fn email(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let id = req.p("id").parse::<i64>().ok();
    let found = ctx
        .st
        .db
        .catalog
        .emails
        .iter()
        .find(|e| e["id"].as_i64() == id);
    asset_result(
        found
            .map(|e| Value::Object(e.clone()))
            .into_iter()
            .collect(),
    )
}

/// `GET /rest/asset/v1/email/byName.json?name=`.
pub fn email_by_name(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let name = req.q("name").unwrap_or_default();
    let found = ctx.st.db.catalog.emails.iter().find(|e| e["name"] == name);
    asset_result(
        found
            .map(|e| Value::Object(e.clone()))
            .into_iter()
            .collect(),
    )
}

/// `GET /rest/asset/v1/folder/{id}/tokens.json?folderType=Folder|Program` (default Folder).
pub fn folder_tokens(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let kind = match req.q("folderType").unwrap_or("Folder") {
        "Folder" => "Folder",
        "Program" => "Program",
        other => return Reply::err("1003", format!("Invalid folderType '{other}'")),
    };
    let Ok(id) = req.p("id").parse::<i64>() else {
        return Reply::err("1003", format!("Invalid folder id '{}'", req.p("id")));
    };
    let Some(tokens) = ctx.st.db.catalog.tokens.get(&(id, kind)) else {
        return Reply::err("702", format!("{kind} {id} not found"));
    };
    let name = match kind {
        "Program" => ctx.st.db.programs.get(&id).map(|p| p.name.clone()),
        _ => Some("Marketing Activities".to_string()),
    };
    asset_result(vec![json!({
        "folder": {"type": kind, "value": id, "folderName": name},
        "tokens": tokens,
    })])
}
