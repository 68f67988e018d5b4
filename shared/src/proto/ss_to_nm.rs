//! The ss → nm channel: a storage server's control connection
//! (registration, heartbeats, change notices).

use super::*;
use serde::{Deserialize, Serialize};

/// A serving server reports where its replication stream stands at least
/// this often while it is open, even when nothing changes.
pub const STREAM_REPORT_IDLE_MS: u64 = 200;

/// A serving server's stream waits this long for its standby's
/// acknowledgement (or to get a change into the socket) before it deems the
/// stream stuck, closes it and hands what it had not delivered to nm. nm's
/// `--max-standby-lag` must be shorter to ever see the standby behind.
pub const STREAM_ACK_TIMEOUT_MS: u64 = 2000;

/// Requests a storage server sends nm on its control connection (the
/// ss → nm channel), answered with [`NmReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// First request on a storage server's control connection, answered
    /// with `Registered` at once whatever the number of files: nm asks the
    /// pair's serving server for its inventory afterwards, on a connection
    /// of its own (`SsCommand::Inventory`), while the server serves.
    Register {
        name: String,
        client_addr: String,
        /// `ss --backup-of NAME`; without it, `NAME_backup` backs `NAME`.
        #[serde(default)]
        backup_of: Option<String>,
        /// Identifies this server's data directory: a new one (an emptied
        /// disk) means nm can assume nothing about what it holds.
        #[serde(default)]
        store_id: u64,
        /// How many files the server holds; `None` while its start-up scan runs.
        #[serde(default)]
        files: Option<u64>,
    },
    Heartbeat,
    /// A storage server applied a change (a WRITE's ETIRW, an UNDO, …).
    FileChanged {
        file: String,
        stats: FileStats,
        /// The change went to the backup on the replication stream: nm
        /// records it but queues no job. If the stream breaks before the
        /// backup acknowledges it, the server sends the notice again
        /// without this flag.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        streamed: bool,
        /// The change is the file's DELETE (handed back by the stream): nm
        /// copies it as a delete, whether or not it has removed the file
        /// from its namespace yet.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// No answer wanted unless it is an error: nm handles a server's
        /// messages in order, so its answer to the next heartbeat says it
        /// has this notice. Saves the server a wake-up per change.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
    },
    /// Changes the backup acknowledged on the replication stream, sent in
    /// batches: nm settles them in the pair's catch-up record and reports
    /// them as events and lag.
    Streamed {
        changes: Vec<StreamedChange>,
        /// Where the stream stands; sent with every batch, and every
        /// [`STREAM_REPORT_IDLE_MS`] while nothing changes.
        #[serde(default)]
        position: Option<StreamPosition>,
    },
    /// A storage server served a READ or STREAM.
    FileAccessed {
        file: String,
        user: String,
        at_ms: u64,
    },
}
