//! The client → ss channel: READ, STREAM, WRITE … ETIRW and VIEWCHECKPOINT,
//! each with a ticket from nm, served only while this server serves its pair.

use super::{Server, Session};
use shared::connection::{Connection, ConnectionError};
use shared::proto::{Op, SsReply, SsRequest};
use shared::WireError;
use std::io::Read;

impl Server {
    /// Serves one client request. The outer error is a broken connection;
    /// the inner one is the request's failure, which the caller sends back.
    pub(super) async fn handle_client(
        &self,
        conn: &mut Connection,
        session: &mut Session,
        id: u64,
        request: SsRequest,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        let user = session.hello.name.clone();
        // A commit keeps the role from changing until it is durable.
        let mut change = if matches!(
            request,
            SsRequest::WriteCommit | SsRequest::WriteBlock { .. }
        ) {
            Some(self.link.role().change_guard().await)
        } else {
            None
        };
        let gate = match &request {
            // A standby's copies go to its partner, never to a client,
            // however genuine its ticket: it may be behind.
            SsRequest::Read { .. }
            | SsRequest::Stream { .. }
            | SsRequest::ReadCheckpoint { .. } => self.link.role().check_serving(),
            SsRequest::WriteBegin { .. } | SsRequest::WriteEdit { .. } | SsRequest::WriteCommit => {
                self.link.role().check_writable()
            }
            SsRequest::WriteAbort => Ok(()),
            SsRequest::WriteBlock { .. } => match self.link.role().check_writable() {
                Err(error) => {
                    // Never hold up a role change while a reply is written.
                    drop(change.take());
                    return Self::answer(conn, id, Ok(SsReply::BlockNotBegun { error })).await;
                }
                Ok(()) => Ok(()),
            },
        };
        if let Err(e) = gate {
            if matches!(
                request,
                SsRequest::WriteEdit { .. } | SsRequest::WriteCommit
            ) {
                if let Some(write) = session.write.take() {
                    tracing::warn!(event = "ss_write_lost", file = %write.file(), error = %e, "an open WRITE was lost: this server stopped accepting changes");
                }
            }
            return Ok(Err(e));
        }
        let reply = match request {
            SsRequest::Read { file, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, &user, &file, Op::Read) {
                    return Ok(Err(e));
                }
                let opened = tokio::task::block_in_place(|| self.files.open_for_read(&file, &user));
                let result = self.send_chunks(conn, id, &file, opened).await;
                if matches!(result, Ok(Ok(()))) {
                    self.link.file_accessed(&file, &user);
                }
                return result;
            }
            SsRequest::ReadCheckpoint { file, tag, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, &user, &file, Op::Read) {
                    return Ok(Err(e));
                }
                let opened =
                    tokio::task::block_in_place(|| self.files.open_checkpoint(&file, &tag));
                return self.send_chunks(conn, id, &file, opened).await;
            }
            SsRequest::Stream { file, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, &user, &file, Op::Stream) {
                    return Ok(Err(e));
                }
                return self.send_words(conn, id, &file, &user).await;
            }
            SsRequest::WriteBegin {
                file,
                sentence,
                ticket,
            } => {
                if let Err(e) = self.check_ticket(&ticket, &user, &file, Op::Write) {
                    return Ok(Err(e));
                }
                if session.write.is_some() {
                    return Ok(Err(WireError::bad_request(
                        "a WRITE is already open on this connection; end it with ETIRW",
                    )));
                }
                let files = self.files.clone();
                match self.inline(|| files.begin_write(&file, sentence)) {
                    Ok(write) => {
                        let words = write.word_count();
                        session.write = Some(write);
                        Ok(SsReply::WriteOpen { words })
                    }
                    Err(e) => Err(e),
                }
            }
            SsRequest::WriteEdit {
                word_index,
                content,
            } => match session.write.as_mut() {
                None => Err(no_open_write()),
                Some(write) => write.edit(word_index, &content).map(|()| SsReply::Edited {
                    words: write.word_count(),
                }),
            },
            SsRequest::WriteCommit => match session.write.take() {
                None => Err(no_open_write()),
                Some(write) => {
                    self.commit(write, &mut change)
                        .await
                        .map(|stats| SsReply::Applied {
                            stats,
                            streamed: false,
                        })
                }
            },
            SsRequest::WriteBlock {
                file,
                sentence,
                ticket,
                edits,
            } => {
                let begun = self
                    .check_ticket(&ticket, &user, &file, Op::Write)
                    .and_then(|()| {
                        if session.write.is_some() {
                            return Err(WireError::bad_request(
                                "a WRITE is already open on this connection; end it with ETIRW",
                            ));
                        }
                        let files = self.files.clone();
                        self.inline(|| files.begin_write(&file, sentence))
                    });
                match begun {
                    Err(error) => Ok(SsReply::BlockNotBegun { error }),
                    Ok(mut write) => {
                        let answers = edits
                            .into_iter()
                            .map(|edit| {
                                write
                                    .edit(edit.word_index, &edit.content)
                                    .map(|()| write.word_count())
                            })
                            .collect();
                        self.commit(write, &mut change)
                            .await
                            .map(|stats| SsReply::BlockWritten { stats, answers })
                    }
                }
            }
            SsRequest::WriteAbort => {
                session.write = None;
                Ok(SsReply::Done)
            }
        };
        // A block that never began still holds the guard: a client that
        // does not read its replies must not hold up a role change.
        drop(change);
        Self::answer(conn, id, reply).await
    }

    /// ETIRW: the open WRITE committed, announced on the stream and to nm
    /// as soon as it is durable here (while this server still writes its
    /// files), before the role may change (`change`, held until then), so
    /// it goes out in the epoch it was made in; then confirmed.
    async fn commit(
        &self,
        write: crate::files::WriteSession,
        change: &mut Option<tokio::sync::RwLockReadGuard<'_, ()>>,
    ) -> Result<shared::proto::FileStats, WireError> {
        let file = write.file().to_owned();
        let mut announced = None;
        let committed = self.inline(|| {
            write.commit_announcing(|committed| {
                announced = Some(self.announce(&file, committed));
                if let Some(delay) = self.config.commit_apply_delay {
                    std::thread::sleep(delay);
                }
            })
        })?;
        let stats = committed.meta.stats.clone();
        tracing::info!(event = "ss_committed", file = %file, epoch = stats.epoch, version = stats.version, base = stats.base);
        let announced = announced.expect("a commit announces its change");
        // Committed: a role change may go ahead while nm confirms.
        drop(change.take());
        self.confirm(&file, &stats, announced).await?;
        Ok(stats)
    }

    /// STREAM: the words one by one, `--stream-delay` apart, then `End`.
    async fn send_words(
        &self,
        conn: &mut Connection,
        id: u64,
        file: &str,
        user: &str,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        let text = tokio::task::block_in_place(|| {
            let mut handle = self.files.open_for_read(file, user)?;
            let mut text = String::new();
            handle
                .read_to_string(&mut text)
                .map_err(|e| WireError::internal(format!("reading {file:?}: {e}")))?;
            Ok::<_, WireError>(text)
        });
        let text = match text {
            Ok(text) => text,
            Err(e) => return Ok(Err(e)),
        };
        self.link.file_accessed(file, user);
        for (i, word) in text.split_whitespace().enumerate() {
            if i > 0 {
                tokio::time::sleep(self.config.stream_delay).await;
            }
            conn.reply(
                id,
                Ok(SsReply::Word {
                    word: word.to_owned(),
                }),
            )
            .await?;
        }
        conn.reply(id, Ok(SsReply::End)).await?;
        Ok(Ok(()))
    }
}

fn no_open_write() -> WireError {
    WireError::bad_request("no WRITE is open on this connection")
}

/// A request's name in logs and metrics.
pub(super) fn operation_name(request: &SsRequest) -> &'static str {
    match request {
        SsRequest::Read { .. } => "READ",
        SsRequest::Stream { .. } => "STREAM",
        SsRequest::WriteBegin { .. } => "WRITE",
        SsRequest::WriteEdit { .. } => "WRITE_EDIT",
        SsRequest::WriteCommit => "ETIRW",
        SsRequest::WriteAbort => "WRITE_ABORT",
        SsRequest::WriteBlock { .. } => "WRITE_BLOCK",
        SsRequest::ReadCheckpoint { .. } => "VIEWCHECKPOINT",
    }
}
