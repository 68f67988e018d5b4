//! Atomic writes: a temp file is written, made durable (an fdatasync, or one
//! `syncfs` for a batch) and renamed into place (or, if it is an unnamed
//! inode and the name is free, linked there: its only name), and the
//! directory is fsynced (the whole file system, once, when an unnamed inode
//! was named after its sync: see [`Placements`]), so a crash leaves either
//! the old file or the new one, never a torn one. (An unnamed inode a crash catches before its link
//! is not in any directory; on a file system without a journal it stays
//! allocated until the next fsck.) Also the temp file a transfer fills, and
//! the atomic exchange of two names.

use super::*;

/// A temp file being filled (a transfer in progress). Dropping it without
/// installing it removes it, so an interrupted transfer leaves nothing behind.
pub struct TempFile {
    pub(super) file: Option<File>,
    /// Its name in `tmp/`; `None` while it has none (an unnamed inode whose
    /// first name is its final one, see [`Store::place`]).
    pub(super) path: Option<PathBuf>,
    /// Bytes written, and how many of them have been handed to writeback.
    pub(super) written: u64,
    pub(super) flushing_from: u64,
    /// Whether to start writeback early (when the file will be fsynced).
    pub(super) early_writeback: bool,
    /// A spare inode reused: even empty, its truncation must be made durable.
    pub(super) recycled: bool,
    /// Given metadata as an attribute (see [`super::attrs`]): even empty,
    /// its inode must be made durable.
    pub(super) has_attr: bool,
}

/// A transfer starts the disk writing every this many bytes, so the disk
/// works while the network does and the final fsync has little left to do.
const WRITEBACK_STEP: u64 = 8 << 20;

impl TempFile {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self.file.as_mut().expect("open until installed");
        file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.early_writeback && self.written - self.flushing_from >= WRITEBACK_STEP {
            start_writeback(file, self.flushing_from, self.written - self.flushing_from);
            self.flushing_from = self.written;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Sets or removes (`None`) the metadata attribute.
    pub(super) fn set_attr(&mut self, bytes: Option<&[u8]>) -> io::Result<()> {
        super::attrs::set_attr(self.file.as_ref().expect("open until installed"), bytes)?;
        self.has_attr = bytes.is_some();
        Ok(())
    }

    /// Makes the content durable; with an fsync if the inode carries an
    /// attribute (inode metadata, which an fdatasync need not write).
    ///
    /// A recycled inode left empty is truncated again first: its
    /// truncation, done in the background, may have reached the inode
    /// table only in memory, and before Linux 6.18 ext4 without a journal
    /// writes the inode in an fdatasync only if it is dirty. Written
    /// content changes the size, which dirties it anyway.
    pub(super) fn sync_data(&self) -> io::Result<()> {
        let file = self.file.as_ref().expect("open until installed");
        if self.recycled && self.written == 0 {
            file.set_len(0)?;
        }
        match self.has_attr {
            true => file.sync_all(),
            false => file.sync_data(),
        }
    }

    /// What was written, read back from the file.
    pub(super) fn read_back(&self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0; self.written as usize];
        self.file
            .as_ref()
            .expect("open until installed")
            .read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// Gives an unnamed temp file `target` as its first name, unless
    /// something is there already; `Ok(false)` then, and it stays unnamed.
    pub(super) fn link_if_absent(&mut self, target: &Path) -> io::Result<bool> {
        let file = self.file.as_ref().expect("open until installed");
        match link_unnamed(file, target) {
            Ok(()) => {
                drop(self.file.take());
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Closes the file, leaving it on disk for a rename; returns its path
    /// (`name` is given to a file that has none).
    pub(super) fn close(mut self, name: impl FnOnce() -> PathBuf) -> io::Result<PathBuf> {
        let path = match self.path.take() {
            Some(path) => path,
            None => {
                let path = name();
                link_unnamed(self.file.as_ref().expect("open until installed"), &path)?;
                path
            }
        };
        drop(self.file.take());
        Ok(path)
    }
}

/// Gives the unnamed (`O_TMPFILE`) inode `file` the name `path`. Fails
/// with `AlreadyExists` if `path` is taken: a link never replaces.
///
/// Straight from the descriptor (`AT_EMPTY_PATH`) where the kernel allows
/// it (a process with `CAP_DAC_READ_SEARCH`), which saves a lookup through
/// `/proc` that costs as much as the link itself; else through the
/// descriptor's `/proc/self/fd` link.
pub(super) fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    use std::sync::atomic::AtomicBool;
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    let to = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        // SAFETY: the descriptor is open; both strings are NUL-terminated
        // and outlive the call.
        let rc = unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::EPERM | libc::EINVAL)
        ) {
            return Err(e);
        }
        // ENOENT may also mean a missing folder: the flag is set only if
        // the other way then works.
        link_through_proc(file, &to)?;
        EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
        return Ok(());
    }
    link_through_proc(file, &to)
}

/// `linkat` of `file`'s `/proc/self/fd` link to `to`.
fn link_through_proc(file: &File, to: &std::ffi::CStr) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many temp files make a batch worth one `syncfs` rather than an
/// fdatasync each (each fdatasync is a device flush, about 0.2 ms here; one
/// `syncfs` flushes hundreds of small files in a few ms).
const SYNCFS_FROM: usize = 4;

impl Drop for TempFile {
    fn drop(&mut self) {
        if let (Some(_), Some(path)) = (&self.file, &self.path) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Whether a write is made durable by its own fsyncs, or later (it is in the
/// write-ahead log, or being replayed from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durable {
    Now,
    Later,
}

/// What placing temp files left to make durable: the folders they were
/// named in, and whether one of them was an unnamed inode named only after
/// its content was synced (its link count is on disk only once its inode
/// is written again). See [`Store::sync_dirs`].
#[derive(Debug, Default)]
pub struct Placements {
    dirs: BTreeSet<PathBuf>,
    named_after_sync: bool,
    /// Inodes the placed files displaced, under temp names, kept from reuse
    /// until the names are durable (see [`Store::replace`]).
    displaced: Vec<PathBuf>,
}

/// A change abandoned on an error before its names were synced: the inodes
/// it displaced are not known to be free on disk, so they are not reused.
impl Drop for Placements {
    fn drop(&mut self) {
        for displaced in self.displaced.drain(..) {
            let _ = fs::remove_file(displaced);
        }
    }
}

impl Placements {
    /// Whether [`Store::sync_dirs`] must `syncfs` (an unnamed inode was
    /// named after its content was synced).
    #[cfg(test)]
    pub(super) fn named_after_sync(&self) -> bool {
        self.named_after_sync
    }

    /// How many folders were named in.
    #[cfg(test)]
    pub(super) fn folders(&self) -> usize {
        self.dirs.len()
    }

    /// Records an inode displaced some other way (under a temp name), to
    /// become a spare once the names are durable.
    pub(super) fn displaced(&mut self, path: PathBuf) {
        self.displaced.push(path);
    }

    /// Records that a name was made in `target`'s folder some other way.
    pub(super) fn named_in(&mut self, target: &Path) {
        self.dirs
            .insert(target.parent().expect("joined under the root").to_owned());
    }
}

/// What a temp file becomes when it is placed.
#[derive(Debug, Clone, Copy)]
pub enum Placed<'a> {
    Content,
    Meta,
    Checkpoint(&'a str),
}

/// Swaps two existing names atomically.
#[cfg(target_os = "linux")]
pub(super) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(super) fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Asks the kernel to start writing a range of `file` to disk, without
/// waiting (a hint: durability still comes from the fsync that follows).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
thread_local! {
    static SYNCFS_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static SYNCFS_FAILS_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many times this thread called `syncfs`.
#[cfg(test)]
pub fn syncfs_calls() -> usize {
    SYNCFS_CALLS.with(|calls| calls.get())
}

/// Makes this thread's next `syncfs` fail, as a writeback error would.
#[cfg(test)]
pub fn fail_next_syncfs() {
    SYNCFS_FAILS_NEXT.with(|fails| fails.set(true));
}

/// `syncfs` of the store's file system, through one handle kept as long as
/// the store, its first failure kept.
///
/// Linux reports a writeback error to `syncfs` once per open handle, and
/// only an error that happened after the handle was opened. A handle opened
/// for each call would miss every error of the background writeback
/// between two calls; and after a reported failure, a retry may succeed
/// although the pages that failed were dropped. So the handle lives as long
/// as the store, the calls take turns (one that saw an error has kept it
/// before the next looks), and once one failed every later one fails too:
/// what was written before it may be lost, and only a restart (which
/// replays the log and rescans the folder) trusts the disk again.
pub(super) struct FileSystemSync {
    handle: File,
    failed: Mutex<Option<String>>,
}

impl FileSystemSync {
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        Ok(FileSystemSync {
            handle: File::open(dir)?,
            failed: Mutex::new(None),
        })
    }

    /// Flushes every dirty page and inode of the file system.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failure) = &*failed {
            return Err(io::Error::other(failure.clone()));
        }
        syncfs(&self.handle).inspect_err(|e| {
            tracing::error!(event = "ss_syncfs_failed", error = %e, "a syncfs failed: changes written before it may be lost; no change that needs one is accepted until a restart");
            *failed = Some(format!(
                "an earlier syncfs failed ({e}): what was written before it may be lost; restart the server"
            ));
        })
    }
}

#[cfg(target_os = "linux")]
fn syncfs(handle: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    #[cfg(test)]
    {
        SYNCFS_CALLS.with(|calls| calls.set(calls.get() + 1));
        if SYNCFS_FAILS_NEXT.with(|fails| fails.replace(false)) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
    }
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn syncfs(_handle: &File) -> io::Result<()> {
    // No per-file-system flush here: flush everything.
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

impl Store {
    /// Writes `bytes` to `target` atomically: temp file, fsync, rename, fsync of the directory.
    pub(super) fn write_atomically(
        &self,
        target: &Path,
        bytes: &[u8],
        recycle: bool,
        durable: Durable,
    ) -> Result<(), StoreError> {
        self.ensure_parent(target)?;
        let mut temp = match durable {
            Durable::Now => self.fresh_temp_file()?,
            Durable::Later => self.temp_file()?,
        };
        temp.write_all(bytes)?;
        if self.fsync && durable == Durable::Now {
            temp.sync_data()?;
        }
        let displaced = self.replace(temp, target, recycle)?;
        let synced = match durable {
            Durable::Now => self.sync_parent(target),
            Durable::Later => Ok(()),
        };
        if let Some(displaced) = displaced {
            match synced {
                Ok(()) => self.keep_spare(displaced),
                Err(_) => {
                    let _ = fs::remove_file(displaced);
                }
            }
        }
        Ok(synced?)
    }

    pub(super) fn ensure_parent(&self, target: &Path) -> io::Result<()> {
        let parent = target.parent().expect("joined under the root");
        // The store's own folders are made when it opens and never removed.
        if parent.parent() == Some(&self.root) {
            return Ok(());
        }
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            if self.fsync {
                let mut dir = parent;
                while let Some(up) = dir.parent() {
                    File::open(up)?.sync_all()?;
                    if up == self.root {
                        break;
                    }
                    dir = up;
                }
            }
        }
        Ok(())
    }

    pub(super) fn sync_parent(&self, target: &Path) -> io::Result<()> {
        if self.fsync {
            File::open(target.parent().expect("joined under the root"))?.sync_all()?;
        }
        Ok(())
    }

    /// Makes the contents of `temps` durable before any of them is renamed
    /// into place: an fdatasync each for a few, one `syncfs` of the storage
    /// file system for a batch. The first half of a batched install.
    pub fn sync_temps<'a>(
        &self,
        temps: impl IntoIterator<Item = &'a TempFile>,
    ) -> Result<(), StoreError> {
        self.barrier()?;
        self.sync_temps_now(temps)
    }

    pub(super) fn sync_temps_now<'a>(
        &self,
        temps: impl IntoIterator<Item = &'a TempFile>,
    ) -> Result<(), StoreError> {
        if !self.fsync {
            return Ok(());
        }
        // A new, empty temp file has no data to flush: the fsync of the
        // directory it is renamed into makes it durable.
        let temps: Vec<&TempFile> = temps
            .into_iter()
            .filter(|t| t.written > 0 || t.recycled || t.has_attr)
            .collect();
        if temps.len() < SYNCFS_FROM {
            for temp in temps {
                temp.sync_data()?;
            }
            return Ok(());
        }
        self.file_system.sync()?;
        Ok(())
    }

    /// Renames a temp file made durable by [`Store::sync_temps`] into place
    /// as `file`'s content, metadata (`meta`) or checkpoint `tag`; the
    /// directory it went into is added to `dirs` for [`Store::sync_dirs`].
    pub fn place(
        &self,
        temp: TempFile,
        file: &str,
        what: Placed<'_>,
        placements: &mut Placements,
    ) -> Result<(), StoreError> {
        if !matches!(what, Placed::Checkpoint(_)) {
            self.loosen(file)?;
        }
        self.place_unpacked(temp, file, what, placements)
    }

    /// [`Store::place`] for a file known not to be packed.
    pub(super) fn place_unpacked(
        &self,
        mut temp: TempFile,
        file: &str,
        what: Placed<'_>,
        placements: &mut Placements,
    ) -> Result<(), StoreError> {
        let target = match what {
            Placed::Content => self.content_path(file)?,
            Placed::Meta => self.path_in(META, file)?,
            Placed::Checkpoint(tag) => self.checkpoint_path(file, tag)?,
        };
        self.ensure_parent(&target)?;
        // An unnamed temp file for a name not yet taken gets it as its
        // first name: one directory entry made, none removed.
        placements.named_after_sync |= temp.path.is_none();
        if temp.path.is_some() || !temp.link_if_absent(&target)? {
            let recycle = !matches!(what, Placed::Checkpoint(_));
            if let Some(displaced) = self.replace(temp, &target, recycle)? {
                placements.displaced.push(displaced);
            }
        }
        placements.named_in(&target);
        Ok(())
    }

    /// Checkpoints the write-ahead log if it holds a record of `file`:
    /// before a copy of `file` is placed outside the log (a sync's batch,
    /// whose own checkpoint came before records the stream logged since),
    /// so that the log's replay after a crash never takes `file` back to
    /// the older, logged version. Called under `file`'s lock, which every
    /// writer of its records holds.
    pub fn checkpoint_log_holding(&self, file: &str) -> Result<(), StoreError> {
        if self.wal.as_ref().is_some_and(|wal| wal.holds(file)) {
            self.barrier()?;
        }
        Ok(())
    }

    /// Makes everything written to the store durable: one `syncfs`.
    pub fn sync_everything(&self) -> Result<(), StoreError> {
        if self.fsync {
            self.file_system.sync()?;
        }
        Ok(())
    }

    /// Makes the names [`Store::place`] gave durable: one fsync per
    /// directory, or, if an unnamed inode was named after its content was
    /// synced, one `syncfs` (which also writes that inode, with its link).
    /// Then the inodes they displaced become spares (dropped instead if the
    /// sync failed).
    pub fn sync_dirs(&self, placements: &mut Placements) -> Result<(), StoreError> {
        let synced = self.sync_placed_dirs(placements);
        for displaced in placements.displaced.drain(..) {
            match synced {
                Ok(()) => self.keep_spare(displaced),
                Err(_) => {
                    let _ = fs::remove_file(displaced);
                }
            }
        }
        synced
    }

    /// Finishes placing: with `Durable::Now`, [`Store::sync_dirs`]; with
    /// `Durable::Later` (changes the write-ahead log holds, whose replay
    /// places them again over whatever a crash left), the inodes they
    /// displaced become spares at once.
    pub(super) fn placed(
        &self,
        mut placements: Placements,
        durable: Durable,
    ) -> Result<(), StoreError> {
        if durable == Durable::Now {
            return self.sync_dirs(&mut placements);
        }
        for displaced in placements.displaced.drain(..) {
            self.keep_spare(displaced);
        }
        Ok(())
    }

    fn sync_placed_dirs(&self, placements: &Placements) -> Result<(), StoreError> {
        if !self.fsync {
            return Ok(());
        }
        if placements.named_after_sync {
            self.file_system.sync()?;
            return Ok(());
        }
        for dir in &placements.dirs {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
