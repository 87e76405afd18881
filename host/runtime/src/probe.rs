//! The `probe` imports of health-check plugins: `http-get` and `tcp-connect` to the one target a
//! call may reach, each bounded by a **deadline** for the whole probe — the earliest of the
//! timeout the plugin asks for, the check's own timeout and the plugin call's deadline — not per
//! read. A target that trickles a byte at a time therefore holds the thread no longer than the
//! call may run, and the thread is free when the checker gives up on the call.
//!
//! `http-get` returns the first [`MAX_PROBE_BODY`] bytes of the body, as the WIT says: a chunked
//! body is decoded, a `Content-Length` body read up to its length (not until the peer closes).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::imports::shoal::plugin::probe::{self, ProbeError};
use crate::state::HostState;

/// Most body bytes an HTTP probe returns.
pub const MAX_PROBE_BODY: usize = 64 * 1024;
/// Largest response head an HTTP probe reads.
const MAX_HEAD: usize = 64 * 1024;

impl probe::Host for HostState {
    fn http_get(&mut self, port: u16, path: String, timeout_ms: u32) -> Result<probe::HttpReply, ProbeError> {
        let deadline = self.probe_deadline(timeout_ms);
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        if path.contains(['\r', '\n', ' ']) {
            return Err(ProbeError::Protocol("path contains whitespace or line breaks".into()));
        }
        let mut stream = self.probe_connect(port, deadline)?;
        let host = self.probe.as_ref().map(|t| t.address.clone()).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: shoal-health/0.1\r\nConnection: close\r\n\r\n"
        );
        stream.set_write_timeout(Some(remaining(deadline)?)).map_err(io_err)?;
        stream.write_all(request.as_bytes()).map_err(io_err)?;
        let mut reader = Deadlined { stream, deadline, buf: Vec::with_capacity(4096), at: 0 };
        let (head_len, status, headers) = reader.head()?;
        reader.at = head_len;
        let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            reader.chunked()?
        } else {
            let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
            reader.plain(length.map_or(MAX_PROBE_BODY, |n| n.min(MAX_PROBE_BODY)), length.is_some())?
        };
        Ok(probe::HttpReply { status, headers, body })
    }

    fn tcp_connect(&mut self, port: u16, timeout_ms: u32) -> Result<(), ProbeError> {
        let deadline = self.probe_deadline(timeout_ms);
        self.probe_connect(port, deadline).map(drop)
    }
}

impl HostState {
    /// When a probe asked for `timeout_ms` must be over: that, the check's deadline, or the
    /// call's, whichever comes first.
    fn probe_deadline(&self, timeout_ms: u32) -> Instant {
        let asked = Instant::now() + Duration::from_millis(u64::from(timeout_ms.max(1)));
        [Some(asked), self.probe.as_ref().and_then(|t| t.deadline), self.call_deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(asked)
    }

    fn probe_connect(&self, port: u16, deadline: Instant) -> Result<TcpStream, ProbeError> {
        let target = self.probe.as_ref().ok_or(ProbeError::Forbidden)?;
        if !target.ports.contains(&port) {
            return Err(ProbeError::Forbidden);
        }
        let addr = (target.address.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| ProbeError::Connect(e.to_string()))?
            .next()
            .ok_or_else(|| ProbeError::Connect(format!("{} does not resolve", target.address)))?;
        TcpStream::connect_timeout(&addr, remaining(deadline)?).map_err(io_err)
    }
}

/// What is left until `deadline`; a timeout once it has passed.
fn remaining(deadline: Instant) -> Result<Duration, ProbeError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(ProbeError::Timeout),
    }
}

fn io_err(err: std::io::Error) -> ProbeError {
    match err.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ProbeError::Timeout,
        _ => ProbeError::Connect(err.to_string()),
    }
}

/// A response read under one deadline: `buf` holds what came, `at` how much of it is consumed.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
    at: usize,
}

impl Deadlined {
    /// Reads more into `buf`; `Ok(false)` at the end of the stream.
    fn fill(&mut self) -> Result<bool, ProbeError> {
        self.stream.set_read_timeout(Some(remaining(self.deadline)?)).map_err(io_err)?;
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).map_err(io_err)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The head: its length, the status and the headers.
    fn head(&mut self) -> Result<(usize, u16, Vec<(String, String)>), ProbeError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    return Ok((len, response.code.unwrap_or(0), headers));
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err(ProbeError::Protocol("response head over 64 KiB".into())),
                Err(err) => return Err(ProbeError::Protocol(err.to_string())),
            }
            if !self.fill()? {
                return Err(ProbeError::Protocol("connection closed before a response head".into()));
            }
        }
    }

    /// A body without chunks: `want` bytes, or what comes before the end of the stream (which
    /// is an error when a `Content-Length` promised more).
    fn plain(&mut self, want: usize, promised: bool) -> Result<Vec<u8>, ProbeError> {
        while self.buf.len() - self.at < want {
            if !self.fill()? {
                if promised {
                    return Err(ProbeError::Protocol("connection closed before the body's Content-Length".into()));
                }
                break;
            }
        }
        let end = self.buf.len().min(self.at + want);
        Ok(self.buf[self.at..end].to_vec())
    }

    /// A chunked body, decoded, up to [`MAX_PROBE_BODY`] bytes of it.
    fn chunked(&mut self) -> Result<Vec<u8>, ProbeError> {
        let mut body = Vec::new();
        while body.len() < MAX_PROBE_BODY {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ProbeError::Protocol(format!("bad chunk size `{size}`")))?;
            if size == 0 {
                break;
            }
            let take = size.min(MAX_PROBE_BODY - body.len());
            while self.buf.len() - self.at < take {
                if !self.fill()? {
                    return Err(ProbeError::Protocol("connection closed inside a chunk".into()));
                }
            }
            body.extend_from_slice(&self.buf[self.at..self.at + take]);
            if take < size {
                break;
            }
            self.at += take;
            self.line()?;
        }
        Ok(body)
    }

    /// The next line (without its CRLF).
    fn line(&mut self) -> Result<String, ProbeError> {
        loop {
            if let Some(end) = self.buf[self.at..].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.at..self.at + end]).into_owned();
                self.at += end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.at > 1024 {
                return Err(ProbeError::Protocol("a chunk's size line over 1 KiB".into()));
            }
            if !self.fill()? {
                return Err(ProbeError::Protocol("connection closed inside a chunked body".into()));
            }
        }
    }
}
