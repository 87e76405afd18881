//! A framework that keeps a counter in its key-value store: proves that state outlives instances
//! (the host may discard an instance at any time) and that each plugin sees only its own keys;
//! `POST /reads` reads it many times in one call, for the store's deadline.

use shoal_sdk::scheduling::{Decline, OfferInfo, Operation};
use shoal_sdk::{Framework, HttpRequest, HttpResponse, TaskStatus, kv};

struct Counter;

fn respond(status: u16, body: String) -> HttpResponse {
    HttpResponse { status, headers: vec![("content-type".into(), "text/plain".into())], body: body.into_bytes() }
}

impl Framework for Counter {
    fn init(config: String) -> Result<(), String> {
        if config == "refuse" { Err("configured to refuse".into()) } else { Ok(()) }
    }

    fn resource_offers(offers: Vec<OfferInfo>) -> Vec<Operation> {
        offers.into_iter().map(|o| Operation::Decline(Decline { offer_id: o.id, refuse_seconds: 5.0 })).collect()
    }

    fn status_update(_status: TaskStatus) -> Vec<Operation> {
        Vec::new()
    }

    fn handle_request(request: HttpRequest) -> HttpResponse {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/count") => {
                let n = match kv::get("count") {
                    Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
                    Ok(None) => 0,
                    Err(e) => return respond(500, format!("{e:?}")),
                };
                match kv::set("count", (n + 1).to_string().as_bytes()) {
                    Ok(()) => respond(200, (n + 1).to_string()),
                    Err(e) => respond(500, format!("{e:?}")),
                }
            }
            ("POST", "/reads") => {
                // As many reads of the counter as the body says, each whatever the one before it
                // answered: one line per read, `ok` or the store's error (what a plugin sees of
                // a store that does not answer, and of a deadline used up).
                let n = String::from_utf8_lossy(&request.body).trim().parse::<u32>().unwrap_or(1);
                let lines: Vec<String> = (0..n)
                    .map(|_| match kv::get("count") {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => format!("{e:?}"),
                    })
                    .collect();
                respond(200, lines.join("\n"))
            }
            ("GET", "/keys") => match kv::list_keys("", None) {
                Ok(page) => respond(200, page.keys.join(",")),
                Err(e) => respond(500, format!("{e:?}")),
            },
            ("GET", "/now") => respond(200, shoal_sdk::clock::now_ms().to_string()),
            _ => respond(404, "no such path".into()),
        }
    }

    fn tick(_now_ms: u64) -> Vec<Operation> {
        Vec::new()
    }
}

shoal_sdk::export_framework!(Counter);
