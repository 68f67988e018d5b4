//! What nm knows of its group when it runs on etcd (`--etcd`): its leader
//! lease, the other nm processes and the etcd members. [`crate::ha`] keeps
//! it up to date; STATUS reads it, and every check that nm may still act
//! ([`crate::state::Nm::leads`]) asks it.
//!
//! The lease is judged on this process's monotonic clock: it counts as held
//! until three quarters of its time to live after the last renewal *was
//! sent*. etcd cannot expire it before a full time to live after it
//! *received* that renewal, so this nm stops acting before any other can
//! be elected.

use shared::proto::{EtcdMemberStatus, NmRole, NmStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct Group {
    /// The lease's time to live, as etcd granted it.
    ttl: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Until when this nm's lease surely holds (see the module doc).
    holds_until: Instant,
    /// Cancelled when the current term as leader ends; `None`: standby.
    term: Option<CancellationToken>,
    /// Every nm of the group (their advertised addresses, and whether each
    /// has its copy of the namespace loaded), and the leader.
    members: Vec<(String, bool)>,
    /// This nm has its copy of the namespace loaded (see [`Group::set_warm`]).
    warm: bool,
    leader: Option<String>,
    etcd: Vec<EtcdMemberStatus>,
}

impl Group {
    pub fn new(ttl: Duration) -> Self {
        Group {
            ttl,
            inner: Mutex::new(Inner {
                holds_until: Instant::now(),
                term: None,
                members: Vec::new(),
                warm: false,
                leader: None,
                etcd: Vec::new(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A renewal sent at `sent` was acknowledged by etcd.
    pub fn renewed(&self, sent: Instant) {
        let until = sent + self.ttl * 3 / 4;
        let mut inner = self.inner();
        if until > inner.holds_until {
            inner.holds_until = until;
        }
    }

    /// Until when the lease surely holds.
    pub fn holds_until(&self) -> Instant {
        self.inner().holds_until
    }

    /// Whether this process's lease surely holds now, leader or not: what
    /// it knows of the group (the leader) is current only while it does.
    pub fn in_touch(&self) -> bool {
        Instant::now() < self.inner().holds_until
    }

    /// Whether this nm leads and its lease surely holds now.
    pub fn holds_lease(&self) -> bool {
        let inner = self.inner();
        inner.term.as_ref().is_some_and(|t| !t.is_cancelled()) && Instant::now() < inner.holds_until
    }

    /// This nm won an election: a term begins; it ends when the token is cancelled.
    pub fn begin_term(&self) -> CancellationToken {
        let token = CancellationToken::new();
        self.inner().term = Some(token.clone());
        token
    }

    /// The term ends (lease lost, a write fenced off, or shutdown).
    pub fn end_term(&self, why: &str) {
        let term = self.inner().term.take();
        if let Some(term) = term {
            if !term.is_cancelled() {
                tracing::warn!(
                    event = "nm_stepped_down",
                    reason = why,
                    "this nm no longer leads"
                );
            }
            term.cancel();
        }
    }

    pub fn set_members(&self, members: Vec<(String, bool)>, leader: Option<String>) {
        let mut inner = self.inner();
        inner.members = members;
        inner.leader = leader;
    }

    pub fn set_member_list(&self, members: Vec<(String, bool)>) {
        self.inner().members = members;
    }

    /// Whether this nm's copy of the namespace is loaded: a standby that is
    /// still loading (a million files take seconds) cannot take over at
    /// once, and STATUS says so. Its member key carries it.
    pub fn set_warm(&self, warm: bool) {
        self.inner().warm = warm;
    }

    pub fn is_warm(&self) -> bool {
        self.inner().warm
    }

    pub fn set_leader(&self, leader: Option<String>) {
        self.inner().leader = leader;
    }

    pub fn leader(&self) -> Option<String> {
        self.inner().leader.clone()
    }

    pub fn set_etcd(&self, etcd: Vec<EtcdMemberStatus>) {
        self.inner().etcd = etcd;
    }

    /// STATUS's `nm`: the leader first, then the standbys.
    pub fn nm_status(&self, me: &str) -> Vec<NmStatus> {
        let inner = self.inner();
        let leader = if inner.term.as_ref().is_some_and(|t| !t.is_cancelled()) {
            Some(me.to_owned())
        } else {
            inner.leader.clone()
        };
        let mut all: Vec<(String, bool)> = inner.members.clone();
        match all.iter_mut().find(|(m, _)| m == me) {
            Some(mine) => mine.1 = inner.warm,
            None => all.push((me.to_owned(), inner.warm)),
        }
        all.sort();
        all.sort_by_key(|(m, _)| Some(m) != leader.as_ref());
        all.into_iter()
            .map(|(address, warm)| {
                let leads = Some(&address) == leader.as_ref();
                let lease_ms_left = if leads && address == me {
                    inner
                        .holds_until
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64
                } else {
                    0
                };
                NmStatus {
                    role: if leads {
                        NmRole::Leader
                    } else {
                        NmRole::Standby
                    },
                    address,
                    lease_ms_left,
                    warm: warm || leads,
                }
            })
            .collect()
    }

    pub fn etcd_status(&self) -> Vec<EtcdMemberStatus> {
        self.inner().etcd.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_holds_only_within_a_term_and_three_quarters_of_its_life() {
        let group = Group::new(Duration::from_secs(2));
        group.renewed(Instant::now());
        assert!(!group.holds_lease(), "a standby never holds it");
        let term = group.begin_term();
        assert!(group.holds_lease());
        group.renewed(Instant::now() - Duration::from_millis(1600));
        assert!(
            group.holds_lease(),
            "a later renewal is not undone by an older one"
        );
        group.end_term("test");
        assert!(term.is_cancelled());
        assert!(!group.holds_lease());
        let _term = group.begin_term();
        let stale = Group::new(Duration::from_secs(2));
        stale.begin_term();
        stale.renewed(Instant::now() - Duration::from_millis(1600));
        assert!(
            !stale.holds_lease(),
            "1.6 s after a renewal a 2 s lease no longer counts"
        );
    }

    #[test]
    fn status_lists_the_leader_first() {
        let group = Group::new(Duration::from_secs(2));
        group.set_members(
            vec![
                ("127.0.0.3:1".into(), false),
                ("127.0.0.2:1".into(), false),
                ("127.0.0.4:1".into(), true),
            ],
            Some("127.0.0.4:1".into()),
        );
        group.set_warm(true);
        let status = group.nm_status("127.0.0.2:1");
        assert_eq!(status[0].address, "127.0.0.4:1");
        assert_eq!(status[0].role, NmRole::Leader);
        assert!(status[1..].iter().all(|s| s.role == NmRole::Standby));
        assert_eq!(status.len(), 3);
        let warm = |address: &str| status.iter().find(|s| s.address == address).unwrap().warm;
        assert!(warm("127.0.0.2:1"), "this nm knows its own copy is loaded");
        assert!(!warm("127.0.0.3:1"), "a standby still loading");
    }
}
