//! Role changes a pair's servers are told of: `SetRole` (a promotion, a
//! demotion, a resumption), and the hand-back of a pair to its returned
//! primary, whose final sync runs with writes paused.

use super::sync::Compare;
use crate::ss_client::SsClient;
use crate::state::Nm;
use shared::proto::{SsCommand, UnconfirmedLevel};
use shared::{now_ms, WireError};

impl Nm {
    pub(crate) async fn set_role(
        client: &SsClient,
        epoch: u64,
        serving: bool,
        writable: bool,
    ) -> Result<(), WireError> {
        client
            .call(SsCommand::SetRole {
                epoch,
                serving,
                writable,
            })
            .await
            .map(|_| ())
    }

    /// The returned primary is level with the backup: stop writes on the
    /// backup, sync in full one last time, and give the primary the serving
    /// role under `epoch`. Clients are not sent anywhere meanwhile (the
    /// failover machine has paused the pair); whether it worked goes back to
    /// the machine, which records the new roles or resumes the backup.
    pub(crate) async fn hand_back(&self, pair: &str, epoch: u64) -> Result<(), WireError> {
        let sides = self
            .sides(pair)
            .map_err(|(_, why)| WireError::unavailable(why))?;
        Self::set_role(&sides.source_client, sides.epoch, true, false).await?;
        // In full: a change the source acknowledged just before the pause
        // may have its notice still on the way, so it is not recorded yet.
        self.sync_once(&sides, Compare::Everything).await?;
        // The returning server's count before it serves: every change it
        // makes from here on is one the backup lacks.
        let (target_mark, _, _) = sides.target_client.unconfirmed().await?;
        Self::set_role(&sides.target_client, epoch, true, true).await?;
        Self::level_source(
            &sides.target_client,
            UnconfirmedLevel {
                standby: sides.source.clone(),
                store_id: sides.source_store,
                epoch,
            },
            target_mark,
        )
        .await;
        if let Some(p) = self.state().registry.pair_mut(pair) {
            p.last_sync_ms = now_ms();
        }
        Ok(())
    }
}
