//! The pieces of the OpenAPI document a framework answers at `GET /openapi.json`.
//!
//! The convention (see the `framework` world in `wit/worlds.wit`): a framework that describes its
//! HTTP API answers `GET /openapi.json` with an OpenAPI 3.1 object holding `paths` (relative to the
//! framework's root, as its `handle-request` sees them) and `components.schemas`. The host merges
//! it into `/v1/openapi.json` under `/v1/frameworks/<name>` (and under `/v1/apps`, `/v1/jobs` for
//! the default frameworks), renames the schemas `<name>.<schema>`, and adds what the host itself
//! may answer (401, 403, 429, 503, 413).
//!
//! Schemas here follow the parsers exactly where JSON Schema can say it, and are never stricter
//! than the parsers: a body the schema refuses is refused by the framework too. What a schema
//! cannot say (one field against another, byte lengths of UTF-8, reserved label names) the
//! framework answers 400 with the reason. Fields are optional unless the parser requires them,
//! and `null` means "not given" ([`crate::json::Fields::take`]), so optional fields allow it.

use serde_json::{Map, Value, json};

use crate::constraint::MAX_CONSTRAINTS;
use crate::validate::{MAX_CMD, MAX_ENTRIES};

/// An id of an app or a job, as [`crate::validate::check_id`] checks it.
pub const ID: &str = "^[a-z0-9-]{1,63}$";

/// Characters Rust's `char::is_whitespace` counts (the rule of "must not be empty" on commands),
/// as the inside of a character class; `\s` differs between regex engines.
pub const WHITESPACE: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// `{"$ref": "#/components/schemas/<name>"}`.
pub fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A schema that also allows `null` (absent): `[type, "null"]`.
pub fn nullable(mut schema: Value) -> Value {
    if let Some(Value::String(t)) = schema.get("type").cloned() {
        schema["type"] = json!([t, "null"]);
        return schema;
    }
    json!({ "anyOf": [schema, {"type": "null"}] })
}

/// An object with these required fields and properties; `closed` refuses other fields.
pub fn object(required: &[&str], properties: Value, closed: bool) -> Value {
    let mut schema = json!({ "type": "object", "required": required, "properties": properties });
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

/// The framework's error answer, `{"error": "<why>"}` ([`crate::http::error`]).
pub fn error_schema() -> Value {
    object(&["error"], json!({ "error": {"type": "string"} }), false)
}

/// A shell command: non-empty once trimmed, no NUL, at most `max` bytes (so at most `max`
/// characters).
pub fn command(max: usize) -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": max,
        "allOf": [{"pattern": "^[^\\u0000]*$"}, {"pattern": format!("[^{WHITESPACE}]")}],
        "description": format!("a shell command: not blank, no NUL, at most {max} bytes"),
    })
}

/// The fields of a task template ([`crate::validate::TaskTemplate::read`]): command, resources,
/// environment, labels and constraints.
pub fn template_properties() -> Map<String, Value> {
    let names =
        "names of 1 to 256 bytes, values of at most 4096, no NUL; `shoal.*` names the framework sets are refused";
    let properties = json!({
        "cmd": nullable(command(MAX_CMD)),
        "wasm": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$", "description": "sha256 of a Wasm component (`/v1/artifacts`)"},
        "cpus": {"type": ["number", "null"], "exclusiveMinimum": 0, "description": "CPU cores per task (default 0.1)"},
        "mem": {"type": ["number", "null"], "exclusiveMinimum": 0, "description": "MiB per task (default 32)"},
        "disk": {"type": ["number", "null"], "minimum": 0, "description": "MiB per task (default 0)"},
        "env": {"type": ["object", "null"], "maxProperties": MAX_ENTRIES,
            "propertyNames": {"minLength": 1, "pattern": "^[^=\\u0000]*$"},
            "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"}},
        "labels": {"type": ["object", "null"], "maxProperties": MAX_ENTRIES, "description": names,
            "propertyNames": {"minLength": 1, "maxLength": 256, "pattern": "^[^\\u0000]*$"},
            "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": "^[^\\u0000]*$"}},
        "constraints": {"type": ["array", "null"], "maxItems": MAX_CONSTRAINTS, "items": constraint(),
            "description": "Marathon's constraints: `[field, operator]` or `[field, operator, value]`"},
    });
    members(properties)
}

/// The members of a JSON object written with `json!` (none for anything else).
pub fn members(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The schemas `doc` refers to (`#/components/schemas/<name>`) but does not define.
pub fn undefined_references(doc: &Value) -> Vec<String> {
    let text = doc.to_string();
    text.split("\"#/components/schemas/")
        .skip(1)
        .filter_map(|reference| reference.split('"').next())
        .filter(|name| doc["components"]["schemas"].get(*name).is_none())
        .map(str::to_owned)
        .collect()
}

/// One constraint, `[field, OPERATOR, value?]` ([`crate::constraint::Constraint::parse`]); which
/// operator takes a value is for the parser to say.
fn constraint() -> Value {
    json!({
        "type": "array", "minItems": 2, "maxItems": 3,
        "items": {"type": "string"},
        "prefixItems": [
            {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
            {"type": "string", "enum": ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER"]},
            {"type": "string"},
        ],
    })
}

/// "Exactly one of `cmd` and `wasm`", with `null` meaning absent.
pub fn cmd_or_wasm() -> Value {
    json!([
        {"required": ["cmd"], "properties": {"cmd": {"type": "string"}}},
        {"required": ["wasm"], "properties": {"wasm": {"type": "string"}}},
    ])
}

/// An operation: summary, optional JSON request body, answers `(status, description, schema)`.
pub fn operation(summary: &str, body: Option<Value>, answers: &[(&str, &str, Option<Value>)]) -> Value {
    let mut op = json!({ "summary": summary, "responses": {} });
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    for (status, description, schema) in answers {
        let mut answer = json!({ "description": description });
        if let Some(schema) = schema {
            answer["content"] = json!({"application/json": {"schema": schema}});
        }
        op["responses"][*status] = answer;
    }
    op
}

/// An error answer `(status, description, {"error": …})` for [`operation`].
pub fn fails(status: &'static str, description: &'static str) -> (&'static str, &'static str, Option<Value>) {
    (status, description, Some(reference("Error")))
}

/// A path parameter named `name` with this schema.
pub fn path_parameter(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

/// The whole document: `paths` and `schemas` (the `Error` schema is added).
pub fn document(title: &str, paths: Value, mut schemas: Map<String, Value>) -> Value {
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nullable_keeps_the_schema_and_allows_null() {
        assert_eq!(
            nullable(json!({"type": "string", "minLength": 1})),
            json!({"type": ["string", "null"], "minLength": 1})
        );
        assert_eq!(nullable(reference("X")), json!({"anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]}));
    }

    #[test]
    fn undefined_references_are_found() {
        let doc = document(
            "t",
            json!({"/a": {"get": {"responses": {"200": {"description": "x",
            "content": {"application/json": {"schema": reference("Missing")}}}}}}}),
            Map::new(),
        );
        assert_eq!(undefined_references(&doc), ["Missing"]);
        let doc = document(
            "t",
            json!({"/a": {"get": {"responses": {"400": {"description": "x",
            "content": {"application/json": {"schema": reference("Error")}}}}}}}),
            Map::new(),
        );
        assert!(undefined_references(&doc).is_empty());
    }

    #[test]
    fn the_template_schema_names_exactly_the_fields_the_parser_reads() {
        let mut body = Map::new();
        for (name, example) in [
            ("cmd", json!("sleep 1")),
            ("cpus", json!(0.5)),
            ("mem", json!(64)),
            ("disk", json!(0)),
            ("env", json!({"A": "1"})),
            ("labels", json!({"team": "a"})),
            ("constraints", json!([["@hostname", "UNIQUE"]])),
        ] {
            body.insert(name.into(), example);
        }
        let documented = template_properties();
        for name in body.keys() {
            assert!(documented.contains_key(name), "{name} is read but not documented");
        }
        // `wasm` excludes `cmd`; every other documented field is in the body.
        assert_eq!(documented.len(), body.len() + 1);
        let mut fields = crate::json::Fields::from_value(Value::Object(body), "").unwrap();
        crate::validate::TaskTemplate::read(&mut fields, 0.1, 32.0).unwrap();
        fields.finish().unwrap();
    }
}
