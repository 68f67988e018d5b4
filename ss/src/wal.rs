//! The storage server's write-ahead log: what makes a CREATE or a WRITE
//! durable with one fdatasync instead of five.
//!
//! ```text
//! <storage>/wal.log   a header (magic, generation, CRC-32) in the first 4 KiB;
//!                     then the records since the last checkpoint, in
//!                     length-delimited frames, each a CRC-32 (of the
//!                     generation and the bytes) and a MessagePack record;
//!                     then zeros, or records of earlier generations
//! ```
//!
//! A change is written here and fdatasynced, then applied to the files
//! (temp file, rename) *without* an fsync, then acknowledged. Writers that
//! arrive while an fdatasync runs share the next one (group commit). A
//! checkpoint makes everything applied durable with one `syncfs` and starts
//! the log again; it runs before any change that does not go through the log
//! (delete, rename, checkpoint, replica installs, …), when the log passes
//! [`CHECKPOINT_BYTES`], and at start-up after the log is replayed. Replaying
//! rewrites every logged file whole, so whatever a crash left of an applied
//! but unsynced change is replaced; a torn last record was never acknowledged
//! and is cut off.
//!
//! **Written in place, never appended.** The file is grown with zeros a
//! megabyte at a time ahead of the records, and a checkpoint starts a new
//! *generation* by rewriting the header instead of truncating the file. An
//! fdatasync of bytes written over blocks the file already has changes no
//! metadata, so it is a data write and a cache flush; an append changes the
//! file's size, so its fdatasync also writes the inode (and, on a file
//! system with a journal, commits it, with every rename and link the server
//! made since). Measured on this project's machine (ext4 without a
//! journal): 2 block requests per fdatasync instead of 3, and p50 0.16–0.17
//! ms instead of 0.21–0.25 (BENCHMARKS.md, session 21). Each
//! record's checksum covers the generation, so records an earlier generation
//! left beyond the end fail it: replay stops at the first frame that is
//! zeros, torn, or of another generation. The header's page is written only
//! by a checkpoint, after everything the log held is durable in the files;
//! a header that fails its checksum therefore means an empty log. A log of
//! the earlier, appended format (no header) is replayed as it was and
//! rewritten in this one when opened. A clean stop truncates the file.
//!
//! If writing the files fails after a record is durable (a disk error), the
//! server aborts rather than report a failure the next replay would
//! contradict: the client sees a broken connection, the restart applies it.
//!
//! Each record carries the whole new content and the content it replaced
//! (for UNDO), so documents larger than [`MAX_LOGGED_BYTES`] bypass the log
//! and are written with their own fsyncs.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use shared::checked_frames;
use shared::proto::FileMeta;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// The log is checkpointed once it holds this much.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Largest new-plus-previous content logged; larger changes bypass the log.
pub const MAX_LOGGED_BYTES: usize = 4 << 20;
/// Largest frame read back (a record of [`MAX_LOGGED_BYTES`] plus its metadata).
const MAX_FRAME: usize = MAX_LOGGED_BYTES + (1 << 20);
/// The header's share of the file: records start on the next page, so
/// writing them never rewrites the header's.
const HEADER_BYTES: u64 = 4096;
/// The header's first bytes (the format's version is the last).
const MAGIC: [u8; 8] = *b"ss-wal\0\x02";
/// The file grows, in zeros, by this much ahead of the records.
const GROW_BYTES: u64 = 1 << 20;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalRecord {
    /// A new, empty file.
    Create { file: String, meta: FileMeta },
    /// A file's content replaced; `previous` becomes its undo level.
    Commit {
        file: String,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
        #[serde(with = "serde_bytes")]
        previous: Vec<u8>,
        meta: FileMeta,
    },
    /// A copy from the other server of the pair, installed.
    Install {
        file: String,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
        meta: FileMeta,
    },
}

impl WalRecord {
    /// The file the record changes.
    pub fn file(&self) -> &str {
        match self {
            WalRecord::Create { file, .. }
            | WalRecord::Commit { file, .. }
            | WalRecord::Install { file, .. } => file,
        }
    }
}

struct Log {
    /// Written to under the lock.
    file: File,
    /// Where this generation's records end: the next one goes here.
    size: u64,
    /// The file's length (zeros, or older records, from `size` on).
    capacity: u64,
    /// Past `size` there may be records of this generation that a crash left
    /// unacknowledged (beyond a torn one): the next checkpoint starts a new
    /// generation even if the log is empty, so that a later record of the
    /// same length can never make them whole again.
    stale_tail: bool,
    /// Records written, and records known durable.
    written: u64,
    synced: u64,
    /// Whether a writer is running the fdatasync for everyone.
    syncing: bool,
    /// Writers waiting for that fdatasync (none: no wake-up to send).
    waiting: usize,
    /// A failed write or fdatasync poisons the log: nothing is acknowledged after it.
    failed: Option<String>,
    /// The files the log holds a record of (see [`Wal::holds`]).
    files: HashSet<String>,
}

/// The log of one storage folder.
pub struct Wal {
    log: Mutex<Log>,
    /// The same file, fdatasynced outside the lock so writers can write meanwhile.
    sync_handle: File,
    synced: Condvar,
    /// What every record's checksum covers besides its bytes (see the module
    /// doc). It changes only under `applying`, held exclusively, so a writer
    /// holding it shared reads it without the log's lock.
    generation: AtomicU64,
    /// Held (shared) by a writer from its append until its change is applied,
    /// and (exclusively) by a checkpoint, so a checkpoint never empties the
    /// log under a change not yet applied.
    applying: RwLock<()>,
}

/// Proof that a change is durable in the log; hold it until the change is applied.
pub struct Logged<'a> {
    _applying: RwLockReadGuard<'a, ()>,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wal {
    /// Opens the log and returns the records a crash left in it, in order
    /// (a torn last record is cut off). The caller replays them and then
    /// calls [`Wal::checkpoint`].
    pub fn open(path: &Path) -> io::Result<(Wal, Vec<WalRecord>)> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (file, generation, records, size, stale_tail) = match read_header(&bytes) {
            Header::Valid(generation) => {
                let body = bytes.get(HEADER_BYTES as usize..).unwrap_or_default();
                let (records, end) = decode_generation(body, generation);
                let size = HEADER_BYTES + end;
                (file, generation, records, size, size < bytes.len() as u64)
            }
            header => {
                let records = match header {
                    Header::Absent => decode_all(&bytes),
                    _ => {
                        tracing::warn!(event = "ss_wal_header_torn", "the log's header fails its checksum: a checkpoint was cut off after every record was durable in the files; the log is empty");
                        Vec::new()
                    }
                };
                // A new generation unlike any the file held before.
                let generation = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                let (file, size) = rewrite(path, generation, &records)?;
                (file, generation, records, size, false)
            }
        };
        let capacity = file.metadata()?.len();
        let sync_handle = file.try_clone()?;
        let wal = Wal {
            sync_handle,
            log: Mutex::new(Log {
                file,
                size,
                capacity,
                stale_tail,
                written: 0,
                synced: 0,
                syncing: false,
                waiting: 0,
                failed: None,
                files: records.iter().map(|r| r.file().to_owned()).collect(),
            }),
            synced: Condvar::new(),
            generation: AtomicU64::new(generation),
            applying: RwLock::new(()),
        };
        Ok((wal, records))
    }

    /// Writes `record` and returns once it is durable, sharing the
    /// fdatasync with every writer that arrived meanwhile.
    pub fn append(&self, record: &WalRecord) -> io::Result<Logged<'_>> {
        self.write(record)?.durable()
    }

    /// Writes `record` without waiting for it to be durable: the caller
    /// may do other work meanwhile, then waits with [`Written::durable`].
    pub fn write(&self, record: &WalRecord) -> io::Result<Written<'_>> {
        let applying = self.applying.read().unwrap_or_else(|p| p.into_inner());
        let frame = encode_frame_of_generation(record, self.generation.load(Ordering::Relaxed))?;
        let mut log = lock(&self.log);
        if let Some(failed) = &log.failed {
            return Err(io::Error::other(failed.clone()));
        }
        let at = log.size;
        if let Err(e) = log
            .make_room(at + frame.len() as u64)
            .and_then(|()| log.file.write_all_at(&frame, at))
        {
            log.failed = Some(format!("the write-ahead log failed: {e}"));
            return Err(e);
        }
        log.size += frame.len() as u64;
        log.written += 1;
        if !log.files.contains(record.file()) {
            log.files.insert(record.file().to_owned());
        }
        Ok(Written {
            wal: self,
            mine: log.written,
            applying,
        })
    }
}

impl Log {
    /// Grows the file with zeros, [`GROW_BYTES`] at a time, to hold `end` bytes.
    fn make_room(&mut self, end: u64) -> io::Result<()> {
        if end <= self.capacity {
            return Ok(());
        }
        let target = end.div_ceil(GROW_BYTES) * GROW_BYTES;
        checked_frames::write_zeros(&self.file, self.capacity, target)?;
        self.capacity = target;
        Ok(())
    }
}

/// A record written to the log, not yet known to be durable.
pub struct Written<'a> {
    wal: &'a Wal,
    mine: u64,
    applying: RwLockReadGuard<'a, ()>,
}

impl<'a> Written<'a> {
    /// Returns once the record is durable, sharing the fdatasync with every
    /// writer that arrived meanwhile.
    pub fn durable(self) -> io::Result<Logged<'a>> {
        let Written {
            wal,
            mine,
            applying,
        } = self;
        let mut log = lock(&wal.log);
        loop {
            if let Some(failed) = &log.failed {
                return Err(io::Error::other(failed.clone()));
            }
            if log.synced >= mine {
                return Ok(Logged {
                    _applying: applying,
                });
            }
            if log.syncing {
                log.waiting += 1;
                log = wal.synced.wait(log).unwrap_or_else(|p| p.into_inner());
                log.waiting -= 1;
                continue;
            }
            // Lead: sync everything written so far, for everyone.
            log.syncing = true;
            let upto = log.written;
            drop(log);
            let result = wal.sync_handle.sync_data();
            log = lock(&wal.log);
            log.syncing = false;
            match result {
                Ok(()) => log.synced = log.synced.max(upto),
                Err(e) => log.failed = Some(format!("the write-ahead log failed: {e}")),
            }
            if log.waiting > 0 {
                wal.synced.notify_all();
            }
        }
    }
}

impl Wal {
    /// Whether the log holds a record of `file`: its replay would rewrite
    /// the file at that record's version.
    pub fn holds(&self, file: &str) -> bool {
        lock(&self.log).files.contains(file)
    }

    /// Whether the log holds no record (since the last checkpoint).
    pub fn is_empty(&self) -> bool {
        lock(&self.log).size == HEADER_BYTES
    }

    /// Whether the log has grown past [`CHECKPOINT_BYTES`].
    pub fn wants_checkpoint(&self) -> bool {
        lock(&self.log).size >= HEADER_BYTES + CHECKPOINT_BYTES
    }

    /// Empties the log (starts a new generation) once `make_durable` has
    /// made every applied change durable. Waits for changes being applied;
    /// does nothing if the log is empty.
    pub fn checkpoint(&self, make_durable: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let _exclusive = self.applying.write().unwrap_or_else(|p| p.into_inner());
        {
            let log = lock(&self.log);
            if let Some(failed) = &log.failed {
                return Err(io::Error::other(failed.clone()));
            }
            if log.size == HEADER_BYTES && !log.stale_tail {
                return Ok(());
            }
        }
        if let Err(e) = make_durable() {
            // The files' state is unknown (a failed sync may have dropped
            // what it could not write), and a later sync may report success
            // over it: the log is all that still holds those changes, so it
            // is never emptied, and nothing more is acknowledged.
            lock(&self.log).failed = Some(format!(
                "the write-ahead log could not be checkpointed: {e}"
            ));
            return Err(e);
        }
        let mut log = lock(&self.log);
        let generation = self.generation.load(Ordering::Relaxed).wrapping_add(1);
        let started = log
            .file
            .write_all_at(&header(generation), 0)
            .and_then(|()| log.file.sync_data());
        if let Err(e) = started {
            log.failed = Some(format!(
                "the write-ahead log could not start a new generation: {e}"
            ));
            return Err(e);
        }
        self.generation.store(generation, Ordering::Relaxed);
        log.size = HEADER_BYTES;
        log.stale_tail = false;
        log.files.clear();
        Ok(())
    }

    /// A clean stop, after a checkpoint: gives the file's space back. The
    /// log takes nothing after it; an empty file opens as an empty log.
    pub fn close(&self) -> io::Result<()> {
        let _exclusive = self.applying.write().unwrap_or_else(|p| p.into_inner());
        let mut log = lock(&self.log);
        if let Some(failed) = &log.failed {
            return Err(io::Error::other(failed.clone()));
        }
        if log.size != HEADER_BYTES {
            return Err(io::Error::other(
                "the write-ahead log holds records: checkpoint it before closing",
            ));
        }
        log.failed = Some("the write-ahead log was closed (the server is stopping)".into());
        log.file.set_len(0)?;
        log.file.sync_all()
    }

    #[cfg(test)]
    fn end(&self) -> u64 {
        lock(&self.log).size
    }
}

/// What the first bytes of a log file say.
enum Header {
    /// This format, in this generation.
    Valid(u64),
    /// An empty file, or one of the earlier format (records from the start).
    Absent,
    /// This format's magic with a header that fails its checksum.
    Torn,
}

fn header(generation: u64) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn read_header(bytes: &[u8]) -> Header {
    let len = header(0).len();
    if !bytes.starts_with(&MAGIC) {
        return Header::Absent;
    }
    let Some(found) = bytes.get(..len) else {
        return Header::Torn;
    };
    let generation = u64::from_le_bytes(
        found[MAGIC.len()..MAGIC.len() + 8]
            .try_into()
            .expect("8 bytes"),
    );
    if found == header(generation) {
        Header::Valid(generation)
    } else {
        Header::Torn
    }
}

/// Writes a new log of `generation` holding `records` (a temp file, synced,
/// renamed over `path`); returns it open, and where its records end.
fn rewrite(path: &Path, generation: u64, records: &[WalRecord]) -> io::Result<(File, u64)> {
    let mut bytes = header(generation);
    bytes.resize(HEADER_BYTES as usize, 0);
    for record in records {
        bytes.extend_from_slice(&encode_frame_of_generation(record, generation)?);
    }
    let temp = path.with_extension("log.new");
    std::fs::write(&temp, &bytes)?;
    File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    Ok((file, bytes.len() as u64))
}

/// `record` as a frame of the log in `generation`.
fn encode_frame_of_generation(record: &WalRecord, generation: u64) -> io::Result<BytesMut> {
    checked_frames::encode(record, Some(generation), MAX_FRAME)
}

/// This generation's records at the start of `bytes` (the log after its
/// header), and where they end: at the first frame that is zeros, torn,
/// or of another generation. Reaching it is the normal end of the log.
fn decode_generation(bytes: &[u8], generation: u64) -> (Vec<WalRecord>, u64) {
    let decoded = checked_frames::decode(bytes, Some(generation), MAX_FRAME);
    (
        decoded
            .records
            .into_iter()
            .map(|(_, record)| record)
            .collect(),
        decoded.intact,
    )
}

/// `record` as a frame on disk: length-delimited, a CRC-32 of its
/// MessagePack bytes and the bytes (also the framing of `crate::store`'s
/// packs; see [`shared::checked_frames`]).
pub(crate) fn encode_frame<T: Serialize>(record: &T) -> io::Result<BytesMut> {
    checked_frames::encode(record, None, MAX_FRAME)
}

/// Every whole, intact record of `bytes`, in order; decoding stops at the
/// first frame that is torn or fails its checksum.
fn decode_all(bytes: &[u8]) -> Vec<WalRecord> {
    decode_frames(bytes, "write-ahead log")
        .0
        .into_iter()
        .map(|(_, record)| record)
        .collect()
}

/// Every whole, intact frame of `bytes` with where it lies, in order, and
/// the length of that intact prefix: decoding stops at the first frame that
/// is torn or fails its checksum (logged as damage to `what`).
pub(crate) fn decode_frames<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> (Vec<(std::ops::Range<u64>, T)>, u64) {
    let decoded = checked_frames::decode(bytes, None, MAX_FRAME);
    match &decoded.stop {
        None => {}
        Some(checked_frames::Stop::Torn(error)) => {
            tracing::warn!(event = "ss_wal_torn", what, error = %error, "ends in a damaged frame; cut off");
        }
        Some(checked_frames::Stop::Zeros | checked_frames::Stop::Checksum) => {
            tracing::warn!(
                event = "ss_wal_torn",
                what,
                "a record fails its checksum; cut off there"
            );
        }
        Some(checked_frames::Stop::Incomplete(bytes)) => {
            tracing::warn!(
                event = "ss_wal_torn",
                what,
                bytes,
                "incomplete last record (crash while writing); cut off"
            );
        }
    }
    (decoded.records, decoded.intact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(n: usize) -> WalRecord {
        WalRecord::Commit {
            file: format!("f{n}"),
            content: format!("Content {n}.").into_bytes(),
            previous: b"Before.".to_vec(),
            meta: FileMeta {
                owner: "alice".into(),
                acl: Default::default(),
                checkpoints: Default::default(),
                stats: Default::default(),
            },
        }
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let end = {
            let (wal, found) = Wal::open(&path).unwrap();
            assert!(found.is_empty());
            for n in 0..5 {
                drop(wal.append(&record(n)).unwrap());
            }
            wal.end() as usize
        };
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn[end - 3..end].fill(0);
        std::fs::write(&path, &torn).unwrap();
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..4).map(record).collect::<Vec<_>>());

        // A flipped byte inside the last (whole) record fails its checksum.
        let mut flipped = whole.clone();
        flipped[end - 2] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..4).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn records_are_written_in_place_and_an_older_generations_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, _) = Wal::open(&path).unwrap();
        for n in 0..3 {
            drop(wal.append(&record(n)).unwrap());
        }
        let capacity = std::fs::metadata(&path).unwrap().len();
        assert_eq!(capacity % GROW_BYTES, 0, "grown ahead in whole steps");
        wal.checkpoint(|| Ok(())).unwrap();
        // Record 7 is as long as record 0, whose place it takes: records 1
        // and 2 of the generation before stay whole in the file after it.
        drop(wal.append(&record(7)).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), capacity);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.windows(10).any(|w| w == b"Content 2."),
            "the old record is still there"
        );
        drop(wal);
        assert_eq!(Wal::open(&path).unwrap().1, vec![record(7)]);
    }

    #[test]
    fn a_crash_left_tail_of_the_current_generation_is_not_revived_by_a_later_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (first, second) = {
            let (wal, _) = Wal::open(&path).unwrap();
            let start = wal.end() as usize;
            drop(wal.append(&record(1)).unwrap());
            let first = start..wal.end() as usize;
            drop(wal.append(&record(2)).unwrap());
            (first, wal.end())
        };
        // The crash lost the first record's page but not the second's.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let (wal, found) = Wal::open(&path).unwrap();
        assert!(found.is_empty());
        // Start-up's checkpoint, then a record as long as the lost one.
        wal.checkpoint(|| Ok(())).unwrap();
        drop(wal.append(&record(3)).unwrap());
        assert!(wal.end() < second);
        drop(wal);
        assert_eq!(Wal::open(&path).unwrap().1, vec![record(3)]);
    }

    #[test]
    fn a_log_of_the_appended_format_is_replayed_and_rewritten_and_a_torn_header_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut old = Vec::new();
        for n in 0..3 {
            old.extend_from_slice(&encode_frame(&record(n)).unwrap());
        }
        std::fs::write(&path, &old).unwrap();
        let (wal, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..3).map(record).collect::<Vec<_>>());
        drop(wal.append(&record(3)).unwrap());
        drop(wal);
        // Rewritten, not yet checkpointed: the next start replays them all.
        let (wal, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..4).map(record).collect::<Vec<_>>());
        drop(wal);

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len()] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (wal, found) = Wal::open(&path).unwrap();
        assert!(found.is_empty());
        drop(wal.append(&record(5)).unwrap());
        drop(wal);
        assert_eq!(Wal::open(&path).unwrap().1, vec![record(5)]);
    }

    #[test]
    fn a_clean_close_truncates_the_file_and_takes_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, _) = Wal::open(&path).unwrap();
        drop(wal.append(&record(1)).unwrap());
        assert!(wal.close().is_err(), "records not checkpointed");
        wal.checkpoint(|| Ok(())).unwrap();
        wal.close().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(wal.append(&record(2)).is_err());
        drop(wal);
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }

    #[test]
    fn a_failed_checkpoint_keeps_the_log_and_takes_no_more_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, _) = Wal::open(&path).unwrap();
        drop(wal.append(&record(1)).unwrap());
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(wal.checkpoint(|| Err(io::Error::other("EIO"))).is_err());
        // A later sync that reports success proves nothing about the first.
        assert!(wal.checkpoint(|| Ok(())).is_err());
        assert!(wal.append(&record(2)).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        drop(wal);
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, vec![record(1)], "the restart replays it");
    }

    #[test]
    fn concurrent_writers_share_fdatasyncs_and_a_checkpoint_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, _) = Wal::open(&path).unwrap();
        let wal = Arc::new(wal);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for n in 0..20 {
                        drop(wal.append(&record(w * 100 + n)).unwrap());
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(Wal::open(&path).unwrap().1.len(), 160);
        let mut made_durable = false;
        wal.checkpoint(|| {
            made_durable = true;
            Ok(())
        })
        .unwrap();
        assert!(made_durable);
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }
}
