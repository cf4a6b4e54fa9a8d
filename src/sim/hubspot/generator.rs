//! The seeded data generator: owners, companies, contacts, deals, a `cars` custom object, and
//! associations between them (contacts to companies with the Primary label, deals to companies
//! and to contacts with user-defined labels). The same seed gives the same portal.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::HubSpotConfig;
use super::model::{
    AssocCategory, COMPANIES, CONTACTS, DEALS, Owner, Portal, PropOption, PropType, PropertyDef,
};

const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara",
];
const LAST: &[&str] = &[
    "Anders", "Brown", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Huang", "Ivanova",
    "Jones", "Kowalski", "Lopez", "Muller", "Nakamura", "Okafor", "Patel",
];
const COMPANY_WORDS: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
];
const INDUSTRIES: &[&str] = &[
    "COMPUTER_SOFTWARE",
    "MACHINERY",
    "RETAIL",
    "FINANCIAL_SERVICES",
    "HOSPITAL_HEALTH_CARE",
];
const CITIES: &[(&str, &str)] = &[
    ("Chicago", "United States"),
    ("Austin", "United States"),
    ("Lyon", "France"),
    ("Berlin", "Germany"),
    ("Toronto", "Canada"),
];
const STAGES: &[&str] = &[
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "contractsent",
    "closedwon",
    "closedlost",
];
const LIFECYCLE: &[&str] = &["subscriber", "lead", "marketingqualifiedlead", "customer"];
const MAKES: &[(&str, &str)] = &[
    ("Toyota", "Corolla"),
    ("Ford", "Focus"),
    ("Renault", "Clio"),
    ("Volvo", "V60"),
];
/// The user-defined deal-to-contact labels the generator defines.
pub const DEAL_CONTACT_LABELS: &[&str] = &["Decision maker", "Champion", "Influencer"];

fn pick<'a>(rng: &mut ChaCha8Rng, items: &'a [&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn obj(pairs: &[(&str, String)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect()
}

/// Builds the portal for a configuration as of `start`.
pub fn generate(config: &HubSpotConfig, start: DateTime<Utc>) -> Portal {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut portal = Portal::new(config.portal_id, start);
    let ago =
        |rng: &mut ChaCha8Rng| start - ChronoDuration::minutes(rng.random_range(60..60 * 24 * 365));
    for i in 0..config.owners {
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        portal.owners.push(Owner {
            id: 70_000_001 + i as u64,
            user_id: 9_000_001 + i as u64,
            email: format!(
                "{}.{}{}@sales.example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                i + 1
            ),
            first_name: first.to_string(),
            last_name: last.to_string(),
            created_at: start - ChronoDuration::days(400),
            archived: false,
        });
    }
    let owner_ids: Vec<String> = portal.owners.iter().map(|o| o.id.to_string()).collect();
    for ty in &mut portal.types {
        if let Some(def) = ty.properties.get_mut("hubspot_owner_id") {
            def.options = owner_ids
                .iter()
                .enumerate()
                .map(|(i, id)| PropOption {
                    label: id.clone(),
                    value: id.clone(),
                    display_order: i as i64,
                    hidden: false,
                })
                .collect();
        }
    }
    // A custom object, as an admin would define it in Settings > Objects.
    let mut vin = PropertyDef::new("vin", "VIN", PropType::String, "text");
    vin.has_unique_value = true;
    let cars_id = portal.add_custom_type(
        "cars",
        "car",
        "vin",
        vec![
            vin,
            PropertyDef::new("make", "Make", PropType::String, "text"),
            PropertyDef::new("model", "Model", PropType::String, "text"),
            PropertyDef::new("year", "Year", PropType::Number, "number"),
        ],
        start,
    );
    let cars_ty = portal.type_index(&cars_id).unwrap_or(3);
    portal.add_assoc_type(&cars_id, CONTACTS, AssocCategory::HubspotDefined, None);
    let labels: Vec<u32> = DEAL_CONTACT_LABELS
        .iter()
        .map(|l| portal.add_assoc_type(DEALS, CONTACTS, AssocCategory::UserDefined, Some(l)))
        .collect();
    let contacts_ty = portal.type_index(CONTACTS).unwrap_or(0);
    let companies_ty = portal.type_index(COMPANIES).unwrap_or(1);
    let deals_ty = portal.type_index(DEALS).unwrap_or(2);

    let n_companies = (config.contacts / 4).max(usize::from(config.contacts > 0));
    let mut companies = Vec::new();
    for i in 0..n_companies {
        let word = pick(&mut rng, COMPANY_WORDS);
        let (city, country) = CITIES[rng.random_range(0..CITIES.len())];
        let props = obj(&[
            ("name", format!("{word} {}", i + 1)),
            (
                "domain",
                format!("{}{}.example.com", word.to_lowercase(), i + 1),
            ),
            ("industry", pick(&mut rng, INDUSTRIES).to_string()),
            ("city", city.to_string()),
            ("country", country.to_string()),
            ("numberofemployees", rng.random_range(5..5000).to_string()),
        ]);
        let at = ago(&mut rng);
        if let Ok(id) = portal.create(companies_ty, &props, at) {
            companies.push(id);
        }
    }
    let mut contacts = Vec::new();
    for i in 0..config.contacts {
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        let (city, country) = CITIES[rng.random_range(0..CITIES.len())];
        let mut pairs = vec![
            (
                "email",
                format!(
                    "{}.{}{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    i + 1
                ),
            ),
            ("firstname", first.to_string()),
            ("lastname", last.to_string()),
            (
                "jobtitle",
                pick(&mut rng, &["CTO", "Buyer", "Engineer", "Analyst", "CEO"]).to_string(),
            ),
            ("city", city.to_string()),
            ("country", country.to_string()),
            ("lifecyclestage", pick(&mut rng, LIFECYCLE).to_string()),
        ];
        if !owner_ids.is_empty() {
            pairs.push((
                "hubspot_owner_id",
                owner_ids[rng.random_range(0..owner_ids.len())].clone(),
            ));
        }
        let at = ago(&mut rng);
        let Ok(id) = portal.create(contacts_ty, &obj(&pairs), at) else {
            continue;
        };
        contacts.push(id);
        if !companies.is_empty() {
            let company = companies[rng.random_range(0..companies.len())];
            let _ = portal.associate(contacts_ty, id, companies_ty, company, 1);
        }
    }
    for i in 0..config.contacts / 5 {
        let mut pairs = vec![
            ("dealname", format!("Deal {}", i + 1)),
            ("amount", (rng.random_range(10..500) * 100).to_string()),
            ("pipeline", "default".to_string()),
            ("dealstage", pick(&mut rng, STAGES).to_string()),
            (
                "closedate",
                super::model::fmt_ts(start + ChronoDuration::days(rng.random_range(-90..90))),
            ),
        ];
        if !owner_ids.is_empty() {
            pairs.push((
                "hubspot_owner_id",
                owner_ids[rng.random_range(0..owner_ids.len())].clone(),
            ));
        }
        let at = ago(&mut rng);
        let Ok(id) = portal.create(deals_ty, &obj(&pairs), at) else {
            continue;
        };
        if !companies.is_empty() {
            let company = companies[rng.random_range(0..companies.len())];
            let _ = portal.associate(deals_ty, id, companies_ty, company, 5);
        }
        for _ in 0..rng.random_range(1..=2) {
            if contacts.is_empty() {
                break;
            }
            let contact = contacts[rng.random_range(0..contacts.len())];
            let label = labels[rng.random_range(0..labels.len())];
            let _ = portal.associate(deals_ty, id, contacts_ty, contact, label);
        }
    }
    for i in 0..config.contacts / 10 {
        let (make, model) = MAKES[rng.random_range(0..MAKES.len())];
        let props = obj(&[
            ("vin", format!("VIN{:010}", i + 1)),
            ("make", make.to_string()),
            ("model", model.to_string()),
            ("year", rng.random_range(2005..2025).to_string()),
        ]);
        let at = ago(&mut rng);
        let Ok(id) = portal.create(cars_ty, &props, at) else {
            continue;
        };
        if !contacts.is_empty() {
            let contact = contacts[rng.random_range(0..contacts.len())];
            let type_id = portal.default_assoc_type(&cars_id, CONTACTS);
            let _ = portal.associate(cars_ty, id, contacts_ty, contact, type_id);
        }
    }
    portal
}
