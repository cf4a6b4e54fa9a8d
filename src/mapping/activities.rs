//! The Marketo-side schema of an activity type, as the mapping compiler reads it: the standard
//! fields every activity has (with the synthetic CRM-contact field the engine fills in) and the
//! type's attributes, all read-only.

use crate::marketo::describe::{ActivityType, field_type};
use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

/// The synthetic source field holding the CRM key linked to the activity's lead (null when the
/// lead is not linked).
pub const CRM_CONTACT_FIELD: &str = "crmContactId";
/// The standard source fields of every activity, with their types.
pub const STANDARD_FIELDS: &[(&str, &str)] = &[
    ("marketoGUID", "string"),
    ("activityDate", "datetime"),
    ("leadId", "integer"),
    ("campaignId", "integer"),
    ("primaryAttributeValueId", "integer"),
    ("primaryAttributeValue", "string"),
    (CRM_CONTACT_FIELD, "string"),
];

/// Returns the Marketo-side schema `activity:<id>` of an activity type, as the mapping compiler
/// expects it: the standard fields ([`STANDARD_FIELDS`]) and the type's attributes by name, all
/// read-only.
pub fn activity_schema(t: &ActivityType) -> ObjectSchema {
    let mut fields: Vec<FieldDef> = STANDARD_FIELDS
        .iter()
        .map(|(name, ty)| field((*name).to_owned(), field_type(ty, None)))
        .collect();
    for a in t.primary_attribute.iter().chain(&t.attributes) {
        if fields.iter().any(|f| f.name == a.name) {
            continue;
        }
        let ty = a
            .data_type
            .as_deref()
            .map_or(FieldType::Text { max_len: None }, |d| field_type(d, None));
        fields.push(field(a.name.clone(), ty));
    }
    ObjectSchema {
        side: Side::Marketo,
        object: format!("activity:{}", t.id),
        id_field: Some("marketoGUID".into()),
        dedupe_fields: vec!["marketoGUID".into()],
        fields,
    }
}

fn field(name: String, ty: FieldType) -> FieldDef {
    let mut f = FieldDef::new(name, ty);
    f.read_only = true;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn activity_schemas_hold_standard_fields_and_attributes() {
        let t: ActivityType = serde_json::from_value(json!({
            "id": 1, "name": "Visit Webpage",
            "primaryAttribute": {"name": "Webpage ID", "dataType": "integer"},
            "attributes": [{"name": "Webpage URL", "dataType": "string"}]
        }))
        .unwrap();
        let s = activity_schema(&t);
        assert_eq!(s.object, "activity:1");
        assert_eq!(s.field("Webpage ID").unwrap().ty, FieldType::Integer);
        assert!(s.field("Webpage URL").is_some());
        assert!(s.field(CRM_CONTACT_FIELD).is_some());
        assert_eq!(s.field("activityDate").unwrap().ty, FieldType::DateTime);
    }
}
