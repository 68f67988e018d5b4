//! Storage servers' control connections: registration with an inventory,
//! heartbeats and change notices.
//!
//! At registration nm reconciles the server's inventory with what it
//! remembers: files nm did not know (a CREATE whose journal record was lost
//! in a crash) are adopted, files nm placed there that the server no longer
//! has are forgotten with a warning. The connection closing marks the server
//! down at once.

use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::server::{next_request, Nm};
use shared::connection::Connection;
use shared::names::validate_path;
use shared::proto::{InventoryEntry, NmReply, NmRequest};
use shared::WireError;
use std::collections::HashSet;
use std::net::SocketAddr;

impl Nm {
    pub(crate) async fn serve_storage_server(
        &self,
        mut conn: Connection,
        name: String,
        peer: SocketAddr,
    ) {
        let Some((id, request)) = next_request(&mut conn, peer).await else {
            return;
        };
        let (client_addr, inventory) = match request {
            Some(NmRequest::Register {
                name: registered,
                client_addr,
                inventory,
            }) if registered == name => (client_addr, inventory),
            _ => {
                let error = WireError::bad_request(
                    "a storage server must first Register under its handshake name",
                );
                let _ = conn.reply::<NmReply>(id, Err(error)).await;
                return;
            }
        };
        let generation = match self.register(&name, &client_addr, inventory).await {
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
            while let Some((id, request)) = next_request(&mut conn, peer).await {
                let Some(request) = request else { continue };
                let result = self.handle_server_message(&name, request);
                if conn.reply(id, result).await.is_err() {
                    break;
                }
            }
        }
        if self.state().registry.disconnect(&name, generation) {
            tracing::warn!(event = "nm_server_failed", server = %name, peer = %peer, reason = "control connection closed");
        }
    }

    fn handle_server_message(
        &self,
        server: &str,
        request: NmRequest,
    ) -> Result<NmReply, WireError> {
        let mut state = self.state();
        state.registry.touch(server);
        match request {
            NmRequest::Heartbeat => {}
            NmRequest::FileChanged { file, stats } => match state.ns.file_mut(&file) {
                Some(record) if record.server == server => record.stats = stats,
                _ => tracing::warn!(
                    event = "nm_unknown_file_changed",
                    server,
                    file,
                    "change notice for a file not placed on this server"
                ),
            },
            NmRequest::FileAccessed { file, user, at_ms } => {
                if let Some(record) = state.ns.file_mut(&file) {
                    if record.server == server {
                        record.stats.accessed_ms = at_ms;
                        record.stats.accessed_by = Some(user);
                    }
                }
            }
            _ => return Err(WireError::bad_request(
                "only heartbeats and file notices are accepted on a storage server's connection",
            )),
        }
        Ok(NmReply::Done)
    }

    /// Records a registration and reconciles the inventory; returns its generation.
    async fn register(
        &self,
        name: &str,
        client_addr: &str,
        inventory: Vec<InventoryEntry>,
    ) -> Result<u64, WireError> {
        let mut records = Vec::new();
        let generation = {
            let mut state = self.state();
            let state = &mut *state;
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
                state.ns.remove(&file);
                records.push(Record::FileDeleted { file });
            }
            let generation = state.registry.register(
                name,
                client_addr,
                held.len() as u64,
                self.config.ss_timeout,
            );
            tracing::info!(
                event = "nm_server_registered",
                server = name,
                address = client_addr,
                files = held.len(),
                "storage server registered"
            );
            generation
        };
        self.journal.append(records).await?;
        Ok(generation)
    }
}
