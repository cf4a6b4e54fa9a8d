//! Typed, layered settings and mapping files.
//!
//! Settings come from `config/default.toml`, then `config/<env>.toml`, then `MKSYNC__SECTION__KEY`
//! environment variables. Secrets (the Marketo client secret, CRM and store URLs with a password,
//! the webhook secret) come only from the environment or from files named by `*_file` keys;
//! written inline in a settings file they are an error. Every problem names its file, dotted key,
//! line (where the format allows) and reason, and all of them are reported at once.

mod mapping_file;
mod problem;
mod render;
mod settings;

use std::path::Path;

pub use mapping_file::{
    ACTIVITIES, ActivityMapping, CUSTOM_ACTIVITY, CustomActivityMapping, Direction, FieldMapping,
    Keys, ListSelection, LoadedMapping, MAX_CUSTOM_ACTIVITY_ATTRIBUTES, MappingFile, Policy,
    ProgramSelection, StatusMapping, Transform, check_across, check_mapping,
    custom_activity_schema_object, field_path, load_mappings, parse_mapping, parse_mapping_lenient,
};
pub use problem::{
    Lenient, Problem, Segment, Severity, closest, column_of, did_you_mean, dotted, from_toml_error,
    line_of, line_of_path, parse_all, parse_lenient, span_of_path,
};
pub use render::{auto_color, render_problems, stderr_color};
pub use settings::{
    BootstrapSettings, CrmSettings, DeletePolicy, ENV_PREFIX, HttpSettings, LEAD_LIST_KEYS,
    MarketoSettings, Settings, SettingsSource, StoreSettings, SyncSettings, check_settings,
    earliest_watermark, load_for_store, load_settings, parse_instant,
};

/// Errors of loading settings and mapping files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more problems; each names its file, key and reason. Displayed as the same
    /// diagnostics `validate` prints (plain, errors first).
    #[error("invalid configuration ({} problem(s)):\n{}", .0.len(), render(.0, false))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Returns false: a configuration error needs an operator, not a retry.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// Returns the problems.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
        }
    }
}

impl ConfigError {
    /// Returns the problems rendered as diagnostics (errors before warnings), coloured when
    /// `color` is true.
    pub fn render(&self, color: bool) -> String {
        render(self.problems(), color)
    }
}

fn render(problems: &[Problem], color: bool) -> String {
    let mut sorted = problems.to_vec();
    sorted.sort_by_key(|p| p.severity);
    render_problems(&sorted, color).trim_end().to_owned()
}

/// Settings and mapping files, loaded and checked together.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// One mapping file per object in `sync.objects`.
    pub mappings: Vec<LoadedMapping>,
    /// Warnings found on the way.
    pub warnings: Vec<Problem>,
}

/// Returns the settings and mappings from a config directory, or every problem found.
///
/// # Errors
///
/// Returns [`ConfigError::Invalid`] with every problem found (settings and mappings, warnings
/// included) when any of them is an error.
pub fn load(source: &SettingsSource) -> Result<Loaded, ConfigError> {
    // The same checks as `validate --offline`, so a refused start lists every problem at once.
    let (settings, mappings, problems) = check_offline(source);
    match settings {
        Some(settings) if !problems.iter().any(Problem::is_error) => Ok(Loaded {
            settings,
            mappings,
            warnings: problems,
        }),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// Returns every problem of a config directory that can be found without a network: settings,
/// mapping syntax and keys, duplicates, secrets written inline, cross-file consistency. The
/// settings are returned as far as they could be read, even when they have errors, so that the
/// checks that depend on them still run.
pub fn check_offline(
    source: &SettingsSource,
) -> (Option<Settings>, Vec<LoadedMapping>, Vec<Problem>) {
    let (settings, mut problems) = check_settings(source);
    match settings {
        Some(s) => {
            let (mappings, more) = load_mappings(&source.dir, &s);
            problems.extend(more);
            (Some(s), mappings, problems)
        }
        None => {
            // Settings are broken, but the mapping files can still be checked on their own.
            let (mappings, more) = load_mappings_without_settings(&source.dir);
            problems.extend(more);
            (None, mappings, problems)
        }
    }
}

fn load_mappings_without_settings(dir: &Path) -> (Vec<LoadedMapping>, Vec<Problem>) {
    let mappings_dir = dir.join("mappings");
    let mut objects: Vec<String> = std::fs::read_dir(&mappings_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    objects.sort();
    let mut settings = Settings::default();
    settings.sync.objects = objects;
    load_mappings(dir, &settings)
}
