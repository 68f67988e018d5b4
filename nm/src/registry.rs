//! The storage servers nm knows, and the primary/backup pairs they form.
//!
//! `ssN_backup` backs `ssN`, or any server started with `--backup-of ssN`;
//! every other server is a primary, and only primaries get new files. A pair
//! forms whichever of the two registers first. A server is alive while its
//! control connection is open.
//!
//! Who serves each pair is decided by its failover state machine
//! ([`crate::failover::PairFsm`]), kept here beside the servers' names and
//! connections; [`Registry::refresh`] reads every pair's state from it after
//! each change and reports each transition with its reason.

use crate::failover::{Durable, PairFsm, Side};
use crate::ss_client::SsClient;
use shared::proto::{EventKind, PairState, PairStatus, ServerRole, ServerState, ServerStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BACKUP_SUFFIX: &str = "_backup";

pub struct ServerEntry {
    pub name: String,
    pub role: ServerRole,
    pub address: String,
    pub connected: bool,
    pub last_seen: Instant,
    /// Distinguishes this registration from an earlier one of the same name.
    pub generation: u64,
    /// How many files the server holds.
    pub files: u64,
    pub client: Arc<SsClient>,
    /// The identity of the server's storage folder (0: not told).
    pub store_id: u64,
    /// It serves its pair and nm has not reconciled its inventory since it
    /// registered (see `crate::inventory`).
    pub inventory_due: bool,
}

pub struct Pair {
    pub primary: String,
    pub backup: Option<String>,
    /// The state last reported (see [`Registry::refresh`]).
    pub state: PairState,
    /// Who serves, the epoch, and whether the standby is in sync.
    pub fsm: PairFsm,
    pub last_sync_ms: u64,
    /// Conflict copies kept by recoveries since nm started.
    pub conflict_copies: u64,
    /// Client operations routed to the pair since nm started (STATUS).
    pub operations: u64,
    /// The epoch last reported in an event.
    reported_epoch: u64,
    /// Where the serving server's replication stream stood at its last
    /// report (shown only while its epoch is the pair's: every change of
    /// serving server takes a new epoch).
    pub stream: Option<shared::proto::StreamPosition>,
}

/// What the journal remembers of a pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedPair {
    pub epoch: u64,
    /// The server clients are sent to.
    pub active: String,
    #[serde(default)]
    pub standby_in_sync: bool,
    /// The highest epoch ever offered (0 in older journals: `epoch` then).
    #[serde(default)]
    pub offered: u64,
    /// The backup's name, once one has registered.
    #[serde(default)]
    pub backup: Option<String>,
}

impl Pair {
    /// The name of one side (`None`: a backup not seen yet).
    pub fn name(&self, side: Side) -> Option<&str> {
        match side {
            Side::Primary => Some(&self.primary),
            Side::Backup => self.backup.as_deref(),
        }
    }

    pub fn side_of(&self, server: &str) -> Option<Side> {
        if server == self.primary {
            Some(Side::Primary)
        } else if self.backup.as_deref() == Some(server) {
            Some(Side::Backup)
        } else {
            None
        }
    }

    /// The server clients are sent to when it is up.
    pub fn active(&self) -> &str {
        self.name(self.fsm.serving_side()).unwrap_or(&self.primary)
    }

    pub fn epoch(&self) -> u64 {
        self.fsm.epoch()
    }

    /// The record that keeps `durable` in the journal.
    pub fn persisted(&self, durable: &Durable) -> PersistedPair {
        PersistedPair {
            epoch: durable.epoch,
            active: self
                .name(durable.serving)
                .unwrap_or(&self.primary)
                .to_owned(),
            standby_in_sync: durable.standby_in_sync,
            offered: durable.offered,
            backup: self.backup.clone(),
        }
    }

    /// Why clients cannot be served, if that is the case.
    pub fn unavailable_reason(&self) -> Option<String> {
        if let Some(reason) = self.fsm.attention() {
            return Some(format!("needs the operator: {reason}"));
        }
        self.fsm
            .offline_reason(|side| self.name(side).unwrap_or("the backup").to_owned())
    }
}

#[derive(Default)]
pub struct Registry {
    /// Given to the clients nm uses to reach storage servers.
    key: Option<shared::auth::ClusterKey>,
    /// `--unclean-promotion`.
    unclean_promotion: bool,
    /// nm has run for a heartbeat timeout: pairs seen from now on start with it over.
    grace_over: bool,
    servers: BTreeMap<String, ServerEntry>,
    /// By primary name.
    pairs: BTreeMap<String, Pair>,
    next_generation: u64,
}

/// The primary a server backs, if it is a backup.
pub fn backs(name: &str, backup_of: Option<&str>) -> Option<String> {
    backup_of
        .map(str::to_owned)
        .or_else(|| name.strip_suffix(BACKUP_SUFFIX).map(str::to_owned))
        .filter(|primary| !primary.is_empty() && primary != name)
}

impl Registry {
    pub fn with_key(key: Option<shared::auth::ClusterKey>, unclean_promotion: bool) -> Self {
        Registry {
            key,
            unclean_promotion,
            ..Registry::default()
        }
    }

    /// Records a (re-)registration and returns its generation and side;
    /// the caller feeds `Registered` to the pair's machine. `remembered` is
    /// what the journal holds of the pair, if anything.
    pub fn register(
        &mut self,
        name: &str,
        address: &str,
        files: u64,
        backup_of: Option<&str>,
        timeout: Duration,
        remembered: impl FnOnce(&str) -> Option<PersistedPair>,
    ) -> (u64, Side) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let client = match self.servers.get(name) {
            Some(old) if old.address == address => old.client.clone(),
            _ => Arc::new(SsClient::new(name, address, timeout, self.key.clone())),
        };
        let primary = backs(name, backup_of);
        let role = if primary.is_some() {
            ServerRole::Backup
        } else {
            ServerRole::Primary
        };
        self.servers.insert(
            name.to_owned(),
            ServerEntry {
                name: name.to_owned(),
                role,
                address: address.to_owned(),
                connected: true,
                last_seen: Instant::now(),
                generation,
                files,
                client,
                store_id: 0,
                inventory_due: false,
            },
        );
        let pair_name = primary.clone().unwrap_or_else(|| name.to_owned());
        let (unclean, grace_over) = (self.unclean_promotion, self.grace_over);
        let pair = self.pairs.entry(pair_name.clone()).or_insert_with(|| {
            let remembered = remembered(&pair_name);
            let durable = remembered.as_ref().map(|r| Durable {
                epoch: r.epoch,
                serving: if r.active == pair_name {
                    Side::Primary
                } else {
                    Side::Backup
                },
                standby_in_sync: r.standby_in_sync,
                offered: r.offered.max(r.epoch),
            });
            let backup = remembered.and_then(|r| {
                r.backup
                    .or_else(|| (r.active != pair_name).then_some(r.active))
            });
            let epoch = durable.as_ref().map_or(0, |d| d.epoch);
            let mut fsm = match durable {
                Some(d) => PairFsm::restored(d, unclean),
                None => PairFsm::new(unclean),
            };
            if grace_over {
                // Nothing to decide yet: neither server has registered.
                fsm.step(crate::failover::Input::StartupGraceOver);
            }
            Pair {
                primary: pair_name,
                backup,
                state: PairState::Unpaired,
                fsm,
                last_sync_ms: 0,
                conflict_copies: 0,
                operations: 0,
                reported_epoch: epoch,
                stream: None,
            }
        });
        if primary.is_some() {
            pair.backup = Some(name.to_owned());
        }
        let side = if primary.is_some() {
            Side::Backup
        } else {
            Side::Primary
        };
        (generation, side)
    }

    /// Marks a server down, unless it has registered again since `generation`.
    pub fn disconnect(&mut self, name: &str, generation: u64) -> bool {
        match self.servers.get_mut(name) {
            Some(entry) if entry.generation == generation && entry.connected => {
                entry.connected = false;
                true
            }
            _ => false,
        }
    }

    /// nm has run for a heartbeat timeout.
    pub fn grace_over(&mut self) {
        self.grace_over = true;
    }

    /// nm itself did not run for `stalled` (paused, starved): that time does
    /// not count as any server's silence (their heartbeats may be waiting,
    /// unread, in nm's sockets). Returns how many servers it credited.
    ///
    /// A credit, not a fresh timeout: stalls that recur more often than the
    /// heartbeat timeout must not keep a silent server from ever being
    /// declared failed.
    pub fn credit_stall(&mut self, stalled: Duration) -> usize {
        let now = Instant::now();
        for server in self.servers.values_mut() {
            server.last_seen = (server.last_seen + stalled).min(now);
        }
        self.servers.len()
    }

    pub fn touch(&mut self, name: &str) {
        if let Some(entry) = self.servers.get_mut(name) {
            entry.last_seen = Instant::now();
        }
    }

    pub fn get(&self, name: &str) -> Option<&ServerEntry> {
        self.servers.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut ServerEntry> {
        self.servers.get_mut(name)
    }

    pub fn is_alive(&self, name: &str) -> bool {
        self.servers.get(name).is_some_and(|s| s.connected)
    }

    pub fn pair(&self, primary: &str) -> Option<&Pair> {
        self.pairs.get(primary)
    }

    pub fn pair_mut(&mut self, primary: &str) -> Option<&mut Pair> {
        self.pairs.get_mut(primary)
    }

    pub fn pairs(&self) -> impl Iterator<Item = &Pair> {
        self.pairs.values()
    }

    /// Counts a client operation on a file placed on `server`'s pair.
    pub fn count_operation(&mut self, server: &str) {
        if let Some(pair) = self
            .pairs
            .values_mut()
            .find(|p| p.primary == server || p.backup.as_deref() == Some(server))
        {
            pair.operations += 1;
        }
    }

    /// Records where `server`'s replication stream stands, if it serves its pair.
    /// Keeps the serving server's report of its stream; returns its pair
    /// and whether the last report had found its standby behind.
    pub fn stream_reported(
        &mut self,
        server: &str,
        position: shared::proto::StreamPosition,
    ) -> Option<(String, bool)> {
        let pair = self.pairs.values_mut().find(|p| p.active() == server)?;
        pair.stream = Some(position);
        Some((pair.primary.clone(), pair.fsm.stream_behind()))
    }

    /// The pair a server belongs to.
    pub fn pair_of(&self, server: &str) -> Option<&Pair> {
        self.pairs
            .values()
            .find(|p| p.primary == server || p.backup.as_deref() == Some(server))
    }

    /// The other server of `server`'s pair, while it is connected: the
    /// serving one streams its changes there.
    pub fn partner(&self, server: &str) -> Option<shared::proto::Partner> {
        let pair = self.pair_of(server)?;
        let other = match pair.side_of(server)? {
            Side::Primary => pair.backup.as_deref()?,
            Side::Backup => pair.primary.as_str(),
        };
        let entry = self.servers.get(other)?;
        entry.connected.then(|| shared::proto::Partner {
            name: entry.name.clone(),
            address: entry.address.clone(),
        })
    }

    /// The other server of a pair, relative to its active one.
    pub fn standby(&self, pair: &Pair) -> Option<String> {
        pair.name(pair.fsm.standby_side()).map(str::to_owned)
    }

    /// The server clients of `pair` go to now, with its client and the pair's epoch.
    pub fn serving(&self, pair: &str) -> Option<(&ServerEntry, u64)> {
        let pair = self.pairs.get(pair)?;
        let (side, epoch) = pair.fsm.clients_go_to()?;
        let entry = self.servers.get(pair.name(side)?)?;
        entry.connected.then_some((entry, epoch))
    }

    /// Whether clients are sent to `server` now.
    pub fn is_serving(&self, server: &str) -> bool {
        self.pair_of(server)
            .and_then(|p| self.serving(&p.primary))
            .is_some_and(|(e, _)| e.name == server)
    }

    /// The pair with a serving server holding the fewest files, for a new file.
    pub fn placement(&self) -> Option<(String, &ServerEntry)> {
        self.pairs
            .values()
            .filter_map(|p| {
                self.serving(&p.primary)
                    .map(|(e, _)| (p.primary.clone(), e))
            })
            .min_by_key(|(name, e)| (e.files, name.clone()))
    }

    /// Recomputes every pair's state; returns the transitions as events.
    pub fn refresh(&mut self, reason: &str) -> Vec<EventKind> {
        let mut events = Vec::new();
        for pair in self.pairs.values_mut() {
            let to = pair.fsm.state();
            let epoch = pair.fsm.epoch();
            // A promotion or hand-back changes the epoch even where the
            // state stays the same: that is reported too.
            if pair.state != to || pair.reported_epoch != epoch {
                pair.reported_epoch = epoch;
                let reason = match pair.unavailable_reason() {
                    Some(why) => format!("{reason}; {why}"),
                    None => reason.to_owned(),
                };
                events.push(EventKind::Pair {
                    primary: pair.primary.clone(),
                    backup: pair.backup.clone(),
                    from: pair.state,
                    to,
                    epoch,
                    reason,
                });
                pair.state = to;
            }
        }
        events
    }

    /// Server rows for STATUS; `timeout` is nm's failure timeout.
    pub fn status(&self, timeout: Duration) -> Vec<ServerStatus> {
        self.servers
            .values()
            .map(|s| {
                let since = s.last_seen.elapsed();
                ServerStatus {
                    name: s.name.clone(),
                    role: s.role,
                    state: if s.connected {
                        ServerState::Alive
                    } else {
                        ServerState::Failed
                    },
                    address: s.address.clone(),
                    ms_since_heartbeat: since.as_millis() as u64,
                    ms_until_timeout: if s.connected {
                        timeout.saturating_sub(since).as_millis() as u64
                    } else {
                        0
                    },
                    serving: self.is_serving(&s.name),
                    files: s.files,
                }
            })
            .collect()
    }

    /// Live servers that have not been heard from for longer than `timeout`: (name, generation).
    pub fn silent(&self, timeout: Duration) -> Vec<(String, u64)> {
        self.servers
            .values()
            .filter(|s| s.connected && s.last_seen.elapsed() > timeout)
            .map(|s| (s.name.clone(), s.generation))
            .collect()
    }

    /// Whether this registration of `name` is still the live one.
    pub fn is_current(&self, name: &str, generation: u64) -> bool {
        self.servers
            .get(name)
            .is_some_and(|s| s.generation == generation && s.connected)
    }

    /// Pair rows for STATUS; `pending` gives (jobs, lag in ms) per primary.
    /// The lag is that of the oldest change not on the standby yet, queued
    /// as a job or sent on the stream and not acknowledged.
    pub fn pair_status(&self, pending: impl Fn(&str) -> (u64, u64)) -> Vec<PairStatus> {
        self.pairs
            .values()
            .map(|p| {
                let (pending_jobs, job_lag_ms) = pending(&p.primary);
                // Only the serving server's stream, in the pair's epoch.
                let stream = p
                    .stream
                    .clone()
                    .filter(|position| position.epoch == p.epoch());
                let stream_lag_ms = stream
                    .as_ref()
                    .filter(|s| s.open && s.unacknowledged > 0)
                    .map_or(0, |s| {
                        s.oldest_ms + shared::now_ms().saturating_sub(s.at_ms)
                    });
                let lag_ms = job_lag_ms.max(stream_lag_ms);
                PairStatus {
                    primary: p.primary.clone(),
                    backup: p.backup.clone(),
                    state: p.fsm.state(),
                    epoch: p.epoch(),
                    pending_jobs,
                    lag_ms,
                    last_sync_ms: p.last_sync_ms,
                    conflict_copies: p.conflict_copies,
                    operations: p.operations,
                    standby_in_sync: p.fsm.standby_in_sync(),
                    reason: p.unavailable_reason(),
                    stream,
                }
            })
            .collect()
    }
}

/// Servers part-way through registering, with when their last frame came.
pub type InProgress = std::sync::Mutex<std::collections::HashMap<String, Instant>>;

/// One server's registration in progress, listed in [`InProgress`] until dropped.
pub struct Registering<'a> {
    all: &'a InProgress,
    name: String,
}

impl<'a> Registering<'a> {
    pub fn new(all: &'a InProgress, name: &str) -> Self {
        let registering = Registering {
            all,
            name: name.to_owned(),
        };
        registering.touch();
        registering
    }

    fn lock(
        all: &InProgress,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
        all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frame of it arrived.
    pub fn touch(&self) {
        Self::lock(self.all).insert(self.name.clone(), Instant::now());
    }

    /// Whether some server's registration made progress within `window`.
    pub fn any_within(all: &InProgress, window: Duration) -> bool {
        Self::lock(all).values().any(|last| last.elapsed() < window)
    }
}

impl Drop for Registering<'_> {
    fn drop(&mut self) {
        Self::lock(self.all).remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn states(r: &Registry) -> Vec<PairState> {
        r.pairs().map(|p| p.state).collect()
    }

    fn register(r: &mut Registry, name: &str, backup_of: Option<&str>) -> u64 {
        let (generation, side) = r.register(name, "a:1", 0, backup_of, T, |_| None);
        let primary = backs(name, backup_of).unwrap_or_else(|| name.to_owned());
        r.pair_mut(&primary)
            .unwrap()
            .fsm
            .step(crate::failover::Input::Registered { side });
        generation
    }

    #[test]
    fn pairs_form_whichever_side_registers_first() {
        use crate::failover::Input;
        let mut r = Registry::default();
        register(&mut r, "ss1_backup", None);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Unpaired], "no primary yet");
        register(&mut r, "ss1", None);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Syncing]);
        let fsm = &mut r.pair_mut("ss1").unwrap().fsm;
        let round = fsm.catch_up_round().unwrap();
        fsm.step(Input::CatchUpDone { round });
        fsm.step(Input::Recorded { seq: 1 });
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Active]);
        assert_eq!(r.serving("ss1").unwrap().0.name, "ss1");
        register(&mut r, "ss2", None);
        register(&mut r, "mirror", Some("ss2"));
        r.refresh("test");
        assert_eq!(r.pair("ss2").unwrap().backup.as_deref(), Some("mirror"));
        assert_eq!(r.pair_of("mirror").unwrap().primary, "ss2");
    }

    #[test]
    fn nms_own_stall_is_credited_not_a_fresh_timeout() {
        let mut r = Registry::default();
        register(&mut r, "ss1", None);
        register(&mut r, "ss2", None);
        let now = Instant::now();
        r.servers.get_mut("ss1").unwrap().last_seen = now - Duration::from_millis(1_200);
        r.servers.get_mut("ss2").unwrap().last_seen = now - Duration::from_millis(2_500);
        assert_eq!(r.credit_stall(Duration::from_millis(1_000)), 2);
        // ss1 was silent 1.2 s of which nm ran 0.2 s; ss2 stays silent 1.5 s
        // of nm's running time: recurring stalls cannot hide it for ever.
        let silent: Vec<String> = r.silent(T).into_iter().map(|(n, _)| n).collect();
        assert_eq!(silent, ["ss2"]);
        // A credit never puts a heartbeat in the future.
        r.credit_stall(Duration::from_secs(60));
        assert!(r.servers.values().all(|s| s.last_seen <= Instant::now()));
    }

    #[test]
    fn backup_names() {
        assert_eq!(backs("ss1_backup", None).as_deref(), Some("ss1"));
        assert_eq!(backs("x", Some("ss3")).as_deref(), Some("ss3"));
        assert_eq!(backs("ss1", None), None);
        assert_eq!(backs("_backup", None), None);
    }
}
