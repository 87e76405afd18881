//! Routes: which requests go to which service, through which router plugin. Kept in memory and
//! in one of two places, so a restarted gateway serves the same routes before anything else
//! answers: on a master, the table [`ROUTES_TABLE`] of its state (see [`table`]), which every
//! master follows; in the standalone `shoal gateway`, a JSON file replaced atomically (its mirror
//! of the control plane's routes).

mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shoal_state::{Batch, StateDb};

pub use table::{ROUTES_TABLE, migrate_routes_file};

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
    /// The routes could not be stored or read.
    #[error("could not store the routes: {0}")]
    Storage(String),
    /// This master does not lead: routes are changed on the leader.
    #[error("this master does not lead; routes are changed on the leader")]
    NotLeader,
}

/// The routes of `file` (none when it does not exist).
fn read_file(file: &Path) -> Result<Vec<Route>, RouteError> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RouteError::Storage(format!("{} is not a route table: {e}", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RouteError::Storage(format!("{}: {e}", file.display()))),
    }
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

/// Where a [`Routes`] table keeps its routes.
enum Backing {
    /// Nowhere: gone with the process (tests).
    Memory,
    /// A JSON file replaced atomically: the standalone `shoal gateway`'s mirror.
    File(PathBuf),
    /// Table [`ROUTES_TABLE`] of the master's state: every master follows it.
    State(Arc<StateDb>),
}

/// The route table.
pub struct Routes {
    routes: ArcSwap<Vec<Arc<Route>>>,
    backing: Backing,
    /// Serialises changes (read, check, store) made through this table.
    write: tokio::sync::Mutex<()>,
    /// Serialises updates of `routes` (a change, or a reread of the state).
    view: parking_lot::Mutex<()>,
}

impl Routes {
    fn with(routes: Vec<Route>, backing: Backing) -> Routes {
        let mut routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        Routes {
            routes: ArcSwap::from_pointee(routes),
            backing,
            write: tokio::sync::Mutex::new(()),
            view: parking_lot::Mutex::new(()),
        }
    }

    /// An empty table in memory.
    pub fn in_memory() -> Routes {
        Routes::with(Vec::new(), Backing::Memory)
    }

    /// The table kept in `file` (loaded now if it exists).
    pub fn open(file: &Path) -> Result<Routes, RouteError> {
        Ok(Routes::with(read_file(file)?, Backing::File(file.to_owned())))
    }

    /// The table kept in `state` (table [`ROUTES_TABLE`], which `state` must have): loaded now,
    /// and following every change this member applies from then on, so a standby master serves
    /// the leader's routes. Changes are commits: refused ([`RouteError::NotLeader`]) on a master
    /// that does not lead.
    pub fn on_state(state: Arc<StateDb>) -> Result<Arc<Routes>, RouteError> {
        let watch = state.watch(ROUTES_TABLE);
        let routes = Arc::new(Routes::with(table::load(&state)?, Backing::State(state)));
        tokio::spawn(table::follow(Arc::downgrade(&routes), watch));
        Ok(routes)
    }

    /// Every route, by name.
    pub fn list(&self) -> Arc<Vec<Arc<Route>>> {
        self.routes.load_full()
    }

    /// One route.
    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.load().iter().find(|r| r.name == name).cloned()
    }

    /// Add or replace a route; stored (in the file, or committed to the state) when this
    /// returns `Ok`, and nothing changed otherwise.
    pub async fn put(&self, route: Route) -> Result<(), RouteError> {
        route.validate()?;
        let _guard = self.write.lock().await;
        let current = self.routes.load();
        if current.len() >= MAX_ROUTES && !current.iter().any(|r| r.name == route.name) {
            return Err(RouteError::Invalid(format!("at most {MAX_ROUTES} routes")));
        }
        match &self.backing {
            Backing::State(state) => {
                let mut batch = Batch::new();
                batch.put(ROUTES_TABLE, route.name.as_bytes(), table::encode(&route)?);
                table::commit(state, batch).await?;
                self.reread(state, &[route.name.into_bytes()]);
                Ok(())
            }
            _ => {
                let mut next: Vec<Arc<Route>> = current.iter().filter(|r| r.name != route.name).cloned().collect();
                next.push(Arc::new(route));
                next.sort_by(|a, b| a.name.cmp(&b.name));
                self.store(next)
            }
        }
    }

    /// Remove a route.
    pub async fn delete(&self, name: &str) -> Result<(), RouteError> {
        let _guard = self.write.lock().await;
        let current = self.routes.load();
        if !current.iter().any(|r| r.name == name) {
            return Err(RouteError::NotFound(name.into()));
        }
        match &self.backing {
            Backing::State(state) => {
                let mut batch = Batch::new();
                batch.delete(ROUTES_TABLE, name.as_bytes());
                table::commit(state, batch).await?;
                self.reread(state, &[name.as_bytes().to_vec()]);
                Ok(())
            }
            _ => self.store(current.iter().filter(|r| r.name != name).cloned().collect()),
        }
    }

    /// Write `next` to the file (if any), then serve it.
    fn store(&self, next: Vec<Arc<Route>>) -> Result<(), RouteError> {
        if let Backing::File(file) = &self.backing {
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
        let _view = self.view.lock();
        self.routes.store(Arc::new(next));
        Ok(())
    }

    /// Bring the routes named by `keys` up to date with the state (under the view's lock, so a
    /// later reread never loses to an earlier one).
    fn reread(&self, state: &StateDb, keys: &[Vec<u8>]) {
        let _view = self.view.lock();
        let mut next: Vec<Arc<Route>> = self.routes.load().iter().cloned().collect();
        for key in keys {
            next.retain(|r| r.name.as_bytes() != key.as_slice());
            match table::read(state, key) {
                Ok(Some(route)) => next.push(Arc::new(route)),
                Ok(None) => {}
                Err(e) => tracing::error!(cause = %e, "a route of the state could not be read; it is not served here"),
            }
        }
        next.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.store(Arc::new(next));
    }

    /// Reread every route from the state.
    fn reload(&self, state: &StateDb) {
        let _view = self.view.lock();
        match table::load(state) {
            Ok(all) => self.routes.store(Arc::new(all.into_iter().map(Arc::new).collect())),
            Err(e) => tracing::error!(cause = %e, "the routes could not be reread from the state"),
        }
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

    #[tokio::test]
    async fn longest_prefix_and_host_specific_routes_win() {
        let routes = Routes::in_memory();
        routes.put(route("all", None, "/")).await.expect("put");
        routes.put(route("api", None, "/api")).await.expect("put");
        routes.put(route("shop-api", Some("shop.example"), "/api")).await.expect("put");
        let find = |h: &str, p: &str| routes.find(h, p).map(|r| r.name.clone());
        assert_eq!(find("x", "/api/items").as_deref(), Some("api"));
        assert_eq!(find("x", "/apix").as_deref(), Some("all"));
        assert_eq!(find("shop.example", "/api").as_deref(), Some("shop-api"));
        assert_eq!(find("x", "/").as_deref(), Some("all"));
        routes.delete("all").await.expect("delete");
        assert_eq!(find("x", "/other"), None);
        assert!(matches!(routes.put(route("Bad", None, "/")).await, Err(RouteError::Invalid(_))));
        assert!(matches!(routes.put(route("b", None, "no-slash")).await, Err(RouteError::Invalid(_))));
        assert!(matches!(routes.delete("nope").await, Err(RouteError::NotFound(_))));
    }
}
