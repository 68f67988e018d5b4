//! The storage server's command line. Every flag also reads an `SS_…` variable.

use clap::{ArgAction, Parser};
use daemon::logging::LogFormat;
use shared::connection::DEFAULT_MAX_FRAME;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A Docs++ storage server: stores file contents and metadata under --storage
/// and serves READ, WRITE and STREAM to clients that nm sends here.
#[derive(Debug, Clone, Parser)]
#[command(name = "ss", version)]
pub struct Config {
    /// nm's address, or the addresses of an nm group (`A,B,C`, with
    /// `nm --etcd`): the server registers with the leader, follows it when
    /// it changes, and reconnects with backoff.
    #[arg(long, env = "SS_NM", default_value = "127.0.0.1:5000")]
    pub nm: String,

    /// This server's name. `ssN_backup` is the backup of `ssN`.
    #[arg(long, env = "SS_USERNAME")]
    pub username: String,

    /// Make this server the backup of NAME (without it, `NAME_backup` backs `NAME`).
    #[arg(long, env = "SS_BACKUP_OF", value_name = "NAME")]
    pub backup_of: Option<String>,

    /// The cluster key shared by nm and every storage server (at least 16
    /// bytes; `head -c 32 /dev/urandom | xxd -p > key` makes one). Daemons
    /// prove they hold it to each other, and client tickets are signed with
    /// it. Default: this user's key, `$XDG_CONFIG_HOME/docspp/cluster.key`
    /// (or `~/.config/docspp/cluster.key`), created with mode 0600 on first
    /// use, so the daemons of one user on one machine find each other.
    #[arg(long, env = "SS_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Run without a cluster key (only without --cluster-key-file): anyone
    /// who can reach the port can then pose as nm or as a storage server.
    #[arg(long, env = "SS_INSECURE", conflicts_with = "cluster_key_file")]
    pub insecure: bool,

    /// Folder holding contents and metadata; nothing is written outside it.
    #[arg(long, env = "SS_STORAGE")]
    pub storage: PathBuf,

    /// Port for clients and nm; 0 picks a free one and reports it to nm.
    #[arg(long, env = "SS_CLIENT_PORT", default_value_t = 0)]
    pub client_port: u16,

    /// Host name or address advertised to clients.
    #[arg(long, env = "SS_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Address to listen on. Connections this server dials (to nm, to its
    /// partner) leave from it too.
    #[arg(long, env = "SS_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Time between heartbeats to nm ("1s", "100ms").
    #[arg(long, env = "SS_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Largest file a WRITE may produce, in bytes; a bigger edit is refused with E_TOO_LARGE.
    #[arg(long, env = "SS_MAX_FILE_SIZE", default_value_t = 256 << 20)]
    pub max_file_size: u64,

    /// Serve Prometheus metrics over HTTP on this address: requests by
    /// operation and outcome (`docs_ss_requests_total`,
    /// `docs_ss_request_seconds`) and files held (`docs_ss_files`).
    #[arg(long, env = "SS_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Pause between words of a STREAM.
    #[arg(long, env = "SS_STREAM_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub stream_delay: Duration,

    /// fsync contents, metadata and directories on every change. Turn off only for throwaway data.
    #[arg(long, env = "SS_FSYNC", default_value_t = true, action = ArgAction::Set)]
    pub fsync: bool,

    /// Send each committed change straight to the standby on one persistent
    /// connection (the replication stream). `false`: every change goes
    /// through nm's replication jobs, as before the stream existed.
    #[arg(long, env = "SS_REPLICATION_STREAM", default_value_t = true, action = ArgAction::Set)]
    pub replication_stream: bool,

    /// Pause between the chunks of an outgoing transfer (for tests that need
    /// a transfer to be in flight; never set in production).
    #[arg(long, env = "SS_CHUNK_DELAY", hide = true, value_parser = humantime::parse_duration)]
    pub chunk_delay: Option<Duration>,

    /// On a standby, wait this long between acknowledging a streamed change
    /// (durable in the log) and putting it in place (for tests that kill it
    /// in that window; never set in production).
    #[arg(long, env = "SS_STREAM_APPLY_DELAY", hide = true, value_parser = humantime::parse_duration)]
    pub stream_apply_delay: Option<Duration>,

    /// On the serving server, wait this long between announcing a committed
    /// ETIRW (durable in the log, sent on the stream and to nm) and putting
    /// it in place (for tests that kill it in that window; never set in
    /// production).
    #[arg(long, env = "SS_COMMIT_APPLY_DELAY", hide = true, value_parser = humantime::parse_duration)]
    pub commit_apply_delay: Option<Duration>,

    /// Hold each change notice to nm this long before sending it (for tests
    /// that show a write is answered without nm; never set in production).
    #[arg(long, env = "SS_NOTICE_DELAY", hide = true, value_parser = humantime::parse_duration)]
    pub notice_delay: Option<Duration>,

    /// Wait this long before the start-up scan (for tests that need a
    /// server serving while its scan has not finished; never set in production).
    #[arg(long, env = "SS_SCAN_DELAY", hide = true, value_parser = humantime::parse_duration)]
    pub scan_delay: Option<Duration>,

    #[command(flatten)]
    pub limits: daemon::connections::Limits,

    /// Largest frame accepted or sent, in bytes.
    #[arg(long, env = "SS_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Log as JSON lines or human-readable text (to stderr; RUST_LOG filters).
    #[arg(long, env = "SS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}
