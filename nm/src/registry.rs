//! The storage servers nm knows, and the primary/backup pairs they form.
//!
//! `ssN_backup` backs `ssN`, or any server started with `--backup-of ssN`;
//! every other server is a primary, and only primaries get new files. A pair
//! forms whichever of the two registers first. A server is alive while its
//! control connection is open.
//!
//! A pair's state is derived from the liveness of its two servers and from
//! whether a sync is outstanding; [`Registry::refresh`] recomputes it after
//! every change and reports each transition with its reason.

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
    /// Clients are sent here: it is its pair's active server and has taken the role.
    pub serving: bool,
    /// The identity of the server's storage folder (0: not told).
    pub store_id: u64,
}

pub struct Pair {
    pub primary: String,
    pub backup: Option<String>,
    pub state: PairState,
    /// Bumped at every promotion (and hand-back); persisted.
    pub epoch: u64,
    /// The server clients are sent to: the primary, or the backup after a failover.
    pub active: String,
    /// Writes are paused for the final drain of a hand-back.
    pub paused: bool,
    /// The backup may lack changes (it just registered, or the queue overflowed).
    pub needs_sync: bool,
    pub last_sync_ms: u64,
    /// Conflict copies kept by recoveries since nm started.
    pub conflict_copies: u64,
    /// The epoch last reported in an event.
    reported_epoch: u64,
}

#[derive(Default)]
pub struct Registry {
    /// Given to the clients nm uses to reach storage servers.
    key: Option<shared::auth::ClusterKey>,
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
    pub fn with_key(key: Option<shared::auth::ClusterKey>) -> Self {
        Registry {
            key,
            ..Registry::default()
        }
    }

    /// Records a (re-)registration and returns its generation. `remembered`
    /// is the pair's persisted (epoch, active server), if any.
    pub fn register(
        &mut self,
        name: &str,
        address: &str,
        files: u64,
        backup_of: Option<&str>,
        timeout: Duration,
        remembered: impl FnOnce(&str) -> Option<(u64, String)>,
    ) -> u64 {
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
                serving: false,
                store_id: 0,
            },
        );
        let pair_name = primary.clone().unwrap_or_else(|| name.to_owned());
        let (epoch, active) = remembered(&pair_name).unwrap_or((0, pair_name.clone()));
        let pair = self.pairs.entry(pair_name.clone()).or_insert_with(|| Pair {
            primary: pair_name,
            backup: None,
            state: PairState::Unpaired,
            epoch,
            active,
            paused: false,
            needs_sync: false,
            last_sync_ms: 0,
            conflict_copies: 0,
            reported_epoch: epoch,
        });
        if primary.is_some() {
            pair.backup = Some(name.to_owned());
        }
        if pair.backup.is_some() {
            // Whichever side (re)appeared, the backup may lack changes.
            pair.needs_sync = true;
        }
        generation
    }

    /// Marks a server down, unless it has registered again since `generation`.
    pub fn disconnect(&mut self, name: &str, generation: u64) -> bool {
        match self.servers.get_mut(name) {
            Some(entry) if entry.generation == generation && entry.connected => {
                entry.connected = false;
                entry.serving = false;
                true
            }
            _ => false,
        }
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

    /// The pair a server belongs to.
    pub fn pair_of(&self, server: &str) -> Option<&Pair> {
        self.pairs
            .values()
            .find(|p| p.primary == server || p.backup.as_deref() == Some(server))
    }

    /// The other server of a pair, relative to its active one.
    pub fn standby(&self, pair: &Pair) -> Option<String> {
        if pair.active == pair.primary {
            pair.backup.clone()
        } else {
            Some(pair.primary.clone())
        }
    }

    /// The server clients of `pair` go to now, with its client and the pair's epoch.
    pub fn serving(&self, pair: &str) -> Option<(&ServerEntry, u64)> {
        let pair = self.pairs.get(pair)?;
        if pair.paused {
            return None;
        }
        let entry = self.servers.get(&pair.active)?;
        (entry.connected && entry.serving).then_some((entry, pair.epoch))
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

    /// What a pair's state should be now.
    fn derive(&self, pair: &Pair) -> PairState {
        let alive = |name: &str| self.servers.get(name).map(|s| s.connected);
        let primary = alive(&pair.primary);
        let backup = pair.backup.as_deref().and_then(alive);
        let failed_over = pair.active != pair.primary;
        match (primary, backup) {
            // The returned primary catches up while the backup serves.
            (Some(true), Some(true)) if failed_over => PairState::Recovering,
            (Some(true), Some(true)) if pair.needs_sync => PairState::Syncing,
            (Some(true), Some(true)) => PairState::Active,
            (Some(true), Some(false)) if failed_over => PairState::Offline,
            (Some(true), Some(false)) => PairState::BackupFailed,
            // Failed over, or about to be (the promotion is under way).
            (Some(false), Some(true)) => PairState::PrimaryFailed,
            (Some(false), Some(false)) | (Some(false), None) => PairState::Offline,
            (None, Some(true)) if failed_over => PairState::PrimaryFailed,
            (Some(true), None) | (None, _) => PairState::Unpaired,
        }
    }

    /// Recomputes every pair's state; returns the transitions as events.
    pub fn refresh(&mut self, reason: &str) -> Vec<EventKind> {
        let derived: Vec<(String, PairState)> = self
            .pairs
            .values()
            .map(|p| (p.primary.clone(), self.derive(p)))
            .collect();
        let mut events = Vec::new();
        for (primary, to) in derived {
            let pair = self.pairs.get_mut(&primary).expect("listed above");
            // A promotion or hand-back changes the epoch even where the
            // state stays the same: that is reported too.
            if pair.state != to || pair.reported_epoch != pair.epoch {
                pair.reported_epoch = pair.epoch;
                events.push(EventKind::Pair {
                    primary: pair.primary.clone(),
                    backup: pair.backup.clone(),
                    from: pair.state,
                    to,
                    epoch: pair.epoch,
                    reason: reason.to_owned(),
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
                    serving: s.serving,
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
    pub fn pair_status(&self, pending: impl Fn(&str) -> (u64, u64)) -> Vec<PairStatus> {
        self.pairs
            .values()
            .map(|p| {
                let (pending_jobs, lag_ms) = pending(&p.primary);
                PairStatus {
                    primary: p.primary.clone(),
                    backup: p.backup.clone(),
                    state: p.state,
                    epoch: p.epoch,
                    pending_jobs,
                    lag_ms,
                    last_sync_ms: p.last_sync_ms,
                    conflict_copies: p.conflict_copies,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn states(r: &Registry) -> Vec<PairState> {
        r.pairs().map(|p| p.state).collect()
    }

    #[test]
    fn pairs_form_whichever_side_registers_first() {
        let mut r = Registry::default();
        r.register("ss1_backup", "a:1", 0, None, T, |_| None);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Unpaired], "no primary yet");
        let g = r.register("ss1", "a:2", 0, None, T, |_| None);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Syncing]);
        r.pair_mut("ss1").unwrap().needs_sync = false;
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Active]);
        r.register("ss2", "a:3", 0, None, T, |_| None);
        r.register("mirror", "a:4", 0, Some("ss2"), T, |_| None);
        r.get_mut("ss2").unwrap().serving = true;
        r.refresh("test");
        assert_eq!(r.pair("ss2").unwrap().backup.as_deref(), Some("mirror"));
        assert!(r.disconnect("ss1", g));
        let events = r.refresh("primary gone");
        assert!(!events.is_empty());
        assert_eq!(
            r.pair("ss1").unwrap().state,
            PairState::PrimaryFailed,
            "the backup is about to be promoted"
        );
        r.pair_mut("ss1").unwrap().active = "ss1_backup".into();
        r.refresh("promoted");
        assert_eq!(r.pair("ss1").unwrap().state, PairState::PrimaryFailed);
        assert_eq!(
            r.placement().unwrap().0,
            "ss2",
            "only serving servers get new files"
        );
    }

    #[test]
    fn backup_names() {
        assert_eq!(backs("ss1_backup", None).as_deref(), Some("ss1"));
        assert_eq!(backs("x", Some("ss3")).as_deref(), Some("ss3"));
        assert_eq!(backs("ss1", None), None);
        assert_eq!(backs("_backup", None), None);
    }
}
