//! `shoal agent list|show` and `shoal master status`: the cluster's nodes as the API sees them
//! (the role commands themselves are in `roles`).

use serde_json::Value;

use super::output::{Table, at};
use super::{Client, Remote, name_values};

/// The cells of an agent (`agent list`).
fn agent_row(a: &Value) -> Vec<String> {
    let total: shoal_protocol::Resources = serde_json::from_value(a["total"].clone()).unwrap_or_default();
    let tasks = a["tasks"].as_array().map_or(0, Vec::len);
    vec![
        at(a, "id"),
        at(a, "hostname"),
        at(a, "state"),
        tasks.to_string(),
        total.to_string(),
        name_values(&a["attributes"]),
    ]
}

/// `shoal agent list`.
pub(super) async fn agent_list(remote: Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let v = c.send(c.http.get(c.url("/v1/agents"))).await?;
    let header = ["ID", "HOSTNAME", "STATE", "TASKS", "RESOURCES", "ATTRIBUTES"];
    c.out.emit(&v, Table::new(&header).rows(&v["agents"], agent_row));
    Ok(())
}

/// `shoal agent show ID`.
pub(super) async fn agent_show(id: String, remote: Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let v = c.send(c.http.get(c.url(&format!("/v1/agents/{id}")))).await?;
    let tasks =
        Table::new(&["TASK"]).rows(&v["tasks"], |t| vec![t.as_str().map_or_else(|| at(t, "id"), str::to_owned)]);
    c.out.emit_one(&v, &id, &[("tasks", tasks)]);
    Ok(())
}

/// `shoal master status`: who leads, with which term, and the masters seen (`GET /v1/leader`).
pub(super) async fn master_status(remote: Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let v = c.send(c.http.get(c.url("/v1/leader"))).await?;
    let leader = v["leader"]["id"].as_str().unwrap_or("").to_owned();
    let table = Table::new(&["MEMBER", "API", "ROLE"]).rows(&v["members"], |m| {
        let role = if m["id"] == leader.as_str() { "leader" } else { "standby" };
        vec![at(m, "id"), at(m, "api"), role.to_owned()]
    });
    if c.out.for_people() {
        let shown = if leader.is_empty() { "none (an election is under way)" } else { &leader };
        println!("leader: {shown}  term: {}", v["term"]);
        println!("this master: {} ({})", at(&v["self"], "id"), at(&v["self"], "role"));
    }
    if c.out.quiet {
        // The id a script asks `master status` for: who leads.
        println!("{leader}");
    } else {
        c.out.emit(&v, table);
    }
    Ok(())
}
