//! Layered settings with an injected environment; secrets never printed.

use std::collections::HashMap;
use std::path::Path;

use marketo_sync::config::{ConfigError, DeletePolicy, SettingsSource, load, load_settings};
use secrecy::ExposeSecret;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const DEFAULT: &str = r#"
[marketo]
munchkin_id = "123-ABC-456"
client_id = "client"
calls_per_20s = 80

[crm]
adapter = "sql"
url = "sqlite://crm.db"
[crm.options.objects.contacts]
table = "Contacts"
modifiedColumn = "updatedAt"

[sync]
objects = ["leads"]
"#;

const LEADS: &str = r#"
marketo_object = "lead"
crm_object = "contacts"
[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_lead_id"
[[fields]]
marketo = "email"
crm = "email"
"#;

fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "default.toml", DEFAULT);
    write(
        dir.path(),
        "production.toml",
        "[marketo]\ncalls_per_20s = 60\n[sync]\nlead_deletes = \"delete\"\n",
    );
    write(dir.path(), "mappings/leads.toml", LEADS);
    write(
        dir.path(),
        "mappings/companies.toml",
        &LEADS.replace("\"lead\"", "\"company\""),
    );
    write(dir.path(), "secrets/webhook", "hook-secret-from-file\n");
    dir
}

#[test]
fn layers_apply_in_order_default_env_file_environment() {
    let dir = config_dir();
    let base = vars(&[("MKSYNC__MARKETO__CLIENT_SECRET", "env-secret")]);

    let source = SettingsSource::new(dir.path(), None).with_vars(base.clone());
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(s.marketo.calls_per_20s, 80);
    assert_eq!(s.sync.lead_deletes, DeletePolicy::Flag);
    assert_eq!(s.sync.interval_secs, 300, "code default");
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        s.store.url.expose_secret(),
        "sqlite://state/marketo-sync.db"
    );

    let source = SettingsSource::new(dir.path(), Some("production")).with_vars(base.clone());
    let s = load_settings(&source).0.unwrap();
    assert_eq!(s.marketo.calls_per_20s, 60);
    assert_eq!(s.sync.lead_deletes, DeletePolicy::Delete);

    let mut env = base;
    env.insert("MKSYNC__MARKETO__CALLS_PER_20S".into(), "40".into());
    env.insert("MKSYNC__SYNC__OBJECTS".into(), "leads, companies".into());
    env.insert("MKSYNC__MARKETO__CLIENT_ID".into(), "007".into());
    env.insert("UNRELATED".into(), "x".into());
    let source = SettingsSource::new(dir.path(), Some("production")).with_vars(env);
    let s = load_settings(&source).0.unwrap();
    assert_eq!(s.marketo.calls_per_20s, 40);
    assert_eq!(s.sync.objects, vec!["leads", "companies"]);
    assert_eq!(
        s.marketo.client_id.as_deref(),
        Some("007"),
        "strings stay strings"
    );
    assert_eq!(
        s.marketo.client_secret.as_ref().unwrap().expose_secret(),
        "env-secret"
    );
    assert_eq!(
        s.marketo.rest_base_url().unwrap(),
        "https://123-ABC-456.mktorest.com"
    );
}

#[test]
fn adapter_options_pass_through_untouched() {
    let dir = config_dir();
    let source = SettingsSource::new(dir.path(), None)
        .with_vars(vars(&[("MKSYNC__MARKETO__CLIENT_SECRET", "x")]));
    let s = load_settings(&source).0.unwrap();
    assert_eq!(s.crm.options["objects"]["contacts"]["table"], "Contacts");
    assert_eq!(
        s.crm.options["objects"]["contacts"]["modifiedColumn"],
        "updatedAt"
    );
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = config_dir();
    write(
        dir.path(),
        "production.toml",
        "[http]\nwebhook_secret_file = \"secrets/webhook\"\n",
    );
    let source = SettingsSource::new(dir.path(), Some("production")).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "client-secret-value"),
        ("MKSYNC__CRM__URL", "postgres://sync:crm-password@db/crm"),
        (
            "MKSYNC__STORE__URL",
            "postgres://state:store-password@db/state",
        ),
    ]));
    let loaded = load(&source).unwrap();
    let s = &loaded.settings;
    assert_eq!(
        s.http.webhook_secret.as_ref().unwrap().expose_secret(),
        "hook-secret-from-file"
    );
    let debug = format!("{loaded:?}");
    for secret in [
        "client-secret-value",
        "crm-password",
        "store-password",
        "hook-secret-from-file",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked in Debug");
    }
    assert_eq!(loaded.mappings.len(), 1);
}

#[test]
fn unknown_environment_variables_are_named_with_a_suggestion() {
    let dir = config_dir();
    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "x"),
        ("MKSYNC__MARKETO__CALS_PER_20S", "50"),
    ]));
    let (settings, problems) = load_settings(&source);
    assert!(settings.is_none());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].file, "environment");
    assert_eq!(problems[0].key, "MKSYNC__MARKETO__CALS_PER_20S");
    assert!(
        problems[0]
            .reason
            .contains("MKSYNC__MARKETO__CALLS_PER_20S")
    );
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let dir = config_dir();
    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "x"),
        ("MKSYNC__MARKETO__MAX_CONCURRENCY", "lots"),
    ]));
    let (_, problems) = load_settings(&source);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "MKSYNC__MARKETO__MAX_CONCURRENCY");
}

#[test]
fn load_reports_every_error_at_once() {
    let dir = config_dir();
    write(
        dir.path(),
        "default.toml",
        &DEFAULT.replace(
            "calls_per_20s = 80",
            "calls_per_20s = 0\nmax_concurrency = 50",
        ),
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    let error = load(&source).unwrap_err();
    let ConfigError::Invalid(problems) = &error;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"marketo.calls_per_20s"), "{keys:?}");
    assert!(keys.contains(&"marketo.max_concurrency"), "{keys:?}");
    assert!(keys.contains(&"marketo.client_secret"), "{keys:?}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("marketo.max_concurrency"));
}

#[test]
fn the_lead_list_comes_from_a_file_or_the_environment_and_two_lists_name_both_keys() {
    use marketo_sync::marketo::bulk_extract::LeadList;
    let dir = config_dir();
    write(
        dir.path(),
        "production.toml",
        "[bootstrap]\nstatic_list_name = \"Newsletter\"\n",
    );
    let source = SettingsSource::new(dir.path(), Some("production"))
        .with_vars(vars(&[("MKSYNC__MARKETO__CLIENT_SECRET", "x")]));
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(
        s.bootstrap.lead_list(),
        Ok(Some(LeadList::StaticName("Newsletter".into())))
    );

    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "x"),
        ("MKSYNC__BOOTSTRAP__SMART_LIST_ID", "7"),
    ]));
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(s.bootstrap.lead_list(), Ok(Some(LeadList::SmartId(7))));

    // The file names a static list, the environment a smart list: one error naming both.
    let source = SettingsSource::new(dir.path(), Some("production")).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "x"),
        ("MKSYNC__BOOTSTRAP__SMART_LIST_ID", "7"),
    ]));
    let error = load(&source).unwrap_err();
    let ConfigError::Invalid(problems) = &error;
    let lists: Vec<_> = problems
        .iter()
        .filter(|p| p.key.starts_with("bootstrap."))
        .collect();
    assert_eq!(lists.len(), 1, "{problems:#?}");
    assert_eq!(lists[0].key, "bootstrap.static_list_name");
    assert!(lists[0].file.ends_with("production.toml"), "{:?}", lists[0]);
    assert!(
        lists[0].reason.contains("bootstrap.static_list_name")
            && lists[0].reason.contains("bootstrap.smart_list_id"),
        "{}",
        lists[0].reason
    );
}

#[test]
fn retry_delays_come_from_the_settings_and_are_checked() {
    let dir = config_dir();
    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "s"),
        ("MKSYNC__MARKETO__RETRY_MIN_DELAY_MS", "2"),
        ("MKSYNC__MARKETO__RETRY_MAX_DELAY_MS", "7"),
        ("MKSYNC__MARKETO__RATE_LIMIT_WAIT_MS", "9"),
    ]));
    let (settings, problems) = load_settings(&source);
    let policy = settings
        .unwrap_or_else(|| panic!("{problems:?}"))
        .marketo
        .retry_policy();
    assert_eq!(policy.min_delay, std::time::Duration::from_millis(2));
    assert_eq!(policy.max_delay, std::time::Duration::from_millis(7));
    assert_eq!(policy.rate_limit_wait, std::time::Duration::from_millis(9));

    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__RETRY_MIN_DELAY_MS", "8"),
        ("MKSYNC__MARKETO__RETRY_MAX_DELAY_MS", "7"),
        ("MKSYNC__MARKETO__RATE_LIMIT_WAIT_MS", "0"),
    ]));
    let (settings, problems) = load_settings(&source);
    assert!(settings.is_none());
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"marketo.retry_min_delay_ms"), "{keys:?}");
    assert!(keys.contains(&"marketo.rate_limit_wait_ms"), "{keys:?}");
}

#[test]
fn watermarks_accept_dates_and_instants() {
    let dir = config_dir();
    write(
        dir.path(),
        "production.toml",
        "[sync]\nobjects = [\"leads\", \"companies\"]\n[bootstrap.low_watermarks]\nleads = 2015-01-01\ncompanies = \"2016-02-03T04:05:06+01:00\"\n",
    );
    let source = SettingsSource::new(dir.path(), Some("production"))
        .with_vars(vars(&[("MKSYNC__MARKETO__CLIENT_SECRET", "x")]));
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(
        s.bootstrap.low_watermark("leads").to_rfc3339(),
        "2015-01-01T00:00:00+00:00"
    );
    assert_eq!(
        s.bootstrap.low_watermark("companies").to_rfc3339(),
        "2016-02-03T03:05:06+00:00"
    );
    assert_eq!(
        s.bootstrap.low_watermark("other").to_rfc3339(),
        "2007-01-01T00:00:00+00:00"
    );
}

#[test]
fn an_unknown_key_does_not_hide_the_other_problems() {
    let dir = config_dir();
    write(
        dir.path(),
        "default.toml",
        &DEFAULT.replace(
            "calls_per_20s = 80",
            "calls_per_20 = 80\n  max_concurrency = 50",
        ),
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    let (settings, problems) = marketo_sync::config::check_settings(&source);
    assert!(settings.is_some(), "the rest of the settings is still read");
    let placed: Vec<(&str, Option<usize>, Option<usize>)> = problems
        .iter()
        .map(|p| (p.key.as_str(), p.line, p.column))
        .collect();
    // The unknown key, the value out of range (indented: column 3) and the missing secret.
    assert!(
        placed.contains(&("marketo.calls_per_20", Some(5), Some(1))),
        "{placed:?}"
    );
    assert!(
        placed.contains(&("marketo.max_concurrency", Some(6), Some(3))),
        "{placed:?}"
    );
    assert!(
        placed.iter().any(|(k, _, _)| *k == "marketo.client_secret"),
        "{placed:?}"
    );
    // The strict loader refuses the same settings, with every problem.
    let error = load(&source).unwrap_err();
    for p in &problems {
        assert!(error.problems().contains(p), "{p:?} missing from {error}");
    }
}

#[test]
fn config_errors_render_as_diagnostics_with_a_caret() {
    let dir = config_dir();
    write(
        dir.path(),
        "default.toml",
        &DEFAULT.replace("calls_per_20s = 80", "calls_per_20s = 500"),
    );
    let source = SettingsSource::new(dir.path(), None)
        .with_vars(vars(&[("MKSYNC__MARKETO__CLIENT_SECRET", "never-shown")]));
    let error = load(&source).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("error: marketo.calls_per_20s: must be between 1 and 100"),
        "{text}"
    );
    assert!(text.contains("default.toml:5:1"), "{text}");
    assert!(text.contains("calls_per_20s = 500"), "{text}");
    assert!(text.contains("^^^^^^^^^^^^^^^^^^^"), "{text}");
    assert!(!text.contains("never-shown"), "{text}");
}

#[test]
fn an_inline_secret_is_never_shown_in_the_snippet() {
    let dir = config_dir();
    write(
        dir.path(),
        "default.toml",
        &DEFAULT.replace(
            "client_id = \"client\"",
            "client_id = \"client\"\nclient_secret = \"inline-s3cret\"",
        ),
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    let error = load(&source).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("must not be written inline"), "{text}");
    assert!(text.contains("client_secret = "), "{text}");
    assert!(!text.contains("inline-s3cret"), "{text}");
}

#[test]
fn the_store_loader_needs_no_marketo_or_crm_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // No client id, no secret, no CRM URL: only a store.
    write(
        dir.path(),
        "default.toml",
        "[marketo]\nmunchkin_id = \"123-ABC-456\"\n\n[store]\nurl = \"sqlite://state.db\"\n\n[sync]\nobjects = [\"leads\"]\n",
    );
    let source = SettingsSource::new(dir.path(), None).with_vars(HashMap::new());
    assert!(
        load(&source).is_err(),
        "the full loader wants the credentials"
    );
    let settings = marketo_sync::config::load_for_store(&source).unwrap();
    assert_eq!(settings.store.url.expose_secret(), "sqlite://state.db");

    // A broken store setting is still refused, and named.
    write(dir.path(), "default.toml", "[store]\nurl = \"mysql://x\"\n");
    let error = marketo_sync::config::load_for_store(&source).unwrap_err();
    let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["store.url"], "{error}");
}

#[test]
fn status_reads_the_store_without_marketo_or_crm_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.db");
    write(
        dir.path(),
        "default.toml",
        &format!(
            "[marketo]\nmunchkin_id = \"123-ABC-456\"\n\n[store]\nurl = \"sqlite://{}\"\n\n[sync]\nobjects = [\"leads\"]\n",
            store.display()
        ),
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
    command
        .args(["status", "--config"])
        .arg(dir.path())
        .env_remove("MKSYNC_ENV")
        .env("NO_COLOR", "1");
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("MKSYNC__")) {
        command.env_remove(name);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("lease"), "{stdout}");
    assert!(!stderr.contains("client_secret"), "{stderr}");
}

#[test]
fn the_import_format_is_read_from_the_environment_and_a_bad_one_names_the_key() {
    let dir = config_dir();
    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "s"),
        ("MKSYNC__MARKETO__IMPORT_FORMAT", "tsv"),
        ("MKSYNC__MARKETO__BULK_IMPORT_THRESHOLD", "5000"),
    ]));
    let (s, p) = load_settings(&source);
    let s = s.unwrap_or_else(|| panic!("{p:#?}"));
    assert_eq!(
        s.marketo.import_format,
        marketo_sync::marketo::csv::FileFormat::Tsv
    );
    assert_eq!(s.marketo.bulk_import_threshold, 5000);

    let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
        ("MKSYNC__MARKETO__CLIENT_SECRET", "s"),
        ("MKSYNC__MARKETO__IMPORT_FORMAT", "xlsx"),
    ]));
    let (s, p) = load_settings(&source);
    assert!(s.is_none());
    let text = format!("{p:?}");
    assert!(text.contains("MKSYNC__MARKETO__IMPORT_FORMAT"), "{text}");
    assert!(text.contains("unknown value `xlsx`"), "{text}");
    assert!(text.contains("xlsx"), "{text}");
}

/// Every setting `config/default.toml` sets (the documented defaults) can also come from its
/// `MKSYNC__SECTION__KEY` variable: the environment's list of known names cannot fall behind a
/// new setting (it had, for `sync.programs_browse_secs` and `sync.marketo_schema_ttl_secs`).
#[test]
fn every_documented_setting_is_accepted_from_the_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let documented: toml::Table = text.parse().unwrap();
    let mut checked = 0;
    for (section, table) in &documented {
        let Some(table) = table.as_table() else {
            continue;
        };
        for (key, value) in table {
            // Nested tables (bootstrap.low_watermarks) are free-form.
            let raw = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => continue,
            };
            let name = format!("MKSYNC__{}__{}", section.to_uppercase(), key.to_uppercase());
            let dir = config_dir();
            let source = SettingsSource::new(dir.path(), None).with_vars(vars(&[
                ("MKSYNC__MARKETO__CLIENT_SECRET", "x"),
                (name.as_str(), raw.as_str()),
            ]));
            let (settings, problems) = load_settings(&source);
            assert!(
                problems.is_empty() && settings.is_some(),
                "{name}={raw}: {problems:#?}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} settings in {}",
        path.display()
    );
}
