//! SIP transports (RFC 3261 §18): UDP sockets, TCP and TLS listeners and connections. Each
//! received datagram or stream frame is parsed here (so parsing runs on every core) and handed
//! to one [`Sink`] with where it came from; sending goes through [`Transports::send`].
//!
//! Streams are framed by `Content-Length` (`sip::framer`, incrementally: each read's bytes are
//! looked at once). Connections are reused: responses go back on the connection the request
//! came on, requests to a peer go on an open connection to it when there is one (RFC 3261
//! §18.1.1 / §18.2.2).
//!
//! **What a peer can hold** ([`Limits`]; an internet-facing port is scanned and flooded):
//! - a connection slot: at most [`Limits::max_connections`] stream connections at once, and at
//!   most [`Limits::max_connections_per_address`] from one address (an IPv6 peer by its /64,
//!   which one host usually holds whole). A TLS connection takes its slot at accept, before its
//!   handshake. Over either cap, a new connection is closed at accept.
//! - time: a TLS handshake must finish within [`Limits::handshake_timeout`]; a message, from
//!   its first byte to the end of its body, within [`Limits::message_timeout`] (a peer that
//!   sends a byte now and then cannot keep a slot); between messages a connection may stay
//!   silent for [`Limits::idle_timeout`] (RFC 5626 keep-alives count).
//! - memory and a task: a write that the peer does not read within [`Limits::write_timeout`]
//!   closes the connection (and fails the sends queued on it), so a peer that never reads
//!   cannot hold our buffers or the call that sends to it.
//! - a message over [`MAX_MESSAGE_SIZE`](super::msg::MAX_MESSAGE_SIZE) or one that cannot be
//!   framed is answered (513, or 400) and the connection closed.
//!
//! Every refusal and every close is reported by reason ([`StreamEvent`], to the hook of
//! [`Transports::on_stream_event`]: the gateway's metrics) with fixed names; the refusals and
//! the closes a peer caused are logged at `warn` at most [`LOG_BURST`] lines per
//! [`LOG_WINDOW`], the rest summed up in the next line.
//!
//! Connections the gateway opens itself (to a carrier or an agent runtime) are TCP, or TLS
//! through [`TlsClient`] (server name and certificate check: see `sip::tls_client`); connect and
//! handshake together take at most [`Limits::connect_timeout`]. They count against
//! [`Limits::max_connections`] (not the per-address cap: the gateway chooses them). Once open
//! they are served like accepted ones: later messages to the peer reuse them and the peer's
//! requests on them are delivered to the [`Sink`].
//!
//! Called by the gateway (`call::gateway`), which owns the listeners, and by the B2BUA, which
//! sends.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::framer::{Framed, Framer};
use super::msg::{self, MAX_MESSAGE_SIZE, Message, ParseError};
use super::tls_client::TlsClient;

pub use crate::api::Transport;

/// The transport a message came on or goes out on: the one [`Transport`] type, under the name
/// the call code uses.
pub type Protocol = Transport;

/// Which side of the gateway a listener faces (DESIGN §3: two trust zones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    /// Carriers: inbound calls of accepted trunks only.
    Carrier,
    /// The agent runtime: its answers, and (later) outbound calls and transfers.
    Internal,
}

/// A listener address as given on the command line: `udp://IP:PORT`, `tcp://...`, `tls://...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub protocol: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("{s:?}: expected udp://IP:PORT, tcp://IP:PORT or tls://IP:PORT")
        })?;
        let protocol = Transport::parse(scheme).ok_or_else(|| {
            format!("{s:?}: unknown transport {:?} (udp, tcp or tls)", scheme.to_ascii_lowercase())
        })?;
        let addr =
            parse_socket_addr(rest).ok_or_else(|| format!("{s:?}: {rest:?} is not IP:PORT"))?;
        Ok(ListenAddr { protocol, addr })
    }
}

/// `IP:PORT`, with an IPv6 address bracketed (`[2001:db8::7]:5060`) or not
/// (`2001:db8::7:5060`: the port is what follows the last colon). The unbracketed form is what
/// Kubernetes makes of `$(POD_IP):PORT` in a container's arguments on an IPv6 pod network.
pub fn parse_socket_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Some(addr);
    }
    let (ip, port) = s.rsplit_once(':')?;
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    Some(SocketAddr::new(ip.into(), port.parse().ok()?))
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.protocol.as_str().to_ascii_lowercase(), self.addr)
    }
}

/// Bounds on what peers can make the transports hold (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Stream connections open at once, accepted (handshakes included) and opened by us.
    pub max_connections: usize,
    /// Accepted stream connections (handshakes included) from one address, an IPv6 one by
    /// its /64.
    pub max_connections_per_address: usize,
    /// Silence allowed between messages.
    pub idle_timeout: Duration,
    /// The longest a message may take to arrive, from its first byte to the end of its body.
    pub message_timeout: Duration,
    /// The longest an accepted TLS connection's handshake may take.
    pub handshake_timeout: Duration,
    /// The longest one write may wait for the peer to read.
    pub write_timeout: Duration,
    /// Connect and handshake of a connection we open.
    pub connect_timeout: Duration,
    /// Kernel receive and send buffer asked for each UDP listener, in bytes (see
    /// [`size_udp_buffers`]).
    pub udp_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_address: 100,
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            udp_buffer: UDP_BUFFER,
        }
    }
}

/// The UDP listeners' kernel buffers: 4 MiB each way. A carrier's burst of new calls queues
/// in the receive buffer while the receive loop waits for a core; Linux's default (208 KiB,
/// about 90 INVITEs of 1 KB as the kernel counts them) overflows within a few milliseconds at
/// a thousand calls per second, and every datagram lost there is a retransmission 500 ms
/// later. 4 MiB is the usual `net.core.rmem_max` of a distribution kernel and about 1,800
/// INVITEs.
pub const UDP_BUFFER: usize = 4 << 20;

/// The buffer sizes a UDP socket was granted, in bytes: half of what the kernel reports (it
/// doubles what it grants, for its bookkeeping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpBuffers {
    pub receive: usize,
    pub send: usize,
}

/// Asks for `bytes` of receive and send buffer on `socket`. `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`
/// first, which go past `net.core.rmem_max`/`wmem_max` when the process has CAP_NET_ADMIN;
/// without it, `SO_RCVBUF`/`SO_SNDBUF`, which the kernel caps at those sysctls. Never fails:
/// a small buffer is a slower gateway, not a broken one, and the sizes got are returned to be
/// logged.
pub fn size_udp_buffers(socket: &UdpSocket, bytes: usize) -> UdpBuffers {
    use nix::sys::socket::{setsockopt, sockopt};
    let sock = socket2::SockRef::from(socket);
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock.set_recv_buffer_size(bytes);
    }
    if setsockopt(socket, sockopt::SndBufForce, &bytes).is_err() {
        let _ = sock.set_send_buffer_size(bytes);
    }
    UdpBuffers {
        receive: sock.recv_buffer_size().unwrap_or(0) / 2,
        send: sock.send_buffer_size().unwrap_or(0) / 2,
    }
}

/// Why a stream connection was refused at accept: the `reason` label of
/// `trunkline_sip_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// [`Limits::max_connections`] are open.
    GlobalLimit,
    /// [`Limits::max_connections_per_address`] are open from the peer's address.
    AddressLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::GlobalLimit, Refusal::AddressLimit];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::GlobalLimit => "global_limit",
            Refusal::AddressLimit => "address_limit",
        }
    }
}

/// Why a stream connection was closed: the `reason` label of
/// `trunkline_sip_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it (or reset it).
    PeerClosed,
    /// Silent between messages for [`Limits::idle_timeout`].
    IdleTimeout,
    /// A message did not arrive whole within [`Limits::message_timeout`].
    MessageTimeout,
    /// A TLS handshake did not finish within [`Limits::handshake_timeout`].
    HandshakeTimeout,
    /// A TLS handshake failed (not TLS, no common cipher, an alert...).
    HandshakeFailed,
    /// The peer did not read what we wrote within [`Limits::write_timeout`].
    WriteTimeout,
    /// A message over `MAX_MESSAGE_SIZE` (answered 513).
    TooLarge,
    /// A stream that cannot be framed (answered 400).
    Unframeable,
    /// A read or write failed.
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::PeerClosed,
        CloseReason::IdleTimeout,
        CloseReason::MessageTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::WriteTimeout,
        CloseReason::TooLarge,
        CloseReason::Unframeable,
        CloseReason::Error,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MessageTimeout => "message_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::TooLarge => "too_large",
            CloseReason::Unframeable => "unframeable",
            CloseReason::Error => "error",
        }
    }

    /// Whether the peer made us close it (logged at `warn`, rate-limited); the others are the
    /// ordinary end of a connection (`debug`).
    fn is_peer_fault(self) -> bool {
        !matches!(self, CloseReason::PeerClosed | CloseReason::IdleTimeout | CloseReason::Error)
    }
}

/// What happened to a stream connection, for the hook of [`Transports::on_stream_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A connection was closed at accept.
    Refused { protocol: Transport, reason: Refusal },
    /// A connection (accepted or opened by us) was closed.
    Closed { protocol: Transport, reason: CloseReason },
}

impl StreamEvent {
    /// The `transport` label values of stream events.
    pub const TRANSPORTS: [&'static str; 2] = ["tcp", "tls"];

    /// The `transport` label: `tcp` or `tls`.
    pub fn transport(&self) -> &'static str {
        let (StreamEvent::Refused { protocol, .. } | StreamEvent::Closed { protocol, .. }) = self;
        match protocol {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// At most this many `warn` lines about refused or cut connections per [`LOG_WINDOW`].
pub const LOG_BURST: u32 = 5;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A rate limit on log lines: [`LOG_BURST`] per [`LOG_WINDOW`]; the first line of a later
/// window says how many were left out (a flood must not flood the log). Pure: time is passed in.
#[derive(Debug)]
struct LogBudget {
    window_start: Option<tokio::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget { window_start: None, logged: 0, suppressed: 0 }
    }

    /// `Some(n)`: log this event, saying that `n` were left out before it; `None`: leave it out.
    fn admit(&mut self, now: tokio::time::Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now.duration_since(start) >= LOG_WINDOW) {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The key of the per-address cap: an IPv4 address (IPv4-mapped IPv6 included), or the /64 of
/// an IPv6 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// The connection slots: how many are open, in all and per address.
struct Slots {
    limits: Limits,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One taken slot, given back on drop.
struct Slot {
    slots: Arc<Slots>,
    address: Option<IpAddr>,
}

impl Slots {
    /// A slot for a connection accepted from `remote` (both caps), or for one we open
    /// (`remote` = `None`: the global cap only).
    fn take(self: &Arc<Self>, remote: Option<IpAddr>) -> Result<Slot, Refusal> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(Refusal::GlobalLimit);
        }
        let address = remote.map(address_key);
        if let Some(key) = address {
            let count = by_address.entry(key).or_insert(0);
            if *count >= self.limits.max_connections_per_address {
                if *count == 0 {
                    by_address.remove(&key);
                }
                return Err(Refusal::AddressLimit);
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { slots: self.clone(), address })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_address = self.slots.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = self.address
            && let Some(count) = by_address.get_mut(&key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_address.remove(&key);
            }
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identifies one stream connection.
pub type ConnId = u64;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub protocol: Transport,
    pub zone: Zone,
    pub remote: SocketAddr,
    /// The listener (UDP) or the local end of the connection.
    pub local: SocketAddr,
    pub connection: Option<ConnId>,
}

impl Source {
    /// Where to send a response to a request from here (RFC 3261 §18.2.2 with RFC 3581: the
    /// source address and port, on the same connection for streams).
    pub fn reply_target(&self) -> Target {
        Target {
            protocol: self.protocol,
            zone: self.zone,
            remote: self.remote,
            connection: self.connection,
        }
    }
}

/// Where to send a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Transport,
    pub zone: Zone,
    pub remote: SocketAddr,
    /// A connection to try first (streams).
    pub connection: Option<ConnId>,
}

/// A received message, parsed or refused.
#[derive(Debug)]
pub struct Incoming {
    pub message: Result<Message, ParseError>,
    pub source: Source,
}

/// Where transports deliver what they receive.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, incoming: Incoming);

    /// A UDP datagram, not parsed yet: by default parsed here and delivered. A sink may parse
    /// it elsewhere (the gateway hands those of new calls to its workers).
    fn deliver_datagram(&self, data: &[u8], source: Source) {
        self.deliver(Incoming { message: msg::parse(data), source });
    }
}

/// TLS server certificate and key, read from files and read again when they change (so a
/// cert-manager renewal is picked up without a restart).
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<rustls::ServerConfig>)>,
}

impl TlsFiles {
    pub fn load(cert: PathBuf, key: PathBuf) -> io::Result<TlsFiles> {
        let config = read_server_config(&cert, &key)?;
        let stamp = modified(&cert);
        Ok(TlsFiles { cert, key, current: Mutex::new((stamp, Arc::new(config))) })
    }

    /// The current config, re-read when the certificate file changed since the last read.
    fn config(&self) -> Arc<rustls::ServerConfig> {
        let Ok(mut current) = self.current.lock() else {
            return Arc::new(empty_server_config());
        };
        let stamp = modified(&self.cert);
        if stamp != current.0 {
            match read_server_config(&self.cert, &self.key) {
                Ok(config) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *current = (stamp, Arc::new(config));
                }
                Err(e) => {
                    tracing::warn!(cert = %self.cert.display(), error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
        }
        current.1.clone()
    }
}

fn empty_server_config() -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()))
        })
        .unwrap_or_else(|_| unreachable_config())
}

fn unreachable_config() -> rustls::ServerConfig {
    // ring's default provider supports the safe default versions; this path only exists to
    // avoid a panic on an impossible error.
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()))
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_server_config(cert: &PathBuf, key: &PathBuf) -> io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", cert.display()))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", cert.display()))
        })?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", key.display()))
    })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The sending half of an open stream connection.
struct Connection {
    remote: SocketAddr,
    protocol: Transport,
    zone: Zone,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A bound UDP listener.
struct UdpListener {
    zone: Zone,
    local: SocketAddr,
    socket: Arc<UdpSocket>,
}

/// Every socket and connection of the gateway.
pub struct Transports {
    /// The UDP listeners with the address each is bound to (kept from the bind: a send looks up
    /// its socket by zone and address family, and asking the kernel each time cost a
    /// `getsockname` per message). Written only when a listener is added, so a read lock.
    udp: RwLock<Vec<UdpListener>>,
    connections: Mutex<HashMap<ConnId, Connection>>,
    next_conn: AtomicU64,
    slots: Arc<Slots>,
    limits: Limits,
    sink: Arc<dyn Sink>,
    /// Told of every refused and closed stream connection (the gateway's metrics).
    events: OnceLock<Box<dyn Fn(StreamEvent) + Send + Sync>>,
    /// The rate limit of the `warn` lines about refused and cut connections.
    log: Mutex<LogBudget>,
    /// The client of TLS connections we open; without one, sending over TLS to a peer with no
    /// open connection fails.
    tls_client: OnceLock<Arc<TlsClient>>,
    /// One connection attempt at a time per peer: messages that find no connection wait for
    /// the one being opened instead of opening their own (a burst of calls to one agent
    /// runtime makes one TLS handshake, not one each).
    connecting: Mutex<HashMap<(SocketAddr, Transport, Zone), Arc<ConnectGate>>>,
}

/// The turn to connect to one peer, and how the last attempt failed (messages that waited for
/// it fail the same way instead of trying again one after the other).
type ConnectGate = tokio::sync::Mutex<Option<(tokio::time::Instant, io::ErrorKind, String)>>;

impl Transports {
    pub fn new(sink: Arc<dyn Sink>, limits: Limits) -> Arc<Transports> {
        Arc::new(Transports {
            udp: RwLock::new(Vec::new()),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            slots: Arc::new(Slots {
                limits,
                open: AtomicUsize::new(0),
                by_address: Mutex::new(HashMap::new()),
            }),
            limits,
            sink,
            events: OnceLock::new(),
            log: Mutex::new(LogBudget::new()),
            tls_client: OnceLock::new(),
            connecting: Mutex::new(HashMap::new()),
        })
    }

    /// Tells `hook` of every refused and closed stream connection (set once; later calls are
    /// ignored).
    pub fn on_stream_event(&self, hook: impl Fn(StreamEvent) + Send + Sync + 'static) {
        let _ = self.events.set(Box::new(hook));
    }

    /// Reports `event` to the hook and logs it: refusals and the closes a peer caused at
    /// `warn` (rate-limited, see [`LOG_BURST`]), the others at `debug`.
    fn report(&self, event: StreamEvent, remote: SocketAddr) {
        if let Some(hook) = self.events.get() {
            hook(event);
        }
        let (reason, warn) = match event {
            StreamEvent::Refused { reason, .. } => (reason.as_str(), true),
            StreamEvent::Closed { reason, .. } => (reason.as_str(), reason.is_peer_fault()),
        };
        let transport = event.transport();
        if !warn {
            tracing::debug!(%remote, transport, reason, "stream connection closed");
            return;
        }
        let admitted =
            self.log.lock().map_or(Some(0), |mut log| log.admit(tokio::time::Instant::now()));
        let Some(left_out) = admitted else { return };
        let what = match event {
            StreamEvent::Refused { .. } => "stream connection refused",
            StreamEvent::Closed { .. } => "stream connection cut",
        };
        if left_out > 0 {
            tracing::warn!(%remote, transport, reason, left_out, "{what} (and {left_out} more refused or cut connections not logged, see trunkline_sip_connections_refused_total and trunkline_sip_connections_closed_total)");
        } else {
            tracing::warn!(%remote, transport, reason, "{what}");
        }
    }

    /// Opens TLS connections to peers with `client` (set once; later calls are ignored).
    pub fn use_tls_client(&self, client: Arc<TlsClient>) {
        let _ = self.tls_client.set(client);
    }

    /// `remote` is reached by the host name `host`: a TLS connection opened to it checks the
    /// certificate against that name (and sends it as SNI). The call driver calls this after it
    /// resolves a destination; an address never named is checked as an IP address.
    pub fn name_peer(&self, remote: SocketAddr, host: &str) {
        if let Some(client) = self.tls_client.get() {
            client.name_peer(remote, host);
        }
    }

    /// Binds a listener and starts serving it. Returns the bound address (port 0 resolved).
    pub async fn listen(
        self: &Arc<Self>,
        at: ListenAddr,
        zone: Zone,
        tls: Option<Arc<TlsFiles>>,
    ) -> io::Result<SocketAddr> {
        match at.protocol {
            Transport::Udp => {
                let socket = Arc::new(UdpSocket::bind(at.addr).await?);
                let local = socket.local_addr()?;
                let wanted = self.limits.udp_buffer;
                let got = size_udp_buffers(&socket, wanted);
                if got.receive < wanted {
                    tracing::warn!(
                        listen = %at, asked = wanted, receive_buffer = got.receive,
                        "the kernel capped the SIP socket's receive buffer: bursts of calls \
                         may be dropped (raise net.core.rmem_max, or grant CAP_NET_ADMIN)"
                    );
                } else {
                    tracing::debug!(listen = %at, receive_buffer = got.receive, send_buffer = got.send, "SIP UDP buffers");
                }
                if let Ok(mut udp) = self.udp.write() {
                    udp.push(UdpListener { zone, local, socket: socket.clone() });
                }
                tokio::spawn(self.clone().udp_loop(socket, zone, local));
                Ok(local)
            }
            Transport::Tcp | Transport::Tls => {
                let acceptor = match (at.protocol, tls) {
                    (Transport::Tls, Some(files)) => Some(files),
                    (Transport::Tls, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{at} needs --tls-cert and --tls-key"),
                        ));
                    }
                    _ => None,
                };
                let listener = TcpListener::bind(at.addr).await?;
                let local = listener.local_addr()?;
                tokio::spawn(self.clone().accept_loop(listener, at.protocol, zone, acceptor));
                Ok(local)
            }
        }
    }

    async fn udp_loop(self: Arc<Self>, socket: Arc<UdpSocket>, zone: Zone, local: SocketAddr) {
        let mut buf = vec![0u8; MAX_MESSAGE_SIZE + 1];
        loop {
            let (len, remote) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors surface here on some platforms: never stop the listener.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let data = &buf[..len];
            if data.iter().all(|&b| b == b'\r' || b == b'\n') {
                if data == b"\r\n\r\n" {
                    let _ = socket.send_to(b"\r\n", remote).await;
                }
                continue;
            }
            let source = Source { protocol: Transport::Udp, zone, remote, local, connection: None };
            self.sink.deliver_datagram(data, source);
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        protocol: Transport,
        zone: Zone,
        tls: Option<Arc<TlsFiles>>,
    ) {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match self.slots.take(Some(remote.ip())) {
                Ok(slot) => slot,
                Err(reason) => {
                    drop(stream);
                    self.report(StreamEvent::Refused { protocol, reason }, remote);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(remote);
            let this = self.clone();
            match &tls {
                None => {
                    tokio::spawn(async move {
                        this.run_connection(stream, slot, protocol, zone, remote, local).await
                    });
                }
                Some(files) => {
                    let acceptor = TlsAcceptor::from(files.config());
                    let handshake_timeout = self.limits.handshake_timeout;
                    // The slot is held through the handshake: a peer that opens connections
                    // and never finishes them is bounded by the caps like any other.
                    tokio::spawn(async move {
                        let reason =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => {
                                    return this
                                        .run_connection(tls, slot, protocol, zone, remote, local)
                                        .await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                    CloseReason::HandshakeFailed
                                }
                                Err(_) => CloseReason::HandshakeTimeout,
                            };
                        drop(slot);
                        this.report(StreamEvent::Closed { protocol, reason }, remote);
                    });
                }
            }
        }
    }

    /// Opens a connection to `remote` (TCP, or TLS through the [`TlsClient`]) and serves it.
    /// Used to reach agents and carriers.
    async fn connect(
        self: &Arc<Self>,
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
    ) -> io::Result<ConnId> {
        let tls = match protocol {
            Transport::Tls => Some(self.tls_client.get().cloned().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("cannot open TLS to {remote}: no TLS client configured"),
                )
            })?),
            _ => None,
        };
        let slot = self.slots.take(None).map_err(|_| {
            io::Error::other(format!(
                "cannot open a connection to {remote}: {} connections are open (--max-connections)",
                self.limits.max_connections
            ))
        })?;
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(remote))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connect to {remote} timed out"))
            })?
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {remote}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let this = self.clone();
        match tls {
            None => {
                let (id, rx) = self.register(protocol, zone, remote);
                tokio::spawn(async move {
                    this.serve_connection(stream, slot, id, rx, protocol, zone, remote, local).await
                });
                Ok(id)
            }
            Some(client) => {
                let stream = client.handshake(stream, remote, deadline).await?;
                let (id, rx) = self.register(protocol, zone, remote);
                tokio::spawn(async move {
                    this.serve_connection(stream, slot, id, rx, protocol, zone, remote, local).await
                });
                Ok(id)
            }
        }
    }

    fn register(
        &self,
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
    ) -> (ConnId, mpsc::Receiver<Vec<u8>>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        if let Ok(mut conns) = self.connections.lock() {
            conns.insert(id, Connection { remote, protocol, zone, tx });
        }
        (id, rx)
    }

    async fn run_connection<S>(
        self: Arc<Self>,
        stream: S,
        slot: Slot,
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (id, rx) = self.register(protocol, zone, remote);
        self.serve_connection(stream, slot, id, rx, protocol, zone, remote, local).await;
    }

    /// Reads, frames and delivers what the peer sends and writes what is queued for it, until
    /// the peer closes or a limit closes it (see the module docs). `slot` is given back at the
    /// end.
    #[allow(clippy::too_many_arguments)]
    async fn serve_connection<S>(
        self: Arc<Self>,
        stream: S,
        slot: Slot,
        id: ConnId,
        mut outgoing: mpsc::Receiver<Vec<u8>>,
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let source = Source { protocol, zone, remote, local, connection: Some(id) };
        let mut framer = Framer::new(MAX_MESSAGE_SIZE);
        let mut chunk = vec![0u8; 16 * 1024];
        let limits = self.limits;
        let mut last_activity = tokio::time::Instant::now();
        // When the first byte of the message being received arrived.
        let mut message_started: Option<tokio::time::Instant> = None;
        let reason = loop {
            let deadline = match message_started {
                Some(started) => started + limits.message_timeout,
                None => last_activity + limits.idle_timeout,
            };
            tokio::select! {
                read = tokio::time::timeout_at(deadline, reader.read(&mut chunk)) => {
                    let n = match read {
                        Err(_) if message_started.is_some() => break CloseReason::MessageTimeout,
                        Err(_) => break CloseReason::IdleTimeout,
                        Ok(Ok(0)) => break CloseReason::PeerClosed,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "read failed");
                            break match e.kind() {
                                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                                    CloseReason::PeerClosed
                                }
                                _ => CloseReason::Error,
                            };
                        }
                        Ok(Ok(n)) => n,
                    };
                    let now = tokio::time::Instant::now();
                    last_activity = now;
                    framer.push(&chunk[..n]);
                    let delivered = match self.drain_frames(&mut framer, &source, &mut writer).await
                    {
                        Ok(delivered) => delivered,
                        Err(reason) => break reason,
                    };
                    message_started = match (framer.in_message(), message_started) {
                        (false, _) => None,
                        // Still the message whose first byte came earlier.
                        (true, Some(started)) if !delivered => Some(started),
                        // The first byte of a new message came in this read.
                        (true, _) => Some(now),
                    };
                }
                out = outgoing.recv() => {
                    let Some(bytes) = out else { break CloseReason::Error };
                    match tokio::time::timeout(limits.write_timeout, writer.write_all(&bytes)).await
                    {
                        Ok(Ok(())) => last_activity = tokio::time::Instant::now(),
                        Ok(Err(_)) => break CloseReason::Error,
                        Err(_) => break CloseReason::WriteTimeout,
                    }
                }
            }
        };
        if let Ok(mut conns) = self.connections.lock() {
            conns.remove(&id);
        }
        // What is still queued will not be sent: its senders learn it now (their `send` fails).
        drop(outgoing);
        drop(slot);
        self.report(StreamEvent::Closed { protocol, reason }, remote);
        if reason != CloseReason::WriteTimeout {
            let _ = tokio::time::timeout(limits.write_timeout, writer.shutdown()).await;
        }
    }

    /// Delivers every whole message the framer has, answering keep-alive pings. Returns whether
    /// a message was delivered, or why the connection must be closed.
    async fn drain_frames<W: AsyncWrite + Unpin>(
        &self,
        framer: &mut Framer,
        source: &Source,
        writer: &mut W,
    ) -> Result<bool, CloseReason> {
        let mut delivered = false;
        while let Some(item) = framer.next_frame() {
            match item {
                Framed::Ping => {
                    let pong = writer.write_all(b"\r\n");
                    match tokio::time::timeout(self.limits.write_timeout, pong).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(CloseReason::Error),
                        Err(_) => return Err(CloseReason::WriteTimeout),
                    }
                }
                Framed::Message(bytes) => {
                    let message = msg::parse(&bytes);
                    self.sink.deliver(Incoming { message, source: *source });
                    delivered = true;
                }
                Framed::Invalid { status, detail } => {
                    // Answer what can be answered, then close: the stream cannot be re-synced.
                    let partial = match msg::parse(framer.pending()) {
                        Ok(Message::Request(r)) => Some(Box::new(r)),
                        Ok(Message::Response(_)) => None,
                        Err(e) => e.partial,
                    };
                    let error = ParseError { status, detail, partial };
                    self.sink.deliver(Incoming { message: Err(error), source: *source });
                    return Err(if status == 513 {
                        CloseReason::TooLarge
                    } else {
                        CloseReason::Unframeable
                    });
                }
            }
        }
        Ok(delivered)
    }

    /// [`Transports::send`] for bytes that are shared (a call's transaction keeps them for
    /// retransmissions): a UDP datagram goes out without a copy.
    pub async fn send_shared(self: &Arc<Self>, target: &Target, bytes: &[u8]) -> io::Result<()> {
        match target.protocol {
            Transport::Udp => {
                let socket = self.udp_socket(target.zone, target.remote)?;
                socket.send_to(bytes, target.remote).await.map(|_| ())
            }
            Transport::Tcp | Transport::Tls => self.send(target, bytes.to_vec()).await,
        }
    }

    /// Sends `bytes` to `target`: UDP from a socket of the target's zone; streams on the given
    /// connection, else on an open connection to the peer, else a new one.
    pub async fn send(self: &Arc<Self>, target: &Target, bytes: Vec<u8>) -> io::Result<()> {
        match target.protocol {
            Transport::Udp => {
                let socket = self.udp_socket(target.zone, target.remote)?;
                socket.send_to(&bytes, target.remote).await.map(|_| ())
            }
            Transport::Tcp | Transport::Tls => {
                let tx = match self.connection_for(target) {
                    Some(tx) => tx,
                    None => self.open_connection(target).await?,
                };
                // A full queue means the peer is not reading: wait at most the write timeout
                // (by then the connection has written something or been closed).
                match tokio::time::timeout(self.limits.write_timeout, tx.send(bytes)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => {
                        Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
                    }
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} does not read what is sent to it", target.remote),
                    )),
                }
            }
        }
    }

    /// Sends `bytes` to a UDP target at once if its socket takes it without waiting; gives the
    /// bytes back otherwise (a stream target, a full socket buffer), for [`Transports::send`].
    /// Stateless answers go this way: no task per 407.
    pub fn try_send_now(&self, target: &Target, bytes: Vec<u8>) -> Result<io::Result<()>, Vec<u8>> {
        if target.protocol != Transport::Udp {
            return Err(bytes);
        }
        let socket = match self.udp_socket(target.zone, target.remote) {
            Ok(socket) => socket,
            Err(e) => return Ok(Err(e)),
        };
        match socket.try_send_to(&bytes, target.remote) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(bytes),
            sent => Ok(sent.map(|_| ())),
        }
    }

    /// A connection to the target's peer: the one another message opened meanwhile, else a
    /// new one (one attempt at a time per peer; a message that waited for an attempt that
    /// failed gets its error).
    async fn open_connection(
        self: &Arc<Self>,
        target: &Target,
    ) -> io::Result<mpsc::Sender<Vec<u8>>> {
        let key = (target.remote, target.protocol, target.zone);
        let gate = {
            let mut gates =
                self.connecting.lock().map_err(|_| io::Error::other("transport lock poisoned"))?;
            gates.entry(key).or_default().clone()
        };
        let asked = tokio::time::Instant::now();
        let opened = {
            let mut failed = gate.lock().await;
            match (self.connection_for(target), &*failed) {
                (Some(tx), _) => Ok(tx),
                (None, Some((at, kind, message))) if *at >= asked => {
                    Err(io::Error::new(*kind, message.clone()))
                }
                (None, _) => {
                    let opened =
                        match self.connect(target.protocol, target.zone, target.remote).await {
                            Ok(id) => self
                                .connection_tx(id)
                                .ok_or_else(|| io::Error::other("connection closed at once")),
                            Err(e) => Err(e),
                        };
                    *failed = opened
                        .as_ref()
                        .err()
                        .map(|e| (tokio::time::Instant::now(), e.kind(), e.to_string()));
                    opened
                }
            }
        };
        if let Ok(mut gates) = self.connecting.lock() {
            // Nobody else holds or waits on this gate: forget it (the map stays small).
            if Arc::strong_count(&gate) == 2 {
                gates.remove(&key);
            }
        }
        opened
    }

    fn udp_socket(&self, zone: Zone, remote: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let udp = self.udp.read().map_err(|_| io::Error::other("transport lock poisoned"))?;
        let family_matches = |l: &&UdpListener| l.local.is_ipv4() == remote.is_ipv4();
        udp.iter()
            .filter(family_matches)
            .find(|l| l.zone == zone)
            .or_else(|| udp.iter().find(family_matches))
            .map(|l| l.socket.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no UDP socket to send from"))
    }

    fn connection_tx(&self, id: ConnId) -> Option<mpsc::Sender<Vec<u8>>> {
        self.connections.lock().ok()?.get(&id).map(|c| c.tx.clone())
    }

    fn connection_for(&self, target: &Target) -> Option<mpsc::Sender<Vec<u8>>> {
        let conns = self.connections.lock().ok()?;
        if let Some(c) = target.connection.and_then(|id| conns.get(&id)) {
            return Some(c.tx.clone());
        }
        conns
            .values()
            .find(|c| {
                c.remote == target.remote && c.protocol == target.protocol && c.zone == target.zone
            })
            .map(|c| c.tx.clone())
    }

    /// Stream connections open now, TLS handshakes in progress included.
    pub fn open_connections(&self) -> usize {
        self.slots.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Collects what the transports deliver.
    struct Collect(std::sync::Mutex<Vec<Incoming>>);

    impl Sink for Collect {
        fn deliver(&self, incoming: Incoming) {
            self.0.lock().expect("lock").push(incoming);
        }
    }

    const OPTIONS: &str = "OPTIONS sip:gw.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKt1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:gw.example>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    async fn tcp_transports(limits: Limits) -> (Arc<Transports>, Arc<Collect>, SocketAddr) {
        let sink = Arc::new(Collect(std::sync::Mutex::new(Vec::new())));
        let transports = Transports::new(sink.clone(), limits);
        let at =
            ListenAddr { protocol: Transport::Tcp, addr: "127.0.0.1:0".parse().expect("addr") };
        let local = transports.listen(at, Zone::Carrier, None).await.expect("listen");
        (transports, sink, local)
    }

    async fn delivered(sink: &Collect, n: usize) -> bool {
        for _ in 0..200 {
            if sink.0.lock().expect("lock").len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn messages_split_across_reads_and_glued_together_are_framed_one_by_one() {
        let (_t, sink, addr) = tcp_transports(Limits::default()).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let two = format!("{OPTIONS}{OPTIONS}");
        let (a, b) = two.as_bytes().split_at(100);
        stream.write_all(a).await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
        stream.write_all(b).await.expect("write");
        assert!(delivered(&sink, 2).await, "two messages expected");
        let got = sink.0.lock().expect("lock");
        assert!(got.iter().all(|i| i.message.is_ok() && i.source.connection.is_some()));
    }

    #[tokio::test]
    async fn a_stream_that_cannot_be_framed_is_answered_and_closed() {
        let (_t, sink, addr) = tcp_transports(Limits::default()).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let no_length = OPTIONS.replace("Content-Length: 0\r\n", "");
        stream.write_all(no_length.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 1).await);
        let status = sink.0.lock().expect("lock")[0].message.as_ref().err().map(|e| e.status);
        assert_eq!(status, Some(400));
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the connection should be closed: {n:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let limits = Limits { idle_timeout: Duration::from_millis(200), ..Limits::default() };
        let (t, _sink, addr) = tcp_transports(limits).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "expected the idle connection closed: {n:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(t.open_connections(), 0);
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused() {
        let limits = Limits { max_connections: 1, ..Limits::default() };
        let (_t, sink, addr) = tcp_transports(limits).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        first.write_all(OPTIONS.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 1).await);
        let mut second = TcpStream::connect(addr).await.expect("the kernel accepts the SYN");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the second connection should be dropped: {n:?}"
        );
    }

    #[tokio::test]
    async fn responses_go_back_on_the_connection_the_request_came_on() {
        let (t, sink, addr) = tcp_transports(Limits::default()).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(OPTIONS.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 1).await);
        let source = sink.0.lock().expect("lock")[0].source;
        t.send(&source.reply_target(), b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec())
            .await
            .expect("send");
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(buf[..n].starts_with(b"SIP/2.0 200 OK"));
    }

    /// The events the transports report.
    fn record_events(t: &Transports) -> Arc<std::sync::Mutex<Vec<StreamEvent>>> {
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        t.on_stream_event(move |e| seen.lock().expect("lock").push(e));
        events
    }

    async fn wait_for_event(events: &std::sync::Mutex<Vec<StreamEvent>>, e: StreamEvent) -> bool {
        for _ in 0..300 {
            if events.lock().expect("lock").contains(&e) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A TCP connection to `addr` from `from` (any port).
    async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind a loopback address");
        socket.connect(addr).await.expect("connect")
    }

    /// Whether the peer closed `stream` within `within` (EOF or reset; anything it sent
    /// before is read and dropped).
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn one_address_over_its_cap_is_refused_while_another_still_connects() {
        let limits = Limits { max_connections_per_address: 2, ..Limits::default() };
        let (t, sink, addr) = tcp_transports(limits).await;
        let events = record_events(&t);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = connect_from([127, 0, 0, 2], addr).await;
            c.write_all(OPTIONS.as_bytes()).await.expect("write");
            held.push(c);
        }
        assert!(delivered(&sink, 2).await, "the first two are served");
        let mut third = connect_from([127, 0, 0, 2], addr).await;
        assert!(closed_within(&mut third, Duration::from_secs(2)).await, "the third is refused");
        let refused =
            StreamEvent::Refused { protocol: Transport::Tcp, reason: Refusal::AddressLimit };
        assert!(wait_for_event(&events, refused).await);
        let mut other = connect_from([127, 0, 0, 3], addr).await;
        other.write_all(OPTIONS.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 3).await, "another address is served");
        assert_eq!(t.open_connections(), 3);
        // A slot given back is free again.
        drop(held.pop());
        let closed =
            StreamEvent::Closed { protocol: Transport::Tcp, reason: CloseReason::PeerClosed };
        assert!(wait_for_event(&events, closed).await);
        let mut again = connect_from([127, 0, 0, 2], addr).await;
        again.write_all(OPTIONS.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 4).await, "a freed slot takes a new connection");
    }

    #[tokio::test]
    async fn a_message_trickled_byte_by_byte_is_cut_at_the_message_deadline() {
        let limits = Limits { message_timeout: Duration::from_millis(600), ..Limits::default() };
        let (t, sink, addr) = tcp_transports(limits).await;
        let events = record_events(&t);
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut cut = None;
        for b in OPTIONS.as_bytes() {
            // Each byte well within the idle timeout: only a deadline on the whole message
            // stops this.
            if stream.write_all(&[*b]).await.is_err() {
                cut = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let closed = StreamEvent::Closed {
                protocol: Transport::Tcp,
                reason: CloseReason::MessageTimeout,
            };
            if events.lock().expect("lock").contains(&closed) {
                cut = Some(started.elapsed());
                break;
            }
        }
        let cut = cut.expect("the trickle was never cut");
        assert!(cut >= Duration::from_millis(550) && cut < Duration::from_secs(2), "{cut:?}");
        assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
        assert!(sink.0.lock().expect("lock").is_empty(), "nothing was delivered");
        assert_eq!(t.open_connections(), 0);
    }

    #[tokio::test]
    async fn keep_alives_and_whole_messages_do_not_run_into_the_message_deadline() {
        let limits = Limits { message_timeout: Duration::from_millis(400), ..Limits::default() };
        let (t, sink, addr) = tcp_transports(limits).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for i in 0..6 {
            stream.write_all(b"\r\n\r\n").await.expect("ping");
            let mut pong = [0u8; 2];
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut pong))
                .await
                .expect("a pong in time")
                .expect("pong");
            assert_eq!(&pong, b"\r\n");
            stream.write_all(OPTIONS.as_bytes()).await.expect("write");
            assert!(delivered(&sink, i + 1).await);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(t.open_connections(), 1, "1 s of traffic, each message whole at once");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_is_cut_at_the_write_timeout_and_sends_to_it_fail() {
        let limits = Limits { write_timeout: Duration::from_millis(500), ..Limits::default() };
        let (t, sink, addr) = tcp_transports(limits).await;
        let events = record_events(&t);
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small receive buffer");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream.write_all(OPTIONS.as_bytes()).await.expect("write");
        assert!(delivered(&sink, 1).await);
        let target = sink.0.lock().expect("lock")[0].source.reply_target();
        // The peer never reads: sends succeed until the kernel's buffers and the queue are
        // full, then the connection is cut and they fail.
        let big = vec![b'x'; 60_000];
        let started = tokio::time::Instant::now();
        let failed = loop {
            match tokio::time::timeout(Duration::from_secs(5), t.send(&target, big.clone())).await {
                Ok(Ok(())) if started.elapsed() < Duration::from_secs(20) => {}
                Ok(Ok(())) => panic!("sends kept succeeding for 20 s"),
                Ok(Err(e)) => break e,
                Err(_) => panic!("a send waited more than 5 s"),
            }
        };
        assert!(
            matches!(failed.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::TimedOut),
            "{failed}"
        );
        let cut =
            StreamEvent::Closed { protocol: Transport::Tcp, reason: CloseReason::WriteTimeout };
        assert!(wait_for_event(&events, cut).await, "{:?}", events.lock().expect("lock"));
        assert_eq!(t.open_connections(), 0);
        drop(stream);
    }

    #[tokio::test]
    async fn a_udp_listener_gets_the_buffers_it_asks_for_as_far_as_the_kernel_allows() {
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let untouched = socket2::SockRef::from(&socket).recv_buffer_size().expect("size");
        let asked = 3 << 20;
        let got = size_udp_buffers(&socket, asked);
        // Root (CAP_NET_ADMIN) gets what it asks; otherwise the sysctl caps it.
        let at_least = |cap: usize| if cap == 0 { asked } else { asked.min(cap) };
        assert!(
            got.receive >= at_least(sysctl("rmem_max")),
            "asked {asked}, got {got:?}, default {untouched}"
        );
        assert!(got.send >= at_least(sysctl("wmem_max")), "{got:?}");
    }

    #[test]
    fn the_log_takes_a_burst_per_window_and_counts_what_it_left_out() {
        let mut log = LogBudget::new();
        let t0 = tokio::time::Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(log.admit(t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(log.admit(t0 + LOG_WINDOW), Some(7), "the next window says what was left out");
        assert_eq!(log.admit(t0 + LOG_WINDOW), Some(0));
    }

    #[test]
    fn an_ipv6_peer_is_capped_by_its_64_and_a_mapped_ipv4_one_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::7".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::7".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert_eq!(address_key(mapped), "192.0.2.9".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn slots_count_both_caps_and_are_given_back_on_drop() {
        let limits =
            Limits { max_connections: 3, max_connections_per_address: 2, ..Limits::default() };
        let slots = Arc::new(Slots {
            limits,
            open: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = slots.take(Some(a)).expect("first");
        let _second = slots.take(Some(a)).expect("second");
        assert_eq!(slots.take(Some(a)).err(), Some(Refusal::AddressLimit));
        let _other = slots.take(Some(b)).expect("another address");
        assert_eq!(slots.take(Some(b)).err(), Some(Refusal::GlobalLimit));
        assert_eq!(slots.take(None).err(), Some(Refusal::GlobalLimit), "ours count too");
        drop(first);
        let _again = slots.take(Some(a)).expect("a slot given back");
        assert_eq!(slots.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn listen_addresses_parse_with_their_transport() {
        let l: ListenAddr = "tls://127.0.0.1:5061".parse().expect("parses");
        assert_eq!(l.protocol, Transport::Tls);
        assert_eq!(l.to_string(), "tls://127.0.0.1:5061");
        assert!("sctp://127.0.0.1:1".parse::<ListenAddr>().is_err());
        assert!("udp://localhost:1".parse::<ListenAddr>().is_err());
        assert!("127.0.0.1:5060".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn listen_addresses_take_ipv6_with_or_without_brackets() {
        for (text, expected) in [
            ("udp://10.0.0.7:5080", "10.0.0.7:5080"),
            ("tcp://[fd00::7]:5080", "[fd00::7]:5080"),
            ("tcp://fd00::7:5080", "[fd00::7]:5080"),
            ("udp://::1:9090", "[::1]:9090"),
        ] {
            let parsed: ListenAddr = text.parse().unwrap();
            assert_eq!(parsed.addr.to_string(), expected, "{text}");
        }
        for bad in ["udp://10.0.0.7", "udp://fd00::7", "udp://10.0.0.7:99999", "udp://x:1"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
