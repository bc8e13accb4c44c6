//! Readiness: whether this node should get new traffic (`GET /ready`), as opposed to liveness
//! (`GET /health`, the process answers at all).
//!
//! Not ready while the node drains (shutdown has begun), or while a backend it was configured with
//! is unreachable: Redis (a PING), NATS (connected, and a round trip through the server, which
//! also proves the node's subscriptions are live again after a reconnect) and the notifications
//! database (a trivial query). Each check is bounded, so a hung backend makes the probe say so
//! instead of hanging it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use async_nats::connection::State;

use crate::notifications::NotificationStore;
use crate::stores::nats_round_trip::ServerRoundTrip;
use crate::stores::redis::RedisConnector;

/// How long one backend check may take before it counts as failing.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The backends a node checks.
pub struct Readiness {
    redis: Option<Arc<RedisConnector>>,
    nats: Option<(async_nats::Client, Arc<ServerRoundTrip>)>,
    database: Arc<dyn NotificationStore>,
}

/// One failing check: which backend, and what went wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failing {
    pub backend: &'static str,
    pub problem: String,
}

/// What `GET /ready` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub draining: bool,
    pub failing: Vec<Failing>,
}

impl Readiness {
    pub fn new(
        redis: Option<Arc<RedisConnector>>,
        nats: Option<(async_nats::Client, Arc<ServerRoundTrip>)>,
        database: Arc<dyn NotificationStore>,
    ) -> Readiness {
        Readiness {
            redis,
            nats,
            database,
        }
    }

    /// Runs every check at once.
    pub async fn check(&self, draining: bool) -> ReadinessReport {
        let (redis, nats, database) =
            tokio::join!(self.check_redis(), self.check_nats(), self.check_database());
        let failing: Vec<Failing> = [redis, nats, database].into_iter().flatten().collect();
        ReadinessReport {
            ready: failing.is_empty() && !draining,
            draining,
            failing,
        }
    }

    async fn check_redis(&self) -> Option<Failing> {
        let redis = self.redis.as_ref()?;
        let pinged = tokio::time::timeout(
            CHECK_TIMEOUT,
            redis.run(|mut connection| async move {
                redis::cmd("PING")
                    .query_async::<redis::Value>(&mut connection)
                    .await
            }),
        )
        .await;
        match pinged {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => failing("redis", error.to_string()),
            Err(_) => failing("redis", "no answer within 1 s".to_owned()),
        }
    }

    async fn check_nats(&self) -> Option<Failing> {
        let (client, round_trip) = self.nats.as_ref()?;
        let state = client.connection_state();
        if state != State::Connected {
            return failing("nats", format!("connection {state}"));
        }
        // Connected is not yet enough: right after a reconnect the node's subscriptions may still
        // be on their way to the server, and an event published now would miss this node.
        match round_trip.wait(CHECK_TIMEOUT).await {
            Ok(()) => None,
            Err(error) => failing("nats", error.to_string()),
        }
    }

    async fn check_database(&self) -> Option<Failing> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.database.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => failing("database", failure.message),
            Err(_) => failing("database", "no answer within 1 s".to_owned()),
        }
    }
}

fn failing(backend: &'static str, problem: String) -> Option<Failing> {
    Some(Failing { backend, problem })
}
