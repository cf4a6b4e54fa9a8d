//! The convergence harness on a modest number of seeds: random edits on both sides, faults in
//! the simulator and the CRM, killed cycles and restarts; afterwards both sides must agree.
//!
//! Three set-ups: the engine in this process on a SQLite CRM (kills are aborted commits and
//! cancelled cycles), the engine as a child process `marketo-sync sync --once` SIGKILLed at
//! random points, and a PostgreSQL CRM whose connections are terminated during cycles; and the
//! HubSpot simulator through the HubSpot adapter (`--crm hubspot`), in both engine modes.

use std::path::{Path, PathBuf};

use marketo_sync::converge::{
    ConvergeError, ConvergeOptions, ConvergenceReport, CrmKind, EngineMode, Schedule, run_schedule,
};
use secrecy::SecretString;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn options(steps: usize) -> ConvergeOptions {
    ConvergeOptions {
        steps,
        ..ConvergeOptions::new(config_dir())
    }
}

/// The lead schedules as drawn before the other objects were added (seeds found then).
fn leads_only(options: ConvergeOptions) -> ConvergeOptions {
    ConvergeOptions {
        schedule: Schedule::LeadsOnly,
        ..options
    }
}

/// The full schedule as drawn before activities were added (seeds found then).
fn no_activities(options: ConvergeOptions) -> ConvergeOptions {
    ConvergeOptions {
        schedule: Schedule::NoActivities,
        ..options
    }
}

/// The full schedule plus programs, program members and static lists.
fn marketing(options: ConvergeOptions) -> ConvergeOptions {
    ConvergeOptions {
        schedule: Schedule::Marketing,
        ..options
    }
}

fn in_child(options: ConvergeOptions) -> ConvergeOptions {
    ConvergeOptions {
        engine: EngineMode::Process {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_marketo-sync")),
        },
        ..options
    }
}

fn on_postgres(options: ConvergeOptions) -> ConvergeOptions {
    let server = std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    ConvergeOptions {
        crm: CrmKind::Postgres {
            server_url: SecretString::from(server),
        },
        ..options
    }
}

fn on_hubspot(options: ConvergeOptions) -> ConvergeOptions {
    ConvergeOptions {
        crm: CrmKind::HubSpot,
        ..options
    }
}

async fn converges(seed: u64, options: &ConvergeOptions) -> ConvergenceReport {
    let report = run_schedule(seed, options).await.expect("schedule runs");
    assert!(
        report.ok,
        "seed {seed} did not converge ({:?} faults, {:?} kills, {} cycles):\n{}\n{}",
        report.faults_by_kind,
        report.kills_by_kind,
        report.cycles,
        report.violations.join("\n"),
        report.trace.join("\n")
    );
    assert!(report.cycles > 0, "{report:?}");
    report
}

/// Sums the faults or kills of some reports by kind.
fn by_kind<'a>(
    reports: &'a [ConvergenceReport],
    pick: impl Fn(&'a ConvergenceReport) -> &'a std::collections::BTreeMap<String, usize>,
) -> std::collections::BTreeMap<&'a str, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in reports {
        for (kind, n) in pick(r) {
            *out.entry(kind.as_str()).or_default() += n;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_seeds_converge_through_faults_kills_and_spent_quotas() {
    let mut reports = Vec::new();
    for seed in [1, 2, 3, 4] {
        reports.push(converges(seed, &options(40)).await);
    }
    // The seeds exercise what they claim: aborted commits, cancelled cycles, a held CRM lock
    // and the simulator's own 607, each survived.
    let kills = by_kind(&reports, |r| &r.kills_by_kind);
    let faults = by_kind(&reports, |r| &r.faults_by_kind);
    assert!(
        kills.get("commit aborted").is_some_and(|n| *n > 0),
        "{kills:?}"
    );
    assert!(
        kills.get("cycle cancelled").is_some_and(|n| *n > 0),
        "{kills:?}"
    );
    assert!(
        faults.get("crm write-locked").is_some_and(|n| *n > 0),
        "{faults:?}"
    );
    assert!(
        faults.get("daily quota (607)").is_some_and(|n| *n > 0),
        "{faults:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_process_restarts_and_converges() {
    let options = in_child(options(40));
    let mut reports = Vec::new();
    for seed in [2, 4, 5] {
        reports.push(converges(seed, &options).await);
    }
    let kills = by_kind(&reports, |r| &r.kills_by_kind);
    assert!(
        kills
            .get("SIGKILL after Marketo requests")
            .is_some_and(|n| *n > 0),
        "{kills:?}"
    );
    assert!(
        kills
            .get("SIGKILL after a CRM write")
            .is_some_and(|n| *n > 0),
        "{kills:?}"
    );
    let faults = by_kind(&reports, |r| &r.faults_by_kind);
    assert!(
        faults.get("daily quota (607)").is_some_and(|n| *n > 0),
        "{faults:?}"
    );
    // Every kill is visible in the trace as a killed cycle.
    let killed_steps = reports
        .iter()
        .flat_map(|r| &r.trace)
        .filter(|l| l.contains("kill the process") && l.ends_with(": killed"))
        .count();
    assert_eq!(killed_steps, kills.values().sum::<usize>(), "{kills:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_postgres_crm_connections_are_survived() {
    let mut reports = Vec::new();
    for seed in [1, 3] {
        reports.push(converges(seed, &on_postgres(options(40))).await);
    }
    reports.push(converges(2, &in_child(on_postgres(options(30)))).await);
    let faults = by_kind(&reports, |r| &r.faults_by_kind);
    assert!(
        faults
            .get("crm connections terminated")
            .is_some_and(|n| *n >= 2),
        "{faults:?}"
    );
    // The fault hit live connections: the cycle failed with PostgreSQL's 57P01.
    assert!(
        reports
            .iter()
            .flat_map(|r| &r.trace)
            .any(|l| l.contains("crm connections dropped") && l.contains("57P01")),
        "no cycle saw a terminated connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_plays_the_same_schedule() {
    let a = run_schedule(11, &options(12)).await.expect("schedule runs");
    let b = run_schedule(11, &options(12)).await.expect("schedule runs");
    // The steps and faults are drawn from the seed alone (the kill count can vary: a cancelled
    // cycle may finish before its cancel point).
    let names = |r: &ConvergenceReport| -> Vec<String> {
        r.trace
            .iter()
            .filter(|l| l.starts_with("step "))
            .map(|l| l.split(" (").next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!((a.steps, &a.faults_by_kind), (b.steps, &b.faults_by_kind));
    assert_eq!(names(&a), names(&b));
    assert_eq!(names(&a).len(), 12);
    let c = run_schedule(12, &options(12)).await.expect("schedule runs");
    assert_ne!(names(&a), names(&c), "another seed plays another schedule");
}

/// Seeds that found engine bugs, fixed since (a Marketo lead left linked, with no tombstone, to
/// a contact the CRM user soft-deleted or merged away; two records of one email on both sides
/// after merges on either side). With faults and kills in process, and without them as a
/// child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_found_engine_bugs_converge() {
    for seed in [8, 14, 22] {
        converges(seed, &leads_only(options(40))).await;
    }
    let clean = ConvergeOptions {
        faults: false,
        kills: false,
        ..leads_only(options(40))
    };
    for seed in [12, 24] {
        let report = converges(seed, &in_child(clean.clone())).await;
        assert_eq!((report.faults, report.kills), (0, 0), "{report:?}");
    }
}

/// A seed that found a half-committed lead step (the lead step committed up to three times: after
/// the merges, after the deletions, at its end): CRM merges, a Marketo merge into a new lead, and
/// a kill at a commit after the first left a contact's CRM edit never reaching its lead. It
/// converges since the lead step commits once. Leads only, 80 steps, as found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_step_killed_between_its_commits_no_longer_loses_an_edit() {
    let report = converges(21002, &leads_only(options(80))).await;
    assert!(
        report.kills_by_kind.contains_key("commit aborted"),
        "{:?}",
        report.kills_by_kind
    );
}

/// The full schedule plays CRM merges into contacts never synced followed by a kill at the
/// store commit, and edits every synced object (companies, opportunities, roles, salespersons,
/// the custom object `car_c`); all of them converge and are checked on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_schedules_exercise_every_object_and_merges_into_new_contacts() {
    let mut reports = Vec::new();
    // Seeds that failed as the harness grew: 20001, an account deleted in the CRM after a kill
    // at commit had created its company in Marketo unlinked (the company stayed: fixed in
    // objects/deletions.rs); 20018, a role of an opportunity the CRM user deleted (it waits in
    // the ledger with Marketo's 1013, which is no violation); 30017, a company conflict, checked
    // against the company mapping's policy rather than the lead mapping's.
    for seed in [20001, 20018, 30017] {
        reports.push(converges(seed, &no_activities(options(60))).await);
    }
    let trace: Vec<&String> = reports.iter().flat_map(|r| &r.trace).collect();
    for edit in [
        "crm insert account",
        "crm edit account",
        "crm delete account",
        "crm insert user",
        "crm insert opportunity",
        "crm delete opportunity",
        "crm insert role",
        "crm insert vehicle",
        "crm merge of contact",
    ] {
        assert!(
            trace.iter().any(|l| l.contains(edit)),
            "no schedule played {edit:?}"
        );
    }
    assert!(
        trace
            .iter()
            .any(|l| l.contains("crm merge of contact") && l.ends_with("(aborted)")),
        "no merge into a new contact was killed at its commit"
    );
}

/// The reported class (issue 11): a CRM merge into a contact never synced, then a kill at the
/// store commit, left a live Marketo lead linked to the soft-deleted contact. Seed 30127 (60
/// steps, the full schedule) found it: the CRM merge of contact 8 into the new contact 14 (with
/// a new Marketo lead 12 of its email) was killed at its commit; the next cycles applied a
/// Marketo merge before that CRM merge, and the winner took over the merged-away contact 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_merge_into_a_never_synced_contact_killed_at_commit_converges() {
    let report = converges(30127, &no_activities(options(60))).await;
    assert!(
        report.trace.iter().any(
            |l| l.contains("crm merge of contact 8 into the new contact 14")
                && l.ends_with("(aborted)")
        ),
        "the seed no longer plays the merge it was kept for"
    );
}

/// Seed 41014 on a PostgreSQL CRM once ended with lead 5 and contact 4 disagreeing on `title`
/// (Marketo "Working30", CRM "CTO80") after a Marketo edit of lead 2, Marketo merges 3 into 2
/// and 2 into 5, CRM merges 3 into 4 and a CRM edit of contact 4's title, with kills in between.
/// It converges on the same schedule since the fixes of the lead step landed (the single store
/// commit per step and the CRM change stamped ahead of the database clock); kept as a
/// regression seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_winners_inherited_title_against_a_crm_edit_converges_on_postgres() {
    let report = converges(41014, &on_postgres(no_activities(options(60)))).await;
    assert!(
        report
            .trace
            .iter()
            .any(|l| l.contains("marketo merge") && l.ends_with("loser lead 2 into winner 5")),
        "the seed no longer plays the merge it was kept for"
    );
}

/// Seeds of the scale runs that left a live Marketo lead linked to a soft-deleted (merged-away)
/// contact, in process only (31591, 31406, 31711, 31967), a schedule that never quieted (31987)
/// and two live leads of one email (41109). One cause, in the SQL adapter: a CRM user's edit
/// stamped by a clock ahead of the database's (in process, the engine's manual clock) was moved
/// behind the change cursor by the adapter's own later write, stamped `now` by the database, in
/// a step that then failed before its commit; the user's change was never read again. A write
/// now never moves a row's modified time backwards. All failed before the fix on these very
/// schedules (the full schedule without activities, as found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_row_stamped_ahead_of_the_database_clock_is_not_lost_by_a_failed_step() {
    for seed in [31591, 31406, 31711, 31967, 31987, 41109] {
        converges(seed, &no_activities(options(60))).await;
    }
}

/// The full schedule plays web page visits and the New Lead activities of created leads, and
/// every one reaches the CRM's activity table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_schedules_copy_every_activity_exactly_once() {
    let mut visits = 0;
    let mut chats = 0;
    for seed in [31591, 31406] {
        let report = converges(seed, &options(60)).await;
        visits += report
            .trace
            .iter()
            .filter(|l| l.contains("marketo visit of lead"))
            .count();
        chats += report
            .trace
            .iter()
            .filter(|l| l.contains("crm chat"))
            .count();
    }
    assert!(visits > 0, "no schedule visited a web page");
    // CRM chat events become Marketo custom activities, at most once each, through the kills.
    assert!(chats > 0, "no schedule logged a chat event");
}

/// Seed 31218 (in process, 60 steps, the full schedule without activities): a lead's Marketo id
/// refused for good by the CRM's unique Marketo-id column (`leads marketo_to_crm 3 (4):
/// unique_violation ... contacts.marketo_id`): a merge winner taking over its loser's contact
/// (or a lead written to the contact it now pairs with) wrote its id to that contact while a
/// contact the CRM user had deleted still held it. The SQL adapter now clears the Marketo id of
/// soft-deleted rows before an update by primary key gives that id to another row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_contact_holding_a_lead_id_no_longer_blocks_it() {
    converges(31218, &no_activities(options(60))).await;
}

/// Seeds of the HubSpot scale runs (in process 300016, as a child process 310010) whose
/// cycles all failed once a Marketo merge winner took over its loser's contact: the engine
/// keyed that write by a hard-coded `id`, which HubSpot's adapter refuses as a key (its primary
/// key is `hs_object_id`). The takeover is keyed by the CRM's own primary key since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_winners_takeover_is_keyed_by_hubspots_primary_key() {
    converges(300016, &on_hubspot(options(60))).await;
    converges(310010, &in_child(on_hubspot(options(60)))).await;
}

/// `--crm hubspot`: the schedules play against the HubSpot simulator through the HubSpot
/// adapter, with the HubSpot user creating, editing, archiving and merging contacts, conflicts,
/// one email new on both sides, HubSpot answering 429 and 5xx, and the engine killed in process
/// and as a child process; both sides agree afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_schedules_converge_through_faults_kills_and_merges() {
    let mut reports = Vec::new();
    for seed in [1, 2, 3] {
        reports.push(converges(seed, &on_hubspot(options(40))).await);
    }
    reports.push(converges(4, &in_child(on_hubspot(options(30)))).await);
    let trace: Vec<&String> = reports.iter().flat_map(|r| &r.trace).collect();
    for step in [
        "crm insert",
        "crm edit",
        "crm delete",
        "crm merge",
        "conflicting edits",
    ] {
        assert!(
            trace.iter().any(|l| l.contains(step) && l.contains(": ")),
            "no schedule played {step:?}"
        );
    }
    let faults = by_kind(&reports, |r| &r.faults_by_kind);
    assert!(
        faults.keys().any(|k| k.starts_with("hubspot ")),
        "{faults:?}"
    );
    let kills = by_kind(&reports, |r| &r.kills_by_kind);
    assert!(!kills.is_empty(), "{kills:?}");
    assert!(reports.iter().all(|r| r.records > 0), "nothing was synced");
}

/// Seeds of the HubSpot scale runs (in process, 60 steps) that left a live lead linked, without
/// a tombstone, to a contact the HubSpot user had merged into another one which was then
/// archived before a cycle read the merge: 300094 (contact 1007 merged into 1009, 1009 archived
/// by the user at the next step), and 300031 (1009 merged into 1010, whose lead Marketo's user
/// deleted, so the engine archived 1010). The feed reports a merge through the survivor's
/// `hs_merged_object_ids`, and a merged-away record is neither a search result nor archived:
/// the archived listing now reports an archived survivor's merged records as merged into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_into_an_archived_hubspot_survivor_is_read() {
    for seed in [300094, 300031] {
        converges(seed, &on_hubspot(options(60))).await;
    }
}

/// Found by the HubSpot scale runs (in process, 60 steps): seed 300091 ended with lead 4 and
/// lead 11 both linked to contact 1014 after the HubSpot user merged contact 1010 into 1009
/// (step 48) and then 1009 into 1014 (step 52), a contact not linked yet. HubSpot reports both
/// as merged into 1014: the survivor took over lead 11, and then, not seeing that link (staged,
/// not committed), took over lead 4 too. The second merge now finds the staged link and merges
/// lead 4 into 11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_hubspot_merges_into_an_unlinked_contact_leave_one_lead() {
    converges(300091, &on_hubspot(options(60))).await;
}

/// Found by the scale runs on PostgreSQL (in process, 60 steps, the full schedule): seed 210034
/// inserts opportunity 1 in the CRM and two roles on it before a cycle in which Marketo answered
/// 608 on the opportunity routes (describe included), so the opportunities step could not run;
/// the roles step then wrote both roles, Marketo refused them with 1013 "Opportunity '1' not
/// found", and they waited in the ledger past the quiet cycles. A step whose parent step did not
/// sync in a cycle is now skipped in that cycle (`registry::Step::after`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_wait_for_their_opportunities_step_on_postgres() {
    converges(210034, &on_postgres(options(60))).await;
}

/// Found by the scale runs (engine as a child process, 60 steps, the full schedule): seed
/// 220053 sometimes ended with contact 17 linked to two leads of one email ("u19.s220053",
/// leads 16 and 17). A cycle killed after its CRM write created contact 17 for lead 14 (not
/// linked); Marketo merged lead 14 into lead 16, whose CRM-key field named contact 16; the CRM
/// user merged contact 16 into contact 18; the next cycle had lead 16 take contact 17 over (its
/// Marketo-id column set to 16) and was killed after that write. The cycle after it paired
/// lead 16 by its CRM key with contact 16, found gone, and placed contact 17 (holding 16) alone:
/// lead 16's "new" CRM record, upserted by the Marketo-id column, landed on contact 17, and
/// contact 17 got a new lead 17 as well. A lead whose CRM key names no partner now joins the
/// lone record holding its id (`pairing::join_claimants`; unit test
/// `a_lead_whose_crm_key_names_a_gone_record_joins_the_record_holding_its_id`). The kills land
/// at timing-dependent points, so a run does not always reach that cycle (before the fix, 1
/// failure in 2 runs of `converge --engine process --seeds 1 --first-seed 220053 --steps 60`;
/// after it, 14 of 14 converged, 2 of them through the join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_winner_naming_a_merged_away_contact_keeps_the_contact_holding_its_id() {
    converges(220053, &in_child(options(60))).await;
}

/// Found by the scale runs (engine as a child process, 60 steps, the full schedule): seed
/// 220140 ended with two live CRM contacts of "u8.s220140@example.com": lead 6 linked to contact
/// 9, beside contact 6 (Marketo id empty) held by a `duplicate` ledger entry. One cycle created
/// lead 8 for the CRM user's contact 6 and contact 9 for the new lead 6, and was killed after the
/// CRM creates, before contact 6 got lead 8's id and lead 6 got contact 9's id; Marketo then
/// merged lead 8 into lead 6, which inherited lead 8's CRM key (contact 6). The next cycle
/// recovered lead 6's own record (contact 9 holds its id) only to decide the merge, not as a
/// link, and found no record of lead 8; pairing then paired lead 6 with contact 6 by that
/// inherited key: the Marketo write (contact 6's email into lead 6) went through, the CRM write
/// was refused (contact 9 held lead 6's id), and the cycle after linked lead 6 to contact 9,
/// which took that email. The recovered winner's record is now staged as its link, and the
/// record its inherited key names (live, unlinked, holding no lead id) counts as the loser's and
/// follows the merge policy (`merges::inherited_loser_link`; replayed in process by
/// `engine_identity` `a_merge_of_two_leads_a_dead_cycle_gave_records_keeps_the_winners_own`).
/// Timing-dependent (the kill lands after a CRM write): before the fix it failed 3 runs of 3 of
/// `converge --engine process --seeds 1 --first-seed 220140 --steps 60` (7 of 7 on 2026-12-04);
/// after it, 20 of 20 converged (a run with `MKSYNC_CONVERGE_LOGS` logs both recoveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_winner_keeps_the_contact_a_killed_cycle_gave_it_as_a_child_process() {
    converges(220140, &in_child(options(60))).await;
}

/// Found by the scale runs of 2026-12-05 (engine as a child process, 60 steps, the full
/// schedule): seed 691001 ended with two live CRM contacts of "u10.s691001@example.com" and
/// contact 7 held by a `duplicate` ledger entry. A cycle created lead 6 for the CRM user's
/// contact 2 and was killed before contact 2 got lead 6's id or the link was committed; a CRM
/// lead conversion then made contact 7, whose email Marketo's new lead 8 held, and Marketo
/// merged lead 6 into lead 8, which inherited lead 6's CRM key (contact 2). With no record
/// holding lead 8's id, pairing paired lead 8 with contact 2 by that key and wrote lead 8's
/// email into it. The unlinked winner's own record is now the one its match values name, and
/// the record its inherited key names counts as the loser's (`merges::match_partner`; replayed
/// in process by `engine_identity`
/// `a_new_winner_that_inherits_a_dead_cycles_contact_keeps_the_contact_of_its_email`). Before
/// the fix it failed 6 runs of 6 of `converge --engine process --seeds 1 --first-seed 691001
/// --steps 60`; after it, 3 of 3 converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_merge_winner_keeps_the_contact_of_its_email_as_a_child_process() {
    converges(691001, &in_child(options(60))).await;
}

/// A `sync --once` child that does not end in time is stopped and its seed fails with an error
/// naming the cycle, rather than the run waiting for it for ever (CI once timed out on a child
/// cycle of seed 691001 that never ended), and saying where the process waited: its simulator
/// requests and its threads (with their stacks when gdb can attach), read before it is killed.
/// No cycle ends within no time at all: the first stop, at start-up, is restarted once, and the
/// second fails the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cycle_past_its_deadline_is_stopped_and_fails_the_seed() {
    let options = ConvergeOptions {
        cycle_deadline: std::time::Duration::ZERO,
        // Its first stop is at start-up and restarted: not one for scripts/test to print.
        stuck_log: None,
        ..in_child(options(5))
    };
    let error = run_schedule(691001, &options).await.unwrap_err();
    assert!(
        matches!(error, ConvergeError::Stuck { seed: 691001, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("did not end within 0 s and was stopped"),
        "{error}"
    );
    let ConvergeError::Stuck { state, .. } = &error else {
        unreachable!("matched above");
    };
    assert!(
        state.starts_with("it made no simulator request; its threads:\n  "),
        "{state}"
    );
}

/// Writes an "engine" that runs the real binary, except at the starts listed, where it sleeps
/// instead, as an engine process stuck before its first step would (`sh` builtins only: the
/// harness clears the child's environment, PATH included).
fn engine_stuck_at(dir: &Path, starts: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let script = dir.join("engine.sh");
    let count = dir.join("starts");
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep is installed");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=0\n[ -e '{c}' ] && read n < '{c}'\nn=$((n + 1))\necho $n > '{c}'\n\
             case $n in {starts}) exec {sleep} 600 ;; esac\nexec '{bin}' \"$@\"\n",
            c = count.display(),
            bin = env!("CARGO_BIN_EXE_marketo-sync"),
        ),
    )
    .expect("script written");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// An engine process stuck at start-up, before it took the sync lease or asked Marketo
/// anything (CI saw one hang there once), had no sync work under way: the harness kills it,
/// runs the cycle again and reports the stop with the process's threads. Once per schedule: a
/// second such stop fails the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_process_stuck_at_start_up_is_restarted_once_and_reported() {
    let stuck = |dir: &Path, starts: &str| ConvergeOptions {
        cycle_deadline: std::time::Duration::from_secs(15),
        faults: false,
        kills: false,
        engine: EngineMode::Process {
            binary: engine_stuck_at(dir, starts),
        },
        // Its own log, so that scripts/test does not print these stops as found ones.
        stuck_log: Some(dir.join("stuck.log")),
        ..leads_only(options(12))
    };
    let once = tempfile::tempdir().expect("temp dir");
    let report = converges(5, &stuck(once.path(), "3")).await;
    assert_eq!(report.stuck_restarts.len(), 1, "{report:?}");
    let stop = &report.stuck_restarts[0];
    assert!(
        stop.starts_with("seed 5: the engine process of the cycle from simulator request "),
        "{stop}"
    );
    assert!(
        stop.contains(
            "was stuck at start-up and restarted; it made no simulator request; its threads:\n  "
        ),
        "{stop}"
    );
    assert!(stop.contains(" sleep: waits in "), "{stop}");
    assert_eq!((report.faults, report.kills), (0, 0), "{report:?}");
    let logged = std::fs::read_to_string(once.path().join("stuck.log")).expect("stop logged");
    assert_eq!(logged, format!("{stop}\n\n"));

    let twice = tempfile::tempdir().expect("temp dir");
    let error = run_schedule(5, &stuck(twice.path(), "3|5"))
        .await
        .expect_err("a second stop fails the seed");
    assert!(
        matches!(error, ConvergeError::Stuck { seed: 5, .. }),
        "{error}"
    );
}

/// Found by the scale runs of 2026-12-04 on PostgreSQL (in process, 60 steps, the full
/// schedule): seed 610006 ended with a ledger entry for lead 2 refused by the CRM's unique
/// Marketo-id column, retried every quiet cycle, and a role waiting for its contact. A cycle
/// created contact 3 for lead 2 and was killed at its commit; Marketo merged lead 3 (linked to
/// contact 2) into lead 2, then deleted lead 2. The next cycle found no link for the winner and,
/// with lead 2 gone, no record matching it, so it had lead 2 take contact 2 over: setting its
/// Marketo id to 2, which contact 3 held. A merge winner's own record, rebuilt from the CRM's
/// Marketo-id column, now counts as its link (`merges::apply_merge`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_winner_keeps_its_record_from_a_cycle_killed_at_commit_on_postgres() {
    converges(610006, &on_postgres(options(60))).await;
}

/// Found by the last scale run (in process, SQLite, 60 steps, the full schedule): seed 200481
/// never had two quiet cycles in a row, with a role and a car waiting in the ledger for
/// contacts 1 and 5 ("contact_not_linked"), both merged away in the CRM (contact 1 into 2, then
/// 2 and 5 into 8) while their role and car still named them. A dependent of a merged-away
/// contact now goes to its survivor's lead (`pair::lead_ids_by_contact`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_merged_away_contacts_follow_the_survivor() {
    converges(200481, &options(60)).await;
}

/// The marketing edits every marketing schedule below must have played between them.
const MARKETING_EDITS: &[&str] = &[
    "marketo status of lead",
    "marketo adds lead",
    "marketo removes lead",
    "marketo creates program",
    "crm campaign member",
    "crm adds contact",
    "crm list row",
];

fn assert_marketing_played(reports: &[ConvergenceReport]) {
    let trace: Vec<&String> = reports.iter().flat_map(|r| &r.trace).collect();
    for edit in MARKETING_EDITS {
        assert!(
            trace
                .iter()
                .any(|l| l.starts_with("marketing before") && l.contains(edit)),
            "no schedule played {edit:?}"
        );
    }
}

/// Issue 12: programs, program members and static lists in the convergence harness. Marketo's
/// user sets program statuses, adds and removes list members and creates programs; the CRM's
/// user changes campaign member statuses, adds campaign members and adds or flips list rows;
/// with the faults and kills of the full schedule. Afterwards every program is one campaign
/// row, every membership agrees through the status map, and no membership has two CRM rows.
///
/// Seeds 1, 2 and 6 failed when the schedule was added: a lead merged in Marketo (by its user,
/// or by the sync carrying a CRM merge) took its losers' program and list memberships with no
/// membership activity, and a CRM merge survivor that took over a lead left the membership rows
/// on the merged-away contact; seed 1 ended with lead 9 "Invited" in program 1107 and no
/// campaign member row for its contact 10. The lead step now hands each merge winner, and the
/// lead of each contact merged away in the CRM, to the membership steps (`feed_riders`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_schedules_converge_on_programs_members_and_lists() {
    let mut reports = Vec::new();
    for seed in [1, 2, 6] {
        reports.push(converges(seed, &marketing(options(40))).await);
    }
    assert_marketing_played(&reports);
    let kills = by_kind(&reports, |r| &r.kills_by_kind);
    assert!(!kills.is_empty(), "{kills:?}");
}

/// The marketing schedule on a PostgreSQL CRM (connections terminated mid-cycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_schedules_converge_on_postgres() {
    converges(4, &on_postgres(marketing(options(40)))).await;
}

/// The marketing schedule with the engine as a child process, SIGKILLed mid-cycle (no program
/// is created there: the child's clock is behind the simulator's, see `marketing.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_schedules_converge_in_a_killed_child_process() {
    converges(5, &in_child(marketing(options(30)))).await;
}

/// Found on seed 202 of the marketing schedule on PostgreSQL (in process, 60 steps). Lead 3
/// (linked to contact 3, "Influenced" in program 1110 and in the Newsletter list) is merged in
/// Marketo into the new lead 7, which takes over contact 3. The membership links stayed keyed by
/// the loser (`1110:3`, `1001:3`, CRM rows 2 and 3): the membership steps read the winner's
/// memberships (handed over on the merge) as new and created second rows for contact 3, and a
/// CRM status change of row 2 was written for lead 3, which Marketo refuses for good (1004 Lead
/// not found), so the schedule never quieted. The membership steps now re-key a merged-away
/// lead's membership links (and the rows' Marketo-id column) to the winner that took over its
/// contact (`feed_riders::rekey_merged`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_memberships_of_a_merged_away_lead_follow_the_winner_on_postgres() {
    converges(202, &on_postgres(marketing(options(60)))).await;
}
