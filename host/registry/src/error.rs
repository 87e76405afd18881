//! Why a registry operation was refused ([`RegistryError`]): each variant says what to do about
//! it, and a refused operation changed nothing.

use shoal_abi::PluginKind;
use shoal_runtime::{KvError, LoadError};

/// Why a registry operation was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A plugin name that is not a lower-case DNS label.
    #[error("invalid plugin name `{0}`: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidName(String),
    /// A bad version label.
    #[error(
        "invalid version `{0}`: use 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidVersion(String),
    /// The bytes are not a valid plugin of this kind.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin has as many versions as it may keep.
    #[error(
        "{kind} plugin `{name}` has {limit} versions, as many as it may keep; delete old ones first (shoal plugin delete --version)"
    )]
    TooManyVersions {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// The version exists already.
    #[error("{kind} plugin `{name}` already has a version `{version}`; versions are immutable, push a new one")]
    DuplicateVersion {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// No such plugin.
    #[error("no {kind} plugin named `{name}`")]
    NotFound {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
    },
    /// No such version.
    #[error("{kind} plugin `{name}` has no version `{version}`")]
    VersionNotFound {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// Deleting the active version is refused.
    #[error(
        "version `{version}` of {kind} plugin `{name}` is active; activate another version first, or delete the whole plugin"
    )]
    VersionActive {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// Nothing to roll back to.
    #[error("{kind} plugin `{name}` has no previous version to roll back to")]
    NothingToRollBack {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
    },
    /// The store failed.
    #[error("plugin store: {0}")]
    Storage(String),
    /// This master does not lead: the leader takes changes.
    #[error("this master does not lead; the leader takes plugin changes")]
    NotLeader,
    /// A plugin's key-value store failed.
    #[error("{kind} plugin `{name}`'s key-value store: {source}")]
    PluginKv {
        /// Kind.
        kind: PluginKind,
        /// Name.
        name: String,
        /// What the store said.
        source: KvError,
    },
}

impl From<shoal_state::StateError> for RegistryError {
    fn from(err: shoal_state::StateError) -> Self {
        match err {
            shoal_state::StateError::NotLeader => RegistryError::NotLeader,
            other => RegistryError::Storage(other.to_string()),
        }
    }
}
