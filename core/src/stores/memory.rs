//! In-memory backends: the embedded default when no Redis or NATS is configured.
//!
//! They keep the same guarantees as the networked backends within one process. A [`MemoryBus`]
//! may be shared by several [`MemoryBroker`]s, which then behave like nodes on one bus (the
//! conformance suite uses that to test cross-node delivery). Locks are `parking_lot` mutexes held
//! only for map updates, never across `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::StoreError;
use super::broker::{Broker, DeliveryHandler, Topic};
use super::history::{EncodeAt, HistoryPolicy, HistoryStore, Position, Recovery};
use super::presence::{Arrival, NodeStatus, PresenceStore, SocketEntry};
use super::rate_limit::{RateDecision, RateLimiter};
use super::rooms::{JoinOutcome, LeaveOutcome, Member, RoomSocket, RoomStore};
use crate::protocol::Frame;
use crate::room::RoomId;
use crate::small_set::SmallSet;

/// The in-process "network" that memory brokers publish on.
#[derive(Default)]
pub struct MemoryBus {
    /// topic -> (broker id, handler). Read-mostly: publishes far outnumber subscription changes.
    subscriptions: RwLock<HashMap<Topic, Vec<(u64, DeliveryHandler)>>>,
    next_broker_id: AtomicU64,
}

impl MemoryBus {
    pub fn new() -> Arc<MemoryBus> {
        Arc::new(MemoryBus::default())
    }
}

/// One node's view of a [`MemoryBus`]. Delivery is synchronous, on the publisher's task.
pub struct MemoryBroker {
    bus: Arc<MemoryBus>,
    broker_id: u64,
    deliver: DeliveryHandler,
}

impl MemoryBroker {
    pub fn new(bus: Arc<MemoryBus>, deliver: DeliveryHandler) -> MemoryBroker {
        let broker_id = bus.next_broker_id.fetch_add(1, Ordering::Relaxed);
        MemoryBroker {
            bus,
            broker_id,
            deliver,
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError> {
        // Copy the handler list out so no lock is held while handlers run.
        let handlers: Vec<DeliveryHandler> = match self.bus.subscriptions.read().get(topic) {
            Some(subscribers) => subscribers
                .iter()
                .map(|(_, handler)| handler.clone())
                .collect(),
            None => return Ok(()),
        };
        for handler in handlers {
            handler(topic, frame.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let mut subscriptions = self.bus.subscriptions.write();
        let subscribers = subscriptions.entry(topic.clone()).or_default();
        if !subscribers.iter().any(|(id, _)| *id == self.broker_id) {
            subscribers.push((self.broker_id, self.deliver.clone()));
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let mut subscriptions = self.bus.subscriptions.write();
        if let Some(subscribers) = subscriptions.get_mut(topic) {
            subscribers.retain(|(id, _)| *id != self.broker_id);
            if subscribers.is_empty() {
                subscriptions.remove(topic);
            }
        }
        Ok(())
    }
}

/// A few values keyed by socket id (a user has one to a handful of sockets).
type PerSocket<T> = SmallSet<(Arc<str>, T)>;

/// Sets the socket's value; returns the previous one.
fn set_for_socket<T>(sockets: &mut PerSocket<T>, socket_id: &Arc<str>, value: T) -> Option<T> {
    match sockets.find_mut(|(id, _)| id == socket_id) {
        Some((_, slot)) => Some(std::mem::replace(slot, value)),
        None => {
            sockets.push((socket_id.clone(), value));
            None
        }
    }
}

#[derive(Debug)]
struct SocketPresence {
    node_id: Arc<str>,
    expires_at: Instant,
}

#[derive(Debug)]
struct UserPresence {
    sockets: PerSocket<SocketPresence>,
    /// The latest expiry ever granted to any socket of the user.
    online_until: Instant,
}

/// Presence in a map. Uses tokio's clock, so tests can pause and advance time.
#[derive(Default)]
pub struct MemoryPresenceStore {
    users: Mutex<HashMap<Arc<str>, UserPresence>>,
    /// node -> (status, valid until).
    nodes: Mutex<HashMap<String, (NodeStatus, Instant)>>,
}

impl MemoryPresenceStore {
    pub fn new() -> MemoryPresenceStore {
        MemoryPresenceStore::default()
    }

    fn touch(&self, socket: &SocketEntry, ttl: Duration) -> Arrival {
        let expires_at = Instant::now() + ttl;
        let mut users = self.users.lock();
        let mut arrival = Arrival::AlreadyOnline;
        let presence = SocketPresence {
            node_id: socket.node_id.clone(),
            expires_at,
        };
        match users.get_mut(&socket.user_id) {
            Some(user) => {
                user.online_until = user.online_until.max(expires_at);
                set_for_socket(&mut user.sockets, &socket.socket_id, presence);
            }
            None => {
                arrival = Arrival::CameOnline;
                let user = UserPresence {
                    sockets: PerSocket::one((socket.socket_id.clone(), presence)),
                    online_until: expires_at,
                };
                users.insert(socket.user_id.clone(), user);
            }
        }
        arrival
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<(), StoreError> {
        self.nodes.lock().insert(
            status.node_id.clone(),
            (status.clone(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, until)| *until > now);
        let mut listed: Vec<NodeStatus> =
            nodes.values().map(|(status, _)| status.clone()).collect();
        listed.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(listed)
    }

    async fn connect(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        Ok(self.touch(socket, ttl))
    }

    async fn heartbeat(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        Ok(self.touch(socket, ttl))
    }

    async fn disconnect(&self, socket: &SocketEntry) -> Result<(), StoreError> {
        if let Some(user) = self.users.lock().get_mut(&socket.user_id) {
            user.sockets.remove_where(|(id, _)| *id == socket.socket_id);
        }
        Ok(())
    }

    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError> {
        let now = Instant::now();
        let users = self.users.lock();
        let Some((user_key, user)) = users.get_key_value(user_id) else {
            return Ok(Vec::new());
        };
        let mut live: Vec<SocketEntry> = user
            .sockets
            .iter()
            .filter(|(_, socket)| socket.expires_at > now)
            .map(|(socket_id, socket)| SocketEntry {
                user_id: user_key.clone(),
                socket_id: socket_id.clone(),
                node_id: socket.node_id.clone(),
            })
            .collect();
        live.sort_by(|left, right| left.socket_id.cmp(&right.socket_id));
        Ok(live)
    }

    async fn take_offline(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.users.lock().retain(|user_id, user| {
            let expired = user.online_until <= now
                && user
                    .sockets
                    .iter()
                    .all(|(_, socket)| socket.expires_at <= now);
            if expired {
                gone.push(user_id.to_string());
            }
            !expired
        });
        gone.sort();
        Ok(gone)
    }
}

/// Membership of one room: user -> that user's sockets in the room, each with its expiry.
type RoomMembers = HashMap<Arc<str>, PerSocket<Instant>>;

/// Drops expired memberships of one room. O(members): run only where expired entries would
/// change the answer (a full room, a listing), not on every join.
fn purge_expired(members: &mut RoomMembers, now: Instant) {
    members.retain(|_, sockets| {
        sockets.retain(|(_, expires_at)| *expires_at > now);
        !sockets.is_empty()
    });
}

/// Room membership in a map; the capacity check and the insert happen under one lock.
/// Uses tokio's clock, so tests can pause and advance time.
#[derive(Default)]
pub struct MemoryRoomStore {
    rooms: Mutex<HashMap<RoomId, RoomMembers>>,
    /// (room, user) -> blocked until.
    blocked: Mutex<HashMap<(RoomId, Arc<str>), Instant>>,
}

impl MemoryRoomStore {
    pub fn new() -> MemoryRoomStore {
        MemoryRoomStore::default()
    }
}

#[async_trait]
impl RoomStore for MemoryRoomStore {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
        ttl: Duration,
    ) -> Result<JoinOutcome, StoreError> {
        let now = Instant::now();
        {
            let mut blocked = self.blocked.lock();
            blocked.retain(|_, until| *until > now);
            if blocked.contains_key(&(room.clone(), member.user_id.clone())) {
                return Ok(JoinOutcome::Blocked);
            }
        }
        let mut rooms = self.rooms.lock();
        let members = rooms.entry(room.clone()).or_default();
        if let Some(sockets) = members.get_mut(&member.user_id) {
            sockets.retain(|(_, expires_at)| *expires_at > now);
            if !sockets.is_empty() {
                let previous = set_for_socket(sockets, &member.socket_id, now + ttl);
                return Ok(match previous {
                    Some(_) => JoinOutcome::AlreadyMember,
                    None => JoinOutcome::Joined {
                        first_for_user: false,
                    },
                });
            }
            members.remove(&member.user_id);
        }
        if members.len() >= capacity as usize {
            purge_expired(members, now);
        }
        if members.len() >= capacity as usize {
            if members.is_empty() {
                rooms.remove(room);
            }
            return Ok(JoinOutcome::Full);
        }
        members.insert(
            member.user_id.clone(),
            PerSocket::one((member.socket_id.clone(), now + ttl)),
        );
        Ok(JoinOutcome::Joined {
            first_for_user: true,
        })
    }

    async fn block(
        &self,
        room: &RoomId,
        user_id: &str,
        duration: Duration,
    ) -> Result<(), StoreError> {
        self.blocked.lock().insert(
            (room.clone(), Arc::from(user_id)),
            Instant::now() + duration,
        );
        Ok(())
    }

    async fn refresh(
        &self,
        rooms: &[RoomId],
        member: &Member,
        ttl: Duration,
    ) -> Result<Vec<RoomId>, StoreError> {
        let now = Instant::now();
        let mut all_rooms = self.rooms.lock();
        let mut gone = Vec::new();
        for room in rooms {
            let socket = all_rooms
                .get_mut(room)
                .and_then(|members| members.get_mut(&member.user_id))
                .and_then(|sockets| sockets.find_mut(|(id, _)| *id == member.socket_id))
                .map(|(_, expires_at)| expires_at)
                .filter(|expires_at| **expires_at > now);
            match socket {
                Some(expires_at) => *expires_at = now + ttl,
                None => gone.push(room.clone()),
            }
        }
        Ok(gone)
    }

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let Some(members) = rooms.get_mut(room) else {
            return Ok(LeaveOutcome::NotMember);
        };
        let outcome = match members.get_mut(&member.user_id) {
            None => LeaveOutcome::NotMember,
            Some(sockets) => {
                // An expired membership counts as gone already, like in the networked stores.
                sockets.retain(|(_, expires_at)| *expires_at > now);
                let removed = sockets.remove_where(|(id, _)| *id == member.socket_id);
                let last_for_user = sockets.is_empty();
                if last_for_user {
                    members.remove(&member.user_id);
                }
                match removed {
                    Some(_) => LeaveOutcome::Left { last_for_user },
                    None => LeaveOutcome::NotMember,
                }
            }
        };
        if members.is_empty() {
            rooms.remove(room);
        }
        Ok(outcome)
    }

    async fn sockets(&self, room: &RoomId) -> Result<Vec<RoomSocket>, StoreError> {
        let now = Instant::now();
        let now_ms = crate::protocol::unix_now_millis();
        let mut rooms = self.rooms.lock();
        let mut listed = Vec::new();
        if let Some(members) = rooms.get_mut(room) {
            purge_expired(members, now);
            for (user_id, sockets) in members.iter() {
                for (socket_id, expires_at) in sockets.iter() {
                    listed.push(RoomSocket {
                        user_id: user_id.to_string(),
                        socket_id: socket_id.to_string(),
                        expires_at_ms: now_ms + expires_at.duration_since(now).as_millis() as u64,
                    });
                }
            }
        }
        listed.sort_by(|a, b| (&a.user_id, &a.socket_id).cmp(&(&b.user_id, &b.socket_id)));
        Ok(listed)
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        // A scan: this store serves one node, and the question comes from an operator.
        let now = Instant::now();
        let rooms = self.rooms.lock();
        let mut listed: Vec<String> = rooms
            .iter()
            .filter(|(_, members)| {
                members
                    .get(user_id)
                    .is_some_and(|sockets| sockets.iter().any(|(_, expires_at)| *expires_at > now))
            })
            .map(|(room, _)| room.to_string())
            .collect();
        listed.sort();
        Ok(listed)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let mut users: Vec<String> = match rooms.get_mut(room) {
            Some(members) => {
                purge_expired(members, now);
                members.keys().map(|user| user.to_string()).collect()
            }
            None => Vec::new(),
        };
        users.sort();
        Ok(users)
    }
}

/// Windows kept before expired ones are swept out of the map.
const RATE_WINDOWS_BEFORE_SWEEP: usize = 10_000;

/// Fixed-window counters in a map (one node). Uses tokio's clock.
#[derive(Default)]
pub struct MemoryRateLimiter {
    /// key -> (hits in the window, window end).
    windows: Mutex<HashMap<String, (u32, Instant)>>,
}

impl MemoryRateLimiter {
    pub fn new() -> MemoryRateLimiter {
        MemoryRateLimiter::default()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let now = Instant::now();
        let mut windows = self.windows.lock();
        if windows.len() >= RATE_WINDOWS_BEFORE_SWEEP {
            windows.retain(|_, (_, ends_at)| *ends_at > now);
        }
        let entry = windows.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(if entry.0 <= limit {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: entry.1 - now,
            }
        })
    }
}

/// Room history in this process (the embedded default, one node). Appends to a room are
/// serialised by one lock, so offsets are contiguous by construction. Rooms whose events have
/// all expired are forgotten by a sweep every [`SWEEP_EVERY_ACCESSES`] calls (their next event
/// starts a new epoch), so memory holds at most `size` frames per room that published recently.
#[derive(Default)]
pub struct MemoryHistory {
    rooms: Mutex<HashMap<RoomId, RoomLog>>,
    accesses: AtomicU64,
}

const SWEEP_EVERY_ACCESSES: u64 = 4096;

/// How long a room with no event kept stays known (its epoch with it) after its last use.
const EMPTY_ROOM_KEPT_FOR: Duration = Duration::from_secs(600);

struct RoomLog {
    epoch: Arc<str>,
    last_offset: u64,
    /// (offset, stored at, frame), oldest first.
    events: std::collections::VecDeque<(u64, Instant, Frame)>,
    /// The policy of the last access, for the sweep.
    policy: HistoryPolicy,
    touched: Instant,
}

impl RoomLog {
    fn new(policy: &HistoryPolicy) -> RoomLog {
        RoomLog {
            epoch: super::history::new_epoch(),
            last_offset: 0,
            events: std::collections::VecDeque::new(),
            policy: *policy,
            touched: Instant::now(),
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.last_offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops events beyond the policy's size or age.
    fn trim(&mut self, policy: &HistoryPolicy, now: Instant) {
        while self.events.len() > policy.size {
            self.events.pop_front();
        }
        if let Some(ttl) = policy.ttl {
            let had_events = !self.events.is_empty();
            while self
                .events
                .front()
                .is_some_and(|(_, stored, _)| now.duration_since(*stored) > ttl)
            {
                self.events.pop_front();
            }
            // Every event expired: the room's history is lost, as it is on JetStream (where the
            // position is read from the last record), so the sequence starts again.
            if had_events && self.events.is_empty() {
                *self = RoomLog::new(policy);
            }
        }
    }

    /// The frames after `offset`, or `None` when one of them is no longer kept.
    fn after(&self, offset: u64) -> Option<Vec<Frame>> {
        let missed = self.last_offset - offset;
        if missed as usize > self.events.len() {
            return None;
        }
        let skip = self.events.len() - missed as usize;
        Some(
            self.events
                .iter()
                .skip(skip)
                .map(|(_, _, frame)| frame.clone())
                .collect(),
        )
    }
}

impl MemoryHistory {
    pub fn new() -> MemoryHistory {
        MemoryHistory::default()
    }

    /// The room's log, trimmed to the policy; created (with a new epoch) when missing.
    fn with_log<T>(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        work: impl FnOnce(&mut RoomLog) -> T,
    ) -> T {
        if self
            .accesses
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY_ACCESSES)
        {
            self.sweep();
        }
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let log = rooms
            .entry(room.clone())
            .or_insert_with(|| RoomLog::new(policy));
        log.policy = *policy;
        log.touched = now;
        log.trim(policy, now);
        work(log)
    }

    /// Trims every room by its policy and forgets rooms that hold no event and have not been
    /// used for [`EMPTY_ROOM_KEPT_FOR`] (their next event starts a new epoch).
    fn sweep(&self) {
        let now = Instant::now();
        self.rooms.lock().retain(|_, log| {
            let policy = log.policy;
            log.trim(&policy, now);
            !log.events.is_empty() || now.duration_since(log.touched) < EMPTY_ROOM_KEPT_FOR
        });
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    async fn append(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        encode: EncodeAt<'_>,
    ) -> Result<(Position, Frame), StoreError> {
        Ok(self.with_log(room, policy, |log| {
            log.last_offset += 1;
            let position = log.position();
            let frame = encode(&position);
            log.events
                .push_back((position.offset, Instant::now(), frame.clone()));
            log.trim(policy, Instant::now());
            (position, frame)
        }))
    }

    async fn position(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
    ) -> Result<Position, StoreError> {
        Ok(self.with_log(room, policy, |log| log.position()))
    }

    async fn since(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        since: &Position,
    ) -> Result<Recovery, StoreError> {
        Ok(self.with_log(room, policy, |log| {
            let position = log.position();
            if since.epoch != log.epoch || since.offset > log.last_offset {
                return Recovery::NotRecovered { position };
            }
            match log.after(since.offset) {
                Some(events) => Recovery::Recovered { position, events },
                None => Recovery::NotRecovered { position },
            }
        }))
    }

    async fn latest(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        limit: usize,
    ) -> Result<(Position, Vec<Frame>), StoreError> {
        Ok(self.with_log(room, policy, |log| {
            let skip = log.events.len().saturating_sub(limit);
            let events = log
                .events
                .iter()
                .skip(skip)
                .map(|(_, _, frame)| frame.clone())
                .collect();
            (log.position(), events)
        }))
    }
}
