//! Builds every guest crate (the default plugins in `plugins/` and the test programs in
//! `host/test-programs/`) for `wasm32-wasip2` with a nested `cargo build`, and writes `gen.rs`:
//! one `pub const NAME: &[u8]` per component, the table of default plugins, and `foreach_*!`
//! macros that let tests demand one test per guest.
//!
//! The nested build has its own target dir inside `OUT_DIR`: sharing the outer one would deadlock
//! on cargo's build-directory lock, and host flags must not leak into guest builds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate, Rust const name, plugin kind, default plugin name) of each default plugin.
const PLUGINS: &[(&str, &str, &str, &str)] = &[
    ("shoal-plugin-drf", "DRF", "allocator", "drf"),
    ("shoal-plugin-round-robin", "ROUND_ROBIN", "router", "round-robin"),
    ("shoal-plugin-random", "RANDOM", "router", "random"),
    ("shoal-plugin-source-hash", "SOURCE_HASH", "router", "source-hash"),
    ("shoal-plugin-weighted-round-robin", "WEIGHTED_ROUND_ROBIN", "router", "weighted-round-robin"),
    ("shoal-plugin-weighted-random", "WEIGHTED_RANDOM", "router", "weighted-random"),
    ("shoal-plugin-least-connections", "LEAST_CONNECTIONS", "router", "least-connections"),
    ("shoal-plugin-binpack", "BINPACK", "allocator", "binpack"),
    ("shoal-plugin-service", "SERVICE", "framework", "service"),
    ("shoal-plugin-batch", "BATCH", "framework", "batch"),
];

/// (crate, Rust const name) of each test program.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("shoal-test-hostile-router", "HOSTILE_ROUTER"),
    ("shoal-test-hostile-framework", "HOSTILE_FRAMEWORK"),
    ("shoal-test-kv-framework", "KV_FRAMEWORK"),
    ("shoal-test-keeper-framework", "KEEPER_FRAMEWORK"),
    ("shoal-test-http-check", "HTTP_CHECK"),
    ("shoal-test-future-version", "FUTURE_VERSION"),
    ("shoal-test-wasm-command", "WASM_COMMAND"),
    ("shoal-test-wasm-http", "WASM_HTTP"),
    ("shoal-test-wasm-kv", "WASM_KV"),
];

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let target_dir = out_dir.join("guests");

    let crates: Vec<&str> = PLUGINS.iter().map(|p| p.0).chain(TEST_PROGRAMS.iter().map(|t| t.0)).collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--profile=guest")
        .arg("--target=wasm32-wasip2")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for krate in &crates {
        cmd.arg("-p").arg(krate);
    }
    let status = cmd.status().expect("failed to run the nested cargo build of the guest plugins");
    if !status.success() {
        let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if sysroot.is_none_or(|p| !p.exists()) {
            panic!("the wasm32-wasip2 target is not installed; run: rustup target add wasm32-wasip2");
        }
        panic!("building the guest plugins for wasm32-wasip2 failed (see the errors above)");
    }

    let release = target_dir.join("wasm32-wasip2/guest");
    let mut code = String::new();
    let mut rerun = std::collections::BTreeSet::new();
    let mut emit = |krate: &str, konst: &str, code: &mut String| {
        // Libraries (cdylib) are named with underscores, binaries (wasi:cli commands) as the crate.
        let file = [krate.replace('-', "_"), krate.to_string()]
            .into_iter()
            .find(|f| release.join(format!("{f}.wasm")).exists())
            .unwrap_or_else(|| krate.replace('-', "_"));
        let wasm = release.join(format!("{file}.wasm"));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        code.push_str(&format!(
            "/// The `{krate}` component.\npub const {konst}: &[u8] = include_bytes!({:?});\n",
            wasm.display().to_string()
        ));
        for dep in dep_info(&release.join(format!("{file}.d"))) {
            if dep.starts_with(&root) {
                rerun.insert(dep);
            }
        }
    };
    for (krate, konst, _, _) in PLUGINS {
        emit(krate, konst, &mut code);
    }
    for (krate, konst) in TEST_PROGRAMS {
        emit(krate, konst, &mut code);
    }

    code.push_str("\n/// Every default plugin: (kind, name, component bytes).\npub const DEFAULT_PLUGINS: &[(&str, &str, &[u8])] = &[\n");
    for (_, konst, kind, name) in PLUGINS {
        code.push_str(&format!("    ({kind:?}, {name:?}, {konst}),\n"));
    }
    code.push_str("];\n");

    let idents = |names: Vec<String>| names.iter().map(|n| format!("$mac!({n});")).collect::<Vec<_>>().join(" ");
    code.push_str(&format!(
        "\n/// Calls `$mac!(name)` for each default plugin, with its default name in snake_case.\n#[macro_export]\nmacro_rules! foreach_plugin {{ ($mac:ident) => {{ {} }}; }}\n",
        idents(PLUGINS.iter().map(|p| p.3.replace('-', "_")).collect())
    ));
    code.push_str(&format!(
        "\n/// Calls `$mac!(name)` for each test program, named without its `shoal-test-` prefix.\n#[macro_export]\nmacro_rules! foreach_test_program {{ ($mac:ident) => {{ {} }}; }}\n",
        idents(TEST_PROGRAMS.iter().map(|t| t.0.trim_start_matches("shoal-test-").replace('-', "_")).collect())
    ));
    std::fs::write(out_dir.join("gen.rs"), code).expect("write gen.rs");

    for path in &rerun {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed=build.rs");
}

/// The source files a guest was built from, from its cargo dep-info file.
fn dep_info(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let Some((_, deps)) = text.split_once(": ") else { return Vec::new() };
    // Paths are space-separated; spaces inside paths are escaped as "\ ".
    deps.replace("\\ ", "\u{0}").split_whitespace().map(|p| PathBuf::from(p.replace('\u{0}', " "))).collect()
}
