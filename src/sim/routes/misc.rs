//! Identity, programs and program members, static lists, usage statistics.

use std::collections::BTreeMap;

use bytes::Bytes;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::leads::requested_fields;
use super::{Ctx, Reply, Req, assets, batch_size, input_objects, offset_from, paged};
use crate::sim::clock::{fmt_time, quota_day};

fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::Http {
        status,
        headers: vec![
            (
                "content-type".into(),
                "application/json;charset=UTF-8".into(),
            ),
            ("cache-control".into(), "no-store".into()),
        ],
        body: Bytes::from(json!({"error": error, "error_description": description}).to_string()),
        truncate_at: None,
    }
}

/// `GET|POST /identity/oauth/token`.
pub fn identity(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (Some(id), Some(secret)) = (req.q("client_id"), req.q("client_secret")) else {
        return oauth_error(
            401,
            "unauthorized",
            "An Authentication object was not found in the SecurityContext",
        );
    };
    if req.q("grant_type") != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type", "Unsupported grant type");
    }
    let id_ok = id.as_bytes().ct_eq(ctx.st.config.client_id.as_bytes());
    let secret_ok = secret
        .as_bytes()
        .ct_eq(ctx.st.config.client_secret.expose_secret().as_bytes());
    if !bool::from(id_ok & secret_ok) {
        return oauth_error(401, "invalid_client", "Bad client credentials");
    }
    let (token, left) = ctx.st.auth.token(ctx.now, &mut ctx.st.rng);
    Reply::Ok(
        json!({"access_token": token, "token_type": "bearer", "expires_in": left, "scope": "apis@sim.example.com"}),
    )
}

fn asset_time(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{}+0000", fmt_time(at))
}

/// Returns a program as the Asset API shows it.
pub fn program_json(p: &crate::sim::state::Program) -> Value {
    json!({
        "id": p.id, "name": p.name, "description": "", "createdAt": asset_time(p.created_at),
        "updatedAt": asset_time(p.updated_at), "url": format!("https://app-sim.marketo.com/#PG{}A1", p.id),
        "type": p.kind, "channel": p.channel, "folder": {"type": "Folder", "value": p.folder.0, "folderName": p.folder.1},
        "status": "", "workspace": "Default", "headStart": false,
    })
}

/// Returns a program's tags as Get Program by id or name shows them (browse leaves them out).
pub fn tags_json(p: &crate::sim::state::Program) -> Value {
    p.tags
        .iter()
        .map(|(t, v)| json!({"tagType": t, "tagValue": v}))
        .collect()
}

/// `GET /rest/asset/v1/programs.json` (browse; asset API paging with `offset`/`maxReturn`;
/// `earliestUpdatedAt`/`latestUpdatedAt` keep programs created or updated in the window).
pub fn programs(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (offset, max) = match assets::window(req) {
        Ok(w) => w,
        Err(reply) => return reply,
    };
    let dates = match assets::updated_window(req) {
        Ok(d) => d,
        Err(reply) => return reply,
    };
    let items: Vec<Value> = ctx
        .st
        .db
        .programs
        .values()
        .filter(|p| assets::in_window(dates, p.created_at, p.updated_at))
        .skip(offset)
        .take(max)
        .map(program_json)
        .collect();
    assets::asset_result(items)
}

/// `GET /rest/asset/v1/program/{id}.json`.
pub fn program_by_id(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let found = req
        .p("id")
        .parse::<i64>()
        .ok()
        .and_then(|id| ctx.st.db.programs.get(&id));
    match found {
        Some(p) => {
            let mut item = program_json(p);
            item["tags"] = tags_json(p);
            Reply::Ok(json!({"errors": [], "warnings": [], "result": [item]}))
        }
        None => Reply::Ok(
            json!({"errors": [], "warnings": ["No assets found for the given search criteria."]}),
        ),
    }
}

/// `GET /rest/v1/programs/members/describe.json`.
pub fn members_describe(_ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(vec![json!({
        "name": "Program Member", "description": "Program Member object",
        "dedupeFields": ["leadId", "programId"],
        "searchableFields": [["leadId"], ["statusName"], ["updatedAt"]],
        "fields": [
            {"name": "leadId", "displayName": "Lead Id", "dataType": "integer", "updateable": false},
            {"name": "programId", "displayName": "Program Id", "dataType": "integer", "updateable": false},
            {"name": "statusName", "displayName": "Status Name", "dataType": "string", "length": 255, "updateable": true},
            {"name": "reachedSuccess", "displayName": "Success", "dataType": "boolean", "updateable": false},
            {"name": "membershipDate", "displayName": "Membership Date", "dataType": "datetime", "updateable": false},
            {"name": "reachedSuccessDate", "displayName": "Success Date", "dataType": "datetime", "updateable": false},
            {"name": "acquiredBy", "displayName": "Acquired By", "dataType": "boolean", "updateable": false},
            {"name": "updatedAt", "displayName": "Updated At", "dataType": "datetime", "updateable": false},
            {"name": "isExhausted", "displayName": "Is Exhausted", "dataType": "boolean", "updateable": false},
            {"name": "nurtureCadence", "displayName": "Nurture Cadence", "dataType": "string", "length": 255, "updateable": false},
            {"name": "trackName", "displayName": "Track Name", "dataType": "string", "length": 255, "updateable": false},
            {"name": "webinarUrl", "displayName": "Webinar URL", "dataType": "url", "length": 255, "updateable": true},
            {"name": "registrationCode", "displayName": "Registration Code", "dataType": "string", "length": 255, "updateable": true},
        ],
    })])
}

/// `GET /rest/v1/programs/{programId}/members.json`.
pub fn members(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(program) = req
        .p("programId")
        .parse::<i64>()
        .ok()
        .and_then(|id| ctx.st.db.programs.get(&id))
    else {
        return Reply::err(
            "1013",
            format!("Program '{}' not found", req.p("programId")),
        );
    };
    let filter = req.q("filterType").unwrap_or_default();
    let values = req.q_list("filterValues");
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let updated = match filter {
        "updatedAt" => match updated_range(req) {
            Ok(range) => Some(range),
            Err(reply) => return reply,
        },
        "leadId" | "statusName" if values.is_empty() => {
            return Reply::err("1003", "filterValues cannot be blank");
        }
        "leadId" | "statusName" => None,
        _ => return Reply::err("1003", format!("Invalid filterType '{filter}'")),
    };
    let engagement = program.kind == "Engagement";
    let mut items = Vec::new();
    for (lead_id, (status, success, date)) in &program.members {
        let changed = program
            .member_updated
            .get(lead_id)
            .copied()
            .unwrap_or(*date);
        let keep = match (filter, updated) {
            ("leadId", _) => values.contains(&lead_id.to_string()),
            ("statusName", _) => values.contains(status),
            (_, Some((from, to))) => changed >= from && changed <= to,
            _ => false,
        };
        if keep {
            let mut item = json!({"seq": items.len(), "leadId": lead_id, "programId": program.id, "statusName": status,
                "reachedSuccess": success, "reachedSuccessDate": success.then(|| fmt_time(changed)),
                "membershipDate": fmt_time(*date), "acquiredBy": false, "updatedAt": fmt_time(changed),
                "isExhausted": false, "nurtureCadence": engagement.then_some("normal"),
                "trackName": engagement.then_some("Default")});
            for (name, value) in program.member_fields.get(lead_id).into_iter().flatten() {
                item[name] = value.clone();
            }
            items.push(item);
        }
    }
    paged(items, offset, size)
}

/// Returns the `startAt`/`endAt` range of a members query by `updatedAt` (both required, at most
/// 7 days apart).
fn updated_range(
    req: &Req,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), Reply> {
    let read = |name: &str| {
        req.q(name)
            .and_then(crate::sim::clock::parse_time)
            .ok_or_else(|| {
                Reply::err(
                    "1003",
                    format!("{name} is required for filterType updatedAt"),
                )
            })
    };
    let (from, to) = (read("startAt")?, read("endAt")?);
    if to < from || to - from > chrono::Duration::days(7) {
        return Err(Reply::err(
            "1003",
            "The updatedAt range must not exceed 7 days",
        ));
    }
    Ok((from, to))
}

/// `GET /rest/v1/leads/partitions.json`: the one partition of a subscription without lead
/// partitioning.
pub fn partitions(_ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(vec![
        json!({"id": 1, "name": "Default", "description": "Initial system lead partition"}),
    ])
}

fn list_json(l: &crate::sim::state::StaticList) -> Value {
    json!({"id": l.id, "name": l.name, "workspaceName": "Default", "createdAt": fmt_time(l.created_at), "updatedAt": fmt_time(l.updated_at)})
}

/// `GET /rest/v1/lists.json`.
pub fn lists(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ids = req.q_list("id");
    let names = req.q_list("name");
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let programs = req.q_list("programName");
    let db = &ctx.st.db;
    let items: Vec<Value> = db
        .lists
        .values()
        .filter(|l| ids.is_empty() || ids.contains(&l.id.to_string()))
        .filter(|l| names.is_empty() || names.contains(&l.name))
        .filter(|l| {
            programs.is_empty()
                || (l.folder.1 == "Program"
                    && db
                        .programs
                        .get(&l.folder.0)
                        .is_some_and(|p| programs.contains(&p.name)))
        })
        .map(list_json)
        .collect();
    paged(items, offset, size)
}

fn list_id(req: &Req) -> Option<i64> {
    req.p("listId").parse().ok()
}

/// `GET /rest/v1/lists/{listId}.json`.
pub fn list_by_id(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match list_id(req).and_then(|id| ctx.st.db.lists.get(&id)) {
        Some(list) => Reply::result(vec![list_json(list)]),
        None => Reply::err("1013", format!("List '{}' not found", req.p("listId"))),
    }
}

/// `GET /rest/v1/lists/{listId}/leads.json`.
pub fn list_members(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(list) = list_id(req).and_then(|id| ctx.st.db.lists.get(&id)) else {
        return Reply::err("1013", format!("List '{}' not found", req.p("listId")));
    };
    let fields = match requested_fields(req) {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let db = &ctx.st.db;
    let items: Vec<Value> = list
        .members
        .iter()
        .filter_map(|id| db.lead(*id))
        .map(|l| db.lead_json(&l, &fields))
        .collect();
    paged(items, offset, size)
}

/// `GET /rest/v1/leads/programs/{programId}.json` (legacy Get Leads by Program): the member
/// leads with a `membership` object.
pub fn leads_by_program(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(program) = req
        .p("programId")
        .parse::<i64>()
        .ok()
        .and_then(|id| ctx.st.db.programs.get(&id))
    else {
        return Reply::err(
            "1013",
            format!("Program '{}' not found", req.p("programId")),
        );
    };
    let fields = match requested_fields(req) {
        Ok(fields) => fields,
        Err(reply) => return reply,
    };
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let db = &ctx.st.db;
    let items: Vec<Value> = program
        .members
        .iter()
        .filter_map(|(id, member)| Some((db.lead(*id)?, member)))
        .map(|(lead, (status, success, date))| {
            let mut v = db.lead_json(&lead, &fields);
            v["membership"] = json!({
                "progressionStatus": status,
                "acquiredBy": true,
                "reachedSuccess": success,
                "membershipDate": fmt_time(*date),
            });
            v
        })
        .collect();
    paged(items, offset, size)
}

fn membership_ids(req: &Req) -> Vec<i64> {
    let mut ids: Vec<i64> = req
        .q_list("id")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    for input in input_objects(req) {
        if let Some(id) = input.get("id").and_then(Value::as_i64) {
            ids.push(id);
        }
    }
    // The same ids in the query and in the body (as the spec's DELETE requires both) name each
    // lead once.
    let mut seen = std::collections::BTreeSet::new();
    ids.retain(|id| seen.insert(*id));
    ids
}

fn change_membership(ctx: &mut Ctx<'_>, req: &Req, add: bool) -> Reply {
    let Some(id) = list_id(req).filter(|id| ctx.st.db.lists.contains_key(id)) else {
        return Reply::err("1013", format!("List '{}' not found", req.p("listId")));
    };
    let ids = membership_ids(req);
    if ids.is_empty() {
        return Reply::err("1003", "id cannot be blank");
    }
    if ids.len() > 300 {
        return Reply::err("1003", "Too many ids, the maximum is 300");
    }
    let mut results = Vec::new();
    for lead_id in ids {
        if ctx.st.db.lead(lead_id).is_none() {
            results.push(json!({"id": lead_id, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]}));
            continue;
        }
        // A refusal rule on `id` (`SimHandle::refuse_records`): this lead is skipped, the
        // others of the call go on, as Marketo answers per lead.
        let mut input = serde_json::Map::new();
        input.insert("id".into(), json!(lead_id));
        if let Some((code, message)) = ctx.st.refusal_for(&input) {
            results.push(json!({"id": lead_id, "status": "skipped", "reasons": [{"code": code, "message": message}]}));
            continue;
        }
        let Some(list) = ctx.st.db.lists.get_mut(&id) else {
            break;
        };
        let changed = if add {
            list.members.insert(lead_id)
        } else {
            list.members.remove(&lead_id)
        };
        if !add && !changed {
            results.push(json!({"id": lead_id, "status": "skipped", "reasons": [{"code": "1015", "message": "Lead not in list"}]}));
            continue;
        }
        if changed {
            let type_id = if add { 24 } else { 25 };
            let name = ctx.st.db.lists.get(&id).map(|l| l.name.clone());
            let mut attrs = serde_json::Map::new();
            attrs.insert("Source".into(), json!("Web service API"));
            ctx.st
                .db
                .log_activity(lead_id, ctx.now, type_id, (Some(id), name), attrs, None);
        }
        results.push(json!({"id": lead_id, "status": if add { "added" } else { "removed" }}));
    }
    Reply::result(results)
}

/// `POST /rest/v1/lists/{listId}/leads.json`.
pub fn list_add(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    change_membership(ctx, req, true)
}

/// `DELETE /rest/v1/lists/{listId}/leads.json`.
pub fn list_remove(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    change_membership(ctx, req, false)
}

/// `GET /rest/v1/lists/{listId}/leads/ismember.json`.
pub fn list_is_member(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(list) = list_id(req).and_then(|id| ctx.st.db.lists.get(&id)) else {
        return Reply::err("1013", format!("List '{}' not found", req.p("listId")));
    };
    let ids = membership_ids(req);
    if ids.len() > 300 {
        return Reply::err("1003", "Too many ids, the maximum is 300");
    }
    let db = &ctx.st.db;
    let results = ids
        .into_iter()
        .map(|id| {
            if db.lead(id).is_none() {
                json!({"id": id, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]})
            } else if list.members.contains(&id) {
                json!({"id": id, "status": "memberof"})
            } else {
                json!({"id": id, "status": "notmemberof"})
            }
        })
        .collect();
    Reply::result(results)
}

fn usage_days(ctx: &Ctx<'_>, days: i64) -> Vec<Value> {
    let today = quota_day(ctx.now);
    let mut out = Vec::new();
    for back in 0..days {
        let day = today - chrono::Duration::days(back);
        let total = ctx.st.limits.daily.get(&day).copied().unwrap_or(0);
        let apis: BTreeMap<String, u64> = ctx
            .st
            .limits
            .daily_by_api
            .get(&day)
            .cloned()
            .unwrap_or_default();
        let users: Vec<Value> = if total > 0 {
            vec![
                json!({"userId": format!("{}@api.sim.example.com", ctx.st.config.client_id), "count": total,
                "apiCalls": apis.iter().map(|(k, v)| json!({"apiName": k, "count": v})).collect::<Vec<_>>()}),
            ]
        } else {
            vec![]
        };
        out.push(json!({"date": day.to_string(), "total": total, "users": users}));
    }
    out
}

/// `GET /rest/v1/stats/usage.json` (today's counted calls).
pub fn usage(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(usage_days(ctx, 1))
}

/// `GET /rest/v1/stats/usage/last7days.json`.
pub fn usage_last7(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(usage_days(ctx, 7))
}

/// `GET /rest/v1/stats/errors.json` (today's error codes).
pub fn errors(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(error_days(ctx, 1))
}

/// `GET /rest/v1/stats/errors/last7days.json` (error codes of today and the 6 days before).
pub fn errors_last7(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::result(error_days(ctx, 7))
}

fn error_days(ctx: &Ctx<'_>, days: i64) -> Vec<Value> {
    let today = quota_day(ctx.now);
    (0..days)
        .map(|back| {
            let day = today - chrono::Duration::days(back);
            let codes = ctx.st.limits.errors.get(&day).cloned().unwrap_or_default();
            let total: u64 = codes.values().sum();
            let errors: Vec<Value> = codes
                .iter()
                .map(|(code, count)| json!({"errorCode": code, "count": count}))
                .collect();
            json!({"date": day.to_string(), "total": total, "errors": errors})
        })
        .collect()
}

fn lead_id_param(ctx: &Ctx<'_>, req: &Req) -> Result<i64, Reply> {
    req.p("leadId")
        .parse::<i64>()
        .ok()
        .filter(|id| ctx.st.db.lead(*id).is_some())
        .ok_or_else(|| Reply::err("1004", format!("Lead '{}' not found", req.p("leadId"))))
}

/// `GET /rest/v1/leads/{leadId}/listMembership.json`: the static lists holding the lead.
pub fn lead_lists(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let lead = match lead_id_param(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let items = ctx
        .st
        .db
        .lists
        .values()
        .filter(|l| l.members.contains(&lead))
        .map(list_json)
        .collect();
    paged(items, offset, size)
}

/// `GET /rest/v1/leads/{leadId}/programMembership.json`: the programs the lead is a member of,
/// with its progression status.
pub fn lead_programs(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let lead = match lead_id_param(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let items = ctx
        .st
        .db
        .programs
        .values()
        .filter_map(|p| Some((p, p.members.get(&lead)?)))
        .map(|(p, (status, success, date))| {
            let mut v = program_json(p);
            v["progressionStatus"] = json!(status);
            v["reachedSuccess"] = json!(success);
            v["acquiredBy"] = json!(false);
            v["isExhausted"] = json!(false);
            v["membershipDate"] = json!(fmt_time(*date));
            v
        })
        .collect();
    paged(items, offset, size)
}
