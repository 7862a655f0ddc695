//! Per-source protection before authentication (issue 15 item 3), on a real gateway with peers
//! on distinct loopback addresses (127.0.0.2 .. 127.0.0.20 are the attackers, 127.0.0.1 the
//! carrier): a flooding address is dropped unanswered while others are answered; an address
//! that keeps answering challenges wrongly is locked out (silence); a digest answer made for
//! another Request-URI is refused with its rule named; refusal logs are summarised; and a real
//! carrier's calls (sipp) go on while its username is guessed from nineteen other addresses.

#![allow(clippy::panic)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use md5::Md5;
use sha2::Digest;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";
/// Not on any trunk: a call that passed authentication is refused 404 for it.
const OTHER_NUMBER: &str = "+14155550199";
const USERNAME: &str = "acme";
const PASSWORD: &str = "s3cret-acme";
const REALM: &str = "trunkline";

fn digest_trunk(agent_port: u16) -> Trunk {
    Trunk::new("acme-in")
        .number(NUMBER, "support")
        .digest(USERNAME, PASSWORD)
        .destination_udp(agent_port)
        .transports(&["UDP"])
}

fn start(specs: &Specs, args: &[&str]) -> Gateway {
    let options = args.iter().fold(GatewayOptions::default(), |o, a| o.arg(a));
    Gateway::start(specs.path(), options)
}

/// A SIP peer driven by hand over UDP from 127.0.0.`last`.
struct Peer {
    socket: UdpSocket,
    gateway: SocketAddr,
}

impl Peer {
    fn at(last: u8, gateway: SocketAddr) -> Peer {
        let socket = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, last), 0)).expect("bind 127.0.0.x");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        Peer { socket, gateway }
    }

    fn request_uri(&self, number: &str) -> String {
        format!("sip:{number}@{}", self.gateway)
    }

    /// A new out-of-dialog request (its own Call-ID and branch), with these extra headers.
    fn request(&self, method: &str, number: &str, extra: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let me = self.socket.local_addr().expect("addr");
        let uri = self.request_uri(number);
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKguard{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=g{n}\r\nTo: <{uri}>\r\n\
             Call-ID: guard-{n}@{me}\r\nCSeq: 1 {method}\r\nContact: <sip:x@{me}>\r\n{extra}\
             Content-Length: 0\r\n\r\n"
        )
    }

    fn send(&self, text: &str) {
        self.socket.send_to(text.as_bytes(), self.gateway).expect("send");
    }

    /// Final responses (not 1xx) received within `window`.
    fn finals_for(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !text.starts_with("SIP/2.0 1") {
                    got.push(text);
                }
            }
        }
        got
    }

    /// Sends `text` and waits up to `within` for its final response.
    fn ask(&self, text: &str, within: Duration) -> Option<String> {
        self.send(text);
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
                    return Some(text);
                }
            }
        }
        None
    }

    /// INVITE without credentials: the nonce of the MD5 challenge, or `None` when unanswered.
    fn challenge(&self, number: &str) -> Option<String> {
        let answer = self.ask(&self.request("INVITE", number, ""), Duration::from_secs(1))?;
        assert!(answer.starts_with("SIP/2.0 407"), "expected a challenge:\n{answer}");
        Some(nonce_of(&answer))
    }

    /// INVITE answering `nonce` for `number`, the digest computed for `uri` with `password`.
    fn answer(&self, number: &str, nonce: &str, uri: &str, password: &str) -> Option<String> {
        let header = authorization(nonce, uri, password);
        let text = self.request("INVITE", number, &format!("Proxy-Authorization: {header}\r\n"));
        self.ask(&text, Duration::from_secs(1))
    }
}

fn nonce_of(challenge: &str) -> String {
    let line = challenge
        .lines()
        .find(|l| l.starts_with("Proxy-Authenticate:") && l.contains("algorithm=MD5"))
        .unwrap_or_else(|| panic!("no MD5 challenge in\n{challenge}"));
    let start = line.find("nonce=\"").expect("a nonce") + 7;
    let end = line[start..].find('"').expect("a closing quote") + start;
    line[start..end].to_string()
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `Digest ...` for INVITE, MD5, qop=auth, as a client computes it (RFC 7616 §3.4.1).
fn authorization(nonce: &str, uri: &str, password: &str) -> String {
    let (cnonce, nc) = ("0a4f113b", "00000001");
    let ha1 = md5_hex(&format!("{USERNAME}:{REALM}:{password}"));
    let ha2 = md5_hex(&format!("INVITE:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{USERNAME}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", nc={nc}, qop=auth"
    )
}

fn status(response: &str) -> u16 {
    response.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_flooding_address_is_dropped_unanswered_and_another_address_is_still_answered() {
    let specs = Specs::new().with(digest_trunk(free_port()));
    let gateway = start(
        &specs,
        &["--source-invite-rate", "5", "--source-options-rate", "2", "--source-request-rate", "1"],
    );
    let flooder = Peer::at(5, gateway.udp());
    for _ in 0..60 {
        flooder.send(&flooder.request("INVITE", NUMBER, ""));
    }
    let answered = flooder.finals_for(Duration::from_millis(1500));
    // Two seconds' worth of 5/s, and what the bucket refilled while the datagrams went out.
    assert!(
        (10..=14).contains(&answered.len()),
        "{} of 60 INVITEs answered from one address",
        answered.len()
    );
    assert!(answered.iter().all(|a| status(a) == 407), "{answered:?}");

    let other = Peer::at(6, gateway.udp());
    assert!(other.challenge(NUMBER).is_some(), "another address is still challenged");

    let prober = Peer::at(7, gateway.udp());
    for _ in 0..40 {
        prober.send(&prober.request("OPTIONS", NUMBER, ""));
    }
    let options = prober.finals_for(Duration::from_millis(1500));
    assert!((4..=7).contains(&options.len()), "{} of 40 OPTIONS answered", options.len());

    let scanner = Peer::at(8, gateway.udp());
    for _ in 0..40 {
        scanner.send(&scanner.request("REGISTER", NUMBER, ""));
    }
    let registers = scanner.finals_for(Duration::from_millis(1500));
    assert!((2..=4).contains(&registers.len()), "{} of 40 REGISTERs answered", registers.len());

    for (reason, at_least) in
        [("source_invite_rate", 46.0), ("source_options_rate", 33.0), ("source_request_rate", 36.0)]
    {
        let sample = format!("trunkline_guard_dropped_total{{reason=\"{reason}\"}}");
        let dropped = gateway.metric(&sample).unwrap_or(0.0);
        assert!(dropped >= at_least, "{sample} = {dropped}");
    }
    assert!(gateway.metric("trunkline_guard_sources").unwrap_or(0.0) >= 4.0);
}

#[test]
fn after_five_wrong_answers_an_address_gets_silence_and_others_are_still_challenged() {
    let specs = Specs::new().with(digest_trunk(free_port()));
    let gateway = start(&specs, &[]);
    let attacker = Peer::at(9, gateway.udp());
    let uri = attacker.request_uri(NUMBER);
    for guess in 0..5 {
        let nonce = attacker.challenge(NUMBER).expect("challenged before the lockout");
        let refused = attacker
            .answer(NUMBER, &nonce, &uri, &format!("guess-{guess}"))
            .expect("a wrong answer is answered");
        assert_eq!(status(&refused), 403, "{refused}");
    }
    for _ in 0..3 {
        let silence = attacker.ask(&attacker.request("INVITE", NUMBER, ""), Duration::from_secs(1));
        assert_eq!(silence, None, "a locked-out address gets no answer");
    }
    let options = attacker.ask(&attacker.request("OPTIONS", NUMBER, ""), Duration::from_secs(1));
    assert_eq!(options, None, "nor to anything else");

    let other = Peer::at(10, gateway.udp());
    let nonce = other.challenge(NUMBER).expect("another address is challenged");
    let uri = other.request_uri(NUMBER);
    let wrong = other.answer(NUMBER, &nonce, &uri, "guess").expect("answered");
    assert_eq!(status(&wrong), 403);

    assert_eq!(gateway.metric("trunkline_guard_lockouts_total"), Some(1.0));
    assert!(
        gateway.metric("trunkline_guard_dropped_total{reason=\"locked_out\"}").unwrap_or(0.0)
            >= 4.0
    );
    let log = gateway.log_text();
    assert!(log.contains("source locked out"), "{log}");
    assert!(!log.contains("guess-"), "no password guess is logged");
}

#[test]
fn a_digest_answer_made_for_another_request_uri_is_refused_with_the_rule_named() {
    let specs = Specs::new().with(digest_trunk(free_port()));
    let gateway = start(&specs, &[]);
    let peer = Peer::at(11, gateway.udp());

    // The right password, for the Request-URI: authentication passes, and the number (on no
    // trunk) is what refuses it.
    let nonce = peer.challenge(OTHER_NUMBER).expect("challenged");
    let uri = peer.request_uri(OTHER_NUMBER);
    let passed = peer.answer(OTHER_NUMBER, &nonce, &uri, PASSWORD).expect("answered");
    assert_eq!(status(&passed), 404, "{passed}");

    // The same right password, computed for another number than the one dialed.
    let nonce = peer.challenge(OTHER_NUMBER).expect("challenged");
    let elsewhere = peer.request_uri(NUMBER);
    let refused = peer.answer(OTHER_NUMBER, &nonce, &elsewhere, PASSWORD).expect("answered");
    assert_eq!(status(&refused), 403, "{refused}");
    let warning = refused.lines().find(|l| l.starts_with("Warning:")).unwrap_or_default();
    assert!(warning.contains("DigestUriMismatch"), "{refused}");
    assert_eq!(gateway.metric("trunkline_auth_failures_total{reason=\"uri_mismatch\"}"), Some(1.0));
    assert_eq!(
        gateway
            .metric("trunkline_inbound_refusals_total{rule=\"DigestUriMismatch\",status=\"403\"}"),
        Some(1.0)
    );
}

#[test]
fn refusals_are_logged_once_per_interval_with_the_count_left_out() {
    // Calls only from 127.0.0.1: any other address is refused SourceNotAllowed (403).
    let specs = Specs::new().with(Trunk::local(NUMBER, free_port()));
    let gateway = start(&specs, &["--refusal-log-interval", "2"]);
    let peer = Peer::at(12, gateway.udp());
    for _ in 0..30 {
        peer.send(&peer.request("INVITE", NUMBER, ""));
    }
    let refused = peer.finals_for(Duration::from_millis(1000));
    assert_eq!(refused.len(), 30, "every refusal is still answered");
    assert!(refused.iter().all(|r| status(r) == 403));
    std::thread::sleep(Duration::from_millis(1200));
    let last = peer.ask(&peer.request("INVITE", NUMBER, ""), Duration::from_secs(1));
    assert_eq!(last.as_deref().map(status), Some(403));

    let log = gateway.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("INVITE refused")).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].contains("suppressed=29"), "{lines:#?}");
}

#[test]
fn the_carrier_calls_on_while_its_username_is_guessed_from_nineteen_other_addresses() {
    let agent_port = free_port();
    let specs = Specs::new().with(digest_trunk(agent_port));
    let gateway = start(&specs, &[]);
    let agent = uas("agent_answer.xml", agent_port, &["-m", "11", "-timeout", "60"]);
    let auth_uri = format!("{NUMBER}@{}", gateway.addr());
    let carrier = |calls: &str, rate: &str| {
        let args = [
            "-i",
            "127.0.0.1",
            "-s",
            NUMBER,
            "-au",
            USERNAME,
            "-ap",
            PASSWORD,
            "-auth_uri",
            &auth_uri,
            "-m",
            calls,
            "-r",
            rate,
            "-d",
            "200",
            "-timeout",
            "40",
        ];
        uac("carrier_call_digest.xml", gateway.udp(), &args)
    };
    // The carrier's first call makes its address known-good.
    carrier("1", "1").assert_success();

    let udp = gateway.udp();
    let attack_for = Duration::from_secs(8);
    let attackers: Vec<_> = (2u8..=20)
        .map(|last| {
            std::thread::spawn(move || {
                let peer = Peer::at(last, udp);
                let uri = peer.request_uri(NUMBER);
                let end = Instant::now() + attack_for;
                let (mut refused, mut other, mut guess) = (0u32, Vec::new(), 0u32);
                while Instant::now() < end {
                    let Some(nonce) = peer.challenge(NUMBER) else { continue };
                    guess += 1;
                    match peer.answer(NUMBER, &nonce, &uri, &format!("guess-{guess}")) {
                        Some(r) if status(&r) == 403 => refused += 1,
                        Some(r) => other.push(r),
                        None => {}
                    }
                }
                (IpAddr::from([127, 0, 0, last]), refused, other)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let calls = carrier("10", "2");
    let results: Vec<_> = attackers.into_iter().map(|a| a.join().expect("attacker")).collect();
    calls.assert_success();
    agent.wait().assert_success();

    for (address, refused, other) in &results {
        assert!(*refused <= 5, "{address} had {refused} guesses checked: it was not stopped");
        assert!(other.is_empty(), "{address} got more than 403s: {other:?}");
    }
    let throttled = gateway
        .metric("trunkline_guard_dropped_total{reason=\"username_throttled\"}")
        .unwrap_or(0.0);
    let lockouts = gateway.metric("trunkline_guard_lockouts_total").unwrap_or(0.0);
    assert!(throttled + lockouts > 0.0, "throttled {throttled}, lockouts {lockouts}");
    assert_eq!(
        gateway.metric("trunkline_calls_total{direction=\"inbound\",outcome=\"answered\",trunk=\"voice/acme-in\"}"),
        Some(11.0)
    );
}
