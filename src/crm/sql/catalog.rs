//! Reads tables and views from the database catalog.

use std::collections::HashMap;

use crate::crm::{CrmError, RefusalReason};
use crate::model::FieldType;

use super::dialect::{Dialect, SqlPool};

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The exact column name.
    pub name: String,
    /// The catalog type name (`bigint`, `varchar`, `DATETIME`, ...).
    pub type_name: String,
    /// The type used in `CAST($n AS ...)` on PostgreSQL (empty elsewhere).
    pub cast: String,
    /// The field type.
    pub ty: FieldType,
    /// NULL is allowed.
    pub nullable: bool,
    /// The column has a default (or is generated, identity, auto-increment).
    pub has_default: bool,
    /// The database computes the value (identity, auto-increment, generated).
    pub generated: bool,
    /// Part of the single-column primary key.
    pub primary: bool,
    /// A single-column unique index covers it (usable as an upsert key).
    pub unique: bool,
    /// The first column of an index.
    pub searchable: bool,
    /// Fractional-second digits of a timestamp column.
    pub precision: Option<u32>,
}

impl Column {
    /// Returns the column's declared type with its modifiers (`numeric(10,2)`,
    /// `character varying(128)`, `decimal(15,2)`, `VARCHAR(8)`).
    pub fn declared_type(&self) -> &str {
        if self.cast.is_empty() {
            &self.type_name
        } else {
            &self.cast
        }
    }

    /// Returns what the column can hold, as far as the adapter checks before writing.
    pub fn limit(&self, d: Dialect) -> Limit {
        if let Some(n) = self.ty.max_len() {
            return Limit::Chars(n);
        }
        let declared = self.declared_type().to_ascii_lowercase();
        match self.ty {
            FieldType::Decimal => {
                let exact = ["numeric", "decimal", "dec", "fixed"]
                    .iter()
                    .any(|t| declared.starts_with(t));
                match (exact, modifiers(&declared).as_slice()) {
                    (true, [p]) => Limit::Numeric {
                        precision: *p,
                        scale: 0,
                    },
                    (true, [p, s, ..]) => Limit::Numeric {
                        precision: *p,
                        scale: *s,
                    },
                    _ => Limit::None,
                }
            }
            FieldType::Integer => {
                let bits: u32 = match d {
                    // SQLite stores every integer in 64 bits, whatever the declared type.
                    Dialect::Sqlite => 64,
                    Dialect::Postgres => match self.type_name.as_str() {
                        "int2" => 16,
                        "int4" => 32,
                        _ => 64,
                    },
                    Dialect::MySql => {
                        let base = declared.split(['(', ' ']).next().unwrap_or_default();
                        match base {
                            "tinyint" => 8,
                            "smallint" => 16,
                            "mediumint" => 24,
                            "int" | "integer" => 32,
                            _ => 64,
                        }
                    }
                };
                if declared.contains("unsigned") {
                    Limit::Integer {
                        min: 0,
                        max: (1i128 << bits) - 1,
                    }
                } else {
                    Limit::Integer {
                        min: -(1i128 << (bits - 1)),
                        max: (1i128 << (bits - 1)) - 1,
                    }
                }
            }
            _ => Limit::None,
        }
    }

    /// Checks that a value in the text form written to this column fits it without being
    /// shortened, rounded or coerced; returns the reason it does not. Text that does not parse
    /// as the column's type is left to the database to refuse.
    pub fn check_fits(&self, d: Dialect, text: &str) -> Result<(), RefusalReason> {
        let out_of_range = || RefusalReason::OutOfRange {
            field: self.name.clone(),
            column_type: self.declared_type().to_owned(),
        };
        match self.limit(d) {
            Limit::None => Ok(()),
            Limit::Chars(max) => {
                let actual = text.chars().count();
                if actual > max as usize {
                    Err(RefusalReason::TooLong {
                        field: self.name.clone(),
                        max_chars: max,
                        actual_chars: u32::try_from(actual).unwrap_or(u32::MAX),
                    })
                } else {
                    Ok(())
                }
            }
            Limit::Numeric { precision, scale } => {
                let Some(d) = parse_decimal(text) else {
                    return Ok(());
                };
                let d = d.normalize();
                let int_digits = {
                    let whole = d.trunc().abs();
                    if whole.is_zero() {
                        0
                    } else {
                        whole.to_string().len() as u32
                    }
                };
                if d.scale() > scale || int_digits > precision.saturating_sub(scale) {
                    Err(out_of_range())
                } else {
                    Ok(())
                }
            }
            Limit::Integer { min, max } => {
                let t = text.trim();
                if let Ok(n) = t.parse::<i128>() {
                    return if n < min || n > max {
                        Err(out_of_range())
                    } else {
                        Ok(())
                    };
                }
                match parse_decimal(t) {
                    Some(d) if !d.fract().is_zero() => Err(out_of_range()),
                    Some(d) => match d.trunc().to_string().parse::<i128>() {
                        Ok(n) if n < min || n > max => Err(out_of_range()),
                        _ => Ok(()),
                    },
                    None => Ok(()),
                }
            }
        }
    }
}

/// What a column can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Nothing the adapter checks.
    None,
    /// Text of at most this many characters.
    Chars(u32),
    /// An exact number with at most `precision` digits, `scale` of them after the point.
    Numeric {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// A whole number in this range.
    Integer {
        /// The smallest value.
        min: i128,
        /// The largest value.
        max: i128,
    },
}

fn parse_decimal(text: &str) -> Option<rust_decimal::Decimal> {
    use std::str::FromStr;
    let t = text.trim();
    rust_decimal::Decimal::from_str(t)
        .or_else(|_| rust_decimal::Decimal::from_scientific(t))
        .ok()
}

/// Returns the numbers between the first parentheses of a type (`numeric(10,2)` -> [10, 2]).
fn modifiers(declared: &str) -> Vec<u32> {
    let Some((_, rest)) = declared.split_once('(') else {
        return Vec::new();
    };
    let inner = rest.split(')').next().unwrap_or_default();
    inner
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Returns the columns of a table or view in catalog order (empty when it does not exist).
///
/// # Errors
/// A database failure.
pub async fn columns(pool: &SqlPool, table: &str) -> Result<Vec<Column>, CrmError> {
    let op = format!("read the catalog of `{table}`");
    match pool.dialect() {
        Dialect::Postgres => {
            let rows = pool
                .fetch(
                    &op,
                    "SELECT a.attname::text, t.typname::text, format_type(a.atttypid, a.atttypmod), \
                     CAST(a.attnotnull AS TEXT), CAST(a.atthasdef AS TEXT), \
                     CAST(a.attidentity <> '' OR a.attgenerated <> '' OR coalesce(pg_get_expr(d.adbin, d.adrelid), '') LIKE 'nextval(%' AS TEXT), \
                     CAST(a.atttypmod AS TEXT) \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let idx = pool
                .fetch(
                    &op,
                    "SELECT a.attname::text, CAST(i.indisunique AND i.indpred IS NULL AND i.indnatts = 1 AS TEXT), \
                     CAST(i.indisprimary AND i.indnatts = 1 AS TEXT) \
                     FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                     WHERE i.indrelid = to_regclass(quote_ident($1))"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let name = text(&r, 0);
                let typname = text(&r, 1);
                let typmod: i64 = text(&r, 6).parse().unwrap_or(-1);
                let max_len = matches!(typname.as_str(), "varchar" | "bpchar")
                    .then_some(typmod)
                    .filter(|m| *m > 4)
                    .map(|m| (m - 4) as u32);
                let ty = pg_type(&typname, max_len);
                let precision = matches!(typname.as_str(), "timestamp" | "timestamptz")
                    .then(|| if typmod < 0 { 6 } else { typmod as u32 });
                out.push(Column {
                    cast: text(&r, 2),
                    type_name: typname,
                    ty,
                    nullable: text(&r, 3) != "true",
                    has_default: text(&r, 4) == "true" || text(&r, 5) == "true",
                    generated: text(&r, 5) == "true",
                    primary: false,
                    unique: false,
                    searchable: false,
                    precision,
                    name,
                });
            }
            apply_indexes(
                &mut out,
                idx.iter()
                    .map(|r| (text(r, 0), text(r, 1) == "true", text(r, 2) == "true")),
            );
            Ok(out)
        }
        Dialect::MySql => {
            let rows = pool
                .fetch(
                    &op,
                    "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
                     CAST(CHARACTER_MAXIMUM_LENGTH AS CHAR), CAST(IS_NULLABLE AS CHAR), \
                     CAST(COLUMN_DEFAULT IS NOT NULL AS CHAR), CAST(EXTRA AS CHAR), CAST(DATETIME_PRECISION AS CHAR) \
                     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
                     ORDER BY ORDINAL_POSITION"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let idx = pool
                .fetch(
                    &op,
                    "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), CAST(NON_UNIQUE AS CHAR), CAST(SEQ_IN_INDEX AS CHAR) \
                     FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let data_type = text(&r, 1).to_ascii_lowercase();
                let column_type = text(&r, 2).to_ascii_lowercase();
                let max_len = text(&r, 3)
                    .parse::<u64>()
                    .ok()
                    .map(|n| n.min(u32::MAX as u64) as u32);
                let extra = text(&r, 6).to_ascii_lowercase();
                let generated = extra.contains("auto_increment") || extra.contains("generated");
                let ty = if column_type.starts_with("tinyint(1)") || data_type == "boolean" {
                    FieldType::Boolean
                } else {
                    generic_type(&data_type, max_len)
                };
                out.push(Column {
                    name: text(&r, 0),
                    cast: String::new(),
                    type_name: column_type,
                    ty,
                    nullable: text(&r, 4) == "YES",
                    has_default: text(&r, 5) == "1" || generated,
                    generated,
                    primary: false,
                    unique: false,
                    searchable: false,
                    precision: text(&r, 7).parse().ok(),
                });
            }
            let mut sizes: HashMap<String, usize> = HashMap::new();
            for r in &idx {
                *sizes.entry(text(r, 0)).or_default() += 1;
            }
            apply_indexes(
                &mut out,
                idx.iter().filter(|r| text(r, 3) == "1").map(|r| {
                    let single = sizes.get(&text(r, 0)) == Some(&1);
                    let unique = single && text(r, 2) == "0";
                    (text(r, 1), unique, unique && text(r, 0) == "PRIMARY")
                }),
            );
            Ok(out)
        }
        Dialect::Sqlite => {
            let rows = pool
                .fetch(
                    &op,
                    "SELECT name, type, CAST(\"notnull\" AS TEXT), dflt_value, CAST(pk AS TEXT), CAST(hidden AS TEXT) \
                     FROM pragma_table_xinfo(?)"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let idx = pool
                .fetch(
                    &op,
                    "SELECT il.name, CAST(il.\"unique\" AS TEXT), CAST(il.partial AS TEXT), ii.name, CAST(ii.seqno AS TEXT) \
                     FROM pragma_index_list(?1) il, pragma_index_info(il.name) ii"
                        .to_owned(),
                    &[Some(table.to_owned())],
                )
                .await?;
            let pk_count = rows.iter().filter(|r| text(r, 4) != "0").count();
            let mut out = Vec::new();
            for r in rows {
                let declared = text(&r, 1);
                let upper = declared.to_ascii_uppercase();
                let primary = text(&r, 4) != "0" && pk_count == 1;
                let rowid = primary && upper == "INTEGER";
                let hidden = text(&r, 5);
                let generated = rowid || hidden == "2" || hidden == "3";
                let ty = sqlite_type(&upper);
                out.push(Column {
                    name: text(&r, 0),
                    cast: String::new(),
                    precision: matches!(ty, FieldType::DateTime).then_some(3),
                    ty,
                    type_name: declared,
                    nullable: text(&r, 2) == "0" && !rowid,
                    has_default: r.get(3).is_some_and(|d| d.is_some()) || generated,
                    generated,
                    primary: false,
                    unique: false,
                    searchable: false,
                });
                if primary {
                    let last = out.len() - 1;
                    out[last].primary = true;
                    out[last].unique = true;
                    out[last].searchable = true;
                }
            }
            let mut sizes: HashMap<String, usize> = HashMap::new();
            for r in &idx {
                *sizes.entry(text(r, 0)).or_default() += 1;
            }
            apply_indexes(
                &mut out,
                idx.iter().filter(|r| text(r, 4) == "0").map(|r| {
                    let unique = sizes.get(&text(r, 0)) == Some(&1)
                        && text(r, 1) == "1"
                        && text(r, 2) == "0";
                    (text(r, 3), unique, false)
                }),
            );
            Ok(out)
        }
    }
}

fn apply_indexes(columns: &mut [Column], indexes: impl Iterator<Item = (String, bool, bool)>) {
    for (name, unique, primary) in indexes {
        if let Some(c) = columns.iter_mut().find(|c| c.name == name) {
            c.searchable = true;
            c.unique |= unique;
            c.primary |= primary;
        }
    }
}

fn text(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

fn pg_type(typname: &str, max_len: Option<u32>) -> FieldType {
    match typname {
        "int2" | "int4" | "int8" => FieldType::Integer,
        "numeric" | "float4" | "float8" | "money" => FieldType::Decimal,
        "bool" => FieldType::Boolean,
        "date" => FieldType::Date,
        "timestamp" | "timestamptz" => FieldType::DateTime,
        "varchar" | "bpchar" | "text" | "citext" | "name" => FieldType::Text { max_len },
        other => FieldType::Other {
            name: other.to_owned(),
        },
    }
}

fn generic_type(data_type: &str, max_len: Option<u32>) -> FieldType {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => FieldType::Integer,
        "decimal" | "numeric" | "float" | "double" | "real" => FieldType::Decimal,
        "bool" | "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" | "timestamp" => FieldType::DateTime,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            FieldType::Text { max_len }
        }
        other => FieldType::Other {
            name: other.to_owned(),
        },
    }
}

fn sqlite_type(upper: &str) -> FieldType {
    let len = upper.split_once('(').and_then(|(_, rest)| {
        rest.trim_end_matches(')')
            .split(',')
            .next()
            .map(str::trim)
            .and_then(|n| n.parse().ok())
    });
    if upper.starts_with("BOOL") {
        FieldType::Boolean
    } else if upper == "DATE" {
        FieldType::Date
    } else if upper.contains("DATETIME") || upper.contains("TIMESTAMP") {
        FieldType::DateTime
    } else if upper.contains("INT") {
        FieldType::Integer
    } else if upper.contains("CHAR")
        || upper.contains("CLOB")
        || upper.contains("TEXT")
        || upper.is_empty()
    {
        FieldType::Text { max_len: len }
    } else if upper.contains("REAL")
        || upper.contains("FLOA")
        || upper.contains("DOUB")
        || upper.contains("NUMERIC")
        || upper.contains("DECIMAL")
    {
        FieldType::Decimal
    } else {
        FieldType::Other {
            name: upper.to_ascii_lowercase(),
        }
    }
}

/// Returns true when a table (or view) exists.
///
/// # Errors
/// A database failure.
pub async fn exists(pool: &SqlPool, table: &str) -> Result<bool, CrmError> {
    Ok(!columns(pool, table).await?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(type_name: &str, cast: &str, ty: FieldType) -> Column {
        Column {
            name: "c".into(),
            type_name: type_name.into(),
            cast: cast.into(),
            ty,
            nullable: true,
            has_default: false,
            generated: false,
            primary: false,
            unique: false,
            searchable: false,
            precision: None,
        }
    }

    #[test]
    fn values_that_do_not_fit_are_refused_with_the_limit() {
        let text = col(
            "varchar",
            "character varying(8)",
            FieldType::Text { max_len: Some(8) },
        );
        assert_eq!(text.check_fits(Dialect::Postgres, "äöüäöüäö"), Ok(()));
        assert_eq!(
            text.check_fits(Dialect::Postgres, "123456789"),
            Err(RefusalReason::TooLong {
                field: "c".into(),
                max_chars: 8,
                actual_chars: 9
            })
        );
        let money = col("decimal(10,2)", "", FieldType::Decimal);
        assert_eq!(
            money.limit(Dialect::MySql),
            Limit::Numeric {
                precision: 10,
                scale: 2
            }
        );
        assert!(money.check_fits(Dialect::MySql, "12345678.90").is_ok());
        assert!(
            money.check_fits(Dialect::MySql, "12.500").is_ok(),
            "trailing zeros"
        );
        assert!(money.check_fits(Dialect::MySql, "1.234").is_err());
        assert!(money.check_fits(Dialect::MySql, "123456789").is_err());
        let small = col("smallint(6) unsigned", "", FieldType::Integer);
        assert!(small.check_fits(Dialect::MySql, "65535").is_ok());
        assert!(small.check_fits(Dialect::MySql, "65536").is_err());
        assert!(small.check_fits(Dialect::MySql, "-1").is_err());
        let int4 = col("int4", "integer", FieldType::Integer);
        assert!(int4.check_fits(Dialect::Postgres, "2147483647").is_ok());
        assert!(int4.check_fits(Dialect::Postgres, "2147483648").is_err());
        assert!(int4.check_fits(Dialect::Postgres, "1.5").is_err());
        assert!(int4.check_fits(Dialect::Postgres, "2.0").is_ok());
        let lite = col("INTEGER", "", FieldType::Integer);
        assert!(lite.check_fits(Dialect::Sqlite, "3000000000").is_ok());
        let float = col("float8", "double precision", FieldType::Decimal);
        assert_eq!(float.limit(Dialect::Postgres), Limit::None);
    }
}
