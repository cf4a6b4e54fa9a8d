//! Every genuine JSON response in `tests/fixtures/marketo/` (copied unmodified from
//! ../shared/fixtures/marketo/, see PROVENANCE.md there) parses without loss through the
//! client's model types: every record and every key is kept, with exact values.

use std::collections::BTreeSet;
use std::path::PathBuf;

use marketo_sync::marketo::Envelope;
use marketo_sync::marketo::describe::{
    ActivityType, LeadAttribute, ObjectMetadata, lead_attributes_to_schema,
};
use marketo_sync::marketo::lists::StaticList;
use marketo_sync::marketo::model::parse_marketo_datetime;
use marketo_sync::marketo::programs::Program;
use marketo_sync::model::FieldType;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/marketo")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn raw(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Returns the envelopes of a fixture: a single response, or the `responses` array of a paged one.
fn envelopes<T: DeserializeOwned>(name: &str) -> Vec<Envelope<T>> {
    let value = raw(name);
    let items = match value.get("responses") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    items
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

/// Returns the raw records of a fixture (every `result` of every response).
fn raw_records(name: &str) -> Vec<serde_json::Map<String, Value>> {
    let value = raw(name);
    let responses = match value.get("responses") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    responses
        .iter()
        .flat_map(|r| match r.get("result") {
            Some(Value::Array(items)) => items.clone(),
            _ => match r {
                Value::Array(items) => items.clone(),
                _ => Vec::new(),
            },
        })
        .map(|v| v.as_object().unwrap().clone())
        .collect()
}

fn keys(records: &[serde_json::Map<String, Value>]) -> BTreeSet<String> {
    records.iter().flat_map(|r| r.keys().cloned()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn opt_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

#[test]
fn lead_describe_keeps_every_field() {
    let env: Vec<Envelope<LeadAttribute>> = envelopes("lead_describe.json");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].request_id.as_deref(), Some("121e2#15eebcac5d8"));
    let raw = raw_records("lead_describe.json");
    // Every key the fixture uses is one the model reads.
    assert_eq!(
        keys(&raw),
        set(&["id", "displayName", "dataType", "length", "rest", "soap"])
    );
    let attrs = env.into_iter().next().unwrap().records();
    assert_eq!(attrs.len(), 16);
    for (a, r) in attrs.iter().zip(&raw) {
        assert_eq!(Some(a.id), r["id"].as_i64());
        assert_eq!(a.display_name, opt_str(r.get("displayName")));
        assert_eq!(Some(a.data_type.as_str()), r["dataType"].as_str());
        assert_eq!(
            a.length.map(u64::from),
            r.get("length").and_then(Value::as_u64)
        );
        for (api, part) in [("rest", &a.rest), ("soap", &a.soap)] {
            let part = part.as_ref().unwrap();
            assert_eq!(Some(part.name.as_str()), r[api]["name"].as_str());
            assert_eq!(Some(part.read_only), r[api]["readOnly"].as_bool());
        }
    }
    let schema = lead_attributes_to_schema(&attrs);
    assert_eq!(schema.object, "lead");
    assert_eq!(schema.fields.len(), 16, "every REST field is kept");
    let by_name = |n: &str| schema.fields.iter().find(|f| f.name == n).unwrap();
    assert_eq!(by_name("mKtestboolean").ty, FieldType::Boolean);
    assert_eq!(by_name("mKtestcurrency").ty, FieldType::Decimal);
    assert_eq!(by_name("mKtestdate").ty, FieldType::Date);
    assert_eq!(by_name("mKtestDatetime").ty, FieldType::DateTime);
    assert_eq!(by_name("mKtestemail").ty, FieldType::Email);
    assert_eq!(by_name("mKtestfloat").ty, FieldType::Decimal);
    assert_eq!(by_name("mKtestinteger").ty, FieldType::Integer);
    assert_eq!(by_name("mKtestpercent").ty, FieldType::Decimal);
    assert_eq!(by_name("mKtestphone").ty, FieldType::Phone);
    assert_eq!(by_name("mKtestscore").ty, FieldType::Integer);
    assert_eq!(
        by_name("mKteststring").ty,
        FieldType::Text { max_len: Some(255) }
    );
    assert_eq!(
        by_name("mKtesttextarea").ty,
        FieldType::Text { max_len: None }
    );
    assert_eq!(by_name("mKtesturl").ty, FieldType::Url);
    assert_eq!(
        by_name("mKTestReference").ty,
        FieldType::Reference { object: None }
    );
    assert_eq!(
        by_name("mKTestFormula").ty,
        FieldType::Other {
            name: "formula".into()
        }
    );
    assert_eq!(by_name("mKtesttext").ty, FieldType::Text { max_len: None });
    for (f, r) in schema.fields.iter().zip(&raw) {
        assert_eq!(Some(f.name.as_str()), r["rest"]["name"].as_str());
        assert_eq!(f.label, opt_str(r.get("displayName")));
        assert_eq!(Some(f.read_only), r["rest"]["readOnly"].as_bool());
    }
}

#[test]
fn custom_object_describe_keeps_every_field() {
    let env: Vec<Envelope<ObjectMetadata>> = envelopes("custom_object_describe.json");
    let raw = raw_records("custom_object_describe.json");
    assert_eq!(
        keys(&raw),
        set(&[
            "name",
            "displayName",
            "description",
            "createdAt",
            "updatedAt",
            "idField",
            "dedupeFields",
            "searchableFields",
            "fields",
        ])
    );
    let objects = env.into_iter().next().unwrap().records();
    assert_eq!(objects.len(), 1);
    let co = &objects[0];
    assert_eq!(co.name.as_deref(), Some("custom_object"));
    assert_eq!(co.display_name.as_deref(), Some("Custom Object"));
    assert_eq!(co.description.as_deref(), Some("Custom Object"));
    assert_eq!(co.created_at.as_deref(), Some("2015-02-03T22:36:23Z"));
    assert_eq!(co.updated_at.as_deref(), Some("2015-02-03T22:36:24Z"));
    assert_eq!(co.id_field.as_deref(), Some("marketoGUID"));
    assert_eq!(co.dedupe_fields, ["mKtestcurrency"]);
    assert_eq!(
        co.searchable_fields,
        vec![
            vec!["mKtestcurrency".to_string()],
            vec!["marketoGUID".to_string()]
        ]
    );
    let raw_fields: Vec<serde_json::Map<String, Value>> = raw[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_object().unwrap().clone())
        .collect();
    assert_eq!(
        keys(&raw_fields),
        set(&["updateable", "displayName", "dataType", "name", "length"])
    );
    assert_eq!(co.fields.len(), raw_fields.len());
    assert_eq!(co.fields.len(), 16);
    for (f, r) in co.fields.iter().zip(&raw_fields) {
        assert_eq!(Some(f.name.as_str()), r["name"].as_str());
        assert_eq!(f.display_name, opt_str(r.get("displayName")));
        assert_eq!(Some(f.data_type.as_str()), r["dataType"].as_str());
        assert_eq!(
            f.length.map(u64::from),
            r.get("length").and_then(Value::as_u64)
        );
        assert_eq!(f.updateable, r.get("updateable").and_then(Value::as_bool));
    }
    let schema = co.to_schema("custom_object");
    assert_eq!(schema.id_field.as_deref(), Some("marketoGUID"));
    assert_eq!(schema.dedupe_fields, ["mKtestcurrency"]);
    assert_eq!(schema.fields.len(), 16, "every field is kept");
    let currency = schema
        .fields
        .iter()
        .find(|f| f.name == "mKtestcurrency")
        .unwrap();
    assert!(currency.unique && currency.searchable);
    assert_eq!(currency.ty, FieldType::Decimal);
    assert!(schema.fields.iter().all(|f| !f.read_only));
    for (f, r) in schema.fields.iter().zip(&raw_fields) {
        assert_eq!(Some(f.name.as_str()), r["name"].as_str());
        assert_eq!(f.label, opt_str(r.get("displayName")));
    }
}

#[test]
fn activity_types_keep_every_type() {
    let raw = raw_records("activity_types.json");
    assert_eq!(keys(&raw), set(&["id", "name"]));
    // The fixture is the bare `result` array.
    let types: Vec<ActivityType> = serde_json::from_str(&fixture("activity_types.json")).unwrap();
    assert_eq!(types.len(), 5);
    let got: Vec<(i64, &str)> = types.iter().map(|t| (t.id, t.name.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, "bb"),
            (2, "TD Output Test aa"),
            (3, "Bill_progream a"),
            (4, "Bill_progream b"),
            (5, "Bill_progream c"),
        ]
    );
    assert!(
        types
            .iter()
            .all(|t| t.primary_attribute.is_none() && t.attributes.is_empty())
    );
}

#[test]
fn lists_keep_every_list_and_page_token() {
    let env: Vec<Envelope<StaticList>> = envelopes("lists_response.json");
    assert_eq!(env.len(), 2);
    assert_eq!(
        env[0].next_page_token.as_deref(),
        Some("GWP55GLCVCZLPE6SS7OCG5IEXQ======")
    );
    assert_eq!(env[1].next_page_token, None);
    let raw = raw_records("lists_response.json");
    assert_eq!(
        keys(&raw),
        set(&["id", "name", "workspaceName", "createdAt", "updatedAt"])
    );
    let lists: Vec<StaticList> = env.into_iter().flat_map(Envelope::records).collect();
    assert_eq!(lists.len(), 2);
    assert_eq!((lists[0].id, lists[0].name.as_str()), (1007, "Test list 1"));
    assert_eq!((lists[1].id, lists[1].name.as_str()), (1008, "Test list 2"));
    for (l, r) in lists.iter().zip(&raw) {
        assert_eq!(l.workspace_name, opt_str(r.get("workspaceName")));
        assert_eq!(l.created_at, opt_str(r.get("createdAt")));
        assert_eq!(l.updated_at, opt_str(r.get("updatedAt")));
        assert!(parse_marketo_datetime(l.created_at.as_deref().unwrap()).is_some());
    }
    assert_eq!(lists[0].workspace_name.as_deref(), Some("Default"));
    assert_eq!(lists[0].updated_at.as_deref(), Some("2017-09-21T21:48:10Z"));
}

#[test]
fn programs_keep_every_program_and_attribute() {
    let env: Vec<Envelope<Program>> = envelopes("program_response.json");
    assert_eq!(env.len(), 2);
    assert_eq!(env[0].request_id.as_deref(), Some("1611b#15f01e681c4"));
    assert_eq!(env[0].warnings.as_deref(), Some(&[][..]));
    let raw = raw_records("program_response.json");
    assert_eq!(
        keys(&raw),
        set(&[
            "id",
            "name",
            "description",
            "createdAt",
            "updatedAt",
            "url",
            "type",
            "channel",
            "folder",
            "status",
            "workspace",
        ])
    );
    let programs: Vec<Program> = env.into_iter().flat_map(Envelope::records).collect();
    assert_eq!(programs.len(), 3);
    assert_eq!(
        programs.iter().map(|p| p.id).collect::<Vec<_>>(),
        [1004, 1001, 1003]
    );
    for (p, r) in programs.iter().zip(&raw) {
        assert_eq!(Some(p.name.as_str()), r["name"].as_str());
        assert_eq!(p.description, opt_str(r.get("description")));
        assert_eq!(p.created_at, opt_str(r.get("createdAt")));
        assert_eq!(p.updated_at, opt_str(r.get("updatedAt")));
        assert_eq!(p.url, opt_str(r.get("url")));
        assert_eq!(p.program_type, opt_str(r.get("type")));
        assert_eq!(p.channel, opt_str(r.get("channel")));
        assert_eq!(p.folder.as_ref(), r.get("folder"));
        assert_eq!(p.status, opt_str(r.get("status")));
        assert_eq!(p.workspace, opt_str(r.get("workspace")));
    }
    let first = &programs[0];
    assert_eq!(first.program_type.as_deref(), Some("Engagement"));
    assert_eq!(first.channel.as_deref(), Some("Nurture"));
    assert_eq!(first.status.as_deref(), Some("on"));
    assert_eq!(programs[1].status.as_deref(), Some(""));
    assert_eq!(programs[2].description.as_deref(), Some(""));
    // The Asset API's `Z+0000` datetimes parse to the exact instant.
    assert_eq!(
        parse_marketo_datetime(first.created_at.as_deref().unwrap())
            .unwrap()
            .to_rfc3339(),
        "2017-09-25T21:51:20+00:00"
    );
}
