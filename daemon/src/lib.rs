//! What both daemons (`nm` and `ss`) run besides the protocol: kept out of
//! `shared` so the client (`console`) links no accept loop, no HTTP server,
//! no log subscriber and no signal handling.
//!
//! - [`connections`]: the accept loop, connection slots (the idle closed
//!   first to make room), the limits' flags, the drain at shutdown.
//! - [`requests`]: reading a connection's next request, bad input answered
//!   the same way by both daemons.
//! - [`logging`]: tracing set-up (JSON lines or pretty, `RUST_LOG`).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint (`--metrics-addr`).
//! - [`shutdown`]: the cancellation token that stops a daemon on SIGINT/SIGTERM.

pub mod connections;
pub mod logging;
pub mod metrics;
pub mod requests;
pub mod shutdown;
