//! The route table (the one list of everything the simulator serves) and the request/answer
//! types its handlers share.

pub mod activities;
pub mod assets;
pub mod campaigns;
pub mod custom_types;
pub mod leads;
pub mod members;
pub mod misc;
pub mod objects;

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::faults::FaultRule;
use super::server::SimState;
use super::{admin, bulk};

/// What a route needs in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyReq {
    /// Nothing (any body is ignored or optional).
    None,
    /// A JSON document (609 when absent or malformed).
    Json,
    /// A `multipart/form-data` upload with a `file` part.
    Multipart,
}

/// A parsed request as handlers see it.
#[derive(Debug, Default)]
pub struct Req {
    /// HTTP method (upper case).
    pub method: String,
    /// URL path.
    pub path: String,
    /// Path parameters by template name.
    pub params: HashMap<String, String>,
    /// Query parameters, plus the form body of a `POST ?_method=GET`.
    pub query: Vec<(String, String)>,
    /// True for `POST ?_method=GET`.
    pub method_get: bool,
    /// The JSON body, when there is one.
    pub body: Option<Value>,
    /// The raw body.
    pub raw: Bytes,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The `Range` header.
    pub range: Option<String>,
}

impl Req {
    /// Returns the first value of query parameter `name` (non-empty).
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Returns all values of `name`, comma-split (repeated and comma-separated forms).
    pub fn q_list(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Returns path parameter `name`.
    pub fn p(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Returns a member of the JSON body.
    pub fn b(&self, name: &str) -> Option<&Value> {
        self.body.as_ref().and_then(|b| b.get(name))
    }
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// HTTP 200 JSON, `success:true`; the value holds the envelope members (`result`, ...).
    Ok(Value),
    /// HTTP 200 JSON, `success:false` with one error.
    Err(String, String),
    /// A raw HTTP answer.
    Http {
        /// Status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Bytes,
        /// Break the connection after this many body bytes (truncated download).
        truncate_at: Option<usize>,
    },
}

impl Reply {
    /// Returns a success with `result`.
    pub fn result(items: Vec<Value>) -> Reply {
        Reply::Ok(json!({ "result": items }))
    }

    /// Returns a success with `result` and paging members.
    pub fn page(items: Vec<Value>, next: Option<String>) -> Reply {
        let mut v = json!({ "result": items });
        if let Some(token) = next {
            v["moreResult"] = json!(true);
            v["nextPageToken"] = json!(token);
        }
        Reply::Ok(v)
    }

    /// Returns an error envelope.
    pub fn err(code: &str, message: impl Into<String>) -> Reply {
        Reply::Err(code.to_string(), message.into())
    }

    /// Returns a plaintext HTTP answer.
    pub fn text(status: u16, text: &str) -> Reply {
        Reply::Http {
            status,
            headers: vec![("content-type".into(), "text/plain;charset=UTF-8".into())],
            body: Bytes::from(text.to_string()),
            truncate_at: None,
        }
    }

    /// Returns the Marketo error code of this answer, if it is an error envelope.
    pub fn code(&self) -> Option<&str> {
        match self {
            Reply::Err(code, _) => Some(code),
            _ => None,
        }
    }
}

/// What a handler runs with.
pub struct Ctx<'a> {
    /// The simulator state (locked).
    pub st: &'a mut SimState,
    /// Sim time of the call.
    pub now: DateTime<Utc>,
    /// The fault chosen for this call, for handlers that act on file faults.
    pub fault: Option<FaultRule>,
}

/// A handler.
pub type Handler = fn(&mut Ctx<'_>, &Req) -> Reply;

/// One served route.
#[derive(Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, with `{name}` parameters as in the Swagger specs.
    pub path: &'static str,
    /// Route family (for faults, and `identity`/`admin` bypass auth and limits).
    pub family: &'static str,
    /// Query parameters the route requires.
    pub required_query: &'static [&'static str],
    /// Body requirement.
    pub body: BodyReq,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

const fn r(
    method: &'static str,
    path: &'static str,
    family: &'static str,
    required_query: &'static [&'static str],
    body: BodyReq,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        family,
        required_query,
        body,
        handler,
    }
}

use BodyReq::{Json as J, Multipart as M, None as N};

/// Every route the simulator serves.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    r("GET", "/identity/oauth/token", "identity", &["client_id", "client_secret", "grant_type"], N, misc::identity),
    r("POST", "/identity/oauth/token", "identity", &["client_id", "client_secret", "grant_type"], N, misc::identity),
    // leads
    r("GET", "/rest/v1/leads/describe.json", "leads", &[], N, leads::describe),
    r("GET", "/rest/v1/leads/describe2.json", "leads", &[], N, leads::describe2),
    r("POST", "/rest/v1/leads.json", "leads", &[], J, leads::sync_or_query),
    r("GET", "/rest/v1/leads.json", "leads", &["filterType", "filterValues"], N, leads::query),
    r("GET", "/rest/v1/lead/{leadId}.json", "leads", &[], N, leads::get_by_id),
    r("GET", "/rest/v1/leads/partitions.json", "leads", &[], N, misc::partitions),
    r("POST", "/rest/v1/leads/delete.json", "leads", &[], N, leads::delete),
    r("POST", "/rest/v1/leads/{leadId}/merge.json", "leads", &[], N, leads::merge),
    // non-lead objects
    r("GET", "/rest/v1/companies/describe.json", "companies", &[], N, objects::describe),
    r("GET", "/rest/v1/companies.json", "companies", &["filterType", "filterValues"], N, objects::query),
    r("POST", "/rest/v1/companies.json", "companies", &[], J, objects::sync_or_query),
    r("POST", "/rest/v1/companies/delete.json", "companies", &[], J, objects::delete),
    r("GET", "/rest/v1/salespersons/describe.json", "salespersons", &[], N, objects::describe),
    r("GET", "/rest/v1/salespersons.json", "salespersons", &["filterType", "filterValues"], N, objects::query),
    r("POST", "/rest/v1/salespersons.json", "salespersons", &[], J, objects::sync_or_query),
    r("POST", "/rest/v1/salespersons/delete.json", "salespersons", &[], J, objects::delete),
    r("GET", "/rest/v1/opportunities/describe.json", "opportunities", &[], N, objects::describe),
    r("GET", "/rest/v1/opportunities.json", "opportunities", &["filterType", "filterValues"], N, objects::query),
    r("POST", "/rest/v1/opportunities.json", "opportunities", &[], J, objects::sync_or_query),
    r("POST", "/rest/v1/opportunities/delete.json", "opportunities", &[], N, objects::delete),
    r("GET", "/rest/v1/opportunities/roles/describe.json", "roles", &[], N, objects::describe),
    r("GET", "/rest/v1/opportunities/roles.json", "roles", &["filterType", "filterValues"], N, objects::query),
    r("POST", "/rest/v1/opportunities/roles.json", "roles", &[], J, objects::sync_or_query),
    r("POST", "/rest/v1/opportunities/roles/delete.json", "roles", &[], N, objects::delete),
    r("GET", "/rest/v1/customobjects.json", "customobjects", &[], N, objects::list_custom),
    r("GET", "/rest/v1/customobjects/{customObjectName}/describe.json", "customobjects", &[], N, objects::describe),
    r("GET", "/rest/v1/customobjects/{customObjectName}.json", "customobjects", &["filterType", "filterValues"], N, objects::query),
    r("POST", "/rest/v1/customobjects/{customObjectName}.json", "customobjects", &[], J, objects::sync_or_query),
    r("POST", "/rest/v1/customobjects/{customObjectName}/delete.json", "customobjects", &[], N, objects::delete),
    // activities
    r("GET", "/rest/v1/activities/types.json", "activities", &[], N, activities::types),
    r("GET", "/rest/v1/activities/external/types.json", "activities", &[], N, activities::external_types),
    r("GET", "/rest/v1/activities/pagingtoken.json", "activities", &["sinceDatetime"], N, activities::paging_token),
    r("GET", "/rest/v1/activities.json", "activities", &["nextPageToken", "activityTypeIds"], N, activities::list),
    r("GET", "/rest/v1/activities/leadchanges.json", "activities", &["nextPageToken", "fields"], N, activities::lead_changes),
    r("GET", "/rest/v1/activities/deletedleads.json", "activities", &["nextPageToken"], N, activities::deleted_leads),
    r("POST", "/rest/v1/activities/external.json", "activities", &[], J, activities::add_custom),
    r("POST", "/rest/v1/activities/external/type.json", "activities", &[], J, custom_types::create),
    r("GET", "/rest/v1/activities/external/type/{apiName}/describe.json", "activities", &[], N, custom_types::describe),
    r("POST", "/rest/v1/activities/external/type/{apiName}/attributes/create.json", "activities", &[], J, custom_types::add_attributes),
    r("POST", "/rest/v1/activities/external/type/{apiName}/approve.json", "activities", &[], N, custom_types::approve),
    r("POST", "/rest/v1/activities/external/type/{apiName}/discardDraft.json", "activities", &[], N, custom_types::discard_draft),
    r("POST", "/rest/v1/activities/external/type/{apiName}/delete.json", "activities", &[], N, custom_types::delete),
    // campaigns, push
    r("GET", "/rest/v1/campaigns.json", "campaigns", &[], N, campaigns::list),
    r("GET", "/rest/v1/campaigns/{campaignId}.json", "campaigns", &[], N, campaigns::by_id),
    r("POST", "/rest/v1/campaigns/{campaignId}/trigger.json", "campaigns", &[], N, campaigns::trigger),
    r("POST", "/rest/v1/campaigns/{campaignId}/schedule.json", "campaigns", &[], N, campaigns::schedule),
    r("POST", "/rest/v1/leads/push.json", "leads", &[], J, campaigns::push_leads),
    // programs, members, lists
    r("GET", "/rest/asset/v1/programs.json", "programs", &[], N, misc::programs),
    r("GET", "/rest/asset/v1/program/{id}.json", "programs", &[], N, misc::program_by_id),
    r("GET", "/rest/asset/v1/channels.json", "programs", &[], N, members::channels),
    r("GET", "/rest/asset/v1/channel/byName.json", "programs", &["name"], N, members::channel_by_name),
    r("GET", "/rest/asset/v1/program/byName.json", "programs", &["name"], N, assets::program_by_name),
    r("GET", "/rest/v1/programs/members/describe.json", "programs", &[], N, misc::members_describe),
    r("GET", "/rest/v1/program/members/describe.json", "programs", &[], N, misc::members_describe),
    r("GET", "/rest/v1/programs/{programId}/members.json", "programs", &["filterType"], N, misc::members),
    r("POST", "/rest/v1/programs/{programId}/members.json", "programs", &[], J, members::members_data),
    r("POST", "/rest/v1/programs/{programId}/members/status.json", "programs", &[], J, members::members_status),
    r("POST", "/rest/v1/programs/{programId}/members/delete.json", "programs", &[], J, members::members_delete),
    r("POST", "/rest/v1/leads/programs/{programId}/status.json", "programs", &[], J, members::change_lead_status),
    // static lists (Asset API)
    r("GET", "/rest/asset/v1/staticLists.json", "lists", &[], N, assets::static_lists),
    r("POST", "/rest/asset/v1/staticLists.json", "lists", &[], N, assets::create_static_list),
    r("GET", "/rest/asset/v1/staticList/{id}.json", "lists", &[], N, assets::static_list),
    r("POST", "/rest/asset/v1/staticList/{id}.json", "lists", &[], N, assets::update_static_list),
    r("POST", "/rest/asset/v1/staticList/{id}/delete.json", "lists", &[], N, assets::delete_static_list),
    r("GET", "/rest/asset/v1/staticList/byName.json", "lists", &["name"], N, assets::static_list_by_name),
    // read-only assets
    r("GET", "/rest/asset/v1/segmentation.json", "assets", &[], N, assets::segmentations),
    r("GET", "/rest/asset/v1/segmentation/{id}/segments.json", "assets", &[], N, assets::segments),
    r("GET", "/rest/asset/v1/emails.json", "assets", &[], N, assets::emails),
    r("GET", "/rest/asset/v1/email/{id}.json", "assets", &[], N, assets::email),
    r("GET", "/rest/asset/v1/email/byName.json", "assets", &["name"], N, assets::email_by_name),
    r("GET", "/rest/asset/v1/folder/{id}/tokens.json", "assets", &[], N, assets::folder_tokens),
    r("GET", "/rest/asset/v1/folder/byName.json", "assets", &["name"], N, assets::folder_by_name),
    r("GET", "/rest/v1/lists.json", "lists", &[], N, misc::lists),
    r("GET", "/rest/v1/lists/{listId}.json", "lists", &[], N, misc::list_by_id),
    r("GET", "/rest/v1/lists/{listId}/leads.json", "lists", &[], N, misc::list_members),
    r("GET", "/rest/v1/list/{listId}/leads.json", "lists", &[], N, misc::list_members),
    r("GET", "/rest/v1/leads/programs/{programId}.json", "programs", &[], N, misc::leads_by_program),
    r("GET", "/rest/v1/leads/{leadId}/listMembership.json", "lists", &[], N, misc::lead_lists),
    r("GET", "/rest/v1/leads/{leadId}/programMembership.json", "programs", &[], N, misc::lead_programs),
    r("POST", "/rest/v1/lists/{listId}/leads.json", "lists", &[], N, misc::list_add),
    r("DELETE", "/rest/v1/lists/{listId}/leads.json", "lists", &[], N, misc::list_remove),
    r("GET", "/rest/v1/lists/{listId}/leads/ismember.json", "lists", &[], N, misc::list_is_member),
    // usage
    r("GET", "/rest/v1/stats/usage.json", "stats", &[], N, misc::usage),
    r("GET", "/rest/v1/stats/usage/last7days.json", "stats", &[], N, misc::usage_last7),
    r("GET", "/rest/v1/stats/errors.json", "stats", &[], N, misc::errors),
    r("GET", "/rest/v1/stats/errors/last7days.json", "stats", &[], N, misc::errors_last7),
    // bulk extract
    r("POST", "/bulk/v1/leads/export/create.json", "bulk_export", &[], N, bulk::create_leads),
    r("POST", "/bulk/v1/activities/export/create.json", "bulk_export", &[], N, bulk::create_activities),
    r("GET", "/bulk/v1/leads/export.json", "bulk_export", &[], N, bulk::list_jobs),
    r("GET", "/bulk/v1/activities/export.json", "bulk_export", &[], N, bulk::list_jobs),
    r("POST", "/bulk/v1/leads/export/{exportId}/enqueue.json", "bulk_export", &[], N, bulk::enqueue),
    r("POST", "/bulk/v1/activities/export/{exportId}/enqueue.json", "bulk_export", &[], N, bulk::enqueue),
    r("GET", "/bulk/v1/leads/export/{exportId}/status.json", "bulk_export", &[], N, bulk::status),
    r("GET", "/bulk/v1/activities/export/{exportId}/status.json", "bulk_export", &[], N, bulk::status),
    r("POST", "/bulk/v1/leads/export/{exportId}/cancel.json", "bulk_export", &[], N, bulk::cancel),
    r("POST", "/bulk/v1/activities/export/{exportId}/cancel.json", "bulk_export", &[], N, bulk::cancel),
    r("GET", "/bulk/v1/leads/export/{exportId}/file.json", "bulk_file", &[], N, bulk::file),
    r("GET", "/bulk/v1/activities/export/{exportId}/file.json", "bulk_file", &[], N, bulk::file),
    r("POST", "/bulk/v1/program/members/export/create.json", "bulk_export", &[], N, bulk::create_program_members),
    r("GET", "/bulk/v1/program/members/export.json", "bulk_export", &[], N, bulk::list_jobs),
    r("POST", "/bulk/v1/program/members/export/{exportId}/enqueue.json", "bulk_export", &[], N, bulk::enqueue),
    r("GET", "/bulk/v1/program/members/export/{exportId}/status.json", "bulk_export", &[], N, bulk::status),
    r("POST", "/bulk/v1/program/members/export/{exportId}/cancel.json", "bulk_export", &[], N, bulk::cancel),
    r("GET", "/bulk/v1/program/members/export/{exportId}/file.json", "bulk_file", &[], N, bulk::file),
    r("POST", "/bulk/v1/customobjects/{apiName}/export/create.json", "bulk_export", &[], N, bulk::create_custom),
    r("GET", "/bulk/v1/customobjects/{apiName}/export.json", "bulk_export", &[], N, bulk::list_jobs),
    r("POST", "/bulk/v1/customobjects/{apiName}/export/{exportId}/enqueue.json", "bulk_export", &[], N, bulk::enqueue),
    r("GET", "/bulk/v1/customobjects/{apiName}/export/{exportId}/status.json", "bulk_export", &[], N, bulk::status),
    r("POST", "/bulk/v1/customobjects/{apiName}/export/{exportId}/cancel.json", "bulk_export", &[], N, bulk::cancel),
    r("GET", "/bulk/v1/customobjects/{apiName}/export/{exportId}/file.json", "bulk_file", &[], N, bulk::file),
    // bulk import
    r("POST", "/bulk/v1/leads.json", "bulk_import", &["format"], M, bulk::import_leads),
    r("GET", "/bulk/v1/leads/batch/{batchId}.json", "bulk_import", &[], N, bulk::import_status),
    r("GET", "/bulk/v1/leads/batch/{batchId}/failures.json", "bulk_import", &[], N, bulk::import_failures),
    r("GET", "/bulk/v1/leads/batch/{batchId}/warnings.json", "bulk_import", &[], N, bulk::import_warnings),
    r("POST", "/bulk/v1/customobjects/{apiName}/import.json", "bulk_import", &["format"], M, bulk::import_custom),
    r("GET", "/bulk/v1/customobjects/{apiName}/import/{batchId}/status.json", "bulk_import", &[], N, bulk::import_status),
    r("GET", "/bulk/v1/customobjects/{apiName}/import/{batchId}/failures.json", "bulk_import", &[], N, bulk::import_failures),
    r("GET", "/bulk/v1/customobjects/{apiName}/import/{batchId}/warnings.json", "bulk_import", &[], N, bulk::import_warnings),
    // the simulator's own admin API (not Marketo)
    r("GET", "/__sim/state", "admin", &[], N, admin::state),
    r("POST", "/__sim/clock/advance", "admin", &[], J, admin::advance_clock),
    r("GET", "/__sim/counters", "admin", &[], N, admin::counters),
    r("GET", "/__sim/log", "admin", &[], N, admin::log),
    r("POST", "/__sim/faults", "admin", &[], J, admin::set_faults),
    r("POST", "/__sim/tokens/expire", "admin", &[], N, admin::expire_tokens),
    r("GET", "/__sim/leads", "admin", &[], N, admin::list_leads),
    r("POST", "/__sim/leads", "admin", &[], J, admin::create_lead),
    r("GET", "/__sim/leads/{id}", "admin", &[], N, admin::get_lead),
    r("POST", "/__sim/leads/{id}", "admin", &[], J, admin::edit_lead),
    r("DELETE", "/__sim/leads/{id}", "admin", &[], N, admin::delete_lead),
    r("POST", "/__sim/leads/{id}/merge", "admin", &[], J, admin::merge_leads),
    r("POST", "/__sim/companies", "admin", &[], J, admin::upsert_company),
    r("DELETE", "/__sim/companies/{externalCompanyId}", "admin", &[], N, admin::delete_company),
    r("POST", "/__sim/visits", "admin", &[], J, admin::log_visits),
];

/// Why no route matched.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No template matches the path (610).
    NotFound,
    /// A template matches but not with this method (605).
    Method,
}

fn match_segment(template: &str, actual: &str, params: &mut HashMap<String, String>) -> bool {
    match (template.find('{'), template.find('}')) {
        (Some(open), Some(close)) if open < close => {
            let prefix = &template[..open];
            let suffix = &template[close + 1..];
            if actual.len() <= prefix.len() + suffix.len()
                || !actual.starts_with(prefix)
                || !actual.ends_with(suffix)
            {
                return false;
            }
            let value = &actual[prefix.len()..actual.len() - suffix.len()];
            params.insert(template[open + 1..close].to_string(), value.to_string());
            true
        }
        _ => template == actual,
    }
}

/// Returns the route serving `method path`, with its path parameters. Literal templates win
/// over parameterised ones.
///
/// # Errors
///
/// Returns [`NoRoute`] when nothing serves the path or the method.
pub fn find(
    method: &str,
    path: &str,
) -> Result<(&'static Route, HashMap<String, String>), NoRoute> {
    let actual: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_found = false;
    let mut best: Option<(&'static Route, HashMap<String, String>, usize)> = None;
    for route in ROUTES {
        let template: Vec<&str> = route.path.split('/').collect();
        if template.len() != actual.len() {
            continue;
        }
        let mut params = HashMap::new();
        if !template
            .iter()
            .zip(&actual)
            .all(|(t, a)| match_segment(t, a, &mut params))
        {
            continue;
        }
        path_found = true;
        if route.method != method {
            continue;
        }
        let literal = template.iter().filter(|t| !t.contains('{')).count();
        if best.as_ref().is_none_or(|(_, _, l)| literal > *l) {
            best = Some((route, params, literal));
        }
    }
    match best {
        Some((route, params, _)) => Ok((route, params)),
        None if path_found => Err(NoRoute::Method),
        None => Err(NoRoute::NotFound),
    }
}

/// Returns `input` of a JSON body as objects.
pub fn input_objects(req: &Req) -> Vec<Map<String, Value>> {
    req.b("input")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_object().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Encodes an offset paging token.
pub fn offset_token(offset: usize) -> String {
    data_encoding::BASE32.encode(format!("off:{offset}").as_bytes())
}

/// Decodes an offset paging token (0 when absent).
///
/// # Errors
///
/// Returns a 1003 answer for a malformed token.
pub fn offset_from(req: &Req) -> Result<usize, Reply> {
    let Some(token) = req.q("nextPageToken") else {
        return Ok(0);
    };
    data_encoding::BASE32
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("off:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| Reply::err("1003", "Invalid nextPageToken"))
}

/// Returns `batchSize` (1..=300, default 300).
///
/// # Errors
///
/// Returns a 1003 answer when it is out of range.
pub fn batch_size(req: &Req) -> Result<usize, Reply> {
    match req.q("batchSize") {
        None => Ok(300),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=300).contains(&n) => Ok(n),
            _ => Err(Reply::err(
                "1003",
                format!("Invalid batchSize '{text}', must be 1 to 300"),
            )),
        },
    }
}

/// Returns one page of `items` and the token for the next.
pub fn paged(items: Vec<Value>, offset: usize, size: usize) -> Reply {
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(size).collect();
    let next = (offset + size < total).then(|| offset_token(offset + size));
    Reply::page(page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_routes_win_and_methods_are_checked() {
        let (route, _) = find("GET", "/rest/v1/leads/describe.json").unwrap();
        assert_eq!(route.path, "/rest/v1/leads/describe.json");
        let (route, params) = find("GET", "/rest/v1/lead/42.json").unwrap();
        assert_eq!(route.path, "/rest/v1/lead/{leadId}.json");
        assert_eq!(params["leadId"], "42");
        assert_eq!(
            find("GET", "/rest/v1/leads/delete.json").unwrap_err(),
            NoRoute::Method
        );
        assert_eq!(
            find("GET", "/rest/v1/nothing.json").unwrap_err(),
            NoRoute::NotFound
        );
    }
}
