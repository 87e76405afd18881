//! Fencing with leader terms, against a real agent on the in-process bus: launches and kills of a
//! term lower than the highest the agent has seen (a deposed master's) are refused and change
//! nothing, also after the agent restarts on the same work dir; a master of a higher term
//! launches and kills as usual.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use shoal_agent::{Agent, AgentConfig};
use shoal_bus::{LocalBus, SharedBus, subject};
use shoal_protocol::{
    AgentRegistration, KillReply, KillRequest, LaunchReply, LaunchRequest, Resources, StatusAck, StatusUpdate,
    TaskCommand, TaskInfo, TaskState,
};
use shoal_testkit::eventually;

const PATIENCE: Duration = Duration::from_secs(20);

fn registration(id: &str) -> AgentRegistration {
    AgentRegistration {
        id: id.into(),
        hostname: "localhost".into(),
        address: Some("127.0.0.1".into()),
        attributes: BTreeMap::new(),
        resources: Resources::parse("cpus:4;mem:1024;ports:[45000-45099]").unwrap(),
        tasks: Vec::new(),
    }
}

/// An agent `a1` working in `<dir>/work`, its sandboxes under `<dir>/<sandboxes>` (each agent
/// process holds its own sandbox root).
fn agent(bus: &SharedBus, dir: &Path, sandboxes: &str) -> Arc<Agent> {
    use std::os::unix::fs::PermissionsExt;
    // Enterable by the task user when the tests run as root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut config = AgentConfig::new(registration("a1"), dir.join("work"));
    config.sandbox_root = Some(dir.join(sandboxes));
    config.grace = Duration::from_millis(500);
    let agent = Agent::new(bus.clone(), config).unwrap();
    tokio::spawn(agent.clone().run());
    agent
}

fn task(id: &str) -> TaskInfo {
    TaskInfo {
        id: id.into(),
        framework: "test".into(),
        agent_id: "a1".into(),
        command: TaskCommand::Shell("exec sleep 600".into()),
        resources: Resources::parse("cpus:0.1;mem:16").unwrap(),
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
    }
}

/// A request to agent `a1` on `subject`, sent until the agent answers (it subscribes as it starts).
async fn ask<T: serde::de::DeserializeOwned>(bus: &SharedBus, subject: String, body: Vec<u8>) -> T {
    eventually(&format!("the agent to answer on {subject}"), PATIENCE, || {
        let (bus, subject, body) = (bus.clone(), subject.clone(), body.clone());
        async move {
            let msg = bus.request(&subject, body.into(), Duration::from_secs(2)).await.ok()?;
            serde_json::from_slice::<T>(&msg.payload).ok()
        }
    })
    .await
}

async fn launch(bus: &SharedBus, term: u64, id: &str) -> LaunchReply {
    let request = LaunchRequest { term, tasks: vec![task(id)] };
    ask(bus, subject::agent_launch("a1"), serde_json::to_vec(&request).unwrap()).await
}

async fn kill(bus: &SharedBus, term: u64, id: &str) -> KillReply {
    let request = KillRequest { term, task_id: id.into(), grace_ms: Some(500) };
    ask(bus, subject::agent_kill("a1"), serde_json::to_vec(&request).unwrap()).await
}

/// Stands in for the master's status endpoint: acknowledges every status update of agent `a1`
/// and keeps them, in the order they came.
async fn status_sink(bus: &SharedBus) -> Arc<Mutex<Vec<StatusUpdate>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut updates = bus.subscribe(&subject::agent_status("a1")).await.unwrap();
    let (bus, kept) = (bus.clone(), seen.clone());
    tokio::spawn(async move {
        while let Some(msg) = updates.next().await {
            let Ok(update) = serde_json::from_slice::<StatusUpdate>(&msg.payload) else { continue };
            let ack = serde_json::to_vec(&StatusAck { uuid: update.uuid.clone() }).unwrap();
            kept.lock().push(update);
            let _ = msg.respond(bus.as_ref(), ack.into()).await;
        }
    });
    seen
}

fn state(agent: &Agent, id: &str) -> Option<TaskState> {
    agent.task_states().into_iter().find(|(task, ..)| task == id).map(|(_, state, _)| state)
}

async fn wait_for_state(agent: &Agent, id: &str, want: TaskState) {
    eventually(&format!("task {id} to be {want} (it is {:?})", state(agent, id)), PATIENCE, || {
        std::future::ready((state(agent, id) == Some(want)).then_some(()))
    })
    .await;
}

/// The states task `id` was reported in, in order.
fn reported(statuses: &Mutex<Vec<StatusUpdate>>, id: &str) -> Vec<TaskState> {
    statuses.lock().iter().filter(|u| u.task_id == id).map(|u| u.state).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_masters_launches_and_kills_are_refused_also_after_a_restart() {
    shoal_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(LocalBus::new());
    let statuses = status_sink(&bus).await;
    let first = agent(&bus, dir.path(), "sandboxes-1");
    assert_eq!(first.highest_term(), 0, "a new agent has seen no term");

    // The leader of term 5 launches: accepted.
    let reply = launch(&bus, 5, "t5").await;
    assert_eq!((reply.accepted, reply.refused), (vec!["t5".to_owned()], vec![]));
    wait_for_state(&first, "t5", TaskState::Running).await;
    assert_eq!(first.highest_term(), 5);

    // A deposed leader of term 4 launches: refused, and the task is never started.
    let reply = launch(&bus, 4, "t4").await;
    assert!(reply.accepted.is_empty(), "{reply:?}");
    assert_eq!(reply.refused, vec![("t4".to_owned(), "stale term 4: this agent has seen term 5".to_owned())]);
    assert_eq!(state(&first, "t4"), None, "a refused launch left a task behind");

    // ...and kills: refused, the task keeps running.
    let reply = kill(&bus, 4, "t5").await;
    assert!(reply.known, "{reply:?}");
    assert_eq!(reply.refused.as_deref(), Some("stale term 4: this agent has seen term 5"));
    // Another launch of term 5 is the barrier: by the time its task runs, a kill carried out
    // would long have ended `t5` (a SIGTERM to `sleep`), and its status would come first.
    let reply = launch(&bus, 5, "t5b").await;
    assert_eq!(reply.accepted, vec!["t5b".to_owned()], "{reply:?}");
    eventually("t5b's running status", PATIENCE, || {
        std::future::ready(reported(&statuses, "t5b").contains(&TaskState::Running).then_some(()))
    })
    .await;
    assert_eq!(state(&first, "t5"), Some(TaskState::Running));
    assert_eq!(reported(&statuses, "t5"), [TaskState::Starting, TaskState::Running], "t5 ended");
    assert!(reported(&statuses, "t4").is_empty(), "a refused launch was reported");

    // The leader's kill of term 5 is carried out.
    let reply = kill(&bus, 5, "t5").await;
    assert_eq!((reply.known, reply.refused), (true, None));
    wait_for_state(&first, "t5", TaskState::Killed).await;
    assert_eq!(std::fs::read_to_string(dir.path().join("work/term")).unwrap().trim(), "5");

    // The agent restarts on the same work dir (a new process: a new connection to the bus, and
    // its previous run's leftovers killed). It still refuses the deposed leader.
    let bus: SharedBus = Arc::new(LocalBus::new());
    let statuses = status_sink(&bus).await;
    let second = agent(&bus, dir.path(), "sandboxes-2");
    assert_eq!(second.highest_term(), 5, "the term was forgotten across a restart");
    let reply = launch(&bus, 4, "t4").await;
    assert!(reply.accepted.is_empty(), "{reply:?}");
    assert_eq!(reply.refused, vec![("t4".to_owned(), "stale term 4: this agent has seen term 5".to_owned())]);
    assert_eq!(state(&second, "t4"), None);
    // A newer leader is obeyed, and its term becomes the one to beat.
    let reply = launch(&bus, 6, "t6").await;
    assert_eq!(reply.accepted, vec!["t6".to_owned()], "{reply:?}");
    wait_for_state(&second, "t6", TaskState::Running).await;
    let reply = kill(&bus, 5, "t6").await;
    assert_eq!(reply.refused.as_deref(), Some("stale term 5: this agent has seen term 6"));
    let reply = kill(&bus, 6, "t6").await;
    assert_eq!((reply.known, reply.refused), (true, None));
    wait_for_state(&second, "t6", TaskState::Killed).await;
    assert!(reported(&statuses, "t4").is_empty(), "a refused launch was reported");
    second.stop_all().await;
    first.stop_all().await;
}

/// A master of term 7 (a leader after six others) registers, launches and kills on a real agent
/// as any master does, and the agent learns its term from the registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_of_term_7_launches_and_kills() {
    use shoal_abi::{HttpRequest, PluginKind};
    use shoal_master::{Master, MasterConfig, MasterParts};
    use shoal_registry::{Registry, RegistryConfig};
    use shoal_runtime::{Runtime, RuntimeConfig};

    shoal_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(dir.path().join("cache")), ..RuntimeConfig::default() }).unwrap();
    let (registry, _events) = Registry::open(&dir.path().join("registry"), runtime, RegistryConfig::default()).unwrap();
    registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true).await.unwrap();
    registry.push(PluginKind::Framework, "keeper", Some("1"), shoal_artifacts::KEEPER_FRAMEWORK, true).await.unwrap();
    let bus: SharedBus = Arc::new(LocalBus::new());
    let config =
        MasterConfig { term: 7, allocation_interval: Some(Duration::from_millis(100)), ..MasterConfig::default() };
    let master =
        Master::with_parts(bus.clone(), config, MasterParts { registry: Some(registry), ..MasterParts::default() });
    tokio::spawn(master.clone().run());

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut config = AgentConfig::new(registration("m7"), dir.path().join("work"));
    config.sandbox_root = Some(dir.path().join("sandboxes"));
    config.grace = Duration::from_millis(500);
    let agent = Agent::new(bus.clone(), config).unwrap();
    tokio::spawn(agent.clone().run());
    eventually("the agent to register and learn the master's term", PATIENCE, || {
        std::future::ready((!master.agents().is_empty() && agent.highest_term() == 7).then_some(()))
    })
    .await;

    let keep = HttpRequest {
        method: "POST".into(),
        path: "/keep".into(),
        query: String::new(),
        headers: vec![],
        body: b"1 exec sleep 600".to_vec(),
    };
    eventually("the keeper framework to take the request", PATIENCE, || {
        let (master, keep) = (master.clone(), keep.clone());
        async move { master.framework_request("keeper", keep).await.ok().filter(|r| r.status == 200) }
    })
    .await;
    let running =
        |master: &Master| master.tasks().into_iter().find(|t| t.state == TaskState::Running).map(|t| t.info.id);
    let id =
        eventually("the master to launch a task that runs", PATIENCE, || std::future::ready(running(&master))).await;
    assert_eq!(state(&agent, &id), Some(TaskState::Running));

    master.kill_task(&id).await.unwrap();
    wait_for_state(&agent, &id, TaskState::Killed).await;
    eventually("the master to see the task killed", PATIENCE, || {
        std::future::ready((master.task(&id).map(|t| t.state) == Some(TaskState::Killed)).then_some(()))
    })
    .await;
    assert_eq!(agent.highest_term(), 7);
    agent.stop_all().await;
}

/// A deposed master's registration reply is not obeyed either: a master of term 3, which never
/// heard of a task launched under term 5, answers the agent's registration by naming that task
/// to kill; the agent kills nothing and keeps asking, for the leader to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_masters_registration_reply_kills_nothing() {
    use shoal_master::{Master, MasterConfig};

    shoal_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(LocalBus::new());
    let agent = agent(&bus, dir.path(), "sandboxes");
    let reply = launch(&bus, 5, "t5").await;
    assert_eq!(reply.accepted, vec!["t5".to_owned()], "{reply:?}");
    wait_for_state(&agent, "t5", TaskState::Running).await;

    let mut events = bus.subscribe(subject::AGENT_EVENTS_ALL).await.unwrap();
    let master = Master::new(bus.clone(), MasterConfig { term: 3, ..MasterConfig::default() }, None);
    tokio::spawn(master.clone().run());
    // The master takes each registration (and answers "kill t5"); an agent that obeyed would
    // kill t5 and heartbeat from then on. This one registers again: it did not obey.
    let mut registrations = 0;
    while registrations < 2 {
        let event = tokio::time::timeout(PATIENCE, events.next()).await;
        let Ok(Some(event)) = event else {
            panic!("registration {} with the master of term 3: {event:?}", registrations + 1)
        };
        if event.subject.ends_with("registered") {
            registrations += 1;
        }
    }
    assert_eq!(state(&agent, "t5"), Some(TaskState::Running));
    assert_eq!(agent.highest_term(), 5);
    agent.stop_all().await;
}
