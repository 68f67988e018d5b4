//! `console`, the operator's client of the Docs++ document store.
//!
//! - [`cli`]: the command line.
//! - [`client`]: a connection to nm plus direct connections to storage servers.
//! - [`script`]: parsing of command lines.
//! - [`batch`]: `--batch` mode, human or `--json` output.
//! - [`render`]: human text for results.
//! - [`bench`]: `console bench`, workloads against a local cluster.
//! - [`local_cluster`]: real nm and ss processes in a temp dir.
//! - [`tui`]: the interactive console (ratatui), also `console demo`.

pub mod batch;
pub mod bench;
pub mod cli;
pub mod client;
pub mod local_cluster;
pub mod render;
pub mod script;
pub mod tui;
