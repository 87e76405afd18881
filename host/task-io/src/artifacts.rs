//! Artifacts: the Wasm components that Wasm tasks run, named by the sha256 of their bytes.
//!
//! Operators upload them to the master (`POST /v1/artifacts`); the master keeps them in
//! `<data_dir>/artifacts/<sha256>` ([`ArtifactStore`]) and serves them to agents over the bus in
//! chunks (the messages are `shoal_protocol::artifact`'s). An agent ([`fetch`]) checks the digest
//! of what it assembled before it runs anything, and caches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use shoal_bus::{SharedBus, subject};
use shoal_protocol::artifact::{CHUNK, MAX_ARTIFACT, ReadRequest, StatReply, is_digest};

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

/// The master's artifacts, in a directory.
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    /// Open (create) the store in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Arc<ArtifactStore>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(ArtifactStore { dir: dir.to_owned() }))
    }

    /// Keep `bytes`; returns the digest. A WebAssembly component is required (its header is
    /// checked here; the agent's executor says whether it can run it).
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactInfo, ArtifactError> {
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
        let digest = digest_of(bytes);
        if !self.dir.join(&digest).exists() {
            write_atomically(&self.dir, &digest, bytes)?;
        }
        Ok(ArtifactInfo { digest, size: bytes.len() as u64 })
    }

    /// The bytes of an artifact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        if !is_digest(digest) {
            return None;
        }
        std::fs::read(self.dir.join(digest)).ok()
    }

    /// Every artifact.
    pub fn list(&self) -> Vec<ArtifactInfo> {
        let mut out: Vec<ArtifactInfo> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                is_digest(&name).then(|| ArtifactInfo { digest: name, size: e.metadata().map_or(0, |m| m.len()) })
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    fn stat(&self, digest: &str) -> StatReply {
        match std::fs::metadata(self.dir.join(digest)) {
            Ok(m) if is_digest(digest) => StatReply { size: Some(m.len()), error: None },
            _ => StatReply { size: None, error: Some(format!("no artifact {digest}")) },
        }
    }

    fn chunk(&self, request: &[u8]) -> Vec<u8> {
        serde_json::from_slice::<ReadRequest>(request)
            .ok()
            .and_then(|r| Some((self.get(&r.digest)?, usize::try_from(r.offset).ok()?)))
            .map(|(bytes, offset)| bytes.get(offset..).map(|b| b[..b.len().min(CHUNK)].to_vec()).unwrap_or_default())
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

    #[test]
    fn refuses_what_is_not_a_component_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(matches!(store.put(b"hello"), Err(ArtifactError::NotAComponent(_))));
        assert!(
            matches!(store.put(b"\0asm\x01\x00\x00\x00"), Err(ArtifactError::NotAComponent(m)) if m.contains("core"))
        );
        assert!(store.list().is_empty());
        assert_eq!(store.get("../../etc/passwd"), None);
    }

    /// Over a real in-process bus: a fetch of several chunks arrives whole and checked, lands in
    /// the cache, and an unknown digest is a typed error.
    #[tokio::test]
    async fn agents_fetch_in_chunks_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&dir.path().join("master")).unwrap();
        let bytes = component(CHUNK * 2 + 17);
        let info = store.put(&bytes).unwrap();
        assert_eq!(store.list(), [info.clone()]);
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
