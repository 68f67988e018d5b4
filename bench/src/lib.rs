//! `docs-bench` (what `console bench` runs): named workloads against a local
//! cluster it starts itself (real `nm` and `ss` processes from its own
//! folder, in a temp dir).
//!
//! It talks to the daemons over the wire only. Workloads that need a
//! million files prepare them with the daemons' own offline tools, `ss-seed`
//! (a storage folder) and `nm-seed` (nm's journal or its keys in etcd), run
//! as processes: no daemon crate is a dependency of this one.
//!
//! - `create-write`: each client CREATEs a file and WRITEs one sentence to it, in a loop.
//! - `repl-lag`: clients WRITE at a steady rate; the lag of each write is the
//!   time from its ETIRW's answer until its text is in the backup's file on
//!   disk, seen when the kernel reports the file renamed into place (or, with
//!   `--lag-watch poll`, polled every 50 µs); 0 when it was there before the
//!   answer.
//! - `resync-small` / `resync-large`: a primary holding many small files, or
//!   one large one, and an empty backup joining: the time from the backup's
//!   start (nm knowing the primary's files) until the pair is ACTIVE.
//! - `failover`: kill -9 of the primary, then READs through nm until one
//!   succeeds on the promoted backup: the time from the kill to that READ.
//! - `write-heavy` / `read-heavy`: WRITEs, or 90% READs, on existing files.
//! - `raw-tcp` / `disk-limit`: the machine's own limits, for ratios: a plain
//!   TCP copy into an fsynced file, and fsynced small-file writes.
//! - `catch-up`: the primary is killed, `--files` files are changed on the
//!   promoted backup, the primary restarts: the time until the pair is ACTIVE
//!   again with the primary serving.
//!
//! A benchmark, not a test: BENCHMARKS.md has the command lines and figures.

mod backup_watch;

pub use backup_watch::LagWatch;
use backup_watch::{BackupWatch, LAG_GIVE_UP};
use client::Client;
use harness::local::{ClusterError, LocalCluster};
use serde::Serialize;
use shared::proto::{FileStats, NmRequest, NmRole};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// CREATE then a one-sentence WRITE of a new file, by `--clients`
    /// sessions for `--duration`: pairs per second, with the backups.
    CreateWrite,
    /// The time from an ETIRW's answer until the new text is in the
    /// backup's file on disk (seen through inotify, or `--lag-watch poll`):
    /// p50/p99/max, idle and at `--rate` writes per second.
    ReplLag,
    /// The initial sync of `--files` files of `--size` KiB (default 4) to
    /// an empty backup: seconds and files per second.
    ResyncSmall,
    /// The resync of one file of `--size` MiB (default 1024) to an empty
    /// backup: seconds and MB/s.
    ResyncLarge,
    /// kill -9 (or with `--hang`, SIGSTOP) of the primary, `--rounds`
    /// times: the time until a READ through nm succeeds again.
    Failover,
    /// The primary returning after `--files` (default 1,000) files changed
    /// on its promoted backup: the time from its restart until the pair is
    /// ACTIVE again with nothing pending (catch-up and hand-back).
    CatchUp,
    /// A backup returning with `--files` (default 10) of `--total` files
    /// (default 1,000,000) out of date: the time from its restart until the
    /// pair is ACTIVE with nothing pending.
    BackupReturn,
    /// WRITEs of one sentence to existing files, many sentences per file.
    WriteHeavy,
    /// 90% READs, 10% WRITEs on existing files.
    ReadHeavy,
    /// The machine's limit for bulk transfer: `--size` MiB through one plain
    /// TCP connection on loopback into a file that is then fsynced.
    RawTcp,
    /// The disk's small-write limit: fsynced create-write-rename of 4 KiB
    /// files in one process, for `--duration`.
    DiskLimit,
    /// kill -9 of the nm leader of a group on etcd (implies `--etcd`),
    /// `--rounds` times: the time to the first successful READ and the first
    /// successful CREATE through nm, and the longest gap between two
    /// acknowledged WRITEs of a client writing all along. With `--files N`
    /// both servers and etcd hold N files first (written by `ss-seed` and
    /// `nm-seed`; nm built with `--features nm/etcd`).
    NmFailover,
    /// nm's memory holding `--files` files (default 1,000,000): their
    /// records are written to nm's journal, nm restarts on it, and its
    /// resident memory is read from /proc once it answers.
    NmMemory,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The workload to run.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// How long to run (create-write, repl-lag).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Writes per second across all clients (repl-lag).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How repl-lag sees a write reach the backup's file: woken by the
    /// kernel when the file is renamed into place or written (inotify), or
    /// by reading it every 50 µs (poll, which takes CPU from the daemons).
    #[arg(long, value_enum, default_value_t = LagWatch::Inotify)]
    pub lag_watch: LagWatch,
    /// Number of files: resync-small's (default 10,000), the files changed
    /// in catch-up (default 1,000) and backup-return (default 10),
    /// nm-memory's (default 1,000,000), and those the cluster holds in
    /// nm-failover (default 0).
    #[arg(long)]
    pub files: Option<usize>,
    /// Keep the local cluster's folder (each daemon's log and data) after
    /// the run, and print where it is on stderr.
    #[arg(long)]
    pub keep_dir: bool,
    /// Run in a folder kept by an earlier run (`--keep-dir`) instead of a new
    /// one: backup-return then starts from the files prepared there (a pair
    /// of 1,000,000 files takes minutes to prepare) instead of preparing them.
    #[arg(long, value_name = "DIR")]
    pub reuse_dir: Option<PathBuf>,
    /// Files both servers hold before the backup leaves (backup-return).
    #[arg(long, default_value_t = 1_000_000)]
    pub total: usize,
    /// File size in KiB for resync-small (default 4), in MiB for
    /// resync-large and raw-tcp (default 1024).
    #[arg(long)]
    pub size: Option<u64>,
    /// fsync on every change (as in production).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fsync: bool,
    /// The storage servers' replication stream (`ss --replication-stream`):
    /// `false` sends every change through nm's jobs, for comparison.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub replication_stream: bool,
    /// Storage servers' heartbeat interval.
    #[arg(long, default_value = "1s")]
    pub heartbeat_interval: String,
    /// nm's failure timeout.
    #[arg(long, default_value = "3s")]
    pub heartbeat_timeout: String,
    /// nm's replication mode: async or sync.
    #[arg(long, default_value = "async")]
    pub replication: String,
    /// Repetitions (failover).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// failover: hang the primary (SIGSTOP) instead of killing it, so nm must
    /// notice by the heartbeat timeout rather than by a closed connection.
    #[arg(long)]
    pub hang: bool,
    /// Run nm as a group of three on a local etcd (`nm --etcd`) instead of
    /// one nm on its journal. Needs the `etcd` binary and nm built with
    /// `--features nm/etcd`.
    #[arg(long)]
    pub etcd: bool,
    /// Folder holding the nm and ss binaries (default: the console's own).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub workload: Option<Workload>,
    pub replication: String,
    pub clients: usize,
    pub fsync: bool,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Option<Percentiles>,
    pub replication_lag_ms: Option<Percentiles>,
    /// repl-lag: writes whose text never reached the backup's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_unseen: Option<u64>,
    /// repl-lag: how the backup's files were watched (`--lag-watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_watch: Option<LagWatch>,
    pub bytes: u64,
    pub mb_per_sec: Option<f64>,
    /// Kill -9 of the primary (nm-failover: of the nm leader) to the first
    /// successful READ through nm.
    pub failover_ms: Option<Percentiles>,
    /// nm-failover: kill -9 of the nm leader to the first successful CREATE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_failover_ms: Option<Percentiles>,
    /// nm-failover: per round, the longest gap between two WRITEs a client
    /// writing all along had acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_gap_ms: Option<Percentiles>,
    /// nm-memory: nm's resident memory once it answers, its peak while
    /// loading, and the same for an nm holding nothing.
    pub nm_rss_mib: Option<f64>,
    pub nm_peak_rss_mib: Option<f64>,
    pub empty_nm_rss_mib: Option<f64>,
    /// Seconds from the start of the measured interval to named points in it.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub phases_s: std::collections::BTreeMap<String, f64>,
}

impl Report {
    /// `ops` operations in `seconds`, and their rate.
    fn measured(seconds: f64, ops: u64) -> Report {
        Report {
            seconds,
            ops,
            ops_per_sec: ops as f64 / seconds,
            ..Report::default()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Percentiles of `samples`, from an HDR histogram of microseconds (three
/// significant figures: a reported value is within 0.1% of the sample).
fn percentiles(samples: Vec<Duration>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    const HOUR_US: u64 = 3_600_000_000;
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, HOUR_US, 3)
        .expect("valid bounds and precision");
    for sample in samples {
        histogram.saturating_record((sample.as_micros() as u64).clamp(1, HOUR_US));
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Some(Percentiles {
        min: histogram.min() as f64 / 1000.0,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: histogram.max() as f64 / 1000.0,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Wire(#[from] shared::WireError),
    #[error("connecting: {0}")]
    Connect(#[from] shared::connection::ConnectionError),
    #[error("preparing the storage folder: {0}")]
    Store(String),
    #[error("watching the backup's files: {0}")]
    Watch(#[from] std::io::Error),
}

pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    let group = args.etcd || matches!(args.workload, Workload::NmFailover);
    let mut cluster = if group {
        LocalCluster::start_ha(
            args.bin_dir.clone(),
            args.fsync,
            &args.heartbeat_interval,
            &args.heartbeat_timeout,
            &args.replication,
            3,
        )
        .await?
    } else {
        LocalCluster::start_in(
            args.reuse_dir.clone(),
            args.bin_dir.clone(),
            args.fsync,
            &args.heartbeat_interval,
            &args.heartbeat_timeout,
            &args.replication,
        )
        .await?
    };
    cluster.ss_args = vec![
        "--replication-stream".into(),
        args.replication_stream.to_string(),
    ];
    if args.keep_dir {
        cluster.keep_dir();
        eprintln!("cluster folder (kept): {}", cluster.dir().display());
    }
    // `--files` defaults to resync-small's 10,000; the other workloads that
    // take it have defaults of their own.
    let files_or = |default: usize| args.files.unwrap_or(default);
    let mut report = match args.workload {
        Workload::CreateWrite => create_write(&mut cluster, &args).await?,
        Workload::ReplLag => repl_lag(&mut cluster, &args).await?,
        Workload::ResyncSmall => {
            let kib = args.size.unwrap_or(4);
            resync(&mut cluster, files_or(10_000), kib * 1024).await?
        }
        Workload::ResyncLarge => {
            let mib = args.size.unwrap_or(1024);
            resync(&mut cluster, 1, mib << 20).await?
        }
        Workload::WriteHeavy => mixed(&mut cluster, &args, 0).await?,
        Workload::ReadHeavy => mixed(&mut cluster, &args, 90).await?,
        Workload::RawTcp => raw_tcp(cluster.dir(), args.size.unwrap_or(1024) << 20).await?,
        Workload::DiskLimit => disk_limit(cluster.dir(), args.duration).await?,
        Workload::Failover => failover(&mut cluster, args.rounds, args.hang).await?,
        Workload::NmFailover => nm_failover(&mut cluster, args.rounds, files_or(0)).await?,
        Workload::NmMemory => nm_memory(&mut cluster, files_or(1_000_000)).await?,
        Workload::BackupReturn => backup_return(&mut cluster, args.total, files_or(10)).await?,
        Workload::CatchUp => catch_up(&mut cluster, files_or(1_000)).await?,
    };
    report.workload = Some(args.workload);
    report.replication = args.replication.clone();
    report.clients = args.clients;
    report.fsync = args.fsync;
    Ok(report)
}

async fn create_write(cluster: &mut LocalCluster, args: &BenchArgs) -> Result<Report, BenchError> {
    cluster.start_ss("ss1").await?;
    cluster.start_ss("ss1_backup").await?;
    cluster.wait_replicated("ss1").await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let nm = cluster.nm_addr().to_owned();
        let deadline = started + args.duration;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&nm, &format!("bench{c}")).await?;
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let file = format!("c{c}-{i}");
                client.nm(NmRequest::Create { file: file.clone() }).await?;
                write_sentence(&mut client, &file, 0, "One sentence of the benchmark.").await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    latency_report(started, tasks).await
}

/// One WRITE: locks sentence `sentence` of `file`, sets its words to `text`, commits.
async fn write_sentence(
    client: &mut Client,
    file: &str,
    sentence: i64,
    text: &str,
) -> Result<FileStats, BenchError> {
    client.write_begin(file, sentence).await?;
    client.write_edit(0, text).await?;
    Ok(client.write_commit().await?)
}

/// Joins the client tasks of a timed workload and reports their operation latencies.
async fn latency_report(
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, BenchError>>>,
) -> Result<Report, BenchError> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("bench task")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = latencies.len() as u64;
    Ok(Report {
        latency_ms: percentiles(latencies),
        ..Report::measured(seconds, ops)
    })
}

async fn repl_lag(cluster: &mut LocalCluster, args: &BenchArgs) -> Result<Report, BenchError> {
    cluster.start_ss("ss1").await?;
    cluster.start_ss("ss1_backup").await?;
    cluster.wait_replicated("ss1").await?;
    let backup_files = cluster.storage("ss1_backup").join("files");
    let watch = Arc::new(BackupWatch::new(args.lag_watch)?);
    let watcher = {
        let watch = watch.clone();
        let folder = backup_files.clone();
        std::thread::spawn(move || watch.run(&folder))
    };
    let clients = args.clients.max(1);
    let interval = Duration::from_secs_f64(clients as f64 / args.rate.max(1) as f64);
    // Each client writes to a file of its own, a new one every this many
    // writes, so reading the backup's copy stays cheap.
    const WRITES_PER_FILE: u64 = 100;
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let nm = cluster.nm_addr().to_owned();
        let deadline = started + args.duration;
        let backup_files = backup_files.clone();
        let watch = watch.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&nm, &format!("bench{c}")).await?;
            let mut acks = Vec::new();
            let mut watching = Vec::new();
            let mut next = Instant::now();
            let mut n = 0u64;
            let mut file = String::new();
            while Instant::now() < deadline {
                if n.is_multiple_of(WRITES_PER_FILE) {
                    file = format!("lag-{c}-{}", n / WRITES_PER_FILE);
                    client.nm(NmRequest::Create { file: file.clone() }).await?;
                }
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let text = format!("W{c}n{n}.");
                let t = Instant::now();
                let sentence = (n % WRITES_PER_FILE) as i64;
                write_sentence(&mut client, &file, sentence, &text).await?;
                let acked = Instant::now();
                acks.push(acked - t);
                watching.push(watch.expect(backup_files.join(&file), text.into_bytes(), acked));
                n += 1;
            }
            let mut lags = Vec::new();
            for seen in watching {
                lags.push(seen.await.unwrap_or(None));
            }
            Ok::<_, BenchError>((acks, lags))
        }));
    }
    let mut latencies = Vec::new();
    let mut lags = Vec::new();
    let mut unseen = 0;
    for task in tasks {
        let (acks, seen) = task.await.expect("bench task")?;
        latencies.extend(acks);
        for lag in seen {
            match lag {
                Some(lag) => lags.push(lag),
                None => unseen += 1,
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    watch.stop();
    watcher.join().expect("backup watcher")?;
    if unseen > 0 {
        eprintln!(
            "repl-lag: {unseen} writes never reached the backup's file within {LAG_GIVE_UP:?}"
        );
    }
    let ops = latencies.len() as u64;
    Ok(Report {
        latency_ms: percentiles(latencies),
        replication_lag_ms: percentiles(lags),
        lag_unseen: Some(unseen),
        lag_watch: Some(args.lag_watch),
        ..Report::measured(seconds, ops)
    })
}

/// Runs one of the daemons' seeding tools (`ss-seed`, `nm-seed`), from the
/// folder the cluster's daemons come from: the bench prepares large
/// clusters through them and never writes a daemon's formats itself.
async fn seed(cluster: &LocalCluster, tool: &str, args: &[String]) -> Result<(), BenchError> {
    let path = cluster.bin_dir().join(tool);
    let output = tokio::process::Command::new(&path)
        .args(args)
        .output()
        .await
        .map_err(|e| BenchError::Store(format!("{}: {e}", path.display())))?;
    if !output.status.success() {
        return Err(BenchError::Store(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    eprintln!("{tool}: {}", String::from_utf8_lossy(&output.stdout).trim());
    Ok(())
}

/// `ss-seed`: `count` files f000000… of `size` bytes in a stopped server's
/// storage folder. `reuse`: a folder an earlier run made (`--reuse-dir`) is
/// left as it is; otherwise a folder that already holds a store is an error.
async fn seed_storage(
    cluster: &LocalCluster,
    server: &str,
    count: usize,
    size: u64,
    reuse: bool,
) -> Result<(), BenchError> {
    let storage = cluster.storage(server).display().to_string();
    let mut args = vec![
        "--storage".into(),
        storage,
        "--files".into(),
        count.to_string(),
        "--size".into(),
        size.to_string(),
    ];
    if reuse {
        args.push("--if-empty".into());
    }
    seed(cluster, "ss-seed", &args).await
}

async fn resync(cluster: &mut LocalCluster, count: usize, size: u64) -> Result<Report, BenchError> {
    seed_storage(cluster, "ss1", count, size, false).await?;
    cluster.start_ss("ss1").await?;
    // The clock starts once nm knows the primary's files (as rsync's source
    // is there before it starts): what is timed is the copy to the backup.
    cluster
        .wait_for("ss1's files to be known to nm", |s| {
            s.servers
                .iter()
                .any(|server| server.name == "ss1" && server.files == count as u64)
        })
        .await?;
    let started = Instant::now();
    cluster.start_ss("ss1_backup").await?;
    cluster.wait_replicated("ss1").await?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = count as u64 * size;
    Ok(Report {
        bytes,
        mb_per_sec: Some(bytes as f64 / 1e6 / seconds),
        ..Report::measured(seconds, count as u64)
    })
}

/// Clients on files of their own: `read_percent` of operations are READs,
/// the rest append a sentence with a WRITE.
async fn mixed(
    cluster: &mut LocalCluster,
    args: &BenchArgs,
    read_percent: u64,
) -> Result<Report, BenchError> {
    ready_pair(cluster).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let nm = cluster.nm_addr().to_owned();
        let deadline = started + args.duration;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&nm, &format!("bench{c}")).await?;
            let file = format!("mixed-{c}");
            client.nm(NmRequest::Create { file: file.clone() }).await?;
            write_sentence(&mut client, &file, 0, "Seed sentence.").await?;
            let (mut latencies, mut sentence, mut i) = (Vec::new(), 1i64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                if i % 100 < read_percent {
                    client.read(&file).await?;
                } else {
                    write_sentence(
                        &mut client,
                        &file,
                        sentence,
                        "Another sentence of the benchmark.",
                    )
                    .await?;
                    sentence += 1;
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    latency_report(started, tasks).await
}

/// `bytes` through one loopback TCP connection into a file, then fsync.
async fn raw_tcp(dir: &std::path::Path, bytes: u64) -> Result<Report, BenchError> {
    let target = dir.join("raw-tcp.bin");
    let seconds = tokio::task::spawn_blocking(move || raw_tcp_blocking(&target, bytes))
        .await
        .expect("raw-tcp task")
        .map_err(|e| BenchError::Store(e.to_string()))?;
    Ok(Report {
        bytes,
        mb_per_sec: Some(bytes as f64 / 1e6 / seconds),
        ..Report::measured(seconds, 1)
    })
}

/// The plainest copy there is: blocking sockets and file writes in 1 MiB
/// buffers, a sender thread and a receiver thread, one fsync at the end.
fn raw_tcp_blocking(target: &std::path::Path, bytes: u64) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    const BUFFER: usize = 1 << 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr)?;
        let chunk = vec![b'x'; BUFFER];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BUFFER as u64) as usize;
            stream.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok::<_, std::io::Error>(())
    });
    let (mut stream, _) = listener.accept()?;
    let mut file = std::fs::File::create(target)?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    sender.join().expect("sender thread")?;
    Ok(started.elapsed().as_secs_f64())
}

/// Fsynced create-write-rename of 4 KiB files (plus the directory fsync) in one process.
async fn disk_limit(dir: &std::path::Path, duration: Duration) -> Result<Report, BenchError> {
    let dir = dir.join("disk-limit");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let block = vec![b'y'; 4096];
        let started = Instant::now();
        let mut ops = 0u64;
        while started.elapsed() < duration {
            let temp = dir.join("tmp");
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(&block)?;
            f.sync_data()?;
            std::fs::rename(&temp, dir.join(format!("f{ops}")))?;
            std::fs::File::open(&dir)?.sync_all()?;
            ops += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok::<_, std::io::Error>(Report {
            bytes: ops * 4096,
            ..Report::measured(seconds, ops)
        })
    })
    .await
    .expect("disk-limit task")
    .map_err(|e| BenchError::Store(e.to_string()))
}

async fn ready_pair(cluster: &mut LocalCluster) -> Result<(), BenchError> {
    cluster.start_ss("ss1").await?;
    cluster.start_ss("ss1_backup").await?;
    cluster.wait_replicated("ss1").await?;
    Ok(())
}

async fn failover(
    cluster: &mut LocalCluster,
    rounds: usize,
    hang: bool,
) -> Result<Report, BenchError> {
    ready_pair(cluster).await?;
    let mut client = Client::connect(cluster.nm_addr(), "bench").await?;
    // A hung server is given up on quickly, as a latency-sensitive client would.
    client.set_reply_timeout(Duration::from_millis(100));
    client
        .nm(NmRequest::Create {
            file: "probe.txt".into(),
        })
        .await?;
    write_sentence(&mut client, "probe.txt", 0, "Still here.").await?;
    let started = Instant::now();
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        cluster.wait_replicated("ss1").await?;
        let killed = Instant::now();
        if hang {
            cluster.signal_ss("ss1", libc::SIGSTOP);
        } else {
            cluster.kill_ss("ss1");
        }
        loop {
            if client.read("probe.txt").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(killed.elapsed());
        // Back to the start: the primary returns and takes over again.
        if hang {
            cluster.signal_ss("ss1", libc::SIGCONT);
        } else {
            cluster.start_ss("ss1").await?;
        }
        cluster
            .wait_for("the hand-back", |s| {
                s.pairs
                    .iter()
                    .any(|p| p.primary == "ss1" && p.state == shared::proto::PairState::Active)
                    && s.servers.iter().any(|x| x.name == "ss1" && x.serving)
            })
            .await?;
    }
    let ops = times.len() as u64;
    Ok(Report {
        failover_ms: percentiles(times),
        ..Report::measured(started.elapsed().as_secs_f64(), ops)
    })
}

/// Gives the group's cluster `files` files before its servers start: in
/// both storage folders (`ss-seed`), and in etcd as nm keeps them
/// (`nm-seed`; the nm group then restarts, to load them as a takeover finds
/// them). Returns the time the pair took to start and become level on them.
async fn holding_files(cluster: &mut LocalCluster, files: usize) -> Result<f64, BenchError> {
    let prepared = Instant::now();
    let endpoint = cluster
        .etcd_endpoint()
        .ok_or_else(|| BenchError::Store("the cluster runs no etcd".into()))?
        .to_owned();
    let namespace = [
        "--etcd".into(),
        endpoint,
        "--files".into(),
        files.to_string(),
        "--server".into(),
        "ss1".into(),
    ];
    tokio::try_join!(
        seed_storage(cluster, "ss1", files, 32, false),
        seed_storage(cluster, "ss1_backup", files, 32, false),
        seed(cluster, "nm-seed", &namespace),
    )?;
    eprintln!(
        "nm-failover: {files} files written to both storage folders and etcd in {:.1} s",
        prepared.elapsed().as_secs_f64()
    );
    // The group reloads etcd (a leader keeps no watch on what it wrote).
    for i in 0..3 {
        cluster.kill(&format!("nm{i}"));
    }
    for i in 0..3 {
        cluster.restart(&format!("nm{i}"))?;
    }
    let started = Instant::now();
    ready_pair(cluster).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn nm_failover(
    cluster: &mut LocalCluster,
    rounds: usize,
    files: usize,
) -> Result<Report, BenchError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut phases = std::collections::BTreeMap::new();
    if files > 0 {
        let ready = holding_files(cluster, files).await?;
        phases.insert("pair ready on the files".to_owned(), ready);
    } else {
        ready_pair(cluster).await?;
    }
    let nm = cluster.nm_addr().to_owned();
    let mut client = Client::connect(&nm, "bench").await?;
    client
        .nm(NmRequest::Create {
            file: "probe.txt".into(),
        })
        .await?;
    write_sentence(&mut client, "probe.txt", 0, "Still here.").await?;
    // A client writing all along, whose acknowledgements are timed.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let (stop, acked, nm) = (stop.clone(), acked.clone(), nm.clone());
        let mut writer = Client::connect(&nm, "bench-writer").await?;
        writer
            .nm(NmRequest::Create {
                file: "w.txt".into(),
            })
            .await?;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("Write {i}.");
                if write_sentence(&mut writer, "w.txt", 0, &text).await.is_ok() {
                    acked.lock().unwrap().push(Instant::now());
                    i += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let started = Instant::now();
    let (mut reads, mut creates, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let status = cluster
            // A standby that has just restarted loads the namespace first
            // (seconds, with a million files): only a warm one takes over at once.
            .wait_for("three warm nm, one leading", |s| {
                s.nm.len() == 3
                    && s.nm.iter().all(|n| n.warm)
                    && s.nm.iter().any(|n| n.role == NmRole::Leader)
            })
            .await?;
        let leader = status
            .nm
            .iter()
            .find(|n| n.role == NmRole::Leader)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let name = (0..3)
            .map(|i| format!("nm{i}"))
            .find(|n| cluster.group_nm_addr(n) == Some(leader.as_str()))
            .ok_or_else(|| BenchError::Store(format!("no local nm at {leader}")))?;
        // The writer is going before the kill.
        let before = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < before + 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = Instant::now();
        cluster.kill(&name);
        while client.read("probe.txt").await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reads.push(killed.elapsed());
        // A fresh name each time: a CREATE cut short may have happened.
        for attempt in 0.. {
            let file = format!("after-{round}-{attempt}.txt");
            if client.nm(NmRequest::Create { file }).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        creates.push(killed.elapsed());
        // The longest gap between the writer's acknowledgements from the
        // last one before the kill until it writes again after the CREATE.
        let recovered = Instant::now();
        let gap = loop {
            let times = acked.lock().unwrap().clone();
            if times.last().is_some_and(|t| *t > recovered) {
                let from = times.iter().rposition(|t| *t <= killed).unwrap_or(0);
                break times[from..]
                    .windows(2)
                    .map(|w| w[1] - w[0])
                    .max()
                    .unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        gaps.push(gap);
        cluster.restart(&name)?;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let ops = reads.len() as u64;
    Ok(Report {
        failover_ms: percentiles(reads),
        create_failover_ms: percentiles(creates),
        write_gap_ms: percentiles(gaps),
        phases_s: phases,
        ..Report::measured(started.elapsed().as_secs_f64(), ops)
    })
}

async fn catch_up(cluster: &mut LocalCluster, files: usize) -> Result<Report, BenchError> {
    ready_pair(cluster).await?;
    let mut client = Client::connect(cluster.nm_addr(), "bench").await?;
    for i in 0..files {
        client
            .nm(NmRequest::Create {
                file: format!("c{i:05}"),
            })
            .await?;
    }
    cluster.wait_replicated("ss1").await?;
    cluster.kill_ss("ss1");
    cluster
        .wait_for("the promotion", |s| {
            s.servers
                .iter()
                .any(|x| x.name == "ss1_backup" && x.serving)
        })
        .await?;
    for i in 0..files {
        let file = format!("c{i:05}");
        write_sentence(&mut client, &file, 0, "Changed while the primary was away.").await?;
    }
    let started = Instant::now();
    cluster.start_ss("ss1").await?;
    cluster
        .wait_for("the catch-up and hand-back", |s| {
            s.pairs.iter().any(|p| {
                p.primary == "ss1"
                    && p.state == shared::proto::PairState::Active
                    && p.pending_jobs == 0
            }) && s.servers.iter().any(|x| x.name == "ss1" && x.serving)
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report::measured(seconds, files as u64))
}

/// Both servers start holding the same `total` files (written straight into
/// their storage folders); the backup is killed, `changed` files are written
/// on the primary, and the backup restarts: the time until the pair is
/// ACTIVE with nothing pending (start-up, registration, the difference and
/// the copies included).
async fn backup_return(
    cluster: &mut LocalCluster,
    total: usize,
    changed: usize,
) -> Result<Report, BenchError> {
    for server in ["ss1", "ss1_backup"] {
        seed_storage(cluster, server, total, 64, true).await?;
    }
    cluster.start_ss("ss1").await?;
    cluster.start_ss("ss1_backup").await?;
    cluster.wait_replicated("ss1").await?;
    cluster.kill_ss("ss1_backup");
    let mut client = Client::connect(cluster.nm_addr(), "bench").await?;
    for i in 0..changed.min(total) {
        let file = format!("f{:06}", i * (total / changed.max(1)).max(1));
        write_sentence(&mut client, &file, 0, "Changed while the backup was away.").await?;
    }
    let started = Instant::now();
    cluster.start_ss("ss1_backup").await?;
    let registered = started.elapsed().as_secs_f64();
    cluster.wait_replicated("ss1").await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        phases_s: [("registered".to_owned(), registered)].into(),
        ..Report::measured(seconds, changed as u64)
    })
}

/// VmRSS and VmHWM of a process, in MiB.
fn resident_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Fills nm's journal with `files` file records (100 owners, one server),
/// restarts nm on it, and measures its memory once it answers STATUS.
async fn nm_memory(cluster: &mut LocalCluster, files: usize) -> Result<Report, BenchError> {
    let mut probe = Client::connect(cluster.nm_addr(), "bench").await?;
    probe.nm(NmRequest::Status).await?;
    let empty = cluster.pid("nm").and_then(resident_mib);
    drop(probe);
    cluster.kill("nm");
    let data_dir = cluster.dir().join("nm-data").display().to_string();
    let namespace = [
        "--data-dir".into(),
        data_dir,
        "--files".into(),
        files.to_string(),
        "--server".into(),
        "ss1".into(),
        "--owners".into(),
        "100".into(),
    ];
    seed(cluster, "nm-seed", &namespace).await?;
    let started = Instant::now();
    cluster.restart("nm")?;
    let deadline = started + Duration::from_secs(300);
    loop {
        if let Ok(mut client) = Client::connect(cluster.nm_addr(), "bench").await {
            if client.nm(NmRequest::Status).await.is_ok() {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout("nm to load its journal".into()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let loaded = cluster.pid("nm").and_then(resident_mib);
    Ok(Report {
        nm_rss_mib: loaded.map(|(rss, _)| rss),
        nm_peak_rss_mib: loaded.map(|(_, peak)| peak),
        empty_nm_rss_mib: empty.map(|(rss, _)| rss),
        ..Report::measured(seconds, files as u64)
    })
}

/// The report as text.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "{:?}: {} clients, fsync {}, {} replication\n  {} ops in {:.2} s: {:.0} ops/s\n",
        report.workload.expect("set by run"),
        report.clients,
        report.fsync,
        report.replication,
        report.ops,
        report.seconds,
        report.ops_per_sec
    );
    if let Some(l) = &report.latency_ms {
        out += &format!(
            "  latency ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}\n",
            l.p50, l.p99, l.p999, l.max
        );
    }
    if let Some(l) = &report.replication_lag_ms {
        out += &format!(
            "  replication lag ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}\n",
            l.p50, l.p99, l.p999, l.max
        );
    }
    if let Some(l) = &report.failover_ms {
        out += &format!(
            "  failover ms (failure to first successful READ): min {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}\n",
            l.min, l.p50, l.p99, l.max
        );
    }
    if let Some(l) = &report.create_failover_ms {
        out += &format!(
            "  nm failover ms (kill -9 of the leader to first successful CREATE): min {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}\n",
            l.min, l.p50, l.p99, l.max
        );
    }
    if let Some(l) = &report.write_gap_ms {
        out += &format!(
            "  longest gap between acknowledged WRITEs, per round, ms: min {:.1}  p50 {:.1}  max {:.1}\n",
            l.min, l.p50, l.max
        );
    }
    if let Some(mbps) = report.mb_per_sec {
        out += &format!("  {} bytes: {:.1} MB/s\n", report.bytes, mbps);
    }
    for (phase, at) in &report.phases_s {
        out += &format!("  {phase} after {at:.2} s\n");
    }
    if let (Some(rss), Some(peak)) = (report.nm_rss_mib, report.nm_peak_rss_mib) {
        out += &format!(
            "  nm holding {} files: {rss:.1} MiB resident (peak {peak:.1} MiB while loading; {:.1} MiB empty), answering after {:.2} s\n",
            report.ops,
            report.empty_nm_rss_mib.unwrap_or(0.0),
            report.seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_within_its_precision() {
        let samples = (1..=1000).map(Duration::from_millis).collect();
        let p = percentiles(samples).unwrap();
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(p.min, 1.0), "min {}", p.min);
        assert!(near(p.p50, 500.0), "p50 {}", p.p50);
        assert!(near(p.p99, 990.0), "p99 {}", p.p99);
        assert!(near(p.p999, 999.0), "p999 {}", p.p999);
        assert!(near(p.max, 1000.0), "max {}", p.max);
        assert!(percentiles(Vec::new()).is_none());
    }
}
