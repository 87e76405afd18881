//! Ergonomic helpers on the generated WIT types: resource arithmetic and hashing that every
//! policy needs and nobody should write twice.

use crate::{Resources, Scalar, TaskState};

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

impl From<TaskState> for shoal_protocol::TaskState {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Staging => shoal_protocol::TaskState::Staging,
            TaskState::Starting => shoal_protocol::TaskState::Starting,
            TaskState::Running => shoal_protocol::TaskState::Running,
            TaskState::Finished => shoal_protocol::TaskState::Finished,
            TaskState::Failed => shoal_protocol::TaskState::Failed,
            TaskState::Killed => shoal_protocol::TaskState::Killed,
            TaskState::Lost => shoal_protocol::TaskState::Lost,
        }
    }
}

impl TaskState {
    /// Lower-case name (`running`), as the host writes it in JSON and events.
    pub fn name(self) -> &'static str {
        shoal_protocol::TaskState::from(self).as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_are_named_as_the_host_names_them() {
        assert_eq!(TaskState::Running.name(), "running");
        assert_eq!(TaskState::Lost.name(), "lost");
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
