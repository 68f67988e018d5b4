//! The client → nm channel: what a client (the console, a script) asks nm.

use super::*;
use serde::{Deserialize, Serialize};

/// Requests a client sends nm (the client → nm channel). A storage
/// server's control connection speaks [`ControlRequest`] instead: the
/// handshake's role fixes which of the two a connection's frames decode as,
/// so neither can even be decoded on the other's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NmRequest {
    /// Files the user can read, or all files with `all`.
    View {
        all: bool,
        long: bool,
    },
    Info {
        file: String,
    },
    List,
    Status,
    Create {
        file: String,
    },
    /// CREATE answered with where to WRITE the new file (`Located`, with a
    /// write ticket) instead of `Done`: a client about to WRITE it saves the
    /// LOCATE it would send next.
    CreateAndLocate {
        file: String,
    },
    Delete {
        file: String,
    },
    Undo {
        file: String,
    },
    /// Where to READ, WRITE or STREAM a file, with a ticket for that server.
    Locate {
        file: String,
        op: Op,
    },
    AddAccess {
        file: String,
        user: String,
        access: Access,
    },
    RemAccess {
        file: String,
        user: String,
    },
    RequestAccess {
        file: String,
        access: Access,
    },
    ViewRequests,
    Approve {
        id: u64,
    },
    Deny {
        id: u64,
    },
    CreateFolder {
        folder: String,
    },
    /// Moves a file into `folder` ("" is the top), keeping its name.
    Move {
        file: String,
        folder: String,
    },
    ViewFolder {
        folder: String,
    },
    Checkpoint {
        file: String,
        tag: String,
    },
    Revert {
        file: String,
        tag: String,
    },
    ListCheckpoints {
        file: String,
    },
    Exec {
        file: String,
    },
    /// Subscribes this connection to cluster events: answered with a
    /// `Subscribed` and then an `Event` reply per event, all with this id.
    Watch {
        /// Also send a `snapshot` event (servers with their heartbeat
        /// timers, pairs, queue) at once and then this often.
        #[serde(default)]
        snapshot_every_ms: Option<u64>,
        /// First send up to this many of the latest events nm emitted
        /// before the subscription (the console's log starts with what
        /// happened at nm's start, not empty). 0: only new events.
        #[serde(default)]
        recent: u32,
    },
}
