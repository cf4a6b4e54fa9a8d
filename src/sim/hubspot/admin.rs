//! The admin API under `/__sim/` (JSON, no token, not counted, not logged): act as a HubSpot
//! user, move the clock, read the request log, set faults.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /__sim/state` | | `{now, records: {type: live count}, owners}` |
//! | `POST /__sim/clock/advance` | `{"seconds": n}` | `{now}` |
//! | `GET /__sim/log?since=SEQ` | | `[LogEntry]` |
//! | `POST /__sim/faults` | `{"profile": "flaky" or a spec string}` | `{rules}` |
//! | `POST /__sim/limits/spend-daily` | | `{}` (every call answers 429 `DAILY` until the day turns) |
//! | `POST /__sim/objects/{objectType}` | `{"properties": {...}}` | `{id}` |
//! | `PATCH /__sim/objects/{objectType}/{objectId}` | `{"properties": {...}}` | `{id, changed}` |
//! | `DELETE /__sim/objects/{objectType}/{objectId}` | | `{archived}` |
//! | `POST /__sim/objects/{objectType}/{objectId}/merge` | `{"objectIdToMerge": id}` | `{id}` |
//! | `DELETE /__sim/properties/{objectType}/{propertyName}` | | `{}` |
//!
//! Errors answer HubSpot's error body with its status.

use serde_json::{Map, Value, json};

use super::model::{ApiError, fmt_ts};
use super::server::{Ctx, Reply, Req};
use crate::sim::faults::FaultProfile;

fn properties(req: &Req) -> Map<String, Value> {
    req.b("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn type_and_id(ctx: &Ctx<'_>, req: &Req) -> Result<(usize, u64), ApiError> {
    let ty = ctx.st.portal.type_or_err(req.p("objectType"))?;
    let id = req
        .p("objectId")
        .parse()
        .map_err(|_| ApiError::validation("objectId must be numeric"))?;
    Ok((ty, id))
}

/// `GET /__sim/state`.
pub fn state(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let mut records = Map::new();
    for ty in &ctx.st.portal.types {
        let live = ty
            .records
            .values()
            .filter(|r| r.archived_at.is_none())
            .count();
        records.insert(ty.name.clone(), json!(live));
    }
    Reply::ok(
        json!({"now": fmt_ts(ctx.now), "records": records, "owners": ctx.st.portal.owners.len()}),
    )
}

/// `POST /__sim/clock/advance`.
pub fn advance_clock(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Some(seconds) = req.b("seconds").and_then(Value::as_u64) else {
        return ApiError::validation("seconds must be a non-negative integer").into();
    };
    ctx.st
        .clock
        .advance(std::time::Duration::from_secs(seconds));
    Reply::ok(json!({"now": fmt_ts(ctx.st.clock.now())}))
}

/// `GET /__sim/log?since=SEQ`.
pub fn log(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let since: u64 = req.q("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let entries: Vec<Value> = ctx
        .st
        .log
        .iter()
        .filter(|e| e.seq > since)
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    Reply::ok(Value::Array(entries))
}

/// `POST /__sim/faults`.
pub fn set_faults(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let spec = req.b("profile").and_then(Value::as_str).unwrap_or("none");
    match spec.parse::<FaultProfile>() {
        Ok(profile) => {
            let rules = serde_json::to_value(&profile.rules).unwrap_or(Value::Null);
            ctx.st.faults = profile;
            Reply::ok(json!({"rules": rules}))
        }
        Err(error) => ApiError::validation(error.to_string()).into(),
    }
}

/// `POST /__sim/limits/spend-daily`.
pub fn spend_daily(ctx: &mut Ctx<'_>, _req: &Req) -> Reply {
    let limits = ctx.st.config.limits.clone();
    ctx.st.usage.spend_today(&limits, ctx.now);
    Reply::ok(json!({}))
}

/// `POST /__sim/objects/{objectType}`.
pub fn create(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match ctx.st.portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    match ctx.st.portal.create(ty, &properties(req), ctx.now) {
        Ok(id) => Reply::ok(json!({"id": id.to_string()})),
        Err(e) => e.into(),
    }
}

/// `PATCH /__sim/objects/{objectType}/{objectId}`.
pub fn edit(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (ty, id) = match type_and_id(ctx, req) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    match ctx.st.portal.update(ty, id, &properties(req), ctx.now) {
        Ok((id, changed)) => Reply::ok(json!({"id": id.to_string(), "changed": changed})),
        Err(e) => e.into(),
    }
}

/// `DELETE /__sim/objects/{objectType}/{objectId}`.
pub fn archive(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (ty, id) = match type_and_id(ctx, req) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let archived = ctx.st.portal.archive(ty, id, ctx.now);
    Reply::ok(json!({"archived": archived}))
}

/// `POST /__sim/objects/{objectType}/{objectId}/merge`.
pub fn merge(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (ty, id) = match type_and_id(ctx, req) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let loser = match req.b("objectIdToMerge") {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let Some(loser) = loser else {
        return ApiError::validation("objectIdToMerge is required").into();
    };
    match ctx.st.portal.merge(ty, id, loser, ctx.now) {
        Ok(id) => Reply::ok(json!({"id": id.to_string()})),
        Err(e) => e.into(),
    }
}

/// `DELETE /__sim/properties/{objectType}/{propertyName}`.
pub fn delete_property(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let ty = match ctx.st.portal.type_or_err(req.p("objectType")) {
        Ok(ty) => ty,
        Err(e) => return e.into(),
    };
    match super::meta::drop_property(&mut ctx.st.portal, ty, req.p("propertyName")) {
        Ok(()) => Reply::ok(json!({})),
        Err(e) => e.into(),
    }
}
