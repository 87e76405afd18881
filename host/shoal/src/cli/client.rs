//! The CLI's client of the HTTP API, and how it prints answers.

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use shoal_abi::PluginKind;

use super::*;

/// The exit codes of `shoal`, as `shoal --help` lists them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error (bad input file, no token, a failed local command)
  2  usage error (unknown command or flag, missing or invalid argument)
  3  the server refused the request (an HTTP error answer: 4xx or 5xx; the message says which)
  4  the server could not be reached (connection refused, DNS, timeout)
  5  a wait ended without success (`--wait`: the deployment failed or `--timeout` passed)";

/// Why a CLI command failed, for its exit code (see [`EXIT_CODES`]); carried in the
/// `anyhow::Error` the command returns.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with an error status.
    Refused { status: reqwest::StatusCode, message: String },
    /// No answer: connection refused or failed, timeout.
    Unreachable { api: String, reason: String },
    /// A `--wait` that ended without success.
    WaitFailed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { status, message } => write!(f, "{status}: {message}"),
            Failure::Unreachable { api, reason } => write!(f, "cannot reach the Shoal API at {api}: {reason}"),
            Failure::WaitFailed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn unreachable(api: &str, e: &reqwest::Error) -> anyhow::Error {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        Failure::Unreachable { api: api.to_owned(), reason }.into()
    }

    /// A 404-like refusal found by the CLI itself (a name missing from a list the API answered).
    pub(crate) fn not_found(message: String) -> anyhow::Error {
        Failure::Refused { status: reqwest::StatusCode::NOT_FOUND, message }.into()
    }
}

/// The process exit code for an error a command returned (see [`EXIT_CODES`]).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        Some(Failure::Refused { .. }) => 3,
        Some(Failure::Unreachable { .. }) => 4,
        Some(Failure::WaitFailed(_)) => 5,
        None => 1,
    }
}

/// An error answer's status and message as a [`Failure::Refused`].
fn refused(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message = if message.is_empty() { "request failed".to_owned() } else { message };
    Failure::Refused { status, message }.into()
}

/// A JSON object of strings as `k=v,k2=v2` (labels, attributes).
pub(crate) fn name_values(v: &Value) -> String {
    let pairs: Vec<String> =
        v.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    pairs.join(",")
}

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    /// The first API given: requests are built against it.
    pub(crate) api: String,
    /// Every API given (`SHOAL_API` may list several masters, comma-separated): a request none
    /// of the earlier ones accepts a connection for goes to the next.
    pub(crate) apis: Vec<String>,
    pub(crate) token: String,
    /// How answers are printed (`-o`, `-q`).
    pub(crate) out: output::Output,
}

impl Client {
    pub(crate) fn new(remote: Remote) -> anyhow::Result<Self> {
        let token = match remote.token {
            Some(t) => t,
            None => std::fs::read_to_string(".shoal/admin.token").map(|t| t.trim().to_owned()).context(
                "no token: pass --token or set SHOAL_TOKEN (shoal dev prints one and saves it in ./.shoal/admin.token)",
            )?,
        };
        let apis: Vec<String> = remote
            .api
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let api = apis.first().cloned().context("no API given (--api or SHOAL_API)")?;
        Ok(Client { http: reqwest::Client::new(), api, apis, token, out: remote.out })
    }

    /// Follow a Server-Sent Events stream until it ends, handing `on_data` the `data:` of each
    /// event.
    pub(crate) async fn each_event(
        &self,
        request: reqwest::RequestBuilder,
        mut on_data: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        self.each_event_named(request, |_, data| on_data(data)).await
    }

    /// Like [`Client::each_event`], with each event's name (`event:`; empty when unnamed).
    pub(crate) async fn each_event_named(
        &self,
        request: reqwest::RequestBuilder,
        mut on_event: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let response = self.execute(request).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            return Err(refused(status, &body));
        }
        let mut stream = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut name = String::new();
        while let Some(chunk) = stream.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if let Some(event) = line.strip_prefix("event:") {
                    name = event.trim_start().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    on_event(&name, data.trim_start());
                } else if line.is_empty() {
                    name.clear();
                }
            }
        }
        Ok(())
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The URL of `/v1/kv/{ns}` followed by the key's segments, each percent-encoded.
    pub(crate) fn kv_url(&self, ns: &str, key: Option<&str>) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.api).with_context(|| format!("invalid API URL {}", self.api))?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| anyhow::anyhow!("invalid API URL {}", self.api))?;
            segments.pop_if_empty().extend(["v1", "kv", ns]);
            if let Some(key) = key {
                segments.extend(key.split('/'));
            }
        }
        Ok(url)
    }

    /// Send and return the raw body and headers of a successful answer.
    pub(crate) async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(Vec<u8>, reqwest::header::HeaderMap)> {
        let response = self.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| Failure::unreachable(&self.api, &e))?.to_vec();
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        Ok((body, headers))
    }

    /// Send `request` to the first API that accepts a connection.
    async fn execute(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = request.bearer_auth(&self.token).build()?;
        // A streamed body cannot be sent twice: such a request goes to the first API only.
        if self.apis.len() == 1 || request.try_clone().is_none() {
            return self.http.execute(request).await.map_err(|e| Failure::unreachable(&self.api, &e));
        }
        let mut failures = Vec::new();
        for base in &self.apis {
            let Some(mut attempt) = request.try_clone() else { break };
            let base_url = reqwest::Url::parse(base).with_context(|| format!("invalid API URL {base}"))?;
            let url = attempt.url_mut();
            let _ = url.set_scheme(base_url.scheme());
            url.set_host(base_url.host_str()).with_context(|| format!("invalid API URL {base}"))?;
            let _ = url.set_port(base_url.port_or_known_default());
            match self.http.execute(attempt).await {
                Ok(response) => return Ok(response),
                Err(e) if e.is_connect() => failures.push(format!("{base}: {e}")),
                Err(e) => return Err(Failure::unreachable(base, &e)),
            }
        }
        Err(Failure::Unreachable { api: self.apis.join(","), reason: failures.join("; ") }.into())
    }

    /// The item of the list at `path` (`{<list>: [...]}`) whose `key` is `value`, for the nouns
    /// the API has no single-item endpoint for; a 404 refusal (exit code 3) when none is.
    pub(crate) async fn find_in_list(
        &self,
        path: &str,
        list: &str,
        key: &str,
        value: &str,
        what: &str,
    ) -> anyhow::Result<Value> {
        let v = self.send(self.http.get(self.url(path))).await?;
        let found = v[list].as_array().into_iter().flatten().find(|item| item[key] == value).cloned();
        found.ok_or_else(|| Failure::not_found(format!("no {what} `{value}`")))
    }

    /// Send and return the JSON of a successful answer (`null` for an empty body).
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let (body, _) = self.send_raw(request).await?;
        Ok(if body.is_empty() { Value::Null } else { serde_json::from_slice(&body)? })
    }
}

/// The message of an error body: the API's `{"error": {"message": …}}` or a framework's
/// `{"error": "…"}`.
pub(crate) fn error_message(v: &Value) -> Option<String> {
    v["error"]["message"].as_str().or_else(|| v["error"].as_str()).map(str::to_owned)
}

pub(crate) fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A plugin kind on the command line (`--kind`), listed in `--help`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Places tasks on agents' offers (world `allocator`).
    Allocator,
    /// Picks the instance a gateway request goes to (world `router`).
    Router,
    /// Judges an instance's health (world `health-check`).
    HealthCheck,
    /// Schedules a framework's tasks (world `framework`).
    Framework,
}

impl From<Kind> for PluginKind {
    fn from(kind: Kind) -> PluginKind {
        match kind {
            Kind::Allocator => PluginKind::Allocator,
            Kind::Router => PluginKind::Router,
            Kind::HealthCheck => PluginKind::HealthCheck,
            Kind::Framework => PluginKind::Framework,
        }
    }
}
