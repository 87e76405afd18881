//! Offer bookkeeping during one `resource-offers` answer: what is left of each offer, which exact
//! ports a task takes, the operations that answer the offers, and a human reason when nothing fits.

use std::collections::BTreeMap;

use shoal_sdk::scheduling::{Decline, Launch, OfferInfo, Operation, TaskSpec};
use shoal_sdk::{PortRange, Resources};

/// Refuse-seconds when some app or job is still waiting for capacity.
pub const REFUSE_WAITING: f64 = 1.0;
/// Refuse-seconds when nothing is wanted.
pub const REFUSE_IDLE: f64 = 5.0;

/// Floating-point slack when comparing resources (as the host does).
const EPS: f64 = 1e-9;

/// What one task needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Demand {
    /// CPU cores.
    pub cpus: f64,
    /// Memory, MiB.
    pub mem: f64,
    /// Disk, MiB.
    pub disk: f64,
    /// Number of ports.
    pub ports: u32,
}

/// Which resource an offer lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lack {
    /// Not enough cpus.
    Cpus,
    /// Not enough memory.
    Mem,
    /// Not enough disk.
    Disk,
    /// Not enough ports.
    Ports,
}

/// One offer and what is still free in it during this answer.
#[derive(Debug)]
pub struct Slot {
    /// The offer.
    pub offer: OfferInfo,
    /// Free cpus.
    pub cpus: f64,
    /// Free memory, MiB.
    pub mem: f64,
    /// Free disk, MiB.
    pub disk: f64,
    /// Free ports: sorted, merged inclusive ranges; ranges before `range_index` are used up.
    ranges: Vec<(u32, u32)>,
    range_index: usize,
    /// Number of free ports.
    pub free_ports: u64,
    /// Tasks placed on this offer so far.
    pub tasks: Vec<TaskSpec>,
}

impl Slot {
    /// Everything of `offer` is free.
    pub fn new(offer: OfferInfo) -> Self {
        let mut ranges: Vec<(u32, u32)> = offer
            .resources
            .ports
            .iter()
            .filter(|r| r.end >= r.begin)
            .map(|r| (u32::from(r.begin), u32::from(r.end)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (b, e) in ranges {
            match merged.last_mut() {
                Some(last) if b <= last.1 + 1 => last.1 = last.1.max(e),
                _ => merged.push((b, e)),
            }
        }
        let free_ports = merged.iter().map(|(b, e)| u64::from(e - b + 1)).sum();
        Slot {
            cpus: offer.resources.cpus,
            mem: offer.resources.mem_mb,
            disk: offer.resources.disk_mb,
            offer,
            ranges: merged,
            range_index: 0,
            free_ports,
            tasks: Vec::new(),
        }
    }

    /// The first resource this offer lacks for `d`, if any.
    pub fn lack(&self, d: &Demand) -> Option<Lack> {
        if d.cpus > self.cpus + EPS {
            Some(Lack::Cpus)
        } else if d.mem > self.mem + EPS {
            Some(Lack::Mem)
        } else if d.disk > self.disk + EPS {
            Some(Lack::Disk)
        } else if u64::from(d.ports) > self.free_ports {
            Some(Lack::Ports)
        } else {
            None
        }
    }

    /// Takes `d` out of the offer (the caller checked [`Slot::lack`]) and returns the task's
    /// resources, ports as exact single-port ranges (the lowest free ones).
    pub fn take(&mut self, d: &Demand) -> Resources {
        self.cpus -= d.cpus;
        self.mem -= d.mem;
        self.disk -= d.disk;
        let mut ports = Vec::with_capacity(d.ports as usize);
        while ports.len() < d.ports as usize && self.range_index < self.ranges.len() {
            let r = &mut self.ranges[self.range_index];
            if r.0 > r.1 {
                self.range_index += 1;
                continue;
            }
            let p = r.0 as u16;
            ports.push(PortRange { begin: p, end: p });
            r.0 += 1;
            self.free_ports -= 1;
        }
        Resources { cpus: d.cpus, mem_mb: d.mem, disk_mb: d.disk, ports, scalars: Vec::new() }
    }
}

/// Answers every offer: a launch for each offer that received tasks, a decline for the others.
pub fn answer(slots: Vec<Slot>, refuse_seconds: f64) -> Vec<Operation> {
    slots
        .into_iter()
        .map(|s| {
            if s.tasks.is_empty() {
                Operation::Decline(Decline { offer_id: s.offer.id, refuse_seconds })
            } else {
                Operation::Launch(Launch { offer_id: s.offer.id, tasks: s.tasks })
            }
        })
        .collect()
}

/// Why no offer could take a task: counted per reason over the offers.
#[derive(Debug, Default)]
pub struct Diagnosis {
    offers: usize,
    cpus: (usize, f64),
    mem: (usize, f64),
    disk: (usize, f64),
    ports: (usize, u64),
    constraints: BTreeMap<String, usize>,
    other: BTreeMap<String, usize>,
}

/// A number without a useless fraction: `4`, `0.25`.
pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{:.3}", x).trim_end_matches('0').to_string()
    }
}

impl Diagnosis {
    /// Records an offer that lacks `lack`.
    pub fn lack(&mut self, lack: Lack, slot: &Slot) {
        self.offers += 1;
        match lack {
            Lack::Cpus => self.cpus = (self.cpus.0 + 1, self.cpus.1.max(slot.cpus)),
            Lack::Mem => self.mem = (self.mem.0 + 1, self.mem.1.max(slot.mem)),
            Lack::Disk => self.disk = (self.disk.0 + 1, self.disk.1.max(slot.disk)),
            Lack::Ports => self.ports = (self.ports.0 + 1, self.ports.1.max(slot.free_ports)),
        }
    }

    /// Records an offer refused by a constraint (described as `@hostname UNIQUE`).
    pub fn blocked(&mut self, constraint: String) {
        self.offers += 1;
        *self.constraints.entry(constraint).or_insert(0) += 1;
    }

    /// Records an offer refused for another reason (e.g. `already runs a task of this app`).
    pub fn other(&mut self, reason: &str) {
        self.offers += 1;
        *self.other.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// `3 offers, none fits: 2 lack cpus (needs 4, largest free 2), 1 blocked by constraint
    /// @hostname UNIQUE`; `no offers received` when there were none.
    pub fn message(&self, d: &Demand) -> String {
        if self.offers == 0 {
            return "no offers received".into();
        }
        let verb = |n: usize| if n == 1 { "lacks" } else { "lack" };
        let mut parts = Vec::new();
        if self.cpus.0 > 0 {
            parts.push(format!(
                "{} {} cpus (needs {}, largest free {})",
                self.cpus.0,
                verb(self.cpus.0),
                num(d.cpus),
                num(self.cpus.1)
            ));
        }
        if self.mem.0 > 0 {
            parts.push(format!(
                "{} {} mem (needs {} MiB, largest free {} MiB)",
                self.mem.0,
                verb(self.mem.0),
                num(d.mem),
                num(self.mem.1)
            ));
        }
        if self.disk.0 > 0 {
            parts.push(format!(
                "{} {} disk (needs {} MiB, largest free {} MiB)",
                self.disk.0,
                verb(self.disk.0),
                num(d.disk),
                num(self.disk.1)
            ));
        }
        if self.ports.0 > 0 {
            parts.push(format!(
                "{} {} ports (needs {}, most free {})",
                self.ports.0,
                verb(self.ports.0),
                d.ports,
                self.ports.1
            ));
        }
        for (c, n) in &self.constraints {
            parts.push(format!("{n} blocked by constraint {c}"));
        }
        for (reason, n) in &self.other {
            parts.push(format!("{n} {reason}"));
        }
        let offers = if self.offers == 1 { "1 offer".to_string() } else { format!("{} offers", self.offers) };
        format!("{offers}, none fits: {}", parts.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub fn offer(id: &str, cpus: f64, mem: f64, ports: &[(u16, u16)]) -> OfferInfo {
        OfferInfo {
            id: id.into(),
            agent_id: format!("agent-{id}"),
            hostname: format!("host-{id}"),
            attributes: vec![],
            resources: Resources {
                cpus,
                mem_mb: mem,
                disk_mb: 1000.0,
                ports: ports.iter().map(|&(begin, end)| PortRange { begin, end }).collect(),
                scalars: vec![],
            },
        }
    }

    #[test]
    fn takes_exact_distinct_ports_and_resources() {
        let mut s = Slot::new(offer("o1", 1.0, 100.0, &[(31005, 31006), (31000, 31001), (31002, 31002)]));
        let d = Demand { cpus: 0.3, mem: 40.0, disk: 0.0, ports: 2 };
        assert_eq!(s.free_ports, 5);
        let a = s.take(&d);
        let b = s.take(&d);
        let ports: Vec<(u16, u16)> = a.ports.iter().chain(&b.ports).map(|r| (r.begin, r.end)).collect();
        assert_eq!(ports, vec![(31000, 31000), (31001, 31001), (31002, 31002), (31005, 31005)]);
        assert_eq!(s.free_ports, 1);
        assert_eq!(s.lack(&d), Some(Lack::Mem));
        assert_eq!(s.lack(&Demand { mem: 10.0, ..d }), Some(Lack::Ports));
        assert_eq!(s.lack(&Demand { mem: 10.0, ports: 1, ..d }), None);
        assert_eq!(s.lack(&Demand { cpus: 0.5, ..d }), Some(Lack::Cpus));
        // 3 × 0.1 must fit in 0.3 despite rounding.
        let mut s = Slot::new(offer("o2", 0.3, 100.0, &[]));
        let d = Demand { cpus: 0.1, mem: 1.0, disk: 0.0, ports: 0 };
        for _ in 0..3 {
            assert_eq!(s.lack(&d), None);
            s.take(&d);
        }
        assert_eq!(s.lack(&d), Some(Lack::Cpus));
    }

    #[test]
    fn diagnosis_message() {
        let d = Demand { cpus: 4.0, mem: 64.0, disk: 0.0, ports: 1 };
        let mut diag = Diagnosis::default();
        assert_eq!(diag.message(&d), "no offers received");
        let s1 = Slot::new(offer("a", 2.0, 100.0, &[]));
        let s2 = Slot::new(offer("b", 1.5, 100.0, &[]));
        diag.lack(Lack::Cpus, &s1);
        diag.lack(Lack::Cpus, &s2);
        diag.blocked("@hostname UNIQUE".into());
        assert_eq!(
            diag.message(&d),
            "3 offers, none fits: 2 lack cpus (needs 4, largest free 2), 1 blocked by constraint @hostname UNIQUE"
        );
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(1.0 / 3.0), "0.333");
    }

    #[test]
    fn answer_launches_or_declines() {
        let mut s1 = Slot::new(offer("a", 2.0, 100.0, &[]));
        let s2 = Slot::new(offer("b", 2.0, 100.0, &[]));
        s1.tasks.push(TaskSpec {
            task_id: "t".into(),
            command: shoal_sdk::scheduling::TaskCommand::Shell("true".into()),
            resources: Resources::empty(),
            env: vec![],
            labels: vec![],
        });
        let ops = answer(vec![s1, s2], REFUSE_IDLE);
        assert!(matches!(&ops[0], Operation::Launch(l) if l.offer_id == "a" && l.tasks.len() == 1));
        assert!(matches!(&ops[1], Operation::Decline(d) if d.offer_id == "b" && d.refuse_seconds == 5.0));
    }
}
