//! Plans: compile problems, canonical records, rendering, diffs, hashes, suggestions.

use std::path::Path;

use marketo_sync::config::{LoadedMapping, Policy, parse_mapping};
use marketo_sync::mapping::{MappingError, Plan, compile, render_toml, suggest};
use marketo_sync::model::{FieldDef, FieldType, Fields, ObjectSchema, Side, Value};
use proptest::prelude::*;

fn def(name: &str, ty: FieldType) -> FieldDef {
    FieldDef::new(name, ty)
}

fn text(n: u32) -> FieldType {
    FieldType::Text { max_len: Some(n) }
}

fn marketo_lead() -> ObjectSchema {
    let mut updated = def("updatedAt", FieldType::DateTime);
    updated.read_only = true;
    let mut id = def("id", FieldType::Integer);
    id.read_only = true;
    let mut email = def("email", FieldType::Email);
    email.label = Some("Email Address".into());
    ObjectSchema {
        side: Side::Marketo,
        object: "lead".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec!["email".into()],
        fields: vec![
            id,
            email,
            def("firstName", text(255)),
            def("lastName", text(255)),
            def("crmContactId", text(36)),
            updated,
            def("unsubscribed", FieldType::Boolean),
            def("leadStatus", FieldType::Picklist { options: vec![] }),
            def("rating", text(255)),
            def("annualRevenue", FieldType::Decimal),
            def("lastActivityAt", FieldType::DateTime),
            def("leadScore", FieldType::Integer),
            def("title", text(255)),
        ],
    }
}

fn crm_contacts() -> ObjectSchema {
    let mut id = def("id", FieldType::Integer);
    id.read_only = true;
    let mut last = def("last_name", text(100));
    last.required = true;
    let mut modified = def("date_modified", FieldType::DateTime);
    modified.read_only = true;
    ObjectSchema {
        side: Side::Crm,
        object: "contacts".into(),
        id_field: Some("id".into()),
        dedupe_fields: vec![],
        fields: vec![
            id,
            def("email_address", text(255)),
            def("first_name", text(100)),
            last,
            def("marketo_lead_id", FieldType::Integer),
            modified,
            def("email_opt_out", FieldType::Integer),
            def(
                "status",
                FieldType::Picklist {
                    options: vec!["new".into(), "in_process".into(), "dead".into()],
                },
            ),
            def("rating", text(50)),
            def("annual_revenue", FieldType::Decimal),
            def("last_activity", FieldType::DateTime),
            def("score", FieldType::Integer),
            def("sync_source", text(20)),
            def("job_title", FieldType::Text { max_len: None }),
        ],
    }
}

const MAPPING: &str = r#"
marketo_object = "lead"
crm_object = "contacts"
policy = "newest_wins"

[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_lead_id"

[[fields]]
marketo = "email"
crm = "email_address"
transform = ["trim", "lowercase"]

[[fields]]
marketo = "firstName"
crm = "first_name"

[[fields]]
marketo = "lastName"
crm = "last_name"
policy = "crm_wins"

[[fields]]
marketo = "unsubscribed"
crm = "email_opt_out"

[[fields]]
marketo = "leadStatus"
crm = "status"
default = "New"
[fields.values]
"New" = "new"
"Working" = "in_process"
"Disqualified" = "dead"

[[fields]]
marketo = "rating"
crm = "rating"
transform = ["pascal_case"]
crm_transform = ["snake_case"]

[[fields]]
marketo = "lastActivityAt"
crm = "last_activity"

[[fields]]
marketo = "leadScore"
crm = "score"
direction = "to_crm"

[[fields]]
name = "source"
crm = "sync_source"
direction = "to_crm"
constant = "marketo"
"#;

fn loaded(text: &str) -> LoadedMapping {
    parse_mapping("leads", Path::new("leads.toml"), text).unwrap()
}

fn plan() -> Plan {
    let (plan, problems) = compile(&loaded(MAPPING), &marketo_lead(), &crm_contacts());
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    plan.unwrap()
}

fn fields(pairs: &[(&str, Value)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn both_sides_agree_on_canonical_values() {
    let plan = plan();
    let from_marketo = plan
        .to_canonical(
            Side::Marketo,
            &fields(&[
                ("email", " Ann@Example.COM ".into()),
                ("firstName", "Ann".into()),
                ("unsubscribed", "true".into()),
                ("leadStatus", "Working".into()),
                ("rating", "HotProspect".into()),
                ("lastActivityAt", "2024-05-06T09:08:09+0200".into()),
                ("leadScore", Value::Int(40)),
                ("notMapped", "x".into()),
            ]),
        )
        .unwrap();
    let from_crm = plan
        .to_canonical(
            Side::Crm,
            &fields(&[
                ("email_address", "ann@example.com".into()),
                ("first_name", "Ann  ".into()),
                ("email_opt_out", Value::Int(1)),
                ("status", "in_process".into()),
                ("rating", "hot_prospect".into()),
                ("last_activity", "2024-05-06 07:08:09".into()),
                ("score", Value::Int(99)),
            ]),
        )
        .unwrap();
    assert_eq!(
        from_marketo.get("email"),
        Some(&Value::from("ann@example.com"))
    );
    assert_eq!(from_marketo.get("unsubscribed"), Some(&Value::Bool(true)));
    assert!(!from_marketo.contains_key("notMapped"));
    assert_eq!(
        from_marketo.get("source"),
        Some(&Value::from("marketo")),
        "a to_crm constant is part of what Marketo's side says"
    );
    // The score flows to the CRM only: it is not read from the CRM.
    assert!(!from_crm.contains_key("leadScore"));
    assert_eq!(from_crm.get("source"), None);
    for key in [
        "email",
        "firstName",
        "unsubscribed",
        "leadStatus",
        "rating",
        "lastActivityAt",
    ] {
        assert_eq!(from_marketo.get(key), from_crm.get(key), "{key}");
    }
    // Fields absent from the raw record stay absent (unknown, not null).
    assert!(!from_crm.contains_key("lastName"));
}

#[test]
fn render_writes_target_names_types_and_directions() {
    let plan = plan();
    let canonical = fields(&[
        ("email", "ann@example.com".into()),
        ("unsubscribed", Value::Bool(true)),
        ("leadStatus", "Disqualified".into()),
        ("rating", "HotProspect".into()),
        ("leadScore", Value::Int(40)),
    ]);
    let crm = plan.render(Side::Crm, &canonical);
    assert_eq!(
        crm.get("email_address"),
        Some(&Value::from("ann@example.com"))
    );
    assert_eq!(
        crm.get("email_opt_out"),
        Some(&Value::Int(1)),
        "bool into an integer column"
    );
    assert_eq!(crm.get("status"), Some(&Value::from("dead")));
    assert_eq!(crm.get("rating"), Some(&Value::from("hot_prospect")));
    assert_eq!(crm.get("score"), Some(&Value::Int(40)));
    assert_eq!(crm.get("sync_source"), Some(&Value::from("marketo")));
    assert!(
        !crm.contains_key("first_name"),
        "only fields the canonical record holds"
    );

    let marketo = plan.render(Side::Marketo, &canonical);
    assert_eq!(
        marketo.get("leadStatus"),
        Some(&Value::from("Disqualified"))
    );
    assert!(
        !marketo.contains_key("leadScore"),
        "to_crm fields are never written to Marketo"
    );
    assert!(!marketo.contains_key("sync_source") && !marketo.contains_key("source"));
}

#[test]
fn defaults_fill_empty_values() {
    let plan = plan();
    let c = plan
        .to_canonical(Side::Crm, &fields(&[("status", "".into())]))
        .unwrap();
    assert_eq!(c.get("leadStatus"), Some(&Value::from("New")));
}

#[test]
fn bad_values_are_errors_not_panics() {
    let plan = plan();
    let error = plan
        .to_canonical(Side::Crm, &fields(&[("email_opt_out", Value::Int(7))]))
        .unwrap_err();
    let MappingError::InvalidValue {
        side,
        source_field,
        field,
        ..
    } = &error;
    assert_eq!(
        (*side, source_field.as_str(), field.as_str()),
        (Side::Crm, "email_opt_out", "unsubscribed")
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("email_opt_out"));
}

#[test]
fn policies_fall_back_to_the_object_default() {
    let plan = plan();
    assert_eq!(plan.policy_for("lastName"), Policy::CrmWins);
    assert_eq!(plan.policy_for("firstName"), Policy::NewestWins);
    assert_eq!(plan.policy_for("nope"), Policy::NewestWins);
}

#[test]
fn diff_reports_changed_fields_only() {
    let plan = plan();
    let base = fields(&[("email", "a@x.com".into()), ("firstName", "Ann".into())]);
    let current = fields(&[
        ("email", "a@x.com".into()),
        ("firstName", "Anne".into()),
        ("rating", "Hot".into()),
    ]);
    let changes = plan.diff(&base, &current);
    let names: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(names, ["firstName", "rating"]);
    assert_eq!(changes[0].before, Value::from("Ann"));
    assert_eq!(changes[1].before, Value::Null);
    assert!(plan.diff(&current, &current).is_empty());
}

#[test]
fn disabled_fields_stop_flowing_and_leave_the_hash() {
    let mut plan = plan();
    let raw = fields(&[("email", "a@x.com".into()), ("firstName", "Ann".into())]);
    let before = plan.to_canonical(Side::Marketo, &raw).unwrap();
    let hash_before = plan.hash(&before);
    assert!(plan.disable_field("firstName", "vanished from Marketo"));
    assert!(!plan.disable_field("nope", "x"));
    let after = plan.to_canonical(Side::Marketo, &raw).unwrap();
    assert!(!after.contains_key("firstName"));
    assert_ne!(plan.hash(&before), hash_before);
    assert_eq!(plan.hash(&before), plan.hash(&after));
    assert!(!plan.render(Side::Crm, &before).contains_key("first_name"));
    assert_eq!(
        plan.disabled_fields(),
        vec![("firstName", "vanished from Marketo")]
    );
}

#[test]
fn fingerprints_are_stable_and_notice_changes() {
    let a = plan();
    let b = plan();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let (changed, _) = compile(
        &loaded(&MAPPING.replace("policy = \"crm_wins\"", "policy = \"marketo_wins\"")),
        &marketo_lead(),
        &crm_contacts(),
    );
    assert_ne!(a.fingerprint(), changed.unwrap().fingerprint());
}

fn compile_errors(text: &str) -> Vec<String> {
    let (_, problems) = compile(&loaded(text), &marketo_lead(), &crm_contacts());
    problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| format!("{} {}", p.key, p.reason))
        .collect()
}

#[test]
fn compile_reports_unknown_fields_with_suggestions() {
    let errors = compile_errors(&MAPPING.replace("crm = \"first_name\"", "crm = \"frist_name\""));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("fields[1].crm unknown CRM field `frist_name`"),
        "{errors:?}"
    );
    assert!(errors[0].contains("did you mean `first_name`?"));
}

#[test]
fn compile_reports_read_only_targets_and_keeps_other_fields() {
    let text = format!(
        "{MAPPING}\n[[fields]]\nname = \"modified\"\nmarketo = \"lastActivityAt\"\ncrm = \"date_modified\"\ndirection = \"to_crm\"\n"
    );
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .reason
            .contains("`date_modified` on `contacts` is read-only")
    );
    let plan = plan.expect("a field problem disables that field only");
    assert!(plan.field("modified").unwrap().disabled.is_some());
    assert!(plan.field("email").unwrap().disabled.is_none());
}

#[test]
fn compile_reports_type_and_length_mismatches() {
    let text = format!(
        "{MAPPING}\n[[fields]]\nname = \"x\"\nmarketo = \"unsubscribed\"\ncrm = \"last_activity\"\n"
    );
    let errors = compile_errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().all(|e| e.contains("type mismatch")));
    let (_, problems) = compile(&loaded(MAPPING), &marketo_lead(), &crm_contacts());
    let warnings: Vec<String> = problems
        .iter()
        .filter(|p| !p.is_error())
        .map(|p| p.reason.clone())
        .collect();
    // Declared lengths are not compared (Marketo declares 255 for nearly every string: the
    // warning fired on every shipped mapping); a default that can never fit is an error.
    assert!(
        !warnings.iter().any(|w| w.contains("length mismatch")),
        "{warnings:#?}"
    );
    let long = format!(
        "{MAPPING}\n[[fields]]\nmarketo = \"rating\"\ncrm = \"rating\"\ndefault = \"{}\"\n",
        "x".repeat(60)
    );
    let errors = compile_errors(&long);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("the default is 60 characters long")
                && e.contains("holds at most 50")),
        "{errors:#?}"
    );
}

#[test]
fn compile_routes_company_fields_on_leads_to_the_company_with_a_warning() {
    let text =
        format!("{MAPPING}\n[[fields]]\nmarketo = \"annualRevenue\"\ncrm = \"annual_revenue\"\n");
    assert!(compile_errors(&text).is_empty());
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    let plan = plan.expect("plan");
    let field = plan.field("annualRevenue").expect("field");
    assert!(field.disabled.is_none(), "{field:?}");
    assert!(field.routed_to_company);
    assert_eq!(plan.company_routed_fields(), vec!["annualRevenue"]);
    assert!(
        problems
            .iter()
            .any(|p| !p.is_error() && p.reason.contains("written to that company")),
        "{problems:#?}"
    );
    // One way to the CRM, nothing is written to Marketo: nothing to route.
    let one_way = text.replace(
        "crm = \"annual_revenue\"",
        "crm = \"annual_revenue\"\ndirection = \"to_crm\"",
    );
    let (plan, _) = compile(&loaded(&one_way), &marketo_lead(), &crm_contacts());
    assert!(
        !plan
            .unwrap()
            .field("annualRevenue")
            .unwrap()
            .routed_to_company
    );
}

#[test]
fn compile_reports_unknown_key_fields_and_refuses_the_plan() {
    let text = MAPPING.replace("crmContactId", "crmContactID");
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    assert!(plan.is_none());
    let error = problems.iter().find(|p| p.is_error()).unwrap();
    assert_eq!(error.key, "keys.marketo_crm_key");
    assert_eq!(error.line, Some(7));
    assert!(error.reason.contains("did you mean `crmContactId`"));
}

#[test]
fn compile_warns_about_unmapped_required_fields() {
    let text = MAPPING.replace("crm = \"last_name\"", "crm = \"job_title\"");
    let (_, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    assert!(
        problems
            .iter()
            .any(|p| !p.is_error() && p.reason.contains("required CRM field `last_name`"))
    );
}

#[test]
fn suggestions_pair_known_and_similar_fields_and_parse_back() {
    let file = suggest(&marketo_lead(), &crm_contacts());
    let pair = |m: &str| {
        file.fields
            .iter()
            .find(|f| f.marketo.as_deref() == Some(m))
            .and_then(|f| f.crm.clone())
    };
    assert_eq!(pair("email").as_deref(), Some("email_address"));
    assert_eq!(pair("firstName").as_deref(), Some("first_name"));
    assert_eq!(pair("annualRevenue").as_deref(), Some("annual_revenue"));
    assert_eq!(pair("title").as_deref(), Some("job_title"));
    assert_eq!(pair("updatedAt"), None, "system fields are left out");
    assert_eq!(file.keys.marketo_crm_key.as_deref(), Some("crmContactId"));
    assert_eq!(file.keys.crm_marketo_id.as_deref(), Some("marketo_lead_id"));
    let text = render_toml(&file, &marketo_lead(), &crm_contacts());
    assert!(text.contains("# Proposed by"));
    let back = loaded(&text);
    assert_eq!(back.file.fields, file.fields);
    // The company field is proposed one way, so the proposal compiles without errors.
    let (plan, problems) = compile(&back, &marketo_lead(), &crm_contacts());
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
    assert!(plan.is_some());
}

proptest! {
    #[test]
    fn crm_values_survive_a_render_round_trip(
        email in "[A-Za-z]{1,8}@[a-z]{1,8}\\.(com|org)",
        opt_out in 0i64..2,
        status in prop::sample::select(vec!["new", "in_process", "dead"]),
        rating in proptest::collection::vec("[a-z][a-z0-9]{1,5}", 1..4),
        seconds in 0i64..4_000_000_000,
    ) {
        let plan = plan();
        let raw = fields(&[
            ("email_address", email.to_lowercase().into()),
            ("email_opt_out", Value::Int(opt_out)),
            ("status", status.into()),
            ("rating", rating.join("_").into()),
            ("last_activity", Value::DateTime(chrono::DateTime::from_timestamp(seconds, 0).unwrap())),
        ]);
        let canonical = plan.to_canonical(Side::Crm, &raw).unwrap();
        let rendered = plan.render(Side::Crm, &canonical);
        for (k, v) in &raw {
            prop_assert_eq!(rendered.get(k), Some(v), "{}", k);
        }
        let again = plan.to_canonical(Side::Crm, &rendered).unwrap();
        prop_assert_eq!(&again, &canonical);
        prop_assert_eq!(plan.hash(&again), plan.hash(&canonical));
        // Marketo's rendering reads back to the same canonical record.
        let marketo = plan.render(Side::Marketo, &canonical);
        let from_marketo = plan.to_canonical(Side::Marketo, &marketo).unwrap();
        for (k, v) in from_marketo.iter().filter(|(k, _)| k.as_str() != "source") {
            prop_assert_eq!(canonical.get(k), Some(v), "{}", k);
        }
    }

    #[test]
    fn applying_a_diff_to_the_base_gives_the_current_record(
        base in proptest::collection::btree_map("[a-e]", "[a-c]{0,2}", 0..5),
        current in proptest::collection::btree_map("[a-e]", "[a-c]{0,2}", 0..5),
    ) {
        let to_fields = |m: &std::collections::BTreeMap<String, String>| -> Fields {
            m.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect()
        };
        let (base, current) = (to_fields(&base), to_fields(&current));
        let changes = marketo_sync::mapping::diff(&base, &current);
        let mut patched = base.clone();
        for c in &changes {
            prop_assert_eq!(base.get(&c.field).cloned().unwrap_or(Value::Null), c.before.clone());
            patched.insert(c.field.clone(), c.after.clone());
        }
        for (k, v) in &current {
            prop_assert_eq!(patched.get(k), Some(v));
        }
        let sorted = changes.windows(2).all(|w| w[0].field < w[1].field);
        prop_assert!(sorted);
    }
}

#[test]
fn compile_checks_the_deletion_flag_column() {
    let with_flag = |column: &str| {
        MAPPING.replace(
            "crm_marketo_id = \"marketo_lead_id\"",
            &format!("crm_marketo_id = \"marketo_lead_id\"\ncrm_deleted_flag = \"{column}\""),
        )
    };
    let errors = compile_errors(&with_flag("first_name"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("keys.crm_deleted_flag") && errors[0].contains("boolean column"),
        "{errors:?}"
    );
    let errors = compile_errors(&with_flag("deleted_flag"));
    assert!(
        errors[0].contains("unknown CRM field `deleted_flag`"),
        "{errors:?}"
    );
    let (plan, _) = compile(
        &loaded(&with_flag("first_name")),
        &marketo_lead(),
        &crm_contacts(),
    );
    assert_eq!(
        plan.unwrap().crm_deleted_flag,
        None,
        "a bad flag column is not used"
    );
}

/// The demo CRM's contacts as `mappings suggest` saw them: a BOOLEAN `deleted_in_marketo` listed
/// before the real `marketo_id` column.
fn crm_contacts_with_flag() -> ObjectSchema {
    let mut crm = crm_contacts();
    crm.fields.retain(|d| d.name != "marketo_lead_id");
    crm.fields
        .insert(1, def("deleted_in_marketo", FieldType::Boolean));
    crm.fields.push(def("marketo_id", FieldType::Integer));
    crm
}

#[test]
fn a_boolean_column_is_refused_as_the_marketo_id_key() {
    let text = MAPPING.replace("\"marketo_lead_id\"", "\"deleted_in_marketo\"");
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts_with_flag());
    assert!(plan.is_none(), "the object cannot be synced with that key");
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "keys.crm_marketo_id");
    assert!(
        errors[0].reason.contains("`deleted_in_marketo`")
            && errors[0].reason.contains("boolean")
            && errors[0].reason.contains("cannot hold the integer ids"),
        "{errors:#?}"
    );
    // The line of the key, with the caret on `crm_marketo_id = "deleted_in_marketo"`.
    let line = text
        .lines()
        .position(|l| l.starts_with("crm_marketo_id"))
        .unwrap()
        + 1;
    assert_eq!((errors[0].line, errors[0].column), (Some(line), Some(1)));
}

#[test]
fn key_columns_must_be_long_enough_for_the_ids() {
    // A Marketo-side key of text(5) cannot hold the CRM's integer ids (up to 11 characters).
    let mut marketo = marketo_lead();
    for d in &mut marketo.fields {
        if d.name == "crmContactId" {
            d.ty = text(5);
        }
    }
    let (plan, problems) = compile(&loaded(MAPPING), &marketo, &crm_contacts());
    assert!(plan.is_none());
    assert!(
        problems.iter().any(|p| p.is_error()
            && p.key == "keys.marketo_crm_key"
            && p.reason.contains("at most 5 characters")),
        "{problems:#?}"
    );
    // A text CRM column holds an integer Marketo id when it is long enough; a date never does.
    let mut crm = crm_contacts();
    for d in &mut crm.fields {
        if d.name == "marketo_lead_id" {
            d.ty = text(20);
        }
    }
    let (plan, problems) = compile(&loaded(MAPPING), &marketo_lead(), &crm);
    assert!(plan.is_some(), "{problems:#?}");
    for d in &mut crm.fields {
        if d.name == "marketo_lead_id" {
            d.ty = FieldType::Date;
        }
    }
    let (plan, _) = compile(&loaded(MAPPING), &marketo_lead(), &crm);
    assert!(plan.is_none());
}

#[test]
fn suggest_never_proposes_a_key_column_that_cannot_hold_the_id() {
    let file = suggest(&marketo_lead(), &crm_contacts_with_flag());
    assert_eq!(file.keys.crm_marketo_id.as_deref(), Some("marketo_id"));
    // With only the boolean column, nothing is proposed (the operator must add a column).
    let mut crm = crm_contacts_with_flag();
    crm.fields.retain(|d| d.name != "marketo_id");
    let file = suggest(&marketo_lead(), &crm);
    assert_eq!(file.keys.crm_marketo_id, None);
    // The proposal always compiles without a key error when a fitting column exists.
    let text = render_toml(
        &suggest(&marketo_lead(), &crm_contacts_with_flag()),
        &marketo_lead(),
        &crm_contacts_with_flag(),
    );
    let (_, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts_with_flag());
    assert!(
        !problems.iter().any(|p| p.key.starts_with("keys.")),
        "{problems:#?}"
    );
}

proptest! {
    /// Whatever the CRM's columns, a proposed Marketo-id key can hold an integer lead id.
    #[test]
    fn a_suggested_key_always_holds_the_id(kinds in proptest::collection::vec(0u8..6, 1..6)) {
        let types = [
            FieldType::Boolean,
            FieldType::Date,
            FieldType::Integer,
            FieldType::Text { max_len: Some(4) },
            FieldType::Text { max_len: None },
            FieldType::DateTime,
        ];
        let mut crm = crm_contacts();
        crm.fields.retain(|d| d.name != "marketo_lead_id");
        for (i, k) in kinds.iter().enumerate() {
            crm.fields.push(def(&format!("marketo_col_{i}"), types[usize::from(*k)].clone()));
        }
        let file = suggest(&marketo_lead(), &crm);
        if let Some(key) = file.keys.crm_marketo_id {
            let ty = &crm.field(&key).unwrap().ty;
            prop_assert!(
                matches!(ty, FieldType::Integer | FieldType::Text { max_len: None }),
                "{key}: {ty:?}"
            );
        } else {
            prop_assert!(kinds.iter().all(|k| ![2u8, 4].contains(k)));
        }
    }
}

#[test]
fn shorten_cuts_to_the_target_length_and_knows_its_own_echo() {
    let long = Value::Text("é".repeat(150));
    let canonical = fields(&[("firstName", long.clone())]);
    let refused = plan();
    assert_eq!(
        refused.render(Side::Crm, &canonical)["first_name"],
        long,
        "without `shorten` a long value is written whole (and refused by the CRM)"
    );
    assert_eq!(
        refused
            .field("firstName")
            .unwrap()
            .shortened_echo(Side::Crm, &long),
        None
    );

    let text = MAPPING.replace(
        "crm = \"first_name\"\n",
        "crm = \"first_name\"\nshorten = true\n",
    );
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
    let plan = plan.unwrap();
    let cut = Value::Text("é".repeat(100));
    assert_eq!(
        plan.render(Side::Crm, &canonical)["first_name"],
        cut,
        "100 characters, not bytes"
    );
    assert_eq!(
        plan.render(Side::Marketo, &canonical)["firstName"],
        long,
        "255 fit"
    );
    let field = plan.field("firstName").unwrap();
    assert_eq!(field.shortened_echo(Side::Crm, &long), Some(cut));
    assert_eq!(field.shortened_echo(Side::Marketo, &long), None);
    let short = Value::Text("Ann".into());
    assert_eq!(
        field.shortened_echo(Side::Crm, &short),
        None,
        "nothing to cut"
    );
}

#[test]
fn shorten_on_a_field_without_a_declared_length_is_a_warning() {
    let text = format!(
        "{MAPPING}\n[[fields]]\nmarketo = \"title\"\ncrm = \"job_title\"\ndirection = \"to_crm\"\nshorten = true\n"
    );
    let (plan, problems) = compile(&loaded(&text), &marketo_lead(), &crm_contacts());
    assert!(plan.is_some());
    let warning = problems
        .iter()
        .find(|p| p.reason.contains("`shorten = true` has no effect"))
        .unwrap_or_else(|| panic!("{problems:#?}"));
    assert!(!warning.is_error());
    assert!(warning.key.ends_with("shorten"), "{}", warning.key);
}
