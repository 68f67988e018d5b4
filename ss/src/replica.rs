//! Replication between the two servers of a pair.
//!
//! The backup pulls: nm sends it `PullFiles` naming the primary and a read
//! ticket per file; the backup asks the primary for each file (`GetFile`:
//! metadata, content in chunks, a CRC-32) and for the checkpoints it lacks,
//! writes each into a temp file, verifies the checksum, and installs
//! checkpoints, content and metadata atomically. The bytes cross the network
//! once, primary to backup, chunk by chunk, never whole in memory; an
//! interrupted transfer leaves the old file intact and its temp file is
//! removed. nm owns the job and reports its events.

use crate::files::Files;
use crate::store::TempFile;
use shared::connection::{Connection, ConnectionError, RpcClient, CHUNK_SIZE};
use shared::proto::{PullItem, PullResult, Pulled, Role, SsReply, SsRequest, Ticket};
use shared::{ErrorCode, WireError};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Serves `GetFile`: header, chunks, end with checksum.
pub async fn send_file(
    files: &Files,
    conn: &mut Connection,
    id: u64,
    file: &str,
    chunk_delay: Option<std::time::Duration>,
) -> Result<Result<(), WireError>, ConnectionError> {
    let (meta, handle) = match tokio::task::block_in_place(|| files.snapshot(file)) {
        Ok(snapshot) => snapshot,
        Err(e) => return Ok(Err(e)),
    };
    conn.reply(id, Ok(SsReply::FileHeader { meta })).await?;
    let (checksum, size) = match send_chunks(conn, id, file, handle, chunk_delay).await? {
        Ok(sent) => sent,
        Err(e) => return Ok(Err(e)),
    };
    conn.reply(id, Ok(SsReply::FileEnd { checksum, size }))
        .await?;
    Ok(Ok(()))
}

/// Sends an open content as `Chunk` replies; returns its CRC-32 and size.
pub async fn send_chunks(
    conn: &mut Connection,
    id: u64,
    file: &str,
    handle: std::fs::File,
    chunk_delay: Option<std::time::Duration>,
) -> Result<Result<(u32, u64), WireError>, ConnectionError> {
    let mut handle = tokio::fs::File::from_std(handle);
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = match handle.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(WireError::internal(format!("reading {file:?}: {e}")))),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        let data = serde_bytes::ByteBuf::from(buf[..n].to_vec());
        conn.feed(&shared::proto::Reply {
            id,
            result: Ok::<_, WireError>(SsReply::Chunk { data }),
        })
        .await?;
        if let Some(delay) = chunk_delay {
            conn.flush().await?;
            tokio::time::sleep(delay).await;
        }
    }
    conn.flush().await?;
    Ok(Ok((hasher.finalize(), size)))
}

/// Why one pull failed: the item alone, or the connection (and every item after it).
enum PullError {
    Item(WireError),
    Connection(ConnectionError),
}

impl From<WireError> for PullError {
    fn from(e: WireError) -> Self {
        PullError::Item(e)
    }
}

impl From<ConnectionError> for PullError {
    fn from(e: ConnectionError) -> Self {
        PullError::Connection(e)
    }
}

impl From<std::io::Error> for PullError {
    fn from(e: std::io::Error) -> Self {
        PullError::Item(WireError::internal(format!("writing a transfer: {e}")))
    }
}

/// Copies `items` from the primary at `from`, over one connection.
pub async fn pull_files(
    files: &Arc<Files>,
    me: &str,
    from: &str,
    key: Option<&shared::auth::ClusterKey>,
    items: Vec<PullItem>,
) -> Vec<PullResult> {
    let mut results = Vec::with_capacity(items.len());
    let mut client = match RpcClient::connect_keyed(from, Role::StorageServer, me, key).await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(event = "ss_pull_connect_failed", from, error = %e);
            None
        }
    };
    for item in items {
        let result = match client.as_mut() {
            None => Err(WireError::unavailable(format!(
                "the primary at {from} is unreachable"
            ))),
            Some(c) => match pull_one(c, files, &item.file, &item.ticket).await {
                Ok(pulled) => Ok(pulled),
                Err(PullError::Item(e)) => Err(e),
                Err(PullError::Connection(e)) => {
                    client = None;
                    Err(WireError::unavailable(format!(
                        "the transfer from {from} broke: {e}"
                    )))
                }
            },
        };
        results.push(PullResult {
            file: item.file,
            result,
        });
    }
    results
}

async fn next(client: &mut RpcClient, id: u64) -> Result<SsReply, PullError> {
    Ok(client.next_reply::<SsReply>(id).await??)
}

/// Streams replies to `id` into a temp file until the end; returns the bytes and checksum seen.
async fn receive_into(
    client: &mut RpcClient,
    id: u64,
    temp: &mut TempFile,
) -> Result<(u64, u32, SsReply), PullError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut bytes = 0u64;
    loop {
        match next(client, id).await? {
            SsReply::Chunk { data } => {
                hasher.update(&data);
                bytes += data.len() as u64;
                temp.write_all(&data)?;
            }
            end @ (SsReply::FileEnd { .. } | SsReply::End) => {
                return Ok((bytes, hasher.finalize(), end))
            }
            other => return Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: SsReply) -> PullError {
    PullError::Item(WireError::internal(format!(
        "unexpected reply during a transfer: {reply:?}"
    )))
}

async fn pull_one(
    client: &mut RpcClient,
    files: &Arc<Files>,
    file: &str,
    ticket: &Ticket,
) -> Result<Pulled, PullError> {
    let id = client
        .send(SsRequest::GetFile {
            file: file.to_owned(),
            ticket: ticket.clone(),
        })
        .await?;
    let meta = match next(client, id).await? {
        SsReply::FileHeader { meta } => meta,
        other => return Err(unexpected(other)),
    };
    let mut content = files.temp_file()?;
    let (mut bytes, checksum, end) = receive_into(client, id, &mut content).await?;
    match end {
        SsReply::FileEnd {
            checksum: sent,
            size,
        } if sent == checksum && size == bytes => {}
        _ => {
            return Err(PullError::Item(WireError::new(
                ErrorCode::Internal,
                format!("checksum mismatch copying {file:?}; the old copy is kept"),
            )))
        }
    }
    let have = files.local_checkpoints(file);
    let mut new_checkpoints = Vec::new();
    for (tag, info) in &meta.checkpoints {
        if have
            .iter()
            .any(|c| &c.tag == tag && c.created_ms == info.created_ms)
        {
            continue;
        }
        let id = client
            .send(SsRequest::ReadCheckpoint {
                file: file.to_owned(),
                tag: tag.clone(),
                ticket: ticket.clone(),
            })
            .await?;
        let mut temp = files.temp_file()?;
        let (n, _, _) = receive_into(client, id, &mut temp).await?;
        bytes += n;
        new_checkpoints.push((tag.clone(), temp));
    }
    let version = meta.stats.version;
    tokio::task::block_in_place(|| files.install(file, meta, content, new_checkpoints))?;
    Ok(Pulled { version, bytes })
}
