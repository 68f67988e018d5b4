//! The replication stream: the serving server of a pair sends each committed
//! change to its standby over one persistent connection, and the standby
//! acknowledges it once it is durable there.
//!
//! Why: without it a change took four hops to the backup (the primary
//! acknowledges, tells nm, nm queues a job and sends `PullFiles`, the backup
//! asks the primary with `GetFile`). On the stream it takes one, and it
//! leaves as soon as the change is durable here, before the client's answer.
//!
//! How it stays safe:
//! - nm stays the authority: it names the partner (in the registration's
//!   answer and every heartbeat's), the epoch and who serves. The stream runs
//!   only while this server serves, to the partner nm named, in this epoch;
//!   the standby accepts it only from that partner, in the same epoch, while
//!   it does not serve ([`follow`]), and applies every change like a copy
//!   (never over a newer version or a newer delete).
//! - Every change is either acknowledged by the standby (durable there) or
//!   handed back to nm: when the stream breaks, falls behind by more than
//!   [`WINDOW`] changes or [`WINDOW_BYTES`], or is refused a change, the change goes to nm as an
//!   ordinary notice and nm's job copies it (and marks the standby out of
//!   sync if that fails). nm records every streamed change in the pair's
//!   catch-up record and settles it when the batched acknowledgements
//!   ([`shared::proto::ControlRequest::Streamed`]) arrive.
//! - It carries every change of a file up to [`MAX_STREAMED_BYTES`]
//!   (content and the checkpoints the change made): CREATE, ETIRW, UNDO,
//!   REVERT, CHECKPOINT, access-list changes, MOVEs without checkpoints, and
//!   DELETEs. Larger files, and MOVEs of files with checkpoints, go through
//!   nm's jobs as before. A change naming a checkpoint the standby lacks is
//!   refused there and handed to nm. A DELETE handed back goes to nm flagged
//!   as one, so nm copies it as a delete even once the file has left its
//!   namespace.
//!
//! How it stays short: a change is written to the stream's socket by the
//! thread that committed it, as soon as it is durable, and the standby's
//! acknowledgement by the thread that applied it
//! ([`shared::connection::DirectWriter`]); no task has to wake up for
//! either unless the socket is full. Each stream's task only reads, writes
//! what the socket did not take, and reports positions to nm.

use crate::files::Files;
use crate::nm_link::{NmLink, StreamTarget};
use crate::unconfirmed::Unconfirmed;
use shared::connection::{Connection, ConnectionError, DirectWriter, Incoming};
use shared::proto::{
    FileMeta, FileStats, PeerRequest, Reply, Request, Role, SsReply, StreamPosition, StreamRequest,
    StreamedChange, StreamedCheckpoint, STREAM_ACK_TIMEOUT_MS, STREAM_REPORT_IDLE_MS,
};
use shared::WireError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// Changes sent and not yet acknowledged; past this a change goes through nm.
pub const WINDOW: usize = 1024;
/// Content sent and not yet acknowledged; past this a change goes through nm
/// (so a hung standby holds at most this much of the primary's memory).
pub const WINDOW_BYTES: usize = 64 << 20;
pub use crate::files::MAX_STREAMED_BYTES;
/// Acknowledged changes are reported to nm at most this often (or per
/// [`REPORT_BATCH`]).
const REPORT_EVERY: Duration = Duration::from_millis(20);
const REPORT_BATCH: usize = 512;
/// How long the standby has to acknowledge a change before the stream is
/// deemed stuck and closed.
const ACK_TIMEOUT: Duration = Duration::from_millis(STREAM_ACK_TIMEOUT_MS);
const RETRY_START: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Changes the standby applies at once (they share its log's fdatasync).
const APPLYING: usize = 64;

/// A change waiting for the standby's acknowledgement.
struct Unacked {
    file: String,
    stats: FileStats,
    /// It is the file's DELETE.
    deleted: bool,
    bytes: usize,
    committed: Instant,
    /// `true` once the standby has it durably, `false` if it went to nm instead.
    waiter: Option<oneshot::Sender<bool>>,
}

struct Open {
    epoch: u64,
    /// The stream's connection: a change is written to it by the thread
    /// that committed it, in the order of their sequence numbers.
    writer: Arc<DirectWriter>,
}

#[derive(Default)]
struct State {
    open: Option<Open>,
    next_seq: u64,
    unacked: HashMap<u64, Unacked>,
    /// Content bytes of `unacked`.
    unacked_bytes: usize,
}

/// The sending side, on the serving server.
pub struct Streamer {
    state: Mutex<State>,
    link: Arc<NmLink>,
    unconfirmed: Arc<Unconfirmed>,
    enabled: bool,
}

/// What [`Streamer::offer`] did with a change.
pub enum Offered {
    /// On the stream: resolves `true` once the standby has it durably,
    /// `false` if it was handed to nm instead.
    Sent(oneshot::Receiver<bool>),
    /// Not on the stream (closed, full, too large): tell nm as before.
    NotSent,
}

impl Streamer {
    pub fn new(link: Arc<NmLink>, unconfirmed: Arc<Unconfirmed>, enabled: bool) -> Arc<Self> {
        Arc::new(Streamer {
            state: Mutex::new(State::default()),
            link,
            unconfirmed,
            enabled,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a committed change to the standby, if the stream is open for
    /// the epoch it was made in and has room. `checkpoints` are those the
    /// change made (tag and content); the standby has every other one the
    /// file names, or refuses the change and nm copies it.
    pub fn offer(
        &self,
        file: &str,
        meta: &FileMeta,
        content: &[u8],
        checkpoints: &[(&str, &[u8])],
    ) -> Offered {
        let bytes = content.len() + checkpoints.iter().map(|(_, c)| c.len()).sum::<usize>();
        if bytes > MAX_STREAMED_BYTES {
            return Offered::NotSent;
        }
        // Copied only once the stream has room for it.
        let change = || StreamRequest::StreamApply {
            file: file.to_owned(),
            meta: meta.clone(),
            content: serde_bytes::ByteBuf::from(content.to_vec()),
            checkpoints: checkpoints
                .iter()
                .map(|(tag, content)| StreamedCheckpoint {
                    tag: (*tag).to_owned(),
                    content: serde_bytes::ByteBuf::from(content.to_vec()),
                })
                .collect(),
        };
        self.send(file, &meta.stats, bytes, change)
    }

    /// Sends a committed DELETE (its tombstone's stamp is `stats`).
    pub fn offer_delete(&self, file: &str, stats: &FileStats) -> Offered {
        let change = || StreamRequest::StreamDelete {
            file: file.to_owned(),
            version: stats.version,
            epoch: stats.epoch,
        };
        self.send(file, stats, 0, change)
    }

    fn send(
        &self,
        file: &str,
        stats: &FileStats,
        bytes: usize,
        change: impl FnOnce() -> StreamRequest,
    ) -> Offered {
        let mut state = self.lock();
        let State {
            open,
            next_seq,
            unacked,
            unacked_bytes,
        } = &mut *state;
        let Some(open) = open.as_ref() else {
            return Offered::NotSent;
        };
        if open.epoch != stats.epoch
            || unacked.len() >= WINDOW
            || *unacked_bytes + bytes > WINDOW_BYTES
        {
            return Offered::NotSent;
        }
        *next_seq += 1;
        let seq = *next_seq;
        let body = change();
        let deleted = matches!(body, StreamRequest::StreamDelete { .. });
        // Written here, under the lock, so the standby gets the changes in
        // the order of their numbers, without waiting for the stream's
        // task to wake up (it writes only what the socket did not take).
        if open.writer.send_now(&Request { id: seq, body }).is_err() {
            return Offered::NotSent;
        }
        let (tx, rx) = oneshot::channel();
        *unacked_bytes += bytes;
        unacked.insert(
            seq,
            Unacked {
                file: file.to_owned(),
                stats: stats.clone(),
                deleted,
                bytes,
                committed: Instant::now(),
                waiter: Some(tx),
            },
        );
        Offered::Sent(rx)
    }

    /// Takes `seq` out of the window.
    fn settle(&self, seq: u64) -> Option<Unacked> {
        let mut state = self.lock();
        let unacked = state.unacked.remove(&seq)?;
        state.unacked_bytes -= unacked.bytes;
        Some(unacked)
    }

    /// The standby has `seq` durably.
    fn acked(&self, seq: u64) -> Option<StreamedChange> {
        let mut unacked = self.settle(seq)?;
        self.unconfirmed
            .confirmed(&unacked.file, unacked.stats.stamp());
        if let Some(waiter) = unacked.waiter.take() {
            let _ = waiter.send(true);
        }
        Some(StreamedChange {
            file: unacked.file,
            epoch: unacked.stats.epoch,
            version: unacked.stats.version,
            micros: unacked.committed.elapsed().as_micros() as u64,
        })
    }

    /// The standby refused `seq`: nm copies it instead.
    fn refused(&self, seq: u64, error: &WireError) {
        let Some(unacked) = self.settle(seq) else {
            return;
        };
        tracing::warn!(event = "ss_stream_refused", file = %unacked.file, error = %error, "the standby refused a streamed change; nm copies it instead");
        self.hand_to_nm(unacked);
    }

    fn hand_to_nm(&self, mut unacked: Unacked) {
        self.link
            .file_not_streamed(&unacked.file, &unacked.stats, unacked.deleted);
        if let Some(waiter) = unacked.waiter.take() {
            let _ = waiter.send(false);
        }
    }

    /// Opens the stream for `epoch`, on `writer`.
    fn open(&self, epoch: u64, writer: Arc<DirectWriter>) {
        self.lock().open = Some(Open { epoch, writer });
    }

    /// Closes the stream: every change not acknowledged goes to nm.
    fn close(&self) {
        let unacked: Vec<Unacked> = {
            let mut state = self.lock();
            state.open = None;
            state.unacked_bytes = 0;
            state.unacked.drain().map(|(_, u)| u).collect()
        };
        if !unacked.is_empty() {
            tracing::info!(
                event = "ss_stream_handed_back",
                changes = unacked.len(),
                "changes the standby had not acknowledged go to nm"
            );
        }
        for unacked in unacked {
            self.hand_to_nm(unacked);
        }
    }

    fn oldest_unacked(&self) -> Option<Instant> {
        self.lock().unacked.values().map(|u| u.committed).min()
    }

    /// Where the stream to the standby stands now.
    fn position(&self, epoch: u64, open: bool) -> StreamPosition {
        let state = self.lock();
        let acknowledged = state
            .unacked
            .keys()
            .min()
            .map_or(state.next_seq, |oldest| oldest - 1);
        let oldest_ms = state
            .unacked
            .values()
            .map(|u| u.committed.elapsed().as_millis() as u64)
            .max()
            .unwrap_or(0);
        StreamPosition {
            epoch,
            sent: state.next_seq,
            acknowledged,
            unacknowledged: state.unacked.len() as u64,
            oldest_ms,
            open,
            at_ms: shared::now_ms(),
        }
    }

    /// Keeps the stream open to the partner while this server serves, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        me: String,
        key: Option<shared::auth::ClusterKey>,
        shutdown: CancellationToken,
    ) {
        if !self.enabled {
            return;
        }
        let mut target = self.link.stream_target();
        let mut retry = RETRY_START;
        loop {
            let current = target.borrow_and_update().clone();
            let Some(current) = current else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = target.changed() => if changed.is_err() { return },
                }
                continue;
            };
            let session = self.stream_to(&me, key.as_ref(), &current, &mut target);
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => { self.close(); return }
                outcome = session => outcome,
            };
            self.close();
            // nm learns the stream is closed: what it had not delivered went to nm.
            self.link
                .streamed(Vec::new(), self.position(current.epoch, false));
            match outcome {
                Ok(()) => retry = RETRY_START,
                Err(e) => {
                    tracing::info!(event = "ss_stream_down", partner = %current.partner.name, error = %e, retry_ms = retry.as_millis() as u64, "replication stream closed; changes go through nm meanwhile");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                        // A new target (a new epoch, a new partner) is tried at once.
                        _ = target.changed() => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One stream session; `Ok` when the target changed, `Err` when the stream broke.
    async fn stream_to(
        &self,
        me: &str,
        key: Option<&shared::auth::ClusterKey>,
        to: &StreamTarget,
        target: &mut watch::Receiver<Option<StreamTarget>>,
    ) -> Result<(), StreamError> {
        let mut conn = Connection::connect_keyed(
            &to.partner.address,
            Role::StorageServer,
            me,
            shared::connection::DEFAULT_MAX_FRAME,
            key,
        )
        .await?;
        conn.send(&Request {
            id: 0,
            body: PeerRequest::StreamOpen { epoch: to.epoch },
        })
        .await?;
        let opened: Reply<SsReply> = conn.expect().await?;
        opened.result?;
        tracing::info!(event = "ss_stream_open", partner = %to.partner.name, address = %to.partner.address, epoch = to.epoch, "replication stream open");
        let (writer, mut reader) = conn.split_direct();
        let writer = Arc::new(writer);
        self.open(to.epoch, writer.clone());
        let mut report = Report::new(to.epoch);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = target.changed() => {
                    self.report(&mut report);
                    if changed.is_err() || target.borrow().as_ref() != Some(to) {
                        return Ok(());
                    }
                }
                () = writer.queued() => {
                    // A standby that stops reading (a stalled disk) must not
                    // hold this loop: its acknowledgements, the stall check
                    // and a new target are all waiting on it. nm goes on
                    // hearing the position meanwhile (the age of what the
                    // standby has not acknowledged is what tells it so).
                    let flush = writer.flush();
                    tokio::pin!(flush);
                    let stuck = tokio::time::sleep(ACK_TIMEOUT);
                    tokio::pin!(stuck);
                    loop {
                        tokio::select! {
                            flushed = &mut flush => break flushed?,
                            _ = &mut stuck => return Err(StreamError::Stuck),
                            _ = tick.tick() => self.report(&mut report),
                        }
                    }
                }
                reply = reader.recv::<Reply<SsReply>>() => {
                    let Some(reply) = reply? else {
                        return Err(StreamError::Closed);
                    };
                    match reply.result {
                        Ok(_) => {
                            if let Some(change) = self.acked(reply.id) {
                                report.changes.push(change);
                            }
                            if report.changes.len() >= REPORT_BATCH {
                                self.report(&mut report);
                            }
                        }
                        Err(error) if reply.id == 0 => return Err(StreamError::Refused(error)),
                        Err(error) => self.refused(reply.id, &error),
                    }
                }
                _ = tick.tick() => {
                    self.report(&mut report);
                    if self.oldest_unacked().is_some_and(|t| t.elapsed() > ACK_TIMEOUT) {
                        return Err(StreamError::Stuck);
                    }
                }
            }
        }
    }

    /// Sends nm the acknowledged changes and the stream's position: with
    /// every batch, whenever the position moved, while anything is
    /// unacknowledged (its age is the pair's lag), and every
    /// [`STREAM_REPORT_IDLE_MS`] regardless.
    fn report(&self, report: &mut Report) {
        let position = self.position(report.epoch, true);
        let moved = report.last.as_ref().is_none_or(|(last, _)| {
            (last.sent, last.acknowledged, last.unacknowledged)
                != (
                    position.sent,
                    position.acknowledged,
                    position.unacknowledged,
                )
        });
        let idle_due = report
            .last
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= Duration::from_millis(STREAM_REPORT_IDLE_MS));
        if moved || idle_due || !report.changes.is_empty() || position.unacknowledged > 0 {
            self.link
                .streamed(std::mem::take(&mut report.changes), position.clone());
            report.last = Some((position, Instant::now()));
        }
    }
}

/// What the stream has told nm, and what it has still to tell.
struct Report {
    epoch: u64,
    changes: Vec<StreamedChange>,
    last: Option<(StreamPosition, Instant)>,
}

impl Report {
    fn new(epoch: u64) -> Self {
        Report {
            epoch,
            changes: Vec::new(),
            last: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("the standby refused the stream: {0}")]
    Refused(#[from] WireError),
    #[error("the standby closed the stream")]
    Closed,
    #[error("the standby acknowledged nothing for {ACK_TIMEOUT:?}")]
    Stuck,
}

/// Checks a `StreamOpen` from `peer_name` on this server.
pub fn may_follow(link: &NmLink, peer_name: &str, epoch: u64) -> Result<(), WireError> {
    match link.partner() {
        Some(partner) if partner.name == peer_name => {}
        Some(partner) => {
            return Err(WireError::unauthorized(format!(
                "{peer_name} is not this server's partner ({})",
                partner.name
            )))
        }
        None => {
            return Err(WireError::unavailable(
                "nm has not named this server's partner yet",
            ))
        }
    }
    if link.role().is_serving() {
        return Err(WireError::unavailable(
            "this server serves its pair; it takes no stream",
        ));
    }
    if epoch != link.role().epoch() {
        return Err(WireError::unavailable(format!(
            "the stream is for epoch {epoch}, this server is in epoch {}",
            link.role().epoch()
        )));
    }
    Ok(())
}

/// The standby's side: applies the changes of an open stream as they come,
/// several at once, and acknowledges each once it is durable. Returns when
/// the stream closes, or once this server's part changes (it was promoted,
/// or the epoch moved on).
pub async fn follow(
    conn: Connection,
    files: Arc<Files>,
    link: Arc<NmLink>,
    epoch: u64,
    peer: String,
    apply_delay: Option<Duration>,
) {
    // The daemon stopping ends the stream between changes; those being
    // applied finish and are acknowledged first.
    let dismissal = conn.dismissal();
    // Each change is acknowledged by the thread that applied it, straight
    // to the socket: no task has to wake up to send it (in sync mode the
    // client waits for it). This task writes only what the socket did not
    // take at once.
    let (writer, mut reader) = conn.split_direct();
    let writer = Arc::new(writer);
    let flusher = tokio::spawn({
        let writer = writer.clone();
        async move {
            loop {
                writer.queued().await;
                if writer.flush().await.is_err() {
                    break;
                }
            }
        }
    });
    let applying = Arc::new(Semaphore::new(APPLYING));
    loop {
        let received = tokio::select! {
            received = reader.recv_request::<StreamRequest>() => received,
            () = dismissal.cancelled() => break,
        };
        let request = match received {
            Ok(Some(Incoming::Message(request))) => request,
            Ok(Some(Incoming::Malformed { id, error })) => {
                tracing::warn!(event = "ss_stream_malformed", partner = %peer, error = %error);
                let error = WireError::bad_request(format!(
                    "only StreamApply and StreamDelete are accepted on a replication stream: {error}"
                ));
                let _ = writer.send_now(&Reply {
                    id,
                    result: Err::<SsReply, _>(error),
                });
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(event = "ss_stream_error", partner = %peer, error = %e);
                break;
            }
        };
        let change = match request.body {
            StreamRequest::StreamApply {
                file,
                meta,
                content,
                checkpoints,
            } => Applied::Put {
                file,
                meta,
                content: content.into_vec(),
                checkpoints,
            },
            StreamRequest::StreamDelete {
                file,
                version,
                epoch,
            } => Applied::Delete {
                file,
                stamp: (epoch, version),
            },
        };
        if link.role().is_serving() || link.role().epoch() != epoch {
            tracing::info!(event = "ss_stream_ended", partner = %peer, "this server's part changed; the stream is closed");
            break;
        }
        let Ok(permit) = applying.clone().acquire_owned().await else {
            break;
        };
        let files = files.clone();
        let link = link.clone();
        let writer = writer.clone();
        let peer_name = peer.clone();
        let id = request.id;
        tokio::task::spawn_blocking(move || {
            // No role change while it is applied: a server promoted meanwhile
            // takes nothing more from its old partner, and serves nothing
            // acknowledged before it is in place.
            let _role = link.role().change_guard_blocking();
            let mut acknowledged = false;
            // A change is acknowledged as soon as it is durable here, before
            // it is put in place: in sync mode the client waits for this.
            let mut durable = || {
                if !acknowledged {
                    acknowledged = true;
                    let _ = writer.send_now(&Reply {
                        id,
                        result: Ok::<_, WireError>(SsReply::Done),
                    });
                    if let Some(delay) = apply_delay {
                        std::thread::sleep(delay);
                    }
                }
            };
            let result = if link.role().is_serving() || link.role().epoch() != epoch {
                Err(WireError::unavailable(
                    "this server's part changed; the stream is over",
                ))
            } else {
                apply(&files, change, &mut durable).map(|()| SsReply::Done)
            };
            match result {
                Ok(_) => durable(),
                Err(error) if !acknowledged => {
                    let _ = writer.send_now(&Reply {
                        id,
                        result: Err::<SsReply, _>(error),
                    });
                }
                // Acknowledged as durable but not finished (a disk error
                // putting it in place): as for every logged change, the
                // server stops rather than serve what contradicts its log;
                // the restart's replay finishes it.
                Err(error) => {
                    tracing::error!(event = "ss_stream_apply_failed", partner = %peer_name, error = %error, "a change acknowledged as durable could not be finished; stopping so that the log's replay finishes it");
                    std::process::abort();
                }
            }
            drop(permit);
        });
    }
    // Every change being applied is answered before the stream ends.
    let _ = applying.acquire_many(APPLYING as u32).await;
    let _ = writer.flush().await;
    flusher.abort();
}

/// A change received on the stream.
enum Applied {
    Put {
        file: String,
        meta: FileMeta,
        content: Vec<u8>,
        checkpoints: Vec<StreamedCheckpoint>,
    },
    Delete {
        file: String,
        stamp: (u64, u64),
    },
}

/// Installs one streamed change like a copy from the partner (a delete
/// like nm's `ApplyDelete`: a newer local copy is kept). `durable` is called
/// once a put is durable, before it is in place.
fn apply(files: &Files, change: Applied, durable: &mut dyn FnMut()) -> Result<(), WireError> {
    match change {
        Applied::Put {
            file,
            meta,
            content,
            checkpoints,
        } => files.install_streamed(&file, meta, &content, &checkpoints, durable),
        Applied::Delete { file, stamp } => files.apply_delete(&file, stamp),
    }
}
