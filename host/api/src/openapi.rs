//! The OpenAPI document served at `/v1/openapi.json`.
//!
//! Its skeleton comes from the handlers' `#[utoipa::path]` annotations ([`ApiDoc`]); this module
//! completes it with what is the same on every route, so it is said once, not 45 times:
//!
//! - the answers any route may give: 401 without a valid token, 403 when its scope does not
//!   allow the call, 429 past a limit, 503 while the part that answers is not on this node or
//!   has no leader; 400 where a parameter or body can be malformed, 413 where a body can be too
//!   large;
//! - the exact form of every path parameter (the same rule the handler checks), and query
//!   parameters that are optional but never `null`;
//! - the schema of every success answer that is not one of [`ApiDoc`]'s typed bodies, and of each
//!   Server-Sent Event.
//!
//! The frameworks' own routes come from the frameworks ([`merge_framework`]): a framework that
//! answers `GET /openapi.json` (the default `service` and `batch` do) has its paths listed under
//! `/v1/frameworks/<name>` (and `/v1/apps…`, `/v1/jobs…` for the default ones, [`ALIASES`]), its
//! schemas as `<name>.<schema>`, and the host's own answers added. A standby master forwards the
//! request to the leader, which runs the frameworks.
//!
//! Schemathesis checks the whole against `shoal dev` in CI (`tests/cluster/fuzz.rs`): no 5xx, no
//! answer the document does not allow.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::dto::ApiDoc;

/// Where the host also routes a default framework's paths: `/v1/apps…` is `service`'s `/apps…`,
/// `/v1/jobs…` is `batch`'s `/jobs…`.
pub const ALIASES: [(&str, &str); 2] = [("service", "/apps"), ("batch", "/jobs")];

/// The document of the host's own routes (no framework's).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut);
    if let Some(schemas) = schemas {
        schemas.extend(component_schemas());
        narrow_typed_schemas(schemas);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.extend(plain_routes());
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                complete(path, method, op);
            }
        }
    }
    doc
}

/// The forms the typed bodies' fields must have, which their Rust types do not say.
fn narrow_typed_schemas(schemas: &mut Map<String, Value>) {
    let mut set = |pointer: &str, schema: Value| {
        let (name, rest) = pointer.split_once('/').unwrap_or((pointer, ""));
        if let Some(at) = schemas.get_mut(name).and_then(|s| s.pointer_mut(&format!("/{rest}"))) {
            *at = schema;
        }
    };
    let key = json!({"type": "string", "minLength": 1, "maxLength": shoal_store::MAX_KEY_LEN,
        "description": format!("1 to {} bytes of UTF-8", shoal_store::MAX_KEY_LEN)});
    let version = json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"});
    set(
        "TokenRequest/properties/scope",
        json!({"type": "string", "pattern": "^(admin|operator|app:[a-z0-9-]{1,63})$"}),
    );
    set("TokenRequest/properties/ttl", json!({"type": ["string", "null"], "pattern": crate::auth::TTL_PATTERN}));
    set(
        "KvBatchOp/oneOf/0/properties/ttl",
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": shoal_store::MAX_TTL.as_secs()}),
    );
    set("KvBatchOp/oneOf/0/properties/key", key.clone());
    set("KvBatchOp/oneOf/1/properties/key", key);
    set(
        "KvBatchRequest/properties/ops",
        json!({"type": "array", "maxItems": 128, "items": {"$ref": "#/components/schemas/KvBatchOp"}}),
    );
    set("ActivateRequest/properties/version", version);
    set("ScaleOutRequest/properties/node", json!({"type": ["string", "null"], "pattern": "^[a-z0-9-]{1,63}$"}));
    set("AllocatorChoice/properties/plugin", json!({"type": "string", "pattern": LABEL}));
}

/// The routes without a token or a typed body: liveness, metrics, this document, the leader.
fn plain_routes() -> Map<String, Value> {
    let text = |description: &str| {
        json!({"get": {"responses": {"200": {"description": description,
        "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    };
    let routes = json!({
        "/healthz": text("`ok` while the process serves"),
        "/metrics": text("Prometheus text format"),
        "/v1/openapi.json": {"get": {"description": "This document, with the routes of the running frameworks.",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/v1/leader": {"get": {"description": "Who leads, with which term, and the masters seen.",
            "responses": {"200": {"description": "the leader"}}}},
    });
    match routes {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Complete one operation: common answers, parameter forms, answer schemas.
fn complete(path: &str, method: &str, op: &mut Value) {
    let secured = op.get("security").is_some();
    let has_body = op.get("requestBody").is_some();
    let mut has_params = false;
    for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
        has_params = true;
        shape_parameter(path, param);
    }
    if let Some(content) = op.pointer_mut("/requestBody/content").and_then(Value::as_object_mut) {
        // Components travel as raw bytes: what a client sends is `application/octet-stream`.
        if let Some(wasm) = content.remove("application/wasm") {
            content.insert("application/octet-stream".into(), wasm);
        }
    }
    if let Some(schema) = request_schema(path, method)
        && let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut)
    {
        body.insert("content".into(), json!({"application/json": {"schema": schema}}));
        body.insert("required".into(), json!(true));
    }
    for (status, mut schema) in answer_schemas(path, method) {
        let media = if schema.get("x-sse").is_some() { "text/event-stream" } else { "application/json" };
        if let Some(s) = schema.as_object_mut() {
            s.remove("x-sse");
        }
        if let Some(answer) = op.pointer_mut(&format!("/responses/{status}")).and_then(Value::as_object_mut) {
            answer.insert("content".into(), json!({ media: {"schema": schema} }));
        }
    }
    // `?watch=true` turns a key-value read into a stream of the writes.
    if method == "get"
        && path.starts_with("/v1/kv/")
        && let Some(content) = op.pointer_mut("/responses/200/content").and_then(Value::as_object_mut)
    {
        content.insert(
            "text/event-stream".into(),
            json!({"schema": {"type": "object", "required": ["data"],
            "properties": {"event": {"type": "string", "enum": ["put", "delete"]}, "id": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"}}}}),
        );
    }
    if secured {
        add_response(op, "401", "no token, or one that is unknown, revoked or expired");
        add_response(op, "403", "the token's scope does not allow this");
        add_response(op, "429", "past a limit of the token or the node (`Retry-After`)");
    }
    if path.starts_with("/v1/") {
        add_response(op, "503", "the part that answers is not on this node, or has no leader now");
    }
    if has_params || has_body {
        add_response(op, "400", "a malformed parameter or body");
    }
    if path.contains('{') {
        add_response(op, "404", "nothing by that name");
    }
    // An empty value is a value; a scale-out without a body picks the node itself.
    if matches!((method, path), ("put", "/v1/kv/{ns}/{key}") | ("post", "/v1/store/scale-out"))
        && let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut)
    {
        body.insert("required".into(), json!(false));
    }
    if has_body {
        add_response(op, "413", "the body is over the route's limit");
    }
}

/// Merge framework `name`'s own document `own` (its answer to `GET /openapi.json`) into `doc`:
/// each of its paths under `/v1/frameworks/<name>` and, for the default frameworks, under its
/// alias; its schemas renamed `<name>.<schema>`; the host's own answers added to each operation.
/// A framework is a plugin an operator uploaded: only what has the form of paths, operations and
/// schemas is taken, and none can land outside the framework's prefix.
pub fn merge_framework(doc: &mut Value, name: &str, own: &Value) {
    let mut own = own.clone();
    rename_references(&mut own, name);
    if let (Some(theirs), Some(ours)) = (
        own.pointer("/components/schemas").and_then(Value::as_object),
        doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut),
    ) {
        for (schema, body) in theirs {
            ours.insert(format!("{name}.{schema}"), body.clone());
        }
    }
    let Some(theirs) = own.get("paths").and_then(Value::as_object) else { return };
    let Some(ours) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in theirs {
        let Some(item) = item.as_object().filter(|_| path.starts_with('/') && !path.contains("..")) else { continue };
        let aliased = ALIASES.iter().any(|(framework, prefix)| {
            *framework == name
                && (path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')))
        });
        let mut routes = vec![(format!("/v1/frameworks/{name}{path}"), false)];
        if aliased {
            routes.push((format!("/v1{path}"), true));
        }
        for (route, alias) in routes {
            let mut item = item.clone();
            let has_params = route.contains('{');
            for (method, op) in item.iter_mut() {
                if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch" | "head" | "options") {
                    complete_framework_operation(name, method, op, has_params, alias);
                }
            }
            ours.insert(route, Value::Object(item));
        }
    }
}

/// `#/components/schemas/X` → `#/components/schemas/<name>.X`, everywhere in `value`.
fn rename_references(value: &mut Value, name: &str) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    Value::String(target) if key == "$ref" => {
                        if let Some(schema) = target.strip_prefix("#/components/schemas/") {
                            *target = format!("#/components/schemas/{name}.{schema}");
                        }
                    }
                    _ => rename_references(inner, name),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|inner| rename_references(inner, name)),
        _ => {}
    }
}

/// A framework's operation as the host serves it: behind a token, with the host's own answers;
/// every error answer is [`crate::dto::ErrorBody`] (the host puts the framework's errors in that
/// shape, `cluster::framework_error`).
fn complete_framework_operation(name: &str, method: &str, op: &mut Value, has_params: bool, alias: bool) {
    let Some(object) = op.as_object_mut() else { return };
    object.remove("operationId");
    object.remove("security");
    object.insert("tags".into(), json!([format!("framework {name}")]));
    object.insert("security".into(), json!([{"bearer": []}]));
    let has_body = object.contains_key("requestBody");
    for (status, answer) in object.get_mut("responses").and_then(Value::as_object_mut).into_iter().flatten() {
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        for media in answer.get_mut("content").and_then(Value::as_object_mut).into_iter().flatten() {
            if let Some(schema) = media.1.get_mut("schema") {
                *schema = reference("ErrorBody");
            }
        }
    }
    add_response(op, "401", "no token, or one that is unknown, revoked or expired");
    add_response(op, "403", "the token's scope does not allow this");
    add_response(op, "429", "the framework has too many requests queued, or a limit of the token (`Retry-After`)");
    add_response(op, "503", "no master leads now");
    add_response(op, "404", "no framework by that name runs");
    if has_params || has_body {
        add_response(op, "400", "a malformed parameter or body");
    }
    if has_body {
        add_response(op, "413", "the body is over the route's limit");
    }
    if alias && matches!(method, "put" | "post") {
        add_response(op, "422", "a definition no active agent could ever hold");
    }
}

/// Add answer `status` with the error body, unless the operation documents it already.
fn add_response(op: &mut Value, status: &str, description: &str) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    responses.entry(status).or_insert_with(|| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    });
}

/// A path parameter gets its exact form; a query parameter its bounds.
fn shape_parameter(path: &str, param: &mut Value) {
    let Some(param) = param.as_object_mut() else { return };
    let name = param.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    match param.get("in").and_then(Value::as_str) {
        Some("path") => {
            if let Some(schema) = path_parameter(&name) {
                param.insert("schema".into(), schema);
            }
        }
        Some("query") => {
            // Optional, and `null` is "not given" (clients drop such parameters); integers are
            // unsigned 64-bit unless said otherwise.
            if let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut) {
                let integer = schema.get("type").is_some_and(|t| {
                    t.as_str() == Some("integer") || t.as_array().is_some_and(|a| a.iter().any(|x| x == "integer"))
                });
                if integer {
                    schema.remove("format");
                    schema.insert("minimum".into(), json!(0));
                    schema.insert("maximum".into(), json!(u64::MAX));
                }
            }
            if let Some(schema) = query_parameter(path, &name) {
                param.insert("schema".into(), schema);
            }
        }
        _ => {}
    }
}

/// A DNS label: what names plugins, services, routes and frameworks.
const LABEL: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

fn path_parameter(name: &str) -> Option<Value> {
    let max_key = shoal_store::MAX_KEY_LEN;
    let system = shoal_store::MAX_SYSTEM_NAMESPACE_LEN - 1;
    Some(match name {
        "kind" => json!({"type": "string", "enum": ["allocator", "router", "health-check", "framework"]}),
        "name" | "svc" => json!({"type": "string", "pattern": LABEL}),
        "version" => json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}),
        "ns" => json!({"type": "string", "pattern": format!("^(?:[a-z0-9-]{{1,63}}|_[a-z0-9-]{{1,{system}}})$")}),
        "key" => json!({"type": "string", "minLength": 1, "maxLength": max_key,
            "description": format!("any UTF-8, 1 to {} bytes; may contain `/`", shoal_store::MAX_KEY_LEN)}),
        "id" => json!({"type": "string", "pattern": "^[A-Za-z0-9_:][A-Za-z0-9._:-]{0,127}$"}),
        "digest" => json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        _ => return None,
    })
}

fn query_parameter(path: &str, name: &str) -> Option<Value> {
    Some(match name {
        "version" if path.starts_with("/v1/plugins") => {
            json!({"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"})
        }
        "wait" if path.starts_with("/v1/services") => {
            json!({"type": ["string", "null"], "pattern": "^[0-9]{1,6}(ms|s|m)?$"})
        }
        "stream" => json!({"type": ["string", "null"], "enum": ["stdout", "stderr", null]}),
        "limit" => json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1000}),
        "ttl" => json!({"type": ["integer", "null"], "minimum": 1, "maximum": shoal_store::MAX_TTL.as_secs()}),
        "subject" => {
            json!({"type": ["string", "null"], "pattern": "^shoal\\.evt(\\.([a-z0-9_-]+|\\*))*\\.([a-z0-9_-]+|\\*|>)$"})
        }
        _ => return None,
    })
}

/// The request bodies the annotations leave as free text.
fn request_schema(path: &str, method: &str) -> Option<Value> {
    match (method, path) {
        ("put", "/v1/services/{svc}/instances/{id}") => Some(json!({"$ref": "#/components/schemas/Registration"})),
        ("put", "/v1/routes/{name}") => Some(json!({"$ref": "#/components/schemas/RouteRequest"})),
        _ => None,
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The schema of the success answers the annotations leave untyped.
fn answer_schemas(path: &str, method: &str) -> Vec<(&'static str, Value)> {
    let object = |required: &[&str], properties: Value| json!({"type": "object", "required": required, "properties": properties});
    let sse = |data: Value| {
        json!({"x-sse": true, "type": "object", "required": ["data"], "properties": {
            "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}, "data": data}})
    };
    match (method, path) {
        ("get", "/v1/agents") => {
            vec![("200", object(&["agents"], json!({"agents": {"type": "array", "items": reference("Agent")}})))]
        }
        ("get", "/v1/agents/{id}") => vec![("200", reference("Agent"))],
        ("get", "/v1/tasks") => {
            vec![("200", object(&["tasks"], json!({"tasks": {"type": "array", "items": reference("Task")}})))]
        }
        ("get", "/v1/tasks/{id}") => vec![("200", reference("Task"))],
        ("post", "/v1/tasks/{id}/kill") => {
            vec![("202", object(&["id", "kill"], json!({"id": {"type": "string"}, "kill": {"const": "sent"}})))]
        }
        ("get", "/v1/frameworks") => {
            vec![(
                "200",
                object(&["frameworks"], json!({"frameworks": {"type": "array", "items": reference("Framework")}})),
            )]
        }
        ("get", "/v1/artifacts") => {
            vec![(
                "200",
                object(&["artifacts"], json!({"artifacts": {"type": "array", "items": reference("Artifact")}})),
            )]
        }
        ("post", "/v1/artifacts") => vec![("201", reference("Artifact"))],
        ("get", "/v1/allocator") => vec![("200", object(&["plugin"], json!({"plugin": {"type": "string"}})))],
        ("put", "/v1/allocator") => vec![(
            "200",
            object(&["plugin", "previous"], json!({"plugin": {"type": "string"}, "previous": {"type": "string"}})),
        )],
        ("get", "/v1/store") => vec![("200", reference("StoreStatus"))],
        ("post", "/v1/store/scale-out" | "/v1/store/scale-in") => vec![("202", reference("StoreMove"))],
        ("get", "/v1/services") => vec![(
            "200",
            object(
                &["index", "self_preservation", "services"],
                json!({"index": {"type": "integer"}, "self_preservation": {"type": "boolean"},
                    "services": {"type": "array", "items": object(&["name", "instances", "passing"],
                        json!({"name": {"type": "string"}, "instances": {"type": "integer"}, "passing": {"type": "integer"}}))}}),
            ),
        )],
        ("get", "/v1/services/{svc}") => vec![("200", reference("ServiceInstances"))],
        ("get", "/v1/services/{svc}/watch") => vec![(
            "200",
            sse(json!({"type": "string", "contentMediaType": "application/json",
                "contentSchema": reference("ServiceInstances")})),
        )],
        ("get", "/v1/events") => vec![(
            "200",
            sse(json!({"type": "string", "contentMediaType": "application/json",
                "description": "one CloudEvents 1.0 event in JSON"})),
        )],
        ("put" | "delete", "/v1/services/{svc}/instances/{id}")
        | ("put", "/v1/services/{svc}/instances/{id}/heartbeat") => {
            vec![("200", object(&["index"], json!({"index": {"type": "integer"}})))]
        }
        ("get", "/v1/routes") => {
            vec![("200", object(&["routes"], json!({"routes": {"type": "array", "items": reference("Route")}})))]
        }
        ("get" | "put", "/v1/routes/{name}") => vec![("200", reference("Route"))],
        ("get", "/v1/leader") => vec![("200", reference("Leader"))],
        _ => Vec::new(),
    }
}

/// The schemas of answers built from other crates' types (kept in step with them by the
/// Schemathesis run, which checks every answer against its schema).
fn component_schemas() -> Map<String, Value> {
    let timings = |mut properties: Value| {
        if let Some(p) = properties.as_object_mut() {
            let (min, max) = (shoal_health::MIN_INTERVAL_MS, shoal_health::MAX_DURATION_MS);
            p.insert("interval_ms".into(), json!({"type": "integer", "minimum": min, "maximum": max}));
            p.insert(
                "timeout_ms".into(),
                json!({"type": "integer", "minimum": 1, "maximum": max,
                "description": "at most `interval_ms`"}),
            );
            p.insert("grace_ms".into(), json!({"type": "integer", "minimum": 0, "maximum": max}));
            p.insert("max_failures".into(), json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}));
        }
        properties
    };
    let string = json!({"type": "string"});
    let integer = json!({"type": "integer", "minimum": 0});
    let number = json!({"type": "number"});
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let range = json!({"type": "object", "required": ["begin", "end"],
        "properties": {"begin": {"type": "integer"}, "end": {"type": "integer"}}});
    let schemas = json!({
        "Resources": {"type": "object", "required": ["cpus", "mem_mb", "disk_mb", "ports"], "properties": {
            "cpus": number, "mem_mb": number, "disk_mb": number, "ports": {"type": "array", "items": range},
            "scalars": {"type": "object", "additionalProperties": number}}},
        "Agent": {"type": "object", "required": ["id", "hostname", "attributes", "total", "state", "tasks",
            "registrations", "last_seen_ms_ago", "registered_at_ms"], "properties": {
            "id": string, "hostname": string, "attributes": strings, "total": reference("Resources"),
            "state": {"type": "string", "enum": ["active", "lost"]}, "tasks": {"type": "array", "items": string},
            "registrations": integer, "last_seen_ms_ago": integer, "registered_at_ms": integer}},
        "Task": {"type": "object", "required": ["id", "framework", "state"], "properties": {
            "id": string, "framework": string, "agent_id": string, "state": string,
            "resources": reference("Resources"), "labels": strings, "env": strings,
            "created_ms": integer, "updated_ms": integer}},
        "Framework": {"type": "object", "required": ["name", "role", "weight", "plugin", "suppressed", "tasks", "offers", "allocated"],
            "properties": {"name": string, "role": string, "weight": number, "plugin": {"type": "boolean"},
            "suppressed": {"type": "boolean"}, "tasks": integer, "offers": integer, "allocated": reference("Resources"),
            "quota": {"oneOf": [{"type": "null"}, reference("Resources")]},
            "filters": {"type": "object", "additionalProperties": integer}}},
        "Artifact": {"type": "object", "required": ["digest", "size"], "properties": {"digest": string, "size": integer}},
        "StoreStatus": {"type": "object", "required": ["map", "nodes"], "properties": {
            "map": {"type": "object", "required": ["term", "epoch", "shards"], "properties": {
                "term": integer, "epoch": integer, "shards": {"type": "array", "items": string}}},
            "nodes": {"type": "array", "items": {"type": "object", "required": ["node"], "properties": {"node": string}}},
            "moving": {"oneOf": [{"type": "null"}, reference("StoreMove")]},
            "last_move": {"oneOf": [{"type": "null"}, reference("StoreMove")]}}},
        "StoreMove": {"type": "object", "required": ["id", "kind", "phase"], "properties": {
            "id": integer, "kind": {"type": "string", "enum": ["scale-out", "scale-in"]}, "phase": string,
            "from_shards": integer, "to_shards": integer, "node": string}},
        "Instance": {"type": "object", "required": ["id", "service", "address"], "properties": {
            "id": string, "service": string, "address": string, "weight": integer, "labels": strings}},
        "ServiceInstances": {"type": "object", "required": ["index", "service", "instances"], "properties": {
            "index": integer, "service": string, "instances": {"type": "array", "items": reference("Instance")}}},
        "Route": {"type": "object", "required": ["name", "path_prefix", "service", "router", "strip_prefix", "timeout_ms"],
            "properties": {"name": string, "host": {"type": ["string", "null"]}, "path_prefix": string, "service": string,
            "router": string, "strip_prefix": {"type": "boolean"}, "timeout_ms": integer}},
        "RouteRequest": {"type": "object", "required": ["service"], "additionalProperties": false, "properties": {
            "service": {"type": "string", "pattern": LABEL},
            "host": {"type": ["string", "null"], "pattern": "^[a-z0-9.-]{1,253}$"},
            "path_prefix": {"type": "string", "pattern": "^/[^?# ]{0,1023}$"},
            "router": {"type": "string", "pattern": LABEL},
            "strip_prefix": {"type": "boolean"},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000}}},
        "Registration": {"type": "object", "required": ["address"], "additionalProperties": false, "properties": {
            "address": {"type": "string", "pattern": "^[^\\s]{1,253}:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})$"},
            "ports": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 65535}},
            "weight": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
            "labels": {"type": "object", "maxProperties": shoal_discovery::MAX_LABELS,
                "propertyNames": {"minLength": 1, "maxLength": 128}, "additionalProperties": {"type": "string", "maxLength": 1024},
                "description": "names of 1 to 128 bytes, values of at most 1024"},
            "version": {"type": "string", "maxLength": 128, "description": "at most 128 bytes"},
            "health": {"type": ["string", "null"], "enum": ["passing", "critical", "unknown", null]},
            "ttl_seconds": {"type": ["integer", "null"], "minimum": 1, "maximum": 3600},
            "check": {"oneOf": [{"type": "null"}, reference("Check")]}}},
        "Check": {"description": "A health check the node runs against the instance. The API also takes `command` checks (`{\"type\": \"command\", \"command\": \"…\"}`, run with `sh -c`, admin tokens only) and `wasm` ones (`plugin`, `config`); the timeout is at most the interval.",
            "oneOf": [
                {"type": "object", "required": ["type"], "additionalProperties": false, "properties": timings(json!({
                    "type": {"const": "http"}, "port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    "path": {"type": "string", "pattern": "^/[!-~]{0,255}$"}}))},
                {"type": "object", "required": ["type"], "additionalProperties": false, "properties": timings(json!({
                    "type": {"const": "tcp"}, "port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535}}))},
            ]},
        "Leader": {"type": "object", "required": ["term", "leader", "self", "members"], "properties": {
            "term": integer, "leader": {"type": "object"}, "self": {"type": "object"}, "members": {"type": "array"}}},
    });
    match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn framework_document() -> Value {
        json!({
            "paths": {
                "/apps/{id}": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "put": {"operationId": "put_app", "security": [],
                        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Def"}}}},
                        "responses": {
                            "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/App"}}}},
                            "400": {"description": "bad", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
                },
                "/tasks": {"get": {"responses": {"200": {"description": "ok"}}}},
                "relative": {"get": {"responses": {}}},
                "/../v1/tokens": {"get": {"responses": {}}},
            },
            "components": {"schemas": {"Def": {"type": "object"}, "App": {"type": "object"}, "Error": {"type": "object"}}},
        })
    }

    #[test]
    fn a_framework_document_lands_under_its_prefix_and_aliases() {
        let mut doc = document();
        let host_paths = doc["paths"].as_object().unwrap().len();
        merge_framework(&mut doc, "service", &framework_document());
        let paths = doc["paths"].as_object().unwrap();
        // Two paths under the prefix, the `/apps` one also under `/v1/apps`; the others refused.
        assert_eq!(paths.len(), host_paths + 3, "{:?}", paths.keys().collect::<Vec<_>>());
        for route in ["/v1/frameworks/service/apps/{id}", "/v1/frameworks/service/tasks", "/v1/apps/{id}"] {
            assert!(paths.contains_key(route), "{route}");
        }
        let put = &paths["/v1/apps/{id}"]["put"];
        assert!(put.get("operationId").is_none());
        assert_eq!(put["security"], json!([{"bearer": []}]));
        assert_eq!(
            put["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/service.App"
        );
        assert_eq!(
            put["responses"]["400"]["content"]["application/json"]["schema"],
            json!({"$ref": "#/components/schemas/ErrorBody"})
        );
        for status in ["401", "403", "404", "413", "422", "429", "503"] {
            assert!(put["responses"].get(status).is_some(), "{status} missing");
        }
        // Not an alias: the host does not check the definition against the agents there.
        assert!(paths["/v1/frameworks/service/apps/{id}"]["put"]["responses"].get("422").is_none());
        assert!(doc["components"]["schemas"]["service.Def"].is_object());

        // Another framework gets no alias, whatever its paths.
        let mut doc = document();
        merge_framework(&mut doc, "mine", &framework_document());
        assert!(doc["paths"].get("/v1/frameworks/mine/apps/{id}").is_some());
        assert_eq!(doc["paths"].as_object().unwrap().len(), host_paths + 2);
    }

    #[test]
    fn the_ttl_pattern_takes_exactly_what_the_parser_takes() {
        let pattern = regex::Regex::new(crate::auth::TTL_PATTERN).unwrap();
        let max = crate::auth::MAX_TTL.as_secs();
        let mut texts: Vec<String> =
            ["", "s", "0s", "01h", "1", "1x", "-1s", "1.5h", " 1h", "1h ", "1hh"].map(String::from).to_vec();
        for (unit, seconds) in [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)] {
            let last = max / seconds;
            for n in [1, 9, 10, 99, 100, last / 10, last - 1, last, last + 1, last * 10, u64::MAX] {
                texts.push(format!("{n}{unit}"));
            }
            // Every number of digits, at the top and the bottom of each.
            for digits in 1..=10 {
                texts.push(format!("{}{unit}", "9".repeat(digits)));
                texts.push(format!("1{}{unit}", "0".repeat(digits - 1)));
            }
            // Around every digit of the largest value.
            let top = last.to_string();
            for i in 0..top.len() {
                for d in 0..=9u8 {
                    let mut text = top.clone().into_bytes();
                    text[i] = b'0' + d;
                    texts.push(format!("{}{unit}", String::from_utf8(text).unwrap()));
                }
            }
        }
        for text in texts {
            let parsed = crate::auth::parse_ttl(&text).is_some();
            assert_eq!(pattern.is_match(&text), parsed, "{text:?}: the parser says {parsed}");
        }
    }
}
