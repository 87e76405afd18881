//! A minimal framework for the host's tests: keeps `count` copies of one shell command running
//! (0.1 cpus, 16 MiB, one port each), replacing any that end; `POST /keep` with
//! `<count> <command>` sets what to keep (`wasm:<digest>` runs a Wasm artifact), `GET /tasks` lists `id state healthy` lines, and
//! `POST /labels` with `name=value` lines sets extra labels of new tasks, and `POST /trap` makes the next `resource-offers` call trap (the host must survive it).

use shoal_sdk::scheduling::{Decline, Launch, OfferInfo, Operation, TaskCommand, TaskSpec};
use shoal_sdk::{Attribute, Framework, HttpRequest, HttpResponse, PortRange, Resources, TaskState, TaskStatus, kv};

struct Keeper;

fn text(status: u16, body: String) -> HttpResponse {
    HttpResponse { status, headers: vec![("content-type".into(), "text/plain".into())], body: body.into_bytes() }
}

fn get(key: &str) -> Option<String> {
    kv::get(key).ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn set(key: &str, value: &str) {
    let _ = kv::set(key, value.as_bytes());
}

/// Live task ids (state file per task: `task/<id>` = `state healthy`).
fn live() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let Ok(page) = kv::list_keys("task/", cursor.as_deref()) else { return out };
        for key in page.keys {
            if let Some(v) = get(&key) {
                out.push((key.trim_start_matches("task/").to_owned(), v));
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

impl Framework for Keeper {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn resource_offers(offers: Vec<OfferInfo>) -> Vec<Operation> {
        if get("trap").is_some() {
            let _ = kv::delete("trap");
            panic!("configured to trap on offers");
        }
        let count: usize = get("count").and_then(|c| c.parse().ok()).unwrap_or(0);
        let command = get("command").unwrap_or_default();
        let mut missing = count.saturating_sub(live().len());
        let mut next: u64 = get("next").and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut labels = vec![Attribute { name: shoal_sdk::labels::SERVICE.into(), value: "keep".into() }];
        for line in get("labels").unwrap_or_default().lines() {
            if let Some((k, v)) = line.split_once('=') {
                labels.push(Attribute { name: k.into(), value: v.into() });
            }
        }
        let mut ops = Vec::new();
        for offer in offers {
            let mut tasks = Vec::new();
            let (mut cpus, mut mem) = (offer.resources.cpus, offer.resources.mem_mb);
            let mut ports = offer.resources.ports.iter().flat_map(|r| r.begin..=r.end);
            while missing > 0 && cpus >= 0.1 - 1e-9 && mem >= 16.0 {
                let Some(port) = ports.next() else { break };
                next += 1;
                let id = format!("keep.{next}");
                set(&format!("task/{id}"), "staging -");
                let command = match command.strip_prefix("wasm:") {
                    Some(digest) => TaskCommand::Wasm(digest.to_owned()),
                    None => TaskCommand::Shell(command.clone()),
                };
                tasks.push(TaskSpec {
                    task_id: id,
                    command,
                    resources: Resources {
                        cpus: 0.1,
                        mem_mb: 16.0,
                        disk_mb: 0.0,
                        ports: vec![PortRange { begin: port, end: port }],
                        scalars: vec![],
                    },
                    env: vec![],
                    labels: labels.clone(),
                });
                cpus -= 0.1;
                mem -= 16.0;
                missing -= 1;
            }
            if tasks.is_empty() {
                ops.push(Operation::Decline(Decline { offer_id: offer.id, refuse_seconds: 1.0 }));
            } else {
                ops.push(Operation::Launch(Launch { offer_id: offer.id, tasks }));
            }
        }
        set("next", &next.to_string());
        ops
    }

    fn status_update(status: TaskStatus) -> Vec<Operation> {
        let key = format!("task/{}", status.task_id);
        let known = kv::exists(&key).unwrap_or(false);
        let terminal =
            matches!(status.state, TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost);
        if terminal {
            let _ = kv::delete(&key);
            let log = get("ended").unwrap_or_default();
            set("ended", &format!("{log}{} {}\n", status.task_id, status.state.name()));
            return vec![Operation::Revive];
        }
        if !known {
            return vec![Operation::Kill(status.task_id)];
        }
        let healthy = match status.healthy {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "-",
        };
        set(&key, &format!("{} {healthy}", status.state.name()));
        Vec::new()
    }

    fn handle_request(request: HttpRequest) -> HttpResponse {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/keep") => {
                let body = String::from_utf8_lossy(&request.body).into_owned();
                let Some((count, command)) = body.split_once(' ') else {
                    return text(400, "body: <count> <command>".into());
                };
                set("count", count);
                set("command", command);
                text(200, "ok".into())
            }
            ("POST", "/labels") => {
                set("labels", &String::from_utf8_lossy(&request.body));
                text(200, "ok".into())
            }
            ("POST", "/trap") => {
                set("trap", "1");
                text(200, "armed".into())
            }
            ("GET", "/tasks") => {
                let mut lines: Vec<String> = live().into_iter().map(|(id, v)| format!("{id} {v}")).collect();
                lines.sort();
                text(200, lines.join("\n"))
            }
            ("GET", "/ended") => text(200, get("ended").unwrap_or_default()),
            _ => text(404, "no such path".into()),
        }
    }

    fn tick(_now_ms: u64) -> Vec<Operation> {
        Vec::new()
    }
}

shoal_sdk::export_framework!(Keeper);
