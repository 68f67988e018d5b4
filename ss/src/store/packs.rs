//! Packed copies: small files a sync copied here, many to a file.
//!
//! ```text
//! <storage>/packs/<n>        copied files (name, metadata, content), one
//!                            CRC-checked frame each, appended a batch at a time
//! <storage>/packs/dropped    the records that no longer count (pack, offset)
//! ```
//!
//! Why: a sync of many small files to an empty backup is bound by the
//! kernel's work for each file, not by the disk or the network: an inode, a
//! directory entry, a data block and an attribute, and their writeback
//! (BENCHMARKS.md, "Issue 15, session 17"). A pack costs one `write` and one
//! `fdatasync` for a whole batch. A packed file is read from its pack. Any
//! change to it other than a newer packed copy first writes it out as a file
//! of its own, durably, and drops its record ([`Store::loosen`]): every
//! other path of the store only ever sees loose files.
//!
//! What keeps this right across crashes:
//! - a record is durable before the file counts as held here;
//! - a pack is only written for names with no loose file and no record in
//!   the write-ahead log (checked again under the file's lock when the copy
//!   is adopted), so a loose file is always newer than any record of its
//!   name: at open, a loose file with its metadata wins and the records of
//!   its name are dropped (a loosening that a crash cut short leaves both);
//! - of several records of one name, the highest stamp wins (of equal
//!   stamps, the later: the same version packed twice);
//! - a record is dropped only once nothing needs it: after its content is
//!   durable as a loose file, or when the file is deleted, durably before
//!   the delete returns; records written and not adopted are dropped
//!   durably before the batch returns, or the server stops
//!   ([`records_left_counting`]);
//! - a pack is never appended to after a restart, so a torn tail (a batch
//!   never acknowledged) is simply cut off; the drop list's torn tail is
//!   truncated before it is appended to.
//!
//! A pack whose records are all dropped is removed. At open, the live
//! records of a pack more than half dead are packed again into a new pack
//! and the old ones dropped ([`Packs::compact`]). A running server does not
//! compact: dead records wait for the next open.

use super::*;
use crate::wal::{decode_frames, encode_frame};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

/// A pack takes batches until it holds this much; then a new one starts.
const PACK_BYTES: u64 = 64 << 20;
/// Largest content packed; larger copies are files of their own.
pub const MAX_PACKED_BYTES: u64 = 1 << 20;
const DROPPED: &str = "dropped";
/// Bytes of records packed again together when a pack is compacted.
const COMPACT_BATCH_BYTES: u64 = 8 << 20;

/// One packed file, as stored.
#[derive(Serialize, Deserialize)]
struct PackRecord {
    file: String,
    meta: FileMeta,
    #[serde(with = "serde_bytes")]
    content: Vec<u8>,
}

/// A record that no longer counts.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Dropped {
    pack: u64,
    at: u64,
}

/// Where a packed file's record lies, and its metadata.
#[derive(Clone, Debug)]
pub struct Packed {
    pack: u64,
    at: u64,
    len: u64,
    pub meta: FileMeta,
}

impl Packed {
    fn id(&self) -> Dropped {
        Dropped {
            pack: self.pack,
            at: self.at,
        }
    }
}

struct Index {
    /// The current record of every packed file.
    files: HashMap<String, Packed>,
    /// Per pack: its file, open for reading, and how many of its records
    /// are not dropped (current, or written and not yet adopted).
    packs: HashMap<u64, (Arc<File>, usize)>,
}

struct Writer {
    /// The pack batches are appended to, its number and size.
    current: Option<(u64, File, u64)>,
    next: u64,
    dropped: File,
    /// A failed write to the drop list may have left a torn frame, after
    /// which nothing appended would be read back: no record is dropped
    /// after it (until a restart truncates the list there).
    failed: Option<String>,
}

/// The packs of one storage folder.
pub(super) struct Packs {
    dir: PathBuf,
    fsync: bool,
    index: Mutex<Index>,
    writer: Mutex<Writer>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records written and not adopted (refused as older or deleted, or of a
/// batch whose write failed) could not be dropped. Left counting, they would
/// come back at the next open, and once the tombstone that refused them is
/// purged, a deleted file would return. Like a database that cannot write
/// its log, the server stops here: at the restart, the tombstones are still
/// there, and the open drops those records again.
fn records_left_counting(e: &io::Error) -> ! {
    tracing::error!(event = "ss_pack_drop_failed", error = %e, "records not adopted could not be dropped; stopping so that the restart drops them");
    eprintln!("ss: records not adopted could not be dropped from a pack ({e}); stopping so that the restart drops them");
    std::process::abort();
}

impl Packs {
    /// Opens (creating) `dir`, reads every pack and the drop list, and keeps
    /// the highest stamp of each name; records it supersedes are dropped.
    pub(super) fn open(dir: &Path, fsync: bool) -> io::Result<Packs> {
        fs::create_dir_all(dir)?;
        let dropped_path = dir.join(DROPPED);
        let mut dropped_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&dropped_path)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut dropped_file, &mut bytes)?;
        let (markers, intact) = decode_frames::<Dropped>(&bytes, "the packs' drop list");
        if intact < bytes.len() as u64 {
            dropped_file.set_len(intact)?;
        }
        let dropped: HashSet<Dropped> = markers.into_iter().map(|(_, d)| d).collect();

        let mut numbers: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let mut files: HashMap<String, Packed> = HashMap::new();
        let mut packs = HashMap::new();
        let mut superseded = Vec::new();
        for &number in &numbers {
            let handle = File::open(dir.join(number.to_string()))?;
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut &handle, &mut bytes)?;
            let (records, _) = decode_frames::<PackRecord>(&bytes, "a pack");
            let mut live = 0;
            for (range, record) in records {
                let packed = Packed {
                    pack: number,
                    at: range.start,
                    len: range.end - range.start,
                    meta: record.meta,
                };
                if dropped.contains(&packed.id()) {
                    continue;
                }
                live += 1;
                // Of equal stamps (the same version packed twice), the later.
                match files.get(&record.file) {
                    Some(held) if held.meta.stats.stamp() > packed.meta.stats.stamp() => {
                        superseded.push(packed)
                    }
                    _ => {
                        if let Some(older) = files.insert(record.file, packed) {
                            superseded.push(older);
                        }
                    }
                }
            }
            packs.insert(number, (Arc::new(handle), live));
        }
        let packs = Packs {
            dir: dir.to_owned(),
            fsync,
            index: Mutex::new(Index { files, packs }),
            writer: Mutex::new(Writer {
                current: None,
                next: numbers.last().map_or(1, |n| n + 1),
                dropped: dropped_file,
                failed: None,
            }),
        };
        packs.mark_dropped(&superseded, true)?;
        packs.forget_markers_of_removed_packs()?;
        Ok(packs)
    }

    /// Removes the packs with no live record left, then rewrites the drop
    /// list (as it is on disk now, markers written since the open included)
    /// without the markers of packs that are gone, when it holds any.
    fn forget_markers_of_removed_packs(&self) -> io::Result<()> {
        let mut writer = lock(&self.writer);
        let mut index = lock(&self.index);
        let empty: Vec<u64> = index
            .packs
            .iter()
            .filter(|(_, (_, live))| *live == 0)
            .map(|(number, _)| *number)
            .collect();
        for number in &empty {
            index.packs.remove(number);
            remove_if_present(&self.dir.join(number.to_string()))?;
        }
        if !empty.is_empty() {
            // Gone for good before their markers are.
            self.sync_dir()?;
        }
        let on_disk = fs::read(self.dir.join(DROPPED))?;
        let dropped: Vec<Dropped> = decode_frames::<Dropped>(&on_disk, "the packs' drop list")
            .0
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let kept: Vec<Dropped> = dropped
            .iter()
            .filter(|d| index.packs.contains_key(&d.pack))
            .copied()
            .collect();
        if kept.len() == dropped.len() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for marker in &kept {
            bytes.extend_from_slice(&encode_frame(marker)?);
        }
        let temp = self.dir.join(format!("{DROPPED}.new"));
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        if self.fsync {
            file.sync_all()?;
        }
        fs::rename(&temp, self.dir.join(DROPPED))?;
        self.sync_dir()?;
        writer.dropped = OpenOptions::new()
            .append(true)
            .open(self.dir.join(DROPPED))?;
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Every packed file with its metadata.
    pub(super) fn all(&self) -> Vec<(String, FileMeta)> {
        lock(&self.index)
            .files
            .iter()
            .map(|(file, packed)| (file.clone(), packed.meta.clone()))
            .collect()
    }

    pub(super) fn get(&self, file: &str) -> Option<Packed> {
        lock(&self.index).files.get(file).cloned()
    }

    /// The content of a packed file's record.
    pub(super) fn read(&self, packed: &Packed) -> io::Result<Vec<u8>> {
        let handle = lock(&self.index)
            .packs
            .get(&packed.pack)
            .map(|(handle, _)| handle.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut frame = vec![0; packed.len as usize];
        handle.read_exact_at(&mut frame, packed.at)?;
        let (mut records, _) = decode_frames::<PackRecord>(&frame, "a pack");
        match records.pop() {
            Some((_, record)) => Ok(record.content),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pack {} has no intact record at {}", packed.pack, packed.at),
            )),
        }
    }

    /// Appends `batch` to the current pack and makes it durable (one write,
    /// one fdatasync). The records count for nothing until adopted
    /// ([`Packs::adopt`]) or dropped ([`Packs::discard`]).
    pub(super) fn append(&self, batch: &[(&str, &FileMeta, &[u8])]) -> io::Result<Vec<Packed>> {
        let mut frames = Vec::with_capacity(batch.len());
        for (file, meta, content) in batch {
            frames.push(encode_frame(&PackRecord {
                file: (*file).to_owned(),
                meta: (*meta).clone(),
                content: content.to_vec(),
            })?);
        }
        let mut writer = lock(&self.writer);
        if writer
            .current
            .as_ref()
            .is_none_or(|(_, _, size)| *size >= PACK_BYTES)
        {
            if let Some((old, _, _)) = writer.current.take() {
                let mut index = lock(&self.index);
                if index.packs.get(&old).is_some_and(|(_, live)| *live == 0) {
                    index.packs.remove(&old);
                    remove_if_present(&self.dir.join(old.to_string()))?;
                }
            }
            let number = writer.next;
            writer.next += 1;
            let path = self.dir.join(number.to_string());
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .append(true)
                .open(&path)?;
            self.sync_dir()?;
            lock(&self.index)
                .packs
                .insert(number, (Arc::new(File::open(&path)?), 0));
            writer.current = Some((number, file, 0));
        }
        let (number, file, size) = writer.current.as_mut().expect("opened above");
        let number = *number;
        let mut bytes = Vec::with_capacity(frames.iter().map(|f| f.len()).sum());
        let mut placed = Vec::with_capacity(frames.len());
        for (frame, (_, meta, _)) in frames.iter().zip(batch) {
            placed.push(Packed {
                pack: number,
                at: *size + bytes.len() as u64,
                len: frame.len() as u64,
                meta: (*meta).clone(),
            });
            bytes.extend_from_slice(frame);
        }
        // Counted before the write: a failed batch's records are dropped
        // below, and each drop takes one away.
        if let Some((_, live)) = lock(&self.index).packs.get_mut(&number) {
            *live += placed.len();
        }
        let written =
            file.write_all(&bytes)
                .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // No batch goes after it. Whatever part of it reached the disk
            // is not adopted, and must not count after a restart either.
            writer.current = None;
            drop(writer);
            if let Err(failed) = self.mark_dropped(&placed, true) {
                records_left_counting(&failed);
            }
            return Err(e);
        }
        *size += bytes.len() as u64;
        Ok(placed)
    }

    /// Makes `packed`, appended for `file`, its current record; the record
    /// it replaces is dropped (not yet durably: of two records of a name,
    /// the higher stamp wins at open).
    /// Called under the file's lock, so nothing else changes its record meanwhile.
    pub(super) fn adopt(&self, file: &str, packed: Packed) -> io::Result<()> {
        let older = lock(&self.index).files.get(file).cloned();
        if let Some(older) = older {
            // Before the new record counts: a later drop of it, durable,
            // must find this marker durable too (same list, written before).
            self.mark_dropped(&[older], false)?;
        }
        lock(&self.index).files.insert(file.to_owned(), packed);
        Ok(())
    }

    /// Packs the live records of every pack more than half dead again (a
    /// copy, durable, then adopted in place of the old record), then drops
    /// the old records durably: those packs go. A crash between leaves two
    /// records of one stamp, of which the open keeps the later.
    pub(super) fn compact(&self) -> io::Result<()> {
        let moving: Vec<(String, Packed)> = {
            let index = lock(&self.index);
            let mut live_bytes: HashMap<u64, u64> = HashMap::new();
            for packed in index.files.values() {
                *live_bytes.entry(packed.pack).or_default() += packed.len;
            }
            let sparse: HashSet<u64> = index
                .packs
                .iter()
                .filter(|(number, (handle, _))| {
                    let size = handle.metadata().map_or(0, |m| m.len());
                    live_bytes.get(number).copied().unwrap_or(0) * 2 < size
                })
                .map(|(number, _)| *number)
                .collect();
            index
                .files
                .iter()
                .filter(|(_, packed)| sparse.contains(&packed.pack))
                .map(|(file, packed)| (file.clone(), packed.clone()))
                .collect()
        };
        if moving.is_empty() {
            return Ok(());
        }
        let mut groups = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, (_, packed)) in moving.iter().enumerate() {
            bytes += packed.len;
            if bytes >= COMPACT_BATCH_BYTES || i + 1 == moving.len() {
                groups.push(&moving[start..=i]);
                start = i + 1;
                bytes = 0;
            }
        }
        for group in groups {
            let contents = group
                .iter()
                .map(|(_, packed)| self.read(packed))
                .collect::<io::Result<Vec<_>>>()?;
            let batch: Vec<(&str, &FileMeta, &[u8])> = group
                .iter()
                .zip(&contents)
                .map(|((file, packed), content)| (file.as_str(), &packed.meta, content.as_slice()))
                .collect();
            for ((file, _), record) in group.iter().zip(self.append(&batch)?) {
                self.adopt(file, record)?;
            }
        }
        self.sync_dropped()?;
        tracing::info!(
            event = "ss_packs_compacted",
            files = moving.len(),
            "packed files moved out of packs mostly dead"
        );
        Ok(())
    }

    fn sync_dropped(&self) -> io::Result<()> {
        if self.fsync {
            lock(&self.writer).dropped.sync_data()?;
        }
        Ok(())
    }

    /// Drops records appended and not adopted, durably. If that fails the
    /// server stops (see [`records_left_counting`]).
    pub(super) fn discard(&self, records: &[Packed]) {
        if let Err(e) = self.mark_dropped(records, true) {
            records_left_counting(&e);
        }
    }

    /// Drops `file`'s record, durably, if it has one; whether it had.
    pub(super) fn drop_file(&self, file: &str) -> io::Result<bool> {
        let Some(packed) = lock(&self.index).files.remove(file) else {
            return Ok(false);
        };
        if let Err(e) = self.mark_dropped(std::slice::from_ref(&packed), true) {
            // Still current until its marker is known durable.
            lock(&self.index).files.insert(file.to_owned(), packed);
            return Err(e);
        }
        Ok(true)
    }

    /// Appends markers for `records` (durably if `durable`), then removes
    /// every pack left without a live record, except the one appended to.
    fn mark_dropped(&self, records: &[Packed], durable: bool) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for record in records {
            bytes.extend_from_slice(&encode_frame(&record.id())?);
        }
        let mut writer = lock(&self.writer);
        if let Some(failed) = &writer.failed {
            return Err(io::Error::other(failed.clone()));
        }
        let mut dropped = &writer.dropped;
        let written = dropped
            .write_all(&bytes)
            .and_then(|()| match durable && self.fsync {
                true => dropped.sync_data(),
                false => Ok(()),
            });
        if let Err(e) = written {
            writer.failed = Some(format!("the packs' drop list failed: {e}"));
            return Err(e);
        }
        let current = writer.current.as_ref().map(|(number, _, _)| *number);
        let mut index = lock(&self.index);
        let mut empty = Vec::new();
        for record in records {
            if let Some((_, live)) = index.packs.get_mut(&record.pack) {
                *live = live.saturating_sub(1);
                if *live == 0 && Some(record.pack) != current {
                    empty.push(record.pack);
                }
            }
        }
        for number in empty {
            index.packs.remove(&number);
            remove_if_present(&self.dir.join(number.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::meta;
    use super::*;

    /// The packs holding a current record.
    fn live_packs(store: &Store) -> Vec<u64> {
        let mut numbers: Vec<u64> = store
            .packs
            .all()
            .iter()
            .map(|(file, _)| store.packs.get(file).unwrap().pack)
            .collect();
        numbers.sort();
        numbers.dedup();
        numbers
    }

    /// Packs and adopts `copies` (name, version, content) as a sync's batch does.
    fn pack(store: &Store, copies: &[(&str, u64, &str)]) {
        let metas: Vec<FileMeta> = copies.iter().map(|(_, v, _)| meta(*v)).collect();
        let batch: Vec<(&str, &FileMeta, &[u8])> = copies
            .iter()
            .zip(&metas)
            .map(|((file, _, content), meta)| (*file, meta, content.as_bytes()))
            .collect();
        for ((file, _, _), record) in copies.iter().zip(store.pack(&batch).unwrap()) {
            assert!(store.may_pack(file).unwrap());
            store.adopt_packed(file, record).unwrap();
        }
    }

    fn names(store: &Store) -> Vec<(String, u64)> {
        store
            .inventory()
            .unwrap()
            .into_iter()
            .map(|(file, meta)| (file, meta.stats.version))
            .collect()
    }

    fn read(store: &Store, file: &str) -> String {
        String::from_utf8(store.read_content(file).unwrap()).unwrap()
    }

    fn pack_files(dir: &Path) -> usize {
        fs::read_dir(dir.join(PACKS))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != DROPPED)
            .count()
    }

    #[test]
    fn packed_files_are_read_listed_and_kept_across_a_restart_with_no_file_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("a", 1, "Alpha."), ("d/b", 2, "Beta.")]);
            assert_eq!(read(&store, "a"), "Alpha.");
            assert!(store.holds("d/b").unwrap());
            assert!(!store.content_path("a").unwrap().exists());
            let mut opened = store.open_content("d/b").unwrap();
            let mut text = String::new();
            io::Read::read_to_string(&mut opened, &mut text).unwrap();
            assert_eq!(text, "Beta.");
            assert_eq!(opened.metadata().unwrap().len(), 5);
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store), [("a".into(), 1), ("d/b".into(), 2)]);
        assert_eq!(read(&store, "d/b"), "Beta.");
        assert_eq!(store.read_meta("a").unwrap(), meta(1));
        assert_eq!(fs::read_dir(dir.path().join(FILES)).unwrap().count(), 0);
    }

    #[test]
    fn every_change_writes_a_packed_file_out_first_and_nothing_packed_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(
                &store,
                &[
                    ("c", 1, "C."),
                    ("m", 1, "M."),
                    ("k", 1, "K."),
                    ("x", 1, "X."),
                    ("s", 1, "S."),
                ],
            );
            store.commit("c", b"C two.", &meta(2)).unwrap();
            assert_eq!(store.read_content_of_undo("c").unwrap(), b"C.");
            store.rename("m", "m2", &meta(2)).unwrap();
            store.checkpoint("k", "v1", &meta(2)).unwrap();
            store.delete("x").unwrap();
            store.write_meta("s", &meta(2)).unwrap();
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(
            names(&store),
            [
                ("c".into(), 2),
                ("k".into(), 2),
                ("m2".into(), 2),
                ("s".into(), 2)
            ]
        );
        assert_eq!(read(&store, "c"), "C two.");
        assert_eq!(read(&store, "m2"), "M.");
        assert_eq!(store.read_checkpoint("k", "v1").unwrap(), b"K.");
        assert_eq!(read(&store, "s"), "S.");
        assert!(store.packs.all().is_empty());
        assert_eq!(
            pack_files(dir.path()),
            0,
            "a pack with no live record is removed"
        );
    }

    #[test]
    fn the_highest_stamp_wins_and_a_delete_brings_back_no_older_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("f", 1, "One."), ("g", 1, "G.")]);
            pack(&store, &[("f", 3, "Three."), ("h", 1, "H.")]);
            assert_eq!(read(&store, "f"), "Three.");
        }
        {
            let store = Store::open(dir.path(), true).unwrap();
            assert_eq!(read(&store, "f"), "Three.");
            store.delete("f").unwrap();
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store), [("g".into(), 1), ("h".into(), 1)]);
    }

    #[test]
    fn records_not_adopted_count_for_nothing_and_a_torn_batch_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("kept", 1, "Kept.")]);
            let m = meta(1);
            let records = store
                .pack(&[("refused", &m, b"Refused.".as_slice())])
                .unwrap();
            store.discard_packed(&records);
            // A batch a crash cut: whole records, then half of one.
            let torn = store
                .pack(&[
                    ("torn1", &m, b"T1.".as_slice()),
                    ("torn2", &m, b"T2.".as_slice()),
                ])
                .unwrap();
            let pack = dir.path().join(PACKS).join(torn[1].pack.to_string());
            let cut = torn[1].at + torn[1].len / 2;
            fs::OpenOptions::new()
                .write(true)
                .open(&pack)
                .unwrap()
                .set_len(cut)
                .unwrap();
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(
            names(&store),
            [("kept".into(), 1), ("torn1".into(), 1)],
            "a record written whole is a version the primary held: harmless"
        );
        pack(&store, &[("after", 1, "After.")]);
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(read(&store, "after"), "After.");
    }

    #[test]
    fn a_loose_file_wins_over_a_record_of_its_name_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("f", 1, "Packed.")]);
            // A loosening cut by a crash before its record was dropped.
            store.create_files("f", &meta(1), Durable::Now).unwrap();
            store
                .commit_files("f", b"Loose.", &meta(1), Durable::Now)
                .unwrap();
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(read(&store, "f"), "Loose.");
        assert!(store.packs.all().is_empty());
        assert!(!store.may_pack("f").unwrap());
        assert!(store
            .adopt_packed(
                "f",
                store
                    .pack(&[("f", &meta(2), b"x".as_slice())])
                    .unwrap()
                    .remove(0)
            )
            .is_err());
    }

    #[test]
    fn a_torn_drop_list_is_cut_before_it_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("a", 1, "A."), ("b", 1, "B."), ("c", 1, "C.")]);
            store.delete("a").unwrap();
        }
        let list = dir.path().join(PACKS).join(DROPPED);
        let mut bytes = fs::read(&list).unwrap();
        bytes.extend_from_slice(&[0, 0, 0]);
        fs::write(&list, &bytes).unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            assert_eq!(names(&store), [("b".into(), 1), ("c".into(), 1)]);
            store.delete("b").unwrap();
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store), [("c".into(), 1)]);
    }

    #[test]
    fn a_pack_mostly_dead_is_compacted_at_open_and_its_live_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<(String, String)> = (0..10)
            .map(|i| (format!("f{i}"), format!("First {i}.")))
            .collect();
        {
            let store = Store::open(dir.path(), true).unwrap();
            let batch: Vec<(&str, u64, &str)> = first
                .iter()
                .map(|(file, text)| (file.as_str(), 1, text.as_str()))
                .collect();
            pack(&store, &batch);
        }
        {
            // Eight of the ten superseded: the first pack is mostly dead.
            let store = Store::open(dir.path(), true).unwrap();
            let newer: Vec<(&str, u64, &str)> = first[..8]
                .iter()
                .map(|(file, _)| (file.as_str(), 2, "Second."))
                .collect();
            pack(&store, &newer);
            assert_eq!(pack_files(dir.path()), 2);
        }
        let packs_before: Vec<u64> = {
            let store = Store::open(dir.path(), true).unwrap();
            let numbers = live_packs(&store);
            assert!(
                !numbers.contains(&1),
                "the first pack's live files moved: {numbers:?}"
            );
            assert_eq!(read(&store, "f9"), "First 9.");
            assert_eq!(read(&store, "f0"), "Second.");
            numbers
        };
        assert!(!dir.path().join(PACKS).join("1").exists());
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store).len(), 10);
        assert_eq!(read(&store, "f8"), "First 8.");
        assert_eq!(read(&store, "f3"), "Second.");
        assert_eq!(live_packs(&store), packs_before, "nothing more to compact");
    }

    /// The markers the open writes for superseded records survive the
    /// rewrite of the drop list that the same open makes.
    #[test]
    fn markers_written_at_open_survive_its_rewrite_of_the_drop_list() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Store::open(dir.path(), true).unwrap();
        pack(&open(), &[("x", 1, "Old."), ("k", 1, "K.")]);
        {
            // A pack whose only record is dropped while it is current.
            let store = open();
            pack(&store, &[("w", 1, "W.")]);
            store.delete("w").unwrap();
        }
        {
            // A newer record of x, written and not adopted (a crash).
            let store = open();
            let m = meta(2);
            store.pack(&[("x", &m, b"New.".as_slice())]).unwrap();
        }
        {
            // The open drops x's old record and removes the empty pack.
            let store = open();
            assert_eq!(read(&store, "x"), "New.");
            store.delete("x").unwrap();
        }
        assert_eq!(names(&open()), [("k".into(), 1)], "the old x came back");
    }

    /// A loosening whose metadata goes apart, cut between the content's
    /// name and the metadata's, leaves content without metadata: the record
    /// still counts.
    #[test]
    fn content_without_metadata_does_not_outrank_a_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("f", 1, "Packed.")]);
        }
        fs::write(dir.path().join(FILES).join("f"), "Packed.").unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store), [("f".into(), 1)]);
        assert_eq!(read(&store, "f"), "Packed.");
        store.commit("f", b"Changed.", &meta(2)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(names(&store), [("f".into(), 2)]);
        assert_eq!(read(&store, "f"), "Changed.");
    }

    /// A batch whose write fails is dropped without taking the records
    /// already adopted in its pack with it.
    #[test]
    fn a_failed_batch_leaves_the_files_already_in_its_pack() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            pack(&store, &[("a", 1, "A."), ("b", 1, "B.")]);
            {
                // The disk refuses the next write.
                let mut writer = lock(&store.packs.writer);
                let (number, _, size) = writer.current.take().unwrap();
                let path = dir.path().join(PACKS).join(number.to_string());
                writer.current = Some((number, File::open(path).unwrap(), size));
            }
            let m = meta(1);
            let batch = [
                ("c", &m, b"C.".as_slice()),
                ("d", &m, b"D.".as_slice()),
                ("e", &m, b"E.".as_slice()),
            ];
            assert!(store.pack(&batch).is_err());
            assert_eq!(read(&store, "a"), "A.");
            pack(&store, &[("f", 1, "F.")]);
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(
            names(&store),
            [("a".into(), 1), ("b".into(), 1), ("f".into(), 1)]
        );
        assert_eq!(read(&store, "b"), "B.");
    }
}
