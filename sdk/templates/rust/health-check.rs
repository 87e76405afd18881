//! {{name}}: a health check for Shoal.
//!
//! Healthy when the task's first port accepts TCP connections. The probe reaches only the
//! checked task's own ports; `probe::http_get(port, "/health", timeout)` reads an HTTP answer.

use shoal_sdk::health::{CheckResult, CheckStatus, CheckTarget};
use shoal_sdk::{HealthCheck, probe};

struct Check;

impl HealthCheck for Check {
    fn check(target: CheckTarget) -> CheckResult {
        let Some(&port) = target.ports.first() else {
            return CheckResult { status: CheckStatus::Unhealthy, message: "the task has no port to probe".into() };
        };
        match probe::tcp_connect(port, 1000) {
            Ok(()) => CheckResult { status: CheckStatus::Healthy, message: format!("port {port} accepts connections") },
            Err(e) => CheckResult { status: CheckStatus::Unhealthy, message: format!("port {port}: {e:?}") },
        }
    }
}

shoal_sdk::export_health_check!(Check);
