//! `console`, the operator's client of the Docs++ document store.
//!
//! - [`cli`]: the command line.
//! - [`client`]: a connection to nm plus direct connections to storage servers.
//! - [`script`]: parsing of command lines.
//! - [`batch`]: `--batch` mode, human or `--json` output.
//! - [`render`]: human text for results.
//! - `console bench` runs the `docs-bench` binary (the `bench` crate) from
//!   the console's own folder: the benchmarks prepare clusters through the
//!   daemon crates, and the console, a client, depends on none of them.
//! - [`local_cluster`]: real nm and ss processes in a temp dir.
//! - [`tui`]: the interactive console (ratatui), also `console demo`.

pub mod batch;
pub mod cli;
pub mod client;
pub mod local_cluster;
pub mod render;
pub mod script;
pub mod tui;
