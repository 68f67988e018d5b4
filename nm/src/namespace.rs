//! The namespace: users, files, their owners and access lists, and where each
//! file lives. Pure in-memory state, with no I/O, so it is tested directly.
//!
//! Every lookup is a hash-map lookup: files by name, readable files by user
//! (so VIEW for a user who can read a few files among a million touches only
//! those, and an access check is one lookup), and folders with their direct
//! children (so a file and a folder never share a name, and VIEWFOLDER lists
//! only what is inside). Pending access requests are kept by id.

use crate::registry::PersistedPair;
use serde::{Deserialize, Serialize};
use shared::names::{parent, validate_path};
use shared::proto::{AccessList, AccessRequest, FileStats, FolderEntry, Op};
use shared::{ErrorCode, WireError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

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

/// A file or folder name, shared by every index that holds it.
type Name = Arc<str>;

#[derive(Debug, Default)]
pub struct Namespace {
    users: BTreeSet<String>,
    /// Records are boxed and a file's name is one shared allocation for the
    /// three maps that hold it: at a million files the table's empty slots
    /// then cost 32 bytes each rather than a whole record's size.
    files: HashMap<Name, Box<FileRecord>>,
    /// Files each user can read (as owner or grantee).
    readable: HashMap<String, HashSet<Name>>,
    /// Folder path → its direct children (full paths); "" is the top.
    folders: HashMap<String, BTreeSet<Name>>,
    /// Names of CREATEs and MOVEs in flight, so two cannot race for one name.
    reserved: HashSet<String>,
    /// Pending access requests by id.
    requests: BTreeMap<u64, AccessRequest>,
    next_request_id: u64,
    /// Replication job ids up to this one may have been handed out: a new
    /// nm (a restart, a new leader) numbers its jobs after it.
    job_ids_reserved: u64,
    /// What the failover machine keeps of each pair, by primary name.
    pairs: BTreeMap<String, PersistedPair>,
    /// Names whose entries changed while a server's inventory was being
    /// reconciled (see [`Namespace::watch_changes`]).
    changes: ChangeLog,
}

/// The names created, reserved or removed since the first of the watchers
/// began, kept while any watches.
#[derive(Debug, Default)]
struct ChangeLog {
    watchers: usize,
    names: HashSet<String>,
    /// Names a DELETE or MOVE is changing on their server now (how many
    /// of each): the server may already show the change nm has not made.
    in_flight: HashMap<String, usize>,
}

/// The folder a path lives in ("" at the top).
fn folder_of(name: &str) -> &str {
    parent(name).unwrap_or("")
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
        self.files.get(name).map(|record| &**record)
    }

    pub fn file_mut(&mut self, name: &str) -> Option<&mut FileRecord> {
        self.files.get_mut(name).map(|record| &mut **record)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &FileRecord)> {
        self.files.iter().map(|(name, record)| (&**name, &**record))
    }

    /// The files `user` can read.
    pub fn readable_by<'a>(
        &'a self,
        user: &str,
    ) -> impl Iterator<Item = (&'a str, &'a FileRecord)> {
        self.readable
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|name| self.files.get_key_value(name))
            .map(|(name, record)| (&**name, &**record))
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
        self.note_change(name);
        self.reserved.insert(name.to_owned());
        Ok(())
    }

    /// Whether `name` is being created (reserved, not yet inserted).
    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(name)
    }

    pub fn unreserve(&mut self, name: &str) {
        self.note_change(name);
        self.reserved.remove(name);
    }

    /// `E_NOT_FOUND` unless the folder a path would live in exists.
    pub fn require_parent(&self, name: &str) -> Result<(), WireError> {
        let folder = folder_of(name);
        if folder.is_empty() || self.folders.contains_key(folder) {
            Ok(())
        } else {
            Err(WireError::not_found(&format!(
                "folder {folder:?} (CREATEFOLDER it first)"
            )))
        }
    }

    pub fn has_folder(&self, folder: &str) -> bool {
        folder.is_empty() || self.folders.contains_key(folder)
    }

    /// CREATEFOLDER: the parent must exist; nothing may have the name.
    pub fn create_folder(&mut self, folder: &str) -> Result<(), WireError> {
        validate_path(folder)?;
        if self.folders.contains_key(folder) {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!("folder {folder:?} already exists"),
            ));
        }
        if self.files.contains_key(folder) || self.reserved.contains(folder) {
            return Err(WireError::new(
                ErrorCode::Exists,
                format!("{folder:?} is a file"),
            ));
        }
        self.require_parent(folder)?;
        self.add_folder(folder);
        Ok(())
    }

    /// Adds a folder and any missing ancestors (used by replay and adoption too).
    pub fn add_folder(&mut self, folder: &str) {
        if folder.is_empty() || self.folders.contains_key(folder) {
            return;
        }
        let up = folder_of(folder);
        self.add_folder(up);
        self.folders.entry(folder.to_owned()).or_default();
        if !up.is_empty() {
            if let Some(children) = self.folders.get_mut(up) {
                children.insert(Arc::from(folder));
            }
        }
    }

    pub fn folders(&self) -> impl Iterator<Item = &String> {
        self.folders.keys()
    }

    /// VIEWFOLDER: the direct children of a folder ("" is the top).
    pub fn folder_entries(&self, folder: &str) -> Result<Vec<FolderEntry>, WireError> {
        let entry = |name: &str| FolderEntry {
            name: name.to_owned(),
            is_folder: self.folders.contains_key(name),
        };
        if folder.is_empty() {
            let mut top: Vec<FolderEntry> = self
                .files
                .keys()
                .map(|name| &**name)
                .chain(self.folders.keys().map(String::as_str))
                .filter(|name| parent(name).is_none())
                .map(entry)
                .collect();
            top.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(top);
        }
        validate_path(folder)?;
        let children = self
            .folders
            .get(folder)
            .ok_or_else(|| WireError::not_found(&format!("folder {folder:?}")))?;
        Ok(children.iter().map(|name| entry(name)).collect())
    }

    /// Starts noting every name whose entry changes (a reservation, an
    /// insertion, a removal), until the matching [`Namespace::unwatch_changes`].
    ///
    /// An inventory reconciled while clients work is a picture taken at
    /// some moment after this call: a name changed since may differ from it
    /// because of that change, and is left alone; every other name has the
    /// same entry now as when the picture was taken.
    pub fn watch_changes(&mut self) {
        self.changes.watchers += 1;
        // Changes already under way count as made since now: a CREATE or
        // MOVE holds its new name reserved, a DELETE or MOVE marks its file.
        let under_way = self.reserved.iter().chain(self.changes.in_flight.keys());
        self.changes.names.extend(under_way.cloned());
    }

    /// A DELETE or MOVE of `name` begins on its server (ended by
    /// [`Namespace::end_change`]).
    pub fn begin_change(&mut self, name: &str) {
        *self.changes.in_flight.entry(name.to_owned()).or_default() += 1;
        self.note_change(name);
    }

    pub fn end_change(&mut self, name: &str) {
        if let Some(count) = self.changes.in_flight.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                self.changes.in_flight.remove(name);
            }
        }
        self.note_change(name);
    }

    pub fn unwatch_changes(&mut self) {
        self.changes.watchers = self.changes.watchers.saturating_sub(1);
        if self.changes.watchers == 0 {
            self.changes.names = HashSet::new();
        }
    }

    /// Whether `name` changed since the oldest watch still running began.
    pub fn changed_while_watched(&self, name: &str) -> bool {
        self.changes.names.contains(name)
    }

    fn note_change(&mut self, name: &str) {
        if self.changes.watchers > 0 {
            self.changes.names.insert(name.to_owned());
        }
    }

    /// Adds (or replaces) a file, creating its folders if missing.
    pub fn insert(&mut self, name: &str, record: FileRecord) {
        self.note_change(name);
        self.reserved.remove(name);
        self.remove(name);
        let shared: Name = Arc::from(name);
        for reader in record.readers() {
            if let Some(set) = self.readable.get_mut(reader) {
                set.insert(shared.clone());
            } else {
                self.readable
                    .insert(reader.clone(), HashSet::from([shared.clone()]));
            }
        }
        let folder = folder_of(name);
        self.add_folder(folder);
        if let Some(children) = self.folders.get_mut(folder) {
            children.insert(shared.clone());
        }
        if !self.users.contains(&record.owner) {
            self.users.insert(record.owner.clone());
        }
        self.files.insert(shared, Box::new(record));
    }

    /// Forgets a file (its folders stay).
    pub fn remove(&mut self, name: &str) -> Option<FileRecord> {
        let record = *self.files.remove(name)?;
        self.note_change(name);
        for reader in record.readers() {
            if let Some(set) = self.readable.get_mut(reader) {
                set.remove(name);
                if set.is_empty() {
                    self.readable.remove(reader);
                }
            }
        }
        if let Some(children) = self.folders.get_mut(folder_of(name)) {
            children.remove(name);
        }
        Some(record)
    }

    /// Replaces a file's access list, keeping the readers index in step.
    pub fn set_acl(&mut self, name: &str, acl: AccessList) {
        if let Some(mut record) = self.remove(name) {
            record.acl = acl;
            self.insert(name, record);
        }
    }

    /// Renames a file; its pending requests follow it.
    pub fn rename(&mut self, name: &str, to: &str) {
        if let Some(record) = self.remove(name) {
            self.insert(to, record);
            for request in self.requests.values_mut().filter(|r| r.file == name) {
                request.file = to.to_owned();
            }
        }
    }

    /// Deletes a file with its pending requests.
    pub fn delete(&mut self, name: &str) -> Option<FileRecord> {
        self.requests.retain(|_, r| r.file != name);
        self.remove(name)
    }

    /// What the journal holds of a pair.
    pub fn pair(&self, primary: &str) -> Option<PersistedPair> {
        self.pairs.get(primary).cloned()
    }

    pub fn set_pair(&mut self, primary: &str, pair: PersistedPair) {
        self.pairs.insert(primary.to_owned(), pair);
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&String, &PersistedPair)> {
        self.pairs.iter()
    }

    /// A fresh request id (ids are never reused, across restarts too).
    pub fn allocate_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    pub fn last_request_id(&self) -> u64 {
        self.next_request_id
    }

    pub fn set_last_request_id(&mut self, id: u64) {
        self.next_request_id = self.next_request_id.max(id);
    }

    pub fn job_ids_reserved(&self) -> u64 {
        self.job_ids_reserved
    }

    pub fn reserve_job_ids(&mut self, up_to: u64) {
        self.job_ids_reserved = self.job_ids_reserved.max(up_to);
    }

    /// Replaces every pending request (nm on etcd keeps them as one value).
    pub fn replace_requests(&mut self, last_id: u64, requests: Vec<AccessRequest>) {
        self.requests = requests.into_iter().map(|r| (r.id, r)).collect();
        self.set_last_request_id(last_id);
    }

    pub fn add_request(&mut self, request: AccessRequest) {
        self.next_request_id = self.next_request_id.max(request.id);
        self.requests.insert(request.id, request);
    }

    pub fn remove_request(&mut self, id: u64) -> Option<AccessRequest> {
        self.requests.remove(&id)
    }

    pub fn request(&self, id: u64) -> Option<&AccessRequest> {
        self.requests.get(&id)
    }

    pub fn requests(&self) -> impl Iterator<Item = &AccessRequest> {
        self.requests.values()
    }

    /// The pending requests for files `owner` owns.
    pub fn requests_for_owner<'a>(
        &'a self,
        owner: &'a str,
    ) -> impl Iterator<Item = &'a AccessRequest> {
        self.requests.values().filter(move |r| {
            self.files
                .get(r.file.as_str())
                .is_some_and(|f| f.owner == owner)
        })
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
        let bobs: Vec<_> = ns.readable_by("bob").map(|(n, _)| n.to_owned()).collect();
        assert_eq!(bobs, ["f"]);
        ns.remove("f");
        assert_eq!(ns.readable_by("bob").count(), 0);
    }

    #[test]
    fn files_and_folders_never_share_a_name() {
        let mut ns = Namespace::default();
        assert_eq!(
            ns.require_parent("a/b").unwrap_err().code,
            ErrorCode::NotFound
        );
        ns.create_folder("a").unwrap();
        assert_eq!(ns.create_folder("a").unwrap_err().code, ErrorCode::Exists);
        assert_eq!(
            ns.create_folder("x/y").unwrap_err().code,
            ErrorCode::NotFound
        );
        ns.require_parent("a/b").unwrap();
        ns.reserve("a/b").unwrap();
        assert_eq!(ns.reserve("a/b").unwrap_err().code, ErrorCode::Exists);
        ns.insert("a/b", record("alice"));
        assert_eq!(ns.reserve("a").unwrap_err().code, ErrorCode::Exists);
        assert_eq!(ns.reserve("a/b/c").unwrap_err().code, ErrorCode::Exists);
        assert_eq!(ns.create_folder("a/b").unwrap_err().code, ErrorCode::Exists);
        ns.create_folder("a/sub").unwrap();
        let names: Vec<_> = ns
            .folder_entries("a")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_folder))
            .collect();
        assert_eq!(
            names,
            [("a/b".to_owned(), false), ("a/sub".to_owned(), true)]
        );
        let top: Vec<_> = ns
            .folder_entries("")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(top, ["a"]);
        ns.rename("a/b", "a/sub/b");
        assert_eq!(ns.folder_entries("a/sub").unwrap()[0].name, "a/sub/b");
        assert!(ns.file("a/b").is_none());
    }

    #[test]
    fn access_lists_and_requests() {
        let mut ns = Namespace::default();
        ns.insert("f", record("alice"));
        let mut acl = AccessList::new();
        acl.insert("bob".into(), Access::Write);
        ns.set_acl("f", acl);
        assert!(ns.check("bob", "f", Op::Write).is_ok());
        assert_eq!(ns.readable_by("bob").count(), 1);
        ns.set_acl("f", AccessList::new());
        assert_eq!(ns.readable_by("bob").count(), 0);
        let id = ns.allocate_request_id();
        ns.add_request(AccessRequest {
            id,
            file: "f".into(),
            user: "bob".into(),
            access: Access::Read,
            requested_ms: 0,
        });
        assert_eq!(ns.requests_for_owner("alice").count(), 1);
        assert_eq!(ns.requests_for_owner("bob").count(), 0);
        assert!(ns.allocate_request_id() > id);
        ns.delete("f");
        assert_eq!(
            ns.requests().count(),
            0,
            "deleting a file drops its requests"
        );
    }

    #[test]
    fn changes_under_way_when_a_watch_begins_count_as_changed() {
        let mut ns = Namespace::default();
        ns.insert("moving", record("alice"));
        ns.reserve("moved").unwrap();
        ns.begin_change("moving");
        ns.watch_changes();
        assert!(ns.changed_while_watched("moving"));
        assert!(ns.changed_while_watched("moved"));
        ns.end_change("moving");
        ns.unwatch_changes();
        ns.watch_changes();
        assert!(
            !ns.changed_while_watched("moving"),
            "ended before this watch"
        );
        assert!(ns.changed_while_watched("moved"), "still reserved");
    }

    #[test]
    fn changes_are_noted_only_while_watched() {
        let mut ns = Namespace::default();
        ns.insert("before", record("alice"));
        ns.watch_changes();
        ns.insert("created", record("alice"));
        ns.reserve("creating").unwrap();
        ns.rename("before", "after");
        ns.watch_changes();
        ns.unwatch_changes();
        assert!(ns.changed_while_watched("created"));
        assert!(ns.changed_while_watched("creating"));
        assert!(
            ns.changed_while_watched("before"),
            "a move changes both names"
        );
        assert!(ns.changed_while_watched("after"));
        assert!(!ns.changed_while_watched("other"));
        ns.unwatch_changes();
        assert!(
            !ns.changed_while_watched("created"),
            "forgotten when nobody watches"
        );
        ns.delete("after");
        assert!(!ns.changed_while_watched("after"));
    }
}
