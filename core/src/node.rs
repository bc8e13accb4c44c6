//! The node: shared state and every operation on rooms, users and presence, used by the socket
//! sessions and the HTTP API alike. Transport-free: it takes parsed values and returns frames or
//! [`WireError`]s.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::{AuthError, Identity, TokenVerifier};
use crate::config::{Announce, JoinPolicy, RoomTypeSettings, Settings};
use crate::events::{EventBus, PlatformEvent};
use crate::hub::{Hub, PushLane, Signal, SocketHandle};
use crate::metrics as names;
use crate::notifications::NotificationService;
use crate::plugins::{ChainEvent, ChainResult, PluginHost};
use crate::presence_diffs::{Change, Diff, PresenceDiffs};
use crate::protocol::{
    CloseCode, ControlCommand, ErrorCode, EventPush, Frame, WireError, is_reserved_event_name,
    is_service_event_name, is_valid_event_name, unix_now_millis,
};
use crate::room::RoomId;
use crate::small_set::SmallSet;
use crate::stores::{
    Arrival, Broker, HistoryPolicy, HistoryStore, JoinOutcome, Lease, LeaveOutcome, Member,
    Position, PresenceStore, RateLimiter, Recovery, RoomStore, SocketEntry, StoreError, Topic,
};

/// Stripes of the interest lock; see [`Node::interest_lock`].
const INTEREST_LOCK_STRIPES: usize = 64;

/// The backends a node runs on.
pub struct Backends {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub notifications: Arc<NotificationService>,
    /// Room history (JetStream or memory); `None` where it cannot be kept consistently (a
    /// Redis-only cluster): rooms then carry no positions and recovery always says false.
    pub history: Option<Arc<dyn HistoryStore>>,
    /// Checks of the backends this node was configured with, for `GET /ready`.
    pub readiness: crate::readiness::Readiness,
}

/// Frames a watcher (GraphQL subscription) may queue before it is cut off as too slow.
const WATCH_OUTBOX_FRAMES: usize = 64;

/// A live feed of one user's pushes on this node, for as long as it is held.
pub struct UserWatch {
    node: Arc<Node>,
    handle: Arc<SocketHandle>,
}

impl UserWatch {
    /// The next push, or `None` once the watch was closed (too slow, or shutdown).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.handle.signalled().await {
                Signal::Frames => return self.handle.next_frame(),
                // Shutdown reaches watchers as a close request too (`Hub::close_all`).
                Signal::Close(_) => return None,
                // A watcher is in no room; nothing to leave.
                Signal::Evicted => {
                    self.handle.take_evictions();
                }
            }
        }
    }
}

impl Drop for UserWatch {
    fn drop(&mut self) {
        let node = self.node.clone();
        let handle = self.handle.clone();
        // Unsubscribing may await the broker; Drop cannot, so it runs on its own task.
        tokio::spawn(async move {
            let topic = Topic::User(handle.user_id.clone());
            node.remove_interest(&topic, || node.hub.unwatch_user(&handle))
                .await;
        });
    }
}

/// What became of a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the broker for every member.
    Delivered,
    /// A plugin dropped it; nobody receives it.
    Dropped { reason: String },
}

impl Delivery {
    /// The fields publishers get back: `{"delivered":true}` or `{"delivered":false,"reason":..}`.
    pub fn reply_fields(&self) -> serde_json::Value {
        match self {
            Delivery::Delivered => serde_json::json!({ "delivered": true }),
            Delivery::Dropped { reason } => {
                serde_json::json!({ "delivered": false, "reason": reason })
            }
        }
    }

    /// The whole answer to a service publisher (HTTP API, NATS request): `{"ok":true, ..}`.
    pub fn service_reply(&self) -> serde_json::Value {
        let mut body = self.reply_fields();
        body["ok"] = serde_json::Value::Bool(true);
        body
    }
}

/// Who is publishing an event, which decides checks and the `from` field.
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// A connected client; its user id becomes `from`.
    Client { user_id: &'a str },
    /// An internal service (HTTP API or NATS); trusted, no `from`.
    Service,
}

/// One connected socket as the node tracks it for the socket's own session.
pub struct SocketSession {
    pub handle: Arc<SocketHandle>,
    pub entry: SocketEntry,
    pub identity: Identity,
    /// Rooms this socket is in, for limits, membership checks and cleanup.
    pub rooms: JoinedRooms,
}

/// The rooms one socket is in: a handful at most (`limits.max_rooms_per_connection`).
pub type JoinedRooms = SmallSet<RoomId>;

pub use crate::admission::{Applicant, ConnectionPermit};

/// A successful join.
pub struct Joined {
    pub room: RoomId,
    /// For a room with history (and a first join of it by this socket).
    pub history: Option<JoinedHistory>,
}

/// The history part of a join. The socket's pushes of the room are kept aside until the
/// session has written the reply and `replay`, then calls
/// `SocketHandle::end_recovery(room, position)`.
pub struct JoinedHistory {
    /// Where the room is; `None` when the history store could not be read.
    pub position: Option<Position>,
    /// `Some` when the join carried `since`: whether every missed event is in `replay`.
    pub recovered: Option<bool>,
    /// The missed events, oldest first, to be written right after the reply.
    pub replay: Vec<Frame>,
}

pub struct Node {
    settings: Arc<Settings>,
    node_id: Arc<str>,
    verifier: TokenVerifier,
    hub: Arc<Hub>,
    backends: Backends,
    /// The plugin host, when any plugin is configured.
    plugins: Option<Arc<PluginHost>>,
    events: EventBus,
    /// Sockets admitted (handshaking, connected or tearing down), bounded by
    /// `server.max_connections` and the per-user and per-address shares.
    admission: Admission,
    /// Serializes "first local member -> subscribe" and "last local member -> unsubscribe" per
    /// topic, so a leave and a join racing on one topic can never end unsubscribed with a member
    /// present. Held across the broker call on purpose; striped so unrelated topics do not wait.
    interest_locks: Box<[tokio::sync::Mutex<()>]>,
    interest_hasher: RandomState,
    /// Serializes "store in history, then hand to the broker" per room on this node, so this
    /// node's events of a room reach the broker in offset order. Striped like `interest_locks`.
    publish_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Joins and leaves waiting to be pushed as one diff (`announce = "batched"`).
    presence_diffs: PresenceDiffs,
    /// Store writes that failed (the store was unreachable) and are tried again with the next
    /// announcement: nothing else would ever remove a socket or membership this node registered
    /// while its lease lives.
    store_retries: parking_lot::Mutex<Vec<StoreRetry>>,
    /// Leases granted to this node so far: a grant after the first means the lease lapsed.
    lease_grants: std::sync::atomic::AtomicU64,
    /// Held while the lease is renewed, so that many writes refused at once (`NoLease`) cause
    /// one renewal, not one each.
    lease_renewal: tokio::sync::Mutex<()>,
    /// A renewal failed: the store may have granted a lease whose answer never arrived, so the
    /// next renewal registers everything again even if it finds the lease held.
    registration_in_doubt: std::sync::atomic::AtomicBool,
    shutdown: CancellationToken,
    /// Shutdown has begun: not ready, no new sockets.
    draining: std::sync::atomic::AtomicBool,
}

/// Registrations of sockets and memberships made at once after a lease is granted.
const REGISTRATIONS_IN_FLIGHT: usize = 64;

/// A presence or membership write to try again (see `Node::store_retries`).
enum StoreRetry {
    Connect(SocketEntry),
    Disconnect(SocketEntry),
    Leave(RoomId, Member),
}

fn unavailable(error: StoreError) -> WireError {
    tracing::warn!(%error, "backend call failed");
    WireError::new(
        ErrorCode::Unavailable,
        "a backend is unavailable; retry shortly",
    )
}

impl Node {
    pub fn new(
        settings: Arc<Settings>,
        node_id: Arc<str>,
        verifier: TokenVerifier,
        hub: Arc<Hub>,
        backends: Backends,
        plugins: Option<Arc<PluginHost>>,
    ) -> Node {
        let admission = Admission::new(
            settings.server.max_connections,
            settings.limits.max_connections_per_user,
            settings.limits.max_connections_per_address,
        );
        Node {
            settings,
            node_id,
            verifier,
            hub,
            backends,
            plugins,
            events: EventBus::new(),
            admission,
            interest_locks: (0..INTEREST_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            interest_hasher: RandomState::new(),
            publish_locks: (0..INTEREST_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            presence_diffs: PresenceDiffs::default(),
            store_retries: parking_lot::Mutex::default(),
            lease_grants: std::sync::atomic::AtomicU64::new(0),
            lease_renewal: tokio::sync::Mutex::new(()),
            registration_in_doubt: std::sync::atomic::AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the node as draining: readiness turns false and handshakes are refused (close 1012
    /// for `refusal=close`), so a load balancer moves traffic away before sockets are closed.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What `GET /ready` answers.
    pub async fn readiness(&self) -> crate::readiness::ReadinessReport {
        self.backends.readiness.check(self.is_draining()).await
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn plugins(&self) -> Option<&Arc<PluginHost>> {
        self.plugins.as_ref()
    }

    pub fn rate_limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.backends.rate_limiter
    }

    pub fn notifications(&self) -> &Arc<NotificationService> {
        &self.backends.notifications
    }

    /// Starts a feed of `user_id`'s pushes from every node.
    pub async fn watch_user(self: &Arc<Self>, user_id: &str) -> Result<UserWatch, WireError> {
        let watcher_id: Arc<str> = Arc::from(format!("watch-{:016x}", rand::random::<u64>()));
        let handle = Arc::new(SocketHandle::new(
            watcher_id,
            Arc::from(user_id),
            WATCH_OUTBOX_FRAMES,
            None,
        ));
        let topic = Topic::User(handle.user_id.clone());
        self.add_interest(
            &topic,
            || self.hub.watch_user(&handle),
            || {
                self.hub.unwatch_user(&handle);
            },
        )
        .await
        .map_err(unavailable)?;
        self.close_if_shutting_down(&handle);
        Ok(UserWatch {
            node: self.clone(),
            handle,
        })
    }

    /// Cancelled when the node shuts down; background tasks watch it. Sockets are told through
    /// [`Hub::close_all`] instead, so an idle socket waits on one signal only.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A socket registered after shutdown began was missed by `close_all`: close it here.
    /// (Shutdown cancels before `close_all`, and this runs after registering, so every socket
    /// is caught by one or the other.)
    fn close_if_shutting_down(&self, handle: &SocketHandle) {
        if self.shutdown.is_cancelled() {
            handle.request_close(CloseCode::Restart);
        }
    }

    /// Sockets admitted and not yet torn down: a socket counts from the handshake until its
    /// teardown (rooms left, presence removed, `socket.disconnect` emitted) has finished.
    pub fn admitted_count(&self) -> usize {
        self.admission.admitted()
    }

    /// Reserves a connection slot for `applicant`, or the coded refusal (`node_full`, or
    /// `too_many_connections` when the user or the address holds its share of the node).
    pub fn try_admit(&self, applicant: &Applicant) -> Result<ConnectionPermit, WireError> {
        self.admission
            .try_admit(applicant)
            .map_err(|refusal| refusal.wire_error(self.admission.limit_of(refusal)))
    }

    /// Verifies a token. With a JWKS, a token naming a `kid` the cached set lacks triggers one
    /// refetch (rate-limited, see `jwks`) before it is refused: a rotated key works at once.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        match self.verifier.verify(token) {
            Err(AuthError::UnknownKeyId) => match self.verifier.jwks() {
                Some(jwks) if jwks.refetch_for_unknown_kid().await => self.verifier.verify(token),
                _ => Err(AuthError::UnknownKeyId),
            },
            verified => verified,
        }
    }

    /// The identity provider's key set, when tokens are verified with one.
    pub fn jwks(&self) -> Option<&Arc<crate::jwks::JwksCache>> {
        self.verifier.jwks()
    }

    fn room_type(&self, room: &RoomId) -> Result<&RoomTypeSettings, WireError> {
        self.settings
            .room_types
            .get(room.room_type())
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownRoomType,
                    format!("room type `{}` is not configured", room.room_type()),
                )
            })
    }

    fn parse_room(text: &str) -> Result<RoomId, WireError> {
        RoomId::parse(text)
            .map_err(|error| WireError::new(ErrorCode::InvalidRoomId, error.to_string()))
    }

    fn interest_lock(&self, topic: &Topic) -> &tokio::sync::Mutex<()> {
        let stripe = self.interest_hasher.hash_one(topic) as usize % INTEREST_LOCK_STRIPES;
        &self.interest_locks[stripe]
    }

    fn publish_lock(&self, room: &RoomId) -> &tokio::sync::Mutex<()> {
        let stripe = self.interest_hasher.hash_one(room) as usize % INTEREST_LOCK_STRIPES;
        &self.publish_locks[stripe]
    }

    /// The room type's history policy and the store keeping it, when the room has history.
    fn history_of(
        &self,
        room_type: &RoomTypeSettings,
    ) -> Option<(HistoryPolicy, &Arc<dyn HistoryStore>)> {
        Some((room_type.history()?, self.backends.history.as_ref()?))
    }

    /// Runs `add_local`; when it reports the topic's first local socket, subscribes the node.
    /// A failed subscribe undoes the local change through `undo_local`.
    async fn add_interest(
        &self,
        topic: &Topic,
        add_local: impl FnOnce() -> bool,
        undo_local: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let _ordered = self.interest_lock(topic).lock().await;
        if add_local()
            && let Err(error) = self.backends.broker.subscribe(topic).await
        {
            undo_local();
            return Err(error);
        }
        Ok(())
    }

    /// Runs `remove_local`; when it reports the topic's last local socket gone, unsubscribes.
    async fn remove_interest(&self, topic: &Topic, remove_local: impl FnOnce() -> bool) {
        let _ordered = self.interest_lock(topic).lock().await;
        if remove_local()
            && let Err(error) = self.backends.broker.unsubscribe(topic).await
        {
            // Harmless beyond extra traffic: frames for a topic with no local socket are dropped.
            tracing::warn!(%error, ?topic, "unsubscribe failed");
        }
    }

    /// Registers an authenticated socket: hub, user topic, presence, events.
    /// `push_lane`: see [`SocketHandle`].
    pub async fn open_socket(
        &self,
        identity: Identity,
        push_lane: Option<Arc<dyn PushLane>>,
    ) -> Result<SocketSession, WireError> {
        let socket_id: Arc<str> = Arc::from(format!("{:016x}", rand::random::<u64>()));
        let user_id: Arc<str> = Arc::from(identity.user_id.as_str());
        let handle = Arc::new(SocketHandle::new(
            socket_id.clone(),
            user_id.clone(),
            self.settings.limits.outbox_frames,
            push_lane,
        ));
        let topic = Topic::User(user_id.clone());
        self.add_interest(
            &topic,
            || self.hub.register(&handle),
            || {
                self.hub.unregister(&handle);
            },
        )
        .await
        .map_err(unavailable)?;
        self.close_if_shutting_down(&handle);
        metrics::gauge!(names::CONNECTIONS).increment(1.0);
        let entry = SocketEntry {
            user_id: user_id.clone(),
            socket_id: socket_id.clone(),
            node_id: self.node_id.clone(),
        };
        self.events.emit(PlatformEvent::SocketConnect {
            user_id: user_id.to_string(),
            socket_id: socket_id.to_string(),
            node: self.node_id.to_string(),
        });
        match self.backends.presence.connect(&entry).await {
            Ok(arrival) => self.note_arrival(&entry, arrival),
            // No lease yet (or it lapsed): the next granted announcement registers every local
            // socket again, this one too.
            // The socket is in the hub already: the renewal registers it with the rest.
            Err(StoreError::NoLease(_)) => self.renew_lease_after_refusal().await,
            // Delivery does not depend on presence: keep the socket, the next announcement
            // tries again.
            Err(error) => {
                tracing::warn!(%error, "presence connect failed; retried with the next announcement");
                self.store_retries
                    .lock()
                    .push(StoreRetry::Connect(entry.clone()));
            }
        }
        Ok(SocketSession {
            handle,
            entry,
            identity,
            rooms: JoinedRooms::default(),
        })
    }

    fn note_arrival(&self, entry: &SocketEntry, arrival: Arrival) {
        if arrival == Arrival::CameOnline {
            self.events.emit(PlatformEvent::UserOnline {
                user_id: entry.user_id.to_string(),
                node: self.node_id.to_string(),
            });
        }
    }

    fn member_of(&self, session: &SocketSession) -> Member {
        Member::of_socket(&session.entry)
    }

    /// A local socket as presence knows it.
    fn entry_of(&self, handle: &SocketHandle) -> SocketEntry {
        SocketEntry {
            user_id: handle.user_id.clone(),
            socket_id: handle.socket_id.clone(),
            node_id: self.node_id.clone(),
        }
    }

    /// Tears a socket down: leaves its rooms, unregisters it, records the disconnect.
    pub async fn close_socket(&self, session: &mut SocketSession, reason: &str) {
        let rooms = session.rooms.take();
        for room in rooms {
            if let Err(error) = self.leave_room(session, &room, reason).await {
                tracing::warn!(room = %room, message = %error.message, "leave during close failed");
            }
        }
        let handle = session.handle.clone();
        self.remove_interest(&Topic::User(handle.user_id.clone()), || {
            self.hub.unregister(&handle)
        })
        .await;
        metrics::gauge!(names::CONNECTIONS).decrement(1.0);
        let linger = self.settings.presence.ttl();
        if let Err(error) = self
            .backends
            .presence
            .disconnect(&session.entry, linger)
            .await
        {
            tracing::warn!(%error, "presence disconnect failed; retried with the next announcement");
            self.store_retries
                .lock()
                .push(StoreRetry::Disconnect(session.entry.clone()));
        }
        self.events.emit(PlatformEvent::SocketDisconnect {
            user_id: handle.user_id.to_string(),
            socket_id: handle.socket_id.to_string(),
            node: self.node_id.to_string(),
            reason: reason.to_owned(),
        });
    }

    /// Checks the room type's join rule (`claims`) for the session.
    fn check_join_rule(
        session: &SocketSession,
        room: &RoomId,
        room_type: &RoomTypeSettings,
    ) -> Result<(), WireError> {
        if room_type.join == JoinPolicy::Claims && !session.identity.may_join(room) {
            return Err(WireError::new(
                ErrorCode::RoomForbidden,
                format!("the token's `rooms` claim does not grant {room}"),
            ));
        }
        Ok(())
    }

    /// `join`: checks id, type, claims, limits and capacity; then subscribes and announces. In a
    /// room with history the reply names the room's position, and with `since` the events
    /// missed since then come back to be written after the reply (see [`Joined`]).
    pub async fn join(
        &self,
        session: &mut SocketSession,
        room_text: &str,
        since: Option<&Position>,
    ) -> Result<Joined, WireError> {
        let room = Self::parse_room(room_text)?;
        let room_type = self.room_type(&room)?;
        Self::check_join_rule(session, &room, room_type)?;
        if session.rooms.contains(&room) {
            return Ok(Joined {
                room,
                history: None,
            });
        }
        if session.rooms.len() >= self.settings.limits.max_rooms_per_connection {
            return Err(WireError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "a connection may be in at most {} rooms",
                    self.settings.limits.max_rooms_per_connection
                ),
            ));
        }
        let member = self.member_of(session);
        // A lease granted between the store's join and the hub's add would re-register the
        // hub's memberships without this one: checked after the add.
        let grants_before = self.lease_grants.load(Ordering::Acquire);
        let outcome = match self
            .backends
            .rooms
            .join(&room, &member, room_type.capacity)
            .await
        {
            Err(StoreError::NoLease(_)) => {
                self.renew_lease_after_refusal().await;
                self.backends
                    .rooms
                    .join(&room, &member, room_type.capacity)
                    .await
            }
            joined => joined,
        }
        .map_err(unavailable)?;
        let first_for_user = match outcome {
            JoinOutcome::Full => {
                return Err(WireError::new(
                    ErrorCode::RoomFull,
                    format!("{room} holds its capacity of {} users", room_type.capacity),
                ));
            }
            JoinOutcome::Blocked => {
                return Err(WireError::new(
                    ErrorCode::RoomForbidden,
                    format!("a moderator removed you from {room}; you cannot rejoin it yet"),
                ));
            }
            JoinOutcome::Joined { first_for_user } => first_for_user,
            JoinOutcome::AlreadyMember => false,
        };
        let handle = session.handle.clone();
        let history = self.history_of(room_type);
        if history.is_some() {
            // Before the socket is in the room, so that none of the room's pushes can pass the
            // replay: they wait until the session has written it.
            handle.begin_recovery(&room);
        }
        let subscribed = self
            .add_interest(
                &Topic::Room(room.clone()),
                || self.hub.add_to_room(&room, &handle),
                || {
                    self.hub.remove_from_room(&room, &handle.socket_id);
                },
            )
            .await;
        if let Err(error) = subscribed {
            handle.end_recovery(&room, None);
            // Undo the membership so capacity is not held by a socket that gets nothing.
            if self.backends.rooms.leave(&room, &member).await.is_err() {
                self.store_retries
                    .lock()
                    .push(StoreRetry::Leave(room.clone(), member));
            }
            return Err(unavailable(error));
        }
        if self.lease_grants.load(Ordering::Acquire) != grants_before {
            // Idempotent: `AlreadyMember` when the re-registration saw this membership.
            if let Err(error) = self
                .backends
                .rooms
                .join(&room, &member, room_type.capacity)
                .await
            {
                tracing::warn!(%error, %room, "membership not registered under the new lease");
            }
        }
        session.rooms.insert(room.clone());
        metrics::counter!(names::JOINS).increment(1);
        self.events.emit(PlatformEvent::RoomJoined {
            user_id: member.user_id.to_string(),
            socket_id: member.socket_id.to_string(),
            room: room.to_string(),
            node: self.node_id.to_string(),
        });
        if first_for_user {
            self.announce_change(&room, room_type, Change::Joined, &member.user_id)
                .await;
        }
        let history = match history {
            Some((policy, store)) => Some(self.recover(store, &room, &policy, since).await),
            None => None,
        };
        Ok(Joined { room, history })
    }

    /// What a join into a room with history tells the client: where the room is, and with
    /// `since`, the events missed. A failing store never fails the join: the client is told
    /// `recovered: false` (it refetches) and live events flow.
    async fn recover(
        &self,
        store: &Arc<dyn HistoryStore>,
        room: &RoomId,
        policy: &HistoryPolicy,
        since: Option<&Position>,
    ) -> JoinedHistory {
        let started = std::time::Instant::now();
        let answer = match since {
            Some(since) => store.since(room, policy, since).await,
            None => store
                .position(room, policy)
                .await
                .map(|position| Recovery::NotRecovered { position }),
        };
        self.record_history_call(started, answer.is_err());
        let (outcome, joined) = match answer {
            Ok(Recovery::Recovered { position, events }) => (
                "recovered",
                JoinedHistory {
                    position: Some(position),
                    recovered: Some(true),
                    replay: events,
                },
            ),
            Ok(Recovery::NotRecovered { position }) => (
                if since.is_some() {
                    "not_recovered"
                } else {
                    "position"
                },
                JoinedHistory {
                    position: Some(position),
                    recovered: since.map(|_| false),
                    replay: Vec::new(),
                },
            ),
            Err(error) => {
                tracing::warn!(%error, %room, "history unavailable; joined without a position");
                (
                    "unavailable",
                    JoinedHistory {
                        position: None,
                        recovered: since.map(|_| false),
                        replay: Vec::new(),
                    },
                )
            }
        };
        metrics::counter!(names::HISTORY_RECOVERIES, "outcome" => outcome).increment(1);
        joined
    }

    /// Records a history call in `realtime_backend_*` when history lives in JetStream (the
    /// memory store is no backend call).
    fn record_history_call(&self, started: std::time::Instant, failed: bool) {
        if self.settings.nats.url.is_some() {
            names::record_backend_call("nats", started, failed);
        }
    }

    /// `history`: the room's last `limit` events (at most its `history_size`), under the room
    /// type's join rule, as for `join`.
    pub async fn history(
        &self,
        session: &SocketSession,
        room_text: &str,
        limit: Option<usize>,
    ) -> Result<(RoomId, Position, Vec<Frame>), WireError> {
        let room = Self::parse_room(room_text)?;
        let room_type = self.room_type(&room)?;
        Self::check_join_rule(session, &room, room_type)?;
        let Some((policy, store)) = self.history_of(room_type) else {
            return Err(WireError::new(
                ErrorCode::HistoryDisabled,
                format!("{} rooms keep no history here", room.room_type()),
            ));
        };
        let limit = limit.unwrap_or(policy.size).min(policy.size);
        let started = std::time::Instant::now();
        let latest = store.latest(&room, &policy, limit).await;
        self.record_history_call(started, latest.is_err());
        let (position, events) = latest.map_err(unavailable)?;
        Ok((room, position, events))
    }

    /// `leave`.
    pub async fn leave(
        &self,
        session: &mut SocketSession,
        room_text: &str,
    ) -> Result<RoomId, WireError> {
        let room = Self::parse_room(room_text)?;
        if !session.rooms.remove(&room) {
            return Err(WireError::new(
                ErrorCode::NotInRoom,
                format!("not a member of {room}"),
            ));
        }
        self.leave_room(session, &room, "leave").await?;
        Ok(room)
    }

    /// Subscribes this node to the control topic (moderation commands for every node).
    pub async fn subscribe_control(&self) -> Result<(), StoreError> {
        self.backends.broker.subscribe(&Topic::Control).await
    }

    /// Closes every socket of `user_id` on every node: 4008 `disconnected_by_server` when the
    /// client may reconnect, 4503 `access_revoked` when it should not.
    pub async fn disconnect_user(&self, user_id: &str, reconnect: bool) -> Result<(), WireError> {
        check_user_id(user_id)?;
        let close = if reconnect {
            CloseCode::DisconnectedByServer
        } else {
            CloseCode::AccessRevoked
        };
        let command = ControlCommand::DisconnectUser {
            user: user_id.to_owned(),
            close: close.code(),
        };
        self.backends
            .broker
            .publish(&Topic::Control, command.frame())
            .await
            .map_err(unavailable)
    }

    /// Removes every socket of `user_id` from `room` on every node (members see
    /// `room.user_left`, the user's sockets get `room.removed`), and with `block`, refuses the
    /// user's joins to the room for that long (`room_forbidden`).
    pub async fn remove_from_room(
        &self,
        user_id: &str,
        room_text: &str,
        block: Option<Duration>,
    ) -> Result<RoomId, WireError> {
        check_user_id(user_id)?;
        let room = Self::parse_room(room_text)?;
        self.room_type(&room)?;
        // Blocked first, so a client that rejoins at once after the removal is refused.
        if let Some(block) = block.filter(|block| !block.is_zero()) {
            self.backends
                .rooms
                .block(&room, user_id, block)
                .await
                .map_err(unavailable)?;
        }
        let command = ControlCommand::RemoveFromRoom {
            user: user_id.to_owned(),
            room: room.to_string(),
        };
        self.backends
            .broker
            .publish(&Topic::Control, command.frame())
            .await
            .map_err(unavailable)?;
        Ok(room)
    }

    /// Who is in `room`, cluster-wide (the spec's Presence entity): each member's sockets with
    /// their node and `last_seen`, and the socket count per node. `last_seen` is when the node
    /// holding the socket last renewed its lease (Unix ms): the node vouched then that the
    /// socket was alive (it closes sockets silent for the presence TTL).
    pub async fn room_info(&self, room_text: &str) -> Result<serde_json::Value, WireError> {
        let room = Self::parse_room(room_text)?;
        self.room_type(&room)?;
        let sockets = self
            .backends
            .rooms
            .sockets(&room)
            .await
            .map_err(unavailable)?;
        let vouched_at = self.lease_renewals().await?;
        let mut users: Vec<&str> = sockets.iter().map(|entry| entry.user_id.as_str()).collect();
        users.dedup();
        let mut per_node: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut members: Vec<serde_json::Value> = Vec::new();
        for user in &users {
            let of_user: Vec<serde_json::Value> = sockets
                .iter()
                .filter(|entry| entry.user_id == *user)
                .map(|entry| {
                    *per_node.entry(entry.node_id.as_str()).or_default() += 1;
                    serde_json::json!({
                        "socket": entry.socket_id,
                        "node": entry.node_id,
                        "last_seen": vouched_at.get(&entry.node_id),
                    })
                })
                .collect();
            let last_seen = of_user
                .iter()
                .filter_map(|socket| socket["last_seen"].as_u64())
                .max();
            members.push(serde_json::json!({
                "user": user,
                "last_seen": last_seen,
                "sockets": of_user,
            }));
        }
        Ok(serde_json::json!({
            "room": room.as_str(),
            "users": members.len(),
            "sockets": sockets.len(),
            "members": members,
            "nodes": per_node,
        }))
    }

    /// node -> when it last renewed its lease (Unix ms), for every node whose lease is live.
    async fn lease_renewals(&self) -> Result<std::collections::HashMap<String, u64>, WireError> {
        let nodes = self.backends.presence.nodes().await.map_err(unavailable)?;
        Ok(nodes
            .into_iter()
            .map(|node| (node.node_id, node.announced_at_ms))
            .collect())
    }

    /// Stores a notification (idempotent on user and id) and, the first time, pushes
    /// `notification.new` to every socket of the user on every node. Returns the stored row and
    /// whether this call created it.
    pub async fn create_notification(
        &self,
        new: &crate::notifications::NewNotification,
    ) -> Result<(crate::notifications::Notification, bool), WireError> {
        let (stored, created) = self.notifications().insert(new).await?;
        if created {
            // The row is committed: a push that fails is only a missed live update; the
            // notification is listed by GraphQL either way.
            if let Err(error) = self
                .publish_to_user(&stored.user_id, "notification.new", &stored.push_data())
                .await
            {
                tracing::warn!(message = %error.message, "notification.new push failed");
            }
        }
        Ok((stored, created))
    }

    /// Announces this node (connections, version) for cluster info and renews its lease for
    /// `ttl`. When the lease is granted (the first announcement, or after a lapse: the store
    /// lost its data, or this node could not reach it for longer than the lease), the store
    /// holds nothing of this node, and every local socket and membership is registered again.
    /// Otherwise the writes that failed since the last announcement are tried again.
    pub async fn announce(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let _renewing = self.lease_renewal.lock().await;
        self.renew_lease(ttl).await
    }

    /// A write was refused for want of a lease (Redis lost its data, or this node was cut off
    /// for longer than its lease): renews it now rather than at the next announcement, which
    /// registers everything local again. When a renewal is already under way, waits for it.
    async fn renew_lease_after_refusal(&self) {
        match self.lease_renewal.try_lock() {
            Ok(_renewing) => {
                if let Err(error) = self.renew_lease(self.settings.presence.node_lease()).await {
                    tracing::warn!(%error, "lease renewal failed");
                }
            }
            Err(_) => drop(self.lease_renewal.lock().await),
        }
    }

    async fn renew_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let status = crate::stores::NodeStatus {
            node_id: self.node_id.to_string(),
            connections: self.hub.connection_count() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            announced_at_ms: crate::protocol::unix_now_millis(),
        };
        // Taken before the announcement: a grant makes them moot (the store holds nothing of
        // this node), and a write that fails after it is queued for the next one.
        let retries = std::mem::take(&mut *self.store_retries.lock());
        let lease = match self.backends.presence.announce_node(&status, ttl).await {
            Ok(lease) => lease,
            Err(error) => {
                // The call may have reached the store and been granted a lease there.
                self.registration_in_doubt.store(true, Ordering::Release);
                self.store_retries.lock().extend(retries);
                return Err(error);
            }
        };
        let in_doubt = self.registration_in_doubt.swap(false, Ordering::AcqRel);
        match lease {
            Lease::Granted => {
                let earlier_grants = self.lease_grants.fetch_add(1, Ordering::AcqRel);
                if earlier_grants > 0 {
                    metrics::counter!(names::LEASE_LAPSES).increment(1);
                    tracing::warn!(
                        "this node's lease had lapsed; registering its sockets and memberships again"
                    );
                }
                self.register_everything_again().await;
            }
            // Registering again is idempotent (`AlreadyOnline`, `AlreadyMember`); the pending
            // writes go first, since a registration cannot undo a failed disconnect or leave.
            Lease::Held if in_doubt => {
                self.lease_grants.fetch_add(1, Ordering::AcqRel);
                self.retry_store_writes(retries).await;
                self.register_everything_again().await;
            }
            Lease::Held => self.retry_store_writes(retries).await,
        }
        Ok(lease)
    }

    /// Registers every local socket and membership under a newly granted lease. Joins are
    /// capacity checked: a room that filled up meanwhile cannot take the socket back (logged,
    /// counted in `realtime_memberships_lost_total`), and the socket keeps its local
    /// subscription until it leaves. Members saw the users join before: nothing is announced.
    /// A socket or membership that ends meanwhile is removed again right after.
    async fn register_everything_again(&self) {
        use futures_util::StreamExt;
        // Many at once: the connects share batched calls, and a node's thousands of sockets
        // are registered in a fraction of its lease rather than one round trip at a time.
        futures_util::stream::iter(self.hub.local_sockets())
            .for_each_concurrent(REGISTRATIONS_IN_FLIGHT, |handle| async move {
                self.register_socket_again(&handle).await;
            })
            .await;
        futures_util::stream::iter(self.hub.local_memberships())
            .for_each_concurrent(REGISTRATIONS_IN_FLIGHT, |(room, handle)| async move {
                self.register_membership_again(room, &handle).await;
            })
            .await;
    }

    async fn register_socket_again(&self, handle: &SocketHandle) {
        let entry = self.entry_of(handle);
        match self.backends.presence.connect(&entry).await {
            Ok(arrival) => self.note_arrival(&entry, arrival),
            Err(error) => {
                tracing::warn!(%error, "presence connect failed; retried with the next announcement");
                self.store_retries.lock().push(StoreRetry::Connect(entry));
                return;
            }
        }
        if !self.hub.holds_socket(handle) {
            self.retry_store_writes(vec![StoreRetry::Disconnect(entry)])
                .await;
        }
    }

    async fn register_membership_again(&self, room: RoomId, handle: &SocketHandle) {
        let Ok(room_type) = self.room_type(&room) else {
            return;
        };
        let member = Member::of_socket(&self.entry_of(handle));
        match self
            .backends
            .rooms
            .join(&room, &member, room_type.capacity)
            .await
        {
            Ok(JoinOutcome::Full | JoinOutcome::Blocked) => {
                metrics::counter!(names::MEMBERSHIPS_LOST).increment(1);
                tracing::warn!(%room, user_id = %member.user_id, "membership lost with the lease and the room is now full");
            }
            Ok(_) => {
                metrics::counter!(names::MEMBERSHIPS_RESTORED).increment(1);
                if !self.hub.holds_membership(&room, &handle.socket_id) {
                    self.retry_store_writes(vec![StoreRetry::Leave(room, member)])
                        .await;
                }
            }
            Err(error) => {
                // The next grant tries again; until then the room does not count it.
                tracing::warn!(%error, %room, "membership could not be registered again");
            }
        }
    }

    /// Tries failed writes again; those that fail again wait for the next announcement. A
    /// connect whose socket closed meanwhile, and a leave of a room the socket joined again
    /// meanwhile, are dropped.
    async fn retry_store_writes(&self, retries: Vec<StoreRetry>) {
        let linger = self.settings.presence.ttl();
        for retry in retries {
            let failed = match &retry {
                StoreRetry::Connect(entry) => {
                    if !self.hub.holds_socket_id(&entry.user_id, &entry.socket_id) {
                        continue;
                    }
                    match self.backends.presence.connect(entry).await {
                        Ok(arrival) => {
                            self.note_arrival(entry, arrival);
                            // Closed meanwhile: its disconnect may have run before the connect.
                            if !self.hub.holds_socket_id(&entry.user_id, &entry.socket_id) {
                                self.store_retries
                                    .lock()
                                    .push(StoreRetry::Disconnect(entry.clone()));
                            }
                            None
                        }
                        Err(error) => Some(error),
                    }
                }
                StoreRetry::Disconnect(entry) => {
                    self.backends.presence.disconnect(entry, linger).await.err()
                }
                StoreRetry::Leave(room, member)
                    if self.hub.holds_membership(room, &member.socket_id) =>
                {
                    continue;
                }
                StoreRetry::Leave(room, member) => {
                    self.backends.rooms.leave(room, member).await.err()
                }
            };
            if let Some(error) = failed {
                tracing::debug!(%error, "store write failed again; retried with the next announcement");
                self.store_retries.lock().push(retry);
            }
        }
    }

    /// Every node that announced itself recently: connections and version, and the total.
    pub async fn cluster_info(&self) -> Result<serde_json::Value, WireError> {
        let nodes = self.backends.presence.nodes().await.map_err(unavailable)?;
        let connections: u64 = nodes.iter().map(|node| node.connections).sum();
        Ok(serde_json::json!({ "nodes": nodes, "connections": connections }))
    }

    /// A user's live sockets, cluster-wide, with the nodes that hold them, the rooms the user
    /// is in, and `last_seen`: the latest lease renewal of a node holding one of the user's
    /// sockets (`null` when the user has none).
    pub async fn user_info(&self, user_id: &str) -> Result<serde_json::Value, WireError> {
        check_user_id(user_id)?;
        let sockets = self
            .backends
            .presence
            .sockets_of(user_id)
            .await
            .map_err(unavailable)?;
        let mut nodes: Vec<&str> = sockets.iter().map(|entry| &*entry.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let listed: Vec<serde_json::Value> = sockets
            .iter()
            .map(
                |entry| serde_json::json!({ "socket": &*entry.socket_id, "node": &*entry.node_id }),
            )
            .collect();
        let rooms = self
            .backends
            .rooms
            .rooms_of(user_id)
            .await
            .map_err(unavailable)?;
        let vouched_at = self.lease_renewals().await?;
        let last_seen = nodes
            .iter()
            .filter_map(|node| vouched_at.get(*node).copied())
            .max();
        Ok(serde_json::json!({
            "user": user_id,
            "online": !sockets.is_empty(),
            "sockets": listed,
            "nodes": nodes,
            "rooms": rooms,
            "last_seen": last_seen,
        }))
    }

    /// Removes the socket from `room` because a moderator asked (`remove_from_room`): a leave
    /// with reason `removed` (members see `room.user_left`). False when it was not in the room.
    pub async fn evict(&self, session: &mut SocketSession, room: &RoomId) -> bool {
        if !session.rooms.remove(room) {
            return false;
        }
        if let Err(error) = self.leave_room(session, room, "removed").await {
            // The local subscription is gone either way; a failed store leave is retried with the
            // next lease renewal.
            tracing::warn!(message = %error.message, %room, "evicted socket's leave failed");
        }
        true
    }

    /// Leaves every room of a `join = "claims"` type that the socket's (refreshed) token no
    /// longer grants, as a leave would (members see `room.user_left`); returns those rooms.
    pub async fn leave_rooms_no_longer_granted(
        &self,
        session: &mut SocketSession,
    ) -> Result<Vec<RoomId>, WireError> {
        let revoked: Vec<RoomId> = session
            .rooms
            .iter()
            .filter(|room| {
                self.room_type(room).is_ok_and(|room_type| {
                    room_type.join == JoinPolicy::Claims && !session.identity.may_join(room)
                })
            })
            .cloned()
            .collect();
        for room in &revoked {
            session.rooms.remove(room);
            self.leave_room(session, room, "grant_revoked").await?;
        }
        Ok(revoked)
    }

    async fn leave_room(
        &self,
        session: &SocketSession,
        room: &RoomId,
        reason: &str,
    ) -> Result<(), WireError> {
        let handle = session.handle.clone();
        self.remove_interest(&Topic::Room(room.clone()), || {
            self.hub.remove_from_room(room, &handle.socket_id)
        })
        .await;
        let member = self.member_of(session);
        let outcome = match self.backends.rooms.leave(room, &member).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // The membership would hold its place while this node's lease lives.
                self.store_retries
                    .lock()
                    .push(StoreRetry::Leave(room.clone(), member));
                return Err(unavailable(error));
            }
        };
        self.events.emit(PlatformEvent::RoomLeft {
            user_id: member.user_id.to_string(),
            socket_id: member.socket_id.to_string(),
            room: room.to_string(),
            node: self.node_id.to_string(),
            reason: reason.to_owned(),
        });
        let last_for_user = outcome
            == LeaveOutcome::Left {
                last_for_user: true,
            };
        if let (true, Ok(room_type)) = (last_for_user, self.room_type(room)) {
            self.announce_change(room, room_type, Change::Left, &member.user_id)
                .await;
        }
        Ok(())
    }

    /// Tells the room's members that a user's first socket joined or last socket left, as the
    /// room type's `announce` says: at once, in the next diff, or not at all.
    async fn announce_change(
        &self,
        room: &RoomId,
        room_type: &RoomTypeSettings,
        change: Change,
        user_id: &str,
    ) {
        match room_type.announcement() {
            Announce::Off => {}
            Announce::Batched => {
                self.presence_diffs
                    .record(room, user_id, change, room_type.announce_interval());
            }
            Announce::Each => {
                let event = match change {
                    Change::Joined => "room.user_joined",
                    Change::Left => "room.user_left",
                };
                let data =
                    serde_json::value::to_raw_value(&serde_json::json!({ "userId": user_id }))
                        .expect("a JSON object serializes");
                self.push_announcement(room, event, &data).await;
            }
        }
    }

    /// Waits until batched announcements are due, and takes them (push them with
    /// [`Node::push_presence_diffs`]).
    pub async fn due_presence_diffs(&self) -> Vec<(RoomId, Diff)> {
        self.presence_diffs.next_due().await
    }

    /// Pushes every batched announcement now, due or not (shutdown, once the sockets are gone).
    pub async fn flush_presence_diffs(&self) {
        let all = self.presence_diffs.take_all();
        self.push_presence_diffs(all).await;
    }

    pub async fn push_presence_diffs(&self, diffs: Vec<(RoomId, Diff)>) {
        for (room, diff) in diffs {
            metrics::counter!(names::PRESENCE_DIFFS).increment(1);
            let data = serde_json::value::to_raw_value(&diff).expect("a diff serializes");
            self.push_announcement(&room, "room.presence_diff", &data)
                .await;
        }
    }

    async fn push_announcement(&self, room: &RoomId, event: &str, data: &RawValue) {
        if let Err(error) = self
            .broadcast(
                Topic::Room(room.clone()),
                event,
                Some(room),
                None,
                data,
                unix_now_millis(),
            )
            .await
        {
            tracing::warn!(room = %room, message = %error.message, "membership announcement lost");
        }
    }

    /// `presence`: the room's members across all nodes (the caller must be a member).
    pub async fn room_presence(
        &self,
        session: &SocketSession,
        room_text: &str,
    ) -> Result<(RoomId, Vec<String>), WireError> {
        let room = Self::parse_room(room_text)?;
        if !self.room_type(&room)?.presence {
            return Err(WireError::new(
                ErrorCode::PresenceDisabled,
                format!("room type of {room} has presence off"),
            ));
        }
        if !session.rooms.contains(&room) {
            return Err(WireError::new(
                ErrorCode::NotInRoom,
                format!("not a member of {room}"),
            ));
        }
        let members = self
            .backends
            .rooms
            .members(&room)
            .await
            .map_err(unavailable)?;
        Ok((room, members))
    }

    /// `publish` from a client socket: only into rooms it is in, only where allowed.
    pub async fn publish_from_client(
        &self,
        session: &SocketSession,
        room_text: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<Delivery, WireError> {
        let room = Self::parse_room(room_text)?;
        if !self.room_type(&room)?.client_publish {
            return Err(WireError::new(
                ErrorCode::PublishForbidden,
                format!("clients may not publish into {} rooms", room.room_type()),
            ));
        }
        if !session.rooms.contains(&room) {
            return Err(WireError::new(
                ErrorCode::NotInRoom,
                format!("join {room} before publishing"),
            ));
        }
        metrics::counter!(names::PUBLISHES, "source" => "client").increment(1);
        self.publish_to_room(
            &room,
            event,
            data,
            Publisher::Client {
                user_id: &session.entry.user_id,
            },
        )
        .await
    }

    /// Publishes an event to every member of a room on every node.
    /// The room type's plugin chain runs first, once, whoever publishes.
    pub async fn publish_to_room(
        &self,
        room: &RoomId,
        event: &str,
        data: &RawValue,
        publisher: Publisher<'_>,
    ) -> Result<Delivery, WireError> {
        let span = tracing::debug_span!("publish", %room, event);
        let delivery = tracing::Instrument::instrument(
            self.publish_to_room_in_span(room, event, data, publisher),
            span.clone(),
        )
        .await;
        span.in_scope(|| {
            tracing::debug!(
                outcome = match &delivery {
                    Ok(Delivery::Delivered) => "delivered",
                    Ok(_) => "dropped",
                    Err(error) => error.code.as_str(),
                },
                "published"
            )
        });
        delivery
    }

    async fn publish_to_room_in_span(
        &self,
        room: &RoomId,
        event: &str,
        data: &RawValue,
        publisher: Publisher<'_>,
    ) -> Result<Delivery, WireError> {
        check_event_name(event)?;
        let room_type = self.room_type(room)?;
        let from = match publisher {
            Publisher::Client { user_id } => Some(user_id),
            Publisher::Service => None,
        };
        if from.is_some() && is_service_event_name(event) {
            return Err(WireError::new(
                ErrorCode::InvalidEvent,
                "notification.*, progress.*, tournament.* and match.* events are published by \
                 services only",
            ));
        }
        let ts = unix_now_millis();
        let replaced = match (&self.plugins, room_type.plugins.is_empty()) {
            (Some(plugins), false) => {
                let chain_event = ChainEvent {
                    name: event,
                    room_id: room.as_str(),
                    room_type: room.room_type(),
                    sender: from,
                    timestamp_ms: ts,
                    payload: data.get(),
                };
                match plugins.run_chain(&room_type.plugins, room_type.plugin_failure, &chain_event)
                {
                    ChainResult::Deliver(replaced) => replaced,
                    ChainResult::Dropped { reason, .. } => return Ok(Delivery::Dropped { reason }),
                    ChainResult::Rejected { plugin, message } => {
                        return Err(WireError::new(
                            ErrorCode::PluginRejected,
                            format!("{plugin}: {message}"),
                        ));
                    }
                    ChainResult::Failed { plugin } => {
                        return Err(WireError::new(
                            ErrorCode::PluginFailed,
                            format!(
                                "plugin {plugin} failed and {} rooms fail closed",
                                room.room_type()
                            ),
                        ));
                    }
                }
            }
            _ => None,
        };
        // A replacement was checked to be JSON when the plugin returned it.
        let data = replaced.as_deref().unwrap_or(data);
        let push = |position: Option<&Position>| {
            Frame::event(&EventPush::new(event, Some(room.as_str()), from, data, ts).at(position))
        };
        let topic = Topic::Room(room.clone());
        let Some((policy, store)) = self.history_of(room_type) else {
            self.hand_to_broker(&topic, push(None)).await?;
            return Ok(Delivery::Delivered);
        };
        // Stored first (plugins have run: history holds what members receive), then handed to
        // the broker, under the room's publish lock so this node's events leave in offset order.
        let _in_order = self.publish_lock(room).lock().await;
        let started = std::time::Instant::now();
        let stored = store
            .append(room, &policy, &|position| push(Some(position)))
            .await;
        self.record_history_call(started, stored.is_err());
        let frame = match stored {
            Ok((_, frame)) => frame,
            Err(error) => {
                // History never takes live delivery down with it: the event goes out without
                // a position, and the store starts the room's next epoch.
                tracing::warn!(%error, %room, "history store failed; delivering without a position");
                metrics::counter!(names::HISTORY_APPEND_FAILURES).increment(1);
                push(None)
            }
        };
        self.hand_to_broker(&topic, frame).await?;
        Ok(Delivery::Delivered)
    }

    async fn hand_to_broker(&self, topic: &Topic, frame: Frame) -> Result<(), WireError> {
        self.backends
            .broker
            .publish(topic, frame)
            .await
            .map_err(unavailable)
    }

    /// Publishes an event to every socket of a user on every node.
    pub async fn publish_to_user(
        &self,
        user_id: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<(), WireError> {
        check_event_name(event)?;
        if user_id.is_empty() {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "`user` must not be empty",
            ));
        }
        self.broadcast(
            Topic::User(Arc::from(user_id)),
            event,
            None,
            None,
            data,
            unix_now_millis(),
        )
        .await
    }

    /// Encodes the event once (stamped `ts`) and hands the bytes to the broker.
    async fn broadcast(
        &self,
        topic: Topic,
        event: &str,
        room: Option<&RoomId>,
        from: Option<&str>,
        data: &RawValue,
        ts: u64,
    ) -> Result<(), WireError> {
        let frame = Frame::event(&EventPush::new(
            event,
            room.map(RoomId::as_str),
            from,
            data,
            ts,
        ));
        self.hand_to_broker(&topic, frame).await
    }

    /// One pass of the offline scheduler: emits `user.offline` for users taken as offline.
    pub async fn sweep_offline(&self) -> Result<usize, StoreError> {
        let gone = self.backends.presence.take_offline().await?;
        for user_id in &gone {
            self.events.emit(PlatformEvent::UserOffline {
                user_id: user_id.clone(),
                node: self.node_id.to_string(),
            });
        }
        Ok(gone.len())
    }
}

fn check_user_id(user_id: &str) -> Result<(), WireError> {
    if user_id.is_empty() || user_id.len() > crate::auth::MAX_USER_ID_BYTES {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("`user` must be 1-{} bytes", crate::auth::MAX_USER_ID_BYTES),
        ));
    }
    Ok(())
}

fn check_event_name(event: &str) -> Result<(), WireError> {
    if !is_valid_event_name(event) {
        return Err(WireError::new(
            ErrorCode::InvalidEvent,
            "event names are 1-64 characters of [A-Za-z0-9._:-]",
        ));
    }
    if is_reserved_event_name(event) {
        return Err(WireError::new(
            ErrorCode::InvalidEvent,
            "event names starting with room., socket. or user. are reserved for the server",
        ));
    }
    Ok(())
}
