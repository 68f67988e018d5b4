//! What this server's standby may lack: the files changed here since a sync
//! last brought the standby level, less those the standby has confirmed.
//!
//! Why: nm keeps the same record (`nm::catch_up`), but only in its memory.
//! An nm that restarts, or a standby nm that takes over, would otherwise
//! have to compare both whole inventories of every pair (a million entries
//! each) to find the few files changed while the old nm went down. The
//! serving server saw every change it acknowledged, so it can say which
//! files those were, whatever became of the nm that heard of them.
//!
//! How it stays a superset of what the standby lacks:
//! - Every change this server commits is [`changed`](Unconfirmed::changed)
//!   here once it is durable, under the file's lock (a listing waits for
//!   that lock, so it sees the change), and before it is answered, with a
//!   counter.
//! - Only three things take a file out: the standby's acknowledgement on
//!   the replication stream of that version or a later one, nm's word that
//!   its job left the standby holding that version or a later one (both
//!   [`confirmed`](Unconfirmed::confirmed)), and nm's word that a sync
//!   brought the standby level ([`levelled`](Unconfirmed::levelled)). A sync
//!   takes [`mark`](Unconfirmed::report) before it lists this server's files,
//!   so every change counted up to the mark was in that listing and copied.
//! - The record names the standby and its storage folder it was levelled
//!   with, and the epoch: it is offered ([`report`](Unconfirmed::report))
//!   only while this server still serves in that epoch. A promotion, a
//!   hand-back or a restart of this server (the record is in memory only)
//!   leaves nm to compare everything, as before.
//! - Changes are counted and kept from the start, levelled or not, so a
//!   sync that ends after changes were made still leaves them missing.
//! - Past [`MAX_TRACKED`] files the record is dropped, and no sync that
//!   listed the files before that levels it; past more names than a frame
//!   holds nothing is offered.

use shared::proto::UnconfirmedLevel;
use std::collections::HashMap;
use std::sync::Mutex;

/// Changed files remembered; past this the next sync compares everything.
pub const MAX_TRACKED: usize = 200_000;
/// The names offered to nm fit one frame with room to spare.
const MAX_REPORTED_BYTES: usize = 512 << 10;

#[derive(Default)]
pub struct Unconfirmed {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Counts changes; a sync's mark is a value of it.
    counter: u64,
    /// Whom the standby was last levelled as, and in which epoch.
    level: Option<UnconfirmedLevel>,
    /// Changed file → (counter, stamp) of its latest change.
    changed: HashMap<String, (u64, (u64, u64))>,
    /// Every change counted after this is in `changed` (it moves on when
    /// `changed` overflows and is dropped).
    complete_since: u64,
    /// Bytes of the names in `changed`.
    name_bytes: usize,
}

/// What the standby may lack, as nm asks for it before a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The counter now: a sync that lists this server's files after taking
    /// it covers every change counted up to it.
    pub mark: u64,
    /// `Some` when the files below are all the standby named there may lack.
    pub level: Option<UnconfirmedLevel>,
    pub files: Vec<String>,
}

impl Unconfirmed {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change to `file`, now at `stamp`, was committed here.
    pub fn changed(&self, file: &str, stamp: (u64, u64)) {
        let mut state = self.lock();
        state.counter += 1;
        let counter = state.counter;
        if state.changed.len() >= MAX_TRACKED && !state.changed.contains_key(file) {
            if state.level.is_some() {
                tracing::info!(
                    event = "ss_unconfirmed_overflow",
                    tracked = MAX_TRACKED,
                    "too many changes the standby has not confirmed; its next sync compares everything"
                );
            }
            state.level = None;
            state.changed.clear();
            state.name_bytes = 0;
            state.complete_since = counter;
            return;
        }
        if state
            .changed
            .insert(file.to_owned(), (counter, stamp))
            .is_none()
        {
            state.name_bytes += file.len();
        }
    }

    /// The standby holds `file` at `stamp` durably (it acknowledged it on
    /// the stream, or nm's job copied it): settled unless the file changed
    /// again since.
    pub fn confirmed(&self, file: &str, stamp: (u64, u64)) {
        let mut state = self.lock();
        if state
            .changed
            .get(file)
            .is_some_and(|(_, latest)| *latest <= stamp)
        {
            state.changed.remove(file);
            state.name_bytes -= file.len();
        }
    }

    /// A sync that took `mark` before listing this server's files brought
    /// `level.standby` level with it; changes counted after the mark remain.
    pub fn levelled(&self, level: UnconfirmedLevel, mark: u64) {
        let mut state = self.lock();
        if mark > state.counter || mark < state.complete_since {
            tracing::info!(
                event = "ss_level_unknown",
                mark,
                "changes since the sync listed this server's files were not all kept; the next sync compares everything"
            );
            state.level = None;
            return;
        }
        state.changed.retain(|_, (counter, _)| *counter > mark);
        state.name_bytes = state.changed.keys().map(String::len).sum();
        state.level = Some(level);
    }

    /// What nm may take as all the standby lacks while this server serves in `epoch`.
    pub fn report(&self, epoch: u64, serving: bool) -> Report {
        let state = self.lock();
        let usable = serving
            && state.name_bytes <= MAX_REPORTED_BYTES
            && state.level.as_ref().is_some_and(|l| l.epoch == epoch);
        let mut files: Vec<String> = if usable {
            state.changed.keys().cloned().collect()
        } else {
            Vec::new()
        };
        files.sort_unstable();
        Report {
            mark: state.counter,
            level: usable.then(|| state.level.clone()).flatten(),
            files,
        }
    }

    /// Files remembered (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().changed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(standby: &str, store_id: u64, epoch: u64) -> UnconfirmedLevel {
        UnconfirmedLevel {
            standby: standby.into(),
            store_id,
            epoch,
        }
    }

    #[test]
    fn nothing_is_offered_before_a_sync_levelled_the_standby() {
        let record = Unconfirmed::default();
        record.changed("a", (0, 1));
        let report = record.report(0, true);
        assert_eq!((report.mark, report.level), (1, None));
        assert!(report.files.is_empty());
    }

    #[test]
    fn changes_after_the_mark_stay_until_the_standby_confirms_them() {
        let record = Unconfirmed::default();
        record.changed("old", (0, 1));
        let mark = record.report(0, true).mark;
        record.levelled(level("b", 7, 0), mark);
        record.changed("a", (0, 2));
        record.changed("b", (0, 1));
        assert_eq!(record.report(0, true).files, ["a", "b"]);
        // An older acknowledgement settles nothing; the latest one does.
        record.confirmed("a", (0, 1));
        record.confirmed("b", (0, 1));
        assert_eq!(record.report(0, true).files, ["a"]);
        // Changed again after a sync's mark: still missing after that sync.
        let mark = record.report(0, true).mark;
        record.changed("c", (0, 1));
        record.levelled(level("b", 7, 0), mark);
        assert_eq!(record.report(0, true).files, ["c"]);
    }

    #[test]
    fn a_record_is_offered_only_in_its_epoch_while_serving() {
        let record = Unconfirmed::default();
        let mark = record.report(3, true).mark;
        record.levelled(level("b", 7, 3), mark);
        record.changed("a", (3, 1));
        assert!(record.report(3, true).level.is_some());
        assert_eq!(record.report(4, true).level, None);
        assert_eq!(record.report(3, false).level, None);
    }

    #[test]
    fn changes_made_while_no_level_was_kept_are_still_missing_after_an_older_mark() {
        let record = Unconfirmed::default();
        let mark = record.report(0, true).mark;
        // Made after the sync listed the files, before it finished.
        record.changed("a", (0, 1));
        record.levelled(level("b", 7, 0), mark);
        assert_eq!(record.report(0, true).files, ["a"]);
    }

    #[test]
    fn too_many_changes_leave_nothing_to_offer() {
        let record = Unconfirmed::default();
        record.levelled(level("b", 7, 0), 0);
        for i in 0..=MAX_TRACKED {
            record.changed(&format!("f{i}"), (0, 1));
        }
        assert_eq!(record.report(0, true).level, None);
        assert_eq!(record.tracked(), 0);
        // A sync that listed the files before the overflow levels nothing.
        record.levelled(level("b", 7, 0), 5);
        assert_eq!(record.report(0, true).level, None);
        let mark = record.report(0, true).mark;
        record.levelled(level("b", 7, 0), mark);
        assert_eq!(record.report(0, true).level, Some(level("b", 7, 0)));
    }
}
