//! Parse + map + three-way diff of a generated lead export, on one thread: rows per second and
//! peak memory (VmHWM).
//!
//! `cargo bench --bench parse_map_diff -- 100000 1000000 5000000` (100 000 rows by default).
//! With more than one size, each size runs in a fresh child process so the peak memory printed
//! is that size's own. The export (about 30 columns shaped like a Bulk Lead Extract: ids,
//! emails, names, company fields, custom fields, dates, booleans, `null` literals, quoted
//! values with commas, doubled quotes, line breaks and U+2028) is written to a temporary file
//! first and is not timed, as in the service (download to disk, then parse).
//!
//! Each row is read by `ExportReader::next_row` typed with the lead schema (a reused row of
//! values in header order), turned into a canonical record by the `ColumnMapping` of a compiled
//! lead ↔ CRM contacts plan for the file's header (`Plan::for_columns(Side::Marketo, ..)`), and
//! reconciled against a base (the last agreed values) by `engine::reconcile::reconcile`. The base
//! of about 10% of the rows differs from the export (Marketo changed them) and about 1% also have
//! a CRM-side edit (conflicts). Only counters are kept: memory must not grow with the file.
//!
//! `-- --by-name 100000` measures the by-name path instead: the reader's iterator (an
//! `ExportRow` with a map of every column per row) and `Plan::to_canonical`, as the bootstrap
//! still reads exports.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use marketo_sync::config::parse_mapping;
use marketo_sync::engine::reconcile::{self, FieldRule, SideState, reconcile};
use marketo_sync::mapping::{Plan, compile};
use marketo_sync::marketo::csv::{ExportReader, FileFormat};
use marketo_sync::model::{FieldDef, FieldType, Fields, ObjectSchema, Side, Value};

const DEFAULT_ROWS: u64 = 100_000;

/// The export columns with their Marketo types (30 columns).
fn lead_columns() -> Vec<(&'static str, FieldType)> {
    let text = |n| FieldType::Text { max_len: Some(n) };
    vec![
        ("id", FieldType::Integer),
        ("email", FieldType::Email),
        ("firstName", text(255)),
        ("lastName", text(255)),
        ("company", text(255)),
        ("title", text(255)),
        ("phone", FieldType::Phone),
        ("mobilePhone", FieldType::Phone),
        ("address", FieldType::Text { max_len: None }),
        ("city", text(255)),
        ("state", text(255)),
        ("postalCode", text(255)),
        ("country", text(255)),
        ("website", FieldType::Url),
        ("industry", text(255)),
        ("annualRevenue", FieldType::Decimal),
        ("numberOfEmployees", FieldType::Integer),
        ("leadScore", FieldType::Integer),
        (
            "leadStatus",
            FieldType::Picklist {
                options: vec!["New".into(), "Working".into(), "Disqualified".into()],
            },
        ),
        ("leadSource", text(255)),
        ("unsubscribed", FieldType::Boolean),
        ("doNotCall", FieldType::Boolean),
        ("crmContactId", text(36)),
        ("createdAt", FieldType::DateTime),
        ("updatedAt", FieldType::DateTime),
        ("dateOfBirth", FieldType::Date),
        ("mktoPersonNotes", FieldType::Text { max_len: None }),
        ("preferredProduct_c", text(255)),
        ("trialExpires_c", FieldType::Date),
        ("customerTier_c", FieldType::Integer),
    ]
}

fn marketo_lead() -> ObjectSchema {
    let fields = lead_columns()
        .into_iter()
        .map(|(name, ty)| {
            let mut def = FieldDef::new(name, ty);
            def.read_only = matches!(name, "id" | "createdAt" | "updatedAt");
            def
        })
        .collect();
    ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec!["email".into()],
        fields,
    }
}

fn crm_contacts() -> ObjectSchema {
    let text = |n| FieldType::Text { max_len: Some(n) };
    let mut id = FieldDef::new("id", FieldType::Integer);
    id.read_only = true;
    let mut modified = FieldDef::new("date_modified", FieldType::DateTime);
    modified.read_only = true;
    let mut fields = vec![id, modified];
    for (name, ty) in [
        ("email_address", text(255)),
        ("first_name", text(100)),
        ("last_name", text(100)),
        ("account_name", text(255)),
        ("title", text(100)),
        ("phone_work", text(100)),
        ("phone_mobile", text(100)),
        ("primary_address_street", FieldType::Text { max_len: None }),
        ("primary_address_city", text(100)),
        ("primary_address_state", text(100)),
        ("primary_address_postalcode", text(20)),
        ("primary_address_country", text(100)),
        ("website", text(255)),
        ("industry", text(100)),
        ("annual_revenue", FieldType::Decimal),
        ("employees", FieldType::Integer),
        ("score", FieldType::Integer),
        (
            "status",
            FieldType::Picklist {
                options: vec!["new".into(), "in_process".into(), "dead".into()],
            },
        ),
        ("lead_source", text(100)),
        ("email_opt_out", FieldType::Integer),
        ("do_not_call", FieldType::Boolean),
        ("marketo_lead_id", FieldType::Integer),
        ("birthdate", FieldType::Date),
        ("description", FieldType::Text { max_len: None }),
        ("preferred_product", text(100)),
        ("trial_expires", FieldType::Date),
        ("tier", FieldType::Integer),
        ("sync_source", text(20)),
    ] {
        fields.push(FieldDef::new(name, ty));
    }
    ObjectSchema {
        side: Side::Crm,
        object: "contacts".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec![],
        fields,
    }
}

const MAPPING: &str = r#"
marketo_object = "lead"
crm_object = "contacts"
policy = "newest_wins"

[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_lead_id"

[[fields]]
marketo = "email"
crm = "email_address"
transform = ["trim", "lowercase"]

[[fields]]
marketo = "firstName"
crm = "first_name"
transform = ["trim"]

[[fields]]
marketo = "lastName"
crm = "last_name"
policy = "crm_wins"

[[fields]]
marketo = "company"
crm = "account_name"
direction = "to_crm"
transform = ["collapse_whitespace"]

[[fields]]
marketo = "title"
crm = "title"

[[fields]]
marketo = "phone"
crm = "phone_work"

[[fields]]
marketo = "mobilePhone"
crm = "phone_mobile"

[[fields]]
marketo = "address"
crm = "primary_address_street"

[[fields]]
marketo = "city"
crm = "primary_address_city"

[[fields]]
marketo = "state"
crm = "primary_address_state"
transform = ["uppercase"]

[[fields]]
marketo = "postalCode"
crm = "primary_address_postalcode"

[[fields]]
marketo = "country"
crm = "primary_address_country"

[[fields]]
marketo = "website"
crm = "website"
direction = "to_crm"

[[fields]]
marketo = "industry"
crm = "industry"
direction = "to_crm"

[[fields]]
marketo = "annualRevenue"
crm = "annual_revenue"
direction = "to_crm"

[[fields]]
marketo = "numberOfEmployees"
crm = "employees"
direction = "to_crm"

[[fields]]
marketo = "leadScore"
crm = "score"
direction = "to_crm"

[[fields]]
marketo = "leadStatus"
crm = "status"
default = "New"
[fields.values]
"New" = "new"
"Working" = "in_process"
"Disqualified" = "dead"

[[fields]]
marketo = "leadSource"
crm = "lead_source"

[[fields]]
marketo = "unsubscribed"
crm = "email_opt_out"

[[fields]]
marketo = "doNotCall"
crm = "do_not_call"

[[fields]]
marketo = "dateOfBirth"
crm = "birthdate"

[[fields]]
marketo = "mktoPersonNotes"
crm = "description"
direction = "to_crm"

[[fields]]
marketo = "preferredProduct_c"
crm = "preferred_product"

[[fields]]
marketo = "trialExpires_c"
crm = "trial_expires"

[[fields]]
marketo = "customerTier_c"
crm = "tier"

[[fields]]
name = "source"
crm = "sync_source"
direction = "to_crm"
constant = "marketo"
"#;

fn lead_plan() -> Plan {
    let loaded = parse_mapping("leads", Path::new("leads.toml"), MAPPING)
        .unwrap_or_else(|p| panic!("benchmark mapping does not parse: {p:#?}"));
    let (plan, problems) = compile(&loaded, &marketo_lead(), &crm_contacts());
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    assert!(
        errors.is_empty(),
        "benchmark mapping has errors: {errors:#?}"
    );
    let plan = plan.expect("benchmark plan");
    assert!(
        plan.disabled_fields().is_empty(),
        "benchmark plan disabled fields: {:?}",
        plan.disabled_fields()
    );
    plan
}

fn write_export(file: File, rows: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header: Vec<&str> = lead_columns().iter().map(|(n, _)| *n).collect();
    writeln!(out, "{}", header.join(","))?;
    const STATUS: [&str; 3] = ["New", "Working", "Disqualified"];
    const SOURCE: [&str; 4] = ["Web", "Trade Show", "Referral", "null"];
    for i in 0..rows {
        let notes = match i % 5 {
            0 => "null".to_owned(),
            1 => format!("\"called on {i}, said \"\"call back\"\"\nnext week\""),
            2 => "\"株式会社\u{2028}東京\"".to_owned(),
            _ => format!("plain note {i}"),
        };
        let mobile = if i % 3 == 0 {
            "null".to_owned()
        } else {
            format!("+44 7700 {:06}", i % 1_000_000)
        };
        let crm_key = if i % 4 == 0 {
            "null".to_owned()
        } else {
            format!("c{i:08}")
        };
        writeln!(
            out,
            "{id},Lead{i}@Example.com,First{i},Last{i},\"Acme,  Inc. {c}\",Engineer,+1 555 {p:04},\
             {mobile},\"{i} Main St\nSuite {s}\",Springfield,il,62701,USA,https://example.com/{i},\
             Software,{rev}.50,{emp},{score},{status},{source},{unsub},{dnc},{crm_key},\
             2024-01-02T03:04:05Z,2024-06-07T08:09:10Z,1980-05-{day:02},{notes},Widget {w},\
             2025-0{month}-15,{tier}",
            id = i + 1,
            c = i % 100,
            p = i % 10_000,
            s = i % 50,
            rev = i * 10,
            emp = i % 5000,
            score = i % 100,
            status = STATUS[(i % 3) as usize],
            source = SOURCE[(i % 4) as usize],
            unsub = i % 7 == 0,
            dnc = if i % 2 == 0 { "1" } else { "0" },
            day = i % 28 + 1,
            w = i % 12,
            month = i % 9 + 1,
            tier = i % 4,
        )?;
    }
    out.flush()?;
    Ok(out.get_ref().metadata()?.len())
}

/// Returns the peak resident set size in kB (VmHWM), where /proc is available.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the CPU time this thread has run, in seconds (/proc/thread-self/schedstat), so the
/// figure means something on a shared machine where wall time includes waiting for a core.
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Returns the base (last agreed canonical values) the store would hold for this row: equal to
/// the export for 90% of rows, with an older first name, score and status for 10%.
fn base_for(record: u64, canonical: &Fields) -> Fields {
    let mut base = canonical.clone();
    if record % 10 == 3 {
        base.insert("firstName".into(), Value::from("Old"));
        base.insert("leadScore".into(), Value::Int(-1));
        base.insert("leadStatus".into(), Value::from("New"));
    }
    base
}

#[derive(Default)]
struct Counters {
    rows: u64,
    row_errors: u64,
    map_errors: u64,
    changed: u64,
    field_writes: u64,
    conflicts: u64,
}

/// The counts one row adds, given its canonical record.
fn diff_row(
    c: &mut Counters,
    rules: &[FieldRule],
    crm_edit: &Fields,
    record: u64,
    canonical: &Fields,
) {
    let base = base_for(record, canonical);
    let crm = (record % 100 == 3).then_some(SideState {
        fields: crm_edit,
        modified_at: None,
    });
    let marketo = SideState {
        fields: canonical,
        modified_at: None,
    };
    let out = reconcile(rules, &base, Some(marketo), crm);
    if !out.is_noop() {
        c.changed += 1;
        c.field_writes += (out.to_crm.len() + out.to_marketo.len()) as u64;
    }
    c.conflicts += out.conflicts.len() as u64;
}

impl Counters {
    fn bad_row(&mut self, e: &dyn std::fmt::Display) {
        if self.row_errors == 0 {
            eprintln!("parse_map_diff: first bad row: {e}");
        }
        self.row_errors += 1;
    }

    fn bad_mapping(&mut self, e: &dyn std::fmt::Display) {
        if self.map_errors == 0 {
            eprintln!("parse_map_diff: first mapping error: {e}");
        }
        self.map_errors += 1;
    }
}

fn run(rows: u64, by_name: bool) {
    let plan = lead_plan();
    let rules: Vec<FieldRule> = reconcile::rules(&plan);
    let schema = marketo_lead();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("lead_export.csv");
    let size =
        write_export(File::create(&path).expect("create export"), rows).expect("write export");
    let rss_before = peak_rss_kb();

    let mut crm_edit = Fields::new();
    crm_edit.insert("firstName".into(), Value::from("Edited in CRM"));
    let mut c = Counters::default();
    let cpu_before = thread_cpu_secs();
    let started = Instant::now();
    let file = BufReader::with_capacity(1 << 16, File::open(&path).expect("open export"));
    let mut reader = ExportReader::new(file, FileFormat::Csv)
        .expect("export header")
        .typed(&schema);
    if by_name {
        for item in reader {
            let row = match item {
                Ok(row) => row,
                Err(e) => {
                    c.bad_row(&e);
                    continue;
                }
            };
            c.rows += 1;
            match plan.to_canonical(Side::Marketo, &row.fields) {
                Ok(canonical) => diff_row(&mut c, &rules, &crm_edit, row.record, &canonical),
                Err(e) => c.bad_mapping(&e),
            }
        }
    } else {
        let mut mapping = plan.for_columns(Side::Marketo, reader.headers());
        while let Some(item) = reader.next_row() {
            let row = match item {
                Ok(row) => row,
                Err(e) => {
                    c.bad_row(&e);
                    continue;
                }
            };
            c.rows += 1;
            match mapping.to_canonical(row.values()) {
                Ok(canonical) => diff_row(&mut c, &rules, &crm_edit, row.record(), canonical),
                Err(e) => c.bad_mapping(&e),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_before.and_then(|b| Some(thread_cpu_secs()? - b));

    assert_eq!(c.rows, rows, "every generated row must parse");
    assert_eq!(c.row_errors, 0, "no generated row may be rejected");
    assert_eq!(c.map_errors, 0, "no generated row may fail mapping");
    assert_eq!(c.changed, (rows + 7) / 10, "10% of rows differ");
    println!(
        "parse_map_diff: {rows} rows x {} columns ({} mapped fields), {:.1} MB file, {} path",
        lead_columns().len(),
        rules.len(),
        size as f64 / 1e6,
        if by_name { "by-name" } else { "by-column" }
    );
    println!(
        "parse_map_diff: {rows} rows: {secs:.2} s, {:.0} rows/s on one thread, {:.1} MB/s; \
         {} rows changed, {} field writes, {} conflicts",
        rows as f64 / secs,
        size as f64 / secs / 1e6,
        c.changed,
        c.field_writes,
        c.conflicts
    );
    match cpu_secs {
        Some(cpu) => println!(
            "parse_map_diff: {rows} rows: {cpu:.2} s on the cpu ({:.0}% of wall time), \
             {:.0} rows per cpu-second",
            100.0 * cpu / secs,
            rows as f64 / cpu
        ),
        None => println!("parse_map_diff: cpu time not available (no /proc/thread-self/schedstat)"),
    }
    match (rss_before, peak_rss_kb()) {
        (Some(before), Some(after)) => println!(
            "parse_map_diff: {rows} rows: peak RSS {after} kB ({:.1} MB; before parsing {before} kB)",
            after as f64 / 1024.0
        ),
        _ => println!("parse_map_diff: peak RSS not available (no /proc/self/status)"),
    }
}

fn main() {
    let by_name = std::env::args().any(|a| a == "--by-name");
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace(['_', ','], "").parse::<u64>().ok())
        .collect();
    match sizes.as_slice() {
        [] => run(DEFAULT_ROWS, by_name),
        [one] => run(*one, by_name),
        many => {
            let exe = std::env::current_exe().expect("own executable");
            for n in many {
                let mut child = Command::new(&exe);
                if by_name {
                    child.arg("--by-name");
                }
                let status = child
                    .arg(n.to_string())
                    .status()
                    .expect("run one size in a child process");
                assert!(status.success(), "size {n} failed: {status}");
            }
        }
    }
}
