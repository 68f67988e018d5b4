//! Storage servers' control connections: registration, heartbeats and change
//! notices.
//!
//! A registration is one frame, answered at once whatever the number of
//! files. The pair's serving server then has its inventory reconciled with
//! the namespace in the background (see [`crate::inventory`]); the other
//! one is compared with its partner by the sync its registration starts.
//! The connection closing marks the server down at once.

use crate::failover::Input;
use crate::failover_actions::Pending;
use crate::registry::{backs, Registering};
use crate::state::Nm;
use daemon::requests::{next_request, Next};
use shared::connection::{Connection, Incoming};
use shared::proto::{
    ControlRequest, EventKind, JobKind, JobStep, NmReply, Reply, ServerState, SsCommand,
};
use shared::WireError;
use std::net::SocketAddr;
use std::sync::Arc;

/// A change a server told nm of, to replicate.
struct Changed {
    pair: String,
    file: String,
    stamp: (u64, u64),
    /// It went to the standby on the replication stream.
    streamed: bool,
    /// An update, or a DELETE handed back by the stream.
    kind: JobKind,
}

/// What a server said about itself when it registered.
struct Registration {
    client_addr: String,
    backup_of: Option<String>,
    store_id: u64,
    /// As the server counted them; `None` while its start-up scan runs.
    files: Option<u64>,
}

impl Nm {
    pub(crate) async fn serve_storage_server(
        self: Arc<Self>,
        mut conn: Connection,
        name: String,
        peer: SocketAddr,
    ) {
        let registering = Registering::new(&self.registering, &name);
        let Some((id, registration)) = read_registration(&mut conn, &name, peer).await else {
            return;
        };
        let (generation, epoch, serving, writable, pending) = self.register(&name, registration);
        drop(registering);
        let registered = NmReply::Registered {
            // With a cluster key the server derives the ticket key itself.
            ticket_key: match self.cluster_key {
                Some(_) => Vec::new(),
                None => self.ticket_key.bytes().to_vec(),
            },
            epoch,
            serving,
            writable,
            lease_ms: self.lease().as_millis() as u64,
            sync_replication: self.config.replication == crate::config::ReplicationMode::Sync,
            partner: self.state().registry.partner(&name),
        };
        if conn.reply(id, Ok(registered)).await.is_ok() {
            // Only now: a role handed out by these decisions must not be
            // overtaken by the one in the answer.
            self.after_registration(&name, pending);
            if serving {
                // Its inventory is reconciled while it serves.
                tokio::spawn(self.clone().reconcile_inventory(name.clone(), generation));
            }
            self.serve_control_messages(conn, &name, generation, peer)
                .await;
        } else {
            self.after_registration(&name, pending);
        }
        self.server_lost(&name, generation, "control connection closed");
    }

    /// Heartbeats and notices, answered as they complete: a WRITE_COMPLETE
    /// in synchronous mode is answered only once the backup has the change,
    /// while heartbeats go on being answered meanwhile.
    async fn serve_control_messages(
        self: &Arc<Self>,
        conn: Connection,
        name: &str,
        generation: u64,
        peer: SocketAddr,
    ) {
        let dismissal = conn.dismissal();
        let (mut writer, mut reader) = conn.split();
        let (replies, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Reply<NmReply>>();
        let writer_task = tokio::spawn(async move {
            while let Some(reply) = outgoing.recv().await {
                if writer.send(&reply).await.is_err() {
                    break;
                }
            }
        });
        loop {
            let received = tokio::select! {
                received = reader.recv_request::<ControlRequest>() => received,
                () = dismissal.cancelled() => break,
            };
            let (id, request) = match received {
                Ok(Some(Incoming::Message(request))) => (request.id, request.body),
                Ok(Some(Incoming::Malformed { id, error })) => {
                    tracing::warn!(event = "nm_malformed_request", peer = %peer, error = %error);
                    let error = WireError::bad_request(format!("malformed request: {error}"));
                    let _ = replies.send(Reply {
                        id,
                        result: Err(error),
                    });
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(event = "nm_connection_error", peer = %peer, error = %e);
                    break;
                }
            };
            // A server declared failed (silent too long) is cut off: closing
            // its connection stops its writes at once, and it registers
            // again to catch up. Its heartbeat is not acknowledged.
            if !self.state().registry.is_current(name, generation) {
                break;
            }
            // A leader whose lease may have lapsed renews nobody's lease:
            // the server goes to find the new leader.
            if !self.leads() {
                let _ = replies.send(Reply {
                    id,
                    result: Err(WireError::not_leader(None)),
                });
                break;
            }
            let quiet = matches!(request, ControlRequest::FileChanged { quiet: true, .. });
            let (result, changed) = self.handle_server_message(name, request);
            match changed {
                // On the stream: the standby has it, or the server hands it back.
                Some(Changed { streamed: true, .. }) if result.is_ok() => {
                    if quiet {
                        continue;
                    }
                    if replies.send(Reply { id, result }).is_err() {
                        break;
                    }
                }
                Some(Changed {
                    pair,
                    file,
                    stamp: (_, version),
                    streamed: false,
                    kind,
                }) if result.is_ok() => {
                    // Queued before the next message of this server is read
                    // (a stream report counting the change as handed to nm
                    // must not find the queue without it); in sync mode the
                    // answer waits for the backup, without holding the loop.
                    let Some(confirmed) = self.queue_replication(&pair, &file, kind, version)
                    else {
                        if replies.send(Reply { id, result }).is_err() {
                            break;
                        }
                        continue;
                    };
                    let nm = self.clone();
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let result = nm
                            .until_confirmed(&pair, &file, confirmed)
                            .await
                            .map(|()| NmReply::Done);
                        let _ = replies.send(Reply { id, result });
                    });
                }
                _ => {
                    if replies.send(Reply { id, result }).is_err() {
                        break;
                    }
                }
            }
        }
        drop(replies);
        let _ = writer_task.await;
    }

    /// How long a server may accept writes after a heartbeat: shorter than
    /// the failure timeout, so a silent server has stopped before nm promotes.
    pub(crate) fn lease(&self) -> std::time::Duration {
        self.config.heartbeat_timeout * 2 / 3
    }

    /// Declares servers silent past the heartbeat timeout failed; runs until nm stops.
    ///
    /// Only time during which nm itself ran counts: if this loop wakes far
    /// later than it asked (nm was paused, or starved of CPU), the servers'
    /// heartbeats may be waiting unread in its sockets, so the stall is
    /// credited to every server's silence (not a fresh timeout: stalls that
    /// recur faster than the timeout must not hide a silent server). The
    /// stall is credited even while this nm does not lead, so a lease
    /// renewed after a pause finds no server blamed for it.
    pub async fn heartbeat_monitor(self: Arc<Self>) {
        let timeout = self.config.heartbeat_timeout;
        let tick = (timeout / 10).clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(250),
        );
        let stall = stall_threshold(timeout, tick);
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = std::time::Instant::now();
            let slept = now - last;
            last = now;
            if slept > stall {
                let stalled = slept - tick;
                let servers = self.state().registry.credit_stall(stalled);
                self.metrics.nm_stalls.inc();
                tracing::warn!(
                    event = "nm_stalled",
                    stalled_ms = stalled.as_millis() as u64,
                    servers,
                    "nm did not run for a while; that time does not count as any server's silence"
                );
                continue;
            }
            if !self.leads() {
                // Deposed (or about to be): no server is declared failed
                // by an nm that no longer leads.
                continue;
            }
            let silent = self.state().registry.silent(timeout);
            for (name, generation) in silent {
                let reason = format!("no heartbeat for {}", humantime::format_duration(timeout));
                self.server_lost(&name, generation, &reason);
            }
        }
    }

    /// A heartbeat timeout after nm starts, plus the longest a storage
    /// server waits between attempts to reach nm, a serving server that has
    /// not registered counts as failed (until then, its partner does not
    /// take over just because its retry came first).
    pub async fn startup_grace(self: Arc<Self>) {
        tokio::time::sleep(startup_grace(self.config.heartbeat_timeout)).await;
        // A server part-way through registering (connected, its Register
        // not yet applied) may be the serving one: its partner does not
        // take over while its registration goes on.
        let patience = self.config.heartbeat_timeout;
        while Registering::any_within(&self.registering, patience) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pairs: Vec<String> = {
            let mut state = self.state();
            state.registry.grace_over();
            state.registry.pairs().map(|p| p.primary.clone()).collect()
        };
        for pair in pairs {
            self.feed_and_act(&pair, Input::StartupGraceOver, "start-up grace over");
        }
    }

    /// Marks a server down (unless it has re-registered), tells its pair's
    /// failover machine, and drops the jobs it can no longer take.
    pub(crate) fn server_lost(self: &Arc<Self>, name: &str, generation: u64, reason: &str) {
        let (events, pair, was_standby, pending) = {
            let mut state = self.state();
            if !state.registry.disconnect(name, generation) {
                return;
            }
            let pair = state
                .registry
                .pair_of(name)
                .and_then(|p| Some((p.primary.clone(), p.side_of(name)?)));
            let was_standby = pair
                .as_ref()
                .and_then(|(p, side)| Some(state.registry.pair(p)?.fsm.standby_side() == *side))
                .unwrap_or(false);
            let pending = match &pair {
                Some((p, side)) => self.feed(&mut state, p, Input::Lost { side: *side }),
                None => Vec::new(),
            };
            (
                state.registry.refresh(&format!("{name} failed: {reason}")),
                pair.map(|(p, _)| p),
                was_standby,
                pending,
            )
        };
        self.events.emit(EventKind::Server {
            name: name.to_owned(),
            state: ServerState::Failed,
            reason: reason.to_owned(),
        });
        tracing::warn!(event = "nm_server_failed", server = %name, reason);
        self.emit_all(events);
        let Some(pair) = pair else { return };
        for job in self.queue.drop_pair(&pair) {
            self.events.emit(EventKind::Job {
                job: job.id,
                kind: job.kind,
                step: JobStep::Dropped,
                file: match &job.key {
                    crate::replication::queue::JobKey::File { file, .. } => Some(file.clone()),
                    crate::replication::queue::JobKey::Pair { .. } => None,
                },
                primary: pair.clone(),
                replica: name.to_owned(),
                version: job.version,
                duration_ms: job.queued.elapsed().as_millis() as u64,
                detail: Some(format!(
                    "{name} is down; the sync when it returns covers this job"
                )),
            });
        }
        if was_standby {
            // The standby is gone: synchronous changes stop waiting for it,
            // and are acknowledged once the journal says it is behind.
            self.waiters.release_pair(&pair, None);
        }
        self.act(&pair, pending, &format!("{name} failed: {reason}"));
    }

    /// Events and the decisions after a server registers.
    fn after_registration(self: &Arc<Self>, name: &str, pending: Vec<Pending>) {
        let (events, pair) = {
            let mut state = self.state();
            let pair = state.registry.pair_of(name).map(|p| p.primary.clone());
            (state.registry.refresh(&format!("{name} registered")), pair)
        };
        self.events.emit(EventKind::Server {
            name: name.to_owned(),
            state: ServerState::Alive,
            reason: "registered".into(),
        });
        self.emit_all(events);
        self.introduce_partner(name);
        if let Some(pair) = pair {
            self.act(&pair, pending, &format!("{name} registered"));
        }
    }

    /// Tells the partner of a server that just registered where it is, so
    /// a serving partner opens its replication stream at once (heartbeats'
    /// answers repeat it, so a lost message only delays the stream).
    fn introduce_partner(&self, name: &str) {
        let (client, partner) = {
            let state = self.state();
            let Some(other) = state.registry.partner(name) else {
                return;
            };
            let Some(entry) = state.registry.get(&other.name) else {
                return;
            };
            (entry.client.clone(), state.registry.partner(&other.name))
        };
        tokio::spawn(async move {
            if let Err(e) = client.call(SsCommand::SetPartner { partner }).await {
                tracing::debug!(event = "nm_partner_not_told", error = %e);
            }
        });
    }

    /// Handles one control message; a WRITE_COMPLETE also returns what to replicate.
    fn handle_server_message(
        &self,
        server: &str,
        request: ControlRequest,
    ) -> (Result<NmReply, WireError>, Option<Changed>) {
        let mut changed = None;
        let mut reply = NmReply::Done;
        let mut streamed_changes = None;
        let mut followups = None;
        {
            let mut state = self.state();
            state.registry.touch(server);
            match request {
                ControlRequest::Heartbeat => {
                    reply = NmReply::Beat {
                        partner: state.registry.partner(server),
                    };
                }
                ControlRequest::Streamed { changes, position } => {
                    if let Some(position) = position {
                        let bound = self.config.max_standby_lag.as_millis() as u64;
                        let (epoch, oldest) = (position.epoch, position.oldest_ms);
                        let waiting = position.unacknowledged > 0;
                        // Only async mode acknowledges what the standby has
                        // not: in sync mode an unacknowledged change waits,
                        // unanswered, and the standby lacks nothing acknowledged.
                        let watched = bound > 0
                            && self.config.replication == crate::config::ReplicationMode::Async;
                        if let Some((pair, was_behind)) =
                            state.registry.stream_reported(server, position)
                        {
                            // Behind past the bound; level again only below
                            // half of it, so a lag near the bound does not flap.
                            let limit = if was_behind { bound / 2 } else { bound };
                            let behind = watched && waiting && oldest > limit;
                            let input = Input::StreamPosition { epoch, behind };
                            let pending = self.feed(&mut state, &pair, input);
                            if !pending.is_empty() {
                                let reason = match behind {
                                    true => format!("{server}'s standby has left a streamed change unacknowledged for {oldest} ms (bound {bound} ms)"),
                                    false => format!("{server}'s standby keeps up with the stream again"),
                                };
                                let events = state.registry.refresh(&reason);
                                followups = Some((pair, pending, events, reason));
                            }
                        }
                    }
                    streamed_changes = Some(changes);
                }
                ControlRequest::FileChanged {
                    file,
                    stats,
                    deleted: true,
                    ..
                } => {
                    // A DELETE the stream handed back: copied as a delete,
                    // whether nm has removed the file from its namespace
                    // yet or not, if it comes from the server that serves.
                    let pair = state
                        .ns
                        .file(&file)
                        .map(|r| r.server.clone())
                        .or_else(|| state.registry.pair_of(server).map(|p| p.primary.clone()));
                    match pair {
                        Some(pair) if serves(&state, &pair, server) => {
                            changed = Some(Changed {
                                pair,
                                file,
                                stamp: stats.stamp(),
                                streamed: false,
                                kind: JobKind::Delete,
                            });
                        }
                        _ => {
                            let error = WireError::unavailable(format!(
                                "{server} does not serve {file:?} now: the delete is not replicated"
                            ));
                            return (Err(error), None);
                        }
                    }
                }
                ControlRequest::FileChanged {
                    file,
                    stats,
                    streamed,
                    deleted: false,
                    ..
                } => {
                    let pair = state.ns.file(&file).map(|r| r.server.clone());
                    let from_active = pair.as_deref().is_some_and(|p| serves(&state, p, server));
                    let being_created_by = state
                        .registry
                        .pair_of(server)
                        .filter(|p| p.active() == server && state.ns.is_reserved(&file))
                        .map(|p| p.primary.clone());
                    match (pair, state.ns.file_mut(&file)) {
                        (Some(pair), Some(record)) if from_active => {
                            changed = Some(Changed {
                                pair,
                                file,
                                stamp: stats.stamp(),
                                streamed,
                                kind: JobKind::Update,
                            });
                            // A change handed back by the stream may arrive
                            // after a later one's notice.
                            if stats.stamp() >= record.stats.stamp() {
                                record.stats = stats;
                                self.notices_recorded.send_modify(|n| *n += 1);
                            }
                        }
                        // A CREATE whose answer nm has not handled yet: the
                        // stream handed the change back before nm knew the
                        // file; it is still copied.
                        (None, None) if being_created_by.is_some() => {
                            let pair = being_created_by.unwrap_or_default();
                            changed = Some(Changed {
                                pair,
                                file,
                                stamp: stats.stamp(),
                                streamed,
                                kind: JobKind::Update,
                            });
                        }
                        _ => {
                            tracing::warn!(
                                event = "nm_unknown_file_changed",
                                server,
                                file,
                                "change notice from a server that does not serve this file"
                            );
                            // Never `Done`: a synchronous change waits for this
                            // answer, and nm will not replicate it.
                            let error = WireError::unavailable(format!(
                                "{server} does not serve {file:?} now: the change is not replicated"
                            ));
                            return (Err(error), None);
                        }
                    }
                }
                ControlRequest::FileAccessed { file, user, at_ms } => {
                    if let Some(record) = state.ns.file_mut(&file) {
                        record.stats.accessed_ms = at_ms;
                        record.stats.accessed_by = Some(user);
                    }
                }
                ControlRequest::Register { .. } => {
                    let error = WireError::bad_request(
                        "this connection has registered already; only heartbeats and file notices follow",
                    );
                    return (Err(error), None);
                }
            }
        }
        if let Some((pair, pending, events, reason)) = followups {
            self.emit_all(events);
            self.act(&pair, pending, &reason);
        }
        if let Some(changes) = streamed_changes {
            self.streamed(server, changes);
        }
        // WRITE_COMPLETE: an ETIRW on the pair's active server; replicated by the caller.
        (Ok(reply), changed)
    }

    /// Records a registration and tells the pair's failover machine.
    /// Returns the generation, the part the server plays now
    /// (epoch, serving, writable), and the machine's decisions, to carry out
    /// once the server has its answer.
    fn register(
        &self,
        name: &str,
        registration: Registration,
    ) -> (u64, u64, bool, bool, Vec<Pending>) {
        let Registration {
            client_addr,
            backup_of,
            store_id,
            files,
        } = registration;
        let mut state = self.state();
        let state = &mut *state;
        let count = files
            .or_else(|| state.registry.get(name).map(|e| e.files))
            .unwrap_or(0);
        let pair = backs(name, backup_of.as_deref()).unwrap_or_else(|| name.to_owned());
        let remembered = state.ns.pair(&pair);
        let (generation, side) = state.registry.register(
            name,
            &client_addr,
            count,
            backup_of.as_deref(),
            self.config.ss_timeout,
            |_| remembered,
        );
        if let Some(entry) = state.registry.get_mut(name) {
            entry.store_id = store_id;
        }
        let pending = self.feed(state, &pair, Input::Registered { side });
        let p = state.registry.pair(&pair).expect("registered above");
        let (epoch, serving, writable) = p.fsm.role_of(side);
        if let Some(entry) = state.registry.get_mut(name) {
            // Until its inventory is reconciled a sync from it waits (see
            // `crate::inventory`).
            entry.inventory_due = serving;
        }
        tracing::info!(event = "nm_server_registered", server = name, address = %client_addr, files = count, serving, epoch, "storage server registered");
        (generation, epoch, serving, writable, pending)
    }
}

/// Reads `Register`; returns the id to answer and the registration.
async fn read_registration(
    conn: &mut Connection,
    name: &str,
    peer: SocketAddr,
) -> Option<(u64, Registration)> {
    // A malformed first frame was answered already; the connection ends.
    let Next::Request(id, request) = next_request::<ControlRequest>(conn, peer, "nm").await else {
        return None;
    };
    match request {
        ControlRequest::Register {
            name: registered,
            client_addr,
            backup_of,
            store_id,
            files,
        } if registered == name => Some((
            id,
            Registration {
                client_addr,
                files,
                backup_of,
                store_id,
            },
        )),
        _ => {
            let error = WireError::bad_request(
                "a storage server must first Register under its handshake name",
            );
            let _ = conn.reply::<NmReply>(id, Err(error)).await;
            None
        }
    }
}

/// How late the heartbeat monitor may wake before nm counts it as its own
/// stall: well beyond scheduling noise, well within the timeout.
fn stall_threshold(timeout: std::time::Duration, tick: std::time::Duration) -> std::time::Duration {
    (tick * 3).max(timeout / 3)
}

/// How long after nm starts a serving server may take to register again.
pub fn startup_grace(heartbeat_timeout: std::time::Duration) -> std::time::Duration {
    heartbeat_timeout + shared::leader::NM_RECONNECT_BACKOFF_MAX
}

/// Whether `server` is the one serving `pair` (a change notice counts only from it).
fn serves(state: &crate::state::State, pair: &str, server: &str) -> bool {
    state
        .registry
        .pair(pair)
        .is_some_and(|p| p.active() == server)
}
