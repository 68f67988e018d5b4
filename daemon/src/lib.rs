//! What both daemons (`nm` and `ss`) run besides the protocol: kept out of
//! `shared` so the client (`console`) links no HTTP server, no log
//! subscriber and no signal handling.
//!
//! - [`logging`]: tracing set-up (JSON lines or pretty, `RUST_LOG`).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint (`--metrics-addr`).
//! - [`shutdown`]: the cancellation token that stops a daemon on SIGINT/SIGTERM.

pub mod logging;
pub mod metrics;
pub mod shutdown;
