//! Sending content out in chunks: one place for every transfer from this
//! server (a client's READ and VIEWCHECKPOINT, EXEC's read for nm, and a
//! partner's `GetFile`), so the chunk size, the buffer reuse and the
//! checksum are the same everywhere. Receiving a partner's file is in
//! [`crate::replica`].

use crate::files::Files;
use shared::connection::{Connection, ConnectionError, TRANSFER_CHUNK_SIZE};
use shared::proto::SsReply;
use shared::WireError;
use std::io::Read;

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
    let (checksum, size) =
        match send_chunks(conn, id, file, handle, TRANSFER_CHUNK_SIZE, chunk_delay).await? {
            Ok(sent) => sent,
            Err(e) => return Ok(Err(e)),
        };
    conn.reply(id, Ok(SsReply::FileEnd { checksum, size }))
        .await?;
    Ok(Ok(()))
}

/// Sends an open content as `Chunk` replies of `chunk_size` bytes (at most
/// half the connection's max frame); returns its CRC-32 and size.
pub async fn send_chunks(
    conn: &mut Connection,
    id: u64,
    file: &str,
    mut handle: crate::store::OpenContent,
    chunk_size: usize,
    chunk_delay: Option<std::time::Duration>,
) -> Result<Result<(u32, u64), WireError>, ConnectionError> {
    let chunk_size = chunk_size.min(conn.max_frame() / 2).max(1024);
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    // A content is never changed in place, so its length is fixed: a small
    // file gets a buffer its size, not a whole chunk to zero.
    let len = handle.metadata().map_or(chunk_size as u64, |m| m.len());
    let mut buffer = vec![0u8; (len as usize).clamp(1, chunk_size)];
    loop {
        let n = match tokio::task::block_in_place(|| read_full(&mut handle, &mut buffer)) {
            Ok(n) => n,
            Err(e) => return Ok(Err(WireError::internal(format!("reading {file:?}: {e}")))),
        };
        if n == 0 {
            break;
        }
        let data = &buffer[..n];
        hasher.update(data);
        size += n as u64;
        conn.feed(&shared::proto::Reply {
            id,
            result: Ok::<_, WireError>(shared::proto::ChunkOut::Chunk {
                data: serde_bytes::Bytes::new(data),
            }),
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

/// Reads until `buf` is full or the file ends.
fn read_full(handle: &mut crate::store::OpenContent, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match handle.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
