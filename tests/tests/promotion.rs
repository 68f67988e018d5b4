//! Promotion safety, with faults aimed at the windows around a registration
//! (100 ms heartbeats, a 1 s failure timeout, real `kill -9` and SIGSTOP).
//!
//! Each scenario runs at several timings: the kill lands 0, 5, 20 and 100 ms
//! after the returning server's registration is visible in STATUS, and once
//! with 1,500 files to catch up, so that the kill falls inside the catch-up.
//! Whatever the timing, nothing acknowledged may be lost or go unreported:
//! a server that is not in sync is never promoted (the pair is OFFLINE until
//! the serving server returns), and a READ answers the acknowledged content
//! or `E_UNAVAILABLE`, never older content and never `E_NOT_FOUND`.

use harness::{eventually, Options, TestCluster};
use shared::connection::RpcClient;
use shared::proto::{Op, PairState, PeerRequest, Role, ServerState, SsReply, SsRequest};
use shared::ErrorCode;
use std::time::{Duration, Instant};

const KILL_AFTER_MS: [u64; 4] = [0, 5, 20, 100];

fn options(mode: &'static str) -> Options {
    Options {
        nm_args: vec!["--heartbeat-timeout", "1s", "--replication", mode],
        ..Options::default()
    }
}

async fn active_pair(mode: &'static str) -> TestCluster {
    active_pair_with(options(mode)).await
}

async fn active_pair_with(options: Options) -> TestCluster {
    let cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console("alice", "CREATE a.txt\nWRITE a.txt 0\n0 Before.\nETIRW\n")
        .all_ok();
    cluster.wait_replicated().await;
    cluster
}

/// Polls STATUS without pause until `server` is in `state`; returns when it saw it.
async fn seen(cluster: &TestCluster, server: &str, state: ServerState) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = cluster.try_status().await {
            if status
                .servers
                .iter()
                .any(|s| s.name == server && s.state == state)
            {
                return Instant::now();
            }
        }
        assert!(Instant::now() < deadline, "{server} never became {state:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Kills `victim` `delay` after `returning` registers (as STATUS shows it).
async fn kill_after_registration(
    cluster: &mut TestCluster,
    returning: &str,
    victim: &str,
    delay: Duration,
) {
    cluster.spawn_ss(returning);
    let registered = seen(cluster, returning, ServerState::Alive).await;
    tokio::time::sleep(delay.saturating_sub(registered.elapsed())).await;
    cluster.kill_ss(victim);
    seen(cluster, victim, ServerState::Failed).await;
}

/// Every READ answers `expected` or `E_UNAVAILABLE`; returns how many were unavailable.
fn reads_are_current_or_unavailable(cluster: &TestCluster, expected: &[(String, String)]) -> usize {
    let script: String = expected
        .iter()
        .map(|(f, _)| format!("READ {f}\n"))
        .collect();
    let run = cluster.console("alice", &script);
    let mut unavailable = 0;
    for (i, (file, content)) in expected.iter().enumerate() {
        let outcome = run.get(i);
        if outcome["ok"] == true {
            assert_eq!(
                outcome["data"]["content"].as_str(),
                Some(content.as_str()),
                "{file}: a READ answered stale content"
            );
        } else {
            assert_eq!(
                run.code_of(i),
                "E_UNAVAILABLE",
                "{file}: only E_UNAVAILABLE may stand in for the content: {outcome}"
            );
            unavailable += 1;
        }
    }
    unavailable
}

fn pair_state(status: &shared::proto::ClusterStatus) -> PairState {
    status.pairs[0].state
}

/// A1: the backup is down, the primary acknowledges changes alone, the
/// backup returns, and the primary dies around the backup's registration.
async fn a1_primary_dies_while_the_backup_catches_up(delay_ms: u64, extra_files: usize) {
    let mut cluster = active_pair("sync").await;
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    let mut script = String::from("WRITE a.txt 1\n0 Acknowledged alone.\nETIRW\n");
    let mut expected = vec![("a.txt".to_owned(), "Before. Acknowledged alone.".to_owned())];
    for i in 0..extra_files {
        script.push_str(&format!("CREATE f{i:04}\nWRITE f{i:04} 0\n0 n{i}\nETIRW\n"));
        expected.push((format!("f{i:04}"), format!("n{i}")));
    }
    cluster.console("alice", &script).all_ok();

    let delay = Duration::from_millis(delay_ms);
    kill_after_registration(&mut cluster, "ss1_backup", "ss1", delay).await;
    let status = cluster.status().await;
    let state = pair_state(&status);
    assert!(
        matches!(state, PairState::Offline | PairState::PrimaryFailed),
        "{state:?}"
    );
    if state == PairState::Offline {
        let reason = status.pairs[0].reason.clone().unwrap_or_default();
        assert!(reason.contains("not in sync"), "{reason}");
    }
    let unavailable = reads_are_current_or_unavailable(&cluster, &expected);
    eprintln!(
        "A1 kill +{delay_ms} ms, {extra_files} files: pair {state:?}, {unavailable} of {} reads unavailable",
        expected.len()
    );

    cluster.start_ss("ss1").await;
    cluster.wait_replicated().await;
    assert_eq!(reads_are_current_or_unavailable(&cluster, &expected), 0);
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a1_a_backup_that_is_catching_up_is_never_promoted() {
    for delay in KILL_AFTER_MS {
        a1_primary_dies_while_the_backup_catches_up(delay, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a1_with_1500_files_to_catch_up() {
    for delay in KILL_AFTER_MS {
        a1_primary_dies_while_the_backup_catches_up(delay, 1500).await;
    }
}

/// A2: the backup serves after a failover and acknowledges changes; the
/// old primary returns and the backup dies around its registration.
/// In async mode the primary also holds a change the backup never saw, so
/// its return keeps a conflict copy.
async fn a2_serving_backup_dies_while_the_primary_returns(mode: &'static str, delay_ms: u64) {
    let conflicting = mode == "async";
    // The async window on demand needs the changes off the stream.
    let mut cluster = if conflicting {
        active_pair_with(options(mode).jobs_only()).await
    } else {
        active_pair(mode).await
    };
    if conflicting {
        let script = "WRITE a.txt 1\n0 Only the primary saw this.\nETIRW\n";
        cluster.primary_dies_with_unreplicated_changes("ss1", "ss1_backup", script);
    } else {
        cluster.kill_ss("ss1");
    }
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    eventually("the backup to serve", async || {
        let run = cluster.console("alice", "WRITE a.txt 1\n0 Written on the backup.\nETIRW\n");
        (run.code == Some(0)).then_some(())
    })
    .await;
    let expected = vec![(
        "a.txt".to_owned(),
        "Before. Written on the backup.".to_owned(),
    )];

    let delay = Duration::from_millis(delay_ms);
    kill_after_registration(&mut cluster, "ss1", "ss1_backup", delay).await;
    let status = cluster.status().await;
    let state = pair_state(&status);
    let unavailable = reads_are_current_or_unavailable(&cluster, &expected);
    eprintln!("A2 {mode}, kill +{delay_ms} ms: pair {state:?}, {unavailable} reads unavailable");

    cluster.start_ss("ss1_backup").await;
    cluster.wait_replicated().await;
    assert_eq!(reads_are_current_or_unavailable(&cluster, &expected), 0);
    cluster.wait_same_files("ss1", "ss1_backup").await;
    if conflicting {
        let copy = shared::names::conflict_copy_name("a.txt", "ss1", 0);
        let run = cluster.console("alice", &format!("READ {copy}\nINFO a.txt\n"));
        run.all_ok();
        assert_eq!(
            run.get(0)["data"]["content"],
            "Before. Only the primary saw this."
        );
        assert_eq!(run.get(1)["data"]["conflict_copies"][0], copy.as_str());
    }
    // And nothing is forgotten across an nm restart.
    cluster.kill_nm();
    cluster.start_nm().await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    assert_eq!(reads_are_current_or_unavailable(&cluster, &expected), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a2_sync_a_returning_primary_is_not_promoted_before_it_caught_up() {
    for delay in KILL_AFTER_MS {
        a2_serving_backup_dies_while_the_primary_returns("sync", delay).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a2_async_a_returning_primary_keeps_its_conflicting_change() {
    for delay in KILL_AFTER_MS {
        a2_serving_backup_dies_while_the_primary_returns("async", delay).await;
    }
}

/// A3: a conflict on a file whose last name component is 250 bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a3_a_conflict_copy_of_a_long_name_fits() {
    let cluster =
        TestCluster::start_with(&["ss1", "ss1_backup"], options("async").jobs_only()).await;
    let mut cluster = cluster;
    cluster.wait_pair("ss1", PairState::Active).await;
    let long = format!("d/{}", "x".repeat(250));
    cluster
        .console(
            "alice",
            &format!("CREATEFOLDER d\nCREATE {long}\nWRITE {long} 0\n0 Before.\nETIRW\n"),
        )
        .all_ok();
    cluster.wait_replicated().await;
    let script = format!("WRITE {long} 1\n0 Primary.\nETIRW\n");
    cluster.primary_dies_with_unreplicated_changes("ss1", "ss1_backup", &script);
    eventually("the backup to serve", async || {
        let run = cluster.console("alice", &format!("WRITE {long} 1\n0 Backup.\nETIRW\n"));
        (run.code == Some(0)).then_some(())
    })
    .await;
    cluster.start_ss("ss1").await;
    cluster.wait_replicated().await;
    let copy = shared::names::conflict_copy_name(&long, "ss1", 0);
    assert!(copy.rsplit('/').next().unwrap().len() <= 255);
    let run = cluster.console("alice", &format!("READ {long}\nREAD {copy}\nINFO {long}\n"));
    run.all_ok();
    assert_eq!(run.get(0)["data"]["content"], "Before. Backup.");
    assert_eq!(run.get(1)["data"]["content"], "Before. Primary.");
    assert_eq!(run.get(2)["data"]["conflict_copies"][0], copy.as_str());
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// A4: nm paused past the heartbeat timeout promotes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a4_an_nm_pause_promotes_nothing() {
    let cluster = active_pair("async").await;
    for pause_ms in [1500, 2500, 1200, 3500] {
        cluster.signal_nm(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(pause_ms));
        cluster.signal_nm(libc::SIGCONT);
        let resumed = Instant::now();
        eventually("a write after the pause", async || {
            let run = cluster.console("alice", "WRITE a.txt 0\n0 w\nETIRW\n");
            (run.code == Some(0)).then_some(())
        })
        .await;
        eprintln!(
            "A4 nm paused {pause_ms} ms: writable again {} ms after it resumed",
            resumed.elapsed().as_millis()
        );
        let status = cluster.wait_replicated().await;
        assert_eq!(
            status.pairs[0].epoch, 0,
            "no promotion after a {pause_ms} ms pause"
        );
        assert!(status.servers.iter().all(|s| s.state == ServerState::Alive));
    }
}

/// A4: a promotion whose target does not take its role is not recorded:
/// the target is cut off, nobody serves, and it is promoted once it returns.
#[tokio::test(flavor = "multi_thread")]
async fn a4_a_promotion_the_target_never_acknowledged_leaves_nobody_serving() {
    let mut cluster = active_pair("sync").await;
    cluster.signal_ss("ss1_backup", libc::SIGSTOP);
    cluster.kill_ss("ss1");
    // The backup is hung: it neither answers the promotion nor heartbeats.
    seen(&cluster, "ss1_backup", ServerState::Failed).await;
    let status = cluster.status().await;
    assert!(
        status.servers.iter().all(|s| !s.serving),
        "nobody serves: {:?}",
        status.servers
    );
    assert_eq!(
        reads_are_current_or_unavailable(&cluster, &[("a.txt".into(), "Before.".into())]),
        1
    );
    cluster.signal_ss("ss1_backup", libc::SIGCONT);
    eventually("the backup to be promoted once it is back", async || {
        let run = cluster.console("alice", "READ a.txt\n");
        (run.get(0)["data"]["content"] == "Before.").then_some(())
    })
    .await;
    let status = cluster.status().await;
    assert_eq!(pair_state(&status), PairState::PrimaryFailed);
}

/// M1: a standby serves no client, however genuine its ticket.
#[tokio::test(flavor = "multi_thread")]
async fn m1_a_standby_refuses_clients_even_with_a_genuine_ticket() {
    let cluster = active_pair("async").await;
    let mut alice = cluster.client("alice").await;
    let location = alice.locate("a.txt", Op::Read).await.unwrap();
    let backup = cluster.ss_addr("ss1_backup").await;
    for address in [&backup, &location.address] {
        let mut direct = RpcClient::connect(address, Role::Client, "alice")
            .await
            .unwrap();
        // A partner's whole-file copy is not even a client's request.
        let copy = direct
            .call::<_, SsReply>(PeerRequest::GetFile {
                file: "a.txt".into(),
                ticket: location.ticket.clone(),
            })
            .await
            .unwrap();
        assert_eq!(copy.unwrap_err().code, ErrorCode::BadRequest);
        let read = direct
            .call::<_, SsReply>(SsRequest::Read {
                file: "a.txt".into(),
                ticket: location.ticket.clone(),
            })
            .await
            .unwrap();
        if *address == backup {
            assert_eq!(read.unwrap_err().code, ErrorCode::Unavailable);
        } else {
            assert!(matches!(read, Ok(SsReply::Chunk { .. })), "{read:?}");
        }
    }
}

/// A file nm knows that the serving server lost is copied back from its
/// partner, not forgotten (not even across an nm restart).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_serving_server_lost_comes_back_from_its_partner() {
    let mut cluster = active_pair("async").await;
    cluster.kill_nm();
    cluster.kill_ss("ss1_backup");
    cluster.kill_ss("ss1");
    std::fs::remove_file(cluster.storage("ss1").join("files/a.txt")).unwrap();
    cluster.start_nm().await;
    // The serving server registers first, without the file.
    cluster.start_ss("ss1").await;
    cluster.wait_alive("ss1").await;
    let run = cluster.console(
        "alice", "VIEW -a
",
    );
    assert_eq!(
        run.get(0)["data"]["files"][0]["name"],
        "a.txt",
        "not forgotten"
    );
    cluster.start_ss("ss1_backup").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_replicated().await;
    let run = cluster.console("alice", "READ a.txt\n");
    run.all_ok();
    assert_eq!(run.get(0)["data"]["content"], "Before.");
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// `--unclean-promotion`: the backup that missed a change is promoted
/// anyway, and the change comes back as a reported conflict copy when the
/// primary returns.
#[tokio::test(flavor = "multi_thread")]
async fn unclean_promotion_serves_and_keeps_what_the_promoted_server_lacked() {
    let mut options = options("sync");
    options.nm_args.push("--unclean-promotion");
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console("alice", "CREATE a.txt\nWRITE a.txt 0\n0 Before.\nETIRW\n")
        .all_ok();
    cluster.wait_replicated().await;
    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console("alice", "WRITE a.txt 1\n0 Acknowledged alone.\nETIRW\n")
        .all_ok();
    kill_after_registration(&mut cluster, "ss1_backup", "ss1", Duration::ZERO).await;
    eventually("the backup to serve anyway", async || {
        let run = cluster.console("alice", "WRITE a.txt 1\n0 After.\nETIRW\n");
        (run.code == Some(0)).then_some(())
    })
    .await;
    cluster.start_ss("ss1").await;
    cluster.wait_replicated().await;
    let run = cluster.console("alice", "READ a.txt\nINFO a.txt\n");
    run.all_ok();
    let content = run.get(0)["data"]["content"].as_str().unwrap().to_owned();
    let copies = run.get(1)["data"]["conflict_copies"].clone();
    let kept = if content.contains("Acknowledged alone.") {
        content
    } else {
        let copy = copies[0].as_str().expect("a conflict copy is reported");
        let read = cluster.console("alice", &format!("READ {copy}\n"));
        read.get(0)["data"]["content"].as_str().unwrap().to_owned()
    };
    assert!(kept.contains("Acknowledged alone."), "{kept} / {copies}");
    cluster.wait_same_files("ss1", "ss1_backup").await;
}
