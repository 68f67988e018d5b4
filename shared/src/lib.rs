//! The wire protocol shared by `nm`, `ss` and `console`.
//!
//! - [`proto`]: every message, the handshake and the small common types
//!   (file stats, access lists, tickets, cluster status).
//! - [`auth`]: the cluster key and the daemons' challenge-response.
//! - [`connection`]: the frame codec and a typed [`connection::Connection`];
//!   the only code that turns bytes into messages.
//! - [`error`]: the one error-code enum every peer uses.
//! - [`names`]: file and user name rules, checked by every peer.
//! - [`ticket`]: nm's signed permissions for direct READ, WRITE and STREAM.
//! - [`leader`]: finding the leader among several nm addresses.
//! - [`checked_frames`]: checksummed records on disk (ss's write-ahead log
//!   and packs, nm's journal), cut at the first torn one.
//!
//! What the daemons run besides the protocol (the accept loop and its
//! limits, the request loop's reading step, logging, the metrics endpoint,
//! shutdown on signals) is in the `daemon` crate: the client links none of it.

pub mod auth;
pub mod checked_frames;
pub mod connection;
pub mod error;
pub mod leader;
pub mod names;
pub mod proto;
pub mod ticket;

pub use error::{ErrorCode, WireError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
