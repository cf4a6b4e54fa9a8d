//! The simulated instance's schema: lead fields (with Describe ids) and the non-lead objects.

use serde_json::{Value, json};

/// One lead field as Describe Lead shows it.
#[derive(Debug, Clone, Copy)]
pub struct LeadField {
    /// Describe id (also `primaryAttributeValueId` of Change Data Value activities).
    pub id: u32,
    /// REST API name.
    pub name: &'static str,
    /// Display name.
    pub display: &'static str,
    /// Marketo data type.
    pub data_type: &'static str,
    /// Read-only through the API.
    pub read_only: bool,
    /// A company-type field: read through from the linked company.
    pub company: bool,
    /// Usable as `filterType` / `lookupField`.
    pub searchable: bool,
}

const fn f(
    id: u32,
    name: &'static str,
    display: &'static str,
    data_type: &'static str,
) -> LeadField {
    LeadField {
        id,
        name,
        display,
        data_type,
        read_only: false,
        company: false,
        searchable: false,
    }
}
const fn ro(field: LeadField) -> LeadField {
    LeadField {
        read_only: true,
        ..field
    }
}
const fn co(field: LeadField) -> LeadField {
    LeadField {
        company: true,
        ..field
    }
}
const fn s(field: LeadField) -> LeadField {
    LeadField {
        searchable: true,
        ..field
    }
}

/// The lead fields of the simulated instance, in Describe order.
pub static LEAD_FIELDS: &[LeadField] = &[
    s(ro(f(1, "id", "Id", "integer"))),
    co(f(2, "company", "Company Name", "string")),
    co(f(3, "site", "Site", "string")),
    co(f(4, "billingStreet", "Billing Address", "text")),
    co(f(5, "billingCity", "Billing City", "string")),
    co(f(6, "billingState", "Billing State", "string")),
    co(f(7, "billingCountry", "Billing Country", "string")),
    co(f(8, "billingPostalCode", "Billing Postal Code", "string")),
    co(f(9, "website", "Website", "url")),
    co(f(10, "mainPhone", "Main Phone", "phone")),
    co(f(11, "annualRevenue", "Annual Revenue", "currency")),
    co(f(12, "numberOfEmployees", "Num Employees", "integer")),
    co(f(13, "industry", "Industry", "string")),
    co(f(14, "sicCode", "SIC Code", "string")),
    s(f(15, "externalCompanyId", "External Company Id", "string")),
    f(20, "salutation", "Salutation", "string"),
    f(21, "firstName", "First Name", "string"),
    f(22, "middleName", "Middle Name", "string"),
    f(23, "lastName", "Last Name", "string"),
    s(f(24, "email", "Email Address", "email")),
    f(25, "phone", "Phone Number", "phone"),
    f(26, "mobilePhone", "Mobile Phone Number", "phone"),
    f(27, "title", "Job Title", "string"),
    f(28, "address", "Address", "text"),
    f(29, "city", "City", "string"),
    f(30, "state", "State", "string"),
    f(31, "country", "Country", "string"),
    f(32, "postalCode", "Postal Code", "string"),
    f(33, "leadSource", "Lead Source", "string"),
    f(34, "leadStatus", "Lead Status", "string"),
    f(35, "leadScore", "Lead Score", "integer"),
    f(36, "unsubscribed", "Unsubscribed", "boolean"),
    f(37, "doNotCall", "Do Not Call", "boolean"),
    f(38, "dateOfBirth", "Date of Birth", "date"),
    s(f(
        39,
        "externalSalesPersonId",
        "External Sales Person Id",
        "string",
    )),
    ro(f(40, "createdAt", "Created At", "datetime")),
    ro(f(41, "updatedAt", "Updated At", "datetime")),
    s(f(42, "cookies", "Cookies", "string")),
    s(f(43, "leadPartitionId", "Lead Partition Id", "integer")),
    s(f(100, "crmContactId", "CRM Contact Id", "string")),
    f(101, "customerTier", "Customer Tier", "string"),
    s(f(102, "npsScore", "NPS Score", "integer")),
    f(103, "lastCrmSyncAt", "Last CRM Sync At", "datetime"),
];

/// Returns the lead field named `name`.
pub fn lead_field(name: &str) -> Option<(u16, &'static LeadField)> {
    LEAD_FIELDS
        .iter()
        .enumerate()
        .find(|(_, f)| f.name == name)
        .map(|(i, f)| (i as u16, f))
}

/// Returns the field at index `index` of [`LEAD_FIELDS`].
pub fn lead_field_at(index: u16) -> &'static LeadField {
    &LEAD_FIELDS[index as usize]
}

/// The company-type field names copied from a linked company.
pub fn company_field_names() -> impl Iterator<Item = &'static str> {
    LEAD_FIELDS.iter().filter(|f| f.company).map(|f| f.name)
}

fn length(data_type: &str) -> Option<u32> {
    match data_type {
        "string" | "email" | "phone" | "url" => Some(255),
        "text" => Some(65535),
        _ => None,
    }
}

/// Returns why Marketo refuses `value` for a field of `data_type` (a record-level 1001 "Invalid
/// value"), or `None` when it fits: a value of the wrong type, or text longer than the field's
/// length (255 characters for string, email, phone and url fields; 65,535 for text). Marketo
/// never shortens a value. Empty values (null, "") always fit.
pub fn value_problem(name: &str, data_type: &str, value: &Value) -> Option<String> {
    if crate::sim::state::is_empty(value) {
        return None;
    }
    let ok = match data_type {
        "integer" => {
            value.as_i64().is_some()
                || value
                    .as_str()
                    .is_some_and(|s| s.trim().parse::<i64>().is_ok())
        }
        "currency" | "float" => {
            value.as_f64().is_some()
                || value
                    .as_str()
                    .is_some_and(|s| s.trim().parse::<f64>().is_ok())
        }
        "boolean" => {
            value.is_boolean()
                || value
                    .as_str()
                    .is_some_and(|s| matches!(s, "true" | "false" | "1" | "0"))
        }
        "email" => value
            .as_str()
            .is_some_and(|s| s.is_ascii() && s.contains('@')),
        "datetime" | "date" => value
            .as_str()
            .is_some_and(|s| crate::sim::clock::parse_time(s).is_some()),
        _ => value.is_string() || value.is_number() || value.is_boolean(),
    };
    if !ok {
        return Some(format!("Invalid value for field '{name}'"));
    }
    too_long(name, data_type, value)
}

/// Returns why a value is longer than its field allows (see [`value_problem`]), or `None`.
pub fn too_long(name: &str, data_type: &str, value: &Value) -> Option<String> {
    let max = length(data_type)?;
    let chars = match value {
        Value::String(s) => s.chars().count(),
        other => other.to_string().chars().count(),
    };
    (chars > max as usize).then(|| {
        format!("Invalid value for field '{name}': {chars} characters, the maximum is {max}")
    })
}

/// Returns Describe Lead's `result`.
pub fn describe_lead() -> Vec<Value> {
    LEAD_FIELDS
        .iter()
        .map(|f| {
            let mut v = json!({"id": f.id, "displayName": f.display, "dataType": f.data_type});
            if let Some(len) = length(f.data_type) {
                v["length"] = json!(len);
            }
            v["rest"] = json!({"name": f.name, "readOnly": f.read_only});
            v["soap"] = json!({"name": f.name, "readOnly": f.read_only});
            v
        })
        .collect()
}

/// Returns Describe Lead2's `result`.
pub fn describe_lead2() -> Vec<Value> {
    let fields: Vec<Value> = LEAD_FIELDS
        .iter()
        .map(|f| {
            let mut v = json!({"name": f.name, "displayName": f.display, "dataType": f.data_type});
            if let Some(len) = length(f.data_type) {
                v["length"] = json!(len);
            }
            v["updateable"] = json!(!f.read_only);
            v["crmManaged"] = json!(false);
            v
        })
        .collect();
    let searchable: Vec<Value> = LEAD_FIELDS
        .iter()
        .filter(|f| f.searchable)
        .map(|f| json!([f.name]))
        .collect();
    vec![json!({"name": "API Lead", "searchableFields": searchable, "fields": fields})]
}

/// Which non-lead object a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjKind {
    /// Companies (`idField` `id`, dedupe `externalCompanyId`).
    Company,
    /// Sales persons (`id`, `externalSalesPersonId`).
    SalesPerson,
    /// Opportunities (`marketoGUID`, `externalOpportunityId`).
    Opportunity,
    /// Opportunity roles (`marketoGUID`, compound `externalOpportunityId,leadId,role`).
    Role,
    /// The custom object `car_c` (`marketoGUID`, `vin`).
    Car,
}

/// A non-lead object's schema.
#[derive(Debug)]
pub struct ObjSchema {
    /// Object name in Describe.
    pub name: &'static str,
    /// `id` or `marketoGUID`.
    pub id_field: &'static str,
    /// Dedupe fields (compound for roles).
    pub dedupe: &'static [&'static str],
    /// Searchable field sets.
    pub searchable: &'static [&'static [&'static str]],
    /// Fields: (name, display, dataType, updateable).
    pub fields: &'static [(&'static str, &'static str, &'static str, bool)],
}

static COMPANY: ObjSchema = ObjSchema {
    name: "Company",
    id_field: "id",
    dedupe: &["externalCompanyId"],
    searchable: &[&["externalCompanyId"], &["id"], &["company"]],
    fields: &[
        ("id", "Id", "integer", false),
        ("externalCompanyId", "External Company Id", "string", false),
        ("company", "Company Name", "string", true),
        ("site", "Site", "string", true),
        ("billingStreet", "Billing Address", "text", true),
        ("billingCity", "Billing City", "string", true),
        ("billingState", "Billing State", "string", true),
        ("billingCountry", "Billing Country", "string", true),
        ("billingPostalCode", "Billing Postal Code", "string", true),
        ("website", "Website", "url", true),
        ("mainPhone", "Main Phone", "phone", true),
        ("annualRevenue", "Annual Revenue", "currency", true),
        ("numberOfEmployees", "Num Employees", "integer", true),
        ("industry", "Industry", "string", true),
        ("sicCode", "SIC Code", "string", true),
        ("createdAt", "Created At", "datetime", false),
        ("updatedAt", "Updated At", "datetime", false),
    ],
};

static SALES_PERSON: ObjSchema = ObjSchema {
    name: "SalesPerson",
    id_field: "id",
    dedupe: &["externalSalesPersonId"],
    searchable: &[&["externalSalesPersonId"], &["id"], &["email"]],
    fields: &[
        ("id", "Id", "integer", false),
        (
            "externalSalesPersonId",
            "External Sales Person Id",
            "string",
            false,
        ),
        ("email", "Email", "email", true),
        ("firstName", "First Name", "string", true),
        ("lastName", "Last Name", "string", true),
        ("phone", "Phone", "phone", true),
        ("title", "Title", "string", true),
        ("createdAt", "Created At", "datetime", false),
        ("updatedAt", "Updated At", "datetime", false),
    ],
};

static OPPORTUNITY: ObjSchema = ObjSchema {
    name: "Opportunity",
    id_field: "marketoGUID",
    dedupe: &["externalOpportunityId"],
    searchable: &[
        &["marketoGUID"],
        &["externalOpportunityId"],
        &["externalCompanyId"],
        &["externalSalesPersonId"],
    ],
    fields: &[
        ("marketoGUID", "Marketo GUID", "string", false),
        (
            "externalOpportunityId",
            "External Opportunity Id",
            "string",
            false,
        ),
        ("name", "Name", "string", true),
        ("amount", "Amount", "currency", true),
        ("stage", "Stage", "string", true),
        ("isClosed", "Is Closed", "boolean", true),
        ("isWon", "Is Won", "boolean", true),
        ("closeDate", "Close Date", "date", true),
        (
            "externalCreatedDate",
            "External Created Date",
            "datetime",
            true,
        ),
        ("externalCompanyId", "External Company Id", "string", true),
        (
            "externalSalesPersonId",
            "External Sales Person Id",
            "string",
            true,
        ),
        ("createdAt", "Created At", "datetime", false),
        ("updatedAt", "Updated At", "datetime", false),
    ],
};

static ROLE: ObjSchema = ObjSchema {
    name: "Opportunity Role",
    id_field: "marketoGUID",
    dedupe: &["externalOpportunityId", "leadId", "role"],
    searchable: &[
        &["marketoGUID"],
        &["externalOpportunityId", "leadId", "role"],
        &["leadId"],
        &["externalOpportunityId"],
    ],
    fields: &[
        ("marketoGUID", "Marketo GUID", "string", false),
        (
            "externalOpportunityId",
            "External Opportunity Id",
            "string",
            false,
        ),
        ("leadId", "Lead Id", "integer", false),
        ("role", "Role", "string", false),
        ("isPrimary", "Is Primary", "boolean", true),
        ("createdAt", "Created At", "datetime", false),
        ("updatedAt", "Updated At", "datetime", false),
    ],
};

static CAR: ObjSchema = ObjSchema {
    name: "car_c",
    id_field: "marketoGUID",
    dedupe: &["vin"],
    searchable: &[&["marketoGUID"], &["vin"], &["leadId"]],
    fields: &[
        ("marketoGUID", "Marketo GUID", "string", false),
        ("vin", "VIN", "string", false),
        ("leadId", "Lead Id", "integer", true),
        ("make", "Make", "string", true),
        ("model", "Model", "string", true),
        ("year", "Year", "integer", true),
        ("color", "Color", "string", true),
        ("createdAt", "Created At", "datetime", false),
        ("updatedAt", "Updated At", "datetime", false),
    ],
};

impl ObjKind {
    /// Returns the schema of this kind.
    pub fn schema(self) -> &'static ObjSchema {
        match self {
            ObjKind::Company => &COMPANY,
            ObjKind::SalesPerson => &SALES_PERSON,
            ObjKind::Opportunity => &OPPORTUNITY,
            ObjKind::Role => &ROLE,
            ObjKind::Car => &CAR,
        }
    }

    /// Returns whether records are keyed by `marketoGUID` (else by integer `id`).
    pub fn guid_keyed(self) -> bool {
        self.schema().id_field == "marketoGUID"
    }

    /// Returns every kind.
    pub fn all() -> [ObjKind; 5] {
        [
            ObjKind::Company,
            ObjKind::SalesPerson,
            ObjKind::Opportunity,
            ObjKind::Role,
            ObjKind::Car,
        ]
    }
}

/// Returns the Describe result of a non-lead object.
pub fn describe_object(kind: ObjKind, created: &str) -> Value {
    let schema = kind.schema();
    let fields: Vec<Value> = schema
        .fields
        .iter()
        .map(|(name, display, data_type, updateable)| {
            let mut v = json!({"name": name, "displayName": display, "dataType": data_type, "updateable": updateable});
            if let Some(len) = length(data_type) {
                v["length"] = json!(len);
            }
            v
        })
        .collect();
    let mut v = json!({
        "name": schema.name,
        "description": format!("{} object", schema.name),
        "createdAt": created, "updatedAt": created,
        "idField": schema.id_field,
        "dedupeFields": schema.dedupe,
        "searchableFields": schema.searchable,
        "fields": fields,
    });
    if kind == ObjKind::Car {
        v["displayName"] = json!("Car");
        v["pluralName"] = json!("Cars");
        v["relationships"] = json!([{"field": "leadId", "type": "child", "relatedTo": {"name": "Lead", "field": "Id"}}]);
    }
    v
}

/// The activity type logged when a `car_c` record is added to a lead ("Add to Car").
///
/// Marketo creates one such type per custom object, named after the object's display name; its id
/// is instance-specific (the engine resolves it by name), and Marketo logs it when a record is
/// added to a person, not when a record changes ("An activity log entry is not created when a
/// custom object record is changed", Marketo's "Trigger Off Custom Object Changes"). The
/// primary attribute and attribute names here are the simulator's; the real ones are
/// unconfirmed.
pub const CAR_ADDED_ACTIVITY: u32 = 7001;

/// An activity type: (id, name, primary attribute (name, type), attributes (name, type)).
pub type ActivityType = (
    u32,
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static [(&'static str, &'static str)],
);

/// The activity types of the simulated instance.
pub static ACTIVITY_TYPES: &[ActivityType] = &[
    (
        1,
        "Visit Webpage",
        Some(("Webpage ID", "integer")),
        &[("Client IP Address", "string"), ("Webpage URL", "string")],
    ),
    (
        12,
        "New Lead",
        None,
        &[
            ("Created Date", "date"),
            ("Source Type", "string"),
            ("List Name", "string"),
            ("API Method Name", "string"),
        ],
    ),
    (
        13,
        "Change Data Value",
        Some(("Attribute Name", "integer")),
        &[
            ("New Value", "string"),
            ("Old Value", "string"),
            ("Reason", "string"),
            ("Source", "string"),
            ("Modifying User", "string"),
        ],
    ),
    (
        24,
        "Add to List",
        Some(("List ID", "integer")),
        &[("Source", "string")],
    ),
    (
        25,
        "Remove from List",
        Some(("List ID", "integer")),
        &[("Source", "string")],
    ),
    (
        32,
        "Merge Leads",
        Some(("Lead ID", "integer")),
        &[
            ("Merge IDs", "string"),
            ("Merged in Sales", "boolean"),
            ("Merge Source", "string"),
            ("Master Updated", "boolean"),
        ],
    ),
    (
        34,
        "Add to Opportunity",
        Some(("Opportunity ID", "integer")),
        &[("Is Primary", "boolean"), ("Role", "string")],
    ),
    (
        35,
        "Remove from Opportunity",
        Some(("Opportunity ID", "integer")),
        &[("Role", "string")],
    ),
    (
        37,
        "Delete Lead",
        Some(("Lead ID", "integer")),
        &[("Remove from CRM", "boolean")],
    ),
    (
        104,
        "Change Status in Progression",
        Some(("Program ID", "integer")),
        &[("New Status", "string"), ("Old Status", "string")],
    ),
    (
        CAR_ADDED_ACTIVITY,
        "Add to Car",
        Some(("VIN", "string")),
        &[("Marketo GUID", "string")],
    ),
    (
        100001,
        "Watched Demo",
        Some(("Demo Name", "string")),
        &[("Minutes", "integer")],
    ),
    // A chat product's conversations (API name `chatConversation_c`; attributes `topic`,
    // `eventId`, `transcript`), which the demo CRM's `events` table writes.
    (
        100002,
        "Chat Conversation",
        Some(("Topic", "string")),
        &[("Event Id", "string"), ("Transcript", "text")],
    ),
];

/// Returns the activity types result.
pub fn activity_types() -> Vec<Value> {
    ACTIVITY_TYPES
        .iter()
        .map(|(id, name, primary, attrs)| {
            let mut v = json!({"id": id, "name": name, "description": name});
            if let Some((pname, ptype)) = primary {
                v["primaryAttribute"] = json!({"name": pname, "dataType": ptype});
            }
            v["attributes"] = attrs
                .iter()
                .map(|(n, t)| json!({"name": n, "dataType": t}))
                .collect();
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_the_wrong_type_or_too_long_are_refused_never_shortened() {
        assert_eq!(value_problem("company", "string", &json!("Acme")), None);
        assert_eq!(
            value_problem("company", "string", &json!("x".repeat(255))),
            None
        );
        let long = value_problem("company", "string", &json!("x".repeat(256))).unwrap();
        assert!(
            long.contains("256 characters, the maximum is 255"),
            "{long}"
        );
        assert!(value_problem("notes", "text", &json!("x".repeat(256))).is_none());
        assert!(value_problem("year", "integer", &json!("abc")).is_some());
        assert!(value_problem("year", "integer", &json!("2003")).is_none());
        assert!(value_problem("email", "email", &json!("no-at-sign")).is_some());
        assert!(value_problem("company", "string", &Value::Null).is_none());
        assert!(value_problem("company", "string", &json!("")).is_none());
    }
}
