//! The leader's side of the replicated state: commits queued, grouped into log entries, appended
//! fenced on the last sequence this leader knows, acknowledged once applied here.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use shoal_replication::{Blobs, Log, LogError};
use tokio::sync::{mpsc, oneshot};

use crate::entry::{Entry, WireChange, WireWrite};
use crate::{Batch, Change, Pending, Replica, StateDb, StateError};

/// Commits grouped into one entry stop growing past this many bytes of keys and values.
const GROUP_BYTES: usize = 256 * 1024;

/// The leadership this member appends under.
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    term: u64,
    /// The sequence this leader knows is the log's last.
    last: u64,
}

/// Take the log's last place for `term`: catch up, then append a term entry fenced on the last
/// entry (another leader's late append makes this retry after catching up again).
pub(crate) async fn lead(state: &StateDb, replica: &Replica, term: u64, holder: &str) -> Result<(), StateError> {
    let unavailable = |e: LogError| StateError::Unavailable(e.to_string());
    for _ in 0..5 {
        let (_, last) = replica.log.bounds().await.map_err(unavailable)?;
        state.wait_applied(last).await;
        let entry = Entry::Term { term, holder: holder.to_owned() }.encode();
        match replica.log.append(entry.into(), last).await {
            Ok(sequence) => {
                state.wait_applied(sequence).await;
                *replica.writer.lock() = Some(Leadership { term, last: sequence });
                return Ok(());
            }
            Err(LogError::Fenced { .. }) => continue,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(StateError::Unavailable("another writer kept appending to the state's log".into()))
}

fn size_of(batch: &Batch) -> usize {
    batch
        .writes
        .iter()
        .map(|w| {
            w.key.len()
                + match &w.change {
                    Change::Put(v) => v.len(),
                    Change::PutBlob { name, .. } => name.len(),
                    Change::Delete => 0,
                }
        })
        .sum()
}

/// Serve the commit queue for as long as the state is open.
pub(crate) async fn run(
    state: Weak<StateDb>,
    log: Log,
    blobs: Blobs,
    writer: Arc<Mutex<Option<Leadership>>>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = queue.recv().await {
        let mut size = size_of(&first.batch);
        let mut group = vec![first];
        while size < GROUP_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            size += size_of(&next.batch);
            group.push(next);
        }
        let Some(state) = state.upgrade() else { return };
        let lead = writer.lock().clone();
        let (batches, dones): (Vec<Batch>, Vec<_>) = group.into_iter().map(|p| (p.batch, p.done)).unzip();
        let result = match lead {
            None => Err(StateError::NotLeader),
            Some(lead) => append(&log, &blobs, &writer, lead, batches).await,
        };
        acknowledge(&state, result, dones);
    }
}

/// Tell the committers: once the entry is applied here, or at once when it failed.
fn acknowledge(
    state: &Arc<StateDb>,
    result: Result<u64, StateError>,
    dones: Vec<Option<oneshot::Sender<Result<u64, StateError>>>>,
) {
    match result {
        Ok(sequence) => {
            let state = state.clone();
            tokio::spawn(async move {
                state.wait_applied(sequence).await;
                for done in dones.into_iter().flatten() {
                    let _ = done.send(Ok(sequence));
                }
            });
        }
        Err(e) => {
            if dones.iter().all(Option::is_none) {
                tracing::error!(cause = %e, "submitted state changes were not committed");
            }
            let message = e.to_string();
            let mut first = Some(e);
            for done in dones.into_iter().flatten() {
                let e = first.take().unwrap_or_else(|| match &message {
                    m if m.contains("does not lead") => StateError::NotLeader,
                    m => StateError::Unavailable(m.clone()),
                });
                let _ = done.send(Err(e));
            }
        }
    }
}

async fn append(
    log: &Log,
    blobs: &Blobs,
    writer: &Mutex<Option<Leadership>>,
    lead: Leadership,
    batches: Vec<Batch>,
) -> Result<u64, StateError> {
    let mut wire = Vec::new();
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        wire.push(to_wire(blobs, batch).await?);
    }
    if wire.is_empty() {
        // Only barriers (`flush`): everything before them was appended.
        return Ok(lead.last);
    }
    let entry: bytes::Bytes = Entry::Batches { term: lead.term, batches: wire }.encode().into();
    let mut expected = lead.last;
    for _ in 0..2 {
        match log.append(entry.clone(), expected).await {
            Ok(sequence) => {
                if let Some(l) = writer.lock().as_mut().filter(|l| l.term == lead.term) {
                    l.last = sequence;
                }
                return Ok(sequence);
            }
            Err(LogError::TooLarge { size, .. }) => return Err(StateError::TooLarge(size)),
            Err(e) => {
                // Either another writer appended (this one is deposed), or the outcome of an
                // earlier append was unknown and it landed. The last entry's term says which.
                match resync(log, lead.term).await {
                    Some(last) if matches!(e, LogError::Fenced { .. }) => expected = last,
                    Some(last) => {
                        if let Some(l) = writer.lock().as_mut().filter(|l| l.term == lead.term) {
                            l.last = last;
                        }
                        return Err(StateError::Unavailable(e.to_string()));
                    }
                    None if matches!(e, LogError::Fenced { .. }) => {
                        tracing::warn!(term = lead.term, "another leader appended to the state's log; stepping down");
                        writer.lock().take_if(|l| l.term == lead.term);
                        return Err(StateError::NotLeader);
                    }
                    None => return Err(StateError::Unavailable(e.to_string())),
                }
            }
        }
    }
    Err(StateError::Unavailable("the state's log kept moving under this leader".into()))
}

/// The log's last sequence if its last entry is this term's (so this leader still is the only
/// writer); `None` when another term wrote it, or the log cannot be read.
async fn resync(log: &Log, term: u64) -> Option<u64> {
    let (_, last) = log.bounds().await.ok()?;
    let entry = log.get(last).await.ok()??;
    let entry = Entry::decode(&entry.payload).ok()?;
    (entry.term() == term).then_some(last)
}

async fn to_wire(blobs: &Blobs, batch: Batch) -> Result<Vec<WireWrite>, StateError> {
    let mut out = Vec::with_capacity(batch.writes.len());
    for w in batch.writes {
        let change = match w.change {
            Change::Put(v) => WireChange::Put(v),
            Change::Delete => WireChange::Delete,
            Change::PutBlob { name, bytes } => {
                blobs.put(&name, &bytes).await.map_err(|e| StateError::Unavailable(e.to_string()))?;
                WireChange::Blob(name)
            }
        };
        out.push(WireWrite { table: w.table, key: w.key, change });
    }
    Ok(out)
}
