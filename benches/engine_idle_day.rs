//! Marketo API calls of a simulated day of idle 5-minute cycles, with leads, companies and
//! opportunities enabled (issue 7: at most 1,500 counted calls a day).
//!
//! Sets up the Marketo simulator (1,000 generated leads), the demo CRM on SQLite and a SQLite
//! store, runs cycles until one writes nothing (the initial sync converges), then runs 288 idle
//! cycles, moving the simulator's clock and the engine's clock 5 minutes between cycles. The calls
//! are counted from the simulator's request log (calls that count towards Marketo's limits) and
//! printed per day, per idle cycle and per route family.
//!
//! `cargo bench --bench engine_idle_day [-- CYCLES]` (default 288). With `MKS_BENCH_PROGRAMS=1`
//! the programs, program members and static lists mappings are enabled too (issue 12: the idle day with
//! programs and lists stays within 1,600 calls).

#[path = "../tests/support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Options, TestApp, written};
use marketo_sync::engine::Tunables;
use marketo_sync::sim::SimConfig;

const TARGET: u64 = 1_000;
/// The target with programs (and lists) configured (issue 12).
const TARGET_WITH_PROGRAMS: u64 = 1_600;

fn main() {
    let cycles: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(288);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(cycles));
}

async fn run(cycles: u64) {
    let programs = std::env::var_os("MKS_BENCH_PROGRAMS").is_some();
    let mut objects: Vec<String> = vec!["leads".into(), "companies".into(), "opportunities".into()];
    if programs {
        objects.extend([
            "programs".into(),
            "program_members".into(),
            "static_lists".into(),
        ]);
    }
    let target = if programs {
        TARGET_WITH_PROGRAMS
    } else {
        TARGET
    };
    println!("objects: {}", objects.join(", "));
    let app = TestApp::with(Options {
        sim: SimConfig {
            leads: 1_000,
            export_delay: Duration::ZERO,
            import_delay: Duration::ZERO,
            daily_quota: 10_000_000,
            ..SimConfig::default()
        },
        daily_call_budget: 0,
        tunables: Tunables {
            export_poll: Duration::from_millis(20),
            ..Tunables::default()
        },
        objects,
        ..Options::default()
    })
    .await;

    // Converge: the first cycles carry whatever both sides already hold.
    let mut settle = 0;
    loop {
        settle += 1;
        let s = app.run_cycle().await;
        if settle == 1 && !s.warnings.is_empty() {
            for w in &s.warnings {
                println!("first-cycle warning: {w}");
            }
        }
        if written(&s) == 0 {
            break;
        }
        assert!(settle < 20, "no quiet cycle after 20 cycles");
        app.sim.advance_clock(Duration::from_secs(300));
    }
    let start_seq = app.log_mark();
    println!("converged after {settle} cycle(s); starting {cycles} idle cycles");

    // The bench runs a day of cycles in minutes of real time, while the demo CRM stamps rows with
    // the real clock: without aging, the rows the initial sync wrote stay inside the CRM overlap
    // window (5 minutes) all "day" and are re-read every cycle. Aging every row by 5 minutes per
    // cycle is what 5 real minutes between cycles would do. `MKS_BENCH_NO_AGE=1` turns it off.
    let age_crm = std::env::var_os("MKS_BENCH_NO_AGE").is_none();
    println!("crm rows aged 5 minutes per cycle: {age_crm}");
    let started = Instant::now();
    let mut written_idle = 0;
    let mut engine_calls = 0;
    for _ in 0..cycles {
        app.sim.advance_clock(Duration::from_secs(300));
        if age_crm {
            age_crm_rows(&app).await;
        }
        let s = app.run_cycle().await;
        written_idle += written(&s);
        engine_calls += s.marketo_calls;
    }
    let elapsed = started.elapsed();

    let tally = app.calls_since(start_seq);
    let (calls, by_family, by_path) = (tally.counted, tally.by_family, tally.by_path);
    let per_cycle = calls as f64 / cycles as f64;
    let per_day = per_cycle * 288.0;
    println!("idle cycles:                {cycles} (5 minutes apart, {elapsed:.1?} wall)");
    println!("records written while idle: {written_idle}");
    println!("calls logged (all):         {}", tally.logged);
    println!("counted calls:              {calls} (engine's own count: {engine_calls})");
    println!("counted calls per cycle:    {per_cycle:.2}");
    println!(
        "counted calls per day:      {per_day:.0} (target <= {target}: {})",
        if per_day <= target as f64 {
            "met"
        } else {
            "missed"
        }
    );
    println!("by route family:");
    for (family, n) in &by_family {
        println!(
            "  {family:<28} {n:>6}  ({:.2}/cycle)",
            *n as f64 / cycles as f64
        );
    }
    println!("by route:");
    for (path, n) in &by_path {
        println!("  {path:<60} {n:>6}");
    }
    app.cleanup().await;
}

/// Moves every demo CRM row's `updated_at` 5 minutes into the past (SQLite).
async fn age_crm_rows(app: &TestApp) {
    for table in marketo_sync::sim::demo_crm::OBJECTS {
        app.user
            .execute_raw(
                "age crm rows",
                format!(
                    "UPDATE {table} SET updated_at = strftime('%Y-%m-%d %H:%M:%f', updated_at, '-300 seconds')"
                ),
            )
            .await
            .expect("age crm rows");
    }
}
