//! The Marketo-side schemas of programs and program members, as the mapping compiler reads
//! them, and the status map of program members.
//!
//! - `program`: the Asset API's program fields (no describe exists; the schema is fixed), all
//!   read-only: programs flow to a CRM campaign table only.
//! - `program_member`: the program member describe, plus synthetic source fields the engine
//!   fills in: [`CRM_CONTACT_FIELD`] (the CRM key of the member's lead),
//!   [`CRM_CAMPAIGN_FIELD`] (the CRM key of the program's campaign row) and
//!   [`PROGRAM_NAME_FIELD`].

use std::collections::BTreeMap;

use crate::config::StatusMapping;
#[cfg(test)]
use crate::marketo::programs::program_schema;
use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

pub use crate::mapping::activities::CRM_CONTACT_FIELD;

/// The Marketo object name of programs in mapping files.
pub const PROGRAM: &str = "program";
/// The Marketo object name of program members in mapping files.
pub const PROGRAM_MEMBER: &str = "program_member";
/// The synthetic member field holding the CRM key of the program's campaign row.
pub const CRM_CAMPAIGN_FIELD: &str = "crmCampaignId";
/// The synthetic member field holding the program's name.
pub const PROGRAM_NAME_FIELD: &str = "programName";
/// The member field holding the progression status.
pub const STATUS_FIELD: &str = "statusName";

/// Returns `schema` as the mapping compiler reads it: a program member schema gets the
/// synthetic fields ([`member_schema`]); any other is returned unchanged.
pub fn complete(schema: ObjectSchema) -> ObjectSchema {
    if schema.object == PROGRAM_MEMBER {
        member_schema(schema)
    } else {
        schema
    }
}

/// Returns the program member schema from its describe, with the synthetic fields added
/// (read-only) and `object` set to [`PROGRAM_MEMBER`].
pub fn member_schema(mut described: ObjectSchema) -> ObjectSchema {
    described.object = PROGRAM_MEMBER.into();
    for name in [CRM_CONTACT_FIELD, CRM_CAMPAIGN_FIELD, PROGRAM_NAME_FIELD] {
        if described.field(name).is_none() {
            let mut f = FieldDef::new(name, FieldType::Text { max_len: None });
            f.read_only = true;
            described.fields.push(f);
        }
    }
    described
}

/// The status map of one program: CRM status <-> Marketo status, from the mapping's
/// `[[statuses]]` entries that apply to it (the program's own entries over its channel's over
/// the entries with neither).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusMap {
    to_crm: BTreeMap<String, String>,
    to_marketo: BTreeMap<String, String>,
}

/// Why a status cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The status has no entry in the map that applies to the program.
    #[error("{side} status `{status}` has no entry in the status map of program `{program}`")]
    Unmapped {
        /// The side the status was read from.
        side: Side,
        /// The status.
        status: String,
        /// The program's name.
        program: String,
    },
}

impl StatusMap {
    /// Returns the map of a program from the mapping's entries: for each Marketo status (and
    /// each CRM status) the most specific entry wins (program, then channel, then neither).
    pub fn of(entries: &[StatusMapping], program: &str, channel: Option<&str>) -> StatusMap {
        let rank = |e: &StatusMapping| -> Option<u8> {
            match (&e.program, &e.channel) {
                (Some(p), _) if p == program => Some(2),
                (Some(_), _) => None,
                (None, Some(c)) if Some(c.as_str()) == channel => Some(1),
                (None, Some(_)) => None,
                (None, None) => Some(0),
            }
        };
        let mut applying: Vec<(u8, &StatusMapping)> = entries
            .iter()
            .filter_map(|e| rank(e).map(|r| (r, e)))
            .collect();
        // Least specific first, so that the more specific entries overwrite them.
        applying.sort_by_key(|(r, _)| *r);
        let mut map = StatusMap::default();
        for (_, e) in applying {
            map.to_crm.insert(e.marketo.clone(), e.crm.clone());
            map.to_marketo.insert(e.crm.clone(), e.marketo.clone());
        }
        map
    }

    /// Returns true when no entry applies (statuses then pass unchanged).
    pub fn is_empty(&self) -> bool {
        self.to_crm.is_empty()
    }

    /// Returns the status written on `to` for the status read from the other side.
    ///
    /// # Errors
    ///
    /// [`StatusError::Unmapped`] when the map has entries but none for this status.
    pub fn translate(&self, to: Side, status: &str, program: &str) -> Result<String, StatusError> {
        if self.is_empty() {
            return Ok(status.to_owned());
        }
        let map = match to {
            Side::Crm => &self.to_crm,
            Side::Marketo => &self.to_marketo,
        };
        map.get(status)
            .cloned()
            .ok_or_else(|| StatusError::Unmapped {
                side: to.other(),
                status: status.to_owned(),
                program: program.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        crm: &str,
        marketo: &str,
        channel: Option<&str>,
        program: Option<&str>,
    ) -> StatusMapping {
        StatusMapping {
            crm: crm.into(),
            marketo: marketo.into(),
            channel: channel.map(Into::into),
            program: program.map(Into::into),
        }
    }

    #[test]
    fn the_most_specific_entry_wins_and_unmapped_statuses_are_errors() {
        let entries = vec![
            entry("Sent", "Member", None, None),
            entry("Responded", "Attended", Some("Webinar"), None),
            entry("Came", "Attended", None, Some("Spring Webinar")),
        ];
        let spring = StatusMap::of(&entries, "Spring Webinar", Some("Webinar"));
        assert_eq!(
            spring.translate(Side::Crm, "Attended", "p").unwrap(),
            "Came"
        );
        assert_eq!(
            spring.translate(Side::Marketo, "Sent", "p").unwrap(),
            "Member"
        );
        let other = StatusMap::of(&entries, "Autumn", Some("Webinar"));
        assert_eq!(
            other.translate(Side::Crm, "Attended", "p").unwrap(),
            "Responded"
        );
        assert!(matches!(
            other.translate(Side::Marketo, "Bogus", "Autumn"),
            Err(StatusError::Unmapped {
                side: Side::Crm,
                ..
            })
        ));
        let none = StatusMap::of(&[], "X", None);
        assert_eq!(
            none.translate(Side::Crm, "Invited", "X").unwrap(),
            "Invited"
        );
    }

    #[test]
    fn member_schemas_carry_the_synthetic_fields() {
        let s = member_schema(program_schema());
        assert_eq!(s.object, PROGRAM_MEMBER);
        assert!(s.field(CRM_CAMPAIGN_FIELD).is_some_and(|f| f.read_only));
        assert!(s.field(CRM_CONTACT_FIELD).is_some());
    }
}
