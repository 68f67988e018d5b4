//! What the charts show: per pair, client operations per second,
//! replication lag and pending jobs; per server, the age of its last
//! heartbeat. One sample per status snapshot (every 500 ms), the last
//! [`SAMPLES`] kept, so a failover shows as a shape: a heartbeat age
//! climbing to the timeout, then a gap marked `×`.

use shared::proto::{ClusterStatus, ServerState};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// Samples kept per series: two minutes at one snapshot per 500 ms.
pub const SAMPLES: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeartbeatSample {
    /// Milliseconds since the last heartbeat, and the timeout.
    Age {
        ms: u64,
        timeout_ms: u64,
    },
    Failed,
}

#[derive(Debug, Default, Clone)]
pub struct PairHistory {
    pub ops_per_sec: VecDeque<f64>,
    pub lag_ms: VecDeque<f64>,
    pub pending: VecDeque<f64>,
}

#[derive(Debug, Default)]
pub struct Charts {
    /// By the pair's primary.
    pub pairs: BTreeMap<String, PairHistory>,
    pub heartbeats: BTreeMap<String, VecDeque<HeartbeatSample>>,
    /// Each pair's operation counter at the previous snapshot.
    last: Option<(Instant, HashMap<String, u64>)>,
}

fn push<T>(series: &mut VecDeque<T>, value: T) {
    if series.len() == SAMPLES {
        series.pop_front();
    }
    series.push_back(value);
}

impl Charts {
    /// Takes one sample of every series from a status snapshot.
    pub fn record(&mut self, status: &ClusterStatus, now: Instant) {
        let counters: HashMap<String, u64> = status
            .pairs
            .iter()
            .map(|p| (p.primary.clone(), p.operations))
            .collect();
        for p in &status.pairs {
            let rate = match &self.last {
                Some((at, before)) => {
                    let secs = now.duration_since(*at).as_secs_f64();
                    let before = before.get(&p.primary).copied().unwrap_or(p.operations);
                    // A counter that went back is a restarted nm: no rate.
                    if secs > 0.0 && p.operations >= before {
                        (p.operations - before) as f64 / secs
                    } else {
                        0.0
                    }
                }
                None => 0.0,
            };
            let history = self.pairs.entry(p.primary.clone()).or_default();
            push(&mut history.ops_per_sec, rate);
            push(&mut history.lag_ms, p.lag_ms as f64);
            push(&mut history.pending, p.pending_jobs as f64);
        }
        for s in &status.servers {
            let sample = match s.state {
                ServerState::Failed => HeartbeatSample::Failed,
                ServerState::Alive => HeartbeatSample::Age {
                    ms: s.ms_since_heartbeat,
                    timeout_ms: s.ms_since_heartbeat + s.ms_until_timeout,
                },
            };
            self.heartbeat(&s.name, sample);
        }
        self.last = Some((now, counters));
    }

    /// One heartbeat sample (a failure event adds one at once).
    pub fn heartbeat(&mut self, server: &str, sample: HeartbeatSample) {
        push(
            self.heartbeats.entry(server.to_owned()).or_default(),
            sample,
        );
    }
}

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as a text sparkline scaled to `max` (at least
/// the largest value shown), right-aligned; an empty series is blank.
pub fn sparkline(values: &VecDeque<f64>, width: usize, max: f64) -> String {
    let shown: Vec<f64> = values
        .iter()
        .skip(values.len().saturating_sub(width))
        .copied()
        .collect();
    let top = shown.iter().copied().fold(max, f64::max);
    let mut line = " ".repeat(width - shown.len());
    for v in shown {
        let level = if top <= 0.0 {
            0
        } else {
            ((v / top) * 7.0).round().clamp(0.0, 7.0) as usize
        };
        line.push(BLOCKS[level]);
    }
    line
}

/// A server's heartbeat ages as a sparkline scaled to its timeout; `×`
/// where it was FAILED.
pub fn heartbeat_line(samples: &VecDeque<HeartbeatSample>, width: usize) -> String {
    let shown: Vec<&HeartbeatSample> = samples
        .iter()
        .skip(samples.len().saturating_sub(width))
        .collect();
    let mut line = " ".repeat(width - shown.len());
    for s in shown {
        line.push(match s {
            HeartbeatSample::Failed => '×',
            HeartbeatSample::Age { ms, timeout_ms } => {
                let ratio = *ms as f64 / (*timeout_ms).max(1) as f64;
                BLOCKS[(ratio * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        });
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testing::status;
    use shared::proto::PairState;
    use std::time::Duration;

    #[test]
    fn rates_come_from_the_counter_and_a_failure_is_a_gap() {
        let mut charts = Charts::default();
        let start = Instant::now();
        let mut s = status(PairState::Active);
        charts.record(&s, start);
        s.pairs[0].operations = 50;
        charts.record(&s, start + Duration::from_millis(500));
        assert_eq!(charts.pairs["ss1"].ops_per_sec, [0.0, 100.0]);
        s.servers[0].state = ServerState::Failed;
        charts.record(&s, start + Duration::from_millis(1000));
        let line = heartbeat_line(&charts.heartbeats["ss1"], 5);
        assert_eq!(line.chars().last(), Some('×'), "{line}");
        assert_eq!(line.chars().count(), 5);
        assert_eq!(sparkline(&charts.pairs["ss1"].ops_per_sec, 4, 1.0), " ▁█▁");
    }
}
