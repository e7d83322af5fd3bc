//! The type mapping: Debezium column types to PostgreSQL column types, which
//! type changes widen a column in place, identifier and literal quoting.

use cdc_core::{DataType, Error, Field, Result};
use tokio_postgres::types::Type;

/// `name` as a quoted SQL identifier: events name tables and columns, so
/// every identifier is quoted; embedded quotes are doubled.
pub fn quote_ident(name: &str) -> Result<String> {
    if name.contains('\0') {
        return Err(Error::Sink {
            sink: "postgres".into(),
            message: format!("identifier {name:?} contains a NUL byte"),
            retriable: false,
        });
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A SQL string literal.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PostgreSQL column type for a Debezium column, as `format_type` spells
/// it, so it can be compared with an existing table. The source column type
/// (`column.propagate.source.type`) refines it where it is known.
pub fn pg_type(field: &Field) -> String {
    let source = field.source.as_ref();
    let source_name = source.map(|s| s.type_name.to_ascii_uppercase());
    let length = source.and_then(|s| s.length).filter(|&l| l > 0 && l < 10_485_760);
    // A time or timestamp of fewer fractional digits keeps them: Debezium
    // sends milliseconds for up to 3, so the table says which it is.
    let precision = source.and_then(|s| s.scale).filter(|p| (0..6).contains(p));
    match (&field.data_type, precision) {
        (DataType::Time(_), Some(p)) => format!("time({p}) without time zone"),
        (DataType::Timestamp(_), Some(p)) => format!("timestamp({p}) without time zone"),
        (data_type, _) => base_pg_type(data_type, source_name.as_deref(), length),
    }
}

pub(super) fn base_pg_type(data_type: &DataType, source: Option<&str>, length: Option<i64>) -> String {
    use DataType::*;
    match data_type {
        // `bit(1)` reaches Debezium's schema as a boolean.
        Boolean if source == Some("BIT") => "bit(1)".into(),
        Boolean => "boolean".into(),
        Int8 | Int16 => "smallint".into(),
        Int32 | Year => "integer".into(),
        Int64 => "bigint".into(),
        Float32 => "real".into(),
        Float64 => "double precision".into(),
        Decimal { precision: Some(p), scale } if *scale >= 0 && *scale <= i32::try_from(*p).unwrap_or(0) => {
            format!("numeric({p},{scale})")
        }
        Decimal { .. } | VariableDecimal => "numeric".into(),
        String => match (source, length) {
            (Some("VARCHAR"), Some(n)) => format!("character varying({n})"),
            (Some("BPCHAR" | "CHAR"), Some(n)) => format!("character({n})"),
            (Some("INET"), _) => "inet".into(),
            (Some("CIDR"), _) => "cidr".into(),
            (Some("MACADDR"), _) => "macaddr".into(),
            (Some("MACADDR8"), _) => "macaddr8".into(),
            (Some("TSVECTOR"), _) => "tsvector".into(),
            (Some(range @ ("INT4RANGE" | "INT8RANGE" | "NUMRANGE" | "DATERANGE" | "TSRANGE" | "TSTZRANGE")), _) => {
                range.to_ascii_lowercase()
            }
            (Some("NUMERIC" | "DECIMAL"), _) => "numeric".into(),
            _ => "text".into(),
        },
        Json if source == Some("JSON") => "json".into(),
        Json | Struct => "jsonb".into(),
        Uuid => "uuid".into(),
        Xml => "xml".into(),
        Enum { .. } | EnumSet { .. } | Dynamic => "text".into(),
        Bits { length, varying: false } => format!("bit({})", (*length).max(1)),
        Bits { length: 0, varying: true } => "bit varying".into(),
        Bits { length, varying: true } => format!("bit varying({length})"),
        Bytes => "bytea".into(),
        Geometry if source == Some("POINT") => "point".into(),
        Geometry => "bytea".into(),
        Date => "date".into(),
        Time(_) => "time without time zone".into(),
        Timestamp(_) => "timestamp without time zone".into(),
        TimestampTz => "timestamp with time zone".into(),
        ZonedTime => "time with time zone".into(),
        Duration | Interval => "interval".into(),
        Array(element) => format!("{}[]", base_pg_type(element, source.map(|s| s.trim_start_matches('_')), length)),
    }
}

/// Whether a column of type `from` (as `format_type` writes it) can be
/// altered in place to `to` without losing or changing any value (`ALTER
/// COLUMN ... TYPE`): a wider integer; `real` to `double precision`;
/// `numeric(p,s)` to `numeric(p',s')` with p'-s' >= p-s and s' >= s, or to
/// unconstrained `numeric` (integers too, when their digits fit); a longer
/// `character varying`; anything to `text`; a longer `bit varying`.
pub(super) fn widens(from: &str, to: &str) -> bool {
    use PgColumnType::*;
    match (PgColumnType::parse(from), PgColumnType::parse(to)) {
        (Integer { digits: a }, Integer { digits: b }) => a < b,
        (Integer { digits }, Numeric(None)) => digits > 0,
        (Integer { digits }, Numeric(Some((p, s)))) => p - s >= digits,
        (Real, Double) => true,
        (Numeric(Some(_)), Numeric(None)) => true,
        (Numeric(Some((p, s))), Numeric(Some((p2, s2)))) => (p2 - s2 >= p - s && s2 >= s) && (p2, s2) != (p, s),
        (Varchar(Some(n)), Varchar(m)) => m.is_none_or(|m| m > n),
        // Any value has a text form (the rule before these families were known).
        (_, Text) => true,
        (BitVarying(Some(n)), BitVarying(m)) => m.is_none_or(|m| m > n),
        (Temporal { timestamp: a, zoned: z, precision: p }, Temporal { timestamp: b, zoned: y, precision: q }) => {
            a == b && z == y && p < q
        }
        _ => false,
    }
}

/// The column types whose widening is known; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PgColumnType {
    /// `smallint`, `integer`, `bigint`, by the decimal digits they hold.
    Integer {
        digits: i64,
    },
    Real,
    Double,
    /// `numeric(p,s)`, or unconstrained.
    Numeric(Option<(i64, i64)>),
    Varchar(Option<i64>),
    Char(i64),
    Text,
    BitVarying(Option<i64>),
    /// `time` or `timestamp`, with or without time zone, by fractional digits.
    Temporal {
        timestamp: bool,
        zoned: bool,
        precision: i64,
    },
    Other,
}

impl PgColumnType {
    fn parse(name: &str) -> PgColumnType {
        for (prefix, timestamp) in [("timestamp", true), ("time", false)] {
            let Some(rest) = name.strip_prefix(prefix) else { continue };
            let (precision, rest) = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
                Some((digits, rest)) => (digits.trim().parse().unwrap_or(6), rest),
                None => (6, rest),
            };
            let zoned = match rest.trim() {
                "" | "without time zone" => false,
                "with time zone" => true,
                _ => continue,
            };
            return PgColumnType::Temporal { timestamp, zoned, precision };
        }
        let (family, arguments) = match name.split_once('(') {
            Some((family, rest)) => (family.trim(), rest.trim_end_matches(')')),
            None => (name.trim(), ""),
        };
        let numbers: Vec<i64> = arguments.split(',').filter_map(|n| n.trim().parse().ok()).collect();
        match (family, numbers.as_slice()) {
            ("smallint", []) => PgColumnType::Integer { digits: 5 },
            ("integer", []) => PgColumnType::Integer { digits: 10 },
            ("bigint", []) => PgColumnType::Integer { digits: 19 },
            ("real", []) => PgColumnType::Real,
            ("double precision", []) => PgColumnType::Double,
            ("numeric", []) => PgColumnType::Numeric(None),
            ("numeric", [p]) => PgColumnType::Numeric(Some((*p, 0))),
            ("numeric", [p, s]) => PgColumnType::Numeric(Some((*p, *s))),
            ("character varying", []) => PgColumnType::Varchar(None),
            ("character varying", [n]) => PgColumnType::Varchar(Some(*n)),
            ("character", [n]) => PgColumnType::Char(*n),
            ("text", []) => PgColumnType::Text,
            ("bit varying", []) => PgColumnType::BitVarying(None),
            ("bit varying", [n]) => PgColumnType::BitVarying(Some(*n)),
            _ => PgColumnType::Other,
        }
    }
}

/// How a value travels in the binary COPY to the staging table. Types with
/// a simple binary form go binary; the rest go as text and are cast to the
/// column type by the apply statements.
/// The expression that turns staged column `staged` (of its
/// [`staging_type`]) into the table's type `ty`.
pub(super) fn cast_staged(staged: &str, data_type: &DataType, ty: &str) -> String {
    match data_type {
        // PostgreSQL casts no boolean to a bit string; an integer it does.
        DataType::Boolean if ty.starts_with("bit") => format!("{staged}::integer::{ty}"),
        _ => format!("{staged}::{ty}"),
    }
}

pub(super) fn staging_type(data_type: &DataType) -> Type {
    use DataType::*;
    match data_type {
        Boolean => Type::BOOL,
        Int8 | Int16 => Type::INT2,
        Int32 | Year => Type::INT4,
        Int64 => Type::INT8,
        Float32 => Type::FLOAT4,
        Float64 => Type::FLOAT8,
        Bytes => Type::BYTEA,
        Date => Type::DATE,
        Time(_) => Type::TIME,
        Timestamp(_) => Type::TIMESTAMP,
        TimestampTz => Type::TIMESTAMPTZ,
        Duration | Interval => Type::INTERVAL,
        _ => Type::TEXT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widenings_lose_nothing() {
        for (from, to) in [
            ("integer", "bigint"),
            ("smallint", "numeric"),
            ("integer", "numeric(12,2)"),
            ("real", "double precision"),
            ("numeric(12,2)", "numeric(14,4)"),
            ("numeric(12,2)", "numeric"),
            ("character varying(20)", "character varying(40)"),
            ("character varying(20)", "text"),
            ("integer", "text"),
            ("character varying(20)", "character varying"),
            ("bit varying(5)", "bit varying"),
            ("timestamp(3) without time zone", "timestamp without time zone"),
            ("time(0) without time zone", "time(3) without time zone"),
        ] {
            assert!(widens(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            ("bigint", "integer"),
            ("bigint", "numeric(12,2)"),
            ("numeric(12,2)", "numeric(12,4)"),
            ("numeric(14,4)", "numeric(12,2)"),
            ("numeric", "numeric(30,2)"),
            ("double precision", "real"),
            ("character varying(40)", "character varying(20)"),
            ("text", "character varying(100)"),
            ("text", "integer"),
            ("numeric(12,2)", "numeric(12,2)"),
            ("timestamp without time zone", "timestamp(3) without time zone"),
            ("time(3) without time zone", "timestamp without time zone"),
        ] {
            assert!(!widens(from, to), "{from} -> {to}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"a"b; DROP"#).unwrap(), r#""a""b; DROP""#);
        assert!(quote_ident("a\0b").is_err());
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
