//! The change feed.
//!
//! A poll reads the search API for records modified since the highest modified time delivered
//! minus the overlap window, sorted ascending on the modified-time property, one page per call.
//! HubSpot pages a search through at most 10,000 results (`search_result_cap`), so before the next
//! page would pass the cap, the feed starts a new query from the last modified time read (records
//! at that instant are read again: the engine deduplicates). When the whole capped window holds a
//! single instant, that instant is read by id (`hs_object_id` ascending, keyset), and the feed
//! then goes on strictly after it. The cursor holds the window, the `after` token and the keyset,
//! so a poll survives restarts between pages.
//!
//! After the search, a poll lists the archived records (`archived=true`) and reports those
//! archived since the last poll (minus the overlap) as deletes, and the records merged into
//! them as merged (a survivor archived before a search read it would never report them). A
//! changed record whose `hs_merged_object_ids` names other ids reports each of them as merged
//! into it.
//! Owners are listed (there is no owner search) and filtered on `updatedAt`; associations are
//! read for the `from` records the search returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::client::Request;
use super::config::{Kind, ObjectOptions};
use super::model::{AssociationsOf, BatchResponse, Collection, Owner, PublicObject};
use super::schema::{self, ID_PROPERTY, MERGED_PROPERTY};
use super::{HubSpotCrm, MAX_BATCH, SEARCH_PAGE, owner_record};
use crate::crm::{
    Change, ChangeKind, ChangePage, CrmError, CrmRecord, Cursor, DeleteHow, FeedNeeds, Tombstone,
};
use crate::model::{FieldDef, Fields, Value};

/// The most ids one v4 association batch read takes.
const ASSOCIATION_BATCH: usize = 1_000;

/// The cursor's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeedState {
    v: u32,
    /// The highest modified time delivered (epoch ms).
    #[serde(default)]
    high: Option<i64>,
    /// The search window of the poll in progress.
    #[serde(default)]
    window: Option<SearchWindow>,
    /// The archived listing of the poll in progress.
    #[serde(default)]
    archived: Option<ArchivedListing>,
    /// The highest `archivedAt` delivered (epoch ms).
    #[serde(default)]
    archived_high: Option<i64>,
    /// The kinds of change this cursor's reader needs (none: every kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    needs: Option<FeedNeeds>,
}

/// One search query: records modified at or after `from` (strictly after when `strict`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchWindow {
    from: i64,
    #[serde(default)]
    strict: bool,
    /// HubSpot's paging token within the query.
    #[serde(default)]
    after: Option<String>,
    /// Results read by this query so far (the offset the cap applies to).
    #[serde(default)]
    read: usize,
    /// Reading the single instant `from` by id: the last id read ("" before the first page).
    #[serde(default)]
    tie: Option<String>,
}

/// The archived listing in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ArchivedListing {
    /// Archives at or after this instant are reported (epoch ms).
    since: i64,
    #[serde(default)]
    after: Option<String>,
}

fn parse_cursor(object: &str, cursor: Option<&Cursor>) -> Result<FeedState, CrmError> {
    match cursor {
        None => Ok(FeedState {
            v: 1,
            ..FeedState::default()
        }),
        Some(c) => c.decode(object, 1, |s: &FeedState| s.v),
    }
}

/// Returns one page of changes of `object`, reading only what `needs` asks for: `Upserts`
/// skips the archived listing; `Deletes` searches only the records that absorbed a merge
/// (`hs_merged_object_ids` set) and lists the archived ones; `All` does both in full.
pub(super) async fn changes(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    cursor: Option<&Cursor>,
    limit: usize,
    needs: FeedNeeds,
) -> Result<ChangePage, CrmError> {
    let mut state = parse_cursor(name, cursor)?;
    let overlap = i64::try_from(crm.options.overlap().as_millis()).unwrap_or(i64::MAX);
    let kind = o.kind();
    if state.needs.unwrap_or(FeedNeeds::All) != needs {
        // A cursor written for other needs (an older version read everything): start a new
        // poll from its high marks rather than follow paging tokens of another query.
        state.window = None;
        state.archived = None;
    }
    state.needs = (needs != FeedNeeds::All).then_some(needs);
    if state.window.is_none() && state.archived.is_none() {
        start_poll(&mut state, &kind, needs, overlap, o.mergeable());
    }
    let mut changes = Vec::new();
    if let Some(window) = state.window.take() {
        let merges_only = needs == FeedNeeds::Deletes;
        let (mut page, next) = match &kind {
            Kind::Owners => owners_page(crm, window).await?,
            _ => search_page(crm, name, o, &kind, window, limit, merges_only).await?,
        };
        for c in &page {
            let at = c.modified_at.timestamp_millis();
            if state.high.is_none_or(|h| at > h) {
                state.high = Some(at);
            }
        }
        changes.append(&mut page);
        match next {
            Some(w) => state.window = Some(w),
            None if matches!(kind, Kind::Associations { .. }) || needs == FeedNeeds::Upserts => {}
            None => state.archived = Some(archived_listing(&state, overlap)),
        }
    } else if let Some(listing) = state.archived.take() {
        let (mut page, next) = archived_page(crm, name, o, &kind, &listing).await?;
        for c in &page {
            let at = c.modified_at.timestamp_millis();
            if state.archived_high.is_none_or(|h| at > h) {
                state.archived_high = Some(at);
            }
        }
        changes.append(&mut page);
        state.archived = next.map(|after| ArchivedListing {
            since: listing.since,
            after: Some(after),
        });
    }
    let more = state.window.is_some() || state.archived.is_some();
    changes.sort_by_key(|a| a.modified_at);
    tracing::debug!(object = %name, changes = changes.len(), more, ?needs, "hubspot changes read");
    let next = Cursor(
        serde_json::to_value(&state).map_err(|e| CrmError::BadCursor {
            object: name.to_owned(),
            message: e.to_string(),
        })?,
    );
    Ok(ChangePage {
        changes,
        next,
        more,
    })
}

/// Starts a new poll: the search window from the high mark minus the overlap; for a deletes-only
/// read of owners and custom objects (never merged) the archived listing at once, and of
/// associations (whose deletes the feed does not report) nothing.
fn start_poll(state: &mut FeedState, kind: &Kind, needs: FeedNeeds, overlap: i64, mergeable: bool) {
    match (needs, kind) {
        (FeedNeeds::Deletes, Kind::Associations { .. }) => {}
        (FeedNeeds::Deletes, Kind::Owners) => {
            state.archived = Some(archived_listing(state, overlap));
        }
        (FeedNeeds::Deletes, Kind::Records) if !mergeable => {
            state.archived = Some(archived_listing(state, overlap));
        }
        _ => {
            state.window = Some(SearchWindow {
                from: state.high.map_or(0, |h| h.saturating_sub(overlap)),
                ..SearchWindow::default()
            });
        }
    }
}

/// Returns a new archived listing from the archived high mark minus the overlap.
fn archived_listing(state: &FeedState, overlap: i64) -> ArchivedListing {
    ArchivedListing {
        since: state.archived_high.map_or(0, |h| h.saturating_sub(overlap)),
        after: None,
    }
}

/// Returns the search body of one window page.
pub(crate) fn search_body(
    modified: &str,
    window: &SearchWindow,
    properties: &[String],
    page: usize,
) -> serde_json::Value {
    let mut body = match &window.tie {
        Some(last) => {
            let mut filters = vec![serde_json::json!({
                "propertyName": modified, "operator": "EQ", "value": window.from.to_string()
            })];
            if !last.is_empty() {
                filters.push(serde_json::json!({
                    "propertyName": ID_PROPERTY, "operator": "GT", "value": last
                }));
            }
            serde_json::json!({
                "filterGroups": [{ "filters": filters }],
                "sorts": [{ "propertyName": ID_PROPERTY, "direction": "ASCENDING" }],
            })
        }
        None => serde_json::json!({
            "filterGroups": [{ "filters": [{
                "propertyName": modified,
                "operator": if window.strict { "GT" } else { "GTE" },
                "value": window.from.to_string()
            }] }],
            "sorts": [{ "propertyName": modified, "direction": "ASCENDING" }],
        }),
    };
    body["properties"] = serde_json::json!(properties);
    body["limit"] = serde_json::json!(page);
    if window.tie.is_none()
        && let Some(after) = &window.after
    {
        body["after"] = serde_json::json!(after);
    }
    body
}

/// Returns the window of the next page, or `None` when this query is done: `after` while the
/// next page stays within the cap, else a narrower query (see the module doc).
pub(crate) fn next_window(
    window: &SearchWindow,
    next_after: Option<String>,
    got: usize,
    last: Option<(i64, String)>,
    page: usize,
    cap: usize,
) -> Option<SearchWindow> {
    if let Some(tie) = &window.tie {
        // Keyset by id within one instant: done when a page comes back short.
        return Some(match (next_after, last) {
            (Some(_), Some((_, id))) if got > 0 => SearchWindow {
                tie: Some(id),
                ..window.clone()
            },
            _ => {
                let _ = tie;
                SearchWindow {
                    from: window.from,
                    strict: true,
                    ..SearchWindow::default()
                }
            }
        });
    }
    let after = next_after?;
    if got == 0 {
        return None;
    }
    let read = window.read + got;
    if read + page <= cap {
        return Some(SearchWindow {
            after: Some(after),
            read,
            ..window.clone()
        });
    }
    let (last_at, _) = last?;
    if last_at > window.from {
        Some(SearchWindow {
            from: last_at,
            ..SearchWindow::default()
        })
    } else {
        Some(SearchWindow {
            from: window.from,
            tie: Some(String::new()),
            ..SearchWindow::default()
        })
    }
}

async fn search_page(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    kind: &Kind,
    window: SearchWindow,
    limit: usize,
    merges_only: bool,
) -> Result<(Vec<Change>, Option<SearchWindow>), CrmError> {
    let cap = crm.options.search_result_cap;
    let page = limit.clamp(1, SEARCH_PAGE).min(cap);
    let (object_type, props_object) = match kind {
        Kind::Associations { from, .. } => (from.clone(), None),
        _ => (o.object_type.clone(), Some(name)),
    };
    let modified = schema::modified_property(&object_type);
    let (props, properties) = match props_object {
        Some(_) if merges_only => (
            None,
            vec![
                ID_PROPERTY.to_owned(),
                MERGED_PROPERTY.to_owned(),
                modified.to_owned(),
            ],
        ),
        Some(n) => {
            let props = crm.props(n).await?;
            let list = HubSpotCrm::read_list(o, &props);
            (Some(props), list)
        }
        None => (None, vec![ID_PROPERTY.to_owned(), modified.to_owned()]),
    };
    let mut body = search_body(modified, &window, &properties, page);
    if merges_only {
        merged_filter(&mut body);
    }
    let request = Request::post(
        format!("/crm/v3/objects/{object_type}/search"),
        body,
        format!("read changes of {name}"),
    );
    let answer: Collection<PublicObject> = crm.client.send(&request).await?;
    let read = Read {
        o,
        props: props.as_deref().map(Vec::as_slice),
        modified,
        merges_only,
    };
    let (changes, last) = read.changes(crm, &answer.results).await?;
    let next = next_window(
        &window,
        answer.next_after(),
        answer.results.len(),
        last,
        page,
        cap,
    );
    Ok((changes, next))
}

/// How one search page is turned into changes.
struct Read<'a> {
    o: &'a ObjectOptions,
    /// The object's properties (none for associations, and for a merges-only read).
    props: Option<&'a [FieldDef]>,
    modified: &'a str,
    merges_only: bool,
}

impl Read<'_> {
    /// Returns the changes of a search page (merge tombstones; records with their contact, or
    /// the associations of the records read) and the last instant and id read.
    async fn changes(
        &self,
        crm: &HubSpotCrm,
        results: &[PublicObject],
    ) -> Result<(Vec<Change>, Option<(i64, String)>), CrmError> {
        let mut last: Option<(i64, String)> = None;
        let mut changes = Vec::new();
        let mut modified_by_from = BTreeMap::new();
        let mut records: Vec<CrmRecord> = Vec::new();
        for object in results {
            let at = schema::modified_at(object, self.modified);
            last = Some((at.timestamp_millis(), object.id.clone()));
            match self.props {
                _ if self.merges_only => changes.extend(merges_into(object, at)),
                Some(props) => {
                    changes.extend(merges_into(object, at));
                    records.push(HubSpotCrm::to_record(self.o, props, object));
                }
                None => {
                    modified_by_from.insert(object.id.clone(), at);
                }
            }
        }
        if !records.is_empty() {
            super::contacts::fill(crm, self.o, &mut records).await?;
        }
        if !modified_by_from.is_empty() {
            let froms: Vec<String> = modified_by_from.keys().cloned().collect();
            records.extend(association_records(crm, self.o, &froms, &modified_by_from).await?);
        }
        changes.extend(records.into_iter().map(|record| Change {
            id: record.id,
            modified_at: record.modified_at,
            kind: ChangeKind::Upserted {
                fields: record.fields,
            },
        }));
        Ok((changes, last))
    }
}

/// Narrows a search body to the records that absorbed a merge (`hs_merged_object_ids` set).
fn merged_filter(body: &mut serde_json::Value) {
    if let Some(filters) = body["filterGroups"][0]["filters"].as_array_mut() {
        filters.push(serde_json::json!({
            "propertyName": MERGED_PROPERTY, "operator": "HAS_PROPERTY"
        }));
    }
}

/// Returns a merge tombstone for each id in the record's `hs_merged_object_ids`.
fn merges_into(object: &PublicObject, at: DateTime<Utc>) -> Vec<Change> {
    let Some(Some(merged)) = object.properties.get(MERGED_PROPERTY) else {
        return Vec::new();
    };
    merged
        .split(';')
        .map(str::trim)
        .filter(|id| !id.is_empty() && *id != object.id)
        .map(|id| Change {
            id: id.to_owned(),
            modified_at: at,
            kind: ChangeKind::Deleted(Tombstone {
                how: DeleteHow::Merged {
                    into: object.id.clone(),
                },
                at,
            }),
        })
        .collect()
}

async fn owners_page(
    crm: &HubSpotCrm,
    window: SearchWindow,
) -> Result<(Vec<Change>, Option<SearchWindow>), CrmError> {
    let mut request = Request::get(
        "/crm/v3/owners".to_owned(),
        "read changes of owners".to_owned(),
    )
    .q("limit", 100)
    .q("archived", false);
    if let Some(a) = &window.after {
        request = request.q("after", a);
    }
    let page: Collection<Owner> = crm.client.send(&request).await?;
    let changes = page
        .results
        .iter()
        .map(owner_record)
        .filter(|r| r.modified_at.timestamp_millis() >= window.from)
        .map(|r| Change {
            id: r.id,
            modified_at: r.modified_at,
            kind: ChangeKind::Upserted { fields: r.fields },
        })
        .collect();
    let next = match page.next_after() {
        Some(a) if !page.results.is_empty() => Some(SearchWindow {
            after: Some(a),
            ..window
        }),
        _ => None,
    };
    Ok((changes, next))
}

async fn archived_page(
    crm: &HubSpotCrm,
    name: &str,
    o: &ObjectOptions,
    kind: &Kind,
    listing: &ArchivedListing,
) -> Result<(Vec<Change>, Option<String>), CrmError> {
    let tombstone = |id: String, at: DateTime<Utc>| Change {
        id,
        modified_at: at,
        kind: ChangeKind::Deleted(Tombstone {
            how: DeleteHow::Soft,
            at,
        }),
    };
    if *kind == Kind::Owners {
        let mut request = Request::get(
            "/crm/v3/owners".to_owned(),
            "read archived owners".to_owned(),
        )
        .q("limit", 100)
        .q("archived", true);
        if let Some(a) = &listing.after {
            request = request.q("after", a);
        }
        let page: Collection<Owner> = crm.client.send(&request).await?;
        let changes = page
            .results
            .iter()
            .filter_map(|w| {
                let at = w.updated_at.as_deref().and_then(schema::parse_instant)?;
                (at.timestamp_millis() >= listing.since).then(|| tombstone(w.id.clone(), at))
            })
            .collect();
        let next = page.next_after().filter(|_| !page.results.is_empty());
        return Ok((changes, next));
    }
    let mut request = Request::get(
        format!("/crm/v3/objects/{}", o.object_type),
        format!("read archived {name}"),
    )
    .q("archived", true)
    .q("limit", MAX_BATCH)
    .q("properties", format!("{ID_PROPERTY},{MERGED_PROPERTY}"));
    if let Some(a) = &listing.after {
        request = request.q("after", a);
    }
    let page: Collection<PublicObject> = crm.client.send(&request).await?;
    // An archived record's merged-away records are reported as merged into it: a survivor
    // archived before the search read it never reports them otherwise.
    let changes = page
        .results
        .iter()
        .filter_map(|r| {
            let at = r
                .archived_at
                .as_deref()
                .or(r.updated_at.as_deref())
                .and_then(schema::parse_instant)?;
            (at.timestamp_millis() >= listing.since).then(|| {
                let mut changes = merges_into(r, at);
                changes.push(tombstone(r.id.clone(), at));
                changes
            })
        })
        .flatten()
        .collect();
    let next = page.next_after().filter(|_| !page.results.is_empty());
    Ok((changes, next))
}

/// Returns the id of an association record: `from:to:typeId`.
pub(crate) fn association_id(from: &str, to: &str, type_id: i64) -> String {
    format!("{from}:{to}:{type_id}")
}

/// Returns the parts of an association record id.
pub(crate) fn split_association_id(id: &str) -> Option<(String, String, i64)> {
    let mut parts = id.splitn(3, ':');
    let from = parts.next()?.to_owned();
    let to = parts.next()?.to_owned();
    let type_id = parts.next()?.parse().ok()?;
    Some((from, to, type_id))
}

/// Reads the associations of `froms` (v4 batch read) as records: one per associated record and
/// association type, modified when its `from` record was (`modified`; the epoch when unknown).
pub(crate) async fn association_records(
    crm: &HubSpotCrm,
    o: &ObjectOptions,
    froms: &[String],
    modified: &BTreeMap<String, DateTime<Utc>>,
) -> Result<Vec<CrmRecord>, CrmError> {
    let Kind::Associations {
        from,
        to,
        from_field,
        to_field,
        primary_label,
    } = o.kind()
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in &read_associations(crm, &from, &to, froms).await? {
        let at = modified
            .get(&item.from.id)
            .copied()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        for target in &item.to {
            let to_id = target.to_id();
            // Unlabelled HubSpot-defined types are the plain association; a labelled one is
            // a role. HubSpot keeps the plain association next to every label, so it is a
            // record of its own only for a pair with no label.
            let labelled = target
                .association_types
                .iter()
                .any(|t| t.label.as_deref().is_some_and(|l| !l.is_empty()));
            for t in &target.association_types {
                let label = t.label.clone().filter(|l| !l.is_empty());
                if labelled && label.is_none() {
                    continue;
                }
                let primary = match (&label, &primary_label) {
                    (Some(l), Some(p)) => l.eq_ignore_ascii_case(p),
                    _ => false,
                };
                let _ = &t.category;
                let mut fields = Fields::new();
                fields.insert(from_field.clone(), Value::Text(item.from.id.clone()));
                fields.insert(to_field.clone(), Value::Text(to_id.clone()));
                fields.insert("role".into(), label.map_or(Value::Null, Value::Text));
                fields.insert("is_primary".into(), Value::Bool(primary));
                out.push(CrmRecord {
                    id: association_id(&item.from.id, &to_id, t.type_id),
                    modified_at: at,
                    fields,
                });
            }
        }
    }
    Ok(out)
}

/// Reads the v4 associations from `froms` (records of type `from`) to records of type `to`,
/// 1,000 ids a batch read. Records without any association answer errors in a 207 (or a 404
/// when none of a batch has one): they are left out.
///
/// # Errors
/// A remote failure of a batch read.
pub(crate) async fn read_associations(
    crm: &HubSpotCrm,
    from: &str,
    to: &str,
    froms: &[String],
) -> Result<Vec<AssociationsOf>, CrmError> {
    let mut out = Vec::new();
    for chunk in froms.chunks(ASSOCIATION_BATCH) {
        let inputs: Vec<serde_json::Value> = chunk
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        let request = Request::post(
            format!("/crm/v4/associations/{from}/{to}/batch/read"),
            serde_json::json!({ "inputs": inputs }),
            format!("read {from}-{to} associations"),
        );
        match crm
            .client
            .send::<BatchResponse<AssociationsOf>>(&request)
            .await
        {
            Ok(answer) => out.extend(answer.results),
            Err(e) if e.refused().is_some_and(|(status, _)| status == 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_pages_with_after_until_the_cap_then_narrows() {
        let w = SearchWindow {
            from: 1_000,
            ..SearchWindow::default()
        };
        // 200 read of a cap of 1,000: keep paging.
        let next = next_window(
            &w,
            Some("200".into()),
            200,
            Some((1_500, "9".into())),
            200,
            1_000,
        )
        .unwrap();
        assert_eq!(next.after.as_deref(), Some("200"));
        assert_eq!(next.read, 200);
        // The next page would pass the cap: a new query from the last instant read.
        let at_cap = SearchWindow {
            read: 800,
            after: Some("800".into()),
            ..w.clone()
        };
        let next = next_window(
            &at_cap,
            Some("1000".into()),
            200,
            Some((2_000, "7".into())),
            200,
            1_000,
        )
        .unwrap();
        assert_eq!(
            next,
            SearchWindow {
                from: 2_000,
                ..SearchWindow::default()
            }
        );
        // The whole capped window is one instant: read it by id, then strictly after it.
        let next = next_window(
            &at_cap,
            Some("1000".into()),
            200,
            Some((1_000, "7".into())),
            200,
            1_000,
        )
        .unwrap();
        assert_eq!(next.tie.as_deref(), Some(""));
        let tie = next_window(
            &next,
            Some("x".into()),
            200,
            Some((1_000, "42".into())),
            200,
            1_000,
        )
        .unwrap();
        assert_eq!(tie.tie.as_deref(), Some("42"));
        let done = next_window(&tie, None, 10, Some((1_000, "52".into())), 200, 1_000).unwrap();
        assert_eq!(
            done,
            SearchWindow {
                from: 1_000,
                strict: true,
                ..SearchWindow::default()
            }
        );
        // No next page: the query is done.
        assert_eq!(
            next_window(&w, None, 3, Some((1_200, "1".into())), 200, 1_000),
            None
        );
    }

    #[test]
    fn search_bodies_filter_sort_and_page_as_hubspot_expects() {
        let w = SearchWindow {
            from: 5,
            after: Some("200".into()),
            ..SearchWindow::default()
        };
        let body = search_body("lastmodifieddate", &w, &["email".into()], 100);
        assert_eq!(
            body,
            serde_json::json!({
                "filterGroups": [{ "filters": [{ "propertyName": "lastmodifieddate", "operator": "GTE", "value": "5" }] }],
                "sorts": [{ "propertyName": "lastmodifieddate", "direction": "ASCENDING" }],
                "properties": ["email"], "limit": 100, "after": "200"
            })
        );
        let tie = SearchWindow {
            from: 5,
            tie: Some("9".into()),
            ..SearchWindow::default()
        };
        let body = search_body("hs_lastmodifieddate", &tie, &[], 100);
        assert_eq!(body["filterGroups"][0]["filters"][1]["operator"], "GT");
        assert_eq!(body["sorts"][0]["propertyName"], "hs_object_id");
        assert!(body.get("after").is_none());
    }

    #[test]
    fn merged_ids_become_merge_tombstones_into_the_survivor() {
        let object: PublicObject = serde_json::from_value(serde_json::json!({
            "id": "10", "properties": { "hs_merged_object_ids": "7;8" }
        }))
        .unwrap();
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let changes = merges_into(&object, at);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].id, "8");
        assert_eq!(
            changes[0].kind,
            ChangeKind::Deleted(Tombstone {
                how: DeleteHow::Merged { into: "10".into() },
                at
            })
        );
    }

    #[test]
    fn association_ids_round_trip_and_cursors_are_checked() {
        assert_eq!(
            split_association_id(&association_id("5", "7", 3)),
            Some(("5".into(), "7".into(), 3))
        );
        assert_eq!(split_association_id("5:7"), None);
        let bad = Cursor(serde_json::json!({ "v": 9 }));
        assert!(matches!(
            parse_cursor("contacts", Some(&bad)),
            Err(CrmError::BadCursor { .. })
        ));
    }
}
