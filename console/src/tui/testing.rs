//! Test data shared by the TUI's model, layout and chart tests.

use shared::proto::{
    ClusterStatus, Event, EventKind, PairState, PairStatus, ServerRole, ServerState, ServerStatus,
};

pub fn status(pair: PairState) -> ClusterStatus {
    ClusterStatus {
        servers: vec![
            ServerStatus {
                name: "ss1".into(),
                role: ServerRole::Primary,
                state: ServerState::Alive,
                address: "127.0.0.1:4001".into(),
                ms_since_heartbeat: 40,
                ms_until_timeout: 960,
                serving: true,
                files: 3,
            },
            ServerStatus {
                name: "ss1_backup".into(),
                role: ServerRole::Backup,
                state: ServerState::Alive,
                address: "127.0.0.1:4002".into(),
                ms_since_heartbeat: 70,
                ms_until_timeout: 930,
                serving: false,
                files: 3,
            },
        ],
        pairs: vec![PairStatus {
            primary: "ss1".into(),
            backup: Some("ss1_backup".into()),
            state: pair,
            epoch: 0,
            pending_jobs: 0,
            operations: 0,
            lag_ms: 0,
            last_sync_ms: 0,
            conflict_copies: 0,
            standby_in_sync: false,
            reason: None,
            stream: None,
        }],
        queue_depth: 0,
        replication: "ASYNC".into(),
        nm: Vec::new(),
        etcd: Vec::new(),
    }
}

pub fn event(seq: u64, kind: EventKind) -> Event {
    Event {
        seq,
        at_ms: 0,
        kind,
    }
}
