//! Storage servers' control connections: registration with an inventory,
//! heartbeats and change notices.
//!
//! At registration nm reconciles a primary's inventory with what it
//! remembers: files nm did not know (a CREATE whose journal record was lost
//! in a crash) are adopted, files nm placed there that the server no longer
//! has are forgotten with a warning. A backup's inventory is not part of the
//! namespace; it is compared with its primary's by the sync that its
//! registration starts. The connection closing marks the server down at once.

use crate::failover::Input;
use crate::failover_actions::Pending;
use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::registry::{backs, Registering};
use crate::server::{next_request, Nm};
use shared::connection::{Connection, Incoming};
use shared::names::validate_path;
use shared::proto::{
    EventKind, InventoryEntry, JobKind, JobStep, NmReply, NmRequest, Reply, ServerState, SsRequest,
    Tombstone,
};
use shared::WireError;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
    inventory: Vec<InventoryEntry>,
    tombstones: Vec<Tombstone>,
    /// Whether `inventory` is all the server holds (nm cuts it short when it
    /// does not need it).
    complete: bool,
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
        let needs_inventory = |backup_of: Option<&str>| self.needs_inventory(&name, backup_of);
        let registering = Registering::new(&self.registering, &name);
        let Some((id, registration)) =
            read_registration(&mut conn, &name, peer, needs_inventory, &registering).await
        else {
            return;
        };
        let reconciling = Instant::now();
        let registered = self.register(&name, registration).await;
        drop(registering);
        tracing::debug!(event = "nm_registration_applied", server = %name, ms = reconciling.elapsed().as_millis() as u64);
        let (generation, epoch, serving, writable, pending) = match registered {
            Ok(registered) => registered,
            Err(error) => {
                let _ = conn.reply::<NmReply>(id, Err(error)).await;
                return;
            }
        };
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
                received = reader.recv_request::<NmRequest>() => received,
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
            let (result, changed) = self.handle_server_message(name, request);
            match changed {
                // On the stream: the standby has it, or the server hands it back.
                Some(Changed { streamed: true, .. }) if result.is_ok() => {
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
                    let nm = self.clone();
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let result = nm
                            .replicate_and_wait(&pair, &file, kind, version)
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
    /// heartbeats may be waiting unread in its sockets, so every server gets
    /// a fresh timeout instead of being declared failed for nm's own stall.
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
            if !self.leads() {
                // Deposed (or about to be): no server is declared failed
                // by an nm that no longer leads.
                continue;
            }
            if slept > stall {
                let servers = self.state().registry.touch_all();
                self.metrics.nm_stalls.inc();
                tracing::warn!(
                    event = "nm_stalled",
                    stalled_ms = (slept - tick).as_millis() as u64,
                    servers,
                    "nm did not run for a while; every server gets a fresh heartbeat timeout"
                );
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
        // A server part-way through registering (a million-file inventory
        // takes seconds to list and send, after the server's start-up scan)
        // may be the serving one: its partner does not take over while its
        // registration goes on.
        let patience = self.config.heartbeat_timeout.max(REGISTRATION_PATIENCE);
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
                    crate::queue::JobKey::File { file, .. } => Some(file.clone()),
                    crate::queue::JobKey::Pair { .. } => None,
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
            if let Err(e) = client.call(SsRequest::SetPartner { partner }).await {
                tracing::debug!(event = "nm_partner_not_told", error = %e);
            }
        });
    }

    /// Handles one control message; a WRITE_COMPLETE also returns what to replicate.
    fn handle_server_message(
        &self,
        server: &str,
        request: NmRequest,
    ) -> (Result<NmReply, WireError>, Option<Changed>) {
        let mut changed = None;
        let mut reply = NmReply::Done;
        let mut streamed_changes = None;
        {
            let mut state = self.state();
            state.registry.touch(server);
            match request {
                NmRequest::Heartbeat => {
                    reply = NmReply::Beat {
                        partner: state.registry.partner(server),
                    };
                }
                NmRequest::Streamed { changes } => streamed_changes = Some(changes),
                NmRequest::FileChanged {
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
                NmRequest::FileChanged {
                    file,
                    stats,
                    streamed,
                    deleted: false,
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
                NmRequest::FileAccessed { file, user, at_ms } => {
                    if let Some(record) = state.ns.file_mut(&file) {
                        record.stats.accessed_ms = at_ms;
                        record.stats.accessed_by = Some(user);
                    }
                }
                _ => {
                    let error = WireError::bad_request(
                        "only heartbeats and file notices are accepted on a storage server's connection",
                    );
                    return (Err(error), None);
                }
            }
        }
        if let Some(changes) = streamed_changes {
            self.streamed(server, changes);
        }
        // WRITE_COMPLETE: an ETIRW on the pair's active server; replicated by the caller.
        (Ok(reply), changed)
    }

    /// Whether a registering server's inventory is needed: only the pair's
    /// active server has its inventory reconciled with the namespace. The
    /// other one is compared with its partner by the sync its registration
    /// starts, which asks for what it needs; reading a million entries it
    /// does not use would only delay its return.
    fn needs_inventory(&self, name: &str, backup_of: Option<&str>) -> bool {
        let state = self.state();
        let pair = backs(name, backup_of).unwrap_or_else(|| name.to_owned());
        match state.registry.pair(&pair) {
            Some(p) => p.active() == name,
            None => true,
        }
    }

    /// Records a registration and tells the pair's failover machine; the
    /// pair's active server also has its inventory reconciled with the
    /// namespace. Returns the generation, the part the server plays now
    /// (epoch, serving, writable), and the machine's decisions, to carry out
    /// once the server has its answer.
    async fn register(
        &self,
        name: &str,
        registration: Registration,
    ) -> Result<(u64, u64, bool, bool, Vec<Pending>), WireError> {
        let Registration {
            client_addr,
            backup_of,
            inventory,
            tombstones,
            complete,
            store_id,
            files,
        } = registration;
        let mut records = Vec::new();
        let role = {
            let mut state = self.state();
            let state = &mut *state;
            let count = files
                .or(complete.then_some(inventory.len() as u64))
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
            if serving {
                if complete {
                    self.reconcile(state, &pair, inventory, &mut records);
                } else {
                    // Became active while registering: nothing is lost, but
                    // files whose journal records were lost are not adopted.
                    tracing::warn!(
                        event = "nm_inventory_skipped",
                        server = name,
                        "became active while registering; its inventory was not reconciled"
                    );
                }
            }
            tracing::info!(event = "nm_server_registered", server = name, address = %client_addr, files = count, tombstones = tombstones.len(), serving, epoch, "storage server registered");
            (generation, epoch, serving, writable, pending)
        };
        self.journal.append(records).await?;
        Ok(role)
    }

    fn reconcile(
        &self,
        state: &mut crate::server::State,
        name: &str,
        inventory: Vec<InventoryEntry>,
        records: &mut Vec<Record>,
    ) {
        let mut held = HashSet::with_capacity(inventory.len());
        for entry in inventory {
            if let Err(e) = validate_path(&entry.file) {
                tracing::warn!(event = "nm_inventory_bad_name", server = name, error = %e);
                continue;
            }
            match state.ns.file_mut(&entry.file) {
                Some(record) if record.server == name => {
                    record.stats = entry.meta.stats;
                }
                Some(record) => {
                    tracing::warn!(event = "nm_inventory_conflict", server = name, file = %entry.file, placed_on = %record.server, "file also held by another server; keeping nm's placement");
                    continue;
                }
                None => {
                    if let Err(e) = state.ns.reserve(&entry.file) {
                        tracing::warn!(event = "nm_inventory_conflict", server = name, file = %entry.file, error = %e);
                        continue;
                    }
                    tracing::info!(event = "nm_file_adopted", server = name, file = %entry.file, owner = %entry.meta.owner);
                    if state.ns.add_user(&entry.meta.owner) {
                        records.push(Record::User {
                            name: entry.meta.owner.clone(),
                        });
                    }
                    records.push(Record::FileCreated {
                        file: entry.file.clone(),
                        owner: entry.meta.owner.clone(),
                        server: name.to_owned(),
                        acl: entry.meta.acl.clone(),
                    });
                    state.ns.insert(
                        &entry.file,
                        FileRecord {
                            owner: entry.meta.owner,
                            acl: entry.meta.acl,
                            server: name.to_owned(),
                            stats: entry.meta.stats,
                        },
                    );
                }
            }
            held.insert(entry.file);
        }
        let lost: Vec<String> = state
            .ns
            .files()
            .filter(|(file, record)| record.server == name && !held.contains(*file))
            .map(|(file, _)| file.to_owned())
            .collect();
        let partner = state
            .registry
            .pair(name)
            .and_then(|p| p.name(p.fsm.standby_side()).map(str::to_owned));
        if let (Some(partner), false) = (&partner, lost.is_empty()) {
            // Its partner may hold them: kept, and the next sync of the pair
            // compares everything and copies back what only the partner has.
            self.catch_up
                .compare_everything_next(name, "the serving server lacks files nm knows");
            for file in lost {
                tracing::warn!(event = "nm_file_missing", server = name, file = %file, partner = %partner, "the serving server does not hold this file; kept, to be copied back from its partner");
            }
            return;
        }
        for file in lost {
            tracing::warn!(event = "nm_file_lost", server = name, file = %file, "the server no longer holds this file and has no partner; forgetting it");
            state.ns.delete(&file);
            records.push(Record::FileDeleted { file });
        }
    }
}

/// Reads `Register` and any `InventoryPage`s; returns the id to answer and the whole registration.
///
/// `needs_inventory(backup_of)` says whether to read the rest of a long
/// inventory; if not, the first page is answered with `Registered` at once.
async fn read_registration(
    conn: &mut Connection,
    name: &str,
    peer: SocketAddr,
    needs_inventory: impl FnOnce(Option<&str>) -> bool,
    registering: &Registering<'_>,
) -> Option<(u64, Registration)> {
    let (mut id, request) = next_request(conn, peer).await?;
    registering.touch();
    let (mut registration, mut more) = match request {
        Some(NmRequest::Register {
            name: registered,
            client_addr,
            inventory,
            tombstones,
            backup_of,
            more,
            store_id,
            files,
        }) if registered == name => (
            Registration {
                client_addr,
                files,
                complete: false,
                backup_of,
                inventory,
                tombstones,
                store_id,
            },
            more,
        ),
        _ => {
            let error = WireError::bad_request(
                "a storage server must first Register under its handshake name",
            );
            let _ = conn.reply::<NmReply>(id, Err(error)).await;
            return None;
        }
    };
    if more && !needs_inventory(registration.backup_of.as_deref()) {
        return Some((id, registration));
    }
    while more {
        conn.reply(id, Ok(NmReply::Done)).await.ok()?;
        let (page_id, request) = next_request(conn, peer).await?;
        registering.touch();
        id = page_id;
        match request {
            Some(NmRequest::InventoryPage {
                inventory,
                tombstones,
                last,
            }) => {
                registration.inventory.extend(inventory);
                registration.tombstones.extend(tombstones);
                more = !last;
            }
            _ => {
                let error = WireError::bad_request("expected the rest of the inventory");
                let _ = conn.reply::<NmReply>(id, Err(error)).await;
                return None;
            }
        }
    }
    registration.complete = true;
    Some((id, registration))
}

/// How late the heartbeat monitor may wake before nm counts it as its own
/// stall: well beyond scheduling noise, well within the timeout.
fn stall_threshold(timeout: std::time::Duration, tick: std::time::Duration) -> std::time::Duration {
    (tick * 3).max(timeout / 3)
}

/// How long a registration may go without a frame (a server listing a
/// million files, or waiting for its start-up scan) and still hold back the
/// end of nm's start-up grace.
const REGISTRATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after nm starts a serving server may take to register again.
pub fn startup_grace(heartbeat_timeout: std::time::Duration) -> std::time::Duration {
    heartbeat_timeout + shared::limits::NM_RECONNECT_BACKOFF_MAX
}

/// Whether `server` is the one serving `pair` (a change notice counts only from it).
fn serves(state: &crate::server::State, pair: &str, server: &str) -> bool {
    state
        .registry
        .pair(pair)
        .is_some_and(|p| p.active() == server)
}
