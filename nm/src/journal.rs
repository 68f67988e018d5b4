//! What nm remembers across restarts: a snapshot plus an append-only journal.
//!
//! ```text
//! <data-dir>/snapshot.mp   users and files at the last compaction (MessagePack)
//! <data-dir>/journal.log   records since then, in length-delimited frames
//! ```
//!
//! A change is acknowledged only once its record is fsynced. One writer
//! thread does the writing and commits every record that queued up while the
//! previous fsync ran in one go (group commit), so many clients share one
//! fsync. At start-up the journal is replayed onto the snapshot (a torn last
//! record from a crash is cut off), and the two are compacted into a new
//! snapshot.

use crate::namespace::{FileRecord, Namespace};
use crate::registry::PersistedPair;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use shared::connection::frame_codec;
use shared::proto::{AccessList, AccessRequest};
use shared::WireError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder};

const SNAPSHOT: &str = "snapshot.mp";
const JOURNAL: &str = "journal.log";
/// Largest journal record; far above any real one.
const MAX_RECORD: usize = 16 << 20;
/// Most records written under one fsync.
const MAX_BATCH: usize = 4096;

/// One change to what nm remembers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    User {
        name: String,
    },
    FileCreated {
        file: String,
        owner: String,
        server: String,
        acl: AccessList,
    },
    /// The file and its pending requests are gone.
    FileDeleted {
        file: String,
    },
    AclSet {
        file: String,
        acl: AccessList,
    },
    FolderCreated {
        folder: String,
    },
    FileMoved {
        file: String,
        to: String,
    },
    RequestAdded {
        request: AccessRequest,
    },
    RequestRemoved {
        id: u64,
    },
    /// What the failover machine keeps of a pair changed: its epoch and
    /// active server (a promotion or a hand-back), or its standby's in-sync
    /// flag. Older journals have no flag: it reads as "not in sync".
    Pair {
        primary: String,
        epoch: u64,
        active: String,
        #[serde(default)]
        standby_in_sync: bool,
        #[serde(default)]
        offered: u64,
        #[serde(default)]
        backup: Option<String>,
    },
    /// Replication job ids up to `up_to` may be handed out.
    JobIds {
        up_to: u64,
    },
}

impl Record {
    pub fn apply(self, ns: &mut Namespace) {
        match self {
            Record::User { name } => {
                ns.add_user(&name);
            }
            Record::FileCreated {
                file,
                owner,
                server,
                acl,
            } => ns.insert(
                &file,
                FileRecord {
                    owner,
                    acl,
                    server,
                    stats: Default::default(),
                },
            ),
            Record::FileDeleted { file } => {
                ns.delete(&file);
            }
            Record::AclSet { file, acl } => ns.set_acl(&file, acl),
            Record::FolderCreated { folder } => ns.add_folder(&folder),
            Record::FileMoved { file, to } => ns.rename(&file, &to),
            Record::RequestAdded { request } => ns.add_request(request),
            Record::RequestRemoved { id } => {
                ns.remove_request(id);
            }
            Record::JobIds { up_to } => ns.reserve_job_ids(up_to),
            Record::Pair {
                primary,
                epoch,
                active,
                standby_in_sync,
                offered,
                backup,
            } => ns.set_pair(
                &primary,
                PersistedPair {
                    epoch,
                    active,
                    standby_in_sync,
                    offered,
                    backup,
                },
            ),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    users: Vec<String>,
    #[serde(default)]
    folders: Vec<String>,
    files: Vec<(String, FileRecord)>,
    #[serde(default)]
    requests: Vec<AccessRequest>,
    #[serde(default)]
    last_request_id: u64,
    #[serde(default)]
    job_ids_reserved: u64,
    /// Older snapshots' (primary, epoch, active server); read, no longer written.
    #[serde(default)]
    pairs: Vec<(String, u64, String)>,
    /// What the failover machine keeps of each pair, by primary.
    #[serde(default)]
    failover: Vec<(String, PersistedPair)>,
}

/// Records waiting to be made durable, and whom to tell.
pub(crate) struct Pending {
    pub(crate) records: Vec<Record>,
    pub(crate) done: oneshot::Sender<Result<(), WireError>>,
}

/// The handle through which changes are made durable.
/// Hands the memory freed after loading (the snapshot's bytes and decoded
/// records, the compaction's copy) back to the system, so nm's resident size
/// is what the namespace holds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Journal {
    /// A journal whose records another writer makes durable (nm on etcd:
    /// [`crate::ha`]), in the order they are submitted.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn with_writer(tx: mpsc::UnboundedSender<Pending>) -> Journal {
        Journal { tx }
    }

    /// Loads what was remembered into a namespace, compacts it, and starts the writer.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<(Journal, Namespace)> {
        fs::create_dir_all(dir)?;
        let mut ns = Namespace::default();
        let snapshot_path = dir.join(SNAPSHOT);
        if snapshot_path.exists() {
            let snapshot: Snapshot =
                rmp_serde::from_slice(&fs::read(&snapshot_path)?).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", snapshot_path.display()),
                    )
                })?;
            for user in snapshot.users {
                ns.add_user(&user);
            }
            for folder in snapshot.folders {
                ns.add_folder(&folder);
            }
            for (name, record) in snapshot.files {
                ns.insert(&name, record);
            }
            for request in snapshot.requests {
                ns.add_request(request);
            }
            ns.set_last_request_id(snapshot.last_request_id);
            ns.reserve_job_ids(snapshot.job_ids_reserved);
            for (primary, epoch, active) in snapshot.pairs {
                let legacy = PersistedPair {
                    epoch,
                    offered: epoch,
                    active,
                    standby_in_sync: false,
                    backup: None,
                };
                ns.set_pair(&primary, legacy);
            }
            for (primary, pair) in snapshot.failover {
                ns.set_pair(&primary, pair);
            }
        }
        let journal_path = dir.join(JOURNAL);
        let replayed = replay(&journal_path, &mut ns)?;
        compact(dir, &ns, fsync)?;
        release_freed_memory();
        tracing::info!(
            event = "nm_journal_loaded",
            users = ns.users().count(),
            files = ns.len(),
            replayed,
            "namespace restored"
        );
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("nm-journal".into())
            .spawn(move || write_loop(file, rx, fsync))?;
        Ok((Journal { tx }, ns))
    }

    /// Makes `records` durable; returns once they are on disk.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), WireError> {
        if records.is_empty() {
            return Ok(());
        }
        self.submit(records).await
    }

    /// Queues `records` now, in the order of the calls (the writer keeps
    /// it), and returns a future that ends once they are on disk. Records
    /// whose order matters are submitted under the lock that ordered them.
    pub fn submit(
        &self,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<(), WireError>> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Pending { records, done });
        async move {
            sent.map_err(|_| WireError::internal("the journal writer has stopped"))?;
            Self::written(wait).await
        }
    }

    async fn written(wait: oneshot::Receiver<Result<(), WireError>>) -> Result<(), WireError> {
        wait.await
            .unwrap_or_else(|_| Err(WireError::internal("the journal writer has stopped")))
    }
}

fn replay(path: &Path, ns: &mut Namespace) -> io::Result<usize> {
    let Ok(bytes) = fs::read(path) else {
        return Ok(0);
    };
    let mut buf = BytesMut::from(&bytes[..]);
    let mut codec = frame_codec(MAX_RECORD);
    let mut count = 0;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => match rmp_serde::from_slice::<Record>(&frame) {
                Ok(record) => {
                    record.apply(ns);
                    count += 1;
                }
                Err(e) => {
                    tracing::warn!(event = "nm_journal_bad_record", error = %e, "journal record skipped");
                }
            },
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(event = "nm_journal_torn", error = %e, "journal ends in a damaged record; cut off");
                break;
            }
        }
    }
    if !buf.is_empty() {
        tracing::warn!(
            event = "nm_journal_torn",
            bytes = buf.len(),
            "incomplete last record (crash while writing); cut off"
        );
    }
    Ok(count)
}

/// Writes a snapshot of `ns` atomically and starts an empty journal.
fn compact(dir: &Path, ns: &Namespace, fsync: bool) -> io::Result<()> {
    let snapshot = Snapshot {
        users: ns.users().cloned().collect(),
        folders: ns.folders().cloned().collect(),
        requests: ns.requests().cloned().collect(),
        last_request_id: ns.last_request_id(),
        job_ids_reserved: ns.job_ids_reserved(),
        pairs: Vec::new(),
        failover: ns
            .pairs()
            .map(|(p, pair)| (p.clone(), pair.clone()))
            .collect(),
        files: ns
            .files()
            .map(|(name, record)| (name.to_owned(), record.clone()))
            .collect(),
    };
    let bytes = rmp_serde::to_vec_named(&snapshot)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let temp: PathBuf = dir.join(format!("{SNAPSHOT}.tmp"));
    let mut f = File::create(&temp)?;
    f.write_all(&bytes)?;
    if fsync {
        f.sync_all()?;
    }
    fs::rename(&temp, dir.join(SNAPSHOT))?;
    let journal = File::create(dir.join(JOURNAL))?;
    if fsync {
        journal.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_loop(mut file: File, mut rx: mpsc::UnboundedReceiver<Pending>, fsync: bool) {
    let mut codec = frame_codec(MAX_RECORD);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let mut buf = BytesMut::new();
        let mut result = Ok(());
        for record in batch.iter().flat_map(|p| &p.records) {
            match rmp_serde::to_vec_named(record) {
                Ok(bytes) => {
                    if let Err(e) = codec.encode(bytes::Bytes::from(bytes), &mut buf) {
                        result = Err(e);
                    }
                }
                Err(e) => result = Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        if result.is_ok() {
            result = file
                .write_all(&buf)
                .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        }
        for pending in batch {
            let copy = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(WireError::internal(format!("journal write failed: {e}"))),
            };
            let _ = pending.done.send(copy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            journal
                .append(vec![
                    Record::User {
                        name: "alice".into(),
                    },
                    Record::FileCreated {
                        file: "a.txt".into(),
                        owner: "alice".into(),
                        server: "ss1".into(),
                        acl: AccessList::new(),
                    },
                    Record::FileCreated {
                        file: "b.txt".into(),
                        owner: "alice".into(),
                        server: "ss1".into(),
                        acl: AccessList::new(),
                    },
                ])
                .await
                .unwrap();
            journal
                .append(vec![Record::FileDeleted {
                    file: "b.txt".into(),
                }])
                .await
                .unwrap();
        }
        // A crash in the middle of a record leaves a partial frame.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        drop(f);
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert!(ns.has_user("alice"));
        assert_eq!(ns.file("a.txt").unwrap().owner, "alice");
        assert!(ns.file("b.txt").is_none());
        // Compacted: the snapshot alone now carries everything.
        assert_eq!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len(), 0);
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(ns.len(), 1);
    }
}
