//! The client → nm channel: what a client (the console, a script) asks nm.

use super::*;
use serde::{Deserialize, Serialize};

/// The longest nm holds a client's requests for its own changes' notices
/// (see [`NmRequest::AwaitChanges`]): as long as a storage server waited for
/// nm's answer to a notice before it stopped waiting.
pub const CHANGES_AWAITED_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The most changes one [`NmRequest::AwaitChanges`] may name.
pub const MAX_CHANGES_AWAITED: usize = 1024;

/// A change a client made on a storage server: its file and the stamp
/// (epoch, version) the server answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMade {
    pub file: String,
    pub epoch: u64,
    pub version: u64,
}

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
    /// Sent by a client ahead of its next request (pipelined: no round trip
    /// of its own) when it has changed files on storage servers since its
    /// last request to nm: answered `Done` once nm's record of each file is
    /// at that stamp or newer (or the file is gone), or after at most
    /// [`CHANGES_AWAITED_FOR`], so that what the client asks next sees its
    /// own writes (read-your-writes). A storage server acknowledges a
    /// streamed write without waiting for nm, which hears of it by a notice.
    /// At most [`MAX_CHANGES_AWAITED`] changes.
    AwaitChanges {
        changes: Vec<ChangeMade>,
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
