//! What each pair's standby may be missing: the files changed since the two
//! servers of the pair were last known to be level.
//!
//! Why: a standby that comes back after a restart has, on a large server,
//! almost everything already. Comparing the two whole inventories to find
//! the few files that changed while it was away costs two full listings
//! (a million entries each) for ten copies. With this record the catch-up
//! asks both sides about the changed files only.
//!
//! How it stays exact:
//! - Every change nm hears of passes through `Nm::replicate` and is
//!   [`recorded`](CatchUp::record) here first, with a ticket (a counter).
//! - A replication job that copied a file [`settles`](CatchUp::settle) it,
//!   unless the file changed again after the job started.
//! - A sync that compared both inventories [`levels`](CatchUp::level) the
//!   pair: it settles every change recorded before it started
//!   ([`CatchUp::mark`]) and names the standby that is now level, with the
//!   storage-folder identities of both sides.
//! - [`CatchUp::missing`] answers only for that standby on that folder, with
//!   the same active server: a server back on an emptied disk, or one that
//!   was active meanwhile, is compared in full.
//! - The record is [`forgotten`](CatchUp::forget) whenever it cannot be
//!   trusted: too many changed files ([`MAX_TRACKED`]), a full queue, a job
//!   that failed for good, or a change of roles (a promotion or hand-back: a
//!   server that was active may have acknowledged changes nm never heard
//!   of). nm starts with no record, so its first sync of a pair is full.

use std::collections::HashMap;
use std::sync::Mutex;

/// Changed files remembered per pair; past this the next sync compares everything.
pub const MAX_TRACKED: usize = 200_000;

/// One side of a pair as it was when the pair was levelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub server: String,
    /// The identity of its storage folder (see `ss::store::Store::id`).
    pub store_id: u64,
}

/// The point a sync started from: changes recorded up to here are covered by it.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    ticket: u64,
    generation: u64,
}

#[derive(Default)]
struct PairRecord {
    /// Set by a complete sync: (active, standby) as they were then.
    level: Option<(Side, Side)>,
    /// Changed file → ticket of its latest change.
    changed: HashMap<String, u64>,
    /// Changed files whose latest change went on the replication stream:
    /// its (epoch, version), settled when the standby acknowledges it.
    streamed: HashMap<String, (u64, u64)>,
    /// Bumped by every `forget`, so a sync that started before it cannot level the pair.
    generation: u64,
}

#[derive(Default)]
pub struct CatchUp {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    pairs: HashMap<String, PairRecord>,
}

impl CatchUp {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a change to `file` on `pair`; returns its ticket.
    pub fn record(&self, pair: &str, file: &str) -> u64 {
        Self::record_in(&mut self.lock(), pair, file, None)
    }

    /// Notes a change to `file` at `stamp` that went to the standby on the
    /// replication stream.
    pub fn record_streamed(&self, pair: &str, file: &str, stamp: (u64, u64)) -> u64 {
        Self::record_in(&mut self.lock(), pair, file, Some(stamp))
    }

    fn record_in(state: &mut State, pair: &str, file: &str, streamed: Option<(u64, u64)>) -> u64 {
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        let record = state.pairs.entry(pair.to_owned()).or_default();
        if record.changed.len() >= MAX_TRACKED && !record.changed.contains_key(file) {
            tracing::info!(
                event = "nm_catch_up_overflow",
                pair,
                tracked = MAX_TRACKED,
                "too many changed files to remember; the next sync compares everything"
            );
            Self::reset(record);
        }
        let pending = record.changed.insert(file.to_owned(), ticket).is_some();
        match streamed {
            // Notices can arrive out of order (an UNDO's or an access
            // change's answer comes after a later ETIRW's notice): a stamp
            // never goes backwards, and a pending change that was not
            // streamed is not turned into one an acknowledgement settles.
            Some(stamp) => match record.streamed.get(file) {
                Some(latest) if *latest > stamp => {}
                None if pending => {}
                _ => {
                    record.streamed.insert(file.to_owned(), stamp);
                }
            },
            None => {
                record.streamed.remove(file);
            }
        }
        ticket
    }

    /// The standby acknowledged `file` at `stamp` on the stream: settled,
    /// unless a later change (streamed or not) was recorded since.
    pub fn settle_streamed(&self, pair: &str, file: &str, stamp: (u64, u64)) -> bool {
        let mut state = self.lock();
        let Some(record) = state.pairs.get_mut(pair) else {
            return false;
        };
        match record.streamed.get(file) {
            Some(latest) if *latest <= stamp => {
                record.streamed.remove(file);
                record.changed.remove(file);
                true
            }
            _ => false,
        }
    }

    /// The ticket of the latest change to `file`, if it is not settled.
    pub fn ticket(&self, pair: &str, file: &str) -> Option<u64> {
        self.lock().pairs.get(pair)?.changed.get(file).copied()
    }

    /// The standby holds `file` as of `ticket`: forget it unless it changed since.
    pub fn settle(&self, pair: &str, file: &str, ticket: u64) {
        let mut state = self.lock();
        if let Some(record) = state.pairs.get_mut(pair) {
            if record.changed.get(file) == Some(&ticket) {
                record.changed.remove(file);
                record.streamed.remove(file);
            }
        }
    }

    /// Taken when a sync starts, before it lists anything.
    pub fn mark(&self, pair: &str) -> Mark {
        let state = self.lock();
        Mark {
            ticket: state.next_ticket,
            generation: state.pairs.get(pair).map_or(0, |r| r.generation),
        }
    }

    /// A sync that started at `mark` brought `standby` level with `active`.
    /// Returns whether the pair is now tracked (false if it was forgotten meanwhile).
    pub fn level(&self, pair: &str, mark: Mark, active: Side, standby: Side) -> bool {
        let mut state = self.lock();
        let record = state.pairs.entry(pair.to_owned()).or_default();
        if record.generation != mark.generation {
            return false;
        }
        record.changed.retain(|_, ticket| *ticket > mark.ticket);
        let changed = &record.changed;
        record.streamed.retain(|file, _| changed.contains_key(file));
        record.level = Some((active, standby));
        true
    }

    /// Drops what is known about `pair`: its next sync compares everything.
    pub fn forget(&self, pair: &str, reason: &str) {
        let mut state = self.lock();
        if let Some(record) = state.pairs.get_mut(pair) {
            if record.level.is_some() {
                tracing::info!(
                    event = "nm_catch_up_forgotten",
                    pair,
                    reason,
                    "the next sync of the pair compares everything"
                );
            }
            Self::reset(record);
        }
    }

    fn reset(record: &mut PairRecord) {
        record.level = None;
        record.changed.clear();
        record.streamed.clear();
        record.generation += 1;
    }

    /// The files `standby` may lack compared with `active`, if the pair was
    /// levelled with exactly these two sides; `None`: compare everything.
    pub fn missing(&self, pair: &str, active: &Side, standby: &Side) -> Option<Vec<String>> {
        let state = self.lock();
        let record = state.pairs.get(pair)?;
        let (level_active, level_standby) = record.level.as_ref()?;
        if level_active != active || level_standby != standby || standby.store_id == 0 {
            return None;
        }
        let mut files: Vec<String> = record.changed.keys().cloned().collect();
        files.sort_unstable();
        Some(files)
    }

    /// Changed files remembered for `pair` (for STATUS and tests).
    pub fn tracked(&self, pair: &str) -> usize {
        self.lock().pairs.get(pair).map_or(0, |r| r.changed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(server: &str, store_id: u64) -> Side {
        Side {
            server: server.into(),
            store_id,
        }
    }

    fn levelled() -> CatchUp {
        let log = CatchUp::default();
        let mark = log.mark("ss1");
        assert!(log.level("ss1", mark, side("ss1", 1), side("ss1_backup", 2)));
        log
    }

    #[test]
    fn a_streamed_change_is_settled_by_its_acknowledgement_only() {
        let log = levelled();
        let (active, standby) = (side("ss1", 1), side("ss1_backup", 2));
        log.record_streamed("ss1", "a", (1, 5));
        // An older acknowledgement settles nothing.
        assert!(!log.settle_streamed("ss1", "a", (1, 4)));
        assert_eq!(
            log.missing("ss1", &active, &standby),
            Some(vec!["a".into()])
        );
        assert!(log.settle_streamed("ss1", "a", (1, 5)));
        assert_eq!(log.missing("ss1", &active, &standby), Some(vec![]));
        // A change that went through nm after the streamed one is not
        // settled by the stream's acknowledgement.
        log.record_streamed("ss1", "b", (1, 7));
        log.record("ss1", "b");
        assert!(!log.settle_streamed("ss1", "b", (1, 7)));
        assert_eq!(
            log.missing("ss1", &active, &standby),
            Some(vec!["b".into()])
        );
        // Notices out of order: an older streamed change recorded after a
        // newer one is not the one an acknowledgement settles.
        log.record_streamed("ss1", "c", (1, 7));
        log.record_streamed("ss1", "c", (1, 6));
        assert!(!log.settle_streamed("ss1", "c", (1, 6)));
        assert!(log.settle_streamed("ss1", "c", (1, 7)));
        // Nor does a streamed stamp settle a change that went through nm.
        log.record("ss1", "d");
        log.record_streamed("ss1", "d", (1, 9));
        assert!(!log.settle_streamed("ss1", "d", (1, 9)));
        assert!(log
            .missing("ss1", &active, &standby)
            .is_some_and(|m| m.contains(&"d".to_owned())));
    }

    #[test]
    fn nothing_is_known_before_a_complete_sync() {
        let log = CatchUp::default();
        log.record("ss1", "a");
        assert_eq!(
            log.missing("ss1", &side("ss1", 1), &side("ss1_backup", 2)),
            None
        );
    }

    #[test]
    fn changes_after_the_level_point_are_missing_until_settled() {
        let log = levelled();
        let a = log.record("ss1", "a");
        log.record("ss1", "b");
        let (active, standby) = (side("ss1", 1), side("ss1_backup", 2));
        assert_eq!(
            log.missing("ss1", &active, &standby),
            Some(vec!["a".into(), "b".into()])
        );
        log.settle("ss1", "a", a);
        assert_eq!(
            log.missing("ss1", &active, &standby),
            Some(vec!["b".into()])
        );
    }

    #[test]
    fn a_change_after_a_job_started_is_not_settled_by_it() {
        let log = levelled();
        let started = log.record("ss1", "a");
        log.record("ss1", "a");
        log.settle("ss1", "a", started);
        assert_eq!(log.tracked("ss1"), 1);
    }

    #[test]
    fn a_sync_settles_only_what_was_recorded_before_it_started() {
        let log = CatchUp::default();
        log.record("ss1", "before");
        let mark = log.mark("ss1");
        log.record("ss1", "during");
        assert!(log.level("ss1", mark, side("ss1", 1), side("ss1_backup", 2)));
        assert_eq!(
            log.missing("ss1", &side("ss1", 1), &side("ss1_backup", 2)),
            Some(vec!["during".into()])
        );
    }

    #[test]
    fn another_folder_or_another_active_server_means_a_full_comparison() {
        let log = levelled();
        log.record("ss1", "a");
        assert_eq!(
            log.missing("ss1", &side("ss1", 1), &side("ss1_backup", 3)),
            None,
            "the backup came back on an emptied disk"
        );
        assert_eq!(
            log.missing("ss1", &side("ss1_backup", 2), &side("ss1", 1)),
            None,
            "the roles changed"
        );
    }

    #[test]
    fn forgetting_during_a_sync_keeps_that_sync_from_levelling() {
        let log = levelled();
        let mark = log.mark("ss1");
        log.forget("ss1", "queue full");
        assert!(!log.level("ss1", mark, side("ss1", 1), side("ss1_backup", 2)));
        assert_eq!(
            log.missing("ss1", &side("ss1", 1), &side("ss1_backup", 2)),
            None
        );
    }

    #[test]
    fn too_many_changes_fall_back_to_a_full_comparison() {
        let log = levelled();
        for i in 0..=MAX_TRACKED {
            log.record("ss1", &format!("f{i}"));
        }
        assert_eq!(
            log.missing("ss1", &side("ss1", 1), &side("ss1_backup", 2)),
            None
        );
    }
}
