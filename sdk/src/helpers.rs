//! Ergonomic helpers on the generated WIT types: resource arithmetic and hashing that every
//! policy needs and nobody should write twice.

use crate::{Resources, Scalar};

impl Resources {
    /// No resources at all.
    pub fn empty() -> Self {
        Resources { cpus: 0.0, mem_mb: 0.0, disk_mb: 0.0, ports: Vec::new(), scalars: Vec::new() }
    }

    /// Only cpus and memory.
    pub fn cpus_mem(cpus: f64, mem_mb: f64) -> Self {
        Resources { cpus, mem_mb, ..Self::empty() }
    }

    /// Quantity of the custom scalar `name` (0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// Number of ports in all ranges.
    pub fn port_count(&self) -> u64 {
        self.ports.iter().map(|r| u64::from(r.end.saturating_sub(r.begin)) + 1).sum()
    }

    /// Whether nothing is left worth offering: no cpus and no memory.
    pub fn is_empty(&self) -> bool {
        self.cpus <= 0.0 && self.mem_mb <= 0.0 && self.disk_mb <= 0.0 && self.ports.is_empty()
    }

    /// Adds `other` into `self` (ports are appended, scalars summed by name).
    pub fn add(&mut self, other: &Resources) {
        self.cpus += other.cpus;
        self.mem_mb += other.mem_mb;
        self.disk_mb += other.disk_mb;
        self.ports.extend(other.ports.iter().copied());
        for s in &other.scalars {
            match self.scalars.iter_mut().find(|m| m.name == s.name) {
                Some(m) => m.value += s.value,
                None => self.scalars.push(Scalar { name: s.name.clone(), value: s.value }),
            }
        }
    }

    /// Whether `self` fits inside `capacity`, scalar by scalar (ports by count).
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        const EPS: f64 = 1e-9;
        self.cpus <= capacity.cpus + EPS
            && self.mem_mb <= capacity.mem_mb + EPS
            && self.disk_mb <= capacity.disk_mb + EPS
            && self.port_count() <= capacity.port_count()
            && self.scalars.iter().all(|s| s.value <= capacity.scalar(&s.name) + EPS)
    }

    /// The largest share this bundle holds of any resource of `total` (the DRF "dominant share").
    /// Resources absent from `total` are ignored.
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        let share = |used: f64, all: f64| if all > 0.0 { used / all } else { 0.0 };
        let mut max =
            share(self.cpus, total.cpus).max(share(self.mem_mb, total.mem_mb)).max(share(self.disk_mb, total.disk_mb));
        for s in &self.scalars {
            max = max.max(share(s.value, total.scalar(&s.name)));
        }
        max
    }
}

/// Jump consistent hash (Lamping & Veach, 2014): maps `key` to a bucket in `0..buckets` so that
/// growing the bucket count from n to n+1 moves only about 1/(n+1) of the keys. Returns 0 when
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_stable_and_moves_few_keys() {
        let keys: Vec<u64> = (0..10_000u64).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let moved = keys.iter().filter(|&&k| jump_hash(k, 10) != jump_hash(k, 11)).count();
        // About 1/11 of the keys move; all that move go to the new bucket.
        assert!((800..1000).contains(&moved), "moved {moved}");
        assert!(keys.iter().all(|&k| jump_hash(k, 10) == jump_hash(k, 11) || jump_hash(k, 11) == 10));
        assert_eq!(jump_hash(42, 0), 0);
        assert_eq!(jump_hash(42, 1), 0);
    }

    #[test]
    fn resources_fit_and_share() {
        let total = Resources::cpus_mem(10.0, 1000.0);
        let used = Resources::cpus_mem(1.0, 500.0);
        assert!(used.fits_in(&total));
        assert!(!total.fits_in(&used));
        assert_eq!(used.dominant_share(&total), 0.5);
    }
}
