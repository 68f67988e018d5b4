//! Inodes made ahead and recycled: new files take an unnamed inode made
//! by an idle-priority thread, and a replaced content's inode is emptied in
//! the background and kept as a spare, so creating a file on the request
//! path costs neither the inode allocator nor a truncation.

use super::*;

impl Store {
    /// Makes [`Store::keep_inodes_ready`] return; the caller joins its
    /// thread before [`Store::close`], so no spare appears after it.
    pub fn stop_making_inodes(&self) {
        {
            let _unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
            self.closing.store(true, Ordering::Relaxed);
        }
        self.unnamed_low.notify_all();
    }

    pub(super) fn temp_path(&self) -> PathBuf {
        // The process id, asked once: each `getpid` is a system call.
        static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let pid = PID.get_or_init(std::process::id);
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join(TMP).join(format!("{pid}-{n}.tmp"))
    }

    /// Puts a temp file in place of `target`, atomically.
    ///
    /// With `recycle`, an existing `target` is exchanged with the temp file
    /// (`renameat2(RENAME_EXCHANGE)`) and the inode that held the old
    /// version, now under the temp name, is returned: once the exchange is
    /// durable it becomes a spare for the next temp file (see
    /// [`Store::keep_spare`]). Not before: reused while the old name may
    /// still point to it on disk, a crash could leave that name on another
    /// file's content and attribute.
    ///
    /// Why: a rename that replaces a file frees an inode and the next temp
    /// file allocates one; on this machine's ext4 (no journal) the inode
    /// allocator then scans every recently freed inode, which profiled at
    /// over half the CPU of a create-write run (`perf record -a -g`:
    /// `find_inode_bit` → `recently_deleted`).
    pub(super) fn replace(
        &self,
        temp: TempFile,
        target: &Path,
        recycle: bool,
    ) -> io::Result<Option<PathBuf>> {
        let path = temp.close(|| self.temp_path())?;
        if recycle && exchange(&path, target).is_ok() {
            return Ok(Some(path));
        }
        fs::rename(&path, target).inspect_err(|_| {
            let _ = fs::remove_file(&path);
        })?;
        Ok(None)
    }

    /// Keeps a displaced file (already under a temp name) for reuse, or
    /// drops its name when another name still links its inode (an undo
    /// level, a checkpoint) or a reader holds it open (see
    /// [`OpenContent`]): a READ or a transfer must go on seeing the version
    /// it opened. Only once the change that displaced it is durable, or in
    /// the write-ahead log (whose replay renames again whatever a crash
    /// undid); a spare of the second kind may still have its old name on
    /// disk, so a write durable on its own never takes one (see
    /// [`Store::fresh_temp_file`]).
    pub(super) fn keep_spare(&self, path: PathBuf) {
        use std::os::unix::fs::MetadataExt;
        let readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = fs::metadata(&path).is_ok_and(|m| {
            m.nlink() == 1 && m.len() <= SPARE_MAX_BYTES && !readers.contains_key(&m.ino())
        });
        drop(readers);
        let mut displaced = self.displaced.lock().unwrap_or_else(|p| p.into_inner());
        if reusable && displaced.len() < MAX_SPARES {
            displaced.push(path);
            // Emptied in batches: waking the inode thread for each one cost
            // a standby a context switch per change it applied. Meanwhile
            // new files take the unnamed inodes made ahead.
            let batch_full = displaced.len() >= DISPLACED_BATCH;
            drop(displaced);
            if batch_full {
                // Under the lock the inode thread waits with, so it cannot miss it.
                let _unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
                self.unnamed_low.notify_all();
            }
        } else {
            drop(displaced);
            let _ = fs::remove_file(&path);
        }
    }

    /// Empties the displaced contents (truncation frees their blocks, a
    /// discard each) and makes them spares for [`Store::temp_file`]. Run by
    /// the inode thread, at idle priority, off every request's path.
    pub fn empty_displaced_spares(&self) {
        let displaced =
            std::mem::take(&mut *self.displaced.lock().unwrap_or_else(|p| p.into_inner()));
        for path in displaced {
            // A spare loses its metadata attribute too: no inode carries one
            // but as its own file's (see `attrs`).
            let emptied = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|file| match self.attrs {
                    true => attrs::set_attr(&file, None),
                    false => Ok(()),
                });
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            if emptied.is_ok() && spares.len() < MAX_SPARES {
                spares.push(path);
            } else {
                drop(spares);
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Runs forever (on a thread of its own): keeps unnamed empty inodes
    /// ready (`O_TMPFILE` in `tmp/`), so that a request that needs a new
    /// inode (a CREATE, a copy of a new file) names one made earlier
    /// (`linkat`) instead of allocating it.
    ///
    /// Why: allocating an inode on this machine's ext4 (no journal) costs
    /// 20 µs to 0.8 ms depending on how many were freed recently (it scans
    /// them), and a named create holds its directory's lock meanwhile, so
    /// every other create and rename in that directory waits. An unnamed
    /// inode is allocated without any directory lock, off the request path;
    /// one that is never used vanishes when the process exits.
    pub fn keep_inodes_ready(&self) {
        // Idle time only: the requests this serves must not wait for it.
        // SAFETY: setpriority on this thread's own id; no memory is involved.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
        let mut unnamed_work = true;
        loop {
            let missing = {
                let unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
                let unnamed = self
                    .unnamed_low
                    .wait_while(unnamed, |u| {
                        (!unnamed_work
                            || !self.unnamed_wanted.load(Ordering::Relaxed)
                            || u.len() >= UNNAMED_LOW)
                            && self
                                .displaced
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .is_empty()
                            && !self.closing.load(Ordering::Relaxed)
                    })
                    .unwrap_or_else(|p| p.into_inner());
                if self.closing.load(Ordering::Relaxed) {
                    return;
                }
                match unnamed_work {
                    true => UNNAMED_READY.saturating_sub(unnamed.len()),
                    false => 0,
                }
            };
            self.empty_displaced_spares();
            for _ in 0..missing {
                match self.make_unnamed() {
                    Ok(file) => self
                        .unnamed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(file),
                    Err(e) => {
                        tracing::warn!(event = "ss_unnamed_inode_failed", error = %e, "cannot make inodes ahead (O_TMPFILE); new files allocate their own");
                        unnamed_work = false;
                        break;
                    }
                }
            }
        }
    }

    /// A new unnamed inode in `tmp/` (`O_TMPFILE`).
    fn make_unnamed(&self) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(self.root.join(TMP))
    }

    /// An inode made ahead, if one is ready.
    fn take_unnamed(&self) -> Option<File> {
        let mut unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
        self.unnamed_wanted.store(true, Ordering::Relaxed);
        let file = unnamed.pop();
        if unnamed.len() < UNNAMED_LOW {
            self.unnamed_low.notify_one();
        }
        file
    }

    /// A new temp file, named in `tmp/` from the start: a spare if there is
    /// one (emptied ahead, off the request path: truncating one here would
    /// free its blocks, a discard costing ~0.4 ms on this disk), else an
    /// inode made ahead, linked into `tmp/`. Named before anything is
    /// written, so the fsync that makes its content durable also makes its
    /// link count durable: a rename then moves a name that is already sound.
    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        if let Some(spare) = self.take_spare() {
            return Ok(spare);
        }
        self.fresh_temp_file()
    }

    /// A new temp file, as [`Store::temp_file`], on an inode no spare
    /// lends: for a write made durable on its own (an fsync, a rename, the
    /// folder's fsync) with no barrier before it. A spare displaced by a
    /// logged change may have kept its old name on disk (the log's replay
    /// renames it again); reused by a write that is durable at once, a
    /// crash could leave that name and the new one on one inode that
    /// counts a single link, which the replay's rename would then free.
    pub(super) fn fresh_temp_file(&self) -> Result<TempFile, StoreError> {
        let path = self.temp_path();
        let file = match self.take_unnamed() {
            Some(file) if atomic::link_unnamed(&file, &path).is_ok() => file,
            _ => fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?,
        };
        Ok(self.new_temp(file, Some(path), false))
    }

    /// A new temp file that stays unnamed until [`Store::place`] names it,
    /// with its final name if that is free (a new file: one directory entry
    /// made, instead of two made and one removed); a spare if there is one
    /// (named). Its link is made after its content was synced, so the
    /// [`Placements`] of the `place` record it and [`Store::sync_dirs`]
    /// makes it durable with one `syncfs` (an fsync of the directory would
    /// not write the file's inode, whose link count would stay 0 on disk).
    /// For batches, and for changes the write-ahead log makes durable.
    pub fn unnamed_temp_file(&self) -> Result<TempFile, StoreError> {
        if let Some(spare) = self.take_spare() {
            return Ok(spare);
        }
        match self.take_unnamed().map_or_else(|| self.make_unnamed(), Ok) {
            Ok(file) => Ok(self.new_temp(file, None, false)),
            // No O_TMPFILE here.
            Err(_) => self.temp_file(),
        }
    }

    /// A spare, emptied ahead and reopened, if there is one.
    ///
    /// Reopened without `O_TRUNC`: ext4 takes a file truncated to nothing
    /// and then written for a replacement of its content, and starts its
    /// writeback when it is closed (`auto_da_alloc`), allocating its blocks
    /// and submitting the write on the closing thread. That cost a standby
    /// about 0.1 ms between acknowledging a change and renaming it into
    /// place. The inode thread's own truncation marks the inode too, but it
    /// closes its handle before the spare is listed, which clears the mark
    /// at no cost (nothing is written after it). A spare is checked (one
    /// `fstat`), not trusted: one that is not empty, or has another name,
    /// is dropped, and the caller takes a new inode.
    fn take_spare(&self) -> Option<TempFile> {
        use std::os::unix::fs::MetadataExt;
        let path = self
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        let opened = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|file| Ok((file.metadata()?, file)));
        match opened {
            Ok((seen, file)) if seen.len() == 0 && seen.nlink() == 1 => {
                Some(self.new_temp(file, Some(path), true))
            }
            Ok((seen, _)) => {
                tracing::warn!(event = "ss_spare_dropped", path = %path.display(), bytes = seen.len(), links = seen.nlink(), "a spare inode was not empty, or had another name, when taken; it was dropped");
                let _ = fs::remove_file(&path);
                None
            }
            Err(_) => {
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn new_temp(&self, file: File, path: Option<PathBuf>, recycled: bool) -> TempFile {
        TempFile {
            file: Some(file),
            path,
            written: 0,
            flushing_from: 0,
            early_writeback: self.fsync,
            recycled,
            has_attr: false,
        }
    }
}
