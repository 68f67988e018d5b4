//! Tombstones: a deleted file's name, stamp and time, kept until both
//! servers of the pair have the delete, so a copy from the partner cannot
//! bring the file back.

use super::scan::walk;
use super::*;

impl Store {
    pub fn write_tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        self.barrier()?;
        self.may_have_tombstone(&tombstone.file, true);
        let bytes = encode(&tombstone.file, tombstone)?;
        self.write_atomically(
            &self.path_in(TOMBSTONES, &tombstone.file)?,
            &bytes,
            false,
            Durable::Now,
        )
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
        remove_if_present(&self.path_in(TOMBSTONES, file)?)?;
        self.may_have_tombstone(file, false);
        Ok(())
    }

    /// Keeps the names that may have a tombstone (a superset: a name is
    /// added before its tombstone is written and removed after it is).
    fn may_have_tombstone(&self, file: &str, may: bool) {
        let mut names = self.tombstoned.lock().unwrap_or_else(|p| p.into_inner());
        match may {
            true => names.insert(file.to_owned()),
            false => names.remove(file),
        };
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
