//! The broken-input corpus: each case under `tests/fixtures/config/<case>/` holds one mistake and
//! must produce exactly one error naming its file, key, line (where TOML gives one) and reason.

use std::collections::HashMap;
use std::path::PathBuf;

use marketo_sync::app::{ValidateArgs, run_validate};
use marketo_sync::config::{Problem, SettingsSource};
use marketo_sync::mapping::SchemaSet;

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
    marketo_sync::app::validate_dir(&source, Some(&schemas()))
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
        ..ValidateArgs::default()
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
    let all = marketo_sync::app::validate_dir(&source, None);
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
    let args = marketo_sync::app::SuggestArgs {
        config: dir.path().to_path_buf(),
        schemas: Some(fixtures().join("_schemas")),
        env: None,
        marketo_object: "lead".into(),
        crm_object: "contacts".into(),
        name: Some("leads".into()),
        output: None,
    };
    let mut out = Vec::new();
    let path = marketo_sync::app::run_suggest(&args, &mut out)
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

    let missing = marketo_sync::app::SuggestArgs {
        crm_object: "contact".into(),
        ..args
    };
    let error = marketo_sync::app::run_suggest(&missing, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(error.contains("did you mean `contacts`"), "{error}");
}

#[test]
fn shipped_demo_config_is_valid() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let source = SettingsSource::new(&config, Some("demo")).with_vars(HashMap::new());
    let all = marketo_sync::app::validate_dir(&source, None);
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
    let all = marketo_sync::app::validate_dir(&source, None);
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
    let all = marketo_sync::app::validate_dir(&source, None);
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
            // The unknown keys do not stop the other checks: the missing settings are
            // reported in the same pass (placed on their table, `[marketo]`, when it exists).
            ("default.toml marketo.client_id".to_owned(), Some(1)),
            ("default.toml marketo.client_secret".to_owned(), Some(1)),
            ("default.toml crm.url".to_owned(), None),
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

/// A config dir with an unknown settings key, no Marketo secret, and a mapping whose CRM field
/// does not exist: three problems of three kinds that used to take three runs to see.
fn three_problems() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let valid = fixtures().join("valid");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    let settings = std::fs::read_to_string(valid.join("default.toml")).unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        settings.replace(
            "client_id = \"client\"",
            "client_id = \"client\"\ncalls_per_20 = 50",
        ),
    )
    .unwrap();
    let leads = std::fs::read_to_string(valid.join("mappings/leads.toml")).unwrap();
    std::fs::write(
        dir.path().join("mappings/leads.toml"),
        leads.replace("crm = \"first_name\"", "crm = \"frst_name\""),
    )
    .unwrap();
    dir
}

async fn validate_json(dir: &std::path::Path, deny_warnings: bool) -> (bool, serde_json::Value) {
    let args = ValidateArgs {
        config: dir.to_path_buf(),
        schemas: Some(fixtures().join("_schemas")),
        json: true,
        deny_warnings,
        ..ValidateArgs::default()
    };
    let source = SettingsSource::new(dir, None).with_vars(HashMap::new());
    let mut out = Vec::new();
    let ok = marketo_sync::app::run_validate_with(&source, &args, &mut out)
        .await
        .unwrap();
    (ok, serde_json::from_slice(&out).unwrap())
}

#[tokio::test]
async fn one_pass_reports_an_unknown_key_a_missing_secret_and_a_bad_mapping() {
    let dir = three_problems();
    let (ok, json) = validate_json(dir.path(), false).await;
    assert!(!ok);
    let errors: Vec<(String, String, Option<u64>)> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["severity"] == "error")
        .map(|p| {
            let file = p["file"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            (
                file,
                p["key"].as_str().unwrap().to_owned(),
                p["line"].as_u64(),
            )
        })
        .collect();
    let leads = std::fs::read_to_string(dir.path().join("mappings/leads.toml")).unwrap();
    let frst = leads.lines().position(|l| l.contains("frst_name")).unwrap() + 1;
    let settings = std::fs::read_to_string(dir.path().join("default.toml")).unwrap();
    let unknown = settings
        .lines()
        .position(|l| l.contains("calls_per_20 "))
        .unwrap()
        + 1;
    assert!(
        errors.contains(&(
            "default.toml".into(),
            "marketo.calls_per_20".into(),
            Some(unknown as u64)
        )),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, k, _)| f == "default.toml" && k == "marketo.client_secret"),
        "{errors:#?}"
    );
    assert!(
        errors.contains(&(
            "leads.toml".into(),
            "fields[1].crm".into(),
            Some(frst as u64)
        )),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[tokio::test]
async fn json_output_has_one_object_per_problem_errors_first() {
    let dir = three_problems();
    let (_, json) = validate_json(dir.path(), false).await;
    let problems = json.as_array().unwrap();
    assert!(problems.len() > 3, "warnings too: {json:#}");
    let mut seen_warning = false;
    for p in problems {
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "severity", "file", "line", "column", "key", "message", "help"
            ],
            "{p:#}"
        );
        match p["severity"].as_str().unwrap() {
            "error" => assert!(!seen_warning, "an error after a warning: {json:#}"),
            "warning" => seen_warning = true,
            other => panic!("severity {other}"),
        }
    }
    let unknown = problems
        .iter()
        .find(|p| p["key"] == "marketo.calls_per_20")
        .unwrap();
    assert_eq!(unknown["column"], 1);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `calls_per_20s`")
    );
    assert!(
        unknown["help"]
            .as_str()
            .unwrap()
            .contains("valid keys here")
    );
}

#[tokio::test]
async fn deny_warnings_fails_on_warnings_only() {
    // The valid case has warnings (an unmapped required field) but no error.
    let dir = tempfile::tempdir().unwrap();
    let valid = fixtures().join("valid");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::copy(valid.join("default.toml"), dir.path().join("default.toml")).unwrap();
    std::fs::copy(
        valid.join("mappings/leads.toml"),
        dir.path().join("mappings/leads.toml"),
    )
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "x\n").unwrap();
    let settings = std::fs::read_to_string(dir.path().join("default.toml")).unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        settings.replace(
            "client_id = \"client\"",
            "client_id = \"client\"\nclient_secret_file = \"secret\"",
        ),
    )
    .unwrap();
    let (ok, json) = validate_json(dir.path(), false).await;
    assert!(ok, "{json:#}");
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|p| p["severity"] == "warning")
    );
    let (ok, _) = validate_json(dir.path(), true).await;
    assert!(!ok);

    // The command line: 0, then 1 with --deny-warnings, and 2 for a usage error.
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .arg("validate")
            .arg("--config")
            .arg(dir.path())
            .arg("--schemas")
            .arg(fixtures().join("_schemas"))
            .args(extra)
            .env_remove("MKSYNC_ENV")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let plain = run(&[]);
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(stdout.contains("warning: "), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "no colour when piped: {stdout}");
    assert_eq!(run(&["--deny-warnings"]).status.code(), Some(1));
    assert_eq!(run(&["--no-such-flag"]).status.code(), Some(2));
}

#[tokio::test]
async fn diagnostics_show_file_line_column_and_a_caret() {
    let dir = three_problems();
    let args = ValidateArgs {
        config: dir.path().to_path_buf(),
        schemas: Some(fixtures().join("_schemas")),
        ..ValidateArgs::default()
    };
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    let mut out = Vec::new();
    marketo_sync::app::run_validate_with(&source, &args, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let settings = std::fs::read_to_string(dir.path().join("default.toml")).unwrap();
    let unknown = settings
        .lines()
        .position(|l| l.contains("calls_per_20 "))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("default.toml:{unknown}:1")),
        "{text}"
    );
    assert!(text.contains("calls_per_20 = 50"), "{text}");
    assert!(text.contains("^^^^^^^^^^^^"), "{text}");
    // Errors come before warnings.
    let last_error = text.rfind("\nerror: ").unwrap_or(0);
    let first_warning = text.find("warning: ").unwrap();
    assert!(last_error < first_warning, "{text}");
    assert!(text.contains("3 error(s)"), "{text}");
}

#[tokio::test]
async fn the_shipped_configs_validate_offline_with_no_warning() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let args = ValidateArgs {
        config: config.clone(),
        offline: true,
        ..ValidateArgs::default()
    };
    // The demo environment as shipped, and the production default with its credentials.
    let demo = SettingsSource::new(&config, Some("demo")).with_vars(HashMap::new());
    let problems = marketo_sync::app::collect_problems(&demo, &args).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let vars: HashMap<String, String> = [
        ("MKSYNC__MARKETO__MUNCHKIN_ID", "123-ABC-456"),
        ("MKSYNC__MARKETO__CLIENT_ID", "client"),
        ("MKSYNC__MARKETO__CLIENT_SECRET", SECRET),
        ("MKSYNC__CRM__URL", "postgres://sync:pw@db/crm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let default = SettingsSource::new(&config, None).with_vars(vars);
    let problems = marketo_sync::app::collect_problems(&default, &args).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_broken_field_does_not_hide_the_schema_checks_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let valid = fixtures().join("valid");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::copy(valid.join("default.toml"), dir.path().join("default.toml")).unwrap();
    let leads = std::fs::read_to_string(valid.join("mappings/leads.toml")).unwrap();
    // fields[0] has an unknown key; fields[1] names a CRM column that does not exist.
    let broken = leads
        .replacen(
            "crm = \"email\"",
            "crm = \"email\"\ndirecton = \"to_crm\"",
            1,
        )
        .replace("crm = \"first_name\"", "crm = \"frst_name\"");
    std::fs::write(dir.path().join("mappings/leads.toml"), &broken).unwrap();
    let mut vars = HashMap::new();
    vars.insert(
        "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
        SECRET.to_owned(),
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(vars);
    let all = marketo_sync::app::validate_dir(&source, Some(&schemas()));
    let errors: Vec<(&str, Option<usize>)> = all
        .iter()
        .filter(|p| p.is_error())
        .map(|p| (p.key.as_str(), p.line))
        .collect();
    let line = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(
        errors,
        [
            ("fields[0].directon", Some(line("directon"))),
            ("fields[1].crm", Some(line("frst_name"))),
        ],
        "{all:#?}"
    );
}
