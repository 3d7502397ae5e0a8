//! The JSON encoding of metric values. JSON has no literal for NaN or ±Infinity, yet a NaN loss
//! is the most important point of a run, so non-finite values travel as the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"` (the spellings of JavaScript and Python's `json` module).
//! Finite values are plain JSON numbers and round-trip exactly.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

/// A metric value: any `f64`, non-finite ones included.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct MetricValue(pub f64);

impl MetricValue {
    /// The string spelling of a non-finite value, or `None` for a finite one.
    pub fn non_finite_str(v: f64) -> Option<&'static str> {
        if v.is_nan() {
            Some("NaN")
        } else if v == f64::INFINITY {
            Some("Infinity")
        } else if v == f64::NEG_INFINITY {
            Some("-Infinity")
        } else {
            None
        }
    }

    /// Parses the strings of the encoding; anything else is `None`.
    pub fn parse_non_finite(s: &str) -> Option<f64> {
        match s {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        }
    }
}

impl From<f64> for MetricValue {
    fn from(v: f64) -> Self {
        Self(v)
    }
}

impl fmt::Display for MetricValue {
    /// Writes the same spelling as the JSON encoding, so CSV and JSON agree: the shortest
    /// digits that read back to the same `f64`, with an exponent for very large or small values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        match Self::non_finite_str(v) {
            Some(s) => f.write_str(s),
            None if v != 0.0 && !(1e-5..1e16).contains(&v.abs()) => write!(f, "{v:e}"),
            None => write!(f, "{v}"),
        }
    }
}

impl Serialize for MetricValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match Self::non_finite_str(self.0) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_f64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for MetricValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MetricValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a number, or one of the strings "NaN", "Infinity", "-Infinity""#)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MetricValue, E> {
                Ok(MetricValue(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MetricValue, E> {
                Ok(MetricValue(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MetricValue, E> {
                Ok(MetricValue(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MetricValue, E> {
                MetricValue::parse_non_finite(v)
                    .map(MetricValue)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for MetricValue {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Number)))
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .enum_values(Some(["NaN", "Infinity", "-Infinity"])),
            )
            .description(Some(
                "A number; non-finite values as the strings \"NaN\", \"Infinity\", \"-Infinity\"",
            ))
            .into()
    }
}

impl ToSchema for MetricValue {}

/// Serde helpers for `f64` fields that use the same encoding.
pub mod plain {
    use super::MetricValue;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        MetricValue(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(MetricValue::deserialize(d)?.0)
    }
}

/// Serde helpers for `Option<f64>` fields that use the same encoding.
pub mod option {
    use super::MetricValue;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(MetricValue).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<MetricValue>::deserialize(d)?.map(|v| v.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_round_trip_through_json() {
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.1,
            -3.0,
            1e-300,
            f64::MAX,
        ] {
            let json = serde_json::to_string(&MetricValue(v)).unwrap();
            let back: MetricValue = serde_json::from_str(&json).unwrap();
            assert!(
                back.0.to_bits() == v.to_bits() || (v.is_nan() && back.0.is_nan()),
                "{v} -> {json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&MetricValue(f64::NAN)).unwrap(),
            r#""NaN""#
        );
        assert_eq!(
            serde_json::to_string(&MetricValue(f64::NEG_INFINITY)).unwrap(),
            r#""-Infinity""#
        );
    }

    #[test]
    fn display_is_short_and_reads_back_exactly() {
        for (v, text) in [
            (1e-300, "1e-300"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (1.5e20, "1.5e20"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(MetricValue(v).to_string(), text);
        }
        let v = 0.1 + 0.2;
        assert_eq!(MetricValue(v).to_string().parse::<f64>().unwrap(), v);
    }

    #[test]
    fn other_strings_and_null_are_refused() {
        assert!(serde_json::from_str::<MetricValue>(r#""nan""#).is_err());
        assert!(serde_json::from_str::<MetricValue>("null").is_err());
        assert!(serde_json::from_str::<MetricValue>("true").is_err());
        assert_eq!(serde_json::from_str::<MetricValue>("3").unwrap().0, 3.0);
    }
}
