//! Resources: what an agent has, what is free, what a task asks for — the WIT `resources` record
//! as the host handles it, with the arithmetic the master needs (fits, add, subtract) and the
//! Mesos-style text form operators type (`cpus:4;mem:8192;disk:20000;ports:[31000-32000];gpus:1`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub begin: u16,
    /// Last port (inclusive).
    pub end: u16,
}

/// A bundle of resources. Units: CPU cores, MiB of memory and disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (fractional).
    #[serde(default)]
    pub cpus: f64,
    /// Memory, MiB.
    #[serde(default)]
    pub mem_mb: f64,
    /// Disk, MiB.
    #[serde(default)]
    pub disk_mb: f64,
    /// Port ranges, sorted and disjoint once normalised.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Custom scalars, e.g. `gpus`.
    #[serde(default)]
    pub scalars: BTreeMap<String, f64>,
}

/// Why resources were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid resources: {0}")]
pub struct ResourceError(pub String);

/// Tolerance of floating-point comparisons (a millionth of a core or MiB).
const EPSILON: f64 = 1e-6;

impl Resources {
    /// Refuse negative, non-finite or absurd quantities and malformed port ranges; sort and merge
    /// the ranges.
    pub fn validate(mut self) -> Result<Self, ResourceError> {
        let bad = |m: String| Err(ResourceError(m));
        for (name, v) in [("cpus", self.cpus), ("mem_mb", self.mem_mb), ("disk_mb", self.disk_mb)]
            .into_iter()
            .chain(self.scalars.iter().map(|(k, v)| (k.as_str(), *v)))
        {
            if !v.is_finite() || !(0.0..=1e12).contains(&v) {
                return bad(format!("{name} = {v} (must be a finite number within 0..=1e12)"));
            }
        }
        for name in self.scalars.keys() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok || ["cpus", "mem", "mem_mb", "disk", "disk_mb", "ports"].contains(&name.as_str()) {
                return bad(format!("scalar name `{name}` (lower-case letters, digits, `_`, `-`; not a built-in)"));
            }
        }
        for r in &self.ports {
            if r.begin == 0 || r.end < r.begin {
                return bad(format!("port range {}-{}", r.begin, r.end));
            }
        }
        self.ports = merge(std::mem::take(&mut self.ports));
        Ok(self)
    }

    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        self.cpus <= EPSILON
            && self.mem_mb <= EPSILON
            && self.disk_mb <= EPSILON
            && self.ports.is_empty()
            && self.scalars.values().all(|v| *v <= EPSILON)
    }

    /// Number of ports in the ranges.
    pub fn port_count(&self) -> u32 {
        self.ports.iter().map(|r| u32::from(r.end - r.begin) + 1).sum()
    }

    /// Whether `self` fits in `available`: every quantity and every port.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpus <= available.cpus + EPSILON
            && self.mem_mb <= available.mem_mb + EPSILON
            && self.disk_mb <= available.disk_mb + EPSILON
            && self.scalars.iter().all(|(k, v)| *v <= available.scalars.get(k).copied().unwrap_or(0.0) + EPSILON)
            && self.ports.iter().all(|r| available.ports.iter().any(|a| a.begin <= r.begin && r.end <= a.end))
    }

    /// `self - other`; `None` if `other` does not fit in `self`.
    pub fn minus(&self, other: &Resources) -> Option<Resources> {
        if !other.fits_in(self) {
            return None;
        }
        let mut ports = Vec::new();
        for a in &self.ports {
            let mut pieces = vec![*a];
            for r in &other.ports {
                pieces = pieces
                    .into_iter()
                    .flat_map(|p| {
                        if r.end < p.begin || r.begin > p.end {
                            return vec![p];
                        }
                        let mut out = Vec::new();
                        if r.begin > p.begin {
                            out.push(PortRange { begin: p.begin, end: r.begin - 1 });
                        }
                        if r.end < p.end {
                            out.push(PortRange { begin: r.end + 1, end: p.end });
                        }
                        out
                    })
                    .collect();
            }
            ports.extend(pieces);
        }
        let mut scalars = self.scalars.clone();
        for (k, v) in &other.scalars {
            let left = scalars.entry(k.clone()).or_insert(0.0);
            *left = (*left - v).max(0.0);
        }
        Some(Resources {
            cpus: (self.cpus - other.cpus).max(0.0),
            mem_mb: (self.mem_mb - other.mem_mb).max(0.0),
            disk_mb: (self.disk_mb - other.disk_mb).max(0.0),
            ports: merge(ports),
            scalars,
        })
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut scalars = self.scalars.clone();
        for (k, v) in &other.scalars {
            *scalars.entry(k.clone()).or_insert(0.0) += v;
        }
        let mut ports = self.ports.clone();
        ports.extend(other.ports.iter().copied());
        Resources {
            cpus: self.cpus + other.cpus,
            mem_mb: self.mem_mb + other.mem_mb,
            disk_mb: self.disk_mb + other.disk_mb,
            ports: merge(ports),
            scalars,
        }
    }

    /// Parse the text form: `name:value` pairs separated by `;`, where `cpus`, `mem` and `disk`
    /// are the built-ins, `ports:[31000-32000,33000-33100]` the port ranges and any other name a
    /// scalar.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let mut r = Resources::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) =
                part.split_once(':').ok_or_else(|| ResourceError(format!("`{part}` is not name:value")))?;
            let (name, value) = (name.trim(), value.trim());
            if name == "ports" {
                let inner = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .ok_or_else(|| ResourceError(format!("ports `{value}` is not [begin-end,…]")))?;
                for range in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (b, e) = range.split_once('-').unwrap_or((range, range));
                    let parse =
                        |s: &str| s.trim().parse::<u16>().map_err(|_| ResourceError(format!("port range `{range}`")));
                    r.ports.push(PortRange { begin: parse(b)?, end: parse(e)? });
                }
                continue;
            }
            let v: f64 = value.parse().map_err(|_| ResourceError(format!("{name} = `{value}` is not a number")))?;
            match name {
                "cpus" => r.cpus = v,
                "mem" => r.mem_mb = v,
                "disk" => r.disk_mb = v,
                _ => {
                    r.scalars.insert(name.to_owned(), v);
                }
            }
        }
        r.validate()
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus:{};mem:{};disk:{}", self.cpus, self.mem_mb, self.disk_mb)?;
        if !self.ports.is_empty() {
            let ranges: Vec<String> = self.ports.iter().map(|r| format!("{}-{}", r.begin, r.end)).collect();
            write!(f, ";ports:[{}]", ranges.join(","))?;
        }
        for (k, v) in &self.scalars {
            write!(f, ";{k}:{v}")?;
        }
        Ok(())
    }
}

/// Sort port ranges and merge overlapping or adjacent ones.
fn merge(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.begin) <= u32::from(last.end) + 1 => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let r = Resources::parse("cpus:4; mem:8192;disk:1000;ports:[31000-31999,32000-32010];gpus:2").unwrap();
        assert_eq!((r.cpus, r.mem_mb, r.disk_mb), (4.0, 8192.0, 1000.0));
        assert_eq!(r.ports, vec![PortRange { begin: 31000, end: 32010 }], "adjacent ranges merge");
        assert_eq!(r.scalars["gpus"], 2.0);
        assert_eq!(r.to_string(), "cpus:4;mem:8192;disk:1000;ports:[31000-32010];gpus:2");
        assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn bad_resources_are_refused() {
        for text in [
            "cpus:-1",
            "mem:NaN",
            "cpus:inf",
            "ports:[10-5]",
            "ports:[0-5]",
            "ports:31000",
            "cpus",
            "GPUs:1",
            "cpus:four",
        ] {
            assert!(Resources::parse(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn arithmetic() {
        let total = Resources::parse("cpus:4;mem:1024;ports:[100-199];gpus:1").unwrap();
        let task = Resources::parse("cpus:1.5;mem:512;ports:[150-150];gpus:1").unwrap();
        assert!(task.fits_in(&total));
        let free = total.minus(&task).unwrap();
        assert_eq!(free.to_string(), "cpus:2.5;mem:512;disk:0;ports:[100-149,151-199];gpus:0");
        assert_eq!(free.port_count(), 99);
        assert!(!task.fits_in(&free), "port 150 and the gpu are taken");
        assert!(free.minus(&task).is_none());
        assert_eq!(free.plus(&task), total);
        let too_big = Resources::parse("cpus:5").unwrap();
        assert!(!too_big.fits_in(&total));
    }
}

/// Property tests of the text form, which operators and agents' flags write.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// A quantity as validation allows it: finite, within 0..=1e12, often a round number.
    fn quantity() -> impl Strategy<Value = f64> {
        prop_oneof![(0u32..100_000).prop_map(f64::from), 0.0..=1e12, Just(0.0), Just(1e12), Just(1e-9)]
    }

    /// Valid resources, normalised (their port ranges sorted and merged).
    fn resources() -> impl Strategy<Value = Resources> {
        let range =
            (1u16..=u16::MAX, 0u16..200).prop_map(|(begin, len)| PortRange { begin, end: begin.saturating_add(len) });
        let scalars = prop::collection::btree_map("[a-z0-9_-]{1,12}", quantity(), 0..4);
        (quantity(), quantity(), quantity(), prop::collection::vec(range, 0..5), scalars).prop_filter_map(
            "a built-in scalar name",
            |(cpus, mem_mb, disk_mb, ports, scalars)| {
                Resources { cpus, mem_mb, disk_mb, ports, scalars }.validate().ok()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Printing then parsing gives the same resources back.
        #[test]
        fn display_then_parse_is_the_identity(r in resources()) {
            let text = r.to_string();
            prop_assert_eq!(Resources::parse(&text), Ok(r), "{}", text);
        }

        /// Any text parses or is refused with an error, without panicking; what parses is valid
        /// and prints to a text that parses to the same.
        #[test]
        fn any_text_parses_or_is_refused(text in prop_oneof![
            any::<String>(),
            "[cpusmemdiskportsgx_:;\\[\\]0-9,. eE+-]{0,48}",
            "(cpus|mem|disk|ports|gpus):(\\[[0-9, -]{0,12}\\]|[0-9.eE+-]{0,8}|inf|NaN)(;(cpus|mem|ports|x):[0-9\\[\\]-]{0,8}){0,3}",
        ]) {
            if let Ok(r) = Resources::parse(&text) {
                prop_assert_eq!(r.clone().validate(), Ok(r.clone()), "parsed but invalid: {}", text);
                prop_assert_eq!(Resources::parse(&r.to_string()), Ok(r), "{}", text);
            }
        }
    }
}
