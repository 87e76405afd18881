//! What store nodes, their clients and the master say to each other on the bus.
//!
//! Requests to a node and their replies are [postcard]-encoded [`Request`] and [`Reply`] values
//! (values are bytes; JSON would inflate them). A node hears requests on three subjects, one per
//! [`Channel`] — reads and writes on `shoal.ctl.store.node.<id>`, keys moved in by other nodes on
//! `shoal.ctl.store.ingest.<id>`, the master's commands on `shoal.ctl.store.admin.<id>` — and
//! answers a request only on its own channel, so the bus's permissions decide who may send what.
//! The master's commands ([`Request::Admin`], an [`Admin`]) carry its leader term, and so do the
//! maps it serves: a node refuses both when their term is lower than the highest it has seen
//! (see `shoal_protocol::term`); reads and writes carry no term.
//! Registrations, the map and progress reports (`shoal.ctl.store.register.<id>`,
//! `shoal.ctl.store.map`, `shoal.ctl.store.progress.<id>`) are JSON: they are small and tools may
//! want to read them.

use serde::{Deserialize, Serialize};

use crate::engine::RawEntry;
use crate::{Entry, Op, ShardMap, StoreError};

/// A request to a store node. Data requests carry the epoch of the caller's map: a node whose map
/// is older fetches the current one before answering.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Read one key.
    Get {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// A stale read: any copy answers with what it has applied ([`crate::Consistency::Stale`]).
        stale: bool,
    },
    /// Apply operations whose shards are all on this node, atomically.
    Batch {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Operations.
        ops: Vec<Op>,
    },
    /// Check the conditions of operations without writing.
    Check {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Operations.
        ops: Vec<Op>,
    },
    /// Entries of the shards this node serves (at most `limit + 1` per shard).
    List {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Key prefix.
        prefix: String,
        /// Only keys after this one.
        after: Option<String>,
        /// Page size.
        limit: u32,
        /// The shards to list (each must be served here: for a replicated one, led here); empty:
        /// every shard this node serves.
        shards: Vec<u32>,
    },
    /// A command of the master, at its leader term: refused by a node that has seen a higher
    /// term (see `shoal_protocol::term`), before anything is done.
    Admin {
        /// The sending master's leader term.
        term: u64,
        /// What to do.
        command: Admin,
    },
    /// Write moved entries into `shard` (from another node's export).
    Ingest {
        /// The destination shard.
        shard: u32,
        /// The entries (a `None` value deletes).
        entries: Vec<RawEntry>,
    },
}

/// What the master tells a store node to do (in a [`Request::Admin`], with its term).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Admin {
    /// Serve by this map from now on (if it is newer than the node's, by `(term, epoch)`).
    Map {
        /// The new map.
        map: ShardMap,
    },
    /// Create an empty shard that keys will move into.
    CreateShard {
        /// The shard.
        shard: u32,
    },
    /// Delete a shard's files (after a scale-in, or to undo a failed scale-out).
    DropShard {
        /// The shard.
        shard: u32,
    },
    /// Copy the keys of `shard` that move under `target` to their new shards, then catch up with
    /// the writes made meanwhile; answered when little is left to copy.
    Export {
        /// Names the move in progress reports.
        move_id: u64,
        /// The source shard.
        shard: u32,
        /// The map after the move.
        target: ShardMap,
    },
    /// Freeze the moving keys of `shard` and copy their last writes (the map switches next).
    Freeze {
        /// The source shard.
        shard: u32,
    },
    /// Stop exporting `shard`: the move was given up (its frozen keys thaw), or it committed (the
    /// export ends once this node serves by the new map; until then its moving keys stay frozen,
    /// since serving them by the old map would read stale).
    EndExport {
        /// The source shard.
        shard: u32,
        /// Whether the map switched.
        committed: bool,
    },
    /// Delete from `shard` the keys it does not own under the node's map.
    Cleanup {
        /// The shard.
        shard: u32,
    },
    /// RocksDB's estimate of the keys in `shard`.
    Count {
        /// The shard.
        shard: u32,
    },
    /// Hold a new, empty copy of replicated `shard` (a scale-out's new shard, sent to each of
    /// its members): follow its log, lead it when its lease says so. Keys move in through its
    /// leader.
    CreateReplica {
        /// The shard.
        shard: u32,
    },
    /// Stop holding a copy of replicated `shard`, delete its files and its log (a scale-in's
    /// last shard after the switch, a failed scale-out's new one, or what a failed move left
    /// before it is tried again).
    DropReplica {
        /// The shard.
        shard: u32,
    },
}

/// Who may send a [`Request`], by the subject it arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Reads and writes, from any client of the store (`shoal.ctl.store.node.<id>`).
    Data,
    /// Moved keys, from another store node (`shoal.ctl.store.ingest.<id>`).
    Ingest,
    /// Shards, moves and maps, from the master (`shoal.ctl.store.admin.<id>`).
    Admin,
}

impl Channel {
    /// The subject of node `id` for this channel.
    pub fn subject(self, id: &str) -> String {
        match self {
            Channel::Data => shoal_bus::subject::store_node(id),
            Channel::Ingest => shoal_bus::subject::store_ingest(id),
            Channel::Admin => shoal_bus::subject::store_admin(id),
        }
    }
}

impl Request {
    /// The channel this request must arrive on.
    pub fn channel(&self) -> Channel {
        match self {
            Request::Get { .. } | Request::Batch { .. } | Request::Check { .. } | Request::List { .. } => Channel::Data,
            Request::Ingest { .. } => Channel::Ingest,
            Request::Admin { .. } => Channel::Admin,
        }
    }
}

/// A node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The entry of a `Get`.
    Entry(Option<Entry>),
    /// The versions written by a `Batch`.
    Versions(Vec<u64>),
    /// The entries of a `List`.
    Entries(Vec<Entry>),
    /// A count (keys copied, deleted, ingested).
    Count(u64),
    /// Done.
    Ok,
    /// Refused or failed.
    Error(WireError),
    /// The entry of a stale `Get`, with how far the copy that read it was behind.
    StaleEntry(Option<Entry>, crate::Staleness),
}

/// A [`StoreError`] as it crosses the bus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    /// See [`StoreError::InvalidNamespace`].
    InvalidNamespace(String),
    /// See [`StoreError::InvalidKey`].
    InvalidKey(String),
    /// See [`StoreError::ValueTooLarge`].
    ValueTooLarge(u64, u64),
    /// See [`StoreError::InvalidTtl`].
    InvalidTtl(String),
    /// See [`StoreError::BatchTooLarge`].
    BatchTooLarge(u64, u64),
    /// See [`StoreError::InvalidBatch`].
    InvalidBatch(String),
    /// See [`StoreError::InvalidListing`].
    InvalidListing(String),
    /// See [`StoreError::Conflict`].
    Conflict(String, u64, u64),
    /// See [`StoreError::NotFound`].
    NotFound(String, String),
    /// See [`StoreError::NotOwner`]; carries the node's map so the caller can take it.
    NotOwner(u32, ShardMap),
    /// See [`StoreError::Moving`].
    Moving,
    /// See [`StoreError::StaleTerm`]: the request's term and the highest the node has seen.
    StaleTerm(u64, u64),
    /// Anything else, as text.
    Internal(String),
    /// See [`StoreError::NotLeader`] (after `Internal`: an older peer still reads the others).
    NotLeader(u32),
}

impl WireError {
    /// The error to send for `err`; `map` is the node's map (sent along with `NotOwner`).
    pub fn from_error(err: StoreError, map: impl FnOnce() -> ShardMap) -> WireError {
        match err {
            StoreError::InvalidNamespace(s) => WireError::InvalidNamespace(s),
            StoreError::InvalidKey(s) => WireError::InvalidKey(s),
            StoreError::ValueTooLarge { size, limit } => WireError::ValueTooLarge(size as u64, limit as u64),
            StoreError::InvalidTtl(s) => WireError::InvalidTtl(s),
            StoreError::BatchTooLarge { ops, limit } => WireError::BatchTooLarge(ops as u64, limit as u64),
            StoreError::InvalidBatch(s) => WireError::InvalidBatch(s),
            StoreError::InvalidListing(s) => WireError::InvalidListing(s),
            StoreError::Conflict { key, expected, actual } => WireError::Conflict(key, expected, actual),
            StoreError::NotFound { namespace, key } => WireError::NotFound(namespace, key),
            StoreError::NotOwner { shard, .. } => WireError::NotOwner(shard, map()),
            StoreError::Moving => WireError::Moving,
            StoreError::StaleTerm(stale) => WireError::StaleTerm(stale.term, stale.highest),
            StoreError::NotLeader { shard } => WireError::NotLeader(shard),
            other => WireError::Internal(other.to_string()),
        }
    }

    /// Back to a [`StoreError`] (a `NotOwner`'s map is taken out by the client before this).
    pub fn into_error(self) -> StoreError {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        match self {
            WireError::InvalidNamespace(s) => StoreError::InvalidNamespace(s),
            WireError::InvalidKey(s) => StoreError::InvalidKey(s),
            WireError::ValueTooLarge(s, l) => StoreError::ValueTooLarge { size: size(s), limit: size(l) },
            WireError::InvalidTtl(s) => StoreError::InvalidTtl(s),
            WireError::BatchTooLarge(o, l) => StoreError::BatchTooLarge { ops: size(o), limit: size(l) },
            WireError::InvalidBatch(s) => StoreError::InvalidBatch(s),
            WireError::InvalidListing(s) => StoreError::InvalidListing(s),
            WireError::Conflict(key, expected, actual) => StoreError::Conflict { key, expected, actual },
            WireError::NotFound(namespace, key) => StoreError::NotFound { namespace, key },
            WireError::NotOwner(shard, map) => StoreError::NotOwner { shard, epoch: map.epoch },
            WireError::Moving => StoreError::Moving,
            WireError::StaleTerm(term, highest) => {
                StoreError::StaleTerm(shoal_protocol::StaleTerm { term, highest, holder: "store node" })
            }
            WireError::Internal(s) => StoreError::Protocol(s),
            WireError::NotLeader(shard) => StoreError::NotLeader { shard },
        }
    }
}

/// Encode a request or reply.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on writers that run out of room; a Vec never does.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decode a request or reply.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Protocol(format!("undecodable message: {e}")))
}

/// The JSON messages between store nodes and the master (registration, move progress) and the
/// data of key-value events: `shoal-protocol`'s, re-exported where the store's own protocol is.
pub use shoal_protocol::store::{KvChange, Progress, Registration};

/// The map carried by a `shoal.evt.store.shardmap` event, if the payload is one.
pub fn shard_map_of_event(payload: &[u8]) -> Option<ShardMap> {
    let event: shoal_bus::CloudEvent = serde_json::from_slice(payload).ok()?;
    serde_json::from_value(event.data).ok()
}

/// Property tests of the wire format: what a node decodes comes from the bus.
#[cfg(test)]
mod props {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::{PutOptions, Staleness};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![3 => "[a-z0-9/._-]{0,12}", 1 => any::<String>()]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..24)
    }

    fn op() -> impl Strategy<Value = Op> {
        let ttl = prop::option::of((any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)));
        prop_oneof![
            (text(), bytes(), any::<Option<u64>>(), ttl).prop_map(|(key, value, version, ttl)| Op::Put {
                key,
                value,
                options: PutOptions { version, ttl }
            }),
            (text(), any::<Option<u64>>()).prop_map(|(key, version)| Op::Delete { key, version }),
        ]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (text(), bytes(), any::<u64>(), any::<Option<u64>>()).prop_map(|(key, value, version, expires_at)| Entry {
            key,
            value,
            version,
            expires_at,
        })
    }

    fn map() -> impl Strategy<Value = ShardMap> {
        let nodes = || prop::collection::vec(text(), 0..4);
        (any::<u64>(), any::<u64>(), nodes(), prop::collection::vec(nodes(), 0..3))
            .prop_map(|(term, epoch, shards, followers)| ShardMap { term, epoch, shards, followers })
    }

    fn admin() -> impl Strategy<Value = Admin> {
        let shard = any::<u32>;
        prop_oneof![
            map().prop_map(|map| Admin::Map { map }),
            shard().prop_map(|shard| Admin::CreateShard { shard }),
            shard().prop_map(|shard| Admin::DropShard { shard }),
            (any::<u64>(), shard(), map()).prop_map(|(move_id, shard, target)| Admin::Export {
                move_id,
                shard,
                target
            }),
            shard().prop_map(|shard| Admin::Freeze { shard }),
            (shard(), any::<bool>()).prop_map(|(shard, committed)| Admin::EndExport { shard, committed }),
            shard().prop_map(|shard| Admin::Cleanup { shard }),
            shard().prop_map(|shard| Admin::Count { shard }),
            shard().prop_map(|shard| Admin::CreateReplica { shard }),
            shard().prop_map(|shard| Admin::DropReplica { shard }),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        let ops = || prop::collection::vec(op(), 0..4);
        prop_oneof![
            (any::<u64>(), text(), text(), any::<bool>()).prop_map(|(epoch, namespace, key, stale)| Request::Get {
                epoch,
                namespace,
                key,
                stale
            }),
            (any::<u64>(), text(), ops()).prop_map(|(epoch, namespace, ops)| Request::Batch { epoch, namespace, ops }),
            (any::<u64>(), text(), ops()).prop_map(|(epoch, namespace, ops)| Request::Check { epoch, namespace, ops }),
            (
                any::<u64>(),
                text(),
                text(),
                prop::option::of(text()),
                any::<u32>(),
                prop::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(epoch, namespace, prefix, after, limit, shards)| Request::List {
                    epoch,
                    namespace,
                    prefix,
                    after,
                    limit,
                    shards
                }),
            (any::<u64>(), admin()).prop_map(|(term, command)| Request::Admin { term, command }),
            (any::<u32>(), prop::collection::vec((bytes(), prop::option::of(bytes())), 0..4))
                .prop_map(|(shard, entries)| Request::Ingest { shard, entries }),
        ]
    }

    fn wire_error() -> impl Strategy<Value = WireError> {
        prop_oneof![
            text().prop_map(WireError::InvalidNamespace),
            text().prop_map(WireError::InvalidKey),
            (any::<u64>(), any::<u64>()).prop_map(|(s, l)| WireError::ValueTooLarge(s, l)),
            text().prop_map(WireError::InvalidTtl),
            (any::<u64>(), any::<u64>()).prop_map(|(o, l)| WireError::BatchTooLarge(o, l)),
            text().prop_map(WireError::InvalidBatch),
            text().prop_map(WireError::InvalidListing),
            (text(), any::<u64>(), any::<u64>()).prop_map(|(k, e, a)| WireError::Conflict(k, e, a)),
            (text(), text()).prop_map(|(n, k)| WireError::NotFound(n, k)),
            (any::<u32>(), map()).prop_map(|(s, m)| WireError::NotOwner(s, m)),
            Just(WireError::Moving),
            (any::<u64>(), any::<u64>()).prop_map(|(t, h)| WireError::StaleTerm(t, h)),
            text().prop_map(WireError::Internal),
            any::<u32>().prop_map(WireError::NotLeader),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let staleness =
            (any::<u64>(), any::<Option<u64>>()).prop_map(|(applied, behind)| Staleness { applied, behind });
        prop_oneof![
            prop::option::of(entry()).prop_map(Reply::Entry),
            prop::collection::vec(any::<u64>(), 0..4).prop_map(Reply::Versions),
            prop::collection::vec(entry(), 0..4).prop_map(Reply::Entries),
            any::<u64>().prop_map(Reply::Count),
            Just(Reply::Ok),
            wire_error().prop_map(Reply::Error),
            (prop::option::of(entry()), staleness).prop_map(|(e, s)| Reply::StaleEntry(e, s)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A request decodes to what was encoded (the same value, and the same bytes again).
        #[test]
        fn requests_decode_to_what_was_encoded(request in request()) {
            let bytes = encode(&request);
            let decoded: Request = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(format!("{decoded:?}"), format!("{request:?}"));
            prop_assert_eq!(encode(&decoded), bytes);
            prop_assert_eq!(decoded.channel(), request.channel());
        }

        /// A reply decodes to what was encoded.
        #[test]
        fn replies_decode_to_what_was_encoded(reply in reply()) {
            let bytes = encode(&reply);
            let decoded: Reply = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(format!("{decoded:?}"), format!("{reply:?}"));
            prop_assert_eq!(encode(&decoded), bytes);
        }

        /// Any bytes decode to a request or a reply, or are refused, without panicking; what
        /// decodes encodes to bytes that decode to it again. (Not always to the same bytes:
        /// postcard ignores what follows a value and reads over-long varints, `[3, 226, 0]` is
        /// `Count(98)`, which encodes as `[3, 98]`.)
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            request().prop_flat_map(|r| {
                let encoded = encode(&r);
                (Just(encoded.clone()), 0..=encoded.len(), any::<u8>(), any::<prop::sample::Index>())
            }).prop_map(|(mut encoded, cut, byte, at)| {
                // A valid request with one byte changed, then cut short.
                if !encoded.is_empty() {
                    let i = at.index(encoded.len());
                    encoded[i] = byte;
                }
                encoded.truncate(cut);
                encoded
            }),
        ]) {
            if let Ok(request) = decode::<Request>(&bytes) {
                let again: Request = decode(&encode(&request)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(format!("{again:?}"), format!("{request:?}"));
            }
            if let Ok(reply) = decode::<Reply>(&bytes) {
                let again: Reply = decode(&encode(&reply)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(format!("{again:?}"), format!("{reply:?}"));
            }
        }
    }
}
