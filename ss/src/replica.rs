//! Replication between the two servers of a pair.
//!
//! The backup pulls: nm sends it `PullFiles` naming the primary and a read
//! ticket per file; the backup asks the primary for them in batches
//! (`GetFiles`: small files come whole, several to a frame, with their
//! metadata and a CRC-32; a large one is asked for again with `GetFile`:
//! metadata, content in chunks or unframed, a CRC-32) and for the
//! checkpoints it lacks, keeps a small file that came whole in memory and
//! writes anything else into a temp file, verifies the checksum, and
//! installs checkpoints, content and metadata atomically (a batch's small
//! copies of files new here go into a pack: see `crate::store`). The bytes
//! cross the network once, primary to backup, never a large file whole in
//! memory; an interrupted transfer leaves the old file intact and its temp
//! file is removed. nm owns the job and reports its events.

use crate::files::{Copied, CopyContent, Files};
use crate::store::TempFile;
use shared::connection::{ConnectionError, RpcClient};
use shared::proto::{FileCopy, FileMeta, PeerRequest, PullItem, PullResult, Pulled, Role, SsReply};
use shared::{ErrorCode, WireError};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

/// Files asked for in one `GetFiles`, and how many of those are kept in
/// flight, so that the primary reads the next batch while this one arrives.
const FILES_PER_REQUEST: usize = 128;
const FILES_REQUESTS_AHEAD: usize = 2;
/// What a `GetFiles` request may hold in names (each twice: the item's and
/// its ticket's): with 128 tickets, a request stays under 64 KiB however
/// long the names.
const REQUEST_NAME_BYTES: usize = 16 << 10;
/// Copied files installed together under one durability step, and the bytes
/// in temp files that end a batch early.
const INSTALL_BATCH: usize = 256;
const INSTALL_BATCH_BYTES: u64 = 64 << 20;
/// The one buffer a large file's unframed content passes through.
const RAW_BUFFER: usize = 1 << 20;
/// Requests for single items (a large file's content, a checkpoint) sent
/// and not yet answered, in bytes. The primary answers one request at a
/// time and reads the next only after, while this side sends and reads on
/// one task: requests beyond what the sockets' buffers hold could block this
/// side's send while the primary blocks on its reply, each waiting for the
/// other. With the [`FILES_REQUESTS_AHEAD`] `GetFiles` (each under 64 KiB),
/// what is sent and not yet read stays under 160 KiB, and under 100 KiB
/// with names under a few hundred bytes; Linux starts a TCP connection
/// with 128 KiB to receive and 16 KiB to send, and grows both with use.
/// No new `GetFiles` goes out while requests for single items wait, so
/// that items waiting for their checkpoints (each holding a temp file)
/// stay few.
const ASKS_AHEAD_BYTES: usize = 32 << 10;

/// Why a pull failed: the item alone (the connection stays in step), or the
/// connection (and every item not yet finished).
enum PullError {
    Item(WireError),
    Connection(String),
}

impl From<WireError> for PullError {
    fn from(e: WireError) -> Self {
        PullError::Item(e)
    }
}

impl From<ConnectionError> for PullError {
    fn from(e: ConnectionError) -> Self {
        PullError::Connection(e.to_string())
    }
}

/// A request to the primary whose replies have not been read yet.
enum InFlight {
    Files {
        id: u64,
        indices: Range<usize>,
    },
    /// With the request's size, counted in [`Asks`].
    One(OneItem, usize),
}

/// A request in flight for one item.
enum OneItem {
    File { id: u64, index: usize },
    Checkpoint { id: u64, index: usize, tag: String },
}

/// One item being copied: what has arrived so far.
#[derive(Default)]
struct Arriving {
    meta: Option<FileMeta>,
    content: Option<CopyContent>,
    checkpoints: Vec<(String, TempFile)>,
    checkpoints_due: usize,
    bytes: u64,
}

impl Arriving {
    /// The file's metadata and content arrived (`bytes` of it); `checkpoints_due` more to come.
    fn content_arrived(
        &mut self,
        meta: FileMeta,
        content: CopyContent,
        checkpoints_due: usize,
        bytes: u64,
    ) {
        self.meta = Some(meta);
        self.content = Some(content);
        self.checkpoints_due = checkpoints_due;
        self.bytes += bytes;
    }
}

/// Copies `items` from the primary at `from` over one connection, with
/// [`FILES_REQUESTS_AHEAD`] batches in flight, installing them in batches.
pub async fn pull_files(
    files: &Arc<Files>,
    me: &str,
    from: &str,
    key: Option<&shared::auth::ClusterKey>,
    items: Vec<PullItem>,
) -> Vec<PullResult> {
    let mut outcomes: Vec<Option<Result<Pulled, WireError>>> = vec![None; items.len()];
    match RpcClient::connect_keyed(from, Role::StorageServer, me, key).await {
        Ok(mut client) => {
            if let Err(broken) = pull_pipelined(&mut client, files, &items, &mut outcomes).await {
                tracing::warn!(event = "ss_pull_broken", from, error = %broken);
            }
        }
        Err(e) => tracing::warn!(event = "ss_pull_connect_failed", from, error = %e),
    }
    items
        .into_iter()
        .zip(outcomes)
        .map(|(item, outcome)| PullResult {
            file: item.file,
            result: outcome.unwrap_or_else(|| {
                Err(WireError::unavailable(format!(
                    "the transfer from {from} broke before this file was copied"
                )))
            }),
        })
        .collect()
}

/// The pipeline of [`pull_files`]. Replies come back in request order (a
/// server answers one connection's requests one after another), so the
/// oldest request in flight is always the one whose replies are next.
/// Returns early, leaving unfinished outcomes empty, if the connection breaks.
async fn pull_pipelined(
    client: &mut RpcClient,
    files: &Arc<Files>,
    items: &[PullItem],
    outcomes: &mut [Option<Result<Pulled, WireError>>],
) -> Result<(), String> {
    let mut installer = Installer::start(files);
    let mut ready = Vec::new();
    // Whatever arrived whole is installed, even if the connection broke.
    let copied = copy_all(client, files, items, outcomes, &mut installer, &mut ready).await;
    installer.install(&mut ready).await;
    installer.finish(outcomes).await;
    copied
}

/// The requests and replies of [`pull_pipelined`]: copies that arrived
/// whole go to `installer` in batches, the last batch is left in `ready`.
async fn copy_all(
    client: &mut RpcClient,
    files: &Arc<Files>,
    items: &[PullItem],
    outcomes: &mut [Option<Result<Pulled, WireError>>],
    installer: &mut Installer,
    ready: &mut Vec<(usize, Copied, u64)>,
) -> Result<(), String> {
    let mut in_flight = VecDeque::new();
    let mut arriving: Vec<Option<Arriving>> = items.iter().map(|_| None).collect();
    let mut asks = Asks::default();
    let mut next_item = 0;
    while next_item < items.len() || !in_flight.is_empty() || asks.waiting() {
        while let Some(ask) = asks.next_to_send() {
            ask.send(client, &mut in_flight)
                .await
                .map_err(|e| e.to_string())?;
        }
        while next_item < items.len()
            && !asks.waiting()
            && in_flight
                .iter()
                .filter(|r| matches!(r, InFlight::Files { .. }))
                .count()
                < FILES_REQUESTS_AHEAD
        {
            let end = request_end(items, next_item);
            let id = client
                .send(PeerRequest::GetFiles {
                    items: items[next_item..end].to_vec(),
                })
                .await
                .map_err(|e| e.to_string())?;
            for a in &mut arriving[next_item..end] {
                *a = Some(Arriving::default());
            }
            in_flight.push_back(InFlight::Files {
                id,
                indices: next_item..end,
            });
            next_item = end;
        }
        let Some(head) = in_flight.pop_front() else {
            break;
        };
        let steps = match head {
            InFlight::Files { id, indices } => {
                receive_files(client, files, items, id, indices, &mut arriving, &mut asks).await
            }
            InFlight::One(head, bytes) => {
                asks.answered(bytes);
                let (OneItem::File { index, .. } | OneItem::Checkpoint { index, .. }) = head;
                let step = receive_step(
                    client,
                    files,
                    &items[index],
                    head,
                    &mut arriving[index],
                    &mut asks,
                )
                .await;
                vec![(index, step)]
            }
        };
        for (index, step) in steps {
            match step {
                Err(PullError::Connection(broken)) => return Err(broken),
                Err(PullError::Item(e)) => {
                    // Its temp files go; replies still due for it are read
                    // and dropped, requests not yet sent are not sent.
                    arriving[index] = None;
                    asks.forget(index);
                    if outcomes[index].is_none() {
                        outcomes[index] = Some(Err(e));
                    }
                }
                Ok(()) => {}
            }
            arrived(index, items, &mut arriving, outcomes, ready);
        }
        let ready_bytes: u64 = ready.iter().map(|(_, _, bytes)| bytes).sum();
        if ready.len() >= INSTALL_BATCH || ready_bytes >= INSTALL_BATCH_BYTES {
            installer.install(ready).await;
        }
    }
    Ok(())
}

/// Where the `GetFiles` for the items from `start` ends: at most
/// [`FILES_PER_REQUEST`] items and about [`REQUEST_NAME_BYTES`] of names.
fn request_end(items: &[PullItem], start: usize) -> usize {
    let mut end = start;
    let mut bytes = 0;
    while end < items.len() && end - start < FILES_PER_REQUEST && bytes < REQUEST_NAME_BYTES {
        bytes += 2 * items[end].file.len();
        end += 1;
    }
    end
}

/// Moves item `index` to `ready` if all of it has arrived.
fn arrived(
    index: usize,
    items: &[PullItem],
    arriving: &mut [Option<Arriving>],
    outcomes: &[Option<Result<Pulled, WireError>>],
    ready: &mut Vec<(usize, Copied, u64)>,
) {
    let complete = arriving[index]
        .as_ref()
        .is_some_and(|a| a.content.is_some() && a.checkpoints_due == 0);
    if complete && outcomes[index].is_none() {
        let a = arriving[index].take().expect("complete");
        ready.push((
            index,
            Copied {
                file: items[index].file.clone(),
                meta: a.meta.expect("header before content"),
                content: a.content.expect("complete"),
                checkpoints: a.checkpoints,
            },
            a.bytes,
        ));
    }
}

/// Reads the replies of a `GetFiles`: each whole file into a temp file;
/// what did not come whole (a large file's content, the checkpoints a file
/// names that are not here) goes to `asks`. Returns each item's step; a
/// broken connection ends the list.
async fn receive_files(
    client: &mut RpcClient,
    files: &Arc<Files>,
    items: &[PullItem],
    id: u64,
    indices: Range<usize>,
    arriving: &mut [Option<Arriving>],
    asks: &mut Asks,
) -> Vec<(usize, Result<(), PullError>)> {
    let first = indices.start;
    let mut due = indices;
    let mut steps = Vec::new();
    loop {
        let copies = match next(client, id).await {
            Ok(SsReply::Files { files }) => files,
            Ok(SsReply::End) if due.is_empty() => break,
            Ok(other) => {
                steps.push((first, Err(unexpected(other))));
                return steps;
            }
            // Refused as a whole: nothing more comes for it.
            Err(PullError::Item(e)) => {
                steps.extend(due.map(|index| (index, Err(PullError::Item(e.clone())))));
                break;
            }
            Err(broken) => {
                steps.push((first, Err(broken)));
                return steps;
            }
        };
        for copied in copies {
            let Some(index) = due.next().filter(|&i| items[i].file == copied.file) else {
                let broken = format!("a GetFiles reply out of step at {:?}", copied.file);
                steps.push((first, Err(PullError::Connection(broken))));
                return steps;
            };
            let item = &items[index];
            let step = match copied.copy {
                Ok(FileCopy::Whole {
                    meta,
                    content,
                    checksum,
                }) => arrive_whole(
                    files,
                    item,
                    index,
                    meta,
                    content.into_vec(),
                    checksum,
                    arriving,
                )
                .map(|more| more.into_iter().for_each(|ask| asks.add(ask))),
                Ok(FileCopy::Large) => {
                    asks.add(Ask {
                        request: PeerRequest::GetFile {
                            file: item.file.clone(),
                            ticket: item.ticket.clone(),
                        },
                        index,
                        tag: None,
                    });
                    Ok(())
                }
                Err(e) => Err(PullError::Item(e)),
            };
            steps.push((index, step));
        }
    }
    steps
}

/// A small file that came whole: checked and kept in memory until its batch
/// is installed; returns the checkpoints it names that are not here, to ask for.
fn arrive_whole(
    files: &Arc<Files>,
    item: &PullItem,
    index: usize,
    meta: FileMeta,
    content: Vec<u8>,
    checksum: u32,
    arriving: &mut [Option<Arriving>],
) -> Result<Vec<Ask>, PullError> {
    if crc32fast::hash(&content) != checksum {
        return Err(checksum_mismatch(&item.file));
    }
    let asks = checkpoints_to_ask(files, item, index, &meta);
    if let Some(a) = &mut arriving[index] {
        let bytes = content.len() as u64;
        a.content_arrived(meta, CopyContent::InMemory(content), asks.len(), bytes);
    }
    Ok(asks)
}

/// A request for one item, not sent yet.
struct Ask {
    request: PeerRequest,
    index: usize,
    /// `Some(tag)` for a checkpoint, `None` for a file's content.
    tag: Option<String>,
}

/// The checkpoints `meta` names that this server lacks, to ask for.
fn checkpoints_to_ask(
    files: &Arc<Files>,
    item: &PullItem,
    index: usize,
    meta: &FileMeta,
) -> Vec<Ask> {
    let have = files.local_checkpoints(&item.file);
    meta.checkpoints
        .iter()
        .filter(|(tag, info)| {
            !have
                .iter()
                .any(|c| &c.tag == *tag && c.created_ms == info.created_ms)
        })
        .map(|(tag, _)| Ask {
            request: PeerRequest::ReadCheckpoint {
                file: item.file.clone(),
                tag: tag.clone(),
                ticket: item.ticket.clone(),
            },
            index,
            tag: Some(tag.clone()),
        })
        .collect()
}

impl Ask {
    /// About what the request takes on the wire (its names, its ticket).
    fn bytes(&self) -> usize {
        let names = match &self.request {
            PeerRequest::GetFile { file, .. } => 2 * file.len(),
            PeerRequest::ReadCheckpoint { file, tag, .. } => 2 * file.len() + tag.len(),
            _ => 0,
        };
        names + 256
    }

    /// Sends it, to be read in turn after the requests in flight.
    async fn send(
        self,
        client: &mut RpcClient,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<(), ConnectionError> {
        let bytes = self.bytes();
        let Ask {
            request,
            index,
            tag,
        } = self;
        let id = client.send(request).await?;
        let item = match tag {
            Some(tag) => OneItem::Checkpoint { id, index, tag },
            None => OneItem::File { id, index },
        };
        in_flight.push_back(InFlight::One(item, bytes));
        Ok(())
    }
}

/// Requests for single items waiting to go, and the bytes of those sent
/// and not yet answered (at most [`ASKS_AHEAD_BYTES`], or one request).
#[derive(Default)]
struct Asks {
    queue: VecDeque<Ask>,
    unanswered: usize,
}

impl Asks {
    fn add(&mut self, ask: Ask) {
        self.queue.push_back(ask);
    }

    fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Drops the requests not yet sent for item `index` (it failed).
    fn forget(&mut self, index: usize) {
        self.queue.retain(|ask| ask.index != index);
    }

    /// The next request to send, if the bound leaves room for it.
    fn next_to_send(&mut self) -> Option<Ask> {
        let bytes = self.queue.front()?.bytes();
        if self.unanswered > 0 && self.unanswered + bytes > ASKS_AHEAD_BYTES {
            return None;
        }
        self.unanswered += bytes;
        self.queue.pop_front()
    }

    /// A request of `bytes` is being answered.
    fn answered(&mut self, bytes: usize) {
        self.unanswered -= bytes;
    }
}

fn checksum_mismatch(file: &str) -> PullError {
    PullError::Item(WireError::new(
        ErrorCode::Internal,
        format!("checksum mismatch copying {file:?}; the old copy is kept"),
    ))
}

/// Reads the replies of the oldest request in flight, one for one item.
async fn receive_step(
    client: &mut RpcClient,
    files: &Arc<Files>,
    item: &PullItem,
    head: OneItem,
    arriving: &mut Option<Arriving>,
    asks: &mut Asks,
) -> Result<(), PullError> {
    match head {
        OneItem::File { id, index } => {
            let meta = match next(client, id).await? {
                SsReply::FileHeader { meta } => meta,
                other => return Err(unexpected(other)),
            };
            let mut content = files.copy_temp_file().map_err(out_of_step)?;
            let (bytes, checksum, end) = receive_into(client, id, &mut content).await?;
            match end {
                SsReply::FileEnd {
                    checksum: sent,
                    size,
                } if sent == checksum && size == bytes => {}
                _ => return Err(checksum_mismatch(&item.file)),
            }
            let more = checkpoints_to_ask(files, item, index, &meta);
            if let Some(a) = arriving {
                a.content_arrived(meta, content.into(), more.len(), bytes);
            }
            more.into_iter().for_each(|ask| asks.add(ask));
            Ok(())
        }
        OneItem::Checkpoint { id, tag, .. } => {
            let mut temp = files.copy_temp_file().map_err(out_of_step)?;
            let (n, _, _) = receive_into(client, id, &mut temp).await?;
            if let Some(a) = arriving {
                a.checkpoints.push((tag, temp));
                a.checkpoints_due -= 1;
                a.bytes += n;
            }
            Ok(())
        }
    }
}

/// Installs batches of copies on a blocking thread of its own, one after
/// another in arrival order, so the next batch arrives while one is made
/// durable (its `syncfs` and names take as long as its transfer). Each
/// batch's outcomes come back as soon as it is installed, so a failure of
/// the thread loses none that were.
struct Installer {
    batches: Option<tokio::sync::mpsc::Sender<Vec<(usize, Copied, u64)>>>,
    installed: tokio::sync::mpsc::UnboundedReceiver<Vec<(usize, Result<Pulled, WireError>)>>,
    done: tokio::task::JoinHandle<()>,
}

impl Installer {
    fn start(files: &Arc<Files>) -> Self {
        // One batch waits while one is installed: the temp files held open
        // stay bounded.
        let (batches, mut queued) = tokio::sync::mpsc::channel::<Vec<(usize, Copied, u64)>>(1);
        let (report, installed) = tokio::sync::mpsc::unbounded_channel();
        let files = files.clone();
        let done = tokio::task::spawn_blocking(move || {
            while let Some(batch) = queued.blocking_recv() {
                let (places, copies): (Vec<(usize, Pulled)>, Vec<Copied>) = batch
                    .into_iter()
                    .map(|(index, copy, bytes)| {
                        let pulled = Pulled {
                            version: copy.meta.stats.version,
                            epoch: copy.meta.stats.epoch,
                            bytes,
                        };
                        ((index, pulled), copy)
                    })
                    .unzip();
                let results = files.install_batch(copies);
                let outcomes = places
                    .into_iter()
                    .zip(results)
                    .map(|((index, pulled), result)| (index, result.map(|()| pulled)))
                    .collect();
                if report.send(outcomes).is_err() {
                    return;
                }
            }
        });
        Installer {
            batches: Some(batches),
            installed,
            done,
        }
    }

    /// Hands the copies waiting in `ready` over (waiting while the batch
    /// before is still queued). If the thread has failed, they are dropped
    /// (their temp files go) and reported not copied.
    async fn install(&mut self, ready: &mut Vec<(usize, Copied, u64)>) {
        if ready.is_empty() {
            return;
        }
        let batch = std::mem::take(ready);
        if let Some(batches) = &self.batches {
            let _ = batches.send(batch).await;
        }
    }

    /// Waits for every batch handed over and records their outcomes.
    async fn finish(mut self, outcomes: &mut [Option<Result<Pulled, WireError>>]) {
        drop(self.batches.take());
        while let Some(installed) = self.installed.recv().await {
            for (index, outcome) in installed {
                outcomes[index] = Some(outcome);
            }
        }
        if let Err(e) = (&mut self.done).await {
            tracing::error!(event = "ss_install_failed", error = %e, "the installing thread failed; the files of its last batch are reported not copied");
        }
    }
}

async fn next(client: &mut RpcClient, id: u64) -> Result<SsReply, PullError> {
    Ok(client.next_reply::<SsReply>(id).await??)
}

/// Streams replies to `id` into a temp file until the end; returns the bytes
/// and checksum seen. A reply cut short here leaves the connection out of
/// step, so a local write failure counts as a broken connection.
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
                temp.write_all(&data)
                    .map_err(|e| PullError::Connection(format!("writing a transfer: {e}")))?;
            }
            // A large file, unframed: through one buffer into the temp file.
            SsReply::Raw { size } => {
                client
                    .recv_raw(size, RAW_BUFFER, |data| {
                        hasher.update(data);
                        temp.write_all(data)
                    })
                    .await
                    .map_err(|e| PullError::Connection(format!("receiving a transfer: {e}")))?;
                bytes += size;
            }
            end @ (SsReply::FileEnd { .. } | SsReply::End) => {
                return Ok((bytes, hasher.finalize(), end))
            }
            other => return Err(unexpected(other)),
        }
    }
}

/// A local failure while replies are still due: the connection is out of step.
fn out_of_step(e: WireError) -> PullError {
    PullError::Connection(e.message)
}

fn unexpected(reply: SsReply) -> PullError {
    PullError::Connection(format!("unexpected reply during a transfer: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::connection::DEFAULT_MAX_FRAME;
    use shared::proto::{Op, Request};

    fn items(name_len: usize, count: usize) -> Vec<PullItem> {
        let key = shared::auth::ClusterKey::new(vec![7; 64])
            .unwrap()
            .ticket_key();
        (0..count)
            .map(|i| {
                let file = format!("{i:04}{}", "x".repeat(name_len - 4));
                PullItem {
                    ticket: key.issue("ss1_backup", &file, Op::Read, 1, 0),
                    file,
                }
            })
            .collect()
    }

    #[test]
    fn requests_for_single_items_go_out_only_as_far_ahead_as_the_bound() {
        let mut asks = Asks::default();
        for index in 0..1000 {
            asks.add(Ask {
                request: PeerRequest::ReadCheckpoint {
                    file: format!("file-{index:04}"),
                    tag: "v1".into(),
                    ticket: items(8, 1)[0].ticket.clone(),
                },
                index,
                tag: Some("v1".into()),
            });
        }
        let mut sent = Vec::new();
        while let Some(ask) = asks.next_to_send() {
            sent.push(ask.bytes());
        }
        assert!(sent.len() > 1 && sent.len() < 1000, "{} sent", sent.len());
        assert!(sent.iter().sum::<usize>() <= ASKS_AHEAD_BYTES);
        // The oldest is being answered: room for about one more.
        asks.answered(sent[0]);
        assert!(asks.next_to_send().is_some());
        assert!(asks.next_to_send().is_none());
        // However large, one request always goes when none is unanswered.
        let mut alone = Asks::default();
        alone.add(Ask {
            request: PeerRequest::GetFile {
                file: "x".repeat(40_000),
                ticket: items(8, 1)[0].ticket.clone(),
            },
            index: 0,
            tag: None,
        });
        assert!(alone.next_to_send().is_some());
    }

    #[test]
    fn a_batch_request_stays_far_under_a_frame_however_long_the_names() {
        for (name_len, count) in [(8, 1000), (4096, 1000)] {
            let items = items(name_len, count);
            let mut start = 0;
            while start < items.len() {
                let end = request_end(&items, start);
                assert!(end > start && end - start <= FILES_PER_REQUEST);
                let request = Request {
                    id: 1,
                    body: PeerRequest::GetFiles {
                        items: items[start..end].to_vec(),
                    },
                };
                let size = rmp_serde::to_vec_named(&request).unwrap().len();
                assert!(
                    size < DEFAULT_MAX_FRAME / 2,
                    "{size} bytes for names of {name_len}"
                );
                start = end;
            }
        }
    }
}
