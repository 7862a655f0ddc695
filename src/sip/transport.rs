//! SIP transports (RFC 3261 §18): UDP sockets, TCP and TLS listeners and connections. Each
//! received datagram or stream frame is parsed here (so parsing runs on every core) and handed
//! to one [`Sink`] with where it came from; sending goes through [`Transports::send`].
//!
//! Streams are framed by `Content-Length` (`msg::frame`); a connection is closed when it sends a
//! message over [`MAX_MESSAGE_SIZE`](super::msg::MAX_MESSAGE_SIZE), when it cannot be framed,
//! or after [`Limits::idle_timeout`] without a byte. At most [`Limits::max_connections`]
//! connections are open at once; more are refused at accept. Connections are reused: responses
//! go back on the connection the request came on, requests to a peer go on an open connection
//! to it when there is one (RFC 3261 §18.1.1 / §18.2.2).
//!
//! Connections the gateway opens itself (to a carrier or an agent runtime) are TCP, or TLS
//! through [`TlsClient`] (server name and certificate check: see `sip::tls_client`); connect and
//! handshake together take at most [`Limits::connect_timeout`]. Once open they are served like
//! accepted ones: later messages to the peer reuse them and the peer's requests on them are
//! delivered to the [`Sink`].
//!
//! Called by the gateway (`call::gateway`), which owns the listeners, and by the B2BUA, which
//! sends.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::msg::{self, Frame, MAX_MESSAGE_SIZE, Message, ParseError};
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

/// Bounds on what peers can make the transports hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
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

/// Every socket and connection of the gateway.
pub struct Transports {
    udp: Mutex<Vec<(Zone, Arc<UdpSocket>)>>,
    connections: Mutex<HashMap<ConnId, Connection>>,
    next_conn: AtomicU64,
    open: Arc<AtomicUsize>,
    limits: Limits,
    sink: Arc<dyn Sink>,
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
            udp: Mutex::new(Vec::new()),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            open: Arc::new(AtomicUsize::new(0)),
            limits,
            sink,
            tls_client: OnceLock::new(),
            connecting: Mutex::new(HashMap::new()),
        })
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
                if let Ok(mut udp) = self.udp.lock() {
                    udp.push((zone, socket.clone()));
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
            self.sink.deliver(Incoming { message: msg::parse(data), source });
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
            if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
                tracing::warn!(%remote, limit = self.limits.max_connections, "connection refused: limit reached");
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(remote);
            let this = self.clone();
            match &tls {
                None => {
                    tokio::spawn(async move {
                        this.run_connection(stream, protocol, zone, remote, local).await
                    });
                }
                Some(files) => {
                    let acceptor = TlsAcceptor::from(files.config());
                    let handshake_timeout = self.limits.connect_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => {
                                this.run_connection(tls, protocol, zone, remote, local).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
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
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(io::Error::other("connection limit reached"));
        }
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
                    this.serve_connection(stream, id, rx, protocol, zone, remote, local).await
                });
                Ok(id)
            }
            Some(client) => {
                let stream = client.handshake(stream, remote, deadline).await?;
                let (id, rx) = self.register(protocol, zone, remote);
                tokio::spawn(async move {
                    this.serve_connection(stream, id, rx, protocol, zone, remote, local).await
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
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (id, rx) = self.register(protocol, zone, remote);
        self.serve_connection(stream, id, rx, protocol, zone, remote, local).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve_connection<S>(
        self: Arc<Self>,
        stream: S,
        id: ConnId,
        mut outgoing: mpsc::Receiver<Vec<u8>>,
        protocol: Transport,
        zone: Zone,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.open.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let source = Source { protocol, zone, remote, local, connection: Some(id) };
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16 * 1024];
        let idle = self.limits.idle_timeout;
        loop {
            tokio::select! {
                read = tokio::time::timeout(idle, reader.read(&mut chunk)) => {
                    let n = match read {
                        Ok(Ok(0)) | Err(_) => break,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "read failed");
                            break;
                        }
                        Ok(Ok(n)) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if !self.drain_frames(&mut buf, &source, &mut writer).await {
                        break;
                    }
                }
                out = outgoing.recv() => {
                    let Some(bytes) = out else { break };
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            }
        }
        if let Ok(mut conns) = self.connections.lock() {
            conns.remove(&id);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        let _ = writer.shutdown().await;
    }

    /// Cuts every whole message from the front of `buf`. Returns false when the connection
    /// must be closed.
    async fn drain_frames<W: AsyncWrite + Unpin>(
        &self,
        buf: &mut Vec<u8>,
        source: &Source,
        writer: &mut W,
    ) -> bool {
        loop {
            match msg::frame(buf, MAX_MESSAGE_SIZE) {
                Frame::Incomplete => return true,
                Frame::KeepAlive(n) => {
                    if buf.get(..n) == Some(b"\r\n\r\n") && writer.write_all(b"\r\n").await.is_err()
                    {
                        return false;
                    }
                    buf.drain(..n);
                }
                Frame::Message(n) => {
                    let message = msg::parse(&buf[..n]);
                    buf.drain(..n);
                    self.sink.deliver(Incoming { message, source: *source });
                }
                Frame::Invalid(status, detail) => {
                    // Answer what can be answered, then close: the stream cannot be re-synced.
                    let partial = match msg::parse(buf) {
                        Ok(Message::Request(r)) => Some(Box::new(r)),
                        Ok(Message::Response(_)) => None,
                        Err(e) => e.partial,
                    };
                    let error = ParseError { status, detail, partial };
                    self.sink.deliver(Incoming { message: Err(error), source: *source });
                    return false;
                }
            }
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
                tx.send(bytes)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
            }
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
        let udp = self.udp.lock().map_err(|_| io::Error::other("transport lock poisoned"))?;
        let family_matches =
            |s: &Arc<UdpSocket>| s.local_addr().is_ok_and(|l| l.is_ipv4() == remote.is_ipv4());
        udp.iter()
            .find(|(z, s)| *z == zone && family_matches(s))
            .or_else(|| udp.iter().find(|(_, s)| family_matches(s)))
            .map(|(_, s)| s.clone())
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

    /// Stream connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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
