//! Room history on NATS JetStream: every node serves the same history, and a node's restart loses
//! none of it.
//!
//! Layout: one stream per room type with history, `<PREFIX>_history_<type>` over the subjects
//! `<prefix>.history.<type>.*`; room `competition:42` is the subject
//! `<prefix>.history.competition.42`. Limits: `max_messages_per_subject` = `history_size` + 1
//! (a room's first record may be a marker, below), `max_age` = `history_ttl_secs`, file storage,
//! direct gets on. Each record is the pushed frame's bytes with headers naming its position:
//! `Realtime-Offset`, `Realtime-Epoch`, `Realtime-Previous` (the stream sequence of the room's
//! record before it, 0 for none) and `Realtime-Append` (a random id of the append).
//!
//! **How an offset is assigned exactly once** (and contiguously) when several nodes append to a
//! room at the same moment: an append reads the room's last record (offset N, epoch E, stream
//! sequence S; cached per room after this node's own appends), and publishes offset N + 1 in E with
//! the header `Nats-Expected-Last-Subject-Sequence: S`. JetStream stores it only if S is still the
//! room's last record; otherwise it refuses with "wrong last sequence", and the append rereads the
//! last record and tries again with the next offset. Two appends can therefore never both store
//! offset N + 1, and none can skip one. If an acknowledgement is lost (time-out), the reread
//! recognises our own record by its `Realtime-Append` id instead of storing the event twice.
//!
//! **Empty rooms.** A join into a room with no record stores a marker (offset 0, a new epoch, no
//! frame) the same way, so the position a joiner is given names an epoch that the room's first
//! events continue.
//!
//! **When JetStream fails** (down, no JetStream, time-out), the error goes back to the caller,
//! which delivers the event live without a position; the room is marked so that its next stored
//! event starts a new epoch (clients that recover from before the gap are told `recovered: false`,
//! never given a sequence with a hole). For a second after a failure every call fails at once,
//! so a JetStream outage costs live delivery no time per event.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::StoreError;
use super::history::{EncodeAt, HistoryPolicy, HistoryStore, Position, Recovery, new_epoch};
use crate::protocol::Frame;
use crate::room::RoomId;

const OFFSET_HEADER: &str = "Realtime-Offset";
const EPOCH_HEADER: &str = "Realtime-Epoch";
const PREVIOUS_HEADER: &str = "Realtime-Previous";
const APPEND_HEADER: &str = "Realtime-Append";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// Longest wait for one JetStream call. Appends sit on the publish path, so this bounds the delay
/// an event can suffer when JetStream stops answering.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// After a failure, calls fail at once for this long instead of waiting again.
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long an append may keep losing races before it gives up: each lost race means another
/// node stored an event of the room meanwhile. A node whose cached tail is current needs one
/// round trip and a node that lost needs two (reread, publish), so a node that writes a room
/// back to back can win many times in a row; a time budget rather than a count keeps the loser
/// trying for as long as one slow call would have taken.
const APPEND_RACE_BUDGET: Duration = CALL_TIMEOUT;
/// Conflicts an append retries at once before it pauses a random moment between attempts
/// (nodes racing symmetrically then take turns instead of colliding again).
const CONFLICTS_BEFORE_PAUSING: u32 = 3;
/// Rooms whose last record this node remembers; beyond it the memory is cleared (a cleared room
/// costs one extra read on its next append).
const MAX_CACHED_TAILS: usize = 100_000;

/// A room's last record as read from (or written to) the stream.
#[derive(Debug, Clone)]
struct Tail {
    offset: u64,
    epoch: Arc<str>,
    /// Its stream sequence.
    sequence: u64,
    /// The stream sequence of the record before it (0: none).
    previous: u64,
    append_id: u64,
}

pub struct JetStreamHistory {
    jetstream: jetstream::Context,
    subject_prefix: String,
    /// Streams by room type, created on first use (and again after a failure).
    streams: Mutex<HashMap<String, stream::Stream>>,
    tails: Mutex<HashMap<RoomId, Tail>>,
    /// Rooms with an event delivered without a position: their next record starts a new epoch.
    broken: Mutex<HashSet<RoomId>>,
    failing_until: Mutex<Option<Instant>>,
    /// Appends of one room on this node take turns (striped by room), so that the
    /// expected-sequence check only ever arbitrates between nodes, not between this node's own
    /// tasks. Held across the publish on purpose.
    append_turns: Box<[tokio::sync::Mutex<()>]>,
    turn_hasher: std::hash::RandomState,
}

/// Stripes of `append_turns`.
const APPEND_TURN_STRIPES: usize = 64;

fn unavailable(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("jetstream history: {what}: {error}"))
}

/// `competition:42` -> `competition.42` (room ids hold `[A-Za-z0-9_-]` on each side of the colon).
fn room_subject(prefix: &str, room: &RoomId) -> String {
    format!("{prefix}.history.{}.{}", room.room_type(), room.name())
}

/// A stream name: the subject prefix with anything a name cannot hold made `_`.
fn stream_name(prefix: &str, room_type: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_history_{room_type}")
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

impl Tail {
    fn from_message(message: &jetstream::message::StreamMessage) -> Option<Tail> {
        Some(Tail {
            offset: header_u64(&message.headers, OFFSET_HEADER)?,
            epoch: Arc::from(message.headers.get(EPOCH_HEADER)?.as_str()),
            sequence: message.sequence,
            previous: header_u64(&message.headers, PREVIOUS_HEADER).unwrap_or(0),
            append_id: header_u64(&message.headers, APPEND_HEADER).unwrap_or(0),
        })
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

/// What an append tries to store: the record after `after` (or a first one).
struct Attempt {
    position: Position,
    previous_sequence: u64,
}

impl JetStreamHistory {
    pub fn new(client: async_nats::Client, subject_prefix: &str) -> JetStreamHistory {
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(CALL_TIMEOUT);
        JetStreamHistory {
            jetstream,
            subject_prefix: subject_prefix.to_owned(),
            streams: Mutex::new(HashMap::new()),
            tails: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashSet::new()),
            failing_until: Mutex::new(None),
            append_turns: (0..APPEND_TURN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            turn_hasher: std::hash::RandomState::new(),
        }
    }

    /// Fails at once while a recent failure's back-off lasts.
    fn check_not_failing(&self) -> Result<(), StoreError> {
        match *self.failing_until.lock() {
            Some(until) if Instant::now() < until => Err(StoreError::Unavailable(
                "jetstream history: backing off after a failure".into(),
            )),
            _ => Ok(()),
        }
    }

    fn note_failure(&self, error: StoreError) -> StoreError {
        *self.failing_until.lock() = Some(Instant::now() + BACKOFF_AFTER_FAILURE);
        error
    }

    /// Runs one JetStream call under [`CALL_TIMEOUT`].
    async fn bounded<T, E: std::fmt::Display>(
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(unavailable(what, error)),
            Err(_) => Err(unavailable(what, "timed out")),
        }
    }

    /// The room type's stream, created or updated to the policy on first use.
    async fn stream(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
    ) -> Result<stream::Stream, StoreError> {
        let room_type = room.room_type();
        if let Some(stream) = self.streams.lock().get(room_type) {
            return Ok(stream.clone());
        }
        let max_age = policy.ttl.unwrap_or(Duration::ZERO);
        // The duplicate window may not exceed max_age; appends do not use it (they carry their
        // own id and expected sequence), so the smallest useful one will do.
        let duplicate_window = match policy.ttl {
            Some(ttl) => ttl.min(Duration::from_secs(120)),
            None => Duration::from_secs(120),
        };
        let config = stream::Config {
            name: stream_name(&self.subject_prefix, room_type),
            subjects: vec![format!("{}.history.{room_type}.*", self.subject_prefix)],
            max_messages_per_subject: policy.size as i64 + 1,
            max_age,
            duplicate_window,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        Self::bounded(
            "create stream",
            self.jetstream.create_or_update_stream(config.clone()),
        )
        .await?;
        let stream = Self::bounded("get stream", self.jetstream.get_stream(&config.name)).await?;
        self.streams
            .lock()
            .insert(room_type.to_owned(), stream.clone());
        Ok(stream)
    }

    /// Reads the room's last record from the stream; `None` when it has none.
    async fn read_tail(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<Tail>, StoreError> {
        let read = stream.direct_get_last_for_subject(subject.to_owned());
        let message = Self::direct_get("read last record", read).await?;
        Ok(message.and_then(|message| Tail::from_message(&message)))
    }

    /// Reads the record at `sequence`; `None` when it is gone (expired or beyond the limit).
    async fn read_at(
        stream: &stream::Stream,
        sequence: u64,
    ) -> Result<Option<(Tail, bytes::Bytes)>, StoreError> {
        let message = Self::direct_get("read record", stream.direct_get(sequence)).await?;
        Ok(message
            .and_then(|message| Tail::from_message(&message).map(|tail| (tail, message.payload))))
    }

    /// One direct get under [`CALL_TIMEOUT`]; a record that is not there is `None`.
    async fn direct_get(
        what: &str,
        read: impl std::future::Future<
            Output = Result<jetstream::message::StreamMessage, stream::DirectGetError>,
        >,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, read).await {
            Err(_) => Err(unavailable(what, "timed out")),
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(error)) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Ok(Err(error)) => Err(unavailable(what, error)),
        }
    }

    fn cached_tail(&self, room: &RoomId) -> Option<Tail> {
        self.tails.lock().get(room).cloned()
    }

    fn remember_tail(&self, room: &RoomId, tail: Tail) {
        let mut tails = self.tails.lock();
        if tails.len() >= MAX_CACHED_TAILS && !tails.contains_key(room) {
            tails.clear();
        }
        tails.insert(room.clone(), tail);
    }

    fn forget_tail(&self, room: &RoomId) {
        self.tails.lock().remove(room);
    }

    /// The record an append stores after `tail`: the next offset, or offset `first_offset` of a
    /// new epoch when the room has no record or is marked broken.
    fn next_attempt(&self, room: &RoomId, tail: Option<&Tail>, first_offset: u64) -> Attempt {
        let broken = self.broken.lock().contains(room);
        match tail {
            Some(tail) if !broken => Attempt {
                position: Position {
                    offset: tail.offset + 1,
                    epoch: tail.epoch.clone(),
                },
                previous_sequence: tail.sequence,
            },
            _ => Attempt {
                position: Position {
                    offset: first_offset,
                    epoch: new_epoch(),
                },
                previous_sequence: tail.map_or(0, |tail| tail.sequence),
            },
        }
    }

    /// Stores one record (an event's frame, or an empty marker) at the room's next position.
    /// `first_offset` is where a new epoch starts: 1 for an event, 0 for a marker.
    async fn store(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        first_offset: u64,
        encode: Option<EncodeAt<'_>>,
    ) -> Result<(Position, Option<Frame>), StoreError> {
        self.check_not_failing()?;
        let stripe = self.turn_hasher.hash_one(room) as usize % APPEND_TURN_STRIPES;
        let _turn = self.append_turns[stripe].lock().await;
        let stream = self
            .stream(room, policy)
            .await
            .map_err(|error| self.note_failure(error))?;
        let subject = room_subject(&self.subject_prefix, room);
        let append_id = rand::random::<u64>();
        let mut tail = match self.cached_tail(room) {
            Some(tail) => Some(tail),
            None => self
                .read_tail(&stream, &subject)
                .await
                .map_err(|error| self.note_failure(error))?,
        };
        let racing_since = Instant::now();
        let mut conflicts = 0u32;
        while racing_since.elapsed() < APPEND_RACE_BUDGET {
            let attempt = self.next_attempt(room, tail.as_ref(), first_offset);
            let frame = encode.map(|encode| encode(&attempt.position));
            let mut headers = HeaderMap::new();
            headers.insert(OFFSET_HEADER, attempt.position.offset.to_string());
            headers.insert(EPOCH_HEADER, attempt.position.epoch.as_ref());
            headers.insert(PREVIOUS_HEADER, attempt.previous_sequence.to_string());
            headers.insert(APPEND_HEADER, append_id.to_string());
            headers.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                attempt.previous_sequence.to_string(),
            );
            let payload = frame
                .as_ref()
                .map_or_else(bytes::Bytes::new, |frame| frame.bytes().clone());
            let stored = self.publish(&subject, headers, payload).await;
            match stored {
                Ok(sequence) => {
                    self.broken.lock().remove(room);
                    self.remember_tail(
                        room,
                        Tail {
                            offset: attempt.position.offset,
                            epoch: attempt.position.epoch.clone(),
                            sequence,
                            previous: attempt.previous_sequence,
                            append_id,
                        },
                    );
                    return Ok((attempt.position, frame));
                }
                Err(Stored::Conflict) => {
                    // Another node stored a record first: continue after it.
                    conflicts += 1;
                    if conflicts > CONFLICTS_BEFORE_PAUSING {
                        let pause = rand::random::<u64>() % (100 * u64::from(conflicts).min(20));
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                    }
                    tail = self
                        .read_tail(&stream, &subject)
                        .await
                        .map_err(|error| self.note_failure(error))?;
                }
                Err(Stored::Failed(error)) => {
                    // The record may have been stored with only its acknowledgement lost.
                    if let Ok(Some(last)) = self.read_tail(&stream, &subject).await
                        && last.append_id == append_id
                    {
                        self.remember_tail(room, last.clone());
                        self.broken.lock().remove(room);
                        return Ok((attempt.position, frame));
                    }
                    self.forget_tail(room);
                    self.streams.lock().remove(room.room_type());
                    return Err(self.note_failure(error));
                }
            }
        }
        self.forget_tail(room);
        Err(StoreError::Unavailable(format!(
            "jetstream history: {room} changed {conflicts} times during one append"
        )))
    }

    /// Publishes one record and waits for JetStream's acknowledgement: its stream sequence.
    async fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<u64, Stored> {
        let sent = tokio::time::timeout(
            CALL_TIMEOUT,
            self.jetstream
                .publish_with_headers(subject.to_owned(), headers, payload),
        )
        .await
        .map_err(|_| Stored::Failed(unavailable("publish", "timed out")))?
        .map_err(|error| Stored::Failed(unavailable("publish", error)))?;
        match sent.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(Stored::Conflict)
            }
            Err(error) => Err(Stored::Failed(unavailable("publish", error))),
        }
    }

    /// The room's last record, read fresh (another node may have appended); a marker is stored
    /// first when the room has none.
    async fn current_tail(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
    ) -> Result<(stream::Stream, Tail), StoreError> {
        self.check_not_failing()?;
        let stream = self
            .stream(room, policy)
            .await
            .map_err(|error| self.note_failure(error))?;
        let subject = room_subject(&self.subject_prefix, room);
        let tail = self
            .read_tail(&stream, &subject)
            .await
            .map_err(|error| self.note_failure(error))?;
        if let Some(tail) = tail
            && !self.broken.lock().contains(room)
        {
            return Ok((stream, tail));
        }
        let (position, _) = self.store(room, policy, 0, None).await?;
        let tail = self
            .cached_tail(room)
            .filter(|tail| tail.position() == position)
            .ok_or_else(|| unavailable("store marker", "not remembered"))?;
        Ok((stream, tail))
    }

    /// Up to `count` frames ending at `tail`, oldest first, read backwards through
    /// `Realtime-Previous`; fewer when a record is gone (expired, beyond the limit) or the chain
    /// reaches the room's first record.
    async fn walk_back(
        stream: &stream::Stream,
        tail: &Tail,
        count: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        let mut frames = Vec::new();
        let mut sequence = tail.sequence;
        let mut expected_offset = tail.offset;
        while (frames.len() as u64) < count && expected_offset > 0 && sequence > 0 {
            let Some((record, bytes)) = Self::read_at(stream, sequence).await? else {
                break;
            };
            if record.offset != expected_offset || record.epoch != tail.epoch {
                break;
            }
            let Ok(frame) = Frame::from_encoded(bytes) else {
                break;
            };
            frames.push(frame);
            sequence = record.previous;
            expected_offset -= 1;
        }
        frames.reverse();
        Ok(frames)
    }
}

/// How one publish of a record ended, when not stored.
enum Stored {
    /// Another record became the room's last first.
    Conflict,
    Failed(StoreError),
}

#[async_trait]
impl HistoryStore for JetStreamHistory {
    async fn append(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        encode: EncodeAt<'_>,
    ) -> Result<(Position, Frame), StoreError> {
        let result = self.store(room, policy, 1, Some(encode)).await;
        match result {
            Ok((position, Some(frame))) => Ok((position, frame)),
            Ok((_, None)) => unreachable!("an event record always has a frame"),
            Err(error) => {
                self.broken.lock().insert(room.clone());
                Err(error)
            }
        }
    }

    async fn position(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
    ) -> Result<Position, StoreError> {
        Ok(self.current_tail(room, policy).await?.1.position())
    }

    async fn since(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        since: &Position,
    ) -> Result<Recovery, StoreError> {
        let (stream, tail) = self.current_tail(room, policy).await?;
        let position = tail.position();
        if since.epoch != tail.epoch
            || since.offset > tail.offset
            || (tail.offset - since.offset) as usize > policy.size
        {
            return Ok(Recovery::NotRecovered { position });
        }
        if since.offset == tail.offset {
            return Ok(Recovery::Recovered {
                position,
                events: Vec::new(),
            });
        }
        let missed = tail.offset - since.offset;
        let events = Self::walk_back(&stream, &tail, missed)
            .await
            .map_err(|error| self.note_failure(error))?;
        Ok(if events.len() as u64 == missed {
            Recovery::Recovered { position, events }
        } else {
            Recovery::NotRecovered { position }
        })
    }

    async fn latest(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        limit: usize,
    ) -> Result<(Position, Vec<Frame>), StoreError> {
        let (stream, tail) = self.current_tail(room, policy).await?;
        let position = tail.position();
        // The stream keeps one record more than `size` (a marker may be the oldest).
        let count = (limit.min(policy.size) as u64).min(tail.offset);
        let events = Self::walk_back(&stream, &tail, count)
            .await
            .map_err(|error| self.note_failure(error))?;
        Ok((position, events))
    }
}
