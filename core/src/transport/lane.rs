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

use crate::hub::{PushLane, Pushed};
use crate::protocol::Frame;

/// Backlog chunks written with one `writev` when draining: coalesces a burst into one syscall.
const DRAIN_SLICES: usize = 64;

/// A push that comes this soon after the socket's previous one is part of a stream, and is
/// queued for the socket's task instead of written at once: by the time the task runs, more
/// have usually arrived, and it writes them with one `writev`. A send costs ~8 µs of kernel time
/// on loopback, so writing each push of a dense stream separately cut the `fanout` benchmark's
/// throughput (a room of 10,000 at 1,000 broadcasts/s) from ~760,000 to ~110,000 deliveries/s.
/// Sparse pushes, which is what most sockets get, still leave at once.
const STREAM_GAP_MICROS: u32 = 2_000;

/// One accepted socket and the bytes waiting to be written to it.
pub struct Lane {
    tcp: TcpStream,
    /// Held only for a non-blocking write or a queue operation, never across `.await`; the
    /// only contenders are the socket's own task and tasks fanning out to it.
    backlog: Mutex<Backlog>,
}

#[derive(Default)]
struct Backlog {
    /// Bytes accepted but not yet written, oldest first; the last `held` of them are pushes
    /// that arrived before the socket's first frame (`connected`) was out.
    chunks: VecDeque<Bytes>,
    /// Pushes at the back of `chunks` kept until [`PushLane::start`]: the socket's own writes
    /// go before them, and draining stops at them.
    held: usize,
    /// When the last push came ([`micros_now`]; 0 = none yet), to tell a stream from a sparse push.
    last_push_micros: u32,
    started: bool,
    /// Set by [`PushLane::stop`]: the close frame may follow, and no data frame may after it.
    stopped: bool,
    /// A write failed for good; the socket's task learns it from its next write or flush.
    broken: Option<io::ErrorKind>,
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

    /// Writes `bytes` now if nothing waits before them, queueing what the socket does not take.
    /// Returns whether something is left in the backlog.
    fn write_or_queue(&self, backlog: &mut Backlog, bytes: Bytes) -> bool {
        if backlog.broken.is_some() {
            return true;
        }
        if !backlog.chunks.is_empty() {
            backlog.chunks.push_back(bytes);
            return true;
        }
        match self.tcp.try_write(&bytes) {
            Ok(written) if written == bytes.len() => false,
            Ok(written) => {
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
        let slices: Vec<IoSlice<'_>> = backlog
            .chunks
            .iter()
            .take(backlog.writable().min(DRAIN_SLICES))
            .map(|chunk| IoSlice::new(chunk))
            .collect();
        match self.tcp.try_write_vectored(&slices) {
            Ok(written) => {
                consume(&mut backlog.chunks, written);
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

/// Drops `written` bytes from the front of the backlog. An emptied backlog gives its memory
/// back: most sockets never have one, and one that had a burst should not keep it while idle.
fn consume(chunks: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let front = chunks
            .front_mut()
            .expect("the socket wrote no more than it was given");
        if written < front.len() {
            front.advance(written);
            return;
        }
        written -= front.len();
        chunks.pop_front();
    }
    if chunks.is_empty() {
        *chunks = VecDeque::new();
    }
}

impl PushLane for Lane {
    fn encode(&self, frame: &Frame) -> Bytes {
        encode_text_frame(frame.bytes())
    }

    fn push(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed {
        let mut backlog = self.backlog.lock();
        if backlog.stopped {
            return Pushed::Dropped;
        }
        if !backlog.started {
            if backlog.held >= backlog_limit {
                return Pushed::Full;
            }
            backlog.chunks.push_back(encoded.clone());
            backlog.held += 1;
            return Pushed::Held;
        }
        if backlog.chunks.len() >= backlog_limit {
            return Pushed::Full;
        }
        let now = micros_now();
        let in_a_stream = backlog.last_push_micros != 0
            && now.wrapping_sub(backlog.last_push_micros) < STREAM_GAP_MICROS;
        backlog.last_push_micros = now;
        if in_a_stream {
            backlog.chunks.push_back(encoded.clone());
            return Pushed::Queued;
        }
        if self.write_or_queue(&mut backlog, encoded.clone()) {
            Pushed::Queued
        } else {
            Pushed::Written
        }
    }

    fn queue(&self, encoded: &Bytes, backlog_limit: usize) -> Pushed {
        let mut backlog = self.backlog.lock();
        if backlog.stopped {
            return Pushed::Dropped;
        }
        let waiting = if backlog.started {
            backlog.chunks.len()
        } else {
            backlog.held
        };
        if waiting >= backlog_limit {
            return Pushed::Full;
        }
        backlog.chunks.push_back(encoded.clone());
        if backlog.started {
            Pushed::Queued
        } else {
            backlog.held += 1;
            Pushed::Held
        }
    }

    fn has_backlog(&self) -> bool {
        let backlog = self.backlog.lock();
        backlog.writable() > 0 || backlog.broken.is_some()
    }

    /// Writes the first frame, ahead of any held pushes, which then join the backlog.
    fn start(&self, first_frame: Bytes) -> bool {
        let mut backlog = self.backlog.lock();
        backlog.started = true;
        let held = std::mem::take(&mut backlog.held);
        if held == 0 {
            return self.write_or_queue(&mut backlog, first_frame);
        }
        let position = backlog.chunks.len() - held;
        backlog.chunks.insert(position, first_frame);
        true
    }

    fn stop(&self) {
        let mut backlog = self.backlog.lock();
        backlog.stopped = true;
        let writable = backlog.writable();
        backlog.chunks.truncate(writable);
        backlog.held = 0;
    }
}

/// Microseconds since the first call, wrapping every ~71 minutes (only short gaps are compared;
/// a wrong answer across a wrap queues or writes one push the other way, which is harmless).
fn micros_now() -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u32
}

/// An unmasked, unfragmented WebSocket text frame (RFC 6455 section 5.2), as a server sends it:
/// the same bytes for every recipient, so a broadcast is framed once.
fn encode_text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(FIN_TEXT);
    match payload.len() {
        length @ 0..=125 => frame.push(length as u8),
        length @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The lanes of accepted connections not yet taken by the WebSocket endpoint, by peer address
/// (unique per live connection on one listener). One lock: held for a map operation, once per
/// connection, never across `.await`.
#[derive(Default)]
pub struct Lanes {
    by_peer: Mutex<HashMap<SocketAddr, Arc<Lane>>>,
}

impl Lanes {
    /// The lane of the connection from `peer`, which stops being listed here.
    pub fn take(&self, peer: &SocketAddr) -> Option<Arc<Lane>> {
        self.by_peer.lock().remove(peer)
    }

    fn insert(&self, peer: SocketAddr, lane: &Arc<Lane>) {
        self.by_peer.lock().insert(peer, lane.clone());
    }

    /// Forgets `peer`'s lane if it is still this one (a new connection may reuse the address).
    fn forget(&self, peer: &SocketAddr, lane: &Arc<Lane>) {
        let mut by_peer = self.by_peer.lock();
        if by_peer
            .get(peer)
            .is_some_and(|listed| Arc::ptr_eq(listed, lane))
        {
            by_peer.remove(peer);
        }
    }
}

/// An accepted connection as hyper reads and writes it: every write goes through the lane.
pub struct LaneStream {
    lane: Arc<Lane>,
    peer: SocketAddr,
    lanes: Arc<Lanes>,
}

impl Drop for LaneStream {
    fn drop(&mut self) {
        self.lanes.forget(&self.peer, &self.lane);
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
    /// Takes all of `buf`: written now, or queued behind pushes waiting before it. The queue is
    /// bounded by the callers, which flush after every response or frame they write.
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let lane = &self.lane;
        let mut backlog = lane.backlog.lock();
        if let Some(kind) = backlog.broken {
            return Poll::Ready(Err(kind.into()));
        }
        let mut unwritten = buf;
        if backlog.writable() == 0 {
            match lane.tcp.try_write(buf) {
                Ok(written) => unwritten = &buf[written..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        if !unwritten.is_empty() {
            // Before any held pushes: they wait for this socket's own first frame.
            let position = backlog.writable();
            backlog
                .chunks
                .insert(position, Bytes::copy_from_slice(unwritten));
        }
        Poll::Ready(Ok(buf.len()))
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
            let lane = Arc::new(Lane::new(tcp));
            self.lanes.insert(peer, &lane);
            let stream = LaneStream {
                lane,
                peer,
                lanes: self.lanes.clone(),
            };
            return Ok(Accepted {
                coupler: TcpCoupler::new(),
                stream: StraightStream::new(stream, fuse_config, conn_ctrl.clone(), observer),
                fuse_config,
                conn_ctrl,
                remote_addr: peer.into(),
                local_addr,
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
        LaneStream {
            lane: lane.clone(),
            peer: "127.0.0.1:1".parse().unwrap(),
            lanes: Arc::default(),
        }
    }

    /// Pushes `chunk` until the socket stops taking it; returns everything pushed.
    fn push_until_queued(lane: &Lane, chunk: &Bytes) -> Vec<u8> {
        let mut pushed = Vec::new();
        loop {
            let outcome = lane.push(chunk, usize::MAX);
            pushed.extend_from_slice(chunk);
            if outcome == Pushed::Queued {
                return pushed;
            }
            assert_eq!(outcome, Pushed::Written);
        }
    }

    async fn read_exactly(client: &mut TcpStream, length: usize) -> Vec<u8> {
        let mut received = vec![0; length];
        client.read_exact(&mut received).await.unwrap();
        received
    }

    #[tokio::test]
    async fn a_backlog_keeps_push_and_stream_order_and_drains_when_the_client_reads() {
        let (lane, mut client) = connected_lane().await;
        assert!(!lane.start(Bytes::new()), "nothing held, nothing waits");
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut expected = push_until_queued(&lane, &chunk);
        assert!(lane.has_backlog());
        // A reply written through the stream while pushes wait goes behind them.
        let mut stream = stream_of(&lane);
        stream.write_all(b"reply").await.unwrap();
        expected.extend_from_slice(b"reply");
        assert_eq!(
            lane.push(&Bytes::from_static(b"push"), usize::MAX),
            Pushed::Queued
        );
        expected.extend_from_slice(b"push");
        let total = expected.len();
        let reader = tokio::spawn(async move { read_exactly(&mut client, total).await });
        stream.flush().await.unwrap();
        assert!(!lane.has_backlog(), "flush drained the backlog");
        let received = reader.await.unwrap();
        assert!(received == expected, "bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn a_dense_stream_is_queued_for_one_write_and_a_sparse_push_written_at_once() {
        let (lane, mut client) = connected_lane().await;
        lane.start(Bytes::new());
        let push = Bytes::from_static(b"push");
        assert_eq!(
            lane.push(&push, 8),
            Pushed::Written,
            "the first push goes at once"
        );
        assert_eq!(
            lane.push(&push, 8),
            Pushed::Queued,
            "one right after it waits"
        );
        assert_eq!(lane.push(&push, 8), Pushed::Queued);
        stream_of(&lane).flush().await.unwrap();
        assert_eq!(read_exactly(&mut client, 12).await, b"pushpushpush");
        tokio::time::sleep(Duration::from_micros(u64::from(STREAM_GAP_MICROS) * 2)).await;
        assert_eq!(
            lane.push(&push, 8),
            Pushed::Written,
            "after a gap, at once again"
        );
        assert_eq!(read_exactly(&mut client, 4).await, b"push");
    }

    #[tokio::test]
    async fn a_full_backlog_refuses_pushes() {
        let (lane, _client) = connected_lane().await;
        lane.start(Bytes::new());
        let chunk = Bytes::from(vec![1u8; 64 * 1024]);
        push_until_queued(&lane, &chunk);
        assert_eq!(lane.push(&chunk, 2), Pushed::Queued);
        assert_eq!(lane.push(&chunk, 2), Pushed::Full);
    }

    #[tokio::test]
    async fn pushes_before_start_follow_the_first_frame() {
        let (lane, mut client) = connected_lane().await;
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
        assert_eq!(read_exactly(&mut client, 19).await, b"<upgrade>helloearly");
    }

    #[tokio::test]
    async fn no_push_leaves_after_stop() {
        let (lane, mut client) = connected_lane().await;
        let mut stream = stream_of(&lane);
        assert_eq!(lane.push(&Bytes::from_static(b"held"), 8), Pushed::Held);
        lane.stop();
        assert_eq!(lane.push(&Bytes::from_static(b"late"), 8), Pushed::Dropped);
        stream.write_all(b"close").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"close");
    }

    #[tokio::test]
    async fn a_broken_connection_fails_the_next_flush() {
        let (lane, client) = connected_lane().await;
        lane.start(Bytes::new());
        // Closing with unread data makes the kernel reset the connection.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
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

    #[test]
    fn text_frames_carry_each_length_form() {
        let header = |length: usize| {
            let frame = encode_text_frame(&vec![b'x'; length]);
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
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (first, _client_one) = connected_lane().await;
        let (second, _client_two) = connected_lane().await;
        lanes.insert(peer, &first);
        lanes.insert(peer, &second);
        lanes.forget(&peer, &first);
        assert!(
            lanes
                .take(&peer)
                .is_some_and(|lane| Arc::ptr_eq(&lane, &second))
        );
        assert!(lanes.take(&peer).is_none(), "taken once");
    }
}
