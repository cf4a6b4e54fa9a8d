//! Program membership writes: member status (forward only), member data (custom fields), member
//! delete, and the legacy Change Lead Program Status (any status).

use serde_json::{Map, Value, json};

use super::{Ctx, Reply, Req, input_objects};
use crate::sim::schema::value_problem;

/// Program statuses in progression order (the simulated channels share one progression).
pub const PROGRESSION: &[&str] = &[
    "Not in Program",
    "Invited",
    "Member",
    "Registered",
    "Attended",
    "Influenced",
];

/// First status of the progression that counts as success.
const SUCCESS_RANK: usize = 4;

/// The program member custom fields: (API name, display name, data type).
pub const MEMBER_FIELDS: &[(&str, &str, &str)] = &[
    ("webinarUrl", "Webinar URL", "url"),
    ("registrationCode", "Registration Code", "string"),
];

/// The simulated channels: (id, name, applicable program type). Every channel shares
/// [`PROGRESSION`].
pub const CHANNELS: &[(i64, &str, &str)] = &[
    (1, "Webinar", "event"),
    (2, "Nurture", "nurture"),
    (3, "Online Advertising", "program"),
];

/// Returns a channel as the Asset API shows it.
fn channel_json(&(id, name, kind): &(i64, &str, &str)) -> Value {
    let statuses: Vec<Value> = PROGRESSION
        .iter()
        .enumerate()
        .map(|(step, status)| {
            json!({"name": status, "step": step * 10, "success": step >= SUCCESS_RANK,
                "hidden": false, "type": if step == 0 { "Not in Program" } else { "Standard" },
                "description": ""})
        })
        .collect();
    json!({"id": id, "name": name, "applicableProgramType": kind,
        "createdAt": "2015-01-01T00:00:00Z+0000", "updatedAt": "2015-01-01T00:00:00Z+0000",
        "progressionStatuses": statuses})
}

/// `GET /rest/asset/v1/channels.json?offset=&maxReturn=`.
pub fn channels(_ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let (offset, max) = match super::assets::window(req) {
        Ok(w) => w,
        Err(reply) => return reply,
    };
    let items = CHANNELS
        .iter()
        .skip(offset)
        .take(max)
        .map(channel_json)
        .collect();
    super::assets::asset_result(items)
}

/// `GET /rest/asset/v1/channel/byName.json?name=`.
pub fn channel_by_name(_ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let name = req.q("name").unwrap_or_default();
    let found = CHANNELS.iter().find(|c| c.1 == name);
    super::assets::asset_result(found.map(channel_json).into_iter().collect())
}

/// Returns whether `status` is a status of the simulated channels.
pub fn is_status(status: &str) -> bool {
    PROGRESSION.contains(&status)
}

/// Why one record is refused, with a built message: (code, message).
type RecordError = (&'static str, String);

/// Why a status change is refused: (code, message).
pub type Refusal = (&'static str, &'static str);

/// Sets `lead_id`'s status in `program_id`; with `forward_only`, a lead already at or past it
/// is refused (1037). Logs Change Status in Progression (104).
fn set_status(
    ctx: &mut Ctx<'_>,
    program_id: i64,
    lead_id: i64,
    status: &str,
    forward_only: bool,
) -> Result<(), Refusal> {
    let now = ctx.now;
    change_status(
        &mut ctx.st.db,
        now,
        program_id,
        lead_id,
        status,
        forward_only,
    )
}

/// Sets `lead_id`'s status in `program_id` at `now` (see [`set_status`]); what a marketer's
/// change in the Marketo UI does too.
///
/// # Errors
///
/// The refusal's (code, message): 1025 unknown status, 1004 no such lead, 1013 no such
/// program, 1037 already in (or, `forward_only`, past) the status.
pub fn change_status(
    db: &mut crate::sim::state::Db,
    now: chrono::DateTime<chrono::Utc>,
    program_id: i64,
    lead_id: i64,
    status: &str,
    forward_only: bool,
) -> Result<(), Refusal> {
    let rank = PROGRESSION
        .iter()
        .position(|p| *p == status)
        .ok_or(("1025", "Program status not found"))?;
    if db.lead(lead_id).is_none() {
        return Err(("1004", "Lead not found"));
    }
    let program = db
        .programs
        .get_mut(&program_id)
        .ok_or(("1013", "Program not found"))?;
    let old = program.members.get(&lead_id).map(|m| m.0.clone());
    let old_rank = old
        .as_deref()
        .and_then(|o| PROGRESSION.iter().position(|p| *p == o))
        .unwrap_or(0);
    if old.is_some() && ((forward_only && old_rank >= rank) || old_rank == rank) {
        return Err(("1037", "Lead already in or past this program status"));
    }
    let date = program.members.get(&lead_id).map_or(now, |m| m.2);
    let success = program.members.get(&lead_id).is_some_and(|m| m.1);
    program.members.insert(
        lead_id,
        (status.to_string(), success || rank >= SUCCESS_RANK, date),
    );
    program.member_updated.insert(lead_id, now);
    let name = program.name.clone();
    let mut attrs = Map::new();
    attrs.insert(
        "Old Status".into(),
        json!(old.unwrap_or_else(|| PROGRESSION[0].to_string())),
    );
    attrs.insert("New Status".into(), json!(status));
    db.log_activity(
        lead_id,
        now,
        104,
        (Some(program_id), Some(name)),
        attrs,
        None,
    );
    Ok(())
}

/// Makes `lead_id` a member of `program_id` with `status` unless it already is one.
pub fn join(ctx: &mut Ctx<'_>, program_id: i64, lead_id: i64, status: &str) {
    let member = ctx
        .st
        .db
        .programs
        .get(&program_id)
        .is_some_and(|p| p.members.contains_key(&lead_id));
    if !member {
        // The only refusals (unknown status, lead or program) were checked by the caller.
        let _ = set_status(ctx, program_id, lead_id, status, false);
    }
}

fn program_id(ctx: &Ctx<'_>, req: &Req) -> Result<i64, Reply> {
    req.p("programId")
        .parse::<i64>()
        .ok()
        .filter(|id| ctx.st.db.programs.contains_key(id))
        .ok_or_else(|| {
            Reply::err(
                "1013",
                format!("Program '{}' not found", req.p("programId")),
            )
        })
}

fn checked_inputs(req: &Req) -> Result<Vec<Map<String, Value>>, Reply> {
    let inputs = input_objects(req);
    if inputs.is_empty() {
        return Err(Reply::err("1003", "input cannot be blank"));
    }
    if inputs.len() > 300 {
        return Err(Reply::err("1003", "Too many inputs, the maximum is 300"));
    }
    Ok(inputs)
}

fn skip(seq: usize, lead_id: Option<i64>, (code, message): Refusal) -> Value {
    json!({"seq": seq, "leadId": lead_id, "status": "skipped",
        "reasons": [{"code": code, "message": message}]})
}

/// `POST /rest/v1/programs/{programId}/members/status.json`: sets the program status of up to
/// 300 leads; a lead already at or past the status is skipped with 1037, an unknown status
/// with 1025, a missing lead with 1004.
pub fn members_status(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let program = match program_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let Some(status) = req.b("statusName").and_then(Value::as_str) else {
        return Reply::err("1003", "statusName cannot be blank");
    };
    let inputs = match checked_inputs(req) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut results = Vec::new();
    for (seq, input) in inputs.iter().enumerate() {
        let lead_id = input.get("leadId").and_then(Value::as_i64);
        let outcome = lead_id
            .ok_or(("1004", "Lead not found"))
            .and_then(|id| set_status(ctx, program, id, status, true));
        results.push(match outcome {
            Ok(()) => json!({"seq": seq, "leadId": lead_id, "status": "updated"}),
            Err(refusal) => skip(seq, lead_id, refusal),
        });
    }
    Reply::result(results)
}

/// `POST /rest/v1/leads/programs/{programId}/status.json` `{"status":..,"input":[{"id":..}]}`
/// (Change Lead Program Status): any status of the channel, forward or back.
pub fn change_lead_status(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let program = match program_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let Some(status) = req.b("status").and_then(Value::as_str) else {
        return Reply::err("1003", "status cannot be blank");
    };
    if !is_status(status) {
        return Reply::err("1025", format!("Program status '{status}' not found"));
    }
    let inputs = match checked_inputs(req) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut results = Vec::new();
    for input in &inputs {
        let lead_id = input.get("id").and_then(Value::as_i64);
        let outcome = lead_id
            .ok_or(("1004", "Lead not found"))
            .and_then(|id| set_status(ctx, program, id, status, false));
        results.push(match outcome {
            Ok(()) => json!({"id": lead_id, "status": "updated"}),
            Err((code, message)) => json!({"id": lead_id, "status": "skipped",
                "reasons": [{"code": code, "message": message}]}),
        });
    }
    Reply::result(results)
}

/// Checks one member data record: the lead is a member, every other name is an updateable
/// member field with a fitting value. Returns the values to store.
fn member_data(
    ctx: &Ctx<'_>,
    program: i64,
    input: &Map<String, Value>,
) -> Result<(i64, Map<String, Value>), RecordError> {
    let lead_id = input
        .get("leadId")
        .and_then(Value::as_i64)
        .ok_or(("1003", "leadId cannot be blank".to_string()))?;
    let member = ctx
        .st
        .db
        .programs
        .get(&program)
        .is_some_and(|p| p.members.contains_key(&lead_id));
    if !member {
        return Err((
            "1004",
            format!("Lead '{lead_id}' is not a member of the program"),
        ));
    }
    let mut values = Map::new();
    for (name, value) in input.iter().filter(|(k, _)| *k != "leadId") {
        let Some(field) = MEMBER_FIELDS.iter().find(|f| f.0 == name) else {
            return Err((
                "1006",
                format!("Field '{name}' not found or not updateable"),
            ));
        };
        if let Some(problem) = value_problem(name, field.2, value) {
            return Err(("1003", problem));
        }
        values.insert(name.clone(), value.clone());
    }
    Ok((lead_id, values))
}

/// `POST /rest/v1/programs/{programId}/members.json`: updates program member custom fields.
pub fn members_data(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let program = match program_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let inputs = match checked_inputs(req) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut results = Vec::new();
    for (seq, input) in inputs.iter().enumerate() {
        let lead_id = input.get("leadId").and_then(Value::as_i64);
        match member_data(ctx, program, input) {
            Ok((lead, values)) => {
                let now = ctx.now;
                if let Some(p) = ctx.st.db.programs.get_mut(&program) {
                    p.member_fields.entry(lead).or_default().extend(values);
                    p.member_updated.insert(lead, now);
                }
                results.push(json!({"seq": seq, "leadId": lead, "status": "updated"}));
            }
            Err((code, message)) => results.push(json!({"seq": seq, "leadId": lead_id,
                "status": "skipped", "reasons": [{"code": code, "message": message}]})),
        }
    }
    Reply::result(results)
}

/// `POST /rest/v1/programs/{programId}/members/delete.json`: removes leads from the program.
pub fn members_delete(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let program = match program_id(ctx, req) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let inputs = match checked_inputs(req) {
        Ok(inputs) => inputs,
        Err(reply) => return reply,
    };
    let mut results = Vec::new();
    for (seq, input) in inputs.iter().enumerate() {
        let lead_id = input.get("leadId").and_then(Value::as_i64);
        let removed = ctx.st.db.programs.get_mut(&program).is_some_and(|p| {
            p.member_fields.remove(&lead_id.unwrap_or(0));
            p.member_updated.remove(&lead_id.unwrap_or(0));
            p.members.remove(&lead_id.unwrap_or(0)).is_some()
        });
        results.push(if removed {
            json!({"seq": seq, "leadId": lead_id, "status": "deleted"})
        } else {
            skip(
                seq,
                lead_id,
                ("1004", "Lead is not a member of the program"),
            )
        });
    }
    Reply::result(results)
}
