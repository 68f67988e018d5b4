//! The steps both daemons' connection loops share: the handshake of an
//! accepted connection, and reading the next request of its channel, with
//! bad input answered the same way everywhere.
//!
//! A frame that is not a valid request of the channel gets `E_BAD_REQUEST`
//! (echoing its id when readable) and the connection goes on; an oversize
//! frame gets `E_TOO_LARGE` and the connection ends, as does any other
//! framing error or the peer closing.

use crate::connections::Limits;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shared::auth::ClusterKey;
use shared::connection::{Connection, ConnectionError, Incoming, SlotState};
use shared::proto::{Hello, Role};
use shared::{ErrorCode, WireError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// How a daemon answers the handshakes of the connections it accepts.
pub struct Handshake<'a> {
    /// The acceptor's own role.
    pub me: Role,
    pub max_frame: usize,
    pub limits: &'a Limits,
    /// The cluster key a daemon dialling in must prove (`None`: insecure).
    pub key: Option<&'a ClusterKey>,
    /// Names the log events (`nm_handshake_failed`, ...).
    pub daemon: &'static str,
}

impl Handshake<'_> {
    /// Completes the handshake of an accepted connection (within
    /// `--handshake-timeout`), then holds it to its slot: a client's
    /// connection may be closed to make room while it waits for a request
    /// (see [`crate::connections`]). `None`: the handshake failed (logged).
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Arc<SlotState>,
    ) -> Option<(Connection, Hello)> {
        let accepted = Connection::accept(
            stream,
            self.me,
            self.max_frame,
            self.limits.handshake_timeout,
            self.key,
        )
        .await;
        let (mut conn, hello) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(event = %format!("{}_handshake_failed", self.daemon), peer = %peer, error = %e);
                return None;
            }
        };
        let evictable = hello.role == Role::Client;
        conn.hold_slot(slot, self.limits.frame_timeout, evictable);
        Some((conn, hello))
    }
}

/// What the next frame of a connection was.
pub enum Next<R> {
    /// A request of the channel, with its id.
    Request(u64, R),
    /// A malformed request, already answered with `E_BAD_REQUEST`.
    Refused,
    /// The connection is over (closed, broken, or an oversize frame answered).
    Closed,
}

impl<R> Next<R> {
    /// The same outcome with the request turned into a `T` (a channel's
    /// request into the enum of all of them, say).
    pub fn map<T>(self, f: impl FnOnce(R) -> T) -> Next<T> {
        match self {
            Next::Request(id, request) => Next::Request(id, f(request)),
            Next::Refused => Next::Refused,
            Next::Closed => Next::Closed,
        }
    }
}

/// Reads the next request of type `R` (the channel's enum). `daemon` names
/// the log events (`nm_malformed_request`, `ss_connection_error`, ...).
pub async fn next_request<R: DeserializeOwned + Serialize>(
    conn: &mut Connection,
    peer: SocketAddr,
    daemon: &'static str,
) -> Next<R> {
    match conn.recv_request::<R>().await {
        Ok(Some(Incoming::Message(request))) => Next::Request(request.id, request.body),
        Ok(Some(Incoming::Malformed { id, error })) => {
            tracing::warn!(event = %format!("{daemon}_malformed_request"), peer = %peer, error = %error);
            let error = WireError::bad_request(format!(
                "malformed request (or one this connection's role may not send): {error}"
            ));
            match conn.reply::<()>(id, Err(error)).await {
                Ok(()) => Next::Refused,
                Err(_) => Next::Closed,
            }
        }
        Ok(None) => Next::Closed,
        Err(e) => {
            tracing::warn!(event = %format!("{daemon}_connection_error"), peer = %peer, error = %e);
            if let ConnectionError::Io(io) = &e {
                if io.kind() == std::io::ErrorKind::InvalidData {
                    let error = WireError::new(ErrorCode::TooLarge, io.to_string());
                    let _ = conn.reply::<()>(0, Err(error)).await;
                }
            }
            Next::Closed
        }
    }
}
