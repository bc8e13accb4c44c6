//! Conformance tests for the backend traits: one module per trait, one function per guarantee,
//! run against every backend, so that a failure names the guarantee it broke.
//!
//! Each module ([`broker`], [`presence`], [`rooms`], [`rate_limit`], [`notifications`],
//! [`history`]) has one `pub async fn` per guarantee of its trait, each taking a factory that
//! makes one more "node" attached to the same backend, so the cross-node guarantees are tested
//! too; and an exported macro (`broker_conformance_tests!`, `presence_conformance_tests!`,
//! `room_conformance_tests!`, `rate_limit_conformance_tests!`,
//! `notification_conformance_tests!`, `history_conformance_tests!`) declaring one
//! `#[tokio::test]` per guarantee for a backend. Every function sets up its own rooms, users and
//! topics, with names random per run, so the tests are independent of each other and can share a
//! real Redis or NATS with other tests. A failed guarantee panics with the guarantee's name.

pub mod broker;
pub mod history;
pub mod notifications;
pub mod presence;
pub mod rate_limit;
pub mod rooms;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::Frame;
use crate::stores::{DeliveryHandler, Topic};

/// How long a networked backend may take to deliver before the suite calls it lost.
pub(crate) const DELIVERY_DEADLINE: Duration = Duration::from_secs(5);
/// How long the suite waits to be sure something that must not arrive does not.
pub(crate) const SILENCE_WINDOW: Duration = Duration::from_millis(300);

/// `prefix` followed by 16 random hex digits: a name no other run uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A frame of the given (text) encoding.
pub(crate) fn frame(text: &str) -> Frame {
    Frame::from_encoded(Bytes::copy_from_slice(text.as_bytes())).expect("suite frames are text")
}

/// A delivery handler that forwards into a channel the suite reads.
pub(crate) fn recording_handler() -> (DeliveryHandler, mpsc::UnboundedReceiver<(Topic, Frame)>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let handler: DeliveryHandler = Arc::new(move |topic: &Topic, frame: Frame| {
        let _ = sender.send((topic.clone(), frame));
    });
    (handler, receiver)
}

/// The next delivery, or a panic naming `guarantee` if none comes within [`DELIVERY_DEADLINE`].
pub(crate) async fn expect_frame(
    receiver: &mut mpsc::UnboundedReceiver<(Topic, Frame)>,
    guarantee: &str,
) -> (Topic, Frame) {
    tokio::time::timeout(DELIVERY_DEADLINE, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{guarantee}: nothing delivered within {DELIVERY_DEADLINE:?}"))
        .expect("handler channel closed")
}

/// Panics naming `guarantee` if anything is delivered within [`SILENCE_WINDOW`].
pub(crate) async fn expect_silence(
    receiver: &mut mpsc::UnboundedReceiver<(Topic, Frame)>,
    guarantee: &str,
) {
    if let Ok(Some((topic, frame))) = tokio::time::timeout(SILENCE_WINDOW, receiver.recv()).await {
        panic!("{guarantee}: unexpected delivery on {topic:?}: {frame:?}");
    }
}
