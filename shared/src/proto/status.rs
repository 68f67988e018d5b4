//! STATUS: servers, pairs, the nm group and etcd, as nm reports them.

use super::StreamPosition;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerRole {
    Primary,
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerState {
    Alive,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PairState {
    Unpaired,
    Syncing,
    Active,
    PrimaryFailed,
    BackupFailed,
    Recovering,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub role: ServerRole,
    pub state: ServerState,
    pub address: String,
    pub ms_since_heartbeat: u64,
    /// Time left before nm declares the server failed (0 once it has).
    #[serde(default)]
    pub ms_until_timeout: u64,
    /// Whether clients are sent here (the pair's active server).
    #[serde(default)]
    pub serving: bool,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    pub primary: String,
    pub backup: Option<String>,
    pub state: PairState,
    pub epoch: u64,
    pub pending_jobs: u64,
    /// Client operations nm has routed to this pair since it started
    /// (lookups for READ, WRITE, STREAM, CREATE, DELETE and the like): a
    /// counter, so a rate is the difference of two snapshots.
    #[serde(default)]
    pub operations: u64,
    /// Age of the oldest pending change, in ms (0 when caught up).
    #[serde(default)]
    pub lag_ms: u64,
    /// When the last sync-pair job finished (Unix ms; 0 for never).
    #[serde(default)]
    pub last_sync_ms: u64,
    /// Conflict copies kept by recoveries of this pair since nm started.
    #[serde(default)]
    pub conflict_copies: u64,
    /// The standby holds everything the serving server acknowledged, so it
    /// may be promoted.
    #[serde(default)]
    pub standby_in_sync: bool,
    /// Why the pair serves no one, or what needs the operator (`None`: nothing).
    #[serde(default)]
    pub reason: Option<String>,
    /// The serving server's replication stream to its standby, as last
    /// reported (`None`: no report from the serving server in this epoch).
    #[serde(default)]
    pub stream: Option<StreamPosition>,
}

/// STATUS's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub servers: Vec<ServerStatus>,
    pub pairs: Vec<PairStatus>,
    pub queue_depth: u64,
    /// "ASYNC" or "SYNC".
    #[serde(default)]
    pub replication: String,
    /// The nm group (with `nm --etcd`): every nm process, leader first.
    /// A single nm without etcd lists itself as the leader.
    #[serde(default)]
    pub nm: Vec<NmStatus>,
    /// The etcd members nm's state is kept in (empty without `--etcd`).
    #[serde(default)]
    pub etcd: Vec<EtcdMemberStatus>,
}

/// One nm process of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NmStatus {
    pub address: String,
    pub role: NmRole,
    /// The leader's lease: time left before it must have renewed it, in ms
    /// (standbys: 0).
    #[serde(default)]
    pub lease_ms_left: u64,
    /// Its copy of the namespace is loaded, so it can take over at once (a
    /// standby that has just started loads a million files in seconds
    /// first). Always true of the leader.
    #[serde(default)]
    pub warm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NmRole {
    Leader,
    Standby,
}

/// One member of the etcd cluster, as the leader nm sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberStatus {
    pub name: String,
    /// Its client URL.
    pub address: String,
    /// Whether it answered the leader's last status probe.
    pub healthy: bool,
}
