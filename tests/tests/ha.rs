//! nm high availability on etcd, with every daemon on its own loopback
//! address and partitions that drop packets (see `harness::ha`).
//!
//! The invariants: a takeover of nm alone never promotes a storage server
//! (the pair's epoch and serving server stay); nothing acknowledged is lost;
//! a deposed leader cannot write to etcd; a storage server cut from nm stops
//! serving before its partner is promoted.
#![cfg(feature = "ha")]

use harness::eventually;
use harness::ha::{HaCluster, HaOptions};
use nm::group::Group;
use nm::ha::etcd_client::{self, Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use nm::ha::keys::Layout;
use nm::journal::Record;
use nm::namespace::Namespace;
use shared::proto::{ClusterStatus, NmRole, PairState};
use shared::ErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pair(status: &ClusterStatus, primary: &str) -> (u64, String) {
    let p = status
        .pairs
        .iter()
        .find(|p| p.primary == primary)
        .expect("pair in STATUS");
    let serving = status
        .servers
        .iter()
        .find(|s| s.serving)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    (p.epoch, serving)
}

async fn pair_cluster(options: HaOptions) -> HaCluster {
    let cluster = HaCluster::start(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console(
            "alice",
            "CREATE a.txt\nWRITE a.txt 0\n0 Before the failover.\nETIRW\n",
        )
        .all_ok();
    cluster
}

fn content(outcome: &serde_json::Value) -> &str {
    outcome["data"]["content"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_and_no_server_is_promoted() {
    let mut cluster = pair_cluster(HaOptions::default()).await;
    let before = pair(&cluster.status().await, "ss1");
    let old = cluster.wait_leader().await;
    cluster.kill_nm(old);
    let started = Instant::now();
    cluster.until_ok("alice", "CREATE b.txt\n").await;
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    eprintln!(
        "first CREATE and READ through the new leader after {:?}",
        started.elapsed()
    );
    assert_eq!(content(&read), "Before the failover.");
    let status = cluster.status().await;
    let leader = status.nm.iter().find(|n| n.role == NmRole::Leader).unwrap();
    assert_ne!(leader.address, cluster.nm_addr(old));
    assert!(leader.lease_ms_left > 0, "the leader shows its lease");
    assert_eq!(
        pair(&status, "ss1"),
        before,
        "an nm takeover promoted nothing"
    );
    // The dead nm leaves the group once its lease lapses, and comes back as a standby.
    eventually("the dead nm to leave STATUS", async || {
        (cluster.try_status().await?.nm.len() == 2).then_some(())
    })
    .await;
    cluster.start_nm(old);
    let back = cluster.nm_addr(old);
    cluster.wait_standby(old).await;
    // Dialled alone, a standby redirects to the leader, once it has seen the
    // leader's key (its warm flag can be on record a moment before: until
    // then it answers E_UNAVAILABLE, "no nm leads at the moment").
    let error = eventually("the restarted nm to redirect to the leader", async || {
        let refused = client::Client::connect(&back, "alice").await.err()?;
        let shared::connection::ConnectionError::Refused(error) = refused else {
            panic!("expected a refusal, got {refused}");
        };
        (error.code != ErrorCode::Unavailable).then_some(error)
    })
    .await;
    assert_eq!(error.code, ErrorCode::NotLeader);
    assert_eq!(error.leader.as_deref(), Some(leader.address.as_str()));
    let view = cluster.console("alice", "VIEW\n");
    let files = view.all_ok()[0]["data"]["files"].to_string();
    assert!(
        files.contains("a.txt") && files.contains("b.txt"),
        "{files}"
    );
    // The new leader serves metrics, its requests among them.
    let new = cluster.nm_index(&leader.address);
    let metrics = scrape(&cluster.nm_metrics_addr(new)).await;
    assert!(metrics.contains("docs_pair_epoch"), "{metrics}");
    assert!(metrics.contains("docs_nm_requests_total"), "{metrics}");
}

/// The body of a Prometheus scrape (a plain HTTP/1.0 GET).
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_leader_is_deposed_and_steps_down_when_it_resumes() {
    let cluster = pair_cluster(HaOptions::default()).await;
    let before = pair(&cluster.status().await, "ss1");
    let old = cluster.wait_leader().await;
    cluster.signal_nm(old, libc::SIGSTOP);
    let new = cluster.wait_new_leader(old).await;
    cluster.until_ok("alice", "CREATE during.txt\n").await;
    cluster.signal_nm(old, libc::SIGCONT);
    eventually("the resumed leader to step down", async || {
        cluster
            .log(&format!("nm{old}"))
            .contains("nm_stepped_down")
            .then_some(())
    })
    .await;
    eventually("the resumed nm to redirect to the new leader", async || {
        match client::Client::connect(&cluster.nm_addr(old), "alice").await {
            Err(shared::connection::ConnectionError::Refused(e))
                if e.code == ErrorCode::NotLeader =>
            {
                (e.leader.as_deref() == Some(cluster.nm_addr(new).as_str())).then_some(())
            }
            _ => None,
        }
    })
    .await;
    let status = cluster.status().await;
    assert_eq!(
        pair(&status, "ss1"),
        before,
        "an nm takeover promoted nothing"
    );
    cluster.until_ok("alice", "CREATE after.txt\n").await;
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    assert_eq!(content(&read), "Before the failover.");
}

/// The fence itself: a writer whose leader key was replaced cannot write,
/// whatever it believes about its lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leaders_writes_are_refused_by_etcd() {
    let options = HaOptions {
        nm_count: 0,
        ..HaOptions::default()
    };
    let cluster = HaCluster::start(&[], options).await;
    let endpoint = format!("http://{}:2379", cluster.etcd_ip(0));
    let layout = Layout::new("/fence-test/");
    let mut client = eventually("etcd to answer", async || {
        let mut client = Client::connect([endpoint.as_str()], None).await.ok()?;
        client.get("x", None).await.ok()?;
        Some(client)
    })
    .await;
    let campaign = |client: &mut Client, me: &'static str| {
        let mut client = client.clone();
        let layout = layout.clone();
        async move {
            let lease = client.lease_grant(10, None).await.unwrap().id();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    layout.leader(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    layout.leader(),
                    me,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = client.txn(txn).await.unwrap();
            assert!(won.succeeded(), "{me} could not take the leader key");
            won.header().unwrap().revision()
        }
    };
    let fence = campaign(&mut client, "first").await;
    let group = Arc::new(Group::new(Duration::from_secs(10)));
    let _term = group.begin_term();
    group.renewed(Instant::now());
    let journal = nm::ha::store::writer(
        client.clone(),
        layout.clone(),
        fence,
        group.clone(),
        &Namespace::default(),
    );
    journal
        .append(vec![Record::User {
            name: "before".into(),
        }])
        .await
        .expect("the leader writes");
    // Another nm takes over (the first one's key is gone: its lease lapsed).
    client.delete(layout.leader(), None).await.unwrap();
    campaign(&mut client, "second").await;
    let refused = journal
        .append(vec![Record::User {
            name: "after".into(),
        }])
        .await
        .expect_err("a deposed leader's write must fail");
    assert!(
        matches!(refused.code, ErrorCode::NotLeader | ErrorCode::Unavailable),
        "{refused}"
    );
    assert!(!group.holds_lease(), "a fenced write ends the term");
    let users = client
        .get(
            format!("{}u/", layout.state()),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let names: Vec<_> = users
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec![format!("{}u/before", layout.state())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_etcd_operations_are_unavailable_and_nothing_acknowledged_is_lost() {
    let mut cluster = pair_cluster(HaOptions::default()).await;
    let mut client = client::Client::connect(&cluster.nm_list(), "alice")
        .await
        .expect("client");
    client
        .create("acked.txt")
        .await
        .expect("CREATE before etcd goes");
    cluster.kill_etcd(0);
    let error = eventually("operations to be refused", async || {
        match client
            .create(&format!("x{}.txt", rand::random::<u32>()))
            .await
        {
            Err(e) if e.code == ErrorCode::Unavailable => Some(e),
            _ => None,
        }
    })
    .await;
    assert!(
        error.message.contains("etcd") || error.message.contains("no nm leads"),
        "the message says why: {error}"
    );
    cluster.start_etcd(0);
    cluster.until_ok("alice", "CREATE after.txt\n").await;
    let view = cluster.console("alice", "VIEW\n");
    let files = view.all_ok()[0]["data"]["files"].to_string();
    for acked in ["a.txt", "acked.txt", "after.txt"] {
        assert!(files.contains(acked), "{acked} lost: {files}");
    }
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    assert_eq!(content(&read), "Before the failover.");
}

/// The index of the etcd member that is raft leader now.
async fn raft_leader(cluster: &HaCluster) -> usize {
    eventually("an etcd raft leader", async || {
        for i in 0..3 {
            let endpoint = format!("http://{}:2379", cluster.etcd_ip(i));
            let Ok(mut client) = Client::connect([endpoint.as_str()], None).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            if status
                .header()
                .is_some_and(|h| h.member_id() == status.leader())
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// CREATEs go on through nm while etcd member `victim(cluster)` is killed:
/// not one fails, and the nm leader stays.
async fn kill_an_etcd_member_under_creates(leader_lease: &'static str, kill_raft_leader: bool) {
    let options = HaOptions {
        etcd_count: 3,
        leader_lease,
        ..HaOptions::default()
    };
    let mut cluster = pair_cluster(options).await;
    let leader = cluster.wait_leader().await;
    let mut client = client::Client::connect(&cluster.nm_list(), "alice")
        .await
        .expect("client");
    for i in 0..20 {
        client
            .create(&format!("warm{i}.txt"))
            .await
            .expect("CREATE");
    }
    let raft = raft_leader(&cluster).await;
    let victim = if kill_raft_leader {
        raft
    } else {
        (raft + 1) % 3
    };
    cluster.kill_etcd(victim);
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < Duration::from_secs(4) {
        client
            .create(&format!("during{done}.txt"))
            .await
            .unwrap_or_else(|e| panic!("CREATE {done} failed after a member died: {e}"));
        done += 1;
    }
    assert!(done > 10, "only {done} CREATEs in 4 s");
    assert_eq!(cluster.wait_leader().await, leader, "the leader stayed");
}

/// A follower of etcd's raft dies: with the default lease, nothing notices.
#[tokio::test(flavor = "multi_thread")]
async fn one_of_three_etcd_members_killed_interrupts_nothing() {
    kill_an_etcd_member_under_creates("2s", false).await;
}

/// etcd's raft leader dies: etcd itself pauses for an election (here up to
/// about a second); a lease longer than that pause rides it out.
#[tokio::test(flavor = "multi_thread")]
async fn etcds_raft_leader_killed_interrupts_nothing_under_a_longer_lease() {
    kill_an_etcd_member_under_creates("5s", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_from_etcd_but_not_from_the_servers_steps_down() {
    let cluster = pair_cluster(HaOptions::default()).await;
    let before = pair(&cluster.status().await, "ss1");
    let old = cluster.wait_leader().await;
    cluster
        .partitions
        .cut(cluster.nm_ip(old), cluster.etcd_ip(0));
    let new = cluster.wait_new_leader(old).await;
    assert_ne!(new, old);
    eventually("the cut-off leader to step down", async || {
        cluster
            .log(&format!("nm{old}"))
            .contains("nm_stepped_down")
            .then_some(())
    })
    .await;
    cluster.until_ok("alice", "CREATE after.txt\n").await;
    let write = cluster
        .until_ok("alice", "WRITE a.txt 1\n0 More.\nETIRW\n")
        .await;
    assert_eq!(write["ok"], true);
    assert_eq!(
        pair(&cluster.status().await, "ss1"),
        before,
        "no server was promoted"
    );
    cluster.partitions.heal();
    cluster.wait_standby(old).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_hears_nothing_back_from_etcd_steps_down() {
    let cluster = pair_cluster(HaOptions::default()).await;
    let old = cluster.wait_leader().await;
    // One direction only: the leader's requests arrive, etcd's answers do not.
    cluster
        .partitions
        .drop_one_way(cluster.etcd_ip(0), cluster.nm_ip(old));
    cluster.wait_new_leader(old).await;
    eventually("the deaf leader to step down", async || {
        cluster
            .log(&format!("nm{old}"))
            .contains("nm_stepped_down")
            .then_some(())
    })
    .await;
    cluster.until_ok("alice", "CREATE after.txt\n").await;
}

/// A primary cut from every nm, still reachable by clients, stops serving
/// (its lease lapses) before nm promotes its backup: a write session opened
/// before the cut cannot commit on it afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_cut_from_nm_stops_serving_before_its_backup_is_promoted() {
    let cluster = pair_cluster(HaOptions::default()).await;
    cluster.until_ok("alice", "READ a.txt\n").await;
    let mut writer = client::Client::connect(&cluster.nm_list(), "alice")
        .await
        .expect("client");
    writer.write_begin("a.txt", 0).await.expect("WRITE on ss1");
    for i in 0..cluster.nm_count() {
        cluster
            .partitions
            .cut(cluster.ss_ip("ss1"), cluster.nm_ip(i));
    }
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    eventually("ss1_backup to be promoted", async || {
        let status = cluster.try_status().await?;
        (pair(&status, "ss1").1 == "ss1_backup").then_some(())
    })
    .await;
    writer.write_edit(0, "Late").await.ok();
    let late = writer.write_commit().await;
    assert!(
        late.is_err(),
        "ss1 committed a write after its backup was promoted: {late:?}"
    );
    // Clients go to the promoted backup and lose nothing acknowledged.
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    assert_eq!(content(&read), "Before the failover.");
    cluster
        .until_ok("alice", "WRITE a.txt 1\n0 On the backup.\nETIRW\n")
        .await;
    cluster.partitions.heal();
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// A client cut from nm only: its open WRITE on the storage server commits,
/// its next connection to nm fails with an error (no hang), and everyone
/// else carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_cut_from_nm_only_commits_its_open_write_and_is_told_nm_is_unreachable() {
    let cluster = pair_cluster(HaOptions::default()).await;
    let cut_client = cluster.host(51);
    let mut child = cluster
        .console_command(cut_client, "alice")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("console");
    let writes_begun = || {
        cluster
            .log("ss1")
            .lines()
            .filter(|l| {
                l.contains("\"ss_request\"") && l.contains("\"WRITE\"") && l.contains("\"ok\"")
            })
            .count()
    };
    let before = writes_begun();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"WRITE a.txt 1\n").unwrap();
    stdin.flush().unwrap();
    eventually("the WRITE to begin on ss1", async || {
        (writes_begun() > before).then_some(())
    })
    .await;
    for i in 0..cluster.nm_count() {
        cluster.partitions.cut(cut_client, cluster.nm_ip(i));
    }
    stdin
        .write_all(b"0 Written while cut from nm.\nETIRW\n")
        .unwrap();
    drop(stdin);
    let batch = harness::Batch::from(child.wait_with_output().unwrap());
    batch.all_ok();
    // A new session from the cut-off address cannot reach nm, and says so.
    let started = Instant::now();
    let cut = cluster.console_from(cut_client, "alice", "VIEW\n");
    assert_eq!(cut.code, Some(2), "{}", cut.stderr);
    assert!(
        cut.stderr.contains("cannot connect to nm"),
        "{}",
        cut.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it took {:?}",
        started.elapsed()
    );
    // Everyone else carries on, and sees the cut client's write.
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    let text = content(&read).to_owned();
    assert!(text.contains("Written while cut from nm."), "{text}");
    cluster.partitions.heal();
    cluster.console_from(cut_client, "alice", "VIEW\n").all_ok();
}

/// A storage server cut from its partner only: writes go on (async mode),
/// the backup falls behind, and catches up once the partition heals.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_cut_from_its_partner_only_catches_up_after_the_partition() {
    let cluster = pair_cluster(HaOptions::default()).await;
    cluster
        .partitions
        .cut(cluster.ss_ip("ss1"), cluster.ss_ip("ss1_backup"));
    let mut script = String::new();
    for i in 0..10 {
        script.push_str(&format!(
            "CREATE cut{i}.txt\nWRITE cut{i}.txt 0\n0 During the partition {i}.\nETIRW\n"
        ));
    }
    cluster.console("alice", &script).all_ok();
    let status = cluster.status().await;
    let (_, serving) = pair(&status, "ss1");
    assert_eq!(serving, "ss1", "the primary kept serving");
    assert!(
        cluster.difference("ss1", "ss1_backup").is_some(),
        "the backup could not have these yet"
    );
    cluster.partitions.heal();
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// The in-sync flag follows the stream's acknowledged position. A backup cut
/// from its primary only (both still heartbeat nm) leaves an acknowledged
/// change unacknowledged on the stream; past `--max-standby-lag` nm counts
/// it out of sync while the stream is still open (before the stream's own
/// timeout hands anything to nm's jobs), so when the primary then dies the
/// pair goes OFFLINE instead of promoting a backup without the change, and
/// nothing acknowledged is lost once the primary returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_the_stream_leaves_behind_is_not_promoted() {
    let options = HaOptions {
        nm_count: 1,
        heartbeat_timeout: "1s",
        daemons: harness::Options {
            nm_args: vec!["--max-standby-lag", "300ms"],
            ..harness::Options::default()
        },
        ..HaOptions::default()
    };
    let mut cluster = pair_cluster(options).await;
    assert!(cluster.status().await.pairs[0].standby_in_sync);
    cluster
        .partitions
        .cut(cluster.ss_ip("ss1"), cluster.ss_ip("ss1_backup"));
    let cut = Instant::now();
    cluster
        .console(
            "alice",
            "WRITE a.txt 1\n0 Acknowledged during the cut.\nETIRW\n",
        )
        .all_ok();
    let status = eventually("the backup out of sync", async || {
        let status = cluster.try_status().await?;
        (!status.pairs[0].standby_in_sync).then_some(status)
    })
    .await;
    let elapsed = cut.elapsed();
    let pair = &status.pairs[0];
    assert_eq!(pair.state, PairState::Syncing, "{pair:?}");
    let stream = pair.stream.as_ref().expect("the stream's position");
    assert!(
        stream.open && stream.unacknowledged > 0,
        "out of sync by the stream's position, before it gave up: {stream:?} after {elapsed:?}"
    );
    cluster.kill_ss("ss1");
    let status = cluster.wait_pair("ss1", PairState::Offline).await;
    assert!(
        status.pairs[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("not in sync")),
        "{:?}",
        status.pairs[0]
    );
    assert!(
        !status.servers.iter().any(|s| s.serving),
        "a server serves: {:?}",
        status.servers
    );
    cluster.partitions.heal();
    cluster.start_ss("ss1").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let read = cluster.until_ok("alice", "READ a.txt\n").await;
    assert!(
        content(&read).contains("Acknowledged during the cut."),
        "{read}"
    );
    cluster.wait_same_files("ss1", "ss1_backup").await;
}

/// The detail of the last pair sync the leader at `nm` reported, its recent
/// events included.
async fn last_sync_detail(nm: &str) -> Option<String> {
    use shared::proto::{EventKind, JobKind, JobStep};
    let client = client::Client::connect(nm, "watcher").await.ok()?;
    let mut detail = None;
    let _ = client
        .watch(Some(Duration::from_millis(300)), None, 200, |event| {
            if let EventKind::Job {
                kind: JobKind::SyncPair,
                step: JobStep::Applied,
                detail: Some(d),
                ..
            } = event.kind
            {
                detail = Some(d);
            }
        })
        .await;
    detail
}

/// A takeover compares no pair in full: the new leader knows nothing of
/// what changed while the backup was away (that was in the old leader's
/// memory), so it asks the serving server, which recorded every change its
/// standby has not confirmed since the pair was last level.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_catches_a_returning_backup_up_on_what_changed_only() {
    let mut cluster = pair_cluster(HaOptions::default()).await;
    let creates: String = (0..20)
        .map(|i| format!("CREATE f{i:02}\nWRITE f{i:02} 0\n0 File {i}.\nETIRW\n"))
        .collect();
    cluster.console("alice", &creates).all_ok();
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let before = pair(&cluster.status().await, "ss1");

    cluster.kill_ss("ss1_backup");
    cluster.wait_pair("ss1", PairState::BackupFailed).await;
    cluster
        .console(
            "alice",
            "WRITE f01 1\n0 While the backup was away.\nETIRW\nDELETE f02\nCREATE new.txt\n",
        )
        .all_ok();
    let old = cluster.wait_leader().await;
    cluster.kill_nm(old);
    let new = cluster.wait_new_leader(old).await;
    cluster.start_ss("ss1_backup").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    let detail = eventually("the new leader's sync of the pair", async || {
        last_sync_detail(&cluster.nm_addr(new)).await
    })
    .await;
    // The three files changed while the backup was away (and at most the
    // one file the first sync and the stream's opening may have left to
    // nm's jobs), never all twenty-one.
    let compared: usize = detail
        .strip_prefix("caught up on the ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the new leader compared the pair in full: {detail}"));
    assert!((3..=4).contains(&compared), "{detail}");
    assert!(
        detail.contains("copied 2 files") && detail.contains("1 deletes applied"),
        "{detail}"
    );
    assert_eq!(
        pair(&cluster.status().await, "ss1"),
        before,
        "an nm takeover promoted nothing"
    );
}
