//! Every message that crosses the wire.
//!
//! A connection opens with a [`Hello`] from the side that dialled, answered by
//! a [`HelloReply`]. After that every frame is a [`Request`] or a [`Reply`]
//! whose `id` echoes the request's, so several replies (a READ's chunks, a
//! STREAM's words) and later pushed events can share one connection.
//!
//! Messages are MessagePack maps (field names on the wire), so a field can be
//! added without breaking older peers; enums are externally tagged.
//!
//! | connection            | requests      | replies     |
//! |-----------------------|---------------|-------------|
//! | console → nm          | [`NmRequest`] | [`NmReply`] |
//! | ss → nm (control)     | [`NmRequest`] | [`NmReply`] |
//! | console → ss (direct) | [`SsRequest`] | [`SsReply`] |
//! | nm → ss (commands)    | [`SsRequest`] | [`SsReply`] |

use crate::error::WireError;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// `DOC+` in ASCII: the first field of every connection.
pub const MAGIC: u32 = u32::from_be_bytes(*b"DOC+");
/// Bumped on any change that an older peer could misread (2: requests are
/// decoded strictly, see `shared::connection`; 3: WATCH `recent`, pair
/// `operations`; 4: the serving server's record of what its standby lacks;
/// 5: `Register` is one frame, the inventory pulled by nm afterwards).
pub const PROTOCOL_VERSION: u32 = 5;
/// Inventory entries per frame (inventories are paged to stay under the frame limit).
pub const INVENTORY_PAGE: usize = 1000;

/// Who is speaking on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Client,
    StorageServer,
    NameManager,
}

/// The first frame on every connection, sent by the side that dialled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u32,
    pub role: Role,
    /// The user name of a client, the server name of a storage server.
    pub name: String,
    /// A daemon's challenge to the side it dials (cluster key in use).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Vec<u8>>,
}

/// A daemon's answer to a challenge: HMAC of the nonce, its role and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    #[serde(with = "serde_bytes")]
    pub mac: Vec<u8>,
}

impl Hello {
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            name: name.into(),
            nonce: None,
        }
    }
}

/// The answer to a [`Hello`]: welcome, or the reason the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        version: u32,
        role: Role,
        /// The acceptor's challenge: answer with a [`Proof`], then read the
        /// final Welcome or Refused.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        challenge: Option<Vec<u8>>,
        /// The acceptor's proof for the dialler's nonce.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        proof: Option<Vec<u8>>,
    },
    Refused {
        error: WireError,
    },
}

/// A request frame; the reply echoes `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request<B> {
    pub id: u64,
    pub body: B,
}

/// A reply frame. A streamed answer is several replies with the same `id`,
/// the last of which says it is the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<B> {
    pub id: u64,
    pub result: Result<B, WireError>,
}

/// Just the id of a request, to answer a frame whose body could not be decoded.
#[derive(Debug, Deserialize)]
pub struct RequestId {
    pub id: u64,
}

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

impl Tombstone {
    pub fn stamp(&self) -> (u64, u64) {
        (self.epoch, self.version)
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

/// Requests a storage server sends nm on its control connection (the
/// ss → nm channel), answered with [`NmReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// First request on a storage server's control connection, answered
    /// with `Registered` at once whatever the number of files: nm asks the
    /// pair's serving server for its inventory afterwards, on a connection
    /// of its own (`SsRequest::Inventory`), while the server serves.
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
    },
    /// Changes the backup acknowledged on the replication stream, sent in
    /// batches: nm settles them in the pair's catch-up record and reports
    /// them as events and lag.
    Streamed {
        changes: Vec<StreamedChange>,
    },
    /// A storage server served a READ or STREAM.
    FileAccessed {
        file: String,
        user: String,
        at_ms: u64,
    },
}

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

/// The other server of a storage server's pair: the serving one streams its
/// changes to it (see `SsRequest::StreamOpen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub name: String,
    pub address: String,
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

/// Requests served by a storage server, from clients (with a ticket) and from nm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SsRequest {
    /// Answered with `Chunk`s and a final `End`.
    Read {
        file: String,
        ticket: Ticket,
    },
    /// Answered with `Word`s, one per stream interval, and a final `End`.
    Stream {
        file: String,
        ticket: Ticket,
    },
    /// Locks a sentence for this connection until `WriteCommit` or `WriteAbort`.
    WriteBegin {
        file: String,
        sentence: i64,
        ticket: Ticket,
    },
    WriteEdit {
        word_index: i64,
        content: String,
    },
    /// ETIRW: applies the edits as one change and releases the lock.
    WriteCommit,
    WriteAbort,

    /// A checkpoint's content, in `Chunk`s and a final `End` (a read ticket).
    ReadCheckpoint {
        file: String,
        tag: String,
        ticket: Ticket,
    },

    /// From nm: make an empty file owned by `owner`.
    CreateFile {
        file: String,
        owner: String,
    },
    /// From nm: remove a file and everything kept with it.
    DeleteFile {
        file: String,
    },
    /// From nm: restore the content before the last change.
    UndoFile {
        file: String,
    },
    /// From nm: replace the access list.
    SetAcl {
        file: String,
        acl: AccessList,
    },
    /// From nm: rename a file with everything kept with it.
    MoveFile {
        file: String,
        to: String,
    },
    /// From nm: snapshot the content under `tag`.
    CreateCheckpoint {
        file: String,
        tag: String,
    },
    /// From nm: make a checkpoint's content the current one (one UNDO step).
    Revert {
        file: String,
        tag: String,
    },
    ListCheckpoints {
        file: String,
    },

    /// From a backup (or nm): a file's metadata and content, answered with
    /// `FileHeader`, `Chunk`s and `FileEnd`. Needs a read ticket for the caller.
    GetFile {
        file: String,
        ticket: Ticket,
    },
    /// From nm to a backup: copy these files from the primary at `from`.
    PullFiles {
        from: String,
        items: Vec<PullItem>,
    },
    /// From nm to a backup: apply a delete made on the primary at (`epoch`, `version`).
    ApplyDelete {
        file: String,
        version: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// From nm: both sides have the delete; forget its tombstone.
    PurgeTombstone {
        file: String,
    },
    /// From nm: the current inventory and tombstones, in `Inventory` pages and a final `End`.
    Inventory,
    /// From nm: the entries of just these files (those held here) and all
    /// tombstones, answered like `Inventory`. A catch-up compares only the
    /// files changed since the pair was last level.
    InventoryOf {
        files: Vec<String>,
    },
    /// From nm, before a sync lists this server's files: the files its
    /// standby may lack, as this server recorded them (answered with
    /// `Unconfirmed`). A new nm, which knows nothing of what changed, asks
    /// this rather than comparing both whole inventories.
    Unconfirmed,
    /// From nm: a sync that asked `Unconfirmed` (and got `mark`) before it
    /// listed this server's files brought `level.standby` level with it.
    Levelled {
        level: UnconfirmedLevel,
        mark: u64,
    },
    /// From nm: a replication job left this server's standby holding `file`
    /// at (`epoch`, `version`) or later (a copy, or a delete at that stamp).
    Confirmed {
        file: String,
        epoch: u64,
        version: u64,
    },
    /// From nm: this server's part in its pair from now on.
    SetRole {
        epoch: u64,
        serving: bool,
        writable: bool,
    },
    /// From nm during recovery: keep this server's copy of `file` under the
    /// name `to` (a conflict copy), making room for the newer one.
    KeepConflict {
        file: String,
        to: String,
    },

    /// From nm: the other server of this one's pair registered (at once,
    /// rather than with the next heartbeat's answer).
    SetPartner {
        partner: Option<Partner>,
    },

    /// From the serving server of the pair to its standby: opens the
    /// replication stream on this connection for changes made in `epoch`.
    /// Accepted only from the partner nm named, in the same epoch, while
    /// this server is not serving.
    StreamOpen {
        epoch: u64,
    },
    /// On an open replication stream: a committed change, whole (metadata
    /// and content), answered with `Done` once it is durable here. Applied
    /// like a copy: never over a newer version or a newer delete.
    StreamApply {
        file: String,
        meta: FileMeta,
        content: ByteBuf,
    },
    /// On an open replication stream: a committed DELETE at (epoch,
    /// version), answered with `Done` once its tombstone is durable here.
    /// Applied like `ApplyDelete`: a newer local copy is kept.
    StreamDelete {
        file: String,
        version: u64,
        epoch: u64,
    },
}

/// Replies from a storage server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SsReply {
    Chunk {
        data: ByteBuf,
    },
    Word {
        word: String,
    },
    End,
    /// The sentence is locked; `words` is its word count.
    WriteOpen {
        words: u64,
    },
    /// An edit line applied to the working copy; `words` is its new count.
    Edited {
        words: u64,
    },
    /// A change was applied; the file's stats after it.
    Applied {
        stats: FileStats,
        /// The change went to the standby on the replication stream (and,
        /// with synchronous replication, the standby has it): nm queues no job.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        streamed: bool,
    },
    Checkpoints {
        checkpoints: Vec<CheckpointInfo>,
    },
    /// The first reply to `GetFile`.
    FileHeader {
        meta: FileMeta,
    },
    /// The last reply to `GetFile`: a CRC-32 of the content.
    FileEnd {
        checksum: u32,
        size: u64,
    },
    Pulled {
        results: Vec<PullResult>,
    },
    Inventory {
        files: Vec<InventoryEntry>,
        tombstones: Vec<Tombstone>,
    },
    /// The answer to `Unconfirmed`.
    Unconfirmed {
        /// Where this server's count of changes stood when it answered.
        mark: u64,
        /// With a level, `files` are all the standby it names may lack;
        /// without one, nothing is known (compare everything).
        level: Option<UnconfirmedLevel>,
        files: Vec<String>,
    },
    /// Done, nothing to report.
    Done,
}

/// [`SsReply::Chunk`] as a sender writes it, borrowing its bytes: the same
/// frame on the wire, but a file is streamed through one reused buffer
/// instead of a new zero-filled one per chunk.
#[derive(Debug, Serialize)]
pub enum ChunkOut<'a> {
    Chunk { data: &'a serde_bytes::Bytes },
}

/// The standby a sync last brought level with the serving server: its
/// name, its storage folder's identity, and the epoch the server served in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnconfirmedLevel {
    pub standby: String,
    pub store_id: u64,
    pub epoch: u64,
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

/// One file for a backup to copy from its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullItem {
    pub file: String,
    /// A read ticket for the backup, signed by nm.
    pub ticket: Ticket,
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
