//! The leader lease and the election.
//!
//! Every nm holds an etcd lease for as long as it runs, renewed every
//! quarter of its time to live; its member key is bound to it, and so is
//! the leader key while it leads. A campaign is one transaction: create the
//! leader key if no key exists. The create revision of the key this nm
//! wrote is its fence (see [`super::store`]).

use super::keys::Layout;
use crate::group::Group;
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Keeps this nm's lease alive for as long as the process runs, granting a
/// new one whenever it is lost. Publishes the current lease id (0: none).
pub async fn keep_lease(
    mut client: Client,
    layout: Layout,
    address: String,
    group: Arc<Group>,
    lease_id: watch::Sender<i64>,
) {
    let ttl_secs = group.ttl().as_secs().max(1) as i64;
    loop {
        let granted = tokio::time::timeout(group.ttl(), client.lease_grant(ttl_secs, None)).await;
        let lease = match granted {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                tracing::warn!(event = "nm_etcd_unreachable", error = %e, "cannot obtain an etcd lease; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    event = "nm_etcd_unreachable",
                    "etcd did not grant a lease in time; retrying"
                );
                continue;
            }
        };
        let id = lease.id();
        let granted_at = Instant::now();
        let mut warm = group.is_warm();
        let member = put_member(&mut client, &layout, &address, id, warm).await;
        if let Err(e) = member {
            tracing::warn!(event = "nm_etcd_unreachable", error = %e, "cannot register as a member; retrying");
            continue;
        }
        group.renewed(granted_at);
        lease_id.send_replace(id);
        // A broken renewal stream (the etcd member it went to died) is
        // opened again on the same lease for as long as the lease may hold.
        loop {
            let member = Membership {
                layout: &layout,
                address: &address,
                warm: &mut warm,
            };
            match renew_until_broken(&mut client, id, &group, member).await {
                Renewal::Expired => break,
                Renewal::Broken if Instant::now() < group.holds_until() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Renewal::Broken => break,
            }
        }
        lease_id.send_replace(0);
        group.end_term("the leader lease could not be renewed (etcd unreachable or too slow)");
    }
}

/// This nm's member key, bound to its lease `lease`: the value says
/// whether its copy of the namespace is loaded (`warm`) or `loading`.
async fn put_member(
    client: &mut Client,
    layout: &Layout,
    address: &str,
    lease: i64,
    warm: bool,
) -> Result<(), etcd_client::Error> {
    let value = if warm { WARM } else { LOADING };
    client
        .put(
            layout.member(address),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map(|_| ())
}

/// A member key's values.
pub const WARM: &str = "warm";
pub const LOADING: &str = "loading";

enum Renewal {
    /// etcd says the lease is gone.
    Expired,
    /// The renewal stream broke or an answer was late; the lease may still hold.
    Broken,
}

/// This nm's member key as last written, kept current by the renewals.
struct Membership<'a> {
    layout: &'a Layout,
    address: &'a str,
    /// The warmth the key says.
    warm: &'a mut bool,
}

/// Renews lease `id` until etcd says it expired or a renewal goes
/// unanswered; after each renewal the member key follows the group's
/// warmth if it changed (this loop is the key's only writer, so the last
/// value written is the current one).
async fn renew_until_broken(
    client: &mut Client,
    id: i64,
    group: &Group,
    member: Membership<'_>,
) -> Renewal {
    let patience = group
        .holds_until()
        .saturating_duration_since(Instant::now())
        .max(group.ttl() / 4);
    let Ok(Ok((mut keeper, mut responses))) =
        tokio::time::timeout(patience, client.lease_keep_alive(id)).await
    else {
        return Renewal::Broken;
    };
    let every = (group.ttl() / 4).max(Duration::from_millis(100));
    loop {
        let sent = Instant::now();
        if keeper.keep_alive().await.is_err() {
            return Renewal::Broken;
        }
        // An answer may be late while etcd elects a new raft leader: wait
        // for it as long as the lease surely holds, but at least a quarter
        // of its life (a standby's lease counts too).
        let patience = group
            .holds_until()
            .saturating_duration_since(Instant::now())
            .max(group.ttl() / 4);
        match tokio::time::timeout(patience, responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => group.renewed(sent),
            Ok(Ok(Some(_))) => {
                tracing::warn!(
                    event = "nm_lease_expired",
                    lease = id,
                    "etcd says this nm's lease has expired"
                );
                return Renewal::Expired;
            }
            _ => {
                tracing::warn!(
                    event = "nm_lease_unrenewed",
                    lease = id,
                    "etcd did not answer a lease renewal in time"
                );
                return Renewal::Broken;
            }
        }
        // Bounded: a slow put must not hold the next renewal back.
        let warm = group.is_warm();
        if warm != *member.warm {
            let put = put_member(client, member.layout, member.address, id, warm);
            if let Ok(Ok(())) = tokio::time::timeout(every, put).await {
                *member.warm = warm;
            }
        }
        tokio::time::sleep_until((sent + every).into()).await;
    }
}

/// Campaigns until this nm is elected; returns the fence (the leader key's
/// create revision). Meanwhile reports the leader it sees in `group`.
pub async fn campaign(
    client: &mut Client,
    layout: &Layout,
    address: &str,
    group: &Group,
    mut lease_id: watch::Receiver<i64>,
) -> Result<i64, etcd_client::Error> {
    loop {
        let id = *lease_id.borrow_and_update();
        if id == 0 {
            let _ = lease_id.changed().await;
            continue;
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                layout.leader(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                layout.leader(),
                address,
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(layout.leader(), None)]);
        let response = client.txn(txn).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            group.set_leader(Some(address.to_owned()));
            return Ok(revision);
        }
        // Someone leads: wait until its key goes (or a while, to re-check).
        let leader = response.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
            _ => None,
        });
        if leader.as_deref() == Some(address) {
            // Our own key from an earlier term, still bound to a live
            // lease: delete it (only if it is still ours) and campaign anew.
            let stale = Txn::new()
                .when([Compare::value(layout.leader(), CompareOp::Equal, address)])
                .and_then([TxnOp::delete(layout.leader(), None)]);
            client.txn(stale).await?;
            continue;
        }
        remember_leader(group, leader);
        let mut stream = client
            .watch(
                layout.leader(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await?;
        let gone = async {
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    match event.event_type() {
                        EventType::Delete => return,
                        EventType::Put => remember_leader(
                            group,
                            event
                                .kv()
                                .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
                        ),
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), gone).await;
    }
}

fn remember_leader(group: &Group, leader: Option<String>) {
    if group.leader() != leader {
        tracing::info!(
            event = "nm_leader_seen",
            leader = leader.as_deref().unwrap_or("-"),
            "the group's leader"
        );
    }
    group.set_leader(leader);
}
