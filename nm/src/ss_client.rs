//! nm's connections to a storage server, for the commands it forwards
//! (CREATE, DELETE, UNDO). A small pool per server: a connection is taken for
//! one call and put back, so concurrent commands do not queue behind each other.

use shared::connection::{ConnectionError, RpcClient};
use shared::proto::{Role, SsReply, SsRequest};
use shared::WireError;
use std::sync::Mutex;
use std::time::Duration;

const MAX_IDLE: usize = 16;

pub struct SsClient {
    name: String,
    address: String,
    timeout: Duration,
    idle: Mutex<Vec<RpcClient>>,
}

impl SsClient {
    pub fn new(name: &str, address: &str, timeout: Duration) -> Self {
        SsClient {
            name: name.to_owned(),
            address: address.to_owned(),
            timeout,
            idle: Mutex::new(Vec::new()),
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
    pub async fn call(&self, request: SsRequest) -> Result<SsReply, WireError> {
        if let Some(client) = self.take_idle() {
            match self.call_on(client, request.clone()).await {
                Err(CallError::Connection(e)) => {
                    tracing::debug!(event = "nm_ss_stale_connection", server = %self.name, error = %e);
                }
                other => return other.map_err(|e| self.to_wire(e)),
            }
        }
        let client = tokio::time::timeout(
            self.timeout,
            RpcClient::connect(&self.address, Role::NameManager, "nm"),
        )
        .await
        .map_err(|_| self.to_wire(CallError::Timeout))?
        .map_err(|e| self.to_wire(CallError::Connection(e)))?;
        self.call_on(client, request)
            .await
            .map_err(|e| self.to_wire(e))
    }

    async fn call_on(
        &self,
        mut client: RpcClient,
        request: SsRequest,
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

enum CallError {
    Connection(ConnectionError),
    Timeout,
    Refused(WireError),
}
