//! The accept loop both daemons serve their connections with, and the
//! limits they enforce on them (as command-line flags): at most
//! `--max-connections` at once (the idle one closed first to make room),
//! handshake, idle and frame timeouts, and a drain at shutdown.

use clap::Args;
use shared::connection::{Connection, SlotState};
use shared::WireError;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Connection limits (the same flags on nm and ss).
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Most connections served at once; more are refused with E_UNAVAILABLE.
    #[arg(long, env = "DOCS_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// A connection that has not completed its handshake within this is closed.
    #[arg(long, env = "DOCS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// A connection that sends nothing for this long is closed (clients
    /// reconnect by themselves; storage servers send heartbeats).
    #[arg(long, env = "DOCS_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Once a request's first bytes arrive, the whole frame must follow
    /// within this (a connection trickling a frame byte by byte is closed).
    #[arg(long, env = "DOCS_FRAME_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub frame_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection waiting this long for its next request may be closed to
/// make room for a new one when every slot is taken.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// The connections being served, at most `max`. When all are taken, the
/// one that has waited longest for its next request (at least
/// [`EVICTABLE_AFTER`]) is closed to make room, so connections that hold a
/// slot and send nothing (or trickle) never lock a new client out; only
/// when every connection is busy is a new one turned away.
pub struct ConnectionSlots {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    held: Mutex<HashMap<u64, Arc<SlotState>>>,
}

/// A connection's hold on a slot; the slot is freed when it is dropped.
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    id: u64,
    pub state: Arc<SlotState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            max: max.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SlotState>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every connection to close once its request in flight is done.
    pub fn dismiss_all(&self) {
        for state in self.lock().values() {
            state.dismiss();
        }
    }

    /// A slot for one more connection: a free one, or the slot of the
    /// connection that has waited longest for a request (it is told to
    /// close); `None` when every connection is busy or only just waiting.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut held = self.lock();
        if held.len() >= self.max {
            let now = self.epoch.elapsed();
            let (victim, waited) = held
                .iter()
                .filter_map(|(id, state)| state.waited(now).map(|w| (*id, w)))
                .max_by_key(|(_, waited)| *waited)?;
            if waited < EVICTABLE_AFTER {
                return None;
            }
            if let Some(state) = held.remove(&victim) {
                tracing::info!(event = "connection_evicted", waited_ms = waited.as_millis() as u64, "every connection slot was taken: the connection that had waited longest for a request was closed to make room");
                state.dismiss();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Waiting from the accept: a connection that is slow to complete
        // its handshake is as evictable as an idle one.
        let state = Arc::new(SlotState::new(self.epoch));
        state.waiting();
        held.insert(id, state.clone());
        Some(Slot {
            slots: self.clone(),
            id,
            state,
        })
    }
}

/// Raises this process's open-file limit to its hard limit, so that the
/// connection limit, not the descriptor table, decides who is turned away.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// After a failed accept (out of descriptors, say), a short pause so the
/// accept loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// How long a stopping daemon lets requests in flight finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// A daemon's accept loop: serves each connection on its own task, at most
/// `max_connections` at once (see [`ConnectionSlots`]: one more closes the
/// connection idle longest, or is told E_UNAVAILABLE and closed when none
/// is idle). `serve` gets the connection's slot state, to attach to its
/// [`Connection`] ([`Connection::hold_slot`]).
///
/// When `shutdown` is cancelled it drains: it stops accepting, dismisses
/// every connection (one waiting for a request closes at once; one in the
/// middle of a request finishes it and closes before reading another), and
/// returns once all have ended, or after [`DRAIN_DEADLINE`], when those
/// left are aborted. A request is never cut off half-way by a shutdown
/// unless it outlasts the deadline.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    daemon: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<SlotState>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    raise_fd_limit();
    let slots = ConnectionSlots::new(max_connections);
    let refused = format!("{daemon}_connection_refused");
    let accept_failed = format!("{daemon}_accept_failed");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = slots.take() else {
                        tracing::warn!(event = %refused, peer = %peer, reason = "too many connections");
                        let error = WireError::unavailable(format!(
                            "too many connections (at most {max_connections}); retry later"
                        ));
                        tokio::spawn(Connection::turn_away(stream, error));
                        continue;
                    };
                    let connection = serve(stream, peer, slot.state.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(event = %accept_failed, error = %e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let open = connections.len();
    slots.dismiss_all();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let aborted = connections.len();
    connections.shutdown().await;
    tracing::info!(
        event = %format!("{daemon}_drained"),
        connections = open,
        aborted,
        in_time = drained.is_ok(),
        "stopped accepting; the connections open at shutdown finished their requests"
    );
}
