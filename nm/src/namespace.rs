//! The namespace: users, files, their owners and access lists, and where each
//! file lives. Pure in-memory state, with no I/O, so it is tested directly.
//!
//! Every lookup is a hash-map lookup: files by name, readable files by user
//! (so VIEW for a user who can read a few files among a million touches only
//! those), and the folders implied by file paths (so a file and a folder
//! never share a name).

use serde::{Deserialize, Serialize};
use shared::names::{parent, validate_path};
use shared::proto::{AccessList, FileStats, Op};
use shared::{ErrorCode, WireError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// What nm knows of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub owner: String,
    pub acl: AccessList,
    /// The storage server (the pair's primary) that holds the file.
    pub server: String,
    /// The latest stats reported by that server (not persisted by nm).
    #[serde(skip)]
    pub stats: FileStats,
}

impl FileRecord {
    /// Whether `user` may perform `op`; the owner may do anything.
    pub fn allows(&self, user: &str, op: Op) -> bool {
        self.owner == user || self.acl.get(user).is_some_and(|a| a.allows(op))
    }

    /// Everyone who can read the file.
    fn readers(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.owner).chain(self.acl.keys())
    }
}

#[derive(Debug, Default)]
pub struct Namespace {
    users: BTreeSet<String>,
    files: HashMap<String, FileRecord>,
    /// Files each user can read (as owner or grantee).
    readable: HashMap<String, HashSet<String>>,
    /// Folder path → number of files beneath it.
    folders: HashMap<String, usize>,
    /// Names of CREATEs in flight, so two cannot race for one name.
    reserved: HashSet<String>,
}

impl Namespace {
    /// Remembers a user; `true` if the user is new.
    pub fn add_user(&mut self, name: &str) -> bool {
        self.users.insert(name.to_owned())
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &String> {
        self.users.iter()
    }

    pub fn file(&self, name: &str) -> Option<&FileRecord> {
        self.files.get(name)
    }

    pub fn file_mut(&mut self, name: &str) -> Option<&mut FileRecord> {
        self.files.get_mut(name)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn files(&self) -> impl Iterator<Item = (&String, &FileRecord)> {
        self.files.iter()
    }

    /// The files `user` can read.
    pub fn readable_by<'a>(
        &'a self,
        user: &str,
    ) -> impl Iterator<Item = (&'a String, &'a FileRecord)> {
        self.readable
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|name| self.files.get_key_value(name))
    }

    /// The file, if `user` may perform `op` on it.
    pub fn check(&self, user: &str, name: &str, op: Op) -> Result<&FileRecord, WireError> {
        validate_path(name)?;
        let record = self
            .files
            .get(name)
            .ok_or_else(|| WireError::not_found(&format!("file {name:?}")))?;
        if record.allows(user, op) {
            Ok(record)
        } else {
            let what = match op {
                Op::Write => "write",
                Op::Read | Op::Stream => "read",
            };
            Err(WireError::unauthorized(format!(
                "{user} has no {what} access to {name:?}"
            )))
        }
    }

    /// The file, if `user` owns it.
    pub fn check_owner(&self, user: &str, name: &str) -> Result<&FileRecord, WireError> {
        let record = self.check(user, name, Op::Read).map_err(|e| {
            if e.code == ErrorCode::Unauthorized {
                WireError::unauthorized(format!("only the owner may do that to {name:?}"))
            } else {
                e
            }
        })?;
        if record.owner != user {
            return Err(WireError::unauthorized(format!(
                "only the owner ({}) may do that to {name:?}",
                record.owner
            )));
        }
        Ok(record)
    }

    /// Reserves a name for a CREATE, checking that neither a file, a folder
    /// nor another CREATE has it, and that no parent is a file.
    pub fn reserve(&mut self, name: &str) -> Result<(), WireError> {
        validate_path(name)?;
        let exists = |what: String| Err(WireError::new(ErrorCode::Exists, what));
        if self.files.contains_key(name) || self.reserved.contains(name) {
            return exists(format!("file {name:?} already exists"));
        }
        if self.folders.contains_key(name) {
            return exists(format!("{name:?} is a folder"));
        }
        let mut up = parent(name);
        while let Some(folder) = up {
            if self.files.contains_key(folder) || self.reserved.contains(folder) {
                return exists(format!("{folder:?} is a file, not a folder"));
            }
            up = parent(folder);
        }
        self.reserved.insert(name.to_owned());
        Ok(())
    }

    pub fn unreserve(&mut self, name: &str) {
        self.reserved.remove(name);
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, name: &str, record: FileRecord) {
        self.reserved.remove(name);
        self.remove(name);
        for reader in record.readers() {
            self.readable
                .entry(reader.clone())
                .or_default()
                .insert(name.to_owned());
        }
        let mut up = parent(name);
        while let Some(folder) = up {
            *self.folders.entry(folder.to_owned()).or_default() += 1;
            up = parent(folder);
        }
        self.users.insert(record.owner.clone());
        self.files.insert(name.to_owned(), record);
    }

    pub fn remove(&mut self, name: &str) -> Option<FileRecord> {
        let record = self.files.remove(name)?;
        for reader in record.readers() {
            if let Some(set) = self.readable.get_mut(reader) {
                set.remove(name);
                if set.is_empty() {
                    self.readable.remove(reader);
                }
            }
        }
        let mut up = parent(name);
        while let Some(folder) = up {
            if let Some(n) = self.folders.get_mut(folder) {
                *n -= 1;
                if *n == 0 {
                    self.folders.remove(folder);
                }
            }
            up = parent(folder);
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::Access;

    fn record(owner: &str) -> FileRecord {
        FileRecord {
            owner: owner.into(),
            acl: AccessList::new(),
            server: "ss1".into(),
            stats: FileStats::default(),
        }
    }

    #[test]
    fn owner_and_grantees() {
        let mut ns = Namespace::default();
        let mut r = record("alice");
        r.acl.insert("bob".into(), Access::Read);
        r.acl.insert("carol".into(), Access::Write);
        ns.insert("f", r);
        assert!(ns.check("alice", "f", Op::Write).is_ok());
        assert!(ns.check("bob", "f", Op::Read).is_ok());
        assert_eq!(
            ns.check("bob", "f", Op::Write).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(ns.check("carol", "f", Op::Write).is_ok());
        assert_eq!(
            ns.check("dave", "f", Op::Read).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            ns.check("alice", "g", Op::Read).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            ns.check_owner("bob", "f").unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let bobs: Vec<_> = ns.readable_by("bob").map(|(n, _)| n.clone()).collect();
        assert_eq!(bobs, ["f"]);
        ns.remove("f");
        assert_eq!(ns.readable_by("bob").count(), 0);
    }

    #[test]
    fn files_and_folders_never_share_a_name() {
        let mut ns = Namespace::default();
        ns.reserve("a/b").unwrap();
        assert_eq!(ns.reserve("a/b").unwrap_err().code, ErrorCode::Exists);
        ns.insert("a/b", record("alice"));
        assert_eq!(ns.reserve("a").unwrap_err().code, ErrorCode::Exists);
        assert_eq!(ns.reserve("a/b/c").unwrap_err().code, ErrorCode::Exists);
        ns.reserve("a/c").unwrap();
        ns.remove("a/b");
        ns.unreserve("a/c");
        ns.reserve("a").unwrap();
    }
}
