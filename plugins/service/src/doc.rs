//! The OpenAPI description of this framework's HTTP API ([`crate::api`]), answered at
//! `GET /openapi.json`; the host merges it into `/v1/openapi.json` (under `/v1/apps` and
//! `/v1/frameworks/service`). The schemas follow [`crate::app::AppDef::parse`] where JSON Schema
//! can say it and are never stricter (see `shoal_framework_common::openapi`).

use serde_json::{Map, Value, json};
use shoal_framework_common::openapi::{
    ID, WHITESPACE, cmd_or_wasm, command, document as doc, fails, members, nullable, object, operation, path_parameter,
    reference, template_properties,
};

use crate::app::{MAX_HEALTH_CHECKS, MAX_INSTANCES, MAX_PORTS};

/// A day in milliseconds: the longest health-check interval and grace.
const DAY_MS: u64 = 86_400_000;

/// The document.
pub fn document() -> Value {
    let app = || Some(reference("App"));
    let id = path_parameter("id", json!({"type": "string", "pattern": ID}));
    let paths = json!({
        "/apps": {"get": operation("Every app, in short", None, &[("200", "the apps", Some(reference("AppList")))])},
        "/apps/{id}": {
            "parameters": [id],
            "get": operation("One app with its tasks and deployment", None, &[
                ("200", "the app", app()), fails("404", "no such app")]),
            "put": operation("Create or replace an app: a new version rolls out unless only `instances` changed",
                Some(reference("AppDefinition")), &[
                ("200", "replaced", app()), ("201", "created", app()),
                fails("400", "a malformed or invalid definition (the message names the field)"),
                fails("409", "the app is being deleted"),
                fails("422", "a definition that can never deploy")]),
            "delete": operation("Delete an app: its tasks are killed, then it is gone", None, &[
                ("202", "deleting", Some(object(&["id", "deleting"],
                    json!({"id": {"type": "string"}, "deleting": {"const": true}}), false))),
                fails("404", "no such app")]),
        },
        "/apps/{id}/scale": {
            "parameters": [id],
            "post": operation("Change the number of instances (no new version)",
                Some(object(&["instances"], json!({"instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES}}), true)), &[
                ("200", "the app", app()), fails("400", "a malformed body"),
                fails("404", "no such app"), fails("409", "the app is being deleted")]),
        },
        "/apps/{id}/restart": {
            "parameters": [id],
            "post": operation("Replace every task: a new version of the same definition", None, &[
                ("200", "the app", app()), fails("404", "no such app"), fails("409", "the app is being deleted")]),
        },
        "/tasks": {"get": operation("Every task; ended ones for ten minutes", None, &[
            ("200", "the tasks", Some(object(&["tasks"], json!({"tasks": {"type": "array", "items": reference("Task")}}), false)))])},
        "/openapi.json": {"get": operation("This description", None, &[("200", "OpenAPI 3.1", Some(json!({"type": "object"})))])},
    });
    doc("Shoal service framework", paths, schemas())
}

fn schemas() -> Map<String, Value> {
    let integer = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let mut definition = template_properties();
    definition.insert(
        "id".into(),
        json!({"type": ["string", "null"], "pattern": ID, "description": "the path's id (default)"}),
    );
    definition.insert("instances".into(), json!({"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INSTANCES}));
    definition.insert(
        "ports".into(),
        json!({"description": "a count, or one name per port (exported as `PORT_<NAME>`)", "oneOf": [
            {"type": "null"},
            {"type": "integer", "minimum": 0, "maximum": MAX_PORTS},
            {"type": "array", "maxItems": MAX_PORTS, "uniqueItems": true,
                "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}}]}),
    );
    definition.insert(
        "health_checks".into(),
        json!({"type": ["array", "null"], "maxItems": MAX_HEALTH_CHECKS, "items": reference("HealthCheck"),
            "description": "only the first is run; `port_index` must name one of the app's ports"}),
    );
    let fraction = json!({"type": ["number", "null"], "minimum": 0, "maximum": 1});
    definition.insert("backoff_seconds".into(), json!({"type": ["number", "null"], "minimum": 0, "maximum": 86_400}));
    definition.insert("backoff_factor".into(), json!({"type": ["number", "null"], "minimum": 1, "maximum": 100}));
    definition.insert(
        "max_launch_delay_seconds".into(),
        json!({"type": ["number", "null"], "minimum": 0, "maximum": 86_400}),
    );
    definition.insert(
        "upgrade_strategy".into(),
        nullable(object(&[], json!({"minimum_health_capacity": fraction, "maximum_over_capacity": fraction}), true)),
    );
    let mut definition = object(&[], Value::Object(definition), true);
    definition["oneOf"] = cmd_or_wasm();
    definition["description"] = json!("An app: exactly one of `cmd` and `wasm`; unknown fields are refused.");

    let state =
        json!({"type": "string", "enum": ["staging", "starting", "running", "finished", "failed", "killed", "lost"]});
    let task = object(
        &[
            "id",
            "app",
            "version",
            "state",
            "healthy",
            "agent_id",
            "host",
            "ports",
            "since_ms",
            "launched_ms",
            "message",
            "killing",
        ],
        json!({"id": string, "app": string, "version": string, "state": state, "healthy": {"type": ["boolean", "null"]},
            "agent_id": string, "host": string, "ports": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 65535}},
            "since_ms": integer, "launched_ms": integer, "message": string,
            "killing": {"type": ["string", "null"], "enum": ["scale", "deploy", "unhealthy", "delete", null]}}),
        false,
    );
    let status =
        json!({"type": "string", "enum": ["deploying", "running", "starting", "waiting", "suspended", "deleting"]});
    let counts = json!({"instances": integer, "running": integer, "healthy": integer, "staged": integer});
    let mut summary = counts.clone();
    summary["id"] = string.clone();
    summary["status"] = status.clone();
    summary["version"] = string.clone();
    summary["deploying"] = json!({"type": "boolean"});
    summary["waiting"] = json!({"type": ["string", "null"]});
    let mut view = counts;
    for (name, schema) in [
        ("id", string.clone()),
        ("status", status),
        ("version", string.clone()),
        ("created_ms", integer.clone()),
        ("waiting", json!({"type": ["string", "null"], "description": "why tasks are missing"})),
        (
            "deployment",
            nullable(object(
                &["version", "started_ms", "target", "new_running", "new_healthy", "old_remaining"],
                json!({"version": string, "started_ms": integer, "target": integer, "new_running": integer,
                    "new_healthy": integer, "old_remaining": integer}),
                false,
            )),
        ),
        (
            "last_failure",
            nullable(object(
                &["task_id", "state", "message", "at_ms"],
                json!({"task_id": string, "state": string, "message": string, "at_ms": integer}),
                false,
            )),
        ),
        (
            "backoff",
            nullable(object(
                &["failures", "delay_until_ms"],
                json!({"failures": integer, "delay_until_ms": integer}),
                false,
            )),
        ),
        ("definition", reference("AppDefinition")),
        ("tasks", json!({"type": "array", "items": reference("Task")})),
    ] {
        view[name] = schema;
    }
    let view_required = [
        "id",
        "status",
        "version",
        "created_ms",
        "instances",
        "running",
        "healthy",
        "staged",
        "deployment",
        "waiting",
        "last_failure",
        "backoff",
        "definition",
        "tasks",
    ];
    let summary_required =
        ["id", "status", "version", "instances", "running", "healthy", "staged", "deploying", "waiting"];
    let schemas = json!({
        "AppDefinition": definition,
        "HealthCheck": health_check(),
        "App": object(&view_required, view, false),
        "AppList": object(&["apps"], json!({"apps": {"type": "array", "items": object(&summary_required, summary, false)}}), false),
        "Task": task,
    });
    members(schemas)
}

/// One health check ([`crate::app::HealthCheck::read`]): a field of another kind is refused.
fn health_check() -> Value {
    let kind = |kind: &str, required: &[&str], fields: Value| {
        let mut properties = json!({
            "type": {"const": kind},
            "grace_ms": {"type": ["integer", "null"], "minimum": 0, "maximum": DAY_MS},
            "interval_ms": {"type": ["integer", "null"], "minimum": 100, "maximum": DAY_MS},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": DAY_MS,
                "description": "at most `interval_ms`"},
            "max_failures": {"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX},
        });
        if let (Some(all), Value::Object(fields)) = (properties.as_object_mut(), fields) {
            all.extend(fields);
        }
        let mut required = required.to_vec();
        required.push("type");
        object(&required, properties, true)
    };
    let port_index = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX});
    json!({"oneOf": [
        kind("http", &[], json!({"port_index": port_index,
            "path": {"type": ["string", "null"], "maxLength": 4096, "pattern": format!("^/[^{WHITESPACE}]*$")}})),
        kind("tcp", &[], json!({"port_index": port_index})),
        kind("command", &["command"], json!({"command": command(4096)})),
        kind("wasm", &["plugin"], json!({"plugin": {"type": "string", "minLength": 1, "maxLength": 128},
            "config": {"type": ["string", "null"]}})),
    ]})
}
