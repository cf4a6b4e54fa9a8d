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
use std::collections::BTreeSet;

use crate::config::{LoadedMapping, Problem, Segment, StatusMapping, did_you_mean};
use crate::mapping::SchemaSet;
use crate::marketo::programs::Channel;
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

/// The Marketo-side pseudo-object holding every program channel's statuses (read by
/// `validate`, never by a cycle): one field per (channel, status), named
/// `<channel>`[`CHANNEL_SEPARATOR`]`<status>`.
pub const CHANNELS: &str = "program_channels";
/// Separates the channel from the status in a field name of [`CHANNELS`].
pub const CHANNEL_SEPARATOR: char = '\t';

/// Returns the channels as the [`CHANNELS`] pseudo-schema.
pub fn channels_schema(channels: &[Channel]) -> ObjectSchema {
    let mut fields = Vec::new();
    for c in channels {
        for status in c.status_names() {
            let mut f = FieldDef::new(
                format!("{}{CHANNEL_SEPARATOR}{status}", c.name),
                FieldType::Text { max_len: None },
            );
            f.read_only = true;
            fields.push(f);
        }
    }
    ObjectSchema {
        side: Side::Marketo,
        object: CHANNELS.into(),
        id_field: None,
        dedupe_fields: Vec::new(),
        fields,
    }
}

/// Returns the problems of a program member mapping's status map against the channels'
/// real statuses (when `schemas` holds them, see [`CHANNELS`]): an entry for a channel names
/// one of that channel's statuses and an existing channel; any other entry names a status of
/// some channel. Marketo refuses a status its channel lacks, the native sync's most common
/// setup error.
pub fn check_statuses(m: &LoadedMapping, schemas: &SchemaSet) -> Vec<Problem> {
    let Some(known) = schemas.get(Side::Marketo, CHANNELS) else {
        return Vec::new();
    };
    let pairs: Vec<(&str, &str)> = known
        .fields
        .iter()
        .filter_map(|f| f.name.split_once(CHANNEL_SEPARATOR))
        .collect();
    let mut out = Vec::new();
    for (i, e) in m.file.statuses.iter().enumerate() {
        let path = vec![
            Segment::Key("statuses".into()),
            Segment::Index(i),
            Segment::Key("marketo".into()),
        ];
        match &e.channel {
            Some(channel) if !pairs.iter().any(|(c, _)| c == channel) => {
                let names: BTreeSet<&str> = pairs.iter().map(|(c, _)| *c).collect();
                out.push(m.problem(
                    true,
                    &path,
                    format!(
                        "Marketo has no program channel `{channel}`{}",
                        did_you_mean(channel, names.iter().copied())
                    ),
                ));
            }
            Some(channel) if !pairs.contains(&(channel.as_str(), e.marketo.as_str())) => {
                let statuses: Vec<&str> = pairs
                    .iter()
                    .filter(|(c, _)| c == channel)
                    .map(|(_, s)| *s)
                    .collect();
                out.push(m.problem(
                    true,
                    &path,
                    format!(
                        "channel `{channel}` has no status `{}` (its statuses: {}); Marketo would \
                         refuse it",
                        e.marketo,
                        statuses.join(", ")
                    ),
                ));
            }
            Some(_) => {}
            None if !pairs.iter().any(|(_, s)| *s == e.marketo) => {
                let all: BTreeSet<&str> = pairs.iter().map(|(_, s)| *s).collect();
                out.push(m.problem(
                    true,
                    &path,
                    format!(
                        "no program channel has the status `{}`{}; Marketo would refuse it",
                        e.marketo,
                        did_you_mean(&e.marketo, all.iter().copied())
                    ),
                ));
            }
            None => {}
        }
    }
    out
}

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
    fn the_status_map_is_checked_against_the_channels_statuses() {
        let text = "marketo_object = \"program_member\"\ncrm_object = \"campaign_members\"\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n\
            [[statuses]]\ncrm = \"Came\"\nmarketo = \"Attended\"\nchannel = \"Webinar\"\n\
            [[statuses]]\ncrm = \"Opened\"\nmarketo = \"Opened\"\nchannel = \"Webinar\"\n\
            [[statuses]]\ncrm = \"X\"\nmarketo = \"Member\"\nchannel = \"Webinr\"\n\
            [[statuses]]\ncrm = \"Y\"\nmarketo = \"Atended\"\n";
        let path = std::path::Path::new("program_members.toml");
        let m = crate::config::parse_mapping("program_members", path, text).unwrap();
        let channels: Vec<Channel> = serde_json::from_value(serde_json::json!([
            {"name": "Webinar", "progressionStatuses": [{"name": "Member"}, {"name": "Attended"}]},
            {"name": "Nurture", "progressionStatuses": [{"name": "Member"}]}
        ]))
        .unwrap();
        let mut set = SchemaSet::default();
        assert!(
            check_statuses(&m, &set).is_empty(),
            "no channels read, nothing checked"
        );
        set.insert(channels_schema(&channels));
        let problems: Vec<String> = check_statuses(&m, &set)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("channel `Webinar` has no status `Opened`"));
        assert!(
            problems[1].contains("no program channel `Webinr`") && problems[1].contains("Webinar")
        );
        assert!(problems[2].contains("`Atended`") && problems[2].contains("Attended"));
        assert!(
            problems[0].contains("statuses[1].marketo"),
            "{}",
            problems[0]
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
