//! File and user name validation, shared so that every peer refuses the same names.
//!
//! A file name is a `/`-separated path of components; each component is 1 to
//! 255 bytes of UTF-8 without NUL or `/`, and is neither `.` nor `..`; no
//! leading `/`; at most 4096 bytes in all. Storage servers join validated names
//! under their storage folder, so a name that passes here can never escape it.

use crate::error::{ErrorCode, WireError};

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;
pub const MAX_USER_BYTES: usize = 64;

/// Checks a file or folder path; the error says which rule it broke.
pub fn validate_path(name: &str) -> Result<(), WireError> {
    let invalid = |why: &str| {
        Err(WireError::new(
            ErrorCode::InvalidName,
            format!("invalid name {:?}: {why}", truncate(name)),
        ))
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_PATH_BYTES {
        return invalid("longer than 4096 bytes");
    }
    if name.starts_with('/') {
        return invalid("absolute paths are not allowed");
    }
    if name.contains('\0') {
        return invalid("contains NUL");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return invalid("empty path component");
        }
        if component == "." || component == ".." {
            return invalid("'.' and '..' are not allowed");
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return invalid("a component is longer than 255 bytes");
        }
        if component.chars().any(|c| c.is_control()) {
            return invalid("contains control characters");
        }
    }
    Ok(())
}

/// The name of the conflict copy of `file` that `server` acknowledged in
/// `epoch`: `<file>.conflict-<server>-e<epoch>`. When that would break a name
/// limit, the last component's stem is cut short and followed by `~` and a
/// hash of the whole original name, so the copy always has a valid name and
/// two long names never share one.
pub fn conflict_copy_name(file: &str, server: &str, epoch: u64) -> String {
    use sha2::Digest;
    let suffix = format!(".conflict-{server}-e{epoch}");
    let (folder, last) = match file.rsplit_once('/') {
        Some((folder, last)) => (Some(folder), last),
        None => (None, file),
    };
    let fits = |last_len: usize| {
        last_len + suffix.len() <= MAX_COMPONENT_BYTES
            && folder.map_or(0, |f| f.len() + 1) + last_len + suffix.len() <= MAX_PATH_BYTES
    };
    if fits(last.len()) {
        return format!("{file}{suffix}");
    }
    let hash = sha2::Sha256::digest(file.as_bytes());
    let tag: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut keep = last.len();
    while keep > 0 && (!fits(keep + 1 + tag.len()) || !last.is_char_boundary(keep)) {
        keep -= 1;
    }
    let short = format!("{}~{tag}{suffix}", &last[..keep]);
    match folder {
        Some(folder) => format!("{folder}/{short}"),
        None => short,
    }
}

/// Checks a checkpoint tag: one path component (1 to 255 bytes, no `/`).
pub fn validate_tag(tag: &str) -> Result<(), WireError> {
    if tag.contains('/') {
        return Err(WireError::new(
            ErrorCode::InvalidName,
            format!("invalid tag {:?}: no '/' allowed", truncate(tag)),
        ));
    }
    validate_path(tag)
}

/// The last component of a path (`a/b/c` → `c`).
pub fn base_name(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, base)| base)
}

/// Checks a user (or server) name: 1 to 64 bytes of letters, digits, `_`, `-`, `.`.
pub fn validate_user(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::InvalidName,
            format!(
                "invalid user name {:?}: use 1 to 64 letters, digits, '_', '-' or '.'",
                truncate(name)
            ),
        ))
    }
}

/// The parent folder of a path (`a/b/c` → `Some("a/b")`), `None` at the top.
pub fn parent(name: &str) -> Option<&str> {
    name.rsplit_once('/').map(|(parent, _)| parent)
}

fn truncate(name: &str) -> String {
    name.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_copies_always_have_valid_names() {
        assert_eq!(
            conflict_copy_name("a.txt", "ss1", 3),
            "a.txt.conflict-ss1-e3"
        );
        let long = "x".repeat(250);
        let copy = conflict_copy_name(&long, "ss1_backup", 12);
        validate_path(&copy).unwrap();
        assert!(copy.ends_with(".conflict-ss1_backup-e12"), "{copy}");
        let other = conflict_copy_name(&format!("{}y", "x".repeat(249)), "ss1_backup", 12);
        assert_ne!(copy, other, "two long names never share a copy");
        let nested = format!("{}/{}", "d".repeat(200), "é".repeat(127));
        let copy = conflict_copy_name(&nested, "ss1", 1);
        validate_path(&copy).unwrap();
        assert!(copy.starts_with(&"d".repeat(200)));
        let deep = vec!["f".repeat(250); 16].join("/");
        validate_path(&deep).unwrap();
        validate_path(&conflict_copy_name(&deep, "ss1", 1)).unwrap();
    }

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "notes/today.txt", "a/b/c", "é.txt", "...", "a..b"] {
            validate_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_traversal_and_oddities() {
        let long_component = "x".repeat(256);
        let long_path = vec!["y"; 2049].join("/");
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "../../../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "nul\0byte",
            long_component.as_str(),
            long_path.as_str(),
            "tab\there",
        ] {
            let err = validate_path(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidName, "{bad:?}");
        }
    }

    #[test]
    fn user_names() {
        validate_user("alice").unwrap();
        validate_user("ss1_backup").unwrap();
        assert!(validate_user("").is_err());
        assert!(validate_user("bob smith").is_err());
        assert!(validate_user(&"u".repeat(65)).is_err());
    }

    #[test]
    fn parent_of_paths() {
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("c"), None);
    }
}
