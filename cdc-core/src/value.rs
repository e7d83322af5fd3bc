//! Column values, decoded from Debezium's JSON encodings into their exact types.

use std::fmt;

/// Micros since the epoch that stand for PostgreSQL `infinity` / `-infinity`
/// timestamps (PostgreSQL's own `DT_NOEND` / `DT_NOBEGIN`).
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;
/// See [`TIMESTAMP_INFINITY`].
pub const TIMESTAMP_NEG_INFINITY: i64 = i64::MIN;
/// Days that stand for PostgreSQL date `infinity` / `-infinity` (PostgreSQL's
/// own `DATEVAL_NOEND` / `DATEVAL_NOBEGIN`).
pub const DATE_INFINITY: i32 = i32::MAX;
/// See [`DATE_INFINITY`].
pub const DATE_NEG_INFINITY: i32 = i32::MIN;

/// One column value of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Debezium did not send the value: an unchanged TOASTed column
    /// (`__debezium_unavailable_value`) or a filler value in a delete's key-only
    /// before-image. Sinks keep what they hold; it is never a value to write.
    Unavailable,
    Bool(bool),
    /// Every integer type (int8/16/32/64, Year).
    Int(i64),
    /// float32 and float64, including NaN and the infinities.
    Float(f64),
    /// An exact decimal that fits 38 digits.
    Decimal(Decimal),
    /// An exact decimal too wide for [`Decimal`], as plain decimal text
    /// (`-123.4500`): PostgreSQL `numeric` allows up to 131072 digits.
    BigDecimal(Box<str>),
    /// Text, and every string-encoded logical type (Json, Uuid, Xml, Enum,
    /// ZonedTime, bit strings, ...); the [`DataType`](crate::DataType) says which.
    String(Box<str>),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01; [`DATE_INFINITY`] and [`DATE_NEG_INFINITY`] for the infinities.
    Date(i32),
    /// Microseconds since midnight (24:00:00 is 86_400_000_000).
    Time(i64),
    /// Microseconds since the epoch of a wall-clock timestamp without time zone.
    Timestamp(i64),
    /// Microseconds since the epoch, UTC.
    TimestampTz(i64),
    /// A duration in microseconds (`io.debezium.time.MicroDuration`).
    Duration(i64),
    /// A calendar interval (`io.debezium.time.Interval` in string mode).
    Interval(Interval),
    /// A geometry as WKB, with its SRID when Debezium sent one.
    Geometry {
        wkb: Vec<u8>,
        srid: Option<i32>,
    },
    List(Vec<Value>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Value::Unavailable)
    }
}

/// An exact decimal: `unscaled * 10^-scale`, up to 38 significant digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub unscaled: i128,
    pub scale: i32,
}

impl Decimal {
    /// Re-expresses the value at `scale` when that is exact (scaling up, or
    /// dropping trailing zeros); `None` if digits would be lost or it overflows.
    pub fn rescale(self, scale: i32) -> Option<Decimal> {
        let unscaled = match scale.cmp(&self.scale) {
            std::cmp::Ordering::Equal => self.unscaled,
            std::cmp::Ordering::Greater => {
                let factor = 10i128.checked_pow(u32::try_from(scale - self.scale).ok()?)?;
                self.unscaled.checked_mul(factor)?
            }
            std::cmp::Ordering::Less => {
                let factor = 10i128.checked_pow(u32::try_from(self.scale - scale).ok()?)?;
                if self.unscaled % factor != 0 {
                    return None;
                }
                self.unscaled / factor
            }
        };
        Some(Decimal { unscaled, scale })
    }

    /// Parses plain decimal text (`-12.50`, `7`); `None` for anything else
    /// or more than 38 digits.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty()
            || !(whole.chars().chain(fraction.chars())).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let unscaled: i128 = format!("{whole}{fraction}").parse().ok()?;
        let scale = i32::try_from(fraction.len()).ok()?;
        Some(Decimal { unscaled: if negative { -unscaled } else { unscaled }, scale })
    }

    /// Number of significant digits of the unscaled value.
    pub fn digits(self) -> u32 {
        let mut n = self.unscaled.unsigned_abs();
        let mut digits = 1;
        while n >= 10 {
            n /= 10;
            digits += 1;
        }
        digits
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, self.unscaled < 0, &self.unscaled.unsigned_abs().to_string(), self.scale)
    }
}

/// Writes `digits * 10^-scale` as plain decimal text.
pub(crate) fn write_decimal(out: &mut impl fmt::Write, negative: bool, digits: &str, scale: i32) -> fmt::Result {
    if negative && digits.bytes().any(|b| b != b'0') {
        out.write_char('-')?;
    }
    if scale <= 0 {
        out.write_str(digits)?;
        for _ in 0..(-scale) {
            out.write_char('0')?;
        }
        return Ok(());
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        write!(out, "{int}.{frac}")
    } else {
        out.write_str("0.")?;
        for _ in 0..(scale - digits.len()) {
            out.write_char('0')?;
        }
        out.write_str(digits)
    }
}

/// A PostgreSQL-style interval: months, days and microseconds kept apart,
/// because a month is not a fixed number of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    /// Parses Debezium's ISO 8601 interval text, as `interval.handling.mode=string`
    /// writes it: `P1Y2M3DT4H5M6.789S`, each part signed (`P0Y0M-1DT0H0M-0.000001S`).
    pub fn parse_iso8601(text: &str) -> Option<Interval> {
        let rest = text.strip_prefix('P')?;
        let (date, time) = match rest.split_once('T') {
            Some((d, t)) => (d, t),
            None => (rest, ""),
        };
        let mut interval = Interval::default();
        for (number, unit) in iso_parts(date)? {
            let whole: i64 = number.parse().ok()?;
            match unit {
                'Y' => interval.months = add_i32(interval.months, whole.checked_mul(12)?)?,
                'M' => interval.months = add_i32(interval.months, whole)?,
                'W' => interval.days = add_i32(interval.days, whole.checked_mul(7)?)?,
                'D' => interval.days = add_i32(interval.days, whole)?,
                _ => return None,
            }
        }
        for (number, unit) in iso_parts(time)? {
            let micros = match unit {
                'H' => number.parse::<i64>().ok()?.checked_mul(3_600_000_000)?,
                'M' => number.parse::<i64>().ok()?.checked_mul(60_000_000)?,
                'S' => parse_seconds_micros(number)?,
                _ => return None,
            };
            interval.micros = interval.micros.checked_add(micros)?;
        }
        Some(interval)
    }
}

fn add_i32(a: i32, b: i64) -> Option<i32> {
    i32::try_from(i64::from(a).checked_add(b)?).ok()
}

/// Splits `1Y-2M3D` into `[("1",'Y'), ("-2",'M'), ("3",'D')]`.
fn iso_parts(text: &str) -> Option<Vec<(&str, char)>> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphabetic() {
            if i == start {
                return None;
            }
            parts.push((&text[start..i], c));
            start = i + 1;
        }
    }
    (start == text.len()).then_some(parts)
}

/// `-6.789` seconds -> `-6_789_000` micros, exactly (no float rounding).
fn parse_seconds_micros(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    let micros = whole.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if negative { -micros } else { micros })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_keeps_scale_and_sign() {
        let d = |unscaled, scale| Decimal { unscaled, scale }.to_string();
        assert_eq!(d(1234567891, 5), "12345.67891");
        assert_eq!(d(-1, 30), "-0.000000000000000000000000000001");
        assert_eq!(d(5, 0), "5");
        assert_eq!(d(5, -2), "500");
        assert_eq!(d(0, 2), "0.00");
        assert_eq!(d(-10, 1), "-1.0");
    }

    #[test]
    fn decimal_text_parses_exactly() {
        assert_eq!(Decimal::parse("-12.50"), Some(Decimal { unscaled: -1250, scale: 2 }));
        assert_eq!(Decimal::parse("7"), Some(Decimal { unscaled: 7, scale: 0 }));
        assert_eq!(Decimal::parse(".5"), Some(Decimal { unscaled: 5, scale: 1 }));
        for bad in ["", "-", ".", "1e5", "1.2.3", "NaN", "+1"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimal_rescale_is_exact_or_refuses() {
        let d = Decimal { unscaled: 1250, scale: 3 };
        assert_eq!(d.rescale(2), Some(Decimal { unscaled: 125, scale: 2 }));
        assert_eq!(d.rescale(5), Some(Decimal { unscaled: 125000, scale: 5 }));
        assert_eq!(d.rescale(1), None);
        assert_eq!(Decimal { unscaled: i128::MAX, scale: 0 }.rescale(1), None);
    }

    #[test]
    fn iso_intervals_parse_exactly() {
        assert_eq!(
            Interval::parse_iso8601("P1Y2M3DT4H5M6.789S"),
            Some(Interval { months: 14, days: 3, micros: 14_706_789_000 })
        );
        assert_eq!(
            Interval::parse_iso8601("P0Y0M-1DT0H0M-0.000001S"),
            Some(Interval { months: 0, days: -1, micros: -1 })
        );
        assert_eq!(
            Interval::parse_iso8601("P-178000000Y0M0DT0H0M0S"),
            Some(Interval { months: -2_136_000_000, days: 0, micros: 0 })
        );
        assert_eq!(Interval::parse_iso8601("1Y"), None);
        assert_eq!(Interval::parse_iso8601("PT1.1234567S"), None);
    }
}
