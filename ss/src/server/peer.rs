//! The ss → ss channel: the partner copying files from this server (with a
//! read ticket from nm), or opening its replication stream to this one.

use super::{Server, Session};
use shared::connection::{Connection, ConnectionError};
use shared::proto::{Op, PeerRequest, SsReply};
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
        PeerRequest::ReadCheckpoint { .. } => "VIEWCHECKPOINT",
        PeerRequest::StreamOpen { .. } => "STREAM_OPEN",
    }
}
