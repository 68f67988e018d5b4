//! The ss → ss channel: the partner copying files from this server (with a
//! read ticket from nm), or opening its replication stream to this one.

use super::{Server, Session};
use shared::connection::{Connection, ConnectionError, DEFAULT_MAX_FRAME};
use shared::proto::{FileCopied, Op, PeerRequest, PullItem, Reply, SsReply};
use shared::WireError;

impl Server {
    /// Serves one of the partner's requests. The outer error is a broken
    /// connection; the inner one is the request's failure.
    pub(super) async fn handle_peer(
        &self,
        conn: &mut Connection,
        session: &Session,
        id: u64,
        request: PeerRequest,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        let user = &session.hello.name;
        match request {
            PeerRequest::GetFile { file, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, user, &file, Op::Read) {
                    return Ok(Err(e));
                }
                return crate::transfer::send_file(
                    &self.files,
                    conn,
                    id,
                    &file,
                    self.config.chunk_delay,
                )
                .await;
            }
            PeerRequest::GetFiles { items } => return self.send_files(conn, id, user, items).await,
            PeerRequest::ReadCheckpoint { file, tag, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, user, &file, Op::Read) {
                    return Ok(Err(e));
                }
                let opened =
                    tokio::task::block_in_place(|| self.files.open_checkpoint(&file, &tag));
                self.send_chunks(conn, id, &file, opened).await
            }
            // The connection loop hands a StreamOpen to `follow_stream`.
            PeerRequest::StreamOpen { .. } => Ok(Err(WireError::internal(
                "StreamOpen is served by the connection loop",
            ))),
        }
    }

    /// Serves `GetFiles`: each file whole if it fits, several to a `Files`
    /// reply (each frame at most half the connection's limit), in the order
    /// asked; then `End`. A file that cannot be read is answered with its
    /// error and the others go on.
    async fn send_files(
        &self,
        conn: &mut Connection,
        id: u64,
        user: &str,
        items: Vec<PullItem>,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        // A reply frame holds at most half of the smaller of this server's
        // frame limit and the default one (what the partner accepts): a
        // file goes whole if it fits in a quarter, and a frame is closed
        // before a file that would take it past half.
        let budget = conn.max_frame().min(DEFAULT_MAX_FRAME) / 4;
        let mut items = items.into_iter();
        // A file read that did not fit in the frame before: the next one's first.
        let mut carried: Option<(FileCopied, usize)> = None;
        loop {
            let files = tokio::task::block_in_place(|| {
                let (mut files, mut bytes) = (Vec::new(), 0);
                loop {
                    let (copied, size) = match carried.take() {
                        Some(read) => read,
                        None => {
                            let Some(PullItem { file, ticket }) = items.next() else {
                                break;
                            };
                            let copy =
                                self.check_ticket(&ticket, user, &file, Op::Read)
                                    .and_then(|()| {
                                        crate::transfer::read_whole(&self.files, &file, budget)
                                    });
                            let size = file.len()
                                + match &copy {
                                    Ok((_, size)) => *size,
                                    Err(e) => e.message.len(),
                                };
                            let copy = copy.map(|(copy, _)| copy);
                            (FileCopied { file, copy }, size)
                        }
                    };
                    if !files.is_empty() && bytes + size > 2 * budget {
                        carried = Some((copied, size));
                        break;
                    }
                    bytes += size;
                    files.push(copied);
                }
                files
            });
            if files.is_empty() {
                break;
            }
            conn.feed(&Reply {
                id,
                result: Ok::<_, WireError>(SsReply::Files { files }),
            })
            .await?;
        }
        conn.reply(id, Ok(SsReply::End)).await?;
        Ok(Ok(()))
    }

    /// `StreamOpen`: if the partner nm named opens it in this server's
    /// epoch while this server does not serve, the connection becomes its
    /// replication stream (`crate::stream::follow`) until either side ends it.
    pub(super) async fn follow_stream(
        &self,
        mut conn: Connection,
        session: &Session,
        id: u64,
        epoch: u64,
    ) {
        let (peer, partner) = (session.peer, &session.hello.name);
        if let Err(error) = crate::stream::may_follow(&self.link, partner, epoch) {
            tracing::warn!(event = "ss_stream_refused_open", peer = %peer, user = %partner, error = %error);
            let _ = conn.reply::<SsReply>(id, Err(error)).await;
            return;
        }
        if conn.reply(id, Ok(SsReply::Done)).await.is_err() {
            return;
        }
        tracing::info!(event = "ss_stream_followed", peer = %peer, partner = %partner, epoch, "following the partner's replication stream");
        crate::stream::follow(
            conn,
            self.files.clone(),
            self.link.clone(),
            epoch,
            partner.clone(),
            self.config.stream_apply_delay,
        )
        .await;
    }
}

/// A request's name in logs and metrics.
pub(super) fn operation_name(request: &PeerRequest) -> &'static str {
    match request {
        PeerRequest::GetFile { .. } => "GET_FILE_CONTENT",
        PeerRequest::GetFiles { .. } => "GET_FILES",
        PeerRequest::ReadCheckpoint { .. } => "VIEWCHECKPOINT",
        PeerRequest::StreamOpen { .. } => "STREAM_OPEN",
    }
}
