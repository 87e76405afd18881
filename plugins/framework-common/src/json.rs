//! Strict JSON objects: every field is read by name, so a type error names its field
//! (`instances: invalid type: string "3", expected u32`) and a field nobody read is refused
//! (`unknown field "instance"`), which serde's derive cannot both do with good messages.
//!
//! A number is a number: `3.0` is read as the integer 3 wherever an integer is asked for (JSON
//! does not tell them apart, and JSON Schema's `integer` includes it), while `3.5` is refused.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The fields of one JSON object, consumed as they are read.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    prefix: String,
}

impl Fields {
    /// Parses `body` as a JSON object (whole floats read as integers, at every depth).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
        Self::from_value(whole_numbers_as_integers(value), "")
    }

    /// Wraps an already parsed value, which must be an object; `prefix` names it in errors
    /// (`health_checks[0].`). A member of what [`Fields::parse`] read has its whole floats as
    /// integers already.
    pub fn from_value(value: Value, prefix: &str) -> Result<Self, String> {
        match value {
            Value::Object(map) => Ok(Fields { map, prefix: prefix.to_string() }),
            other => {
                let what =
                    if prefix.is_empty() { "the body".to_string() } else { prefix.trim_end_matches('.').to_string() };
                Err(format!("{what} must be a JSON object, not {}", kind(&other)))
            }
        }
    }

    /// The name of field `name` in messages, with this object's prefix.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Reads and removes field `name`; `null` counts as absent.
    pub fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| format!("{}: {e}", self.name(name))),
        }
    }

    /// Reads a field that must be present.
    pub fn require<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, String> {
        self.take(name)?.ok_or_else(|| format!("{} is required", self.name(name)))
    }

    /// Removes field `name` unparsed.
    pub fn take_raw(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    /// Refuses any field not read so far.
    pub fn finish(self) -> Result<(), String> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("unknown field {:?}", format!("{}{k}", self.prefix))),
        }
    }
}

/// `value` with every number that is a whole float (`3.0`, `-2e3`) turned into the integer it is,
/// when one fits in 64 bits; a field of a floating-point type reads an integer just as well.
fn whole_numbers_as_integers(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let whole = x.is_finite() && x.fract() == 0.0;
            // `u64::MAX as f64` rounds up to 2^64, so the bounds are strict.
            if whole && (0.0..18_446_744_073_709_551_616.0).contains(&x) {
                Value::from(x as u64)
            } else if whole && (-9_223_372_036_854_775_808.0..0.0).contains(&x) {
                Value::from(x as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers_as_integers).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, whole_numbers_as_integers(v))).collect()),
        other => other,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field() {
        let mut f = Fields::parse(br#"{"instances":"3","x":1}"#).unwrap();
        let e = f.take::<u32>("instances").unwrap_err();
        assert!(e.starts_with("instances: invalid type"), "{e}");
        assert_eq!(f.finish().unwrap_err(), r#"unknown field "x""#);
        assert!(Fields::parse(b"[1]").unwrap_err().contains("must be a JSON object"));
        assert!(Fields::parse(b"{").unwrap_err().starts_with("malformed JSON"));
        let mut f = Fields::from_value(serde_json::json!({"a": null}), "hc[0].").unwrap();
        assert_eq!(f.take::<u32>("a").unwrap(), None);
        assert_eq!(f.require::<u32>("b").unwrap_err(), "hc[0].b is required");
    }

    #[test]
    fn a_whole_float_is_an_integer_and_a_fraction_is_not() {
        let mut f = Fields::parse(br#"{"a": 428.0, "b": 2.5, "c": [1.0, {"d": -3e2}], "e": 1e30, "f": 0.5}"#).unwrap();
        assert_eq!(f.require::<u32>("a").unwrap(), 428);
        assert!(f.require::<u32>("b").unwrap_err().starts_with("b: invalid type: floating point"));
        let c: (u8, std::collections::BTreeMap<String, i32>) = f.require("c").unwrap();
        assert_eq!((c.0, c.1["d"]), (1, -300));
        // Past 64 bits it stays a float; a float field reads integers as well.
        assert!(f.require::<u64>("e").is_err());
        assert_eq!(f.require::<f64>("f").unwrap(), 0.5);
        let mut g = Fields::parse(br#"{"cpus": 2.0}"#).unwrap();
        assert_eq!(g.require::<f64>("cpus").unwrap(), 2.0);
    }
}
