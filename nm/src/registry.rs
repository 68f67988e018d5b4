//! The storage servers nm knows: their addresses, liveness and load.
//!
//! `ssN_backup` is a backup by name and never gets new files; everything
//! else is a primary. A server is alive while its control connection is open.

use crate::ss_client::SsClient;
use shared::proto::{PairState, PairStatus, ServerRole, ServerState, ServerStatus};
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
    /// How many files nm has placed here.
    pub files: u64,
    pub client: Arc<SsClient>,
}

#[derive(Default)]
pub struct Registry {
    servers: BTreeMap<String, ServerEntry>,
    next_generation: u64,
}

pub fn role_of(name: &str) -> ServerRole {
    if name.ends_with(BACKUP_SUFFIX) {
        ServerRole::Backup
    } else {
        ServerRole::Primary
    }
}

impl Registry {
    /// Records a (re-)registration and returns its generation.
    pub fn register(&mut self, name: &str, address: &str, files: u64, timeout: Duration) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        let client = match self.servers.get(name) {
            Some(old) if old.address == address => old.client.clone(),
            _ => Arc::new(SsClient::new(name, address, timeout)),
        };
        self.servers.insert(
            name.to_owned(),
            ServerEntry {
                name: name.to_owned(),
                role: role_of(name),
                address: address.to_owned(),
                connected: true,
                last_seen: Instant::now(),
                generation,
                files,
                client,
            },
        );
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

    /// The live primary holding the fewest files, for a new file.
    pub fn placement(&self) -> Option<&ServerEntry> {
        self.servers
            .values()
            .filter(|s| s.connected && s.role == ServerRole::Primary)
            .min_by_key(|s| (s.files, s.name.clone()))
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

    /// One pair per primary. Replication is not wired yet, so every pair is UNPAIRED.
    pub fn pairs(&self) -> Vec<PairStatus> {
        self.servers
            .values()
            .filter(|s| s.role == ServerRole::Primary)
            .map(|s| PairStatus {
                primary: s.name.clone(),
                backup: None,
                state: PairState::Unpaired,
                epoch: 0,
                pending_jobs: 0,
            })
            .collect()
    }
}
