//! The bus's one integration-test binary: the same behavioural suite runs against [`LocalBus`] and
//! against [`NatsBus`] on a real `nats-server`, so the two cannot drift apart.
//!
//! Each suite function in `suite.rs` gets a [`Fixture`] and asks it for as many buses as it needs:
//! on the local fixture they are clones of one in-process bus, on the NATS fixture they are separate
//! connections to one server (so every test also crosses a real network hop).

mod nats_only;
mod suite;
mod traced;

use std::sync::Arc;

use shoal_bus::{LocalBus, NatsBus, SharedBus};
use shoal_testkit::NatsServer;

/// Where a test's buses come from.
pub enum Fixture {
    /// Clones of one in-process bus.
    Local(LocalBus),
    /// Connections to one private server.
    Nats(NatsServer),
}

impl Fixture {
    async fn local() -> Fixture {
        shoal_testkit::init_tracing();
        Fixture::Local(LocalBus::new())
    }

    async fn nats() -> Fixture {
        shoal_testkit::init_tracing();
        Fixture::Nats(NatsServer::start().expect("nats-server starts"))
    }

    /// A bus handle; on NATS a fresh connection each time.
    pub async fn bus(&self) -> SharedBus {
        match self {
            Fixture::Local(bus) => Arc::new(bus.clone()),
            Fixture::Nats(server) => {
                Arc::new(NatsBus::connect(&server.url()).await.expect("connects to the test server"))
            }
        }
    }

    /// `"local"` or `"nats"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fixture::Local(_) => "local",
            Fixture::Nats(_) => "nats",
        }
    }
}

/// One `#[tokio::test]` per suite function and fixture, e.g. `local::request_reply` and
/// `nats::request_reply`.
macro_rules! bus_suite {
    ($module:ident, $fixture:path; $($test:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $test() {
                    let fixture = $fixture().await;
                    crate::suite::$test(&fixture).await;
                }
            )*
        }
    };
}

macro_rules! both_buses {
    ($($test:ident),* $(,)?) => {
        bus_suite!(local, crate::Fixture::local; $($test),*);
        bus_suite!(nats, crate::Fixture::nats; $($test),*);
    };
}

both_buses!(
    kind_names_the_implementation,
    publish_subscribe_exact_subject,
    star_matches_exactly_one_token,
    tail_wildcard_matches_one_or_more_tokens,
    event_tree_filters_select_their_subtree,
    queue_group_delivers_each_message_to_exactly_one_member,
    queue_groups_each_get_a_copy_and_plain_subscribers_get_all,
    request_reply_round_trips,
    request_without_responders_fails_at_once,
    request_to_a_silent_responder_times_out,
    dropping_a_subscription_unsubscribes,
    invalid_subjects_are_rejected,
    order_per_publisher_is_preserved,
    responding_to_a_plain_message_fails,
    events_are_published_as_cloud_events,
    trace_context_rides_with_requests_and_events,
);
