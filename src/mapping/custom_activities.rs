//! Compiling a custom-activity mapping file (`marketo_object = "custom_activity"`): a CRM table
//! of events -> one Marketo custom activity type, checked against the type's live describe
//! (`custom_activity:<apiName>`, see [`crate::marketo::describe::ActivityType::to_custom_schema`])
//! and the CRM table's schema.

use super::compile::compile_field;
use super::plan::Plan;
use crate::config::{CustomActivityMapping, LoadedMapping, Policy, Problem, Segment, did_you_mean};
use crate::model::{FieldType, ObjectSchema};

/// The compiled mapping of a CRM event table onto one custom activity type.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomActivityPlan {
    /// The fields: CRM columns -> attribute API names (`plan.object` is the `sync.objects`
    /// entry, `plan.marketo_object` the schema name `custom_activity:<apiName>`).
    pub plan: Plan,
    /// The type's API name as configured (`None` when only `type_id` is).
    pub api_name: Option<String>,
    /// The type id as configured (`None` when only `api_name` is).
    pub type_id: Option<i64>,
    /// The API name of the type's primary attribute.
    pub primary: String,
    /// The API name of the attribute the CRM event id is written into.
    pub event_id_attribute: String,
    /// The CRM column holding the event's date.
    pub activity_date: String,
    /// The CRM column holding the contact key (its linked lead gets the activity).
    pub lead_crm_key: Option<String>,
    /// The CRM column holding the email of the lead (when no linked contact).
    pub lead_email: Option<String>,
}

fn key(path: &str) -> Vec<Segment> {
    path.split('.')
        .map(|s| Segment::Key(s.to_owned()))
        .collect()
}

/// Returns the plan of a custom-activity file compiled against the type's schema and the CRM
/// table's, with every problem (each naming the file and key). No plan when the type or the
/// table is missing, or the primary or event id attribute cannot be written.
pub fn compile_custom_activity(
    m: &LoadedMapping,
    marketo: Option<&ObjectSchema>,
    crm: Option<&ObjectSchema>,
) -> (Option<CustomActivityPlan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let Some(c) = m.file.custom_activity.as_ref() else {
        // check_mapping reports the missing table.
        return (None, problems);
    };
    let type_path = if c.api_name.is_some() {
        key("custom_activity.api_name")
    } else {
        key("custom_activity.type_id")
    };
    let Some(marketo) = marketo else {
        let name = c
            .api_name
            .clone()
            .or(c.type_id.map(|i| i.to_string()))
            .unwrap_or_default();
        problems.push(m.problem(
            true,
            &type_path,
            format!("Marketo has no custom activity type `{name}` (or it could not be described)"),
        ));
        return (None, problems);
    };
    let Some(crm) = crm else {
        problems.push(m.problem(
            true,
            &key("crm_object"),
            format!("the CRM has no object `{}`", m.file.crm_object),
        ));
        return (None, problems);
    };
    let ok =
        check_columns(m, c, crm, &mut problems) & check_attributes(m, c, marketo, &mut problems);
    let mut fields = Vec::new();
    for (i, fm) in m.file.fields.iter().enumerate() {
        let (field, fp) = compile_field(m, &[], i, fm, marketo, crm, Policy::CrmWins);
        problems.extend(fp);
        fields.push(field);
    }
    let primary = marketo.id_field.clone().unwrap_or_default();
    let primary_mapped = fields
        .iter()
        .any(|f| f.disabled.is_none() && f.marketo.as_deref() == Some(primary.as_str()));
    if !primary_mapped {
        problems.push(m.problem(
            true,
            &key("fields"),
            format!(
                "the type's primary attribute `{primary}` is not mapped (every custom activity needs it)"
            ),
        ));
    }
    if !(ok && primary_mapped) {
        return (None, problems);
    }
    let plan = Plan {
        object: m.object.clone(),
        marketo_object: marketo.object.clone(),
        crm_object: m.file.crm_object.clone(),
        marketo_crm_key: c.event_id_attribute.clone(),
        crm_marketo_id: String::new(),
        crm_deleted_flag: None,
        conversion: None,
        match_fields: Vec::new(),
        policy: Policy::CrmWins,
        fields,
    };
    let plan = CustomActivityPlan {
        plan,
        api_name: c.api_name.clone(),
        type_id: c.type_id,
        primary,
        event_id_attribute: c.event_id_attribute.clone(),
        activity_date: c.activity_date.clone(),
        lead_crm_key: c.lead_crm_key.clone().filter(|s| !s.trim().is_empty()),
        lead_email: c.lead_email.clone().filter(|s| !s.trim().is_empty()),
    };
    (Some(plan), problems)
}

/// Checks the CRM columns the `[custom_activity]` table names; returns false on a problem.
fn check_columns(
    m: &LoadedMapping,
    c: &CustomActivityMapping,
    crm: &ObjectSchema,
    problems: &mut Vec<Problem>,
) -> bool {
    let mut ok = true;
    let columns = [
        ("custom_activity.activity_date", Some(&c.activity_date)),
        ("custom_activity.lead_crm_key", c.lead_crm_key.as_ref()),
        ("custom_activity.lead_email", c.lead_email.as_ref()),
    ];
    for (path, column) in columns {
        let Some(column) = column.filter(|s| !s.trim().is_empty()) else {
            continue;
        };
        if crm.field(column).is_none() {
            ok = false;
            problems.push(m.problem(
                true,
                &key(path),
                format!(
                    "unknown CRM field `{column}` on `{}`{}",
                    crm.object,
                    did_you_mean(column, crm.fields.iter().map(|f| f.name.as_str()))
                ),
            ));
        }
    }
    ok
}

/// Checks the event id attribute and the count of attributes against the type; returns false
/// on a problem.
fn check_attributes(
    m: &LoadedMapping,
    c: &CustomActivityMapping,
    marketo: &ObjectSchema,
    problems: &mut Vec<Problem>,
) -> bool {
    let name = c.event_id_attribute.as_str();
    let path = key("custom_activity.event_id_attribute");
    match marketo.field(name) {
        None => {
            problems.push(m.problem(
                true,
                &path,
                format!(
                    "custom activity type `{}` has no attribute `{name}`{}; add a string \
                     attribute for the CRM event id to the type (it makes the write exactly-once)",
                    marketo.object,
                    did_you_mean(name, marketo.fields.iter().map(|f| f.name.as_str()))
                ),
            ));
            false
        }
        Some(_) if marketo.id_field.as_deref() == Some(name) => {
            problems.push(m.problem(
                true,
                &path,
                format!("`{name}` is the type's primary attribute; the event id needs an attribute of its own"),
            ));
            false
        }
        Some(def) if !def.ty.is_textual() && def.ty != FieldType::Integer => {
            problems.push(m.problem(
                true,
                &path,
                format!(
                    "attribute `{name}` is {}; the event id needs a string (or integer) attribute",
                    def.ty.describe()
                ),
            ));
            false
        }
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketo::describe::ActivityType;
    use crate::model::{FieldDef, Side};
    use serde_json::json;
    use std::path::Path;

    const FILE: &str = r#"
marketo_object = "custom_activity"
crm_object = "events"

[custom_activity]
api_name = "chatConversation_c"
activity_date = "occurred_at"
lead_crm_key = "contact_id"
lead_email = "email"
event_id_attribute = "eventId"

[[fields]]
marketo = "topic"
crm = "topic"
direction = "to_marketo"

[[fields]]
marketo = "transcript"
crm = "transcript"
direction = "to_marketo"
"#;

    fn schemas() -> (ObjectSchema, ObjectSchema) {
        let t: ActivityType = serde_json::from_value(json!({
            "id": 100002, "name": "Chat Conversation", "apiName": "chatConversation_c",
            "primaryAttribute": {"apiName": "topic", "name": "Topic", "dataType": "string"},
            "attributes": [
                {"apiName": "eventId", "name": "Event ID", "dataType": "string"},
                {"apiName": "transcript", "name": "Transcript", "dataType": "text"}
            ]
        }))
        .unwrap();
        let marketo = t.to_custom_schema("custom_activity:chatConversation_c");
        let text = FieldType::Text { max_len: None };
        let crm = ObjectSchema {
            side: Side::Crm,
            object: "events".into(),
            id_field: Some("id".into()),
            dedupe_fields: vec![],
            fields: [
                "id",
                "topic",
                "transcript",
                "email",
                "contact_id",
                "occurred_at",
            ]
            .iter()
            .map(|n| FieldDef::new(*n, text.clone()))
            .collect(),
        };
        (marketo, crm)
    }

    fn compile_text(text: &str) -> (Option<CustomActivityPlan>, Vec<String>) {
        let m = crate::config::parse_mapping("chat_events", Path::new("chat_events.toml"), text)
            .unwrap();
        let mut problems: Vec<String> = crate::config::check_mapping(&m)
            .iter()
            .map(ToString::to_string)
            .collect();
        let (marketo, crm) = schemas();
        let (plan, p) = compile_custom_activity(&m, Some(&marketo), Some(&crm));
        problems.extend(p.iter().filter(|p| p.is_error()).map(ToString::to_string));
        (plan, problems)
    }

    #[test]
    fn a_valid_file_compiles_with_the_primary_and_the_event_id_attribute() {
        let (plan, problems) = compile_text(FILE);
        assert!(problems.is_empty(), "{problems:?}");
        let plan = plan.unwrap();
        assert_eq!(plan.primary, "topic");
        assert_eq!(plan.event_id_attribute, "eventId");
        assert_eq!(
            plan.plan.field("transcript").unwrap().marketo_ty,
            Some(FieldType::Text {
                max_len: Some(65_535)
            })
        );
    }

    #[test]
    fn unknown_types_attributes_and_columns_name_the_file_and_key() {
        let m = crate::config::parse_mapping("chat_events", Path::new("chat_events.toml"), FILE)
            .unwrap();
        let (_, crm) = schemas();
        let (plan, p) = compile_custom_activity(&m, None, Some(&crm));
        assert!(plan.is_none());
        let text = p[0].to_string();
        assert!(
            text.contains("chat_events.toml") && text.contains("custom_activity.api_name"),
            "{text}"
        );
        let (plan, p) = compile_text(&FILE.replace("\"transcript\"\ncrm", "\"transcrpt\"\ncrm"));
        assert!(plan.is_some());
        assert!(
            p.iter()
                .any(|p| p.contains("fields[1].marketo") && p.contains("`transcrpt`")),
            "{p:?}"
        );
        let (plan, p) = compile_text(&FILE.replace("\"eventId\"", "\"eventKey\""));
        assert!(plan.is_none());
        assert!(
            p.iter()
                .any(|p| p.contains("custom_activity.event_id_attribute")),
            "{p:?}"
        );
        let (plan, p) = compile_text(&FILE.replace("\"occurred_at\"", "\"when\""));
        assert!(plan.is_none());
        assert!(
            p.iter()
                .any(|p| p.contains("custom_activity.activity_date")),
            "{p:?}"
        );
        let (plan, p) = compile_text(&FILE.replace(
            "marketo = \"topic\"",
            "marketo = \"transcript\"\nname = \"t\"",
        ));
        assert!(plan.is_none());
        assert!(
            p.iter().any(|p| p.contains("primary attribute `topic`")),
            "{p:?}"
        );
    }

    #[test]
    fn fields_must_flow_to_marketo_and_stay_within_the_attribute_limit() {
        let (_, p) =
            compile_text(&FILE.replace("direction = \"to_marketo\"", "direction = \"both\""));
        assert!(p.iter().any(|p| p.contains("to_marketo")), "{p:?}");
        let mut many = FILE.to_owned();
        for i in 0..20 {
            many.push_str(&format!(
                "\n[[fields]]\nmarketo = \"a{i}\"\ncrm = \"topic\"\ndirection = \"to_marketo\"\n"
            ));
        }
        let (_, p) = compile_text(&many);
        assert!(
            p.iter().any(|p| p.contains("at most 20 secondary")),
            "{p:?}"
        );
    }
}
