//! Compiles mapping files against both sides' live schemas into plans; canonical records,
//! transforms, per-field diffs and hashes; mapping suggestions. The `validate` and `mappings
//! suggest` commands, which read the live schemas, are in `app::validate` and `app::live`.
//!
//! A [`Plan`] is what the engine uses: [`Plan::to_canonical`] turns a raw record of either side
//! into mapped, normalised fields under their canonical names; [`Plan::render`] turns canonical
//! fields into a write for one side; [`Plan::diff`] compares canonical records with the agreed
//! base; [`Plan::disable_field`] takes one field out when its schema drifts.
//!
//! What depends only on the kind of Marketo object a mapping file names (`lead`, `company`,
//! `program_member`, a custom object, ...) is answered by the one registry in [`kinds`].

pub mod activities;
mod columns;
mod compile;
pub mod custom_activities;
pub mod kinds;
pub mod lists;
mod normalise;
mod plan;
pub mod programs;
mod suggest;

pub use columns::ColumnMapping;
pub use compile::{
    COMPANY_FIELDS_ON_LEADS, Plans, SchemaSet, carries, compile, compile_activities, compile_all,
    validate_against, validate_one_side,
};
pub use custom_activities::{CustomActivityPlan, compile_custom_activity};
pub use kinds::{MarketoKind, SchemaSource, SchemaTtl};
pub use normalise::{apply, apply_text, convert_for, normalise};
pub use plan::{Conversion, FieldChange, MappingError, Plan, PlanField, diff};
pub use suggest::{render_toml, suggest};

pub use crate::config::{Direction, Policy, Transform};
