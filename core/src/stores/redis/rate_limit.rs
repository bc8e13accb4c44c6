//! Fixed-window rate-limit counters in Redis, shared by every node.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::RedisConnector;
use crate::stores::StoreError;
use crate::stores::rate_limit::{RateDecision, RateLimiter};

/// One counter per key and window (see the script's header).
const RATE_LIMIT_SCRIPT: &str = include_str!("scripts/rate_limit.lua");

/// Fixed-window counters in Redis, shared by every node.
pub struct RedisRateLimiter {
    redis: Arc<RedisConnector>,
    script: Script,
}

impl RedisRateLimiter {
    pub fn new(redis: Arc<RedisConnector>) -> RedisRateLimiter {
        RedisRateLimiter {
            redis,
            script: Script::new(RATE_LIMIT_SCRIPT),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let counter = format!("{}ratelimit:{key}", self.redis.key_prefix());
        let remaining_ms: i64 = self
            .redis
            .run(|mut connection| {
                let mut invocation = self.script.key(&counter);
                invocation.arg(limit).arg(window.as_millis() as u64);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(if remaining_ms <= 0 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(remaining_ms as u64),
            }
        })
    }
}
