//! The RTP/RTCP relay of one call: the gateway in the media path, as an SBC is (DESIGN §3).
//!
//! ```text
//!  carrier ──RTP──► [A rtp]  ─┐          ┌─  [B rtp]  ──RTP──► agent (B's remote)
//!          ◄─RTP─── [A rtp]  ◄┼── task ──┼►  [B rtp]  ◄─RTP──
//!          ⇄ RTCP   [A rtcp] ─┘          └─  [B rtcp]   RTCP ⇄
//! ```
//!
//! [`Relay::start`] takes a port pair per leg from the [`PortAllocator`] (leg A faces the
//! carrier, leg B the agent runtime) and spawns one tokio task that owns the four sockets. What
//! a leg's peer sends to our port of that leg goes out of the same kind of port (RTP or RTCP) of
//! the other leg, to the other leg's remote address, payload untouched: each datagram is read
//! into a buffer and sent from that buffer. [`Relay::local`] is the address that goes into each
//! leg's SDP; [`Relay::update_remote`] gives the address of the peer's SDP (offer, answer,
//! re-INVITE). The call task (`call::inbound`) drives it and awaits [`Relay::timeout`].
//!
//! **Symmetric RTP / latching** (peers behind NAT send from another address than their SDP
//! says), per leg and separately for RTP and RTCP:
//! 1. The remote starts as the SDP address (RTCP: its port + 1), or none when the SDP said
//!    `0.0.0.0`; nothing is sent to a leg whose remote is unknown (the packets are dropped).
//! 2. The first valid packet (RTP or RTCP version 2) from any source latches the remote to that
//!    source: from then on replies go there.
//! 3. After latching, packets from any other source are dropped (hijack guard), with one
//!    exception: when the latched source has sent nothing for `latch_silence` (1 s), a new
//!    source that sends `latch_after` (3) packets in a row, with nothing from another source in
//!    between, is latched instead (a NAT binding that changed, a media server fail-over).
//! 4. [`Relay::update_remote`] with a different address (a re-INVITE moved the media) starts
//!    over from 1 for that leg. The same address again changes nothing.
//!
//! **Media timeout.** A leg is expected to send once it has an SDP address or has latched; from
//! then on, when it has sent no RTP for `media_timeout`, [`Relay::timeout`] resolves with a
//! [`MediaTimeout`] naming the silent leg (or both), once. RTCP does not count as media. While
//! the call is on hold ([`Relay::set_hold`]: `sendonly`, `recvonly`, `inactive`) the timeout is
//! suspended; on resume every leg gets a full `media_timeout` again.
//!
//! **Stats** per leg and direction (`media::stats`): RTP in (packets, bytes, loss, jitter) and
//! out, RTCP in and out, and dropped packets by reason. The task owns them and publishes a copy
//! in atomics after each batch; [`Relay::snapshot`] reads that copy at any time, and
//! [`Relay::stop`] returns the final figures.
//!
//! **Hot path.** One task per call, no lock and no allocation per packet. The sockets are tokio
//! `UdpSocket`s; when one is readable, the task reads it with `recvmmsg` (nix's safe wrapper; up
//! to [`BATCH`] datagrams per system call, into buffers shared by the relays of a worker
//! thread) inside `try_io`. A batch shorter than asked has seen the queue empty, so it clears the
//! socket's readiness as an `EAGAIN` would, without the extra read that a `recv_from` loop needs
//! to see that `EAGAIN`: at 50 packets/s per flow nearly every wake-up finds one packet, so this
//! saves one system call per packet. Datagrams are sent with one `sendto` each, without waiting:
//! a full send buffer drops the packet, as a late RTP packet is useless anyway (`sendmmsg` pays
//! only when several packets of one flow are queued at once, which at 50 packets/s per flow
//! happens only under overload).
//!
//! **Stop.** [`Relay::stop`] ends the task and returns the final stats; dropping the [`Relay`]
//! ends it too. Either way the sockets close and then the port pairs return to the pool, also
//! when the task panics.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{SockAddr, SockRef};
use tokio::io::Interest;
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::ports::{PortAllocator, PortLease, PortPair, PortsError};
use super::stats::{RtpStats, StreamStats};

/// Datagrams read per `recvmmsg`.
pub const BATCH: usize = 32;
/// Largest datagram relayed; a longer one is dropped as malformed (RTP stays under the MTU).
pub const MAX_DATAGRAM: usize = 2048;
/// Reads from one socket in one wake-up before the task yields to others.
const MAX_READS_PER_WAKE: usize = 8;

/// Which side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The carrier (or PBX) side.
    A,
    /// The agent-runtime side.
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Leg::A => "carrier",
            Leg::B => "agent",
        }
    }

    fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// RTP or RTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

/// Socket index in the task: leg A RTP, A RTCP, B RTP, B RTCP.
fn socket_index(leg: Leg, kind: Kind) -> usize {
    leg.index() * 2 + matches!(kind, Kind::Rtcp) as usize
}

const SOCKETS: [(Leg, Kind); 4] =
    [(Leg::A, Kind::Rtp), (Leg::A, Kind::Rtcp), (Leg::B, Kind::Rtp), (Leg::B, Kind::Rtcp)];

/// How a relay behaves.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// No RTP from a leg for this long ends the call (see the module docs).
    pub media_timeout: Duration,
    /// RTP clock rate for the jitter figures: 8000 for PCMU, PCMA, G.722 (RFC 3551 §4.5.2) and
    /// telephone-event at 8 kHz.
    pub clock_rate: u32,
    /// Packets in a row from a new source that re-latch a silent leg.
    pub latch_after: u32,
    /// How long the latched source must have been silent before another may take over.
    pub latch_silence: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            media_timeout: Duration::from_secs(30),
            clock_rate: 8000,
            latch_after: 3,
            latch_silence: Duration::from_secs(1),
        }
    }
}

/// Which legs stopped sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silent {
    One(Leg),
    Both,
}

impl Silent {
    /// For the session record's hang-up reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Silent::One(leg) => leg.as_str(),
            Silent::Both => "both",
        }
    }

    pub fn includes(self, leg: Leg) -> bool {
        match self {
            Silent::One(silent) => silent == leg,
            Silent::Both => true,
        }
    }
}

/// The relay saw no RTP for the media timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaTimeout {
    pub silent: Silent,
    /// The configured timeout.
    pub after: Duration,
}

/// Packets received on a leg and not relayed, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// From a source other than the latched one (hijack guard).
    pub foreign: u64,
    /// The other leg's remote is not known yet.
    pub no_destination: u64,
    /// Not RTP/RTCP version 2, too short, or longer than [`MAX_DATAGRAM`].
    pub malformed: u64,
    /// The send failed (full send buffer, unreachable address).
    pub send_failed: u64,
}

/// The figures of one leg. `*_in` is what its peer sent to us, `*_out` what we relayed to it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LegStats {
    /// Where this leg's RTP goes now (the SDP address, or the latched source).
    pub remote: Option<SocketAddr>,
    pub rtp_in: StreamStats,
    pub rtp_out: StreamStats,
    pub rtcp_in: StreamStats,
    pub rtcp_out: StreamStats,
    pub dropped: Dropped,
}

/// The figures of both legs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RelayStats {
    pub a: LegStats,
    pub b: LegStats,
}

impl RelayStats {
    pub fn leg(&self, leg: Leg) -> &LegStats {
        match leg {
            Leg::A => &self.a,
            Leg::B => &self.b,
        }
    }

    fn leg_mut(&mut self, leg: Leg) -> &mut LegStats {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ports(#[from] PortsError),
    #[error("cannot register RTP sockets with the runtime: {0}")]
    Register(io::Error),
    #[error("the relay needs a tokio runtime")]
    NoRuntime,
}

impl StartError {
    /// The SIP answer to the call that needed the relay.
    pub fn status_code(&self) -> u16 {
        503
    }
}

enum Command {
    UpdateRemote(Leg, Option<SocketAddr>),
    Hold(bool),
    Stop,
}

/// The relay of one call. Dropping it stops the relay and frees its ports.
pub struct Relay {
    local: [SocketAddr; 2],
    local_rtcp: [SocketAddr; 2],
    commands: mpsc::UnboundedSender<Command>,
    timeout: watch::Receiver<Option<MediaTimeout>>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<RelayStats>>,
}

impl Relay {
    /// Allocates a port pair on `ip_a` for leg A and one on `ip_b` for leg B and starts
    /// relaying between them. Must be called within a tokio runtime (with IO and time).
    pub fn start(
        allocator: &PortAllocator,
        ip_a: IpAddr,
        ip_b: IpAddr,
        config: RelayConfig,
    ) -> Result<Relay, StartError> {
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        Relay::start_on(&runtime, allocator, ip_a, ip_b, config)
    }

    /// The same on a given runtime, e.g. a thread of a [`MediaThreads`]; callable from
    /// anywhere.
    pub fn start_on(
        runtime: &Handle,
        allocator: &PortAllocator,
        ip_a: IpAddr,
        ip_b: IpAddr,
        config: RelayConfig,
    ) -> Result<Relay, StartError> {
        Relay::start_with(runtime, None, allocator, ip_a, ip_b, config)
    }

    fn start_with(
        runtime: &Handle,
        load: Option<ThreadLoad>,
        allocator: &PortAllocator,
        ip_a: IpAddr,
        ip_b: IpAddr,
        config: RelayConfig,
    ) -> Result<Relay, StartError> {
        let pair_a = allocator.allocate(ip_a)?;
        let pair_b = allocator.allocate(ip_b)?;
        let local = [local_addr(&pair_a.rtp)?, local_addr(&pair_b.rtp)?];
        let local_rtcp = [local_addr(&pair_a.rtcp)?, local_addr(&pair_b.rtcp)?];
        let PortPair { rtp: rtp_a, rtcp: rtcp_a, lease: lease_a } = pair_a;
        let PortPair { rtp: rtp_b, rtcp: rtcp_b, lease: lease_b } = pair_b;
        let ipv6 = [
            local[0].is_ipv6(),
            local_rtcp[0].is_ipv6(),
            local[1].is_ipv6(),
            local_rtcp[1].is_ipv6(),
        ];
        let sockets = {
            let _entered = runtime.enter();
            [register(rtp_a)?, register(rtcp_a)?, register(rtp_b)?, register(rtcp_b)?]
        };

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (timeout_tx, timeout) = watch::channel(None);
        let now = Instant::now();
        let shared = Arc::new(Shared::new(now));
        let task = Task {
            sockets,
            ipv6,
            leases: [lease_a, lease_b],
            _load: load,
            commands: commands_rx,
            // Created on the relay's runtime, so its own timer drives it (and no runtime is
            // needed by the caller).
            sleep: {
                let _entered = runtime.enter();
                Box::pin(tokio::time::sleep_until((now + config.media_timeout).into()))
            },
            state: State {
                config,
                legs: [LegState::new(), LegState::new()],
                hold: false,
                reported: false,
                shared: Arc::clone(&shared),
                timeout: timeout_tx,
            },
        };
        let task = runtime.spawn(task.run());
        Ok(Relay { local, local_rtcp, commands, timeout, shared, task: Some(task) })
    }

    /// Our RTP address on this leg: what goes into the SDP sent to that leg's peer.
    pub fn local(&self, leg: Leg) -> SocketAddr {
        self.local[leg.index()]
    }

    /// Our RTCP address on this leg (RTP port + 1).
    pub fn local_rtcp(&self, leg: Leg) -> SocketAddr {
        self.local_rtcp[leg.index()]
    }

    /// The RTP address in the SDP of this leg's peer (`None` for `0.0.0.0`). A new address
    /// drops the latch of that leg (see the module docs).
    pub fn update_remote(&self, leg: Leg, remote: Option<SocketAddr>) {
        // The task only ends when stopped: a send error means nothing is left to update.
        let _ = self.commands.send(Command::UpdateRemote(leg, remote));
    }

    /// On hold the peers may stop sending: the media timeout is suspended until resumed.
    pub fn set_hold(&self, hold: bool) {
        let _ = self.commands.send(Command::Hold(hold));
    }

    /// Resolves once when a leg has sent no RTP for the media timeout; never resolves if that
    /// does not happen before the relay stops. Can be called any number of times.
    pub fn timeout(&self) -> impl Future<Output = MediaTimeout> + Send + 'static {
        let mut rx = self.timeout.clone();
        async move {
            loop {
                let current = *rx.borrow_and_update();
                if let Some(timeout) = current {
                    return timeout;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// The figures as of the last batch relayed.
    pub fn snapshot(&self) -> RelayStats {
        self.shared.load()
    }

    /// Stops relaying, closes the sockets, returns the ports to the pool and gives the final
    /// figures.
    pub async fn stop(mut self) -> RelayStats {
        let _ = self.commands.send(Command::Stop);
        match self.task.take() {
            Some(task) => match task.await {
                Ok(stats) => stats,
                Err(err) => {
                    tracing::warn!(error = %err, "RTP relay task failed");
                    self.shared.load()
                }
            },
            None => self.shared.load(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Threads that run relays apart from the SIP runtime, each a current-thread tokio runtime with
/// its own epoll, as in rtpengine or a hand-written relay: media is not queued behind signalling
/// work, and no relay pays for work-stealing (on the multi-thread runtime, waking a parked
/// worker for each packet costs a futex call and a context switch). Relays are spread over the
/// threads ([`MediaThreads::start_relay`]). Dropping it stops the threads, and with them the
/// relays still on them.
///
/// Fewer, busier threads cost less per packet: every wake-up of an idle thread is a context
/// switch, and a busy thread finds several sockets ready per wake-up: in `benches/rtp-relay.sh`
/// one media thread used clearly less CPU per relayed packet than two threads or the shared
/// multi-thread runtime (figures in docs/benchmarks.md, "How many media threads"). So relays are
/// *packed*: a new call goes to the first thread holding fewer than
/// [`MediaThreads::calls_per_thread`] calls, and only when every thread holds that many to the
/// one with the fewest. Light load stays on one busy thread; heavy load uses every core.
pub struct MediaThreads {
    threads: Vec<MediaThread>,
    calls_per_thread: usize,
}

struct MediaThread {
    handle: Handle,
    /// Relays running on this thread.
    calls: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// Calls a media thread takes before the next thread is used: 400 calls are 40,000 packets/s of
/// 20 ms audio both ways, well under what one thread relayed loss-free in `benches/rtp-relay.sh`
/// (docs/benchmarks.md), so a thread is never packed to its limit.
pub const CALLS_PER_THREAD: usize = 400;

/// Counts a relay on its media thread while the relay task lives.
struct ThreadLoad(Arc<AtomicUsize>);

impl Drop for ThreadLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MediaThreads {
    /// Starts `count` threads (at least one), named `trunkline-media-N`.
    pub fn start(count: usize) -> io::Result<MediaThreads> {
        let mut threads = Vec::with_capacity(count.max(1));
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let join = std::thread::Builder::new().name(format!("trunkline-media-{n}")).spawn(
                move || {
                    // Runs the relays' tasks until told to stop (or the sender is dropped).
                    let _ = runtime.block_on(stopped);
                },
            )?;
            threads.push(MediaThread {
                handle,
                calls: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                join: Some(join),
            });
        }
        Ok(MediaThreads { threads, calls_per_thread: CALLS_PER_THREAD })
    }

    /// Packs `calls` calls on a thread before the next is used (at least 1).
    pub fn with_calls_per_thread(mut self, calls: usize) -> MediaThreads {
        self.calls_per_thread = calls.max(1);
        self
    }

    pub fn calls_per_thread(&self) -> usize {
        self.calls_per_thread
    }

    /// Starts a relay ([`Relay::start_on`]) on the thread the packing rule picks.
    pub fn start_relay(
        &self,
        allocator: &PortAllocator,
        ip_a: IpAddr,
        ip_b: IpAddr,
        config: RelayConfig,
    ) -> Result<Relay, StartError> {
        let thread = self.pick();
        thread.calls.fetch_add(1, Ordering::Relaxed);
        let load = ThreadLoad(Arc::clone(&thread.calls));
        Relay::start_with(&thread.handle, Some(load), allocator, ip_a, ip_b, config)
    }

    /// The first thread below `calls_per_thread`, else the one with the fewest calls.
    fn pick(&self) -> &MediaThread {
        let calls = |t: &MediaThread| t.calls.load(Ordering::Relaxed);
        self.threads
            .iter()
            .find(|t| calls(t) < self.calls_per_thread)
            .or_else(|| self.threads.iter().min_by_key(|t| calls(t)))
            .expect("MediaThreads::start makes at least one thread")
    }

    /// Relays running on each thread.
    pub fn calls(&self) -> Vec<usize> {
        self.threads.iter().map(|t| t.calls.load(Ordering::Relaxed)).collect()
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for MediaThreads {
    fn drop(&mut self) {
        for thread in &mut self.threads {
            if let Some(stop) = thread.stop.take() {
                let _ = stop.send(());
            }
        }
        for thread in &mut self.threads {
            if let Some(join) = thread.join.take() {
                let _ = join.join();
            }
        }
    }
}

fn local_addr(socket: &UdpSocket) -> Result<SocketAddr, StartError> {
    socket.local_addr().map_err(StartError::Register)
}

/// Registers a (non-blocking) socket with the runtime entered by the caller.
fn register(socket: UdpSocket) -> Result<TokioUdpSocket, StartError> {
    TokioUdpSocket::from_std(socket).map_err(StartError::Register)
}

/// The task that owns the sockets. Fields drop in order: sockets, then the port leases.
struct Task {
    sockets: [TokioUdpSocket; 4],
    /// Whether each socket is IPv6 (which `recvmmsg` headers to use).
    ipv6: [bool; 4],
    leases: [PortLease; 2],
    /// This relay counted on its media thread, until the task ends.
    _load: Option<ThreadLoad>,
    commands: mpsc::UnboundedReceiver<Command>,
    sleep: Pin<Box<Sleep>>,
    state: State,
}

impl Task {
    async fn run(mut self) -> RelayStats {
        poll_fn(|cx| self.poll(cx)).await;
        let stats = self.state.stats();
        let Task { sockets, leases, .. } = self;
        drop(sockets);
        drop(leases);
        stats
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Stop)) | Poll::Ready(None) => return Poll::Ready(()),
                Poll::Ready(Some(command)) => self.state.apply(command, Instant::now()),
                Poll::Pending => break,
            }
        }
        let now = Instant::now();
        let Task { sockets, ipv6, state, .. } = self;
        for (index, &(leg, kind)) in SOCKETS.iter().enumerate() {
            let socket = &sockets[index];
            let out = &sockets[socket_index(leg.other(), kind)];
            for read in 1.. {
                // Ready, or Pending with the task's waker registered for the next datagram.
                match socket.poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(err)) => {
                        tracing::warn!(error = %err, leg = leg.as_str(), "RTP socket failed");
                        break;
                    }
                    Poll::Pending => break,
                }
                if read > MAX_READS_PER_WAKE {
                    // More keeps coming: let other tasks run, then come back.
                    cx.waker().wake_by_ref();
                    break;
                }
                // A batch shorter than asked observed an empty queue: it is reported to tokio
                // as `WouldBlock`, which clears the readiness unless a new readiness event came
                // in meanwhile; the next poll_recv_ready then registers the waker (or says
                // ready again if a datagram arrived since).
                let _ = socket.try_io(Interest::READABLE, || {
                    match state.relay_batch(socket, ipv6[index], out, leg, kind, now) {
                        Batch::Full => Ok(()),
                        Batch::Drained => Err(io::ErrorKind::WouldBlock.into()),
                    }
                });
            }
        }
        self.poll_timer(cx);
        Poll::Pending
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) {
        while !self.state.reported && self.sleep.as_mut().poll(cx).is_ready() {
            match self.state.check_timeout(Instant::now()) {
                Ok(timeout) => {
                    self.state.reported = true;
                    self.state.timeout.send_replace(Some(timeout));
                }
                Err(next) => self.sleep.as_mut().reset(next.into()),
            }
        }
    }
}

/// What a read found.
enum Batch {
    /// A full batch: more may be queued.
    Full,
    /// Fewer than asked (the queue is empty), or an error.
    Drained,
}

/// The latch of one leg's RTP or RTCP.
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    remote: Option<SocketAddr>,
    latched: bool,
    last_seen: Option<Instant>,
    candidate: Option<SocketAddr>,
    candidate_packets: u32,
}

impl Latch {
    fn new(remote: Option<SocketAddr>) -> Latch {
        Latch { remote, ..Latch::default() }
    }

    /// Whether a packet from `source` is relayed (see the module docs for the rule).
    fn accept(&mut self, source: SocketAddr, now: Instant, config: &RelayConfig) -> bool {
        if self.latched && self.remote == Some(source) {
            self.last_seen = Some(now);
            self.candidate = None;
            return true;
        }
        if self.latched {
            let silent = self
                .last_seen
                .is_none_or(|seen| now.saturating_duration_since(seen) > config.latch_silence);
            if !silent {
                self.candidate = None;
                return false;
            }
            if self.candidate == Some(source) {
                self.candidate_packets += 1;
            } else {
                self.candidate = Some(source);
                self.candidate_packets = 1;
            }
            if self.candidate_packets < config.latch_after {
                return false;
            }
        }
        *self = Latch {
            remote: Some(source),
            latched: true,
            last_seen: Some(now),
            candidate: None,
            candidate_packets: 0,
        };
        true
    }
}

struct LegState {
    rtp: Latch,
    rtcp: Latch,
    /// The SDP address last given.
    sdp: Option<SocketAddr>,
    /// Since when this leg is expected to send RTP, updated by each RTP packet (None: not yet).
    active: Option<Instant>,
    rtp_in: RtpStats,
    rtp_out: RtpStats,
    rtcp_in: RtpStats,
    rtcp_out: RtpStats,
    dropped: Dropped,
}

impl LegState {
    fn new() -> LegState {
        LegState {
            rtp: Latch::default(),
            rtcp: Latch::default(),
            sdp: None,
            active: None,
            rtp_in: RtpStats::new(),
            rtp_out: RtpStats::new(),
            rtcp_in: RtpStats::new(),
            rtcp_out: RtpStats::new(),
            dropped: Dropped::default(),
        }
    }

    fn latch(&self, kind: Kind) -> &Latch {
        match kind {
            Kind::Rtp => &self.rtp,
            Kind::Rtcp => &self.rtcp,
        }
    }

    fn latch_mut(&mut self, kind: Kind) -> &mut Latch {
        match kind {
            Kind::Rtp => &mut self.rtp,
            Kind::Rtcp => &mut self.rtcp,
        }
    }
}

struct State {
    config: RelayConfig,
    legs: [LegState; 2],
    hold: bool,
    /// The timeout has been reported (it is reported once).
    reported: bool,
    shared: Arc<Shared>,
    timeout: watch::Sender<Option<MediaTimeout>>,
}

impl State {
    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::UpdateRemote(leg, remote) => {
                let state = &mut self.legs[leg.index()];
                if state.sdp == remote {
                    return;
                }
                state.sdp = remote;
                state.rtp = Latch::new(remote);
                state.rtcp = Latch::new(remote.map(rtcp_of));
                state.active = remote.map(|_| now);
                self.shared.set_remote(leg, remote);
            }
            Command::Hold(hold) => {
                if self.hold && !hold {
                    for state in &mut self.legs {
                        state.active = state.active.map(|_| now);
                    }
                }
                self.hold = hold;
            }
            Command::Stop => {}
        }
    }

    /// Reads one batch from `socket` (leg `leg`, `kind`) and relays what may pass out of `out`.
    fn relay_batch(
        &mut self,
        socket: &TokioUdpSocket,
        ipv6: bool,
        out: &TokioUdpSocket,
        leg: Leg,
        kind: Kind,
        now: Instant,
    ) -> Batch {
        let relayed = BUFFERS.try_with(|cell| {
            let Ok(mut buffers) = cell.try_borrow_mut() else { return Batch::Drained };
            let buffers = &mut *buffers;
            let received = match buffers.receive(socket, ipv6) {
                Ok(received) => received,
                Err(Errno::EAGAIN) => return Batch::Drained,
                Err(Errno::EINTR) => return Batch::Full,
                Err(err) => {
                    tracing::debug!(error = %err, leg = leg.as_str(), "RTP receive failed");
                    return Batch::Drained;
                }
            };
            let config = self.config;
            let [a, b] = &mut self.legs;
            let (from, to) = match leg {
                Leg::A => (a, b),
                Leg::B => (b, a),
            };
            let destination = to.latch(kind).remote.map(SockAddr::from);
            let out = SockRef::from(out);
            let mut latched = false;
            for i in 0..received {
                let (Some(source), Some(datagram)) = (buffers.sources[i], buffers.datagram(i))
                else {
                    from.dropped.malformed += 1;
                    continue;
                };
                if !valid(datagram, kind) {
                    from.dropped.malformed += 1;
                    continue;
                }
                let latch = from.latch_mut(kind);
                let was = latch.remote;
                if !latch.accept(source, now, &config) {
                    from.dropped.foreign += 1;
                    continue;
                }
                latched |= was != latch.remote;
                let len = datagram.len();
                if kind == Kind::Rtp && !is_muxed_rtcp(datagram) {
                    let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
                    let ts =
                        u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
                    from.rtp_in.on_packet(now, seq, ts, len, config.clock_rate);
                    from.active = Some(now);
                } else {
                    from.rtcp_in.on_datagram(now, len);
                }
                let Some(destination) = &destination else {
                    from.dropped.no_destination += 1;
                    continue;
                };
                match out.send_to(datagram, destination) {
                    Ok(_) => match kind {
                        Kind::Rtp => to.rtp_out.on_datagram(now, len),
                        Kind::Rtcp => to.rtcp_out.on_datagram(now, len),
                    },
                    Err(_) => from.dropped.send_failed += 1,
                }
            }
            if latched && kind == Kind::Rtp {
                self.shared.set_remote(leg, from.rtp.remote);
            }
            self.shared.publish(leg, from, to, kind);
            if received == BATCH { Batch::Full } else { Batch::Drained }
        });
        // No buffers only while the thread exits.
        relayed.unwrap_or(Batch::Drained)
    }

    /// `Ok` when a leg expected to send has been silent for the timeout; else when to look
    /// again.
    fn check_timeout(&self, now: Instant) -> Result<MediaTimeout, Instant> {
        let timeout = self.config.media_timeout;
        if self.hold {
            return Err(now + timeout);
        }
        let silent = |leg: Leg| {
            self.legs[leg.index()]
                .active
                .is_some_and(|since| now.saturating_duration_since(since) >= timeout)
        };
        let silent = match (silent(Leg::A), silent(Leg::B)) {
            (true, true) => Silent::Both,
            (true, false) => Silent::One(Leg::A),
            (false, true) => Silent::One(Leg::B),
            (false, false) => {
                // Not silent: each expected leg's deadline is after now.
                let next = self.legs.iter().filter_map(|leg| leg.active).min();
                return Err(next.unwrap_or(now) + timeout);
            }
        };
        Ok(MediaTimeout { silent, after: timeout })
    }

    fn stats(&self) -> RelayStats {
        let leg = |state: &LegState| LegStats {
            remote: state.rtp.remote,
            rtp_in: state.rtp_in.snapshot(),
            rtp_out: state.rtp_out.snapshot(),
            rtcp_in: state.rtcp_in.snapshot(),
            rtcp_out: state.rtcp_out.snapshot(),
            dropped: state.dropped,
        };
        RelayStats { a: leg(&self.legs[0]), b: leg(&self.legs[1]) }
    }
}

/// RTCP goes to the port after RTP unless latched elsewhere (RFC 3550 §11).
fn rtcp_of(rtp: SocketAddr) -> SocketAddr {
    SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
}

/// RTP (RFC 3550 §5.1): version 2 and a 12-byte header; RTCP (also on the RTP port with
/// rtcp-mux): version 2 and 8 bytes.
fn valid(datagram: &[u8], kind: Kind) -> bool {
    let min = match kind {
        Kind::Rtp if !is_muxed_rtcp(datagram) => 12,
        _ => 8,
    };
    datagram.len() >= min && datagram[0] >> 6 == 2
}

/// RTCP sent on the RTP port (rtcp-mux): packet types 192-223 where RTP has marker + payload
/// type (RFC 5761 §4). Relayed like RTP, counted as RTCP.
fn is_muxed_rtcp(datagram: &[u8]) -> bool {
    datagram.get(1).is_some_and(|byte| (192..=223).contains(byte))
}

/// Receive buffers, one set per worker thread: a batch is read and relayed within one poll,
/// never across an `.await`, so relays on the same thread can share them.
struct Buffers {
    data: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    /// `recvmmsg` headers, one set per address family: the kernel shortens each header's
    /// address length to the last source's, which must stay long enough for the next.
    headers_v4: MultiHeaders<SockaddrStorage>,
    headers_v6: MultiHeaders<SockaddrStorage>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::new());
}

impl Buffers {
    fn new() -> Buffers {
        let data = vec![[0u8; MAX_DATAGRAM]; BATCH].into_boxed_slice().try_into();
        Buffers {
            data: data.expect("a vec of BATCH buffers is an array of BATCH buffers"),
            lens: [0; BATCH],
            sources: [None; BATCH],
            headers_v4: MultiHeaders::preallocate(BATCH, None),
            headers_v6: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Reads up to [`BATCH`] datagrams without blocking; how many were read.
    fn receive(&mut self, socket: &TokioUdpSocket, ipv6: bool) -> Result<usize, Errno> {
        let headers = if ipv6 { &mut self.headers_v6 } else { &mut self.headers_v4 };
        let mut slices = self.data.each_mut().map(|buffer| [IoSliceMut::new(&mut buffer[..])]);
        let results =
            recvmmsg(socket.as_raw_fd(), headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
        let mut received = 0;
        for (i, message) in results.enumerate() {
            let truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
            self.lens[i] = if truncated { usize::MAX } else { message.bytes };
            self.sources[i] = message.address.as_ref().and_then(socket_addr);
            received = i + 1;
        }
        Ok(received)
    }

    /// The datagram read into slot `i`, unless it was truncated.
    fn datagram(&self, i: usize) -> Option<&[u8]> {
        self.data[i].get(..self.lens[i])
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// The figures the task publishes after each batch, for [`Relay::snapshot`]: plain atomics,
/// written by the task only, so the hot path takes no lock.
struct Shared {
    base: Instant,
    legs: [SharedLeg; 2],
    /// Changes only when a remote is set or latched.
    remotes: Mutex<[Option<SocketAddr>; 2]>,
}

#[derive(Default)]
struct SharedLeg {
    rtp_in: SharedStream,
    rtp_out: SharedStream,
    rtcp_in: SharedStream,
    rtcp_out: SharedStream,
    dropped: [AtomicU64; 4],
}

#[derive(Default)]
struct SharedStream {
    packets: AtomicU64,
    bytes: AtomicU64,
    expected: AtomicU64,
    lost: AtomicU64,
    jitter: AtomicU64,
    jitter_ms: AtomicU64,
    /// Nanoseconds since `base`, plus one (0: none).
    first: AtomicU64,
    last: AtomicU64,
}

impl SharedStream {
    fn store(&self, stats: &StreamStats, base: Instant) {
        let at = |t: Option<Instant>| {
            t.map_or(0, |t| {
                u64::try_from(t.duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1) + 1
            })
        };
        self.packets.store(stats.packets, Ordering::Relaxed);
        self.bytes.store(stats.bytes, Ordering::Relaxed);
        self.expected.store(stats.expected, Ordering::Relaxed);
        self.lost.store(stats.lost, Ordering::Relaxed);
        self.jitter.store(stats.jitter.to_bits(), Ordering::Relaxed);
        self.jitter_ms.store(stats.jitter_ms.to_bits(), Ordering::Relaxed);
        self.first.store(at(stats.first), Ordering::Relaxed);
        self.last.store(at(stats.last), Ordering::Relaxed);
    }

    fn load(&self, base: Instant) -> StreamStats {
        let at = |nanos: u64| nanos.checked_sub(1).map(|n| base + Duration::from_nanos(n));
        StreamStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            jitter: f64::from_bits(self.jitter.load(Ordering::Relaxed)),
            jitter_ms: f64::from_bits(self.jitter_ms.load(Ordering::Relaxed)),
            first: at(self.first.load(Ordering::Relaxed)),
            last: at(self.last.load(Ordering::Relaxed)),
        }
    }
}

impl Shared {
    fn new(base: Instant) -> Shared {
        Shared { base, legs: Default::default(), remotes: Mutex::new([None; 2]) }
    }

    /// After a batch from `leg`: what it sent in, what went out to the other leg, the drops.
    fn publish(&self, leg: Leg, from: &LegState, to: &LegState, kind: Kind) {
        let shared_from = &self.legs[leg.index()];
        let shared_to = &self.legs[leg.other().index()];
        match kind {
            Kind::Rtp => {
                shared_from.rtp_in.store(&from.rtp_in.snapshot(), self.base);
                shared_to.rtp_out.store(&to.rtp_out.snapshot(), self.base);
                // muxed RTCP
                shared_from.rtcp_in.store(&from.rtcp_in.snapshot(), self.base);
            }
            Kind::Rtcp => {
                shared_from.rtcp_in.store(&from.rtcp_in.snapshot(), self.base);
                shared_to.rtcp_out.store(&to.rtcp_out.snapshot(), self.base);
            }
        }
        let d = from.dropped;
        for (cell, value) in shared_from.dropped.iter().zip([
            d.foreign,
            d.no_destination,
            d.malformed,
            d.send_failed,
        ]) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    fn set_remote(&self, leg: Leg, remote: Option<SocketAddr>) {
        self.remotes.lock().unwrap_or_else(PoisonError::into_inner)[leg.index()] = remote;
    }

    fn load(&self) -> RelayStats {
        let remotes = *self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stats = RelayStats::default();
        for leg in [Leg::A, Leg::B] {
            let shared = &self.legs[leg.index()];
            let [foreign, no_destination, malformed, send_failed] =
                shared.dropped.each_ref().map(|cell| cell.load(Ordering::Relaxed));
            *stats.leg_mut(leg) = LegStats {
                remote: remotes[leg.index()],
                rtp_in: shared.rtp_in.load(self.base),
                rtp_out: shared.rtp_out.load(self.base),
                rtcp_in: shared.rtcp_in.load(self.base),
                rtcp_out: shared.rtcp_out.load(self.base),
                dropped: Dropped { foreign, no_destination, malformed, send_failed },
            };
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const WAIT: Duration = Duration::from_secs(2);
    const QUIET: Duration = Duration::from_millis(150);

    /// An RTP packet: PCMU, this sequence number and timestamp, 160 bytes of payload.
    fn rtp(seq: u16, ts: u32) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ts.to_be_bytes());
        packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        packet.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
        packet
    }

    /// An RTCP receiver report with no report blocks.
    fn rtcp() -> Vec<u8> {
        vec![0x80, 201, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]
    }

    async fn peer() -> TokioUdpSocket {
        TokioUdpSocket::bind((LOCALHOST, 0)).await.expect("bind a peer")
    }

    /// A peer with RTP on some port and RTCP on the next one.
    async fn peer_pair() -> (TokioUdpSocket, TokioUdpSocket) {
        for _ in 0..100 {
            let rtp = peer().await;
            let port = rtp.local_addr().expect("addr").port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = TokioUdpSocket::bind((LOCALHOST, port + 1)).await {
                return (rtp, rtcp);
            }
        }
        panic!("no two consecutive free ports");
    }

    fn addr(socket: &TokioUdpSocket) -> SocketAddr {
        socket.local_addr().expect("addr")
    }

    async fn receive(socket: &TokioUdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 2048];
        let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("a packet within the wait")
            .expect("receive");
        buf.truncate(len);
        (buf, from)
    }

    async fn nothing_arrives(socket: &TokioUdpSocket) {
        let mut buf = vec![0u8; 2048];
        let got = tokio::time::timeout(QUIET, socket.recv_from(&mut buf)).await;
        assert!(got.is_err(), "unexpected packet from {:?}", got.map(|r| r.map(|(_, from)| from)));
    }

    async fn send(from: &TokioUdpSocket, packet: &[u8], to: SocketAddr) {
        from.send_to(packet, to).await.expect("send");
    }

    /// Waits (bounded) until the relay's published figures satisfy `check`.
    async fn eventually(relay: &Relay, check: impl Fn(&RelayStats) -> bool) -> RelayStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = relay.snapshot();
            if check(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "figures never matched: {stats:#?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn test_pool(pairs: u16) -> PortAllocator {
        let (low, high) = super::super::ports::free_test_range(pairs);
        PortAllocator::new(low, high)
    }

    fn start(pool: &PortAllocator, config: RelayConfig) -> Relay {
        Relay::start(pool, LOCALHOST, LOCALHOST, config).expect("relay starts")
    }

    #[tokio::test]
    async fn packets_sent_to_a_arrive_at_b_with_the_payload_intact_and_back() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, carrier_rtcp) = peer_pair().await;
        let (agent, agent_rtcp) = peer_pair().await;
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        assert_eq!(relay.local(Leg::A).ip(), LOCALHOST);
        assert_eq!(relay.local_rtcp(Leg::B).port(), relay.local(Leg::B).port() + 1);

        let packet = rtp(1, 160);
        send(&carrier, &packet, relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await, (packet, relay.local(Leg::B)));

        let packet = rtp(7000, 99);
        send(&agent, &packet, relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await, (packet, relay.local(Leg::A)));

        // RTCP, each way, between the RTCP ports (the SDP's RTP port + 1)
        send(&carrier_rtcp, &rtcp(), relay.local_rtcp(Leg::A)).await;
        assert_eq!(receive(&agent_rtcp).await, (rtcp(), relay.local_rtcp(Leg::B)));
        send(&agent_rtcp, &rtcp(), relay.local_rtcp(Leg::B)).await;
        assert_eq!(receive(&carrier_rtcp).await, (rtcp(), relay.local_rtcp(Leg::A)));

        let stats = relay.stop().await;
        assert_eq!((stats.a.rtp_in.packets, stats.b.rtp_out.packets), (1, 1));
        assert_eq!((stats.b.rtp_in.packets, stats.a.rtp_out.packets), (1, 1));
        assert_eq!((stats.a.rtcp_in.packets, stats.b.rtcp_out.packets), (1, 1));
        assert_eq!((stats.b.rtcp_in.packets, stats.a.rtcp_out.packets), (1, 1));
        assert_eq!(pool.available(), pool.capacity());
    }

    #[tokio::test]
    async fn a_burst_larger_than_a_batch_arrives_whole_and_in_order() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        // Several full batches, within what a socket's default receive buffer holds.
        let count = (BATCH * 6 + 5) as u16;
        for seq in 0..count {
            send(&carrier, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::A)).await;
        }
        for seq in 0..count {
            assert_eq!(receive(&agent).await.0, rtp(seq, u32::from(seq) * 160));
        }
        let stats = eventually(&relay, |s| s.a.rtp_in.packets == u64::from(count)).await;
        assert_eq!(stats.a.rtp_in.lost, 0);
    }

    #[tokio::test]
    async fn replies_go_to_the_latched_source_not_to_the_sdp_address() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let carrier = peer().await;
        // The agent's SDP says X, but it sends from Y (behind a NAT).
        let (sdp_x, real_y, third_z) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&sdp_x)));

        send(&real_y, &rtp(1, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(1, 0));
        send(&carrier, &rtp(50, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&real_y).await.0, rtp(50, 0));
        nothing_arrives(&sdp_x).await;

        // A third address after latching is dropped, and does not take the replies.
        send(&third_z, &rtp(2, 160), relay.local(Leg::B)).await;
        nothing_arrives(&carrier).await;
        send(&carrier, &rtp(51, 160), relay.local(Leg::A)).await;
        assert_eq!(receive(&real_y).await.0, rtp(51, 160));
        nothing_arrives(&third_z).await;
        let stats = eventually(&relay, |s| s.b.dropped.foreign == 1).await;
        assert_eq!(stats.b.remote, Some(addr(&real_y)));
        assert_eq!(stats.b.rtp_in.packets, 1);
    }

    #[tokio::test]
    async fn a_new_source_takes_over_after_the_latched_one_is_silent_and_sends_three_in_a_row() {
        let pool = test_pool(5);
        let config =
            RelayConfig { latch_silence: Duration::from_millis(200), ..Default::default() };
        let relay = start(&pool, config);
        let (carrier, old, new) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&old)));
        send(&old, &rtp(1, 0), relay.local(Leg::B)).await;
        receive(&carrier).await;

        // While the latched source is active, a new one gets nowhere however often it sends.
        for seq in 10..15 {
            send(&new, &rtp(seq, 0), relay.local(Leg::B)).await;
        }
        nothing_arrives(&carrier).await;

        tokio::time::sleep(Duration::from_millis(250)).await;
        // Silent for longer than latch_silence: the third packet in a row latches.
        send(&new, &rtp(20, 0), relay.local(Leg::B)).await;
        send(&new, &rtp(21, 160), relay.local(Leg::B)).await;
        nothing_arrives(&carrier).await;
        send(&new, &rtp(22, 320), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(22, 320));
        send(&carrier, &rtp(60, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&new).await.0, rtp(60, 0));
        nothing_arrives(&old).await;
    }

    #[tokio::test]
    async fn a_reinvite_to_another_address_drops_the_latch() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, first, moved, latecomer) =
            (peer().await, peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&first)));
        send(&first, &rtp(1, 0), relay.local(Leg::B)).await;
        receive(&carrier).await;

        // The same address again keeps the latch.
        relay.update_remote(Leg::B, Some(addr(&first)));
        send(&latecomer, &rtp(2, 0), relay.local(Leg::B)).await;
        nothing_arrives(&carrier).await;

        // A new SDP address: replies go there at once, and the next source latches.
        relay.update_remote(Leg::B, Some(addr(&moved)));
        send(&carrier, &rtp(70, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&moved).await.0, rtp(70, 0));
        send(&latecomer, &rtp(3, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(3, 0));
        send(&carrier, &rtp(71, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&latecomer).await.0, rtp(71, 0));
    }

    #[tokio::test]
    async fn nothing_is_relayed_before_the_destination_is_known() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        // The agent's SDP said 0.0.0.0 (no address) and it has not sent yet.
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, None);
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        eventually(&relay, |s| s.a.dropped.no_destination == 1).await;
        // Once the agent sends, it is latched and media flows both ways.
        send(&agent, &rtp(9, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(9, 0));
        send(&carrier, &rtp(2, 160), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(2, 160));
    }

    #[tokio::test]
    async fn what_is_not_rtp_is_dropped_and_latches_nothing() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, scanner, agent) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        send(&scanner, b"GET / HTTP/1.0\r\n\r\n", relay.local(Leg::B)).await;
        send(&scanner, &[0x80, 0, 1], relay.local(Leg::B)).await;
        eventually(&relay, |s| s.b.dropped.malformed == 2).await;
        nothing_arrives(&carrier).await;
        send(&agent, &rtp(1, 0), relay.local(Leg::B)).await;
        receive(&carrier).await;
        let stats = eventually(&relay, |s| s.b.remote == Some(addr(&agent))).await;
        assert_eq!(stats.b.rtp_in.packets, 1);
    }

    #[tokio::test]
    async fn rtcp_on_the_rtp_port_is_relayed_and_counted_as_rtcp() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        send(&carrier, &rtcp(), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtcp());
        let stats = eventually(&relay, |s| s.a.rtcp_in.packets == 1).await;
        assert_eq!(stats.a.rtp_in.packets, 0);
    }

    #[tokio::test]
    async fn no_rtp_for_the_media_timeout_names_the_silent_side() {
        let pool = test_pool(5);
        let config =
            RelayConfig { media_timeout: Duration::from_millis(300), ..Default::default() };
        let relay = start(&pool, config);
        let (carrier, agent) = (peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let started = Instant::now();
        let timeout = relay.timeout();
        tokio::pin!(timeout);
        // The carrier keeps talking, the agent says nothing.
        let mut seq = 0;
        let fired = loop {
            tokio::select! {
                fired = &mut timeout => break fired,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    send(&carrier, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::A)).await;
                    seq += 1;
                    assert!(started.elapsed() < WAIT, "no timeout");
                }
            }
        };
        assert_eq!(
            fired,
            MediaTimeout { silent: Silent::One(Leg::B), after: config.media_timeout }
        );
        assert_eq!(fired.silent.as_str(), "agent");
        assert!(started.elapsed() >= config.media_timeout);
        // Resolved once, and every later call gives the same answer at once.
        let again = tokio::time::timeout(QUIET, relay.timeout()).await;
        assert_eq!(again.ok(), Some(fired));
    }

    #[tokio::test]
    async fn both_sides_silent_are_reported_together() {
        let pool = test_pool(5);
        let config =
            RelayConfig { media_timeout: Duration::from_millis(200), ..Default::default() };
        let relay = start(&pool, config);
        relay.update_remote(Leg::A, Some(SocketAddr::new(LOCALHOST, 9)));
        relay.update_remote(Leg::B, Some(SocketAddr::new(LOCALHOST, 9)));
        let fired = tokio::time::timeout(WAIT, relay.timeout()).await.expect("a timeout");
        assert_eq!(fired.silent, Silent::Both);
        assert!(fired.silent.includes(Leg::A) && fired.silent.includes(Leg::B));
    }

    #[tokio::test]
    async fn a_held_call_does_not_time_out() {
        let pool = test_pool(5);
        let config =
            RelayConfig { media_timeout: Duration::from_millis(150), ..Default::default() };
        let relay = start(&pool, config);
        relay.update_remote(Leg::A, Some(SocketAddr::new(LOCALHOST, 9)));
        relay.update_remote(Leg::B, Some(SocketAddr::new(LOCALHOST, 9)));
        relay.set_hold(true);
        let held = tokio::time::timeout(Duration::from_millis(600), relay.timeout()).await;
        assert!(held.is_err(), "timed out while held: {held:?}");
        // Resumed: a full timeout again, then the report.
        let resumed = Instant::now();
        relay.set_hold(false);
        let fired = tokio::time::timeout(WAIT, relay.timeout()).await.expect("a timeout");
        assert_eq!(fired.silent, Silent::Both);
        assert!(resumed.elapsed() >= Duration::from_millis(140));
    }

    #[tokio::test]
    async fn a_leg_without_an_address_is_not_expected_to_send() {
        let pool = test_pool(5);
        let config =
            RelayConfig { media_timeout: Duration::from_millis(100), ..Default::default() };
        let relay = start(&pool, config);
        let none_yet = tokio::time::timeout(Duration::from_millis(400), relay.timeout()).await;
        assert!(none_yet.is_err(), "{none_yet:?}");
        relay.update_remote(Leg::A, Some(SocketAddr::new(LOCALHOST, 9)));
        let fired = tokio::time::timeout(WAIT, relay.timeout()).await.expect("a timeout");
        assert_eq!(fired.silent, Silent::One(Leg::A));
    }

    #[tokio::test]
    async fn stats_count_packets_bytes_a_gap_of_three_and_jitter() {
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        // 1..=5, then 9 and 10 (6, 7, 8 never sent), 20 ms of timestamps apart but sent at
        // irregular times.
        let seqs = [1u16, 2, 3, 4, 5, 9, 10];
        let gaps_ms = [0u64, 5, 40, 10, 35, 0, 30];
        for (&seq, &gap) in seqs.iter().zip(&gaps_ms) {
            tokio::time::sleep(Duration::from_millis(gap)).await;
            send(&carrier, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::A)).await;
            receive(&agent).await;
        }
        let len = rtp(0, 0).len() as u64;
        let live = eventually(&relay, |s| s.a.rtp_in.packets == 7).await;
        let stats = relay.stop().await;
        assert_eq!(live, stats);
        let rtp_in = stats.a.rtp_in;
        assert_eq!((rtp_in.packets, rtp_in.bytes), (7, 7 * len));
        assert_eq!((rtp_in.expected, rtp_in.lost), (10, 3));
        assert!(rtp_in.jitter > 0.0 && rtp_in.jitter_ms > 0.0, "{rtp_in:?}");
        assert!(rtp_in.first.is_some() && rtp_in.duration() >= Duration::from_millis(100));
        assert_eq!((stats.b.rtp_out.packets, stats.b.rtp_out.bytes), (7, 7 * len));
        assert_eq!(stats.b.rtp_in, StreamStats::default());
        assert_eq!(stats.a.dropped, Dropped::default());
    }

    #[tokio::test]
    async fn a_thousand_relays_started_and_stopped_leave_the_allocator_full() {
        let pool = test_pool(20);
        for i in 0..1000 {
            let relay = start(&pool, RelayConfig::default());
            if i % 2 == 0 {
                relay.stop().await;
            } else {
                drop(relay);
            }
        }
        // Dropped relays free their ports when their task is dropped, right after.
        let deadline = Instant::now() + WAIT;
        while pool.available() < pool.capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.available(), pool.capacity());
    }

    #[tokio::test]
    async fn an_exhausted_range_is_an_error_at_once() {
        // Three pairs: one relay (two pairs) fits, the second gets one pair and gives it back.
        let pool = test_pool(3);
        let relay = start(&pool, RelayConfig::default());
        let started = Instant::now();
        let err = Relay::start(&pool, LOCALHOST, LOCALHOST, RelayConfig::default())
            .err()
            .expect("no ports left");
        // At once (microseconds here); the bound is loose so that a loaded CI machine that
        // deschedules the test does not fail it: what matters is that nothing waits.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(matches!(err, StartError::Ports(PortsError::Exhausted { .. })), "{err}");
        assert_eq!(err.status_code(), 503);
        assert_eq!(pool.available(), 1);
        relay.stop().await;
        assert_eq!(pool.available(), 3);
    }

    /// Waits until the threads hold these many relays (an aborted task is dropped a moment
    /// later, on its thread).
    async fn eventually_calls(media: &MediaThreads, expected: Vec<usize>) {
        let deadline = Instant::now() + WAIT;
        while media.calls() != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(media.calls(), expected);
    }

    #[test]
    fn once_every_thread_is_packed_new_calls_go_to_the_least_loaded() {
        let pool = test_pool(20);
        let media = MediaThreads::start(2).expect("media threads").with_calls_per_thread(1);
        let start = || media.start_relay(&pool, LOCALHOST, LOCALHOST, RelayConfig::default());
        let relays: Vec<Relay> = (0..5).map(|_| start().expect("relay starts")).collect();
        assert_eq!(media.calls(), vec![3, 2]);
        drop(relays);
        drop(media);
    }

    #[tokio::test]
    async fn relays_run_on_media_threads_and_free_their_ports_when_the_threads_stop() {
        let pool = test_pool(10);
        let media = MediaThreads::start(2).expect("media threads");
        assert_eq!(media.len(), 2);
        let media = media.with_calls_per_thread(2);
        let relays: Vec<Relay> = (0..3)
            .map(|_| {
                media
                    .start_relay(&pool, LOCALHOST, LOCALHOST, RelayConfig::default())
                    .expect("relay starts")
            })
            .collect();
        // Packed: two calls on the first thread, then the second.
        assert_eq!(media.calls(), vec![2, 1]);
        let (carrier, agent) = (peer().await, peer().await);
        for relay in &relays {
            relay.update_remote(Leg::A, Some(addr(&carrier)));
            relay.update_remote(Leg::B, Some(addr(&agent)));
            send(&carrier, &rtp(5, 800), relay.local(Leg::A)).await;
            assert_eq!(receive(&agent).await, (rtp(5, 800), relay.local(Leg::B)));
        }
        let mut relays = relays.into_iter();
        let first = relays.next().expect("a relay");
        assert_eq!(first.stop().await.a.rtp_in.packets, 1);
        // A relay that ends leaves room on its thread: the next call goes there.
        assert_eq!(media.calls(), vec![1, 1]);
        let again = media
            .start_relay(&pool, LOCALHOST, LOCALHOST, RelayConfig::default())
            .expect("relay starts");
        assert_eq!(media.calls(), vec![2, 1]);
        drop(again);
        eventually_calls(&media, vec![1, 1]).await;
        assert_eq!(pool.available(), pool.capacity() - 4);
        // Stopping the threads ends the relays still on them.
        tokio::task::spawn_blocking(move || drop(media)).await.expect("threads stop");
        assert_eq!(pool.available(), pool.capacity());
        drop(relays);
    }

    #[test]
    fn a_relay_outside_a_runtime_is_an_error_not_a_panic() {
        let pool = test_pool(5);
        let err = Relay::start(&pool, LOCALHOST, LOCALHOST, RelayConfig::default()).err();
        assert!(matches!(err, Some(StartError::NoRuntime)));
        assert_eq!(pool.available(), pool.capacity());
    }
}
