//! Smart campaigns (list, get, trigger, schedule) and Push Lead to Marketo.

use serde_json::{Value, json};

use super::{Ctx, Reply, Req, batch_size, input_objects, offset_from, paged};
use crate::sim::catalog::Campaign;
use crate::sim::clock::{fmt_time, parse_time};
use crate::sim::state::LeadWrite;

/// Most leads one trigger call may name.
pub const MAX_TRIGGER_LEADS: usize = 100;

fn campaign_json(ctx: &Ctx<'_>, c: &Campaign) -> Value {
    let program = ctx.st.db.programs.get(&c.program_id);
    json!({
        "id": c.id, "name": c.name, "description": "", "type": c.kind,
        "programId": c.program_id, "programName": program.map(|p| p.name.clone()),
        "workspaceName": "Default", "createdAt": fmt_time(c.created_at),
        "updatedAt": fmt_time(c.created_at), "active": c.active,
        "isRequestable": c.requestable,
    })
}

/// `GET /rest/v1/campaigns.json?id=&name=&programName=&workspaceName=&isTriggerable=`.
pub fn list(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ids = req.q_list("id");
    let names = req.q_list("name");
    let programs = req.q_list("programName");
    let triggerable = req.q("isTriggerable") == Some("true");
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let ctx: &Ctx<'_> = ctx;
    let items: Vec<Value> = ctx
        .st
        .db
        .catalog
        .campaigns
        .values()
        .filter(|c| ids.is_empty() || ids.contains(&c.id.to_string()))
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .filter(|c| !triggerable || (c.requestable && c.active))
        .map(|c| campaign_json(ctx, c))
        .filter(|v| {
            programs.is_empty()
                || v["programName"]
                    .as_str()
                    .is_some_and(|p| programs.iter().any(|n| n == p))
        })
        .collect();
    paged(items, offset, size)
}

fn campaign_id(req: &Req) -> Option<i64> {
    req.p("campaignId").parse().ok()
}

fn not_found(req: &Req) -> Reply {
    Reply::err(
        "1013",
        format!("Campaign '{}' not found", req.p("campaignId")),
    )
}

/// `GET /rest/v1/campaigns/{campaignId}.json`.
pub fn by_id(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ctx: &Ctx<'_> = ctx;
    match campaign_id(req).and_then(|id| ctx.st.db.catalog.campaigns.get(&id)) {
        Some(c) => Reply::result(vec![campaign_json(ctx, c)]),
        None => not_found(req),
    }
}

fn tokens(req: &Req) -> Vec<Value> {
    req.b("input")
        .and_then(|i| i.get("tokens"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `POST /rest/v1/campaigns/{campaignId}/trigger.json` `{"input":{"leads":[{"id":1}],"tokens":[]}}`:
/// only an active trigger campaign with a "Campaign is Requested" (Web Service API) trigger
/// accepts it; at most 100 leads, each of which must exist.
pub fn trigger(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(id) = campaign_id(req).filter(|id| ctx.st.db.catalog.campaigns.contains_key(id))
    else {
        return not_found(req);
    };
    let leads: Vec<Option<i64>> = req
        .b("input")
        .and_then(|i| i.get("leads"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| l.get("id").and_then(Value::as_i64))
        .collect();
    if leads.is_empty() {
        return Reply::err("1003", "input.leads cannot be blank");
    }
    if leads.len() > MAX_TRIGGER_LEADS {
        return Reply::err(
            "1003",
            format!("Too many leads, the maximum is {MAX_TRIGGER_LEADS}"),
        );
    }
    let mut ids = Vec::new();
    for lead in leads {
        match lead.filter(|l| ctx.st.db.lead(*l).is_some()) {
            Some(l) => ids.push(l),
            None => return Reply::err("1004", format!("Lead '{}' not found", lead.unwrap_or(0))),
        }
    }
    let tokens = tokens(req);
    let now = ctx.now;
    let Some(c) = ctx.st.db.catalog.campaigns.get_mut(&id) else {
        return not_found(req);
    };
    if !(c.requestable && c.active && c.kind == "trigger") {
        return Reply::err(
            "1003",
            format!("Trigger campaign '{}' is not requestable", c.name),
        );
    }
    c.requests
        .extend(ids.into_iter().map(|l| (l, now, tokens.clone())));
    Reply::result(vec![json!({"id": id})])
}

/// `POST /rest/v1/campaigns/{campaignId}/schedule.json` `{"input":{"runAt":..,"tokens":[]}}`:
/// schedules a batch campaign (five minutes from now when `runAt` is absent; never in the past).
pub fn schedule(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(id) = campaign_id(req).filter(|id| ctx.st.db.catalog.campaigns.contains_key(id))
    else {
        return not_found(req);
    };
    let input = req.b("input");
    let run_at = match input.and_then(|i| i.get("runAt")).and_then(Value::as_str) {
        None => ctx.now + chrono::Duration::minutes(5),
        Some(text) => match parse_time(text) {
            Some(at) if at >= ctx.now => at,
            Some(_) => return Reply::err("1003", "runAt cannot be in the past"),
            None => return Reply::err("1003", format!("Invalid runAt '{text}'")),
        },
    };
    let clone_to = input
        .and_then(|i| i.get("cloneToProgramName"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let tokens = tokens(req);
    let Some(c) = ctx.st.db.catalog.campaigns.get_mut(&id) else {
        return not_found(req);
    };
    if c.kind != "batch" {
        return Reply::err(
            "1003",
            format!("Campaign '{}' is not a batch campaign", c.name),
        );
    }
    c.runs.push((run_at, clone_to, tokens));
    Reply::result(vec![json!({"id": id})])
}

/// `POST /rest/v1/leads/push.json`: upserts leads by `lookupField` (email by default) and makes
/// them members of `programName` (status `programStatus`, or the program's first member status),
/// acquired by that program when created.
pub fn push_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let program_name = req.b("programName").and_then(Value::as_str).unwrap_or("");
    let Some(program_id) = ctx
        .st
        .db
        .programs
        .values()
        .find(|p| p.name == program_name)
        .map(|p| p.id)
    else {
        return Reply::err("1013", format!("Program '{program_name}' not found"));
    };
    let status = req
        .b("programStatus")
        .and_then(Value::as_str)
        .unwrap_or("Member")
        .to_string();
    if !super::members::is_status(&status) {
        return Reply::err("1025", format!("Program status '{status}' not found"));
    }
    let inputs = input_objects(req);
    if inputs.is_empty() {
        return Reply::err("1003", "input cannot be blank");
    }
    if inputs.len() > 300 {
        return Reply::err("1003", "Too many records in input, the maximum is 300");
    }
    let lookup = req
        .b("lookupField")
        .and_then(Value::as_str)
        .unwrap_or("email");
    let mut results = Vec::new();
    for input in &inputs {
        let written = super::leads::sync_one(ctx, "createOrUpdate", lookup, input);
        let (id, label) = match written {
            LeadWrite::Created(id) => (id, "created"),
            LeadWrite::Updated(id) => (id, "updated"),
            LeadWrite::Skipped(code, message) => {
                results.push(
                    json!({"status": "skipped", "reasons": [{"code": code, "message": message}]}),
                );
                continue;
            }
        };
        super::members::join(ctx, program_id, id, &status);
        results.push(json!({"id": id, "status": label}));
    }
    Reply::result(results)
}
