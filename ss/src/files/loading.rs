//! Loading the folder: the start-up scan runs in the background while
//! files are served from disk, and brings back nothing changed meanwhile.

use super::*;

impl Files {
    /// Loads every file of `store` into memory before returning (see
    /// [`Files::open`] and [`Files::load_all`]).
    pub fn load(store: Store, role: Arc<crate::role::PairRole>) -> Result<Self, StoreError> {
        let files = Self::open(store, role);
        files.load_all()?;
        Ok(files)
    }

    /// Opens `store` with nothing loaded yet: until [`Files::load_all`] has
    /// run, files are read from disk as they are asked for.
    pub fn open(store: Store, role: Arc<crate::role::PairRole>) -> Self {
        Files {
            store,
            role,
            max_file_size: AtomicU64::new(u64::MAX),
            map: Mutex::new(FileMap {
                entries: HashMap::new(),
                removed: Some(HashSet::new()),
            }),
            loaded: Condvar::new(),
            next_session: AtomicU64::new(1),
            conflicts_kept: Mutex::new(HashSet::new()),
            batches_naming: AtomicU64::new(0),
        }
    }

    /// The start-up scan: reads every file's metadata (on every core) and
    /// adds those not touched meanwhile, finishing any delete or create that
    /// a crash interrupted. Safe to run while requests are served.
    pub fn load_all(&self) -> Result<(), StoreError> {
        let result = self.read_all().and_then(|read| self.add_unchanged(read));
        // Even after a failure (the server then stops), nobody waits forever.
        self.finish_loading();
        result
    }

    /// From here on, a file not in memory does not exist.
    pub(super) fn finish_loading(&self) {
        self.lock_map().removed = None;
        self.loaded.notify_all();
    }

    /// The scan's reading half: every file on disk, and every tombstone.
    pub(super) fn read_all(&self) -> Result<ReadAll, StoreError> {
        let found = self.store.scan()?;
        let tombstones = self
            .store
            .tombstones()?
            .into_iter()
            .map(|t| (t.file.clone(), t.stamp()))
            .collect();
        Ok(ReadAll { found, tombstones })
    }

    /// The scan's second half: adds what it read, except names requests
    /// have touched since (they hold newer entries, or were removed).
    pub(super) fn add_unchanged(&self, read: ReadAll) -> Result<(), StoreError> {
        let ReadAll { found, tombstones } = read;
        let mut found = found.into_iter().peekable();
        while found.peek().is_some() {
            let mut map = self.lock_map();
            for file in found.by_ref().take(SCAN_BATCH) {
                let touched = map.entries.contains_key(&file.file)
                    || map.removed.as_ref().is_some_and(|r| r.contains(&file.file));
                if touched {
                    continue;
                }
                let tombstone = tombstones.get(&file.file).copied();
                let name = file.file.clone();
                if let Some(entry) = self.admit(file, tombstone)? {
                    map.entries.insert(name, entry);
                }
            }
        }
        Ok(())
    }

    /// A file found on disk, as an entry, after repairing what a crash cut
    /// short; `None` if it was deleted (its tombstone is newer).
    pub(super) fn admit(
        &self,
        found: crate::store::Found,
        tombstone: Option<(u64, u64)>,
    ) -> Result<Option<EntryRef>, StoreError> {
        let crate::store::Found {
            file,
            mut meta,
            content_newer,
        } = found;
        // Every change renames the content into place first and writes
        // the metadata second; content newer than its metadata is a
        // change a crash cut in between. Its stats are recomputed and its
        // version moves on, so the content on disk is what counts.
        if content_newer {
            let content = self.store.read_content(&file)?;
            let epoch = meta.stats.epoch;
            apply_content_stats(&mut meta.stats, &content, epoch);
            self.store.write_meta(&file, &meta)?;
            tracing::warn!(event = "ss_repaired_meta", file = %file, version = meta.stats.version, "metadata caught up with content after a crash");
        }
        match tombstone {
            Some(deleted) if deleted > meta.stats.stamp() => {
                tracing::info!(event = "ss_finish_delete", file = %file, "completing a delete interrupted by a crash");
                self.store.delete(&file)?;
                return Ok(None);
            }
            Some(_) => self.store.remove_tombstone(&file)?,
            None => {}
        }
        Ok(Some(new_entry(meta)))
    }

    /// Whether the start-up scan has finished.
    pub fn is_loaded(&self) -> bool {
        self.lock_map().removed.is_none()
    }

    /// Waits up to `limit` for the start-up scan to finish; whether it has.
    pub fn wait_loaded_for(&self, limit: std::time::Duration) -> bool {
        let map = self.lock_map();
        let (map, _) = self
            .loaded
            .wait_timeout_while(map, limit, |map| map.removed.is_some())
            .unwrap_or_else(|p| p.into_inner());
        map.removed.is_none()
    }

    /// Waits for the start-up scan to finish.
    pub(super) fn wait_loaded(&self) -> MutexGuard<'_, FileMap> {
        let map = self.lock_map();
        self.loaded
            .wait_while(map, |map| map.removed.is_some())
            .unwrap_or_else(|p| p.into_inner())
    }
}
