//! Cluster events (WATCH, the TUI's event log) and replication job steps.

use super::*;
use serde::{Deserialize, Serialize};

/// A cluster event, as WATCH and the TUI see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per nm run.
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A replication job step.
    Job {
        job: u64,
        kind: JobKind,
        step: JobStep,
        file: Option<String>,
        primary: String,
        replica: String,
        version: Option<u64>,
        /// Time since the job was queued.
        duration_ms: u64,
        /// Bytes transferred, a failure's reason, a retry's delay…
        detail: Option<String>,
    },
    /// A pair changed state.
    Pair {
        primary: String,
        backup: Option<String>,
        from: PairState,
        to: PairState,
        epoch: u64,
        reason: String,
    },
    /// The whole cluster as STATUS shows it (WATCH with snapshots).
    Snapshot { status: ClusterStatus },
    /// The nm group has a new leader (`previous`: the one before, if known).
    NmLeader {
        address: String,
        previous: Option<String>,
    },
    /// A storage server registered or was declared failed.
    Server {
        name: String,
        state: ServerState,
        reason: String,
    },
    /// Changes the standby acknowledged on the replication stream (one
    /// event per batch the serving server reports).
    Streamed {
        primary: String,
        replica: String,
        /// The files, in the order they were acknowledged.
        files: Vec<String>,
        /// The slowest change of the batch, commit to acknowledgement.
        max_micros: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobKind {
    Create,
    Update,
    Delete,
    Metadata,
    SyncPair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStep {
    Queued,
    Coalesced,
    Started,
    Transferred,
    Applied,
    Failed,
    Retried,
    Dropped,
}
