//! Binary COPY encoding of values into staging tables (text input form for
//! the types binary COPY cannot carry).

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use cdc_core::arrow::bit_string;
use cdc_core::{DataType, Value};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

pub(super) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
pub(super) const PG_EPOCH_DAYS: i32 = 10_957;

/// One value in the binary COPY, encoded for its staging type.
#[derive(Debug)]
pub(super) struct Cell<'a> {
    pub(super) value: &'a Value,
    pub(super) data_type: &'a DataType,
    pub(super) geometry_as_point: bool,
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let mismatch = || -> Box<dyn StdError + Sync + Send> {
            format!("value {:?} cannot be written as {ty}", self.value).into()
        };
        match self.value {
            Value::Null | Value::Unavailable => return Ok(IsNull::Yes),
            Value::Bool(b) if *ty == Type::BOOL => out.put_u8(u8::from(*b)),
            Value::Int(i) if *ty == Type::INT2 => out.put_i16(i16::try_from(*i).map_err(|_| mismatch())?),
            Value::Int(i) if *ty == Type::INT4 => out.put_i32(i32::try_from(*i).map_err(|_| mismatch())?),
            Value::Int(i) if *ty == Type::INT8 => out.put_i64(*i),
            Value::Float(f) if *ty == Type::FLOAT4 => out.put_f32(*f as f32),
            Value::Float(f) if *ty == Type::FLOAT8 => out.put_f64(*f),
            Value::Bytes(b) if *ty == Type::BYTEA => out.put_slice(b),
            Value::Date(d) if *ty == Type::DATE => out.put_i32(match *d {
                // i32::MAX / i32::MIN are PostgreSQL's own infinity / -infinity.
                i32::MAX | i32::MIN => *d,
                d => d.checked_sub(PG_EPOCH_DAYS).ok_or_else(mismatch)?,
            }),
            Value::Time(t) if *ty == Type::TIME => out.put_i64(*t),
            Value::Timestamp(t) | Value::TimestampTz(t) if *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ => {
                // i64::MAX / i64::MIN are PostgreSQL's own infinity / -infinity.
                out.put_i64(match *t {
                    i64::MAX | i64::MIN => *t,
                    t => t.checked_sub(PG_EPOCH_MICROS).ok_or_else(mismatch)?,
                })
            }
            Value::Duration(micros) if *ty == Type::INTERVAL => {
                out.put_i64(*micros);
                out.put_i32(0);
                out.put_i32(0);
            }
            Value::Interval(i) if *ty == Type::INTERVAL => {
                out.put_i64(i.micros);
                out.put_i32(i.days);
                out.put_i32(i.months);
            }
            value if *ty == Type::TEXT => {
                let text = pg_text(self.data_type, value, self.geometry_as_point).ok_or_else(mismatch)?;
                out.put_slice(text.as_bytes());
            }
            _ => return Err(mismatch()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// PostgreSQL input text for values staged as text.
pub(super) fn pg_text(data_type: &DataType, value: &Value, geometry_as_point: bool) -> Option<String> {
    Some(match (data_type, value) {
        (DataType::Bits { length, varying }, Value::Bytes(b)) => bit_string(b, *length, *varying),
        (_, Value::String(s)) => s.to_string(),
        (_, Value::Decimal(d)) => d.to_string(),
        (_, Value::BigDecimal(d)) => d.to_string(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::Bool(b)) => b.to_string(),
        (_, Value::Float(f)) if f.is_nan() => "NaN".into(),
        (_, Value::Float(f)) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        (_, Value::Float(f)) => format!("{f:?}"),
        (_, Value::Bytes(b)) => format!("\\x{}", b.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        (_, Value::Geometry { wkb, .. }) if geometry_as_point && wkb.len() == 21 => {
            let x = f64::from_le_bytes(wkb.get(5..13)?.try_into().ok()?);
            let y = f64::from_le_bytes(wkb.get(13..21)?.try_into().ok()?);
            format!("({x:?},{y:?})")
        }
        (_, Value::Geometry { wkb, .. }) => {
            format!("\\x{}", wkb.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        (DataType::Array(element), Value::List(items)) => {
            let mut text = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                match item {
                    Value::Null | Value::Unavailable => text.push_str("NULL"),
                    item => {
                        let inner = pg_text(element, item, geometry_as_point)?;
                        text.push('"');
                        text.push_str(&inner.replace('\\', "\\\\").replace('"', "\\\""));
                        text.push('"');
                    }
                }
            }
            text.push('}');
            text
        }
        // Dates and times travel binary; nothing else reaches text staging.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_text_quotes_every_element() {
        let data_type = DataType::Array(Box::new(DataType::String));
        let value = Value::List(vec![Value::String("a \"b\"".into()), Value::Null, Value::String("c\\".into())]);
        assert_eq!(pg_text(&data_type, &value, false).unwrap(), r#"{"a \"b\"",NULL,"c\\"}"#);
    }
}

/// A value as PostgreSQL's binary format has it, whatever its type: read
/// from one table and written back to another of the same column types
/// (binary COPY), it is the same value, never converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Binary(pub Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Binary {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Binary, Box<dyn StdError + Sync + Send>> {
        Ok(Binary(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for Binary {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Binary {
    /// `value` in the binary format of `ty`.
    pub(super) fn of<T: ToSql>(value: &T, ty: &Type) -> Option<Binary> {
        let mut out = BytesMut::new();
        match value.to_sql(ty, &mut out) {
            Ok(IsNull::No) => Some(Binary(out.to_vec())),
            _ => None,
        }
    }

    /// A text value (`text` and `varchar` share their binary format).
    pub(super) fn text(value: &str) -> Binary {
        Binary(value.as_bytes().to_vec())
    }
}
