//! A property test of [`LocalBus`] against a model of the scan it replaced: every subscription's
//! filter checked with [`matches`] in subscription order, queue groups collected by name and served
//! round-robin from a turn per name that lives while the group has members, slow consumers' messages
//! dropped and counted. Over any sequence of subscriptions (plain or in one of two groups),
//! unsubscriptions, publishes and drains, the bus and the model must agree on how many subscriptions
//! were interested in each publish, on what each subscription received, in order, and on the drops.
//!
//! What this test must never do: wait. The local bus delivers before `publish` returns, so every
//! receive here is `now_or_never`.

use futures::{FutureExt, StreamExt};
use proptest::prelude::*;

use super::*;
use crate::subject::matches;

/// Small, so slow-consumer drops happen often.
const CAPACITY: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Subscribe { filter: String, group: Option<&'static str> },
    Unsubscribe(prop::sample::Index),
    Publish(String),
    Drain(prop::sample::Index),
}

fn tokens(alphabet: Vec<&'static str>) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(alphabet), 1..=3)
}

fn op() -> impl Strategy<Value = Op> {
    let filter = tokens(vec!["a", "b", "c", "*", ">"])
        .prop_filter("'>' only last", |tokens| !tokens[..tokens.len() - 1].contains(&">"))
        .prop_map(|tokens| tokens.join("."));
    let group = prop_oneof![Just(None), Just(Some("g")), Just(Some("h"))];
    prop_oneof![
        3 => (filter, group).prop_map(|(filter, group)| Op::Subscribe { filter, group }),
        1 => any::<prop::sample::Index>().prop_map(Op::Unsubscribe),
        4 => tokens(vec!["a", "b", "c", "d"]).prop_map(|tokens| Op::Publish(tokens.join("."))),
        1 => any::<prop::sample::Index>().prop_map(Op::Drain),
    ]
}

/// One subscription as the model sees it.
struct Modelled {
    filter: String,
    group: Option<&'static str>,
    queued: Vec<String>,
    dropped: u64,
}

/// The bus as it was: a list in subscription order, scanned on every publish.
#[derive(Default)]
struct Model {
    subscriptions: Vec<Modelled>,
    turns: HashMap<&'static str, usize>,
    dropped: u64,
}

impl Model {
    fn publish(&mut self, subject: &str, payload: &str) -> usize {
        let mut interested = 0;
        let mut receivers = Vec::new();
        let mut groups: Vec<(&'static str, Vec<usize>)> = Vec::new();
        for (i, subscription) in self.subscriptions.iter().enumerate() {
            if !matches(&subscription.filter, subject) {
                continue;
            }
            interested += 1;
            match subscription.group {
                None => receivers.push(i),
                Some(group) => match groups.iter_mut().find(|(name, _)| *name == group) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((group, vec![i])),
                },
            }
        }
        for (group, members) in groups {
            let turn = self.turns.entry(group).or_insert(0);
            receivers.push(members[*turn % members.len()]);
            *turn += 1;
        }
        for i in receivers {
            let subscription = &mut self.subscriptions[i];
            if subscription.queued.len() < CAPACITY {
                subscription.queued.push(payload.to_owned());
            } else {
                subscription.dropped += 1;
                self.dropped += 1;
            }
        }
        interested
    }

    fn unsubscribe(&mut self, i: usize) {
        let removed = self.subscriptions.remove(i);
        if let Some(group) = removed.group
            && !self.subscriptions.iter().any(|s| s.group == Some(group))
        {
            self.turns.remove(group);
        }
    }
}

fn drain(subscription: &mut Subscription) -> Vec<String> {
    std::iter::from_fn(|| subscription.next().now_or_never().flatten())
        .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
        .collect()
}

proptest! {
    #[test]
    fn the_bus_delivers_what_the_scan_delivered(ops in prop::collection::vec(op(), 1..60)) {
        let bus = LocalBus::with_capacity(CAPACITY);
        let mut model = Model::default();
        let mut subscriptions: Vec<Subscription> = Vec::new();
        for (sequence, op) in ops.into_iter().enumerate() {
            match op {
                Op::Subscribe { filter, group } => {
                    let subscription = match group {
                        None => bus.subscribe(&filter).now_or_never(),
                        Some(group) => bus.queue_subscribe(&filter, group).now_or_never(),
                    };
                    subscriptions.push(subscription.expect("ready").expect("subscribe"));
                    model.subscriptions.push(Modelled { filter, group, queued: Vec::new(), dropped: 0 });
                }
                Op::Unsubscribe(pick) if !subscriptions.is_empty() => {
                    let i = pick.index(subscriptions.len());
                    drop(subscriptions.remove(i));
                    model.unsubscribe(i);
                }
                Op::Publish(subject) => {
                    let payload = sequence.to_string();
                    let interested = bus.deliver(&subject, None, Bytes::from(payload.clone())).expect("deliver");
                    prop_assert_eq!(interested, model.publish(&subject, &payload), "interested in {}", subject);
                }
                Op::Drain(pick) if !subscriptions.is_empty() => {
                    let i = pick.index(subscriptions.len());
                    prop_assert_eq!(drain(&mut subscriptions[i]), std::mem::take(&mut model.subscriptions[i].queued));
                }
                Op::Unsubscribe(_) | Op::Drain(_) => {}
            }
            prop_assert_eq!(bus.subscription_count(), model.subscriptions.len());
            prop_assert_eq!(turns(&bus), model_turns(&model));
        }
        prop_assert_eq!(bus.dropped_messages(), model.dropped);
        for (subscription, modelled) in subscriptions.iter_mut().zip(&mut model.subscriptions) {
            prop_assert_eq!(subscription.dropped(), modelled.dropped);
            prop_assert_eq!(drain(subscription), std::mem::take(&mut modelled.queued));
        }
        drop(subscriptions);
        let registry = bus.shared.registry.lock();
        prop_assert!(registry.index.is_empty() && registry.groups.is_empty() && registry.subscribers.is_empty());
    }
}

/// The bus's turn of each group, by name.
fn turns(bus: &LocalBus) -> Vec<(String, usize)> {
    let mut turns: Vec<_> = bus.shared.registry.lock().groups.iter().map(|(name, g)| (name.clone(), g.turn)).collect();
    turns.sort_unstable();
    turns
}

/// The model's turn of each group with a live member. The bus keeps a turn from a group's first
/// member on, where the scan made it at the group's first message: it is 0 until then either way.
fn model_turns(model: &Model) -> Vec<(String, usize)> {
    let mut turns: Vec<_> = model
        .subscriptions
        .iter()
        .filter_map(|s| s.group)
        .map(|name| (name.to_owned(), model.turns.get(name).copied().unwrap_or(0)))
        .collect();
    turns.sort_unstable();
    turns.dedup();
    turns
}
