//! The host side of the imports a plugin may use: `log`, `clock`, `keyvalue`, `probe` (health
//! checks) and `route-request` (routers).
//!
//! The epoch interruption that bounds a call cannot stop it while it is in the host, so every
//! import must end within the call's deadline by itself. `keyvalue` hands its backend the
//! deadline to wait by ([`HostState::kv_deadline`]); `probe` bounds its connection and reads by
//! it (`probe.rs`). The others never wait: `clock` reads a clock, `route-request` reads the
//! request in memory, `log` hands a line of at most [`MAX_LOG_LINE`] bytes to the host's
//! `tracing` subscriber, which writes it like any host log line (it waits only when the
//! process's own log output is stuck, which stops the host's logging everywhere).
//!
//! This module owns the host bindings of those interfaces (generated from the `host` world of
//! `wit/`); `shoal-abi` reuses them for the four plugin worlds. Each world links only the
//! interfaces it names (see [`Imports`]), so a router that imports `probe` does not load.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker, Resource};

use crate::state::{HostState, RouteRequest};

/// Generated host bindings of the `host` world (every import a plugin may use).
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
    world: "host",
    path: "../../wit",
    // Fixtures (`shoal plugin check`) and API payloads carry these types as JSON.
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    with: { "shoal:plugin/route-request.request": crate::state::RouteRequest },
    imports: { "shoal:plugin/route-request": trappable },
    });
}
pub use generated::*;

use shoal::plugin::{clock, keyvalue, log, probe, route_request, types};

/// Longest log line a plugin can write; longer lines are cut. A plugin must not be able to fill
/// the host's logs (or memory) with one call.
pub const MAX_LOG_LINE: usize = 4096;
/// Longest key a plugin may use in its store, and largest value: the limits of every key-value
/// surface, owned by `shoal-keyspace`.
pub use shoal_keyspace::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
/// Most keys a `list-keys` page returns.
pub const LIST_PAGE: usize = 1000;
/// How much of an HTTP probe's body is returned to the plugin.
pub use crate::probe::MAX_PROBE_BODY;

/// Which host interfaces a world links (beyond the empty WASI context every world gets).
#[derive(Clone, Copy, Debug)]
pub struct Imports {
    /// Link `shoal:plugin/probe`.
    pub probe: bool,
    /// Link `shoal:plugin/route-request`.
    pub route_request: bool,
}

/// Add the host imports to `linker`: the empty-capability WASI p2 interfaces Rust's standard
/// library needs (none of which blocks or needs Tokio, see [`crate::wasi`]), `types`, `log`,
/// `clock`, `keyvalue`, and `probe` when asked.
pub fn add_to_linker(linker: &mut Linker<HostState>, imports: Imports) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    crate::wasi::add_to_linker(linker)?;
    types::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    clock::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    keyvalue::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    if imports.probe {
        probe::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    }
    if imports.route_request {
        route_request::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    }
    Ok(())
}

impl types::Host for HostState {}

impl HostState {
    /// The request of the running `routing.route` call. The guest can only hold a borrow of it
    /// during that call, so outside one this is a host bug or a forged handle: trap.
    fn routed(&self) -> wasmtime::Result<&RouteRequest> {
        if self.routing { Ok(&self.request) } else { Err(wasmtime::format_err!("no request is being routed")) }
    }
}

impl route_request::Host for HostState {
    fn completions(&mut self, wanted: bool) -> wasmtime::Result<()> {
        self.completions = wanted;
        Ok(())
    }
}

impl route_request::HostRequest for HostState {
    fn method(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<String> {
        Ok(self.routed()?.method.as_str().to_owned())
    }

    fn host(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<String> {
        Ok(self.routed()?.host.clone())
    }

    fn path(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<String> {
        Ok(self.routed()?.path.clone())
    }

    fn client_ip(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<String> {
        Ok(self.routed()?.client_ip.map(|ip| ip.to_string()).unwrap_or_default())
    }

    fn header(&mut self, _: Resource<RouteRequest>, name: String) -> wasmtime::Result<Option<String>> {
        let request = self.routed()?;
        Ok(request.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned))
    }

    fn active_requests(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<Vec<u32>> {
        let request = self.routed()?;
        Ok(request.active.iter().map(|n| n.load(std::sync::atomic::Ordering::Relaxed)).collect())
    }

    fn drop(&mut self, _: Resource<RouteRequest>) -> wasmtime::Result<()> {
        // The host only ever lends requests (`borrow<request>`); it owns no table entry to free.
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let scope = &self.scope;
        let (kind, name, version) = (&scope.kind, &scope.name, &scope.version);
        match level {
            log::Level::Trace => tracing::trace!(target: "shoal::plugin", %kind, %name, %version, "{message}"),
            log::Level::Debug => tracing::debug!(target: "shoal::plugin", %kind, %name, %version, "{message}"),
            log::Level::Info => tracing::info!(target: "shoal::plugin", %kind, %name, %version, "{message}"),
            log::Level::Warn => tracing::warn!(target: "shoal::plugin", %kind, %name, %version, "{message}"),
            log::Level::Error => tracing::error!(target: "shoal::plugin", %kind, %name, %version, "{message}"),
        }
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn monotonic_ns(&mut self) -> u64 {
        use std::sync::OnceLock;
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

fn kv_err(error: crate::KvError) -> keyvalue::Error {
    keyvalue::Error::Other(error.to_string())
}

impl keyvalue::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        kv.get_until(&key, self.kv_deadline()).map_err(kv_err)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(keyvalue::Error::TooLarge);
        }
        kv.set_until(&key, &value, self.kv_deadline()).map_err(kv_err)
    }

    fn delete(&mut self, key: String) -> Result<(), keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        kv.delete_until(&key, self.kv_deadline()).map_err(kv_err)
    }

    fn exists(&mut self, key: String) -> Result<bool, keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        kv.get_until(&key, self.kv_deadline()).map(|v| v.is_some()).map_err(kv_err)
    }

    fn list_keys(&mut self, prefix: String, cursor: Option<String>) -> Result<keyvalue::KeyResponse, keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(keyvalue::Error::TooLarge);
        }
        // Ask for one more than a page to know whether another page follows.
        let mut keys = kv.list_until(&prefix, cursor.as_deref(), LIST_PAGE + 1, self.kv_deadline()).map_err(kv_err)?;
        let cursor = if keys.len() > LIST_PAGE {
            keys.truncate(LIST_PAGE);
            keys.last().cloned()
        } else {
            None
        };
        Ok(keyvalue::KeyResponse { keys, cursor })
    }
}

fn check_key(key: &str) -> Result<(), keyvalue::Error> {
    if key.is_empty() {
        return Err(keyvalue::Error::Other("empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(keyvalue::Error::TooLarge);
    }
    Ok(())
}
