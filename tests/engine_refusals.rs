//! End to end: a record the CRM refuses (a trigger, a value too long for its column) is one
//! record's failure. The cycle succeeds, the error ledger holds one open entry for it with the
//! CRM's code and message, every other record arrives, and nothing shortened comes back.
//! Run against SQLite, PostgreSQL (`PG_TEST_URL`) and MariaDB (`MYSQL_TEST_URL`) CRMs.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{CrmKind, Options, TestApp, text};
use marketo_sync::store::Direction;
use serde_json::{Map, json};

/// Installs a trigger on `table` refusing any insert or update whose `column` ends in
/// `@blocked.example` (or equals `Blocked`), with the message `blocked by policy`.
async fn install_refusing_trigger(app: &TestApp, crm: CrmKind, table: &str, column: &str) {
    let cond = |row: &str| {
        format!("({row}.{column} LIKE '%@blocked.example' OR {row}.{column} = 'Blocked')")
    };
    match crm {
        CrmKind::Postgres => {
            app.crm_exec(&format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN IF {} THEN RAISE EXCEPTION 'blocked by policy'; END IF; \
                     RETURN NEW; END $$",
                cond("NEW")
            ))
            .await;
            app.crm_exec(&format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
            ))
            .await;
        }
        CrmKind::MariaDb => {
            for event in ["INSERT", "UPDATE"] {
                app.crm_exec(&format!(
                    "CREATE TRIGGER refuse_{table}_{event} BEFORE {event} ON {table} \
                         FOR EACH ROW BEGIN IF {} THEN SIGNAL SQLSTATE '45000' \
                         SET MESSAGE_TEXT = 'blocked by policy'; END IF; END",
                    cond("NEW")
                ))
                .await;
            }
        }
        CrmKind::Sqlite => {
            for event in ["INSERT", "UPDATE"] {
                app.crm_exec(&format!(
                    "CREATE TRIGGER refuse_{table}_{event} BEFORE {event} ON {table} \
                         WHEN {} BEGIN SELECT RAISE(ABORT, 'blocked by policy'); END",
                    cond("NEW")
                ))
                .await;
            }
        }
    }
}

fn remote_code(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Postgres => "P0001",
        CrmKind::MariaDb => "1644",
        CrmKind::Sqlite => "1811",
    }
}

async fn a_lead_refused_by_a_crm_trigger_is_one_ledger_entry(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    install_refusing_trigger(&app, crm, "contacts", "email").await;
    let ok: Vec<i64> = (0..4)
        .map(|i| {
            app.marketo_create(json!({
                "email": format!("person{i}@example.com"), "firstName": format!("P{i}")
            }))
        })
        .collect();
    let blocked = app.marketo_create(json!({"email": "eve@blocked.example", "firstName": "Eve"}));

    let s = app
        .try_cycle()
        .await
        .expect("a refused record does not fail the cycle");
    let counts = &s.objects["leads"][&Direction::MarketoToCrm];
    assert_eq!((counts.created, counts.failed), (4, 1), "{s:?}");
    for (i, id) in ok.iter().enumerate() {
        let found = app.crm_by_email(&format!("person{i}@example.com")).await;
        assert_eq!(found.len(), 1, "lead {id} arrived");
        assert_eq!(text(&found[0].fields, "marketo_id"), Some(id.to_string()));
    }
    assert!(app.crm_by_email("eve@blocked.example").await.is_empty());
    let errors = app.open_errors("leads").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.record_key, blocked.to_string());
    assert_eq!(e.direction, Direction::MarketoToCrm);
    assert_eq!(e.code, "trigger");
    assert!(
        e.message.contains("blocked by policy") && e.message.contains(remote_code(crm)),
        "{e:?}"
    );

    // The next cycles do not fail either, and the entry stays one entry.
    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(3600));
        app.try_cycle().await.expect("later cycles succeed");
    }
    let errors = app.open_errors("leads").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].record_key, blocked.to_string());
    assert_eq!(app.crm_count().await, 4);
    app.cleanup().await;
}

async fn a_too_long_title_is_refused_and_nothing_comes_back(crm: CrmKind) {
    let app = TestApp::with(Options::on(crm)).await;
    let lead = app.marketo_create(
        json!({"email": "long@example.com", "firstName": "Lola", "title": "Engineer"}),
    );
    let other = app.marketo_create(json!({"email": "short@example.com", "firstName": "Sam"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("long@example.com").await[0].id.clone();
    app.settle(4).await;

    // contacts.title is VARCHAR(128): 200 characters do not fit.
    let long = "T".repeat(200);
    app.marketo_update(lead, json!({"title": long}));
    app.marketo_update(other, json!({"title": "Manager"}));
    let s = app.try_cycle().await.expect("the cycle succeeds");
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].failed,
        1,
        "{s:?}"
    );
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(
        text(&c.fields, "title").as_deref(),
        Some("Engineer"),
        "the CRM row is untouched, never truncated"
    );
    let sam = app.crm_by_email("short@example.com").await;
    assert_eq!(text(&sam[0].fields, "title").as_deref(), Some("Manager"));
    let errors = app.open_errors("leads").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].record_key, lead.to_string());
    assert_eq!(errors[0].code, "too_long");
    assert!(
        errors[0].message.contains("title") && errors[0].message.contains("128"),
        "{errors:?}"
    );
    assert!(
        !errors[0].message.contains(&long[..20]),
        "no value in the message"
    );

    // Nothing is written back to Marketo: the long title stays there, over further cycles.
    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(3600));
        app.try_cycle().await.expect("later cycles succeed");
    }
    assert_eq!(app.marketo_lead(lead).unwrap()["title"], json!(long));
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some("Engineer"));
    assert_eq!(app.open_errors("leads").await.len(), 1);
    app.cleanup().await;
}

/// Opts the leads' `title` into shortening (`shorten = true`).
fn shorten_title(m: &mut marketo_sync::config::LoadedMapping) {
    if m.object == "leads" {
        let title = m
            .file
            .fields
            .iter_mut()
            .find(|f| f.crm.as_deref() == Some("title"));
        title.expect("the demo lead mapping maps title").shorten = true;
    }
}

/// With `shorten = true`, a 200-character Marketo title is cut to the CRM column's 128 and no
/// ledger entry is made; the cut value never flows back over Marketo's long one, while a later
/// CRM edit of the field still does.
async fn a_title_opted_into_shortening_is_cut_and_never_flows_back(crm: CrmKind) {
    let app = TestApp::with(Options {
        edit_mapping: Some(shorten_title),
        ..Options::on(crm)
    })
    .await;
    let lead = app.marketo_create(json!({"email": "long@example.com", "firstName": "Lola"}));
    app.run_cycle().await;
    let cid = app.crm_by_email("long@example.com").await[0].id.clone();
    app.settle(4).await;

    let long: String = "Chief ".repeat(30) + "Ünïcode Officer";
    assert!(long.chars().count() > 128);
    app.marketo_update(lead, json!({"title": long}));
    let s = app.try_cycle().await.expect("the cycle succeeds");
    assert_eq!(
        s.objects["leads"][&Direction::MarketoToCrm].failed,
        0,
        "{s:?}"
    );
    let cut: String = long.chars().take(128).collect();
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some(cut.as_str()));
    assert!(app.open_errors("leads").await.is_empty());

    // The CRM's cut value is the sync's own write: Marketo keeps the long title for good, also
    // when the CRM row changes for another reason and is read whole.
    app.crm_update_contact(&cid, "first_name", "Lolita").await;
    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(3600));
        app.try_cycle().await.expect("later cycles succeed");
    }
    let marketo = app.marketo_lead(lead).unwrap();
    assert_eq!(marketo["firstName"], json!("Lolita"));
    assert_eq!(marketo["title"], json!(long));
    let c = app.crm_contact(&cid).await.unwrap();
    assert_eq!(text(&c.fields, "title").as_deref(), Some(cut.as_str()));
    assert!(app.open_errors("leads").await.is_empty());

    // A real CRM edit still flows to Marketo.
    app.crm_update_contact(&cid, "title", "CFO").await;
    app.clock.advance(Duration::from_secs(3600));
    app.try_cycle().await.expect("the cycle succeeds");
    assert_eq!(app.marketo_lead(lead).unwrap()["title"], json!("CFO"));
    app.cleanup().await;
}

/// Companies, Marketo -> CRM: edits made in Marketo to linked accounts, one refused by a trigger
/// and one too long for its column; the third arrives.
async fn company_edits_refused_by_the_crm_are_ledger_entries(crm: CrmKind) {
    let app = TestApp::with(Options {
        objects: vec!["leads".into(), "companies".into()],
        ..Options::on(crm)
    })
    .await;
    for (id, name) in [(9003, "Acme"), (9004, "Globex"), (9005, "Initech")] {
        app.crm_exec(&format!("INSERT INTO accounts (id, name, industry, marketo_id) VALUES ({id}, '{name}', 'Retail', '{id}')"),
        )
        .await;
    }
    app.run_cycle().await;
    for id in ["9003", "9004", "9005"] {
        assert!(
            app.sim.company(id).is_some(),
            "company {id} reached Marketo"
        );
    }
    install_refusing_trigger(&app, crm, "accounts", "industry").await;

    let edit = |id: &str, field: &str, value: serde_json::Value| {
        let mut m = Map::new();
        m.insert("externalCompanyId".into(), json!(id));
        m.insert(field.into(), value);
        app.sim.upsert_company(m).unwrap();
    };
    edit("9003", "industry", json!("Blocked"));
    // billing_city is VARCHAR(100).
    let long_city = "C".repeat(150);
    edit("9004", "billingCity", json!(long_city));
    edit("9005", "industry", json!("Energy"));
    app.clock.advance(Duration::from_secs(25 * 3600));
    let s = app.try_cycle().await.expect("the cycle succeeds");
    assert_eq!(
        s.objects["companies"][&Direction::MarketoToCrm].failed,
        2,
        "{s:?}"
    );
    let rows = app
        .user
        .fetch(
            "read",
            "SELECT industry, billing_city FROM accounts WHERE id >= 9003 ORDER BY id".to_owned(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some("Retail"),
        "refused by the trigger"
    );
    assert_eq!(rows[1][1], None, "refused as too long, never truncated");
    assert_eq!(
        rows[2][0].as_deref(),
        Some("Energy"),
        "the other edit arrived"
    );
    let mut errors = app.open_errors("companies").await;
    errors.sort_by(|a, b| a.code.cmp(&b.code));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].code, "too_long");
    assert!(errors[0].message.contains("billing_city"), "{errors:?}");
    assert_eq!(errors[1].code, "trigger");
    assert!(
        errors[1].message.contains("blocked by policy")
            && errors[1].message.contains(remote_code(crm)),
        "{errors:?}"
    );
    // Nothing shortened or refused flows back to Marketo, and later cycles succeed.
    app.clock.advance(Duration::from_secs(3600));
    app.try_cycle().await.expect("later cycles succeed");
    assert_eq!(
        app.sim.company("9004").unwrap()["billingCity"],
        json!(long_city)
    );
    assert_eq!(
        app.sim.company("9003").unwrap()["industry"],
        json!("Blocked")
    );
    assert_eq!(app.open_errors("companies").await.len(), 2);
    app.cleanup().await;
}

macro_rules! on_crms {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::CrmKind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::CrmKind::Postgres).await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::CrmKind::MariaDb).await;
                }
            )*
        }
    };
}

on_crms!(
    a_lead_refused_by_a_crm_trigger_is_one_ledger_entry,
    a_too_long_title_is_refused_and_nothing_comes_back,
    a_title_opted_into_shortening_is_cut_and_never_flows_back,
    company_edits_refused_by_the_crm_are_ledger_entries,
);
