//! The HubSpot adapter against the HubSpot simulator started in-process: describe and schema
//! drift, the change feed (narrowed windows, archives as deletes, merges), batch upserts with
//! per-record refusals, association labels as roles, 429 handling on the paused clock, and the
//! token kept out of errors.

use std::collections::BTreeSet;
use std::time::Duration;

use marketo_sync::crm::hubspot::{HubSpotCrm, HubSpotOptions};
use marketo_sync::crm::{
    ChangeKind, Crm, CrmError, Cursor, DeleteHow, FeedNeeds, RefusalReason, WriteResult,
};
use marketo_sync::model::{Fields, Value};
use marketo_sync::sim::hubspot::model::parse_ts;
use marketo_sync::sim::hubspot::{HubSpotConfig, HubSpotHandle, HubSpotSim, RateLimits};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, json};

async fn sim(contacts: usize) -> HubSpotHandle {
    HubSpotSim::start(HubSpotConfig {
        contacts,
        start: parse_ts("2026-03-02T09:00:00Z"),
        ..HubSpotConfig::default()
    })
    .await
    .unwrap()
}

fn add_marketo_id(sim: &HubSpotHandle, object_type: &str) {
    sim.add_property(
        object_type,
        &json!({ "name": "marketo_id", "label": "Marketo id", "type": "string",
                 "fieldType": "text", "groupName": "contactinformation", "hasUniqueValue": true }),
    )
    .unwrap();
}

fn options(sim: &HubSpotHandle, extra: serde_json::Value) -> HubSpotOptions {
    let mut json = json!({
        "base_url": sim.base_url(),
        "tier": "professional",
        "max_retries": 3,
        "objects": {
            "contacts": { "object_type": "contacts", "marketo_id_property": "marketo_id",
                          "properties": ["email", "firstname", "lastname", "marketo_id"],
                          "writable": true },
            "deals": { "object_type": "deals" },
            "roles": { "object_type": "associations", "from": "deals", "to": "contacts",
                       "primary_label": "Decision Maker" },
            "owners": { "object_type": "owners" }
        }
    });
    if let (Some(base), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    HubSpotOptions::from_json(&json).unwrap()
}

async fn adapter(sim: &HubSpotHandle, extra: serde_json::Value) -> HubSpotCrm {
    HubSpotCrm::connect_with_token(options(sim, extra), sim.token())
        .await
        .unwrap()
}

/// Reads the feed until it says no more; returns every change and the last cursor.
async fn drain(
    crm: &HubSpotCrm,
    object: &str,
    cursor: Option<Cursor>,
    limit: usize,
) -> (Vec<marketo_sync::crm::Change>, Option<Cursor>) {
    let mut cursor = cursor;
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = crm.changes(object, cursor.as_ref(), limit).await.unwrap();
        all.extend(page.changes);
        cursor = Some(page.next);
        if !page.more {
            return (all, cursor);
        }
    }
    panic!("the feed never ended");
}

fn props(pairs: &[(&str, serde_json::Value)]) -> Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn describe_reads_the_properties_api_and_follows_deleted_properties() {
    let sim = sim(5).await;
    add_marketo_id(&sim, "contacts");
    sim.add_property(
        "contacts",
        &json!({ "name": "favourite_colour", "label": "Colour", "type": "string",
                 "fieldType": "text", "groupName": "contactinformation" }),
    )
    .unwrap();
    // Schemas are read again on every describe (by default they are reused for a minute).
    let crm = adapter(&sim, json!({ "schema_ttl_seconds": 0 })).await;
    let schema = crm.describe("contacts").await.unwrap();
    assert_eq!(schema.id_field.as_deref(), Some("hs_object_id"));
    assert_eq!(schema.dedupe_fields, vec!["marketo_id".to_owned()]);
    let mk = schema.field("marketo_id").unwrap();
    assert!(mk.unique && !mk.read_only);
    assert!(schema.field("favourite_colour").is_some());
    assert!(schema.field("hs_object_id").unwrap().read_only);

    sim.delete_property("contacts", "favourite_colour").unwrap();
    let schema = crm.describe("contacts").await.unwrap();
    assert!(
        schema.field("favourite_colour").is_none(),
        "a deleted property leaves the schema"
    );
    assert!(schema.field("email").is_some());
}

#[tokio::test]
async fn a_marketo_id_property_that_is_not_unique_is_refused_at_connect() {
    let sim = sim(1).await;
    sim.add_property(
        "contacts",
        &json!({ "name": "marketo_id", "label": "Marketo id", "type": "string",
                 "fieldType": "text", "groupName": "contactinformation" }),
    )
    .unwrap();
    let err = HubSpotCrm::connect_with_token(options(&sim, json!({})), sim.token())
        .await
        .unwrap_err();
    assert!(matches!(err, CrmError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("marketo_id"), "{err}");
}

#[tokio::test]
async fn the_feed_reads_every_record_through_narrowed_windows_then_only_new_changes() {
    let sim = sim(120).await;
    add_marketo_id(&sim, "contacts");
    // A cap of 50 results per query forces the feed to narrow its window several times.
    let crm = adapter(&sim, json!({ "search_result_cap": 50 })).await;
    let (changes, cursor) = drain(&crm, "contacts", None, 20).await;
    let high = changes.iter().map(|c| c.modified_at).max().unwrap();
    let read: BTreeSet<u64> = changes.iter().map(|c| c.id.parse().unwrap()).collect();
    let live: BTreeSet<u64> = sim.ids("contacts").into_iter().collect();
    assert_eq!(read, live, "every live contact is read once at least");

    // An edit after the first poll is read by the next one; untouched records outside the
    // overlap window are not.
    sim.advance_clock(Duration::from_secs(3600));
    let id = *live.iter().next().unwrap();
    assert!(
        sim.update("contacts", id, props(&[("firstname", json!("Changed"))]))
            .unwrap()
    );
    let (changes, _) = drain(&crm, "contacts", cursor, 20).await;
    let edited = changes
        .iter()
        .find(|c| c.id == id.to_string())
        .expect("the edit is read");
    for other in changes.iter().filter(|c| c.id != id.to_string()) {
        assert!(
            other.modified_at >= high - chrono::Duration::seconds(300),
            "only the overlap window is read again: {other:?}"
        );
    }
    let ChangeKind::Upserted { fields } = &edited.kind else {
        panic!("{edited:?}");
    };
    assert_eq!(fields.get("firstname"), Some(&Value::from("Changed")));
}

#[tokio::test]
async fn archived_records_are_deletes_and_merged_ones_point_at_the_survivor() {
    let sim = sim(10).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(&sim, json!({})).await;
    let (_, cursor) = drain(&crm, "contacts", None, 100).await;
    let ids = sim.ids("contacts");
    sim.advance_clock(Duration::from_secs(3600));
    assert!(sim.archive("contacts", ids[0]).unwrap());
    let survivor = sim.merge("contacts", ids[1], ids[2]).unwrap();
    let (changes, _) = drain(&crm, "contacts", cursor, 100).await;
    let archived = changes
        .iter()
        .find(|c| c.id == ids[0].to_string())
        .expect("the archived contact is reported");
    assert!(
        matches!(&archived.kind, ChangeKind::Deleted(t) if t.how == DeleteHow::Soft),
        "{archived:?}"
    );
    let merged = changes
        .iter()
        .find(|c| c.id == ids[2].to_string() && matches!(c.kind, ChangeKind::Deleted(_)))
        .expect("the merged-away contact is reported");
    assert!(
        matches!(&merged.kind, ChangeKind::Deleted(t) if t.how == DeleteHow::Merged { into: survivor.to_string() }),
        "{merged:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.id == survivor.to_string() && matches!(c.kind, ChangeKind::Upserted { .. }))
    );
    // The archived record is not live any more.
    assert!(
        crm.get("contacts", &[ids[0].to_string()])
            .await
            .unwrap()
            .is_empty()
    );
}

fn contact(marketo_id: i64, email: &str, first: &str) -> Fields {
    let mut f = Fields::new();
    f.insert("marketo_id".into(), Value::Int(marketo_id));
    f.insert("email".into(), Value::from(email));
    f.insert("firstname".into(), Value::from(first));
    f
}

#[tokio::test]
async fn upserts_report_each_record_and_one_bad_record_never_fails_the_others() {
    let sim = sim(0).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(&sim, json!({})).await;
    let mut unknown = contact(3, "c@example.com", "Cy");
    unknown.insert("no_such_property".into(), Value::from("x"));
    let mut too_long = contact(4, "d@example.com", "Di");
    too_long.insert("lastname".into(), Value::Text("x".repeat(70_000)));
    let batch = vec![
        contact(1, "a@example.com", "Ada"),
        unknown,
        contact(2, "b@example.com", "Bo"),
        too_long,
        Fields::from([("email".to_owned(), Value::from("e@example.com"))]),
    ];
    let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert_eq!(results.len(), 5);
    let WriteResult::Created { id: a } = &results[0] else {
        panic!("{results:?}");
    };
    assert!(
        matches!(&results[2], WriteResult::Created { .. }),
        "{results:?}"
    );
    assert!(matches!(
        results[1].refusal().map(|r| &r.reason),
        Some(RefusalReason::UnknownField { field }) if field == "no_such_property"
    ));
    assert!(matches!(
        results[3].refusal().map(|r| &r.reason),
        Some(RefusalReason::TooLong {
            actual_chars: 70_000,
            ..
        })
    ));
    assert_eq!(
        results[4].refusal().map(|r| &r.reason),
        Some(&RefusalReason::MissingKey)
    );
    assert_eq!(
        sim.ids("contacts").len(),
        2,
        "the refused records were not written"
    );

    // Again: the same key updates; a value HubSpot itself refuses is that record's refusal only.
    let mut bad_email = contact(5, "not an email", "Ed");
    bad_email.insert("email".into(), Value::from("not an email"));
    let batch = vec![contact(1, "a@example.com", "Adeline"), bad_email];
    let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: a.clone() });
    let refusal = results[1].refusal().expect("hubspot refuses the bad email");
    assert!(refusal.remote_code.is_some(), "{refusal:?}");
    let stored = crm.get("contacts", std::slice::from_ref(a)).await.unwrap();
    assert_eq!(
        stored[0].fields.get("firstname"),
        Some(&Value::from("Adeline"))
    );

    // Update-only by hs_object_id: a missing id is not_found, nothing is created.
    let mut by_id = Fields::new();
    by_id.insert("hs_object_id".into(), Value::from(a.as_str()));
    by_id.insert("lastname".into(), Value::from("Lovelace"));
    let mut missing = Fields::new();
    missing.insert("hs_object_id".into(), Value::from("999999"));
    missing.insert("lastname".into(), Value::from("Nobody"));
    let results = crm
        .upsert("contacts", "hs_object_id", &[by_id, missing])
        .await
        .unwrap();
    assert_eq!(results[0], WriteResult::Updated { id: a.clone() });
    assert_eq!(
        results[1].refusal().map(|r| &r.reason),
        Some(&RefusalReason::NotFound)
    );
    assert_eq!(sim.ids("contacts").len(), 2);

    // Finding by email ignores case and white space when folded.
    let found = crm
        .find_folded("contacts", "email", &[Value::from(" A@Example.COM ")])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(&found[0].id, a);
    let exact = crm
        .find("contacts", "marketo_id", &[Value::from("2")])
        .await
        .unwrap();
    assert_eq!(exact.len(), 1);

    // Deletes archive; an unknown id is not_found.
    let results = crm
        .delete("contacts", &[a.clone(), "424242".to_owned()])
        .await
        .unwrap();
    assert_eq!(results[0], WriteResult::Deleted { id: a.clone() });
    assert_eq!(
        results[1].refusal().map(|r| &r.reason),
        Some(&RefusalReason::NotFound)
    );
    assert_eq!(sim.ids("contacts").len(), 1);
}

#[tokio::test]
async fn an_upsert_batch_costs_one_call_and_reads_nothing_back() {
    let sim = sim(0).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(&sim, json!({})).await;
    let batch: Vec<Fields> = (1..=100)
        .map(|i| contact(i, &format!("p{i}@example.com"), "P"))
        .collect();
    let before = sim.request_log().len();
    let results = crm.upsert("contacts", "marketo_id", &batch).await.unwrap();
    let calls: Vec<String> = sim.request_log()[before..]
        .iter()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        calls,
        ["/crm/v3/objects/contacts/batch/upsert"],
        "one call for 100 records"
    );
    for (i, r) in results.iter().enumerate() {
        let WriteResult::Created { id } = r else {
            panic!("{r:?}");
        };
        let stored = sim.record("contacts", id.parse().unwrap()).unwrap();
        assert_eq!(
            stored["properties"]["marketo_id"],
            json!((i + 1).to_string()),
            "result {i} is its own record's"
        );
    }
}

#[tokio::test]
async fn prepare_creates_the_unique_marketo_id_property_once() {
    use marketo_sync::crm::hubspot::prepare::{Prepared, prepare};
    let sim = sim(1).await;
    let mut options = options(&sim, json!({}));
    options
        .objects
        .get_mut("deals")
        .unwrap()
        .marketo_id_property = Some("marketo_id".into());
    options.objects.get_mut("deals").unwrap().writable = true;
    sim.add_property(
        "deals",
        &json!({ "name": "marketo_id", "label": "Marketo id", "type": "string",
                 "fieldType": "text", "groupName": "dealinformation" }),
    )
    .unwrap();
    let done = prepare(&options, sim.token()).await.unwrap();
    assert_eq!(
        done,
        vec![
            Prepared::Created {
                object: "contacts".into(),
                object_type: "contacts".into(),
                property: "marketo_id".into(),
            },
            Prepared::NotUnique {
                object: "deals".into(),
                property: "marketo_id".into(),
            },
        ]
    );
    assert!(done[1].to_string().contains("unique"), "{}", done[1]);
    // The adapter now connects (it refuses a writable object without its unique property).
    let crm = adapter(&sim, json!({})).await;
    let mk = crm.describe("contacts").await.unwrap();
    assert!(mk.field("marketo_id").is_some_and(|f| f.unique));
    // Again: nothing to do.
    let again = prepare(&options, sim.token()).await.unwrap();
    assert!(
        matches!(&again[0], Prepared::Present { object, .. } if object == "contacts"),
        "{again:?}"
    );
}

#[tokio::test]
async fn read_only_objects_refuse_writes() {
    let sim = sim(2).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(&sim, json!({})).await;
    let err = crm.upsert("deals", "marketo_id", &[]).await.unwrap_err();
    assert!(matches!(err, CrmError::NotWritable { .. }), "{err}");
    let err = crm.delete("owners", &["1".into()]).await.unwrap_err();
    assert!(matches!(err, CrmError::NotWritable { .. }), "{err}");
}

#[tokio::test]
async fn deal_contact_labels_are_roles_and_owners_are_listed() {
    let sim = sim(5).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(&sim, json!({})).await;
    let http = reqwest::Client::new();
    let label: serde_json::Value = http
        .post(format!(
            "{}/crm/v4/associations/deals/contacts/labels",
            sim.base_url()
        ))
        .bearer_auth(sim.token().expose_secret())
        .json(&json!({ "label": "Decision Maker", "name": "decision_maker" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let type_id = label["results"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|s| s["label"] == "Decision Maker" || s["category"] == "USER_DEFINED")
        })
        .and_then(|s| s["typeId"].as_u64())
        .unwrap_or_else(|| panic!("no label type in {label}"));
    let deal = sim
        .create(
            "deals",
            props(&[("dealname", json!("Big one")), ("amount", json!("1000"))]),
        )
        .unwrap();
    let contact = sim.ids("contacts")[0];
    sim.associate(
        "deals",
        deal,
        "contacts",
        contact,
        u32::try_from(type_id).unwrap(),
    )
    .unwrap();
    let (changes, _) = drain(&crm, "roles", None, 100).await;
    let roles: Vec<&Fields> = changes
        .iter()
        .filter_map(|c| match &c.kind {
            ChangeKind::Upserted { fields } => Some(fields),
            ChangeKind::Deleted(_) => None,
        })
        .filter(|f| f.get("opportunity_id") == Some(&Value::Text(deal.to_string())))
        .collect();
    let labelled = roles
        .iter()
        .find(|f| f.get("role") == Some(&Value::from("Decision Maker")))
        .unwrap_or_else(|| panic!("no labelled role in {roles:?}"));
    assert_eq!(
        labelled.get("contact_id"),
        Some(&Value::Text(contact.to_string()))
    );
    assert_eq!(labelled.get("is_primary"), Some(&Value::Bool(true)));
    assert!(
        roles
            .iter()
            .filter(|f| f.get("contact_id") == Some(&Value::Text(contact.to_string())))
            .all(|f| f.get("role") == Some(&Value::from("Decision Maker"))),
        "the plain association next to the label is no role of its own: {roles:?}"
    );

    let (owners, _) = drain(&crm, "owners", None, 100).await;
    assert!(!owners.is_empty());
    let ChangeKind::Upserted { fields } = &owners[0].kind else {
        panic!("{owners:?}");
    };
    assert!(fields.contains_key("email"));
}

#[tokio::test(start_paused = true)]
async fn a_429_is_waited_out_as_hubspot_asks() {
    let sim = sim(3).await;
    add_marketo_id(&sim, "contacts");
    // The adapter believes it may send 100 a second; the portal allows 4 per 10 seconds.
    let crm = adapter(
        &sim,
        json!({ "requests_per_10s": 1000, "timeout_seconds": 3600 }),
    )
    .await;
    sim.set_limits(RateLimits {
        per_ten_seconds: 4,
        ..RateLimits::default()
    });
    let start = tokio::time::Instant::now();
    let ids: Vec<String> = sim.ids("contacts").iter().map(u64::to_string).collect();
    for _ in 0..6 {
        let got = crm.get("contacts", &ids).await.unwrap();
        assert_eq!(got.len(), 3);
    }
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "the adapter waited for the window: {:?}",
        start.elapsed()
    );
    assert!(
        sim.request_log().iter().any(|e| e.status == 429),
        "the portal did refuse some calls"
    );
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let sim = sim(1).await;
    add_marketo_id(&sim, "contacts");
    let wrong = SecretString::from("pat-na1-wrong-secret-token".to_owned());
    let err = HubSpotCrm::connect_with_token(options(&sim, json!({})), wrong)
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("pat-na1-wrong-secret-token"), "{text}");
    assert!(!err.is_retryable());
    let crm = adapter(&sim, json!({})).await;
    let debug = format!("{crm:?}");
    assert!(!debug.contains(sim.token().expose_secret()), "{debug}");
}

#[test]
fn the_example_config_loads_offline_with_valid_adapter_options() {
    use marketo_sync::config::{SettingsSource, load};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/hubspot");
    let vars = std::collections::HashMap::from([(
        "MKSYNC__MARKETO__CLIENT_SECRET".to_owned(),
        "example-secret".to_owned(),
    )]);
    let loaded =
        load(&SettingsSource::new(&dir, None).with_vars(vars)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.settings.crm.adapter, "hubspot");
    // leads, companies, opportunities, and the one-way roles and salespersons.
    assert_eq!(loaded.mappings.len(), 5);
    let options = HubSpotOptions::from_json(&loaded.settings.crm.options).unwrap();
    assert!(options.objects["contacts"].writable);
    assert_eq!(options.objects["deal_contacts"].object_type, "associations");
}

#[tokio::test]
async fn more_changes_than_hubspots_10k_search_cap_are_all_read() {
    let sim = sim(10_150).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(
        &sim,
        json!({ "requests_per_10s": 1000, "search_per_second": 1000 }),
    )
    .await;
    sim.set_limits(RateLimits {
        per_ten_seconds: 100_000,
        search_per_second: 100_000,
        daily: 10_000_000,
        ..RateLimits::default()
    });
    let (changes, _) = drain(&crm, "contacts", None, 200).await;
    let read: BTreeSet<u64> = changes.iter().map(|c| c.id.parse().unwrap()).collect();
    assert_eq!(
        read.len(),
        10_150,
        "every contact is read past the 10,000-result cap"
    );
    assert!(
        sim.request_log().iter().all(|e| e.status < 400),
        "no query paged past the cap"
    );
}

/// Reads the feed for `needs` until it says no more; returns every change, the last cursor and
/// the HubSpot requests it took, by `METHOD path`.
async fn drain_for(
    crm: &HubSpotCrm,
    sim: &HubSpotHandle,
    object: &str,
    cursor: Option<Cursor>,
    needs: FeedNeeds,
) -> (Vec<marketo_sync::crm::Change>, Option<Cursor>, Vec<String>) {
    let from = sim.request_log().len();
    let mut cursor = cursor;
    let mut all = Vec::new();
    for _ in 0..1_000 {
        let page = crm
            .changes_for(object, cursor.as_ref(), 100, needs)
            .await
            .unwrap();
        all.extend(page.changes);
        cursor = Some(page.next);
        if !page.more {
            let calls = sim.request_log()[from..]
                .iter()
                .map(|e| format!("{} {}", e.method, e.path))
                .collect();
            return (all, cursor, calls);
        }
    }
    panic!("the feed never ended");
}

#[tokio::test]
async fn each_reader_reads_only_the_kinds_of_change_it_needs() {
    let sim = sim(20).await;
    add_marketo_id(&sim, "contacts");
    let crm = adapter(
        &sim,
        json!({ "objects": {
            "companies": { "object_type": "companies", "properties": ["name"] },
        } }),
    )
    .await;
    let (_, upserts, _) = drain_for(&crm, &sim, "companies", None, FeedNeeds::Upserts).await;
    let (_, deletes, _) = drain_for(&crm, &sim, "companies", None, FeedNeeds::Deletes).await;
    let ids = sim.ids("companies");
    sim.advance_clock(Duration::from_secs(3600));
    assert!(sim.archive("companies", ids[0]).unwrap());
    let survivor = sim.merge("companies", ids[1], ids[2]).unwrap();
    sim.update("companies", ids[3], props(&[("name", json!("Renamed"))]))
        .unwrap();

    // The create/update reader: one search, no archived listing; the edit and the survivor.
    let (changes, _, calls) =
        drain_for(&crm, &sim, "companies", upserts.clone(), FeedNeeds::Upserts).await;
    assert_eq!(
        calls,
        vec!["POST /crm/v3/objects/companies/search"],
        "{calls:?}"
    );
    let upserted: BTreeSet<String> = changes
        .iter()
        .filter(|c| matches!(c.kind, ChangeKind::Upserted { .. }))
        .map(|c| c.id.clone())
        .collect();
    assert!(upserted.contains(&ids[3].to_string()), "{changes:?}");
    assert!(upserted.contains(&survivor.to_string()), "{changes:?}");

    // The deletions reader: the merge (from a search of merged survivors) and the archive,
    // and no created or updated record.
    let (changes, _, calls) =
        drain_for(&crm, &sim, "companies", deletes.clone(), FeedNeeds::Deletes).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        changes
            .iter()
            .all(|c| matches!(c.kind, ChangeKind::Deleted(_))),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| c.id == ids[0].to_string()
        && matches!(&c.kind, ChangeKind::Deleted(t) if t.how == DeleteHow::Soft)));
    assert!(changes.iter().any(|c| c.id == ids[2].to_string()
        && matches!(&c.kind, ChangeKind::Deleted(t) if t.how == DeleteHow::Merged { into: survivor.to_string() })));

    // Idle: one call for the create/update reader, two for the deletions reader.
    sim.advance_clock(Duration::from_secs(600));
    let (_, upserts, _) = drain_for(&crm, &sim, "companies", upserts, FeedNeeds::Upserts).await;
    let (_, deletes, _) = drain_for(&crm, &sim, "companies", deletes, FeedNeeds::Deletes).await;
    sim.advance_clock(Duration::from_secs(600));
    let (_, _, calls) = drain_for(&crm, &sim, "companies", upserts, FeedNeeds::Upserts).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (_, _, calls) = drain_for(&crm, &sim, "companies", deletes, FeedNeeds::Deletes).await;
    assert_eq!(calls.len(), 2, "{calls:?}");

    // A cursor written by a read of every kind (an older version) is taken by either reader.
    let (_, all, _) = drain_for(&crm, &sim, "companies", None, FeedNeeds::All).await;
    sim.advance_clock(Duration::from_secs(600));
    assert!(sim.archive("companies", ids[4]).unwrap());
    let (changes, _, _) = drain_for(&crm, &sim, "companies", all, FeedNeeds::Deletes).await;
    assert!(
        changes.iter().any(|c| c.id == ids[4].to_string()),
        "{changes:?}"
    );
}

/// HubSpot cannot merge custom object records: their deletions reader lists the archived ones
/// only (one call when idle), with no search for merged survivors.
#[tokio::test]
async fn a_custom_objects_deletions_reader_only_lists_the_archived() {
    let sim = sim(10).await;
    let crm = adapter(
        &sim,
        json!({ "objects": {
            "cars": { "object_type": "cars", "properties": ["vin"] },
        } }),
    )
    .await;
    let (_, deletes, _) = drain_for(&crm, &sim, "cars", None, FeedNeeds::Deletes).await;
    let ids = sim.ids("cars");
    assert!(!ids.is_empty());
    sim.advance_clock(Duration::from_secs(600));
    assert!(sim.archive("cars", ids[0]).unwrap());
    let (changes, deletes, calls) =
        drain_for(&crm, &sim, "cars", deletes, FeedNeeds::Deletes).await;
    assert_eq!(calls, vec!["GET /crm/v3/objects/cars"], "{calls:?}");
    assert!(
        changes.iter().any(|c| c.id == ids[0].to_string()
            && matches!(&c.kind, ChangeKind::Deleted(t) if t.how == DeleteHow::Soft)),
        "{changes:?}"
    );
    sim.advance_clock(Duration::from_secs(600));
    let (_, _, calls) = drain_for(&crm, &sim, "cars", deletes, FeedNeeds::Deletes).await;
    assert_eq!(calls.len(), 1, "idle: {calls:?}");
}

#[tokio::test]
async fn a_custom_object_reads_and_writes_its_contact_through_associations() {
    let sim = sim(30).await;
    add_marketo_id(&sim, "contacts");
    add_marketo_id(&sim, "cars");
    let type_id = sim.type_id("cars").unwrap();
    let crm = adapter(
        &sim,
        json!({ "objects": {
            "contacts": { "object_type": "contacts", "marketo_id_property": "marketo_id",
                          "properties": ["email", "marketo_id"], "writable": true },
            "cars": { "object_type": type_id, "marketo_id_property": "marketo_id",
                      "properties": ["vin", "make", "year", "marketo_id"],
                      "contact_field": "contact_id", "writable": true },
        } }),
    )
    .await;
    let schema = crm.describe("cars").await.unwrap();
    assert!(schema.field("contact_id").is_some() && schema.field("vin").is_some());

    // Reads: every generated car carries its associated contact.
    let (changes, _) = drain(&crm, "cars", None, 100).await;
    assert_eq!(changes.len(), 3, "{changes:?}");
    for c in &changes {
        let ChangeKind::Upserted { fields } = &c.kind else {
            panic!("{c:?}")
        };
        let contact = fields["contact_id"].to_text();
        assert!(
            sim.record("contacts", contact.parse().unwrap()).is_some(),
            "{c:?}"
        );
    }

    // Writes: a new car is created and associated; an unknown contact is a retryable refusal.
    let contact = sim.ids("contacts")[5].to_string();
    let car = |vin: &str, marketo_id: &str, contact: &str| -> Fields {
        let mut f = Fields::new();
        f.insert("vin".into(), Value::from(vin));
        f.insert("make".into(), Value::from("Saab"));
        f.insert("marketo_id".into(), Value::from(marketo_id));
        f.insert("contact_id".into(), Value::from(contact));
        f
    };
    let results = crm
        .upsert(
            "cars",
            "marketo_id",
            &[
                car("NEW1", "g-1", &contact),
                car("NEW2", "g-2", "999999999"),
            ],
        )
        .await
        .unwrap();
    let WriteResult::Created { id } = &results[0] else {
        panic!("{results:?}")
    };
    let refusal = results[1].refusal().expect("unknown contact refused");
    assert_eq!(refusal.reason, RefusalReason::ForeignKey, "{refusal:?}");
    assert!(refusal.retryable);
    let read = crm.get("cars", std::slice::from_ref(id)).await.unwrap();
    assert_eq!(read[0].fields["contact_id"], Value::from(contact.as_str()));
    assert_eq!(read[0].fields["vin"], Value::from("NEW1"));
}
