//! A local cluster of real `nm` and `ss` processes in a temp dir, for
//! `console demo` and the benchmarks. The binaries are taken from the folder
//! the caller itself runs from. Every child is killed when the cluster
//! drops, and when the caller dies.
//!
//! With [`LocalCluster::start_ha`] nm runs as a group of several on a real
//! etcd (the `etcd` binary of the OS's etcd-server package): `console demo
//! --ha`.

use crate::process::{die_with_parent, free_port};
use client::Client;
use shared::proto::{ClusterStatus, NmReply, NmRequest, NmRole, PairState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Where a cluster keeps its logs and data.
enum Folder {
    /// Removed when the cluster drops, unless kept.
    Temp(tempfile::TempDir),
    /// Given by the caller (a folder kept by an earlier run); never removed.
    Given(PathBuf),
}

impl Folder {
    fn path(&self) -> &Path {
        match self {
            Folder::Temp(dir) => dir.path(),
            Folder::Given(path) => path,
        }
    }
}

pub struct LocalCluster {
    dir: Folder,
    bin_dir: PathBuf,
    nm: Option<Child>,
    nm_addr: String,
    servers: BTreeMap<String, Child>,
    /// Every storage server ever started, running or not.
    known: Vec<String>,
    pub fsync: bool,
    pub heartbeat: String,
    /// Extra flags for every storage server started from now on.
    pub ss_args: Vec<String>,
    timeout: String,
    replication: String,
    /// nm as a group on etcd (`None`: one nm on its journal).
    ha: Option<Group>,
}

/// The etcd member and the nm group of an HA cluster.
struct Group {
    etcd: Option<Child>,
    etcd_client_url: String,
    etcd_peer_url: String,
    /// Each nm's address, and its process while it runs.
    nms: Vec<(String, Option<Child>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
}

/// `bin_dir`, or the folder the console itself runs from.
fn bin_dir_or_own(bin_dir: Option<PathBuf>) -> std::io::Result<PathBuf> {
    match bin_dir {
        Some(dir) => Ok(dir),
        None => Ok(std::env::current_exe()?
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()),
    }
}

impl LocalCluster {
    /// Starts nm; storage servers come with [`LocalCluster::start_ss`].
    /// `heartbeat` is the storage servers' interval, `timeout` nm's failure timeout.
    pub async fn start(
        bin_dir: Option<PathBuf>,
        fsync: bool,
        heartbeat: &str,
        timeout: &str,
        replication: &str,
    ) -> Result<Self, ClusterError> {
        Self::start_in(None, bin_dir, fsync, heartbeat, timeout, replication).await
    }

    /// A cluster in `dir` with nothing started yet; `settings` are fsync,
    /// the heartbeat interval, nm's failure timeout and the replication mode.
    fn unstarted(dir: Folder, bin_dir: PathBuf, settings: (bool, &str, &str, &str)) -> Self {
        let (fsync, heartbeat, timeout, replication) = settings;
        LocalCluster {
            dir,
            bin_dir,
            nm: None,
            nm_addr: String::new(),
            servers: BTreeMap::new(),
            known: Vec::new(),
            fsync,
            heartbeat: heartbeat.to_owned(),
            timeout: timeout.to_owned(),
            replication: replication.to_owned(),
            ss_args: Vec::new(),
            ha: None,
        }
    }

    /// Like [`LocalCluster::start`], in `folder` if given (nm's data and the
    /// storage folders found there are used as they are), else in a new temp dir.
    pub async fn start_in(
        folder: Option<PathBuf>,
        bin_dir: Option<PathBuf>,
        fsync: bool,
        heartbeat: &str,
        timeout: &str,
        replication: &str,
    ) -> Result<Self, ClusterError> {
        let dir = match folder {
            Some(path) => Folder::Given(path),
            None => Folder::Temp(tempfile::tempdir()?),
        };
        let settings = (fsync, heartbeat, timeout, replication);
        let mut cluster = Self::unstarted(dir, bin_dir_or_own(bin_dir)?, settings);
        let ready = cluster.dir.path().join("nm.addr");
        // A given folder may hold an earlier run's address and key.
        let _ = std::fs::remove_file(&ready);
        if !cluster.key_file().exists() {
            shared::auth::ClusterKey::generate(&cluster.key_file())?;
        }
        cluster.spawn_nm("127.0.0.1:0")?;
        let started = Instant::now();
        while !ready.exists() {
            if started.elapsed() > READY_DEADLINE {
                return Err(ClusterError::Timeout("nm to listen".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.nm_addr = std::fs::read_to_string(&ready)?;
        Ok(cluster)
    }

    /// A cluster whose nm is a group of `nms` on one etcd member: etcd and
    /// every nm started, and one nm elected leader. Storage servers come with
    /// [`LocalCluster::start_ss`] and are given every nm's address.
    ///
    /// Ports are picked free and then bound by the children, so another
    /// process may take one in between: a start that fails is tried again on
    /// new ports (three times in all).
    pub async fn start_ha(
        bin_dir: Option<PathBuf>,
        fsync: bool,
        heartbeat: &str,
        timeout: &str,
        replication: &str,
        nms: usize,
    ) -> Result<Self, ClusterError> {
        let mut attempt = 1;
        loop {
            let started =
                Self::try_start_ha(bin_dir.clone(), fsync, heartbeat, timeout, replication, nms)
                    .await;
            match started {
                Err(ClusterError::Timeout(what)) if attempt < 3 => {
                    eprintln!("local cluster: timed out waiting for {what}; starting again on other ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_start_ha(
        bin_dir: Option<PathBuf>,
        fsync: bool,
        heartbeat: &str,
        timeout: &str,
        replication: &str,
        nms: usize,
    ) -> Result<Self, ClusterError> {
        let version = Command::new("etcd").arg("--version").output();
        if !version.is_ok_and(|o| o.status.success()) {
            return Err(ClusterError::Failed(
                "no etcd on this machine: install the etcd-server package (scripts/test-deps.sh does)"
                    .into(),
            ));
        }
        let bin_dir = bin_dir_or_own(bin_dir)?;
        let mut group = Group {
            etcd: None,
            etcd_client_url: format!("http://127.0.0.1:{}", free_port()?),
            etcd_peer_url: format!("http://127.0.0.1:{}", free_port()?),
            nms: Vec::new(),
        };
        for _ in 0..nms.max(1) {
            group
                .nms
                .push((format!("127.0.0.1:{}", free_port()?), None));
        }
        let settings = (fsync, heartbeat, timeout, replication);
        let mut cluster = Self::unstarted(Folder::Temp(tempfile::tempdir()?), bin_dir, settings);
        cluster.nm_addr = group
            .nms
            .iter()
            .map(|(a, _)| a.clone())
            .collect::<Vec<_>>()
            .join(",");
        cluster.ha = Some(group);
        shared::auth::ClusterKey::generate(&cluster.key_file())?;
        cluster.spawn_etcd()?;
        for i in 0..nms.max(1) {
            cluster.spawn_group_nm(i)?;
        }
        let started = Instant::now();
        loop {
            if let Some(status) = cluster.status().await {
                if status.nm.iter().any(|n| n.role == NmRole::Leader) {
                    return Ok(cluster);
                }
            }
            if let Some(why) = cluster.group_failed() {
                return Err(ClusterError::Failed(why));
            }
            if started.elapsed() > READY_DEADLINE / 3 {
                return Err(ClusterError::Timeout("an nm leader".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Why the group cannot start: every nm exited (its last log line says why).
    fn group_failed(&mut self) -> Option<String> {
        let dir = self.dir.path().to_owned();
        let group = self.ha.as_mut()?;
        let all_exited = group.nms.iter_mut().all(|(_, child)| {
            child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        });
        if !all_exited {
            return None;
        }
        let log = std::fs::read_to_string(dir.join("nm0.log")).unwrap_or_default();
        Some(format!(
            "nm exited: {}",
            log.lines().last().unwrap_or("(no log)").trim()
        ))
    }

    fn spawn_etcd(&mut self) -> Result<(), ClusterError> {
        let log = self.log("etcd")?;
        let data = self.dir.path().join("etcd-data");
        let Some(group) = self.ha.as_mut() else {
            return Ok(());
        };
        let mut command = Command::new("etcd");
        command
            .args(["--name", "etcd0"])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &group.etcd_client_url])
            .args(["--advertise-client-urls", &group.etcd_client_url])
            .args(["--listen-peer-urls", &group.etcd_peer_url])
            .args(["--initial-advertise-peer-urls", &group.etcd_peer_url])
            .args([
                "--initial-cluster",
                &format!("etcd0={}", group.etcd_peer_url),
            ])
            .args(crate::process::ETCD_QUIET_LOG)
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        group.etcd = Some(command.spawn()?);
        Ok(())
    }

    fn spawn_group_nm(&mut self, i: usize) -> Result<(), ClusterError> {
        let log = self.log(&format!("nm{i}"))?;
        let data = self.dir.path().join(format!("nm{i}-data"));
        let key = self.key_file();
        let bin = self.bin_dir.join("nm");
        let (fsync, timeout, replication) = (
            self.fsync.to_string(),
            self.timeout.clone(),
            self.replication.clone(),
        );
        let Some(group) = self.ha.as_mut() else {
            return Ok(());
        };
        let mut command = Command::new(bin);
        command
            .args(["--listen", &group.nms[i].0, "--quiet"])
            .args(["--etcd", &group.etcd_client_url])
            .arg("--data-dir")
            .arg(data)
            .arg("--cluster-key-file")
            .arg(key)
            .args(["--fsync", &fsync])
            .args(["--heartbeat-timeout", &timeout])
            .args(["--replication", &replication])
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        group.nms[i].1 = Some(command.spawn()?);
        Ok(())
    }

    fn spawn_nm(&mut self, listen: &str) -> Result<(), ClusterError> {
        let ready = self.dir.path().join("nm.addr");
        let mut command = Command::new(self.bin_dir.join("nm"));
        command
            .args(["--listen", listen, "--quiet"])
            .arg("--data-dir")
            .arg(self.dir.path().join("nm-data"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--cluster-key-file")
            .arg(self.key_file())
            .args(["--fsync", &self.fsync.to_string()])
            .args(["--heartbeat-timeout", &self.timeout])
            .args(["--replication", &self.replication])
            .stdout(Stdio::null())
            .stderr(self.log("nm")?);
        die_with_parent(&mut command);
        self.nm = Some(command.spawn()?);
        Ok(())
    }

    /// kill -9 of a daemon (`nm`, `etcd`, `nmN` of a group, or a storage server).
    pub fn kill(&mut self, name: &str) {
        let child = if name == "nm" {
            self.nm.take()
        } else if let Some(slot) = self.group_slot(name) {
            slot.take()
        } else {
            self.servers.remove(name)
        };
        if let Some(mut child) = child {
            crate::process::kill(&mut child);
        }
    }

    /// The process slot of `etcd` or `nmN` in an HA cluster.
    fn group_slot(&mut self, name: &str) -> Option<&mut Option<Child>> {
        let group = self.ha.as_mut()?;
        if name == "etcd" {
            return Some(&mut group.etcd);
        }
        let i: usize = name.strip_prefix("nm")?.parse().ok()?;
        group.nms.get_mut(i).map(|(_, child)| child)
    }

    /// Starts a killed daemon again (nm on its old port), without waiting for it.
    pub fn restart(&mut self, name: &str) -> Result<(), ClusterError> {
        if let Some(slot) = self.group_slot(name) {
            if slot.is_none() {
                if name == "etcd" {
                    self.spawn_etcd()?;
                } else if let Some(i) = name.strip_prefix("nm").and_then(|i| i.parse().ok()) {
                    self.spawn_group_nm(i)?;
                }
            }
            return Ok(());
        }
        if name == "nm" {
            if self.nm.is_none() {
                let listen = self.nm_addr.clone();
                self.spawn_nm(&listen)?;
            }
            return Ok(());
        }
        if !self.servers.contains_key(name) {
            self.spawn_ss(name)?;
        }
        Ok(())
    }

    /// Collects daemons that exited by themselves (a crash, a `kill -9`
    /// from another terminal), so they show as not running and `R` starts
    /// them again.
    pub fn reap(&mut self) {
        fn exited(slot: &mut Option<Child>) {
            if slot
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
            {
                *slot = None;
            }
        }
        exited(&mut self.nm);
        if let Some(group) = self.ha.as_mut() {
            exited(&mut group.etcd);
            for (_, child) in group.nms.iter_mut() {
                exited(child);
            }
        }
        self.servers
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
    }

    /// nm (or etcd and every nm of the group) and every storage server
    /// started so far, with whether it runs.
    pub fn daemons(&self) -> Vec<(String, bool)> {
        let nm: Vec<(String, bool)> = match &self.ha {
            None => vec![("nm".to_owned(), self.nm.is_some())],
            Some(group) => std::iter::once(("etcd".to_owned(), group.etcd.is_some()))
                .chain(
                    group
                        .nms
                        .iter()
                        .enumerate()
                        .map(|(i, (_, child))| (format!("nm{i}"), child.is_some())),
                )
                .collect(),
        };
        nm.into_iter()
            .chain(
                self.known
                    .iter()
                    .map(|name| (name.clone(), self.servers.contains_key(name))),
            )
            .collect()
    }

    /// The folder the daemons (and their tools, `ss-seed`, `nm-seed`) run from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster key this local cluster generated for its daemons.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("cluster.key")
    }

    /// The address of nm `name` (`nmN`) of a group.
    pub fn group_nm_addr(&self, name: &str) -> Option<&str> {
        let i: usize = name.strip_prefix("nm")?.parse().ok()?;
        Some(self.ha.as_ref()?.nms.get(i)?.0.as_str())
    }

    /// The process id of a running daemon.
    pub fn pid(&self, name: &str) -> Option<u32> {
        if let Some(group) = &self.ha {
            if name == "etcd" {
                return group.etcd.as_ref().map(Child::id);
            }
            if let Some(i) = name
                .strip_prefix("nm")
                .and_then(|i| i.parse::<usize>().ok())
            {
                return group.nms.get(i)?.1.as_ref().map(Child::id);
            }
        }
        if name == "nm" {
            self.nm.as_ref().map(Child::id)
        } else {
            self.servers.get(name).map(Child::id)
        }
    }

    pub fn nm_addr(&self) -> &str {
        &self.nm_addr
    }

    /// The client URL of the group's etcd, when the cluster runs one.
    pub fn etcd_endpoint(&self) -> Option<&str> {
        self.ha.as_ref().map(|g| g.etcd_client_url.as_str())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the folder (logs and data) in place when the cluster is dropped.
    pub fn keep_dir(&mut self) {
        if let Folder::Temp(dir) = &mut self.dir {
            dir.disable_cleanup(true);
        }
    }

    pub fn storage(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("storage-{name}"))
    }

    fn log(&self, name: &str) -> std::io::Result<Stdio> {
        crate::process::log_file(self.dir.path(), name)
    }

    /// Starts a storage server (without waiting for it).
    pub fn spawn_ss(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut command = Command::new(self.bin_dir.join("ss"));
        command
            .args(["--nm", &self.nm_addr, "--username", name])
            .arg("--storage")
            .arg(self.storage(name))
            .arg("--cluster-key-file")
            .arg(self.key_file())
            .args(["--fsync", &self.fsync.to_string()])
            .args(["--heartbeat-interval", &self.heartbeat])
            .args(&self.ss_args)
            .stdout(Stdio::null())
            .stderr(self.log(name)?);
        die_with_parent(&mut command);
        let child = command.spawn()?;
        self.servers.insert(name.to_owned(), child);
        if !self.known.iter().any(|k| k == name) {
            self.known.push(name.to_owned());
        }
        Ok(())
    }

    /// Starts a storage server and waits until nm has it ALIVE.
    pub async fn start_ss(&mut self, name: &str) -> Result<(), ClusterError> {
        self.spawn_ss(name)?;
        self.wait_for(&format!("{name} to register"), |s| crate::is_alive(s, name))
            .await
            .map(|_| ())
    }

    /// Sends a signal (SIGSTOP, SIGCONT) to a storage server.
    pub fn signal_ss(&self, name: &str, signal: i32) {
        if let Some(child) = self.servers.get(name) {
            let _ = crate::process::signal(child, signal);
        }
    }

    /// kill -9 of a storage server.
    pub fn kill_ss(&mut self, name: &str) {
        if let Some(mut child) = self.servers.remove(name) {
            crate::process::kill(&mut child);
        }
    }

    pub async fn status(&self) -> Option<ClusterStatus> {
        self.try_status().await.ok().flatten()
    }

    /// STATUS, `None` while nm does not answer; an error if nm refuses
    /// this console's protocol (a `--bin-dir` of another build), which
    /// waiting will not change.
    async fn try_status(&self) -> Result<Option<ClusterStatus>, ClusterError> {
        // As the demo's and the bench's default user, so LIST shows no stranger.
        let mut client = match Client::connect(&self.nm_addr, "operator").await {
            Ok(client) => client,
            Err(shared::connection::ConnectionError::Refused(e))
                if e.code == shared::ErrorCode::Protocol =>
            {
                return Err(ClusterError::Failed(format!(
                    "nm refused this console: {} (run the console of the same build as the daemons)",
                    e.message
                )));
            }
            Err(_) => return Ok(None),
        };
        Ok(match client.nm(NmRequest::Status).await {
            Ok(NmReply::Status { status }) => Some(status),
            _ => None,
        })
    }

    /// Polls STATUS until `done` holds.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, ClusterError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_status().await? {
                if done(&status) {
                    return Ok(status);
                }
            }
            if started.elapsed() > READY_DEADLINE * 20 {
                return Err(ClusterError::Timeout(what.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `primary`'s pair is ACTIVE with nothing pending.
    pub async fn wait_replicated(&self, primary: &str) -> Result<ClusterStatus, ClusterError> {
        self.wait_for(&format!("{primary} to be replicated"), |s| {
            s.pairs.iter().any(|p| {
                p.primary == primary && p.state == PairState::Active && p.pending_jobs == 0
            })
        })
        .await
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // nm first, so that it records no failover of servers being stopped
        // (a kept folder then starts again with the pair as it was).
        let mut group = self.ha.take();
        let nms = group
            .iter_mut()
            .flat_map(|g| g.nms.iter_mut().map(|(_, child)| child))
            .chain(std::iter::once(&mut self.nm));
        for slot in nms {
            if let Some(mut nm) = slot.take() {
                crate::process::kill(&mut nm);
            }
        }
        for (_, mut child) in std::mem::take(&mut self.servers) {
            crate::process::kill(&mut child);
        }
        if let Some(mut etcd) = group.and_then(|mut g| g.etcd.take()) {
            crate::process::kill(&mut etcd);
        }
    }
}
