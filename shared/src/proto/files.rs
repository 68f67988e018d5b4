//! The file model as the wire carries it: statistics, metadata, access
//! lists, tickets, inventories, tombstones and the rows of listings.

use crate::error::WireError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a grantee may do with a file. Write implies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    #[serde(rename = "R")]
    Read,
    #[serde(rename = "W")]
    Write,
}

impl Access {
    pub fn allows(self, op: Op) -> bool {
        match op {
            Op::Read | Op::Stream => true,
            Op::Write => self == Access::Write,
        }
    }

    /// `R` or `RW`, as INFO shows it.
    pub fn label(self) -> &'static str {
        match self {
            Access::Read => "R",
            Access::Write => "RW",
        }
    }
}

/// Grantees other than the owner, by user name.
pub type AccessList = BTreeMap<String, Access>;

/// The operations a client performs directly on a storage server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Read,
    Write,
    Stream,
}

/// Counters and times of one file. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    pub size: u64,
    pub words: u64,
    pub chars: u64,
    /// Bumped by every change on the server that applied it.
    pub version: u64,
    /// The pair epoch in which the last change was made. Versions are
    /// ordered by (epoch, version): see [`FileStats::stamp`].
    #[serde(default)]
    pub epoch: u64,
    /// The version this file had when its current epoch's changes began: a
    /// copy from an older epoch with a higher version holds changes this one
    /// never saw (a conflict).
    #[serde(default)]
    pub base: u64,
    pub created_ms: u64,
    pub modified_ms: u64,
    pub accessed_ms: u64,
    pub accessed_by: Option<String>,
}

impl FileStats {
    /// The order of versions across failovers: epoch first, then version.
    pub fn stamp(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }

    /// Records one change made in `epoch`.
    pub fn bump(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.base = self.version;
            self.epoch = epoch;
        }
        self.version += 1;
    }
}

/// Everything a storage server keeps about a file besides its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub owner: String,
    pub acl: AccessList,
    pub stats: FileStats,
    /// Named snapshots of the content, by tag.
    #[serde(default)]
    pub checkpoints: BTreeMap<String, CheckpointInfo>,
}

/// One checkpoint of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub tag: String,
    pub created_ms: u64,
    pub size: u64,
}

/// A pending REQUESTACCESS, as VIEWREQUESTS shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: u64,
    pub file: String,
    pub user: String,
    pub access: Access,
    pub requested_ms: u64,
}

/// One entry of VIEWFOLDER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderEntry {
    /// The full path.
    pub name: String,
    pub is_folder: bool,
}

/// What EXEC's script printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    /// The exit status; `None` when killed by a signal.
    pub status: Option<i32>,
}

/// One file in a storage server's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub file: String,
    pub meta: FileMeta,
}

/// nm's signed permission for one user to perform one operation on one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub user: String,
    pub file: String,
    pub op: Op,
    pub epoch: u64,
    pub expires_ms: u64,
    #[serde(with = "serde_bytes")]
    pub mac: Vec<u8>,
}

/// One row of VIEW.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRow {
    pub name: String,
    pub owner: String,
    pub words: u64,
    pub chars: u64,
    pub size: u64,
    pub modified_ms: u64,
    pub accessed_ms: u64,
    pub accessed_by: Option<String>,
}

/// INFO's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub owner: String,
    pub acl: AccessList,
    pub stats: FileStats,
    /// The servers holding the file, primary first.
    pub servers: Vec<String>,
    /// Whether the backup holds the primary's version; `None` without a backup.
    pub backup_in_sync: Option<bool>,
    /// Conflict copies of this file kept by a recovery (`name.conflict-…`).
    #[serde(default)]
    pub conflict_copies: Vec<String>,
}

/// Where a client goes for a direct operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub server: String,
    pub address: String,
    pub ticket: Ticket,
}

/// A deleted file, remembered until both servers of the pair have applied the delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub file: String,
    /// The version the delete gave the file.
    pub version: u64,
    /// The epoch in which the delete was made.
    #[serde(default)]
    pub epoch: u64,
    pub deleted_ms: u64,
    /// The deleted file's `base`: the last version it inherited from an
    /// older epoch. A copy elsewhere from an older epoch with a higher
    /// version holds changes the delete never saw (0: unknown, so any such
    /// copy is kept as a conflict copy).
    #[serde(default)]
    pub base: u64,
}

impl Tombstone {
    pub fn stamp(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }
}

/// The standby a sync last brought level with the serving server: its
/// name, its storage folder's identity, and the epoch the server served in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnconfirmedLevel {
    pub standby: String,
    pub store_id: u64,
    pub epoch: u64,
}

/// One file for a backup to copy from its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullItem {
    pub file: String,
    /// A read ticket for the backup, signed by nm.
    pub ticket: Ticket,
}

/// One file of a `GetFiles`, as its partner sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCopied {
    pub file: String,
    /// The copy, or why this file could not be read (its ticket refused,
    /// the file gone): the other files go on.
    pub copy: Result<FileCopy, WireError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileCopy {
    /// The metadata and the whole content, with its CRC-32.
    Whole {
        meta: FileMeta,
        content: serde_bytes::ByteBuf,
        checksum: u32,
    },
    /// Too large to go whole in a frame: asked for with `GetFile`.
    Large,
}

/// What happened to one [`PullItem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResult {
    pub file: String,
    pub result: Result<Pulled, WireError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// The version the backup now holds.
    pub version: u64,
    /// The epoch of that version.
    #[serde(default)]
    pub epoch: u64,
    /// Content and checkpoint bytes that crossed the wire (0 when already current).
    pub bytes: u64,
}

/// The other server of a storage server's pair: the serving one streams its
/// changes to it (see `PeerRequest::StreamOpen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub name: String,
    pub address: String,
}

/// Where a serving server's replication stream stands: positions count
/// the changes sent on it since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The epoch the stream carries changes of.
    pub epoch: u64,
    /// The position of the last change sent.
    pub sent: u64,
    /// Every change up to this position is settled: the standby
    /// acknowledged it (it is durable there), or the stream could not
    /// deliver it and handed it to nm, whose job copies it.
    pub acknowledged: u64,
    /// Changes sent and not acknowledged yet (acknowledgements may come
    /// out of order, so this can be less than `sent - acknowledged`).
    pub unacknowledged: u64,
    /// Age of the oldest of them, in ms.
    pub oldest_ms: u64,
    /// The stream is open; once closed, what it had not delivered went to
    /// nm as ordinary changes (jobs).
    pub open: bool,
    /// When the serving server took this reading (its clock, Unix ms).
    pub at_ms: u64,
}

/// One change a backup acknowledged on the replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamedChange {
    pub file: String,
    pub epoch: u64,
    pub version: u64,
    /// From the change's commit on the primary to the backup's acknowledgement.
    pub micros: u64,
}
