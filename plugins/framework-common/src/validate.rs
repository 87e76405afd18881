//! What every task template (an app or a job) has: command, resources, environment, labels and
//! constraints, read strictly from JSON and validated with messages that name the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_sdk::labels;
use shoal_sdk::scheduling::TaskCommand;

use crate::constraint::Constraint;
use crate::json::Fields;
use crate::place::Demand;

/// Longest command accepted.
pub const MAX_CMD: usize = 64 * 1024;
/// Most environment variables or labels.
pub const MAX_ENTRIES: usize = 256;

/// Checks an app or job id: `[a-z0-9-]{1,63}`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok =
        (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(format!("id must match [a-z0-9-]{{1,63}}, got {id:?}")) }
}

/// The part of a definition that says what one task runs and needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskTemplate {
    /// Shell command (exactly one of `cmd` and `wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Wasm component digest, sha256 hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    /// CPU cores per task, > 0.
    pub cpus: f64,
    /// Memory per task, MiB, > 0.
    pub mem: f64,
    /// Disk per task, MiB, ≥ 0.
    pub disk: f64,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Labels copied to every task.
    pub labels: BTreeMap<String, String>,
    /// Constraints, `[field, OPERATOR, value?]`.
    pub constraints: Vec<Vec<String>>,
}

fn positive(name: &str, x: f64, allow_zero: bool) -> Result<f64, String> {
    let ok = x.is_finite() && if allow_zero { x >= 0.0 } else { x > 0.0 };
    if ok {
        Ok(x)
    } else if allow_zero {
        Err(format!("{name} must be a finite number >= 0, got {x}"))
    } else {
        Err(format!("{name} must be a finite number > 0, got {x}"))
    }
}

impl TaskTemplate {
    /// Reads `cmd`, `wasm`, `cpus`, `mem`, `disk`, `env`, `labels`, `constraints` from `f` and
    /// validates them; `default_cpus`/`default_mem` apply when absent.
    pub fn read(f: &mut Fields, default_cpus: f64, default_mem: f64) -> Result<Self, String> {
        let cmd: Option<String> = f.take("cmd")?;
        let wasm: Option<String> = f.take("wasm")?;
        match (&cmd, &wasm) {
            (Some(_), Some(_)) => return Err("give exactly one of cmd and wasm, not both".into()),
            (None, None) => return Err("cmd or wasm is required".into()),
            (Some(c), None) => {
                if c.trim().is_empty() {
                    return Err("cmd must not be empty".into());
                }
                if c.contains('\0') {
                    return Err("cmd must not contain NUL".into());
                }
                if c.len() > MAX_CMD {
                    return Err(format!("cmd is longer than {MAX_CMD} bytes"));
                }
            }
            (None, Some(w)) => {
                if w.len() != 64 || !w.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(format!("wasm must be a sha256 digest (64 lower-case hex digits), got {w:?}"));
                }
            }
        }
        let cpus = positive("cpus", f.take("cpus")?.unwrap_or(default_cpus), false)?;
        let mem = positive("mem", f.take("mem")?.unwrap_or(default_mem), false)?;
        let disk = positive("disk", f.take("disk")?.unwrap_or(0.0), true)?;
        let env: BTreeMap<String, String> = f.take("env")?.unwrap_or_default();
        if env.len() > MAX_ENTRIES {
            return Err(format!("env: at most {MAX_ENTRIES} variables"));
        }
        for (k, v) in &env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!(
                    "env: invalid variable {k:?} (names are non-empty without '=' or NUL, values without NUL)"
                ));
            }
        }
        let labels: BTreeMap<String, String> = f.take("labels")?.unwrap_or_default();
        if labels.len() > MAX_ENTRIES {
            return Err(format!("labels: at most {MAX_ENTRIES} labels"));
        }
        for (k, v) in &labels {
            if k.is_empty() || k.len() > 256 || v.len() > 4096 || k.contains('\0') || v.contains('\0') {
                return Err(format!("labels: invalid label {k:?} (names 1..=256 bytes, values up to 4096, no NUL)"));
            }
            if labels::is_reserved(k) {
                return Err(format!("labels: {k} is set by the framework, not by the definition"));
            }
            if k == labels::WEIGHT && v.parse::<u32>().is_err() {
                return Err(format!("labels: shoal.weight must be a non-negative integer, got {v:?}"));
            }
        }
        // The master refuses such a launch anyway; refusing the definition says so at once.
        labels::check_launch(&labels).map_err(|e| format!("labels: {e}"))?;
        let constraints: Vec<Vec<String>> = f.take("constraints")?.unwrap_or_default();
        Constraint::parse_all(&constraints)?;
        Ok(TaskTemplate { cmd, wasm, cpus, mem, disk, env, labels, constraints })
    }

    /// The command of every task.
    pub fn command(&self) -> TaskCommand {
        match (&self.cmd, &self.wasm) {
            (_, Some(w)) => TaskCommand::Wasm(w.clone()),
            (Some(c), None) => TaskCommand::Shell(c.clone()),
            (None, None) => TaskCommand::Shell("false".into()),
        }
    }

    /// The parsed constraints (validated when read, so errors here mean a corrupt store: an
    /// unparsable constraint is dropped).
    pub fn compiled_constraints(&self) -> Vec<Constraint> {
        self.constraints.iter().enumerate().filter_map(|(i, c)| Constraint::parse(c, i).ok()).collect()
    }

    /// What one task needs, with `ports` ports.
    pub fn demand(&self, ports: u32) -> Demand {
        Demand { cpus: self.cpus, mem: self.mem, disk: self.disk, ports }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<TaskTemplate, String> {
        let mut f = Fields::parse(json.as_bytes()).unwrap();
        let t = TaskTemplate::read(&mut f, 0.1, 32.0)?;
        f.finish()?;
        Ok(t)
    }

    #[test]
    fn ids() {
        assert!(check_id("web-1").is_ok());
        assert!(check_id("Web").is_err());
        assert!(check_id("").is_err());
        assert!(check_id(&"a".repeat(64)).is_err());
        assert!(check_id("a.b").is_err());
    }

    #[test]
    fn template_validation() {
        let t = read(r#"{"cmd":"sleep 1"}"#).unwrap();
        assert_eq!((t.cpus, t.mem, t.disk), (0.1, 32.0, 0.0));
        assert_eq!(read(r#"{}"#).unwrap_err(), "cmd or wasm is required");
        assert!(read(r#"{"cmd":"x","wasm":"y"}"#).unwrap_err().contains("exactly one"));
        assert_eq!(read(r#"{"cmd":"  "}"#).unwrap_err(), "cmd must not be empty");
        assert_eq!(read("{\"cmd\":\"a\\u0000b\"}").unwrap_err(), "cmd must not contain NUL");
        assert!(read(r#"{"wasm":"abc"}"#).unwrap_err().starts_with("wasm must be a sha256"));
        assert!(read(&format!(r#"{{"wasm":"{}"}}"#, "a".repeat(64))).is_ok());
        assert!(read(r#"{"cmd":"x","cpus":0}"#).unwrap_err().starts_with("cpus must be"));
        assert!(read(r#"{"cmd":"x","mem":-1}"#).unwrap_err().starts_with("mem must be"));
        assert!(read(r#"{"cmd":"x","disk":-1}"#).unwrap_err().starts_with("disk must be"));
        assert!(read(r#"{"cmd":"x","cpus":"1"}"#).unwrap_err().starts_with("cpus: invalid type"));
        assert!(read(r#"{"cmd":"x","env":{"A=B":"1"}}"#).unwrap_err().starts_with("env: invalid variable"));
        assert!(read(r#"{"cmd":"x","labels":{"shoal.service":"y"}}"#).unwrap_err().contains("set by the framework"));
        assert!(read(r#"{"cmd":"x","labels":{"shoal.weight":"heavy"}}"#).unwrap_err().contains("shoal.weight"));
        let system = read(r#"{"cmd":"x","labels":{"shoal.kv":"orders,_plugin-framework-service"}}"#).unwrap_err();
        assert!(system.contains("`_plugin-framework-service`, a system namespace"), "{system}");
        assert!(read(r#"{"cmd":"x","labels":{"shoal.kv":"orders,sessions"}}"#).is_ok());
        assert!(
            read(r#"{"cmd":"x","constraints":[["rack","FOO"]]}"#)
                .unwrap_err()
                .contains("unknown constraint operator FOO")
        );
        assert!(read(r#"{"cmd":"x","constraints":[["rack","LIKE","("]]}"#).unwrap_err().contains("invalid regex"));
        assert_eq!(read(r#"{"cmd":"x","cmdd":1}"#).unwrap_err(), r#"unknown field "cmdd""#);
    }
}
