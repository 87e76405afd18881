//! Every body the API reads or writes, and the OpenAPI document built from them.

use serde::{Deserialize, Serialize};
use shoal_registry::{PluginInfo, PluginVersion};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error shape of every 4xx/5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `wrong_world`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// One stored version of a plugin.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PluginVersionDto {
    /// `allocator`, `router`, `health-check` or `framework`.
    pub kind: String,
    /// Plugin name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Upload time, RFC 3339.
    pub uploaded_at: String,
}

impl From<PluginVersion> for PluginVersionDto {
    fn from(v: PluginVersion) -> Self {
        PluginVersionDto {
            kind: v.kind.as_str().into(),
            name: v.name,
            version: v.version,
            digest: v.digest,
            size: v.size,
            uploaded_at: v.uploaded_at,
        }
    }
}

/// A plugin with its versions.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PluginDto {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Active version.
    pub active: Option<String>,
    /// Versions `rollback` would return to, most recent last.
    pub history: Vec<String>,
    /// Every stored version, oldest first.
    pub versions: Vec<PluginVersionDto>,
    /// Successful calls of the active version since it was loaded.
    pub calls_ok: u64,
    /// Failed calls of the active version since it was loaded.
    pub calls_failed: u64,
}

impl From<PluginInfo> for PluginDto {
    fn from(p: PluginInfo) -> Self {
        PluginDto {
            kind: p.kind.as_str().into(),
            name: p.name,
            active: p.active,
            history: p.history,
            versions: p.versions.into_iter().map(Into::into).collect(),
            calls_ok: p.calls_ok,
            calls_failed: p.calls_failed,
        }
    }
}

/// `GET /v1/plugins`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// Every plugin, by kind then name.
    pub plugins: Vec<PluginDto>,
}

/// `POST /v1/plugins/{kind}/{name}/activate`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The version to make active.
    pub version: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `admin`, `operator` or `app:<namespace>`.
    pub scope: String,
    /// How long the token works: a whole number and `s`, `m`, `h` or `d` (`30m`, `1h`, `7d`), at
    /// most `3650d`; without it, until revoked.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token as listed: never its secret, nor its whole digest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's sha256: what `DELETE /v1/tokens/{id}` takes.
    pub id: String,
    /// Its scope.
    pub scope: String,
    /// Issued at, ms since the Unix epoch (absent for tokens issued before this was recorded).
    pub created_ms: Option<u64>,
    /// Stops working at, ms since the Unix epoch; absent: until revoked.
    pub expires_ms: Option<u64>,
    /// Past its expiry (answered 401).
    pub expired: bool,
    /// The node's admin token (from `admin.token`): rotated with that file, never revoked.
    pub node: bool,
}

/// A new token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The token; shown once, in this answer only.
    pub token: String,
    /// What `GET /v1/tokens` lists for it.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `GET /v1/tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Every token: the node's admin token first, then by age.
    pub tokens: Vec<TokenInfo>,
}

/// An entry of a listing. Values that are UTF-8 come as `value`, others hex-encoded as
/// `value_base16`.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct KvEntryDto {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// The value, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in hex, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base16: Option<String>,
    /// When it expires, in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `GET /v1/kv/{ns}`: one page of a listing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KvList {
    /// Entries in key order.
    pub entries: Vec<KvEntryDto>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub cursor: Option<String>,
}

/// `PUT /v1/kv/{ns}/{key}`: what was written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// Its new version (also in `X-Shoal-Version`).
    pub version: u64,
}

/// One operation of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvBatchOp {
    /// Write a value.
    Put {
        /// The key.
        key: String,
        /// The value, as UTF-8 text (binary values go through `PUT /v1/kv/{ns}/{key}`).
        value: String,
        /// Compare-and-set on this version; 0 = only if absent.
        #[serde(default)]
        version: Option<u64>,
        /// Time to live in seconds.
        #[serde(default)]
        ttl: Option<u64>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Compare-and-set on this version.
        #[serde(default)]
        version: Option<u64>,
    },
}

/// `POST /v1/kv/{ns}`: a batch, at most 128 operations, each key at most once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvBatchRequest {
    /// The operations, applied all or none.
    pub ops: Vec<KvBatchOp>,
}

/// The answer to a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KvBatchResponse {
    /// The version each operation wrote, in order.
    pub versions: Vec<u64>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, served at `/v1/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal API", description = "Control plane of a pool of machines; every policy is a WebAssembly component."),
    paths(
        crate::plugins::list, crate::plugins::show, crate::plugins::push, crate::plugins::delete,
        crate::plugins::activate, crate::plugins::rollback, crate::plugins::download,
        crate::events::stream, crate::auth::issue, crate::auth::list, crate::auth::revoke,
        crate::kv::get, crate::kv::put, crate::kv::delete, crate::kv::list, crate::kv::batch,
        crate::kv::status, crate::kv::scale_out, crate::kv::scale_in,
        crate::services::list, crate::services::show, crate::services::watch, crate::services::register,
        crate::services::heartbeat, crate::services::deregister, crate::services::list_routes,
        crate::services::show_route, crate::services::put_route, crate::services::delete_route,
        crate::agents::list, crate::agents::show,
        crate::cluster::list_tasks, crate::cluster::show_task, crate::cluster::kill_task, crate::cluster::task_logs,
        crate::cluster::list_frameworks, crate::cluster::list_artifacts, crate::cluster::push_artifact,
        crate::cluster::get_artifact, crate::cluster::get_allocator, crate::cluster::put_allocator,
    ),
    components(schemas(ErrorBody, ErrorDetail, PluginVersionDto, PluginDto, PluginList, ActivateRequest, TokenRequest, TokenResponse, TokenInfo, TokenList,
        KvEntryDto, KvList, KvWritten, KvBatchOp, KvBatchRequest, KvBatchResponse, crate::kv::ScaleOutRequest, crate::kv::ReadConsistency, crate::cluster::AllocatorChoice)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;
