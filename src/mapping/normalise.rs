//! Value normalisation per field type, and text transforms.

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use rust_decimal::Decimal;

use crate::config::{Transform, parse_instant};
use crate::model::{FieldType, Value};

/// Returns the value in its canonical form for a field of type `ty`: trimmed text (empty is
/// null), whole numbers, decimals, booleans from `true/false` and `0/1`, dates, UTC instants
/// with whole seconds.
///
/// # Errors
///
/// Returns a short reason when the value cannot be read as that type.
pub fn normalise(ty: &FieldType, value: &Value) -> Result<Value, String> {
    match (ty, value) {
        (FieldType::Integer | FieldType::Decimal | FieldType::Boolean, _)
        | (FieldType::Date | FieldType::DateTime, _)
        | (_, Value::Null) => normalise_scalar(ty, value),
        (_, Value::Text(s)) => Ok(trimmed_text(s.trim())),
        (_, other) => Ok(trimmed_text(other.to_text().trim())),
    }
}

/// Returns [`normalise`] of a value the caller gives up: text that needs no trimming is moved,
/// not copied (the per-row path of exports and change feeds).
///
/// # Errors
///
/// As [`normalise`].
pub fn normalise_owned(ty: &FieldType, value: Value) -> Result<Value, String> {
    match (ty, value) {
        (FieldType::Integer | FieldType::Decimal | FieldType::Boolean, v)
        | (FieldType::Date | FieldType::DateTime, v) => normalise_scalar(ty, &v),
        (_, Value::Text(s)) => {
            let trimmed = s.trim();
            if trimmed.len() == s.len() {
                Ok(if s.is_empty() {
                    Value::Null
                } else {
                    Value::Text(s)
                })
            } else {
                Ok(trimmed_text(trimmed))
            }
        }
        (_, v) => normalise(ty, &v),
    }
}

/// Returns trimmed text as a value: empty text is null.
fn trimmed_text(trimmed: &str) -> Value {
    if trimmed.is_empty() {
        Value::Null
    } else {
        Value::Text(trimmed.to_owned())
    }
}

/// [`normalise`] of the non-text types (and null).
fn normalise_scalar(ty: &FieldType, value: &Value) -> Result<Value, String> {
    if let Value::Text(s) = value
        && s.trim().is_empty()
    {
        return Ok(Value::Null);
    }
    if value.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        FieldType::Integer => to_int(value),
        FieldType::Decimal => to_decimal(value).map(|d| Value::Decimal(d.normalize())),
        FieldType::Boolean => to_bool(value).map(Value::Bool),
        FieldType::Date => to_date(value).map(Value::Date),
        FieldType::DateTime => to_datetime(value).map(Value::DateTime),
        _ => Ok(trimmed_text(text_of(value).trim())),
    }
}

/// Returns the canonical value converted for writing into a field of type `ty`; values that
/// cannot be converted are returned unchanged for the remote to judge.
pub fn convert_for(ty: &FieldType, value: &Value) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    let converted = match (ty, value) {
        (FieldType::Integer, Value::Bool(b)) => Ok(Value::Int(i64::from(*b))),
        (FieldType::Boolean, Value::Int(i)) if *i == 0 || *i == 1 => Ok(Value::Bool(*i == 1)),
        (FieldType::Date, Value::DateTime(t)) => Ok(Value::Date(t.date_naive())),
        (FieldType::DateTime, Value::Date(d)) => Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| Value::DateTime(t.and_utc()))
            .unwrap_or(Value::Null)),
        (FieldType::Integer, Value::Decimal(d)) => {
            if d.fract().is_zero() {
                i64::try_from(*d).map(Value::Int).map_err(|e| e.to_string())
            } else {
                Err("fraction".to_owned())
            }
        }
        _ => normalise(ty, value),
    };
    converted.unwrap_or_else(|_| value.clone())
}

fn text_of(value: &Value) -> String {
    match value {
        Value::Text(s) => s.clone(),
        other => other.to_text(),
    }
}

fn to_int(value: &Value) -> Result<Value, String> {
    match value {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Decimal(d) if d.fract().is_zero() => i64::try_from(*d)
            .map(Value::Int)
            .map_err(|_| "is out of range for a whole number".to_owned()),
        Value::Text(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Value::Int(i));
            }
            match t.parse::<Decimal>() {
                Ok(d) if d.fract().is_zero() => i64::try_from(d)
                    .map(Value::Int)
                    .map_err(|_| "is out of range for a whole number".to_owned()),
                _ => Err("is not a whole number".to_owned()),
            }
        }
        _ => Err("is not a whole number".to_owned()),
    }
}

fn to_decimal(value: &Value) -> Result<Decimal, String> {
    match value {
        Value::Decimal(d) => Ok(*d),
        Value::Int(i) => Ok(Decimal::from(*i)),
        Value::Text(s) => {
            let t = s.trim();
            t.parse::<Decimal>()
                .or_else(|_| Decimal::from_scientific(t))
                .map_err(|_| "is not a decimal number".to_owned())
        }
        _ => Err("is not a decimal number".to_owned()),
    }
}

fn to_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err("is not a boolean (true/false or 0/1)".to_owned()),
        },
        _ => Err("is not a boolean (true/false or 0/1)".to_owned()),
    }
}

fn to_date(value: &Value) -> Result<NaiveDate, String> {
    match value {
        Value::Date(d) => Ok(*d),
        Value::DateTime(t) => Ok(t.date_naive()),
        Value::Text(s) => {
            let t = s.trim();
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .or_else(|| parse_instant(t).map(|i| i.date_naive()))
                .ok_or_else(|| "is not a date (YYYY-MM-DD)".to_owned())
        }
        _ => Err("is not a date (YYYY-MM-DD)".to_owned()),
    }
}

fn to_datetime(value: &Value) -> Result<DateTime<Utc>, String> {
    let instant = match value {
        Value::DateTime(t) => Some(*t),
        Value::Date(d) => d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
        Value::Text(s) => parse_instant(s),
        _ => None,
    };
    instant
        .and_then(|t| t.with_nanosecond(0))
        .ok_or_else(|| "is not a datetime (RFC 3339)".to_owned())
}

/// Returns the text with every transform applied in order.
pub fn apply_text(steps: &[Transform], text: &str) -> String {
    let mut out = text.to_owned();
    for step in steps {
        out = apply_one(*step, &out);
    }
    out
}

/// Returns the value with text transforms applied; non-text values pass unchanged.
pub fn apply(steps: &[Transform], value: &Value) -> Value {
    match value {
        Value::Text(s) if !steps.is_empty() => Value::Text(apply_text(steps, s)),
        other => other.clone(),
    }
}

/// Returns [`apply`] of a value the caller gives up: text is moved through the steps that do
/// not change it, and ASCII text is lower- or uppercased in place (the per-row path).
pub fn apply_owned(steps: &[Transform], value: Value) -> Value {
    match value {
        Value::Text(mut s) => {
            for step in steps {
                s = apply_one_owned(*step, s);
            }
            Value::Text(s)
        }
        other => other,
    }
}

/// Returns [`apply_one`] of text the caller gives up, without copying it when the step leaves
/// it as it is.
fn apply_one_owned(step: Transform, mut s: String) -> String {
    match step {
        Transform::Trim => {
            if s.trim().len() == s.len() {
                s
            } else {
                s.trim().to_owned()
            }
        }
        Transform::Lowercase if s.is_ascii() => {
            s.make_ascii_lowercase();
            s
        }
        Transform::Uppercase if s.is_ascii() => {
            s.make_ascii_uppercase();
            s
        }
        Transform::CollapseWhitespace if is_collapsed(&s) => s,
        _ => apply_one(step, &s),
    }
}

/// Applies [`apply_owned`]'s steps to text in place: ASCII text is lower- or uppercased and
/// trimmed where it is, steps that would leave it as it is do nothing, and only the other steps
/// build new text (the per-row path of [`super::ColumnMapping`], whose buffers are reused).
pub(super) fn apply_in_place(steps: &[Transform], s: &mut String) {
    for step in steps {
        match step {
            Transform::Trim => trim_in_place(s),
            Transform::Lowercase if s.is_ascii() => s.make_ascii_lowercase(),
            Transform::Uppercase if s.is_ascii() => s.make_ascii_uppercase(),
            Transform::CollapseWhitespace if is_collapsed(s) => {}
            _ => *s = apply_one(*step, s),
        }
    }
}

/// Trims the text where it is, without a new allocation.
pub(super) fn trim_in_place(s: &mut String) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    if start > 0 {
        s.drain(..start);
    }
}

/// Returns true when collapsing the whitespace of `s` would leave it as it is: no whitespace
/// at either end, and only single spaces between words.
fn is_collapsed(s: &str) -> bool {
    let mut previous_blank = true;
    for c in s.chars() {
        if c.is_whitespace() {
            if c != ' ' || previous_blank {
                return false;
            }
            previous_blank = true;
        } else {
            previous_blank = false;
        }
    }
    !previous_blank || s.is_empty()
}

fn apply_one(step: Transform, s: &str) -> String {
    use heck::{ToKebabCase, ToLowerCamelCase, ToSnakeCase, ToTitleCase, ToUpperCamelCase};
    match step {
        Transform::Trim => s.trim().to_owned(),
        Transform::Lowercase => s.to_lowercase(),
        Transform::Uppercase => s.to_uppercase(),
        Transform::CollapseWhitespace => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Transform::PascalCase => split_digit_capital(s).to_upper_camel_case(),
        Transform::CamelCase => split_digit_capital(s).to_lower_camel_case(),
        Transform::SnakeCase => split_digit_capital(s).to_snake_case(),
        Transform::KebabCase => split_digit_capital(s).to_kebab_case(),
        Transform::TitleCase => split_digit_capital(s).to_title_case(),
    }
}

/// Returns the text with a space between a digit and a following capital (`A1B2` → `A1 B2`).
///
/// heck splits words at separators, at lower-to-upper case changes and before the last capital
/// of an acronym (`HTTPServer` is `HTTP` + `Server`), but not after a digit, so `PascalCase` of
/// `a1_b2` (`A1B2`) would not turn back into `a1_b2`; with this split it does.
fn split_digit_capital(s: &str) -> std::borrow::Cow<'_, str> {
    let chars: Vec<char> = s.chars().collect();
    if !chars
        .windows(2)
        .any(|w| w[0].is_numeric() && w[1].is_uppercase())
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && chars[i - 1].is_numeric() && c.is_uppercase() {
            out.push(' ');
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_types() -> Vec<FieldType> {
        vec![
            FieldType::Text { max_len: Some(255) },
            FieldType::Email,
            FieldType::Integer,
            FieldType::Decimal,
            FieldType::Boolean,
            FieldType::Date,
            FieldType::DateTime,
        ]
    }

    #[test]
    fn case_conversions() {
        assert_eq!(apply_text(&[Transform::PascalCase], "new_lead"), "NewLead");
        assert_eq!(apply_text(&[Transform::SnakeCase], "NewLead"), "new_lead");
        assert_eq!(apply_text(&[Transform::CamelCase], "New Lead"), "newLead");
        assert_eq!(apply_text(&[Transform::KebabCase], "newLead"), "new-lead");
        assert_eq!(apply_text(&[Transform::TitleCase], "new-lead"), "New Lead");
        assert_eq!(
            apply_text(&[Transform::CollapseWhitespace], "  a \t b  "),
            "a b"
        );
    }

    #[test]
    fn booleans_accept_words_and_digits_only() {
        let ty = FieldType::Boolean;
        assert_eq!(normalise(&ty, &Value::from("TRUE")), Ok(Value::Bool(true)));
        assert_eq!(normalise(&ty, &Value::from("0")), Ok(Value::Bool(false)));
        assert_eq!(normalise(&ty, &Value::Int(1)), Ok(Value::Bool(true)));
        assert!(normalise(&ty, &Value::from("yes")).is_err());
        assert!(normalise(&ty, &Value::Int(2)).is_err());
    }

    #[test]
    fn datetimes_become_utc_whole_seconds() {
        let ty = FieldType::DateTime;
        let got = normalise(&ty, &Value::from("2024-05-06T09:08:09.750+02:00")).unwrap();
        assert_eq!(got, Value::from("2024-05-06T07:08:09Z"));
        let marketo = normalise(&ty, &Value::from("2024-05-06T07:08:09+0000")).unwrap();
        assert_eq!(marketo, got);
        assert!(normalise(&ty, &Value::from("yesterday")).is_err());
    }

    #[test]
    fn decimals_and_integers() {
        assert_eq!(
            normalise(&FieldType::Decimal, &Value::from(" 12.50 ")),
            Ok(Value::Decimal("12.5".parse().unwrap()))
        );
        assert_eq!(
            normalise(&FieldType::Integer, &Value::from("42.0")),
            Ok(Value::Int(42))
        );
        assert!(normalise(&FieldType::Integer, &Value::from("4.2")).is_err());
        assert_eq!(
            normalise(&FieldType::Text { max_len: None }, &Value::from("  ")),
            Ok(Value::Null)
        );
    }

    fn transform_strategy() -> impl Strategy<Value = Transform> {
        prop_oneof![
            Just(Transform::Trim),
            Just(Transform::Lowercase),
            Just(Transform::Uppercase),
            Just(Transform::CollapseWhitespace),
            Just(Transform::PascalCase),
            Just(Transform::CamelCase),
            Just(Transform::SnakeCase),
            Just(Transform::KebabCase),
            Just(Transform::TitleCase),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            any::<bool>().prop_map(Value::Bool),
            "[ a-zA-Z0-9_.:+-]{0,24}".prop_map(Value::Text),
            (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| {
                Value::DateTime(DateTime::from_timestamp(s, n).unwrap_or_default())
            }),
            (any::<i64>(), 0u32..10).prop_map(|(m, s)| Value::Decimal(Decimal::new(m, s))),
        ]
    }

    proptest! {
        #[test]
        fn every_transform_is_idempotent(
            step in transform_strategy(),
            parts in proptest::collection::vec(("[a-zA-Z][a-z0-9]{1,6}", "[ _-]{0,2}"), 0..5),
        ) {
            let s: String = parts.iter().map(|(w, sep)| format!("{w}{sep}")).collect();
            let once = apply_text(&[step], &s);
            prop_assert_eq!(apply_text(&[step], &once), once);
        }

        /// The in-place path gives what the copying path gives, on text with every kind of
        /// blank, case and non-ASCII letter (where it falls back to the copying path).
        #[test]
        fn owned_transforms_give_what_copying_ones_give(
            steps in proptest::collection::vec(transform_strategy(), 0..4),
            s in "[ \t\n\u{a0}\u{2028}aZé_ǅİß-]{0,12}",
        ) {
            let value = Value::Text(s.clone());
            prop_assert_eq!(apply_owned(&steps, value.clone()), apply(&steps, &value));
            prop_assert_eq!(apply_owned(&steps, value), Value::Text(apply_text(&steps, &s)));
        }

        #[test]
        fn snake_and_pascal_round_trip(words in proptest::collection::vec("[a-z][a-z0-9]{1,6}", 1..5)) {
            let snake = words.join("_");
            let pascal = apply_text(&[Transform::PascalCase], &snake);
            prop_assert_eq!(apply_text(&[Transform::SnakeCase], &pascal), snake);
        }

        #[test]
        fn normalise_is_idempotent(v in value_strategy()) {
            for ty in all_types() {
                if let Ok(once) = normalise(&ty, &v) {
                    let twice = normalise(&ty, &once);
                    prop_assert_eq!(twice, Ok(once.clone()), "type {}", ty.describe());
                }
            }
        }

        #[test]
        fn normalised_text_round_trips_through_its_text_form(v in value_strategy()) {
            for ty in all_types() {
                if let Ok(once) = normalise(&ty, &v) {
                    let back = normalise(&ty, &Value::Text(once.to_text()));
                    prop_assert_eq!(back, Ok(once.clone()), "type {}", ty.describe());
                }
            }
        }

        #[test]
        fn normalise_never_panics(s in "\\PC{0,40}") {
            for ty in all_types() {
                let _ = normalise(&ty, &Value::Text(s.clone()));
            }
        }
    }
}
