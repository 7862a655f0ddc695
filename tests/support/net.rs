//! Loopback plumbing for the real-peer tests: temporary folders, free ports, a raw HTTP GET and a
//! raw UDP exchange. Nothing here leaves 127.0.0.0/8.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A folder under the system temp dir, removed with everything in it on drop. Set
/// `TRUNKLINE_KEEP_TEST_DIRS=1` to keep it (its path is in the failure output).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos());
        let name = format!(
            "{prefix}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos.unwrap_or(0)
        );
        let path = std::env::temp_dir().join("trunkline-tests").join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TRUNKLINE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The block test ports come from: below the kernel's ephemeral range (32768-60999 by default,
/// where `bind(0)` and outgoing sockets of every other process land) and below the gateways' RTP
/// ports (20000-30000 by default). A port taken from the ephemeral range could be given by the
/// kernel to another test process between our check and the peer's bind; here nobody gets one
/// without asking.
const PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A claim older than this is from a test run that is over.
const CLAIM_LIFETIME: Duration = Duration::from_secs(20 * 60);

/// Ports handed out by this process, never handed out twice (tests of one binary run in threads).
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Claims `port` for this test: not handed out before by this process, and not claimed by
/// another test process (nextest runs tests in parallel processes) in the last
/// [`CLAIM_LIFETIME`]: a file per port under the temp dir, created exclusively.
fn claim(port: u16) -> bool {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if handed.contains(&port) {
        return false;
    }
    let dir = std::env::temp_dir().join("trunkline-tests").join("ports");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(port.to_string());
    let fresh = std::fs::OpenOptions::new().write(true).create_new(true).open(&file).is_ok();
    let stale = !fresh
        && std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > CLAIM_LIFETIME);
    if stale && std::fs::write(&file, b"").is_err() {
        return false;
    }
    if !(fresh || stale) {
        return false;
    }
    handed.push(port);
    true
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind((LOCALHOST, port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind((LOCALHOST, port)).is_ok()
}

/// Ports of [`PORTS`] in an order that differs between processes, so that parallel tests do not
/// all try the same ones first.
fn candidates() -> impl Iterator<Item = u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let len = u32::from(PORTS.end - PORTS.start);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let start = (std::process::id().wrapping_mul(7919) ^ nanos)
        .wrapping_add(NEXT.fetch_add(97, Ordering::Relaxed))
        % len;
    (0..len).map(move |i| PORTS.start + ((start + i) % len) as u16)
}

/// A 127.0.0.1 port that is free for both UDP and TCP right now and claimed for this test. SIP
/// listens on both with one number, and so does sipp with `-t t1`.
pub fn free_port() -> u16 {
    candidates()
        .find(|&port| udp_free(port) && tcp_free(port) && claim(port))
        .expect("no free 127.0.0.1 port for UDP and TCP in the test block")
}

/// A UDP port P with P+2 also free: sipp's media port (`-mp`) binds both (audio and video).
pub fn free_media_port() -> u16 {
    candidates()
        .filter(|&port| port + 2 < PORTS.end)
        .find(|&port| udp_free(port) && udp_free(port + 2) && claim(port) && claim(port + 2))
        .expect("no free 127.0.0.1 UDP port pair in the test block")
}

/// Waits until something (a sipp we started) has bound `port` on `ip`, seen as our own bind
/// failing with "address in use". `tcp` checks the TCP port, else the UDP one.
pub fn wait_bound(ip: Ipv4Addr, port: u16, tcp: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let in_use = if tcp {
            matches!(TcpListener::bind((ip, port)), Err(e) if e.kind() == ErrorKind::AddrInUse)
        } else {
            matches!(UdpSocket::bind((ip, port)), Err(e) if e.kind() == ErrorKind::AddrInUse)
        };
        if in_use {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over a raw HTTP/1.1 connection (no client library): the status code and the body,
/// or `None` when the server does not answer within 2 s.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    // A server that keeps the connection open despite `Connection: close` ends in a timeout;
    // whatever arrived until then is the answer.
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A UDP socket on 127.0.0.1 (or another loopback address) for hand-made SIP datagrams.
pub struct RawUdp {
    socket: UdpSocket,
}

impl RawUdp {
    pub fn bind() -> RawUdp {
        RawUdp::bind_ip(LOCALHOST)
    }

    /// A socket on another loopback address (`127.0.0.2`...): a second host as the gateway
    /// sees it (a spoofer beside the carrier at 127.0.0.1).
    pub fn bind_ip(ip: Ipv4Addr) -> RawUdp {
        assert!(ip.is_loopback(), "test sockets stay on 127.0.0.0/8, not {ip}");
        let socket = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        RawUdp { socket }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }

    pub fn send(&self, to: SocketAddr, datagram: &[u8]) {
        self.socket.send_to(datagram, to).expect("send a UDP datagram on loopback");
    }

    /// Every datagram that arrives within `window`, as text.
    pub fn receive_for(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            self.socket.set_read_timeout(Some(left)).expect("set a read timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return got;
                }
                // ICMP port unreachable from an earlier send shows up here on Linux; keep going.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Sends `datagram` and waits up to `window` for a response whose status line starts with
    /// `SIP/2.0 {code}`; returns every datagram received until then (or until the window ends).
    pub fn exchange(
        &self,
        to: SocketAddr,
        datagram: &[u8],
        code: u16,
        window: Duration,
    ) -> Vec<String> {
        self.send(to, datagram);
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let prefix = format!("SIP/2.0 {code}");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = self.receive_for(left.min(Duration::from_millis(200)));
            let done = batch.iter().any(|m| m.starts_with(&prefix));
            got.extend(batch);
            if done {
                break;
            }
        }
        got
    }
}

/// The distinct status codes of SIP responses in `messages`.
pub fn status_codes(messages: &[String]) -> HashSet<u16> {
    messages
        .iter()
        .filter_map(|m| m.strip_prefix("SIP/2.0 "))
        .filter_map(|rest| rest.get(..3)?.parse().ok())
        .collect()
}
