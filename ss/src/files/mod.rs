//! The files a storage server holds: metadata in memory, sentence locks, and
//! the WRITE sessions that hold them.
//!
//! Each file has its own mutex, so commits to one file are ordered and other
//! files are not held up. A file's parsed [`Document`] stays in memory only
//! while some sentence of it is locked (the sentence ids live there); when the
//! last lock goes, the next WRITE parses the file again.
//!
//! Disk work happens inside these mutexes (it is what orders commits) and is
//! called from async code through `block_in_place`.

mod installs;
mod loading;
mod sessions;

pub use sessions::WriteSession;

use crate::document::{count, insert_words, Document, SentenceId};
use crate::store::{OpenContent, Placed, Placements, Store, StoreError, TempFile};
use shared::proto::{
    AccessList, CheckpointInfo, FileMeta, FileStats, InventoryEntry, StreamedCheckpoint, Tombstone,
};
use shared::{now_ms, ErrorCode, WireError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct Entry {
    meta: FileMeta,
    /// Present while any sentence is locked.
    doc: Option<Document>,
    /// The content on disk, kept with `doc` (only commits change the file
    /// while a sentence is locked): a commit logs it as the undo level
    /// without reading the file again.
    on_disk: Option<Vec<u8>>,
    /// Locked sentence → the session holding it.
    locks: HashMap<SentenceId, u64>,
    /// Set when the file is deleted, for sessions still holding the entry.
    deleted: bool,
    /// Set while the entry only stands for a copy being installed: no
    /// content of it has been placed yet (see [`Files::place_if_newer`]).
    unplaced: bool,
}

type EntryRef = Arc<Mutex<Entry>>;

/// An entry standing for a change of a file this server does not hold (an
/// install, an applied delete) while it looks for a tombstone: the other
/// changes of the name wait on its lock, and find nothing here until it
/// places content.
fn placeholder_entry(meta: FileMeta) -> EntryRef {
    let entry = new_entry(meta);
    lock(&entry).unplaced = true;
    entry
}

/// An entry for a file with this metadata, nothing locked.
fn new_entry(meta: FileMeta) -> EntryRef {
    Arc::new(Mutex::new(Entry {
        meta,
        doc: None,
        on_disk: None,
        locks: HashMap::new(),
        deleted: false,
        unplaced: false,
    }))
}

#[cfg(test)]
thread_local! {
    /// Run by a change of this thread between its lookup of a file's entry
    /// and its lock of it: lets a test act in that window.
    static BETWEEN_LOOKUP_AND_LOCK: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        std::cell::RefCell::new(None);
}

fn between_lookup_and_lock() {
    #[cfg(test)]
    BETWEEN_LOOKUP_AND_LOCK.with(|hook| hook.borrow_mut().as_mut().map(|hook| hook()));
}

fn lock(entry: &EntryRef) -> MutexGuard<'_, Entry> {
    entry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Name(e) => e,
            // Deleted between the lookup and the open.
            StoreError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                WireError::not_found(&format!("file ({io})"))
            }
            other => WireError::internal(other.to_string()),
        }
    }
}

/// A file copied from the other server of the pair, waiting for
/// [`Files::install_batch`].
pub struct Copied {
    pub file: String,
    pub meta: FileMeta,
    pub content: CopyContent,
    pub checkpoints: Vec<(String, TempFile)>,
}

/// Where a copy's content waits: a small one that came whole in memory (it
/// may go into a pack, see `crate::store`'s packs), a large one in a temp file.
pub enum CopyContent {
    InMemory(Vec<u8>),
    Temp(TempFile),
}

impl CopyContent {
    pub fn len(&self) -> u64 {
        match self {
            CopyContent::InMemory(bytes) => bytes.len() as u64,
            CopyContent::Temp(temp) => temp.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<TempFile> for CopyContent {
    fn from(temp: TempFile) -> Self {
        CopyContent::Temp(temp)
    }
}

/// A copy whose content is in a temp file, to be installed as a file of its own.
pub(super) struct LooseCopy {
    file: String,
    meta: FileMeta,
    content: TempFile,
    checkpoints: Vec<(String, TempFile)>,
}

/// A file as a change left it: what the replication stream sends.
#[derive(Debug, Clone)]
pub struct Committed {
    pub meta: FileMeta,
    pub content: Vec<u8>,
}

/// Largest content sent on the replication stream (`crate::stream`);
/// larger files go through nm's jobs (chunked copies that do not hold up
/// small changes). Well under the smallest frame limit a standby may run
/// with, metadata included. Here, not in `stream`, because the changes
/// that may be streamed are decided under the file's lock.
pub const MAX_STREAMED_BYTES: usize = 256 << 10;

/// Batches of fewer copies than this are installed through the write-ahead log.
const LOGGED_INSTALLS: usize = 4;

/// All files of this server.
pub struct Files {
    store: Store,
    /// This server's part in its pair: its epoch is stamped on every change.
    role: Arc<crate::role::PairRole>,
    /// Largest content a WRITE may produce.
    max_file_size: AtomicU64,
    map: Mutex<FileMap>,
    /// Signalled when the start-up scan has loaded every file.
    loaded: Condvar,
    next_session: AtomicU64,
    /// Versions of files whose changes a conflict copy now holds (file,
    /// (epoch, version)): a replica install may replace exactly those.
    conflicts_kept: Mutex<HashSet<(String, (u64, u64))>>,
    /// Batches of copies placed whose names are not durable yet (see
    /// [`Files::install_batch`]): a change skipped as older than one of
    /// them waits for them to be durable before it counts as durable.
    batches_naming: AtomicU64,
}

/// The files in memory, and while the start-up scan runs, what it must not bring back.
///
/// Why a server serves before its scan ends: a standby returning to a pair
/// needs only the few files that changed while it was away, and scanning a
/// million files first would keep the pair degraded for seconds. So a name
/// not in `entries` is looked up on disk until the scan has finished
/// ([`Files::find`]), and the scan adds only names nobody has touched since
/// it began: a name already in `entries` is newer than what it read, and a
/// name in `removed` was deleted or moved away after it read it.
struct FileMap {
    entries: HashMap<String, EntryRef>,
    /// `Some` while the start-up scan runs.
    removed: Option<HashSet<String>>,
}

impl FileMap {
    fn remove(&mut self, file: &str) -> Option<EntryRef> {
        if let Some(removed) = &mut self.removed {
            removed.insert(file.to_owned());
        }
        self.entries.remove(file)
    }
}

/// Files added to the map per lock, when the start-up scan hands them over.
const SCAN_BATCH: usize = 4096;

/// What the start-up scan read from disk.
struct ReadAll {
    found: Vec<crate::store::Found>,
    tombstones: HashMap<String, (u64, u64)>,
}

impl Files {
    fn lock_map(&self) -> MutexGuard<'_, FileMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `file`: from memory, or while the start-up scan runs,
    /// from disk (and then kept in memory).
    fn find(&self, map: &mut FileMap, file: &str) -> Result<Option<EntryRef>, WireError> {
        if let Some(entry) = map.entries.get(file) {
            return Ok(Some(entry.clone()));
        }
        if map.removed.is_none() {
            return Ok(None);
        }
        let Some(found) = self.store.find(file)? else {
            return Ok(None);
        };
        let tombstone = self.store.tombstone(file)?.map(|t| t.stamp());
        let entry = self.admit(found, tombstone)?;
        if let Some(entry) = &entry {
            map.entries.insert(file.to_owned(), entry.clone());
        }
        Ok(entry)
    }

    /// Keeps inodes ready for new files, until [`Files::close`] (see
    /// [`Store::keep_inodes_ready`]).
    pub fn keep_inodes_ready(&self) {
        self.store.keep_inodes_ready()
    }

    /// Makes the inode thread return (join it before [`Files::close`]).
    pub fn stop_making_inodes(&self) {
        self.store.stop_making_inodes()
    }

    /// Stops the store cleanly once no request runs any more and the inode
    /// thread has returned (see [`Store::close`]).
    pub fn close(&self) -> Result<(), StoreError> {
        self.store.close()
    }

    pub fn set_max_file_size(&self, bytes: u64) {
        self.max_file_size.store(bytes, Ordering::Relaxed);
    }

    pub fn max_file_size(&self) -> u64 {
        self.max_file_size.load(Ordering::Relaxed)
    }

    pub fn epoch(&self) -> u64 {
        self.role.epoch()
    }

    fn entry(&self, file: &str) -> Result<EntryRef, WireError> {
        let mut map = self.lock_map();
        self.find(&mut map, file)?
            .ok_or_else(|| WireError::not_found(&format!("file {file:?}")))
    }

    /// `file`'s entry, or a [`placeholder_entry`] with `meta` put in the
    /// map for it.
    fn entry_or_placeholder(
        &self,
        file: &str,
        meta: impl FnOnce() -> FileMeta,
    ) -> Result<EntryRef, WireError> {
        let mut map = self.lock_map();
        if let Some(entry) = self.find(&mut map, file)? {
            return Ok(entry);
        }
        let entry = placeholder_entry(meta());
        map.entries.insert(file.to_owned(), entry.clone());
        Ok(entry)
    }

    /// `entry`, found for `file`, locked if it is still `file`'s and holds
    /// its content. A request that looked the file up just before a DELETE
    /// or MOVE of it took the lock comes after them, and one that found a
    /// copy still being installed comes before it: the file is not found.
    fn lock_current<'a>(
        &self,
        file: &str,
        entry: &'a EntryRef,
    ) -> Result<MutexGuard<'a, Entry>, WireError> {
        between_lookup_and_lock();
        let e = lock(entry);
        if self.is_current(file, entry, &e) && !e.unplaced {
            Ok(e)
        } else {
            Err(WireError::not_found(&format!("file {file:?}")))
        }
    }

    /// What nm compares: the metadata of every file (once the start-up scan
    /// has finished), or of those of `only` held here, and every tombstone.
    pub fn inventory(
        &self,
        only: Option<&[String]>,
    ) -> Result<(Vec<InventoryEntry>, Vec<Tombstone>), WireError> {
        let entries: Vec<(String, EntryRef)> = match only {
            None => self
                .wait_loaded()
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Some(files) => {
                let mut map = self.lock_map();
                files
                    .iter()
                    .filter_map(|file| Some((file.clone(), self.find(&mut map, file).ok()??)))
                    .collect()
            }
        };
        let held = entries
            .into_iter()
            .filter_map(|(file, entry)| {
                let e = lock(&entry);
                (!e.deleted && !e.unplaced).then(|| InventoryEntry {
                    file,
                    meta: e.meta.clone(),
                })
            })
            .collect();
        Ok((held, self.tombstones()?))
    }

    /// This server's storage folder identity (see [`Store::id`]).
    pub fn store_id(&self) -> u64 {
        self.store.id()
    }

    /// Files in memory (while the start-up scan runs, those loaded so far).
    pub fn len(&self) -> usize {
        self.lock_map().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes an empty file; returns its metadata.
    pub fn create(&self, file: &str, owner: &str) -> Result<FileMeta, WireError> {
        self.create_announcing(file, owner, |_| {})
    }

    /// [`Files::create`], calling `durable` with the new file's metadata as
    /// soon as it is durable here (before its files are in place, when
    /// nothing else must happen first); it is called whenever this returns
    /// `Ok`.
    pub fn create_announcing(
        &self,
        file: &str,
        owner: &str,
        durable: impl FnOnce(&FileMeta),
    ) -> Result<FileMeta, WireError> {
        let mut map = self.lock_map();
        if self.find(&mut map, file)?.is_some() {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!("file {file:?} already exists on this server"),
            ));
        }
        let now = now_ms();
        // A name deleted earlier continues its version sequence, so the new
        // file is newer than the delete everywhere it is compared.
        let after_delete = self.store.tombstone(file)?.map_or(0, |t| t.version);
        let epoch = self.epoch();
        let meta = FileMeta {
            owner: owner.to_owned(),
            acl: AccessList::new(),
            checkpoints: Default::default(),
            stats: FileStats {
                version: after_delete + 1,
                epoch,
                base: after_delete,
                created_ms: now,
                modified_ms: now,
                ..FileStats::default()
            },
        };
        // The entry goes into the map locked, and the map is let go while the
        // file is written, so creates of other files proceed meanwhile (and
        // share the write-ahead log's fdatasync); a request for this one
        // waits on the entry until it is on disk.
        let entry = new_entry(meta.clone());
        let e = lock(&entry);
        map.entries.insert(file.to_owned(), entry.clone());
        drop(map);
        let mut durable = Some(durable);
        let mut announce = || {
            if let Some(durable) = durable.take() {
                durable(&meta);
            }
        };
        // Over a tombstone, only once the tombstone is gone too.
        let created = if after_delete > 0 {
            self.store
                .create(file, &meta)
                .and_then(|()| self.store.remove_tombstone(file))
        } else {
            self.store.create_announcing(file, &meta, &mut announce)
        };
        if let Err(err) = created {
            self.forget_unwritten(file, &entry, e);
            return Err(err.into());
        }
        announce();
        drop(e);
        Ok(meta)
    }

    /// Takes a new entry whose file could not be written out of memory
    /// again (unless another has replaced it meanwhile), so this server
    /// never lists a file it does not hold.
    fn forget_unwritten(&self, file: &str, entry: &EntryRef, mut e: MutexGuard<'_, Entry>) {
        e.deleted = true;
        drop(e);
        let mut map = self.lock_map();
        if map
            .entries
            .get(file)
            .is_some_and(|found| Arc::ptr_eq(found, entry))
        {
            map.remove(file);
        }
    }

    /// Deletes a file, leaving a tombstone; returns the (epoch, version,
    /// base) the delete gave it, the rest of the stats zero.
    pub fn delete(&self, file: &str) -> Result<FileStats, WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        refuse_while_written(&e, file, "DELETE")?;
        let mut stats = e.meta.stats.clone();
        stats.bump(self.epoch());
        self.remove_with_tombstone(&mut e, file, stats.stamp(), stats.base)?;
        Ok(FileStats {
            version: stats.version,
            epoch: stats.epoch,
            base: stats.base,
            ..FileStats::default()
        })
    }

    /// Records the tombstone first, so a crash in between finishes the delete at start-up.
    fn remove_with_tombstone(
        &self,
        e: &mut Entry,
        file: &str,
        (epoch, version): (u64, u64),
        base: u64,
    ) -> Result<(), WireError> {
        self.store.write_tombstone(&Tombstone {
            file: file.to_owned(),
            version,
            epoch,
            deleted_ms: now_ms(),
            base,
        })?;
        self.store.delete(file)?;
        e.deleted = true;
        self.lock_map().remove(file);
        Ok(())
    }

    /// Makes sure what made a change unnecessary here (a newer version in
    /// place) is durable, before the change counts as durable: a version a
    /// sync's batch placed is durable only once the batch's names are.
    fn newer_is_durable(&self) -> Result<(), WireError> {
        if self.batches_naming.load(Ordering::SeqCst) > 0 {
            self.store.sync_everything()?;
        }
        Ok(())
    }

    /// Whether `entry`, locked as `e`, is still `file`'s. Between a lookup
    /// and the lock of what it found, the file may have been deleted, moved
    /// to another name, or dropped by an install that failed or found
    /// nothing to do: a change of `file` then looks it up again.
    fn is_current(&self, file: &str, entry: &EntryRef, e: &Entry) -> bool {
        !e.deleted
            && self
                .lock_map()
                .entries
                .get(file)
                .is_some_and(|found| Arc::ptr_eq(found, entry))
    }

    /// A delete made on the primary, applied here at the primary's (epoch, version).
    /// A newer local copy is kept.
    pub fn apply_delete(&self, file: &str, stamp: (u64, u64)) -> Result<(), WireError> {
        shared::names::validate_path(file)?;
        loop {
            // Under the entry's lock even when the file is not here, so an
            // install of an older copy beside it cannot slip past the
            // tombstone.
            let entry = self.entry_or_placeholder(file, || FileMeta {
                owner: String::new(),
                acl: AccessList::new(),
                stats: FileStats {
                    epoch: stamp.0,
                    version: stamp.1,
                    ..FileStats::default()
                },
                checkpoints: Default::default(),
            })?;
            between_lookup_and_lock();
            let mut e = lock(&entry);
            if !self.is_current(file, &entry, &e) {
                continue;
            }
            if e.unplaced {
                // Nothing here (an install that made this entry looks again
                // once it is dropped, and finds the tombstone).
                let written = self.store.write_tombstone(&Tombstone {
                    file: file.to_owned(),
                    version: stamp.1,
                    epoch: stamp.0,
                    deleted_ms: now_ms(),
                    base: 0,
                });
                self.forget_unwritten(file, &entry, e);
                return Ok(written?);
            }
            if e.meta.stats.stamp() > stamp {
                return self.newer_is_durable();
            }
            refuse_while_written(&e, file, "DELETE")?;
            return self.remove_with_tombstone(&mut e, file, stamp, 0);
        }
    }

    pub fn tombstones(&self) -> Result<Vec<Tombstone>, WireError> {
        Ok(self.store.tombstones()?)
    }

    pub fn purge_tombstone(&self, file: &str) -> Result<(), WireError> {
        Ok(self.store.remove_tombstone(file)?)
    }

    /// What a transfer sends: the metadata and an open content, consistent with each other.
    pub fn snapshot(&self, file: &str) -> Result<(FileMeta, OpenContent), WireError> {
        let entry = self.entry(file)?;
        let e = self.lock_current(file, &entry)?;
        Ok((e.meta.clone(), self.store.open_content(file)?))
    }

    /// The checkpoints this server holds for a file (none if it lacks the file).
    pub fn local_checkpoints(&self, file: &str) -> Vec<CheckpointInfo> {
        self.entry(file)
            .map(|entry| lock(&entry).meta.checkpoints.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Puts the previous content back; returns the file as UNDO left it
    /// (for the replication stream).
    pub fn undo(&self, file: &str) -> Result<Committed, WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        refuse_while_written(&e, file, "UNDO")?;
        if !self.store.has_undo(file)? {
            return Err(WireError::new(
                ErrorCode::NothingToUndo,
                format!("{file:?} has no change to undo"),
            ));
        }
        let previous = self.store.read_content_of_undo(file)?;
        let mut meta = e.meta.clone();
        apply_content_stats(&mut meta.stats, &previous, self.epoch());
        self.store.undo(file, &meta)?;
        e.meta = meta;
        Ok(Committed {
            meta: e.meta.clone(),
            content: previous,
        })
    }

    /// Replaces the access list (a change: the version moves on). Returns
    /// the new stats and, for a file the replication stream may carry
    /// (small, without checkpoints), the file as the change left it, read
    /// under the same lock so content and metadata belong together.
    pub fn set_acl(
        &self,
        file: &str,
        acl: AccessList,
    ) -> Result<(FileStats, Option<Committed>), WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        let mut meta = e.meta.clone();
        meta.acl = acl;
        meta.stats.bump(self.epoch());
        self.store.write_meta(file, &meta)?;
        e.meta = meta;
        let streamable = e.meta.stats.size as usize <= MAX_STREAMED_BYTES;
        let committed = match streamable {
            true => self.store.read_content(file).ok().map(|content| Committed {
                meta: e.meta.clone(),
                content,
            }),
            false => None,
        };
        Ok((e.meta.stats.clone(), committed))
    }

    /// Snapshots the content under `tag`.
    /// CHECKPOINT: the current content kept under `tag`. Returns the new
    /// stats and, when it may go on the replication stream (small enough),
    /// the file as the change left it (its content is the checkpoint's).
    pub fn checkpoint(
        &self,
        file: &str,
        tag: &str,
    ) -> Result<(FileStats, Option<Committed>), WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        if e.meta.checkpoints.contains_key(tag) {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!("{file:?} already has a checkpoint {tag:?}"),
            ));
        }
        let mut meta = e.meta.clone();
        meta.checkpoints.insert(
            tag.to_owned(),
            CheckpointInfo {
                tag: tag.to_owned(),
                created_ms: now_ms(),
                size: meta.stats.size,
            },
        );
        meta.stats.bump(self.epoch());
        self.store.checkpoint(file, tag, &meta)?;
        e.meta = meta;
        let committed = match e.meta.stats.size as usize <= MAX_STREAMED_BYTES {
            // Read under the entry's lock: no later change is in it.
            true => self.store.read_content(file).ok().map(|content| Committed {
                meta: e.meta.clone(),
                content,
            }),
            false => None,
        };
        Ok((e.meta.stats.clone(), committed))
    }

    pub fn checkpoints(&self, file: &str) -> Result<Vec<CheckpointInfo>, WireError> {
        let entry = self.entry(file)?;
        let e = self.lock_current(file, &entry)?;
        Ok(e.meta.checkpoints.values().cloned().collect())
    }

    fn known_checkpoint(e: &Entry, file: &str, tag: &str) -> Result<(), WireError> {
        if e.meta.checkpoints.contains_key(tag) {
            Ok(())
        } else {
            Err(WireError::not_found(&format!(
                "checkpoint {tag:?} of {file:?}"
            )))
        }
    }

    /// Opens a checkpoint's content for VIEWCHECKPOINT.
    pub fn open_checkpoint(&self, file: &str, tag: &str) -> Result<OpenContent, WireError> {
        let entry = self.entry(file)?;
        let e = self.lock_current(file, &entry)?;
        Self::known_checkpoint(&e, file, tag)?;
        Ok(self.store.open_checkpoint(file, tag)?)
    }

    /// Makes a checkpoint's content the current one, as one change UNDO can
    /// undo. Returns the file as the change left it.
    pub fn revert(&self, file: &str, tag: &str) -> Result<Committed, WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        refuse_while_written(&e, file, "REVERT")?;
        Self::known_checkpoint(&e, file, tag)?;
        let content = self.store.read_checkpoint(file, tag)?;
        let mut meta = e.meta.clone();
        apply_content_stats(&mut meta.stats, &content, self.epoch());
        self.store.commit(file, &content, &meta)?;
        e.meta = meta;
        Ok(Committed {
            meta: e.meta.clone(),
            content,
        })
    }

    /// Renames a file, keeping its checkpoints and undo level; the old name
    /// leaves a tombstone.
    /// MOVE: the file under its new name (one change: the new name gets
    /// the bumped version, the old name a tombstone at the same stamp).
    /// Returns the new stats, and the file as committed when it may go on
    /// the replication stream (no checkpoints, small enough).
    pub fn rename(
        &self,
        file: &str,
        to: &str,
    ) -> Result<(FileStats, Option<Committed>), WireError> {
        shared::names::validate_path(to)?;
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        refuse_while_written(&e, file, "MOVE")?;
        let mut map = self.lock_map();
        if self.find(&mut map, to)?.is_some() {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!("{to:?} already exists on this server"),
            ));
        }
        let mut meta = e.meta.clone();
        meta.stats.bump(self.epoch());
        // The new name continues the version sequence of a delete of it, as
        // a CREATE does, so the moved file is newer than that delete
        // everywhere it is compared (the backup skipped it, and a restart
        // here finished the delete).
        if let Some(deleted) = self.store.tombstone(to)? {
            if deleted.stamp() >= meta.stats.stamp() {
                meta.stats.version = deleted.version + 1;
            }
            // What the name held up to its delete is no change this file
            // lacks: a partner still holding it from an older epoch is not
            // in conflict with it.
            meta.stats.base = meta.stats.base.max(deleted.version);
        }
        self.store.rename(file, to, &meta)?;
        // The old name is gone: a tombstone tells the backup so.
        self.store.write_tombstone(&Tombstone {
            file: file.to_owned(),
            version: meta.stats.version,
            epoch: meta.stats.epoch,
            deleted_ms: now_ms(),
            base: meta.stats.base,
        })?;
        e.meta = meta;
        if let Some(moved) = map.remove(file) {
            map.entries.insert(to.to_owned(), moved);
        }
        let streamable =
            e.meta.checkpoints.is_empty() && e.meta.stats.size as usize <= MAX_STREAMED_BYTES;
        let committed = if streamable {
            // Read under the entry's lock: no later change is in it.
            self.store.read_content(to).ok().map(|content| Committed {
                meta: e.meta.clone(),
                content,
            })
        } else {
            None
        };
        Ok((e.meta.stats.clone(), committed))
    }

    /// Opens the content for a READ or STREAM and records the access.
    pub fn open_for_read(&self, file: &str, user: &str) -> Result<OpenContent, WireError> {
        let entry = self.entry(file)?;
        let mut e = self.lock_current(file, &entry)?;
        let handle = self.store.open_content(file)?;
        e.meta.stats.accessed_ms = now_ms();
        e.meta.stats.accessed_by = Some(user.to_owned());
        Ok(handle)
    }
}

fn too_large(max: u64) -> WireError {
    WireError::new(
        ErrorCode::TooLarge,
        format!("a file may hold at most {max} bytes (ss --max-file-size); the edit was refused"),
    )
}

fn refuse_while_written(e: &Entry, file: &str, what: &str) -> Result<(), WireError> {
    if e.locks.is_empty() {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Locked,
            format!("{file:?} has a sentence being written; {what} after its ETIRW"),
        ))
    }
}

fn apply_content_stats(stats: &mut FileStats, content: &[u8], epoch: u64) {
    let (words, chars) = count(&String::from_utf8_lossy(content));
    stats.size = content.len() as u64;
    stats.words = words;
    stats.chars = chars;
    stats.bump(epoch);
    stats.modified_ms = now_ms();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, Arc<Files>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        (dir, Arc::new(Files::load(store, Arc::default()).unwrap()))
    }

    #[test]
    fn concurrent_writers_on_different_sentences_both_land() {
        let (_dir, files) = files();
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "One. Two.").unwrap();
        w.commit().unwrap();
        let mut a = files.begin_write("f", 0).unwrap();
        let mut b = files.begin_write("f", 1).unwrap();
        assert_eq!(
            files.begin_write("f", 1).err().unwrap().code,
            ErrorCode::Locked
        );
        a.edit(1, "uno").unwrap();
        b.edit(1, "dos").unwrap();
        b.commit().unwrap();
        a.commit().unwrap();
        assert_eq!(files.store.read_content("f").unwrap(), b"One. uno Two. dos");
    }

    #[test]
    fn dropping_a_session_releases_its_lock_and_loses_its_edits() {
        let (_dir, files) = files();
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "lost").unwrap();
        drop(w);
        let w = files.begin_write("f", 0).unwrap();
        assert_eq!(w.word_count(), 0);
    }

    #[test]
    fn undo_is_one_level_and_refused_while_locked() {
        let (_dir, files) = files();
        files.create("f", "alice").unwrap();
        assert_eq!(files.undo("f").unwrap_err().code, ErrorCode::NothingToUndo);
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "Hello.").unwrap();
        let stats = w.commit().unwrap().meta.stats;
        assert_eq!(stats.version, 2);
        let w = files.begin_write("f", 1).unwrap();
        assert_eq!(files.undo("f").unwrap_err().code, ErrorCode::Locked);
        assert_eq!(files.delete("f").unwrap_err().code, ErrorCode::Locked);
        drop(w);
        let stats = files.undo("f").unwrap().meta.stats;
        assert_eq!((stats.version, stats.size), (3, 0));
        assert_eq!(files.undo("f").unwrap_err().code, ErrorCode::NothingToUndo);
    }

    #[test]
    fn a_commit_beside_another_writers_logs_what_the_file_held_as_its_undo_level() {
        let dir = tempfile::tempdir().unwrap();
        let logged = |dir: &std::path::Path| {
            let store = Store::open(dir, true).unwrap();
            Arc::new(Files::load(store, Arc::default()).unwrap())
        };
        let files = logged(dir.path());
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "One. Two.").unwrap();
        w.commit().unwrap();
        let mut first = files.begin_write("f", 0).unwrap();
        let mut second = files.begin_write("f", 1).unwrap();
        first.edit(1, "more").unwrap();
        first.commit().unwrap();
        second.edit(1, "again").unwrap();
        second.commit().unwrap();
        let read =
            |files: &Files| String::from_utf8(files.store.read_content("f").unwrap()).unwrap();
        let undo = |files: &Files| {
            String::from_utf8(files.store.read_content_of_undo("f").unwrap()).unwrap()
        };
        assert_eq!(read(&files), "One. more Two. again");
        assert_eq!(
            undo(&files),
            "One. more Two.",
            "the first commit's result, not the file before it"
        );
        drop(files);
        // Replayed from the log after a crash: the same undo level.
        let files = logged(dir.path());
        assert_eq!(undo(&files), "One. more Two.");
        assert_eq!(files.undo("f").unwrap().content, b"One. more Two.");
    }

    #[test]
    fn content_written_without_its_metadata_is_caught_up_at_load() {
        // Only metadata kept apart from its content can be cut off from it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap().keeping_meta_apart();
        let files = Arc::new(Files::load(store, Arc::default()).unwrap());
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "One.").unwrap();
        let before = w.commit().unwrap().meta.stats;
        drop(files);
        // A crash after the content's rename, before the metadata's write.
        let content = dir.path().join("files/f");
        std::fs::write(&content, b"One. Two three.").unwrap();
        let meta_time = std::fs::metadata(dir.path().join("meta/f"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&content)
            .unwrap()
            .set_modified(meta_time + std::time::Duration::from_secs(1))
            .unwrap();
        let files = Files::load(Store::open(dir.path(), false).unwrap(), Arc::default()).unwrap();
        let meta = files.inventory(None).unwrap().0.remove(0).meta;
        assert_eq!((meta.stats.size, meta.stats.words), (15, 3));
        assert!(meta.stats.version > before.version);
    }

    #[test]
    fn files_are_served_from_disk_while_the_start_up_scan_runs_and_it_brings_back_nothing_changed_meanwhile(
    ) {
        let (dir, files) = files();
        for name in ["kept", "deleted", "moved", "taken", "written"] {
            files.create(name, "alice").unwrap();
        }
        drop(files);
        let files = Arc::new(Files::open(
            Store::open(dir.path(), false).unwrap(),
            Arc::default(),
        ));
        assert!(!files.is_loaded());
        // The scan reads the disk as it was ...
        let read = files.read_all().unwrap();
        // ... while requests find their files on disk and change them.
        files.delete("deleted").unwrap();
        files.rename("moved", "moved-to").unwrap();
        assert_eq!(
            files.create("taken", "bob").unwrap_err().code,
            ErrorCode::Exists
        );
        let mut w = files.begin_write("written", 0).unwrap();
        w.edit(0, "Now.").unwrap();
        let written = w.commit().unwrap().meta.stats;
        let some = files.inventory(Some(&["kept".into(), "nothing".into()]));
        assert_eq!(some.unwrap().0.len(), 1);
        // What the scan read brings back none of the old state.
        files.add_unchanged(read).unwrap();
        files.finish_loading();
        let all = files.inventory(None).unwrap().0;
        let mut names: Vec<String> = all.into_iter().map(|e| e.file).collect();
        names.sort();
        assert_eq!(names, ["kept", "moved-to", "taken", "written"]);
        let meta = files
            .inventory(Some(&["written".into()]))
            .unwrap()
            .0
            .remove(0)
            .meta;
        assert_eq!(meta.stats.version, written.version);
        assert_eq!(meta.owner, "alice");
    }

    #[test]
    fn a_streamed_change_brings_the_checkpoints_it_made_and_needs_the_others() {
        let (_primary_dir, primary) = files();
        let (_standby_dir, standby) = files();
        let carried = |tag: &str, content: &[u8]| StreamedCheckpoint {
            tag: tag.into(),
            content: serde_bytes::ByteBuf::from(content.to_vec()),
        };
        let install = |c: &Committed, checkpoints: &[StreamedCheckpoint]| {
            standby.install_streamed("f", c.meta.clone(), &c.content, checkpoints, &mut || {})
        };
        primary.create("f", "alice").unwrap();
        let mut w = primary.begin_write("f", 0).unwrap();
        w.edit(0, "Version one.").unwrap();
        install(&w.commit().unwrap(), &[]).unwrap();
        let (_, made) = primary.checkpoint("f", "v1").unwrap();
        let made = made.expect("a small file's checkpoint may be streamed");
        // A later change that overtook the CHECKPOINT is refused: the
        // standby lacks v1 (nm copies the file with it instead).
        let mut w = primary.begin_write("f", 1).unwrap();
        w.edit(0, "Two.").unwrap();
        let later = w.commit().unwrap();
        let refused = install(&later, &[]).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
        // A file new on a standby is refused too, even over a leftover
        // checkpoint of the same name and size.
        let (fresh_dir, fresh) = files();
        let leftover = fresh_dir.path().join("checkpoints/f/v1");
        std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        std::fs::write(&leftover, b"Version two.").unwrap();
        let refused = fresh
            .install_streamed("f", later.meta.clone(), &later.content, &[], &mut || {})
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
        // A checkpoint carried but not named is malformed.
        let mut unnamed = made.clone();
        unnamed.meta.checkpoints.clear();
        assert_eq!(
            install(&unnamed, &[carried("v1", b"x")]).unwrap_err().code,
            ErrorCode::BadRequest
        );
        // In order: the CHECKPOINT brings v1, and later changes name it.
        install(&made, &[carried("v1", &made.content)]).unwrap();
        assert_eq!(
            standby.store.read_checkpoint("f", "v1").unwrap(),
            b"Version one."
        );
        install(&later, &[]).unwrap();
        let reverted = primary.revert("f", "v1").unwrap();
        install(&reverted, &[]).unwrap();
        assert_eq!(standby.store.read_content("f").unwrap(), b"Version one.");
        assert_eq!(standby.store.read_meta("f").unwrap(), reverted.meta);
    }

    /// Runs `change` on a thread of its own, pausing it between its lookup
    /// of the file's entry and its lock of it while `meanwhile` runs.
    fn pause_between_lookup_and_lock(change: impl FnOnce() + Send, meanwhile: impl FnOnce()) {
        use std::sync::mpsc::{channel, Receiver, Sender};
        let (paused, looked_up): (Sender<()>, Receiver<()>) = channel();
        let (go_on, resumed): (Sender<()>, Receiver<()>) = channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut once = Some((paused, resumed));
                BETWEEN_LOOKUP_AND_LOCK.with(|hook| {
                    *hook.borrow_mut() = Some(Box::new(move || {
                        if let Some((paused, resumed)) = once.take() {
                            let _ = paused.send(());
                            let _ = resumed.recv_timeout(std::time::Duration::from_secs(10));
                        }
                    }))
                });
                change();
            });
            // Fails (rather than hangs) if the change never reaches the
            // window.
            looked_up
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the change looked its file up");
            meanwhile();
            let _ = go_on.send(());
        });
    }

    /// Files on a store that fsyncs (and so keeps a write-ahead log).
    fn logged_files(dir: &std::path::Path) -> Files {
        Files::load(Store::open(dir, true).unwrap(), Arc::default()).unwrap()
    }

    /// A batch large enough for [`Files::install_batch`] to place it
    /// outside the log: `first`, then other files, each a copy of `change`.
    fn batch_of(standby: &Files, first: &str, change: &Committed) -> Vec<Copied> {
        (0..LOGGED_INSTALLS)
            .map(|i| {
                let mut content = standby.copy_temp_file().unwrap();
                content.write_all(&change.content).unwrap();
                Copied {
                    file: if i == 0 {
                        first.to_owned()
                    } else {
                        format!("other{i}")
                    },
                    meta: change.meta.clone(),
                    content: content.into(),
                    checkpoints: Vec::new(),
                }
            })
            .collect()
    }

    fn two_versions(primary: &Arc<Files>) -> (Committed, Committed) {
        primary.create("f", "alice").unwrap();
        let mut w = primary.begin_write("f", 0).unwrap();
        w.edit(0, "Older.").unwrap();
        let older = w.commit().unwrap();
        let mut w = primary.begin_write("f", 1).unwrap();
        w.edit(0, "Newer.").unwrap();
        (older, w.commit().unwrap())
    }

    /// Two copies of a file new here installed at once (the stream applies
    /// several changes in parallel, and a sync's pull runs beside it) end at
    /// the newer one, even when the older one made the file's entry and the
    /// newer one took its lock first.
    #[test]
    fn two_installs_of_a_file_new_here_at_once_keep_the_newer() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let (_dir, standby) = files();
        let install = |c: &Committed| {
            standby
                .install_streamed("f", c.meta.clone(), &c.content, &[], &mut || {})
                .unwrap()
        };
        pause_between_lookup_and_lock(|| install(&older), || install(&newer));
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);
        let (held, _) = standby.inventory(None).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].meta, newer.meta);
    }

    /// An install that found the file's entry just before the file was
    /// moved away installs under the name it was given, and leaves the moved
    /// file's metadata alone.
    #[test]
    fn an_install_overtaken_by_a_move_leaves_the_moved_file_alone() {
        let (_primary_dir, primary) = files();
        let (older, _) = two_versions(&primary);
        // Newer than the tombstone the MOVE leaves here.
        let mut w = primary.begin_write("f", 1).unwrap();
        w.edit(0, "Newest.").unwrap();
        let newer = w.commit().unwrap();
        let (_dir, standby) = files();
        standby
            .install_streamed("f", older.meta.clone(), &older.content, &[], &mut || {})
            .unwrap();
        let mut moved = None;
        pause_between_lookup_and_lock(
            || {
                standby
                    .install_streamed("f", newer.meta.clone(), &newer.content, &[], &mut || {})
                    .unwrap()
            },
            || moved = Some(standby.rename("f", "g").unwrap().0),
        );
        let (held, _) = standby.inventory(None).unwrap();
        let meta_of = |file: &str| &held.iter().find(|h| h.file == file).unwrap().meta;
        assert_eq!(meta_of("g").stats, moved.unwrap());
        assert_eq!(standby.store.read_content("g").unwrap(), older.content);
        assert_eq!(meta_of("f"), &newer.meta);
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);
    }

    /// A DELETE that looked the file up just before a MOVE of it took the
    /// file's lock finds nothing under the old name, and leaves the moved
    /// file alone (it used to mark the moved file's entry deleted).
    #[test]
    fn a_delete_overtaken_by_a_move_finds_nothing_and_leaves_the_moved_file_alone() {
        let (_dir, files) = files();
        files.create("f", "alice").unwrap();
        let mut deleted = None;
        pause_between_lookup_and_lock(
            || deleted = Some(files.delete("f")),
            || {
                files.rename("f", "g").unwrap();
            },
        );
        assert_eq!(deleted.unwrap().unwrap_err().code, ErrorCode::NotFound);
        let (held, _) = files.inventory(None).unwrap();
        assert_eq!(
            held.iter().map(|h| h.file.as_str()).collect::<Vec<_>>(),
            ["g"]
        );
        files.open_for_read("g", "alice").unwrap();
    }

    /// A delete of a file this server lacks, applied beside an install of
    /// an older copy, leaves the file deleted whichever goes first: the
    /// delete used to write its tombstone under no lock, after the install
    /// had looked for one.
    #[test]
    fn a_delete_of_a_file_not_here_and_an_older_install_beside_it_leave_it_deleted() {
        let (_primary_dir, primary) = files();
        let (older, _) = two_versions(&primary);
        let deleted_at = primary.delete("f").unwrap();
        let (_dir, standby) = files();
        pause_between_lookup_and_lock(
            || standby.apply_delete("f", deleted_at.stamp()).unwrap(),
            || {
                standby
                    .install_streamed("f", older.meta.clone(), &older.content, &[], &mut || {})
                    .unwrap()
            },
        );
        assert!(standby.inventory(None).unwrap().0.is_empty());
        assert!(!standby.store.content_path("f").unwrap().exists());
        let tombstone = standby.store.tombstone("f").unwrap().unwrap();
        assert_eq!(tombstone.stamp(), deleted_at.stamp());
    }

    /// Deletes applied out of order (the stream applies changes in
    /// parallel) never move a tombstone back, so a copy between them stays
    /// out.
    #[test]
    fn deletes_applied_out_of_order_keep_the_newer_tombstone() {
        let (_primary_dir, primary) = files();
        primary.create("f", "alice").unwrap();
        let first = primary.delete("f").unwrap();
        primary.create("f", "alice").unwrap();
        let mut w = primary.begin_write("f", 0).unwrap();
        w.edit(0, "Between.").unwrap();
        let between = w.commit().unwrap();
        let second = primary.delete("f").unwrap();
        let (_dir, standby) = files();
        standby.apply_delete("f", second.stamp()).unwrap();
        standby.apply_delete("f", first.stamp()).unwrap();
        assert_eq!(
            standby.store.tombstone("f").unwrap().unwrap().stamp(),
            second.stamp()
        );
        standby
            .install_streamed("f", between.meta.clone(), &between.content, &[], &mut || {})
            .unwrap();
        assert!(standby.inventory(None).unwrap().0.is_empty());
        assert!(!standby.store.content_path("f").unwrap().exists());
    }

    /// A request that finds the entry of a copy still being installed finds
    /// no file: it used to write the access list of a file not here, in
    /// `meta/`, where it outlived the install as the file's metadata.
    #[test]
    fn a_request_on_a_copy_still_being_installed_finds_no_file() {
        let (_primary_dir, primary) = files();
        let (_, newer) = two_versions(&primary);
        let (standby_dir, standby) = files();
        let mut refused = None;
        pause_between_lookup_and_lock(
            || {
                standby
                    .install_streamed("f", newer.meta.clone(), &newer.content, &[], &mut || {})
                    .unwrap()
            },
            || {
                let mut acl = AccessList::new();
                acl.insert("bob".into(), shared::proto::Access::Read);
                refused = Some(standby.set_acl("f", acl));
            },
        );
        assert_eq!(refused.unwrap().unwrap_err().code, ErrorCode::NotFound);
        let (held, _) = standby.inventory(None).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].meta, newer.meta);
        assert_eq!(standby.store.read_meta("f").unwrap(), newer.meta);
        assert!(!standby_dir.path().join("meta/f").exists());
    }

    /// A file moved onto a name deleted at a later version than its own is
    /// newer than that delete: the backup installs it, and a restart here
    /// keeps it (it used to finish the delete, removing the moved file).
    #[test]
    fn a_file_moved_onto_a_name_deleted_at_a_later_version_outlives_the_delete() {
        let (dir, files) = files();
        files.create("x", "alice").unwrap();
        for i in 0..5 {
            let mut w = files.begin_write("x", i).unwrap();
            w.edit(0, "More.").unwrap();
            w.commit().unwrap();
        }
        let deleted = files.delete("x").unwrap();
        files.create("y", "alice").unwrap();
        let (moved, committed) = files.rename("y", "x").unwrap();
        assert!(
            moved.stamp() > deleted.stamp(),
            "{moved:?} after {deleted:?}"
        );
        let committed = committed.expect("a small file's MOVE is streamed");

        let (_standby_dir, standby) = self::files();
        standby.apply_delete("x", deleted.stamp()).unwrap();
        standby
            .install_streamed(
                "x",
                committed.meta.clone(),
                &committed.content,
                &[],
                &mut || {},
            )
            .unwrap();
        assert_eq!(standby.inventory(None).unwrap().0.len(), 1);

        drop(files);
        let reopened =
            Files::load(Store::open(dir.path(), false).unwrap(), Arc::default()).unwrap();
        let (held, _) = reopened.inventory(None).unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].file, "x");
        assert_eq!(held[0].meta.stats.stamp(), moved.stamp());
    }

    /// A change found older than a version a sync's batch has placed but
    /// not yet named durably is acknowledged only once the store is flushed:
    /// a power loss before the batch's directory sync would otherwise take
    /// the file back past a change the partner was told is durable here.
    #[test]
    fn a_change_skipped_as_older_than_a_batch_not_yet_named_durably_waits_for_a_flush() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let dir = tempfile::tempdir().unwrap();
        let standby = logged_files(dir.path());
        let install = |c: &Committed| {
            standby
                .install_streamed("f", c.meta.clone(), &c.content, &[], &mut || {})
                .unwrap()
        };
        install(&newer);
        // As while a batch that placed `newer` has not synced its names.
        standby.batches_naming.fetch_add(1, Ordering::SeqCst);
        let flushes = crate::store::syncfs_calls();
        install(&older);
        standby.apply_delete("f", (0, 1)).unwrap();
        assert_eq!(crate::store::syncfs_calls() - flushes, 2);
        standby.batches_naming.fetch_sub(1, Ordering::SeqCst);
        let flushes = crate::store::syncfs_calls();
        install(&older);
        assert_eq!(crate::store::syncfs_calls(), flushes, "no batch: no flush");
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);
    }

    /// A failed `syncfs` is kept: a retry could succeed although what the
    /// failed one should have written was dropped (see the store's
    /// `FileSystemSync`). Until a restart, nothing that needs one is
    /// accepted.
    #[test]
    fn a_failed_flush_fails_every_later_change_that_needs_one() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let dir = tempfile::tempdir().unwrap();
        let standby = logged_files(dir.path());
        let install = |c: &Committed| {
            standby.install_streamed("f", c.meta.clone(), &c.content, &[], &mut || {})
        };
        install(&newer).unwrap();
        // As while a batch that placed `newer` has not synced its names.
        standby.batches_naming.fetch_add(1, Ordering::SeqCst);
        crate::store::fail_next_syncfs();
        assert!(
            install(&older).is_err(),
            "the newer version is not known durable"
        );
        assert!(install(&older).is_err(), "nor after a retry");
        assert!(standby.apply_delete("f", (0, 1)).is_err());
        standby.batches_naming.fetch_sub(1, Ordering::SeqCst);
        assert!(standby.store.sync_everything().is_err());
        drop(standby);
        let restarted = logged_files(dir.path());
        restarted.store.sync_everything().unwrap();
        assert_eq!(restarted.store.read_content("f").unwrap(), newer.content);
    }

    /// A copy of a file whose new metadata no longer names a checkpoint
    /// (the name was deleted and created again) removes that checkpoint once
    /// the copy is durable, on the stream and in a sync's batch alike.
    #[test]
    fn a_copy_that_drops_a_checkpoint_removes_it_once_in_place() {
        let (_primary_dir, primary) = files();
        primary.create("f", "alice").unwrap();
        let mut w = primary.begin_write("f", 0).unwrap();
        w.edit(0, "Kept.").unwrap();
        w.commit().unwrap();
        let (_, made) = primary.checkpoint("f", "v1").unwrap();
        let made = made.unwrap();
        primary.delete("f").unwrap();
        primary.create("f", "alice").unwrap();
        let mut w = primary.begin_write("f", 0).unwrap();
        w.edit(0, "Anew.").unwrap();
        let anew = w.commit().unwrap();
        let carried = [StreamedCheckpoint {
            tag: "v1".into(),
            content: serde_bytes::ByteBuf::from(made.content.clone()),
        }];
        for batch in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let standby = logged_files(dir.path());
            standby
                .install_streamed("f", made.meta.clone(), &made.content, &carried, &mut || {})
                .unwrap();
            assert!(standby
                .store
                .has_checkpoint("f", "v1", made.content.len() as u64)
                .unwrap());
            if batch {
                let copies = batch_of(&standby, "f", &anew);
                assert!(standby.install_batch(copies).iter().all(Result::is_ok));
            } else {
                standby
                    .install_streamed("f", anew.meta.clone(), &anew.content, &[], &mut || {})
                    .unwrap();
            }
            assert_eq!(standby.store.read_content("f").unwrap(), anew.content);
            assert!(
                !standby
                    .store
                    .has_checkpoint("f", "v1", made.content.len() as u64)
                    .unwrap(),
                "batch: {batch}"
            );
        }
    }

    /// A sync's copy placed after the stream logged an older change of the
    /// same file (the batch checkpointed the log before that change came)
    /// outlives the log's replay after a kill: the batch checkpoints the log
    /// again before placing a file it holds a record of. The replay used to
    /// take the file back to the logged, older version.
    #[test]
    fn a_sync_copy_placed_after_an_older_streamed_change_was_logged_outlives_the_replay() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let dir = tempfile::tempdir().unwrap();
        {
            let standby = logged_files(dir.path());
            let copies = batch_of(&standby, "f", &newer);
            pause_between_lookup_and_lock(
                || assert!(standby.install_batch(copies).iter().all(Result::is_ok)),
                || {
                    standby
                        .install_streamed("f", older.meta.clone(), &older.content, &[], &mut || {})
                        .unwrap()
                },
            );
            assert_eq!(standby.store.read_content("f").unwrap(), newer.content);
            // Killed: dropped without a checkpoint of the log.
        }
        let reopened = logged_files(dir.path());
        assert_eq!(reopened.store.read_content("f").unwrap(), newer.content);
        assert_eq!(reopened.store.read_meta("f").unwrap(), newer.meta);
    }

    /// A checkpoint file the metadata does not name (left by a crash, or a
    /// stale one not yet removed) does not stop a CHECKPOINT of that tag.
    #[test]
    fn a_checkpoint_over_a_leftover_file_of_its_tag_replaces_it() {
        let (dir, files) = files();
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "Now.").unwrap();
        w.commit().unwrap();
        let leftover = dir.path().join("checkpoints/f/t");
        std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        std::fs::write(&leftover, b"Left over.").unwrap();
        files.checkpoint("f", "t").unwrap();
        assert_eq!(files.store.read_checkpoint("f", "t").unwrap(), b"Now.");
    }

    /// A file moved onto a name deleted in a later epoch than a partner's
    /// copy of the old file is no conflict with that copy: the name's
    /// history up to the delete is behind it, as for a CREATE.
    #[test]
    fn a_file_moved_onto_a_deleted_name_is_no_conflict_with_the_old_file_a_partner_holds() {
        let primary_dir = tempfile::tempdir().unwrap();
        let role = Arc::new(crate::role::PairRole::default());
        let primary = Arc::new(
            Files::load(
                Store::open(primary_dir.path(), false).unwrap(),
                role.clone(),
            )
            .unwrap(),
        );
        primary.create("x", "alice").unwrap();
        let mut old = None;
        for i in 0..3 {
            let mut w = primary.begin_write("x", i).unwrap();
            w.edit(0, "Old.").unwrap();
            old = Some(w.commit().unwrap());
        }
        let old = old.unwrap();
        let (_standby_dir, standby) = files();
        standby
            .install_streamed("x", old.meta.clone(), &old.content, &[], &mut || {})
            .unwrap();
        role.set(crate::role::Part {
            epoch: 1,
            serving: true,
            writable: true,
        })
        .unwrap();
        primary.delete("x").unwrap();
        primary.create("y", "alice").unwrap();
        let (_, moved) = primary.rename("y", "x").unwrap();
        let moved = moved.unwrap();
        // The standby has not applied the delete yet.
        standby
            .install_streamed("x", moved.meta.clone(), &moved.content, &[], &mut || {})
            .unwrap();
        assert_eq!(standby.store.read_meta("x").unwrap(), moved.meta);
    }

    /// A sync's batch counts as naming from its first placement until its
    /// names are durable, so a change skipped meanwhile as older waits for
    /// a flush; and not after.
    #[test]
    fn a_batch_counts_as_naming_from_its_first_placement_until_its_names_are_durable() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let dir = tempfile::tempdir().unwrap();
        let standby = logged_files(dir.path());
        let copies = batch_of(&standby, "f1", &newer);
        pause_between_lookup_and_lock(
            || assert!(standby.install_batch(copies).iter().all(Result::is_ok)),
            || assert_eq!(standby.batches_naming.load(Ordering::SeqCst), 1),
        );
        assert_eq!(standby.batches_naming.load(Ordering::SeqCst), 0);
        let flushes = crate::store::syncfs_calls();
        standby
            .install_streamed("f1", older.meta.clone(), &older.content, &[], &mut || {})
            .unwrap();
        assert_eq!(crate::store::syncfs_calls(), flushes);
    }

    #[test]
    fn checkpoints_revert_and_rename() {
        let (_dir, files) = files();
        files.create("f", "alice").unwrap();
        let mut w = files.begin_write("f", 0).unwrap();
        w.edit(0, "Version one.").unwrap();
        w.commit().unwrap();
        files.checkpoint("f", "v1").unwrap();
        assert_eq!(
            files.checkpoint("f", "v1").unwrap_err().code,
            ErrorCode::Exists
        );
        let mut w = files.begin_write("f", 1).unwrap();
        w.edit(0, "Two.").unwrap();
        w.commit().unwrap();
        let reverted = files.revert("f", "v1").unwrap();
        assert_eq!(files.store.read_content("f").unwrap(), b"Version one.");
        assert_eq!(reverted.content, b"Version one.");
        assert_eq!(reverted.meta.stats.words, 2);
        files.undo("f").unwrap();
        assert_eq!(files.store.read_content("f").unwrap(), b"Version one. Two.");
        assert_eq!(
            files.revert("f", "nope").unwrap_err().code,
            ErrorCode::NotFound
        );
        files.rename("f", "dir/g").unwrap();
        assert_eq!(files.entry("f").err().unwrap().code, ErrorCode::NotFound);
        let list = files.checkpoints("dir/g").unwrap();
        assert_eq!(list.len(), 1);
        let mut content = String::new();
        std::io::Read::read_to_string(
            &mut files.open_checkpoint("dir/g", "v1").unwrap(),
            &mut content,
        )
        .unwrap();
        assert_eq!(content, "Version one.");
        let reloaded =
            Files::load(Store::open(_dir.path(), false).unwrap(), Arc::default()).unwrap();
        let inventory = reloaded.inventory(None).unwrap().0;
        assert_eq!(inventory.len(), 1);
        assert_eq!(inventory[0].file, "dir/g");
        files.delete("dir/g").unwrap();
        assert!(!_dir.path().join("checkpoints/dir/g").exists());
    }

    /// Copies that came whole, as a sync's pull hands them over.
    fn in_memory(copies: &[(&str, &Committed)]) -> Vec<Copied> {
        copies
            .iter()
            .map(|(file, c)| Copied {
                file: (*file).to_owned(),
                meta: c.meta.clone(),
                content: CopyContent::InMemory(c.content.clone()),
                checkpoints: Vec::new(),
            })
            .collect()
    }

    /// A sync's small copies of files new here go into a pack: served from
    /// it, never replaced by an older copy, written out by their first
    /// change, and after a restart each file is as the last change left it.
    #[test]
    fn small_copies_go_into_a_pack_and_every_change_after_is_kept_across_a_restart() {
        let (_primary_dir, primary) = files();
        let (older, newer) = two_versions(&primary);
        let dir = tempfile::tempdir().unwrap();
        let standby = Arc::new(logged_files(dir.path()));
        let batch = in_memory(&[
            ("f", &newer),
            ("p1", &older),
            ("p2", &older),
            ("p3", &older),
        ]);
        assert!(standby.install_batch(batch).iter().all(Result::is_ok));
        assert!(!standby.store.content_path("f").unwrap().exists(), "packed");
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);

        // An older copy changes nothing; its record is dropped.
        let batch = in_memory(&[
            ("f", &older),
            ("q1", &older),
            ("q2", &older),
            ("q3", &older),
        ]);
        assert!(standby.install_batch(batch).iter().all(Result::is_ok));
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);

        let mut w = standby.begin_write("p1", 1).unwrap();
        w.edit(0, "Written.").unwrap();
        let written = w.commit().unwrap();
        assert!(
            standby.store.content_path("p1").unwrap().exists(),
            "loosened"
        );
        standby.delete("p2").unwrap();
        drop(standby);

        let standby = logged_files(dir.path());
        let (held, _) = standby.inventory(None).unwrap();
        let mut held: Vec<(String, u64)> = held
            .into_iter()
            .map(|h| (h.file, h.meta.stats.version))
            .collect();
        held.sort();
        let v = |c: &Committed| c.meta.stats.version;
        assert_eq!(
            held,
            [
                ("f".into(), v(&newer)),
                ("p1".into(), v(&written)),
                ("p3".into(), v(&older)),
                ("q1".into(), v(&older)),
                ("q2".into(), v(&older)),
                ("q3".into(), v(&older)),
            ]
        );
        assert_eq!(standby.store.read_content("f").unwrap(), newer.content);
        assert_eq!(standby.store.read_content("p1").unwrap(), written.content);
    }
}
