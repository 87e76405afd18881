//! Starting the store's parts in one process: a store node (`shoal store`, and inside `shoal dev`
//! and `shoal master`), the coordinator (the master's part) and a client (whoever serves
//! `/v1/kv`). Each part is optional; they find each other over the bus.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_bus::SharedBus;

use crate::client::StoreClient;
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::node::{StoreNode, validate_node_id};
use crate::{Durability, Store, StoreError, Sweeper};

/// How long [`start`] waits for an in-process node and coordinator to agree on the first map.
const FIRST_MAP_PATIENCE: Duration = Duration::from_secs(10);

/// A store node to run in this process.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Its id in the shard map, `[a-z0-9-]{1,63}`.
    pub id: String,
    /// Where its shards live (`<dir>/shard-<n>`).
    pub dir: PathBuf,
    /// Sync policy of its writes.
    pub durability: Durability,
    /// How often expired entries are deleted from disk (and announced as `delete` events with
    /// `expired: true`); [`crate::DEFAULT_SWEEP_INTERVAL`] unless a test wants it sooner.
    pub sweep_interval: Duration,
    /// Where the logs and leases of replicated shards live (`None`: the node takes no map that
    /// replicates a shard it holds).
    pub replication: Option<crate::replication::ReplicationConfig>,
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    /// A store node, if this process serves shards.
    pub node: Option<NodeOptions>,
    /// The coordinator, if this process is the master.
    pub coordinator: Option<CoordinatorConfig>,
}

/// The parts [`start`] started; dropping it stops the expiry sweeper (the bus loops stop with the
/// bus).
pub struct StoreService {
    /// Routes reads and writes to the nodes.
    pub client: Arc<StoreClient>,
    /// The shard map's owner, when this process is the master.
    pub coordinator: Option<Arc<Coordinator>>,
    /// The node this process runs, if any.
    pub node: Option<Arc<StoreNode>>,
    _sweeper: Option<Sweeper>,
}

/// Start what `options` names on `bus`. With both a node and the coordinator in this process, it
/// returns once the first map is made (so the first request finds a store).
pub async fn start(bus: SharedBus, options: ServiceOptions) -> Result<StoreService, StoreError> {
    let coordinator = match options.coordinator {
        Some(config) => {
            let coordinator = Coordinator::open(bus.clone(), config)?;
            tokio::spawn({
                let coordinator = coordinator.clone();
                async move {
                    if let Err(e) = coordinator.run().await {
                        tracing::error!(cause = %e, "the store coordinator stopped serving the bus");
                    }
                }
            });
            Some(coordinator)
        }
        None => None,
    };
    let (node, sweeper) = match options.node {
        Some(n) => {
            validate_node_id(&n.id).map_err(|e| StoreError::Config(e.to_string()))?;
            let store = Store::open_node(&n.dir, &n.id, n.durability)?;
            let node = match n.replication {
                Some(replication) => StoreNode::replicated(store.clone(), bus.clone(), replication)?,
                None => StoreNode::new(store.clone(), bus.clone())?,
            };
            // Expired entries are invisible at once; the sweeper deletes them and says so.
            let (expired_tx, mut expired_rx) = tokio::sync::mpsc::unbounded_channel();
            let sweeper = Sweeper::spawn_reporting(
                &store,
                n.sweep_interval,
                Some(Box::new(move |entries| {
                    let _ = expired_tx.send(entries);
                })),
            );
            tokio::spawn({
                let node = Arc::downgrade(&node);
                async move {
                    while let Some(entries) = expired_rx.recv().await {
                        let Some(node) = node.upgrade() else { return };
                        node.announce_expired(entries).await;
                    }
                }
            });
            tokio::spawn({
                let node = node.clone();
                async move {
                    if let Err(e) = node.run().await {
                        tracing::error!(cause = %e, "the store node stopped serving the bus");
                    }
                }
            });
            (Some(node), Some(sweeper))
        }
        None => (None, None),
    };
    let client = StoreClient::new(bus, node.clone());
    if let (Some(coordinator), Some(node)) = (&coordinator, &node) {
        let deadline = tokio::time::Instant::now() + FIRST_MAP_PATIENCE;
        while coordinator.map().shard_count() == 0 || node.store().shard_map().epoch == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Config("the store node did not register with the coordinator".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(StoreService { client, coordinator, node, _sweeper: sweeper })
}
