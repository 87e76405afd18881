//! Cluster-level tests of Shoal live in `cluster/` (one test binary): they run the `shoal` binary
//! as real processes, against a real `nats-server` where a bus is involved, and talk to them over
//! real HTTP. This library only locates the binary.

use std::path::PathBuf;

/// The `shoal` binary built by the same `cargo test` run (it sits next to the `deps/` folder the
/// test executable runs from).
pub fn shoal_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("test executables live in <target>/<profile>/deps");
    let bin = dir.join(format!("shoal{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test` at the workspace root, which builds it",
        bin.display()
    );
    bin
}
