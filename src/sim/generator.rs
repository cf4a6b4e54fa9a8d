//! The seeded data generator.
//!
//! Generated leads are never stored: lead `id` in `1..=N` is rebuilt from `(seed, start, id)` on
//! demand, so `--leads 1000000` costs no memory until a lead is written. Companies, sales persons,
//! opportunities, roles and cars are fewer and are materialised at start.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::schema::lead_field;
use super::state::Lead;

const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera",
    "Wei", "Xenia", "Yusuf", "Zoe",
];
const LAST: &[&str] = &[
    "Anders", "Brown", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Huang", "Ivanova",
    "Jones", "Kowalski", "Lopez", "Muller", "Nakamura", "Okafor", "Patel", "Quinto", "Rossi",
    "Smith", "Tanaka", "Ueda", "Varga",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "mail.example.net",
    "corp.example",
];
const TITLES: &[&str] = &[
    "CTO",
    "VP Marketing",
    "Engineer",
    "Buyer",
    "Analyst",
    "Director of Sales",
    "CEO",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Chicago", "IL", "USA"),
    ("Austin", "TX", "USA"),
    ("Lyon", "ARA", "France"),
    ("Berlin", "BE", "Germany"),
    ("Toronto", "ON", "Canada"),
    ("Osaka", "27", "Japan"),
];
const SOURCES: &[&str] = &["Website", "Trade Show", "Webinar", "Partner", "List import"];
const STATUSES: &[&str] = &["Open", "Working", "Nurture", "Qualified", "Unqualified"];
const TIERS: &[&str] = &["Gold", "Silver", "Bronze"];
const INDUSTRIES: &[&str] = &[
    "Software",
    "Manufacturing",
    "Retail",
    "Finance",
    "Healthcare",
];
const MAKES: &[(&str, &str)] = &[
    ("BMW", "320i"),
    ("Toyota", "Corolla"),
    ("Renault", "Clio"),
    ("Ford", "Focus"),
];

/// Returns how many companies are generated for `leads` leads.
pub fn company_count(leads: usize) -> usize {
    (leads / 50).clamp(3, 20_000)
}

/// Returns the generated dedupe key of company `k`.
pub fn company_key(k: usize) -> String {
    format!("EC-{k:06}")
}

/// Returns the generated dedupe key of sales person `k`.
pub fn sales_person_key(k: usize) -> String {
    format!("SP-{k:03}")
}

fn rng_for(seed: u64, stream: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(id);
    rng
}

fn pick(rng: &mut ChaCha8Rng, items: &[&'static str]) -> &'static str {
    items[rng.random_range(0..items.len())]
}

fn set(values: &mut BTreeMap<u16, Value>, name: &str, value: Value) {
    if let Some((index, _)) = lead_field(name) {
        values.insert(index, value);
    }
}

type Head = (
    &'static str,
    &'static str,
    &'static str,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Draws the first values of a generated lead: names, domain, createdAt, updatedAt.
fn lead_head(rng: &mut ChaCha8Rng, start: DateTime<Utc>) -> Head {
    let first = pick(rng, FIRST);
    let last = pick(rng, LAST);
    let domain = pick(rng, DOMAINS);
    let created_at = start - ChronoDuration::seconds(rng.random_range(3600..730 * 86_400));
    let age = (start - created_at).num_seconds();
    let updated_at = created_at + ChronoDuration::seconds(rng.random_range(0..age));
    (first, last, domain, created_at, updated_at)
}

/// Returns (createdAt, updatedAt) of generated lead `id` without building the whole lead.
pub fn lead_times(seed: u64, start: DateTime<Utc>, id: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let mut rng = rng_for(seed, 1, id as u64);
    let (_, _, _, created_at, updated_at) = lead_head(&mut rng, start);
    (created_at, updated_at)
}

/// Returns generated lead `id` (1-based) for an instance of `leads` leads started at `start`.
pub fn lead(seed: u64, start: DateTime<Utc>, leads: usize, id: i64) -> Lead {
    let mut rng = rng_for(seed, 1, id as u64);
    let (first, last, domain, created_at, updated_at) = lead_head(&mut rng, start);
    let mut values = BTreeMap::new();
    set(&mut values, "firstName", json!(first));
    set(&mut values, "lastName", json!(last));
    set(
        &mut values,
        "email",
        json!(format!(
            "{}.{}.{id}@{domain}",
            first.to_lowercase(),
            last.to_lowercase()
        )),
    );
    set(
        &mut values,
        "phone",
        json!(format!("+1-555-{:04}", rng.random_range(0..10_000))),
    );
    set(&mut values, "title", json!(pick(&mut rng, TITLES)));
    let (city, state, country) = CITIES[rng.random_range(0..CITIES.len())];
    set(&mut values, "city", json!(city));
    set(&mut values, "state", json!(state));
    set(&mut values, "country", json!(country));
    set(
        &mut values,
        "postalCode",
        json!(format!("{:05}", rng.random_range(10_000..99_999))),
    );
    set(&mut values, "leadSource", json!(pick(&mut rng, SOURCES)));
    set(&mut values, "leadStatus", json!(pick(&mut rng, STATUSES)));
    set(&mut values, "leadScore", json!(rng.random_range(0..100)));
    set(&mut values, "unsubscribed", json!(rng.random_bool(0.05)));
    set(&mut values, "doNotCall", json!(false));
    if rng.random_bool(0.7) {
        set(&mut values, "crmContactId", json!(format!("CRM-{id:08}")));
    }
    if rng.random_bool(0.6) {
        set(&mut values, "customerTier", json!(pick(&mut rng, TIERS)));
    }
    if rng.random_bool(0.5) {
        set(&mut values, "npsScore", json!(rng.random_range(0..=10)));
    }
    if rng.random_bool(0.6) {
        let k = rng.random_range(1..=company_count(leads));
        set(&mut values, "externalCompanyId", json!(company_key(k)));
    } else if rng.random_bool(0.5) {
        set(&mut values, "company", json!(format!("{last} Consulting")));
    }
    if rng.random_bool(0.5) {
        set(
            &mut values,
            "externalSalesPersonId",
            json!(sales_person_key(rng.random_range(1..=10))),
        );
    }
    Lead {
        id,
        created_at,
        updated_at,
        values,
    }
}

/// Returns the lead id a generated email or crmContactId encodes, if any.
pub fn id_hint(field: &str, value: &str) -> Option<i64> {
    match field {
        "email" => {
            let local = value.split('@').next()?;
            local.rsplit('.').next()?.parse().ok()
        }
        "crmContactId" => value.strip_prefix("CRM-")?.parse().ok(),
        _ => None,
    }
}

/// A generated non-lead record: its dedupe values and other fields, and its creation time.
pub struct GenRecord {
    /// Field values (dedupe fields included).
    pub values: Map<String, Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

fn created(rng: &mut ChaCha8Rng, start: DateTime<Utc>) -> DateTime<Utc> {
    start - ChronoDuration::seconds(rng.random_range(86_400..900 * 86_400))
}

/// Returns the generated companies.
pub fn companies(seed: u64, start: DateTime<Utc>, leads: usize) -> Vec<GenRecord> {
    (1..=company_count(leads))
        .map(|k| {
            let mut rng = rng_for(seed, 2, k as u64);
            let last = pick(&mut rng, LAST);
            let (city, state, country) = CITIES[rng.random_range(0..CITIES.len())];
            let mut v = Map::new();
            v.insert("externalCompanyId".into(), json!(company_key(k)));
            v.insert(
                "company".into(),
                json!(format!(
                    "{last} {} {k}",
                    pick(&mut rng, &["Inc", "GmbH", "SA", "Ltd"])
                )),
            );
            v.insert("billingCity".into(), json!(city));
            v.insert("billingState".into(), json!(state));
            v.insert("billingCountry".into(), json!(country));
            v.insert(
                "website".into(),
                json!(format!("https://{}{k}.example.com", last.to_lowercase())),
            );
            v.insert(
                "mainPhone".into(),
                json!(format!("+1-555-{:04}", rng.random_range(0..10_000))),
            );
            v.insert(
                "annualRevenue".into(),
                json!(rng.random_range(1..500) as f64 * 100_000.0),
            );
            v.insert(
                "numberOfEmployees".into(),
                json!(rng.random_range(5..20_000)),
            );
            v.insert("industry".into(), json!(pick(&mut rng, INDUSTRIES)));
            GenRecord {
                values: v,
                created_at: created(&mut rng, start),
            }
        })
        .collect()
}

/// Returns the generated sales persons.
pub fn sales_persons(seed: u64, start: DateTime<Utc>) -> Vec<GenRecord> {
    (1..=10)
        .map(|k| {
            let mut rng = rng_for(seed, 3, k as u64);
            let first = pick(&mut rng, FIRST);
            let last = pick(&mut rng, LAST);
            let mut v = Map::new();
            v.insert("externalSalesPersonId".into(), json!(sales_person_key(k)));
            v.insert(
                "email".into(),
                json!(format!(
                    "{}.{}@sales.example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                )),
            );
            v.insert("firstName".into(), json!(first));
            v.insert("lastName".into(), json!(last));
            v.insert("title".into(), json!("Account Executive"));
            GenRecord {
                values: v,
                created_at: created(&mut rng, start),
            }
        })
        .collect()
}

/// Returns the generated opportunities and their roles (each role names its lead id).
pub fn opportunities(
    seed: u64,
    start: DateTime<Utc>,
    leads: usize,
) -> (Vec<GenRecord>, Vec<GenRecord>) {
    let count = (leads / 100).clamp(3, 10_000);
    let mut opps = Vec::with_capacity(count);
    let mut roles = Vec::with_capacity(count);
    for k in 1..=count {
        let mut rng = rng_for(seed, 4, k as u64);
        let key = format!("OP-{k:06}");
        let stage = pick(
            &mut rng,
            &[
                "Prospecting",
                "Proposal",
                "Negotiation",
                "Closed Won",
                "Closed Lost",
            ],
        );
        let mut v = Map::new();
        v.insert("externalOpportunityId".into(), json!(key));
        v.insert("name".into(), json!(format!("Deal {k}")));
        v.insert(
            "amount".into(),
            json!(rng.random_range(1..200) as f64 * 1000.0),
        );
        v.insert("stage".into(), json!(stage));
        v.insert("isClosed".into(), json!(stage.starts_with("Closed")));
        v.insert("isWon".into(), json!(stage == "Closed Won"));
        v.insert(
            "externalCompanyId".into(),
            json!(company_key(rng.random_range(1..=company_count(leads)))),
        );
        v.insert(
            "externalSalesPersonId".into(),
            json!(sales_person_key(rng.random_range(1..=10))),
        );
        let created_at = created(&mut rng, start);
        opps.push(GenRecord {
            values: v,
            created_at,
        });
        if leads > 0 {
            let mut r = Map::new();
            r.insert("externalOpportunityId".into(), json!(key));
            r.insert("leadId".into(), json!(rng.random_range(1..=leads as i64)));
            r.insert(
                "role".into(),
                json!(pick(
                    &mut rng,
                    &["Decision Maker", "Influencer", "Champion"]
                )),
            );
            r.insert("isPrimary".into(), json!(true));
            roles.push(GenRecord {
                values: r,
                created_at,
            });
        }
    }
    (opps, roles)
}

/// Returns the generated `car_c` custom object records.
pub fn cars(seed: u64, start: DateTime<Utc>, leads: usize) -> Vec<GenRecord> {
    if leads == 0 {
        return Vec::new();
    }
    (1..=(leads / 200).clamp(3, 5_000))
        .map(|k| {
            let mut rng = rng_for(seed, 5, k as u64);
            let (make, model) = MAKES[rng.random_range(0..MAKES.len())];
            let mut v = Map::new();
            v.insert("vin".into(), json!(format!("VIN{k:014}")));
            v.insert("leadId".into(), json!(rng.random_range(1..=leads as i64)));
            v.insert("make".into(), json!(make));
            v.insert("model".into(), json!(model));
            v.insert("year".into(), json!(rng.random_range(2005..2026)));
            v.insert(
                "color".into(),
                json!(pick(&mut rng, &["red", "blue", "black", "white"])),
            );
            GenRecord {
                values: v,
                created_at: created(&mut rng, start),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_lead_and_hint_round_trips() {
        let start = crate::sim::clock::parse_time("2024-03-01T00:00:00Z").unwrap();
        let a = lead(7, start, 1000, 42);
        let b = lead(7, start, 1000, 42);
        let c = lead(8, start, 1000, 42);
        assert_eq!(a.values, b.values);
        assert_ne!(a.values, c.values);
        let email = a.values[&lead_field("email").unwrap().0]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(id_hint("email", &email), Some(42));
        assert!(a.created_at < start && a.updated_at >= a.created_at);
        assert_eq!(lead_times(7, start, 42), (a.created_at, a.updated_at));
    }
}
