//! Task cgroups, the way Mesos's cgroups isolator does it: one group per task under a per-agent
//! parent, the task's memory (`mem` MiB) and CPU (`cpus`) applied as limits, the OOM killer's
//! verdict read back when the task ends, the group removed after it.
//!
//! - **cgroup v2** (a unified hierarchy: `/sys/fs/cgroup/cgroup.controllers`): `memory.max`
//!   (and `memory.swap.max` = 0) and `cpu.max`; OOM kills in `memory.events`.
//! - **cgroup v1** otherwise: `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` when swap
//!   is accounted, else `memory.swappiness` = 0) in the `memory` hierarchy, and
//!   `cpu.cfs_quota_us`/`cpu.cfs_period_us` in the `cpu` hierarchy; OOM kills in
//!   `memory.oom_control`'s `oom_kill` counter.
//!
//! CPU is a hard limit (the CFS quota), not a weight: a task's group keeps the default weight
//! (`cpu.shares` 1024, `cpu.weight` 100), the weight of one ordinary process. Task groups sit next
//! to the agent's own processes and everything else on the machine, and a weight scaled by `cpus`
//! (Mesos's `cpu.shares` = 1024 × cpus) starved small tasks there under load: a 0.5-cpu web
//! server missed its 400 ms health checks while the test suite ran on two cores.
//!
//! The parent is `<the agent's own cgroup>/shoal/<agent-id>/<agent pid>` in each hierarchy: below
//! the agent's own group, so tasks stay inside whatever limits the agent itself was given (a
//! delegated subtree, as systemd's `Delegate=yes`), and per agent process, so two agents with the
//! same id on one machine (tests) never share a group. A restarted agent removes the parents its
//! dead predecessors left ([`Cgroups::sweep`]).
//!
//! This module never places a process itself: the executor writes the task's pid into
//! [`TaskGroup::procs_files`] before the task's command runs. It never touches a group outside
//! its parent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The CFS period every task's quota is a share of (Mesos's default, 100 ms).
const CFS_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts is 1 ms; a smaller `cpus` gets that much.
const MIN_CFS_QUOTA_US: u64 = 1_000;

/// Why this executor cannot enforce resource limits here (the task still runs, unconfined, and
/// its status says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsUnsupported {
    /// Neither a cgroup v2 hierarchy nor a v1 `memory` or `cpu` hierarchy is mounted.
    #[error("no cgroup hierarchy under {0}: cpu and memory limits are not enforced")]
    NoCgroups(PathBuf),
    /// A hierarchy lacks a controller (v2), or the controller's hierarchy is not mounted (v1).
    #[error("no `{0}` cgroup controller: {0} limits are not enforced")]
    MissingController(&'static str),
    /// The agent may not create groups there (read-only mount, not root, no delegation).
    #[error("cannot create cgroup {path}: {cause}: limits are not enforced")]
    NotWritable {
        /// The group that could not be made.
        path: PathBuf,
        /// The error, as text (errors of `std::io` are not `Clone`).
        cause: String,
    },
}

/// What a task may use: its `cpus` and `mem` resources. Zero means no limit of that kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// CPU cores (fractional).
    pub cpus: f64,
    /// Memory, MiB.
    pub mem_mb: f64,
}

impl Limits {
    fn mem_bytes(&self) -> Option<u64> {
        (self.mem_mb > 0.0).then(|| (self.mem_mb * 1024.0 * 1024.0) as u64)
    }

    fn quota_us(&self) -> Option<u64> {
        (self.cpus > 0.0).then(|| ((self.cpus * CFS_PERIOD_US as f64) as u64).max(MIN_CFS_QUOTA_US))
    }
}

/// The per-agent parents tasks' groups are made in.
#[derive(Clone, Debug)]
pub enum Cgroups {
    /// One unified hierarchy.
    V2 {
        /// `<mount>/<own>/shoal/<agent-id>/<pid>`.
        parent: PathBuf,
    },
    /// Separate `memory` and `cpu` hierarchies; a missing one limits nothing of its kind.
    V1 {
        /// `<memory mount>/<own>/shoal/<agent-id>/<pid>`.
        memory: Option<PathBuf>,
        /// `<cpu mount>/<own>/shoal/<agent-id>/<pid>`.
        cpu: Option<PathBuf>,
    },
}

impl Cgroups {
    /// The parents for agent `agent_id` in this process, created: v2 where `/sys/fs/cgroup` is a
    /// unified hierarchy, v1 otherwise. `Err` says why no limit can be applied; a v1 machine with
    /// only one of `memory` and `cpu` gives `Ok` (see [`Cgroups::missing`]).
    pub fn create(agent_id: &str) -> Result<Cgroups, LimitsUnsupported> {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Cgroups::create_at(Path::new("/sys/fs/cgroup"), &own, agent_id, std::process::id())
    }

    /// [`Cgroups::create`] against a hierarchy mounted at `root`, for a process whose
    /// `/proc/self/cgroup` reads `own` and whose pid is `pid`.
    pub fn create_at(root: &Path, own: &str, agent_id: &str, pid: u32) -> Result<Cgroups, LimitsUnsupported> {
        let below = |mount: &Path, controller: &str| -> PathBuf {
            mount.join(own_path(own, controller)).join("shoal").join(agent_id).join(pid.to_string())
        };
        if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
            let have: Vec<&str> = controllers.split_whitespace().collect();
            for needed in ["cpu", "memory"] {
                if !have.contains(&needed) {
                    return Err(LimitsUnsupported::MissingController(needed));
                }
            }
            let parent = below(root, "");
            make_v2_parent(root, &parent)?;
            return Ok(Cgroups::V2 { parent });
        }
        let mounted = |name: &str, file: &str| {
            let mount = root.join(name);
            mount.join(file).exists().then_some(mount)
        };
        let memory = mounted("memory", "memory.limit_in_bytes").map(|m| below(&m, "memory"));
        let cpu = mounted("cpu", "cpu.cfs_quota_us").map(|m| below(&m, "cpu"));
        if memory.is_none() && cpu.is_none() {
            return Err(LimitsUnsupported::NoCgroups(root.to_owned()));
        }
        for parent in memory.iter().chain(&cpu) {
            make_dir(parent)?;
        }
        Ok(Cgroups::V1 { memory, cpu })
    }

    /// A limit kind this machine cannot enforce, if any (v1 with one hierarchy missing).
    pub fn missing(&self) -> Option<LimitsUnsupported> {
        match self {
            Cgroups::V1 { memory: None, .. } => Some(LimitsUnsupported::MissingController("memory")),
            Cgroups::V1 { cpu: None, .. } => Some(LimitsUnsupported::MissingController("cpu")),
            _ => None,
        }
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2 { .. } => "v2",
            Cgroups::V1 { .. } => "v1",
        }
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Cgroups::V2 { parent } => vec![parent],
            Cgroups::V1 { memory, cpu } => memory.iter().chain(cpu).map(PathBuf::as_path).collect(),
        }
    }

    /// A group for task `task_id` (an id checked by `shoal_protocol::validate_task_id`: one path
    /// component) with `limits` written. A group left by an earlier launch of the same id is
    /// reused only when empty.
    pub fn task_group(&self, task_id: &str, limits: Limits) -> io::Result<TaskGroup> {
        if task_id.is_empty() || task_id.contains('/') || task_id.starts_with('.') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("`{task_id}` is not a task id")));
        }
        let group = match self {
            Cgroups::V2 { parent } => {
                TaskGroup { dirs: vec![parent.join(task_id)], memory: Some(parent.join(task_id)), v2: true, limits }
            }
            Cgroups::V1 { memory, cpu } => TaskGroup {
                dirs: memory.iter().chain(cpu).map(|p| p.join(task_id)).collect(),
                memory: memory.as_ref().map(|p| p.join(task_id)),
                v2: false,
                limits,
            },
        };
        for dir in &group.dirs {
            make_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
            if !fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().trim().is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cgroup {} already holds processes", dir.display()),
                ));
            }
        }
        group.write_limits()?;
        Ok(group)
    }

    /// Remove what dead agents with this id left: every sibling `<pid>` parent whose process is
    /// gone, and the task groups in it. Groups that still hold processes stay (their processes
    /// are being killed; the next sweep gets them).
    pub fn sweep(&self) {
        for parent in self.parents() {
            let Some(agent_dir) = parent.parent() else { continue };
            for entry in fs::read_dir(agent_dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(pid) = name.parse::<u32>() else { continue };
                if path == parent || Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                remove_tree(&path);
            }
        }
    }

    /// Remove this agent's parents (the agent stops; its tasks are gone).
    pub fn remove(&self) {
        for parent in self.parents() {
            remove_tree(parent);
        }
    }
}

/// One task's group (in each hierarchy, for v1).
#[derive(Debug)]
pub struct TaskGroup {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    v2: bool,
    limits: Limits,
}

impl TaskGroup {
    fn write_limits(&self) -> io::Result<()> {
        let put = |dir: &Path, file: &str, value: String| {
            fs::write(dir.join(file), &value)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {value} to {}: {e}", dir.join(file).display())))
        };
        let l = self.limits;
        if self.v2 {
            let dir = &self.dirs[0];
            if let Some(bytes) = l.mem_bytes() {
                put(dir, "memory.max", bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    put(dir, "memory.swap.max", "0".into())?;
                }
            }
            if let Some(quota) = l.quota_us() {
                put(dir, "cpu.max", format!("{quota} {CFS_PERIOD_US}"))?;
            }
            return Ok(());
        }
        for dir in &self.dirs {
            if Some(dir) == self.memory.as_ref() {
                if let Some(bytes) = l.mem_bytes() {
                    put(dir, "memory.limit_in_bytes", bytes.to_string())?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        // Memory plus swap: the same number, so the task cannot swap past it.
                        put(dir, "memory.memsw.limit_in_bytes", bytes.to_string())?;
                    } else if dir.join("memory.swappiness").exists() {
                        put(dir, "memory.swappiness", "0".into())?;
                    }
                }
            } else if let Some(quota) = l.quota_us() {
                put(dir, "cpu.cfs_period_us", CFS_PERIOD_US.to_string())?;
                put(dir, "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process must be written into to be confined.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Place process `pid` in the group (every hierarchy).
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for file in self.procs_files() {
            fs::write(&file, pid.to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("placing pid {pid} in {}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// The limits written.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The group's directories (one per hierarchy).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// How many times the kernel's OOM killer killed a process of the group.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Remove the group once its processes are gone: a killed process leaves its group a moment
    /// after its parent saw it exit, so this retries for a few seconds on a blocking thread.
    pub fn remove(self) {
        let dirs = self.dirs;
        std::thread::spawn(move || {
            for _ in 0..100 {
                if dirs.iter().all(|d| !d.exists() || fs::remove_dir(d).is_ok()) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            tracing::warn!(groups = ?dirs, "task cgroup still busy; left for the next agent start");
        });
    }
}

/// The path of this process's group of `controller` (v1: the line naming it; v2: `controller` =
/// `""`, the `0::` line), relative, without the leading `/`.
fn own_path(own: &str, controller: &str) -> PathBuf {
    let path = own
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches =
                if controller.is_empty() { names.is_empty() } else { names.split(',').any(|n| n == controller) };
            matches.then_some(path)
        })
        .next()
        .unwrap_or("/");
    PathBuf::from(path.trim_start_matches('/'))
}

fn make_dir(dir: &Path) -> Result<(), LimitsUnsupported> {
    fs::create_dir_all(dir).map_err(|e| LimitsUnsupported::NotWritable { path: dir.to_owned(), cause: e.to_string() })
}

/// v2: controllers must be enabled in `cgroup.subtree_control` of every group above the task's,
/// which the kernel refuses in a group that holds processes itself (the "no internal process"
/// rule): an agent must run in a delegated group of its own, as systemd's `Delegate=yes` gives.
fn make_v2_parent(root: &Path, parent: &Path) -> Result<(), LimitsUnsupported> {
    make_dir(parent)?;
    let mut dirs: Vec<&Path> = parent.ancestors().take_while(|d| d.starts_with(root)).collect();
    dirs.reverse();
    for dir in dirs {
        let control = dir.join("cgroup.subtree_control");
        if fs::read_to_string(&control).is_ok_and(|c| c.contains("cpu") && c.contains("memory")) {
            continue;
        }
        fs::write(&control, "+cpu +memory")
            .map_err(|e| LimitsUnsupported::NotWritable { path: control.clone(), cause: e.to_string() })?;
    }
    Ok(())
}

/// Remove a parent and the (empty) groups in it; busy groups stay.
fn remove_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir(entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The real v1 hierarchy of this machine (CI's too): a group gets the limits, takes a
    /// process, counts nothing while it stays within them, and goes away.
    #[test]
    fn a_task_group_on_the_real_hierarchy_gets_its_limits_and_is_removed() {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let cgroups = Cgroups::create_at(Path::new("/sys/fs/cgroup"), &own, "unit-test", std::process::id())
            .expect("a writable cgroup hierarchy (tests run as root on a machine with cgroup v1 or v2)");
        assert_eq!(cgroups.missing(), None, "{cgroups:?}");
        let group = cgroups.task_group("web.1", Limits { cpus: 0.25, mem_mb: 64.0 }).unwrap();
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
        match &cgroups {
            Cgroups::V1 { memory: Some(m), cpu: Some(c) } => {
                assert_eq!(read(&m.join("web.1"), "memory.limit_in_bytes"), (64u64 << 20).to_string());
                assert_eq!(read(&c.join("web.1"), "cpu.cfs_quota_us"), "25000");
                assert_eq!(read(&c.join("web.1"), "cpu.cfs_period_us"), "100000");
                assert_eq!(read(&c.join("web.1"), "cpu.shares"), "1024", "the default weight");
            }
            Cgroups::V2 { parent } => {
                assert_eq!(read(&parent.join("web.1"), "memory.max"), (64u64 << 20).to_string());
                assert_eq!(read(&parent.join("web.1"), "cpu.max"), "25000 100000");
            }
            other => panic!("unexpected hierarchy {other:?}"),
        }
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        group.add(child.id()).unwrap();
        let mine = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(mine.contains("/shoal/unit-test/"), "{mine}");
        // A group with a process in it is not handed out again.
        assert!(cgroups.task_group("web.1", Limits { cpus: 0.0, mem_mb: 0.0 }).is_err());
        assert_eq!(group.oom_kills(), 0);
        child.kill().unwrap();
        child.wait().unwrap();
        let dirs = group.dirs().to_vec();
        group.remove();
        shoal_testkit::eventually_sync("the task group to be removed", std::time::Duration::from_secs(5), || {
            dirs.iter().all(|d| !d.exists()).then_some(())
        });
        cgroups.remove();
        assert!(cgroups.parents().iter().all(|p| !p.exists()));
    }

    /// What a dead agent with the same id left is swept; a live one's parent is not.
    #[test]
    fn sweep_removes_only_the_parents_of_dead_agents() {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let root = Path::new("/sys/fs/cgroup");
        // A pid no process has: above the kernel's pid_max.
        let dead = Cgroups::create_at(root, &own, "sweep-test", 99_999_999).unwrap();
        dead.task_group("left.1", Limits { cpus: 1.0, mem_mb: 32.0 }).unwrap();
        let live = Cgroups::create_at(root, &own, "sweep-test", std::process::id()).unwrap();
        live.sweep();
        assert!(dead.parents().iter().all(|p| !p.exists()), "{dead:?}");
        assert!(live.parents().iter().all(|p| p.exists()), "{live:?}");
        live.remove();
    }

    #[test]
    fn own_groups_are_read_from_proc_self_cgroup() {
        let own = "4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/user.slice/x\n";
        assert_eq!(own_path(own, "memory"), PathBuf::from("process_api/abc"));
        assert_eq!(own_path(own, "cpu"), PathBuf::from(""));
        assert_eq!(own_path(own, ""), PathBuf::from("user.slice/x"));
    }

    #[test]
    fn limits_follow_mesos() {
        let l = Limits { cpus: 0.25, mem_mb: 64.0 };
        assert_eq!((l.quota_us(), l.mem_bytes()), (Some(25_000), Some(64 << 20)));
        let tiny = Limits { cpus: 0.001, mem_mb: 0.0 };
        assert_eq!((tiny.quota_us(), tiny.mem_bytes()), (Some(1_000), None));
    }

    #[test]
    fn no_hierarchy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::create_at(dir.path(), "", "a", 1).unwrap_err();
        assert!(err.to_string().contains("not enforced"), "{err}");
        fs::write(dir.path().join("cgroup.controllers"), "cpuset io pids").unwrap();
        assert_eq!(
            Cgroups::create_at(dir.path(), "", "a", 1).unwrap_err(),
            LimitsUnsupported::MissingController("cpu")
        );
    }
}
