//! The cluster key: no process without it can pose as a storage server or as
//! nm; without `--cluster-key-file` the daemons use this user's key, and only
//! `--insecure` runs without one.

use harness::{bin, TestCluster};
use shared::auth::ClusterKey;
use shared::connection::{
    Connection, ConnectionError, RpcClient, DEFAULT_MAX_FRAME, HANDSHAKE_TIMEOUT,
};
use shared::proto::{NmReply, NmRequest, Role, SsCommand, SsReply};
use shared::ErrorCode;
use std::process::{Command, Stdio};
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
        .call::<_, SsReply>(SsCommand::Inventory)
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

/// Secure by default: with no `--cluster-key-file`, nm and ss share this
/// user's key (created with mode 0600 on first use), and a process without
/// it can neither register as a server nor pose as nm.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_key_file_the_users_key_is_used_and_a_keyless_impostor_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let options = harness::Options {
        per_user_key: true,
        ..harness::Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    let key_file = cluster.key_file();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_file), 0o600, "{}", key_file.display());
    assert_eq!(mode(key_file.parent().unwrap()), 0o700);
    // A keyless impostor storage server, and a keyless impostor nm.
    refused(RpcClient::connect(cluster.nm_addr(), Role::StorageServer, "ss2").await);
    let ss = cluster.ss_addr("ss1").await;
    refused(RpcClient::connect(&ss, Role::NameManager, "nm").await);
    let dir = tempfile::tempdir().unwrap();
    let wrong = ClusterKey::generate(&dir.path().join("wrong.key")).unwrap();
    refused(RpcClient::connect_keyed(&ss, Role::NameManager, "nm", Some(&wrong)).await);
    // The user's key is the cluster's.
    let key = ClusterKey::load(&key_file).unwrap();
    let mut as_nm = RpcClient::connect_keyed(&ss, Role::NameManager, "nm", Some(&key))
        .await
        .unwrap();
    assert!(as_nm
        .call::<_, SsReply>(SsCommand::Inventory)
        .await
        .unwrap()
        .is_ok());
    cluster.console("alice", "CREATE a.txt\n").all_ok();
}

fn nm_output(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("nm"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "pretty"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("nm"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_users_key_that_others_may_read_is_refused_and_insecure_excludes_a_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("config/docspp");
    std::fs::create_dir_all(&key_dir).unwrap();
    std::fs::write(
        key_dir.join("cluster.key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::fs::set_permissions(
        key_dir.join("cluster.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = nm_output(dir.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    // A key that is a symlink, and a folder others may write, are refused.
    std::fs::remove_file(key_dir.join("cluster.key")).unwrap();
    std::fs::write(
        dir.path().join("elsewhere.key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("elsewhere.key"),
        key_dir.join("cluster.key"),
    )
    .unwrap();
    let out = nm_output(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    std::fs::remove_file(key_dir.join("cluster.key")).unwrap();
    std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = nm_output(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 700"));
    let out = nm_output(dir.path(), &["--insecure", "--cluster-key-file", "k"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn insecure_runs_without_a_key_even_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut nm = Command::new(bin("nm"))
        .args(["--listen", "0.0.0.0:0", "--insecure", "--quiet"])
        .arg("--data-dir")
        .arg(dir.path().join("nm2"))
        .arg("--ready-file")
        .arg(dir.path().join("ready"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(nm.try_wait().unwrap().is_none(), "nm --insecure exited");
        assert!(started.elapsed() < harness::DEADLINE);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nm.kill().unwrap();
    nm.wait().unwrap();
    assert!(
        !dir.path().join("config/docspp/cluster.key").exists(),
        "--insecure made a key"
    );
}
