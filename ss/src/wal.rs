//! The storage server's write-ahead log: what makes a CREATE or a WRITE
//! durable with one fdatasync instead of five.
//!
//! ```text
//! <storage>/wal.log   records since the last checkpoint, in length-delimited
//!                     frames, each a CRC-32 and a MessagePack record
//! ```
//!
//! A change is appended here and fdatasynced, then applied to the files
//! (temp file, rename) *without* an fsync, then acknowledged. Writers that
//! arrive while an fdatasync runs share the next one (group commit). A
//! checkpoint makes everything applied durable with one `syncfs` and empties
//! the log; it runs before any change that does not go through the log
//! (delete, rename, checkpoint, replica installs, …), when the log passes
//! [`CHECKPOINT_BYTES`], and at start-up after the log is replayed. Replaying
//! rewrites every logged file whole, so whatever a crash left of an applied
//! but unsynced change is replaced; a torn last record was never acknowledged
//! and is cut off.
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
use shared::connection::frame_codec;
use shared::proto::FileMeta;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tokio_util::codec::{Decoder, Encoder};

/// The log is checkpointed once it holds this much.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Largest new-plus-previous content logged; larger changes bypass the log.
pub const MAX_LOGGED_BYTES: usize = 4 << 20;
/// Largest frame read back (a record of [`MAX_LOGGED_BYTES`] plus its metadata).
const MAX_FRAME: usize = MAX_LOGGED_BYTES + (1 << 20);

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

/// A record as framed on disk: the CRC-32 of its MessagePack bytes, and the bytes.
#[derive(Serialize, Deserialize)]
struct Envelope {
    crc: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

struct Log {
    /// Appended to under the lock.
    file: File,
    /// Bytes in the log.
    size: u64,
    /// Records written, and records known durable.
    written: u64,
    synced: u64,
    /// Whether a writer is running the fdatasync for everyone.
    syncing: bool,
    /// A failed write or fdatasync poisons the log: nothing is acknowledged after it.
    failed: Option<String>,
    /// The files the log holds a record of (see [`Wal::holds`]).
    files: HashSet<String>,
}

/// The log of one storage folder.
pub struct Wal {
    log: Mutex<Log>,
    /// The same file, fdatasynced outside the lock so writers can append meanwhile.
    sync_handle: File,
    synced: Condvar,
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
        let records = decode_all(&bytes);
        file.seek(io::SeekFrom::End(0))?;
        let size = bytes.len() as u64;
        let sync_handle = file.try_clone()?;
        let wal = Wal {
            sync_handle,
            log: Mutex::new(Log {
                file,
                size,
                written: 0,
                synced: 0,
                syncing: false,
                failed: None,
                files: records.iter().map(|r| r.file().to_owned()).collect(),
            }),
            synced: Condvar::new(),
            applying: RwLock::new(()),
        };
        Ok((wal, records))
    }

    /// Appends `record` and returns once it is durable, sharing the
    /// fdatasync with every writer that arrived meanwhile.
    pub fn append(&self, record: &WalRecord) -> io::Result<Logged<'_>> {
        self.write(record)?.durable()
    }

    /// Appends `record` without waiting for it to be durable: the caller
    /// may do other work meanwhile, then waits with [`Written::durable`].
    pub fn write(&self, record: &WalRecord) -> io::Result<Written<'_>> {
        let frame = encode_frame(record)?;
        let applying = self.applying.read().unwrap_or_else(|p| p.into_inner());
        let mut log = lock(&self.log);
        if let Some(failed) = &log.failed {
            return Err(io::Error::other(failed.clone()));
        }
        if let Err(e) = log.file.write_all(&frame) {
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
                log = wal.synced.wait(log).unwrap_or_else(|p| p.into_inner());
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
            wal.synced.notify_all();
        }
    }
}

impl Wal {
    /// Whether the log holds a record of `file`: its replay would rewrite
    /// the file at that record's version.
    pub fn holds(&self, file: &str) -> bool {
        lock(&self.log).files.contains(file)
    }

    /// Whether the log has grown past [`CHECKPOINT_BYTES`].
    pub fn wants_checkpoint(&self) -> bool {
        lock(&self.log).size >= CHECKPOINT_BYTES
    }

    /// Empties the log once `make_durable` has made every applied change
    /// durable. Waits for changes being applied; does nothing if the log is empty.
    pub fn checkpoint(&self, make_durable: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let _exclusive = self.applying.write().unwrap_or_else(|p| p.into_inner());
        {
            let log = lock(&self.log);
            if let Some(failed) = &log.failed {
                return Err(io::Error::other(failed.clone()));
            }
            if log.size == 0 {
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
        log.file.set_len(0)?;
        log.file.seek(io::SeekFrom::Start(0))?;
        log.file.sync_all()?;
        log.size = 0;
        log.files.clear();
        Ok(())
    }
}

/// `record` as a frame on disk: length-delimited, a CRC-32 of its
/// MessagePack bytes and the bytes (also the framing of `crate::store`'s packs).
pub(crate) fn encode_frame<T: Serialize>(record: &T) -> io::Result<BytesMut> {
    let body = rmp_serde::to_vec_named(record)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let envelope = rmp_serde::to_vec_named(&Envelope {
        crc: crc32fast::hash(&body),
        body,
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut frame = BytesMut::new();
    frame_codec(MAX_FRAME).encode(bytes::Bytes::from(envelope), &mut frame)?;
    Ok(frame)
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
    let mut buf = BytesMut::from(bytes);
    let mut codec = frame_codec(MAX_FRAME);
    let mut records = Vec::new();
    let total = bytes.len() as u64;
    loop {
        let start = total - buf.len() as u64;
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(event = "ss_wal_torn", what, error = %e, "ends in a damaged frame; cut off");
                return (records, start);
            }
        };
        let end = total - buf.len() as u64;
        let record = rmp_serde::from_slice::<Envelope>(&frame)
            .ok()
            .filter(|envelope| crc32fast::hash(&envelope.body) == envelope.crc)
            .and_then(|envelope| rmp_serde::from_slice::<T>(&envelope.body).ok());
        match record {
            Some(record) => records.push((start..end, record)),
            None => {
                tracing::warn!(
                    event = "ss_wal_torn",
                    what,
                    "a record fails its checksum; cut off there"
                );
                return (records, start);
            }
        }
    }
    if !buf.is_empty() {
        tracing::warn!(
            event = "ss_wal_torn",
            what,
            bytes = buf.len(),
            "incomplete last record (crash while writing); cut off"
        );
    }
    let intact = total - buf.len() as u64;
    (records, intact)
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
        {
            let (wal, found) = Wal::open(&path).unwrap();
            assert!(found.is_empty());
            for n in 0..5 {
                drop(wal.append(&record(n)).unwrap());
            }
        }
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..4).map(record).collect::<Vec<_>>());

        // A flipped byte inside the last (whole) record fails its checksum.
        let mut flipped = whole.clone();
        let at = flipped.len() - 2;
        flipped[at] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, (0..4).map(record).collect::<Vec<_>>());
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
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }
}
