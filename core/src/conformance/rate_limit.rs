//! The `RateLimiter` guarantees (see `stores::rate_limit`), one function per guarantee, so that
//! a failure names the guarantee it broke. Each takes a factory that attaches one more node to
//! the same backend (for the memory limiter: the same limiter again); each test counts keys of
//! its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::unique;
use crate::stores::{RateDecision, RateLimiter};

/// The limit of these tests: hits allowed per window.
const LIMIT: u32 = 3;
/// The window of these tests.
const WINDOW: Duration = Duration::from_millis(800);

/// At most `limit` hits per window are allowed, counted across all nodes: of five hits
/// alternating between two nodes, three are allowed.
pub async fn at_most_limit_hits_per_window_across_nodes<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RateLimiter>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let key = unique("user-");
    let mut allowed = 0;
    for attempt in 0..5 {
        let limiter = if attempt % 2 == 0 { &node_a } else { &node_b };
        if limiter.hit(&key, LIMIT, WINDOW).await.expect("hit") == RateDecision::Allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3, "at most `limit` hits per window across nodes");
}

/// A `Limited` answer says how long until the window ends (more than nothing, at most the
/// window); once the window has ended, the key is allowed again.
pub async fn a_limited_key_is_allowed_again_after_the_window<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RateLimiter>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let key = unique("user-");
    let mut limited = 0;
    for attempt in 0..5 {
        let limiter = if attempt % 2 == 0 { &node_a } else { &node_b };
        match limiter.hit(&key, LIMIT, WINDOW).await.expect("hit") {
            RateDecision::Allowed => {}
            RateDecision::Limited { retry_after } => {
                limited += 1;
                assert!(
                    retry_after > Duration::ZERO && retry_after <= WINDOW,
                    "retry_after within the window: {retry_after:?}"
                );
            }
        }
    }
    assert!(
        limited > 0,
        "hits past the limit are Limited (needed to check retry_after)"
    );
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    assert_eq!(
        node_b.hit(&key, LIMIT, WINDOW).await.unwrap(),
        RateDecision::Allowed,
        "a new window allows again"
    );
}

/// Keys are counted independently: a key at its limit does not limit another key.
pub async fn keys_are_counted_independently<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RateLimiter>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let key = unique("user-");
    for attempt in 0..=LIMIT {
        let limiter = if attempt % 2 == 0 { &node_a } else { &node_b };
        limiter.hit(&key, LIMIT, WINDOW).await.expect("hit");
    }
    assert_eq!(
        node_a.hit(&unique("other-"), LIMIT, WINDOW).await.unwrap(),
        RateDecision::Allowed,
        "keys are independent"
    );
}

/// Declares module `$module` with one `#[tokio::test]` per rate limiter guarantee, each named
/// after it. `$factory` is an expression giving a node factory (`Fn() -> impl Future<Output =
/// Arc<dyn RateLimiter>>`); it is evaluated once per test.
#[macro_export]
macro_rules! rate_limit_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::rate_limit as guarantees;

            #[tokio::test]
            async fn at_most_limit_hits_per_window_across_nodes() {
                guarantees::at_most_limit_hits_per_window_across_nodes($factory).await;
            }

            #[tokio::test]
            async fn a_limited_key_is_allowed_again_after_the_window() {
                guarantees::a_limited_key_is_allowed_again_after_the_window($factory).await;
            }

            #[tokio::test]
            async fn keys_are_counted_independently() {
                guarantees::keys_are_counted_independently($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stores::RateLimiter;
    use crate::stores::memory::MemoryRateLimiter;

    /// The memory limiter serves one node: every "node" is the same limiter.
    fn memory_nodes() -> impl Fn() -> std::future::Ready<Arc<dyn RateLimiter>> {
        let shared: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
        move || std::future::ready(shared.clone())
    }

    crate::rate_limit_conformance_tests!(memory_rate_limiter, super::memory_nodes());
}
