//! Sentence locks across clients: concurrent writers, E_LOCKED, and a client
//! killed in the middle of a WRITE.

use harness::{eventually, TestCluster};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

async fn setup(cluster: &TestCluster) {
    cluster
        .console(
            "alice",
            "CREATE f.txt\nWRITE f.txt 0\n0 First sentence. Second sentence.\nETIRW\n",
        )
        .all_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_write_different_sentences_at_once_and_both_land() {
    let cluster = TestCluster::start(&["ss1"]).await;
    setup(&cluster).await;
    let mut a = cluster.client("alice").await;
    let mut b = cluster.client("alice").await;
    a.write_begin("f.txt", 0).await.unwrap();
    b.write_begin("f.txt", 1).await.unwrap();
    a.write_edit(1, "uno").await.unwrap();
    b.write_edit(1, "dos").await.unwrap();
    // Readers see the old content until ETIRW.
    let mut reader = cluster.client("alice").await;
    assert_eq!(
        reader.read("f.txt").await.unwrap(),
        b"First sentence. Second sentence."
    );
    b.write_commit().await.unwrap();
    a.write_commit().await.unwrap();
    assert_eq!(
        reader.read("f.txt").await.unwrap(),
        b"First uno sentence. Second dos sentence."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_sentence_is_locked_for_the_second_writer() {
    let cluster = TestCluster::start(&["ss1"]).await;
    setup(&cluster).await;
    let mut a = cluster.client("alice").await;
    a.write_begin("f.txt", 1).await.unwrap();
    let run = cluster.console(
        "alice",
        "WRITE f.txt 1\n0 mine\nETIRW\nDELETE f.txt\nUNDO f.txt\n",
    );
    assert_eq!(run.code_of(0), "E_LOCKED");
    assert_eq!(run.code_of(1), "E_LOCKED", "DELETE waits for writers");
    assert_eq!(run.code_of(2), "E_LOCKED", "UNDO waits for writers");
    a.write_edit(0, "Really,").await.unwrap();
    a.write_commit().await.unwrap();
    let run = cluster.console("alice", "WRITE f.txt 1\n0 Now\nETIRW\nREAD f.txt\n");
    run.all_ok();
    assert_eq!(
        run.get(1)["data"]["content"],
        "First sentence. Now Really, Second sentence."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_follows_its_sentence_when_another_writer_splits_earlier_ones() {
    let cluster = TestCluster::start(&["ss1"]).await;
    setup(&cluster).await;
    let mut a = cluster.client("alice").await;
    let mut b = cluster.client("alice").await;
    b.write_begin("f.txt", 1).await.unwrap();
    a.write_begin("f.txt", 0).await.unwrap();
    a.write_edit(1, "one. two. three").await.unwrap();
    a.write_commit().await.unwrap();
    b.write_edit(2, "still").await.unwrap();
    b.write_commit().await.unwrap();
    assert_eq!(
        a.read("f.txt").await.unwrap(),
        b"First one. two. three sentence. Second sentence. still".as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_write_releases_its_lock_and_loses_its_edits() {
    let cluster = TestCluster::start(&["ss1"]).await;
    setup(&cluster).await;
    let mut console = cluster
        .console_command("alice", &["--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = console.stdin.take().unwrap();
    writeln!(stdin, "WRITE f.txt 0\n0 never committed").unwrap();
    stdin.flush().unwrap();
    // REVERT to a tag that does not exist is a probe without side effects:
    // E_LOCKED while a sentence is being written, E_NOT_FOUND otherwise.
    let mut probe = cluster.client("alice").await;
    let revert = shared::proto::NmRequest::Revert {
        file: "f.txt".into(),
        tag: "no-such-tag".into(),
    };
    eventually("the console to hold the lock", async || {
        let reply = probe.nm(revert.clone()).await;
        matches!(reply, Err(e) if e.code == shared::ErrorCode::Locked).then_some(())
    })
    .await;
    console.kill().unwrap(); // SIGKILL
    console.wait().unwrap();
    eventually("the lock to be released", async || {
        let reply = probe.nm(revert.clone()).await;
        matches!(reply, Err(e) if e.code == shared::ErrorCode::NotFound).then_some(())
    })
    .await;
    probe.write_begin("f.txt", 0).await.unwrap();
    probe.write_edit(0, "Yes.").await.unwrap();
    probe.write_commit().await.unwrap();
    assert_eq!(
        probe.read("f.txt").await.unwrap(),
        b"Yes. First sentence. Second sentence."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_streamed_over_stdin_runs_line_by_line() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let mut console = cluster
        .console_command("alice", &["--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = console.stdin.take().unwrap();
    let mut stdout = BufReader::new(console.stdout.take().unwrap());
    writeln!(stdin, "CREATE live.txt").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let outcome: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(outcome["ok"], true, "answered before stdin closed: {line}");
    writeln!(stdin, "EXIT").unwrap();
    assert!(console.wait().unwrap().success());
}
