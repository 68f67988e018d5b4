//! Sending content out in chunks: one place for every transfer from this
//! server (a client's READ and VIEWCHECKPOINT, EXEC's read for nm, and a
//! partner's `GetFile`), so the chunk size, the buffer reuse and the
//! checksum are the same everywhere. Receiving a partner's file is in
//! [`crate::replica`].
//!
//! A partner's copy of a large file (at least [`RAW_FROM`]) goes unframed:
//! `sendfile` moves it from the page cache to the socket without it
//! entering this process (one copy in the kernel instead of four: file to
//! buffer, buffer to MessagePack, to the frame, to the socket), while a
//! blocking thread computes its CRC-32 from the page cache beside it.

use crate::files::Files;
use shared::connection::{Connection, ConnectionError, TRANSFER_CHUNK_SIZE};
use shared::proto::{FileCopy, SsReply};
use shared::WireError;
use std::io::Read;
use std::os::fd::AsRawFd;

/// Contents at least this large are sent to a partner unframed, with
/// `sendfile` (smaller ones gain nothing from it: one chunk either way).
pub const RAW_FROM: u64 = 1 << 20;
/// The most one `sendfile` call is asked to move.
const SENDFILE_MAX: u64 = 1 << 30;

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
    let len = handle.metadata().map_or(0, |m| m.len());
    // A test's chunk delay slows a copy chunk by chunk: those stay framed.
    let sent = if len >= RAW_FROM && chunk_delay.is_none() {
        send_raw(conn, id, file, handle, len).await?
    } else {
        send_chunks(conn, id, file, handle, TRANSFER_CHUNK_SIZE, chunk_delay).await?
    };
    let (checksum, size) = match sent {
        Ok(sent) => sent,
        Err(e) => return Ok(Err(e)),
    };
    conn.reply(id, Ok(SsReply::FileEnd { checksum, size }))
        .await?;
    Ok(Ok(()))
}

/// A file's metadata and whole content for `GetFiles`, with the bytes they
/// take, if together they fit in `budget` bytes; else [`FileCopy::Large`].
pub fn read_whole(
    files: &Files,
    file: &str,
    budget: usize,
) -> Result<(FileCopy, usize), WireError> {
    let (meta, mut handle) = files.snapshot(file)?;
    let meta_size = rmp_serde::to_vec_named(&meta).map_or(usize::MAX, |m| m.len());
    // A content is never changed in place: its length is fixed.
    let len = handle.metadata().map_or(u64::MAX, |m| m.len());
    if len.saturating_add(meta_size as u64) > budget as u64 {
        return Ok((FileCopy::Large, 0));
    }
    let mut content = vec![0; len as usize];
    let n = read_full(&mut handle, &mut content)
        .map_err(|e| WireError::internal(format!("reading {file:?}: {e}")))?;
    content.truncate(n);
    let checksum = crc32fast::hash(&content);
    let copy = FileCopy::Whole {
        meta,
        content: serde_bytes::ByteBuf::from(content),
        checksum,
    };
    Ok((copy, n + meta_size))
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

/// Sends an open content of `len` bytes unframed, announced by
/// [`SsReply::Raw`], with `sendfile`; returns its CRC-32 and size. Once the
/// announcement is out, any failure breaks the connection (the receiver
/// cannot tell content from frames any more).
async fn send_raw(
    conn: &mut Connection,
    id: u64,
    file: &str,
    handle: crate::store::OpenContent,
    len: u64,
) -> Result<Result<(u32, u64), WireError>, ConnectionError> {
    let checksummed = match handle.file().try_clone() {
        Ok(copy) => copy,
        Err(e) => return Ok(Err(WireError::internal(format!("reading {file:?}: {e}")))),
    };
    let checksum = tokio::task::spawn_blocking(move || crc32_of(&checksummed, len));
    conn.reply(id, Ok(SsReply::Raw { size: len })).await?;
    let source = handle.file().as_raw_fd();
    let mut offset: libc::off_t = 0;
    conn.send_raw(len, |socket, due| {
        // SAFETY: both descriptors are open for the whole call (`handle`
        // and the connection outlive it); `offset` is a valid off_t.
        let n = unsafe {
            libc::sendfile(
                socket.as_raw_fd(),
                source,
                &mut offset,
                due.min(SENDFILE_MAX) as usize,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
    .await?;
    tracing::info!(
        event = "ss_sent_raw",
        file,
        bytes = len,
        "a large file sent unframed with sendfile"
    );
    let checksum = checksum.await;
    // Held until the checksum is read: the content is registered as read
    // meanwhile, so its inode is not recycled under the checksum's reads.
    drop(handle);
    match checksum {
        Ok(Ok(checksum)) => Ok(Ok((checksum, len))),
        Ok(Err(e)) => Err(ConnectionError::Io(e)),
        Err(e) => Err(ConnectionError::Io(std::io::Error::other(e.to_string()))),
    }
}

/// The CRC-32 of the first `len` bytes of `file`, read where they are.
fn crc32_of(file: &std::fs::File, len: u64) -> std::io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; TRANSFER_CHUNK_SIZE * 4];
    let mut at = 0u64;
    while at < len {
        let want = ((len - at) as usize).min(buffer.len());
        let n = file.read_at(&mut buffer[..want], at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the content ended early",
            ));
        }
        hasher.update(&buffer[..n]);
        at += n as u64;
    }
    Ok(hasher.finalize())
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
