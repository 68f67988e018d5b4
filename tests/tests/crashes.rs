//! Crash consistency: a storage server killed (SIGKILL) at many points of
//! WRITE commits, UNDOs, access-list changes and incoming transfers comes back with no torn file, no
//! leftover temp file, metadata that agrees with the content, and a pair
//! that converges.

use harness::{stored_files, stored_meta, tree, Options, TestCluster};
use shared::proto::{Access, FileMeta, NmRequest, PairState};
use std::path::Path;
use std::time::Duration;

/// Every file has metadata, and it agrees with its content; no metadata is
/// left without its content.
fn assert_consistent(storage: &Path) {
    let files = stored_files(storage);
    for name in tree(&storage.join("meta")).keys() {
        assert!(files.contains_key(name), "meta/{name} without its content");
    }
    for (name, content) in &files {
        let meta: FileMeta = stored_meta(storage, name);
        let text = String::from_utf8_lossy(content);
        assert_eq!(meta.stats.size, content.len() as u64, "{name}: size");
        assert_eq!(
            meta.stats.words,
            text.split_whitespace().count() as u64,
            "{name}: words"
        );
    }
}

fn temp_files(storage: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(storage.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_during_commits_and_transfers_leave_consistent_storage() {
    let options = Options {
        fsync: true,
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console("alice", "CREATE w.txt\nCREATE big.txt\n")
        .all_ok();
    // Known to nm, so that access-list changes naming bob are made.
    cluster.console("bob", "VIEW\n").all_ok();
    cluster
        .console("alice", "ADDACCESS -R w.txt bob\nREMACCESS w.txt bob\n")
        .all_ok();
    let filler = "lorem ipsum dolor ".repeat(20_000);
    for round in 0..12u64 {
        // A writer commits as fast as it can while a large file replicates.
        let nm = cluster.nm_addr().to_owned();
        let filler = filler.clone();
        let writer = tokio::spawn(async move {
            let Ok(mut client) = client::Client::connect(&nm, "alice").await else {
                return;
            };
            client.set_reply_timeout(Duration::from_millis(500));
            for i in 0.. {
                let file = if i % 2 == 0 { "w.txt" } else { "big.txt" };
                let content = if i % 2 == 0 {
                    format!("r{round} w{i}.")
                } else {
                    filler.clone()
                };
                let ok = async {
                    client.write_begin(file, 0).await?;
                    client.write_edit(0, &content).await?;
                    client.write_commit().await
                }
                .await;
                if ok.is_err() {
                    client.write_abort().await;
                    return;
                }
                // Changes that touch metadata alone, or put back an older
                // content, between the commits (refusals are fine here).
                let file = "w.txt".to_owned();
                let other = match i % 6 {
                    0 => Some(NmRequest::Undo { file }),
                    2 => Some(NmRequest::AddAccess {
                        file,
                        user: "bob".into(),
                        access: Access::Read,
                    }),
                    4 => Some(NmRequest::RemAccess {
                        file,
                        user: "bob".into(),
                    }),
                    _ => None,
                };
                if let Some(request) = other {
                    let _ = client.nm(request).await;
                }
            }
        });
        // Kill at a different moment each round: during a commit on the
        // primary (even rounds) or an incoming transfer on the backup (odd).
        let victim = if round % 2 == 0 { "ss1" } else { "ss1_backup" };
        let spread = Duration::from_millis(5 + round * 7);
        tokio::time::sleep(spread).await;
        let before = temp_files(&cluster.storage(victim));
        cluster.kill_ss(victim);
        writer.abort();
        let _ = writer.await;
        // Start-up repairs what the kill cut in half, before serving.
        cluster.start_ss(victim).await;
        for path in &before {
            assert!(!path.exists(), "{} survived the restart", path.display());
        }
        cluster.wait_pair("ss1", PairState::Active).await;
        cluster.wait_replicated().await;
        assert_consistent(&cluster.storage(victim));
    }
    cluster.wait_replicated().await;
    // The writer was cut off mid-commit: that commit's notice (and so its
    // replication) may reach nm after the queue first looks empty.
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_consistent(&cluster.storage("ss1"));
    assert_consistent(&cluster.storage("ss1_backup"));
}
