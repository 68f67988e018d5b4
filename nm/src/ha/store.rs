//! nm's state in etcd: the standby's load and watch, and the leader's
//! fenced writer.
//!
//! The writer is the journal of a leading nm: records queue in the order
//! they are submitted and are written in batches, each batch as etcd
//! transactions conditioned on the leader key still being the one this nm
//! created (its create revision). A deposed leader's write therefore fails
//! in etcd itself, whatever this process believes; the failure ends its term.

use super::keys::{self, Layout, Translator, Write};
use crate::group::Group;
use crate::journal::{Journal, Pending};
use crate::namespace::{FileRecord, Namespace};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use shared::WireError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// etcd refuses transactions of more than 128 operations by default.
const MAX_TXN_OPS: usize = 100;
/// Keys read per page when loading.
const LOAD_PAGE: i64 = 10_000;
/// Records taken into one batch at most.
const MAX_BATCH: usize = 4096;

/// Everything under `state/` read at one revision into a namespace.
/// Returns it and that revision.
pub async fn load(
    client: &mut Client,
    layout: &Layout,
) -> Result<(Namespace, i64), etcd_client::Error> {
    let mut ns = Namespace::default();
    let state = layout.state();
    let end = keys::prefix_end(&state);
    let mut from = state.clone().into_bytes();
    let mut revision = 0;
    let mut count = 0usize;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LOAD_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            if let Ok(key) = kv.key_str() {
                keys::apply_put(layout, &mut ns, key, kv.value());
                count += 1;
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    tracing::info!(
        event = "nm_etcd_loaded",
        keys = count,
        files = ns.len(),
        revision,
        "state loaded from etcd"
    );
    Ok((ns, revision))
}

/// Follows `state/` from `from` on, applying every change to `ns`, and
/// reports the highest revision applied. Returns when the watch breaks.
pub async fn follow(
    mut client: Client,
    layout: Layout,
    from: i64,
    ns: Arc<Mutex<Namespace>>,
    applied: watch::Sender<i64>,
) -> Result<(), etcd_client::Error> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    // The leader key is watched as well: its creation by this nm tells,
    // in revision order, that every earlier state change has arrived.
    let mut stream = client.watch(layout.state(), Some(options)).await?;
    stream
        .watch(
            layout.leader(),
            Some(WatchOptions::new().with_start_revision(from)),
        )
        .await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            return Err(etcd_client::Error::WatchError(format!(
                "watch cancelled: {}",
                response.cancel_reason()
            )));
        }
        let mut highest = 0;
        {
            let mut ns = ns.lock().unwrap_or_else(|p| p.into_inner());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                highest = highest.max(kv.mod_revision());
                let Ok(key) = kv.key_str() else { continue };
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        keys::apply_put(&layout, &mut ns, key, kv.value())
                    }
                    etcd_client::EventType::Delete => keys::apply_delete(&layout, &mut ns, key),
                }
            }
        }
        if highest > 0 {
            applied.send_if_modified(|seen| {
                let newer = highest > *seen;
                *seen = (*seen).max(highest);
                newer
            });
        }
    }
    Ok(())
}

/// The journal of a leading nm: its records go to etcd, fenced by `fence`
/// (the create revision of this nm's leader key).
pub fn writer(
    client: Client,
    layout: Layout,
    fence: i64,
    group: Arc<Group>,
    ns: &Namespace,
) -> Journal {
    let (tx, rx) = mpsc::unbounded_channel();
    let translator = Translator::new(layout.clone(), ns);
    tokio::spawn(write_loop(client, layout, fence, group, translator, rx));
    Journal::with_writer(tx)
}

async fn write_loop(
    mut client: Client,
    layout: Layout,
    fence: i64,
    group: Arc<Group>,
    mut translator: Translator,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let records: Vec<_> = batch
            .iter()
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        let result = if group.holds_lease() {
            commit(
                &mut client,
                &layout,
                fence,
                &group,
                &mut translator,
                records,
            )
            .await
        } else {
            Err(WireError::not_leader(None))
        };
        if let Err(e) = &result {
            tracing::error!(event = "nm_etcd_write_failed", error = %e, "a change could not be written to etcd");
            // Nothing more is written in this term: the translator's view of
            // the pending requests may now be ahead of etcd.
            group.end_term(&format!("an etcd write failed: {}", e.message));
        }
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}

async fn commit(
    client: &mut Client,
    layout: &Layout,
    fence: i64,
    group: &Group,
    translator: &mut Translator,
    records: Vec<crate::journal::Record>,
) -> Result<(), WireError> {
    let mut fetched: HashMap<String, Option<FileRecord>> = HashMap::new();
    for file in Translator::needs(&records) {
        let key = layout_file(layout, &file);
        let read = retrying(group, || {
            let (mut client, key) = (client.clone(), key.clone());
            async move { client.get(key, None).await }
        })
        .await?;
        fetched.insert(
            file,
            read.kvs()
                .first()
                .and_then(|kv| keys::decode_file(kv.value())),
        );
    }
    let writes = translator.translate(records, fetched);
    for operations in transactions(&writes) {
        let txn = Txn::new()
            .when([Compare::create_revision(
                layout.leader(),
                CompareOp::Equal,
                fence,
            )])
            .and_then(operations);
        // Puts and deletes of whole values: a retry after a lost answer
        // writes the same state again.
        let response = retrying(group, || {
            let (mut client, txn) = (client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await?;
        if !response.succeeded() {
            return Err(WireError::not_leader(None));
        }
    }
    Ok(())
}

/// `writes` as the operations of transactions etcd takes (at most
/// [`MAX_TXN_OPS`] each).
pub fn transactions(writes: &[Write]) -> impl Iterator<Item = Vec<TxnOp>> + '_ {
    writes.chunks(MAX_TXN_OPS).map(|chunk| {
        chunk
            .iter()
            .map(|write| match write {
                Write::Put(key, value) => TxnOp::put(key.as_str(), value.clone(), None),
                Write::Delete(key) => TxnOp::delete(key.as_str(), None),
            })
            .collect()
    })
}

/// Runs an etcd call, again after a failure (an etcd member that died
/// under it), for as long as this nm's lease surely holds.
async fn retrying<T, F, Fut>(group: &Group, mut call: F) -> Result<T, WireError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let unavailable = |why: String| {
        WireError::unavailable(format!(
            "nm cannot write to etcd ({why}); the change was not made, retry shortly"
        ))
    };
    loop {
        let left = group
            .holds_until()
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(unavailable("the leader lease lapsed first".into()));
        }
        // One attempt waits a quarter of the lease at most: a request stuck
        // on a member that lost its raft leader is sent again (maybe to
        // another member) rather than waited for until the lease ends.
        let attempt = left.min(group.ttl() / 4);
        match tokio::time::timeout(attempt, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                tracing::debug!(event = "nm_etcd_retry", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) if attempt < left => {
                tracing::debug!(event = "nm_etcd_retry", error = "no answer yet");
            }
            Err(_) => return Err(unavailable("etcd did not answer in time".into())),
        }
    }
}

fn layout_file(layout: &Layout, file: &str) -> String {
    format!("{}f/{file}", layout.state())
}

/// How often the leader compacts etcd's history.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Compacts etcd's history once a minute, to the revision of the minute
/// before, for as long as this nm leads: the history a standby's watch needs
/// is short, and without compaction etcd keeps every revision forever.
pub async fn compact_history(mut client: Client, layout: Layout, group: Arc<Group>) {
    let mut previous = 0;
    loop {
        tokio::time::sleep(COMPACT_EVERY).await;
        if !group.holds_lease() {
            return;
        }
        let now = client
            .get(layout.leader(), Some(GetOptions::new().with_count_only()))
            .await;
        let Ok(now) = now else { continue };
        if previous > 0 {
            match client.compact(previous, None).await {
                Ok(_) => tracing::debug!(event = "nm_etcd_compacted", revision = previous),
                Err(e) => tracing::debug!(event = "nm_etcd_compact_failed", error = %e),
            }
        }
        previous = now.header().map_or(0, |h| h.revision());
    }
}

/// Gives up the leadership: deletes the leader key if it is still this
/// nm's (best effort, briefly: etcd may be the reason the term ended).
pub async fn resign(client: &mut Client, layout: &Layout, fence: i64) {
    let txn = Txn::new()
        .when([Compare::create_revision(
            layout.leader(),
            CompareOp::Equal,
            fence,
        )])
        .and_then([TxnOp::delete(layout.leader(), None)]);
    let _ = tokio::time::timeout(Duration::from_millis(500), client.txn(txn)).await;
}
