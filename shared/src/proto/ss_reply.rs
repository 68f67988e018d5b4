//! A storage server's replies, on all of its channels.

use super::*;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

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
    /// A `WriteBlock` committed: the file's stats after it, and each edit
    /// line's answer in order (the working copy's word count, or why that
    /// line was refused).
    BlockWritten {
        stats: FileStats,
        answers: Vec<Result<u64, WireError>>,
    },
    /// A `WriteBlock` whose WRITE could not begin (a stale ticket, a
    /// sentence locked or out of range, a server not serving): nothing changed.
    BlockNotBegun {
        error: WireError,
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
    /// Between `FileHeader` and `FileEnd` of a large file, instead of
    /// `Chunk`s: `size` bytes of content follow on the connection as they
    /// are, outside any frame (sent with `sendfile`).
    Raw {
        size: u64,
    },
    /// The last reply to `GetFile`: a CRC-32 of the content.
    FileEnd {
        checksum: u32,
        size: u64,
    },
    /// Some of `GetFiles`' files, in the order asked.
    Files {
        files: Vec<FileCopied>,
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
