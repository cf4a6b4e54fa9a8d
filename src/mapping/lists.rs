//! The Marketo-side schema of static list membership (`marketo_object = "static_list"`), as the
//! mapping compiler reads it. Marketo has no describe for it: the schema is fixed.
//!
//! A record is one lead in one list, keyed `<listId>:<leadId>`. Its fields:
//! - [`MEMBER_FIELD`] (boolean, writable): true while the lead is in the list; false once it
//!   was removed. In the CRM it is the membership row's soft-delete flag (e.g. `is_member`).
//! - synthetic, read-only, filled in by the engine: [`CRM_CONTACT_FIELD`] (the CRM key of the
//!   lead's contact) and [`LIST_NAME_FIELD`] (the list's name, as in `[lists] names`).

use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

pub use crate::mapping::activities::CRM_CONTACT_FIELD;

/// The Marketo object name of static list membership in mapping files.
pub const STATIC_LIST: &str = "static_list";
/// The synthetic field holding the list's name.
pub const LIST_NAME_FIELD: &str = "listName";
/// The field that is true while the lead is a member.
pub const MEMBER_FIELD: &str = "member";

/// Returns the fixed schema of static list membership.
pub fn list_member_schema() -> ObjectSchema {
    let mut fields = Vec::new();
    for name in [CRM_CONTACT_FIELD, LIST_NAME_FIELD] {
        let mut f = FieldDef::new(name, FieldType::Text { max_len: None });
        f.read_only = true;
        fields.push(f);
    }
    fields.push(FieldDef::new(MEMBER_FIELD, FieldType::Boolean));
    ObjectSchema {
        side: Side::Marketo,
        object: STATIC_LIST.into(),
        id_field: None,
        dedupe_fields: Vec::new(),
        fields,
    }
}

/// Returns the Marketo key of a membership.
pub fn member_key(list: i64, lead: i64) -> String {
    format!("{list}:{lead}")
}

/// Returns (list, lead) of a membership key.
pub fn parse_key(key: &str) -> Option<(i64, i64)> {
    let (l, p) = key.split_once(':')?;
    Some((l.parse().ok()?, p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_schema_has_the_member_flag() {
        assert_eq!(parse_key(&member_key(1001, 42)), Some((1001, 42)));
        assert_eq!(parse_key("a:1"), None);
        let s = list_member_schema();
        assert!(!s.field(MEMBER_FIELD).unwrap().read_only);
        assert!(s.field(LIST_NAME_FIELD).unwrap().read_only);
    }
}
