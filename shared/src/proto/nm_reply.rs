//! nm's replies, on both of its channels (client → nm, ss → nm).

use super::*;
use serde::{Deserialize, Serialize};

/// Replies from nm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NmReply {
    /// The request succeeded and has nothing more to say.
    Done,
    Files {
        rows: Vec<FileRow>,
    },
    Info {
        info: FileInfo,
    },
    Users {
        users: Vec<String>,
    },
    Status {
        status: ClusterStatus,
    },
    Located {
        location: Location,
    },
    Requests {
        requests: Vec<AccessRequest>,
    },
    Folder {
        entries: Vec<FolderEntry>,
    },
    Checkpoints {
        checkpoints: Vec<CheckpointInfo>,
    },
    Exec {
        output: ExecOutput,
    },
    Subscribed,
    Event {
        event: Event,
    },
    /// A storage server is registered; `ticket_key` verifies client tickets.
    Registered {
        #[serde(with = "serde_bytes")]
        ticket_key: Vec<u8>,
        /// The pair's epoch; tickets and changes from older epochs are refused.
        #[serde(default)]
        epoch: u64,
        /// Whether to serve clients now (a returning server first catches up).
        #[serde(default)]
        serving: bool,
        /// Whether to accept changes now.
        #[serde(default)]
        writable: bool,
        /// How long a heartbeat's acknowledgement lets the server accept
        /// writes; shorter than nm's failure timeout.
        #[serde(default)]
        lease_ms: u64,
        /// Synchronous replication: an ETIRW is acknowledged only once nm
        /// confirms (by answering its WRITE_COMPLETE) that the backup has it.
        #[serde(default)]
        sync_replication: bool,
        /// The other server of the pair, while it is registered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner: Option<Partner>,
    },
    /// The answer to a storage server's `Heartbeat`.
    Beat {
        /// The other server of the pair, while it is registered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner: Option<Partner>,
    },
}
