//! Replication: the queue of jobs, the workers that run them, pair syncs and
//! catch-ups.
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
//!
//! - [`queue`]: the jobs, coalesced per file, with backoff, and the waiters
//!   of synchronous changes.
//! - `worker`: the workers and the file jobs.
//! - `sync`: a pair's sync (inventories compared, files pulled, deletes
//!   applied, conflict copies kept).
//! - `hand_back`: `SetRole`, and the hand-back's final sync with writes paused.
//! - [`catch_up`]: what a catch-up compares.
//! - this module: how changes become jobs (`replicate`, `streamed`,
//!   `request_sync`) and the two sides of a pair as a job sees them.

pub mod catch_up;
mod hand_back;
pub mod queue;
mod sync;
mod worker;

use crate::failover::Input;
use crate::ss_client::SsClient;
use crate::state::Nm;
use shared::proto::{EventKind, JobKind, JobStep, UnconfirmedLevel};
use shared::WireError;
use std::sync::Arc;
use std::time::Instant;

use queue::*;

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
        if changes.is_empty() {
            return;
        }
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
        match self.queue_replication(pair, file, kind, version) {
            None => Ok(()),
            Some(confirmed) => self.until_confirmed(pair, file, confirmed).await,
        }
    }

    /// Queues replication of a change at once; in synchronous mode, returns
    /// what tells when the backup has it ([`Nm::until_confirmed`]).
    pub fn queue_replication(
        &self,
        pair: &str,
        file: &str,
        kind: JobKind,
        version: u64,
    ) -> Option<tokio::sync::oneshot::Receiver<Confirmed>> {
        let confirmed = (self.config.replication == crate::config::ReplicationMode::Sync)
            .then(|| self.waiters.register(pair, file, version));
        self.replicate(pair, file, kind, Some(version));
        confirmed
    }

    /// Waits until the backup has a change queued by
    /// [`Nm::queue_replication`] (or the pair is running alone).
    pub async fn until_confirmed(
        &self,
        pair: &str,
        file: &str,
        confirmed: tokio::sync::oneshot::Receiver<Confirmed>,
    ) -> Result<(), WireError> {
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
}
