//! The behaviour every [`shoal_bus::Bus`] must show, written once and run on both implementations.
//!
//! Absence of delivery is asserted with a sentinel: publish the messages that must *not* arrive,
//! then one that must, from the same publisher; per-publisher ordering guarantees that anything
//! wrongly delivered would show up before the sentinel. That avoids "wait and see" sleeps.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use shoal_bus::event::{CloudEvent, EventPublisher};
use shoal_bus::subject::{self, PluginAction};
use shoal_bus::{Bus, BusError, Message, Subscription};

use crate::Fixture;
pub use crate::traced::trace_context_rides_with_requests_and_events;

/// Generous, because two cores may be running many NATS tests at once; a passing test never waits
/// this long.
const PATIENCE: Duration = Duration::from_secs(10);

async fn next(subscription: &mut Subscription) -> Message {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("no message on {} in time", subscription.subject_filter()))
        .unwrap_or_else(|| panic!("subscription to {} ended", subscription.subject_filter()))
}

async fn subscribe(bus: &dyn Bus, filter: &str) -> Subscription {
    let subscription = bus.subscribe(filter).await.expect("subscribe");
    // On NATS the subscription must reach the server before another connection publishes.
    bus.flush().await.expect("flush");
    subscription
}

async fn queue_subscribe(bus: &dyn Bus, filter: &str, group: &str) -> Subscription {
    let subscription = bus.queue_subscribe(filter, group).await.expect("queue subscribe");
    bus.flush().await.expect("flush");
    subscription
}

async fn publish(bus: &dyn Bus, subject: &str, payload: &str) {
    bus.publish(subject, Bytes::copy_from_slice(payload.as_bytes())).await.expect("publish");
}

/// Receives until `last` arrives and returns the subjects seen, `last` included.
async fn subjects_until(subscription: &mut Subscription, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let message = next(subscription).await;
        let done = message.subject == last;
        seen.push(message.subject);
        if done {
            return seen;
        }
    }
}

pub async fn kind_names_the_implementation(fixture: &Fixture) {
    assert_eq!(fixture.bus().await.kind(), fixture.kind());
}

pub async fn publish_subscribe_exact_subject(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "orders.created").await;
    assert_eq!(subscription.subject_filter(), "orders.created");

    publish(publisher.as_ref(), "orders.created", "first").await;
    let message = next(&mut subscription).await;
    assert_eq!(message.subject, "orders.created");
    assert_eq!(message.reply, None);
    assert_eq!(message.payload, Bytes::from_static(b"first"));

    for other in ["orders.deleted", "orders", "orders.created.late", "x.orders.created"] {
        publish(publisher.as_ref(), other, "wrong").await;
    }
    publish(publisher.as_ref(), "orders.created", "second").await;
    let message = next(&mut subscription).await;
    assert_eq!(message.payload, Bytes::from_static(b"second"));
}

pub async fn star_matches_exactly_one_token(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "a.*.c").await;
    for subject in ["a.x.c", "a.x.d", "a.c", "a.x.y.c", "b.x.c", "a.y.c", "a.end.c"] {
        publish(publisher.as_ref(), subject, "").await;
    }
    assert_eq!(subjects_until(&mut subscription, "a.end.c").await, ["a.x.c", "a.y.c", "a.end.c"]);
}

pub async fn tail_wildcard_matches_one_or_more_tokens(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "a.>").await;
    for subject in ["a", "a.b", "b.a", "a.b.c.d", "ab.c", "a.end"] {
        publish(publisher.as_ref(), subject, "").await;
    }
    assert_eq!(subjects_until(&mut subscription, "a.end").await, ["a.b", "a.b.c.d", "a.end"]);
}

pub async fn event_tree_filters_select_their_subtree(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut all_events = subscribe(subscriber.as_ref(), subject::EVENTS_ALL).await;
    let mut web_tasks = subscribe(subscriber.as_ref(), &subject::task_events_of("web")).await;
    let mut control = subscribe(subscriber.as_ref(), subject::CONTROL_ALL).await;

    let activated = subject::plugin_event("allocator", "drf", PluginAction::Activated);
    let web_running = subject::task_event("web", "running");
    let api_running = subject::task_event("api", "running");
    let heartbeat = subject::agent_heartbeat("agent-1");
    let register = subject::agent_register("agent-1");
    for subject in [
        activated.as_str(),
        heartbeat.as_str(),
        api_running.as_str(),
        web_running.as_str(),
        register.as_str(),
        subject::STORE_SHARDMAP,
    ] {
        publish(publisher.as_ref(), subject, "").await;
    }

    assert_eq!(
        subjects_until(&mut all_events, subject::STORE_SHARDMAP).await,
        [activated.as_str(), api_running.as_str(), web_running.as_str(), subject::STORE_SHARDMAP]
    );
    assert_eq!(next(&mut web_tasks).await.subject, web_running);
    assert_eq!(subjects_until(&mut control, &register).await, [heartbeat.as_str(), register.as_str()]);
}

/// Collects `count` messages from queue members, tagging each with the member that got it.
async fn collect_from_members(members: Vec<Subscription>, count: usize) -> Vec<(usize, String)> {
    let tagged = members
        .into_iter()
        .enumerate()
        .map(|(member, subscription)| subscription.map(move |message| (member, message)));
    let mut merged = futures::stream::select_all(tagged);
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let (member, message) = tokio::time::timeout(PATIENCE, merged.next())
            .await
            .expect("queue members receive in time")
            .expect("queue subscriptions stay open");
        let payload = String::from_utf8(message.payload.to_vec()).expect("utf-8");
        received.push((member, payload));
    }
    // Nothing beyond `count` may follow; the wait is bounded and only spent when the test passes.
    let extra = tokio::time::timeout(Duration::from_millis(200), merged.next()).await;
    assert!(extra.is_err(), "a message was delivered twice: {extra:?}");
    received
}

pub async fn queue_group_delivers_each_message_to_exactly_one_member(fixture: &Fixture) {
    const MESSAGES: usize = 200;
    let publisher = fixture.bus().await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let bus = fixture.bus().await;
        members.push(queue_subscribe(bus.as_ref(), "jobs.run", "workers").await);
    }
    for i in 0..MESSAGES {
        publish(publisher.as_ref(), "jobs.run", &i.to_string()).await;
    }
    publisher.flush().await.expect("flush");

    let received = collect_from_members(members, MESSAGES).await;
    let unique: BTreeSet<&str> = received.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(unique.len(), MESSAGES, "every message exactly once");

    let mut per_member: HashMap<usize, usize> = HashMap::new();
    for (member, _) in &received {
        *per_member.entry(*member).or_default() += 1;
    }
    // NATS picks members at random, the local bus in turn; either way nobody is left idle (the odds
    // of NATS starving one of three members for 200 messages are (2/3)^200).
    assert_eq!(per_member.len(), 3, "load is spread: {per_member:?}");
}

pub async fn queue_groups_each_get_a_copy_and_plain_subscribers_get_all(fixture: &Fixture) {
    const MESSAGES: usize = 20;
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut plain = subscribe(subscriber.as_ref(), "jobs.*").await;
    let mut group_a = Vec::new();
    let mut group_b = Vec::new();
    for _ in 0..2 {
        group_a.push(queue_subscribe(subscriber.as_ref(), "jobs.*", "a").await);
        group_b.push(queue_subscribe(subscriber.as_ref(), "jobs.>", "b").await);
    }
    for i in 0..MESSAGES {
        publish(publisher.as_ref(), "jobs.x", &i.to_string()).await;
    }
    for i in 0..MESSAGES {
        let message = next(&mut plain).await;
        assert_eq!(message.payload, Bytes::from(i.to_string()));
    }
    for group in [group_a, group_b] {
        let received = collect_from_members(group, MESSAGES).await;
        let unique: BTreeSet<String> = received.into_iter().map(|(_, p)| p).collect();
        assert_eq!(unique.len(), MESSAGES);
    }
}

pub async fn request_reply_round_trips(fixture: &Fixture) {
    let client = fixture.bus().await;
    let server_bus = fixture.bus().await;
    let mut requests = subscribe(server_bus.as_ref(), "svc.upper").await;
    let server = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            assert!(request.reply.is_some(), "a request carries a reply subject");
            let upper = request.payload.to_ascii_uppercase();
            request.respond(server_bus.as_ref(), Bytes::from(upper)).await.expect("respond");
        }
    });

    for word in ["shoal", "nats", "bus"] {
        let reply =
            client.request("svc.upper", Bytes::copy_from_slice(word.as_bytes()), PATIENCE).await.expect("reply");
        assert_eq!(reply.payload, Bytes::from(word.to_ascii_uppercase()));
    }

    // Concurrent requests each get their own answer.
    let answers = futures::future::join_all((0..10).map(|i| {
        let client = client.clone();
        async move { client.request("svc.upper", Bytes::from(format!("r{i}")), PATIENCE).await.expect("reply") }
    }))
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.payload, Bytes::from(format!("R{i}")));
    }
    server.abort();
}

pub async fn request_without_responders_fails_at_once(fixture: &Fixture) {
    let client = fixture.bus().await;
    let started = tokio::time::Instant::now();
    let outcome = client.request("nobody.home", Bytes::new(), Duration::from_secs(30)).await;
    assert_eq!(outcome, Err(BusError::NoResponders { subject: "nobody.home".into() }));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no-responders must not wait for the timeout ({:?})",
        started.elapsed()
    );
}

pub async fn request_to_a_silent_responder_times_out(fixture: &Fixture) {
    let client = fixture.bus().await;
    let server_bus = fixture.bus().await;
    // Subscribed, so there is a responder, but it never answers.
    let _silent = subscribe(server_bus.as_ref(), "svc.silent").await;
    let started = tokio::time::Instant::now();
    let outcome = client.request("svc.silent", Bytes::new(), Duration::from_millis(300)).await;
    assert_eq!(outcome, Err(BusError::Timeout { subject: "svc.silent".into() }));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

pub async fn dropping_a_subscription_unsubscribes(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "drop.me").await;
    publish(publisher.as_ref(), "drop.me", "while subscribed").await;
    assert_eq!(next(&mut subscription).await.payload.as_ref(), b"while subscribed");

    // While subscribed, a request finds a (silent) responder and times out; once dropped, nobody
    // is left and the same request fails with no-responders.
    assert!(matches!(
        publisher.request("drop.me", Bytes::new(), Duration::from_millis(50)).await,
        Err(BusError::Timeout { .. })
    ));
    drop(subscription);
    subscriber.flush().await.expect("flush");
    shoal_testkit::eventually("the subscription to be gone", PATIENCE, || async {
        match publisher.request("drop.me", Bytes::new(), Duration::from_millis(50)).await {
            Err(BusError::NoResponders { .. }) => Some(()),
            _ => None,
        }
    })
    .await;

    // The subject is not poisoned: a new subscription works.
    let mut again = subscribe(subscriber.as_ref(), "drop.me").await;
    publish(publisher.as_ref(), "drop.me", "again").await;
    assert_eq!(next(&mut again).await.payload.as_ref(), b"again");
}

pub async fn invalid_subjects_are_rejected(fixture: &Fixture) {
    fn invalid<T: std::fmt::Debug>(what: &str, outcome: Result<T, BusError>) {
        assert!(
            matches!(outcome, Err(BusError::InvalidSubject { .. })),
            "{what}: expected InvalidSubject, got {outcome:?}"
        );
    }
    let bus = fixture.bus().await;
    let bus = bus.as_ref();
    for subject in ["", "a..b", "a b", "a.", ".a", "a.*", "a.>", ">", "a\tb"] {
        invalid(&format!("publish {subject:?}"), bus.publish(subject, Bytes::new()).await);
        invalid(
            &format!("publish_with_reply subject {subject:?}"),
            bus.publish_with_reply(subject, "ok", Bytes::new()).await,
        );
        invalid(
            &format!("publish_with_reply reply {subject:?}"),
            bus.publish_with_reply("ok", subject, Bytes::new()).await,
        );
        invalid(&format!("request {subject:?}"), bus.request(subject, Bytes::new(), PATIENCE).await);
    }
    for filter in ["", "a..b", "a b", "a.>.b", ">.a", "a.b*", "a.>b"] {
        invalid(&format!("subscribe {filter:?}"), bus.subscribe(filter).await);
        invalid(&format!("queue_subscribe {filter:?}"), bus.queue_subscribe(filter, "group").await);
    }
    for group in ["", "a group"] {
        invalid(&format!("queue group {group:?}"), bus.queue_subscribe("ok", group).await);
    }
    // The bus still works after all that.
    let mut subscription = subscribe(bus, "still.ok").await;
    publish(bus, "still.ok", "yes").await;
    assert_eq!(next(&mut subscription).await.payload.as_ref(), b"yes");
}

pub async fn order_per_publisher_is_preserved(fixture: &Fixture) {
    const PER_PUBLISHER: u32 = 1000;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "seq.*").await;
    let publishers = [fixture.bus().await, fixture.bus().await];
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, bus)| {
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    bus.publish(&format!("seq.p{p}"), Bytes::from(i.to_string())).await.expect("publish");
                }
                bus.flush().await.expect("flush");
            })
        })
        .collect();

    let mut expected: HashMap<String, u32> = HashMap::new();
    for _ in 0..2 * PER_PUBLISHER {
        let message = next(&mut subscription).await;
        let n: u32 = std::str::from_utf8(&message.payload).expect("utf-8").parse().expect("a number");
        let want = expected.entry(message.subject.clone()).or_default();
        assert_eq!(n, *want, "out of order on {}", message.subject);
        *want += 1;
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    assert_eq!(expected.len(), 2);
}

pub async fn responding_to_a_plain_message_fails(fixture: &Fixture) {
    let publisher = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut subscription = subscribe(subscriber.as_ref(), "plain").await;
    publish(publisher.as_ref(), "plain", "").await;
    let message = next(&mut subscription).await;
    assert_eq!(
        message.respond(subscriber.as_ref(), Bytes::new()).await,
        Err(BusError::NoReplySubject { subject: "plain".into() })
    );

    // publish_with_reply is how a request looks to the receiver.
    let mut answers = subscribe(publisher.as_ref(), "answers.1").await;
    publisher.publish_with_reply("plain", "answers.1", Bytes::from_static(b"q")).await.expect("publish with reply");
    let question = next(&mut subscription).await;
    assert_eq!(question.reply.as_deref(), Some("answers.1"));
    question.respond(subscriber.as_ref(), Bytes::from_static(b"a")).await.expect("respond");
    assert_eq!(next(&mut answers).await.payload.as_ref(), b"a");
}

pub async fn events_are_published_as_cloud_events(fixture: &Fixture) {
    let publisher_bus = fixture.bus().await;
    let subscriber = fixture.bus().await;
    let mut events = subscribe(subscriber.as_ref(), subject::PLUGIN_EVENTS_ALL).await;

    let publisher = EventPublisher::new(publisher_bus.clone(), "/shoal/test");
    let on = subject::plugin_event("allocator", "drf", PluginAction::RolledBack);
    publisher
        .emit(on.clone(), PluginAction::RolledBack.event_type(), "allocator/drf", json!({"from": 3, "to": 2}))
        .await;
    let direct = CloudEvent::new("/shoal/test", PluginAction::Deleted.event_type(), "allocator/drf", json!(null));
    let deleted = subject::plugin_event("allocator", "drf", PluginAction::Deleted);
    shoal_bus::publish_event(publisher_bus.as_ref(), &deleted, &direct).await.expect("publish event");

    let message = next(&mut events).await;
    assert_eq!(message.subject, on);
    let event: CloudEvent = serde_json::from_slice(&message.payload).expect("a cloud event");
    assert_eq!(event.specversion, "1.0");
    assert_eq!(event.r#type, "io.shoal.plugin.rolled-back");
    assert_eq!(event.source, "/shoal/test");
    assert_eq!(event.data, json!({"from": 3, "to": 2}));

    let message = next(&mut events).await;
    assert_eq!(message.subject, deleted);
    let event: CloudEvent = serde_json::from_slice(&message.payload).expect("a cloud event");
    assert_eq!(event, direct);
}
