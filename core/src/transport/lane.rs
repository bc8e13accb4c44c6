//! The write lane: one accepted TCP socket shared by the HTTP/WebSocket stack and the fan-out,
//! so a push is written by the task that fans it out instead of waking the socket's own task.
//!
//! Every byte for the socket, whether hyper's response, tungstenite's frames or a push, goes
//! through the lane's backlog lock, so nothing interleaves: a write goes straight to the socket
//! when nothing waits before it, and behind the backlog otherwise. The socket's own task drains
//! the backlog when the socket can take more (`poll_flush`).
//!
//! [`LaneAcceptor`] is salvo's TCP acceptor with a [`LaneStream`] in place of the bare socket; the
//! WebSocket endpoint finds the lane of its connection by peer address in [`Lanes`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use salvo::ConnCtrl;
use salvo::conn::tcp::TcpCoupler;
use salvo::conn::{Accepted, Acceptor, Holding, StraightStream};
use salvo::fuse::{ArcFusePolicy, FuseAction, FuseInfo, TransProto};
use salvo::http::Version;
use salvo::http::uri::Scheme;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::hub::{PushLane, Pushed};
use crate::protocol::Frame as WireFrame;

/// Backlog chunks written with one `writev` when draining: coalesces a burst into one syscall.
const DRAIN_SLICES: usize = 64;

/// A push that comes this soon after the socket's previous one is part of a stream, and is
/// queued for the socket's task instead of written at once: by the time the task runs, more
/// have usually arrived, and it writes them with one `writev`. Every send costs kernel time, so
/// where the readers share the server's cores, writing each push of a dense stream separately
/// cut the `fanout` benchmark's throughput to a small fraction; with the readers on other cores
/// it measured neutral (docs/benchmarks.md, "When pushes are written where"). Sparse pushes,
/// which is what most sockets get, still leave at once.
const STREAM_GAP_MICROS: u32 = 2_000;

/// One accepted socket and the bytes waiting to be written to it.
pub struct Lane {
    tcp: TcpStream,
    /// Held only for a non-blocking write or a queue operation, never across `.await`; the
    /// only contenders are the socket's own task and tasks fanning out to it.
    backlog: Mutex<Backlog>,
}

struct Backlog {
    /// Bytes accepted but not yet written, oldest first; the last `held` of them are pushes
    /// held back while `holding`.
    chunks: VecDeque<Bytes>,
    /// Pushes at the back of `chunks` kept while `holding`: the socket's own writes go before
    /// them, and draining stops at them.
    held: usize,
    /// The front chunk is the rest of a frame the socket has begun to send: it must go out
    /// whole whatever else is dropped, or the stream would be corrupt.
    front_begun: bool,
    /// When the last push came ([`micros_now`]; 0 = none yet), to tell a stream from a sparse push.
    last_push_micros: u32,
    /// Pushes are held back: until the `connected` frame is out, and while the socket's task
    /// handles a request, so that its reply goes before pushes that came meanwhile.
    holding: bool,
    /// Set by [`PushLane::stop`]: the close frame may follow, and no data frame may after it.
    stopped: bool,
    /// A write failed for good; the socket's task learns it from its next write or flush.
    broken: Option<io::ErrorKind>,
}

impl Default for Backlog {
    fn default() -> Backlog {
        Backlog {
            chunks: VecDeque::new(),
            held: 0,
            front_begun: false,
            last_push_micros: 0,
            holding: true,
            stopped: false,
            broken: None,
        }
    }
}

impl Backlog {
    /// Chunks that may be written now (all but the held pushes).
    fn writable(&self) -> usize {
        self.chunks.len() - self.held
    }
}

impl Lane {
    fn new(tcp: TcpStream) -> Lane {
        Lane {
            tcp,
            backlog: Mutex::new(Backlog::default()),
        }
    }

    /// Writes `bytes` now (the caller saw that nothing waits before them), queueing what the
    /// socket does not take. Returns whether something is left in the backlog.
    fn write_or_queue(&self, backlog: &mut Backlog, bytes: Bytes) -> bool {
        if backlog.broken.is_some() {
            return true;
        }
        match self.tcp.try_write(&bytes) {
            Ok(written) if written == bytes.len() => false,
            Ok(written) => {
                backlog.front_begun = written > 0;
                backlog.chunks.push_back(bytes.slice(written..));
                true
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                backlog.chunks.push_back(bytes);
                true
            }
            Err(error) => {
                backlog.broken = Some(error.kind());
                true
            }
        }
    }

    /// One `writev` of the writable chunks (up to `DRAIN_SLICES`). False when the socket
    /// would block or failed (then `broken` is set).
    fn write_front(&self, backlog: &mut Backlog) -> bool {
        // On the stack: this runs once per drain, the hot path of a socket that falls behind.
        let mut slices = [IoSlice::new(&[]); DRAIN_SLICES];
        let count = backlog.writable().min(DRAIN_SLICES);
        for (slice, chunk) in slices.iter_mut().zip(backlog.chunks.iter().take(count)) {
            *slice = IoSlice::new(chunk);
        }
        match self.tcp.try_write_vectored(&slices[..count]) {
            Ok(written) => {
                backlog.consume(written);
                true
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
            Err(error) => {
                backlog.broken = Some(error.kind());
                false
            }
        }
    }

    /// Writes the backlog out, as much per syscall as one `writev` takes; ready once it is empty.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut backlog = self.backlog.lock();
            if let Some(kind) = backlog.broken {
                return Poll::Ready(Err(kind.into()));
            }
            if backlog.writable() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !self.write_front(&mut backlog) && backlog.broken.is_none() {
                drop(backlog);
                // The failed try cleared the readiness; this registers the task for the next.
                ready!(self.tcp.poll_write_ready(cx))?;
            }
        }
    }
}

impl Backlog {
    /// Drops `written` bytes from the front. An emptied backlog gives its memory back: most
    /// sockets never have one, and one that had a burst should not keep it while idle.
    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("the socket wrote no more than it was given");
            if written < front.len() {
                front.advance(written);
                self.front_begun = true;
                return;
            }
            written -= front.len();
            self.chunks.pop_front();
            self.front_begun = false;
        }
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    /// Takes a push: queued, or held back while `holding`; refused beyond `limit` chunks.
    /// Dropped once a write failed: the connection is gone (the socket's task ends it), and
    /// queueing for it would only fill the backlog and make a client that left look slow.
    fn enqueue(&mut self, encoded: &Bytes, limit: usize) -> Pushed {
        if self.broken.is_some() {
            return Pushed::Dropped;
        }
        if self.chunks.len() >= limit {
            return Pushed::Full;
        }
        self.chunks.push_back(encoded.clone());
        if self.holding {
            self.held += 1;
            Pushed::Held
        } else {
            Pushed::Queued
        }
    }
}

impl Lane {
    /// [`PushLane::push`] with the clock reading given (tests choose it).
    fn push_at(&self, encoded: &Bytes, backlog_limit: usize, now_micros: u32) -> Pushed {
        let mut backlog = self.backlog.lock();
        if backlog.stopped {
            return Pushed::Dropped;
        }
        let in_a_stream = backlog.last_push_micros != 0
            && now_micros.wrapping_sub(backlog.last_push_micros) < STREAM_GAP_MICROS;
        backlog.last_push_micros = now_micros;
        if in_a_stream || backlog.holding || !backlog.chunks.is_empty() {
            return backlog.enqueue(encoded, backlog_limit);
        }
        if self.write_or_queue(&mut backlog, encoded.clone()) {
            Pushed::Queued
        } else {
            Pushed::Written
        }
    }
}

impl PushLane for Lane {
    fn encode(&self, frame: &WireFrame) -> Bytes {
        encode_text_frame(frame.bytes())
    }

    fn push(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed {
        self.push_at(encoded, backlog_limit, micros_now())
    }

    fn queue(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed {
        let mut backlog = self.backlog.lock();
        if backlog.stopped {
            return Pushed::Dropped;
        }
        backlog.enqueue(encoded, backlog_limit)
    }

    fn backlog_len(&self) -> usize {
        self.backlog.lock().chunks.len()
    }

    fn has_backlog(&self) -> bool {
        let backlog = self.backlog.lock();
        backlog.writable() > 0 || backlog.broken.is_some()
    }

    /// Writes the first frame, ahead of any held pushes, which then join the backlog.
    fn start(&self, first_frame: Bytes) -> bool {
        let mut backlog = self.backlog.lock();
        let position = backlog.writable();
        if position == 0 && backlog.held == 0 {
            backlog.holding = false;
            return self.write_or_queue(&mut backlog, first_frame);
        }
        backlog.chunks.insert(position, first_frame);
        backlog.holding = false;
        backlog.held = 0;
        true
    }

    fn hold(&self) {
        let mut backlog = self.backlog.lock();
        backlog.holding = true;
    }

    fn release(&self) -> bool {
        let mut backlog = self.backlog.lock();
        backlog.holding = false;
        backlog.held = 0;
        !backlog.chunks.is_empty()
    }

    /// Drops every frame not yet begun, held or not, so that the close frame leaves next (a
    /// slow consumer's backlog could otherwise keep it past the close handshake's timeout).
    fn stop(&self) {
        let mut backlog = self.backlog.lock();
        backlog.stopped = true;
        let keep = usize::from(backlog.front_begun);
        backlog.chunks.truncate(keep);
        backlog.held = 0;
    }
}

/// Microseconds since the first call, wrapping every ~71 minutes (only short gaps are compared;
/// a wrong answer across a wrap queues or writes one push the other way, which is harmless).
fn micros_now() -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u32
}

/// An unmasked, unfragmented WebSocket text frame, as a server sends it: the same bytes for
/// every recipient, so a broadcast is framed once. tungstenite's own framing, as for every other
/// frame the server sends.
fn encode_text_frame(payload: &Bytes) -> Bytes {
    let frame = Frame::message(payload.clone(), OpCode::Data(Data::Text), true);
    let mut encoded = Vec::with_capacity(frame.len());
    frame
        .format(&mut encoded)
        .expect("writing to a Vec cannot fail");
    Bytes::from(encoded)
}

/// A connection's addresses, local and peer: unique among live TCP connections (a peer address
/// alone is not, when the listener is reached through several local addresses).
pub type ConnectionKey = (SocketAddr, SocketAddr);

/// The lanes of accepted connections not yet taken by the WebSocket endpoint, by
/// [`ConnectionKey`]. One lock: held for a map operation, once per connection, never across
/// `.await`.
#[derive(Default)]
pub struct Lanes {
    by_connection: Mutex<HashMap<ConnectionKey, Arc<Lane>>>,
}

impl Lanes {
    /// The lane of the connection, which stops being listed here.
    pub fn take(&self, connection: &ConnectionKey) -> Option<Arc<Lane>> {
        self.by_connection.lock().remove(connection)
    }

    fn insert(&self, connection: ConnectionKey, lane: &Arc<Lane>) {
        self.by_connection.lock().insert(connection, lane.clone());
    }

    /// Forgets the connection's lane if it is still this one.
    fn forget(&self, connection: &ConnectionKey, lane: &Arc<Lane>) {
        let mut by_connection = self.by_connection.lock();
        if by_connection
            .get(connection)
            .is_some_and(|listed| Arc::ptr_eq(listed, lane))
        {
            by_connection.remove(connection);
        }
    }
}

/// An accepted connection as hyper reads and writes it: every write goes through the lane.
pub struct LaneStream {
    lane: Arc<Lane>,
    connection: ConnectionKey,
    lanes: Arc<Lanes>,
}

impl Drop for LaneStream {
    fn drop(&mut self) {
        self.lanes.forget(&self.connection, &self.lane);
    }
}

impl AsyncRead for LaneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.lane.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for LaneStream {
    /// Writes `buf` once nothing written before it waits (held pushes excepted: they go after
    /// it), so hyper and tungstenite feel the socket's backpressure as with a bare socket; only
    /// the part of `buf` the socket did not take is queued.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let lane = &self.lane;
        loop {
            ready!(lane.poll_drain(cx))?;
            let mut backlog = lane.backlog.lock();
            if let Some(kind) = backlog.broken {
                return Poll::Ready(Err(kind.into()));
            }
            if backlog.writable() > 0 {
                // A push was queued between the drain and the lock: drain again.
                continue;
            }
            match lane.tcp.try_write(buf) {
                Ok(written) if written < buf.len() => {
                    // The rest of a begun frame goes first, before any held pushes.
                    backlog
                        .chunks
                        .push_front(Bytes::copy_from_slice(&buf[written..]));
                    backlog.front_begun = written > 0;
                    return Poll::Ready(Ok(buf.len()));
                }
                Ok(written) => return Poll::Ready(Ok(written)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    drop(backlog);
                    // The failed try cleared the readiness; this registers the task for the next.
                    ready!(lane.tcp.poll_write_ready(cx))?;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lane.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.lane.poll_drain(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.lane.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// salvo's plain TCP acceptor, except that each connection is a [`LaneStream`] listed in
/// [`Lanes`]. Admission (the server's fuse policy: handshake and header timeouts) is salvo's.
pub struct LaneAcceptor {
    listener: TcpListener,
    holdings: Vec<Holding>,
    lanes: Arc<Lanes>,
    /// A socket accepted but not yet admitted: kept here, not on the `accept` future's stack,
    /// so a dropped `accept` call does not close a client it already took.
    pending: Option<(TcpStream, SocketAddr)>,
}

impl LaneAcceptor {
    pub fn new(listener: TcpListener, lanes: Arc<Lanes>) -> io::Result<LaneAcceptor> {
        let holdings = vec![Holding {
            local_addr: listener.local_addr()?.into(),
            http_versions: vec![Version::HTTP_11],
            http_scheme: Scheme::HTTP,
        }];
        Ok(LaneAcceptor {
            listener,
            holdings,
            lanes,
            pending: None,
        })
    }
}

impl Acceptor for LaneAcceptor {
    type Coupler = TcpCoupler<StraightStream<LaneStream>>;
    type Stream = StraightStream<LaneStream>;

    fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    /// Cancel-safe: a socket accepted before the admission decision waits in `pending`.
    async fn accept(
        &mut self,
        fuse_policy: Option<ArcFusePolicy>,
    ) -> io::Result<Accepted<Self::Coupler, Self::Stream>> {
        loop {
            if self.pending.is_none() {
                self.pending = Some(self.listener.accept().await?);
            }
            let peer = self.pending.as_ref().expect("pending set above").1;
            let local_addr = self.holdings[0].local_addr.clone();
            let conn_ctrl = ConnCtrl::new();
            let (fuse_config, observer) = match &fuse_policy {
                Some(policy) => {
                    let info = FuseInfo {
                        trans_proto: TransProto::Tcp,
                        remote_addr: peer.into(),
                        local_addr: local_addr.clone(),
                    };
                    match policy.decide(&info).await {
                        FuseAction::Accept(config) => {
                            (Some(config), policy.observe(&info, &conn_ctrl))
                        }
                        FuseAction::Reject => {
                            self.pending = None;
                            continue;
                        }
                    }
                }
                None => (None, None),
            };
            let (tcp, peer) = self.pending.take().expect("pending set above");
            // The socket's own address, not the listener's (which may be 0.0.0.0): it is what
            // tells two connections from the same peer address apart.
            let Ok(local) = tcp.local_addr() else {
                continue;
            };
            let lane = Arc::new(Lane::new(tcp));
            let connection = (local, peer);
            self.lanes.insert(connection, &lane);
            let stream = LaneStream {
                lane,
                connection,
                lanes: self.lanes.clone(),
            };
            return Ok(Accepted {
                coupler: TcpCoupler::new(),
                stream: StraightStream::new(stream, fuse_config, conn_ctrl.clone(), observer),
                fuse_config,
                conn_ctrl,
                remote_addr: peer.into(),
                local_addr: local.into(),
                http_scheme: Scheme::HTTP,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A lane on the server side of a loopback connection, and the client side.
    async fn connected_lane() -> (Arc<Lane>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let ((server, _), client) = tokio::try_join!(listener.accept(), client).unwrap();
        (Arc::new(Lane::new(server)), client)
    }

    fn stream_of(lane: &Arc<Lane>) -> LaneStream {
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
        LaneStream {
            lane: lane.clone(),
            connection: (address, address),
            lanes: Arc::default(),
        }
    }

    /// Clock readings far enough apart that no push counts as part of a stream.
    #[derive(Default)]
    struct SparseClock(u32);

    impl SparseClock {
        fn next(&mut self) -> u32 {
            self.0 += 2 * STREAM_GAP_MICROS;
            self.0
        }
    }

    /// Pushes `chunk` until the socket stops taking it; returns everything pushed.
    fn fill_socket(lane: &Lane, chunk: &Bytes, clock: &mut SparseClock) -> Vec<u8> {
        let mut pushed = Vec::new();
        loop {
            let outcome = lane.push_at(chunk, usize::MAX, clock.next());
            pushed.extend_from_slice(chunk);
            if outcome == Pushed::Queued {
                return pushed;
            }
            assert_eq!(outcome, Pushed::Written);
        }
    }

    async fn read_exactly(mut client: TcpStream, length: usize) -> Vec<u8> {
        let mut received = vec![0; length];
        client.read_exact(&mut received).await.unwrap();
        received
    }

    #[tokio::test]
    async fn a_write_through_the_stream_waits_for_queued_pushes() {
        let (lane, client) = connected_lane().await;
        assert!(!lane.start(Bytes::new()), "nothing held, nothing waits");
        let mut clock = SparseClock::default();
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut expected = fill_socket(&lane, &chunk, &mut clock);
        assert!(lane.has_backlog());
        let push = Bytes::from_static(b"push");
        let total = expected.len() + b"reply".len() + push.len();
        let reader = tokio::spawn(read_exactly(client, total));
        // Completes only once the client has read the queued pushes.
        let mut stream = stream_of(&lane);
        stream.write_all(b"reply").await.unwrap();
        expected.extend_from_slice(b"reply");
        let outcome = lane.push_at(&push, usize::MAX, clock.next());
        assert!(matches!(outcome, Pushed::Written | Pushed::Queued));
        expected.extend_from_slice(&push);
        stream.flush().await.unwrap();
        assert!(!lane.has_backlog(), "flush drained the backlog");
        assert!(
            reader.await.unwrap() == expected,
            "bytes arrive whole and in order"
        );
    }

    #[tokio::test]
    async fn a_full_backlog_refuses_pushes() {
        let (lane, _client) = connected_lane().await;
        lane.start(Bytes::new());
        let mut clock = SparseClock::default();
        let chunk = Bytes::from(vec![1u8; 64 * 1024]);
        fill_socket(&lane, &chunk, &mut clock);
        assert_eq!(lane.push_at(&chunk, 2, clock.next()), Pushed::Queued);
        assert_eq!(lane.push_at(&chunk, 2, clock.next()), Pushed::Full);
    }

    #[tokio::test]
    async fn pushes_before_start_follow_the_first_frame() {
        let (lane, client) = connected_lane().await;
        assert_eq!(lane.push(&Bytes::from_static(b"early"), 1), Pushed::Held);
        assert_eq!(lane.push(&Bytes::from_static(b"over"), 1), Pushed::Full);
        let mut stream = stream_of(&lane);
        stream.write_all(b"<upgrade>").await.unwrap();
        assert!(
            !lane.has_backlog(),
            "held pushes are not the task's to drain yet"
        );
        assert!(
            lane.start(Bytes::from_static(b"hello")),
            "the held push waits for the task"
        );
        stream.flush().await.unwrap();
        assert_eq!(read_exactly(client, 19).await, b"<upgrade>helloearly");
    }

    #[tokio::test]
    async fn pushes_during_a_request_follow_its_reply() {
        let (lane, client) = connected_lane().await;
        lane.start(Bytes::new());
        lane.hold();
        assert_eq!(lane.push(&Bytes::from_static(b"push"), 8), Pushed::Held);
        let mut stream = stream_of(&lane);
        stream.write_all(b"reply").await.unwrap();
        assert!(lane.release(), "the held push now waits for the task");
        stream.flush().await.unwrap();
        assert_eq!(read_exactly(client, 9).await, b"replypush");
    }

    #[tokio::test]
    async fn stop_drops_every_frame_not_yet_begun_so_the_close_frame_comes_next() {
        let (lane, mut client) = connected_lane().await;
        lane.start(Bytes::new());
        let mut clock = SparseClock::default();
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let pushed = fill_socket(&lane, &chunk, &mut clock);
        for _ in 0..3 {
            assert_eq!(
                lane.push_at(&chunk, usize::MAX, clock.next()),
                Pushed::Queued
            );
        }
        lane.stop();
        assert_eq!(lane.push(&chunk, usize::MAX), Pushed::Dropped);
        let mut stream = stream_of(&lane);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        });
        stream.write_all(b"CLOSE").await.unwrap();
        stream.shutdown().await.unwrap();
        let received = reader.await.unwrap();
        let (frames, close) = received.split_at(received.len() - 5);
        assert_eq!(close, b"CLOSE");
        assert_eq!(frames.len() % chunk.len(), 0, "only whole frames before it");
        assert!(
            frames.len() <= pushed.len(),
            "the queued pushes were dropped"
        );
        assert!(frames.iter().all(|byte| *byte == 7));
    }

    #[tokio::test]
    async fn a_broken_connection_fails_the_next_flush() {
        let (lane, client) = connected_lane().await;
        lane.start(Bytes::new());
        // Closing with unread data makes the kernel reset the connection.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let chunk = Bytes::from(vec![1u8; 1024]);
        let mut stream = stream_of(&lane);
        let failed = async {
            for _ in 0..1000 {
                lane.push(&chunk, usize::MAX);
                if stream.flush().await.is_err() {
                    return true;
                }
                tokio::task::yield_now().await;
            }
            false
        };
        assert!(failed.await, "writes to a reset connection fail");
        assert!(lane.has_backlog(), "the socket's task is told to look");
    }

    #[tokio::test]
    async fn a_dense_stream_is_queued_for_one_write_and_a_sparse_push_written_at_once() {
        let (lane, client) = connected_lane().await;
        lane.start(Bytes::new());
        let push = Bytes::from_static(b"push");
        let start = 1_000;
        assert_eq!(
            lane.push_at(&push, 8, start),
            Pushed::Written,
            "the first goes at once"
        );
        assert_eq!(
            lane.push_at(&push, 8, start + 100),
            Pushed::Queued,
            "the next waits"
        );
        assert_eq!(lane.push_at(&push, 8, start + 200), Pushed::Queued);
        stream_of(&lane).flush().await.unwrap();
        let later = start + 200 + STREAM_GAP_MICROS;
        assert_eq!(
            lane.push_at(&push, 8, later),
            Pushed::Written,
            "after a gap, at once"
        );
        assert_eq!(read_exactly(client, 16).await, b"pushpushpushpush");
    }

    #[test]
    fn text_frames_carry_each_length_form() {
        let header = |length: usize| {
            let frame = encode_text_frame(&Bytes::from(vec![b'x'; length]));
            let (header, payload) = frame.split_at(frame.len() - length);
            assert!(
                payload.iter().all(|byte| *byte == b'x'),
                "payload follows whole"
            );
            header.to_vec()
        };
        assert_eq!(header(0), [0x81, 0]);
        assert_eq!(header(125), [0x81, 125]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(header(65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[tokio::test]
    async fn lanes_forget_only_their_own_entry() {
        let lanes = Lanes::default();
        let address: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let connection = (address, address);
        let (first, _client_one) = connected_lane().await;
        let (second, _client_two) = connected_lane().await;
        lanes.insert(connection, &first);
        lanes.insert(connection, &second);
        lanes.forget(&connection, &first);
        assert!(
            lanes
                .take(&connection)
                .is_some_and(|lane| Arc::ptr_eq(&lane, &second))
        );
        assert!(lanes.take(&connection).is_none(), "taken once");
    }
}
