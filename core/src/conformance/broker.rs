//! The `Broker` guarantees (see `stores::broker`), one function per guarantee, so that a failure
//! names the guarantee it broke. Each takes a factory that attaches one more node to the same
//! backend, given the [`DeliveryHandler`] that node delivers to; each test makes two nodes and
//! its own random topics.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::{expect_frame, expect_silence, frame, recording_handler, unique};
use crate::room::RoomId;
use crate::stores::{Broker, DeliveryHandler, Topic};

/// How many frames the delivery and ordering guarantees publish.
const FRAMES: usize = 50;

fn room_topic() -> Topic {
    Topic::Room(RoomId::parse(&unique("chat:conf")).unwrap())
}

/// Frames one node's delivery handler received, with their topics.
type Received = tokio::sync::mpsc::UnboundedReceiver<(Topic, crate::protocol::Frame)>;

/// Two nodes on the backend, each delivering to a recorder the test reads.
async fn two_recorded_nodes<F, Fut>(make_node: F) -> [(Arc<dyn Broker>, Received); 2]
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let (handler_a, received_a) = recording_handler();
    let (handler_b, received_b) = recording_handler();
    [
        (make_node(handler_a).await, received_a),
        (make_node(handler_b).await, received_b),
    ]
}

/// The body of the `sequence`th frame these tests publish.
fn numbered(sequence: usize) -> String {
    format!("{{\"n\":{sequence}}}")
}

/// Exactly once, byte for byte: after `subscribe` returns, every frame another node publishes
/// on the topic reaches the subscriber once, unchanged, with its topic; no duplicates follow.
pub async fn every_frame_is_delivered_exactly_once_byte_for_byte<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, _received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();
    node_b.subscribe(&room).await.expect("subscribe");
    for sequence in 0..FRAMES {
        node_a
            .publish(&room, frame(&numbered(sequence)))
            .await
            .expect("publish");
    }
    let mut delivered = Vec::new();
    for _ in 0..FRAMES {
        let (topic, received) =
            expect_frame(&mut received_b, "delivery to a subscribed node").await;
        assert_eq!(topic, room, "delivery carries its topic");
        delivered.push(received.bytes().clone());
    }
    // Order is another guarantee (`frames_from_one_publisher_arrive_in_publish_order`).
    delivered.sort();
    let mut published: Vec<Bytes> = (0..FRAMES)
        .map(|sequence| Bytes::from(numbered(sequence)))
        .collect();
    published.sort();
    assert_eq!(
        delivered, published,
        "frames arrive exactly once, byte for byte"
    );
    expect_silence(&mut received_b, "exactly once (no duplicates)").await;
}

/// In order: frames one node publishes on one topic arrive in publish order.
pub async fn frames_from_one_publisher_arrive_in_publish_order<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, _received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();
    node_b.subscribe(&room).await.expect("subscribe");
    for sequence in 0..FRAMES {
        node_a
            .publish(&room, frame(&numbered(sequence)))
            .await
            .expect("publish");
    }
    for sequence in 0..FRAMES {
        let (topic, delivered) =
            expect_frame(&mut received_b, "delivery to a subscribed node").await;
        assert_eq!(topic, room, "delivery carries its topic");
        assert_eq!(
            delivered.bytes().as_ref(),
            numbered(sequence).as_bytes(),
            "frames arrive exactly once, byte for byte, in publish order"
        );
    }
}

/// Every subscriber, the publisher included: a node subscribed to the topic it publishes on
/// receives its own frames, and so does every other subscriber.
pub async fn a_subscribed_publisher_receives_its_own_frames<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, mut received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();
    node_b.subscribe(&room).await.expect("subscribe");
    node_a.subscribe(&room).await.expect("subscribe");
    node_a
        .publish(&room, frame("{\"both\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "publisher subscribed to its own topic").await;
    expect_frame(&mut received_b, "second subscriber").await;
}

/// User topics are topics too: a frame published on a user's topic reaches the node subscribed
/// to it, with that topic, byte for byte.
pub async fn user_topics_are_delivered_like_room_topics<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, _received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let user = Topic::User(Arc::from(unique("user-")));
    node_b.subscribe(&user).await.expect("subscribe user topic");
    node_a
        .publish(&user, frame("{\"to\":\"user\"}"))
        .await
        .expect("publish to user");
    let (topic, delivered) = expect_frame(&mut received_b, "user topic delivery").await;
    assert_eq!(topic, user, "user topic delivery carries its topic");
    assert_eq!(
        delivered.bytes().as_ref(),
        b"{\"to\":\"user\"}",
        "user topic delivery, byte for byte"
    );
}

/// Nothing unasked for: a node not subscribed to a topic receives nothing for it, and a
/// subscriber of one topic receives nothing published on another.
pub async fn unsubscribed_nodes_receive_nothing<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, mut received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();
    let other_room = room_topic();
    node_b.subscribe(&room).await.expect("subscribe");
    node_a
        .publish(&room, frame("{\"n\":0}"))
        .await
        .expect("publish");
    // Delivered to the subscriber, so it had time to reach the publisher too, were it wrong.
    expect_frame(&mut received_b, "delivery to a subscribed node").await;
    expect_silence(&mut received_a, "an unsubscribed node receives nothing").await;

    node_a
        .publish(&other_room, frame("{\"other\":true}"))
        .await
        .expect("publish");
    expect_silence(&mut received_b, "topics are isolated").await;
}

/// Unsubscribe stops delivery: once `unsubscribe` returns, the node receives nothing more for
/// the topic, while the topic's remaining subscribers still do.
pub async fn deliveries_stop_after_unsubscribe<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, mut received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();
    node_a.subscribe(&room).await.expect("subscribe");
    node_b.subscribe(&room).await.expect("subscribe");
    node_a
        .publish(&room, frame("{\"before\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "delivery to a subscribed node").await;
    expect_frame(&mut received_b, "delivery to a subscribed node").await;

    node_b.unsubscribe(&room).await.expect("unsubscribe");
    node_a
        .publish(&room, frame("{\"after\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "remaining subscriber still receives").await;
    expect_silence(&mut received_b, "no delivery after unsubscribe").await;
}

/// Idempotent: subscribing twice still delivers each frame once, and unsubscribing twice is no
/// error and stops delivery.
pub async fn subscribe_and_unsubscribe_are_idempotent<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let [(node_a, mut received_a), (node_b, mut received_b)] = two_recorded_nodes(make_node).await;
    let room = room_topic();

    // Subscribing twice must still deliver once.
    node_b.subscribe(&room).await.expect("subscribe");
    node_b
        .subscribe(&room)
        .await
        .expect("subscribe is idempotent");
    node_a
        .publish(&room, frame("{\"n\":0}"))
        .await
        .expect("publish");
    let (_, delivered) = expect_frame(&mut received_b, "delivery to a subscribed node").await;
    assert_eq!(
        delivered.bytes().as_ref(),
        b"{\"n\":0}",
        "delivery after subscribing twice, byte for byte"
    );
    expect_silence(
        &mut received_b,
        "exactly once (no duplicates) after subscribing twice",
    )
    .await;

    node_a.subscribe(&room).await.expect("subscribe");
    node_b.unsubscribe(&room).await.expect("unsubscribe");
    node_b
        .unsubscribe(&room)
        .await
        .expect("unsubscribe is idempotent");
    node_a
        .publish(&room, frame("{\"after\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "remaining subscriber still receives").await;
    expect_silence(&mut received_b, "no delivery after unsubscribing twice").await;
}

/// Declares module `$module` with one `#[tokio::test]` per broker guarantee, each named after
/// it. `$factory` is an expression giving a node factory (`Fn(DeliveryHandler) -> impl
/// Future<Output = Arc<dyn Broker>>`, every call one more node on the same backend); it is
/// evaluated once per test.
#[macro_export]
macro_rules! broker_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::broker as guarantees;

            #[tokio::test]
            async fn every_frame_is_delivered_exactly_once_byte_for_byte() {
                guarantees::every_frame_is_delivered_exactly_once_byte_for_byte($factory).await;
            }

            #[tokio::test]
            async fn frames_from_one_publisher_arrive_in_publish_order() {
                guarantees::frames_from_one_publisher_arrive_in_publish_order($factory).await;
            }

            #[tokio::test]
            async fn a_subscribed_publisher_receives_its_own_frames() {
                guarantees::a_subscribed_publisher_receives_its_own_frames($factory).await;
            }

            #[tokio::test]
            async fn user_topics_are_delivered_like_room_topics() {
                guarantees::user_topics_are_delivered_like_room_topics($factory).await;
            }

            #[tokio::test]
            async fn unsubscribed_nodes_receive_nothing() {
                guarantees::unsubscribed_nodes_receive_nothing($factory).await;
            }

            #[tokio::test]
            async fn deliveries_stop_after_unsubscribe() {
                guarantees::deliveries_stop_after_unsubscribe($factory).await;
            }

            #[tokio::test]
            async fn subscribe_and_unsubscribe_are_idempotent() {
                guarantees::subscribe_and_unsubscribe_are_idempotent($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stores::memory::{MemoryBroker, MemoryBus};
    use crate::stores::{Broker, DeliveryHandler};

    /// Every node is one more memory broker on the same bus.
    fn memory_nodes() -> impl Fn(DeliveryHandler) -> std::future::Ready<Arc<dyn Broker>> {
        let bus = MemoryBus::new();
        move |handler| {
            let node: Arc<dyn Broker> = Arc::new(MemoryBroker::new(bus.clone(), handler));
            std::future::ready(node)
        }
    }

    crate::broker_conformance_tests!(memory_broker, super::memory_nodes());
}
