//! The one error-code enum that crosses the wire between every peer.
//!
//! A failed request is answered with a [`WireError`]: a stable code that
//! scripts can match (`E_NOT_FOUND`, …) and a human message.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable error codes, serialized as their `E_…` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    #[serde(rename = "E_NOT_FOUND")]
    NotFound,
    #[serde(rename = "E_EXISTS")]
    Exists,
    #[serde(rename = "E_UNAUTHORIZED")]
    Unauthorized,
    #[serde(rename = "E_LOCKED")]
    Locked,
    #[serde(rename = "E_INVALID_INDEX")]
    InvalidIndex,
    #[serde(rename = "E_INVALID_NAME")]
    InvalidName,
    #[serde(rename = "E_NO_SUCH_USER")]
    NoSuchUser,
    #[serde(rename = "E_NOTHING_TO_UNDO")]
    NothingToUndo,
    /// No live server holds the file, or the cluster is still starting; retry later.
    #[serde(rename = "E_UNAVAILABLE")]
    Unavailable,
    #[serde(rename = "E_DISABLED")]
    Disabled,
    #[serde(rename = "E_BAD_REQUEST")]
    BadRequest,
    /// Wrong magic or protocol version in the handshake.
    #[serde(rename = "E_PROTOCOL")]
    Protocol,
    /// A name, payload or frame over its limit.
    #[serde(rename = "E_TOO_LARGE")]
    TooLarge,
    /// An operation ran past its time limit.
    #[serde(rename = "E_TIMEOUT")]
    Timeout,
    #[serde(rename = "E_INTERNAL")]
    Internal,
    /// This nm is a standby (or has lost its leadership): ask the leader,
    /// whose address the error carries when it is known.
    #[serde(rename = "E_NOT_LEADER")]
    NotLeader,
}

impl ErrorCode {
    /// The `E_…` name, as it appears on the wire and in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "E_NOT_FOUND",
            ErrorCode::Exists => "E_EXISTS",
            ErrorCode::Unauthorized => "E_UNAUTHORIZED",
            ErrorCode::Locked => "E_LOCKED",
            ErrorCode::InvalidIndex => "E_INVALID_INDEX",
            ErrorCode::InvalidName => "E_INVALID_NAME",
            ErrorCode::NoSuchUser => "E_NO_SUCH_USER",
            ErrorCode::NothingToUndo => "E_NOTHING_TO_UNDO",
            ErrorCode::Unavailable => "E_UNAVAILABLE",
            ErrorCode::Disabled => "E_DISABLED",
            ErrorCode::BadRequest => "E_BAD_REQUEST",
            ErrorCode::Protocol => "E_PROTOCOL",
            ErrorCode::TooLarge => "E_TOO_LARGE",
            ErrorCode::Timeout => "E_TIMEOUT",
            ErrorCode::Internal => "E_INTERNAL",
            ErrorCode::NotLeader => "E_NOT_LEADER",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels in a reply: a code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    /// With `E_NOT_LEADER`: the leader nm's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// A standby's answer: go to `leader`. With no leader known (an
    /// election under way, or etcd unreachable) it is `E_UNAVAILABLE`.
    pub fn not_leader(leader: Option<String>) -> Self {
        match leader {
            Some(address) => WireError {
                code: ErrorCode::NotLeader,
                message: format!("this nm is a standby; the leader is {address}"),
                leader: Some(address),
            },
            None => Self::unavailable(
                "no nm leads at the moment (an election is under way, or etcd is unreachable); retry shortly",
            ),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_e_names() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Locked,
            ErrorCode::InvalidIndex,
            ErrorCode::Unavailable,
            ErrorCode::TooLarge,
        ] {
            let bytes = rmp_serde::to_vec_named(&code).unwrap();
            let text: String = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(text, code.as_str());
        }
    }
}
