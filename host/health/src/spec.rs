//! What a health check is: its kind and its timing, as an app definition or a registration
//! declares it (JSON), validated before anything runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default grace period: failures in the first 10 s of a task (before its first pass) do not count.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Default interval between the starts of two checks.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Default time a check may take before it counts as failed.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Default number of consecutive failures after which the task is given up (killed and replaced
/// by its framework).
pub const DEFAULT_MAX_FAILURES: u32 = 3;

/// Shortest interval accepted.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest interval, grace period or timeout accepted (one day).
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Longest HTTP path or command accepted.
pub const MAX_TEXT: usize = 4096;

/// One health check of a task or an external instance.
///
/// ```json
/// {"type": "http", "path": "/health", "interval_ms": 1000, "timeout_ms": 500}
/// {"type": "tcp", "port": 5432}
/// {"type": "command", "command": "test -f /tmp/ready"}
/// {"type": "wasm", "plugin": "json-status", "config": "{\"field\": \"status\"}"}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// What the check does.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Milliseconds after the start during which failures do not count, unless the target passed
    /// once already (default 10 000).
    #[serde(default = "grace")]
    pub grace_ms: u64,
    /// Milliseconds between the starts of two checks (default 10 000, at least 100).
    #[serde(default = "interval")]
    pub interval_ms: u64,
    /// Milliseconds a check may take before it counts as failed (default 2 000, at most the
    /// interval).
    #[serde(default = "timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures (after the grace period) after which the target is given up
    /// (default 3, at least 1).
    #[serde(default = "max_failures")]
    pub max_failures: u32,
}

/// The kinds of check. Unknown fields are refused here (serde cannot refuse them on the
/// flattening [`CheckSpec`]), so a misspelt timing field is an error too.
///
/// A check's `type` is its name, and only its name: serde's derived code for an internally
/// tagged enum also takes a variant's index (`"type": 0` would be an `http` check), so the
/// derived impls are generated as inherent functions (`remote = "Self"`) and the traits wrap
/// them, [`Deserialize`] refusing a `type` that is not a string first. The JSON form is the
/// derived one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields, remote = "Self")]
pub enum CheckKind {
    /// `GET path` on the target; a 2xx or 3xx status passes.
    Http {
        /// Port to check; default the target's first port.
        #[serde(default)]
        port: Option<u16>,
        /// Path, with a leading `/` (default `/`).
        #[serde(default = "root")]
        path: String,
    },
    /// A TCP connection to the target is accepted.
    Tcp {
        /// Port to check; default the target's first port.
        #[serde(default)]
        port: Option<u16>,
    },
    /// `sh -c command` on the checking machine exits 0. `SHOAL_CHECK_HOST` and
    /// `SHOAL_CHECK_PORT` hold the target's address.
    Command {
        /// Shell command.
        command: String,
    },
    /// A health-check plugin (world `health-check`), whose only network capability is a probe of
    /// the target's own address and ports.
    Wasm {
        /// Name of the plugin in the registry.
        plugin: String,
        /// Configuration handed to the plugin with every check.
        #[serde(default)]
        config: String,
    },
}

impl Serialize for CheckKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CheckKind::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for CheckKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Checks are small JSON objects (an app's label, a registration, a stored definition):
        // reading one into a value first costs nothing that matters.
        let value = serde_json::Value::deserialize(deserializer)?;
        if let Some(kind) = value.get("type").filter(|kind| !kind.is_string()) {
            return Err(D::Error::custom(format_args!(
                "a check's `type` must be `http`, `tcp`, `command` or `wasm`, not {kind}"
            )));
        }
        CheckKind::deserialize(value).map_err(D::Error::custom)
    }
}

fn grace() -> u64 {
    DEFAULT_GRACE_MS
}
fn interval() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn max_failures() -> u32 {
    DEFAULT_MAX_FAILURES
}
fn root() -> String {
    "/".into()
}

/// Why a check specification was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid health check: {0}")]
pub struct SpecError(pub String);

impl CheckSpec {
    /// A check of `kind` with the default timing.
    pub fn new(kind: CheckKind) -> Self {
        CheckSpec {
            kind,
            grace_ms: DEFAULT_GRACE_MS,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_failures: DEFAULT_MAX_FAILURES,
        }
    }

    /// Refuse what cannot run: out-of-range timings, a timeout longer than the interval (checks
    /// never overlap), a path without `/`, an empty command or plugin name.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError(m));
        if !(MIN_INTERVAL_MS..=MAX_DURATION_MS).contains(&self.interval_ms) {
            return bad(format!("interval_ms must be within {MIN_INTERVAL_MS}..={MAX_DURATION_MS}"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return bad(format!("timeout_ms must be within 1..=interval_ms ({})", self.interval_ms));
        }
        if self.grace_ms > MAX_DURATION_MS {
            return bad(format!("grace_ms must be at most {MAX_DURATION_MS}"));
        }
        if self.max_failures == 0 {
            return bad("max_failures must be at least 1".into());
        }
        match &self.kind {
            CheckKind::Http { path, port } => {
                if !path.starts_with('/') || path.len() > MAX_TEXT || path.chars().any(|c| c.is_whitespace()) {
                    return bad(format!("path must start with '/', hold no spaces and be at most {MAX_TEXT} bytes"));
                }
                if *port == Some(0) {
                    return bad("port 0".into());
                }
            }
            CheckKind::Tcp { port } => {
                if *port == Some(0) {
                    return bad("port 0".into());
                }
            }
            CheckKind::Command { command } => {
                if command.trim().is_empty() || command.len() > MAX_TEXT {
                    return bad(format!("command must be non-empty and at most {MAX_TEXT} bytes"));
                }
            }
            CheckKind::Wasm { plugin, config } => {
                if plugin.is_empty() || plugin.len() > 64 {
                    return bad("plugin must name a health-check plugin".into());
                }
                if config.len() > 64 * 1024 {
                    return bad("config must be at most 64 KiB".into());
                }
            }
        }
        Ok(())
    }

    /// The interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The grace period as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// `http`, `tcp`, `command` or `wasm`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Command { .. } => "command",
            CheckKind::Wasm { .. } => "wasm",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_with_defaults() {
        let spec: CheckSpec = serde_json::from_str(r#"{"type":"http","path":"/health","interval_ms":1000}"#).unwrap();
        assert_eq!(spec.kind, CheckKind::Http { port: None, path: "/health".into() });
        assert_eq!((spec.interval_ms, spec.timeout_ms, spec.grace_ms, spec.max_failures), (1000, 2000, 10_000, 3));
        // The default timeout is longer than this interval: refused, not clamped silently.
        assert!(spec.validate().unwrap_err().0.contains("timeout_ms"));
        let spec: CheckSpec = serde_json::from_str(r#"{"type":"tcp"}"#).unwrap();
        spec.validate().unwrap();
    }

    #[test]
    fn bad_specs_are_refused() {
        for json in [
            r#"{"type":"http","path":"health"}"#,
            r#"{"type":"http","port":0}"#,
            r#"{"type":"command","command":"  "}"#,
            r#"{"type":"wasm","plugin":""}"#,
            r#"{"type":"tcp","interval_ms":10}"#,
            r#"{"type":"tcp","max_failures":0}"#,
            r#"{"type":"tcp","timeout_ms":0}"#,
        ] {
            let spec: CheckSpec = serde_json::from_str(json).unwrap();
            assert!(spec.validate().is_err(), "{json} was accepted");
        }
        for json in [r#"{"type":"udp"}"#, r#"{"type":"tcp","intervall_ms":5}"#, r#"{"path":"/"}"#] {
            assert!(serde_json::from_str::<CheckSpec>(json).is_err(), "{json} parsed");
        }
    }

    #[test]
    fn a_check_type_is_a_name_never_an_index() {
        // serde's derived code would take these as the first, second… variant.
        for json in [
            r#"{"type":0}"#,
            r#"{"type":1,"port":5432}"#,
            r#"{"type":0,"path":"/","interval_ms":1000,"timeout_ms":500}"#,
            r#"{"type":null}"#,
            r#"{"type":true}"#,
        ] {
            let err = serde_json::from_str::<CheckSpec>(json).unwrap_err().to_string();
            assert!(err.contains("a check's `type` must be `http`, `tcp`, `command` or `wasm`, not"), "{json}: {err}");
            assert!(serde_json::from_str::<CheckKind>(json).is_err(), "{json} parsed as a kind");
        }
        // Inside what carries a check (a registration, an app), the same.
        let err =
            serde_json::from_str::<Vec<CheckSpec>>(r#"[{"type":"tcp"},{"type":2,"command":"true"}]"#).unwrap_err();
        assert!(err.to_string().contains("not 2"), "{err}");
    }

    #[test]
    fn the_json_form_is_the_derived_one() {
        let specs = [
            CheckSpec::new(CheckKind::Http { port: Some(8080), path: "/health".into() }),
            CheckSpec::new(CheckKind::Tcp { port: None }),
            CheckSpec::new(CheckKind::Command { command: "test -f /tmp/ready".into() }),
            CheckSpec::new(CheckKind::Wasm { plugin: "json-status".into(), config: "{}".into() }),
        ];
        let json: Vec<String> = specs.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
        let timing = r#""grace_ms":10000,"interval_ms":10000,"timeout_ms":2000,"max_failures":3"#;
        assert_eq!(
            json,
            [
                format!(r#"{{"type":"http","port":8080,"path":"/health",{timing}}}"#),
                format!(r#"{{"type":"tcp","port":null,{timing}}}"#),
                format!(r#"{{"type":"command","command":"test -f /tmp/ready",{timing}}}"#),
                format!(r#"{{"type":"wasm","plugin":"json-status","config":"{{}}",{timing}}}"#),
            ]
        );
        for (spec, json) in specs.iter().zip(&json) {
            assert_eq!(&serde_json::from_str::<CheckSpec>(json).unwrap(), spec, "{json} round trip");
        }
    }
}
