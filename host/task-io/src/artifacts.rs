//! Artifacts: the Wasm components that Wasm tasks run, named by the sha256 of their bytes.
//!
//! Operators upload them to the master (`POST /v1/artifacts`); the master keeps them in its
//! state ([`ArtifactStore`]: table [`ARTIFACTS_TABLE`], key = the digest, the bytes replicated as
//! the blob of the same name, so every master has every artifact) and serves them to agents over
//! the bus in chunks (the messages are `shoal_protocol::artifact`'s). An agent ([`fetch`]) checks
//! the digest of what it assembled before it runs anything, and caches it in a directory of its
//! own. Earlier masters kept artifacts in `<data_dir>/artifacts/<sha256>`;
//! [`migrate_dir`] moves them into the state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;
use serde_json::json;
use sha2::{Digest, Sha256};
use shoal_bus::{SharedBus, subject};
use shoal_protocol::artifact::{CHUNK, MAX_ARTIFACT, ReadRequest, StatReply, is_digest};
use shoal_state::{Batch, StateDb, StateError, TableChange, TableWatch};

/// The state's table of artifacts: key = sha256 hex, value = the bytes (a blob of that name).
pub const ARTIFACTS_TABLE: &str = "artifacts";

/// How long an agent waits for each answer of the master while fetching.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The sha256 of `bytes`, lower-case hex.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An artifact as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactInfo {
    /// sha256 of the bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why an artifact could not be stored or fetched.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Over [`MAX_ARTIFACT`].
    #[error("{size} bytes is over the limit of {MAX_ARTIFACT}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not a WebAssembly component.
    #[error("{0}")]
    NotAComponent(&'static str),
    /// Not a sha256 digest.
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
    /// The master has no such artifact.
    #[error("no artifact {0}")]
    Unknown(String),
    /// The bus did not carry a request or its answer.
    #[error("{doing} artifact {digest}: {source}")]
    Bus {
        /// What was being done.
        doing: &'static str,
        /// The artifact.
        digest: String,
        /// What the bus said.
        source: shoal_bus::BusError,
    },
    /// The master answered something that is not the protocol.
    #[error("the master answered a stat of artifact {digest} with something else: {source}")]
    Malformed {
        /// The artifact.
        digest: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The bytes ended early or did not match the digest.
    #[error("artifact {digest}: {problem}")]
    Corrupt {
        /// The artifact.
        digest: String,
        /// What was wrong.
        problem: String,
    },
    /// The master's state did not take or give the artifact ([`StateError::NotLeader`] on a
    /// master that does not lead).
    #[error("artifacts in the master's state: {0}")]
    State(#[from] StateError),
    /// Reading or writing the disk failed.
    #[error("artifact file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_owned(), source }
}

/// Write `bytes` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_atomically(dir: &Path, digest: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
    let tmp = dir.join(format!(".{digest}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    let path = dir.join(digest);
    std::fs::rename(&tmp, &path).map_err(io_error(&path))
}

/// The master's artifacts, in its state.
pub struct ArtifactStore {
    state: Arc<StateDb>,
    /// Digest → size of every artifact in the table (listing without reading the bytes).
    sizes: RwLock<BTreeMap<String, u64>>,
}

/// Check that `bytes` may be an artifact. A WebAssembly component is required (its header is
/// checked here; the agent's executor says whether it can run it).
fn check(bytes: &[u8]) -> Result<(), ArtifactError> {
    if bytes.len() > MAX_ARTIFACT {
        return Err(ArtifactError::TooLarge { size: bytes.len() });
    }
    // `\0asm`, then version 0x0d and layer 1: a component, not a core module.
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ArtifactError::NotAComponent("not a WebAssembly binary (missing the `\\0asm` header)"));
    }
    if bytes[6..8] != [1, 0] {
        return Err(ArtifactError::NotAComponent(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 (or componentize it)",
        ));
    }
    Ok(())
}

impl ArtifactStore {
    /// The artifacts of `state` (which must have [`ARTIFACTS_TABLE`]), following every change
    /// this member applies, so a standby master lists and serves what the leader stored.
    pub fn open(state: Arc<StateDb>) -> Result<Arc<ArtifactStore>, ArtifactError> {
        let watch = state.watch(ARTIFACTS_TABLE);
        let store = Arc::new(ArtifactStore { sizes: RwLock::new(BTreeMap::new()), state });
        store.reload()?;
        tokio::spawn(follow(Arc::downgrade(&store), watch));
        Ok(store)
    }

    /// Keep `bytes`; returns the digest. Committed to the state (so on its way to every master)
    /// when this returns `Ok`; refused on a master that does not lead.
    pub async fn put(&self, bytes: &[u8]) -> Result<ArtifactInfo, ArtifactError> {
        let info = commit(&self.state, bytes).await?;
        self.reread(&[info.digest.clone().into_bytes()]);
        Ok(info)
    }

    /// The bytes of an artifact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        if !is_digest(digest) {
            return None;
        }
        self.state.get(ARTIFACTS_TABLE, digest.as_bytes()).ok().flatten()
    }

    /// Every artifact.
    pub fn list(&self) -> Vec<ArtifactInfo> {
        self.sizes.read().iter().map(|(digest, &size)| ArtifactInfo { digest: digest.clone(), size }).collect()
    }

    /// Bring the sizes of `keys` up to date with the table (under the lock, so a later reread
    /// never loses to an earlier one).
    fn reread(&self, keys: &[Vec<u8>]) {
        let mut sizes = self.sizes.write();
        for key in keys {
            let digest = String::from_utf8_lossy(key).into_owned();
            match size_in(&self.state, &digest) {
                Ok(Some(size)) => {
                    sizes.insert(digest, size);
                }
                Ok(None) => {
                    sizes.remove(&digest);
                }
                Err(e) => tracing::error!(%digest, cause = %e, "an artifact of the state could not be read"),
            }
        }
    }

    /// Reread the sizes of every artifact (reading through the values in place, not copying).
    fn reload(&self) -> Result<(), ArtifactError> {
        let mut sizes = self.sizes.write();
        let db = self.state.db();
        let mut iter = db.raw_iterator_cf(self.state.table(ARTIFACTS_TABLE)?);
        iter.seek_to_first();
        let mut all = BTreeMap::new();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            all.insert(String::from_utf8_lossy(key).into_owned(), value.len() as u64);
            iter.next();
        }
        iter.status().map_err(|e| ArtifactError::State(StateError::from(e)))?;
        *sizes = all;
        Ok(())
    }

    fn stat(&self, digest: &str) -> StatReply {
        match size_in(&self.state, digest) {
            Ok(Some(size)) if is_digest(digest) => StatReply { size: Some(size), error: None },
            _ => StatReply { size: None, error: Some(format!("no artifact {digest}")) },
        }
    }

    /// The chunk a read asks for, read in place from the state (empty when there is none).
    fn chunk(&self, request: &[u8]) -> Vec<u8> {
        let Some(request) = serde_json::from_slice::<ReadRequest>(request).ok().filter(|r| is_digest(&r.digest)) else {
            return Vec::new();
        };
        let Ok(table) = self.state.table(ARTIFACTS_TABLE) else { return Vec::new() };
        let Ok(Some(bytes)) = self.state.db().get_pinned_cf(table, request.digest.as_bytes()) else {
            return Vec::new();
        };
        usize::try_from(request.offset)
            .ok()
            .and_then(|offset| bytes.get(offset..))
            .map(|b| b[..b.len().min(CHUNK)].to_vec())
            .unwrap_or_default()
    }

    /// Answer agents' requests until the bus closes.
    pub async fn serve(self: Arc<Self>, bus: SharedBus) -> Result<(), shoal_bus::BusError> {
        let mut stats = bus.subscribe(subject::ARTIFACT_STAT).await?;
        let mut reads = bus.subscribe(subject::ARTIFACT_READ).await?;
        loop {
            tokio::select! {
                msg = stats.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let digest = String::from_utf8_lossy(&msg.payload).into_owned();
                    let body = json!(self.stat(&digest)).to_string();
                    let _ = msg.respond(bus.as_ref(), body.into_bytes().into()).await;
                }
                msg = reads.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let chunk = self.chunk(&msg.payload);
                    let _ = msg.respond(bus.as_ref(), chunk.into()).await;
                }
            }
        }
    }
}

/// Move the artifacts an earlier master kept in `dir` (`<data_dir>/artifacts/<sha256>`) into
/// `state`, one commit each, removing each file once it is in (and `dir` once empty). A
/// file whose bytes do not match its name is left where it is. Returns the number moved.
pub async fn migrate_dir(state: &StateDb, dir: &Path) -> Result<usize, ArtifactError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(ArtifactError::Io { path: dir.to_owned(), source }),
    };
    let mut moved = 0;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A write an earlier master did not finish: never an artifact.
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        if !is_digest(&name) || digest_of(&bytes) != name {
            tracing::warn!(path = %path.display(), "not an artifact (its bytes do not match its name); left in place");
            continue;
        }
        commit(state, &bytes).await?;
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        moved += 1;
    }
    if std::fs::read_dir(dir).map_err(io_error(dir))?.next().is_none() {
        std::fs::remove_dir(dir).map_err(io_error(dir))?;
    }
    Ok(moved)
}

/// The size of artifact `digest` in `state`, read in place.
fn size_in(state: &StateDb, digest: &str) -> Result<Option<u64>, StateError> {
    let table = state.table(ARTIFACTS_TABLE)?;
    Ok(state.db().get_pinned_cf(table, digest.as_bytes())?.map(|v| v.len() as u64))
}

/// Commit `bytes` as an artifact, unless `state` has it already.
async fn commit(state: &StateDb, bytes: &[u8]) -> Result<ArtifactInfo, ArtifactError> {
    check(bytes)?;
    let digest = digest_of(bytes);
    if size_in(state, &digest)?.is_none() {
        let mut batch = Batch::new();
        batch.put_blob(ARTIFACTS_TABLE, digest.as_bytes(), &digest, bytes.to_vec());
        state.commit(batch).await?;
    }
    Ok(ArtifactInfo { digest, size: bytes.len() as u64 })
}

/// Apply every change of the table to `store`'s sizes, for as long as it exists.
async fn follow(store: Weak<ArtifactStore>, mut watch: TableWatch) {
    while let Some(change) = watch.next().await {
        let Some(store) = store.upgrade() else { return };
        match change {
            TableChange::Keys(keys) => store.reread(&keys),
            TableChange::Lost => {
                if let Err(e) = store.reload() {
                    tracing::error!(cause = %e, "the artifacts could not be reread from the state");
                }
            }
        }
    }
}

/// Fetch an artifact from the master into `cache` (`<cache>/<digest>`), unless it is there;
/// returns its bytes, checked against the digest.
pub async fn fetch(bus: &SharedBus, digest: &str, cache: &Path) -> Result<Vec<u8>, ArtifactError> {
    if !is_digest(digest) {
        return Err(ArtifactError::BadDigest(digest.to_owned()));
    }
    let path = cache.join(digest);
    if let Ok(bytes) = std::fs::read(&path)
        && digest_of(&bytes) == digest
    {
        return Ok(bytes);
    }
    let bus_error = |doing| move |source| ArtifactError::Bus { doing, digest: digest.to_owned(), source };
    let stat = bus
        .request(subject::ARTIFACT_STAT, digest.as_bytes().to_vec().into(), FETCH_TIMEOUT)
        .await
        .map_err(bus_error("asking the master for"))?;
    let stat: StatReply = serde_json::from_slice(&stat.payload)
        .map_err(|source| ArtifactError::Malformed { digest: digest.to_owned(), source })?;
    let corrupt = |problem: String| ArtifactError::Corrupt { digest: digest.to_owned(), problem };
    let size = stat.size.ok_or_else(|| ArtifactError::Unknown(digest.to_owned()))?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MAX_ARTIFACT)
        .ok_or_else(|| corrupt(format!("{size} bytes is over the limit of {MAX_ARTIFACT}")))?;
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        let req = json!(ReadRequest { digest: digest.to_owned(), offset: bytes.len() as u64 }).to_string();
        let chunk = bus
            .request(subject::ARTIFACT_READ, req.into_bytes().into(), FETCH_TIMEOUT)
            .await
            .map_err(bus_error("reading"))?;
        if chunk.payload.is_empty() {
            return Err(corrupt(format!("ended at {} of {size} bytes", bytes.len())));
        }
        bytes.extend_from_slice(&chunk.payload);
    }
    if digest_of(&bytes) != digest {
        return Err(corrupt("arrived with other bytes (digest mismatch)".into()));
    }
    std::fs::create_dir_all(cache).map_err(io_error(cache))?;
    write_atomically(cache, digest, &bytes)?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shoal_bus::LocalBus;

    /// A component header and `n` bytes of padding (enough for the store's checks).
    fn component(n: usize) -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        bytes.extend((0..n).map(|i| (i % 251) as u8));
        bytes
    }

    fn state(dir: &Path) -> Arc<StateDb> {
        StateDb::open_local(dir, &[ARTIFACTS_TABLE]).unwrap()
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_component_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(state(dir.path())).unwrap();
        assert!(matches!(store.put(b"hello").await, Err(ArtifactError::NotAComponent(_))));
        assert!(
            matches!(store.put(b"\0asm\x01\x00\x00\x00").await, Err(ArtifactError::NotAComponent(m)) if m.contains("core"))
        );
        assert!(store.list().is_empty());
        assert_eq!(store.get("../../etc/passwd"), None);
    }

    /// An earlier master's `artifacts/` directory: its artifacts move into the state and the
    /// directory goes; a half-written temporary file is dropped; a file whose bytes do not
    /// match its name is left where it is.
    #[tokio::test]
    async fn an_earlier_artifacts_directory_moves_into_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("artifacts");
        std::fs::create_dir(&old).unwrap();
        let bytes = component(1000);
        let digest = digest_of(&bytes);
        std::fs::write(old.join(&digest), &bytes).unwrap();
        std::fs::write(old.join(format!(".{digest}.tmp")), b"half").unwrap();
        let store = ArtifactStore::open(state(&dir.path().join("state"))).unwrap();
        assert_eq!(migrate_dir(&store.state, &old).await.unwrap(), 1);
        assert!(!old.exists(), "an emptied directory is removed");
        assert_eq!(store.get(&digest), Some(bytes.clone()));
        let listed = [ArtifactInfo { digest: digest.clone(), size: bytes.len() as u64 }];
        shoal_testkit::eventually("the store to list what moved in", Duration::from_secs(5), || async {
            (store.list() == listed).then_some(())
        })
        .await;
        assert_eq!(migrate_dir(&store.state, &old).await.unwrap(), 0, "nothing left to move");

        std::fs::create_dir(&old).unwrap();
        let wrong = "1".repeat(64);
        std::fs::write(old.join(&wrong), &bytes).unwrap();
        assert_eq!(migrate_dir(&store.state, &old).await.unwrap(), 0);
        assert!(old.join(&wrong).exists() && store.get(&wrong).is_none());
    }

    /// Over a real in-process bus: a fetch of several chunks arrives whole and checked, lands in
    /// the cache, and an unknown digest is a typed error.
    #[tokio::test]
    async fn agents_fetch_in_chunks_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(state(&dir.path().join("master"))).unwrap();
        let bytes = component(CHUNK * 2 + 17);
        let info = store.put(&bytes).await.unwrap();
        assert_eq!(store.list(), std::slice::from_ref(&info));
        let bus: SharedBus = Arc::new(LocalBus::new());
        let serving = tokio::spawn(store.clone().serve(bus.clone()));

        // The first fetch that finds the master serving (until then: no responders).
        let cache = dir.path().join("agent");
        let got = shoal_testkit::eventually("the master to serve artifacts", Duration::from_secs(5), || async {
            fetch(&bus, &info.digest, &cache).await.ok()
        })
        .await;
        assert_eq!(got, bytes);
        assert_eq!(std::fs::read(cache.join(&info.digest)).unwrap(), bytes);

        let unknown = "0".repeat(64);
        assert!(matches!(fetch(&bus, &unknown, &cache).await, Err(ArtifactError::Unknown(d)) if d == unknown));
        assert!(matches!(fetch(&bus, "nope", &cache).await, Err(ArtifactError::BadDigest(_))));
        serving.abort();
    }
}
