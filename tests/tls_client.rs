//! The transports' TLS client (issue 12, item 4) against a real TLS peer: a rustls server in the
//! test on 127.0.0.1, with certificates from a CA made for the test. What a user sees: a message
//! sent to a peer whose certificate checks out arrives, over one connection that later messages
//! reuse and on which the peer's own requests come back to the gateway; a peer whose certificate
//! does not check out gets nothing, and the error names the peer and what failed (unknown CA,
//! name mismatch, expired, timeout), with the failure counted by reason.
//!
//! Every test is bounded: the client's connect timeout, and a timeout on every wait.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::RootCertStore;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use support::ca::{ServerCert, TestCa};
use support::free_port;
use trunkline::sip::tls_client::{TlsClient, TlsFailure};
use trunkline::sip::transport::{Incoming, Limits, Sink, Target, Transport, Transports, Zone};

const WAIT: Duration = Duration::from_secs(5);

fn options(branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:carrier.example SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{branch}\r\n\
         From: <sip:gw@127.0.0.1>;tag=1\r\nTo: <sip:carrier.example>\r\nCall-ID: {branch}\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// What the transports deliver.
struct Collect(mpsc::UnboundedSender<Incoming>);

impl Sink for Collect {
    fn deliver(&self, incoming: Incoming) {
        let _ = self.0.send(incoming);
    }
}

/// A TLS SIP peer: accepts connections with `cert`, reports every message it reads, and sends
/// one OPTIONS of its own after the first message of a connection.
struct Peer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: mpsc::UnboundedReceiver<String>,
}

impl Peer {
    async fn start(cert: &ServerCert) -> Peer {
        let acceptor = TlsAcceptor::from(cert.server_config());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listener = TcpListener::bind(addr).await.expect("bind the peer");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, received) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut first = true;
                    while let Ok(n) = tls.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let message: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = tx.send(String::from_utf8_lossy(&message).into_owned());
                            if first {
                                first = false;
                                let _ = tls.write_all(&options("peer1")).await;
                            }
                        }
                    }
                });
            }
        });
        Peer { addr, accepted, received }
    }

    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.received.recv()).await.ok().flatten()
    }
}

/// Transports with a TLS client trusting only `ca`, and the failures it counted.
struct Client {
    transports: Arc<Transports>,
    delivered: mpsc::UnboundedReceiver<Incoming>,
    failures: Arc<Mutex<Vec<TlsFailure>>>,
}

impl Client {
    fn trusting(ca: &TestCa, limits: Limits) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA is a trust anchor");
        }
        Client::with(TlsClient::with_roots(roots).expect("client config"), limits)
    }

    fn with(client: TlsClient, limits: Limits) -> Client {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = failures.clone();
        let client = client.on_failure(move |reason| seen.lock().expect("lock").push(reason));
        let (tx, delivered) = mpsc::unbounded_channel();
        let transports = Transports::new(Arc::new(Collect(tx)), limits);
        transports.use_tls_client(Arc::new(client));
        Client { transports, delivered, failures }
    }

    async fn send(&self, to: SocketAddr, bytes: Vec<u8>) -> std::io::Result<()> {
        let target =
            Target { protocol: Transport::Tls, zone: Zone::Carrier, remote: to, connection: None };
        tokio::time::timeout(WAIT, self.transports.send(&target, bytes))
            .await
            .expect("send in time")
    }

    fn failures(&self) -> Vec<TlsFailure> {
        self.failures.lock().expect("lock").clone()
    }
}

#[tokio::test]
async fn a_peer_with_a_certificate_from_the_trusted_ca_gets_the_message_over_one_connection() {
    let ca = TestCa::new("trunkline test CA");
    let mut peer = Peer::start(&ca.issue(&["carrier.test"])).await;
    let mut client = Client::trusting(&ca, Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");

    client.send(peer.addr, options("first")).await.expect("the handshake succeeds");
    let got = peer.next().await.expect("the peer got the first message");
    assert!(got.contains("Call-ID: first"), "{got}");

    // The peer's own request on that connection comes to the gateway like a listener's.
    let incoming = tokio::time::timeout(WAIT, client.delivered.recv())
        .await
        .expect("in time")
        .expect("delivered");
    assert!(incoming.message.is_ok(), "{:?}", incoming.message);
    assert_eq!(incoming.source.protocol, Transport::Tls);
    assert_eq!(incoming.source.remote, peer.addr);
    assert!(incoming.source.connection.is_some());

    client.send(peer.addr, options("second")).await.expect("second message");
    let got = peer.next().await.expect("the peer got the second message");
    assert!(got.contains("Call-ID: second"), "{got}");
    assert_eq!(peer.accepted.load(Ordering::SeqCst), 1, "the connection is reused");
    assert_eq!(client.transports.open_connections(), 1);
    assert!(client.failures().is_empty());
}

#[tokio::test]
async fn an_address_reached_with_no_name_is_checked_against_the_certificates_ip_addresses() {
    let ca = TestCa::new("trunkline test CA");
    let mut peer = Peer::start(&ca.issue(&["127.0.0.1"])).await;
    let client = Client::trusting(&ca, Limits::default());
    client.send(peer.addr, options("by-ip")).await.expect("the IP SAN matches");
    assert!(peer.next().await.is_some_and(|m| m.contains("Call-ID: by-ip")));
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_with_unknown_ca_and_is_counted() {
    let trusted = TestCa::new("trunkline test CA");
    let other = TestCa::new("someone else's CA");
    let mut peer = Peer::start(&other.issue(&["carrier.test"])).await;
    let client = Client::trusting(&trusted, Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");

    let err = client.send(peer.addr, options("x")).await.expect_err("the handshake fails");
    let text = err.to_string();
    assert!(text.contains("unknown CA"), "{text}");
    assert!(text.contains("carrier.test") && text.contains(&peer.addr.to_string()), "{text}");
    assert_eq!(client.failures(), vec![TlsFailure::UnknownCa]);
    assert_eq!(client.transports.open_connections(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), peer.received.recv()).await.is_err(),
        "nothing may reach an unverified peer"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_with_name_mismatch() {
    let ca = TestCa::new("trunkline test CA");
    let peer = Peer::start(&ca.issue(&["other.test"])).await;
    let client = Client::trusting(&ca, Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");

    let err = client.send(peer.addr, options("x")).await.expect_err("the handshake fails");
    assert!(err.to_string().contains("name mismatch"), "{err}");
    assert!(err.to_string().contains("carrier.test"), "{err}");
    assert_eq!(client.failures(), vec![TlsFailure::NameMismatch]);
}

#[tokio::test]
async fn an_address_with_no_name_and_a_certificate_without_that_ip_fails_with_name_mismatch() {
    let ca = TestCa::new("trunkline test CA");
    let peer = Peer::start(&ca.issue(&["carrier.test"])).await;
    let client = Client::trusting(&ca, Limits::default());
    let err = client.send(peer.addr, options("x")).await.expect_err("the handshake fails");
    assert!(err.to_string().contains("name mismatch"), "{err}");
    assert_eq!(client.failures(), vec![TlsFailure::NameMismatch]);
}

#[tokio::test]
async fn an_expired_certificate_fails_with_expired() {
    let ca = TestCa::new("trunkline test CA");
    let peer = Peer::start(&ca.issue_expired(&["carrier.test"])).await;
    let client = Client::trusting(&ca, Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");
    let err = client.send(peer.addr, options("x")).await.expect_err("the handshake fails");
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(client.failures(), vec![TlsFailure::Expired]);
}

#[tokio::test]
async fn a_peer_that_never_answers_the_handshake_times_out_within_the_connect_timeout() {
    let ca = TestCa::new("trunkline test CA");
    // Accepts TCP and says nothing.
    let silent =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], free_port()))).await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let limits = Limits { connect_timeout: Duration::from_millis(300), ..Limits::default() };
    let client = Client::trusting(&ca, limits);
    let started = std::time::Instant::now();
    let err = client.send(addr, options("x")).await.expect_err("times out");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(client.failures(), vec![TlsFailure::Timeout]);
    hold.abort();
}

#[tokio::test]
async fn messages_sent_at_once_to_a_new_peer_share_one_connection() {
    let ca = TestCa::new("trunkline test CA");
    let mut peer = Peer::start(&ca.issue(&["carrier.test"])).await;
    let client = Client::trusting(&ca, Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");
    let (a, b, c) = tokio::join!(
        client.send(peer.addr, options("a")),
        client.send(peer.addr, options("b")),
        client.send(peer.addr, options("c")),
    );
    a.and(b).and(c).expect("all three sent");
    for _ in 0..3 {
        assert!(peer.next().await.is_some(), "the peer got fewer than three messages");
    }
    assert_eq!(peer.accepted.load(Ordering::SeqCst), 1, "one handshake for the three");
}

#[tokio::test]
async fn messages_waiting_for_a_handshake_that_times_out_fail_with_it_not_one_after_another() {
    let ca = TestCa::new("trunkline test CA");
    let silent =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], free_port()))).await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let limits = Limits { connect_timeout: Duration::from_millis(400), ..Limits::default() };
    let client = Client::trusting(&ca, limits);
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        client.send(addr, options("a")),
        client.send(addr, options("b")),
        client.send(addr, options("c")),
    );
    for r in [a, b, c] {
        let err = r.expect_err("no handshake");
        assert!(err.to_string().contains("timed out"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
    assert_eq!(client.failures(), vec![TlsFailure::Timeout], "one attempt, counted once");
    hold.abort();
}

#[tokio::test]
async fn a_changed_tls_ca_file_is_used_for_the_next_connection_without_a_restart() {
    let old = TestCa::new("the CA of last year");
    let new = TestCa::new("the CA of this year");
    let mut peer = Peer::start(&new.issue(&["carrier.test"])).await;
    let dir = support::TempDir::new("tls-ca");
    let file = old.write(dir.path(), "ca.pem");
    let client =
        Client::with(TlsClient::load(Some(&file)).expect("load --tls-ca"), Limits::default());
    client.transports.name_peer(peer.addr, "carrier.test");
    let err = client.send(peer.addr, options("x")).await.expect_err("not trusted yet");
    assert!(err.to_string().contains("unknown CA"), "{err}");

    std::fs::write(&file, new.pem()).expect("rewrite the CA file");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(later))
        .expect("touch the CA file");
    client.send(peer.addr, options("after")).await.expect("trusted after the change");
    assert!(peer.next().await.is_some_and(|m| m.contains("Call-ID: after")));
}
