//! The compiled guest components of Shoal: the default plugins (`plugins/`) and the test
//! programs (`host/test-programs/`), built for `wasm32-wasip2` by this crate's build script as
//! part of the ordinary cargo build and embedded here as bytes.
//!
//! `shoal dev` registers [`DEFAULT_PLUGINS`]; tests load the others. Every guest must have a test
//! of the same name (see `tests/all/main.rs`): the `foreach_*!` macros make a missing one a
//! compile error.

include!(concat!(env!("OUT_DIR"), "/gen.rs"));
