//! The storage server's listener and its connections.
//!
//! A connection's handshake fixes its channel (see `shared::proto`), and
//! each channel has its handler:
//!
//! - [`client`]: clients, with a ticket from nm for every READ, STREAM and
//!   WRITE. A connection holds at most one open WRITE; closing the
//!   connection abandons it and releases its lock.
//! - [`commands`]: nm, which creates, deletes, undoes, moves files, runs
//!   replication and sets this server's role.
//! - [`peer`]: the partner storage server, copying files from this one or
//!   opening its replication stream to it (`crate::stream`).
//!
//! This module runs the listener and the connection loop they share (idle
//! and malformed-frame handling, metrics, the request log).

mod client;
mod commands;
mod peer;

use crate::files::{Files, WriteSession};
use crate::nm_link::{self, NmLink};
use crate::store::Store;
use crate::unconfirmed::Unconfirmed;
use crate::Config;
use color_eyre::eyre::{Context, Result};
use daemon::requests::{next_request, Handshake, Next};
use shared::connection::{Connection, ConnectionError, CHUNK_SIZE};
use shared::names::validate_user;
use shared::proto::{Hello, Op, PeerRequest, Role, SsCommand, SsReply, SsRequest, Ticket};
use shared::{now_ms, WireError};
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
    /// CREATEs and WRITEs' starts and commits running now: only one that
    /// finds none running runs on its worker thread ([`Server::inline`]).
    inline_commits: std::sync::atomic::AtomicUsize,
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
    let role = Arc::new(crate::role::PairRole::default());
    // Files are served from disk while the scan loads them all.
    let files = Arc::new(Files::open(store, role.clone()));
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
    let link = NmLink::new(role, key.clone(), config.notice_delay);
    // The link to nm and the stream outlive the drain: a request finishing
    // during it still tells nm of its change and streams it. They stop
    // once no request runs.
    let (link_stop, stream_stop) = (CancellationToken::new(), CancellationToken::new());
    let link_task = spawn_link(nm_link::run(
        config.clone(),
        client_addr,
        files.clone(),
        link.clone(),
        link_stop.clone(),
    ))
    .context("starting the link to nm")?;
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
        let unsettled = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        registry.register(
            "docs_ss_nm_notices_unsettled",
            "Change notices nm had not answered or settled at its last heartbeat answer",
            unsettled.clone(),
        );
        let counted = files.clone();
        let watched = link.clone();
        let registry = Arc::new(std::sync::Mutex::new(registry));
        let bound = daemon::metrics::serve(addr, registry, move || {
            held.set(counted.len() as i64);
            unsettled.set(watched.unsettled_notices() as i64);
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
        inline_commits: Default::default(),
    });
    let max_connections = server.config.limits.max_connections;
    daemon::connections::serve_connections(
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

/// Runs the link to nm (registration, heartbeats, notices) on a thread
/// and runtime of its own: a worker busy with a commit ([`Server::inline`])
/// never delays a heartbeat. The heartbeats then show that this thread is
/// alive, not that requests are served: a runtime wedged some other way
/// keeps its lease (as a server whose disk hangs under `block_in_place`
/// did before). The receiver hears when it has stopped.
fn spawn_link(
    link: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stopped, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ss-nm-link".into())
        .spawn(move || {
            runtime.block_on(link);
            let _ = stopped.send(());
        })?;
    Ok(finished)
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
        let handshake = Handshake {
            me: Role::StorageServer,
            max_frame: self.config.max_frame,
            limits: &self.config.limits,
            key: self.key.as_ref(),
            daemon: "ss",
        };
        let Some((mut conn, hello)) = handshake.accept(stream, peer, slot).await else {
            return;
        };
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
            // The dialler's role fixes the channel, so a request meant for
            // another channel does not even decode.
            let next = tokio::time::timeout(self.config.limits.idle_timeout, async {
                match session.hello.role {
                    Role::Client => next_request(&mut conn, peer, "ss")
                        .await
                        .map(ChannelRequest::Client),
                    Role::NameManager => next_request(&mut conn, peer, "ss")
                        .await
                        .map(ChannelRequest::Nm),
                    Role::StorageServer => next_request(&mut conn, peer, "ss")
                        .await
                        .map(ChannelRequest::Peer),
                }
            });
            let Ok(next) = next.await else {
                tracing::debug!(event = "ss_idle_closed", peer = %peer, "a connection idle past --idle-timeout was closed");
                break;
            };
            let (id, body) = match next {
                Next::Request(id, body) => (id, body),
                Next::Refused => continue,
                Next::Closed => break,
            };
            if let ChannelRequest::Peer(PeerRequest::StreamOpen { epoch }) = body {
                // The connection becomes the partner's replication stream.
                self.follow_stream(conn, &session, id, epoch).await;
                return;
            }
            let started = Instant::now();
            let epoch = self.link.role().epoch();
            let operation = body.operation();
            let result = match body {
                ChannelRequest::Client(request) => {
                    self.handle_client(&mut conn, &mut session, id, request)
                        .await
                }
                ChannelRequest::Nm(command) => self.handle_command(&mut conn, id, command).await,
                ChannelRequest::Peer(request) => {
                    self.handle_peer(&mut conn, &session, id, request).await
                }
            };
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
                    if conn.reply::<SsReply>(id, Err(error)).await.is_err() {
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

    /// Sends a committed change on the replication stream, if it can go
    /// there (the standby holds the file's checkpoints, or refuses it and
    /// nm copies them too).
    fn offer(&self, file: &str, committed: &crate::files::Committed) -> crate::stream::Offered {
        self.streamer
            .offer(file, &committed.meta, &committed.content, &[])
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

    /// Announces a change as soon as it is durable here: on the stream,
    /// and to nm (whose answer [`Server::confirm`] awaits).
    fn announce(
        &self,
        file: &str,
        committed: &crate::files::Committed,
    ) -> (crate::stream::Offered, crate::nm_link::ChangeNotice) {
        self.unconfirmed.changed(file, committed.meta.stats.stamp());
        let offered = self.offer(file, committed);
        let streamed = matches!(offered, crate::stream::Offered::Sent(_));
        let notice = self
            .link
            .notify_changed(file, &committed.meta.stats, streamed);
        (offered, notice)
    }

    /// Waits until the change is where the client's answer may say it is.
    /// A change on the stream needs nothing of nm: in asynchronous mode it is
    /// answered at once, in synchronous mode once the standby acknowledged
    /// it (or nm's copy, if the stream could not deliver it, is confirmed).
    /// nm hears of it by the notice, unawaited; a client's next request to
    /// nm waits for that (`NmRequest::AwaitChanges`). A change that did not
    /// go on the stream waits for nm's answer, which in synchronous mode
    /// says whether the standby has it.
    async fn confirm(
        &self,
        file: &str,
        stats: &shared::proto::FileStats,
        (offered, notice): (crate::stream::Offered, crate::nm_link::ChangeNotice),
    ) -> Result<(), WireError> {
        let crate::stream::Offered::Sent(acked) = offered else {
            return notice.answered().await;
        };
        if self.link.notices_crowded() {
            notice.answered().await?;
        } else {
            drop(notice);
        }
        if !self.link.sync_replication() {
            return Ok(());
        }
        let acked = tokio::time::timeout(SYNC_STREAM_WAIT, acked).await;
        match acked {
            Ok(Ok(true)) => Ok(()),
            // Made under a role this server no longer has: nobody will
            // copy it as a change of the serving server.
            _ if self.link.role().epoch() != stats.epoch || !self.link.role().is_serving() => {
                Err(WireError::unavailable(format!(
                    "the change was applied here in epoch {} but the backup has not confirmed it, and this server's role has changed since; it may not survive",
                    stats.epoch
                )))
            }
            _ => self.link.file_changed(file, stats, false).await,
        }
    }

    /// Runs a CREATE, a WRITE's start or its commit on the request's own
    /// worker thread when no other commit runs on one. They are short (a
    /// log write, a shared fdatasync, a rename), and handing the worker's
    /// core to another thread around them (`block_in_place`) cost a thread
    /// wake-up before and moving the task back after, on the answer's
    /// path: 12 futex calls per CREATE+WRITE pair on the primary instead
    /// of 3. Only one at a time: every other commit meanwhile hands the
    /// core over as before, so the other workers go on reading requests,
    /// concurrent writers still share an fdatasync (group commit), and a
    /// commit that runs long (a checkpoint's `syncfs` every 64 MiB of log,
    /// a document over 4 MiB) holds up one worker, never the runtime.
    /// Longer work (syncs, inventories, copies, deletes) always hands the
    /// core over, and the link to nm runs on a thread of its own
    /// ([`spawn_link`]). With `--commit-apply-delay` (tests that kill a
    /// server inside a commit) the core is always handed over.
    fn inline<T>(&self, work: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        struct Running<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _running = Running(&self.inline_commits);
        let alone = self.inline_commits.fetch_add(1, Ordering::Relaxed) == 0;
        if alone && self.config.commit_apply_delay.is_none() {
            work()
        } else {
            tokio::task::block_in_place(work)
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
        if ticket.epoch < self.link.role().epoch() {
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
            crate::transfer::send_chunks(conn, id, file, handle, CHUNK_SIZE, None).await?
        {
            return Ok(Err(e));
        }
        conn.reply(id, Ok(SsReply::End)).await?;
        Ok(Ok(()))
    }

    /// Sends a request's one reply (its failure goes back through the
    /// connection loop).
    async fn answer(
        conn: &mut Connection,
        id: u64,
        reply: Result<SsReply, WireError>,
    ) -> Result<Result<(), WireError>, ConnectionError> {
        match reply {
            Ok(reply) => conn.reply(id, Ok(reply)).await.map(Ok),
            Err(e) => Ok(Err(e)),
        }
    }
}

/// One request, of the channel the connection's handshake fixed.
enum ChannelRequest {
    Client(SsRequest),
    Nm(SsCommand),
    Peer(PeerRequest),
}

impl ChannelRequest {
    /// Its name in logs and metrics.
    fn operation(&self) -> &'static str {
        match self {
            ChannelRequest::Client(request) => client::operation_name(request),
            ChannelRequest::Nm(command) => commands::operation_name(command),
            ChannelRequest::Peer(request) => peer::operation_name(request),
        }
    }
}
