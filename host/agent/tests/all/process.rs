//! The process executor against real processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_agent::{ProcessExit, ProcessSpec, StartError, start};
use shoal_testkit::eventually;

fn spec(dir: &std::path::Path, command: &str) -> ProcessSpec {
    ProcessSpec {
        task_id: "web.1".into(),
        command: command.into(),
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        ports: vec![31001, 31002],
        sandbox: dir.join("sandbox"),
        log_limit: 64 * 1024,
        user: None,
        limits: shoal_agent::Limits { cpus: 0.0, mem_mb: 0.0 },
        cgroups: Err(shoal_agent::LimitsUnsupported::NoCgroups(dir.to_owned())),
    }
}

#[tokio::test]
async fn runs_in_its_sandbox_with_ports_env_and_captured_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut task =
        start(&spec(dir.path(), "echo $GREETING $PORT $PORT0 $PORT1 $SHOAL_TASK_ID; pwd; echo oops >&2; exit 3"))
            .unwrap();
    assert_eq!(task.wait().await, ProcessExit::Code(3));
    let out = String::from_utf8(task.logs().stdout().bytes).unwrap();
    let sandbox = dir.path().join("sandbox").canonicalize().unwrap();
    assert_eq!(out, format!("hello 31001 31001 31002 web.1\n{}\n", sandbox.display()));
    assert_eq!(task.logs().stderr().bytes, b"oops\n");
    assert_eq!(task.isolation(), "no cpu or memory requested: no limits");
}

#[tokio::test]
async fn logs_keep_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "head -c 100000 /dev/zero | tr '\\0' a; printf END");
    s.log_limit = 1000;
    let mut task = start(&s).unwrap();
    assert!(task.wait().await.success());
    let tail = task.logs().stdout();
    assert_eq!((tail.bytes.len(), tail.dropped), (1000, 99_003));
    assert!(tail.bytes.ends_with(b"aaEND"));
}

#[tokio::test]
async fn kill_sends_term_then_kill_to_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    // Handles SIGTERM: exits cleanly within the grace period.
    let mut polite = start(&spec(dir.path(), "trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done")).unwrap();
    // Wait for the shell to have installed its trap (SIGTERM shows up in its caught-signal mask).
    let polite_pid = polite.pid();
    eventually("the polite task to trap SIGTERM", Duration::from_secs(10), || {
        std::future::ready(catches_sigterm(polite_pid).then_some(()))
    })
    .await;
    assert_eq!(polite.kill(Duration::from_secs(5)).await, ProcessExit::Code(0));
    assert_eq!(polite.logs().stdout().bytes, b"bye\n");

    // Ignores SIGTERM and leaves a child in its group: both are gone after the grace period.
    let mut stubborn = start(&spec(dir.path(), "trap '' TERM; sleep 1000 & echo $!; wait")).unwrap();
    let child_pid = eventually("the stubborn task to print its child's pid", Duration::from_secs(10), || {
        let out = String::from_utf8(stubborn.logs().stdout().bytes).unwrap();
        std::future::ready(out.trim().parse::<i32>().ok())
    })
    .await;
    let t0 = Instant::now();
    let exit = stubborn.kill(Duration::from_millis(300)).await;
    assert_eq!(exit, ProcessExit::Signal(libc_sigkill()), "{exit:?}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // The SIGKILL has been sent; wait for it to take effect (gone, or a zombie awaiting its reaper).
    eventually(
        &format!("the group's background child (pid {child_pid}) to die; it survived"),
        Duration::from_secs(5),
        || {
            let alive = std::path::Path::new(&format!("/proc/{child_pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{child_pid}/stat")).unwrap_or_default().contains(") Z");
            std::future::ready((!alive).then_some(()))
        },
    )
    .await;
}

/// Whether process `pid` has a handler installed for SIGTERM (signal 15, bit 14 of the `SigCgt`
/// mask in its status).
fn catches_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

fn libc_sigkill() -> i32 {
    9
}

#[tokio::test]
async fn bad_tasks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(start(&spec(dir.path(), "  ")), Err(StartError::Invalid(_))));
    let mut s = spec(dir.path(), "true");
    s.env.insert("A=B".into(), "x".into());
    assert!(matches!(start(&s), Err(StartError::Invalid(_))));
}
