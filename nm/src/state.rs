//! [`Nm`]: the one value every task of a running (leading) nm shares, and
//! [`State`], what it holds in memory behind one mutex.
//!
//! Its behaviour is in `impl Nm` blocks, one module per concern:
//! [`crate::server`] (connections), [`crate::commands`] (client commands),
//! [`crate::storage_servers`] (registration, heartbeats, notices),
//! [`crate::inventory`] (a serving server's inventory, reconciled),
//! [`crate::replication`] (jobs, syncs), [`crate::failover_actions`]
//! (promotions, hand-backs) and [`crate::exec`]. [`Nm::start`] builds it and
//! starts its background tasks.

use crate::events::Events;
use crate::journal::{Journal, Record};
use crate::namespace::Namespace;
use crate::registry::Registry;
use crate::replication::queue::ReplQueue;
use crate::Config;
use color_eyre::eyre::Result;
use shared::ticket::TicketKey;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything nm holds in memory, behind one mutex that is never held across an await.
pub struct State {
    pub ns: Namespace,
    pub registry: Registry,
}

pub struct Nm {
    /// For the tasks nm spawns on its own behalf.
    pub(crate) me: std::sync::Weak<Nm>,
    pub config: Config,
    state: Mutex<State>,
    pub journal: Journal,
    pub ticket_key: TicketKey,
    /// Proves nm to storage servers and checks theirs; `None` only in insecure mode.
    pub cluster_key: Option<shared::auth::ClusterKey>,
    pub events: Events,
    pub queue: ReplQueue,
    pub waiters: crate::replication::queue::Waiters,
    /// Woken whenever a pair's failover record becomes durable.
    pub failover_recorded: tokio::sync::Notify,
    /// Counts the change notices (and inventory pages) that updated file
    /// records, for clients awaiting their own changes
    /// (`NmRequest::AwaitChanges`).
    pub notices_recorded: tokio::sync::watch::Sender<u64>,
    /// Storage servers part-way through registering.
    pub registering: crate::registry::InProgress,
    /// Pairs whose next sync must compare everything.
    pub catch_up: crate::replication::catch_up::CatchUp,
    pub metrics: crate::metrics::NmMetrics,
    /// The address clients and servers reach this nm at.
    pub address: String,
    /// With `--etcd`: the group this nm leads (lease, members, etcd health).
    pub group: Option<Arc<crate::group::Group>>,
}

impl Nm {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Nm {
    /// Builds nm on a restored namespace and starts its background tasks
    /// (replication workers, heartbeat monitor, start-up grace) on the
    /// current runtime. `group`: this nm leads a group on etcd. `metrics`:
    /// where its metrics go (with `--etcd`, the process's, kept across terms).
    pub fn start(
        config: Config,
        journal: Journal,
        ns: Namespace,
        address: SocketAddr,
        group: Option<Arc<crate::group::Group>>,
        metrics: crate::metrics::NmMetrics,
    ) -> Result<Arc<Nm>> {
        let cluster_key =
            shared::auth::load_for(config.cluster_key_file.as_deref(), config.insecure)?;
        // With a cluster key tickets are signed with a key derived from it;
        // without, with a random one handed to servers as they register.
        let ticket_key = match &cluster_key {
            Some(key) => key.ticket_key(),
            None => TicketKey::new(rand::random::<[u8; 32]>().to_vec()),
        };
        let advertised = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());
        let queue = ReplQueue::new(config.repl_queue_capacity.max(1));
        queue.start_after(ns.job_ids_reserved());
        let nm = Arc::new_cyclic(|me| Nm {
            me: me.clone(),
            state: Mutex::new(State {
                ns,
                registry: Registry::with_key(cluster_key.clone(), config.unclean_promotion),
            }),
            journal,
            ticket_key,
            cluster_key,
            events: Events::default(),
            queue,
            waiters: Default::default(),
            failover_recorded: Default::default(),
            notices_recorded: tokio::sync::watch::Sender::new(0),
            catch_up: Default::default(),
            registering: Default::default(),
            metrics,
            address: advertised,
            group,
            config,
        });
        for _ in 0..nm.config.repl_workers.max(1) {
            tokio::spawn(nm.clone().replication_worker());
        }
        tokio::spawn(nm.clone().heartbeat_monitor());
        tokio::spawn(nm.clone().startup_grace());
        tokio::spawn(nm.clone().keep_job_ids_reserved());
        Ok(nm)
    }

    /// Records replication job ids as handed out a block ahead of their use,
    /// so the next nm (a restart, a new leader) numbers its jobs after them.
    async fn keep_job_ids_reserved(self: Arc<Self>) {
        loop {
            if let Some(up_to) = self.queue.reserve() {
                match self.journal.append(vec![Record::JobIds { up_to }]).await {
                    Ok(()) => {
                        self.state().ns.reserve_job_ids(up_to);
                        self.queue.reserved(up_to);
                    }
                    Err(e) => {
                        tracing::warn!(event = "nm_job_ids_unrecorded", error = %e, "job ids could not be recorded; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Whether this nm may act: always without etcd; with it, only while
    /// its leader lease is surely unexpired.
    pub fn leads(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.holds_lease())
    }
}
