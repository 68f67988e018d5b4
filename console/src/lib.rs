//! `console`, the operator's client of the Docs++ document store.
//!
//! - [`cli`]: the command line.
//! - [`client`] (the `client` crate, re-exported): a connection to nm plus
//!   direct connections to storage servers.
//! - [`script`]: parsing of command lines.
//! - [`batch`]: `--batch` mode, human or `--json` output.
//! - [`render`]: human text for results.
//! - `console bench` runs the `docs-bench` binary (the `bench` crate) from
//!   the console's own folder.
//! - `console demo` runs a local cluster of real daemons through the
//!   `harness` crate ([`harness::local`]), the launcher the tests use too.
//! - [`tui`]: the interactive console (ratatui), also `console demo`.

pub mod batch;
pub mod cli;
pub mod render;
pub mod script;
pub mod tui;

pub use ::client;
