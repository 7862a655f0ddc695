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
//! 2. The first valid packet (RTP or RTCP version 2) from a source the leg's [`SourceGuard`]
//!    admits latches the remote to that source: from then on replies go there. A *strict* guard
//!    (the carrier's side) admits only the leg's own addresses: the IP of its SDP `c=` (any
//!    port: a NAT in front of the carrier keeps the address and picks another port, so the
//!    port of the SDP is no evidence of anything), the IP its SIP comes from (inbound) or goes
//!    to (outbound), and the trunk's media allowlist (`spec.media.allowedAddresses`, for
//!    carriers whose media servers are other hosts than their SIP proxies). Anything else is
//!    dropped and counted (`not_allowed`). A guard that is not strict (the agent runtime's
//!    side, in the internal zone) lets the first valid packet from anywhere latch, as before.
//! 3. After latching, packets from any other source are dropped (hijack guard, counted as
//!    `latched`), with one exception: when the latched source has sent nothing for
//!    `latch_silence` (1 s), a new source that is one of the leg's own addresses (as in 2) or
//!    carries the latched stream's SSRC (a NAT binding that changed, a media server
//!    fail-over that kept the stream) and sends `latch_after` (3) packets in a row, with nothing
//!    from another admissible source in between, is latched instead. Any other source stays
//!    dropped however long the leg is silent (`not_allowed`).
//! 4. [`Relay::update_remote`] with a different address (a re-INVITE moved the media) starts
//!    over from 1 for that leg. The same address again changes nothing.
//!
//! The decision is the pure [`Latch::accept`]; the relay's counters (`Dropped::not_allowed`,
//! `Dropped::foreign`) and `trunkline_rtp_rejected_packets_total{trunk,leg,reason}` (when the
//! guard carries [`RtpRejected`] handles) count what it refused.
//!
//! **SRTP** (SDES, `media::srtp`). A side whose peer speaks SRTP ([`Relay::set_srtp`]: the
//! peer's key and ours, from the SDP exchanged on that leg) holds a boxed [`SrtpSide`]; a plain
//! side holds none and its packets take the path above untouched. What an SRTP peer sends is
//! authenticated and decrypted first, before the latch sees it (a forged or replayed packet
//! latches nothing): a failure is dropped and counted (`Dropped::auth_failed`,
//! `trunkline_rtp_rejected_packets_total{reason="unauthenticated"}`). What goes to an SRTP
//! peer is encrypted with our key for that leg. Each side has its own keys, so a call whose
//! two sides are SRTP decrypts with one side's and encrypts with the other's. Figures count
//! the decrypted packets. This costs one allocation per packet on an SRTP side (the crate
//! returns a new buffer).
//!
//! **Media timeout.** A leg is expected to send once it has an SDP address or has latched; from
//! then on, when it has sent no RTP for `media_timeout`, [`Relay::timeout`] resolves with a
//! [`MediaTimeout`] naming the silent leg (or both), once. RTCP does not count as media. While
//! the call is on hold ([`Relay::set_hold`]: `sendonly`, `recvonly`, `inactive`) the timeout is
//! suspended; on resume every leg gets a full `media_timeout` again. Suspended for at most
//! `max_hold` (`--max-hold`): a call held longer owes media again from then on, so a caller
//! who holds forever cannot keep the relay's ports forever (the silence then ends the call
//! after `media_timeout`).
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
//! **Spare side** (a bridged transfer, DESIGN §4). The gateway dials a third party (the
//! transfer leg) while the caller keeps talking to the agent; on its answer the transfer leg
//! takes side B's place, with no re-INVITE toward the caller (side A's ports never change):
//!
//! ```text
//!  while it rings                               after Relay::promote_spare
//!  carrier ⇄ [A] ─ task ─ [B] ⇄ agent           carrier ⇄ [A] ─ task ─ [B = the spare's ports]
//!                          ▲                                             ⇅
//!  transfer peer ──► [spare rtp/rtcp]                                  transfer peer
//!   (nothing is sent to it)                     the agent's old B ports are closed
//! ```
//!
//! [`Relay::add_spare_guarded`] binds a third port pair, on its own IP (side B faces the agent
//! network, the transfer leg the carrier network), in the relay's task, with the
//! [`SourceGuard`] of the transfer leg's peer; what goes into the transfer leg's offer is the
//! address it returns. A transfer destination is outside, as a carrier is: its guard is strict
//! (its SDP's IP, the IP our INVITE goes to, its OutboundTrunk's media allowlist), so a port
//! scanner cannot take the spare while it rings, nor side B once it is promoted. While the
//! spare exists, what its peer sends (RTP and RTCP, validated and latched by the rules below,
//! [`Relay::update_spare_remote`] as [`Relay::update_remote`] is for a side) goes out of side
//! B's socket of the same kind to side B's remote: the agent hears the ringback, the caller
//! never does, and nothing is sent to the spare's peer. A⇄B is unchanged and the spare never
//! counts for the media timeout. [`Relay::promote_spare`] makes the spare side B: B's old
//! sockets close and their ports go back to the pool, B's figures so far are kept as
//! [`RelayStats::replaced`], B's counters start from zero, B's guard is the spare's (the agent
//! runtime's is gone with it) and the media timeout gives B a full `media_timeout` from then.
//! B's remote is the one given, as [`Relay::update_remote`] would set it: the same address as
//! the spare's last SDP address keeps what the spare latched during early media (the peer
//! behind a NAT is reached at once, and the hijack guard stays up), another address starts
//! latching over (the answer moved the media, as a re-INVITE does). [`Relay::drop_spare`] (a
//! failed transfer) closes the spare; nothing changed for A and B.
//!
//! **Stop.** [`Relay::stop`] ends the task and returns the final stats; dropping the [`Relay`]
//! ends it too. Either way the sockets close and then the port pairs return to the pool (the
//! spare's too), also when the task panics.

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

use futures::task::AtomicWaker;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{SockAddr, SockRef};
use tokio::io::Interest;
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::ports::{PortAllocator, PortLease, PortPair, PortsError};
use super::srtp::{SrtpKeys, SrtpSide};
use super::stats::{RtpStats, StreamStats};
use crate::observe::metrics::RtpRejected;

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
    /// How long hold suspends the media timeout; `None`: as long as the hold lasts.
    pub max_hold: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            media_timeout: Duration::from_secs(30),
            clock_rate: 8000,
            latch_after: 3,
            latch_silence: Duration::from_secs(1),
            max_hold: None,
        }
    }
}

/// Who may send a side's media (see the module docs, rules 2 and 3). The SDP address of the
/// side is added by the relay itself as it learns it ([`Relay::update_remote`]).
#[derive(Clone, Debug, Default)]
pub struct SourceGuard {
    /// Only the side's own addresses may latch it, the first time too (the carrier's side).
    /// Not strict: the first valid packet from anywhere latches (the agent runtime's side).
    pub strict: bool,
    /// The IP of the side's SIP peer: where its requests come from (inbound) or where ours go
    /// (outbound).
    pub signalling: Option<IpAddr>,
    /// More addresses the side's media may come from: the trunk's media allowlist.
    pub allowed: Vec<IpNet>,
    /// Counts the packets the side refuses, by reason; `None`: counted in [`Dropped`] only.
    pub rejected: Option<RtpRejected>,
}

impl SourceGuard {
    /// Whether `ip` is one of the side's own addresses: the SDP's, the signalling peer's, or
    /// in the allowlist.
    fn admits(&self, sdp: Option<SocketAddr>, ip: IpAddr) -> bool {
        sdp.is_some_and(|a| a.ip() == ip)
            || self.signalling == Some(ip)
            || self.allowed.iter().any(|net| net.contains(&ip))
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
    /// From a source other than the latched one while it is active, or from a new source not
    /// yet confirmed (hijack guard, rule 3).
    pub foreign: u64,
    /// From a source that is none of the leg's own addresses (rules 2 and 3).
    pub not_allowed: u64,
    /// The other leg's remote is not known yet.
    pub no_destination: u64,
    /// Not RTP/RTCP version 2, too short, or longer than [`MAX_DATAGRAM`].
    pub malformed: u64,
    /// The send failed (full send buffer, unreachable address).
    pub send_failed: u64,
    /// SRTP/SRTCP from an SRTP peer that failed authentication or was a replay (or a packet
    /// our side could not encrypt toward one).
    pub auth_failed: u64,
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
    /// Side B's figures when a spare last took its place ([`Relay::promote_spare`]): the
    /// agent's, with `b` the transfer peer's from then on. `None` if never promoted.
    pub replaced: Option<LegStats>,
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
    /// The IP of a side's SIP peer changed (see [`Relay::update_signalling`]).
    Signalling(Leg, Option<IpAddr>),
    /// The SRTP keys of a side (`None`: plain RTP).
    Srtp(Leg, Option<Box<SrtpKeys>>),
    /// The spare's peer's SRTP keys (a bridged transfer to an SRTP destination).
    SpareSrtp(Option<Box<SrtpKeys>>),
    Hold(bool),
    /// A new spare with its peer's guard, replacing any other.
    AddSpare(Box<SpareSockets>, SourceGuard),
    UpdateSpareRemote(Option<SocketAddr>),
    PromoteSpare(Option<SocketAddr>),
    DropSpare,
    Stop,
}

/// The [`Relay`]'s commands to its task, in order: a queue and the task's waker. (A tokio
/// channel allocates 32 slots and its cache-padded state up front: 2-3 kB of every held call
/// for the handful of commands a call sends.)
struct Commands {
    /// `None` once the task has ended: a command sent then is dropped at once (a spare's
    /// sockets close and its ports go back).
    queue: Mutex<Option<Vec<Command>>>,
    waker: AtomicWaker,
}

impl Commands {
    fn new() -> Commands {
        Commands { queue: Mutex::new(Some(Vec::new())), waker: AtomicWaker::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Command>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, command: Command) {
        let refused = match self.lock().as_mut() {
            Some(queue) => {
                queue.push(command);
                None
            }
            None => Some(command),
        };
        // The task is gone: dropped outside the lock.
        drop(refused);
        self.waker.wake();
    }

    /// What was sent since the last call, in order. The task's waker is registered first, so
    /// a command sent meanwhile wakes it again.
    fn take(&self, cx: &Context<'_>) -> Vec<Command> {
        self.waker.register(cx.waker());
        self.lock().as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// The task's end of [`Commands`]: closes the queue when the task ends, however it ends.
struct CommandsEnd(Arc<Commands>);

impl Drop for CommandsEnd {
    fn drop(&mut self) {
        let left = self.0.lock().take();
        drop(left);
    }
}

/// The relay of one call. Dropping it stops the relay and frees its ports.
pub struct Relay {
    local: [SocketAddr; 2],
    local_rtcp: [SocketAddr; 2],
    /// The spare's RTP and RTCP addresses, while it exists.
    spare: Option<(SocketAddr, SocketAddr)>,
    /// The runtime the task runs on: the spare's sockets are registered with it.
    runtime: Handle,
    commands: Arc<Commands>,
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
        Relay::start_with(runtime, None, allocator, (ip_a, ip_b), config, Default::default())
    }

    /// [`Relay::start`] with each side's [`SourceGuard`] (`[A, B]`) in force from the first
    /// packet: a guard given later could miss what a port scanner queued meanwhile.
    pub fn start_guarded(
        allocator: &PortAllocator,
        (ip_a, ip_b): (IpAddr, IpAddr),
        config: RelayConfig,
        guards: [SourceGuard; 2],
    ) -> Result<Relay, StartError> {
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        Relay::start_with(&runtime, None, allocator, (ip_a, ip_b), config, guards)
    }

    fn start_with(
        runtime: &Handle,
        load: Option<ThreadLoad>,
        allocator: &PortAllocator,
        (ip_a, ip_b): (IpAddr, IpAddr),
        config: RelayConfig,
        [guard_a, guard_b]: [SourceGuard; 2],
    ) -> Result<Relay, StartError> {
        let pair_a = allocator.allocate(ip_a)?;
        let pair_b = allocator.allocate(ip_b)?;
        let local = [pair_a.rtp_addr(), pair_b.rtp_addr()];
        let local_rtcp = [pair_a.rtcp_addr(), pair_b.rtcp_addr()];
        let PortPair { rtp: rtp_a, rtcp: rtcp_a, lease: lease_a, .. } = pair_a;
        let PortPair { rtp: rtp_b, rtcp: rtcp_b, lease: lease_b, .. } = pair_b;
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

        let commands = Arc::new(Commands::new());
        let (timeout_tx, timeout) = watch::channel(None);
        let now = Instant::now();
        let shared = Arc::new(Shared::new(now));
        let task = Task {
            sockets,
            ipv6,
            leases: [lease_a, lease_b],
            _load: load,
            commands: CommandsEnd(Arc::clone(&commands)),
            // Created on the relay's runtime, so its own timer drives it (and no runtime is
            // needed by the caller).
            sleep: {
                let _entered = runtime.enter();
                Box::pin(tokio::time::sleep_until((now + config.media_timeout).into()))
            },
            spare: None,
            state: State {
                config,
                legs: [LegState::guarded(guard_a), LegState::guarded(guard_b)],
                spare: None,
                replaced: None,
                hold: None,
                reported: false,
                shared: Arc::clone(&shared),
                timeout: timeout_tx,
            },
        };
        let task = runtime.spawn(task.run());
        Ok(Relay {
            local,
            local_rtcp,
            spare: None,
            runtime: runtime.clone(),
            commands,
            timeout,
            shared,
            task: Some(task),
        })
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
        // The task only ends when stopped: after that a command is dropped, nothing to update.
        self.commands.send(Command::UpdateRemote(leg, remote));
    }

    /// `leg`'s SIP peer is now at `ip` (a carrier leg that failed over to another host before
    /// its answer): its guard admits media from there instead of the first host's
    /// ([`SourceGuard::signalling`]).
    pub fn update_signalling(&self, leg: Leg, ip: Option<IpAddr>) {
        self.commands.send(Command::Signalling(leg, ip));
    }

    /// The SRTP keys of `leg`'s peer and ours toward it (`None`: plain RTP, the default). The
    /// relay decrypts what that peer sends (dropping and counting what fails authentication
    /// or is replayed, `Dropped::auth_failed`) and encrypts what goes to it. The same keys
    /// again keep the contexts; a new key of either direction starts that direction over.
    pub fn set_srtp(&self, leg: Leg, keys: Option<SrtpKeys>) {
        self.commands.send(Command::Srtp(leg, keys.map(Box::new)));
    }

    /// As [`Relay::set_srtp`], for the spare's peer (a transfer destination that speaks SRTP):
    /// its early media is decrypted on the way to side B, and the keys go with the spare when
    /// it becomes side B. Nothing without a spare.
    pub fn set_spare_srtp(&self, keys: Option<SrtpKeys>) {
        if self.spare.is_some() {
            self.commands.send(Command::SpareSrtp(keys.map(Box::new)));
        }
    }

    /// On hold the peers may stop sending: the media timeout is suspended until resumed.
    pub fn set_hold(&self, hold: bool) {
        self.commands.send(Command::Hold(hold));
    }

    /// Binds a spare port pair on `ip` (from `allocator`) in this relay's task, whose peer any
    /// first valid packet latches; see [`Relay::add_spare_guarded`].
    pub fn add_spare(
        &mut self,
        allocator: &PortAllocator,
        ip: IpAddr,
    ) -> Result<SocketAddr, StartError> {
        self.add_spare_guarded(allocator, ip, SourceGuard::default())
    }

    /// Binds a spare port pair on `ip` (from `allocator`) in this relay's task, `guard` in
    /// force from its first packet (and on side B once promoted); returns our RTP address on it
    /// (what the transfer leg's SDP offer announces). A spare already there is dropped first,
    /// so after an error there is none. Errors as [`Relay::start`] (no ports, bind failure); A
    /// and B are unaffected either way. See the module docs.
    pub fn add_spare_guarded(
        &mut self,
        allocator: &PortAllocator,
        ip: IpAddr,
        guard: SourceGuard,
    ) -> Result<SocketAddr, StartError> {
        self.drop_spare();
        let pair = allocator.allocate(ip)?;
        let (local, local_rtcp) = (pair.rtp_addr(), pair.rtcp_addr());
        let PortPair { rtp, rtcp, lease, .. } = pair;
        let sockets = {
            // Registered with the relay's own runtime (a media thread, maybe not the caller's).
            let _entered = self.runtime.enter();
            [register(rtp)?, register(rtcp)?]
        };
        let spare = SpareSockets { sockets, ipv6: [local.is_ipv6(), local_rtcp.is_ipv6()], lease };
        // A task that is gone (it only ends when stopped) drops the sockets and frees the pair.
        self.commands.send(Command::AddSpare(Box::new(spare), guard));
        self.spare = Some((local, local_rtcp));
        Ok(local)
    }

    /// The RTP address in the SDP of the spare's peer (a 183 or 200 answer; `None` for
    /// `0.0.0.0`), as [`Relay::update_remote`] is for a side. Nothing without a spare.
    pub fn update_spare_remote(&self, remote: Option<SocketAddr>) {
        if self.spare.is_some() {
            self.commands.send(Command::UpdateSpareRemote(remote));
        }
    }

    /// The spare becomes side B, its remote `remote` (see the module docs for the latch): B's
    /// old sockets close and their ports go back to the pool; `local(Leg::B)` and
    /// `local_rtcp(Leg::B)` are the spare's from now on; B's figures so far go to
    /// [`RelayStats::replaced`] and its counters start from zero; B's guard is the spare's; the
    /// media timeout gives B a full `media_timeout` from now. Without a spare it does nothing
    /// and returns false.
    pub fn promote_spare(&mut self, remote: Option<SocketAddr>) -> bool {
        let Some((local, local_rtcp)) = self.spare.take() else { return false };
        self.local[Leg::B.index()] = local;
        self.local_rtcp[Leg::B.index()] = local_rtcp;
        self.commands.send(Command::PromoteSpare(remote));
        true
    }

    /// The spare is not wanted (the transfer failed): its sockets close and its ports go back
    /// to the pool as soon as the task sees the command. Nothing without a spare.
    pub fn drop_spare(&mut self) {
        if self.spare.take().is_some() {
            self.commands.send(Command::DropSpare);
        }
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
        self.commands.send(Command::Stop);
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
        self.start_relay_guarded(allocator, (ip_a, ip_b), config, Default::default())
    }

    /// [`MediaThreads::start_relay`] with each side's guard, as [`Relay::start_guarded`].
    pub fn start_relay_guarded(
        &self,
        allocator: &PortAllocator,
        ips: (IpAddr, IpAddr),
        config: RelayConfig,
        guards: [SourceGuard; 2],
    ) -> Result<Relay, StartError> {
        let thread = self.pick();
        thread.calls.fetch_add(1, Ordering::Relaxed);
        let load = ThreadLoad(Arc::clone(&thread.calls));
        Relay::start_with(&thread.handle, Some(load), allocator, ips, config, guards)
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

/// Registers a (non-blocking) socket with the runtime entered by the caller.
fn register(socket: UdpSocket) -> Result<TokioUdpSocket, StartError> {
    TokioUdpSocket::from_std(socket).map_err(StartError::Register)
}

/// The task that owns the sockets. Fields drop in order: sockets, then the port leases (the
/// spare's the same way, within [`SpareSockets`]).
struct Task {
    sockets: [TokioUdpSocket; 4],
    /// Whether each socket is IPv6 (which `recvmmsg` headers to use).
    ipv6: [bool; 4],
    leases: [PortLease; 2],
    spare: Option<SpareSockets>,
    /// This relay counted on its media thread, until the task ends.
    _load: Option<ThreadLoad>,
    commands: CommandsEnd,
    sleep: Pin<Box<Sleep>>,
    state: State,
}

impl Task {
    /// The relay's task: a held call's media for its whole life, so its future is kept to the
    /// task's own state, once (an `async fn` would keep `self` twice: the argument and its
    /// moved copy). `relay_task_future_stays_small` guards the size.
    fn run(self) -> impl Future<Output = RelayStats> + Send + 'static {
        let mut task = self;
        async move {
            poll_fn(|cx| task.poll(cx)).await;
            let stats = task.state.stats();
            let Task { sockets, leases, spare, .. } = task;
            drop(sockets);
            drop(leases);
            drop(spare);
            stats
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for command in self.commands.0.take(cx) {
            match command {
                Command::Stop => return Poll::Ready(()),
                command => self.apply(command, Instant::now()),
            }
        }
        let now = Instant::now();
        let Task { sockets, ipv6, spare, state, .. } = self;
        for (index, &(leg, kind)) in SOCKETS.iter().enumerate() {
            let out = &sockets[socket_index(leg.other(), kind)];
            drain(cx, &sockets[index], ipv6[index], out, Origin::Leg(leg), kind, state, now);
        }
        if let Some(spare) = spare {
            // What the transfer peer sends goes to side B's peer (the agent hears ringback).
            for (index, kind) in [Kind::Rtp, Kind::Rtcp].into_iter().enumerate() {
                let out = &sockets[socket_index(Leg::B, kind)];
                let socket = &spare.sockets[index];
                drain(cx, socket, spare.ipv6[index], out, Origin::Spare, kind, state, now);
            }
        }
        self.poll_timer(cx);
        Poll::Pending
    }

    /// Commands that change the sockets are the task's; the others the state's.
    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::AddSpare(spare, guard) => {
                // Replaces (closes) any spare there was.
                self.spare = Some(*spare);
                self.state.spare = Some(Box::new(LegState::guarded(guard)));
            }
            Command::DropSpare => {
                self.spare = None;
                self.state.spare = None;
            }
            Command::PromoteSpare(remote) => {
                let Some(SpareSockets { sockets: [rtp, rtcp], ipv6, lease }) = self.spare.take()
                else {
                    return;
                };
                // B's old sockets close, then their pair goes back to the pool.
                let b = Leg::B.index() * 2;
                self.sockets[b] = rtp;
                self.sockets[b + 1] = rtcp;
                self.ipv6[b..b + 2].copy_from_slice(&ipv6);
                self.leases[Leg::B.index()] = lease;
                self.state.promote_spare(remote, now);
            }
            command => self.state.apply(command, now),
        }
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

/// Reads what is queued on `socket` (up to [`MAX_READS_PER_WAKE`] batches) and relays it out
/// of `out`; registers the task's waker for the next datagram.
#[allow(clippy::too_many_arguments)]
fn drain(
    cx: &mut Context<'_>,
    socket: &TokioUdpSocket,
    ipv6: bool,
    out: &TokioUdpSocket,
    origin: Origin,
    kind: Kind,
    state: &mut State,
    now: Instant,
) {
    for read in 1.. {
        // Ready, or Pending with the task's waker registered for the next datagram.
        match socket.poll_recv_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(err)) => {
                tracing::warn!(error = %err, leg = origin.as_str(), "RTP socket failed");
                break;
            }
            Poll::Pending => break,
        }
        if read > MAX_READS_PER_WAKE {
            // More keeps coming: let other tasks run, then come back.
            cx.waker().wake_by_ref();
            break;
        }
        // A batch shorter than asked observed an empty queue: it is reported to tokio as
        // `WouldBlock`, which clears the readiness unless a new readiness event came in
        // meanwhile; the next poll_recv_ready then registers the waker (or says ready again if
        // a datagram arrived since).
        let _ = socket.try_io(Interest::READABLE, || {
            match state.relay_batch(socket, ipv6, out, origin, kind, now) {
                Batch::Full => Ok(()),
                Batch::Drained => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
    }
}

/// The spare's sockets (RTP, RTCP) and its place in the pool. Fields drop in order: the sockets
/// close before the pair is free again.
struct SpareSockets {
    sockets: [TokioUdpSocket; 2],
    ipv6: [bool; 2],
    lease: PortLease,
}

/// Where a batch was read: a side's socket or the spare's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Leg(Leg),
    Spare,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Leg(leg) => leg.as_str(),
            Origin::Spare => "transfer",
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

/// What the latch rule says of one packet (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Relayed (and latched, if it was not).
    Accept,
    /// From none of the leg's own addresses: dropped whatever the latch's state.
    NotAllowed,
    /// The leg is latched to another source that is still active, or the new source has not
    /// yet sent `latch_after` packets in a row: dropped.
    Latched,
}

/// The latch of one leg's RTP or RTCP.
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    remote: Option<SocketAddr>,
    latched: bool,
    last_seen: Option<Instant>,
    /// The SSRC the latched source sends (the last one seen from it).
    ssrc: Option<u32>,
    candidate: Option<SocketAddr>,
    candidate_packets: u32,
}

impl Latch {
    fn new(remote: Option<SocketAddr>) -> Latch {
        Latch { remote, ..Latch::default() }
    }

    /// Whether `source` is the latched source ([`Latch::accept`] takes it whatever `own` says).
    fn is_latched_to(&self, source: SocketAddr) -> bool {
        self.latched && self.remote == Some(source)
    }

    /// Whether a packet from `source` carrying `ssrc` is relayed. `own`: the source is one of
    /// the leg's own addresses ([`SourceGuard`]); `strict`: only those may latch at all. Pure:
    /// the rules of the module docs, 2 and 3.
    fn accept(
        &mut self,
        source: SocketAddr,
        ssrc: Option<u32>,
        now: Instant,
        config: &RelayConfig,
        own: bool,
        strict: bool,
    ) -> Verdict {
        if self.is_latched_to(source) {
            self.last_seen = Some(now);
            self.candidate = None;
            self.ssrc = ssrc.or(self.ssrc);
            return Verdict::Accept;
        }
        if self.latched {
            let silent = self
                .last_seen
                .is_none_or(|seen| now.saturating_duration_since(seen) > config.latch_silence);
            if !silent {
                self.candidate = None;
                return Verdict::Latched;
            }
            let same_stream = ssrc.is_some() && ssrc == self.ssrc;
            if !own && !same_stream {
                // Leaves a candidate's count alone: spraying cannot delay a real take-over.
                return Verdict::NotAllowed;
            }
            if self.candidate == Some(source) {
                self.candidate_packets += 1;
            } else {
                self.candidate = Some(source);
                self.candidate_packets = 1;
            }
            if self.candidate_packets < config.latch_after {
                return Verdict::Latched;
            }
        } else if strict && !own {
            return Verdict::NotAllowed;
        }
        *self = Latch {
            remote: Some(source),
            latched: true,
            last_seen: Some(now),
            ssrc,
            candidate: None,
            candidate_packets: 0,
        };
        Verdict::Accept
    }
}

struct LegState {
    /// Who may send this leg's media besides its SDP address.
    guard: SourceGuard,
    rtp: Latch,
    rtcp: Latch,
    /// The SDP address last given.
    sdp: Option<SocketAddr>,
    /// Since when this leg is expected to send RTP, updated by each RTP packet (None: not yet).
    active: Option<Instant>,
    rtp_in: RtpStats,
    /// Only RTP in has sequence numbers and jitter to follow; the other three count datagrams.
    rtp_out: Datagrams,
    rtcp_in: Datagrams,
    rtcp_out: Datagrams,
    dropped: Dropped,
    /// SRTP toward this leg's peer (boxed: a plain leg pays one pointer).
    srtp: Option<Box<SrtpSide>>,
}

impl LegState {
    fn guarded(guard: SourceGuard) -> LegState {
        LegState {
            guard,
            rtp: Latch::default(),
            rtcp: Latch::default(),
            sdp: None,
            active: None,
            rtp_in: RtpStats::new(),
            rtp_out: Datagrams::default(),
            rtcp_in: Datagrams::default(),
            rtcp_out: Datagrams::default(),
            dropped: Dropped::default(),
            srtp: None,
        }
    }

    /// New SRTP keys for this leg (see [`Relay::set_srtp`]).
    fn set_srtp(&mut self, keys: Option<Box<SrtpKeys>>) {
        match (keys, &mut self.srtp) {
            (None, srtp) => *srtp = None,
            (Some(keys), Some(side)) => {
                if side.rekey(*keys).is_err() {
                    self.srtp = None;
                }
            }
            (Some(keys), srtp @ None) => *srtp = SrtpSide::new(*keys).ok().map(Box::new),
        }
    }

    /// The SDP address of this leg's peer (see the module docs, latching rule 4); whether it
    /// changed anything.
    fn set_sdp(&mut self, remote: Option<SocketAddr>, now: Instant) -> bool {
        if self.sdp == remote {
            return false;
        }
        self.sdp = remote;
        self.rtp = Latch::new(remote);
        self.rtcp = Latch::new(remote.map(rtcp_of));
        self.active = remote.map(|_| now);
        true
    }

    fn stats(&self) -> LegStats {
        LegStats {
            remote: self.rtp.remote,
            rtp_in: self.rtp_in.snapshot(),
            rtp_out: self.rtp_out.snapshot(),
            rtcp_in: self.rtcp_in.snapshot(),
            rtcp_out: self.rtcp_out.snapshot(),
            dropped: self.dropped,
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

/// Datagrams of a direction for which only the size matters (RTCP, or what the relay sent on):
/// what [`RtpStats::on_datagram`] counts, in a third of its size (each held call's task has six).
#[derive(Clone, Copy, Debug, Default)]
struct Datagrams {
    packets: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Datagrams {
    fn on_datagram(&mut self, now: Instant, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// As [`RtpStats::snapshot`] of the same datagrams: no sequence, no loss, no jitter.
    fn snapshot(&self) -> StreamStats {
        StreamStats {
            packets: self.packets,
            bytes: self.bytes,
            first: self.first,
            last: self.last,
            ..StreamStats::default()
        }
    }
}

struct State {
    config: RelayConfig,
    legs: [LegState; 2],
    /// The spare's peer, while a spare exists: latches, what it sent (`active` unused: the
    /// spare never counts for the media timeout).
    /// Boxed, as `replaced`: only calls being transferred have them, and every held call's
    /// task would be as large.
    spare: Option<Box<LegState>>,
    /// Side B's figures at the last promotion.
    replaced: Option<Box<LegStats>>,
    /// On hold since then (the first hold of a continuous one: a hold re-INVITE during the
    /// hold does not start it again).
    hold: Option<Instant>,
    /// The timeout has been reported (it is reported once).
    reported: bool,
    shared: Arc<Shared>,
    timeout: watch::Sender<Option<MediaTimeout>>,
}

impl State {
    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::UpdateRemote(leg, remote) => {
                if self.legs[leg.index()].set_sdp(remote, now) {
                    self.shared.set_remote(leg, remote);
                }
            }
            Command::Srtp(leg, keys) => self.legs[leg.index()].set_srtp(keys),
            Command::SpareSrtp(keys) => {
                if let Some(spare) = &mut self.spare {
                    spare.set_srtp(keys);
                }
            }
            Command::Signalling(leg, ip) => self.legs[leg.index()].guard.signalling = ip,
            Command::UpdateSpareRemote(remote) => {
                if let Some(spare) = &mut self.spare {
                    spare.set_sdp(remote, now);
                }
            }
            Command::Hold(hold) => {
                if self.hold.is_some() && !hold {
                    for state in &mut self.legs {
                        state.active = state.active.map(|_| now);
                    }
                }
                self.hold = match (hold, self.hold) {
                    (true, Some(since)) => Some(since),
                    (true, None) => Some(now),
                    (false, _) => None,
                };
            }
            // The task's own (they change its sockets).
            Command::AddSpare(..) | Command::PromoteSpare(_) | Command::DropSpare => {}
            Command::Stop => {}
        }
    }

    /// The spare's peer becomes side B's (the task has swapped the sockets): B's figures so far
    /// are kept as `replaced`, its counters start from zero, its guard is the spare's, its
    /// remote is `remote` (the spare's latch kept when that is the spare's SDP address
    /// already), and it gets a full media timeout from `now`.
    fn promote_spare(&mut self, remote: Option<SocketAddr>, now: Instant) {
        let Some(spare) = self.spare.take() else { return };
        let spare = *spare;
        let b = &mut self.legs[Leg::B.index()];
        self.replaced = Some(Box::new(b.stats()));
        // The agent runtime's guard (its signalling address, its counters) goes with it: side
        // B faces the transfer peer, whose own addresses alone may latch it from now on.
        *b = LegState {
            sdp: spare.sdp,
            rtp: spare.rtp,
            rtcp: spare.rtcp,
            srtp: spare.srtp,
            ..LegState::guarded(spare.guard)
        };
        b.set_sdp(remote, now);
        b.active = (b.sdp.is_some() || b.rtp.latched).then_some(now);
        self.shared.replace(Leg::B, b, self.replaced.as_deref().copied());
    }

    /// Reads one batch from `socket` (`kind`, of a side or the spare) and relays what may pass
    /// out of `out`: a side's to the other side, the spare's to side B.
    fn relay_batch(
        &mut self,
        socket: &TokioUdpSocket,
        ipv6: bool,
        out: &TokioUdpSocket,
        origin: Origin,
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
                    tracing::debug!(error = %err, leg = origin.as_str(), "RTP receive failed");
                    return Batch::Drained;
                }
            };
            let State { config, legs: [a, b], spare, shared, .. } = self;
            let config = *config;
            let (from, to) = match origin {
                Origin::Leg(Leg::A) => (a, b),
                Origin::Leg(Leg::B) => (b, a),
                Origin::Spare => match spare {
                    Some(spare) => (&mut **spare, b),
                    // The spare's sockets and state come and go together.
                    None => return Batch::Drained,
                },
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
                // An SRTP peer's packet authenticates before anything else: a forged or
                // replayed one latches nothing and is counted.
                let decrypted = match &mut from.srtp {
                    None => None,
                    Some(srtp) => match srtp.unprotect(datagram) {
                        Ok(plain) => Some(plain),
                        Err(_) => {
                            from.dropped.auth_failed += 1;
                            if let Some(counters) = &from.guard.rejected {
                                counters.unauthenticated.inc();
                            }
                            continue;
                        }
                    },
                };
                let datagram = decrypted.as_deref().unwrap_or(datagram);
                // The latched source's packets (nearly all of them) skip the address checks.
                let latched_source = from.latch(kind).is_latched_to(source);
                let own = !latched_source && from.guard.admits(from.sdp, source.ip());
                let strict = from.guard.strict;
                let latch = from.latch_mut(kind);
                let was = latch.remote;
                match latch.accept(source, ssrc_of(datagram, kind), now, &config, own, strict) {
                    Verdict::Accept => {}
                    Verdict::NotAllowed => {
                        from.dropped.not_allowed += 1;
                        if let Some(counters) = &from.guard.rejected {
                            counters.not_allowed.inc();
                        }
                        continue;
                    }
                    Verdict::Latched => {
                        from.dropped.foreign += 1;
                        if let Some(counters) = &from.guard.rejected {
                            counters.latched.inc();
                        }
                        continue;
                    }
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
                let encrypted = match &mut to.srtp {
                    None => None,
                    Some(srtp) => match srtp.protect(datagram) {
                        Ok(protected) => Some(protected),
                        Err(_) => {
                            from.dropped.auth_failed += 1;
                            continue;
                        }
                    },
                };
                let datagram = encrypted.as_deref().unwrap_or(datagram);
                match out.send_to(datagram, destination) {
                    Ok(_) => match kind {
                        Kind::Rtp => to.rtp_out.on_datagram(now, len),
                        Kind::Rtcp => to.rtcp_out.on_datagram(now, len),
                    },
                    Err(_) => from.dropped.send_failed += 1,
                }
            }
            match origin {
                Origin::Leg(leg) => {
                    if latched && kind == Kind::Rtp {
                        shared.set_remote(leg, from.rtp.remote);
                    }
                    shared.publish_in(leg, from, kind);
                    shared.publish_out(leg.other(), to, kind);
                }
                // The spare's own figures are not published; what it sent to B's peer is.
                Origin::Spare => shared.publish_out(Leg::B, to, kind),
            }
            if received == BATCH { Batch::Full } else { Batch::Drained }
        });
        // No buffers only while the thread exits.
        relayed.unwrap_or(Batch::Drained)
    }

    /// `Ok` when a leg expected to send has been silent for the timeout; else when to look
    /// again.
    fn check_timeout(&self, now: Instant) -> Result<MediaTimeout, Instant> {
        let timeout = self.config.media_timeout;
        // Media is owed from here on: the start, or the end of the longest hold allowed.
        let mut owed_from = None;
        if let Some(held) = self.hold {
            match self.config.max_hold.map(|max| held + max) {
                Some(end) if now >= end => owed_from = Some(end),
                Some(end) => return Err(end.min(now + timeout)),
                None => return Err(now + timeout),
            }
        }
        let active =
            |leg: Leg| self.legs[leg.index()].active.map(|a| a.max(owed_from.unwrap_or(a)));
        let silent = |leg: Leg| {
            active(leg).is_some_and(|since| now.saturating_duration_since(since) >= timeout)
        };
        let silent = match (silent(Leg::A), silent(Leg::B)) {
            (true, true) => Silent::Both,
            (true, false) => Silent::One(Leg::A),
            (false, true) => Silent::One(Leg::B),
            (false, false) => {
                // Not silent: each expected leg's deadline is after now.
                let next = [Leg::A, Leg::B].into_iter().filter_map(active).min();
                return Err(next.unwrap_or(now) + timeout);
            }
        };
        Ok(MediaTimeout { silent, after: timeout })
    }

    fn stats(&self) -> RelayStats {
        let replaced = self.replaced.as_deref().copied();
        RelayStats { a: self.legs[0].stats(), b: self.legs[1].stats(), replaced }
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

/// The sender's SSRC of a valid datagram: RTP's at bytes 8-11 (RFC 3550 §5.1), RTCP's (also
/// muxed on the RTP port) at bytes 4-7 (§6.4).
fn ssrc_of(datagram: &[u8], kind: Kind) -> Option<u32> {
    let at = if kind == Kind::Rtp && !is_muxed_rtcp(datagram) { 8 } else { 4 };
    let bytes = datagram.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
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
    /// Changes only when a spare is promoted. Boxed: only transfers have it.
    replaced: Mutex<Option<Box<LegStats>>>,
}

#[derive(Default)]
struct SharedLeg {
    rtp_in: SharedStream,
    rtp_out: SharedStream,
    rtcp_in: SharedStream,
    rtcp_out: SharedStream,
    dropped: [AtomicU64; 6],
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
        Shared {
            base,
            legs: Default::default(),
            remotes: Mutex::new([None; 2]),
            replaced: Mutex::new(None),
        }
    }

    /// After a batch from `leg`: what it sent in and the drops.
    fn publish_in(&self, leg: Leg, from: &LegState, kind: Kind) {
        let shared = &self.legs[leg.index()];
        if kind == Kind::Rtp {
            shared.rtp_in.store(&from.rtp_in.snapshot(), self.base);
        }
        // RTCP, or muxed RTCP on the RTP port.
        shared.rtcp_in.store(&from.rtcp_in.snapshot(), self.base);
        let d = from.dropped;
        for (cell, value) in shared.dropped.iter().zip([
            d.foreign,
            d.not_allowed,
            d.no_destination,
            d.malformed,
            d.send_failed,
            d.auth_failed,
        ]) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    /// After a batch relayed to `leg`: what went out to it.
    fn publish_out(&self, leg: Leg, to: &LegState, kind: Kind) {
        let shared = &self.legs[leg.index()];
        match kind {
            Kind::Rtp => shared.rtp_out.store(&to.rtp_out.snapshot(), self.base),
            Kind::Rtcp => shared.rtcp_out.store(&to.rtcp_out.snapshot(), self.base),
        }
    }

    /// A spare took `leg`'s place: its figures start again from `state`'s, and the old ones
    /// are `replaced`.
    fn replace(&self, leg: Leg, state: &LegState, replaced: Option<LegStats>) {
        *self.replaced.lock().unwrap_or_else(PoisonError::into_inner) = replaced.map(Box::new);
        self.publish_in(leg, state, Kind::Rtp);
        self.publish_out(leg, state, Kind::Rtp);
        self.publish_out(leg, state, Kind::Rtcp);
        self.set_remote(leg, state.rtp.remote);
    }

    fn set_remote(&self, leg: Leg, remote: Option<SocketAddr>) {
        self.remotes.lock().unwrap_or_else(PoisonError::into_inner)[leg.index()] = remote;
    }

    fn load(&self) -> RelayStats {
        let remotes = *self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stats = RelayStats {
            replaced: self
                .replaced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_deref()
                .copied(),
            ..RelayStats::default()
        };
        for leg in [Leg::A, Leg::B] {
            let shared = &self.legs[leg.index()];
            let [foreign, not_allowed, no_destination, malformed, send_failed, auth_failed] =
                shared.dropped.each_ref().map(|cell| cell.load(Ordering::Relaxed));
            *stats.leg_mut(leg) = LegStats {
                remote: remotes[leg.index()],
                rtp_in: shared.rtp_in.load(self.base),
                rtp_out: shared.rtp_out.load(self.base),
                rtcp_in: shared.rtcp_in.load(self.base),
                rtcp_out: shared.rtcp_out.load(self.base),
                dropped: Dropped {
                    foreign,
                    not_allowed,
                    no_destination,
                    malformed,
                    send_failed,
                    auth_failed,
                },
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

    /// The latch rule alone: a packet from `source` (port of 127.0.0.1, or of `ip`) with `ssrc`.
    fn from(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    const CARRIER: [u8; 4] = [127, 0, 0, 1];
    const STRANGER: [u8; 4] = [127, 0, 0, 2];

    #[test]
    fn a_strict_latch_is_taken_first_only_by_one_of_the_legs_own_addresses() {
        let config = RelayConfig::default();
        let now = Instant::now();
        let mut latch = Latch::new(Some(from(CARRIER, 4000)));
        let stranger = from(STRANGER, 4000);
        for _ in 0..10 {
            let verdict = latch.accept(stranger, Some(7), now, &config, false, true);
            assert_eq!(verdict, Verdict::NotAllowed);
        }
        assert!(!latch.latched);
        assert_eq!(latch.remote, Some(from(CARRIER, 4000)), "replies still go to the SDP address");
        // The carrier behind a NAT: its address, another port.
        let natted = from(CARRIER, 31_337);
        assert_eq!(latch.accept(natted, Some(1), now, &config, true, true), Verdict::Accept);
        assert_eq!((latch.remote, latch.latched), (Some(natted), true));
    }

    #[test]
    fn a_latch_that_is_not_strict_is_taken_by_the_first_valid_packet_from_anywhere() {
        let config = RelayConfig::default();
        let mut latch = Latch::new(None);
        let anywhere = from(STRANGER, 9);
        assert_eq!(
            latch.accept(anywhere, Some(1), Instant::now(), &config, false, false),
            Verdict::Accept
        );
        assert_eq!(latch.remote, Some(anywhere));
    }

    #[test]
    fn while_the_latched_source_is_active_no_other_source_is_relayed_own_or_same_ssrc() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let (carrier, other_port) = (from(CARRIER, 4000), from(CARRIER, 4002));
        let mut latch = Latch::new(Some(carrier));
        assert_eq!(latch.accept(carrier, Some(1), t0, &config, true, true), Verdict::Accept);
        let soon = t0 + config.latch_silence / 2;
        for _ in 0..5 {
            assert_eq!(
                latch.accept(other_port, Some(1), soon, &config, true, true),
                Verdict::Latched
            );
        }
        assert_eq!(latch.remote, Some(carrier));
    }

    #[test]
    fn after_the_latched_source_goes_silent_a_stranger_with_another_ssrc_never_takes_over() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let carrier = from(CARRIER, 4000);
        let mut latch = Latch::new(Some(carrier));
        latch.accept(carrier, Some(1), t0, &config, true, true);
        let later = t0 + config.latch_silence * 10;
        for _ in 0..20 {
            let verdict =
                latch.accept(from(STRANGER, 4000), Some(666), later, &config, false, true);
            assert_eq!(verdict, Verdict::NotAllowed);
        }
        assert_eq!(latch.remote, Some(carrier));
        // Not strict (the agent's side) it is the same: after latching, a stranger needs the
        // stream's SSRC.
        let mut agent = Latch::new(None);
        agent.accept(from(CARRIER, 5000), Some(1), t0, &config, false, false);
        for _ in 0..20 {
            let verdict =
                agent.accept(from(STRANGER, 4000), Some(666), later, &config, false, false);
            assert_eq!(verdict, Verdict::NotAllowed);
        }
    }

    #[test]
    fn after_silence_the_same_ssrc_from_a_new_address_takes_over_on_its_third_packet() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let mut latch = Latch::new(Some(from(CARRIER, 4000)));
        latch.accept(from(CARRIER, 4000), Some(0xfeed), t0, &config, true, true);
        // The carrier's media server failed over to a host outside its addresses, same stream.
        let moved = from(STRANGER, 6000);
        let later = t0 + config.latch_silence * 2;
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| latch.accept(moved, Some(0xfeed), later, &config, false, true))
            .collect();
        assert_eq!(verdicts, [Verdict::Latched, Verdict::Latched, Verdict::Accept]);
        assert_eq!(latch.remote, Some(moved));
    }

    #[test]
    fn after_silence_one_of_the_legs_own_addresses_takes_over_with_a_new_ssrc() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let mut latch = Latch::new(Some(from(CARRIER, 4000)));
        latch.accept(from(CARRIER, 4000), Some(1), t0, &config, true, true);
        let rebound = from(CARRIER, 4100);
        let later = t0 + config.latch_silence * 2;
        for _ in 0..2 {
            assert_eq!(
                latch.accept(rebound, Some(2), later, &config, true, true),
                Verdict::Latched
            );
        }
        assert_eq!(latch.accept(rebound, Some(2), later, &config, true, true), Verdict::Accept);
        assert_eq!((latch.remote, latch.ssrc), (Some(rebound), Some(2)));
    }

    #[test]
    fn a_strangers_spray_does_not_reset_a_rightful_take_over() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let mut latch = Latch::new(Some(from(CARRIER, 4000)));
        latch.accept(from(CARRIER, 4000), Some(1), t0, &config, true, true);
        let (rebound, stranger) = (from(CARRIER, 4100), from(STRANGER, 4100));
        let later = t0 + config.latch_silence * 2;
        let mut verdicts = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                latch.accept(stranger, Some(9), later, &config, false, true),
                Verdict::NotAllowed
            );
            verdicts.push(latch.accept(rebound, Some(1), later, &config, true, true));
        }
        assert_eq!(verdicts, [Verdict::Latched, Verdict::Latched, Verdict::Accept]);
        assert_eq!(latch.remote, Some(rebound));
    }

    #[test]
    fn the_ssrc_is_read_from_rtp_and_from_rtcp_muxed_or_not() {
        assert_eq!(ssrc_of(&rtp(1, 0), Kind::Rtp), Some(0x1234_5678));
        assert_eq!(ssrc_of(&rtcp(), Kind::Rtp), Some(0xdead_beef), "muxed RTCP");
        assert_eq!(ssrc_of(&rtcp(), Kind::Rtcp), Some(0xdead_beef));
        assert_eq!(ssrc_of(&[0x80, 0, 0], Kind::Rtcp), None);
    }

    const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const MEDIA_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    async fn peer_on(ip: IpAddr) -> TokioUdpSocket {
        TokioUdpSocket::bind((ip, 0)).await.expect("bind a peer on 127/8")
    }

    /// A relay whose side A is the carrier's (strict, its SIP from 127.0.0.1, `allowed` more),
    /// counting what it refuses in `counters`.
    fn start_carrier_guarded(
        pool: &PortAllocator,
        allowed: &[&str],
        counters: &RtpRejected,
    ) -> Relay {
        let guard = SourceGuard {
            strict: true,
            signalling: Some(LOCALHOST),
            allowed: allowed.iter().map(|n| n.parse().expect("a CIDR")).collect(),
            rejected: Some(counters.clone()),
        };
        Relay::start_guarded(
            pool,
            (LOCALHOST, LOCALHOST),
            RelayConfig::default(),
            [guard, SourceGuard::default()],
        )
        .expect("relay starts")
    }

    #[tokio::test]
    async fn an_attacker_on_another_address_is_never_relayed_before_or_after_the_carrier() {
        let pool = test_pool(5);
        let counters = RtpRejected::unregistered();
        let relay = start_carrier_guarded(&pool, &[], &counters);
        let (carrier, agent, attacker) = (peer().await, peer().await, peer_on(ATTACKER_IP).await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));

        // Before the carrier sends: the attacker's packets go nowhere and take nothing.
        for seq in 0..5 {
            send(&attacker, &rtp(seq, 0), relay.local(Leg::A)).await;
        }
        nothing_arrives(&agent).await;
        send(&agent, &rtp(100, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(100, 0), "the agent is heard by the carrier");
        nothing_arrives(&attacker).await;

        // The carrier talks; the attacker keeps trying, with the carrier's own SSRC too.
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(1, 0));
        send(&attacker, &rtp(2, 160), relay.local(Leg::A)).await;
        nothing_arrives(&agent).await;
        let stats =
            eventually(&relay, |s| s.a.dropped.not_allowed + s.a.dropped.foreign == 6).await;
        assert_eq!(stats.a.remote, Some(addr(&carrier)));
        assert_eq!(stats.a.rtp_in.packets, 1);
        assert_eq!(counters.not_allowed.get() + counters.latched.get(), 6);
        assert_eq!(counters.not_allowed.get(), 5, "before latching: not one of the carrier's");
    }

    #[tokio::test]
    async fn a_silent_carrier_cannot_be_taken_over_by_an_address_of_another_ssrc() {
        let pool = test_pool(5);
        let counters = RtpRejected::unregistered();
        let guard = SourceGuard {
            strict: true,
            signalling: Some(LOCALHOST),
            allowed: Vec::new(),
            rejected: Some(counters.clone()),
        };
        let config =
            RelayConfig { latch_silence: Duration::from_millis(100), ..Default::default() };
        let relay = Relay::start_guarded(
            &pool,
            (LOCALHOST, LOCALHOST),
            config,
            [guard, SourceGuard::default()],
        )
        .expect("relay starts");
        let (carrier, agent, attacker) = (peer().await, peer().await, peer_on(ATTACKER_IP).await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        receive(&agent).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut other = rtp(50, 0);
        other[8..12].copy_from_slice(&0x0bad_f00du32.to_be_bytes());
        for _ in 0..10 {
            send(&attacker, &other, relay.local(Leg::A)).await;
        }
        nothing_arrives(&agent).await;
        send(&agent, &rtp(200, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(200, 0), "the agent still talks to the carrier");
        nothing_arrives(&attacker).await;
        eventually(&relay, |s| s.a.dropped.not_allowed == 10).await;
        assert_eq!(counters.not_allowed.get(), 10);
    }

    #[tokio::test]
    async fn media_from_a_host_on_the_trunks_media_allowlist_latches_the_carriers_side() {
        let pool = test_pool(5);
        let counters = RtpRejected::unregistered();
        let relay = start_carrier_guarded(&pool, &["127.0.0.3/32"], &counters);
        let (agent, media_host, attacker) =
            (peer().await, peer_on(MEDIA_HOST_IP).await, peer_on(ATTACKER_IP).await);
        // The carrier's SDP names its SIP host; its media comes from a media server elsewhere.
        relay.update_remote(Leg::A, Some(SocketAddr::new(LOCALHOST, 9)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        send(&attacker, &rtp(1, 0), relay.local(Leg::A)).await;
        nothing_arrives(&agent).await;
        send(&media_host, &rtp(2, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(2, 0));
        send(&agent, &rtp(300, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&media_host).await.0, rtp(300, 0), "replies go to the media host");
        assert_eq!(counters.not_allowed.get(), 1);
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

    /// The SRTP contexts of a carrier that keys with `theirs` and expects `ours`, as the
    /// crate (webrtc-srtp) keeps them on the far end: its sender and its receiver.
    fn srtp_carrier(
        theirs: &crate::media::sdes::Crypto,
        ours: &crate::media::sdes::Crypto,
    ) -> (webrtc_srtp::context::Context, webrtc_srtp::context::Context) {
        use crate::media::sdes::Suite;
        use webrtc_srtp::protection_profile::ProtectionProfile;
        let profile = |suite| match suite {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        };
        let context = |c: &crate::media::sdes::Crypto| {
            let (key, salt) = c.key.split(c.suite);
            webrtc_srtp::context::Context::new(key, salt, profile(c.suite), None, None)
                .expect("a context")
        };
        (context(theirs), context(ours))
    }

    #[tokio::test]
    async fn an_srtp_carriers_packets_arrive_decrypted_at_the_agent_and_the_agents_encrypted() {
        use crate::media::sdes::{Crypto, Suite};
        for suite in Suite::PREFERENCE {
            let pool = test_pool(5);
            let relay = start(&pool, RelayConfig::default());
            let (carrier, carrier_rtcp) = peer_pair().await;
            let (agent, agent_rtcp) = peer_pair().await;
            relay.update_remote(Leg::A, Some(addr(&carrier)));
            relay.update_remote(Leg::B, Some(addr(&agent)));
            let (theirs, ours) = (Crypto::generate(1, suite), Crypto::generate(1, suite));
            let (mut sender, mut receiver) = srtp_carrier(&theirs, &ours);
            relay.set_srtp(Leg::A, Some(SrtpKeys { remote: theirs, local: ours }));

            for seq in 1..4 {
                let packet = rtp(seq, 160 * u32::from(seq));
                let protected = sender.encrypt_rtp(&packet).expect("encrypt");
                send(&carrier, &protected, relay.local(Leg::A)).await;
                assert_eq!(receive(&agent).await.0, packet, "{suite:?}: plain toward the agent");

                send(&agent, &packet, relay.local(Leg::B)).await;
                let (got, _) = receive(&carrier).await;
                assert_ne!(got, packet, "{suite:?}: ciphertext toward the carrier");
                assert_eq!(receiver.decrypt_rtp(&got).expect("decrypts"), packet, "{suite:?}");
            }
            // SRTCP both ways.
            let report = sender.encrypt_rtcp(&rtcp()).expect("encrypt");
            send(&carrier_rtcp, &report, relay.local_rtcp(Leg::A)).await;
            assert_eq!(receive(&agent_rtcp).await.0, rtcp(), "{suite:?}");
            send(&agent_rtcp, &rtcp(), relay.local_rtcp(Leg::B)).await;
            let (got, _) = receive(&carrier_rtcp).await;
            assert_eq!(receiver.decrypt_rtcp(&got).expect("decrypts"), rtcp(), "{suite:?}");

            // A replay, a tampered packet and a plain one: dropped and counted, not relayed.
            let replayed = sender.encrypt_rtp(&rtp(9, 9)).expect("encrypt");
            send(&carrier, &replayed, relay.local(Leg::A)).await;
            assert_eq!(receive(&agent).await.0, rtp(9, 9));
            send(&carrier, &replayed, relay.local(Leg::A)).await;
            let mut tampered = sender.encrypt_rtp(&rtp(10, 10)).expect("encrypt").to_vec();
            tampered[30] ^= 0x40;
            send(&carrier, &tampered, relay.local(Leg::A)).await;
            send(&carrier, &rtp(11, 11), relay.local(Leg::A)).await;
            nothing_arrives(&agent).await;
            let stats = eventually(&relay, |s| s.a.dropped.auth_failed == 3).await;
            assert_eq!(stats.a.rtp_in.packets, 4, "{suite:?}");
            relay.stop().await;
        }
    }

    #[tokio::test]
    async fn the_carriers_new_key_rekeys_what_the_relay_decrypts() {
        use crate::media::sdes::{Crypto, Suite};
        let suite = Suite::AesCm128HmacSha1_80;
        let pool = test_pool(5);
        let relay = start(&pool, RelayConfig::default());
        let carrier = peer().await;
        let agent = peer().await;
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let (first, ours) = (Crypto::generate(1, suite), Crypto::generate(1, suite));
        let (mut sender, _) = srtp_carrier(&first, &ours);
        relay.set_srtp(Leg::A, Some(SrtpKeys { remote: first, local: ours.clone() }));
        send(&carrier, &sender.encrypt_rtp(&rtp(1, 1)).expect("encrypt"), relay.local(Leg::A))
            .await;
        assert_eq!(receive(&agent).await.0, rtp(1, 1));

        let second = Crypto::generate(2, suite);
        let (mut renewed, _) = srtp_carrier(&second, &ours);
        relay.set_srtp(Leg::A, Some(SrtpKeys { remote: second, local: ours }));
        send(&carrier, &sender.encrypt_rtp(&rtp(2, 2)).expect("encrypt"), relay.local(Leg::A))
            .await;
        send(&carrier, &renewed.encrypt_rtp(&rtp(3, 3)).expect("encrypt"), relay.local(Leg::A))
            .await;
        assert_eq!(receive(&agent).await.0, rtp(3, 3), "the old key's packet is not relayed");
        eventually(&relay, |s| s.a.dropped.auth_failed == 1).await;

        // Plain again (a re-offer without SRTP on an Optional trunk).
        relay.set_srtp(Leg::A, None);
        send(&carrier, &rtp(4, 4), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(4, 4));
        relay.stop().await;
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
    async fn a_hold_longer_than_max_hold_owes_media_again_and_times_out() {
        let pool = test_pool(5);
        let config = RelayConfig {
            media_timeout: Duration::from_millis(150),
            max_hold: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let relay = start(&pool, config);
        relay.update_remote(Leg::A, Some(SocketAddr::new(LOCALHOST, 9)));
        relay.update_remote(Leg::B, Some(SocketAddr::new(LOCALHOST, 9)));
        let held = Instant::now();
        relay.set_hold(true);
        // A hold re-INVITE during the hold does not start the allowance again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        relay.set_hold(true);
        let fired = tokio::time::timeout(WAIT, relay.timeout()).await.expect("a timeout");
        assert_eq!(fired.silent, Silent::Both);
        // Not before the hold allowance plus a whole media timeout.
        assert!(held.elapsed() >= Duration::from_millis(440), "{:?}", held.elapsed());
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

    /// The RTCP address of a relay port whose RTP address is `rtp`.
    fn rtcp_port(rtp: SocketAddr) -> SocketAddr {
        SocketAddr::new(rtp.ip(), rtp.port() + 1)
    }

    /// Waits (bounded) until the pool holds `expected` free pairs.
    async fn pool_holds(pool: &PortAllocator, expected: usize) {
        let deadline = Instant::now() + WAIT;
        while pool.available() != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(pool.available(), expected);
    }

    #[tokio::test]
    async fn while_a_spare_rings_the_agent_hears_it_and_the_caller_does_not() {
        let pool = test_pool(5);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, carrier_rtcp) = peer_pair().await;
        let (agent, agent_rtcp) = peer_pair().await;
        let (transfer, transfer_rtcp) = peer_pair().await;
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        assert_ne!(spare, relay.local(Leg::B));
        assert_eq!(relay.local(Leg::B).ip(), LOCALHOST);
        assert_eq!(pool.available(), pool.capacity() - 3);
        relay.update_spare_remote(Some(addr(&transfer)));

        // The call goes on both ways.
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await, (rtp(1, 0), relay.local(Leg::B)));
        send(&agent, &rtp(500, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await, (rtp(500, 0), relay.local(Leg::A)));

        // Ringback from the transfer peer reaches the agent from side B's ports, RTP and RTCP.
        send(&transfer, &rtp(9000, 0), spare).await;
        assert_eq!(receive(&agent).await, (rtp(9000, 0), relay.local(Leg::B)));
        send(&transfer_rtcp, &rtcp(), rtcp_port(spare)).await;
        assert_eq!(receive(&agent_rtcp).await, (rtcp(), relay.local_rtcp(Leg::B)));
        nothing_arrives(&carrier).await;
        nothing_arrives(&carrier_rtcp).await;

        // Nothing of the call goes to the transfer peer.
        send(&carrier, &rtp(2, 160), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(2, 160));
        send(&carrier_rtcp, &rtcp(), relay.local_rtcp(Leg::A)).await;
        assert_eq!(receive(&agent_rtcp).await.0, rtcp());
        nothing_arrives(&transfer).await;
        nothing_arrives(&transfer_rtcp).await;

        let stats = relay.stop().await;
        // The agent got the caller's two packets and the ringback; it sent one.
        assert_eq!((stats.b.rtp_out.packets, stats.b.rtcp_out.packets), (3, 2));
        assert_eq!((stats.b.rtp_in.packets, stats.a.rtp_out.packets), (1, 1));
        assert_eq!((stats.a.rtcp_out.packets, stats.replaced), (0, None));
        assert_eq!(pool.available(), pool.capacity());
    }

    #[tokio::test]
    async fn an_srtp_spares_ringback_reaches_the_agent_decrypted_and_its_keys_go_with_it_to_side_b()
    {
        use crate::media::sdes::{Crypto, Suite};
        let pool = test_pool(5);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, _) = peer_pair().await;
        let (agent, _) = peer_pair().await;
        let (transfer, _) = peer_pair().await;
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(addr(&transfer)));
        let suite = Suite::AesCm128HmacSha1_80;
        let (theirs, ours) = (Crypto::generate(1, suite), Crypto::generate(1, suite));
        let (mut sender, mut receiver) = srtp_carrier(&theirs, &ours);
        relay.set_spare_srtp(Some(SrtpKeys { remote: theirs, local: ours }));

        // Encrypted ringback arrives plain at the agent; a plain packet does not pass.
        let ringback = rtp(9000, 0);
        send(&transfer, &sender.encrypt_rtp(&ringback).expect("encrypt"), spare).await;
        assert_eq!(receive(&agent).await.0, ringback);
        send(&transfer, &rtp(9001, 160), spare).await;
        nothing_arrives(&agent).await;

        // Promoted: the caller's audio goes to the destination encrypted with our key, and the
        // destination's keeps decrypting (the same context: its sequence goes on).
        assert!(relay.promote_spare(Some(addr(&transfer))));
        send(&carrier, &rtp(2, 160), relay.local(Leg::A)).await;
        let (got, _) = receive(&transfer).await;
        assert_eq!(receiver.decrypt_rtp(&got).expect("decrypts under our key"), rtp(2, 160));
        let next = rtp(9002, 320);
        send(&transfer, &sender.encrypt_rtp(&next).expect("encrypt"), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, next);
        let stats = relay.stop().await;
        assert_eq!(stats.b.dropped.auth_failed, 0, "counted on the spare before it was side B");
    }

    #[tokio::test]
    async fn a_promoted_spare_takes_the_agents_place_and_the_agents_port_closes() {
        let pool = test_pool(5);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, carrier_rtcp) = peer_pair().await;
        let agent = peer().await;
        let (transfer, transfer_rtcp) = peer_pair().await;
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        // The transfer leg faces another network than the agent: another local address.
        let other_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let spare = relay.add_spare(&pool, other_ip).expect("a spare");
        assert_eq!(spare.ip(), other_ip);
        relay.update_spare_remote(Some(addr(&transfer)));
        send(&agent, &rtp(500, 0), relay.local(Leg::B)).await;
        assert_eq!(receive(&carrier).await.0, rtp(500, 0));
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await.0, rtp(1, 0));
        send(&transfer, &rtp(9000, 0), spare).await;
        assert_eq!(receive(&agent).await.0, rtp(9000, 0));

        let (caller_port, agent_port) = (relay.local(Leg::A), relay.local(Leg::B));
        assert!(relay.promote_spare(Some(addr(&transfer))));
        assert_eq!((relay.local(Leg::B), relay.local_rtcp(Leg::B)), (spare, rtcp_port(spare)));
        // No re-INVITE toward the caller: its side keeps its ports.
        assert_eq!(relay.local(Leg::A), caller_port);

        // The caller and the transfer peer hear each other, from the same ports as before.
        send(&carrier, &rtp(2, 160), relay.local(Leg::A)).await;
        assert_eq!(receive(&transfer).await, (rtp(2, 160), spare));
        send(&transfer, &rtp(9001, 160), spare).await;
        assert_eq!(receive(&carrier).await, (rtp(9001, 160), relay.local(Leg::A)));
        send(&carrier_rtcp, &rtcp(), relay.local_rtcp(Leg::A)).await;
        assert_eq!(receive(&transfer_rtcp).await, (rtcp(), rtcp_port(spare)));
        send(&transfer_rtcp, &rtcp(), rtcp_port(spare)).await;
        assert_eq!(receive(&carrier_rtcp).await, (rtcp(), relay.local_rtcp(Leg::A)));

        // The agent is cut off: its old port relays nothing, and it hears nothing more.
        send(&agent, &rtp(501, 160), agent_port).await;
        nothing_arrives(&carrier).await;
        nothing_arrives(&agent).await;
        // Its pair is back in the pool: the caller's and the spare's are in use.
        pool_holds(&pool, pool.capacity() - 2).await;

        let live = eventually(&relay, |s| s.replaced.is_some() && s.b.rtp_in.packets == 1).await;
        let stats = relay.stop().await;
        assert_eq!(live.replaced, stats.replaced);
        let agent_figures = stats.replaced.expect("the agent's figures");
        assert_eq!(agent_figures.remote, Some(addr(&agent)));
        // The agent sent one packet and heard the caller's and the ringback.
        assert_eq!((agent_figures.rtp_in.packets, agent_figures.rtp_out.packets), (1, 2));
        // The transfer peer's counters started at the promotion: its ringback is not in them.
        assert_eq!(stats.b.remote, Some(addr(&transfer)));
        assert_eq!((stats.b.rtp_in.packets, stats.b.rtp_out.packets), (1, 1));
        assert_eq!((stats.b.rtcp_in.packets, stats.b.rtcp_out.packets), (1, 1));
        assert_eq!(stats.b.dropped, Dropped::default());
        // Side A's go on: the agent's one, then the transfer peer's one.
        assert_eq!((stats.a.rtp_in.packets, stats.a.rtp_out.packets), (2, 2));
        assert_eq!(pool.available(), pool.capacity());
    }

    #[tokio::test]
    async fn a_spare_latched_while_ringing_keeps_its_latch_when_promoted_to_the_same_address() {
        let pool = test_pool(5);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        // The transfer peer's SDP says X, but it sends from Y (behind a NAT); Z is an intruder.
        let (sdp_x, real_y, intruder) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(addr(&sdp_x)));
        send(&real_y, &rtp(1, 0), spare).await;
        assert_eq!(receive(&agent).await.0, rtp(1, 0));
        // Latched: the hijack guard holds while it rings.
        send(&intruder, &rtp(66, 0), spare).await;
        nothing_arrives(&agent).await;

        relay.promote_spare(Some(addr(&sdp_x)));
        send(&carrier, &rtp(2, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&real_y).await, (rtp(2, 0), spare));
        nothing_arrives(&sdp_x).await;
        send(&intruder, &rtp(67, 0), spare).await;
        nothing_arrives(&carrier).await;
        let stats = eventually(&relay, |s| s.b.dropped.foreign == 1).await;
        assert_eq!(stats.b.remote, Some(addr(&real_y)));
    }

    #[tokio::test]
    async fn a_spare_promoted_to_another_address_latches_over_again() {
        let pool = test_pool(5);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        let (early, answered, latecomer) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(addr(&early)));
        send(&early, &rtp(1, 0), spare).await;
        assert_eq!(receive(&agent).await.0, rtp(1, 0));

        // The 200's SDP moved the media: replies go there, and the next source latches.
        relay.promote_spare(Some(addr(&answered)));
        send(&carrier, &rtp(2, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&answered).await.0, rtp(2, 0));
        nothing_arrives(&early).await;
        send(&latecomer, &rtp(3, 0), spare).await;
        assert_eq!(receive(&carrier).await.0, rtp(3, 0));
        send(&carrier, &rtp(4, 160), relay.local(Leg::A)).await;
        assert_eq!(receive(&latecomer).await.0, rtp(4, 160));
    }

    /// The guard of a transfer destination that is a carrier: strict, its SIP host 127.0.0.3.
    fn transfer_guard(counters: &RtpRejected) -> SourceGuard {
        SourceGuard {
            strict: true,
            signalling: Some(MEDIA_HOST_IP),
            allowed: Vec::new(),
            rejected: Some(counters.clone()),
        }
    }

    #[tokio::test]
    async fn an_attacker_cannot_take_a_carriers_spare_while_it_rings_nor_side_b_once_promoted() {
        let pool = test_pool(5);
        let (carrier_counters, counters) =
            (RtpRejected::unregistered(), RtpRejected::unregistered());
        let mut relay = start_carrier_guarded(&pool, &[], &carrier_counters);
        let (carrier, agent) = (peer().await, peer().await);
        let (transfer, attacker) = (peer_on(MEDIA_HOST_IP).await, peer_on(ATTACKER_IP).await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare =
            relay.add_spare_guarded(&pool, LOCALHOST, transfer_guard(&counters)).expect("a spare");
        relay.update_spare_remote(Some(addr(&transfer)));

        // While it rings: the attacker's packets reach nobody and latch nothing.
        for seq in 0..5 {
            send(&attacker, &rtp(60_000 + seq, 0), spare).await;
        }
        nothing_arrives(&agent).await;
        send(&transfer, &rtp(9000, 0), spare).await;
        assert_eq!(receive(&agent).await.0, rtp(9000, 0), "the ringback reaches the agent");
        assert_eq!(counters.not_allowed.get(), 5);

        // Promoted (the 200's SDP names the same address): still the transfer peer's alone.
        assert!(relay.promote_spare(Some(addr(&transfer))));
        for seq in 5..10 {
            send(&attacker, &rtp(60_000 + seq, 0), spare).await;
        }
        nothing_arrives(&carrier).await;
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&transfer).await, (rtp(1, 0), spare));
        nothing_arrives(&attacker).await;
        send(&transfer, &rtp(9001, 160), spare).await;
        assert_eq!(receive(&carrier).await.0, rtp(9001, 160));
        let stats = eventually(&relay, |s| s.b.dropped.foreign == 5).await;
        assert_eq!(stats.b.remote, Some(addr(&transfer)));
        assert_eq!((counters.not_allowed.get(), counters.latched.get()), (5, 5));
        assert_eq!(carrier_counters.not_allowed.get() + carrier_counters.latched.get(), 0);
    }

    #[tokio::test]
    async fn a_carriers_spare_promoted_to_another_address_latches_only_to_its_own_addresses() {
        let pool = test_pool(5);
        let counters = RtpRejected::unregistered();
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        let (answered, attacker) = (peer_on(MEDIA_HOST_IP).await, peer_on(ATTACKER_IP).await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare =
            relay.add_spare_guarded(&pool, LOCALHOST, transfer_guard(&counters)).expect("a spare");

        // No early media; the 200 names where the peer wants media. The attacker is first.
        relay.promote_spare(Some(addr(&answered)));
        for seq in 0..3 {
            send(&attacker, &rtp(60_000 + seq, 0), spare).await;
        }
        nothing_arrives(&carrier).await;
        send(&answered, &rtp(1, 0), spare).await;
        assert_eq!(receive(&carrier).await.0, rtp(1, 0));
        send(&carrier, &rtp(2, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&answered).await.0, rtp(2, 0));
        nothing_arrives(&attacker).await;
        let stats = eventually(&relay, |s| s.b.dropped.not_allowed == 3).await;
        assert_eq!(stats.b.remote, Some(addr(&answered)));
        assert_eq!(counters.not_allowed.get(), 3);
    }

    #[tokio::test]
    async fn a_dropped_spare_gives_its_ports_back_and_the_call_goes_on() {
        let pool = test_pool(4);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, agent, transfer) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(addr(&transfer)));
        assert_eq!(pool.available(), 1);

        relay.drop_spare();
        pool_holds(&pool, 2).await;
        // No spare: promoting does nothing, the ports of the call stay.
        let agent_port = relay.local(Leg::B);
        assert!(!relay.promote_spare(Some(addr(&transfer))));
        assert_eq!(relay.local(Leg::B), agent_port);
        send(&transfer, &rtp(9000, 0), spare).await;
        nothing_arrives(&agent).await;
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await, (rtp(1, 0), agent_port));
        send(&agent, &rtp(500, 0), agent_port).await;
        assert_eq!(receive(&carrier).await.0, rtp(500, 0));
        nothing_arrives(&transfer).await;

        // A second spare replaces the first one, whose ports come back; dropping the relay
        // frees every pair.
        relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.add_spare(&pool, LOCALHOST).expect("another spare");
        pool_holds(&pool, 1).await;
        drop(relay);
        pool_holds(&pool, pool.capacity()).await;
    }

    #[tokio::test]
    async fn a_spare_without_ports_is_refused_and_the_call_goes_on() {
        let pool = test_pool(2);
        let mut relay = start(&pool, RelayConfig::default());
        let (carrier, agent) = (peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        let agent_port = relay.local(Leg::B);

        let err = relay.add_spare(&pool, LOCALHOST).expect_err("no ports left");
        assert!(matches!(err, StartError::Ports(PortsError::Exhausted { .. })), "{err}");
        assert!(!relay.promote_spare(None));
        assert_eq!(relay.local(Leg::B), agent_port);
        send(&carrier, &rtp(1, 0), relay.local(Leg::A)).await;
        assert_eq!(receive(&agent).await, (rtp(1, 0), agent_port));
        send(&agent, &rtp(500, 0), agent_port).await;
        assert_eq!(receive(&carrier).await, (rtp(500, 0), relay.local(Leg::A)));
        relay.stop().await;
        assert_eq!(pool.available(), pool.capacity());
    }

    #[tokio::test]
    async fn a_silent_spare_never_times_out_the_call_but_a_silent_promoted_peer_does() {
        let pool = test_pool(5);
        let config =
            RelayConfig { media_timeout: Duration::from_millis(300), ..Default::default() };
        let mut relay = start(&pool, config);
        let (carrier, agent, transfer) = (peer().await, peer().await, peer().await);
        relay.update_remote(Leg::A, Some(addr(&carrier)));
        relay.update_remote(Leg::B, Some(addr(&agent)));
        relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(addr(&transfer)));
        let timeout = relay.timeout();
        tokio::pin!(timeout);

        // Caller and agent talk for two timeouts while the spare says nothing: no timeout.
        let ringing = Instant::now();
        let mut seq = 0u16;
        while ringing.elapsed() < Duration::from_millis(700) {
            tokio::select! {
                fired = &mut timeout => panic!("timed out while the spare rang: {fired:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    send(&carrier, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::A)).await;
                    send(&agent, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::B)).await;
                    seq += 1;
                }
            }
        }

        // Promoted, the transfer peer never sends: after a full timeout, side B is silent.
        let promoted = Instant::now();
        assert!(relay.promote_spare(Some(addr(&transfer))));
        let fired = loop {
            tokio::select! {
                fired = &mut timeout => break fired,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    send(&carrier, &rtp(seq, u32::from(seq) * 160), relay.local(Leg::A)).await;
                    seq += 1;
                    assert!(promoted.elapsed() < WAIT, "no timeout");
                }
            }
        };
        assert_eq!(
            fired,
            MediaTimeout { silent: Silent::One(Leg::B), after: config.media_timeout }
        );
        assert!(promoted.elapsed() >= config.media_timeout, "{:?}", promoted.elapsed());
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
    fn a_spare_is_registered_with_the_relays_own_runtime_not_the_callers() {
        let pool = test_pool(5);
        let media = MediaThreads::start(1).expect("media threads");
        let mut relay = media
            .start_relay(&pool, LOCALHOST, LOCALHOST, RelayConfig::default())
            .expect("relay starts");
        let agent = UdpSocket::bind((LOCALHOST, 0)).expect("bind the agent");
        agent.set_read_timeout(Some(WAIT)).expect("a read timeout");
        let transfer = UdpSocket::bind((LOCALHOST, 0)).expect("bind the transfer peer");
        relay.update_remote(Leg::B, Some(agent.local_addr().expect("addr")));
        // No runtime on this thread: the spare's sockets go to the media thread's.
        let spare = relay.add_spare(&pool, LOCALHOST).expect("a spare");
        relay.update_spare_remote(Some(transfer.local_addr().expect("addr")));
        transfer.send_to(&rtp(1, 0), spare).expect("send");
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, from) = agent.recv_from(&mut buf).expect("the ringback reaches the agent");
        assert_eq!((&buf[..len], from), (&rtp(1, 0)[..], relay.local(Leg::B)));

        // Once the relay's runtime is gone, a spare is an error, not a panic, and the pair it
        // took goes back.
        drop(media);
        let err = relay.add_spare(&pool, LOCALHOST).expect_err("the relay's runtime is gone");
        assert!(matches!(err, StartError::Register(_)), "{err}");
        drop(relay);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn a_relay_outside_a_runtime_is_an_error_not_a_panic() {
        let pool = test_pool(5);
        let err = Relay::start(&pool, LOCALHOST, LOCALHOST, RelayConfig::default()).err();
        assert!(matches!(err, Some(StartError::NoRuntime)));
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn relay_task_future_stays_small() {
        // Every held call has one: 7,248 bytes when the task was kept twice and carried a
        // transfer's spare side inline (docs/benchmarks.md, "Concurrent calls and memory per
        // call").
        fn future_size<F>(_: impl FnOnce(Task) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(Task::run);
        assert!(size <= 2_048, "the relay task's future grew to {size} bytes");
    }

    #[test]
    fn datagram_counters_give_the_figures_rtp_stats_gave() {
        let t0 = Instant::now();
        let (mut full, mut small) = (RtpStats::new(), Datagrams::default());
        for (ms, len) in [(0, 172), (20, 60), (45, 1200)] {
            full.on_datagram(t0 + Duration::from_millis(ms), len);
            small.on_datagram(t0 + Duration::from_millis(ms), len);
        }
        assert_eq!(small.snapshot(), full.snapshot());
        assert_eq!(Datagrams::default().snapshot(), RtpStats::new().snapshot());
    }
}
