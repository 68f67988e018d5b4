//! Installing copies from the partner (a sync's batches, a streamed
//! change, a conflict copy kept): never over a newer version, a newer
//! delete, or a local version the copy does not descend from.

use super::*;

/// A copy that goes into a pack: name, metadata, content.
type PackedCopy = (String, FileMeta, Vec<u8>);

/// How a copy goes into place.
pub(super) enum Route {
    /// Through the write-ahead log (given its metadata there).
    Logged,
    /// Made durable by its batch's sync, given its metadata already (with
    /// the separate metadata temp file, if it has one), renamed into place
    /// for the batch's directory fsyncs.
    Batched(Option<TempFile>),
}

/// What became of a copy offered to [`Files::place_if_newer`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    Installed,
    /// Not installed: the local version is as new. That version may have
    /// been placed by a sync's batch whose names are not durable yet (see
    /// [`Files::newer_is_durable`]).
    Older,
    /// Not installed: the file was deleted later (tombstones are durable
    /// once written).
    Deleted,
}

/// The checkpoints `local` names and `incoming` does not.
fn stale_checkpoints(local: &FileMeta, incoming: &FileMeta) -> Vec<String> {
    local
        .checkpoints
        .keys()
        .filter(|tag| !incoming.checkpoints.contains_key(*tag))
        .cloned()
        .collect()
}

/// Removes those of `tags` of `file`'s checkpoints that `current` (its
/// metadata, durable) does not name; a failure leaves an unnamed file, which
/// is logged (a later CHECKPOINT or copy of the tag replaces it).
fn remove_checkpoints_not_named(store: &Store, file: &str, current: &FileMeta, tags: &[String]) {
    for tag in tags
        .iter()
        .filter(|tag| !current.checkpoints.contains_key(*tag))
    {
        if let Err(error) = store.remove_checkpoint(file, tag) {
            tracing::warn!(event = "ss_stale_checkpoint_left", file, tag = %tag, error = %error, "a checkpoint a copy made stale could not be removed");
        }
    }
}

impl Files {
    /// A temp file for a copy from the partner: unnamed until placed (see
    /// [`crate::store::Store::unnamed_temp_file`]).
    pub fn copy_temp_file(&self) -> Result<TempFile, WireError> {
        Ok(self.store.unnamed_temp_file()?)
    }

    /// Installs files copied from the primary, as one batch. Small copies
    /// that came whole, with no checkpoints, of files with no content of
    /// their own here go into a pack ([`Files::install_packed`]); the rest
    /// are files of their own ([`Files::install_loose`]).
    /// Returns one result per file, in order.
    pub fn install_batch(&self, copies: Vec<Copied>) -> Vec<Result<(), WireError>> {
        let mut results: Vec<Option<Result<(), WireError>>> = Vec::new();
        let (mut packed, mut loose) = (Vec::new(), Vec::new());
        for (index, copy) in copies.into_iter().enumerate() {
            results.push(None);
            match self.packable(copy) {
                Ok(Ok(copy)) => packed.push((index, copy)),
                Ok(Err(copy)) => loose.push((index, copy)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        // A job's file or two, loose, go through the log; so do copies too
        // few to be worth a pack.
        if packed.len() < LOGGED_INSTALLS && self.store.logs_changes() {
            for (index, (file, meta, content)) in packed.drain(..) {
                match self.temp_holding(&content) {
                    Ok(content) => loose.push((
                        index,
                        LooseCopy {
                            file,
                            meta,
                            content,
                            checkpoints: Vec::new(),
                        },
                    )),
                    Err(e) => results[index] = Some(Err(e)),
                }
            }
            loose.sort_by_key(|(index, _)| *index);
        }
        let (indices, copies): (Vec<usize>, Vec<PackedCopy>) = packed.into_iter().unzip();
        for (index, result) in indices.into_iter().zip(self.install_packed(copies)) {
            results[index] = Some(result);
        }
        let (indices, copies): (Vec<usize>, Vec<LooseCopy>) = loose.into_iter().unzip();
        for (index, result) in indices.into_iter().zip(self.install_loose(copies)) {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every copy has a result"))
            .collect()
    }

    /// `copy` as a pack takes it (`Ok(Ok)`) or as a file of its own.
    fn packable(&self, copy: Copied) -> Result<Result<PackedCopy, LooseCopy>, WireError> {
        let Copied {
            file,
            meta,
            content,
            checkpoints,
        } = copy;
        let content = match content {
            CopyContent::InMemory(bytes)
                if checkpoints.is_empty()
                    && meta.checkpoints.is_empty()
                    && bytes.len() as u64 <= crate::store::MAX_PACKED_BYTES
                    && self.store.may_pack(&file)? =>
            {
                return Ok(Ok((file, meta, bytes)));
            }
            CopyContent::InMemory(bytes) => self.temp_holding(&bytes)?,
            CopyContent::Temp(temp) => temp,
        };
        Ok(Err(LooseCopy {
            file,
            meta,
            content,
            checkpoints,
        }))
    }

    /// A copy temp file holding `bytes`.
    fn temp_holding(&self, bytes: &[u8]) -> Result<TempFile, WireError> {
        let mut temp = self.copy_temp_file()?;
        temp.write_all(bytes)
            .map_err(|e| WireError::internal(format!("writing a copy: {e}")))?;
        Ok(temp)
    }

    /// Installs copies through a pack: all of them written and made durable
    /// in one step, then each adopted under its file's lock if newer than
    /// what is here (as any copy), and the records not adopted dropped.
    fn install_packed(&self, copies: Vec<PackedCopy>) -> Vec<Result<(), WireError>> {
        if copies.is_empty() {
            return Vec::new();
        }
        let batch: Vec<(&str, &FileMeta, &[u8])> = copies
            .iter()
            .map(|(file, meta, content)| (file.as_str(), meta, content.as_slice()))
            .collect();
        let records = match self.store.pack(&batch) {
            Ok(records) => records,
            Err(e) => {
                let e = WireError::from(e);
                return copies.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut not_adopted = Vec::new();
        let mut older = false;
        let mut results: Vec<Result<(), WireError>> = copies
            .into_iter()
            .zip(records)
            .map(|((file, meta, _), record)| {
                let mut adopted = false;
                let outcome = self.place_if_newer(&file, meta, |store, _, _| {
                    store.adopt_packed(&file, record.clone())?;
                    adopted = true;
                    Ok(())
                });
                if !adopted {
                    not_adopted.push(record);
                }
                older |= matches!(outcome, Ok(Outcome::Older));
                outcome.map(|_| ())
            })
            .collect();
        // Copies skipped as older count as here once what they were skipped
        // for is durable.
        self.store.discard_packed(&not_adopted);
        let settled = if older {
            self.newer_is_durable()
        } else {
            Ok(())
        };
        if let Err(e) = settled {
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(e.clone());
            }
        }
        results
    }

    /// Installs copies as files of their own, as one batch: every temp file
    /// (checkpoints, content given its metadata) is made durable in one
    /// step, then each file's new checkpoints and content (whose metadata
    /// names them) are renamed into place, then the directories are fsynced
    /// once each. A crash at any point leaves each file whole at its old or
    /// its new version.
    /// Returns one result per file, in order.
    fn install_loose(&self, copies: Vec<LooseCopy>) -> Vec<Result<(), WireError>> {
        if copies.is_empty() {
            return Vec::new();
        }
        // A job's file or two, small and without new checkpoints: one
        // write-ahead log record each is cheaper than fsyncing their files.
        let logged = self.store.logs_changes()
            && copies.len() < LOGGED_INSTALLS
            && copies.iter().all(|c| {
                c.checkpoints.is_empty() && c.content.len() <= crate::wal::MAX_LOGGED_BYTES as u64
            });
        if logged {
            return copies
                .into_iter()
                .map(|copy| {
                    let file = copy.file.clone();
                    let (outcome, stale) =
                        self.place_copy(copy, Route::Logged, &mut Placements::default())?;
                    self.remove_stale_checkpoints(&file, &stale);
                    if outcome == Outcome::Older {
                        self.newer_is_durable()?;
                    }
                    Ok(())
                })
                .collect();
        }
        let mut staged: Vec<Result<(LooseCopy, Option<TempFile>), WireError>> = copies
            .into_iter()
            .map(|mut copy| {
                let separate = self
                    .store
                    .attach_meta(&mut copy.content, &copy.file, &copy.meta)?;
                Ok((copy, separate))
            })
            .collect();
        let temps = staged.iter().flatten().flat_map(|(copy, separate)| {
            separate
                .iter()
                .chain(std::iter::once(&copy.content))
                .chain(copy.checkpoints.iter().map(|(_, temp)| temp))
        });
        if let Err(e) = self.store.sync_temps(temps) {
            let e = WireError::from(e);
            return staged.iter().map(|_| Err(e.clone())).collect();
        }
        let mut dirs = Placements::default();
        self.batches_naming.fetch_add(1, Ordering::SeqCst);
        let mut older = false;
        let mut placed: Vec<Result<(String, Vec<String>), WireError>> = staged
            .drain(..)
            .map(|staged| {
                let (copy, separate) = staged?;
                let file = copy.file.clone();
                let (outcome, stale) =
                    self.place_copy(copy, Route::Batched(separate), &mut dirs)?;
                older |= outcome == Outcome::Older;
                Ok((file, stale))
            })
            .collect();
        // Copies skipped as older count as here once what they were
        // skipped for is durable: another batch's placing, maybe.
        let named = self
            .store
            .sync_dirs(&mut dirs)
            .map_err(WireError::from)
            .and_then(|()| {
                // Only once the names are durable; after a failure (or a panic
                // above) the count stays up, and every change skipped as older
                // than what this batch placed waits for a flush.
                self.batches_naming.fetch_sub(1, Ordering::SeqCst);
                if older {
                    self.newer_is_durable()?;
                }
                Ok(())
            });
        match named {
            Ok(()) => {
                for (file, stale) in placed.iter().flatten() {
                    self.remove_stale_checkpoints(file, stale);
                }
            }
            Err(e) => {
                for result in placed.iter_mut().filter(|r| r.is_ok()) {
                    *result = Err(e.clone());
                }
            }
        }
        placed.into_iter().map(|r| r.map(|_| ())).collect()
    }

    /// Removes the checkpoints of `file` that a copy made stale, once the
    /// metadata that no longer names them is durable (removed before, a
    /// crash could leave the old metadata naming a checkpoint that is gone,
    /// which later copies would take as held), from the file's current
    /// entry, unless a later change named them again meanwhile.
    fn remove_stale_checkpoints(&self, file: &str, stale: &[String]) {
        if stale.is_empty() {
            return;
        }
        let Ok(entry) = self.entry(file) else {
            return;
        };
        // Not if `file` was deleted, moved or copied anew since.
        let Ok(e) = self.lock_current(file, &entry) else {
            return;
        };
        remove_checkpoints_not_named(&self.store, file, &e.meta, stale);
    }

    /// Puts one copy in place, unless the local file is as new or holds
    /// changes the copy lacks, by `route`. Returns the checkpoints the copy
    /// made stale, to remove once it is durable, with what became of it.
    pub(super) fn place_copy(
        &self,
        copy: LooseCopy,
        route: Route,
        dirs: &mut Placements,
    ) -> Result<(Outcome, Vec<String>), WireError> {
        let LooseCopy {
            file,
            meta,
            content,
            checkpoints,
        } = copy;
        let mut stale = Vec::new();
        let outcome = self.place_if_newer(&file, meta, |store, local, meta| {
            // New checkpoints' names are durable before the metadata that
            // names them is in place: a crash between the two must not leave
            // metadata naming a checkpoint that is not there (a later copy
            // would take it as held and never fetch it).
            let mut checkpoint_dirs = Placements::default();
            for (tag, temp) in checkpoints {
                store.place(temp, &file, Placed::Checkpoint(&tag), &mut checkpoint_dirs)?;
            }
            store.sync_dirs(&mut checkpoint_dirs)?;
            stale = stale_checkpoints(local, meta);
            match route {
                Route::Batched(separate) => {
                    store.checkpoint_log_holding(&file)?;
                    store.place_with_meta(content, separate, &file, dirs)
                }
                Route::Logged => store.install_logged(&file, content, meta),
            }
        })?;
        Ok((outcome, stale))
    }

    /// Installs a change that came on the replication stream, whole, under
    /// the same rules as a copy; returns once it is in place. `durable` is
    /// called once it is durable here (and may not be: an older version, or
    /// a refusal, is only returned).
    ///
    /// `checkpoints` are the contents of the checkpoints the change made.
    /// Any other checkpoint the file names must be here already, as the
    /// incoming metadata describes it; if not (a change overtook the
    /// CHECKPOINT that made it, or the standby never had it), the change is
    /// refused and nm's job copies the file with its checkpoints.
    pub fn install_streamed(
        &self,
        file: &str,
        meta: FileMeta,
        content: &[u8],
        checkpoints: &[StreamedCheckpoint],
        durable: &mut dyn FnMut(),
    ) -> Result<(), WireError> {
        for carried in checkpoints {
            shared::names::validate_tag(&carried.tag)?;
            if !meta.checkpoints.contains_key(&carried.tag) {
                return Err(WireError::bad_request(format!(
                    "checkpoint {:?} of {file:?} is carried but not named by its metadata",
                    carried.tag
                )));
            }
        }
        let outcome = self.place_if_newer(file, meta, |store, local, meta| {
            // A file new here is handed over with its own metadata as the
            // local one: none of its checkpoints is here unless carried.
            let new_here = local.stats.stamp() == meta.stats.stamp();
            for (tag, info) in &meta.checkpoints {
                let carried = checkpoints.iter().any(|c| &c.tag == tag);
                if !carried
                    && (new_here
                        || local.checkpoints.get(tag) != Some(info)
                        || !store.has_checkpoint(file, tag, info.size)?)
                {
                    return Err(WireError::unavailable(format!(
                        "{file:?} names checkpoint {tag:?}, which this server lacks; nm copies the file with its checkpoints"
                    ))
                    .into());
                }
            }
            let carried: Vec<(&str, &[u8])> = checkpoints
                .iter()
                .map(|c| (c.tag.as_str(), c.content.as_slice()))
                .collect();
            store.install_streamed(file, content, meta, &carried, durable)?;
            // Durable now (logged, or synced): still under the file's lock.
            remove_checkpoints_not_named(store, file, meta, &stale_checkpoints(local, meta));
            Ok(())
        })?;
        // The standby acknowledges a change skipped as older: only once the
        // version it was skipped for is durable.
        if outcome == Outcome::Older {
            self.newer_is_durable()?;
        }
        Ok(())
    }

    /// Calls `install` with the local and the incoming metadata, unless the
    /// local file is as new as `meta` or holds changes it lacks; then
    /// records `meta` as the file's.
    pub(super) fn place_if_newer(
        &self,
        file: &str,
        meta: FileMeta,
        install: impl FnOnce(&Store, &FileMeta, &FileMeta) -> Result<(), StoreError>,
    ) -> Result<Outcome, WireError> {
        shared::names::validate_path(file)?;
        loop {
            let entry = self.entry_or_placeholder(file, || meta.clone())?;
            between_lookup_and_lock();
            let e = lock(&entry);
            if self.is_current(file, &entry, &e) {
                return self.place_locked(file, meta, &entry, e, install);
            }
        }
    }

    /// [`Files::place_if_newer`] once `e`, the file's current entry, is held.
    fn place_locked(
        &self,
        file: &str,
        meta: FileMeta,
        entry: &EntryRef,
        mut e: MutexGuard<'_, Entry>,
        install: impl FnOnce(&Store, &FileMeta, &FileMeta) -> Result<(), StoreError>,
    ) -> Result<Outcome, WireError> {
        refuse_while_written(&e, file, "a replica update")?;
        // Never go backwards: a slower transfer of an older version, or one
        // overtaken by a delete, changes nothing.
        let incoming = meta.stats.stamp();
        let deleted_at = match self.store.tombstone(file) {
            Ok(tombstone) => tombstone.map_or((0, 0), |t| t.stamp()),
            Err(error) => {
                if e.unplaced {
                    self.forget_unwritten(file, entry, e);
                }
                return Err(error.into());
            }
        };
        // An entry made for an install no install has placed yet has no
        // content here: the map holds every file (or while it loads `find`
        // looks on disk), and two installs of a file new here meet on one
        // entry, so the second one sees what the first placed.
        let existed = !e.unplaced && self.store.holds(file)?;
        // A local version from an older epoch that the incoming one does not
        // descend from holds acknowledged changes the other side never saw:
        // it is not overwritten here; the pair's sync keeps it as a conflict copy.
        let local = &e.meta.stats;
        let kept = || {
            self.conflicts_kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(file.to_owned(), local.stamp()))
        };
        if existed && local.epoch < meta.stats.epoch && local.version > meta.stats.base && !kept() {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!(
                    "{file:?} holds changes (epoch {}, version {}) the incoming copy lacks; left for the sync to keep",
                    local.epoch, local.version
                ),
            ));
        }
        if (existed && e.meta.stats.stamp() >= incoming) || deleted_at >= incoming {
            if !existed {
                self.forget_unwritten(file, entry, e);
                return Ok(Outcome::Deleted);
            }
            return Ok(Outcome::Older);
        }
        // A file new here is handed over with its own metadata as the local
        // one (an entry made by another change holds that change's).
        let local = if existed { &e.meta } else { &meta };
        if let Err(error) = install(&self.store, local, &meta) {
            if !existed {
                self.forget_unwritten(file, entry, e);
            }
            return Err(error.into());
        }
        e.meta = meta;
        e.unplaced = false;
        if deleted_at > (0, 0) {
            self.store.remove_tombstone(file)?;
        }
        Ok(Outcome::Installed)
    }

    /// Keeps this server's copy of `file` as `to` (a conflict copy found
    /// during recovery): a local rename that leaves no tombstone, so the
    /// newer copy of `file` can be installed next.
    ///
    /// A copy, not a rename: nothing on this server is destroyed until the
    /// sync that follows has made the serving server hold what it must, so
    /// a sync cut short leaves `file` as it was. Asking again for a copy
    /// that exists is answered with it (a sync retried).
    pub fn keep_conflict(&self, file: &str, to: &str) -> Result<FileStats, WireError> {
        shared::names::validate_path(to)?;
        let entry = self.entry(file)?;
        let e = self.lock_current(file, &entry)?;
        refuse_while_written(&e, file, "a conflict copy")?;
        let kept_version = (file.to_owned(), e.meta.stats.stamp());
        let mut map = self.lock_map();
        let stats = match self.find(&mut map, to)? {
            Some(kept) => {
                drop(map);
                let kept = lock(&kept);
                if kept.unplaced || kept.deleted {
                    return Err(WireError::unavailable(format!(
                        "{to:?}, the name for the conflict copy of {file:?}, is being changed: try again"
                    )));
                }
                kept.meta.stats.clone()
            }
            None => {
                let content = self.store.read_content(file)?;
                let mut meta = e.meta.clone();
                meta.stats.bump(self.epoch());
                self.store.create(to, &meta)?;
                self.store.commit(to, &content, &meta)?;
                map.entries.insert(to.to_owned(), new_entry(meta.clone()));
                meta.stats
            }
        };
        self.conflicts_kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kept_version);
        Ok(stats)
    }
}
