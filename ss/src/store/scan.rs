//! The scan: what the folder holds (files and their current metadata, see
//! [`super::attrs`]), read at start-up and for inventories, with the
//! content-newer-than-metadata check that finds a change a crash
//! interrupted where the metadata is kept apart.

use super::*;

impl Store {
    /// Every file with its metadata, found by walking `files/`. A content
    /// without metadata is skipped with a warning.
    pub fn inventory(&self) -> Result<Vec<(String, FileMeta)>, StoreError> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|found| (found.file, found.meta))
            .collect())
    }

    /// Every file with its metadata and whether its content is newer than
    /// metadata kept apart (a change a crash cut in between), sorted by
    /// name. One read of the content's attribute per file (and of `meta/`
    /// for the few that have metadata there), spread over the machine's
    /// cores: this is most of a server's start-up.
    pub fn scan(&self) -> Result<Vec<Found>, StoreError> {
        let names = walk(&self.root.join(FILES))?;
        let apart: HashSet<String> = walk(&self.root.join(META))?.into_iter().collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let per_thread = names.len().div_ceil(threads).max(1);
        let mut found = std::thread::scope(|scope| {
            let workers: Vec<_> = names
                .chunks(per_thread)
                .map(|chunk| scope.spawn(|| self.scan_some(chunk, &apart)))
                .collect();
            let mut found = Vec::with_capacity(names.len());
            for worker in workers {
                found.extend(worker.join().expect("scan thread")?);
            }
            Ok::<_, StoreError>(found)
        })?;
        // A packed file has no file of its own (see `Store::open`), but for
        // content without metadata, which `find_knowing` gave its record's.
        let loose: HashSet<String> = found.iter().map(|f| f.file.clone()).collect();
        found.extend(
            self.packs
                .all()
                .into_iter()
                .filter(|(file, _)| !loose.contains(file))
                .map(|(file, meta)| Found {
                    file,
                    meta,
                    content_newer: false,
                }),
        );
        found.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(found)
    }

    fn scan_some(
        &self,
        names: &[String],
        apart: &HashSet<String>,
    ) -> Result<Vec<Found>, StoreError> {
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            match self.find_knowing(name, apart.contains(name))? {
                Some(file) => found.push(file),
                None => {
                    tracing::warn!(event = "ss_inventory_orphan_content", file = %name, "content without metadata; skipped")
                }
            }
        }
        Ok(found)
    }

    /// One file as [`Store::scan`] would find it; `None` if its content or
    /// its metadata is missing.
    pub fn find(&self, name: &str) -> Result<Option<Found>, StoreError> {
        self.find_knowing(name, true)
    }

    /// [`Store::find`], looking in `meta/` only if `maybe_apart`.
    fn find_knowing(&self, name: &str, maybe_apart: bool) -> Result<Option<Found>, StoreError> {
        validate_path(name)?;
        match find_in(&self.root, name, maybe_apart)? {
            Some(found) => Ok(Some(found)),
            None => Ok(self.packs.get(name).map(|packed| Found {
                file: name.to_owned(),
                meta: packed.meta,
                content_newer: false,
            })),
        }
    }
}

/// Reads do not update access times (`O_NOATIME`): a scan of a million
/// files would otherwise dirty a million inodes for the next `syncfs` to
/// write. `name` is validated.
pub(super) fn find_in(
    root: &Path,
    name: &str,
    maybe_apart: bool,
) -> Result<Option<Found>, StoreError> {
    let content = root.join(FILES).join(name);
    let attr = match attrs::read_attr(&content) {
        Ok(attr) => attr.map(|bytes| decode_meta(name, &bytes)).transpose()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let apart = match maybe_apart {
        true => match open_without_atime(&root.join(META).join(name)) {
            Ok(mut meta_file) => {
                let stat = meta_file.metadata()?;
                let mut bytes = Vec::with_capacity(stat.len() as usize + 1);
                io::Read::read_to_end(&mut meta_file, &mut bytes)?;
                Some((decode_meta(name, &bytes)?, stat.modified()?))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        },
        false => None,
    };
    // Content and metadata apart can be cut by a crash (content renamed
    // into place, metadata not yet): only then can content be newer.
    let content_newer = match (&attr, &apart) {
        (None, Some((_, meta_modified))) => fs::metadata(&content)?.modified()? > *meta_modified,
        _ => false,
    };
    let meta = attrs::current(attr, apart.map(|(meta, _)| meta));
    Ok(meta.map(|meta| Found {
        file: name.to_owned(),
        meta,
        content_newer,
    }))
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
