//! A file's metadata on its content's inode: the extended attribute
//! `user.meta`, set on the temp file before the content takes its name, so
//! that a change of content and metadata is one inode, one name and one
//! rename: the unit a crash leaves whole.
//!
//! Why: a document kept as two files (content and metadata) cost a copy,
//! a CREATE and a commit two inodes, two names and two page writes, which
//! was most of a small-file sync's time. Encoded positionally (field names
//! left out) a document's metadata is some 50 bytes, which ext4 keeps inside
//! the inode itself: no block of its own.
//!
//! A change of metadata alone (an access list, a checkpoint, a MOVE) never
//! updates an attribute in place (on this journal-less ext4 a crash could
//! tear it); it writes `meta/<path>` atomically instead, as
//! does any metadata too large for an attribute, or a file system without
//! them. Which of the two holds the current metadata follows from one
//! invariant:
//!
//! **An inode carries an attribute only as the metadata of the file whose
//! content it holds or held, set before that content's first name.** Every
//! change of content moves the file's stamp (epoch, version) on, and spare
//! inodes lose their attribute before reuse, so no attribute is newer than
//! the file's current metadata. Hence [`current`]: `meta/<path>` is current
//! when its stamp is at least the attribute's (it was written after that
//! content); with a lower stamp it is left over from before the last change
//! (removed when the store next opens).

use super::*;
use std::ffi::CStr;
use std::os::fd::AsRawFd;

const ATTR: &CStr = c"user.meta";

/// Metadata larger than this goes to `meta/<path>` (ext4 takes up to one
/// block per attribute; this leaves room for its headers).
pub(super) const MAX_ATTR_BYTES: usize = 2048;

/// The attribute's encoding: positional MessagePack (`meta/<path>` and the
/// wire name their fields; here the bytes decide whether ext4 keeps the
/// attribute inside the inode).
pub(super) fn encode_attr(file: &str, meta: &FileMeta) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(meta).map_err(|e| StoreError::Meta {
        file: file.to_owned(),
        error: e.to_string(),
    })
}

/// Sets `file`'s attribute to `bytes`, or removes it (`None`; absent is fine).
pub(super) fn set_attr(file: &File, bytes: Option<&[u8]>) -> io::Result<()> {
    // SAFETY: the descriptor is open, the name is NUL-terminated and the
    // value is `bytes.len()` readable bytes; all outlive the call.
    let rc = unsafe {
        match bytes {
            Some(bytes) => libc::fsetxattr(
                file.as_raw_fd(),
                ATTR.as_ptr(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
            ),
            None => libc::fremovexattr(file.as_raw_fd(), ATTR.as_ptr()),
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if bytes.is_none() && e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// The attribute of the file at `path`, if it has one (`NotFound` if the
/// file is missing).
pub(super) fn read_attr(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated and `buf` has `buf.len()`
        // writable bytes; all outlive the call.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                ATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// Whether the file system under `dir` keeps attributes: tried on a temp
/// file, removed at once.
pub(super) fn supported(dir: &Path) -> io::Result<bool> {
    let path = dir.join(format!("{}-attr-probe.tmp", std::process::id()));
    let file = File::create(&path)?;
    let probed = set_attr(&file, Some(b"probe"));
    fs::remove_file(&path)?;
    match probed {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The current metadata of a file whose content carries `attr` and which
/// has `separate` in `meta/` (see the module's invariant); `None` if it has
/// neither (an orphan content).
pub(super) fn current(attr: Option<FileMeta>, separate: Option<FileMeta>) -> Option<FileMeta> {
    match (attr, separate) {
        (Some(attr), Some(separate)) if separate.stats.stamp() < attr.stats.stamp() => Some(attr),
        (_, Some(separate)) => Some(separate),
        (attr, None) => attr,
    }
}

/// Whether a separate metadata file with `separate`'s stamp is left over
/// beside an attribute with `attr`'s (see [`current`]).
pub(super) fn is_stale(separate: &FileMeta, attr: Option<&FileMeta>) -> bool {
    attr.is_some_and(|attr| separate.stats.stamp() < attr.stats.stamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::FileStats;

    fn meta(owner: &str, epoch: u64, version: u64) -> FileMeta {
        FileMeta {
            owner: owner.into(),
            acl: Default::default(),
            checkpoints: Default::default(),
            stats: FileStats {
                epoch,
                version,
                ..FileStats::default()
            },
        }
    }

    #[test]
    fn the_separate_file_is_current_unless_older_than_the_attribute() {
        let attr = meta("attr", 2, 5);
        let current = |s: Option<FileMeta>| super::current(Some(attr.clone()), s).unwrap().owner;
        assert_eq!(current(None), "attr");
        assert_eq!(
            current(Some(meta("later", 2, 5))),
            "later",
            "same stamp: written after the content"
        );
        assert_eq!(current(Some(meta("later", 2, 6))), "later");
        assert_eq!(current(Some(meta("left over", 2, 4))), "attr");
        assert_eq!(
            current(Some(meta("left over", 1, 9))),
            "attr",
            "epoch first"
        );
        assert_eq!(
            super::current(None, Some(meta("only", 1, 1)))
                .unwrap()
                .owner,
            "only"
        );
        assert!(super::current(None, None).is_none());
    }

    #[test]
    fn a_document_s_metadata_fits_inside_an_ext4_inode() {
        let mut meta = meta("alice", 3, 120);
        meta.stats = FileStats {
            size: 4096,
            words: 700,
            chars: 4096,
            created_ms: 1_790_000_000_000,
            modified_ms: 1_790_000_000_000,
            accessed_ms: 1_790_000_000_000,
            accessed_by: Some("alice".into()),
            ..meta.stats
        };
        let bytes = encode_attr("f", &meta).unwrap();
        // ext4 (256-byte inodes) keeps a value of up to about 60 bytes
        // under a 4-byte name inside the inode.
        assert!(bytes.len() <= 60, "{} bytes", bytes.len());
        let back: FileMeta = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, meta);
    }
}
