//! Platform events the server emits about itself (`socket.connect`, `user.offline`, ...).
//!
//! On one node they go to an in-process broadcast bus. Slow in-process subscribers lose the
//! oldest events (broadcast semantics) instead of slowing the server down. The NATS bridge takes
//! them from an outlet queue of its own instead, sized so that a burst does not lose any.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// How many events a lagging in-process subscriber may fall behind before it loses some.
const EVENT_BUS_CAPACITY: usize = 4096;

/// Events waiting for the outlet's reader (the NATS publisher) before new ones are dropped.
/// Enough for 20,000 sockets in a room each to disconnect at once (a `room.left`, a
/// `socket.disconnect` and a `user.offline` each): that burst emits events far faster than one
/// publishing task is scheduled to send them, and overran the 4,096 slots of the bus in the
/// benchmarks. The queue allocates as it
/// fills, so the bound costs nothing while events flow.
const OUTLET_CAPACITY: usize = 65_536;

/// One platform event. The JSON body names `userId` and, where they apply, `socketId`, `room`,
/// `reason` and `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "event")]
pub enum PlatformEvent {
    #[serde(rename = "socket.connect", rename_all = "camelCase")]
    SocketConnect {
        user_id: String,
        socket_id: String,
        node: String,
    },
    #[serde(rename = "socket.disconnect", rename_all = "camelCase")]
    SocketDisconnect {
        user_id: String,
        socket_id: String,
        node: String,
        reason: String,
    },
    #[serde(rename = "user.online", rename_all = "camelCase")]
    UserOnline { user_id: String, node: String },
    #[serde(rename = "user.offline", rename_all = "camelCase")]
    UserOffline { user_id: String, node: String },
    #[serde(rename = "room.joined", rename_all = "camelCase")]
    RoomJoined {
        user_id: String,
        socket_id: String,
        room: String,
        node: String,
    },
    #[serde(rename = "room.left", rename_all = "camelCase")]
    RoomLeft {
        user_id: String,
        socket_id: String,
        room: String,
        node: String,
        reason: String,
    },
}

impl PlatformEvent {
    /// The event name, also the suffix of its NATS subject.
    pub fn name(&self) -> &'static str {
        match self {
            PlatformEvent::SocketConnect { .. } => "socket.connect",
            PlatformEvent::SocketDisconnect { .. } => "socket.disconnect",
            PlatformEvent::UserOnline { .. } => "user.online",
            PlatformEvent::UserOffline { .. } => "user.offline",
            PlatformEvent::RoomJoined { .. } => "room.joined",
            PlatformEvent::RoomLeft { .. } => "room.left",
        }
    }

    pub fn user_id(&self) -> &str {
        match self {
            PlatformEvent::SocketConnect { user_id, .. }
            | PlatformEvent::SocketDisconnect { user_id, .. }
            | PlatformEvent::UserOnline { user_id, .. }
            | PlatformEvent::UserOffline { user_id, .. }
            | PlatformEvent::RoomJoined { user_id, .. }
            | PlatformEvent::RoomLeft { user_id, .. } => user_id,
        }
    }
}

/// The in-process event bus.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<PlatformEvent>,
    /// The one reader that must not lose events under a burst, once attached.
    outlet: Arc<OnceLock<mpsc::Sender<PlatformEvent>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            sender: broadcast::channel(EVENT_BUS_CAPACITY).0,
            outlet: Arc::default(),
        }
    }

    /// Emits to every current subscriber and the outlet; with none, the event is dropped.
    pub fn emit(&self, event: PlatformEvent) {
        tracing::debug!(
            event = event.name(),
            user_id = event.user_id(),
            "platform event"
        );
        if let Some(outlet) = self.outlet.get()
            && let Err(mpsc::error::TrySendError::Full(lost)) = outlet.try_send(event.clone())
        {
            metrics::counter!(crate::metrics::EVENTS_DROPPED).increment(1);
            tracing::warn!(
                event = lost.name(),
                "platform event outlet full; event dropped"
            );
        }
        let _ = self.sender.send(event);
    }

    /// The outlet: every event emitted from now on, in order, none lost unless
    /// `OUTLET_CAPACITY` events wait unread. `None` when an outlet was already taken.
    pub fn take_outlet(&self) -> Option<mpsc::Receiver<PlatformEvent>> {
        let (sender, receiver) = mpsc::channel(OUTLET_CAPACITY);
        self.outlet.set(sender).ok()?;
        Some(receiver)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PlatformEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disconnect(index: usize) -> PlatformEvent {
        PlatformEvent::SocketDisconnect {
            user_id: format!("u{index}"),
            socket_id: format!("s{index}"),
            node: "n".into(),
            reason: "client_closed".into(),
        }
    }

    #[test]
    fn the_outlet_keeps_a_burst_that_overruns_the_bus() {
        let bus = EventBus::new();
        let mut outlet = bus.take_outlet().expect("the first outlet");
        assert!(bus.take_outlet().is_none(), "one outlet per bus");
        let mut lagging = bus.subscribe();
        let burst = 2 * EVENT_BUS_CAPACITY;
        for index in 0..burst {
            bus.emit(disconnect(index));
        }
        assert!(
            matches!(
                lagging.try_recv(),
                Err(broadcast::error::TryRecvError::Lagged(_))
            ),
            "a bus subscriber this far behind loses events"
        );
        for index in 0..burst {
            assert_eq!(outlet.try_recv().unwrap(), disconnect(index), "in order");
        }
        assert!(outlet.try_recv().is_err(), "nothing more");
    }

    #[test]
    fn events_serialize_with_camel_case_fields_and_their_name() {
        let event = PlatformEvent::SocketDisconnect {
            user_id: "u".into(),
            socket_id: "s".into(),
            node: "n".into(),
            reason: "token_expired".into(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"event":"socket.disconnect","userId":"u","socketId":"s","node":"n","reason":"token_expired"})
        );
        assert_eq!(event.name(), "socket.disconnect");
    }
}
