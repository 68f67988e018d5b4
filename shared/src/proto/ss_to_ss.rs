//! The ss → ss channel: partners copying files from each other, and the
//! serving server's replication stream to its standby.

use super::*;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Requests a storage server sends its partner (the dialler's role is
/// `StorageServer`), answered with [`SsReply`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// From a standby copying from its partner: a file's metadata and
    /// content, answered with `FileHeader`, `Chunk`s and `FileEnd`. Needs a
    /// read ticket for the caller.
    GetFile { file: String, ticket: Ticket },
    /// From a standby copying many files from its partner (a sync): the
    /// files in order, several whole to a [`SsReply::Files`] reply, then
    /// `End`. A file too large to go whole in a frame is answered
    /// [`FileCopy::Large`], and the standby asks for it with `GetFile`.
    /// Each item carries a read ticket for the caller.
    GetFiles { items: Vec<PullItem> },
    /// A checkpoint's content, in `Chunk`s and a final `End` (a read
    /// ticket): a standby copies a file's checkpoints with it.
    ReadCheckpoint {
        file: String,
        tag: String,
        ticket: Ticket,
    },
    /// From the serving server of the pair to its standby: opens the
    /// replication stream on this connection for changes made in `epoch`.
    /// Accepted only from the partner nm named, in the same epoch, while
    /// this server is not serving.
    StreamOpen { epoch: u64 },
}

/// What the serving server sends on a replication stream its standby
/// accepted (after [`PeerRequest::StreamOpen`]), each answered with
/// [`SsReply::Done`] once durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// A committed change, whole (metadata
    /// and content), answered with `Done` once it is durable here. Applied
    /// like a copy: never over a newer version or a newer delete.
    ///
    /// `checkpoints` carries the content of each checkpoint the change
    /// made (a CHECKPOINT); every other checkpoint `meta` names must
    /// already be on the standby, as `meta` describes it, or the change is
    /// refused (and the serving server hands it to nm, whose job copies
    /// the file with its checkpoints).
    StreamApply {
        file: String,
        meta: FileMeta,
        content: ByteBuf,
        #[serde(default)]
        checkpoints: Vec<StreamedCheckpoint>,
    },
    /// A committed DELETE at (epoch,
    /// version), answered with `Done` once its tombstone is durable here.
    /// Applied like `ApplyDelete`: a newer local copy is kept.
    StreamDelete {
        file: String,
        version: u64,
        epoch: u64,
    },
}

/// A checkpoint's content, carried with the change that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamedCheckpoint {
    pub tag: String,
    pub content: ByteBuf,
}
