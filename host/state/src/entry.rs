//! What a commit is ([`Batch`]) and how it travels in the log ([`Entry`], postcard).

use serde::{Deserialize, Serialize};

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Store this value.
    Put(Vec<u8>),
    /// Store these bytes, too large for a log entry: replicated through the Object Store under
    /// `name` (a content digest, so a name always means the same bytes).
    PutBlob {
        /// The blob's name.
        name: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Remove the key.
    Delete,
}

/// A change of a key in a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// What happens to it.
    pub change: Change,
}

/// Changes applied together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The changes, in order.
    pub writes: Vec<Write>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Put `value` under `key` in `table`.
    pub fn put(&mut self, table: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.writes.push(Write { table: table.to_owned(), key: key.into(), change: Change::Put(value.into()) });
        self
    }

    /// Put large `bytes` under `key` in `table`, replicated as the blob `name`.
    pub fn put_blob(&mut self, table: &str, key: impl Into<Vec<u8>>, name: &str, bytes: Vec<u8>) -> &mut Self {
        let change = Change::PutBlob { name: name.to_owned(), bytes };
        self.writes.push(Write { table: table.to_owned(), key: key.into(), change });
        self
    }

    /// Remove `key` from `table`.
    pub fn delete(&mut self, table: &str, key: impl Into<Vec<u8>>) -> &mut Self {
        self.writes.push(Write { table: table.to_owned(), key: key.into(), change: Change::Delete });
        self
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Whether the batch touches `table`.
    pub fn touches(&self, table: &str) -> bool {
        self.writes.iter().any(|w| w.table == table)
    }
}

/// A value as it travels in the log.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum WireChange {
    Put(Vec<u8>),
    Blob(String),
    Delete,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct WireWrite {
    pub(crate) table: String,
    pub(crate) key: Vec<u8>,
    pub(crate) change: WireChange,
}

/// One entry of the state's log.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Entry {
    /// The first entry: the cluster's identity.
    Genesis { cluster: String },
    /// A leader took over (nothing is applied; later entries of a lower term cannot land).
    Term { term: u64, holder: String },
    /// Commits, grouped: each batch whole, in order.
    Batches { term: u64, batches: Vec<Vec<WireWrite>> },
}

impl Entry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a log entry serialises")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("unreadable log entry: {e}"))
    }

    /// The term of the writer of this entry (0 for the genesis).
    pub(crate) fn term(&self) -> u64 {
        match self {
            Entry::Genesis { .. } => 0,
            Entry::Term { term, .. } | Entry::Batches { term, .. } => *term,
        }
    }
}
