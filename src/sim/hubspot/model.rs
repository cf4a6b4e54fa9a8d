//! The portal's data: object types with their property definitions, records, merges, owners and
//! associations, and the write operations that both the API routes and the admin API use.
//!
//! Shapes follow HubSpot's CRM v3 object and properties specs
//! (`PublicApiSpecs/CRM/Contacts/Rollouts/424/v3/contacts.json` and its siblings for companies,
//! deals and custom objects, `PublicApiSpecs/CRM/Properties/...`) in
//! `HubSpot/HubSpot-public-api-spec-collection`, and the models of `hubspot-api-client` 12
//! (`SimplePublicObject`, `ModelProperty`, `ObjectSchema`, `PublicOwner`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

/// Object type id of contacts.
pub const CONTACTS: &str = "0-1";
/// Object type id of companies.
pub const COMPANIES: &str = "0-2";
/// Object type id of deals.
pub const DEALS: &str = "0-3";

/// Formats an instant as HubSpot does (`2019-10-30T03:30:17.883Z`).
pub fn fmt_ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a HubSpot datetime value: epoch milliseconds or an ISO-8601 instant.
pub fn parse_ts(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Utc.timestamp_millis_opt(ms).single();
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The data type of a property (`type` in the Properties API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropType {
    /// `string`.
    String,
    /// `number`.
    Number,
    /// `date` (midnight UTC, `YYYY-MM-DD`).
    Date,
    /// `datetime`.
    Datetime,
    /// `enumeration` (options).
    Enumeration,
    /// `bool`.
    Bool,
}

impl PropType {
    /// Returns the API name.
    pub fn as_str(self) -> &'static str {
        match self {
            PropType::String => "string",
            PropType::Number => "number",
            PropType::Date => "date",
            PropType::Datetime => "datetime",
            PropType::Enumeration => "enumeration",
            PropType::Bool => "bool",
        }
    }

    /// Parses an API name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "string" | "phone_number" => PropType::String,
            "number" => PropType::Number,
            "date" => PropType::Date,
            "datetime" => PropType::Datetime,
            "enumeration" => PropType::Enumeration,
            "bool" => PropType::Bool,
            _ => return None,
        })
    }
}

/// One option of an enumeration property.
#[derive(Debug, Clone, PartialEq)]
pub struct PropOption {
    /// Label.
    pub label: String,
    /// Internal value (what the API reads and writes).
    pub value: String,
    /// Display order.
    pub display_order: i64,
    /// Hidden in forms.
    pub hidden: bool,
}

/// A property definition.
#[derive(Debug, Clone)]
pub struct PropertyDef {
    /// Internal name.
    pub name: String,
    /// Label.
    pub label: String,
    /// Data type.
    pub ptype: PropType,
    /// Field type (`text`, `select`, `checkbox`, `booleancheckbox`, `date`, `number`, ...).
    pub field_type: String,
    /// Property group.
    pub group_name: String,
    /// Description.
    pub description: String,
    /// Options of an enumeration.
    pub options: Vec<PropOption>,
    /// Values must be unique among records of the type.
    pub has_unique_value: bool,
    /// HubSpot maintains the value (writes answer `READ_ONLY_VALUE`).
    pub read_only_value: bool,
    /// Defined by HubSpot (not deletable).
    pub hubspot_defined: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Archived (deleted by an admin): hidden from reads and refused in writes.
    pub archived: bool,
}

impl PropertyDef {
    /// Returns a definition with the common defaults.
    pub fn new(name: &str, label: &str, ptype: PropType, field_type: &str) -> Self {
        Self {
            name: name.to_string(),
            label: label.to_string(),
            ptype,
            field_type: field_type.to_string(),
            group_name: "information".to_string(),
            description: String::new(),
            options: Vec::new(),
            has_unique_value: false,
            read_only_value: false,
            hubspot_defined: true,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            archived: false,
        }
    }

    fn read_only(mut self) -> Self {
        self.read_only_value = true;
        self
    }

    fn with_options(mut self, values: &[(&str, &str)]) -> Self {
        self.options = values
            .iter()
            .enumerate()
            .map(|(i, (value, label))| PropOption {
                label: (*label).to_string(),
                value: (*value).to_string(),
                display_order: i as i64,
                hidden: false,
            })
            .collect();
        self
    }

    /// Returns the `Property` JSON of the Properties API.
    pub fn json(&self) -> Value {
        let options: Vec<Value> = self
            .options
            .iter()
            .map(|o| {
                json!({"label": o.label, "value": o.value, "displayOrder": o.display_order,
                       "hidden": o.hidden, "description": ""})
            })
            .collect();
        let mut out = json!({
            "name": self.name,
            "label": self.label,
            "type": self.ptype.as_str(),
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": options,
            "displayOrder": -1,
            "calculated": false,
            "externalOptions": false,
            "hasUniqueValue": self.has_unique_value,
            "hidden": false,
            "hubspotDefined": self.hubspot_defined,
            "modificationMetadata": {
                "archivable": !self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only_value,
            },
            "formField": !self.read_only_value,
            "createdAt": fmt_ts(self.created_at),
            "updatedAt": fmt_ts(self.created_at),
            "archived": self.archived,
        });
        if self.archived {
            out["archivedAt"] = json!(fmt_ts(self.created_at));
        }
        out
    }
}

/// One CRM record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Record id.
    pub id: u64,
    /// Set property values (unset properties are absent).
    pub props: BTreeMap<String, String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last modified (`updatedAt`, `hs_lastmodifieddate`).
    pub updated_at: DateTime<Utc>,
    /// Archived at, when archived.
    pub archived_at: Option<DateTime<Utc>>,
}

/// One object type (standard or custom).
#[derive(Debug, Clone)]
pub struct ObjectType {
    /// Object type id (`0-1`, `2-1234567`).
    pub type_id: String,
    /// Plural API name (`contacts`, or a custom object's name).
    pub name: String,
    /// Singular name (`contact`).
    pub singular: String,
    /// Fully qualified name of a custom object (`p{portal}_{name}`).
    pub fqn: Option<String>,
    /// Whether it is a custom object.
    pub custom: bool,
    /// Property shown as the record name.
    pub primary_display: String,
    /// Properties a record needs at creation (custom objects).
    pub required: Vec<String>,
    /// Property definitions by name.
    pub properties: BTreeMap<String, PropertyDef>,
    /// Records by id (live and archived).
    pub records: BTreeMap<u64, Record>,
    /// Merged-away id -> surviving id.
    pub merged_into: BTreeMap<u64, u64>,
    /// Unique-value index of live records: property -> normalised value -> id.
    pub unique_index: HashMap<String, HashMap<String, u64>>,
    /// Properties returned when a read names none.
    pub default_props: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl ObjectType {
    /// Returns whether a name (plural, singular, type id, or fully qualified name) denotes this
    /// type.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        name == self.type_id
            || name == self.name
            || name == self.singular
            || self.fqn.as_deref() == Some(name.as_str())
    }

    /// Returns the live record `id`, following merges.
    pub fn live(&self, id: u64) -> Option<&Record> {
        let id = self.merged_into.get(&id).copied().unwrap_or(id);
        self.records.get(&id).filter(|r| r.archived_at.is_none())
    }

    /// Returns the id a merged-away id now answers with (the id itself otherwise).
    pub fn resolve(&self, id: u64) -> u64 {
        self.merged_into.get(&id).copied().unwrap_or(id)
    }

    /// Returns the live property definition `name`.
    pub fn prop(&self, name: &str) -> Option<&PropertyDef> {
        self.properties.get(name).filter(|p| !p.archived)
    }

    /// Returns whether `name` may be used as `idProperty` (a unique-value property, `email` of
    /// contacts, or `hs_object_id`).
    pub fn is_id_property(&self, name: &str) -> bool {
        name == "hs_object_id" || self.is_unique(name)
    }

    /// Returns whether values of `prop` must be unique (and are indexed).
    pub fn is_unique(&self, prop: &str) -> bool {
        (self.type_id == CONTACTS && prop == "email")
            || self.prop(prop).is_some_and(|p| p.has_unique_value)
    }

    /// Removes record `id`'s unique values from the index.
    pub fn unindex(&mut self, id: u64) {
        let Some(rec) = self.records.get(&id) else {
            return;
        };
        for (name, value) in &rec.props {
            if let Some(values) = self.unique_index.get_mut(name) {
                let key = unique_key(name, value);
                if values.get(&key) == Some(&id) {
                    values.remove(&key);
                }
            }
        }
    }

    /// Adds live record `id`'s unique values to the index.
    pub fn reindex(&mut self, id: u64) {
        let Some(rec) = self.records.get(&id).filter(|r| r.archived_at.is_none()) else {
            return;
        };
        let mut entries = Vec::new();
        for (name, value) in &rec.props {
            if self.is_unique(name) {
                entries.push((name.clone(), unique_key(name, value)));
            }
        }
        for (name, key) in entries {
            self.unique_index.entry(name).or_default().insert(key, id);
        }
    }

    /// Returns the live record whose `prop` equals `value` (case-insensitive for `email`).
    pub fn find_by(&self, prop: &str, value: &str) -> Option<&Record> {
        if prop == "hs_object_id" {
            return value.parse().ok().and_then(|id| self.live(id));
        }
        if self.is_unique(prop) {
            let id = self.unique_index.get(prop)?.get(&unique_key(prop, value))?;
            return self.live(*id);
        }
        self.records.values().find(|r| {
            r.archived_at.is_none()
                && r.props.get(prop).is_some_and(|v| {
                    if prop == "email" {
                        v.eq_ignore_ascii_case(value)
                    } else {
                        v == value
                    }
                })
        })
    }

    /// Returns the `SimplePublicObject` JSON of a record with the named properties (the default
    /// set when `names` is empty); a requested property without a value reads as `null`, an
    /// unknown one is left out, as the spec's `properties` parameter says.
    pub fn record_json(&self, rec: &Record, names: &[String], history: &[String]) -> Value {
        let mut props = Map::new();
        let wanted: Vec<&String> = if names.is_empty() {
            self.default_props.iter().collect()
        } else {
            names.iter().collect()
        };
        for name in wanted {
            if self.prop(name).is_none() {
                continue;
            }
            let value = rec
                .props
                .get(name.as_str())
                .map_or(Value::Null, |v| json!(v));
            props.insert(name.clone(), value);
        }
        let mut out = json!({
            "id": rec.id.to_string(),
            "properties": props,
            "createdAt": fmt_ts(rec.created_at),
            "updatedAt": fmt_ts(rec.updated_at),
            "archived": rec.archived_at.is_some(),
        });
        if let Some(at) = rec.archived_at {
            out["archivedAt"] = json!(fmt_ts(at));
        }
        if !history.is_empty() {
            let mut hist = Map::new();
            for name in history {
                if self.prop(name).is_none() {
                    continue;
                }
                let versions: Vec<Value> = rec
                    .props
                    .get(name.as_str())
                    .map(|v| {
                        vec![json!({"value": v, "timestamp": fmt_ts(rec.updated_at),
                                    "sourceType": "API"})]
                    })
                    .unwrap_or_default();
                hist.insert(name.clone(), Value::Array(versions));
            }
            out["propertiesWithHistory"] = Value::Object(hist);
        }
        out
    }

    /// Returns the `ObjectSchema` JSON of a custom object (`/crm/v3/schemas`).
    pub fn schema_json(&self, portal_id: u64, associations: Vec<Value>) -> Value {
        let properties: Vec<Value> = self
            .properties
            .values()
            .filter(|p| !p.archived)
            .map(PropertyDef::json)
            .collect();
        json!({
            "id": self.type_id.trim_start_matches("2-"),
            "name": self.name,
            "labels": {"singular": self.singular, "plural": self.name},
            "objectTypeId": self.type_id,
            "fullyQualifiedName": self.fqn.clone().unwrap_or_else(|| format!("p{portal_id}_{}", self.name)),
            "primaryDisplayProperty": self.primary_display,
            "requiredProperties": self.required,
            "searchableProperties": [self.primary_display.clone()],
            "secondaryDisplayProperties": [],
            "properties": properties,
            "associations": associations,
            "createdAt": fmt_ts(self.created_at),
            "updatedAt": fmt_ts(self.created_at),
            "archived": false,
        })
    }
}

/// A HubSpot API error: the `Error` body of a failed call, or a `StandardError` inside a batch
/// answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status (of a whole-call error) or of this item.
    pub status: u16,
    /// `category` (`VALIDATION_ERROR`, `OBJECT_NOT_FOUND`, `CONFLICT`, ...).
    pub category: &'static str,
    /// `subCategory`, if any.
    pub sub_category: Option<String>,
    /// `message`.
    pub message: String,
    /// `context`.
    pub context: BTreeMap<String, Vec<String>>,
    /// `errors` (`ErrorDetail`s).
    pub errors: Vec<Value>,
}

impl ApiError {
    /// Returns an error with no context.
    pub fn new(status: u16, category: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            category,
            sub_category: None,
            message: message.into(),
            context: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Returns a 400 `VALIDATION_ERROR`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "VALIDATION_ERROR", message)
    }

    /// Adds a context entry.
    pub fn ctx(mut self, key: &str, value: impl Into<String>) -> Self {
        self.context
            .entry(key.to_string())
            .or_default()
            .push(value.into());
        self
    }

    /// Returns the `Error` body of a whole-call failure.
    pub fn body(&self, correlation_id: &str) -> Value {
        let mut out = json!({
            "status": "error",
            "message": self.message,
            "correlationId": correlation_id,
            "category": self.category,
        });
        self.fill(&mut out);
        out
    }

    /// Returns the `StandardError` of one failed batch item.
    pub fn standard(&self) -> Value {
        let mut out = json!({
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": {},
            "links": {},
            "errors": [],
        });
        self.fill(&mut out);
        out
    }

    fn fill(&self, out: &mut Value) {
        if let Some(sub) = &self.sub_category {
            out["subCategory"] = json!(sub);
        }
        if !self.context.is_empty() {
            out["context"] = json!(self.context);
        }
        if !self.errors.is_empty() {
            out["errors"] = Value::Array(self.errors.clone());
        }
    }
}

/// The category of an association type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssocCategory {
    /// `HUBSPOT_DEFINED`.
    HubspotDefined,
    /// `USER_DEFINED` (labels an admin made).
    UserDefined,
}

impl AssocCategory {
    /// Returns the API name.
    pub fn as_str(self) -> &'static str {
        match self {
            AssocCategory::HubspotDefined => "HUBSPOT_DEFINED",
            AssocCategory::UserDefined => "USER_DEFINED",
        }
    }
}

/// An association type between two object types, with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct AssocType {
    /// From object type id.
    pub from: String,
    /// To object type id.
    pub to: String,
    /// Type id.
    pub type_id: u32,
    /// Category.
    pub category: AssocCategory,
    /// Label (`None` for the unlabeled default).
    pub label: Option<String>,
    /// The type id of the same association read from the other side.
    pub inverse: u32,
}

impl AssocType {
    /// Returns the `AssociationSpecWithLabel` JSON.
    pub fn json(&self) -> Value {
        json!({"category": self.category.as_str(), "typeId": self.type_id, "label": self.label})
    }
}

/// An owner (`PublicOwner`).
#[derive(Debug, Clone)]
pub struct Owner {
    /// Owner id.
    pub id: u64,
    /// User id.
    pub user_id: u64,
    /// Email.
    pub email: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Deactivated.
    pub archived: bool,
}

impl Owner {
    /// Returns the `PublicOwner` JSON.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "email": self.email,
            "type": "PERSON",
            "firstName": self.first_name,
            "lastName": self.last_name,
            "userId": self.user_id,
            "userIdIncludingInactive": self.user_id,
            "createdAt": fmt_ts(self.created_at),
            "updatedAt": fmt_ts(self.created_at),
            "archived": self.archived,
            "teams": [],
        })
    }
}

/// Key of one directed association: (from type id, from id, to type id, to id).
pub type AssocKey = (String, u64, String, u64);

/// The whole portal.
#[derive(Debug, Clone)]
pub struct Portal {
    /// Portal (hub) id.
    pub portal_id: u64,
    /// Object types.
    pub types: Vec<ObjectType>,
    /// Owners.
    pub owners: Vec<Owner>,
    /// Association types (both directions are listed).
    pub assoc_types: Vec<AssocType>,
    /// Associations: directed key -> type ids (both directions are stored).
    pub assoc: BTreeMap<AssocKey, BTreeSet<u32>>,
    next_id: u64,
    next_type_id: u32,
}

fn p(name: &str, label: &str, ptype: PropType, field_type: &str) -> PropertyDef {
    PropertyDef::new(name, label, ptype, field_type)
}

fn system_props(modified: &str) -> Vec<PropertyDef> {
    vec![
        p("hs_object_id", "Record ID", PropType::Number, "number").read_only(),
        p("createdate", "Create Date", PropType::Datetime, "date").read_only(),
        p(modified, "Last Modified Date", PropType::Datetime, "date").read_only(),
        p(
            "hs_merged_object_ids",
            "Merged record IDs",
            PropType::Enumeration,
            "checkbox",
        )
        .read_only(),
        p("hubspot_owner_id", "Owner", PropType::Enumeration, "select"),
    ]
}

impl Portal {
    /// Returns a portal with the standard types (contacts, companies, deals) and their default
    /// association types, and no records.
    pub fn new(portal_id: u64, now: DateTime<Utc>) -> Self {
        let mut contacts = system_props("lastmodifieddate");
        contacts.push(
            p(
                "hs_lastmodifieddate",
                "Object last modified date/time",
                PropType::Datetime,
                "date",
            )
            .read_only(),
        );
        contacts.extend([
            p("email", "Email", PropType::String, "text"),
            p("firstname", "First Name", PropType::String, "text"),
            p("lastname", "Last Name", PropType::String, "text"),
            p("phone", "Phone Number", PropType::String, "phonenumber"),
            p(
                "mobilephone",
                "Mobile Phone Number",
                PropType::String,
                "phonenumber",
            ),
            p("company", "Company Name", PropType::String, "text"),
            p("jobtitle", "Job Title", PropType::String, "text"),
            p(
                "associatedcompanyid",
                "Primary Associated Company ID",
                PropType::Number,
                "number",
            ),
            p("city", "City", PropType::String, "text"),
            p("state", "State/Region", PropType::String, "text"),
            p("country", "Country/Region", PropType::String, "text"),
            p("website", "Website URL", PropType::String, "text"),
            p(
                "hs_email_optout",
                "Unsubscribed from all email",
                PropType::Bool,
                "booleancheckbox",
            )
            .with_options(&[("true", "Yes"), ("false", "No")]),
            p(
                "lifecyclestage",
                "Lifecycle Stage",
                PropType::Enumeration,
                "radio",
            )
            .with_options(&[
                ("subscriber", "Subscriber"),
                ("lead", "Lead"),
                ("marketingqualifiedlead", "Marketing Qualified Lead"),
                ("salesqualifiedlead", "Sales Qualified Lead"),
                ("opportunity", "Opportunity"),
                ("customer", "Customer"),
                ("evangelist", "Evangelist"),
                ("other", "Other"),
            ]),
            p(
                "hs_lead_status",
                "Lead Status",
                PropType::Enumeration,
                "radio",
            )
            .with_options(&[
                ("NEW", "New"),
                ("OPEN", "Open"),
                ("IN_PROGRESS", "In Progress"),
                ("OPEN_DEAL", "Open Deal"),
                ("UNQUALIFIED", "Unqualified"),
                ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
                ("CONNECTED", "Connected"),
                ("BAD_TIMING", "Bad Timing"),
            ]),
            p(
                "numemployees",
                "Number of Employees",
                PropType::Number,
                "number",
            ),
            p("date_of_birth", "Date of birth", PropType::Date, "date"),
        ]);
        let mut companies = system_props("hs_lastmodifieddate");
        companies.extend([
            p("name", "Company name", PropType::String, "text"),
            p("domain", "Company Domain Name", PropType::String, "text"),
            p("industry", "Industry", PropType::Enumeration, "select").with_options(&[
                ("COMPUTER_SOFTWARE", "Computer Software"),
                ("MACHINERY", "Machinery"),
                ("RETAIL", "Retail"),
                ("FINANCIAL_SERVICES", "Financial Services"),
                ("HOSPITAL_HEALTH_CARE", "Hospital & Health Care"),
            ]),
            p("city", "City", PropType::String, "text"),
            p("state", "State/Region", PropType::String, "text"),
            p("country", "Country/Region", PropType::String, "text"),
            p("phone", "Phone Number", PropType::String, "phonenumber"),
            p(
                "numberofemployees",
                "Number of Employees",
                PropType::Number,
                "number",
            ),
            p(
                "annualrevenue",
                "Annual Revenue",
                PropType::Number,
                "number",
            ),
            p("website", "Website URL", PropType::String, "text"),
        ]);
        let mut deals = system_props("hs_lastmodifieddate");
        deals.extend([
            p("dealname", "Deal Name", PropType::String, "text"),
            p("amount", "Amount", PropType::Number, "number"),
            p("closedate", "Close Date", PropType::Datetime, "date"),
            p("pipeline", "Pipeline", PropType::Enumeration, "select")
                .with_options(&[("default", "Sales Pipeline")]),
            p("dealstage", "Deal Stage", PropType::Enumeration, "radio").with_options(&[
                ("appointmentscheduled", "Appointment Scheduled"),
                ("qualifiedtobuy", "Qualified To Buy"),
                ("presentationscheduled", "Presentation Scheduled"),
                ("decisionmakerboughtin", "Decision Maker Bought-In"),
                ("contractsent", "Contract Sent"),
                ("closedwon", "Closed Won"),
                ("closedlost", "Closed Lost"),
            ]),
            p("dealtype", "Deal Type", PropType::Enumeration, "radio").with_options(&[
                ("newbusiness", "New Business"),
                ("existingbusiness", "Existing Business"),
            ]),
            p(
                "description",
                "Deal Description",
                PropType::String,
                "textarea",
            ),
        ]);
        let standard = |type_id: &str,
                        name: &str,
                        singular: &str,
                        primary: &str,
                        defs: Vec<PropertyDef>,
                        defaults: &[&str]| ObjectType {
            type_id: type_id.to_string(),
            name: name.to_string(),
            singular: singular.to_string(),
            fqn: None,
            custom: false,
            primary_display: primary.to_string(),
            required: Vec::new(),
            properties: defs.into_iter().map(|d| (d.name.clone(), d)).collect(),
            records: BTreeMap::new(),
            merged_into: BTreeMap::new(),
            unique_index: HashMap::new(),
            default_props: defaults.iter().map(|s| (*s).to_string()).collect(),
            created_at: now,
        };
        let types = vec![
            standard(
                CONTACTS,
                "contacts",
                "contact",
                "email",
                contacts,
                &[
                    "createdate",
                    "email",
                    "firstname",
                    "hs_object_id",
                    "lastmodifieddate",
                    "lastname",
                ],
            ),
            standard(
                COMPANIES,
                "companies",
                "company",
                "name",
                companies,
                &[
                    "createdate",
                    "domain",
                    "hs_lastmodifieddate",
                    "hs_object_id",
                    "name",
                ],
            ),
            standard(
                DEALS,
                "deals",
                "deal",
                "dealname",
                deals,
                &[
                    "amount",
                    "closedate",
                    "createdate",
                    "dealname",
                    "dealstage",
                    "hs_lastmodifieddate",
                    "hs_object_id",
                    "pipeline",
                ],
            ),
        ];
        // Default association type ids, as HubSpot's associations v4 guide lists them.
        let hs = AssocCategory::HubspotDefined;
        let assoc_types = vec![
            AssocType {
                from: CONTACTS.into(),
                to: COMPANIES.into(),
                type_id: 279,
                category: hs,
                label: None,
                inverse: 280,
            },
            AssocType {
                from: COMPANIES.into(),
                to: CONTACTS.into(),
                type_id: 280,
                category: hs,
                label: None,
                inverse: 279,
            },
            AssocType {
                from: CONTACTS.into(),
                to: COMPANIES.into(),
                type_id: 1,
                category: hs,
                label: Some("Primary".into()),
                inverse: 2,
            },
            AssocType {
                from: COMPANIES.into(),
                to: CONTACTS.into(),
                type_id: 2,
                category: hs,
                label: Some("Primary".into()),
                inverse: 1,
            },
            AssocType {
                from: DEALS.into(),
                to: CONTACTS.into(),
                type_id: 3,
                category: hs,
                label: None,
                inverse: 4,
            },
            AssocType {
                from: CONTACTS.into(),
                to: DEALS.into(),
                type_id: 4,
                category: hs,
                label: None,
                inverse: 3,
            },
            AssocType {
                from: DEALS.into(),
                to: COMPANIES.into(),
                type_id: 341,
                category: hs,
                label: None,
                inverse: 342,
            },
            AssocType {
                from: COMPANIES.into(),
                to: DEALS.into(),
                type_id: 342,
                category: hs,
                label: None,
                inverse: 341,
            },
            AssocType {
                from: DEALS.into(),
                to: COMPANIES.into(),
                type_id: 5,
                category: hs,
                label: Some("Primary".into()),
                inverse: 6,
            },
            AssocType {
                from: COMPANIES.into(),
                to: DEALS.into(),
                type_id: 6,
                category: hs,
                label: Some("Primary".into()),
                inverse: 5,
            },
        ];
        let mut portal = Self {
            portal_id,
            types,
            owners: Vec::new(),
            assoc_types,
            assoc: BTreeMap::new(),
            next_id: 1001,
            next_type_id: 500,
        };
        for ty in &mut portal.types {
            for def in ty.properties.values_mut() {
                def.created_at = now;
            }
        }
        portal
    }

    /// Returns the index of the type a path names (`contacts`, `0-1`, `2-123`, a custom
    /// object's name or fully qualified name).
    pub fn type_index(&self, name: &str) -> Option<usize> {
        self.types.iter().position(|t| t.answers_to(name))
    }

    /// Returns the type index or HubSpot's answer for a name it cannot infer a type from.
    ///
    /// # Errors
    ///
    /// Returns a 400 `VALIDATION_ERROR` naming the object type.
    pub fn type_or_err(&self, name: &str) -> Result<usize, ApiError> {
        self.type_index(name).ok_or_else(|| {
            ApiError::validation(format!("Unable to infer object type from: {name}"))
        })
    }

    /// Defines a custom object type and returns its type id.
    pub fn add_custom_type(
        &mut self,
        name: &str,
        singular: &str,
        primary: &str,
        defs: Vec<PropertyDef>,
        now: DateTime<Utc>,
    ) -> String {
        self.next_type_id += 1;
        let type_id = format!("2-{}", 1_000_000 + self.next_type_id);
        let mut properties: BTreeMap<String, PropertyDef> = system_props("hs_lastmodifieddate")
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        for mut def in defs {
            def.hubspot_defined = false;
            properties.insert(def.name.clone(), def);
        }
        for def in properties.values_mut() {
            def.created_at = now;
        }
        let mut defaults = vec![
            "createdate".to_string(),
            "hs_lastmodifieddate".to_string(),
            "hs_object_id".to_string(),
        ];
        defaults.push(primary.to_string());
        self.types.push(ObjectType {
            type_id: type_id.clone(),
            name: name.to_ascii_lowercase(),
            singular: singular.to_ascii_lowercase(),
            fqn: Some(format!("p{}_{}", self.portal_id, name.to_ascii_lowercase())),
            custom: true,
            primary_display: primary.to_string(),
            required: vec![primary.to_string()],
            properties,
            records: BTreeMap::new(),
            merged_into: BTreeMap::new(),
            unique_index: HashMap::new(),
            default_props: defaults,
            created_at: now,
        });
        type_id
    }

    /// Adds an association type pair (`from`->`to` and its inverse) and returns the forward id.
    pub fn add_assoc_type(
        &mut self,
        from: &str,
        to: &str,
        category: AssocCategory,
        label: Option<&str>,
    ) -> u32 {
        self.next_type_id += 1;
        let forward = self.next_type_id;
        self.next_type_id += 1;
        let inverse = self.next_type_id;
        self.assoc_types.push(AssocType {
            from: from.into(),
            to: to.into(),
            type_id: forward,
            category,
            label: label.map(str::to_string),
            inverse,
        });
        if from != to {
            self.assoc_types.push(AssocType {
                from: to.into(),
                to: from.into(),
                type_id: inverse,
                category,
                label: label.map(str::to_string),
                inverse: forward,
            });
        }
        forward
    }

    /// Returns the association types from `from` to `to`.
    pub fn assoc_types_between(&self, from: &str, to: &str) -> Vec<&AssocType> {
        self.assoc_types
            .iter()
            .filter(|t| t.from == from && t.to == to)
            .collect()
    }

    /// Returns the unlabeled default association type from `from` to `to`, creating the pair
    /// for a type combination that has none (custom objects).
    pub fn default_assoc_type(&mut self, from: &str, to: &str) -> u32 {
        if let Some(t) = self
            .assoc_types_between(from, to)
            .into_iter()
            .find(|t| t.label.is_none())
        {
            return t.type_id;
        }
        self.add_assoc_type(from, to, AssocCategory::HubspotDefined, None)
    }

    /// Returns a fresh record id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Validates and normalises input property values against type `ty`. `None` clears.
    ///
    /// # Errors
    ///
    /// Returns a `VALIDATION_ERROR` listing every invalid property.
    pub fn validate(
        &self,
        ty: usize,
        input: &Map<String, Value>,
    ) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let object = &self.types[ty];
        let mut out = Vec::new();
        let mut problems: Vec<(String, String, String)> = Vec::new();
        for (name, value) in input {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => {
                    problems.push((
                        name.clone(),
                        "INVALID_PROPERTY_VALUE".into(),
                        format!("{other} is not a valid value for {name}"),
                    ));
                    continue;
                }
            };
            let Some(def) = object.prop(name) else {
                problems.push((
                    name.clone(),
                    "PROPERTY_DOESNT_EXIST".into(),
                    format!("Property \"{name}\" does not exist"),
                ));
                continue;
            };
            if def.read_only_value {
                problems.push((
                    name.clone(),
                    "READ_ONLY_VALUE".into(),
                    format!("{name} is a read only property; its value cannot be set."),
                ));
                continue;
            }
            if text.is_empty() {
                out.push((name.clone(), None));
                continue;
            }
            match normalise(def, &text) {
                Ok(v) => out.push((name.clone(), Some(v))),
                Err((code, message)) => problems.push((name.clone(), code, message)),
            }
        }
        if problems.is_empty() {
            return Ok(out);
        }
        let listing: Vec<Value> = problems
            .iter()
            .map(|(name, code, message)| json!({"isValid": false, "message": message, "error": code, "name": name}))
            .collect();
        let mut error = ApiError::validation(format!(
            "Property values were not valid: {}",
            Value::Array(listing)
        ));
        for (name, code, message) in problems {
            error.errors.push(json!({"message": message, "code": code, "context": {"propertyName": [name.clone()]}}));
            error = error.ctx("propertyName", name);
        }
        Err(error)
    }

    /// Returns a `CONFLICT` when a unique value in `values` is held by another live record.
    ///
    /// # Errors
    ///
    /// Returns 409 `CONFLICT` naming the property and the existing record id.
    pub fn check_unique(
        &self,
        ty: usize,
        own: Option<u64>,
        values: &[(String, Option<String>)],
    ) -> Result<(), ApiError> {
        let object = &self.types[ty];
        for (name, value) in values {
            let Some(value) = value else { continue };
            if !object.is_unique(name) {
                continue;
            }
            if let Some(existing) = object.find_by(name, value)
                && Some(existing.id) != own
            {
                let message = if name == "email" {
                    format!("Contact already exists. Existing ID: {}", existing.id)
                } else {
                    format!(
                        "A {} with {name} '{value}' already exists. Existing ID: {}",
                        object.singular, existing.id
                    )
                };
                return Err(ApiError::new(409, "CONFLICT", message)
                    .ctx("existingId", existing.id.to_string())
                    .ctx("propertyName", name.clone()));
            }
        }
        Ok(())
    }

    /// Creates a record from input properties and returns its id.
    ///
    /// # Errors
    ///
    /// Returns `VALIDATION_ERROR` (bad values, a missing required property) or `CONFLICT`.
    pub fn create(
        &mut self,
        ty: usize,
        input: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<u64, ApiError> {
        let values = self.validate(ty, input)?;
        for required in &self.types[ty].required {
            if !values.iter().any(|(n, v)| n == required && v.is_some()) {
                return Err(
                    ApiError::validation(format!("Missing required property: {required}"))
                        .ctx("propertyName", required.clone()),
                );
            }
        }
        self.check_unique(ty, None, &values)?;
        let id = self.next_id();
        let mut rec = Record {
            id,
            props: BTreeMap::new(),
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        for (name, value) in values {
            if let Some(value) = value {
                rec.props.insert(name, value);
            }
        }
        rec.props.insert("hs_object_id".into(), id.to_string());
        rec.props.insert("createdate".into(), fmt_ts(now));
        stamp(&mut rec, now);
        self.types[ty].records.insert(id, rec);
        self.types[ty].reindex(id);
        Ok(id)
    }

    /// Updates a live record (a merged-away id updates the survivor). Returns the record id and
    /// whether any value changed; last-modified moves only when one did.
    ///
    /// # Errors
    ///
    /// Returns 404 `OBJECT_NOT_FOUND`, `VALIDATION_ERROR` or `CONFLICT`.
    pub fn update(
        &mut self,
        ty: usize,
        id: u64,
        input: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<(u64, bool), ApiError> {
        let id = self.types[ty].resolve(id);
        if self.types[ty].live(id).is_none() {
            return Err(not_found(&self.types[ty], id));
        }
        let values = self.validate(ty, input)?;
        self.check_unique(ty, Some(id), &values)?;
        self.types[ty].unindex(id);
        let Some(rec) = self.types[ty].records.get_mut(&id) else {
            return Err(ApiError::new(404, "OBJECT_NOT_FOUND", "Object not found."));
        };
        let mut changed = false;
        for (name, value) in values {
            let old = rec.props.get(&name).cloned();
            if old == value {
                continue;
            }
            changed = true;
            match value {
                Some(v) => rec.props.insert(name, v),
                None => rec.props.remove(&name),
            };
        }
        if changed {
            stamp(rec, now);
        }
        self.types[ty].reindex(id);
        Ok((id, changed))
    }

    /// Archives a live record; last-modified does not move. Returns false when there was none.
    pub fn archive(&mut self, ty: usize, id: u64, now: DateTime<Utc>) -> bool {
        let id = self.types[ty].resolve(id);
        self.types[ty].unindex(id);
        match self.types[ty].records.get_mut(&id) {
            Some(rec) if rec.archived_at.is_none() => {
                rec.archived_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Merges `loser` into `primary`: the survivor keeps its values and takes the loser's where
    /// it has none, lists the loser (and what the loser had absorbed) in
    /// `hs_merged_object_ids`, takes over the loser's associations; the loser's id answers with
    /// the survivor from then on.
    ///
    /// # Errors
    ///
    /// Returns 400 `VALIDATION_ERROR` for a self-merge, 404 `OBJECT_NOT_FOUND` for a missing id.
    pub fn merge(
        &mut self,
        ty: usize,
        primary: u64,
        loser: u64,
        now: DateTime<Utc>,
    ) -> Result<u64, ApiError> {
        let object = &self.types[ty];
        let primary = object.resolve(primary);
        let loser_id = object.resolve(loser);
        if primary == loser_id {
            return Err(ApiError::validation(format!(
                "Cannot merge {} {primary} into itself",
                object.singular
            )));
        }
        for id in [primary, loser_id] {
            if object.live(id).is_none() {
                return Err(not_found(object, id));
            }
        }
        let type_id = object.type_id.clone();
        let object = &mut self.types[ty];
        object.unindex(loser_id);
        object.unindex(primary);
        let Some(loser_rec) = object.records.remove(&loser_id) else {
            return Err(ApiError::new(404, "OBJECT_NOT_FOUND", "Object not found."));
        };
        let mut absorbed: Vec<u64> = vec![loser_id];
        absorbed.extend(
            object
                .merged_into
                .iter()
                .filter(|(_, into)| **into == loser_id)
                .map(|(from, _)| *from),
        );
        for id in &absorbed {
            object.merged_into.insert(*id, primary);
        }
        let Some(rec) = object.records.get_mut(&primary) else {
            return Err(ApiError::new(404, "OBJECT_NOT_FOUND", "Object not found."));
        };
        for (name, value) in loser_rec.props {
            if matches!(
                name.as_str(),
                "hs_object_id" | "createdate" | "hs_merged_object_ids" | "email"
            ) {
                continue;
            }
            rec.props.entry(name).or_insert(value);
        }
        let mut merged: BTreeSet<u64> = rec
            .props
            .get("hs_merged_object_ids")
            .map(|v| v.split(';').filter_map(|s| s.parse().ok()).collect())
            .unwrap_or_default();
        merged.extend(absorbed);
        let list: Vec<String> = merged.iter().map(u64::to_string).collect();
        rec.props
            .insert("hs_merged_object_ids".into(), list.join(";"));
        stamp(rec, now);
        object.reindex(primary);
        self.move_associations(&type_id, loser_id, primary);
        Ok(primary)
    }

    fn move_associations(&mut self, type_id: &str, from_id: u64, into: u64) {
        let keys: Vec<AssocKey> = self
            .assoc
            .keys()
            .filter(|(ft, fi, tt, ti)| {
                (ft == type_id && *fi == from_id) || (tt == type_id && *ti == from_id)
            })
            .cloned()
            .collect();
        for key in keys {
            let Some(types) = self.assoc.remove(&key) else {
                continue;
            };
            let (ft, fi, tt, ti) = key;
            let fi = if ft == type_id && fi == from_id {
                into
            } else {
                fi
            };
            let ti = if tt == type_id && ti == from_id {
                into
            } else {
                ti
            };
            if ft == tt && fi == ti {
                continue;
            }
            self.assoc
                .entry((ft, fi, tt, ti))
                .or_default()
                .extend(types);
        }
    }

    /// Associates two records with association type `type_id` (from `from_type` to `to_type`),
    /// and the unlabeled default type, in both directions.
    ///
    /// # Errors
    ///
    /// Returns `VALIDATION_ERROR` for an unknown type id, `OBJECT_NOT_FOUND` for a missing record.
    pub fn associate(
        &mut self,
        from_ty: usize,
        from_id: u64,
        to_ty: usize,
        to_id: u64,
        type_id: u32,
    ) -> Result<(), ApiError> {
        let from = self.types[from_ty].type_id.clone();
        let to = self.types[to_ty].type_id.clone();
        let from_id = self.types[from_ty].resolve(from_id);
        let to_id = self.types[to_ty].resolve(to_id);
        if self.types[from_ty].live(from_id).is_none() {
            return Err(not_found(&self.types[from_ty], from_id));
        }
        if self.types[to_ty].live(to_id).is_none() {
            return Err(not_found(&self.types[to_ty], to_id));
        }
        let Some(spec) = self
            .assoc_types_between(&from, &to)
            .into_iter()
            .find(|t| t.type_id == type_id)
            .cloned()
        else {
            return Err(ApiError::validation(format!(
                "{type_id} is not a valid association type id between {from} and {to}"
            ))
            .ctx("typeId", type_id.to_string()));
        };
        let default = self.default_assoc_type(&from, &to);
        let default_inverse = self.default_assoc_type(&to, &from);
        let forward = self
            .assoc
            .entry((from.clone(), from_id, to.clone(), to_id))
            .or_default();
        forward.insert(spec.type_id);
        forward.insert(default);
        let back = self.assoc.entry((to, to_id, from, from_id)).or_default();
        back.insert(spec.inverse);
        back.insert(default_inverse);
        Ok(())
    }

    /// Removes association types between two records (all of them when `only` is `None`;
    /// removing the unlabeled default removes every label too). Returns false when none existed.
    pub fn dissociate(
        &mut self,
        from_ty: usize,
        from_id: u64,
        to_ty: usize,
        to_id: u64,
        only: Option<u32>,
    ) -> bool {
        let from = self.types[from_ty].type_id.clone();
        let to = self.types[to_ty].type_id.clone();
        let key = (from.clone(), from_id, to.clone(), to_id);
        let back_key = (to.clone(), to_id, from.clone(), from_id);
        let Some(types) = self.assoc.get_mut(&key) else {
            return false;
        };
        let default = self
            .assoc_types
            .iter()
            .find(|t| t.from == from && t.to == to && t.label.is_none())
            .map(|t| t.type_id);
        let removed: Vec<u32> = match only {
            Some(id) if Some(id) != default => {
                if !types.remove(&id) {
                    return false;
                }
                vec![id]
            }
            _ => {
                let all: Vec<u32> = types.iter().copied().collect();
                self.assoc.remove(&key);
                self.assoc.remove(&back_key);
                return !all.is_empty();
            }
        };
        let inverses: Vec<u32> = removed
            .iter()
            .filter_map(|id| {
                self.assoc_types
                    .iter()
                    .find(|t| t.from == from && t.to == to && t.type_id == *id)
                    .map(|t| t.inverse)
            })
            .collect();
        if let Some(back) = self.assoc.get_mut(&back_key) {
            for id in inverses {
                back.remove(&id);
            }
        }
        true
    }

    /// Returns the live records of type `to_ty` associated with `from_id`, with their type ids.
    pub fn associations_of(
        &self,
        from_ty: usize,
        from_id: u64,
        to_ty: usize,
    ) -> Vec<(u64, Vec<u32>)> {
        let from = self.types[from_ty].type_id.clone();
        let to = self.types[to_ty].type_id.clone();
        let start = (from.clone(), from_id, to.clone(), 0);
        let end = (from, from_id, to, u64::MAX);
        self.assoc
            .range(start..=end)
            .filter(|((_, _, _, to_id), types)| {
                !types.is_empty() && self.types[to_ty].live(*to_id).is_some()
            })
            .map(|((_, _, _, to_id), types)| (*to_id, types.iter().copied().collect()))
            .collect()
    }

    /// Returns the association type `type_id` from `from` to `to`.
    pub fn assoc_type(&self, from: &str, to: &str, type_id: u32) -> Option<&AssocType> {
        self.assoc_types
            .iter()
            .find(|t| t.from == from && t.to == to && t.type_id == type_id)
    }
}

fn unique_key(prop: &str, value: &str) -> String {
    if prop == "email" {
        value.to_lowercase()
    } else {
        value.to_string()
    }
}

fn stamp(rec: &mut Record, now: DateTime<Utc>) {
    rec.updated_at = now;
    rec.props.insert("hs_lastmodifieddate".into(), fmt_ts(now));
    rec.props.insert("lastmodifieddate".into(), fmt_ts(now));
}

/// Returns HubSpot's 404 for a record id that is not there.
pub fn not_found(object: &ObjectType, id: u64) -> ApiError {
    ApiError::new(
        404,
        "OBJECT_NOT_FOUND",
        format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            object.singular.to_ascii_uppercase()
        ),
    )
    .ctx("ids", id.to_string())
}

/// Normalises one value for its definition: numbers as written, booleans `true`/`false`, dates
/// `YYYY-MM-DD`, datetimes ISO-8601 with milliseconds; enumeration values must be options.
fn normalise(def: &PropertyDef, text: &str) -> Result<String, (String, String)> {
    let name = &def.name;
    match def.ptype {
        PropType::String => {
            if name == "email" && !looks_like_email(text) {
                return Err((
                    "INVALID_EMAIL".into(),
                    format!("Email address {text} is invalid"),
                ));
            }
            if text.chars().count() > 65_536 {
                return Err((
                    "INVALID_STRING".into(),
                    format!("{name} is longer than 65536 characters"),
                ));
            }
            Ok(text.to_string())
        }
        PropType::Number => match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(text.trim().to_string()),
            _ => Err((
                "INVALID_INTEGER".into(),
                format!("{text} is not a valid number for {name}"),
            )),
        },
        PropType::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(text.to_ascii_lowercase()),
            _ => Err((
                "INVALID_BOOLEAN".into(),
                format!("{text} is not a valid boolean for {name}: use true or false"),
            )),
        },
        PropType::Date => {
            if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                return Ok(d.format("%Y-%m-%d").to_string());
            }
            match text
                .parse::<i64>()
                .ok()
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            {
                Some(at) if at.timestamp_millis() % 86_400_000 == 0 => {
                    Ok(at.format("%Y-%m-%d").to_string())
                }
                _ => Err((
                    "INVALID_DATE".into(),
                    format!(
                        "{text} is not a valid date for {name}: dates must be YYYY-MM-DD or a midnight UTC timestamp"
                    ),
                )),
            }
        }
        PropType::Datetime => parse_ts(text).map(fmt_ts).ok_or_else(|| {
            (
                "INVALID_DATETIME".into(),
                format!("{text} is not a valid datetime for {name}"),
            )
        }),
        PropType::Enumeration => {
            let multi = def.field_type == "checkbox";
            let parts: Vec<&str> = if multi {
                text.split(';').collect()
            } else {
                vec![text]
            };
            for part in &parts {
                if !def.options.iter().any(|o| o.value == *part) {
                    let allowed: Vec<String> = def
                        .options
                        .iter()
                        .map(|o| format!("[label: {:?} value: {:?}]", o.label, o.value))
                        .collect();
                    return Err((
                        "INVALID_OPTION".into(),
                        format!(
                            "{part} was not one of the allowed options: {}",
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            Ok(text.to_string())
        }
    }
}

fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !text.contains(' ')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_ts("2024-03-01T10:00:00Z").unwrap()
    }

    fn props(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect()
    }

    #[test]
    fn values_are_validated_by_type_and_unknown_properties_refused() {
        let portal = Portal::new(1, now());
        let ok = portal
            .validate(
                0,
                &props(&[
                    ("email", "a@b.co"),
                    ("date_of_birth", "1990-02-03"),
                    ("lifecyclestage", "lead"),
                ]),
            )
            .unwrap();
        assert_eq!(ok.len(), 3);
        let error = portal
            .validate(
                0,
                &props(&[
                    ("nope", "x"),
                    ("lifecyclestage", "boss"),
                    ("numemployees", "many"),
                ]),
            )
            .unwrap_err();
        assert_eq!(error.category, "VALIDATION_ERROR");
        let codes: Vec<&str> = error
            .errors
            .iter()
            .filter_map(|e| e["code"].as_str())
            .collect();
        assert_eq!(
            codes,
            ["PROPERTY_DOESNT_EXIST", "INVALID_OPTION", "INVALID_INTEGER"]
        );
        let read_only = portal
            .validate(0, &props(&[("createdate", "2020-01-01")]))
            .unwrap_err();
        assert_eq!(read_only.errors[0]["code"], "READ_ONLY_VALUE");
    }

    #[test]
    fn merges_keep_the_survivor_and_redirect_the_loser() {
        let mut portal = Portal::new(1, now());
        let a = portal
            .create(0, &props(&[("email", "a@x.io")]), now())
            .unwrap();
        let b = portal
            .create(0, &props(&[("email", "b@x.io"), ("city", "Lyon")]), now())
            .unwrap();
        let c = portal
            .create(0, &props(&[("email", "c@x.io")]), now())
            .unwrap();
        portal.merge(0, b, c, now()).unwrap();
        portal.merge(0, a, b, now()).unwrap();
        let survivor = portal.types[0].live(c).unwrap();
        assert_eq!(survivor.id, a);
        assert_eq!(survivor.props["city"], "Lyon");
        assert_eq!(survivor.props["email"], "a@x.io");
        assert_eq!(survivor.props["hs_merged_object_ids"], format!("{b};{c}"));
    }
}
