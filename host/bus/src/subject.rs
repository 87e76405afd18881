//! The one module that owns Shoal's subject tree: validation, wildcard matching and typed builders.
//!
//! No other crate spells a `shoal.…` subject by hand; they call the builders below, so the tree can
//! only change here. Names that come from users (plugin names, app ids, service names) always pass
//! through [`token`] first, because a `.` in a name would silently add a level to the tree and a `*`
//! or `>` would turn a published subject into a wildcard.
//!
//! # Syntax (NATS)
//!
//! A subject is one or more non-empty tokens separated by `.`, without whitespace. Subjects that are
//! *published to* ([`validate_subject`]) contain no wildcard characters at all. *Filters* used to
//! subscribe ([`validate_filter`]) may use `*` as a whole token (exactly one token) and `>` as the
//! whole last token (one or more tokens).
//!
//! # The tree
//!
//! | subject | builder | published when |
//! | --- | --- | --- |
//! | `shoal.evt.>` | [`EVENTS_ALL`] | filter: every event below |
//! | `shoal.evt.plugin.<kind>.<name>.<action>` | [`plugin_event`] | a plugin was `uploaded`, `activated`, `rolled-back`, `deleted`, or is `failing` ([`PluginAction`]) |
//! | `shoal.evt.plugin.>` | [`PLUGIN_EVENTS_ALL`] | filter: every plugin event |
//! | `shoal.evt.agent.<id>.<action>` | [`agent_event`] | an agent changed state (e.g. `registered`, `lost`) |
//! | `shoal.evt.agent.>` | [`AGENT_EVENTS_ALL`] | filter: every agent event |
//! | `shoal.evt.task.<app>.<state>` | [`task_event`] | a task of `<app>` entered `<state>` (e.g. `running`, `failed`) |
//! | `shoal.evt.task.<app>.*` | [`task_events_of`] | filter: every task event of one app |
//! | `shoal.evt.service.<name>.changed` | [`service_changed`] | a service's set of healthy instances changed |
//! | `shoal.evt.gateway.<route>.<action>` | [`gateway_event`] | the gateway served a route with its `fallback` rule, or `ejected` an endpoint |
//! | `shoal.evt.offer.<framework>.<action>` | [`offer_event`] | an offer was `made`, `refused` (an allocator proposal that breaks the rules) or `rescinded` (its agent was lost) |
//! | `shoal.evt.health.<service>.<action>` | [`health_event`] | a health check of an instance of `<service>` turned `passing`, `critical` or `unknown`, or `failed` (reached its failure limit) |
//! | `shoal.evt.store.shardmap` | [`STORE_SHARDMAP`] | the store's shard map changed (the data is the new map) |
//! | `shoal.evt.kv.<namespace>.<action>` | [`kv_event`] | a key of the state store was written: `put` or `delete` (the data names the key and its version) |
//! | `shoal.evt.store.move.<action>` | [`store_move_event`] | a move of keys between store shards `started`, made `progress`, `finished` or `failed` |
//! | `shoal.ctl.store.register.<id>` | [`store_register`] | request: store node `<id>` registers (and re-registers, as a heartbeat) with the master; the reply is the shard map |
//! | `shoal.ctl.store.map` | [`STORE_MAP`] | request: the current shard map, from the master |
//! | `shoal.ctl.store.progress.<id>` | [`store_progress`] | store node `<id>` reports keys copied by a move |
//! | `shoal.ctl.store.node.<id>` | [`store_node`] | request: reads and writes for store node `<id>` (binary, see `shoal_store::wire`) |
//! | `shoal.ctl.store.ingest.<id>` | [`store_ingest`] | request: another store node copies moving keys into node `<id>` |
//! | `shoal.ctl.store.admin.<id>` | [`store_admin`] | request: the master's commands to store node `<id>` (shards, moves, maps) |
//! | `shoal.ctl.>` | [`CONTROL_ALL`] | filter: every control message (reserved for the roles) |
//! | `shoal.ctl.agent.<id>.register` | [`agent_register`] | request: agent `<id>` registers with the master |
//! | `shoal.ctl.agent.<id>.heartbeat` | [`agent_heartbeat`] | an agent's periodic heartbeat |
//! | `shoal.ctl.agent.<id>.status` | [`agent_status`] | request: agent `<id>` reports a task's new state; the reply acknowledges it |
//! | `shoal.ctl.agent.<id>.launch` | [`agent_launch`] | request: the master asks an agent to start tasks |
//! | `shoal.ctl.agent.<id>.kill` | [`agent_kill`] | request: the master asks an agent to kill a task |
//! | `shoal.ctl.agent.<id>.logs` | [`agent_logs`] | request: read a task's captured output from its agent |
//! | `shoal.ctl.artifact.stat` | [`ARTIFACT_STAT`] | request: the size of a Wasm task's artifact (body: its digest), from the master |
//! | `shoal.ctl.artifact.read` | [`ARTIFACT_READ`] | request: a chunk of an artifact (see `shoal_protocol::artifact`), from the master |
//! | `shoal.evt.framework.<name>.<action>` | [`framework_event`] | a framework plugin `failed` a call, or its answer was `invalid` |
//! | `shoal.evt.allocator.switched` | [`allocator_switched`] | the master's allocator plugin was switched |
//! | `shoal.evt.app.<id>.<action>` | [`app_event`] | an app was `deployed`, `scaled`, `restarted` or `deleted` through `/v1/apps` (jobs: `shoal.evt.job.<id>.<action>`, [`job_event`]) |
//! | `_INBOX.<unique>` | — | reply subjects of requests (owned by the bus implementations) |
//! | `shoal.store.shard.<n>.log` | [`shard_log_subject`] | an entry of replicated shard `<n>`'s log, appended by its leader to the JetStream stream `SHOAL_SHARD_<n>` ([`shard_log_stream`]) |
//!
//! The replicated store (issue 23) keeps three kinds of JetStream assets, all named here so that
//! the bus's grants ([`crate::auth`]) can name exactly them: a stream per shard
//! ([`shard_log_stream`]), the leases' KV bucket [`SHARD_LEASE_BUCKET`] and the snapshots' object
//! store [`SHARD_SNAPSHOT_BUCKET`]. A store may prefix all of them (tests sharing one NATS cluster
//! do); the grants cover the unprefixed names of production.
//!
//! Every subject a role publishes on its own behalf names the role's id (`agent.<id>.…`,
//! `store.register.<id>`): with bus authorization on, the server lets each identity publish only
//! under its own id ([`grants`]), so the receiver knows who sent a message by its subject alone.
//!
//! Events (`shoal.evt.…`) carry a CloudEvents 1.0 JSON body (see [`crate::event`]); control subjects
//! (`shoal.ctl.…`) carry whatever the role that owns them defines.

use std::fmt;

use crate::BusError;

/// Root of every event subject.
pub const EVENTS_PREFIX: &str = "shoal.evt";
/// Root of every control subject.
pub const CONTROL_PREFIX: &str = "shoal.ctl";
/// Filter matching every event Shoal publishes.
pub const EVENTS_ALL: &str = "shoal.evt.>";
/// Filter matching every plugin event.
pub const PLUGIN_EVENTS_ALL: &str = "shoal.evt.plugin.>";
/// Filter matching every agent event.
pub const AGENT_EVENTS_ALL: &str = "shoal.evt.agent.>";
/// Filter matching every task event.
pub const TASK_EVENTS_ALL: &str = "shoal.evt.task.>";
/// Filter matching every service event.
pub const SERVICE_EVENTS_ALL: &str = "shoal.evt.service.>";
/// Published when the state store's shard map changes.
pub const STORE_SHARDMAP: &str = "shoal.evt.store.shardmap";

/// Every event family but the key-value store's, one filter each: what a master journals in
/// JetStream so that an event stream resumes on any master (`shoal_api::journal`). KV events are
/// left out: one comes with every write, and keeping them would add a replicated append to each.
/// A new family of events must be listed here (a test checks every builder).
pub const JOURNALED_EVENTS: [&str; 12] = [
    "shoal.evt.plugin.>",
    "shoal.evt.agent.>",
    "shoal.evt.task.>",
    "shoal.evt.service.>",
    "shoal.evt.gateway.>",
    "shoal.evt.offer.>",
    "shoal.evt.health.>",
    "shoal.evt.store.>",
    "shoal.evt.framework.>",
    "shoal.evt.allocator.>",
    "shoal.evt.app.>",
    "shoal.evt.job.>",
];

/// Whether `subject` is a key-value store event (`shoal.evt.kv.…`).
pub fn is_kv_event(subject: &str) -> bool {
    subject.starts_with("shoal.evt.kv.")
}
/// Filter matching every store node's registration ([`store_register`]).
pub const STORE_REGISTER_ALL: &str = "shoal.ctl.store.register.*";
/// Request subject on which the master answers with the current shard map.
pub const STORE_MAP: &str = "shoal.ctl.store.map";
/// Filter matching every store node's progress reports ([`store_progress`]).
pub const STORE_PROGRESS_ALL: &str = "shoal.ctl.store.progress.*";
/// Request subject on which the master answers the size of an artifact.
pub const ARTIFACT_STAT: &str = "shoal.ctl.artifact.stat";
/// Request subject on which the master answers a chunk of an artifact.
pub const ARTIFACT_READ: &str = "shoal.ctl.artifact.read";
/// Filter matching every control message.
pub const CONTROL_ALL: &str = "shoal.ctl.>";
/// Filter matching every agent's registration ([`agent_register`]).
pub const AGENT_REGISTER_ALL: &str = "shoal.ctl.agent.*.register";
/// Filter matching every agent's heartbeat.
pub const AGENT_HEARTBEATS_ALL: &str = "shoal.ctl.agent.*.heartbeat";
/// Filter matching every agent's status updates ([`agent_status`]).
pub const AGENT_STATUS_ALL: &str = "shoal.ctl.agent.*.status";
/// Most shards a store has: shard numbers are below it. Every shard that can exist has a log
/// stream, so the store nodes' grants name this many.
pub const STORE_MAX_SHARDS: u32 = 256;
/// Filter matching every replicated shard's log entries ([`shard_log_subject`], unprefixed).
pub const SHARD_LOGS_ALL: &str = "shoal.store.shard.*.log";
/// The JetStream KV bucket of the replicated shards' leases (key `shard-<n>`).
pub const SHARD_LEASE_BUCKET: &str = "shoal-shard-leases";
/// The JetStream Object Store of the replicated shards' snapshots.
pub const SHARD_SNAPSHOT_BUCKET: &str = "shoal-shard-snapshots";

/// The JetStream stream of shard `shard`'s log: `SHOAL_SHARD_<n>`, after `prefix` (upper-cased,
/// `-` as `_`: stream names are single tokens).
pub fn shard_log_stream(prefix: &str, shard: u32) -> String {
    format!("{}SHOAL_SHARD_{shard}", prefix.to_uppercase().replace('-', "_"))
}

/// `shoal.store.<prefix>shard.<n>.log`: the subject of shard `shard`'s log entries.
pub fn shard_log_subject(prefix: &str, shard: u32) -> String {
    format!("shoal.store.{prefix}shard.{shard}.log")
}

/// Checks a subject that will be published to: non-empty tokens separated by `.`, no whitespace and
/// no wildcard characters.
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    check_tokens(subject, |token| {
        if token.contains(['*', '>']) { Err("wildcards are not allowed in a published subject") } else { Ok(()) }
    })
}

/// Checks a subscription filter: like [`validate_subject`], but a token may be exactly `*` (one
/// token), and the last token may be exactly `>` (one or more tokens).
pub fn validate_filter(filter: &str) -> Result<(), BusError> {
    let last = filter.split('.').count().saturating_sub(1);
    let mut index = 0;
    check_tokens(filter, |token| {
        let result = match token {
            "*" => Ok(()),
            ">" if index == last => Ok(()),
            ">" => Err("'>' is only allowed as the last token"),
            _ if token.contains(['*', '>']) => Err("a wildcard must be a whole token"),
            _ => Ok(()),
        };
        index += 1;
        result
    })
}

/// Checks a queue group name: non-empty, no whitespace (NATS rejects anything else).
pub fn validate_queue_group(group: &str) -> Result<(), BusError> {
    if group.is_empty() {
        return Err(invalid(group, "queue group is empty"));
    }
    if group.chars().any(char::is_whitespace) {
        return Err(invalid(group, "queue group contains whitespace"));
    }
    Ok(())
}

fn check_tokens(subject: &str, mut check: impl FnMut(&str) -> Result<(), &'static str>) -> Result<(), BusError> {
    if subject.is_empty() {
        return Err(invalid(subject, "subject is empty"));
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(invalid(subject, "subject contains whitespace"));
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(invalid(subject, "subject has an empty token"));
        }
        check(token).map_err(|reason| invalid(subject, reason))?;
    }
    Ok(())
}

fn invalid(subject: &str, reason: &'static str) -> BusError {
    BusError::InvalidSubject { subject: subject.to_owned(), reason }
}

/// Whether `subject` is matched by `filter` under NATS rules (`*` is one token, a trailing `>` is
/// one or more tokens). Both are assumed valid; invalid input simply does not match sensibly.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut filter_tokens = filter.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (filter_tokens.next(), subject_tokens.next()) {
            (None, None) => return true,
            // `>` needs at least one token, which the `Some` on the subject side guarantees.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            _ => return false,
        }
    }
}

/// Turns a user-supplied name into one safe subject token: `.`, `*`, `>` and whitespace become `_`,
/// and an empty name becomes `_` (an empty token would make the subject invalid).
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars().map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() { '_' } else { c }).collect()
}

/// What happened to a plugin; the last token of a plugin event subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginAction {
    /// A new version was uploaded (not yet serving).
    Uploaded,
    /// A version became the active one.
    Activated,
    /// The active version was rolled back to the previous one.
    RolledBack,
    /// The plugin was deleted.
    Deleted,
    /// The active version keeps failing (traps, timeouts, fuel exhaustion).
    Failing,
}

impl PluginAction {
    /// Every action, in lifecycle order.
    pub const ALL: [PluginAction; 5] = [
        PluginAction::Uploaded,
        PluginAction::Activated,
        PluginAction::RolledBack,
        PluginAction::Deleted,
        PluginAction::Failing,
    ];

    /// The subject token, e.g. `rolled-back`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginAction::Uploaded => "uploaded",
            PluginAction::Activated => "activated",
            PluginAction::RolledBack => "rolled-back",
            PluginAction::Deleted => "deleted",
            PluginAction::Failing => "failing",
        }
    }

    /// The CloudEvents `type` of this action, e.g. `io.shoal.plugin.rolled-back`.
    pub fn event_type(self) -> &'static str {
        match self {
            PluginAction::Uploaded => "io.shoal.plugin.uploaded",
            PluginAction::Activated => "io.shoal.plugin.activated",
            PluginAction::RolledBack => "io.shoal.plugin.rolled-back",
            PluginAction::Deleted => "io.shoal.plugin.deleted",
            PluginAction::Failing => "io.shoal.plugin.failing",
        }
    }
}

impl fmt::Display for PluginAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `shoal.evt.plugin.<kind>.<name>.<action>`.
pub fn plugin_event(kind: &str, name: &str, action: PluginAction) -> String {
    format!("{EVENTS_PREFIX}.plugin.{}.{}.{}", token(kind), token(name), action.as_str())
}

/// `shoal.evt.plugin.<kind>.<name>.*`: every event of one plugin.
pub fn plugin_events_of(kind: &str, name: &str) -> String {
    format!("{EVENTS_PREFIX}.plugin.{}.{}.*", token(kind), token(name))
}

/// `shoal.evt.agent.<id>.<action>`, e.g. `action` = `registered` or `lost`.
pub fn agent_event(id: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.agent.{}.{}", token(id), token(action))
}

/// `shoal.evt.task.<app>.<state>`, e.g. `state` = `running` or `failed`.
pub fn task_event(app: &str, state: &str) -> String {
    format!("{EVENTS_PREFIX}.task.{}.{}", token(app), token(state))
}

/// `shoal.evt.task.<app>.*`: every task event of one app.
pub fn task_events_of(app: &str) -> String {
    format!("{EVENTS_PREFIX}.task.{}.*", token(app))
}

/// `shoal.evt.service.<name>.changed`.
pub fn service_changed(name: &str) -> String {
    format!("{EVENTS_PREFIX}.service.{}.changed", token(name))
}

/// `shoal.evt.gateway.<route>.<action>`, e.g. `action` = `fallback` or `ejected`.
pub fn gateway_event(route: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.gateway.{}.{}", token(route), token(action))
}

/// `shoal.evt.health.<service>.<action>`, `action` = `passing`, `critical`, `unknown` or `failed`.
pub fn health_event(service: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.health.{}.{}", token(service), token(action))
}

/// `shoal.evt.offer.<framework>.<action>`, `action` = `made`, `refused` (an allocator proposal
/// the master refused) or `rescinded`.
pub fn offer_event(framework: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.offer.{}.{}", token(framework), token(action))
}

/// `shoal.ctl.agent.<id>.register`: agent `id` registers with the master.
pub fn agent_register(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.register", token(id))
}

/// `shoal.ctl.agent.<id>.status`: agent `id` reports a task's status, acknowledged by the reply.
pub fn agent_status(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.status", token(id))
}

/// `shoal.ctl.agent.<id>.launch`.
pub fn agent_launch(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.launch", token(id))
}

/// `shoal.ctl.agent.<id>.kill`.
pub fn agent_kill(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.kill", token(id))
}

/// `shoal.ctl.agent.<id>.logs`.
pub fn agent_logs(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.logs", token(id))
}

/// `shoal.evt.framework.<name>.<action>`, `action` = `failed` or `invalid`.
pub fn framework_event(name: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.framework.{}.{}", token(name), token(action))
}

/// `shoal.evt.allocator.switched`.
pub fn allocator_switched() -> String {
    format!("{EVENTS_PREFIX}.allocator.switched")
}

/// `shoal.evt.app.<id>.<action>`.
pub fn app_event(id: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.app.{}.{}", token(id), token(action))
}

/// `shoal.evt.job.<id>.<action>`.
pub fn job_event(id: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.job.{}.{}", token(id), token(action))
}

/// `shoal.ctl.store.node.<id>`: reads and writes for store node `id`.
pub fn store_node(id: &str) -> String {
    format!("{CONTROL_PREFIX}.store.node.{}", token(id))
}

/// `shoal.ctl.store.ingest.<id>`: moving keys copied into store node `id` by another node.
pub fn store_ingest(id: &str) -> String {
    format!("{CONTROL_PREFIX}.store.ingest.{}", token(id))
}

/// `shoal.ctl.store.admin.<id>`: the master's commands to store node `id`.
pub fn store_admin(id: &str) -> String {
    format!("{CONTROL_PREFIX}.store.admin.{}", token(id))
}

/// `shoal.ctl.store.register.<id>`: store node `id` registers with the master.
pub fn store_register(id: &str) -> String {
    format!("{CONTROL_PREFIX}.store.register.{}", token(id))
}

/// `shoal.ctl.store.progress.<id>`: store node `id` reports a move's progress.
pub fn store_progress(id: &str) -> String {
    format!("{CONTROL_PREFIX}.store.progress.{}", token(id))
}

/// `shoal.evt.kv.<namespace>.<action>`: a write of a key in the state store.
pub fn kv_event(namespace: &str, action: &str) -> String {
    format!("{EVENTS_PREFIX}.kv.{}.{}", token(namespace), token(action))
}

/// `shoal.evt.kv.<namespace>.*`: every write in one namespace of the state store.
pub fn kv_events(namespace: &str) -> String {
    format!("{EVENTS_PREFIX}.kv.{}.*", token(namespace))
}

/// `shoal.evt.store.move.<action>`.
pub fn store_move_event(action: &str) -> String {
    format!("{EVENTS_PREFIX}.store.move.{}", token(action))
}

/// `shoal.ctl.agent.<id>.heartbeat`.
pub fn agent_heartbeat(id: &str) -> String {
    format!("{CONTROL_PREFIX}.agent.{}.heartbeat", token(id))
}

/// The agent id of a heartbeat subject ([`agent_heartbeat`]), if it is one.
pub fn heartbeat_agent(subject: &str) -> Option<&str> {
    agent_of(subject, "heartbeat")
}

/// The agent id of `shoal.ctl.agent.<id>.<verb>` ([`agent_register`], [`agent_heartbeat`],
/// [`agent_status`], …), if `subject` is one.
pub fn agent_of<'a>(subject: &'a str, verb: &str) -> Option<&'a str> {
    subject
        .strip_prefix(CONTROL_PREFIX)?
        .strip_prefix(".agent.")?
        .strip_suffix(verb)?
        .strip_suffix('.')
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

/// The store node id of `shoal.ctl.store.<verb>.<id>` ([`store_register`], [`store_progress`]),
/// if `subject` is one.
pub fn store_node_of<'a>(subject: &'a str, verb: &str) -> Option<&'a str> {
    subject
        .strip_prefix(CONTROL_PREFIX)?
        .strip_prefix(".store.")?
        .strip_prefix(verb)?
        .strip_prefix('.')
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

/// The family and the name of an event subject with one name and one action,
/// `shoal.evt.<family>.<name>.<action>` (`("kv", "orders")` for
/// `shoal.evt.kv.orders.put`, `("task", "web")` for [`task_event`]); `None` for any other shape.
/// The API decides with it which events an app token sees.
pub fn event_family(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(EVENTS_PREFIX)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let (family, name, _action) = (tokens.next()?, tokens.next()?, tokens.next()?);
    tokens.next().is_none().then_some((family, name))
}

/// Whether `filter` selects only events: inside the event tree (`shoal.evt.…`), or one of the
/// wildcards (`>`, `shoal.>`) that cover it and are narrowed to it ([`EVENTS_ALL`]).
pub fn within_events(filter: &str) -> bool {
    filter == EVENTS_ALL || filter.starts_with(&format!("{EVENTS_PREFIX}.")) || covers_events(filter)
}

/// Whether `filter` is a wildcard wider than the event tree that should be narrowed to it.
pub fn covers_events(filter: &str) -> bool {
    filter == ">" || filter == "shoal.>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_families_are_read_back() {
        assert_eq!(event_family(&kv_event("orders", "put")), Some(("kv", "orders")));
        assert_eq!(event_family(&task_event("web", "running")), Some(("task", "web")));
        assert_eq!(event_family(&app_event("shop", "deployed")), Some(("app", "shop")));
        assert_eq!(event_family(STORE_SHARDMAP), None);
        assert_eq!(event_family(&plugin_event("router", "rr", PluginAction::Uploaded)), None);
        assert_eq!(event_family("shoal.ctl.kv.orders.put"), None);
    }

    #[test]
    fn senders_are_read_back_from_their_subjects() {
        assert_eq!(heartbeat_agent(&agent_heartbeat("a-1")), Some("a-1"));
        assert_eq!(agent_of(&agent_register("a-1"), "register"), Some("a-1"));
        assert_eq!(agent_of(&agent_status("a-1"), "status"), Some("a-1"));
        assert_eq!(agent_of(&agent_status("a-1"), "register"), None);
        assert_eq!(agent_of("shoal.ctl.agent..status", "status"), None);
        assert_eq!(store_node_of(&store_register("s1"), "register"), Some("s1"));
        assert_eq!(store_node_of(&store_progress("s1"), "progress"), Some("s1"));
        assert_eq!(store_node_of(&store_progress("s1"), "register"), None);
        assert_eq!(store_node_of("shoal.ctl.store.register.a.b", "register"), None);
        assert_eq!(heartbeat_agent("shoal.ctl.agent.a.b.heartbeat"), None);
        assert_eq!(heartbeat_agent("shoal.ctl.agent.a.launch"), None);
    }

    #[test]
    fn the_event_tree_and_what_covers_it() {
        for inside in [EVENTS_ALL, "shoal.evt.kv.orders.*", ">", "shoal.>"] {
            assert!(within_events(inside), "{inside}");
        }
        for outside in ["shoal.ctl.>", "shoal.evtx.a", "foo.>"] {
            assert!(!within_events(outside), "{outside}");
        }
        assert!(covers_events(">") && !covers_events(EVENTS_ALL));
    }

    #[test]
    fn matching_follows_nats_rules() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*", "a.b.c", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
            ("a.*.>", "a.b.c", true),
            ("a.*.>", "a.b", false),
            ("shoal.evt.>", "shoal.evt.plugin.allocator.drf.activated", true),
            ("shoal.evt.>", "shoal.ctl.agent.register", false),
            ("ab", "a", false),
            ("a", "ab", false),
        ];
        for (filter, subject, expected) in cases {
            assert_eq!(matches(filter, subject), expected, "matches({filter:?}, {subject:?})");
        }
    }

    #[test]
    fn published_subjects_are_validated() {
        for ok in ["a", "a.b.c", "_INBOX.abc123", "shoal.evt.plugin.x.y.rolled-back"] {
            assert!(validate_subject(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\nb", "a.*", "a.>", "*", ">", "a.b*"] {
            assert!(
                matches!(validate_subject(bad), Err(BusError::InvalidSubject { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn filters_are_validated() {
        for ok in ["a", "a.b", "*", ">", "a.*", "a.>", "*.*.>", "a.*.c"] {
            assert!(validate_filter(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["", "a..b", "a.>.b", ">.a", "a.b*", "a.>b", "a b.>", "a."] {
            assert!(matches!(validate_filter(bad), Err(BusError::InvalidSubject { .. })), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn queue_groups_are_validated() {
        assert!(validate_queue_group("workers").is_ok());
        assert!(validate_queue_group("").is_err());
        assert!(validate_queue_group("a b").is_err());
    }

    #[test]
    fn tokens_are_sanitised() {
        assert_eq!(token("my.app"), "my_app");
        assert_eq!(token("a*b>c d\te"), "a_b_c_d_e");
        assert_eq!(token(""), "_");
        assert_eq!(token("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn builders_produce_valid_subjects_inside_the_tree() {
        let hostile = "evil.name *>";
        let built = [
            plugin_event("allocator", hostile, PluginAction::RolledBack),
            agent_event(hostile, "lost"),
            task_event(hostile, "running"),
            service_changed(hostile),
            agent_heartbeat(hostile),
            STORE_SHARDMAP.to_owned(),
            agent_register(hostile),
            agent_status(hostile),
            store_register(hostile),
            store_progress(hostile),
            store_admin(hostile),
            store_ingest(hostile),
        ];
        for subject in &built {
            validate_subject(subject).expect("builder output is a valid subject");
        }
        assert_eq!(
            plugin_event("allocator", "drf", PluginAction::RolledBack),
            "shoal.evt.plugin.allocator.drf.rolled-back"
        );
        assert_eq!(
            plugin_event("allocator", hostile, PluginAction::Activated),
            "shoal.evt.plugin.allocator.evil_name___.activated"
        );
        assert_eq!(agent_event("a1", "lost"), "shoal.evt.agent.a1.lost");
        assert_eq!(task_event("web", "running"), "shoal.evt.task.web.running");
        assert_eq!(service_changed("web"), "shoal.evt.service.web.changed");
        assert_eq!(agent_heartbeat("a1"), "shoal.ctl.agent.a1.heartbeat");

        for subject in &built[..5] {
            let all = if subject.starts_with("shoal.evt.") { EVENTS_ALL } else { CONTROL_ALL };
            assert!(matches(all, subject), "{all} should match {subject}");
        }
        assert!(matches(EVENTS_ALL, STORE_SHARDMAP));
        assert!(matches(AGENT_REGISTER_ALL, &agent_register("a1")));
        assert!(matches(AGENT_STATUS_ALL, &agent_status("a1")));
        assert!(matches(STORE_REGISTER_ALL, &store_register("s1")));
        assert!(matches(STORE_PROGRESS_ALL, &store_progress("s1")));
        for subject in &built[6..] {
            assert!(matches(CONTROL_ALL, subject), "{subject}");
        }
        assert!(matches(AGENT_HEARTBEATS_ALL, &agent_heartbeat("a1")));
        assert!(matches(&task_events_of("web"), &task_event("web", "failed")));
        assert!(matches(
            &plugin_events_of("allocator", "drf"),
            &plugin_event("allocator", "drf", PluginAction::Failing)
        ));
        for filter in [
            EVENTS_ALL,
            PLUGIN_EVENTS_ALL,
            AGENT_EVENTS_ALL,
            TASK_EVENTS_ALL,
            SERVICE_EVENTS_ALL,
            CONTROL_ALL,
            AGENT_HEARTBEATS_ALL,
            AGENT_REGISTER_ALL,
            AGENT_STATUS_ALL,
            STORE_REGISTER_ALL,
            STORE_PROGRESS_ALL,
        ] {
            validate_filter(filter).expect("filter constants are valid");
        }
    }

    #[test]
    fn plugin_actions_have_matching_event_types() {
        for action in PluginAction::ALL {
            assert_eq!(action.event_type(), format!("io.shoal.plugin.{}", action.as_str()));
        }
    }

    #[test]
    fn every_event_is_journaled_or_a_kv_event() {
        let events = [
            plugin_event("router", "r", PluginAction::Activated),
            agent_event("a1", "lost"),
            task_event("web", "running"),
            service_changed("web"),
            gateway_event("shop", "ejected"),
            health_event("web", "passing"),
            offer_event("service", "made"),
            framework_event("batch", "attached"),
            allocator_switched(),
            app_event("web", "deployed"),
            job_event("report", "run"),
            STORE_SHARDMAP.to_owned(),
            store_move_event("started"),
            kv_event("shop", "put"),
        ];
        for event in events {
            let journaled = JOURNALED_EVENTS.iter().filter(|f| matches(f, &event)).count();
            assert_eq!(journaled + usize::from(is_kv_event(&event)), 1, "{event}: journaled or KV, once");
        }
    }
}
