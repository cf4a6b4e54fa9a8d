//! The real Marketo client against the real simulator (in process, on tokio's paused clock):
//! token expiry in the middle of a paged read, throttling under many concurrent tasks, injected
//! transient faults, export resume after a dropped download, a checksum mismatch, a Completed
//! job whose file answers 404, a full export queue (1029), an unsupported filter (1035) and the
//! daily quota (607).

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use marketo_sync::marketo::activities::ActivityFilter;
use marketo_sync::marketo::bulk_extract::{
    DateRange, ExportFilter, ExportJob, ExportKind, ExportOptions, ExportRequest, ExportStatus,
};
use marketo_sync::marketo::{Client, ClientConfig, Disposition, Error, Record, SyncAction};
use marketo_sync::sim::{FaultProfile, SimConfig, SimHandle, Simulator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn client_with(sim: &SimHandle, tune: impl FnOnce(&mut ClientConfig)) -> Client {
    let (id, secret) = sim.credentials();
    let mut config = ClientConfig::new(sim.base_url().parse().unwrap(), id, secret);
    config.request_timeout = None;
    config.download_timeout = None;
    config.pool_idle_timeout = None;
    tune(&mut config);
    Client::new(config).unwrap()
}

fn client_for(sim: &SimHandle) -> Client {
    client_with(sim, |_| {})
}

async fn sim(config: SimConfig) -> SimHandle {
    Simulator::start(SimConfig {
        seed: 7,
        leads: 400,
        ..config
    })
    .await
    .unwrap()
}

fn codes(sim: &SimHandle) -> Vec<String> {
    sim.request_log()
        .into_iter()
        .filter_map(|e| e.code)
        .collect()
}

fn lead_request(sim: &SimHandle) -> ExportRequest {
    let now = sim.now();
    ExportRequest {
        fields: vec!["id".into(), "email".into(), "firstName".into()],
        format: None,
        column_header_names: None,
        filter: ExportFilter {
            created_at: Some(DateRange {
                start_at: now - ChronoDuration::days(30),
                end_at: now + ChronoDuration::days(1),
            }),
            ..ExportFilter::default()
        },
    }
}

/// Creates, enqueues and waits for a lead export; returns the Completed job.
async fn completed_export(sim: &SimHandle, client: &Client) -> ExportJob {
    let job = client
        .create_export(&ExportKind::Leads, &lead_request(sim))
        .await
        .unwrap();
    client
        .enqueue_export(&ExportKind::Leads, &job.export_id)
        .await
        .unwrap();
    loop {
        let job = client
            .export_status(&ExportKind::Leads, &job.export_id)
            .await
            .unwrap();
        if job.status == ExportStatus::Completed {
            return job;
        }
        assert!(
            matches!(job.status, ExportStatus::Queued | ExportStatus::Processing),
            "{job:?}"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn token_expiry_in_the_middle_of_a_paged_read_is_invisible_to_the_caller() {
    let sim = sim(SimConfig::default()).await;
    let client = client_for(&sim);
    // 400 new leads: at least two pages of New Lead activities.
    let batch: Vec<Record> = (0..400)
        .map(|i| {
            json!({"email": format!("page{i}@example.com")})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    for chunk in batch.chunks(300) {
        client
            .sync_leads(SyncAction::CreateOnly, Some("email"), None, chunk)
            .await
            .unwrap();
    }
    let mut token = client
        .paging_token(sim.now() - ChronoDuration::minutes(1))
        .await
        .unwrap();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = client
            .get_activities(&token, &[12], &ActivityFilter::default())
            .await
            .unwrap();
        pages += 1;
        seen += page.records.len();
        // Every token the client holds dies between two pages.
        sim.expire_tokens();
        match page.next_page_token {
            Some(next) if !page.records.is_empty() => token = next,
            _ => break,
        }
        if seen >= 400 {
            break;
        }
    }
    assert!(pages >= 2, "only {pages} pages");
    assert_eq!(seen, 400);
    let log = sim.request_log();
    let identity = log.iter().filter(|e| e.family == "identity").count();
    assert!(
        identity >= 2,
        "the client never re-authenticated: {identity}"
    );
    assert!(
        log.iter().any(|e| e.code.as_deref() == Some("602")),
        "no call met the expired token"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_tasks_never_see_606_or_615() {
    let sim = sim(SimConfig::default()).await;
    // Marketo's own limits as the client's: the limiter alone must keep the simulator happy.
    let client = client_with(&sim, |c| {
        c.calls_per_20s = 100;
        c.max_concurrency = 10;
    });
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..25_i64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10_i64 {
                let id = 1 + (t * 10 + i) % 400;
                let lead = client.get_lead(id, &["email".to_string()]).await?;
                assert!(lead.is_some(), "lead {id}");
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let log = sim.request_log();
    let rest = log.iter().filter(|e| e.family != "identity").count();
    assert_eq!(rest, 250);
    let limited: Vec<_> = log
        .iter()
        .filter(|e| matches!(e.code.as_deref(), Some("606" | "615")))
        .collect();
    assert!(
        limited.is_empty(),
        "the simulator saw too much: {limited:?}"
    );
    // 250 calls at 100 per 20 s need at least two full windows.
    assert!(
        started.elapsed() >= Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.counters().calls_today, 250);
}

#[tokio::test(start_paused = true)]
async fn transient_faults_are_retried_to_success() {
    let sim = sim(SimConfig::default()).await;
    let client = client_with(&sim, |c| {
        c.retry.max_retries = 8;
        c.retry.rate_limit_wait = Duration::from_secs(20);
    });
    sim.set_faults(
        "route=leads,kind=throttle,rate=0.1;route=leads,kind=5xx,rate=0.1;\
         route=leads,kind=timeout,rate=0.1;route=leads,kind=unavailable,rate=0.1;\
         route=leads,kind=drop,rate=0.05"
            .parse::<FaultProfile>()
            .unwrap(),
    );
    for id in 1..=60 {
        let lead = client
            .get_lead(id, &["email".to_string()])
            .await
            .unwrap_or_else(|e| panic!("lead {id}: {e}"));
        assert!(lead.is_some());
    }
    let faults: std::collections::BTreeSet<String> = sim
        .request_log()
        .into_iter()
        .filter_map(|e| e.fault)
        .collect();
    for kind in ["throttle", "5xx", "timeout", "unavailable", "drop"] {
        assert!(faults.contains(kind), "no {kind} injected: {faults:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_truncated_download_is_resumed_with_range_requests() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let client = client_with(&sim, |c| c.retry.download_attempts = 40);
    let job = completed_export(&sim, &client).await;
    let size = job.file_size.unwrap();
    assert!(size > 200, "{job:?}");
    sim.set_faults("route=bulk_file,kind=truncate,rate=1".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("leads.csv");
    let cancel = CancellationToken::new();
    let got = client
        .download_export(&ExportKind::Leads, &job, &dest, &cancel)
        .await
        .unwrap();
    assert_eq!(got, size);
    let files: Vec<_> = sim
        .request_log()
        .into_iter()
        .filter(|e| e.family == "bulk_file")
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    assert!(
        files.iter().skip(1).all(|e| e.http_status == 206),
        "{files:?}"
    );
    // The resumed file is byte-for-byte the clean one.
    sim.set_faults(FaultProfile::none());
    let clean = dir.path().join("clean.csv");
    client
        .download_export(&ExportKind::Leads, &job, &clean, &cancel)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&clean).unwrap()
    );
    assert!(
        std::fs::read_to_string(&dest)
            .unwrap()
            .starts_with("id,email,firstName\n")
    );
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_partial_file_fails_the_checksum_and_is_removed() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let job = completed_export(&sim, &client).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("leads.csv");
    // A partial file that is not a prefix of the real one (same length as its header).
    std::fs::write(&dest, "XX,YYYYY,ZZZZZZZZZ\n").unwrap();
    let cancel = CancellationToken::new();
    let err = client
        .download_export(&ExportKind::Leads, &job, &dest, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert!(!dest.exists(), "the corrupt file was kept");
    // The next attempt starts from scratch and succeeds.
    let got = client
        .download_export(&ExportKind::Leads, &job, &dest, &cancel)
        .await
        .unwrap();
    assert_eq!(got, job.file_size.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_completed_job_whose_file_answers_404_is_reported_and_recovers() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let job = completed_export(&sim, &client).await;
    sim.set_faults("route=bulk_file,kind=file404,rate=1".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("leads.csv");
    let cancel = CancellationToken::new();
    let err = client
        .download_export(&ExportKind::Leads, &job, &dest, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExportFileMissing { .. }), "{err:?}");
    assert_eq!(err.disposition(), Disposition::Retry, "{err:?}");
    assert!(err.to_string().contains(&job.export_id), "{err}");
    sim.set_faults(FaultProfile::none());
    let got = client
        .download_export(&ExportKind::Leads, &job, &dest, &cancel)
        .await
        .unwrap();
    assert_eq!(got, job.file_size.unwrap());
}

#[tokio::test(start_paused = true)]
async fn run_export_waits_out_a_completed_file_that_answers_404() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let client = client_with(&sim, |c| c.retry.download_attempts = 8);
    // Seeded: the first file requests answer 404, later ones the file.
    sim.set_faults("route=bulk_file,kind=file404,rate=0.6".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        poll_interval: Duration::from_secs(30),
        max_wait: Some(Duration::from_secs(3600)),
    };
    let outcome = client
        .run_export(
            &ExportKind::Leads,
            &lead_request(&sim),
            None,
            &dir.path().join("leads.csv"),
            &options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.job.status, ExportStatus::Completed);
    assert_eq!(Some(outcome.bytes), outcome.job.file_size);
    let files: Vec<_> = sim
        .request_log()
        .into_iter()
        .filter(|e| e.family == "bulk_file")
        .collect();
    assert!(
        files.iter().filter(|e| e.http_status == 404).count() >= 1,
        "{files:?}"
    );
    assert_eq!(files.last().unwrap().http_status, 200);
    // With the file missing on every try, run_export gives up with a clear, retryable error.
    sim.set_faults("route=bulk_file,kind=file404,rate=1".parse().unwrap());
    let err = client
        .run_export(
            &ExportKind::Leads,
            &lead_request(&sim),
            None,
            &dir.path().join("again.csv"),
            &options,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExportFileMissing { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn the_eleventh_job_meets_1029_and_runs_once_the_queue_drains() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(600),
        ..SimConfig::default()
    })
    .await;
    let client = client_with(&sim, |c| c.retry.max_retries = 1);
    let request = lead_request(&sim);
    let mut ids = Vec::new();
    for _ in 0..11 {
        ids.push(
            client
                .create_export(&ExportKind::Leads, &request)
                .await
                .unwrap()
                .export_id,
        );
    }
    for id in &ids[..10] {
        client.enqueue_export(&ExportKind::Leads, id).await.unwrap();
    }
    let err = client
        .enqueue_export(&ExportKind::Leads, &ids[10])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("1029"), "{err:?}");
    assert_eq!(err.disposition(), Disposition::BackOff, "{err:?}");
    assert!(codes(&sim).iter().any(|c| c == "1029"));
    // run_export resumes the same job and waits out the full queue.
    let dir = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        poll_interval: Duration::from_secs(60),
        max_wait: Some(Duration::from_secs(6 * 3600)),
    };
    let outcome = client
        .run_export(
            &ExportKind::Leads,
            &request,
            Some(&ids[10]),
            &dir.path().join("eleventh.csv"),
            &options,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.job.export_id, ids[10]);
    assert_eq!(outcome.job.status, ExportStatus::Completed);
    assert!(outcome.bytes > 0);
}

#[tokio::test(start_paused = true)]
async fn an_unsupported_updated_at_filter_is_1035_and_final() {
    let sim = sim(SimConfig {
        updated_at_filter: false,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let now = sim.now();
    let mut request = lead_request(&sim);
    request.filter = ExportFilter {
        updated_at: Some(DateRange {
            start_at: now - ChronoDuration::days(1),
            end_at: now,
        }),
        ..ExportFilter::default()
    };
    let err = client
        .create_export(&ExportKind::Leads, &request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("1035"), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        codes(&sim).iter().filter(|c| *c == "1035").count(),
        1,
        "1035 must not be retried"
    );
    // The same filter works on a subscription that has it (the default).
    let sim2 = Simulator::start(SimConfig::default()).await.unwrap();
    let client2 = client_for(&sim2);
    let job = client2
        .create_export(&ExportKind::Leads, &request)
        .await
        .unwrap();
    assert_eq!(job.status, ExportStatus::Created);
}

#[tokio::test(start_paused = true)]
async fn the_daily_quota_stops_calls_with_607() {
    let sim = sim(SimConfig {
        daily_quota: 20,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    let mut ok = 0;
    let err = loop {
        match client.get_lead(1, &["email".to_string()]).await {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok <= 20, "the quota never ran out");
    };
    assert_eq!(ok, 20);
    assert_eq!(err.code(), Some("607"), "{err:?}");
    assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
    assert_eq!(
        codes(&sim).iter().filter(|c| *c == "607").count(),
        1,
        "607 must not be retried the same day"
    );
}

#[tokio::test(start_paused = true)]
async fn call_and_record_errors_are_final_and_never_retried() {
    let sim = sim(SimConfig::default()).await;
    let client = client_for(&sim);
    // 1011: a lead filter type Marketo does not support fails the call at once.
    let err = client
        .get_leads("noSuchField", &["x".to_string()], &[], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("1011"), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(codes(&sim), ["1011"], "1011 must not be retried");
    // 1003: an invalid program member filter type.
    let err = client
        .get_program_members(1107, "nope", &["x".to_string()], None, &[], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("1003"), "{err:?}");
    assert_eq!(err.disposition(), Disposition::FailCall);
    assert_eq!(codes(&sim), ["1011", "1003"], "1003 must not be retried");
    // 1013: a list that does not exist.
    let err = client.list_members(424_242, &[], None).await.unwrap_err();
    assert_eq!(err.code(), Some("1013"), "{err:?}");
    assert!(!err.is_retryable());
    // 1004 on one record of a batch: the others are written, the call succeeds.
    let input: Vec<Record> = [
        json!({"email": "nobody-here@example.com", "firstName": "X"}),
        json!({"email": "rec-ok@example.com", "firstName": "Y"}),
    ]
    .iter()
    .map(|v| v.as_object().unwrap().clone())
    .collect();
    let results = client
        .sync_leads(SyncAction::UpdateOnly, Some("email"), None, &input[..1])
        .await
        .unwrap();
    assert_eq!(results[0].reasons[0].code, "1004", "{results:?}");
    let results = client
        .sync_leads(SyncAction::CreateOrUpdate, Some("email"), None, &input[1..])
        .await
        .unwrap();
    assert!(results[0].id.is_some(), "{results:?}");
    // 601: a token the client never obtained is not a thing it can send; a wrong secret is
    // reported by Identity without retrying.
    let bad = {
        let (id, _) = sim.credentials();
        let mut config = ClientConfig::new(
            sim.base_url().parse().unwrap(),
            id,
            secrecy::SecretString::from("wrong"),
        );
        config.pool_idle_timeout = None;
        config.request_timeout = None;
        Client::new(config).unwrap()
    };
    let err = bad.describe_lead().await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        !format!("{err:?} {err}").contains("wrong"),
        "secret leaked: {err}"
    );
    let identity = sim
        .request_log()
        .into_iter()
        .filter(|e| e.family == "identity" && e.http_status == 401)
        .count();
    assert_eq!(identity, 1, "a bad secret must not be retried");
}

#[tokio::test(start_paused = true)]
async fn the_bulk_export_byte_quota_answers_1029_and_pauses_until_the_day_turns() {
    let sim = sim(SimConfig {
        export_delay: Duration::from_secs(60),
        bulk_daily_bytes: 100,
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim);
    // The first export uses up the 100 bytes.
    completed_export(&sim, &client).await;
    let err = client
        .create_export(&ExportKind::Leads, &lead_request(&sim))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("1029"), "{err:?}");
    assert_eq!(err.disposition(), Disposition::PauseUntilDayTurns);
    assert_eq!(codes(&sim).iter().filter(|c| *c == "1029").count(), 1);
}
