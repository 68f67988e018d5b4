//! Tombstones: a deleted file's name, stamp and time, kept until both
//! servers of the pair have the delete, so a copy from the partner cannot
//! bring the file back.

use super::scan::walk;
use super::*;

impl Store {
    /// Records `tombstone`, unless the name has a tombstone as new already:
    /// deletes applied out of order never move it back.
    pub fn write_tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        self.barrier()?;
        let bytes = encode(&tombstone.file, tombstone)?;
        let path = self.path_in(TOMBSTONES, &tombstone.file)?;
        // Writes and removals take turns: a removal of the same name cannot
        // interleave and leave a tombstone the set lacks, nor a write
        // replace a newer one between the comparison and the write. The set
        // itself is held only briefly: `tombstone` never waits for a
        // write's fsyncs.
        let _turn = self
            .tombstone_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self
            .tombstone(&tombstone.file)?
            .is_some_and(|held| held.stamp() >= tombstone.stamp())
        {
            return Ok(());
        }
        self.tombstoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tombstone.file.clone());
        self.write_atomically(&path, &bytes, false, Durable::Now)
    }

    /// The tombstone of one file, if it has one. Most files have none: the
    /// names that may are kept in memory, so asking costs no lookup on disk.
    pub fn tombstone(&self, file: &str) -> Result<Option<Tombstone>, StoreError> {
        if !self
            .tombstoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(file)
        {
            validate_path(file)?;
            return Ok(None);
        }
        match fs::read(self.path_in(TOMBSTONES, file)?) {
            Ok(bytes) => Ok(rmp_serde::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn remove_tombstone(&self, file: &str) -> Result<(), StoreError> {
        self.barrier()?;
        let path = self.path_in(TOMBSTONES, file)?;
        let _turn = self
            .tombstone_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        remove_if_present(&path)?;
        self.tombstoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(file);
        Ok(())
    }

    /// The names of the tombstones on disk, for [`Store::tombstone`].
    pub(super) fn tombstone_names(root: &Path) -> Result<HashSet<String>, StoreError> {
        Ok(walk(&root.join(TOMBSTONES))?.into_iter().collect())
    }

    /// Every tombstone, found by walking `tombstones/`.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let root = self.root.join(TOMBSTONES);
        let mut found = Vec::new();
        for name in walk(&root)? {
            let bytes = fs::read(root.join(&name))?;
            match rmp_serde::from_slice::<Tombstone>(&bytes) {
                Ok(t) => found.push(t),
                Err(e) => {
                    tracing::warn!(event = "ss_bad_tombstone", file = %name, error = %e, "unreadable tombstone skipped")
                }
            }
        }
        Ok(found)
    }
}
