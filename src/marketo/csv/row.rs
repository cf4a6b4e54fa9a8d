//! The header of an export and the reused row buffer of [`super::ExportReader::next_row`].

use std::sync::Arc;

use super::RowWarning;
use crate::model::{Fields, Value};

/// The column names of an export, in file order; read once and shared by every [`Row`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    names: Vec<String>,
}

impl Header {
    pub(super) fn new(names: Vec<String>) -> Self {
        Header { names }
    }

    /// Returns the column names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Returns the index of the column `name`, if the file has it.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Returns the number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Returns true when the header has no columns (never for a header a reader accepted).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One accepted row of an export, as [`super::ExportReader::next_row`] lends it: one value per
/// column in header order, in a buffer the reader reuses for the next row (text cells keep
/// their allocations), so reading a row allocates nothing once the buffers have grown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    header: Arc<Header>,
    pub(super) line: u64,
    pub(super) record: u64,
    pub(super) values: Vec<Value>,
    pub(super) warnings: Vec<RowWarning>,
}

impl Row {
    pub(super) fn new(header: Arc<Header>) -> Self {
        let values = vec![Value::Null; header.len()];
        Row {
            header,
            line: 0,
            record: 0,
            values,
            warnings: Vec::new(),
        }
    }

    /// Returns the header the values follow.
    pub fn header(&self) -> &Arc<Header> {
        &self.header
    }

    /// Returns the physical line (1-based) the row starts on.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Returns the data record number (1-based).
    pub fn record(&self) -> u64 {
        self.record
    }

    /// Returns the values in header order (`null` and empty cells are [`Value::Null`]).
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Returns the value of the column `name`, if the file has that column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.header.index_of(name).map(|i| &self.values[i])
    }

    /// Returns the problems that did not stop the row from being read.
    pub fn warnings(&self) -> &[RowWarning] {
        &self.warnings
    }

    /// Returns every column by name (a copy; [`super::ExportRow::fields`] holds the same).
    pub fn to_fields(&self) -> Fields {
        self.header
            .names
            .iter()
            .cloned()
            .zip(self.values.iter().cloned())
            .collect()
    }

    /// Returns the columns by name, moving the values out (they are null afterwards, and the
    /// next row read into this buffer allocates its text again).
    pub(super) fn take_fields(&mut self) -> Fields {
        self.header
            .names
            .iter()
            .cloned()
            .zip(
                self.values
                    .iter_mut()
                    .map(|v| std::mem::replace(v, Value::Null)),
            )
            .collect()
    }
}

/// Stores `text` in `slot` as [`Value::Text`], reusing the slot's allocation when it already
/// holds text.
pub(super) fn set_text(slot: &mut Value, text: &str) {
    match slot {
        Value::Text(s) => {
            s.clear();
            s.push_str(text);
        }
        _ => *slot = Value::Text(text.to_owned()),
    }
}
