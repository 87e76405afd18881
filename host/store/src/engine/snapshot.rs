//! Snapshots of a replicated shard: every RocksDB key and value of one copy as of a log sequence,
//! so that the log's entries up to it can be deleted and a copy that missed them starts from
//! the snapshot instead ([`crate::replication`] stores and picks them).
//!
//! A snapshot is read from a RocksDB snapshot taken under the shard's lock, so it holds exactly
//! the entries applied up to the sequence it names (also the version counter, the applied
//! sequence and a freeze of the shard's move state: every replica holds the same bytes at one
//! sequence, so any member's snapshot is every member's). Format: `SHOALSNAP1`, the sequence
//! (8 bytes, big-endian), then each key and value as a 4-byte big-endian length and its bytes.

use super::replica::APPLIED_KEY;
use super::*;

const MAGIC: &[u8] = b"SHOALSNAP1";

/// How many keys a restore writes per RocksDB batch.
const RESTORE_BATCH: usize = 1000;

fn corrupt(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("a shard snapshot: {reason}"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < n {
        return Err(corrupt("it ends early"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_len(bytes: &mut &[u8]) -> Result<usize, StoreError> {
    let raw: [u8; 4] = take(bytes, 4)?.try_into().map_err(|_| corrupt("a length"))?;
    Ok(u32::from_be_bytes(raw) as usize)
}

impl Store {
    /// A snapshot of replicated shard `n` as this copy holds it: the log sequence it is at, and
    /// its bytes.
    pub fn snapshot_shard(&self, n: u32) -> Result<(u64, Vec<u8>), StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let guard = shard.lock();
        let snapshot = shard.db.snapshot();
        drop(guard);
        let applied = match snapshot.get(APPLIED_KEY)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| corrupt("the sequence"))?),
            None => 0,
        };
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&applied.to_be_bytes());
        for item in snapshot.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            for part in [&k, &v] {
                let len = u32::try_from(part.len()).map_err(|_| corrupt("a key or value over 4 GiB"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        Ok((applied, out))
    }

    /// The log sequence of snapshot `bytes` (checking only its header).
    pub fn snapshot_sequence(bytes: &[u8]) -> Result<u64, StoreError> {
        let mut rest = bytes;
        if take(&mut rest, MAGIC.len())? != MAGIC {
            return Err(corrupt("not a snapshot"));
        }
        Ok(u64::from_be_bytes(take(&mut rest, 8)?.try_into().map_err(|_| corrupt("the sequence"))?))
    }

    /// Replace what this node holds of shard `n` with snapshot `bytes`; returns the log sequence
    /// the copy is at now. Only for a copy that is not replicated yet (not served, not
    /// following): [`Store::replicate_shard`] comes after.
    pub fn restore_shard(&self, n: u32, bytes: &[u8]) -> Result<u64, StoreError> {
        let applied = Self::snapshot_sequence(bytes)?;
        if self.shard(n).is_some_and(|s| s.replicated()) {
            return Err(StoreError::Config(format!("shard {n} is replicated here already; not restoring over it")));
        }
        // Decode it all before anything on disk changes: a bad snapshot changes nothing.
        let mut rest = &bytes[MAGIC.len() + 8..];
        let mut pairs = Vec::new();
        while !rest.is_empty() {
            let k = take_len(&mut rest).and_then(|len| take(&mut rest, len))?;
            let v = take_len(&mut rest).and_then(|len| take(&mut rest, len))?;
            pairs.push((k, v));
        }
        self.create_shard(n)?;
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let mut guard = shard.lock();
        for chunk in pairs.chunks(RESTORE_BATCH) {
            let mut batch = WriteBatch::default();
            for (k, v) in chunk {
                batch.put(k, v);
            }
            shard.db.write_opt(batch, &self.write_options)?;
        }
        shard.db.flush_wal(true)?;
        *guard = read_seq(&shard.db, n)?;
        drop(guard);
        tracing::info!(shard = n, applied, keys = pairs.len(), "restored the shard from a snapshot");
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_restores_the_same_bytes_and_garbage_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_node(dir.path(), "a", Durability::Wal).expect("open");
        store.create_shard(0).expect("shard");
        store.set_map(ShardMap::local(1, "a"));
        for i in 0..50 {
            store.put("app", &format!("k{i}"), format!("v{i}").as_bytes(), PutOptions::default()).expect("put");
        }
        let (applied, bytes) = store.snapshot_shard(0).expect("snapshot");
        assert_eq!(applied, 0, "an unreplicated shard applied no log");
        assert_eq!(Store::snapshot_sequence(&bytes).expect("header"), 0);

        let other = tempfile::tempdir().expect("tempdir");
        let copy = Store::open_node(other.path(), "a", Durability::Wal).expect("open");
        copy.set_map(ShardMap::local(1, "a"));
        copy.restore_shard(0, &bytes).expect("restore");
        for i in 0..50 {
            let (a, b) =
                (store.get("app", &format!("k{i}")).expect("get"), copy.get("app", &format!("k{i}")).expect("get"));
            assert_eq!(a, b);
        }
        let next = copy.put("app", "new", b"x", PutOptions::default()).expect("put");
        assert!(next > store.get("app", "k49").expect("get").expect("there").version, "the counter came along");

        assert!(copy.restore_shard(0, &bytes[..bytes.len() - 3]).is_err(), "a cut snapshot is refused");
        assert!(copy.get("app", "new").expect("get").is_some(), "and changed nothing");
        assert!(copy.restore_shard(0, b"garbage").is_err());
    }
}
