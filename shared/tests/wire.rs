//! The wire format: every message round-trips, and golden bytes pin a few so
//! that an accidental change to the encoding fails here first.

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;
use shared::connection::frame_codec;
use shared::proto::*;
use shared::ticket::TicketKey;
use shared::{ErrorCode, WireError};
use std::fmt::Debug;
use tokio_util::codec::{Decoder, Encoder};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
    let bytes = rmp_serde::to_vec_named(&value).unwrap();
    let back: T = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, value);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stats() -> FileStats {
    FileStats {
        size: 16,
        words: 4,
        chars: 16,
        version: 3,
        epoch: 2,
        base: 1,
        created_ms: 1,
        modified_ms: 2,
        accessed_ms: 3,
        accessed_by: Some("bob".into()),
    }
}

fn ticket() -> Ticket {
    TicketKey::new(b"k".to_vec()).issue("alice", "a.txt", Op::Write, 2, 99)
}

#[test]
fn every_message_round_trips() {
    round_trip(Hello::new(Role::StorageServer, "ss1"));
    round_trip(HelloReply::Welcome {
        version: 1,
        role: Role::NameManager,
        challenge: Some(vec![1, 2, 3]),
        proof: None,
    });
    round_trip(Hello {
        nonce: Some(vec![9; 32]),
        ..Hello::new(Role::StorageServer, "ss1")
    });
    round_trip(Proof { mac: vec![7; 32] });
    round_trip(HelloReply::Refused {
        error: WireError::new(ErrorCode::Protocol, "no"),
    });
    let meta = FileMeta {
        owner: "alice".into(),
        acl: [("bob".to_string(), Access::Read)].into_iter().collect(),
        stats: stats(),
        checkpoints: [(
            "v1".to_string(),
            CheckpointInfo {
                tag: "v1".into(),
                created_ms: 1,
                size: 2,
            },
        )]
        .into_iter()
        .collect(),
    };
    let request = AccessRequest {
        id: 3,
        file: "a".into(),
        user: "bob".into(),
        access: Access::Write,
        requested_ms: 4,
    };
    for body in [
        NmRequest::View {
            all: true,
            long: false,
        },
        NmRequest::Info { file: "a".into() },
        NmRequest::List,
        NmRequest::Status,
        NmRequest::Create { file: "a".into() },
        NmRequest::CreateAndLocate { file: "a".into() },
        NmRequest::Delete { file: "a".into() },
        NmRequest::Undo { file: "a".into() },
        NmRequest::Locate {
            file: "a".into(),
            op: Op::Stream,
        },
        NmRequest::Watch {
            snapshot_every_ms: Some(1000),
            recent: 200,
        },
        NmRequest::AddAccess {
            file: "a".into(),
            user: "bob".into(),
            access: Access::Write,
        },
        NmRequest::RemAccess {
            file: "a".into(),
            user: "bob".into(),
        },
        NmRequest::RequestAccess {
            file: "a".into(),
            access: Access::Read,
        },
        NmRequest::ViewRequests,
        NmRequest::Approve { id: 1 },
        NmRequest::Deny { id: 2 },
        NmRequest::CreateFolder { folder: "d".into() },
        NmRequest::Move {
            file: "a".into(),
            folder: "d".into(),
        },
        NmRequest::ViewFolder { folder: "d".into() },
        NmRequest::Checkpoint {
            file: "a".into(),
            tag: "v1".into(),
        },
        NmRequest::Revert {
            file: "a".into(),
            tag: "v1".into(),
        },
        NmRequest::ListCheckpoints { file: "a".into() },
        NmRequest::Exec { file: "a".into() },
    ] {
        round_trip(Request { id: 7, body });
    }
    for body in [
        ControlRequest::Register {
            name: "ss1".into(),
            client_addr: "127.0.0.1:1".into(),
            backup_of: Some("ss1".into()),
            store_id: 7,
            files: Some(1),
        },
        ControlRequest::Heartbeat,
        ControlRequest::FileChanged {
            file: "a".into(),
            stats: stats(),
            streamed: false,
            deleted: false,
            quiet: false,
        },
        ControlRequest::FileChanged {
            file: "a".into(),
            stats: stats(),
            streamed: true,
            deleted: false,
            quiet: true,
        },
        ControlRequest::FileChanged {
            file: "a".into(),
            stats: stats(),
            streamed: false,
            deleted: true,
            quiet: false,
        },
        ControlRequest::Streamed {
            changes: vec![shared::proto::StreamedChange {
                file: "a".into(),
                epoch: 1,
                version: 2,
                micros: 300,
            }],
            position: Some(shared::proto::StreamPosition {
                epoch: 1,
                sent: 7,
                acknowledged: 5,
                unacknowledged: 1,
                oldest_ms: 3,
                open: true,
                at_ms: 1_700_000_000_000,
            }),
        },
        ControlRequest::FileAccessed {
            file: "a".into(),
            user: "bob".into(),
            at_ms: 5,
        },
    ] {
        round_trip(Request { id: 7, body });
    }
    for result in [
        Ok(NmReply::Done),
        Ok(NmReply::Files {
            rows: vec![FileRow {
                name: "a".into(),
                owner: "alice".into(),
                words: 1,
                chars: 2,
                size: 2,
                modified_ms: 3,
                accessed_ms: 4,
                accessed_by: None,
            }],
        }),
        Ok(NmReply::Info {
            info: FileInfo {
                name: "a".into(),
                owner: "alice".into(),
                acl: meta.acl.clone(),
                stats: stats(),
                servers: vec!["ss1".into(), "ss1_backup".into()],
                backup_in_sync: Some(true),
                conflict_copies: vec!["a.conflict-ss1-e0".into()],
            },
        }),
        Ok(NmReply::Users {
            users: vec!["alice".into()],
        }),
        Ok(NmReply::Status {
            status: ClusterStatus {
                servers: vec![ServerStatus {
                    name: "ss1".into(),
                    role: ServerRole::Primary,
                    state: ServerState::Alive,
                    address: "127.0.0.1:1".into(),
                    ms_since_heartbeat: 12,
                    ms_until_timeout: 2988,
                    serving: true,
                    files: 3,
                }],
                pairs: vec![PairStatus {
                    primary: "ss1".into(),
                    backup: Some("ss1_backup".into()),
                    state: PairState::PrimaryFailed,
                    epoch: 4,
                    pending_jobs: 2,
                    operations: 9,
                    lag_ms: 5,
                    last_sync_ms: 6,
                    conflict_copies: 1,
                    standby_in_sync: false,
                    reason: Some("ss1 (serving) is down".into()),
                    stream: Some(shared::proto::StreamPosition {
                        epoch: 4,
                        sent: 10,
                        acknowledged: 8,
                        unacknowledged: 2,
                        oldest_ms: 1,
                        open: true,
                        at_ms: 7,
                    }),
                }],
                queue_depth: 2,
                replication: "SYNC".into(),
                nm: vec![shared::proto::NmStatus {
                    address: "127.0.0.2:5000".into(),
                    role: shared::proto::NmRole::Leader,
                    lease_ms_left: 1500,
                    warm: true,
                }],
                etcd: vec![shared::proto::EtcdMemberStatus {
                    name: "etcd0".into(),
                    address: "http://127.0.0.9:2379".into(),
                    healthy: true,
                }],
            },
        }),
        Ok(NmReply::Located {
            location: Location {
                server: "ss1".into(),
                address: "x:1".into(),
                ticket: ticket(),
            },
        }),
        Ok(NmReply::Registered {
            ticket_key: vec![1, 2, 3],
            epoch: 2,
            serving: false,
            writable: false,
            lease_ms: 2000,
            sync_replication: true,
            partner: Some(shared::proto::Partner {
                name: "ss1_backup".into(),
                address: "127.0.0.1:9".into(),
            }),
        }),
        Ok(NmReply::Beat { partner: None }),
        Ok(NmReply::Subscribed),
        Ok(NmReply::Event {
            event: Event {
                seq: 1,
                at_ms: 2,
                kind: EventKind::Job {
                    job: 3,
                    kind: JobKind::Update,
                    step: JobStep::Transferred,
                    file: Some("a".into()),
                    primary: "ss1".into(),
                    replica: "ss1_backup".into(),
                    version: Some(4),
                    duration_ms: 5,
                    detail: Some("10 bytes".into()),
                },
            },
        }),
        Ok(NmReply::Event {
            event: Event {
                seq: 2,
                at_ms: 3,
                kind: EventKind::Pair {
                    primary: "ss1".into(),
                    backup: None,
                    from: PairState::Syncing,
                    to: PairState::Active,
                    epoch: 1,
                    reason: "sync complete".into(),
                },
            },
        }),
        Ok(NmReply::Requests {
            requests: vec![request.clone()],
        }),
        Ok(NmReply::Folder {
            entries: vec![FolderEntry {
                name: "d/a".into(),
                is_folder: false,
            }],
        }),
        Ok(NmReply::Checkpoints {
            checkpoints: meta.checkpoints.values().cloned().collect(),
        }),
        Ok(NmReply::Exec {
            output: ExecOutput {
                stdout: "o".into(),
                stderr: "e".into(),
                status: Some(1),
            },
        }),
        Err(WireError::new(ErrorCode::Locked, "busy")),
    ] {
        round_trip(Reply { id: 9, result });
    }
    for body in [
        SsRequest::Read {
            file: "a".into(),
            ticket: ticket(),
        },
        SsRequest::Stream {
            file: "a".into(),
            ticket: ticket(),
        },
        SsRequest::WriteBegin {
            file: "a".into(),
            sentence: 2,
            ticket: ticket(),
        },
        SsRequest::WriteEdit {
            word_index: -1,
            content: "x y".into(),
        },
        SsRequest::WriteCommit,
        SsRequest::WriteAbort,
        SsRequest::WriteBlock {
            file: "a".into(),
            sentence: 0,
            ticket: ticket(),
            edits: vec![EditLine {
                word_index: 0,
                content: "x y.".into(),
            }],
        },
        SsRequest::ReadCheckpoint {
            file: "a".into(),
            tag: "v1".into(),
            ticket: ticket(),
        },
    ] {
        round_trip(Request { id: 1, body });
    }
    for body in [
        SsCommand::CreateFile {
            file: "a".into(),
            owner: "alice".into(),
        },
        SsCommand::DeleteFile { file: "a".into() },
        SsCommand::UndoFile { file: "a".into() },
        SsCommand::SetAcl {
            file: "a".into(),
            acl: meta.acl.clone(),
        },
        SsCommand::MoveFile {
            file: "a".into(),
            to: "d/a".into(),
        },
        SsCommand::CreateCheckpoint {
            file: "a".into(),
            tag: "v1".into(),
        },
        SsCommand::Revert {
            file: "a".into(),
            tag: "v1".into(),
        },
        SsCommand::ListCheckpoints { file: "a".into() },
        SsCommand::PullFiles {
            from: "x:1".into(),
            items: vec![PullItem {
                file: "a".into(),
                ticket: ticket(),
            }],
        },
        SsCommand::ApplyDelete {
            file: "a".into(),
            version: 9,
            epoch: 1,
        },
        SsCommand::SetRole {
            epoch: 3,
            serving: true,
            writable: false,
        },
        SsCommand::KeepConflict {
            file: "a".into(),
            to: "a.conflict-ss1-e1".into(),
        },
        SsCommand::SetPartner {
            partner: Some(shared::proto::Partner {
                name: "ss1".into(),
                address: "127.0.0.1:7".into(),
            }),
        },
        SsCommand::PurgeTombstone { file: "a".into() },
        SsCommand::Inventory,
        SsCommand::InventoryOf {
            files: vec!["a".into()],
        },
        SsCommand::Unconfirmed,
        SsCommand::Levelled {
            level: UnconfirmedLevel {
                standby: "ss1_backup".into(),
                store_id: 5,
                epoch: 2,
            },
            mark: 9,
        },
        SsCommand::Confirmed {
            file: "a".into(),
            epoch: 2,
            version: 7,
        },
        SsCommand::Read {
            file: "a".into(),
            ticket: ticket(),
        },
    ] {
        round_trip(Request { id: 1, body });
    }
    for body in [
        PeerRequest::GetFile {
            file: "a".into(),
            ticket: ticket(),
        },
        PeerRequest::GetFiles {
            items: vec![PullItem {
                file: "a".into(),
                ticket: ticket(),
            }],
        },
        PeerRequest::StreamOpen { epoch: 4 },
        PeerRequest::ReadCheckpoint {
            file: "a".into(),
            tag: "v1".into(),
            ticket: ticket(),
        },
    ] {
        round_trip(Request { id: 1, body });
    }
    for body in [
        StreamRequest::StreamApply {
            file: "a".into(),
            meta: FileMeta {
                owner: "alice".into(),
                acl: Default::default(),
                stats: stats(),
                checkpoints: Default::default(),
            },
            content: serde_bytes::ByteBuf::from(b"Hello.".to_vec()),
            checkpoints: vec![shared::proto::StreamedCheckpoint {
                tag: "v1".into(),
                content: serde_bytes::ByteBuf::from(b"Hi.".to_vec()),
            }],
        },
        StreamRequest::StreamDelete {
            file: "a".into(),
            version: 9,
            epoch: 2,
        },
    ] {
        round_trip(Request { id: 1, body });
    }
    for reply in [
        SsReply::Chunk {
            data: ByteBuf::from(vec![0, 255, 7]),
        },
        SsReply::Word { word: "hi".into() },
        SsReply::End,
        SsReply::WriteOpen { words: 3 },
        SsReply::Edited { words: 4 },
        SsReply::BlockWritten {
            stats: stats(),
            answers: vec![
                Ok(2),
                Err(WireError::bad_request("index 9 is out of range")),
            ],
        },
        SsReply::BlockNotBegun {
            error: WireError::unauthorized("an expired ticket"),
        },
        SsReply::Applied {
            stats: stats(),
            streamed: true,
        },
        SsReply::Checkpoints {
            checkpoints: vec![],
        },
        SsReply::FileHeader { meta: meta.clone() },
        SsReply::FileEnd {
            checksum: 7,
            size: 8,
        },
        SsReply::Files {
            files: vec![
                FileCopied {
                    file: "a".into(),
                    copy: Ok(FileCopy::Whole {
                        meta: meta.clone(),
                        content: ByteBuf::from(b"Hello.".to_vec()),
                        checksum: 7,
                    }),
                },
                FileCopied {
                    file: "b".into(),
                    copy: Ok(FileCopy::Large),
                },
                FileCopied {
                    file: "c".into(),
                    copy: Err(WireError::not_found("c")),
                },
            ],
        },
        SsReply::Pulled {
            results: vec![
                PullResult {
                    file: "a".into(),
                    result: Ok(Pulled {
                        version: 1,
                        epoch: 3,
                        bytes: 2,
                    }),
                },
                PullResult {
                    file: "b".into(),
                    result: Err(WireError::not_found("b")),
                },
            ],
        },
        SsReply::Inventory {
            files: vec![],
            tombstones: vec![],
        },
        SsReply::Unconfirmed {
            mark: 9,
            level: Some(UnconfirmedLevel {
                standby: "ss1_backup".into(),
                store_id: 5,
                epoch: 2,
            }),
            files: vec!["a".into()],
        },
        SsReply::Unconfirmed {
            mark: 0,
            level: None,
            files: vec![],
        },
        SsReply::Done,
    ] {
        round_trip(Reply {
            id: 1,
            result: Ok(reply),
        });
    }
}

#[test]
fn a_message_for_another_channel_does_not_decode() {
    fn decodes_as<B: DeserializeOwned>(body: &impl Serialize) -> bool {
        let frame = rmp_serde::to_vec_named(&Request { id: 1, body }).unwrap();
        rmp_serde::from_slice::<Request<B>>(&frame).is_ok()
    }
    let command = SsCommand::DeleteFile { file: "a".into() };
    assert!(decodes_as::<SsCommand>(&command));
    assert!(
        !decodes_as::<SsRequest>(&command),
        "a client cannot send nm's commands"
    );
    assert!(!decodes_as::<PeerRequest>(&command), "nor can a partner");
    let copy = PeerRequest::GetFile {
        file: "a".into(),
        ticket: ticket(),
    };
    assert!(
        !decodes_as::<SsRequest>(&copy),
        "a client cannot copy like a partner"
    );
    let open = PeerRequest::StreamOpen { epoch: 1 };
    assert!(!decodes_as::<SsRequest>(&open));
    assert!(!decodes_as::<SsCommand>(&open));
    let change = StreamRequest::StreamDelete {
        file: "a".into(),
        version: 1,
        epoch: 1,
    };
    assert!(
        !decodes_as::<PeerRequest>(&change),
        "a change only on an opened stream"
    );
    let register = ControlRequest::Heartbeat;
    assert!(!decodes_as::<NmRequest>(&register));
}

#[test]
fn golden_bytes() {
    // A client's handshake: {magic, version, role, name}.
    assert_eq!(
        hex(&rmp_serde::to_vec_named(&Hello::new(Role::Client, "alice")).unwrap()),
        "84a56d61676963ce444f432ba776657273696f6e09a4726f6c65a6434c49454e54a46e616d65a5616c696365"
    );
    // A request: {id, body: {Create: {file}}}.
    let create = Request {
        id: 1,
        body: NmRequest::Create {
            file: "a.txt".into(),
        },
    };
    assert_eq!(
        hex(&rmp_serde::to_vec_named(&create).unwrap()),
        "82a2696401a4626f647981a643726561746581a466696c65a5612e747874"
    );
    // An error reply: {id, result: {Err: {code, message}}}.
    let reply: Reply<NmReply> = Reply {
        id: 2,
        result: Err(WireError::new(ErrorCode::NotFound, "x")),
    };
    assert_eq!(
        hex(&rmp_serde::to_vec_named(&reply).unwrap()),
        "82a2696402a6726573756c7481a345727282a4636f6465ab455f4e4f545f464f554e44a76d657373616765a178"
    );
}

#[test]
fn frames_are_length_prefixed_and_bounded() {
    let mut codec = frame_codec(16);
    let mut buf = BytesMut::new();
    codec
        .encode(bytes::Bytes::from_static(b"hello"), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"\x00\x00\x00\x05hello");
    assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
    // Too large to send, and too large to receive.
    assert!(codec
        .encode(bytes::Bytes::from(vec![0u8; 17]), &mut BytesMut::new())
        .is_err());
    let mut oversize = BytesMut::from(&b"\x00\x00\x01\x00"[..]);
    assert!(codec.decode(&mut oversize).is_err());
}

#[test]
fn a_borrowed_chunk_is_the_same_frame_as_an_owned_one() {
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let owned = Reply {
        id: 9,
        result: Ok::<_, WireError>(SsReply::Chunk {
            data: ByteBuf::from(data.clone()),
        }),
    };
    let borrowed = Reply {
        id: 9,
        result: Ok::<_, WireError>(ChunkOut::Chunk {
            data: serde_bytes::Bytes::new(&data),
        }),
    };
    let encode = shared::connection::encode::<Reply<SsReply>>;
    let a = encode(&owned).unwrap();
    let b = shared::connection::encode(&borrowed).unwrap();
    assert_eq!(a, b);
    let decoded: Reply<SsReply> = rmp_serde::from_slice(&b).unwrap();
    assert_eq!(decoded, owned);
}

/// Raw bytes between frames: the receiver gets exactly them, including the
/// part its codec had already read ahead with the announcing frame, and the
/// frames after them decode as before.
#[tokio::test]
async fn raw_bytes_between_frames_arrive_whole_and_frames_resume_after_them() {
    use shared::connection::Connection;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let len = content.len() as u64;
    let (first_piece_sent, first_piece) = tokio::sync::oneshot::channel();
    let source = content.clone();
    let sender = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(stream, 1 << 20).unwrap();
        conn.send(&SsReply::Raw { size: len }).await.unwrap();
        let mut offset = 0usize;
        let mut signal = Some(first_piece_sent);
        // Written in pieces, as sendfile does; the receiver starts reading
        // only once the frame and the first piece are in its socket.
        conn.send_raw(len, |socket, due| {
            let piece = (due as usize).min(if offset == 0 { 1000 } else { 200_000 });
            let written = socket.try_write(&source[offset..offset + piece])?;
            offset += written;
            if let Some(signal) = signal.take() {
                let _ = signal.send(());
            }
            Ok(written)
        })
        .await
        .unwrap();
        conn.send(&SsReply::End).await.unwrap();
    });
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut conn = Connection::new(stream, 1 << 20).unwrap();
    first_piece.await.unwrap();
    let announced: SsReply = conn.expect().await.unwrap();
    assert_eq!(announced, SsReply::Raw { size: len });
    let mut received = Vec::new();
    conn.recv_raw(len, 64 * 1024, |data| {
        received.extend_from_slice(data);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(received.len(), content.len());
    assert!(received == content, "the raw bytes differ");
    let after: SsReply = conn.expect().await.unwrap();
    assert_eq!(after, SsReply::End);
    sender.await.unwrap();
}

/// A direct writer's frames arrive whole and in the order they were sent,
/// from several threads at once, including while the peer is not reading
/// (its socket full: frames queue, and `flush` sends them once it reads);
/// and frames read before the split are not lost to the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_writer_keeps_frames_whole_and_in_order_while_the_peer_lags() {
    use shared::connection::Connection;
    use std::sync::{Arc, Mutex};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let mut near = Connection::new(
        tokio::net::TcpStream::connect(address).await.unwrap(),
        1 << 20,
    )
    .unwrap();
    let mut far = Connection::new(accepting.await.unwrap(), 1 << 20).unwrap();
    // Already in `near`'s read buffer when it is split.
    far.send(&SsReply::Done).await.unwrap();
    far.send(&SsReply::End).await.unwrap();
    assert_eq!(near.expect::<SsReply>().await.unwrap(), SsReply::Done);
    let (writer, mut reader) = near.split_direct();
    assert_eq!(reader.recv::<SsReply>().await.unwrap(), Some(SsReply::End));
    let writer = Arc::new(writer);
    // Large enough that the socket fills long before `far` reads.
    let word = "w".repeat(16 * 1024);
    let sent = Arc::new(Mutex::new(0u64));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (writer, sent, word) = (writer.clone(), sent.clone(), word.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    // The number is taken and the frame sent under one lock,
                    // as the stream does: the order on the wire is the order
                    // of the numbers.
                    let mut next = sent.lock().unwrap();
                    *next += 1;
                    let reply = Reply {
                        id: *next,
                        result: Ok::<_, WireError>(SsReply::Word { word: word.clone() }),
                    };
                    writer.send_now(&reply).unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let flushing = tokio::spawn({
        let writer = writer.clone();
        async move { writer.flush().await.unwrap() }
    });
    for expected in 1..=400u64 {
        let reply: Reply<SsReply> = far.expect().await.unwrap();
        assert_eq!(reply.id, expected);
        assert_eq!(reply.result.unwrap(), SsReply::Word { word: word.clone() });
    }
    flushing.await.unwrap();
    // Once the queue is empty, a frame goes straight out again.
    writer
        .send_now(&Reply {
            id: 401,
            result: Ok::<_, WireError>(SsReply::Done),
        })
        .unwrap();
    let last: Reply<SsReply> = far.expect().await.unwrap();
    assert_eq!(last.id, 401);
}

async fn connected_pair() -> (
    shared::connection::Connection,
    shared::connection::Connection,
) {
    use shared::connection::Connection;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let near = Connection::new(
        tokio::net::TcpStream::connect(address).await.unwrap(),
        1 << 20,
    )
    .unwrap();
    let far = Connection::new(accepting.await.unwrap(), 1 << 20).unwrap();
    (near, far)
}

/// A reply deferred because the next request has arrived goes out with that
/// one's, in order; with nothing behind it, it goes out at once.
#[tokio::test]
async fn a_deferred_reply_goes_with_the_next_and_alone_when_nothing_follows() {
    use shared::connection::{Incoming, RpcClient};
    let (near, mut far) = connected_pair().await;
    let mut client = RpcClient::new(near);
    let first = client.feed(NmRequest::List).await.unwrap();
    let second = client.send(NmRequest::List).await.unwrap();
    for _ in 0..2 {
        let Some(Incoming::Message(request)) = far.recv_request::<NmRequest>().await.unwrap()
        else {
            panic!("a request arrives")
        };
        far.reply_or_defer(request.id, Ok::<_, WireError>(NmReply::Done))
            .await
            .unwrap();
    }
    for id in [first, second] {
        let answer = client.next_reply::<NmReply>(id).await.unwrap();
        assert_eq!(answer.unwrap(), NmReply::Done);
    }
    let third = client.send(NmRequest::List).await.unwrap();
    let Some(Incoming::Message(request)) = far.recv_request::<NmRequest>().await.unwrap() else {
        panic!("a request arrives")
    };
    far.reply_or_defer(request.id, Ok::<_, WireError>(NmReply::Done))
        .await
        .unwrap();
    let alone = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.next_reply::<NmReply>(third),
    )
    .await
    .expect("a reply with nothing behind it is sent at once");
    assert_eq!(alone.unwrap().unwrap(), NmReply::Done);
}
