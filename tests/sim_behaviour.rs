//! Behaviour of the Marketo simulator over raw HTTP: identity, limits, leads, activities, bulk.

use std::collections::BTreeMap;
use std::time::Duration;

use marketo_sync::sim::{FaultProfile, SimConfig, SimHandle, Simulator};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

fn config() -> SimConfig {
    SimConfig {
        seed: 42,
        leads: 200,
        client_id: "cid".into(),
        client_secret: SecretString::from("csecret"),
        export_delay: Duration::from_secs(60),
        import_delay: Duration::from_secs(5),
        start: Some("2024-03-05T12:00:00Z".parse().unwrap()),
        ..SimConfig::default()
    }
}

struct T {
    sim: SimHandle,
    http: reqwest::Client,
    token: String,
}

impl T {
    async fn new(config: SimConfig) -> T {
        let sim = Simulator::start(config).await.expect("simulator starts");
        let http = reqwest::Client::new();
        let mut t = T {
            sim,
            http,
            token: String::new(),
        };
        t.token = t.fetch_token().await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        t
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn fetch_token(&self) -> Value {
        let url = self.url("/identity/oauth/token?grant_type=client_credentials&client_id=cid&client_secret=csecret");
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn code(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or("")
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn tokens_live_an_hour_then_602_then_601() {
    let t = T::new(config()).await;
    let again = t.fetch_token().await;
    assert_eq!(again["access_token"], t.token.as_str());
    assert_eq!(again["token_type"], "bearer");
    assert!(again["expires_in"].as_i64().unwrap() <= 3600);
    assert_eq!(t.get("/rest/v1/leads/describe.json").await["success"], true);
    let before = t.sim.counters().calls_today;
    t.sim.advance_clock(Duration::from_secs(3600));
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "602");
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "601");
    assert_eq!(
        t.sim.counters().calls_today,
        before,
        "601/602 are not counted"
    );
    let fresh = t.fetch_token().await;
    assert_ne!(fresh["access_token"], t.token.as_str());
    // Missing token, query token, bad credentials.
    let missing: Value = t
        .http
        .get(t.url("/rest/v1/leads/describe.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&missing), "603");
    let tok = fresh["access_token"].as_str().unwrap();
    let query = t
        .get(&format!("/rest/v1/leads/describe.json?access_token={tok}"))
        .await;
    assert_eq!(code(&query), "603");
    let bad = t
        .http
        .post(t.url(
            "/identity/oauth/token?grant_type=client_credentials&client_id=cid&client_secret=nope",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    let log = t.sim.request_log();
    let last_602 = log
        .iter()
        .find(|e| e.code.as_deref() == Some("602"))
        .unwrap();
    assert!(!last_602.counted);
    assert_eq!(last_602.path, "/rest/v1/leads/describe.json");
}

#[tokio::test]
async fn rate_window_answers_606_and_slides() {
    let t = T::new(config()).await;
    for _ in 0..100 {
        assert_eq!(
            t.get("/rest/v1/leads/describe2.json").await["success"],
            true
        );
    }
    let over = t.get("/rest/v1/leads/describe2.json").await;
    assert_eq!(code(&over), "606");
    assert_eq!(over["success"], false);
    t.sim.advance_clock(Duration::from_secs(21));
    assert_eq!(
        t.get("/rest/v1/leads/describe2.json").await["success"],
        true
    );
}

#[tokio::test]
async fn daily_quota_answers_607_until_chicago_midnight() {
    let t = T::new(SimConfig {
        daily_quota: 3,
        ..config()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(t.get("/rest/v1/leads/describe.json").await["success"], true);
    }
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "607");
    let usage = t.sim.counters();
    assert_eq!(usage.calls_today, 3);
    // 12:00Z is 06:00 in Chicago; the day turns 18 h later.
    t.sim.advance_clock(Duration::from_secs(18 * 3600));
    let mut t = t;
    t.token = t.fetch_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.get("/rest/v1/leads/describe.json").await["success"], true);
}

#[tokio::test]
async fn a_spent_daily_quota_answers_607_until_the_day_turns() {
    let t = T::new(config()).await;
    assert_eq!(t.get("/rest/v1/leads/describe.json").await["success"], true);
    t.sim.spend_daily_quota();
    assert_eq!(t.sim.counters().calls_today, 50_000);
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "607");
    // 12:00Z is 06:00 in Chicago: one hour short of the turn it still refuses.
    let mut t = t;
    for (hours, answer) in [(17, "607"), (1, "")] {
        t.sim.advance_clock(Duration::from_secs(hours * 3600));
        t.token = t.fetch_token().await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), answer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_in_flight_answers_615() {
    let t = T::new(config()).await;
    t.sim
        .set_faults("route=leads,kind=slow,rate=1,delay_ms=400".parse().unwrap());
    let mut calls = Vec::new();
    for _ in 0..16 {
        let req = t
            .http
            .get(t.url("/rest/v1/leads/describe.json"))
            .bearer_auth(&t.token)
            .send();
        calls.push(async move { req.await.unwrap().json::<Value>().await.unwrap() });
    }
    let answers = futures::future::join_all(calls).await;
    let refused = answers.iter().filter(|a| code(a) == "615").count();
    let served = answers.iter().filter(|a| a["success"] == true).count();
    assert!(refused >= 1, "no 615 among {answers:?}");
    assert!((1..=10).contains(&served));
}

#[tokio::test]
async fn sync_leads_actions_and_lookup_fields() {
    let t = T::new(config()).await;
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"action": "createOnly", "input": [
                {"email": "new.one@x.example", "firstName": "New", "crmContactId": "C-1"},
                {"email": "new.one@x.example"},
                {"email": "bad", "firstName": "X"}]}),
        )
        .await;
    let res = r["result"].as_array().unwrap();
    assert_eq!(res[0]["status"], "created");
    assert!(res[0].get("seq").is_none(), "lead results carry no seq");
    assert_eq!(res[1]["reasons"][0]["code"], "1005");
    assert_eq!(res[2]["reasons"][0]["code"], "1001");
    let id = res[0]["id"].as_i64().unwrap();
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"action": "updateOnly", "lookupField": "crmContactId", "input": [
                {"crmContactId": "C-1", "title": "CTO"}, {"crmContactId": "C-404", "title": "x"}]}),
        )
        .await;
    assert_eq!(r["result"][0], json!({"id": id, "status": "updated"}));
    assert_eq!(r["result"][1]["reasons"][0]["code"], "1004");
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"lookupField": "firstName", "input": [{"firstName": "New"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1011");
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"action": "createDuplicate", "input": [{"email": "new.one@x.example"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["status"], "created");
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"input": [{"email": "NEW.ONE@x.example", "title": "y"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1007");
    let too_many: Vec<Value> = (0..301)
        .map(|i| json!({"email": format!("a{i}@x.example")}))
        .collect();
    assert_eq!(
        code(
            &t.post("/rest/v1/leads.json", json!({"input": too_many}))
                .await
        ),
        "1003"
    );
    let lead = t
        .get(&format!(
            "/rest/v1/lead/{id}.json?fields=email,title,crmContactId,company"
        ))
        .await;
    assert_eq!(
        lead["result"][0],
        json!({"email": "new.one@x.example", "title": "CTO", "crmContactId": "C-1", "company": null})
    );
    // New Lead + Change Data Value with the field's describe id.
    let acts = t.sim.activities();
    assert!(
        acts.iter()
            .any(|a| a["activityTypeId"] == 12 && a["leadId"] == id)
    );
    let change = acts
        .iter()
        .find(|a| a["activityTypeId"] == 13 && a["leadId"] == id)
        .unwrap();
    assert_eq!(change["primaryAttributeValueId"], 27);
}

#[tokio::test]
async fn query_by_filter_pages_and_accepts_post_method_get() {
    let t = T::new(config()).await;
    let r = t
        .get("/rest/v1/leads.json?filterType=id&filterValues=1,2,3,4,5&batchSize=2&fields=id,email")
        .await;
    assert_eq!(r["result"].as_array().unwrap().len(), 2);
    let mut ids = vec![];
    let mut page = r;
    loop {
        for lead in page["result"].as_array().unwrap() {
            ids.push(lead["id"].as_i64().unwrap());
        }
        let Some(next) = page["nextPageToken"].as_str().map(str::to_string) else {
            break;
        };
        page = t.get(&format!("/rest/v1/leads.json?filterType=id&filterValues=1,2,3,4,5&batchSize=2&nextPageToken={next}")).await;
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let email = t.sim.lead(7).unwrap()["email"]
        .as_str()
        .unwrap()
        .to_string();
    let form: Value = t
        .http
        .post(t.url("/rest/v1/leads.json?_method=GET"))
        .bearer_auth(&t.token)
        .form(&[
            ("filterType", "email"),
            ("filterValues", email.as_str()),
            ("fields", "id,email"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(form["result"][0]["id"], 7);
    assert_eq!(
        code(
            &t.get("/rest/v1/leads.json?filterType=firstName&filterValues=Ada")
                .await
        ),
        "1011"
    );
    assert_eq!(
        code(&t.get("/rest/v1/leads.json?filterType=id").await),
        "1003"
    );
    let missing = t
        .get("/rest/v1/leads.json?filterType=id&filterValues=999999")
        .await;
    assert_eq!(missing["result"], json!([]));
}

#[tokio::test]
async fn merge_keeps_winner_values_and_logs_merge_leads() {
    let t = T::new(config()).await;
    let winner = t
        .sim
        .create_lead(obj(json!({"email": "w@x.example", "firstName": "Win"})));
    let loser = t.sim.create_lead(obj(
        json!({"email": "l@x.example", "firstName": "Lose", "title": "Boss"}),
    ));
    let r = t
        .post(
            &format!("/rest/v1/leads/{winner}/merge.json?leadId={loser}"),
            json!({}),
        )
        .await;
    assert_eq!(r["success"], true);
    assert!(r.get("result").is_none());
    let lead = t.sim.lead(winner).unwrap();
    assert_eq!(lead["firstName"], "Win");
    assert_eq!(lead["title"], "Boss");
    assert!(t.sim.lead(loser).is_none());
    let tok = t
        .get("/rest/v1/activities/pagingtoken.json?sinceDatetime=2024-03-01T00:00:00Z")
        .await;
    let token = tok["nextPageToken"].as_str().unwrap();
    let acts = t
        .get(&format!(
            "/rest/v1/activities.json?activityTypeIds=32&nextPageToken={token}"
        ))
        .await;
    let merge = &acts["result"][0];
    assert_eq!(merge["leadId"], winner);
    let attrs = merge["attributes"].as_array().unwrap();
    let ids = attrs.iter().find(|a| a["name"] == "Merge IDs").unwrap();
    assert_eq!(ids["value"], json!([loser]));
    let too_many: Vec<String> = (1..=26).map(|i| i.to_string()).collect();
    let r = t
        .post(
            &format!(
                "/rest/v1/leads/{winner}/merge.json?leadIds={}",
                too_many.join(",")
            ),
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "1080");
}

#[tokio::test]
async fn deletes_show_in_deleted_leads() {
    let t = T::new(config()).await;
    let tok = t
        .get("/rest/v1/activities/pagingtoken.json?sinceDatetime=2024-03-05T00:00:00Z")
        .await;
    let token = tok["nextPageToken"].as_str().unwrap().to_string();
    let r = t
        .post(
            "/rest/v1/leads/delete.json",
            json!({"input": [{"id": 3}, {"id": 999999}]}),
        )
        .await;
    assert_eq!(r["result"][0], json!({"id": 3, "status": "deleted"}));
    assert_eq!(r["result"][1]["reasons"][0]["code"], "1004");
    let del = t
        .get(&format!(
            "/rest/v1/activities/deletedleads.json?nextPageToken={token}"
        ))
        .await;
    assert_eq!(del["result"][0]["activityTypeId"], 37);
    assert_eq!(del["result"][0]["primaryAttributeValueId"], 3);
    assert_eq!(del["moreResult"], false);
    assert!(
        t.get("/rest/v1/lead/3.json").await["result"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn company_fields_are_read_through_and_refused_on_linked_leads() {
    let t = T::new(config()).await;
    t.sim
        .upsert_company(obj(
            json!({"externalCompanyId": "ACME-1", "company": "Acme", "industry": "Tools"}),
        ))
        .unwrap();
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"input": [{"email": "emp@acme.example", "externalCompanyId": "ACME-1"}]}),
        )
        .await;
    let id = r["result"][0]["id"].as_i64().unwrap();
    let lead = t
        .get(&format!("/rest/v1/lead/{id}.json?fields=company,industry"))
        .await;
    assert_eq!(
        lead["result"][0],
        json!({"company": "Acme", "industry": "Tools"})
    );
    let r = t
        .post(
            "/rest/v1/leads.json",
            json!({"input": [{"email": "emp@acme.example", "company": "Other Co"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["status"], "skipped");
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1021");
    t.sim
        .upsert_company(obj(
            json!({"externalCompanyId": "ACME-1", "company": "Acme Renamed"}),
        ))
        .unwrap();
    assert_eq!(t.sim.lead(id).unwrap()["company"], "Acme Renamed");
    // Companies via REST: sync with seq, query, delete with deleteBy.
    let r = t.post("/rest/v1/companies.json", json!({"input": [{"externalCompanyId": "ACME-2", "company": "Two"}, {"company": "no key"}]})).await;
    assert_eq!(r["result"][0]["seq"], 0);
    assert_eq!(r["result"][0]["status"], "created");
    assert_eq!(r["result"][1]["status"], "skipped");
    let q = t.get("/rest/v1/companies.json?filterType=externalCompanyId&filterValues=ACME-2&fields=company").await;
    assert_eq!(q["result"][0]["company"], "Two");
    let d = t.post("/rest/v1/companies/delete.json", json!({"deleteBy": "dedupeFields", "input": [{"externalCompanyId": "ACME-2"}, {"externalCompanyId": "NOPE"}]})).await;
    assert_eq!(d["result"][0]["status"], "deleted");
    assert_eq!(d["result"][1]["reasons"][0]["code"], "1013");
}

#[tokio::test]
async fn opportunities_describe_accept_and_return_external_created_date() {
    let t = T::new(config()).await;
    let d = t.get("/rest/v1/opportunities/describe.json").await;
    let field = d["result"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "externalCreatedDate")
        .cloned()
        .unwrap_or_else(|| panic!("no externalCreatedDate in {d}"));
    assert_eq!(field["dataType"], "datetime");
    assert_eq!(field["updateable"], true);
    let r = t
        .post(
            "/rest/v1/opportunities.json",
            json!({"input": [{"externalOpportunityId": "OPC", "name": "Dated",
                "externalCreatedDate": "2024-03-01T10:00:00Z"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["status"], "created", "{r}");
    let q = t
        .get("/rest/v1/opportunities.json?filterType=externalOpportunityId&filterValues=OPC&fields=externalCreatedDate,name")
        .await;
    assert_eq!(
        q["result"][0]["externalCreatedDate"], "2024-03-01T10:00:00Z",
        "{q}"
    );
}

#[tokio::test]
async fn roles_use_compound_keys_and_log_add_to_opportunity() {
    let t = T::new(config()).await;
    let r = t
        .post(
            "/rest/v1/opportunities.json",
            json!({"input": [{"externalOpportunityId": "OPX", "name": "Big deal"}]}),
        )
        .await;
    assert!(r["result"][0]["marketoGUID"].is_string());
    let r = t
        .post(
            "/rest/v1/opportunities/roles.json",
            json!({"input": [{"externalOpportunityId": "OPX", "leadId": 5, "role": "Champion"}]}),
        )
        .await;
    assert_eq!(r["result"][0]["status"], "created");
    let q: Value = t
        .http
        .post(t.url("/rest/v1/opportunities/roles.json?_method=GET"))
        .bearer_auth(&t.token)
        .json(&json!({"filterType": "dedupeFields", "fields": ["marketoGUID", "role"], "input": [{"externalOpportunityId": "OPX", "leadId": 5, "role": "Champion"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["result"][0]["role"], "Champion");
    assert_eq!(q["result"][0]["marketoGUID"], r["result"][0]["marketoGUID"]);
    assert!(
        t.sim
            .activities()
            .iter()
            .any(|a| a["activityTypeId"] == 34 && a["leadId"] == 5)
    );
    let car = t
        .post(
            "/rest/v1/customobjects/car_c.json",
            json!({"input": [{"vin": "VINX", "make": "Fiat", "leadId": 5}]}),
        )
        .await;
    assert_eq!(car["result"][0]["status"], "created");
    assert_eq!(
        code(&t.get("/rest/v1/customobjects/boat_c/describe.json").await),
        "1003"
    );
}

async fn create_export(t: &T, body: Value) -> Value {
    t.post("/bulk/v1/leads/export/create.json", body).await
}

fn window() -> Value {
    json!({"createdAt": {"startAt": "2024-01-01T00:00:00Z", "endAt": "2024-01-31T23:59:59Z"}})
}

#[tokio::test]
async fn lead_export_lifecycle_file_and_ranges() {
    let t = T::new(config()).await;
    let created = create_export(&t, json!({"fields": ["id", "email", "company", "unsubscribed"], "columnHeaderNames": {"id": "Marketo Id"}, "filter": window()})).await;
    let job = &created["result"][0];
    assert_eq!(job["status"], "Created");
    let id = job["exportId"].as_str().unwrap().to_string();
    let base = format!("/bulk/v1/leads/export/{id}");
    let file_url = t.url(&format!("{base}/file.json"));
    let early = t
        .http
        .get(&file_url)
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 404);
    let q = t.post(&format!("{base}/enqueue.json"), json!({})).await;
    // Marketo answers an enqueue with `Queued`; the job moves on at the next tick.
    assert_eq!(q["result"][0]["status"], "Queued");
    assert!(q["result"][0]["queuedAt"].is_string());
    assert_eq!(
        t.get(&format!("{base}/status.json")).await["result"][0]["status"],
        "Processing"
    );
    assert_eq!(
        t.post(&format!("{base}/enqueue.json"), json!({})).await["errors"][0]["message"],
        "Job already queued"
    );
    t.sim.advance_clock(Duration::from_secs(59));
    assert_eq!(
        t.get(&format!("{base}/status.json")).await["result"][0]["status"],
        "Processing"
    );
    t.sim.advance_clock(Duration::from_secs(1));
    let status = t.get(&format!("{base}/status.json")).await["result"][0].clone();
    assert_eq!(status["status"], "Completed");
    let body = t
        .http
        .get(&file_url)
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(status["fileSize"], body.len());
    assert_eq!(
        status["fileChecksum"],
        format!("sha256:{}", hex::encode(Sha256::digest(&body)))
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Marketo Id,email,company,unsubscribed"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(status["numberOfRecords"], rows.len());
    let expected = t
        .sim
        .leads()
        .iter()
        .filter(|l| l["createdAt"].as_str().unwrap().starts_with("2024-01"))
        .count();
    assert_eq!(rows.len(), expected);
    assert!(!rows.is_empty());
    assert!(
        rows.iter().any(|r| r.contains(",null,")),
        "missing values are literal null"
    );
    let part = t
        .http
        .get(&file_url)
        .bearer_auth(&t.token)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-9/{}", text.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &text.as_bytes()[..10]);
    let listed = t.get("/bulk/v1/leads/export.json?status=completed").await;
    assert_eq!(listed["result"][0]["exportId"], id.as_str());
}

#[tokio::test]
async fn export_filters_and_1035_switch() {
    let t = T::new(SimConfig {
        updated_at_filter: false,
        ..config()
    })
    .await;
    assert_eq!(
        code(&create_export(&t, json!({"fields": ["id"]})).await),
        "1003"
    );
    let long =
        json!({"createdAt": {"startAt": "2024-01-01T00:00:00Z", "endAt": "2024-02-15T00:00:00Z"}});
    assert_eq!(
        code(&create_export(&t, json!({"fields": ["id"], "filter": long})).await),
        "1003"
    );
    let upd =
        json!({"updatedAt": {"startAt": "2024-01-01T00:00:00Z", "endAt": "2024-01-01T00:00:01Z"}});
    assert_eq!(
        code(&create_export(&t, json!({"fields": ["id"], "filter": upd.clone()})).await),
        "1035"
    );
    // The default, like a normal subscription, supports the filter.
    assert!(SimConfig::default().updated_at_filter);
    let t2 = T::new(config()).await;
    assert_eq!(
        create_export(&t2, json!({"fields": ["id"], "filter": upd})).await["result"][0]["status"],
        "Created"
    );
}

/// A lead export takes exactly one filter; a static list Marketo does not hold is refused at
/// create (1003), not exported empty; smart lists answer 1035 (a subscription without them).
#[tokio::test]
async fn export_list_filters_name_a_known_list_and_only_one_filter() {
    let t = T::new(config()).await;
    for filter in [
        json!({"staticListId": 1001}),
        json!({"staticListName": "Newsletter"}),
    ] {
        let created = create_export(&t, json!({"fields": ["id"], "filter": filter})).await;
        assert_eq!(
            created["result"][0]["status"], "Created",
            "{filter}: {created}"
        );
    }
    for filter in [
        json!({"staticListId": 999_999}),
        json!({"staticListName": "No Such List"}),
    ] {
        let refused = create_export(&t, json!({"fields": ["id"], "filter": filter})).await;
        assert_eq!(code(&refused), "1003", "{filter}: {refused}");
        assert!(
            refused["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("not found"),
            "{refused}"
        );
    }
    let two = json!({"staticListId": 1001, "createdAt": {"startAt": "2024-01-01T00:00:00Z",
                     "endAt": "2024-01-02T00:00:00Z"}});
    assert_eq!(
        code(&create_export(&t, json!({"fields": ["id"], "filter": two})).await),
        "1003"
    );
    for filter in [json!({"smartListId": 1}), json!({"smartListName": "Hot"})] {
        assert_eq!(
            code(&create_export(&t, json!({"fields": ["id"], "filter": filter})).await),
            "1035"
        );
    }
}

#[tokio::test]
async fn export_queue_limits_answer_1029() {
    let t = T::new(config()).await;
    let mut ids = vec![];
    for _ in 0..11 {
        let r = create_export(&t, json!({"fields": ["id"], "filter": window()})).await;
        ids.push(r["result"][0]["exportId"].as_str().unwrap().to_string());
    }
    let mut statuses = vec![];
    for id in &ids[..10] {
        let r = t
            .post(
                &format!("/bulk/v1/leads/export/{id}/enqueue.json"),
                json!({}),
            )
            .await;
        statuses.push(r["result"][0]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "Queued").count(),
        10,
        "every enqueue answers Queued: {statuses:?}"
    );
    let mut now = vec![];
    for id in &ids[..10] {
        let r = t
            .get(&format!("/bulk/v1/leads/export/{id}/status.json"))
            .await;
        now.push(r["result"][0]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(now.iter().filter(|s| *s == "Processing").count(), 2);
    assert_eq!(now.iter().filter(|s| *s == "Queued").count(), 8);
    let over = t
        .post(
            &format!("/bulk/v1/leads/export/{}/enqueue.json", ids[10]),
            json!({}),
        )
        .await;
    assert_eq!(code(&over), "1029");
    assert!(
        over["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Too many jobs")
    );
    // Two at a time: after one delay the first two are done and the next two run.
    t.sim.advance_clock(Duration::from_secs(60));
    let s2 = t
        .get(&format!("/bulk/v1/leads/export/{}/status.json", ids[2]))
        .await;
    assert_eq!(s2["result"][0]["status"], "Processing");
    assert_eq!(
        t.get(&format!("/bulk/v1/leads/export/{}/status.json", ids[0]))
            .await["result"][0]["status"],
        "Completed"
    );
    let c = t
        .post(
            &format!("/bulk/v1/leads/export/{}/cancel.json", ids[9]),
            json!({}),
        )
        .await;
    assert_eq!(c["result"][0]["status"], "Cancelled");
}

#[tokio::test]
async fn export_daily_bytes_answer_1029_quota() {
    let t = T::new(SimConfig {
        bulk_daily_bytes: 50,
        export_delay: Duration::from_secs(0),
        ..config()
    })
    .await;
    let r = create_export(&t, json!({"fields": ["id", "email"], "filter": window()})).await;
    let id = r["result"][0]["exportId"].as_str().unwrap().to_string();
    t.post(
        &format!("/bulk/v1/leads/export/{id}/enqueue.json"),
        json!({}),
    )
    .await;
    let status = t
        .get(&format!("/bulk/v1/leads/export/{id}/status.json"))
        .await;
    assert!(status["result"][0]["fileSize"].as_u64().unwrap() > 50);
    let over = create_export(&t, json!({"fields": ["id"], "filter": window()})).await;
    assert_eq!(code(&over), "1029");
    assert_eq!(
        over["errors"][0]["message"],
        "Export daily quota 0MB exceeded"
    );
}

#[tokio::test]
async fn activity_export_has_json_object_attributes() {
    let t = T::new(SimConfig {
        export_delay: Duration::from_secs(0),
        ..config()
    })
    .await;
    let id = t.sim.create_lead(obj(json!({"email": "act@x.example"})));
    t.sim
        .update_lead(id, obj(json!({"firstName": "Al"})))
        .unwrap();
    let r = t
        .post("/bulk/v1/activities/export/create.json", json!({"filter": {"createdAt": {"startAt": "2024-03-01T00:00:00Z", "endAt": "2024-03-30T00:00:00Z"}, "activityTypeIds": [12, 13]}}))
        .await;
    let job = r["result"][0]["exportId"].as_str().unwrap().to_string();
    t.post(
        &format!("/bulk/v1/activities/export/{job}/enqueue.json"),
        json!({}),
    )
    .await;
    let file = t
        .http
        .get(t.url(&format!("/bulk/v1/activities/export/{job}/file.json")))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(file.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        vec![
            "marketoGUID",
            "leadId",
            "activityDate",
            "activityTypeId",
            "campaignId",
            "primaryAttributeValueId",
            "primaryAttributeValue",
            "attributes"
        ]
    );
    let all: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // The window also holds the New Lead activities of generated leads created in it.
    let generated = all.iter().filter(|r| r[1] != id.to_string()).count();
    assert!(
        all.iter()
            .filter(|r| r[1] != id.to_string())
            .all(|r| &r[3] == "12" && r[1].parse::<i64>().unwrap() <= 200),
        "only generated leads' New Lead rows besides ours"
    );
    let rows: Vec<&csv::StringRecord> = all.iter().filter(|r| r[1] == id.to_string()).collect();
    assert_eq!(rows.len(), 2, "{generated} generated rows, {all:?}");
    let change = rows.iter().find(|r| &r[3] == "13").unwrap();
    assert_eq!(&change[4], "null");
    let attrs: Value = serde_json::from_str(&change[7]).unwrap();
    assert_eq!(attrs["New Value"], "Al");
}

#[tokio::test]
async fn bulk_import_reports_failed_rows() {
    let t = T::new(config()).await;
    let csv_body = "email,firstName,leadScore\nimp1@x.example,Imp,5\n,NoEmail,3\nimp2@x.example,Bad,notanumber\n";
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(csv_body.as_bytes().to_vec()).file_name("leads.csv"),
        )
        .text("format", "csv");
    let r: Value = t
        .http
        .post(t.url("/bulk/v1/leads.json"))
        .bearer_auth(&t.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = r["result"][0]["batchId"].as_i64().unwrap();
    assert_eq!(r["result"][0]["status"], "Queued");
    t.sim.advance_clock(Duration::from_secs(5));
    let s = t.get(&format!("/bulk/v1/leads/batch/{batch}.json")).await;
    assert_eq!(s["result"][0]["status"], "Complete");
    assert_eq!(s["result"][0]["numOfLeadsProcessed"], 1);
    assert_eq!(s["result"][0]["numOfRowsFailed"], 2);
    let failures = t
        .http
        .get(t.url(&format!("/bulk/v1/leads/batch/{batch}/failures.json")))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = failures.lines();
    assert_eq!(
        lines.next(),
        Some("email,firstName,leadScore,Import Failure Reason")
    );
    assert_eq!(lines.count(), 2);
    assert_eq!(t.sim.find_leads("email", "imp1@x.example").len(), 1);
}

#[tokio::test]
async fn file_faults_break_downloads() {
    let t = T::new(SimConfig {
        export_delay: Duration::from_secs(0),
        ..config()
    })
    .await;
    let r = create_export(&t, json!({"fields": ["id", "email"], "filter": window()})).await;
    let id = r["result"][0]["exportId"].as_str().unwrap().to_string();
    t.post(
        &format!("/bulk/v1/leads/export/{id}/enqueue.json"),
        json!({}),
    )
    .await;
    let url = t.url(&format!("/bulk/v1/leads/export/{id}/file.json"));
    t.sim
        .set_faults("route=bulk_file,kind=file404,rate=1".parse().unwrap());
    assert_eq!(
        t.get(&format!("/bulk/v1/leads/export/{id}/status.json"))
            .await["result"][0]["status"],
        "Completed"
    );
    assert_eq!(
        t.http
            .get(&url)
            .bearer_auth(&t.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    t.sim
        .set_faults("route=bulk_file,kind=truncate,rate=1".parse().unwrap());
    let full_len = t
        .get(&format!("/bulk/v1/leads/export/{id}/status.json"))
        .await["result"][0]["fileSize"]
        .as_u64()
        .unwrap();
    match t.http.get(&url).bearer_auth(&t.token).send().await {
        Ok(resp) => {
            assert_eq!(resp.content_length(), Some(full_len));
            assert!(
                resp.bytes().await.is_err(),
                "a truncated body must fail to read"
            );
        }
        Err(error) => assert!(
            error.is_request() || error.is_body(),
            "unexpected error {error}"
        ),
    }
    t.sim.set_faults(FaultProfile::none());
    assert!(
        t.http
            .get(&url)
            .bearer_auth(&t.token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .is_ok()
    );
    t.sim
        .set_faults("route=leads,kind=timeout,rate=1".parse().unwrap());
    let before = t.sim.counters().calls_today;
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "604");
    assert_eq!(t.sim.counters().calls_today, before);
}

#[tokio::test]
async fn generator_is_deterministic_per_seed() {
    let a = Simulator::start(config()).await.unwrap();
    let b = Simulator::start(config()).await.unwrap();
    let c = Simulator::start(SimConfig {
        seed: 43,
        ..config()
    })
    .await
    .unwrap();
    assert_eq!(a.leads(), b.leads());
    assert_ne!(a.leads(), c.leads());
    assert_eq!(a.leads().len(), 200);
    assert_eq!(a.company("EC-000001"), b.company("EC-000001"));
    let with_crm = a
        .leads()
        .iter()
        .filter(|l| l["crmContactId"].is_string())
        .count();
    assert!(with_crm > 100 && with_crm < 200);
}

#[tokio::test]
async fn admin_api_acts_as_a_user() {
    let t = T::new(config()).await;
    let created: Value = t
        .http
        .post(t.url("/__sim/leads"))
        .json(&json!({"email": "adm@x.example"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let edited: Value = t
        .http
        .post(t.url(&format!("/__sim/leads/{id}")))
        .json(&json!({"title": "Ops"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edited["changed"], 1);
    let adv: Value = t
        .http
        .post(t.url("/__sim/clock/advance"))
        .json(&json!({"seconds": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        adv["now"].as_str().unwrap().get(..13),
        Some("2024-03-05T13")
    );
    let faults = t
        .http
        .post(t.url("/__sim/faults"))
        .json(&json!({"profile": "route=x,kind=bogus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 400);
    t.get("/rest/v1/leads/describe.json").await;
    let log: Value = t
        .http
        .get(t.url("/__sim/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = log["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["path"], "/rest/v1/leads/describe.json");
    assert_eq!(
        last["counted"], false,
        "the token expired after the hour: 602 is not counted"
    );
    let counters: Value = t
        .http
        .get(t.url("/__sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["leads"], 201);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let t = T::new(config()).await;
    assert_eq!(code(&t.get("/rest/v1/nothing.json").await), "610");
    assert_eq!(code(&t.get("/rest/v1/leads/delete.json").await), "605");
    let long = "x".repeat(9000);
    let resp = t
        .http
        .get(t.url(&format!(
            "/rest/v1/leads.json?filterType=email&filterValues={long}"
        )))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 414);
}

#[tokio::test]
async fn oversized_bodies_answer_413() {
    let t = T::new(config()).await;
    let big = "x".repeat(1024 * 1024 + 10);
    let resp = t
        .http
        .post(t.url("/rest/v1/leads.json"))
        .bearer_auth(&t.token)
        .json(&json!({"input": [{"email": big}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn lead_changes_report_requested_fields_only() {
    let t = T::new(config()).await;
    let tok = t
        .get("/rest/v1/activities/pagingtoken.json?sinceDatetime=2024-03-05T00:00:00Z")
        .await;
    let token = tok["nextPageToken"].as_str().unwrap().to_string();
    t.sim
        .update_lead(
            9,
            obj(json!({"firstName": "Changed", "title": "New title"})),
        )
        .unwrap();
    let r = t
        .get(&format!(
            "/rest/v1/activities/leadchanges.json?fields=firstName&nextPageToken={token}"
        ))
        .await;
    let items = r["result"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["leadId"], 9);
    assert_eq!(items[0]["fields"][0]["name"], "firstName");
    assert_eq!(items[0]["fields"][0]["id"], 21);
    assert_eq!(items[0]["fields"][0]["newValue"], "Changed");
    // Paging: one record per page.
    let r = t
        .get(&format!(
            "/rest/v1/activities.json?activityTypeIds=13&batchSize=1&nextPageToken={token}"
        ))
        .await;
    assert_eq!(r["result"].as_array().unwrap().len(), 1);
    assert_eq!(r["moreResult"], true);
    let next = r["nextPageToken"].as_str().unwrap();
    let r2 = t
        .get(&format!(
            "/rest/v1/activities.json?activityTypeIds=13&batchSize=1&nextPageToken={next}"
        ))
        .await;
    assert_ne!(r2["result"][0]["id"], r["result"][0]["id"]);
    assert_eq!(
        code(&t.get("/rest/v1/activities.json?activityTypeIds=13").await),
        "1003"
    );
}

#[tokio::test]
async fn lists_programs_and_usage() {
    let t = T::new(config()).await;
    let add = t
        .post(
            "/rest/v1/lists/1002/leads.json",
            json!({"input": [{"id": 4}, {"id": 999999}]}),
        )
        .await;
    assert_eq!(add["result"][0]["status"], "added");
    assert_eq!(add["result"][1]["reasons"][0]["code"], "1004");
    let member = t
        .get("/rest/v1/lists/1002/leads/ismember.json?id=4,5")
        .await;
    assert_eq!(member["result"][0]["status"], "memberof");
    assert_eq!(member["result"][1]["status"], "notmemberof");
    let removed: Value = t
        .http
        .delete(t.url("/rest/v1/lists/1002/leads.json?id=4"))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(removed["result"][0]["status"], "removed");
    let types: Vec<i64> = t
        .sim
        .activities()
        .iter()
        .map(|a| a["activityTypeId"].as_i64().unwrap())
        .collect();
    assert!(types.contains(&24) && types.contains(&25));
    let programs = t.get("/rest/asset/v1/programs.json?maxReturn=200").await;
    assert_eq!(programs["result"].as_array().unwrap().len(), 2);
    assert!(
        programs["result"][0]["createdAt"]
            .as_str()
            .unwrap()
            .ends_with("Z+0000")
    );
    let none = t.get("/rest/asset/v1/programs.json?offset=10").await;
    assert_eq!(
        none["warnings"][0],
        "No assets found for the given search criteria."
    );
    let members = t
        .get("/rest/v1/programs/1107/members.json?filterType=leadId&filterValues=4,5")
        .await;
    assert_eq!(members["result"].as_array().unwrap().len(), 1);
    let usage = t.get("/rest/v1/stats/usage.json").await;
    assert_eq!(
        usage["result"][0]["total"].as_u64().unwrap(),
        t.sim.counters().calls_today - 1
    );
    let types = t.get("/rest/v1/activities/types.json").await;
    let new_lead = types["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == 12)
        .unwrap();
    assert!(
        new_lead.get("primaryAttribute").is_none(),
        "New Lead has no primary attribute, as in reality"
    );
    let cos = t.get("/rest/v1/customobjects.json").await;
    assert_eq!(cos["result"][0]["name"], "car_c");
    let describe = t.get("/rest/v1/customobjects/car_c/describe.json").await;
    assert_eq!(describe["result"][0]["idField"], "marketoGUID");
}

#[tokio::test]
async fn native_crm_sync_blocks_crm_object_writes_with_1018() {
    let t = T::new(SimConfig {
        native_crm_sync: true,
        ..config()
    })
    .await;
    let r = t
        .post(
            "/rest/v1/companies.json",
            json!({"input": [{"externalCompanyId": "X1", "company": "X"}]}),
        )
        .await;
    assert_eq!(code(&r), "1018");
    assert_eq!(
        code(
            &t.get("/rest/v1/opportunities/roles.json?filterType=leadId&filterValues=1")
                .await
        ),
        "1018"
    );
    let read = t
        .get("/rest/v1/companies.json?filterType=externalCompanyId&filterValues=EC-000001")
        .await;
    assert_eq!(read["success"], true);
    let car = t
        .post(
            "/rest/v1/customobjects/car_c.json",
            json!({"input": [{"vin": "V1"}]}),
        )
        .await;
    assert_eq!(car["success"], true);
}

#[tokio::test]
async fn deleted_leads_are_pruned_after_14_days_and_changes_name_the_user() {
    let t = T::new(config()).await;
    let tok = t
        .get("/rest/v1/activities/pagingtoken.json?sinceDatetime=2024-03-05T00:00:00Z")
        .await;
    let token = tok["nextPageToken"].as_str().unwrap().to_string();
    assert!(t.sim.delete_lead(11));
    t.post("/rest/v1/leads.json", json!({"action": "updateOnly", "lookupField": "id", "input": [{"id": 12, "title": "Via API"}]})).await;
    t.sim
        .update_lead(13, obj(json!({"title": "Via UI"})))
        .unwrap();
    let acts = t.sim.activities();
    let user_of = |lead: i64| {
        let a = acts
            .iter()
            .find(|a| a["activityTypeId"] == 13 && a["leadId"] == lead)
            .unwrap();
        a["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "Modifying User")
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(user_of(12), "api-user@sim.example.com");
    assert_eq!(user_of(13), "marketer@sim.example.com");
    let seen = t
        .get(&format!(
            "/rest/v1/activities/deletedleads.json?nextPageToken={token}"
        ))
        .await;
    assert_eq!(seen["result"].as_array().unwrap().len(), 1);
    t.sim.advance_clock(Duration::from_secs(15 * 86_400));
    let mut t = t;
    t.token = t.fetch_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let pruned = t
        .get(&format!(
            "/rest/v1/activities/deletedleads.json?nextPageToken={token}"
        ))
        .await;
    assert!(pruned.get("result").is_none(), "{pruned}");
}

#[tokio::test(start_paused = true)]
async fn paused_tokio_time_drives_sim_time() {
    let t = T::new(config()).await;
    assert_eq!(t.get("/rest/v1/leads/describe.json").await["success"], true);
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(code(&t.get("/rest/v1/leads/describe.json").await), "602");
    assert_eq!(t.sim.now().to_rfc3339().get(..16), Some("2024-03-05T13:00"));
}

#[tokio::test]
async fn custom_object_export_follows_the_same_lifecycle() {
    let t = T::new(SimConfig {
        export_delay: Duration::from_secs(0),
        ..config()
    })
    .await;
    t.post(
        "/rest/v1/customobjects/car_c.json",
        json!({"input": [{"vin": "VIN-NEW", "make": "Fiat", "leadId": 5}]}),
    )
    .await;
    let filter =
        json!({"updatedAt": {"startAt": "2024-03-01T00:00:00Z", "endAt": "2024-03-06T00:00:00Z"}});
    let r = t
        .post(
            "/bulk/v1/customobjects/car_c/export/create.json",
            json!({"fields": ["vin", "make", "color"], "filter": filter}),
        )
        .await;
    let id = r["result"][0]["exportId"].as_str().unwrap().to_string();
    let q = t
        .post(
            &format!("/bulk/v1/customobjects/car_c/export/{id}/enqueue.json"),
            json!({}),
        )
        .await;
    assert_eq!(q["result"][0]["status"], "Queued");
    let status = t
        .get(&format!(
            "/bulk/v1/customobjects/car_c/export/{id}/status.json"
        ))
        .await;
    assert_eq!(status["result"][0]["status"], "Completed");
    let file = t
        .http
        .get(t.url(&format!(
            "/bulk/v1/customobjects/car_c/export/{id}/file.json"
        )))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = file.lines();
    assert_eq!(lines.next(), Some("vin,make,color"));
    assert!(lines.any(|l| l == "VIN-NEW,Fiat,null"), "{file}");
    // The same export id is not visible under the leads path.
    let other = t
        .get(&format!("/bulk/v1/leads/export/{id}/status.json"))
        .await;
    assert_eq!(code(&other), "1003");
    let bad = t
        .post(
            "/bulk/v1/customobjects/boat_c/export/create.json",
            json!({"fields": ["vin"], "filter": {}}),
        )
        .await;
    assert_eq!(code(&bad), "1003");
}

async fn outcomes(profile: &str) -> Vec<String> {
    let t = T::new(config()).await;
    t.sim.set_faults(profile.parse().unwrap());
    let mut out = Vec::new();
    for _ in 0..60 {
        let sent = t
            .http
            .get(t.url("/rest/v1/leads/describe.json"))
            .bearer_auth(&t.token)
            .send()
            .await;
        let outcome = match sent {
            Err(_) => "drop".to_string(),
            Ok(resp) if resp.status() != 200 => resp.status().as_u16().to_string(),
            Ok(resp) => match resp.json::<Value>().await {
                Ok(v) if v["success"] == true => "ok".to_string(),
                Ok(v) => code(&v).to_string(),
                Err(_) => "drop".to_string(),
            },
        };
        out.push(outcome);
    }
    out
}

#[tokio::test]
async fn faults_are_seeded_and_mixed() {
    let profile = "route=*,kind=throttle,rate=0.2;route=leads,kind=5xx,rate=0.1;route=leads,kind=drop,rate=0.1;route=companies,kind=timeout,rate=1";
    let a = outcomes(profile).await;
    let b = outcomes(profile).await;
    assert_eq!(a, b, "the same seed gives the same faults");
    for kind in ["ok", "606", "502", "drop"] {
        assert!(a.iter().any(|o| o == kind), "no {kind} in {a:?}");
    }
    assert!(
        !a.iter().any(|o| o == "604"),
        "companies rules do not touch leads"
    );
}

#[tokio::test]
async fn tunnelled_gets_run_the_get_operation_wherever_method_get_is_sent() {
    let t = T::new(config()).await;
    let form = |path: &str, body: &'static str| {
        t.http
            .post(t.url(path))
            .bearer_auth(&t.token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    // `_method=GET` in the form body (as marketorestpython sends it) queries, never syncs.
    let before = t.sim.leads().len();
    let found: Value = form(
        "/rest/v1/leads.json",
        "_method=GET&filterType=id&filterValues=3,6&fields=id",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(found["result"].as_array().unwrap().len(), 2, "{found}");
    assert_eq!(t.sim.leads().len(), before);
    // A tunnelled GET on the list members path reads members; it does not add leads.
    let members: Value = form("/rest/v1/lists/1001/leads.json?_method=GET", "fields=email")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        members["result"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("status").is_none()),
        "{members}"
    );
    assert!(!members["result"].as_array().unwrap().is_empty());
    // Is-member with a JSON body through `POST ?_method=GET`.
    let check = t
        .post(
            "/rest/v1/lists/1001/leads/ismember.json?_method=GET",
            json!({"input": [{"id": 3}, {"id": 4}]}),
        )
        .await;
    assert_eq!(check["result"][0]["status"], "memberof", "{check}");
    assert_eq!(check["result"][1]["status"], "notmemberof", "{check}");
    // The legacy `/rest/v1/list/{id}/leads.json` path (spec getLeadsByListIdUsingGET).
    let legacy = t.get("/rest/v1/list/1001/leads.json?fields=email").await;
    assert_eq!(legacy["result"], members["result"]);
    let custom = t.get("/rest/v1/activities/external/types.json").await;
    let by_id: BTreeMap<i64, &str> = custom["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_i64().unwrap(), t["apiName"].as_str().unwrap()))
        .collect();
    assert_eq!(
        by_id,
        BTreeMap::from([(100001, "watchedDemo_c"), (100002, "chatConversation_c")]),
        "{custom}"
    );
    let partitions = t.get("/rest/v1/leads/partitions.json").await;
    assert_eq!(partitions["result"][0]["name"], "Default", "{partitions}");
    // `/rest/../bulk/...` (node-marketo-rest) resolves like a front end would.
    let jobs = t.get("/rest/../bulk/v1/leads/export.json").await;
    assert_eq!(jobs["success"], true, "{jobs}");
}

#[tokio::test]
async fn program_member_status_progresses_and_skips_with_1037() {
    let t = T::new(config()).await;
    let set = |status: &str, ids: Value| {
        t.post(
            "/rest/v1/programs/1107/members/status.json",
            json!({"statusName": status, "input": ids}),
        )
    };
    let r = set(
        "Registered",
        json!([{"leadId": 4}, {"leadId": 5}, {"leadId": 999_999}]),
    )
    .await;
    assert_eq!(r["result"][0]["status"], "updated", "{r}");
    assert_eq!(r["result"][1]["status"], "updated", "{r}");
    assert_eq!(r["result"][2]["reasons"][0]["code"], "1004", "{r}");
    let r = set("Member", json!([{"leadId": 4}])).await;
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1037", "{r}");
    let r = set("No Such Status", json!([{"leadId": 4}])).await;
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1025", "{r}");
    let members = t
        .get("/rest/v1/programs/1107/members.json?filterType=leadId&filterValues=4,5")
        .await;
    let statuses: Vec<&str> = members["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["statusName"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Registered", "Registered"], "{members}");
    assert!(
        t.sim
            .activities()
            .iter()
            .any(|a| a["activityTypeId"] == 104 && a["leadId"] == 5),
        "no Change Status in Progression activity"
    );
    let legacy = t
        .get("/rest/v1/leads/programs/1107.json?fields=id,email&batchSize=300")
        .await;
    let lead4 = legacy["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == 4)
        .unwrap_or_else(|| panic!("{legacy}"));
    assert_eq!(lead4["membership"]["progressionStatus"], "Registered");
    assert!(lead4["email"].is_string(), "{lead4}");
    let r = t
        .post(
            "/rest/v1/programs/9999/members/status.json",
            json!({"statusName": "Registered", "input": [{"leadId": 4}]}),
        )
        .await;
    assert_eq!(code(&r), "1013", "{r}");
}
