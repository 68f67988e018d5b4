//! Client tickets: nm's HMAC-signed permission for one direct operation.
//!
//! nm hands a [`Ticket`] with every `Locate` answer; the storage server checks
//! its signature, expiry, user, file and operation before serving, so a client
//! that skips nm gets nothing. The key is nm's and is given to storage servers
//! when they register.

use crate::error::{ErrorCode, WireError};
use crate::proto::{Op, Ticket};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The secret that signs tickets.
#[derive(Clone)]
pub struct TicketKey(Vec<u8>);

impl TicketKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        TicketKey(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, t: &Ticket) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key size");
        let signed = (&t.user, &t.file, t.op, t.epoch, t.expires_ms);
        mac.update(&rmp_serde::to_vec(&signed).expect("plain tuple encodes"));
        mac
    }

    /// Issues a ticket valid until `expires_ms`.
    pub fn issue(&self, user: &str, file: &str, op: Op, epoch: u64, expires_ms: u64) -> Ticket {
        let mut ticket = Ticket {
            user: user.to_owned(),
            file: file.to_owned(),
            op,
            epoch,
            expires_ms,
            mac: Vec::new(),
        };
        ticket.mac = self.mac(&ticket).finalize().into_bytes().to_vec();
        ticket
    }

    /// Checks that `ticket` is nm's, unexpired, and for this user, file and operation.
    pub fn verify(
        &self,
        ticket: &Ticket,
        user: &str,
        file: &str,
        op: Op,
        now_ms: u64,
    ) -> Result<(), WireError> {
        let refuse = |why: &str| Err(WireError::new(ErrorCode::Unauthorized, why.to_owned()));
        if self.mac(ticket).verify_slice(&ticket.mac).is_err() {
            return refuse("ticket signature is not nm's");
        }
        if ticket.expires_ms < now_ms {
            return refuse("ticket expired; ask nm again");
        }
        if ticket.user != user || ticket.file != file || ticket.op != op {
            return refuse("ticket is for another user, file or operation");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tickets_verify_and_tampering_fails() {
        let key = TicketKey::new(b"0123456789abcdef".to_vec());
        let t = key.issue("alice", "a.txt", Op::Read, 0, 1_000);
        key.verify(&t, "alice", "a.txt", Op::Read, 999).unwrap();
        assert!(key.verify(&t, "alice", "a.txt", Op::Read, 1_001).is_err());
        assert!(key.verify(&t, "bob", "a.txt", Op::Read, 0).is_err());
        assert!(key.verify(&t, "alice", "a.txt", Op::Write, 0).is_err());
        let mut forged = t.clone();
        forged.op = Op::Write;
        assert!(key.verify(&forged, "alice", "a.txt", Op::Write, 0).is_err());
        let other = TicketKey::new(b"another key".to_vec());
        assert!(other.verify(&t, "alice", "a.txt", Op::Read, 0).is_err());
    }
}
