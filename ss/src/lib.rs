//! `ss`, a storage server of the Docs++ document store.
//!
//! It keeps file contents and metadata on disk and serves READ, WRITE and
//! STREAM to clients directly, once nm has sent them here with a ticket. nm
//! itself connects to create, delete and undo files.
//!
//! - [`config`]: the command line.
//! - [`store`]: the on-disk layout and its atomic writes.
//! - [`wal`]: the write-ahead log that makes a CREATE or a WRITE durable with one fdatasync.
//! - [`document`]: the sentence engine behind WRITE.
//! - [`files`]: files in memory, sentence locks and WRITE sessions.
//! - [`server`]: the listener and one task per connection, with one handler
//!   per channel (clients, nm, the partner).
//! - [`transfer`]: content sent out in chunks (READ, VIEWCHECKPOINT, `GetFile`).
//! - [`role`]: this server's part in its pair (epoch, serving, writable)
//!   and the lease that bounds it, read whole.
//! - [`nm_link`]: registration with nm, heartbeats and change notices.
//! - [`replica`]: copying files from the partner (`PullFiles`: `GetFile`s
//!   in flight, installs in batches).
//! - [`stream`]: the replication stream, each committed change sent to the
//!   standby as it becomes durable.
//! - [`unconfirmed`]: the files the standby may lack, which a new nm asks
//!   for instead of comparing both whole inventories.

pub mod config;
pub mod document;
pub mod files;
pub mod nm_link;
pub mod replica;
pub mod role;
pub mod server;
pub mod store;
pub mod stream;
pub mod transfer;
pub mod unconfirmed;
pub mod wal;

pub use config::Config;
pub use server::run;
