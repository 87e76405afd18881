//! HTTP helpers: JSON answers and the one error shape, `{"error": "<why>"}`.

use serde::Serialize;
use shoal_sdk::HttpResponse;

/// An error answered to an API client: status code and a message that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (4xx for the client's mistakes, 5xx for ours).
    pub status: u16,
    /// Lower-case message naming the offending field or object.
    pub message: String,
    /// The methods the path takes, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// 400: malformed JSON or an invalid field.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError { status: 400, message: message.into(), allow: None }
    }
    /// 404: no such object.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: 404, message: message.into(), allow: None }
    }
    /// 405: the path exists but not with this method; it takes `allow` (`"GET, PUT"`).
    pub fn method(method: &str, path: &str, allow: &'static str) -> Self {
        ApiError { status: 405, message: format!("method {method} not allowed on {path}"), allow: Some(allow) }
    }
    /// 409: conflicts with the object's current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError { status: 409, message: message.into(), allow: None }
    }
    /// 422: well-formed but impossible.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError { status: 422, message: message.into(), allow: None }
    }
    /// 500: the plugin's own store failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: 500, message: message.into(), allow: None }
    }
}

impl From<String> for ApiError {
    /// Validation messages are client errors (400) unless a caller says otherwise.
    fn from(message: String) -> Self {
        ApiError::bad(message)
    }
}

/// A JSON answer.
pub fn json<T: Serialize>(status: u16, body: &T) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(body) => HttpResponse { status, headers: vec![("content-type".into(), "application/json".into())], body },
        Err(e) => error(&ApiError::internal(format!("cannot encode the answer: {e}"))),
    }
}

/// The JSON error answer (with `Allow` on a 405, as RFC 9110 asks).
pub fn error(err: &ApiError) -> HttpResponse {
    let body = serde_json::json!({ "error": err.message });
    let mut headers = vec![("content-type".into(), "application/json".into())];
    if let Some(allow) = err.allow {
        headers.push(("allow".into(), allow.into()));
    }
    HttpResponse { status: err.status, headers, body: body.to_string().into_bytes() }
}

/// The non-empty segments of a path: `/apps/web/scale` → `["apps", "web", "scale"]`.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let r = error(&ApiError::not_found("unknown app web"));
        assert_eq!(r.status, 404);
        assert_eq!(String::from_utf8_lossy(&r.body), r#"{"error":"unknown app web"}"#);
        assert_eq!(segments("/apps//web/"), vec!["apps", "web"]);
        let r = error(&ApiError::method("PATCH", "/apps/web", "GET, PUT, DELETE"));
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("allow".into(), "GET, PUT, DELETE".into())), "{:?}", r.headers);
    }
}
