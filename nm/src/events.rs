//! Cluster events: every replication job step, pair state change and server
//! state change. Each goes to the log and to every WATCH subscriber.

use shared::now_ms;
use shared::proto::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind by before it misses some.
const BUFFER: usize = 4096;
/// The latest events kept for a new subscriber (WATCH `recent`).
pub const RECENT: usize = 200;

pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
    /// The latest events, oldest first. Sending happens under this lock, so
    /// a subscriber gets each event once: from here or from its receiver.
    recent: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BUFFER).0,
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }
}

impl Events {
    pub fn emit(&self, kind: EventKind) {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: now_ms(),
            kind,
        };
        match &event.kind {
            EventKind::Job {
                job,
                kind,
                step,
                file,
                primary,
                replica,
                version,
                duration_ms,
                detail,
            } => {
                tracing::info!(
                    event = "nm_repl_job",
                    job,
                    kind = ?kind,
                    step = ?step,
                    file = file.as_deref().unwrap_or("-"),
                    primary = %primary,
                    replica = %replica,
                    version = version.unwrap_or(0),
                    duration_ms,
                    detail = detail.as_deref().unwrap_or(""),
                );
            }
            EventKind::Pair {
                primary,
                backup,
                from,
                to,
                epoch,
                reason,
            } => {
                tracing::info!(
                    event = "nm_pair_state",
                    primary = %primary,
                    backup = backup.as_deref().unwrap_or("-"),
                    from = ?from,
                    to = ?to,
                    epoch,
                    reason = %reason,
                );
            }
            EventKind::Snapshot { .. } => {}
            EventKind::NmLeader { address, previous } => {
                tracing::info!(event = "nm_leader", address = %address, previous = previous.as_deref().unwrap_or("-"));
            }
            EventKind::Server {
                name,
                state,
                reason,
            } => {
                tracing::info!(event = "nm_server_state", server = %name, state = ?state, reason = %reason);
            }
            EventKind::Streamed {
                primary,
                replica,
                files,
                max_micros,
            } => {
                tracing::debug!(event = "nm_streamed", primary = %primary, replica = %replica, changes = files.len(), max_micros);
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.tx.send(event);
    }

    /// A snapshot for one subscriber: numbered in the same sequence, not logged.
    pub fn snapshot(&self, status: shared::proto::ClusterStatus) -> Event {
        Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: now_ms(),
            kind: EventKind::Snapshot { status },
        }
    }

    /// A receiver of every event from now on, and up to `recent` of the
    /// latest events before it (oldest first), with no gap and no repeat.
    pub fn subscribe(&self, recent: usize) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let kept = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.tx.subscribe();
        let skip = kept.len().saturating_sub(recent);
        (kept.iter().skip(skip).cloned().collect(), receiver)
    }
}
