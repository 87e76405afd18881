//! Where every key lives, and how big it may be: the one copy of the functions that place keys
//! on shards (and requests on endpoints, in the source-hash router) and of the key-value size
//! limits every layer enforces.
//!
//! Placement is part of the on-disk format: a key `ns/key` lives on shard
//! `jump_hash(key_hash(ns, key), shards)`. Changing either function moves keys between shards,
//! so neither may ever change, nor use std's randomly seeded hasher; the golden vectors in the
//! tests pin both. The crate has no dependencies, so guests compiled to `wasm32-wasip2` (the SDK)
//! use the very same code as the host.

/// Longest key (and key prefix) in bytes, everywhere a key-value store is offered: the HTTP API,
/// plugins' `keyvalue` import, Wasm tasks' `wasi:keyvalue`, the store's wire format. Keys are
/// copied into every index entry and event subject, so they stay small.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value in bytes. A value travels in one bus message (NATS's default payload limit is
/// 1 MiB) and one RocksDB write, and is held whole in memory by every reader.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes` (Fowler–Noll–Vo, variant 1a): stable across processes, machines and
/// versions of Rust.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV_OFFSET, bytes)
}

/// Continue an FNV-1a 64 hash with more bytes: `fnv1a64_extend(fnv1a64(a), b) == fnv1a64(a ++ b)`.
fn fnv1a64_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The stable hash of a key: FNV-1a 64 of the bytes `namespace`, `/`, `key` (without building
/// that string).
pub fn key_hash(namespace: &str, key: &str) -> u64 {
    let hash = fnv1a64_extend(FNV_OFFSET, namespace.as_bytes());
    fnv1a64_extend(fnv1a64_extend(hash, b"/"), key.as_bytes())
}

/// Jump consistent hash (Lamping & Veach, 2014, "A Fast, Minimal Memory, Consistent Hash
/// Algorithm"): maps `key` to a bucket in `0..buckets` so that growing the count from n to n+1
/// moves only the keys that land in the new bucket, about 1/(n+1) of them. Returns 0 when
/// `buckets` is 0.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    if buckets == 0 {
        return 0;
    }
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard of `namespace/key` among `shards` shards.
pub fn shard_of(namespace: &str, key: &str, shards: u32) -> u32 {
    jump_hash(key_hash(namespace, key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COUNTS: [u32; 10] = [1, 2, 3, 4, 5, 8, 10, 16, 100, 1000];

    /// Golden vectors: a fixed key lands on a fixed shard for each count, today and forever.
    /// Computed independently of this code (a Python transcription of the published
    /// algorithms); if this test fails, keys on disk are in the wrong shards.
    #[test]
    fn golden_placement() {
        let golden: [(&str, &str, u64, [u32; 10]); 5] = [
            ("app", "user-1", 0x21ee_c6a6_d774_1fa0, [0, 0, 0, 0, 0, 6, 6, 6, 43, 43]),
            ("app", "user-2", 0x21ee_c9a6_d774_24b9, [0, 1, 1, 3, 3, 6, 9, 15, 31, 338]),
            ("orders", "42", 0xa623_99f6_4f69_61df, [0, 0, 0, 0, 0, 6, 6, 14, 50, 792]),
            ("_plugin-router-canary", "x", 0xb9f9_cd8f_cf6e_57f3, [0, 0, 0, 0, 0, 6, 6, 6, 26, 26]),
            ("ns", "", 0x20fb_fd19_253e_4d0b, [0, 1, 1, 1, 4, 4, 8, 8, 18, 755]),
        ];
        for (ns, key, hash, shards) in golden {
            assert_eq!(key_hash(ns, key), hash, "hash of {ns}/{key}");
            let got: Vec<u32> = COUNTS.iter().map(|&n| shard_of(ns, key, n)).collect();
            assert_eq!(got, shards, "shards of {ns}/{key} for {COUNTS:?}");
        }
        let raw: [(u64, [u32; 10]); 4] = [
            (1, [0, 0, 0, 0, 0, 6, 6, 6, 55, 549]),
            (42, [0, 1, 2, 2, 2, 2, 2, 2, 43, 571]),
            (0xdead_beef, [0, 1, 2, 3, 3, 5, 5, 5, 87, 285]),
            (u64::MAX, [0, 1, 2, 2, 2, 7, 9, 10, 92, 313]),
        ];
        for (key, buckets) in raw {
            let got: Vec<u32> = COUNTS.iter().map(|&n| jump_hash(key, n)).collect();
            assert_eq!(got, buckets, "jump_hash({key:#x}, {COUNTS:?})");
        }
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_hash_edges() {
        assert_eq!(jump_hash(42, 0), 0);
        assert_eq!(jump_hash(42, 1), 0);
    }

    /// 1,000,000 keys over 10 shards: max/mean ≤ 1.02; growing to 11 shards moves within 1 % of
    /// 1/11 of the keys, all of them to the new shard.
    #[test]
    fn distribution_and_movement_on_a_million_keys() {
        const KEYS: u32 = 1_000_000;
        let mut load = [0u32; 10];
        let mut moved = 0u32;
        let mut key = String::new();
        for i in 0..KEYS {
            key.clear();
            std::fmt::Write::write_fmt(&mut key, format_args!("user-{i}")).expect("write to a string");
            let h = key_hash("app", &key);
            let (before, after) = (jump_hash(h, 10), jump_hash(h, 11));
            load[before as usize] += 1;
            if before != after {
                assert_eq!(after, 10, "a key moved between old shards");
                moved += 1;
            }
        }
        let mean = f64::from(KEYS) / 10.0;
        let max = f64::from(*load.iter().max().expect("ten shards"));
        assert!(max / mean <= 1.02, "max/mean = {} ({load:?})", max / mean);
        let expected = f64::from(KEYS) / 11.0;
        let off = (f64::from(moved) - expected).abs() / expected;
        assert!(off <= 0.01, "moved {moved}, expected {expected:.0} (off by {:.2} %)", off * 100.0);
    }

    proptest! {
        /// `key_hash` is FNV-1a of `ns/key`, whatever the bytes.
        #[test]
        fn key_hash_is_fnv_of_the_joined_key(ns in ".{0,40}", key in ".{0,80}") {
            prop_assert_eq!(key_hash(&ns, &key), fnv1a64(format!("{ns}/{key}").as_bytes()));
        }

        /// Always in range; growing by one bucket either keeps a key or moves it to the new one.
        #[test]
        fn jump_hash_is_in_range_and_monotone(key in any::<u64>(), n in 1u32..5000) {
            let before = jump_hash(key, n);
            prop_assert!(before < n);
            let after = jump_hash(key, n + 1);
            prop_assert!(after == before || after == n, "{} -> {} at {}", before, after, n);
        }
    }
}
