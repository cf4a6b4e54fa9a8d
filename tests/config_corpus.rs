//! The broken-input corpus: each case under `tests/fixtures/config/<case>/` holds one mistake and
//! must produce exactly one error naming its file, key, line (where TOML gives one) and reason.

use std::collections::HashMap;
use std::path::PathBuf;

use marketo_sync::config::{Problem, SettingsSource};
use marketo_sync::mapping::{SchemaSet, ValidateArgs, run_validate};

const SECRET: &str = "s3cret-never-printed";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

fn schemas() -> SchemaSet {
    let (set, problems) = SchemaSet::load_dir(&fixtures().join("_schemas"));
    assert!(problems.is_empty(), "{problems:?}");
    set
}

fn problems(case: &str, with_secret: bool) -> Vec<Problem> {
    let mut vars = HashMap::new();
    if with_secret {
        vars.insert(
            "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
            SECRET.to_owned(),
        );
    }
    let source = SettingsSource::new(fixtures().join(case), None).with_vars(vars);
    marketo_sync::mapping::validate_dir(&source, Some(&schemas()))
}

struct Case {
    name: &'static str,
    with_secret: bool,
    file: &'static str,
    key: &'static str,
    line: Option<usize>,
    reason: &'static str,
}

const fn case(
    name: &'static str,
    file: &'static str,
    key: &'static str,
    line: Option<usize>,
    reason: &'static str,
) -> Case {
    Case {
        name,
        with_secret: true,
        file,
        key,
        line,
        reason,
    }
}

const CASES: &[Case] = &[
    case(
        "bad_toml_settings",
        "default.toml",
        "",
        Some(4),
        "invalid TOML",
    ),
    case(
        "unknown_key_settings",
        "default.toml",
        "marketo.calls_per_20",
        Some(4),
        "did you mean `calls_per_20s`",
    ),
    case(
        "unknown_section",
        "default.toml",
        "marketto",
        Some(12),
        "did you mean `marketo`",
    ),
    case(
        "wrong_type_settings",
        "default.toml",
        "marketo.max_concurrency",
        Some(4),
        "invalid type: string \"five\"",
    ),
    case(
        "out_of_range",
        "default.toml",
        "marketo.calls_per_20s",
        Some(4),
        "between 1 and 100",
    ),
    case(
        "inline_secret",
        "default.toml",
        "marketo.client_secret",
        Some(4),
        "must not be written inline",
    ),
    case(
        "inline_crm_password",
        "default.toml",
        "crm.url",
        Some(7),
        "must not be written inline",
    ),
    case(
        "early_watermark",
        "default.toml",
        "bootstrap.low_watermarks.leads",
        Some(13),
        "before 2007-01-01",
    ),
    case(
        "bad_delete_policy",
        "default.toml",
        "sync.lead_deletes",
        Some(11),
        "unknown value `purge`",
    ),
    case(
        "missing_mapping_file",
        "mappings/companies.toml",
        "",
        None,
        "cannot read the mapping file of `companies`",
    ),
    case(
        "bad_toml_mapping",
        "mappings/leads.toml",
        "",
        Some(15),
        "invalid TOML",
    ),
    case(
        "unknown_key_mapping",
        "mappings/leads.toml",
        "fields[1].directon",
        Some(16),
        "did you mean `direction`",
    ),
    case(
        "wrong_type_mapping",
        "mappings/leads.toml",
        "fields[1].transform",
        Some(16),
        "expected a sequence",
    ),
    case(
        "unknown_direction",
        "mappings/leads.toml",
        "fields[1].direction",
        Some(16),
        "unknown value `to_salesforce`",
    ),
    case(
        "duplicate_target",
        "mappings/leads.toml",
        "fields[2].crm",
        Some(20),
        "duplicate target: CRM field `first_name`",
    ),
    case(
        "missing_key",
        "mappings/leads.toml",
        "keys",
        Some(5),
        "`keys.crm_marketo_id` is missing",
    ),
    case(
        "unknown_match_field",
        "mappings/leads.toml",
        "match[0]",
        Some(3),
        "did you mean `email`",
    ),
    case(
        "constant_both_ways",
        "mappings/leads.toml",
        "fields[2].constant",
        Some(21),
        "cannot flow both ways",
    ),
    case(
        "unknown_field",
        "mappings/leads.toml",
        "fields[1].marketo",
        Some(14),
        "unknown Marketo field `frstName` on `lead`; did you mean `firstName`?",
    ),
    case(
        "read_only_target",
        "mappings/leads.toml",
        "fields[2].marketo",
        Some(18),
        "`updatedAt` on `lead` is read-only",
    ),
    case(
        "type_mismatch",
        "mappings/leads.toml",
        "fields[2].crm",
        Some(19),
        "boolean values cannot be written",
    ),
    case(
        "unknown_crm_object",
        "mappings/leads.toml",
        "crm_object",
        Some(2),
        "did you mean `contacts`",
    ),
    case(
        "secret_wrong_type",
        "default.toml",
        "marketo.client_secret",
        Some(4),
        "the value is not shown",
    ),
    case(
        "activity_direction",
        "mappings/activities.toml",
        "activities[0].fields[0].direction",
        Some(10),
        "activities flow to the CRM only",
    ),
    Case {
        name: "missing_secret_file",
        with_secret: false,
        file: "default.toml",
        key: "marketo.client_secret_file",
        line: Some(4),
        reason: "cannot read the secret file",
    },
];

#[test]
fn every_broken_case_gives_one_clear_error() {
    let mut failures = Vec::new();
    for c in CASES {
        let all = problems(c.name, c.with_secret);
        let errors: Vec<&Problem> = all.iter().filter(|p| p.is_error()).collect();
        let ok = errors.len() == 1
            && errors[0].file.ends_with(&format!("{}/{}", c.name, c.file))
            && errors[0].key == c.key
            && errors[0].line == c.line
            && errors[0].reason.contains(c.reason);
        if !ok {
            failures.push(format!("{}: {:#?}", c.name, errors));
        }
        for p in &all {
            assert!(
                !p.to_string().contains(SECRET),
                "{}: secret printed",
                c.name
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_company_field_on_a_lead_is_routed_with_a_warning_not_an_error() {
    let all = problems("company_field_on_lead", true);
    assert!(all.iter().all(|p| !p.is_error()), "{all:#?}");
    assert!(
        all.iter().any(|p| p.key == "fields[2].marketo"
            && p.line == Some(18)
            && p.reason.contains("company field")
            && p.reason.contains("written to that company")),
        "{all:#?}"
    );
}

#[test]
fn the_flag_policy_without_a_flag_column_is_reported() {
    let all = problems("valid", true);
    assert!(
        all.iter().any(|p| !p.is_error()
            && p.file.ends_with("leads.toml")
            && p.reason.contains("`keys.crm_deleted_flag` is not set")),
        "{all:#?}"
    );
}

#[test]
fn the_valid_case_has_warnings_only() {
    let all = problems("valid", true);
    assert!(all.iter().all(|p| !p.is_error()), "{all:#?}");
    assert!(
        all.iter()
            .any(|p| p.reason.contains("required CRM field `last_name`"))
    );
}

#[tokio::test]
async fn validate_prints_every_problem_and_fails() {
    // Two problems in two files at once: both must be printed.
    let dir = tempfile::tempdir().unwrap();
    let case = fixtures().join("unknown_key_mapping");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    let settings = std::fs::read_to_string(case.join("default.toml")).unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        settings.replace(
            "client_id = \"client\"",
            "client_id = \"client\"\nmax_concurrency = 11\nclient_secret_file = \"s\"",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("s"), "x\n").unwrap();
    std::fs::copy(
        case.join("mappings/leads.toml"),
        dir.path().join("mappings/leads.toml"),
    )
    .unwrap();
    let args = ValidateArgs {
        config: dir.path().to_path_buf(),
        schemas: None,
        env: None,
        offline: true,
    };
    let mut out = Vec::new();
    let ok = run_validate(&args, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!ok);
    assert!(text.contains("marketo.max_concurrency"), "{text}");
    assert!(text.contains("fields[1].directon"), "{text}");
    assert!(text.contains("2 error(s)"), "{text}");
}

#[test]
fn files_not_in_sync_objects_are_checked_as_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixtures().join("valid");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::copy(case.join("default.toml"), dir.path().join("default.toml")).unwrap();
    std::fs::copy(
        case.join("mappings/leads.toml"),
        dir.path().join("mappings/leads.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mappings/spare.toml"),
        "marketo_object = \"x\"\ncrm_objet = \"y\"\n",
    )
    .unwrap();
    let mut vars = HashMap::new();
    vars.insert(
        "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
        SECRET.to_owned(),
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(vars);
    let all = marketo_sync::mapping::validate_dir(&source, None);
    assert!(all.iter().all(|p| !p.is_error()), "{all:#?}");
    let spare: Vec<_> = all
        .iter()
        .filter(|p| p.file.ends_with("spare.toml"))
        .collect();
    assert_eq!(spare.len(), 1, "{all:#?}");
    assert_eq!(spare[0].key, "crm_objet");
    assert!(spare[0].reason.contains("not in sync.objects"));
}

#[tokio::test]
async fn suggest_writes_a_mapping_file_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let args = marketo_sync::mapping::SuggestArgs {
        config: dir.path().to_path_buf(),
        schemas: Some(fixtures().join("_schemas")),
        env: None,
        marketo_object: "lead".into(),
        crm_object: "contacts".into(),
        name: Some("leads".into()),
        output: None,
    };
    let mut out = Vec::new();
    let path = marketo_sync::mapping::run_suggest(&args, &mut out)
        .await
        .unwrap();
    assert!(path.ends_with("mappings/leads.suggested.toml"), "{path}");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded =
        marketo_sync::config::parse_mapping("leads", std::path::Path::new(&path), &text).unwrap();
    assert!(
        loaded
            .file
            .fields
            .iter()
            .any(|f| f.marketo.as_deref() == Some("email") && f.crm.as_deref() == Some("email"))
    );
    assert!(loaded.file.fields.iter().any(
        |f| f.marketo.as_deref() == Some("company") && f.crm.as_deref() == Some("account_name")
    ));
    assert!(marketo_sync::config::check_mapping(&loaded).is_empty());

    let missing = marketo_sync::mapping::SuggestArgs {
        crm_object: "contact".into(),
        ..args
    };
    let error = marketo_sync::mapping::run_suggest(&missing, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(error.contains("did you mean `contacts`"), "{error}");
}

#[test]
fn shipped_demo_config_is_valid() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let source = SettingsSource::new(&config, Some("demo")).with_vars(HashMap::new());
    let all = marketo_sync::mapping::validate_dir(&source, None);
    assert!(all.iter().all(|p| !p.is_error()), "{all:#?}");
}

#[test]
fn shipped_default_config_needs_only_the_environment() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let vars: HashMap<String, String> = [
        ("MKSYNC__MARKETO__MUNCHKIN_ID", "123-ABC-456"),
        ("MKSYNC__MARKETO__CLIENT_ID", "client"),
        ("MKSYNC__MARKETO__CLIENT_SECRET", SECRET),
        ("MKSYNC__CRM__URL", "postgres://sync:pw@db/crm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let source = SettingsSource::new(&config, None).with_vars(vars);
    let all = marketo_sync::mapping::validate_dir(&source, None);
    assert!(all.iter().all(|p| !p.is_error()), "{all:#?}");
}

#[test]
fn every_bad_key_of_one_file_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "[marketo]\nmunchkin_id = \"123-ABC-456\"\ncalls_per_20 = 50\nmax_concurrency = \"x\"\n\n[sync]\nobjects = [\"leads\"]\nintervl_secs = 5\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mappings/leads.toml"),
        "marketo_object = \"lead\"\ncrm_objct = \"contacts\"\n\n[[fields]]\nmarketo = \"email\"\ncrm = 5\n",
    )
    .unwrap();
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    let all = marketo_sync::mapping::validate_dir(&source, None);
    let placed: Vec<(String, Option<usize>)> = all
        .iter()
        .map(|p| {
            let file = p.file.rsplit('/').next().unwrap().to_owned();
            (format!("{file} {}", p.key), p.line)
        })
        .collect();
    assert_eq!(
        placed,
        vec![
            ("default.toml marketo.calls_per_20".to_owned(), Some(3)),
            ("default.toml marketo.max_concurrency".to_owned(), Some(4)),
            ("default.toml sync.intervl_secs".to_owned(), Some(8)),
            ("leads.toml crm_objct".to_owned(), Some(2)),
            ("leads.toml fields[0].crm".to_owned(), Some(6)),
        ],
        "{all:#?}"
    );
}

#[test]
fn compile_all_builds_plans_for_synced_objects() {
    let mut vars = HashMap::new();
    vars.insert(
        "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
        SECRET.to_owned(),
    );
    let source = SettingsSource::new(fixtures().join("valid"), None).with_vars(vars);
    let loaded = marketo_sync::config::load(&source).unwrap();
    let (plans, problems) =
        marketo_sync::mapping::compile_all(&loaded.settings, &loaded.mappings, &schemas());
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
    let leads = &plans.objects["leads"];
    assert_eq!(leads.marketo_crm_key, "crmContactId");
    assert_eq!(leads.crm_marketo_id, "marketo_lead_id");
    assert_eq!(leads.match_fields, vec!["email"]);

    let (plans, problems) = marketo_sync::mapping::compile_all(
        &loaded.settings,
        &loaded.mappings,
        &SchemaSet::default(),
    );
    assert!(plans.objects.is_empty());
    assert!(
        problems
            .iter()
            .any(|p| p.is_error() && p.key == "marketo_object")
    );
}
