//! Artifacts: the Wasm components that Wasm tasks run, named by the sha256 of their bytes.
//!
//! Operators upload them to the master (`POST /v1/artifacts`); the master keeps them in
//! `<data_dir>/artifacts/<sha256>` and serves them to agents over the bus in chunks (NATS messages
//! are small): `shoal.ctl.artifact.stat` answers `{size}` (or `{error}`), then
//! `shoal.ctl.artifact.read` with `{digest, offset}` answers up to [`CHUNK`] raw bytes. An agent
//! checks the digest of what it assembled before it runs anything, and caches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_bus::SharedBus;

/// Bytes per chunk on the bus.
pub const CHUNK: usize = 512 * 1024;
/// Largest artifact.
pub const MAX_ARTIFACT: usize = 64 << 20;
/// Subject of size requests.
pub const STAT: &str = "shoal.ctl.artifact.stat";
/// Subject of chunk requests.
pub const READ: &str = "shoal.ctl.artifact.read";

/// The sha256 of `bytes`, lower-case hex.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An artifact as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// sha256 of the bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
struct StatReply {
    size: Option<u64>,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ReadRequest {
    digest: String,
    offset: u64,
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
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactInfo, String> {
        if bytes.len() > MAX_ARTIFACT {
            return Err(format!("{} bytes is over the limit of {MAX_ARTIFACT}", bytes.len()));
        }
        // `\0asm`, then version 0x0d and layer 1: a component, not a core module.
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err("not a WebAssembly binary (missing the `\\0asm` header)".into());
        }
        if bytes[6..8] != [1, 0] {
            return Err(
                "a core WebAssembly module, not a component: build for wasm32-wasip2 (or componentize it)".into()
            );
        }
        let digest = digest_of(bytes);
        let path = self.dir.join(&digest);
        if !path.exists() {
            let tmp = self.dir.join(format!(".{digest}.tmp"));
            std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        }
        Ok(ArtifactInfo { digest, size: bytes.len() as u64 })
    }

    /// The bytes of an artifact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        if !valid_digest(digest) {
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
                valid_digest(&name).then(|| ArtifactInfo { digest: name, size: e.metadata().map_or(0, |m| m.len()) })
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Answer agents' requests until the bus closes.
    pub async fn serve(self: Arc<Self>, bus: SharedBus) -> Result<(), shoal_bus::BusError> {
        let mut stats = bus.subscribe(STAT).await?;
        let mut reads = bus.subscribe(READ).await?;
        loop {
            tokio::select! {
                msg = stats.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let digest = String::from_utf8_lossy(&msg.payload).into_owned();
                    let reply = match std::fs::metadata(self.dir.join(&digest)) {
                        Ok(m) if valid_digest(&digest) => StatReply { size: Some(m.len()), error: None },
                        _ => StatReply { size: None, error: Some(format!("no artifact {digest}")) },
                    };
                    let body = serde_json::to_vec(&reply).expect("serialises");
                    let _ = msg.respond(bus.as_ref(), body.into()).await;
                }
                msg = reads.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let chunk = serde_json::from_slice::<ReadRequest>(&msg.payload)
                        .ok()
                        .and_then(|r| Some((self.get(&r.digest)?, r.offset as usize)))
                        .map(|(bytes, offset)| bytes.get(offset..).map(|b| b[..b.len().min(CHUNK)].to_vec()).unwrap_or_default())
                        .unwrap_or_default();
                    let _ = msg.respond(bus.as_ref(), chunk.into()).await;
                }
            }
        }
    }
}

/// Fetch an artifact from the master into `cache` (`<cache>/<digest>`), unless it is there;
/// returns its bytes, checked against the digest.
pub async fn fetch(bus: &SharedBus, digest: &str, cache: &Path) -> Result<Vec<u8>, String> {
    if !valid_digest(digest) {
        return Err(format!("`{digest}` is not a sha256 digest"));
    }
    let path = cache.join(digest);
    if let Ok(bytes) = std::fs::read(&path)
        && digest_of(&bytes) == digest
    {
        return Ok(bytes);
    }
    let timeout = Duration::from_secs(10);
    let stat = bus
        .request(STAT, digest.as_bytes().to_vec().into(), timeout)
        .await
        .map_err(|e| format!("asking the master for artifact {digest}: {e}"))?;
    let stat: StatReply = serde_json::from_slice(&stat.payload).map_err(|e| e.to_string())?;
    let size = stat.size.ok_or_else(|| stat.error.unwrap_or_else(|| format!("no artifact {digest}")))? as usize;
    if size > MAX_ARTIFACT {
        return Err(format!("artifact {digest} is {size} bytes, over the limit"));
    }
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        let req = serde_json::to_vec(&ReadRequest { digest: digest.to_owned(), offset: bytes.len() as u64 })
            .expect("serialises");
        let chunk =
            bus.request(READ, req.into(), timeout).await.map_err(|e| format!("reading artifact {digest}: {e}"))?;
        if chunk.payload.is_empty() {
            return Err(format!("artifact {digest} ended at {} of {size} bytes", bytes.len()));
        }
        bytes.extend_from_slice(&chunk.payload);
    }
    if digest_of(&bytes) != digest {
        return Err(format!("artifact {digest} arrived with other bytes (digest mismatch)"));
    }
    std::fs::create_dir_all(cache).map_err(|e| e.to_string())?;
    let tmp = cache.join(format!(".{digest}.tmp"));
    std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| e.to_string())?;
    Ok(bytes)
}
