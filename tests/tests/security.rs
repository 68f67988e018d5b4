//! The cluster key: no process without it can pose as a storage server or as
//! nm, and daemons refuse to listen beyond loopback without one.

use shared::auth::ClusterKey;
use shared::connection::{
    Connection, ConnectionError, RpcClient, DEFAULT_MAX_FRAME, HANDSHAKE_TIMEOUT,
};
use shared::proto::{NmReply, NmRequest, Role, SsReply, SsRequest};
use shared::ErrorCode;
use std::process::{Command, Stdio};
use tests::{bin, TestCluster};
use tokio::net::TcpListener;

fn refused(result: Result<RpcClient, ConnectionError>) -> String {
    match result {
        Err(ConnectionError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
            e.message
        }
        Err(other) => panic!("failed without a refusal: {other}"),
        Ok(_) => panic!("a process without the cluster key was let in"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_key_nobody_registers_as_a_server_or_poses_as_nm() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = ClusterKey::generate(&dir.path().join("wrong.key")).unwrap();
    // Registering as ss1 (and so forging WRITE_COMPLETE notices).
    let message = refused(RpcClient::connect(cluster.nm_addr(), Role::StorageServer, "ss1").await);
    assert!(message.contains("cluster key"), "{message}");
    refused(
        RpcClient::connect_keyed(cluster.nm_addr(), Role::StorageServer, "ss1", Some(&wrong)).await,
    );
    // Posing as nm to a storage server (and so pushing content into it).
    let ss = cluster.ss_addr("ss1").await;
    refused(RpcClient::connect(&ss, Role::NameManager, "nm").await);
    refused(RpcClient::connect_keyed(&ss, Role::NameManager, "nm", Some(&wrong)).await);
    // Posing as the primary's partner to copy files off it.
    refused(RpcClient::connect(&ss, Role::StorageServer, "ss1_backup").await);
    // With the key, nm's side of the handshake works.
    let key = ClusterKey::load(&cluster.key_file()).unwrap();
    let mut as_nm = RpcClient::connect_keyed(&ss, Role::NameManager, "nm", Some(&key))
        .await
        .unwrap();
    let reply = as_nm
        .call::<_, SsReply>(SsRequest::Inventory)
        .await
        .unwrap();
    assert!(reply.is_ok());
    // Clients are not challenged: usernames are claims (see README, Security).
    let mut client = RpcClient::connect(cluster.nm_addr(), Role::Client, "anyone")
        .await
        .unwrap();
    assert!(client
        .call::<_, NmReply>(NmRequest::List)
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_refuses_a_peer_that_cannot_prove_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate(&dir.path().join("cluster.key")).unwrap();
    // A fake nm without the key.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = Connection::accept(
            stream,
            Role::NameManager,
            DEFAULT_MAX_FRAME,
            HANDSHAKE_TIMEOUT,
            None,
        )
        .await;
    });
    let result = Connection::connect_keyed(
        addr,
        Role::StorageServer,
        "ss1",
        DEFAULT_MAX_FRAME,
        Some(&key),
    )
    .await;
    match result {
        Err(ConnectionError::Refused(e)) => assert!(e.message.contains("could not prove"), "{e}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a storage server trusted a fake nm"),
    }
}

#[test]
fn daemons_refuse_a_non_loopback_address_without_a_key_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("nm"))
        .args(["--listen", "0.0.0.0:0", "--log-format", "pretty"])
        .arg("--data-dir")
        .arg(dir.path().join("nm"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without a cluster key"), "{stderr}");
    let out = Command::new(bin("ss"))
        .args([
            "--bind",
            "0.0.0.0",
            "--username",
            "ss1",
            "--nm",
            "127.0.0.1:1",
        ])
        .arg("--storage")
        .arg(dir.path().join("s1"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a cluster key"));
    // --insecure lets it start (it is then stopped).
    let mut nm = Command::new(bin("nm"))
        .args(["--listen", "0.0.0.0:0", "--insecure", "--quiet"])
        .arg("--data-dir")
        .arg(dir.path().join("nm2"))
        .arg("--ready-file")
        .arg(dir.path().join("ready"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(nm.try_wait().unwrap().is_none(), "nm --insecure exited");
        assert!(started.elapsed() < tests::DEADLINE);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nm.kill().unwrap();
    nm.wait().unwrap();
}
