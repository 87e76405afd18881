//! `shoal plugin new` (scaffold a plugin project in Rust, Python, JavaScript or C) and
//! `shoal plugin test` (run conformance cases on a built component).
//!
//! The templates live in `sdk/templates/` and are embedded in the binary, so a new user needs
//! nothing but `shoal` and the language's own tools. Scaffolding never overwrites a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shoal_abi::conformance::{self, Case};
use shoal_abi::{AnyPlugin, PluginKind};
use shoal_runtime::{MemoryKv, PluginScope, Runtime, RuntimeConfig};

/// Languages `shoal plugin new` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with the `shoal-sdk` crate (cargo, wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
    /// C with clang (wasm32-wasi), wasi-libc and `wit-bindgen c`.
    C,
}

/// Arguments of `shoal plugin new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// Plugin kind.
    #[arg(long, value_enum)]
    kind: super::Kind,
    /// Language of the plugin.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Plugin name (lower-case letters, digits and `-`); defaults to the directory's name.
    #[arg(long)]
    name: Option<String>,
    /// Rust only: path of Shoal's `sdk/` crate (defaults to the one this binary was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
    /// Directory to create (it must not exist, or be empty).
    dir: PathBuf,
}

/// Arguments of `shoal plugin test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Plugin kind.
    #[arg(long, value_enum)]
    kind: super::Kind,
    /// The component (.wasm).
    file: PathBuf,
    /// Case files (`{"input": fixture, "expect": answer}`) or directories of `*.json` cases.
    #[arg(required = true)]
    cases: Vec<PathBuf>,
    /// Wall-clock deadline of one call in milliseconds, instead of the kind's default (routers
    /// 50 ms): cases test behaviour, and an interpreted plugin on a loaded machine can miss a
    /// production deadline that it meets on a quiet one (`shoal plugin bench` measures speed).
    #[arg(long, env = "SHOAL_TEST_DEADLINE_MS")]
    deadline_ms: Option<u64>,
}

/// Arguments of `shoal plugin bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Plugin kind.
    #[arg(long, value_enum)]
    kind: super::Kind,
    /// The component (.wasm).
    file: PathBuf,
    /// A fixture or a case: its first input is the one timed.
    #[arg(long)]
    input: PathBuf,
    /// Calls and instantiations to time.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Memory cap of an instance in MiB, instead of the kind's default (routers 32): to find
    /// how much a plugin needs.
    #[arg(long)]
    memory_mib: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The WIT package, copied into every project.
const WIT: &[(&str, &str)] = &[
    ("wit/types.wit", include_str!("../../../../wit/types.wit")),
    ("wit/worlds.wit", include_str!("../../../../wit/worlds.wit")),
];

/// Files of every project: (path, template, executable).
const COMMON: &[(&str, &str, bool)] = &[
    ("test.sh", include_str!("../../../../sdk/templates/common/test.sh"), true),
    (".gitignore", include_str!("../../../../sdk/templates/common/gitignore"), false),
    ("README.md", include_str!("../../../../sdk/templates/common/README.md"), false),
];

/// The test case of each kind's template, which every language's template passes.
fn case(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Allocator => include_str!("../../../../sdk/templates/common/cases/allocator.json"),
        PluginKind::Router => include_str!("../../../../sdk/templates/common/cases/router.json"),
        PluginKind::HealthCheck => include_str!("../../../../sdk/templates/common/cases/health-check.json"),
        PluginKind::Framework => include_str!("../../../../sdk/templates/common/cases/framework.json"),
    }
}

/// Files of a language's projects besides the source: (path, template, executable).
fn lang_files(lang: Lang) -> &'static [(&'static str, &'static str, bool)] {
    match lang {
        Lang::Rust => &[
            ("build.sh", include_str!("../../../../sdk/templates/rust/build.sh"), true),
            ("Cargo.toml", include_str!("../../../../sdk/templates/rust/Cargo.toml"), false),
        ],
        Lang::Python => &[("build.sh", include_str!("../../../../sdk/templates/python/build.sh"), true)],
        Lang::Js => &[("build.sh", include_str!("../../../../sdk/templates/js/build.sh"), true)],
        Lang::C => &[("build.sh", include_str!("../../../../sdk/templates/c/build.sh"), true)],
    }
}

/// The plugin's source: (path, template).
fn source(lang: Lang, kind: PluginKind) -> (&'static str, &'static str) {
    use PluginKind::*;
    macro_rules! t {
        ($lang:literal, $file:literal) => {
            include_str!(concat!("../../../../sdk/templates/", $lang, "/", $file))
        };
    }
    match (lang, kind) {
        (Lang::Rust, Allocator) => ("src/lib.rs", t!("rust", "allocator.rs")),
        (Lang::Rust, Router) => ("src/lib.rs", t!("rust", "router.rs")),
        (Lang::Rust, HealthCheck) => ("src/lib.rs", t!("rust", "health-check.rs")),
        (Lang::Rust, Framework) => ("src/lib.rs", t!("rust", "framework.rs")),
        (Lang::Python, Allocator) => ("app.py", t!("python", "allocator.py")),
        (Lang::Python, Router) => ("app.py", t!("python", "router.py")),
        (Lang::Python, HealthCheck) => ("app.py", t!("python", "health-check.py")),
        (Lang::Python, Framework) => ("app.py", t!("python", "framework.py")),
        (Lang::Js, Allocator) => ("plugin.js", t!("js", "allocator.js")),
        (Lang::Js, Router) => ("plugin.js", t!("js", "router.js")),
        (Lang::Js, HealthCheck) => ("plugin.js", t!("js", "health-check.js")),
        (Lang::Js, Framework) => ("plugin.js", t!("js", "framework.js")),
        (Lang::C, Allocator) => ("plugin.c", t!("c", "allocator.c")),
        (Lang::C, Router) => ("plugin.c", t!("c", "router.c")),
        (Lang::C, HealthCheck) => ("plugin.c", t!("c", "health-check.c")),
        (Lang::C, Framework) => ("plugin.c", t!("c", "framework.c")),
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::C => "C",
    }
}

/// The SDK next to the sources this binary was built from, when it is still there.
fn default_sdk() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk")
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").exists())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// `shoal plugin new`.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let kind = PluginKind::from(args.kind);
    let name = match args.name {
        Some(name) => name,
        None => args
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase().replace(['_', ' ', '.'], "-"))
            .unwrap_or_default(),
    };
    if !valid_name(&name) {
        bail!("invalid plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter (--name)");
    }
    let sdk = match (args.lang, args.sdk) {
        (Lang::Rust, Some(sdk)) => {
            let sdk = sdk.canonicalize().with_context(|| format!("no SDK at {}", sdk.display()))?;
            if !sdk.join("Cargo.toml").exists() {
                bail!("{} is not Shoal's sdk/ crate (no Cargo.toml)", sdk.display());
            }
            sdk.display().to_string()
        }
        (Lang::Rust, None) => default_sdk()
            .context("cannot find Shoal's sdk/ crate; pass --sdk <path to shoal/sdk>")?
            .display()
            .to_string(),
        _ => String::new(),
    };
    if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
        bail!("{} exists and is not empty", args.dir.display());
    }

    let (source_path, source_text) = source(args.lang, kind);
    let world_c = kind.as_str().replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", &name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{kind}}", kind.as_str())
            .replace("{{world_c}}", &world_c)
            .replace("{{lang}}", lang_name(args.lang))
            .replace("{{source}}", source_path)
            .replace("{{sdk}}", &sdk)
    };
    let mut files: Vec<(String, String, bool)> = Vec::new();
    files.extend(WIT.iter().map(|(path, text)| (path.to_string(), text.to_string(), false)));
    files.extend(COMMON.iter().chain(lang_files(args.lang)).map(|(path, text, x)| (path.to_string(), fill(text), *x)));
    files.push((source_path.to_string(), fill(source_text), false));
    files.push((format!("tests/{}.json", kind.as_str()), case(kind).to_string(), false));

    for (path, text, executable) in &files {
        let path = args.dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    println!("created {} plugin `{name}` ({}) in {}", kind.as_str(), lang_name(args.lang), args.dir.display());
    println!("  edit   {}", args.dir.join(source_path).display());
    println!("  test   {}/test.sh", args.dir.display());
    println!(
        "  upload shoal plugin push --kind {} --name {name} --activate {}/build/plugin.wasm",
        kind.as_str(),
        args.dir.display()
    );
    Ok(())
}

/// Every case file named by `paths`: files as given, directories' `*.json` in name order.
fn case_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no *.json case in {}", path.display());
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// `shoal plugin test`: prints one line per case and `N passed, N failed`; fails if any failed.
pub async fn test(args: TestArgs) -> anyhow::Result<()> {
    let kind = PluginKind::from(args.kind);
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut cases = Vec::new();
    for file in case_files(&args.cases)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let case = Case::parse(&text)
            .with_context(|| format!("{}: not a case (`{{\"input\": …, \"expect\": …}}`)", file.display()))?;
        cases.push((file, case));
    }
    let deadline_ms = args.deadline_ms;
    let failed = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let runtime = Runtime::new(RuntimeConfig { max_instances: 16, ..RuntimeConfig::default() })?;
        let mut failed = 0;
        for (file, case) in &cases {
            // A fresh plugin (and store) per case: cases do not see each other's state.
            let scope = PluginScope {
                kv: Some(std::sync::Arc::new(MemoryKv::default())),
                ..PluginScope::detached(kind.as_str(), "test", "local")
            };
            let mut limits = kind.default_limits();
            if let Some(ms) = deadline_ms {
                limits.deadline = std::time::Duration::from_millis(ms);
            }
            let plugin = AnyPlugin::load(&runtime, kind, &bytes, scope, limits)
                .with_context(|| format!("loading {} as a {kind} plugin", args.file.display()))?;
            match conformance::run(&plugin, case) {
                Ok(_) => println!("ok     {}", file.display()),
                Err(e) => {
                    failed += 1;
                    println!("FAILED {}: {}\n  {e}", file.display(), case.description);
                }
            }
        }
        println!("{} passed, {failed} failed", cases.len() - failed);
        Ok(failed)
    })
    .await??;
    if failed > 0 {
        bail!("{failed} case(s) failed");
    }
    Ok(())
}

fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Instantiate a fresh instance of `plugin` (and drop it) `n` times; the median time.
fn time_instantiation(plugin: &AnyPlugin, n: usize) -> anyhow::Result<std::time::Duration> {
    use std::time::Instant;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        match plugin {
            AnyPlugin::Allocator(p) => drop(p.instantiate()?),
            AnyPlugin::Router(p) => drop(p.instantiate()?),
            AnyPlugin::HealthCheck(p) => drop(p.instantiate()?),
            AnyPlugin::Framework(p) => drop(p.instantiate()?),
        }
        samples.push(start.elapsed());
    }
    Ok(median(samples))
}

/// `shoal plugin bench`: size, compile time, instantiation time and per-call time of a component.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use std::time::Instant;
    let kind = PluginKind::from(args.kind);
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let mut input: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", args.input.display()))?;
    if let Ok(case) = Case::parse(&text) {
        input = case.input;
    }
    let iterations = args.iterations.max(1);
    let memory_mib = args.memory_mib;
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let runtime = Runtime::new(RuntimeConfig { max_instances: 64, ..RuntimeConfig::default() })?;
        let start = Instant::now();
        runtime.compile(&bytes)?;
        let compile = start.elapsed();
        let scope = PluginScope {
            kv: Some(std::sync::Arc::new(MemoryKv::default())),
            ..PluginScope::detached(kind.as_str(), "bench", "local")
        };
        let mut limits = kind.default_limits();
        if let Some(mib) = memory_mib {
            limits.memory = mib << 20;
        }
        let plugin = AnyPlugin::load(&runtime, kind, &bytes, scope, limits)?;
        let instantiate = time_instantiation(&plugin, iterations.min(50))?;
        let calls = shoal_abi::check::time_calls(&plugin, &input, iterations)?;
        Ok(serde_json::json!({
            "size_bytes": bytes.len(),
            "compile_ms": compile.as_secs_f64() * 1e3,
            "instantiate_us": instantiate.as_secs_f64() * 1e6,
            "call": calls.call,
            "call_median_us": calls.median.as_secs_f64() * 1e6,
            "call_min_us": calls.min.as_secs_f64() * 1e6,
            "iterations": iterations,
        }))
    })
    .await??;
    if args.json {
        println!("{report}");
    } else {
        println!("size            {} bytes", report["size_bytes"]);
        println!(
            "compile         {:.1} ms (once per digest; cached after)",
            report["compile_ms"].as_f64().unwrap_or(0.0)
        );
        println!("instantiate     {:.1} µs (median)", report["instantiate_us"].as_f64().unwrap_or(0.0));
        println!(
            "{:<15} {:.2} µs (median of {iterations}, reused instance; fastest {:.2} µs)",
            report["call"].as_str().unwrap_or("call"),
            report["call_median_us"].as_f64().unwrap_or(0.0),
            report["call_min_us"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
