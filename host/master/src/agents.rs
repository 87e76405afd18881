//! The agent registry: agents register over the bus with their resources, attributes and the
//! tasks they run (`shoal_protocol::agent`), heartbeat, and are declared lost when silent for
//! longer than [`crate::MasterConfig::agent_timeout`]: `shoal.evt.agent.<id>.lost`, their offers
//! rescinded and their tasks lost. A lost agent stays listed until it registers again
//! (`shoal.evt.agent.<id>.reregistered`). What the registry keeps is soft state, rebuilt from
//! agents registering again after a restart of the master.

use std::collections::BTreeMap;
use tokio::time::Instant;

use serde::Serialize;
use shoal_bus::subject;
use shoal_protocol::{AgentRegistration, RegisterReply, Resources, validate_agent_id};

use crate::{Master, MasterError, OfferView};

/// State of an agent as the master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Registered and heartbeating.
    Active,
    /// Silent past the timeout.
    Lost,
}

/// An agent as the master lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Total resources.
    pub total: Resources,
    /// `active` or `lost`.
    pub state: AgentState,
    /// Ids of the tasks the agent reported when it registered.
    pub tasks: Vec<String>,
    /// Registrations so far (1 on the first).
    pub registrations: u64,
    /// Milliseconds since the last heartbeat or registration.
    pub last_seen_ms_ago: u64,
    /// When it first registered, ms since the Unix epoch.
    pub registered_at_ms: u64,
}

pub(crate) struct AgentEntry {
    pub(crate) reg: AgentRegistration,
    pub(crate) state: AgentState,
    pub(crate) last_seen: Instant,
    pub(crate) registrations: u64,
    pub(crate) registered_at_ms: u64,
}

impl Master {
    /// Register an agent without the bus (simulations and benchmarks); the same checks as a
    /// registration over the bus.
    pub fn admit(&self, reg: AgentRegistration) -> Result<&'static str, MasterError> {
        self.admit_inner(reg).map(|(action, _)| action)
    }

    /// Take back every offer of `agent` (it was lost).
    pub(crate) fn rescind_agent(&self, agent: &str) -> Vec<OfferView> {
        let mut offers = self.offers.lock();
        let ids: Vec<u64> = offers.by_id.values().filter(|o| o.agent_id == agent).map(|o| o.id).collect();
        ids.into_iter().filter_map(|id| offers.by_id.remove(&id)).collect()
    }

    /// Every agent the master knows, active or lost.
    pub fn agents(&self) -> Vec<AgentView> {
        let live = self.live_tasks_per_agent();
        self.agents.lock().values().map(|e| view(e, &live)).collect()
    }

    /// One agent.
    pub fn agent(&self, id: &str) -> Option<AgentView> {
        let live = self.live_tasks_per_agent();
        self.agents.lock().get(id).map(|e| view(e, &live))
    }

    /// The tasks on each agent that have not ended, as the master tracks them, and the ids of
    /// those it knows ended. Taken before the agents' lock, never under it.
    fn live_tasks_per_agent(&self) -> LiveTasks {
        let mut live = LiveTasks::default();
        for t in self.tasks.lock().values() {
            if t.state.is_terminal() {
                live.ended.insert(t.info.id.clone());
            } else {
                live.on.entry(t.info.agent_id.clone()).or_default().push(t.info.id.clone());
            }
        }
        live
    }

    /// Agent `sender` (the id its subject names) registers with `payload`.
    pub(crate) async fn register(&self, sender: &str, payload: &[u8]) -> RegisterReply {
        let heartbeat_ms = self.config.heartbeat_interval().as_millis() as u64;
        let term = self.config.term;
        let refuse =
            |error: String| RegisterReply { term, accepted: false, error: Some(error), heartbeat_ms, kill: Vec::new() };
        let reg: AgentRegistration = match serde_json::from_slice(payload) {
            Ok(reg) => reg,
            Err(e) => return refuse(format!("malformed registration: {e}")),
        };
        if subject::token(&reg.id) != sender {
            tracing::warn!(agent = %sender, claimed = %reg.id, "registration for another agent refused");
            return refuse(format!("agent {sender:?} may not register as {:?}", reg.id));
        }
        let (action, data) = match self.admit_inner(reg.clone()) {
            Ok(x) => x,
            Err(e) => return refuse(e.to_string()),
        };
        tracing::info!(agent = %reg.id, hostname = %reg.hostname, resources = %reg.resources, action, "agent registered");
        self.events
            .emit(
                subject::agent_event(&reg.id, action),
                &format!("io.shoal.agent.{action}"),
                &format!("agents/{}", reg.id),
                data,
            )
            .await;
        let kill = self.reconcile_agent(&reg.id, &reg.tasks).await;
        if !kill.is_empty() {
            tracing::warn!(agent = %reg.id, tasks = ?kill, "the agent runs tasks the cluster gave up; it kills them");
        }
        self.kick.notify_one();
        RegisterReply { term, accepted: true, error: None, heartbeat_ms, kill }
    }

    pub(crate) fn admit_inner(&self, reg: AgentRegistration) -> Result<(&'static str, serde_json::Value), MasterError> {
        validate_agent_id(&reg.id)?;
        if reg.hostname.is_empty() || reg.hostname.len() > 253 {
            return Err(MasterError::InvalidHostname);
        }
        let resources = reg.resources.clone().validate()?;
        let reg = AgentRegistration { resources, ..reg };
        {
            let mut agents = self.agents.lock();
            let existing = agents.get(&reg.id);
            if let Some(e) = existing
                && e.state == AgentState::Active
                && e.reg.hostname != reg.hostname
            {
                return Err(MasterError::AgentIdTaken { id: reg.id.clone(), hostname: e.reg.hostname.clone() });
            }
            let (action, registrations, registered_at_ms) = match existing {
                Some(e) => ("reregistered", e.registrations + 1, e.registered_at_ms),
                None => ("registered", 1, self.clock.now_ms()),
            };
            let data = serde_json::json!({
                "id": reg.id, "hostname": reg.hostname, "attributes": reg.attributes,
                "resources": reg.resources, "tasks": reg.tasks.iter().map(|t| &t.info.id).collect::<Vec<_>>(),
            });
            agents.insert(
                reg.id.clone(),
                AgentEntry {
                    reg: reg.clone(),
                    state: AgentState::Active,
                    last_seen: Instant::now(),
                    registrations,
                    registered_at_ms,
                },
            );
            Ok((action, data))
        }
    }

    pub(crate) fn heartbeat(&self, id: &str) -> bool {
        let mut agents = self.agents.lock();
        match agents.get_mut(id) {
            Some(e) if e.state == AgentState::Active => {
                e.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    pub(crate) async fn sweep(&self) {
        let lost: Vec<(String, String, Vec<String>, u64)> = {
            let mut agents = self.agents.lock();
            let timeout = self.config.agent_timeout;
            agents
                .values_mut()
                .filter(|e| e.state == AgentState::Active && e.last_seen.elapsed() > timeout)
                .map(|e| {
                    e.state = AgentState::Lost;
                    (
                        e.reg.id.clone(),
                        e.reg.hostname.clone(),
                        e.reg.tasks.iter().map(|t| t.info.id.clone()).collect(),
                        e.last_seen.elapsed().as_millis() as u64,
                    )
                })
                .collect()
        };
        let forgotten: Vec<(String, String)> = {
            let mut agents = self.agents.lock();
            let after = self.config.agent_timeout + self.config.forget_lost_after;
            let gone: Vec<String> = agents
                .values()
                .filter(|e| e.state == AgentState::Lost && e.last_seen.elapsed() > after)
                .map(|e| e.reg.id.clone())
                .collect();
            gone.into_iter().filter_map(|id| agents.remove(&id).map(|e| (id, e.reg.hostname))).collect()
        };
        for (id, hostname) in forgotten {
            tracing::info!(agent = %id, %hostname, "lost agent forgotten");
            self.events
                .emit(
                    subject::agent_event(&id, "forgotten"),
                    "io.shoal.agent.forgotten",
                    &format!("agents/{id}"),
                    serde_json::json!({ "id": id, "hostname": hostname }),
                )
                .await;
        }
        for (id, hostname, tasks, silent_ms) in lost {
            tracing::warn!(agent = %id, %hostname, silent_ms, "agent lost");
            for offer in self.rescind_agent(&id) {
                self.events
                    .emit(
                        subject::offer_event(&offer.framework, "rescinded"),
                        "io.shoal.offer.rescinded",
                        &format!("offers/{}", offer.id),
                        serde_json::json!({ "offer": offer, "reason": format!("agent {id} lost") }),
                    )
                    .await;
            }
            self.events
                .emit(
                    subject::agent_event(&id, "lost"),
                    "io.shoal.agent.lost",
                    &format!("agents/{id}"),
                    serde_json::json!({ "id": id, "hostname": hostname, "tasks": tasks, "silent_ms": silent_ms }),
                )
                .await;
            self.agent_lost(&id).await;
        }
    }
}

/// Tasks by agent (see [`Master::live_tasks_per_agent`]).
#[derive(Default)]
struct LiveTasks {
    on: std::collections::BTreeMap<String, Vec<String>>,
    ended: std::collections::BTreeSet<String>,
}

/// An agent's view: its tasks are those the master placed there and has not seen end, and those
/// it reported when it last registered (unless the master saw them end since).
fn view(e: &AgentEntry, live: &LiveTasks) -> AgentView {
    let mut tasks: Vec<String> = live.on.get(&e.reg.id).cloned().unwrap_or_default();
    let reported = e.reg.tasks.iter().filter(|t| !t.state.is_terminal()).map(|t| t.info.id.clone());
    tasks.extend(reported.filter(|id| !live.ended.contains(id)));
    tasks.sort();
    tasks.dedup();
    AgentView {
        id: e.reg.id.clone(),
        hostname: e.reg.hostname.clone(),
        attributes: e.reg.attributes.clone(),
        total: e.reg.resources.clone(),
        state: e.state,
        tasks,
        registrations: e.registrations,
        last_seen_ms_ago: e.last_seen.elapsed().as_millis() as u64,
        registered_at_ms: e.registered_at_ms,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use shoal_agent::run_agent;
    use shoal_bus::{LocalBus, SharedBus};
    use shoal_protocol::{AgentTask, TaskCommand, TaskInfo, TaskState};

    use super::*;
    use crate::MasterConfig;

    /// A registration of agent `id` on `host`: 2 cpus, 1 GiB, 11 ports, `rack=r1`.
    pub(crate) fn reg(id: &str, host: &str) -> AgentRegistration {
        AgentRegistration {
            id: id.into(),
            hostname: host.into(),
            address: None,
            attributes: BTreeMap::from([("rack".into(), "r1".into())]),
            resources: Resources::parse("cpus:2;mem:1024;ports:[31000-31010]").unwrap(),
            tasks: vec![],
        }
    }

    /// Waits (on the test's clock) until `f` holds.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        shoal_testkit::eventually(what, Duration::from_secs(10), || std::future::ready(f().then_some(()))).await;
    }

    /// Time is the test's: an agent silent for just under the timeout stays, a heartbeat
    /// restarts its count, and one silent past it is lost — decided by the clock the test moves,
    /// not by waiting.
    #[tokio::test(start_paused = true)]
    async fn an_agent_is_lost_exactly_when_silent_past_the_timeout() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let timeout = Duration::from_secs(5);
        let master = Master::new(bus, MasterConfig { agent_timeout: timeout, ..MasterConfig::default() }, None);
        master.admit(reg("a1", "host-1")).unwrap();
        master.admit(reg("a2", "host-2")).unwrap();
        let state = |id: &str| master.agent(id).unwrap().state;

        tokio::time::advance(timeout - Duration::from_millis(100)).await;
        assert!(master.heartbeat("a2"));
        master.sweep().await;
        assert_eq!((state("a1"), state("a2")), (AgentState::Active, AgentState::Active));

        tokio::time::advance(Duration::from_millis(200)).await;
        master.sweep().await;
        assert_eq!((state("a1"), state("a2")), (AgentState::Lost, AgentState::Active), "a2 heartbeat 200 ms ago");
        assert!(!master.heartbeat("a1"), "a lost agent must register again");
        assert_eq!(master.agent("a1").unwrap().last_seen_ms_ago, timeout.as_millis() as u64 + 100);

        tokio::time::advance(timeout).await;
        master.sweep().await;
        assert_eq!(state("a2"), AgentState::Lost);
    }

    /// Issue 24: a lost agent is forgotten once it has been lost for `forget_lost_after` (on the
    /// clock the test moves), with an event; one that is merely lost stays listed.
    #[tokio::test(start_paused = true)]
    async fn a_lost_agent_is_forgotten_after_its_time() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let mut events = bus.subscribe("shoal.evt.agent.>").await.unwrap();
        let (timeout, forget) = (Duration::from_secs(5), Duration::from_secs(60));
        let config = MasterConfig { agent_timeout: timeout, forget_lost_after: forget, ..MasterConfig::default() };
        let master = Master::new(bus, config, None);
        master.admit(reg("a1", "host-1")).unwrap();
        tokio::time::advance(timeout + Duration::from_secs(1)).await;
        master.sweep().await;
        assert_eq!(master.agent("a1").unwrap().state, AgentState::Lost);
        assert_eq!(events.next().await.unwrap().subject, "shoal.evt.agent.a1.lost");

        tokio::time::advance(forget - Duration::from_secs(2)).await;
        master.sweep().await;
        assert!(master.agent("a1").is_some(), "lost for less than a minute: still listed");
        tokio::time::advance(Duration::from_secs(2)).await;
        master.sweep().await;
        assert!(master.agent("a1").is_none(), "lost for over a minute: forgotten");
        assert_eq!(events.next().await.unwrap().subject, "shoal.evt.agent.a1.forgotten");
        // It may come back, as a new agent.
        master.admit(reg("a1", "host-1")).unwrap();
        assert_eq!(master.agent("a1").unwrap().state, AgentState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn register_heartbeat_lose_and_come_back() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let mut events = bus.subscribe("shoal.evt.agent.>").await.unwrap();
        let master = Master::new(
            bus.clone(),
            MasterConfig { agent_timeout: Duration::from_millis(400), ..MasterConfig::default() },
            None,
        );
        tokio::spawn(master.clone().run());
        let agent = tokio::spawn(run_agent(bus.clone(), reg("a1", "host-1")));
        eventually("registration", || master.agent("a1").is_some_and(|a| a.state == AgentState::Active)).await;
        let e = events.next().await.unwrap();
        assert_eq!(e.subject, "shoal.evt.agent.a1.registered");

        // Heartbeats keep it active well past the timeout (the paused clock moves 1 s while the
        // agent and the master run).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(master.agent("a1").unwrap().state, AgentState::Active);

        // Silence: lost, with an event.
        agent.abort();
        eventually("loss", || master.agent("a1").is_some_and(|a| a.state == AgentState::Lost)).await;
        let e = events.next().await.unwrap();
        assert_eq!(e.subject, "shoal.evt.agent.a1.lost");

        // It comes back with its tasks: re-registered.
        let mut back = reg("a1", "host-1");
        back.tasks = vec![AgentTask {
            info: TaskInfo {
                id: "web.1".into(),
                framework: "service".into(),
                agent_id: "a1".into(),
                command: TaskCommand::Shell("sleep 60".into()),
                resources: Resources::parse("cpus:0.1;mem:16").unwrap(),
                env: BTreeMap::new(),
                labels: BTreeMap::new(),
            },
            state: TaskState::Running,
            healthy: None,
            message: String::new(),
        }];
        tokio::spawn(run_agent(bus.clone(), back));
        eventually("re-registration", || master.agent("a1").is_some_and(|a| a.state == AgentState::Active)).await;
        let a = master.agent("a1").unwrap();
        assert_eq!((a.registrations, a.tasks.as_slice()), (2, ["web.1".to_owned()].as_slice()));
        assert_eq!(events.next().await.unwrap().subject, "shoal.evt.agent.a1.reregistered");
    }

    #[tokio::test]
    async fn bad_registrations_are_refused_and_change_nothing() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus.clone(), MasterConfig::default(), None);
        tokio::spawn(master.clone().run());
        tokio::spawn(run_agent(bus.clone(), reg("a1", "host-1")));
        eventually("registration", || master.agent("a1").is_some()).await;

        let mut bad = reg("a2", "host-2");
        bad.resources.cpus = -1.0;
        let err = run_agent(bus.clone(), bad).await.unwrap_err().to_string();
        assert!(err.contains("cpus = -1"), "{err}");
        let err = run_agent(bus.clone(), reg("Bad_Id", "h")).await.unwrap_err().to_string();
        assert!(err.contains("agent id"), "{err}");
        let err = run_agent(bus.clone(), reg("a1", "host-9")).await.unwrap_err().to_string();
        assert!(err.contains("held by a live agent on host-1"), "{err}");
        let reply = bus
            .request(&subject::agent_register("a2"), Bytes::from_static(b"{nope"), Duration::from_secs(2))
            .await
            .unwrap();
        let reply: RegisterReply = serde_json::from_slice(&reply.payload).unwrap();
        assert!(!reply.accepted && reply.error.unwrap().contains("malformed"));
        // An agent registers only as itself: the subject names the sender.
        let impostor = serde_json::to_vec(&reg("a9", "host-9")).unwrap();
        let reply = bus.request(&subject::agent_register("a2"), impostor.into(), Duration::from_secs(2)).await.unwrap();
        let reply: RegisterReply = serde_json::from_slice(&reply.payload).unwrap();
        assert!(!reply.accepted, "{reply:?}");
        assert!(reply.error.as_deref().unwrap_or_default().contains("may not register as"), "{reply:?}");
        let agents = master.agents();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].hostname, "host-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_update_is_taken_only_from_the_agent_it_names() {
        use shoal_protocol::{StatusAck, StatusUpdate};
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus.clone(), MasterConfig::default(), None);
        tokio::spawn(master.clone().run());
        let update = |agent: &str| {
            let update = StatusUpdate {
                uuid: format!("u-{agent}"),
                task_id: "t1".into(),
                agent_id: agent.into(),
                state: TaskState::Failed,
                healthy: None,
                message: String::new(),
                timestamp_ms: 1,
            };
            Bytes::from(serde_json::to_vec(&update).unwrap())
        };
        // Its own: acknowledged (the task is unknown, which changes nothing either way).
        let ack = loop {
            match bus.request(&subject::agent_status("a1"), update("a1"), Duration::from_secs(2)).await {
                // Until the master has subscribed.
                Err(shoal_bus::BusError::NoResponders { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => break other.unwrap(),
            }
        };
        let ack: StatusAck = serde_json::from_slice(&ack.payload).unwrap();
        assert_eq!(ack.uuid, "u-a1");
        // Agent a1 speaking for a2 on its own subject: dropped unanswered, so never acknowledged.
        let forged = bus.request(&subject::agent_status("a1"), update("a2"), Duration::from_secs(2)).await;
        assert!(matches!(forged, Err(shoal_bus::BusError::Timeout { .. })), "{forged:?}");
    }
}
