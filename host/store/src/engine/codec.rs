//! How entries are laid out in a shard's RocksDB (key `ns/key`, value `version | expires_at |
//! value`), and the checks of operations and listings before they reach it.

use super::*;

/// Bytes of an entry's header: version and expiry.
pub(super) const HEADER_LEN: usize = 16;

pub(super) fn db_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

/// Namespace and key of a RocksDB key; `None` for the counter (or anything that is not `ns/key`).
pub(super) fn split_db_key(k: &[u8]) -> Option<(&str, &str)> {
    let slash = k.iter().position(|&b| b == b'/')?;
    let ns = std::str::from_utf8(&k[..slash]).ok()?;
    let key = std::str::from_utf8(&k[slash + 1..]).ok()?;
    (!ns.is_empty()).then_some((ns, key))
}

pub(super) fn encode(version: u64, expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + value.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// Version and expiry (0 = never) of a stored value.
pub(super) fn header(stored: &[u8]) -> Result<(u64, u64), StoreError> {
    let version = stored.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let expires = stored.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    match (version, expires) {
        (Some(v), Some(e)) => Ok((v, e)),
        _ => Err(StoreError::Corrupt(format!("entry of {} bytes has no header", stored.len()))),
    }
}

pub(super) fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

pub(super) fn decode(key: String, stored: &[u8], now: u64) -> Result<Option<Entry>, StoreError> {
    let (version, expires_at) = header(stored)?;
    if !live(expires_at, now) {
        return Ok(None);
    }
    let expires_at = (expires_at != 0).then_some(expires_at);
    Ok(Some(Entry { key, value: stored[HEADER_LEN..].to_vec(), version, expires_at }))
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Check the operations of a batch: count, keys, sizes, ttls, no key twice.
pub(crate) fn validate_ops(namespace: &str, ops: &[Op]) -> Result<(), StoreError> {
    validate_namespace(namespace)?;
    if ops.is_empty() {
        return Err(StoreError::InvalidBatch("no operations".into()));
    }
    if ops.len() > MAX_BATCH_OPS {
        return Err(StoreError::BatchTooLarge { ops: ops.len(), limit: MAX_BATCH_OPS });
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        validate_key(op.key())?;
        if let Op::Put { value, options, .. } = op {
            if value.len() > MAX_VALUE_LEN {
                return Err(StoreError::ValueTooLarge { size: value.len(), limit: MAX_VALUE_LEN });
            }
            validate_ttl(options.ttl)?;
        }
        if !seen.insert(op.key()) {
            return Err(StoreError::InvalidBatch(format!("key `{}` appears twice", op.key())));
        }
    }
    Ok(())
}

/// Check the arguments of a listing.
pub(crate) fn validate_listing(namespace: &str, prefix: &str, limit: usize) -> Result<(), StoreError> {
    validate_namespace(namespace)?;
    if prefix.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey(format!("prefix of {} bytes is over {MAX_KEY_LEN}", prefix.len())));
    }
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(StoreError::InvalidListing(format!("limit must be 1 to {MAX_LIST_LIMIT}, not {limit}")));
    }
    Ok(())
}

/// Merge per-shard listings (each in key order, each at most `limit + 1` long) into one page.
/// A key listed twice (two nodes that disagreed about the map for a moment, both holding the
/// same moved entry) is kept once, at its highest version.
pub(crate) fn merge_page(mut entries: Vec<Entry>, limit: usize) -> Page {
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
    entries.dedup_by(|later, earlier| later.key == earlier.key);
    let cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| crate::cursor_after(&e.key))
    } else {
        None
    };
    Page { entries, cursor }
}

/// Decode a listing cursor (the hex of the last key of the previous page).
pub(crate) fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| StoreError::InvalidListing("malformed cursor: pass the one the previous page returned".into()))
}

/// Property tests of the stored layout: a shard's files (or a copy of them) are read back by it.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A stored entry decodes to what was stored while it lives, and to nothing after.
        #[test]
        fn stored_entries_decode_to_what_was_stored(
            key in ".{0,12}",
            version in any::<u64>(),
            expires_at in any::<u64>(),
            value in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            let stored = encode(version, expires_at, &value);
            prop_assert_eq!(header(&stored).ok(), Some((version, expires_at)));
            let decoded = decode(key.clone(), &stored, now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = live(expires_at, now)
                .then(|| Entry { key, value, version, expires_at: (expires_at != 0).then_some(expires_at) });
            prop_assert_eq!(decoded, expected);
        }

        /// Any bytes decode to an entry or are refused as corrupt, without panicking; so do
        /// RocksDB keys and listing cursors (a client's).
        #[test]
        fn any_bytes_decode_or_are_refused(stored in prop::collection::vec(any::<u8>(), 0..40), now in any::<u64>(), cursor in ".{0,16}") {
            match decode("k".into(), &stored, now) {
                Ok(Some(entry)) => prop_assert_eq!(encode(entry.version, entry.expires_at.unwrap_or(0), &entry.value), stored.clone()),
                Ok(None) => prop_assert!(stored.len() >= HEADER_LEN),
                Err(err) => prop_assert!(matches!(err, StoreError::Corrupt(_)) && stored.len() < HEADER_LEN),
            }
            if let Some((ns, key)) = split_db_key(&stored) {
                prop_assert_eq!(&db_key(ns, key), &stored);
            }
            if let Ok(key) = decode_cursor(&cursor) {
                prop_assert_eq!(crate::cursor_after(&key), cursor.to_ascii_lowercase());
            }
        }

        /// Every key that starts with a prefix sorts below the prefix's end.
        #[test]
        fn prefix_end_bounds_the_prefix(prefix in prop::collection::vec(any::<u8>(), 0..8), rest in prop::collection::vec(any::<u8>(), 0..8)) {
            let key = [&prefix[..], &rest[..]].concat();
            match prefix_end(&prefix) {
                Some(end) => prop_assert!(key < end && prefix < end),
                None => prop_assert!(prefix.iter().all(|b| *b == 0xff)),
            }
        }
    }
}
