//! The CLI's client of the HTTP API, and how it prints answers.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;
use shoal_abi::PluginKind;

use super::*;

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
        Ok(Client { http: reqwest::Client::new(), api, apis, token })
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
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Shoal API at {}", self.api))?;
        if !response.status().is_success() {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!("{status}: {}", error_message(&body).unwrap_or_else(|| "request failed".into()));
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
        let body = response.bytes().await?.to_vec();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| error_message(&v))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{status}: {message}");
        }
        Ok((body, headers))
    }

    /// Send `request` to the first API that accepts a connection.
    async fn execute(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = request.bearer_auth(&self.token).build()?;
        // A streamed body cannot be sent twice: such a request goes to the first API only.
        if self.apis.len() == 1 || request.try_clone().is_none() {
            return self
                .http
                .execute(request)
                .await
                .with_context(|| format!("cannot reach the Shoal API at {}", self.api));
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
                Err(e) => return Err(e).with_context(|| format!("cannot reach the Shoal API at {base}")),
            }
        }
        bail!("cannot reach the Shoal API at {}", failures.join("; "))
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

pub(crate) fn kind_of(text: &str) -> anyhow::Result<PluginKind> {
    Ok(text.parse::<PluginKind>()?)
}
