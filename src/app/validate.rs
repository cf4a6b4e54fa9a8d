//! The bodies of `marketo-sync validate` and `marketo-sync mappings suggest`.
//!
//! `validate` checks everything it can in one pass: settings (an unknown key is reported and the
//! other checks still run), mapping files, the mappings against the live schemas or snapshots,
//! and the state store. Errors come before warnings; each is placed by file, line and column and
//! rendered with a caret, or printed as JSON with `--json`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{
    ENV_PREFIX, LoadedMapping, Problem, Segment, Settings, SettingsSource, Severity, check_offline,
    render_problems, span_of_path,
};
use crate::mapping::{SchemaSet, render_toml, suggest, validate_against};
use crate::model::Side;

/// Arguments of `validate`.
#[derive(Debug, Clone, Default)]
pub struct ValidateArgs {
    /// The config directory.
    pub config: PathBuf,
    /// A directory of `ObjectSchema` JSON snapshots to check mappings against, offline.
    pub schemas: Option<PathBuf>,
    /// The environment name (selects `<env>.toml`).
    pub env: Option<String>,
    /// Reads no schema and opens no store: only the files are checked.
    pub offline: bool,
    /// Prints a JSON array of problems instead of diagnostics.
    pub json: bool,
    /// Warnings fail the check too.
    pub deny_warnings: bool,
    /// Colours the diagnostics (a terminal without `NO_COLOR`).
    pub color: bool,
}

/// One problem as `validate --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct JsonProblem<'a> {
    /// `error` or `warning`.
    pub severity: Severity,
    /// The file (or `environment (VAR)`, or `settings`).
    pub file: &'a str,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The 1-based column, when known.
    pub column: Option<usize>,
    /// The dotted key (`marketo.calls_per_20s`, `fields[3].crm`); empty for the whole file.
    pub key: &'a str,
    /// What is wrong.
    pub message: &'a str,
    /// How to fix it, when there is more to say.
    pub help: Option<&'a str>,
}

impl<'a> From<&'a Problem> for JsonProblem<'a> {
    fn from(p: &'a Problem) -> Self {
        JsonProblem {
            severity: p.severity,
            file: &p.file,
            line: p.line,
            column: p.column,
            key: &p.key,
            message: &p.reason,
            help: p.help.as_deref(),
        }
    }
}

/// Returns every problem of a config directory: settings, mappings, and, with schemas, the
/// mappings against them.
pub fn validate_dir(source: &SettingsSource, schemas: Option<&SchemaSet>) -> Vec<Problem> {
    let (settings, mappings, mut problems) = check_offline(source);
    if let (Some(settings), Some(schemas)) = (settings, schemas) {
        let more = schema_checks(&settings, mappings, schemas, &problems);
        problems.extend(more);
    }
    problems
}

/// Returns the problems of the mappings against `schemas`. A mapping file with an error of its
/// own is still checked, but nothing is reported under the entry that error is about (the same
/// field, the keys): those checks would only repeat it or follow from it. An error about the
/// whole file (its objects, its match fields) leaves the file out.
fn schema_checks(
    settings: &Settings,
    mappings: Vec<LoadedMapping>,
    schemas: &SchemaSet,
    found: &[Problem],
) -> Vec<Problem> {
    let mut tainted: HashMap<&str, Vec<String>> = HashMap::new();
    for p in found.iter().filter(|p| p.is_error()) {
        tainted
            .entry(p.file.as_str())
            .or_default()
            .push(entry_of(&p.key));
    }
    let checked: Vec<LoadedMapping> = mappings
        .into_iter()
        .filter(|m| {
            tainted
                .get(m.file_name().as_str())
                .is_none_or(|entries| entries.iter().all(|e| !e.is_empty()))
        })
        .collect();
    validate_against(settings, &checked, schemas)
        .into_iter()
        .filter(|p| {
            tainted.get(p.file.as_str()).is_none_or(|entries| {
                entries.iter().all(|e| {
                    p.key != *e
                        && !p.key.starts_with(&format!("{e}."))
                        && !p.key.starts_with(&format!("{e}["))
                })
            })
        })
        .collect()
}

/// Returns the entry a mapping-file key belongs to: `fields[2]` for `fields[2].crm`,
/// `activities[0]` for `activities[0].fields[1].direction`, `keys` for `keys.crm_marketo_id`;
/// empty for a key about the whole file.
fn entry_of(key: &str) -> String {
    for list in ["fields[", "activities["] {
        if let Some(rest) = key.strip_prefix(list)
            && let Some(end) = rest.find(']')
        {
            return format!("{list}{}", &rest[..=end]);
        }
    }
    if key == "keys" || key.starts_with("keys.") {
        return "keys".to_owned();
    }
    String::new()
}

/// Returns the mappings whose file has no error of its own in `found`.
fn without_broken(mappings: Vec<LoadedMapping>, found: &[Problem]) -> Vec<LoadedMapping> {
    let broken: BTreeSet<&str> = found
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.file.as_str())
        .collect();
    mappings
        .into_iter()
        .filter(|m| !broken.contains(m.file_name().as_str()))
        .collect()
}

/// Runs `validate`: prints every problem to `out` and returns true when the configuration
/// passes (no error, and no warning either with `deny_warnings`).
///
/// Mappings are checked against the snapshots in `args.schemas`, else (unless `args.offline`)
/// against the live schemas of Marketo and the CRM, read with the configured credentials.
///
/// # Errors
///
/// Returns an I/O error when `out` cannot be written.
pub async fn run_validate(args: &ValidateArgs, out: &mut dyn Write) -> std::io::Result<bool> {
    let source = SettingsSource::new(&args.config, args.env.as_deref());
    run_validate_with(&source, args, out).await
}

/// Returns every problem `validate` finds, errors first (each group in the order found).
pub async fn collect_problems(source: &SettingsSource, args: &ValidateArgs) -> Vec<Problem> {
    let (settings, mappings, mut problems) = check_offline(source);
    if let Some(settings) = &settings {
        let schemas = match &args.schemas {
            Some(dir) => {
                let (set, p) = SchemaSet::load_dir(dir);
                problems.extend(p);
                Some(set)
            }
            None if args.offline => None,
            None => {
                let (set, p) = super::live::fetch_schemas(settings, &mappings).await;
                let failed =
                    |prefix: &str| p.iter().any(|p| p.is_error() && p.key.starts_with(prefix));
                let reachable = !p.iter().any(Problem::is_error);
                // One side unreadable (a missing secret, an unreachable host): the other side's
                // checks still run.
                let one_side = match (failed("marketo"), failed("crm")) {
                    (true, false) => Some(Side::Crm),
                    (false, true) => Some(Side::Marketo),
                    _ => None,
                };
                // A setting already reported (a missing secret, no base URL) is not reported
                // again as "cannot read the schemas".
                let known: BTreeSet<String> = problems
                    .iter()
                    .filter(|p| p.is_error())
                    .map(|p| p.key.clone())
                    .collect();
                problems.extend(
                    p.into_iter()
                        .filter(|p| !known.contains(&p.key))
                        .map(|p| place_setting(source, p)),
                );
                if let (Some(side), false) = (one_side, reachable) {
                    let clean = without_broken(mappings.clone(), &problems);
                    problems.extend(crate::mapping::validate_one_side(
                        settings, &clean, &set, side,
                    ));
                }
                // Unreachable: the schema checks would only repeat "no such object".
                reachable.then_some(set)
            }
        };
        if let Some(schemas) = &schemas {
            let more = schema_checks(settings, mappings, schemas, &problems);
            problems.extend(more);
        }
        if !args.offline {
            let already = problems
                .iter()
                .any(|p| p.is_error() && p.key.starts_with("store."));
            if !already {
                let store = check_store(settings).await;
                problems.extend(store.into_iter().map(|p| place_setting(source, p)));
            }
        }
    }
    problems.sort_by_key(|p| p.severity);
    problems
}

/// Runs `validate` on an explicit settings source (tests inject the environment).
///
/// # Errors
///
/// Returns an I/O error when `out` cannot be written.
pub async fn run_validate_with(
    source: &SettingsSource,
    args: &ValidateArgs,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let problems = collect_problems(source, args).await;
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    let passed = errors == 0 && (warnings == 0 || !args.deny_warnings);
    if args.json {
        let json: Vec<JsonProblem<'_>> = problems.iter().map(JsonProblem::from).collect();
        serde_json::to_writer_pretty(&mut *out, &json)?;
        writeln!(out)?;
        return Ok(passed);
    }
    write!(out, "{}", render_problems(&problems, args.color))?;
    let how = match (&args.schemas, args.offline) {
        (Some(_), _) => "against schema snapshots",
        (None, true) => "offline",
        (None, false) => "against live Marketo and CRM schemas and the state store",
    };
    if errors == 0 {
        let denied = if warnings > 0 && args.deny_warnings {
            "; warnings are denied (--deny-warnings)"
        } else {
            ""
        };
        writeln!(
            out,
            "configuration in {} is valid {how} ({warnings} warning(s){denied})",
            args.config.display()
        )?;
    } else {
        writeln!(out, "{errors} error(s), {warnings} warning(s)")?;
    }
    Ok(passed)
}

/// Returns a problem about a setting (file `settings`) placed where the setting is: the
/// environment variable that sets it, else its line in `<env>.toml` or `default.toml`.
fn place_setting(source: &SettingsSource, problem: Problem) -> Problem {
    if problem.file != super::live::SETTINGS || problem.key.is_empty() {
        return problem;
    }
    let var = format!(
        "{ENV_PREFIX}__{}",
        problem.key.replace('.', "__").to_ascii_uppercase()
    );
    let vars: HashMap<String, String> = match &source.vars {
        Some(v) => v.clone(),
        None => std::env::vars().collect(),
    };
    if vars.contains_key(&var) {
        return Problem {
            file: format!("environment ({var})"),
            ..problem
        };
    }
    let path: Vec<Segment> = problem
        .key
        .split('.')
        .map(|s| Segment::Key(s.to_owned()))
        .collect();
    let mut files = Vec::new();
    if let Some(env) = &source.env {
        files.push(source.dir.join(format!("{env}.toml")));
    }
    files.push(source.dir.join("default.toml"));
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Some(span) = exact_span(&text, &path) else {
            continue;
        };
        return Problem {
            file: file.display().to_string(),
            ..problem
        }
        .at_span(&text, span);
    }
    problem
}

/// Returns the span of the key at `path` only when the key itself is in the text (not a parent).
fn exact_span(text: &str, path: &[Segment]) -> Option<Range<usize>> {
    let span = span_of_path(text, path)?;
    let parent = span_of_path(text, &path[..path.len().saturating_sub(1)]);
    (path.len() > 1 && parent.as_ref() != Some(&span) || path.len() == 1).then_some(span)
}

/// Returns the problems of the state store named by `store.url`: unreachable, unreadable, or
/// migrated by a newer build than this one. Nothing is created or migrated; a SQLite file that
/// does not exist yet is fine (the service creates it).
pub async fn check_store(settings: &Settings) -> Vec<Problem> {
    let url = settings.store.url.expose_secret();
    let scheme = url.split(':').next().unwrap_or_default();
    let result = match scheme {
        "sqlite" => sqlite_version(url).await,
        "postgres" | "postgresql" => postgres_version(url).await,
        _ => return Vec::new(), // reported by the settings checks
    };
    let (backend, known) = match scheme {
        "sqlite" => ("SQLite", crate::store::SqliteStore::latest_migration()),
        _ => ("PostgreSQL", crate::store::PgStore::latest_migration()),
    };
    match result {
        Ok(Some(version)) if version > known => vec![
            Problem::error(
                super::live::SETTINGS,
                "store.url",
                format!(
                    "the {backend} state store was migrated to version {version} by a newer \
                     marketo-sync; this build knows versions up to {known}"
                ),
            )
            .with_help("run the newer marketo-sync, or point store.url at another store"),
        ],
        Ok(_) => Vec::new(),
        Err(reason) => vec![Problem::error(
            super::live::SETTINGS,
            "store.url",
            format!("cannot open the {backend} state store: {reason}"),
        )],
    }
}

/// The migration version of a SQLite store, opened read-only; `None` when the file does not
/// exist yet or was never migrated.
async fn sqlite_version(url: &str) -> Result<Option<i64>, String> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("invalid SQLite URL: {e}"))?
        .read_only(true)
        .create_if_missing(false);
    let path = options.get_filename().to_path_buf();
    if url.contains(":memory:") || !path.exists() {
        return Ok(None);
    }
    let mut conn = options
        .connect()
        .await
        .map_err(|e| format!("{}: {}", path.display(), first_line(&e)))?;
    let read = async {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut conn)
        .await?;
        if table.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar::<_, Option<i64>>(MAX_VERSION)
            .fetch_one(&mut conn)
            .await
    };
    read.await
        .map_err(|e: sqlx::Error| format!("{}: {}", path.display(), first_line(&e)))
}

/// The migration version of a PostgreSQL store; the URL (which may hold a password) is never
/// shown, only its host.
async fn postgres_version(url: &str) -> Result<Option<i64>, String> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| "the configured host".to_owned());
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| "invalid PostgreSQL URL (not shown: it may hold a password)".to_owned())?;
    let connect = tokio::time::timeout(std::time::Duration::from_secs(10), options.connect());
    let mut conn = match connect.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(format!("cannot connect to {host}: {}", first_line(&e))),
        Err(_) => return Err(format!("cannot connect to {host}: timed out after 10 s")),
    };
    let read = async {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename = '_sqlx_migrations'",
        )
        .fetch_optional(&mut conn)
        .await?;
        if table.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar::<_, Option<i64>>(MAX_VERSION)
            .fetch_one(&mut conn)
            .await
    };
    read.await
        .map_err(|e: sqlx::Error| format!("{host}: {}", first_line(&e)))
}

const MAX_VERSION: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";

fn first_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Arguments of `mappings suggest`.
#[derive(Debug, Clone)]
pub struct SuggestArgs {
    /// The config directory; the proposal goes to `<config>/mappings/<name>.suggested.toml`.
    pub config: PathBuf,
    /// A directory of `ObjectSchema` JSON snapshots holding both objects; `None` reads both
    /// schemas live with the settings of `config`.
    pub schemas: Option<PathBuf>,
    /// The environment name (selects `<env>.toml`) for live schemas.
    pub env: Option<String>,
    /// The Marketo object (`lead`, `company`, a custom object's API name, ...).
    pub marketo_object: String,
    /// The CRM object.
    pub crm_object: String,
    /// The mapping name (default: the CRM object).
    pub name: Option<String>,
    /// Where to write instead (`-` for standard output).
    pub output: Option<PathBuf>,
}

/// Runs `mappings suggest`: reads both schemas, writes a proposed mapping file and returns its
/// path (or `-`).
///
/// # Errors
///
/// Returns a message naming the missing schema, the setting that kept a live schema from being
/// read, or the file that could not be written.
pub async fn run_suggest(args: &SuggestArgs, out: &mut dyn Write) -> Result<String, String> {
    let source = SettingsSource::new(&args.config, args.env.as_deref());
    run_suggest_with(&source, args, out).await
}

/// Runs `mappings suggest` on an explicit settings source (tests inject the environment).
///
/// # Errors
///
/// As [`run_suggest`].
pub async fn run_suggest_with(
    source: &SettingsSource,
    args: &SuggestArgs,
    out: &mut dyn Write,
) -> Result<String, String> {
    let (set, problems, from) = match &args.schemas {
        Some(dir) => {
            let (set, problems) = SchemaSet::load_dir(dir);
            (set, problems, dir.display().to_string())
        }
        None => {
            let (settings, problems) = crate::config::load_settings(source);
            let Some(settings) = settings else {
                let errors: Vec<String> = problems
                    .iter()
                    .filter(|p| p.is_error())
                    .map(ToString::to_string)
                    .collect();
                return Err(errors.join("\n"));
            };
            let mut named = super::live::NamedObjects::default();
            named.marketo.insert(args.marketo_object.clone());
            named.crm.insert(args.crm_object.clone());
            let (set, problems) = super::live::fetch_named(&settings, &named).await;
            (set, problems, "the live schemas".to_owned())
        }
    };
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    let marketo = set
        .get(Side::Marketo, &args.marketo_object)
        .ok_or_else(|| {
            format!(
                "no Marketo schema for `{}` in {from}{}",
                args.marketo_object,
                crate::config::did_you_mean(
                    &args.marketo_object,
                    set.marketo.keys().map(String::as_str)
                )
            )
        })?;
    let crm = set.get(Side::Crm, &args.crm_object).ok_or_else(|| {
        format!(
            "no CRM schema for `{}` in {from}{}",
            args.crm_object,
            crate::config::did_you_mean(&args.crm_object, set.crm.keys().map(String::as_str))
        )
    })?;
    let file = suggest(marketo, crm);
    let text = render_toml(&file, marketo, crm);
    let target = match &args.output {
        Some(p) => p.clone(),
        None => {
            let name = args.name.clone().unwrap_or_else(|| args.crm_object.clone());
            args.config
                .join("mappings")
                .join(format!("{name}.suggested.toml"))
        }
    };
    if target.as_os_str() == "-" {
        out.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        return Ok("-".to_owned());
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&target, text).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    let _ = writeln!(
        out,
        "wrote {} ({} field(s)); review it, rename it to <object>.toml and run validate",
        target.display(),
        file.fields.len()
    );
    Ok(target.display().to_string())
}
