//! The console's command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The Docs++ console: a live view of a cluster and a command line for it.
///
/// Without --batch it opens the full-screen console (? lists its keys);
/// `console demo` starts a local cluster and opens the console on it.
///
/// With --batch it reads commands from FILE (or standard input), one per
/// line: VIEW [-a|-l|-al], READ f, CREATE f, WRITE f n (then `<word_index>
/// <content>` lines and ETIRW), UNDO f, INFO f, DELETE f, STREAM f, LIST,
/// STATUS, ADDACCESS -R|-W f user, REMACCESS f user, REQUESTACCESS f -R|-W,
/// VIEWREQUESTS, APPROVE id, DENY id, CREATEFOLDER d, MOVE f d, VIEWFOLDER
/// [d], CHECKPOINT f tag, VIEWCHECKPOINT f tag, REVERT f tag, LISTCHECKPOINTS
/// f, EXEC f, WATCH [seconds] (cluster events as JSON lines), EXIT. `#`
/// starts a comment.
///
/// Exit status: 0 when every command succeeded, 1 when any failed, 2 for
/// usage or connection errors.
#[derive(Debug, Clone, Parser)]
#[command(name = "console", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,

    /// nm's address, or every address of an nm group (`A,B,C`, nm with
    /// `--etcd`): the console goes to the leader and follows it.
    #[arg(long, env = "CONSOLE_NM", default_value = "127.0.0.1:5000")]
    pub nm: String,

    /// Dial nm and the storage servers from this local address (a client
    /// on a host of its own; the kernel picks one otherwise).
    #[arg(long, env = "CONSOLE_BIND", value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,

    /// The user to act as (nm knows a user from its first contact; LIST
    /// shows them). `console demo` acts as this user too.
    #[arg(long, env = "CONSOLE_USER", default_value = "operator")]
    pub user: String,

    /// Run commands from FILE, or from standard input without FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub batch: Option<PathBuf>,

    /// Print exactly one JSON object per command:
    /// {"command", "ok", "code", "message", "data"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// nm high availability: start etcd (the `etcd` binary of the OS's
    /// etcd-server package) and three nm as a group on it besides the two
    /// pairs. The TUI shows the group (leader, standbys, the leader's lease,
    /// etcd); K on the leader's row fails it over. Needs nm built with
    /// `--features nm/etcd`.
    #[arg(long)]
    pub ha: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Sub {
    /// Run a workload against a local cluster started for it and print
    /// throughput, latency, replication lag or transfer rate (runs the
    /// `docs-bench` binary beside this one; `console bench --help` lists the
    /// workloads).
    #[command(disable_help_flag = true)]
    Bench {
        /// The workload and its options, as `docs-bench` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Start nm and two primary/backup pairs in a temp dir (fast heartbeats)
    /// and open the console on them, with a pane per daemon: Tab selects one,
    /// K kills it (SIGKILL), R restarts it. Quitting stops them all.
    Demo(DemoArgs),
}
