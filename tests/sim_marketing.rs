//! The simulator's marketing routes over raw HTTP (issue 12 item 6): campaigns, push leads,
//! program members, static lists (Lead Database and Asset API), custom activity types and
//! records, read-only assets, `_method=DELETE`, dated program browse, New Lead activities of
//! generated leads and activity type metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use marketo_sync::sim::{SimConfig, SimHandle, Simulator};
use secrecy::SecretString;
use serde_json::{Value, json};

const LEADS: usize = 40;

fn config() -> SimConfig {
    SimConfig {
        seed: 7,
        leads: LEADS,
        client_id: "cid".into(),
        client_secret: SecretString::from("csecret"),
        export_delay: Duration::from_secs(60),
        start: Some("2024-03-05T12:00:00Z".parse().unwrap()),
        // The default: generated leads carry their New Lead activities, as on Marketo.
        ..SimConfig::default()
    }
}

struct T {
    sim: SimHandle,
    http: reqwest::Client,
    token: String,
}

impl T {
    async fn new() -> T {
        let sim = Simulator::start(config()).await.expect("simulator starts");
        let http = reqwest::Client::new();
        let url = format!(
            "{}/identity/oauth/token?grant_type=client_credentials&client_id=cid&client_secret=csecret",
            sim.base_url()
        );
        let token: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        let token = token["access_token"].as_str().unwrap().to_string();
        T { sim, http, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).bearer_auth(&self.token);
        r.send().await.unwrap().json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self.http.post(self.url(path)).bearer_auth(&self.token);
        r.json(&body).send().await.unwrap().json().await.unwrap()
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self.http.post(self.url(path)).bearer_auth(&self.token);
        r.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every activity of the given types since 2000 through the REST feed.
    async fn feed(&self, types: &str) -> Vec<Value> {
        let token = self
            .get("/rest/v1/activities/pagingtoken.json?sinceDatetime=2000-01-01T00:00:00Z")
            .await;
        let mut next = token["nextPageToken"].as_str().unwrap().to_string();
        let mut out = Vec::new();
        loop {
            let page = self
                .get(&format!(
                    "/rest/v1/activities.json?activityTypeIds={types}&nextPageToken={next}"
                ))
                .await;
            assert_eq!(page["success"], true, "{page}");
            out.extend(page["result"].as_array().cloned().unwrap_or_default());
            next = page["nextPageToken"].as_str().unwrap().to_string();
            if page["moreResult"] != true {
                return out;
            }
        }
    }
}

fn code(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or("")
}

fn reason(v: &Value) -> &str {
    v["reasons"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn post_method_delete_removes_list_members() {
    let t = T::new().await;
    assert_eq!(
        t.get("/rest/v1/lists/1001/leads/ismember.json?id=3").await["result"][0]["status"],
        "memberof"
    );
    let r = t
        .post(
            "/rest/v1/lists/1001/leads.json?_method=DELETE",
            json!({"input": [{"id": 3}]}),
        )
        .await;
    assert_eq!(r["result"][0]["status"], "removed", "{r}");
    assert_eq!(
        t.get("/rest/v1/lists/1001/leads/ismember.json?id=3").await["result"][0]["status"],
        "notmemberof"
    );
    // Form-encoded `_method=DELETE` with the ids in the form too.
    let r = t
        .form(
            "/rest/v1/lists/1001/leads.json",
            &[("_method", "DELETE"), ("id", "6")],
        )
        .await;
    assert_eq!(r["result"][0]["status"], "removed", "{r}");
    let removals = t.feed("25").await;
    assert_eq!(removals.len(), 2, "{removals:?}");
}

#[tokio::test]
async fn program_members_are_queried_by_updated_at_within_seven_days_and_channels_are_served() {
    let t = T::new().await;
    // The generated members (leads 4, 8, ...) joined at the start; lead 1 joins later.
    t.sim.advance_clock(Duration::from_secs(600));
    let set = t
        .post(
            "/rest/v1/leads/programs/1107/status.json",
            json!({"status": "Registered", "input": [{"id": 1}]}),
        )
        .await;
    assert_eq!(set["result"][0]["status"], "updated", "{set}");
    let window = "filterType=updatedAt&startAt=2024-03-05T12:05:00Z&endAt=2024-03-06T12:00:00Z";
    let changed = t
        .get(&format!("/rest/v1/programs/1107/members.json?{window}"))
        .await;
    let leads: Vec<i64> = changed["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["leadId"].as_i64().unwrap())
        .collect();
    assert_eq!(leads, [1], "{changed}");
    let m = &changed["result"][0];
    assert_eq!(m["statusName"], "Registered");
    assert_eq!(m["acquiredBy"], false);
    assert!(
        m["updatedAt"].is_string() && m["membershipDate"].is_string(),
        "{m}"
    );
    let too_long = t
        .get("/rest/v1/programs/1107/members.json?filterType=updatedAt&startAt=2024-03-01T00:00:00Z&endAt=2024-03-09T00:00:00Z")
        .await;
    assert_eq!(code(&too_long), "1003");
    let no_range = t
        .get("/rest/v1/programs/1107/members.json?filterType=updatedAt")
        .await;
    assert_eq!(code(&no_range), "1003");
    // Engagement programs carry the nurture fields.
    let nurture = t
        .post(
            "/rest/v1/leads/programs/1108/status.json",
            json!({"status": "Member", "input": [{"id": 2}]}),
        )
        .await;
    assert_eq!(nurture["result"][0]["status"], "updated", "{nurture}");
    let member = t
        .get("/rest/v1/programs/1108/members.json?filterType=leadId&filterValues=2")
        .await;
    assert_eq!(member["result"][0]["nurtureCadence"], "normal", "{member}");
    assert_eq!(member["result"][0]["isExhausted"], false);
    // Channels and their statuses; tags come with Get Program by id, not with the browse.
    let channels = t.get("/rest/asset/v1/channels.json").await;
    let webinar = channels["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Webinar")
        .cloned()
        .unwrap();
    assert!(
        webinar["progressionStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "Attended" && s["success"] == true),
        "{webinar}"
    );
    let by_name = t
        .get("/rest/asset/v1/channel/byName.json?name=Nurture")
        .await;
    assert_eq!(by_name["result"][0]["name"], "Nurture");
    let program = t.get("/rest/asset/v1/program/1107.json").await;
    assert_eq!(
        program["result"][0]["tags"][0]["tagType"], "Region",
        "{program}"
    );
    let browse = t.get("/rest/asset/v1/programs.json").await;
    assert!(browse["result"][0].get("tags").is_none(), "{browse}");
}

#[tokio::test]
async fn browse_programs_honours_the_updated_window() {
    let t = T::new().await;
    let ids = |v: &Value| -> Vec<i64> {
        v["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    let all = t.get("/rest/asset/v1/programs.json?maxReturn=200").await;
    assert_eq!(ids(&all), [1107, 1108]);
    // 1108 was created 3 days before the start; 1107 created 60 and updated 20 days before.
    let recent = t
        .get("/rest/asset/v1/programs.json?earliestUpdatedAt=2024-02-29T00:00:00Z")
        .await;
    assert_eq!(ids(&recent), [1108]);
    let older = t
        .get("/rest/asset/v1/programs.json?latestUpdatedAt=2024-02-20T00:00:00Z")
        .await;
    assert_eq!(ids(&older), [1107]);
    let created_only = t
        .get("/rest/asset/v1/programs.json?earliestUpdatedAt=2024-01-01T00:00:00Z&latestUpdatedAt=2024-01-10T00:00:00Z")
        .await;
    assert_eq!(ids(&created_only), [1107], "created in the window counts");
    let none = t
        .get("/rest/asset/v1/programs.json?earliestUpdatedAt=2024-03-04T00:00:00Z")
        .await;
    assert_eq!(none["success"], true);
    assert!(none.get("result").is_none(), "{none}");
    assert_eq!(
        code(
            &t.get("/rest/asset/v1/programs.json?earliestUpdatedAt=yesterday")
                .await
        ),
        "1003"
    );
}

#[tokio::test]
async fn generated_leads_have_their_new_lead_activity_in_the_feed_and_exports() {
    let t = T::new().await;
    let new_leads = t.feed("12").await;
    let leads: BTreeSet<i64> = new_leads
        .iter()
        .map(|a| a["leadId"].as_i64().unwrap())
        .collect();
    assert_eq!(
        leads,
        (1..=LEADS as i64).collect(),
        "one per generated lead"
    );
    let dates: Vec<&str> = new_leads
        .iter()
        .map(|a| a["activityDate"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "in date order");
    let lead = t.get("/rest/v1/lead/5.json?fields=createdAt").await["result"][0].clone();
    let five = new_leads.iter().find(|a| a["leadId"] == 5).unwrap();
    assert_eq!(five["activityDate"], lead["createdAt"]);
    assert_eq!(five["primaryAttributeValueId"], 5);
    // A lead created through the API follows the generated ones.
    let created = t
        .post(
            "/rest/v1/leads.json",
            json!({"input": [{"email": "fresh@x.example"}]}),
        )
        .await;
    let fresh = created["result"][0]["id"].as_i64().unwrap();
    let again = t.feed("12").await;
    assert_eq!(again.len(), LEADS + 1);
    assert_eq!(again.last().unwrap()["leadId"], fresh);
    // A deleted generated lead takes its New Lead activity with it.
    t.post("/rest/v1/leads/delete.json", json!({"input": [{"id": 5}]}))
        .await;
    assert!(!t.feed("12").await.iter().any(|a| a["leadId"] == 5));
    // The bulk activity export over lead 7's creation day carries its New Lead row.
    let created_at = t.get("/rest/v1/lead/7.json?fields=createdAt").await["result"][0]["createdAt"]
        .as_str()
        .unwrap()
        .to_string();
    let day = &created_at[..10];
    let job = t
        .post(
            "/bulk/v1/activities/export/create.json",
            json!({"fields": ["leadId", "activityTypeId", "attributes"], "filter": {
                "createdAt": {"startAt": format!("{day}T00:00:00Z"), "endAt": format!("{day}T23:59:59Z")},
                "activityTypeIds": [12]}}),
        )
        .await;
    let id = job["result"][0]["exportId"].as_str().unwrap().to_string();
    let base = format!("/bulk/v1/activities/export/{id}");
    t.post(&format!("{base}/enqueue.json"), json!({})).await;
    t.get(&format!("{base}/status.json")).await;
    t.sim.advance_clock(Duration::from_secs(60));
    assert_eq!(
        t.get(&format!("{base}/status.json")).await["result"][0]["status"],
        "Completed"
    );
    let file = t
        .http
        .get(t.url(&format!("{base}/file.json")))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        file.lines()
            .any(|l| l.starts_with("7,12,") && l.contains("Source Type")),
        "{file}"
    );
}

#[tokio::test]
async fn activity_type_metadata_names_every_attribute_the_activities_carry() {
    let t = T::new().await;
    t.post(
        "/rest/v1/leads.json",
        json!({"action": "updateOnly", "lookupField": "id", "input": [{"id": 2, "title": "CFO"}]}),
    )
    .await;
    t.post("/rest/v1/lists/1002/leads.json?id=2", json!({}))
        .await;
    t.post(
        "/rest/v1/programs/1108/members/status.json",
        json!({"statusName": "Invited", "input": [{"leadId": 2}]}),
    )
    .await;
    t.post("/rest/v1/leads/3/merge.json?leadId=4", json!({}))
        .await;
    let types = t.get("/rest/v1/activities/types.json").await;
    let declared: BTreeMap<i64, BTreeSet<String>> = types["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ty| {
            let names = ty["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_string())
                .collect();
            (ty["id"].as_i64().unwrap(), names)
        })
        .collect();
    assert!(declared[&13].contains("Modifying User"));
    let mut activities = t.sim.activities();
    activities.extend(t.feed("12").await);
    let mut seen_types = BTreeSet::new();
    for a in &activities {
        let type_id = a["activityTypeId"].as_i64().unwrap();
        seen_types.insert(type_id);
        let names = declared
            .get(&type_id)
            .unwrap_or_else(|| panic!("type {type_id} is not in types.json"));
        for attr in a["attributes"].as_array().unwrap() {
            let name = attr["name"].as_str().unwrap();
            assert!(names.contains(name), "type {type_id} lacks '{name}' ({a})");
        }
    }
    for expected in [12, 13, 24, 32, 104] {
        assert!(seen_types.contains(&expected), "{seen_types:?}");
    }
}

#[tokio::test]
async fn campaigns_are_listed_triggered_and_scheduled_as_marketo_allows() {
    let t = T::new().await;
    let all = t.get("/rest/v1/campaigns.json").await;
    assert_eq!(all["result"].as_array().unwrap().len(), 3, "{all}");
    let triggerable = t.get("/rest/v1/campaigns.json?isTriggerable=true").await;
    assert_eq!(triggerable["result"][0]["id"], 3002);
    assert_eq!(triggerable["result"].as_array().unwrap().len(), 1);
    let by_program = t
        .get("/rest/v1/campaigns.json?programName=Nurture%20Track")
        .await;
    assert_eq!(by_program["result"][0]["id"], 3003);
    assert_eq!(
        t.get("/rest/v1/campaigns/3001.json").await["result"][0]["type"],
        "batch"
    );
    assert_eq!(code(&t.get("/rest/v1/campaigns/9.json").await), "1013");
    let body = json!({"input": {"leads": [{"id": 1}, {"id": 2}], "tokens": [{"name": "{{my.x}}", "value": "y"}]}});
    let ok = t
        .post("/rest/v1/campaigns/3002/trigger.json", body.clone())
        .await;
    assert_eq!(ok["result"][0]["id"], 3002, "{ok}");
    assert_eq!(
        code(
            &t.post("/rest/v1/campaigns/3001/trigger.json", body.clone())
                .await
        ),
        "1003",
        "a batch campaign cannot be triggered"
    );
    assert_eq!(
        code(&t.post("/rest/v1/campaigns/3003/trigger.json", body).await),
        "1003",
        "a campaign without a Campaign is Requested trigger cannot be triggered"
    );
    let missing = json!({"input": {"leads": [{"id": 999_999}]}});
    assert_eq!(
        code(
            &t.post("/rest/v1/campaigns/3002/trigger.json", missing)
                .await
        ),
        "1004"
    );
    let many: Vec<Value> = (1..=101).map(|i| json!({"id": i})).collect();
    assert_eq!(
        code(
            &t.post(
                "/rest/v1/campaigns/3002/trigger.json",
                json!({"input": {"leads": many}})
            )
            .await
        ),
        "1003"
    );
    let scheduled = t
        .post(
            "/rest/v1/campaigns/3001/schedule.json",
            json!({"input": {"runAt": "2024-03-06T00:00:00Z"}}),
        )
        .await;
    assert_eq!(scheduled["result"][0]["id"], 3001, "{scheduled}");
    let past = json!({"input": {"runAt": "2024-03-01T00:00:00Z"}});
    assert_eq!(
        code(&t.post("/rest/v1/campaigns/3001/schedule.json", past).await),
        "1003"
    );
    assert_eq!(
        code(
            &t.post("/rest/v1/campaigns/3002/schedule.json", json!({}))
                .await
        ),
        "1003",
        "a trigger campaign cannot be scheduled"
    );
}

#[tokio::test]
async fn push_leads_upserts_and_joins_the_program() {
    let t = T::new().await;
    let existing = t.get("/rest/v1/lead/2.json?fields=email").await["result"][0]["email"]
        .as_str()
        .unwrap()
        .to_string();
    let r = t
        .post(
            "/rest/v1/leads/push.json",
            json!({"programName": "Nurture Track", "source": "chat", "reason": "test",
                "input": [{"email": "pushed@x.example", "firstName": "P"}, {"email": existing}, {"nope": 1}]}),
        )
        .await;
    let results = r["result"].as_array().unwrap();
    assert_eq!(results[0]["status"], "created", "{r}");
    assert_eq!(results[1]["status"], "updated");
    assert_eq!(results[1]["id"], 2);
    assert_eq!(results[2]["status"], "skipped");
    let new_id = results[0]["id"].as_i64().unwrap();
    let members = t
        .get(&format!(
            "/rest/v1/programs/1108/members.json?filterType=leadId&filterValues={new_id},2"
        ))
        .await;
    assert_eq!(members["result"].as_array().unwrap().len(), 2, "{members}");
    assert_eq!(members["result"][0]["statusName"], "Member");
    assert_eq!(
        code(
            &t.post(
                "/rest/v1/leads/push.json",
                json!({"programName": "Nope", "input": [{"email": "a@x.example"}]})
            )
            .await
        ),
        "1013"
    );
}

#[tokio::test]
async fn program_member_data_delete_and_lead_program_status() {
    let t = T::new().await;
    let describe = t.get("/rest/v1/program/members/describe.json").await;
    assert!(
        describe["result"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "webinarUrl" && f["updateable"] == true)
    );
    // Lead 4 is a generated member of 1107; lead 5 is not.
    let data = t
        .post(
            "/rest/v1/programs/1107/members.json",
            json!({"input": [{"leadId": 4, "webinarUrl": "https://w.example/4"}, {"leadId": 5, "webinarUrl": "x"},
                {"leadId": 4, "membershipDate": "2024-01-01"}]}),
        )
        .await;
    let results = data["result"].as_array().unwrap();
    assert_eq!(results[0]["status"], "updated", "{data}");
    assert_eq!(reason(&results[1]), "1004");
    assert_eq!(reason(&results[2]), "1006", "not updateable");
    let member = t
        .get("/rest/v1/programs/1107/members.json?filterType=leadId&filterValues=4")
        .await;
    assert_eq!(member["result"][0]["webinarUrl"], "https://w.example/4");
    // Change Lead Program Status moves a lead back, which the member status route refuses.
    let back = json!({"status": "Invited", "input": [{"id": 4}]});
    let r = t
        .post("/rest/v1/leads/programs/1107/status.json", back)
        .await;
    assert_eq!(r["result"][0]["status"], "updated", "{r}");
    let forward_only = t
        .post(
            "/rest/v1/programs/1107/members/status.json",
            json!({"statusName": "Invited", "input": [{"leadId": 8}]}),
        )
        .await;
    assert_eq!(reason(&forward_only["result"][0]), "1037");
    let unknown = json!({"status": "Bogus", "input": [{"id": 4}]});
    assert_eq!(
        code(
            &t.post("/rest/v1/leads/programs/1107/status.json", unknown)
                .await
        ),
        "1025"
    );
    let programs = t.get("/rest/v1/leads/4/programMembership.json").await;
    assert_eq!(programs["result"][0]["progressionStatus"], "Invited");
    // Delete the membership.
    let del = t
        .post(
            "/rest/v1/programs/1107/members/delete.json",
            json!({"input": [{"leadId": 4}, {"leadId": 5}]}),
        )
        .await;
    assert_eq!(del["result"][0]["status"], "deleted", "{del}");
    assert_eq!(reason(&del["result"][1]), "1004");
    let gone = t
        .get("/rest/v1/programs/1107/members.json?filterType=leadId&filterValues=4")
        .await;
    assert!(gone["result"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn static_lists_through_the_asset_api() {
    let t = T::new().await;
    let created = t
        .form(
            "/rest/asset/v1/staticLists.json",
            &[
                ("folder", r#"{"id":1107,"type":"Program"}"#),
                ("name", "Chat Leads"),
                ("description", "from the CRM"),
            ],
        )
        .await;
    assert_eq!(created["success"], true, "{created}");
    let list = created["result"][0].clone();
    let id = list["id"].as_i64().unwrap();
    assert_eq!(list["folder"], json!({"id": 1107, "type": "Program"}));
    assert!(list["createdAt"].as_str().unwrap().ends_with("Z+0000"));
    let dup = t
        .form(
            "/rest/asset/v1/staticLists.json",
            &[
                ("folder", r#"{"id":19,"type":"Folder"}"#),
                ("name", "Chat Leads"),
            ],
        )
        .await;
    assert_eq!(code(&dup), "709");
    let by_name = t
        .get("/rest/asset/v1/staticList/byName.json?name=Chat%20Leads")
        .await;
    assert_eq!(by_name["result"][0]["id"], id);
    assert_eq!(
        code(&t.get("/rest/asset/v1/staticList/byName.json").await),
        "1003"
    );
    // The Lead Database sees it, by program name too, and membership works on it.
    let lead_db = t
        .get("/rest/v1/lists.json?programName=Spring%20Webinar")
        .await;
    let names: Vec<&str> = lead_db["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Event Invitees", "Chat Leads"]);
    let ids: Vec<String> = (1..=301).map(|i| i.to_string()).collect();
    let too_many = t
        .post(
            &format!("/rest/v1/lists/{id}/leads.json?id={}", ids.join(",")),
            json!({}),
        )
        .await;
    assert_eq!(code(&too_many), "1003", "300 per call");
    let added = t
        .post(&format!("/rest/v1/lists/{id}/leads.json?id=2"), json!({}))
        .await;
    assert_eq!(added["result"][0]["status"], "added");
    let lists_of_2 = t.get("/rest/v1/leads/2/listMembership.json").await;
    assert!(
        lists_of_2["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id)
    );
    // Browse by folder, rename, delete.
    let in_program = t
        .get("/rest/asset/v1/staticLists.json?folder=%7B%22id%22%3A1107%2C%22type%22%3A%22Program%22%7D")
        .await;
    assert_eq!(in_program["result"].as_array().unwrap().len(), 2);
    let renamed = t
        .form(
            &format!("/rest/asset/v1/staticList/{id}.json"),
            &[("name", "Chat Leads 2")],
        )
        .await;
    assert_eq!(renamed["result"][0]["name"], "Chat Leads 2", "{renamed}");
    let deleted = t
        .post(
            &format!("/rest/asset/v1/staticList/{id}/delete.json"),
            json!({}),
        )
        .await;
    assert_eq!(deleted["result"][0]["id"], id);
    let after = t.get(&format!("/rest/asset/v1/staticList/{id}.json")).await;
    assert!(after.get("result").is_none(), "{after}");
    assert_eq!(
        code(&t.get(&format!("/rest/v1/lists/{id}.json")).await),
        "1013"
    );
}

fn attr(api: &str, name: &str, data_type: &str) -> Value {
    json!({"apiName": api, "name": name, "dataType": data_type})
}

#[tokio::test]
async fn custom_activity_types_are_created_approved_and_take_records() {
    let t = T::new().await;
    let create = json!({"apiName": "chatTranscript_c", "name": "Chat Transcript",
        "triggerName": "Has chat", "filterName": "Had chat",
        "primaryAttribute": attr("conversationId", "Conversation Id", "string")});
    let draft = t
        .post("/rest/v1/activities/external/type.json", create.clone())
        .await;
    assert_eq!(draft["result"][0]["status"], "draft", "{draft}");
    let type_id = draft["result"][0]["id"].as_i64().unwrap();
    assert!(type_id > 100_001);
    assert_eq!(
        code(
            &t.post("/rest/v1/activities/external/type.json", create)
                .await
        ),
        "1003",
        "names are unique"
    );
    let attrs = json!({"attributes": [attr("transcript", "Transcript", "text"), attr("answers", "Answers", "integer")]});
    let with = t
        .post(
            "/rest/v1/activities/external/type/chatTranscript_c/attributes/create.json",
            attrs,
        )
        .await;
    assert_eq!(
        with["result"][0]["attributes"].as_array().unwrap().len(),
        2,
        "{with}"
    );
    let too_many: Vec<Value> = (0..19)
        .map(|i| attr(&format!("a{i}"), &format!("A {i}"), "string"))
        .collect();
    assert_eq!(
        code(
            &t.post(
                "/rest/v1/activities/external/type/chatTranscript_c/attributes/create.json",
                json!({"attributes": too_many})
            )
            .await
        ),
        "1003",
        "at most 20 attributes"
    );
    let record = |transcript: String| {
        json!({"input": [{"leadId": 2, "activityDate": "2024-03-05T11:00:00Z", "activityTypeId": type_id,
            "primaryAttributeValue": "conv-1",
            "attributes": [{"apiName": "transcript", "value": transcript}, {"name": "Answers", "value": 3}]}]})
    };
    let early = t
        .post("/rest/v1/activities/external.json", record("hi".into()))
        .await;
    assert_eq!(
        early["result"][0]["status"], "skipped",
        "a draft takes no records"
    );
    assert!(
        !t.get("/rest/v1/activities/types.json").await["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ty| ty["id"] == type_id)
    );
    let approved = t
        .post(
            "/rest/v1/activities/external/type/chatTranscript_c/approve.json",
            json!({}),
        )
        .await;
    assert_eq!(approved["result"][0]["status"], "approved", "{approved}");
    let describe = t
        .get("/rest/v1/activities/external/type/chatTranscript_c/describe.json")
        .await;
    assert_eq!(
        describe["result"][0]["primaryAttribute"]["apiName"],
        "conversationId"
    );
    // A 64 KB transcript fits a text attribute; one character more is refused, never cut.
    let long = "x".repeat(65_535);
    let ok = t
        .post("/rest/v1/activities/external.json", record(long.clone()))
        .await;
    assert_eq!(ok["result"][0]["status"], "added", "{}", ok["result"][0]);
    let over = t
        .post(
            "/rest/v1/activities/external.json",
            record(format!("{long}x")),
        )
        .await;
    assert_eq!(over["result"][0]["status"], "skipped");
    let unknown = json!({"input": [{"leadId": 2, "activityDate": "2024-03-05T11:00:00Z", "activityTypeId": type_id,
        "primaryAttributeValue": "c", "attributes": [{"apiName": "mood", "value": "ok"}]}]});
    let r = t.post("/rest/v1/activities/external.json", unknown).await;
    assert_eq!(r["result"][0]["errors"][0]["code"], "1006", "{r}");
    let written = t.feed(&type_id.to_string()).await;
    assert_eq!(written.len(), 1);
    let values: BTreeMap<&str, &Value> = written[0]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), &a["value"]))
        .collect();
    assert_eq!(values["Transcript"].as_str().unwrap().len(), 65_535);
    assert_eq!(values["Answers"], &json!(3));
    let types = t.get("/rest/v1/activities/types.json").await;
    assert!(
        types["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ty| ty["id"] == type_id)
    );
    let external = t.get("/rest/v1/activities/external/types.json").await;
    assert_eq!(external["result"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn segmentations_emails_and_folder_tokens_are_readable() {
    let t = T::new().await;
    let seg = t
        .get("/rest/asset/v1/segmentation.json?status=approved")
        .await;
    assert_eq!(seg["result"][0]["name"], "Region");
    let segments = t
        .get("/rest/asset/v1/segmentation/1001/segments.json?maxReturn=2")
        .await;
    assert_eq!(segments["result"].as_array().unwrap().len(), 2);
    let emails = t.get("/rest/asset/v1/emails.json?status=approved").await;
    assert_eq!(emails["result"].as_array().unwrap().len(), 2, "{emails}");
    assert_eq!(
        t.get("/rest/asset/v1/email/2003.json").await["result"][0]["status"],
        "draft"
    );
    assert_eq!(
        t.get("/rest/asset/v1/email/byName.json?name=Webinar%20Reminder")
            .await["result"][0]["id"],
        2002
    );
    let none = t.get("/rest/asset/v1/email/9.json").await;
    assert_eq!(
        none["warnings"][0],
        "No assets found for the given search criteria."
    );
    let tokens = t
        .get("/rest/asset/v1/folder/1107/tokens.json?folderType=Program")
        .await;
    assert_eq!(
        tokens["result"][0]["folder"]["folderName"],
        "Spring Webinar"
    );
    assert_eq!(tokens["result"][0]["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(
        code(
            &t.get("/rest/asset/v1/folder/1107/tokens.json?folderType=Nope")
                .await
        ),
        "1003"
    );
}
