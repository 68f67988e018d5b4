//! nm's Prometheus metrics (`nm --metrics-addr`). Counters and histograms are
//! updated where things happen; gauges (server liveness and heartbeat age,
//! pair states and epochs, queue depth) are read from the state at scrape time.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `docs_nm_requests_total` | operation, outcome | client requests served |
//! | `docs_nm_request_seconds` | operation | time to serve them |
//! | `docs_server_up` | server | 1 while the server's control connection is live |
//! | `docs_server_heartbeat_age_seconds` | server | time since the server was last heard from |
//! | `docs_pair_state` | pair, state | 1 for the pair's current state, 0 for the others |
//! | `docs_pair_epoch` | pair | the pair's epoch |
//! | `docs_replication_queue_depth` | | jobs pending or running |
//! | `docs_replication_jobs_total` | kind, step | job steps (QUEUED, APPLIED, FAILED, DROPPED, …) |
//! | `docs_replication_job_seconds` | kind | queued → applied |
//! | `docs_replication_lag_seconds` | | a file change queued (or committed, on the replication stream) → on the backup |
//! | `docs_replication_bytes_total` | | bytes copied between servers |
//! | `docs_failovers_total` | | promotions of a backup |
//! | `docs_nm_stalls_total` | | nm's own stalls (paused, starved) |

use daemon::metrics::{labels, seconds_histogram, Labels, RequestMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::proto::{ClusterStatus, JobKind, JobStep, PairState, ServerState};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Clones share every metric: with `--etcd` one set serves the process
/// across its terms as leader.
#[derive(Clone)]
pub struct NmMetrics {
    pub registry: Arc<Mutex<Registry>>,
    pub requests: RequestMetrics,
    server_up: Family<Labels, Gauge>,
    heartbeat_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pair_state: Family<Labels, Gauge>,
    pair_epoch: Family<Labels, Gauge>,
    queue_depth: Gauge,
    jobs: Family<Labels, Counter>,
    job_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    lag_seconds: Histogram,
    pub transfer_bytes: Counter,
    pub failovers: Counter,
    /// Times nm found it had not run for a while (paused, starved).
    pub nm_stalls: Counter,
}

fn word<T: serde::Serialize>(value: &T) -> String {
    rmp_serde::to_vec(value)
        .ok()
        .and_then(|b| rmp_serde::from_slice::<String>(&b).ok())
        .unwrap_or_default()
}

impl Default for NmMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = RequestMetrics::register(&mut registry, "docs_nm");
        let m = NmMetrics {
            requests,
            server_up: Family::default(),
            heartbeat_age: Family::default(),
            pair_state: Family::default(),
            pair_epoch: Family::default(),
            queue_depth: Gauge::default(),
            jobs: Family::default(),
            job_seconds: Family::new_with_constructor(seconds_histogram),
            lag_seconds: seconds_histogram(),
            transfer_bytes: Counter::default(),
            failovers: Counter::default(),
            nm_stalls: Counter::default(),
            registry: Arc::default(),
        };
        registry.register(
            "docs_server_up",
            "1 while the server's control connection is live",
            m.server_up.clone(),
        );
        registry.register(
            "docs_server_heartbeat_age_seconds",
            "Time since the server was last heard from",
            m.heartbeat_age.clone(),
        );
        registry.register(
            "docs_pair_state",
            "1 for the pair's current state",
            m.pair_state.clone(),
        );
        registry.register("docs_pair_epoch", "The pair's epoch", m.pair_epoch.clone());
        registry.register(
            "docs_replication_queue_depth",
            "Replication jobs pending or running",
            m.queue_depth.clone(),
        );
        registry.register(
            "docs_replication_jobs",
            "Replication job steps",
            m.jobs.clone(),
        );
        registry.register(
            "docs_replication_job_seconds",
            "Replication job time, queued to applied",
            m.job_seconds.clone(),
        );
        registry.register(
            "docs_replication_lag_seconds",
            "A file change queued to applied on the backup",
            m.lag_seconds.clone(),
        );
        registry.register(
            "docs_replication_bytes",
            "Bytes copied between servers",
            m.transfer_bytes.clone(),
        );
        registry.register(
            "docs_failovers",
            "Promotions of a backup",
            m.failovers.clone(),
        );
        registry.register(
            "docs_nm_stalls",
            "Times nm did not run for a while (that time is not counted as any server's silence)",
            m.nm_stalls.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }
}

impl NmMetrics {
    pub fn job(&self, kind: JobKind, step: JobStep, seconds: f64) {
        self.jobs
            .get_or_create(&labels(&[("kind", &word(&kind)), ("step", &word(&step))]))
            .inc();
        if step == JobStep::Applied {
            self.job_seconds
                .get_or_create(&labels(&[("kind", &word(&kind))]))
                .observe(seconds);
            if kind != JobKind::SyncPair {
                self.lag_seconds.observe(seconds);
            }
        }
    }

    /// A change the standby acknowledged on the replication stream.
    pub fn streamed(&self, seconds: f64) {
        self.lag_seconds.observe(seconds);
    }

    /// Sets the gauges from a status snapshot (at scrape time).
    pub fn refresh(&self, status: &ClusterStatus) {
        for s in &status.servers {
            let server = labels(&[("server", &s.name)]);
            self.server_up
                .get_or_create(&server)
                .set(i64::from(s.state == ServerState::Alive));
            self.heartbeat_age
                .get_or_create(&server)
                .set(s.ms_since_heartbeat as f64 / 1000.0);
        }
        const STATES: [PairState; 7] = [
            PairState::Unpaired,
            PairState::Syncing,
            PairState::Active,
            PairState::PrimaryFailed,
            PairState::BackupFailed,
            PairState::Recovering,
            PairState::Offline,
        ];
        for p in &status.pairs {
            for state in STATES {
                self.pair_state
                    .get_or_create(&labels(&[("pair", &p.primary), ("state", &word(&state))]))
                    .set(i64::from(p.state == state));
            }
            self.pair_epoch
                .get_or_create(&labels(&[("pair", &p.primary)]))
                .set(p.epoch as i64);
        }
        self.queue_depth.set(status.queue_depth as i64);
    }
}
