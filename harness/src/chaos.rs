//! What the chaos tests share (`tests/chaos.rs` for one nm,
//! `tests/ha_chaos.rs` for an nm group): the seeded pauses, and the writer
//! whose acknowledged changes are checked at the end.

use client::Client;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A number from the environment (`CHAOS_SEED`, `CHAOS_SECS`), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sleeps a random time between `from_ms` and `to_ms`.
pub async fn pause(rng: &mut StdRng, from_ms: u64, to_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(from_ms..to_ms))).await;
}

/// Every acknowledged change, per file: `word@e<epoch>v<version>`.
pub type Acked = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// A client that WRITEs sentence 0 of `file` over and over through `nm`
/// (one address or a group's list), recording each acknowledged change in
/// `acked`, until `stop`. A WRITE that takes over 5 s drops the client (a
/// hung server or a dead nm connection); the next one dials again.
pub fn spawn_writer(
    nm: String,
    file: String,
    acked: Acked,
    operations: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client: Option<Client> = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            if client.is_none() {
                client = Client::connect(&nm, "chaos").await.ok();
                if let Some(c) = client.as_mut() {
                    c.set_reply_timeout(Duration::from_millis(500));
                }
            }
            let Some(c) = client.as_mut() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            operations.fetch_add(1, Ordering::Relaxed);
            let word = format!("{file}-{n}").replace('.', "_");
            let done = tokio::time::timeout(Duration::from_secs(5), async {
                c.write_begin(&file, 0).await?;
                c.write_edit(0, &word).await?;
                c.write_commit().await
            })
            .await;
            match done {
                Ok(Ok(stats)) => acked
                    .lock()
                    .unwrap()
                    .entry(file.clone())
                    .or_default()
                    .push(format!("{word}@e{}v{}", stats.epoch, stats.version)),
                Ok(Err(_)) => {
                    c.write_abort().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => client = None,
            }
        }
    })
}
