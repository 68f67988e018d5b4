//! The nm → ss channel: what nm tells a storage server to do (namespace
//! changes, replication, inventories, roles). Only nm speaks it: the
//! handshake proves the cluster key.

use super::*;
use serde::{Deserialize, Serialize};

/// Commands nm sends a storage server (the dialler's role is
/// `NameManager`), answered with [`SsReply`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SsCommand {
    /// Make an empty file owned by `owner`.
    CreateFile {
        file: String,
        owner: String,
    },
    /// Remove a file and everything kept with it.
    DeleteFile {
        file: String,
    },
    /// Restore the content before the last change.
    UndoFile {
        file: String,
    },
    /// Replace the access list.
    SetAcl {
        file: String,
        acl: AccessList,
    },
    /// Rename a file with everything kept with it.
    MoveFile {
        file: String,
        to: String,
    },
    /// Snapshot the content under `tag`.
    CreateCheckpoint {
        file: String,
        tag: String,
    },
    /// Make a checkpoint's content the current one (one UNDO step).
    Revert {
        file: String,
        tag: String,
    },
    ListCheckpoints {
        file: String,
    },
    /// A file's content for EXEC (a ticket nm issued itself), answered
    /// with `Chunk`s and a final `End`.
    Read {
        file: String,
        ticket: Ticket,
    },
    /// To a backup: copy these files from the primary at `from`.
    PullFiles {
        from: String,
        items: Vec<PullItem>,
    },
    /// To a backup: apply a delete made on the primary at (`epoch`, `version`).
    ApplyDelete {
        file: String,
        version: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// Both sides have the delete; forget its tombstone.
    PurgeTombstone {
        file: String,
    },
    /// The current inventory and tombstones, in `Inventory` pages and a final `End`.
    Inventory,
    /// The entries of just these files (those held here) and all
    /// tombstones, answered like `Inventory`. A catch-up compares only the
    /// files changed since the pair was last level.
    InventoryOf {
        files: Vec<String>,
    },
    /// Before a sync lists this server's files: the files its
    /// standby may lack, as this server recorded them (answered with
    /// `Unconfirmed`). A new nm, which knows nothing of what changed, asks
    /// this rather than comparing both whole inventories.
    Unconfirmed,
    /// A sync that asked `Unconfirmed` (and got `mark`) before it
    /// listed this server's files brought `level.standby` level with it.
    Levelled {
        level: UnconfirmedLevel,
        mark: u64,
    },
    /// A replication job left this server's standby holding `file`
    /// at (`epoch`, `version`) or later (a copy, or a delete at that stamp).
    Confirmed {
        file: String,
        epoch: u64,
        version: u64,
    },
    /// This server's part in its pair from now on.
    SetRole {
        epoch: u64,
        serving: bool,
        writable: bool,
    },
    /// During recovery: keep this server's copy of `file` under the
    /// name `to` (a conflict copy), making room for the newer one.
    KeepConflict {
        file: String,
        to: String,
    },
    /// The other server of this one's pair registered (at once,
    /// rather than with the next heartbeat's answer).
    SetPartner {
        partner: Option<Partner>,
    },
}
