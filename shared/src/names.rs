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
