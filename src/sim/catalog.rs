//! The simulated instance's marketing assets beyond leads: smart campaigns, custom activity
//! types, emails, segmentations and folder tokens (programs and static lists live in
//! [`super::state::Db`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::schema::ACTIVITY_TYPES;

/// First id of custom activity types (Marketo numbers them from 100000).
pub const CUSTOM_TYPE_BASE: i64 = 100_000;

/// A smart campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Campaign id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// `trigger` or `batch`.
    pub kind: &'static str,
    /// The owning program.
    pub program_id: i64,
    /// Has a "Campaign is Requested" (Web Service API) trigger: only these can be triggered.
    pub requestable: bool,
    /// Active (a trigger campaign must be active to be triggered).
    pub active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Leads requested through the API, with the time of the request and the tokens sent.
    pub requests: Vec<(i64, DateTime<Utc>, Vec<Value>)>,
    /// Scheduled runs: (run at, clone-to program name, tokens).
    pub runs: Vec<(DateTime<Utc>, Option<String>, Vec<Value>)>,
}

/// One attribute of a custom activity type: (API name, display name, data type).
pub type CustomAttr = (String, String, String);

/// A custom activity type.
#[derive(Debug, Clone)]
pub struct CustomType {
    /// Activity type id.
    pub id: i64,
    /// API name (`..._c`).
    pub api_name: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Trigger name (unique).
    pub trigger_name: String,
    /// Filter name (unique).
    pub filter_name: String,
    /// The primary attribute.
    pub primary: CustomAttr,
    /// The approved attributes.
    pub attributes: Vec<CustomAttr>,
    /// The draft's attributes (the approved ones plus additions) while a draft exists.
    pub draft: Option<Vec<CustomAttr>>,
    /// True once approved (records can be written only then).
    pub approved: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl CustomType {
    /// Returns the status Marketo reports: `draft` before the first approval, `approved`
    /// otherwise (`approved` with a pending draft reads as `approved`).
    pub fn status(&self) -> &'static str {
        if self.approved { "approved" } else { "draft" }
    }
}

/// A segmentation and its segments (Asset API shape).
pub type Segmentation = (Map<String, Value>, Vec<Map<String, Value>>);

/// The asset catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Smart campaigns by id.
    pub campaigns: BTreeMap<i64, Campaign>,
    /// Custom activity types by API name.
    pub custom_types: BTreeMap<String, CustomType>,
    /// Emails (Asset API shape).
    pub emails: Vec<Map<String, Value>>,
    /// Segmentations and their segments (Asset API shape).
    pub segmentations: Vec<Segmentation>,
    /// My Tokens by (folder id, folder type).
    pub tokens: BTreeMap<(i64, &'static str), Vec<Value>>,
    /// Next id for a created static list.
    pub next_list_id: i64,
}

/// The marketing folders of the instance: (id, name). Static lists and programs live in them
/// (the seeded programs' folders); `folder/byName.json` finds them, and a static list is created
/// only in one of them (or in a program).
pub const FOLDERS: &[(i64, &str)] = &[
    (19, "Marketing Activities"),
    (20, "Nurture Programs"),
    (21, "Lists"),
];

/// Returns `Watched Demo` as `watchedDemo_c`: the first word lower-cased, the rest capitalised.
pub fn api_name_of(name: &str) -> String {
    let mut api: String = name
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            let mut c = w.chars();
            match (i, c.next()) {
                (0, Some(f)) => f.to_lowercase().chain(c).collect::<String>(),
                (_, Some(f)) => f.to_uppercase().chain(c).collect::<String>(),
                _ => String::new(),
            }
        })
        .collect();
    api.push_str("_c");
    api
}

fn attr_api(name: &str) -> String {
    api_name_of(name).trim_end_matches("_c").to_string()
}

fn seeded_custom_types(start: DateTime<Utc>) -> BTreeMap<String, CustomType> {
    ACTIVITY_TYPES
        .iter()
        .filter(|t| i64::from(t.0) >= CUSTOM_TYPE_BASE)
        .map(|(id, name, primary, attrs)| {
            let (pname, ptype) = primary.unwrap_or(("Name", "string"));
            let t = CustomType {
                id: i64::from(*id),
                api_name: api_name_of(name),
                name: name.to_string(),
                description: String::new(),
                trigger_name: format!("{name} is done"),
                filter_name: format!("{name} was done"),
                primary: (attr_api(pname), pname.into(), ptype.into()),
                attributes: attrs
                    .iter()
                    .map(|(n, t)| (attr_api(n), n.to_string(), t.to_string()))
                    .collect(),
                draft: None,
                approved: true,
                created_at: start,
                updated_at: start,
            };
            (t.api_name.clone(), t)
        })
        .collect()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn seeded_emails(at: &str) -> Vec<Map<String, Value>> {
    use serde_json::json;
    [
        (2001, "Webinar Invitation", "You're invited: Spring Webinar", 1107, "approved"),
        (2002, "Webinar Reminder", "Starting soon: Spring Webinar", 1107, "approved"),
        (2003, "Nurture 1", "Getting started", 1108, "draft"),
    ]
    .into_iter()
    .map(|(id, name, subject, program, status)| {
        obj(json!({
            "id": id, "name": name, "description": "", "createdAt": at, "updatedAt": at,
            "url": format!("https://app-sim.marketo.com/#EM{id}A1"),
            "subject": {"type": "Text", "value": subject},
            "fromName": {"type": "Text", "value": "Sim Marketing"},
            "fromEmail": {"type": "Text", "value": "marketing@sim.example.com"},
            "replyEmail": {"type": "Text", "value": "marketing@sim.example.com"},
            "folder": {"type": "Program", "value": program, "folderName": if program == 1107 { "Spring Webinar" } else { "Nurture Track" }},
            "operational": false, "textOnly": false, "publishToMSI": false, "webView": false,
            "status": status, "template": 1, "workspace": "Default",
            "isOpenTrackingDisabled": false, "version": 2, "autoCopyToText": true, "preHeader": null,
        }))
    })
    .collect()
}

fn seeded_segmentations(at: &str) -> Vec<Segmentation> {
    use serde_json::json;
    let segmentation = obj(json!({
        "id": 1001, "name": "Region", "description": "", "createdAt": at, "updatedAt": at,
        "url": "https://app-sim.marketo.com/#SG1001A1",
        "folder": {"type": "Folder", "value": 28, "folderName": "Segmentations"},
        "status": "approved", "workspace": "Default",
    }));
    let segments = ["EMEA", "Americas", "APAC", "Default"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            obj(json!({
                "id": 1011 + i as i64, "name": name, "description": "", "segmentationId": 1001,
                "createdAt": at, "updatedAt": at,
                "url": format!("https://app-sim.marketo.com/#SG{}A1", 1011 + i as i64),
                "status": "approved",
            }))
        })
        .collect();
    vec![(segmentation, segments)]
}

fn seeded_tokens() -> BTreeMap<(i64, &'static str), Vec<Value>> {
    use serde_json::json;
    let mut tokens = BTreeMap::new();
    tokens.insert(
        (1107, "Program"),
        vec![
            json!({"name": "Event Date", "type": "date", "value": "2024-04-18"}),
            json!({"name": "Webinar Title", "type": "text", "value": "Spring Webinar"}),
            json!({"name": "Score Bump", "type": "score", "value": "+10"}),
        ],
    );
    tokens.insert(
        (19, "Folder"),
        vec![json!({"name": "Company Name", "type": "text", "value": "Sim Inc."})],
    );
    tokens
}

impl Catalog {
    /// Returns the generated catalog of an instance that started at `start`.
    pub fn generate(start: DateTime<Utc>) -> Self {
        let at = format!(
            "{}+0000",
            super::clock::fmt_time(start - chrono::Duration::days(30))
        );
        let campaign = |id, name: &str, kind, program_id, requestable| Campaign {
            id,
            name: name.to_string(),
            kind,
            program_id,
            requestable,
            active: kind == "trigger",
            created_at: start - chrono::Duration::days(30),
            requests: Vec::new(),
            runs: Vec::new(),
        };
        let campaigns = [
            campaign(3001, "Send Invitation", "batch", 1107, false),
            campaign(3002, "Registered via API", "trigger", 1107, true),
            campaign(3003, "Nurture Entry", "trigger", 1108, false),
        ]
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
        Catalog {
            campaigns,
            custom_types: seeded_custom_types(start),
            emails: seeded_emails(&at),
            segmentations: seeded_segmentations(&at),
            tokens: seeded_tokens(),
            next_list_id: 1100,
        }
    }

    /// Returns the approved custom type with activity type id `id`.
    pub fn approved_type(&self, id: i64) -> Option<&CustomType> {
        self.custom_types
            .values()
            .find(|t| t.id == id && t.approved)
    }
}
