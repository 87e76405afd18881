//! Tidy checks, so that `cargo test` is the whole gate: formatting, every Rust file says what it
//! is for in a `//!` module doc on its first line, rooms of a readable size (files and
//! functions), and typed errors at crate boundaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use syn::spanned::Spanned;
use syn::visit::Visit;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry")) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// The library and binary sources of the host's crates: `host/<crate>/src/**.rs`, without the
/// guests under `host/test-programs` (their signatures are the WIT's) and without tests,
/// benchmarks and examples.
fn host_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root().join("host")).expect("read host/").map(|e| e.expect("entry").path()) {
        if krate.file_name().is_some_and(|n| n == "test-programs") || !krate.join("src").is_dir() {
            continue;
        }
        rust_files(&krate.join("src"), &mut files);
    }
    files.sort();
    assert!(files.len() > 30, "found only {} host sources", files.len());
    files
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).expect("read");
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", relative(path)))
}

/// Whether an item is `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test"))
}

/// A file is a room with one purpose: past this many lines (unit tests not counted) it usually
/// hides a seam along which to split it.
const MAX_FILE_LINES: usize = 800;

/// Files allowed past [`MAX_FILE_LINES`], each with the reason.
const LONG_FILES: &[(&str, &str)] = &[];

/// A function past this many lines hides steps worth naming.
const MAX_FN_LINES: usize = 120;

/// Functions allowed past [`MAX_FN_LINES`] (`file::name`), each with the reason.
const LONG_FNS: &[(&str, &str)] = &[];

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in ["host", "sdk", "plugins", "tests"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 30, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).expect("read").starts_with("//!"))
        .map(|f| relative(f))
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` doc: {missing:?}");
}

/// The lines of a file that are not its `#[cfg(test)]` items.
fn code_lines(path: &Path) -> usize {
    let file = parse(path);
    let total = std::fs::read_to_string(path).expect("read").lines().count();
    let tests: usize = file
        .items
        .iter()
        .filter(|item| match item {
            syn::Item::Mod(m) => is_test_only(&m.attrs),
            syn::Item::Fn(f) => is_test_only(&f.attrs),
            _ => false,
        })
        .map(|item| item.span().end().line - item.span().start().line + 1)
        .sum();
    total - tests
}

#[test]
fn no_host_source_file_is_over_800_lines() {
    let long: Vec<String> = host_sources()
        .iter()
        .filter_map(|f| {
            let name = relative(f);
            let lines = code_lines(f);
            (lines > MAX_FILE_LINES && !LONG_FILES.iter().any(|(n, _)| *n == name)).then(|| format!("{name}: {lines}"))
        })
        .collect();
    assert!(long.is_empty(), "split these files along their seams (or list them in LONG_FILES with why): {long:?}");
}

/// Collects functions longer than [`MAX_FN_LINES`] and `pub fn`s that return `Result<_, String>`.
#[derive(Default)]
struct Finder {
    file: String,
    long: Vec<String>,
    stringly: Vec<String>,
    /// Depth inside `#[cfg(test)]` items.
    tests: usize,
    /// Depth inside trait impls, whose signatures the trait decides (checked where it is declared).
    trait_impls: usize,
}

impl Finder {
    /// A function: its signature, and its body when it has one (its length is counted from
    /// `fn` to the closing brace, without its doc comment).
    fn function(&mut self, public: bool, sig: &syn::Signature, body: Option<&syn::Block>) {
        if self.tests > 0 {
            return;
        }
        let name = format!("{}::{}", self.file, sig.ident);
        let lines = body.map_or(0, |b| b.brace_token.span.close().end().line - sig.fn_token.span.start().line + 1);
        if lines > MAX_FN_LINES && !LONG_FNS.iter().any(|(n, _)| *n == name) {
            self.long.push(format!("{name}: {lines}"));
        }
        if public && self.trait_impls == 0 && returns_string_error(&sig.output) {
            self.stringly.push(name);
        }
    }
}

/// `-> Result<T, String>` (by whatever path `Result` is named).
fn returns_string_error(output: &syn::ReturnType) -> bool {
    let syn::ReturnType::Type(_, ty) = output else { return false };
    let syn::Type::Path(path) = ty.as_ref() else { return false };
    let Some(last) = path.path.segments.last() else { return false };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    last.ident == "Result"
        && matches!(args.args.iter().nth(1), Some(syn::GenericArgument::Type(syn::Type::Path(e))) if e.path.is_ident("String"))
}

fn is_pub(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let test = usize::from(is_test_only(&f.attrs));
        self.tests += test;
        self.function(is_pub(&f.vis), &f.sig, Some(&f.block));
        syn::visit::visit_item_fn(self, f);
        self.tests -= test;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.function(is_pub(&f.vis), &f.sig, Some(&f.block));
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        // A trait's methods are as public as the trait.
        self.function(true, &f.sig, f.default.as_ref());
        syn::visit::visit_trait_item_fn(self, f);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let trait_impl = usize::from(i.trait_.is_some());
        self.trait_impls += trait_impl;
        syn::visit::visit_item_impl(self, i);
        self.trait_impls -= trait_impl;
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let test = usize::from(is_test_only(&m.attrs));
        self.tests += test;
        syn::visit::visit_item_mod(self, m);
        self.tests -= test;
    }
}

fn find() -> Finder {
    let mut finder = Finder::default();
    for path in host_sources() {
        finder.file = relative(&path);
        finder.visit_file(&parse(&path));
    }
    finder
}

#[test]
fn no_host_function_is_over_120_lines() {
    let long = find().long;
    assert!(long.is_empty(), "name the steps of these functions (or list them in LONG_FNS with why): {long:?}");
}

/// Errors say what failed in types: a `pub fn` of a host crate returns a `thiserror` enum (or
/// another typed error), never `Result<_, String>`. The CLI's `anyhow` is typed enough.
#[test]
fn no_host_pub_fn_returns_a_string_error() {
    let stringly = find().stringly;
    assert!(stringly.is_empty(), "give these a typed error: {stringly:?}");
}

#[test]
fn code_is_formatted() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out =
        Command::new(cargo).args(["fmt", "--all", "--check"]).current_dir(root()).output().expect("run cargo fmt");
    assert!(
        out.status.success(),
        "run `cargo fmt --all`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
