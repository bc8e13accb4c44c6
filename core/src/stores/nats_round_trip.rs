//! A round trip through the NATS server: proof that the server has processed every command this
//! node's connection sent before it. A join needs it (the room's SUB must be live before the
//! join is answered, or an event published right after could miss the new member), and so does
//! readiness (after a reconnect, the restored SUBs must be live before the node takes traffic).
//!
//! `Client::flush` only writes the socket, and async-nats tells nobody when the server's PONG
//! comes back. So each connection keeps an echo: a subscription on a subject of its own (an inbox
//! name, unique to the connection) whose task answers every request. The answer can only come
//! after the server processed the request, and so every command queued before it. After a
//! reconnect, async-nats queues the SUBs of every subscription, the echo's included, before any
//! later command.
//!
//! Why not a request to a subject nobody listens on, answered by the server's "no responders"?
//! A wildcard subscriber (`nats sub '>'` in an operator's debugging session, an auditing service)
//! receives such a request and never answers it, so every round trip would time out: joins would
//! fail and every node would turn unready at once. Here such a subscriber only sees the probes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::StoreError;

/// The echo of one NATS connection; made once per connection and shared (`server.rs` hands the
/// same one to the broker and to readiness).
pub struct ServerRoundTrip {
    client: async_nats::Client,
    echo_subject: String,
    /// The task answering on `echo_subject`, subscribed on first use.
    echo: OnceCell<JoinHandle<()>>,
}

impl ServerRoundTrip {
    pub fn new(client: async_nats::Client) -> ServerRoundTrip {
        let echo_subject = client.new_inbox();
        ServerRoundTrip {
            client,
            echo_subject,
            echo: OnceCell::new(),
        }
    }

    /// Returns once the server has processed every command the connection sent before this call,
    /// or `unavailable` when that takes longer than `timeout` (every step is inside the bound,
    /// queueing the request included).
    pub async fn wait(&self, timeout: Duration) -> Result<(), StoreError> {
        let round_trip = async {
            self.echo.get_or_try_init(|| self.start_echo()).await?;
            self.client
                .request(self.echo_subject.clone(), Bytes::new())
                .await
                .map(drop)
                .map_err(|error| unavailable(format!("nats: {error}")))
        };
        tokio::time::timeout(timeout, round_trip)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "nats: no round trip within {} ms",
                    timeout.as_millis()
                )))
            })
    }

    async fn start_echo(&self) -> Result<JoinHandle<()>, StoreError> {
        let mut requests = self
            .client
            .subscribe(self.echo_subject.clone())
            .await
            .map_err(|error| unavailable(format!("nats: {error}")))?;
        let client = self.client.clone();
        Ok(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply_to) = request.reply {
                    // A lost answer only makes that one round trip time out.
                    let _ = client.publish(reply_to, Bytes::new()).await;
                }
            }
        }))
    }
}

impl Drop for ServerRoundTrip {
    fn drop(&mut self) {
        if let Some(echo) = self.echo.get() {
            echo.abort();
        }
    }
}

fn unavailable(problem: String) -> StoreError {
    StoreError::Unavailable(problem)
}
