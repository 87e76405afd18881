//! What a process task may reach, besides its cgroup ([`crate::cgroups`]): the user it runs as,
//! the environment it gets, and the sandbox directory it works in.
//!
//! - **User** ([`TaskUser`]): an agent running as root runs tasks as an unprivileged user
//!   (`--task-user`, default `nobody`, as Mesos's `--switch_user`): uid and gid set, supplementary
//!   groups dropped, before the command is executed. An agent that is not root cannot switch, so
//!   its tasks run as its own user and their status says so.
//! - **Environment** ([`task_env`]): cleared, then only `PATH` (a fixed default), `HOME` (the
//!   sandbox), `SHOAL_TASK_ID`, what the task's spec declares, and `PORT0…`/`PORT`. Nothing of
//!   the agent's own environment (tokens, credentials) reaches a task.
//! - **Sandbox** ([`SandboxRoot`]): `<sandbox root>/<task id>`, mode 0700, owned by the task's
//!   user, under a root that is outside every data directory of the node (the agent refuses a
//!   root inside its work directory) and held by one agent at a time (a lock file).
//!
//! Command health checks of a task run the same way ([`isolated_check_command`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `PATH` of every task: the usual system directories, nothing of the agent's.
pub const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `setpriv` (util-linux) is on [`TASK_PATH`], found once.
pub fn setpriv() -> Option<&'static Path> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| TASK_PATH.split(':').map(|dir| Path::new(dir).join("setpriv")).find(|p| p.is_file()))
        .as_deref()
}
/// The user tasks run as when the agent is root and no `--task-user` was given.
pub const DEFAULT_TASK_USER: &str = "nobody";
/// Where sandboxes live when the agent runs as root and no `--sandbox-dir` was given
/// (`<this>/<agent id>`).
pub const ROOT_SANDBOXES: &str = "/var/lib/shoal/sandboxes";

/// Why the agent cannot isolate tasks as configured (it refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// `--task-user` names no user of `/etc/passwd`.
    #[error("task user `{0}` does not exist (add it, or choose another with --task-user)")]
    NoSuchUser(String),
    /// Switching users needs root.
    #[error("tasks can run as `{0}` only when the agent runs as root")]
    NotRoot(String),
    /// The sandbox root is where a task could reach the node's data.
    #[error("sandbox root {root} is inside the agent's work directory {work_dir}: choose one outside it")]
    InsideWorkDir {
        /// The sandbox root.
        root: PathBuf,
        /// The agent's work directory.
        work_dir: PathBuf,
    },
    /// The task user cannot enter the sandbox root.
    #[error(
        "task user `{user}` cannot reach sandbox root {root}: {blocker} is mode {mode:o}; choose another --sandbox-dir"
    )]
    Unreachable {
        /// The user.
        user: String,
        /// The sandbox root.
        root: PathBuf,
        /// The directory on the way that blocks it.
        blocker: PathBuf,
        /// That directory's mode.
        mode: u32,
    },
    /// Another agent works in the same sandbox root.
    #[error("another agent uses sandbox root {0}: give each agent its own --sandbox-dir")]
    InUse(PathBuf),
    /// Creating or locking the sandbox root failed.
    #[error("sandbox root {path}: {source}")]
    Io {
        /// What was being made.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// An unprivileged user tasks run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TaskUser {
    /// The user `name` of `/etc/passwd`.
    pub fn lookup(name: &str) -> Result<TaskUser, IsolationError> {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        parse_passwd(&passwd, name).ok_or_else(|| IsolationError::NoSuchUser(name.to_owned()))
    }
}

fn parse_passwd(passwd: &str, name: &str) -> Option<TaskUser> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name).then_some(())?;
        Some(TaskUser { name: name.to_owned(), uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
    })
}

/// The effective uid of this process (the owner of `/proc/self`).
pub fn effective_uid() -> u32 {
    fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The user tasks run as: `requested` (default [`DEFAULT_TASK_USER`]) when the agent is root;
/// `None` (the agent's own user) otherwise, which is refused if a user was requested.
pub fn task_user(requested: Option<&str>) -> Result<Option<TaskUser>, IsolationError> {
    if effective_uid() == 0 {
        return TaskUser::lookup(requested.unwrap_or(DEFAULT_TASK_USER)).map(Some);
    }
    match requested {
        Some(name) => Err(IsolationError::NotRoot(name.to_owned())),
        None => Ok(None),
    }
}

/// The default sandbox root of agent `agent_id`: `/var/lib/shoal/sandboxes/<id>` for root,
/// `<temp dir>/shoal-sandboxes-<uid>/<id>` otherwise.
pub fn default_sandbox_root(agent_id: &str) -> PathBuf {
    let uid = effective_uid();
    if uid == 0 {
        Path::new(ROOT_SANDBOXES).join(agent_id)
    } else {
        std::env::temp_dir().join(format!("shoal-sandboxes-{uid}")).join(agent_id)
    }
}

/// The directory task sandboxes are made in, locked for this agent while it lives.
#[derive(Debug)]
pub struct SandboxRoot {
    path: PathBuf,
    _lock: File,
}

impl SandboxRoot {
    /// Create (mode 0711: enterable, not listable, by task users) and lock `path`; refuse a root
    /// inside `work_dir`, one another agent holds, or one `user` cannot reach.
    pub fn open(path: &Path, work_dir: &Path, user: Option<&TaskUser>) -> Result<SandboxRoot, IsolationError> {
        fs::create_dir_all(path).map_err(|e| at(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o711)).map_err(|e| at(path, e))?;
        let root = path.canonicalize().map_err(|e| at(path, e))?;
        fs::create_dir_all(work_dir).map_err(|e| at(work_dir, e))?;
        let work = work_dir.canonicalize().map_err(|e| at(work_dir, e))?;
        if root.starts_with(&work) {
            return Err(IsolationError::InsideWorkDir { root, work_dir: work });
        }
        if let Some(user) = user {
            for dir in root.ancestors() {
                let meta = fs::metadata(dir).map_err(|e| at(dir, e))?;
                let mode = meta.mode() & 0o777;
                let enter = mode & 0o001 != 0
                    || (meta.uid() == user.uid && mode & 0o100 != 0)
                    || (meta.gid() == user.gid && mode & 0o010 != 0);
                if !enter {
                    return Err(IsolationError::Unreachable {
                        user: user.name.clone(),
                        root: root.clone(),
                        blocker: dir.to_owned(),
                        mode,
                    });
                }
            }
        }
        let lock_path = root.join(".agent.lock");
        let lock = File::create(&lock_path).map_err(|e| at(&lock_path, e))?;
        fs::set_permissions(&lock_path, fs::Permissions::from_mode(0o600)).map_err(|e| at(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(IsolationError::InUse(root));
        }
        Ok(SandboxRoot { path: root, _lock: lock })
    }

    /// The root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<root>/<task_id>` (the id already checked with `shoal_protocol::validate_task_id`).
    pub fn sandbox(&self, task_id: &str) -> PathBuf {
        self.path.join(task_id)
    }
}

fn at(path: &Path, source: std::io::Error) -> IsolationError {
    IsolationError::Io { path: path.to_owned(), source }
}

/// Make `dir` a task's sandbox: created, mode 0700, owned by `user` when there is one.
pub fn prepare_sandbox(dir: &Path, user: Option<&TaskUser>) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    if let Some(user) = user {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The whole environment of a task: `PATH`, `HOME` = `sandbox`, `SHOAL_TASK_ID`, the declared
/// `env` (which may override `PATH` and `HOME`), then `PORT0…` and `PORT` = the first port.
pub fn task_env(
    task_id: &str,
    sandbox: &Path,
    env: &BTreeMap<String, String>,
    ports: &[u16],
) -> BTreeMap<String, String> {
    let mut all =
        BTreeMap::from([("PATH".to_owned(), TASK_PATH.to_owned()), ("HOME".to_owned(), sandbox.display().to_string())]);
    all.insert("SHOAL_TASK_ID".into(), task_id.to_owned());
    all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (i, port) in ports.iter().enumerate() {
        all.insert(format!("PORT{i}"), port.to_string());
    }
    if let Some(first) = ports.first() {
        all.insert("PORT".into(), first.to_string());
    }
    all
}

/// A command health check run as its task runs: a script for `sh -c` (which the health checker
/// runs with the agent's privileges) that places itself in the task's cgroup (`procs`), enters
/// the sandbox, and executes `command` with `env` only (plus the checker's `SHOAL_CHECK_HOST`
/// and `SHOAL_CHECK_PORT`), as `user` when there is one (`setpriv`, util-linux).
pub fn isolated_check_command(
    command: &str,
    sandbox: &Path,
    env: &BTreeMap<String, String>,
    user: Option<&TaskUser>,
    procs: &[PathBuf],
) -> String {
    let mut script = String::new();
    for file in procs {
        script.push_str(&format!("echo $$ > {} 2>/dev/null; ", quote(&file.display().to_string())));
    }
    script.push_str(&format!("cd {} || exit 1; exec ", quote(&sandbox.display().to_string())));
    if let Some(user) = user {
        script.push_str(&format!("setpriv --reuid={} --regid={} --clear-groups -- ", user.uid, user.gid));
    }
    script.push_str("env -i SHOAL_CHECK_HOST=\"$SHOAL_CHECK_HOST\" SHOAL_CHECK_PORT=\"$SHOAL_CHECK_PORT\"");
    for (k, v) in env {
        script.push_str(&format!(" {}", quote(&format!("{k}={v}"))));
    }
    script.push_str(&format!(" sh -c {}", quote(command)));
    script
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn users_come_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(parse_passwd(passwd, "nobody"), Some(TaskUser { name: "nobody".into(), uid: 65534, gid: 65534 }));
        assert_eq!(parse_passwd(passwd, "nob"), None);
        assert!(matches!(TaskUser::lookup("no-such-user-here"), Err(IsolationError::NoSuchUser(_))));
    }

    #[test]
    fn the_environment_is_only_what_is_declared() {
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let all = task_env("web.1", Path::new("/s/web.1"), &env, &[31000, 31001]);
        let keys: Vec<&str> = all.keys().map(String::as_str).collect();
        assert_eq!(keys, ["GREETING", "HOME", "PATH", "PORT", "PORT0", "PORT1", "SHOAL_TASK_ID"]);
        assert_eq!(all["HOME"], "/s/web.1");
    }

    #[test]
    fn a_sandbox_root_is_outside_the_work_dir_reachable_and_held_by_one_agent() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("agent");
        let inside = SandboxRoot::open(&work.join("tasks"), &work, None).unwrap_err();
        assert!(matches!(inside, IsolationError::InsideWorkDir { .. }), "{inside}");
        let nobody = TaskUser { name: "nobody".into(), uid: 65534, gid: 65534 };
        // A private directory on the way: the task user cannot pass it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let hidden = SandboxRoot::open(&dir.path().join("sandboxes"), &work, Some(&nobody)).unwrap_err();
        assert!(hidden.to_string().contains("cannot reach"), "{hidden}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let held = SandboxRoot::open(&dir.path().join("sandboxes"), &work, Some(&nobody)).unwrap();
        let again = SandboxRoot::open(&dir.path().join("sandboxes"), &work, Some(&nobody)).unwrap_err();
        assert!(matches!(again, IsolationError::InUse(_)), "{again}");
        assert_eq!(fs::metadata(held.path()).unwrap().mode() & 0o777, 0o711);
        drop(held);
        SandboxRoot::open(&dir.path().join("sandboxes"), &work, Some(&nobody)).unwrap();
    }

    #[test]
    fn check_scripts_run_in_the_sandbox_with_only_the_task_env() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("A".to_owned(), "it's".to_owned())]);
        let script = isolated_check_command("echo \"$A\" \"${SECRET:-none}\"; pwd", dir.path(), &env, None, &[]);
        let out = std::process::Command::new("sh").args(["-c", &script]).env("SECRET", "x").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("it's none\n{}\n", dir.path().display()));
    }
}
