//! Mapping files (`config/mappings/<object>.toml`): which Marketo object maps to which CRM
//! object, the key fields, match fields, the conflict policy and the field list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::problem::{
    Problem, Segment, did_you_mean, dotted, line_of_path, parse_all, parse_lenient, span_of_path,
};
use super::settings::Settings;
use crate::mapping::MarketoKind;
use crate::model::Value;

/// How a conflict (a field changed on both sides since the last agreement) is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The CRM's value wins.
    CrmWins,
    /// Marketo's value wins.
    MarketoWins,
    /// The side whose record changed last wins.
    #[default]
    NewestWins,
}

/// Which way a field flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Both ways.
    #[default]
    Both,
    /// Read from Marketo, written to the CRM only.
    ToCrm,
    /// Read from the CRM, written to Marketo only.
    ToMarketo,
}

impl Direction {
    /// Returns true when values are read from `side` for this field.
    pub fn reads_from(self, side: crate::model::Side) -> bool {
        use crate::model::Side;
        matches!(
            (self, side),
            (Direction::Both, _)
                | (Direction::ToCrm, Side::Marketo)
                | (Direction::ToMarketo, Side::Crm)
        )
    }

    /// Returns true when values are written to `side` for this field.
    pub fn writes_to(self, side: crate::model::Side) -> bool {
        self.reads_from(side.other())
    }
}

/// One value transform step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Strips leading and trailing whitespace.
    Trim,
    /// Lowercases.
    Lowercase,
    /// Uppercases.
    Uppercase,
    /// Collapses runs of whitespace into one space.
    CollapseWhitespace,
    /// `new lead` → `NewLead`.
    PascalCase,
    /// `new lead` → `newLead`.
    CamelCase,
    /// `NewLead` → `new_lead`.
    SnakeCase,
    /// `NewLead` → `new-lead`.
    KebabCase,
    /// `new lead` → `New Lead`.
    TitleCase,
}

/// The key fields that link a record pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The Marketo field holding the CRM key, used as `lookupField` (leads) or dedupe field.
    pub marketo_crm_key: Option<String>,
    /// The CRM field holding the Marketo id.
    pub crm_marketo_id: Option<String>,
    /// The boolean CRM column the `flag` deletion policy sets on a record whose Marketo lead was
    /// deleted or merged away (lead mappings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_deleted_flag: Option<String>,
    /// The CRM object of unconverted leads (lead mappings whose CRM object is contacts): its
    /// records linked to a Marketo lead (by their `crm_marketo_id` column) are watched for
    /// conversion, and a Marketo lead linked to one gets no contact of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_lead_object: Option<String>,
    /// The column of `crm_lead_object` naming the contact a lead was converted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_lead_converted: Option<String>,
    /// The column of the mapping's CRM object holding the CRM account id, which is the
    /// Marketo company's `externalCompanyId` (a converted lead is linked to that company).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_company_ref: Option<String>,
}

/// One mapped field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// The canonical name (default: the Marketo name, else the CRM name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Marketo REST field name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketo: Option<String>,
    /// The CRM field name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm: Option<String>,
    /// Which way the field flows.
    #[serde(default)]
    pub direction: Direction,
    /// Steps applied to values read from either side (they define the canonical form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<Transform>,
    /// Steps applied when writing to the CRM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crm_transform: Vec<Transform>,
    /// Steps applied when writing to Marketo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marketo_transform: Vec<Transform>,
    /// Picklist value map: canonical (Marketo) value → CRM value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// The value used when the source has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A constant written to the target (the source field is not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    /// The conflict policy of this field (default: the file's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Opts into shortening: a text value longer than the receiving field's declared length is
    /// cut to that length instead of being refused to the error ledger. The cut value read back
    /// from that side is not a change, so it never flows back over the long one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shorten: bool,
}

impl FieldMapping {
    /// Returns the canonical name.
    pub fn canonical_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.marketo.as_deref())
            .or(self.crm.as_deref())
            .unwrap_or("")
    }

    /// Returns the field name on a side.
    pub fn side_name(&self, side: crate::model::Side) -> Option<&str> {
        match side {
            crate::model::Side::Marketo => self.marketo.as_deref(),
            crate::model::Side::Crm => self.crm.as_deref(),
        }
    }
}

/// One activity type to sync (activities are read from Marketo and written to the CRM only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityMapping {
    /// The Marketo activity type id.
    pub type_id: u32,
    /// The activity type's name, checked against Marketo's list when schemas are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The CRM object these activities go to (default: the file's `crm_object`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_object: Option<String>,
    /// Standard fields and attributes → CRM fields (`direction` must be `to_crm`).
    #[serde(default)]
    pub fields: Vec<FieldMapping>,
}

/// A CRM table of events written to Marketo as one custom activity type (a file with
/// `marketo_object = "custom_activity"`). The `[[fields]]` map CRM columns to the type's
/// attributes by API name (`direction = "to_marketo"`); one of them must be the type's primary
/// attribute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomActivityMapping {
    /// The custom activity type's API name (e.g. `chatConversation_c`); or give `type_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_name: Option<String>,
    /// The custom activity type's id (Marketo numbers them from 100000); or give `api_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_id: Option<i64>,
    /// The CRM column holding when the event happened (the activity's `activityDate`).
    pub activity_date: String,
    /// The CRM column holding the CRM contact key: the activity goes to the Marketo lead linked
    /// to that contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_crm_key: Option<String>,
    /// The CRM column holding an email address: the activity goes to the Marketo lead with that
    /// email when `lead_crm_key` is not set or names no linked contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_email: Option<String>,
    /// The attribute (API name) of the type into which the CRM event id is written. It is what
    /// makes the write exactly-once: after a crash between the write and its commit, the
    /// activities Marketo holds are matched on it, and only the missing ones are written.
    pub event_id_attribute: String,
}

/// The Marketo name of the custom-activity pseudo-object.
pub const CUSTOM_ACTIVITY: &str = "custom_activity";

/// Which programs sync (programs mappings): a program syncs when it matches any listed name,
/// tag or folder; with nothing listed, every program syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSelection {
    /// Program names, exactly as in Marketo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Program tags as `"Type: Value"` (e.g. `"Region: EMEA"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Folders by name or id (the folder directly holding the program).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
}

impl ProgramSelection {
    /// Returns true when nothing is listed (every program syncs).
    pub fn is_all(&self) -> bool {
        self.names.is_empty() && self.tags.is_empty() && self.folders.is_empty()
    }
}

/// One entry of a program member status map: a CRM status and the Marketo status it stands
/// for, for one program, for every program of one channel, or (neither) for every program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusMapping {
    /// The CRM status.
    pub crm: String,
    /// The Marketo progression status (a status of the program's channel).
    pub marketo: String,
    /// The channel the entry applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The program (by name) the entry applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
}

/// One mapping file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The Marketo object: `lead`, `company`, `opportunity`, `opportunity_role`, `salesperson` (the names of [`crate::marketo::describe::StandardObject::name`]),
    /// a custom object's API name, or `activities`.
    pub marketo_object: String,
    /// The CRM object (as the CRM adapter names it).
    pub crm_object: String,
    /// The default conflict policy.
    #[serde(default)]
    pub policy: Policy,
    /// The key fields.
    #[serde(default)]
    pub keys: Keys,
    /// Canonical names of the fields used to match new records (default `email` for leads).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_fields: Option<Vec<String>>,
    /// The fields.
    #[serde(default)]
    pub fields: Vec<FieldMapping>,
    /// Activity types (only in the `activities` file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activities: Vec<ActivityMapping>,
    /// Custom objects only: the name of the Marketo activity type logged when a record is added
    /// to a person, through which records added in Marketo are found and copied to the CRM
    /// (when a field flows to the CRM). Default: "Add to <display name>" or "Added to <display
    /// name>", looked up in Marketo's activity types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_activity: Option<String>,
    /// Custom activities only (`marketo_object = "custom_activity"`): the type, the event's
    /// date, how its lead is found, and the attribute holding the event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_activity: Option<CustomActivityMapping>,
    /// Programs only: which programs sync (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs: Option<ProgramSelection>,
    /// Program members only: the status map (CRM status <-> Marketo status). Empty: statuses
    /// pass unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<StatusMapping>,
    /// Static list membership only (`marketo_object = "static_list"`): which lists sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<ListSelection>,
}

/// Which static lists sync (static list mappings), by name exactly as in Marketo; each name is
/// resolved to its list id once (`staticList/byName.json`) and remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSelection {
    /// List names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Creates a list Marketo does not have (instead of failing the step): the CRM rows of that
    /// list name (a CRM segment) become a new static list in [`ListSelection::folder`], and
    /// their contacts' leads its members. Created once: looked up by name before it is created,
    /// and its id remembered in the store.
    #[serde(default)]
    pub create_missing: bool,
    /// The name of the Marketo marketing folder new lists are created in (`create_missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// The Marketo name of the activities pseudo-object.
pub const ACTIVITIES: &str = "activities";

impl MappingFile {
    /// Returns true for the activities file.
    pub fn is_activities(&self) -> bool {
        self.kind() == MarketoKind::Activities
    }

    /// Returns the kind of Marketo object the file maps ([`MarketoKind::of`]).
    pub fn kind(&self) -> MarketoKind {
        MarketoKind::of(&self.marketo_object)
    }

    /// Returns true for a custom-activity file (CRM events -> a Marketo custom activity type).
    pub fn is_custom_activity(&self) -> bool {
        self.kind() == MarketoKind::CustomActivity
    }

    /// Returns the name of the Marketo schema a file compiles against: the object itself, or
    /// `custom_activity:<apiName>` (`custom_activity:<type id>` when only the id is given) for
    /// a custom-activity file.
    pub fn marketo_schema_object(&self) -> String {
        match (&self.custom_activity, self.is_custom_activity()) {
            (Some(c), true) => custom_activity_schema_object(c),
            _ => self.marketo_object.clone(),
        }
    }

    /// Returns true for a program, program member or static list file (a fixed Marketo
    /// schema keyed by the engine, with no `keys.marketo_crm_key`).
    pub fn is_program_kind(&self) -> bool {
        self.kind().keyed_by_marketo()
    }

    /// Returns true for a static list membership file.
    pub fn is_static_list(&self) -> bool {
        self.kind() == MarketoKind::StaticList
    }

    /// Returns true when the mapping writes nothing to the CRM (every field is `to_marketo`): the
    /// sync then never writes the Marketo id into the CRM, so `keys.crm_marketo_id` may be left
    /// out (read-only CRM objects such as HubSpot owners and associations have no field for it).
    pub fn crm_read_only(&self) -> bool {
        !self.is_activities()
            && !self.is_custom_activity()
            && !self.fields.is_empty()
            && self
                .fields
                .iter()
                .all(|f| f.direction == Direction::ToMarketo)
    }

    /// Returns the match fields: explicit, else `email` for leads, else none.
    pub fn effective_match_fields(&self) -> Vec<String> {
        match &self.match_fields {
            Some(m) => m.clone(),
            None => self
                .kind()
                .default_match_fields()
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
        }
    }
}

/// Returns the Marketo schema name of a custom activity type: `custom_activity:<apiName>`, or
/// `custom_activity:<type id>` when only the id is given.
pub fn custom_activity_schema_object(c: &CustomActivityMapping) -> String {
    match (&c.api_name, c.type_id) {
        (Some(api), _) => format!("{CUSTOM_ACTIVITY}:{api}"),
        (None, Some(id)) => format!("{CUSTOM_ACTIVITY}:{id}"),
        (None, None) => CUSTOM_ACTIVITY.to_owned(),
    }
}

/// A mapping file as loaded, with its text kept to place problems on lines.
#[derive(Debug, Clone)]
pub struct LoadedMapping {
    /// The object name (`sync.objects` entry, the file stem).
    pub object: String,
    /// The file path.
    pub path: PathBuf,
    /// The file text.
    pub text: String,
    /// The parsed file.
    pub file: MappingFile,
}

impl LoadedMapping {
    /// Returns the file name for messages.
    pub fn file_name(&self) -> String {
        self.path.display().to_string()
    }

    /// Returns the line of a key path such as `[Key("fields"), Index(2), Key("crm")]`.
    pub fn line(&self, path: &[Segment]) -> Option<usize> {
        line_of_path(&self.text, path)
    }

    /// Returns a problem placed at `path`.
    pub fn problem(
        &self,
        severity_error: bool,
        path: &[Segment],
        reason: impl Into<String>,
    ) -> Problem {
        let p = if severity_error {
            Problem::error(self.file_name(), dotted(path), reason)
        } else {
            Problem::warning(self.file_name(), dotted(path), reason)
        };
        p.at(&self.text, span_of_path(&self.text, path))
    }
}

/// Returns a key path from a field index and key.
pub fn field_path(index: usize, key: &str) -> Vec<Segment> {
    let mut p = vec![Segment::Key("fields".into()), Segment::Index(index)];
    if !key.is_empty() {
        p.push(Segment::Key(key.into()));
    }
    p
}

fn key_path(key: &str) -> Vec<Segment> {
    key.split('.').map(|s| Segment::Key(s.to_owned())).collect()
}

/// Parses one mapping file's text.
///
/// # Errors
///
/// Returns every problem (file, key, line, reason) when the text is not a valid mapping file.
pub fn parse_mapping(object: &str, path: &Path, text: &str) -> Result<LoadedMapping, Vec<Problem>> {
    match parse_all::<MappingFile>(&path.display().to_string(), text) {
        (Some(file), _) => Ok(LoadedMapping {
            object: object.to_owned(),
            path: path.to_path_buf(),
            text: text.to_owned(),
            file,
        }),
        (None, problems) => Err(problems),
    }
}

/// Parses one mapping file's text leniently: every unknown key and wrongly typed value is
/// reported, and the rest of the file is returned when it is still readable without them (so
/// that its other checks still run).
pub fn parse_mapping_lenient(
    object: &str,
    path: &Path,
    text: &str,
) -> (Option<LoadedMapping>, Vec<Problem>) {
    let parsed = parse_lenient::<MappingFile>(&path.display().to_string(), text);
    let loaded = parsed.value.map(|file| LoadedMapping {
        object: object.to_owned(),
        path: path.to_path_buf(),
        text: text.to_owned(),
        file,
    });
    (loaded, parsed.problems)
}

/// Reads the mapping file of every object in `sync.objects` from `<dir>/<sync.mappings_dir>`,
/// checks each one on its own and across files, and returns those that parsed with every
/// problem found.
pub fn load_mappings(dir: &Path, settings: &Settings) -> (Vec<LoadedMapping>, Vec<Problem>) {
    let mappings_dir = dir.join(&settings.sync.mappings_dir);
    let mut problems = Vec::new();
    let mut loaded = Vec::new();
    let available: Vec<String> = std::fs::read_dir(&mappings_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().is_some_and(|x| x == "toml"))
                        .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    for object in &settings.sync.objects {
        let path = mappings_dir.join(format!("{object}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(error) => {
                problems.push(Problem::error(
                    path.display().to_string(),
                    "",
                    format!(
                        "cannot read the mapping file of `{object}` (listed in sync.objects): {error}{}",
                        did_you_mean(object, available.iter().map(String::as_str))
                    ),
                ));
                continue;
            }
        };
        let (m, parse_problems) = parse_mapping_lenient(object, &path, &text);
        problems.extend(parse_problems);
        if let Some(m) = m {
            problems.extend(check_mapping(&m));
            loaded.push(m);
        }
    }
    problems.extend(check_across(&loaded));
    // Files not listed in sync.objects are checked too, but only warned about: they are not synced.
    let mut unlisted: Vec<&String> = available
        .iter()
        .filter(|name| !settings.sync.objects.contains(name))
        .collect();
    unlisted.sort();
    for object in unlisted {
        let path = mappings_dir.join(format!("{object}.toml"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (m, mut found) = parse_mapping_lenient(object, &path, &text);
        if let Some(m) = m {
            found.extend(check_mapping(&m));
        }
        for p in &mut found {
            p.severity = super::problem::Severity::Warning;
            p.reason = format!("{} (file not in sync.objects, so not synced)", p.reason);
        }
        problems.extend(found);
    }
    (loaded, problems)
}

/// Returns the problems of one mapping file that need no schema.
pub fn check_mapping(m: &LoadedMapping) -> Vec<Problem> {
    let mut out = Vec::new();
    let f = &m.file;
    if f.marketo_object.trim().is_empty() {
        out.push(m.problem(true, &key_path("marketo_object"), "must not be empty"));
    }
    if f.crm_object.trim().is_empty() {
        out.push(m.problem(true, &key_path("crm_object"), "must not be empty"));
    }
    let standard = [
        "lead",
        "company",
        "opportunity",
        "opportunity_role",
        "salesperson",
        ACTIVITIES,
        CUSTOM_ACTIVITY,
        crate::mapping::programs::PROGRAM,
        crate::mapping::programs::PROGRAM_MEMBER,
        crate::mapping::lists::STATIC_LIST,
    ];
    let name = f.marketo_object.as_str();
    if !name.is_empty() && !standard.contains(&name) && !name.ends_with("_c") {
        out.push(m.problem(
            false,
            &key_path("marketo_object"),
            format!(
                "`{name}` is neither a standard Marketo object ({}) nor a custom object API name \
                 (those end in `_c`){}",
                standard.join(", "),
                did_you_mean(name, standard.iter().copied())
            ),
        ));
    }
    if f.is_activities() {
        check_activities(m, &mut out);
        return out;
    }
    if f.is_custom_activity() {
        check_custom_activity(m, &mut out);
        return out;
    }
    if f.custom_activity.is_some() {
        out.push(m.problem(
            true,
            &key_path("custom_activity"),
            "a [custom_activity] table belongs in a file with marketo_object = \"custom_activity\"",
        ));
    }
    if !f.activities.is_empty() {
        out.push(m.problem(
            true,
            &key_path("activities"),
            "activity types belong in a file with marketo_object = \"activities\"",
        ));
    }
    if let Some(added) = &f.added_activity {
        if standard.contains(&name) {
            out.push(m.problem(
                true,
                &key_path("added_activity"),
                format!(
                    "only custom objects have an added activity; `{name}` is a standard object"
                ),
            ));
        } else if added.trim().is_empty() {
            out.push(m.problem(
                true,
                &key_path("added_activity"),
                "must name a Marketo activity type (e.g. \"Add to Car\"), or be left out",
            ));
        }
    }
    check_program_parts(m, &mut out);
    if f.is_program_kind() {
        check_program_fields(m, &mut out);
    } else if f.keys.marketo_crm_key.as_deref().is_none_or(str::is_empty) {
        out.push(m.problem(
            true,
            &key_path("keys"),
            "required key `keys.marketo_crm_key` is missing (the Marketo field that holds the CRM key)",
        ));
    }
    if f.keys.crm_marketo_id.as_deref().is_none_or(str::is_empty)
        && !f.crm_read_only()
        && !f.is_program_kind()
    {
        out.push(m.problem(
            true,
            &key_path("keys"),
            "required key `keys.crm_marketo_id` is missing (the CRM field that holds the Marketo id; \
             it may be left out only when every field is `direction = \"to_marketo\"`)",
        ));
    }
    check_fields(m, &f.fields, &[], &mut out);
    let names: BTreeSet<&str> = f.fields.iter().map(FieldMapping::canonical_name).collect();
    for (i, wanted) in f.effective_match_fields().iter().enumerate() {
        if !names.contains(wanted.as_str()) {
            let path = if f.match_fields.is_some() {
                vec![Segment::Key("match".into()), Segment::Index(i)]
            } else {
                key_path("match")
            };
            out.push(m.problem(
                true,
                &path,
                format!(
                    "match field `{wanted}` is not a mapped field{}",
                    did_you_mean(wanted, names.iter().copied())
                ),
            ));
        }
    }
    out
}

/// `programs` belongs to program mappings, `statuses` to program member mappings.
fn check_program_parts(m: &LoadedMapping, out: &mut Vec<Problem>) {
    use crate::mapping::programs::{PROGRAM, PROGRAM_MEMBER};
    let f = &m.file;
    if f.programs.is_some() && f.kind() != MarketoKind::Program {
        out.push(m.problem(
            true,
            &key_path("programs"),
            format!("the program selection belongs in a file with marketo_object = \"{PROGRAM}\""),
        ));
    }
    if !f.statuses.is_empty() && f.kind() != MarketoKind::ProgramMember {
        out.push(m.problem(
            true,
            &key_path("statuses"),
            format!("a status map belongs in a file with marketo_object = \"{PROGRAM_MEMBER}\""),
        ));
    }
    check_list_parts(m, out);
    let mut seen = BTreeSet::new();
    for (i, e) in f.statuses.iter().enumerate() {
        let path = vec![Segment::Key("statuses".into()), Segment::Index(i)];
        if e.crm.trim().is_empty() || e.marketo.trim().is_empty() {
            out.push(m.problem(true, &path, "needs both `crm` and `marketo` statuses"));
        }
        if e.channel.is_some() && e.program.is_some() {
            out.push(m.problem(true, &path, "names a channel or a program, not both"));
        }
        let scope = (e.channel.clone(), e.program.clone());
        if !seen.insert((scope.clone(), "crm", e.crm.clone()))
            || !seen.insert((scope, "marketo", e.marketo.clone()))
        {
            out.push(m.problem(
                true,
                &path,
                format!(
                    "status `{}` / `{}` is mapped twice for the same programs (a status must map \
                     one way back)",
                    e.crm, e.marketo
                ),
            ));
        }
    }
}

/// Program and program member mappings: keyed by the Marketo id in the CRM
/// (`keys.crm_marketo_id`); every field flows to the CRM, except a member's `statusName`,
/// which may flow both ways.
/// `lists` belongs to static list mappings, which need at least one list name.
fn check_list_parts(m: &LoadedMapping, out: &mut Vec<Problem>) {
    use crate::mapping::lists::STATIC_LIST;
    let f = &m.file;
    if f.lists.is_some() && !f.is_static_list() {
        out.push(m.problem(
            true,
            &key_path("lists"),
            format!("the list selection belongs in a file with marketo_object = \"{STATIC_LIST}\""),
        ));
    }
    if f.is_static_list()
        && f.lists
            .as_ref()
            .is_none_or(|l| l.names.iter().all(|n| n.trim().is_empty()))
    {
        out.push(m.problem(
            true,
            &key_path("lists"),
            "a static list mapping names its lists: `[lists] names = [\"Newsletter\"]`",
        ));
    }
    let Some(lists) = f.lists.as_ref() else {
        return;
    };
    let folder_path = [Segment::Key("lists".into()), Segment::Key("folder".into())];
    match (lists.create_missing, lists.folder.as_deref().map(str::trim)) {
        (true, None | Some("")) => out.push(m.problem(
            true,
            &folder_path,
            "`lists.create_missing = true` needs the Marketo folder new lists are created in: \
             `folder = \"Marketing Activities\"`",
        )),
        (false, Some(_)) => out.push(m.problem(
            false,
            &folder_path,
            "`lists.folder` is only used with `create_missing = true`; no list is created",
        )),
        _ => {}
    }
}

fn check_program_fields(m: &LoadedMapping, out: &mut Vec<Problem>) {
    use crate::mapping::lists::MEMBER_FIELD;
    use crate::mapping::programs::STATUS_FIELD;
    let f = &m.file;
    if f.keys.crm_marketo_id.as_deref().is_none_or(str::is_empty) {
        out.push(m.problem(
            true,
            &key_path("keys"),
            "required key `keys.crm_marketo_id` is missing (the CRM column holding the Marketo \
             key: the program id, `programId:leadId` for members, `listId:leadId` for list \
             members)",
        ));
    }
    for (i, field) in f.fields.iter().enumerate() {
        let status = field.marketo.as_deref() == Some(STATUS_FIELD)
            || (f.is_static_list() && field.marketo.as_deref() == Some(MEMBER_FIELD));
        if field.direction != Direction::ToCrm && !status {
            let path = vec![
                Segment::Key("fields".into()),
                Segment::Index(i),
                Segment::Key("direction".into()),
            ];
            let message = if f.is_static_list() {
                "list member data flows to the CRM only: use direction = \"to_crm\" (only \
                 `member` can flow both ways)"
            } else {
                "program data flows to the CRM only: use direction = \"to_crm\" (only a \
                 member's statusName can flow both ways)"
            };
            out.push(m.problem(true, &path, message));
        }
    }
}

fn check_activities(m: &LoadedMapping, out: &mut Vec<Problem>) {
    let mut ids = BTreeSet::new();
    for (i, a) in m.file.activities.iter().enumerate() {
        let base = vec![Segment::Key("activities".into()), Segment::Index(i)];
        if a.type_id == 0 {
            let mut p = base.clone();
            p.push(Segment::Key("type_id".into()));
            out.push(m.problem(true, &p, "must be a Marketo activity type id (1 or more)"));
        }
        if !ids.insert(a.type_id) {
            let mut p = base.clone();
            p.push(Segment::Key("type_id".into()));
            out.push(m.problem(
                true,
                &p,
                format!("activity type {} is listed twice", a.type_id),
            ));
        }
        if a.type_id == 37 {
            let mut p = base.clone();
            p.push(Segment::Key("type_id".into()));
            out.push(m.problem(
                true,
                &p,
                "Delete Lead (37) is not in activity exports; deletions follow `sync.lead_deletes`",
            ));
        }
        for (j, field) in a.fields.iter().enumerate() {
            if field.direction != Direction::ToCrm {
                let mut p = base.clone();
                p.extend([
                    Segment::Key("fields".into()),
                    Segment::Index(j),
                    Segment::Key("direction".into()),
                ]);
                out.push(m.problem(
                    true,
                    &p,
                    "activities flow to the CRM only: use direction = \"to_crm\"",
                ));
            }
        }
        check_fields(m, &a.fields, &base, out);
    }
    if m.file.activities.is_empty() {
        out.push(m.problem(true, &key_path("activities"), "lists no activity type"));
    }
}

/// Most secondary attributes of one custom activity type (Marketo's limit).
pub const MAX_CUSTOM_ACTIVITY_ATTRIBUTES: usize = 20;

fn check_custom_activity(m: &LoadedMapping, out: &mut Vec<Problem>) {
    let f = &m.file;
    let Some(c) = &f.custom_activity else {
        out.push(m.problem(
            true,
            &key_path("custom_activity"),
            "a custom-activity file needs a [custom_activity] table (api_name or type_id, \
             activity_date, lead_crm_key or lead_email, event_id_attribute)",
        ));
        return;
    };
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    if blank(&c.api_name) && c.type_id.is_none() {
        out.push(m.problem(
            true,
            &key_path("custom_activity"),
            "names no activity type: set `api_name` (e.g. \"chatConversation_c\") or `type_id`",
        ));
    }
    if c.type_id.is_some_and(|id| id <= 0) {
        out.push(m.problem(
            true,
            &key_path("custom_activity.type_id"),
            "must be a Marketo activity type id (1 or more)",
        ));
    }
    if c.activity_date.trim().is_empty() {
        out.push(m.problem(
            true,
            &key_path("custom_activity.activity_date"),
            "must name the CRM column holding when the event happened",
        ));
    }
    if blank(&c.lead_crm_key) && blank(&c.lead_email) {
        out.push(m.problem(
            true,
            &key_path("custom_activity"),
            "names no way to find the lead: set `lead_crm_key` (the CRM contact column) and/or \
             `lead_email` (an email column)",
        ));
    }
    if c.event_id_attribute.trim().is_empty() {
        out.push(m.problem(
            true,
            &key_path("custom_activity.event_id_attribute"),
            "must name the attribute holding the CRM event id (it makes the write exactly-once)",
        ));
    }
    if f.keys != Keys::default() || f.match_fields.is_some() || f.added_activity.is_some() {
        out.push(m.problem(
            true,
            &key_path("keys"),
            "a custom-activity file has no keys, match or added_activity: events are keyed by \
             their CRM id, written into `custom_activity.event_id_attribute`",
        ));
    }
    if !f.activities.is_empty() {
        out.push(m.problem(
            true,
            &key_path("activities"),
            "activity types belong in a file with marketo_object = \"activities\"",
        ));
    }
    for (i, field) in f.fields.iter().enumerate() {
        if field.direction != Direction::ToMarketo {
            out.push(m.problem(
                true,
                &field_path(i, "direction"),
                "custom activities flow to Marketo only: use direction = \"to_marketo\"",
            ));
        }
        if field.marketo.as_deref() == Some(c.event_id_attribute.as_str()) {
            out.push(m.problem(
                true,
                &field_path(i, "marketo"),
                format!(
                    "`{}` is the event id attribute: the sync writes the CRM event id into it",
                    c.event_id_attribute
                ),
            ));
        }
    }
    if f.fields.is_empty() {
        out.push(m.problem(
            true,
            &key_path("fields"),
            "maps no attribute: map at least the type's primary attribute",
        ));
    }
    // The primary attribute and up to 20 secondary ones, the event id among them.
    if f.fields.len() > MAX_CUSTOM_ACTIVITY_ATTRIBUTES {
        out.push(m.problem(
            true,
            &key_path("fields"),
            format!(
                "maps {} attributes; a custom activity has one primary and at most {} secondary \
                 attributes (the event id attribute is one of them)",
                f.fields.len(),
                MAX_CUSTOM_ACTIVITY_ATTRIBUTES
            ),
        ));
    }
    check_fields(m, &f.fields, &[], out);
}

fn check_fields(
    m: &LoadedMapping,
    fields: &[FieldMapping],
    base: &[Segment],
    out: &mut Vec<Problem>,
) {
    let path = |i: usize, key: &str| {
        let mut p = base.to_vec();
        p.extend(field_path(i, key));
        p
    };
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut marketo_targets: BTreeMap<&str, usize> = BTreeMap::new();
    let mut crm_targets: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in fields.iter().enumerate() {
        if f.marketo.is_none() && f.crm.is_none() {
            out.push(m.problem(
                true,
                &path(i, ""),
                "names neither a `marketo` nor a `crm` field",
            ));
            continue;
        }
        let has_source = |side| f.side_name(side).is_some() || f.constant.is_some();
        use crate::model::Side;
        match f.direction {
            Direction::Both => {
                if f.marketo.is_none() || f.crm.is_none() {
                    let missing = if f.marketo.is_none() {
                        "marketo"
                    } else {
                        "crm"
                    };
                    out.push(m.problem(true, &path(i, "direction"), format!(
                        "direction `both` needs both `marketo` and `crm`; `{missing}` is missing")));
                }
                if f.constant.is_some() {
                    out.push(m.problem(true, &path(i, "constant"),
                        "a constant cannot flow both ways; set direction to `to_crm` or `to_marketo`"));
                }
            }
            Direction::ToCrm => {
                if f.crm.is_none() {
                    out.push(m.problem(
                        true,
                        &path(i, "direction"),
                        "direction `to_crm` needs a `crm` field",
                    ));
                } else if !has_source(Side::Marketo) {
                    out.push(m.problem(
                        true,
                        &path(i, ""),
                        "direction `to_crm` needs a `marketo` field or a `constant`",
                    ));
                }
            }
            Direction::ToMarketo => {
                if f.marketo.is_none() {
                    out.push(m.problem(
                        true,
                        &path(i, "direction"),
                        "direction `to_marketo` needs a `marketo` field",
                    ));
                } else if !has_source(Side::Crm) {
                    out.push(m.problem(
                        true,
                        &path(i, ""),
                        "direction `to_marketo` needs a `crm` field or a `constant`",
                    ));
                }
            }
        }
        let name = f.canonical_name();
        if let Some(first) = names.insert(name, i) {
            out.push(m.problem(
                true,
                &path(i, if f.name.is_some() { "name" } else { "marketo" }),
                format!(
                    "canonical name `{name}` is already used by {}",
                    dotted(&path(first, ""))
                ),
            ));
        }
        if let Some(target) = f
            .marketo
            .as_deref()
            .filter(|_| f.direction.writes_to(Side::Marketo))
            && let Some(first) = marketo_targets.insert(target, i)
        {
            {
                out.push(m.problem(
                    true,
                    &path(i, "marketo"),
                    format!(
                        "duplicate target: Marketo field `{target}` is already written by {}",
                        dotted(&path(first, ""))
                    ),
                ));
            }
        }
        if let Some(target) = f
            .crm
            .as_deref()
            .filter(|_| f.direction.writes_to(Side::Crm))
            && let Some(first) = crm_targets.insert(target, i)
        {
            {
                out.push(m.problem(
                    true,
                    &path(i, "crm"),
                    format!(
                        "duplicate target: CRM field `{target}` is already written by {}",
                        dotted(&path(first, ""))
                    ),
                ));
            }
        }
        let mut reverse: BTreeMap<&str, &str> = BTreeMap::new();
        for (from, to) in &f.values {
            if let Some(other) = reverse.insert(to.as_str(), from.as_str()) {
                out.push(m.problem(true, &path(i, "values"), format!(
                    "values `{other}` and `{from}` both map to CRM value `{to}`, so CRM values cannot be read back")));
            }
        }
    }
}

/// Returns the problems that span files: two files for the same Marketo object, or the same
/// CRM object written from two files.
pub fn check_across(mappings: &[LoadedMapping]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut marketo: BTreeMap<&str, &LoadedMapping> = BTreeMap::new();
    for m in mappings {
        if m.file.is_activities() || m.file.is_custom_activity() {
            continue;
        }
        if let Some(first) = marketo.insert(m.file.marketo_object.as_str(), m) {
            out.push(m.problem(
                true,
                &key_path("marketo_object"),
                format!(
                    "Marketo object `{}` is already mapped in {}",
                    m.file.marketo_object,
                    first.file_name()
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Vec<String> {
        let m = parse_mapping("x", Path::new("x.toml"), text).unwrap();
        check_mapping(&m).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn program_mappings_need_the_crm_key_flow_to_the_crm_and_keep_their_own_tables() {
        let members = "marketo_object = \"program_member\"\ncrm_object = \"campaign_members\"\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n\
            [[statuses]]\ncrm = \"Came\"\nmarketo = \"Attended\"\nchannel = \"Webinar\"\n\
            [[fields]]\nmarketo = \"statusName\"\ncrm = \"status\"\n\
            [[fields]]\nmarketo = \"membershipDate\"\ncrm = \"joined\"\ndirection = \"to_crm\"\n";
        assert!(check(members).is_empty(), "{:?}", check(members));
        let both = members.replace(
            "crm = \"joined\"\ndirection = \"to_crm\"",
            "crm = \"joined\"",
        );
        assert!(
            check(&both)
                .iter()
                .any(|p| p.contains("fields[1].direction"))
        );
        let no_key = members.replace("crm_marketo_id = \"marketo_id\"", "");
        assert!(check(&no_key).iter().any(|p| p.contains("crm_marketo_id")));
        let twice = format!(
            "{members}[[statuses]]\ncrm = \"Came\"\nmarketo = \"Member\"\nchannel = \"Webinar\"\n"
        );
        assert!(check(&twice).iter().any(|p| p.contains("mapped twice")));
        let programs = "marketo_object = \"program\"\ncrm_object = \"campaigns\"\n\
            [keys]\ncrm_marketo_id = \"marketo_id\"\n[programs]\ntags = [\"Region: EMEA\"]\n\
            [[statuses]]\ncrm = \"A\"\nmarketo = \"B\"\n";
        let problems = check(programs);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("status map belongs"));
        let stray = "marketo_object = \"company\"\ncrm_object = \"accounts\"\n\
            [keys]\nmarketo_crm_key = \"externalCompanyId\"\ncrm_marketo_id = \"marketo_id\"\n\
            [programs]\nnames = [\"X\"]\n";
        assert!(
            check(stray)
                .iter()
                .any(|p| p.contains("program selection belongs"))
        );
    }

    #[test]
    fn added_activity_is_for_custom_objects_and_names_a_type() {
        let keys = "[keys]\nmarketo_crm_key = \"vin\"\ncrm_marketo_id = \"marketo_id\"\n";
        let custom = format!(
            "marketo_object = \"car_c\"\ncrm_object = \"vehicles\"\nadded_activity = \"Add to Car\"\n{keys}"
        );
        assert!(check(&custom).is_empty(), "{:?}", check(&custom));
        let blank = custom.replace("\"Add to Car\"", "\" \"");
        assert!(check(&blank).iter().any(|p| p.contains("added_activity")));
        let standard = custom.replace("car_c", "company");
        let problems = check(&standard);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("added_activity") && p.contains("standard object")),
            "{problems:?}"
        );
    }

    #[test]
    fn only_a_mapping_that_writes_nothing_to_the_crm_may_leave_out_crm_marketo_id() {
        let one_way = "marketo_object = \"salesperson\"\ncrm_object = \"owners\"\n\
            [keys]\nmarketo_crm_key = \"externalSalesPersonId\"\n\
            [[fields]]\nmarketo = \"email\"\ncrm = \"email\"\ndirection = \"to_marketo\"\n";
        assert!(check(one_way).is_empty(), "{:?}", check(one_way));
        let both_ways = one_way.replace("direction = \"to_marketo\"\n", "");
        assert!(
            check(&both_ways)
                .iter()
                .any(|p| p.contains("`keys.crm_marketo_id` is missing")),
            "{:?}",
            check(&both_ways)
        );
    }
}
