//! What a pair's catch-up compares: only the files the standby may lack, as
//! the serving server recorded them, or, when that is not known, both whole
//! inventories.
//!
//! Why: a standby that comes back after a restart has, on a large server,
//! almost everything already. Comparing the two whole inventories to find
//! the few files that changed while it was away costs two full listings (a
//! million entries each) for ten copies.
//!
//! Why the serving server keeps the record, not nm: it saw every change it
//! acknowledged, whatever became of the nm that heard of it. An nm that
//! restarts, or a standby nm that takes over, knows nothing of what changed
//! (nm once kept this record in memory; a takeover then compared every pair
//! in full), and a change notice can die with the connection that carried
//! it. The server's record (`ss::unconfirmed`) is counted from a sync's
//! mark, so a sync asks for it before it lists anything, and tells the
//! server where it levelled the pair once it is done (`Levelled`). It names
//! the standby, its storage folder and the epoch: a server back on an
//! emptied disk, a promotion, a hand-back or a restart of the serving
//! server leave it unknown, and the sync compares everything.
//!
//! nm keeps only what the server cannot know: a pair whose serving server
//! lacks files nm placed there (its partner may hold them), whose next sync
//! must compare everything to copy them back.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct CatchUp {
    /// Pairs whose next sync compares everything, with the request's number.
    everything: Mutex<HashMap<String, u64>>,
}

/// A request for a full comparison, settled by a sync that began after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due(u64);

impl CatchUp {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.everything.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next sync of `pair` compares everything.
    pub fn compare_everything_next(&self, pair: &str, reason: &str) {
        tracing::info!(
            event = "nm_catch_up_in_full",
            pair,
            reason,
            "the next sync of the pair compares everything"
        );
        let mut due = self.lock();
        let next = due.values().max().copied().unwrap_or(0) + 1;
        due.insert(pair.to_owned(), next);
    }

    /// Whether the next sync of `pair` must compare everything (taken when it starts).
    pub fn due(&self, pair: &str) -> Option<Due> {
        self.lock().get(pair).copied().map(Due)
    }

    /// A sync that compared everything, having started at `due`, is done.
    pub fn compared_everything(&self, pair: &str, due: Due) {
        let mut requests = self.lock();
        if requests.get(pair) == Some(&due.0) {
            requests.remove(pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_made_during_a_full_sync_outlives_it() {
        let catch_up = CatchUp::default();
        assert_eq!(catch_up.due("ss1"), None);
        catch_up.compare_everything_next("ss1", "test");
        let first = catch_up.due("ss1").expect("due");
        catch_up.compare_everything_next("ss1", "again, while the sync runs");
        catch_up.compared_everything("ss1", first);
        let second = catch_up.due("ss1").expect("still due");
        catch_up.compared_everything("ss1", second);
        assert_eq!(catch_up.due("ss1"), None);
    }
}
