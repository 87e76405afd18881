//! The OpenAPI description of this framework's HTTP API, answered at `GET /openapi.json`; the
//! host merges it into `/v1/openapi.json` (under `/v1/jobs` and `/v1/frameworks/batch`). The
//! schemas follow `read_job` where JSON Schema can say it and are never stricter (see
//! `shoal_framework_common::openapi`).

use serde_json::{Map, Value, json};
use shoal_framework_common::openapi::{
    ID, cmd_or_wasm, document as doc, fails, members, nullable, object, operation, path_parameter, reference,
    template_properties,
};

/// The document.
pub fn document() -> Value {
    let id = path_parameter("id", json!({"type": "string", "pattern": ID}));
    let view = || Some(reference("Job"));
    let paths = json!({
        "/jobs": {"get": operation("Every job with its last run", None, &[("200", "the jobs", Some(reference("JobList")))])},
        "/jobs/{id}": {
            "parameters": [id],
            "get": operation("One job with its newest runs", None, &[("200", "the job", view()), fails("404", "no such job")]),
            "put": operation("Create or replace a job; one without `schedule` starts a run at once",
                Some(reference("JobDefinition")), &[
                ("200", "replaced", view()), ("201", "created", view()),
                fails("400", "a malformed or invalid definition (the message names the field)")]),
            "delete": operation("Delete a job: its runs stop and it is forgotten", None, &[
                ("202", "deleted", Some(object(&["id", "deleted"],
                    json!({"id": {"type": "string"}, "deleted": {"const": true}}), false))),
                fails("404", "no such job")]),
        },
        "/jobs/{id}/run": {
            "parameters": [id],
            "post": operation("Start a run now", None, &[
                ("201", "the new run", Some(reference("Run"))), fails("404", "no such job"),
                fails("409", "a run is active and the job forbids concurrent runs")]),
        },
        "/openapi.json": {"get": operation("This description", None, &[("200", "OpenAPI 3.1", Some(json!({"type": "object"})))])},
    });
    doc("Shoal batch framework", paths, schemas())
}

fn schemas() -> Map<String, Value> {
    let integer = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let mut definition = template_properties();
    for (name, schema) in [
        ("id", json!({"type": ["string", "null"], "pattern": ID, "description": "the path's id (default)"})),
        ("ports", json!({"type": ["integer", "null"], "minimum": 0, "maximum": 100})),
        (
            "schedule",
            json!({"type": ["string", "null"], "description": "five-field cron in UTC (`*/5 * * * *`); none: one run at once"}),
        ),
        ("max_retries", json!({"type": ["integer", "null"], "minimum": 0, "maximum": 100})),
        ("retry_backoff_seconds", json!({"type": ["number", "null"], "minimum": 0, "maximum": 3600})),
        ("concurrency", json!({"type": ["string", "null"], "enum": ["forbid", "allow", null]})),
    ] {
        definition.insert(name.into(), schema);
    }
    let mut definition = object(&[], Value::Object(definition), true);
    definition["oneOf"] = cmd_or_wasm();
    definition["description"] = json!("A job: exactly one of `cmd` and `wasm`; unknown fields are refused.");
    let run = object(
        &["run", "job", "state", "attempts", "task_id", "started_ms", "finished_ms", "not_before_ms", "message"],
        json!({"run": integer, "job": string, "attempts": integer,
            "state": {"type": "string", "enum": ["pending", "running", "succeeded", "failed", "cancelled"]},
            "task_id": {"type": ["string", "null"]}, "started_ms": integer, "finished_ms": {"type": ["integer", "null"], "minimum": 0},
            "not_before_ms": integer, "message": string}),
        false,
    );
    let summary = object(
        &["id", "schedule", "last_run"],
        json!({"id": string, "schedule": {"type": ["string", "null"]}, "last_run": nullable(reference("Run"))}),
        false,
    );
    let schemas = json!({
        "JobDefinition": definition,
        "Job": object(&["id", "definition", "runs"], json!({"id": string, "definition": reference("JobDefinition"),
            "runs": {"type": "array", "items": reference("Run"), "description": "newest first"}}), false),
        "JobList": object(&["jobs"], json!({"jobs": {"type": "array", "items": summary}}), false),
        "Run": run,
    });
    members(schemas)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The fields of the stored forms are the documented ones, both ways.
    #[test]
    fn the_schemas_name_the_fields_of_what_is_answered() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let fields = |name: &str| {
            let mut names: Vec<String> = schemas[name]["properties"].as_object().unwrap().keys().cloned().collect();
            names.sort();
            names
        };
        let job = crate::read_job("report", br#"{"cmd": "true", "schedule": "*/5 * * * *"}"#).unwrap();
        let mut stored: Vec<String> =
            serde_json::to_value(&job).unwrap().as_object().unwrap().keys().cloned().collect();
        stored.push("wasm".into()); // omitted when absent
        stored.sort();
        assert_eq!(fields("JobDefinition"), stored);
        let run = crate::Run {
            run: 1,
            job: "report".into(),
            state: "pending".into(),
            attempts: 0,
            task_id: None,
            started_ms: 0,
            finished_ms: None,
            not_before_ms: 0,
            message: String::new(),
        };
        let mut stored: Vec<String> =
            serde_json::to_value(&run).unwrap().as_object().unwrap().keys().cloned().collect();
        stored.sort();
        assert_eq!(fields("Run"), stored);
        assert_eq!(shoal_framework_common::openapi::undefined_references(&doc), Vec::<String>::new());
    }
}
