//! Access control on every command, access requests, and persistence of both.

use harness::TestCluster;
use shared::connection::RpcClient;
use shared::proto::{Op, Role, SsReply, SsRequest};
use shared::ErrorCode;

/// alice owns f.txt with one sentence; bob and carol exist.
async fn setup() -> TestCluster {
    let cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console("alice", "CREATE f.txt\nWRITE f.txt 0\n0 Hello.\nETIRW\n")
        .all_ok();
    cluster.console("bob", "LIST\n").all_ok();
    cluster.console("carol", "LIST\n").all_ok();
    cluster
}

fn codes(cluster: &TestCluster, user: &str, script: &str) -> Vec<String> {
    cluster.console(user, script).codes()
}

const READS: &str = "READ f.txt\nSTREAM f.txt\nINFO f.txt\nLISTCHECKPOINTS f.txt\n";
const WRITES: &str = "WRITE f.txt 1\n0 More.\nETIRW\nUNDO f.txt\nCHECKPOINT f.txt c\n";

#[tokio::test(flavor = "multi_thread")]
async fn permissions_for_owner_reader_writer_and_stranger() {
    let cluster = setup().await;
    cluster
        .console(
            "alice",
            "ADDACCESS -R f.txt bob\nADDACCESS -W f.txt carol\n",
        )
        .all_ok();
    // Owner: everything.
    assert_eq!(codes(&cluster, "alice", READS), ["ok"; 4]);
    // Granted R: reads only.
    assert_eq!(codes(&cluster, "bob", READS), ["ok"; 4]);
    assert_eq!(
        codes(&cluster, "bob", WRITES),
        ["E_UNAUTHORIZED"; 3],
        "read access does not allow changes"
    );
    // Granted W: reads and writes, but owner-only commands are refused.
    assert_eq!(codes(&cluster, "carol", READS), ["ok"; 4]);
    assert_eq!(codes(&cluster, "carol", WRITES), ["ok"; 3]);
    assert_eq!(
        codes(
            &cluster,
            "carol",
            "DELETE f.txt\nADDACCESS -R f.txt bob\nREMACCESS f.txt bob\nMOVE f.txt /\n"
        ),
        ["E_UNAUTHORIZED"; 4]
    );
    // No grant: nothing.
    cluster.console("dave", "LIST\n").all_ok();
    assert_eq!(codes(&cluster, "dave", READS), ["E_UNAUTHORIZED"; 4]);
    assert_eq!(codes(&cluster, "dave", "VIEW\n"), ["ok"]);
    assert_eq!(
        cluster.console("dave", "VIEW\n").get(0)["data"]["files"],
        serde_json::json!([])
    );
    // INFO shows the list.
    let info = cluster.console("alice", "INFO f.txt\n");
    assert_eq!(
        info.get(0)["data"]["acl"],
        serde_json::json!({"bob": "R", "carol": "W"})
    );
    let human = cluster.console_with("alice", "INFO f.txt\n", &[]);
    assert!(
        human.stdout.contains("alice (RW), bob (R), carol (RW)"),
        "{}",
        human.stdout
    );
    // After REMACCESS, nothing again; VIEW follows.
    cluster.console("alice", "REMACCESS f.txt bob\n").all_ok();
    assert_eq!(codes(&cluster, "bob", READS), ["E_UNAUTHORIZED"; 4]);
    assert_eq!(
        cluster.console("bob", "VIEW\n").get(0)["data"]["files"],
        serde_json::json!([])
    );
    assert_eq!(
        cluster.console("carol", "VIEW\n").get(0)["data"]["files"][0]["name"],
        "f.txt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_command_errors() {
    let cluster = setup().await;
    assert_eq!(
        codes(
            &cluster,
            "alice",
            "ADDACCESS -R f.txt nobody\nADDACCESS -R missing.txt bob\nREMACCESS f.txt alice\nREMACCESS f.txt bob\nADDACCESS -W f.txt alice\nADDACCESS -Z f.txt bob\n"
        ),
        [
            "E_NO_SUCH_USER",
            "E_NOT_FOUND",
            "E_BAD_REQUEST",
            "E_NOT_FOUND",
            "E_BAD_REQUEST",
            "E_BAD_REQUEST"
        ]
    );
    // ADDACCESS -R after -W lowers the grant to read.
    cluster
        .console("alice", "ADDACCESS -W f.txt bob\nADDACCESS -R f.txt bob\n")
        .all_ok();
    assert_eq!(
        codes(&cluster, "bob", "READ f.txt\nUNDO f.txt\n"),
        ["ok", "E_UNAUTHORIZED"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_requests_are_seen_and_decided_by_the_owner() {
    let cluster = setup().await;
    let request = cluster.console("bob", "REQUESTACCESS f.txt -W\nREQUESTACCESS f.txt -R\n");
    let id = request.get(0)["data"]["id"].as_u64().unwrap();
    assert_eq!(
        request.code_of(1),
        "E_EXISTS",
        "a request for less is already covered"
    );
    let carol = cluster.console("carol", "REQUESTACCESS f.txt -R\n");
    let carol_id = carol.get(0)["data"]["id"].as_u64().unwrap();
    assert_ne!(id, carol_id);
    let pending = cluster.console("alice", "VIEWREQUESTS\n");
    let requests = pending.get(0)["data"]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["user"], "bob");
    assert_eq!(requests[0]["access"], "W");
    // Only the owner sees and decides.
    assert_eq!(
        cluster.console("bob", "VIEWREQUESTS\n").get(0)["data"]["requests"],
        serde_json::json!([])
    );
    assert_eq!(
        codes(&cluster, "bob", &format!("APPROVE {id}\nDENY {carol_id}\n")),
        ["E_UNAUTHORIZED"; 2]
    );
    assert_eq!(
        codes(
            &cluster,
            "alice",
            &format!("APPROVE {id}\nDENY {carol_id}\nAPPROVE {id}\nREQUESTACCESS f.txt -R\n")
        ),
        ["ok", "ok", "E_NOT_FOUND", "E_EXISTS"]
    );
    assert_eq!(
        codes(&cluster, "bob", "WRITE f.txt 1\n0 Bob.\nETIRW\n"),
        ["ok"]
    );
    assert_eq!(codes(&cluster, "carol", "READ f.txt\n"), ["E_UNAUTHORIZED"]);
    assert_eq!(
        codes(
            &cluster,
            "bob",
            "REQUESTACCESS f.txt -W\nREQUESTACCESS nope.txt -R\n"
        ),
        ["E_EXISTS", "E_NOT_FOUND"]
    );
    // Deleting the file removes its pending requests.
    cluster
        .console("carol", "REQUESTACCESS f.txt -R\n")
        .all_ok();
    cluster.console("alice", "DELETE f.txt\n").all_ok();
    assert_eq!(
        cluster.console("alice", "VIEWREQUESTS\n").get(0)["data"]["requests"],
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_and_requests_survive_restarts_of_nm_and_ss() {
    let mut cluster = setup().await;
    cluster
        .console("alice", "ADDACCESS -R f.txt bob\n")
        .all_ok();
    let id = cluster.console("carol", "REQUESTACCESS f.txt -W\n").get(0)["data"]["id"]
        .as_u64()
        .unwrap();
    cluster.kill_nm();
    cluster.kill_ss("ss1");
    cluster.start_nm().await;
    cluster.start_ss("ss1").await;
    assert_eq!(
        codes(&cluster, "bob", "READ f.txt\nUNDO f.txt\n"),
        ["ok", "E_UNAUTHORIZED"]
    );
    let pending = cluster.console("alice", "VIEWREQUESTS\n");
    assert_eq!(pending.get(0)["data"]["requests"][0]["id"], id);
    cluster
        .console("alice", &format!("APPROVE {id}\n"))
        .all_ok();
    let next = cluster.console("dave", "REQUESTACCESS f.txt -R\n").get(0)["data"]["id"]
        .as_u64()
        .unwrap();
    assert!(next > id, "request ids are never reused");
    // The storage server keeps the access list with the file.
    let meta = harness::stored_meta(&cluster.storage("ss1"), "f.txt");
    assert_eq!(meta.acl.len(), 2);
    assert_eq!(
        codes(&cluster, "carol", "WRITE f.txt 1\n0 Carol.\nETIRW\n"),
        ["ok"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_direct_write_without_permission_gets_nothing() {
    let cluster = setup().await;
    cluster
        .console("alice", "ADDACCESS -R f.txt bob\n")
        .all_ok();
    // bob may read, so nm gives him a read ticket; he tries to WRITE with it.
    let mut bob = cluster.client("bob").await;
    let location = bob.locate("f.txt", Op::Read).await.unwrap();
    assert_eq!(
        bob.locate("f.txt", Op::Write).await.unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let mut direct = RpcClient::connect(&location.address, Role::Client, "bob")
        .await
        .unwrap();
    let reply = direct
        .call::<_, SsReply>(SsRequest::WriteBegin {
            file: "f.txt".into(),
            sentence: 0,
            ticket: location.ticket.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unauthorized);
    // A ticket for f.txt does not open another file.
    cluster.console("alice", "CREATE g.txt\n").all_ok();
    let reply = direct
        .call::<_, SsReply>(SsRequest::Read {
            file: "g.txt".into(),
            ticket: location.ticket,
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unauthorized);
}
