//! The Marketo-side schema of static list membership (`marketo_object = "static_list"`), as the
//! mapping compiler reads it. Marketo has no describe for it: the schema is fixed.
//!
//! A record is one lead in one list, keyed `<listId>:<leadId>`. Its fields:
//! - [`MEMBER_FIELD`] (boolean, writable): true while the lead is in the list; false once it
//!   was removed. In the CRM it is the membership row's soft-delete flag (e.g. `is_member`).
//! - synthetic, read-only, filled in by the engine: [`CRM_CONTACT_FIELD`] (the CRM key of the
//!   lead's contact) and [`LIST_NAME_FIELD`] (the list's name, as in `[lists] names`).

use std::collections::BTreeSet;

use crate::config::{LoadedMapping, Problem, Segment, did_you_mean};
use crate::mapping::SchemaSet;
use crate::model::{FieldDef, FieldType, ObjectSchema, Side};

pub use crate::mapping::activities::CRM_CONTACT_FIELD;

/// The Marketo object name of static list membership in mapping files.
pub const STATIC_LIST: &str = "static_list";
/// The synthetic field holding the list's name.
pub const LIST_NAME_FIELD: &str = "listName";
/// The field that is true while the lead is a member.
pub const MEMBER_FIELD: &str = "member";

/// The Marketo-side pseudo-object holding the names of Marketo's static lists (read by
/// `validate`, never by a cycle): one field per list, named after it.
pub const LIST_NAMES: &str = "static_list_names";

/// The Marketo-side pseudo-object holding the marketing folders the static list mappings create
/// lists in (`[lists] folder`, read by `validate`, never by a cycle): one field per folder found.
pub const LIST_FOLDERS: &str = "static_list_folders";

/// Returns the names of the marketing folders found as the [`LIST_FOLDERS`] pseudo-schema.
pub fn list_folders_schema<'a>(names: impl IntoIterator<Item = &'a str>) -> ObjectSchema {
    ObjectSchema {
        object: LIST_FOLDERS.into(),
        ..list_names_schema(names)
    }
}

/// Returns the names of Marketo's static lists as the [`LIST_NAMES`] pseudo-schema.
pub fn list_names_schema<'a>(names: impl IntoIterator<Item = &'a str>) -> ObjectSchema {
    let fields = names
        .into_iter()
        .map(|n| {
            let mut f = FieldDef::new(n, FieldType::Text { max_len: None });
            f.read_only = true;
            f
        })
        .collect();
    ObjectSchema {
        side: Side::Marketo,
        object: LIST_NAMES.into(),
        id_field: None,
        dedupe_fields: Vec::new(),
        fields,
    }
}

/// Returns the problems of a static list mapping's list names against Marketo's lists (when
/// `schemas` holds them, see [`LIST_NAMES`]): each name must be a list's exact name, unless the
/// mapping creates missing lists (`create_missing`): then a missing name is a warning saying it
/// will be created, and the folder must exist (when `schemas` holds the folders found, see
/// [`LIST_FOLDERS`]).
pub fn check_list_names(m: &LoadedMapping, schemas: &SchemaSet) -> Vec<Problem> {
    let Some(lists) = &m.file.lists else {
        return Vec::new();
    };
    let folder = lists
        .folder
        .as_deref()
        .map(str::trim)
        .filter(|f| lists.create_missing && !f.is_empty());
    let mut out = Vec::new();
    if let (Some(folder), Some(found)) = (folder, schemas.get(Side::Marketo, LIST_FOLDERS))
        && found.field(folder).is_none()
    {
        let path = [Segment::Key("lists".into()), Segment::Key("folder".into())];
        out.push(m.problem(
            true,
            &path,
            format!("Marketo has no marketing folder named `{folder}` to create lists in"),
        ));
    }
    let Some(known) = schemas.get(Side::Marketo, LIST_NAMES) else {
        return out;
    };
    let names: BTreeSet<&str> = known.fields.iter().map(|f| f.name.as_str()).collect();
    for (i, name) in lists.names.iter().enumerate() {
        if names.contains(name.as_str()) {
            continue;
        }
        let path = vec![
            Segment::Key("lists".into()),
            Segment::Key("names".into()),
            Segment::Index(i),
        ];
        let problem = match folder {
            Some(folder) => m.problem(
                false,
                &path,
                format!(
                    "Marketo has no static list named `{name}`: it will be created in folder \
                     `{folder}` from the CRM rows of that list name (lists.create_missing)"
                ),
            ),
            None => m.problem(
                true,
                &path,
                format!(
                    "Marketo has no static list named `{name}`{}",
                    did_you_mean(name, names.iter().copied())
                ),
            ),
        };
        out.push(problem);
    }
    out
}

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

    #[test]
    fn list_names_are_checked_against_marketo() {
        let text = "marketo_object = \"static_list\"\ncrm_object = \"list_members\"\n\
            [lists]\nnames = [\"Newsletter\", \"Newsleter\"]\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n";
        let path = std::path::Path::new("static_lists.toml");
        let m = crate::config::parse_mapping("static_lists", path, text).unwrap();
        let mut set = SchemaSet::default();
        assert!(
            check_list_names(&m, &set).is_empty(),
            "nothing read, nothing checked"
        );
        set.insert(list_names_schema(["Newsletter", "Event Invitees"]));
        let problems: Vec<String> = check_list_names(&m, &set)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("`Newsleter`"), "{}", problems[0]);
        assert!(problems[0].contains("static_lists.toml"), "{}", problems[0]);
        assert!(problems[0].contains("lists.names[1]"), "{}", problems[0]);
    }

    #[test]
    fn missing_lists_are_reported_as_created_and_the_folder_is_checked() {
        let text = "marketo_object = \"static_list\"\ncrm_object = \"list_members\"\n\
            [lists]\nnames = [\"Newsletter\", \"VIP\"]\ncreate_missing = true\n\
            folder = \"Lists\"\n[keys]\ncrm_marketo_id = \"marketo_id\"\n";
        let path = std::path::Path::new("static_lists.toml");
        let m = crate::config::parse_mapping("static_lists", path, text).unwrap();
        let mut set = SchemaSet::default();
        set.insert(list_names_schema(["Newsletter"]));
        set.insert(list_folders_schema(["Lists"]));
        let problems = check_list_names(&m, &set);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(!problems[0].is_error());
        let text = problems[0].to_string();
        assert!(
            text.contains("`VIP`") && text.contains("created in folder `Lists`"),
            "{text}"
        );

        let mut set = SchemaSet::default();
        set.insert(list_names_schema(["Newsletter", "VIP"]));
        set.insert(list_folders_schema(["Marketing Activities"]));
        let problems = check_list_names(&m, &set);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].is_error());
        let text = problems[0].to_string();
        assert!(text.contains("no marketing folder named `Lists`"), "{text}");
        assert!(
            text.contains("static_lists.toml") && text.contains("lists.folder"),
            "{text}"
        );
    }

    #[test]
    fn creating_lists_needs_a_folder() {
        let text = "marketo_object = \"static_list\"\ncrm_object = \"list_members\"\n\
            [lists]\nnames = [\"VIP\"]\ncreate_missing = true\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n";
        let path = std::path::Path::new("static_lists.toml");
        let m = crate::config::parse_mapping("static_lists", path, text).unwrap();
        let problems: Vec<String> = crate::config::check_mapping(&m)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("lists.folder") && p.contains("create_missing")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_static_list_file_names_its_lists() {
        let text = "marketo_object = \"static_list\"\ncrm_object = \"list_members\"\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n";
        let path = std::path::Path::new("static_lists.toml");
        let m = crate::config::parse_mapping("static_lists", path, text).unwrap();
        let problems: Vec<String> = crate::config::check_mapping(&m)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.iter().any(|p| p.contains("names its lists")),
            "{problems:#?}"
        );
    }
}
