//! The commands nm answers for clients.
//!
//! VIEW, INFO, LIST, STATUS, VIEWREQUESTS and VIEWFOLDER are answered from
//! memory. Commands that change a file (CREATE, DELETE, UNDO, ADDACCESS,
//! REMACCESS, APPROVE, MOVE, CHECKPOINT, REVERT) are forwarded to the storage
//! server that holds it, and answered after its acknowledgement and nm's
//! journal write. READ, WRITE and STREAM are `Locate`: nm checks access and
//! returns the server's address with a signed ticket, and the client talks to
//! that server directly.

use crate::journal::Record;
use crate::namespace::FileRecord;
use crate::ss_client::SsClient;
use crate::state::{Nm, State};
use shared::names::{base_name, validate_path, validate_tag};
use shared::proto::{
    Access, AccessList, AccessRequest, ChangeMade, ClusterStatus, FileInfo, FileRow, FileStats,
    JobKind, Location, NmReply, NmRequest, Op, PairState, SsCommand, SsReply, CHANGES_AWAITED_FOR,
    MAX_CHANGES_AWAITED,
};
use shared::{now_ms, ErrorCode, WireError};
use std::sync::Arc;

/// What a command needs of its user on a file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need {
    Read,
    Write,
    Owner,
}

impl Nm {
    pub async fn handle_client(
        &self,
        user: &str,
        request: NmRequest,
    ) -> Result<NmReply, WireError> {
        // The server is looked up before (a DELETE removes the file) and
        // after (a CREATE places it).
        let file = file_of(&request).map(str::to_owned);
        let placed = |state: &State, file: &str| state.ns.file(file).map(|r| r.server.clone());
        let before = file.as_deref().and_then(|f| placed(&self.state(), f));
        let result = self.handle_client_request(user, request).await;
        if let (Ok(_), Some(file)) = (&result, file) {
            let mut state = self.state();
            if let Some(server) = before.or_else(|| placed(&state, &file)) {
                state.registry.count_operation(&server);
            }
        }
        result
    }

    async fn handle_client_request(
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
            NmRequest::CreateAndLocate { file } => {
                self.create(user, &file).await?;
                self.locate(user, &file, Op::Write)
            }
            NmRequest::Delete { file } => self.delete(user, &file).await,
            NmRequest::Undo { file } => {
                let request = SsCommand::UndoFile { file: file.clone() };
                self.change(user, &file, Need::Write, request, JobKind::Update)
                    .await
            }
            NmRequest::Locate { file, op } => self.locate(user, &file, op),
            NmRequest::AddAccess {
                file,
                user: grantee,
                access,
            } => self.add_access(user, &file, &grantee, access).await,
            NmRequest::RemAccess {
                file,
                user: grantee,
            } => self.remove_access(user, &file, &grantee).await,
            NmRequest::RequestAccess { file, access } => {
                self.request_access(user, &file, access).await
            }
            NmRequest::ViewRequests => Ok(NmReply::Requests {
                requests: self.state().ns.requests_for_owner(user).cloned().collect(),
            }),
            NmRequest::Approve { id } => self.decide(user, id, true).await,
            NmRequest::Deny { id } => self.decide(user, id, false).await,
            NmRequest::CreateFolder { folder } => self.create_folder(&folder).await,
            NmRequest::Move { file, folder } => self.move_file(user, &file, &folder).await,
            NmRequest::ViewFolder { folder } => Ok(NmReply::Folder {
                entries: self.state().ns.folder_entries(top_level(&folder))?,
            }),
            NmRequest::Checkpoint { file, tag } => {
                validate_tag(&tag)?;
                let request = SsCommand::CreateCheckpoint {
                    file: file.clone(),
                    tag,
                };
                self.change(user, &file, Need::Write, request, JobKind::Metadata)
                    .await
            }
            NmRequest::Revert { file, tag } => {
                validate_tag(&tag)?;
                let request = SsCommand::Revert {
                    file: file.clone(),
                    tag,
                };
                self.change(user, &file, Need::Write, request, JobKind::Update)
                    .await
            }
            NmRequest::ListCheckpoints { file } => {
                let client = self.server_for(user, &file, Need::Read)?;
                match client.call(SsCommand::ListCheckpoints { file }).await? {
                    SsReply::Checkpoints { checkpoints } => {
                        Ok(NmReply::Checkpoints { checkpoints })
                    }
                    other => Err(unexpected(&other)),
                }
            }
            NmRequest::Exec { file } => self.exec(user, &file).await,
            NmRequest::Watch { .. } => Err(WireError::bad_request(
                "WATCH takes a connection of its own",
            )),
            NmRequest::AwaitChanges { changes } => self.await_changes(&changes).await,
        }
    }

    /// `AwaitChanges`: `Done` once every change's notice has reached this
    /// file's record (or the file is gone), or after [`CHANGES_AWAITED_FOR`]
    /// (a notice lost with its server's connection; the record catches up
    /// with the inventory at its return).
    pub(crate) async fn await_changes(&self, changes: &[ChangeMade]) -> Result<NmReply, WireError> {
        if changes.len() > MAX_CHANGES_AWAITED {
            return Err(WireError::bad_request(format!(
                "at most {MAX_CHANGES_AWAITED} changes may be awaited at once, not {}",
                changes.len()
            )));
        }
        let mut recorded = self.notices_recorded.subscribe();
        let deadline = tokio::time::Instant::now() + CHANGES_AWAITED_FOR;
        loop {
            let known = {
                let state = self.state();
                changes.iter().all(|change| {
                    state
                        .ns
                        .file(&change.file)
                        .is_none_or(|record| record.stats.stamp() >= (change.epoch, change.version))
                })
            };
            if known {
                return Ok(NmReply::Done);
            }
            match tokio::time::timeout_at(deadline, recorded.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    tracing::debug!(
                        event = "nm_changes_not_heard",
                        changes = changes.len(),
                        "a client's own changes were not all heard of in time"
                    );
                    return Ok(NmReply::Done);
                }
            }
        }
    }

    fn view(&self, user: &str, all: bool) -> NmReply {
        let state = self.state();
        let row = |(name, r): (&str, &FileRecord)| FileRow {
            name: name.to_owned(),
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
        let mut servers = vec![record.server.clone()];
        let pair = state.registry.pair(&record.server);
        let backup_in_sync = pair.and_then(|p| p.backup.clone()).map(|backup| {
            servers.push(backup);
            pair.is_some_and(|p| p.state == PairState::Active)
                && !self.queue.has_pending_file(&record.server, file)
        });
        Ok(NmReply::Info {
            info: FileInfo {
                name: file.to_owned(),
                owner: record.owner.clone(),
                acl: record.acl.clone(),
                stats: record.stats.clone(),
                servers,
                backup_in_sync,
                conflict_copies: conflict_copies(&state, file, &record.server),
            },
        })
    }

    pub(crate) fn status(&self) -> NmReply {
        let state = self.state();
        NmReply::Status {
            status: ClusterStatus {
                servers: state.registry.status(self.config.heartbeat_timeout),
                pairs: state
                    .registry
                    .pair_status(|primary| self.queue.pending_for(primary)),
                queue_depth: self.queue.depth(),
                replication: match self.config.replication {
                    crate::config::ReplicationMode::Async => "ASYNC",
                    crate::config::ReplicationMode::Sync => "SYNC",
                }
                .to_owned(),
                nm: match &self.group {
                    Some(group) => group.nm_status(&self.address),
                    None => vec![shared::proto::NmStatus {
                        address: self.address.clone(),
                        role: shared::proto::NmRole::Leader,
                        lease_ms_left: 0,
                        warm: true,
                    }],
                },
                etcd: self
                    .group
                    .as_ref()
                    .map(|g| g.etcd_status())
                    .unwrap_or_default(),
            },
        }
    }

    /// The client of the live server holding `file`, if `user` may do what `need` says.
    pub(crate) fn server_for(
        &self,
        user: &str,
        file: &str,
        need: Need,
    ) -> Result<Arc<SsClient>, WireError> {
        self.serving_for(user, file, need).map(|(client, _)| client)
    }

    /// As [`Nm::server_for`], with the pair's epoch (for a ticket nm issues itself).
    pub(crate) fn serving_for(
        &self,
        user: &str,
        file: &str,
        need: Need,
    ) -> Result<(Arc<SsClient>, u64), WireError> {
        let state = self.state();
        let record = match need {
            Need::Read => state.ns.check(user, file, Op::Read)?,
            Need::Write => state.ns.check(user, file, Op::Write)?,
            Need::Owner => state.ns.check_owner(user, file)?,
        };
        state
            .registry
            .serving(&record.server)
            .map(|(entry, epoch)| (entry.client.clone(), epoch))
            .ok_or_else(|| unavailable(&record.server, file))
    }

    /// Forwards a change to the file's server, records the stats it reports,
    /// and queues its replication.
    async fn change(
        &self,
        user: &str,
        file: &str,
        need: Need,
        request: SsCommand,
        kind: JobKind,
    ) -> Result<NmReply, WireError> {
        let client = self.server_for(user, file, need)?;
        let (stats, streamed) = applied_and_streamed(client.call(request).await?)?;
        self.record_stats(file, stats, kind, streamed).await?;
        Ok(NmReply::Done)
    }

    /// Records a change's stats and queues its replication, unless the
    /// server sent it to the standby on its replication stream (then it is
    /// only recorded for the standby's catch-up).
    /// In synchronous mode, returns once the backup has the change.
    async fn record_stats(
        &self,
        file: &str,
        stats: FileStats,
        kind: JobKind,
        streamed: bool,
    ) -> Result<(), WireError> {
        let stamp = stats.stamp();
        let server = {
            let mut state = self.state();
            let Some(record) = state.ns.file_mut(file) else {
                return Ok(());
            };
            // Answers on other channels may come after a later change's notice.
            if stats.stamp() >= record.stats.stamp() {
                record.stats = stats;
            }
            record.server.clone()
        };
        if streamed {
            // The standby has it (or the server hands it back to nm).
            return Ok(());
        }
        self.replicate_and_wait(&server, file, kind, stamp.1).await
    }

    async fn create(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let (client, server) = {
            let mut state = self.state();
            state.ns.reserve(file)?;
            if let Err(e) = state.ns.require_parent(file) {
                state.ns.unreserve(file);
                return Err(e);
            }
            match state.registry.placement() {
                Some((pair, s)) => (s.client.clone(), pair),
                None => {
                    state.ns.unreserve(file);
                    return Err(WireError::unavailable(
                        "no storage server is available for new files; retry when one registers",
                    ));
                }
            }
        };
        // The server's create and nm's journal record are made durable at
        // the same time (two fsyncs in parallel, not one after the other).
        // The server's request goes first (its path is the longer); the
        // record is queued to the journal's writer next, and its answer
        // awaited only after the server's, so a journal that finishes first
        // does not wake this task for nothing.
        // If the server refuses, a second record takes the first back; if
        // the journal fails, the server's file is adopted at its next
        // registration, as after any crash between the two.
        let on_server = async {
            match client
                .call(SsCommand::CreateFile {
                    file: file.to_owned(),
                    owner: user.to_owned(),
                })
                .await?
            {
                SsReply::Applied { stats, streamed } => Ok((stats, streamed)),
                other => Err(unexpected(&other)),
            }
        };
        tokio::pin!(on_server);
        let sent = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(on_server.as_mut(), cx))
        })
        .await;
        let journalled = self.journal.submit(vec![Record::FileCreated {
            file: file.to_owned(),
            owner: user.to_owned(),
            server: server.clone(),
            acl: AccessList::new(),
        }]);
        let on_server = match sent {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => on_server.await,
        };
        let journalled = journalled.await;
        let created = match (on_server, journalled) {
            (Ok(created), Ok(())) => Ok(created),
            (Err(refused), Ok(())) => {
                let undo = vec![Record::FileDeleted {
                    file: file.to_owned(),
                }];
                if let Err(e) = self.journal.append(undo).await {
                    tracing::error!(event = "nm_journal_failed", file, error = %e);
                }
                Err(refused)
            }
            (_, Err(e)) => Err(e),
        };
        let (stamp, streamed) = {
            let mut state = self.state();
            match created {
                Ok((stats, streamed)) => {
                    let stamp = stats.stamp();
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
                    (stamp, streamed)
                }
                Err(e) => {
                    state.ns.unreserve(file);
                    return Err(e);
                }
            }
        };
        tracing::info!(event = "nm_file_created", file, owner = user, server = %server, streamed);
        if streamed {
            return Ok(NmReply::Done);
        }
        self.replicate_and_wait(&server, file, JobKind::Create, stamp.1)
            .await
            .map(|()| NmReply::Done)
    }

    async fn delete(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        let client = self.server_for(user, file, Need::Owner)?;
        let _changing = Changing::begin(self, file);
        // The delete's stamp, and whether it went on the replication stream.
        let mut deleted = None;
        match client
            .call(SsCommand::DeleteFile {
                file: file.to_owned(),
            })
            .await
        {
            Ok(reply) => deleted = applied_and_streamed(reply).ok(),
            Err(e) if e.code == ErrorCode::NotFound => {
                tracing::warn!(
                    event = "nm_delete_missing",
                    file,
                    "the server no longer had the file"
                );
            }
            Err(e) => return Err(e),
        }
        self.journal
            .append(vec![Record::FileDeleted {
                file: file.to_owned(),
            }])
            .await?;
        let server = {
            let mut state = self.state();
            let record = state.ns.delete(file);
            if let Some(entry) = record
                .as_ref()
                .and_then(|r| state.registry.get_mut(&r.server))
            {
                entry.files = entry.files.saturating_sub(1);
            }
            record.map(|r| r.server)
        };
        if let Some(server) = server {
            match deleted {
                // On the stream: no job (and in sync mode the standby had
                // it before the server answered).
                Some((_, true)) => {}
                Some((stats, false)) => {
                    self.replicate_and_wait(&server, file, JobKind::Delete, stats.version)
                        .await?
                }
                None => self.replicate(&server, file, JobKind::Delete, None),
            }
        }
        Ok(NmReply::Done)
    }

    fn locate(&self, user: &str, file: &str, op: Op) -> Result<NmReply, WireError> {
        let state = self.state();
        let record = state.ns.check(user, file, op)?;
        let (entry, epoch) = state
            .registry
            .serving(&record.server)
            .ok_or_else(|| unavailable(&record.server, file))?;
        let expires_ms = now_ms() + self.config.ticket_ttl.as_millis() as u64;
        Ok(NmReply::Located {
            location: Location {
                server: entry.name.clone(),
                address: entry.address.clone(),
                ticket: self.ticket_key.issue(user, file, op, epoch, expires_ms),
            },
        })
    }

    /// Sets a file's access list on its server, then in the journal and memory.
    /// `also` are journal records that commit with it (a resolved request).
    async fn store_acl(
        &self,
        file: &str,
        client: &SsClient,
        acl: AccessList,
        also: Vec<Record>,
    ) -> Result<(), WireError> {
        let (stats, streamed) = applied_and_streamed(
            client
                .call(SsCommand::SetAcl {
                    file: file.to_owned(),
                    acl: acl.clone(),
                })
                .await?,
        )?;
        let mut records = vec![Record::AclSet {
            file: file.to_owned(),
            acl: acl.clone(),
        }];
        records.extend(also.iter().cloned());
        self.journal.append(records).await?;
        {
            let mut state = self.state();
            state.ns.set_acl(file, acl);
            for record in also {
                record.apply(&mut state.ns);
            }
        }
        self.record_stats(file, stats, JobKind::Metadata, streamed)
            .await?;
        Ok(())
    }

    /// The access list after granting `access` to `grantee` (never lowering a write grant).
    fn granted(
        &self,
        owner: &str,
        file: &str,
        grantee: &str,
        access: Access,
    ) -> Result<(AccessList, Arc<SsClient>), WireError> {
        let state = self.state();
        let record = state.ns.check_owner(owner, file)?;
        if !state.ns.has_user(grantee) {
            return Err(WireError::new(
                ErrorCode::NoSuchUser,
                format!("no user named {grantee:?}"),
            ));
        }
        if grantee == record.owner {
            return Err(WireError::bad_request(format!(
                "{grantee} owns {file:?} and always has read and write"
            )));
        }
        let mut acl = record.acl.clone();
        let level = acl.entry(grantee.to_owned()).or_insert(access);
        *level = (*level).max(access);
        Ok((acl, live_server(&state, &record.server, file)?))
    }

    async fn add_access(
        &self,
        owner: &str,
        file: &str,
        grantee: &str,
        access: Access,
    ) -> Result<NmReply, WireError> {
        let (mut acl, client) = self.granted(owner, file, grantee, access)?;
        // ADDACCESS sets the level asked for, lowering W to R if so asked.
        acl.insert(grantee.to_owned(), access);
        self.store_acl(file, &client, acl, Vec::new()).await?;
        Ok(NmReply::Done)
    }

    async fn remove_access(
        &self,
        owner: &str,
        file: &str,
        grantee: &str,
    ) -> Result<NmReply, WireError> {
        let (acl, client) = {
            let state = self.state();
            let record = state.ns.check_owner(owner, file)?;
            if grantee == record.owner {
                return Err(WireError::bad_request(
                    "the owner's own access cannot be removed",
                ));
            }
            if !state.ns.has_user(grantee) {
                return Err(WireError::new(
                    ErrorCode::NoSuchUser,
                    format!("no user named {grantee:?}"),
                ));
            }
            let mut acl = record.acl.clone();
            if acl.remove(grantee).is_none() {
                return Err(WireError::not_found(&format!(
                    "an access grant for {grantee} on {file:?}"
                )));
            }
            (acl, live_server(&state, &record.server, file)?)
        };
        self.store_acl(file, &client, acl, Vec::new()).await?;
        Ok(NmReply::Done)
    }

    async fn request_access(
        &self,
        user: &str,
        file: &str,
        access: Access,
    ) -> Result<NmReply, WireError> {
        let request = {
            let mut state = self.state();
            validate_path(file)?;
            let record = state
                .ns
                .file(file)
                .ok_or_else(|| WireError::not_found(&format!("file {file:?}")))?;
            let op = if access == Access::Write {
                Op::Write
            } else {
                Op::Read
            };
            if record.allows(user, op) {
                return Err(WireError::new(
                    ErrorCode::Exists,
                    format!("you already have that access to {file:?}"),
                ));
            }
            if let Some(pending) = state
                .ns
                .requests()
                .find(|r| r.file == file && r.user == user && r.access >= access)
            {
                return Err(WireError::new(
                    ErrorCode::Exists,
                    format!(
                        "your request {} for {file:?} is already pending",
                        pending.id
                    ),
                ));
            }
            AccessRequest {
                id: state.ns.allocate_request_id(),
                file: file.to_owned(),
                user: user.to_owned(),
                access,
                requested_ms: now_ms(),
            }
        };
        let mut state_records = vec![Record::RequestAdded {
            request: request.clone(),
        }];
        // A request for more replaces a pending one for less.
        let replaced: Vec<u64> = self
            .state()
            .ns
            .requests()
            .filter(|r| r.file == file && r.user == user)
            .map(|r| r.id)
            .collect();
        state_records.extend(replaced.into_iter().map(|id| Record::RequestRemoved { id }));
        self.journal.append(state_records.clone()).await?;
        let mut state = self.state();
        for record in state_records {
            record.apply(&mut state.ns);
        }
        Ok(NmReply::Requests {
            requests: vec![request],
        })
    }

    /// APPROVE (grant and close) or DENY (close) a pending request.
    async fn decide(&self, owner: &str, id: u64, approve: bool) -> Result<NmReply, WireError> {
        let request = {
            let state = self.state();
            let request = state
                .ns
                .request(id)
                .cloned()
                .ok_or_else(|| WireError::not_found(&format!("request {id}")))?;
            state.ns.check_owner(owner, &request.file)?;
            request
        };
        let resolved = Record::RequestRemoved { id };
        if approve {
            let (acl, client) =
                self.granted(owner, &request.file, &request.user, request.access)?;
            self.store_acl(&request.file, &client, acl, vec![resolved])
                .await?;
        } else {
            self.journal.append(vec![resolved.clone()]).await?;
            resolved.apply(&mut self.state().ns);
        }
        Ok(NmReply::Done)
    }

    async fn create_folder(&self, folder: &str) -> Result<NmReply, WireError> {
        self.state().ns.create_folder(folder)?;
        self.journal
            .append(vec![Record::FolderCreated {
                folder: folder.to_owned(),
            }])
            .await?;
        Ok(NmReply::Done)
    }

    async fn move_file(&self, user: &str, file: &str, folder: &str) -> Result<NmReply, WireError> {
        let folder = top_level(folder);
        let to = if folder.is_empty() {
            base_name(file).to_owned()
        } else {
            format!("{folder}/{}", base_name(file))
        };
        let client = {
            let mut state = self.state();
            let record = state.ns.check_owner(user, file)?;
            let server = record.server.clone();
            if !state.ns.has_folder(folder) {
                return Err(WireError::not_found(&format!("folder {folder:?}")));
            }
            let client = live_server(&state, &server, file)?;
            state.ns.reserve(&to)?;
            client
        };
        let _changing = Changing::begin(self, file);
        let moved = async {
            let moved = applied_and_streamed(
                client
                    .call(SsCommand::MoveFile {
                        file: file.to_owned(),
                        to: to.clone(),
                    })
                    .await?,
            )?;
            self.journal
                .append(vec![Record::FileMoved {
                    file: file.to_owned(),
                    to: to.clone(),
                }])
                .await?;
            Ok::<_, WireError>(moved)
        }
        .await;
        let (server, (stats, streamed)) = {
            let mut state = self.state();
            state.ns.unreserve(&to);
            let moved = moved?;
            state.ns.rename(file, &to);
            (state.ns.file(&to).map(|r| r.server.clone()), moved)
        };
        // On the backup the old name goes (the primary left a tombstone) and
        // the new one comes: both on the stream, or both by jobs.
        if let Some(server) = server {
            if !streamed {
                self.replicate(&server, file, JobKind::Delete, Some(stats.version));
            }
        }
        self.record_stats(&to, stats, JobKind::Metadata, streamed)
            .await?;
        Ok(NmReply::Done)
    }
}

/// A DELETE or MOVE of a file under way on its server: an inventory read
/// meanwhile leaves the name alone (see `crate::inventory`). Dropped with
/// the state unlocked.
struct Changing<'a> {
    nm: &'a Nm,
    file: String,
}

impl<'a> Changing<'a> {
    fn begin(nm: &'a Nm, file: &str) -> Self {
        nm.state().ns.begin_change(file);
        Changing {
            nm,
            file: file.to_owned(),
        }
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.nm.state().ns.end_change(&self.file);
    }
}

/// The file a client request is about, for the pair's operation counter.
fn file_of(request: &NmRequest) -> Option<&str> {
    match request {
        NmRequest::Info { file }
        | NmRequest::Create { file }
        | NmRequest::CreateAndLocate { file }
        | NmRequest::Delete { file }
        | NmRequest::Undo { file }
        | NmRequest::Locate { file, .. }
        | NmRequest::AddAccess { file, .. }
        | NmRequest::RemAccess { file, .. }
        | NmRequest::Move { file, .. }
        | NmRequest::Checkpoint { file, .. }
        | NmRequest::Revert { file, .. }
        | NmRequest::ListCheckpoints { file }
        | NmRequest::Exec { file } => Some(file),
        _ => None,
    }
}

/// The conflict copies of `file` (named `file.conflict-<server>-e<epoch>`
/// for a server of its pair and an epoch it has had): a few lookups.
fn conflict_copies(state: &State, file: &str, pair: &str) -> Vec<String> {
    let Some(p) = state.registry.pair(pair) else {
        return Vec::new();
    };
    let servers = std::iter::once(p.primary.as_str()).chain(p.backup.as_deref());
    servers
        .flat_map(|server| {
            (0..=p.epoch()).map(move |epoch| shared::names::conflict_copy_name(file, server, epoch))
        })
        .filter(|name| state.ns.file(name).is_some())
        .collect()
}

/// "" and "/" both name the top folder.
fn top_level(folder: &str) -> &str {
    if folder == "/" {
        ""
    } else {
        folder
    }
}

/// The client of the server serving `pair` now, or `E_UNAVAILABLE` naming the file.
pub(crate) fn live_server(
    state: &State,
    pair: &str,
    file: &str,
) -> Result<Arc<SsClient>, WireError> {
    state
        .registry
        .serving(pair)
        .map(|(entry, _)| entry.client.clone())
        .ok_or_else(|| unavailable(pair, file))
}

fn unavailable(pair: &str, file: &str) -> WireError {
    WireError::unavailable(format!(
        "no live server of pair {pair} can serve {file:?} now (down, catching up or handing over); retry later"
    ))
}

/// A change's stats, and whether the server sent it on its replication stream.
fn applied_and_streamed(reply: SsReply) -> Result<(FileStats, bool), WireError> {
    match reply {
        SsReply::Applied { stats, streamed } => Ok((stats, streamed)),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &SsReply) -> WireError {
    WireError::internal(format!(
        "unexpected answer from a storage server: {reply:?}"
    ))
}
