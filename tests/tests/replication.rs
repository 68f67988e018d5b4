//! Primary/backup replication: every operation reaches the backup, pairing in
//! either order, coalescing, overflow into a sync, sync by difference, and a
//! backup killed in the middle of a large transfer.

use harness::{eventually, Options, TestCluster};
use shared::proto::{Event, EventKind, JobKind, JobStep, PairState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Waits for the subscription to be live (its own registration shows in nm's LIST).
async fn watching(cluster: &TestCluster, events: &Arc<Mutex<Vec<Event>>>) {
    // A sync request on a pair produces an event; any event proves the stream is up.
    let _ = events;
    eventually("the watcher to subscribe", async || {
        let run = cluster.console("probe", "LIST\n");
        run.get(0)["data"]["users"]
            .as_array()?
            .iter()
            .any(|u| u == "watcher")
            .then_some(())
    })
    .await;
}

fn job_steps(events: &Arc<Mutex<Vec<Event>>>, file: &str, step: JobStep) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Job { file: Some(f), step: s, .. } if f == file && *s == step))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_reaches_the_backup() {
    let cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.console("bob", "LIST\n").all_ok();
    cluster
        .console(
            "alice",
            "CREATE a.txt
WRITE a.txt 0
0 One. Two.
ETIRW
CHECKPOINT a.txt v1
WRITE a.txt 2
0 Three.
ETIRW
UNDO a.txt
WRITE a.txt 1
0 Deux
ETIRW
REVERT a.txt v1
ADDACCESS -W a.txt bob
CREATE b.txt
ADDACCESS -R b.txt bob
REMACCESS b.txt bob
CREATE gone.txt
WRITE gone.txt 0
0 Bye.
ETIRW
DELETE gone.txt
CREATEFOLDER docs
CREATE docs/c.txt
WRITE docs/c.txt 0
0 In a folder.
ETIRW
CREATE m.txt
CHECKPOINT m.txt keep
MOVE m.txt docs
",
        )
        .all_ok();
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let backup = cluster.storage("ss1_backup");
    assert_eq!(
        std::fs::read_to_string(backup.join("files/a.txt")).unwrap(),
        "One. Two."
    );
    assert!(backup.join("files/docs/m.txt").exists());
    assert!(backup.join("checkpoints/docs/m.txt/keep").exists());
    assert!(
        !backup.join("files/m.txt").exists(),
        "MOVE reached the backup"
    );
    assert!(
        !backup.join("files/gone.txt").exists(),
        "DELETE reached the backup"
    );
    let info = cluster.console("alice", "INFO a.txt\n");
    assert_eq!(
        info.get(0)["data"]["servers"],
        serde_json::json!(["ss1", "ss1_backup"])
    );
    assert_eq!(info.get(0)["data"]["backup_in_sync"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_works_whichever_server_registers_first() {
    let mut cluster = TestCluster::start(&["ss2_backup"]).await;
    cluster.start_ss("ss2").await;
    cluster.wait_pair("ss2", PairState::Active).await;
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Unpaired).await;
    cluster.console("alice", "CREATE x\nCREATE y\n").all_ok();
    cluster.start_ss("ss1_backup").await;
    // An explicit --backup-of pairs a server of any name.
    cluster.spawn_ss_with("mirror", &["--backup-of", "ss3"]);
    cluster.wait_alive("mirror").await;
    cluster.start_ss("ss3").await;
    let status = cluster.wait_replicated().await;
    let pairs: Vec<(String, Option<String>, PairState)> = status
        .pairs
        .iter()
        .map(|p| (p.primary.clone(), p.backup.clone(), p.state))
        .collect();
    assert_eq!(
        pairs,
        [
            ("ss1".into(), Some("ss1_backup".into()), PairState::Active),
            ("ss2".into(), Some("ss2_backup".into()), PairState::Active),
            ("ss3".into(), Some("mirror".into()), PairState::Active),
        ]
    );
    cluster.wait_same_files("ss1", "ss1_backup").await;
    cluster.wait_same_files("ss2", "ss2_backup").await;
    let backups_hold = status
        .servers
        .iter()
        .filter(|s| s.name.ends_with("_backup") || s.name == "mirror")
        .all(|s| s.role == shared::proto::ServerRole::Backup);
    assert!(backups_hold);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_to_one_file_coalesce_while_the_backup_is_busy() {
    let cluster = TestCluster::start_with(
        &["ss1", "ss1_backup"],
        Options {
            nm_args: vec!["--repl-workers", "1"],
            // The jobs' queue is what this tests: changes go through nm.
            ..Options::default()
        }
        .jobs_only(),
    )
    .await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster.console("alice", "CREATE hot.txt\n").all_ok();
    eventually("the create to start", async || {
        (job_steps(&events, "hot.txt", JobStep::Started) >= 1).then_some(())
    })
    .await;
    // The backup hangs: the running job waits, and every later change queues behind it.
    cluster.wait_replicated().await;
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    let writes: String = (0..20)
        .map(|i| format!("WRITE hot.txt {i}\n0 Sentence {i}.\nETIRW\n"))
        .collect();
    cluster.console("alice", &writes).all_ok();
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let queued = job_steps(&events, "hot.txt", JobStep::Queued);
    let coalesced = job_steps(&events, "hot.txt", JobStep::Coalesced);
    assert!(
        coalesced >= 18 && queued <= 3,
        "20 changes while the backup hung: {queued} queued, {coalesced} coalesced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_becomes_one_sync_and_nothing_is_lost() {
    let cluster = TestCluster::start_with(
        &["ss1", "ss1_backup"],
        // The queue is what this tests: changes go through nm.
        Options {
            nm_args: vec!["--repl-queue-capacity", "4", "--repl-workers", "1"],
            ..Options::default()
        }
        .jobs_only(),
    )
    .await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    let creates: String = (0..30).map(|i| format!("CREATE f{i:02}\n")).collect();
    let run = cluster.console("alice", &creates);
    run.all_ok();
    let status = cluster.status().await;
    assert!(status.queue_depth <= 6, "bounded: {}", status.queue_depth);
    assert_eq!(status.pairs[0].state, PairState::Syncing);
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_eq!(
        harness::stored_files(&cluster.storage("ss1_backup")).len(),
        30
    );
    let overflowed = events.lock().unwrap().iter().any(|e| {
        matches!(&e.kind, EventKind::Job { kind: JobKind::SyncPair, detail: Some(d), .. } if d.contains("queue is full"))
    });
    assert!(overflowed, "the overflow is reported, not silent");
}

/// The `applied` detail of the last sync-pair job.
fn last_sync_detail(events: &Arc<Mutex<Vec<Event>>>) -> Option<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Job {
                kind: JobKind::SyncPair,
                step: JobStep::Applied,
                detail,
                ..
            } => detail.clone(),
            _ => None,
        })
}

/// Kills the backup, runs `script` as alice meanwhile, brings the backup
/// back, waits for the two servers to match and returns the sync's detail.
async fn backup_away_while(
    cluster: &mut TestCluster,
    events: &Arc<Mutex<Vec<Event>>>,
    script: &str,
) -> String {
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster.console("alice", script).all_ok();
    events.lock().unwrap().clear();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    eventually("the catch-up sync", async || last_sync_detail(events)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_backup_receives_only_the_difference() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    cluster.console("friend", "LIST\n").all_ok();
    let creates: String = (0..50)
        .map(|i| format!("CREATE f{i:02}\nWRITE f{i:02} 0\n0 File {i}.\nETIRW\n"))
        .collect();
    cluster.console("alice", &creates).all_ok();
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    // A late backup receives everything.
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let first = last_sync_detail(&events).expect("a sync ran");
    assert!(first.starts_with("copied 50 files"), "{first}");
    // Away for a while: three changes, one delete, one new file.
    let second = backup_away_while(
        &mut cluster,
        &events,
        "WRITE f01 1\n0 More.\nETIRW\nWRITE f02 1\n0 More.\nETIRW\nADDACCESS -R f03 friend\nDELETE f04\nCREATE f50\n",
    )
    .await;
    // nm remembers which files changed while the backup was away and
    // compares only those (three changes, one delete, one new file).
    assert!(
        second.starts_with("caught up on the 5 files changed since the pair was level")
            && second.contains("copied 4 files")
            && second.contains("0 already current")
            && second.contains("1 deletes applied"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_back_on_an_emptied_disk_is_compared_in_full_and_after_an_nm_restart_only_on_what_changed(
) {
    let mut cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let creates: String = (0..20)
        .map(|i| format!("CREATE f{i:02}\nWRITE f{i:02} 0\n0 File {i}.\nETIRW\n"))
        .collect();
    cluster.console("alice", &creates).all_ok();
    cluster.wait_replicated().await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;

    // The same folder under a new identity: nm must not trust what it knew.
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console("alice", "WRITE f01 1\n0 More.\nETIRW\n")
        .all_ok();
    let backup = cluster.storage("ss1_backup");
    std::fs::remove_dir_all(&backup).unwrap();
    events.lock().unwrap().clear();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let detail = eventually("the sync", async || last_sync_detail(&events)).await;
    assert!(detail.starts_with("copied 20 files"), "{detail}");

    // A restarted nm knows nothing of what changed, but the serving server
    // recorded what its standby has not confirmed since that sync: only
    // that is compared.
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster.kill_nm();
    cluster.start_nm().await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster.wait_alive("ss1").await;
    cluster
        .console("alice", "WRITE f02 1\n0 More.\nETIRW\n")
        .all_ok();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let detail = eventually("the sync", async || last_sync_detail(&events)).await;
    assert!(
        detail.starts_with("caught up on the 1 files changed since the pair was level")
            && detail.contains("copied 1 files"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_killed_mid_transfer_keeps_no_partial_file_and_the_next_sync_completes() {
    let mut cluster = TestCluster::start_with(
        &["ss1"],
        Options {
            ss_args: vec!["--chunk-delay", "2ms"],
            ..Options::default()
        },
    )
    .await;
    // About 24 MB in one file, written in edit lines under the frame limit.
    // Committing it takes seconds in a debug build on a loaded machine
    // (it failed the default 5 s here before any change of this test's
    // subject), which is not what this test is about.
    let mut writer = cluster.client("alice").await;
    writer.set_reply_timeout(std::time::Duration::from_secs(60));
    writer
        .nm(shared::proto::NmRequest::Create {
            file: "big.txt".into(),
        })
        .await
        .unwrap();
    writer.write_begin("big.txt", 0).await.unwrap();
    let line = "abcdefg ".repeat(100_000);
    let mut words = 0;
    for _ in 0..30 {
        words = writer.write_edit(words as i64, &line).await.unwrap();
    }
    let stats = writer.write_commit().await.unwrap();
    assert!(stats.size > 20_000_000);

    cluster.start_ss("ss1_backup").await;
    let tmp = cluster.storage("ss1_backup").join("tmp");
    let pid = cluster.pid("ss1_backup").unwrap();
    eventually("the transfer to be under way", async || {
        (largest_open_temp(pid, &tmp) > 1_000_000).then_some(())
    })
    .await;
    cluster.kill_ss("ss1_backup");
    // The copy's temp file is unnamed (it would get its name when placed)
    // and went with the process; a named one (no O_TMPFILE) goes at restart.
    let interrupted: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let backup = cluster.storage("ss1_backup");
    assert!(
        !backup.join("files/big.txt").exists(),
        "nothing partial was installed"
    );
    cluster.start_ss("ss1_backup").await;
    for path in &interrupted {
        assert!(!path.exists(), "{} survived the restart", path.display());
    }
    tokio::time::timeout(Duration::from_secs(60), cluster.wait_replicated())
        .await
        .expect("the sync completes");
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// The size of the largest file process `pid` holds open in `tmp`, named
/// there or unnamed (`O_TMPFILE`), in bytes.
fn largest_open_temp(pid: u32, tmp: &std::path::Path) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(tmp)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// A large file goes to the backup unframed (`sendfile` on the primary, one
/// buffer on the backup) and arrives whole, checksum and all; a file written
/// after it still comes framed.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_is_copied_unframed_and_arrives_whole() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    let mut writer = cluster.client("alice").await;
    writer.set_reply_timeout(std::time::Duration::from_secs(60));
    for file in ["big.txt", "small.txt"] {
        writer
            .nm(shared::proto::NmRequest::Create { file: file.into() })
            .await
            .unwrap();
    }
    writer.write_begin("big.txt", 0).await.unwrap();
    let mut words = 0;
    for i in 0..6 {
        let line = format!("w{i}x ").repeat(100_000);
        words = writer.write_edit(words as i64, &line).await.unwrap();
    }
    let stats = writer.write_commit().await.unwrap();
    assert!(stats.size > 2_000_000, "{}", stats.size);
    cluster
        .console("alice", "WRITE small.txt 0\n0 Small.\nETIRW\n")
        .all_ok();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    for file in ["big.txt", "small.txt"] {
        let primary = harness::stored_content(&cluster.storage("ss1"), file);
        let backup = harness::stored_content(&cluster.storage("ss1_backup"), file);
        assert!(
            primary.is_some() && primary == backup,
            "{file} differs on the backup"
        );
    }
    let log = std::fs::read_to_string(cluster.dir().join("ss1.log")).unwrap();
    let raw: Vec<&str> = log.lines().filter(|l| l.contains("ss_sent_raw")).collect();
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert!(raw[0].contains("big.txt"), "{raw:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_job_and_pair_events_as_json_lines() {
    use std::io::{BufRead, BufReader};
    // Job events: changes go through nm (the stream's events are in tests/stream.rs).
    let mut cluster = TestCluster::start_with(&["ss1"], Options::default().jobs_only()).await;
    let mut watcher = cluster
        .console_command("operator", &["--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = watcher.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"WATCH 3\n").unwrap();
    drop(stdin);
    eventually("the watcher to subscribe", async || {
        let run = cluster.console("probe", "LIST\n");
        run.get(0)["data"]["users"]
            .as_array()?
            .iter()
            .any(|u| u == "operator")
            .then_some(())
    })
    .await;
    cluster.start_ss("ss1_backup").await;
    cluster.console("alice", "CREATE w.txt\n").all_ok();
    let lines: Vec<serde_json::Value> = BufReader::new(watcher.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(watcher.wait().unwrap().success());
    let last = lines.last().unwrap();
    assert_eq!(last["command"], "WATCH 3");
    assert_eq!(last["ok"], true);
    let events = &lines[..lines.len() - 1];
    assert_eq!(last["data"]["events"], events.len());
    let became_active = events
        .iter()
        .any(|e| e["kind"]["pair"]["to"] == "ACTIVE" && e["kind"]["pair"]["primary"] == "ss1");
    let applied = events
        .iter()
        .any(|e| e["kind"]["job"]["file"] == "w.txt" && e["kind"]["job"]["step"] == "APPLIED");
    assert!(became_active && applied, "{events:#?}");
    for e in events {
        assert!(e["seq"].as_u64().is_some() && e["at_ms"].as_u64().is_some());
    }
}

fn sync_failures(events: &Arc<Mutex<Vec<Event>>>) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                &e.kind,
                EventKind::Job {
                    kind: JobKind::SyncPair,
                    step: JobStep::Failed,
                    ..
                }
            )
        })
        .count()
}

fn twenty_files(cluster: &TestCluster) {
    let creates: String = (0..20)
        .map(|i| format!("CREATE f{i:02}\nWRITE f{i:02} 0\n0 File {i}.\nETIRW\n"))
        .collect();
    cluster.console("alice", &creates).all_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_whose_start_up_scan_has_not_run_catches_up_and_serves_after_a_failover() {
    let mut cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    twenty_files(&cluster);
    cluster.wait_replicated().await;
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console("alice", "WRITE f01 1\n0 Changed while away.\nETIRW\n")
        .all_ok();
    // Its scan waits an hour: everything below is served from disk.
    cluster.spawn_ss_with("ss1_backup", &["--scan-delay", "1h"]);
    cluster.wait_alive("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    // Promoted, it serves files it has not loaded yet, and new ones.
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let read = |file: &str| {
        let run = cluster.console("alice", &format!("READ {file}\n"));
        run.get(0)["data"]["content"].as_str().map(str::to_owned)
    };
    let changed = eventually("a READ through the promoted backup", async || read("f01")).await;
    assert_eq!(changed, "File 1. Changed while away.");
    assert_eq!(read("f07").as_deref(), Some("File 7."));
    let codes = cluster
        .console("alice", "CREATE f07\nCREATE f20\nDELETE f03\nREAD f03\n")
        .codes();
    assert_eq!(codes, ["E_EXISTS", "ok", "ok", "E_NOT_FOUND"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_comparison_waits_for_a_slow_start_up_scan_without_failing() {
    let mut cluster = TestCluster::start_with(
        &["ss1", "ss1_backup"],
        Options {
            nm_args: vec!["--ss-timeout", "1s"],
            ..Options::default()
        },
    )
    .await;
    cluster.wait_pair("ss1", PairState::Active).await;
    twenty_files(&cluster);
    cluster.wait_replicated().await;
    // A restarted primary no longer knows what its standby lacks: the
    // backup's return is compared in full, and its inventory waits for a
    // scan longer than nm's timeout.
    cluster.kill_ss("ss1_backup");
    cluster.kill_ss("ss1");
    cluster.start_ss("ss1").await;
    cluster.wait_alive("ss1").await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster
        .console("alice", "WRITE f02 1\n0 Changed while away.\nETIRW\n")
        .all_ok();
    cluster.spawn_ss_with("ss1_backup", &["--scan-delay", "3s"]);
    cluster.wait_alive("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let detail = eventually("the sync", async || last_sync_detail(&events)).await;
    assert!(
        detail.starts_with("copied 1 files") && detail.contains("19 already current"),
        "{detail}"
    );
    assert_eq!(
        sync_failures(&events),
        0,
        "the sync timed out waiting for the scan"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_and_hand_back_a_returning_backup_is_caught_up_on_what_changed() {
    let mut cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    twenty_files(&cluster);
    cluster.wait_replicated().await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    // The primary fails; the backup serves and takes changes; the primary
    // returns, is compared in full (what it acknowledged is unknown) and
    // takes over again.
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    eventually("writes on the promoted backup", async || {
        let run = cluster.console("alice", "WRITE f03 1\n0 On the backup.\nETIRW\n");
        run.codes().iter().all(|c| c == "ok").then_some(())
    })
    .await;
    cluster.start_ss("ss1").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let status = cluster.status().await;
    assert!(status.servers.iter().any(|s| s.name == "ss1" && s.serving));
    let f03 = harness::stored_content(&cluster.storage("ss1"), "f03").unwrap();
    assert_eq!(f03, "File 3. On the backup.");
    // The hand-back left the pair level the other way round: the backup's
    // next return compares only what changed meanwhile.
    let detail = backup_away_while(
        &mut cluster,
        &events,
        "WRITE f04 1\n0 After the hand-back.\nETIRW\nDELETE f05\n",
    )
    .await;
    assert!(
        detail.starts_with("caught up on the 2 files changed since the pair was level")
            && detail.contains("copied 1 files")
            && detail.contains("1 deletes applied"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_copied_by_jobs_are_not_compared_again_after_an_nm_restart() {
    // Without the stream every change goes through nm's jobs; each job
    // confirms its copy to the serving server, whose record of what the
    // standby lacks is all a restarted nm has to go by.
    let mut cluster =
        TestCluster::start_with(&["ss1", "ss1_backup"], Options::default().jobs_only()).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    twenty_files(&cluster);
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console("alice", "WRITE f01 1\n0 While away.\nETIRW\n")
        .all_ok();
    cluster.kill_nm();
    cluster.start_nm().await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster.wait_alive("ss1").await;
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let detail = eventually("the sync", async || last_sync_detail(&events)).await;
    assert!(
        detail.starts_with("caught up on the 1 files changed since the pair was level")
            && detail.contains("copied 1 files"),
        "{detail}"
    );
}

/// A partner's batch copy (`GetFiles`) answers every file in the order
/// asked: a small one whole with its checksum, a large one as `Large` (to
/// be asked for alone), and one it cannot read with its own error, while
/// the others go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_copy_answers_each_file_in_order_and_goes_on_past_one_it_cannot_read() {
    use shared::proto::{FileCopy, Op, PeerRequest, PullItem, Role, SsReply};
    let cluster = TestCluster::start(&["ss1"]).await;
    let mut writer = cluster.client("alice").await;
    writer.set_reply_timeout(Duration::from_secs(60));
    for file in ["small.txt", "big.txt"] {
        writer
            .nm(shared::proto::NmRequest::Create { file: file.into() })
            .await
            .unwrap();
    }
    cluster
        .console("alice", "WRITE small.txt 0\n0 Small.\nETIRW\n")
        .all_ok();
    writer.write_begin("big.txt", 0).await.unwrap();
    writer
        .write_edit(0, &"words ".repeat(100_000))
        .await
        .unwrap();
    writer.write_commit().await.unwrap();

    let key = shared::auth::ClusterKey::load(&cluster.key_file()).unwrap();
    let epoch = cluster.status().await.pairs[0].epoch;
    let ticket = |file: &str| {
        let expires = shared::now_ms() + 60_000;
        key.ticket_key()
            .issue("ss1_backup", file, Op::Read, epoch, expires)
    };
    let item = |file: &str, ticket| PullItem {
        file: file.into(),
        ticket,
    };
    let items = vec![
        item("small.txt", ticket("small.txt")),
        item("missing.txt", ticket("missing.txt")),
        item("big.txt", ticket("big.txt")),
        // Someone else's ticket.
        item("small.txt", ticket("big.txt")),
        item("small.txt", ticket("small.txt")),
    ];
    let ss1 = cluster.ss_addr("ss1").await;
    let mut partner = shared::connection::RpcClient::connect_keyed(
        &ss1,
        Role::StorageServer,
        "ss1_backup",
        Some(&key),
    )
    .await
    .unwrap();
    let id = partner.send(PeerRequest::GetFiles { items }).await.unwrap();
    let mut copies = Vec::new();
    loop {
        match partner.next_reply::<SsReply>(id).await.unwrap().unwrap() {
            SsReply::Files { files } => copies.extend(files),
            SsReply::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let names: Vec<&str> = copies.iter().map(|c| c.file.as_str()).collect();
    assert_eq!(
        names,
        [
            "small.txt",
            "missing.txt",
            "big.txt",
            "small.txt",
            "small.txt"
        ]
    );
    for at in [0, 4] {
        match &copies[at].copy {
            Ok(FileCopy::Whole {
                meta,
                content,
                checksum,
            }) => {
                assert_eq!(String::from_utf8_lossy(content).trim(), "Small.");
                assert_eq!(*checksum, crc32fast::hash(content));
                assert_eq!(meta.owner, "alice");
            }
            other => panic!("small.txt came as {other:?}"),
        }
    }
    let missing = copies[1].copy.as_ref().unwrap_err();
    assert_eq!(missing.code, shared::ErrorCode::NotFound, "{missing}");
    assert!(matches!(copies[2].copy, Ok(FileCopy::Large)));
    let refused = copies[3].copy.as_ref().unwrap_err();
    assert_eq!(refused.code, shared::ErrorCode::Unauthorized, "{refused}");
}

/// Whatever the storage servers' frame limit, a sync completes: the batch
/// copy's replies stay under both the server's limit and the default one
/// its partner reads with, and a file too large to go whole is asked for
/// alone. A 64 KiB limit with files of 14 and 28 KiB; a 4 MiB limit with
/// two files of 600 KiB, which would go whole in one frame of 1.2 MiB if
/// only the server's own limit counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_under_any_frame_limit_copies_everything() {
    for (limit, words) in [("65536", [2_000, 4_000]), ("4194304", [86_000, 86_000])] {
        let mut cluster = TestCluster::start_with(
            &["ss1"],
            Options {
                ss_args: vec!["--max-frame", limit],
                ..Options::default()
            },
        )
        .await;
        let mut script = String::new();
        for i in 0..300 {
            script.push_str(&format!(
                "CREATE f{i}.txt\nWRITE f{i}.txt 0\n0 File {i} of a sync under a frame limit.\nETIRW\n"
            ));
        }
        for (i, words) in words.into_iter().enumerate() {
            let line = "seven. ".repeat(words);
            script.push_str(&format!(
                "CREATE big{i}.txt\nWRITE big{i}.txt 0\n0 {line}\nETIRW\n"
            ));
        }
        cluster.console("alice", &script).all_ok();
        cluster.start_ss("ss1_backup").await;
        tokio::time::timeout(Duration::from_secs(60), cluster.wait_replicated())
            .await
            .unwrap_or_else(|_| panic!("the sync under a {limit}-byte frame limit completes"));
        cluster.wait_same_files("ss1", "ss1_backup").await;
    }
}

/// A sync of more files than one `PullFiles` holds: nm keeps two batches in
/// flight on the backup, and every file arrives whole, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_of_many_batches_in_flight_at_once_copies_every_file() {
    let mut cluster = TestCluster::start(&[]).await;
    let storage = cluster.storage("ss1");
    let seeded = std::process::Command::new(harness::bin("ss-seed"))
        .args(["--storage", storage.to_str().unwrap(), "--files", "3500"])
        .args(["--size", "100"])
        .output()
        .expect("ss-seed runs");
    assert!(seeded.status.success(), "{seeded:?}");
    cluster.start_ss("ss1").await;
    eventually("nm knows ss1's 3,500 files", async || {
        let status = cluster.status().await;
        status
            .servers
            .iter()
            .any(|s| s.name == "ss1" && s.files == 3500)
            .then_some(())
    })
    .await;
    let events = cluster.watch_events();
    watching(&cluster, &events).await;
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.assert_same_files("ss1", "ss1_backup");
    // The backup's log: each PULL_FILES with when it ended and how long it took.
    let log = std::fs::read_to_string(cluster.dir().join("ss1_backup.log")).unwrap();
    let mut pulls: Vec<(std::time::SystemTime, std::time::SystemTime)> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["operation"] == "PULL_FILES")
        .map(|v| {
            let end = humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
            (
                end - Duration::from_micros(v["micros"].as_u64().unwrap()),
                end,
            )
        })
        .collect();
    pulls.sort();
    assert_eq!(pulls.len(), 4, "3,500 files in batches of 1,024");
    assert!(
        pulls.windows(2).any(|w| w[1].0 < w[0].1),
        "no two batches were in flight at once: {pulls:?}"
    );
    let copied = events.lock().unwrap().iter().any(|e| {
        matches!(&e.kind, EventKind::Job { kind: JobKind::SyncPair, step: JobStep::Applied, detail: Some(detail), .. }
            if detail.contains("copied 3500 files"))
    });
    assert!(copied, "the sync reports every file copied");
}

/// A sync of files with many checkpoints each, one of them too large to
/// come whole: the requests for checkpoints go out a bounded amount ahead
/// of their answers, and every checkpoint arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_of_files_with_many_checkpoints_copies_every_one() {
    let mut cluster = TestCluster::start_with(
        &["ss1"],
        Options {
            ss_args: vec!["--max-frame", "65536"],
            ..Options::default()
        },
    )
    .await;
    let mut script = String::new();
    for i in 0..4 {
        let words = if i == 0 { 4_000 } else { 3 };
        let line = "seven. ".repeat(words);
        script.push_str(&format!(
            "CREATE c{i}.txt\nWRITE c{i}.txt 0\n0 {line}\nETIRW\n"
        ));
        for tag in 0..40 {
            script.push_str(&format!(
                "CHECKPOINT c{i}.txt tag-{tag:02}-of-a-file-with-many\n"
            ));
        }
    }
    cluster.console("alice", &script).all_ok();
    cluster.start_ss("ss1_backup").await;
    tokio::time::timeout(Duration::from_secs(60), cluster.wait_replicated())
        .await
        .expect("the sync completes");
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let checkpoints = std::fs::read_dir(cluster.storage("ss1_backup").join("checkpoints/c0.txt"))
        .unwrap()
        .count();
    assert_eq!(checkpoints, 40);
}

/// A sync to an empty backup packs its small copies (no file of their
/// own). Killed and restarted, the backup still holds them; promoted, it
/// serves them, takes a WRITE and a DELETE of packed files, and killed and
/// restarted again it serves what those changes left.
#[tokio::test(flavor = "multi_thread")]
async fn packed_copies_survive_kills_and_serve_every_change_after_a_failover() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    twenty_files(&cluster);
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let backup = cluster.storage("ss1_backup");
    assert!(
        !backup.join("files/f07").exists() && harness::packs::packed_files(&backup).len() == 20,
        "the sync's copies are packed"
    );
    cluster.kill_ss("ss1_backup");
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;

    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let read = |cluster: &TestCluster, file: &str| {
        let run = cluster.console("alice", &format!("READ {file}\n"));
        run.get(0)["data"]["content"].as_str().map(str::to_owned)
    };
    let seven = eventually("a READ through the promoted backup", async || {
        read(&cluster, "f07")
    })
    .await;
    assert_eq!(seven, "File 7.");
    let codes = cluster
        .console(
            "alice",
            "WRITE f01 1\n0 Changed.\nETIRW\nDELETE f03\nCREATEFOLDER d\nMOVE f05 d\n",
        )
        .codes();
    assert_eq!(codes, ["ok", "ok", "ok", "ok"]);

    cluster.kill_ss("ss1_backup");
    cluster.start_ss("ss1_backup").await;
    let one = eventually("the restarted backup to serve", async || {
        read(&cluster, "f01")
    })
    .await;
    assert_eq!(one, "File 1. Changed.");
    let run = cluster.console("alice", "READ f03\nREAD f05\nREAD d/f05\nREAD f19\n");
    assert_eq!(run.codes(), ["E_NOT_FOUND", "E_NOT_FOUND", "ok", "ok"]);
    assert_eq!(run.get(2)["data"]["content"], "File 5.");
    assert_eq!(run.get(3)["data"]["content"], "File 19.");
}
