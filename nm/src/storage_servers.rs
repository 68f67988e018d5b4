//! Storage servers' control connections: registration with an inventory,
//! heartbeats and change notices.
//!
//! At registration nm reconciles a primary's inventory with what it
//! remembers: files nm did not know (a CREATE whose journal record was lost
//! in a crash) are adopted, files nm placed there that the server no longer
//! has are forgotten with a warning. A backup's inventory is not part of the
//! namespace; it is compared with its primary's by the sync that its
//! registration starts. The connection closing marks the server down at once.

use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::registry::backs;
use crate::server::{next_request, Nm};
use shared::connection::Connection;
use shared::names::validate_path;
use shared::proto::{
    EventKind, InventoryEntry, JobKind, NmReply, NmRequest, ServerState, Tombstone,
};
use shared::WireError;
use std::collections::HashSet;
use std::net::SocketAddr;

/// What a server said about itself when it registered.
struct Registration {
    client_addr: String,
    backup_of: Option<String>,
    inventory: Vec<InventoryEntry>,
    tombstones: Vec<Tombstone>,
}

impl Nm {
    pub(crate) async fn serve_storage_server(
        &self,
        mut conn: Connection,
        name: String,
        peer: SocketAddr,
    ) {
        let Some((id, registration)) = read_registration(&mut conn, &name, peer).await else {
            return;
        };
        let generation = match self.register(&name, registration).await {
            Ok(generation) => generation,
            Err(error) => {
                let _ = conn.reply::<NmReply>(id, Err(error)).await;
                return;
            }
        };
        let registered = NmReply::Registered {
            ticket_key: self.ticket_key.bytes().to_vec(),
        };
        if conn.reply(id, Ok(registered)).await.is_ok() {
            self.after_registration(&name);
            while let Some((id, request)) = next_request(&mut conn, peer).await {
                let Some(request) = request else { continue };
                let result = self.handle_server_message(&name, request);
                if conn.reply(id, result).await.is_err() {
                    break;
                }
            }
        }
        self.server_lost(&name, generation, "control connection closed");
    }

    /// Marks a server down (unless it has re-registered) and updates its pair.
    fn server_lost(&self, name: &str, generation: u64, reason: &str) {
        let (events, dropped_for) = {
            let mut state = self.state();
            if !state.registry.disconnect(name, generation) {
                return;
            }
            let primary = state
                .registry
                .pairs()
                .find(|p| p.backup.as_deref() == Some(name))
                .map(|p| p.primary.clone());
            (state.registry.refresh(reason), primary)
        };
        self.events.emit(EventKind::Server {
            name: name.to_owned(),
            state: ServerState::Failed,
            reason: reason.to_owned(),
        });
        tracing::warn!(event = "nm_server_failed", server = %name, reason);
        for event in events {
            self.events.emit(event);
        }
        // A replica that is down gets nothing; its return starts a sync.
        if let Some(primary) = dropped_for {
            for job in self.queue.drop_pair(&primary) {
                self.events.emit(EventKind::Job {
                    job: job.id,
                    kind: job.kind,
                    step: shared::proto::JobStep::Dropped,
                    file: match &job.key {
                        crate::replication::JobKey::File { file, .. } => Some(file.clone()),
                        crate::replication::JobKey::Pair { .. } => None,
                    },
                    primary: primary.clone(),
                    replica: name.to_owned(),
                    version: job.version,
                    duration_ms: job.queued.elapsed().as_millis() as u64,
                    detail: Some(
                        "the replica is down; the sync when it returns covers this job".into(),
                    ),
                });
            }
        }
    }

    /// Events and the first sync after a server registers.
    fn after_registration(&self, name: &str) {
        let (events, primary) = {
            let mut state = self.state();
            let primary = state
                .registry
                .pairs()
                .find(|p| p.primary == name || p.backup.as_deref() == Some(name))
                .map(|p| p.primary.clone());
            (
                state.registry.refresh(&format!("{name} registered")),
                primary,
            )
        };
        self.events.emit(EventKind::Server {
            name: name.to_owned(),
            state: ServerState::Alive,
            reason: "registered".into(),
        });
        for event in events {
            self.events.emit(event);
        }
        if let Some(primary) = primary {
            let both_alive = {
                let state = self.state();
                let pair = state.registry.pair(&primary);
                state.registry.is_alive(&primary)
                    && pair
                        .and_then(|p| p.backup.as_deref())
                        .is_some_and(|b| state.registry.is_alive(b))
            };
            if both_alive {
                self.request_sync(&primary, &format!("{name} registered"));
            }
        }
    }

    fn handle_server_message(
        &self,
        server: &str,
        request: NmRequest,
    ) -> Result<NmReply, WireError> {
        let mut changed = None;
        {
            let mut state = self.state();
            state.registry.touch(server);
            match request {
                NmRequest::Heartbeat => {}
                NmRequest::FileChanged { file, stats } => match state.ns.file_mut(&file) {
                    Some(record) if record.server == server => {
                        changed = Some((file, stats.version));
                        record.stats = stats;
                    }
                    _ => tracing::warn!(event = "nm_unknown_file_changed", server, file, "change notice for a file not placed on this server"),
                },
                NmRequest::FileAccessed { file, user, at_ms } => {
                    if let Some(record) = state.ns.file_mut(&file) {
                        if record.server == server {
                            record.stats.accessed_ms = at_ms;
                            record.stats.accessed_by = Some(user);
                        }
                    }
                }
                _ => {
                    return Err(WireError::bad_request(
                        "only heartbeats and file notices are accepted on a storage server's connection",
                    ))
                }
            }
        }
        // WRITE_COMPLETE: an ETIRW on the primary.
        if let Some((file, version)) = changed {
            self.replicate(server, &file, JobKind::Update, Some(version));
        }
        Ok(NmReply::Done)
    }

    /// Records a registration and reconciles a primary's inventory; returns its generation.
    async fn register(&self, name: &str, registration: Registration) -> Result<u64, WireError> {
        let Registration {
            client_addr,
            backup_of,
            inventory,
            tombstones,
        } = registration;
        let is_backup = backs(name, backup_of.as_deref()).is_some();
        let mut records = Vec::new();
        let generation = {
            let mut state = self.state();
            let state = &mut *state;
            let count = inventory.len() as u64;
            if !is_backup {
                self.reconcile(state, name, inventory, &mut records);
            }
            let generation = state.registry.register(
                name,
                &client_addr,
                count,
                backup_of.as_deref(),
                self.config.ss_timeout,
            );
            tracing::info!(event = "nm_server_registered", server = name, address = %client_addr, files = count, tombstones = tombstones.len(), backup = is_backup, "storage server registered");
            generation
        };
        self.journal.append(records).await?;
        Ok(generation)
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
            .map(|(file, _)| file.clone())
            .collect();
        for file in lost {
            tracing::warn!(event = "nm_file_lost", server = name, file = %file, "the server no longer holds this file; forgetting it");
            state.ns.delete(&file);
            records.push(Record::FileDeleted { file });
        }
    }
}

/// Reads `Register` and any `InventoryPage`s; returns the id to answer and the whole registration.
async fn read_registration(
    conn: &mut Connection,
    name: &str,
    peer: SocketAddr,
) -> Option<(u64, Registration)> {
    let (mut id, request) = next_request(conn, peer).await?;
    let (mut registration, mut more) = match request {
        Some(NmRequest::Register {
            name: registered,
            client_addr,
            inventory,
            tombstones,
            backup_of,
            more,
        }) if registered == name => (
            Registration {
                client_addr,
                backup_of,
                inventory,
                tombstones,
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
    while more {
        conn.reply(id, Ok(NmReply::Done)).await.ok()?;
        let (page_id, request) = next_request(conn, peer).await?;
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
    Some((id, registration))
}
