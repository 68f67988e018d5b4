//! What nm remembers across restarts: a snapshot plus a journal.
//!
//! ```text
//! <data-dir>/snapshot.mp   users and files at the last compaction (MessagePack)
//! <data-dir>/journal.log   a header page (magic), then the records since the
//!                          snapshot in length-delimited frames, each a CRC-32
//!                          of the record and the record; then zeros
//! ```
//!
//! A change is acknowledged only once its record is fsynced. One writer
//! thread does the writing and commits every record that queued up while the
//! previous fsync ran in one go (group commit), so many clients share one
//! fsync. At start-up the journal is replayed onto the snapshot (a torn last
//! record from a crash is cut off), and the two are compacted into a new
//! snapshot and a new, empty journal.
//!
//! **Written in place, never appended**, as the storage server's log
//! (`ss/src/wal.rs`): the journal is grown with zeros a megabyte at a time
//! ahead of its records, so the fdatasync that makes a record durable writes
//! the record's block and flushes, and does not also write the inode for a
//! new size. Replay stops at the first frame that is zeros, torn, or fails
//! its checksum; the file is new at every start, so nothing but zeros ever
//! lies beyond the last record written. A journal of the earlier, appended
//! format (no header, no checksums) is replayed as it was. After a failed
//! write or fsync the writer fails every later change: what it wrote may
//! be torn, and records after a torn one would be cut off by the replay.
//! An nm older than this format reads such a journal as torn at its first
//! byte: downgrading nm after it stopped uncleanly loses the records since
//! the last start.

use crate::namespace::{FileRecord, Namespace};
use crate::registry::PersistedPair;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use shared::checked_frames;
use shared::connection::frame_codec;
use shared::proto::{AccessList, AccessRequest};
use shared::WireError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Decoder;

const SNAPSHOT: &str = "snapshot.mp";
const JOURNAL: &str = "journal.log";
/// Largest journal record; far above any real one.
const MAX_RECORD: usize = 16 << 20;
/// Most records written under one fsync.
const MAX_BATCH: usize = 4096;
/// The first bytes of a journal of this format (the version is the last);
/// an appended journal starts with a frame's length, never this.
const MAGIC: [u8; 8] = *b"nm-jrnl\x02";
/// The header's share of the file: records start on the next page.
const HEADER_BYTES: u64 = 4096;
/// The journal grows, in zeros, by this much ahead of its records.
const GROW_BYTES: u64 = 1 << 20;

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
            .read(true)
            .write(true)
            .open(&journal_path)?;
        let writer = InPlace::new(file, fsync)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("nm-journal".into())
            .spawn(move || write_loop(writer, rx))?;
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
    // Only a missing journal is an empty one: any other error stops nm
    // before the compaction that follows could discard what it holds.
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            ))
        }
    };
    let (records, _) = if bytes.starts_with(&MAGIC) {
        records_in_place(&bytes)
    } else {
        (records_appended(&bytes), 0)
    };
    let count = records.len();
    for record in records {
        record.apply(ns);
    }
    Ok(count)
}

/// The records of a journal of this format, and the offset where the next
/// one goes: up to the first frame that is zeros, torn, or fails its CRC
/// ([`shared::checked_frames`]). A record that passes its checksum but does
/// not read (one a newer nm wrote) is skipped.
fn records_in_place(bytes: &[u8]) -> (Vec<Record>, u64) {
    let body = bytes.get(HEADER_BYTES as usize..).unwrap_or_default();
    let decoded = checked_frames::decode_bodies(body, None, MAX_RECORD);
    let end = HEADER_BYTES + decoded.intact;
    match decoded.stop {
        None | Some(checked_frames::Stop::Zeros) => {}
        Some(stop) => {
            tracing::warn!(event = "nm_journal_torn", offset = end, stop = ?stop, "journal ends in a damaged record (a crash while writing it); cut off");
        }
    }
    let records = decoded
        .records
        .into_iter()
        .filter_map(|(_, body)| {
            rmp_serde::from_slice::<Record>(&body)
                .inspect_err(|e| {
                    tracing::warn!(event = "nm_journal_bad_record", error = %e, "journal record skipped");
                })
                .ok()
        })
        .collect();
    (records, end)
}

/// The records of a journal of the earlier, appended format.
fn records_appended(bytes: &[u8]) -> Vec<Record> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = frame_codec(MAX_RECORD);
    let mut records = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => match rmp_serde::from_slice::<Record>(&frame) {
                Ok(record) => records.push(record),
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
    records
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
    // The new snapshot's name is durable before the journal it replaces
    // is emptied: a crash between the two never leaves the old snapshot
    // with an empty journal.
    if fsync {
        File::open(dir)?.sync_all()?;
    }
    let journal = File::create(dir.join(JOURNAL))?;
    let mut page = vec![0; HEADER_BYTES as usize];
    page[..MAGIC.len()].copy_from_slice(&MAGIC);
    journal.write_all_at(&page, 0)?;
    checked_frames::write_zeros(&journal, HEADER_BYTES, HEADER_BYTES + GROW_BYTES)?;
    if fsync {
        journal.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The journal file as its writer sees it: records go at `end`, over the
/// zeros that run up to `capacity`.
struct InPlace {
    file: File,
    end: u64,
    capacity: u64,
    fsync: bool,
    /// Set once a write or fsync failed: the tail may be torn.
    failed: Option<String>,
}

impl InPlace {
    /// Opens a journal [`compact`] has just started (header, then zeros).
    fn new(mut file: File, fsync: bool) -> io::Result<InPlace> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if !bytes.starts_with(&MAGIC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal has no header",
            ));
        }
        let (_, end) = records_in_place(&bytes);
        Ok(InPlace {
            file,
            end,
            capacity: bytes.len() as u64,
            fsync,
            failed: None,
        })
    }

    /// Writes `frames` after the last record and makes them durable.
    fn commit(&mut self, frames: &[u8]) -> Result<(), String> {
        if let Some(earlier) = &self.failed {
            return Err(format!(
                "an earlier journal write failed ({earlier}); restart nm"
            ));
        }
        let result = self.write(frames);
        if let Err(e) = &result {
            tracing::error!(event = "nm_journal_failed", error = %e, "journal write failed; every later change fails until nm restarts");
            self.failed = Some(e.to_string());
        }
        result.map_err(|e| e.to_string())
    }

    fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        let end = self.end + frames.len() as u64;
        if end > self.capacity {
            let mut to = self.capacity;
            while to < end {
                to += GROW_BYTES;
            }
            checked_frames::write_zeros(&self.file, self.capacity, to)?;
            self.capacity = to;
        }
        self.file.write_all_at(frames, self.end)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.end = end;
        Ok(())
    }
}

fn write_loop(mut journal: InPlace, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let result = frames(batch.iter().flat_map(|p| &p.records))
            .and_then(|frames| journal.commit(&frames));
        for pending in batch {
            let copy = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(WireError::internal(format!("journal write failed: {e}"))),
            };
            let _ = pending.done.send(copy);
        }
    }
}

/// `records` as frames of this format ([`shared::checked_frames`]).
fn frames<'a>(records: impl Iterator<Item = &'a Record>) -> Result<BytesMut, String> {
    let mut buf = BytesMut::new();
    for record in records {
        let frame = checked_frames::encode(record, None, MAX_RECORD).map_err(|e| e.to_string())?;
        buf.extend_from_slice(&frame);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Encoder;

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
        // A crash in the middle of a record leaves a partial frame after
        // the last whole one.
        let path = dir.path().join(JOURNAL);
        let (records, end) = records_in_place(&fs::read(&path).unwrap());
        assert_eq!(records.len(), 4);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0, 0, 0, 50, 1, 2, 3], end).unwrap();
        drop(f);
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert!(ns.has_user("alice"));
        assert_eq!(ns.file("a.txt").unwrap().owner, "alice");
        assert!(ns.file("b.txt").is_none());
        // Compacted: the snapshot alone now carries everything.
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.starts_with(&MAGIC));
        assert_eq!(records_in_place(&bytes), (vec![], HEADER_BYTES));
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(ns.len(), 1);
    }

    fn created(file: &str) -> Record {
        Record::FileCreated {
            file: file.into(),
            owner: "alice".into(),
            server: "ss1".into(),
            acl: AccessList::new(),
        }
    }

    #[tokio::test]
    async fn a_record_that_fails_its_checksum_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            for file in ["a.txt", "b.txt", "c.txt"] {
                journal.append(vec![created(file)]).await.unwrap();
            }
        }
        // One bit of b.txt's record flipped, as a torn sector would leave it.
        let mut bytes = fs::read(&path).unwrap();
        let at = HEADER_BYTES as usize
            + bytes[HEADER_BYTES as usize..]
                .windows(5)
                .position(|w| w == b"b.txt")
                .unwrap();
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert!(ns.file("a.txt").is_some());
        assert!(ns.file("b.txt").is_none());
        assert!(ns.file("c.txt").is_none(), "nothing after a damaged record");
    }

    #[tokio::test]
    async fn a_journal_of_the_appended_format_is_replayed_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        let mut old = BytesMut::new();
        for file in ["a.txt", "b.txt"] {
            let bytes = rmp_serde::to_vec_named(&created(file)).unwrap();
            frame_codec(MAX_RECORD)
                .encode(bytes::Bytes::from(bytes), &mut old)
                .unwrap();
        }
        fs::write(&path, &old).unwrap();
        let (journal, ns) = Journal::open(dir.path(), true).unwrap();
        assert!(ns.file("a.txt").is_some() && ns.file("b.txt").is_some());
        assert!(fs::read(&path).unwrap().starts_with(&MAGIC));
        journal.append(vec![created("c.txt")]).await.unwrap();
        drop(journal);
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(ns.len(), 3);
    }

    #[tokio::test]
    async fn the_journal_is_written_in_place_and_grows_a_megabyte_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        let length = || fs::metadata(&path).unwrap().len();
        assert_eq!(length(), HEADER_BYTES + GROW_BYTES);
        journal.append(vec![created("first.txt")]).await.unwrap();
        assert_eq!(length(), HEADER_BYTES + GROW_BYTES, "written over zeros");
        // About 1.5 MiB of records in three batches: the file grows twice.
        let mut expected = 1;
        for batch in 0..3 {
            let records: Vec<Record> = (0..6000)
                .map(|i| created(&format!("batch-{batch}/a-file-with-a-longish-name-{i}.txt")))
                .collect();
            expected += records.len();
            journal.append(records).await.unwrap();
        }
        assert_eq!((length() - HEADER_BYTES) % GROW_BYTES, 0);
        assert!(length() > HEADER_BYTES + GROW_BYTES);
        drop(journal);
        let (records, _) = records_in_place(&fs::read(&path).unwrap());
        assert_eq!(records.len(), expected);
        let (_, ns) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(ns.len(), expected);
    }

    #[tokio::test]
    async fn a_journal_that_cannot_be_read_stops_nm_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path(), true).unwrap();
            journal.append(vec![created("a.txt")]).await.unwrap();
        }
        // Unreadable (here: a folder in its place), not missing.
        let path = dir.path().join(JOURNAL);
        let kept = dir.path().join("kept.log");
        fs::rename(&path, &kept).unwrap();
        fs::create_dir(&path).unwrap();
        let error = Journal::open(dir.path(), true).err().expect("an error");
        assert!(error.to_string().contains("journal.log"), "{error}");
        fs::remove_dir(&path).unwrap();
        fs::rename(&kept, &path).unwrap();
        let (_, ns) = Journal::open(dir.path(), true).unwrap();
        assert!(ns.file("a.txt").is_some());
    }
}
