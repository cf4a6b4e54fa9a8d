//! Bulk extract (leads, activities, the custom object) and bulk import (leads, custom objects).
//!
//! Jobs move over sim time: Created -> (enqueue) Queued -> Processing (at most 2) -> Completed
//! after `export_delay`; at most 10 jobs queued or processing. Files are built when a job
//! completes, shaped like genuine exports (literal `null`, activity `attributes` as a JSON object,
//! header = requested names or `columnHeaderNames`).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::SimConfig;
use super::clock::{fmt_time, parse_time};
use super::faults::FaultKind;
use super::limits::Limits;
use super::routes::{Ctx, Reply, Req, batch_size, offset_from, paged};
use super::schema::{ObjKind, lead_field, value_problem};
use super::server::RecordRefusalRule;
use super::state::{Db, ObjStore};

/// Most jobs queued or processing.
pub const MAX_QUEUED: usize = 10;
/// Most jobs processing at once.
pub const MAX_PROCESSING: usize = 2;
/// Longest date filter span, in days.
pub const MAX_SPAN_DAYS: i64 = 31;

const ACTIVITY_COLUMNS: &[&str] = &[
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
];

/// The columns of a program member export (as in a genuine file).
pub const PROGRAM_MEMBER_COLUMNS: &[&str] = &[
    "leadId",
    "programId",
    "program",
    "statusName",
    "reachedSuccess",
    "reachedSuccessDate",
    "acquiredBy",
    "membershipDate",
    "createdAt",
    "updatedAt",
    "statusReason",
    "isExhausted",
    "nurtureCadence",
    "trackName",
    "webinarUrl",
    "registrationCode",
    "registrationLikelihood",
    "attendanceLikelihood",
    "waitlistPriority",
];

/// What an export job exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// Leads.
    Leads,
    /// Activities.
    Activities,
    /// The custom object `car_c`.
    CustomObject,
    /// Program members.
    ProgramMembers,
}

impl ExportKind {
    /// Returns the kind served under a request's path.
    pub fn of(req: &Req) -> ExportKind {
        if req.path.starts_with("/bulk/v1/activities") {
            ExportKind::Activities
        } else if req.path.starts_with("/bulk/v1/customobjects") {
            ExportKind::CustomObject
        } else if req.path.starts_with("/bulk/v1/program/members") {
            ExportKind::ProgramMembers
        } else {
            ExportKind::Leads
        }
    }
}

/// Export job status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Created, not enqueued.
    Created,
    /// Waiting for a processing slot.
    Queued,
    /// Running.
    Processing,
    /// File ready.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl JobStatus {
    /// Returns the wire spelling (`Cancelled` as real responses spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "Created",
            JobStatus::Queued => "Queued",
            JobStatus::Processing => "Processing",
            JobStatus::Completed => "Completed",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Filter {
    created: Option<(DateTime<Utc>, DateTime<Utc>)>,
    updated: Option<(DateTime<Utc>, DateTime<Utc>)>,
    list: Option<i64>,
    list_name: Option<String>,
    type_ids: Vec<u32>,
    programs: Vec<i64>,
}

/// One export job.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// Export id.
    pub id: String,
    /// What the job exports.
    pub kind: ExportKind,
    format: String,
    /// Status.
    pub status: JobStatus,
    created_at: DateTime<Utc>,
    queued_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    fields: Vec<String>,
    headers: Vec<String>,
    filter: Filter,
    file: Option<bytes::Bytes>,
    records: u64,
}

/// One import batch.
#[derive(Debug, Clone)]
pub struct ImportJob {
    batch_id: i64,
    object: Option<String>,
    delimiter: u8,
    created_at: DateTime<Utc>,
    status: &'static str,
    file: bytes::Bytes,
    lookup: String,
    list_id: Option<i64>,
    processed: u64,
    header: Vec<String>,
    failures: Vec<(Vec<String>, String)>,
    warnings: Vec<(Vec<String>, String)>,
    message: String,
    /// The record refusal rules in force when the batch was queued (see
    /// [`super::SimHandle::refuse_records`]).
    refusals: Vec<RecordRefusalRule>,
}

/// Bulk jobs.
#[derive(Debug, Default)]
pub struct BulkState {
    /// Export jobs, oldest first.
    pub jobs: Vec<ExportJob>,
    imports: Vec<ImportJob>,
    slot_free_at: Option<DateTime<Utc>>,
}

/// The delimiter of an import file: Bulk Import's docs (bulk-lead-import.md, bulk-import.md)
/// name comma, tab and semicolon, so an import's SSV is semicolon-separated (the extract docs
/// disagree, see [`delimiter`]).
fn import_delimiter(format: &str) -> Option<u8> {
    match format.to_ascii_uppercase().as_str() {
        "SSV" => Some(b';'),
        other => delimiter(other),
    }
}

fn delimiter(format: &str) -> Option<u8> {
    match format.to_ascii_uppercase().as_str() {
        "CSV" => Some(b','),
        "TSV" => Some(b'\t'),
        "SSV" => Some(b' '),
        _ => None,
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::String(s) if s.is_empty() => "null".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes an export file row by row (no copy of the rows is held besides the file itself).
struct FileBuilder {
    writer: csv::Writer<Vec<u8>>,
    count: u64,
}

impl FileBuilder {
    fn new(delim: u8, header: &[String]) -> Self {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(delim)
            .from_writer(Vec::new());
        let _ = writer.write_record(header);
        FileBuilder { writer, count: 0 }
    }

    fn row<I, T>(&mut self, cells: I)
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let _ = self.writer.write_record(cells);
        self.count += 1;
    }

    fn finish(self) -> (bytes::Bytes, u64) {
        let data = self.writer.into_inner().unwrap_or_default();
        (bytes::Bytes::from(data), self.count)
    }
}

fn in_range(at: DateTime<Utc>, range: Option<(DateTime<Utc>, DateTime<Utc>)>) -> bool {
    range.is_none_or(|(a, b)| at >= a && at <= b)
}

fn build_file(job: &ExportJob, db: &Db) -> (bytes::Bytes, u64) {
    let delim = delimiter(&job.format).unwrap_or(b',');
    let mut out = FileBuilder::new(delim, &job.headers);
    if job.kind == ExportKind::ProgramMembers {
        for program in job
            .filter
            .programs
            .iter()
            .filter_map(|id| db.programs.get(id))
        {
            for (lead_id, (status, success, date)) in &program.members {
                if !in_range(*date, job.filter.updated) || db.lead(*lead_id).is_none() {
                    continue;
                }
                let flag = |b: bool| if b { "1" } else { "0" }.to_string();
                out.row(job.fields.iter().map(|f| match f.as_str() {
                    "leadId" => lead_id.to_string(),
                    "programId" => program.id.to_string(),
                    "program" => program.name.clone(),
                    "statusName" => status.clone(),
                    "reachedSuccess" => flag(*success),
                    "acquiredBy" => flag(true),
                    "isExhausted" => flag(false),
                    "membershipDate" | "createdAt" | "updatedAt" => fmt_time(*date),
                    _ => "null".to_string(),
                }));
            }
        }
        return out.finish();
    }
    if job.kind == ExportKind::CustomObject {
        let records = db
            .objs(ObjKind::Car)
            .records
            .values()
            .filter(|r| {
                in_range(r.created_at, job.filter.created)
                    && in_range(r.updated_at, job.filter.updated)
            })
            .filter(|r| {
                let lead = r.values.get("leadId").and_then(Value::as_i64);
                job.filter.list.is_none_or(|l| {
                    db.lists
                        .get(&l)
                        .is_some_and(|list| lead.is_some_and(|id| list.members.contains(&id)))
                })
            });
        for r in records {
            let values = Db::obj_json(ObjKind::Car, r, &job.fields);
            out.row(
                job.fields
                    .iter()
                    .map(|f| cell(values.get(f).unwrap_or(&Value::Null))),
            );
        }
        return out.finish();
    }
    if job.kind == ExportKind::Activities {
        // The feed is in date order: start after the last activity before the range.
        let after = job
            .filter
            .created
            .map_or(0, |(start, _)| db.last_id_before(start));
        let activities = db
            .feed_after(after)
            .filter(|a| a.type_id != 37)
            .filter(|a| in_range(a.date, job.filter.created))
            .filter(|a| job.filter.type_ids.is_empty() || job.filter.type_ids.contains(&a.type_id));
        for a in activities {
            out.row(job.fields.iter().map(|f| match f.as_str() {
                "marketoGUID" => a.id.to_string(),
                "leadId" => a.lead_id.to_string(),
                "activityDate" => fmt_time(a.date),
                "activityTypeId" => a.type_id.to_string(),
                "campaignId" => "null".to_string(),
                "primaryAttributeValueId" => a.primary_id.map_or("null".into(), |v| v.to_string()),
                "primaryAttributeValue" => a.primary_value.clone().unwrap_or_else(|| "null".into()),
                "attributes" => {
                    let attributes = a.attributes();
                    if attributes.is_empty() {
                        "null".to_string()
                    } else {
                        Value::Object(attributes.into_owned()).to_string()
                    }
                }
                "actionResult" => "succeeded".to_string(),
                _ => "null".to_string(),
            }));
        }
        return out.finish();
    }
    let list = job
        .filter
        .list
        .or_else(|| {
            let name = job.filter.list_name.as_deref()?;
            db.lists.values().find(|l| l.name == name).map(|l| l.id)
        })
        .and_then(|id| db.lists.get(&id));
    let by_list = job.filter.list.is_some() || job.filter.list_name.is_some();
    db.for_each_lead_in(job.filter.created, job.filter.updated, |lead| {
        if by_list && !list.is_some_and(|l| l.members.contains(&lead.id)) {
            return;
        }
        out.row(job.fields.iter().map(|f| cell(&db.lead_value(lead, f))));
    });
    out.finish()
}

impl BulkState {
    /// Advances every job to `now`.
    pub fn tick(
        &mut self,
        now: DateTime<Utc>,
        db: &mut Db,
        limits: &mut Limits,
        config: &SimConfig,
    ) {
        let delay = ChronoDuration::from_std(config.export_delay).unwrap_or(ChronoDuration::zero());
        loop {
            let processing = self
                .jobs
                .iter()
                .filter(|j| j.status == JobStatus::Processing)
                .count();
            if processing < MAX_PROCESSING {
                let next = self
                    .jobs
                    .iter_mut()
                    .filter(|j| j.status == JobStatus::Queued)
                    .min_by_key(|j| j.queued_at);
                if let Some(job) = next {
                    let queued = job.queued_at.unwrap_or(now);
                    job.started_at = Some(self.slot_free_at.map_or(queued, |t| t.max(queued)));
                    job.status = JobStatus::Processing;
                    continue;
                }
            }
            let due = self
                .jobs
                .iter_mut()
                .filter(|j| j.status == JobStatus::Processing)
                .filter(|j| j.started_at.is_some_and(|s| s + delay <= now))
                .min_by_key(|j| j.started_at);
            let Some(job) = due else { break };
            let done = job.started_at.unwrap_or(now) + delay;
            let (file, records) = build_file(job, db);
            limits.add_export_bytes(done, file.len() as u64);
            job.file = Some(file);
            job.records = records;
            job.finished_at = Some(done);
            job.status = JobStatus::Completed;
            self.slot_free_at = Some(done);
        }
        let import_delay =
            ChronoDuration::from_std(config.import_delay).unwrap_or(ChronoDuration::zero());
        for job in &mut self.imports {
            if job.status == "Queued" && job.created_at + import_delay <= now {
                run_import(job, db, job.created_at + import_delay);
                // The rows it needs later (failures, warnings) are kept apart; the file is not.
                job.file = bytes::Bytes::new();
            }
        }
        let horizon = now - ChronoDuration::days(7);
        self.jobs.retain(|j| j.created_at >= horizon);
    }
}

type Span = (DateTime<Utc>, DateTime<Utc>);

fn range_of(filter: &Value, name: &str) -> Result<Option<Span>, Reply> {
    let Some(range) = filter.get(name) else {
        return Ok(None);
    };
    let start = range
        .get("startAt")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let end = range
        .get("endAt")
        .and_then(Value::as_str)
        .and_then(parse_time);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(Reply::err(
            "1003",
            format!("{name} filter needs startAt and endAt datetimes"),
        ));
    };
    if end < start {
        return Err(Reply::err(
            "1003",
            format!("{name} endAt is before startAt"),
        ));
    }
    if end - start > ChronoDuration::days(MAX_SPAN_DAYS) {
        return Err(Reply::err(
            "1003",
            format!("{name} date range exceeds {MAX_SPAN_DAYS} days"),
        ));
    }
    Ok(Some((start, end)))
}

fn new_job_id(ctx: &mut Ctx<'_>) -> String {
    let bytes: [u8; 16] = ctx.st.rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn job_json(job: &ExportJob) -> Value {
    let mut v = json!({"exportId": job.id, "format": job.format, "status": job.status.as_str(), "createdAt": fmt_time(job.created_at)});
    if let Some(at) = job.queued_at {
        v["queuedAt"] = json!(fmt_time(at));
    }
    if let Some(at) = job.started_at {
        v["startedAt"] = json!(fmt_time(at));
    }
    if let Some(at) = job.finished_at {
        v["finishedAt"] = json!(fmt_time(at));
    }
    if job.status == JobStatus::Completed {
        let file = job.file.clone().unwrap_or_default();
        v["numberOfRecords"] = json!(job.records);
        v["fileSize"] = json!(file.len());
        v["fileChecksum"] = json!(format!("sha256:{}", hex::encode(Sha256::digest(&file))));
    }
    v
}

fn common_create(ctx: &mut Ctx<'_>, req: &Req, kind: ExportKind) -> Result<ExportJob, Reply> {
    let format = req
        .b("format")
        .and_then(Value::as_str)
        .unwrap_or("CSV")
        .to_ascii_uppercase();
    if delimiter(&format).is_none() {
        return Err(Reply::err(
            "1003",
            format!("Invalid format '{format}', expected CSV, TSV or SSV"),
        ));
    }
    let Some(filter) = req
        .b("filter")
        .filter(|f| f.as_object().is_some_and(|o| !o.is_empty()))
    else {
        return Err(Reply::err("1003", "filter cannot be blank"));
    };
    let mut fields: Vec<String> = req
        .b("fields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut parsed = Filter {
        created: range_of(filter, "createdAt")?,
        ..Filter::default()
    };
    if kind == ExportKind::ProgramMembers {
        parsed.updated = range_of(filter, "updatedAt")?;
        parsed.programs = filter
            .get("programIds")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        if let Some(id) = filter.get("programId").and_then(Value::as_i64) {
            parsed.programs.push(id);
        }
        if parsed.programs.is_empty() {
            return Err(Reply::err("1003", "programId cannot be blank"));
        }
        if let Some(bad) = parsed
            .programs
            .iter()
            .find(|id| !ctx.st.db.programs.contains_key(id))
        {
            return Err(Reply::err("1003", format!("Program '{bad}' not found")));
        }
        if fields.is_empty() {
            return Err(Reply::err("1003", "fields cannot be blank"));
        }
        if let Some(bad) = fields
            .iter()
            .find(|f| !PROGRAM_MEMBER_COLUMNS.contains(&f.as_str()))
        {
            return Err(Reply::err("1003", format!("Invalid field '{bad}'")));
        }
    } else if kind == ExportKind::CustomObject {
        if req.p("apiName") != super::routes::objects::CUSTOM_OBJECT {
            return Err(Reply::err(
                "1003",
                format!("Custom object '{}' not found", req.p("apiName")),
            ));
        }
        parsed.updated = range_of(filter, "updatedAt")?;
        parsed.list = filter.get("staticListId").and_then(Value::as_i64);
        if parsed.created.is_none() && parsed.updated.is_none() && parsed.list.is_none() {
            return Err(Reply::err(
                "1003",
                "filter must contain one of updatedAt, createdAt, staticListId",
            ));
        }
        if fields.is_empty() {
            return Err(Reply::err("1003", "fields cannot be blank"));
        }
        let schema = ObjKind::Car.schema();
        if let Some(bad) = fields
            .iter()
            .find(|f| !schema.fields.iter().any(|s| s.0 == f.as_str()))
        {
            return Err(Reply::err("1003", format!("Invalid field '{bad}'")));
        }
    } else if kind == ExportKind::Activities {
        if parsed.created.is_none() {
            return Err(Reply::err("1003", "createdAt filter is required"));
        }
        parsed.type_ids = filter
            .get("activityTypeIds")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default();
        if fields.is_empty() {
            fields = ACTIVITY_COLUMNS.iter().map(|s| s.to_string()).collect();
        }
        if let Some(bad) = fields
            .iter()
            .find(|f| !ACTIVITY_COLUMNS.contains(&f.as_str()) && *f != "actionResult")
        {
            return Err(Reply::err("1003", format!("Invalid field '{bad}'")));
        }
    } else {
        for key in ["smartListId", "smartListName"] {
            if filter.get(key).is_some() {
                return Err(Reply::err(
                    "1035",
                    format!("Unsupported filter type for target subscription: {key}"),
                ));
            }
        }
        if filter.get("updatedAt").is_some() && !ctx.st.config.updated_at_filter {
            return Err(Reply::err(
                "1035",
                "Unsupported filter type for target subscription: updatedAt",
            ));
        }
        parsed.updated = range_of(filter, "updatedAt")?;
        parsed.list = filter.get("staticListId").and_then(Value::as_i64);
        parsed.list_name = filter
            .get("staticListName")
            .and_then(Value::as_str)
            .map(str::to_string);
        let count = [
            parsed.created.is_some(),
            parsed.updated.is_some(),
            parsed.list.is_some(),
            parsed.list_name.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if count == 0 {
            return Err(Reply::err(
                "1003",
                "filter must contain one of createdAt, updatedAt, staticListId, staticListName",
            ));
        }
        // Marketo: "Only one filter type may be specified per export job".
        if count > 1 {
            return Err(Reply::err(
                "1003",
                "only one filter type may be specified per export job",
            ));
        }
        // A list Marketo does not hold is refused when the job is created, not exported empty.
        // The code is 1003 (invalid data), as for an unknown program or custom object here;
        // marketo-api.md names no code of its own for it (UNCONFIRMED against a live instance).
        if let Some(id) = parsed.list
            && !ctx.st.db.lists.contains_key(&id)
        {
            return Err(Reply::err("1003", format!("Static list '{id}' not found")));
        }
        if let Some(name) = &parsed.list_name
            && !ctx.st.db.lists.values().any(|l| &l.name == name)
        {
            return Err(Reply::err(
                "1003",
                format!("Static list '{name}' not found"),
            ));
        }
        if fields.is_empty() {
            return Err(Reply::err("1003", "fields cannot be blank"));
        }
        if let Some(bad) = fields.iter().find(|f| lead_field(f).is_none()) {
            return Err(Reply::err("1003", format!("Invalid field '{bad}'")));
        }
    }
    let names = req
        .b("columnHeaderNames")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let headers = fields
        .iter()
        .map(|f| {
            names
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or(f)
                .to_string()
        })
        .collect();
    if ctx.st.limits.export_bytes_today(ctx.now) >= ctx.st.config.bulk_daily_bytes {
        return Err(quota_error(ctx));
    }
    Ok(ExportJob {
        id: new_job_id(ctx),
        kind,
        format,
        status: JobStatus::Created,
        created_at: ctx.now,
        queued_at: None,
        started_at: None,
        finished_at: None,
        fields,
        headers,
        filter: parsed,
        file: None,
        records: 0,
    })
}

fn quota_error(ctx: &Ctx<'_>) -> Reply {
    Reply::err(
        "1029",
        format!(
            "Export daily quota {}MB exceeded",
            ctx.st.config.bulk_daily_bytes / (1024 * 1024)
        ),
    )
}

fn create(ctx: &mut Ctx<'_>, req: &Req, kind: ExportKind) -> Reply {
    match common_create(ctx, req, kind) {
        Ok(job) => {
            let answer = job_json(&job);
            ctx.st.bulk.jobs.push(job);
            Reply::result(vec![answer])
        }
        Err(reply) => reply,
    }
}

/// `POST /bulk/v1/leads/export/create.json`.
pub fn create_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    create(ctx, req, ExportKind::Leads)
}

/// `POST /bulk/v1/customobjects/{apiName}/export/create.json`.
pub fn create_custom(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    create(ctx, req, ExportKind::CustomObject)
}

/// `POST /bulk/v1/program/members/export/create.json`.
pub fn create_program_members(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    create(ctx, req, ExportKind::ProgramMembers)
}

/// `POST /bulk/v1/activities/export/create.json`.
pub fn create_activities(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    create(ctx, req, ExportKind::Activities)
}

fn job_index(ctx: &Ctx<'_>, req: &Req) -> Result<usize, Reply> {
    let id = req.p("exportId");
    let kind = ExportKind::of(req);
    ctx.st
        .bulk
        .jobs
        .iter()
        .position(|j| j.id == id && j.kind == kind)
        .ok_or_else(|| Reply::err("1003", format!("Export id '{id}' not found")))
}

/// `GET /bulk/v1/{leads|activities}/export.json`.
pub fn list_jobs(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let wanted: Vec<String> = req
        .q_list("status")
        .into_iter()
        .map(|s| s.to_ascii_lowercase().replace("canceled", "cancelled"))
        .collect();
    let (offset, size) = match (offset_from(req), batch_size(req)) {
        (Ok(o), Ok(s)) => (o, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let kind = ExportKind::of(req);
    let items = ctx
        .st
        .bulk
        .jobs
        .iter()
        .filter(|j| j.kind == kind)
        .filter(|j| wanted.is_empty() || wanted.contains(&j.status.as_str().to_ascii_lowercase()))
        .map(job_json)
        .collect();
    paged(items, offset, size)
}

/// `POST .../export/{exportId}/enqueue.json`.
pub fn enqueue(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let index = match job_index(ctx, req) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    match ctx.st.bulk.jobs[index].status {
        JobStatus::Created => {}
        JobStatus::Queued | JobStatus::Processing => {
            return Reply::err("1029", "Job already queued");
        }
        other => {
            return Reply::err(
                "1003",
                format!(
                    "Job is {}, only Created jobs can be enqueued",
                    other.as_str()
                ),
            );
        }
    }
    let busy = ctx
        .st
        .bulk
        .jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Queued | JobStatus::Processing))
        .count();
    if busy >= MAX_QUEUED {
        return Reply::err("1029", format!("Too many jobs ({MAX_QUEUED}) in queue"));
    }
    if ctx.st.limits.export_bytes_today(ctx.now) >= ctx.st.config.bulk_daily_bytes {
        return quota_error(ctx);
    }
    let now = ctx.now;
    let job = &mut ctx.st.bulk.jobs[index];
    job.status = JobStatus::Queued;
    job.queued_at = Some(now);
    // Marketo answers the enqueue with the job `Queued`; it starts processing on a later tick of
    // the simulator's clock (the next call), as a free slot allows.
    Reply::result(vec![job_json(job)])
}

/// `GET .../export/{exportId}/status.json`.
pub fn status(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match job_index(ctx, req) {
        Ok(i) => Reply::result(vec![job_json(&ctx.st.bulk.jobs[i])]),
        Err(reply) => reply,
    }
}

/// `POST .../export/{exportId}/cancel.json`.
pub fn cancel(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let index = match job_index(ctx, req) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let job = &mut ctx.st.bulk.jobs[index];
    if matches!(
        job.status,
        JobStatus::Created | JobStatus::Queued | JobStatus::Processing
    ) {
        job.status = JobStatus::Cancelled;
    }
    Reply::result(vec![job_json(job)])
}

fn parse_range(header: &str, len: usize) -> Option<(usize, usize)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: usize = suffix.parse().ok()?;
            (len.checked_sub(n.min(len))?, len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<usize>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && end < len).then_some((start, end))
}

/// `GET .../export/{exportId}/file.json` (with `Range` support).
pub fn file(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    let Ok(index) = job_index(ctx, req) else {
        return Reply::text(404, "Export job not found");
    };
    let job = &ctx.st.bulk.jobs[index];
    let fault = ctx.fault.as_ref().map(|f| f.kind);
    if job.status != JobStatus::Completed || fault == Some(FaultKind::File404) {
        return Reply::text(404, "Export file not found");
    }
    let data = job.file.clone().unwrap_or_default();
    let content_type = match job.format.as_str() {
        "TSV" => "text/tab-separated-values",
        _ => "text/csv",
    };
    let mut headers = vec![
        ("content-type".to_string(), content_type.to_string()),
        ("accept-ranges".into(), "bytes".into()),
    ];
    let (status, body) = match &req.range {
        None => (200, data.clone()),
        Some(range) => match parse_range(range, data.len()) {
            Some((start, end)) => {
                headers.push((
                    "content-range".into(),
                    format!("bytes {start}-{end}/{}", data.len()),
                ));
                (206, data.slice(start..=end))
            }
            None => {
                headers.push(("content-range".into(), format!("bytes */{}", data.len())));
                return Reply::Http {
                    status: 416,
                    headers,
                    body: bytes::Bytes::new(),
                    truncate_at: None,
                };
            }
        },
    };
    let truncate_at =
        (fault == Some(FaultKind::Truncate) && body.len() > 1).then(|| body.len() / 2);
    Reply::Http {
        status,
        headers,
        body,
        truncate_at,
    }
}

/// Returns the named parts of a `multipart/form-data` body.
fn multipart(content_type: &str, body: &[u8]) -> Option<Vec<(String, bytes::Bytes)>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let text = body;
    let positions: Vec<usize> = text
        .windows(delim.len())
        .enumerate()
        .filter(|(_, w)| *w == delim.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for pair in positions.windows(2) {
        let chunk = &text[pair[0] + delim.len()..pair[1]];
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let split = chunk.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&chunk[..split]).to_string();
        let mut content = &chunk[split + 4..];
        content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let name = head
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("name="))
            .map(|n| {
                n.trim_matches('"')
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string()
            })?;
        parts.push((name, bytes::Bytes::copy_from_slice(content)));
    }
    Some(parts)
}

fn import_common(ctx: &mut Ctx<'_>, req: &Req, object: Option<String>) -> Result<ImportJob, Reply> {
    let parts = multipart(&req.content_type, &req.raw)
        .ok_or_else(|| Reply::err("613", "Invalid multipart request"))?;
    let part = |name: &str| {
        parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let file = part("file").ok_or_else(|| Reply::err("1003", "file cannot be blank"))?;
    let format = req
        .q("format")
        .map(str::to_string)
        .or_else(|| part("format").map(|b| String::from_utf8_lossy(&b).trim().to_string()))
        .ok_or_else(|| Reply::err("1003", "format cannot be blank"))?;
    let delim = import_delimiter(&format).ok_or_else(|| {
        Reply::err(
            "1003",
            format!("Invalid format '{format}', expected csv, tsv or ssv"),
        )
    })?;
    let busy = ctx
        .st
        .bulk
        .imports
        .iter()
        .filter(|j| j.status == "Queued" || j.status == "Importing")
        .count();
    if busy >= MAX_QUEUED {
        return Err(Reply::err("1016", "Too many imports"));
    }
    let text = |name: &str| {
        req.q(name)
            .map(str::to_string)
            .or_else(|| part(name).map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    };
    let lookup = text("lookupField").unwrap_or_else(|| "email".to_string());
    if object.is_none() && !lead_field(&lookup).is_some_and(|(_, f)| f.searchable) {
        return Err(Reply::err(
            "1003",
            format!("Invalid lookupField '{lookup}'"),
        ));
    }
    let list_id = text("listId").and_then(|v| v.parse().ok());
    let batch_id = 1000 + ctx.st.bulk.imports.len() as i64 + 1;
    Ok(ImportJob {
        batch_id,
        object,
        delimiter: delim,
        created_at: ctx.now,
        status: "Queued",
        file,
        lookup,
        list_id,
        processed: 0,
        header: Vec::new(),
        failures: Vec::new(),
        warnings: Vec::new(),
        message: String::new(),
        refusals: ctx.st.record_refusals.clone(),
    })
}

fn run_import(job: &mut ImportJob, db: &mut Db, at: DateTime<Utc>) {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(job.delimiter)
        .flexible(true)
        .from_reader(job.file.as_ref());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(error) => {
            job.status = "Failed";
            job.message = format!("Import failed: unreadable header: {error}");
            return;
        }
    };
    job.header = header.clone();
    let kind = job.object.as_ref().map(|_| ObjKind::Car);
    for name in &header {
        let known = match kind {
            Some(k) => k.schema().fields.iter().any(|f| f.0 == name),
            None => lead_field(name).is_some(),
        };
        if !known {
            job.warnings
                .push((vec![], format!("Unknown column '{name}' ignored")));
        }
    }
    for record in reader.records() {
        let row: Vec<String> = match record {
            Ok(r) => r.iter().map(str::to_string).collect(),
            Err(error) => {
                job.failures
                    .push((vec![], format!("Malformed row: {error}")));
                continue;
            }
        };
        let mut values = Map::new();
        for (name, raw) in header.iter().zip(&row) {
            let known = match kind {
                Some(k) => k.schema().fields.iter().any(|f| f.0 == name),
                None => lead_field(name).is_some_and(|(_, f)| !f.read_only || name == "id"),
            };
            if known && !raw.is_empty() {
                values.insert(name.clone(), Value::String(raw.clone()));
            }
        }
        let refused = job
            .refusals
            .iter()
            .find(|r| values.get(&r.field).and_then(Value::as_str) == Some(r.value.as_str()))
            .map(|r| r.message.clone());
        if let Some(message) = refused {
            job.failures.push((row, message));
            continue;
        }
        if let Some(kind) = kind {
            // A value of the wrong type or too long for its field is refused, never shortened.
            if let Some(bad) = values.iter().find_map(|(name, value)| {
                let (_, _, data_type, _) = kind.schema().fields.iter().find(|f| f.0 == name)?;
                value_problem(name, data_type, value)
            }) {
                job.failures.push((row, bad));
                continue;
            }
            let Some(key) = ObjStore::key_of(kind, &values) else {
                job.failures.push((row, "missing.dedupe.fields".into()));
                continue;
            };
            // The file's text becomes the field's type, as a Sync call's JSON would carry it.
            for (name, _, data_type, _) in kind.schema().fields {
                let Some(text) = values.get(*name).and_then(Value::as_str) else {
                    continue;
                };
                let typed = match *data_type {
                    "integer" => text.trim().parse::<i64>().ok().map(Value::from),
                    "float" | "currency" => text.trim().parse::<f64>().ok().map(Value::from),
                    "boolean" => Some(Value::Bool(matches!(text, "true" | "1"))),
                    _ => None,
                };
                if let Some(typed) = typed {
                    values.insert((*name).to_owned(), typed);
                }
            }
            let existing = db.objs(kind).by_key.get(&key).copied();
            db.put_object(kind, existing, &values, at);
            job.processed += 1;
            continue;
        }
        if let Some(bad) = values.iter().find_map(|(n, v)| {
            let (_, f) = lead_field(n)?;
            let ok = match f.data_type {
                "integer" => v.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
                "email" => v.as_str().is_some_and(|s| s.contains('@') && s.is_ascii()),
                "boolean" => v
                    .as_str()
                    .is_some_and(|s| matches!(s, "true" | "false" | "1" | "0")),
                _ => true,
            };
            if !ok {
                return Some(format!("Invalid value for field '{n}'"));
            }
            // Too long for its field: refused, never shortened.
            crate::sim::schema::too_long(n, f.data_type, v)
        }) {
            job.failures.push((row, bad));
            continue;
        }
        let lookup_value = values
            .get(&job.lookup)
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(lookup_value) = lookup_value.filter(|v| !v.is_empty()) else {
            job.failures.push((
                row,
                format!("Value for lookup field '{}' not found", job.lookup),
            ));
            continue;
        };
        let typed: Map<String, Value> = values
            .into_iter()
            .map(|(n, v)| {
                let t = lead_field(&n).map(|(_, f)| f.data_type).unwrap_or("string");
                let s = v.as_str().unwrap_or_default().to_string();
                let typed = match t {
                    "integer" => s
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(s)),
                    "boolean" => Value::Bool(s == "true" || s == "1"),
                    _ => Value::String(s),
                };
                (n, typed)
            })
            .collect();
        let found = db.find_leads(&job.lookup, &lookup_value);
        let id = match found.as_slice() {
            [] if job.lookup == "id" => {
                job.failures.push((row, "Lead not found".into()));
                continue;
            }
            [] => db.create_lead(&typed, at, "List import"),
            [id] => {
                let lead = db.lead(*id).map(std::borrow::Cow::into_owned);
                if let Some(lead) = lead
                    && !db.refused_company_fields(&lead, &typed).is_empty()
                {
                    job.warnings.push((
                        row.clone(),
                        "Company fields ignored on a lead linked to a company".into(),
                    ));
                }
                db.update_lead(*id, &typed, at, "List import");
                *id
            }
            _ => {
                job.failures
                    .push((row, "Multiple leads match the lookup field".into()));
                continue;
            }
        };
        if let Some(list) = job.list_id.and_then(|l| db.lists.get_mut(&l)) {
            list.members.insert(id);
        }
        job.processed += 1;
    }
    job.status = "Complete";
    job.message = if job.failures.is_empty() {
        format!(
            "Import succeeded, {} records imported ({} members)",
            job.processed, job.processed
        )
    } else {
        format!(
            "Import completed with errors, {} records imported ({} members), {} failed",
            job.processed,
            job.processed,
            job.failures.len()
        )
    };
}

fn import_json(job: &ImportJob) -> Value {
    match &job.object {
        None => {
            json!({"batchId": job.batch_id, "importId": job.batch_id.to_string(), "status": job.status,
            "numOfLeadsProcessed": job.processed, "numOfRowsFailed": job.failures.len(),
            "numOfRowsWithWarning": job.warnings.len(), "message": job.message})
        }
        Some(object) => {
            json!({"batchId": job.batch_id, "operation": "import", "status": job.status, "objectApiName": object,
            "numOfObjectsProcessed": job.processed, "numOfRowsFailed": job.failures.len(),
            "numOfRowsWithWarning": job.warnings.len(), "message": job.message})
        }
    }
}

/// `POST /bulk/v1/leads.json` (multipart).
pub fn import_leads(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match import_common(ctx, req, None) {
        Ok(job) => {
            let answer = json!({"batchId": job.batch_id, "importId": job.batch_id.to_string(), "status": "Queued"});
            ctx.st.bulk.imports.push(job);
            Reply::result(vec![answer])
        }
        Err(reply) => reply,
    }
}

/// `POST /bulk/v1/customobjects/{apiName}/import.json` (multipart).
pub fn import_custom(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    if req.p("apiName") != super::routes::objects::CUSTOM_OBJECT {
        return Reply::err(
            "1003",
            format!("Custom object '{}' not found", req.p("apiName")),
        );
    }
    match import_common(ctx, req, Some(req.p("apiName").to_string())) {
        Ok(job) => {
            let answer = json!({"batchId": job.batch_id, "status": "Queued", "objectApiName": req.p("apiName")});
            ctx.st.bulk.imports.push(job);
            Reply::result(vec![answer])
        }
        Err(reply) => reply,
    }
}

fn import_job<'a>(ctx: &'a Ctx<'_>, req: &Req) -> Option<&'a ImportJob> {
    let id: i64 = req.p("batchId").parse().ok()?;
    let object = req.params.get("apiName");
    ctx.st
        .bulk
        .imports
        .iter()
        .find(|j| j.batch_id == id && j.object.as_ref() == object)
}

/// Import status for leads and custom objects.
pub fn import_status(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    match import_job(ctx, req) {
        Some(job) => Reply::result(vec![import_json(job)]),
        None => Reply::err("1003", format!("Batch id '{}' not found", req.p("batchId"))),
    }
}

fn rows_file(ctx: &Ctx<'_>, req: &Req, failures: bool) -> Reply {
    let Some(job) = import_job(ctx, req) else {
        return Reply::text(404, "Import batch not found");
    };
    let rows = if failures {
        &job.failures
    } else {
        &job.warnings
    };
    if job.status == "Queued" || (rows.is_empty() && job.object.is_some()) {
        return Reply::text(404, "File not found");
    }
    let mut header = job.header.clone();
    header.push(
        if failures {
            "Import Failure Reason"
        } else {
            "Import Warning Reason"
        }
        .to_string(),
    );
    let mut out = FileBuilder::new(job.delimiter, &header);
    for (row, reason) in rows {
        let mut row = row.clone();
        row.resize(job.header.len(), String::new());
        row.push(reason.clone());
        out.row(row);
    }
    let (body, _) = out.finish();
    Reply::Http {
        status: 200,
        headers: vec![("content-type".into(), "text/csv".into())],
        body,
        truncate_at: None,
    }
}

/// Import failures file.
pub fn import_failures(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    rows_file(ctx, req, true)
}

/// Import warnings file.
pub fn import_warnings(ctx: &mut Ctx<'_>, req: &Req) -> Reply {
    rows_file(ctx, req, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_http() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
    }

    #[test]
    fn multipart_parts_are_split() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\nemail\r\na@b.c\r\n--XX\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\ncsv\r\n--XX--\r\n";
        let parts = multipart("multipart/form-data; boundary=XX", body).unwrap();
        assert_eq!(parts[0].0, "file");
        assert_eq!(parts[0].1.as_ref(), b"email\r\na@b.c");
        assert_eq!(
            parts[1],
            ("format".to_string(), bytes::Bytes::from_static(b"csv"))
        );
    }
}
