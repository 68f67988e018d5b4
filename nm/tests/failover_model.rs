//! An exhaustive model check of the failover state machine ([`nm::failover`]).
//!
//! The world around one pair is modelled just enough to state what the
//! machine must guarantee: two storage servers (alive or killed, registered
//! or not, the role each was told, the writes each holds), nm's journal (what
//! is durable and what is still being written), client writes acknowledged in
//! sync or async mode, catch-ups, handovers, nm restarts, and servers that
//! hang (nm loses them while they are still running). Every interleaving of
//! those actions is explored breadth-first to 12 steps (`MODEL_DEPTH=n` for more), and in every
//! reachable state:
//!
//! - **(a)** every acknowledged write is on every server that can become
//!   serving (the serving one, an in-sync standby, in memory or in the
//!   journal); in async mode, all but the asynchronous window of a pair whose
//!   standby was in sync;
//! - **(b)** no epoch is ever handed to two servers;
//! - **(c)** once the pair is ACTIVE, every acknowledged write is on the
//!   serving server or in a reported conflict copy;
//! - **(d)** once both servers are up and nothing fails, the pair reaches
//!   ACTIVE (checked by letting the world heal from every reachable state);
//! - **(e)** in async mode, a write the serving server reported overdue on
//!   its stream (unacknowledged past nm's `--max-standby-lag`) is outside
//!   the asynchronous window from the moment nm's record of the report is
//!   durable: it is on every server that can become serving.
//!
//! The replication stream (`ss::stream`) is modelled as a way to copy the
//! serving server's writes to its partner that nm takes no part in, and in
//! sync mode as a way to acknowledge a write once the partner has it, even
//! while nm counts the partner lost: the machine's in-sync flag moves
//! with catch-ups, losses and the stream's reported position (below), and
//! the checks above must hold with the
//! stream delivering at any moment. Its three steps are separate, because
//! each is a window: a change is sent (`StreamSend`: the partner has
//! received it, in memory, and loses it if killed), made durable there
//! (`StreamDurable`: its log's fdatasync, a group commit of all it has
//! received) and acknowledged (`StreamAck`: the serving server learns the
//! partner's acknowledged position and drops those changes from its record
//! of what the standby lacks, so a later catch-up does not compare them).
//! The serving server's reports of the stream's position are two more
//! actions: `StreamBehind` (a write its partner lacks is overdue: nm's
//! `Input::StreamPosition`, behind) and `StreamLevel` (it keeps up again).
//! `a_standby_promoted_past_an_overdue_acknowledgement_is_caught` has nm
//! ignore them and must find (e) broken.
//! `an_acknowledgement_before_durability_is_caught` breaks the order (the
//! partner acknowledges what it has only received) and must find a
//! catch-up that leaves an in-sync standby without an acknowledged write.
//!
//! A catch-up is modelled by what the sync guarantees (see
//! `nm::replication`): what only the target holds is copied back or kept as
//! a conflict copy before the target is overwritten, so data is a set that
//! only grows. What it compares is modelled as the code decides it (see
//! `nm::replication::catch_up` and `ss::unconfirmed`): only the writes the serving
//! server recorded as not confirmed by its standby, when the server holds a
//! record levelled in the epoch it serves in; everything otherwise. The
//! server's record is kept in its memory: lost when it restarts, kept when
//! nm restarts (a new nm leader asks for it), shrunk by the stream's
//! acknowledgements and by a sync's level. So the checks below also hold
//! for a catch-up that compares only what the record names.
//!
//! `a_promotion_without_the_in_sync_check_is_caught` runs the same check with
//! the rule broken (`--unclean-promotion` in sync mode) and must find a
//! state where an acknowledged write is missing from the server promoted;
//! `a_record_that_misses_a_write_is_caught` does the same with a serving
//! server that records no write, and must find a catch-up that leaves an
//! in-sync standby without one.

use nm::failover::{Decision, Durable, HandoverKind, Input, PairFsm, Side};
use shared::proto::PairState;
use std::collections::{HashSet, VecDeque};

/// Steps explored from the start (`MODEL_DEPTH` overrides; at least 12 in CI).
fn depth() -> usize {
    std::env::var("MODEL_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(12)
}
const MAX_WRITES: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Action {
    Kill(Side),
    Restart(Side),
    Register(Side),
    /// nm loses the server: its connection closed, or it hung past the timeout.
    Lose(Side),
    Write,
    Replicate,
    /// The serving server's replication stream sends what it holds to its
    /// partner, without nm (see `ss::stream`): whenever both run and the
    /// partner does not serve, whatever nm thinks of either. The partner
    /// has it in memory only.
    StreamSend,
    /// The partner's log makes what it received durable.
    StreamDurable,
    /// The serving server learns the partner's acknowledged position.
    StreamAck,
    /// The serving server reports to nm a change its partner has left
    /// unacknowledged past nm's bound (`Input::StreamPosition`, behind).
    StreamBehind,
    /// The serving server reports that its partner keeps up again.
    StreamLevel,
    CatchUpCopy,
    CatchUpDone,
    Diverge,
    AckHandover,
    FailHandover,
    Flush,
    NmRestart,
    /// nm has run for a heartbeat timeout since it started.
    GraceOver,
}

const ACTIONS: [Action; 23] = [
    Action::Kill(Side::Primary),
    Action::Kill(Side::Backup),
    Action::Restart(Side::Primary),
    Action::Restart(Side::Backup),
    Action::Register(Side::Primary),
    Action::Register(Side::Backup),
    Action::Lose(Side::Primary),
    Action::Lose(Side::Backup),
    Action::Write,
    Action::Replicate,
    Action::StreamSend,
    Action::StreamDurable,
    Action::StreamAck,
    Action::StreamBehind,
    Action::StreamLevel,
    Action::CatchUpCopy,
    Action::CatchUpDone,
    Action::Diverge,
    Action::AckHandover,
    Action::FailHandover,
    Action::Flush,
    Action::NmRestart,
    Action::GraceOver,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Server {
    alive: bool,
    /// Its control connection is open (it registered and was not cut off).
    registered: bool,
    /// The epoch it was told to serve under; `None`: not serving.
    serving: Option<u64>,
    /// The writes it holds, one bit each.
    data: u8,
    /// The epoch in which a sync last levelled its standby with it, while
    /// it served (`ss::unconfirmed`); `None` after its restart.
    level: Option<u64>,
    /// Its writes its standby has not confirmed since that level.
    pending: u8,
    /// Writes it sent on its stream, not acknowledged yet.
    streamed: u8,
    /// Writes it received on a stream and holds in memory only (lost if
    /// it is killed), and writes it has made durable since, to acknowledge.
    received: u8,
    to_ack: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    fsm: PairFsm,
    /// What the journal holds on disk.
    journal: Durable,
    /// The last record handed to the journal, not yet durable.
    unflushed: Option<(u64, Durable)>,
    servers: [Server; 2],
    /// The round whose copy has been made.
    copied: Option<u64>,
    next_write: u8,
    acked: u8,
    /// Acknowledged in async mode while the standby counted as in sync, not copied yet.
    window: u8,
    conflicts: u8,
    /// (epoch, side) of every serving role handed out.
    grants: Vec<(u64, Side)>,
    /// Writes made since the last catch-up's copy.
    since_copy: u8,
    unclean: bool,
    /// The broken rule: a serving server records none of its writes.
    records_nothing: bool,
    /// The broken stream: a partner acknowledges what it only received.
    acks_on_receipt: bool,
    /// Acknowledged writes the serving server reported overdue on its
    /// stream, once nm has durably recorded what it made of the report
    /// (property (e)); and those whose record is not durable yet.
    overdue: u8,
    overdue_unrecorded: u8,
    /// The broken reading of the position: nm ignores the reports.
    ignores_position: bool,
}

fn bit(i: u8) -> u8 {
    1 << i
}

impl World {
    fn new(unclean: bool, records_nothing: bool, acks_on_receipt: bool) -> Self {
        let server = Server {
            alive: true,
            registered: false,
            serving: None,
            data: 0,
            level: None,
            pending: 0,
            streamed: 0,
            received: 0,
            to_ack: 0,
        };
        World {
            fsm: PairFsm::new(unclean),
            journal: Durable::default(),
            unflushed: None,
            servers: [server.clone(), server],
            copied: None,
            next_write: 0,
            acked: 0,
            window: 0,
            conflicts: 0,
            grants: Vec::new(),
            since_copy: 0,
            unclean,
            records_nothing,
            acks_on_receipt,
            overdue: 0,
            overdue_unrecorded: 0,
            ignores_position: false,
        }
    }

    fn server(&mut self, side: Side) -> &mut Server {
        &mut self.servers[side as usize]
    }

    fn connected(&self, side: Side) -> bool {
        let s = &self.servers[side as usize];
        s.alive && s.registered
    }

    /// Whether the serving server's stream reaches `target`: it runs and does
    /// not serve. (The real standby also wants the partner nm named and the
    /// same epoch; the model lets the stream deliver more often than that.)
    fn streams_to(&self, target: Side) -> bool {
        let t = &self.servers[target as usize];
        let source = &self.servers[target.other() as usize];
        t.alive && t.serving.is_none() && source.alive && source.serving.is_some()
    }

    /// The open stream, as (source, target): from the server that serves
    /// to its partner.
    fn stream(&self) -> Option<(Side, Side)> {
        let source = [Side::Primary, Side::Backup]
            .into_iter()
            .find(|side| self.servers[*side as usize].serving.is_some())?;
        self.streams_to(source.other())
            .then_some((source, source.other()))
    }

    /// A stream ends because a server was killed: what was sent and not
    /// acknowledged is handed to nm (the source's record keeps it), and the
    /// partner's pending acknowledgements are never read. (A stream that
    /// ends otherwise keeps its bits here; an acknowledgement settled later
    /// is still true, since only what is durable on the partner is ever
    /// acknowledged, so this only trims the state space.)
    fn stream_broke(&mut self) {
        for s in &mut self.servers {
            s.streamed = 0;
            s.to_ack = 0;
        }
    }

    fn grant(&mut self, side: Side, epoch: u64) {
        self.server(side).serving = Some(epoch);
        if !self.grants.contains(&(epoch, side)) {
            self.grants.push((epoch, side));
            self.grants.sort();
        }
    }

    fn step(&mut self, input: Input) {
        let decisions = self.fsm.step(input);
        for d in decisions {
            match d {
                Decision::Persist { seq, durable } => self.unflushed = Some((seq, durable)),
                Decision::StartCatchUp { .. } => {}
                Decision::Promote { .. } | Decision::HandBack { .. } => {}
                Decision::Demote { side, .. } => self.server(side).serving = None,
                Decision::Resume { side, epoch } => {
                    if self.connected(side) {
                        self.grant(side, epoch);
                    }
                }
                Decision::CutOff { side } => {
                    let s = self.server(side);
                    s.registered = false;
                    s.serving = None;
                }
            }
        }
    }

    /// The world after `action`, if it can happen now.
    fn next(&self, action: Action, mode: Mode) -> Option<World> {
        let mut w = self.clone();
        match action {
            Action::Kill(side) => {
                let s = w.server(side);
                if !s.alive {
                    return None;
                }
                s.alive = false;
                s.registered = false;
                s.serving = None;
                // What it had only received is gone; its stream broke.
                s.received = 0;
                w.stream_broke();
            }
            Action::Restart(side) => {
                let s = w.server(side);
                if s.alive {
                    return None;
                }
                s.alive = true;
                // Its record of what the standby lacks was in memory.
                s.level = None;
                s.pending = 0;
            }
            Action::Register(side) => {
                let s = w.server(side);
                if !s.alive || s.registered {
                    return None;
                }
                s.registered = true;
                w.step(Input::Registered { side });
                let (epoch, serving, _) = w.fsm.role_of(side);
                if serving {
                    w.grant(side, epoch);
                } else {
                    w.server(side).serving = None;
                }
            }
            Action::Lose(side) => {
                if !w.fsm.is_up(side) {
                    return None;
                }
                // Cut off: its lease has run out by the time nm acts.
                let s = w.server(side);
                s.registered = false;
                s.serving = None;
                w.step(Input::Lost { side });
            }
            Action::Write => {
                let (side, epoch) = w.fsm.clients_go_to()?;
                if w.next_write >= MAX_WRITES
                    || !w.connected(side)
                    || w.servers[side as usize].serving != Some(epoch)
                {
                    return None;
                }
                let b = bit(w.next_write);
                w.next_write += 1;
                w.server(side).data |= b;
                w.since_copy |= b;
                if !w.records_nothing {
                    w.server(side).pending |= b;
                }
                let standby = side.other();
                match mode {
                    // On the replication stream: acknowledged once the
                    // partner has it, whatever nm thinks of the partner.
                    // (The broken stream acknowledges what the partner has
                    // only received, in memory.)
                    Mode::Sync if w.streams_to(standby) => {
                        match w.acks_on_receipt {
                            true => w.server(standby).received |= b,
                            false => w.server(standby).data |= b,
                        }
                        w.server(side).pending &= !b;
                        w.acked |= b;
                    }
                    Mode::Sync => {
                        // While nm counts the standby up, the change waits for
                        // it (a job copies it, or the job fails and the
                        // client gets an error); once nm has lost it, the
                        // change is acknowledged alone when the journal allows.
                        if w.fsm.is_up(standby) {
                            if w.connected(standby) {
                                w.server(standby).data |= b;
                                w.acked |= b;
                            }
                        } else if w.fsm.may_ack_alone() {
                            w.acked |= b;
                        }
                    }
                    Mode::Async => {
                        // Acknowledged at once. While nm (in memory or on
                        // disk) still counts the standby in sync, this is
                        // the asynchronous window.
                        w.acked |= b;
                        if w.fsm.standby_in_sync() || w.journal.standby_in_sync {
                            w.window |= b;
                        }
                    }
                }
            }
            Action::Replicate => {
                let (side, _) = w.fsm.clients_go_to()?;
                let standby = side.other();
                if mode != Mode::Async
                    || !w.fsm.is_up(standby)
                    || !w.connected(standby)
                    || !w.connected(side)
                {
                    return None;
                }
                let data = w.servers[side as usize].data;
                if w.servers[standby as usize].data & data == data {
                    return None;
                }
                w.server(standby).data |= data;
                w.window &= !data;
            }
            Action::StreamSend => {
                let (source, target) = w.stream()?;
                let t = &w.servers[target as usize];
                let data = w.servers[source as usize].data & !(t.data | t.received);
                if data == 0 {
                    return None;
                }
                w.server(target).received |= data;
                w.server(source).streamed |= data;
            }
            Action::StreamDurable => {
                let (_, target) = w.stream()?;
                let t = w.server(target);
                let durable = t.received;
                if durable == 0 {
                    return None;
                }
                t.data |= durable;
                t.to_ack |= durable;
                t.received = 0;
                w.window &= !durable;
            }
            Action::StreamAck => {
                let (source, target) = w.stream()?;
                let t = &w.servers[target as usize];
                let acked = match w.acks_on_receipt {
                    true => t.to_ack | t.received,
                    false => t.to_ack,
                } & w.servers[source as usize].streamed;
                if acked == 0 {
                    return None;
                }
                w.server(target).to_ack &= !acked;
                let s = w.server(source);
                s.streamed &= !acked;
                // Acknowledged: the source's record lets them go.
                s.pending &= !acked;
            }
            Action::StreamBehind => {
                let (source, target) = w.stream()?;
                let epoch = w.fsm.epoch();
                let s = &w.servers[source as usize];
                let lacking = w.acked & s.data & !w.servers[target as usize].data;
                // Only async mode acknowledges what the partner lacks (in
                // sync mode nm does not watch the position). Reported again
                // while behind, a newly overdue write counts too.
                if mode != Mode::Async
                    || lacking & !(w.overdue | w.overdue_unrecorded) == 0
                    || w.fsm.serving_side() != source
                    || !w.connected(source)
                    || s.serving != Some(epoch)
                {
                    return None;
                }
                if !w.ignores_position {
                    w.step(Input::StreamPosition {
                        epoch,
                        behind: true,
                    });
                }
                // Bounded from here on, once nm's record of it is durable.
                match w.unflushed {
                    Some(_) => w.overdue_unrecorded |= lacking,
                    None => w.overdue |= lacking,
                }
            }
            Action::StreamLevel => {
                let (source, _) = w.stream()?;
                if !w.fsm.stream_behind() || !w.connected(source) {
                    return None;
                }
                w.step(Input::StreamPosition {
                    epoch: w.fsm.epoch(),
                    behind: false,
                });
            }
            Action::CatchUpCopy => {
                let round = w.fsm.catch_up_round()?;
                let (source, target) = (w.fsm.serving_side(), w.fsm.standby_side());
                if w.copied == Some(round) || !w.connected(source) || !w.connected(target) {
                    return None;
                }
                let epoch = w.fsm.epoch();
                let s = &w.servers[source as usize];
                let only =
                    (s.level == Some(epoch) && s.serving == Some(epoch)).then_some(s.pending);
                w.sync_only(source, target, only.unwrap_or(u8::MAX));
                w.level(source, epoch);
                w.copied = Some(round);
                w.since_copy = 0;
            }
            Action::CatchUpDone => {
                let round = w.fsm.catch_up_round()?;
                if w.copied != Some(round) {
                    return None;
                }
                if mode == Mode::Async {
                    // Changes made since the copy are still queued: the
                    // asynchronous window of a pair in sync. (Any other
                    // write the standby lacks, the copy missed.)
                    let standby = w.fsm.standby_side();
                    w.window |= w.acked & w.since_copy & !w.servers[standby as usize].data;
                }
                w.step(Input::CatchUpDone { round });
            }
            Action::Diverge => {
                if !w.fsm.is_up(Side::Primary) || !w.fsm.is_up(Side::Backup) {
                    return None;
                }
                w.step(Input::Diverged);
            }
            Action::AckHandover => {
                let h = w.fsm.handover_on_record()?;
                if !w.connected(h.to) {
                    return None;
                }
                if h.kind == HandoverKind::HandBack {
                    // The final sync, with writes paused.
                    let source = w.fsm.serving_side();
                    if !w.connected(source) {
                        return None;
                    }
                    w.sync_only(source, h.to, u8::MAX);
                    w.level(source, w.fsm.epoch());
                    // The returning server is levelled with its standby
                    // from before it serves.
                    w.level(h.to, h.epoch);
                }
                w.grant(h.to, h.epoch);
                w.step(Input::HandoverAcked { epoch: h.epoch });
            }
            Action::FailHandover => {
                let h = w.fsm.handover_on_record()?;
                // The worst case: the target took the role but its answer was lost.
                if w.connected(h.to) {
                    w.grant(h.to, h.epoch);
                }
                w.step(Input::HandoverFailed { epoch: h.epoch });
            }
            Action::Flush => {
                let (seq, durable) = w.unflushed.take()?;
                w.journal = durable;
                w.overdue |= std::mem::take(&mut w.overdue_unrecorded);
                w.step(Input::Recorded { seq });
            }
            Action::GraceOver => w.step(Input::StartupGraceOver),
            Action::NmRestart => {
                w.fsm = PairFsm::restored(w.journal.clone(), w.unclean);
                w.unflushed = None;
                // The report's reading died with nm.
                w.overdue_unrecorded = 0;
                w.copied = None;
                for s in &mut w.servers {
                    // Their connections broke; their leases run out.
                    s.registered = false;
                    s.serving = None;
                }
            }
        }
        Some(w)
    }

    /// A catch-up of the writes in `only`: what only the target holds is
    /// copied back (or kept as a conflict copy) before the target is
    /// brought level.
    fn sync_only(&mut self, source: Side, target: Side, only: u8) {
        let (s, t) = (
            self.servers[source as usize].data & only,
            self.servers[target as usize].data & only,
        );
        self.conflicts |= t & !s;
        self.server(source).data |= t;
        self.server(target).data |= s | t;
        self.window &= !(s | t);
    }

    /// nm's `Levelled` after a sync that took its mark at the copy.
    fn level(&mut self, side: Side, epoch: u64) {
        let s = self.server(side);
        s.level = Some(epoch);
        s.pending = 0;
    }

    /// The first property this state breaks, if any.
    fn violation(&self, mode: Mode) -> Option<String> {
        let data = |side: Side| self.servers[side as usize].data;
        // (e): an overdue write is outside the asynchronous window.
        let required = match mode {
            Mode::Sync => self.acked,
            Mode::Async => self.acked & !(self.window & !self.overdue),
        };
        // With --unclean-promotion, async mode promises (c) only.
        if !(self.unclean && mode == Mode::Async) {
            let mut may_serve = vec![self.fsm.serving_side()];
            if self.fsm.standby_in_sync() {
                may_serve.push(self.fsm.standby_side());
            }
            may_serve.push(self.journal.serving);
            if self.journal.standby_in_sync {
                may_serve.push(self.journal.serving.other());
            }
            for side in may_serve {
                if required & !data(side) != 0 {
                    return Some(format!(
                        "(a) acknowledged writes {:03b} missing on {side:?}, which may serve",
                        required & !data(side)
                    ));
                }
            }
        }
        for pair in self.grants.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Some(format!("(b) epoch {} handed to both servers", pair[0].0));
            }
        }
        let serving = self.fsm.serving_side();
        if self.fsm.state() == PairState::Active
            && self.acked & !(data(serving) | self.conflicts) != 0
        {
            return Some(format!(
                "(c) ACTIVE, but acknowledged writes {:03b} are neither on {serving:?} nor in a conflict copy",
                self.acked & !(data(serving) | self.conflicts)
            ));
        }
        None
    }

    /// (d): with every server restarted and nothing failing, the pair
    /// reaches ACTIVE.
    fn heals(&self, mode: Mode) -> bool {
        const HEALING: [Action; 10] = [
            Action::Restart(Side::Primary),
            Action::Restart(Side::Backup),
            Action::Flush,
            Action::StreamLevel,
            Action::Register(Side::Primary),
            Action::Register(Side::Backup),
            Action::AckHandover,
            Action::CatchUpCopy,
            Action::CatchUpDone,
            Action::Replicate,
        ];
        let mut w = self.clone();
        let trace = std::env::var_os("MODEL_TRACE").is_some();
        for _ in 0..40 {
            if trace {
                eprintln!("heal: {:?} {:?}", w.fsm.state(), w);
            }
            if w.fsm.state() == PairState::Active
                && w.fsm.clients_go_to().is_some()
                && w.unflushed.is_none()
            {
                return true;
            }
            match HEALING.iter().find_map(|a| w.next(*a, mode)) {
                Some(next) => w = next,
                None => return false,
            }
        }
        false
    }
}

struct Report {
    states: usize,
    violation: Option<(String, Vec<Action>)>,
}

/// The rule (or the record, or the stream) broken on purpose, to show the
/// check finds what it must.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Broken {
    Nothing,
    /// A serving server records none of its writes.
    Record,
    /// A partner acknowledges a streamed change it has only received.
    AckOnReceipt,
    /// nm ignores the stream's reports of an overdue acknowledgement.
    IgnoresPosition,
}

fn explore(mode: Mode, unclean: bool, broken: Broken, depth: usize) -> Report {
    let mut start = World::new(
        unclean,
        broken == Broken::Record,
        broken == Broken::AckOnReceipt,
    );
    start.ignores_position = broken == Broken::IgnoresPosition;
    let mut seen: HashSet<World> = HashSet::new();
    seen.insert(start.clone());
    let mut frontier: VecDeque<(World, Vec<Action>)> = VecDeque::from([(start, Vec::new())]);
    while let Some((world, path)) = frontier.pop_front() {
        if let Some(v) = world.violation(mode) {
            return Report {
                states: seen.len(),
                violation: Some((v, path)),
            };
        }
        if !world.heals(mode) {
            return Report {
                states: seen.len(),
                violation: Some(("(d) the pair never becomes ACTIVE".into(), path)),
            };
        }
        if path.len() == depth {
            continue;
        }
        for action in &ACTIONS {
            if let Some(next) = world.next(*action, mode) {
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(*action);
                    frontier.push_back((next, p));
                }
            }
        }
    }
    Report {
        states: seen.len(),
        violation: None,
    }
}

/// Prints a line of what the check explored, and appends it to the file
/// `FAILOVER_MODEL_REPORT` names, if set: `.ci/run` shows what the test
/// suite's own run explored instead of running the model a second time.
fn report_line(line: &str) {
    println!("{line}");
    if let Some(path) = std::env::var_os("FAILOVER_MODEL_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("FAILOVER_MODEL_REPORT names a file that can be appended to");
        // One write of the whole line: the checks run on parallel threads.
        file.write_all(format!("{line}\n").as_bytes())
            .expect("the model's report is written");
    }
}

fn check(mode: Mode, unclean: bool) {
    let report = explore(mode, unclean, Broken::Nothing, depth());
    report_line(&format!(
        "failover model, {mode:?} mode{}: {} states explored to depth {}",
        if unclean { ", unclean promotion" } else { "" },
        report.states,
        depth()
    ));
    if let Some((v, path)) = report.violation {
        panic!("{v}\n after {path:?}");
    }
}

#[test]
fn sync_mode_keeps_every_acknowledged_write() {
    check(Mode::Sync, false);
}

#[test]
fn async_mode_loses_nothing_outside_the_window() {
    check(Mode::Async, false);
}

#[test]
fn async_mode_with_unclean_promotion_reports_what_it_lacks() {
    check(Mode::Async, true);
}

/// Explores a model with one rule broken: it must reach a state that breaks
/// property (a). Reports `{label} caught in {mode} mode after N states`
/// (see [`report_line`]).
fn expect_caught(label: &str, mode: Mode, unclean: bool, broken: Broken, why: &str) {
    let report = explore(mode, unclean, broken, depth());
    let (violation, path) = report.violation.expect(why);
    report_line(&format!(
        "{label} caught in {mode:?} mode after {} states: {violation}",
        report.states
    ));
    println!(" after {path:?}");
    assert!(violation.starts_with("(a)"), "{violation}");
}

#[test]
fn a_promotion_without_the_in_sync_check_is_caught() {
    expect_caught(
        "broken rule",
        Mode::Sync,
        true,
        Broken::Nothing,
        "promoting a server that is not in sync must lose an acknowledged write",
    );
}

#[test]
fn a_record_that_misses_a_write_is_caught() {
    expect_caught(
        "broken record",
        Mode::Async,
        false,
        Broken::Record,
        "a catch-up that trusts a record missing a write must leave it off an in-sync standby",
    );
}

#[test]
fn an_acknowledgement_before_durability_is_caught() {
    for mode in [Mode::Async, Mode::Sync] {
        expect_caught(
            "broken stream",
            mode,
            false,
            Broken::AckOnReceipt,
            "a standby that acknowledges what it only received must leave an acknowledged write off an in-sync standby",
        );
    }
}

#[test]
fn a_standby_promoted_past_an_overdue_acknowledgement_is_caught() {
    expect_caught(
        "ignored position",
        Mode::Async,
        false,
        Broken::IgnoresPosition,
        "nm that ignores the stream's position must promote a standby without an overdue write",
    );
}
