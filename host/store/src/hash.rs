//! Key → shard: a fixed 64-bit hash of `namespace/key`, then jump consistent hash over the shard
//! count. Both functions are part of the on-disk format: changing either moves keys between
//! shards, so they must never change (and never use std's randomly seeded hasher).

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes` (Fowler–Noll–Vo, variant 1a): stable across processes, machines and
/// versions of Rust.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The stable hash of a key: FNV-1a 64 of the bytes `namespace`, `/`, `key`.
pub fn key_hash(namespace: &str, key: &str) -> u64 {
    let mut hash = FNV_OFFSET;
    for &b in namespace.as_bytes().iter().chain(b"/").chain(key.as_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
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

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(key_hash("foo", "bar"), fnv1a64(b"foo/bar"));
    }

    #[test]
    fn jump_hash_edges() {
        assert_eq!(jump_hash(42, 0), 0);
        assert_eq!(jump_hash(42, 1), 0);
        assert!((0..1000u64).all(|k| jump_hash(k, 7) < 7));
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
}
