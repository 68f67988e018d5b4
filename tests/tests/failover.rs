//! Failure detection, failover, recovery and fencing, with short timings
//! (100 ms heartbeats, a 1 s failure timeout).

use client::Client;
use harness::{eventually, Options, TestCluster};
use shared::connection::RpcClient;
use shared::proto::{EditLine, Op, PairState, Role, ServerState, SsReply, SsRequest};
use shared::ErrorCode;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

fn fast() -> Options {
    Options {
        nm_args: vec!["--heartbeat-timeout", "1s"],
        ..Options::default()
    }
}

async fn pair_cluster() -> TestCluster {
    pair_cluster_with(fast()).await
}

async fn pair_cluster_with(options: Options) -> TestCluster {
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console(
            "alice",
            "CREATE a.txt\nWRITE a.txt 0\n0 Before the failure.\nETIRW\nCREATE old.txt\n",
        )
        .all_ok();
    cluster.wait_replicated().await;
    cluster
}

/// A client prepending words `<prefix>1`, `<prefix>2`, … to sentence 0 of
/// `file` until `stop`, through whatever fails; returns the acknowledged words.
fn spawn_writer(
    nm: &str,
    file: &str,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> (JoinHandle<Vec<String>>, Arc<AtomicUsize>) {
    let progress = Arc::new(AtomicUsize::new(0));
    let counter = progress.clone();
    let (nm, file, prefix) = (nm.to_owned(), file.to_owned(), prefix.to_owned());
    let handle = tokio::spawn(async move {
        let (mut acked, mut attempts, mut client) = (Vec::new(), 0u32, None);
        while !stop.load(Ordering::Relaxed) {
            attempts += 1;
            if client.is_none() {
                client = Client::connect(&nm, "alice").await.ok();
                if let Some(c) = client.as_mut() {
                    c.set_reply_timeout(Duration::from_millis(500));
                }
            }
            let Some(c) = client.as_mut() else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let word = format!("{prefix}{attempts}");
            let written = async {
                c.write_begin(&file, 0).await?;
                c.write_edit(0, &word).await?;
                c.write_commit().await
            }
            .await;
            match written {
                Ok(_) => {
                    acked.push(word);
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    c.write_abort().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        acked
    });
    (handle, progress)
}

/// Asserts that every acknowledged word is in `file`.
fn assert_all_present(cluster: &TestCluster, file: &str, acked: &[String]) {
    let content = cluster.console("alice", &format!("READ {file}\n")).get(0)["data"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let words: HashSet<&str> = content.split_whitespace().collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|w| !words.contains(w.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

fn codes(cluster: &TestCluster, user: &str, script: &str) -> Vec<String> {
    cluster.console(user, script).codes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_fails_over_and_catches_up_when_it_returns() {
    let mut cluster = pair_cluster().await;
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    // PRIMARY_FAILED shows from the failure on; the epoch changes once the
    // backup has taken its role and the promotion is recorded.
    eventually("the promotion to bump the epoch", async || {
        let status = cluster.status().await;
        let backup_serves = status
            .servers
            .iter()
            .any(|s| s.name == "ss1_backup" && s.serving);
        (status.pairs[0].epoch == 1 && backup_serves).then_some(())
    })
    .await;
    let during = cluster.console(
        "alice",
        "READ a.txt\nSTREAM a.txt\nWRITE a.txt 1\n0 During it.\nETIRW\nCREATE new.txt\nDELETE old.txt\nUNDO a.txt\nWRITE a.txt 1\n0 Again.\nETIRW\nREAD a.txt\n",
    );
    during.all_ok();
    assert_eq!(during.get(0)["data"]["content"], "Before the failure.");
    assert_eq!(
        during.get(7)["data"]["content"],
        "Before the failure. Again."
    );
    // The primary returns: it catches up, then takes over again.
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let status = cluster.wait_replicated().await;
    assert_eq!(status.pairs[0].epoch, 2, "the hand-back is a new epoch too");
    let ss1 = status.servers.iter().find(|s| s.name == "ss1").unwrap();
    assert!(ss1.serving, "the original primary serves again");
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let ss1 = cluster.storage("ss1");
    assert_eq!(
        harness::stored_content(&ss1, "a.txt").unwrap(),
        "Before the failure. Again."
    );
    assert!(harness::stored_content(&ss1, "new.txt").is_some());
    assert!(harness::stored_content(&ss1, "old.txt").is_none());
    let after = cluster.console("alice", "READ a.txt\nWRITE a.txt 2\n0 After.\nETIRW\n");
    after.all_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backup_is_caught_up_when_it_returns() {
    let mut cluster = pair_cluster().await;
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console(
            "alice",
            "WRITE a.txt 1\n0 Alone.\nETIRW\nCREATE lonely.txt\nDELETE old.txt\n",
        )
        .all_ok();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_eq!(cluster.status().await.pairs[0].epoch, 0, "no promotion");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_is_declared_failed_by_timeout_and_refuses_writes_until_caught_up() {
    let cluster = pair_cluster().await;
    // A ticket from before the hang, to try a write behind nm's back later.
    let mut alice = cluster.client("alice").await;
    let old = alice.locate("a.txt", Op::Write).await.unwrap();
    cluster.signal_ss("ss1", libc::SIGSTOP);
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let status = cluster.status().await;
    let ss1 = status.servers.iter().find(|s| s.name == "ss1").unwrap();
    assert_eq!(ss1.state, ServerState::Failed);
    assert_eq!(ss1.ms_until_timeout, 0);
    cluster
        .console("alice", "WRITE a.txt 1\n0 On the backup.\nETIRW\n")
        .all_ok();
    cluster.signal_ss("ss1", libc::SIGCONT);
    // Straight after waking up, the old primary takes no write.
    let mut direct = RpcClient::connect(&old.address, Role::Client, "alice")
        .await
        .unwrap();
    let reply = direct
        .call::<_, SsReply>(SsRequest::WriteBegin {
            file: "a.txt".into(),
            sentence: 0,
            ticket: old.ticket,
        })
        .await
        .unwrap();
    let code = reply.unwrap_err().code;
    assert!(
        matches!(code, ErrorCode::Unavailable | ErrorCode::Unauthorized),
        "{code:?}"
    );
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let read = cluster.console("alice", "READ a.txt\n");
    assert_eq!(
        read.get(0)["data"]["content"],
        "Before the failure. On the backup."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_servers_down_is_unavailable_and_nothing_is_lost_when_they_return() {
    let mut cluster = pair_cluster().await;
    cluster.kill_ss("ss1_backup");
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::Offline).await;
    assert_eq!(
        codes(
            &cluster,
            "alice",
            "READ a.txt\nWRITE a.txt 1\n0 x\nETIRW\nDELETE a.txt\n"
        ),
        ["E_UNAVAILABLE"; 3]
    );
    assert_eq!(
        codes(&cluster, "alice", "CREATE elsewhere.txt\n"),
        ["E_UNAVAILABLE"],
        "no pair can take a new file"
    );
    cluster.start_ss("ss1_backup").await;
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    let read = cluster.console("alice", "READ a.txt\nREAD old.txt\n");
    read.all_ok();
    assert_eq!(read.get(0)["data"]["content"], "Before the failure.");
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_lost_in_the_async_window_becomes_a_conflict_copy() {
    let mut cluster = pair_cluster_with(fast().jobs_only()).await;
    // The backup hangs, so the next change on the primary is acknowledged
    // but not replicated; then the primary dies.
    cluster.primary_dies_with_unreplicated_changes(
        "ss1",
        "ss1_backup",
        "WRITE a.txt 1\n0 Only the primary saw this.\nETIRW\n",
    );
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    eventually("the backup to serve", async || {
        let run = cluster.console("alice", "READ a.txt\n");
        (run.get(0)["ok"] == true).then_some(())
    })
    .await;
    cluster
        .console("alice", "WRITE a.txt 1\n0 The backup wrote this.\nETIRW\n")
        .all_ok();
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    let run = cluster.console(
        "alice",
        "READ a.txt\nREAD a.txt.conflict-ss1-e0\nINFO a.txt\n",
    );
    run.all_ok();
    assert_eq!(
        run.get(2)["data"]["conflict_copies"],
        serde_json::json!(["a.txt.conflict-ss1-e0"]),
        "INFO reports the conflict copy"
    );
    assert_eq!(
        cluster.status().await.pairs[0].conflict_copies,
        1,
        "and STATUS"
    );
    assert_eq!(
        run.get(0)["data"]["content"],
        "Before the failure. The backup wrote this."
    );
    assert_eq!(
        run.get(1)["data"]["content"],
        "Before the failure. Only the primary saw this."
    );
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nm_restart_keeps_the_epoch_and_the_promoted_server() {
    let mut cluster = pair_cluster().await;
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    cluster
        .console("alice", "WRITE a.txt 1\n0 While promoted.\nETIRW\n")
        .all_ok();
    cluster.kill_nm();
    cluster.start_nm().await;
    cluster.wait_alive("ss1_backup").await;
    eventually("the promoted backup to serve again", async || {
        let run = cluster.console("alice", "READ a.txt\n");
        (run.get(0)["data"]["content"] == "Before the failure. While promoted.").then_some(())
    })
    .await;
    assert_eq!(
        cluster.status().await.pairs[0].epoch,
        1,
        "the epoch survived"
    );
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_eq!(cluster.status().await.pairs[0].epoch, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_sync_mode_every_acknowledged_write_survives_five_primary_failures() {
    let mut options = fast();
    options.nm_args.extend(["--replication", "sync"]);
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console("alice", "CREATE log.txt\nWRITE log.txt 0\n0 start\nETIRW\n")
        .all_ok();
    assert_eq!(cluster.status().await.replication, "SYNC");
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, progress) = spawn_writer(cluster.nm_addr(), "log.txt", "w", stop.clone());
    // Each failure strikes while the writer is making progress.
    let wrote_more = async |since: usize| {
        eventually("the writer to get another write through", async || {
            (progress.load(Ordering::Relaxed) > since).then_some(())
        })
        .await;
    };
    for _ in 0..5 {
        wrote_more(progress.load(Ordering::Relaxed)).await;
        cluster.kill_ss("ss1");
        cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
        cluster.start_ss("ss1").await;
        cluster.wait_pair("ss1", PairState::Active).await;
    }
    wrote_more(progress.load(Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 6, "a write between every two failures");
    cluster.wait_replicated().await;
    assert_all_present(&cluster, "log.txt", &acked);
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_by_the_failure_says_so_and_the_next_attempt_reads_the_backup() {
    let mut options = fast();
    options.stream_delay = "50ms";
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let words: String = (0..40).map(|i| format!("word{i} ")).collect();
    cluster
        .console(
            "alice",
            &format!("CREATE s.txt\nWRITE s.txt 0\n0 {words}\nETIRW\n"),
        )
        .all_ok();
    cluster.wait_replicated().await;
    let mut reader = cluster.client("alice").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = tokio::spawn(async move {
        reader
            .stream("s.txt", |w| {
                let _ = tx.send(w.to_owned());
            })
            .await
    });
    // A few words in, the primary dies.
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
    cluster.kill_ss("ss1");
    let error = stream.await.unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(error.message.contains("interrupted"), "{}", error.message);
    // The next attempt that nm sends to the backup reads it whole (until the
    // promotion is recorded, a few ms, nm answers E_UNAVAILABLE: retry).
    let again = eventually("a STREAM from the promoted backup", async || {
        let run = cluster.console("alice", "STREAM s.txt\n");
        (run.code == Some(0)).then_some(run)
    })
    .await;
    assert_eq!(again.get(0)["data"]["words"].as_array().unwrap().len(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn nm_killed_and_restarted_mid_workload_loses_no_acknowledged_write() {
    let mut cluster = pair_cluster().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, _) = spawn_writer(cluster.nm_addr(), "a.txt", "n", stop.clone());
    eventually("some writes before the crash", async || {
        let run = cluster.console("alice", "READ a.txt\n");
        run.get(0)["data"]["content"]
            .as_str()?
            .contains("n")
            .then_some(())
    })
    .await;
    cluster.kill_nm();
    cluster.start_nm().await;
    cluster.wait_alive("ss1").await;
    cluster.wait_alive("ss1_backup").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let before = cluster.console("alice", "READ a.txt\n").get(0)["data"]["content"]
        .as_str()
        .map(|c| c.split_whitespace().count())
        .unwrap_or(0);
    eventually("writes after the restart", async || {
        let run = cluster.console("alice", "READ a.txt\n");
        (run.get(0)["data"]["content"]
            .as_str()?
            .split_whitespace()
            .count()
            > before + 3)
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    cluster.wait_replicated().await;
    assert_all_present(&cluster, "a.txt", &acked);
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_eq!(
        cluster.status().await.pairs[0].epoch,
        0,
        "no failover happened"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_carries_heartbeat_timers_and_the_failure() {
    let mut cluster = pair_cluster().await;
    let client = Client::connect(cluster.nm_addr(), "operator")
        .await
        .unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let watcher = tokio::spawn(async move {
        let _ = client
            .watch(None, Some(Duration::from_millis(100)), 0, |e| {
                sink.lock().unwrap().push(e)
            })
            .await;
    });
    eventually("a snapshot with timers", async || {
        events.lock().unwrap().iter().find_map(|e| match &e.kind {
            shared::proto::EventKind::Snapshot { status } => status
                .servers
                .iter()
                .all(|s| s.ms_until_timeout > 0 && s.ms_until_timeout <= 1000)
                .then_some(()),
            _ => None,
        })
    })
    .await;
    cluster.kill_ss("ss1");
    eventually("the failure and the promotion as events", async || {
        let events = events.lock().unwrap();
        let failed = events.iter().any(|e| {
            matches!(&e.kind, shared::proto::EventKind::Server { name, state: ServerState::Failed, .. } if name == "ss1")
        });
        let promoted = events.iter().any(|e| {
            matches!(&e.kind, shared::proto::EventKind::Pair { to: PairState::PrimaryFailed, epoch: 1, .. })
        });
        (failed && promoted).then_some(())
    })
    .await;
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_after_create_uses_the_location_create_returned_and_asks_nm_again_if_it_went_stale()
{
    let mut cluster = pair_cluster().await;
    let mut client = cluster.client("alice").await;
    client.create("new.txt").await.unwrap();
    client.write_begin("new.txt", 0).await.unwrap();
    client.write_edit(0, "First.").await.unwrap();
    client.write_commit().await.unwrap();
    cluster.wait_replicated().await;
    // The server CREATE pointed to fails before the WRITE that follows.
    client.create("later.txt").await.unwrap();
    cluster.wait_replicated().await;
    // STATUS does not see a change the stream carries until the backup
    // acknowledges it: wait for the file itself (a loaded machine once took
    // more than 90 ms, and the promoted backup lacked it).
    cluster.wait_same_files("ss1", "ss1_backup").await;
    fail_over_to_the_backup(&mut cluster).await;
    // One attempt: the kept location fails, and the client asks nm again.
    client.write_begin("later.txt", 0).await.unwrap();
    client.write_edit(0, "After the failover.").await.unwrap();
    client.write_commit().await.unwrap();
    assert_eq!(
        client.read("later.txt").await.unwrap(),
        b"After the failover.".to_vec()
    );
    assert_eq!(client.read("new.txt").await.unwrap(), b"First.".to_vec());
}

/// kill -9 of ss1, then until ss1_backup serves in its place.
async fn fail_over_to_the_backup(cluster: &mut TestCluster) {
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    eventually("the backup to serve", async || {
        let status = cluster.try_status().await?;
        status
            .servers
            .iter()
            .any(|s| s.name == "ss1_backup" && s.serving)
            .then_some(())
    })
    .await;
}

/// The same for a WRITE block sent as one request: the kept connection to
/// the server CREATE pointed to is closed (the server was killed), so the
/// block is never written into it, and goes, once, to the promoted backup.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_block_after_create_goes_once_to_where_nm_says_when_the_location_went_stale() {
    let mut cluster = pair_cluster().await;
    let mut client = cluster.client("alice").await;
    client.create("new.txt").await.unwrap();
    let edits = |text: &str| {
        vec![EditLine {
            word_index: 0,
            content: text.to_owned(),
        }]
    };
    let (_, answers) = client
        .write_block("new.txt", 0, edits("First."))
        .await
        .unwrap();
    assert_eq!(answers, [Ok(1)]);
    client.create("later.txt").await.unwrap();
    cluster.wait_same_files("ss1", "ss1_backup").await;
    fail_over_to_the_backup(&mut cluster).await;
    let (stats, answers) = client
        .write_block("later.txt", 0, edits("After the failover."))
        .await
        .unwrap();
    assert_eq!(answers, [Ok(3)]);
    assert_eq!(stats.words, 3);
    assert_eq!(
        client.read("later.txt").await.unwrap(),
        b"After the failover.".to_vec()
    );
    assert_eq!(client.read("new.txt").await.unwrap(), b"First.".to_vec());
}

/// Found by an operator restarting nm in `console demo`: a storage server
/// waits up to 2 s between attempts to reach a sole nm, longer than the
/// start-up grace was (one heartbeat timeout), so when the backup's retry
/// came first a healthy pair failed over because nm restarted. The grace now
/// covers the retry interval. Each round waits until both servers retry at
/// the longest interval before nm returns.
#[tokio::test(flavor = "multi_thread")]
async fn an_nm_restart_alone_promotes_nothing_whoever_retries_first() {
    let mut cluster = pair_cluster().await;
    for round in 0..4 {
        cluster.kill_nm();
        for server in ["ss1", "ss1_backup"] {
            let log = cluster.dir().join(format!("{server}.log"));
            let before = std::fs::read_to_string(&log).unwrap_or_default().len();
            eventually(&format!("{server} retrying nm every 2 s"), async || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.get(before..)?
                    .contains("\"retry_ms\":2000")
                    .then_some(())
            })
            .await;
        }
        cluster.start_nm().await;
        cluster.wait_alive("ss1").await;
        cluster.wait_alive("ss1_backup").await;
        cluster.wait_pair("ss1", PairState::Active).await;
        let status = cluster.status().await;
        assert_eq!(
            status.pairs[0].epoch, 0,
            "round {round}: an nm restart promoted the backup"
        );
    }
}

/// Found by the nm-failover benchmark with 1,000,000 files: the serving
/// server's registration (listing its files, then a thousand inventory
/// pages) outlasted nm's start-up grace, its partner's came first, and a
/// takeover alone promoted the backup. Registering is now one frame and nm
/// reads the inventory afterwards. Here the serving server's inventory
/// waits for a start-up scan delayed well past the grace (the scan delay
/// is longer than the grace, so registering within the grace means before
/// the scan ended).
#[tokio::test(flavor = "multi_thread")]
async fn a_serving_server_registers_at_once_while_its_start_up_scan_runs() {
    let mut cluster = pair_cluster().await;
    cluster.kill_nm();
    cluster.kill_ss("ss1");
    cluster.start_nm().await;
    let started = std::time::Instant::now();
    cluster.spawn_ss_with("ss1", &["--scan-delay", "6s"]);
    cluster.wait_alive("ss1").await;
    // Registering does not wait for the inventory (nm reads it afterwards,
    // once the scan is done), so the start-up grace never runs out on it.
    let grace = nm::storage_servers::startup_grace(Duration::from_secs(1));
    assert!(
        started.elapsed() < grace,
        "ss1 took {:?} to register, longer than the grace ({grace:?})",
        started.elapsed()
    );
    cluster.wait_pair("ss1", PairState::Active).await;
    let status = cluster.status().await;
    assert_eq!(
        status.pairs[0].epoch, 0,
        "the backup was promoted while the primary was scanning"
    );
    let read = cluster.console("alice", "READ a.txt\n");
    assert_eq!(read.all_ok()[0]["data"]["content"], "Before the failure.");
}
