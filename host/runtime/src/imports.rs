//! The host side of the imports a plugin may use: `log`, `clock`, `keyvalue`, `probe` (health
//! checks) and `route-request` (routers).
//!
//! This module owns the host bindings of those interfaces (generated from the `host` world of
//! `wit/`); `shoal-abi` reuses them for the four plugin worlds. Each world links only the
//! interfaces it names (see [`Imports`]), so a router that imports `probe` does not load.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
pub const MAX_PROBE_BODY: usize = 64 * 1024;

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
        kv.get(&key).map_err(kv_err)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(keyvalue::Error::TooLarge);
        }
        kv.set(&key, &value).map_err(kv_err)
    }

    fn delete(&mut self, key: String) -> Result<(), keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        kv.delete(&key).map_err(kv_err)
    }

    fn exists(&mut self, key: String) -> Result<bool, keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        check_key(&key)?;
        kv.get(&key).map(|v| v.is_some()).map_err(kv_err)
    }

    fn list_keys(&mut self, prefix: String, cursor: Option<String>) -> Result<keyvalue::KeyResponse, keyvalue::Error> {
        let kv = self.scope.kv.as_ref().ok_or(keyvalue::Error::AccessDenied)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(keyvalue::Error::TooLarge);
        }
        // Ask for one more than a page to know whether another page follows.
        let mut keys = kv.list(&prefix, cursor.as_deref(), LIST_PAGE + 1).map_err(kv_err)?;
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

impl probe::Host for HostState {
    fn http_get(&mut self, port: u16, path: String, timeout_ms: u32) -> Result<probe::HttpReply, probe::ProbeError> {
        let mut stream = self.probe_connect(port, timeout_ms)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let host = self.probe.as_ref().map(|t| t.address.clone()).unwrap_or_default();
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        if path.contains(['\r', '\n', ' ']) {
            return Err(probe::ProbeError::Protocol("path contains whitespace or line breaks".into()));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: shoal-health/0.1\r\nConnection: close\r\n\r\n"
        );
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.write_all(request.as_bytes()).map_err(io_err)?;
        // Read the head and at most MAX_PROBE_BODY bytes of body; never more.
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        let head_len = loop {
            let n = stream.read(&mut chunk).map_err(io_err)?;
            if n == 0 {
                return Err(probe::ProbeError::Protocol("connection closed before a response head".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => break len,
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
                Ok(httparse::Status::Partial) => {
                    return Err(probe::ProbeError::Protocol("response head over 64 KiB".into()));
                }
                Err(err) => return Err(probe::ProbeError::Protocol(err.to_string())),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let _ = response.parse(&buf[..head_len]);
        let status = response.code.unwrap_or(0);
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let mut body = buf[head_len..].to_vec();
        while body.len() < MAX_PROBE_BODY {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(MAX_PROBE_BODY);
        Ok(probe::HttpReply { status, headers, body })
    }

    fn tcp_connect(&mut self, port: u16, timeout_ms: u32) -> Result<(), probe::ProbeError> {
        self.probe_connect(port, timeout_ms).map(drop)
    }
}

fn io_err(err: std::io::Error) -> probe::ProbeError {
    match err.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => probe::ProbeError::Timeout,
        _ => probe::ProbeError::Connect(err.to_string()),
    }
}

impl HostState {
    fn probe_connect(&self, port: u16, timeout_ms: u32) -> Result<TcpStream, probe::ProbeError> {
        let target = self.probe.as_ref().ok_or(probe::ProbeError::Forbidden)?;
        if !target.ports.contains(&port) {
            return Err(probe::ProbeError::Forbidden);
        }
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let addr = (target.address.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| probe::ProbeError::Connect(e.to_string()))?
            .next()
            .ok_or_else(|| probe::ProbeError::Connect(format!("{} does not resolve", target.address)))?;
        TcpStream::connect_timeout(&addr, timeout).map_err(io_err)
    }
}
