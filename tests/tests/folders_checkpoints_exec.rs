//! Folders and MOVE, checkpoints and REVERT, and EXEC.

use harness::{Options, TestCluster};

fn codes(cluster: &TestCluster, user: &str, script: &str) -> Vec<String> {
    cluster.console(user, script).codes()
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn folders_hold_files_across_servers_and_move_keeps_the_name() {
    let mut cluster = TestCluster::start(&["ss1", "ss2"]).await;
    assert_eq!(
        codes(
            &cluster,
            "alice",
            "CREATE docs/a.txt\nCREATEFOLDER docs/deep\nCREATEFOLDER docs\nCREATEFOLDER docs\nCREATEFOLDER docs/deep\nCREATEFOLDER ../up\n"
        ),
        ["E_NOT_FOUND", "E_NOT_FOUND", "ok", "E_EXISTS", "ok", "E_INVALID_NAME"]
    );
    cluster
        .console(
            "alice",
            "CREATE docs/a.txt\nCREATE docs/b.txt\nCREATE top.txt\nWRITE top.txt 0\n0 Moving on.\nETIRW\nCHECKPOINT top.txt before-move\n",
        )
        .all_ok();
    let status = cluster.status().await;
    assert!(
        status.servers.iter().all(|s| s.files > 0),
        "the folder's files are spread over both servers"
    );
    let view = cluster.console("alice", "VIEWFOLDER docs\nVIEWFOLDER /\nVIEWFOLDER nope\n");
    assert_eq!(
        names(&view.get(0)["data"]["entries"]),
        ["docs/a.txt", "docs/b.txt", "docs/deep"]
    );
    assert_eq!(view.get(0)["data"]["entries"][2]["is_folder"], true);
    assert_eq!(names(&view.get(1)["data"]["entries"]), ["docs", "top.txt"]);
    assert_eq!(view.code_of(2), "E_NOT_FOUND");
    // MOVE: owner only, keeps the name and the checkpoints, refuses a taken name.
    cluster.console("bob", "LIST\n").all_ok();
    assert_eq!(
        codes(&cluster, "bob", "MOVE top.txt docs\n"),
        ["E_UNAUTHORIZED"]
    );
    assert_eq!(
        codes(
            &cluster,
            "alice",
            "MOVE top.txt nowhere\nMOVE top.txt docs/deep\nREAD docs/deep/top.txt\nREAD top.txt\nLISTCHECKPOINTS docs/deep/top.txt\nCREATE top.txt\nMOVE top.txt docs/deep\n"
        ),
        ["E_NOT_FOUND", "ok", "ok", "E_NOT_FOUND", "ok", "ok", "E_EXISTS"]
    );
    let moved = cluster.console(
        "alice",
        "READ docs/deep/top.txt\nVIEWCHECKPOINT docs/deep/top.txt before-move\n",
    );
    assert_eq!(moved.get(0)["data"]["content"], "Moving on.");
    assert_eq!(moved.get(1)["data"]["content"], "Moving on.");
    // Folders and the move survive restarts of nm and of the servers.
    cluster.kill_nm();
    cluster.kill_ss("ss1");
    cluster.kill_ss("ss2");
    cluster.start_nm().await;
    cluster.start_ss("ss1").await;
    cluster.start_ss("ss2").await;
    let after = cluster.console(
        "alice",
        "VIEWFOLDER docs/deep\nREAD docs/deep/top.txt\nCREATE docs/deep/new.txt\n",
    );
    after.all_ok();
    assert_eq!(
        names(&after.get(0)["data"]["entries"]),
        ["docs/deep/top.txt"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_view_revert_undo_and_belong_to_the_file() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    let run = cluster.console(
        "alice",
        "CREATE c.txt
WRITE c.txt 0
0 First draft.
ETIRW
CHECKPOINT c.txt v1
CHECKPOINT c.txt v1
CHECKPOINT c.txt bad/tag
WRITE c.txt 1
0 Second thoughts.
ETIRW
CHECKPOINT c.txt v2
LISTCHECKPOINTS c.txt
VIEWCHECKPOINT c.txt v1
VIEWCHECKPOINT c.txt nope
REVERT c.txt v1
READ c.txt
UNDO c.txt
READ c.txt
REVERT c.txt nope
",
    );
    let codes: Vec<&str> = (0..run.outcomes.len()).map(|i| run.code_of(i)).collect();
    assert_eq!(
        codes,
        [
            "null",
            "null",
            "null",
            "E_EXISTS",
            "E_INVALID_NAME",
            "null",
            "null",
            "null",
            "null",
            "E_NOT_FOUND",
            "null",
            "null",
            "null",
            "null",
            "E_NOT_FOUND"
        ]
    );
    let list = run.get(7)["data"]["checkpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["tag"], "v1");
    assert_eq!(list[0]["size"], 12);
    assert!(list[0]["created_ms"].as_u64().unwrap() > 0);
    assert_eq!(run.get(8)["data"]["content"], "First draft.");
    assert_eq!(run.get(11)["data"]["content"], "First draft.");
    assert_eq!(
        run.get(13)["data"]["content"],
        "First draft. Second thoughts.",
        "REVERT is one UNDO step"
    );
    // Readers may view and list, not create or revert.
    cluster.console("bob", "LIST\n").all_ok();
    cluster
        .console("alice", "ADDACCESS -R c.txt bob\n")
        .all_ok();
    let bob = cluster.console(
        "bob",
        "LISTCHECKPOINTS c.txt\nVIEWCHECKPOINT c.txt v2\nCHECKPOINT c.txt mine\nREVERT c.txt v1\n",
    );
    assert_eq!(
        (0..4).map(|i| bob.code_of(i)).collect::<Vec<_>>(),
        ["null", "null", "E_UNAUTHORIZED", "E_UNAUTHORIZED"]
    );
    // They persist across a restart of the server.
    cluster.kill_ss("ss1");
    cluster.start_ss("ss1").await;
    let kept = cluster.console("alice", "VIEWCHECKPOINT c.txt v2\n");
    assert_eq!(
        kept.get(0)["data"]["content"],
        "First draft. Second thoughts."
    );
    // DELETE removes them with the file.
    cluster
        .console(
            "alice",
            "DELETE c.txt\nCREATE c.txt\nLISTCHECKPOINTS c.txt\n",
        )
        .all_ok();
    assert!(!cluster.storage("ss1").join("checkpoints/c.txt").exists());
    let fresh = cluster.console("alice", "LISTCHECKPOINTS c.txt\n");
    assert_eq!(fresh.get(0)["data"]["checkpoints"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_is_disabled_by_default() {
    let cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console("alice", "CREATE s.sh\nWRITE s.sh 0\n0 echo hi\nETIRW\n")
        .all_ok();
    assert_eq!(codes(&cluster, "alice", "EXEC s.sh\n"), ["E_DISABLED"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_the_file_bounded_by_time_and_output() {
    let options = Options {
        nm_args: vec![
            "--allow-exec",
            "--exec-timeout",
            "500ms",
            "--exec-max-output",
            "4096",
        ],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    let run = cluster.console(
        "alice",
        "CREATE s.sh
WRITE s.sh 0
0 echo out; echo err >&2; exit 4
ETIRW
EXEC s.sh
CREATE slow.sh
WRITE slow.sh 0
0 sleep 30
ETIRW
EXEC slow.sh
CREATE loud.sh
WRITE loud.sh 0
0 yes
ETIRW
EXEC loud.sh
",
    );
    let out = &run.get(2)["data"];
    assert_eq!(out["stdout"], "out\n");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["status"], 4);
    assert_eq!(run.code_of(5), "E_TIMEOUT");
    assert_eq!(run.code_of(8), "E_TOO_LARGE");
    cluster.console("bob", "LIST\n").all_ok();
    assert_eq!(codes(&cluster, "bob", "EXEC s.sh\n"), ["E_UNAUTHORIZED"]);
}

/// EXEC on a pair that failed over: the ticket nm issues itself for the
/// script carries the pair's epoch (one of epoch 0 was refused by the
/// promoted backup as older than its own).
#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_on_a_pair_that_failed_over() {
    let options = Options {
        nm_args: vec!["--allow-exec"],
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster
        .wait_pair("ss1", shared::proto::PairState::Active)
        .await;
    cluster
        .console(
            "alice",
            "CREATE s.sh\nWRITE s.sh 0\n0 echo promoted\nETIRW\n",
        )
        .all_ok();
    cluster.wait_replicated().await;
    cluster.wait_same_files("ss1", "ss1_backup").await;
    cluster.kill_ss("ss1");
    let run = harness::eventually("EXEC on the promoted backup", async || {
        let run = cluster.console("alice", "EXEC s.sh\n");
        // Until the promotion completes the pair is unavailable; then it runs.
        (run.codes() != ["E_UNAVAILABLE"]).then_some(run)
    })
    .await;
    assert_eq!(run.codes(), ["ok"], "{:?}", run.get(0));
    assert_eq!(run.get(0)["data"]["stdout"], "promoted\n");
    let status = cluster.status().await;
    let pair = status.pairs.iter().find(|p| p.primary == "ss1").unwrap();
    assert!(pair.epoch > 0, "the pair failed over: {pair:?}");
}
