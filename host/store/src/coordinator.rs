//! The master's side of the store: it owns the shard map, keeps it in the master's state (table
//! [`STORE_TABLE`], see [`table`]), publishes it on `shoal.evt.store.shardmap`, answers
//! registrations and map requests, and drives moves (see [`crate::node`] for the steps).
//!
//! - The first node to register gets the initial map: the shards it already holds (a store that
//!   ran before), or `initial_shards` new ones.
//! - A node that registers holding no shard of the map makes the map grow onto it (N → N+1) when
//!   `auto_scale_out` is on; [`Coordinator::scale_out`] and [`Coordinator::scale_in`] do it on
//!   demand. One move at a time.
//! - A move in progress is recorded with the map, in one value. A master that restarts (or a new
//!   leader that takes over) during a move gives it up (ends the exports, drops a half-filled new
//!   shard) if the map had not switched yet, or finishes its clean-up if it had.
//! - Every change of the map is committed before anyone hears of it; a coordinator whose state
//!   does not take commits (a master that does not lead) changes nothing. Each coordinator
//!   follows the table, so one on a standby master reports the leader's map.
//! - A participant that restarts during a move (a new `boot` in its registration) makes the move
//!   give up before the map switches: its exports and freezes were in memory. A node takes its first
//!   map only from a registration (pushed maps wait for it), so a restarted node cannot serve
//!   before the coordinator has heard of it.
//! - The coordinator acts under its master's leader term ([`CoordinatorConfig::term`]): every map
//!   it serves, pushes or publishes carries it (the map it loads from its file is stamped with
//!   it), and so does every admin request it sends ([`wire::Request::Admin`]). A node that has
//!   heard from a newer leader refuses both; a move driven by a deposed coordinator fails at
//!   its next step.

mod moving;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_bus::event::CloudEvent;
use shoal_bus::{BusError, SharedBus, subject};
use shoal_state::StateDb;

pub use table::{STORE_TABLE, migrate_map_file};

use self::moving::members_of_new_shard;
use crate::engine::now_ms;
use crate::node::{REGISTER_INTERVAL, validate_node_id};
use crate::wire::{self, Admin, Progress, Registration, Reply, Request};
use crate::{MAX_SHARDS, ShardMap, StoreError};

/// How the master runs the store.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// The master's state, whose table [`STORE_TABLE`] keeps the map (and a move in progress).
    pub state: Arc<StateDb>,
    /// Shards of a brand-new store.
    pub initial_shards: u32,
    /// Grow the map onto every node that registers without shards.
    pub auto_scale_out: bool,
    /// `source` of the events.
    pub source: String,
    /// The leader term of the master this coordinator is part of (fixed for its life: the next
    /// leader opens a new coordinator with its own, higher term).
    pub term: u64,
    /// Copies of every shard of a new store (`--replicas`): 1 is one copy per shard, on one node;
    /// more, and the map is made once that many store nodes have registered, each shard on that
    /// many of them (their writes through the shard's log, see [`crate::replication`]).
    pub replicas: usize,
}

/// The map of a new store of `count` shards over `nodes`, each shard on `replicas` of them: shard
/// `i` first on node `i mod n` (the member clients ask first), then on the next ones in turn.
pub fn replicated_map(term: u64, count: u32, nodes: &[String], replicas: usize) -> ShardMap {
    let n = nodes.len().max(1);
    let copies = replicas.clamp(1, n);
    let member = |i: usize, j: usize| nodes.get((i + j) % n).cloned().unwrap_or_default();
    ShardMap {
        term,
        epoch: 1,
        shards: (0..count as usize).map(|i| member(i, 0)).collect(),
        followers: if copies > 1 {
            (0..count as usize).map(|i| (1..copies).map(|j| member(i, j)).collect()).collect()
        } else {
            Vec::new()
        },
    }
}

/// Scale-out or scale-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKind {
    /// N → N+1.
    ScaleOut,
    /// N → N−1.
    ScaleIn,
}

/// A move, running or finished.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveStatus {
    /// Grows by one per move.
    pub id: u64,
    /// Which way.
    pub kind: MoveKind,
    /// Shard count before.
    pub from_shards: u32,
    /// Shard count after.
    pub to_shards: u32,
    /// The node that gains (scale-out) or loses (scale-in) a shard.
    pub node: String,
    /// `preparing`, `copying`, `switching`, `cleaning`, `finished` or `failed`.
    pub phase: String,
    /// Keys copied so far (including writes copied again while catching up).
    pub keys_copied: u64,
    /// Keys expected to move (RocksDB's estimate).
    pub keys_estimated: u64,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended.
    pub finished_at_ms: Option<u64>,
    /// How long the moving keys were frozen (final catch-up and switch), in ms.
    pub freeze_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A store node as the master sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: String,
    /// Shards the map gives it.
    pub shards: Vec<u32>,
    /// Shards on its disk.
    pub held: Vec<u32>,
    /// Replicated shards it leads (as of its last registration).
    #[serde(default)]
    pub leads: Vec<u32>,
    /// Registered within the last three intervals.
    pub alive: bool,
    /// Milliseconds since its last registration.
    pub last_seen_ms: u64,
}

/// The store as a whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The current map.
    pub map: ShardMap,
    /// Every node that registered since the master started.
    pub nodes: Vec<NodeStatus>,
    /// The move in progress.
    pub moving: Option<MoveStatus>,
    /// The last move that ended.
    pub last_move: Option<MoveStatus>,
}

/// Why a move was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// Another move runs.
    #[error("a move is already running: {0}")]
    Busy(String),
    /// The request cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The move could not be recorded (on a master that does not lead, for one).
    #[error("cannot record the move: {0}")]
    Unrecorded(StoreError),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    map: ShardMap,
    /// A move that had started: `(id, from, to)`.
    pending: Option<(u64, ShardMap, ShardMap)>,
    last_move_id: u64,
}

struct NodeSeen {
    held: Vec<u32>,
    leads: Vec<u32>,
    boot: String,
    seen: Instant,
}

struct State {
    persisted: Persisted,
    nodes: BTreeMap<String, NodeSeen>,
    moving: Option<MoveStatus>,
    /// Boots of the move's participants when it started; a change gives the move up.
    boots: BTreeMap<String, String>,
    abort: Option<String>,
    copied: BTreeMap<u32, u64>,
    /// When each source shard's exporter last reported (it does at least every 500 ms).
    heard: BTreeMap<u32, Instant>,
    last_move: Option<MoveStatus>,
    last_progress_event: Option<Instant>,
}

/// The shard map's owner.
pub struct Coordinator {
    bus: SharedBus,
    config: CoordinatorConfig,
    state: Mutex<State>,
    /// Held from reading what to store until it is stored and in `state`: changes of the map
    /// (and registrations, which may detect a restarted participant) happen one at a time.
    saving: tokio::sync::Mutex<()>,
}

/// The map is this leader's now, whoever wrote it: stores order maps by (term, epoch), and a
/// map of this term must replace a deposed leader's of any epoch.
fn this_term(mut persisted: Persisted, term: u64) -> Persisted {
    persisted.map.term = term;
    if let Some((_, from, to)) = persisted.pending.as_mut() {
        from.term = term;
        to.term = term;
    }
    persisted
}

impl Coordinator {
    /// Read the map from the state (none yet: an empty map), and follow it from then on.
    pub fn open(bus: SharedBus, config: CoordinatorConfig) -> Result<Arc<Coordinator>, StoreError> {
        if config.initial_shards == 0 || config.initial_shards > MAX_SHARDS {
            return Err(StoreError::Config(format!(
                "initial shard count must be 1 to {MAX_SHARDS}, not {}",
                config.initial_shards
            )));
        }
        let watch = config.state.watch(STORE_TABLE);
        let persisted = this_term(table::load(&config.state)?, config.term);
        let coordinator = Arc::new(Coordinator {
            bus,
            config,
            state: Mutex::new(State {
                persisted,
                nodes: BTreeMap::new(),
                moving: None,
                boots: BTreeMap::new(),
                abort: None,
                copied: BTreeMap::new(),
                heard: BTreeMap::new(),
                last_move: None,
                last_progress_event: None,
            }),
            saving: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(table::follow(Arc::downgrade(&coordinator), watch));
        Ok(coordinator)
    }

    /// Commit `persisted` to the state. The caller holds `saving`, and puts `persisted` into
    /// `state` once this returned `Ok`.
    async fn save(&self, persisted: &Persisted) -> Result<(), StoreError> {
        table::save(&self.config.state, persisted).await
    }

    /// Take the map from the state (the leader's commits, as this member applies them), under
    /// the lock, so a later reread never loses to an earlier one.
    fn reread(&self) {
        let mut state = self.state.lock();
        match table::load(&self.config.state) {
            Ok(persisted) => state.persisted = this_term(persisted, self.config.term),
            Err(e) => tracing::error!(cause = %e, "the shard map in the state could not be read"),
        }
    }

    /// The current map.
    pub fn map(&self) -> ShardMap {
        self.state.lock().persisted.map.clone()
    }

    /// The map, the nodes and the moves.
    pub fn status(&self) -> StoreStatus {
        let state = self.state.lock();
        let map = state.persisted.map.clone();
        let nodes = state
            .nodes
            .iter()
            .map(|(id, seen)| NodeStatus {
                node: id.clone(),
                shards: (0..map.shard_count()).filter(|&s| map.holds(s, id)).collect(),
                held: seen.held.clone(),
                leads: seen.leads.clone(),
                alive: seen.seen.elapsed() < REGISTER_INTERVAL * 3,
                last_seen_ms: u64::try_from(seen.seen.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        let mut moving = state.moving.clone();
        if let Some(m) = moving.as_mut() {
            m.keys_copied = state.copied.values().sum();
        }
        StoreStatus { map, nodes, moving, last_move: state.last_move.clone() }
    }

    /// Serve registrations, map requests and progress reports until the bus closes. Finishes or
    /// gives up a move that a previous run left.
    pub async fn run(self: Arc<Self>) -> Result<(), BusError> {
        let mut registrations = self.bus.subscribe(subject::STORE_REGISTER_ALL).await?;
        let mut maps = self.bus.subscribe(subject::STORE_MAP).await?;
        let mut progress = self.bus.subscribe(subject::STORE_PROGRESS_ALL).await?;
        self.bus.flush().await?;
        let pending = self.state.lock().persisted.pending.clone();
        if let Some((id, from, to)) = pending {
            let me = self.clone();
            tokio::spawn(async move { me.recover(id, from, to).await });
        }
        loop {
            tokio::select! {
                m = registrations.next() => {
                    let Some(m) = m else { return Ok(()) };
                    // The subject names the sender: with bus authorization on, only node `<id>`
                    // may publish on `shoal.ctl.store.register.<id>`.
                    let sender = subject::store_node_of(&m.subject, "register").unwrap_or_default();
                    let answer = match serde_json::from_slice::<Registration>(&m.payload) {
                        Ok(r) if subject::token(&r.node) != sender => {
                            format!("refused: store node {sender:?} may not register as {:?}", r.node).into_bytes()
                        }
                        Ok(r) => match self.register(r).await {
                            Ok(map) => serde_json::to_vec(&map).unwrap_or_default(),
                            Err(e) => format!("refused: {e}").into_bytes(),
                        },
                        Err(e) => format!("refused: unreadable registration: {e}").into_bytes(),
                    };
                    let _ = m.respond(self.bus.as_ref(), Bytes::from(answer)).await;
                }
                m = maps.next() => {
                    let Some(m) = m else { return Ok(()) };
                    let map = self.map();
                    let _ = m.respond(self.bus.as_ref(), Bytes::from(serde_json::to_vec(&map).unwrap_or_default())).await;
                }
                m = progress.next() => {
                    let Some(m) = m else { return Ok(()) };
                    let sender = subject::store_node_of(&m.subject, "progress").unwrap_or_default();
                    if let Ok(p) = serde_json::from_slice::<Progress>(&m.payload) {
                        self.progress(sender, p).await;
                    }
                }
            }
        }
    }

    async fn register(self: &Arc<Self>, r: Registration) -> Result<ShardMap, String> {
        validate_node_id(&r.node).map_err(|e| e.to_string())?;
        // One at a time with the map's changes: a participant that restarted is either seen
        // before the move's switch is stored (and gives the move up) or gets the new map.
        let saving = self.saving.lock().await;
        let first = {
            let mut state = self.state.lock();
            if let Some(known) = state.boots.get(&r.node)
                && *known != r.boot
                && state.abort.is_none()
            {
                state.abort = Some(format!("store node `{}` restarted during the move", r.node));
            }
            state.nodes.insert(
                r.node.clone(),
                NodeSeen { held: r.held.clone(), leads: r.leads.clone(), boot: r.boot.clone(), seen: Instant::now() },
            );
            if state.persisted.map.shard_count() == 0 && state.moving.is_none() && self.config.replicas > 1 {
                // A replicated store starts once enough nodes, none holding shards, are here.
                if !r.held.is_empty() {
                    return Err(format!(
                        "store node `{}` holds shards ({:?}) but the store has no map yet; a replicated store starts on empty nodes",
                        r.node, r.held
                    ));
                }
                let fresh: Vec<String> =
                    state.nodes.iter().filter(|(_, n)| n.held.is_empty()).map(|(id, _)| id.clone()).collect();
                (fresh.len() >= self.config.replicas).then(|| {
                    let mut persisted = state.persisted.clone();
                    persisted.map =
                        replicated_map(self.config.term, self.config.initial_shards, &fresh, self.config.replicas);
                    persisted
                })
            } else if state.persisted.map.shard_count() == 0 && state.moving.is_none() {
                let count = match r.held.iter().max() {
                    Some(&max) if r.held.len() as u32 == max + 1 => max + 1,
                    Some(_) => return Err(format!("the shards held ({:?}) are not 0..n", r.held)),
                    None => self.config.initial_shards,
                };
                let mut persisted = state.persisted.clone();
                persisted.map = ShardMap {
                    term: self.config.term,
                    epoch: 1,
                    shards: vec![r.node.clone(); count as usize],
                    ..ShardMap::default()
                };
                Some(persisted)
            } else {
                None
            }
        };
        let created = first.is_some();
        if let Some(persisted) = first {
            self.save(&persisted).await.map_err(|e| e.to_string())?;
            self.state.lock().persisted = persisted;
        }
        let (map, grow) = {
            let state = self.state.lock();
            let map = state.persisted.map.clone();
            let grow = self.config.auto_scale_out
                && self.config.replicas <= 1
                && !created
                && state.moving.is_none()
                && r.held.is_empty()
                && !map.shards.contains(&r.node);
            (map, grow)
        };
        drop(saving);
        if created {
            tracing::info!(node = %r.node, shards = map.shard_count(), "store shard map created");
            self.publish_map(&map).await;
        }
        if grow {
            match self.scale_out(Some(r.node.clone())).await {
                Ok(m) => tracing::info!(node = %r.node, to = m.to_shards, "a new store node joined: growing the map"),
                Err(e) => tracing::warn!(node = %r.node, cause = %e, "not growing onto the new store node"),
            }
        }
        Ok(map)
    }

    /// Node `sender` reports `p`; only a node holding a copy of the source shard may (a replicated one exports at whichever copy leads).
    async fn progress(&self, sender: &str, p: Progress) {
        let event = {
            let mut state = self.state.lock();
            if state.moving.as_ref().map(|m| m.id) != Some(p.move_id)
                || !state.persisted.map.members(p.shard).any(|m| subject::token(m) == sender)
            {
                return;
            }
            state.copied.insert(p.shard, p.copied);
            state.heard.insert(p.shard, Instant::now());
            let due = state.last_progress_event.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if !due {
                return;
            }
            state.last_progress_event = Some(Instant::now());
            let mut m = state.moving.clone();
            if let Some(m) = m.as_mut() {
                m.keys_copied = state.copied.values().sum();
            }
            m
        };
        if let Some(m) = event {
            self.event("progress", &m).await;
        }
    }

    async fn publish_map(&self, map: &ShardMap) {
        let event = CloudEvent::new(
            self.config.source.as_str(),
            "io.shoal.store.shardmap",
            "store/shardmap",
            serde_json::to_value(map).unwrap_or_default(),
        );
        if let Err(e) = shoal_bus::event::publish_event(self.bus.as_ref(), subject::STORE_SHARDMAP, &event).await {
            tracing::warn!(cause = %e, "could not publish the shard map");
        }
    }

    async fn event(&self, action: &str, m: &MoveStatus) {
        let event = CloudEvent::new(
            self.config.source.as_str(),
            format!("io.shoal.store.move.{action}"),
            format!("store/moves/{}", m.id),
            serde_json::to_value(m).unwrap_or_default(),
        );
        if let Err(e) =
            shoal_bus::event::publish_event(self.bus.as_ref(), &subject::store_move_event(action), &event).await
        {
            tracing::warn!(cause = %e, "could not publish a store move event");
        }
    }

    /// Grow the map by one shard on `node` (default: the live node with the fewest shards).
    pub async fn scale_out(self: &Arc<Self>, node: Option<String>) -> Result<MoveStatus, ScaleError> {
        let saving = self.saving.lock().await;
        let (from, to, node) = {
            let state = self.state.lock();
            let from = state.persisted.map.clone();
            if from.shard_count() == 0 {
                return Err(ScaleError::Invalid("no store node has registered yet".into()));
            }
            if from.shard_count() >= MAX_SHARDS {
                return Err(ScaleError::Invalid(format!("the store has the most shards allowed ({MAX_SHARDS})")));
            }
            let node = match node {
                Some(n) => {
                    if state.nodes.get(&n).is_none_or(|s| s.seen.elapsed() >= REGISTER_INTERVAL * 3) {
                        return Err(ScaleError::Invalid(format!("no live store node `{n}` has registered")));
                    }
                    n
                }
                None => state
                    .nodes
                    .iter()
                    .filter(|(_, s)| s.seen.elapsed() < REGISTER_INTERVAL * 3)
                    .min_by_key(|(id, _)| (0..from.shard_count()).filter(|&s| from.holds(s, id)).count())
                    .map(|(id, _)| id.clone())
                    .ok_or_else(|| ScaleError::Invalid("no live store node".into()))?,
            };
            let mut to = from.clone();
            to.epoch = from.epoch + 1;
            let copies = from.followers.iter().map(|f| f.len() + 1).max().unwrap_or(1);
            if copies > 1 {
                let members = members_of_new_shard(&from, &state.nodes, &node, copies)?;
                to.followers.resize(from.shards.len(), Vec::new());
                to.followers.push(members[1..].to_vec());
            }
            to.shards.push(node.clone());
            (from, to, node)
        };
        self.start(&saving, MoveKind::ScaleOut, from, to, node).await
    }

    /// Remove the last shard, moving its keys to the others.
    pub async fn scale_in(self: &Arc<Self>) -> Result<MoveStatus, ScaleError> {
        let saving = self.saving.lock().await;
        let (from, to, node) = {
            let state = self.state.lock();
            let from = state.persisted.map.clone();
            if from.shard_count() < 2 {
                return Err(ScaleError::Invalid("the store has one shard; there is nothing to scale in".into()));
            }
            let mut to = from.clone();
            to.epoch = from.epoch + 1;
            let node = to.shards.pop().unwrap_or_default();
            to.followers.truncate(to.shards.len());
            (from, to, node)
        };
        self.start(&saving, MoveKind::ScaleIn, from, to, node).await
    }

    /// Record the move, then run it. `_saving` is the caller's hold on `saving`.
    async fn start(
        self: &Arc<Self>,
        _saving: &tokio::sync::MutexGuard<'_, ()>,
        kind: MoveKind,
        from: ShardMap,
        to: ShardMap,
        node: String,
    ) -> Result<MoveStatus, ScaleError> {
        let persisted = {
            let state = self.state.lock();
            if let Some(m) = &state.moving {
                return Err(ScaleError::Busy(format!("move {} ({:?}, {})", m.id, m.kind, m.phase)));
            }
            let mut persisted = state.persisted.clone();
            persisted.pending = Some((persisted.last_move_id + 1, from.clone(), to.clone()));
            persisted.last_move_id += 1;
            persisted
        };
        let id = persisted.last_move_id;
        self.save(&persisted).await.map_err(ScaleError::Unrecorded)?;
        let status = MoveStatus {
            id,
            kind,
            from_shards: from.shard_count(),
            to_shards: to.shard_count(),
            node,
            phase: "preparing".into(),
            keys_copied: 0,
            keys_estimated: 0,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            freeze_ms: None,
            error: None,
        };
        {
            let mut state = self.state.lock();
            state.persisted = persisted;
            let participants: BTreeSet<&String> = from.shards.iter().chain(&to.shards).collect();
            state.boots = participants
                .into_iter()
                .filter_map(|n| state.nodes.get(n).map(|s| (n.clone(), s.boot.clone())))
                .collect();
            state.abort = None;
            state.copied.clear();
            state.heard.clear();
            state.moving = Some(status.clone());
        }
        let me = self.clone();
        let started = status.clone();
        tokio::spawn(async move { me.run_move(started, from, to).await });
        Ok(status)
    }
}
