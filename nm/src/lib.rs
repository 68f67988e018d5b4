//! `nm`, the name manager of the Docs++ document store.
//!
//! nm owns the namespace (users, files, owners, access lists) and knows which
//! storage server holds each file. Clients ask nm first: it answers VIEW,
//! INFO, LIST and STATUS itself, forwards CREATE, DELETE and UNDO to a
//! storage server, and for READ, WRITE and STREAM returns the server's address
//! with a signed ticket so the client can go there directly.
//!
//! - [`config`]: the command line.
//! - [`namespace`]: users, files and access lists in memory, with O(1) lookups.
//! - [`metrics`]: Prometheus metrics (`--metrics-addr`).
//! - [`journal`]: what survives a restart (snapshot + fsynced journal).
//! - [`registry`]: the storage servers and their pairs, liveness and load.
//! - [`state`]: [`state::Nm`], the value every task of a running nm shares,
//!   and what it holds in memory.
//! - [`replication`]: the replication queue, its workers, pair syncs and
//!   catch-ups (`queue`, `worker`, `sync`, `catch_up`).
//! - [`failover`]: the failover state machine: who serves each pair, and the
//!   in-sync rule that decides when that may change.
//! - [`failover_actions`]: carrying the machine's decisions out (journal,
//!   roles, catch-ups, promotions, hand-backs).
//! - [`events`]: job, pair and server events for the log and WATCH.
//! - [`server`]: the listener and connection loops.
//! - [`commands`]: the client commands.
//! - [`exec`]: EXEC, off unless `--allow-exec`.
//! - [`storage_servers`]: registration, heartbeats, notices.
//! - [`inventory`]: the serving server's inventory, reconciled with the
//!   namespace after it registers, while it serves.
//! - [`ss_client`]: nm's connections to storage servers.
//! - [`group`]: what a leader knows of its group when nm runs on etcd.
//! - `ha` (feature `etcd`): nm on etcd: leader election, the fenced store,
//!   the standby's warm copy, and the loop between standby and leader.

pub mod commands;
pub mod config;
pub mod events;
pub mod exec;
pub mod failover;
pub mod failover_actions;
pub mod group;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod inventory;
pub mod journal;
pub mod metrics;
pub mod namespace;
pub mod registry;
pub mod replication;
pub mod server;
pub mod ss_client;
pub mod state;
pub mod storage_servers;

pub use config::Config;

/// Runs nm until `shutdown` is cancelled: alone on its embedded journal, or
/// with `--etcd` as one of a group ([`ha`]).
pub async fn run(
    config: config::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> color_eyre::Result<()> {
    if config.etcd.is_some() {
        #[cfg(feature = "etcd")]
        return ha::run(config, shutdown).await;
        #[cfg(not(feature = "etcd"))]
        color_eyre::eyre::bail!(
            "--etcd needs an nm built with etcd support: cargo build --release --features nm/etcd (the build needs protoc)"
        );
    }
    server::run_alone(config, shutdown).await
}
