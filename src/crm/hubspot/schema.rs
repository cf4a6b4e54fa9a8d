//! Property definitions and values: HubSpot's Properties API turned into [`FieldDef`]s, and
//! HubSpot's text values read into [`Value`]s and written back, never shortened or coerced.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;

use super::model::{Property, PublicObject};
use crate::crm::RefusalReason;
use crate::model::{FieldDef, FieldType, Value};

/// The longest text HubSpot stores in a string property, in characters.
pub const MAX_TEXT_CHARS: u32 = 65_536;
/// The primary key property of every CRM object.
pub const ID_PROPERTY: &str = "hs_object_id";
/// The property listing the ids merged into a record.
pub const MERGED_PROPERTY: &str = "hs_merged_object_ids";

/// Returns the modified-time property of an object type (`lastmodifieddate` for contacts).
pub fn modified_property(object_type: &str) -> &'static str {
    if object_type == "contacts" || object_type == "0-1" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// Returns when a record was last modified: its modified-time property (`modified`), else its
/// `updatedAt`, else the epoch (read first by the next poll).
pub(crate) fn modified_at(object: &PublicObject, modified: &str) -> DateTime<Utc> {
    object
        .properties
        .get(modified)
        .and_then(Option::as_deref)
        .and_then(parse_instant)
        .or_else(|| object.updated_at.as_deref().and_then(parse_instant))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Returns the field definition of one HubSpot property.
pub(crate) fn field_def(p: &Property) -> FieldDef {
    let field_type = p.field_type.as_deref().unwrap_or("");
    let ty = if p.name == ID_PROPERTY {
        FieldType::Integer
    } else {
        match p.ty.as_str() {
            "string" if field_type == "phonenumber" => FieldType::Phone,
            "string" if p.name == "email" => FieldType::Email,
            "string" => FieldType::Text {
                max_len: Some(MAX_TEXT_CHARS),
            },
            "phone_number" => FieldType::Phone,
            "number" => FieldType::Decimal,
            "bool" => FieldType::Boolean,
            "date" => FieldType::Date,
            "datetime" => FieldType::DateTime,
            "enumeration" if field_type == "checkbox" => FieldType::Other {
                name: "multi-select enumeration".to_owned(),
            },
            "enumeration" if field_type == "booleancheckbox" => FieldType::Boolean,
            "enumeration" => FieldType::Picklist {
                options: p.options.iter().map(|o| o.value.clone()).collect(),
            },
            other => FieldType::Other {
                name: other.to_owned(),
            },
        }
    };
    let read_only = p.calculated
        || p.name == ID_PROPERTY
        || p.modification_metadata
            .as_ref()
            .is_some_and(|m| m.read_only_value);
    FieldDef {
        name: p.name.clone(),
        label: p.label.clone(),
        ty,
        read_only,
        required: false,
        unique: p.has_unique_value || p.name == ID_PROPERTY,
        searchable: true,
    }
}

/// Returns a HubSpot timestamp (ISO 8601, or epoch milliseconds as older endpoints send) in UTC.
pub fn parse_instant(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    raw.parse::<i64>()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
}

/// Returns a property value read as its field's type; text that does not parse stays text.
pub(crate) fn parse_value(raw: Option<&str>, ty: &FieldType) -> Value {
    let Some(raw) = raw else {
        return Value::Null;
    };
    if raw.is_empty() {
        return Value::Null;
    }
    let text = || Value::Text(raw.to_owned());
    match ty {
        FieldType::Integer => raw
            .trim()
            .parse()
            .map(Value::Int)
            .unwrap_or_else(|_| text()),
        FieldType::Decimal => match raw.trim().parse::<Decimal>() {
            Ok(d) => Value::Decimal(d),
            Err(_) => text(),
        },
        FieldType::Boolean => match raw.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => text(),
        },
        FieldType::Date => NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
            .ok()
            .or_else(|| parse_instant(raw).map(|t| t.date_naive()))
            .map(Value::Date)
            .unwrap_or_else(text),
        FieldType::DateTime => parse_instant(raw).map(Value::DateTime).unwrap_or_else(text),
        _ => text(),
    }
}

/// Returns the text HubSpot is sent for `value` in `field`, or why the value does not fit
/// (nothing is ever shortened, rounded or coerced).
pub(crate) fn render_value(value: &Value, field: &FieldDef) -> Result<String, RefusalReason> {
    let invalid = || Err(RefusalReason::InvalidValue);
    let text = match value {
        // An empty string clears a property.
        Value::Null => return Ok(String::new()),
        Value::Text(s) => s.clone(),
        other => other.to_text(),
    };
    match &field.ty {
        FieldType::Integer => match value {
            Value::Int(_) => Ok(text),
            _ if text.trim().parse::<i64>().is_ok() => Ok(text.trim().to_owned()),
            _ => invalid(),
        },
        FieldType::Decimal => match value {
            Value::Int(_) | Value::Decimal(_) => Ok(text),
            Value::Text(s) if s.trim().parse::<Decimal>().is_ok() => Ok(s.trim().to_owned()),
            _ => invalid(),
        },
        FieldType::Boolean => match value {
            Value::Bool(b) => Ok(b.to_string()),
            Value::Text(s) if s == "true" || s == "false" => Ok(s.clone()),
            _ => invalid(),
        },
        FieldType::Date => match value {
            Value::Date(d) => Ok(d.format("%Y-%m-%d").to_string()),
            Value::Text(s) if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => Ok(s.clone()),
            _ => invalid(),
        },
        FieldType::DateTime => match value {
            Value::DateTime(t) => Ok(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            Value::Date(d) => Ok(d
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true))
                .unwrap_or_default()),
            Value::Text(s) => match parse_instant(s) {
                Some(t) => Ok(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                None => invalid(),
            },
            _ => invalid(),
        },
        FieldType::Picklist { options } => {
            if options.is_empty() || options.contains(&text) {
                Ok(text)
            } else {
                invalid()
            }
        }
        _ => {
            let max = field.ty.max_len().unwrap_or(MAX_TEXT_CHARS);
            let chars = text.chars().count();
            if chars > max as usize {
                return Err(RefusalReason::TooLong {
                    field: field.name.clone(),
                    max_chars: max,
                    actual_chars: u32::try_from(chars).unwrap_or(u32::MAX),
                });
            }
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(json: serde_json::Value) -> FieldDef {
        field_def(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn property_types_map_to_field_types() {
        let email =
            prop(serde_json::json!({"name": "email", "type": "string", "fieldType": "text"}));
        assert_eq!(email.ty, FieldType::Email);
        let stage = prop(
            serde_json::json!({"name": "dealstage", "type": "enumeration",
            "fieldType": "select", "options": [{"label": "Won", "value": "closedwon"}]}),
        );
        assert_eq!(
            stage.ty,
            FieldType::Picklist {
                options: vec!["closedwon".into()]
            }
        );
        let id = prop(
            serde_json::json!({"name": "hs_object_id", "type": "number", "fieldType": "number",
            "modificationMetadata": {"readOnlyValue": true, "archivable": false, "readOnlyDefinition": true}}),
        );
        assert!(id.read_only && id.unique && id.ty == FieldType::Integer);
        let mk = prop(
            serde_json::json!({"name": "marketo_id", "type": "string", "fieldType": "text",
            "hasUniqueValue": true}),
        );
        assert!(mk.unique && !mk.read_only);
        let calc = prop(
            serde_json::json!({"name": "days_to_close", "type": "number", "calculated": true}),
        );
        assert!(calc.read_only);
    }

    #[test]
    fn values_are_read_in_their_type_and_never_shortened_on_write() {
        assert_eq!(
            parse_value(Some("12.50"), &FieldType::Decimal),
            Value::Decimal("12.5".parse().unwrap())
        );
        assert_eq!(parse_value(Some(""), &FieldType::Decimal), Value::Null);
        let t = parse_value(Some("2026-03-01T10:00:00.123Z"), &FieldType::DateTime);
        assert_eq!(t, Value::DateTime("2026-03-01T10:00:00Z".parse().unwrap()));
        assert_eq!(
            parse_value(Some("1772359200000"), &FieldType::Date),
            Value::Date(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
        );
        let text = FieldDef::new("bio", FieldType::Text { max_len: Some(5) });
        assert_eq!(render_value(&Value::from("abcde"), &text).unwrap(), "abcde");
        assert_eq!(
            render_value(&Value::from("abcdef"), &text).unwrap_err(),
            RefusalReason::TooLong {
                field: "bio".into(),
                max_chars: 5,
                actual_chars: 6
            }
        );
        let stage = FieldDef::new(
            "dealstage",
            FieldType::Picklist {
                options: vec!["won".into()],
            },
        );
        assert_eq!(
            render_value(&Value::from("lost"), &stage).unwrap_err(),
            RefusalReason::InvalidValue
        );
        let amount = FieldDef::new("amount", FieldType::Decimal);
        assert_eq!(
            render_value(&Value::from("12x"), &amount).unwrap_err(),
            RefusalReason::InvalidValue
        );
        assert_eq!(render_value(&Value::Null, &amount).unwrap(), "");
        let when = FieldDef::new("closedate", FieldType::DateTime);
        assert_eq!(
            render_value(
                &Value::DateTime("2026-03-01T10:00:00Z".parse().unwrap()),
                &when
            )
            .unwrap(),
            "2026-03-01T10:00:00.000Z"
        );
    }
}
