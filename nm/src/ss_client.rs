//! nm's connections to a storage server, for the commands it forwards
//! (CREATE, DELETE, UNDO). A small pool per server: a connection is taken for
//! one call and put back, so concurrent commands do not queue behind each other.

use shared::connection::{ConnectionError, RpcClient};
use shared::proto::{InventoryEntry, Role, SsCommand, SsReply, Tombstone, UnconfirmedLevel};
use shared::WireError;
use std::sync::Mutex;
use std::time::Duration;

const MAX_IDLE: usize = 16;

pub struct SsClient {
    name: String,
    address: String,
    timeout: Duration,
    idle: Mutex<Vec<RpcClient>>,
    key: Option<shared::auth::ClusterKey>,
}

impl SsClient {
    pub fn new(
        name: &str,
        address: &str,
        timeout: Duration,
        key: Option<shared::auth::ClusterKey>,
    ) -> Self {
        SsClient {
            name: name.to_owned(),
            address: address.to_owned(),
            timeout,
            idle: Mutex::new(Vec::new()),
            key,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn take_idle(&self) -> Option<RpcClient> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_back(&self, client: RpcClient) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    /// Sends one command and waits for its answer. A pooled connection that
    /// turns out to be dead (the server restarted) is replaced once.
    pub async fn call(&self, request: SsCommand) -> Result<SsReply, WireError> {
        if let Some(client) = self.take_idle() {
            match self.call_on(client, request.clone()).await {
                Err(CallError::Connection(e)) => {
                    tracing::debug!(event = "nm_ss_stale_connection", server = %self.name, error = %e);
                }
                other => return other.map_err(|e| self.to_wire(e)),
            }
        }
        let client = self.fresh().await?;
        self.call_on(client, request)
            .await
            .map_err(|e| self.to_wire(e))
    }

    /// A new connection to the server, within the timeout.
    async fn fresh(&self) -> Result<RpcClient, WireError> {
        tokio::time::timeout(
            self.timeout,
            RpcClient::connect_keyed(&self.address, Role::NameManager, "nm", self.key.as_ref()),
        )
        .await
        .map_err(|_| self.to_wire(CallError::Timeout))?
        .map_err(|e| self.to_wire(CallError::Connection(e)))
    }

    /// Sends a request answered in several replies, on a connection of its
    /// own; `each` sees them in turn and returns `true` at the last one.
    async fn streamed(
        &self,
        request: SsCommand,
        mut each: impl FnMut(SsReply) -> Result<bool, WireError>,
    ) -> Result<(), WireError> {
        let mut client = self.fresh().await?;
        // The timeout is for each reply, not the whole stream: a long
        // inventory or a large file keeps arriving, a silent server does not.
        let timeout = self.timeout;
        let read = async {
            let id = tokio::time::timeout(timeout, client.send(request))
                .await
                .map_err(|_| CallError::Timeout)?
                .map_err(CallError::Connection)?;
            loop {
                let reply = tokio::time::timeout(timeout, client.next_reply::<SsReply>(id))
                    .await
                    .map_err(|_| CallError::Timeout)?
                    .map_err(CallError::Connection)?
                    .map_err(CallError::Refused)?;
                if each(reply).map_err(CallError::Refused)? {
                    return Ok(());
                }
            }
        };
        read.await.map_err(|e| self.to_wire(e))
    }

    /// Reads a whole content (READ with nm's own ticket), refusing more than `limit` bytes.
    pub async fn read_all(&self, request: SsCommand, limit: usize) -> Result<Vec<u8>, WireError> {
        let mut content = Vec::new();
        self.streamed(request, |reply| match reply {
            SsReply::Chunk { data } if content.len() + data.len() > limit => Err(WireError::new(
                shared::ErrorCode::TooLarge,
                format!("the content is larger than {limit} bytes"),
            )),
            SsReply::Chunk { data } => {
                content.extend_from_slice(&data);
                Ok(false)
            }
            SsReply::End => Ok(true),
            other => Err(WireError::internal(format!(
                "unexpected reply to a read: {other:?}"
            ))),
        })
        .await?;
        Ok(content)
    }

    /// The server's inventory and tombstones, gathered from its pages.
    pub async fn inventory(&self) -> Result<(Vec<InventoryEntry>, Vec<Tombstone>), WireError> {
        self.inventory_pages(SsCommand::Inventory).await
    }

    /// The server's inventory a page at a time, read as the caller asks
    /// for the next page (see [`InventoryPages`]): nothing is gathered, so
    /// a million files cost one page.
    pub async fn inventory_by_page(&self) -> Result<InventoryPages<'_>, WireError> {
        let mut client = self.fresh().await?;
        let id = tokio::time::timeout(self.timeout, client.send(SsCommand::Inventory))
            .await
            .map_err(|_| self.to_wire(CallError::Timeout))?
            .map_err(|e| self.to_wire(CallError::Connection(e)))?;
        Ok(InventoryPages {
            server: self,
            client,
            id,
            done: false,
        })
    }

    /// What the server recorded of its standby: the files it may lack (see
    /// `ss::unconfirmed`), as `(mark, level, files)`.
    pub async fn unconfirmed(
        &self,
    ) -> Result<(u64, Option<UnconfirmedLevel>, Vec<String>), WireError> {
        match self.call(SsCommand::Unconfirmed).await? {
            SsReply::Unconfirmed { mark, level, files } => Ok((mark, level, files)),
            other => Err(WireError::internal(format!(
                "unexpected reply to UNCONFIRMED: {other:?}"
            ))),
        }
    }

    /// The entries of those of `files` the server holds, and its tombstones.
    pub async fn inventory_of(
        &self,
        files: &[String],
    ) -> Result<(Vec<InventoryEntry>, Vec<Tombstone>), WireError> {
        // Names per request, well under the frame limit.
        const NAMES_PER_REQUEST: usize = 4096;
        let mut chunks: Vec<&[String]> = files.chunks(NAMES_PER_REQUEST).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let (mut held, mut dead) = (Vec::new(), Vec::new());
        for (i, chunk) in chunks.into_iter().enumerate() {
            let request = SsCommand::InventoryOf {
                files: chunk.to_vec(),
            };
            let (entries, tombstones) = self.inventory_pages(request).await?;
            held.extend(entries);
            // Every answer carries all tombstones; one copy is enough.
            if i == 0 {
                dead = tombstones;
            }
        }
        Ok((held, dead))
    }

    async fn inventory_pages(
        &self,
        request: SsCommand,
    ) -> Result<(Vec<InventoryEntry>, Vec<Tombstone>), WireError> {
        let (mut files, mut dead) = (Vec::new(), Vec::new());
        self.streamed(request, |reply| match reply {
            SsReply::Inventory {
                files: page,
                tombstones,
            } => {
                files.extend(page);
                dead.extend(tombstones);
                Ok(false)
            }
            SsReply::End => Ok(true),
            other => Err(WireError::internal(format!(
                "unexpected reply to Inventory: {other:?}"
            ))),
        })
        .await?;
        Ok((files, dead))
    }

    async fn call_on(
        &self,
        mut client: RpcClient,
        request: SsCommand,
    ) -> Result<SsReply, CallError> {
        let reply = tokio::time::timeout(self.timeout, client.call::<_, SsReply>(request))
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(CallError::Connection)?;
        self.put_back(client);
        reply.map_err(CallError::Refused)
    }

    fn to_wire(&self, e: CallError) -> WireError {
        match e {
            CallError::Refused(e) => e,
            CallError::Timeout => WireError::unavailable(format!(
                "storage server {} did not answer in time; retry later",
                self.name
            )),
            CallError::Connection(e) => WireError::unavailable(format!(
                "storage server {} is unreachable ({e}); retry later",
                self.name
            )),
        }
    }
}

/// An inventory being read from a storage server, page by page (its
/// tombstones are left out). Dropping it closes the connection.
pub struct InventoryPages<'a> {
    server: &'a SsClient,
    client: RpcClient,
    id: u64,
    done: bool,
}

impl InventoryPages<'_> {
    /// The next page (an empty one while the server's start-up scan runs),
    /// or `None` after the last. The timeout is for each page.
    pub async fn next(&mut self) -> Result<Option<Vec<InventoryEntry>>, WireError> {
        if self.done {
            return Ok(None);
        }
        let reply = tokio::time::timeout(
            self.server.timeout,
            self.client.next_reply::<SsReply>(self.id),
        )
        .await
        .map_err(|_| self.server.to_wire(CallError::Timeout))?
        .map_err(|e| self.server.to_wire(CallError::Connection(e)))?
        .map_err(|e| self.server.to_wire(CallError::Refused(e)))?;
        match reply {
            SsReply::Inventory { files, .. } => Ok(Some(files)),
            SsReply::End => {
                self.done = true;
                Ok(None)
            }
            other => Err(WireError::internal(format!(
                "unexpected reply to Inventory: {other:?}"
            ))),
        }
    }
}

enum CallError {
    Connection(ConnectionError),
    Timeout,
    Refused(WireError),
}
