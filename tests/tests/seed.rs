//! The daemons' offline seeding tools (`ss-seed`, `nm-seed`), which the
//! benchmarks prepare large clusters with: what they write, a real nm and a
//! real storage server serve.

use harness::{bin, TestCluster};
use std::process::Command;

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin(tool))
        .args(args)
        .output()
        .expect("the tool runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn seeded_files_are_served_and_a_seeded_folder_is_not_seeded_twice() {
    let mut cluster = TestCluster::start(&[]).await;
    let storage = cluster.storage("ss1");
    let storage = storage.to_str().unwrap();
    let seeded = run(
        "ss-seed",
        &["--storage", storage, "--files", "40", "--size", "11"],
    );
    assert!(seeded.status.success(), "{seeded:?}");
    // A folder that holds a store is refused, or left alone if asked.
    let again = run("ss-seed", &["--storage", storage, "--files", "1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a store"));
    let alone = run(
        "ss-seed",
        &["--storage", storage, "--files", "1", "--if-empty"],
    );
    assert!(alone.status.success(), "{alone:?}");
    cluster.kill_nm();
    let data_dir = cluster.dir().join("nm-data");
    let args = ["--data-dir", data_dir.to_str().unwrap(), "--files", "40"];
    let recorded = run("nm-seed", &args);
    assert!(recorded.status.success(), "{recorded:?}");
    cluster.start_nm().await;
    cluster.start_ss("ss1").await;
    let batch = cluster.console("bench", "VIEW\nREAD f000039\nINFO f000000\n");
    let outcomes = batch.all_ok();
    let listed = outcomes[0].to_string();
    assert_eq!(listed.matches("f0000").count(), 40, "{listed}");
    assert_eq!(outcomes[1]["data"]["content"], "lorem ipsum");
    assert_eq!(outcomes[2]["data"]["owner"], "bench");
    // Without etcd support, --etcd says so rather than doing nothing.
    if !cfg!(feature = "ha") {
        let refused = run("nm-seed", &["--etcd", "http://127.0.0.1:1", "--files", "1"]);
        assert!(!refused.status.success());
    }
}
