//! The HubSpot simulator's behaviour, through HTTP as any HubSpot client sees it: token auth,
//! paging, search semantics and its 10,000-result cap, batch partial failures (207), upsert by a
//! unique property, merges, archived records, associations with labels, properties and schemas,
//! owners, rate limits with their headers, and faults. The last test lists which operations of
//! HubSpot's public OpenAPI specs the simulator serves.

use std::time::Duration;

use marketo_sync::sim::FaultProfile;
use marketo_sync::sim::hubspot::model::parse_ts;
use marketo_sync::sim::hubspot::server::{ROUTES, find};
use marketo_sync::sim::hubspot::{HubSpotConfig, HubSpotHandle, HubSpotSim, RateLimits};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

struct Hs {
    sim: HubSpotHandle,
    http: reqwest::Client,
    token: String,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Hs {
    /// A portal with `contacts` generated contacts and limits no test reaches.
    async fn start(contacts: usize) -> Self {
        Self::with(HubSpotConfig {
            contacts,
            limits: RateLimits {
                per_ten_seconds: 1_000_000,
                daily: 10_000_000,
                search_per_second: 1_000_000,
                ..RateLimits::default()
            },
            ..HubSpotConfig::default()
        })
        .await
    }

    /// A portal with a manual clock starting 2024-06-03T09:00:00Z.
    async fn with(config: HubSpotConfig) -> Self {
        let config = HubSpotConfig {
            start: parse_ts("2024-06-03T09:00:00Z"),
            manual_clock: true,
            ..config
        };
        let sim = HubSpotSim::start(config).await.unwrap();
        let token = sim.token().expose_secret().to_string();
        Self {
            sim,
            http: reqwest::Client::new(),
            token,
        }
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.sim.base_url());
        let mut request = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call_as(Some(&self.token.clone()), method, path, body)
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body)).await
    }

    fn create(&self, object_type: &str, props: Value) -> u64 {
        self.sim
            .create(object_type, props.as_object().cloned().unwrap_or_default())
            .unwrap()
    }
}

fn header(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn ids(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn calls_without_the_token_get_401_invalid_authentication_and_do_not_count() {
    let hs = Hs::start(3).await;
    let missing = hs
        .call_as(None, "GET", "/crm/v3/objects/contacts", None)
        .await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["category"], "INVALID_AUTHENTICATION");
    assert_eq!(missing.body["status"], "error");
    assert!(
        missing.body["correlationId"]
            .as_str()
            .is_some_and(|c| c.len() == 36)
    );
    let wrong = hs
        .call_as(
            Some("pat-na1-wrong"),
            "GET",
            "/crm/v3/objects/contacts",
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(hs.sim.counted_calls(), 0);
    assert!(
        !hs.sim
            .request_log()
            .iter()
            .any(|e| e.query.contains("pat-na1"))
    );
    let ok = hs.get("/crm/v3/objects/contacts").await;
    assert_eq!(ok.status, 200);
    assert_eq!(hs.sim.counted_calls(), 1);
}

#[tokio::test]
async fn lists_page_with_after_and_refuse_limits_over_100() {
    let hs = Hs::start(25).await;
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let query = if after.is_empty() {
            String::new()
        } else {
            format!("&after={after}")
        };
        let page = hs
            .get(&format!("/crm/v3/objects/contacts?limit=10{query}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages += 1;
        seen.extend(ids(&page.body));
        match page.body["paging"]["next"]["after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "no record twice");
    let too_many = hs.get("/crm/v3/objects/contacts?limit=101").await;
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.body["category"], "VALIDATION_ERROR");
    // Named properties: unset ones read null, unknown ones are left out.
    let one = hs
        .get(&format!(
            "/crm/v3/objects/contacts/{}?properties=email,phone,nonesuch",
            seen[0]
        ))
        .await;
    let props = one.body["properties"].as_object().unwrap();
    assert!(props["email"].as_str().is_some_and(|e| e.contains('@')));
    assert_eq!(props["phone"], Value::Null);
    assert!(!props.contains_key("nonesuch"));
    // Default properties when none are named.
    let plain = hs
        .get(&format!("/crm/v3/objects/contacts/{}", seen[0]))
        .await;
    for name in [
        "email",
        "firstname",
        "lastname",
        "createdate",
        "lastmodifieddate",
        "hs_object_id",
    ] {
        assert!(plain.body["properties"].get(name).is_some(), "{name}");
    }
    let missing = hs.get("/crm/v3/objects/contacts/999999999").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["category"], "OBJECT_NOT_FOUND");
}

#[tokio::test]
async fn search_applies_operators_sorts_and_pages() {
    let hs = Hs::start(0).await;
    let a = hs.create(
        "contacts",
        json!({"email": "a@x.io", "firstname": "Ann", "numemployees": "5", "city": "Lyon"}),
    );
    hs.sim.advance_clock(Duration::from_secs(60));
    let b = hs.create(
        "contacts",
        json!({"email": "b@x.io", "firstname": "Bob", "numemployees": "50"}),
    );
    hs.sim.advance_clock(Duration::from_secs(60));
    let c = hs.create(
        "contacts",
        json!({"email": "c@x.io", "firstname": "Cy", "numemployees": "500", "city": "Berlin"}),
    );
    let search = |filters: Value| json!({"filterGroups": [{"filters": filters}], "properties": ["email"], "limit": 10});
    let run = |body: Value| {
        let hs = &hs;
        async move {
            let answer = hs.post("/crm/v3/objects/contacts/search", body).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let mut found: Vec<u64> = ids(&answer.body)
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            found.sort_unstable();
            (found, answer.body)
        }
    };
    let (eq, body) = run(search(
        json!([{"propertyName": "email", "operator": "EQ", "value": "B@X.IO"}]),
    ))
    .await;
    assert_eq!(eq, [b], "EQ on strings ignores case");
    assert_eq!(body["total"], 1);
    assert_eq!(body["results"][0]["properties"]["email"], "b@x.io");
    let (neq, _) = run(search(
        json!([{"propertyName": "email", "operator": "NEQ", "value": "b@x.io"}]),
    ))
    .await;
    assert_eq!(neq, [a, c]);
    let (gt, _) = run(search(
        json!([{"propertyName": "numemployees", "operator": "GT", "value": "5"}]),
    ))
    .await;
    assert_eq!(gt, [b, c], "numbers compare as numbers");
    let (gte, _) = run(search(
        json!([{"propertyName": "numemployees", "operator": "GTE", "value": "50"}]),
    ))
    .await;
    assert_eq!(gte, [b, c]);
    let (lt, _) = run(search(
        json!([{"propertyName": "numemployees", "operator": "LT", "value": "50"}]),
    ))
    .await;
    assert_eq!(lt, [a]);
    let (lte, _) = run(search(
        json!([{"propertyName": "numemployees", "operator": "LTE", "value": "50"}]),
    ))
    .await;
    assert_eq!(lte, [a, b]);
    let start = parse_ts("2024-06-03T09:00:00Z").unwrap();
    let (between, _) = run(search(
        json!([{"propertyName": "lastmodifieddate", "operator": "BETWEEN",
        "value": (start + chrono::Duration::seconds(30)).timestamp_millis().to_string(),
        "highValue": (start + chrono::Duration::seconds(90)).to_rfc3339()}]),
    ))
    .await;
    assert_eq!(between, [b], "datetimes take epoch millis or ISO");
    let (gt_time, _) = run(search(
        json!([{"propertyName": "hs_lastmodifieddate", "operator": "GT",
        "value": (start + chrono::Duration::seconds(30)).timestamp_millis().to_string()}]),
    ))
    .await;
    assert_eq!(gt_time, [b, c]);
    let (within, _) = run(search(
        json!([{"propertyName": "email", "operator": "IN", "values": ["a@x.io", "c@x.io"]}]),
    ))
    .await;
    assert_eq!(within, [a, c]);
    let (has, _) = run(search(
        json!([{"propertyName": "city", "operator": "HAS_PROPERTY"}]),
    ))
    .await;
    assert_eq!(has, [a, c]);
    let (hasnt, _) = run(search(
        json!([{"propertyName": "city", "operator": "NOT_HAS_PROPERTY"}]),
    ))
    .await;
    assert_eq!(hasnt, [b]);
    // Groups are ORed, filters in a group ANDed.
    let ored = json!({"filterGroups": [
        {"filters": [{"propertyName": "city", "operator": "EQ", "value": "Lyon"}, {"propertyName": "numemployees", "operator": "EQ", "value": "5"}]},
        {"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "Cy"}]}]});
    assert_eq!(run(ored).await.0, [a, c]);
    // Sorts and paging by `after`.
    let sorted = hs
        .post("/crm/v3/objects/contacts/search", json!({"sorts": [{"propertyName": "numemployees", "direction": "DESCENDING"}], "limit": 2}))
        .await;
    assert_eq!(ids(&sorted.body), [c.to_string(), b.to_string()]);
    assert_eq!(sorted.body["paging"]["next"]["after"], "2");
    let rest = hs
        .post(
            "/crm/v3/objects/contacts/search",
            json!({"sorts": ["-numemployees"], "limit": 2, "after": "2"}),
        )
        .await;
    assert_eq!(ids(&rest.body), [a.to_string()]);
    assert!(rest.body.get("paging").is_none());
    // Refusals: a limit over 200, an unknown property, too many filters in a group.
    let big = hs
        .post("/crm/v3/objects/contacts/search", json!({"limit": 201}))
        .await;
    assert_eq!(
        (big.status, big.body["category"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    let unknown = hs
        .post(
            "/crm/v3/objects/contacts/search",
            search(json!([{"propertyName": "nope", "operator": "EQ", "value": "1"}])),
        )
        .await;
    assert_eq!(unknown.status, 400);
    let seven: Vec<Value> = (0..7)
        .map(|_| json!({"propertyName": "email", "operator": "HAS_PROPERTY"}))
        .collect();
    let crowded = hs
        .post(
            "/crm/v3/objects/contacts/search",
            search(Value::Array(seven)),
        )
        .await;
    assert_eq!(crowded.status, 400);
}

#[tokio::test]
async fn search_stops_at_10000_results_as_hubspot_does() {
    let hs = Hs::start(10_050).await;
    let body = |after: &str| json!({"limit": 200, "after": after, "properties": ["email"]});
    let last_page = hs
        .post("/crm/v3/objects/contacts/search", body("9800"))
        .await;
    assert_eq!(last_page.status, 200);
    assert_eq!(last_page.body["total"], 10_050, "total counts every match");
    assert_eq!(last_page.body["results"].as_array().unwrap().len(), 200);
    // The answer still points past the cap, and following it is refused.
    assert_eq!(last_page.body["paging"]["next"]["after"], "10000");
    let past = hs
        .post("/crm/v3/objects/contacts/search", body("10000"))
        .await;
    assert_eq!(past.status, 400);
    assert_eq!(past.body["category"], "VALIDATION_ERROR");
    let straddle = hs
        .post("/crm/v3/objects/contacts/search", body("9900"))
        .await;
    assert_eq!(
        straddle.body["results"].as_array().unwrap().len(),
        100,
        "nothing past the 10,000th"
    );
}

#[tokio::test]
async fn batch_writes_report_per_record_failures_in_a_207() {
    let hs = Hs::start(0).await;
    let existing = hs.create("contacts", json!({"email": "taken@x.io"}));
    let answer = hs
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": [
                {"properties": {"email": "new@x.io", "lifecyclestage": "lead"}, "objectWriteTraceId": "t1"},
                {"properties": {"email": "bad@x.io", "lifecyclestage": "boss"}, "objectWriteTraceId": "t2"},
                {"properties": {"email": "odd@x.io", "shoe_size": "42"}, "objectWriteTraceId": "t3"},
                {"properties": {"email": "TAKEN@x.io"}, "objectWriteTraceId": "t4"},
                {"properties": {"email": "late@x.io", "createdate": "2020-01-01"}, "objectWriteTraceId": "t5"}
            ]}),
        )
        .await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(answer.body["status"], "COMPLETE");
    assert_eq!(answer.body["numErrors"], 4);
    assert_eq!(answer.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(answer.body["results"][0]["properties"]["email"], "new@x.io");
    let errors = answer.body["errors"].as_array().unwrap();
    let by_trace = |t: &str| {
        errors
            .iter()
            .find(|e| e["context"]["objectWriteTraceId"][0] == t)
            .unwrap_or_else(|| panic!("no error for {t}: {errors:?}"))
            .clone()
    };
    assert_eq!(by_trace("t2")["category"], "VALIDATION_ERROR");
    assert_eq!(by_trace("t2")["errors"][0]["code"], "INVALID_OPTION");
    assert_eq!(by_trace("t3")["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    assert_eq!(by_trace("t4")["category"], "CONFLICT");
    assert_eq!(
        by_trace("t4")["context"]["existingId"][0],
        existing.to_string()
    );
    assert_eq!(by_trace("t5")["errors"][0]["code"], "READ_ONLY_VALUE");
    // All good: 201, no errors member.
    let clean = hs
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": [{"properties": {"email": "z@x.io"}}]}),
        )
        .await;
    assert_eq!(clean.status, 201);
    assert!(clean.body.get("errors").is_none());
    // Over 100 inputs: the whole call is refused.
    let inputs: Vec<Value> = (0..101)
        .map(|i| json!({"properties": {"email": format!("n{i}@x.io")}}))
        .collect();
    let over = hs
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": inputs}),
        )
        .await;
    assert_eq!(over.status, 400);
    assert_eq!(over.body["category"], "VALIDATION_ERROR");
    // Update: a missing id is an OBJECT_NOT_FOUND naming it; the other input is applied.
    let update = hs
        .post(
            "/crm/v3/objects/contacts/batch/update",
            json!({"inputs": [{"id": existing.to_string(), "properties": {"city": "Lyon"}},
                               {"id": "424242", "properties": {"city": "Oslo"}}]}),
        )
        .await;
    assert_eq!(update.status, 207);
    assert_eq!(update.body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(update.body["errors"][0]["context"]["ids"][0], "424242");
    assert_eq!(
        hs.sim.record("contacts", existing).unwrap()["properties"]["city"],
        "Lyon"
    );
    let dup = hs
        .post(
            "/crm/v3/objects/contacts/batch/update",
            json!({"inputs": [{"id": existing.to_string(), "properties": {}}, {"id": existing.to_string(), "properties": {}}]}),
        )
        .await;
    assert_eq!(dup.status, 400);
    // Read: found records plus one error listing the missing ids.
    let read = hs
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": existing.to_string()}, {"id": "1"}, {"id": "2"}], "properties": ["city"]}),
        )
        .await;
    assert_eq!(read.status, 207);
    assert_eq!(read.body["results"][0]["properties"]["city"], "Lyon");
    assert_eq!(read.body["errors"][0]["context"]["ids"], json!(["1", "2"]));
    let by_email = hs
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": "taken@x.io"}], "idProperty": "email"}),
        )
        .await;
    assert_eq!(by_email.status, 200);
    assert_eq!(ids(&by_email.body), [existing.to_string()]);
}

#[tokio::test]
async fn upsert_keys_on_a_unique_value_property() {
    let hs = Hs::start(0).await;
    let created = hs
        .post(
            "/crm/v3/properties/contacts",
            json!({"name": "marketo_lead_id", "label": "Marketo lead id", "type": "string",
                   "fieldType": "text", "groupName": "contactinformation", "hasUniqueValue": true}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["hasUniqueValue"], true);
    let upsert = |inputs: Value| {
        hs.post(
            "/crm/v3/objects/contacts/batch/upsert",
            json!({"inputs": inputs}),
        )
    };
    let first = upsert(json!([
        {"id": "1001", "idProperty": "marketo_lead_id", "properties": {"email": "m1@x.io", "firstname": "Mo"}},
        {"id": "1002", "idProperty": "marketo_lead_id", "properties": {"email": "m2@x.io"}}
    ]))
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let results = first.body["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["new"] == true));
    // As HubSpot does, each result carries the properties its input set and the idProperty's
    // value, so that a client maps results to inputs without reading them again.
    let mut keys: Vec<&str> = results
        .iter()
        .map(|r| r["properties"]["marketo_lead_id"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["1001", "1002"], "{}", first.body);
    assert!(
        results
            .iter()
            .any(|r| r["properties"]["firstname"] == "Mo" && r["properties"]["email"] == "m1@x.io"),
        "{}",
        first.body
    );
    let id_1001 = results
        .iter()
        .find(|r| {
            hs.sim
                .record("contacts", r["id"].as_str().unwrap().parse().unwrap())
                .unwrap()["properties"]["marketo_lead_id"]
                == "1001"
        })
        .unwrap()["id"]
        .clone();
    let second = upsert(json!([{"id": "1001", "idProperty": "marketo_lead_id", "properties": {"firstname": "Moe"}}])).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["results"][0]["new"], false);
    assert_eq!(second.body["results"][0]["id"], id_1001);
    assert_eq!(hs.sim.ids("contacts").len(), 2);
    // A record's email is unique too: taking another's is a CONFLICT for that input only.
    let clash = upsert(json!([
        {"id": "1002", "idProperty": "marketo_lead_id", "properties": {"email": "m1@x.io"}},
        {"id": "1003", "idProperty": "marketo_lead_id", "properties": {"email": "m3@x.io"}}
    ]))
    .await;
    assert_eq!(clash.status, 207);
    assert_eq!(clash.body["errors"][0]["category"], "CONFLICT");
    assert_eq!(clash.body["errors"][0]["context"]["ids"][0], "1002");
    assert_eq!(clash.body["results"][0]["new"], true);
    // Upserting by a property without unique values is refused as a whole.
    let not_unique =
        upsert(json!([{"id": "Mo", "idProperty": "firstname", "properties": {}}])).await;
    assert_eq!(not_unique.status, 400);
    assert_eq!(not_unique.body["category"], "VALIDATION_ERROR");
    // The unique value also finds the record on a single read.
    let by_key = hs
        .get("/crm/v3/objects/contacts/1001?idProperty=marketo_lead_id&properties=firstname")
        .await;
    assert_eq!(by_key.body["properties"]["firstname"], "Moe");
}

#[tokio::test]
async fn a_merged_away_id_answers_with_the_survivor() {
    let hs = Hs::start(0).await;
    let keep = hs.create("contacts", json!({"email": "keep@x.io"}));
    let gone = hs.create("contacts", json!({"email": "gone@x.io", "city": "Lyon"}));
    hs.sim.advance_clock(Duration::from_secs(120));
    let merged = hs
        .post(
            "/crm/v3/objects/contacts/merge",
            json!({"primaryObjectId": keep.to_string(), "objectIdToMerge": gone.to_string()}),
        )
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(merged.body["id"], keep.to_string());
    let read = hs
        .get(&format!("/crm/v3/objects/contacts/{gone}?properties=hs_merged_object_ids,city,email,lastmodifieddate"))
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], keep.to_string());
    assert_eq!(
        read.body["properties"]["hs_merged_object_ids"],
        gone.to_string()
    );
    assert_eq!(
        read.body["properties"]["city"], "Lyon",
        "the survivor takes values it lacked"
    );
    assert_eq!(read.body["properties"]["email"], "keep@x.io");
    assert_eq!(
        read.body["properties"]["lastmodifieddate"],
        "2024-06-03T09:02:00.000Z"
    );
    let batch = hs
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": gone.to_string()}]}),
        )
        .await;
    assert_eq!(ids(&batch.body), [keep.to_string()]);
    let listed = hs.get("/crm/v3/objects/contacts?limit=100").await;
    assert_eq!(ids(&listed.body), [keep.to_string()]);
    let again = hs
        .post(
            "/crm/v3/objects/contacts/merge",
            json!({"primaryObjectId": keep.to_string(), "objectIdToMerge": keep.to_string()}),
        )
        .await;
    assert_eq!(again.status, 400);
}

#[tokio::test]
async fn archived_records_show_only_with_archived_true_and_keep_their_modified_date() {
    let hs = Hs::start(0).await;
    let id = hs.create(
        "companies",
        json!({"name": "Acme", "domain": "acme.example"}),
    );
    let before =
        hs.sim.record("companies", id).unwrap()["properties"]["hs_lastmodifieddate"].clone();
    hs.sim.advance_clock(Duration::from_secs(300));
    let archived = hs
        .post(
            "/crm/v3/objects/companies/batch/archive",
            json!({"inputs": [{"id": id.to_string()}, {"id": "777"}]}),
        )
        .await;
    assert_eq!(archived.status, 204);
    assert_eq!(
        hs.get(&format!("/crm/v3/objects/companies/{id}"))
            .await
            .status,
        404
    );
    assert!(ids(&hs.get("/crm/v3/objects/companies").await.body).is_empty());
    let listed = hs
        .get("/crm/v3/objects/companies?archived=true&properties=hs_lastmodifieddate")
        .await;
    let rec = &listed.body["results"][0];
    assert_eq!(rec["id"], id.to_string());
    assert_eq!(rec["archived"], true);
    assert_eq!(rec["archivedAt"], "2024-06-03T09:05:00.000Z");
    assert_eq!(
        rec["properties"]["hs_lastmodifieddate"], before,
        "archiving does not bump last-modified"
    );
    let one = hs
        .get(&format!("/crm/v3/objects/companies/{id}?archived=true"))
        .await;
    assert_eq!(one.status, 200);
    let found = hs
        .post("/crm/v3/objects/companies/search", json!({"filterGroups": [{"filters": [{"propertyName": "name", "operator": "EQ", "value": "Acme"}]}]}))
        .await;
    assert_eq!(
        found.body["total"], 0,
        "search never returns archived records"
    );
}

#[tokio::test]
async fn last_modified_moves_on_real_changes_only() {
    let hs = Hs::start(0).await;
    let id = hs.create("deals", json!({"dealname": "D", "amount": "10"}));
    hs.sim.advance_clock(Duration::from_secs(30));
    let same = hs
        .call(
            "PATCH",
            &format!("/crm/v3/objects/deals/{id}"),
            Some(json!({"properties": {"amount": "10"}})),
        )
        .await;
    assert_eq!(
        same.body["properties"]["hs_lastmodifieddate"],
        "2024-06-03T09:00:00.000Z"
    );
    let changed = hs
        .call(
            "PATCH",
            &format!("/crm/v3/objects/deals/{id}"),
            Some(json!({"properties": {"amount": "11"}})),
        )
        .await;
    assert_eq!(
        changed.body["properties"]["hs_lastmodifieddate"],
        "2024-06-03T09:00:30.000Z"
    );
    assert_eq!(changed.body["updatedAt"], "2024-06-03T09:00:30.000Z");
}

#[tokio::test]
async fn associations_carry_labels_both_ways() {
    let hs = Hs::start(0).await;
    let deal = hs.create("deals", json!({"dealname": "Big"}));
    let contact = hs.create("contacts", json!({"email": "p@x.io"}));
    let other = hs.create("contacts", json!({"email": "q@x.io"}));
    let labels = hs.get("/crm/v4/associations/deals/contacts/labels").await;
    assert_eq!(labels.status, 200);
    let results = labels.body["results"].as_array().unwrap();
    assert!(
        results.iter().any(|l| l["typeId"] == 3
            && l["label"].is_null()
            && l["category"] == "HUBSPOT_DEFINED")
    );
    let champion = results
        .iter()
        .find(|l| l["label"] == "Champion")
        .expect("the generator's Champion label")
        .clone();
    assert_eq!(champion["category"], "USER_DEFINED");
    let put = hs
        .call(
            "PUT",
            &format!("/crm/v4/objects/deals/{deal}/associations/contacts/{contact}"),
            Some(json!([{"associationCategory": "USER_DEFINED", "associationTypeId": champion["typeId"]}])),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.body);
    assert_eq!(put.body["labels"], json!(["Champion"]));
    assert_eq!(put.body["fromObjectTypeId"], "0-3");
    let created = hs
        .post(
            "/crm/v4/associations/deals/contacts/batch/create",
            json!({"inputs": [
                {"from": {"id": deal.to_string()}, "to": {"id": other.to_string()}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}]},
                {"from": {"id": deal.to_string()}, "to": {"id": "999999"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}]}
            ]}),
        )
        .await;
    assert_eq!(created.status, 207, "{}", created.body);
    assert_eq!(created.body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    // Read from the contact's side: the inverse types, labelled.
    let from_contact = hs
        .get(&format!(
            "/crm/v4/objects/contacts/{contact}/associations/deals"
        ))
        .await;
    let item = &from_contact.body["results"][0];
    assert_eq!(item["toObjectId"], deal.to_string());
    let types = item["associationTypes"].as_array().unwrap();
    assert!(
        types
            .iter()
            .any(|t| t["typeId"] == 4 && t["label"].is_null())
    );
    assert!(
        types
            .iter()
            .any(|t| t["label"] == "Champion" && t["category"] == "USER_DEFINED")
    );
    // Batch read: associations of each id; an id without any is a NO_ASSOCIATIONS_FOUND error.
    let read = hs
        .post(
            "/crm/v4/associations/deals/contacts/batch/read",
            json!({"inputs": [{"id": deal.to_string()}, {"id": "31337"}]}),
        )
        .await;
    assert_eq!(read.status, 207);
    assert_eq!(read.body["results"][0]["to"].as_array().unwrap().len(), 2);
    assert_eq!(
        read.body["errors"][0]["subCategory"],
        "crm.associations.NO_ASSOCIATIONS_FOUND"
    );
    // Reading the object with its associations (v3).
    let with = hs
        .get(&format!(
            "/crm/v3/objects/deals/{deal}?associations=contacts"
        ))
        .await;
    let assoc = with.body["associations"]["contacts"]["results"]
        .as_array()
        .unwrap();
    assert!(
        assoc
            .iter()
            .any(|a| a["id"] == contact.to_string().as_str() && a["type"] == "champion")
    );
    assert!(
        assoc
            .iter()
            .any(|a| a["id"] == other.to_string().as_str() && a["type"] == "deal_to_contact")
    );
    // Removing the label only keeps the association; archiving the pair removes it.
    let unlabel = hs
        .post(
            "/crm/v4/associations/deals/contacts/batch/labels/archive",
            json!({"inputs": [{"from": {"id": deal.to_string()}, "to": {"id": contact.to_string()}, "types": [{"associationCategory": "USER_DEFINED", "associationTypeId": champion["typeId"]}]}]}),
        )
        .await;
    assert_eq!(unlabel.status, 204);
    let after_unlabel = hs
        .get(&format!(
            "/crm/v4/objects/deals/{deal}/associations/contacts"
        ))
        .await;
    assert_eq!(after_unlabel.body["results"].as_array().unwrap().len(), 2);
    let archive = hs
        .post(
            "/crm/v4/associations/deals/contacts/batch/archive",
            json!({"inputs": [{"from": {"id": deal.to_string()}, "to": [{"id": contact.to_string()}]}]}),
        )
        .await;
    assert_eq!(archive.status, 204);
    let left = hs
        .get(&format!(
            "/crm/v4/objects/deals/{deal}/associations/contacts"
        ))
        .await;
    assert_eq!(left.body["results"].as_array().unwrap().len(), 1);
    let back = hs
        .get(&format!(
            "/crm/v4/objects/contacts/{contact}/associations/deals"
        ))
        .await;
    assert!(
        back.body["results"].as_array().unwrap().is_empty(),
        "both directions go"
    );
}

#[tokio::test]
async fn properties_schemas_and_custom_objects() {
    let hs = Hs::start(20).await;
    let all = hs.get("/crm/v3/properties/contacts").await;
    let names: Vec<&str> = all.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"email") && names.contains(&"lifecyclestage"));
    let stage = hs.get("/crm/v3/properties/contacts/lifecyclestage").await;
    assert_eq!(stage.body["type"], "enumeration");
    assert!(
        stage.body["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["value"] == "customer")
    );
    let no_options = hs
        .post("/crm/v3/properties/contacts", json!({"name": "tier", "label": "Tier", "type": "enumeration", "fieldType": "select", "groupName": "g"}))
        .await;
    assert_eq!(no_options.status, 400);
    let made = hs
        .post("/crm/v3/properties/contacts", json!({"name": "shoe_size", "label": "Shoe size", "type": "number", "fieldType": "number", "groupName": "g"}))
        .await;
    assert_eq!(made.status, 201);
    let taken = hs
        .post("/crm/v3/properties/contacts", json!({"name": "shoe_size", "label": "Shoe size", "type": "number", "fieldType": "number", "groupName": "g"}))
        .await;
    assert_eq!(
        (taken.status, taken.body["category"].as_str()),
        (409, Some("CONFLICT"))
    );
    let id = hs.sim.ids("contacts")[0];
    let set = hs
        .call(
            "PATCH",
            &format!("/crm/v3/objects/contacts/{id}"),
            Some(json!({"properties": {"shoe_size": "44"}})),
        )
        .await;
    assert_eq!(set.status, 200);
    // An admin deletes the property: reads drop it, writes are refused, archived=true lists it.
    assert_eq!(
        hs.call("DELETE", "/crm/v3/properties/contacts/shoe_size", None)
            .await
            .status,
        204
    );
    assert_eq!(
        hs.get("/crm/v3/properties/contacts/shoe_size").await.status,
        404
    );
    let read = hs
        .get(&format!(
            "/crm/v3/objects/contacts/{id}?properties=shoe_size,email"
        ))
        .await;
    assert!(read.body["properties"].get("shoe_size").is_none());
    let write = hs
        .call(
            "PATCH",
            &format!("/crm/v3/objects/contacts/{id}"),
            Some(json!({"properties": {"shoe_size": "45"}})),
        )
        .await;
    assert_eq!(write.status, 400);
    assert_eq!(write.body["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    let archived = hs.get("/crm/v3/properties/contacts?archived=true").await;
    assert!(
        archived.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "shoe_size")
    );
    assert_eq!(
        hs.call("DELETE", "/crm/v3/properties/contacts/email", None)
            .await
            .status,
        400
    );
    // Custom objects: schemas, and objects by name, fully qualified name or type id.
    let schemas = hs.get("/crm/v3/schemas").await;
    let cars = &schemas.body["results"][0];
    assert_eq!(cars["name"], "cars");
    let type_id = cars["objectTypeId"].as_str().unwrap().to_string();
    assert!(type_id.starts_with("2-"));
    assert!(
        cars["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "vin" && p["hasUniqueValue"] == true)
    );
    let fqn = cars["fullyQualifiedName"].as_str().unwrap().to_string();
    for name in ["cars", type_id.as_str(), fqn.as_str()] {
        let listed = hs
            .get(&format!("/crm/v3/objects/{name}?properties=vin"))
            .await;
        assert_eq!(listed.status, 200, "{name}");
        assert_eq!(
            listed.body["results"].as_array().unwrap().len(),
            2,
            "{name}"
        );
    }
    let unknown = hs.get("/crm/v3/objects/spaceships").await;
    assert_eq!(
        (unknown.status, unknown.body["category"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
}

#[tokio::test]
async fn owners_page_by_after() {
    let hs = Hs::with(HubSpotConfig {
        owners: 7,
        contacts: 0,
        ..HubSpotConfig::default()
    })
    .await;
    let first = hs.get("/crm/v3/owners?limit=5").await;
    assert_eq!(first.body["results"].as_array().unwrap().len(), 5);
    let after = first.body["paging"]["next"]["after"]
        .as_str()
        .unwrap()
        .to_string();
    let second = hs
        .get(&format!("/crm/v3/owners/?limit=5&after={after}"))
        .await;
    assert_eq!(second.body["results"].as_array().unwrap().len(), 2);
    assert!(second.body.get("paging").is_none());
    let owner = &first.body["results"][0];
    assert!(owner["email"].as_str().is_some_and(|e| e.contains('@')));
    let one = hs
        .get(&format!("/crm/v3/owners/{}", owner["id"].as_str().unwrap()))
        .await;
    assert_eq!(one.body["id"], owner["id"]);
    let by_user = hs
        .get(&format!(
            "/crm/v3/owners/{}?idProperty=userId",
            owner["userId"]
        ))
        .await;
    assert_eq!(by_user.body["id"], owner["id"]);
}

#[tokio::test]
async fn limits_answer_429_with_hubspot_headers_and_bodies() {
    let hs = Hs::with(HubSpotConfig {
        contacts: 2,
        limits: RateLimits {
            per_ten_seconds: 3,
            daily: 1000,
            search_per_second: 2,
            ..RateLimits::default()
        },
        ..HubSpotConfig::default()
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let ok = hs.get("/crm/v3/objects/contacts").await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            header(&ok, "x-hubspot-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(header(&ok, "x-hubspot-ratelimit-max").as_deref(), Some("3"));
        assert_eq!(
            header(&ok, "x-hubspot-ratelimit-interval-milliseconds").as_deref(),
            Some("10000")
        );
        assert_eq!(
            header(&ok, "x-hubspot-ratelimit-daily").as_deref(),
            Some("1000")
        );
    }
    let refused = hs.get("/crm/v3/objects/contacts").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(refused.body["errorType"], "RATE_LIMIT");
    assert_eq!(
        header(&refused, "x-hubspot-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&refused, "x-hubspot-ratelimit-daily-remaining").as_deref(),
        Some("997")
    );
    // Search has its own, lower limit and no rate-limit headers.
    for _ in 0..2 {
        let found = hs.post("/crm/v3/objects/contacts/search", json!({})).await;
        assert_eq!(found.status, 200);
        assert!(header(&found, "x-hubspot-ratelimit-remaining").is_none());
    }
    let slow_down = hs.post("/crm/v3/objects/contacts/search", json!({})).await;
    assert_eq!(slow_down.status, 429);
    assert_eq!(slow_down.body["policyName"], "SECONDLY");
    hs.sim.advance_clock(Duration::from_secs(10));
    assert_eq!(hs.get("/crm/v3/objects/contacts").await.status, 200);
    hs.sim.spend_daily_limit();
    let daily = hs.get("/crm/v3/objects/contacts").await;
    assert_eq!(daily.status, 429);
    assert_eq!(daily.body["policyName"], "DAILY");
    assert_eq!(
        header(&daily, "x-hubspot-ratelimit-daily-remaining").as_deref(),
        Some("0")
    );
    // The daily count turns at midnight in the portal's time zone (New York).
    hs.sim.advance_clock(Duration::from_secs(24 * 3600));
    assert_eq!(hs.get("/crm/v3/objects/contacts").await.status, 200);
}

#[tokio::test]
async fn faults_hit_their_route_family_and_follow_the_seed() {
    let hs = Hs::start(2).await;
    hs.sim
        .set_faults("route=batch,kind=5xx,rate=1".parse().unwrap());
    let batch = hs
        .post("/crm/v3/objects/contacts/batch/read", json!({"inputs": []}))
        .await;
    assert_eq!(batch.status, 502);
    assert_eq!(hs.get("/crm/v3/objects/contacts").await.status, 200);
    hs.sim
        .set_faults("route=objects,kind=timeout,rate=1".parse().unwrap());
    assert_eq!(hs.get("/crm/v3/objects/contacts").await.status, 504);
    hs.sim
        .set_faults("route=*,kind=throttle,rate=1".parse().unwrap());
    let throttled = hs.get("/crm/v3/owners").await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.body["policyName"], "TEN_SECONDLY_ROLLING");
    hs.sim
        .set_faults("route=*,kind=drop,rate=1".parse().unwrap());
    let url = format!("{}/crm/v3/owners", hs.sim.base_url());
    let dropped = hs.http.get(url).bearer_auth(&hs.token).send().await;
    assert!(dropped.is_err() || dropped.unwrap().text().await.is_err());
    hs.sim.set_faults(FaultProfile::none());
    let log = hs.sim.request_log();
    assert!(
        log.iter()
            .any(|e| e.fault.as_deref() == Some("5xx") && !e.counted)
    );
    // The same seed gives the same faults.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let hs = Hs::with(HubSpotConfig {
            contacts: 1,
            seed: 9,
            faults: "route=objects,kind=5xx,rate=0.5".parse().unwrap(),
            ..HubSpotConfig::default()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(hs.get("/crm/v3/objects/contacts").await.status);
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&502) && runs[0].contains(&200),
        "{:?}",
        runs[0]
    );
}

#[tokio::test]
async fn the_admin_api_edits_data_as_a_hubspot_user() {
    let hs = Hs::start(0).await;
    let made = hs
        .post(
            "/__sim/objects/contacts",
            json!({"properties": {"email": "u@x.io"}}),
        )
        .await;
    assert_eq!(made.status, 200);
    let id = made.body["id"].as_str().unwrap().to_string();
    hs.post("/__sim/clock/advance", json!({"seconds": 60}))
        .await;
    let edit = hs
        .call(
            "PATCH",
            &format!("/__sim/objects/contacts/{id}"),
            Some(json!({"properties": {"firstname": "Uma"}})),
        )
        .await;
    assert_eq!(edit.body["changed"], true);
    let read = hs
        .get(&format!(
            "/crm/v3/objects/contacts/{id}?properties=firstname,lastmodifieddate"
        ))
        .await;
    assert_eq!(read.body["properties"]["firstname"], "Uma");
    assert_eq!(
        read.body["properties"]["lastmodifieddate"],
        "2024-06-03T09:01:00.000Z"
    );
    let bad = hs
        .post(
            "/__sim/objects/contacts",
            json!({"properties": {"email": "not-an-email"}}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["errors"][0]["code"], "INVALID_EMAIL");
    assert_eq!(
        hs.call("DELETE", &format!("/__sim/objects/contacts/{id}"), None)
            .await
            .body["archived"],
        true
    );
    assert_eq!(hs.sim.counted_calls(), 1, "admin calls are not counted");
}

/// The operations of HubSpot's public specs (`HubSpot/HubSpot-public-api-spec-collection`,
/// `PublicApiSpecs/CRM/...`) the simulator serves: spec file, `operationId`, method and path.
/// The spec files carry no licence, so they are named here rather than vendored.
const SPEC_OPERATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "get-/crm/v3/objects/contacts",
        "GET",
        "/crm/v3/objects/contacts",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts",
        "POST",
        "/crm/v3/objects/contacts",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "get-/crm/v3/objects/contacts/{contactId}",
        "GET",
        "/crm/v3/objects/contacts/{contactId}",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "patch-/crm/v3/objects/contacts/{contactId}",
        "PATCH",
        "/crm/v3/objects/contacts/{contactId}",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "delete-/crm/v3/objects/contacts/{contactId}",
        "DELETE",
        "/crm/v3/objects/contacts/{contactId}",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/merge",
        "POST",
        "/crm/v3/objects/contacts/merge",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/batch/read",
        "POST",
        "/crm/v3/objects/contacts/batch/read",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/batch/create",
        "POST",
        "/crm/v3/objects/contacts/batch/create",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/batch/update",
        "POST",
        "/crm/v3/objects/contacts/batch/update",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/batch/upsert",
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/batch/archive",
        "POST",
        "/crm/v3/objects/contacts/batch/archive",
    ),
    (
        "Contacts/Rollouts/424/v3/contacts.json",
        "post-/crm/v3/objects/contacts/search",
        "POST",
        "/crm/v3/objects/contacts/search",
    ),
    (
        "Companies/Rollouts/424/v3/companies.json",
        "get-/crm/v3/objects/companies",
        "GET",
        "/crm/v3/objects/companies",
    ),
    (
        "Companies/Rollouts/424/v3/companies.json",
        "post-/crm/v3/objects/companies/batch/upsert",
        "POST",
        "/crm/v3/objects/companies/batch/upsert",
    ),
    (
        "Companies/Rollouts/424/v3/companies.json",
        "post-/crm/v3/objects/companies/search",
        "POST",
        "/crm/v3/objects/companies/search",
    ),
    (
        "Companies/Rollouts/424/v3/companies.json",
        "post-/crm/v3/objects/companies/merge",
        "POST",
        "/crm/v3/objects/companies/merge",
    ),
    (
        "Deals/Rollouts/424/v3/deals.json",
        "get-/crm/v3/objects/deals/{dealId}",
        "GET",
        "/crm/v3/objects/deals/{dealId}",
    ),
    (
        "Deals/Rollouts/424/v3/deals.json",
        "post-/crm/v3/objects/deals/batch/upsert",
        "POST",
        "/crm/v3/objects/deals/batch/upsert",
    ),
    (
        "Deals/Rollouts/424/v3/deals.json",
        "post-/crm/v3/objects/deals/search",
        "POST",
        "/crm/v3/objects/deals/search",
    ),
    (
        "Properties/Rollouts/145899/v3/properties.json",
        "get-/crm/v3/properties/{objectType}_getAll",
        "GET",
        "/crm/v3/properties/{objectType}",
    ),
    (
        "Properties/Rollouts/145899/v3/properties.json",
        "post-/crm/v3/properties/{objectType}_create",
        "POST",
        "/crm/v3/properties/{objectType}",
    ),
    (
        "Properties/Rollouts/145899/v3/properties.json",
        "get-/crm/v3/properties/{objectType}/{propertyName}_getByName",
        "GET",
        "/crm/v3/properties/{objectType}/{propertyName}",
    ),
    (
        "Properties/Rollouts/145899/v3/properties.json",
        "delete-/crm/v3/properties/{objectType}/{propertyName}_archive",
        "DELETE",
        "/crm/v3/properties/{objectType}/{propertyName}",
    ),
    (
        "Schemas/Rollouts/145900/v3/schemas.json",
        "get-/crm/v3/schemas_getAll",
        "GET",
        "/crm/v3/schemas",
    ),
    (
        "Schemas/Rollouts/145900/v3/schemas.json",
        "get-/crm/v3/schemas/{objectType}_getById",
        "GET",
        "/crm/v3/schemas/{objectType}",
    ),
    (
        "Owners (hubspot-api-client crm.owners)",
        "get-/crm/v3/owners/_getPage",
        "GET",
        "/crm/v3/owners/",
    ),
    (
        "Owners (hubspot-api-client crm.owners)",
        "get-/crm/v3/owners/{ownerId}_getById",
        "GET",
        "/crm/v3/owners/{ownerId}",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "put-/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}_create",
        "PUT",
        "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "delete-/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}_archive",
        "DELETE",
        "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "put-/crm/v4/objects/{fromObjectType}/{fromObjectId}/associations/default/{toObjectType}/{toObjectId}_createDefault",
        "PUT",
        "/crm/v4/objects/{fromObjectType}/{fromObjectId}/associations/default/{toObjectType}/{toObjectId}",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "get-/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}_getPage",
        "GET",
        "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/create_create",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/create",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default_createDefault",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read_getPage",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/archive_archive",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/archive",
    ),
    (
        "Associations/Rollouts/130902/v4/associations.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive_archiveLabels",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive",
    ),
    (
        "Associations Schema/Rollouts/130902/v4/associationsSchema.json",
        "get-/crm/v4/associations/{fromObjectType}/{toObjectType}/labels_getAll",
        "GET",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/labels",
    ),
    (
        "Associations Schema/Rollouts/130902/v4/associationsSchema.json",
        "post-/crm/v4/associations/{fromObjectType}/{toObjectType}/labels_create",
        "POST",
        "/crm/v4/associations/{fromObjectType}/{toObjectType}/labels",
    ),
];

/// Fills a spec path template with sample values (`{...Type}` gets an object type).
fn sample(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            s if s.starts_with('{') && s.to_lowercase().contains("type") => "contacts".to_string(),
            s if s.starts_with('{') && s.contains("propertyName") => "email".to_string(),
            s if s.starts_with('{') => "101".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_listed_spec_operation_is_served_and_every_route_is_listed() {
    let mut served = std::collections::BTreeSet::new();
    for (file, operation, method, path) in SPEC_OPERATIONS {
        let (route, _) = find(method, &sample(path))
            .unwrap_or_else(|e| panic!("{operation} ({file}) is not served: {e:?}"));
        served.insert((route.method, route.path));
    }
    let unlisted: Vec<String> = ROUTES
        .iter()
        .filter(|r| !r.path.starts_with("/__sim/"))
        .filter(|r| !served.contains(&(r.method, r.path)))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        unlisted.is_empty(),
        "routes without a spec operation: {unlisted:?}"
    );
}

#[tokio::test]
async fn listed_operations_answer_with_their_documented_statuses() {
    let hs = Hs::start(5).await;
    let contact = hs.sim.ids("contacts")[0];
    let deal = hs.sim.ids("deals")[0];
    let created = hs
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "s@x.io"}}),
        )
        .await;
    assert_eq!(created.status, 201);
    let deleted = hs
        .call(
            "DELETE",
            &format!("/crm/v3/objects/contacts/{contact}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    let default = hs
        .call(
            "PUT",
            &format!(
                "/crm/v4/objects/deals/{deal}/associations/default/contacts/{}",
                hs.sim.ids("contacts")[0]
            ),
            None,
        )
        .await;
    assert_eq!(default.status, 200, "{}", default.body);
    assert_eq!(
        default.body["results"][0]["associationSpec"]["associationTypeId"],
        3
    );
    let label = hs
        .post(
            "/crm/v4/associations/deals/contacts/labels",
            json!({"label": "Sponsor", "name": "sponsor"}),
        )
        .await;
    assert_eq!(label.status, 200);
    assert_eq!(label.body["results"][0]["label"], "Sponsor");
    let schema = hs.get("/crm/v3/schemas/cars").await;
    assert_eq!(schema.body["name"], "cars");
    let unknown = hs.get("/crm/v3/nothing/here").await;
    assert_eq!(unknown.status, 404);
}
