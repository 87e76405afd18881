//! A framework that answers too much: a giant HTTP body and a giant list of operations, to prove
//! the host bounds what it accepts from a guest.

use shoal_sdk::scheduling::{Decline, OfferInfo, Operation};
use shoal_sdk::{Framework, HttpRequest, HttpResponse, TaskStatus};

struct Giant;

impl Framework for Giant {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn resource_offers(_offers: Vec<OfferInfo>) -> Vec<Operation> {
        (0..200_000).map(|_| Operation::Decline(Decline { offer_id: String::new(), refuse_seconds: 1.0 })).collect()
    }

    fn status_update(_status: TaskStatus) -> Vec<Operation> {
        Vec::new()
    }

    fn handle_request(_request: HttpRequest) -> HttpResponse {
        HttpResponse { status: 200, headers: Vec::new(), body: vec![b'z'; 32 << 20] }
    }

    fn tick(_now_ms: u64) -> Vec<Operation> {
        Vec::new()
    }
}

shoal_sdk::export_framework!(Giant);
