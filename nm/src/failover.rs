//! The failover state machine: who serves each pair, and when that changes.
//!
//! Everything that decides which server of a primary/backup pair serves
//! clients is here, as a pure and deterministic function:
//! [`PairFsm::step`] takes one [`Input`] (a server registered, a server was
//! lost, a catch-up completed, a handover was acknowledged, a record became
//! durable, ...) and returns the [`Decision`]s the daemon carries out (persist
//! this record, promote that server, start a catch-up, hand back, demote, cut
//! a server off). No I/O, no clocks, no locks: the same inputs always give the
//! same decisions, which is what lets `nm/tests/failover_model.rs` explore
//! every interleaving of them.
//!
//! The machine owns the pair's epoch, its serving server and the standby's
//! **in-sync flag** ([`Durable`]); nothing else changes them. The journal
//! keeps the `Durable` part, and an nm restart resumes from it
//! ([`PairFsm::restored`]).
//!
//! # The rule
//!
//! A server becomes serving only if it is in sync: it holds every change the
//! serving server acknowledged up to the moment it failed (in sync mode
//! exactly; in async mode all but the asynchronous window of an ACTIVE pair).
//! When the serving server fails and its partner is not in sync, the pair
//! goes OFFLINE and waits for the serving server to return; only
//! `--unclean-promotion` overrides that, and then what the promoted server
//! lacks comes back as conflict copies when the other one returns.
//!
//! How the flag is kept honest:
//! - it becomes `true` only when a catch-up that started after the standby
//!   registered, while both servers were up, completes (or when a hand-back
//!   completes: writes were paused through its final sync);
//! - it becomes `false` as soon as the standby is lost (or a change could not
//!   be copied to it) while the serving server can still acknowledge changes;
//! - it follows the replication stream's acknowledged position: it becomes
//!   `false` when the serving server reports a change its standby has not
//!   acknowledged for longer than nm's bound (`--max-standby-lag`), which
//!   bounds what async mode's window can lose to a promotion, and a catch-up
//!   that completes while the stream is still behind leaves it `false`
//!   until the stream keeps up again;
//! - a synchronous change is acknowledged without the standby only once that
//!   `false` is durable ([`PairFsm::may_ack_alone`]): an nm restart can never
//!   reload a `true` that was already a lie;
//! - clients are sent to a server only after it acknowledged its role and the
//!   record naming it is durable ([`PairFsm::clients_go_to`]); every role is
//!   handed out under an epoch never handed out before.

use serde::{Deserialize, Serialize};
use shared::proto::PairState;

/// One server of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    Primary,
    Backup,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Backup,
            Side::Backup => Side::Primary,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What survives an nm restart: kept in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Durable {
    /// Bumped at every change of serving server.
    pub epoch: u64,
    /// The server clients are sent to.
    pub serving: Side,
    /// The other server holds everything the serving one acknowledged.
    pub standby_in_sync: bool,
    /// The highest epoch ever offered to a server, recorded before the offer
    /// is made, so that no restart of nm offers one twice.
    pub offered: u64,
}

impl Default for Durable {
    fn default() -> Self {
        Durable {
            epoch: 0,
            serving: Side::Primary,
            standby_in_sync: false,
            offered: 0,
        }
    }
}

/// A change of serving server waiting for its target to take the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoverKind {
    /// The serving server failed; its in-sync partner takes over.
    Promotion,
    /// The returned primary is level again; writes pause while it takes back.
    HandBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handover {
    pub kind: HandoverKind,
    pub to: Side,
    pub epoch: u64,
    /// The record of the offer: the target is asked only once it is durable.
    pub offer_seq: u64,
}

/// What happened, as the daemon tells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A server registered (its control connection is up).
    Registered { side: Side },
    /// A server's control connection closed, or its heartbeats stopped.
    Lost { side: Side },
    /// The catch-up started as `round` brought the standby level.
    CatchUpDone { round: u64 },
    /// The catch-up `round` keeps failing; the operator should look.
    CatchUpStuck { round: u64, reason: String },
    /// A change could not be copied to the standby (queue overflow, a job
    /// that failed for good): it lacks something acknowledged.
    Diverged,
    /// The serving server reported where its replication stream stands, in
    /// `epoch`: `behind` when a change it sent has waited longer than nm's
    /// bound (`--max-standby-lag`) for the standby's acknowledgement.
    StreamPosition { epoch: u64, behind: bool },
    /// The target of a handover took its role.
    HandoverAcked { epoch: u64 },
    /// The target of a handover did not answer or refused.
    HandoverFailed { epoch: u64 },
    /// The journal holds every record up to `seq`.
    Recorded { seq: u64 },
    /// nm has run for a heartbeat timeout: a serving server that has not
    /// registered since nm started counts as failed.
    StartupGraceOver,
}

/// What the daemon must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Journal this state; then feed back `Recorded { seq }`.
    Persist { seq: u64, durable: Durable },
    /// Bring the standby level with the serving server; then feed back
    /// `CatchUpDone { round }` (or `CatchUpStuck`).
    StartCatchUp { round: u64 },
    /// Give `to` the serving role under `epoch` (`SetRole`); feed back
    /// `HandoverAcked` or `HandoverFailed`. `unclean`: `to` is not in sync
    /// (allowed by `--unclean-promotion` only).
    Promote { to: Side, epoch: u64, unclean: bool },
    /// Pause writes, sync in full one last time, then give `to` the serving
    /// role under `epoch`; feed back `HandoverAcked` or `HandoverFailed`.
    HandBack { to: Side, epoch: u64 },
    /// Tell `side` it does not serve (under `epoch`).
    Demote { side: Side, epoch: u64 },
    /// Tell `side` it serves again, writable, under `epoch` (a hand-back failed).
    Resume { side: Side, epoch: u64 },
    /// Close `side`'s control connection: it must register again.
    CutOff { side: Side },
}

/// The state machine of one pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairFsm {
    durable: Durable,
    unclean_promotion: bool,
    /// Control connection up, by [`Side`].
    up: [bool; 2],
    /// Registered at least once since nm started, by [`Side`].
    seen: [bool; 2],
    /// The serving server has taken its role (at registration or by a handover).
    ready: bool,
    handover: Option<Handover>,
    /// The catch-up under way.
    catch_up: Option<u64>,
    last_round: u64,
    persisted_seq: u64,
    recorded_seq: u64,
    /// The record that made the standby out of sync.
    out_of_sync_seq: u64,
    /// The record that made the serving server serving.
    serve_seq: u64,
    /// Why the operator should look, if they should.
    attention: Option<String>,
    /// nm has run for a heartbeat timeout (see [`Input::StartupGraceOver`]).
    grace_over: bool,
    /// The serving server's last report of its stream, in this epoch, said
    /// the standby is behind (see [`Input::StreamPosition`]).
    stream_behind: bool,
}

impl PairFsm {
    /// A pair nm has never seen.
    pub fn new(unclean_promotion: bool) -> Self {
        Self::restored(Durable::default(), unclean_promotion)
    }

    /// A pair as the journal left it (nm restarted): nothing is up yet.
    pub fn restored(durable: Durable, unclean_promotion: bool) -> Self {
        PairFsm {
            durable,
            unclean_promotion,
            up: [false; 2],
            seen: [false; 2],
            ready: false,
            handover: None,
            catch_up: None,
            last_round: 0,
            persisted_seq: 0,
            recorded_seq: 0,
            out_of_sync_seq: 0,
            serve_seq: 0,
            attention: None,
            grace_over: false,
            stream_behind: false,
        }
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn epoch(&self) -> u64 {
        self.durable.epoch
    }

    pub fn serving_side(&self) -> Side {
        self.durable.serving
    }

    pub fn standby_side(&self) -> Side {
        self.durable.serving.other()
    }

    pub fn is_up(&self, side: Side) -> bool {
        self.up[side.index()]
    }

    pub fn standby_in_sync(&self) -> bool {
        self.durable.standby_in_sync
    }

    pub fn handover(&self) -> Option<Handover> {
        self.handover
    }

    /// The handover under way, once its offer is on record (the daemon
    /// carries decisions out in order, so it asks the target only then).
    pub fn handover_on_record(&self) -> Option<Handover> {
        self.handover.filter(|h| self.recorded_seq >= h.offer_seq)
    }

    pub fn catch_up_round(&self) -> Option<u64> {
        self.catch_up
    }

    /// The serving server's last report said its standby is behind.
    pub fn stream_behind(&self) -> bool {
        self.stream_behind
    }

    pub fn attention(&self) -> Option<&str> {
        self.attention.as_deref()
    }

    /// Writes are paused for a hand-back's final sync.
    pub fn paused(&self) -> bool {
        matches!(
            self.handover,
            Some(Handover {
                kind: HandoverKind::HandBack,
                ..
            })
        )
    }

    /// Where clients go now, under which epoch: only a server that is up,
    /// has taken its role, and whose naming record is durable.
    pub fn clients_go_to(&self) -> Option<(Side, u64)> {
        let s = self.durable.serving;
        (self.up[s.index()]
            && self.ready
            && self.handover.is_none()
            && self.recorded_seq >= self.serve_seq)
            .then_some((s, self.durable.epoch))
    }

    /// The role a registering server is given: (epoch, serving, writable).
    pub fn role_of(&self, side: Side) -> (u64, bool, bool) {
        let serving = side == self.durable.serving && self.ready && self.handover.is_none();
        (self.durable.epoch, serving, serving)
    }

    /// Whether a synchronous change may be acknowledged without the standby:
    /// only once the journal says the standby is out of sync.
    pub fn may_ack_alone(&self) -> bool {
        !self.durable.standby_in_sync && self.recorded_seq >= self.out_of_sync_seq
    }

    /// The pair's state, as STATUS and the events show it.
    pub fn state(&self) -> PairState {
        let s = self.durable.serving;
        let (serving_up, standby_up) = (self.up[s.index()], self.up[s.other().index()]);
        if let Some(h) = self.handover {
            return match (h.kind, h.to) {
                (HandoverKind::HandBack, _) => PairState::Recovering,
                (HandoverKind::Promotion, Side::Backup) => PairState::PrimaryFailed,
                (HandoverKind::Promotion, Side::Primary) => PairState::BackupFailed,
            };
        }
        match (serving_up, standby_up) {
            (true, true) if s == Side::Backup => PairState::Recovering,
            // In sync, and no catch-up under way (after an nm restart the
            // standby is still promotable, but changes whose notices died
            // with nm are copied before the pair counts as level).
            (true, true) if self.durable.standby_in_sync && self.catch_up.is_none() => {
                PairState::Active
            }
            (true, true) => PairState::Syncing,
            (true, false) if !self.seen[s.other().index()] && s == Side::Primary => {
                PairState::Unpaired
            }
            (true, false) if s == Side::Primary => PairState::BackupFailed,
            (true, false) => PairState::PrimaryFailed,
            (false, true) if !self.seen[s.index()] && self.durable.epoch == 0 => {
                PairState::Unpaired
            }
            (false, _) => PairState::Offline,
        }
    }

    /// Why the pair is not serving, when it is not (for STATUS and events).
    pub fn offline_reason(&self, name: impl Fn(Side) -> String) -> Option<String> {
        let s = self.durable.serving;
        if self.up[s.index()] || self.handover.is_some() {
            return None;
        }
        let other = s.other();
        Some(if self.up[other.index()] && !self.durable.standby_in_sync {
            format!(
                "{} (serving) is down and {} is not in sync: waiting for {} to return",
                name(s),
                name(other),
                name(s)
            )
        } else {
            format!("{} (serving) is down: waiting for it to return", name(s))
        })
    }

    /// Applies one input; returns what the daemon must do, in order.
    pub fn step(&mut self, input: Input) -> Vec<Decision> {
        let mut out = Vec::new();
        match input {
            Input::Registered { side } => self.registered(side, &mut out),
            Input::Lost { side } => self.lost(side, &mut out),
            Input::CatchUpDone { round } => {
                let both_up = self.up.iter().all(|u| *u);
                if self.catch_up == Some(round) && both_up && self.handover.is_none() {
                    self.catch_up = None;
                    self.attention = None;
                    if self.stream_behind {
                        // Level with the catch-up's mark, but the stream
                        // still leaves changes unacknowledged past the
                        // bound: in sync once it keeps up (a new round then).
                        return out;
                    }
                    self.set_in_sync(true, &mut out);
                    if self.durable.serving == Side::Backup {
                        // The primary is level: it takes back its pair.
                        let (epoch, offer_seq) = self.offer_epoch(&mut out);
                        self.handover = Some(Handover {
                            kind: HandoverKind::HandBack,
                            to: Side::Primary,
                            epoch,
                            offer_seq,
                        });
                        out.push(Decision::HandBack {
                            to: Side::Primary,
                            epoch,
                        });
                    }
                }
            }
            Input::CatchUpStuck { round, reason } => {
                if self.catch_up == Some(round) {
                    self.attention = Some(reason);
                }
            }
            Input::Diverged => {
                if self.up[self.durable.serving.index()] {
                    self.set_in_sync(false, &mut out);
                    if self.up[self.standby_side().index()] && self.handover.is_none() {
                        self.start_catch_up(&mut out);
                    }
                }
            }
            Input::StreamPosition { epoch, behind } => {
                self.stream_position(epoch, behind, &mut out)
            }
            Input::HandoverAcked { epoch } => self.handover_acked(epoch, &mut out),
            Input::HandoverFailed { epoch } => self.handover_failed(epoch, &mut out),
            Input::Recorded { seq } => self.recorded_seq = self.recorded_seq.max(seq),
            Input::StartupGraceOver => {
                self.grace_over = true;
                self.try_promote(&mut out);
            }
        }
        out
    }

    fn registered(&mut self, side: Side, out: &mut Vec<Decision>) {
        let was_up = self.up[side.index()];
        self.up[side.index()] = true;
        // A new stream (its reports will say where it stands).
        self.stream_behind = false;
        self.seen[side.index()] = true;
        if side == self.durable.serving {
            if self.handover.is_some() {
                // Its partner is taking over (a promotion under way): it
                // returns as the standby once that is done.
                return;
            }
            self.ready = true;
            self.attention = None;
            if self.up[side.other().index()] {
                self.start_catch_up(out);
            }
            return;
        }
        // The standby.
        if self.handover.is_some_and(|h| h.to == side) {
            // It registered again while taking over: whatever it was told is
            // void (its registration answer gives it its role).
            self.handover = None;
            self.resume_serving(out);
        }
        if was_up {
            // Registered again without nm seeing it go: it may have missed changes.
            self.standby_lost(out);
        }
        if self.up[self.durable.serving.index()] {
            if self.handover.is_none() {
                self.start_catch_up(out);
            }
        } else if self.seen[self.durable.serving.index()] || self.grace_over {
            // After an nm restart the serving server gets a heartbeat
            // timeout to register before its partner takes over.
            self.try_promote(out);
        }
    }

    /// The in-sync flag follows the stream's acknowledged position: a
    /// standby the stream leaves behind by more than the bound is out of
    /// sync at once (so neither a promotion nor async mode's window can
    /// reach past the bound), and becomes in sync again only through a
    /// catch-up that completes while the stream keeps up.
    fn stream_position(&mut self, epoch: u64, behind: bool, out: &mut Vec<Decision>) {
        let serving_up = self.up[self.durable.serving.index()];
        let standby_up = self.up[self.standby_side().index()];
        if epoch != self.durable.epoch || !serving_up || self.handover.is_some() {
            return;
        }
        if behind == self.stream_behind {
            return;
        }
        self.stream_behind = behind;
        if behind {
            self.set_in_sync(false, out);
            // A new round even if one is under way: that one's copy may
            // predate the overdue change, which the stream may yet hand to
            // nm's jobs (the asynchronous window) instead of delivering.
            if standby_up {
                self.start_catch_up(out);
            }
        } else if standby_up && !self.durable.standby_in_sync {
            // A new round, even if one is under way: changes that became
            // overdue after that one's copy was taken may since have been
            // handed to nm's jobs (the asynchronous window) rather than
            // delivered.
            self.start_catch_up(out);
        }
    }

    fn lost(&mut self, side: Side, out: &mut Vec<Decision>) {
        if !self.up[side.index()] {
            return;
        }
        self.up[side.index()] = false;
        self.catch_up = None;
        self.stream_behind = false;
        if side == self.durable.serving {
            self.ready = false;
            if self.paused() {
                // The hand-back cannot finish: its source is gone.
                self.handover = None;
            }
            self.try_promote(out);
        } else {
            if self.handover.is_some_and(|h| h.to == side) {
                self.abandon_handover(out);
            }
            self.standby_lost(out);
        }
    }

    /// The standby is gone (or must be caught up again): from now on the
    /// serving server may acknowledge changes it does not have.
    fn standby_lost(&mut self, out: &mut Vec<Decision>) {
        self.catch_up = None;
        if self.up[self.durable.serving.index()] {
            self.set_in_sync(false, out);
        }
    }

    /// The serving server is down: promote its partner if it is in sync.
    fn try_promote(&mut self, out: &mut Vec<Decision>) {
        let to = self.durable.serving.other();
        if self.handover.is_some() || self.up[self.durable.serving.index()] || !self.up[to.index()]
        {
            return;
        }
        let unclean = !self.durable.standby_in_sync;
        if unclean && !self.unclean_promotion {
            return; // OFFLINE until the serving server returns
        }
        let (epoch, offer_seq) = self.offer_epoch(out);
        self.handover = Some(Handover {
            kind: HandoverKind::Promotion,
            to,
            epoch,
            offer_seq,
        });
        out.push(Decision::Promote { to, epoch, unclean });
    }

    fn handover_acked(&mut self, epoch: u64, out: &mut Vec<Decision>) {
        let Some(h) = self.handover.filter(|h| h.epoch == epoch) else {
            return;
        };
        self.handover = None;
        let from = self.durable.serving;
        self.durable.serving = h.to;
        self.durable.epoch = epoch;
        self.ready = true;
        self.stream_behind = false;
        self.attention = None;
        // A hand-back paused writes through its final sync: both are level.
        // A promoted server starts changing files its partner lacks.
        let in_sync = h.kind == HandoverKind::HandBack && self.up[from.index()];
        self.durable.standby_in_sync = in_sync;
        self.persist(out);
        if !in_sync {
            self.out_of_sync_seq = self.persisted_seq;
        }
        self.serve_seq = self.persisted_seq;
        if h.kind == HandoverKind::HandBack {
            out.push(Decision::Demote { side: from, epoch });
        }
        if self.up[from.index()] && !in_sync {
            self.start_catch_up(out);
        }
    }

    fn handover_failed(&mut self, epoch: u64, out: &mut Vec<Decision>) {
        if self.handover.is_some_and(|h| h.epoch == epoch) {
            self.abandon_handover(out);
        }
    }

    /// A handover that will not complete: its target may have taken the role
    /// (the answer was lost), so it is told otherwise and cut off, and the
    /// epoch it was offered is never used again.
    fn abandon_handover(&mut self, out: &mut Vec<Decision>) {
        let Some(h) = self.handover.take() else {
            return;
        };
        out.push(Decision::Demote {
            side: h.to,
            epoch: h.epoch,
        });
        if self.up[h.to.index()] {
            out.push(Decision::CutOff { side: h.to });
            self.up[h.to.index()] = false;
        }
        self.resume_serving(out);
        self.standby_lost(out);
    }

    /// After a handover that will not happen: the serving server, if up,
    /// serves (again), writable.
    fn resume_serving(&mut self, out: &mut Vec<Decision>) {
        let serving = self.durable.serving;
        if self.up[serving.index()] {
            self.ready = true;
            out.push(Decision::Resume {
                side: serving,
                epoch: self.durable.epoch,
            });
        }
    }

    fn start_catch_up(&mut self, out: &mut Vec<Decision>) {
        self.last_round += 1;
        self.catch_up = Some(self.last_round);
        out.push(Decision::StartCatchUp {
            round: self.last_round,
        });
    }

    /// A new epoch, never offered before, recorded before anyone hears of it.
    fn offer_epoch(&mut self, out: &mut Vec<Decision>) -> (u64, u64) {
        self.durable.offered = self.durable.offered.max(self.durable.epoch) + 1;
        self.persist(out);
        (self.durable.offered, self.persisted_seq)
    }

    fn set_in_sync(&mut self, in_sync: bool, out: &mut Vec<Decision>) {
        if self.durable.standby_in_sync == in_sync {
            return;
        }
        self.durable.standby_in_sync = in_sync;
        self.persist(out);
        if !in_sync {
            self.out_of_sync_seq = self.persisted_seq;
        }
    }

    fn persist(&mut self, out: &mut Vec<Decision>) {
        self.persisted_seq += 1;
        out.push(Decision::Persist {
            seq: self.persisted_seq,
            durable: self.durable.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Side::*;

    fn persist_of(d: &[Decision]) -> Option<(u64, Durable)> {
        d.iter().find_map(|d| match d {
            Decision::Persist { seq, durable } => Some((*seq, durable.clone())),
            _ => None,
        })
    }

    fn active_pair() -> PairFsm {
        let mut f = PairFsm::new(false);
        f.step(Input::Registered { side: Primary });
        let d = f.step(Input::Registered { side: Backup });
        assert_eq!(d, [Decision::StartCatchUp { round: 1 }]);
        caught_up_to_active(&mut f, 1);
        f
    }

    /// Catch-up `round` ends: the standby is recorded in sync and the pair ACTIVE.
    fn caught_up_to_active(f: &mut PairFsm, round: u64) {
        let d = f.step(Input::CatchUpDone { round });
        let (seq, durable) = persist_of(&d).unwrap();
        assert!(durable.standby_in_sync);
        f.step(Input::Recorded { seq });
        assert_eq!(f.state(), PairState::Active);
    }

    #[test]
    fn an_in_sync_backup_is_promoted_and_serves_once_recorded() {
        let mut f = active_pair();
        let d = f.step(Input::Lost { side: Primary });
        let (seq, offered) = persist_of(&d).unwrap();
        assert_eq!(
            offered.offered, 1,
            "the epoch is on record before it is offered"
        );
        assert_eq!(
            d.last(),
            Some(&Decision::Promote {
                to: Backup,
                epoch: 1,
                unclean: false
            })
        );
        assert_eq!(f.handover_on_record(), None);
        f.step(Input::Recorded { seq });
        assert!(f.handover_on_record().is_some());
        assert_eq!(f.clients_go_to(), None);
        let d = f.step(Input::HandoverAcked { epoch: 1 });
        let (seq, durable) = persist_of(&d).unwrap();
        assert_eq!(durable.serving, Backup);
        assert!(!durable.standby_in_sync);
        assert_eq!(f.clients_go_to(), None, "not before the record is durable");
        f.step(Input::Recorded { seq });
        assert_eq!(f.clients_go_to(), Some((Backup, 1)));
        assert_eq!(f.state(), PairState::PrimaryFailed);
    }

    #[test]
    fn a_backup_that_missed_changes_is_not_promoted() {
        let mut f = active_pair();
        let d = f.step(Input::Lost { side: Backup });
        let (seq, _) = persist_of(&d).unwrap();
        assert!(!f.may_ack_alone(), "not before the journal says so");
        f.step(Input::Recorded { seq });
        assert!(f.may_ack_alone());
        assert_eq!(f.state(), PairState::BackupFailed);
        f.step(Input::Registered { side: Backup });
        assert_eq!(f.state(), PairState::Syncing);
        let d = f.step(Input::Lost { side: Primary });
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(f.state(), PairState::Offline);
        assert!(f.offline_reason(|s| format!("{s:?}")).is_some());
        // The primary returns and serves again; the backup catches up.
        let d = f.step(Input::Registered { side: Primary });
        assert_eq!(d, [Decision::StartCatchUp { round: 3 }]);
        assert_eq!(f.clients_go_to(), Some((Primary, 0)));
    }

    #[test]
    fn a_standby_the_stream_leaves_behind_is_out_of_sync_until_a_catch_up_while_it_keeps_up() {
        let mut f = active_pair();
        let epoch = f.epoch();
        assert!(f
            .step(Input::StreamPosition {
                epoch,
                behind: false
            })
            .is_empty());
        // A report of another epoch is not this stream's.
        assert!(f
            .step(Input::StreamPosition {
                epoch: epoch + 1,
                behind: true
            })
            .is_empty());
        let d = f.step(Input::StreamPosition {
            epoch,
            behind: true,
        });
        let (seq, durable) = persist_of(&d).unwrap();
        assert!(!durable.standby_in_sync);
        assert_eq!(d.last(), Some(&Decision::StartCatchUp { round: 2 }));
        f.step(Input::Recorded { seq });
        assert_eq!(f.state(), PairState::Syncing);
        assert!(f.may_ack_alone());
        // The catch-up completes while the stream is still behind: not yet.
        assert!(f.step(Input::CatchUpDone { round: 2 }).is_empty());
        assert!(!f.standby_in_sync());
        // The primary dies now: the backup lacks acknowledged changes.
        let mut dead = f.clone();
        assert!(dead.step(Input::Lost { side: Primary }).is_empty());
        assert_eq!(dead.state(), PairState::Offline);
        // The stream keeps up again: a new round, and in sync once it is done.
        let d = f.step(Input::StreamPosition {
            epoch,
            behind: false,
        });
        assert_eq!(d, [Decision::StartCatchUp { round: 3 }]);
        caught_up_to_active(&mut f, 3);
    }

    #[test]
    fn a_stuck_catch_up_asks_for_the_operator_and_promotes_nothing() {
        let mut f = active_pair();
        f.step(Input::Lost { side: Backup });
        let d = f.step(Input::Registered { side: Backup });
        let Some(Decision::StartCatchUp { round }) = d.last().cloned() else {
            panic!("{d:?}")
        };
        f.step(Input::CatchUpStuck {
            round,
            reason: "disk full".into(),
        });
        assert_eq!(f.attention(), Some("disk full"));
        assert_eq!(f.state(), PairState::Syncing);
        assert!(f.step(Input::Lost { side: Primary }).is_empty());
        assert_eq!(f.state(), PairState::Offline);
    }

    #[test]
    fn unclean_promotion_is_allowed_only_when_asked() {
        let mut f = PairFsm::new(true);
        f.step(Input::Registered { side: Primary });
        f.step(Input::Registered { side: Backup });
        let d = f.step(Input::Lost { side: Primary });
        assert_eq!(
            d.last(),
            Some(&Decision::Promote {
                to: Backup,
                epoch: 1,
                unclean: true
            })
        );
    }

    #[test]
    fn a_returned_primary_takes_back_once_level_and_a_failed_handover_burns_its_epoch() {
        let mut f = active_pair();
        f.step(Input::Lost { side: Primary });
        let d = f.step(Input::HandoverAcked { epoch: 1 });
        f.step(Input::Recorded {
            seq: persist_of(&d).unwrap().0,
        });
        let d = f.step(Input::Registered { side: Primary });
        let Decision::StartCatchUp { round } = d[0] else {
            panic!("{d:?}")
        };
        assert_eq!(f.state(), PairState::Recovering);
        let d = f.step(Input::CatchUpDone { round });
        assert!(d.contains(&Decision::HandBack {
            to: Primary,
            epoch: 2
        }));
        assert!(f.paused());
        let d = f.step(Input::HandoverFailed { epoch: 2 });
        assert!(d.contains(&Decision::CutOff { side: Primary }));
        assert!(d.contains(&Decision::Resume {
            side: Backup,
            epoch: 1
        }));
        let d = f.step(Input::Registered { side: Primary });
        let Decision::StartCatchUp { round } = d[0] else {
            panic!("{d:?}")
        };
        let d = f.step(Input::CatchUpDone { round });
        assert!(
            d.contains(&Decision::HandBack {
                to: Primary,
                epoch: 3
            }),
            "epoch 2 was offered once and is not reused: {d:?}"
        );
        let d = f.step(Input::HandoverAcked { epoch: 3 });
        let (seq, durable) = persist_of(&d).unwrap();
        assert_eq!(
            durable,
            Durable {
                epoch: 3,
                serving: Primary,
                standby_in_sync: true,
                offered: 3,
            }
        );
        assert!(d.contains(&Decision::Demote {
            side: Backup,
            epoch: 3
        }));
        f.step(Input::Recorded { seq });
        assert_eq!(f.state(), PairState::Active);
    }

    #[test]
    fn after_a_restart_the_journal_decides() {
        let out_of_sync = Durable {
            epoch: 4,
            serving: Primary,
            standby_in_sync: false,
            offered: 5,
        };
        let mut f = PairFsm::restored(out_of_sync.clone(), false);
        assert!(f.step(Input::Registered { side: Backup }).is_empty());
        assert_eq!(f.state(), PairState::Offline);
        let in_sync = Durable {
            standby_in_sync: true,
            ..Durable::default()
        };
        let mut f = PairFsm::restored(in_sync, false);
        let d = f.step(Input::Registered { side: Backup });
        assert!(d.is_empty(), "the serving server may still register: {d:?}");
        let d = f.step(Input::StartupGraceOver);
        assert!(matches!(
            d[..],
            [
                Decision::Persist { .. },
                Decision::Promote { to: Backup, .. }
            ]
        ));
        let mut f = PairFsm::restored(out_of_sync, true);
        f.step(Input::StartupGraceOver);
        let d = f.step(Input::Registered { side: Backup });
        assert!(
            d.contains(&Decision::Promote {
                to: Backup,
                epoch: 6,
                unclean: true
            }),
            "an epoch offered before the restart is not offered again: {d:?}"
        );
    }
}
