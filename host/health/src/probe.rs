//! Running one check once: the four kinds, each bounded by the check's timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;

use crate::{CheckKind, CheckSpec, Target};

/// A check's answer: passed or not, and why, for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The target works.
    pub passed: bool,
    /// What was seen (`HTTP 200`, `connection refused`, the command's output…).
    pub message: String,
}

impl Outcome {
    fn pass(message: impl Into<String>) -> Self {
        Outcome { passed: true, message: message.into() }
    }
    fn fail(message: impl Into<String>) -> Self {
        Outcome { passed: false, message: message.into() }
    }
}

/// Why a `wasm` check could not be run (it counts as a failed check).
#[derive(Debug, thiserror::Error)]
pub enum WasmCheckError {
    /// No active health-check plugin of that name.
    #[error("no active health-check plugin `{0}`")]
    NoPlugin(String),
    /// The plugin's call failed (trap, deadline, bad answer).
    #[error("health-check plugin `{plugin}` failed: {cause}")]
    Failed {
        /// The plugin.
        plugin: String,
        /// Why.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How a `wasm` check is run: the node supplies this, calling the named health-check plugin from
/// its registry. It is called on a blocking thread; plugin calls have their own deadline, and the
/// check's timeout bounds the wait as well.
pub trait WasmCheck: Send + Sync + 'static {
    /// Check `target` once with the plugin named `plugin`; `Err` when the plugin is missing, not a
    /// health check, or failed (trap, deadline), which counts as a failed check.
    fn check(
        &self,
        plugin: &str,
        task_id: &str,
        target: &Target,
        config: &str,
        timeout: Duration,
    ) -> Result<Outcome, WasmCheckError>;
}

/// What every check of one checker shares: a pooled HTTP client (connections kept alive between
/// checks of the same target, so ten thousand HTTP checks a second do not churn ports) and the
/// Wasm runner.
pub(crate) struct Probes {
    http: Client<HttpConnector, Empty<Bytes>>,
    pub(crate) wasm: Option<Arc<dyn WasmCheck>>,
}

impl Probes {
    pub(crate) fn new(wasm: Option<Arc<dyn WasmCheck>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(4)
            .build(connector);
        Probes { http, wasm }
    }

    /// Run `spec` once against `target`, within the spec's timeout.
    pub(crate) async fn run(&self, id: &str, target: &Target, spec: &CheckSpec) -> Outcome {
        let timeout = spec.timeout();
        let run = async {
            match &spec.kind {
                CheckKind::Http { port, path } => self.http(target, *port, path).await,
                CheckKind::Tcp { port } => tcp(target, *port).await,
                CheckKind::Command { command } => command_check(target, command).await,
                CheckKind::Wasm { plugin, config } => self.wasm(id, target, plugin, config, timeout).await,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!("no answer within {} ms", spec.timeout_ms)),
        }
    }

    async fn http(&self, target: &Target, port: Option<u16>, path: &str) -> Outcome {
        let Some(addr) = target.socket(port) else { return Outcome::fail("the target has no port") };
        let uri = match format!("http://{addr}{path}").parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(e) => return Outcome::fail(format!("bad URI: {e}")),
        };
        let request = http::Request::get(uri)
            .header(http::header::USER_AGENT, "shoal-health/0.1")
            .body(Empty::new())
            .expect("a GET with a valid URI");
        match self.http.request(request).await {
            Ok(response) => {
                let status = response.status();
                // Read (a bounded part of) the body so the connection goes back to the pool.
                let mut body = response.into_body();
                let mut read = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > 64 * 1024 {
                        break;
                    }
                }
                let message = format!("HTTP {}", status.as_u16());
                if status.is_success() || status.is_redirection() {
                    Outcome::pass(message)
                } else {
                    Outcome::fail(message)
                }
            }
            Err(e) => Outcome::fail(error_chain(&e)),
        }
    }

    async fn wasm(&self, id: &str, target: &Target, plugin: &str, config: &str, timeout: Duration) -> Outcome {
        let Some(wasm) = self.wasm.clone() else {
            return Outcome::fail("Wasm checks are not available on this checker");
        };
        let (id, target, plugin, config) = (id.to_owned(), target.clone(), plugin.to_owned(), config.to_owned());
        let task = tokio::task::spawn_blocking(move || wasm.check(&plugin, &id, &target, &config, timeout));
        match task.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::fail(e.to_string()),
            Err(e) => Outcome::fail(format!("the check panicked: {e}")),
        }
    }
}

async fn tcp(target: &Target, port: Option<u16>) -> Outcome {
    let Some(addr) = target.socket(port) else { return Outcome::fail("the target has no port") };
    match tokio::net::TcpStream::connect(&addr).await {
        Ok(stream) => {
            // Close with a reset: thousands of checks a second would otherwise leave as many
            // sockets in TIME_WAIT and run the machine out of ephemeral ports. (Tokio deprecates
            // SO_LINGER because a non-zero linger blocks the thread on drop; zero never does.)
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            Outcome::pass(format!("connected to {addr}"))
        }
        Err(e) => Outcome::fail(format!("{addr}: {e}")),
    }
}

async fn command_check(target: &Target, command: &str) -> Outcome {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("SHOAL_CHECK_HOST", &target.address)
        .env("SHOAL_CHECK_PORT", target.ports.first().map(u16::to_string).unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A timed-out check drops this future: the process is killed, not left behind.
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::fail(format!("could not start sh: {e}")),
    };
    let mut output = Vec::new();
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let mut err_bytes = Vec::new();
    let (mut out, mut err) = ((&mut out).take(64 * 1024), (&mut err).take(64 * 1024));
    let _ = tokio::join!(out.read_to_end(&mut output), err.read_to_end(&mut err_bytes));
    output.extend_from_slice(&err_bytes);
    let status = match child.wait().await {
        Ok(status) => status,
        Err(e) => return Outcome::fail(format!("wait: {e}")),
    };
    let text = crate::bound_output(String::from_utf8_lossy(&output).trim());
    let message = if text.is_empty() { format!("{status}") } else { format!("{status}: {text}") };
    if status.success() { Outcome::pass(message) } else { Outcome::fail(message) }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Target {
    /// `address:port`, with `port` or the first port.
    pub(crate) fn socket(&self, port: Option<u16>) -> Option<String> {
        let port = port.or_else(|| self.ports.first().copied())?;
        Some(match self.address.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{}:{port}", self.address),
        })
    }
}
