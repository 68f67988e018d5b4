//! The client → ss channel: what a client does on a storage server directly,
//! once nm has told it where to go (every request carries nm's ticket).

use super::*;
use serde::{Deserialize, Serialize};

/// Requests a client sends a storage server (the dialler's role is
/// `Client`), answered with [`SsReply`]s.
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
    /// WRITE, its edit lines and ETIRW in one request (a script's block,
    /// read whole): the sentence is locked, the edits applied in order (a
    /// refused one changes nothing, as on its own) and the change
    /// committed, in one round trip instead of one per line. Answered with
    /// `BlockWritten`, or `BlockNotBegun` when the WRITE could not begin
    /// (nothing changed: the client may ask nm again and resend it).
    WriteBlock {
        file: String,
        sentence: i64,
        ticket: Ticket,
        edits: Vec<EditLine>,
    },
    /// A checkpoint's content, in `Chunk`s and a final `End` (a read ticket).
    ReadCheckpoint {
        file: String,
        tag: String,
        ticket: Ticket,
    },
}

/// One edit line of a WRITE block: `content` goes in at `word_index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditLine {
    pub word_index: i64,
    pub content: String,
}
