//! The one error ledger and its one retry policy, end to end: the Marketo simulator, the demo CRM
//! on SQLite, a SQLite state store and the engine, one cycle at a time on a manual clock.
//!
//! - A record Marketo refuses (a skipped record with a 1xxx reason) is ONE open ledger entry with
//!   Marketo's code and message, for leads, companies, opportunities, roles and custom objects;
//!   the cycle succeeds and the other records arrive.
//! - A retryable refusal is retried when due, on the same schedule for every object (5 minutes,
//!   then doubled); one that is not retryable has no `next_retry_at` and waits for the record to
//!   change or for an operator.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Options, TestApp};
use marketo_sync::engine::CycleSummary;
use marketo_sync::store::{Clock, CycleOutcome, Direction, ErrorStatus, SyncError};

/// Every synced object with a CRM -> Marketo path, as named in the store.
const OBJECTS: &[&str] = &["leads", "companies", "opportunities", "roles", "cars"];

async fn app(objects: &[&str]) -> TestApp {
    TestApp::with(Options {
        objects: objects.iter().map(|o| (*o).to_owned()).collect(),
        ..Options::default()
    })
    .await
}

/// Returns the one open ledger entry of `object` with this record key.
async fn entry(app: &TestApp, object: &str, key: &str) -> SyncError {
    let all = app.open_errors(object).await;
    let mine: Vec<&SyncError> = all.iter().filter(|e| e.record_key == key).collect();
    assert_eq!(mine.len(), 1, "{object} {key}: {all:?}");
    mine[0].clone()
}

/// Returns true when `object`'s CRM record `key` is linked to a Marketo record (it was written).
async fn linked(app: &TestApp, object: &str, key: &str) -> bool {
    app.store
        .links_by_crm_keys(object, &[key.to_owned()])
        .await
        .unwrap()
        .iter()
        .any(|l| l.tombstone.is_none())
}

/// Runs one cycle, which must not fail as a whole, and returns its summary and outcome.
async fn cycle(app: &TestApp) -> (CycleSummary, CycleOutcome) {
    let s = app.try_cycle().await.expect("the cycle succeeds");
    let outcome = app.store.recent_cycles(1).await.unwrap()[0].outcome;
    (s, outcome)
}

/// Moves the engine's clock forward.
fn advance(app: &TestApp, by: Duration) {
    app.clock
        .set(app.clock.now() + chrono::Duration::from_std(by).unwrap());
}

/// One account, contact, opportunity, role and vehicle that Marketo accepts (CRM ids 3, 11, 21,
/// 31 and 41).
async fn seed_good(app: &TestApp) {
    app.crm_exec("INSERT INTO accounts (id, name, industry) VALUES (3, 'Acme', 'Retail')")
        .await;
    app.crm_exec(
        "INSERT INTO contacts (id, email, first_name, last_name, title) \
         VALUES (11, 'buyer@example.com', 'Bea', 'Buyer', 'CEO')",
    )
    .await;
    app.crm_exec(
        "INSERT INTO opportunities (id, name, account_id, amount, stage) \
         VALUES (21, 'Big deal', 3, 5000, 'Won')",
    )
    .await;
    app.crm_exec(
        "INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role, is_primary) \
         VALUES (31, 21, 11, 'Decision Maker', 1)",
    )
    .await;
    app.crm_exec(
        "INSERT INTO vehicles (id, vin, contact_id, make, model, model_year) \
         VALUES (41, 'VIN41', 11, 'Honda', 'Accord', 2003)",
    )
    .await;
}

#[tokio::test]
async fn a_marketo_refused_record_of_each_object_is_one_open_entry_and_the_others_arrive() {
    let app = app(OBJECTS).await;
    seed_good(&app).await;
    // One record of each object carries a value longer than its Marketo string field (255):
    // Marketo refuses it (1001), it is never shortened.
    let long = "x".repeat(300);
    app.crm_exec(&format!(
        "INSERT INTO accounts (id, name) VALUES (4, '{long}')"
    ))
    .await;
    app.crm_exec(&format!(
        "INSERT INTO contacts (id, email, first_name, last_name, title) \
             VALUES (12, 'long@example.com', 'Lo', 'Ng', '{long}')"
    ))
    .await;
    app.crm_exec(&format!(
        "INSERT INTO opportunities (id, name, account_id) VALUES (22, '{long}', 3)"
    ))
    .await;
    app.crm_exec(&format!(
        "INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role) \
             VALUES (32, 21, 11, '{long}')"
    ))
    .await;
    app.crm_exec(&format!(
        "INSERT INTO vehicles (id, vin, contact_id, make) VALUES (42, 'VIN42', 11, '{long}')"
    ))
    .await;

    let (s, outcome) = cycle(&app).await;
    // Per-record refusals do not fail the cycle: it ends partial (succeeded, with refusals).
    assert_eq!(outcome, CycleOutcome::Partial, "{s:?}");
    let refused = [
        ("leads", "12", "11"),
        ("companies", "4", "3"),
        ("opportunities", "22", "21"),
        ("roles", "32", "31"),
        ("cars", "42", "41"),
    ];
    for (object, bad, good) in refused {
        let e = entry(&app, object, bad).await;
        assert_eq!(e.direction, Direction::CrmToMarketo, "{object}");
        assert_eq!(e.code, "1001", "{object}: Marketo's own code: {e:?}");
        assert!(
            e.message.contains("Invalid value"),
            "{object}: Marketo's message: {e:?}"
        );
        assert_eq!(e.attempts, 1, "{object}");
        assert_eq!(
            e.next_retry_at, None,
            "{object}: an invalid value is not retried"
        );
        assert_eq!(
            app.open_errors(object).await.len(),
            1,
            "{object}: one entry for the one refused record"
        );
        assert_eq!(
            s.objects[object][&Direction::CrmToMarketo].failed,
            1,
            "{object}: {s:?}"
        );
        assert!(linked(&app, object, good).await, "{object} {good} arrived");
        assert!(
            !linked(&app, object, bad).await,
            "{object} {bad} was refused"
        );
    }
    // Nothing was shortened on the way: the refused company is not in Marketo at all.
    assert!(app.sim.company("4").is_none());
    assert!(app.sim.company("3").is_some());
    app.cleanup().await;
}

#[tokio::test]
async fn a_refusal_that_is_not_retryable_waits_for_a_change_or_an_operator() {
    let app = app(&["leads", "companies", "cars"]).await;
    seed_good(&app).await;
    let long = "y".repeat(256);
    app.crm_exec(&format!(
        "INSERT INTO accounts (id, name) VALUES (4, '{long}')"
    ))
    .await;
    cycle(&app).await;
    let first = entry(&app, "companies", "4").await;
    assert_eq!((first.attempts, first.next_retry_at), (1, None));

    // A dry run agrees: the waiting record is not planned, and its counts are the plan's.
    let dry = app.dry_cycle().await;
    assert!(
        !dry.plan
            .iter()
            .any(|c| c.object == "companies" && c.source_key.as_deref() == Some("4")),
        "{:?}",
        dry.plan
    );
    let counted: u64 = dry
        .objects
        .values()
        .flat_map(|d| d.values())
        .map(|c| c.created + c.updated + c.deleted + c.waiting)
        .sum();
    assert_eq!(counted, dry.plan.len() as u64, "{:?}", dry.objects);
    assert_eq!(dry.failed(), 0, "{:?}", dry.objects);

    // Days later, nothing has changed: the record is not sent again.
    advance(&app, Duration::from_secs(2 * 24 * 3600));
    let (s, _) = cycle(&app).await;
    let still = entry(&app, "companies", "4").await;
    assert_eq!(still.attempts, 1, "not retried by itself: {s:?}");
    assert_eq!(still.next_retry_at, None);

    // An operator retries it: it is due now, is sent on the next cycle, fails again, and waits
    // again (same entry, one more attempt, no schedule).
    let now = app.clock.now();
    assert!(
        app.store
            .set_error_status(still.id, ErrorStatus::Open, Some(now))
            .await
            .unwrap()
    );
    cycle(&app).await;
    let again = entry(&app, "companies", "4").await;
    assert_eq!(again.id, first.id, "the entry keeps its id");
    assert_eq!(again.first_seen_at, first.first_seen_at);
    assert_eq!(again.attempts, 2, "{again:?}");
    assert_eq!(again.next_retry_at, None);

    // The record changes in the CRM: it is sent, written, and the entry resolved.
    app.crm_exec("UPDATE accounts SET name = 'Short name', updated_at = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = 4").await;
    cycle(&app).await;
    assert!(linked(&app, "companies", "4").await);
    assert!(app.open_errors("companies").await.is_empty());
    assert!(app.sim.company("4").is_some());
    app.cleanup().await;
}

#[tokio::test]
async fn a_retryable_refusal_follows_one_schedule_for_a_lead_a_company_and_a_custom_object() {
    let app = app(&["leads", "companies", "cars"]).await;
    seed_good(&app).await;
    app.crm_exec("INSERT INTO accounts (id, name) VALUES (4, 'Busy Co')")
        .await;
    app.crm_exec(
        "INSERT INTO contacts (id, email, first_name, last_name) \
         VALUES (12, 'busy@example.com', 'Bu', 'Sy')",
    )
    .await;
    app.crm_exec(
        "INSERT INTO vehicles (id, vin, contact_id, make) VALUES (42, 'VINBUSY', 11, 'Fiat')",
    )
    .await;
    // Marketo skips these three records with a reason that clears up by itself (1014, "Failed
    // to create Object"): retryable.
    for (field, value) in [
        ("email", "busy@example.com"),
        ("company", "Busy Co"),
        ("vin", "VINBUSY"),
    ] {
        app.sim
            .refuse_records(field, value, "1014", "Failed to create Object");
    }
    let cases = [("leads", "12"), ("companies", "4"), ("cars", "42")];

    let (s, outcome) = cycle(&app).await;
    assert_eq!(outcome, CycleOutcome::Partial, "{s:?}");
    let t1 = app.clock.now();
    for (object, key) in cases {
        let e = entry(&app, object, key).await;
        assert_eq!(
            (e.code.as_str(), e.attempts),
            ("1014", 1),
            "{object}: {e:?}"
        );
        assert_eq!(
            e.next_retry_at,
            Some(e.last_seen_at + chrono::Duration::minutes(5)),
            "{object}: first retry after 5 minutes"
        );
        assert!(e.last_seen_at <= t1);
    }
    assert!(linked(&app, "leads", "11").await && linked(&app, "cars", "41").await);

    // Not due yet: nothing is retried.
    advance(&app, Duration::from_secs(60));
    cycle(&app).await;
    for (object, key) in cases {
        assert_eq!(
            entry(&app, object, key).await.attempts,
            1,
            "{object} not due yet"
        );
    }

    // Due: each is retried, refused again, and waits twice as long.
    advance(&app, Duration::from_secs(5 * 60));
    cycle(&app).await;
    for (object, key) in cases {
        let e = entry(&app, object, key).await;
        assert_eq!(e.attempts, 2, "{object} retried when due: {e:?}");
        assert_eq!(
            e.next_retry_at,
            Some(e.last_seen_at + chrono::Duration::minutes(10)),
            "{object}: second retry after 10 minutes"
        );
    }

    // Marketo accepts them now; once due, each is written and its entry resolved.
    app.sim.clear_record_refusals();
    advance(&app, Duration::from_secs(10 * 60));
    let (s, outcome) = cycle(&app).await;
    assert_eq!(outcome, CycleOutcome::Succeeded, "{s:?}");
    for (object, key) in cases {
        assert!(
            linked(&app, object, key).await,
            "{object} {key} written on retry"
        );
        assert!(
            app.open_errors(object).await.is_empty(),
            "{object} resolved"
        );
    }
    app.cleanup().await;
}

/// Roles reference their opportunity: when the opportunities step fails as a whole (Marketo
/// unavailable on the opportunity routes), the roles step is skipped in that cycle rather than
/// writing roles Marketo refuses as "Opportunity not found" (1013) into the ledger, and both
/// arrive with the next cycle.
#[tokio::test]
async fn roles_wait_for_a_cycle_whose_opportunities_step_failed() {
    let app = app(&["leads", "companies", "opportunities", "roles"]).await;
    seed_good(&app).await;
    app.sim.set_faults(
        "route=opportunities,kind=unavailable,rate=1"
            .parse()
            .unwrap(),
    );
    let s = app
        .try_cycle()
        .await
        .expect("the cycle goes on past the failed step");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("step `roles` skipped") && w.contains("`opportunities`")),
        "{:?}",
        s.warnings
    );
    assert!(
        !s.warnings.iter().any(|w| w.contains("has no object")),
        "a failed describe is not reported as a missing object: {:?}",
        s.warnings
    );
    assert!(linked(&app, "leads", "11").await, "the contact arrived");
    assert!(!linked(&app, "opportunities", "21").await);
    assert!(!linked(&app, "roles", "31").await);
    assert!(
        app.open_errors("roles").await.is_empty(),
        "no role was written before its opportunity"
    );

    app.sim.set_faults(marketo_sync::sim::FaultProfile::none());
    let (s, outcome) = cycle(&app).await;
    assert_eq!(outcome, CycleOutcome::Succeeded, "{s:?}");
    assert!(linked(&app, "opportunities", "21").await);
    assert!(linked(&app, "roles", "31").await, "{s:?}");
    assert!(app.open_errors("roles").await.is_empty());
    app.cleanup().await;
}

/// A CRM that leaves a merged-away contact's roles and custom records pointing at it (found by
/// the convergence harness, seed 200481): they belong to the survivor's lead, as Marketo moves a
/// merged lead's roles to the winner, and never wait in the ledger for a contact that is gone.
#[tokio::test]
async fn dependents_of_a_contact_merged_away_in_the_crm_go_to_the_survivors_lead() {
    let app = app(OBJECTS).await;
    seed_good(&app).await;
    app.crm_exec(
        "INSERT INTO contacts (id, email, first_name, last_name) \
         VALUES (12, 'keeper@example.com', 'Kim', 'Keeper')",
    )
    .await;
    cycle(&app).await;
    let survivor_lead: i64 = app.marketo_by_email("keeper@example.com")[0];
    // Contact 11 is merged into 12; then roles and a vehicle still naming 11 are added.
    app.crm_update_contact("11", "merged_into", "12").await;
    app.crm_delete_contact("11").await;
    app.crm_exec(
        "INSERT INTO opportunity_contact_roles (id, opportunity_id, contact_id, role) \
         VALUES (33, 21, 11, 'Evaluator')",
    )
    .await;
    app.crm_exec(
        "INSERT INTO vehicles (id, vin, contact_id, make) VALUES (43, 'VIN43', 11, 'Ford')",
    )
    .await;
    app.settle(4).await;

    for object in ["roles", "cars"] {
        let open = app.open_errors(object).await;
        assert!(open.is_empty(), "{object}: {open:?}");
    }
    assert!(linked(&app, "roles", "33").await);
    assert!(linked(&app, "cars", "43").await);
    let roles = app.sim.objects(marketo_sync::sim::schema::ObjKind::Role);
    let evaluator: Vec<_> = roles.iter().filter(|r| r["role"] == "Evaluator").collect();
    assert_eq!(evaluator.len(), 1, "{roles:?}");
    assert_eq!(evaluator[0]["leadId"], survivor_lead, "{roles:?}");
    let cars = app.sim.objects(marketo_sync::sim::schema::ObjKind::Car);
    let ford: Vec<_> = cars.iter().filter(|c| c["vin"] == "VIN43").collect();
    assert_eq!(ford.len(), 1, "{cars:?}");
    assert_eq!(ford[0]["leadId"], survivor_lead, "{cars:?}");
    app.cleanup().await;
}
