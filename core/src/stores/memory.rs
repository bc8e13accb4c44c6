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
use super::presence::{Arrival, Lease, NodeStatus, PresenceStore, SocketEntry};
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

/// A lease as the memory stores see it: until when it lives, and which grant it is (a lapsed
/// node granted a lease again gets a new generation, so what it registered before stays dead).
#[derive(Debug, Clone, Copy)]
struct NodeLease {
    until: Instant,
    generation: u64,
}

/// Node leases shared by one process's memory presence and room stores: the memory analogue of
/// the `nodes:until` key in Redis. What a node registers carries its lease generation and
/// counts only while that lease lives.
#[derive(Default)]
pub struct MemoryLeases {
    /// node -> (latest status, lease).
    nodes: Mutex<HashMap<Arc<str>, (NodeStatus, NodeLease)>>,
    next_generation: AtomicU64,
}

impl MemoryLeases {
    pub fn new() -> Arc<MemoryLeases> {
        Arc::new(MemoryLeases::default())
    }

    /// Renews (or grants) the node's lease for `ttl` and records its status.
    fn renew(&self, status: &NodeStatus, ttl: Duration) -> Lease {
        let now = Instant::now();
        let mut nodes = self.nodes.lock();
        let node_id: Arc<str> = Arc::from(status.node_id.as_str());
        let held = nodes
            .get(&node_id)
            .map(|(_, lease)| *lease)
            .filter(|lease| lease.until > now);
        let (generation, answer) = match held {
            Some(lease) => (lease.generation, Lease::Held),
            None => (
                self.next_generation.fetch_add(1, Ordering::Relaxed),
                Lease::Granted,
            ),
        };
        let lease = NodeLease {
            until: now + ttl,
            generation,
        };
        nodes.insert(node_id, (status.clone(), lease));
        answer
    }

    /// The generation of the node's live lease, if it holds one.
    fn live_generation(&self, node_id: &str) -> Option<u64> {
        let now = Instant::now();
        self.nodes
            .lock()
            .get(node_id)
            .filter(|(_, lease)| lease.until > now)
            .map(|(_, lease)| lease.generation)
    }

    /// The registration check: the node's live generation, or `NoLease`.
    fn require(&self, node_id: &str) -> Result<u64, StoreError> {
        self.live_generation(node_id)
            .ok_or_else(|| StoreError::NoLease(node_id.to_owned()))
    }

    /// A predicate telling whether something registered under (node, generation) still counts,
    /// with one look at the leases for every check it makes.
    fn liveness(&self) -> impl Fn(&Registration) -> bool + use<> {
        let now = Instant::now();
        let live: HashMap<Arc<str>, u64> = self
            .nodes
            .lock()
            .iter()
            .filter(|(_, (_, lease))| lease.until > now)
            .map(|(node, (_, lease))| (node.clone(), lease.generation))
            .collect();
        move |registration: &Registration| {
            live.get(&registration.node_id) == Some(&registration.generation)
        }
    }

    fn statuses(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock();
        // A lapsed node's entry goes once listed as gone; its generation is never reused.
        nodes.retain(|_, (_, lease)| lease.until > now);
        let mut listed: Vec<NodeStatus> =
            nodes.values().map(|(status, _)| status.clone()).collect();
        listed.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        listed
    }
}

/// A socket or membership as registered: under which node's lease, and which grant of it.
#[derive(Debug, Clone)]
struct Registration {
    node_id: Arc<str>,
    generation: u64,
}

#[derive(Debug)]
struct UserPresence {
    sockets: PerSocket<Registration>,
    /// Set when the user's last socket disconnected: online until then.
    lingers_until: Option<Instant>,
}

/// Presence in a map, under the leases of [`MemoryLeases`]. Uses tokio's clock, so tests can
/// pause and advance time.
pub struct MemoryPresenceStore {
    users: Mutex<HashMap<Arc<str>, UserPresence>>,
    leases: Arc<MemoryLeases>,
}

impl MemoryPresenceStore {
    pub fn new(leases: Arc<MemoryLeases>) -> MemoryPresenceStore {
        MemoryPresenceStore {
            users: Mutex::default(),
            leases,
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<Lease, StoreError> {
        Ok(self.leases.renew(status, ttl))
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        Ok(self.leases.statuses())
    }

    async fn connect(&self, socket: &SocketEntry) -> Result<Arrival, StoreError> {
        let generation = self.leases.require(&socket.node_id)?;
        let registration = Registration {
            node_id: socket.node_id.clone(),
            generation,
        };
        let mut users = self.users.lock();
        match users.get_mut(&socket.user_id) {
            Some(user) => {
                user.lingers_until = None;
                set_for_socket(&mut user.sockets, &socket.socket_id, registration);
                Ok(Arrival::AlreadyOnline)
            }
            None => {
                let user = UserPresence {
                    sockets: PerSocket::one((socket.socket_id.clone(), registration)),
                    lingers_until: None,
                };
                users.insert(socket.user_id.clone(), user);
                Ok(Arrival::CameOnline)
            }
        }
    }

    async fn disconnect(&self, socket: &SocketEntry, linger: Duration) -> Result<(), StoreError> {
        let is_live = self.leases.liveness();
        if let Some(user) = self.users.lock().get_mut(&socket.user_id) {
            let removed = user.sockets.remove_where(|(id, _)| *id == socket.socket_id);
            // Like the Redis store: the linger starts with the last live socket's disconnect;
            // a user whose sockets all die with their node goes when that lease lapses.
            user.sockets
                .retain(|(_, registration)| is_live(registration));
            if removed.is_some() && user.sockets.is_empty() {
                user.lingers_until = Some(Instant::now() + linger);
            }
        }
        Ok(())
    }

    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError> {
        let is_live = self.leases.liveness();
        let users = self.users.lock();
        let Some((user_key, user)) = users.get_key_value(user_id) else {
            return Ok(Vec::new());
        };
        let mut live: Vec<SocketEntry> = user
            .sockets
            .iter()
            .filter(|(_, registration)| is_live(registration))
            .map(|(socket_id, registration)| SocketEntry {
                user_id: user_key.clone(),
                socket_id: socket_id.clone(),
                node_id: registration.node_id.clone(),
            })
            .collect();
        live.sort_by(|left, right| left.socket_id.cmp(&right.socket_id));
        Ok(live)
    }

    async fn take_offline(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let is_live = self.leases.liveness();
        let mut gone = Vec::new();
        self.users.lock().retain(|user_id, user| {
            user.sockets
                .retain(|(_, registration)| is_live(registration));
            let offline =
                user.sockets.is_empty() && user.lingers_until.is_none_or(|until| until <= now);
            if offline {
                gone.push(user_id.to_string());
            }
            !offline
        });
        gone.sort();
        Ok(gone)
    }
}

/// Membership of one room: user -> that user's sockets in the room, each under its node's lease.
type RoomMembers = HashMap<Arc<str>, PerSocket<Registration>>;

/// Drops the memberships of lapsed leases from one room. O(members): run only where they would
/// change the answer (a full room, a listing), not on every join.
fn purge_lapsed(members: &mut RoomMembers, is_live: &impl Fn(&Registration) -> bool) {
    members.retain(|_, sockets| {
        sockets.retain(|(_, registration)| is_live(registration));
        !sockets.is_empty()
    });
}

/// Room membership in a map, under the leases of [`MemoryLeases`]; the capacity check and the
/// insert happen under one lock. Uses tokio's clock, so tests can pause and advance time.
pub struct MemoryRoomStore {
    rooms: Mutex<HashMap<RoomId, RoomMembers>>,
    /// (room, user) -> blocked until.
    blocked: Mutex<HashMap<(RoomId, Arc<str>), Instant>>,
    leases: Arc<MemoryLeases>,
}

impl MemoryRoomStore {
    pub fn new(leases: Arc<MemoryLeases>) -> MemoryRoomStore {
        MemoryRoomStore {
            rooms: Mutex::default(),
            blocked: Mutex::default(),
            leases,
        }
    }
}

#[async_trait]
impl RoomStore for MemoryRoomStore {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
    ) -> Result<JoinOutcome, StoreError> {
        let now = Instant::now();
        let generation = self.leases.require(&member.node_id)?;
        {
            let mut blocked = self.blocked.lock();
            blocked.retain(|_, until| *until > now);
            if blocked.contains_key(&(room.clone(), member.user_id.clone())) {
                return Ok(JoinOutcome::Blocked);
            }
        }
        let registration = Registration {
            node_id: member.node_id.clone(),
            generation,
        };
        let mut rooms = self.rooms.lock();
        let members = rooms.entry(room.clone()).or_default();
        if let Some(sockets) = members.get_mut(&member.user_id) {
            // The leases are looked at only where a lapsed membership would change the answer
            // (the user's own sockets, a full room), not on every join.
            let is_live = self.leases.liveness();
            sockets.retain(|(_, registration)| is_live(registration));
            if !sockets.is_empty() {
                let previous = set_for_socket(sockets, &member.socket_id, registration);
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
            purge_lapsed(members, &self.leases.liveness());
        }
        if members.len() >= capacity as usize {
            if members.is_empty() {
                rooms.remove(room);
            }
            return Ok(JoinOutcome::Full);
        }
        members.insert(
            member.user_id.clone(),
            PerSocket::one((member.socket_id.clone(), registration)),
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

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError> {
        let is_live = self.leases.liveness();
        let mut rooms = self.rooms.lock();
        let Some(members) = rooms.get_mut(room) else {
            return Ok(LeaveOutcome::NotMember);
        };
        let outcome = match members.get_mut(&member.user_id) {
            None => LeaveOutcome::NotMember,
            Some(sockets) => {
                // A membership of a lapsed lease is gone already, like in the Redis store.
                sockets.retain(|(_, registration)| is_live(registration));
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
        let is_live = self.leases.liveness();
        let mut rooms = self.rooms.lock();
        let mut listed = Vec::new();
        if let Some(members) = rooms.get_mut(room) {
            purge_lapsed(members, &is_live);
            for (user_id, sockets) in members.iter() {
                for (socket_id, registration) in sockets.iter() {
                    listed.push(RoomSocket {
                        user_id: user_id.to_string(),
                        socket_id: socket_id.to_string(),
                        node_id: registration.node_id.to_string(),
                    });
                }
            }
        }
        listed.sort_by(|a, b| (&a.user_id, &a.socket_id).cmp(&(&b.user_id, &b.socket_id)));
        Ok(listed)
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        // A scan: this store serves one node, and the question comes from an operator.
        let is_live = self.leases.liveness();
        let rooms = self.rooms.lock();
        let mut listed: Vec<String> = rooms
            .iter()
            .filter(|(_, members)| {
                members.get(user_id).is_some_and(|sockets| {
                    sockets
                        .iter()
                        .any(|(_, registration)| is_live(registration))
                })
            })
            .map(|(room, _)| room.to_string())
            .collect();
        listed.sort();
        Ok(listed)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError> {
        let is_live = self.leases.liveness();
        let mut rooms = self.rooms.lock();
        let mut users: Vec<String> = match rooms.get_mut(room) {
            Some(members) => {
                purge_lapsed(members, &is_live);
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
