//! {{name}}: a scheduler framework for Shoal.
//!
//! A skeleton that launches nothing: it declines every offer for five seconds and answers its
//! HTTP endpoint (`/v1/frameworks/<name>/…`). An instance may be thrown away at any time, so keep
//! what must last in `shoal_sdk::kv`.

use shoal_sdk::scheduling::{Decline, OfferInfo, Operation};
use shoal_sdk::{Framework, HttpRequest, HttpResponse, TaskStatus};

struct Scheduler;

impl Framework for Scheduler {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn resource_offers(offers: Vec<OfferInfo>) -> Vec<Operation> {
        offers.into_iter().map(|o| Operation::Decline(Decline { offer_id: o.id, refuse_seconds: 5.0 })).collect()
    }

    fn status_update(_status: TaskStatus) -> Vec<Operation> {
        Vec::new()
    }

    fn handle_request(request: HttpRequest) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("{{name}}: {} {}\n", request.method, request.path).into_bytes(),
        }
    }

    fn tick(_now_ms: u64) -> Vec<Operation> {
        Vec::new()
    }
}

shoal_sdk::export_framework!(Scheduler);
