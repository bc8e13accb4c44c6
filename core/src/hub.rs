//! This node's connection registry: socket handles, and which local sockets are in which room or
//! belong to which user. Fan-out of an already-encoded frame to local sockets happens here.
//!
//! Maps are sharded by key hash so joins, leaves and fan-outs on different rooms do not contend;
//! each shard is a `parking_lot::RwLock` held only for the map operation (never across `.await`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::protocol::{CloseCode, ControlCommand, Frame};
use crate::room::RoomId;
use crate::small_set::SmallSet;
use crate::stores::{Position, Topic};

/// Fan-outs to at most this many local sockets write each push in the publishing task; larger
/// ones queue them for the sockets' own tasks. Each write is a system call of its own, so beyond
/// ~1,000 the last recipient would wait longer than the sockets' tasks, spread over every worker
/// thread and coalescing what accumulates, take to deliver to all (docs/benchmarks.md, "When
/// pushes are written where").
const DIRECT_FAN_OUT_MAX: usize = 1024;

/// Whether a fan-out handing pushes to its recipients in the publishing task gives up the CPU
/// (`sched_yield`) after the push to recipient `index` (from 0) of `total`: after every
/// `yield_every`-th (`server.fanout_yield_every`; 0 = never), but not after the last. A write
/// makes its reader runnable, but the kernel lets a thread that shares the core run only when
/// the writer's time slice ends, so a co-located reader of the first recipients would wait for
/// the whole fan-out. With nothing else of the same scheduling group waiting, the yield returns
/// at once. Why, and the trade-off: docs/benchmarks.md, "Yielding during a fan-out".
fn yields_after(index: usize, total: usize, yield_every: usize) -> bool {
    yield_every > 0 && index % yield_every == yield_every - 1 && index + 1 < total
}

/// Records how long after its acceptance (`ts`, on the publishing node's clock) an event was
/// handed to this node's sockets: written, or queued for a socket's task when it could not be
/// written at once. Once per fan-out, not per recipient.
fn record_publish_to_write(frame: &Frame) {
    if let Some(accepted) = frame.accepted_at_ms() {
        let lag_ms = crate::protocol::unix_now_millis().saturating_sub(accepted);
        metrics::histogram!(crate::metrics::PUBLISH_TO_WRITE_SECONDS)
            .record(lag_ms as f64 / 1000.0);
    }
}

/// Most steps a drain is spread over (each closes a slice of the sockets).
const DRAIN_STEPS: usize = 100;

/// Shard count: a power of two well above the core count, so writers rarely meet.
const SHARDS: usize = 64;

/// What woke a socket's loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Signal {
    /// Frames are queued for the socket.
    Frames,
    /// A close was requested (slow consumer, shutdown, ...) with this code.
    Close(CloseCode),
    /// The socket was removed from rooms (see [`SocketHandle::take_evictions`]).
    Evicted,
}

/// Queue capacity kept after a burst drains; more is given back.
const OUTBOX_KEEP: usize = 8;

/// What became of a push handed to a [`PushLane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// On its way to the client; nothing waits.
    Written,
    /// Waiting behind earlier bytes: the socket's task must drain the lane.
    Queued,
    /// Kept until the socket's first frame is out ([`PushLane::start`]).
    Held,
    /// The lane already holds its limit: the client is not reading.
    Full,
    /// The socket is closing; pushes are no longer written.
    Dropped,
}

/// A socket's write side as the fan-out sees it, for transports that let the publishing task
/// write a push itself: a wake-up and poll of the socket's own task costs more than the write.
///
/// Guarantees an implementation gives: bytes leave in the order they were handed over, whether
/// by [`push`](Self::push) or by the socket's task, except that pushes before
/// [`start`](Self::start) or between [`hold`](Self::hold) and [`release`](Self::release) are held
/// and leave after what the socket's task wrote meanwhile; none leaves after [`stop`](Self::stop).
pub trait PushLane: Send + Sync {
    /// The frame as this transport writes it. Made once per fan-out and shared by every
    /// recipient: every socket of a node speaks the same transport.
    fn encode(&self, frame: &Frame) -> Bytes;
    /// Writes an encoded push now, or queues it when bytes wait before it (or, for a lane that
    /// coalesces, when it is part of a dense stream); refuses it when `backlog_limit` chunks
    /// already wait.
    fn push(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed;
    /// Queues an encoded push for the socket's task without trying to write it.
    fn queue(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed;
    /// Whether bytes wait for the socket's task to drain them (or a write failed).
    fn has_backlog(&self) -> bool;
    /// How many frames (or pieces of one) wait to be written, held ones included.
    fn backlog_len(&self) -> usize;
    /// Writes the socket's first frame (already encoded), then lets held pushes follow it.
    /// True when bytes now wait for the socket's task.
    fn start(&self, first_frame: Bytes) -> bool;
    /// Holds pushes back from now on (they still count against the backlog limit).
    fn hold(&self);
    /// Lets held pushes follow what the socket's task wrote meanwhile. True when bytes now
    /// wait for the socket's task.
    fn release(&self) -> bool;
    /// No push is written from now on, and none not yet begun: the close frame comes next.
    fn stop(&self);
}

/// The node's handle to one connected socket: its bounded outbox and its close request.
///
/// With a [`PushLane`], pushes are written through it by the task fanning them out, and the lane's
/// backlog is the outbox. Without one (GraphQL subscriptions), frames wait in `frames`: a
/// `VecDeque` behind a mutex rather than a channel, since an idle socket's queue then allocates
/// nothing (a tokio channel allocates a block of slots up front, about 1 KiB per socket here).
/// The lock is held for one push or one pop. One `Notify` wakes the socket's loop for both
/// queued frames and close requests, so an idle loop waits on a single thing.
pub struct SocketHandle {
    pub socket_id: Arc<str>,
    pub user_id: Arc<str>,
    outbox: Outbox,
    capacity: usize,
    /// The close code requested from outside the socket's own loop; 0 = none yet.
    close_code: AtomicU16,
    /// Rooms a moderator removed the socket from; its loop leaves them (`Signal::Evicted`).
    evictions: Mutex<Vec<RoomId>>,
    /// `evictions` is not empty: read on every wake, so the lock is taken only when it is set.
    evicted: AtomicBool,
    /// Rooms whose join is replaying history: their pushes wait here until the replay is
    /// written (see [`begin_recovery`](Self::begin_recovery)).
    recoveries: Mutex<Vec<RecoveryStash>>,
    /// `recoveries` is not empty: read on every room push, so the lock is taken only when set.
    recovering: AtomicBool,
    wake: Notify,
}

/// Pushes of one room held back while its history is replayed.
struct RecoveryStash {
    room: RoomId,
    frames: Vec<Frame>,
}

/// Where a socket's pushes go: one or the other, never both (an enum, so no socket carries an
/// unused queue).
enum Outbox {
    /// Written through the transport's lane by the task fanning out; its backlog is the outbox.
    Lane(Arc<dyn PushLane>),
    /// Queued for the socket's own loop (GraphQL subscriptions).
    Queue(Mutex<VecDeque<Frame>>),
}

impl SocketHandle {
    /// `lane`: see [`PushLane`]; without one, pushes queue for the socket's loop.
    pub fn new(
        socket_id: Arc<str>,
        user_id: Arc<str>,
        outbox_capacity: usize,
        lane: Option<Arc<dyn PushLane>>,
    ) -> SocketHandle {
        SocketHandle {
            socket_id,
            user_id,
            outbox: match lane {
                Some(lane) => Outbox::Lane(lane),
                None => Outbox::Queue(Mutex::new(VecDeque::new())),
            },
            capacity: outbox_capacity,
            close_code: AtomicU16::new(0),
            evictions: Mutex::new(Vec::new()),
            evicted: AtomicBool::new(false),
            recoveries: Mutex::new(Vec::new()),
            recovering: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Hands a push to the socket without waiting. Through a lane, `encoded` is the lane's
    /// encoding of `frame`, made for the first recipient and reused by the others. A full outbox
    /// means the client is not reading fast enough: the socket is closed as a slow consumer
    /// rather than buffering without bound.
    /// `write_now`: whether the lane may write the push in the caller's task (see `fan_out`).
    pub fn push(&self, frame: &Frame, encoded: &mut Option<Bytes>, write_now: bool) {
        let outcome = match &self.outbox {
            Outbox::Lane(lane) => {
                let encoded = encoded.get_or_insert_with(|| lane.encode(frame));
                if write_now {
                    lane.push(encoded, self.capacity)
                } else {
                    lane.queue(encoded, self.capacity)
                }
            }
            Outbox::Queue(frames) => {
                let mut frames = frames.lock();
                if frames.len() >= self.capacity {
                    Pushed::Full
                } else {
                    frames.push_back(frame.clone());
                    Pushed::Queued
                }
            }
        };
        match outcome {
            Pushed::Written | Pushed::Held | Pushed::Dropped => {}
            Pushed::Queued => self.wake.notify_one(),
            Pushed::Full => self.request_close(CloseCode::SlowConsumer),
        }
    }

    /// Hands a push of `room` to the socket, or keeps it aside while the socket's join into
    /// the room replays history (see [`begin_recovery`](Self::begin_recovery)).
    pub fn push_in_room(
        &self,
        room: &RoomId,
        frame: &Frame,
        encoded: &mut Option<Bytes>,
        write_now: bool,
    ) {
        if self.recovering.load(Ordering::Acquire) && self.stash_during_recovery(room, frame) {
            return;
        }
        self.push(frame, encoded, write_now);
    }

    /// Starts keeping the room's pushes aside, before the socket is added to the room: a join
    /// that replays history writes the missed events first, then
    /// [`end_recovery`](Self::end_recovery) lets these follow (without the ones replayed).
    pub fn begin_recovery(&self, room: &RoomId) {
        let mut recoveries = self.recoveries.lock();
        if !recoveries.iter().any(|stash| &stash.room == room) {
            recoveries.push(RecoveryStash {
                room: room.clone(),
                frames: Vec::new(),
            });
        }
        self.recovering.store(true, Ordering::Release);
    }

    /// Keeps a push of a room being recovered; false when the room is not. The kept pushes
    /// count against the outbox's capacity like queued ones.
    fn stash_during_recovery(&self, room: &RoomId, frame: &Frame) -> bool {
        let mut recoveries = self.recoveries.lock();
        let Some(stash) = recoveries.iter_mut().find(|stash| &stash.room == room) else {
            return false;
        };
        if stash.frames.len() >= self.capacity {
            drop(recoveries);
            self.request_close(CloseCode::SlowConsumer);
            return true;
        }
        stash.frames.push(frame.clone());
        true
    }

    /// Ends the room's recovery: the pushes kept aside follow, in order, except those at or
    /// before `replayed` in its epoch (the replay already carried them). `None`: all follow.
    /// Done under the recoveries lock, so a push arriving meanwhile waits and comes after them
    /// (they are only queued here: no socket write under the lock).
    pub fn end_recovery(&self, room: &RoomId, replayed: Option<&Position>) {
        let mut recoveries = self.recoveries.lock();
        let Some(index) = recoveries.iter().position(|stash| &stash.room == room) else {
            return;
        };
        let stash = recoveries.swap_remove(index);
        for frame in stash.frames {
            let newer = match (replayed, frame.history_position()) {
                (Some(replayed), Some(position)) => {
                    position.epoch != replayed.epoch || position.offset > replayed.offset
                }
                _ => true,
            };
            if newer {
                self.push(&frame, &mut None, false);
            }
        }
        self.recovering
            .store(!recoveries.is_empty(), Ordering::Release);
    }

    /// Writes the socket's first frame through its lane, pushes held until now following it.
    /// Without a lane the frame is given back for the socket's loop to write. Through the lane
    /// the frame never enters the WebSocket library's write buffer, which then stays as small
    /// as the largest reply (a `connected` frame is 150-200 B; that buffer keeps its capacity).
    pub fn start_pushes(&self, first_frame: Frame) -> Result<(), Frame> {
        let Outbox::Lane(lane) = &self.outbox else {
            return Err(first_frame);
        };
        if lane.start(lane.encode(&first_frame)) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Holds pushes back while the socket's loop handles a request, so that its reply goes
    /// before pushes that arrive meanwhile (a join's reply before the room's events).
    pub fn hold_pushes(&self) {
        if let Outbox::Lane(lane) = &self.outbox {
            lane.hold();
        }
    }

    /// Lets pushes held by [`hold_pushes`](Self::hold_pushes) follow the reply.
    pub fn release_pushes(&self) {
        if let Outbox::Lane(lane) = &self.outbox
            && lane.release()
        {
            self.wake.notify_one();
        }
    }

    /// No push is written to the socket from now on (it is closing).
    pub fn stop_pushes(&self) {
        if let Outbox::Lane(lane) = &self.outbox {
            lane.stop();
        }
    }

    /// Frames waiting to be written to the socket (its outbox depth).
    pub fn queued_frames(&self) -> usize {
        match &self.outbox {
            Outbox::Lane(lane) => lane.backlog_len(),
            Outbox::Queue(frames) => frames.lock().len(),
        }
    }

    fn has_queued_frames(&self) -> bool {
        match &self.outbox {
            Outbox::Lane(lane) => lane.has_backlog(),
            Outbox::Queue(frames) => !frames.lock().is_empty(),
        }
    }

    /// The oldest frame queued for the socket's loop, if any (never any through a lane).
    pub fn next_frame(&self) -> Option<Frame> {
        let Outbox::Queue(frames) = &self.outbox else {
            return None;
        };
        let mut frames = frames.lock();
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > OUTBOX_KEEP {
            frames.shrink_to(OUTBOX_KEEP);
        }
        frame
    }

    /// Asks the socket's loop to close with `code`; the first request wins.
    pub fn request_close(&self, code: CloseCode) {
        if self
            .close_code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// The close code requested so far, if any.
    pub fn requested_close_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.close_code.load(Ordering::Acquire))
    }

    /// Resolves when a close was requested or frames are queued; a close wins. Cancel-safe.
    pub async fn signalled(&self) -> Signal {
        loop {
            if let Some(code) = self.requested_close_code() {
                return Signal::Close(code);
            }
            if self.evicted.load(Ordering::Acquire) {
                return Signal::Evicted;
            }
            if self.has_queued_frames() {
                return Signal::Frames;
            }
            // A notify between the checks and this wait is kept as a permit, so none is lost.
            self.wake.notified().await;
        }
    }

    /// Asks the socket's loop to leave `room` (a moderator removed the user).
    pub fn request_eviction(&self, room: RoomId) {
        let mut evictions = self.evictions.lock();
        if !evictions.contains(&room) {
            evictions.push(room);
        }
        self.evicted.store(true, Ordering::Release);
        drop(evictions);
        self.wake.notify_one();
    }

    /// The rooms to leave, taken once.
    pub fn take_evictions(&self) -> Vec<RoomId> {
        let mut evictions = self.evictions.lock();
        self.evicted.store(false, Ordering::Release);
        std::mem::take(&mut *evictions)
    }

    /// Resolves once a close was requested. Cancel-safe.
    pub async fn close_requested(&self) -> CloseCode {
        loop {
            if let Some(code) = self.requested_close_code() {
                return code;
            }
            // Queued frames wake this too; the state check above tells them apart.
            self.wake.notified().await;
        }
    }
}

/// The sockets under one key of a [`Sharded`] map.
trait SocketSet: Default {
    fn insert(&mut self, socket: &Arc<SocketHandle>);
    /// Removes the socket; false when it was not there.
    fn remove(&mut self, socket_id: &str) -> bool;
    fn contains(&self, socket_id: &str) -> bool;
    fn len(&self) -> usize;
    fn for_each(&self, visit: impl FnMut(&Arc<SocketHandle>));
}

/// A room's local sockets: possibly thousands, so found by id through a map.
type RoomSockets = HashMap<Arc<str>, Arc<SocketHandle>>;

impl SocketSet for RoomSockets {
    fn insert(&mut self, socket: &Arc<SocketHandle>) {
        HashMap::insert(self, socket.socket_id.clone(), socket.clone());
    }

    fn remove(&mut self, socket_id: &str) -> bool {
        HashMap::remove(self, socket_id).is_some()
    }

    fn contains(&self, socket_id: &str) -> bool {
        self.contains_key(socket_id)
    }

    fn len(&self) -> usize {
        HashMap::len(self)
    }

    fn for_each(&self, visit: impl FnMut(&Arc<SocketHandle>)) {
        self.values().for_each(visit);
    }
}

/// A user's local sockets: one to a handful.
type UserSockets = SmallSet<Arc<SocketHandle>>;

impl SocketSet for UserSockets {
    fn insert(&mut self, socket: &Arc<SocketHandle>) {
        if !self.contains(&socket.socket_id) {
            self.push(socket.clone());
        }
    }

    fn remove(&mut self, socket_id: &str) -> bool {
        self.remove_where(|socket| socket.socket_id.as_ref() == socket_id)
            .is_some()
    }

    fn contains(&self, socket_id: &str) -> bool {
        self.any(|socket| socket.socket_id.as_ref() == socket_id)
    }

    fn len(&self) -> usize {
        SmallSet::len(self)
    }

    fn for_each(&self, visit: impl FnMut(&Arc<SocketHandle>)) {
        self.iter().for_each(visit);
    }
}

/// A map split into independently locked shards.
struct Sharded<K, S> {
    shards: Box<[RwLock<HashMap<K, S>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone, S: SocketSet> Sharded<K, S> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<HashMap<K, S>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Adds the socket under `key`; true when it is the first socket there.
    fn insert(&self, key: &K, socket: &Arc<SocketHandle>) -> bool {
        let mut shard = self.shard(key).write();
        let sockets = shard.entry(key.clone()).or_default();
        let first = sockets.len() == 0;
        sockets.insert(socket);
        first
    }

    /// Removes the socket from `key`; true when no socket remains there.
    fn remove(&self, key: &K, socket_id: &str) -> bool {
        let mut shard = self.shard(key).write();
        let Some(sockets) = shard.get_mut(key) else {
            return false;
        };
        if !sockets.remove(socket_id) {
            return false;
        }
        let now_empty = sockets.len() == 0;
        if now_empty {
            shard.remove(key);
        }
        now_empty
    }

    fn contains(&self, key: &K, socket_id: &str) -> bool {
        self.shard(key)
            .read()
            .get(key)
            .is_some_and(|sockets| sockets.contains(socket_id))
    }

    /// Hands the frame to every socket under `key`; returns how many. `yield_every`: see
    /// [`yields_after`].
    /// `room`: the room the frame is for (`None` for a user's frame), so that a socket
    /// replaying the room's history keeps it aside.
    fn fan_out(&self, key: &K, room: Option<&RoomId>, frame: &Frame, yield_every: usize) -> usize {
        // Copied out so the shard's lock is not held across the pushes, which may write to
        // sockets (a syscall each) while joins to the shard's rooms wait.
        let mut recipients = Vec::new();
        if let Some(sockets) = self.shard(key).read().get(key) {
            recipients.reserve_exact(sockets.len());
            sockets.for_each(|socket| recipients.push(socket.clone()));
        }
        let mut encoded = None;
        let write_now = recipients.len() <= DIRECT_FAN_OUT_MAX;
        for (index, socket) in recipients.iter().enumerate() {
            match room {
                Some(room) => socket.push_in_room(room, frame, &mut encoded, write_now),
                None => socket.push(frame, &mut encoded, write_now),
            }
            if write_now && yields_after(index, recipients.len(), yield_every) {
                std::thread::yield_now();
            }
        }
        crate::metrics::events_out().increment(recipients.len() as u64);
        recipients.len()
    }

    /// The sockets under `key`, copied out of the shard's lock.
    fn sockets_under(&self, key: &K) -> Vec<Arc<SocketHandle>> {
        let mut sockets = Vec::new();
        if let Some(set) = self.shard(key).read().get(key) {
            set.for_each(|socket| sockets.push(socket.clone()));
        }
        sockets
    }

    /// How many keys (users, rooms) have at least one local socket.
    fn key_count(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// Every (key, socket) pair, copied out shard by shard.
    fn all_entries(&self) -> Vec<(K, Arc<SocketHandle>)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            for (key, sockets) in shard.read().iter() {
                sockets.for_each(|socket| all.push((key.clone(), socket.clone())));
            }
        }
        all
    }

    fn all_sockets(&self) -> Vec<Arc<SocketHandle>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            for sockets in shard.read().values() {
                sockets.for_each(|socket| all.push(socket.clone()));
            }
        }
        all
    }
}

/// Local sockets by room and by user.
pub struct Hub {
    rooms: Sharded<RoomId, RoomSockets>,
    users: Sharded<Arc<str>, UserSockets>,
    connections: AtomicUsize,
    /// Frames the broker brought to this node (shows that per-topic interest keeps
    /// unrelated traffic away).
    broker_deliveries: AtomicU64,
    /// See [`yields_after`].
    fanout_yield_every: usize,
}

impl Hub {
    /// A hub whose direct fan-outs yield the CPU after every `fanout_yield_every` recipients
    /// (`server.fanout_yield_every`; 0: never).
    pub fn new(fanout_yield_every: usize) -> Hub {
        Hub {
            rooms: Sharded::new(),
            users: Sharded::new(),
            connections: AtomicUsize::new(0),
            broker_deliveries: AtomicU64::new(0),
            fanout_yield_every,
        }
    }

    /// Registers a connected socket; true when it is the user's first socket on this node.
    pub fn register(&self, socket: &Arc<SocketHandle>) -> bool {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.users.insert(&socket.user_id, socket)
    }

    /// Unregisters a socket; true when the user has no socket left on this node.
    pub fn unregister(&self, socket: &SocketHandle) -> bool {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.users.remove(&socket.user_id, &socket.socket_id)
    }

    /// Adds a watcher of a user's pushes (a GraphQL subscription): like a socket for delivery,
    /// but not counted as a connection. True when it is the user's first on this node.
    pub fn watch_user(&self, watcher: &Arc<SocketHandle>) -> bool {
        self.users.insert(&watcher.user_id, watcher)
    }

    /// Removes a watcher; true when the user has nothing left on this node.
    pub fn unwatch_user(&self, watcher: &SocketHandle) -> bool {
        self.users.remove(&watcher.user_id, &watcher.socket_id)
    }

    /// Sockets registered on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Distinct users with a socket on this node.
    pub fn user_count(&self) -> usize {
        self.users.key_count()
    }

    /// Rooms with a member on this node.
    pub fn room_count(&self) -> usize {
        self.rooms.key_count()
    }

    /// Outbox depth over this node's sockets: frames waiting in all of them, and in the fullest.
    /// Walks every socket (one short lock each): for a scrape, not for a hot path.
    pub fn outbox_depth(&self) -> (usize, usize) {
        self.users
            .all_sockets()
            .iter()
            .map(|socket| socket.queued_frames())
            .fold((0, 0), |(total, fullest), queued| {
                (total + queued, fullest.max(queued))
            })
    }

    /// Adds a socket to a room; true when it is the room's first socket on this node.
    /// Every registered socket (to register them again under a new lease).
    pub fn local_sockets(&self) -> Vec<Arc<SocketHandle>> {
        self.users.all_sockets()
    }

    /// Every (room, socket) membership held here (to register them again under a new lease).
    pub fn local_memberships(&self) -> Vec<(RoomId, Arc<SocketHandle>)> {
        self.rooms.all_entries()
    }

    /// Whether the socket is still registered (it has not closed).
    pub fn holds_socket(&self, socket: &SocketHandle) -> bool {
        self.holds_socket_id(&socket.user_id, &socket.socket_id)
    }

    pub fn holds_socket_id(&self, user_id: &Arc<str>, socket_id: &str) -> bool {
        self.users.contains(user_id, socket_id)
    }

    /// Whether the socket is still in the room here (it has not left).
    pub fn holds_membership(&self, room: &RoomId, socket_id: &str) -> bool {
        self.rooms.contains(room, socket_id)
    }

    pub fn add_to_room(&self, room: &RoomId, socket: &Arc<SocketHandle>) -> bool {
        self.rooms.insert(room, socket)
    }

    /// Removes a socket from a room; true when the room has no socket left on this node.
    pub fn remove_from_room(&self, room: &RoomId, socket_id: &str) -> bool {
        self.rooms.remove(room, socket_id)
    }

    /// Frames the broker has brought to this node so far.
    pub fn broker_deliveries(&self) -> u64 {
        self.broker_deliveries.load(Ordering::Relaxed)
    }

    /// Delivers a frame the broker brought to the local sockets of its topic.
    pub fn deliver(&self, topic: &Topic, frame: &Frame) -> usize {
        self.broker_deliveries.fetch_add(1, Ordering::Relaxed);
        match topic {
            Topic::Room(room) => {
                let reached = self
                    .rooms
                    .fan_out(room, Some(room), frame, self.fanout_yield_every);
                record_publish_to_write(frame);
                reached
            }
            Topic::User(user) => {
                let reached = self
                    .users
                    .fan_out(user, None, frame, self.fanout_yield_every);
                record_publish_to_write(frame);
                reached
            }
            Topic::Control => {
                self.apply_control(frame);
                0
            }
        }
    }

    /// Acts on a command from the control topic: only this node's sockets are touched.
    fn apply_control(&self, frame: &Frame) {
        let Some(command) = ControlCommand::from_frame(frame) else {
            tracing::warn!("dropped a control message that is not a command");
            return;
        };
        match command {
            ControlCommand::DisconnectUser { user, close } => {
                let Some(close) = CloseCode::from_code(close) else {
                    return;
                };
                for socket in self.users.sockets_under(&Arc::from(user.as_str())) {
                    socket.request_close(close);
                }
            }
            ControlCommand::RemoveFromRoom { user, room } => {
                let Ok(room) = RoomId::parse(&room) else {
                    return;
                };
                for socket in self.users.sockets_under(&Arc::from(user.as_str())) {
                    if self.rooms.contains(&room, &socket.socket_id) {
                        socket.request_eviction(room.clone());
                    }
                }
            }
        }
    }

    /// Asks every local socket to close (shutdown).
    pub fn close_all(&self, code: CloseCode) {
        for socket in self.users.all_sockets() {
            socket.request_close(code);
        }
    }

    /// Asks every socket to close with `code`, spread evenly over `window` (in up to
    /// `DRAIN_STEPS` steps), so a node's clients do not all reconnect to the next node at once.
    /// Sockets that registered meanwhile are closed at the end.
    pub async fn close_all_over(&self, code: CloseCode, window: Duration) {
        let sockets = self.users.all_sockets();
        if !window.is_zero() && sockets.len() > 1 {
            let started = tokio::time::Instant::now();
            let steps = sockets.len().min(DRAIN_STEPS);
            let per_step = sockets.len().div_ceil(steps);
            for (step, batch) in sockets.chunks(per_step).enumerate() {
                let at = started + window.mul_f64(step as f64 / steps as f64);
                tokio::time::sleep_until(at).await;
                for socket in batch {
                    socket.request_close(code);
                }
            }
        }
        self.close_all(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fan_out_yields_after_every_nth_recipient_but_not_the_last() {
        let yields = |total: usize, every: usize| -> Vec<usize> {
            (0..total)
                .filter(|&index| yields_after(index, total, every))
                .collect()
        };
        assert_eq!(yields(200, 64), vec![63, 127, 191]);
        assert_eq!(yields(128, 64), vec![63], "none after the last recipient");
        assert_eq!(yields(64, 64), Vec::<usize>::new());
        assert_eq!(yields(5, 2), vec![1, 3]);
        assert_eq!(yields(500, 0), Vec::<usize>::new(), "0 turns it off");
    }

    fn socket(id: &str, user: &str, capacity: usize) -> Arc<SocketHandle> {
        Arc::new(SocketHandle::new(
            Arc::from(id),
            Arc::from(user),
            capacity,
            None,
        ))
    }

    async fn next(socket: &SocketHandle) -> Frame {
        assert_eq!(socket.signalled().await, Signal::Frames);
        socket
            .next_frame()
            .expect("signalled means a frame is queued")
    }

    #[tokio::test]
    async fn fan_out_shares_one_buffer_and_reaches_only_members() {
        let hub = Hub::new(64);
        let room = RoomId::parse("chat:a").unwrap();
        let first = socket("s1", "u1", 4);
        let second = socket("s2", "u2", 4);
        let outsider = socket("s3", "u3", 4);
        assert!(hub.add_to_room(&room, &first));
        assert!(!hub.add_to_room(&room, &second));
        hub.register(&outsider);
        let frame = Frame::from_encoded(bytes::Bytes::from_static(b"{}")).unwrap();
        assert_eq!(hub.deliver(&Topic::Room(room.clone()), &frame), 2);
        let got_first = next(&first).await;
        let got_second = next(&second).await;
        assert_eq!(
            got_first.bytes().as_ptr(),
            got_second.bytes().as_ptr(),
            "one buffer shared"
        );
        assert!(outsider.next_frame().is_none());
        assert!(!hub.remove_from_room(&room, "s1"));
        assert!(hub.remove_from_room(&room, "s2"));
    }

    fn positioned(room: &str, offset: u64, epoch: &str) -> Frame {
        Frame::from_encoded(Bytes::from(format!(
            r#"{{"type":"event","event":"e","room":"{room}","data":{{"offset":999}},"offset":{offset},"epoch":"{epoch}"}}"#
        )))
        .unwrap()
    }

    fn offset_of(frame: &Frame) -> Option<u64> {
        frame.history_position().map(|position| position.offset)
    }

    /// A join that replays history: the room's pushes that arrive meanwhile wait, and those the
    /// replay already carried (at or before its position, same epoch) are dropped; the rest,
    /// announcements and events of another epoch included, follow in order, and pushes after
    /// the recovery ends come after them. Other rooms are not held.
    #[tokio::test]
    async fn pushes_during_a_replay_wait_and_skip_what_the_replay_carried() {
        let hub = Hub::new(64);
        let room = RoomId::parse("competition:a").unwrap();
        let other_room = RoomId::parse("competition:b").unwrap();
        let phone = socket("s1", "u1", 16);
        phone.begin_recovery(&room);
        hub.add_to_room(&room, &phone);
        hub.add_to_room(&other_room, &phone);
        let room_topic = Topic::Room(room.clone());
        for offset in [5, 6, 7] {
            hub.deliver(&room_topic, &positioned("competition:a", offset, "E"));
        }
        let announcement = Frame::from_encoded(Bytes::from_static(
            br#"{"type":"event","event":"room.user_joined","room":"competition:a","data":{}}"#,
        ))
        .unwrap();
        hub.deliver(&room_topic, &announcement);
        hub.deliver(&room_topic, &positioned("competition:a", 1, "NEW"));
        hub.deliver(
            &Topic::Room(other_room.clone()),
            &positioned("competition:b", 40, "E"),
        );
        assert_eq!(
            offset_of(&next(&phone).await),
            Some(40),
            "another room's push is not held"
        );
        assert!(phone.next_frame().is_none(), "the room's pushes wait");

        let replayed = Position {
            offset: 6,
            epoch: Arc::from("E"),
        };
        phone.end_recovery(&room, Some(&replayed));
        hub.deliver(&room_topic, &positioned("competition:a", 8, "E"));
        assert_eq!(
            offset_of(&next(&phone).await),
            Some(7),
            "newer than the replay"
        );
        assert_eq!(next(&phone).await.bytes(), announcement.bytes());
        assert_eq!(
            offset_of(&next(&phone).await),
            Some(1),
            "another epoch follows"
        );
        assert_eq!(offset_of(&next(&phone).await), Some(8), "then live pushes");
        assert!(
            phone.next_frame().is_none(),
            "5 and 6 were dropped as replayed"
        );
    }

    #[test]
    fn outbox_depth_sums_every_socket_and_names_the_fullest() {
        let hub = Hub::new(64);
        let (slow, quick) = (socket("s1", "u1", 8), socket("s2", "u2", 8));
        hub.register(&slow);
        hub.register(&quick);
        let frame = Frame::from_encoded(Bytes::from_static(b"{}")).unwrap();
        for _ in 0..3 {
            slow.push(&frame, &mut None, false);
        }
        quick.push(&frame, &mut None, false);
        assert_eq!(hub.outbox_depth(), (4, 3));
        quick.next_frame();
        assert_eq!(hub.outbox_depth(), (3, 3));
    }

    /// A lane that records what the hub hands it and answers every push the same way.
    struct RecordingLane {
        answer: Pushed,
        encodes: AtomicUsize,
        pushed: Mutex<Vec<Bytes>>,
    }

    impl RecordingLane {
        fn answering(answer: Pushed) -> Arc<RecordingLane> {
            Arc::new(RecordingLane {
                answer,
                encodes: AtomicUsize::new(0),
                pushed: Mutex::new(Vec::new()),
            })
        }
    }

    impl PushLane for RecordingLane {
        fn encode(&self, frame: &Frame) -> Bytes {
            self.encodes.fetch_add(1, Ordering::Relaxed);
            Bytes::copy_from_slice(frame.bytes())
        }

        fn push(&self, encoded: &Bytes, _backlog_limit: usize) -> Pushed {
            self.pushed.lock().push(encoded.clone());
            self.answer
        }

        fn queue(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed {
            self.push(encoded, backlog_limit)
        }

        fn backlog_len(&self) -> usize {
            0
        }

        fn has_backlog(&self) -> bool {
            self.answer == Pushed::Queued
        }

        fn start(&self, _first_frame: Bytes) -> bool {
            false
        }

        fn hold(&self) {}

        fn release(&self) -> bool {
            false
        }

        fn stop(&self) {}
    }

    fn socket_with_lane(id: &str, lane: &Arc<RecordingLane>) -> Arc<SocketHandle> {
        let lane: Arc<dyn PushLane> = lane.clone();
        Arc::new(SocketHandle::new(
            Arc::from(id),
            Arc::from(id),
            4,
            Some(lane),
        ))
    }

    #[tokio::test]
    async fn fan_out_through_lanes_encodes_once_per_broadcast() {
        let hub = Hub::new(64);
        let room = RoomId::parse("chat:a").unwrap();
        let lanes = [
            RecordingLane::answering(Pushed::Written),
            RecordingLane::answering(Pushed::Written),
            RecordingLane::answering(Pushed::Written),
        ];
        for (index, lane) in lanes.iter().enumerate() {
            hub.add_to_room(&room, &socket_with_lane(&format!("s{index}"), lane));
        }
        let frame = Frame::from_encoded(bytes::Bytes::from_static(b"{}")).unwrap();
        assert_eq!(hub.deliver(&Topic::Room(room), &frame), 3);
        let encodes: usize = lanes
            .iter()
            .map(|lane| lane.encodes.load(Ordering::Relaxed))
            .sum();
        assert_eq!(encodes, 1, "one encoding for the whole broadcast");
        let pushed: Vec<Bytes> = lanes
            .iter()
            .flat_map(|lane| lane.pushed.lock().clone())
            .collect();
        assert_eq!(pushed.len(), 3);
        assert!(
            pushed
                .iter()
                .all(|bytes| bytes.as_ptr() == pushed[0].as_ptr()),
            "every recipient gets the same buffer"
        );
    }

    #[tokio::test]
    async fn a_lane_backlog_wakes_the_socket_and_a_full_lane_closes_it() {
        let frame = Frame::from_encoded(bytes::Bytes::from_static(b"{}")).unwrap();
        let queued = socket_with_lane("s1", &RecordingLane::answering(Pushed::Queued));
        queued.push(&frame, &mut None, true);
        assert_eq!(queued.signalled().await, Signal::Frames);
        let full = socket_with_lane("s2", &RecordingLane::answering(Pushed::Full));
        full.push(&frame, &mut None, true);
        assert_eq!(full.close_requested().await, CloseCode::SlowConsumer);
    }

    #[tokio::test]
    async fn a_full_outbox_closes_the_socket_as_slow_consumer() {
        let slow = socket("s1", "u1", 1);
        let frame = Frame::from_encoded(bytes::Bytes::from_static(b"{}")).unwrap();
        slow.push(&frame, &mut None, true);
        slow.push(&frame, &mut None, true);
        assert_eq!(slow.close_requested().await, CloseCode::SlowConsumer);
    }
}
