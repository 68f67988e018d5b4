//! The nm → ss channel: nm's commands (namespace changes, replication,
//! inventories, this server's role). Only nm speaks it: its handshake proved
//! the cluster key.

use super::Server;
use shared::connection::{Connection, ConnectionError};
use shared::names::validate_path;
use shared::proto::{Op, SsCommand, SsReply};
use shared::WireError;

impl Server {
    /// Carries out one of nm's commands. The outer error is a broken
    /// connection; the inner one is the command's failure.
    pub(super) async fn handle_command(
        &self,
        conn: &mut Connection,
        id: u64,
        command: SsCommand,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        // A change keeps the role from changing until it is committed, and
        // needs a writable server.
        let mut change = None;
        if changes_files(&command) {
            change = Some(self.link.role().change_guard().await);
            if let Err(e) = self.link.role().check_writable() {
                return Ok(Err(e));
            }
        }
        let reply = match command {
            SsCommand::SetRole {
                epoch,
                serving,
                writable,
            } => self
                .link
                .change_role(crate::role::Part {
                    epoch,
                    serving,
                    writable,
                })
                .await
                .map(|()| SsReply::Done),
            SsCommand::SetPartner { partner } => {
                self.link.set_partner(partner);
                Ok(SsReply::Done)
            }
            SsCommand::KeepConflict { file, to } => tokio::task::block_in_place(|| {
                self.files.keep_conflict(&file, &to)
            })
            .map(|stats| SsReply::Applied {
                stats,
                streamed: false,
            }),
            SsCommand::PullFiles { from, items } => {
                let results = crate::replica::pull_files(
                    &self.files,
                    &self.config.username,
                    &from,
                    self.key.as_ref(),
                    items,
                )
                .await;
                Ok(SsReply::Pulled { results })
            }
            SsCommand::ApplyDelete {
                file,
                version,
                epoch,
            } => tokio::task::block_in_place(|| self.files.apply_delete(&file, (epoch, version)))
                .map(|()| SsReply::Done),
            SsCommand::PurgeTombstone { file } => {
                tokio::task::block_in_place(|| self.files.purge_tombstone(&file))
                    .map(|()| SsReply::Done)
            }
            SsCommand::Inventory => return self.send_inventory(conn, id, None).await,
            SsCommand::InventoryOf { files } => {
                return self.send_inventory(conn, id, Some(files)).await
            }
            SsCommand::CreateFile { file, owner } => {
                // On the stream as soon as it is durable here.
                let mut offered = None;
                let created = validate_path(&file).and_then(|()| {
                    self.inline(|| {
                        self.files.create_announcing(&file, &owner, |meta| {
                            self.unconfirmed.changed(&file, meta.stats.stamp());
                            offered = Some(self.streamer.offer(&file, meta, &[], &[]));
                        })
                    })
                });
                match created {
                    Ok(meta) => {
                        let offered = offered.expect("a create announces its file");
                        Ok(self
                            .applied_on_stream(meta.stats, offered, change.take())
                            .await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsCommand::DeleteFile { file } => {
                match tokio::task::block_in_place(|| self.files.delete(&file)) {
                    Ok(stats) => {
                        self.unconfirmed.changed(&file, stats.stamp());
                        let offered = self.streamer.offer_delete(&file, &stats);
                        Ok(self.applied_on_stream(stats, offered, change.take()).await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsCommand::UndoFile { file } => {
                let undone = tokio::task::block_in_place(|| self.files.undo(&file));
                self.rewritten(&file, undone, change.take()).await
            }
            SsCommand::SetAcl { file, acl } => {
                match tokio::task::block_in_place(|| self.files.set_acl(&file, acl)) {
                    Ok((stats, committed)) => Ok(self
                        .changed(&file, stats, committed.as_ref(), &[], change.take())
                        .await),
                    Err(e) => Err(e),
                }
            }
            SsCommand::MoveFile { file, to } => {
                let renamed = tokio::task::block_in_place(|| self.files.rename(&file, &to));
                if let Ok((stats, _)) = &renamed {
                    self.unconfirmed.changed(&file, stats.stamp());
                    self.unconfirmed.changed(&to, stats.stamp());
                }
                match renamed {
                    // On the stream only whole: the old name's delete and
                    // the file under its new name; otherwise nm copies both.
                    Ok((stats, Some(committed))) => {
                        let deleted = self.streamer.offer_delete(&file, &stats);
                        let put = self.offer(&to, &committed);
                        drop(change.take());
                        let deleted = self.delivered(deleted).await;
                        let put = self.delivered(put).await;
                        Ok(SsReply::Applied {
                            stats,
                            streamed: deleted && put,
                        })
                    }
                    Ok((stats, None)) => {
                        let not_sent = crate::stream::Offered::NotSent;
                        Ok(self.applied_on_stream(stats, not_sent, change.take()).await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsCommand::CreateCheckpoint { file, tag } => {
                match tokio::task::block_in_place(|| self.files.checkpoint(&file, &tag)) {
                    Ok((stats, committed)) => {
                        // The checkpoint goes along: its content is the file's.
                        let made: Vec<(&str, &[u8])> = committed
                            .iter()
                            .map(|c| (tag.as_str(), c.content.as_slice()))
                            .collect();
                        Ok(self
                            .changed(&file, stats, committed.as_ref(), &made, change.take())
                            .await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsCommand::Revert { file, tag } => {
                let reverted = tokio::task::block_in_place(|| self.files.revert(&file, &tag));
                self.rewritten(&file, reverted, change.take()).await
            }
            SsCommand::Unconfirmed => {
                let report = self
                    .unconfirmed
                    .report(self.link.role().epoch(), self.link.role().is_serving());
                Ok(SsReply::Unconfirmed {
                    mark: report.mark,
                    level: report.level,
                    files: report.files,
                })
            }
            SsCommand::Levelled { level, mark } => {
                tracing::info!(event = "ss_levelled", standby = %level.standby, epoch = level.epoch, mark, "nm: a sync brought the standby level with this server");
                self.unconfirmed.levelled(level, mark);
                Ok(SsReply::Done)
            }
            SsCommand::Confirmed {
                file,
                epoch,
                version,
            } => {
                self.unconfirmed.confirmed(&file, (epoch, version));
                Ok(SsReply::Done)
            }
            SsCommand::ListCheckpoints { file } => self
                .files
                .checkpoints(&file)
                .map(|checkpoints| SsReply::Checkpoints { checkpoints }),
            SsCommand::Read { file, ticket } => {
                // EXEC's script, under a ticket nm issued itself.
                if let Err(e) = self.check_ticket(&ticket, "nm", &file, Op::Read) {
                    return Ok(Err(e));
                }
                let opened = tokio::task::block_in_place(|| self.files.open_for_read(&file, "nm"));
                let result = self.send_chunks(conn, id, &file, opened).await;
                if matches!(result, Ok(Ok(()))) {
                    self.link.file_accessed(&file, "nm");
                }
                return result;
            }
        };
        Self::answer(conn, id, reply).await
    }

    /// [`Server::changed`] for a change that gave `file` new content (UNDO,
    /// REVERT), if it was made.
    async fn rewritten(
        &self,
        file: &str,
        made: Result<crate::files::Committed, WireError>,
        change: Option<tokio::sync::RwLockReadGuard<'_, ()>>,
    ) -> Result<SsReply, WireError> {
        let committed = made?;
        let stats = committed.meta.stats.clone();
        Ok(self
            .changed(file, stats, Some(&committed), &[], change)
            .await)
    }

    /// The answer to a change nm asked for that left `file` at `stats`, as
    /// `committed` (`None`: not for the stream, too large): recorded as not
    /// yet confirmed by the standby, and offered to the stream with the
    /// checkpoints it `made`.
    async fn changed(
        &self,
        file: &str,
        stats: shared::proto::FileStats,
        committed: Option<&crate::files::Committed>,
        made: &[(&str, &[u8])],
        change: Option<tokio::sync::RwLockReadGuard<'_, ()>>,
    ) -> SsReply {
        self.unconfirmed.changed(file, stats.stamp());
        let offered = match committed {
            Some(c) => self.streamer.offer(file, &c.meta, &c.content, made),
            None => crate::stream::Offered::NotSent,
        };
        self.applied_on_stream(stats, offered, change).await
    }

    /// The inventory (of `only` these files, if given) and all tombstones in pages, then `End`.
    async fn send_inventory(
        &self,
        conn: &mut Connection,
        id: u64,
        only: Option<Vec<String>>,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        // A whole inventory waits for the start-up scan; meanwhile an empty
        // page every 200 ms tells nm the server is alive and working.
        if only.is_none() {
            loop {
                let files = self.files.clone();
                let waited = std::time::Duration::from_millis(200);
                let loaded =
                    tokio::task::spawn_blocking(move || files.wait_loaded_for(waited)).await;
                if loaded.unwrap_or(true) {
                    break;
                }
                let keepalive = SsReply::Inventory {
                    files: Vec::new(),
                    tombstones: Vec::new(),
                };
                conn.reply(id, Ok(keepalive)).await?;
            }
        }
        let listed = tokio::task::block_in_place(|| self.files.inventory(only.as_deref()));
        let (mut files, mut tombstones) = match listed {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        while !files.is_empty() || !tombstones.is_empty() {
            let page = shared::proto::INVENTORY_PAGE;
            let reply = SsReply::Inventory {
                files: files.drain(..files.len().min(page)).collect(),
                tombstones: tombstones.drain(..tombstones.len().min(page)).collect(),
            };
            conn.reply(id, Ok(reply)).await?;
        }
        conn.reply(id, Ok(SsReply::End)).await?;
        Ok(Ok(()))
    }
}

/// Whether a command changes files on disk (and so keeps the server's role
/// from changing until it is committed).
fn changes_files(command: &SsCommand) -> bool {
    matches!(
        command,
        SsCommand::CreateFile { .. }
            | SsCommand::DeleteFile { .. }
            | SsCommand::UndoFile { .. }
            | SsCommand::SetAcl { .. }
            | SsCommand::MoveFile { .. }
            | SsCommand::CreateCheckpoint { .. }
            | SsCommand::Revert { .. }
    )
}

/// A command's name in logs and metrics.
pub(super) fn operation_name(command: &SsCommand) -> &'static str {
    match command {
        SsCommand::CreateFile { .. } => "CREATE",
        SsCommand::DeleteFile { .. } => "DELETE",
        SsCommand::UndoFile { .. } => "UNDO",
        SsCommand::SetAcl { .. } => "SET_ACL",
        SsCommand::MoveFile { .. } => "MOVE",
        SsCommand::CreateCheckpoint { .. } => "CHECKPOINT",
        SsCommand::Revert { .. } => "REVERT",
        SsCommand::ListCheckpoints { .. } => "LISTCHECKPOINTS",
        SsCommand::Read { .. } => "READ",
        SsCommand::PullFiles { .. } => "PULL_FILES",
        SsCommand::ApplyDelete { .. } => "APPLY_DELETE",
        SsCommand::PurgeTombstone { .. } => "PURGE_TOMBSTONE",
        SsCommand::Inventory => "INVENTORY",
        SsCommand::InventoryOf { .. } => "INVENTORY_OF",
        SsCommand::Unconfirmed => "UNCONFIRMED",
        SsCommand::Levelled { .. } => "LEVELLED",
        SsCommand::Confirmed { .. } => "CONFIRMED",
        SsCommand::SetRole { .. } => "SET_ROLE",
        SsCommand::KeepConflict { .. } => "KEEP_CONFLICT",
        SsCommand::SetPartner { .. } => "SET_PARTNER",
    }
}
