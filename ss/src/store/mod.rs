//! The on-disk layout of a storage server, and the only code that writes it.
//!
//! ```text
//! <storage>/files/<path>   the content, with owner, access list and stats in
//!                          its extended attribute `user.meta` (see [`attrs`])
//! <storage>/meta/<path>    the same (MessagePack) when a change of metadata
//!                          alone came after the content's, or the metadata is
//!                          too large for an attribute (see [`attrs`])
//! <storage>/undo/<path>    the content before the last change (one level)
//! <storage>/checkpoints/<path>/<tag>   named snapshots of the content
//! <storage>/tombstones/<path>          deleted files not yet purged (version, time)
//! <storage>/tmp/           temp files and spare inodes for reuse, emptied at start-up
//! <storage>/wal.log        CREATEs and commits not yet checkpointed (see [`crate::wal`])
//! <storage>/packs/         small files a sync copied in, many to a file, until
//!                          first changed (see [`packs`])
//! <storage>/store-id       this folder's identity, chosen at random when it is first opened
//! ```
//!
//! With fsync on, a CREATE or a commit is made durable by the write-ahead log
//! and then written as below without fsyncs; a checkpoint (`syncfs`) makes
//! those writes durable before any other kind of change, and a restart
//! replays the log. Every other write goes to a temp file, is fsynced and renamed into place, and the
//! directory is fsynced (for a batch of copies: one `syncfs` for all the temp
//! files, then the names, then another `syncfs`, which also writes the link
//! counts of the unnamed inodes named only then), so a crash leaves either the old or the new file,
//! never a torn one. A content file is never modified in place, only
//! replaced, so UNDO levels and checkpoints are hard links to old contents. Names are validated by [`shared::names`] before they are
//! joined under the storage folder, so nothing is ever written outside it.

mod atomic;
mod attrs;
mod inodes;
mod packs;
mod redo;
mod scan;
mod tombstones;

use atomic::{exchange, Durable, FileSystemSync};
#[cfg(test)]
pub use atomic::{fail_next_syncfs, syncfs_calls};
pub use atomic::{Placed, Placements, TempFile};
pub use packs::{Packed, MAX_PACKED_BYTES};
pub use scan::Found;

use crate::wal::{Wal, WalRecord, MAX_LOGGED_BYTES};
use shared::names::validate_path;
use shared::proto::{FileMeta, Tombstone};
use shared::WireError;
use std::collections::BTreeSet;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A storage folder.
pub struct Store {
    root: PathBuf,
    fsync: bool,
    temp_counter: AtomicU64,
    /// Temp files in `tmp/` whose inodes were displaced by a replacement and
    /// are kept for the next temp file, so that steady-state changes neither
    /// allocate nor free inodes (see [`Store::replace`]).
    spares: Mutex<Vec<PathBuf>>,
    /// Displaced contents waiting to be emptied by the inode thread before
    /// they become spares.
    displaced: Mutex<Vec<PathBuf>>,
    /// Unnamed inodes (`O_TMPFILE` in `tmp/`) made ahead by
    /// [`Store::keep_inodes_ready`], for temp files when no spare is left.
    unnamed: Mutex<Vec<File>>,
    /// Signalled when unnamed inodes run below [`UNNAMED_LOW`].
    unnamed_low: std::sync::Condvar,
    /// Set once a temp file was taken after the open: only then are inodes
    /// made ahead. A backup that only takes a sync's packed copies never
    /// needs one, and on a disk whose allocator is slow (after mass
    /// deletions) making 256 would take a core for a fifth of a second just
    /// as the sync starts (BENCHMARKS.md, "Issue 15, session 18").
    unnamed_wanted: std::sync::atomic::AtomicBool,
    /// Set by [`Store::close`]: the thread that makes inodes ahead returns.
    closing: std::sync::atomic::AtomicBool,
    /// Inodes open for reading (READ, STREAM, transfers), with how many
    /// handles each: these are never recycled.
    readers: Arc<Mutex<HashMap<u64, usize>>>,
    /// The write-ahead log (with fsync on): CREATEs and commits are durable
    /// once logged; see [`crate::wal`].
    wal: Option<Wal>,
    /// This folder's identity (see [`Store::id`]).
    id: u64,
    /// Whether the file system keeps extended attributes: if not, every
    /// file's metadata is in `meta/` (see [`attrs`]).
    attrs: bool,
    /// The names that may have a tombstone: a superset of `tombstones/`
    /// (see [`Store::tombstone`]).
    tombstoned: Mutex<HashSet<String>>,
    /// Held by a tombstone's write or removal, disk and set together.
    tombstone_writes: Mutex<()>,
    /// Files a sync copied in and nothing has changed since (see [`packs`]).
    packs: packs::Packs,
    /// Every `syncfs` goes through it (see [`FileSystemSync`]).
    file_system: FileSystemSync,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] WireError),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt metadata for {file}: {error}")]
    Meta { file: String, error: String },
}

const FILES: &str = "files";
const META: &str = "meta";
const UNDO: &str = "undo";
const TMP: &str = "tmp";
const CHECKPOINTS: &str = "checkpoints";
const TOMBSTONES: &str = "tombstones";
const WAL: &str = "wal.log";
const PACKS: &str = "packs";
/// The file holding a storage folder's identity (see [`Store::id`]).
pub const STORE_ID: &str = "store-id";

/// A content (or checkpoint) open for reading. It keeps seeing the version
/// it opened, even if a commit replaces the file meanwhile: its inode is
/// registered and never recycled while the handle lives.
pub struct OpenContent {
    file: File,
    inode: u64,
    readers: Arc<Mutex<HashMap<u64, usize>>>,
}

impl OpenContent {
    pub fn metadata(&self) -> io::Result<fs::Metadata> {
        self.file.metadata()
    }

    /// The open file itself, for `sendfile` and positioned reads (a
    /// content is never changed in place, so it reads the same throughout).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl io::Read for OpenContent {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for OpenContent {
    fn drop(&mut self) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = readers.get_mut(&self.inode) {
            *count -= 1;
            if *count == 0 {
                readers.remove(&self.inode);
            }
        }
    }
}

/// Spare inodes kept for reuse, and the largest file kept as one (a larger
/// one would hold its disk space until it is reused).
const MAX_SPARES: usize = 1024;
/// [`Store::keep_inodes_ready`] tops the unnamed inodes up to
/// `UNNAMED_READY` when fewer than `UNNAMED_LOW` are left.
const UNNAMED_LOW: usize = 64;
const UNNAMED_READY: usize = 256;
const SPARE_MAX_BYTES: u64 = 1 << 20;
/// Displaced contents wait until there are this many before the inode
/// thread is woken to empty them (see [`Store::keep_spare`]).
const DISPLACED_BATCH: usize = 32;

impl Store {
    /// Opens (creating if needed) a storage folder and removes leftover temp files.
    pub fn open(root: &Path, fsync: bool) -> Result<Self, StoreError> {
        for dir in [FILES, META, UNDO, TMP, CHECKPOINTS, TOMBSTONES] {
            fs::create_dir_all(root.join(dir))?;
        }
        for leftover in fs::read_dir(root.join(TMP))? {
            let path = leftover?.path();
            tracing::info!(event = "ss_tmp_cleanup", path = %path.display(), "removed a leftover temp file");
            fs::remove_file(path)?;
        }
        let mut store = Store {
            root: root.to_owned(),
            fsync,
            temp_counter: AtomicU64::new(0),
            spares: Mutex::new(Vec::new()),
            displaced: Mutex::new(Vec::new()),
            unnamed: Mutex::new(Vec::new()),
            unnamed_low: std::sync::Condvar::new(),
            unnamed_wanted: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            readers: Arc::default(),
            wal: None,
            id: 0,
            attrs: attrs::supported(&root.join(TMP))?,
            tombstoned: Mutex::new(Store::tombstone_names(root)?),
            tombstone_writes: Mutex::new(()),
            packs: packs::Packs::open(&root.join(PACKS), fsync)?,
            file_system: FileSystemSync::open(root)?,
        };
        store.id = store.load_or_create_id()?;
        if fsync {
            let (wal, logged) = Wal::open(&root.join(WAL))?;
            for record in &logged {
                store.redo(record)?;
            }
            if !logged.is_empty() {
                tracing::info!(
                    event = "ss_wal_replayed",
                    records = logged.len(),
                    "changes logged before a crash were applied again"
                );
            }
            store.wal = Some(wal);
            store.barrier()?;
        }
        store.drop_records_of_loose_files()?;
        // Only space is at stake: a failure (a full disk) is no reason not to serve.
        if let Err(e) = store.packs.compact() {
            tracing::warn!(event = "ss_packs_compact_failed", error = %e, "packs mostly dead were left as they are");
        }
        store.remove_left_over_metadata()?;
        // The open's own temp files (the identity, the log's replay) do
        // not count as wanting inodes made ahead.
        store.unnamed_wanted.store(false, Ordering::Relaxed);
        Ok(store)
    }

    /// This folder's identity: chosen at random when the folder is first
    /// opened and kept for its lifetime. nm remembers which files changed
    /// since a server was last level with its partner, and that memory is
    /// only good for the same folder: a server back on an emptied disk has a
    /// new identity, and is compared file by file.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn load_or_create_id(&self) -> Result<u64, StoreError> {
        let path = self.root.join(STORE_ID);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| StoreError::Meta {
                file: STORE_ID.to_owned(),
                error: format!("{e} in {text:?}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = rand::random::<u64>().max(1);
                self.write_atomically(&path, format!("{id}\n").as_bytes(), false, Durable::Now)?;
                Ok(id)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes every change applied from the log durable (one `syncfs`) and
    /// empties the log. Runs before any change that does not go through the
    /// log, so that replaying the log after a crash never undoes it.
    /// Stops cleanly: the write-ahead log is checkpointed (every logged
    /// change written out and synced, the log emptied and its file
    /// truncated) and the spare inodes
    /// kept under temp names are removed. The store serves nothing more
    /// after it.
    pub fn close(&self) -> Result<(), StoreError> {
        self.stop_making_inodes();
        self.barrier()?;
        if let Some(wal) = &self.wal {
            wal.close()?;
        }
        let mut spares =
            std::mem::take(&mut *self.spares.lock().unwrap_or_else(|p| p.into_inner()));
        spares.append(&mut self.displaced.lock().unwrap_or_else(|p| p.into_inner()));
        for spare in spares {
            match fs::remove_file(&spare) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), StoreError> {
        if let Some(wal) = &self.wal {
            wal.checkpoint(|| self.file_system.sync())?;
        }
        Ok(())
    }

    fn path_in(&self, area: &str, file: &str) -> Result<PathBuf, StoreError> {
        validate_path(file)?;
        Ok(self.root.join(area).join(file))
    }

    pub fn content_path(&self, file: &str) -> Result<PathBuf, StoreError> {
        self.path_in(FILES, file)
    }

    pub fn read_content(&self, file: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.content_path(file)?;
        if let Some(packed) = self.packs.get(file) {
            return Ok(self.packs.read(&packed)?);
        }
        Ok(fs::read(path)?)
    }

    /// Opens the content for reading; the handle keeps seeing this version
    /// even if a commit replaces the file meanwhile. A packed file's content
    /// is handed over in an anonymous in-memory file.
    pub fn open_content(&self, file: &str) -> Result<OpenContent, StoreError> {
        let path = self.content_path(file)?;
        if let Some(packed) = self.packs.get(file) {
            return self.open_in_memory(&self.packs.read(&packed)?);
        }
        self.open_registered(&path)
    }

    /// Whether `file`'s content is here, packed or as a file of its own.
    pub fn holds(&self, file: &str) -> Result<bool, StoreError> {
        let path = self.content_path(file)?;
        Ok(self.packs.get(file).is_some() || path.exists())
    }

    /// Writes `copies` (name, metadata, content) to a pack, durably, in
    /// one step. They count for nothing until [`Store::adopt_packed`] (or
    /// [`Store::discard_packed`] for those not adopted).
    pub fn pack(&self, copies: &[(&str, &FileMeta, &[u8])]) -> Result<Vec<Packed>, StoreError> {
        for (file, _, _) in copies {
            validate_path(file)?;
        }
        Ok(self.packs.append(copies)?)
    }

    /// Whether a copy of `file` may go into a pack: it has no file of its
    /// own and the write-ahead log holds no record of it (whose replay
    /// would bring back an older version over the packed one).
    pub fn may_pack(&self, file: &str) -> Result<bool, StoreError> {
        let path = self.content_path(file)?;
        Ok(!path.exists() && !self.wal.as_ref().is_some_and(|wal| wal.holds(file)))
    }

    /// Makes a packed copy `file`'s content (under its lock). Refused if
    /// the file got content of its own since [`Store::may_pack`] said yes.
    pub fn adopt_packed(&self, file: &str, packed: Packed) -> Result<(), StoreError> {
        if !self.may_pack(file)? {
            return Err(WireError::unavailable(format!(
                "{file:?} changed while its copy was packed; copy it again"
            ))
            .into());
        }
        Ok(self.packs.adopt(file, packed)?)
    }

    /// Drops packed copies that were not adopted, durably (or the server
    /// stops: see `packs::records_left_counting`).
    pub fn discard_packed(&self, records: &[Packed]) {
        self.packs.discard(records)
    }

    /// Writes a packed file out as a file of its own, durably, then drops
    /// its record: before any change to it but a newer packed copy. Nothing
    /// if it is not packed.
    fn loosen(&self, file: &str) -> Result<(), StoreError> {
        let Some(packed) = self.packs.get(file) else {
            return Ok(());
        };
        let content = self.packs.read(&packed)?;
        // Durable on its own, with no barrier before it.
        let mut temp = self.fresh_temp_file()?;
        temp.write_all(&content)?;
        let separate = self.attach_meta(&mut temp, file, &packed.meta)?;
        self.sync_temps_now(separate.iter().chain([&temp]))?;
        let mut dirs = Placements::default();
        self.place_content_unpacked(temp, separate.is_some(), file, &mut dirs)?;
        if let Some(separate) = separate {
            self.place_unpacked(separate, file, Placed::Meta, &mut dirs)?;
        }
        self.sync_dirs(&mut dirs)?;
        self.packs.drop_file(file)?;
        tracing::debug!(
            event = "ss_loosened",
            file,
            "a packed file now has a file of its own"
        );
        Ok(())
    }

    /// At open: a loose file is newer than any record of its name (a
    /// loosening that a crash cut short leaves both), so those are dropped;
    /// unless the loose content has no metadata yet (a loosening whose
    /// metadata goes apart, cut between its two names): the record stands,
    /// and the next change writes the file out again.
    fn drop_records_of_loose_files(&self) -> Result<(), StoreError> {
        for (file, _) in self.packs.all() {
            if scan::find_in(&self.root, &file, true)?.is_some() {
                self.packs.drop_file(&file)?;
            }
        }
        Ok(())
    }

    /// An anonymous in-memory file holding `content`, open for reading from
    /// its start.
    fn open_in_memory(&self, content: &[u8]) -> Result<OpenContent, StoreError> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::FromRawFd;
        // SAFETY: the name is NUL-terminated; a descriptor returned is ours.
        let fd = unsafe { libc::memfd_create(c"packed".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(content)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
        let inode = file.metadata()?.ino();
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        *readers.entry(inode).or_default() += 1;
        Ok(OpenContent {
            file,
            inode,
            readers: self.readers.clone(),
        })
    }

    /// Opens `path` and registers its inode as being read until the handle
    /// is dropped, so it is never recycled under the reader. The open and
    /// the registration happen under the lock that recycling checks.
    fn open_registered(&self, path: &Path) -> Result<OpenContent, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let file = open_without_atime(path)?;
        let inode = file.metadata()?.ino();
        *readers.entry(inode).or_default() += 1;
        Ok(OpenContent {
            file,
            inode,
            readers: self.readers.clone(),
        })
    }

    pub fn write_meta(&self, file: &str, meta: &FileMeta) -> Result<(), StoreError> {
        self.barrier()?;
        self.loosen(file)?;
        self.write_meta_files(file, meta, Durable::Now)
    }

    fn write_meta_files(
        &self,
        file: &str,
        meta: &FileMeta,
        durable: Durable,
    ) -> Result<(), StoreError> {
        let bytes = encode(file, meta)?;
        self.write_atomically(&self.path_in(META, file)?, &bytes, true, durable)
    }

    /// `file`'s current metadata, from its content's attribute or `meta/`
    /// (see [`attrs`]).
    pub fn read_meta(&self, file: &str) -> Result<FileMeta, StoreError> {
        self.find(file)?
            .map(|found| found.meta)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound).into())
    }

    /// As on a file system without extended attributes: every file's
    /// metadata in `meta/`.
    #[cfg(test)]
    pub(crate) fn keeping_meta_apart(mut self) -> Self {
        self.attrs = false;
        self
    }

    /// Gives a content temp file `file`'s metadata: as its attribute; or,
    /// when the metadata is too large for one or the file system keeps
    /// none, as a separate metadata temp file, returned to be made durable
    /// with it and placed beside it (the content's attribute then removed:
    /// a reused inode must not keep one). See [`attrs`].
    pub fn attach_meta(
        &self,
        content: &mut TempFile,
        file: &str,
        meta: &FileMeta,
    ) -> Result<Option<TempFile>, StoreError> {
        if self.attrs {
            let bytes = attrs::encode_attr(file, meta)?;
            if bytes.len() <= attrs::MAX_ATTR_BYTES {
                content.set_attr(Some(&bytes))?;
                return Ok(None);
            }
            content.set_attr(None)?;
        }
        Ok(Some(self.meta_temp(file, meta)?))
    }

    /// Before a content without an attribute replaces `file`'s, whose
    /// current metadata only its attribute may hold: that metadata is
    /// written to `meta/` (durably), so that a crash between the new
    /// content's rename and its metadata's finds content newer than the
    /// metadata apart, and repairs it (see `Files::admit`), as when every
    /// file's metadata was apart. Rare: metadata over [`attrs::MAX_ATTR_BYTES`].
    fn keep_current_meta_apart(&self, file: &str) -> Result<(), StoreError> {
        let attr = match attrs::read_attr(&self.content_path(file)?) {
            Ok(Some(bytes)) => decode_meta(file, &bytes)?,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let target = self.path_in(META, file)?;
        let apart = match fs::read(&target) {
            Ok(bytes) => Some(decode_meta(file, &bytes)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        // Unless what is apart is current already.
        if apart.is_none_or(|apart| attrs::is_stale(&apart, Some(&attr))) {
            self.ensure_parent(&target)?;
            let mut temp = self.fresh_temp_file()?;
            temp.write_all(&encode(file, &attr)?)?;
            // Dated at the epoch, older than any content: until the new
            // metadata replaces it, the content placed next is newer.
            let handle = temp.file.as_ref().expect("open until installed");
            handle.set_modified(std::time::UNIX_EPOCH)?;
            if self.fsync {
                handle.sync_all()?;
            }
            self.replace(temp, &target, false)?;
            self.sync_parent(&target)?;
        }
        Ok(())
    }

    /// Places a content temp file given its metadata by
    /// [`Store::attach_meta`], and its separate metadata temp if it has one.
    /// Called under the file's lock (no other change of it meanwhile).
    pub fn place_with_meta(
        &self,
        content: TempFile,
        separate: Option<TempFile>,
        file: &str,
        placements: &mut Placements,
    ) -> Result<(), StoreError> {
        self.loosen(file)?;
        self.place_content_unpacked(content, separate.is_some(), file, placements)?;
        match separate {
            Some(separate) => self.place_unpacked(separate, file, Placed::Meta, placements),
            None => Ok(()),
        }
    }

    /// [`Store::place_with_meta`]'s first step: the content, after keeping
    /// the current metadata apart if the content's own goes to `meta/` next
    /// (`apart`; see [`Store::keep_current_meta_apart`]).
    fn place_content_unpacked(
        &self,
        content: TempFile,
        apart: bool,
        file: &str,
        placements: &mut Placements,
    ) -> Result<(), StoreError> {
        if apart && self.attrs {
            self.keep_current_meta_apart(file)?;
        }
        self.place_unpacked(content, file, Placed::Content, placements)
    }

    /// Creates an empty file with its metadata. With the log: logged, then
    /// written without fsyncs. Without: the temp file is made durable,
    /// renamed, and its directory fsynced.
    pub fn create(&self, file: &str, meta: &FileMeta) -> Result<(), StoreError> {
        self.create_announcing(file, meta, &mut || {})
    }

    /// [`Store::create`], calling `durable` as soon as the new file is
    /// durable (see [`Store::commit_announcing`]).
    pub fn create_announcing(
        &self,
        file: &str,
        meta: &FileMeta,
        durable: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        validate_path(file)?;
        if let Some(wal) = &self.wal {
            // What can fail for a reason other than the disk fails before the
            // change is logged (see `applied_or_abort`).
            self.ensure_parent(&self.content_path(file)?)?;
            self.ensure_parent(&self.path_in(META, file)?)?;
            let logged = wal.append(&WalRecord::Create {
                file: file.to_owned(),
                meta: meta.clone(),
            })?;
            durable();
            applied_or_abort(file, self.create_files(file, meta, Durable::Later));
            drop(logged);
            self.checkpoint_after(file);
            return Ok(());
        }
        self.create_files(file, meta, Durable::Now)?;
        durable();
        Ok(())
    }

    /// A checkpoint due after a logged change that is durable, in place and
    /// announced: its failure is not the change's (the log keeps it). The
    /// log refuses every change after it, and the restart's replay rewrites
    /// the files from the log.
    fn checkpoint_after(&self, file: &str) {
        if let Err(e) = self.checkpoint_if_due() {
            tracing::error!(event = "ss_wal_checkpoint_failed", file, error = %e, "the write-ahead log could not be checkpointed after a change; no change is accepted until a restart replays the log");
        }
    }

    fn create_files(
        &self,
        file: &str,
        meta: &FileMeta,
        durable: Durable,
    ) -> Result<(), StoreError> {
        // Made durable by the log: an unnamed temp, linked straight to its name.
        let mut content = match durable {
            Durable::Later => self.unnamed_temp_file()?,
            Durable::Now => self.temp_file()?,
        };
        let separate = self.attach_meta(&mut content, file, meta)?;
        if durable == Durable::Now {
            self.sync_temps_now(separate.iter().chain([&content]))?;
        }
        let mut dirs = Placements::default();
        self.place_with_meta(content, separate, file, &mut dirs)?;
        self.placed(dirs, durable)
    }

    /// Replaces the content and its metadata, keeping the previous content
    /// for UNDO. With the log (and a document under [`MAX_LOGGED_BYTES`]):
    /// the new and previous contents and the metadata are logged, then
    /// written without fsyncs. Without: the new content is made durable
    /// first; then the undo link and the content change names in that
    /// order, and the directories are fsynced.
    pub fn commit(&self, file: &str, content: &[u8], meta: &FileMeta) -> Result<(), StoreError> {
        self.commit_announcing(file, content, meta, None, &mut || {})
    }

    /// [`Store::commit`], calling `durable` as soon as the change is
    /// durable: with the log, before the files are written (a failure after
    /// that aborts, and the replay finishes the change), so the replication
    /// stream can carry it meanwhile; without, once everything is in place.
    /// `on_disk`: the content the file has now, if the caller holds it (it
    /// is logged as the undo level; otherwise it is read).
    pub fn commit_announcing(
        &self,
        file: &str,
        content: &[u8],
        meta: &FileMeta,
        on_disk: Option<Vec<u8>>,
        durable: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let current = self.content_path(file)?;
        self.loosen(file)?;
        if let Some(wal) = &self.wal {
            let size = match &on_disk {
                Some(previous) => previous.len(),
                None => fs::metadata(&current)?.len() as usize,
            };
            if size + content.len() <= MAX_LOGGED_BYTES {
                let previous = match on_disk {
                    Some(previous) => previous,
                    None => fs::read(&current)?,
                };
                let logged = wal.append(&WalRecord::Commit {
                    file: file.to_owned(),
                    content: content.to_vec(),
                    previous,
                    meta: meta.clone(),
                })?;
                durable();
                applied_or_abort(file, self.commit_files(file, content, meta, Durable::Later));
                drop(logged);
                self.checkpoint_after(file);
                return Ok(());
            }
            self.barrier()?;
        }
        self.commit_files(file, content, meta, Durable::Now)?;
        durable();
        Ok(())
    }

    fn commit_files(
        &self,
        file: &str,
        content: &[u8],
        meta: &FileMeta,
        durable: Durable,
    ) -> Result<(), StoreError> {
        let current = self.content_path(file)?;
        let undo = self.path_in(UNDO, file)?;
        let mut content_temp = self.temp_file()?;
        content_temp.write_all(content)?;
        let separate = self.attach_meta(&mut content_temp, file, meta)?;
        if durable == Durable::Now {
            self.sync_temps_now(separate.iter().chain([&content_temp]))?;
        }
        self.ensure_parent(&undo)?;
        // The undo level before this one is no longer needed: its inode
        // becomes a spare rather than being freed.
        let mut dirs = Placements::default();
        let retired = self.temp_path();
        match fs::rename(&undo, &retired) {
            Ok(()) => dirs.displaced(retired),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            Err(_) => {}
        }
        // A hard link keeps the old content without copying it.
        fs::hard_link(&current, &undo)?;
        self.place_with_meta(content_temp, separate, file, &mut dirs)?;
        dirs.named_in(&undo);
        self.placed(dirs, durable)
    }

    /// Whether CREATEs, commits and small installs go through the write-ahead log.
    pub fn logs_changes(&self) -> bool {
        self.wal.is_some()
    }

    /// Installs a small copy through the write-ahead log: logged with its
    /// content and metadata, then put in place without fsyncs. Only when
    /// [`Store::logs_changes`].
    pub fn install_logged(
        &self,
        file: &str,
        mut content: TempFile,
        meta: &FileMeta,
    ) -> Result<(), StoreError> {
        let wal = self
            .wal
            .as_ref()
            .expect("install_logged is called only when the store logs changes");
        self.loosen(file)?;
        let logged = wal.append(&WalRecord::Install {
            file: file.to_owned(),
            content: content.read_back()?,
            meta: meta.clone(),
        })?;
        let applied = self
            .attach_meta(&mut content, file, meta)
            .and_then(|separate| {
                let mut placed = Placements::default();
                self.place_with_meta(content, separate, file, &mut placed)?;
                self.placed(placed, Durable::Later)
            });
        applied_or_abort(file, applied);
        drop(logged);
        self.checkpoint_if_due()
    }

    /// Installs a change from the replication stream. With the log: the
    /// record is written and the content goes into a temp file while the
    /// log's fdatasync runs; only once the record is durable are the
    /// content and the metadata put in place (a replay rewrites them whole,
    /// so a crash at any point leaves the old version or the new one). The
    /// content must not be renamed in place earlier: the rename hands the
    /// old content's inode to the spare pool at once, and on this
    /// journal-less ext4 a crash could then leave the name on new content
    /// that was never synced, under metadata that still names the old
    /// version. Without the log: as any copy, durable before it returns.
    ///
    /// `durable` is called once the change is durable here, before it is put
    /// in place: from then on it is applied or the server aborts (and the
    /// replay applies it), so the standby may acknowledge it at once.
    ///
    /// `checkpoints` are the contents of checkpoints the change made: they
    /// do not go through the log, so such a change is written as a copy
    /// (every temp file durable, then renamed into place, checkpoints first).
    pub fn install_streamed(
        &self,
        file: &str,
        content: &[u8],
        meta: &FileMeta,
        checkpoints: &[(&str, &[u8])],
        durable: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        self.loosen(file)?;
        match &self.wal {
            Some(wal) if content.len() <= MAX_LOGGED_BYTES && checkpoints.is_empty() => {
                let written = wal.write(&WalRecord::Install {
                    file: file.to_owned(),
                    content: content.to_vec(),
                    meta: meta.clone(),
                })?;
                // A failure before the record is known durable is reported
                // (the primary hands the change to nm): if the record becomes
                // durable anyway, a replay installs a version the primary
                // holds, which is harmless. After, a failure to apply aborts,
                // as for every logged change.
                let mut temp = self.temp_file()?;
                temp.write_all(content)?;
                let separate = self.attach_meta(&mut temp, file, meta)?;
                let logged = written.durable()?;
                durable();
                let mut placed = Placements::default();
                let applied = self
                    .place_with_meta(temp, separate, file, &mut placed)
                    .and_then(|()| self.placed(placed, Durable::Later));
                applied_or_abort(file, applied);
                drop(logged);
                self.checkpoint_if_due()
            }
            _ => {
                let mut saved = Vec::with_capacity(checkpoints.len());
                for (tag, content) in checkpoints {
                    let mut temp = self.temp_file()?;
                    temp.write_all(content)?;
                    saved.push((*tag, temp));
                }
                let mut temp = self.temp_file()?;
                temp.write_all(content)?;
                let separate = self.attach_meta(&mut temp, file, meta)?;
                self.sync_temps(
                    separate
                        .iter()
                        .chain([&temp])
                        .chain(saved.iter().map(|(_, t)| t)),
                )?;
                // The checkpoints' names are durable before the metadata
                // that names them is in place.
                let mut checkpoint_dirs = Placements::default();
                for (tag, temp) in saved {
                    self.place(temp, file, Placed::Checkpoint(tag), &mut checkpoint_dirs)?;
                }
                self.sync_dirs(&mut checkpoint_dirs)?;
                let mut dirs = Placements::default();
                self.place_with_meta(temp, separate, file, &mut dirs)?;
                self.sync_dirs(&mut dirs)?;
                durable();
                Ok(())
            }
        }
    }

    fn checkpoint_if_due(&self) -> Result<(), StoreError> {
        match &self.wal {
            Some(wal) if wal.wants_checkpoint() => self.barrier(),
            _ => Ok(()),
        }
    }

    pub fn read_content_of_undo(&self, file: &str) -> Result<Vec<u8>, StoreError> {
        Ok(fs::read(self.path_in(UNDO, file)?)?)
    }

    /// Whether an UNDO is possible.
    pub fn has_undo(&self, file: &str) -> Result<bool, StoreError> {
        Ok(self.path_in(UNDO, file)?.exists())
    }

    /// Puts the previous content back; the undo level is used up. A copy of
    /// it, given the new metadata and made durable, replaces the content,
    /// and only then is the undo level removed: a crash leaves the content
    /// before the UNDO or after it, each under its own metadata, never the
    /// previous content under its old attribute (a stamp gone backwards,
    /// which a later change would reuse for different content).
    pub fn undo(&self, file: &str, meta: &FileMeta) -> Result<(), StoreError> {
        self.barrier()?;
        let undo = self.path_in(UNDO, file)?;
        let mut previous = open_without_atime(&undo)?;
        let mut temp = self.temp_file()?;
        let mut chunk = vec![0; 1 << 20];
        loop {
            match io::Read::read(&mut previous, &mut chunk)? {
                0 => break,
                n => temp.write_all(&chunk[..n])?,
            }
        }
        let separate = self.attach_meta(&mut temp, file, meta)?;
        self.sync_temps_now(separate.iter().chain([&temp]))?;
        let mut dirs = Placements::default();
        self.place_with_meta(temp, separate, file, &mut dirs)?;
        self.sync_dirs(&mut dirs)?;
        fs::remove_file(&undo)?;
        self.sync_parent(&undo)?;
        Ok(())
    }

    /// Removes a file's metadata, content, undo level and checkpoints, in
    /// that order: a crash between leaves content with an older attribute,
    /// which the tombstone written before (at a newer stamp) removes at start-up.
    pub fn delete(&self, file: &str) -> Result<(), StoreError> {
        self.barrier()?;
        validate_path(file)?;
        self.packs.drop_file(file)?;
        for area in [META, FILES, UNDO] {
            let path = self.path_in(area, file)?;
            match fs::remove_file(&path) {
                Ok(()) => self.sync_parent(&path)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        match fs::remove_dir_all(self.path_in(CHECKPOINTS, file)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn checkpoint_path(&self, file: &str, tag: &str) -> Result<PathBuf, StoreError> {
        shared::names::validate_tag(tag)?;
        Ok(self.path_in(CHECKPOINTS, file)?.join(tag))
    }

    /// Snapshots the current content under `tag` (a hard link: contents are never modified in place).
    pub fn checkpoint(&self, file: &str, tag: &str, meta: &FileMeta) -> Result<(), StoreError> {
        self.barrier()?;
        self.loosen(file)?;
        let target = self.checkpoint_path(file, tag)?;
        self.ensure_parent(&target)?;
        // The metadata does not name `tag` (the caller checked): whatever is
        // there was left by a crash or a stale checkpoint not yet removed.
        remove_if_present(&target)?;
        fs::hard_link(self.content_path(file)?, &target)?;
        self.sync_parent(&target)?;
        self.write_meta(file, meta)
    }

    pub fn open_checkpoint(&self, file: &str, tag: &str) -> Result<OpenContent, StoreError> {
        self.open_registered(&self.checkpoint_path(file, tag)?)
    }

    /// Whether a checkpoint's content is here, `size` bytes long.
    pub fn has_checkpoint(&self, file: &str, tag: &str, size: u64) -> Result<bool, StoreError> {
        match fs::metadata(self.checkpoint_path(file, tag)?) {
            Ok(m) => Ok(m.len() == size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn read_checkpoint(&self, file: &str, tag: &str) -> Result<Vec<u8>, StoreError> {
        Ok(fs::read(self.checkpoint_path(file, tag)?)?)
    }

    /// Renames a file and everything kept with it, each step durable before
    /// the next: the metadata under the new name (alone, an orphan the next
    /// open removes), the content linked there (a hard link: a rename on
    /// this journal-less ext4 could be half written, leaving neither name),
    /// then the old names removed. A crash leaves the file whole under one
    /// name or both, never neither.
    pub fn rename(&self, file: &str, to: &str, meta: &FileMeta) -> Result<(), StoreError> {
        self.barrier()?;
        self.loosen(file)?;
        let (from_content, to_content) = (self.content_path(file)?, self.content_path(to)?);
        self.write_meta(to, meta)?;
        let linked = self
            .ensure_parent(&to_content)
            .and_then(|()| fs::hard_link(&from_content, &to_content));
        if let Err(e) = linked {
            // Not left to name whatever content may appear there later.
            remove_if_present(&self.path_in(META, to)?)?;
            return Err(e.into());
        }
        self.sync_parent(&to_content)?;
        let old_meta = self.path_in(META, file)?;
        remove_if_present(&old_meta)?;
        self.sync_parent(&old_meta)?;
        fs::remove_file(&from_content)?;
        self.sync_parent(&from_content)?;
        for area in [UNDO, CHECKPOINTS] {
            let (from, target) = (self.path_in(area, file)?, self.path_in(area, to)?);
            if from.exists() {
                self.ensure_parent(&target)?;
                fs::rename(&from, &target)?;
                self.sync_parent(&target)?;
            }
        }
        Ok(())
    }

    /// Removes from `meta/` what no file's current metadata is (see
    /// [`attrs`]): metadata older than its content's attribute, left by a
    /// change of content after a change of metadata alone, and metadata
    /// without content, left by a crash in a MOVE. Runs at open, before
    /// anything is served: nothing else touches `meta/` meanwhile.
    fn remove_left_over_metadata(&self) -> Result<(), StoreError> {
        for name in scan::walk(&self.root.join(META))? {
            let separate = self.path_in(META, &name)?;
            let left_over = match attrs::read_attr(&self.content_path(&name)?) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => return Err(e.into()),
                Ok(None) => false,
                Ok(Some(attr)) => {
                    let attr = decode_meta(&name, &attr)?;
                    let bytes = fs::read(&separate)?;
                    attrs::is_stale(&decode_meta(&name, &bytes)?, Some(&attr))
                }
            };
            if left_over {
                tracing::debug!(event = "ss_meta_left_over", file = %name, "removed metadata no longer current");
                remove_if_present(&separate)?;
            }
        }
        Ok(())
    }

    /// A temp file (named, see [`Store::temp_file`]) holding `file`'s
    /// metadata, not yet durable.
    pub fn meta_temp(&self, file: &str, meta: &FileMeta) -> Result<TempFile, StoreError> {
        self.write_meta_into(self.temp_file()?, file, meta)
    }

    /// `file`'s metadata, written into `temp`.
    pub fn write_meta_into(
        &self,
        mut temp: TempFile,
        file: &str,
        meta: &FileMeta,
    ) -> Result<TempFile, StoreError> {
        temp.write_all(&encode(file, meta)?)?;
        Ok(temp)
    }

    pub fn remove_checkpoint(&self, file: &str, tag: &str) -> Result<(), StoreError> {
        self.barrier()?;
        Ok(remove_if_present(&self.checkpoint_path(file, tag)?)?)
    }
}

/// A change durable in the write-ahead log that could not be written to its
/// files (a disk error) must not be reported as failed: the next replay will
/// apply it. Like a database that panics when its data files cannot be
/// written, the server stops here; clients see a broken connection (outcome
/// unknown), nm fails over, and the restart replays the log.
fn applied_or_abort(file: &str, applied: Result<(), StoreError>) {
    if let Err(e) = applied {
        tracing::error!(event = "ss_wal_apply_failed", file, error = %e, "a logged change could not be written to its files; stopping so that the restart replays it");
        eprintln!("ss: a logged change to {file:?} could not be written ({e}); stopping so that the restart replays it");
        std::process::abort();
    }
}

/// Removes a file; one already gone is fine.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Serializes what is stored for `file` (its metadata, its tombstone).
fn encode<T: serde::Serialize>(file: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Meta {
        file: file.to_owned(),
        error: e.to_string(),
    })
}

/// Metadata as `meta/` holds it (fields named) or an attribute does
/// (positional, see [`attrs::encode_attr`]): MessagePack decodes either.
fn decode_meta(file: &str, bytes: &[u8]) -> Result<FileMeta, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Meta {
        file: file.to_owned(),
        error: e.to_string(),
    })
}

/// Opens for reading without updating the access time, where allowed
/// (`O_NOATIME` is refused on a file this process does not own).
fn open_without_atime(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .or_else(|e| match e.raw_os_error() {
            Some(libc::EPERM) => File::open(path),
            _ => Err(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::{AccessList, FileStats};

    /// Metadata of alice's file at `version` (also for `packs`' tests).
    pub(super) fn meta(version: u64) -> FileMeta {
        FileMeta {
            owner: "alice".into(),
            acl: AccessList::new(),
            checkpoints: Default::default(),
            stats: FileStats {
                version,
                ..FileStats::default()
            },
        }
    }

    #[test]
    fn create_commit_undo_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("a/b.txt", &meta(1)).unwrap();
        assert!(!store.has_undo("a/b.txt").unwrap());
        store.commit("a/b.txt", b"Hello.", &meta(2)).unwrap();
        assert_eq!(store.read_content("a/b.txt").unwrap(), b"Hello.");
        assert!(store.has_undo("a/b.txt").unwrap());
        store.undo("a/b.txt", &meta(3)).unwrap();
        assert_eq!(store.read_content("a/b.txt").unwrap(), b"");
        assert!(!store.has_undo("a/b.txt").unwrap());
        let inventory = store.inventory().unwrap();
        assert_eq!(inventory.len(), 1);
        assert_eq!(inventory[0].0, "a/b.txt");
        assert_eq!(inventory[0].1.stats.version, 3);
        store.delete("a/b.txt").unwrap();
        assert!(store.inventory().unwrap().is_empty());
    }

    fn unnamed(store: &Store) -> usize {
        store.unnamed.lock().unwrap().len()
    }

    /// A standby's every applied change displaces the file's old content:
    /// the inode thread is woken to empty them once a batch has gathered,
    /// not for each, and then makes them all spares.
    #[test]
    fn displaced_contents_become_spares_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), true).unwrap());
        let background = store.clone();
        let thread = std::thread::spawn(move || background.keep_inodes_ready());
        // The thread idle first, its unnamed inodes made: nothing else
        // wakes it below (the installs take far fewer than it keeps), so
        // no spare is made, and taken by the next install, before the
        // batch is full.
        store.create("first", &meta(1)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while unnamed(&store) < UNNAMED_READY {
            assert!(std::time::Instant::now() < deadline, "inodes never made");
            std::thread::yield_now();
        }
        // The first install is new here; each later one displaces one.
        for version in 1..=DISPLACED_BATCH as u64 + 1 {
            let text = format!("Version {version}.");
            store
                .install_streamed("b", text.as_bytes(), &meta(version), &[], &mut || {})
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.spares.lock().unwrap().len() < DISPLACED_BATCH {
            assert!(
                std::time::Instant::now() < deadline,
                "a full batch of displaced contents was never emptied: {} spares, {} waiting",
                store.spares.lock().unwrap().len(),
                store.displaced.lock().unwrap().len()
            );
            std::thread::yield_now();
        }
        let last = format!("Version {}.", DISPLACED_BATCH + 1);
        assert_eq!(store.read_content("b").unwrap(), last.as_bytes());
        store.stop_making_inodes();
        thread.join().unwrap();
    }

    #[test]
    fn new_files_take_inodes_made_ahead_and_the_thread_tops_them_up() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), true).unwrap());
        let background = store.clone();
        std::thread::spawn(move || background.keep_inodes_ready());
        // Only once a temp file was taken after the open (the open's own,
        // for the folder's identity, do not count) are inodes made ahead.
        assert!(!store.unnamed_wanted.load(Ordering::Relaxed));
        store.create("first", &meta(1)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while unnamed(&store) < UNNAMED_READY {
            assert!(std::time::Instant::now() < deadline, "inodes never made");
            std::thread::yield_now();
        }
        let made: Vec<u64> = store
            .unnamed
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.metadata().unwrap().ino())
            .collect();
        // A create takes two (content and metadata), each one made ahead ...
        let creates = (UNNAMED_READY - UNNAMED_LOW) / 2 - 1;
        for i in 0..creates {
            store.create(&format!("f{i}"), &meta(1)).unwrap();
        }
        for i in 0..creates {
            let content = fs::metadata(store.content_path(&format!("f{i}")).unwrap()).unwrap();
            assert!(
                made.contains(&content.ino()),
                "f{i} allocated its own inode"
            );
            assert_eq!(content.nlink(), 1);
        }
        // ... and below the low mark the thread makes more.
        for i in creates..creates + 8 {
            store.create(&format!("f{i}"), &meta(1)).unwrap();
        }
        while unnamed(&store) < UNNAMED_LOW {
            assert!(std::time::Instant::now() < deadline, "never topped up");
            std::thread::yield_now();
        }
        assert_eq!(store.read_content("f3").unwrap(), b"");
    }

    #[test]
    fn traversal_is_refused_before_touching_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s"), true).unwrap();
        assert!(store.create("../../x", &meta(1)).is_err());
        assert!(store.create("/etc/x", &meta(1)).is_err());
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn a_batch_is_synced_once_then_placed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let mut temps = Vec::new();
        for i in 0..10 {
            let mut temp = store.temp_file().unwrap();
            temp.write_all(format!("Content {i}.").as_bytes()).unwrap();
            temps.push((
                format!("d/f{i}"),
                temp,
                store.meta_temp("x", &meta(i)).unwrap(),
            ));
        }
        store
            .sync_temps(temps.iter().flat_map(|(_, c, m)| [c, m]))
            .unwrap();
        let mut dirs = Placements::default();
        for (name, content, meta) in temps {
            store
                .place(content, &name, Placed::Content, &mut dirs)
                .unwrap();
            store.place(meta, &name, Placed::Meta, &mut dirs).unwrap();
        }
        store.sync_dirs(&mut dirs).unwrap();
        assert_eq!(dirs.folders(), 2, "one fsync per directory: {dirs:?}");
        let inventory = store.inventory().unwrap();
        assert_eq!(inventory.len(), 10);
        assert_eq!(store.read_content("d/f7").unwrap(), b"Content 7.");
        assert_eq!(inventory[7].1.stats.version, 7);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn replaced_inodes_are_recycled_but_never_one_a_reader_holds() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("a", &meta(1)).unwrap();
        store.commit("a", b"One.", &meta(2)).unwrap();
        let mut reader = store.open_content("a").unwrap();
        for (i, text) in ["Two.", "Three.", "Four."].iter().enumerate() {
            store
                .commit("a", text.as_bytes(), &meta(3 + i as u64))
                .unwrap();
            store.write_meta("a", &meta(3 + i as u64)).unwrap();
        }
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "One.", "an open content keeps its version");
        assert_eq!(store.read_content("a").unwrap(), b"Four.");
        assert_eq!(store.read_content_of_undo("a").unwrap(), b"Three.");
        assert_eq!(store.read_meta("a").unwrap().stats.version, 5);
        store.empty_displaced_spares();
        assert!(store.temp_file().unwrap().recycled, "a spare is reused");
    }

    #[test]
    fn a_reused_spare_holds_exactly_the_new_content_however_long_the_old_one() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), fsync).unwrap();
            store.create("a", &meta(1)).unwrap();
            let long = "A much longer sentence than the next. ".repeat(400);
            store.commit("a", long.as_bytes(), &meta(2)).unwrap();
            for (i, text) in ["Short.", "", "Mid length text.", "x"].iter().enumerate() {
                let version = 3 + i as u64;
                store.empty_displaced_spares();
                store.commit("a", text.as_bytes(), &meta(version)).unwrap();
                store.write_meta("a", &meta(version)).unwrap();
                assert_eq!(store.read_content("a").unwrap(), text.as_bytes());
                store.empty_displaced_spares();
                store
                    .install_streamed("b", text.as_bytes(), &meta(version), &[], &mut || {})
                    .unwrap();
                assert_eq!(store.read_content("b").unwrap(), text.as_bytes());
                assert_eq!(store.read_meta("b").unwrap().stats.version, version);
            }
        }
    }

    /// The spare's inode, by its name in `tmp/`, and listed for reuse.
    fn listed_spare(store: &Store, content: &str) -> (PathBuf, u64) {
        use std::os::unix::fs::MetadataExt;
        let spare = store.temp_path();
        fs::write(&spare, content).unwrap();
        let file = File::options().write(true).open(&spare).unwrap();
        file.set_modified(std::time::UNIX_EPOCH).unwrap();
        let inode = file.metadata().unwrap().ino();
        store.spares.lock().unwrap().push(spare.clone());
        (spare, inode)
    }

    #[test]
    fn an_empty_spare_is_reused_as_it_is_and_one_not_empty_is_dropped() {
        use std::os::unix::fs::MetadataExt;
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), fsync).unwrap();
            // Reopened without a truncation, which would set its mtime.
            let (spare, inode) = listed_spare(&store, "");
            let temp = store.temp_file().unwrap();
            let seen = fs::metadata(&spare).unwrap();
            assert_eq!(seen.ino(), inode, "the spare was taken");
            assert_eq!(
                seen.modified().unwrap(),
                std::time::UNIX_EPOCH,
                "truncated again"
            );
            drop(temp);
            // Not empty: dropped, so it cannot lend its bytes.
            let (spare, _) = listed_spare(&store, "Leftover content, longer than the new one.");
            store
                .install_streamed("b", b"New.", &meta(1), &[], &mut || {})
                .unwrap();
            assert!(store.spares.lock().unwrap().is_empty());
            assert!(!spare.exists(), "the spare was dropped");
            assert_eq!(store.read_content("b").unwrap(), b"New.");
            // Another name links it: dropped, so that name never changes.
            let (spare, _) = listed_spare(&store, "");
            let other = dir.path().join("other-name");
            fs::hard_link(&spare, &other).unwrap();
            store
                .install_streamed("c", b"Newer.", &meta(1), &[], &mut || {})
                .unwrap();
            assert!(!spare.exists(), "the spare was dropped");
            assert_eq!(fs::read(&other).unwrap(), b"");
            assert_eq!(store.read_content("c").unwrap(), b"Newer.");
        }
    }

    #[test]
    fn a_write_durable_on_its_own_never_takes_a_spare() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let (spare, _) = listed_spare(&store, "");
        let target = store.content_path("x").unwrap();
        store
            .write_atomically(&target, b"X.", false, Durable::Now)
            .unwrap();
        let packed = store.pack(&[("p", &meta(1), b"Packed.")]).unwrap();
        store
            .adopt_packed("p", packed.into_iter().next().unwrap())
            .unwrap();
        store.loosen("p").unwrap();
        assert_eq!(*store.spares.lock().unwrap(), std::slice::from_ref(&spare));
        assert_eq!(fs::read(&target).unwrap(), b"X.");
        assert_eq!(store.read_content("p").unwrap(), b"Packed.");
        // A logged change takes it.
        store.create("q", &meta(1)).unwrap();
        assert!(store.spares.lock().unwrap().is_empty());
        assert!(!spare.exists());
    }

    #[test]
    fn a_streamed_install_is_durable_when_announced_and_in_place_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store
            .install_streamed("b", b"Old text.", &meta(1), &[], &mut || {})
            .unwrap();
        let mut announced = 0;
        store
            .install_streamed("b", b"Streamed text.", &meta(2), &[], &mut || {
                announced += 1;
                assert_logged(dir.path(), b"Streamed text.");
                assert_eq!(store.read_content("b").unwrap(), b"Old text.");
            })
            .unwrap();
        assert_eq!(announced, 1);
        assert_eq!(store.read_content("b").unwrap(), b"Streamed text.");
        assert_eq!(store.read_meta("b").unwrap().stats.version, 2);
    }

    /// An announcement comes once the change's record is in the log.
    fn assert_logged(root: &Path, text: &[u8]) {
        let log = fs::read(root.join("wal.log")).unwrap();
        assert!(
            log.windows(text.len()).any(|w| w == text),
            "announced before its record {:?} is in the log",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn a_commit_and_a_create_are_announced_once_durable_before_they_are_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let mut announced = 0;
        store
            .create_announcing("created-here", &meta(1), &mut || {
                announced += 1;
                assert_logged(dir.path(), b"created-here");
                assert!(store.read_meta("created-here").is_err(), "in place already");
            })
            .unwrap();
        assert_eq!(announced, 1);
        assert_eq!(store.read_meta("created-here").unwrap().stats.version, 1);
        store
            .commit("created-here", b"Old text.", &meta(2))
            .unwrap();
        store
            .commit_announcing(
                "created-here",
                b"Committed text.",
                &meta(3),
                None,
                &mut || {
                    announced += 1;
                    assert_logged(dir.path(), b"Committed text.");
                    assert_eq!(store.read_content("created-here").unwrap(), b"Old text.");
                },
            )
            .unwrap();
        assert_eq!(announced, 2);
        assert_eq!(
            store.read_content("created-here").unwrap(),
            b"Committed text."
        );
        assert_eq!(store.read_meta("created-here").unwrap().stats.version, 3);
        // Without the log: announced once everything is in place.
        let plain = tempfile::tempdir().unwrap();
        let store = Store::open(plain.path(), false).unwrap();
        store.create("p", &meta(1)).unwrap();
        store
            .commit_announcing("p", b"In place.", &meta(2), None, &mut || {
                announced += 1;
                assert_eq!(store.read_content("p").unwrap(), b"In place.");
            })
            .unwrap();
        assert_eq!(announced, 3);
    }

    #[test]
    fn an_unnamed_temp_gets_its_final_name_as_its_first_and_its_link_is_made_durable_by_a_syncfs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let tmp_names = || fs::read_dir(dir.path().join(TMP)).unwrap().count();
        let mut temp = store.unnamed_temp_file().unwrap();
        assert!(temp.path.is_none(), "an unnamed inode");
        temp.write_all(b"New.").unwrap();
        store.sync_temps([&temp]).unwrap();
        let mut dirs = Placements::default();
        store
            .place(temp, "d/n", Placed::Content, &mut dirs)
            .unwrap();
        assert!(
            dirs.named_after_sync(),
            "its link count reaches the disk only with a syncfs"
        );
        store.sync_dirs(&mut dirs).unwrap();
        assert_eq!(store.read_content("d/n").unwrap(), b"New.");
        assert_eq!(tmp_names(), 0, "never named in tmp/");
        let mut named = store.temp_file().unwrap();
        assert!(named.path.is_some(), "named from the start");
        named.write_all(b"Named.").unwrap();
        let mut named_dirs = Placements::default();
        store
            .place(named, "d/m", Placed::Content, &mut named_dirs)
            .unwrap();
        assert!(
            !named_dirs.named_after_sync(),
            "a directory fsync is enough"
        );
        let dropped = {
            let mut temp = store.unnamed_temp_file().unwrap();
            temp.write_all(b"Never placed.").unwrap();
            temp
        };
        drop(dropped);
        assert_eq!(tmp_names(), 0, "an unnamed temp leaves nothing");
        let mut temp = store.unnamed_temp_file().unwrap();
        temp.write_all(b"Newer.").unwrap();
        let mut dirs = Placements::default();
        store
            .place(temp, "d/n", Placed::Content, &mut dirs)
            .unwrap();
        assert_eq!(store.read_content("d/n").unwrap(), b"Newer.");
        assert!(dirs.named_after_sync(), "named in tmp/ after its sync");
    }

    #[test]
    fn a_logged_install_into_a_reused_spare_logs_only_its_own_content() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            let long = "An old and much longer content. ".repeat(100);
            store
                .install_streamed("b", long.as_bytes(), &meta(1), &[], &mut || {})
                .unwrap();
            store
                .install_streamed("b", b"Second.", &meta(2), &[], &mut || {})
                .unwrap();
            store.empty_displaced_spares();
            let mut temp = store.temp_file().unwrap();
            assert!(temp.recycled, "a spare is reused");
            temp.write_all(b"Short.").unwrap();
            store.install_logged("c", temp, &meta(1)).unwrap();
            assert_eq!(store.read_content("c").unwrap(), b"Short.");
            // Dropped without a checkpoint: the next open replays the log.
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(store.read_content("c").unwrap(), b"Short.");
        assert_eq!(store.read_content("b").unwrap(), b"Second.");
    }

    #[test]
    fn logged_changes_are_redone_over_whatever_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            store.create("d/a", &meta(1)).unwrap();
            store.commit("d/a", b"First.", &meta(2)).unwrap();
            store.commit("d/a", b"Second.", &meta(3)).unwrap();
            // A crash before the writes reached the disk: torn or missing
            // files, an inode without its attribute.
            fs::remove_file(dir.path().join("files/d/a")).unwrap();
            fs::write(dir.path().join("files/d/a"), b"\0\0\0").unwrap();
            fs::remove_file(dir.path().join("undo/d/a")).unwrap();
            assert!(!store.wal.as_ref().unwrap().is_empty());
        }
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(store.read_content("d/a").unwrap(), b"Second.");
        assert_eq!(store.read_content_of_undo("d/a").unwrap(), b"First.");
        assert_eq!(store.read_meta("d/a").unwrap().stats.version, 3);
        assert!(store.wal.as_ref().unwrap().is_empty());

        // A change outside the log checkpoints it first, so a later replay
        // cannot bring back what the change removed.
        store.commit("d/a", b"Third.", &meta(4)).unwrap();
        store.delete("d/a").unwrap();
        assert!(store.wal.as_ref().unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert!(store.inventory().unwrap().is_empty());
    }

    fn kept_apart(root: &Path, file: &str) -> bool {
        root.join(META).join(file).exists()
    }

    fn has_attr(path: &Path) -> bool {
        attrs::read_attr(path).unwrap().is_some()
    }

    #[test]
    fn metadata_rides_on_the_content_and_goes_apart_for_a_change_of_metadata_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("d/f", &meta(1)).unwrap();
        store.commit("d/f", b"One.", &meta(2)).unwrap();
        assert!(has_attr(&dir.path().join("files/d/f")));
        assert!(!kept_apart(dir.path(), "d/f"), "one file per document");
        assert_eq!(store.read_meta("d/f").unwrap(), meta(2));

        let mut granted = meta(3);
        granted
            .acl
            .insert("bob".into(), shared::proto::Access::Read);
        store.write_meta("d/f", &granted).unwrap();
        assert!(kept_apart(dir.path(), "d/f"));
        assert_eq!(store.read_meta("d/f").unwrap(), granted);

        // The next change of content carries the metadata again; what is
        // apart is left over, never current, and gone at the next open.
        store.commit("d/f", b"Two.", &meta(4)).unwrap();
        assert_eq!(store.read_meta("d/f").unwrap(), meta(4));
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert!(!kept_apart(dir.path(), "d/f"));
        assert_eq!(
            store.inventory().unwrap(),
            vec![("d/f".to_owned(), meta(4))]
        );
    }

    #[test]
    fn an_undo_puts_back_a_copy_of_the_previous_content_with_the_new_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("f", &meta(1)).unwrap();
        store.commit("f", b"One.", &meta(2)).unwrap();
        store.commit("f", b"Two.", &meta(3)).unwrap();
        store.undo("f", &meta(4)).unwrap();
        assert_eq!(store.read_content("f").unwrap(), b"One.");
        assert_eq!(store.read_meta("f").unwrap(), meta(4));
        assert!(!store.has_undo("f").unwrap());
        // Never the previous content under its own, older attribute.
        let attr = attrs::read_attr(&dir.path().join("files/f"))
            .unwrap()
            .unwrap();
        assert_eq!(decode_meta("f", &attr).unwrap(), meta(4));
        assert!(!kept_apart(dir.path(), "f"));
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(store.read_meta("f").unwrap(), meta(4));
    }

    #[test]
    fn a_spare_inode_loses_its_attribute_before_it_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("f", &meta(1)).unwrap();
        for version in 2..5 {
            store.commit("f", b"Text.", &meta(version)).unwrap();
        }
        store.empty_displaced_spares();
        let spares = store.spares.lock().unwrap().clone();
        assert!(!spares.is_empty(), "replaced contents became spares");
        for spare in spares {
            assert!(!has_attr(&spare), "{} kept an attribute", spare.display());
        }
    }

    #[test]
    fn a_displaced_inode_becomes_a_spare_only_once_its_replacement_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("f", &meta(1)).unwrap();
        let spares = || store.spares.lock().unwrap().len() + store.displaced.lock().unwrap().len();
        assert_eq!(spares(), 0);
        let mut temp = store.temp_file().unwrap();
        temp.write_all(b"Replaced.").unwrap();
        let mut dirs = Placements::default();
        store.place(temp, "f", Placed::Content, &mut dirs).unwrap();
        assert_eq!(spares(), 0, "the displaced inode waits");
        store.sync_dirs(&mut dirs).unwrap();
        assert_eq!(spares(), 1, "a spare once the name is durable");
    }

    #[test]
    fn content_without_an_attribute_replaces_one_only_after_the_old_metadata_is_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), false).unwrap();
            store.create("f", &meta(1)).unwrap();
            store.commit("f", b"One.", &meta(2)).unwrap();
            assert!(!kept_apart(dir.path(), "f"));
            // A change whose metadata is too large for an attribute, cut by
            // a crash after its content's rename, before its metadata's
            // (its temp file, written last, is never placed).
            let mut large = meta(3);
            for user in 0..300 {
                large
                    .acl
                    .insert(format!("user{user}"), shared::proto::Access::Write);
            }
            let mut temp = store.temp_file().unwrap();
            temp.write_all(b"One. Two.").unwrap();
            let separate = store.attach_meta(&mut temp, "f", &large).unwrap();
            assert!(separate.is_some());
            store
                .place_content_unpacked(temp, true, "f", &mut Placements::default())
                .unwrap();
        }
        let store = Store::open(dir.path(), false).unwrap();
        let found = store.find("f").unwrap().expect("the file is still there");
        assert_eq!(found.meta, meta(2));
        assert!(found.content_newer, "to be repaired at load");
    }

    #[test]
    fn a_move_keeps_the_metadata_and_one_cut_short_leaves_no_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        store.create("a", &meta(1)).unwrap();
        store.commit("a", b"Moved.", &meta(2)).unwrap();
        store.rename("a", "b/c", &meta(3)).unwrap();
        assert_eq!(
            store.inventory().unwrap(),
            vec![("b/c".to_owned(), meta(3))]
        );
        assert!(!dir.path().join("files/a").exists() && !kept_apart(dir.path(), "a"));
        // A crash after a MOVE wrote the new name's metadata, before it
        // linked the content: the metadata alone is removed at open.
        store.write_meta("x", &meta(9)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert!(!kept_apart(dir.path(), "x"));
        assert_eq!(
            store.inventory().unwrap(),
            vec![("b/c".to_owned(), meta(3))]
        );
        store.create("x", &meta(1)).unwrap();
        assert_eq!(
            store.read_meta("x").unwrap(),
            meta(1),
            "nothing old shows through"
        );
    }

    #[test]
    fn metadata_too_large_for_an_attribute_or_a_file_system_without_them_keeps_it_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let mut large = meta(2);
        for user in 0..300 {
            large
                .acl
                .insert(format!("user{user}"), shared::proto::Access::Write);
        }
        store.create("f", &meta(1)).unwrap();
        store.commit("f", b"One.", &large).unwrap();
        assert!(kept_apart(dir.path(), "f"));
        assert!(
            !has_attr(&dir.path().join("files/f")),
            "no older attribute left to compare"
        );
        assert_eq!(store.read_meta("f").unwrap(), large);
        drop(store);

        // A folder written without attributes (or before them) reads the
        // same, and a store that has them carries on from it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap().keeping_meta_apart();
        store.create("f", &meta(1)).unwrap();
        store.commit("f", b"One.", &meta(2)).unwrap();
        assert!(!has_attr(&dir.path().join("files/f")));
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(store.inventory().unwrap(), vec![("f".to_owned(), meta(2))]);
        store.commit("f", b"Two.", &meta(3)).unwrap();
        assert_eq!(store.read_meta("f").unwrap(), meta(3));
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), false).unwrap();
        fs::write(dir.path().join("tmp/123-0.tmp"), b"partial").unwrap();
        Store::open(dir.path(), false).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
