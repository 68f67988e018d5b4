//! nm's listener and connection loops.
//!
//! Clients and storage servers both dial nm; the handshake's role decides
//! which loop serves the connection. Client commands live in
//! [`crate::commands`], storage-server registration and notices in
//! [`crate::storage_servers`].

use crate::journal::{Journal, Record};
use crate::state::Nm;
use crate::Config;
use color_eyre::eyre::{Context, Result};
use daemon::requests::{next_request, Handshake, Next};
use shared::connection::Connection;
use shared::names::validate_user;
use shared::proto::{NmReply, NmRequest, Role};
use shared::WireError;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Binds, restores the namespace from the journal and serves until
/// `shutdown` is cancelled (nm alone; [`crate::run`] picks this or a group).
pub async fn run_alone(config: Config, shutdown: CancellationToken) -> Result<()> {
    let (journal, ns) = Journal::open(&config.data_dir, config.fsync)
        .with_context(|| format!("opening data folder {}", config.data_dir.display()))?;
    let listener = bind(&config).await?;
    let address = listener.local_addr()?;
    let metrics = crate::metrics::NmMetrics::default();
    let nm = Nm::start(config, journal, ns, address, None, metrics)?;
    if let Some(addr) = &nm.config.metrics_addr {
        let scraped = nm.clone();
        let bound = daemon::metrics::serve(addr, nm.metrics.registry.clone(), move || {
            if let NmReply::Status { status } = scraped.status() {
                scraped.metrics.refresh(&status);
            }
        })
        .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(event = "nm_metrics", address = %bound, "metrics served");
    }
    announce(&nm.config, address)?;
    let max_connections = nm.config.limits.max_connections;
    daemon::connections::serve_connections(
        listener,
        max_connections,
        shutdown,
        "nm",
        |stream, peer, slot| nm.clone().serve_connection(stream, peer, slot),
    )
    .await;
    tracing::info!(event = "nm_shutdown", "name manager stopped");
    Ok(())
}

/// Binds `--listen`; connections this nm dials leave from the same address.
pub(crate) async fn bind(config: &Config) -> Result<TcpListener> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    shared::connection::set_source_ip(listener.local_addr()?.ip());
    Ok(listener)
}

/// Says nm is listening, in the log and in `--ready-file`.
pub(crate) fn announce(config: &Config, address: SocketAddr) -> Result<()> {
    tracing::info!(event = "nm_listening", address = %address, "name manager ready");
    if let Some(path) = &config.ready_file {
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, address.to_string())?;
        std::fs::rename(&temp, path)?;
    }
    Ok(())
}

impl Nm {
    pub(crate) async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Arc<shared::connection::SlotState>,
    ) {
        let handshake = Handshake {
            me: Role::NameManager,
            max_frame: self.config.max_frame,
            limits: &self.config.limits,
            key: self.cluster_key.as_ref(),
            daemon: "nm",
        };
        let Some((conn, hello)) = handshake.accept(stream, peer, slot).await else {
            return;
        };
        if let Err(error) = validate_user(&hello.name) {
            tracing::warn!(event = "nm_connection_refused", peer = %peer, error = %error);
            conn.refuse(error).await;
            return;
        }
        match hello.role {
            Role::Client => {
                if self.state().ns.add_user(&hello.name) {
                    let record = Record::User {
                        name: hello.name.clone(),
                    };
                    if let Err(error) = self.journal.append(vec![record]).await {
                        conn.refuse(error).await;
                        return;
                    }
                    tracing::info!(event = "nm_user_added", user = %hello.name, peer = %peer);
                }
                self.serve_client(conn, hello.name, peer).await;
            }
            Role::StorageServer => self.serve_storage_server(conn, hello.name, peer).await,
            Role::NameManager => {
                conn.refuse(WireError::unauthorized(
                    "nm does not accept other name managers",
                ))
                .await;
            }
        }
    }

    async fn serve_client(&self, mut conn: Connection, user: String, peer: SocketAddr) {
        loop {
            let next = tokio::time::timeout(
                self.config.limits.idle_timeout,
                next_request::<NmRequest>(&mut conn, peer, "nm"),
            );
            let (id, request) = match next.await {
                Ok(Next::Request(id, request)) => (id, request),
                Ok(Next::Refused) => continue,
                Ok(Next::Closed) | Err(_) => {
                    tracing::debug!(event = "nm_client_gone", peer = %peer, user = %user);
                    break;
                }
            };
            if !self.leads() {
                let _ = conn
                    .reply::<NmReply>(id, Err(WireError::not_leader(None)))
                    .await;
                break;
            }
            if let NmRequest::Watch {
                snapshot_every_ms,
                recent,
            } = request
            {
                self.serve_watch(conn, id, snapshot_every_ms, recent as usize)
                    .await;
                return;
            }
            // Not an operation of the user's: neither logged nor counted.
            if let NmRequest::AwaitChanges { changes } = &request {
                let result = self.await_changes(changes).await;
                // The client sends it with its next request: both answers
                // go in one write.
                if conn.reply_or_defer(id, result).await.is_err() {
                    break;
                }
                continue;
            }
            let started = Instant::now();
            let summary = summarize(&request);
            let result = self.handle_client(&user, request).await;
            // Logged once answered: the log line is not on the client's path.
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code.as_str(),
            };
            let micros = started.elapsed().as_micros() as u64;
            let sent = conn.reply(id, result).await;
            self.log_operation(&user, peer, &summary, outcome, micros);
            if sent.is_err() {
                break;
            }
        }
    }

    /// Streams events to a subscriber until it goes away.
    async fn serve_watch(
        &self,
        mut conn: Connection,
        id: u64,
        snapshot_every_ms: Option<u64>,
        recent: usize,
    ) {
        let (earlier, mut events) = self.events.subscribe(recent);
        if conn.reply(id, Ok(NmReply::Subscribed)).await.is_err() {
            return;
        }
        for event in earlier {
            if conn.reply(id, Ok(NmReply::Event { event })).await.is_err() {
                return;
            }
        }
        let period = snapshot_every_ms.map(|ms| std::time::Duration::from_millis(ms.max(50)));
        let mut snapshots =
            tokio::time::interval(period.unwrap_or(std::time::Duration::from_secs(3600)));
        snapshots.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dismissal = conn.dismissal();
        // A watcher never sends another request: it counts as waiting, so
        // watchers cannot hold every slot against new clients.
        conn.mark_waiting();
        loop {
            tokio::select! {
                _ = dismissal.cancelled() => return,
                _ = snapshots.tick(), if period.is_some() => {
                    let NmReply::Status { status } = self.status() else { continue };
                    let event = self.events.snapshot(status);
                    if conn.reply(id, Ok(NmReply::Event { event })).await.is_err() {
                        return;
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => {
                        if conn.reply(id, Ok(NmReply::Event { event })).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(event = "nm_watch_lagged", missed, "a subscriber fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                incoming = conn.recv::<serde::de::IgnoredAny>() => {
                    if !matches!(incoming, Ok(Some(_))) {
                        return;
                    }
                }
            }
        }
    }

    /// The JSON log event, and the one human line per operation on stdout.
    fn log_operation(
        &self,
        user: &str,
        peer: SocketAddr,
        summary: &str,
        outcome: &'static str,
        micros: u64,
    ) {
        let operation = summary.split_whitespace().next().unwrap_or("-");
        self.metrics
            .requests
            .observe(operation, outcome, micros as f64 / 1e6);
        tracing::info!(event = "nm_request", peer = %peer, user, operation = summary, outcome, micros);
        if !self.config.quiet {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{now} {user}@{peer} {summary} -> {outcome} ({:.1} ms)",
                micros as f64 / 1000.0
            );
        }
    }
}

fn access_flag(access: shared::proto::Access) -> &'static str {
    match access {
        shared::proto::Access::Read => "R",
        shared::proto::Access::Write => "W",
    }
}

/// A request as the log shows it: the command and its file.
fn summarize(request: &NmRequest) -> String {
    match request {
        NmRequest::View { all, long } => {
            let flags = match (all, long) {
                (true, true) => " -al",
                (true, false) => " -a",
                (false, true) => " -l",
                (false, false) => "",
            };
            format!("VIEW{flags}")
        }
        NmRequest::Info { file } => format!("INFO {file}"),
        NmRequest::List => "LIST".into(),
        NmRequest::Status => "STATUS".into(),
        NmRequest::Create { file } | NmRequest::CreateAndLocate { file } => {
            format!("CREATE {file}")
        }
        NmRequest::Delete { file } => format!("DELETE {file}"),
        NmRequest::Undo { file } => format!("UNDO {file}"),
        NmRequest::Locate { file, op } => format!("LOCATE {op:?} {file}"),
        NmRequest::AddAccess { file, user, access } => {
            format!("ADDACCESS -{} {file} {user}", access_flag(*access))
        }
        NmRequest::RemAccess { file, user } => format!("REMACCESS {file} {user}"),
        NmRequest::RequestAccess { file, access } => {
            format!("REQUESTACCESS {file} -{}", access_flag(*access))
        }
        NmRequest::ViewRequests => "VIEWREQUESTS".into(),
        NmRequest::Approve { id } => format!("APPROVE {id}"),
        NmRequest::Deny { id } => format!("DENY {id}"),
        NmRequest::CreateFolder { folder } => format!("CREATEFOLDER {folder}"),
        NmRequest::Move { file, folder } => format!("MOVE {file} {folder}"),
        NmRequest::ViewFolder { folder } => format!("VIEWFOLDER {folder}"),
        NmRequest::Checkpoint { file, tag } => format!("CHECKPOINT {file} {tag}"),
        NmRequest::Revert { file, tag } => format!("REVERT {file} {tag}"),
        NmRequest::ListCheckpoints { file } => format!("LISTCHECKPOINTS {file}"),
        NmRequest::Exec { file } => format!("EXEC {file}"),
        NmRequest::Watch { .. } => "WATCH".into(),
        NmRequest::AwaitChanges { changes } => format!("AWAIT_CHANGES {}", changes.len()),
    }
}
