//! Routes: which requests go to which service, through which router plugin. Kept in memory and,
//! with a file, on disk (JSON, replaced atomically), so a restarted gateway serves the same
//! routes before anything else answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// Longest route name.
pub const MAX_ROUTE_NAME: usize = 63;
/// Most routes a gateway holds.
pub const MAX_ROUTES: usize = 10_000;
/// Default upstream timeout (until the response head), in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default router plugin.
pub const DEFAULT_ROUTER: &str = "round-robin";

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name (`[a-z0-9-]{1,63}`), unique.
    #[serde(default)]
    pub name: String,
    /// Host to match (lower-case, without port); `None` matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match, starting with `/`; the longest matching prefix wins.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// Service whose instances serve the route.
    pub service: String,
    /// Name of the router plugin that picks the instance.
    #[serde(default = "default_router")]
    pub router: String,
    /// Remove the prefix from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Time from the request's arrival until the upstream's response head, over all attempts,
    /// in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn root() -> String {
    "/".into()
}
fn default_router() -> String {
    DEFAULT_ROUTER.into()
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// Why a route was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The route is malformed.
    #[error("invalid route: {0}")]
    Invalid(String),
    /// No such route.
    #[error("no route named `{0}`")]
    NotFound(String),
    /// The route file could not be written.
    #[error("could not store the routes: {0}")]
    Storage(String),
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ROUTE_NAME
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Route {
    /// Check every field.
    pub fn validate(&self) -> Result<(), RouteError> {
        let bad = |m: String| Err(RouteError::Invalid(m));
        if !name_ok(&self.name) {
            return bad(format!("name `{}` must be 1-63 characters of a-z, 0-9 and '-'", self.name));
        }
        if !name_ok(&self.service) {
            return bad(format!("service `{}` must be 1-63 characters of a-z, 0-9 and '-'", self.service));
        }
        if !name_ok(&self.router) {
            return bad(format!("router `{}` must name a router plugin (a-z, 0-9, '-')", self.router));
        }
        if !self.path_prefix.starts_with('/')
            || self.path_prefix.len() > 1024
            || self.path_prefix.contains(['?', '#', ' '])
        {
            return bad(format!(
                "path_prefix `{}` must start with '/' and hold no query, fragment or space",
                self.path_prefix
            ));
        }
        if let Some(host) = &self.host
            && (host.is_empty()
                || host.len() > 253
                || !host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
        {
            return bad(format!("host `{host}` must be a lower-case host name without port"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return bad(format!("timeout_ms {} must be within 1..=3600000", self.timeout_ms));
        }
        Ok(())
    }

    /// Whether the route serves `host` + `path`; the length of the matched prefix if so.
    pub fn matches(&self, host: &str, path: &str) -> Option<usize> {
        if self.host.as_deref().is_some_and(|h| h != host) {
            return None;
        }
        let prefix = self.path_prefix.trim_end_matches('/');
        // `/api` matches `/api` and `/api/x`, not `/apix`.
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/') || prefix.is_empty()).then_some(prefix.len())
    }
}

/// The route table.
pub struct Routes {
    routes: ArcSwap<Vec<Arc<Route>>>,
    file: Option<PathBuf>,
    write: parking_lot::Mutex<()>,
}

impl Routes {
    /// An empty table in memory.
    pub fn in_memory() -> Routes {
        Routes { routes: ArcSwap::from_pointee(Vec::new()), file: None, write: parking_lot::Mutex::new(()) }
    }

    /// The table kept in `file` (loaded now if it exists).
    pub fn open(file: &Path) -> Result<Routes, RouteError> {
        let routes: Vec<Route> = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RouteError::Storage(format!("{} is not a route table: {e}", file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RouteError::Storage(format!("{}: {e}", file.display()))),
        };
        Ok(Routes {
            routes: ArcSwap::from_pointee(routes.into_iter().map(Arc::new).collect()),
            file: Some(file.to_owned()),
            write: parking_lot::Mutex::new(()),
        })
    }

    /// Every route, by name.
    pub fn list(&self) -> Arc<Vec<Arc<Route>>> {
        self.routes.load_full()
    }

    /// One route.
    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.load().iter().find(|r| r.name == name).cloned()
    }

    /// Add or replace a route.
    pub fn put(&self, route: Route) -> Result<(), RouteError> {
        route.validate()?;
        let _guard = self.write.lock();
        let mut next: Vec<Arc<Route>> = self.routes.load().iter().filter(|r| r.name != route.name).cloned().collect();
        if next.len() >= MAX_ROUTES {
            return Err(RouteError::Invalid(format!("at most {MAX_ROUTES} routes")));
        }
        next.push(Arc::new(route));
        next.sort_by(|a, b| a.name.cmp(&b.name));
        self.store(next)
    }

    /// Remove a route.
    pub fn delete(&self, name: &str) -> Result<(), RouteError> {
        let _guard = self.write.lock();
        let current = self.routes.load();
        if !current.iter().any(|r| r.name == name) {
            return Err(RouteError::NotFound(name.into()));
        }
        self.store(current.iter().filter(|r| r.name != name).cloned().collect())
    }

    fn store(&self, next: Vec<Arc<Route>>) -> Result<(), RouteError> {
        if let Some(file) = &self.file {
            let plain: Vec<&Route> = next.iter().map(|r| r.as_ref()).collect();
            let json = serde_json::to_vec_pretty(&plain).map_err(|e| RouteError::Storage(e.to_string()))?;
            let tmp = file.with_extension("tmp");
            let written = (|| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&json)?;
                f.sync_all()?;
                std::fs::rename(&tmp, file)
            })();
            written.map_err(|e| RouteError::Storage(format!("{}: {e}", file.display())))?;
        }
        self.routes.store(Arc::new(next));
        Ok(())
    }

    /// The route serving `host` + `path`: host-specific routes before host-less ones, then the
    /// longest prefix.
    pub fn find(&self, host: &str, path: &str) -> Option<Arc<Route>> {
        self.routes
            .load()
            .iter()
            .filter_map(|r| r.matches(host, path).map(|len| (r.host.is_some(), len, r)))
            .max_by_key(|(specific, len, _)| (*specific, *len))
            .map(|(_, _, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            service: "svc".into(),
            router: DEFAULT_ROUTER.into(),
            strip_prefix: false,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn longest_prefix_and_host_specific_routes_win() {
        let routes = Routes::in_memory();
        routes.put(route("all", None, "/")).expect("put");
        routes.put(route("api", None, "/api")).expect("put");
        routes.put(route("shop-api", Some("shop.example"), "/api")).expect("put");
        let find = |h: &str, p: &str| routes.find(h, p).map(|r| r.name.clone());
        assert_eq!(find("x", "/api/items").as_deref(), Some("api"));
        assert_eq!(find("x", "/apix").as_deref(), Some("all"));
        assert_eq!(find("shop.example", "/api").as_deref(), Some("shop-api"));
        assert_eq!(find("x", "/").as_deref(), Some("all"));
        routes.delete("all").expect("delete");
        assert_eq!(find("x", "/other"), None);
        assert!(matches!(routes.put(route("Bad", None, "/")), Err(RouteError::Invalid(_))));
        assert!(matches!(routes.put(route("b", None, "no-slash")), Err(RouteError::Invalid(_))));
        assert!(matches!(routes.delete("nope"), Err(RouteError::NotFound(_))));
    }
}
