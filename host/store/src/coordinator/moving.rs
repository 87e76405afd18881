//! Running a move (see [`crate::node`] for the steps on the nodes): the commands to the nodes
//! (to a replicated shard's leader, or to each of its members), the switch of the map as the
//! commit point, giving a move up before it, and cleaning up after it.

use super::*;

/// A move is given up when a source shard's exporter (which reports at least every 500 ms) is silent
/// this long.
const EXPORT_SILENCE: Duration = Duration::from_secs(10);

/// How long a command for a replicated shard's leader waits for one to take it.
const LEADER_PATIENCE: Duration = Duration::from_secs(15);

impl Coordinator {
    fn phase(&self, phase: &str) {
        if let Some(m) = self.state.lock().moving.as_mut() {
            m.phase = phase.into();
        }
    }

    /// Send `command` to store node `node`, at this coordinator's term.
    async fn ask(&self, node: &str, command: Admin, timeout: Duration) -> Result<Reply, String> {
        match self.ask_raw(node, command, timeout).await? {
            Reply::Error(e) => Err(format!("store node `{node}`: {}", e.into_error())),
            other => Ok(other),
        }
    }

    /// [`Coordinator::ask`], with the node's error as its answer.
    async fn ask_raw(&self, node: &str, command: Admin, timeout: Duration) -> Result<Reply, String> {
        let request = Request::Admin { term: self.config.term, command };
        let payload = Bytes::from(wire::encode(&request));
        let reply = self
            .bus
            .request(&request.channel().subject(node), payload, timeout)
            .await
            .map_err(|e| format!("store node `{node}`: {e}"))?;
        wire::decode::<Reply>(&reply.payload).map_err(|e| e.to_string())
    }

    /// Send `command` about `shard` to the member of `map` that leads it (the only one, when it
    /// is not replicated): members are asked in turn while they answer `NotLeader` or do not
    /// answer, for up to [`LEADER_PATIENCE`] (a lease moves within its TTL).
    async fn ask_leader(&self, map: &ShardMap, shard: u32, command: Admin, timeout: Duration) -> Result<Reply, String> {
        let members: Vec<&str> = map.members(shard).collect();
        if !map.replicated(shard) || members.len() < 2 {
            return self.ask(map.node_of(shard).unwrap_or_default(), command, timeout).await;
        }
        let deadline = Instant::now() + LEADER_PATIENCE;
        let mut attempt = 0usize;
        loop {
            let node = members[attempt % members.len()];
            attempt += 1;
            let why = match self.ask_raw(node, command.clone(), timeout).await {
                Ok(Reply::Error(wire::WireError::NotLeader(_))) => format!("store node `{node}` does not lead it"),
                Ok(Reply::Error(e)) => return Err(format!("store node `{node}`: {}", e.into_error())),
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("no member of shard {shard} took the command: {why}"));
            }
            if attempt % members.len() == 0 {
                // A product retry: the shard's lease is moving to another member.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Send `command` to every member of `shard` in `map`, one after the other (all of them, even
    /// after one failed).
    async fn ask_members(&self, map: &ShardMap, shard: u32, command: Admin, timeout: Duration) -> Result<(), String> {
        let mut failures = Vec::new();
        for node in map.members(shard) {
            if let Err(e) = self.ask(node, command.clone(), timeout).await {
                failures.push(e);
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
    }

    pub(super) async fn run_move(self: Arc<Self>, mut status: MoveStatus, from: ShardMap, to: ShardMap) {
        self.event("started", &status).await;
        tracing::info!(id = status.id, kind = ?status.kind, from = status.from_shards, to = status.to_shards, "store move started");
        let sources = sources(&from, &to);
        let result = self.execute(&mut status, &from, &to, &sources).await;
        let switched = self.state.lock().persisted.map.epoch >= to.epoch;
        match result {
            Ok(()) => {
                status.phase = "finished".into();
                tracing::info!(id = status.id, freeze_ms = ?status.freeze_ms, "store move finished");
            }
            Err(e) => {
                tracing::warn!(id = status.id, cause = %e, switched, "store move failed");
                if !switched {
                    self.undo(&from, &to, &sources).await;
                }
                status.phase = "failed".into();
                status.error = Some(e);
            }
        }
        status.finished_at_ms = Some(now_ms());
        {
            let _saving = self.saving.lock().await;
            let mut persisted = self.state.lock().persisted.clone();
            persisted.pending = None;
            if let Err(e) = self.save(&persisted).await {
                tracing::error!(cause = %e, "cannot record the end of a move");
            }
            let mut state = self.state.lock();
            status.keys_copied = state.copied.values().sum();
            state.moving = None;
            state.boots.clear();
            state.last_move = Some(status.clone());
            state.persisted = persisted;
        }
        self.event(if status.error.is_some() { "failed" } else { "finished" }, &status).await;
    }

    async fn execute(
        &self,
        status: &mut MoveStatus,
        from: &ShardMap,
        to: &ShardMap,
        sources: &[u32],
    ) -> Result<(), String> {
        let out = to.shard_count() > from.shard_count();
        let long = Duration::from_secs(1800);
        let short = Duration::from_secs(30);
        // Estimate the keys that move.
        let mut estimated = 0u64;
        for &s in sources {
            if let Ok(Reply::Count(n)) = self.ask_leader(from, s, Admin::Count { shard: s }, short).await {
                estimated += n;
            }
        }
        if out {
            estimated /= u64::from(to.shard_count());
        }
        status.keys_estimated = estimated;
        if let Some(m) = self.state.lock().moving.as_mut() {
            m.keys_estimated = estimated;
        }
        if out && to.replicated(to.shard_count() - 1) {
            // What a failed move may have left of the new shard (its log above all) goes first.
            let new = to.shard_count() - 1;
            self.ask_members(to, new, Admin::DropReplica { shard: new }, short).await?;
            self.ask_members(to, new, Admin::CreateReplica { shard: new }, short).await?;
        } else if out {
            let new = to.shard_count() - 1;
            self.ask(to.node_of(new).unwrap_or_default(), Admin::CreateShard { shard: new }, short).await?;
        } else {
            // Drop strays an earlier failed move may have left in the destinations.
            for d in 0..to.shard_count() {
                self.ask_leader(to, d, Admin::Cleanup { shard: d }, long).await?;
            }
        }
        self.phase("copying");
        let exports = sources.iter().map(|&s| {
            let request = Admin::Export { move_id: status.id, shard: s, target: to.clone() };
            self.ask_leader(from, s, request, long)
        });
        let results = tokio::select! {
            results = futures::future::join_all(exports) => results,
            reason = self.silent_export(sources) => return Err(reason),
        };
        for result in results {
            result?;
        }
        self.check_abort()?;
        self.phase("switching");
        let freeze_started = Instant::now();
        let freezes = sources.iter().map(|&s| self.ask_leader(from, s, Admin::Freeze { shard: s }, short));
        for result in futures::future::join_all(freezes).await {
            result?;
        }
        // Commit: from here on the move has happened.
        {
            let _saving = self.saving.lock().await;
            let persisted = {
                let state = self.state.lock();
                if let Some(reason) = state.abort.clone() {
                    return Err(reason);
                }
                let mut persisted = state.persisted.clone();
                persisted.map = to.clone();
                persisted
            };
            self.save(&persisted).await.map_err(|e| format!("cannot store the new map: {e}"))?;
            self.state.lock().persisted = persisted;
        }
        let nodes: BTreeSet<&str> = (0..from.shard_count())
            .flat_map(|s| from.members(s))
            .chain((0..to.shard_count()).flat_map(|s| to.members(s)))
            .collect();
        let sends = nodes.iter().map(|n| self.ask(n, Admin::Map { map: to.clone() }, Duration::from_secs(2)));
        for result in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::warn!(cause = %e, "a store node did not take the new map (it will on its next registration)");
            }
        }
        self.publish_map(to).await;
        status.freeze_ms = Some(u64::try_from(freeze_started.elapsed().as_millis()).unwrap_or(u64::MAX));
        if let Some(m) = self.state.lock().moving.as_mut() {
            m.freeze_ms = status.freeze_ms;
        }
        self.phase("cleaning");
        self.clean_up(from, to, sources).await;
        Ok(())
    }

    /// Returns (why) once the move must be given up while its exports run: a participant
    /// restarted, or a source shard's exporter has not reported for [`EXPORT_SILENCE`] (its node
    /// died or was cut off mid-export: its answer would never come).
    async fn silent_export(&self, sources: &[u32]) -> String {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let state = self.state.lock();
            if let Some(reason) = state.abort.clone() {
                return reason;
            }
            for &s in sources {
                let heard = state.heard.get(&s).copied().unwrap_or(started);
                if heard.elapsed() >= EXPORT_SILENCE {
                    return format!(
                        "the export of shard {s} has not reported for {} s (its node died or is cut off)",
                        EXPORT_SILENCE.as_secs()
                    );
                }
            }
        }
    }

    fn check_abort(&self) -> Result<(), String> {
        match self.state.lock().abort.clone() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// After the switch: sources stop exporting and drop what they gave away.
    async fn clean_up(&self, from: &ShardMap, to: &ShardMap, sources: &[u32]) {
        let out = to.shard_count() > from.shard_count();
        for &s in sources {
            let end = Admin::EndExport { shard: s, committed: true };
            // A replicated shard the new map drops has no leader any more (its members let it go
            // as they took the map): its copies and log go below.
            let dropped = !out && from.replicated(s);
            if !dropped && let Err(e) = self.ask_leader(from, s, end, Duration::from_secs(5)).await {
                tracing::warn!(shard = s, cause = %e, "a source has not taken the new map yet; it will on its next registration");
            }
            let long = Duration::from_secs(1800);
            let cleaned = if out {
                self.ask_leader(from, s, Admin::Cleanup { shard: s }, long).await.map(drop)
            } else if from.replicated(s) {
                self.ask_members(from, s, Admin::DropReplica { shard: s }, long).await
            } else {
                self.ask(from.node_of(s).unwrap_or_default(), Admin::DropShard { shard: s }, long).await.map(drop)
            };
            if let Err(e) = cleaned {
                tracing::warn!(shard = s, cause = %e, "clean-up after a move failed; the copies left are never served");
            }
        }
    }

    /// Before the switch: give the move up.
    async fn undo(&self, from: &ShardMap, to: &ShardMap, sources: &[u32]) {
        for &s in sources {
            let end = Admin::EndExport { shard: s, committed: false };
            if let Err(e) = self.ask_leader(from, s, end, Duration::from_secs(5)).await {
                tracing::warn!(shard = s, cause = %e, "could not end an export");
            }
        }
        if to.shard_count() > from.shard_count() {
            let new = to.shard_count() - 1;
            let timeout = Duration::from_secs(30);
            let dropped = if to.replicated(new) {
                self.ask_members(to, new, Admin::DropReplica { shard: new }, timeout).await
            } else {
                self.ask(to.node_of(new).unwrap_or_default(), Admin::DropShard { shard: new }, timeout).await.map(drop)
            };
            if let Err(e) = dropped {
                tracing::warn!(shard = new, cause = %e, "could not drop the new shard of a failed move");
            }
        }
    }

    /// A move a previous run of the master left: finish its clean-up or give it up.
    pub(super) async fn recover(self: Arc<Self>, id: u64, from: ShardMap, to: ShardMap) {
        let sources = sources(&from, &to);
        // Give the nodes time to come back.
        tokio::time::sleep(REGISTER_INTERVAL).await;
        let switched = self.state.lock().persisted.map.epoch >= to.epoch;
        tracing::info!(id, switched, "a move was in progress when the master stopped");
        if switched {
            self.clean_up(&from, &to, &sources).await;
        } else {
            self.undo(&from, &to, &sources).await;
        }
        let _saving = self.saving.lock().await;
        let persisted = {
            let state = self.state.lock();
            let mut persisted = state.persisted.clone();
            persisted.pending = None;
            state.moving.is_none().then_some(persisted)
        };
        if let Some(persisted) = persisted
            && self.save(&persisted).await.is_ok()
        {
            self.state.lock().persisted = persisted;
        }
    }
}

/// The members of a scale-out's new shard on a store with `copies` copies of every shard:
/// `first`, then the live nodes holding the fewest copies.
pub(super) fn members_of_new_shard(
    map: &ShardMap,
    nodes: &BTreeMap<String, NodeSeen>,
    first: &str,
    copies: usize,
) -> Result<Vec<String>, ScaleError> {
    let held = |id: &str| (0..map.shard_count()).filter(|&s| map.holds(s, id)).count();
    let mut live: Vec<&String> = nodes
        .iter()
        .filter(|(id, seen)| seen.seen.elapsed() < REGISTER_INTERVAL * 3 && id.as_str() != first)
        .map(|(id, _)| id)
        .collect();
    live.sort_by_key(|id| (held(id), id.as_str()));
    let members: Vec<String> =
        std::iter::once(first.to_owned()).chain(live.into_iter().cloned()).take(copies).collect();
    if members.len() < copies {
        return Err(ScaleError::Invalid(format!(
            "every shard has {copies} copies, but only {} live store nodes can hold the new one",
            members.len()
        )));
    }
    Ok(members)
}

/// The shards that give keys away in a move from `from` to `to`: every shard on scale-out (each
/// sends about 1/(N+1) of its keys to the new one), the last one on scale-in.
fn sources(from: &ShardMap, to: &ShardMap) -> Vec<u32> {
    if to.shard_count() > from.shard_count() { (0..from.shard_count()).collect() } else { vec![from.shard_count() - 1] }
}
