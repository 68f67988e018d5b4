//! nm on etcd: several nm processes, one leader, hot standbys.
//!
//! Each process loops between two phases:
//!
//! - **Standby.** Load `state/` from etcd at one revision, then follow it
//!   with a watch (a warm copy of the namespace and the pairs), and
//!   campaign for the leader key. Every connection is refused with
//!   `E_NOT_LEADER`, naming the leader when one is known.
//! - **Leader.** Once elected, and once the watch has delivered everything
//!   up to the election's revision, the warm copy becomes a full nm
//!   ([`crate::state::Nm`]) on a runtime of its own, whose journal is the
//!   fenced etcd writer ([`store::writer`]). Storage servers register with
//!   it afresh, each with a new heartbeat timeout (nm's start-up grace), so a
//!   takeover alone never promotes anything.
//!
//! A term ends when the lease cannot be renewed in time, when a write is
//! fenced off or fails, or at shutdown. Its runtime is then dropped whole
//! (every task and connection of that nm ends at once) and the process
//! becomes a standby again, reloading from etcd.
//!
//! - [`keys`]: the layout in etcd and the records-to-writes translation.
//! - [`store`]: load, watch, and the fenced writer.
//! - [`election`]: the lease and the campaign.

pub use etcd_client;

pub mod election;
pub mod keys;
pub mod store;

use crate::group::Group;
use crate::metrics::NmMetrics;
use crate::server::{announce, bind};
use crate::state::Nm;
use crate::Config;
use color_eyre::eyre::{eyre, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use keys::Layout;
use shared::connection::Connection;
use shared::proto::{EtcdMemberStatus, NmReply};
use shared::WireError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The leading nm of this process, if it leads, with the runtime it runs on.
type Current = Arc<RwLock<Option<(Arc<Nm>, tokio::runtime::Handle)>>>;

async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_keep_alive(timeout, timeout)
        .with_keep_alive_while_idle(true);
    let from = FromOwnAddress(shared::connection::source_ip());
    Client::connect_with_balanced_channel(endpoints, Some(options), from).await
}

use tonic::transport::channel::Change;

/// How etcd-client hands its endpoints to a balanced channel.
type EndpointUpdates = tokio::sync::mpsc::Sender<Change<http::Uri, tonic::transport::Endpoint>>;

/// etcd connections that leave from nm's own address, like every other
/// connection it dials (so a partition between two hosts cuts them too).
struct FromOwnAddress(Option<std::net::IpAddr>);

impl etcd_client::BalancedChannelBuilder for FromOwnAddress {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(etcd_client::Channel, EndpointUpdates), Self::Error> {
        let (channel, updates) = tonic::transport::Channel::balance_channel(buffer_size);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<
            Change<http::Uri, tonic::transport::Endpoint>,
        >(buffer_size);
        let from = self.0;
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let change: Change<http::Uri, tonic::transport::Endpoint> = match change {
                    Change::Insert(uri, endpoint) => {
                        Change::Insert(uri, endpoint.local_address(from))
                    }
                    other => other,
                };
                if updates.send(change).await.is_err() {
                    break;
                }
            }
        });
        Ok((etcd_client::Channel::Tonic(channel), tx))
    }
}

/// Runs this nm as one of the group until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let endpoints = shared::leader::parse_addresses(config.etcd.as_deref().unwrap_or_default());
    if endpoints.is_empty() {
        return Err(eyre!("--etcd names no endpoint"));
    }
    let layout = Layout::new(&config.etcd_prefix);
    let listener = bind(&config).await?;
    let bound = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    // A missing or weak key fails here, before any election.
    shared::auth::load_for(config.cluster_key_file.as_deref(), config.insecure)?;
    let ttl = Duration::from_secs(config.leader_lease.as_secs().max(1));
    let group = Arc::new(Group::new(ttl));
    let current: Current = Arc::new(RwLock::new(None));
    announce(&config, bound)?;
    let accepting = {
        let (current, group, me) = (current.clone(), group.clone(), address.clone());
        let max = config.limits.max_connections;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            daemon::connections::serve_connections(
                listener,
                max,
                shutdown,
                "nm",
                move |stream, peer, slot| {
                    route(
                        current.clone(),
                        group.clone(),
                        me.clone(),
                        stream,
                        peer,
                        slot,
                    )
                },
            )
            .await;
        })
    };

    let client = loop {
        match connect(&endpoints, ttl).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(event = "nm_etcd_unreachable", error = %e, endpoints = ?endpoints, "cannot reach etcd; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    };

    let (lease_tx, lease_rx) = watch::channel(0i64);
    tokio::spawn(election::keep_lease(
        client.clone(),
        layout.clone(),
        address.clone(),
        group.clone(),
        lease_tx,
    ));
    tokio::spawn(watch_group(client.clone(), layout.clone(), group.clone()));
    tokio::spawn(probe_etcd(client.clone(), endpoints.clone(), group.clone()));

    let metrics = NmMetrics::default();
    if let Some(addr) = &config.metrics_addr {
        // One set of metrics for the process, refreshed from its nm while it leads.
        let leading = current.clone();
        let served = daemon::metrics::serve(addr, metrics.registry.clone(), move || {
            let nm = leading.read().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((nm, _)) = nm {
                if let NmReply::Status { status } = nm.status() {
                    nm.metrics.refresh(&status);
                }
            }
        })
        .map_err(|e| eyre!("serving metrics on {addr}: {e}"))?;
        tracing::info!(event = "nm_metrics", address = %served, "metrics served");
    }
    let member = Member {
        config,
        client,
        layout,
        address,
        bound,
        group,
        lease_rx,
        current,
        metrics,
    };
    while !shutdown.is_cancelled() {
        if let Err(e) = member.one_term(&shutdown).await {
            tracing::warn!(event = "nm_etcd_unreachable", error = %e, "standby phase interrupted; starting over");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    member.group.end_term("shutting down");
    let _ = accepting.await;
    tracing::info!(event = "nm_shutdown", "name manager stopped");
    Ok(())
}

/// What one nm process of the group keeps across its terms.
struct Member {
    config: Config,
    client: Client,
    layout: Layout,
    /// The address the group knows this nm by.
    address: String,
    bound: SocketAddr,
    group: Arc<Group>,
    /// This process's etcd lease (0: none at the moment).
    lease_rx: watch::Receiver<i64>,
    current: Current,
    metrics: NmMetrics,
}

impl Member {
    /// One standby phase and, if elected, one term as leader.
    async fn one_term(&self, shutdown: &CancellationToken) -> Result<(), etcd_client::Error> {
        let Member {
            config,
            client,
            layout,
            address,
            bound,
            group,
            lease_rx,
            current,
            metrics,
        } = self;
        let bound = *bound;
        let mut client = client.clone();
        // Not warm while loading: the member key follows within a renewal
        // (see `election::keep_lease`), for STATUS.
        group.set_warm(false);
        let (ns, revision) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            loaded = store::load(&mut client, layout) => loaded?,
        };
        group.set_warm(true);
        let ns = Arc::new(Mutex::new(ns));
        let (applied_tx, mut applied) = watch::channel(revision);
        let mut follower = tokio::spawn(store::follow(
            client.clone(),
            layout.clone(),
            revision + 1,
            ns.clone(),
            applied_tx,
        ));
        // The watch stops with the standby phase, however it ends.
        let _stop_following = AbortOnDrop(follower.abort_handle());
        let fence = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            won = election::campaign(&mut client, layout, address, group, lease_rx.clone()) => won?,
            followed = &mut follower => {
                return Err(match followed {
                    Ok(Err(e)) => e,
                    _ => etcd_client::Error::WatchError("the watch of the state ended".into()),
                });
            }
        };
        // Everything written before this nm's leader key was created has been
        // applied once the watch has delivered that key.
        let caught_up = applied.wait_for(|seen| *seen >= fence);
        let caught_up = tokio::time::timeout(group.ttl(), caught_up).await;
        follower.abort();
        if caught_up.is_err() {
            tracing::warn!(
                event = "nm_watch_behind",
                fence,
                "the warm copy did not catch up in time; resigning"
            );
            store::resign(&mut client, layout, fence).await;
            return Ok(());
        }
        let ns = std::mem::take(&mut *ns.lock().unwrap_or_else(|p| p.into_inner()));
        let term = group.begin_term();
        tracing::info!(
            event = "nm_elected",
            address,
            fence,
            files = ns.len(),
            "this nm leads"
        );

        // The term's nm runs on a runtime of its own, dropped whole when it ends.
        let runtime = TermRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("nm-term")
                .enable_all()
                .build()
                .map_err(etcd_client::Error::IoError)?,
        ));
        let started = {
            let (config, client, layout, group, metrics) = (
                config.clone(),
                client.clone(),
                layout.clone(),
                group.clone(),
                metrics.clone(),
            );
            runtime.handle().spawn(async move {
                let journal = store::writer(client, layout, fence, group.clone(), &ns);
                Nm::start(config, journal, ns, bound, Some(group), metrics)
            })
        };
        let started = match started.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let nm = match started {
            Ok(nm) => nm,
            Err(error) => {
                tracing::error!(
                    event = "nm_start_failed",
                    error,
                    "the leader could not start"
                );
                group.end_term("start failed");
                drop(runtime);
                store::resign(&mut client, layout, fence).await;
                return Ok(());
            }
        };
        runtime.handle().spawn(store::compact_history(
            client.clone(),
            layout.clone(),
            group.clone(),
        ));
        *current.write().unwrap_or_else(|p| p.into_inner()) = Some((nm, runtime.handle()));

        // Ends the term the moment the lease may have lapsed, even if nothing
        // else notices (a paused process, a renewal stuck in flight).
        loop {
            let until = group.holds_until();
            tokio::select! {
                _ = term.cancelled() => break,
                _ = shutdown.cancelled() => {
                    group.end_term("shutting down");
                    break;
                }
                _ = tokio::time::sleep_until(until.into()) => {
                    if !group.holds_lease() {
                        group.end_term("the leader lease was not renewed in time");
                        break;
                    }
                }
            }
        }
        *current.write().unwrap_or_else(|p| p.into_inner()) = None;
        drop(runtime);
        store::resign(&mut client, layout, fence).await;
        tracing::info!(event = "nm_standby", address, "this nm is a standby again");
        Ok(())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime of one term: dropping it (anywhere, async code included)
/// ends every task and connection of that term's nm at once.
struct TermRuntime(Option<tokio::runtime::Runtime>);

impl TermRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
            .clone()
    }
}

impl Drop for TermRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves a connection with the leading nm, or refuses it as a standby.
async fn route(
    current: Current,
    group: Arc<Group>,
    me: String,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<shared::connection::SlotState>,
) {
    let leading = current.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((nm, handle)) = leading {
        if nm.leads() {
            let _ = handle.spawn(nm.serve_connection(stream, peer, slot)).await;
            return;
        }
    }
    // Refused as the answer to the Hello: the dialler learns it at once.
    // A standby cut from etcd does not know who leads any more.
    let leader = group.leader().filter(|l| *l != me && group.in_touch());
    Connection::turn_away(stream, WireError::not_leader(leader)).await;
}

/// Keeps the group's member list and leader up to date, for STATUS and
/// for the standby's redirects.
async fn watch_group(mut client: Client, layout: Layout, group: Arc<Group>) {
    loop {
        let result: Result<(), etcd_client::Error> = async {
            let members = client
                .get(layout.members(), Some(GetOptions::new().with_prefix()))
                .await?;
            let revision = members.header().map_or(0, |h| h.revision());
            let member = |kv: &etcd_client::KeyValue| {
                let address = kv.key_str().ok()?.strip_prefix(&layout.members())?;
                let warm = kv.value_str().ok() == Some(election::WARM);
                Some((address.to_owned(), warm))
            };
            let mut list: Vec<(String, bool)> = members.kvs().iter().filter_map(member).collect();
            group.set_member_list(list.clone());
            let leader = client.get(layout.leader(), None).await?;
            group.set_leader(
                leader
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
            );
            let mut stream = client
                .watch(
                    layout.members(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await?;
            stream
                .watch(
                    layout.leader(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            while let Some(response) = stream.message().await? {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let put = event.event_type() == etcd_client::EventType::Put;
                    if key == layout.leader() {
                        group.set_leader(
                            put.then(|| kv.value_str().ok().map(str::to_owned))
                                .flatten(),
                        );
                    } else if let Some(address) = key.strip_prefix(&layout.members()) {
                        list.retain(|(m, _)| m != address);
                        if let Some(entry) = member(kv).filter(|_| put) {
                            list.push(entry);
                        }
                        group.set_member_list(list.clone());
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(event = "nm_group_watch_broken", error = %e);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asks every etcd endpoint for its status once a second, for STATUS.
async fn probe_etcd(mut client: Client, endpoints: Vec<String>, group: Arc<Group>) {
    let probe_timeout = Duration::from_millis(500);
    let mut probes: Vec<Option<Client>> = vec![None; endpoints.len()];
    loop {
        let names: Vec<(Vec<String>, String)> =
            match tokio::time::timeout(probe_timeout, client.member_list()).await {
                Ok(Ok(list)) => list
                    .members()
                    .iter()
                    .map(|m| (m.client_urls().to_vec(), m.name().to_owned()))
                    .collect(),
                _ => Vec::new(),
            };
        let mut statuses = Vec::with_capacity(endpoints.len());
        for (endpoint, probe) in endpoints.iter().zip(probes.iter_mut()) {
            if probe.is_none() {
                *probe = connect(std::slice::from_ref(endpoint), probe_timeout)
                    .await
                    .ok();
            }
            let healthy = match probe {
                Some(c) => matches!(
                    tokio::time::timeout(probe_timeout, c.status()).await,
                    Ok(Ok(_))
                ),
                None => false,
            };
            let name = names
                .iter()
                .find(|(urls, _)| urls.iter().any(|u| u == endpoint))
                .map(|(_, n)| n.clone())
                .unwrap_or_default();
            statuses.push(EtcdMemberStatus {
                name,
                address: endpoint.clone(),
                healthy,
            });
        }
        group.set_etcd(statuses);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
