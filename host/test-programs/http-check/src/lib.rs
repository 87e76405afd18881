//! A health check that GETs the path in its config on the task's first port and passes on 2xx/3xx.

use shoal_sdk::HealthCheck;
use shoal_sdk::health::{CheckResult, CheckStatus, CheckTarget};
use shoal_sdk::probe::{ProbeError, http_get};

struct HttpCheck;

impl HealthCheck for HttpCheck {
    fn check(target: CheckTarget) -> CheckResult {
        let path = if target.config.is_empty() { "/".to_owned() } else { target.config.clone() };
        let Some(&port) = target.ports.first() else {
            return CheckResult { status: CheckStatus::Unhealthy, message: "task has no port".into() };
        };
        match http_get(port, &path, 1000) {
            Ok(reply) if (200..400).contains(&reply.status) => {
                CheckResult { status: CheckStatus::Healthy, message: format!("HTTP {}", reply.status) }
            }
            Ok(reply) => CheckResult { status: CheckStatus::Unhealthy, message: format!("HTTP {}", reply.status) },
            Err(ProbeError::Forbidden) => CheckResult { status: CheckStatus::Unhealthy, message: "forbidden".into() },
            Err(e) => CheckResult { status: CheckStatus::Unhealthy, message: format!("{e:?}") },
        }
    }
}

shoal_sdk::export_health_check!(HttpCheck);
