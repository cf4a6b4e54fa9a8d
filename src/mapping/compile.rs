//! Compiling mapping files against both sides' schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::custom_activities::{CustomActivityPlan, compile_custom_activity};
use super::plan::{Plan, PlanField};
use crate::config::{
    Direction, FieldMapping, LoadedMapping, Problem, Segment, Settings, did_you_mean, field_path,
    parse_instant,
};
use crate::model::{FieldDef, FieldType, ObjectSchema, Side, Value};

pub use crate::marketo::endpoint::COMPANY_FIELDS_ON_LEADS;

/// Both sides' schemas by object name.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    /// Marketo schemas by Marketo object name (`lead`, `company`, `car_c`, `activity:1`, ...).
    pub marketo: BTreeMap<String, ObjectSchema>,
    /// CRM schemas by CRM object name.
    pub crm: BTreeMap<String, ObjectSchema>,
}

impl SchemaSet {
    /// Adds a schema under its side and object name.
    pub fn insert(&mut self, schema: ObjectSchema) {
        let map = match schema.side {
            Side::Marketo => &mut self.marketo,
            Side::Crm => &mut self.crm,
        };
        map.insert(schema.object.clone(), schema);
    }

    /// Returns a side's schema of an object.
    pub fn get(&self, side: Side, object: &str) -> Option<&ObjectSchema> {
        match side {
            Side::Marketo => self.marketo.get(object),
            Side::Crm => self.crm.get(object),
        }
    }

    /// Returns the schemas of every `*.json` file in `dir` (each an `ObjectSchema` or an array
    /// of them), with a problem per unreadable file.
    pub fn load_dir(dir: &Path) -> (SchemaSet, Vec<Problem>) {
        let mut set = SchemaSet::default();
        let mut problems = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(error) => {
                problems.push(Problem::error(
                    dir.display().to_string(),
                    "",
                    format!("cannot read the schema directory: {error}"),
                ));
                return (set, problems);
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(error) => {
                    problems.push(Problem::error(name, "", format!("cannot read: {error}")));
                    continue;
                }
            };
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum OneOrMany {
                One(ObjectSchema),
                Many(Vec<ObjectSchema>),
            }
            match serde_json::from_str::<OneOrMany>(&text) {
                Ok(OneOrMany::One(s)) => set.insert(s),
                Ok(OneOrMany::Many(v)) => v.into_iter().for_each(|s| set.insert(s)),
                Err(error) => problems.push(
                    Problem::error(
                        name,
                        "",
                        format!("is not an ObjectSchema JSON file: {error}"),
                    )
                    .at_line(Some(error.line())),
                ),
            }
        }
        (set, problems)
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::Marketo => "Marketo",
        Side::Crm => "CRM",
    }
}

fn infer_type(value: &Value) -> FieldType {
    match value {
        Value::Int(_) => FieldType::Integer,
        Value::Decimal(_) => FieldType::Decimal,
        Value::Bool(_) => FieldType::Boolean,
        Value::Date(_) => FieldType::Date,
        Value::DateTime(_) => FieldType::DateTime,
        Value::Text(s) if parse_instant(s).is_some() && s.len() > 10 => FieldType::DateTime,
        _ => FieldType::Text { max_len: None },
    }
}

/// Outcome of checking a write of `src` values into a `dst` field.
enum Fit {
    Ok,
    Lossy(String),
    No,
}

fn fits(src: &FieldType, dst: &FieldType) -> Fit {
    use FieldType as T;
    if dst.is_textual() || matches!(dst, T::Reference { .. }) {
        return Fit::Ok;
    }
    match (src, dst) {
        (T::Integer, T::Integer | T::Decimal) => Fit::Ok,
        (T::Decimal, T::Decimal) => Fit::Ok,
        (T::Decimal, T::Integer) => Fit::Lossy("fractions are refused".to_owned()),
        (T::Boolean, T::Boolean) => Fit::Ok,
        (T::Integer, T::Boolean) => Fit::Lossy("only 0 and 1 convert".to_owned()),
        (T::Boolean, T::Integer) => Fit::Ok,
        (T::Date, T::Date) | (T::DateTime, T::DateTime) | (T::Date, T::DateTime) => Fit::Ok,
        (T::DateTime, T::Date) => Fit::Lossy("the time of day is dropped".to_owned()),
        (T::Reference { .. }, T::Integer) => Fit::Lossy("only numeric ids convert".to_owned()),
        (s, _) if s.is_textual() => Fit::Lossy(format!(
            "text values must parse as {}; others are refused",
            dst.describe()
        )),
        _ => Fit::No,
    }
}

/// Returns true when every value of type `src` is written into a `dst` field as it is (no value
/// refused, none changed): what a field needs to keep syncing after its column was retyped.
pub fn carries(src: &FieldType, dst: &FieldType) -> bool {
    matches!(fits(src, dst), Fit::Ok)
}

fn text_limit(ty: &FieldType) -> Option<u32> {
    ty.max_len()
}

/// Characters of the longest Marketo id written as text: a 32-bit lead id has at most 10 digits,
/// a `marketoGUID` 36 characters.
const INT_ID_CHARS: u32 = 10;
const GUID_CHARS: u32 = 36;

/// Returns the type of the ids of `schema`'s records: its id field's type, else an integer for
/// an `id` field and text for anything else (`marketoGUID`).
pub(crate) fn id_type(schema: &ObjectSchema) -> FieldType {
    let id = schema.id_field.as_deref().unwrap_or("id");
    if id == "marketoGUID" {
        // A UUID, whatever length Describe declares for the field (255).
        return FieldType::Text {
            max_len: Some(GUID_CHARS),
        };
    }
    match schema.field(id) {
        Some(def) => def.ty.clone(),
        None if id == "id" => FieldType::Integer,
        None => FieldType::Text {
            max_len: Some(GUID_CHARS),
        },
    }
}

/// Returns why a key field of type `holder` cannot hold ids of type `id`, or `None` when it can.
///
/// Integer ids need an integer, decimal or long-enough text field; text ids (a `marketoGUID`, a
/// CRM's string primary key) need a text field at least as long. Booleans, dates, date-times,
/// picklists and emails never hold an id.
pub(crate) fn key_type_problem(holder: &FieldType, id: &FieldType) -> Option<String> {
    use FieldType as T;
    // Phone and URL fields are free-form text on both sides; an email field is checked as an
    // address, a picklist holds only its options.
    let plain_text = matches!(holder, T::Text { .. } | T::Other { .. } | T::Phone | T::Url);
    match id {
        T::Integer | T::Decimal | T::Reference { .. } => match holder {
            T::Integer | T::Decimal => None,
            T::Text { max_len: Some(n) } if *n < INT_ID_CHARS => Some(format!(
                "it holds at most {n} characters, and the ids are integers of up to {INT_ID_CHARS} digits"
            )),
            _ if plain_text => None,
            other => Some(format!(
                "it is {}, which cannot hold the integer ids",
                other.describe()
            )),
        },
        _ => {
            let need = id.max_len().unwrap_or(GUID_CHARS);
            match holder {
                T::Text { max_len: Some(n) } if *n < need => Some(format!(
                    "it holds at most {n} characters, and the ids are text of up to {need} characters"
                )),
                _ if plain_text => None,
                other => Some(format!(
                    "it is {}, which cannot hold the text ids ({})",
                    other.describe(),
                    id.describe()
                )),
            }
        }
    }
}

/// Returns the plan of one mapping file against both schemas, with every problem. The plan is
/// `None` when the object cannot be synced at all (a key field missing); a field with a problem
/// is kept but disabled, so the other fields still sync.
pub fn compile(
    m: &LoadedMapping,
    marketo: &ObjectSchema,
    crm: &ObjectSchema,
) -> (Option<Plan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let f = &m.file;
    let mut fatal = false;

    let key_marketo = f.keys.marketo_crm_key.clone().unwrap_or_default();
    let key_crm = f.keys.crm_marketo_id.clone().unwrap_or_default();
    for (side, schema, name, key) in [
        (Side::Marketo, marketo, &key_marketo, "keys.marketo_crm_key"),
        (Side::Crm, crm, &key_crm, "keys.crm_marketo_id"),
    ] {
        let path: Vec<Segment> = key.split('.').map(|s| Segment::Key(s.into())).collect();
        if name.is_empty() && side == Side::Crm && f.crm_read_only() {
            // Nothing is written to the CRM, so no CRM field holds the Marketo id.
            continue;
        }
        if name.is_empty() && side == Side::Marketo && f.is_program_kind() {
            // Programs and members are keyed by Marketo's own ids; no Marketo field holds the
            // CRM key.
            continue;
        }
        if name.is_empty() {
            problems.push(m.problem(true, &path, format!("required key `{key}` is missing")));
            fatal = true;
            continue;
        }
        match schema.field(name) {
            None => {
                problems.push(m.problem(true, &path, unknown(side, schema, name)));
                fatal = true;
            }
            Some(def) if !is_writable(side, schema, def) => {
                problems.push(m.problem(true, &path, format!(
                    "{} field `{name}` on `{}` is read-only, but the sync writes the key into it",
                    side_label(side), schema.object)));
                fatal = true;
            }
            Some(def) => {
                // The field holds the other side's record id: its type must be able to.
                let (other, holds) = match side {
                    Side::Marketo => (crm, "the CRM record's id"),
                    Side::Crm => (marketo, "the Marketo record's id"),
                };
                let natural_key = side == Side::Marketo
                    && f.kind().may_have_natural_key()
                    && schema.dedupe_fields.iter().any(|d| d == name);
                if !natural_key && let Some(why) = key_type_problem(&def.ty, &id_type(other)) {
                    problems.push(m.problem(
                        true,
                        &path,
                        format!(
                            "{} field `{name}` on `{}` cannot be the key: the sync writes {holds} \
                         into it, but {why}; the first sync would corrupt it",
                            side_label(side),
                            schema.object
                        ),
                    ));
                    fatal = true;
                }
            }
        }
    }

    let mut fields = Vec::new();
    let mut written: BTreeMap<Side, BTreeSet<String>> = BTreeMap::new();
    for (i, fm) in f.fields.iter().enumerate() {
        let (mut field, field_problems) = compile_field(m, &[], i, fm, marketo, crm, f.policy);
        problems.extend(field_problems);
        // The key fields hold the link itself and are written by the sync; a field mapping
        // that writes into one would overwrite the link with data.
        for (side, key, key_path) in [
            (Side::Marketo, &key_marketo, "keys.marketo_crm_key"),
            (Side::Crm, &key_crm, "keys.crm_marketo_id"),
        ] {
            // A natural key (a custom object keyed by one of its dedupe fields, e.g. a VIN) is
            // supplied by the mapped value itself, so mapping it is how the key gets written.
            let natural_key = side == Side::Marketo
                && f.kind().may_have_natural_key()
                && marketo.dedupe_fields.iter().any(|d| d == key);
            if !key.is_empty()
                && !natural_key
                && field.direction.writes_to(side)
                && field_name(&field, side) == Some(key.as_str())
            {
                let reason = format!(
                    "{} field `{key}` is the link key ({key_path}) and is written by the sync itself; \
                     remove this field or set a direction that does not write it",
                    side_label(side)
                );
                field.disabled.get_or_insert(reason.clone());
                let which = match side {
                    Side::Marketo => "marketo",
                    Side::Crm => "crm",
                };
                problems.push(m.problem(true, &fpath(&[], i, which), reason));
                break;
            }
        }
        for side in [Side::Marketo, Side::Crm] {
            if field.disabled.is_none()
                && field.direction.writes_to(side)
                && let Some(n) = field_name(&field, side)
            {
                written.entry(side).or_default().insert(n.to_owned());
            }
        }
        fields.push(field);
    }

    // Required fields nobody writes: creates on that side will be refused.
    for (side, schema, key) in [
        (Side::Marketo, marketo, &key_marketo),
        (Side::Crm, crm, &key_crm),
    ] {
        let done = written.get(&side);
        for def in &schema.fields {
            let covered = done.is_some_and(|d| d.contains(&def.name))
                || &def.name == key
                || schema.id_field.as_deref() == Some(def.name.as_str())
                || def.read_only;
            if def.required && !covered {
                problems.push(m.problem(false, &[Segment::Key("fields".into())], format!(
                    "required {} field `{}` on `{}` is not mapped to it; creating records there will fail",
                    side_label(side), def.name, schema.object)));
            }
        }
    }

    // The flag column of the `flag` deletion policy: a writable boolean CRM column.
    let mut crm_deleted_flag = f.keys.crm_deleted_flag.clone().filter(|c| !c.is_empty());
    if let Some(column) = crm_deleted_flag.clone() {
        let path = [
            Segment::Key("keys".into()),
            Segment::Key("crm_deleted_flag".into()),
        ];
        let reason = match crm.field(&column) {
            None => Some(unknown(Side::Crm, crm, &column)),
            Some(def) if def.read_only => Some(format!(
                "CRM field `{column}` on `{}` is read-only, but the flag deletion policy writes it",
                crm.object
            )),
            Some(def) if !matches!(def.ty, FieldType::Boolean) => Some(format!(
                "CRM field `{column}` on `{}` is {}, but the deletion flag must be a boolean column",
                crm.object,
                def.ty.describe()
            )),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            problems.push(m.problem(true, &path, reason));
            crm_deleted_flag = None;
        }
    }

    // Lead conversion: both keys together; the company reference must be a CRM field.
    let keys_path = |k: &str| [Segment::Key("keys".into()), Segment::Key(k.into())];
    let mut conversion = None;
    match (
        f.keys.crm_lead_object.clone().filter(|c| !c.is_empty()),
        f.keys.crm_lead_converted.clone().filter(|c| !c.is_empty()),
    ) {
        (Some(object), Some(field)) => {
            let mut company_ref = f.keys.crm_company_ref.clone().filter(|c| !c.is_empty());
            if let Some(column) = company_ref.clone()
                && crm.field(&column).is_none()
            {
                problems.push(m.problem(
                    true,
                    &keys_path("crm_company_ref"),
                    unknown(Side::Crm, crm, &column),
                ));
                company_ref = None;
            }
            conversion = Some(crate::mapping::Conversion {
                crm_lead_object: object,
                converted_field: field,
                company_ref,
            });
        }
        (None, None) => {}
        (Some(_), None) => problems.push(m.problem(
            true,
            &keys_path("crm_lead_object"),
            "`keys.crm_lead_object` needs `keys.crm_lead_converted` (the column naming the contact a lead was converted to); conversions are not followed".to_owned(),
        )),
        (None, Some(_)) => problems.push(m.problem(
            true,
            &keys_path("crm_lead_converted"),
            "`keys.crm_lead_converted` needs `keys.crm_lead_object` (the CRM object of unconverted leads); conversions are not followed".to_owned(),
        )),
    }

    if fatal {
        return (None, problems);
    }
    let plan = Plan {
        object: m.object.clone(),
        marketo_object: f.marketo_object.clone(),
        crm_object: f.crm_object.clone(),
        marketo_crm_key: key_marketo,
        crm_marketo_id: key_crm,
        crm_deleted_flag,
        conversion,
        match_fields: f.effective_match_fields(),
        policy: f.policy,
        fields,
    };
    (Some(plan), problems)
}

fn field_name(field: &PlanField, side: Side) -> Option<&str> {
    match side {
        Side::Marketo => field.marketo.as_deref(),
        Side::Crm => field.crm.as_deref(),
    }
}

fn unknown(side: Side, schema: &ObjectSchema, name: &str) -> String {
    format!(
        "unknown {} field `{name}` on `{}`{}",
        side_label(side),
        schema.object,
        did_you_mean(name, schema.fields.iter().map(|d| d.name.as_str()))
    )
}

fn fpath(base: &[Segment], i: usize, key: &str) -> Vec<Segment> {
    let mut p = base.to_vec();
    p.extend(field_path(i, key));
    p
}

pub(super) fn compile_field(
    m: &LoadedMapping,
    base: &[Segment],
    i: usize,
    fm: &FieldMapping,
    marketo: &ObjectSchema,
    crm: &ObjectSchema,
    default_policy: crate::config::Policy,
) -> (PlanField, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut disabled: Option<String> = None;
    let mut defs: BTreeMap<Side, &FieldDef> = BTreeMap::new();
    for (side, schema, key) in [(Side::Marketo, marketo, "marketo"), (Side::Crm, crm, "crm")] {
        let Some(name) = fm.side_name(side) else {
            continue;
        };
        match schema.field(name) {
            None => {
                let reason = unknown(side, schema, name);
                disabled.get_or_insert(reason.clone());
                problems.push(m.problem(true, &fpath(base, i, key), reason));
            }
            Some(def) => {
                if !is_writable(side, schema, def) && fm.direction.writes_to(side) {
                    let other = match side {
                        Side::Marketo => "to_crm",
                        Side::Crm => "to_marketo",
                    };
                    let reason = format!(
                        "{} field `{name}` on `{}` is read-only and cannot be written; set direction = \"{other}\"",
                        side_label(side),
                        schema.object
                    );
                    disabled.get_or_insert(reason.clone());
                    problems.push(m.problem(true, &fpath(base, i, key), reason));
                }
                defs.insert(side, def);
            }
        }
    }

    // A company-type field of a lead: Marketo refuses it through Sync Leads on a lead linked to
    // a company (1021), so the engine writes it to the lead's company instead (by
    // externalCompanyId) and through Sync Leads only for leads without a company.
    let routed_to_company = marketo.object == "lead"
        && fm
            .marketo
            .as_deref()
            .is_some_and(|n| COMPANY_FIELDS_ON_LEADS.contains(&n))
        && fm.direction.writes_to(Side::Marketo);
    if routed_to_company && let Some(name) = fm.marketo.as_deref() {
        problems.push(m.problem(
            false,
            &fpath(base, i, "marketo"),
            format!(
                "`{name}` is a company field: for a lead linked to a company (externalCompanyId) \
                 it is written to that company, which changes it for every lead of the company; \
                 leads without a company get it through Sync Leads"
            ),
        ));
    }

    // Type and length checks, per write direction.
    let mut value_too_long = false;
    for target in [Side::Marketo, Side::Crm] {
        if !fm.direction.writes_to(target) {
            continue;
        }
        let Some(dst) = defs.get(&target) else {
            continue;
        };
        let src_ty = match (&fm.constant, defs.get(&target.other())) {
            (Some(c), _) => infer_type(c),
            (None, _) if !fm.values.is_empty() => FieldType::Text { max_len: None },
            (None, Some(src)) => src.ty.clone(),
            (None, None) => continue,
        };
        let key = match target {
            Side::Marketo => "marketo",
            Side::Crm => "crm",
        };
        match fits(&src_ty, &dst.ty) {
            Fit::Ok => {}
            Fit::Lossy(why) => problems.push(m.problem(
                false,
                &fpath(base, i, key),
                format!(
                    "type mismatch: {} into {} field `{}` ({}): {why}",
                    src_ty.describe(),
                    side_label(target),
                    dst.name,
                    dst.ty.describe()
                ),
            )),
            Fit::No => {
                let reason = format!(
                    "type mismatch: {} values cannot be written into {} field `{}` ({})",
                    src_ty.describe(),
                    side_label(target),
                    dst.name,
                    dst.ty.describe()
                );
                disabled.get_or_insert(reason.clone());
                problems.push(m.problem(true, &fpath(base, i, key), reason));
            }
        }
        // No warning compares the two sides' declared lengths: Marketo declares 255 for nearly
        // every string, so it fired on most text fields of every shipped mapping and buried
        // the real problems, and nothing in a mapping file could silence it. A value that does
        // not fit is refused by the receiving side when it is written; a default or constant
        // that can never fit is an error below.
        // A default or constant longer than the target holds would be refused on every write.
        for (what, value) in [("default", &fm.default), ("constant", &fm.constant)] {
            if let (Some(limit), Some(Value::Text(t))) = (text_limit(&dst.ty), value) {
                let chars = t.chars().count();
                if chars > limit as usize && !value_too_long {
                    value_too_long = true;
                    let reason = format!(
                        "the {what} is {chars} characters long but {} field `{}` holds at most {limit}",
                        side_label(target),
                        dst.name
                    );
                    disabled.get_or_insert(reason.clone());
                    problems.push(m.problem(true, &fpath(base, i, what), reason));
                }
            }
        }
        if let FieldType::Picklist { options } = &dst.ty
            && target == Side::Crm
            && !fm.values.is_empty()
            && !options.is_empty()
        {
            for v in fm.values.values() {
                if !options.contains(v) {
                    problems.push(m.problem(
                        false,
                        &fpath(base, i, "values"),
                        format!(
                            "CRM value `{v}` is not an option of `{}`{}",
                            dst.name,
                            did_you_mean(v, options.iter().map(String::as_str))
                        ),
                    ));
                }
            }
        }
    }

    let limited = [Side::Marketo, Side::Crm].into_iter().any(|target| {
        fm.direction.writes_to(target)
            && defs
                .get(&target)
                .is_some_and(|d| text_limit(&d.ty).is_some())
    });
    if fm.shorten && !limited {
        problems.push(
            m.problem(
                false,
                &fpath(base, i, "shorten"),
                "`shorten = true` has no effect here: no field this mapping writes is text with a \
             declared length"
                    .to_owned(),
            ),
        );
    }

    let marketo_ty = defs.get(&Side::Marketo).map(|d| d.ty.clone());
    let crm_ty = defs.get(&Side::Crm).map(|d| d.ty.clone());
    let ty = if !fm.values.is_empty() {
        FieldType::Text { max_len: None }
    } else {
        marketo_ty
            .clone()
            .or_else(|| crm_ty.clone())
            .or_else(|| fm.constant.as_ref().map(infer_type))
            .unwrap_or(FieldType::Text { max_len: None })
    };
    let field = PlanField {
        name: fm.canonical_name().to_owned(),
        marketo: fm.marketo.clone(),
        crm: fm.crm.clone(),
        direction: fm.direction,
        ty,
        marketo_ty,
        crm_ty,
        transform: fm.transform.clone(),
        crm_transform: fm.crm_transform.clone(),
        marketo_transform: fm.marketo_transform.clone(),
        values: fm.values.clone(),
        default: fm.default.clone(),
        constant: fm.constant.clone(),
        policy: fm.policy.unwrap_or(default_policy),
        disabled,
        routed_to_company,
        shorten: fm.shorten,
    };
    (field, problems)
}

/// Returns the plans of the activity types in the activities file, one per type, compiled
/// against the Marketo schema `activity:<type_id>` and the CRM object.
pub fn compile_activities(
    m: &LoadedMapping,
    schemas: &SchemaSet,
) -> (Vec<(u32, Plan)>, Vec<Problem>) {
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for (a_index, a) in m.file.activities.iter().enumerate() {
        let base = vec![Segment::Key("activities".into()), Segment::Index(a_index)];
        let object = format!("activity:{}", a.type_id);
        let crm_object = a
            .crm_object
            .clone()
            .unwrap_or_else(|| m.file.crm_object.clone());
        let Some(marketo) = schemas.get(Side::Marketo, &object) else {
            let mut p = base.clone();
            p.push(Segment::Key("type_id".into()));
            problems.push(m.problem(
                true,
                &p,
                format!("Marketo has no activity type {}", a.type_id),
            ));
            continue;
        };
        let Some(crm) = schemas.get(Side::Crm, &crm_object) else {
            problems.push(m.problem(
                true,
                &[Segment::Key("crm_object".into())],
                format!(
                    "the CRM has no object `{crm_object}`{}",
                    did_you_mean(&crm_object, schemas.crm.keys().map(String::as_str))
                ),
            ));
            continue;
        };
        let mut fields = Vec::new();
        for (i, fm) in a.fields.iter().enumerate() {
            let (field, fp) = compile_field(
                m,
                &base,
                i,
                fm,
                marketo,
                crm,
                crate::config::Policy::MarketoWins,
            );
            problems.extend(fp);
            fields.push(field);
        }
        plans.push((
            a.type_id,
            Plan {
                object: object.clone(),
                marketo_object: object,
                crm_object,
                marketo_crm_key: "marketoGUID".to_owned(),
                crm_marketo_id: m.file.keys.crm_marketo_id.clone().unwrap_or_default(),
                crm_deleted_flag: None,
                conversion: None,
                match_fields: Vec::new(),
                policy: crate::config::Policy::MarketoWins,
                fields,
            },
        ));
    }
    (plans, problems)
}

/// Returns the problem of a lead mapping without `keys.crm_deleted_flag` when `sync.lead_deletes`
/// or `sync.lead_merges` is `flag`: the policy then has no column to set.
fn flag_policy_problem(settings: &Settings, m: &LoadedMapping) -> Option<Problem> {
    use crate::config::DeletePolicy;
    if m.file.kind() != super::MarketoKind::Lead
        || m.file
            .keys
            .crm_deleted_flag
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    {
        return None;
    }
    let which: Vec<&str> = [
        ("sync.lead_deletes", settings.sync.lead_deletes),
        ("sync.lead_merges", settings.sync.lead_merges),
    ]
    .into_iter()
    .filter(|(_, p)| *p == DeletePolicy::Flag)
    .map(|(n, _)| n)
    .collect();
    if which.is_empty() {
        return None;
    }
    Some(m.problem(
        false,
        &[Segment::Key("keys".into())],
        format!(
            "{} is \"flag\" but `keys.crm_deleted_flag` is not set: records of deleted or \
             merged-away leads are not flagged in the CRM; set it to a boolean CRM column \
             (e.g. crm_deleted_flag = \"deleted_in_marketo\"), or choose \"ignore\" or \"delete\"",
            which.join(" and ")
        ),
    ))
}

/// Returns every problem of settings and mappings against both sides' schemas (unknown objects
/// and fields with suggestions, read-only targets, type and length mismatches, company fields on
/// leads, unmapped required fields). The lead calls this with live schemas; `validate --schemas`
/// calls it with snapshots.
pub fn validate_against(
    settings: &Settings,
    mappings: &[LoadedMapping],
    schemas: &SchemaSet,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for m in mappings {
        if !settings.sync.objects.contains(&m.object) {
            continue;
        }
        if m.file.is_activities() {
            let (_, p) = compile_activities(m, schemas);
            problems.extend(p);
            continue;
        }
        if m.file.is_custom_activity() {
            let (_, p) = compile_custom_activity(
                m,
                schemas.get(Side::Marketo, &m.file.marketo_schema_object()),
                schemas.get(Side::Crm, &m.file.crm_object),
            );
            problems.extend(p);
            continue;
        }
        problems.extend(flag_policy_problem(settings, m));
        let marketo = schemas.get(Side::Marketo, &m.file.marketo_object);
        let crm = schemas.get(Side::Crm, &m.file.crm_object);
        if marketo.is_none() {
            problems.push(m.problem(
                true,
                &[Segment::Key("marketo_object".into())],
                format!(
                    "Marketo has no object `{}`{}",
                    m.file.marketo_object,
                    did_you_mean(
                        &m.file.marketo_object,
                        schemas.marketo.keys().map(String::as_str)
                    )
                ),
            ));
        }
        if crm.is_none() {
            problems.push(m.problem(
                true,
                &[Segment::Key("crm_object".into())],
                format!(
                    "the CRM has no object `{}`{}",
                    m.file.crm_object,
                    did_you_mean(&m.file.crm_object, schemas.crm.keys().map(String::as_str))
                ),
            ));
        }
        if let (Some(marketo), Some(crm)) = (marketo, crm) {
            let (_, p) = compile(m, marketo, crm);
            problems.extend(p);
        }
        problems.extend(super::programs::check_statuses(m, schemas));
        problems.extend(super::lists::check_list_names(m, schemas));
    }
    problems
}

/// Returns the problems of the mappings against one side's schemas only, for when the other
/// side could not be read (a missing secret, an unreachable host): unknown objects and fields,
/// read-only targets, and key fields that are missing, read-only or cannot hold the id. The
/// checks that need both sides (types, required fields) wait until both can be read.
pub fn validate_one_side(
    settings: &Settings,
    mappings: &[LoadedMapping],
    schemas: &SchemaSet,
    side: Side,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let (key_path, side_key) = match side {
        Side::Marketo => ("keys.marketo_crm_key", "marketo"),
        Side::Crm => ("keys.crm_marketo_id", "crm"),
    };
    for m in mappings {
        let f = &m.file;
        if !settings.sync.objects.contains(&m.object) || f.is_activities() || f.is_custom_activity()
        {
            continue;
        }
        let object = match side {
            Side::Marketo => &f.marketo_object,
            Side::Crm => &f.crm_object,
        };
        let Some(schema) = schemas.get(side, object) else {
            let known = match side {
                Side::Marketo => &schemas.marketo,
                Side::Crm => &schemas.crm,
            };
            problems.push(m.problem(
                true,
                &[Segment::Key(format!("{side_key}_object"))],
                format!(
                    "{} has no object `{object}`{}",
                    match side {
                        Side::Marketo => "Marketo",
                        Side::Crm => "the CRM",
                    },
                    did_you_mean(object, known.keys().map(String::as_str))
                ),
            ));
            continue;
        };
        let key = match side {
            Side::Marketo => f.keys.marketo_crm_key.as_deref(),
            Side::Crm => f.keys.crm_marketo_id.as_deref(),
        }
        .filter(|k| !k.is_empty());
        if let Some(name) = key {
            let path: Vec<Segment> = key_path
                .split('.')
                .map(|s| Segment::Key(s.into()))
                .collect();
            match schema.field(name) {
                None => problems.push(m.problem(true, &path, unknown(side, schema, name))),
                Some(def) if !is_writable(side, schema, def) => {
                    problems.push(m.problem(true, &path, format!(
                        "{} field `{name}` on `{}` is read-only, but the sync writes the key into it",
                        side_label(side), schema.object)));
                }
                Some(def) if side == Side::Crm => {
                    // The Marketo id: an integer for leads, companies and salespersons, a
                    // marketoGUID for the others.
                    let id = if matches!(
                        f.marketo_object.as_str(),
                        "lead" | "company" | "salesperson"
                    ) {
                        FieldType::Integer
                    } else {
                        FieldType::Text {
                            max_len: Some(GUID_CHARS),
                        }
                    };
                    if let Some(why) = key_type_problem(&def.ty, &id) {
                        problems.push(m.problem(true, &path, format!(
                            "CRM field `{name}` on `{}` cannot be the key: the sync writes the \
                             Marketo record's id into it, but {why}; the first sync would corrupt it",
                            schema.object)));
                    }
                }
                Some(_) => {}
            }
        }
        for (i, fm) in f.fields.iter().enumerate() {
            let Some(name) = fm.side_name(side) else {
                continue;
            };
            match schema.field(name) {
                None => problems.push(m.problem(
                    true,
                    &fpath(&[], i, side_key),
                    unknown(side, schema, name),
                )),
                Some(def) if !is_writable(side, schema, def) && fm.direction.writes_to(side) => {
                    let other = match side {
                        Side::Marketo => "to_crm",
                        Side::Crm => "to_marketo",
                    };
                    problems.push(m.problem(true, &fpath(&[], i, side_key), format!(
                        "{} field `{name}` on `{}` is read-only and cannot be written; set direction = \"{other}\"",
                        side_label(side), schema.object)));
                }
                Some(_) => {}
            }
        }
    }
    problems
}

/// Returns true when the sync can write `def` on `side`.
///
/// Marketo's Describe reports the dedupe fields of companies, opportunities, roles,
/// salespersons and custom objects (`externalCompanyId`, `vin`, ...) as not updateable because
/// they cannot change once a record exists; they are still written on every `createOrUpdate`
/// with `dedupeBy=dedupeFields` (they are the key), so they count as writable. Leads are written
/// by `lookupField` and activities are never written, so neither is exempt.
pub(crate) fn is_writable(side: Side, schema: &ObjectSchema, def: &FieldDef) -> bool {
    !def.read_only
        || (side == Side::Marketo
            && schema.object != "lead"
            && !schema.object.starts_with("activity:")
            && schema.dedupe_fields.contains(&def.name))
}

/// Returns the direction a suggested pair can flow, from which sides are writable.
pub(crate) fn default_direction(
    marketo: Option<&FieldDef>,
    crm: Option<&FieldDef>,
) -> Option<Direction> {
    match (marketo.map(|d| d.read_only), crm.map(|d| d.read_only)) {
        (Some(false), Some(false)) => Some(Direction::Both),
        (Some(true), Some(false)) => Some(Direction::ToCrm),
        (Some(false), Some(true)) => Some(Direction::ToMarketo),
        _ => None,
    }
}

/// Every plan of a configuration.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    /// One plan per synced object (by `sync.objects` name), activities excepted.
    pub objects: BTreeMap<String, Plan>,
    /// One plan per synced activity type id.
    pub activities: BTreeMap<u32, Plan>,
    /// One plan per synced custom-activity file (CRM events -> Marketo), by `sync.objects` name.
    pub custom_activities: BTreeMap<String, CustomActivityPlan>,
    /// The synced objects (activities excepted) that got no plan: a schema is missing (its
    /// describe failed, or the object does not exist) or the keys are broken.
    pub missing: BTreeSet<String>,
}

/// Returns the plans of every mapping file listed in `sync.objects`, compiled against `schemas`,
/// with every problem. An object whose schemas are missing or whose keys are broken gets no plan
/// (and an error); a field with a problem is kept disabled.
pub fn compile_all(
    settings: &Settings,
    mappings: &[LoadedMapping],
    schemas: &SchemaSet,
) -> (Plans, Vec<Problem>) {
    let mut plans = Plans::default();
    let mut problems = Vec::new();
    for m in mappings {
        if !settings.sync.objects.contains(&m.object) {
            continue;
        }
        if m.file.is_activities() {
            let (compiled, p) = compile_activities(m, schemas);
            problems.extend(p);
            plans.activities.extend(compiled);
            continue;
        }
        if m.file.is_custom_activity() {
            let (plan, p) = compile_custom_activity(
                m,
                schemas.get(Side::Marketo, &m.file.marketo_schema_object()),
                schemas.get(Side::Crm, &m.file.crm_object),
            );
            problems.extend(p);
            match plan {
                Some(plan) => {
                    plans.custom_activities.insert(m.object.clone(), plan);
                }
                None => {
                    plans.missing.insert(m.object.clone());
                }
            }
            continue;
        }
        let marketo = schemas.get(Side::Marketo, &m.file.marketo_object);
        let crm = schemas.get(Side::Crm, &m.file.crm_object);
        match (marketo, crm) {
            (Some(marketo), Some(crm)) => {
                let (plan, p) = compile(m, marketo, crm);
                problems.extend(p);
                problems.extend(flag_policy_problem(settings, m));
                problems.extend(super::programs::check_statuses(m, schemas));
                problems.extend(super::lists::check_list_names(m, schemas));
                match plan {
                    Some(plan) => {
                        plans.objects.insert(m.object.clone(), plan);
                    }
                    None => {
                        plans.missing.insert(m.object.clone());
                    }
                }
            }
            _ => {
                plans.missing.insert(m.object.clone());
                problems.extend(validate_against(settings, std::slice::from_ref(m), schemas));
            }
        }
    }
    (plans, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro(name: &str) -> FieldDef {
        let mut f = FieldDef::new(name, FieldType::Text { max_len: None });
        f.read_only = true;
        f
    }

    fn schemas(object: &str) -> (ObjectSchema, ObjectSchema) {
        let marketo = ObjectSchema {
            side: Side::Marketo,
            object: object.into(),
            id_field: Some("id".into()),
            dedupe_fields: vec!["externalCompanyId".into()],
            fields: vec![
                ro("externalCompanyId"),
                ro("id"),
                ro("updatedAt"),
                FieldDef::new("company", FieldType::Text { max_len: None }),
            ],
        };
        let crm = ObjectSchema {
            side: Side::Crm,
            object: "accounts".into(),
            id_field: Some("id".into()),
            dedupe_fields: vec![],
            fields: vec![
                FieldDef::new("id", FieldType::Text { max_len: None }),
                FieldDef::new("marketo_id", FieldType::Text { max_len: None }),
                FieldDef::new("name", FieldType::Text { max_len: None }),
            ],
        };
        (marketo, crm)
    }

    const COMPANIES: &str = r#"
marketo_object = "company"
crm_object = "accounts"
[keys]
marketo_crm_key = "externalCompanyId"
crm_marketo_id = "marketo_id"
[[fields]]
marketo = "company"
crm = "name"
"#;

    #[test]
    fn read_only_dedupe_fields_are_accepted_as_the_key() {
        let m = crate::config::parse_mapping("companies", Path::new("c.toml"), COMPANIES).unwrap();
        let (marketo, crm) = schemas("company");
        let (plan, problems) = compile(&m, &marketo, &crm);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
        assert!(plan.is_some());
    }

    #[test]
    fn a_custom_objects_natural_dedupe_key_may_be_mapped() {
        let (mut car, crm) = schemas("car_c");
        car.dedupe_fields = vec!["vin".into()];
        car.fields.push(ro("vin"));
        let mut crm = crm;
        crm.fields
            .push(FieldDef::new("vin", FieldType::Text { max_len: None }));
        let text = "marketo_object = \"car_c\"\ncrm_object = \"accounts\"\n[keys]\n\
                    marketo_crm_key = \"vin\"\ncrm_marketo_id = \"marketo_id\"\n\
                    [[fields]]\nmarketo = \"vin\"\ncrm = \"vin\"\ndirection = \"to_marketo\"\n";
        let m = crate::config::parse_mapping("cars", Path::new("cars.toml"), text).unwrap();
        let (plan, problems) = compile(&m, &car, &crm);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
        assert!(plan.unwrap().field("vin").unwrap().disabled.is_none());
    }

    #[test]
    fn other_read_only_fields_are_still_refused() {
        // A read-only field that is not a dedupe field cannot be the key.
        let text = COMPANIES.replace("\"externalCompanyId\"", "\"updatedAt\"");
        let m = crate::config::parse_mapping("companies", Path::new("c.toml"), &text).unwrap();
        let (marketo, crm) = schemas("company");
        let (plan, problems) = compile(&m, &marketo, &crm);
        assert!(plan.is_none());
        assert!(
            problems
                .iter()
                .any(|p| p.key == "keys.marketo_crm_key" && p.reason.contains("read-only")),
            "{problems:#?}"
        );
        // Leads are written by lookupField: a read-only lead field is never exempt.
        let (mut lead, crm) = schemas("lead");
        lead.dedupe_fields = vec!["externalCompanyId".into()];
        let text = COMPANIES.replace("\"company\"\ncrm_object", "\"lead\"\ncrm_object");
        let m = crate::config::parse_mapping("leads", Path::new("l.toml"), &text).unwrap();
        let (plan, _) = compile(&m, &lead, &crm);
        assert!(plan.is_none());
    }
}
