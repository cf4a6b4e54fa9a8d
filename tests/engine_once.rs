//! `sync --once` on the shipped demo configuration, against the simulator and the demo CRM.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use marketo_sync::config::SettingsSource;
use marketo_sync::engine::CycleSummary;
use marketo_sync::engine::once::run_once_with;
use marketo_sync::engine::summary::PlannedAction;
use marketo_sync::sim::{SimConfig, Simulator, demo_crm};
use marketo_sync::store::{Direction, ErrorFilter, StateStore};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

fn lead(email: &str, first_name: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut v = serde_json::Map::new();
    v.insert("email".into(), serde_json::json!(email));
    v.insert("firstName".into(), serde_json::json!(first_name));
    v
}

/// Asserts that every object's created, updated, deleted and waiting counts are those of the
/// plan's rows (one per record), and returns the number of rows.
fn assert_counts_match_the_plan(s: &CycleSummary) -> usize {
    let mut expected: BTreeMap<(String, Direction), [u64; 4]> = BTreeMap::new();
    for p in &s.plan {
        let e = expected.entry((p.object.clone(), p.direction)).or_default();
        let i = match p.action {
            PlannedAction::Create => 0,
            PlannedAction::Update | PlannedAction::Repoint | PlannedAction::Convert => 1,
            PlannedAction::Delete | PlannedAction::FlagDeleted | PlannedAction::Merge => 2,
            PlannedAction::WaitsForParent => 3,
        };
        e[i] += 1;
    }
    for (object, dirs) in &s.objects {
        for (d, c) in dirs {
            let want = expected.remove(&(object.clone(), *d)).unwrap_or_default();
            assert_eq!(
                [c.created, c.updated, c.deleted, c.waiting],
                want,
                "{object} {d:?}: counts {c:?} differ from the plan"
            );
        }
    }
    assert!(
        expected.is_empty(),
        "plan rows without counts: {expected:?}"
    );
    s.plan.len()
}

async fn setup() -> (
    marketo_sync::sim::SimHandle,
    tempfile::TempDir,
    SettingsSource,
) {
    let sim = Simulator::start(SimConfig {
        leads: 3,
        client_id: "demo-client".into(),
        client_secret: SecretString::from("demo-client-secret"),
        export_delay: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crm_url = format!("sqlite://{}", dir.path().join("crm.db").display());
    demo_crm::install(&crm_url, 3, 4).await.unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("state.db").display());
    let vars = HashMap::from([
        ("MKSYNC__MARKETO__BASE_URL".to_owned(), sim.base_url()),
        ("MKSYNC__CRM__URL".to_owned(), crm_url),
        ("MKSYNC__STORE__URL".to_owned(), store_url),
    ]);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let source = SettingsSource::new(config, Some("demo")).with_vars(vars);
    (sim, dir, source)
}

#[tokio::test]
async fn sync_once_on_the_demo_config_syncs_leads_and_reports_json() {
    let (sim, _dir, source) = setup().await;
    // Generated leads have no activities (only bootstrap loads them); these two do.
    for email in ["one@example.com", "two@example.com"] {
        let mut v = serde_json::Map::new();
        v.insert("email".into(), serde_json::json!(email));
        sim.create_lead(v);
    }
    let cancel = CancellationToken::new();
    let dry = run_once_with(&source, true, &cancel).await.unwrap();
    assert!(dry.dry_run);
    assert!(!dry.plan.is_empty(), "the dry run lists its writes");
    assert_eq!(
        sim.counters().leads,
        5,
        "the dry run wrote nothing to Marketo"
    );

    let s = run_once_with(&source, false, &cancel).await.unwrap();
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["objects"]["leads"]["marketo_to_crm"]["created"].is_u64());
    let leads = &s.objects["leads"];
    // The simulator's 3 generated leads (their New Lead activities fall after the demo's low
    // watermark, as on a real instance) and the 2 created above.
    assert_eq!(
        leads[&Direction::MarketoToCrm].created,
        5,
        "{:?}",
        s.warnings
    );
    assert_eq!(
        leads[&Direction::CrmToMarketo].created,
        4,
        "{:?}",
        s.warnings
    );
    assert!(s.marketo_calls > 0);
    assert!(
        !s.warnings
            .iter()
            .any(|w| w.contains("leads.toml") && w.starts_with("error")),
        "{:?}",
        s.warnings
    );
    assert_eq!(sim.counters().leads, 9);
    sim.shutdown().await;
}

/// Returns the state store of `setup`'s directory.
async fn state(dir: &tempfile::TempDir) -> std::sync::Arc<dyn StateStore> {
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    marketo_sync::store::open(&url).await.unwrap()
}

#[tokio::test]
async fn a_dry_run_counts_its_plan_writes_nothing_and_predicts_the_real_cycle() {
    let (sim, dir, source) = setup().await;
    for (email, name) in [("one@example.com", "One"), ("two@example.com", "Two")] {
        sim.create_lead(lead(email, name));
    }
    let cancel = CancellationToken::new();
    let dry = run_once_with(&source, true, &cancel).await.unwrap();
    assert!(dry.dry_run);
    let rows = assert_counts_match_the_plan(&dry);
    assert!(rows > 0, "the dry run plans the first load");
    let leads = &dry.objects["leads"];
    // 3 generated leads (New Lead activities after the low watermark) and the 2 created above.
    assert_eq!(leads[&Direction::MarketoToCrm].created, 5, "{:?}", dry.plan);
    assert_eq!(leads[&Direction::CrmToMarketo].created, 4, "{:?}", dry.plan);
    // New records have no value before.
    let created = dry
        .plan
        .iter()
        .find(|p| p.object == "leads" && p.action == PlannedAction::Create)
        .unwrap();
    assert!(created.changes.iter().all(|c| c.before.is_none()));
    assert!(created.changes.iter().any(|c| c.field == "email"));

    // Dependents of contacts whose leads are only planned wait; they are not failures.
    let waiting: u64 = dry
        .objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.waiting)
        .sum();
    assert!(waiting > 0, "{:?}", dry.objects);
    assert_eq!(dry.failed(), 0, "{:?}", dry.objects);
    assert!(
        dry.plan
            .iter()
            .filter(|p| p.action == PlannedAction::WaitsForParent)
            .all(|p| p.note.as_deref().is_some_and(|n| n.contains("yet")))
    );

    // Nothing was written: not to Marketo, not to the store.
    assert_eq!(
        sim.counters().leads,
        5,
        "the dry run wrote nothing to Marketo"
    );
    let store = state(&dir).await;
    assert!(
        store
            .links_page("leads", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.watermarks().await.unwrap().is_empty());
    assert!(store.recent_cycles(5).await.unwrap().is_empty());
    assert!(
        store
            .list_errors(&ErrorFilter {
                limit: 10,
                ..ErrorFilter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );

    // The real cycle does what the dry run planned for the leads.
    let real = run_once_with(&source, false, &cancel).await.unwrap();
    for d in [Direction::MarketoToCrm, Direction::CrmToMarketo] {
        assert_eq!(
            real.objects["leads"][&d].created, dry.objects["leads"][&d].created,
            "{d:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_shows_each_field_before_and_after() {
    let (sim, _dir, source) = setup().await;
    let id = sim.create_lead(lead("one@example.com", "One"));
    let cancel = CancellationToken::new();
    run_once_with(&source, false, &cancel).await.unwrap();
    let mut edit = serde_json::Map::new();
    edit.insert("firstName".into(), serde_json::json!("Uno"));
    sim.update_lead(id, edit).unwrap();

    let dry = run_once_with(&source, true, &cancel).await.unwrap();
    assert_counts_match_the_plan(&dry);
    let update = dry
        .plan
        .iter()
        .find(|p| {
            p.object == "leads"
                && p.direction == Direction::MarketoToCrm
                && p.action == PlannedAction::Update
        })
        .unwrap_or_else(|| panic!("no lead update planned: {:?}", dry.plan));
    assert_eq!(update.source_key.as_deref(), Some(id.to_string().as_str()));
    assert!(update.target_key.is_some(), "{update:?}");
    let first = update
        .changes
        .iter()
        .find(|c| c.field == "first_name")
        .unwrap_or_else(|| panic!("{update:?}"));
    assert_eq!(first.before, Some(serde_json::json!("One")));
    assert_eq!(first.after, serde_json::json!("Uno"));
    assert_eq!(dry.objects["leads"][&Direction::MarketoToCrm].updated, 1);
    let text = dry.render_text();
    assert!(text.contains("first_name"), "{text}");
    assert!(text.contains("Uno") && text.contains("One"), "{text}");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_binary_dry_run_prints_a_table_or_json_and_exits_0() {
    let (sim, dir, source) = setup().await;
    sim.create_lead(lead("one@example.com", "One"));
    drop(source);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let base_url = sim.base_url();
    let dir_path = dir.path().to_path_buf();
    let run = move |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
        cmd.args(["sync", "--once", "--dry-run", "--env", "demo", "--config"])
            .arg(&config)
            .env("MKSYNC__MARKETO__BASE_URL", &base_url)
            .env(
                "MKSYNC__CRM__URL",
                format!("sqlite://{}", dir_path.join("crm.db").display()),
            )
            .env(
                "MKSYNC__STORE__URL",
                format!("sqlite://{}", dir_path.join("state.db").display()),
            )
            .env("NO_COLOR", "1")
            .env_remove("MKSYNC_ENV");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = tokio::task::spawn_blocking(move || (run(false), run(true)))
        .await
        .unwrap();
    let (text, json) = out;
    let stdout = String::from_utf8_lossy(&text.stdout);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert_eq!(text.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Planned writes"), "{stdout}");
    assert!(
        stdout.contains("Before") && stdout.contains("After"),
        "{stdout}"
    );
    assert!(stdout.contains("one@example.com"), "{stdout}");
    assert!(stdout.contains("waits for its parent"), "{stdout}");
    assert!(stdout.contains("nothing was written"), "{stdout}");
    assert!(!stderr.contains("lead step committed"), "{stderr}");

    assert_eq!(json.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["dry_run"], serde_json::json!(true));
    let plan = v["plan"].as_array().unwrap();
    let creates = plan
        .iter()
        .filter(|p| p["object"] == "leads" && p["action"] == "create")
        .filter(|p| p["direction"] == "marketo_to_crm")
        .count() as u64;
    assert_eq!(
        v["objects"]["leads"]["marketo_to_crm"]["created"].as_u64(),
        Some(creates)
    );
    let create = plan
        .iter()
        .find(|p| p["action"] == "create" && p["object"] == "leads")
        .unwrap();
    let email = create["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "email")
        .unwrap();
    assert!(email["after"].is_string(), "{email}");
    assert!(
        email.get("before").is_none(),
        "a new record has no value before: {email}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn sync_record_syncs_one_crm_record_and_names_what_is_wrong() {
    let (sim, dir, _source) = setup().await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let base_url = sim.base_url();
    let dir_path = dir.path().to_path_buf();
    let run = move |record: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
        cmd.args(["sync", "--record", record, "--env", "demo", "--config"])
            .arg(&config)
            .env("MKSYNC__MARKETO__BASE_URL", &base_url)
            .env(
                "MKSYNC__CRM__URL",
                format!("sqlite://{}", dir_path.join("crm.db").display()),
            )
            .env(
                "MKSYNC__STORE__URL",
                format!("sqlite://{}", dir_path.join("state.db").display()),
            )
            .env("NO_COLOR", "1")
            .env_remove("MKSYNC_ENV");
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let leads_before = sim.counters().leads;
    let (ok, unknown, missing, malformed) = tokio::task::spawn_blocking(move || {
        (
            run("contacts:1"),
            run("widgets:1"),
            run("contacts:987654"),
            run("contacts"),
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.0, Some(0), "{ok:?}");
    assert!(ok.1.contains("contacts:1: synced to Marketo"), "{ok:?}");
    assert_eq!(sim.counters().leads, leads_before + 1, "one lead created");
    assert_eq!(unknown.0, Some(1), "{unknown:?}");
    assert!(
        unknown.2.contains("unknown object `widgets`") && unknown.2.contains("leads"),
        "{unknown:?}"
    );
    assert_eq!(missing.0, Some(1), "{missing:?}");
    assert!(missing.2.contains("no live contacts record"), "{missing:?}");
    assert_ne!(malformed.0, Some(0), "{malformed:?}");
    assert!(malformed.2.contains("OBJECT:ID"), "{malformed:?}");
    sim.shutdown().await;
}
