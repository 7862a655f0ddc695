//! TCP and TLS against hostile peers (issue 15, item 4): the built `trunkline run` with real
//! sockets on 127.0.0.0/8, several source addresses (clients bound to 127.0.0.2, .3, ...).
//!
//! - the per-address cap refuses the next connection from one address while another address
//!   still connects and places a call (sipp over TCP);
//! - a slowloris peer (one byte a second) is cut at the message deadline;
//! - TLS connections that never finish their handshake hold a slot against both caps until the
//!   handshake deadline cuts them;
//! - a peer that sends requests and never reads the answers is cut at the write timeout.
//!
//! Each test is bounded by the gateway's own deadlines (set to seconds by its flags) and by
//! read timeouts on every socket; the refusals and closes are read back from `/metrics` by
//! reason. The framing across reads is property-tested in `src/sip/framer.rs`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::ca::TestCa;
use support::net::TempDir;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

/// A TCP connection to `to` from `from` (any port), with 2 s read and write timeouts.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from((Ipv4Addr::from(from), 0)).into()).expect("bind 127.0.0.x");
    socket.connect_timeout(&to.into(), Duration::from_secs(2)).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(2))).expect("write timeout");
    stream
}

/// Whether the gateway serves `stream`: a keep-alive ping (RFC 5626 §3.5.1) gets its pong.
fn served(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"\r\n\r\n").is_err() {
        return false;
    }
    let mut pong = [0u8; 2];
    stream.read_exact(&mut pong).is_ok() && &pong == b"\r\n"
}

/// How long until the gateway closes `stream` (EOF or reset), reading and dropping whatever it
/// sends; `None` when it is still open after `within`.
fn closed_after(stream: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(since.elapsed()),
        }
        if since.elapsed() > within {
            return None;
        }
    }
}

fn refused(transport: &str, reason: &str) -> String {
    format!(
        r#"trunkline_sip_connections_refused_total{{reason="{reason}",transport="{transport}"}}"#
    )
}

fn closed(transport: &str, reason: &str) -> String {
    format!(
        r#"trunkline_sip_connections_closed_total{{reason="{reason}",transport="{transport}"}}"#
    )
}

#[test]
fn the_per_address_cap_refuses_one_address_while_another_connects_and_places_a_call() {
    let agent_port = free_port();
    let trunk = Trunk::new("local-in")
        .number(NUMBER, "support")
        .allow_address("127.0.0.3/32")
        .destination_udp(agent_port)
        .transports(&["UDP", "TCP"]);
    let specs = Specs::new().with(trunk);
    let options = GatewayOptions::default().arg("--max-connections-per-address").arg("2");
    let gateway = Gateway::start(specs.path(), options);

    let mut held: Vec<TcpStream> =
        (0..2).map(|_| connect_from([127, 0, 0, 2], gateway.tcp())).collect();
    for stream in &mut held {
        assert!(served(stream), "the first two connections from 127.0.0.2 are served");
    }
    let mut third = connect_from([127, 0, 0, 2], gateway.tcp());
    let at = Instant::now();
    let cut = closed_after(&mut third, at, Duration::from_secs(3));
    assert!(cut.is_some_and(|t| t < Duration::from_secs(1)), "the third was not refused: {cut:?}");
    assert!(gateway.wait_metric(&refused("tcp", "address_limit"), 1.0, Duration::from_secs(2)));

    // 127.0.0.3 still connects, and its call goes through while 127.0.0.2 holds its two.
    let agent = uas("agent_answer.xml", agent_port, &[]);
    let carrier = uac(
        "carrier_call.xml",
        gateway.tcp(),
        &["-i", "127.0.0.3", "-t", "t1", "-s", NUMBER, "-d", "200", "-timeout", "15"],
    );
    carrier.assert_success();
    agent.wait().assert_success();
    for stream in &mut held {
        assert!(served(stream), "the held connections are still served");
    }
    assert_eq!(gateway.metric(&refused("tcp", "global_limit")), Some(0.0));
}

#[test]
fn a_slowloris_peer_is_cut_at_the_message_deadline() {
    let specs = Specs::new().with(Trunk::local(NUMBER, free_port()));
    let options = GatewayOptions::default().arg("--message-timeout").arg("3");
    let gateway = Gateway::start(specs.path(), options);
    let mut stream = connect_from([127, 0, 0, 2], gateway.tcp());
    let request = format!(
        "OPTIONS sip:{0} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5999;branch=z9hG4bKslow\r\n\
         From: <sip:slow@127.0.0.2>;tag=1\r\nTo: <sip:{0}>\r\nCall-ID: slow\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        gateway.tcp()
    );
    let started = Instant::now();
    let mut sent = 0;
    // One byte a second, far inside the 300 s idle timeout: only a deadline on the whole
    // message ends this before its last byte (a couple of minutes away).
    let cut = loop {
        if stream.write_all(&request.as_bytes()[sent..=sent]).is_err() {
            break Some(started.elapsed());
        }
        sent += 1;
        if closed_after(&mut stream, Instant::now(), Duration::from_millis(900)).is_some() {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
    };
    let cut = cut.expect("the one-byte-a-second peer still had its connection after 10 s");
    assert!(
        cut >= Duration::from_millis(2500) && cut < Duration::from_secs(6),
        "cut after {cut:?}, the deadline is 3 s"
    );
    assert!(sent < request.len(), "the message was never whole");
    assert!(gateway.wait_metric(&closed("tcp", "message_timeout"), 1.0, Duration::from_secs(2)));
}

/// A CA, a certificate for 127.0.0.1 signed by it, and the gateway flags for a TLS listener
/// presenting it.
struct TlsSetup {
    ca: TestCa,
    dir: TempDir,
    port: u16,
}

impl TlsSetup {
    fn new() -> TlsSetup {
        let ca = TestCa::new("streams test CA");
        let dir = TempDir::new("streams-tls");
        let cert = ca.issue(&["127.0.0.1"]);
        std::fs::write(dir.join("gw.crt"), &cert.cert_pem).expect("write the certificate");
        std::fs::write(dir.join("gw.key"), &cert.key_pem).expect("write the key");
        TlsSetup { ca, dir, port: free_port() }
    }

    fn options(&self, args: &[&str]) -> GatewayOptions {
        let path = |f: &str| self.dir.join(f).to_str().expect("UTF-8 temp path").to_string();
        let mut options = GatewayOptions::default()
            .arg("--listen")
            .arg(&format!("tls://127.0.0.1:{}", self.port))
            .arg("--tls-cert")
            .arg(&path("gw.crt"))
            .arg("--tls-key")
            .arg(&path("gw.key"));
        for a in args {
            options = options.arg(a);
        }
        options
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A whole TLS handshake from `from`, then a keep-alive ping answered over TLS.
    fn handshake_and_ping(&self, from: [u8; 4]) -> Result<(), String> {
        use rustls_pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(self.ca.pem().as_bytes())
            .expect("CA PEM");
        roots.add(ca).expect("add the CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = connect_from(from, self.addr());
        tcp.set_nonblocking(true).expect("nonblocking");
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
            let handshake = connector.connect(name, tcp);
            let mut tls = tokio::time::timeout(Duration::from_secs(3), handshake)
                .await
                .map_err(|_| "the handshake timed out".to_string())?
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(b"\r\n\r\n").await.map_err(|e| e.to_string())?;
            let mut pong = [0u8; 2];
            tokio::time::timeout(Duration::from_secs(2), tls.read_exact(&mut pong))
                .await
                .map_err(|_| "no pong".to_string())?
                .map_err(|e| format!("pong: {e}"))?;
            if &pong == b"\r\n" { Ok(()) } else { Err(format!("pong {pong:?}")) }
        })
    }
}

#[test]
fn tls_handshakes_that_never_finish_hold_slots_against_both_caps_until_their_deadline() {
    let tls = TlsSetup::new();
    let specs = Specs::new().with(Trunk::local(NUMBER, free_port()));
    let options = tls.options(&[
        "--tls-handshake-timeout",
        "2",
        "--max-connections-per-address",
        "1",
        "--max-connections",
        "4",
    ]);
    let gateway = Gateway::start(specs.path(), options);
    let stall = |from: [u8; 4]| (connect_from(from, tls.addr()), Instant::now());
    let refused_at_once = |from: [u8; 4], reason: &str| {
        let mut over = connect_from(from, tls.addr());
        let cut = closed_after(&mut over, Instant::now(), Duration::from_secs(3));
        assert!(
            cut.is_some_and(|t| t < Duration::from_millis(1000)),
            "{from:?} was not refused at once ({reason}): {cut:?}"
        );
        assert!(
            gateway.wait_metric(&refused("tls", reason), 1.0, Duration::from_secs(2)),
            "{reason}"
        );
    };
    // Peers open TLS connections and send nothing: handshakes in progress, which count. A
    // second one from 127.0.0.2 is over its address's cap (1)...
    let mut stalled = vec![stall([127, 0, 0, 2]), stall([127, 0, 0, 3]), stall([127, 0, 0, 4])];
    std::thread::sleep(Duration::from_millis(200));
    refused_at_once([127, 0, 0, 2], "address_limit");
    // ... and with a fourth, one from a fifth address is over the global cap (4).
    stalled.push(stall([127, 0, 0, 5]));
    std::thread::sleep(Duration::from_millis(200));
    refused_at_once([127, 0, 0, 6], "global_limit");
    // The handshake deadline cuts the stalled ones.
    for (stream, opened) in &mut stalled {
        let cut = closed_after(stream, *opened, Duration::from_secs(6));
        assert!(
            cut.is_some_and(|t| t >= Duration::from_millis(1500) && t < Duration::from_secs(4)),
            "a stalled handshake was cut after {cut:?}, the deadline is 2 s"
        );
    }
    assert!(gateway.wait_metric(&closed("tls", "handshake_timeout"), 4.0, Duration::from_secs(2)));
    // Their slots are free again: 127.0.0.2 completes a handshake and is served.
    tls.handshake_and_ping([127, 0, 0, 2]).expect("a whole handshake after the stalled ones");
}

#[test]
fn a_peer_that_never_reads_is_cut_at_the_write_timeout() {
    let specs = Specs::new().with(Trunk::local(NUMBER, free_port()));
    let options = GatewayOptions::default().arg("--write-timeout").arg("2");
    let gateway = Gateway::start(specs.path(), options);
    // A small receive buffer that the peer never reads: the gateway's answers pile up in its
    // own send buffer until a write blocks.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    socket.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).expect("bind 127.0.0.2");
    socket.connect_timeout(&gateway.tcp().into(), Duration::from_secs(2)).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_millis(500))).expect("write timeout");
    // OPTIONS with a 30 KB Via: each answer echoes it (RFC 3261 §8.2.6.2), 30 KB written for
    // 30 KB read.
    let padding = "a".repeat(30_000);
    let started = Instant::now();
    let mut blocked_at = None;
    for i in 0.. {
        let request = format!(
            "OPTIONS sip:{gw} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5999;branch=z9hG4bK{i};pad={padding}\r\n\
             From: <sip:deaf@127.0.0.2>;tag=1\r\nTo: <sip:{gw}>\r\nCall-ID: deaf-{i}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            gw = gateway.tcp()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            // The gateway stopped reading: it is stuck writing to us.
            blocked_at = Some(Instant::now());
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let blocked_at = blocked_at.expect("the gateway kept reading for 15 s");
    assert!(
        gateway.wait_metric(&closed("tcp", "write_timeout"), 1.0, Duration::from_secs(5)),
        "the connection was not cut within 5 s of the gateway's write blocking"
    );
    let cut = blocked_at.elapsed();
    assert!(cut < Duration::from_secs(5), "{cut:?}");
    assert_eq!(gateway.metric(&closed("tcp", "peer_closed")), Some(0.0));
}
