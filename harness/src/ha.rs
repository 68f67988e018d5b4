//! `HaCluster`: an nm group on a real etcd, every daemon on a loopback
//! address of its own (127.a.b.host), and partitions made by dropping
//! packets between two addresses with nftables.
//!
//! Addresses: each cluster takes a /24 of its own inside 127.0.0.0/8
//! (127.<100 + pid % 100>.<cluster>.x), so clusters of parallel tests never
//! share an address and a rule between two addresses touches one cluster
//! only. Hosts: nm i at .(2 + i), etcd member i at .(10 + i), storage servers
//! from .20 on, clients from .50 on.
//!
//! Partitions: one nftables table per cluster (`inet docspp_<pid>_<n>`) with
//! an output chain; a rule drops what one address sends to another, so a
//! partition is silent (no reset), in one direction or both, and healing
//! flushes the chain. The table is deleted when the cluster is dropped.

use crate::{bin, daemon_log_filter, eventually, Batch, Options};
use client::Client;
use shared::proto::{ClusterStatus, NmReply, NmRequest, NmRole, PairState};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

static NEXT_CLUSTER: AtomicU8 = AtomicU8::new(1);

/// The port every nm of a group listens on (each has an address of its own).
const NM_PORT: u16 = 5000;

fn run_nft(args: &[&str]) -> Result<(), String> {
    let output = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("nft could not run ({e}); scripts/test.sh installs nftables"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Packet-dropping rules between loopback addresses.
pub struct Partitions {
    table: String,
}

impl Partitions {
    fn new(table: String) -> Partitions {
        run_nft(&["add", "table", "inet", &table]).expect("nftables table");
        run_nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ])
        .expect("nftables chain");
        Partitions { table }
    }

    /// Drops every packet `from` sends to `to` (one direction only).
    pub fn drop_one_way(&self, from: Ipv4Addr, to: Ipv4Addr) {
        let (from, to) = (from.to_string(), to.to_string());
        run_nft(&[
            "add",
            "rule",
            "inet",
            &self.table,
            "out",
            "ip",
            "saddr",
            &from,
            "ip",
            "daddr",
            &to,
            "drop",
        ])
        .expect("nftables rule");
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) {
        self.drop_one_way(a, b);
        self.drop_one_way(b, a);
    }

    /// Removes every rule.
    pub fn heal(&self) {
        run_nft(&["flush", "chain", "inet", &self.table, "out"]).expect("nftables flush");
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = run_nft(&["delete", "table", "inet", &self.table]);
    }
}

struct Daemon {
    ip: Ipv4Addr,
    child: Option<Child>,
}

impl Daemon {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::kill(&mut child);
        }
    }

    fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("not running");
        crate::process::signal(child, signal).expect("kill(2)");
    }
}

/// Settings of an HA cluster.
#[derive(Clone)]
pub struct HaOptions {
    pub nm_count: usize,
    pub etcd_count: usize,
    /// nm's `--leader-lease`.
    pub leader_lease: &'static str,
    /// nm's `--heartbeat-timeout`.
    pub heartbeat_timeout: &'static str,
    pub daemons: Options,
}

impl Default for HaOptions {
    fn default() -> Self {
        HaOptions {
            nm_count: 3,
            etcd_count: 1,
            leader_lease: "1s",
            heartbeat_timeout: "1s",
            daemons: Options::default(),
        }
    }
}

pub struct HaCluster {
    dir: tempfile::TempDir,
    options: HaOptions,
    /// The first three bytes of every address of this cluster.
    net: [u8; 3],
    etcd: Vec<Daemon>,
    nms: Vec<Daemon>,
    servers: HashMap<String, Daemon>,
    next_server_host: u8,
    pub partitions: Partitions,
}

impl HaCluster {
    /// etcd, the nm group and one storage server per name, all ready.
    pub async fn start(servers: &[&str], options: HaOptions) -> HaCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        shared::auth::ClusterKey::generate(&dir.path().join("cluster.key")).expect("cluster key");
        let pid = std::process::id();
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        let net = [127, 100 + (pid % 100) as u8, n];
        let partitions = Partitions::new(format!("docspp_{pid}_{n}"));
        let mut cluster = HaCluster {
            dir,
            net,
            etcd: Vec::new(),
            nms: Vec::new(),
            servers: HashMap::new(),
            next_server_host: 20,
            partitions,
            options,
        };
        // Every member first: each is started with the whole initial cluster.
        for i in 0..cluster.options.etcd_count {
            let ip = cluster.host(10 + i as u8);
            cluster.etcd.push(Daemon { ip, child: None });
        }
        for i in 0..cluster.options.etcd_count {
            cluster.start_etcd(i);
        }
        for i in 0..cluster.options.nm_count {
            let ip = cluster.host(2 + i as u8);
            cluster.nms.push(Daemon { ip, child: None });
            cluster.start_nm(i);
        }
        if cluster.options.nm_count > 0 {
            cluster.wait_group().await;
        }
        for name in servers {
            cluster.start_ss(name).await;
        }
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address of host `n` of this cluster.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], n)
    }

    /// The address clients of this cluster dial from (unless told otherwise).
    pub fn client_ip(&self) -> Ipv4Addr {
        self.host(50)
    }

    /// How many nm processes the cluster runs (started or not): STATUS lists
    /// only those whose membership is on record in etcd.
    pub fn nm_count(&self) -> usize {
        self.nms.len()
    }

    pub fn nm_ip(&self, i: usize) -> Ipv4Addr {
        self.nms[i].ip
    }

    pub fn nm_addr(&self, i: usize) -> String {
        format!("{}:{NM_PORT}", self.nms[i].ip)
    }

    /// `--nm` for storage servers and clients: every nm of the group.
    pub fn nm_list(&self) -> String {
        (0..self.nms.len())
            .map(|i| self.nm_addr(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn etcd_ip(&self, i: usize) -> Ipv4Addr {
        self.etcd[i].ip
    }

    pub fn ss_ip(&self, name: &str) -> Ipv4Addr {
        self.servers[name].ip
    }

    fn etcd_endpoints(&self) -> String {
        self.etcd
            .iter()
            .map(|e| format!("http://{}:2379", e.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_file(&self, name: &str) -> Stdio {
        crate::process::log_file(self.dir(), name).expect("log file")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir().join("cluster.key")
    }

    /// Starts (or restarts, on its data) etcd member `i`.
    pub fn start_etcd(&mut self, i: usize) {
        let ip = self.etcd[i].ip;
        let initial: Vec<String> = self
            .etcd
            .iter()
            .enumerate()
            .map(|(j, e)| format!("e{j}=http://{}:2380", e.ip))
            .collect();
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir().join(format!("etcd{i}")))
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-token",
                &format!(
                    "docspp-{}",
                    self.net[1..]
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join("-")
                ),
            ])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(crate::process::ETCD_QUIET_LOG)
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("etcd{i}")))
            .spawn()
            .expect("starting etcd (scripts/test.sh installs etcd-server)");
        self.etcd[i].child = Some(child);
    }

    /// kill -9 of etcd member `i`.
    pub fn kill_etcd(&mut self, i: usize) {
        self.etcd[i].stop();
    }

    pub fn signal_etcd(&self, i: usize, signal: i32) {
        self.etcd[i].signal(signal);
    }

    /// Starts (or restarts) nm `i` of the group; it is ready once it listens.
    pub fn start_nm(&mut self, i: usize) {
        assert!(self.nms[i].child.is_none(), "nm {i} is already running");
        let child = Command::new(bin("nm"))
            .args(["--listen", &self.nm_addr(i)])
            .args(["--etcd", &self.etcd_endpoints()])
            .args(["--leader-lease", self.options.leader_lease])
            .args(["--heartbeat-timeout", self.options.heartbeat_timeout])
            .args(["--metrics-addr", &self.nm_metrics_addr(i)])
            .arg("--data-dir")
            .arg(self.dir().join(format!("nm{i}-data")))
            .arg("--cluster-key-file")
            .arg(self.key_file())
            .arg("--fsync")
            .arg(self.options.daemons.fsync.to_string())
            .arg("--quiet")
            .args(&self.options.daemons.nm_args)
            .env("RUST_LOG", daemon_log_filter())
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("nm{i}")))
            .spawn()
            .expect("starting nm");
        self.nms[i].child = Some(child);
    }

    /// Where nm `i` serves its Prometheus metrics.
    pub fn nm_metrics_addr(&self, i: usize) -> String {
        format!("{}:9100", self.nms[i].ip)
    }

    /// kill -9 of nm `i`.
    pub fn kill_nm(&mut self, i: usize) {
        self.nms[i].stop();
    }

    /// Sends a signal (SIGSTOP, SIGCONT, …) to nm `i`.
    pub fn signal_nm(&self, i: usize, signal: i32) {
        self.nms[i].signal(signal);
    }

    pub fn nm_running(&self, i: usize) -> bool {
        self.nms[i].child.is_some()
    }

    /// The index of the nm at `address`.
    pub fn nm_index(&self, address: &str) -> usize {
        (0..self.nms.len())
            .find(|&i| self.nm_addr(i) == address)
            .unwrap_or_else(|| panic!("{address} is no nm of this cluster"))
    }

    pub fn storage(&self, name: &str) -> PathBuf {
        self.dir().join(format!("storage-{name}"))
    }

    /// Starts (or restarts) a storage server on its address and waits until it is ALIVE.
    pub async fn start_ss(&mut self, name: &str) {
        self.spawn_ss(name);
        eventually(&format!("{name} to be ALIVE"), || async {
            crate::is_alive(&self.try_status().await?, name).then_some(())
        })
        .await;
    }

    /// Starts (or restarts) a storage server on its address, without waiting.
    pub fn spawn_ss(&mut self, name: &str) {
        let ip = match self.servers.get(name) {
            Some(server) => {
                assert!(server.child.is_none(), "{name} is already running");
                server.ip
            }
            None => {
                let ip = self.host(self.next_server_host);
                self.next_server_host += 1;
                ip
            }
        };
        let child = Command::new(bin("ss"))
            .args([
                "--nm",
                &self.nm_list(),
                "--username",
                name,
                "--client-port",
                "0",
            ])
            .args(["--bind", &ip.to_string(), "--host", &ip.to_string()])
            .arg("--storage")
            .arg(self.storage(name))
            .arg("--cluster-key-file")
            .arg(self.key_file())
            .args([
                "--heartbeat-interval",
                self.options.daemons.heartbeat_interval,
            ])
            .args(["--stream-delay", self.options.daemons.stream_delay])
            .args(["--fsync", &self.options.daemons.fsync.to_string()])
            .args(&self.options.daemons.ss_args)
            .env("RUST_LOG", daemon_log_filter())
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .expect("starting ss");
        self.servers.insert(
            name.to_owned(),
            Daemon {
                ip,
                child: Some(child),
            },
        );
    }

    pub fn ss_running(&self, name: &str) -> bool {
        self.servers.get(name).is_some_and(|s| s.child.is_some())
    }

    /// Sends a signal (SIGSTOP, SIGCONT, …) to a storage server.
    pub fn signal_ss(&self, name: &str, signal: i32) {
        self.servers[name].signal(signal);
    }

    /// (epoch → servers that accepted a change in it), from their logs.
    pub fn writers_by_epoch(
        &self,
        servers: &[&str],
    ) -> std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> {
        crate::writers_by_epoch(self.dir(), servers)
    }

    pub fn kill_ss(&mut self, name: &str) {
        self.servers.get_mut(name).expect("no such server").stop();
    }

    /// STATUS through the group, or `None` if no leader answers.
    pub async fn try_status(&self) -> Option<ClusterStatus> {
        let list = self.nm_list();
        let connect = Client::connect(&list, "harness");
        let mut client = tokio::time::timeout(Duration::from_secs(3), connect)
            .await
            .ok()?
            .ok()?;
        let status = tokio::time::timeout(Duration::from_secs(3), client.nm(NmRequest::Status));
        match status.await.ok()?.ok()? {
            NmReply::Status { status } => Some(status),
            _ => None,
        }
    }

    pub async fn status(&self) -> ClusterStatus {
        self.try_status().await.expect("STATUS")
    }

    /// The leader's index, once one answers STATUS as leader.
    pub async fn wait_leader(&self) -> usize {
        eventually("an nm leader", async || {
            let status = self.try_status().await?;
            let leader = status.nm.iter().find(|n| n.role == NmRole::Leader)?;
            Some(self.nm_index(&leader.address))
        })
        .await
    }

    /// Waits until a leader other than `old` answers.
    pub async fn wait_new_leader(&self, old: usize) -> usize {
        eventually("a new nm leader", async || {
            let status = self.try_status().await?;
            let leader = status.nm.iter().find(|n| n.role == NmRole::Leader)?;
            let i = self.nm_index(&leader.address);
            (i != old).then_some(i)
        })
        .await
    }

    /// Waits until every nm of the cluster is on record: one leader, the
    /// others warm standbys. (A standby whose first lease request found etcd
    /// not yet up joins later; a test that acts on "every nm" needs them all.)
    pub async fn wait_group(&self) {
        let leader = self.wait_leader().await;
        for i in (0..self.nm_count()).filter(|i| *i != leader) {
            self.wait_standby(i).await;
        }
    }

    /// Waits until STATUS lists nm `i` as a standby of the group.
    pub async fn wait_standby(&self, i: usize) {
        let address = self.nm_addr(i);
        // Warm: its copy of the namespace loaded, so it can take over at once.
        eventually(&format!("nm {address} to be a warm standby"), async || {
            let status = self.try_status().await?;
            status
                .nm
                .iter()
                .any(|n| n.address == address && n.role == NmRole::Standby && n.warm)
                .then_some(())
        })
        .await
    }

    /// Waits until `primary`'s pair is in `state`.
    pub async fn wait_pair(&self, primary: &str, state: PairState) -> ClusterStatus {
        eventually(&format!("pair {primary} to be {state:?}"), async || {
            let status = self.try_status().await?;
            status
                .pairs
                .iter()
                .any(|p| p.primary == primary && p.state == state)
                .then_some(status)
        })
        .await
    }

    /// Runs `console --batch --json` with `script`, from the cluster's client address.
    pub fn console(&self, user: &str, script: &str) -> Batch {
        self.console_from(self.client_ip(), user, script)
    }

    /// Runs `console --batch --json` with `script`, dialling from `ip`.
    pub fn console_from(&self, ip: Ipv4Addr, user: &str, script: &str) -> Batch {
        crate::run_script(self.console_command(ip, user), script)
    }

    /// `console --batch --json` against the group, dialling from `ip`.
    pub fn console_command(&self, ip: Ipv4Addr, user: &str) -> Command {
        let mut command = Command::new(bin("console"));
        command
            .args(["--nm", &self.nm_list(), "--user", user, "--batch", "--json"])
            .args(["--bind", &ip.to_string()]);
        command
    }

    /// Polls a one-command script until it succeeds; returns its outcome.
    pub async fn until_ok(&self, user: &str, script: &str) -> serde_json::Value {
        eventually(&format!("{script:?} to succeed"), async || {
            let batch = self.console(user, script);
            let first = batch.outcomes.first()?.clone();
            (first["ok"] == true).then_some(first)
        })
        .await
    }

    /// The first difference between two servers' files, if any.
    pub fn difference(&self, a: &str, b: &str) -> Option<String> {
        crate::difference(a, &self.storage(a), b, &self.storage(b))
    }

    /// Waits until two servers hold the same files.
    pub async fn wait_same_files(&self, a: &str, b: &str) {
        let converged = tokio::time::timeout(crate::DEADLINE, async {
            while self.difference(a, b).is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if converged.is_err() {
            panic!("{}", self.difference(a, b).unwrap_or_default());
        }
    }

    /// The log of a daemon (`nm0`, `etcd1`, `ss1`, …).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        self.partitions.heal();
        for server in self.servers.values_mut() {
            server.stop();
        }
        for nm in &mut self.nms {
            nm.stop();
        }
        for member in &mut self.etcd {
            member.stop();
        }
        if std::thread::panicking() {
            crate::print_log_tails(self.dir.path());
        }
        if crate::keep_logs() {
            let kept = self.dir.path().to_owned();
            eprintln!("HaCluster logs kept in {}", kept.display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}
