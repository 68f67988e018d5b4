//! This server's part in its pair, as nm last gave it, in one place: the
//! epoch every change is stamped with, whether clients are sent here
//! (serving) and whether it accepts changes (writable), the lease that
//! bounds both, and the lock that keeps a change from straddling a new part.
//!
//! The epoch and the two flags are one atomic word, so a reader never sees
//! a new epoch with an old flag. A change holds [`PairRole::change_guard`] from
//! its permission check to its commit; nm's `SetRole` and a registration's
//! answer take it alone.

use shared::WireError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A part nm gives a server: read and written whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    pub epoch: u64,
    pub serving: bool,
    pub writable: bool,
}

impl Part {
    fn pack(self) -> u64 {
        (self.epoch << 2) | (u64::from(self.serving) << 1) | u64::from(self.writable)
    }

    fn unpack(word: u64) -> Part {
        Part {
            epoch: word >> 2,
            serving: word & 2 != 0,
            writable: word & 1 != 0,
        }
    }
}

/// The part itself, shared by the link to nm (which sets it), the request
/// handlers and the replication stream (which check it) and the files
/// (which stamp changes with its epoch).
#[derive(Default)]
pub struct PairRole {
    /// A [`Part`], packed.
    part: AtomicU64,
    /// Changes hold it shared from their check to their commit; a new part
    /// takes it alone.
    change: tokio::sync::RwLock<()>,
    /// Reads and writes are accepted only before this instant: renewed by
    /// each acknowledged heartbeat, cleared when the nm connection closes.
    lease_until: Mutex<Option<Instant>>,
    /// How many parts nm set by `SetRole` (see [`PairRole::sets`]).
    sets: AtomicU64,
    /// Held while a part is set with its count, and while a registration's
    /// part is weighed against them: a registration can never see a
    /// `SetRole`'s part in place but not yet counted, and put its own,
    /// older one over it.
    setting: Mutex<()>,
}

impl PairRole {
    pub fn part(&self) -> Part {
        Part::unpack(self.part.load(Ordering::Acquire))
    }

    /// The epoch every change made here is stamped with.
    pub fn epoch(&self) -> u64 {
        self.part().epoch
    }

    /// Whether nm has made this server its pair's serving one.
    pub fn is_serving(&self) -> bool {
        self.part().serving
    }

    /// The largest epoch a part can carry (epochs count failovers).
    pub const MAX_EPOCH: u64 = (1 << 62) - 1;

    /// Takes `part`, without waiting for changes in flight: callers hold
    /// the change lock alone ([`PairRole::change`],
    /// [`PairRole::set_registered`]) or serve nothing yet. An epoch beyond
    /// [`PairRole::MAX_EPOCH`] is refused and changes nothing.
    pub fn set(&self, part: Part) -> Result<(), WireError> {
        if part.epoch > Self::MAX_EPOCH {
            return Err(WireError::bad_request(format!(
                "epoch {} is beyond the largest this server can hold",
                part.epoch
            )));
        }
        self.part.store(part.pack(), Ordering::Release);
        tracing::info!(
            event = "ss_role",
            epoch = part.epoch,
            serving = part.serving,
            writable = part.writable,
            "role set by nm"
        );
        Ok(())
    }

    /// Takes `part` from nm's `SetRole` once no change is in flight, and
    /// runs `then` before any change may start under it.
    pub async fn change(&self, part: Part, then: impl FnOnce()) -> Result<(), WireError> {
        let _alone = self.change.write().await;
        {
            let _setting = self.setting.lock().unwrap_or_else(|p| p.into_inner());
            self.set(part)?;
            self.sets.fetch_add(1, Ordering::SeqCst);
        }
        then();
        Ok(())
    }

    /// Takes the part a registration's answer gave, unless a `SetRole` was
    /// taken since `sets_before` (its [`PairRole::sets`] when the
    /// registration was sent), which is newer unless it names an older
    /// epoch; runs `then` if it was taken; and only then renews the lease
    /// to `lease_until`. Whether it was taken.
    ///
    /// As a `SetRole`, it waits until no change is in flight, and no change
    /// starts before it is done: a change that passed its check under the
    /// old part never reads the new epoch (a deposed server would stamp a
    /// change with its successor's epoch, a stamp that successor may give
    /// other content). The lease comes last, so a server whose lease ran out
    /// while nm failed it over never accepts a change under its old part,
    /// even for a moment.
    pub async fn set_registered(
        &self,
        part: Part,
        sets_before: u64,
        lease_until: Option<Instant>,
        then: impl FnOnce(),
    ) -> Result<bool, WireError> {
        let _alone = self.change.write().await;
        let taken = {
            let _setting = self.setting.lock().unwrap_or_else(|p| p.into_inner());
            if self.sets() != sets_before && part.epoch <= self.epoch() {
                false
            } else {
                self.set(part)?;
                true
            }
        };
        if taken {
            then();
        }
        self.renew_lease(lease_until);
        Ok(taken)
    }

    /// How many parts nm set by `SetRole`. nm sends one only after it has
    /// answered a registration, but that answer is read on another
    /// connection and may be handled later: a registration's part applies
    /// only if no `SetRole` arrived since it was sent (or that one names an
    /// older epoch).
    pub fn sets(&self) -> u64 {
        self.sets.load(Ordering::SeqCst)
    }

    /// Held by a change from its permission check to its commit.
    pub async fn change_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.change.read().await
    }

    /// As [`PairRole::change_guard`], from a blocking thread.
    pub fn change_guard_blocking(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.change.blocking_read()
    }

    pub fn renew_lease(&self, until: Option<Instant>) {
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn lease_valid(&self) -> bool {
        self.lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// `Ok` when clients may read here: nm sent them, and the lease holds.
    pub fn check_serving(&self) -> Result<(), WireError> {
        self.check(self.part()).map(|_| ())
    }

    /// `Ok` when changes may be accepted here (serving, writable, lease valid).
    pub fn check_writable(&self) -> Result<(), WireError> {
        if !self.check(self.part())?.writable {
            return Err(WireError::unavailable(
                "this server does not accept changes now (its pair is handing over); retry through nm",
            ));
        }
        Ok(())
    }

    /// `part`, if clients may be served under it now (the lease holds).
    fn check(&self, part: Part) -> Result<Part, WireError> {
        if !part.serving {
            return Err(WireError::unavailable(
                "this server is not serving clients now (catching up, or not its pair's active server); ask nm again",
            ));
        }
        if !self.lease_valid() {
            return Err(WireError::unavailable(
                "this server has lost contact with nm and stopped serving; ask nm again",
            ));
        }
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_read_back_whole() {
        for part in [
            Part::default(),
            Part {
                epoch: 7,
                serving: true,
                writable: false,
            },
            Part {
                epoch: (1 << 62) - 1,
                serving: false,
                writable: true,
            },
        ] {
            let role = PairRole::default();
            role.set(part).unwrap();
            assert_eq!(role.part(), part);
        }
    }

    #[test]
    fn an_epoch_too_large_is_refused_and_changes_nothing() {
        let role = PairRole::default();
        let first = Part {
            epoch: 3,
            serving: true,
            writable: true,
        };
        role.set(first).unwrap();
        let huge = Part {
            epoch: PairRole::MAX_EPOCH + 1,
            ..first
        };
        assert!(role.set(huge).is_err());
        assert_eq!(role.part(), first);
    }

    #[tokio::test]
    async fn a_registration_s_part_never_replaces_a_newer_set_role() {
        let role = PairRole::default();
        let registered = |epoch, serving| Part {
            epoch,
            serving,
            writable: serving,
        };
        let before = role.sets();
        role.change(registered(2, true), || {}).await.unwrap();
        assert!(!role
            .set_registered(registered(0, false), before, None, || {})
            .await
            .unwrap());
        assert_eq!(role.part(), registered(2, true));
        assert!(
            role.set_registered(registered(3, false), before, None, || {})
                .await
                .unwrap(),
            "a newer epoch"
        );
        assert!(
            role.set_registered(registered(1, true), role.sets(), None, || {})
                .await
                .unwrap(),
            "none since"
        );
    }

    #[tokio::test]
    async fn a_registration_waits_for_changes_in_flight_and_renews_the_lease_last() {
        let role = PairRole::default();
        let old = Part {
            epoch: 1,
            serving: true,
            writable: true,
        };
        role.set(old).unwrap();
        let deposed = Part {
            epoch: 2,
            serving: false,
            writable: false,
        };
        let in_flight = role.change_guard().await;
        let lease = Some(Instant::now() + std::time::Duration::from_secs(60));
        let followed = std::cell::Cell::new(false);
        let mut registering =
            std::pin::pin!(role.set_registered(deposed, role.sets(), lease, || followed.set(true)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            std::future::Future::poll(registering.as_mut(), &mut cx).is_pending(),
            "a change is in flight"
        );
        assert_eq!(
            role.part(),
            old,
            "the change keeps its part until it commits"
        );
        assert!(
            role.check_writable().is_err(),
            "and no lease was renewed under it"
        );
        drop(in_flight);
        assert!(registering.await.unwrap());
        assert!(followed.get());
        assert_eq!(role.part(), deposed);
        assert!(role.check_serving().is_err(), "renewed, but not serving");
        assert!(role.lease_valid());
    }

    #[test]
    fn clients_are_served_only_while_serving_under_a_lease() {
        let role = PairRole::default();
        role.set(Part {
            epoch: 1,
            serving: true,
            writable: false,
        })
        .unwrap();
        assert!(role.check_serving().is_err(), "no lease yet");
        role.renew_lease(Some(Instant::now() + std::time::Duration::from_secs(5)));
        assert!(role.check_serving().is_ok());
        assert!(role.check_writable().is_err(), "not writable");
        role.renew_lease(None);
        assert!(role.check_serving().is_err(), "the lease is gone");
    }
}
