//! Identity under merges, deletions and crashes: the cases the convergence harness found
//! (`marketo-sync converge`), each replayed on its own against the simulator and the SQLite demo
//! CRM. Every test ends with both sides holding one record per person, linked both ways.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harness::{CrmKind, Options, StoreKind, TestApp, text, written};
use marketo_sync::config::DeletePolicy;
use serde_json::json;

/// Where a scenario runs: the CRM database and the state store.
type On = (CrmKind, StoreKind);

fn deleting(on: On) -> Options {
    Options {
        crm: on.0,
        store: on.1,
        lead_deletes: DeletePolicy::Delete,
        lead_merges: DeletePolicy::Delete,
        ..Options::default()
    }
}

/// Asserts that `lead` and the CRM record with `email` point at each other.
async fn assert_linked(app: &TestApp, lead: i64, email: &str) {
    let contacts = app.crm_by_email(email).await;
    assert_eq!(
        contacts.len(),
        1,
        "one live contact has {email}: {contacts:?}"
    );
    assert_eq!(
        text(&contacts[0].fields, "marketo_id").as_deref(),
        Some(lead.to_string().as_str()),
        "the contact with {email} points at lead {lead}"
    );
    let m = app.marketo_lead(lead).expect("the lead is alive");
    assert_eq!(m["crmContactId"], json!(contacts[0].id), "lead {lead}: {m}");
}

async fn a_marketo_merge_and_an_edit_of_the_losers_contact_in_one_cycle_create_nothing(on: On) {
    // Seed 14: Marketo merged away a lead whose contact the CRM edited in the same interval.
    // The contact followed the merge policy (deleted), and its edit, read before that, must not
    // come back as a new lead.
    let app = TestApp::with(deleting(on)).await;
    let winner = app.marketo_create(json!({"email": "keep@example.com", "firstName": "W"}));
    let loser = app.marketo_create(json!({"email": "lose@example.com", "firstName": "L"}));
    app.settle(4).await;
    let c_loser = app.crm_by_email("lose@example.com").await[0].id.clone();
    app.sim.merge_leads(winner, &[loser]).unwrap();
    app.crm_update_contact(&c_loser, "phone", "555-0100").await;
    let s = app.run_cycle().await;
    let created: u64 = s.objects["leads"].values().map(|c| c.created).sum();
    assert_eq!(created, 0, "{s:?}");
    assert_eq!(written(&app.settle(4).await), 0);
    assert!(
        app.crm_contact(&c_loser).await.is_none(),
        "merge policy delete"
    );
    assert!(app.marketo_by_email("lose@example.com").is_empty());
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    assert_linked(&app, winner, "keep@example.com").await;
    app.cleanup().await;
}

async fn a_marketo_merge_into_a_new_winner_keeps_the_winners_own_crm_record(on: On) {
    // Seeds 15 and 24: the winner of a Marketo merge is new to the sync, and the CRM already
    // has its own record for it (typed with other case and spaces). The winner is linked to
    // that record; the loser's contact follows the merge policy instead of taking the winner
    // over, so neither side ends with two records for one email.
    let app = TestApp::with(deleting(on)).await;
    let loser = app.marketo_create(json!({"email": "one@example.com", "firstName": "One"}));
    app.settle(4).await;
    let c_loser = app.crm_by_email("one@example.com").await[0].id.clone();
    let c_own = app
        .crm_insert_contact(" Two@Example.COM ", "Two", "Crm")
        .await;
    let winner = app.marketo_create(json!({"email": "two@example.com", "firstName": "Two"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    app.settle(6).await;
    assert!(
        app.crm_contact(&c_loser).await.is_none(),
        "merge policy delete"
    );
    assert_eq!(
        app.sim.counters().leads,
        1,
        "no lead created for the CRM record"
    );
    assert_eq!(app.crm_count().await, 1);
    let c = app
        .crm_contact(&c_own)
        .await
        .expect("the winner's own record");
    assert_eq!(
        text(&c.fields, "marketo_id").as_deref(),
        Some(winner.to_string().as_str())
    );
    assert_eq!(
        app.marketo_lead(winner).unwrap()["crmContactId"],
        json!(c_own)
    );
    app.cleanup().await;
}

async fn a_crm_merge_into_a_contact_that_left_with_its_lead_deletes_the_losers_lead(on: On) {
    // Seed 8: Marketo merged lead A away (its contact deleted by the merge policy) while the
    // CRM merged contact B into A's contact. The survivor is gone, so B's lead follows the
    // delete policy rather than being linked to a deleted contact.
    let app = TestApp::with(deleting(on)).await;
    let keep = app.marketo_create(json!({"email": "keep@example.com"}));
    let a = app.marketo_create(json!({"email": "a@example.com"}));
    let b = app.marketo_create(json!({"email": "b@example.com"}));
    app.settle(4).await;
    let ca = app.crm_by_email("a@example.com").await[0].id.clone();
    let cb = app.crm_by_email("b@example.com").await[0].id.clone();
    app.sim.merge_leads(keep, &[a]).unwrap();
    app.crm_update_contact(&cb, "merged_into", &ca).await;
    app.crm_delete_contact(&cb).await;
    app.try_cycle().await.expect("cycle");
    assert_eq!(written(&app.settle(4).await), 0);
    assert!(
        app.marketo_lead(b).is_none(),
        "the loser's lead follows its contact"
    );
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    assert_linked(&app, keep, "keep@example.com").await;
    let live_links = app
        .store
        .links_by_marketo_keys("leads", &[b.to_string()])
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.tombstone.is_none())
        .count();
    assert_eq!(live_links, 0, "no live link to a deleted contact");
    app.cleanup().await;
}

async fn a_crm_merge_into_a_new_contact_hands_it_the_losers_lead(on: On) {
    // Seed 12: the CRM merged a synced contact into one the sync had not seen yet. The survivor
    // takes over the lead; the loser's row still held the lead's id in the unique Marketo-id
    // column, which is freed first, so the survivor can carry it.
    let app = TestApp::with(deleting(on)).await;
    let lead = app.marketo_create(json!({"email": "old@example.com", "firstName": "Old"}));
    app.settle(4).await;
    let c_old = app.crm_by_email("old@example.com").await[0].id.clone();
    let c_new = app
        .crm_insert_contact("new@example.com", "New", "Person")
        .await;
    app.crm_update_contact(&c_old, "merged_into", &c_new).await;
    app.crm_delete_contact(&c_old).await;
    app.settle(4).await;
    assert_eq!(
        written(&app.settle(3).await),
        0,
        "quiet: nothing keeps failing"
    );
    assert_eq!(
        app.sim.counters().leads,
        1,
        "no lead created for the survivor"
    );
    assert_eq!(app.crm_count().await, 1);
    let m = app.marketo_lead(lead).unwrap();
    assert_eq!(
        m["email"],
        json!("new@example.com"),
        "the survivor's values win: {m}"
    );
    assert_linked(&app, lead, "new@example.com").await;
    let errors = app
        .store
        .list_errors(&marketo_sync::store::ErrorFilter::default())
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    app.cleanup().await;
}

fn killable(on: On) -> (Arc<AtomicBool>, Options) {
    let (kill, hook) = harness::kill_switch();
    (
        kill,
        Options {
            commit_hook: Some(hook),
            ..deleting(on)
        },
    )
}

/// Inserts a contact of `email` and runs a cycle whose commit dies (`kill`): the cycle creates
/// the contact's lead in Marketo, which the store never links. Returns the contact and the lead.
async fn contact_with_a_dead_cycles_lead(
    app: &TestApp,
    kill: &AtomicBool,
    email: &str,
    (first, last): (&str, &str),
) -> (String, i64) {
    let cid = app.crm_insert_contact(email, first, last).await;
    kill.store(true, Ordering::SeqCst);
    assert!(app.try_cycle().await.is_err(), "the commit dies");
    kill.store(false, Ordering::SeqCst);
    let leads = app.marketo_by_email(email);
    assert_eq!(leads.len(), 1, "the dead cycle created the contact's lead");
    (cid, leads[0])
}

async fn a_lead_created_by_a_cycle_that_died_and_then_deleted_takes_its_contact_along(on: On) {
    // Seed 87: a cycle created the lead for a new contact and wrote the lead's id into the
    // contact, then died before its commit, so the store never linked them. Marketo then
    // deleted that lead. The contact holds the lead's id: the link is rebuilt from it and the
    // contact follows the delete policy, rather than being sent to Marketo again.
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    app.run_cycle().await;
    let (cid, first) =
        contact_with_a_dead_cycles_lead(&app, &kill, "gone@example.com", ("Gone", "Soon")).await;
    assert!(app.sim.delete_lead(first));
    app.settle(5).await;
    assert_eq!(written(&app.settle(3).await), 0);
    assert!(
        app.marketo_by_email("gone@example.com").is_empty(),
        "not sent again"
    );
    assert!(app.crm_contact(&cid).await.is_none(), "delete policy");
    app.cleanup().await;
}

async fn a_lead_created_by_a_cycle_that_died_and_then_merged_away_follows_the_merge_policy(on: On) {
    // The same, with the unrecorded lead merged into another synced lead instead.
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    let keep = app.marketo_create(json!({"email": "keep@example.com", "firstName": "K"}));
    app.settle(4).await;
    let cid = app
        .crm_insert_contact("merged@example.com", "M", "Erged")
        .await;
    kill.store(true, Ordering::SeqCst);
    assert!(app.try_cycle().await.is_err(), "the commit dies");
    kill.store(false, Ordering::SeqCst);
    let loser = app.marketo_by_email("merged@example.com")[0];
    app.sim.merge_leads(keep, &[loser]).unwrap();
    app.settle(5).await;
    assert_eq!(written(&app.settle(3).await), 0);
    assert!(app.marketo_by_email("merged@example.com").is_empty());
    assert!(app.crm_contact(&cid).await.is_none(), "merge policy delete");
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    assert_linked(&app, keep, "keep@example.com").await;
    app.cleanup().await;
}

async fn the_crm_writes_of_a_cycle_that_died_are_read_again(on: On) {
    // The CRM adapter leaves its own writes out of its change feed. A cycle that dies before
    // its commit did not record them, and each may have overwritten a user's change: the next
    // cycle must read them again.
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    app.run_cycle().await;
    app.crm_insert_contact("again@example.com", "Read", "Again")
        .await;
    kill.store(true, Ordering::SeqCst);
    assert!(app.try_cycle().await.is_err(), "the commit dies");
    kill.store(false, Ordering::SeqCst);
    let s = app.run_cycle().await;
    assert_eq!(
        s.objects["leads"][&marketo_sync::model::Direction::CrmToMarketo].read,
        1,
        "the contact the dead cycle wrote its lead id into is read again: {s:?}"
    );
    assert_eq!(app.marketo_by_email("again@example.com").len(), 1);
    app.cleanup().await;
}

async fn a_crm_merge_into_a_contact_whose_lead_a_dead_cycle_created_merges_the_leads(on: On) {
    // Seed 2011 (100 steps): a cycle created the lead for a new contact N and died before its
    // commit; the CRM then merged contact A into N. N holds its lead's id, so the survivor's
    // lead is known and A's lead is merged into it in Marketo, even though N's lead no longer
    // matches N by email (it was edited in Marketo meanwhile).
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    let a = app.marketo_create(json!({"email": "a@example.com", "firstName": "A"}));
    app.settle(4).await;
    let ca = app.crm_by_email("a@example.com").await[0].id.clone();
    let cn = app.crm_insert_contact("n@example.com", "N", "New").await;
    kill.store(true, Ordering::SeqCst);
    assert!(app.try_cycle().await.is_err(), "the commit dies");
    kill.store(false, Ordering::SeqCst);
    let n = app.marketo_by_email("n@example.com")[0];
    app.marketo_update(n, json!({"email": "renamed@example.com"}));
    app.crm_update_contact(&ca, "merged_into", &cn).await;
    app.crm_delete_contact(&ca).await;
    app.settle(6).await;
    assert_eq!(written(&app.settle(3).await), 0);
    assert!(
        app.marketo_lead(a).is_none(),
        "A's lead was merged into N's"
    );
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    let c = app.crm_contact(&cn).await.expect("the survivor");
    assert_eq!(
        text(&c.fields, "marketo_id").as_deref(),
        Some(n.to_string().as_str())
    );
    assert_eq!(app.marketo_lead(n).unwrap()["crmContactId"], json!(cn));
    app.cleanup().await;
}

async fn a_merge_of_two_leads_a_dead_cycle_gave_records_keeps_the_winners_own(on: On) {
    // Seed 220140 (engine as a child process): one cycle created a lead L for a new contact C
    // and a contact W for a new lead N, and was killed after the CRM creates, before C got L's
    // id and N got W's id. Marketo then merged L into N, so N inherited L's CRM key (C). The
    // next cycle must link N to its own contact W (it holds N's id) and apply the merge policy
    // to C, the loser's contact, rather than pair N with C by that inherited key: that pair's
    // Marketo write went through and its CRM write was refused (W holds N's id), C's email
    // reached N and then W, and the CRM ended with two contacts of C's email.
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    app.run_cycle().await;
    let c_loser = app
        .crm_insert_contact("loser@example.com", "Lo", "Ser")
        .await;
    let winner = app.marketo_create(json!({"email": "winner@example.com", "firstName": "Win"}));
    kill.store(true, Ordering::SeqCst);
    assert!(app.try_cycle().await.is_err(), "the commit dies");
    kill.store(false, Ordering::SeqCst);
    let loser = app.marketo_by_email("loser@example.com");
    assert_eq!(loser.len(), 1, "the dead cycle created the contact's lead");
    let c_own = app.crm_by_email("winner@example.com").await;
    assert_eq!(c_own.len(), 1, "the dead cycle created the lead's contact");
    let c_own = c_own[0].id.clone();
    // The kill came after the CRM creates: C never got its lead's id, N never got W's id.
    app.crm_exec(&format!(
        "UPDATE contacts SET marketo_id = NULL WHERE id = {c_loser}"
    ))
    .await;
    app.marketo_update(winner, json!({"crmContactId": null}));
    app.sim.merge_leads(winner, &[loser[0]]).unwrap();
    assert_eq!(
        app.marketo_lead(winner).unwrap()["crmContactId"],
        json!(c_loser),
        "the winner inherits the loser's CRM key"
    );
    app.settle(6).await;
    assert_eq!(written(&app.settle(3).await), 0);
    let errors = app.open_errors("leads").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_linked(&app, winner, "winner@example.com").await;
    assert_eq!(app.crm_contact(&c_own).await.unwrap().id, c_own);
    assert!(
        app.crm_contact(&c_loser).await.is_none(),
        "the loser's contact follows the merge policy (delete)"
    );
    assert!(app.crm_by_email("loser@example.com").await.is_empty());
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    app.cleanup().await;
}

async fn a_new_winner_that_inherits_a_dead_cycles_contact_keeps_the_contact_of_its_email(on: On) {
    // Seed 691001 (engine as a child process): a cycle created lead L for the CRM user's
    // contact C and was killed before writing L's id into C or committing. The CRM user then
    // converted a lead into contact W, and Marketo got lead N of W's email; Marketo merged L
    // into N, so N inherited L's CRM key (C). The next cycle must pair N with W, the record of
    // its email, and apply the merge policy to C, the loser's contact, rather than pair N with
    // C by that inherited key: that wrote N's email into C, two contacts of one email, and W
    // was held as a duplicate.
    let (kill, options) = killable(on);
    let app = TestApp::with(options).await;
    app.run_cycle().await;
    let (c_loser, loser) =
        contact_with_a_dead_cycles_lead(&app, &kill, "loser@example.com", ("Lo", "Ser")).await;
    assert_eq!(
        app.marketo_lead(loser).unwrap()["crmContactId"],
        json!(c_loser)
    );
    // The kill came before the CRM update that writes the new lead's id into the contact.
    app.crm_exec(&format!(
        "UPDATE contacts SET marketo_id = NULL WHERE id = {c_loser}"
    ))
    .await;
    let c_own = app
        .crm_insert_contact("winner@example.com", "Win", "Ner")
        .await;
    let winner = app.marketo_create(json!({"email": "winner@example.com", "firstName": "Win"}));
    app.sim.merge_leads(winner, &[loser]).unwrap();
    assert_eq!(
        app.marketo_lead(winner).unwrap()["crmContactId"],
        json!(c_loser),
        "the winner inherits the loser's CRM key"
    );
    app.settle(6).await;
    assert_eq!(written(&app.settle(3).await), 0);
    let errors = app.open_errors("leads").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_linked(&app, winner, "winner@example.com").await;
    let mine = app.crm_by_email("winner@example.com").await;
    assert_eq!(mine.len(), 1, "one contact of the winner's email: {mine:?}");
    assert_eq!(
        mine[0].id, c_own,
        "the winner keeps the contact of its email"
    );
    assert!(
        app.crm_contact(&c_loser).await.is_none(),
        "the loser's contact follows the merge policy (delete)"
    );
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(app.crm_count().await, 1);
    app.cleanup().await;
}

async fn two_merges_into_one_new_winner_in_one_cycle_give_it_one_crm_record(on: On) {
    // Seed 253: two synced leads were merged, one after the other, into a lead new to the sync.
    // The first merge hands the winner the first loser's contact; the second must see that
    // (it is not in the store yet) and apply the merge policy to the second loser's contact,
    // rather than try to hand the winner a second contact.
    let app = TestApp::with(deleting(on)).await;
    let a = app.marketo_create(json!({"email": "a@example.com", "firstName": "A"}));
    let b = app.marketo_create(json!({"email": "b@example.com", "firstName": "B"}));
    app.settle(4).await;
    let ca = app.crm_by_email("a@example.com").await[0].id.clone();
    let cb = app.crm_by_email("b@example.com").await[0].id.clone();
    let winner = app.marketo_create(json!({"email": "w@example.com", "firstName": "W"}));
    app.sim.merge_leads(winner, &[a]).unwrap();
    app.sim.merge_leads(winner, &[b]).unwrap();
    let s = app.run_cycle().await;
    assert_eq!(s.failed(), 0, "{s:?}");
    assert_eq!(written(&app.settle(4).await), 0);
    assert_eq!(app.sim.counters().leads, 1);
    assert_eq!(
        app.crm_count().await,
        1,
        "one loser's contact went by the merge policy"
    );
    assert!(app.crm_contact(&cb).await.is_none());
    assert_linked(&app, winner, "w@example.com").await;
    assert_eq!(
        app.crm_contact(&ca).await.unwrap().id,
        ca,
        "the first loser's contact stays"
    );
    app.cleanup().await;
}

macro_rules! on {
    ($module:ident, $on:expr; $($name:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($on).await;
                }
            )*
        }
    };
}

on!(sqlite, (CrmKind::Sqlite, StoreKind::Sqlite);
    a_marketo_merge_and_an_edit_of_the_losers_contact_in_one_cycle_create_nothing, a_marketo_merge_into_a_new_winner_keeps_the_winners_own_crm_record, a_crm_merge_into_a_contact_that_left_with_its_lead_deletes_the_losers_lead, a_crm_merge_into_a_new_contact_hands_it_the_losers_lead, a_lead_created_by_a_cycle_that_died_and_then_deleted_takes_its_contact_along, a_lead_created_by_a_cycle_that_died_and_then_merged_away_follows_the_merge_policy, the_crm_writes_of_a_cycle_that_died_are_read_again, two_merges_into_one_new_winner_in_one_cycle_give_it_one_crm_record,
    a_crm_merge_into_a_contact_whose_lead_a_dead_cycle_created_merges_the_leads,
    a_merge_of_two_leads_a_dead_cycle_gave_records_keeps_the_winners_own,
    a_new_winner_that_inherits_a_dead_cycles_contact_keeps_the_contact_of_its_email);
on!(postgres, (CrmKind::Postgres, StoreKind::Postgres);
    a_marketo_merge_and_an_edit_of_the_losers_contact_in_one_cycle_create_nothing, a_marketo_merge_into_a_new_winner_keeps_the_winners_own_crm_record, a_crm_merge_into_a_contact_that_left_with_its_lead_deletes_the_losers_lead, a_crm_merge_into_a_new_contact_hands_it_the_losers_lead, a_lead_created_by_a_cycle_that_died_and_then_deleted_takes_its_contact_along, a_lead_created_by_a_cycle_that_died_and_then_merged_away_follows_the_merge_policy, the_crm_writes_of_a_cycle_that_died_are_read_again, two_merges_into_one_new_winner_in_one_cycle_give_it_one_crm_record,
    a_crm_merge_into_a_contact_whose_lead_a_dead_cycle_created_merges_the_leads,
    a_merge_of_two_leads_a_dead_cycle_gave_records_keeps_the_winners_own,
    a_new_winner_that_inherits_a_dead_cycles_contact_keeps_the_contact_of_its_email);
