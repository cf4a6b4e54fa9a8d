//! A plan compiled for records that come as values in a fixed column order (an export's
//! header), so each row is mapped without looking a name up or building a map.

use super::plan::{MappingError, Plan, PlanField};
use crate::model::{Fields, Side, Value};

/// Where one mapped field's value comes from.
#[derive(Debug, Clone, Copy)]
enum Source<'p> {
    /// The field's constant.
    Constant(&'p Value),
    /// The value at this column index, read in place when the flag says so (see
    /// [`PlanField::reads_text_in_place`]).
    Column(usize, bool),
}

/// One mapped field of a [`ColumnMapping`].
#[derive(Debug, Clone, Copy)]
struct Step<'p> {
    /// The field's position among the plan's fields: the first failing one is reported.
    order: usize,
    field: &'p PlanField,
    source: Source<'p>,
}

/// [`Plan::to_canonical`] compiled once for one side's records laid out in a fixed column
/// order, such as the rows of an export file ([`crate::marketo::csv::Row`]).
///
/// Each mapped field knows its column index, and the canonical record is one map kept from row
/// to row: its names are set up once (the same for every row, since the columns are), and each
/// row only replaces its values, reusing their text allocations. The values are the ones
/// [`Plan::to_canonical`] gives for the same record, and so is the error of a bad row.
#[derive(Debug)]
pub struct ColumnMapping<'p> {
    plan: &'p Plan,
    side: Side,
    columns: usize,
    /// Per name of `record`, in the map's order: the fields that write it, in plan order (one,
    /// unless two fields share a canonical name, when the last one wins as in `to_canonical`).
    slots: Vec<Vec<Step<'p>>>,
    record: Fields,
}

impl Plan {
    /// Returns this plan's reading of records from `side` whose values come in the order of
    /// `columns` (the column names, e.g. an export's header); see [`ColumnMapping`].
    pub fn for_columns(&self, side: Side, columns: &[String]) -> ColumnMapping<'_> {
        let mut by_name: std::collections::BTreeMap<&str, Vec<Step<'_>>> = Default::default();
        let reading = self
            .enabled_fields()
            .filter(|f| f.direction.reads_from(side));
        for (order, field) in reading.enumerate() {
            let source = if let Some(constant) = &field.constant {
                Source::Constant(constant)
            } else {
                let Some(name) = field.side_name(side) else {
                    continue;
                };
                let Some(index) = columns.iter().position(|c| c == name) else {
                    continue;
                };
                Source::Column(index, field.reads_text_in_place(side))
            };
            by_name.entry(&field.name).or_default().push(Step {
                order,
                field,
                source,
            });
        }
        let record = by_name
            .keys()
            .map(|name| ((*name).to_owned(), Value::Null))
            .collect();
        ColumnMapping {
            plan: self,
            side,
            columns: columns.len(),
            slots: by_name.into_values().collect(),
            record,
        }
    }
}

impl ColumnMapping<'_> {
    /// Returns the canonical record of one row (its values in the columns' order), as
    /// [`Plan::to_canonical`] returns it for the same record by name. The record is lent:
    /// the next call overwrites it.
    ///
    /// # Errors
    ///
    /// [`MappingError::InvalidValue`] for the first field, in plan order, whose value cannot be
    /// read as its type (the one `to_canonical` reports).
    ///
    /// # Panics
    ///
    /// When `values` does not hold one value per column.
    pub fn to_canonical(&mut self, values: &[Value]) -> Result<&Fields, MappingError> {
        assert_eq!(
            values.len(),
            self.columns,
            "a row mapped by column must have one value per column"
        );
        let mut first_error: Option<(usize, &PlanField, String)> = None;
        for (slot, steps) in self.record.values_mut().zip(&self.slots) {
            for step in steps {
                let read = match step.source {
                    Source::Constant(constant) => {
                        assign(slot, constant);
                        Ok(())
                    }
                    Source::Column(i, in_place) => {
                        step.field.read_into(self.side, &values[i], in_place, slot)
                    }
                };
                if let Err(reason) = read
                    && first_error.as_ref().is_none_or(|(o, _, _)| step.order < *o)
                {
                    first_error = Some((step.order, step.field, reason));
                }
            }
        }
        match first_error {
            None => Ok(&self.record),
            Some((_, field, reason)) => Err(MappingError::InvalidValue {
                object: self.plan.object.clone(),
                side: self.side,
                field: field.name.clone(),
                source_field: field.side_name(self.side).unwrap_or_default().to_owned(),
                reason,
            }),
        }
    }
}

/// Stores a copy of `value` in `slot`, reusing the slot's text allocation.
fn assign(slot: &mut Value, value: &Value) {
    match (slot, value) {
        (Value::Text(to), Value::Text(from)) => to.clone_from(from),
        (slot, value) => *slot = value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::config::parse_mapping;
    use crate::mapping::compile;
    use crate::model::{FieldDef, FieldType, ObjectSchema};

    const MAPPING: &str = r#"
marketo_object = "lead"
crm_object = "contacts"

[keys]
marketo_crm_key = "crmContactId"
crm_marketo_id = "marketo_lead_id"

[[fields]]
marketo = "email"
crm = "email_address"
transform = ["trim", "lowercase"]

[[fields]]
marketo = "company"
crm = "account_name"
transform = ["collapse_whitespace", "uppercase"]

[[fields]]
marketo = "rating"
crm = "rating"
transform = ["pascal_case"]
crm_transform = ["snake_case"]

[[fields]]
marketo = "leadStatus"
crm = "status"
default = "New"
[fields.values]
"New" = "new"
"Working" = "in_process"

[[fields]]
marketo = "leadScore"
crm = "score"

[[fields]]
marketo = "birthday"
crm = "birthdate"
direction = "to_crm"

[[fields]]
name = "source"
crm = "sync_source"
direction = "to_crm"
constant = "marketo"
"#;

    fn schema(side: Side, fields: &[(&str, FieldType)]) -> ObjectSchema {
        let mut defs: Vec<FieldDef> = vec![FieldDef::new("id", FieldType::Integer)];
        defs.extend(fields.iter().map(|(n, t)| FieldDef::new(*n, t.clone())));
        ObjectSchema {
            side,
            object: if side == Side::Marketo {
                "lead"
            } else {
                "contacts"
            }
            .into(),
            id_field: Some("id".into()),
            dedupe_fields: vec![],
            fields: defs,
        }
    }

    fn plan() -> Plan {
        let text = FieldType::Text { max_len: None };
        let marketo = schema(
            Side::Marketo,
            &[
                ("email", FieldType::Email),
                ("company", text.clone()),
                ("rating", text.clone()),
                ("leadStatus", FieldType::Picklist { options: vec![] }),
                ("leadScore", FieldType::Integer),
                ("birthday", FieldType::Date),
                ("crmContactId", text.clone()),
            ],
        );
        let crm = schema(
            Side::Crm,
            &[
                ("email_address", text.clone()),
                ("account_name", text.clone()),
                ("rating", text.clone()),
                ("status", text.clone()),
                ("score", text.clone()),
                ("birthdate", FieldType::Date),
                ("sync_source", text.clone()),
                ("marketo_lead_id", FieldType::Integer),
            ],
        );
        let loaded = parse_mapping("leads", Path::new("leads.toml"), MAPPING).unwrap();
        let (plan, problems) = compile(&loaded, &marketo, &crm);
        assert!(!problems.iter().any(|p| p.is_error()), "{problems:#?}");
        plan.unwrap()
    }

    /// Maps every row through one `ColumnMapping` (its buffers reused row after row) and by
    /// name through `Plan::to_canonical`; both must give the same record or the same error.
    fn check_rows(plan: &Plan, side: Side, columns: &[String], rows: &[Vec<Value>]) {
        let mut mapping = plan.for_columns(side, columns);
        for values in rows {
            let by_name: Fields = columns
                .iter()
                .cloned()
                .zip(values.iter().cloned())
                .collect();
            let expected = plan.to_canonical(side, &by_name);
            let got = mapping.to_canonical(values).cloned();
            assert_eq!(got, expected, "{side:?} row {values:?}");
        }
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            "[ a-zA-Z\t]{0,12}".prop_map(Value::Text),
            "[ éÉß1 ]{0,6}".prop_map(Value::Text),
            prop::sample::select(vec![
                "New",
                "Working",
                "new",
                "in_process",
                " 42 ",
                "4.0",
                "x",
                "2024-02-30",
                "2024-05-06",
            ])
            .prop_map(Value::from),
            (-5i64..5).prop_map(Value::Int),
        ]
    }

    proptest! {
        /// Whatever the values, and whatever the column order (some mapped fields missing,
        /// some columns not mapped), a column mapping reads each row as `to_canonical` does.
        #[test]
        fn rows_map_as_to_canonical_maps_them(
            marketo in prop::collection::vec(prop::collection::vec(value_strategy(), 8), 1..6),
            crm in prop::collection::vec(prop::collection::vec(value_strategy(), 8), 1..6),
            drop_column in 0usize..9,
        ) {
            let plan = plan();
            let mut marketo_columns: Vec<String> = [
                "leadScore", "email", "company", "rating", "leadStatus", "birthday",
                "notMapped", "crmContactId",
            ].map(String::from).to_vec();
            let mut crm_columns: Vec<String> = [
                "status", "email_address", "account_name", "rating", "score", "birthdate",
                "sync_source", "other",
            ].map(String::from).to_vec();
            let mut marketo = marketo;
            let mut crm = crm;
            if drop_column < 8 {
                marketo_columns.remove(drop_column);
                crm_columns.remove(drop_column);
                for row in marketo.iter_mut().chain(crm.iter_mut()) {
                    row.remove(drop_column);
                }
            }
            check_rows(&plan, Side::Marketo, &marketo_columns, &marketo);
            check_rows(&plan, Side::Crm, &crm_columns, &crm);
        }
    }

    #[test]
    fn the_first_bad_field_in_plan_order_is_reported_and_the_next_row_reads() {
        let plan = plan();
        let columns: Vec<String> = ["birthday", "leadScore", "email"]
            .map(String::from)
            .to_vec();
        let mut mapping = plan.for_columns(Side::Marketo, &columns);
        let bad = [
            Value::from("someday"),
            Value::from("many"),
            Value::from(" A@B "),
        ];
        let err = mapping.to_canonical(&bad).unwrap_err();
        let by_name: Fields = columns.iter().cloned().zip(bad.iter().cloned()).collect();
        assert_eq!(Err(err.clone()), plan.to_canonical(Side::Marketo, &by_name));
        // leadScore comes before birthday in the plan, whatever the column order.
        assert!(matches!(&err, MappingError::InvalidValue { field, .. } if field == "leadScore"));
        let good = [Value::Null, Value::Int(3), Value::from(" A@B ")];
        let record = mapping.to_canonical(&good).unwrap();
        assert_eq!(record.get("email"), Some(&Value::from("a@b")));
        assert_eq!(record.get("leadScore"), Some(&Value::Int(3)));
        assert_eq!(record.get("birthday"), Some(&Value::Null));
        assert_eq!(record.get("source"), Some(&Value::from("marketo")));
        assert!(!record.contains_key("company"), "no column, no field");
    }
}
