//! CRM search (`POST /crm/v3/objects/{objectType}/search`): filter groups, operators, sorts,
//! free-text `query`, `limit` up to 200, `after` paging and the 10,000-result cap.
//!
//! Semantics follow the `PublicObjectSearchRequest` model of the objects specs
//! (`PublicApiSpecs/CRM/Contacts/Rollouts/424/v3/contacts.json`, operator enum of `Filter`),
//! the search guide (<https://developers.hubspot.com/docs/api-reference/search/guide>: groups
//! are ORed and filters in a group ANDed, at most 5 groups, 6 filters per group and 18 in all,
//! `limit` at most 200, a query returns at most 10,000 results and paging past them answers 400),
//! and integrators' reports of the cap (airbytehq/airbyte#10700, HubSpot/hubspot-api-nodejs#132).

use std::cmp::Ordering;

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::model::{ApiError, ObjectType, PropType, Record, parse_ts};

/// Results a query can reach.
pub const RESULT_CAP: usize = 10_000;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 200;
const MAX_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 6;
const MAX_FILTERS: usize = 18;

#[derive(Debug)]
struct Filter {
    property: String,
    operator: String,
    value: Option<String>,
    high: Option<String>,
    values: Vec<String>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A parsed search request.
#[derive(Debug)]
pub struct Query {
    groups: Vec<Vec<Filter>>,
    sort: Option<(String, bool)>,
    text: Option<String>,
    /// Properties to return.
    pub properties: Vec<String>,
    /// Page size.
    pub limit: usize,
    /// Offset.
    pub after: usize,
}

const OPERATORS: &[&str] = &[
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
];

impl Query {
    /// Parses a `PublicObjectSearchRequest` body against an object type.
    ///
    /// # Errors
    ///
    /// Returns a 400 `VALIDATION_ERROR` naming the bad member.
    pub fn parse(body: &Value, object: &ObjectType) -> Result<Self, ApiError> {
        let limit = match body.get("limit") {
            None | Some(Value::Null) => 10,
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| ApiError::validation(format!("Invalid limit {v}")))?,
        };
        if limit > MAX_LIMIT {
            return Err(ApiError::validation(format!(
                "Paging limit of {limit} exceeds the maximum of {MAX_LIMIT}"
            )));
        }
        let after = match body.get("after").and_then(text) {
            None => 0,
            Some(s) if s.is_empty() => 0,
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| ApiError::validation(format!("Invalid after value: {s}")))?,
        };
        if after >= RESULT_CAP {
            return Err(ApiError::validation(format!(
                "Searches return at most {RESULT_CAP} results; after={after} is past that. Narrow the query."
            )));
        }
        let mut groups = Vec::new();
        let mut total = 0;
        let raw_groups = body
            .get("filterGroups")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if raw_groups.len() > MAX_GROUPS {
            return Err(ApiError::validation(format!(
                "Too many filter groups: {} (at most {MAX_GROUPS})",
                raw_groups.len()
            )));
        }
        for group in &raw_groups {
            let filters = group
                .get("filters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if filters.len() > MAX_FILTERS_PER_GROUP {
                return Err(ApiError::validation(format!(
                    "Too many filters in a group: {} (at most {MAX_FILTERS_PER_GROUP})",
                    filters.len()
                )));
            }
            total += filters.len();
            let mut parsed = Vec::new();
            for f in &filters {
                let property = f
                    .get("propertyName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let operator = f
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or("EQ")
                    .to_string();
                if !OPERATORS.contains(&operator.as_str()) {
                    return Err(ApiError::validation(format!(
                        "Invalid operator {operator} for property {property}"
                    )));
                }
                if object.prop(&property).is_none() {
                    return Err(ApiError::validation(format!(
                        "There was a problem with the request: property {property} does not exist on {}",
                        object.name
                    ))
                    .ctx("propertyName", property));
                }
                let values: Vec<String> = f
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| vs.iter().filter_map(text).collect())
                    .unwrap_or_default();
                let value = f.get("value").and_then(text);
                let high = f.get("highValue").and_then(text);
                let needs_value = !matches!(
                    operator.as_str(),
                    "IN" | "NOT_IN" | "HAS_PROPERTY" | "NOT_HAS_PROPERTY"
                );
                if needs_value && value.is_none() {
                    return Err(ApiError::validation(format!(
                        "Operator {operator} on {property} needs a value"
                    )));
                }
                if operator == "BETWEEN" && high.is_none() {
                    return Err(ApiError::validation(format!(
                        "Operator BETWEEN on {property} needs a highValue"
                    )));
                }
                if matches!(operator.as_str(), "IN" | "NOT_IN") && values.is_empty() {
                    return Err(ApiError::validation(format!(
                        "Operator {operator} on {property} needs values"
                    )));
                }
                parsed.push(Filter {
                    property,
                    operator,
                    value,
                    high,
                    values,
                });
            }
            groups.push(parsed);
        }
        if total > MAX_FILTERS {
            return Err(ApiError::validation(format!(
                "Too many filters: {total} (at most {MAX_FILTERS})"
            )));
        }
        let sort = match body
            .get("sorts")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
        {
            None => None,
            Some(Value::String(s)) => match s.strip_prefix('-') {
                Some(name) => Some((name.to_string(), false)),
                None => Some((s.clone(), true)),
            },
            Some(obj) => {
                let name = obj
                    .get("propertyName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ascending = obj.get("direction").and_then(Value::as_str) != Some("DESCENDING");
                Some((name, ascending))
            }
        };
        let properties = body
            .get("properties")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(text).collect())
            .unwrap_or_default();
        Ok(Self {
            groups,
            sort,
            text: body
                .get("query")
                .and_then(Value::as_str)
                .map(str::to_lowercase)
                .filter(|s| !s.is_empty()),
            properties,
            limit,
            after,
        })
    }

    fn matches(&self, object: &ObjectType, rec: &Record) -> bool {
        if let Some(q) = &self.text {
            let hit = [
                "firstname",
                "lastname",
                "email",
                "phone",
                "company",
                "name",
                "domain",
                "dealname",
                &object.primary_display,
            ]
            .iter()
            .any(|p| {
                rec.props
                    .get(*p)
                    .is_some_and(|v| v.to_lowercase().contains(q))
            });
            if !hit {
                return false;
            }
        }
        self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|g| g.iter().all(|f| filter_matches(object, rec, f)))
    }

    /// Runs the query and returns the `CollectionResponseWithTotalSimplePublicObjectForwardPaging`
    /// JSON.
    pub fn run(&self, object: &ObjectType) -> Value {
        let mut hits: Vec<&Record> = object
            .records
            .values()
            .filter(|r| r.archived_at.is_none() && self.matches(object, r))
            .collect();
        if let Some((name, ascending)) = &self.sort {
            let ptype = object.prop(name).map_or(PropType::String, |d| d.ptype);
            hits.sort_by(|a, b| {
                let order = match (a.props.get(name), b.props.get(name)) {
                    (Some(x), Some(y)) => {
                        let o = compare(ptype, x, y).unwrap_or(Ordering::Equal);
                        if *ascending { o } else { o.reverse() }
                    }
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                order.then(a.id.cmp(&b.id))
            });
        }
        let total = hits.len();
        let reachable = total.min(RESULT_CAP);
        let end = (self.after + self.limit).min(reachable);
        let results: Vec<Value> = hits
            .get(self.after.min(end)..end)
            .unwrap_or_default()
            .iter()
            .map(|r| object.record_json(r, &self.properties, &[]))
            .collect();
        let mut out = json!({"total": total, "results": results});
        if end < total {
            out["paging"] = json!({"next": {"after": end.to_string()}});
        }
        out
    }
}

fn compare(ptype: PropType, a: &str, b: &str) -> Option<Ordering> {
    match ptype {
        PropType::Number => a.parse::<f64>().ok()?.partial_cmp(&b.parse::<f64>().ok()?),
        PropType::Datetime => Some(parse_ts(a)?.cmp(&parse_ts(b)?)),
        PropType::Date => Some(parse_date(a)?.cmp(&parse_date(b)?)),
        _ => Some(a.to_lowercase().cmp(&b.to_lowercase())),
    }
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .or_else(|| parse_ts(text).map(|t| t.date_naive()))
}

fn filter_matches(object: &ObjectType, rec: &Record, f: &Filter) -> bool {
    let ptype = object
        .prop(&f.property)
        .map_or(PropType::String, |d| d.ptype);
    let have = rec.props.get(&f.property);
    let cmp = |other: &str| have.and_then(|v| compare(ptype, v, other));
    let value = f.value.as_deref().unwrap_or_default();
    match f.operator.as_str() {
        "HAS_PROPERTY" => have.is_some(),
        "NOT_HAS_PROPERTY" => have.is_none(),
        "EQ" => cmp(value) == Some(Ordering::Equal),
        "NEQ" => cmp(value) != Some(Ordering::Equal),
        "LT" => cmp(value) == Some(Ordering::Less),
        "LTE" => matches!(cmp(value), Some(Ordering::Less | Ordering::Equal)),
        "GT" => cmp(value) == Some(Ordering::Greater),
        "GTE" => matches!(cmp(value), Some(Ordering::Greater | Ordering::Equal)),
        "BETWEEN" => {
            let high = f.high.as_deref().unwrap_or_default();
            matches!(cmp(value), Some(Ordering::Greater | Ordering::Equal))
                && matches!(cmp(high), Some(Ordering::Less | Ordering::Equal))
        }
        "IN" => f.values.iter().any(|v| cmp(v) == Some(Ordering::Equal)),
        "NOT_IN" => !f.values.iter().any(|v| cmp(v) == Some(Ordering::Equal)),
        "CONTAINS_TOKEN" => have.is_some_and(|v| token_match(v, value)),
        "NOT_CONTAINS_TOKEN" => !have.is_some_and(|v| token_match(v, value)),
        _ => false,
    }
}

/// Matches a token with `*` wildcards against the words of a value, case-insensitively.
fn token_match(have: &str, token: &str) -> bool {
    let token = token.to_lowercase();
    let have = have.to_lowercase();
    if token.contains('*') {
        let core = token.trim_matches('*');
        return have.contains(core);
    }
    have.split(|c: char| !c.is_alphanumeric())
        .any(|word| word == token)
        || have == token
}
