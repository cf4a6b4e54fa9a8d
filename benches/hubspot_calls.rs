//! HubSpot API calls of the engine over the HubSpot adapter (issue 13): an idle cycle costs at
//! most 3 HubSpot calls per synced object; 10,000 contact changes reach Marketo in at most 120
//! HubSpot calls and the same Marketo calls as the SQL adapter.
//!
//! Idle: the Marketo simulator, the HubSpot simulator (200 generated contacts, their companies
//! and deals) and the example mappings of `config/examples/hubspot/` (leads, companies,
//! opportunities, and the custom object `cars` with its contact through associations); cycles run until one writes nothing, then `CYCLES` idle cycles 5 minutes
//! apart. It prints the HubSpot requests the simulator served per idle cycle, by route.
//!
//! Changes: `N` generated Marketo leads are bootstrapped into an empty HubSpot portal (so `N`
//! linked pairs exist) and a quiet cycle runs; then a HubSpot user edits `phone` on every
//! contact, and ONE cycle runs. It prints the HubSpot requests served and the Marketo calls
//! counted in that cycle, by route; then it does the same over the SQL adapter (the demo CRM on
//! SQLite, one mass update of `phone`) and prints whether the Marketo calls are the same.
//!
//! `cargo bench --bench hubspot_calls [-- CYCLES N]` (default 12 10000).

#[path = "../tests/support/harness.rs"]
mod harness;
#[path = "../tests/support/hubspot.rs"]
mod hubspot;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{CallTally, Options, TestApp, written};
use hubspot::{HsOptions, HubSpotApp};
use marketo_sync::engine::bootstrap::{BootstrapOptions, RecordingProgress, bootstrap};
use marketo_sync::engine::{Context, Tunables};
use marketo_sync::marketo::bulk_extract::ExportOptions;
use marketo_sync::sim::SimConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const IDLE_TARGET_PER_OBJECT: usize = 3;
const CHANGES_TARGET: usize = 120;
const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let cycles = args.first().copied().unwrap_or(12);
    let n = args.get(1).copied().unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        idle(cycles).await;
        let over_hubspot = changes_over_hubspot(n).await;
        let over_sql = changes_over_sql(n).await;
        println!(
            "marketo calls of the cycle: {} over hubspot, {} over sql: {}",
            over_hubspot.counted,
            over_sql.counted,
            if over_hubspot.by_path == over_sql.by_path {
                "the same calls"
            } else {
                "DIFFERENT"
            }
        );
        if over_hubspot.by_path != over_sql.by_path {
            print_routes("marketo calls over sql", &over_sql.by_path);
        }
    });
}

fn marketo_sim(leads: usize) -> SimConfig {
    SimConfig {
        leads,
        export_delay: Duration::ZERO,
        import_delay: Duration::ZERO,
        daily_quota: 10_000_000,
        bulk_daily_bytes: 50 * 1024 * 1024 * 1024,
        ..SimConfig::default()
    }
}

fn tunables() -> Tunables {
    Tunables {
        export_poll: Duration::from_millis(20),
        ..Tunables::default()
    }
}

/// Returns the HubSpot requests served after `from` (an index into the request log), by
/// `METHOD path`.
fn hubspot_routes(app: &HubSpotApp, from: usize) -> BTreeMap<String, usize> {
    let mut by_path = BTreeMap::new();
    for e in app.hs.request_log().iter().skip(from) {
        *by_path
            .entry(format!("{} {}", e.method, e.path))
            .or_default() += 1;
    }
    by_path
}

fn print_routes<N: std::fmt::Display>(title: &str, by_path: &BTreeMap<String, N>) {
    println!("{title}:");
    for (path, k) in by_path {
        println!("  {path:<64} {k:>5}");
    }
}

async fn idle(cycles: usize) {
    let objects = ["leads", "companies", "opportunities", "cars"];
    let app = HubSpotApp::with(HsOptions {
        objects: objects.iter().map(|o| (*o).to_owned()).collect(),
        edit_options: Some(hubspot::add_cars),
        contacts: 200,
        sim: marketo_sim(0),
        tunables: tunables(),
        ..HsOptions::default()
    })
    .await;
    let t = Instant::now();
    let quiet = app.settle(10).await;
    println!(
        "idle: converged in {:.1?} ({} warnings in the quiet cycle)",
        t.elapsed(),
        quiet.warnings.len()
    );
    let from = app.hs_requests();
    let mut worst = 0;
    for _ in 0..cycles {
        app.sim.advance_clock(FIVE_MINUTES);
        app.hs.advance_clock(FIVE_MINUTES);
        let before = app.hs_requests();
        let s = app.run_cycle().await;
        assert_eq!(written(&s), 0, "an idle cycle wrote: {s:?}");
        worst = worst.max(app.hs_requests() - before);
    }
    let total = app.hs_requests() - from;
    let budget = IDLE_TARGET_PER_OBJECT * objects.len();
    println!(
        "idle: {cycles} cycles of {} objects, {total} hubspot calls, {:.1} a cycle, at most {worst} \
         (target <= {budget} a cycle): {}",
        objects.len(),
        total as f64 / cycles as f64,
        if worst <= budget { "met" } else { "missed" }
    );
    let routes = hubspot_routes(&app, from);
    print_routes("idle hubspot calls by route", &routes);
    // By HubSpot object type: the segment after `/objects/` or `/associations/`.
    let mut by_object: BTreeMap<String, usize> = BTreeMap::new();
    for (route, k) in &routes {
        let segments: Vec<&str> = route.split('/').collect();
        let at = segments
            .iter()
            .position(|s| *s == "objects" || *s == "associations");
        if let Some(object) = at.and_then(|i| segments.get(i + 1)) {
            *by_object.entry((*object).to_owned()).or_default() += k;
        }
    }
    println!("idle hubspot calls per cycle by object (target <= {IDLE_TARGET_PER_OBJECT}):");
    for (object, k) in &by_object {
        let per_cycle = *k as f64 / cycles as f64;
        let verdict = if per_cycle <= IDLE_TARGET_PER_OBJECT as f64 {
            "met"
        } else {
            "missed"
        };
        println!("  {object:<20} {per_cycle:>5.1}  {verdict}");
    }
    app.cleanup().await;
}

/// Bootstraps every generated Marketo lead into the CRM.
async fn bootstrap_all(ctx: &Context, since: chrono::DateTime<chrono::Utc>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bootstrap(
        ctx,
        &BootstrapOptions {
            since: Some(since),
            work_dir: Some(dir.path().to_path_buf()),
            bulk_budget_bytes: Some(u64::MAX / 4),
            export: Some(ExportOptions {
                poll_interval: Duration::from_millis(20),
                max_wait: None,
            }),
            ..BootstrapOptions::default()
        },
        &RecordingProgress::new(),
        &CancellationToken::new(),
    )
    .await
    .expect("bootstrap");
    assert!(report.complete, "bootstrap incomplete: {report:?}");
    let text = format!("{report:?}");
    println!("bootstrap report: {}", &text[..text.len().min(1500)]);
}

async fn changes_over_hubspot(n: usize) -> CallTally {
    let app = HubSpotApp::with(HsOptions {
        sim: marketo_sim(n),
        tunables: tunables(),
        ..HsOptions::default()
    })
    .await;
    let t = Instant::now();
    app.run_cycle().await;
    // Generated leads are created within 730 days of the simulator start.
    bootstrap_all(
        app.engine.context(),
        app.sim.now() - chrono::Duration::days(731),
    )
    .await;
    let contacts = app.hs_count("contacts");
    println!(
        "changes over hubspot: bootstrap put {contacts} contacts in hubspot in {:.1?} ({} requests)",
        t.elapsed(),
        app.hs_requests()
    );
    if contacts != n {
        for e in app.open_errors("leads").await.iter().take(3) {
            println!("  refused: {} {}: {}", e.record_key, e.code, e.message);
        }
    }
    assert_eq!(contacts, n, "bootstrap did not link every lead");
    app.sim.advance_clock(FIVE_MINUTES);
    app.hs.advance_clock(FIVE_MINUTES);
    let quiet = app.run_cycle().await;
    println!("cycle after bootstrap: {} written", written(&quiet));

    for id in app.hs.ids("contacts") {
        app.hs_update(
            "contacts",
            &id.to_string(),
            json!({ "phone": format!("+1 555 {id}") }),
        );
    }
    app.sim.advance_clock(FIVE_MINUTES);
    app.hs.advance_clock(FIVE_MINUTES);
    let hs_from = app.hs_requests();
    let mk_from = harness::log_mark(&app.sim);
    let t = Instant::now();
    let s = app.run_cycle().await;
    let updated: u64 = s.objects["leads"].values().map(|c| c.updated).sum();
    let calls = app.hs_requests() - hs_from;
    println!(
        "changes over hubspot: one cycle, {:.2?} wall, {updated} leads updated in marketo, \
         {calls} hubspot calls (target <= {CHANGES_TARGET}): {}",
        t.elapsed(),
        if calls <= CHANGES_TARGET && updated as usize == n {
            "met"
        } else {
            "missed"
        }
    );
    print_routes("hubspot calls by route", &hubspot_routes(&app, hs_from));
    let tally = harness::calls_since(&app.sim, mk_from);
    print_routes("marketo calls by route", &tally.by_path);
    let sample = app.hs.ids("contacts");
    let wrong = sample
        .iter()
        .step_by(50)
        .filter(|id| {
            let ids = app.marketo_by_email(
                app.hs.record("contacts", **id).expect("contact")["properties"]["email"]
                    .as_str()
                    .unwrap_or_default(),
            );
            ids.first()
                .and_then(|l| app.marketo_lead(*l))
                .is_none_or(|l| l["phone"] != json!(format!("+1 555 {id}")))
        })
        .count();
    println!("sample check: every 50th contact, {wrong} disagree with marketo");
    app.cleanup().await;
    tally
}

async fn changes_over_sql(n: usize) -> CallTally {
    let app = TestApp::with(Options {
        sim: marketo_sim(n),
        daily_call_budget: 0,
        tunables: tunables(),
        ..Options::default()
    })
    .await;
    app.sync_clock();
    bootstrap_all(
        app.engine.context(),
        app.sim.now() - chrono::Duration::days(731),
    )
    .await;
    app.sim.advance_clock(FIVE_MINUTES);
    app.run_cycle().await;
    app.user
        .execute_raw(
            "crm edit",
            "UPDATE contacts SET phone = '+1 555 ' || id, \
             updated_at = strftime('%Y-%m-%d %H:%M:%f','now')"
                .to_owned(),
        )
        .await
        .expect("crm edit");
    app.sim.advance_clock(FIVE_MINUTES);
    let mark = app.log_mark();
    let s = app.run_cycle().await;
    let updated: u64 = s.objects["leads"].values().map(|c| c.updated).sum();
    let tally = app.calls_since(mark);
    println!(
        "changes over sql: one cycle, {updated} leads updated in marketo, {} marketo calls",
        tally.counted
    );
    app.cleanup().await;
    tally
}
