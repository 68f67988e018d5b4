//! The scan: what the folder holds (files and their metadata), read at
//! start-up and for inventories, with the content-newer-than-metadata check
//! that finds a change a crash interrupted.

use super::*;

impl Store {
    /// Every file with its metadata, found by walking `meta/`. A file whose
    /// content is missing is skipped with a warning.
    pub fn inventory(&self) -> Result<Vec<(String, FileMeta)>, StoreError> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|found| (found.file, found.meta))
            .collect())
    }

    /// Every file with its metadata and whether its content is newer than
    /// the metadata (a change a crash cut in between), sorted by name. One
    /// stat of the content and one open of the metadata per file, spread
    /// over the machine's cores: this is most of a server's start-up.
    pub fn scan(&self) -> Result<Vec<Found>, StoreError> {
        let names = walk(&self.root.join(META))?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let per_thread = names.len().div_ceil(threads).max(1);
        let mut found = std::thread::scope(|scope| {
            let workers: Vec<_> = names
                .chunks(per_thread)
                .map(|chunk| scope.spawn(move || self.scan_some(chunk)))
                .collect();
            let mut found = Vec::with_capacity(names.len());
            for worker in workers {
                found.extend(worker.join().expect("scan thread")?);
            }
            Ok::<_, StoreError>(found)
        })?;
        found.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(found)
    }

    pub(super) fn scan_some(&self, names: &[String]) -> Result<Vec<Found>, StoreError> {
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            match self.find(name)? {
                Some(file) => found.push(file),
                None => {
                    tracing::warn!(event = "ss_inventory_orphan_meta", file = %name, "metadata without content; skipped")
                }
            }
        }
        Ok(found)
    }

    /// One file as [`Store::scan`] would find it; `None` if its content or
    /// its metadata is missing. Reads do not update access times
    /// (`O_NOATIME`): a scan of a million files would otherwise dirty a
    /// million inodes for the next `syncfs` to write.
    pub fn find(&self, name: &str) -> Result<Option<Found>, StoreError> {
        let content_modified = match fs::metadata(self.content_path(name)?) {
            Ok(m) => m.modified()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut meta_file = match open_without_atime(&self.path_in(META, name)?) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stat = meta_file.metadata()?;
        let mut bytes = Vec::with_capacity(stat.len() as usize + 1);
        io::Read::read_to_end(&mut meta_file, &mut bytes)?;
        let meta = decode_meta(name, &bytes)?;
        Ok(Some(Found {
            file: name.to_owned(),
            meta,
            content_newer: content_modified > stat.modified()?,
        }))
    }
}

/// One file found by [`Store::scan`].
pub struct Found {
    pub file: String,
    pub meta: FileMeta,
    pub content_newer: bool,
}

/// The relative paths of all regular files under `root`.
pub(super) fn walk(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}
