//! The task-label contract: the `shoal.*` labels a task may carry and what reads them.
//!
//! Frameworks put labels on the tasks they launch (the WIT `task-spec.labels`); the host reads
//! some of them to turn tasks into services, health checks, routes and key-value grants. This
//! module is the one place those names are spelled: the master, the agent, the node, the
//! frameworks (through the SDK, which re-exports it) and the validation of app definitions all
//! use the constants and the one table [`ALL`].
//!
//! Each label has an owner: labels the framework sets from what it knows (the service name, the
//! definition's version, its health check) are **reserved** — an app definition may not set them,
//! or it could claim another app's service. And each label is either **consumed** by the host
//! (turned into a field of the service instance: its service, weight, version, check) or copied
//! onto the instance's labels for others to read (routes, key-value grants).

/// The service a task is an instance of (its app id). Set by the framework.
pub const SERVICE: &str = "shoal.service";
/// The version of the definition that launched the task. Set by the framework.
pub const VERSION: &str = "shoal.version";
/// The task's health check, as the JSON of a check spec. Set by the framework.
pub const HEALTH: &str = "shoal.health";
/// The framework that launched the task. Set by the framework.
pub const FRAMEWORK: &str = "shoal.framework";
/// The batch job a task is a run of. Set by the batch framework.
pub const JOB: &str = "shoal.job";
/// The instance's weight for weighted routers, a non-negative integer (default 1). Set by apps.
pub const WEIGHT: &str = "shoal.weight";
/// Comma-separated state-store namespaces a Wasm task may open as `wasi:keyvalue` buckets. Set
/// by apps.
pub const KV: &str = "shoal.kv";
/// Path prefix of the gateway route to the app's service; the route exists while an instance
/// carries it. Set by apps.
pub const ROUTE_PATH: &str = "shoal.route.path";
/// Host name of that route (any host when absent). Set by apps.
pub const ROUTE_HOST: &str = "shoal.route.host";
/// Router plugin of that route (the gateway's default when absent). Set by apps.
pub const ROUTE_ROUTER: &str = "shoal.route.router";
/// `true` to strip the route's prefix before forwarding. Set by apps.
pub const ROUTE_STRIP_PREFIX: &str = "shoal.route.strip_prefix";

/// Who may set a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Only the framework, from what it knows; reserved in app definitions.
    Framework,
    /// The app's definition.
    App,
}

/// One label of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// Its name.
    pub name: &'static str,
    /// Who sets it.
    pub owner: Owner,
    /// The host turns it into a field of the service instance and does not copy it onto the
    /// instance's labels.
    pub consumed: bool,
}

/// Every label of the contract.
pub const ALL: [Label; 11] = [
    Label { name: SERVICE, owner: Owner::Framework, consumed: true },
    Label { name: VERSION, owner: Owner::Framework, consumed: true },
    Label { name: HEALTH, owner: Owner::Framework, consumed: true },
    Label { name: FRAMEWORK, owner: Owner::Framework, consumed: true },
    Label { name: JOB, owner: Owner::Framework, consumed: false },
    Label { name: WEIGHT, owner: Owner::App, consumed: true },
    Label { name: KV, owner: Owner::App, consumed: false },
    Label { name: ROUTE_PATH, owner: Owner::App, consumed: false },
    Label { name: ROUTE_HOST, owner: Owner::App, consumed: false },
    Label { name: ROUTE_ROUTER, owner: Owner::App, consumed: false },
    Label { name: ROUTE_STRIP_PREFIX, owner: Owner::App, consumed: false },
];

fn find(name: &str) -> Option<&'static Label> {
    ALL.iter().find(|l| l.name == name)
}

/// Set by frameworks only: an app definition that sets it is refused.
pub fn is_reserved(name: &str) -> bool {
    find(name).is_some_and(|l| l.owner == Owner::Framework)
}

/// Read by the host into a field of the service instance, not copied onto its labels.
pub fn is_consumed(name: &str) -> bool {
    find(name).is_some_and(|l| l.consumed)
}

/// The reserved labels, for messages.
pub fn reserved() -> impl Iterator<Item = &'static str> {
    ALL.iter().filter(|l| l.owner == Owner::Framework).map(|l| l.name)
}

/// The namespaces a `shoal.kv` label value names: comma-separated, trimmed, empty entries skipped.
pub fn kv_namespaces(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A task's labels that no launch may carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// `shoal.kv` names a system namespace (`_…`): the host's own state, such as a plugin's
    /// private store, which a task must never open.
    #[error(
        "label {KV} names `{0}`, a system namespace (names starting with `_` hold the host's own state, such as \
         plugins' stores); a task may open only app namespaces"
    )]
    SystemNamespace(String),
}

/// Check the labels of a task about to be launched: refused when `shoal.kv` names a system
/// namespace. The master checks every launch with this, and the agent again before it opens a
/// bucket, so no path (framework, app definition, forged launch) gets a task into one.
pub fn check_launch<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), LabelError> {
    for (name, value) in labels {
        if name == KV
            && let Some(ns) = kv_namespaces(value).find(|ns| ns.starts_with('_'))
        {
            return Err(LabelError::SystemNamespace(ns.chars().take(80).collect()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed_once_and_under_the_prefix() {
        for (i, l) in ALL.iter().enumerate() {
            assert!(l.name.starts_with("shoal."), "{}", l.name);
            assert!(ALL[i + 1..].iter().all(|o| o.name != l.name), "{} twice", l.name);
        }
    }

    #[test]
    fn reserved_and_consumed() {
        assert_eq!(reserved().collect::<Vec<_>>(), [SERVICE, VERSION, HEALTH, FRAMEWORK, JOB]);
        let consumed: Vec<_> = ALL.iter().filter(|l| is_consumed(l.name)).map(|l| l.name).collect();
        assert_eq!(consumed, [SERVICE, VERSION, HEALTH, FRAMEWORK, WEIGHT]);
        assert!(!is_reserved(WEIGHT) && !is_reserved(ROUTE_PATH) && !is_reserved("app.tier"));
        assert!(!is_consumed(ROUTE_PATH) && !is_consumed("app.tier"));
    }

    #[test]
    fn a_launch_may_not_name_a_system_namespace() {
        let labels = |kv: &str| std::collections::BTreeMap::from([(KV.to_owned(), kv.to_owned())]);
        assert_eq!(kv_namespaces(" a, ,b ,").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(check_launch(&labels("orders, sessions")), Ok(()));
        let refused = check_launch(&labels("orders, _plugin-framework-service"));
        assert_eq!(refused, Err(LabelError::SystemNamespace("_plugin-framework-service".into())));
        assert!(refused.unwrap_err().to_string().contains("system namespace"));
        // Other labels may hold anything: only `shoal.kv` opens namespaces.
        let other = std::collections::BTreeMap::from([("app.note".to_owned(), "_x".to_owned())]);
        assert_eq!(check_launch(&other), Ok(()));
    }
}
