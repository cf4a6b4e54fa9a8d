//! The shared vocabulary: values, fields and object schemas as every room of the service sees them.
//!
//! Both remotes describe their objects in their own terms (Marketo's Describe, a SQL catalog, a
//! CRM's metadata API). Each client converts what it reads into these types, so that `mapping` can
//! compile mapping files against either side, and `store` can persist agreed values, without
//! knowing which remote they came from.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One of the two systems the service keeps in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Adobe Marketo Engage.
    Marketo,
    /// The CRM behind the configured adapter.
    Crm,
}

impl Side {
    /// Returns the other side.
    pub fn other(self) -> Side {
        match self {
            Side::Marketo => Side::Crm,
            Side::Crm => Side::Marketo,
        }
    }

    /// Returns the lowercase name used in logs, metrics and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Marketo => "marketo",
            Side::Crm => "crm",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The way a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From Marketo into the CRM.
    MarketoToCrm,
    /// From the CRM into Marketo.
    CrmToMarketo,
}

impl Direction {
    /// Returns the direction whose writes land on `target`.
    pub fn towards(target: Side) -> Direction {
        match target {
            Side::Crm => Direction::MarketoToCrm,
            Side::Marketo => Direction::CrmToMarketo,
        }
    }

    /// Returns the side records are written to.
    pub fn target(self) -> Side {
        match self {
            Direction::MarketoToCrm => Side::Crm,
            Direction::CrmToMarketo => Side::Marketo,
        }
    }

    /// Returns the label used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::MarketoToCrm => "marketo_to_crm",
            Direction::CrmToMarketo => "crm_to_marketo",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a sync cycle ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleOutcome {
    /// Still running (only in status reports).
    Running,
    /// Every record was applied.
    Succeeded,
    /// The cycle finished but some records failed and were recorded as sync errors.
    Partial,
    /// The cycle stopped on an error; its watermarks were not advanced past the failure.
    Failed,
    /// Shutdown or a pause stopped the cycle before it finished.
    Cancelled,
}

impl CycleOutcome {
    /// Returns the label used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CycleOutcome::Running => "running",
            CycleOutcome::Succeeded => "succeeded",
            CycleOutcome::Partial => "partial",
            CycleOutcome::Failed => "failed",
            CycleOutcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for CycleOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a field, reduced to what the sync needs to normalise and check values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FieldType {
    /// Free text, with its maximum length in characters when the remote declares one.
    Text { max_len: Option<u32> },
    /// An email address (text that Marketo checks).
    Email,
    /// A phone number (text).
    Phone,
    /// A URL (text).
    Url,
    /// A whole number.
    Integer,
    /// A decimal number (also currency, percent and float fields).
    Decimal,
    /// true or false.
    Boolean,
    /// A calendar date without a time.
    Date,
    /// An instant, kept in UTC.
    DateTime,
    /// A single choice out of a list (Marketo picklists are plain strings).
    Picklist { options: Vec<String> },
    /// A reference to another record (a foreign key, a Marketo `reference` field).
    Reference { object: Option<String> },
    /// Anything else; the remote's own type name is kept for messages.
    Other { name: String },
}

impl FieldType {
    /// Returns true when values of this type are carried as text.
    pub fn is_textual(&self) -> bool {
        matches!(
            self,
            FieldType::Text { .. }
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Url
                | FieldType::Picklist { .. }
                | FieldType::Other { .. }
        )
    }

    /// Returns true for the types whose values are parsed from their text (numbers, booleans,
    /// dates and times); every other type's values are read as text.
    pub fn is_scalar(&self) -> bool {
        matches!(
            self,
            FieldType::Integer
                | FieldType::Decimal
                | FieldType::Boolean
                | FieldType::Date
                | FieldType::DateTime
        )
    }

    /// Returns the maximum length of a textual value, if the remote declares one.
    pub fn max_len(&self) -> Option<u32> {
        match self {
            FieldType::Text { max_len } => *max_len,
            _ => None,
        }
    }

    /// Returns a short name for messages ("text(255)", "integer", ...).
    pub fn describe(&self) -> String {
        match self {
            FieldType::Text { max_len: Some(n) } => format!("text({n})"),
            FieldType::Text { max_len: None } => "text".to_owned(),
            FieldType::Email => "email".to_owned(),
            FieldType::Phone => "phone".to_owned(),
            FieldType::Url => "url".to_owned(),
            FieldType::Integer => "integer".to_owned(),
            FieldType::Decimal => "decimal".to_owned(),
            FieldType::Boolean => "boolean".to_owned(),
            FieldType::Date => "date".to_owned(),
            FieldType::DateTime => "datetime".to_owned(),
            FieldType::Picklist { .. } => "picklist".to_owned(),
            FieldType::Reference { .. } => "reference".to_owned(),
            FieldType::Other { name } => name.clone(),
        }
    }
}

/// One field of an object as its remote describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    /// The API name (Marketo REST name, SQL column name, ...).
    pub name: String,
    /// The human label, when the remote has one.
    pub label: Option<String>,
    /// The field's type.
    pub ty: FieldType,
    /// The remote refuses writes to this field.
    pub read_only: bool,
    /// The remote requires a value on create.
    pub required: bool,
    /// Values are unique across the object (usable as a key).
    pub unique: bool,
    /// The field can be used to look records up (Marketo `searchableFields`, an indexed column).
    pub searchable: bool,
}

impl FieldDef {
    /// Returns a writable, optional, non-unique field of the given type.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        FieldDef {
            name: name.into(),
            label: None,
            ty,
            read_only: false,
            required: false,
            unique: false,
            searchable: false,
        }
    }
}

/// The schema of one object on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSchema {
    /// The side that described it.
    pub side: Side,
    /// The remote's name for the object ("lead", "company", "contacts", "car_c", ...).
    pub object: String,
    /// The field holding the remote's own id ("id", "marketoGUID", a primary key column).
    pub id_field: Option<String>,
    /// The fields the remote de-duplicates on (Marketo `dedupeFields`).
    pub dedupe_fields: Vec<String>,
    /// Every field, in the remote's order.
    pub fields: Vec<FieldDef>,
}

impl ObjectSchema {
    /// Returns the field with this exact name.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Returns a stable SHA-256 (hex) of the schema, used to notice schema drift.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("schemas always serialise");
        hex::encode(Sha256::digest(json))
    }
}

/// A field value, raw as read from a remote or canonical after `mapping` normalised it.
///
/// Two values are equal when their canonical JSON forms are equal (see [`Value::to_json`]):
/// the mapping gives each field one canonical type, so this is what "the same value" means
/// for echo suppression and three-way diffs.
#[derive(Debug, Clone)]
pub enum Value {
    /// No value (Marketo's `null` literal, SQL NULL, an empty Marketo field).
    Null,
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A decimal number.
    Decimal(Decimal),
    /// A boolean.
    Bool(bool),
    /// A date.
    Date(NaiveDate),
    /// An instant in UTC.
    DateTime(DateTime<Utc>),
}

impl Value {
    /// Returns true for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Returns the canonical JSON form: null, a bool, an integer, or a string (decimals in
    /// plain notation, dates as `YYYY-MM-DD`, instants as RFC 3339 UTC with whole seconds).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Decimal(d) => serde_json::Value::String(d.normalize().to_string()),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Date(d) => serde_json::Value::String(d.format("%Y-%m-%d").to_string()),
            Value::DateTime(t) => {
                serde_json::Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
            }
        }
    }

    /// Returns the value read back from its canonical JSON form. Strings stay text; arrays and
    /// objects are kept as their JSON text.
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => n
                    .to_string()
                    .parse::<Decimal>()
                    .map(Value::Decimal)
                    .unwrap_or_else(|_| Value::Text(n.to_string())),
            },
            serde_json::Value::String(s) => Value::Text(s.clone()),
            other => Value::Text(other.to_string()),
        }
    }

    /// Returns the value as text the way it would be written into a CSV cell (empty for null).
    pub fn to_text(&self) -> String {
        match self.to_json() {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

/// Two values are equal when their canonical JSON forms are ([`Value::to_json`]); values of one
/// kind compare without building those forms (decimals numerically, which their normalised text
/// agrees with; instants to the whole second).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Decimal(a), Value::Decimal(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Date(a), Value::Date(b)) => a == b,
            (Value::DateTime(a), Value::DateTime(b)) => a.timestamp() == b.timestamp(),
            // Across kinds (text "2024-01-01" and that date are one canonical value).
            _ => self.to_json() == other.to_json(),
        }
    }
}

impl Eq for Value {}

/// Writes the canonical JSON form ([`Value::to_json`]) without building it first (links' agreed
/// values are written and read by the thousand per cycle).
impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Decimal(d) => serializer.collect_str(&d.normalize()),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Date(d) => serializer.collect_str(&d.format("%Y-%m-%d")),
            Value::DateTime(t) => {
                serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
            }
        }
    }
}

/// Reads what [`Value::from_json`] reads, without building the JSON value first (arrays and
/// objects, which only a foreign writer puts there, still go through it).
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::from_json(&serde_json::Value::from(u)),
        })
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::from_json(&serde_json::Value::from(f)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Text(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Text(s))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        let json =
            serde_json::Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Value::from_json(&json))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let json =
            serde_json::Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Value::from_json(&json))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A record's fields by name. Ordered, so that serialisation and hashes are stable.
pub type Fields = BTreeMap<String, Value>;

/// Returns a stable SHA-256 (hex) of a set of fields, from their canonical JSON.
pub fn fields_hash(fields: &Fields) -> String {
    let bytes = serde_json::to_vec(fields).expect("fields always serialise");
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_by_canonical_form() {
        let date = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        assert_eq!(Value::Date(date), Value::Text("2024-03-01".into()));
        assert_ne!(Value::Int(1), Value::Text("1".into()));
        assert_eq!(
            Value::Decimal("12.50".parse().unwrap()),
            Value::Decimal("12.5".parse().unwrap())
        );
    }

    #[test]
    fn fields_hash_ignores_insertion_order_but_not_values() {
        let mut a = Fields::new();
        a.insert("b".into(), Value::Int(2));
        a.insert("a".into(), Value::Text("x".into()));
        let mut b = Fields::new();
        b.insert("a".into(), Value::Text("x".into()));
        b.insert("b".into(), Value::Int(2));
        assert_eq!(fields_hash(&a), fields_hash(&b));
        b.insert("b".into(), Value::Int(3));
        assert_ne!(fields_hash(&a), fields_hash(&b));
    }

    /// The direct (de)serialisation writes and reads exactly the canonical JSON form.
    #[test]
    fn serde_agrees_with_the_canonical_json_form() {
        let date = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        let t = "2024-05-06T07:08:09.5Z".parse::<DateTime<Utc>>().unwrap();
        for v in [
            Value::Null,
            Value::Text("a \"quoted\" \u{2028} text".into()),
            Value::Int(-42),
            Value::Int(i64::MAX),
            Value::Decimal("12.500".parse().unwrap()),
            Value::Bool(true),
            Value::Date(date),
            Value::DateTime(t),
        ] {
            let direct = serde_json::to_string(&v).unwrap();
            assert_eq!(direct, v.to_json().to_string(), "{v:?}");
            assert_eq!(serde_json::to_value(&v).unwrap(), v.to_json(), "{v:?}");
        }
        for text in [
            "null",
            "true",
            "-7",
            "18446744073709551615",
            "1.5",
            "1e3",
            "\"x\"",
            "[1,\"a\",null]",
            "{\"k\":[true]}",
        ] {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            let direct: Value = serde_json::from_str(text).unwrap();
            let via_value: Value = serde_json::from_value(json.clone()).unwrap();
            let expected = Value::from_json(&json);
            assert_eq!(format!("{direct:?}"), format!("{expected:?}"), "{text}");
            assert_eq!(format!("{via_value:?}"), format!("{expected:?}"), "{text}");
        }
    }

    #[test]
    fn json_round_trip_keeps_the_canonical_form() {
        let t = "2024-05-06T07:08:09Z".parse::<DateTime<Utc>>().unwrap();
        let v = Value::DateTime(t);
        let back: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    mod equality {
        use super::super::Value;
        use chrono::{DateTime, NaiveDate};
        use proptest::prelude::*;
        use rust_decimal::Decimal;

        /// Values of every kind, with the near-misses the fast comparison must get right:
        /// decimals with trailing zeros, instants a fraction of a second apart, text that
        /// reads as a date, an instant or a number.
        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                (-3i64..3).prop_map(Value::Int),
                any::<bool>().prop_map(Value::Bool),
                (-300i64..300, 0u32..4).prop_map(|(m, s)| Value::Decimal(Decimal::new(m, s))),
                (0i64..3).prop_map(|d| Value::Date(
                    NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Days::new(d as u64)
                )),
                (0i64..3, 0u32..3).prop_map(|(s, ms)| Value::DateTime(
                    DateTime::from_timestamp(1_704_067_200 + s, ms * 400_000_000).unwrap()
                )),
                prop::sample::select(vec![
                    "",
                    "1",
                    "1.0",
                    "0",
                    "true",
                    "2024-01-01",
                    "2024-01-02",
                    "2024-01-01T00:00:00Z",
                    "2024-01-01T00:00:01Z",
                    "a",
                ])
                .prop_map(Value::from),
            ]
        }

        proptest! {
            #[test]
            fn equality_is_equality_of_the_canonical_json(a in value(), b in value()) {
                prop_assert_eq!(a == b, a.to_json() == b.to_json(), "{:?} vs {:?}", a, b);
            }
        }
    }
}
