//! `sync --once` on the shipped demo configuration, against the simulator and the demo CRM.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use marketo_sync::config::SettingsSource;
use marketo_sync::engine::once::run_once_with;
use marketo_sync::sim::{SimConfig, Simulator, demo_crm};
use marketo_sync::store::Direction;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

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
    assert_eq!(
        leads[&Direction::MarketoToCrm].created,
        2,
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
