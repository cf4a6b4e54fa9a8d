//! Describe endpoints and their conversion into the shared [`ObjectSchema`].

use serde::Deserialize;
use serde_json::Value as Json;

use super::Client;
use super::error::Error;
use super::transport::Call;
use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

/// The standard (non-custom) Marketo objects with a Describe endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StandardObject {
    /// Companies (`/rest/v1/companies`).
    Company,
    /// Opportunities (`/rest/v1/opportunities`).
    Opportunity,
    /// Opportunity roles (`/rest/v1/opportunities/roles`).
    OpportunityRole,
    /// Sales persons (`/rest/v1/salespersons`).
    SalesPerson,
}

impl StandardObject {
    /// Returns the object name used in [`ObjectSchema::object`].
    pub fn name(self) -> &'static str {
        match self {
            StandardObject::Company => "company",
            StandardObject::Opportunity => "opportunity",
            StandardObject::OpportunityRole => "opportunity_role",
            StandardObject::SalesPerson => "salesperson",
        }
    }

    /// Returns the REST path below `/rest/v1/` without `.json`.
    pub fn rest_path(self) -> &'static str {
        match self {
            StandardObject::Company => "companies",
            StandardObject::Opportunity => "opportunities",
            StandardObject::OpportunityRole => "opportunities/roles",
            StandardObject::SalesPerson => "salespersons",
        }
    }
}

/// One field of Describe Lead2 or of an object's Describe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribedField {
    /// The REST API name.
    pub name: String,
    /// The label.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Marketo's data type (`string`, `email`, `integer`, `datetime`, ...).
    #[serde(default)]
    pub data_type: String,
    /// Maximum length of string fields.
    #[serde(default)]
    pub length: Option<u32>,
    /// False for read-only fields (absent means writable).
    #[serde(default)]
    pub updateable: Option<bool>,
    /// Managed by a native CRM sync.
    #[serde(default)]
    pub crm_managed: Option<bool>,
}

/// Describe Lead2 (`GET /rest/v1/leads/describe2.json`), `result[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadDescribe2 {
    /// "API Lead".
    #[serde(default)]
    pub name: Option<String>,
    /// Field sets usable as `filterType` / `lookupField`.
    #[serde(default)]
    pub searchable_fields: Vec<Vec<String>>,
    /// The fields.
    #[serde(default)]
    pub fields: Vec<DescribedField>,
}

/// The `rest`/`soap` part of a Describe Lead attribute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiFieldName {
    /// The field's name in that API.
    pub name: String,
    /// Read-only in that API.
    #[serde(default)]
    pub read_only: bool,
}

/// One field of Describe Lead (`GET /rest/v1/leads/describe.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadAttribute {
    /// The field id (used by Change Data Value activities).
    pub id: i64,
    /// The label.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Marketo's data type.
    #[serde(default)]
    pub data_type: String,
    /// Maximum length of string fields.
    #[serde(default)]
    pub length: Option<u32>,
    /// Present when the REST API can use the field.
    #[serde(default)]
    pub rest: Option<ApiFieldName>,
    /// Present when the SOAP API can use the field.
    #[serde(default)]
    pub soap: Option<ApiFieldName>,
}

/// Describe of a company, opportunity, role, salesperson or custom object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMetadata {
    /// The object's name (the spec's `apiName`; real responses say `name`).
    #[serde(default, alias = "apiName")]
    pub name: Option<String>,
    /// The label (custom objects).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The description.
    #[serde(default)]
    pub description: Option<String>,
    /// Created (custom objects).
    #[serde(default)]
    pub created_at: Option<String>,
    /// Updated (custom objects).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The id field (`id` or `marketoGUID`).
    #[serde(default)]
    pub id_field: Option<String>,
    /// The dedupe fields.
    #[serde(default)]
    pub dedupe_fields: Vec<String>,
    /// Field sets usable as `filterType`.
    #[serde(default)]
    pub searchable_fields: Vec<Vec<String>>,
    /// The fields (absent in List Custom Objects).
    #[serde(default)]
    pub fields: Vec<DescribedField>,
    /// Relationships as sent (`relatedTo` or `object`).
    #[serde(default)]
    pub relationships: Vec<Json>,
}

/// One attribute of an activity type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityAttribute {
    /// The attribute's display name.
    pub name: String,
    /// The attribute's API name (custom activity types' describe).
    #[serde(default)]
    pub api_name: Option<String>,
    /// Its data type (casing varies).
    #[serde(default)]
    pub data_type: Option<String>,
}

/// An activity type (`GET /rest/v1/activities/types.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityType {
    /// The type id (instance-specific in principle; resolve by name).
    pub id: i64,
    /// The name ("New Lead", "Change Data Value", ...).
    pub name: String,
    /// The description.
    #[serde(default)]
    pub description: Option<String>,
    /// The API name (custom activities).
    #[serde(default)]
    pub api_name: Option<String>,
    /// The primary attribute (absent for New Lead).
    #[serde(default)]
    pub primary_attribute: Option<ActivityAttribute>,
    /// The secondary attributes.
    #[serde(default)]
    pub attributes: Vec<ActivityAttribute>,
}

/// The most characters of a `string` attribute of a custom activity.
pub const CUSTOM_STRING_CHARS: u32 = 255;
/// The most characters of a `text` attribute of a custom activity (Marketo also caps an
/// attribute at 65,536 bytes; see [`CUSTOM_ATTRIBUTE_BYTES`]).
pub const CUSTOM_TEXT_CHARS: u32 = 65_535;
/// The most bytes (UTF-8) of one custom activity attribute value.
pub const CUSTOM_ATTRIBUTE_BYTES: usize = 65_536;
/// The prefix of the schema name of a custom activity type (`custom_activity:<apiName>`).
pub const CUSTOM_ACTIVITY_PREFIX: &str = "custom_activity:";

impl ActivityType {
    /// Returns the schema `object` of a custom activity type as the mapping compiler reads it:
    /// its primary attribute (named by `id_field`) and secondary attributes by API name, all
    /// writable, `string` ones at most 255 characters and `text` ones at most 65,535.
    pub fn to_custom_schema(&self, object: &str) -> ObjectSchema {
        let def = |a: &ActivityAttribute| {
            let name = a.api_name.clone().unwrap_or_else(|| a.name.clone());
            let ty = match a
                .data_type
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("string") | None => FieldType::Text {
                    max_len: Some(CUSTOM_STRING_CHARS),
                },
                Some("text") => FieldType::Text {
                    max_len: Some(CUSTOM_TEXT_CHARS),
                },
                Some(other) => field_type(other, None),
            };
            let mut f = FieldDef::new(name, ty);
            f.label = Some(a.name.clone());
            f
        };
        let primary = self.primary_attribute.as_ref().map(def);
        let mut fields: Vec<FieldDef> = primary.iter().cloned().collect();
        fields.extend(self.attributes.iter().map(def));
        ObjectSchema {
            side: Side::Marketo,
            object: object.to_owned(),
            id_field: primary.map(|p| p.name),
            dedupe_fields: Vec::new(),
            fields,
        }
    }
}

/// Returns the shared field type of a Marketo data type.
pub fn field_type(data_type: &str, length: Option<u32>) -> FieldType {
    match data_type.to_ascii_lowercase().as_str() {
        "string" => FieldType::Text { max_len: length },
        "text" | "textarea" => FieldType::Text { max_len: None },
        "email" => FieldType::Email,
        "phone" => FieldType::Phone,
        "url" => FieldType::Url,
        "integer" | "score" | "int" | "long" => FieldType::Integer,
        "float" | "currency" | "percent" | "double" | "decimal" => FieldType::Decimal,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::DateTime,
        "reference" => FieldType::Reference { object: None },
        "picklist" => FieldType::Picklist {
            options: Vec::new(),
        },
        other => FieldType::Other {
            name: other.to_owned(),
        },
    }
}

fn single_searchable(sets: &[Vec<String>], name: &str) -> bool {
    sets.iter().any(|s| s.len() == 1 && s[0] == name)
}

fn to_field_def(f: &DescribedField, searchable: &[Vec<String>], unique: bool) -> FieldDef {
    FieldDef {
        name: f.name.clone(),
        label: f.display_name.clone(),
        ty: field_type(&f.data_type, f.length),
        read_only: f.updateable == Some(false),
        required: false,
        unique,
        searchable: single_searchable(searchable, &f.name),
    }
}

impl LeadDescribe2 {
    /// Returns the lead schema (`object` "lead", id field `id`, dedupe field `email`).
    pub fn to_schema(&self) -> ObjectSchema {
        ObjectSchema {
            side: Side::Marketo,
            object: "lead".into(),
            id_field: Some("id".into()),
            dedupe_fields: vec!["email".into()],
            fields: self
                .fields
                .iter()
                .map(|f| to_field_def(f, &self.searchable_fields, f.name == "id"))
                .collect(),
        }
    }
}

/// Returns the lead schema from Describe Lead (v1): only fields the REST API can use.
pub fn lead_attributes_to_schema(attrs: &[LeadAttribute]) -> ObjectSchema {
    ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec!["email".into()],
        fields: attrs
            .iter()
            .filter_map(|a| {
                let rest = a.rest.as_ref()?;
                Some(FieldDef {
                    name: rest.name.clone(),
                    label: a.display_name.clone(),
                    ty: field_type(&a.data_type, a.length),
                    read_only: rest.read_only,
                    required: false,
                    unique: rest.name == "id",
                    searchable: false,
                })
            })
            .collect(),
    }
}

impl ObjectMetadata {
    /// Returns the schema under the given object name.
    pub fn to_schema(&self, object: &str) -> ObjectSchema {
        let single_key = |n: &str| {
            self.id_field.as_deref() == Some(n)
                || (self.dedupe_fields.len() == 1 && self.dedupe_fields[0] == n)
        };
        ObjectSchema {
            side: Side::Marketo,
            object: object.to_owned(),
            id_field: self.id_field.clone(),
            dedupe_fields: self.dedupe_fields.clone(),
            fields: self
                .fields
                .iter()
                .map(|f| to_field_def(f, &self.searchable_fields, single_key(&f.name)))
                .collect(),
        }
    }
}

/// The detail of [`Error::Decode`] when a Describe answers with no result.
pub(crate) const NO_DESCRIBE: &str = "describe returned no result";

impl Client {
    /// Reads Describe Lead2 (`GET /rest/v1/leads/describe2.json`).
    ///
    /// Returns the lead fields and searchable field sets.
    ///
    /// # Errors
    ///
    /// Returns any call-level error, or [`Error::Decode`] when the result is empty.
    pub async fn describe_lead2(&self) -> Result<LeadDescribe2, Error> {
        const EP: &str = "/rest/v1/leads/describe2.json";
        let env = self.call::<LeadDescribe2>(&Call::get(EP)).await?;
        env.one(EP, NO_DESCRIBE)
    }

    /// Reads Describe Lead (`GET /rest/v1/leads/describe.json`).
    ///
    /// Returns one attribute per field, with the field ids activities refer to.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn describe_lead(&self) -> Result<Vec<LeadAttribute>, Error> {
        let env = self
            .call::<LeadAttribute>(&Call::get("/rest/v1/leads/describe.json"))
            .await?;
        Ok(env.records())
    }

    /// Reads the Describe of a standard object (`GET /rest/v1/<object>/describe.json`).
    ///
    /// Returns its metadata; [`ObjectMetadata::to_schema`] converts it.
    ///
    /// # Errors
    ///
    /// Returns any call-level error, or [`Error::Decode`] when the result is empty.
    pub async fn describe_object(&self, object: StandardObject) -> Result<ObjectMetadata, Error> {
        let ep = format!("/rest/v1/{}/describe.json", object.rest_path());
        let env = self.call::<ObjectMetadata>(&Call::get(&ep)).await?;
        env.one(&ep, NO_DESCRIBE)
    }

    /// Lists custom object types (`GET /rest/v1/customobjects.json`), all when `names` is empty.
    ///
    /// Returns their metadata without fields.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn list_custom_objects(
        &self,
        names: &[String],
    ) -> Result<Vec<ObjectMetadata>, Error> {
        let call = Call::get("/rest/v1/customobjects.json").q_list("names", names);
        Ok(self.call::<ObjectMetadata>(&call).await?.records())
    }

    /// Reads the Describe of a custom object (`GET /rest/v1/customobjects/{apiName}/describe.json`).
    ///
    /// Returns its metadata.
    ///
    /// # Errors
    ///
    /// Returns any call-level error, or [`Error::Decode`] when the result is empty.
    pub async fn describe_custom_object(&self, api_name: &str) -> Result<ObjectMetadata, Error> {
        let ep = format!(
            "/rest/v1/customobjects/{}/describe.json",
            path_segment(api_name)?
        );
        let env = self.call::<ObjectMetadata>(&Call::get(&ep)).await?;
        env.one(&ep, NO_DESCRIBE)
    }

    /// Reads the Describe of an object by the name used in [`ObjectSchema::object`]: `lead`
    /// (Describe Lead2), `company`, `opportunity`, `opportunity_role`, `salesperson`, or a
    /// custom object's API name.
    ///
    /// Returns its schema.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a name that cannot be a custom object, and any
    /// call-level error.
    pub async fn object_schema(&self, object: &str) -> Result<ObjectSchema, Error> {
        use crate::mapping::MarketoKind;
        match MarketoKind::of(object) {
            MarketoKind::Lead => Ok(self.describe_lead2().await?.to_schema()),
            MarketoKind::CustomActivity => self.custom_activity_schema(object).await,
            MarketoKind::Standard(s) => Ok(self.describe_object(s).await?.to_schema(object)),
            MarketoKind::Program => Ok(super::programs::program_schema()),
            MarketoKind::StaticList => Ok(crate::mapping::lists::list_member_schema()),
            MarketoKind::ProgramMember => {
                Ok(self.describe_program_members().await?.to_schema(object))
            }
            MarketoKind::Activities | MarketoKind::CustomObject => {
                Ok(self.describe_custom_object(object).await?.to_schema(object))
            }
        }
    }

    /// Reads the schema of custom activity type `custom_activity:<apiName or type id>`.
    async fn custom_activity_schema(&self, object: &str) -> Result<ObjectSchema, Error> {
        let name = object
            .strip_prefix(CUSTOM_ACTIVITY_PREFIX)
            .unwrap_or_default();
        let found = match name.parse::<i64>() {
            Ok(id) => self
                .custom_activity_types()
                .await?
                .into_iter()
                .find(|t| t.id == id),
            Err(_) => self.describe_custom_activity_type(name).await?,
        };
        found.map(|t| t.to_custom_schema(object)).ok_or_else(|| {
            Error::invalid(
                "/rest/v1/activities/external/type/{apiName}/describe.json",
                format!("Marketo has no custom activity type `{name}`"),
            )
        })
    }

    /// Reads the custom activity types with their API names
    /// (`GET /rest/v1/activities/external/types.json`).
    ///
    /// Returns the types, drafts included.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn custom_activity_types(&self) -> Result<Vec<ActivityType>, Error> {
        let env = self
            .call::<ActivityType>(&Call::get("/rest/v1/activities/external/types.json"))
            .await?;
        Ok(env.records())
    }

    /// Describes one custom activity type by API name
    /// (`GET /rest/v1/activities/external/type/{apiName}/describe.json`).
    ///
    /// Returns `None` when Marketo has no such type (1013).
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidInput`] for a name unsafe in a URL path, and any other
    /// call-level error.
    pub async fn describe_custom_activity_type(
        &self,
        api_name: &str,
    ) -> Result<Option<ActivityType>, Error> {
        let name = path_segment(api_name)?;
        let call = Call::get(format!(
            "/rest/v1/activities/external/type/{name}/describe.json"
        ));
        match self.call::<ActivityType>(&call).await {
            Ok(env) => Ok(env.first()),
            Err(e) if e.code() == Some("1013") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads every activity type (`GET /rest/v1/activities/types.json`).
    ///
    /// Returns the types, custom ones included.
    ///
    /// # Errors
    ///
    /// Returns any call-level error.
    pub async fn activity_types(&self) -> Result<Vec<ActivityType>, Error> {
        let env = self
            .call::<ActivityType>(&Call::get("/rest/v1/activities/types.json"))
            .await?;
        Ok(env.records())
    }
}

/// Returns a name checked to be safe as one URL path segment.
pub(crate) fn path_segment(name: &str) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(name)
    } else {
        Err(Error::invalid(
            "path",
            format!("{name:?} is not a valid Marketo API name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::test_support::*;
    use serde_json::json;
    use wiremock::Mock;
    use wiremock::matchers::{method, path};

    #[test]
    fn data_types_map_onto_shared_field_types() {
        assert_eq!(
            field_type("string", Some(255)),
            FieldType::Text { max_len: Some(255) }
        );
        assert_eq!(field_type("email", None), FieldType::Email);
        assert_eq!(field_type("currency", None), FieldType::Decimal);
        assert_eq!(field_type("percent", None), FieldType::Decimal);
        assert_eq!(field_type("float", None), FieldType::Decimal);
        assert_eq!(field_type("score", None), FieldType::Integer);
        assert_eq!(field_type("Integer", None), FieldType::Integer);
        assert_eq!(field_type("datetime", None), FieldType::DateTime);
        assert_eq!(field_type("date", None), FieldType::Date);
        assert_eq!(field_type("boolean", None), FieldType::Boolean);
        assert_eq!(
            field_type("text", Some(10)),
            FieldType::Text { max_len: None }
        );
        assert_eq!(
            field_type("reference", None),
            FieldType::Reference { object: None }
        );
        assert_eq!(
            field_type("formula", None),
            FieldType::Other {
                name: "formula".into()
            }
        );
    }

    #[tokio::test]
    async fn lead_describe2_converts_to_a_schema() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/leads/describe2.json"))
            .respond_with(ok(json!([{
                "name": "API Lead",
                "searchableFields": [["email"], ["id"], ["sfdcId", "x"]],
                "fields": [
                    {"name": "id", "displayName": "Id", "dataType": "integer", "updateable": false},
                    {"name": "email", "displayName": "Email Address", "dataType": "email", "length": 255, "updateable": true},
                    {"name": "company", "dataType": "string", "length": 255, "updateable": true},
                    {"name": "sfdcId", "dataType": "string", "updateable": true}
                ]
            }])))
            .mount(&server)
            .await;
        let schema = client.describe_lead2().await.unwrap().to_schema();
        assert_eq!(schema.object, "lead");
        let id = schema.field("id").unwrap();
        assert!(id.read_only && id.searchable && id.unique);
        let email = schema.field("email").unwrap();
        assert_eq!(email.ty, FieldType::Email);
        assert!(email.searchable && !email.read_only);
        assert_eq!(
            schema.field("company").unwrap().ty,
            FieldType::Text { max_len: Some(255) }
        );
        assert!(!schema.field("sfdcId").unwrap().searchable);
    }

    #[tokio::test]
    async fn object_describe_keeps_dedupe_fields() {
        let (server, client) = server_with_identity().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/opportunities/roles/describe.json"))
            .respond_with(ok(json!([{
                "name": "opportunityRole", "idField": "marketoGUID",
                "dedupeFields": ["externalOpportunityId", "leadId", "role"],
                "searchableFields": [["marketoGUID"], ["externalOpportunityId", "leadId", "role"]],
                "fields": [
                    {"name": "marketoGUID", "dataType": "string", "length": 36, "updateable": false},
                    {"name": "leadId", "dataType": "integer", "updateable": false},
                    {"name": "isPrimary", "dataType": "boolean", "updateable": true}
                ],
                "relationships": [{"field": "leadId", "type": "parent", "relatedTo": {"name": "Lead", "field": "id"}}]
            }])))
            .mount(&server)
            .await;
        let meta = client
            .describe_object(StandardObject::OpportunityRole)
            .await
            .unwrap();
        let schema = meta.to_schema(StandardObject::OpportunityRole.name());
        assert_eq!(schema.dedupe_fields.len(), 3);
        assert_eq!(schema.id_field.as_deref(), Some("marketoGUID"));
        assert!(schema.field("marketoGUID").unwrap().unique);
        assert!(!schema.field("leadId").unwrap().unique);
        assert_eq!(schema.field("isPrimary").unwrap().ty, FieldType::Boolean);
    }

    #[test]
    fn activity_types_accept_a_missing_primary_attribute() {
        let t: ActivityType = serde_json::from_value(json!({
            "id": 12, "name": "New Lead", "attributes": [{"name": "Source Type", "dataType": "string"}]
        }))
        .unwrap();
        assert!(t.primary_attribute.is_none());
        assert!(path_segment("car_c").is_ok());
        assert!(path_segment("../x").is_err());
    }
}
