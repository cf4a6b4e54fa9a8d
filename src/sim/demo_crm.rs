//! The demo CRM: a small CRM schema with sample data, on SQLite, PostgreSQL or MariaDB.
//!
//! Tables: `users` (salespersons), `accounts`, `contacts`, `leads`, `opportunities`,
//! `opportunity_contact_roles`, one custom table, `vehicles` (Marketo custom object `car_c`),
//! `events` (chat conversations written to Marketo as the custom activity `chatConversation_c`;
//! empty until something logs one, see [`insert_event`]), and `campaigns` / `campaign_members`
//! (Marketo programs and their members, filled by the sync), and `list_members` (static list
//! membership, filled by the sync and by hand).
//! Every table has an auto-generated `id`, a unique nullable `marketo_id`, an `updated_at`
//! maintained by the CRM and a `deleted` flag. The sample data is generated from a seed, so the
//! same seed always gives the same rows. [`adapter_options`] returns the matching options of the
//! SQL adapter.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tracing::info;

use crate::crm::CrmError;
use crate::crm::sql::dialect::{Dialect, SqlPool};

/// The demo objects (= table names), in dependency order.
pub const OBJECTS: &[&str] = &[
    "users",
    "accounts",
    "contacts",
    "leads",
    "opportunities",
    "opportunity_contact_roles",
    "vehicles",
    "events",
    "campaigns",
    "campaign_members",
    "list_members",
];

#[derive(Clone, Copy)]
enum Ty {
    Id,
    Ref,
    Str(u32),
    Int,
    Dec,
    Bool,
    Date,
    Ts,
    /// Long text (a chat transcript).
    Text,
    /// A nullable instant.
    At,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Ty)],
    unique: &'static [&'static str],
    index: &'static [&'static str],
}

const COMMON_TAIL: [(&str, Ty); 3] = [
    ("marketo_id", Ty::Str(64)),
    ("updated_at", Ty::Ts),
    ("deleted", Ty::Bool),
];

const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Ty::Id),
            ("email", Ty::Str(255)),
            ("first_name", Ty::Str(100)),
            ("last_name", Ty::Str(100)),
            ("title", Ty::Str(128)),
            ("phone", Ty::Str(40)),
        ],
        unique: &["email"],
        index: &[],
    },
    Table {
        name: "accounts",
        columns: &[
            ("id", Ty::Id),
            ("external_id", Ty::Str(64)),
            ("name", Ty::Str(255)),
            ("industry", Ty::Str(100)),
            ("annual_revenue", Ty::Dec),
            ("employees", Ty::Int),
            ("website", Ty::Str(255)),
            ("billing_city", Ty::Str(100)),
            ("billing_country", Ty::Str(100)),
            ("owner_id", Ty::Ref),
        ],
        unique: &["external_id"],
        index: &["name"],
    },
    Table {
        name: "contacts",
        columns: &[
            ("id", Ty::Id),
            ("email", Ty::Str(255)),
            ("first_name", Ty::Str(100)),
            ("last_name", Ty::Str(100)),
            ("title", Ty::Str(128)),
            ("phone", Ty::Str(40)),
            ("account_id", Ty::Ref),
            ("owner_id", Ty::Ref),
            ("lead_status", Ty::Str(40)),
            ("lead_source", Ty::Str(40)),
            ("do_not_email", Ty::Bool),
            ("merged_into", Ty::Ref),
            ("company", Ty::Str(255)),
            ("deleted_in_marketo", Ty::Bool),
        ],
        unique: &[],
        index: &["email"],
    },
    Table {
        name: "leads",
        columns: &[
            ("id", Ty::Id),
            ("email", Ty::Str(255)),
            ("first_name", Ty::Str(100)),
            ("last_name", Ty::Str(100)),
            ("company", Ty::Str(255)),
            ("title", Ty::Str(128)),
            ("phone", Ty::Str(40)),
            ("lead_status", Ty::Str(40)),
            ("lead_source", Ty::Str(40)),
            ("owner_id", Ty::Ref),
            ("converted_contact_id", Ty::Ref),
        ],
        unique: &[],
        index: &["email"],
    },
    Table {
        name: "opportunities",
        columns: &[
            ("id", Ty::Id),
            ("external_id", Ty::Str(64)),
            ("name", Ty::Str(255)),
            ("account_id", Ty::Ref),
            ("amount", Ty::Dec),
            ("stage", Ty::Str(40)),
            ("is_closed", Ty::Bool),
            ("is_won", Ty::Bool),
            ("close_date", Ty::Date),
            ("created_at", Ty::Ts),
            ("owner_id", Ty::Ref),
        ],
        unique: &["external_id"],
        index: &[],
    },
    Table {
        name: "opportunity_contact_roles",
        columns: &[
            ("id", Ty::Id),
            ("external_id", Ty::Str(64)),
            ("opportunity_id", Ty::Ref),
            ("contact_id", Ty::Ref),
            ("role", Ty::Str(64)),
            ("is_primary", Ty::Bool),
        ],
        unique: &["external_id"],
        index: &[],
    },
    Table {
        name: "events",
        columns: &[
            ("id", Ty::Id),
            ("contact_id", Ty::Ref),
            ("email", Ty::Str(255)),
            ("topic", Ty::Str(255)),
            ("transcript", Ty::Text),
            ("occurred_at", Ty::Ts),
        ],
        unique: &[],
        index: &[],
    },
    Table {
        name: "vehicles",
        columns: &[
            ("id", Ty::Id),
            ("vin", Ty::Str(17)),
            ("contact_id", Ty::Ref),
            ("make", Ty::Str(64)),
            ("model", Ty::Str(64)),
            ("model_year", Ty::Int),
        ],
        unique: &["vin"],
        index: &[],
    },
    // Marketo programs (filled by the sync; `marketo_id` holds the program id).
    Table {
        name: "campaigns",
        columns: &[
            ("id", Ty::Id),
            ("name", Ty::Str(255)),
            ("channel", Ty::Str(100)),
            ("program_type", Ty::Str(40)),
            ("description", Ty::Str(2000)),
            ("folder", Ty::Str(255)),
            ("tags", Ty::Str(255)),
            ("marketo_url", Ty::Str(255)),
        ],
        unique: &[],
        index: &[],
    },
    // Program members (`marketo_id` holds `<programId>:<leadId>`).
    Table {
        name: "campaign_members",
        columns: &[
            ("id", Ty::Id),
            // CRM keys as text, as the sync's synthetic key fields carry them.
            ("campaign_id", Ty::Str(64)),
            ("contact_id", Ty::Str(64)),
            ("status", Ty::Str(64)),
            ("reached_success", Ty::Bool),
            ("success_date", Ty::At),
            ("membership_date", Ty::At),
            ("acquired_by", Ty::Bool),
            ("nurture_cadence", Ty::Str(40)),
            ("is_exhausted", Ty::Bool),
            ("webinar_url", Ty::Str(255)),
        ],
        unique: &[],
        index: &["campaign_id"],
    },
    // Static list members (`marketo_id` holds `<listId>:<leadId>`); `is_member` false is a
    // removal (the row's soft delete, written both ways).
    Table {
        name: "list_members",
        columns: &[
            ("id", Ty::Id),
            ("contact_id", Ty::Str(64)),
            ("list_name", Ty::Str(255)),
            ("is_member", Ty::Bool),
        ],
        unique: &[],
        index: &["contact_id"],
    },
];

fn sql_type(d: Dialect, ty: Ty) -> String {
    match (d, ty) {
        (Dialect::Postgres, Ty::Id) => "BIGSERIAL PRIMARY KEY".into(),
        (Dialect::MySql, Ty::Id) => "BIGINT AUTO_INCREMENT PRIMARY KEY".into(),
        (Dialect::Sqlite, Ty::Id) => "INTEGER PRIMARY KEY AUTOINCREMENT".into(),
        (Dialect::Sqlite, Ty::Ref) => "INTEGER".into(),
        (_, Ty::Ref) => "BIGINT".into(),
        (_, Ty::Str(n)) => format!("VARCHAR({n})"),
        (_, Ty::Int) => "INTEGER".into(),
        (_, Ty::Dec) => "DECIMAL(15,2)".into(),
        (Dialect::Sqlite, Ty::Bool) => "BOOLEAN NOT NULL DEFAULT 0".into(),
        (_, Ty::Bool) => "BOOLEAN NOT NULL DEFAULT FALSE".into(),
        (_, Ty::Date) => "DATE".into(),
        (Dialect::MySql, Ty::Text) => "MEDIUMTEXT".into(),
        (_, Ty::Text) => "TEXT".into(),
        (Dialect::Postgres, Ty::Ts) => "TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP".into(),
        (Dialect::MySql, Ty::Ts) => "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)".into(),
        (Dialect::Sqlite, Ty::Ts) => {
            "DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now'))".into()
        }
        (Dialect::Postgres, Ty::At) => "TIMESTAMPTZ".into(),
        (Dialect::MySql, Ty::At) => "DATETIME(6)".into(),
        (Dialect::Sqlite, Ty::At) => "DATETIME".into(),
    }
}

fn pg_cast(ty: Ty) -> &'static str {
    match ty {
        Ty::Id | Ty::Ref => "bigint",
        Ty::Str(_) => "varchar",
        Ty::Int => "integer",
        Ty::Dec => "numeric",
        Ty::Bool => "boolean",
        Ty::Date => "date",
        Ty::Ts | Ty::At => "timestamptz",
        Ty::Text => "text",
    }
}

fn all_columns(t: &Table) -> Vec<(&'static str, Ty)> {
    t.columns.iter().copied().chain(COMMON_TAIL).collect()
}

/// Returns the DDL statements that create the demo tables in this dialect (after dropping them).
pub fn ddl(d: Dialect) -> Vec<String> {
    let mut out: Vec<String> = TABLES
        .iter()
        .rev()
        .map(|t| format!("DROP TABLE IF EXISTS {}", d.quote(t.name)))
        .collect();
    for t in TABLES {
        let cols: Vec<String> = all_columns(t)
            .iter()
            .map(|(n, ty)| format!("{} {}", d.quote(n), sql_type(d, *ty)))
            .collect();
        out.push(format!(
            "CREATE TABLE {} ({})",
            d.quote(t.name),
            cols.join(", ")
        ));
        for u in t.unique.iter().chain(&["marketo_id"]) {
            out.push(format!(
                "CREATE UNIQUE INDEX {} ON {} ({})",
                d.quote(&format!("ux_{}_{u}", t.name)),
                d.quote(t.name),
                d.quote(u)
            ));
        }
        for i in t.index {
            out.push(format!(
                "CREATE INDEX {} ON {} ({})",
                d.quote(&format!("ix_{}_{i}", t.name)),
                d.quote(t.name),
                d.quote(i)
            ));
        }
        // Identity matching looks emails up ignoring case and spaces (MariaDB's collation
        // ignores case already, and it has no expression indexes).
        if t.columns.iter().any(|(n, _)| *n == "email") && d != Dialect::MySql {
            out.push(format!(
                "CREATE INDEX {} ON {} (LOWER(TRIM({})))",
                d.quote(&format!("ix_{}_email_folded", t.name)),
                d.quote(t.name),
                d.quote("email")
            ));
        }
        // The change feed reads by keyset over (updated_at, id).
        out.push(format!(
            "CREATE INDEX {} ON {} ({}, {})",
            d.quote(&format!("ix_{}_changes", t.name)),
            d.quote(t.name),
            d.quote("updated_at"),
            d.quote("id")
        ));
    }
    out
}

/// How many rows [`install`] wrote per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// `(table, rows)` in dependency order.
    pub rows: Vec<(&'static str, usize)>,
}

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Frances", "Donald",
    "Radia", "Dennis",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Torvalds",
    "Allen", "Knuth", "Perlman", "Ritchie",
];
const TITLES: &[&str] = &[
    "CTO",
    "VP Marketing",
    "Engineer",
    "Buyer",
    "Director of Sales",
    "Analyst",
];
const INDUSTRIES: &[&str] = &[
    "Software",
    "Manufacturing",
    "Retail",
    "Healthcare",
    "Finance",
    "Education",
];
const CITIES: &[(&str, &str)] = &[
    ("Berlin", "Germany"),
    ("Lyon", "France"),
    ("Austin", "USA"),
    ("Osaka", "Japan"),
    ("Leeds", "UK"),
];
const STATUSES: &[&str] = &["Open", "Working", "Nurturing", "Qualified", "Unqualified"];
const SOURCES: &[&str] = &["Web", "Trade Show", "Referral", "Webinar", "Partner"];
const STAGES: &[(&str, bool, bool)] = &[
    ("Prospecting", false, false),
    ("Proposal", false, false),
    ("Negotiation", false, false),
    ("Closed Won", true, true),
    ("Closed Lost", true, false),
];
const ROLES: &[&str] = &[
    "Decision Maker",
    "Economic Buyer",
    "Influencer",
    "Technical Buyer",
];
const MAKES: &[(&str, &[&str])] = &[
    ("Volvo", &["XC40", "V60"]),
    ("Toyota", &["Corolla", "RAV4"]),
    ("Ford", &["Focus", "Transit"]),
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn b(v: bool) -> Option<String> {
    Some(if v { "1" } else { "0" }.to_owned())
}

/// Returns the generated rows of each table for this seed, as `(table, columns, rows)`.
#[allow(clippy::type_complexity)]
fn generate(
    seed: u64,
    contacts: usize,
) -> Vec<(&'static str, Vec<&'static str>, Vec<Vec<Option<String>>>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_users = 5 + contacts / 1000;
    let n_accounts = (contacts / 10).max(1);
    let n_leads = contacts / 2;
    let n_opps = contacts / 4;
    let n_vehicles = contacts / 3;
    let mut out = Vec::new();

    let mut rows = Vec::new();
    for i in 1..=n_users {
        let (f, l) = (*pick(&mut rng, FIRST), *pick(&mut rng, LAST));
        rows.push(vec![
            s(format!(
                "{}.{}{i}@demo-crm.example",
                f.to_lowercase(),
                l.to_lowercase()
            )),
            s(f),
            s(l),
            s("Account Executive"),
            s(format!("+1 555 01{i:02}")),
        ]);
    }
    out.push((
        "users",
        vec!["email", "first_name", "last_name", "title", "phone"],
        rows,
    ));

    let mut rows = Vec::new();
    for i in 1..=n_accounts {
        let (city, country) = *pick(&mut rng, CITIES);
        let revenue = rng.random_range(100_000..50_000_000u64);
        rows.push(vec![
            s(format!("ACC-{i:06}")),
            s(format!(
                "{} {} {i}",
                pick(&mut rng, LAST),
                pick(&mut rng, &["Labs", "GmbH", "Inc", "Systems", "Works"])
            )),
            s(pick(&mut rng, INDUSTRIES)),
            s(format!("{revenue}.00")),
            s(rng.random_range(5..20_000)),
            s(format!("https://account{i}.example")),
            s(city),
            s(country),
            s(rng.random_range(1..=n_users)),
        ]);
    }
    out.push((
        "accounts",
        vec![
            "external_id",
            "name",
            "industry",
            "annual_revenue",
            "employees",
            "website",
            "billing_city",
            "billing_country",
            "owner_id",
        ],
        rows,
    ));

    let person = |rng: &mut ChaCha8Rng, i: usize, domain: &str| {
        let (f, l) = (*pick(rng, FIRST), *pick(rng, LAST));
        (
            format!("{}.{}.{i}@{domain}", f.to_lowercase(), l.to_lowercase()),
            f,
            l,
        )
    };
    let mut rows = Vec::new();
    for i in 1..=contacts {
        let (email, f, l) = person(&mut rng, i, "contacts.example");
        rows.push(vec![
            s(email),
            s(f),
            s(l),
            s(pick(&mut rng, TITLES)),
            s(format!("+44 20 7946 {:04}", i % 10_000)),
            s(rng.random_range(1..=n_accounts)),
            s(rng.random_range(1..=n_users)),
            s(pick(&mut rng, STATUSES)),
            s(pick(&mut rng, SOURCES)),
            b(rng.random_bool(0.05)),
        ]);
    }
    out.push((
        "contacts",
        vec![
            "email",
            "first_name",
            "last_name",
            "title",
            "phone",
            "account_id",
            "owner_id",
            "lead_status",
            "lead_source",
            "do_not_email",
        ],
        rows,
    ));

    let mut rows = Vec::new();
    for i in 1..=n_leads {
        let (email, f, l) = person(&mut rng, i, "leads.example");
        rows.push(vec![
            s(email),
            s(f),
            s(l),
            s(format!("{} Prospects", pick(&mut rng, LAST))),
            s(pick(&mut rng, TITLES)),
            s(pick(&mut rng, STATUSES)),
            s(pick(&mut rng, SOURCES)),
            s(rng.random_range(1..=n_users)),
        ]);
    }
    out.push((
        "leads",
        vec![
            "email",
            "first_name",
            "last_name",
            "company",
            "title",
            "lead_status",
            "lead_source",
            "owner_id",
        ],
        rows,
    ));

    let mut rows = Vec::new();
    for i in 1..=n_opps {
        let (stage, closed, won) = *pick(&mut rng, STAGES);
        let day = rng.random_range(1..=28);
        let month = rng.random_range(1..=12);
        rows.push(vec![
            s(format!("OPP-{i:06}")),
            s(format!("Deal {i}")),
            s(rng.random_range(1..=n_accounts)),
            s(format!(
                "{}.{:02}",
                rng.random_range(1_000..500_000),
                rng.random_range(0..100)
            )),
            s(stage),
            b(closed),
            b(won),
            s(format!("2026-{month:02}-{day:02}")),
            s(format!("2025-{month:02}-{day:02} 09:00:00")),
            s(rng.random_range(1..=n_users)),
        ]);
    }
    out.push((
        "opportunities",
        vec![
            "external_id",
            "name",
            "account_id",
            "amount",
            "stage",
            "is_closed",
            "is_won",
            "close_date",
            "created_at",
            "owner_id",
        ],
        rows,
    ));

    let mut rows = Vec::new();
    let mut role_no = 0;
    for opp in 1..=n_opps {
        let count = if rng.random_bool(0.5) { 2 } else { 1 };
        for k in 0..count {
            role_no += 1;
            rows.push(vec![
                s(format!("OCR-{role_no:06}")),
                s(opp),
                s(rng.random_range(1..=contacts.max(1))),
                s(pick(&mut rng, ROLES)),
                b(k == 0),
            ]);
        }
    }
    out.push((
        "opportunity_contact_roles",
        vec![
            "external_id",
            "opportunity_id",
            "contact_id",
            "role",
            "is_primary",
        ],
        rows,
    ));

    let mut rows = Vec::new();
    for i in 1..=n_vehicles {
        let (make, models) = *pick(&mut rng, MAKES);
        rows.push(vec![
            s(format!("VIN{i:014}")),
            s(rng.random_range(1..=contacts.max(1))),
            s(make),
            s(pick(&mut rng, models)),
            s(rng.random_range(2005..=2026)),
        ]);
    }
    out.push((
        "vehicles",
        vec!["vin", "contact_id", "make", "model", "model_year"],
        rows,
    ));
    out
}

/// Creates the demo tables at `url` (dropping earlier demo tables) and fills them with sample
/// data generated from `seed`, with `contacts` contacts and proportional other tables; returns
/// the row counts.
///
/// # Errors
/// A connection or SQL failure.
pub async fn install(url: &str, seed: u64, contacts: usize) -> Result<DemoSummary, CrmError> {
    if url.starts_with("sqlite:") {
        // A SQLite demo CRM (demo.toml's `sqlite://state/demo-crm.db`) starts in a fresh folder.
        crate::store::create_sqlite_parent_dir(url).map_err(|error| CrmError::Config {
            message: format!("the demo crm: {error}"),
        })?;
    }
    let pool = SqlPool::connect(url, 1, false).await?;
    let d = pool.dialect();
    if d == Dialect::Sqlite {
        // The demo CRM's file is in WAL mode, as its application would choose (issue 15): a
        // reader never waits for the sync's writes, nor they for it. The mode is the file's
        // own and stays; the SQL adapter leaves a CRM's journal mode as it finds it.
        pool.execute_raw(
            "set the demo crm's journal mode",
            "PRAGMA journal_mode = WAL".into(),
        )
        .await?;
    }
    for sql in ddl(d) {
        pool.execute_raw("create the demo crm tables", sql).await?;
    }
    let mut summary = Vec::new();
    for (table, columns, rows) in generate(seed, contacts) {
        let def = TABLES
            .iter()
            .find(|t| t.name == table)
            .map(all_columns)
            .unwrap_or_default();
        let casts: Vec<&str> = columns
            .iter()
            .map(|c| {
                def.iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, ty)| pg_cast(*ty))
                    .unwrap_or("text")
            })
            .collect();
        let names: Vec<String> = columns.iter().map(|c| d.quote(c)).collect();
        let per_statement = (2000 / columns.len()).max(1);
        for chunk in rows.chunks(per_statement) {
            let mut n = 0;
            let tuples: Vec<String> = chunk
                .iter()
                .map(|_| {
                    let cells: Vec<String> = casts
                        .iter()
                        .map(|cast| {
                            n += 1;
                            d.param(n, cast)
                        })
                        .collect();
                    format!("({})", cells.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}",
                d.quote(table),
                names.join(", "),
                tuples.join(", ")
            );
            let params: Vec<Option<String>> = chunk.iter().flatten().cloned().collect();
            pool.fetch(&format!("fill the demo table {table}"), sql, &params)
                .await?;
        }
        summary.push((table, rows.len()));
    }
    info!(contacts, seed, "demo crm installed");
    pool.close().await;
    Ok(DemoSummary { rows: summary })
}

/// Logs one chat conversation in the demo CRM's `events` table (as the CRM's chat product
/// would): for the contact `contact_id` and/or the address `email`, now.
///
/// # Errors
///
/// Returns [`CrmError`] when the insert fails.
pub async fn insert_event(
    pool: &SqlPool,
    contact_id: Option<&str>,
    email: Option<&str>,
    topic: &str,
    transcript: &str,
) -> Result<(), CrmError> {
    let d = pool.dialect();
    let columns = [
        ("contact_id", "bigint"),
        ("email", "varchar"),
        ("topic", "varchar"),
        ("transcript", "text"),
    ];
    let names: Vec<String> = columns.iter().map(|(c, _)| d.quote(c)).collect();
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, cast))| d.param(i + 1, cast))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        d.quote("events"),
        names.join(", "),
        params.join(", ")
    );
    let values = vec![
        contact_id.map(str::to_owned),
        email.map(str::to_owned),
        Some(topic.to_owned()),
        Some(transcript.to_owned()),
    ];
    pool.fetch("log a demo chat event", sql, &values).await?;
    Ok(())
}

/// Returns the SQL adapter options for the demo tables: every object soft-deletes through
/// `deleted = true`, keys on `marketo_id` and reads all columns; contacts record merges in
/// `merged_into`.
pub fn adapter_options(writable: bool, changelog: bool) -> serde_json::Value {
    let objects: serde_json::Map<String, serde_json::Value> = OBJECTS
        .iter()
        .map(|name| {
            let mut o = json!({
                "table": name,
                "primary_key": "id",
                "modified_column": "updated_at",
                "soft_delete": { "column": "deleted", "value": true },
                "marketo_id_column": "marketo_id",
                "writable": writable,
                "changelog": changelog,
            });
            if *name == "contacts" {
                o["merged_into_column"] = json!("merged_into");
            }
            ((*name).to_owned(), o)
        })
        .collect();
    // Large write batches: bootstrap moves thousands of rows per CRM transaction (a uniform
    // batch is one statement whose rows are one JSON parameter, whatever its size).
    json!({ "max_batch_write": DEMO_MAX_BATCH_WRITE, "objects": objects })
}

/// The demo CRM's `max_batch_write` (the SQL adapter's default is 200).
pub const DEMO_MAX_BATCH_WRITE: usize = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        let a = generate(7, 40);
        let b = generate(7, 40);
        let c = generate(8, 40);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let counts: Vec<(&str, usize)> = a.iter().map(|(t, _, r)| (*t, r.len())).collect();
        assert_eq!(counts[2], ("contacts", 40));
        assert_eq!(counts[3], ("leads", 20));
        for (table, columns, rows) in &a {
            assert!(rows.iter().all(|r| r.len() == columns.len()), "{table}");
        }
    }

    #[test]
    fn options_name_every_demo_table() {
        let opts = crate::crm::sql::SqlOptions::from_json(&adapter_options(true, false)).unwrap();
        assert_eq!(opts.objects.len(), OBJECTS.len());
        assert!(opts.objects["contacts"].writable);
    }

    #[tokio::test]
    async fn a_sqlite_demo_crm_is_created_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("crm.db").display());
        install(&url, 1, 3).await.unwrap();
        // A new connection reads the file's own mode, which outlives the installer's.
        let pool = SqlPool::connect(&url, 1, false).await.unwrap();
        let rows = pool
            .fetch("read", "PRAGMA journal_mode".into(), &[])
            .await
            .unwrap();
        let mode = rows.first().and_then(|r| r.first().cloned().flatten());
        assert_eq!(mode.as_deref(), Some("wal"));
        let rows = pool
            .fetch(
                "count",
                "SELECT CAST(COUNT(*) AS TEXT) FROM contacts".into(),
                &[],
            )
            .await
            .unwrap();
        let count = rows.first().and_then(|r| r.first().cloned().flatten());
        assert_eq!(count.as_deref(), Some("3"));
    }
}
