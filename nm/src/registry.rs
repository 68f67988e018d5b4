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
}

pub struct Pair {
    pub primary: String,
    pub backup: Option<String>,
    pub state: PairState,
    pub epoch: u64,
    /// The backup may lack changes (it just registered, or the queue overflowed).
    pub needs_sync: bool,
    pub last_sync_ms: u64,
}

#[derive(Default)]
pub struct Registry {
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
    /// Records a (re-)registration and returns its generation.
    pub fn register(
        &mut self,
        name: &str,
        address: &str,
        files: u64,
        backup_of: Option<&str>,
        timeout: Duration,
    ) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        let client = match self.servers.get(name) {
            Some(old) if old.address == address => old.client.clone(),
            _ => Arc::new(SsClient::new(name, address, timeout)),
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
            },
        );
        let pair_name = primary.clone().unwrap_or_else(|| name.to_owned());
        let pair = self.pairs.entry(pair_name.clone()).or_insert_with(|| Pair {
            primary: pair_name,
            backup: None,
            state: PairState::Unpaired,
            epoch: 0,
            needs_sync: false,
            last_sync_ms: 0,
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
            Some(entry) if entry.generation == generation => {
                entry.connected = false;
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

    /// The pair whose primary is `primary`, with a live backup: (backup client, primary address).
    pub fn replica_of(&self, primary: &str) -> Option<(String, Arc<SsClient>)> {
        let backup = self.pairs.get(primary)?.backup.as_deref()?;
        let entry = self.servers.get(backup)?;
        entry
            .connected
            .then(|| (entry.name.clone(), entry.client.clone()))
    }

    /// The live primary holding the fewest files, for a new file.
    pub fn placement(&self) -> Option<&ServerEntry> {
        self.servers
            .values()
            .filter(|s| s.connected && s.role == ServerRole::Primary)
            .min_by_key(|s| (s.files, s.name.clone()))
    }

    /// What a pair's state should be now.
    fn derive(&self, pair: &Pair) -> PairState {
        let alive = |name: &str| self.servers.get(name).map(|s| s.connected);
        let primary = alive(&pair.primary);
        let backup = pair.backup.as_deref().and_then(alive);
        match (primary, backup) {
            (Some(true), Some(true)) if pair.needs_sync => PairState::Syncing,
            (Some(true), Some(true)) => PairState::Active,
            (Some(true), Some(false)) => PairState::BackupFailed,
            (Some(false), Some(true)) => PairState::PrimaryFailed,
            (Some(false), Some(false)) | (Some(false), None) => PairState::Offline,
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
            if pair.state != to {
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

    pub fn status(&self) -> Vec<ServerStatus> {
        self.servers
            .values()
            .map(|s| ServerStatus {
                name: s.name.clone(),
                role: s.role,
                state: if s.connected {
                    ServerState::Alive
                } else {
                    ServerState::Failed
                },
                address: s.address.clone(),
                ms_since_heartbeat: s.last_seen.elapsed().as_millis() as u64,
                files: s.files,
            })
            .collect()
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
        r.register("ss1_backup", "a:1", 0, None, T);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Unpaired], "no primary yet");
        let g = r.register("ss1", "a:2", 0, None, T);
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Syncing]);
        r.pair_mut("ss1").unwrap().needs_sync = false;
        r.refresh("test");
        assert_eq!(states(&r), [PairState::Active]);
        r.register("ss2", "a:3", 0, None, T);
        r.register("mirror", "a:4", 0, Some("ss2"), T);
        r.refresh("test");
        assert_eq!(r.pair("ss2").unwrap().backup.as_deref(), Some("mirror"));
        assert!(r.disconnect("ss1", g));
        let events = r.refresh("primary gone");
        assert_eq!(r.pair("ss1").unwrap().state, PairState::PrimaryFailed);
        assert!(!events.is_empty());
        assert_eq!(
            r.placement().unwrap().name,
            "ss2",
            "backups never get new files"
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
