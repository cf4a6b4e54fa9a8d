//! The admin API under `/__sim/` (JSON, no token, not counted): act as a Marketo user, move the
//! clock, read counters and the request log, set faults.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /__sim/state` | | `{now, leads, maxLeadId, activities, exportJobs}` |
//! | `POST /__sim/clock/advance` | `{"seconds": n}` | `{now}` |
//! | `GET /__sim/counters` | | [`Counters`] |
//! | `GET /__sim/log?since=SEQ` | | `[LogEntry]` |
//! | `POST /__sim/faults` | `{"profile": "flaky" or a spec string}` | `{rules}` |
//! | `POST /__sim/tokens/expire` | | `{}` |
//! | `GET /__sim/leads?offset=&limit=` | | `[lead]` (all fields) |
//! | `POST /__sim/leads` | `{field: value}` | `{id}` |
//! | `GET /__sim/leads/{id}` | | lead or 404-style `{error}` |
//! | `POST /__sim/leads/{id}` | `{field: value}` | `{changed}` |
//! | `DELETE /__sim/leads/{id}` | | `{deleted}` |
//! | `POST /__sim/leads/{id}/merge` | `{"losers": [ids]}` | `{}` |
//! | `POST /__sim/companies` | `{externalCompanyId, ...}` | `{id}` |
//! | `DELETE /__sim/companies/{externalCompanyId}` | | `{deleted}` |
//! | `POST /__sim/visits` | `{"leads": [ids], "count": n, "overSecs": s}` | `{firstId, lastId, now}` |

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Counters;
use super::FaultProfile;
use super::routes::{Ctx, Reply, Req};
use super::schema::ObjKind;
use super::server::SimState;
use super::state::{Db, ObjStore};

fn bad(status: u16, message: String) -> Reply {
    Reply::Http {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(json!({"error": message}).to_string()),
        truncate_at: None,
    }
}

fn body_object(req: &Req) -> Map<String, Value> {
    req.body
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Creates a lead as a user would (New Lead activity, source "UI").
pub fn op_create_lead(st: &mut SimState, values: &Map<String, Value>) -> i64 {
    let now = st.now();
    st.db.create_lead(values, now, "New person")
}

/// Edits a lead as a user would; company fields of a linked lead are ignored.
pub fn op_update_lead(st: &mut SimState, id: i64, values: &Map<String, Value>) -> Option<usize> {
    let now = st.now();
    st.db.update_lead(id, values, now, "Manual edit")
}

/// Logs `count` Visit Webpage activities of `leads` (in turn) dated evenly over the next
/// `over_secs` seconds of sim time and moves the clock past them (see [`Db::log_visits`]);
/// returns their first and last ids, none when `count` is 0 or `leads` is empty.
pub fn op_log_visits(
    st: &mut SimState,
    leads: Vec<i64>,
    count: u64,
    over_secs: u64,
) -> Option<(i64, i64)> {
    let now = st.now();
    let ids = st.db.log_visits(leads, count, now, over_secs);
    st.clock
        .advance(std::time::Duration::from_secs(over_secs.max(1)));
    ids
}

/// Creates or updates a company by `externalCompanyId`; returns its id.
pub fn op_upsert_company(st: &mut SimState, values: &Map<String, Value>) -> Option<i64> {
    let now = st.now();
    let key = ObjStore::key_of(ObjKind::Company, values)?;
    let existing = st.db.objs(ObjKind::Company).by_key.get(&key).copied();
    Some(st.db.put_object(ObjKind::Company, existing, values, now).1)
}

/// Deletes a company by `externalCompanyId`.
pub fn op_delete_company(st: &mut SimState, key: &str) -> bool {
    let Some(id) = st.db.objs(ObjKind::Company).by_key.get(key).copied() else {
        return false;
    };
    st.db
        .objs_mut(ObjKind::Company)
        .remove(ObjKind::Company, id)
        .is_some()
}

/// Returns the counters.
pub fn op_counters(st: &mut SimState) -> Counters {
    let now = st.now();
    Counters {
        calls_today: st.limits.used_today(now),
        calls_logged: st.log.len() as u64,
        export_bytes_today: st.limits.export_bytes_today(now),
        leads: st.db.lead_count(),
    }
}

/// `GET /__sim/state`.
pub fn state(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::Ok(json!({
        "now": super::clock::fmt_time(ctx.now),
        "maxLeadId": ctx.st.db.max_lead_id(),
        "activities": ctx.st.db.activities.len(),
        "exportJobs": ctx.st.bulk.jobs.len(),
    }))
}

/// `POST /__sim/clock/advance` `{"seconds": n}`.
pub fn advance_clock(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(seconds) = req
        .b("seconds")
        .and_then(Value::as_f64)
        .filter(|s| *s >= 0.0 && s.is_finite())
    else {
        return bad(
            400,
            "body must be {\"seconds\": <non-negative number>}".into(),
        );
    };
    ctx.st
        .clock
        .advance(std::time::Duration::from_secs_f64(seconds));
    let now = ctx.st.now();
    Reply::Ok(json!({"now": super::clock::fmt_time(now)}))
}

/// `GET /__sim/counters`.
pub fn counters(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    Reply::Ok(serde_json::to_value(op_counters(ctx.st)).unwrap_or(Value::Null))
}

/// `GET /__sim/log?since=SEQ`.
pub fn log(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let since: u64 = req.q("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let entries: Vec<&super::LogEntry> = ctx.st.log.iter().filter(|e| e.seq > since).collect();
    Reply::Ok(json!({"entries": entries}))
}

/// `POST /__sim/faults` `{"profile": "..."}`.
pub fn set_faults(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let text = req.b("profile").and_then(Value::as_str).unwrap_or("none");
    match text.parse::<FaultProfile>() {
        Ok(profile) => {
            ctx.st.faults = profile.clone();
            Reply::Ok(json!({"rules": profile.rules}))
        }
        Err(error) => bad(400, error.to_string()),
    }
}

/// `POST /__sim/tokens/expire`.
pub fn expire_tokens(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    ctx.st.auth.expire_all(ctx.now);
    Reply::Ok(json!({}))
}

/// `GET /__sim/leads?offset=&limit=`.
pub fn list_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let offset: usize = req.q("offset").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = req
        .q("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .min(10_000);
    let names = Db::lead_field_names();
    let db = &ctx.st.db;
    let mut out = Vec::new();
    let mut seen = 0;
    db.for_each_lead(|lead| {
        if seen >= offset && out.len() < limit {
            out.push(db.lead_json(lead, &names));
        }
        seen += 1;
    });
    Reply::Ok(json!({"leads": out, "total": seen}))
}

fn id_of(req: &Req) -> Result<i64, Reply> {
    req.p("id")
        .parse()
        .map_err(|_| bad(400, format!("bad lead id {:?}", req.p("id"))))
}

/// `POST /__sim/leads`.
pub fn create_lead(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let id = ctx
        .st
        .db
        .create_lead(&body_object(req), ctx.now, "New person");
    Reply::Ok(json!({"id": id}))
}

/// `GET /__sim/leads/{id}`.
pub fn get_lead(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let id = match id_of(req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let db = &ctx.st.db;
    match db.lead(id) {
        Some(lead) => Reply::Ok(db.lead_json(&lead, &Db::lead_field_names())),
        None => bad(404, format!("no lead {id}")),
    }
}

/// `POST /__sim/leads/{id}`.
pub fn edit_lead(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let id = match id_of(req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    match ctx
        .st
        .db
        .update_lead(id, &body_object(req), ctx.now, "Manual edit")
    {
        Some(changed) => Reply::Ok(json!({"changed": changed})),
        None => bad(404, format!("no lead {id}")),
    }
}

/// `DELETE /__sim/leads/{id}`.
pub fn delete_lead(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match id_of(req) {
        Ok(id) => Reply::Ok(json!({"deleted": ctx.st.db.delete_lead(id, ctx.now)})),
        Err(reply) => reply,
    }
}

/// `POST /__sim/leads/{id}/merge` `{"losers": [..]}`.
pub fn merge_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let id = match id_of(req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let losers: Vec<i64> = req
        .b("losers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    if losers.is_empty() {
        return bad(400, "body must be {\"losers\": [lead ids]}".into());
    }
    match ctx.st.db.merge_leads(id, &losers, ctx.now) {
        Ok(()) => Reply::Ok(json!({})),
        Err(missing) => bad(404, format!("no lead {missing}")),
    }
}

/// `POST /__sim/companies`.
pub fn upsert_company(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match op_upsert_company(ctx.st, &body_object(req)) {
        Some(id) => Reply::Ok(json!({"id": id})),
        None => bad(400, "externalCompanyId is required".into()),
    }
}

/// `DELETE /__sim/companies/{externalCompanyId}`.
pub fn delete_company(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let key = req.p("externalCompanyId").to_string();
    Reply::Ok(json!({"deleted": op_delete_company(ctx.st, &key)}))
}

/// `POST /__sim/visits` `{"leads": [ids], "count": n, "overSecs": s}`: Visit Webpage activities
/// at volume (see [`op_log_visits`]).
pub fn log_visits(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let body = body_object(req);
    let leads: Option<Vec<i64>> = body
        .get("leads")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect());
    let count = body.get("count").and_then(Value::as_u64);
    let over = body.get("overSecs").and_then(Value::as_u64).unwrap_or(0);
    let (Some(leads), Some(count)) = (leads.filter(|l| !l.is_empty()), count) else {
        return bad(
            400,
            "body must be {\"leads\": [lead ids], \"count\": n, \"overSecs\": seconds}".into(),
        );
    };
    if let Some(missing) = leads.iter().find(|id| ctx.st.db.lead(**id).is_none()) {
        return bad(404, format!("no lead {missing}"));
    }
    let ids = op_log_visits(ctx.st, leads, count, over);
    let now = ctx.st.now();
    Reply::Ok(json!({
        "firstId": ids.map(|i| i.0),
        "lastId": ids.map(|i| i.1),
        "now": super::clock::fmt_time(now),
    }))
}
