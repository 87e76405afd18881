//! The local bus's subscription index: a trie of subject tokens, as in NATS's sublist.
//!
//! Each level of the trie maps a literal token to a node and may hold a `*` node (any one token)
//! and the subscriptions whose filter ends in `>` there (one or more tokens). A node holds the
//! subscriptions whose filter ends at it and the level below. Finding who is interested in a subject
//! therefore costs one hash lookup per token along the literal path, plus a walk down each `*`
//! branch that exists; subscriptions on other subjects are never looked at, however many there are.
//!
//! The index must always answer exactly what [`crate::subject::matches`] answers over the filters
//! it holds (a property test checks it), and must not keep a node that no subscription needs: every
//! node counts the subscriptions at or below it, and the last one out removes the whole branch, so
//! the short-lived `_INBOX.<uuid>` subscriptions of requests leave nothing behind.
//!
//! Filters and subjects are assumed valid (see [`crate::subject`]); the index stores subscription
//! ids only and knows nothing of queue groups or channels.

use std::collections::HashMap;

/// Subscription ids indexed by their filters.
#[derive(Debug, Default)]
pub(super) struct Index {
    root: Level,
}

#[derive(Debug, Default)]
struct Level {
    literals: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Subscriptions whose filter ends with `>` at this level, in id order.
    tail: Vec<u64>,
}

#[derive(Debug, Default)]
struct Node {
    /// Subscriptions whose filter ends at this node, in id order (ids only ever grow).
    here: Vec<u64>,
    next: Level,
    /// Subscriptions at or below this node: when the last one leaves, the node goes.
    count: usize,
}

impl Level {
    fn child(&self, token: &str) -> Option<&Node> {
        if token == "*" { self.star.as_deref() } else { self.literals.get(token) }
    }

    fn child_mut(&mut self, token: &str) -> Option<&mut Node> {
        if token == "*" { self.star.as_deref_mut() } else { self.literals.get_mut(token) }
    }

    fn child_or_new(&mut self, token: &str) -> &mut Node {
        if token == "*" {
            return self.star.get_or_insert_with(Box::default);
        }
        // `entry` wants an owned key: an allocation on every subscription under a shared prefix
        // such as `_INBOX` if it were called first. A second lookup is cheaper.
        if self.literals.contains_key(token) {
            self.literals.get_mut(token).expect("just found")
        } else {
            self.literals.entry(token.into()).or_default()
        }
    }

    fn remove_child(&mut self, token: &str) {
        if token == "*" {
            self.star = None;
        } else {
            self.literals.remove(token);
        }
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.star.is_none() && self.tail.is_empty()
    }
}

impl Index {
    /// Adds subscription `id` on `filter`. Ids must be added in increasing order for the
    /// per-node lists to stay sorted (the bus hands them out that way).
    pub(super) fn insert(&mut self, filter: &str, id: u64) {
        let mut level = &mut self.root;
        let mut tokens = filter.split('.').peekable();
        while let Some(token) = tokens.next() {
            if token == ">" {
                level.tail.push(id);
                return;
            }
            let node = level.child_or_new(token);
            node.count += 1;
            if tokens.peek().is_none() {
                node.here.push(id);
                return;
            }
            level = &mut node.next;
        }
    }

    /// Removes subscription `id` from `filter`, and with it every node that no longer leads to a
    /// subscription. Returns whether it was there.
    pub(super) fn remove(&mut self, filter: &str, id: u64) -> bool {
        // The counts along the path are only touched once the id is known to be at its end, so a
        // removal of something absent cannot skew them.
        let Some(cut) = self.find(filter, id) else { return false };
        let mut level = &mut self.root;
        let mut tokens = filter.split('.').enumerate().peekable();
        while let Some((depth, token)) = tokens.next() {
            if token == ">" {
                remove_id(&mut level.tail, id);
                break;
            }
            if cut == Some(depth) {
                level.remove_child(token);
                break;
            }
            let Some(node) = level.child_mut(token) else { break };
            node.count -= 1;
            if tokens.peek().is_none() {
                remove_id(&mut node.here, id);
                break;
            }
            level = &mut node.next;
        }
        true
    }

    /// Where subscription `id` on `filter` is: `None` when it is not there, else the depth of the
    /// first node on its path that leads to it alone, the branch that goes with it (`Some(None)`
    /// when every node on the path is shared).
    fn find(&self, filter: &str, id: u64) -> Option<Option<usize>> {
        let mut level = &self.root;
        let mut cut = None;
        let mut tokens = filter.split('.').enumerate().peekable();
        while let Some((depth, token)) = tokens.next() {
            if token == ">" {
                return level.tail.binary_search(&id).is_ok().then_some(cut);
            }
            let node = level.child(token)?;
            if node.count == 1 && cut.is_none() {
                cut = Some(depth);
            }
            if tokens.peek().is_none() {
                return node.here.binary_search(&id).is_ok().then_some(cut);
            }
            level = &node.next;
        }
        None
    }

    /// Calls `visit` once with every subscription whose filter matches `subject`, in no particular
    /// order across filters (ascending ids within one filter).
    pub(super) fn for_each_match(&self, subject: &str, mut visit: impl FnMut(u64)) {
        // Branches still to walk, each a level and the rest of the subject it must match; only a
        // `*` beside a literal adds one, so an exact subject walks without allocating.
        let mut pending: Vec<(&Level, &str)> = Vec::new();
        let mut current = Some((&self.root, subject));
        while let Some((level, rest)) = current.take().or_else(|| pending.pop()) {
            // `rest` always holds at least one token, which is what `>` needs.
            level.tail.iter().copied().for_each(&mut visit);
            let (token, after) = match rest.split_once('.') {
                Some((token, after)) => (token, Some(after)),
                None => (rest, None),
            };
            for node in [level.literals.get(token), level.star.as_deref()].into_iter().flatten() {
                match after {
                    None => node.here.iter().copied().for_each(&mut visit),
                    Some(_) if node.next.is_empty() => {}
                    Some(after) if current.is_none() => current = Some((&node.next, after)),
                    Some(after) => pending.push((&node.next, after)),
                }
            }
        }
    }

    /// Whether no subscription is left (and so no node either).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

fn remove_id(ids: &mut Vec<u64>, id: u64) {
    if let Ok(position) = ids.binary_search(&id) {
        ids.remove(position);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::subject::matches;

    /// Every subject of one to four tokens over `a`, `b`, `c` and `d`; filters use only `a`, `b`,
    /// `c`, so `d` is a literal nobody subscribes to.
    fn subjects() -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "c", "d"].map(|t| if prefix.is_empty() { t.to_owned() } else { format!("{prefix}.{t}") })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*", ">"]), 1..=4)
            .prop_filter("'>' only last", |tokens| !tokens[..tokens.len() - 1].contains(&">"))
            .prop_map(|tokens| tokens.join("."))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(String),
        Unsubscribe(prop::sample::Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => filter().prop_map(Op::Subscribe), 2 => any::<prop::sample::Index>().prop_map(Op::Unsubscribe)]
    }

    fn matching(index: &Index, subject: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.for_each_match(subject, |id| ids.push(id));
        ids.sort_unstable();
        ids
    }

    /// Every node counts exactly the subscriptions at or below it, and none is empty.
    fn check_counts(level: &Level) -> usize {
        let children = level.literals.values().chain(level.star.as_deref());
        level.tail.len()
            + children
                .map(|node| {
                    let below = node.here.len() + check_counts(&node.next);
                    assert_eq!(node.count, below, "a node's count");
                    assert!(below > 0, "an empty node was kept");
                    below
                })
                .sum::<usize>()
    }

    #[test]
    fn literal_star_and_tail_filters_match_as_nats_does() {
        let mut index = Index::default();
        for (id, filter) in ["a.b", "a.*", "a.>", ">", "*.b.c", "a.b.c"].into_iter().enumerate() {
            index.insert(filter, id as u64);
        }
        assert_eq!(matching(&index, "a"), [3]);
        assert_eq!(matching(&index, "a.b"), [0, 1, 2, 3]);
        assert_eq!(matching(&index, "a.b.c"), [2, 3, 4, 5]);
        assert_eq!(matching(&index, "x.b.c"), [3, 4]);
        assert_eq!(matching(&index, "x.y"), [3]);
        assert!(!index.remove("a.b", 1), "id 1 is on a.*, not a.b");
        for (id, filter) in ["a.b", "a.*", "a.>", ">", "*.b.c", "a.b.c"].into_iter().enumerate() {
            assert!(index.remove(filter, id as u64), "{filter} was there");
            check_counts(&index.root);
        }
        assert!(index.is_empty());
    }

    proptest! {
        /// Over any sequence of subscriptions and unsubscriptions, the index finds, for every subject,
        /// exactly the live subscriptions whose filter `matches` it, each once; and it keeps no node
        /// that no subscription needs.
        #[test]
        fn the_index_answers_what_matches_answers(ops in prop::collection::vec(op(), 1..40)) {
            let subjects = subjects();
            let mut index = Index::default();
            let mut live: Vec<(String, u64)> = Vec::new();
            for (next_id, op) in (0u64..).zip(ops) {
                match op {
                    Op::Subscribe(filter) => {
                        index.insert(&filter, next_id);
                        live.push((filter, next_id));
                    }
                    Op::Unsubscribe(pick) if !live.is_empty() => {
                        let (filter, id) = live.remove(pick.index(live.len()));
                        prop_assert!(index.remove(&filter, id));
                        prop_assert!(!index.remove(&filter, id), "removed twice");
                    }
                    Op::Unsubscribe(_) => {}
                }
                prop_assert_eq!(check_counts(&index.root), live.len());
                for subject in &subjects {
                    let expected: Vec<u64> =
                        live.iter().filter(|(filter, _)| matches(filter, subject)).map(|(_, id)| *id).collect();
                    prop_assert_eq!(matching(&index, subject), expected, "subject {}", subject);
                }
            }
            for (filter, id) in live.drain(..) {
                prop_assert!(index.remove(&filter, id));
            }
            prop_assert!(index.is_empty());
        }
    }
}
