//! Strict JSON objects: every field is read by name, so a type error names its field
//! (`instances: invalid type: string "3", expected u32`) and a field nobody read is refused
//! (`unknown field "instance"`), which serde's derive cannot both do with good messages.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The fields of one JSON object, consumed as they are read.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    prefix: String,
}

impl Fields {
    /// Parses `body` as a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
        Self::from_value(value, "")
    }

    /// Wraps an already parsed value, which must be an object; `prefix` names it in errors
    /// (`health_checks[0].`).
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
}
