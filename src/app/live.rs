//! Reading both sides' live schemas for `validate` and `mappings suggest`: the Marketo client and
//! the CRM adapter are built from the settings, and every object the mappings name is described.
//!
//! Failures never abort: a missing setting, bad credentials or an unreachable host become one
//! [`Problem`] naming the setting to fix, and the objects that could be read are still returned.

use std::collections::BTreeSet;

use secrecy::ExposeSecret;
use tracing::debug;

use crate::config::{LoadedMapping, MarketoSettings, Problem, Settings};
use crate::mapping::SchemaSet;
use crate::marketo::Client;

/// The file name problems about settings carry.
pub(crate) const SETTINGS: &str = "settings";

/// The objects the mappings of `sync.objects` name on each side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedObjects {
    /// Marketo objects (`lead`, `company`, a custom object's API name).
    pub marketo: BTreeSet<String>,
    /// Marketo activity type ids of the activities file.
    pub activity_types: BTreeSet<i64>,
    /// CRM objects.
    pub crm: BTreeSet<String>,
    /// The Marketo folders static list mappings create missing lists in (`[lists] folder`).
    pub list_folders: BTreeSet<String>,
}

/// Returns the objects the mappings of `settings.sync.objects` name on both sides.
pub fn named_objects(settings: &Settings, mappings: &[LoadedMapping]) -> NamedObjects {
    let mut named = NamedObjects::default();
    for m in mappings
        .iter()
        .filter(|m| settings.sync.objects.contains(&m.object))
    {
        let f = &m.file;
        if !f.crm_object.is_empty() {
            named.crm.insert(f.crm_object.clone());
        }
        if f.is_activities() {
            for a in &f.activities {
                named.activity_types.insert(i64::from(a.type_id));
                if let Some(o) = &a.crm_object {
                    named.crm.insert(o.clone());
                }
            }
        } else if !f.marketo_object.is_empty() {
            named.marketo.insert(f.marketo_schema_object());
        }
        if let Some(folder) = f
            .lists
            .as_ref()
            .filter(|l| l.create_missing)
            .and_then(|l| l.folder.as_deref())
            .filter(|f| !f.trim().is_empty())
        {
            named.list_folders.insert(folder.trim().to_owned());
        }
    }
    named
}

/// Returns the live schemas of every object the mappings name (Marketo objects by name,
/// activity types as `activity:<id>`, CRM objects by name), with a problem for each side that
/// could not be reached and a warning for each object that could not be described (the schema
/// checks then report the object as unknown, with suggestions).
pub async fn fetch_schemas(
    settings: &Settings,
    mappings: &[LoadedMapping],
) -> (SchemaSet, Vec<Problem>) {
    fetch_named(settings, &named_objects(settings, mappings)).await
}

/// Returns the live schemas of the named objects, like [`fetch_schemas`].
pub async fn fetch_named(settings: &Settings, named: &NamedObjects) -> (SchemaSet, Vec<Problem>) {
    let mut set = SchemaSet::default();
    let mut problems = Vec::new();
    fetch_marketo(settings, named, &mut set, &mut problems).await;
    fetch_crm(settings, named, &mut set, &mut problems).await;
    (set, problems)
}

/// Returns the Marketo client configured by `[marketo]` ([`MarketoSettings::client_config`]), or
/// the problem naming the setting.
///
/// A one-shot check retries a failed call once (the daemon's client retries for ~20 s), so an
/// unreachable host is reported at once.
fn client(m: &MarketoSettings) -> Result<Client, Box<Problem>> {
    let mut config = m.client_config().map_err(|text| {
        let key = if text.contains("client_id") {
            "marketo.client_id"
        } else if text.contains("secret") {
            "marketo.client_secret"
        } else if text.contains("base_url") || text.contains("munchkin") {
            "marketo.base_url"
        } else {
            "marketo"
        };
        Box::new(Problem::error(
            SETTINGS,
            key,
            format!("{text}; it is needed to read Marketo's schemas (or run with --offline)"),
        ))
    })?;
    config.retry.max_retries = config.retry.max_retries.min(1);
    Client::new(config).map_err(|e| {
        Box::new(Problem::error(
            SETTINGS,
            "marketo",
            format!("cannot build the client: {e}"),
        ))
    })
}

/// Returns the problem for a Marketo error that ends all reading (credentials, network), or
/// `None` for an error of one object.
fn fatal_marketo(m: &MarketoSettings, error: &crate::marketo::Error) -> Option<Problem> {
    use crate::marketo::Error as E;
    let base = m.rest_base_url().unwrap_or_default();
    match error {
        E::BadCredentials { client_id, .. } => Some(Problem::error(
            SETTINGS,
            "marketo.client_secret",
            format!(
                "Marketo at {base} rejected client `{client_id}`: check marketo.client_id and the secret (MKSYNC__MARKETO__CLIENT_SECRET or marketo.client_secret_file)"
            ),
        )),
        E::Transport { source, .. } => Some(Problem::error(
            SETTINGS,
            "marketo.base_url",
            format!("cannot reach Marketo at {base}: {}", short(source)),
        )),
        E::Identity { message, .. } => Some(Problem::error(
            SETTINGS,
            "marketo.base_url",
            format!("Marketo identity at {base} did not issue a token: {message}"),
        )),
        E::HttpStatus { status, .. } => Some(Problem::error(
            SETTINGS,
            "marketo.base_url",
            format!("Marketo at {base} answered HTTP {status}: is this the REST API endpoint?"),
        )),
        E::DailyBudgetSpent { .. } | E::Config { .. } => {
            Some(Problem::error(SETTINGS, "marketo", error.to_string()))
        }
        _ => None,
    }
}

/// Returns the first line of an error's own message, without its chain of causes.
fn short(error: &(dyn std::error::Error + 'static)) -> String {
    let text = error.to_string();
    let kind = if let Some(e) = error.downcast_ref::<reqwest::Error>() {
        if e.is_timeout() {
            " (timed out)"
        } else if e.is_connect() {
            " (connection failed)"
        } else {
            ""
        }
    } else {
        ""
    };
    format!("{}{kind}", text.lines().next().unwrap_or_default())
}

async fn fetch_marketo(
    settings: &Settings,
    named: &NamedObjects,
    set: &mut SchemaSet,
    problems: &mut Vec<Problem>,
) {
    if named.marketo.is_empty() && named.activity_types.is_empty() {
        return;
    }
    let m = &settings.marketo;
    let client = match client(m) {
        Ok(c) => c,
        Err(p) => {
            problems.push(*p);
            return;
        }
    };
    for object in &named.marketo {
        match client.object_schema(object).await {
            Ok(schema) => set.insert(crate::mapping::programs::complete(schema)),
            Err(e) => {
                if let Some(p) = fatal_marketo(m, &e) {
                    problems.push(p);
                    return;
                }
                // The schema checks report the object as unknown, with suggestions.
                debug!(object = %object, error = %e, "marketo object not described");
            }
        }
    }
    if named
        .marketo
        .contains(crate::mapping::programs::PROGRAM_MEMBER)
    {
        match client.channels().await {
            Ok(channels) => set.insert(crate::mapping::programs::channels_schema(&channels)),
            Err(e) => problems.push(fatal_marketo(m, &e).unwrap_or_else(|| {
                Problem::warning(
                    SETTINGS,
                    "marketo",
                    format!("cannot read Marketo's program channels, so the status map is not checked: {e}"),
                )
            })),
        }
    }
    if named.marketo.contains(crate::mapping::lists::STATIC_LIST) {
        match all_list_names(&client).await {
            Ok(names) => set.insert(crate::mapping::lists::list_names_schema(
                names.iter().map(String::as_str),
            )),
            Err(e) => problems.push(fatal_marketo(m, &e).unwrap_or_else(|| {
                Problem::warning(
                    SETTINGS,
                    "marketo",
                    format!(
                        "cannot read Marketo's static lists, so the list names are not checked: {e}"
                    ),
                )
            })),
        }
    }
    if !named.list_folders.is_empty() {
        let mut found = Some(Vec::new());
        for folder in &named.list_folders {
            match client.folder_by_name(folder).await {
                Ok(f) => found
                    .iter_mut()
                    .for_each(|v| v.extend(f.clone().map(|f| f.name))),
                Err(e) => {
                    problems.push(fatal_marketo(m, &e).unwrap_or_else(|| {
                        Problem::warning(
                            SETTINGS,
                            "marketo",
                            format!(
                                "cannot read Marketo folder `{folder}`, so it is not checked: {e}"
                            ),
                        )
                    }));
                    found = None;
                    break;
                }
            }
        }
        if let Some(found) = found {
            set.insert(crate::mapping::lists::list_folders_schema(
                found.iter().map(String::as_str),
            ));
        }
    }
    if named.activity_types.is_empty() {
        return;
    }
    match client.activity_types().await {
        Ok(types) => {
            for t in types
                .iter()
                .filter(|t| named.activity_types.contains(&t.id))
            {
                set.insert(crate::mapping::activities::activity_schema(t));
            }
        }
        Err(e) => problems.push(fatal_marketo(m, &e).unwrap_or_else(|| {
            Problem::error(
                SETTINGS,
                "marketo",
                format!("cannot read Marketo's activity types: {e}"),
            )
        })),
    }
}

async fn fetch_crm(
    settings: &Settings,
    named: &NamedObjects,
    set: &mut SchemaSet,
    problems: &mut Vec<Problem>,
) {
    if named.crm.is_empty() {
        return;
    }
    let c = &settings.crm;
    let needs_url = crate::crm::registry::find(&c.adapter)
        .is_ok_and(|a| a.connection == crate::crm::registry::Connection::Url);
    if needs_url && c.url.is_none() {
        problems.push(Problem::error(
            SETTINGS,
            "crm.url",
            "crm.url is required to read the CRM's schemas: set MKSYNC__CRM__URL or crm.url_file (or run with --offline)",
        ));
        return;
    }
    let crm = match crate::crm::registry::build(&c.adapter, c.url.as_ref(), &c.options).await {
        Ok(crm) => crm,
        Err(e) => {
            let key = match &e {
                crate::crm::CrmError::UnknownAdapter { .. } => "crm.adapter",
                crate::crm::CrmError::Config { .. }
                | crate::crm::CrmError::UnknownObject { .. }
                | crate::crm::CrmError::UnknownName { .. }
                | crate::crm::CrmError::Schema { .. } => "crm.options",
                _ => "crm.url",
            };
            // The error never holds the URL; only its scheme is shown.
            let scheme = c
                .url
                .as_ref()
                .map(|u| {
                    format!(
                        " ({})",
                        u.expose_secret().split(':').next().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            problems.push(Problem::error(
                SETTINGS,
                key,
                format!("cannot open the `{}` CRM{scheme}: {}", c.adapter, short(&e)),
            ));
            return;
        }
    };
    for object in &named.crm {
        match crm.describe(object).await {
            Ok(schema) => set.insert(schema),
            Err(e) => {
                if e.is_retryable() {
                    problems.push(Problem::error(
                        SETTINGS,
                        "crm.url",
                        format!("cannot read the CRM's schema of `{object}`: {}", short(&e)),
                    ));
                    return;
                }
                debug!(object = %object, error = %e, "crm object not described");
            }
        }
    }
}

/// Returns the names of every static list (`GET /rest/v1/lists.json`, 300 a page).
async fn all_list_names(
    client: &crate::marketo::Client,
) -> Result<Vec<String>, crate::marketo::Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.get_lists(&[], &[], token.as_deref()).await?;
        out.extend(page.records.into_iter().map(|l| l.name));
        match page.next_page_token {
            Some(t) if page.more_result => token = Some(t),
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_settings_are_named_without_a_network() {
        let settings = Settings::default();
        let (set, problems) = fetch_schemas(&settings, &[]).await;
        assert!(set.marketo.is_empty() && problems.is_empty());

        let text = "marketo_object = \"lead\"\ncrm_object = \"contacts\"\n";
        let m = crate::config::parse_mapping("leads", std::path::Path::new("leads.toml"), text)
            .unwrap();
        let mut settings = Settings::default();
        settings.sync.objects = vec!["leads".into()];
        let (_, problems) = fetch_schemas(&settings, &[m]).await;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["marketo.base_url", "crm.url"], "{problems:?}");
    }
}
