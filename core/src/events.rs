//! Platform events the server emits about itself (`socket.connect`, `user.offline`, ...).
//!
//! On one node they go to an in-process broadcast bus; a NATS bridge subscribes to the same bus.
//! Slow in-process subscribers lose the oldest events (broadcast semantics) instead of slowing
//! the server down.

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a lagging in-process subscriber may fall behind before it loses some.
const EVENT_BUS_CAPACITY: usize = 4096;

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
        }
    }

    /// Emits to every current subscriber; with none, the event is simply dropped.
    pub fn emit(&self, event: PlatformEvent) {
        tracing::debug!(
            event = event.name(),
            user_id = event.user_id(),
            "platform event"
        );
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PlatformEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
