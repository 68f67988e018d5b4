//! A pair's sync: what the standby lacks, found by comparing inventories
//! (only the files changed since the pair was last level, when the serving
//! server knows them), copied, with deletes applied and, when a returning
//! server holds changes the other lacks, conflict copies kept.

use super::queue::*;
use super::Sides;
use crate::failover::Input;
use crate::ss_client::SsClient;
use crate::state::Nm;
use futures::stream::{self, StreamExt};
use shared::proto::{JobStep, SsCommand, Tombstone, UnconfirmedLevel};
use shared::{now_ms, ErrorCode, WireError};
use std::collections::HashMap;

/// Files per `PullFiles` request during a sync, the bytes of names (each
/// twice: the item's and its ticket's) and the bytes of content that end one
/// early: a request stays far under a frame's limit however long the names,
/// and a batch of many large files takes the time of about 256 MiB, not of
/// all of them (nm waits `--ss-timeout` for its answer; one file larger
/// than that still goes whole in its batch).
const SYNC_BATCH: usize = 1024;
const SYNC_BATCH_NAME_BYTES: usize = 256 << 10;
const SYNC_BATCH_CONTENT_BYTES: u64 = 256 << 20;
/// `PullFiles` requests of one sync in flight at once.
const PULLS_AT_ONCE: usize = 2;

/// `files` cut into `PullFiles` batches; `size` is each file's content length.
fn sync_batches<'a>(
    files: &'a [String],
    size: impl Fn(&str) -> u64 + 'a,
) -> impl Iterator<Item = &'a [String]> {
    let mut rest = files;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut end, mut names, mut content) = (0, 0, 0);
        while end < rest.len()
            && end < SYNC_BATCH
            && names < SYNC_BATCH_NAME_BYTES
            && content < SYNC_BATCH_CONTENT_BYTES
        {
            names += 2 * rest[end].len();
            content += size(&rest[end]);
            end += 1;
        }
        let (batch, after) = rest.split_at(end);
        rest = after;
        Some(batch)
    })
}

/// What a sync compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compare {
    /// Only the files the standby may lack, when the serving server knows
    /// them (see [`crate::replication::catch_up`]); otherwise everything.
    ChangedIfKnown,
    /// Both whole inventories.
    Everything,
}

/// What one sync of a pair did.
#[derive(Default)]
pub(super) struct SyncOutcome {
    /// `Some(n)`: only the `n` files changed since the pair was last level were compared.
    compared_changed: Option<usize>,
    pulled: usize,
    bytes: u64,
    current: usize,
    deletes: usize,
    returned: usize,
    conflicts: Vec<String>,
    orphans: usize,
}

impl SyncOutcome {
    pub(super) fn detail(&self) -> String {
        let mut detail = match self.compared_changed {
            Some(n) => format!("caught up on the {n} files changed since the pair was level: "),
            None => String::new(),
        };
        detail += &format!(
            "copied {} files ({} bytes), {} already current, {} deletes applied",
            self.pulled, self.bytes, self.current, self.deletes
        );
        if self.returned > 0 {
            detail.push_str(&format!(
                ", {} files only the returning server had copied back",
                self.returned
            ));
        }
        if !self.conflicts.is_empty() {
            detail.push_str(&format!(
                ", conflict copies kept: {}",
                self.conflicts.join(", ")
            ));
        }
        if self.orphans > 0 {
            detail.push_str(&format!(
                ", {} files only on the target left alone",
                self.orphans
            ));
        }
        detail
    }
}

impl Nm {
    /// Brings the target level with the source and tells the failover
    /// machine, which may then hand service back to a returned primary (that
    /// runs here, inside the job, so nothing else syncs the pair meanwhile).
    pub(super) async fn sync_pair(&self, job: &Job, sides: &Sides) -> Result<String, WireError> {
        // The catch-up this sync completes: one asked for before it started.
        let round = self
            .state()
            .registry
            .pair(&sides.pair)
            .and_then(|p| p.fsm.catch_up_round());
        let outcome = self.sync_once(sides, Compare::ChangedIfKnown).await?;
        if outcome.bytes > 0 {
            self.job_event(
                job,
                JobStep::Transferred,
                &sides.target,
                Some(format!(
                    "{} bytes in {} files",
                    outcome.bytes, outcome.pulled
                )),
            );
        }
        let mut detail = outcome.detail();
        let Some(round) = round else {
            return Ok(detail);
        };
        let reason = format!("{} caught up", sides.target);
        let (pending, events) = {
            let mut state = self.state();
            if let Some(pair) = state.registry.pair_mut(&sides.pair) {
                pair.last_sync_ms = now_ms();
            }
            let pending = self.feed(&mut state, &sides.pair, Input::CatchUpDone { round });
            (pending, state.registry.refresh(&reason))
        };
        self.emit_all(events);
        self.carry_out(&sides.pair, pending, &reason).await;
        let state = self.state();
        if let Some(p) = state.registry.pair(&sides.pair) {
            if p.active() == sides.target {
                detail.push_str("; service handed back to the primary");
            } else if p.active() == sides.source && !p.fsm.standby_in_sync() {
                detail.push_str("; the standby is still not in sync (it changed meanwhile)");
            }
        }
        Ok(detail)
    }

    /// One comparison of the two inventories, and the copies it calls for;
    /// afterwards the target is level with the source. When the catch-up
    /// record knows which files changed since the two were last level, only
    /// those are compared (see [`crate::replication::catch_up`]).
    pub(super) async fn sync_once(
        &self,
        sides: &Sides,
        compare: Compare,
    ) -> Result<SyncOutcome, WireError> {
        // The worker postpones a sync whose source's inventory is due; one
        // that became due since is tried again later.
        if self.inventory_due(&sides.source) {
            return Err(WireError::unavailable(format!(
                "{}'s inventory is not reconciled yet",
                sides.source
            )));
        }
        let due = self.catch_up.due(&sides.pair);
        // Asked before anything is listed: the source's mark must come
        // before its listing (see `ss::unconfirmed`).
        let (source_mark, source_level, source_files) = sides.source_client.unconfirmed().await?;
        let only = match compare {
            Compare::ChangedIfKnown if due.is_none() => source_level
                .is_some_and(|level| sides.levelled_as(&level))
                .then_some(source_files),
            Compare::ChangedIfKnown | Compare::Everything => None,
        };
        // Both sides at once: each lists and sends while nm decodes the other.
        let (source, target) = match &only {
            Some(files) => {
                tokio::join!(
                    sides.source_client.inventory_of(files),
                    sides.target_client.inventory_of(files)
                )
            }
            None => tokio::join!(
                sides.source_client.inventory(),
                sides.target_client.inventory()
            ),
        };
        let ((source_files, source_dead), (target_files, _)) = (source?, target?);
        let on_source: HashMap<&str, &shared::proto::FileStats> = source_files
            .iter()
            .map(|e| (e.file.as_str(), &e.meta.stats))
            .collect();
        let dead: HashMap<&str, &Tombstone> =
            source_dead.iter().map(|t| (t.file.as_str(), t)).collect();
        let mut outcome = SyncOutcome {
            compared_changed: only.as_ref().map(Vec::len),
            ..SyncOutcome::default()
        };
        let mut to_pull = Vec::new();
        let mut to_return = Vec::new();
        for entry in &target_files {
            let mine = &entry.meta.stats;
            match on_source.get(entry.file.as_str()) {
                Some(theirs) if mine.stamp() > theirs.stamp() => {
                    // Changed on the target while it was active, never copied.
                    to_return.push(entry.file.clone());
                }
                Some(theirs) if mine.epoch < theirs.epoch && mine.version > theirs.base => {
                    // Acknowledged on the target in an older epoch, and the
                    // source has changed the file since: keep both.
                    let copy = self.keep_conflict(sides, entry, &mut outcome).await?;
                    to_return.push(copy);
                }
                Some(_) => {}
                None => match dead.get(entry.file.as_str()) {
                    Some(t) if mine.epoch < t.epoch && mine.version > t.base => {
                        // Acknowledged on the target in an older epoch, and
                        // the source deleted (or moved) the file without
                        // having seen it: the name goes, the change stays.
                        let copy = self.keep_conflict(sides, entry, &mut outcome).await?;
                        to_return.push(copy);
                    }
                    Some(t) if t.stamp() >= mine.stamp() => {}
                    Some(_) | None if sides.target == self.pair_primary(&sides.pair) => {
                        // Created on the returning primary and never copied.
                        to_return.push(entry.file.clone());
                    }
                    None if self.placed_on(&sides.pair, &entry.file) => {
                        // nm knows the file, but the serving server lost it.
                        to_return.push(entry.file.clone());
                    }
                    _ => outcome.orphans += 1,
                },
            }
        }
        let held: HashMap<&str, (u64, u64)> = target_files
            .iter()
            .map(|e| (e.file.as_str(), e.meta.stats.stamp()))
            .collect();
        for entry in &source_files {
            match held.get(entry.file.as_str()) {
                Some(&stamp) if stamp >= entry.meta.stats.stamp() => outcome.current += 1,
                _ => to_pull.push(entry.file.clone()),
            }
        }
        // The target's own changes first, so nothing it acknowledged is overwritten.
        let mut failed = Vec::new();
        let target_size: HashMap<&str, u64> = target_files
            .iter()
            .map(|e| (e.file.as_str(), e.meta.stats.size))
            .collect();
        let returned_size = |file: &str| target_size.get(file).copied().unwrap_or(0);
        for batch in sync_batches(&to_return, returned_size) {
            let (versions, _, failures) = self.pull(sides, batch.to_vec(), true).await?;
            outcome.returned += versions.len();
            failed.extend(failures);
        }
        // What the returning side alone holds must be safe on the serving
        // side before anything there is overwritten: otherwise stop and retry.
        if let Some((file, e)) = failed.first() {
            return Err(WireError::new(
                e.code,
                format!(
                    "copying back {file:?} failed: {}; the sync will be retried",
                    e.message
                ),
            ));
        }
        self.adopt_returned(sides, &target_files, &to_return);
        // Two batches at once: each is a pipeline on the target (fetch,
        // install on a thread, sync), so one's start and end, where that
        // pipeline is half empty, overlap the other's middle.
        let pulled_size = |file: &str| on_source.get(file).map_or(0, |stats| stats.size);
        let batches: Vec<Vec<String>> = sync_batches(&to_pull, pulled_size)
            .map(<[String]>::to_vec)
            .collect();
        let mut pulls = stream::iter(batches)
            .map(|batch| self.pull(sides, batch, false))
            .buffered(PULLS_AT_ONCE);
        while let Some(pulled) = pulls.next().await {
            let (versions, n, failures) = pulled?;
            outcome.pulled += versions.len();
            outcome.bytes += n;
            failed.extend(
                failures
                    .into_iter()
                    .filter(|(_, e)| e.code != ErrorCode::NotFound),
            );
        }
        outcome.deletes = self.apply_tombstones(sides, &source_dead, &held).await?;
        if only.is_none() {
            if let Some(entry) = self.state().registry.get_mut(&sides.target) {
                entry.files = source_files.len() as u64;
            }
        }
        if let Some((file, e)) = failed.first() {
            return Err(WireError::new(
                e.code,
                format!(
                    "{} files failed, first {file:?}: {}",
                    failed.len(),
                    e.message
                ),
            ));
        }
        if let (Some(due), None) = (due, &only) {
            self.catch_up.compared_everything(&sides.pair, due);
        }
        Self::level_source(
            &sides.source_client,
            UnconfirmedLevel {
                standby: sides.target.clone(),
                store_id: sides.target_store,
                epoch: sides.epoch,
            },
            source_mark,
        )
        .await;
        Ok(outcome)
    }

    /// Tells the serving server a sync that took `mark` from it brought
    /// `level.standby` level: its own record of what the standby lacks
    /// starts there (what a later nm asks for instead of comparing all).
    pub(super) async fn level_source(source: &SsClient, level: UnconfirmedLevel, mark: u64) {
        let standby = level.standby.clone();
        if let Err(e) = source.call(SsCommand::Levelled { level, mark }).await {
            tracing::warn!(event = "nm_level_not_told", standby, error = %e, "the serving server did not take the sync's level; a later nm would compare the pair in full");
        }
    }

    /// Whether nm's namespace places `file` on `pair`.
    pub(super) fn placed_on(&self, pair: &str, file: &str) -> bool {
        self.state()
            .ns
            .file(file)
            .is_some_and(|record| record.server == pair)
    }

    pub(super) fn pair_primary(&self, pair: &str) -> String {
        self.state()
            .registry
            .pair(pair)
            .map(|p| p.primary.clone())
            .unwrap_or_default()
    }

    /// Keeps the target's version of `entry` as a conflict copy (on the
    /// target; the namespace learns it when it is copied back) and returns
    /// the copy's name.
    pub(super) async fn keep_conflict(
        &self,
        sides: &Sides,
        entry: &shared::proto::InventoryEntry,
        outcome: &mut SyncOutcome,
    ) -> Result<String, WireError> {
        let copy =
            shared::names::conflict_copy_name(&entry.file, &sides.target, entry.meta.stats.epoch);
        sides
            .target_client
            .call(SsCommand::KeepConflict {
                file: entry.file.clone(),
                to: copy.clone(),
            })
            .await?;
        tracing::warn!(event = "nm_conflict_copy", pair = %sides.pair, file = %entry.file, copy, "a change acknowledged before a failover was superseded; kept as a conflict copy");
        if let Some(pair) = self.state().registry.pair_mut(&sides.pair) {
            pair.conflict_copies += 1;
        }
        outcome.conflicts.push(copy.clone());
        Ok(copy)
    }

    /// Files copied back from a returning server that nm does not know yet
    /// (conflict copies, creates whose record was lost) join the namespace.
    pub(super) fn adopt_returned(
        &self,
        sides: &Sides,
        target_files: &[shared::proto::InventoryEntry],
        returned: &[String],
    ) {
        let mut records = Vec::new();
        {
            let mut state = self.state();
            for file in returned {
                if state.ns.file(file).is_some() {
                    continue;
                }
                let meta = target_files
                    .iter()
                    .find(|e| {
                        &e.file == file
                            || *file
                                == shared::names::conflict_copy_name(
                                    &e.file,
                                    &sides.target,
                                    e.meta.stats.epoch,
                                )
                    })
                    .map(|e| e.meta.clone());
                let Some(meta) = meta else { continue };
                if state.ns.reserve(file).is_err() {
                    continue;
                }
                records.push(crate::journal::Record::FileCreated {
                    file: file.clone(),
                    owner: meta.owner.clone(),
                    server: sides.pair.clone(),
                    acl: meta.acl.clone(),
                });
                state.ns.insert(
                    file,
                    crate::namespace::FileRecord {
                        owner: meta.owner,
                        acl: meta.acl,
                        server: sides.pair.clone(),
                        stats: meta.stats,
                    },
                );
            }
        }
        if !records.is_empty() {
            let journal = self.journal.clone();
            tokio::spawn(async move {
                if let Err(e) = journal.append(records).await {
                    tracing::error!(event = "nm_journal_failed", error = %e);
                }
            });
        }
    }

    /// Applies the source's tombstones to the target and purges them on both sides.
    pub(super) async fn apply_tombstones(
        &self,
        sides: &Sides,
        dead: &[Tombstone],
        held: &HashMap<&str, (u64, u64)>,
    ) -> Result<usize, WireError> {
        let mut applied = 0;
        for tombstone in dead {
            if held
                .get(tombstone.file.as_str())
                .is_some_and(|&stamp| stamp < tombstone.stamp())
            {
                sides
                    .target_client
                    .call(SsCommand::ApplyDelete {
                        file: tombstone.file.clone(),
                        version: tombstone.version,
                        epoch: tombstone.epoch,
                    })
                    .await?;
                applied += 1;
            }
            for side in [&sides.source_client, &sides.target_client] {
                side.call(SsCommand::PurgeTombstone {
                    file: tombstone.file.clone(),
                })
                .await?;
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_batches_hold_every_file_once_and_stay_small_however_long_the_names() {
        for name_len in [8, 4096] {
            let files: Vec<String> = (0..3000)
                .map(|i| format!("{i:04}{}", "x".repeat(name_len - 4)))
                .collect();
            let batches: Vec<&[String]> = sync_batches(&files, |_| 4096).collect();
            assert_eq!(batches.concat(), files);
            for batch in batches {
                let names: usize = batch.iter().map(|f| 2 * f.len()).sum();
                assert!(batch.len() <= SYNC_BATCH);
                assert!(names < SYNC_BATCH_NAME_BYTES + 2 * 4096, "{names}");
            }
        }
    }

    #[test]
    fn a_batch_of_large_files_ends_once_it_holds_enough_content() {
        let files: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        let mib = 1 << 20;
        let sizes = |file: &str| if file == "f7" { 1 << 30 } else { 100 * mib };
        let batches: Vec<&[String]> = sync_batches(&files, sizes).collect();
        assert_eq!(batches.concat(), files);
        assert_eq!(batches[0].len(), 3, "300 MiB reaches the bound");
        // A file larger than the bound goes with what came before it, then the batch ends.
        assert_eq!(batches[2], &files[6..8]);
        for batch in &batches {
            let content: u64 = batch.iter().map(|f| sizes(f)).sum();
            let last = sizes(batch.last().unwrap());
            assert!(content - last < SYNC_BATCH_CONTENT_BYTES);
        }
    }
}
