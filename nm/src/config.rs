//! nm's command line. Every flag also reads an `NM_…` variable.

use clap::{ArgAction, Parser};
use daemon::logging::LogFormat;
use shared::connection::DEFAULT_MAX_FRAME;
use std::path::PathBuf;
use std::time::Duration;

/// The Docs++ name manager: namespace, users, access lists, and which
/// storage server holds each file. Clients ask it first; storage servers
/// register with it.
#[derive(Debug, Clone, Parser)]
#[command(name = "nm", version, args_override_self = true)]
pub struct Config {
    /// Address to listen on for clients and storage servers (port 0 picks a free one).
    #[arg(long, env = "NM_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: String,

    /// The address other daemons and clients reach this nm at, when it
    /// differs from the bound one (with `--etcd`, standbys name the leader
    /// by it). Default: the bound address.
    #[arg(long, env = "NM_ADVERTISE")]
    pub advertise: Option<String>,

    /// Keep nm's state in etcd instead of the local journal, and run as one
    /// of a group: every nm started with the same endpoints (and prefix)
    /// elects one leader; the others are hot standbys that redirect clients
    /// and storage servers to it (E_NOT_LEADER) and take over when its lease
    /// lapses. Comma-separated client URLs, e.g.
    /// `http://127.0.0.1:2379,http://127.0.0.2:2379`. Needs an nm built with
    /// `--features nm/etcd`.
    #[arg(long, env = "NM_ETCD", value_name = "URL[,URL…]")]
    pub etcd: Option<String>,

    /// Where in etcd this cluster's keys live (several clusters can share one etcd).
    #[arg(long, env = "NM_ETCD_PREFIX", default_value = "/docspp/")]
    pub etcd_prefix: String,

    /// The leader's etcd lease: a leader that could not renew it for
    /// three quarters of this stops answering, and a standby takes over once
    /// it lapses (whole seconds; etcd may round up).
    #[arg(long, env = "NM_LEADER_LEASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,

    /// Folder where nm keeps users, owners, access lists and file placement.
    #[arg(long, env = "NM_DATA_DIR", default_value = "nm-data")]
    pub data_dir: PathBuf,

    /// The cluster key shared by nm and every storage server (at least 16
    /// bytes; `head -c 32 /dev/urandom | xxd -p > key` makes one). Daemons
    /// prove they hold it to each other, and client tickets are signed with
    /// it. Default: this user's key, `$XDG_CONFIG_HOME/docspp/cluster.key`
    /// (or `~/.config/docspp/cluster.key`), created with mode 0600 on first
    /// use, so the daemons of one user on one machine find each other.
    #[arg(long, env = "NM_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Run without a cluster key (only without --cluster-key-file): anyone
    /// who can reach the port can then pose as nm or as a storage server.
    #[arg(long, env = "NM_INSECURE", conflicts_with = "cluster_key_file")]
    pub insecure: bool,

    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100).
    #[arg(long, env = "NM_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Once listening, write the bound address to this file (for scripts and tests).
    #[arg(long, env = "NM_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// How long a READ/WRITE/STREAM ticket handed to a client stays valid.
    #[arg(long, env = "NM_TICKET_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ticket_ttl: Duration,

    /// How long nm waits for a storage server to answer a forwarded command.
    #[arg(long, env = "NM_SS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ss_timeout: Duration,

    /// fsync the journal before acknowledging a change. Turn off only for throwaway data.
    #[arg(long, env = "NM_FSYNC", default_value_t = true, action = ArgAction::Set)]
    pub fsync: bool,

    #[command(flatten)]
    pub limits: daemon::connections::Limits,

    /// Largest frame accepted or sent, in bytes.
    #[arg(long, env = "NM_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Log as JSON lines or human-readable text (to stderr; RUST_LOG filters).
    /// One human line per operation also goes to stdout.
    #[arg(long, env = "NM_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// A storage server silent for this long is declared FAILED (a closed
    /// control connection is detected at once). Servers accept writes only
    /// under a lease of two thirds of this, renewed by each heartbeat.
    #[arg(long, env = "NM_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Async mode: a standby whose replication stream leaves an
    /// acknowledged change unacknowledged for longer than this is out of
    /// sync as soon as the serving server reports it (every 20 ms while
    /// anything is unacknowledged): it is not promoted if the serving server
    /// fails (the pair goes OFFLINE instead), and a catch-up brings it
    /// level once the stream keeps up (no change older than half this).
    /// This bounds what async mode's window can lose to a promotion. Must be
    /// shorter than the stream's own 2 s timeout, after which it hands its
    /// changes to nm's jobs; 0 turns the check off.
    #[arg(long, env = "NM_MAX_STANDBY_LAG", default_value = "1s", value_parser = parse_standby_lag)]
    pub max_standby_lag: Duration,

    /// async: a change is acknowledged before the backup has it (a failure
    /// in that window can leave it only on the old primary, kept as a
    /// conflict copy). sync: acknowledged only once the backup has applied it
    /// (while the backup is down the pair runs alone; STATUS shows it).
    #[arg(long, env = "NM_REPLICATION", value_enum, default_value = "async")]
    pub replication: ReplicationMode,

    /// Promote a standby that is not in sync when the serving server fails,
    /// instead of taking the pair OFFLINE until it returns. Keeps the pair
    /// available at the cost of serving older data; what the promoted server
    /// lacks comes back as conflict copies when the other one returns. Off by
    /// default (as in Kafka).
    #[arg(long, env = "NM_UNCLEAN_PROMOTION")]
    pub unclean_promotion: bool,

    /// Most replication jobs waiting at once; beyond it a pair is marked for a full sync.
    #[arg(long, env = "NM_REPL_QUEUE_CAPACITY", default_value_t = 1000)]
    pub repl_queue_capacity: usize,

    /// Replication workers running jobs concurrently.
    #[arg(long, env = "NM_REPL_WORKERS", default_value_t = 4)]
    pub repl_workers: usize,

    /// Allow EXEC, which runs a file's content as a shell script on this
    /// machine with nm's privileges. Off by default: see the README.
    #[arg(long, env = "NM_ALLOW_EXEC")]
    pub allow_exec: bool,

    /// EXEC's time limit; the script is killed when it is reached.
    #[arg(long, env = "NM_EXEC_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub exec_timeout: Duration,

    /// EXEC's limit on the script's size and on its output (stdout and stderr each), in bytes.
    #[arg(long, env = "NM_EXEC_MAX_OUTPUT", default_value_t = 1 << 20)]
    pub exec_max_output: usize,

    /// Do not print the human line per operation on stdout.
    #[arg(long, env = "NM_QUIET")]
    pub quiet: bool,
}

/// When a change is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicationMode {
    Async,
    Sync,
}

/// `--max-standby-lag`: a duration shorter than the stream's acknowledgement
/// timeout, or 0 (off).
fn parse_standby_lag(text: &str) -> Result<Duration, String> {
    let lag = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    let limit = Duration::from_millis(shared::proto::STREAM_ACK_TIMEOUT_MS);
    if lag >= limit {
        return Err(format!(
            "must be shorter than the stream's acknowledgement timeout ({limit:?}), after which the stream hands its changes to nm's jobs and a standby would never be seen behind; 0 turns the check off"
        ));
    }
    Ok(lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standby_lag_bound_is_below_the_streams_timeout_or_off() {
        assert_eq!(parse_standby_lag("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_standby_lag("0"), Ok(Duration::ZERO));
        let refused = parse_standby_lag("2s").unwrap_err();
        assert!(refused.contains("shorter than"), "{refused}");
        assert!(parse_standby_lag("soon").is_err());
    }
}
