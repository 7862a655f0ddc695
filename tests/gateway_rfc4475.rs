//! RFC 4475 on the wire (issue 17, item 2): the built `trunkline run` on 127.0.0.1 gets each
//! torture message of tests/fixtures/rfc4475 as the RFC defines it, byte for byte, and answers
//! the valid ones as the requests they are (never 400), the invalid ones with 400, and keeps
//! serving. What each message holds is checked by the parser's tests
//! (`src/sip/msg/rfc4475_tests.rs`); here it is the answer a peer gets.
//!
//! The messages' Vias name hosts such as 192.0.2.2 and example.com: the gateway answers a
//! request to the address and port it came from (RFC 3261 §18.2.2, RFC 3581), never to a Via's
//! sent-by, so the answers come back to the test's socket. The trunk allows only 127.0.0.2: the
//! test's source, 127.0.0.1, is an address no trunk allows, so no INVITE here becomes a call.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::net::{self, RawUdp};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/rfc4475/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).expect("every message named here is in tests/fixtures/rfc4475")
}

/// A gateway whose one trunk takes calls from 127.0.0.2 only, and its specs folder (kept for as
/// long as the gateway runs: it watches it). The per-source buckets are widened: each test sends
/// a dozen out-of-dialog requests from one address in a second or two, and what is tested is the
/// answer, not the guard (tests/gateway_guard.rs).
fn start() -> (Gateway, Specs) {
    let trunk = Trunk::new("other-host-in")
        .number("+14155550100", "support")
        .allow_address("127.0.0.2/32")
        .destination_udp(free_port());
    let specs = Specs::new().with(trunk);
    let options = GatewayOptions::default()
        .arg("--source-request-rate")
        .arg("1000")
        .arg("--source-options-rate")
        .arg("1000");
    (Gateway::start(specs.path(), options), specs)
}

/// Sends `name` over UDP and returns the status codes of every answer until one with `code`
/// arrives (or 3 s pass).
fn udp_codes(socket: &RawUdp, gateway: &Gateway, name: &str, code: u16) -> HashSet<u16> {
    let got = socket.exchange(gateway.udp(), &fixture(name), code, Duration::from_secs(3));
    net::status_codes(&got)
}

/// Every valid request of RFC 4475 §3.1.1 and the answer the gateway gives it, with why.
const VALID_REQUESTS: [(&str, u16, &str); 11] = [
    // §3.1.1.1: its To has a tag: a re-INVITE for a dialog the gateway does not have
    // (RFC 3261 §12.2.2).
    ("wsinv", 481, "Call/Transaction Does Not Exist"),
    // §3.1.1.2: a method the gateway does not know (RFC 3261 §8.2.1).
    ("intmeth", 501, "Not Implemented"),
    // §3.1.1.3: a new INVITE from an address no trunk allows.
    ("esc01", 403, "Forbidden"),
    // §3.1.1.4: REGISTER: the gateway is no registrar (the Allow header lists what it takes).
    ("escnull", 405, "Method Not Allowed"),
    // §3.1.1.5: `RE%47IST%45R` is an unknown method, not REGISTER.
    ("esc02", 501, "Not Implemented"),
    // §3.1.1.6, §3.1.1.9, §3.1.1.10: OPTIONS outside a dialog (a carrier's keep-alive).
    ("lwsdisp", 200, "OK"),
    // §3.1.1.7: a new INVITE from an address no trunk allows, refused as such: its top Via has
    // no branch (an RFC 2543 element's), which only an INVITE about to become a call is refused
    // for (400, as tests/gateway_dialog.rs checks).
    ("longreq", 403, "Forbidden"),
    // §3.1.1.8: the REGISTER; the INVITE after it in the datagram is no message of its own.
    ("dblreq", 405, "Method Not Allowed"),
    ("semiuri", 200, "OK"),
    ("transports", 200, "OK"),
    // §3.1.1.11: MESSAGE, with its multipart body.
    ("mpart01", 405, "Method Not Allowed"),
];

#[test]
fn every_valid_torture_request_gets_its_answer_over_udp_and_none_gets_400() {
    let (mut gateway, _specs) = start();
    let socket = RawUdp::bind();
    for (name, code, reason) in VALID_REQUESTS {
        let got = socket.exchange(gateway.udp(), &fixture(name), code, Duration::from_secs(3));
        assert_eq!(net::status_codes(&got), [code].into(), "{name}: {got:#?}");
        let status_line = format!("SIP/2.0 {code} {reason}\r\n");
        assert!(got.iter().all(|a| a.starts_with(&status_line)), "{name}: {got:#?}");
        // The answer is to this request: it carries its Call-ID.
        let call_id = call_id(&fixture(name));
        assert!(got.iter().all(|a| a.contains(&call_id)), "{name}: {got:#?}");
    }
    // dblreq's INVITE, after the REGISTER in the same datagram, got no answer of its own.
    assert_eq!(socket.receive_for(Duration::from_millis(500)), Vec::<String>::new());

    // §3.1.1.12 and §3.1.1.13: responses to nothing the gateway sent, read and dropped.
    socket.send(gateway.udp(), &fixture("unreason"));
    socket.send(gateway.udp(), &fixture("noreason"));
    let responses = "trunkline_sip_messages_total{kind=\"response\",transport=\"UDP\"}";
    assert!(gateway.wait_metric(responses, 2.0, Duration::from_secs(3)), "responses not read");
    assert_eq!(socket.receive_for(Duration::from_millis(300)), Vec::<String>::new());

    let requests = "trunkline_sip_messages_total{kind=\"request\",transport=\"UDP\"}";
    assert_eq!(gateway.metric(requests), Some(VALID_REQUESTS.len() as f64));
    let malformed = "trunkline_sip_messages_total{kind=\"malformed\",transport=\"UDP\"}";
    assert_eq!(gateway.metric(malformed), None, "no torture message counted as malformed");
    assert!(gateway.is_running());
    assert_eq!(gateway.admin_get("/readyz").map(|(s, _)| s), Some(200));
}

/// The messages whose top Via says TCP, sent over one TCP connection, one after the other:
/// each is framed by its Content-Length and answered on the connection.
#[test]
fn the_tcp_torture_requests_get_their_answer_over_tcp() {
    let (gateway, _specs) = start();
    let mut stream = TcpStream::connect(gateway.tcp()).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("a read timeout");
    let mut buffer = Vec::new();
    for (name, code) in [("intmeth", 501), ("esc02", 501), ("longreq", 403)] {
        stream.write_all(&fixture(name)).expect("send");
        let answer = read_message(&mut stream, &mut buffer, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{name}: no answer"));
        assert!(answer.starts_with(&format!("SIP/2.0 {code} ")), "{name}: {answer}");
        assert!(answer.contains(&call_id(&fixture(name))), "{name}: {answer}");
    }
    let requests = "trunkline_sip_messages_total{kind=\"request\",transport=\"TCP\"}";
    assert_eq!(gateway.metric(requests), Some(3.0));
}

/// RFC 4475 §3.1.2 (and §3.3.1): invalid requests a server must refuse get 400, and the
/// gateway goes on answering.
#[test]
fn invalid_torture_requests_still_get_400() {
    let (mut gateway, _specs) = start();
    let socket = RawUdp::bind();
    // §3.1.2.1 extraneous Via separators, §3.1.2.2 Content-Length larger than the datagram,
    // §3.1.2.3 negative Content-Length, §3.1.2.4 overlarge CSeq, §3.3.1 no Call-ID, From, To.
    for name in ["badinv01", "clerr", "ncl", "scalar02", "insuf"] {
        assert_eq!(udp_codes(&socket, &gateway, name, 400), [400].into(), "{name}");
    }
    assert!(gateway.is_running());
    assert_eq!(udp_codes(&socket, &gateway, "lwsdisp", 200), [200].into());
}

/// The value of the first `Call-ID` or `i` header line of a message.
fn call_id(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                .then(|| value.trim().to_string())
        })
        .expect("a Call-ID")
}

/// One whole message from `stream` (its head and `Content-Length` bytes of body), keeping
/// what follows it in `buffer`; `None` when none is whole within `within`.
fn read_message(stream: &mut TcpStream, buffer: &mut Vec<u8>, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let text = String::from_utf8_lossy(&buffer[..head]).into_owned();
            let length = text
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    let name = name.trim();
                    (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buffer.len() >= head + length {
                let message: Vec<u8> = buffer.drain(..head + length).collect();
                return Some(String::from_utf8_lossy(&message).into_owned());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}
