//! The simulated instance's data: leads, non-lead objects, activities, lists and programs, and
//! the operations a Marketo user or the API performs on them (with the activities they leave).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::catalog::Catalog;
use super::clock::fmt_time;
use super::generator;
use super::schema::{CAR_ADDED_ACTIVITY, LEAD_FIELDS, ObjKind, lead_field, lead_field_at};

/// A lead. Values are keyed by the index of the field in [`LEAD_FIELDS`]; `id`, `createdAt`
/// and `updatedAt` live in the struct.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    /// Marketo lead id.
    pub id: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: DateTime<Utc>,
    /// Stored values (company fields of a linked lead are read through the company).
    pub values: BTreeMap<u16, Value>,
}

/// A non-lead record (company, sales person, opportunity, role, custom object).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjRecord {
    /// Integer id (companies and sales persons expose it; others use it as `marketoGUID` seed).
    pub id: i64,
    /// `marketoGUID` (for guid-keyed kinds).
    pub guid: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: DateTime<Utc>,
    /// Field values.
    pub values: Map<String, Value>,
}

/// An activity record.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Activity id (also the `marketoGUID`).
    pub id: i64,
    /// Lead id.
    pub lead_id: i64,
    /// When it happened.
    pub date: DateTime<Utc>,
    /// Activity type id.
    pub type_id: u32,
    /// Primary attribute value id.
    pub primary_id: Option<i64>,
    /// Primary attribute value.
    pub primary_value: Option<String>,
    /// Secondary attributes, keyed by display name (empty for a Change Data Value: see
    /// [`Activity::attributes`]).
    pub attributes: Map<String, Value>,
    /// For Change Data Value: (field id, field name, old, new).
    pub change: Option<(u32, &'static str, Value, Value)>,
    /// For Change Data Value: the reason of the change.
    pub reason: Option<Box<str>>,
}

impl Activity {
    /// Returns the secondary attributes. A Change Data Value's (New Value, Old Value, Reason,
    /// Source, Modifying User) are built from its change and reason when read rather than
    /// stored: a bulk write of a million leads logs a million of them.
    pub fn attributes(&self) -> Cow<'_, Map<String, Value>> {
        match (&self.change, &self.reason) {
            (Some((_, _, old, new)), Some(reason)) if self.attributes.is_empty() => {
                let (source, user) = origin(reason);
                let mut attrs = Map::new();
                attrs.insert("New Value".into(), new.clone());
                attrs.insert("Old Value".into(), old.clone());
                attrs.insert("Reason".into(), json!(reason));
                attrs.insert("Source".into(), json!(source));
                attrs.insert("Modifying User".into(), json!(user));
                Cow::Owned(attrs)
            }
            _ => Cow::Borrowed(&self.attributes),
        }
    }
}

/// A block of Visit Webpage (type 1) activities logged at volume (see [`Db::log_visits`]):
/// ids `first_id..first_id + count`, dates spread evenly (whole seconds) over `span_secs` from
/// `start`, leads taken in turn from `leads`. Read lazily: a million of them cost a few bytes,
/// not a million stored records.
#[derive(Debug, Clone)]
pub struct VisitBlock {
    first_id: i64,
    count: u64,
    start: DateTime<Utc>,
    span_secs: u64,
    leads: Vec<i64>,
}

/// Web pages a block's visits go to in turn (`/page/<n>`, page id `1000 + n`).
const VISIT_PAGES: u64 = 50;

impl VisitBlock {
    fn last_id(&self) -> i64 {
        self.first_id + self.count as i64 - 1
    }

    /// Returns the date of the block's `i`th visit.
    fn date(&self, i: u64) -> DateTime<Utc> {
        let offset =
            (u128::from(i) * u128::from(self.span_secs) / u128::from(self.count.max(1))) as i64;
        self.start + chrono::Duration::seconds(offset)
    }

    /// Returns the number of the block's visits dated before `since`.
    fn count_before(&self, since: DateTime<Utc>) -> u64 {
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.date(mid) < since {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Returns the block's `i`th visit.
    fn activity(&self, i: u64) -> Activity {
        let page = i % VISIT_PAGES;
        let url = format!("/page/{page}");
        let lead_id = self
            .leads
            .get((i % self.leads.len().max(1) as u64) as usize)
            .copied()
            .unwrap_or(0);
        let mut attrs = Map::new();
        attrs.insert("Client IP Address".into(), json!("192.0.2.1"));
        attrs.insert("Webpage URL".into(), json!(url));
        Activity {
            id: self.first_id + i as i64,
            lead_id,
            date: self.date(i),
            type_id: 1,
            primary_id: Some(1000 + page as i64),
            primary_value: Some(url),
            attributes: attrs,
            change: None,
            reason: None,
        }
    }

    /// Returns the block's visits with an id above `after`, in id order.
    fn after(&self, after: i64) -> impl Iterator<Item = Activity> + '_ {
        let from = u64::try_from((after + 1 - self.first_id).max(0)).unwrap_or(0);
        (from.min(self.count)..self.count).map(move |i| self.activity(i))
    }
}

/// A static list.
#[derive(Debug, Clone)]
pub struct StaticList {
    /// List id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the list asset (name, description).
    pub updated_at: DateTime<Utc>,
    /// Description.
    pub description: String,
    /// The folder or program holding the list: (id, `Folder` or `Program`).
    pub folder: (i64, &'static str),
    /// Member lead ids.
    pub members: BTreeSet<i64>,
}

/// A program and its members.
#[derive(Debug, Clone)]
pub struct Program {
    /// Program id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Type (`Default`, `Email`, `Event`, `Engagement`).
    pub kind: &'static str,
    /// Channel.
    pub channel: &'static str,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the program asset.
    pub updated_at: DateTime<Utc>,
    /// Members: lead id -> (status name, reached success, membership date).
    pub members: BTreeMap<i64, (String, bool, DateTime<Utc>)>,
    /// Program member custom field values by lead id.
    pub member_fields: BTreeMap<i64, Map<String, Value>>,
    /// When each member last changed (status or data), by lead id: the members query's
    /// `updatedAt` filter reads it.
    pub member_updated: BTreeMap<i64, DateTime<Utc>>,
    /// The folder holding the program: (id, name).
    pub folder: (i64, &'static str),
    /// Tags: (tag type, tag value).
    pub tags: Vec<(&'static str, &'static str)>,
}

/// A store of one non-lead kind.
#[derive(Debug, Default)]
pub struct ObjStore {
    /// Records by id.
    pub records: BTreeMap<i64, ObjRecord>,
    /// Dedupe key (joined dedupe values) -> id.
    pub by_key: HashMap<String, i64>,
    next_id: i64,
}

impl ObjStore {
    /// Returns the dedupe key of a record's values, if every dedupe field is present.
    pub fn key_of(kind: ObjKind, values: &Map<String, Value>) -> Option<String> {
        let mut parts = Vec::new();
        for field in kind.schema().dedupe {
            match values.get(*field) {
                Some(Value::Null) | None => return None,
                Some(Value::String(s)) if s.is_empty() => return None,
                Some(Value::String(s)) => parts.push(s.clone()),
                Some(other) => parts.push(other.to_string()),
            }
        }
        Some(parts.join("\u{1f}"))
    }

    /// Returns the id of the record with `guid`.
    pub fn by_guid(&self, guid: &str) -> Option<i64> {
        let id: i64 = guid.strip_prefix("g-")?.split('-').next()?.parse().ok()?;
        self.records
            .get(&id)
            .filter(|r| r.guid == guid)
            .map(|r| r.id)
    }

    /// Inserts a new record and returns its id.
    pub fn insert(&mut self, kind: ObjKind, values: Map<String, Value>, now: DateTime<Utc>) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        let guid = format!(
            "g-{id}-{:08x}",
            (id as u64).wrapping_mul(0x9E37_79B9) as u32
        );
        if let Some(key) = Self::key_of(kind, &values) {
            self.by_key.insert(key, id);
        }
        self.records.insert(
            id,
            ObjRecord {
                id,
                guid,
                created_at: now,
                updated_at: now,
                values,
            },
        );
        id
    }

    /// Removes a record.
    pub fn remove(&mut self, kind: ObjKind, id: i64) -> Option<ObjRecord> {
        let record = self.records.remove(&id)?;
        if let Some(key) = Self::key_of(kind, &record.values) {
            self.by_key.remove(&key);
        }
        Some(record)
    }
}

/// The outcome of one lead write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadWrite {
    /// Created with this id.
    Created(i64),
    /// Updated.
    Updated(i64),
    /// Skipped with a 1xxx reason.
    Skipped(&'static str, String),
}

/// What changed on a generated lead, kept instead of the whole lead (a generated lead is built
/// again from the seed on every read, so a million leads cost nothing until written): its update
/// time and the fields whose values differ from the generated ones (`None`: cleared). A lead
/// whose CRM key was written back costs about a hundred bytes here, not a few kilobytes.
#[derive(Debug, Clone, PartialEq)]
struct LeadPatch {
    updated_at: DateTime<Utc>,
    values: Vec<(u16, Option<Value>)>,
}

impl LeadPatch {
    /// Returns what turns `base` into `lead`.
    fn diff(base: &Lead, lead: &Lead) -> LeadPatch {
        let mut values = Vec::new();
        for (idx, value) in &lead.values {
            if base.values.get(idx) != Some(value) {
                values.push((*idx, Some(value.clone())));
            }
        }
        for idx in base.values.keys() {
            if !lead.values.contains_key(idx) {
                values.push((*idx, None));
            }
        }
        values.shrink_to_fit();
        LeadPatch {
            updated_at: lead.updated_at,
            values,
        }
    }

    fn apply(&self, lead: &mut Lead) {
        lead.updated_at = self.updated_at;
        for (idx, value) in &self.values {
            match value {
                Some(v) => {
                    lead.values.insert(*idx, v.clone());
                }
                None => {
                    lead.values.remove(idx);
                }
            }
        }
    }
}

/// All data of the simulated instance.
#[derive(Debug)]
pub struct Db {
    seed: u64,
    start: DateTime<Utc>,
    gen_count: usize,
    /// Leads created through the API or a user (ids above the generated ones).
    leads: HashMap<i64, Lead>,
    /// Changes to generated leads.
    patches: HashMap<i64, LeadPatch>,
    deleted: HashSet<i64>,
    next_lead_id: i64,
    index: HashMap<(u16, String), BTreeSet<i64>>,
    /// Non-lead objects by kind.
    pub objects: HashMap<ObjKind, ObjStore>,
    /// The activity log, in id (and date) order. The generated leads' New Lead activities are
    /// not in it (see [`Db::feed_after`]).
    pub activities: Vec<Activity>,
    /// The generated leads' creation (date, lead id) in date order: their New Lead activities,
    /// numbered 1.. in this order, come before every logged activity.
    gen_new_leads: Vec<(DateTime<Utc>, i64)>,
    /// The id after which logged activities are numbered.
    first_logged_id: i64,
    /// Visit Webpage activities logged at volume, read lazily, interleaved with `activities`
    /// by id (see [`Db::log_visits`]).
    visit_blocks: Vec<VisitBlock>,
    /// Static lists by id.
    pub lists: BTreeMap<i64, StaticList>,
    /// Programs by id.
    pub programs: BTreeMap<i64, Program>,
    /// Campaigns, custom activity types and read-only assets.
    pub catalog: Catalog,
}

const INDEXED: &[&str] = &["email", "crmContactId"];

fn norm(field: &str, value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) if field == "email" => Some(s.to_lowercase()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The API-only user every REST and bulk write is attributed to.
pub const API_USER: &str = "api-user@sim.example.com";
/// The Marketo user that admin-API and [`super::SimHandle`] edits are attributed to.
pub const UI_USER: &str = "marketer@sim.example.com";

/// Returns the `Source` attribute and the modifying user of a change made for `reason`.
pub fn origin(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "Manual edit" => ("Marketo UI", UI_USER),
        "List import" => ("List import", API_USER),
        _ => ("Web service API", API_USER),
    }
}

/// Returns whether a value counts as empty (null or "").
pub fn is_empty(value: &Value) -> bool {
    matches!(value, Value::Null) || value.as_str() == Some("")
}

impl Db {
    /// Returns a database with `leads` generated leads and the related generated records.
    pub fn generate(seed: u64, start: DateTime<Utc>, leads: usize) -> Self {
        let mut db = Db {
            seed,
            start,
            gen_count: leads,
            leads: HashMap::new(),
            patches: HashMap::new(),
            deleted: HashSet::new(),
            next_lead_id: leads as i64,
            index: HashMap::new(),
            objects: HashMap::new(),
            activities: Vec::new(),
            gen_new_leads: Vec::new(),
            first_logged_id: (leads as i64).max(100_000),
            visit_blocks: Vec::new(),
            lists: BTreeMap::new(),
            programs: BTreeMap::new(),
            catalog: Catalog::generate(start),
        };
        for kind in ObjKind::all() {
            db.objects.insert(kind, ObjStore::default());
        }
        db.gen_new_leads = (1..=leads as i64)
            .map(|id| (generator::lead_times(seed, start, id).0, id))
            .collect();
        db.gen_new_leads.sort_unstable();
        let (opps, roles) = generator::opportunities(seed, start, leads);
        let sets = [
            (ObjKind::Company, generator::companies(seed, start, leads)),
            (ObjKind::SalesPerson, generator::sales_persons(seed, start)),
            (ObjKind::Opportunity, opps),
            (ObjKind::Role, roles),
            (ObjKind::Car, generator::cars(seed, start, leads)),
        ];
        for (kind, records) in sets {
            let store = db.objects.get_mut(&kind).expect("every kind has a store");
            for rec in records {
                let id = store.insert(kind, rec.values, rec.created_at);
                if let Some(r) = store.records.get_mut(&id) {
                    r.updated_at = rec.created_at;
                }
            }
        }
        let list_members: BTreeSet<i64> =
            (1..=leads.min(500) as i64).filter(|i| i % 3 == 0).collect();
        db.lists.insert(
            1001,
            StaticList {
                id: 1001,
                name: "Newsletter".into(),
                created_at: start,
                updated_at: start,
                description: String::new(),
                folder: (19, "Folder"),
                members: list_members,
            },
        );
        db.lists.insert(
            1002,
            StaticList {
                id: 1002,
                name: "Event Invitees".into(),
                created_at: start,
                updated_at: start,
                description: String::new(),
                folder: (1107, "Program"),
                members: BTreeSet::new(),
            },
        );
        let mut members = BTreeMap::new();
        for lead in (1..=leads.min(200) as i64).filter(|i| i % 4 == 0) {
            members.insert(lead, ("Member".to_string(), lead % 8 == 0, start));
        }
        db.programs.insert(
            1107,
            Program {
                id: 1107,
                name: "Spring Webinar".into(),
                kind: "Event",
                channel: "Webinar",
                created_at: start - chrono::Duration::days(60),
                updated_at: start - chrono::Duration::days(20),
                members,
                member_fields: BTreeMap::new(),
                member_updated: BTreeMap::new(),
                folder: (19, "Marketing Activities"),
                tags: vec![("Region", "EMEA")],
            },
        );
        db.programs.insert(
            1108,
            Program {
                id: 1108,
                name: "Nurture Track".into(),
                kind: "Engagement",
                channel: "Nurture",
                created_at: start - chrono::Duration::days(3),
                updated_at: start - chrono::Duration::days(3),
                members: BTreeMap::new(),
                member_fields: BTreeMap::new(),
                member_updated: BTreeMap::new(),
                folder: (20, "Nurture Programs"),
                tags: vec![("Region", "AMER")],
            },
        );
        db
    }

    /// Returns the highest lead id ever assigned.
    pub fn max_lead_id(&self) -> i64 {
        self.next_lead_id
    }

    /// Returns the number of live leads.
    pub fn lead_count(&self) -> usize {
        let generated_live = (1..=self.gen_count as i64)
            .filter(|id| !self.leads.contains_key(id) && !self.deleted.contains(id))
            .count();
        generated_live + self.leads.len()
    }

    /// Returns lead `id`, if it exists.
    pub fn lead(&self, id: i64) -> Option<Cow<'_, Lead>> {
        if let Some(lead) = self.leads.get(&id) {
            return Some(Cow::Borrowed(lead));
        }
        if !self.is_generated(id) || self.deleted.contains(&id) {
            return None;
        }
        let mut lead = self.generated(id);
        if let Some(patch) = self.patches.get(&id) {
            patch.apply(&mut lead);
        }
        Some(Cow::Owned(lead))
    }

    fn is_generated(&self, id: i64) -> bool {
        id >= 1 && id <= self.gen_count as i64
    }

    /// Returns generated lead `id` as the generator made it (whatever changed since).
    fn generated(&self, id: i64) -> Lead {
        generator::lead(self.seed, self.start, self.gen_count, id)
    }

    /// Calls `f` on every live lead in id order.
    pub fn for_each_lead(&self, mut f: impl FnMut(&Lead)) {
        for id in 1..=self.next_lead_id {
            if let Some(lead) = self.lead(id) {
                f(&lead);
            }
        }
    }

    /// Calls `f` on every live lead created (and updated) within the given inclusive spans, in
    /// id order. Generated leads outside the spans are skipped without being built.
    pub fn for_each_lead_in(
        &self,
        created: Option<(DateTime<Utc>, DateTime<Utc>)>,
        updated: Option<(DateTime<Utc>, DateTime<Utc>)>,
        mut f: impl FnMut(&Lead),
    ) {
        let inside = |at: DateTime<Utc>, span: Option<(DateTime<Utc>, DateTime<Utc>)>| {
            span.is_none_or(|(a, b)| at >= a && at <= b)
        };
        for id in 1..=self.next_lead_id {
            if !self.leads.contains_key(&id)
                && !self.patches.contains_key(&id)
                && id <= self.gen_count as i64
                && !self.deleted.contains(&id)
            {
                let (c, u) = generator::lead_times(self.seed, self.start, id);
                if !inside(c, created) || !inside(u, updated) {
                    continue;
                }
            }
            if let Some(lead) = self.lead(id)
                && inside(lead.created_at, created)
                && inside(lead.updated_at, updated)
            {
                f(&lead);
            }
        }
    }

    /// Returns the company linked to a lead, if any.
    pub fn linked_company(&self, lead: &Lead) -> Option<&ObjRecord> {
        let (idx, _) = lead_field("externalCompanyId")?;
        let key = lead.values.get(&idx)?.as_str()?;
        let store = self.objects.get(&ObjKind::Company)?;
        store.by_key.get(key).and_then(|id| store.records.get(id))
    }

    /// Returns a lead's value of field `name` as the API shows it (company fields read through).
    pub fn lead_value(&self, lead: &Lead, name: &str) -> Value {
        match name {
            "id" => return json!(lead.id),
            "createdAt" => return json!(fmt_time(lead.created_at)),
            "updatedAt" => return json!(fmt_time(lead.updated_at)),
            _ => {}
        }
        let Some((idx, field)) = lead_field(name) else {
            return Value::Null;
        };
        if field.company
            && let Some(company) = self.linked_company(lead)
        {
            return company.values.get(name).cloned().unwrap_or(Value::Null);
        }
        lead.values.get(&idx).cloned().unwrap_or(Value::Null)
    }

    /// Returns a lead as a JSON object with the given fields.
    pub fn lead_json(&self, lead: &Lead, fields: &[String]) -> Value {
        let mut out = Map::new();
        for name in fields {
            out.insert(name.clone(), self.lead_value(lead, name));
        }
        Value::Object(out)
    }

    /// Returns the ids of live leads whose `field` equals `value` (as text; email case-insensitive).
    pub fn find_leads(&self, field: &str, value: &str) -> Vec<i64> {
        if field == "id" {
            return value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|id| self.lead(*id).is_some())
                .into_iter()
                .collect();
        }
        let Some((idx, _)) = lead_field(field) else {
            return Vec::new();
        };
        let wanted = if field == "email" {
            value.to_lowercase()
        } else {
            value.to_string()
        };
        let matches = |db: &Db, lead: &Lead| {
            norm(field, &db.lead_value(lead, field)).as_deref() == Some(wanted.as_str())
        };
        if INDEXED.contains(&field) {
            let mut out: BTreeSet<i64> = self
                .index
                .get(&(idx, wanted.clone()))
                .cloned()
                .unwrap_or_default();
            if let Some(id) = generator::id_hint(field, value)
                && !self.leads.contains_key(&id)
                && let Some(lead) = self.lead(id)
                && matches(self, &lead)
            {
                out.insert(id);
            }
            return out.into_iter().collect();
        }
        let mut out = Vec::new();
        self.for_each_lead(|lead| {
            if matches(self, lead) {
                out.push(lead.id);
            }
        });
        out
    }

    /// Moves lead `id` in the index from `old`'s values to `new`'s. A value equal to the
    /// generated lead's (`base`) is not indexed: [`generator::id_hint`] finds it.
    fn reindex(&mut self, id: i64, old: Option<&Lead>, new: Option<&Lead>, base: Option<&Lead>) {
        for name in INDEXED {
            let Some((idx, _)) = lead_field(name) else {
                continue;
            };
            let generated = base
                .and_then(|l| l.values.get(&idx))
                .and_then(|v| norm(name, v));
            if let Some(key) = old
                .and_then(|l| l.values.get(&idx))
                .and_then(|v| norm(name, v))
                && let Some(set) = self.index.get_mut(&(idx, key))
            {
                set.remove(&id);
            }
            if let Some(key) = new
                .and_then(|l| l.values.get(&idx))
                .and_then(|v| norm(name, v))
                .filter(|k| generated.as_ref() != Some(k))
            {
                self.index.entry((idx, key)).or_default().insert(id);
            }
        }
    }

    fn store_lead(&mut self, lead: Lead) {
        let old = self.lead(lead.id).map(Cow::into_owned);
        if self.is_generated(lead.id) {
            let base = self.generated(lead.id);
            self.reindex(lead.id, old.as_ref(), Some(&lead), Some(&base));
            let patch = LeadPatch::diff(&base, &lead);
            if patch.values.is_empty() && patch.updated_at == base.updated_at {
                self.patches.remove(&lead.id);
            } else {
                self.patches.insert(lead.id, patch);
            }
            return;
        }
        self.reindex(lead.id, old.as_ref(), Some(&lead), None);
        self.leads.insert(lead.id, lead);
    }

    /// Returns the New Lead (12) activity of the generated lead at `index` of the creation
    /// order (id `index + 1`), as the generator's list import left it.
    fn generated_new_lead(&self, index: usize) -> Activity {
        let (date, lead_id) = self.gen_new_leads[index];
        let mut attrs = Map::new();
        attrs.insert(
            "Created Date".into(),
            json!(date.format("%Y-%m-%d").to_string()),
        );
        attrs.insert("Source Type".into(), json!("List import"));
        attrs.insert("List Name".into(), json!("Initial import"));
        Activity {
            id: index as i64 + 1,
            lead_id,
            date,
            type_id: 12,
            primary_id: Some(lead_id),
            primary_value: None,
            attributes: attrs,
            change: None,
            reason: None,
        }
    }

    /// Leaves the generated leads' New Lead activities out of the feed (see
    /// `SimConfig::generated_new_lead_activities`).
    pub fn drop_generated_new_leads(&mut self) {
        self.gen_new_leads = Vec::new();
    }

    /// Returns the whole activity feed after activity id `after`, in id order: the generated
    /// leads' New Lead activities (of leads not deleted since), then the logged ones (and the
    /// visits logged at volume among them).
    pub fn feed_after(&self, after: i64) -> impl Iterator<Item = Cow<'_, Activity>> + '_ {
        let from = usize::try_from(after.max(0))
            .unwrap_or(usize::MAX)
            .min(self.gen_new_leads.len());
        let generated = (from..self.gen_new_leads.len())
            .filter(|i| !self.deleted.contains(&self.gen_new_leads[*i].1))
            .map(|i| Cow::Owned(self.generated_new_lead(i)));
        let start = self.activities.partition_point(|a| a.id <= after);
        let mut logged = self.activities[start..].iter().peekable();
        let mut visits = self
            .visit_blocks
            .iter()
            .filter(move |b| b.last_id() > after)
            .flat_map(move |b| b.after(after))
            .peekable();
        let merged = std::iter::from_fn(move || match (logged.peek(), visits.peek()) {
            (Some(a), Some(v)) if v.id < a.id => visits.next().map(Cow::Owned),
            (Some(_), _) => logged.next().map(Cow::Borrowed),
            (None, _) => visits.next().map(Cow::Owned),
        });
        generated.chain(merged)
    }

    /// Returns the id of the last activity dated before `since` (0 when there is none): the
    /// feed after it holds every activity dated `since` or later.
    pub fn last_id_before(&self, since: DateTime<Utc>) -> i64 {
        // The first logged activity and the first visit dated `since` or later.
        let logged = self
            .activities
            .iter()
            .find(|a| a.date >= since)
            .map(|a| a.id);
        let visits = self.visit_blocks.iter().find_map(|b| {
            let n = b.count_before(since);
            (n < b.count).then_some(b.first_id + n as i64)
        });
        let bound = match (logged, visits) {
            (Some(a), Some(v)) => Some(a.min(v) - 1),
            (Some(a), None) | (None, Some(a)) => Some(a - 1),
            (None, None) => {
                let last = self.activities.last().map(|a| a.id);
                let last_visit = self.visit_blocks.last().map(VisitBlock::last_id);
                last.max(last_visit)
            }
        };
        let first = [
            self.activities.first().map(|a| a.id),
            self.visit_blocks.first().map(|b| b.first_id),
        ]
        .into_iter()
        .flatten()
        .min();
        match (bound, first) {
            (Some(bound), Some(first)) if bound >= first => bound,
            _ => self
                .gen_new_leads
                .partition_point(|(date, _)| *date < since) as i64,
        }
    }

    /// Returns the id the next logged activity gets.
    fn next_logged_id(&self) -> i64 {
        let logged = self
            .activities
            .last()
            .map_or(self.first_logged_id, |a| a.id);
        let visits = self.visit_blocks.last().map_or(0, VisitBlock::last_id);
        logged.max(visits) + 1
    }

    /// Logs `count` Visit Webpage (1) activities of `leads` (in turn) dated evenly over
    /// `span_secs` seconds from `start`, stored as one lazily read block, and returns their first
    /// and last ids. `start` must not be before the last logged activity (the log stays in date
    /// order); the caller moves its clock past the span. A merge moves these visits to the
    /// winner like the others.
    pub fn log_visits(
        &mut self,
        leads: Vec<i64>,
        count: u64,
        start: DateTime<Utc>,
        span_secs: u64,
    ) -> Option<(i64, i64)> {
        if count == 0 || leads.is_empty() {
            return None;
        }
        let block = VisitBlock {
            first_id: self.next_logged_id(),
            count,
            start,
            span_secs,
            leads,
        };
        let ids = (block.first_id, block.last_id());
        self.visit_blocks.push(block);
        Some(ids)
    }

    /// Appends an activity and returns its id.
    pub fn log_activity(
        &mut self,
        lead_id: i64,
        date: DateTime<Utc>,
        type_id: u32,
        primary: (Option<i64>, Option<String>),
        attributes: Map<String, Value>,
        change: Option<(u32, &'static str, Value, Value)>,
    ) -> i64 {
        let id = self.next_logged_id();
        self.activities.push(Activity {
            id,
            lead_id,
            date,
            type_id,
            primary_id: primary.0,
            primary_value: primary.1,
            attributes,
            change,
            reason: None,
        });
        id
    }

    /// Appends a Change Data Value (13) of `field` and returns its id.
    fn log_change(
        &mut self,
        lead_id: i64,
        date: DateTime<Utc>,
        idx: u16,
        (old, new): (Value, Value),
        reason: &str,
    ) -> i64 {
        let field = lead_field_at(idx);
        let id = self.next_logged_id();
        self.activities.push(Activity {
            id,
            lead_id,
            date,
            type_id: 13,
            primary_id: Some(field.id as i64),
            primary_value: Some(field.display.to_string()),
            attributes: Map::new(),
            change: Some((field.id, field.name, old, new)),
            reason: Some(reason.into()),
        });
        id
    }

    /// Creates a lead from API-named values; logs New Lead (12). Unknown or read-only names are
    /// ignored.
    pub fn create_lead(
        &mut self,
        values: &Map<String, Value>,
        now: DateTime<Utc>,
        source: &str,
    ) -> i64 {
        self.next_lead_id += 1;
        let id = self.next_lead_id;
        let mut stored = BTreeMap::new();
        for (name, value) in values {
            if let Some((idx, field)) = lead_field(name)
                && !field.read_only
                && !is_empty(value)
            {
                stored.insert(idx, value.clone());
            }
        }
        self.store_lead(Lead {
            id,
            created_at: now,
            updated_at: now,
            values: stored,
        });
        let mut attrs = Map::new();
        attrs.insert(
            "Created Date".into(),
            json!(now.format("%Y-%m-%d").to_string()),
        );
        attrs.insert("Source Type".into(), json!(source));
        attrs.insert("API Method Name".into(), json!("syncLead"));
        self.log_activity(id, now, 12, (Some(id), None), attrs, None);
        id
    }

    /// Returns the company fields in `values` that a linked lead would refuse (values that differ
    /// from the company's).
    pub fn refused_company_fields(&self, lead: &Lead, values: &Map<String, Value>) -> Vec<String> {
        if self.linked_company(lead).is_none() {
            return Vec::new();
        }
        values
            .iter()
            .filter(|(name, _)| lead_field(name).is_some_and(|(_, f)| f.company))
            .filter(|(name, value)| {
                let current = self.lead_value(lead, name);
                current != **value && !(is_empty(&current) && is_empty(value))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Updates a lead from API-named values; logs one Change Data Value (13) per changed field.
    /// Returns the number of changed fields, or `None` when the lead does not exist.
    pub fn update_lead(
        &mut self,
        id: i64,
        values: &Map<String, Value>,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Option<usize> {
        let mut lead = self.lead(id)?.into_owned();
        let linked = self.linked_company(&lead).is_some();
        let mut changes = Vec::new();
        for (name, value) in values {
            let Some((idx, field)) = lead_field(name) else {
                continue;
            };
            if field.read_only || (field.company && linked) {
                continue;
            }
            let old = lead.values.get(&idx).cloned().unwrap_or(Value::Null);
            let same = old == *value
                || (is_empty(&old) && is_empty(value))
                || old.to_string().trim_matches('"') == value.to_string().trim_matches('"');
            if same {
                continue;
            }
            if is_empty(value) {
                lead.values.remove(&idx);
            } else {
                lead.values.insert(idx, value.clone());
            }
            changes.push((idx, old, value.clone()));
        }
        if changes.is_empty() {
            return Some(0);
        }
        lead.updated_at = now;
        self.store_lead(lead);
        let count = changes.len();
        for (idx, old, new) in changes {
            self.log_change(id, now, idx, (old, new), reason);
        }
        Some(count)
    }

    fn lead_name(&self, lead: &Lead) -> String {
        let first = self.lead_value(lead, "firstName");
        let last = self.lead_value(lead, "lastName");
        let parts: Vec<&str> = [first.as_str(), last.as_str()]
            .into_iter()
            .flatten()
            .collect();
        parts.join(" ")
    }

    /// Deletes a lead; logs Delete Lead (37). Returns false when it does not exist.
    pub fn delete_lead(&mut self, id: i64, now: DateTime<Utc>) -> bool {
        let Some(lead) = self.lead(id).map(Cow::into_owned) else {
            return false;
        };
        let name = self.lead_name(&lead);
        self.remove_lead(&lead);
        let mut attrs = Map::new();
        attrs.insert("Remove from CRM".into(), json!(false));
        self.log_activity(id, now, 37, (Some(id), Some(name)), attrs, None);
        true
    }

    fn remove_lead(&mut self, lead: &Lead) {
        self.reindex(lead.id, Some(lead), None, None);
        self.leads.remove(&lead.id);
        self.patches.remove(&lead.id);
        self.deleted.insert(lead.id);
        for list in self.lists.values_mut() {
            list.members.remove(&lead.id);
        }
        for program in self.programs.values_mut() {
            program.members.remove(&lead.id);
        }
    }

    /// Merges `losers` into `winner`: the winner keeps its values unless empty; losers'
    /// activities and memberships move to the winner; logs Merge Leads (32).
    ///
    /// # Errors
    ///
    /// Returns the id that does not exist.
    pub fn merge_leads(
        &mut self,
        winner: i64,
        losers: &[i64],
        now: DateTime<Utc>,
    ) -> Result<(), i64> {
        let mut win = self.lead(winner).ok_or(winner)?.into_owned();
        let mut losing = Vec::new();
        for id in losers {
            if *id == winner {
                continue;
            }
            losing.push(self.lead(*id).ok_or(*id)?.into_owned());
        }
        let mut master_updated = false;
        for loser in &losing {
            for (idx, value) in &loser.values {
                let empty = win.values.get(idx).is_none_or(is_empty);
                if empty && !is_empty(value) {
                    win.values.insert(*idx, value.clone());
                    master_updated = true;
                }
            }
        }
        if master_updated {
            win.updated_at = now;
        }
        self.store_lead(win.clone());
        let loser_ids: Vec<i64> = losing.iter().map(|l| l.id).collect();
        for loser in &losing {
            for list in self.lists.values_mut() {
                if list.members.remove(&loser.id) {
                    list.members.insert(winner);
                }
            }
            for program in self.programs.values_mut() {
                if let Some(m) = program.members.remove(&loser.id) {
                    program.members.entry(winner).or_insert(m);
                }
            }
            self.remove_lead(loser);
        }
        for activity in &mut self.activities {
            if loser_ids.contains(&activity.lead_id) {
                activity.lead_id = winner;
            }
        }
        for block in &mut self.visit_blocks {
            for lead in &mut block.leads {
                if loser_ids.contains(lead) {
                    *lead = winner;
                }
            }
        }
        let mut attrs = Map::new();
        attrs.insert("Merge IDs".into(), json!(loser_ids));
        attrs.insert("Merged in Sales".into(), json!(false));
        attrs.insert("Merge Source".into(), json!("leaddb"));
        attrs.insert("Master Updated".into(), json!(master_updated));
        let name = self.lead_name(&win);
        self.log_activity(winner, now, 32, (Some(winner), Some(name)), attrs, None);
        Ok(())
    }

    /// Returns the store of a kind.
    pub fn objs(&self, kind: ObjKind) -> &ObjStore {
        self.objects.get(&kind).expect("every kind has a store")
    }

    /// Returns the mutable store of a kind.
    pub fn objs_mut(&mut self, kind: ObjKind) -> &mut ObjStore {
        self.objects.get_mut(&kind).expect("every kind has a store")
    }

    /// Returns a record as JSON with the given fields (or all when empty).
    pub fn obj_json(kind: ObjKind, record: &ObjRecord, fields: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        let all: Vec<String>;
        let names: &[String] = if fields.is_empty() {
            all = kind
                .schema()
                .fields
                .iter()
                .map(|f| f.0.to_string())
                .collect();
            &all
        } else {
            fields
        };
        for name in names {
            let value = match name.as_str() {
                "id" if !kind.guid_keyed() => json!(record.id),
                "marketoGUID" | "marketoGuid" if kind.guid_keyed() => json!(record.guid),
                "createdAt" => json!(fmt_time(record.created_at)),
                "updatedAt" => json!(fmt_time(record.updated_at)),
                other => record.values.get(other).cloned().unwrap_or(Value::Null),
            };
            out.insert(name.clone(), value);
        }
        out
    }

    /// Writes (creates or updates) a non-lead record from the API; role creation logs
    /// Add to Opportunity (34), and a car added to a lead (created with a `leadId`, or moved to
    /// another lead) logs Add to Car ([`CAR_ADDED_ACTIVITY`]); other car updates log nothing, as
    /// in Marketo. Returns (created?, id).
    pub fn put_object(
        &mut self,
        kind: ObjKind,
        existing: Option<i64>,
        input: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> (bool, i64) {
        let schema = kind.schema();
        let clean: Map<String, Value> = input
            .iter()
            .filter(|(k, _)| {
                schema.fields.iter().any(|f| f.0 == k.as_str())
                    && !matches!(k.as_str(), "id" | "marketoGUID" | "createdAt" | "updatedAt")
            })
            .map(|(k, v)| {
                (
                    k.clone(),
                    if v.as_str() == Some("") {
                        Value::Null
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        if let Some(id) = existing {
            let store = self.objs_mut(kind);
            let mut moved_to = None;
            if let Some(record) = store.records.get_mut(&id) {
                let before = record.values.get("leadId").and_then(Value::as_i64);
                let mut changed = false;
                for (k, v) in clean {
                    if record.values.get(&k) != Some(&v) {
                        record.values.insert(k, v);
                        changed = true;
                    }
                }
                if changed {
                    record.updated_at = now;
                }
                let after = record.values.get("leadId").and_then(Value::as_i64);
                if after != before {
                    moved_to = after;
                }
            }
            if kind == ObjKind::Car
                && let Some(lead_id) = moved_to
            {
                self.log_car_added(id, lead_id, now);
            }
            return (false, id);
        }
        let id = self.objs_mut(kind).insert(kind, clean.clone(), now);
        if kind == ObjKind::Car
            && let Some(lead_id) = clean.get("leadId").and_then(Value::as_i64)
        {
            self.log_car_added(id, lead_id, now);
        }
        if kind == ObjKind::Role
            && let Some(lead_id) = clean.get("leadId").and_then(Value::as_i64)
        {
            let opp_key = clean
                .get("externalOpportunityId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let opp = self
                .objs(ObjKind::Opportunity)
                .by_key
                .get(&opp_key)
                .copied();
            let mut attrs = Map::new();
            attrs.insert(
                "Is Primary".into(),
                clean.get("isPrimary").cloned().unwrap_or(json!(false)),
            );
            attrs.insert(
                "Role".into(),
                clean.get("role").cloned().unwrap_or(Value::Null),
            );
            self.log_activity(lead_id, now, 34, (opp, Some(opp_key)), attrs, None);
        }
        (true, id)
    }

    /// Logs Add to Car for car `id` on lead `lead_id` (when that lead exists).
    fn log_car_added(&mut self, id: i64, lead_id: i64, now: DateTime<Utc>) {
        if self.lead(lead_id).is_none() {
            return;
        }
        let Some(record) = self.objs(ObjKind::Car).records.get(&id) else {
            return;
        };
        let vin = record
            .values
            .get("vin")
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        let mut attrs = Map::new();
        attrs.insert("Marketo GUID".into(), json!(record.guid));
        self.log_activity(lead_id, now, CAR_ADDED_ACTIVITY, (None, vin), attrs, None);
    }

    /// Returns the field names of the lead schema (for "all fields" exports).
    pub fn lead_field_names() -> Vec<String> {
        LEAD_FIELDS.iter().map(|f| f.name.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::parse_time;

    fn db() -> (Db, DateTime<Utc>) {
        let start = parse_time("2024-03-01T00:00:00Z").unwrap();
        (Db::generate(3, start, 50), start)
    }

    #[test]
    fn visits_at_volume_interleave_with_logged_activities_by_id_and_date() {
        let (mut db, start) = db();
        let at = |s: i64| start + chrono::Duration::seconds(s);
        let mut input = Map::new();
        input.insert("title".into(), json!("Before"));
        db.update_lead(5, &input, at(10), "test");
        let (first, last) = db
            .log_visits(vec![1, 2], 1_000_000, at(100), 86_400)
            .unwrap();
        assert_eq!(last - first + 1, 1_000_000);
        input.insert("title".into(), json!("After"));
        let after = db.update_lead(5, &input, at(100 + 86_400), "test");
        assert_eq!(after, Some(1));
        let after_id = db.activities.last().unwrap().id;
        assert_eq!(after_id, last + 1);
        // Ids ascend across the logged activities and the block; dates never go back.
        let feed: Vec<_> = db.feed_after(first - 2).take(4).collect();
        let ids: Vec<i64> = feed.iter().map(|a| a.id).collect();
        assert_eq!(ids, [first - 1, first, first + 1, first + 2]);
        assert_eq!(feed[1].type_id, 1);
        assert_eq!(feed[1].lead_id, 1);
        assert_eq!(feed[2].lead_id, 2);
        assert_eq!(feed[1].attributes()["Webpage URL"], json!("/page/0"));
        let tail: Vec<i64> = db.feed_after(last - 1).map(|a| a.id).collect();
        assert_eq!(tail, [last, after_id]);
        // Half the day in, half the visits are before.
        let mid = db.last_id_before(at(100 + 43_200));
        assert_eq!(mid, first + 499_999);
        assert!(db.feed_after(mid).next().unwrap().date >= at(100 + 43_200));
        assert_eq!(db.last_id_before(at(100)), first - 1);
        assert_eq!(db.last_id_before(at(200_000)), after_id);
    }

    #[test]
    fn update_logs_change_data_value_per_field() {
        let (mut db, now) = db();
        let mut input = Map::new();
        input.insert("firstName".into(), json!("Zed"));
        input.insert("title".into(), json!("Boss"));
        assert_eq!(db.update_lead(5, &input, now, "test"), Some(2));
        let changes: Vec<_> = db.activities.iter().filter(|a| a.type_id == 13).collect();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].primary_id, Some(21));
        // The attributes are built from the change and its reason, in Marketo's order.
        let attrs = changes[0].attributes();
        let names: Vec<&str> = attrs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "New Value",
                "Old Value",
                "Reason",
                "Source",
                "Modifying User"
            ]
        );
        assert_eq!(attrs["New Value"], json!("Zed"));
        assert_eq!(attrs["Reason"], json!("test"));
        assert_eq!(attrs["Source"], json!("Web service API"));
        assert_eq!(attrs["Modifying User"], json!(API_USER));
        assert!(changes[0].attributes.is_empty(), "not stored");
        let (_, _, old, _) = changes[0].change.clone().unwrap();
        assert_eq!(attrs["Old Value"], old);
        assert_eq!(db.update_lead(5, &input, now, "test"), Some(0));
    }

    #[test]
    fn a_car_logs_add_to_car_when_added_to_a_lead_not_when_edited() {
        let (mut db, now) = db();
        let added = |db: &Db| {
            db.activities
                .iter()
                .filter(|a| a.type_id == CAR_ADDED_ACTIVITY)
                .map(|a| (a.lead_id, a.primary_value.clone()))
                .collect::<Vec<_>>()
        };
        let mut car = Map::new();
        car.insert("vin".into(), json!("V1"));
        car.insert("leadId".into(), json!(2));
        let (created, id) = db.put_object(ObjKind::Car, None, &car, now);
        assert!(created);
        assert_eq!(added(&db), vec![(2, Some("V1".to_owned()))]);
        let guid = db.objs(ObjKind::Car).records[&id].guid.clone();
        assert_eq!(
            db.activities.last().unwrap().attributes["Marketo GUID"],
            json!(guid)
        );
        let mut edit = Map::new();
        edit.insert("make".into(), json!("Saab"));
        db.put_object(ObjKind::Car, Some(id), &edit, now);
        assert_eq!(added(&db).len(), 1, "an edit logs nothing");
        edit.insert("leadId".into(), json!(3));
        db.put_object(ObjKind::Car, Some(id), &edit, now);
        assert_eq!(added(&db).last(), Some(&(3, Some("V1".to_owned()))));
    }

    #[test]
    fn email_lookup_finds_generated_and_moved_emails() {
        let (mut db, now) = db();
        let email = db
            .lead_value(&db.lead(7).unwrap(), "email")
            .as_str()
            .unwrap()
            .to_uppercase();
        assert_eq!(db.find_leads("email", &email), vec![7]);
        let mut input = Map::new();
        input.insert("email".into(), json!("new@x.example"));
        db.update_lead(7, &input, now, "test");
        assert!(db.find_leads("email", &email).is_empty());
        assert_eq!(db.find_leads("email", "NEW@x.example"), vec![7]);
    }

    #[test]
    fn a_written_generated_lead_keeps_only_its_changes_and_stays_findable() {
        let (mut db, now) = db();
        let before = db.lead(9).unwrap().into_owned();
        let email = db.lead_value(&before, "email").as_str().unwrap().to_owned();
        let later = now + chrono::Duration::hours(1);
        let mut input = Map::new();
        input.insert("crmContactId".into(), json!("4711"));
        input.insert("title".into(), json!(""));
        assert_eq!(db.update_lead(9, &input, later, "test"), Some(2));
        // Only what changed is stored: the key set, the title cleared, the update time.
        let patch = db.patches.get(&9).unwrap();
        assert_eq!(patch.updated_at, later);
        assert_eq!(patch.values.len(), 2, "{patch:?}");
        assert!(db.leads.is_empty(), "a generated lead is not copied whole");
        let after = db.lead(9).unwrap().into_owned();
        assert_eq!(after.updated_at, later);
        assert_eq!(db.lead_value(&after, "crmContactId"), json!("4711"));
        assert_eq!(db.lead_value(&after, "title"), Value::Null);
        assert_eq!(db.lead_value(&after, "email"), json!(email));
        assert_eq!(after.created_at, before.created_at);
        // Found by the new key (indexed) and by its unchanged generated email (by the hint).
        assert_eq!(db.find_leads("crmContactId", "4711"), vec![9]);
        assert_eq!(db.find_leads("email", &email), vec![9]);
        let mut updated = 0;
        db.for_each_lead_in(None, Some((later, later)), |l| {
            assert_eq!(l.id, 9);
            updated += 1;
        });
        assert_eq!(
            updated, 1,
            "the export by updatedAt sees the new update time"
        );
        assert_eq!(db.lead_count(), 50);
        // Deleted: gone, and its patch with it.
        assert!(db.delete_lead(9, later));
        assert!(db.lead(9).is_none());
        assert!(!db.patches.contains_key(&9));
        assert!(db.find_leads("crmContactId", "4711").is_empty());
        assert_eq!(db.lead_count(), 49);
    }
}
