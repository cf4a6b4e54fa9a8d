//! Conversion of export cell text into typed values.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;

use crate::model::{FieldType, Value};

/// Returns the instant in a Marketo datetime cell, or None when it is not one.
///
/// Accepts RFC 3339 (`2017-09-08T16:38:14Z`, `...-08:00`, fractional seconds), offsets without a
/// colon (`+0000`), the doubled form `Z+0000` seen in some responses, and the legacy
/// `YYYY-MM-DD hh:mm:ss` (read as UTC).
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // `Z+0000` / `Z-0000`: the Z already says UTC.
    let s = match s.find('Z') {
        Some(i) if i + 1 < s.len() && s[i + 1..].starts_with(['+', '-']) => &s[..=i],
        _ => s,
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Returns the date in a Marketo date cell (`YYYY-MM-DD`, or the date part of a datetime).
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let s = text.trim();
    if let Some(d) = plain_date(s) {
        return Some(d);
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d);
    }
    parse_datetime(s).map(|t| t.date_naive())
}

/// Returns the date of exactly `YYYY-MM-DD` (what exports hold) without chrono's format parser,
/// or None for anything else (which the general path then reads).
fn plain_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)
}

/// Returns the boolean in a cell: `true`/`false` (lead exports) or `1`/`0` (program member
/// exports), case-insensitively.
pub fn parse_bool(text: &str) -> Option<bool> {
    let s = text.trim();
    if s.eq_ignore_ascii_case("true") || s == "1" {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// Returns the decimal in a cell (plain or scientific notation).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let s = text.trim();
    s.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(s).ok())
}

/// Returns the integer in a cell; an integral decimal (`12.0`) counts.
pub fn parse_int(text: &str) -> Option<i64> {
    let s = text.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(i);
    }
    let d = parse_decimal(s)?;
    if d.fract().is_zero() {
        i64::try_from(d).ok()
    } else {
        None
    }
}

/// Returns the cell text converted to the given type, or None when it does not fit.
///
/// A decimal in an integer field (seen in percent and score fields) becomes a decimal rather
/// than an error. Textual types stay text.
pub(crate) fn convert(text: &str, ty: &FieldType) -> Option<Value> {
    match ty {
        FieldType::Integer => {
            if let Some(i) = parse_int(text) {
                Some(Value::Int(i))
            } else {
                parse_decimal(text).map(Value::Decimal)
            }
        }
        FieldType::Decimal => parse_decimal(text).map(Value::Decimal),
        FieldType::Boolean => parse_bool(text).map(Value::Bool),
        FieldType::Date => parse_date(text).map(Value::Date),
        FieldType::DateTime => parse_datetime(text).map(Value::DateTime),
        _ => Some(Value::Text(text.to_owned())),
    }
}

/// Stores [`convert`] of the cell text in `slot`, reusing the slot's allocation for text;
/// returns false (and leaves `slot` as it may be) when the text does not fit the type.
pub(crate) fn convert_into(text: &str, ty: &FieldType, slot: &mut Value) -> bool {
    if !ty.is_scalar() {
        super::row::set_text(slot, text);
        return true;
    }
    match convert(text, ty) {
        Some(v) => {
            *slot = v;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn datetimes_in_every_marketo_shape() {
        let t = utc("2017-09-08T16:38:14Z");
        assert_eq!(parse_datetime("2017-09-08T16:38:14Z"), Some(t));
        assert_eq!(parse_datetime("2017-09-08T16:38:14+0000"), Some(t));
        assert_eq!(parse_datetime("2017-09-08T16:38:14Z+0000"), Some(t));
        assert_eq!(parse_datetime("2017-09-08 16:38:14"), Some(t));
        assert_eq!(parse_datetime("2017-09-08T08:38:14-08:00"), Some(t));
        assert_eq!(parse_datetime("2017-09-08T08:38:14-0800"), Some(t));
        assert_eq!(
            parse_datetime("2017-09-08T16:38:14.250Z"),
            Some(utc("2017-09-08T16:38:14.250Z"))
        );
        assert_eq!(parse_datetime("2017-09-08"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn dates_booleans_and_numbers() {
        let d = NaiveDate::from_ymd_opt(2017, 9, 8).unwrap();
        assert_eq!(parse_date("2017-09-08"), Some(d));
        assert_eq!(parse_date("2017-09-08T16:38:14Z"), Some(d));
        assert_eq!(parse_date("08/09/2017"), None);
        assert_eq!(parse_date("2017-02-30"), None);
        // Not the plain form: chrono's format parser reads it.
        assert_eq!(parse_date("2017-9-08"), Some(d));
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("FALSE"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("42.0"), Some(42));
        assert_eq!(parse_int("42.5"), None);
        assert_eq!(parse_decimal("1.5E3"), Some(Decimal::from(1500)));
        assert_eq!(
            convert("12.5", &FieldType::Integer),
            Some(Value::Decimal("12.5".parse().unwrap()))
        );
        assert_eq!(convert("abc", &FieldType::Integer), None);
        assert_eq!(
            convert("007", &FieldType::Text { max_len: None }),
            Some(Value::Text("007".into()))
        );
    }

    proptest::proptest! {
        /// The `YYYY-MM-DD` fast path reads exactly what chrono's format parser reads.
        #[test]
        fn plain_dates_read_as_chrono_reads_them(y in 0u32..10_000, m in 0u32..14, d in 0u32..33) {
            let s = format!("{y:04}-{m:02}-{d:02}");
            let chrono = NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok();
            proptest::prop_assert_eq!(plain_date(&s), chrono);
            proptest::prop_assert_eq!(parse_date(&s), chrono);
        }
    }
}
