//! Carrying out the failover machine's decisions.
//!
//! [`crate::failover`] decides; this module does. Every input reaches a
//! pair's machine through [`Nm::feed`], under the state lock, which also
//! hands each `Persist` to the journal right there, so records reach the disk
//! in the order the machine made them. [`Nm::carry_out`] then performs the
//! rest in order (tell a server its role, queue a catch-up, run a hand-back)
//! and feeds back what came of it (`Recorded`, `HandoverAcked`, ...), until
//! nothing is left to do.

use crate::failover::{Decision, Input, Side};
use crate::journal::Record;
use crate::state::{Nm, State};
use shared::WireError;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a handover whose target is no longer connected comes to.
fn target_gone(epoch: u64) -> (Input, String) {
    let why = "the handover's target is no longer connected".to_owned();
    (Input::HandoverFailed { epoch }, why)
}

/// A decision on its way to being carried out.
pub(crate) enum Pending {
    /// A record already handed to the journal: wait until it is on disk.
    Recorded {
        seq: u64,
        written: Pin<Box<dyn Future<Output = Result<(), WireError>> + Send>>,
    },
    Do(Decision),
}

impl Nm {
    /// Feeds `input` to the machine of `pair`. Call with the state lock held;
    /// carry the result out with [`Nm::carry_out`] once it is released.
    pub(crate) fn feed(&self, state: &mut State, pair: &str, input: Input) -> Vec<Pending> {
        let Some(p) = state.registry.pair_mut(pair) else {
            return Vec::new();
        };
        let decisions = p.fsm.step(input);
        let mut pending = Vec::with_capacity(decisions.len());
        for decision in decisions {
            match decision {
                Decision::Persist { seq, durable } => {
                    let Some(p) = state.registry.pair(pair) else {
                        continue;
                    };
                    let record = p.persisted(&durable);
                    let written = self.journal.submit(vec![Record::Pair {
                        primary: pair.to_owned(),
                        epoch: record.epoch,
                        active: record.active.clone(),
                        standby_in_sync: record.standby_in_sync,
                        offered: record.offered,
                        backup: record.backup.clone(),
                    }]);
                    state.ns.set_pair(pair, record);
                    pending.push(Pending::Recorded {
                        seq,
                        written: Box::pin(written),
                    });
                }
                other => pending.push(Pending::Do(other)),
            }
        }
        pending
    }

    /// Feeds an input and reports the transitions it caused; the decisions
    /// are carried out in a task of their own.
    pub(crate) fn feed_and_act(&self, pair: &str, input: Input, reason: &str) {
        let (pending, events) = {
            let mut state = self.state();
            let pending = self.feed(&mut state, pair, input);
            (pending, state.registry.refresh(reason))
        };
        self.emit_all(events);
        self.act(pair, pending, reason);
    }

    /// Carries out `pending` in a task of its own.
    pub(crate) fn act(&self, pair: &str, pending: Vec<Pending>, reason: &str) {
        let Some(nm) = self.me.upgrade().filter(|_| !pending.is_empty()) else {
            return;
        };
        let (pair, reason) = (pair.to_owned(), reason.to_owned());
        tokio::spawn(async move { nm.carry_out(&pair, pending, &reason).await });
    }

    /// Carries out decisions in order, and the ones their outcomes lead to.
    pub(crate) async fn carry_out(&self, pair: &str, pending: Vec<Pending>, reason: &str) {
        let mut todo: VecDeque<Pending> = pending.into();
        while let Some(next) = todo.pop_front() {
            let (outcome, why) = match next {
                Pending::Recorded { seq, written } => match written.await {
                    Ok(()) => (Input::Recorded { seq }, reason.to_owned()),
                    Err(e) => {
                        // Nothing that depends on this record happens (no
                        // offer, no serving): the pair stays as cautious as
                        // it was.
                        tracing::error!(event = "nm_journal_failed", pair, error = %e, "a failover record could not be written; the decisions after it are not carried out");
                        return;
                    }
                },
                Pending::Do(decision) => match self.perform(pair, decision).await {
                    Some(outcome) => outcome,
                    None => continue,
                },
            };
            let recorded = matches!(outcome, Input::Recorded { .. });
            let (more, events) = {
                let mut state = self.state();
                let more = self.feed(&mut state, pair, outcome);
                (more, state.registry.refresh(&why))
            };
            self.emit_all(events);
            if recorded {
                self.failover_recorded.notify_waiters();
            }
            todo.extend(more);
        }
    }

    /// Performs one decision; returns what to feed back, with the reason
    /// its events carry.
    async fn perform(&self, pair: &str, decision: Decision) -> Option<(Input, String)> {
        match decision {
            Decision::Persist { .. } => None, // handed to the journal by `feed`
            Decision::StartCatchUp { round } => {
                self.request_sync(pair, &format!("catch-up {round}"));
                None
            }
            Decision::Promote { to, epoch, unclean } => {
                let Some((name, client)) = self.side_client(pair, to) else {
                    return Some(target_gone(epoch));
                };
                if unclean {
                    tracing::warn!(event = "nm_unclean_promotion", pair, server = %name, epoch, "promoting a server that is not in sync (--unclean-promotion): what it lacks comes back as conflict copies");
                }
                match Self::set_role(&client, epoch, true, true).await {
                    Ok(()) => {
                        self.metrics.failovers.inc();
                        tracing::warn!(event = "nm_promoted", pair, server = %name, epoch);
                        let why = format!("{name} promoted under epoch {epoch}");
                        Some((Input::HandoverAcked { epoch }, why))
                    }
                    Err(e) => {
                        tracing::error!(event = "nm_promotion_failed", pair, server = %name, epoch, error = %e);
                        let why = format!("promoting {name} failed: {e}");
                        Some((Input::HandoverFailed { epoch }, why))
                    }
                }
            }
            Decision::HandBack { to, epoch } => {
                let Some((name, _)) = self.side_client(pair, to) else {
                    return Some(target_gone(epoch));
                };
                match self.hand_back(pair, epoch).await {
                    Ok(()) => {
                        let why = format!("hand-back to {name} complete");
                        Some((Input::HandoverAcked { epoch }, why))
                    }
                    Err(e) => {
                        tracing::warn!(event = "nm_hand_back_failed", pair, error = %e);
                        let why = format!("hand-back failed ({e}); the backup keeps serving");
                        Some((Input::HandoverFailed { epoch }, why))
                    }
                }
            }
            Decision::Demote { side, epoch } => {
                if let Some((_, client)) = self.side_client(pair, side) {
                    tokio::spawn(async move {
                        let _ = Nm::set_role(&client, epoch, false, false).await;
                    });
                }
                None
            }
            Decision::Resume { side, epoch } => {
                if let Some((_, client)) = self.side_client(pair, side) {
                    let _ = Self::set_role(&client, epoch, true, true).await;
                }
                None
            }
            Decision::CutOff { side } => {
                let mut state = self.state();
                let cut = state
                    .registry
                    .pair(pair)
                    .and_then(|p| p.name(side))
                    .map(str::to_owned)
                    .and_then(|name| {
                        let generation = state.registry.get(&name)?.generation;
                        Some((name, generation))
                    });
                if let Some((name, generation)) = cut {
                    // Its connection closes at its next message; it registers again.
                    state.registry.disconnect(&name, generation);
                    tracing::warn!(event = "nm_server_cut_off", pair, server = %name, "cut off after a handover that did not complete; it registers again");
                }
                None
            }
        }
    }

    /// The name and client of one side of `pair`, if that server is connected.
    fn side_client(
        &self,
        pair: &str,
        side: Side,
    ) -> Option<(String, Arc<crate::ss_client::SsClient>)> {
        let state = self.state();
        let name = state.registry.pair(pair)?.name(side)?.to_owned();
        let entry = state.registry.get(&name).filter(|e| e.connected)?;
        Some((name, entry.client.clone()))
    }

    /// Waits until a synchronous change made while the standby is away may
    /// be acknowledged: the journal says the standby is out of sync, so no
    /// restart of nm can promote it. Gives up after `ss_timeout`.
    pub(crate) async fn until_alone_is_recorded(&self, pair: &str) -> Result<(), WireError> {
        let deadline = tokio::time::Instant::now() + self.config.ss_timeout;
        loop {
            let notified = self.failover_recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let allowed = {
                let state = self.state();
                state
                    .registry
                    .pair(pair)
                    .is_none_or(|p| p.fsm.may_ack_alone())
            };
            if allowed {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(WireError::unavailable(format!(
                    "the change was applied on the serving server of pair {pair}, but its backup has not confirmed it and nm could not yet record that the backup is behind; it may not survive a failover"
                )));
            }
        }
    }
}
