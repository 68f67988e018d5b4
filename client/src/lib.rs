//! A client of the cluster: one connection to nm, and direct connections to
//! the storage servers nm sends it to (kept open and reused).
//!
//! Every failure comes back as a [`WireError`]; a lost connection is
//! `E_UNAVAILABLE`, and the next call through nm dials again.

use shared::connection::{ConnectionError, RpcClient};
use shared::proto::{
    ChangeMade, EditLine, Event, FileStats, Location, NmReply, NmRequest, Op, Role, SsReply,
    SsRequest, MAX_CHANGES_AWAITED,
};
use shared::WireError;
use std::collections::HashMap;

pub struct Client {
    user: String,
    /// nm, or every nm of a group (`--nm A,B,C`).
    nm_addresses: Vec<String>,
    /// The nm last reached (the leader, in a group).
    nm_address: String,
    nm: Option<RpcClient>,
    servers: HashMap<String, RpcClient>,
    /// The server address of the open WRITE, if any.
    open_write: Option<String>,
    /// The file of the open WRITE.
    open_write_file: Option<String>,
    /// Changes made on storage servers since the last request nm answered:
    /// the next one waits for nm to have heard of them (read-your-writes;
    /// see `NmRequest::AwaitChanges`).
    changes_made: Vec<ChangeMade>,
    /// Edit lines of the open WRITE sent without waiting for their answers
    /// (their request ids, in order; see [`Client::write_edit_pipelined`]).
    unanswered_edits: Vec<u64>,
    /// Where to WRITE the file this client created last (nm's answer to
    /// CREATE), used once by the next WRITE of that file instead of a LOCATE.
    created: Option<(String, Location)>,
    /// How long to wait for each reply of a storage server before giving it
    /// up as hung (its connection is dropped; the next call asks nm again).
    reply_timeout: std::time::Duration,
}

/// The longest wait for nm's answer to one request (nm forwards some to a
/// storage server, which has its own time limit within this one).
pub const NM_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Edit lines of one WRITE sent ahead of their answers, at most
/// (see [`Client::write_edit_pipelined`]).
pub const EDITS_IN_FLIGHT: usize = 64;

/// The default wait for a storage server's reply.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn unexpected<T: std::fmt::Debug>(reply: T) -> WireError {
    WireError::internal(format!("unexpected reply: {reply:?}"))
}

impl Client {
    /// Connects to nm as `user`. `nm_addresses`: one address, or an nm
    /// group's (`A,B,C`): the client goes to the leader and follows it.
    pub async fn connect(nm_addresses: &str, user: &str) -> Result<Self, ConnectionError> {
        let addresses = shared::leader::parse_addresses(nm_addresses);
        let (nm, reached) =
            shared::leader::connect_to_leader(&addresses, None, Role::Client, user, None).await?;
        Ok(Client {
            user: user.to_owned(),
            nm_addresses: addresses,
            nm_address: reached,
            nm: Some(nm),
            servers: HashMap::new(),
            open_write: None,
            open_write_file: None,
            changes_made: Vec::new(),
            unanswered_edits: Vec::new(),
            created: None,
            reply_timeout: REPLY_TIMEOUT,
        })
    }

    /// Sets how long to wait for each reply of a storage server.
    pub fn set_reply_timeout(&mut self, timeout: std::time::Duration) {
        self.reply_timeout = timeout;
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The nm this client last reached (the leader, in a group).
    pub fn nm_address(&self) -> &str {
        &self.nm_address
    }

    /// Dials the leader: the one last reached first, then the others.
    /// Returns the connection and the address it reached.
    async fn dial_leader(&self) -> Result<(RpcClient, String), WireError> {
        shared::leader::connect_to_leader(
            &self.nm_addresses,
            Some(&self.nm_address),
            Role::Client,
            &self.user,
            None,
        )
        .await
        .map_err(|e| e.to_wire())
    }

    /// Dials the leader for this client's requests, and remembers it.
    async fn dial_nm(&mut self) -> Result<RpcClient, WireError> {
        let (nm, reached) = self.dial_leader().await?;
        self.nm_address = reached;
        Ok(nm)
    }

    /// One request to nm; reconnects once if the connection was lost or
    /// nm turned out not to lead (any more).
    pub async fn nm(&mut self, request: NmRequest) -> Result<NmReply, WireError> {
        for attempt in 0..2 {
            if self.nm.is_none() {
                let nm = self.dial_nm().await?;
                self.nm = Some(nm);
            }
            let nm = self.nm.as_mut().expect("connected above");
            // A silent nm (partitioned away, hung) must not hold the client forever.
            let call = tokio::time::timeout(
                NM_REPLY_TIMEOUT,
                call_after(nm, &self.changes_made, request.clone()),
            );
            let Ok(answer) = call.await else {
                self.nm = None;
                if attempt == 1 {
                    return Err(WireError::new(
                        shared::ErrorCode::Timeout,
                        format!(
                            "nm at {} did not answer within {} s",
                            self.nm_address,
                            NM_REPLY_TIMEOUT.as_secs()
                        ),
                    ));
                }
                continue;
            };
            match answer {
                Ok(Err(e)) if e.code == shared::ErrorCode::NotLeader && attempt == 0 => {
                    self.nm = None;
                    if let Some(leader) = e.leader {
                        self.nm_address = leader;
                    }
                }
                Ok(reply) => {
                    self.changes_made.clear();
                    return reply;
                }
                Err(e) => {
                    self.nm = None;
                    if attempt == 1 {
                        return Err(e.to_wire());
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Remembers a change this client made on a storage server, for its
    /// next request to nm.
    fn made(&mut self, file: &str, stats: &FileStats) {
        let change = ChangeMade {
            file: file.to_owned(),
            epoch: stats.epoch,
            version: stats.version,
        };
        self.changes_made.retain(|c| c.file != file);
        if self.changes_made.len() == MAX_CHANGES_AWAITED {
            self.changes_made.remove(0);
        }
        self.changes_made.push(change);
    }

    pub async fn locate(&mut self, file: &str, op: Op) -> Result<Location, WireError> {
        match self
            .nm(NmRequest::Locate {
                file: file.to_owned(),
                op,
            })
            .await?
        {
            NmReply::Located { location } => Ok(location),
            other => Err(unexpected(other)),
        }
    }

    async fn server(&mut self, address: &str) -> Result<&mut RpcClient, WireError> {
        if !self.servers.contains_key(address) {
            let connect = RpcClient::connect(address, Role::Client, &self.user);
            let client = tokio::time::timeout(self.reply_timeout, connect)
                .await
                .map_err(|_| {
                    WireError::unavailable(format!(
                        "the storage server at {address} did not answer"
                    ))
                })?
                .map_err(|e| e.to_wire())?;
            self.servers.insert(address.to_owned(), client);
        }
        Ok(self.servers.get_mut(address).expect("inserted above"))
    }

    /// Sends a request to a storage server and passes each reply to `each`
    /// until `End` (or the first non-streamed reply, which is returned).
    async fn exchange(
        &mut self,
        address: &str,
        request: SsRequest,
        mut each: impl FnMut(SsReply) -> Result<(), WireError>,
    ) -> Result<SsReply, WireError> {
        let streamed = matches!(
            request,
            SsRequest::Read { .. } | SsRequest::Stream { .. } | SsRequest::ReadCheckpoint { .. }
        );
        let timeout = self.reply_timeout;
        let result: Result<SsReply, WireError> = async {
            let server = self.server(address).await?;
            let id = server.send(request).await.map_err(|e| e.to_wire())?;
            loop {
                let reply = reply_within(server, address, id, timeout).await?;
                match reply {
                    SsReply::Chunk { .. } | SsReply::Word { .. } if streamed => each(reply)?,
                    other => return Ok(other),
                }
            }
        }
        .await;
        if let Err(e) = &result {
            if e.code == shared::ErrorCode::Unavailable {
                self.servers.remove(address);
            }
        }
        result
    }

    /// READ: the whole content.
    pub async fn read(&mut self, file: &str) -> Result<Vec<u8>, WireError> {
        let location = self.locate(file, Op::Read).await?;
        let request = SsRequest::Read {
            file: file.to_owned(),
            ticket: location.ticket,
        };
        self.fetch(&location.address, request).await
    }

    /// A content sent in chunks (READ, VIEWCHECKPOINT), gathered.
    async fn fetch(&mut self, address: &str, request: SsRequest) -> Result<Vec<u8>, WireError> {
        let mut content = Vec::new();
        let end = self
            .exchange(address, request, |reply| {
                if let SsReply::Chunk { data } = reply {
                    content.extend_from_slice(&data);
                }
                Ok(())
            })
            .await?;
        match end {
            SsReply::End => Ok(content),
            other => Err(unexpected(other)),
        }
    }

    /// WATCH: cluster events from a subscription of its own, for `duration`
    /// (or until nm goes away). Returns how many arrived.
    pub async fn watch(
        &self,
        duration: Option<std::time::Duration>,
        snapshots: Option<std::time::Duration>,
        recent: u32,
        mut on_event: impl FnMut(Event),
    ) -> Result<u64, WireError> {
        let (mut subscription, _) = self.dial_leader().await?;
        let id = subscription
            .send(NmRequest::Watch {
                snapshot_every_ms: snapshots.map(|d| d.as_millis() as u64),
                recent,
            })
            .await
            .map_err(|e| e.to_wire())?;
        match subscription
            .next_reply::<NmReply>(id)
            .await
            .map_err(|e| e.to_wire())??
        {
            NmReply::Subscribed => {}
            other => return Err(unexpected(other)),
        }
        let mut count = 0;
        let receive = async {
            loop {
                match subscription.next_reply::<NmReply>(id).await {
                    Ok(Ok(NmReply::Event { event })) => {
                        count += 1;
                        on_event(event);
                    }
                    Ok(Ok(other)) => return Err(unexpected(other)),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(e.to_wire()),
                }
            }
        };
        match duration {
            Some(d) => {
                // Running out of time is the normal end of a timed WATCH.
                if let Ok(Err(e)) = tokio::time::timeout(d, receive).await {
                    return Err(e);
                }
            }
            None => receive.await?,
        }
        Ok(count)
    }

    /// VIEWCHECKPOINT: a checkpoint's content.
    pub async fn view_checkpoint(&mut self, file: &str, tag: &str) -> Result<Vec<u8>, WireError> {
        let location = self.locate(file, Op::Read).await?;
        let request = SsRequest::ReadCheckpoint {
            file: file.to_owned(),
            tag: tag.to_owned(),
            ticket: location.ticket,
        };
        self.fetch(&location.address, request).await
    }

    /// STREAM: calls `on_word` for each word as it arrives; returns them all.
    pub async fn stream(
        &mut self,
        file: &str,
        mut on_word: impl FnMut(&str),
    ) -> Result<Vec<String>, WireError> {
        let location = self.locate(file, Op::Stream).await?;
        let mut words = Vec::new();
        let request = SsRequest::Stream {
            file: file.to_owned(),
            ticket: location.ticket,
        };
        let result = self
            .exchange(&location.address, request, |reply| {
                if let SsReply::Word { word } = reply {
                    on_word(&word);
                    words.push(word);
                }
                Ok(())
            })
            .await;
        match result {
            Ok(SsReply::End) => Ok(words),
            Ok(other) => Err(unexpected(other)),
            Err(e) if e.code == shared::ErrorCode::Unavailable && !words.is_empty() => {
                Err(WireError::unavailable(format!(
                    "stream interrupted after {} words: the storage server went away ({})",
                    words.len(),
                    e.message
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// WRITE f n: locks the sentence; returns its word count.
    pub async fn write_begin(&mut self, file: &str, sentence: i64) -> Result<u64, WireError> {
        if self.open_write.is_some() {
            return Err(WireError::bad_request(
                "a WRITE is already open; end it with ETIRW",
            ));
        }
        let created = self.created.take().filter(|(f, _)| f == file);
        let Some((_, location)) = created else {
            let location = self.locate(file, Op::Write).await?;
            return self.begin_at(location, file, sentence).await;
        };
        match self.begin_at(location, file, sentence).await {
            // The location from CREATE may be stale (a failover, an expired
            // ticket): ask nm, once.
            Err(_) => {
                let location = self.locate(file, Op::Write).await?;
                self.begin_at(location, file, sentence).await
            }
            begun => begun,
        }
    }

    /// CREATE f. nm answers with where to WRITE the new file, kept for the
    /// WRITE that usually follows (one LOCATE fewer).
    pub async fn create(&mut self, file: &str) -> Result<(), WireError> {
        let request = NmRequest::CreateAndLocate {
            file: file.to_owned(),
        };
        match self.nm(request).await? {
            NmReply::Located { location } => {
                self.created = Some((file.to_owned(), location));
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn begin_at(
        &mut self,
        location: Location,
        file: &str,
        sentence: i64,
    ) -> Result<u64, WireError> {
        let request = SsRequest::WriteBegin {
            file: file.to_owned(),
            sentence,
            ticket: location.ticket,
        };
        match self
            .exchange(&location.address, request, |_| Ok(()))
            .await?
        {
            SsReply::WriteOpen { words } => {
                self.open_write = Some(location.address);
                self.open_write_file = Some(file.to_owned());
                Ok(words)
            }
            other => Err(unexpected(other)),
        }
    }

    fn open_write_address(&self) -> Result<String, WireError> {
        self.open_write
            .clone()
            .ok_or_else(|| WireError::bad_request("no WRITE is open"))
    }

    /// One edit line of the open WRITE; returns the working copy's word count.
    pub async fn write_edit(&mut self, word_index: i64, content: &str) -> Result<u64, WireError> {
        debug_assert!(
            self.unanswered_edits.is_empty(),
            "edit lines sent ahead are answered first"
        );
        let address = self.open_write_address()?;
        let request = SsRequest::WriteEdit {
            word_index,
            content: content.to_owned(),
        };
        let result = self.exchange(&address, request, |_| Ok(())).await;
        if matches!(&result, Err(e) if e.code == shared::ErrorCode::Unavailable) {
            self.open_write = None;
        }
        match result? {
            SsReply::Edited { words } => Ok(words),
            other => Err(unexpected(other)),
        }
    }

    /// One edit line of the open WRITE, sent without waiting for its answer
    /// (the server answers a connection's requests in order); the answers
    /// come with [`Client::write_edit_answers`], which must be read before
    /// anything else is sent to that server (ETIRW included: a WRITE whose
    /// edits went unanswered is never committed). A script's WRITE block
    /// saves a round trip per line this way; a refused line changes nothing
    /// there, so the lines after it mean the same either way. At most
    /// [`EDITS_IN_FLIGHT`] are sent ahead; past that this reads the oldest
    /// answers first, so replies never fill the connection.
    pub async fn write_edit_pipelined(
        &mut self,
        word_index: i64,
        content: &str,
    ) -> Result<Vec<Result<u64, WireError>>, WireError> {
        let address = self.open_write_address()?;
        let earlier = if self.unanswered_edits.len() >= EDITS_IN_FLIGHT {
            self.write_edit_answers().await
        } else {
            Vec::new()
        };
        if self.open_write.is_none() {
            // One of those answers says the WRITE was lost.
            let lost = earlier
                .into_iter()
                .find_map(|a| a.err().filter(|e| e.code == shared::ErrorCode::Unavailable));
            return Err(lost.unwrap_or_else(|| WireError::unavailable("the WRITE was lost")));
        }
        let request = SsRequest::WriteEdit {
            word_index,
            content: content.to_owned(),
        };
        let id = self.send_to(&address, request).await?;
        self.unanswered_edits.push(id);
        Ok(earlier)
    }

    /// The answers to the edit lines sent ahead, in order (each the working
    /// copy's word count, or why the line was refused). A lost WRITE
    /// (`E_UNAVAILABLE`) closes it here, as [`Client::write_edit`] does.
    pub async fn write_edit_answers(&mut self) -> Vec<Result<u64, WireError>> {
        let ids = std::mem::take(&mut self.unanswered_edits);
        let Some(address) = self.open_write.clone() else {
            return Vec::new();
        };
        let answers = self.edit_answers(&address, ids).await;
        if answers
            .iter()
            .any(|a| matches!(a, Err(e) if e.code == shared::ErrorCode::Unavailable))
        {
            self.open_write = None;
        }
        answers
    }

    async fn edit_answers(&mut self, address: &str, ids: Vec<u64>) -> Vec<Result<u64, WireError>> {
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            answers.push(
                self.answer_of(address, id)
                    .await
                    .and_then(|reply| match reply {
                        SsReply::Edited { words } => Ok(words),
                        other => Err(unexpected(other)),
                    }),
            );
        }
        answers
    }

    /// Sends one request to a storage server without reading its answer.
    async fn send_to(&mut self, address: &str, request: SsRequest) -> Result<u64, WireError> {
        let sent = match self.server(address).await {
            Ok(server) => server.send(request).await.map_err(|e| e.to_wire()),
            Err(e) => Err(e),
        };
        if sent.is_err() {
            self.servers.remove(address);
        }
        sent
    }

    /// The answer to request `id`, already sent to `address`.
    async fn answer_of(&mut self, address: &str, id: u64) -> Result<SsReply, WireError> {
        let timeout = self.reply_timeout;
        let result = match self.servers.get_mut(address) {
            Some(server) => reply_within(server, address, id, timeout).await,
            None => Err(WireError::unavailable(format!(
                "the connection to the storage server at {address} was lost"
            ))),
        };
        if matches!(&result, Err(e) if e.code == shared::ErrorCode::Unavailable) {
            self.servers.remove(address);
        }
        result
    }

    /// A whole WRITE block (WRITE, `edits`, ETIRW) in one request: the
    /// file's stats after the commit, and each edit line's answer in order.
    /// As with [`Client::write_begin`], the location a CREATE just gave is
    /// used first, and nm is asked again (once) if the block could not begin
    /// there; a block that was sent and may have been committed is never
    /// sent twice.
    pub async fn write_block(
        &mut self,
        file: &str,
        sentence: i64,
        edits: Vec<EditLine>,
    ) -> Result<(FileStats, Vec<Result<u64, WireError>>), WireError> {
        if self.open_write.is_some() {
            return Err(WireError::bad_request(
                "a WRITE is already open; end it with ETIRW",
            ));
        }
        let created = self.created.take().filter(|(f, _)| f == file);
        let (location, asked) = match created {
            Some((_, location)) => (location, false),
            None => (self.locate(file, Op::Write).await?, true),
        };
        match self
            .block_at(location, file, sentence, edits.clone())
            .await?
        {
            // Only what a stale location looks like (its server gone or
            // not serving, its ticket from an older epoch) is worth asking
            // nm again; a locked sentence or a bad index would be the same.
            BlockTry::NotBegun(e)
                if !asked
                    && matches!(
                        e.code,
                        shared::ErrorCode::Unavailable | shared::ErrorCode::Unauthorized
                    ) =>
            {
                let location = self.locate(file, Op::Write).await?;
                match self.block_at(location, file, sentence, edits).await? {
                    BlockTry::Written(stats, answers) => Ok((stats, answers)),
                    BlockTry::NotBegun(error) => Err(error),
                }
            }
            BlockTry::NotBegun(error) => Err(error),
            BlockTry::Written(stats, answers) => Ok((stats, answers)),
        }
    }

    async fn block_at(
        &mut self,
        location: Location,
        file: &str,
        sentence: i64,
        edits: Vec<EditLine>,
    ) -> Result<BlockTry, WireError> {
        let request = SsRequest::WriteBlock {
            file: file.to_owned(),
            sentence,
            ticket: location.ticket,
            edits,
        };
        // A kept connection its server closed (it went away) is not used:
        // the block could not be known unsent there.
        if self
            .servers
            .get(&location.address)
            .is_some_and(|server| server.peer_closed())
        {
            self.servers.remove(&location.address);
        }
        // Not sent (no connection, or it broke before the request went out):
        // nothing can have changed.
        let id = match self.send_to(&location.address, request).await {
            Ok(id) => id,
            Err(e) => return Ok(BlockTry::NotBegun(e)),
        };
        match self.answer_of(&location.address, id).await? {
            SsReply::BlockWritten { stats, answers } => {
                self.made(file, &stats);
                Ok(BlockTry::Written(stats, answers))
            }
            SsReply::BlockNotBegun { error } => Ok(BlockTry::NotBegun(error)),
            other => Err(unexpected(other)),
        }
    }

    /// ETIRW: commits the open WRITE.
    pub async fn write_commit(&mut self) -> Result<FileStats, WireError> {
        debug_assert!(
            self.unanswered_edits.is_empty(),
            "edit lines sent ahead are answered first"
        );
        let address = self.open_write_address()?;
        self.open_write = None;
        match self
            .exchange(&address, SsRequest::WriteCommit, |_| Ok(()))
            .await?
        {
            SsReply::Applied { stats, .. } => {
                if let Some(file) = self.open_write_file.take() {
                    self.made(&file, &stats);
                }
                Ok(stats)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Abandons the open WRITE, releasing its lock.
    pub async fn write_abort(&mut self) {
        let _ = self.write_edit_answers().await;
        if let Some(address) = self.open_write.take() {
            let _ = self
                .exchange(&address, SsRequest::WriteAbort, |_| Ok(()))
                .await;
        }
    }
}

/// One request to nm, preceded (pipelined, in one round trip) by an
/// `AwaitChanges` for `changes` if there are any: nm answers the request
/// once it has heard of them.
async fn call_after(
    nm: &mut RpcClient,
    changes: &[ChangeMade],
    request: NmRequest,
) -> Result<Result<NmReply, WireError>, ConnectionError> {
    if changes.is_empty() {
        return nm.call(request).await;
    }
    // Both in one write: nm reads them together and answers both at once.
    let awaited = nm
        .feed(NmRequest::AwaitChanges {
            changes: changes.to_vec(),
        })
        .await?;
    let id = nm.send(request).await?;
    // Its answer says nothing the request's does not (an nm that does not
    // know it answers with an error, and the request is still served).
    let _ = nm.next_reply::<NmReply>(awaited).await?;
    nm.next_reply(id).await
}

/// What became of a WRITE block sent to one storage server.
enum BlockTry {
    Written(FileStats, Vec<Result<u64, WireError>>),
    /// Nothing changed there: it may go elsewhere.
    NotBegun(WireError),
}

/// The next reply on `server`, which must answer request `id`, within `timeout`.
async fn reply_within(
    server: &mut RpcClient,
    address: &str,
    id: u64,
    timeout: std::time::Duration,
) -> Result<SsReply, WireError> {
    tokio::time::timeout(timeout, server.next_reply::<SsReply>(id))
        .await
        .map_err(|_| {
            WireError::unavailable(format!(
                "the storage server at {address} did not answer within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| e.to_wire())?
}
