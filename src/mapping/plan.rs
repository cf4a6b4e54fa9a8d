//! The compiled plan of one object: mapped fields with both sides' names and types, and the
//! canonical-record operations the engine calls.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::normalise::{
    apply, apply_in_place, apply_owned, convert_for, normalise_owned, trim_in_place,
};
use crate::config::{Direction, Policy, Transform};
use crate::model::{FieldType, Fields, Side, Value, fields_hash};

/// Errors of turning raw records into canonical ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A raw value cannot be read as its field's type.
    #[error("{object}: {side} field `{source_field}` (canonical `{field}`): value {reason}")]
    InvalidValue {
        /// The plan's object.
        object: String,
        /// The side the value came from.
        side: Side,
        /// The canonical field name.
        field: String,
        /// The field name on that side.
        source_field: String,
        /// Why it was refused (never the whole record).
        reason: String,
    },
}

impl MappingError {
    /// Returns false: the same value fails the same way until someone fixes it.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// One field change between a base and a current record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The canonical field name.
    pub field: String,
    /// The base value (null when the base did not have the field).
    pub before: Value,
    /// The current value.
    pub after: Value,
}

/// One mapped field of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanField {
    /// The canonical name.
    pub name: String,
    /// The Marketo field name.
    pub marketo: Option<String>,
    /// The CRM field name.
    pub crm: Option<String>,
    /// Which way it flows.
    pub direction: Direction,
    /// The canonical type (Marketo's type when mapped there, else the CRM's).
    pub ty: FieldType,
    /// The Marketo field type.
    pub marketo_ty: Option<FieldType>,
    /// The CRM field type.
    pub crm_ty: Option<FieldType>,
    /// Steps applied to values read from either side.
    pub transform: Vec<Transform>,
    /// Steps applied when writing to the CRM.
    pub crm_transform: Vec<Transform>,
    /// Steps applied when writing to Marketo.
    pub marketo_transform: Vec<Transform>,
    /// Canonical value → CRM value.
    pub values: BTreeMap<String, String>,
    /// Value used when the source has none.
    pub default: Option<Value>,
    /// Constant value.
    pub constant: Option<Value>,
    /// The effective conflict policy.
    pub policy: Policy,
    /// Why this field is disabled (schema drift, a compile error), if it is.
    pub disabled: Option<String>,
    /// A company-type field of a lead mapping: written to the lead's company (by
    /// `externalCompanyId`) when the lead is linked to one, through Sync Leads otherwise.
    pub routed_to_company: bool,
    /// Text longer than the receiving field's declared length is cut to fit (`shorten = true`)
    /// instead of refused.
    pub shorten: bool,
}

impl PlanField {
    pub(super) fn side_name(&self, side: Side) -> Option<&str> {
        match side {
            Side::Marketo => self.marketo.as_deref(),
            Side::Crm => self.crm.as_deref(),
        }
    }

    fn side_ty(&self, side: Side) -> &FieldType {
        let ty = match side {
            Side::Marketo => self.marketo_ty.as_ref(),
            Side::Crm => self.crm_ty.as_ref(),
        };
        ty.unwrap_or(&self.ty)
    }

    fn write_transform(&self, side: Side) -> &[Transform] {
        match side {
            Side::Marketo => &self.marketo_transform,
            Side::Crm => &self.crm_transform,
        }
    }

    /// Returns the canonical value of `value` read from `side`: normalised to that side's type,
    /// value-mapped (CRM), transformed, normalised to the canonical type, defaulted.
    ///
    /// # Errors
    ///
    /// Why the value cannot be read as its type (never the value itself).
    pub(super) fn read(&self, side: Side, value: &Value) -> Result<Value, String> {
        let typed = normalise_owned(self.side_ty(side), value.clone())?;
        let mapped = match (&typed, side) {
            (Value::Text(t), Side::Crm) if !self.values.is_empty() => {
                match self.values.iter().find(|(_, crm)| *crm == t) {
                    Some((canonical, _)) => Value::Text(canonical.clone()),
                    None => typed,
                }
            }
            _ => typed,
        };
        let canonical = normalise_owned(&self.ty, apply_owned(&self.transform, mapped))?;
        Ok(match (&canonical, &self.default) {
            (Value::Null, Some(default)) => default.clone(),
            _ => canonical,
        })
    }

    /// Returns true when [`PlanField::read_into`] reads text from `side` in place: text read
    /// as text on both that side and the canonical record, with no value map in between.
    pub(super) fn reads_text_in_place(&self, side: Side) -> bool {
        !self.side_ty(side).is_scalar()
            && !self.ty.is_scalar()
            && (side == Side::Marketo || self.values.is_empty())
    }

    /// Stores [`PlanField::read`] of `value` in `slot`. When `in_place` (see
    /// [`PlanField::reads_text_in_place`]) and the value is text, the text is trimmed and
    /// transformed in the slot's own allocation: no copy of the value is made.
    ///
    /// # Errors
    ///
    /// As [`PlanField::read`]; `slot` may then hold anything.
    pub(super) fn read_into(
        &self,
        side: Side,
        value: &Value,
        in_place: bool,
        slot: &mut Value,
    ) -> Result<(), String> {
        let (Value::Text(text), true) = (value, in_place) else {
            *slot = self.read(side, value)?;
            return Ok(());
        };
        let trimmed = text.trim();
        if !trimmed.is_empty() {
            if !matches!(slot, Value::Text(_)) {
                *slot = Value::Text(String::with_capacity(trimmed.len()));
            }
            if let Value::Text(buf) = slot {
                buf.clear();
                buf.push_str(trimmed);
                apply_in_place(&self.transform, buf);
                trim_in_place(buf);
                if !buf.is_empty() {
                    return Ok(());
                }
            }
        }
        *slot = self.default.clone().unwrap_or(Value::Null);
        Ok(())
    }

    /// Returns the value written to `target` for the canonical `value`: value-mapped (CRM),
    /// with the side's write transforms, converted to the side's type; never shortened.
    fn write(&self, target: Side, value: &Value) -> Value {
        let mapped = match (value, target) {
            (Value::Text(t), Side::Crm) => match self.values.get(t) {
                Some(crm) => Value::Text(crm.clone()),
                None => value.clone(),
            },
            _ => value.clone(),
        };
        convert_for(
            self.side_ty(target),
            &apply(self.write_transform(target), &mapped),
        )
    }

    /// Returns `written` cut to `target`'s declared length when the field opts into shortening
    /// and the text is longer, else `None`. Counts characters, as the length limits do.
    fn shortened(&self, target: Side, written: &Value) -> Option<Value> {
        let limit = usize::try_from(self.side_ty(target).max_len()?).ok()?;
        match written {
            Value::Text(t) if self.shorten && t.chars().count() > limit => {
                Some(Value::Text(t.chars().take(limit).collect()))
            }
            _ => None,
        }
    }

    /// Returns the canonical value `side` holds once the canonical `value` was written to it
    /// shortened and read back, or `None` when writing it there shortens nothing. A side that
    /// reads exactly this holds the agreed value as far as it can: it is no change of its own.
    pub fn shortened_echo(&self, side: Side, value: &Value) -> Option<Value> {
        let cut = self.shortened(side, &self.write(side, value))?;
        self.read(side, &cut).ok()
    }
}

/// Where the CRM keeps unconverted leads and how a conversion shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversion {
    /// The CRM object of unconverted leads (`leads`).
    pub crm_lead_object: String,
    /// Its column naming the contact a lead was converted to (`converted_contact_id`).
    pub converted_field: String,
    /// The contact column holding the CRM account id (= Marketo `externalCompanyId`).
    pub company_ref: Option<String>,
}

/// The compiled mapping of one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The object name (the `sync.objects` entry).
    pub object: String,
    /// The Marketo object.
    pub marketo_object: String,
    /// The CRM object.
    pub crm_object: String,
    /// The Marketo field holding the CRM key (the `lookupField`).
    pub marketo_crm_key: String,
    /// The CRM field holding the Marketo id.
    pub crm_marketo_id: String,
    /// The boolean CRM column the `flag` deletion policy sets (`keys.crm_deleted_flag`).
    pub crm_deleted_flag: Option<String>,
    /// Lead conversion in the CRM (`keys.crm_lead_object`, lead mappings only).
    pub conversion: Option<Conversion>,
    /// Canonical names of the match fields for new records.
    pub match_fields: Vec<String>,
    /// The object's default conflict policy.
    pub policy: Policy,
    /// The fields, in file order.
    pub fields: Vec<PlanField>,
}

impl Plan {
    /// Returns the field with this canonical name.
    pub fn field(&self, name: &str) -> Option<&PlanField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Returns the Marketo names of the enabled fields routed to the lead's company.
    pub fn company_routed_fields(&self) -> Vec<&str> {
        self.enabled_fields()
            .filter(|f| f.routed_to_company)
            .filter_map(|f| f.marketo.as_deref())
            .collect()
    }

    /// Returns the CRM column mapped to the Marketo field `marketo` (enabled fields only).
    pub fn crm_column_of(&self, marketo: &str) -> Option<&str> {
        self.enabled_fields()
            .find(|f| f.marketo.as_deref() == Some(marketo))
            .and_then(|f| f.crm.as_deref())
    }

    /// Returns the enabled fields.
    pub fn enabled_fields(&self) -> impl Iterator<Item = &PlanField> {
        self.fields.iter().filter(|f| f.disabled.is_none())
    }

    /// Returns the source field names to request from a side (enabled fields read from it).
    pub fn read_fields(&self, side: Side) -> Vec<String> {
        self.enabled_fields()
            .filter(|f| f.direction.reads_from(side) && f.constant.is_none())
            .filter_map(|f| f.side_name(side).map(str::to_owned))
            .collect()
    }

    /// Returns the canonical record of a raw record read from `side`: only mapped, enabled fields
    /// that the field's direction reads from that side, normalised, with transforms, value maps,
    /// defaults and constants applied. Fields absent from `raw` stay absent.
    ///
    /// # Errors
    ///
    /// Returns [`MappingError::InvalidValue`] for the first value that cannot be read as its
    /// field's type.
    pub fn to_canonical(&self, side: Side, raw: &Fields) -> Result<Fields, MappingError> {
        let mut out = Fields::new();
        for f in self.enabled_fields() {
            if !f.direction.reads_from(side) {
                continue;
            }
            if let Some(constant) = &f.constant {
                out.insert(f.name.clone(), constant.clone());
                continue;
            }
            let Some(source) = f.side_name(side) else {
                continue;
            };
            let Some(value) = raw.get(source) else {
                continue;
            };
            let canonical = f
                .read(side, value)
                .map_err(|reason| MappingError::InvalidValue {
                    object: self.object.clone(),
                    side,
                    field: f.name.clone(),
                    source_field: source.to_owned(),
                    reason,
                })?;
            out.insert(f.name.clone(), canonical);
        }
        Ok(out)
    }

    /// Returns the record to write to `target`: target field names and types, only enabled fields
    /// whose direction writes to that side and that `canonical` holds (constants always). A
    /// field with `shorten = true` is cut to the target's declared length.
    pub fn render(&self, target: Side, canonical: &Fields) -> Fields {
        let mut out = Fields::new();
        for f in self.enabled_fields() {
            if !f.direction.writes_to(target) {
                continue;
            }
            let Some(name) = f.side_name(target) else {
                continue;
            };
            let value = match (&f.constant, canonical.get(&f.name)) {
                (Some(constant), _) => constant.clone(),
                (None, Some(v)) => v.clone(),
                (None, None) => continue,
            };
            let written = f.write(target, &value);
            let written = f.shortened(target, &written).unwrap_or(written);
            out.insert(name.to_owned(), written);
        }
        out
    }

    /// Returns the conflict policy of a canonical field (the object's default when the field has
    /// none or is unknown).
    pub fn policy_for(&self, field: &str) -> Policy {
        self.field(field).map_or(self.policy, |f| f.policy)
    }

    /// Returns the fields of `current` whose value differs from `base` (a field missing from the
    /// base counts as null), sorted by name. Fields missing from `current` are unknown, not
    /// changed.
    pub fn diff(&self, base: &Fields, current: &Fields) -> Vec<FieldChange> {
        diff(base, current)
    }

    /// Returns a stable hash of the canonical record's mapped, enabled fields.
    pub fn hash(&self, canonical: &Fields) -> String {
        let kept: Fields = canonical
            .iter()
            .filter(|(k, _)| self.field(k).is_some_and(|f| f.disabled.is_none()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fields_hash(&kept)
    }

    /// Returns a stable hash of the plan itself, to notice a changed mapping.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    /// Disables one field (schema drift): it is no longer read, rendered or hashed. Returns false
    /// when no field has that canonical name.
    pub fn disable_field(&mut self, name: &str, reason: &str) -> bool {
        match self.fields.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                f.disabled = Some(reason.to_owned());
                true
            }
            None => false,
        }
    }

    /// Returns the disabled fields with their reasons.
    pub fn disabled_fields(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter_map(|f| f.disabled.as_deref().map(|r| (f.name.as_str(), r)))
            .collect()
    }
}

/// Returns the fields of `current` whose value differs from `base`, sorted by name.
pub fn diff(base: &Fields, current: &Fields) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for (name, after) in current {
        let before = base.get(name).cloned().unwrap_or(Value::Null);
        if &before != after {
            out.push(FieldChange {
                field: name.clone(),
                before,
                after: after.clone(),
            });
        }
    }
    out
}
