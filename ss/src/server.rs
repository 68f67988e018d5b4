//! The storage server's listener and its per-connection handlers.
//!
//! Clients come with a ticket from nm for every READ, STREAM and WRITE; nm
//! comes to create, delete and undo files. A connection holds at most one open
//! WRITE; closing the connection abandons it and releases its lock.

use crate::files::{Files, WriteSession};
use crate::nm_link::{self, NmLink};
use crate::store::Store;
use crate::unconfirmed::Unconfirmed;
use crate::Config;
use color_eyre::eyre::{Context, Result};
use shared::connection::{Connection, ConnectionError, Incoming, CHUNK_SIZE};
use shared::names::{validate_path, validate_user};
use shared::proto::{Hello, Op, Role, SsReply, SsRequest, Ticket};
use shared::{now_ms, ErrorCode, WireError};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a synchronous change waits for the standby's acknowledgement on
/// the stream before it falls back to nm's confirmation (the stream hands
/// the change back well before: it deems a standby stuck after 2 s).
const SYNC_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// State shared by every connection of this server.
pub struct Server {
    config: Config,
    requests: daemon::metrics::RequestMetrics,
    key: Option<shared::auth::ClusterKey>,
    files: Arc<Files>,
    link: Arc<NmLink>,
    streamer: Arc<crate::stream::Streamer>,
    /// What the standby may lack, for a new nm's catch-up.
    unconfirmed: Arc<Unconfirmed>,
}

/// Runs the storage server until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let started = std::time::Instant::now();
    let store = Store::open(&config.storage, config.fsync)
        .with_context(|| format!("opening storage folder {}", config.storage.display()))?;
    tracing::info!(
        event = "ss_opened",
        ms = started.elapsed().as_millis() as u64,
        "storage folder opened (write-ahead log replayed)"
    );
    let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Files are served from disk while the scan loads them all.
    let files = Arc::new(Files::open(store, epoch.clone()));
    let loading = files.clone();
    let scan_delay = config.scan_delay;
    // A failed scan stops the server through the same token as a signal.
    let scan_failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let (failed, stop) = (scan_failed.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("ss-scan".into())
        .spawn(move || {
            if let Some(delay) = scan_delay {
                std::thread::sleep(delay);
            }
            let scan = std::time::Instant::now();
            match loading.load_all() {
                Ok(()) => tracing::info!(
                    event = "ss_loaded",
                    files = loading.len(),
                    ms = scan.elapsed().as_millis() as u64,
                    "every file loaded"
                ),
                Err(e) => {
                    tracing::error!(event = "ss_load_failed", error = %e, "the storage folder could not be scanned; stopping");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    stop.cancel();
                }
            }
        })
        .context("starting the scan")?;
    let inodes = files.clone();
    let inode_thread = std::thread::Builder::new()
        .name("ss-inodes".into())
        .spawn(move || inodes.keep_inodes_ready())
        .context("starting the thread that makes inodes ahead")?;
    files.set_max_file_size(config.max_file_size);
    let listener = TcpListener::bind((config.bind, config.client_port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind, config.client_port))?;
    let port = listener.local_addr()?.port();
    shared::connection::set_source_ip(config.bind);
    let key = shared::auth::load_for(config.cluster_key_file.as_deref(), config.insecure)
        .context("the cluster key")?;
    let client_addr = format!("{}:{port}", config.host);
    tracing::info!(
        event = "ss_listening",
        name = %config.username,
        address = %client_addr,
        files = files.len(),
        "storage server ready"
    );
    let link = NmLink::new(epoch, key.clone());
    // The link to nm and the stream outlive the drain: a request finishing
    // during it still tells nm of its change and streams it. They stop
    // once no request runs.
    let (link_stop, stream_stop) = (CancellationToken::new(), CancellationToken::new());
    let link_task = tokio::spawn(nm_link::run(
        config.clone(),
        client_addr,
        files.clone(),
        link.clone(),
        link_stop.clone(),
    ));
    let unconfirmed = Arc::new(Unconfirmed::default());
    let streamer =
        crate::stream::Streamer::new(link.clone(), unconfirmed.clone(), config.replication_stream);
    let stream_task = tokio::spawn(streamer.clone().run(
        config.username.clone(),
        key.clone(),
        stream_stop.clone(),
    ));
    let mut registry = prometheus_client::registry::Registry::default();
    let requests = daemon::metrics::RequestMetrics::register(&mut registry, "docs_ss");
    if let Some(addr) = &config.metrics_addr {
        let held = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        registry.register("docs_ss_files", "Files this server holds", held.clone());
        let counted = files.clone();
        let registry = Arc::new(std::sync::Mutex::new(registry));
        let bound = daemon::metrics::serve(addr, registry, move || {
            held.set(counted.len() as i64);
        })
        .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(event = "ss_metrics", address = %bound, "metrics served");
    }
    let server = Arc::new(Server {
        config,
        requests,
        key,
        files,
        link,
        streamer,
        unconfirmed,
    });
    let max_connections = server.config.limits.max_connections;
    shared::limits::serve_connections(
        listener,
        max_connections,
        shutdown,
        "ss",
        |stream, peer, slot| server.clone().serve_connection(stream, peer, slot),
    )
    .await;
    // No request runs any more. The stream stops first, handing back to nm
    // what its standby has not acknowledged; the link stops once it has
    // sent those.
    stream_stop.cancel();
    if tokio::time::timeout(BACKGROUND_STOP, stream_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "ss_background_task_slow",
            "the replication stream did not stop in time"
        );
    }
    server.link.handed_back_sent(BACKGROUND_STOP).await;
    link_stop.cancel();
    if tokio::time::timeout(BACKGROUND_STOP, link_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "ss_background_task_slow",
            "the link to nm did not stop in time"
        );
    }
    server.files.stop_making_inodes();
    let _ = tokio::task::spawn_blocking(move || inode_thread.join()).await;
    server
        .files
        .close()
        .context("checkpointing the write-ahead log at shutdown")?;
    if let Some(error) = scan_failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        color_eyre::eyre::bail!("loading the storage folder failed: {error}");
    }
    tracing::info!(
        event = "ss_shutdown",
        "storage server stopped: every change written out, the log checkpointed"
    );
    Ok(())
}

/// How long the background tasks get to stop once the connections are drained.
const BACKGROUND_STOP: std::time::Duration = std::time::Duration::from_secs(2);

/// Per-connection state.
struct Session {
    peer: SocketAddr,
    hello: Hello,
    write: Option<WriteSession>,
}

impl Server {
    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Arc<shared::connection::SlotState>,
    ) {
        let (mut conn, hello) = match Connection::accept(
            stream,
            Role::StorageServer,
            self.config.max_frame,
            self.config.limits.handshake_timeout,
            self.key.as_ref(),
        )
        .await
        {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(event = "ss_handshake_failed", peer = %peer, error = %e);
                return;
            }
        };
        let evictable = hello.role == Role::Client;
        conn.hold_slot(slot, self.config.limits.frame_timeout, evictable);
        let allowed = match hello.role {
            Role::Client | Role::StorageServer => validate_user(&hello.name),
            Role::NameManager => Ok(()),
        };
        if let Err(error) = allowed {
            tracing::warn!(event = "ss_connection_refused", peer = %peer, user = %hello.name, error = %error);
            conn.refuse(error).await;
            return;
        }
        tracing::debug!(event = "ss_connection", peer = %peer, user = %hello.name, role = ?hello.role);
        let mut session = Session {
            peer,
            hello,
            write: None,
        };
        loop {
            // A client in the middle of a WRITE is not closed to make room:
            // its lock and its edits would go with it.
            if session.hello.role == Role::Client {
                conn.set_evictable(session.write.is_none());
            }
            let next = tokio::time::timeout(
                self.config.limits.idle_timeout,
                conn.recv_request::<SsRequest>(),
            );
            let Ok(next) = next.await else {
                tracing::debug!(event = "ss_idle_closed", peer = %peer, "a connection idle past --idle-timeout was closed");
                break;
            };
            let request = match next {
                Ok(Some(Incoming::Message(request))) => request,
                Ok(Some(Incoming::Malformed { id, error })) => {
                    tracing::warn!(event = "ss_malformed_request", peer = %peer, error = %error);
                    let error = WireError::bad_request(format!("malformed request: {error}"));
                    if conn.reply::<SsReply>(id, Err(error)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(event = "ss_connection_error", peer = %peer, error = %e);
                    if let ConnectionError::Io(io) = &e {
                        if io.kind() == std::io::ErrorKind::InvalidData {
                            let error = WireError::new(ErrorCode::TooLarge, io.to_string());
                            let _ = conn.reply::<SsReply>(0, Err(error)).await;
                        }
                    }
                    break;
                }
            };
            if let SsRequest::StreamOpen { epoch } = request.body {
                let accepted = match session.hello.role {
                    Role::StorageServer => {
                        crate::stream::may_follow(&self.link, &session.hello.name, epoch)
                    }
                    _ => Err(WireError::unauthorized(
                        "only the partner storage server may open a replication stream",
                    )),
                };
                if let Err(error) = accepted {
                    tracing::warn!(event = "ss_stream_refused_open", peer = %peer, user = %session.hello.name, error = %error);
                    let _ = conn.reply::<SsReply>(request.id, Err(error)).await;
                    break;
                }
                if conn.reply(request.id, Ok(SsReply::Done)).await.is_err() {
                    break;
                }
                tracing::info!(event = "ss_stream_followed", peer = %peer, partner = %session.hello.name, epoch, "following the partner's replication stream");
                crate::stream::follow(
                    conn,
                    self.files.clone(),
                    self.link.clone(),
                    epoch,
                    session.hello.name.clone(),
                )
                .await;
                return;
            }
            let started = Instant::now();
            let epoch = self.link.epoch();
            let operation = operation_name(&request.body);
            let result = self
                .handle(&mut conn, &mut session, request.id, request.body)
                .await;
            let outcome = match &result {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => e.code.to_string(),
                Err(e) => format!("connection lost: {e}"),
            };
            self.requests
                .observe(operation, &outcome, started.elapsed().as_secs_f64());
            tracing::info!(
                event = "ss_request",
                peer = %session.peer,
                user = %session.hello.name,
                operation,
                outcome,
                epoch,
                micros = started.elapsed().as_micros() as u64,
            );
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    if conn.reply::<SsReply>(request.id, Err(error)).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if let Some(write) = session.write.take() {
            tracing::info!(event = "ss_write_abandoned", peer = %peer, file = %write.file(), "connection closed before ETIRW; lock released");
        }
    }

    /// Serves one request. The outer error is a broken connection; the inner
    /// one is the request's failure, which the caller sends back.
    async fn handle(
        &self,
        conn: &mut Connection,
        session: &mut Session,
        id: u64,
        request: SsRequest,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        let user = session.hello.name.clone();
        let from_nm = session.hello.role == Role::NameManager;
        let reads_only = matches!(
            request,
            SsRequest::GetFile { .. } | SsRequest::ReadCheckpoint { .. }
        );
        if session.hello.role == Role::StorageServer && !reads_only {
            return Ok(Err(WireError::unauthorized(
                "a storage server may only copy files from another",
            )));
        }
        // A change keeps the role from changing until it is committed.
        let is_change = changes_files(&request);
        let mut change = if is_change {
            Some(self.link.change_guard().await)
        } else {
            None
        };
        let gate = match &request {
            // Clients are served only while this server serves its pair; a
            // standby's copies go to its partner (a storage server), never
            // to a client, however genuine its ticket: it may be behind.
            SsRequest::Read { .. }
            | SsRequest::Stream { .. }
            | SsRequest::ReadCheckpoint { .. }
            | SsRequest::GetFile { .. }
                if session.hello.role == Role::Client =>
            {
                self.link.check_serving()
            }
            SsRequest::WriteBegin { .. } | SsRequest::WriteEdit { .. } => {
                self.link.check_writable()
            }
            _ if is_change => self.link.check_writable(),
            _ => Ok(()),
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
            SsRequest::SetRole {
                epoch,
                serving,
                writable,
            } if from_nm => {
                self.link.change_role(epoch, serving, writable).await;
                Ok(SsReply::Done)
            }
            SsRequest::SetPartner { partner } if from_nm => {
                self.link.set_partner(partner);
                Ok(SsReply::Done)
            }
            SsRequest::KeepConflict { file, to } if from_nm => tokio::task::block_in_place(|| {
                self.files.keep_conflict(&file, &to)
            })
            .map(|stats| SsReply::Applied {
                stats,
                streamed: false,
            }),
            SsRequest::GetFile { file, ticket } => {
                if let Err(e) = self.check_ticket(&ticket, &user, &file, Op::Read) {
                    return Ok(Err(e));
                }
                return crate::replica::send_file(
                    &self.files,
                    conn,
                    id,
                    &file,
                    self.config.chunk_delay,
                )
                .await;
            }
            SsRequest::PullFiles { from, items } if from_nm => {
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
            SsRequest::ApplyDelete {
                file,
                version,
                epoch,
            } if from_nm => {
                tokio::task::block_in_place(|| self.files.apply_delete(&file, (epoch, version)))
                    .map(|()| SsReply::Done)
            }
            SsRequest::PurgeTombstone { file } if from_nm => {
                tokio::task::block_in_place(|| self.files.purge_tombstone(&file))
                    .map(|()| SsReply::Done)
            }
            SsRequest::Inventory if from_nm => return self.send_inventory(conn, id, None).await,
            SsRequest::InventoryOf { files } if from_nm => {
                return self.send_inventory(conn, id, Some(files)).await
            }
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
                match tokio::task::block_in_place(|| files.begin_write(&file, sentence)) {
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
                    let file = write.file().to_owned();
                    let committed = tokio::task::block_in_place(|| write.commit());
                    match committed {
                        Ok(committed) => {
                            let stats = committed.meta.stats.clone();
                            tracing::info!(event = "ss_committed", file = %file, epoch = stats.epoch, version = stats.version, base = stats.base);
                            self.unconfirmed.changed(&file, stats.stamp());
                            // Offered before the role may change, so the
                            // change goes out in the epoch it was made in.
                            let offered = self.offer(&file, &committed);
                            // Committed: a role change may go ahead while nm confirms.
                            drop(change.take());
                            self.confirm(&file, &stats, offered)
                                .await
                                .map(|()| SsReply::Applied {
                                    stats,
                                    streamed: false,
                                })
                        }
                        Err(e) => Err(e),
                    }
                }
            },
            SsRequest::WriteAbort => {
                session.write = None;
                Ok(SsReply::Done)
            }
            SsRequest::CreateFile { file, owner } if from_nm => {
                match validate_path(&file)
                    .and_then(|()| tokio::task::block_in_place(|| self.files.create(&file, &owner)))
                {
                    Ok(meta) => {
                        self.unconfirmed.changed(&file, meta.stats.stamp());
                        let committed = crate::files::Committed {
                            meta,
                            content: Vec::new(),
                        };
                        let offered = self.offer(&file, &committed);
                        Ok(self
                            .applied_on_stream(committed.meta.stats, offered, change.take())
                            .await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsRequest::DeleteFile { file } if from_nm => {
                match tokio::task::block_in_place(|| self.files.delete(&file)) {
                    Ok(stats) => {
                        self.unconfirmed.changed(&file, stats.stamp());
                        let offered = self.streamer.offer_delete(&file, &stats);
                        Ok(self.applied_on_stream(stats, offered, change.take()).await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsRequest::UndoFile { file } if from_nm => {
                match tokio::task::block_in_place(|| self.files.undo(&file)) {
                    Ok(committed) => {
                        self.unconfirmed
                            .changed(&file, committed.meta.stats.stamp());
                        let offered = self.offer(&file, &committed);
                        Ok(self
                            .applied_on_stream(committed.meta.stats, offered, change.take())
                            .await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsRequest::SetAcl { file, acl } if from_nm => {
                match tokio::task::block_in_place(|| self.files.set_acl(&file, acl)) {
                    Ok((stats, committed)) => {
                        self.unconfirmed.changed(&file, stats.stamp());
                        let offered = match &committed {
                            Some(committed) => self.offer(&file, committed),
                            None => crate::stream::Offered::NotSent,
                        };
                        Ok(self.applied_on_stream(stats, offered, change.take()).await)
                    }
                    Err(e) => Err(e),
                }
            }
            SsRequest::MoveFile { file, to } if from_nm => {
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
            SsRequest::CreateCheckpoint { file, tag } if from_nm => {
                tokio::task::block_in_place(|| self.files.checkpoint(&file, &tag))
                    .map(|stats| self.applied_through_nm(&file, stats))
            }
            SsRequest::Revert { file, tag } if from_nm => {
                tokio::task::block_in_place(|| self.files.revert(&file, &tag))
                    .map(|stats| self.applied_through_nm(&file, stats))
            }
            SsRequest::Unconfirmed if from_nm => {
                let report = self
                    .unconfirmed
                    .report(self.link.epoch(), self.link.is_serving());
                Ok(SsReply::Unconfirmed {
                    mark: report.mark,
                    level: report.level,
                    files: report.files,
                })
            }
            SsRequest::Levelled { level, mark } if from_nm => {
                tracing::info!(event = "ss_levelled", standby = %level.standby, epoch = level.epoch, mark, "nm: a sync brought the standby level with this server");
                self.unconfirmed.levelled(level, mark);
                Ok(SsReply::Done)
            }
            SsRequest::Confirmed {
                file,
                epoch,
                version,
            } if from_nm => {
                self.unconfirmed.confirmed(&file, (epoch, version));
                Ok(SsReply::Done)
            }
            SsRequest::ListCheckpoints { file } if from_nm => self
                .files
                .checkpoints(&file)
                .map(|checkpoints| SsReply::Checkpoints { checkpoints }),
            SsRequest::CreateFile { .. }
            | SsRequest::DeleteFile { .. }
            | SsRequest::UndoFile { .. }
            | SsRequest::SetAcl { .. }
            | SsRequest::MoveFile { .. }
            | SsRequest::CreateCheckpoint { .. }
            | SsRequest::Revert { .. }
            | SsRequest::ListCheckpoints { .. }
            | SsRequest::PullFiles { .. }
            | SsRequest::ApplyDelete { .. }
            | SsRequest::PurgeTombstone { .. }
            | SsRequest::SetRole { .. }
            | SsRequest::SetPartner { .. }
            | SsRequest::KeepConflict { .. }
            | SsRequest::Inventory
            | SsRequest::InventoryOf { .. }
            | SsRequest::Unconfirmed
            | SsRequest::Levelled { .. }
            | SsRequest::Confirmed { .. } => Err(WireError::unauthorized(
                "only nm may do that; go through nm",
            )),
            SsRequest::StreamOpen { .. }
            | SsRequest::StreamApply { .. }
            | SsRequest::StreamDelete { .. } => Err(WireError::bad_request(
                "a replication stream must be opened first, by the partner",
            )),
        };
        match reply {
            Ok(reply) => conn.reply(id, Ok(reply)).await.map(Ok),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The answer to a change that goes to the standby through nm's jobs only.
    fn applied_through_nm(&self, file: &str, stats: shared::proto::FileStats) -> SsReply {
        self.unconfirmed.changed(file, stats.stamp());
        SsReply::Applied {
            stats,
            streamed: false,
        }
    }

    /// Sends a committed change on the replication stream, if it can go
    /// there (a file with checkpoints goes through nm, which copies them too).
    fn offer(&self, file: &str, committed: &crate::files::Committed) -> crate::stream::Offered {
        if !committed.meta.checkpoints.is_empty() {
            return crate::stream::Offered::NotSent;
        }
        self.streamer
            .offer(file, &committed.meta, &committed.content)
    }

    /// The answer to a change nm asked for, once it was `offered` to the
    /// stream under the role guard `change`: the role may change again, and
    /// the answer says whether the standby got it on the stream
    /// ([`Server::delivered`]).
    async fn applied_on_stream(
        &self,
        stats: shared::proto::FileStats,
        offered: crate::stream::Offered,
        change: Option<tokio::sync::RwLockReadGuard<'_, ()>>,
    ) -> SsReply {
        drop(change);
        let streamed = self.delivered(offered).await;
        SsReply::Applied { stats, streamed }
    }

    /// Whether a change nm itself asked for went to the standby on the
    /// stream (then nm queues no job for it); with synchronous replication,
    /// only once the standby has it durably.
    async fn delivered(&self, offered: crate::stream::Offered) -> bool {
        match offered {
            crate::stream::Offered::NotSent => false,
            crate::stream::Offered::Sent(_) if !self.link.sync_replication() => true,
            crate::stream::Offered::Sent(acked) => {
                matches!(
                    tokio::time::timeout(SYNC_STREAM_WAIT, acked).await,
                    Ok(Ok(true))
                )
            }
        }
    }

    /// Tells nm of a committed change and, with synchronous replication,
    /// waits until the standby has it: on the stream when it went there
    /// (falling back to nm's copy if the stream could not deliver it).
    async fn confirm(
        &self,
        file: &str,
        stats: &shared::proto::FileStats,
        offered: crate::stream::Offered,
    ) -> Result<(), WireError> {
        let crate::stream::Offered::Sent(acked) = offered else {
            return self.link.file_changed(file, stats, false).await;
        };
        if !self.link.sync_replication() {
            return self.link.file_changed(file, stats, true).await;
        }
        let (recorded, acked) = tokio::join!(
            self.link.file_changed(file, stats, true),
            tokio::time::timeout(SYNC_STREAM_WAIT, acked)
        );
        recorded?;
        match acked {
            Ok(Ok(true)) => Ok(()),
            // Made under a role this server no longer has: nobody will
            // copy it as a change of the serving server.
            _ if self.link.epoch() != stats.epoch || !self.link.is_serving() => {
                Err(WireError::unavailable(format!(
                    "the change was applied here in epoch {} but the backup has not confirmed it, and this server's role has changed since; it may not survive",
                    stats.epoch
                )))
            }
            _ => self.link.file_changed(file, stats, false).await,
        }
    }

    fn check_ticket(
        &self,
        ticket: &Ticket,
        user: &str,
        file: &str,
        op: Op,
    ) -> Result<(), WireError> {
        let key = self
            .link
            .ticket_key()
            .ok_or_else(|| WireError::unavailable("this server is not registered with nm yet"))?;
        key.verify(ticket, user, file, op, now_ms())?;
        if ticket.epoch < self.link.epoch() {
            return Err(WireError::unauthorized(
                "the ticket is from an older epoch of this pair; ask nm again",
            ));
        }
        Ok(())
    }

    /// READ and VIEWCHECKPOINT: an opened content in chunks, then `End`.
    async fn send_chunks(
        &self,
        conn: &mut Connection,
        id: u64,
        file: &str,
        opened: Result<crate::store::OpenContent, WireError>,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        let handle = match opened {
            Ok(handle) => handle,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) =
            crate::replica::send_chunks(conn, id, file, handle, CHUNK_SIZE, None).await?
        {
            return Ok(Err(e));
        }
        conn.reply(id, Ok(SsReply::End)).await?;
        Ok(Ok(()))
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

fn operation_name(request: &SsRequest) -> &'static str {
    match request {
        SsRequest::Read { .. } => "READ",
        SsRequest::Stream { .. } => "STREAM",
        SsRequest::WriteBegin { .. } => "WRITE",
        SsRequest::WriteEdit { .. } => "WRITE_EDIT",
        SsRequest::WriteCommit => "ETIRW",
        SsRequest::WriteAbort => "WRITE_ABORT",
        SsRequest::CreateFile { .. } => "CREATE",
        SsRequest::DeleteFile { .. } => "DELETE",
        SsRequest::UndoFile { .. } => "UNDO",
        SsRequest::ReadCheckpoint { .. } => "VIEWCHECKPOINT",
        SsRequest::SetAcl { .. } => "SET_ACL",
        SsRequest::MoveFile { .. } => "MOVE",
        SsRequest::CreateCheckpoint { .. } => "CHECKPOINT",
        SsRequest::Revert { .. } => "REVERT",
        SsRequest::ListCheckpoints { .. } => "LISTCHECKPOINTS",
        SsRequest::GetFile { .. } => "GET_FILE_CONTENT",
        SsRequest::PullFiles { .. } => "PULL_FILES",
        SsRequest::ApplyDelete { .. } => "APPLY_DELETE",
        SsRequest::PurgeTombstone { .. } => "PURGE_TOMBSTONE",
        SsRequest::Inventory => "INVENTORY",
        SsRequest::InventoryOf { .. } => "INVENTORY_OF",
        SsRequest::Unconfirmed => "UNCONFIRMED",
        SsRequest::Levelled { .. } => "LEVELLED",
        SsRequest::Confirmed { .. } => "CONFIRMED",
        SsRequest::SetRole { .. } => "SET_ROLE",
        SsRequest::KeepConflict { .. } => "KEEP_CONFLICT",
        SsRequest::SetPartner { .. } => "SET_PARTNER",
        SsRequest::StreamOpen { .. } => "STREAM_OPEN",
        SsRequest::StreamApply { .. } => "STREAM_APPLY",
        SsRequest::StreamDelete { .. } => "STREAM_DELETE",
    }
}

/// Whether a request changes files on disk (and so keeps the server's role
/// from changing until it is committed). WRITE's begin and edits are not
/// changes yet, but need a writable server as well.
fn changes_files(request: &SsRequest) -> bool {
    matches!(
        request,
        SsRequest::WriteCommit
            | SsRequest::CreateFile { .. }
            | SsRequest::DeleteFile { .. }
            | SsRequest::UndoFile { .. }
            | SsRequest::SetAcl { .. }
            | SsRequest::MoveFile { .. }
            | SsRequest::CreateCheckpoint { .. }
            | SsRequest::Revert { .. }
    )
}
