//! The one place that turns bytes into messages.
//!
//! Frames are length-delimited (a 4-byte big-endian length, then the body) by
//! tokio-util's codec, built by [`frame_codec`] for every peer; bodies are
//! MessagePack maps. [`Connection`] sends and receives typed messages and runs
//! the handshake; nothing else in the project touches the wire format.
//!
//! One exception to framing, for bulk copies between the servers of a pair:
//! after a message announcing `n` raw bytes, the sender writes them straight
//! to the socket ([`Connection::send_raw`], e.g. with `sendfile`) and the
//! receiver reads them into one buffer ([`Connection::recv_raw`]); frames
//! resume after them.

use crate::auth::{self, ClusterKey};
use crate::error::{ErrorCode, WireError};
use crate::proto::{
    Hello, HelloReply, Proof, Reply, Request, RequestId, Role, MAGIC, PROTOCOL_VERSION,
};
use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream, ToSocketAddrs};
use tokio_util::codec::{Encoder, Framed, FramedParts, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// Largest frame any peer sends or accepts by default. File contents travel
/// in [`CHUNK_SIZE`] pieces, far below it.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// The size of one content chunk sent to a client (READ, STREAM).
pub const CHUNK_SIZE: usize = 64 * 1024;
/// The size of one content chunk copied between the servers of a pair
/// (larger: fewer frames per byte; capped at half the sender's max frame).
pub const TRANSFER_CHUNK_SIZE: usize = 256 * 1024;
/// How long the dialled side waits for a [`Hello`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The frame codec every peer uses.
pub fn frame_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encodes a message body (a MessagePack map), as every peer does.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(message)
}

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(body)
}

/// The address this process's outgoing connections leave from (see [`set_source_ip`]).
static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();

/// Makes every connection this process dials leave from `ip`, the address
/// it listens on: a daemon is one host, so a packet filter between two
/// addresses cuts both its listening and its dialling side. Unset (or an
/// unspecified address), the kernel picks the source. Set once, at start-up.
pub fn set_source_ip(ip: IpAddr) {
    if !ip.is_unspecified() {
        let _ = SOURCE_IP.set(ip);
    }
}

/// The source address set by [`set_source_ip`], if any.
pub fn source_ip() -> Option<IpAddr> {
    SOURCE_IP.get().copied()
}

/// Dials `addr`, from the source address set by [`set_source_ip`] if any.
pub async fn dial(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let Some(ip) = SOURCE_IP.get().copied() else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != ip.is_ipv4() {
            continue;
        }
        let socket = if ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(ip, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no address of the family of the source address {ip}"),
        )
    }))
}

/// Why a connection could not carry a message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("handshake refused: {0}")]
    Refused(WireError),
    #[error("timed out")]
    Timeout,
    #[error("closed by this daemon: it is stopping, or needed the slot for a new connection")]
    Dismissed,
}

impl ConnectionError {
    /// The error as a client shows it: lost connections are `E_UNAVAILABLE`.
    pub fn to_wire(&self) -> WireError {
        match self {
            ConnectionError::Refused(e) => e.clone(),
            ConnectionError::Decode(_) | ConnectionError::Encode(_) => {
                WireError::new(ErrorCode::BadRequest, self.to_string())
            }
            _ => WireError::unavailable(self.to_string()),
        }
    }
}

/// What arrived in one frame.
pub enum Incoming<T> {
    Message(T),
    /// A well-framed body that is not a valid message; the request id is
    /// recovered where possible so the error reply can echo it.
    Malformed {
        id: u64,
        error: String,
    },
}

/// Decodes a request strictly: it must be exactly what this side would
/// encode for it, so bodies are maps with named fields (no arrays in place
/// of structs), enums are named (no variant indexes), and nothing is there
/// that the protocol does not define. rmp-serde alone accepts all of these
/// (`{"id": 11, "body": 5}` was taken as the sixth variant); re-encoding the
/// decoded request and comparing bytes refuses every alternate form with one
/// rule, at the cost of one encode per request.
fn decode_request<B: DeserializeOwned + Serialize>(frame: &[u8]) -> Incoming<Request<B>> {
    let malformed = |error: String| Incoming::Malformed {
        id: rmp_serde::from_slice::<RequestId>(frame)
            .map(|r| r.id)
            .unwrap_or(0),
        error,
    };
    match rmp_serde::from_slice::<Request<B>>(frame) {
        Ok(request) => match encode(&request) {
            Ok(canonical) if canonical == frame => Incoming::Message(request),
            _ => malformed(
                "not in the protocol's encoding: a request is a map with named fields, enums by name, and only the fields the protocol defines".into(),
            ),
        },
        Err(error) => malformed(error.to_string()),
    }
}

type Framing = Framed<TcpStream, LengthDelimitedCodec>;

/// The sending half of a split [`Connection`].
pub struct ConnWriter {
    sink: futures::stream::SplitSink<Framing, Bytes>,
}

impl ConnWriter {
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        self.sink.send(Bytes::from(encode(message)?)).await?;
        Ok(())
    }
}

/// The sending half of a [`Connection`] split by
/// [`Connection::split_direct`]: any thread may send on it without awaiting.
///
/// A message goes straight to the socket, on the sending thread, when no
/// frame is queued before it and the socket takes it whole (a small frame
/// on a connection whose peer keeps reading): no task has to wake up to
/// write it. Otherwise it is queued, and [`DirectWriter::flush`] (awaited by
/// one task of the connection's owner) writes the queue as the socket
/// allows. Frames keep the order of the calls that sent them.
pub struct DirectWriter {
    socket: tokio::net::tcp::OwnedWriteHalf,
    queue: std::sync::Mutex<WriteQueue>,
    queued: tokio::sync::Notify,
}

struct WriteQueue {
    codec: LengthDelimitedCodec,
    /// Frames, or their ends, the socket has not taken yet.
    pending: BytesMut,
    /// Why the socket failed: nothing is written after it.
    failed: Option<io::ErrorKind>,
}

impl DirectWriter {
    /// Sends `message` as one frame, or queues it (see [`DirectWriter`]).
    /// Never blocks; fails once the connection has.
    pub fn send_now<T: Serialize>(&self, message: &T) -> Result<(), ConnectionError> {
        let body = Bytes::from(encode(message)?);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = queue.failed {
            return Err(ConnectionError::Io(kind.into()));
        }
        let mut frame = BytesMut::new();
        queue.codec.encode(body, &mut frame)?;
        if queue.pending.is_empty() {
            if let Err(e) = self.write_some(&mut frame, &mut queue.failed) {
                drop(queue);
                // The connection's task learns it from its next flush.
                self.queued.notify_one();
                return Err(e);
            }
            if frame.is_empty() {
                return Ok(());
            }
        }
        queue.pending.extend_from_slice(&frame);
        drop(queue);
        self.queued.notify_one();
        Ok(())
    }

    /// Writes what the socket takes of `bytes` now (nothing if it would
    /// block) and drops it from them; a failure is kept in `failed`.
    fn write_some(
        &self,
        bytes: &mut BytesMut,
        failed: &mut Option<io::ErrorKind>,
    ) -> Result<(), ConnectionError> {
        match self.socket.try_write(bytes) {
            Ok(written) => bytes.advance(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                *failed = Some(e.kind());
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Waits until a frame was queued since the last call.
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Writes every queued frame, waiting for the socket as needed.
    pub async fn flush(&self) -> Result<(), ConnectionError> {
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(kind) = queue.failed {
                    return Err(ConnectionError::Io(kind.into()));
                }
                if queue.pending.is_empty() {
                    return Ok(());
                }
                let WriteQueue {
                    pending, failed, ..
                } = &mut *queue;
                self.write_some(pending, failed)?;
                if queue.pending.is_empty() {
                    return Ok(());
                }
            }
            self.socket.writable().await?;
        }
    }
}

/// Whether `buffered` starts with a whole frame (as [`frame_codec`] frames them).
fn whole_frame_in(buffered: &[u8]) -> bool {
    match buffered {
        [a, b, c, d, body @ ..] => body.len() >= u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => false,
    }
}

/// The receiving half of a split [`Connection`].
pub struct ConnReader {
    frames: ReadFrames,
}

enum ReadFrames {
    /// From [`Connection::split`].
    Split(futures::stream::SplitStream<Framing>),
    /// From [`Connection::split_direct`].
    Owned(Framed<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>),
}

impl ConnReader {
    async fn next_frame(&mut self) -> Option<io::Result<BytesMut>> {
        match &mut self.frames {
            ReadFrames::Split(frames) => frames.next().await,
            ReadFrames::Owned(frames) => frames.next().await,
        }
    }

    /// Receives one message; `Ok(None)` when the peer closed cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectionError> {
        match self.next_frame().await {
            None => Ok(None),
            Some(frame) => Ok(Some(decode(&frame?)?)),
        }
    }

    /// As [`Connection::recv_request`].
    pub async fn recv_request<B: DeserializeOwned + Serialize>(
        &mut self,
    ) -> Result<Option<Incoming<Request<B>>>, ConnectionError> {
        match self.next_frame().await {
            None => Ok(None),
            Some(frame) => Ok(Some(decode_request(&frame?))),
        }
    }
}

struct HeldSlot {
    state: std::sync::Arc<SlotState>,
    frame_timeout: Duration,
    evictable: bool,
}

/// A framed, typed connection.
pub struct Connection {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    peer: SocketAddr,
    /// On a daemon's accepted connection: its slot (told when the
    /// connection waits for a request, and closing it when evicted) and
    /// the time a started frame has to arrive whole.
    slot: Option<HeldSlot>,
}

impl Connection {
    pub fn new(stream: TcpStream, max_frame: usize) -> io::Result<Self> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            framed: Framed::new(stream, frame_codec(max_frame)),
            peer,
            slot: None,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the peer has closed this connection (or it broke), as far as
    /// can be told without waiting: an idle connection whose peer went away
    /// reads end-of-file. Checked before sending a request that must not be
    /// sent twice, so that one is never written into a dead connection
    /// (where it could neither arrive nor be known not to have).
    pub fn peer_closed(&self) -> bool {
        if !self.framed.read_buffer().is_empty() {
            return false;
        }
        // Asked of the kernel (a non-blocking MSG_PEEK), not of the
        // runtime's readiness, which may not have seen the FIN yet.
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(self.framed.get_ref()).peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// The largest frame this connection sends or accepts.
    pub fn max_frame(&self) -> usize {
        self.framed.codec().max_frame_length()
    }

    /// Encodes and sends one message.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        self.framed.send(Bytes::from(encode(message)?)).await?;
        Ok(())
    }

    /// Encodes one message into the write buffer without flushing; pair with [`Connection::flush`].
    pub async fn feed<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        self.framed.feed(Bytes::from(encode(message)?)).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        SinkExt::<Bytes>::flush(&mut self.framed).await?;
        Ok(())
    }

    /// Sends `len` raw bytes after the messages sent so far (announced by
    /// one of them). `write` is called whenever the socket can take more,
    /// with the socket and the bytes still due, and returns how many it
    /// wrote: a `sendfile` from the file, so the bytes never enter this
    /// process. It must not block (the socket is non-blocking: `EAGAIN` is
    /// `WouldBlock`).
    pub async fn send_raw(
        &mut self,
        len: u64,
        mut write: impl FnMut(&TcpStream, u64) -> io::Result<usize>,
    ) -> Result<(), ConnectionError> {
        self.flush().await?;
        let stream = self.framed.get_ref();
        let mut sent = 0u64;
        while sent < len {
            stream.writable().await?;
            match stream.try_io(tokio::io::Interest::WRITABLE, || write(stream, len - sent)) {
                Ok(0) => {
                    return Err(ConnectionError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source ended after {sent} of {len} raw bytes"),
                    )))
                }
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives `len` raw bytes announced by the last message, handing them
    /// to `sink` as they come (through one buffer of at most `buffer`
    /// bytes); frames resume after them.
    pub async fn recv_raw(
        &mut self,
        len: u64,
        buffer: usize,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ConnectionError> {
        use tokio::io::AsyncReadExt;
        // What the codec read ahead of its last frame.
        let read_ahead = self.framed.read_buffer_mut();
        let early = read_ahead.split_to((len as usize).min(read_ahead.len()));
        if !early.is_empty() {
            sink(&early)?;
        }
        let mut left = len - early.len() as u64;
        let mut buf = vec![0u8; (left as usize).min(buffer.max(1))];
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = self.framed.get_mut().read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(ConnectionError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the connection closed with {left} raw bytes still due"),
                )));
            }
            sink(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Receives one message; `Ok(None)` when the peer closed cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectionError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(frame) => Ok(Some(rmp_serde::from_slice(&frame?)?)),
        }
    }

    /// Receives one request, telling a malformed body apart from a broken stream.
    /// Framing errors (an oversize frame, a cut connection) end the connection,
    /// and so, on a connection holding a slot ([`Connection::hold_slot`]), do
    /// a frame that does not arrive whole in time and an eviction.
    pub async fn recv_request<B: DeserializeOwned + Serialize>(
        &mut self,
    ) -> Result<Option<Incoming<Request<B>>>, ConnectionError> {
        let frame = match &self.slot {
            None => self.framed.next().await,
            Some(held) => {
                let (state, frame_timeout) = (held.state.clone(), held.frame_timeout);
                if held.evictable {
                    state.waiting();
                }
                let frame = tokio::select! {
                    biased;
                    frame = self.next_frame_within(frame_timeout) => frame,
                    () = state.dismissed() => return Err(ConnectionError::Dismissed),
                };
                state.busy();
                frame
            }
        };
        match frame {
            None => Ok(None),
            Some(frame) => Ok(Some(decode_request(&frame?))),
        }
    }

    /// Makes this accepted connection answer to its slot in the daemon's
    /// connection limit: a frame, once started, must arrive whole within
    /// `frame_timeout`; and if `evictable` (a client's connection: the
    /// daemons' own, proven with the cluster key, never are) it counts as
    /// idle while it waits for a request and may then be closed to make room.
    pub fn hold_slot(
        &mut self,
        state: std::sync::Arc<SlotState>,
        frame_timeout: Duration,
        evictable: bool,
    ) {
        if !evictable {
            state.busy();
        }
        self.slot = Some(HeldSlot {
            state,
            frame_timeout: frame_timeout.max(Duration::from_millis(1)),
            evictable,
        });
    }

    /// Whether this connection may be closed to make room while it waits
    /// (a client's, unless it holds state a close would lose, such as an
    /// open WRITE).
    pub fn set_evictable(&mut self, evictable: bool) {
        if let Some(held) = &mut self.slot {
            held.evictable = evictable;
            if !evictable {
                held.state.busy();
            }
        }
    }

    /// Counts this connection as waiting from now on, for a loop that does
    /// not read requests (a WATCH): under pressure it is evictable.
    pub fn mark_waiting(&self) {
        if let Some(held) = self.slot.as_ref().filter(|h| h.evictable) {
            held.state.waiting();
        }
    }

    /// The next frame, however long the connection stays silent; but once
    /// bytes of a frame have arrived, the rest must follow within about
    /// `limit`: between one and two `limit`s after its first byte (its
    /// bytes are first seen at the end of a `limit`, and it then has one
    /// whole `limit` more).
    async fn next_frame_within(
        &mut self,
        limit: Duration,
    ) -> Option<Result<bytes::BytesMut, io::Error>> {
        let mut started = false;
        loop {
            // Framed's `next` is cancel-safe: bytes read stay in its buffer.
            match tokio::time::timeout(limit, self.framed.next()).await {
                Ok(frame) => return frame,
                Err(_) if self.framed.read_buffer().is_empty() => continue,
                Err(_) if !started => started = true,
                Err(_) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                        "a request frame did not arrive whole within {limit:?} (--frame-timeout)"
                    ),
                    )))
                }
            }
        }
    }

    /// Cancelled when the daemon wants this connection closed (it is
    /// stopping, or evicted it); never, on a connection without a slot.
    pub fn dismissal(&self) -> CancellationToken {
        self.slot
            .as_ref()
            .map_or_else(CancellationToken::new, |held| held.state.dismissal())
    }

    /// The socket, for tests that speak raw bytes after a handshake.
    pub fn into_stream(self) -> TcpStream {
        self.framed.into_inner()
    }

    /// Splits the connection so that one task can read while another writes
    /// (replies may then go out in any order; their ids match them up).
    pub fn split(self) -> (ConnWriter, ConnReader) {
        let (sink, stream) = self.framed.split();
        (
            ConnWriter { sink },
            ConnReader {
                frames: ReadFrames::Split(stream),
            },
        )
    }

    /// Splits the connection so that any thread may send on it without
    /// awaiting (see [`DirectWriter`]), while one task reads.
    pub fn split_direct(self) -> (DirectWriter, ConnReader) {
        let parts = self.framed.into_parts();
        let (read, write) = parts.io.into_split();
        // Frames already read stay first (and are decoded before the
        // socket is read again).
        let mut reading = FramedParts::new::<Bytes>(read, parts.codec.clone());
        reading.read_buf = parts.read_buf;
        let frames = Framed::from_parts(reading);
        let writer = DirectWriter {
            socket: write,
            queue: std::sync::Mutex::new(WriteQueue {
                codec: parts.codec,
                pending: parts.write_buf,
                failed: None,
            }),
            queued: tokio::sync::Notify::new(),
        };
        if !writer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .is_empty()
        {
            writer.queued.notify_one();
        }
        (
            writer,
            ConnReader {
                frames: ReadFrames::Owned(frames),
            },
        )
    }

    /// Receives a message that must arrive, or fails with `Closed`.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, ConnectionError> {
        self.recv().await?.ok_or(ConnectionError::Closed)
    }

    /// Sends a reply.
    pub async fn reply<B: Serialize>(
        &mut self,
        id: u64,
        result: Result<B, WireError>,
    ) -> Result<(), ConnectionError> {
        self.send(&Reply { id, result }).await
    }

    /// Sends a reply, unless the next request has arrived whole already:
    /// then the reply waits in the write buffer and goes out with that
    /// request's, in one write (a client that pipelines a request behind
    /// another is woken once for both).
    pub async fn reply_or_defer<B: Serialize>(
        &mut self,
        id: u64,
        result: Result<B, WireError>,
    ) -> Result<(), ConnectionError> {
        self.feed(&Reply { id, result }).await?;
        if !self.request_waiting() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether a whole frame is waiting in the read buffer.
    fn request_waiting(&self) -> bool {
        whole_frame_in(self.framed.read_buffer())
    }

    /// Dials `addr` and introduces itself as `role` named `name` (a client).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        role: Role,
        name: &str,
        max_frame: usize,
    ) -> Result<Self, ConnectionError> {
        Self::connect_keyed(addr, role, name, max_frame, None).await
    }

    /// Dials as a daemon: with a cluster key, the peer must prove it knows
    /// the key too, and this side answers the peer's challenge.
    pub async fn connect_keyed(
        addr: impl ToSocketAddrs,
        role: Role,
        name: &str,
        max_frame: usize,
        key: Option<&ClusterKey>,
    ) -> Result<Self, ConnectionError> {
        let stream = dial(addr).await?;
        let mut conn = Connection::new(stream, max_frame)?;
        let my_nonce = key.map(|_| auth::nonce());
        let hello = Hello {
            nonce: my_nonce.clone(),
            ..Hello::new(role, name)
        };
        conn.send(&hello).await?;
        let reply: HelloReply = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.expect())
            .await
            .map_err(|_| ConnectionError::Timeout)??;
        let (peer_role, challenge, proof) = match reply {
            HelloReply::Welcome {
                role,
                challenge,
                proof,
                ..
            } => (role, challenge, proof),
            HelloReply::Refused { error } => return Err(ConnectionError::Refused(error)),
        };
        if let (Some(key), Some(nonce)) = (key, &my_nonce) {
            let genuine = proof.is_some_and(|p| key.verify(nonce, peer_role, "", &p));
            if !genuine {
                return Err(ConnectionError::Refused(WireError::unauthorized(
                    "the peer could not prove it holds the cluster key",
                )));
            }
        }
        if let Some(challenge) = challenge {
            let Some(key) = key else {
                return Err(ConnectionError::Refused(WireError::unauthorized(
                    "the peer requires the cluster key (--cluster-key-file)",
                )));
            };
            conn.send(&Proof {
                mac: key.prove(&challenge, role, name),
            })
            .await?;
            let verdict: HelloReply = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.expect())
                .await
                .map_err(|_| ConnectionError::Timeout)??;
            if let HelloReply::Refused { error } = verdict {
                return Err(ConnectionError::Refused(error));
            }
        }
        Ok(conn)
    }

    /// Waits for the dialler's [`Hello`] and checks its magic and version.
    /// A bad handshake is answered with the reason and the connection ends.
    /// With a cluster key, a dialling daemon (storage server or nm) must
    /// prove it holds the key; clients are not challenged.
    pub async fn accept(
        stream: TcpStream,
        my_role: Role,
        max_frame: usize,
        handshake_timeout: Duration,
        key: Option<&ClusterKey>,
    ) -> Result<(Self, Hello), ConnectionError> {
        let mut conn = Connection::new(stream, max_frame)?;
        let hello = tokio::time::timeout(handshake_timeout, conn.recv::<Hello>())
            .await
            .map_err(|_| ConnectionError::Timeout)?;
        let hello = match hello {
            Ok(Some(hello)) => hello,
            Ok(None) => return Err(ConnectionError::Closed),
            Err(e) => {
                let error = WireError::new(ErrorCode::Protocol, format!("bad handshake: {e}"));
                let _ = conn.send(&HelloReply::Refused { error }).await;
                return Err(e);
            }
        };
        let refusal = if hello.magic != MAGIC {
            Some(format!(
                "bad magic {:#010x}: not a Docs++ peer",
                hello.magic
            ))
        } else if hello.version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version {} is not supported (this peer speaks {PROTOCOL_VERSION})",
                hello.version
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            let error = WireError::new(ErrorCode::Protocol, message);
            let _ = conn
                .send(&HelloReply::Refused {
                    error: error.clone(),
                })
                .await;
            return Err(ConnectionError::Refused(error));
        }
        let daemon = hello.role != Role::Client;
        let challenge = key.filter(|_| daemon).map(|_| auth::nonce());
        let proof = key
            .zip(hello.nonce.as_deref())
            .map(|(key, nonce)| key.prove(nonce, my_role, ""));
        conn.send(&HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            role: my_role,
            challenge: challenge.clone(),
            proof,
        })
        .await?;
        if let (Some(key), Some(challenge)) = (key, challenge) {
            let answer = tokio::time::timeout(handshake_timeout, conn.recv::<Proof>()).await;
            let genuine = matches!(&answer, Ok(Ok(Some(p))) if key.verify(&challenge, hello.role, &hello.name, &p.mac));
            if !genuine {
                let error = WireError::unauthorized(format!(
                    "{} could not prove it holds the cluster key",
                    hello.name
                ));
                let _ = conn
                    .send(&HelloReply::Refused {
                        error: error.clone(),
                    })
                    .await;
                return Err(ConnectionError::Refused(error));
            }
            conn.send(&HelloReply::Welcome {
                version: PROTOCOL_VERSION,
                role: my_role,
                challenge: None,
                proof: None,
            })
            .await?;
        }
        Ok((conn, hello))
    }

    /// Turns a connection away before its handshake (too many connections):
    /// the dialler reads the refusal as the answer to its Hello.
    pub async fn turn_away(stream: TcpStream, error: WireError) {
        if let Ok(mut conn) = Connection::new(stream, DEFAULT_MAX_FRAME) {
            let _ = conn.send(&HelloReply::Refused { error }).await;
        }
    }

    /// Refuses a connection after a valid handshake (wrong role, bad name).
    pub async fn refuse(mut self, error: WireError) {
        let _ = self
            .send(&Reply::<()> {
                id: 0,
                result: Err(error),
            })
            .await;
    }
}

/// A client-side helper: sends requests with increasing ids and reads their replies.
pub struct RpcClient {
    conn: Connection,
    next_id: u64,
}

impl RpcClient {
    pub fn new(conn: Connection) -> Self {
        RpcClient { conn, next_id: 1 }
    }

    pub async fn connect(
        addr: impl ToSocketAddrs,
        role: Role,
        name: &str,
    ) -> Result<Self, ConnectionError> {
        Self::connect_keyed(addr, role, name, None).await
    }

    /// Connects as a daemon proving the cluster key (see [`Connection::connect_keyed`]).
    pub async fn connect_keyed(
        addr: impl ToSocketAddrs,
        role: Role,
        name: &str,
        key: Option<&ClusterKey>,
    ) -> Result<Self, ConnectionError> {
        Ok(Self::new(
            Connection::connect_keyed(addr, role, name, DEFAULT_MAX_FRAME, key).await?,
        ))
    }

    /// See [`Connection::peer_closed`].
    pub fn peer_closed(&self) -> bool {
        self.conn.peer_closed()
    }

    /// Sends a request and returns its id; read the answers with [`RpcClient::next_reply`].
    pub async fn send<Q: Serialize>(&mut self, body: Q) -> Result<u64, ConnectionError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send(&Request { id, body }).await?;
        Ok(id)
    }

    /// As [`RpcClient::send`], without flushing: the request goes out with
    /// the next one sent, in the same write.
    pub async fn feed<Q: Serialize>(&mut self, body: Q) -> Result<u64, ConnectionError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.feed(&Request { id, body }).await?;
        Ok(id)
    }

    /// The next reply to request `id` (replies to other ids are protocol errors).
    pub async fn next_reply<R: DeserializeOwned>(
        &mut self,
        id: u64,
    ) -> Result<Result<R, WireError>, ConnectionError> {
        let reply: Reply<R> = self.conn.expect().await?;
        if reply.id != id && reply.id != 0 {
            return Err(ConnectionError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply to request {} while waiting for {id}", reply.id),
            )));
        }
        Ok(reply.result)
    }

    /// Receives raw bytes announced by the last reply (see [`Connection::recv_raw`]).
    pub async fn recv_raw(
        &mut self,
        len: u64,
        buffer: usize,
        sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ConnectionError> {
        self.conn.recv_raw(len, buffer, sink).await
    }

    /// The connection and the next request id, for a caller that goes on
    /// with several requests in flight.
    pub fn into_parts(self) -> (Connection, u64) {
        (self.conn, self.next_id)
    }

    /// One request, one reply.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        body: Q,
    ) -> Result<Result<R, WireError>, ConnectionError> {
        let id = self.send(body).await?;
        self.next_reply(id).await
    }
}

/// What a connection's request loop tells its slot ([`crate::limits`]): whether it is waiting
/// for a request, and since when; and the signal that it was evicted.
#[derive(Debug)]
pub struct SlotState {
    epoch: Instant,
    /// Microseconds since `epoch` + 1 while waiting for a request; 0 while busy.
    waiting_since: AtomicU64,
    /// Cancelled when the connection must close: evicted, or the daemon stops.
    dismissed: CancellationToken,
}

impl SlotState {
    /// Waiting times are counted from `epoch` (the slots').
    pub fn new(epoch: Instant) -> Self {
        SlotState {
            epoch,
            waiting_since: AtomicU64::new(0),
            dismissed: CancellationToken::new(),
        }
    }

    /// Closes the connection (it was chosen to make room).
    pub fn dismiss(&self) {
        self.dismissed.cancel();
    }

    /// The connection waits for its next request (from now).
    pub fn waiting(&self) {
        let micros = self.epoch.elapsed().as_micros() as u64 + 1;
        self.waiting_since.store(micros, Ordering::Relaxed);
    }

    /// The connection is handling a request.
    pub fn busy(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// Completes once the connection must close: it was chosen to make
    /// room for another, or the daemon is stopping.
    pub async fn dismissed(&self) {
        self.dismissed.cancelled().await
    }

    /// The token behind [`SlotState::dismissed`], for loops that do not
    /// read requests through [`Connection::recv_request`] (a WATCH, a
    /// replication stream).
    pub fn dismissal(&self) -> CancellationToken {
        self.dismissed.clone()
    }

    pub fn waited(&self, now: Duration) -> Option<Duration> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now.saturating_sub(Duration::from_micros(since - 1))),
        }
    }
}
