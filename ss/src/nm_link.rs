//! The storage server's control connection to nm.
//!
//! The server registers with its name, client address and inventory, then
//! sends heartbeats and change notices. When nm is not up yet, or goes away,
//! it reconnects with backoff and registers again; the fresh inventory
//! supersedes any notice that could not be delivered meanwhile.

use crate::files::Files;
use crate::role::{PairRole, Part};
use crate::Config;
use shared::connection::{ConnectionError, RpcClient};
use shared::proto::{
    ControlRequest, FileStats, NmReply, Partner, Reply, Request, Role, StreamPosition,
    StreamedChange,
};
use shared::ticket::TicketKey;
use shared::{now_ms, WireError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long a change waits for nm to acknowledge its notice.
const NOTICE_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any call to nm may take before the link is considered broken.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long heartbeats to the only nm may go unanswered before the link is
/// dropped. Long: a paused nm (a stall, a long GC-like pause of the machine)
/// that resumes would see the closed connection and promote the partner,
/// while reconnecting to a hung nm gains nothing; the write lease has
/// stopped this server's writes long before anyway.
const SOLE_NM_PATIENCE: Duration = Duration::from_secs(10);
/// A change notice nm has not answered is sent again after this long (nm
/// takes a notice twice without harm): a change nm never heard of would
/// never reach the backup.
const NOTICE_RESEND: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = shared::leader::NM_RECONNECT_BACKOFF_MAX;
const BACKOFF_MAX_AMONG_SEVERAL: Duration = Duration::from_millis(200);
const NOTICE_QUEUE: usize = 10_000;

struct Notice {
    request: ControlRequest,
    /// Gets nm's answer: in synchronous mode, a WRITE_COMPLETE is answered
    /// once the backup has the change.
    delivered: Option<oneshot::Sender<Result<(), WireError>>>,
}

/// How long an ETIRW waits for nm to confirm the backup has it (synchronous mode).
const SYNC_ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// What the rest of the server sees of the link: the ticket key, the
/// partner, and the replication mode. The part nm gives this server is in
/// [`PairRole`], which the link sets and renews the lease of.
pub struct NmLink {
    ticket_key: RwLock<Option<TicketKey>>,
    cluster_key: Option<shared::auth::ClusterKey>,
    connected: AtomicBool,
    role: Arc<PairRole>,
    sync_replication: AtomicBool,
    notices: mpsc::Sender<Notice>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Notice>>>,
    /// Changes the replication stream handed back, by file (the latest
    /// each): sent to nm by the link itself, never dropped like a notice
    /// in a full queue, or nm would never copy them.
    /// Changes the stream handed back, the newest per file (and whether
    /// it is the file's DELETE), to be sent to nm as notices.
    handed_back: std::sync::Mutex<HashMap<String, (FileStats, bool)>>,
    handed_back_ready: tokio::sync::Notify,
    /// The other server of the pair, as nm last named it.
    partner: std::sync::Mutex<Option<Partner>>,
    /// Where this server streams its changes: its partner, while it serves.
    stream_target: watch::Sender<Option<StreamTarget>>,
    /// Holds each change notice this long before it is queued (tests only).
    notice_delay: Option<Duration>,
    /// Change notices nm had neither answered nor settled when it last
    /// answered a heartbeat (a metric: one that keeps growing means nm is
    /// not hearing of changes).
    unsettled: std::sync::atomic::AtomicUsize,
}

/// The replication stream's destination, and the epoch its changes carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub partner: Partner,
    pub epoch: u64,
}

impl NmLink {
    /// With a cluster key, tickets are checked with the key derived from it.
    pub fn new(
        role: Arc<PairRole>,
        key: Option<shared::auth::ClusterKey>,
        notice_delay: Option<Duration>,
    ) -> Arc<Self> {
        let (notices, receiver) = mpsc::channel(NOTICE_QUEUE);
        Arc::new(NmLink {
            ticket_key: RwLock::new(key.as_ref().map(|k| k.ticket_key())),
            cluster_key: key,
            connected: AtomicBool::new(false),
            role,
            sync_replication: AtomicBool::new(false),
            notices,
            receiver: std::sync::Mutex::new(Some(receiver)),
            handed_back: std::sync::Mutex::new(HashMap::new()),
            handed_back_ready: tokio::sync::Notify::new(),
            partner: std::sync::Mutex::new(None),
            stream_target: watch::Sender::new(None),
            notice_delay,
            unsettled: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// See the `unsettled` field.
    pub fn unsettled_notices(&self) -> usize {
        self.unsettled.load(Ordering::Relaxed)
    }

    /// Whether change notices are piling up unsent (nm slow or away): a
    /// change then waits for its notice's answer, so the queue stays short
    /// of full, where notices would be dropped.
    pub fn notices_crowded(&self) -> bool {
        self.notices.capacity() < NOTICE_QUEUE / 2
    }

    /// The server nm last named as this one's partner.
    pub fn partner(&self) -> Option<Partner> {
        self.partner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_partner(&self, partner: Option<Partner>) {
        let changed = {
            let mut known = self.partner.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *known != partner;
            *known = partner;
            changed
        };
        if changed {
            self.update_stream_target();
        }
    }

    /// Follows where the replication stream should go (see [`crate::stream`]).
    pub fn stream_target(&self) -> watch::Receiver<Option<StreamTarget>> {
        self.stream_target.subscribe()
    }

    fn update_stream_target(&self) {
        let target = match self.partner() {
            Some(partner) if self.role.is_serving() => Some(StreamTarget {
                partner,
                epoch: self.role.epoch(),
            }),
            _ => None,
        };
        self.stream_target.send_if_modified(|current| {
            let changed = *current != target;
            *current = target;
            changed
        });
    }

    /// This server's part in its pair.
    pub fn role(&self) -> &Arc<PairRole> {
        &self.role
    }

    /// Whether an ETIRW waits for the backup (`--replication sync` on nm).
    pub fn sync_replication(&self) -> bool {
        self.sync_replication.load(Ordering::Relaxed)
    }

    /// Takes nm's `SetRole` once no change is in flight, and follows it
    /// with the replication stream.
    pub async fn change_role(&self, part: Part) -> Result<(), WireError> {
        self.role.change(part, || self.update_stream_target()).await
    }

    /// Takes the part a registration's answer gave, unless a newer
    /// `SetRole` came since `sets_before`, then the lease (see
    /// [`PairRole::set_registered`]).
    async fn set_registered_role(
        &self,
        part: Part,
        sets_before: u64,
        lease_until: Instant,
    ) -> Result<bool, WireError> {
        self.role
            .set_registered(part, sets_before, Some(lease_until), || {
                self.update_stream_target()
            })
            .await
    }

    /// The key that verifies client tickets, once registered.
    pub fn ticket_key(&self) -> Option<TicketKey> {
        self.ticket_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tells nm a file changed and waits (briefly) until nm has it, so that
    /// INFO and VIEW right after an ETIRW show the new version.
    /// In synchronous mode the result says whether the backup has the
    /// change; otherwise it is always `Ok`.
    ///
    /// With `streamed`, the change went to the backup on the replication
    /// stream: nm only records it, and the result is always `Ok` (the
    /// stream's acknowledgement is what a synchronous change waits for).
    pub async fn file_changed(
        &self,
        file: &str,
        stats: &FileStats,
        streamed: bool,
    ) -> Result<(), WireError> {
        self.notify_changed(file, stats, streamed).answered().await
    }

    /// [`NmLink::file_changed`] in two halves: the notice is queued now (it
    /// may go while the change is still being put in place here: nm's
    /// copies read the file under its lock), and its answer awaited later.
    ///
    /// A streamed change's notice is quiet (see `ControlRequest::FileChanged`)
    /// unless notices are crowded, when writers wait for nm's answers.
    pub fn notify_changed(&self, file: &str, stats: &FileStats, streamed: bool) -> ChangeNotice {
        let quiet = streamed && !self.notices_crowded();
        let request = ControlRequest::FileChanged {
            file: file.to_owned(),
            stats: stats.clone(),
            streamed,
            deleted: false,
            quiet,
        };
        let sync = self.sync_replication.load(Ordering::Relaxed) && !streamed;
        if !self.connected.load(Ordering::Relaxed) {
            let _ = self.notices.try_send(Notice {
                request,
                delivered: None,
            });
            return ChangeNotice::Unsent {
                sync,
                why: "nm is unreachable",
            };
        }
        let (tx, rx) = oneshot::channel();
        let notice = Notice {
            request,
            delivered: (!quiet).then_some(tx),
        };
        if let Some(delay) = self.notice_delay {
            let notices = self.notices.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = notices.try_send(notice);
            });
        } else if self.notices.try_send(notice).is_err() {
            return ChangeNotice::Unsent {
                sync,
                why: "too many notices pending",
            };
        }
        if quiet {
            return ChangeNotice::Quiet;
        }
        ChangeNotice::Queued { sync, answer: rx }
    }

    /// Tells nm of a change the replication stream could not deliver: nm
    /// copies it the other way (a job). Nobody waits for it; it is sent
    /// again until nm answers.
    pub fn file_not_streamed(&self, file: &str, stats: &FileStats, deleted: bool) {
        {
            let mut handed_back = self.handed_back.lock().unwrap_or_else(|p| p.into_inner());
            let newer = handed_back
                .get(file)
                .is_none_or(|(known, _)| known.stamp() < stats.stamp());
            if newer {
                handed_back.insert(file.to_owned(), (stats.clone(), deleted));
            }
        }
        self.handed_back_ready.notify_one();
    }

    /// The changes handed back since the last call.
    /// Waits (at most `deadline`) until every change handed back by the
    /// stream has been taken to be sent to nm (for a clean stop).
    pub async fn handed_back_sent(&self, deadline: Duration) {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline
            && !self
                .handed_back
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn take_handed_back(&self) -> Vec<(String, (FileStats, bool))> {
        std::mem::take(&mut *self.handed_back.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Reports changes the backup acknowledged on the stream, and where
    /// the stream stands; nobody waits.
    pub fn streamed(&self, changes: Vec<StreamedChange>, position: StreamPosition) {
        let _ = self.notices.try_send(Notice {
            request: ControlRequest::Streamed {
                changes,
                position: Some(position),
            },
            delivered: None,
        });
    }

    /// Tells nm a file was read; nobody waits for it.
    pub fn file_accessed(&self, file: &str, user: &str) {
        let _ = self.notices.try_send(Notice {
            request: ControlRequest::FileAccessed {
                file: file.to_owned(),
                user: user.to_owned(),
                at_ms: now_ms(),
            },
            delivered: None,
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("nm refused: {0}")]
    Refused(#[from] WireError),
    #[error("nm did not answer in time")]
    Timeout,
    #[error("unexpected reply from nm: {0:?}")]
    Unexpected(Box<NmReply>),
}

impl LinkError {
    /// `Some(leader)` when nm answered E_NOT_LEADER (naming the leader if it knows it).
    fn redirect(&self) -> Option<Option<String>> {
        let error = match self {
            LinkError::Refused(e) | LinkError::Connection(ConnectionError::Refused(e)) => e,
            _ => return None,
        };
        (error.code == shared::ErrorCode::NotLeader).then(|| error.leader.clone())
    }
}

async fn call(client: &mut RpcClient, request: ControlRequest) -> Result<NmReply, LinkError> {
    let reply = tokio::time::timeout(CALL_TIMEOUT, client.call::<_, NmReply>(request))
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok(reply?)
}

/// Keeps the server registered with nm until `shutdown`.
pub async fn run(
    config: Config,
    client_addr: String,
    files: Arc<Files>,
    link: Arc<NmLink>,
    shutdown: CancellationToken,
) {
    let queued = link
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .expect("the link runs once");
    let mut outbox = Outbox {
        queued,
        carried: Vec::new(),
    };
    let mut backoff = BACKOFF_START;
    let addresses = shared::leader::parse_addresses(&config.nm);
    let mut leader: Option<String> = None;
    loop {
        let session = serve_link(
            &config,
            &addresses,
            &mut leader,
            &client_addr,
            &files,
            &link,
            &mut outbox,
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => result,
        };
        // Without nm, stop accepting anything at once: nm may promote the partner.
        link.connected.store(false, Ordering::Relaxed);
        link.role.renew_lease(None);
        match result {
            Ok(()) => backoff = BACKOFF_START,
            // A standby or a deposed leader: look for the leader at once.
            Err(e) if e.redirect().is_some() => {
                backoff = BACKOFF_START;
                tracing::info!(
                    event = "ss_nm_not_leader",
                    nm = leader.as_deref().unwrap_or("-"),
                    "nm no longer leads; looking for the leader"
                );
                leader = e.redirect().flatten();
            }
            Err(e) => {
                tracing::warn!(event = "ss_nm_link_down", nm = %config.nm, error = %e, retry_ms = backoff.as_millis() as u64, "nm unreachable; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Among several nm an election takes a lease's time: keep trying often.
        let most = if addresses.len() > 1 {
            BACKOFF_MAX_AMONG_SEVERAL
        } else {
            BACKOFF_MAX
        };
        backoff = (backoff * 2).min(most);
    }
}

/// One registered session with nm; returns when the connection breaks.
async fn serve_link(
    config: &Config,
    addresses: &[String],
    leader: &mut Option<String>,
    client_addr: &str,
    files: &Arc<Files>,
    link: &NmLink,
    outbox: &mut Outbox,
) -> Result<(), LinkError> {
    let Outbox {
        queued: notices,
        carried: unanswered,
    } = outbox;
    let (mut client, reached) = shared::leader::connect_to_leader(
        addresses,
        leader.as_deref(),
        Role::StorageServer,
        &config.username,
        link.cluster_key.as_ref(),
    )
    .await
    // The next attempt starts from the top of the list.
    .inspect_err(|_| *leader = None)?;
    *leader = Some(reached.clone());
    // Among several nm, a leader that stops answering heartbeats is left
    // once the lease it gave has run out (another may lead by then).
    let several = addresses.len() > 1;
    let registered_at = Instant::now();
    let roles_before = link.role.sets();
    // Whatever was queued while disconnected is covered by the inventory
    // nm asks the serving server for after registering.
    while notices.try_recv().is_ok() {}
    // One frame whatever the number of files: nm answers at once and asks
    // the pair's serving server for its inventory afterwards (a million
    // files take seconds to list and reconcile).
    let count = files.is_loaded().then(|| files.len() as u64);
    let reply = call(
        &mut client,
        ControlRequest::Register {
            name: config.username.clone(),
            client_addr: client_addr.to_owned(),
            backup_of: config.backup_of.clone(),
            store_id: files.store_id(),
            files: count,
        },
    )
    .await?;
    let NmReply::Registered {
        ticket_key,
        epoch,
        serving,
        writable,
        lease_ms,
        sync_replication,
        partner,
    } = reply
    else {
        return Err(LinkError::Unexpected(Box::new(reply)));
    };
    let lease = Duration::from_millis(lease_ms);
    // What a change reads once it may be accepted comes first: the lease,
    // renewed last (in `set_registered_role`), lets changes in.
    link.sync_replication
        .store(sync_replication, Ordering::Relaxed);
    link.set_partner(partner);
    if link.cluster_key.is_none() {
        *link.ticket_key.write().unwrap_or_else(|p| p.into_inner()) =
            Some(TicketKey::new(ticket_key));
    }
    // nm sends `SetRole` only after answering, so one that arrived meanwhile
    // is newer, unless it names an older epoch (a stale one, from before).
    let part = Part {
        epoch,
        serving,
        writable,
    };
    if !link
        .set_registered_role(part, roles_before, registered_at + lease)
        .await?
    {
        tracing::info!(
            event = "ss_role_kept",
            epoch,
            "nm set a newer role while the registration was being answered; keeping it"
        );
    }
    link.connected.store(true, Ordering::Relaxed);
    tracing::info!(event = "ss_registered", nm = %reached, name = %config.username, address = %client_addr, files = files.len(), ms = registered_at.elapsed().as_millis() as u64, "registered with nm");

    // From here on requests are pipelined: a WRITE_COMPLETE awaiting the
    // backup's confirmation must not hold up the heartbeats behind it.
    let (conn, mut next_id) = client.into_parts();
    let (mut writer, mut reader) = conn.split();
    let mut pending = Unanswered {
        pending: HashMap::new(),
        carried: unanswered,
    };
    // Kept in `pending` before any is sent, so a send that fails carries them all again.
    let first_carried = next_id;
    for notice in std::mem::take(pending.carried) {
        pending.insert(
            next_id,
            Pending::Notice {
                resend: Some(notice.request),
                sent: Instant::now(),
                delivered: notice.delivered,
            },
        );
        next_id += 1;
    }
    for id in first_carried..next_id {
        if let Some(Pending::Notice {
            resend: Some(request),
            ..
        }) = pending.get(&id)
        {
            let request = Request {
                id,
                body: request.clone(),
            };
            writer.send(&request).await?;
        }
    }
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let patience = if several { lease.min(CALL_TIMEOUT) } else { SOLE_NM_PATIENCE };
                let stale = pending.values().any(|p| matches!(p, Pending::Heartbeat(sent) if sent.elapsed() > patience));
                if stale {
                    return Err(LinkError::Timeout);
                }
                // The lease counts from when the heartbeat left, so it ends
                // before nm's failure timeout, which counts from its arrival.
                let id = next_id;
                next_id += 1;
                writer.send(&Request { id, body: ControlRequest::Heartbeat }).await?;
                pending.insert(id, Pending::Heartbeat(Instant::now()));
                let unanswered: Vec<u64> = pending
                    .iter()
                    .filter(|(_, p)| matches!(p, Pending::Notice { resend: Some(request), sent, .. } if !is_quiet(request) && sent.elapsed() > NOTICE_RESEND))
                    .map(|(id, _)| *id)
                    .collect();
                for old in unanswered {
                    let Some(Pending::Notice { resend: Some(request), delivered, .. }) = pending.remove(&old) else {
                        continue;
                    };
                    tracing::warn!(event = "ss_notice_resent", request = ?request, "nm has not answered a change notice; sending it again");
                    let id = next_id;
                    next_id += 1;
                    writer.send(&Request { id, body: request.clone() }).await?;
                    pending.insert(id, Pending::Notice { resend: Some(request), sent: Instant::now(), delivered });
                }
            }
            _ = link.handed_back_ready.notified() => {
                send_handed_back(link, &mut writer, &mut pending, &mut next_id).await?;
            }
            notice = notices.recv() => {
                let Some(notice) = notice else { return Ok(()) };
                // A stream report says what is settled, counting changes
                // handed back to nm: nm hears of those first.
                if matches!(notice.request, ControlRequest::Streamed { .. }) {
                    send_handed_back(link, &mut writer, &mut pending, &mut next_id).await?;
                }
                let id = next_id;
                next_id += 1;
                let resend = matches!(notice.request, ControlRequest::FileChanged { .. })
                    .then(|| notice.request.clone());
                writer.send(&Request { id, body: notice.request }).await?;
                pending.insert(id, Pending::Notice { resend, sent: Instant::now(), delivered: notice.delivered });
            }
            reply = reader.recv::<Reply<NmReply>>() => {
                let Some(reply) = reply? else { return Ok(()) };
                match pending.remove(&reply.id) {
                    Some(Pending::Heartbeat(sent)) => {
                        if let NmReply::Beat { partner } = reply.result? {
                            link.set_partner(partner);
                        }
                        link.role.renew_lease(Some(sent + lease));
                        // nm handled every message sent before this one.
                        let answered = reply.id;
                        pending.retain(|&id, p| !(id < answered && matches!(p, Pending::Notice { resend: Some(request), .. } if is_quiet(request))));
                        let unsettled = pending.values().filter(|p| matches!(p, Pending::Notice { resend: Some(_), .. })).count();
                        link.unsettled.store(unsettled, Ordering::Relaxed);
                    }
                    // A deposed leader answers so without handling it, and
                    // closes: kept, the notice is carried to the next leader.
                    Some(Pending::Notice { resend: Some(request), sent, delivered })
                        if matches!(&reply.result, Err(e) if e.code == shared::ErrorCode::NotLeader) =>
                    {
                        pending.insert(reply.id, Pending::Notice { resend: Some(request), sent, delivered });
                    }
                    Some(Pending::Notice { delivered: Some(delivered), .. }) => {
                        let _ = delivered.send(reply.result.map(|_| ()));
                    }
                    Some(Pending::Notice { delivered: None, .. }) | None => {}
                }
            }
        }
    }
}

/// Sends nm the changes the stream handed back since the last call, as
/// notices sent again until nm answers.
async fn send_handed_back(
    link: &NmLink,
    writer: &mut shared::connection::ConnWriter,
    pending: &mut Unanswered<'_>,
    next_id: &mut u64,
) -> Result<(), ConnectionError> {
    for (file, (stats, deleted)) in link.take_handed_back() {
        let request = ControlRequest::FileChanged {
            file,
            stats,
            streamed: false,
            deleted,
            quiet: false,
        };
        let id = *next_id;
        *next_id += 1;
        writer
            .send(&Request {
                id,
                body: request.clone(),
            })
            .await?;
        pending.insert(
            id,
            Pending::Notice {
                resend: Some(request),
                sent: Instant::now(),
                delivered: None,
            },
        );
    }
    Ok(())
}

/// What the link sends nm besides heartbeats.
struct Outbox {
    queued: mpsc::Receiver<Notice>,
    /// Change notices nm had not answered when a session ended: they go to
    /// the next one, since nm (this one, or the next leader) must hear of
    /// every change.
    carried: Vec<Notice>,
}

/// The requests of a session awaiting nm's reply; the change notices among
/// them are carried to the next session when this one ends.
struct Unanswered<'a> {
    pending: HashMap<u64, Pending>,
    carried: &'a mut Vec<Notice>,
}

impl std::ops::Deref for Unanswered<'_> {
    type Target = HashMap<u64, Pending>;
    fn deref(&self) -> &Self::Target {
        &self.pending
    }
}

impl std::ops::DerefMut for Unanswered<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pending
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let mut notices: Vec<(u64, Notice)> = self
            .pending
            .drain()
            .filter_map(|(id, pending)| match pending {
                Pending::Notice {
                    resend: Some(request),
                    delivered,
                    ..
                } => Some((id, Notice { request, delivered })),
                _ => None,
            })
            .collect();
        // In the order they were first sent.
        notices.sort_by_key(|(id, _)| *id);
        self.carried.extend(notices.into_iter().map(|(_, n)| n));
    }
}

/// A request to nm awaiting its reply.
enum Pending {
    Heartbeat(Instant),
    Notice {
        /// A change notice, kept to be sent again if nm does not answer.
        resend: Option<ControlRequest>,
        sent: Instant,
        delivered: Option<oneshot::Sender<Result<(), WireError>>>,
    },
}

/// Whether `request` is a notice nm answers only with an error.
fn is_quiet(request: &ControlRequest) -> bool {
    matches!(request, ControlRequest::FileChanged { quiet: true, .. })
}

/// A change notice on its way to nm (see [`NmLink::notify_changed`]).
pub enum ChangeNotice {
    /// Nobody waits for its answer: the next heartbeat's settles it.
    Quiet,
    Queued {
        /// nm's answer says whether the backup has the change.
        sync: bool,
        answer: oneshot::Receiver<Result<(), WireError>>,
    },
    Unsent {
        sync: bool,
        why: &'static str,
    },
}

impl ChangeNotice {
    /// nm's answer: in synchronous mode whether the backup has the change;
    /// otherwise always `Ok`.
    pub async fn answered(self) -> Result<(), WireError> {
        let unconfirmed = |sync: bool, why: &str| {
            if sync {
                Err(WireError::unavailable(format!(
                    "the change was applied here but the backup has not confirmed it ({why}); it may not survive a failover"
                )))
            } else {
                Ok(())
            }
        };
        let (sync, answer) = match self {
            ChangeNotice::Quiet => return Ok(()),
            ChangeNotice::Unsent { sync, why } => return unconfirmed(sync, why),
            ChangeNotice::Queued { sync, answer } => (sync, answer),
        };
        let wait = if sync {
            SYNC_ACK_TIMEOUT
        } else {
            NOTICE_ACK_TIMEOUT
        };
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) if sync => Err(e),
            Ok(Ok(Err(_))) => Ok(()),
            Ok(Err(_)) => unconfirmed(sync, "the nm connection broke"),
            Err(_) => unconfirmed(sync, "no answer in time"),
        }
    }
}
