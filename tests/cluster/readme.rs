//! Issue 25: README's two commands on a machine that lacks what the build needs. The run
//! command (`./shoal-dev`) checks its prerequisites before it builds anything: as a user who
//! cannot install packages, on a machine without libclang (hidden here in a mount namespace of
//! the test's own), it fails at once and prints the exact install line; on this machine, with
//! everything present, the same checks pass. The test command (`./run-tests`) is what `.ci/run`
//! runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository root").to_path_buf()
}

/// The shell commands in the fenced blocks of README's "Two commands" section.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme.split("\n## Two commands").nth(1).expect("a \"Two commands\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .flat_map(|block| block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_names_the_two_scripts_and_ci_runs_the_test_command() {
    assert_eq!(readme_commands(), ["./shoal-dev", "./run-tests"], "README's two commands");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == "exec ./run-tests"), ".ci/run runs README's test command:\n{ci}");
}

/// Every file through which clang-sys could find libclang on this machine.
fn libclang_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("llvm-")))
        .map(|p| p.join("lib"))
        .chain(
            ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
                .map(PathBuf::from),
        );
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("libclang.so") || (name.starts_with("libclang-") && name.contains(".so")) {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn the_run_command_without_libclang_fails_fast_with_the_install_line() {
    let hidden = libclang_files();
    assert!(!hidden.is_empty(), "this machine has libclang (the build needs it), so there is something to hide");
    // In a mount namespace of its own, every libclang file becomes /dev/null (no longer a
    // regular file, as on a machine without the package); then the script runs as `nobody`,
    // who may not install anything.
    let hide: String = hidden.iter().map(|f| format!("mount --bind /dev/null '{}' && ", f.display())).collect();
    let script = format!(
        "{hide} exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/nonexistent ./shoal-dev"
    );
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(repo())
        .output()
        .expect("unshare");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused without libclang; stderr:\n{stderr}");
    assert!(stderr.contains("missing: libclang-dev"), "names what is missing:\n{stderr}");
    assert!(stderr.contains("sudo apt-get install -y libclang-dev"), "prints the install line:\n{stderr}");
    assert!(!stderr.contains("Compiling"), "nothing was built:\n{stderr}");
    assert!(took < Duration::from_secs(10), "fails fast, took {took:?}");
}

#[test]
fn the_run_commands_checks_pass_where_everything_is_installed() {
    let out = Command::new("bash")
        .args(["-c", ". scripts/prereqs.sh && shoal_has_libclang && shoal_build_prereqs"])
        .current_dir(repo())
        .output()
        .expect("bash");
    assert!(out.status.success(), "checks pass here: {}", String::from_utf8_lossy(&out.stderr));
}
