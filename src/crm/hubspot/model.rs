//! HubSpot's wire types, as far as the adapter reads them (field names as in HubSpot's public
//! OpenAPI specs: `SimplePublicObject`, `StandardError`, `Property`, ...). Unknown fields are
//! ignored; fields HubSpot may leave out are optional.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A CRM object as the objects, search and batch endpoints return it (`SimplePublicObject`;
/// batch upserts add `new`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublicObject {
    pub(crate) id: String,
    /// Every value is text (or null).
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub(crate) updated_at: Option<String>,
    #[serde(default)]
    pub(crate) archived: bool,
    #[serde(default)]
    pub(crate) archived_at: Option<String>,
    /// Batch upsert only: the record was created by this call.
    #[serde(default)]
    pub(crate) new: Option<bool>,
}

/// The `paging` object of list and search answers.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Paging {
    #[serde(default)]
    pub(crate) next: Option<NextPage>,
}

/// The next page's cursor.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NextPage {
    pub(crate) after: String,
}

/// A list or search answer.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Collection<T> {
    #[serde(default = "Vec::new")]
    pub(crate) results: Vec<T>,
    #[serde(default)]
    pub(crate) paging: Option<Paging>,
}

impl<T> Collection<T> {
    pub(crate) fn next_after(&self) -> Option<String> {
        self.paging
            .as_ref()
            .and_then(|p| p.next.as_ref())
            .map(|n| n.after.clone())
    }
}

/// A batch answer (`BatchResponse...WithErrors`): 200 when all went well, 207 with `errors`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchResponse<T> {
    #[serde(default = "Vec::new")]
    pub(crate) results: Vec<T>,
    #[serde(default)]
    pub(crate) errors: Vec<StandardError>,
}

/// One error of a batch, or the body of a failed call (`StandardError` / `Error`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StandardError {
    #[serde(default)]
    pub(crate) category: Option<String>,
    #[serde(default)]
    pub(crate) sub_category: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// The ids (or id-property values) the error is about: `{"ids": ["1"]}`, ...
    #[serde(default)]
    pub(crate) context: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) errors: Vec<ErrorDetail>,
    #[serde(default)]
    pub(crate) id: Option<String>,
}

/// One detail of an error (`ErrorDetail`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorDetail {
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default)]
    pub(crate) context: BTreeMap<String, Vec<String>>,
}

impl StandardError {
    /// Returns the ids this error names, from `context` (`ids`, `id`, `idProperty` values ...)
    /// and `id`.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for key in ["ids", "id", "objectIds", "idPropertyValues"] {
            if let Some(values) = self.context.get(key) {
                ids.extend(values.iter().cloned());
            }
        }
        if let Some(id) = &self.id {
            ids.push(id.clone());
        }
        ids
    }

    /// Returns the sub-category as text, when it is one.
    pub(crate) fn sub_category_text(&self) -> Option<&str> {
        self.sub_category.as_ref().and_then(|v| v.as_str())
    }
}

/// One property definition (`Property` of the Properties API).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Property {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) label: Option<String>,
    /// `string`, `number`, `date`, `datetime`, `enumeration`, `bool`, ...
    #[serde(rename = "type")]
    pub(crate) ty: String,
    /// `text`, `textarea`, `select`, `radio`, `checkbox`, `booleancheckbox`, `phonenumber`, ...
    #[serde(default)]
    pub(crate) field_type: Option<String>,
    #[serde(default)]
    pub(crate) options: Vec<PropertyOption>,
    #[serde(default)]
    pub(crate) has_unique_value: bool,
    /// The property group it belongs to.
    #[serde(default)]
    pub(crate) group_name: Option<String>,
    #[serde(default)]
    pub(crate) calculated: bool,
    #[serde(default)]
    pub(crate) modification_metadata: Option<ModificationMetadata>,
    #[serde(default)]
    pub(crate) archived: bool,
}

/// One option of an enumeration property.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PropertyOption {
    pub(crate) value: String,
}

/// Whether a property's values can be written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ModificationMetadata {
    #[serde(default)]
    pub(crate) read_only_value: bool,
}

/// One owner (`PublicOwner`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Owner {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) first_name: Option<String>,
    #[serde(default)]
    pub(crate) last_name: Option<String>,
    #[serde(default)]
    pub(crate) user_id: Option<i64>,
    #[serde(default)]
    pub(crate) updated_at: Option<String>,
}

/// One batch result of the v4 associations read (`PublicAssociationMultiWithLabel`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AssociationsOf {
    pub(crate) from: PublicObjectId,
    #[serde(default)]
    pub(crate) to: Vec<AssociatedTo>,
}

/// An object id (`PublicObjectId`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PublicObjectId {
    pub(crate) id: String,
}

/// One associated record with its association types (`MultiAssociatedObjectWithLabel`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssociatedTo {
    /// A number in HubSpot's answers; read as either.
    pub(crate) to_object_id: serde_json::Value,
    #[serde(default)]
    pub(crate) association_types: Vec<AssociationType>,
}

/// One association type (`AssociationSpecWithLabel`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssociationType {
    #[serde(default)]
    pub(crate) category: Option<String>,
    pub(crate) type_id: i64,
    #[serde(default)]
    pub(crate) label: Option<String>,
}

impl AssociatedTo {
    pub(crate) fn to_id(&self) -> String {
        match &self.to_object_id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_status_batch_answer_parses() {
        // The shape of HubSpot's 207 answer (BatchResponseSimplePublicObjectWithErrors).
        let body = serde_json::json!({
            "status": "COMPLETE",
            "results": [{ "id": "101", "properties": { "email": "a@x.com", "hs_object_id": "101" },
                          "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-02T00:00:00.000Z",
                          "archived": false }],
            "numErrors": 1,
            "errors": [{ "status": "error", "category": "OBJECT_NOT_FOUND",
                         "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
                         "context": { "ids": ["999"] }, "errors": [] }],
            "requestedAt": "2026-01-02T00:00:00Z", "startedAt": "2026-01-02T00:00:00Z",
            "completedAt": "2026-01-02T00:00:00Z"
        });
        let r: BatchResponse<PublicObject> = serde_json::from_value(body).unwrap();
        assert_eq!(r.results[0].id, "101");
        assert_eq!(r.errors[0].category.as_deref(), Some("OBJECT_NOT_FOUND"));
        assert_eq!(r.errors[0].ids(), vec!["999".to_owned()]);
    }

    #[test]
    fn properties_and_associations_parse() {
        let p: Property = serde_json::from_value(serde_json::json!({
            "name": "dealstage", "label": "Deal Stage", "type": "enumeration", "fieldType": "select",
            "groupName": "dealinformation", "options": [{ "label": "Won", "value": "closedwon",
            "displayOrder": 0, "hidden": false }], "calculated": false, "externalOptions": false,
            "hasUniqueValue": false, "hidden": false,
            "modificationMetadata": { "archivable": true, "readOnlyDefinition": true, "readOnlyValue": false }
        }))
        .unwrap();
        assert_eq!(p.options[0].value, "closedwon");
        assert!(!p.modification_metadata.unwrap().read_only_value);
        let a: AssociationsOf = serde_json::from_value(serde_json::json!({
            "from": { "id": "5" },
            "to": [{ "toObjectId": 7, "associationTypes": [
                { "category": "HUBSPOT_DEFINED", "typeId": 3, "label": null },
                { "category": "USER_DEFINED", "typeId": 41, "label": "Decision Maker" }] }]
        }))
        .unwrap();
        assert_eq!(a.to[0].to_id(), "7");
        assert_eq!(
            a.to[0].association_types[1].label.as_deref(),
            Some("Decision Maker")
        );
    }
}
