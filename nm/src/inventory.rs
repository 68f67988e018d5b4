//! The serving server's inventory, reconciled with the namespace after it
//! registers, while it serves.
//!
//! A registration is one frame, answered at once: with a million files,
//! listing, sending and reconciling them takes seconds, and a takeover by a
//! new nm leader must not wait for that before clients are served. So nm
//! asks the pair's serving server for its inventory afterwards, on a
//! connection of its own (its heartbeats go on meanwhile), and reconciles it
//! page by page, holding the namespace lock for one page at a time:
//!
//! - a file the server holds that nm does not know (a CREATE whose journal
//!   record was lost in a crash) is adopted;
//! - a file nm places on the pair that the server does not hold is kept, to
//!   be copied back from the partner by a sync that compares everything, or
//!   forgotten if there is no partner.
//!
//! Clients create, delete and move files while the inventory is read, so a
//! page is a picture of the server at some moment after the reconcile began.
//! The namespace notes every name changed since then
//! ([`Namespace::watch_changes`](crate::namespace::Namespace::watch_changes)),
//! and the reconcile leaves those names alone: a file deleted meanwhile is
//! not adopted again, a file created meanwhile is not missing. Every other
//! name had the same entry when the picture was taken as it has now.
//!
//! A sync from the server waits until its inventory is reconciled (what is
//! missing decides what the sync compares; see [`Nm::inventory_due`]).

use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::state::{Nm, State};
use shared::names::validate_path;
use shared::proto::InventoryEntry;
use shared::WireError;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a failed attempt nm asks for the inventory again.
const RETRY: Duration = Duration::from_millis(500);

/// Notes namespace changes while it lives.
struct Watching<'a>(&'a Nm);

impl<'a> Watching<'a> {
    fn start(nm: &'a Nm) -> Self {
        nm.state().ns.watch_changes();
        Watching(nm)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.state().ns.unwatch_changes();
    }
}

/// Files of one page nm did not know: their names reserved in the
/// namespace until their journal records are written, then inserted.
#[derive(Default)]
struct Adoptions {
    records: Vec<Record>,
    files: Vec<(String, FileRecord)>,
}

impl Nm {
    /// Reconciles `name`'s inventory with the namespace, again after a
    /// failure, until done or until the server registers again or stops
    /// serving its pair.
    pub(crate) async fn reconcile_inventory(self: Arc<Self>, name: String, generation: u64) {
        let started = Instant::now();
        loop {
            match self.reconcile_inventory_once(&name, generation).await {
                Ok(Some(files)) => {
                    tracing::info!(
                        event = "nm_inventory_reconciled",
                        server = %name,
                        files,
                        ms = started.elapsed().as_millis() as u64,
                        "inventory reconciled with the namespace"
                    );
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(event = "nm_inventory_failed", server = %name, error = %e, "reading the inventory failed; trying again");
                    tokio::time::sleep(RETRY).await;
                    if self.serving_pair(&name, generation).is_none() {
                        break;
                    }
                }
            }
        }
        let mut state = self.state();
        if let Some(entry) = state
            .registry
            .get_mut(&name)
            .filter(|e| e.generation == generation)
        {
            entry.inventory_due = false;
        }
    }

    /// `Some(files held)` once reconciled, `None` if the server no longer
    /// serves under this registration.
    ///
    /// What the reconcile changes is journalled before anyone can act on
    /// it, so the journal (or etcd) orders it before any client's change of
    /// the same name: an adopted file's name stays reserved until its
    /// record is written, and a file found lost is recorded deleted before
    /// it leaves the namespace.
    async fn reconcile_inventory_once(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<usize>, WireError> {
        let client = {
            let state = self.state();
            match state.registry.get(name) {
                Some(entry) if entry.generation == generation => entry.client.clone(),
                _ => return Ok(None),
            }
        };
        let _watching = Watching::start(self);
        let mut pages = client.inventory_by_page().await?;
        let mut held = HashSet::new();
        while let Some(page) = pages.next().await? {
            let (pair, adoptions) = {
                let mut state = self.state();
                let Some(pair) = self.serving_pair_in(&state, name, generation) else {
                    return Ok(None);
                };
                let adoptions = adopt_or_refresh(&mut state, &pair, page, &mut held);
                (pair, adoptions)
            };
            // Stats a lost notice would have brought may come this way.
            self.notices_recorded.send_modify(|n| *n += 1);
            self.adopt(&pair, adoptions).await?;
        }
        drop(pages);
        let files = held.len();
        let lost = {
            let state = self.state();
            let Some(pair) = self.serving_pair_in(&state, name, generation) else {
                return Ok(None);
            };
            let partner = state
                .registry
                .pair(&pair)
                .and_then(|p| p.name(p.fsm.standby_side()).map(str::to_owned));
            (pair.clone(), partner, lacking(&state, &pair, &held))
        };
        self.missing(lost).await?;
        let mut state = self.state();
        if let Some(pair) = self.serving_pair_in(&state, name, generation) {
            let placed = state.ns.files().filter(|(_, r)| r.server == pair).count();
            if let Some(entry) = state.registry.get_mut(name) {
                entry.files = placed as u64;
            }
        }
        Ok(Some(files))
    }

    /// Writes a page's adoptions to the journal, then inserts them (their
    /// names were reserved meanwhile); if the journal fails, they are
    /// released and the next attempt finds them again.
    async fn adopt(&self, pair: &str, adoptions: Adoptions) -> Result<(), WireError> {
        if adoptions.files.is_empty() {
            return Ok(());
        }
        let written = self.journal.append(adoptions.records).await;
        let mut state = self.state();
        for (file, record) in adoptions.files {
            if written.is_ok() {
                // One line per file at debug only: a primary returning
                // with many files would otherwise log each under the lock.
                tracing::debug!(event = "nm_file_adopted", server = pair, file = %file, owner = %record.owner);
                state.ns.insert(&file, record);
            } else {
                state.ns.unreserve(&file);
            }
        }
        written
    }

    /// The pair `name` serves under registration `generation`.
    fn serving_pair(&self, name: &str, generation: u64) -> Option<String> {
        self.serving_pair_in(&self.state(), name, generation)
    }

    fn serving_pair_in(&self, state: &State, name: &str, generation: u64) -> Option<String> {
        if !state.registry.is_current(name, generation) {
            return None;
        }
        state
            .registry
            .pair_of(name)
            .filter(|p| p.active() == name)
            .map(|p| p.primary.clone())
    }

    /// Files nm places on `pair` that the whole inventory lacks: kept for
    /// the partner to copy back, or forgotten if there is no partner.
    async fn missing(
        &self,
        (pair, partner, lost): (String, Option<String>, Vec<String>),
    ) -> Result<(), WireError> {
        if lost.is_empty() {
            return Ok(());
        }
        if let Some(partner) = partner {
            // The next sync of the pair compares everything and copies
            // back what only the partner has.
            self.catch_up
                .compare_everything_next(&pair, "the serving server lacks files nm knows");
            for file in lost {
                tracing::warn!(event = "nm_file_missing", server = %pair, file = %file, partner = %partner, "the serving server does not hold this file; kept, to be copied back from its partner");
            }
            return Ok(());
        }
        // Recorded first: until it leaves the namespace no CREATE or MOVE
        // can take the name, and a later change of it is ordered after.
        let records = lost
            .iter()
            .map(|file| Record::FileDeleted { file: file.clone() })
            .collect();
        self.journal.append(records).await?;
        let mut state = self.state();
        for file in lost {
            tracing::warn!(event = "nm_file_lost", server = %pair, file = %file, "the server no longer holds this file and has no partner; forgetting it");
            state.ns.delete(&file);
        }
        Ok(())
    }

    /// Whether `source` serves and nm has not reconciled its inventory yet.
    pub(crate) fn inventory_due(&self, source: &str) -> bool {
        let state = self.state();
        state
            .registry
            .get(source)
            .is_some_and(|entry| entry.connected && entry.inventory_due)
    }
}

/// The files nm places on `pair` that are not `held`, leaving out names
/// changed since the reconcile began.
fn lacking(state: &State, pair: &str, held: &HashSet<String>) -> Vec<String> {
    state
        .ns
        .files()
        .filter(|(file, record)| {
            record.server == pair && !held.contains(*file) && !state.ns.changed_while_watched(file)
        })
        .map(|(file, _)| file.to_owned())
        .collect()
}

/// Files of a page refresh their stats in the namespace, or, unknown to
/// it, are reserved there for adoption (see [`Adoptions`]); names changed
/// since the reconcile began are left alone.
fn adopt_or_refresh(
    state: &mut State,
    pair: &str,
    page: Vec<InventoryEntry>,
    held: &mut HashSet<String>,
) -> Adoptions {
    let mut adoptions = Adoptions::default();
    for entry in page {
        if let Err(e) = validate_path(&entry.file) {
            tracing::warn!(event = "nm_inventory_bad_name", server = pair, error = %e);
            continue;
        }
        if state.ns.changed_while_watched(&entry.file) {
            held.insert(entry.file);
            continue;
        }
        match state.ns.file_mut(&entry.file) {
            Some(record) if record.server == pair => {
                // A change notice may have brought newer stats since the
                // page was listed.
                if entry.meta.stats.stamp() >= record.stats.stamp() {
                    record.stats = entry.meta.stats;
                }
            }
            Some(_) => {
                tracing::warn!(event = "nm_inventory_conflict", server = pair, file = %entry.file, "file also held by another server; keeping nm's placement");
                continue;
            }
            None => {
                if let Err(e) = state.ns.reserve(&entry.file) {
                    tracing::warn!(event = "nm_inventory_conflict", server = pair, file = %entry.file, error = %e);
                    continue;
                }
                let owner = &entry.meta.owner;
                let new_owner = !state.ns.has_user(owner)
                    && !adoptions
                        .records
                        .iter()
                        .any(|r| matches!(r, Record::User { name } if name == owner));
                if new_owner {
                    adoptions.records.push(Record::User {
                        name: owner.clone(),
                    });
                }
                adoptions.records.push(Record::FileCreated {
                    file: entry.file.clone(),
                    owner: owner.clone(),
                    server: pair.to_owned(),
                    acl: entry.meta.acl.clone(),
                });
                adoptions.files.push((
                    entry.file.clone(),
                    FileRecord {
                        owner: entry.meta.owner,
                        acl: entry.meta.acl,
                        server: pair.to_owned(),
                        stats: entry.meta.stats,
                    },
                ));
            }
        }
        held.insert(entry.file);
    }
    adoptions
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::FileMeta;

    fn state_with(files: &[&str]) -> State {
        let mut state = State {
            ns: Default::default(),
            registry: Default::default(),
        };
        for file in files {
            state.ns.insert(file, record());
        }
        state
    }

    fn record() -> FileRecord {
        FileRecord {
            owner: "alice".into(),
            acl: Default::default(),
            server: "ss1".into(),
            stats: Default::default(),
        }
    }

    fn entry(file: &str) -> InventoryEntry {
        InventoryEntry {
            file: file.into(),
            meta: FileMeta {
                owner: "bob".into(),
                acl: Default::default(),
                stats: Default::default(),
                checkpoints: Default::default(),
            },
        }
    }

    #[test]
    fn unknown_files_are_adopted_and_missing_ones_found() {
        let mut state = state_with(&["kept", "gone"]);
        state.ns.watch_changes();
        let mut held = HashSet::new();
        let adoptions = adopt_or_refresh(
            &mut state,
            "ss1",
            vec![entry("kept"), entry("orphan")],
            &mut held,
        );
        assert!(
            state.ns.is_reserved("orphan"),
            "held back until its record is written"
        );
        assert_eq!(adoptions.files.len(), 1);
        assert_eq!(adoptions.files[0].1.owner, "bob");
        assert_eq!(
            adoptions.records.len(),
            2,
            "the new owner and the adopted file"
        );
        assert_eq!(state.ns.file("kept").unwrap().owner, "alice");
        assert_eq!(lacking(&state, "ss1", &held), ["gone"]);
    }

    #[test]
    fn stats_newer_than_the_page_are_kept() {
        let mut state = state_with(&["f"]);
        state.ns.file_mut("f").unwrap().stats.version = 5;
        let mut older = entry("f");
        older.meta.stats.version = 4;
        adopt_or_refresh(&mut state, "ss1", vec![older], &mut HashSet::new());
        assert_eq!(state.ns.file("f").unwrap().stats.version, 5);
        let mut newer = entry("f");
        newer.meta.stats.version = 6;
        adopt_or_refresh(&mut state, "ss1", vec![newer], &mut HashSet::new());
        assert_eq!(state.ns.file("f").unwrap().stats.version, 6);
    }

    #[test]
    fn names_changed_while_the_inventory_was_read_are_left_alone() {
        // The server listed `deleted` and not `created`; both changed in
        // the namespace after the reconcile began, before the page came.
        let mut state = state_with(&["deleted"]);
        state.ns.watch_changes();
        state.ns.delete("deleted");
        state.ns.insert("created", record());
        let mut held = HashSet::new();
        let adoptions = adopt_or_refresh(&mut state, "ss1", vec![entry("deleted")], &mut held);
        assert!(
            adoptions.files.is_empty() && !state.ns.is_reserved("deleted"),
            "a file deleted meanwhile would come back"
        );
        assert!(
            lacking(&state, "ss1", &held).is_empty(),
            "a file created meanwhile counted as missing"
        );
    }
}
