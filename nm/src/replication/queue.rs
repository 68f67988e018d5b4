//! The replication queue: jobs waiting for a worker, and the waiters of
//! synchronous changes. Data only; the workers that run the jobs are in
//! [`crate::replication`].
//!
//! - The queue is bounded (`--repl-queue-capacity`). Pending jobs for one
//!   file coalesce into one (the latest wins). When the queue is full the
//!   change is not lost: the pair is marked as needing a sync and one
//!   sync-pair job, which compares inventories, covers it.
//! - Two jobs for one file never run at once; a failed job waits for its
//!   backoff before it runs again.

use shared::proto::JobKind;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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

    pub(crate) fn file(&self) -> Option<&str> {
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
    pub not_before: Instant,
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
    /// Ids up to here are recorded as handed out (see [`ReplQueue::reserve`]).
    reserved: u64,
    order: VecDeque<JobKey>,
    pending: HashMap<JobKey, Job>,
    running: HashMap<JobKey, Job>,
}

/// Job ids are recorded as handed out in blocks of this many, so job ids do
/// not start again at 1 after an nm restart or a change of leader.
pub const JOB_ID_BLOCK: u64 = 10_000;

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

    /// Numbers jobs after `last` (the ids an earlier nm may have used).
    pub fn start_after(&self, last: u64) {
        let mut state = self.lock();
        state.next_id = state.next_id.max(last);
        state.reserved = state.reserved.max(last);
    }

    /// When the ids recorded as handed out run low: the new limit to record
    /// (a block of [`JOB_ID_BLOCK`] more), which the caller journals and then
    /// passes to [`ReplQueue::reserved`]. `None`: enough are left.
    pub fn reserve(&self) -> Option<u64> {
        let state = self.lock();
        (state.next_id + JOB_ID_BLOCK / 2 >= state.reserved).then(|| state.next_id + JOB_ID_BLOCK)
    }

    /// Ids up to `up_to` are now recorded.
    pub fn reserved(&self, up_to: u64) {
        let mut state = self.lock();
        state.reserved = state.reserved.max(up_to);
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

    /// Puts a job that could not start yet back to run after `delay`, as
    /// it was (no attempt counted), unless a newer one for the same key is
    /// pending. Returns whether it was requeued.
    pub fn postpone(&self, mut job: Job, delay: Duration) -> bool {
        let mut state = self.lock();
        state.running.remove(&job.key);
        let requeued = !state.pending.contains_key(&job.key);
        if requeued {
            job.not_before = Instant::now() + delay;
            state.order.push_back(job.key.clone());
            state.pending.insert(job.key.clone(), job);
        }
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

/// Changes waiting to be confirmed on the backup (synchronous replication).
#[derive(Default)]
pub struct Waiters {
    by_file: Mutex<HashMap<(String, String), Vec<Waiter>>>,
}

struct Waiter {
    version: u64,
    since: Instant,
    /// Sent `Alone` when the pair runs without its standby.
    done: tokio::sync::oneshot::Sender<Confirmed>,
}

/// How a synchronous change was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The standby has it.
    ByStandby,
    /// The pair runs without its standby: acknowledged once the journal
    /// says the standby is behind (see [`Nm::until_alone_is_recorded`]).
    Alone,
}

impl Waiters {
    pub(crate) fn register(
        &self,
        pair: &str,
        file: &str,
        version: u64,
    ) -> tokio::sync::oneshot::Receiver<Confirmed> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.by_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((pair.to_owned(), file.to_owned()))
            .or_default()
            .push(Waiter {
                version,
                since: Instant::now(),
                done,
            });
        wait
    }

    /// Releases the waiters of one file up to `version` (all of them without one).
    pub(crate) fn release_file(
        &self,
        pair: &str,
        file: &str,
        version: Option<u64>,
        how: Confirmed,
    ) {
        let mut map = self.by_file.lock().unwrap_or_else(|p| p.into_inner());
        let key = (pair.to_owned(), file.to_owned());
        if let Some(list) = map.get_mut(&key) {
            let (done, keep): (Vec<Waiter>, Vec<Waiter>) = list
                .drain(..)
                .partition(|w| version.is_none_or(|v| w.version <= v));
            *list = keep;
            if list.is_empty() {
                map.remove(&key);
            }
            for w in done {
                let _ = w.done.send(how);
            }
        }
    }

    /// Releases every waiter of a pair registered before `before`, which a
    /// sync copied to the standby; without `before`, all of them, because
    /// the pair runs alone.
    pub(crate) fn release_pair(&self, pair: &str, before: Option<Instant>) {
        let how = match before {
            Some(_) => Confirmed::ByStandby,
            None => Confirmed::Alone,
        };
        let mut map = self.by_file.lock().unwrap_or_else(|p| p.into_inner());
        for ((p, _), list) in map.iter_mut().filter(|((p, _), _)| p == pair) {
            let _ = p;
            let (done, keep): (Vec<Waiter>, Vec<Waiter>) = list
                .drain(..)
                .partition(|w| before.is_none_or(|b| w.since < b));
            *list = keep;
            for w in done {
                let _ = w.done.send(how);
            }
        }
        map.retain(|_, list| !list.is_empty());
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

    #[test]
    fn job_ids_go_on_after_the_ones_an_earlier_nm_recorded() {
        let q = ReplQueue::new(10);
        q.start_after(20_000);
        assert_eq!(
            q.reserve(),
            Some(20_000 + JOB_ID_BLOCK),
            "a new nm records a block first"
        );
        q.reserved(20_000 + JOB_ID_BLOCK);
        assert_eq!(q.reserve(), None);
        let Offer::Queued(job) = q.offer(key("a"), JobKind::Create, Some(1)) else {
            panic!("queued")
        };
        assert_eq!(job.id, 20_001);
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
