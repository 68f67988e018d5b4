//! Real daemons as child processes in a temp dir, on free loopback ports,
//! killed when their cluster drops: the one launcher of the project.
//!
//! - [`local::LocalCluster`]: `console demo` (with `--ha`, an etcd and an nm
//!   group) and the benchmarks; binaries from the caller's own folder.
//! - [`TestCluster`] (this module): the integration tests' cluster of nm and
//!   storage servers; [`ha::HaCluster`]: etcd, an nm group and servers, each
//!   daemon on a loopback address of its own, with nftables partitions;
//!   [`proxy`]: a TCP proxy that cuts connections; [`chaos`]: the chaos
//!   test's workload.
//!
//! `TestCluster`:
//! The cluster waits for readiness by polling with a deadline (nm's ready
//! file, then nm's STATUS until each server is ALIVE), and kills every child
//! when dropped. The binaries are built once per test process by running
//! `cargo build`, so a test never runs against stale binaries.

pub mod chaos;
pub mod ha;
pub mod local;
pub mod packs;
pub mod process;
pub mod proxy;

use client::Client;
use serde_json::Value;
use shared::proto::{ClusterStatus, FileMeta, NmReply, NmRequest, PairState, ServerState};
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any readiness wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The folder holding the built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test-binary>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // The whole workspace: "-p console" is ambiguous beside a dependency of that name.
        build.args(["build", "--quiet", "--workspace", "--bins"]);
        // The same features as this test build, so nothing is rebuilt twice.
        if cfg!(feature = "ha") {
            build.arg("--all-features");
        }
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        dir
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The daemons' log filter: `info`, or `TEST_RUST_LOG` when debugging a test.
pub(crate) fn daemon_log_filter() -> String {
    std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// Whether a cluster keeps its logs when dropped: always after a failure,
/// and after every test with `TEST_KEEP_LOGS` set.
pub(crate) fn keep_logs() -> bool {
    std::thread::panicking() || std::env::var_os("TEST_KEEP_LOGS").is_some()
}

/// After a failure, the last lines of every daemon log in `dir` on stderr, so
/// that a failure seen only in CI can be read from its output.
pub(crate) fn print_log_tails(dir: &Path) {
    const LINES: usize = 12;
    const WIDTH: usize = 300;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("etcd"))
        })
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- last lines of {}", log.display());
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            let cut = line
                .char_indices()
                .nth(WIDTH)
                .map_or(line.len(), |(i, _)| i);
            eprintln!("  {}", &line[..cut]);
        }
    }
}

/// Whether STATUS lists server `name` as ALIVE.
pub fn is_alive(status: &ClusterStatus, name: &str) -> bool {
    status
        .servers
        .iter()
        .any(|s| s.name == name && s.state == ServerState::Alive)
}

/// Polls `check` until it returns `Some`, or panics after `DEADLINE`.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settings for the daemons a cluster starts.
#[derive(Clone)]
pub struct Options {
    pub heartbeat_interval: &'static str,
    pub stream_delay: &'static str,
    pub fsync: bool,
    /// Extra flags for nm.
    pub nm_args: Vec<&'static str>,
    /// Extra flags for every storage server.
    pub ss_args: Vec<&'static str>,
    /// Give the daemons no `--cluster-key-file`: they use the per-user key,
    /// with `XDG_CONFIG_HOME` pointing into the cluster's folder.
    pub per_user_key: bool,
}

impl Options {
    /// Every change goes through nm's replication jobs (`ss
    /// --replication-stream false`). For tests that need the asynchronous
    /// window on demand ([`TestCluster::primary_dies_with_unreplicated_changes`]):
    /// a hung backup still has the stream's frames in its socket buffer and
    /// may apply them when it resumes, and on one address the stream cannot
    /// be partitioned from the pair (the HA harness's partitions do that).
    pub fn jobs_only(mut self) -> Self {
        self.ss_args.extend(["--replication-stream", "false"]);
        self
    }

    fn streams(&self) -> bool {
        !self
            .ss_args
            .windows(2)
            .any(|w| w == ["--replication-stream", "false"])
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_interval: "100ms",
            stream_delay: "5ms",
            fsync: false,
            nm_args: Vec::new(),
            ss_args: Vec::new(),
            per_user_key: false,
        }
    }
}

pub struct TestCluster {
    dir: tempfile::TempDir,
    options: Options,
    nm: Option<Child>,
    nm_addr: String,
    servers: HashMap<String, Child>,
    /// nm addresses some storage servers dial instead of nm's (a fault proxy).
    routes: HashMap<String, String>,
}

impl TestCluster {
    /// nm plus one storage server per name, all ready.
    pub async fn start(servers: &[&str]) -> TestCluster {
        Self::start_with(servers, Options::default()).await
    }

    pub async fn start_with(servers: &[&str], options: Options) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        if !options.per_user_key {
            shared::auth::ClusterKey::generate(&dir.path().join("cluster.key"))
                .expect("cluster key");
        }
        let mut cluster = TestCluster {
            dir,
            options,
            nm: None,
            nm_addr: String::new(),
            servers: HashMap::new(),
            routes: HashMap::new(),
        };
        cluster.start_nm().await;
        for name in servers {
            cluster.start_ss(name).await;
        }
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nm_addr(&self) -> &str {
        &self.nm_addr
    }

    fn log_file(&self, name: &str) -> Stdio {
        crate::process::log_file(self.dir(), name).expect("log file")
    }

    /// Starts nm (again), on its previous port if it had one.
    pub async fn start_nm(&mut self) {
        assert!(self.nm.is_none(), "nm is already running");
        let ready = self.dir().join("nm.addr");
        let _ = std::fs::remove_file(&ready);
        let listen = if self.nm_addr.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.nm_addr.clone()
        };
        let child = Command::new(bin("nm"))
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(self.dir().join("nm-data"))
            .arg("--ready-file")
            .arg(&ready)
            .args(self.key_args())
            .env("XDG_CONFIG_HOME", self.config_home())
            .arg("--fsync")
            .arg(self.options.fsync.to_string())
            .arg("--quiet")
            .args(&self.options.nm_args)
            .env("RUST_LOG", daemon_log_filter())
            .stdout(Stdio::null())
            .stderr(self.log_file("nm"))
            .spawn()
            .expect("starting nm");
        self.nm = Some(child);
        self.nm_addr = eventually("nm's ready file", || {
            let ready = ready.clone();
            async move {
                std::fs::read_to_string(ready)
                    .ok()
                    .filter(|a| !a.is_empty())
            }
        })
        .await;
    }

    /// The cluster key every daemon of this cluster holds.
    pub fn key_file(&self) -> PathBuf {
        match self.options.per_user_key {
            true => self.config_home().join("docspp/cluster.key"),
            false => self.dir().join("cluster.key"),
        }
    }

    /// The daemons' `XDG_CONFIG_HOME` (where the per-user key lives).
    pub fn config_home(&self) -> PathBuf {
        self.dir().join("config")
    }

    fn key_args(&self) -> Vec<std::ffi::OsString> {
        match self.options.per_user_key {
            true => Vec::new(),
            false => vec!["--cluster-key-file".into(), self.key_file().into()],
        }
    }

    pub fn storage(&self, name: &str) -> PathBuf {
        self.dir().join(format!("storage-{name}"))
    }

    /// The process id of a running storage server.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.servers.get(name).map(Child::id)
    }

    /// Starts (or restarts) a storage server and waits until nm has this
    /// new process ALIVE. Right after a kill, nm may not yet have processed
    /// the old process's closed connection and still list it ALIVE, so the
    /// new process is told apart by its address (each start picks a free
    /// client port), or, should the port come round again, by nm having
    /// listed the server as not ALIVE since. Waiting for ALIVE alone let a
    /// caller look at the storage folder before the new process had even
    /// opened it (the crash test then found the killed process's temp files
    /// "surviving" the restart).
    pub async fn start_ss(&mut self, name: &str) {
        let previous = self.address_in_status(name).await;
        self.spawn_ss(name);
        let mut seen_down = previous.is_none();
        eventually(&format!("the new {name} to be ALIVE"), async || {
            let status = self.try_status().await?;
            let server = status.servers.iter().find(|s| s.name == name)?;
            if server.state != ServerState::Alive {
                seen_down = true;
                return None;
            }
            (seen_down || Some(&server.address) != previous.as_ref()).then_some(())
        })
        .await;
    }

    async fn address_in_status(&self, name: &str) -> Option<String> {
        self.try_status()
            .await?
            .servers
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.address)
    }

    /// Starts a storage server without waiting for it.
    pub fn spawn_ss(&mut self, name: &str) {
        self.spawn_ss_with(name, &[]);
    }

    /// Starts a storage server with extra flags, without waiting for it.
    pub fn spawn_ss_with(&mut self, name: &str, extra: &[&str]) {
        assert!(
            !self.servers.contains_key(name),
            "{name} is already running"
        );
        let nm = self.routes.get(name).unwrap_or(&self.nm_addr).clone();
        let child = Command::new(bin("ss"))
            .args(["--nm", &nm, "--username", name, "--client-port", "0"])
            .arg("--storage")
            .arg(self.storage(name))
            .args(self.key_args())
            .env("XDG_CONFIG_HOME", self.config_home())
            .args(["--heartbeat-interval", self.options.heartbeat_interval])
            .args(["--stream-delay", self.options.stream_delay])
            .args(["--fsync", &self.options.fsync.to_string()])
            .args(&self.options.ss_args)
            .args(extra)
            .env("RUST_LOG", daemon_log_filter())
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .expect("starting ss");
        self.servers.insert(name.to_owned(), child);
    }

    pub async fn wait_alive(&self, name: &str) {
        eventually(&format!("{name} to be ALIVE"), || async {
            is_alive(&self.try_status().await?, name).then_some(())
        })
        .await;
    }

    /// kill -9 of a storage server.
    pub fn kill_ss(&mut self, name: &str) {
        let mut child = self.servers.remove(name).expect("no such server");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// SIGTERM to a storage server; returns how it exited (polling, with a deadline).
    pub async fn stop_ss(&mut self, name: &str) -> std::process::ExitStatus {
        self.signal_ss(name, libc::SIGTERM);
        let mut child = self.servers.remove(name).expect("no such server");
        eventually(&format!("{name} to exit after SIGTERM"), async || {
            child.try_wait().expect("wait")
        })
        .await
    }

    /// kill -9 of nm.
    pub fn kill_nm(&mut self) {
        let mut child = self.nm.take().expect("nm is not running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Makes a storage server (when next started) reach nm through `addr`.
    pub fn route_ss_via(&mut self, name: &str, addr: &str) {
        self.routes.insert(name.to_owned(), addr.to_owned());
    }

    /// Sends a signal (SIGSTOP, SIGCONT, …) to a storage server.
    pub fn signal_ss(&self, name: &str, signal: i32) {
        let child = self.servers.get(name).expect("no such server");
        process::signal(child, signal).unwrap_or_else(|e| panic!("kill({name}, {signal}): {e}"));
    }

    /// (epoch → servers among `servers` that accepted a change in it), read
    /// from the servers' logs: more than one server in an epoch means two
    /// writers at once.
    pub fn writers_by_epoch(&self, servers: &[&str]) -> BTreeMap<u64, BTreeSet<String>> {
        writers_by_epoch(self.dir(), servers)
    }

    /// The async window, on demand: with `backup` hung, `script` is run on
    /// `primary` (acknowledged, never replicated), `primary` is killed and
    /// `backup` resumed, so nm promotes a backup that lacks those changes.
    pub fn primary_dies_with_unreplicated_changes(
        &mut self,
        primary: &str,
        backup: &str,
        script: &str,
    ) {
        assert!(
            !self.options.streams(),
            "the async window on demand needs Options::jobs_only(): the stream would deliver the changes when the backup resumes"
        );
        self.signal_ss(backup, libc::SIGSTOP);
        self.console("alice", script).all_ok();
        self.kill_ss(primary);
        self.signal_ss(backup, libc::SIGCONT);
    }

    /// Collects WATCH events in the background, from now on.
    pub fn watch_events(&self) -> std::sync::Arc<std::sync::Mutex<Vec<shared::proto::Event>>> {
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let nm = self.nm_addr().to_owned();
        tokio::spawn(async move {
            let client = Client::connect(&nm, "watcher").await.unwrap();
            let _ = client
                .watch(None, None, 0, |event| sink.lock().unwrap().push(event))
                .await;
        });
        events
    }

    /// Sends a signal (SIGSTOP, SIGCONT, …) to nm.
    pub fn signal_nm(&self, signal: i32) {
        let child = self.nm.as_ref().expect("nm is not running");
        process::signal(child, signal).unwrap_or_else(|e| panic!("kill(nm, {signal}): {e}"));
    }

    /// Waits until every pair is ACTIVE with nothing left to replicate:
    /// no job queued, and every change sent on a replication stream
    /// acknowledged, as the serving server reported after this wait began.
    pub async fn wait_replicated(&self) -> ClusterStatus {
        let since = shared::now_ms();
        eventually(
            "every pair ACTIVE, the queue drained and the streams acknowledged",
            async || {
                let status = self.try_status().await?;
                let settled = status.queue_depth == 0
                    && status.pairs.iter().all(|p| {
                        let streamed = p
                            .stream
                            .as_ref()
                            .is_none_or(|s| !s.open || (s.unacknowledged == 0 && s.at_ms >= since));
                        p.pending_jobs == 0
                            && streamed
                            && (p.backup.is_none() || p.state == PairState::Active)
                    });
                settled.then_some(status)
            },
        )
        .await
    }

    /// Waits until `primary`'s pair is in `state`. PRIMARY_FAILED counts
    /// once the backup's promotion is recorded and it serves: the state
    /// shows as soon as the primary is lost, and while the promotion is
    /// handed over no server serves (and STATUS gives no reason either), so
    /// the serving flag is what tells that a test can go on with its next
    /// command at once.
    pub async fn wait_pair(&self, primary: &str, state: PairState) {
        eventually(&format!("pair {primary} to be {state:?}"), async || {
            let status = self.try_status().await?;
            let serves = |name: &str| {
                status
                    .servers
                    .iter()
                    .any(|s| s.name == name && s.serving && s.state == ServerState::Alive)
            };
            status
                .pairs
                .iter()
                .any(|p| {
                    p.primary == primary
                        && p.state == state
                        && (state != PairState::PrimaryFailed
                            || (p.reason.is_none() && p.backup.as_deref().is_some_and(serves)))
                })
                .then_some(())
        })
        .await
    }

    /// Asserts that two servers hold the same files, contents, metadata
    /// (owner, access list, version, counts) and checkpoints, and no temp files.
    pub fn assert_same_files(&self, a: &str, b: &str) {
        if let Some(difference) = self.difference(a, b) {
            panic!("{difference}");
        }
    }

    /// Waits until two servers hold the same files (see
    /// [`TestCluster::assert_same_files`]). An empty job queue does not mean
    /// the backup has everything: the last changes may still be on the
    /// replication stream (nm hears of their acknowledgement in batches), or
    /// a client cut off in the middle of a commit may notify nm afterwards.
    /// (Not [`eventually`]: on a timeout the panic names the difference.)
    pub async fn wait_same_files(&self, a: &str, b: &str) {
        let converged = tokio::time::timeout(DEADLINE, async {
            while self.difference(a, b).is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if converged.is_err() {
            self.assert_same_files(a, b);
        }
    }

    /// The first difference between two servers' files, if any.
    pub fn difference(&self, a: &str, b: &str) -> Option<String> {
        difference(a, &self.storage(a), b, &self.storage(b))
    }

    pub fn ss_running(&self, name: &str) -> bool {
        self.servers.contains_key(name)
    }

    /// A library client connected as `user`.
    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.nm_addr, user)
            .await
            .expect("connecting to nm")
    }

    /// STATUS, or `None` if nm does not answer (for polling).
    pub async fn try_status(&self) -> Option<ClusterStatus> {
        let mut client = Client::connect(&self.nm_addr, "harness").await.ok()?;
        match client.nm(NmRequest::Status).await.ok()? {
            NmReply::Status { status } => Some(status),
            _ => None,
        }
    }

    pub async fn status(&self) -> ClusterStatus {
        self.try_status().await.expect("STATUS")
    }

    /// The client address of a storage server, from STATUS.
    pub async fn ss_addr(&self, name: &str) -> String {
        self.status()
            .await
            .servers
            .into_iter()
            .find(|s| s.name == name)
            .expect("server in STATUS")
            .address
    }

    /// Runs `console --batch --json` with `script` on stdin.
    pub fn console(&self, user: &str, script: &str) -> Batch {
        self.console_with(user, script, &["--json"])
    }

    pub fn console_with(&self, user: &str, script: &str, flags: &[&str]) -> Batch {
        run_script(self.console_command(user, flags), script)
    }

    /// A `console --batch` command for tests that drive it themselves.
    pub fn console_command(&self, user: &str, flags: &[&str]) -> Command {
        let mut command = Command::new(bin("console"));
        command
            .args(["--nm", &self.nm_addr, "--user", user, "--batch"])
            .args(flags);
        command
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, mut child) in self.servers.drain() {
            crate::process::kill(&mut child);
        }
        if let Some(mut nm) = self.nm.take() {
            crate::process::kill(&mut nm);
        }
        if std::thread::panicking() {
            print_log_tails(self.dir.path());
        }
        if keep_logs() {
            // Keep the logs of a failed test where a human can read them.
            let kept = self.dir.path().to_owned();
            eprintln!("TestCluster logs kept in {}", kept.display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

/// (epoch → servers among `servers` that accepted a change in it), read
/// from the servers' logs (`<dir>/<server>.log`).
pub fn writers_by_epoch(dir: &Path, servers: &[&str]) -> BTreeMap<u64, BTreeSet<String>> {
    const CHANGES: [&str; 9] = [
        "ETIRW",
        "CREATE",
        "DELETE",
        "UNDO",
        "SET_ACL",
        "MOVE",
        "CHECKPOINT",
        "REVERT",
        "WRITE",
    ];
    let mut epochs: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for server in servers {
        let log = std::fs::read_to_string(dir.join(format!("{server}.log"))).unwrap_or_default();
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["event"] != "ss_request" || v["outcome"] != "ok" {
                continue;
            }
            let Some(op) = v["operation"].as_str() else {
                continue;
            };
            if CHANGES.contains(&op) {
                if let Some(epoch) = v["epoch"].as_u64() {
                    epochs
                        .entry(epoch)
                        .or_default()
                        .insert((*server).to_owned());
                }
            }
        }
    }
    epochs
}

/// A file's current metadata in a storage folder, read here from the
/// storage server's on-disk format rather than through its code (the
/// harness checks the servers, so it shares none of their code): the
/// content's extended attribute `user.meta`, unless `meta/<path>` has a
/// stamp (epoch, version) at least as high. `Err` says what is wrong.
pub fn current_meta(storage: &Path, file: &str) -> Result<FileMeta, String> {
    use std::os::unix::ffi::OsStrExt;
    let content = storage.join("files").join(file);
    if !content.exists() {
        if let Some((meta, _)) = packs::packed_files(storage).remove(file) {
            return Ok(meta);
        }
    }
    let path = std::ffi::CString::new(content.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: both strings are NUL-terminated and `buf` has `buf.len()`
    // writable bytes; all outlive the call.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.meta".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let attr = match n {
        n if n >= 0 => Some(
            shared::connection::decode::<FileMeta>(&buf[..n as usize])
                .map_err(|e| format!("{file}: its attribute does not decode: {e}"))?,
        ),
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENODATA) => None,
            _ => return Err(format!("{file}: {}", std::io::Error::last_os_error())),
        },
    };
    let apart = match std::fs::read(storage.join("meta").join(file)) {
        Ok(bytes) => Some(
            shared::connection::decode::<FileMeta>(&bytes)
                .map_err(|e| format!("meta/{file} does not decode: {e}"))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("meta/{file}: {e}")),
    };
    let stamp = |m: &FileMeta| (m.stats.epoch, m.stats.version);
    match (attr, apart) {
        (Some(attr), Some(apart)) if stamp(&apart) < stamp(&attr) => Ok(attr),
        (_, Some(apart)) => Ok(apart),
        (Some(attr), None) => Ok(attr),
        (None, None) => Err(format!("{file} has no metadata")),
    }
}

/// [`current_meta`], which must be there.
pub fn stored_meta(storage: &Path, file: &str) -> FileMeta {
    current_meta(storage, file).unwrap_or_else(|e| panic!("in {}: {e}", storage.display()))
}

/// The first difference between two servers' storage folders, if any.
pub fn difference(a: &str, ra: &Path, b: &str, rb: &Path) -> Option<String> {
    for area in ["files", "checkpoints"] {
        let (fa, fb) = match area {
            "files" => (stored_files(ra), stored_files(rb)),
            _ => (tree(&ra.join(area)), tree(&rb.join(area))),
        };
        if fa.keys().ne(fb.keys()) {
            return Some(format!(
                "{area}/ of {a} and {b} differ: {:?} vs {:?}",
                fa.keys().collect::<Vec<_>>(),
                fb.keys().collect::<Vec<_>>()
            ));
        }
        for (name, content) in &fa {
            if content != &fb[name] {
                return Some(format!("{area}/{name} differs between {a} and {b}"));
            }
        }
    }
    let packed = (packs::packed_files(ra), packs::packed_files(rb));
    for name in stored_files(ra).keys() {
        let current_meta = |storage: &Path, name: &str| {
            let held = if storage == ra { &packed.0 } else { &packed.1 };
            match held.get(name) {
                Some((meta, _)) => Ok(meta.clone()),
                None => current_meta(storage, name),
            }
        };
        // Read while the servers may still be changing it: a file without
        // readable metadata on either side is a difference.
        let (x, y) = match (current_meta(ra, name), current_meta(rb, name)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) => return Some(format!("{a}: {e}")),
            (_, Err(e)) => return Some(format!("{b}: {e}")),
        };
        let summary = |m: &FileMeta| {
            (
                m.owner.clone(),
                m.acl.clone(),
                m.stats.version,
                m.stats.size,
                m.stats.words,
                m.checkpoints.clone(),
            )
        };
        if summary(&x) != summary(&y) {
            return Some(format!(
                "metadata of {name} differs between {a} and {b}: {:?} vs {:?}",
                summary(&x),
                summary(&y)
            ));
        }
    }
    None
}

/// Every file a storage folder holds, by name, with its content: files of
/// their own (`files/`) and packed ones (see [`packs`]).
pub fn stored_files(storage: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = tree(&storage.join("files"));
    for (name, (_, content)) in packs::packed_files(storage) {
        files.insert(name, content);
    }
    files
}

/// One file's content as a storage folder holds it (see [`stored_files`]).
pub fn stored_content(storage: &Path, file: &str) -> Option<String> {
    match std::fs::read(storage.join("files").join(file)) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => packs::packed_files(storage)
            .remove(file)
            .map(|(_, content)| String::from_utf8_lossy(&content).into_owned()),
    }
}

/// Every regular file under `root`, by relative path, with its bytes.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.insert(name, bytes);
            }
        }
    }
    found
}

/// Runs a `console --batch` command with `script` on its standard input.
pub fn run_script(mut command: Command, script: &str) -> Batch {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting console");
    // Written beside the reading: a script and its output both larger
    // than a pipe would otherwise wait on each other for ever.
    let mut stdin = child.stdin.take().expect("stdin");
    let script = script.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&script));
    let output = child.wait_with_output().expect("console output");
    match writer.join().expect("the script writer") {
        Ok(()) => {}
        // The console may stop before reading all of its script (it could
        // not reach nm, say): what it did is in its output and exit code.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing the script: {e}"),
    }
    Batch::from(output)
}

/// What a `console --batch --json` run printed.
pub struct Batch {
    pub code: Option<i32>,
    pub outcomes: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Batch {
    fn from(output: Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let outcomes = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Batch {
            code: output.status.code(),
            outcomes,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Batch {
    /// The outcome of the `i`th command.
    pub fn get(&self, i: usize) -> &Value {
        self.outcomes
            .get(i)
            .unwrap_or_else(|| panic!("no outcome {i} in:\n{}\n{}", self.stdout, self.stderr))
    }

    /// Asserts that every command succeeded; returns the outcomes.
    pub fn all_ok(&self) -> &[Value] {
        for o in &self.outcomes {
            assert_eq!(o["ok"], true, "command failed: {o}");
        }
        assert_eq!(self.code, Some(0), "exit code; stderr: {}", self.stderr);
        &self.outcomes
    }

    /// The error code of the `i`th command.
    pub fn code_of(&self, i: usize) -> &str {
        self.get(i)["code"].as_str().unwrap_or("null")
    }

    /// Every command's error code, "ok" for a success.
    pub fn codes(&self) -> Vec<String> {
        (0..self.outcomes.len())
            .map(|i| match self.code_of(i) {
                "null" => "ok".to_owned(),
                code => code.to_owned(),
            })
            .collect()
    }
}
