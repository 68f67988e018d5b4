//! A storage server stopped with SIGTERM drains: the requests in flight
//! finish, nothing it acknowledged is lost, its log is checkpointed, no temp
//! file is left behind, and it exits 0.

use client::Client;
use harness::{eventually, Options, TestCluster};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_burst_of_writes_loses_nothing_acknowledged() {
    let options = Options {
        fsync: true,
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&["ss1"], options).await;
    let files: Vec<String> = (0..WRITERS).map(|w| format!("w{w}.txt")).collect();
    let creates: String = files.iter().map(|f| format!("CREATE {f}\n")).collect();
    cluster.console("alice", &creates).all_ok();
    // Each writer puts "S<i>." at the head of its file, as fast as it can,
    // and records the last i acknowledged.
    let acked: Vec<Arc<AtomicI64>> = (0..WRITERS).map(|_| Arc::new(AtomicI64::new(-1))).collect();
    let mut writers = Vec::new();
    for (file, acked) in files.iter().cloned().zip(acked.iter().cloned()) {
        let nm = cluster.nm_addr().to_owned();
        writers.push(tokio::spawn(async move {
            let mut client = Client::connect(&nm, "alice").await.expect("connect");
            for i in 0.. {
                let written = async {
                    client.write_begin(&file, 0).await?;
                    client.write_edit(0, &format!("S{i}.")).await?;
                    client.write_commit().await
                }
                .await;
                if written.is_err() {
                    return;
                }
                acked.store(i, Ordering::SeqCst);
            }
        }));
    }
    eventually(
        "every writer to have some writes acknowledged",
        async || {
            acked
                .iter()
                .all(|a| a.load(Ordering::SeqCst) >= 10)
                .then_some(())
        },
    )
    .await;
    let status = cluster.stop_ss("ss1").await;
    assert!(status.success(), "ss exited with {status} after SIGTERM");
    for writer in writers {
        writer.await.unwrap();
    }
    let storage = cluster.storage("ss1");
    let left: Vec<_> = std::fs::read_dir(storage.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "temp files left after a clean stop: {left:?}"
    );
    let log = std::fs::metadata(storage.join("wal.log")).map_or(0, |m| m.len());
    assert_eq!(
        log, 0,
        "the write-ahead log was not checkpointed at the stop"
    );
    cluster.start_ss("ss1").await;
    for (file, acked) in files.iter().zip(&acked) {
        let last = acked.load(Ordering::SeqCst);
        let content = std::fs::read_to_string(storage.join("files").join(file)).unwrap();
        for i in 0..=last {
            assert!(
                content.contains(&format!("S{i}.")),
                "{file}: acknowledged write S{i}. (of 0..={last}) lost: {content:?}"
            );
        }
    }
}
