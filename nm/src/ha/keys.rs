//! How nm's state is laid out in etcd, and how journal records become etcd
//! writes. Pure: no etcd here, so it is tested directly.
//!
//! ```text
//! <prefix>leader            the leader's address, bound to its lease
//! <prefix>members/<addr>    one per nm of the group, bound to its own lease:
//!                           `warm` once its copy of the state is loaded, else `loading`
//! <prefix>state/u/<user>    a user (empty value)
//! <prefix>state/f/<file>    a file: owner, server, access list (MessagePack)
//! <prefix>state/d/<folder>  a folder (empty value)
//! <prefix>state/r           the pending access requests and the last id
//! <prefix>state/p/<primary> what the failover machine keeps of a pair
//! <prefix>state/c/jobs      replication job ids handed out up to here
//! ```
//!
//! One key per object, so the state in etcd is always compact and a
//! standby loads it with a paged range read, then follows it by watching
//! the `state/` prefix: a put or delete of a key is applied to its
//! namespace exactly as the load applies it.

use crate::journal::Record;
use crate::namespace::{FileRecord, Namespace};
use crate::registry::PersistedPair;
use serde::{Deserialize, Serialize};
use shared::proto::AccessRequest;
use std::collections::{BTreeMap, HashMap};

/// The keys of one cluster, under its prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Layout { prefix }
    }

    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    pub fn member(&self, address: &str) -> String {
        format!("{}members/{address}", self.prefix)
    }

    pub fn state(&self) -> String {
        format!("{}state/", self.prefix)
    }

    fn user(&self, name: &str) -> String {
        format!("{}state/u/{name}", self.prefix)
    }

    fn file(&self, name: &str) -> String {
        format!("{}state/f/{name}", self.prefix)
    }

    fn folder(&self, name: &str) -> String {
        format!("{}state/d/{name}", self.prefix)
    }

    fn requests(&self) -> String {
        format!("{}state/r", self.prefix)
    }

    fn job_ids(&self) -> String {
        format!("{}state/c/jobs", self.prefix)
    }

    fn pair(&self, primary: &str) -> String {
        format!("{}state/p/{primary}", self.prefix)
    }

    /// The file a `state/f/` key names.
    pub fn file_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("state/f/")
    }
}

/// The end of the range of keys that start with `prefix` (etcd's convention).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One etcd write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredRequests {
    last_id: u64,
    requests: Vec<AccessRequest>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // These types always encode: plain structs of strings, maps and numbers.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Turns journal records into etcd writes. It keeps the pending requests
/// (few, and stored as one value) so a record that changes them rewrites
/// that value whole.
pub struct Translator {
    layout: Layout,
    requests: BTreeMap<u64, AccessRequest>,
    last_id: u64,
}

impl Translator {
    pub fn new(layout: Layout, ns: &Namespace) -> Translator {
        Translator {
            layout,
            requests: ns.requests().map(|r| (r.id, r.clone())).collect(),
            last_id: ns.last_request_id(),
        }
    }

    /// The files whose current record `records` need read from etcd first
    /// (an access-list change or a move rewrites the whole record).
    pub fn needs(records: &[Record]) -> Vec<String> {
        let mut needed = Vec::new();
        for record in records {
            if let Record::AclSet { file, .. } | Record::FileMoved { file, .. } = record {
                if !needed.contains(file) {
                    needed.push(file.clone());
                }
            }
        }
        needed
    }

    /// The writes that make etcd hold what `records` describe, one per key
    /// (etcd refuses a transaction that touches a key twice). `fetched`: the
    /// records [`Translator::needs`] asked for, as etcd holds them now.
    pub fn translate(
        &mut self,
        records: Vec<Record>,
        mut fetched: HashMap<String, Option<FileRecord>>,
    ) -> Vec<Write> {
        let mut writes: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut requests_changed = false;
        for record in records {
            match record {
                Record::User { name } => {
                    writes.insert(self.layout.user(&name), Some(Vec::new()));
                }
                Record::FileCreated {
                    file,
                    owner,
                    server,
                    acl,
                } => {
                    let record = FileRecord {
                        owner,
                        acl,
                        server,
                        stats: Default::default(),
                    };
                    writes.insert(self.layout.file(&file), Some(encode(&record)));
                    fetched.insert(file, Some(record));
                }
                Record::FileDeleted { file } => {
                    writes.insert(self.layout.file(&file), None);
                    fetched.insert(file.clone(), None);
                    let before = self.requests.len();
                    self.requests.retain(|_, r| r.file != file);
                    requests_changed |= self.requests.len() != before;
                }
                Record::AclSet { file, acl } => {
                    if let Some(Some(record)) = fetched.get_mut(&file) {
                        record.acl = acl;
                        writes.insert(self.layout.file(&file), Some(encode(record)));
                    }
                }
                Record::FolderCreated { folder } => {
                    writes.insert(self.layout.folder(&folder), Some(Vec::new()));
                }
                Record::FileMoved { file, to } => {
                    if let Some(Some(record)) = fetched.insert(file.clone(), None) {
                        writes.insert(self.layout.file(&file), None);
                        writes.insert(self.layout.file(&to), Some(encode(&record)));
                        fetched.insert(to.clone(), Some(record));
                        for request in self.requests.values_mut().filter(|r| r.file == file) {
                            request.file = to.clone();
                            requests_changed = true;
                        }
                    }
                }
                Record::RequestAdded { request } => {
                    self.last_id = self.last_id.max(request.id);
                    self.requests.insert(request.id, request);
                    requests_changed = true;
                }
                Record::RequestRemoved { id } => {
                    requests_changed |= self.requests.remove(&id).is_some();
                }
                Record::JobIds { up_to } => {
                    writes.insert(self.layout.job_ids(), Some(encode(&up_to)));
                }
                Record::Pair {
                    primary,
                    epoch,
                    active,
                    standby_in_sync,
                    offered,
                    backup,
                } => {
                    let pair = PersistedPair {
                        epoch,
                        active,
                        standby_in_sync,
                        offered,
                        backup,
                    };
                    writes.insert(self.layout.pair(&primary), Some(encode(&pair)));
                }
            }
        }
        if requests_changed {
            let stored = StoredRequests {
                last_id: self.last_id,
                requests: self.requests.values().cloned().collect(),
            };
            writes.insert(self.layout.requests(), Some(encode(&stored)));
        }
        writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Write::Put(key, value),
                None => Write::Delete(key),
            })
            .collect()
    }
}

/// Decodes a `state/f/` value.
pub fn decode_file(value: &[u8]) -> Option<FileRecord> {
    rmp_serde::from_slice(value).ok()
}

/// Applies one put of a `state/` key to `ns` (the load and the watch).
pub fn apply_put(layout: &Layout, ns: &mut Namespace, key: &str, value: &[u8]) {
    let Some(rest) = key.strip_prefix(&layout.state()) else {
        return;
    };
    let bad = |what: &str| {
        tracing::warn!(
            event = "nm_etcd_bad_value",
            key,
            what,
            "a value in etcd could not be read; skipped"
        );
    };
    if let Some(user) = rest.strip_prefix("u/") {
        ns.add_user(user);
    } else if let Some(file) = rest.strip_prefix("f/") {
        match decode_file(value) {
            Some(record) => ns.insert(file, record),
            None => bad("file"),
        }
    } else if let Some(folder) = rest.strip_prefix("d/") {
        ns.add_folder(folder);
    } else if rest == "r" {
        match rmp_serde::from_slice::<StoredRequests>(value) {
            Ok(stored) => ns.replace_requests(stored.last_id, stored.requests),
            Err(_) => bad("requests"),
        }
    } else if rest == "c/jobs" {
        match rmp_serde::from_slice::<u64>(value) {
            Ok(up_to) => ns.reserve_job_ids(up_to),
            Err(_) => bad("job ids"),
        }
    } else if let Some(primary) = rest.strip_prefix("p/") {
        match rmp_serde::from_slice::<PersistedPair>(value) {
            Ok(pair) => ns.set_pair(primary, pair),
            Err(_) => bad("pair"),
        }
    }
}

/// Applies one delete of a `state/` key to `ns`.
pub fn apply_delete(layout: &Layout, ns: &mut Namespace, key: &str) {
    if let Some(file) = layout.file_of(key) {
        ns.remove(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::{Access, AccessList};

    fn apply_all(layout: &Layout, ns: &mut Namespace, writes: &[Write]) {
        for write in writes {
            match write {
                Write::Put(key, value) => apply_put(layout, ns, key, value),
                Write::Delete(key) => apply_delete(layout, ns, key),
            }
        }
    }

    /// What etcd would hold, turned back into a namespace, equals the
    /// journal's replay of the same records.
    #[test]
    fn records_through_etcd_keys_give_the_journals_namespace() {
        let layout = Layout::new("/t");
        let mut acl = AccessList::new();
        acl.insert("bob".into(), Access::Read);
        let request = AccessRequest {
            id: 7,
            file: "a.txt".into(),
            user: "carol".into(),
            access: Access::Write,
            requested_ms: 1,
        };
        let batches = vec![
            vec![
                Record::User {
                    name: "alice".into(),
                },
                Record::FolderCreated {
                    folder: "docs".into(),
                },
                Record::FileCreated {
                    file: "a.txt".into(),
                    owner: "alice".into(),
                    server: "ss1".into(),
                    acl: AccessList::new(),
                },
                Record::AclSet {
                    file: "a.txt".into(),
                    acl: acl.clone(),
                },
                Record::RequestAdded {
                    request: request.clone(),
                },
            ],
            vec![
                Record::FileMoved {
                    file: "a.txt".into(),
                    to: "docs/a.txt".into(),
                },
                Record::FileCreated {
                    file: "b.txt".into(),
                    owner: "alice".into(),
                    server: "ss2".into(),
                    acl: AccessList::new(),
                },
                Record::Pair {
                    primary: "ss1".into(),
                    epoch: 3,
                    active: "ss1_backup".into(),
                    standby_in_sync: true,
                    offered: 3,
                    backup: Some("ss1_backup".into()),
                },
            ],
            vec![
                Record::FileDeleted {
                    file: "b.txt".into(),
                },
                Record::JobIds { up_to: 10_000 },
            ],
        ];
        let mut journal_ns = Namespace::default();
        let mut etcd_ns = Namespace::default();
        let mut translator = Translator::new(layout.clone(), &etcd_ns);
        // etcd's current file records, as the writer would read them.
        let mut stored: HashMap<String, Option<FileRecord>> = HashMap::new();
        for batch in batches {
            for record in batch.clone() {
                record.apply(&mut journal_ns);
            }
            let fetched = Translator::needs(&batch)
                .into_iter()
                .map(|f| (f.clone(), stored.get(&f).cloned().flatten()))
                .collect();
            let writes = translator.translate(batch, fetched);
            let keys: Vec<_> = writes
                .iter()
                .map(|w| match w {
                    Write::Put(k, _) | Write::Delete(k) => k.clone(),
                })
                .collect();
            let mut unique = keys.clone();
            unique.dedup();
            assert_eq!(keys, unique, "a key appears twice in one transaction");
            for write in &writes {
                if let Write::Put(key, value) = write {
                    if let Some(file) = layout.file_of(key) {
                        stored.insert(file.to_owned(), decode_file(value));
                    }
                } else if let Write::Delete(key) = write {
                    if let Some(file) = layout.file_of(key) {
                        stored.insert(file.to_owned(), None);
                    }
                }
            }
            apply_all(&layout, &mut etcd_ns, &writes);
        }
        let files = |ns: &Namespace| {
            let mut v: Vec<_> = ns.files().map(|(n, r)| (n.to_owned(), r.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(files(&etcd_ns), files(&journal_ns));
        assert_eq!(files(&etcd_ns).len(), 1);
        assert_eq!(etcd_ns.file("docs/a.txt").unwrap().acl, acl);
        let requests: Vec<_> = etcd_ns.requests().cloned().collect();
        assert_eq!(requests, journal_ns.requests().cloned().collect::<Vec<_>>());
        assert_eq!(
            requests[0].file, "docs/a.txt",
            "the request followed the move"
        );
        assert_eq!(etcd_ns.last_request_id(), 7);
        assert_eq!(etcd_ns.pair("ss1"), journal_ns.pair("ss1"));
        assert!(etcd_ns.has_user("alice") && etcd_ns.has_folder("docs"));
        assert_eq!(etcd_ns.job_ids_reserved(), 10_000);
        assert_eq!(journal_ns.job_ids_reserved(), 10_000);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
