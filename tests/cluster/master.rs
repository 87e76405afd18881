//! Issue 3, first slice: `shoal master` and three `shoal agent`s as separate processes over a real
//! `nats-server`. Agents register with their resources and attributes; one killed with SIGKILL is
//! declared lost within the timeout (with an event); restarted, it registers again; a restarted
//! master learns every agent again from their heartbeats.

use std::time::{Duration, Instant};

use super::expect_event;
use super::fixture::Cluster;

#[test]
fn master_and_three_agents_over_nats() {
    let mut cluster = Cluster::builder().agents(&[("a1", "r1"), ("a2", "r1"), ("a3", "r2")]).start();
    cluster.wait_for_agents("registration", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    let listed = cluster.cli(&["agent", "list"]);
    assert!(listed.contains("cpus:2;mem:2048;disk:4096;ports:[31100-31199]") && listed.contains("rack=r2"), "{listed}");
    let shown: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["agent", "show", "a3", "-o", "json"])).expect("JSON");
    assert_eq!(shown["attributes"]["rack"], "r2");
    assert_eq!(shown["total"]["ports"][0]["end"], 31399);

    // kill -9 one agent: lost within the timeout (1.5 s), with an event.
    let (mut tail_child, events) = cluster.tail("shoal.evt.agent.>");
    let killed_at = Instant::now();
    cluster.kill_agent("a2");
    let lost = expect_event(&events, "io.shoal.agent.lost");
    assert_eq!(lost["data"]["id"], "a2");
    let after = killed_at.elapsed();
    assert!(after < Duration::from_millis(3000), "declared lost {after:?} after the kill");
    cluster.wait_for_agents("loss", &[("a1", "active"), ("a2", "lost"), ("a3", "active")]);

    // It comes back: registered again.
    cluster.start_agent("a2", "r1");
    let back = expect_event(&events, "io.shoal.agent.reregistered");
    assert_eq!(back["data"]["id"], "a2");
    cluster.wait_for_agents("return", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    let _ = tail_child.kill();
    let _ = tail_child.wait();

    // The master restarts (SIGKILL, same data and bus): every agent registers again, once.
    cluster.restart_master();
    cluster.wait_for_agents("after the master's restart", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
}
