//! The `RateLimiter` trait: per-key request counting in fixed windows, shared by all nodes when
//! the backend is shared.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the limit; the window ends (and requests are allowed again) after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// Counts requests per key. Guarantees (checked by `conformance::rate_limit`):
/// - In each window (starting with the first request for the key), at most `limit` calls to
///   `hit` return `Allowed`, across all nodes sharing the backend.
/// - A `Limited` answer says how long until the window ends; after that, requests are allowed.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError>;
}
