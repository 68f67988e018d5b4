//! The chaos test of an nm group on etcd, every daemon on its own loopback
//! address: clients write and read continuously (through the whole nm list)
//! while a seeded schedule kills and hangs the nm leader, cuts it from etcd,
//! kills and hangs storage servers, and drops packets between the serving
//! primary and every nm (both ways, or only its way), and between the two
//! servers of the pair. The invariants are the single-nm chaos test's:
//! nothing acknowledged is lost (in async mode it may be in a reported
//! conflict copy), the pair's servers end identical, and no two servers ever
//! accepted writes in the same epoch.
//!
//! `CHAOS_SEED` (default 11) picks the schedule, `CHAOS_SECS` (default 20)
//! the time per replication mode.
#![cfg(feature = "ha")]

use client::Client;
use harness::chaos::{env_u64, pause, spawn_writer, Acked};
use harness::eventually;
use harness::ha::{HaCluster, HaOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::proto::{NmReply, NmRequest, NmRole, PairState, ServerState};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVERS: [&str; 2] = ["ss1", "ss1_backup"];
const WRITERS: usize = 3;

/// The serving server and the leader's index, if a leader answers.
async fn serving_and_leader(cluster: &HaCluster) -> (Option<String>, Option<usize>) {
    let Some(status) = cluster.try_status().await else {
        return (None, None);
    };
    let serving = status
        .servers
        .iter()
        .find(|s| s.serving && s.state == ServerState::Alive)
        .map(|s| s.name.clone());
    let leader = status
        .nm
        .iter()
        .find(|n| n.role == NmRole::Leader)
        .map(|n| cluster.nm_index(&n.address));
    (serving, leader)
}

async fn run(mode: &str, seed: u64, secs: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut options = HaOptions::default();
    options.daemons.nm_args = vec![
        "--replication",
        if mode == "sync" { "sync" } else { "async" },
    ];
    let mut cluster = HaCluster::start(&SERVERS, options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let files: Vec<String> = (0..WRITERS).map(|i| format!("f{i}.txt")).collect();
    let creates: String = files.iter().map(|f| format!("CREATE {f}\n")).collect();
    cluster.console("chaos", &creates).all_ok();

    let acked: Acked = Arc::default();
    let operations = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = files
        .iter()
        .map(|f| {
            spawn_writer(
                cluster.nm_list(),
                f.clone(),
                acked.clone(),
                operations.clone(),
                stop.clone(),
            )
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut dead: HashSet<&str> = HashSet::new();
    while Instant::now() < deadline {
        pause(&mut rng, 200, 600).await;
        let victim = SERVERS[rng.gen_range(0..SERVERS.len())];
        let (serving, leader) = serving_and_leader(&cluster).await;
        let fault = match rng.gen_range(0..10) {
            0 if !dead.contains(victim) => {
                cluster.kill_ss(victim);
                stopped.remove(victim);
                dead.insert(victim);
                "ss killed"
            }
            1 if !dead.contains(victim) && !stopped.contains(victim) => {
                cluster.signal_ss(victim, libc::SIGSTOP);
                stopped.insert(victim);
                "ss hung"
            }
            2 if leader.is_some() => {
                let leader = leader.unwrap();
                cluster.kill_nm(leader);
                pause(&mut rng, 100, 1500).await;
                cluster.start_nm(leader);
                "nm leader killed"
            }
            3 if leader.is_some() => {
                // Longer than its lease: it is deposed while hung.
                let leader = leader.unwrap();
                cluster.signal_nm(leader, libc::SIGSTOP);
                pause(&mut rng, 500, 2500).await;
                cluster.signal_nm(leader, libc::SIGCONT);
                "nm leader hung"
            }
            4 if leader.is_some() => {
                let ip = cluster.nm_ip(leader.unwrap());
                cluster.partitions.cut(ip, cluster.etcd_ip(0));
                pause(&mut rng, 500, 2500).await;
                cluster.partitions.heal();
                "nm leader cut from etcd"
            }
            5 | 6 if serving.is_some() => {
                let ip = cluster.ss_ip(serving.as_deref().unwrap());
                let one_way = rng.gen_bool(0.5);
                for i in 0..3 {
                    if one_way {
                        cluster.partitions.drop_one_way(ip, cluster.nm_ip(i));
                    } else {
                        cluster.partitions.cut(ip, cluster.nm_ip(i));
                    }
                }
                pause(&mut rng, 300, 2500).await;
                cluster.partitions.heal();
                if one_way {
                    "primary's packets to nm dropped"
                } else {
                    "primary cut from nm"
                }
            }
            7 => {
                cluster
                    .partitions
                    .cut(cluster.ss_ip("ss1"), cluster.ss_ip("ss1_backup"));
                pause(&mut rng, 300, 2000).await;
                cluster.partitions.heal();
                "pair cut from each other"
            }
            _ => {
                for name in stopped.drain() {
                    cluster.signal_ss(name, libc::SIGCONT);
                }
                for name in dead.drain() {
                    cluster.spawn_ss(name);
                }
                "healed"
            }
        };
        *faults.entry(fault).or_default() += 1;
    }
    // Heal everything, let the writers finish, and let the pair settle.
    cluster.partitions.heal();
    for name in stopped.drain() {
        cluster.signal_ss(name, libc::SIGCONT);
    }
    for name in dead.drain() {
        cluster.spawn_ss(name);
    }
    for i in 0..3 {
        if !cluster.nm_running(i) {
            cluster.start_nm(i);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    cluster.wait_pair("ss1", PairState::Active).await;
    eventually("the queue to drain", async || {
        let status = cluster.try_status().await?;
        (status.queue_depth == 0 && status.pairs.iter().all(|p| p.pending_jobs == 0)).then_some(())
    })
    .await;

    // Every acknowledged change is readable (in async mode, perhaps in a conflict copy).
    let mut reader = Client::connect(&cluster.nm_list(), "chaos")
        .await
        .expect("client");
    let all: Vec<String> = match reader
        .nm(NmRequest::View {
            all: true,
            long: false,
        })
        .await
    {
        Ok(NmReply::Files { rows }) => rows.into_iter().map(|f| f.name).collect(),
        other => panic!("VIEW -a: {other:?}"),
    };
    let acked = acked.lock().unwrap().clone();
    let (mut total, mut lost, mut conflicts) = (0, Vec::new(), 0);
    for file in &files {
        let copies: Vec<&String> = all
            .iter()
            .filter(|n| n.starts_with(&format!("{file}.conflict-")))
            .collect();
        conflicts += copies.len();
        let mut readable: HashSet<String> = HashSet::new();
        let mut sources = vec![file];
        if mode == "async" {
            sources.extend(copies);
        }
        for source in sources {
            let content = reader.read(source).await.expect("READ");
            let content = String::from_utf8_lossy(&content).into_owned();
            readable.extend(content.split_whitespace().map(str::to_owned));
        }
        for tagged in acked.get(file).into_iter().flatten() {
            total += 1;
            let word = tagged.split('@').next().unwrap_or_default();
            if !readable.contains(word) {
                lost.push(tagged.clone());
            }
        }
    }
    let epochs = cluster.writers_by_epoch(&SERVERS);
    let split: Vec<_> = epochs
        .iter()
        .filter(|(_, servers)| servers.len() > 1)
        .collect();
    println!(
        "ha chaos {mode} seed {seed}: {} operations, faults {faults:?}, {total} acknowledged changes, {} lost, {conflicts} conflict copies, {} epochs",
        operations.load(Ordering::Relaxed),
        lost.len(),
        epochs.len(),
    );
    assert!(total > 0, "the writers made progress");
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        split.is_empty(),
        "two servers accepted writes in one epoch: {split:?}"
    );
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_chaos_sync_mode_loses_nothing() {
    run("sync", env_u64("CHAOS_SEED", 11), env_u64("CHAOS_SECS", 20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_chaos_async_mode_loses_nothing_silently() {
    run(
        "async",
        env_u64("CHAOS_SEED", 11),
        env_u64("CHAOS_SECS", 20),
    )
    .await;
}
