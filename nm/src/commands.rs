//! The commands nm answers for clients.
//!
//! VIEW, INFO, LIST and STATUS are answered from memory. CREATE, DELETE and
//! UNDO are forwarded to the storage server that holds (or will hold) the
//! file, and answered after its acknowledgement. READ, WRITE and STREAM are
//! `Locate`: nm checks access and returns the server's address with a signed
//! ticket, and the client talks to that server directly.

use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::server::Nm;
use shared::proto::{
    AccessList, ClusterStatus, FileInfo, FileRow, Location, NmReply, NmRequest, Op, SsReply,
    SsRequest,
};
use shared::{now_ms, ErrorCode, WireError};

impl Nm {
    pub async fn handle_client(
        &self,
        user: &str,
        request: NmRequest,
    ) -> Result<NmReply, WireError> {
        match request {
            NmRequest::View { all, .. } => Ok(self.view(user, all)),
            NmRequest::Info { file } => self.info(user, &file),
            NmRequest::List => Ok(NmReply::Users {
                users: self.state().ns.users().cloned().collect(),
            }),
            NmRequest::Status => Ok(self.status()),
            NmRequest::Create { file } => self.create(user, &file).await,
            NmRequest::Delete { file } => self.delete(user, &file).await,
            NmRequest::Undo { file } => self.undo(user, &file).await,
            NmRequest::Locate { file, op } => self.locate(user, &file, op),
            NmRequest::Register { .. }
            | NmRequest::Heartbeat
            | NmRequest::FileChanged { .. }
            | NmRequest::FileAccessed { .. } => Err(WireError::unauthorized(
                "storage-server messages are not accepted on a client connection",
            )),
        }
    }

    fn view(&self, user: &str, all: bool) -> NmReply {
        let state = self.state();
        let row = |(name, r): (&String, &FileRecord)| FileRow {
            name: name.clone(),
            owner: r.owner.clone(),
            words: r.stats.words,
            chars: r.stats.chars,
            size: r.stats.size,
            modified_ms: r.stats.modified_ms,
            accessed_ms: r.stats.accessed_ms,
            accessed_by: r.stats.accessed_by.clone(),
        };
        let mut rows: Vec<FileRow> = if all {
            state.ns.files().map(row).collect()
        } else {
            state.ns.readable_by(user).map(row).collect()
        };
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        NmReply::Files { rows }
    }

    fn info(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let state = self.state();
        let record = state.ns.check(user, file, Op::Read)?;
        Ok(NmReply::Info {
            info: FileInfo {
                name: file.to_owned(),
                owner: record.owner.clone(),
                acl: record.acl.clone(),
                stats: record.stats.clone(),
                servers: vec![record.server.clone()],
                backup_in_sync: None,
            },
        })
    }

    fn status(&self) -> NmReply {
        let state = self.state();
        NmReply::Status {
            status: ClusterStatus {
                servers: state.registry.status(),
                pairs: state.registry.pairs(),
                queue_depth: 0,
            },
        }
    }

    async fn create(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let (client, server) = {
            let mut state = self.state();
            state.ns.reserve(file)?;
            match state.registry.placement() {
                Some(s) => (s.client.clone(), s.name.clone()),
                None => {
                    state.ns.unreserve(file);
                    return Err(WireError::unavailable(
                        "no storage server is available for new files; retry when one registers",
                    ));
                }
            }
        };
        let created = async {
            let stats = match client
                .call(SsRequest::CreateFile {
                    file: file.to_owned(),
                    owner: user.to_owned(),
                })
                .await?
            {
                SsReply::Applied { stats } => stats,
                other => return Err(unexpected(&server, &other)),
            };
            self.journal
                .append(vec![Record::FileCreated {
                    file: file.to_owned(),
                    owner: user.to_owned(),
                    server: server.clone(),
                    acl: AccessList::new(),
                }])
                .await?;
            Ok(stats)
        }
        .await;
        let mut state = self.state();
        match created {
            Ok(stats) => {
                state.ns.insert(
                    file,
                    FileRecord {
                        owner: user.to_owned(),
                        acl: AccessList::new(),
                        server: server.clone(),
                        stats,
                    },
                );
                if let Some(entry) = state.registry.get_mut(&server) {
                    entry.files += 1;
                }
                tracing::info!(event = "nm_file_created", file, owner = user, server = %server);
                Ok(NmReply::Done)
            }
            Err(e) => {
                state.ns.unreserve(file);
                Err(e)
            }
        }
    }

    async fn delete(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let (client, server) = {
            let state = self.state();
            let record = state.ns.check_owner(user, file)?;
            let server = record.server.clone();
            (self.live_server(&state, &server, file)?, server)
        };
        match client
            .call(SsRequest::DeleteFile {
                file: file.to_owned(),
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                tracing::warn!(event = "nm_delete_missing", file, server = %server, "the server no longer had the file");
            }
            Err(e) => return Err(e),
        }
        self.journal
            .append(vec![Record::FileDeleted {
                file: file.to_owned(),
            }])
            .await?;
        let mut state = self.state();
        if state.ns.remove(file).is_some() {
            if let Some(entry) = state.registry.get_mut(&server) {
                entry.files = entry.files.saturating_sub(1);
            }
        }
        Ok(NmReply::Done)
    }

    async fn undo(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let (client, server) = {
            let state = self.state();
            let record = state.ns.check(user, file, Op::Write)?;
            let server = record.server.clone();
            (self.live_server(&state, &server, file)?, server)
        };
        let stats = match client
            .call(SsRequest::UndoFile {
                file: file.to_owned(),
            })
            .await?
        {
            SsReply::Applied { stats } => stats,
            other => return Err(unexpected(&server, &other)),
        };
        if let Some(record) = self.state().ns.file_mut(file) {
            record.stats = stats;
        }
        Ok(NmReply::Done)
    }

    fn locate(&self, user: &str, file: &str, op: Op) -> Result<NmReply, WireError> {
        let state = self.state();
        let record = state.ns.check(user, file, op)?;
        let server = record.server.clone();
        let client = self.live_server(&state, &server, file)?;
        let expires_ms = now_ms() + self.config.ticket_ttl.as_millis() as u64;
        Ok(NmReply::Located {
            location: Location {
                server,
                address: client.address().to_owned(),
                ticket: self.ticket_key.issue(user, file, op, 0, expires_ms),
            },
        })
    }

    /// The client for a live server, or `E_UNAVAILABLE` naming the file.
    fn live_server(
        &self,
        state: &crate::server::State,
        server: &str,
        file: &str,
    ) -> Result<std::sync::Arc<crate::ss_client::SsClient>, WireError> {
        match state.registry.get(server) {
            Some(entry) if entry.connected => Ok(entry.client.clone()),
            _ => Err(WireError::unavailable(format!(
                "storage server {server} holding {file:?} is down; retry later"
            ))),
        }
    }
}

fn unexpected(server: &str, reply: &SsReply) -> WireError {
    WireError::internal(format!("unexpected answer from {server}: {reply:?}"))
}
