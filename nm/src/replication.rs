//! The replication workers: they run the queue's jobs ([`crate::queue`]).
//!
//! Every change nm learns of (a CREATE, a WRITE_COMPLETE notice at ETIRW, an
//! UNDO, a REVERT, a DELETE, an access-list change, a CHECKPOINT, a MOVE)
//! and that did not reach the standby on the replication stream becomes a
//! job for the pair that holds the file. Clients never wait for it:
//! replication is asynchronous (unless `--replication sync`).
//!
//! - Workers (`--repl-workers`) run jobs; two jobs for one file never run at
//!   once. A failed job retries with exponential backoff; a job whose replica
//!   is down is dropped, because the sync when it returns covers it.
//! - A file job tells the backup to pull the file from the primary
//!   (`PullFiles`); a delete job applies the delete and then purges the
//!   tombstone on both sides; a sync-pair job copies exactly the difference
//!   between the two inventories, by version, and applies tombstones.
//!
//! Every step is an event (see [`crate::events`]).

use crate::failover::Input;
use crate::server::Nm;
use crate::ss_client::SsClient;
use shared::proto::{
    EventKind, JobKind, JobStep, Op, PullItem, SsCommand, SsReply, Tombstone, UnconfirmedLevel,
};
use shared::{now_ms, ErrorCode, WireError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::*;

/// Files per `PullFiles` request during a sync.
const SYNC_BATCH: usize = 1024;
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a sync waiting for its source's inventory looks again.
const INVENTORY_POLL: Duration = Duration::from_millis(100);

/// The two sides of a pair as a job needs them: the active server (the
/// source of truth) and the other one (the target being kept up to date).
struct Sides {
    pair: String,
    epoch: u64,
    source: String,
    source_client: Arc<SsClient>,
    source_address: String,
    source_store: u64,
    target: String,
    target_client: Arc<SsClient>,
    target_address: String,
    target_store: u64,
}

impl Sides {
    /// Whether the source's record of what its standby lacks is about this
    /// target, on this storage folder, in this epoch.
    fn levelled_as(&self, level: &UnconfirmedLevel) -> bool {
        level.standby == self.target
            && level.store_id == self.target_store
            && self.target_store != 0
            && level.epoch == self.epoch
    }
}

/// What a sync compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Only the files the standby may lack, when the serving server knows
    /// them (see [`crate::catch_up`]); otherwise everything.
    ChangedIfKnown,
    /// Both whole inventories.
    Everything,
}

/// What one sync of a pair did.
#[derive(Default)]
struct SyncOutcome {
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
    fn detail(&self) -> String {
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
    fn job_event(&self, job: &Job, step: JobStep, replica: &str, detail: Option<String>) {
        self.metrics
            .job(job.kind, step, job.queued.elapsed().as_secs_f64());
        self.events.emit(EventKind::Job {
            job: job.id,
            kind: job.kind,
            step,
            file: job.key.file().map(str::to_owned),
            primary: job.key.primary().to_owned(),
            replica: replica.to_owned(),
            version: job.version,
            duration_ms: job.queued.elapsed().as_millis() as u64,
            detail,
        });
    }

    /// The server a pair's changes are copied to now (the standby), if alive.
    fn live_standby(&self, pair: &str) -> Result<String, Option<String>> {
        let state = self.state();
        let Some(pair) = state.registry.pair(pair) else {
            return Err(None);
        };
        let Some(standby) = state.registry.standby(pair) else {
            return Err(None);
        };
        if state.registry.is_alive(&standby) && state.registry.is_alive(pair.active()) {
            Ok(standby)
        } else {
            Err(Some(standby))
        }
    }

    /// Changes the standby of `server`'s pair acknowledged on the stream:
    /// measured, and reported as one event.
    pub fn streamed(&self, server: &str, changes: Vec<shared::proto::StreamedChange>) {
        let (pair, replica) = {
            let state = self.state();
            let Some(pair) = state.registry.pair_of(server) else {
                return;
            };
            if pair.active() != server {
                return;
            }
            let Some(replica) = state.registry.standby(pair) else {
                return;
            };
            (pair.primary.clone(), replica)
        };
        let mut max_micros = 0;
        let mut files = Vec::with_capacity(changes.len());
        for change in changes {
            self.metrics.streamed(change.micros as f64 / 1e6);
            max_micros = max_micros.max(change.micros);
            files.push(change.file);
        }
        self.events.emit(EventKind::Streamed {
            primary: pair,
            replica,
            files,
            max_micros,
        });
    }

    /// Queues replication of a change to `file` on `pair`.
    pub fn replicate(&self, pair: &str, file: &str, kind: JobKind, version: Option<u64>) {
        let standby = match self.live_standby(pair) {
            Ok(standby) => standby,
            Err(None) => {
                // Unpaired: the sync when a backup arrives covers it; nothing to wait for.
                self.waiters
                    .release_file(pair, file, None, Confirmed::Alone);
                return;
            }
            Err(Some(standby)) => {
                let job = Job {
                    id: 0,
                    kind,
                    key: JobKey::File {
                        primary: pair.to_owned(),
                        file: file.to_owned(),
                    },
                    version,
                    queued: Instant::now(),
                    attempts: 0,
                    not_before: Instant::now(),
                };
                self.job_event(
                    &job,
                    JobStep::Dropped,
                    &standby,
                    Some(
                        "a server of the pair is down; the sync when it returns covers this change"
                            .into(),
                    ),
                );
                // The pair runs alone: nothing to wait for.
                self.waiters
                    .release_file(pair, file, None, Confirmed::Alone);
                return;
            }
        };
        let key = JobKey::File {
            primary: pair.to_owned(),
            file: file.to_owned(),
        };
        match self.queue.offer(key, kind, version) {
            Offer::Queued(job) => self.job_event(&job, JobStep::Queued, &standby, None),
            Offer::Coalesced(job) => self.job_event(&job, JobStep::Coalesced, &standby, None),
            Offer::Overflow { sync } => {
                // The standby will lack this change until a sync: not in sync.
                self.feed_and_act(pair, Input::Diverged, "replication queue full");
                if let Some(sync) = sync {
                    self.job_event(
                        &sync,
                        JobStep::Queued,
                        &standby,
                        Some(format!(
                            "the queue is full; a sync of the pair covers {file:?}"
                        )),
                    );
                }
            }
        }
        self.queue.wake();
    }

    /// Queues replication of a change and, in synchronous mode, waits until
    /// the backup has it (or the pair is running alone).
    pub async fn replicate_and_wait(
        &self,
        pair: &str,
        file: &str,
        kind: JobKind,
        version: u64,
    ) -> Result<(), WireError> {
        if self.config.replication == crate::config::ReplicationMode::Async {
            self.replicate(pair, file, kind, Some(version));
            return Ok(());
        }
        let confirmed = self.waiters.register(pair, file, version);
        self.replicate(pair, file, kind, Some(version));
        match tokio::time::timeout(self.config.ss_timeout, confirmed).await {
            Ok(Ok(Confirmed::ByStandby)) => Ok(()),
            Ok(Ok(Confirmed::Alone) | Err(_)) => self.until_alone_is_recorded(pair).await,
            Err(_) => Err(WireError::unavailable(format!(
                "{file:?} was changed but the backup has not confirmed it within {}; it may not survive a failover",
                humantime::format_duration(self.config.ss_timeout)
            ))),
        }
    }

    /// Queues a sync of the pair (its failover machine asked for a catch-up).
    pub fn request_sync(&self, pair: &str, reason: &str) {
        let Ok(standby) = self.live_standby(pair) else {
            return;
        };
        let key = JobKey::Pair {
            primary: pair.to_owned(),
        };
        match self.queue.offer(key, JobKind::SyncPair, None) {
            Offer::Queued(job) => {
                self.job_event(&job, JobStep::Queued, &standby, Some(reason.to_owned()))
            }
            Offer::Coalesced(job) => {
                self.job_event(&job, JobStep::Coalesced, &standby, Some(reason.to_owned()))
            }
            Offer::Overflow { .. } => {}
        }
        self.queue.wake();
    }

    pub(crate) fn emit_all(&self, events: Vec<EventKind>) {
        for event in events {
            self.events.emit(event);
        }
    }

    fn sides(&self, pair_name: &str) -> Result<Sides, (String, &'static str)> {
        let state = self.state();
        let pair = state
            .registry
            .pair(pair_name)
            .ok_or_else(|| (String::new(), "no such pair"))?;
        let target = state
            .registry
            .standby(pair)
            .ok_or_else(|| (String::new(), "the pair has no backup"))?;
        let source = state.registry.get(pair.active()).filter(|e| e.connected);
        let standby = state.registry.get(&target).filter(|e| e.connected);
        match (source, standby) {
            (Some(s), Some(t)) => Ok(Sides {
                pair: pair_name.to_owned(),
                epoch: pair.epoch(),
                source: s.name.clone(),
                source_client: s.client.clone(),
                source_address: s.address.clone(),
                source_store: s.store_id,
                target: t.name.clone(),
                target_client: t.client.clone(),
                target_address: t.address.clone(),
                target_store: t.store_id,
            }),
            (_, None) => Err((
                target,
                "the replica is down; the sync when it returns covers this job",
            )),
            (None, _) => Err((target, "the pair's active server is down")),
        }
    }

    /// One replication worker: runs jobs until nm stops.
    pub async fn replication_worker(self: Arc<Self>) {
        loop {
            let job = self.queue.take().await;
            let sides = match self.sides(job.key.primary()) {
                Ok(sides) => sides,
                Err((replica, why)) => {
                    self.job_event(&job, JobStep::Dropped, &replica, Some(why.into()));
                    self.queue.finish(&job);
                    self.waiters.release_pair(job.key.primary(), None);
                    continue;
                }
            };
            // A sync waits for its source's inventory (see `crate::inventory`)
            // without holding a worker: the other pairs' jobs go on.
            if matches!(job.key, JobKey::Pair { .. }) && self.inventory_due(&sides.source) {
                self.queue.postpone(job, INVENTORY_POLL);
                continue;
            }
            self.job_event(&job, JobStep::Started, &sides.target, None);
            let started = Instant::now();
            match self.run_job(&job, &sides).await {
                Ok((detail, stamp)) => {
                    let version = stamp.map(|(_, version)| version);
                    self.job_event(&job, JobStep::Applied, &sides.target, detail);
                    self.queue.finish(&job);
                    match &job.key {
                        JobKey::File { file, .. } => {
                            if let Some(stamp) = stamp {
                                Self::confirm_to_source(&sides, file, stamp);
                            }
                            let how = Confirmed::ByStandby;
                            self.waiters.release_file(&sides.pair, file, version, how)
                        }
                        JobKey::Pair { .. } => {
                            self.waiters.release_pair(&sides.pair, Some(started))
                        }
                    }
                }
                Err(e) => self.job_failed(job, &sides.target, e),
            }
        }
    }

    /// A failed job is retried with backoff. A file's job that keeps
    /// failing gives up: the standby lacks that change, so it is no longer in
    /// sync, and a sync of the pair takes over. A sync never gives up (the
    /// standby could otherwise never be promoted again): after
    /// `MAX_ATTEMPTS` it goes on retrying, and the pair says it needs the
    /// operator.
    fn job_failed(&self, job: Job, replica: &str, error: WireError) {
        self.job_event(&job, JobStep::Failed, replica, Some(error.to_string()));
        let pair = job.key.primary().to_owned();
        let is_sync = matches!(job.key, JobKey::Pair { .. });
        if is_sync && job.attempts + 1 == MAX_ATTEMPTS {
            let round = self
                .state()
                .registry
                .pair(&pair)
                .and_then(|p| p.fsm.catch_up_round());
            if let Some(round) = round {
                let reason = format!(
                    "the sync to {replica} failed {MAX_ATTEMPTS} times, last: {error}; it keeps being retried"
                );
                tracing::error!(event = "nm_sync_stuck", pair, replica, error = %error, "a pair's sync keeps failing; it needs the operator");
                self.feed_and_act(&pair, Input::CatchUpStuck { round, reason }, "sync stuck");
            }
        }
        if job.attempts + 1 < MAX_ATTEMPTS || is_sync {
            let delay = (RETRY_BASE * 2u32.pow(job.attempts.min(16))).min(RETRY_MAX);
            let detail = format!("attempt {} in {} ms", job.attempts + 2, delay.as_millis());
            let retried = job.clone();
            if self.queue.retry(job, delay) {
                self.job_event(&retried, JobStep::Retried, replica, Some(detail));
            }
        } else {
            self.queue.finish(&job);
            self.feed_and_act(&pair, Input::Diverged, "a replication job failed for good");
        }
    }

    /// Runs one job; returns the detail for its `applied` event and, for a
    /// file, the version the replica holds now (`None`: it is gone).
    async fn run_job(
        &self,
        job: &Job,
        sides: &Sides,
    ) -> Result<(Option<String>, Option<(u64, u64)>), WireError> {
        match (&job.key, job.kind) {
            (JobKey::File { file, .. }, JobKind::Delete) => {
                let version = job.version.unwrap_or(u64::MAX);
                sides
                    .target_client
                    .call(SsCommand::ApplyDelete {
                        file: file.clone(),
                        version,
                        epoch: sides.epoch,
                    })
                    .await?;
                for side in [&sides.source_client, &sides.target_client] {
                    side.call(SsCommand::PurgeTombstone { file: file.clone() })
                        .await?;
                }
                let confirmed = job.version.map(|version| (sides.epoch, version));
                Ok((None, confirmed))
            }
            (JobKey::File { file, .. }, _) => {
                let (pulled, bytes, failures) = self.pull(sides, vec![file.clone()], false).await?;
                if let Some((_, e)) = failures.into_iter().next() {
                    if e.code == ErrorCode::NotFound {
                        return Ok((Some("gone on the source; its delete follows".into()), None));
                    }
                    return Err(e);
                }
                self.job_event(
                    job,
                    JobStep::Transferred,
                    &sides.target,
                    Some(format!("{bytes} bytes")),
                );
                let stamp = pulled.first().copied();
                Ok((
                    Some(format!(
                        "replica at version {}",
                        stamp.map_or(0, |(_, version)| version)
                    )),
                    stamp,
                ))
            }
            (JobKey::Pair { .. }, _) => self.sync_pair(job, sides).await.map(|d| (Some(d), None)),
        }
    }

    /// A job left the standby holding `file` at `stamp`: the serving
    /// server's record of what its standby lacks lets it go (see
    /// `ss::unconfirmed`). Off the worker's path; a lost one only leaves the
    /// file to be compared at the next catch-up.
    fn confirm_to_source(sides: &Sides, file: &str, (epoch, version): (u64, u64)) {
        let source = sides.source_client.clone();
        let request = SsCommand::Confirmed {
            file: file.to_owned(),
            epoch,
            version,
        };
        tokio::spawn(async move {
            if let Err(e) = source.call(request).await {
                tracing::debug!(event = "nm_confirm_not_told", error = %e);
            }
        });
    }

    /// Copies `files` between the sides: to the target from the source, or
    /// (with `reverse`) to the source from the target. Returns the (epoch,
    /// version) of each copy, the bytes, and the failures.
    async fn pull(
        &self,
        sides: &Sides,
        files: Vec<String>,
        reverse: bool,
    ) -> Result<(Vec<(u64, u64)>, u64, Vec<(String, WireError)>), WireError> {
        let (to_name, to_client, from_address) = if reverse {
            (&sides.source, &sides.source_client, &sides.target_address)
        } else {
            (&sides.target, &sides.target_client, &sides.source_address)
        };
        let expires_ms = now_ms() + self.config.ticket_ttl.as_millis() as u64;
        let items = files
            .into_iter()
            .map(|file| PullItem {
                ticket: self
                    .ticket_key
                    .issue(to_name, &file, Op::Read, sides.epoch, expires_ms),
                file,
            })
            .collect();
        let reply = to_client
            .call(SsCommand::PullFiles {
                from: from_address.clone(),
                items,
            })
            .await?;
        let SsReply::Pulled { results } = reply else {
            return Err(WireError::internal(format!(
                "unexpected reply to PullFiles: {reply:?}"
            )));
        };
        let (mut versions, mut bytes, mut failures) = (Vec::new(), 0u64, Vec::new());
        for r in results {
            match r.result {
                Ok(p) => {
                    versions.push((p.epoch, p.version));
                    bytes += p.bytes;
                }
                Err(e) => failures.push((r.file, e)),
            }
        }
        self.metrics.transfer_bytes.inc_by(bytes);
        Ok((versions, bytes, failures))
    }

    /// Brings the target level with the source and tells the failover
    /// machine, which may then hand service back to a returned primary (that
    /// runs here, inside the job, so nothing else syncs the pair meanwhile).
    async fn sync_pair(&self, job: &Job, sides: &Sides) -> Result<String, WireError> {
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
    /// those are compared (see [`crate::catch_up`]).
    async fn sync_once(&self, sides: &Sides, compare: Compare) -> Result<SyncOutcome, WireError> {
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
        for batch in to_return.chunks(SYNC_BATCH) {
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
        for batch in to_pull.chunks(SYNC_BATCH) {
            let (versions, n, failures) = self.pull(sides, batch.to_vec(), false).await?;
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
    async fn level_source(source: &SsClient, level: UnconfirmedLevel, mark: u64) {
        let standby = level.standby.clone();
        if let Err(e) = source.call(SsCommand::Levelled { level, mark }).await {
            tracing::warn!(event = "nm_level_not_told", standby, error = %e, "the serving server did not take the sync's level; a later nm would compare the pair in full");
        }
    }

    /// Whether nm's namespace places `file` on `pair`.
    fn placed_on(&self, pair: &str, file: &str) -> bool {
        self.state()
            .ns
            .file(file)
            .is_some_and(|record| record.server == pair)
    }

    fn pair_primary(&self, pair: &str) -> String {
        self.state()
            .registry
            .pair(pair)
            .map(|p| p.primary.clone())
            .unwrap_or_default()
    }

    /// Keeps the target's version of `entry` as a conflict copy (on the
    /// target; the namespace learns it when it is copied back) and returns
    /// the copy's name.
    async fn keep_conflict(
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
    fn adopt_returned(
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
    async fn apply_tombstones(
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

    pub(crate) async fn set_role(
        client: &SsClient,
        epoch: u64,
        serving: bool,
        writable: bool,
    ) -> Result<(), WireError> {
        client
            .call(SsCommand::SetRole {
                epoch,
                serving,
                writable,
            })
            .await
            .map(|_| ())
    }

    /// The returned primary is level with the backup: stop writes on the
    /// backup, sync in full one last time, and give the primary the serving
    /// role under `epoch`. Clients are not sent anywhere meanwhile (the
    /// failover machine has paused the pair); whether it worked goes back to
    /// the machine, which records the new roles or resumes the backup.
    pub(crate) async fn hand_back(&self, pair: &str, epoch: u64) -> Result<(), WireError> {
        let sides = self
            .sides(pair)
            .map_err(|(_, why)| WireError::unavailable(why))?;
        Self::set_role(&sides.source_client, sides.epoch, true, false).await?;
        // In full: a change the source acknowledged just before the pause
        // may have its notice still on the way, so it is not recorded yet.
        self.sync_once(&sides, Compare::Everything).await?;
        // The returning server's count before it serves: every change it
        // makes from here on is one the backup lacks.
        let (target_mark, _, _) = sides.target_client.unconfirmed().await?;
        Self::set_role(&sides.target_client, epoch, true, true).await?;
        Self::level_source(
            &sides.target_client,
            UnconfirmedLevel {
                standby: sides.source.clone(),
                store_id: sides.source_store,
                epoch,
            },
            target_mark,
        )
        .await;
        if let Some(p) = self.state().registry.pair_mut(pair) {
            p.last_sync_ms = now_ms();
        }
        Ok(())
    }
}
