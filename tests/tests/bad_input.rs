//! Hostile and broken input on every port: each gets a clear error or a
//! closed connection, nothing changes on disk, and the daemons keep serving.

use harness::{eventually, Options, TestCluster};
use rand::RngCore;
use shared::connection::{Connection, RpcClient, DEFAULT_MAX_FRAME};
use shared::proto::{
    Hello, HelloReply, Op, Reply, Request, Role, SsCommand, SsReply, SsRequest, Ticket,
    PROTOCOL_VERSION,
};
use shared::ErrorCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; fails the test if it never does.
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the daemon kept a garbage connection open");
}

async fn still_serving(cluster: &TestCluster) {
    let run = cluster.console(
        "alice",
        "CREATE probe.txt\nWRITE probe.txt 0\n0 Alive.\nETIRW\nREAD probe.txt\nDELETE probe.txt\n",
    );
    run.all_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bytes_on_every_port_leave_the_daemons_serving() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let ports = [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await];
    for addr in &ports {
        for size in [20usize, 1024, 1 << 20] {
            let mut garbage = vec![0u8; size];
            rand::thread_rng().fill_bytes(&mut garbage);
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // The peer may close while we are still writing: that is fine.
            let _ = stream.write_all(&garbage).await;
            closed_by_peer(&mut stream).await;
        }
        // A truncated frame: a length promising more than ever comes.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&[0, 0, 0, 200, 1, 2, 3]).await;
        drop(stream);
        // A valid handshake, then a frame cut off in the middle.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let hello = shared::connection::encode(&Hello::new(Role::Client, "cut")).unwrap();
        let mut framed = (hello.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&hello);
        framed.extend_from_slice(&[0, 0, 1, 0, 9, 9]);
        let _ = stream.write_all(&framed).await;
        drop(stream);
        // A line of text, as the earlier C system's clients sent.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"CREATE ../../../x\n").await;
        closed_by_peer(&mut stream).await;
    }
    still_serving(&cluster).await;
    assert!(!cluster.dir().join("x").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_magic_or_version_is_refused_with_a_clear_error() {
    let cluster = TestCluster::start(&["ss1"]).await;
    for addr in [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await] {
        for hello in [
            Hello {
                version: PROTOCOL_VERSION + 1,
                ..Hello::new(Role::Client, "alice")
            },
            Hello {
                magic: 0xdead_beef,
                ..Hello::new(Role::Client, "alice")
            },
        ] {
            let stream = TcpStream::connect(&addr).await.unwrap();
            let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
            conn.send(&hello).await.unwrap();
            match conn.expect::<HelloReply>().await.unwrap() {
                HelloReply::Refused { error } => {
                    assert_eq!(error.code, ErrorCode::Protocol);
                    assert!(
                        error.message.contains("version") || error.message.contains("magic"),
                        "{}",
                        error.message
                    );
                }
                other => panic!("accepted a bad handshake: {other:?}"),
            }
            assert!(conn
                .recv::<HelloReply>()
                .await
                .map(|r| r.is_none())
                .unwrap_or(true));
        }
    }
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unknown_messages_get_an_error_and_the_connection_goes_on() {
    let cluster = TestCluster::start(&["ss1"]).await;
    let stream = TcpStream::connect(cluster.nm_addr()).await.unwrap();
    let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
    conn.send(&Hello::new(Role::Client, "alice")).await.unwrap();
    assert!(matches!(
        conn.expect::<HelloReply>().await.unwrap(),
        HelloReply::Welcome { .. }
    ));
    // An unknown request type, with a readable id.
    #[derive(serde::Serialize)]
    enum Unknown {
        Frobnicate { level: u32 },
    }
    conn.send(&Request {
        id: 42,
        body: Unknown::Frobnicate { level: 9 },
    })
    .await
    .unwrap();
    let reply: Reply<serde::de::IgnoredAny> = conn.expect().await.unwrap();
    assert_eq!(reply.id, 42);
    assert_eq!(reply.result.unwrap_err().code, ErrorCode::BadRequest);
    // A frame that is not MessagePack at all.
    conn.send(&"just a string").await.unwrap();
    let reply: Reply<serde::de::IgnoredAny> = conn.expect().await.unwrap();
    assert_eq!(reply.result.unwrap_err().code, ErrorCode::BadRequest);
    // A storage server's control message on a client's connection: another
    // channel's request does not even decode here.
    conn.send(&Request {
        id: 43,
        body: shared::proto::ControlRequest::Register {
            name: "alice".into(),
            client_addr: "127.0.0.1:1".into(),
            backup_of: None,
            store_id: 1,
            files: Some(0),
        },
    })
    .await
    .unwrap();
    let reply: Reply<serde::de::IgnoredAny> = conn.expect().await.unwrap();
    assert_eq!(reply.id, 43);
    assert_eq!(reply.result.unwrap_err().code, ErrorCode::BadRequest);
    // The same connection still works.
    let mut client = RpcClient::new(conn);
    let reply = client
        .call::<_, shared::proto::NmReply>(shared::proto::NmRequest::List)
        .await
        .unwrap();
    assert!(reply.is_ok());
}

/// Decoding is strict: a request must be a map with named fields and enums
/// by name, with no field the protocol does not define. Each alternate form
/// (rmp-serde alone accepts them all) is E_BAD_REQUEST, changes nothing, and
/// the connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn alternate_encodings_of_a_request_are_refused_on_every_port() {
    use serde_json::json;
    /// A request's outer map in the protocol's field order, any body.
    #[derive(serde::Serialize)]
    struct Raw {
        id: u64,
        body: serde_json::Value,
    }
    let cluster = TestCluster::start(&["ss1"]).await;
    let ss = cluster.ss_addr("ss1").await;
    for (addr, on_nm) in [(cluster.nm_addr().to_owned(), true), (ss, false)] {
        let stream = TcpStream::connect(&addr).await.unwrap();
        let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
        conn.send(&Hello::new(Role::Client, "alice")).await.unwrap();
        assert!(matches!(
            conn.expect::<HelloReply>().await.unwrap(),
            HelloReply::Welcome { .. }
        ));
        let raw = |id, body| serde_json::to_value(Raw { id, body }).unwrap();
        for (expected_id, id, alternate) in [
            // A variant by its index (on ss, 5 was WriteAbort, answered Done).
            (11, 11, json!(5)),
            // A struct variant's fields as an array.
            (13, 13, json!({"Create": ["alt.txt"]})),
            // A field the protocol does not define.
            (14, 14, json!({"Create": {"file": "alt.txt", "x": 1}})),
            // A unit variant as a map with a nil value.
            (15, 15, json!({"List": null})),
        ]
        .map(|(e, id, body)| (e, id, Some(body)))
        .into_iter()
        // The request itself as an array (its id is not read from it either).
        .chain([(0, 12, None)])
        {
            match &alternate {
                Some(body) => conn
                    .send(&Raw {
                        id,
                        body: body.clone(),
                    })
                    .await
                    .unwrap(),
                None => conn.send(&json!([id, "List"])).await.unwrap(),
            }
            let what = alternate.map_or_else(|| raw(id, json!("[array]")), |b| raw(id, b));
            let reply: Reply<serde::de::IgnoredAny> = conn.expect().await.unwrap();
            assert_eq!(reply.id, expected_id, "{addr}: {what}");
            let error = reply.result.expect_err(&format!("{addr} took {what}"));
            assert_eq!(error.code, ErrorCode::BadRequest, "{addr}: {what}");
        }
        // The protocol's own encoding is taken on the same connection.
        if on_nm {
            conn.send(&Request {
                id: 20,
                body: shared::proto::NmRequest::List,
            })
            .await
            .unwrap();
        } else {
            conn.send(&Request {
                id: 20,
                body: SsRequest::WriteAbort,
            })
            .await
            .unwrap();
        }
        let reply: Reply<serde::de::IgnoredAny> = conn.expect().await.unwrap();
        assert_eq!(reply.id, 20);
        assert!(reply.result.is_ok(), "{addr}: a valid request was refused");
    }
    let files = cluster.console("alice", "VIEW -a\n");
    assert!(
        !format!("{:?}", files.all_ok()).contains("alt.txt"),
        "a refused CREATE created its file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_frame_closes_only_that_connection() {
    let cluster = TestCluster::start(&["ss1"]).await;
    for addr in [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await] {
        let stream = TcpStream::connect(&addr).await.unwrap();
        let mut conn = Connection::new(stream, 64 << 20).unwrap();
        conn.send(&Hello::new(Role::Client, "alice")).await.unwrap();
        conn.expect::<HelloReply>().await.unwrap();
        let huge = "x".repeat(DEFAULT_MAX_FRAME + 1);
        let _ = conn
            .send(&Request {
                id: 1,
                body: shared::proto::NmRequest::Info { file: huge },
            })
            .await;
        // Either an E_TOO_LARGE answer, or (when the reset beats it) a closed connection.
        if let Ok(Some(reply)) = conn.recv::<Reply<serde::de::IgnoredAny>>().await {
            assert_eq!(reply.result.unwrap_err().code, ErrorCode::TooLarge);
        }
        assert!(conn
            .recv::<Reply<serde::de::IgnoredAny>>()
            .await
            .map(|r| r.is_none())
            .unwrap_or(true));
    }
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_skips_nm_gets_nothing_from_a_storage_server() {
    let cluster = TestCluster::start(&["ss1"]).await;
    cluster
        .console(
            "alice",
            "CREATE private.txt\nWRITE private.txt 0\n0 Secret.\nETIRW\n",
        )
        .all_ok();
    let ss = cluster.ss_addr("ss1").await;
    let mut mallory = RpcClient::connect(&ss, Role::Client, "mallory")
        .await
        .unwrap();
    let forged = Ticket {
        user: "mallory".into(),
        file: "private.txt".into(),
        op: Op::Read,
        epoch: 0,
        expires_ms: u64::MAX,
        mac: vec![0; 32],
    };
    let reply = mallory
        .call::<_, SsReply>(SsRequest::Read {
            file: "private.txt".into(),
            ticket: forged.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unauthorized);
    // A real ticket of alice's, replayed by mallory under her own name.
    let mut alice = cluster.client("alice").await;
    let location = alice.locate("private.txt", Op::Read).await.unwrap();
    let reply = mallory
        .call::<_, SsReply>(SsRequest::Read {
            file: "private.txt".into(),
            ticket: location.ticket.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unauthorized);
    // A read ticket does not open a WRITE.
    let mut as_alice = RpcClient::connect(&ss, Role::Client, "alice")
        .await
        .unwrap();
    let reply = as_alice
        .call::<_, SsReply>(SsRequest::WriteBegin {
            file: "private.txt".into(),
            sentence: 0,
            ticket: location.ticket,
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unauthorized);
    // nm's commands are not even a client's requests: they do not decode.
    let reply = mallory
        .call::<_, SsReply>(SsCommand::DeleteFile {
            file: "private.txt".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(
        std::fs::read_to_string(cluster.storage("ss1").join("files/private.txt")).unwrap(),
        "Secret."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_do_not_stop_other_clients() {
    daemon::connections::raise_fd_limit();
    let options = Options {
        nm_args: vec!["--handshake-timeout", "1s"],
        ss_args: vec!["--handshake-timeout", "1s"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    let mut idle = Vec::new();
    for addr in [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await] {
        for _ in 0..1500 {
            idle.push(TcpStream::connect(&addr).await.unwrap());
        }
    }
    still_serving(&cluster).await;
    // Each idle connection is closed once its handshake time is up.
    for stream in idle.iter_mut().step_by(100) {
        closed_by_peer(stream).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_are_turned_away_with_a_clear_error() {
    let options = Options {
        nm_args: vec!["--max-connections", "4"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    // Hold connections until one is turned away (ss1's control connection
    // and the harness's own take some of the four slots).
    let mut held = Vec::new();
    let refusal = loop {
        match RpcClient::connect(cluster.nm_addr(), Role::Client, "hog").await {
            Ok(conn) => held.push(conn),
            Err(e) => break e,
        }
        assert!(
            held.len() <= 4,
            "more connections than the limit were accepted"
        );
    };
    match refusal {
        shared::connection::ConnectionError::Refused(e) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("too many connections"), "{}", e.message);
        }
        other => panic!("refused without a reason: {other}"),
    }
    drop(held);
    eventually("a freed slot to be usable", async || {
        RpcClient::connect(cluster.nm_addr(), Role::Client, "late")
            .await
            .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed() {
    let options = Options {
        nm_args: vec!["--idle-timeout", "300ms"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    let stream = TcpStream::connect(cluster.nm_addr()).await.unwrap();
    let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
    conn.send(&Hello::new(Role::Client, "sleepy"))
        .await
        .unwrap();
    conn.expect::<HelloReply>().await.unwrap();
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        conn.recv::<Reply<serde::de::IgnoredAny>>(),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
        "the idle connection was closed"
    );
    // Everyone else is still served.
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_write_is_refused_and_changes_nothing() {
    let options = Options {
        ss_args: vec!["--max-file-size", "1000"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    let big = "word ".repeat(400);
    let run = cluster.console(
        "alice",
        &format!("CREATE big.txt\nWRITE big.txt 0\n0 Small.\n1 {big}\nETIRW\nREAD big.txt\n"),
    );
    assert_eq!(run.code_of(1), "E_TOO_LARGE", "{}", run.stdout);
    assert_eq!(
        run.get(2)["data"]["content"],
        "Small.",
        "the edits that fit were kept, the big one refused"
    );
    let path = cluster.storage("ss1").join("files/big.txt");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "Small.");
}

/// Handshakes as a client and returns the bare socket, ready for raw bytes.
async fn handshaken(addr: &str, name: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
    conn.send(&Hello::new(Role::Client, name)).await.unwrap();
    assert!(matches!(
        conn.expect::<HelloReply>().await.unwrap(),
        HelloReply::Welcome { .. }
    ));
    conn.into_stream()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_trickled_byte_by_byte_is_cut_off_on_every_daemon() {
    let options = Options {
        nm_args: vec!["--frame-timeout", "300ms"],
        ss_args: vec!["--frame-timeout", "300ms"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    for addr in [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await] {
        let mut stream = handshaken(&addr, "trickler").await;
        let started = std::time::Instant::now();
        // A frame of 64 bytes, announced and then sent one byte every 100 ms.
        stream.write_all(&[0, 0, 0, 64]).await.unwrap();
        let mut cut = false;
        for _ in 0..64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 64];
            let closed = matches!(
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            if closed || stream.write_all(b"x").await.is_err() {
                cut = true;
                break;
            }
        }
        let took = started.elapsed();
        assert!(cut, "{addr}: a trickled frame was waited for {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "{addr}: cut off only after {took:?} with --frame-timeout 300ms"
        );
    }
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_hold_a_slot_and_send_nothing_make_room_for_a_new_client() {
    let options = Options {
        nm_args: vec!["--max-connections", "8"],
        ss_args: vec!["--max-connections", "8"],
        ..Options::default()
    };
    let cluster = TestCluster::start_with(&["ss1"], options).await;
    // Take every slot with connections that complete their handshake and
    // then send nothing (some trickle half a frame header).
    let mut hogs = Vec::new();
    for addr in [cluster.nm_addr().to_owned(), cluster.ss_addr("ss1").await] {
        for i in 0..8 {
            let Ok(stream) = TcpStream::connect(&addr).await else {
                break;
            };
            let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME).unwrap();
            conn.send(&Hello::new(Role::Client, format!("hog{i}")))
                .await
                .unwrap();
            match conn.expect::<HelloReply>().await {
                Ok(HelloReply::Welcome { .. }) => {}
                _ => break,
            }
            let mut stream = conn.into_stream();
            if i % 2 == 1 {
                stream.write_all(&[0, 0]).await.unwrap();
            }
            hogs.push(stream);
        }
    }
    let refused = RpcClient::connect(cluster.nm_addr(), Role::Client, "late").await;
    assert!(
        refused.is_err(),
        "nm had a free slot: the hogs did not fill it"
    );
    // Once the hogs have waited long enough, a new client is served: on nm
    // (the console's commands) and on the storage server (its READ).
    eventually("a new client to be served despite the hogs", async || {
        let run = cluster.console(
            "alice",
            "CREATE room.txt\nWRITE room.txt 0\n0 Served.\nETIRW\nREAD room.txt\n",
        );
        run.codes().iter().all(|c| c == "ok").then_some(())
    })
    .await;
    // The pair's own connections were never the ones closed.
    cluster.wait_alive("ss1").await;
    drop(hogs);
}
