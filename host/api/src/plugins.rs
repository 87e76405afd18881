//! `/v1/plugins`: upload, list, show, activate, roll back, delete, download.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use shoal_abi::PluginKind;

use crate::AppState;
use crate::dto::{ActivateRequest, ErrorBody, PluginDto, PluginList, PluginVersionDto};
use crate::error::ApiError;

fn kind(text: &str) -> Result<PluginKind, ApiError> {
    text.parse()
        .map_err(|e: shoal_abi::UnknownKind| ApiError::new(StatusCode::BAD_REQUEST, "unknown_kind", e.to_string()))
}

/// Query of an upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    /// Version label; default `v<n>`.
    version: Option<String>,
    /// Make the new version active (the first version of a plugin always is).
    #[serde(default)]
    activate: bool,
}

/// Query of a delete.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete only this version; without it, the whole plugin.
    version: Option<String>,
}

/// List plugins.
#[utoipa::path(get, path = "/v1/plugins", responses((status = 200, body = PluginList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<PluginList>, ApiError> {
    state.auth.reader(&headers)?;
    let plugins = state.registry.list()?.into_iter().map(Into::into).collect();
    Ok(Json(PluginList { plugins }))
}

/// Show one plugin.
#[utoipa::path(get, path = "/v1/plugins/{kind}/{name}", params(("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = PluginDto), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<PluginDto>, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(state.registry.show(kind(&k)?, &name)?.into()))
}

/// Upload a version: the body is the component's bytes.
#[utoipa::path(post, path = "/v1/plugins/{kind}/{name}", params(("kind" = String, Path), ("name" = String, Path), PushQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginVersionDto), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
    query: Result<Query<PushQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<PluginVersionDto>), ApiError> {
    state.auth.admin(&headers)?;
    let kind = kind(&k)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = crate::body::read(body, state.max_upload, "the component").await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: send the component's bytes"));
    }
    let version = state.registry.push(kind, &name, query.version.as_deref(), &body, query.activate).await?;
    Ok((StatusCode::CREATED, Json(version.into())))
}

/// Make a version active.
#[utoipa::path(post, path = "/v1/plugins/{kind}/{name}/activate", params(("kind" = String, Path), ("name" = String, Path)),
    request_body = ActivateRequest, responses((status = 200, body = PluginVersionDto), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn activate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
    body: Body,
) -> Result<Json<PluginVersionDto>, ApiError> {
    state.auth.admin(&headers)?;
    let kind = kind(&k)?;
    let body = crate::body::read(body, crate::body::JSON, "an activation").await?;
    let request: ActivateRequest = crate::error::json_body(&body)?;
    Ok(Json(state.registry.activate(kind, &name, &request.version).await?.into()))
}

/// Return to the previously active version.
#[utoipa::path(post, path = "/v1/plugins/{kind}/{name}/rollback", params(("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = PluginVersionDto), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<PluginVersionDto>, ApiError> {
    state.auth.admin(&headers)?;
    Ok(Json(state.registry.rollback(kind(&k)?, &name).await?.into()))
}

/// Delete a version, or the whole plugin.
#[utoipa::path(delete, path = "/v1/plugins/{kind}/{name}", params(("kind" = String, Path), ("name" = String, Path), DeleteQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    state.auth.admin(&headers)?;
    let kind = kind(&k)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state.registry.delete(kind, &name, query.version.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The component bytes of a version (admin and operator tokens).
#[utoipa::path(get, path = "/v1/plugins/{kind}/{name}/versions/{version}/component",
    params(("kind" = String, Path), ("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 403, body = ErrorBody, description = "an app token"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((k, name, version)): Path<(String, String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    crate::scoped::check_operator(&state.auth.reader(&headers)?, "downloading a plugin's component")?;
    let bytes = state.registry.bytes(kind(&k)?, &name, &version)?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes))
}
