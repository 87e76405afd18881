//! Conformance cases: a fixture for [`crate::check`] together with the answer a plugin must give,
//! both as data, so that one suite per world runs unchanged against plugins written in any
//! language (`shoal plugin test`, `examples/conformance/<world>/*.json`).
//!
//! A case file is `{"description"?: "…", "input": <fixture of check.rs>, "expect": <answer>}`.
//! The expected answer is matched *structurally* against the plugin's answer:
//!
//! - an object matches when every key it names matches the same key of the answer (keys the
//!   expectation leaves out may hold anything: a health check's free-text `message`, say);
//! - an array matches an array of the same length, element by element;
//! - numbers match numerically (`1` matches `1.0`), other scalars by equality;
//! - `{"$one_of": [a, b, …]}` matches when any of the alternatives matches, for the answers a
//!   world leaves open (any healthy endpoint, but never an unhealthy one).
//!
//! This module only compares; it never decides what a policy should do.

use serde::Deserialize;
use serde_json::Value;

use crate::AnyPlugin;
use crate::check::CheckError;

/// One conformance case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, for humans.
    #[serde(default)]
    pub description: String,
    /// The fixture (the input shape of [`crate::check`] for the plugin's kind).
    pub input: Value,
    /// The answer the plugin must give, matched structurally.
    pub expect: Value,
}

impl Case {
    /// Parse a case from JSON text.
    pub fn parse(text: &str) -> Result<Case, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// How a case failed.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The plugin could not run the fixture (bad fixture, trap, timeout…).
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The plugin answered, but not what the case expects.
    #[error("{mismatch}\n  expected: {expected}\n  answered: {answered}")]
    Mismatch {
        /// Where and how the answers differ.
        mismatch: Mismatch,
        /// The expectation.
        expected: Value,
        /// The plugin's whole answer.
        answered: Value,
    },
}

/// Where an answer first differs from its expectation, as a JSON path, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct Mismatch {
    /// JSON path from the root (`$.result.status`).
    pub at: String,
    /// How it differs.
    pub problem: String,
}

fn mismatch(at: &str, problem: String) -> Mismatch {
    Mismatch { at: at.to_owned(), problem }
}

/// Run `case` on `plugin`: `Ok(answer)` when the answer matches the expectation.
pub fn run(plugin: &AnyPlugin, case: &Case) -> Result<Value, CaseError> {
    let answered = crate::check::run(plugin, &case.input)?;
    matches(&case.expect, &answered, "$").map_err(|mismatch| CaseError::Mismatch {
        mismatch,
        expected: case.expect.clone(),
        answered: answered.clone(),
    })?;
    Ok(answered)
}

/// Whether `actual` matches `expected` (see the module docs); the error names the first place,
/// as a JSON path from `at`, where it does not.
pub fn matches(expected: &Value, actual: &Value, at: &str) -> Result<(), Mismatch> {
    match expected {
        Value::Object(map) if map.len() == 1 && map.contains_key("$one_of") => {
            let alternatives =
                map["$one_of"].as_array().ok_or_else(|| mismatch(at, "`$one_of` needs an array".into()))?;
            if alternatives.iter().any(|alt| matches(alt, actual, at).is_ok()) {
                Ok(())
            } else {
                Err(mismatch(at, format!("{actual} is none of {}", map["$one_of"])))
            }
        }
        Value::Object(map) => {
            let Value::Object(got) = actual else {
                return Err(mismatch(at, format!("expected an object, got {actual}")));
            };
            for (key, want) in map {
                let path = format!("{at}.{key}");
                match got.get(key) {
                    Some(value) => matches(want, value, &path)?,
                    None => return Err(mismatch(&path, "missing".into())),
                }
            }
            Ok(())
        }
        Value::Array(want) => {
            let Value::Array(got) = actual else {
                return Err(mismatch(at, format!("expected an array, got {actual}")));
            };
            if want.len() != got.len() {
                return Err(mismatch(at, format!("expected {} elements, got {}", want.len(), got.len())));
            }
            want.iter().zip(got).enumerate().try_for_each(|(i, (w, g))| matches(w, g, &format!("{at}[{i}]")))
        }
        Value::Number(want) => match (want.as_f64(), actual.as_f64()) {
            (Some(w), Some(g)) if w == g => Ok(()),
            _ => Err(mismatch(at, format!("expected {want}, got {actual}"))),
        },
        _ if expected == actual => Ok(()),
        _ => Err(mismatch(at, format!("expected {expected}, got {actual}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::{Mismatch, matches};
    use serde_json::json;

    #[test]
    fn structural_matching() {
        let answer = json!({"result": {"status": "healthy", "message": "200 OK"}});
        assert!(matches(&json!({"result": {"status": "healthy"}}), &answer, "$").is_ok());
        assert_eq!(
            matches(&json!({"result": {"status": "unhealthy"}}), &answer, "$").map_err(|m| m.to_string()),
            Err("$.result.status: expected \"unhealthy\", got \"healthy\"".into())
        );
        assert!(
            matches(&json!({"picks": [1, {"$one_of": [0, 2]}, null]}), &json!({"picks": [1, 2, null]}), "$").is_ok()
        );
        assert_eq!(
            matches(&json!({"picks": [{"$one_of": [0, 2]}]}), &json!({"picks": [1]}), "$"),
            Err(Mismatch { at: "$.picks[0]".into(), problem: "1 is none of [0,2]".into() })
        );
        assert!(matches(&json!({"picks": [0]}), &json!({"picks": [0, 0]}), "$").is_err());
        assert!(matches(&json!({"cpus": 1}), &json!({"cpus": 1.0}), "$").is_ok());
        assert!(matches(&json!({"missing": 1}), &json!({}), "$").is_err());
    }
}
