//! No secret (webhook secret, store and CRM passwords, Marketo client secret) appears in the
//! daemon's logs, metrics, status page, JSON status, readiness, CLI status or error messages.
//!
//! Alone in its test binary: the global log subscriber is installed before anything logs, so no
//! log call site is cached as disabled by an earlier test.

#[path = "support/daemon_fakes.rs"]
mod fakes;

use std::sync::Arc;
use std::time::Duration;

use fakes::{FakeRunner, Step};
use marketo_sync::store::{Clock, SystemClock};
use tokio_util::sync::CancellationToken;

/// A `MakeWriter` into a shared buffer, to capture the daemon's logs.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Returns the buffer of the global log subscriber, installing it on first use.
fn captured_logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
    .clone()
}

/// A fresh PostgreSQL database, dropped at the end.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let admin_url = std::env::var("PG_TEST_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("mksync_daemon_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connect admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        PgDatabase { admin_url, name }
    }

    /// Returns the database's URL with `password` set (trust auth ignores it).
    fn url_with_password(&self, password: &str) -> String {
        let mut url = url::Url::parse(&self.admin_url).expect("PG_TEST_URL");
        url.set_path(&self.name);
        if url.username().is_empty() {
            url.set_username("postgres").expect("username");
        }
        url.set_password(Some(password)).expect("password");
        url.to_string()
    }

    async fn drop_it(self) {
        let admin = sqlx::PgPool::connect(&self.admin_url)
            .await
            .expect("connect admin");
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("drop database");
        admin.close().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_appears_in_logs_metrics_status_or_errors() {
    const WEBHOOK_SECRET: &str = "whsec-Sentinel-4b1d9f";
    const STORE_PASSWORD: &str = "storepass-Sentinel-77c2";
    const CLIENT_SECRET: &str = "mkto-client-Sentinel-a0e5";
    const CRM_PASSWORD: &str = "crmpass-Sentinel-31f8";
    let secrets = [WEBHOOK_SECRET, STORE_PASSWORD, CLIENT_SECRET, CRM_PASSWORD];

    // A global subscriber: the daemon's tasks and sqlx log from any thread. Other tests of this
    // binary log into it too, which only makes the check wider.
    let logs = captured_logs();

    let db = PgDatabase::create().await;
    let store_url = db.url_with_password(STORE_PASSWORD);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("mappings")).expect("mkdir");
    std::fs::write(
        dir.path().join("default.toml"),
        format!(
            "[marketo]\nmunchkin_id = \"123-ABC-456\"\nclient_id = \"client\"\n\n\
             [crm]\nadapter = \"sql\"\n[crm.options.objects.contacts]\ntable = \"Contacts\"\n\n\
             [sync]\nobjects = [\"leads\"]\ninterval_secs = 3600\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("write settings");
    std::fs::write(
        dir.path().join("mappings/leads.toml"),
        "marketo_object = \"lead\"\ncrm_object = \"contacts\"\n[keys]\n\
         marketo_crm_key = \"crmContactId\"\ncrm_marketo_id = \"marketo_lead_id\"\n\
         [[fields]]\nmarketo = \"email\"\ncrm = \"email\"\n",
    )
    .expect("write mapping");
    let vars: std::collections::HashMap<String, String> = [
        ("MKSYNC__MARKETO__CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ("MKSYNC__HTTP__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("MKSYNC__STORE__URL", store_url.clone()),
        (
            "MKSYNC__CRM__URL",
            format!("postgres://crm:{CRM_PASSWORD}@127.0.0.1:1/crm"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let source = marketo_sync::config::SettingsSource::new(dir.path(), None).with_vars(vars);
    let loaded = marketo_sync::config::load(&source).expect("settings load");

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let runner = FakeRunner::new(
        "secrets",
        vec![Step::Succeed(Duration::ZERO)],
        clock.clone(),
    );
    let token = CancellationToken::new();
    let daemon = tokio::spawn(marketo_sync::app::run_daemon(
        loaded,
        runner.clone(),
        token.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(20), runner.started(1))
        .await
        .expect("a cycle ran");

    let mut seen: Vec<(String, String)> = Vec::new();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/api/status",
        "/api/errors",
        "/readyz",
        "/healthz",
        "/metrics",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.expect("body");
        seen.push((format!("GET {path}"), format!("{headers}\n{body}")));
    }
    let queued = client
        .post(format!("{base}/webhooks/marketo"))
        .header("x-marketo-sync-secret", WEBHOOK_SECRET)
        .body(r#"{"leadId": 42}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(queued.status(), 202);
    seen.push(("webhook".into(), queued.text().await.expect("body")));
    let refused = client
        .post(format!("{base}/webhooks/marketo"))
        .header("x-marketo-sync-secret", format!("{WEBHOOK_SECRET}x"))
        .body(r#"{"leadId": 43}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    seen.push((
        "refused webhook".into(),
        refused.text().await.expect("body"),
    ));
    let api_status = &seen[1].1;
    assert!(api_status.contains("123-ABC-456"), "{api_status}");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("mksync_webhook_requests_total"),
        "{metrics}"
    );
    seen.push(("metrics after webhooks".into(), metrics));

    // The CLI's status, from a second store handle.
    let store = marketo_sync::store::open(&store_url).await.expect("store");
    let facts =
        marketo_sync::app::ops::status_facts(store, "123-ABC-456", 10_000, 500 << 20, clock)
            .await
            .expect("facts");
    for json in [false, true] {
        let mut out = Vec::new();
        marketo_sync::app::ops::write_status(&facts, json, &mut out).expect("write");
        seen.push((
            format!("cli status json={json}"),
            String::from_utf8(out).expect("utf8"),
        ));
    }
    // Errors that carry connection details.
    let bad_url = format!("postgres://postgres:{STORE_PASSWORD}@127.0.0.1:notaport/nowhere");
    let error = match marketo_sync::store::open(&bad_url).await {
        Err(e) => e,
        Ok(_) => panic!("a bad port must be refused"),
    };
    let mut chain = format!("{error} / {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        chain.push_str(&format!(" / {s}"));
        source = s.source();
    }
    seen.push(("store error".into(), chain));

    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), daemon)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean exit");
    assert_eq!(runner.leads.lock().expect("lock").as_slice(), &[42]);

    let log_text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(log_text.contains("cycle started"), "logs were captured");
    assert!(log_text.contains("shutdown complete"), "{log_text}");
    assert!(!log_text.contains("did not stop in time"), "{log_text}");
    seen.push(("logs".into(), log_text));
    for (what, text) in &seen {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked in {what}:\n{text}");
        }
    }
    db.drop_it().await;
}
