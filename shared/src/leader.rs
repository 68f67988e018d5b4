//! Finding the leader among several nm addresses.
//!
//! With nm high availability (`nm --etcd`) several nm run and one leads; a
//! standby refuses every connection with `E_NOT_LEADER`, naming the leader
//! when it knows it. Storage servers and the console are given the whole
//! list (`--nm A,B,C`) and use [`connect_to_leader`] to land on the leader.

use crate::auth::ClusterKey;
use crate::connection::{ConnectionError, RpcClient};
use crate::error::{ErrorCode, WireError};
use crate::proto::Role;
use std::time::Duration;

/// The longest a storage server waits between two attempts to reach a
/// sole nm. nm's start-up grace (the time a serving server has to register
/// again before its partner may take over) is its heartbeat timeout plus
/// this, so a restart of nm alone never promotes anything.
pub const NM_RECONNECT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// The addresses of a `--nm A,B,C` list, in order, without blanks.
pub fn parse_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long one nm may take to connect and answer the handshake when there
/// are others to try: a hung leader must not hold its followers for long.
pub const DIAL_TIMEOUT_AMONG_SEVERAL: Duration = Duration::from_millis(1000);

/// Connects to the leader: `preferred` first (the leader last seen), then
/// every address of `addresses` in turn, following each redirect once.
/// Returns the client and the address it reached. A single address is
/// dialled as before, without a time limit of its own.
pub async fn connect_to_leader(
    addresses: &[String],
    preferred: Option<&str>,
    role: Role,
    name: &str,
    key: Option<&ClusterKey>,
) -> Result<(RpcClient, String), ConnectionError> {
    if let [only] = addresses {
        if preferred.is_none_or(|p| p == only) {
            let client = RpcClient::connect_keyed(only.as_str(), role, name, key).await?;
            return Ok((client, only.clone()));
        }
    }
    let mut queue: Vec<String> = preferred.map(str::to_owned).into_iter().collect();
    queue.extend(addresses.iter().cloned());
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = None;
    let mut next = 0;
    while next < queue.len() {
        let address = queue[next].clone();
        next += 1;
        if tried.contains(&address) {
            continue;
        }
        tried.push(address.clone());
        let dial = RpcClient::connect_keyed(address.as_str(), role, name, key);
        match tokio::time::timeout(DIAL_TIMEOUT_AMONG_SEVERAL, dial).await {
            Ok(Ok(client)) => return Ok((client, address)),
            Ok(Err(ConnectionError::Refused(error))) if error.code == ErrorCode::NotLeader => {
                if let Some(leader) = &error.leader {
                    if !tried.contains(leader) {
                        // Try the named leader next.
                        queue.insert(next, leader.clone());
                    }
                }
                last_error = Some(ConnectionError::Refused(error));
            }
            Ok(Err(e)) => {
                // A refusal that is not a redirect outranks "unreachable".
                if !matches!(last_error, Some(ConnectionError::Refused(_)))
                    || matches!(e, ConnectionError::Refused(_))
                {
                    last_error = Some(e);
                }
            }
            Err(_) => {
                if last_error.is_none() {
                    last_error = Some(ConnectionError::Timeout);
                }
            }
        }
    }
    Err(match last_error {
        // Redirected, and the leader named did not answer as one.
        Some(ConnectionError::Refused(e)) if e.code == ErrorCode::NotLeader => {
            ConnectionError::Refused(WireError::not_leader(None))
        }
        other => other.unwrap_or(ConnectionError::Timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_on_commas() {
        assert_eq!(
            parse_addresses(" 127.0.0.2:5000,127.0.0.3:5000 ,,"),
            vec!["127.0.0.2:5000", "127.0.0.3:5000"]
        );
        assert_eq!(parse_addresses("a:1"), vec!["a:1"]);
    }
}
