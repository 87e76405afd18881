//! The one error shape of the API: `{"error": {"code": "...", "message": "..."}}`, with the
//! status code that fits. Codes are stable, lower snake case; messages are for humans.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_registry::RegistryError;
use shoal_runtime::LoadError;

use crate::dto::{ErrorBody, ErrorDetail};

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for humans.
    pub message: String,
}

impl ApiError {
    /// Build an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let message = err.to_string();
        let (status, code) = match &err {
            RegistryError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            RegistryError::InvalidVersion(_) => (StatusCode::BAD_REQUEST, "invalid_version"),
            RegistryError::Load(load) => match load {
                LoadError::NotWasm => (StatusCode::BAD_REQUEST, "not_wasm"),
                LoadError::CoreModule => (StatusCode::BAD_REQUEST, "not_a_component"),
                LoadError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_component"),
                LoadError::IncompatibleVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "incompatible_version"),
                LoadError::WrongWorld { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_world"),
                LoadError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            },
            RegistryError::DuplicateVersion { .. } => (StatusCode::CONFLICT, "duplicate_version"),
            RegistryError::TooManyVersions { .. } => (StatusCode::CONFLICT, "too_many_versions"),
            RegistryError::NotFound { .. } | RegistryError::VersionNotFound { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            RegistryError::VersionActive { .. } => (StatusCode::CONFLICT, "version_active"),
            RegistryError::NothingToRollBack { .. } => (StatusCode::CONFLICT, "nothing_to_roll_back"),
            RegistryError::Storage(_) | RegistryError::PluginKv { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
            RegistryError::NotLeader => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
        };
        ApiError::new(status, code, message)
    }
}

/// Parse a JSON body whatever its `Content-Type` says (clients such as `curl -d` send
/// `application/x-www-form-urlencoded`); an empty or malformed body is a 400 that says why.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: send a JSON object"));
    }
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid JSON body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    whole_numbers(&mut value);
    serde_json::from_value(value).map_err(bad)
}

/// `1.0` is the integer 1 (JSON has one number type; Python's `json.dumps` writes whole floats
/// with `.0`): whole numbers written as floats become integers, so integer fields take them.
fn whole_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let whole = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15);
            if let Some(f) = whole {
                *value = if f < 0.0 { serde_json::json!(f as i64) } else { serde_json::json!(f as u64) };
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}
