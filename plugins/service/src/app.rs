//! The app definition: strict parsing, validation with messages naming the field, and the health
//! check spec handed to the agent.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_framework_common::json::Fields;
use shoal_framework_common::validate::{TaskTemplate, check_id};

/// Most instances one app may ask for.
pub const MAX_INSTANCES: u32 = 10_000;
/// Most ports per task.
pub const MAX_PORTS: usize = 100;
/// Most health checks per app (only the first is sent to the agent).
pub const MAX_HEALTH_CHECKS: usize = 8;

/// `ports`: a count, or one name per port (names become `PORT_<NAME>` variables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    /// This many anonymous ports.
    Count(u32),
    /// Named ports.
    Names(Vec<String>),
}

impl Ports {
    /// Number of ports.
    pub fn count(&self) -> u32 {
        match self {
            Ports::Count(n) => *n,
            Ports::Names(v) => v.len() as u32,
        }
    }
}

/// How a rolling deploy may trade capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStrategy {
    /// Fraction of `instances` that must stay healthy while old tasks are killed (0..=1).
    pub minimum_health_capacity: f64,
    /// Fraction of `instances` that may run on top of `instances` during a deploy (0..=1).
    pub maximum_over_capacity: f64,
}

/// One health check, as the app declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `http`, `tcp`, `command` or `wasm`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Index into the task's ports (http, tcp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_index: Option<u32>,
    /// HTTP path (http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Shell command (command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Health-check plugin name (wasm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Plugin configuration (wasm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Failures in the first `grace_ms` do not count.
    pub grace_ms: u64,
    /// Time between two checks.
    pub interval_ms: u64,
    /// Time one check may take.
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy.
    pub max_failures: u32,
}

/// An app: what to run, how many, where, and how to replace it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppDef {
    /// App id, `[a-z0-9-]{1,63}`.
    pub id: String,
    /// Number of tasks wanted.
    pub instances: u32,
    /// Command, resources, env, labels, constraints.
    #[serde(flatten)]
    pub task: TaskTemplate,
    /// Ports per task.
    pub ports: Ports,
    /// Health checks; only the first is run.
    pub health_checks: Vec<HealthCheck>,
    /// First launch delay after a failure, seconds.
    pub backoff_seconds: f64,
    /// Growth of the delay per consecutive failure.
    pub backoff_factor: f64,
    /// Cap of the delay, seconds.
    pub max_launch_delay_seconds: f64,
    /// Rolling deploy bounds.
    pub upgrade_strategy: UpgradeStrategy,
}

fn in_range(name: &str, x: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if x.is_finite() && x >= lo && x <= hi { Ok(x) } else { Err(format!("{name} must be within {lo}..={hi}, got {x}")) }
}

impl AppDef {
    /// Parses and validates a definition sent to `PUT /apps/<path_id>`. Errors are `(status,
    /// message)`: 400 for malformed or invalid fields, 422 for a definition that can never deploy.
    pub fn parse(body: &[u8], path_id: &str) -> Result<AppDef, (u16, String)> {
        Self::parse_inner(body, path_id).map_err(|e| (400, e)).and_then(|def| {
            let u = &def.upgrade_strategy;
            if u.minimum_health_capacity >= 1.0 && u.maximum_over_capacity <= 0.0 && def.instances > 0 {
                return Err((
                    422,
                    "upgrade_strategy: minimum_health_capacity 1 with maximum_over_capacity 0 can never replace a task; \
                     lower one or raise the other"
                        .into(),
                ));
            }
            Ok(def)
        })
    }

    fn parse_inner(body: &[u8], path_id: &str) -> Result<AppDef, String> {
        let mut f = Fields::parse(body)?;
        let id: String = f.take("id")?.unwrap_or_else(|| path_id.to_string());
        check_id(&id)?;
        if id != path_id {
            return Err(format!("id {id:?} does not match the path's {path_id:?}"));
        }
        let instances: u32 = f.take("instances")?.unwrap_or(1);
        if instances > MAX_INSTANCES {
            return Err(format!("instances must be within 0..={MAX_INSTANCES}, got {instances}"));
        }
        let task = TaskTemplate::read(&mut f, 0.1, 32.0)?;
        let ports = match f.take_raw("ports") {
            None => Ports::Count(0),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) if n as usize <= MAX_PORTS => Ports::Count(n as u32),
                _ => return Err(format!("ports must be a count 0..={MAX_PORTS} or a list of names, got {n}")),
            },
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    let Value::String(name) = item else { return Err(format!("ports[{i}] must be a name (string)")) };
                    let ok = !name.is_empty()
                        && name.len() <= 32
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if !ok {
                        return Err(format!("ports[{i}]: name must be 1..=32 of [A-Za-z0-9_-], got {name:?}"));
                    }
                    if names.contains(&name) {
                        return Err(format!("ports[{i}]: duplicate name {name:?}"));
                    }
                    names.push(name);
                }
                if names.len() > MAX_PORTS {
                    return Err(format!("ports: at most {MAX_PORTS} ports"));
                }
                Ports::Names(names)
            }
            Some(_) => return Err("ports must be a count or a list of names".into()),
        };
        let raw_checks: Vec<Value> = f.take("health_checks")?.unwrap_or_default();
        if raw_checks.len() > MAX_HEALTH_CHECKS {
            return Err(format!("health_checks: at most {MAX_HEALTH_CHECKS} checks (only the first is run)"));
        }
        let health_checks = raw_checks
            .into_iter()
            .enumerate()
            .map(|(i, v)| HealthCheck::read(v, i, ports.count()))
            .collect::<Result<Vec<_>, _>>()?;
        let backoff_seconds = in_range("backoff_seconds", f.take("backoff_seconds")?.unwrap_or(1.0), 0.0, 86_400.0)?;
        let backoff_factor = in_range("backoff_factor", f.take("backoff_factor")?.unwrap_or(1.15), 1.0, 100.0)?;
        let max_launch_delay_seconds =
            in_range("max_launch_delay_seconds", f.take("max_launch_delay_seconds")?.unwrap_or(300.0), 0.0, 86_400.0)?;
        let upgrade_strategy = match f.take_raw("upgrade_strategy") {
            None => UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 },
            Some(v) => {
                let mut u = Fields::from_value(v, "upgrade_strategy.")?;
                let min = in_range(
                    "upgrade_strategy.minimum_health_capacity",
                    u.take("minimum_health_capacity")?.unwrap_or(1.0),
                    0.0,
                    1.0,
                )?;
                let over = in_range(
                    "upgrade_strategy.maximum_over_capacity",
                    u.take("maximum_over_capacity")?.unwrap_or(1.0),
                    0.0,
                    1.0,
                )?;
                u.finish()?;
                UpgradeStrategy { minimum_health_capacity: min, maximum_over_capacity: over }
            }
        };
        f.finish()?;
        Ok(AppDef {
            id,
            instances,
            task,
            ports,
            health_checks,
            backoff_seconds,
            backoff_factor,
            max_launch_delay_seconds,
            upgrade_strategy,
        })
    }

    /// Whether `other` differs from `self` in more than `instances` (a new version is needed).
    pub fn differs_beyond_instances(&self, other: &AppDef) -> bool {
        let mut a = self.clone();
        a.instances = other.instances;
        a != *other
    }

    /// Launch delay after `failures` consecutive failures, in milliseconds.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let exp = i32::try_from(failures - 1).unwrap_or(i32::MAX).min(1000);
        let secs = (self.backoff_seconds * self.backoff_factor.powi(exp)).min(self.max_launch_delay_seconds);
        (secs * 1000.0).round() as u64
    }
}

impl HealthCheck {
    fn read(v: Value, index: usize, ports: u32) -> Result<HealthCheck, String> {
        let at = format!("health_checks[{index}]");
        let mut f = Fields::from_value(v, &format!("{at}."))?;
        let kind: String = f.require("type")?;
        let mut hc = HealthCheck {
            kind: kind.clone(),
            port_index: None,
            path: None,
            command: None,
            plugin: None,
            config: None,
            grace_ms: 10_000,
            interval_ms: 10_000,
            timeout_ms: 2_000,
            max_failures: 3,
        };
        match kind.as_str() {
            "http" | "tcp" => {
                let pi: u32 = f.take("port_index")?.unwrap_or(0);
                if pi >= ports {
                    return Err(if ports == 0 {
                        format!("{at}.port_index: a {kind} check needs a port, but the app has no ports")
                    } else {
                        format!("{at}.port_index {pi} is out of range: the app has {ports} ports")
                    });
                }
                hc.port_index = Some(pi);
                if kind == "http" {
                    let path: String = f.take("path")?.unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') || path.len() > 4096 || path.chars().any(char::is_whitespace) {
                        return Err(format!("{at}.path must start with '/' and hold no spaces, got {path:?}"));
                    }
                    hc.path = Some(path);
                }
            }
            "command" => {
                let command: String = f.require("command")?;
                if command.trim().is_empty() || command.contains('\0') || command.len() > 4096 {
                    return Err(format!("{at}.command must be a non-empty command without NUL"));
                }
                hc.command = Some(command);
            }
            "wasm" => {
                let plugin: String = f.require("plugin")?;
                if plugin.is_empty() || plugin.len() > 128 {
                    return Err(format!("{at}.plugin must name a health-check plugin"));
                }
                hc.plugin = Some(plugin);
                hc.config = Some(f.take("config")?.unwrap_or_default());
            }
            other => return Err(format!("{at}.type must be one of http, tcp, command, wasm, got {other:?}")),
        }
        hc.grace_ms = f.take("grace_ms")?.unwrap_or(hc.grace_ms);
        hc.interval_ms = f.take("interval_ms")?.unwrap_or(hc.interval_ms);
        hc.timeout_ms = f.take("timeout_ms")?.unwrap_or(hc.timeout_ms);
        hc.max_failures = f.take("max_failures")?.unwrap_or(hc.max_failures);
        const DAY: u64 = 86_400_000;
        if !(100..=DAY).contains(&hc.interval_ms) {
            return Err(format!("{at}.interval_ms must be within 100..={DAY}"));
        }
        if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
            return Err(format!("{at}.timeout_ms must be within 1..=interval_ms ({})", hc.interval_ms));
        }
        if hc.grace_ms > DAY {
            return Err(format!("{at}.grace_ms must be at most {DAY}"));
        }
        if hc.max_failures == 0 {
            return Err(format!("{at}.max_failures must be at least 1"));
        }
        // A field of another kind (`path` on a tcp check) is refused as unknown.
        f.finish()?;
        Ok(hc)
    }

    /// The agent's check spec (`shoal.health` label) for a task holding `ports`.
    pub fn spec_json(&self, ports: &[u16]) -> String {
        let port = self.port_index.and_then(|i| ports.get(i as usize).copied());
        let mut v = match self.kind.as_str() {
            "http" => json!({"type": "http", "port": port, "path": self.path.as_deref().unwrap_or("/")}),
            "tcp" => json!({"type": "tcp", "port": port}),
            "command" => json!({"type": "command", "command": self.command}),
            _ => json!({"type": "wasm", "plugin": self.plugin, "config": self.config.as_deref().unwrap_or("")}),
        };
        if let Value::Object(m) = &mut v {
            m.insert("grace_ms".into(), self.grace_ms.into());
            m.insert("interval_ms".into(), self.interval_ms.into());
            m.insert("timeout_ms".into(), self.timeout_ms.into());
            m.insert("max_failures".into(), self.max_failures.into());
        }
        v.to_string()
    }

    /// How long a task may stay unhealthy before it is killed: `(max_failures - 1) × interval_ms`.
    pub fn kill_after_ms(&self) -> u64 {
        u64::from(self.max_failures.saturating_sub(1)) * self.interval_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AppDef, (u16, String)> {
        AppDef::parse(json.as_bytes(), "web")
    }
    fn err(json: &str) -> String {
        parse(json).unwrap_err().1
    }

    #[test]
    fn full_definition() {
        let def = parse(
            r#"{"id":"web","instances":5,"cmd":"python3 -m http.server $PORT0","cpus":0.1,"mem":32,"disk":0,
            "ports":["http"],"env":{"K":"V"},"labels":{"shoal.route.path":"/web"},
            "constraints":[["@hostname","UNIQUE"],["rack","GROUP_BY","2"],["rack","LIKE","r[12]"],["rack","UNLIKE","r3"],["rack","CLUSTER","r1"],["@hostname","MAX_PER","2"]],
            "health_checks":[{"type":"http","port_index":0,"path":"/","grace_ms":10000,"interval_ms":10000,"timeout_ms":2000,"max_failures":3}],
            "backoff_seconds":1,"backoff_factor":1.15,"max_launch_delay_seconds":300,
            "upgrade_strategy":{"minimum_health_capacity":1.0,"maximum_over_capacity":1.0}}"#,
        )
        .unwrap();
        assert_eq!(def.instances, 5);
        assert_eq!(def.ports.count(), 1);
        assert_eq!(def.task.compiled_constraints().len(), 6);
        let spec: Value = serde_json::from_str(&def.health_checks[0].spec_json(&[31002])).unwrap();
        assert_eq!(
            spec,
            json!({"type":"http","port":31002,"path":"/","grace_ms":10000,"interval_ms":10000,"timeout_ms":2000,"max_failures":3})
        );
        // Round trip through the store.
        let back: AppDef = serde_json::from_str(&serde_json::to_string(&def).unwrap()).unwrap();
        assert_eq!(back, def);
        // Defaults.
        let def = parse(r#"{"cmd":"x"}"#).unwrap();
        assert_eq!((def.instances, def.ports.count(), def.backoff_factor), (1, 0, 1.15));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(err(r#"{"id":"api","cmd":"x"}"#).contains("does not match the path"));
        assert!(AppDef::parse(br#"{"cmd":"x"}"#, "Bad_Id").unwrap_err().1.starts_with("id must match"));
        assert!(err(r#"{"cmd":"x","instances":10001}"#).starts_with("instances must be within 0..=10000"));
        assert!(err(r#"{"cmd":"x","instances":-1}"#).starts_with("instances: invalid value"));
        assert!(err(r#"{"cmd":"x","ports":101}"#).starts_with("ports must be a count"));
        assert!(err(r#"{"cmd":"x","ports":["a","a"]}"#).contains("duplicate name"));
        assert_eq!(err(r#"{"cmd":"x","instancez":1}"#), r#"unknown field "instancez""#);
        assert!(
            err(r#"{"cmd":"x","constraints":[["rack","FOO"]]}"#)
                .ends_with("unknown constraint operator FOO (one of UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER)")
        );
        assert!(
            err(r#"{"cmd":"x","ports":1,"health_checks":[{"type":"http","port_index":1}]}"#)
                .contains("health_checks[0].port_index 1 is out of range: the app has 1 ports")
        );
        assert!(err(r#"{"cmd":"x","health_checks":[{"type":"tcp"}]}"#).contains("the app has no ports"));
        assert_eq!(
            err(r#"{"cmd":"x","ports":1,"health_checks":[{"type":"tcp","path":"/"}]}"#),
            r#"unknown field "health_checks[0].path""#
        );
        assert!(
            err(r#"{"cmd":"x","health_checks":[{"type":"grpc"}]}"#).contains("health_checks[0].type must be one of")
        );
        assert!(
            err(r#"{"cmd":"x","health_checks":[{"type":"command","command":"true","timeout_ms":20000}]}"#)
                .contains("timeout_ms")
        );
        assert!(err(r#"{"cmd":"x","backoff_factor":0.5}"#).starts_with("backoff_factor must be within"));
        assert!(
            err(r#"{"cmd":"x","upgrade_strategy":{"minimum_health_capacity":2}}"#)
                .starts_with("upgrade_strategy.minimum_health_capacity must be within")
        );
        let (status, msg) =
            parse(r#"{"cmd":"x","upgrade_strategy":{"minimum_health_capacity":1,"maximum_over_capacity":0}}"#)
                .unwrap_err();
        assert_eq!(status, 422, "{msg}");
        assert_eq!(parse("{").unwrap_err().0, 400);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut def =
            parse(r#"{"cmd":"x","backoff_seconds":1,"backoff_factor":2,"max_launch_delay_seconds":5}"#).unwrap();
        assert_eq!((def.backoff_ms(0), def.backoff_ms(1), def.backoff_ms(2), def.backoff_ms(3)), (0, 1000, 2000, 4000));
        assert_eq!(def.backoff_ms(4), 5000);
        assert_eq!(def.backoff_ms(u32::MAX), 5000);
        def.instances = 9;
        let other =
            parse(r#"{"cmd":"x","backoff_seconds":1,"backoff_factor":2,"max_launch_delay_seconds":5}"#).unwrap();
        assert!(!def.differs_beyond_instances(&other));
        let changed =
            parse(r#"{"cmd":"y","backoff_seconds":1,"backoff_factor":2,"max_launch_delay_seconds":5}"#).unwrap();
        assert!(def.differs_beyond_instances(&changed));
    }
}
