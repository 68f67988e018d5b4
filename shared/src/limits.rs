//! Limits every daemon enforces on its connections, as command-line flags.

use crate::connection::Connection;
use crate::WireError;
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Counts the connections being served.
#[derive(Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        ConnectionSlots(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A slot for one more connection, if any is free; freed when dropped.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
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

/// A daemon's accept loop: serves each connection on its own task, at most
/// `max_connections` at once (one more is told E_UNAVAILABLE and closed),
/// until `shutdown` is cancelled, which also ends every connection.
/// `daemon` ("nm", "ss") prefixes the log events.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    daemon: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    raise_fd_limit();
    let slots = ConnectionSlots::new(max_connections);
    let refused = format!("{daemon}_connection_refused");
    let accept_failed = format!("{daemon}_accept_failed");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
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
                    let connection = serve(stream, peer);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = connection => {}
                        }
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
}
