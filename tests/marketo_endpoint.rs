//! The Marketo endpoint seam against the simulator (in process, on tokio's paused clock):
//! REST or Bulk Import chosen by size, per-record refusals of an import's failures file as typed
//! outcomes in input order, company-type fields routed to the lead's company, and exports that
//! re-attach to a job recorded by an earlier run.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Duration as ChronoDuration;
use marketo_sync::marketo::csv::FileFormat;
use marketo_sync::marketo::endpoint::families::ObjectFamily;
use marketo_sync::marketo::endpoint::{
    CompanyLink, EndpointSettings, ExportSubject, JobEntry, JobJournal, JobStage, JournalError,
    LeadKey, LeadOutcome, LeadWrite, MarketoEndpoint, RestBulkEndpoint, WriteBackJob,
    WriteBackScope, WriteMode,
};
use marketo_sync::marketo::{Client, ClientConfig, Record, RecordStatus, RefusalKind};
use marketo_sync::sim::{SimConfig, SimHandle, Simulator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn sim() -> SimHandle {
    Simulator::start(SimConfig {
        seed: 11,
        leads: 50,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn endpoint(sim: &SimHandle, threshold: usize) -> RestBulkEndpoint {
    let (id, secret) = sim.credentials();
    let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
    config.request_timeout = None;
    config.download_timeout = None;
    config.pool_idle_timeout = None;
    let client = Client::new(config).unwrap();
    RestBulkEndpoint::new(
        client,
        EndpointSettings {
            bulk_import_threshold: threshold,
            poll: Duration::from_secs(5),
            work_dir: tempfile::tempdir().unwrap().keep(),
            ..EndpointSettings::default()
        },
    )
}

/// The journal a restarted process reads back: jobs kept in memory across endpoint calls.
#[derive(Default)]
struct MemoryJournal {
    jobs: Mutex<Vec<JobEntry>>,
}

#[async_trait]
impl JobJournal for MemoryJournal {
    async fn unfinished(
        &self,
        import: bool,
        kind: &str,
        object: &str,
    ) -> Result<Vec<JobEntry>, JournalError> {
        Ok(self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|j| j.import == import && j.kind == kind && j.object == object)
            .filter(|j| !matches!(j.stage, JobStage::Consumed | JobStage::Failed))
            .cloned()
            .collect())
    }

    async fn record(&self, job: &JobEntry) -> Result<(), JournalError> {
        let mut jobs = self.jobs.lock().unwrap();
        jobs.retain(|j| j.id != job.id || j.import != job.import);
        jobs.push(job.clone());
        Ok(())
    }
}

/// Creates a lead in the simulator, linked to a company when given.
fn seed_lead(sim: &SimHandle, email: &str, company: Option<&str>) -> i64 {
    let mut v = serde_json::Map::new();
    v.insert("email".into(), json!(email));
    if let Some(c) = company {
        v.insert("externalCompanyId".into(), json!(c));
    }
    sim.create_lead(v)
}

fn lead(pairs: &[(&str, serde_json::Value)]) -> LeadWrite {
    let mut record = Record::new();
    for (k, v) in pairs {
        record.insert((*k).to_owned(), v.clone());
    }
    LeadWrite {
        record,
        company: CompanyLink::Known(None),
    }
}

fn new_leads(prefix: &str, n: usize) -> Vec<LeadWrite> {
    (0..n)
        .map(|i| {
            lead(&[
                ("crmContactId", json!(format!("{prefix}-{i}"))),
                ("email", json!(format!("{prefix}{i}@example.com"))),
                ("firstName", json!(format!("Name{i}"))),
            ])
        })
        .collect()
}

fn calls(sim: &SimHandle, path: &str) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| e.method == "POST" && e.path == path)
        .count()
}

fn created_id(outcome: &LeadOutcome) -> i64 {
    match outcome {
        LeadOutcome::Created { id } => *id,
        other => panic!("not created: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn small_writes_go_by_rest_and_large_ones_by_bulk_import() {
    let sim = sim().await;
    let ep = endpoint(&sim, 4);
    let cancel = CancellationToken::new();
    let key = LeadKey::Field("crmContactId".into());

    let small = new_leads("S", 3);
    let out = ep
        .write_leads(&small, WriteMode::Upsert, &key, &cancel)
        .await
        .unwrap();
    assert_eq!(calls(&sim, "/rest/v1/leads.json"), 1);
    assert_eq!(calls(&sim, "/bulk/v1/leads.json"), 0);
    for (i, o) in out.iter().enumerate() {
        let lead = sim.lead(created_id(o)).unwrap();
        assert_eq!(lead["crmContactId"], json!(format!("S-{i}")));
    }

    let large = new_leads("L", 9);
    let out = ep
        .write_leads(&large, WriteMode::Upsert, &key, &cancel)
        .await
        .unwrap();
    assert_eq!(calls(&sim, "/bulk/v1/leads.json"), 1, "one import file");
    assert_eq!(calls(&sim, "/rest/v1/leads.json"), 1, "no more REST writes");
    assert_eq!(out.len(), 9);
    // Each outcome carries the id of the lead of its own input record.
    for (i, o) in out.iter().enumerate() {
        let lead = sim.lead(created_id(o)).unwrap();
        assert_eq!(lead["crmContactId"], json!(format!("L-{i}")));
        assert_eq!(lead["firstName"], json!(format!("Name{i}")));
    }
}

#[tokio::test(start_paused = true)]
async fn rows_of_an_import_failures_file_are_refusals_in_input_order() {
    let sim = sim().await;
    let ep = endpoint(&sim, 2);
    let cancel = CancellationToken::new();
    let ids: Vec<i64> = (0..4)
        .map(|i| seed_lead(&sim, &format!("u{i}@example.com"), None))
        .collect();
    let missing = ids.iter().max().unwrap() + 10_000;
    let mut writes: Vec<LeadWrite> = ids
        .iter()
        .map(|id| lead(&[("id", json!(id)), ("firstName", json!("Updated"))]))
        .collect();
    writes.insert(
        2,
        lead(&[("id", json!(missing)), ("firstName", json!("Updated"))]),
    );

    let out = ep
        .write_leads(&writes, WriteMode::UpdateOnly, &LeadKey::Id, &cancel)
        .await
        .unwrap();
    assert_eq!(calls(&sim, "/bulk/v1/leads.json"), 1);
    assert_eq!(calls(&sim, "/rest/v1/leads.json"), 0);
    assert_eq!(out.len(), 5);
    for (i, o) in out.iter().enumerate() {
        if i == 2 {
            let r = o.refusal().expect("the missing lead is refused");
            assert_eq!(r.code, "import");
            assert!(r.message.contains("not found"), "{}", r.message);
            assert_eq!(r.kind, RefusalKind::Other);
            assert!(!r.retryable);
        } else {
            assert!(matches!(o, LeadOutcome::Updated { .. }), "{i}: {o:?}");
        }
    }
    for id in ids {
        assert_eq!(sim.lead(id).unwrap()["firstName"], json!("Updated"));
    }
}

#[tokio::test(start_paused = true)]
async fn rest_refusals_are_typed_and_in_input_order() {
    let sim = sim().await;
    let ep = endpoint(&sim, 100);
    let cancel = CancellationToken::new();
    let id = seed_lead(&sim, "kept@example.com", None);
    let writes = vec![
        lead(&[("id", json!(id + 100_000)), ("firstName", json!("A"))]),
        lead(&[("id", json!(id)), ("firstName", json!("B"))]),
    ];
    let out = ep
        .write_leads(&writes, WriteMode::UpdateOnly, &LeadKey::Id, &cancel)
        .await
        .unwrap();
    let r = out[0].refusal().expect("unknown lead refused");
    assert_eq!(r.kind, RefusalKind::NotFound);
    assert_eq!(r.code, "1004");
    assert_eq!(out[1], LeadOutcome::Updated { id: Some(id) });
}

#[tokio::test(start_paused = true)]
async fn company_fields_of_a_linked_lead_go_to_its_company() {
    let sim = sim().await;
    let ep = endpoint(&sim, 100);
    let cancel = CancellationToken::new();
    let mut c = serde_json::Map::new();
    c.insert("externalCompanyId".into(), json!("ACME-1"));
    c.insert("company".into(), json!("Acme"));
    sim.upsert_company(c).unwrap();
    let linked = seed_lead(&sim, "linked@example.com", Some("ACME-1"));
    let alone = seed_lead(&sim, "alone@example.com", None);

    let mut writes = vec![
        lead(&[
            ("id", json!(linked)),
            ("industry", json!("Retail")),
            ("firstName", json!("Lin")),
        ]),
        lead(&[("id", json!(alone)), ("industry", json!("Mining"))]),
    ];
    // The caller did not read the linked lead: the endpoint finds its company.
    writes[0].company = CompanyLink::Unknown;

    let preview = ep.preview_leads(&writes).await.unwrap();
    assert_eq!(
        preview[0].company.as_ref().map(|c| c.0.as_str()),
        Some("ACME-1")
    );
    assert!(!preview[0].lead.contains_key("industry"));
    assert!(preview[1].company.is_none());

    let out = ep
        .write_leads(&writes, WriteMode::UpdateOnly, &LeadKey::Id, &cancel)
        .await
        .unwrap();
    assert!(matches!(out[0], LeadOutcome::Updated { .. }), "{out:?}");
    assert!(matches!(out[1], LeadOutcome::Updated { .. }), "{out:?}");
    assert_eq!(sim.company("ACME-1").unwrap()["industry"], json!("Retail"));
    assert_eq!(sim.lead(linked).unwrap()["firstName"], json!("Lin"));
    assert_eq!(sim.lead(alone).unwrap()["industry"], json!("Mining"));
    assert_eq!(calls(&sim, "/rest/v1/companies.json"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_company_write_refuses_its_lead() {
    let sim = sim().await;
    let ep = endpoint(&sim, 100);
    let cancel = CancellationToken::new();
    let id = seed_lead(&sim, "ghost@example.com", None);
    let mut writes = vec![lead(&[
        ("id", json!(id)),
        ("industry", json!("Retail")),
        ("firstName", json!("Never")),
    ])];
    // A company that does not exist: Sync Companies (update only) refuses it.
    writes[0].company = CompanyLink::Known(Some("NO-SUCH".into()));
    let out = ep
        .write_leads(&writes, WriteMode::UpdateOnly, &LeadKey::Id, &cancel)
        .await
        .unwrap();
    let r = out[0].refusal().expect("refused");
    assert!(r.company.is_some());
    assert!(r.message.contains("NO-SUCH"), "{}", r.message);
    assert_ne!(sim.lead(id).unwrap()["firstName"], json!("Never"));
    assert_eq!(calls(&sim, "/rest/v1/leads.json"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_export_recorded_by_an_earlier_run_is_resumed_not_created_again() {
    let sim = sim().await;
    let ep = endpoint(&sim, 100);
    let cancel = CancellationToken::new();
    let journal = MemoryJournal::default();
    let now = sim.now();
    let window = (
        now - ChronoDuration::days(30),
        now + ChronoDuration::days(1),
    );
    let subject = ExportSubject::CreatedLeads {
        fields: vec!["id".into(), "email".into()],
    };
    // An earlier run created and recorded the job, then stopped before enqueueing it.
    let earlier = ep
        .client()
        .create_export(
            &marketo_sync::marketo::bulk_extract::ExportKind::Leads,
            &marketo_sync::marketo::bulk_extract::ExportRequest {
                fields: vec!["id".into(), "email".into()],
                format: Some("CSV".into()),
                column_header_names: None,
                filter: marketo_sync::marketo::bulk_extract::ExportFilter {
                    created_at: Some(marketo_sync::marketo::bulk_extract::DateRange {
                        start_at: window.0,
                        end_at: window.1,
                    }),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    journal
        .record(&JobEntry {
            import: false,
            id: earlier.export_id.clone(),
            kind: "leads".into(),
            object: "bootstrap:leads".into(),
            window: Some(window),
            stage: JobStage::Created,
            bytes: 0,
            file: None,
        })
        .await
        .unwrap();
    let creates = calls(&sim, "/bulk/v1/leads/export/create.json");

    let exported = ep
        .export_window(&subject, window, "bootstrap:leads", 3, &journal, &cancel)
        .await
        .unwrap();
    assert_eq!(exported.job.id, earlier.export_id);
    assert_eq!((exported.created, exported.resumed), (0, 1));
    assert_eq!(calls(&sim, "/bulk/v1/leads/export/create.json"), creates);
    let stored = journal.jobs.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].stage, JobStage::Completed);
    assert_eq!(stored[0].bytes, exported.bytes);

    let mut rows = exported.rows(None, 7, &cancel).expect("a file");
    let mut n = 0;
    while let Some(batch) = rows.next_batch().await {
        assert!(batch.len() <= 7);
        for row in batch {
            assert!(row.unwrap().fields.contains_key("email"));
            n += 1;
        }
    }
    rows.finish().await.unwrap();
    assert!(n > 0 && n <= sim.leads().len(), "{n} rows");
}

#[tokio::test(start_paused = true)]
async fn changed_lead_exports_are_journalled_before_enqueue_and_consumed_after() {
    let sim = sim().await;
    let ep = endpoint(&sim, 100);
    let cancel = CancellationToken::new();
    let journal = MemoryJournal::default();
    let now = sim.now();
    let mut seen = 0usize;
    let mut sink = |row: Result<marketo_sync::model::Fields, String>| {
        assert!(row.unwrap().contains_key("id"));
        seen += 1;
    };
    let bytes = ep
        .export_changed_leads(
            &["id".to_owned(), "email".to_owned()],
            (
                now - ChronoDuration::days(40),
                now + ChronoDuration::seconds(1),
            ),
            "leads",
            &journal,
            &mut sink,
            &cancel,
        )
        .await
        .unwrap();
    assert!(bytes > 0);
    assert!(seen > 0);
    let jobs = journal.jobs.lock().unwrap().clone();
    // 40 days: two windows of at most 31 days, each its own job, both consumed.
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.stage == JobStage::Consumed));
    let (s0, e0) = jobs[0].window.unwrap();
    let (s1, _) = jobs[1].window.unwrap();
    assert!(e0 - s0 <= ChronoDuration::days(31));
    assert_eq!(s1, e0 + ChronoDuration::seconds(1));
}

/// Writes the keys `K-<i>` of `ids` back through a spool, by REST or import per `rest_threshold`.
async fn write_back(
    ep: &RestBulkEndpoint,
    ids: &[i64],
    rest_threshold: usize,
    journal: &MemoryJournal,
) -> marketo_sync::marketo::endpoint::WriteBackReport {
    let now = chrono::Utc::now();
    let job = WriteBackJob {
        object: "bootstrap:leads",
        window: (now - ChronoDuration::days(1), now),
        key_field: "crmContactId",
        rest_threshold,
    };
    let mut spool = ep.key_spool("77.writeback", job.key_field, None).unwrap();
    for (i, id) in ids.iter().enumerate() {
        spool.push(&id.to_string(), &format!("K-{i}")).unwrap();
    }
    ep.write_back_keys(
        &job,
        &mut spool,
        WriteBackScope::All,
        journal,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn key_write_backs_go_by_rest_or_journalled_import_and_name_refused_keys() {
    let sim = sim().await;
    let ep = endpoint(&sim, 3_000);
    let mut ids: Vec<i64> = (0..4)
        .map(|i| seed_lead(&sim, &format!("w{i}@example.com"), None))
        .collect();
    let missing = ids.iter().max().unwrap() + 10_000;
    ids.insert(1, missing);

    // Up to the threshold: REST, one call for five keys.
    let journal = MemoryJournal::default();
    let report = write_back(&ep, &ids, 10, &journal).await;
    assert_eq!(calls(&sim, "/rest/v1/leads.json"), 1);
    assert_eq!(calls(&sim, "/bulk/v1/leads.json"), 0);
    assert_eq!(
        (report.written, report.failed, report.imports),
        (4, 1, 0),
        "{report:?}"
    );
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].lead_id, Some(missing.to_string()));
    assert_eq!(report.refused[0].crm_key.as_deref(), Some("K-1"));
    assert_eq!(report.refused[0].refusal.kind, RefusalKind::NotFound);
    assert_eq!(sim.lead(ids[0]).unwrap()["crmContactId"], json!("K-0"));
    assert_eq!(sim.lead(ids[4]).unwrap()["crmContactId"], json!("K-4"));
    assert!(
        journal.jobs.lock().unwrap().is_empty(),
        "REST journals nothing"
    );

    // Above it: one import batch, journalled with its window and completed; the failures file's
    // row names the lead and its key.
    let report = write_back(&ep, &ids, 2, &journal).await;
    assert_eq!(calls(&sim, "/bulk/v1/leads.json"), 1);
    assert_eq!(
        (report.written, report.failed, report.imports),
        (4, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].lead_id, Some(missing.to_string()));
    assert_eq!(report.refused[0].crm_key.as_deref(), Some("K-1"));
    assert_eq!(report.refused[0].refusal.code, "import");
    let jobs = journal.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].import && jobs[0].window.is_some());
    assert_eq!(jobs[0].stage, JobStage::Completed);
    assert_eq!(report.batches, jobs);
    assert!(
        !jobs[0].file.as_ref().unwrap().exists(),
        "the imported file is deleted"
    );
}

/// Returns the query strings of the POSTs to `path`.
fn queries(sim: &SimHandle, path: &str) -> Vec<String> {
    sim.request_log()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path == path)
        .map(|e| e.query)
        .collect()
}

fn with_format(mut ep: RestBulkEndpoint, format: FileFormat) -> RestBulkEndpoint {
    let settings = EndpointSettings {
        import_format: format,
        ..ep.settings().clone()
    };
    ep = RestBulkEndpoint::new(ep.client().clone(), settings);
    ep
}

#[tokio::test(start_paused = true)]
async fn lead_imports_use_the_configured_format_and_keep_delimiters_inside_values() {
    for (format, name) in [(FileFormat::Tsv, "tsv"), (FileFormat::Ssv, "ssv")] {
        let sim = sim().await;
        let ep = with_format(endpoint(&sim, 2), format);
        let cancel = CancellationToken::new();
        // Every delimiter Marketo knows, and a quote, inside one value.
        let tricky = "Doe, Jr.; \"the\"\tthird";
        let mut writes = new_leads(name, 4);
        writes[1].record.insert("lastName".into(), json!(tricky));
        // Not an email: the import refuses this row alone.
        writes[3]
            .record
            .insert("email".into(), json!("not-an-email"));

        let out = ep
            .write_leads(
                &writes,
                WriteMode::Upsert,
                &LeadKey::Field("crmContactId".into()),
                &cancel,
            )
            .await
            .unwrap();
        let imports = queries(&sim, "/bulk/v1/leads.json");
        assert_eq!(imports.len(), 1, "{name}: {imports:?}");
        assert!(
            imports[0].contains(&format!("format={name}")),
            "{name}: {imports:?}"
        );
        assert_eq!(calls(&sim, "/rest/v1/leads.json"), 0, "{name}");
        let lead = sim.lead(created_id(&out[1])).unwrap();
        assert_eq!(lead["lastName"], json!(tricky), "{name}");
        assert_eq!(lead["crmContactId"], json!(format!("{name}-1")), "{name}");
        let refusal = out[3].refusal().expect("the bad email is refused");
        assert!(
            refusal.message.contains("email"),
            "{name}: {}",
            refusal.message
        );
        for i in [0, 2] {
            created_id(&out[i]);
        }
    }
}

fn car(vin: &str, lead: i64, year: serde_json::Value, make: &str) -> Record {
    let mut r = Record::new();
    r.insert("vin".into(), json!(vin));
    r.insert("leadId".into(), json!(lead));
    r.insert("year".into(), year);
    r.insert("make".into(), json!(make));
    r
}

#[tokio::test(start_paused = true)]
async fn large_custom_object_writes_go_by_bulk_import_with_results_in_input_order() {
    let sim = sim().await;
    sim.refuse_records("make", "Lemon", "1003", "Validation rule: no lemons");
    let ep = with_format(endpoint(&sim, 3), FileFormat::Tsv);
    let cancel = CancellationToken::new();
    let family = ObjectFamily::Custom("car_c".into());
    let lead = seed_lead(&sim, "owner@example.com", None);

    // At the threshold: one REST call, no import.
    let small: Vec<Record> = (0..3)
        .map(|i| car(&format!("S{i}"), lead, json!(2000 + i), "Fiat"))
        .collect();
    assert_eq!(ep.object_batch(&family, small.len()), 300);
    let out = ep.upsert_objects(&family, &small, &cancel).await.unwrap();
    assert!(
        out.iter().all(|r| r.status == RecordStatus::Created),
        "{out:?}"
    );
    assert_eq!(calls(&sim, "/rest/v1/customobjects/car_c.json"), 1);

    // Above it: one import file; a wrong type, a refused row, and a null (REST) among them.
    let mut large: Vec<Record> = (0..6)
        .map(|i| car(&format!("L{i}"), lead, json!(2010 + i), "Fiat"))
        .collect();
    large[1].insert("year".into(), json!("nineteen"));
    large[3].insert("make".into(), json!("Lemon"));
    large[4].insert("color".into(), serde_json::Value::Null);
    assert_eq!(ep.object_batch(&family, large.len()), 6);
    let out = ep.upsert_objects(&family, &large, &cancel).await.unwrap();
    let imports = queries(&sim, "/bulk/v1/customobjects/car_c/import.json");
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert!(imports[0].contains("format=tsv"), "{imports:?}");
    assert_eq!(
        calls(&sim, "/rest/v1/customobjects/car_c.json"),
        2,
        "only the record with a null goes by REST"
    );
    assert_eq!(out.len(), 6);
    for (i, r) in out.iter().enumerate() {
        match i {
            1 => {
                assert_eq!(r.status, RecordStatus::Skipped);
                assert_eq!(r.reasons[0].code, "import");
                assert!(r.reasons[0].message.contains("year"), "{r:?}");
            }
            3 => {
                assert_eq!(r.status, RecordStatus::Skipped);
                assert!(r.reasons[0].message.contains("no lemons"), "{r:?}");
            }
            4 => assert_eq!(r.status, RecordStatus::Created, "{r:?}"),
            _ => assert_eq!(r.status, RecordStatus::Updated, "{i}: {r:?}"),
        }
    }
    let cars = sim.objects(marketo_sync::sim::schema::ObjKind::Car);
    let by_vin = |vin: &str| cars.iter().find(|c| c["vin"] == json!(vin)).cloned();
    assert_eq!(by_vin("L0").unwrap()["year"], json!(2010));
    assert_eq!(by_vin("L5").unwrap()["leadId"], json!(lead));
    assert!(by_vin("L1").is_none());
    assert!(by_vin("L3").is_none());
    assert!(by_vin("L4").is_some());
}
