//! `validate` and `mappings suggest` against the live simulator and a demo CRM on SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use marketo_sync::app::{SuggestArgs, ValidateArgs, run_suggest_with, run_validate_with};
use marketo_sync::config::SettingsSource;
use marketo_sync::sim::demo_crm;
use marketo_sync::sim::{SimConfig, SimHandle, Simulator};
use secrecy::SecretString;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

struct Env {
    sim: SimHandle,
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Env {
    /// Starts the simulator with the demo client, installs the demo CRM, and writes a copy of the
    /// shipped config (demo.toml carries the demo CRM's adapter options) pointing at both.
    async fn new() -> Env {
        let secret = std::fs::read_to_string(shipped().join("demo-secrets/marketo_client_secret"))
            .unwrap()
            .trim()
            .to_owned();
        let sim = Simulator::start(SimConfig {
            leads: 5,
            client_id: "demo-client".into(),
            client_secret: SecretString::from(secret),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
        demo_crm::install(&crm_url, 1, 10).await.unwrap();
        let config = dir.path().join("config");
        copy_dir(&shipped(), &config);

        let mut vars = HashMap::new();
        vars.insert("MKSYNC__MARKETO__BASE_URL".to_owned(), sim.base_url());
        vars.insert("MKSYNC__CRM__URL".to_owned(), crm_url);
        vars.insert(
            "MKSYNC__STORE__URL".to_owned(),
            format!("sqlite://{}", dir.path().join("state.db").display()),
        );
        Env { sim, dir, vars }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn source(&self) -> SettingsSource {
        SettingsSource::new(self.config(), Some("demo")).with_vars(self.vars.clone())
    }

    async fn validate(&self) -> (bool, String) {
        self.validate_with(self.source()).await
    }

    async fn validate_json(&self, source: SettingsSource) -> (bool, serde_json::Value) {
        let args = ValidateArgs {
            config: self.config(),
            env: Some("demo".into()),
            json: true,
            ..ValidateArgs::default()
        };
        let mut out = Vec::new();
        let ok = run_validate_with(&source, &args, &mut out).await.unwrap();
        (ok, serde_json::from_slice(&out).unwrap())
    }

    async fn validate_with(&self, source: SettingsSource) -> (bool, String) {
        let args = ValidateArgs {
            config: self.config(),
            schemas: None,
            env: Some("demo".into()),
            offline: false,
            ..ValidateArgs::default()
        };
        let mut out = Vec::new();
        let ok = run_validate_with(&source, &args, &mut out).await.unwrap();
        (ok, String::from_utf8(out).unwrap())
    }
}

#[tokio::test]
async fn the_shipped_demo_config_validates_against_the_simulator() {
    let env = Env::new().await;
    let (ok, text) = env.validate().await;
    assert!(ok, "{text}");
    assert!(
        text.contains("is valid against live Marketo and CRM schemas and the state store"),
        "{text}"
    );
    // No warning either: the shipped demo config is clean against the live schemas.
    assert!(text.contains("(0 warning(s))"), "{text}");
    assert!(
        !text.contains("error:") && !text.contains("warning:"),
        "{text}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_field_the_simulator_lacks_is_placed_with_a_suggestion() {
    let env = Env::new().await;
    let path = env.config().join("mappings/companies.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // `billingCity` -> `billingCitty`: unknown in Marketo, one letter from a real field.
    let broken = text.replacen("marketo = \"billingCity\"", "marketo = \"billingCitty\"", 1);
    assert_ne!(broken, text);
    std::fs::write(&path, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("billingCitty"))
        .unwrap()
        + 1;
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    // The title names the key and the reason; the location line names file, line and column.
    assert!(
        out.contains("error: fields[") && out.contains("did you mean `billingCity`"),
        "{out}"
    );
    assert!(out.contains(&format!("companies.toml:{line}:")), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    let (_, json) = env.validate_json(env.source()).await;
    let problem = json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["message"].as_str().unwrap().contains("billingCitty"))
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(problem["severity"], "error");
    assert!(
        problem["file"]
            .as_str()
            .unwrap()
            .ends_with("companies.toml")
    );
    assert_eq!(problem["line"], line);
    assert!(
        problem["key"].as_str().unwrap().ends_with("].marketo"),
        "{problem}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_client_secret_is_one_clear_problem() {
    let env = Env::new().await;
    let vars = env.vars.clone();
    // The env var would clash with the secret file of demo.toml, so the file is rewritten.
    std::fs::write(
        env.config().join("demo-secrets/marketo_client_secret"),
        "not-the-secret\n",
    )
    .unwrap();
    let (ok, out) = env
        .validate_with(SettingsSource::new(env.config(), Some("demo")).with_vars(vars))
        .await;
    assert!(!ok, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("marketo.client_secret"), "{out}");
    assert!(errors[0].contains("demo-client"), "{out}");
    assert!(!out.contains("not-the-secret"), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_marketo_names_the_base_url() {
    let env = Env::new().await;
    let mut vars = env.vars.clone();
    // The discard port: nothing listens there, the connection is refused at once.
    vars.insert(
        "MKSYNC__MARKETO__BASE_URL".into(),
        "http://127.0.0.1:9".into(),
    );
    let (ok, out) = env
        .validate_with(SettingsSource::new(env.config(), Some("demo")).with_vars(vars))
        .await;
    assert!(!ok, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("marketo.base_url"), "{out}");
    assert!(errors[0].contains("cannot reach Marketo"), "{out}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn suggest_against_the_simulator_writes_a_mapping_that_validates() {
    let env = Env::new().await;
    let args = SuggestArgs {
        config: env.config(),
        schemas: None,
        env: Some("demo".into()),
        marketo_object: "lead".into(),
        crm_object: "contacts".into(),
        name: Some("leads".into()),
        output: None,
    };
    let mut out = Vec::new();
    let path = run_suggest_with(&env.source(), &args, &mut out)
        .await
        .unwrap();
    assert!(path.ends_with("mappings/leads.suggested.toml"), "{path}");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded = marketo_sync::config::parse_mapping("leads", Path::new(&path), &text).unwrap();
    let pairs: Vec<(Option<&str>, Option<&str>)> = loaded
        .file
        .fields
        .iter()
        .map(|f| (f.marketo.as_deref(), f.crm.as_deref()))
        .collect();
    assert!(pairs.contains(&(Some("email"), Some("email"))), "{pairs:?}");
    assert!(
        pairs.contains(&(Some("firstName"), Some("first_name"))),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&(Some("lastName"), Some("last_name"))),
        "{pairs:?}"
    );

    // It compiles against the same live schemas ...
    let settings = marketo_sync::config::load(&env.source()).unwrap().settings;
    let (schemas, problems) =
        marketo_sync::app::live::fetch_schemas(&settings, std::slice::from_ref(&loaded)).await;
    assert!(problems.is_empty(), "{problems:?}");
    let (plan, problems) = marketo_sync::mapping::compile(
        &loaded,
        schemas
            .get(marketo_sync::model::Side::Marketo, "lead")
            .unwrap(),
        schemas
            .get(marketo_sync::model::Side::Crm, "contacts")
            .unwrap(),
    );
    assert!(plan.is_some(), "{problems:#?}");
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");

    // ... and `validate` passes with it in place of the shipped leads mapping.
    std::fs::rename(&path, env.config().join("mappings/leads.toml")).unwrap();
    let (ok, out) = env.validate().await;
    assert!(ok, "{out}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn offline_reads_no_schema() {
    let env = Env::new().await;
    let mut vars = env.vars.clone();
    vars.insert(
        "MKSYNC__MARKETO__BASE_URL".into(),
        "http://127.0.0.1:9".into(),
    );
    let args = ValidateArgs {
        config: env.config(),
        schemas: None,
        env: Some("demo".into()),
        offline: true,
        ..ValidateArgs::default()
    };
    let mut out = Vec::new();
    let source = SettingsSource::new(env.config(), Some("demo")).with_vars(vars);
    let ok = run_validate_with(&source, &args, &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("is valid offline"), "{out}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_store_migrated_by_a_newer_build_is_a_problem_not_a_crash() {
    let env = Env::new().await;
    let path = env.dir.path().join("newer.db");
    let url = format!("sqlite://{}", path.display());
    // A store this build migrated, then moved on by an imaginary newer build.
    drop(marketo_sync::store::open(&url).await.unwrap());
    {
        use sqlx::ConnectOptions;
        use std::str::FromStr;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'future', TRUE, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let mut vars = env.vars.clone();
    vars.insert("MKSYNC__STORE__URL".into(), url);
    let source = SettingsSource::new(env.config(), Some("demo")).with_vars(vars);
    let (ok, json) = env.validate_json(source).await;
    assert!(!ok);
    let errors: Vec<&serde_json::Value> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{json:#}");
    assert_eq!(errors[0]["key"], "store.url");
    assert_eq!(errors[0]["file"], "environment (MKSYNC__STORE__URL)");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("migrated to version 99"), "{message}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_store_is_named_without_its_password() {
    let env = Env::new().await;
    let mut vars = env.vars.clone();
    // Nothing listens on port 9 (discard): refused at once.
    vars.insert(
        "MKSYNC__STORE__URL".into(),
        "postgres://sync:hunter2@127.0.0.1:9/state".into(),
    );
    let source = SettingsSource::new(env.config(), Some("demo")).with_vars(vars);
    let (ok, out) = env.validate_with(source).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "store.url: cannot open the PostgreSQL state store: cannot connect to 127.0.0.1:9"
        ),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn one_live_pass_shows_settings_and_crm_problems_even_without_the_marketo_secret() {
    let env = Env::new().await;
    let demo = env.config().join("demo.toml");
    let text = std::fs::read_to_string(&demo).unwrap();
    let broken = text
        .replace(
            "client_secret_file = \"demo-secrets/marketo_client_secret\"\n",
            "",
        )
        .replace("calls_per_20s = 100", "calls_per_20 = 100");
    assert_ne!(broken, text);
    std::fs::write(&demo, broken).unwrap();
    let leads = env.config().join("mappings/leads.toml");
    let text = std::fs::read_to_string(&leads).unwrap();
    let broken = text
        .replace("crm = \"first_name\"", "crm = \"frist_name\"")
        .replace(
            "crm_marketo_id = \"marketo_id\"",
            "crm_marketo_id = \"deleted_in_marketo\"",
        );
    std::fs::write(&leads, &broken).unwrap();

    let (ok, json) = env.validate_json(env.source()).await;
    assert!(!ok);
    let errors: Vec<(String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["severity"] == "error")
        .map(|p| {
            let file = p["file"].as_str().unwrap().rsplit('/').next().unwrap();
            (file.to_owned(), p["key"].as_str().unwrap().to_owned())
        })
        .collect();
    let has = |file: &str, key: &str| errors.iter().any(|(f, k)| f == file && k == key);
    assert!(has("demo.toml", "marketo.calls_per_20"), "{json:#}");
    assert!(has("demo.toml", "marketo.client_secret"), "{json:#}");
    // Marketo cannot be read without the secret, but the CRM side is still checked.
    assert!(has("leads.toml", "keys.crm_marketo_id"), "{json:#}");
    assert!(
        errors
            .iter()
            .any(|(f, k)| f == "leads.toml" && k.starts_with("fields[") && k.ends_with("].crm")),
        "{json:#}"
    );
    let key = json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "keys.crm_marketo_id")
        .unwrap();
    assert!(
        key["message"].as_str().unwrap().contains("boolean"),
        "{key:#}"
    );
    assert_eq!(errors.len(), 4, "{json:#}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_custom_activity_type_or_attribute_names_the_mapping_file() {
    let env = Env::new().await;
    let path = env.config().join("mappings/chat_events.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The shipped file validates against the simulator's chatConversation_c type.
    let (ok, out) = env.validate().await;
    assert!(ok, "{out}");
    // An unknown type.
    std::fs::write(
        &path,
        text.replace("\"chatConversation_c\"", "\"chatConvo_c\""),
    )
    .unwrap();
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("chat_events.toml")
            && out.contains("custom_activity.api_name")
            && out.contains("chatConvo_c"),
        "{out}"
    );
    // An attribute the type does not have.
    std::fs::write(
        &path,
        text.replace("marketo = \"transcript\"", "marketo = \"transcrpt\""),
    )
    .unwrap();
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("chat_events.toml")
            && out.contains("transcrpt")
            && out.contains("did you mean `transcript`"),
        "{out}"
    );
    // An event id attribute the type does not have.
    std::fs::write(&path, text.replace("\"eventId\"", "\"conversationId\"")).unwrap();
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("custom_activity.event_id_attribute") && out.contains("exactly-once"),
        "{out}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_static_list_name_names_the_mapping_file() {
    let env = Env::new().await;
    let demo = env.config().join("demo.toml");
    let text = std::fs::read_to_string(&demo).unwrap();
    std::fs::write(
        &demo,
        text.replace("\"chat_events\"]", "\"chat_events\", \"static_lists\"]"),
    )
    .unwrap();
    // The shipped file names the simulator's lists.
    let (ok, out) = env.validate().await;
    assert!(ok, "{out}");
    let path = env.config().join("mappings/static_lists.toml");
    let lists = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, lists.replace("\"Newsletter\"", "\"Newsleter\"")).unwrap();
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("static_lists.toml")
            && out.contains("lists.names[0]")
            && out.contains("Newsleter")
            && out.contains("did you mean `Newsletter`"),
        "{out}"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_status_map_entry_the_channel_does_not_have_names_the_mapping_file() {
    let env = Env::new().await;
    // The shipped program members file maps statuses the simulator's channels have.
    let (ok, out) = env.validate().await;
    assert!(ok, "{out}");
    let path = env.config().join("mappings/program_members.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("marketo = \"Registered\""));
    std::fs::write(
        &path,
        text.replace("marketo = \"Registered\"", "marketo = \"Registred\""),
    )
    .unwrap();
    let (ok, out) = env.validate().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("program_members.toml") && out.contains("Registred"),
        "{out}"
    );
    env.sim.shutdown().await;
}
