//! The replication workers: each takes the next job from the queue and
//! runs it (a file's copy or delete, or a pair's sync), retrying a failed
//! one with backoff.

use super::queue::*;
use super::Sides;
use crate::failover::Input;
use crate::state::Nm;
use shared::proto::{JobKind, JobStep, Op, PullItem, SsCommand, SsReply};
use shared::{now_ms, ErrorCode, WireError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a sync waiting for its source's inventory looks again.
const INVENTORY_POLL: Duration = Duration::from_millis(100);

impl Nm {
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
    pub(super) fn job_failed(&self, job: Job, replica: &str, error: WireError) {
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
    pub(super) async fn run_job(
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
    pub(super) fn confirm_to_source(sides: &Sides, file: &str, (epoch, version): (u64, u64)) {
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
    pub(super) async fn pull(
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
}
