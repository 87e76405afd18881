//! The in-process bus under many subscribers: one publish to a subject with one subscriber while
//! 1, 100 or 10,000 other subscriptions are live, and the life of a request's reply inbox (subscribe
//! then drop) among as many.
//!
//! ```sh
//! cargo bench -p shoal-bus --bench publish
//! ```
//!
//! The other subscriptions sit on distinct `_INBOX.<uuid>` subjects, as requests in flight, watches
//! and SSE streams do in `shoal dev`. The publish's one receiver is drained in the same iteration,
//! so its channel never fills and no message is dropped; that receive is part of every number.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::{FutureExt, StreamExt};
use shoal_bus::{Bus, Bytes, LocalBus, Subscription};

const OTHERS: [usize; 3] = [1, 100, 10_000];

/// A bus with `others` subscriptions on inbox subjects nobody publishes to in the benchmark.
fn bus_with_others(others: usize) -> (LocalBus, Vec<Subscription>) {
    let bus = LocalBus::new();
    let held = (0..others)
        .map(|_| {
            let inbox = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
            bus.subscribe(&inbox).now_or_never().expect("ready").expect("subscribe")
        })
        .collect();
    (bus, held)
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_one_subscriber");
    for others in OTHERS {
        let (bus, _held) = bus_with_others(others);
        let mut target = bus.subscribe("shoal.evt.task.web.running").now_or_never().expect("ready").expect("subscribe");
        let payload = Bytes::from_static(b"{\"state\":\"running\"}");
        group.bench_with_input(BenchmarkId::from_parameter(others), &others, |b, _| {
            b.iter(|| {
                bus.publish("shoal.evt.task.web.running", payload.clone())
                    .now_or_never()
                    .expect("ready")
                    .expect("publish");
                black_box(target.next().now_or_never().expect("delivered"));
            });
        });
    }
    group.finish();
}

fn inbox_lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbox_subscribe_and_drop");
    for others in OTHERS {
        let (bus, _held) = bus_with_others(others);
        let inbox = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
        group.bench_with_input(BenchmarkId::from_parameter(others), &others, |b, _| {
            b.iter(|| drop(black_box(bus.subscribe(&inbox).now_or_never().expect("ready").expect("subscribe"))));
        });
    }
    group.finish();
}

criterion_group!(benches, publish, inbox_lifecycle);
criterion_main!(benches);
