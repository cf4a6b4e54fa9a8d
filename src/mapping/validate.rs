//! The bodies of `marketo-sync validate` and `marketo-sync mappings suggest`.

use std::io::Write;
use std::path::PathBuf;

use super::compile::{SchemaSet, validate_against};
use super::suggest::{render_toml, suggest};
use crate::config::{Problem, SettingsSource, check_offline};
use crate::model::Side;

/// Arguments of `validate`.
#[derive(Debug, Clone)]
pub struct ValidateArgs {
    /// The config directory.
    pub config: PathBuf,
    /// A directory of `ObjectSchema` JSON snapshots to check mappings against, offline.
    pub schemas: Option<PathBuf>,
    /// The environment name (selects `<env>.toml`).
    pub env: Option<String>,
    /// Skips reading live schemas when no `schemas` directory is given.
    pub offline: bool,
}

/// Returns every problem of a config directory: settings, mappings, and, with schemas, the
/// mappings against them.
pub fn validate_dir(source: &SettingsSource, schemas: Option<&SchemaSet>) -> Vec<Problem> {
    let (settings, mappings, mut problems) = check_offline(source);
    if let (Some(settings), Some(schemas)) = (settings, schemas) {
        // Schema checks only make sense on files that parsed and passed the offline checks.
        let broken: std::collections::BTreeSet<String> = problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.file.clone())
            .collect();
        let clean: Vec<_> = mappings
            .into_iter()
            .filter(|m| !broken.contains(&m.file_name()))
            .collect();
        problems.extend(validate_against(&settings, &clean, schemas));
    }
    problems
}

/// Runs `validate`: prints every problem to `out` and returns true when there is no error.
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
    let mut problems = Vec::new();
    let schemas = match &args.schemas {
        Some(dir) => {
            let (set, p) = SchemaSet::load_dir(dir);
            problems.extend(p);
            Some(set)
        }
        None if args.offline => None,
        None => {
            let (settings, mappings, _) = check_offline(source);
            match settings {
                Some(settings) => {
                    let (set, p) = super::live::fetch_schemas(&settings, &mappings).await;
                    let reachable = !p.iter().any(Problem::is_error);
                    problems.extend(p);
                    // Unreachable: the schema checks would only repeat "no such object".
                    reachable.then_some(set)
                }
                None => None,
            }
        }
    };
    problems.extend(validate_dir(source, schemas.as_ref()));
    for p in &problems {
        writeln!(out, "{p}")?;
    }
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    let how = match (&args.schemas, args.offline) {
        (Some(_), _) => "against schema snapshots",
        (None, true) => "offline",
        (None, false) => "against live Marketo and CRM schemas",
    };
    if errors == 0 {
        writeln!(
            out,
            "configuration in {} is valid {how} ({warnings} warning(s))",
            args.config.display()
        )?;
    } else {
        writeln!(out, "{errors} error(s), {warnings} warning(s)")?;
    }
    Ok(errors == 0)
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
