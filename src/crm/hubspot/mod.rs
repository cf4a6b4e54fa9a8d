//! The HubSpot CRM adapter (`crm.adapter = "hubspot"`), over HubSpot's public REST API: CRM v3
//! objects, search, batch and properties, the owners listing, and v4 associations.
//!
//! Each configured object is backed by a HubSpot object type (contacts, companies, deals, a
//! custom `2-...` type), by the owners listing (read-only), or by the labelled associations from
//! one type to another (read-only; deal-contact labels are opportunity roles: one record per
//! deal, contact and association type, with the deal id, the contact id, the label as `role` and
//! `is_primary`).
//!
//! - Schemas come from the Properties API on every [`Crm::describe`]; a property deleted in
//!   HubSpot disappears from the schema and from reads.
//! - Changes are read by the search API sorted on the modified-time property
//!   (`lastmodifieddate` for contacts, `hs_lastmodifieddate` otherwise), re-reading an overlap
//!   window on every poll. A search pages through at most 10,000 results, so the feed narrows its
//!   time window before it reaches the cap (see [`feed`]); archived records (the listing with
//!   `archived=true`, by `archivedAt`) are deletes, and the ids in `hs_merged_object_ids` of a
//!   changed record are merges into it.
//! - Writes go by batches of at most 100: upserts keyed by a unique property holding the Marketo
//!   id, updates by `hs_object_id`, archives. HubSpot's per-record errors become typed refusals;
//!   a batch HubSpot refuses as a whole is split until the refusing record is alone (see
//!   [`write`]).
//! - Limits and retries live in [`client`].

pub(crate) mod client;
pub mod config;
mod contacts;
mod feed;
pub(crate) mod model;
pub mod prepare;
pub mod schema;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::model::{FieldDef, FieldType, Fields, ObjectSchema, Side, Value};

use super::{
    Capabilities, ChangeFeed, ChangePage, Crm, CrmError, CrmRecord, Cursor, DeleteFeed, FeedNeeds,
    Precision, UpsertMode, WriteResult,
};
use client::{Client, ClientSettings, Request};
pub use config::HubSpotOptions;
use config::{Kind, ObjectOptions};
use model::{BatchResponse, Collection, Owner, Property, PublicObject};
use schema::{ID_PROPERTY, MERGED_PROPERTY};

/// The adapter's registered name.
pub const ADAPTER_NAME: &str = "hubspot";
/// The most records one batch call takes.
pub const MAX_BATCH: usize = 100;
/// The most results one search page returns.
const SEARCH_PAGE: usize = 200;

/// A record object's properties and when they were read.
type ReadSchema = (tokio::time::Instant, Arc<Vec<FieldDef>>);

/// The HubSpot adapter.
pub struct HubSpotCrm {
    client: Client,
    options: HubSpotOptions,
    /// The properties of each record object, as last described, and when they were read.
    properties: RwLock<HashMap<String, ReadSchema>>,
}

impl std::fmt::Debug for HubSpotCrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpotCrm")
            .field("base_url", &self.options.base_url)
            .field("objects", &self.options.objects.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HubSpotCrm {
    /// Returns an adapter for `options`, reading the token from the file or environment variable
    /// they name; `base_url` (`crm.url`), when given, replaces the options' base URL.
    ///
    /// # Errors
    /// As [`HubSpotCrm::connect_with_token`], or a missing token.
    pub async fn connect(
        base_url: Option<&SecretString>,
        mut options: HubSpotOptions,
    ) -> Result<HubSpotCrm, CrmError> {
        if let Some(url) = base_url {
            use secrecy::ExposeSecret;
            options.base_url = url.expose_secret().to_owned();
        }
        let token = options.read_token()?;
        HubSpotCrm::connect_with_token(options, token).await
    }

    /// Returns an adapter for `options` authenticating with `token`, with every configured
    /// record object's properties read and checked.
    ///
    /// # Errors
    /// [`CrmError::Config`] for a bad base URL, [`CrmError::UnknownName`] for a configured
    /// property HubSpot does not have, [`CrmError::Schema`] for a Marketo-id property that is not
    /// unique, or a remote failure (a refused token included).
    pub async fn connect_with_token(
        options: HubSpotOptions,
        token: SecretString,
    ) -> Result<HubSpotCrm, CrmError> {
        let crm = HubSpotCrm {
            client: client_for(&options, token)?,
            options,
            properties: RwLock::new(HashMap::new()),
        };
        for (name, object) in &crm.options.objects {
            if object.kind() == Kind::Records {
                let props = crm.load_properties(name, object).await?;
                crm.check_object(name, object, &props)?;
            }
        }
        Ok(crm)
    }

    /// Returns how many requests the adapter has sent (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.client.requests_sent()
    }

    fn object(&self, object: &str) -> Result<&ObjectOptions, CrmError> {
        self.options
            .objects
            .get(object)
            .ok_or_else(|| CrmError::UnknownObject {
                object: object.to_owned(),
            })
    }

    fn check_object(
        &self,
        name: &str,
        o: &ObjectOptions,
        props: &[FieldDef],
    ) -> Result<(), CrmError> {
        let has = |p: &str| props.iter().any(|f| f.name == p);
        for p in o.properties.iter().flatten() {
            if !has(p) {
                return Err(CrmError::UnknownName {
                    object: name.to_owned(),
                    what: "property",
                    name: p.clone(),
                    context: format!(" in HubSpot object type `{}`", o.object_type),
                });
            }
        }
        if let Some(contact) = o.contact_field.as_deref().filter(|c| has(c)) {
            return Err(CrmError::Schema {
                object: name.to_owned(),
                message: format!(
                    "contact_field `{contact}` is a HubSpot property of `{}`; name a field that \
                     is not one (it is filled from the contact associations)",
                    o.object_type
                ),
            });
        }
        if let Some(key) = &o.marketo_id_property {
            let Some(field) = props.iter().find(|f| f.name == *key) else {
                return Err(CrmError::UnknownName {
                    object: name.to_owned(),
                    what: "property",
                    name: key.clone(),
                    context: format!(
                        " in HubSpot object type `{}` (create it as a unique single-line text \
                         property)",
                        o.object_type
                    ),
                });
            };
            if o.writable && !field.unique {
                return Err(CrmError::Schema {
                    object: name.to_owned(),
                    message: format!(
                        "marketo id property `{key}` does not require unique values \
                         (hasUniqueValue), so it cannot key upserts"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads the object's properties from the Properties API and caches them.
    async fn load_properties(
        &self,
        name: &str,
        o: &ObjectOptions,
    ) -> Result<Arc<Vec<FieldDef>>, CrmError> {
        let fields: Vec<FieldDef> = property_listing(&self.client, name, &o.object_type)
            .await?
            .iter()
            .map(schema::field_def)
            .collect();
        let fields = Arc::new(fields);
        let mut cache = self
            .properties
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(
            name.to_owned(),
            (tokio::time::Instant::now(), fields.clone()),
        );
        Ok(fields)
    }

    /// Returns the cached properties of a record object (reading them when not cached yet).
    async fn props(&self, name: &str) -> Result<Arc<Vec<FieldDef>>, CrmError> {
        self.props_within(name, Duration::MAX).await
    }

    /// Returns the properties of a record object, read again when the cached ones are older
    /// than `max_age`.
    async fn props_within(
        &self,
        name: &str,
        max_age: Duration,
    ) -> Result<Arc<Vec<FieldDef>>, CrmError> {
        let cached = self
            .properties
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, p)| p.clone());
        match cached {
            Some(p) => Ok(p),
            None => {
                let o = self.object(name)?;
                self.load_properties(name, o).await
            }
        }
    }

    /// Returns the properties a read asks for: the configured ones that still exist (every one
    /// when none are configured), plus the id, modified-time, Marketo-id and merge properties.
    fn read_list(o: &ObjectOptions, props: &[FieldDef]) -> Vec<String> {
        let exists = |p: &str| props.iter().any(|f| f.name == p);
        let mut list: Vec<String> = match &o.properties {
            Some(names) => names.iter().filter(|n| exists(n)).cloned().collect(),
            None => props.iter().map(|f| f.name.clone()).collect(),
        };
        let extra = [
            Some(ID_PROPERTY),
            Some(schema::modified_property(&o.object_type)),
            o.marketo_id_property.as_deref(),
            Some(MERGED_PROPERTY),
        ];
        for p in extra.into_iter().flatten() {
            if exists(p) && !list.iter().any(|l| l == p) {
                list.push(p.to_owned());
            }
        }
        list
    }

    /// Returns a HubSpot object as a record with the properties read.
    fn to_record(o: &ObjectOptions, props: &[FieldDef], object: &PublicObject) -> CrmRecord {
        let modified = schema::modified_property(&o.object_type);
        let modified_at = schema::modified_at(object, modified);
        let mut fields = Fields::new();
        for (name, raw) in &object.properties {
            if name == MERGED_PROPERTY {
                continue;
            }
            let Some(def) = props.iter().find(|f| f.name == *name) else {
                continue;
            };
            fields.insert(name.clone(), schema::parse_value(raw.as_deref(), &def.ty));
        }
        CrmRecord {
            id: object.id.clone(),
            modified_at,
            fields,
        }
    }

    /// Reads records by id with `batch/read`, 100 a call; archived and missing ids are left out,
    /// and so are merged-away ids (HubSpot answers them with the survivor, whose id differs).
    async fn read_by_ids(
        &self,
        name: &str,
        o: &ObjectOptions,
        ids: &[String],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let props = self.props(name).await?;
        let list = Self::read_list(o, &props);
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for chunk in ids.chunks(MAX_BATCH) {
            let inputs: Vec<serde_json::Value> = chunk
                .iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect();
            let body = serde_json::json!({ "properties": list, "inputs": inputs });
            let request = Request::post(
                format!("/crm/v3/objects/{}/batch/read", o.object_type),
                body,
                format!("read {name} by id"),
            )
            .q("archived", "false");
            let answer: BatchResponse<PublicObject> = match self.client.send(&request).await {
                Ok(a) => a,
                // Every id of the chunk is unknown.
                Err(e) if e.refused().is_some_and(|(status, _)| status == 404) => continue,
                Err(e) => return Err(e.into()),
            };
            for object in &answer.results {
                if !object.archived
                    && wanted.contains(object.id.as_str())
                    && seen.insert(object.id.clone())
                {
                    out.push(Self::to_record(o, &props, object));
                }
            }
        }
        Ok(out)
    }

    /// Searches records whose `field` is one of `values` (100 values a query), keeping those
    /// that match exactly, or ignoring case and surrounding white space when `folded`.
    async fn search_in(
        &self,
        name: &str,
        o: &ObjectOptions,
        field: &str,
        values: &[Value],
        folded: bool,
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let props = self.props(name).await?;
        let Some(def) = props.iter().find(|f| f.name == field).cloned() else {
            return Err(CrmError::UnknownName {
                object: name.to_owned(),
                what: "property",
                name: field.to_owned(),
                context: format!(" in HubSpot object type `{}`", o.object_type),
            });
        };
        if field == ID_PROPERTY {
            let ids: Vec<String> = values
                .iter()
                .filter(|v| !v.is_null())
                .map(Value::to_text)
                .collect();
            return self.read_by_ids(name, o, &ids).await;
        }
        let textual = def.ty.is_textual();
        let folded = folded && textual;
        let fold = |s: &str| s.trim().to_lowercase();
        let mut wanted: Vec<String> = Vec::new();
        for v in values.iter().filter(|v| !v.is_null()) {
            // HubSpot's IN operator takes string values in lowercase.
            let text = if textual {
                fold(&v.to_text())
            } else {
                v.to_text()
            };
            if !text.is_empty() && !wanted.contains(&text) {
                wanted.push(text);
            }
        }
        let list = Self::read_list(o, &props);
        let mut out: Vec<CrmRecord> = Vec::new();
        for chunk in wanted.chunks(MAX_BATCH) {
            let mut after: Option<String> = None;
            loop {
                let mut body = serde_json::json!({
                    "filterGroups": [{ "filters": [
                        { "propertyName": field, "operator": "IN", "values": chunk }
                    ] }],
                    "properties": list,
                    "limit": SEARCH_PAGE,
                });
                if let Some(a) = &after {
                    body["after"] = serde_json::json!(a);
                }
                let request = Request::post(
                    format!("/crm/v3/objects/{}/search", o.object_type),
                    body,
                    format!("find {name} by {field}"),
                );
                let answer: Collection<PublicObject> = self.client.send(&request).await?;
                for object in &answer.results {
                    let record = Self::to_record(o, &props, object);
                    let got = record.fields.get(field).cloned().unwrap_or(Value::Null);
                    let hit = values.iter().filter(|v| !v.is_null()).any(|v| {
                        if folded {
                            fold(&got.to_text()) == fold(&v.to_text())
                        } else {
                            got == *v || (textual && got.to_text() == v.to_text())
                        }
                    });
                    if hit && !out.iter().any(|r| r.id == record.id) {
                        out.push(record);
                    }
                }
                match answer.next_after() {
                    Some(a) if !answer.results.is_empty() => after = Some(a),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Lists every owner (active, or archived when `archived`).
    async fn owners(&self, archived: bool) -> Result<Vec<Owner>, CrmError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = Request::get("/crm/v3/owners".to_owned(), "list owners".to_owned())
                .q("limit", 100)
                .q("archived", archived);
            if let Some(a) = &after {
                request = request.q("after", a);
            }
            let page: Collection<Owner> = self.client.send(&request).await?;
            let next = page.next_after();
            let empty = page.results.is_empty();
            out.extend(page.results);
            match next {
                Some(a) if !empty => after = Some(a),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Returns a client for `options` authenticating with `token`.
///
/// # Errors
/// [`CrmError::Config`] for a bad base URL.
fn client_for(options: &HubSpotOptions, token: SecretString) -> Result<Client, CrmError> {
    let base_url = url::Url::parse(&options.base_url).map_err(|e| CrmError::Config {
        message: format!("hubspot adapter options: base_url is not a URL: {e}"),
    })?;
    let settings = ClientSettings {
        base_url,
        timeout: Duration::from_secs(options.timeout_seconds.max(1)),
        max_retries: options.max_retries,
        requests_per_10s: options.requests_per_10s(),
        search_per_second: options.search_per_second,
        daily_limit: options.daily_limit(),
    };
    Client::new(settings, token)
}

/// Returns the live (not archived) properties of `object_type` from the Properties API.
async fn property_listing(
    client: &Client,
    name: &str,
    object_type: &str,
) -> Result<Vec<Property>, CrmError> {
    let request = Request::get(
        format!("/crm/v3/properties/{object_type}"),
        format!("describe {name}"),
    )
    .q("archived", "false");
    let answer: Collection<Property> = client.send(&request).await?;
    Ok(answer.results.into_iter().filter(|p| !p.archived).collect())
}

/// The fields of an owner record.
const OWNER_FIELDS: &[(&str, FieldType)] = &[
    ("email", FieldType::Email),
    ("firstName", FieldType::Text { max_len: None }),
    ("lastName", FieldType::Text { max_len: None }),
    ("userId", FieldType::Integer),
];

fn owner_record(owner: &Owner) -> CrmRecord {
    let mut fields = Fields::new();
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    fields.insert("email".into(), text(&owner.email));
    fields.insert("firstName".into(), text(&owner.first_name));
    fields.insert("lastName".into(), text(&owner.last_name));
    fields.insert(
        "userId".into(),
        owner.user_id.map_or(Value::Null, Value::Int),
    );
    CrmRecord {
        id: owner.id.clone(),
        modified_at: owner
            .updated_at
            .as_deref()
            .and_then(schema::parse_instant)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        fields,
    }
}

/// Returns the fields of an association record.
fn association_fields(kind: &Kind) -> Vec<FieldDef> {
    let Kind::Associations {
        from,
        to,
        from_field,
        to_field,
        ..
    } = kind
    else {
        return Vec::new();
    };
    let reference = |name: &str, object: &str| FieldDef {
        read_only: true,
        searchable: true,
        ..FieldDef::new(
            name,
            FieldType::Reference {
                object: Some(object.to_owned()),
            },
        )
    };
    vec![
        reference(from_field, from),
        reference(to_field, to),
        FieldDef {
            read_only: true,
            ..FieldDef::new("role", FieldType::Text { max_len: None })
        },
        FieldDef {
            read_only: true,
            ..FieldDef::new("is_primary", FieldType::Boolean)
        },
    ]
}

fn merge_sort(records: &mut [CrmRecord]) {
    records.sort_by(|a, b| a.id.cmp(&b.id));
}

#[async_trait::async_trait]
impl Crm for HubSpotCrm {
    fn name(&self) -> &'static str {
        ADAPTER_NAME
    }

    async fn describe(&self, object: &str) -> Result<ObjectSchema, CrmError> {
        let o = self.object(object)?;
        let kind = o.kind();
        let (fields, id_field, dedupe) = match &kind {
            Kind::Records => {
                let ttl = Duration::from_secs(self.options.schema_ttl_seconds);
                let props = self.props_within(object, ttl).await?;
                let mut fields = (*props).clone();
                if let Some(contact) = &o.contact_field {
                    fields.push(contacts::field_def(contact));
                }
                if !o.writable {
                    for f in &mut fields {
                        f.read_only = true;
                    }
                }
                (
                    fields,
                    ID_PROPERTY.to_owned(),
                    o.marketo_id_property.iter().cloned().collect(),
                )
            }
            Kind::Owners => (
                OWNER_FIELDS
                    .iter()
                    .map(|(n, t)| FieldDef {
                        read_only: true,
                        searchable: true,
                        ..FieldDef::new(*n, t.clone())
                    })
                    .collect(),
                "id".to_owned(),
                Vec::new(),
            ),
            Kind::Associations { .. } => (association_fields(&kind), "id".to_owned(), Vec::new()),
        };
        Ok(ObjectSchema {
            side: Side::Crm,
            object: object.to_owned(),
            id_field: Some(id_field),
            dedupe_fields: dedupe,
            fields,
        })
    }

    fn capabilities(&self, object: &str) -> Result<Capabilities, CrmError> {
        let o = self.object(object)?;
        let overlap = self.options.overlap();
        let (field, delete_feed) = match o.kind() {
            Kind::Records => (
                schema::modified_property(&o.object_type).to_owned(),
                DeleteFeed::SoftOnly,
            ),
            Kind::Owners => ("updatedAt".to_owned(), DeleteFeed::SoftOnly),
            Kind::Associations { from, .. } => (
                schema::modified_property(&from).to_owned(),
                DeleteFeed::None,
            ),
        };
        Ok(Capabilities {
            change_feed: ChangeFeed::ModifiedSince { field, overlap },
            delete_feed,
            upsert: if o.writable {
                UpsertMode::NativeByExternalId
            } else {
                UpsertMode::None
            },
            max_batch_write: MAX_BATCH,
            timestamp_precision: Precision::Millis,
        })
    }

    async fn changes(
        &self,
        object: &str,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<ChangePage, CrmError> {
        let o = self.object(object)?;
        feed::changes(self, object, o, cursor, limit, FeedNeeds::All).await
    }

    async fn changes_for(
        &self,
        object: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        needs: FeedNeeds,
    ) -> Result<ChangePage, CrmError> {
        let o = self.object(object)?;
        feed::changes(self, object, o, cursor, limit, needs).await
    }

    async fn find(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        self.find_any(object, field, values, false).await
    }

    async fn find_folded(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
    ) -> Result<Vec<CrmRecord>, CrmError> {
        self.find_any(object, field, values, true).await
    }

    async fn get(&self, object: &str, ids: &[String]) -> Result<Vec<CrmRecord>, CrmError> {
        let o = self.object(object)?;
        match o.kind() {
            Kind::Records => {
                let mut records = self.read_by_ids(object, o, ids).await?;
                contacts::fill(self, o, &mut records).await?;
                Ok(records)
            }
            Kind::Owners => {
                let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
                let mut out: Vec<CrmRecord> = self
                    .owners(false)
                    .await?
                    .iter()
                    .filter(|w| wanted.contains(w.id.as_str()))
                    .map(owner_record)
                    .collect();
                merge_sort(&mut out);
                Ok(out)
            }
            Kind::Associations { .. } => {
                let mut froms: Vec<String> = Vec::new();
                for id in ids {
                    if let Some((from, _, _)) = feed::split_association_id(id)
                        && !froms.contains(&from)
                    {
                        froms.push(from);
                    }
                }
                let records = feed::association_records(self, o, &froms, &BTreeMap::new()).await?;
                let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
                Ok(records
                    .into_iter()
                    .filter(|r| wanted.contains(r.id.as_str()))
                    .collect())
            }
        }
    }

    async fn upsert(
        &self,
        object: &str,
        key_field: &str,
        batch: &[Fields],
    ) -> Result<Vec<WriteResult>, CrmError> {
        let o = self.object(object)?;
        let (batch, contact_ids) = contacts::split(o, batch);
        let mut results = write::upsert(self, object, o, key_field, &batch).await?;
        contacts::associate(self, object, o, &mut results, &contact_ids).await?;
        Ok(results)
    }

    async fn delete(&self, object: &str, ids: &[String]) -> Result<Vec<WriteResult>, CrmError> {
        let o = self.object(object)?;
        write::archive(self, object, o, ids).await
    }

    async fn healthcheck(&self) -> Result<(), CrmError> {
        let request =
            Request::get("/crm/v3/owners".to_owned(), "healthcheck".to_owned()).q("limit", 1);
        self.client.send_json(&request).await?;
        Ok(())
    }
}

impl HubSpotCrm {
    async fn find_any(
        &self,
        object: &str,
        field: &str,
        values: &[Value],
        folded: bool,
    ) -> Result<Vec<CrmRecord>, CrmError> {
        let o = self.object(object)?;
        match o.kind() {
            Kind::Records => {
                let mut records = self.search_in(object, o, field, values, folded).await?;
                contacts::fill(self, o, &mut records).await?;
                Ok(records)
            }
            Kind::Owners => {
                if !OWNER_FIELDS.iter().any(|(n, _)| *n == field) && field != "id" {
                    return Err(CrmError::UnknownName {
                        object: object.to_owned(),
                        what: "field",
                        name: field.to_owned(),
                        context: " of owners".to_owned(),
                    });
                }
                let fold = |v: &Value| {
                    let t = v.to_text();
                    if folded { t.trim().to_lowercase() } else { t }
                };
                let wanted: Vec<String> =
                    values.iter().filter(|v| !v.is_null()).map(fold).collect();
                let mut out: Vec<CrmRecord> = self
                    .owners(false)
                    .await?
                    .iter()
                    .map(owner_record)
                    .filter(|r| {
                        let got = if field == "id" {
                            Value::Text(r.id.clone())
                        } else {
                            r.fields.get(field).cloned().unwrap_or(Value::Null)
                        };
                        !got.is_null() && wanted.contains(&fold(&got))
                    })
                    .collect();
                merge_sort(&mut out);
                Ok(out)
            }
            Kind::Associations { ref from_field, .. } => {
                if field != from_field.as_str() {
                    return Err(CrmError::UnknownName {
                        object: object.to_owned(),
                        what: "field",
                        name: field.to_owned(),
                        context: format!(" (associations are found by `{from_field}`)"),
                    });
                }
                let froms: Vec<String> = values
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(Value::to_text)
                    .collect();
                feed::association_records(self, o, &froms, &BTreeMap::new()).await
            }
        }
    }
}
