//! Every message that crosses the wire, one module per channel.
//!
//! A connection opens with a [`Hello`] from the side that dialled, answered by
//! a [`HelloReply`]. After that every frame is a [`Request`] or a [`Reply`]
//! whose `id` echoes the request's, so several replies (a READ's chunks, a
//! STREAM's words) and later pushed events can share one connection.
//!
//! Messages are MessagePack maps (field names on the wire), so a field can be
//! added without breaking older peers; enums are externally tagged, by name.
//!
//! The dialler's role in its [`Hello`] fixes the channel, and each channel
//! has a request enum of its own: a message meant for another channel cannot
//! even be decoded (it is answered `E_BAD_REQUEST`), so no handler has to
//! remember to refuse it.
//!
//! | channel (module)                 | dialler's role  | requests           | replies     |
//! |----------------------------------|-----------------|--------------------|-------------|
//! | client → nm ([`client_to_nm`])   | `Client`        | [`NmRequest`]      | [`NmReply`] |
//! | ss → nm, control ([`ss_to_nm`])  | `StorageServer` | [`ControlRequest`] | [`NmReply`] |
//! | client → ss ([`client_to_ss`])   | `Client`        | [`SsRequest`]      | [`SsReply`] |
//! | nm → ss ([`nm_to_ss`])           | `NameManager`   | [`SsCommand`]      | [`SsReply`] |
//! | ss → ss, partners ([`ss_to_ss`]) | `StorageServer` | [`PeerRequest`], then [`StreamRequest`] on an opened stream | [`SsReply`] |
//!
//! The types they carry: [`files`] (the file model: stats, metadata,
//! tickets, inventories), [`status`] (STATUS), [`events`] (WATCH).

pub mod client_to_nm;
pub mod client_to_ss;
pub mod events;
pub mod files;
pub mod nm_reply;
pub mod nm_to_ss;
pub mod ss_reply;
pub mod ss_to_nm;
pub mod ss_to_ss;
pub mod status;

pub use client_to_nm::*;
pub use client_to_ss::*;
pub use events::*;
pub use files::*;
pub use nm_reply::*;
pub use nm_to_ss::*;
pub use ss_reply::*;
pub use ss_to_nm::*;
pub use ss_to_ss::*;
pub use status::*;

use crate::error::WireError;
use serde::{Deserialize, Serialize};

/// `DOC+` in ASCII: the first field of every connection.
pub const MAGIC: u32 = u32::from_be_bytes(*b"DOC+");
/// Bumped on any change that an older peer could misread (2: requests are
/// decoded strictly, see `shared::connection`; 3: WATCH `recent`, pair
/// `operations`; 4: the serving server's record of what its standby lacks;
/// 5: `Register` is one frame, the inventory pulled by nm afterwards; 6: a
/// storage server's requests split by channel, see the table above; 7: a
/// streamed change carries the checkpoints it made, a stream reports its
/// position, and a large file's content follows `SsReply::Raw` unframed;
/// 8: a client's `WriteBlock`).
pub const PROTOCOL_VERSION: u32 = 9;
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
