//! Every core command through the real `console --batch --json` binary, with
//! its error paths.

use harness::TestCluster;
use shared::proto::EditLine;
use shared::ErrorCode;

const MOUSE: &str = "CREATE mouse.txt
WRITE mouse.txt 0
0 Im just a mouse.
ETIRW
WRITE mouse.txt 1
0 I dont like PNS
ETIRW
WRITE mouse.txt 2
ETIRW
WRITE mouse.txt 1
3 T-T
ETIRW
WRITE mouse.txt 0
3 deeply mistaken hollow lil gei-fwen
6 pocket-sized
ETIRW
READ mouse.txt
";

#[tokio::test(flavor = "multi_thread")]
async fn the_mouse_example_end_to_end() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let run = cluster.console("alice", MOUSE);
    assert_eq!(run.outcomes.len(), 7, "{}", run.stdout);
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(run.get(i)["ok"], true, "{}", run.get(i));
    }
    assert_eq!(run.code_of(3), "E_INVALID_INDEX");
    assert_eq!(
        run.get(6)["data"]["content"],
        "Im just a deeply mistaken hollow pocket-sized lil gei-fwen mouse. I dont like T-T PNS"
    );
    assert_eq!(run.code, Some(1), "one command failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn info_view_list_stream_undo_delete() {
    let cluster = TestCluster::start(&["ss1", "ss2"]).await;
    let run = cluster.console(
        "alice",
        "CREATE a.txt
WRITE a.txt 0
0 Hello there world.
ETIRW
INFO a.txt
VIEW
VIEW -l
STREAM a.txt
LIST
UNDO a.txt
READ a.txt
UNDO a.txt
DELETE a.txt
VIEW
EXIT
READ never-run.txt
",
    );
    assert_eq!(
        run.outcomes.len(),
        12,
        "EXIT ends the script: {}",
        run.stdout
    );
    let info = &run.get(2)["data"];
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["stats"]["words"], 3);
    assert_eq!(info["stats"]["size"], 18);
    assert_eq!(info["stats"]["version"], 2);
    assert_eq!(info["servers"].as_array().unwrap().len(), 1);
    assert_eq!(run.get(3)["data"]["files"][0]["name"], "a.txt");
    assert_eq!(run.get(4)["data"]["files"][0]["words"], 3);
    assert_eq!(run.get(4)["data"]["files"][0]["owner"], "alice");
    assert_eq!(
        run.get(5)["data"]["words"],
        serde_json::json!(["Hello", "there", "world."])
    );
    assert!(run.get(6)["data"]["users"]
        .as_array()
        .unwrap()
        .contains(&"alice".into()));
    assert_eq!(run.get(7)["ok"], true);
    assert_eq!(run.get(8)["data"]["content"], "");
    assert_eq!(run.code_of(9), "E_NOTHING_TO_UNDO");
    assert_eq!(run.get(10)["ok"], true);
    assert_eq!(run.get(11)["data"]["files"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn view_and_permissions_between_users() {
    let cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console(
            "alice",
            "CREATE secret.txt\nWRITE secret.txt 0\n0 Mine.\nETIRW\n",
        )
        .all_ok();
    let bob = cluster.console(
        "bob",
        "VIEW
VIEW -a
READ secret.txt
STREAM secret.txt
INFO secret.txt
WRITE secret.txt 0
0 hacked
ETIRW
UNDO secret.txt
DELETE secret.txt
",
    );
    assert_eq!(bob.get(0)["data"]["files"], serde_json::json!([]));
    assert_eq!(bob.get(1)["data"]["files"][0]["name"], "secret.txt");
    for i in 2..=6 {
        assert_eq!(bob.code_of(i), "E_UNAUTHORIZED", "{}", bob.get(i));
    }
    assert_eq!(bob.code, Some(1));
    let alice = cluster.console("alice", "READ secret.txt\n");
    assert_eq!(alice.get(0)["data"]["content"], "Mine.");
}

#[tokio::test(flavor = "multi_thread")]
async fn error_paths() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let long_name = "x".repeat(300);
    let run = cluster.console(
        "alice",
        &format!(
            "CREATE a.txt
CREATE a.txt
READ missing.txt
CREATE ../../../x
CREATE /etc/passwd
CREATE {long_name}
CREATE a.txt/inside
WRITE a.txt 5
ETIRW
WRITE a.txt 0
7 too far
-1 negative
0 fine.
ETIRW
READ a.txt
FROBNICATE
UNDO missing.txt
WRITE a.txt
UNDO a.txt
"
        ),
    );
    let codes: Vec<&str> = (0..run.outcomes.len()).map(|i| run.code_of(i)).collect();
    assert_eq!(
        codes,
        [
            "null",
            "E_EXISTS",
            "E_NOT_FOUND",
            "E_INVALID_NAME",
            "E_INVALID_NAME",
            "E_INVALID_NAME",
            "E_EXISTS",
            "E_INVALID_INDEX",
            "E_INVALID_INDEX",
            "null",
            "E_BAD_REQUEST",
            "E_NOT_FOUND",
            // A bad WRITE header takes the lines after it (up to ETIRW, or
            // here the end) with it: the UNDO is an edit line, not run.
            "E_BAD_REQUEST",
        ],
        "{}",
        run.stdout
    );
    // The WRITE with rejected lines stayed open and committed the good line.
    // (Its edit lines go to the server ahead of their answers: the rejected
    // ones are still reported in script order.)
    let write = run.get(8);
    let rejected: Vec<&str> = write["data"]["rejected_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, ["7 too far", "-1 negative"]);
    assert_eq!(run.get(9)["data"]["content"], "fine.");
    // Nothing escaped the storage folder.
    assert!(!cluster.dir().join("x").exists());
    assert!(!cluster.storage("ss1").join("x").exists());
}

/// A WRITE block longer than the edit lines a console sends ahead of their
/// answers, and than one it sends as a single request (so it goes line by
/// line after the lines read ahead): it neither stalls nor loses an answer,
/// and its rejected lines, read ahead or not, come back in script order.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_write_block_commits_every_line_and_reports_rejections_in_order() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let mut script = String::from("CREATE long.txt\nWRITE long.txt 0\n");
    let mut words = 0;
    for i in 0..1500 {
        match i {
            10 => script.push_str("9999 first_bad\n"),
            1250 => script.push_str("8888 second_bad\n"),
            _ => {
                script.push_str(&format!("{words} w{i}\n"));
                words += 1;
            }
        }
    }
    script.push_str("ETIRW\nREAD long.txt\n");
    let run = cluster.console("alice", &script);
    let write = run.get(1);
    let rejected: Vec<&str> = write["data"]["rejected_lines"]
        .as_array()
        .expect("rejected lines")
        .iter()
        .map(|r| r["line"].as_str().unwrap())
        .collect();
    assert_eq!(
        rejected,
        ["9999 first_bad", "8888 second_bad"],
        "{}",
        run.stdout
    );
    let content = run.get(2)["data"]["content"].as_str().unwrap().to_owned();
    assert_eq!(content.split_whitespace().count(), 1498, "{content}");
    assert!(content.starts_with("w0 w1 "), "{content}");
    assert!(content.contains("w1499"), "{content}");
}

/// A WRITE block sent as one request (what `console --batch` sends for a
/// block it has whole) answers as its lines would one by one: each line's
/// answer in order, a refused line changing nothing; and a block that cannot
/// begin (its sentence locked, or out of range) changes nothing at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_block_in_one_request_answers_every_line_and_changes_nothing_if_it_cannot_begin() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let mut alice = cluster.client("alice").await;
    alice.create("block.txt").await.unwrap();
    let line = |word_index, content: &str| EditLine {
        word_index,
        content: content.to_owned(),
    };
    let (stats, answers) = alice
        .write_block(
            "block.txt",
            0,
            vec![line(0, "Hello"), line(9, "far"), line(1, "world.")],
        )
        .await
        .unwrap();
    assert_eq!(answers[0], Ok(1));
    assert_eq!(
        answers[1].as_ref().unwrap_err().code,
        ErrorCode::InvalidIndex
    );
    assert_eq!(answers[2], Ok(2));
    assert_eq!(stats.words, 2);

    let mut holder = cluster.client("alice").await;
    holder.write_begin("block.txt", 0).await.unwrap();
    let locked = alice
        .write_block("block.txt", 0, vec![line(0, "Never")])
        .await
        .unwrap_err();
    assert_eq!(locked.code, ErrorCode::Locked, "{locked}");
    holder.write_abort().await;
    let beyond = alice
        .write_block("block.txt", 7, vec![line(0, "Never.")])
        .await
        .unwrap_err();
    assert_eq!(beyond.code, ErrorCode::InvalidIndex, "{beyond}");
    assert_eq!(
        alice.read("block.txt").await.unwrap(),
        b"Hello world.".to_vec()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_storage_server_means_unavailable_and_status_shows_servers() {
    let mut cluster = TestCluster::start(&[]).await;
    let run = cluster.console("alice", "CREATE a.txt\nSTATUS\n");
    assert_eq!(run.code_of(0), "E_UNAVAILABLE");
    assert_eq!(run.get(1)["data"]["servers"], serde_json::json!([]));
    cluster.start_ss("ss1").await;
    cluster.start_ss("ss1_backup").await;
    let run = cluster.console("alice", "CREATE a.txt\nCREATE b.txt\nSTATUS\n");
    let status = &run.all_ok()[2]["data"];
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    for s in servers {
        for field in ["name", "role", "state", "address", "ms_since_heartbeat"] {
            assert!(!s[field].is_null(), "{field} missing in {s}");
        }
        assert_eq!(s["state"], "ALIVE");
    }
    let backup = servers.iter().find(|s| s["name"] == "ss1_backup").unwrap();
    assert_eq!(backup["role"], "BACKUP");
    assert_eq!(backup["files"], 0, "new files never go to a backup");
    let pair = &status["pairs"][0];
    for field in ["primary", "backup", "state", "epoch", "pending_jobs"] {
        assert!(pair.get(field).is_some(), "{field} missing in {pair}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_files_spread_over_the_least_loaded_primary() {
    let cluster = TestCluster::start(&["ss1", "ss2"]).await;
    let script: String = (0..6).map(|i| format!("CREATE f{i}\n")).collect();
    cluster.console("alice", &script).all_ok();
    let status = cluster.status().await;
    let files: Vec<u64> = status.servers.iter().map(|s| s.files).collect();
    assert_eq!(files, [3, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn human_output_and_exit_codes() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let run = cluster.console_with(
        "alice",
        "CREATE h.txt\nWRITE h.txt 0\n0 Hi.\nETIRW\nREAD h.txt\nVIEW -l\n",
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "File Created Successfully!");
    assert_eq!(lines[1], "Write Successful!");
    assert_eq!(lines[2], "Hi.");
    assert!(lines[3].starts_with("Filename"), "{}", run.stdout);
    assert!(lines[5].starts_with("h.txt") && lines[5].ends_with("alice"));

    let failed = cluster.console_with("alice", "READ nothing.txt\n", &[]);
    assert_eq!(failed.code, Some(1));
    assert!(failed.stdout.starts_with("ERROR E_NOT_FOUND"));

    let mut unreachable = harness::TestCluster::start(&[]).await;
    unreachable.kill_nm();
    let no_nm = unreachable.console("alice", "LIST\n");
    assert_eq!(no_nm.code, Some(2), "connection errors exit with 2");
    assert!(no_nm.stderr.contains("cannot connect"));
    // A script longer than a pipe holds: the console stops all the same,
    // leaving the rest unread.
    let long = unreachable.console("alice", &"LIST\n".repeat(50_000));
    assert_eq!(long.code, Some(2), "{}", long.stderr);
}

/// A WRITE whose header does not parse skips its whole block: its edit
/// lines are never run as commands (here, a CREATE typed as an edit line).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_write_header_never_runs_its_edit_lines_as_commands() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let run = cluster.console(
        "alice",
        "WRITE a.txt\nCREATE yy.txt\nETIRW\nWRITE a.txt x\nCREATE zz.txt\nETIRW\nVIEW -a\n",
    );
    assert_eq!(run.outcomes.len(), 3, "{}", run.stdout);
    for i in [0, 1] {
        assert_eq!(run.code_of(i), "E_BAD_REQUEST", "{}", run.get(i));
        let message = run.get(i)["message"].as_str().unwrap_or_default();
        assert!(message.contains("was skipped"), "{message}");
    }
    assert_eq!(
        run.get(2)["data"]["files"],
        serde_json::json!([]),
        "nothing was created"
    );
}

/// A line that is not UTF-8 is an error for that line only: the script
/// goes on (it used to stop with exit code 2 and skip the rest).
#[tokio::test(flavor = "multi_thread")]
async fn a_non_utf8_line_is_an_error_for_that_line_only() {
    use std::io::Write;
    let cluster = TestCluster::start(&["ss1"]).await;
    let mut child = cluster
        .console_command("alice", &["--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("console runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"CREATE a.txt\nCREATE b\xff\xfe.txt\nCREATE c.txt\nVIEW -a\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        output.status.code(),
        Some(1),
        "one command failed: {lines:?}"
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[1]["code"], "E_BAD_REQUEST", "{}", lines[1]);
    assert!(lines[1]["message"].as_str().unwrap().contains("UTF-8"));
    let files: Vec<&str> = lines[3]["data"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(files, ["a.txt", "c.txt"]);
}
