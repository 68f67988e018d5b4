//! What survives restarts: contents, metadata and undo on a storage server;
//! users, owners and placement in nm.

use harness::{eventually, TestCluster};
use shared::proto::ServerState;

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_server_restart_keeps_contents_versions_and_undo() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console(
            "alice",
            "CREATE notes.txt\nWRITE notes.txt 0\n0 Kept across restarts.\nETIRW\nWRITE notes.txt 1\n0 Second.\nETIRW\n",
        )
        .all_ok();
    cluster.kill_ss("ss1");
    let down = cluster.console("alice", "READ notes.txt\n");
    assert_eq!(down.code_of(0), "E_UNAVAILABLE", "{}", down.stdout);
    cluster.start_ss("ss1").await;
    let run = cluster.console(
        "alice",
        "READ notes.txt\nINFO notes.txt\nUNDO notes.txt\nREAD notes.txt\n",
    );
    run.all_ok();
    assert_eq!(
        run.get(0)["data"]["content"],
        "Kept across restarts. Second."
    );
    assert_eq!(run.get(1)["data"]["stats"]["version"], 3);
    assert_eq!(run.get(1)["data"]["owner"], "alice");
    assert_eq!(run.get(3)["data"]["content"], "Kept across restarts.");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nm_restart_keeps_users_owners_and_placement() {
    let mut cluster = TestCluster::start(&["ss1", "ss2"]).await;
    cluster
        .console(
            "alice",
            "CREATE a.txt\nCREATE b.txt\nWRITE a.txt 0\n0 Alpha.\nETIRW\n",
        )
        .all_ok();
    cluster.console("bob", "CREATE bob.txt\n").all_ok();
    cluster.kill_nm();
    cluster.start_nm().await;
    // The storage servers reconnect by themselves.
    cluster.wait_alive("ss1").await;
    cluster.wait_alive("ss2").await;
    let run = cluster.console("alice", "LIST\nVIEW -a\nREAD a.txt\nINFO a.txt\n");
    run.all_ok();
    let users = run.get(0)["data"]["users"].as_array().unwrap().clone();
    assert!(users.contains(&"alice".into()) && users.contains(&"bob".into()));
    let names: Vec<&str> = run.get(1)["data"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt", "bob.txt"]);
    assert_eq!(run.get(2)["data"]["content"], "Alpha.");
    assert_eq!(run.get(3)["data"]["stats"]["version"], 2);
    let bob = cluster.console("bob", "READ a.txt\nDELETE bob.txt\n");
    assert_eq!(bob.code_of(0), "E_UNAUTHORIZED");
    assert_eq!(bob.get(1)["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn nm_remembers_files_of_a_server_that_is_down_at_its_restart() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    cluster.console("alice", "CREATE kept.txt\n").all_ok();
    cluster.kill_ss("ss1");
    cluster.kill_nm();
    cluster.start_nm().await;
    let run = cluster.console("alice", "VIEW\nREAD kept.txt\nCREATE kept.txt\n");
    assert_eq!(run.get(0)["data"]["files"][0]["name"], "kept.txt");
    assert_eq!(run.code_of(1), "E_UNAVAILABLE");
    assert_eq!(run.code_of(2), "E_EXISTS");
    cluster.start_ss("ss1").await;
    cluster.console("alice", "READ kept.txt\n").all_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn files_nm_never_recorded_are_adopted_from_the_inventory() {
    let mut cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console(
            "carol",
            "CREATE orphan.txt\nWRITE orphan.txt 0\n0 Found.\nETIRW\n",
        )
        .all_ok();
    cluster.kill_nm();
    std::fs::remove_dir_all(cluster.dir().join("nm-data")).unwrap();
    cluster.start_nm().await;
    let status = eventually("ss1 to re-register", async || {
        let status = cluster.status().await;
        status
            .servers
            .iter()
            .any(|s| s.name == "ss1" && s.state == ServerState::Alive)
            .then_some(status)
    })
    .await;
    assert_eq!(status.servers[0].files, 1);
    // Adopted once nm has read ss1's inventory, which follows its registration.
    let run = eventually("orphan.txt to be adopted", async || {
        let run = cluster.console("carol", "READ orphan.txt\nINFO orphan.txt\n");
        (run.code_of(0) != "E_NOT_FOUND").then_some(run)
    })
    .await;
    run.all_ok();
    assert_eq!(run.get(0)["data"]["content"], "Found.");
    assert_eq!(run.get(1)["data"]["owner"], "carol");
}

#[tokio::test(flavor = "multi_thread")]
async fn contents_are_files_under_the_storage_folder() {
    let cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console(
            "alice",
            "CREATEFOLDER deep\nCREATEFOLDER deep/er\nCREATE deep/er/file.txt\nWRITE deep/er/file.txt 0\n0 On disk.\nETIRW\n",
        )
        .all_ok();
    let path = cluster.storage("ss1").join("files/deep/er/file.txt");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "On disk.");
    // What stays in tmp/ are spare inodes displaced by metadata rewrites and
    // kept for reuse (one per rewrite here), never a partial write; a
    // restart empties it.
    let tmp = cluster.storage("ss1").join("tmp");
    let left = std::fs::read_dir(tmp).unwrap().count();
    assert!(left <= 2, "{left} files in tmp/: only spares expected");
}
