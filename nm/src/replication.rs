//! The replication queue and its workers.
//!
//! Every change nm learns of (a CREATE, a WRITE_COMPLETE notice at ETIRW, an
//! UNDO, a REVERT, a DELETE, an access-list change, a CHECKPOINT, a MOVE)
//! becomes a job for the pair that holds the file. Clients never wait for
//! it: replication is asynchronous.
//!
//! - The queue is bounded (`--repl-queue-capacity`). Pending jobs for one
//!   file coalesce into one (the latest wins). When the queue is full the
//!   change is not lost: the pair is marked as needing a sync and one
//!   sync-pair job, which compares inventories, covers it.
//! - Workers (`--repl-workers`) run jobs; two jobs for one file never run at
//!   once. A failed job retries with exponential backoff; a job whose replica
//!   is down is dropped, because the sync when it returns covers it.
//! - A file job tells the backup to pull the file from the primary
//!   (`PullFiles`); a delete job applies the delete and then purges the
//!   tombstone on both sides; a sync-pair job copies exactly the difference
//!   between the two inventories, by version, and applies tombstones.
//!
//! Every step is an event (see [`crate::events`]).

use crate::server::Nm;
use shared::proto::{EventKind, JobKind, JobStep, Op, PullItem, SsReply, SsRequest, Tombstone};
use shared::{now_ms, ErrorCode, WireError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Files per `PullFiles` request during a sync.
const SYNC_BATCH: usize = 256;
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a job is about: one file of a pair, or the whole pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobKey {
    File { primary: String, file: String },
    Pair { primary: String },
}

impl JobKey {
    pub fn primary(&self) -> &str {
        match self {
            JobKey::File { primary, .. } | JobKey::Pair { primary } => primary,
        }
    }

    fn file(&self) -> Option<&str> {
        match self {
            JobKey::File { file, .. } => Some(file),
            JobKey::Pair { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    pub key: JobKey,
    pub version: Option<u64>,
    pub queued: Instant,
    pub attempts: u32,
    not_before: Instant,
}

/// What happened to a change offered to the queue.
pub enum Offer {
    Queued(Job),
    Coalesced(Job),
    /// The queue is full; the pair needs a sync, and `Some` is the sync job queued for it.
    Overflow {
        sync: Option<Job>,
    },
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    order: VecDeque<JobKey>,
    pending: HashMap<JobKey, Job>,
    running: HashMap<JobKey, Job>,
}

pub struct ReplQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    capacity: usize,
}

/// Two changes to one file folded into one job: a delete ends the story, and
/// otherwise the earliest kind names it (a CREATE followed by WRITEs is still
/// a create; the pull copies the latest anyway).
fn fold(earlier: JobKind, later: JobKind) -> JobKind {
    match (earlier, later) {
        (_, JobKind::Delete) => JobKind::Delete,
        (JobKind::Delete, later) => later,
        (earlier, _) => earlier,
    }
}

impl ReplQueue {
    pub fn new(capacity: usize) -> Self {
        ReplQueue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_job(state: &mut QueueState, key: JobKey, kind: JobKind, version: Option<u64>) -> Job {
        state.next_id += 1;
        let now = Instant::now();
        Job {
            id: state.next_id,
            kind,
            key,
            version,
            queued: now,
            attempts: 0,
            not_before: now,
        }
    }

    /// Offers a change; call [`ReplQueue::wake`] afterwards. Sync-pair jobs
    /// are always accepted (one per pair).
    pub fn offer(&self, key: JobKey, kind: JobKind, version: Option<u64>) -> Offer {
        let mut state = self.lock();
        if let Some(job) = state.pending.get_mut(&key) {
            job.kind = fold(job.kind, kind);
            job.version = job.version.max(version);
            let job = job.clone();
            return Offer::Coalesced(job);
        }
        let is_sync = matches!(key, JobKey::Pair { .. });
        if !is_sync && state.pending.len() >= self.capacity {
            let pair = JobKey::Pair {
                primary: key.primary().to_owned(),
            };
            if state.pending.contains_key(&pair) {
                return Offer::Overflow { sync: None };
            }
            let job = Self::new_job(&mut state, pair.clone(), JobKind::SyncPair, None);
            state.order.push_back(pair.clone());
            state.pending.insert(pair, job.clone());
            return Offer::Overflow { sync: Some(job) };
        }
        let job = Self::new_job(&mut state, key.clone(), kind, version);
        state.order.push_back(key.clone());
        state.pending.insert(key, job.clone());
        Offer::Queued(job)
    }

    /// Lets the workers look at the queue again (after an offer's event is out,
    /// so that `queued` always comes before `started`).
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Waits for a job that may run now: due, and not for a file already being worked on.
    pub async fn take(&self) -> Job {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                let mut earliest: Option<Instant> = None;
                let mut chosen = None;
                for (i, key) in state.order.iter().enumerate() {
                    if state.running.contains_key(key) {
                        continue;
                    }
                    let job = &state.pending[key];
                    if job.not_before <= now {
                        chosen = Some(i);
                        break;
                    }
                    earliest =
                        Some(earliest.map_or(job.not_before, |e: Instant| e.min(job.not_before)));
                }
                if let Some(i) = chosen {
                    let key = state.order.remove(i).expect("index from the loop");
                    let job = state
                        .pending
                        .remove(&key)
                        .expect("ordered keys are pending");
                    state.running.insert(key, job.clone());
                    return job;
                }
                earliest.map(|e| e - now)
            };
            match wait {
                Some(delay) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A job is over (done, dropped or failed for good).
    pub fn finish(&self, job: &Job) {
        self.lock().running.remove(&job.key);
        self.notify.notify_waiters();
    }

    /// Puts a failed job back to run after `delay`, unless a newer change to
    /// the same file is already pending (that one covers it). Returns whether it was requeued.
    pub fn retry(&self, mut job: Job, delay: Duration) -> bool {
        let mut state = self.lock();
        state.running.remove(&job.key);
        let requeued = if state.pending.contains_key(&job.key) {
            false
        } else {
            job.attempts += 1;
            job.not_before = Instant::now() + delay;
            state.order.push_back(job.key.clone());
            state.pending.insert(job.key.clone(), job);
            true
        };
        drop(state);
        self.notify.notify_waiters();
        requeued
    }

    /// Removes the pending jobs of a pair (its replica went down); returns them.
    pub fn drop_pair(&self, primary: &str) -> Vec<Job> {
        let mut state = self.lock();
        let keys: Vec<JobKey> = state
            .pending
            .keys()
            .filter(|k| k.primary() == primary)
            .cloned()
            .collect();
        state.order.retain(|k| k.primary() != primary);
        keys.into_iter()
            .filter_map(|k| state.pending.remove(&k))
            .collect()
    }

    /// Jobs pending or running for a pair, and the age of the oldest in ms.
    pub fn pending_for(&self, primary: &str) -> (u64, u64) {
        let state = self.lock();
        let jobs = state
            .pending
            .values()
            .chain(state.running.values())
            .filter(|j| j.key.primary() == primary);
        let (mut count, mut oldest) = (0u64, None::<Instant>);
        for job in jobs {
            count += 1;
            oldest = Some(oldest.map_or(job.queued, |o| o.min(job.queued)));
        }
        (count, oldest.map_or(0, |o| o.elapsed().as_millis() as u64))
    }

    /// Whether a change to this file has not reached the backup yet.
    pub fn has_pending_file(&self, primary: &str, file: &str) -> bool {
        let key = JobKey::File {
            primary: primary.to_owned(),
            file: file.to_owned(),
        };
        let pair = JobKey::Pair {
            primary: primary.to_owned(),
        };
        let state = self.lock();
        state.pending.contains_key(&key)
            || state.running.contains_key(&key)
            || state.pending.contains_key(&pair)
            || state.running.contains_key(&pair)
    }

    pub fn depth(&self) -> u64 {
        let state = self.lock();
        (state.pending.len() + state.running.len()) as u64
    }
}

/// The two sides of a pair as a job needs them.
struct Sides {
    backup: String,
    backup_client: Arc<crate::ss_client::SsClient>,
    primary_address: String,
    primary_client: Arc<crate::ss_client::SsClient>,
}

impl Nm {
    fn job_event(&self, job: &Job, step: JobStep, replica: &str, detail: Option<String>) {
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

    /// Queues replication of a change to `file` on the pair of `primary`.
    pub fn replicate(&self, primary: &str, file: &str, kind: JobKind, version: Option<u64>) {
        let backup = {
            let state = self.state();
            let Some(pair) = state.registry.pair(primary) else {
                return;
            };
            let Some(backup) = pair.backup.clone() else {
                return; // unpaired: the sync when a backup arrives covers it
            };
            if !state.registry.is_alive(&backup) || !state.registry.is_alive(primary) {
                drop(state);
                let job = Job {
                    id: 0,
                    kind,
                    key: JobKey::File {
                        primary: primary.to_owned(),
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
                    &backup,
                    Some(
                        "a server of the pair is down; the sync when it returns covers this change"
                            .into(),
                    ),
                );
                return;
            }
            backup
        };
        let key = JobKey::File {
            primary: primary.to_owned(),
            file: file.to_owned(),
        };
        match self.queue.offer(key, kind, version) {
            Offer::Queued(job) => self.job_event(&job, JobStep::Queued, &backup, None),
            Offer::Coalesced(job) => self.job_event(&job, JobStep::Coalesced, &backup, None),
            Offer::Overflow { sync } => {
                self.mark_needs_sync(primary, "replication queue full");
                if let Some(sync) = sync {
                    self.job_event(
                        &sync,
                        JobStep::Queued,
                        &backup,
                        Some(format!(
                            "the queue is full; a sync of the pair covers {file:?}"
                        )),
                    );
                }
            }
        }
        self.queue.wake();
    }

    /// Marks a pair as needing a sync and queues one.
    pub fn request_sync(&self, primary: &str, reason: &str) {
        let backup = {
            let state = self.state();
            match state.registry.pair(primary).and_then(|p| p.backup.clone()) {
                Some(backup) => backup,
                None => return,
            }
        };
        self.mark_needs_sync(primary, reason);
        let key = JobKey::Pair {
            primary: primary.to_owned(),
        };
        match self.queue.offer(key, JobKind::SyncPair, None) {
            Offer::Queued(job) => {
                self.job_event(&job, JobStep::Queued, &backup, Some(reason.to_owned()))
            }
            Offer::Coalesced(job) => {
                self.job_event(&job, JobStep::Coalesced, &backup, Some(reason.to_owned()))
            }
            Offer::Overflow { .. } => {}
        }
        self.queue.wake();
    }

    fn mark_needs_sync(&self, primary: &str, reason: &str) {
        let mut state = self.state();
        if let Some(pair) = state.registry.pair_mut(primary) {
            pair.needs_sync = true;
        }
        let events = state.registry.refresh(reason);
        drop(state);
        for event in events {
            self.events.emit(event);
        }
    }

    fn sides(&self, primary: &str) -> Result<Sides, (String, &'static str)> {
        let state = self.state();
        let backup = state
            .registry
            .pair(primary)
            .and_then(|p| p.backup.clone())
            .ok_or_else(|| (String::new(), "the pair has no backup"))?;
        let backup_entry = state.registry.get(&backup).filter(|b| b.connected);
        let primary_entry = state.registry.get(primary).filter(|p| p.connected);
        match (backup_entry, primary_entry) {
            (Some(b), Some(p)) => Ok(Sides {
                backup: backup.clone(),
                backup_client: b.client.clone(),
                primary_address: p.address.clone(),
                primary_client: p.client.clone(),
            }),
            (None, _) => Err((
                backup,
                "the replica is down; the sync when it returns covers this job",
            )),
            (_, None) => Err((backup, "the primary is down")),
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
                    continue;
                }
            };
            self.job_event(&job, JobStep::Started, &sides.backup, None);
            match self.run_job(&job, &sides).await {
                Ok(detail) => {
                    self.job_event(&job, JobStep::Applied, &sides.backup, detail);
                    self.queue.finish(&job);
                }
                Err(e) => self.job_failed(job, &sides.backup, e),
            }
        }
    }

    fn job_failed(&self, job: Job, replica: &str, error: WireError) {
        self.job_event(&job, JobStep::Failed, replica, Some(error.to_string()));
        if job.attempts + 1 < MAX_ATTEMPTS {
            let delay = (RETRY_BASE * 2u32.pow(job.attempts)).min(RETRY_MAX);
            let detail = format!("attempt {} in {} ms", job.attempts + 2, delay.as_millis());
            let retried = job.clone();
            if self.queue.retry(job, delay) {
                self.job_event(&retried, JobStep::Retried, replica, Some(detail));
            }
        } else {
            self.queue.finish(&job);
            let primary = job.key.primary().to_owned();
            if !matches!(job.key, JobKey::Pair { .. }) {
                self.request_sync(&primary, "a replication job failed for good");
            }
        }
    }

    /// Runs one job; the detail goes into its `applied` event.
    async fn run_job(&self, job: &Job, sides: &Sides) -> Result<Option<String>, WireError> {
        match (&job.key, job.kind) {
            (JobKey::File { file, .. }, JobKind::Delete) => {
                let version = job.version.unwrap_or(u64::MAX);
                sides
                    .backup_client
                    .call(SsRequest::ApplyDelete {
                        file: file.clone(),
                        version,
                    })
                    .await?;
                for side in [&sides.primary_client, &sides.backup_client] {
                    side.call(SsRequest::PurgeTombstone { file: file.clone() })
                        .await?;
                }
                Ok(None)
            }
            (JobKey::File { file, .. }, _) => {
                let (pulled, bytes, failures) = self.pull(sides, vec![file.clone()]).await?;
                if let Some((_, e)) = failures.into_iter().next() {
                    if e.code == ErrorCode::NotFound {
                        return Ok(Some("gone on the primary; its delete follows".into()));
                    }
                    return Err(e);
                }
                self.job_event(
                    job,
                    JobStep::Transferred,
                    &sides.backup,
                    Some(format!("{bytes} bytes")),
                );
                Ok(Some(format!(
                    "backup at version {}",
                    pulled.first().copied().unwrap_or(0)
                )))
            }
            (JobKey::Pair { primary }, _) => self.sync_pair(job, primary, sides).await.map(Some),
        }
    }

    /// Tells the backup to pull `files`; returns the versions pulled, the bytes, and the failures.
    async fn pull(
        &self,
        sides: &Sides,
        files: Vec<String>,
    ) -> Result<(Vec<u64>, u64, Vec<(String, WireError)>), WireError> {
        let expires_ms = now_ms() + self.config.ticket_ttl.as_millis() as u64;
        let items = files
            .into_iter()
            .map(|file| PullItem {
                ticket: self
                    .ticket_key
                    .issue(&sides.backup, &file, Op::Read, 0, expires_ms),
                file,
            })
            .collect();
        let reply = sides
            .backup_client
            .call(SsRequest::PullFiles {
                from: sides.primary_address.clone(),
                items,
            })
            .await?;
        let SsReply::Pulled { results } = reply else {
            return Err(WireError::internal(format!(
                "unexpected reply to PullFiles: {reply:?}"
            )));
        };
        let (mut versions, mut bytes, mut failures) = (Vec::new(), 0, Vec::new());
        for r in results {
            match r.result {
                Ok(p) => {
                    versions.push(p.version);
                    bytes += p.bytes;
                }
                Err(e) => failures.push((r.file, e)),
            }
        }
        Ok((versions, bytes, failures))
    }

    /// Copies the difference between the two inventories to the backup.
    async fn sync_pair(
        &self,
        job: &Job,
        primary: &str,
        sides: &Sides,
    ) -> Result<String, WireError> {
        let (primary_files, primary_dead) = sides.primary_client.inventory().await?;
        let (backup_files, _) = sides.backup_client.inventory().await?;
        let held: HashMap<&str, u64> = backup_files
            .iter()
            .map(|e| (e.file.as_str(), e.meta.stats.version))
            .collect();
        let to_pull: Vec<String> = primary_files
            .iter()
            .filter(|e| {
                held.get(e.file.as_str())
                    .is_none_or(|&v| v < e.meta.stats.version)
            })
            .map(|e| e.file.clone())
            .collect();
        let current = primary_files.len() - to_pull.len();
        let on_primary: HashSet<&str> = primary_files.iter().map(|e| e.file.as_str()).collect();
        let orphans = backup_files
            .iter()
            .filter(|e| !on_primary.contains(e.file.as_str()))
            .filter(|e| !primary_dead.iter().any(|t| t.file == e.file))
            .count();
        let (mut pulled, mut bytes, mut failed) = (0usize, 0u64, Vec::new());
        for batch in to_pull.chunks(SYNC_BATCH) {
            let (versions, n, failures) = self.pull(sides, batch.to_vec()).await?;
            pulled += versions.len();
            bytes += n;
            failed.extend(
                failures
                    .into_iter()
                    .filter(|(_, e)| e.code != ErrorCode::NotFound),
            );
        }
        if bytes > 0 {
            self.job_event(
                job,
                JobStep::Transferred,
                &sides.backup,
                Some(format!("{bytes} bytes in {pulled} files")),
            );
        }
        let deletes = self.apply_tombstones(sides, &primary_dead, &held).await?;
        if let Some((file, e)) = failed.first() {
            return Err(WireError::new(
                e.code,
                format!(
                    "{} of {} files failed, first {file:?}: {}",
                    failed.len(),
                    to_pull.len(),
                    e.message
                ),
            ));
        }
        let events = {
            let mut state = self.state();
            if let Some(pair) = state.registry.pair_mut(primary) {
                pair.needs_sync = false;
                pair.last_sync_ms = now_ms();
            }
            if let Some(entry) = state.registry.get_mut(&sides.backup) {
                entry.files = primary_files.len() as u64;
            }
            state.registry.refresh("sync complete")
        };
        for event in events {
            self.events.emit(event);
        }
        let mut detail = format!("copied {pulled} files ({bytes} bytes), {current} already current, {deletes} deletes applied");
        if orphans > 0 {
            detail.push_str(&format!(", {orphans} files only on the backup left alone"));
        }
        Ok(detail)
    }

    /// Applies the primary's tombstones to the backup and purges them on both sides.
    async fn apply_tombstones(
        &self,
        sides: &Sides,
        dead: &[Tombstone],
        held: &HashMap<&str, u64>,
    ) -> Result<usize, WireError> {
        let mut applied = 0;
        for tombstone in dead {
            if held
                .get(tombstone.file.as_str())
                .is_some_and(|&v| v < tombstone.version)
            {
                sides
                    .backup_client
                    .call(SsRequest::ApplyDelete {
                        file: tombstone.file.clone(),
                        version: tombstone.version,
                    })
                    .await?;
                applied += 1;
            }
            for side in [&sides.primary_client, &sides.backup_client] {
                side.call(SsRequest::PurgeTombstone {
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

    fn key(file: &str) -> JobKey {
        JobKey::File {
            primary: "ss1".into(),
            file: file.into(),
        }
    }

    #[tokio::test]
    async fn jobs_for_one_file_coalesce_and_the_latest_version_wins() {
        let q = ReplQueue::new(10);
        assert!(matches!(
            q.offer(key("a"), JobKind::Create, Some(1)),
            Offer::Queued(_)
        ));
        assert!(matches!(
            q.offer(key("a"), JobKind::Update, Some(3)),
            Offer::Coalesced(_)
        ));
        assert!(matches!(
            q.offer(key("a"), JobKind::Update, Some(2)),
            Offer::Coalesced(_)
        ));
        let job = q.take().await;
        assert_eq!((job.kind, job.version), (JobKind::Create, Some(3)));
        // While it runs, a new change queues separately and waits for it.
        assert!(matches!(
            q.offer(key("a"), JobKind::Delete, Some(4)),
            Offer::Queued(_)
        ));
        assert_eq!(q.pending_for("ss1").0, 2);
        let waiting = tokio::time::timeout(Duration::from_millis(50), q.take()).await;
        assert!(waiting.is_err(), "one file's jobs never run at once");
        q.finish(&job);
        let next = q.take().await;
        assert_eq!(next.kind, JobKind::Delete);
    }

    #[tokio::test]
    async fn a_full_queue_turns_into_one_sync_of_the_pair() {
        let q = ReplQueue::new(2);
        q.offer(key("a"), JobKind::Update, Some(1));
        q.offer(key("b"), JobKind::Update, Some(1));
        assert!(matches!(
            q.offer(key("c"), JobKind::Update, Some(1)),
            Offer::Overflow { sync: Some(_) }
        ));
        assert!(matches!(
            q.offer(key("d"), JobKind::Update, Some(1)),
            Offer::Overflow { sync: None }
        ));
        assert_eq!(q.depth(), 3);
        assert!(
            q.has_pending_file("ss1", "c"),
            "the sync covers every file of the pair"
        );
    }

    #[tokio::test]
    async fn a_retried_job_waits_for_its_backoff() {
        let q = ReplQueue::new(10);
        q.offer(key("a"), JobKind::Update, Some(1));
        let job = q.take().await;
        assert!(q.retry(job, Duration::from_millis(80)));
        let started = Instant::now();
        let again = q.take().await;
        assert!(started.elapsed() >= Duration::from_millis(70));
        assert_eq!(again.attempts, 1);
    }
}
