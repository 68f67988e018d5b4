//! The replication stream: a committed change goes from the serving server
//! straight to its standby, nm records it without a job, and whatever the
//! stream cannot deliver still reaches the standby through nm.

use client::Client;
use harness::{eventually, Options, TestCluster};
use shared::proto::{
    EditLine, Event, EventKind, JobStep, NmReply, NmRequest, PairState, PeerRequest, Role, SsReply,
    StreamRequest,
};
use std::sync::{Arc, Mutex};

fn streamed(events: &Arc<Mutex<Vec<Event>>>, file: &str) -> bool {
    events.lock().unwrap().iter().any(
        |e| matches!(&e.kind, EventKind::Streamed { files, .. } if files.iter().any(|f| f == file)),
    )
}

fn jobs_queued_for(events: &Arc<Mutex<Vec<Event>>>, file: &str) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Job { file: Some(f), step: JobStep::Queued, .. } if f == file))
        .count()
}

fn write(cluster: &TestCluster, file: &str, text: &str) {
    cluster
        .console("alice", &format!("WRITE {file} 0\n0 {text}\nETIRW\n"))
        .all_ok();
}

/// What the backup holds of `file` (a file of its own, or packed by a sync).
fn backup_content(cluster: &TestCluster, file: &str) -> String {
    harness::stored_content(&cluster.storage("ss1_backup"), file).unwrap_or_default()
}

/// Writes until one goes on the stream (the primary learns its partner with
/// a heartbeat after the pair forms).
async fn until_streaming(cluster: &TestCluster, events: &Arc<Mutex<Vec<Event>>>) {
    cluster.console("alice", "CREATE probe.txt\n").all_ok();
    eventually("a write to go on the replication stream", async || {
        write(cluster, "probe.txt", "Probe.");
        streamed(events, "probe.txt").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_writes_undos_access_changes_deletes_and_moves_go_on_the_stream_and_queue_no_job() {
    let cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster.console("alice", "CREATE a.txt\n").all_ok();
    eventually("the CREATE to reach the backup", async || {
        cluster
            .storage("ss1_backup")
            .join("files/a.txt")
            .exists()
            .then_some(())
    })
    .await;
    for i in 0..20 {
        write(&cluster, "a.txt", &format!("Line {i}."));
    }
    let last = std::fs::read_to_string(cluster.storage("ss1").join("files/a.txt")).unwrap();
    assert!(last.contains("Line 19."), "{last}");
    eventually("the last write on the backup", async || {
        (backup_content(&cluster, "a.txt") == last).then_some(())
    })
    .await;
    assert!(streamed(&events, "a.txt"), "no Streamed event for a.txt");
    // STATUS has the stream's position: the 20 writes sent and acknowledged.
    let status = cluster.wait_replicated().await;
    let stream = status.pairs[0]
        .stream
        .clone()
        .expect("the stream's position in STATUS");
    assert!(stream.open && stream.sent >= 21, "{stream:?}");
    assert_eq!(
        (stream.acknowledged, stream.unacknowledged),
        (stream.sent, 0)
    );
    assert_eq!(stream.epoch, status.pairs[0].epoch);
    // UNDO and an access-list change go on the stream too.
    cluster.console("bob", "LIST\n").all_ok();
    cluster
        .console("alice", "UNDO a.txt\nADDACCESS -R a.txt bob\n")
        .all_ok();
    let undone = std::fs::read_to_string(cluster.storage("ss1").join("files/a.txt")).unwrap();
    assert!(!undone.contains("Line 19."), "{undone}");
    eventually("the UNDO on the backup", async || {
        (backup_content(&cluster, "a.txt") == undone).then_some(())
    })
    .await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    cluster.console("bob", "READ a.txt\n").all_ok();
    // And a DELETE: the backup drops the file and keeps its tombstone.
    cluster.console("alice", "DELETE a.txt\n").all_ok();
    let on_backup = cluster.storage("ss1_backup").join("files/a.txt");
    eventually("the DELETE on the backup", async || {
        (!on_backup.exists()).then_some(())
    })
    .await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    // And a MOVE: the old name's delete and the file under its new name.
    cluster
        .console("alice", "CREATEFOLDER docs\nCREATE m.txt\n")
        .all_ok();
    write(&cluster, "m.txt", "Moved along.");
    cluster.console("alice", "MOVE m.txt docs\n").all_ok();
    eventually("the MOVE on the backup", async || {
        (backup_content(&cluster, "docs/m.txt").contains("Moved along.")
            && !cluster.storage("ss1_backup").join("files/m.txt").exists())
        .then_some(())
    })
    .await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    for file in ["a.txt", "m.txt", "docs/m.txt"] {
        assert_eq!(
            jobs_queued_for(&events, file),
            0,
            "a streamed CREATE, write, UNDO, access change, DELETE or MOVE of {file} queued a replication job"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_and_reverts_go_on_the_stream_with_the_checkpoints_they_need() {
    let mut cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster.console("alice", "CREATE c.txt\n").all_ok();
    write(&cluster, "c.txt", "First draft.");
    cluster.console("alice", "CHECKPOINT c.txt v1\n").all_ok();
    let kept = cluster.storage("ss1_backup").join("checkpoints/c.txt/v1");
    eventually("the checkpoint on the backup", async || {
        (std::fs::read_to_string(&kept).ok()? == "First draft.").then_some(())
    })
    .await;
    // Changes to a file with checkpoints stream too: the backup has them.
    write(&cluster, "c.txt", "Second thoughts.");
    eventually("the write on the backup", async || {
        backup_content(&cluster, "c.txt")
            .contains("Second thoughts.")
            .then_some(())
    })
    .await;
    cluster.console("alice", "REVERT c.txt v1\n").all_ok();
    eventually("the REVERT on the backup", async || {
        (backup_content(&cluster, "c.txt") == "First draft.").then_some(())
    })
    .await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    assert_eq!(
        jobs_queued_for(&events, "c.txt"),
        0,
        "a streamed CHECKPOINT, write or REVERT of c.txt queued a replication job"
    );
    // The promoted backup serves the checkpoint it was streamed.
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let run = cluster.console("alice", "VIEWCHECKPOINT c.txt v1\nREAD c.txt\n");
    run.all_ok();
    assert!(run.stdout.contains("First draft."), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_sync_mode_the_backup_has_the_text_when_etirw_is_answered() {
    let options = Options {
        nm_args: vec!["--replication", "sync"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster.console("alice", "CREATE s.txt\n").all_ok();
    let log = cluster.storage("ss1_backup").join("wal.log");
    for i in 0..20 {
        write(&cluster, "s.txt", &format!("Sync {i}."));
        // No waiting: synchronous means the backup had it durably before
        // the answer, in its write-ahead log (which a restart replays) if
        // not yet in the file. The log is read first: it is emptied only
        // after the file has the change.
        let text = format!("Sync {i}.");
        let logged = std::fs::read(&log).unwrap_or_default();
        let in_log = logged.windows(text.len()).any(|w| w == text.as_bytes());
        let on_backup = backup_content(&cluster, "s.txt");
        assert!(
            in_log || on_backup.contains(&text),
            "ETIRW {i} answered before the backup had it durably: {on_backup:?}"
        );
    }
    assert!(streamed(&events, "s.txt"));
}

/// An ACTIVE pair in sync mode with the write-ahead log on (what the
/// windows below are about), streaming, every server run with `ss_args`.
async fn streaming_sync_pair_with_log(ss_args: Vec<&'static str>) -> TestCluster {
    let options = Options {
        nm_args: vec!["--replication", "sync"],
        ss_args,
        fsync: true,
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster
}

/// The window the early acknowledgement opens: in sync mode a WRITE is
/// answered once the change is durable in the standby's log, before the
/// standby renames it into place. A standby killed in between (held there by
/// a test delay) comes back with the change in place from its own log's
/// replay, with nm down, so nothing else could have copied it.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_killed_between_its_acknowledgement_and_the_rename_finishes_from_its_log() {
    let mut cluster = streaming_sync_pair_with_log(vec!["--stream-apply-delay", "1500ms"]).await;
    cluster.console("alice", "CREATE k.txt\n").all_ok();
    // In place first, so the WRITE's apply finds the file free (the delay
    // holds the file while it runs; past 2 s the stream deems itself stuck).
    eventually("the CREATE in place on the backup", async || {
        cluster
            .storage("ss1_backup")
            .join("files/k.txt")
            .exists()
            .then_some(())
    })
    .await;
    write(&cluster, "k.txt", "Kept through the kill.");
    // Answered: the backup has it in its log, and puts it in place 1.5 s later.
    cluster.kill_ss("ss1_backup");
    assert!(
        !backup_content(&cluster, "k.txt").contains("Kept"),
        "the kill landed after the rename: the window was missed"
    );
    cluster.kill_nm();
    cluster.spawn_ss("ss1_backup");
    eventually(
        "the restarted backup to replay the change from its log",
        async || {
            backup_content(&cluster, "k.txt")
                .contains("Kept through the kill.")
                .then_some(())
        },
    )
    .await;
    cluster.start_nm().await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// The window the early announcement opens on the serving server: an ETIRW
/// goes on the stream once it is durable in the primary's log, before the
/// primary puts it in place. A primary killed in between (held there by a
/// test delay) must not leave its standby with a change it loses or gets
/// differently: the promoted backup serves the change, and the primary
/// comes back from its own log's replay with the same version, so the pair
/// is level again with no conflict copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_between_announcing_a_write_and_placing_it_comes_back_with_it() {
    let mut cluster = streaming_sync_pair_with_log(vec!["--commit-apply-delay", "1500ms"]).await;
    cluster.console("alice", "CREATE p.txt\n").all_ok();
    let mut console = cluster
        .console_command("alice", &["--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = console.stdin.take().unwrap();
        writeln!(
            stdin,
            "WRITE p.txt 0\n0 Announced before it was in place.\nETIRW"
        )
        .unwrap();
    }
    eventually("the change on the backup", async || {
        backup_content(&cluster, "p.txt")
            .contains("Announced")
            .then_some(())
    })
    .await;
    let on_primary =
        std::fs::read_to_string(cluster.storage("ss1").join("files/p.txt")).unwrap_or_default();
    assert!(
        !on_primary.contains("Announced"),
        "the primary had put it in place already: the window was missed"
    );
    cluster.kill_ss("ss1");
    let _ = console.wait();
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let run = cluster.console("alice", "READ p.txt\n");
    run.all_ok();
    assert!(
        run.stdout.contains("Announced before it was in place."),
        "{}",
        run.stdout
    );
    cluster.spawn_ss("ss1");
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let status = cluster.status().await;
    assert_eq!(status.pairs[0].conflict_copies, 0, "{:?}", status.pairs[0]);
    let on_primary = std::fs::read_to_string(cluster.storage("ss1").join("files/p.txt")).unwrap();
    assert!(
        on_primary.contains("Announced before it was in place."),
        "{on_primary:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_killed_while_streaming_misses_nothing_once_back() {
    let mut cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    let script: String = (0..40).map(|i| format!("CREATE k{i}.txt\n")).collect();
    cluster.console("alice", &script).all_ok();
    let writer = {
        let nm = cluster.nm_addr().to_owned();
        tokio::spawn(async move {
            let mut client = Client::connect(&nm, "alice").await.unwrap();
            for round in 0..5 {
                for i in 0..40 {
                    let file = format!("k{i}.txt");
                    client.write_begin(&file, 0).await.unwrap();
                    client
                        .write_edit(0, &format!("Round {round}."))
                        .await
                        .unwrap();
                    client.write_commit().await.unwrap();
                }
            }
        })
    };
    // Killed while the writer runs: some changes are in flight on the stream.
    eventually("the stream to carry some of the writes", async || {
        streamed(&events, "k5.txt").then_some(())
    })
    .await;
    cluster.kill_ss("ss1_backup");
    writer.await.unwrap();
    cluster.start_ss("ss1_backup").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    for i in 0..40 {
        let text = backup_content(&cluster, &format!("k{i}.txt"));
        assert!(
            text.contains("Round 4."),
            "k{i}.txt on the backup: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_partner_may_open_a_stream() {
    let cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let backup = cluster.ss_addr("ss1_backup").await;
    let key = shared::auth::ClusterKey::load(&cluster.key_file()).unwrap();
    // A daemon of the cluster that is not ss1.
    let mut other = shared::connection::RpcClient::connect_keyed(
        &backup,
        Role::StorageServer,
        "ss2",
        Some(&key),
    )
    .await
    .unwrap();
    let refused = other
        .call::<_, SsReply>(PeerRequest::StreamOpen { epoch: 1 })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, shared::ErrorCode::Unauthorized, "{refused}");
    // A client, whatever its name: not even a client's request.
    let mut client = shared::connection::RpcClient::connect(&backup, Role::Client, "ss1")
        .await
        .unwrap();
    let refused = client
        .call::<_, SsReply>(PeerRequest::StreamOpen { epoch: 1 })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, shared::ErrorCode::BadRequest, "{refused}");
    // A change without an open stream is refused and changes nothing, from
    // a client or from the partner itself.
    let planted = StreamRequest::StreamApply {
        file: "planted.txt".into(),
        meta: shared::proto::FileMeta {
            owner: "mallory".into(),
            acl: Default::default(),
            stats: Default::default(),
            checkpoints: Default::default(),
        },
        content: serde_bytes::ByteBuf::from(b"Planted.".to_vec()),
        checkpoints: Vec::new(),
    };
    let mut client = shared::connection::RpcClient::connect(&backup, Role::Client, "mallory")
        .await
        .unwrap();
    let mut partner = shared::connection::RpcClient::connect_keyed(
        &backup,
        Role::StorageServer,
        "ss1",
        Some(&key),
    )
    .await
    .unwrap();
    for connection in [&mut client, &mut partner] {
        let refused = connection
            .call::<_, SsReply>(planted.clone())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.code, shared::ErrorCode::BadRequest, "{refused}");
    }
    assert!(!cluster
        .storage("ss1_backup")
        .join("files/planted.txt")
        .exists());
    // The wrong epoch is refused even from the partner (on the connection
    // whose StreamApply was refused: a bad request does not close it).
    let refused = partner
        .call::<_, SsReply>(PeerRequest::StreamOpen { epoch: 999 })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, shared::ErrorCode::Unavailable, "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_opens_when_the_partner_registers_not_a_heartbeat_later() {
    // Heartbeats far apart: the partner's address must come with nm's
    // `SetPartner` when the backup registers, not with a heartbeat's answer.
    let options = Options {
        heartbeat_interval: "3s",
        nm_args: vec!["--heartbeat-timeout", "10s"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let formed = std::time::Instant::now();
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    assert!(
        formed.elapsed() < std::time::Duration::from_millis(1500),
        "the first streamed write came {:?} after the pair formed",
        formed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_backup_stalls_the_stream_and_nothing_is_lost() {
    let cluster = TestCluster::start(&["ss1", "ss1_backup"]).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    // Acknowledged at once (async), none acknowledged by the hung backup:
    // past the stream's patience they go to nm's jobs.
    let mut script: String = (0..30)
        .map(|i| format!("CREATE h{i}.txt\nWRITE h{i}.txt 0\n0 Hung {i}.\nETIRW\n"))
        .collect();
    // A DELETE made while the backup hangs reaches it too.
    script.push_str("DELETE probe.txt\n");
    cluster.console("alice", &script).all_ok();
    // STATUS shows what the stream has not had acknowledged, and its age
    // as the pair's lag.
    eventually(
        "STATUS to show the stream's unacknowledged changes",
        async || {
            let status = cluster.status().await;
            let pair = status.pairs.iter().find(|p| p.primary == "ss1")?;
            let stream = pair.stream.as_ref()?;
            (stream.open
                && stream.unacknowledged > 0
                && stream.acknowledged < stream.sent
                && pair.lag_ms > 0)
                .then_some(())
        },
    )
    .await;
    eventually("the stream to hand the changes to nm", async || {
        (jobs_queued_for(&events, "h0.txt") > 0).then_some(())
    })
    .await;
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    let status = cluster.wait_replicated().await;
    let pair = status.pairs.iter().find(|p| p.primary == "ss1").unwrap();
    // Settled: everything sent was acknowledged or handed to nm.
    let stream = pair
        .stream
        .as_ref()
        .expect("the stream's position in STATUS");
    assert_eq!(stream.unacknowledged, 0, "{stream:?}");
    assert_eq!(stream.acknowledged, stream.sent, "{stream:?}");
    cluster.wait_same_files("ss1", "ss1_backup").await;
    for i in 0..30 {
        let text = backup_content(&cluster, &format!("h{i}.txt"));
        assert!(text.contains(&format!("Hung {i}.")), "h{i}.txt: {text:?}");
    }
    assert!(
        harness::stored_content(&cluster.storage("ss1_backup"), "probe.txt").is_none(),
        "the handed-back DELETE never reached the backup"
    );
}

/// A standby that stops reading (hung here, but not yet past nm's heartbeat
/// timeout) leaves so much unacknowledged that the stream's socket fills and
/// its sends block. The serving server goes on reporting where the stream
/// stands meanwhile, so nm finds the standby behind past `--max-standby-lag`
/// while the stream is still open (before its own timeout hands anything to
/// nm's jobs), and a promotion could not reach past the bound.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_that_stops_reading_is_out_of_sync_within_the_bound() {
    let options = Options {
        nm_args: vec!["--heartbeat-timeout", "8s", "--max-standby-lag", "1500ms"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    // About 13 MiB on the stream: more than loopback's socket buffers hold.
    let words = "lorem ".repeat(41_000);
    let script: String = (0..56)
        .map(|i| format!("CREATE big{i}.txt\nWRITE big{i}.txt 0\n0 {words}\nETIRW\n"))
        .collect();
    cluster.console("alice", &script).all_ok();
    // nm's reason for taking the pair out of ACTIVE is the stream's
    // position (not the stream closing, nor a job failing, nor a lost server).
    let reason = eventually("the backup out of sync", async || {
        let events = events.lock().unwrap();
        events.iter().find_map(|e| match &e.kind {
            EventKind::Pair {
                from: PairState::Active,
                to,
                reason,
                ..
            } => Some((*to, reason.clone())),
            _ => None,
        })
    })
    .await;
    assert_eq!(reason.0, PairState::Syncing, "{reason:?}");
    assert!(
        reason.1.contains("unacknowledged for"),
        "out of sync by the stream's position, before it gave up: {reason:?}"
    );
    let status = cluster.status().await;
    assert!(!status.pairs[0].standby_in_sync, "{:?}", status.pairs[0]);
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// A DELETE the stream hands back (the standby stalls past the stream's
/// patience but not past its heartbeat timeout, so no sync follows) reaches
/// the standby as a delete: by then nm has dropped the file from its
/// namespace, and without the notice's `deleted` flag it refused the notice
/// and the standby kept the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_the_stream_hands_back_reaches_the_backup_as_a_delete() {
    let options = Options {
        // Nor does the standby's lag make nm start one.
        nm_args: vec!["--heartbeat-timeout", "8s", "--max-standby-lag", "0"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    let on_backup = cluster.storage("ss1_backup").join("files/probe.txt");
    assert!(on_backup.exists());
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    cluster.console("alice", "DELETE probe.txt\n").all_ok();
    eventually("the stream to hand the DELETE to nm", async || {
        (jobs_queued_for(&events, "probe.txt") > 0).then_some(())
    })
    .await;
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    eventually("the DELETE on the backup", async || {
        (!on_backup.exists()).then_some(())
    })
    .await;
    let failed = events.lock().unwrap().iter().any(|e| {
        matches!(&e.kind, EventKind::Server { name, state: shared::proto::ServerState::Failed, .. } if name == "ss1_backup")
    });
    assert!(
        !failed,
        "the backup was declared failed: a sync, not the hand-back, carried the delete"
    );
}

/// A streamed write is answered without waiting for nm (its notice is held
/// 600 ms here), and the writer's next request to nm still sees it: INFO
/// waits for the notice (read-your-writes), though nobody else's does.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_write_is_answered_without_nm_and_the_writers_next_request_sees_it() {
    const HELD: std::time::Duration = std::time::Duration::from_millis(600);
    let options = Options {
        ss_args: vec!["--notice-delay", "600ms"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let events = cluster.watch_events();
    until_streaming(&cluster, &events).await;
    let mut client = cluster.client("alice").await;
    client.create("fresh.txt").await.unwrap();
    let started = std::time::Instant::now();
    let edits = vec![EditLine {
        word_index: 0,
        content: "One two three.".into(),
    }];
    let (stats, _) = client.write_block("fresh.txt", 0, edits).await.unwrap();
    let answered_in = started.elapsed();
    assert!(
        answered_in < HELD,
        "the write waited {answered_in:?} for nm, which holds its notice {HELD:?}"
    );
    assert_eq!(stats.words, 3);
    let NmReply::Info { info } = client
        .nm(NmRequest::Info {
            file: "fresh.txt".into(),
        })
        .await
        .unwrap()
    else {
        panic!("INFO answers with the file's info");
    };
    assert_eq!(
        (info.stats.words, info.stats.version),
        (3, stats.version),
        "INFO after the writer's own write shows it"
    );
    assert!(
        started.elapsed() >= HELD,
        "INFO was answered before nm could have heard of the write"
    );
}
