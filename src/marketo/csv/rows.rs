//! Typed rows of activity and program member exports.

use std::io::Read;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};

use super::value::{parse_bool, parse_datetime, parse_int};
use super::{
    CsvError, ExportReader, ExportRow, FileFormat, ReadStats, RowError, RowErrorReason, clip,
};
use crate::model::{Fields, Value};

/// One row of a Bulk Activity Extract.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRow {
    /// The activity's id (`marketoGUID`; numeric text in real exports).
    pub marketo_guid: String,
    /// The lead the activity belongs to.
    pub lead_id: i64,
    /// When it happened.
    pub activity_date: DateTime<Utc>,
    /// The activity type (see Get Activity Types).
    pub activity_type_id: i64,
    /// The smart campaign that caused it, if any.
    pub campaign_id: Option<i64>,
    /// The id of the primary attribute's value (a list, a program, a field...).
    pub primary_attribute_value_id: Option<i64>,
    /// The primary attribute's value as text.
    pub primary_attribute_value: Option<String>,
    /// The secondary attributes, keyed by display name. The spec's array form
    /// `[{"name":..,"value":..}]` is turned into this object form.
    pub attributes: Map<String, Json>,
}

/// A streaming reader of activity export rows; an iterator like [`ExportReader`]'s.
pub struct ActivityReader<R> {
    inner: ExportReader<R>,
}

impl<R: Read> ActivityReader<R> {
    /// Returns a reader of an activity export, after checking its header.
    ///
    /// # Errors
    ///
    /// As [`ExportReader::new`], and [`CsvError::MissingColumn`] when `marketoGUID`, `leadId`,
    /// `activityDate` or `activityTypeId` is not a column.
    pub fn new(reader: R, format: FileFormat) -> Result<Self, CsvError> {
        Self::from_export(ExportReader::new(reader, format)?)
    }

    /// Returns an activity reader over an untyped export reader.
    ///
    /// # Errors
    ///
    /// [`CsvError::MissingColumn`] when a required column is not in the header.
    pub fn from_export(inner: ExportReader<R>) -> Result<Self, CsvError> {
        require_columns(
            inner.headers(),
            &["marketoGUID", "leadId", "activityDate", "activityTypeId"],
        )?;
        Ok(ActivityReader { inner })
    }

    /// Returns the counters so far (rows rejected here count as errors).
    pub fn stats(&self) -> ReadStats {
        self.inner.stats()
    }
}

impl<R: Read> Iterator for ActivityReader<R> {
    type Item = Result<ActivityRow, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.inner.next()? {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        match activity_from(&row) {
            Ok(activity) => Some(Ok(activity)),
            Err(reason) => Some(Err(self.inner_reject(&row, reason))),
        }
    }
}

impl<R: Read> ActivityReader<R> {
    fn inner_reject(&mut self, row: &ExportRow, reason: RowErrorReason) -> CsvError {
        reject(&mut self.inner, row, reason)
    }
}

/// Turns an accepted row into a rejected one, keeping the counters right.
fn reject<R: Read>(
    inner: &mut ExportReader<R>,
    row: &ExportRow,
    reason: RowErrorReason,
) -> CsvError {
    inner.stats.rows -= 1;
    inner.stats.errors += 1;
    CsvError::Row(RowError {
        line: row.line,
        record: row.record,
        reason,
    })
}

fn require_columns(headers: &[String], columns: &[&str]) -> Result<(), CsvError> {
    for column in columns {
        if !headers.iter().any(|h| h == column) {
            return Err(CsvError::MissingColumn {
                column: (*column).to_owned(),
            });
        }
    }
    Ok(())
}

fn text<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    match fields.get(name) {
        Some(Value::Text(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn bad(field: &str, expected: &str, value: &str) -> RowErrorReason {
    RowErrorReason::BadValue {
        field: field.to_owned(),
        expected: expected.to_owned(),
        value: clip(value),
    }
}

fn required<'a>(fields: &'a Fields, name: &str) -> Result<&'a str, RowErrorReason> {
    text(fields, name).ok_or_else(|| RowErrorReason::MissingValue {
        field: name.to_owned(),
    })
}

fn required_int(fields: &Fields, name: &str) -> Result<i64, RowErrorReason> {
    let s = required(fields, name)?;
    parse_int(s).ok_or_else(|| bad(name, "integer", s))
}

fn optional_int(fields: &Fields, name: &str) -> Result<Option<i64>, RowErrorReason> {
    match text(fields, name) {
        None => Ok(None),
        Some(s) => parse_int(s)
            .map(Some)
            .ok_or_else(|| bad(name, "integer", s)),
    }
}

fn optional_datetime(fields: &Fields, name: &str) -> Result<Option<DateTime<Utc>>, RowErrorReason> {
    match text(fields, name) {
        None => Ok(None),
        Some(s) => parse_datetime(s)
            .map(Some)
            .ok_or_else(|| bad(name, "datetime", s)),
    }
}

fn optional_bool(fields: &Fields, name: &str) -> Result<Option<bool>, RowErrorReason> {
    match text(fields, name) {
        None => Ok(None),
        Some(s) => parse_bool(s)
            .map(Some)
            .ok_or_else(|| bad(name, "boolean", s)),
    }
}

/// Returns the attributes cell as a JSON object, accepting the array form.
fn attributes_from(cell: Option<&str>) -> Result<Map<String, Json>, RowErrorReason> {
    let Some(s) = cell else {
        return Ok(Map::new());
    };
    let not_object = || bad("attributes", "JSON object", s);
    match serde_json::from_str::<Json>(s).map_err(|_| not_object())? {
        Json::Object(map) => Ok(map),
        Json::Null => Ok(Map::new()),
        Json::Array(items) => {
            let mut map = Map::new();
            for item in items {
                let Json::Object(mut pair) = item else {
                    return Err(not_object());
                };
                let Some(Json::String(name)) = pair.remove("name") else {
                    return Err(not_object());
                };
                let value = pair.remove("value").unwrap_or(Json::Null);
                map.insert(name, value);
            }
            Ok(map)
        }
        _ => Err(not_object()),
    }
}

fn activity_from(row: &ExportRow) -> Result<ActivityRow, RowErrorReason> {
    let f = &row.fields;
    let date = required(f, "activityDate")?;
    Ok(ActivityRow {
        marketo_guid: required(f, "marketoGUID")?.to_owned(),
        lead_id: required_int(f, "leadId")?,
        activity_date: parse_datetime(date).ok_or_else(|| bad("activityDate", "datetime", date))?,
        activity_type_id: required_int(f, "activityTypeId")?,
        campaign_id: optional_int(f, "campaignId")?,
        primary_attribute_value_id: optional_int(f, "primaryAttributeValueId")?,
        primary_attribute_value: text(f, "primaryAttributeValue").map(str::to_owned),
        attributes: attributes_from(text(f, "attributes"))?,
    })
}

/// One row of a program member export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramMemberRow {
    /// The member lead.
    pub lead_id: i64,
    /// The program (`programId`), when exported.
    pub program_id: Option<i64>,
    /// The membership status (`statusName`, e.g. "02 Opened").
    pub status_name: Option<String>,
    /// Whether the member reached success (`reachedSuccess`, `0/1` in exports).
    pub reached_success: Option<bool>,
    /// When the lead became a member (`membershipDate`).
    pub membership_date: Option<DateTime<Utc>>,
    /// When the membership last changed (`updatedAt`).
    pub updated_at: Option<DateTime<Utc>>,
    /// Every column, as the untyped reader gives it (text or null).
    pub fields: Fields,
}

/// A streaming reader of program member export rows; an iterator like [`ExportReader`]'s.
pub struct ProgramMemberReader<R> {
    inner: ExportReader<R>,
}

impl<R: Read> ProgramMemberReader<R> {
    /// Returns a reader of a program member export, after checking its header.
    ///
    /// # Errors
    ///
    /// As [`ExportReader::new`], and [`CsvError::MissingColumn`] when `leadId` is not a column.
    pub fn new(reader: R, format: FileFormat) -> Result<Self, CsvError> {
        Self::from_export(ExportReader::new(reader, format)?)
    }

    /// Returns a program member reader over an untyped export reader.
    ///
    /// # Errors
    ///
    /// [`CsvError::MissingColumn`] when `leadId` is not in the header.
    pub fn from_export(inner: ExportReader<R>) -> Result<Self, CsvError> {
        require_columns(inner.headers(), &["leadId"])?;
        Ok(ProgramMemberReader { inner })
    }

    /// Returns the counters so far.
    pub fn stats(&self) -> ReadStats {
        self.inner.stats()
    }
}

/// The typed columns of a program member row.
type MemberParts = (
    i64,
    Option<i64>,
    Option<bool>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn member_parts(f: &Fields) -> Result<MemberParts, RowErrorReason> {
    Ok((
        required_int(f, "leadId")?,
        optional_int(f, "programId")?,
        optional_bool(f, "reachedSuccess")?,
        optional_datetime(f, "membershipDate")?,
        optional_datetime(f, "updatedAt")?,
    ))
}

impl<R: Read> Iterator for ProgramMemberReader<R> {
    type Item = Result<ProgramMemberRow, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.inner.next()? {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        match member_parts(&row.fields) {
            Ok((lead_id, program_id, reached_success, membership_date, updated_at)) => {
                Some(Ok(ProgramMemberRow {
                    lead_id,
                    program_id,
                    status_name: text(&row.fields, "statusName").map(str::to_owned),
                    reached_success,
                    membership_date,
                    updated_at,
                    fields: row.fields,
                }))
            }
            Err(reason) => Some(Err(reject(&mut self.inner, &row, reason))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attributes_accept_object_array_and_null() {
        let obj =
            attributes_from(Some(r#"{"Source Type":"List import","Merge IDs":[887]}"#)).unwrap();
        assert_eq!(obj["Source Type"], json!("List import"));
        assert_eq!(obj["Merge IDs"], json!([887]));
        let arr = attributes_from(Some(
            r#"[{"name":"Old Status ID","value":20},{"name":"Reason","value":"x"}]"#,
        ))
        .unwrap();
        assert_eq!(arr["Old Status ID"], json!(20));
        assert_eq!(arr["Reason"], json!("x"));
        assert!(attributes_from(None).unwrap().is_empty());
        assert!(attributes_from(Some("null")).unwrap().is_empty());
        assert_eq!(
            attributes_from(Some("[1,2]")).unwrap_err(),
            bad("attributes", "JSON object", "[1,2]")
        );
        assert_eq!(
            attributes_from(Some("{oops")).unwrap_err(),
            bad("attributes", "JSON object", "{oops")
        );
    }

    #[test]
    fn a_bad_activity_row_is_reported_and_the_next_is_read() {
        let file = "marketoGUID,leadId,activityDate,activityTypeId,attributes\n\
                    1,10,2017-09-08T16:38:14Z,12,null\n\
                    2,ten,2017-09-08T16:38:14Z,12,null\n\
                    3,30,2017-09-08T16:38:14Z,12,\"{\"\"a\"\":1}\"\n";
        let mut reader = ActivityReader::new(file.as_bytes(), FileFormat::Csv).unwrap();
        let first = reader.next().unwrap().unwrap();
        assert_eq!(first.lead_id, 10);
        assert_eq!(first.campaign_id, None);
        let err = reader.next().unwrap().unwrap_err();
        assert_eq!(
            err.as_row_error().unwrap(),
            &RowError {
                line: 3,
                record: 2,
                reason: bad("leadId", "integer", "ten")
            }
        );
        let third = reader.next().unwrap().unwrap();
        assert_eq!(third.marketo_guid, "3");
        assert_eq!(third.attributes["a"], json!(1));
        assert!(reader.next().is_none());
        let stats = reader.stats();
        assert_eq!((stats.rows, stats.errors, stats.records), (2, 1, 3));
    }

    #[test]
    fn activity_reader_needs_its_key_columns() {
        let err = ActivityReader::new("marketoGUID,leadId\n1,2\n".as_bytes(), FileFormat::Csv)
            .err()
            .unwrap();
        assert!(matches!(err, CsvError::MissingColumn { column } if column == "activityDate"));
    }
}
