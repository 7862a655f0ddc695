//! OPTIONS health of OutboundTrunks on the wire (issue 12, item 6): the built `trunkline run`
//! probes a carrier on 127.0.0.1 (a small UDP responder in this file that answers OPTIONS with
//! 200, as a carrier's SBC would), and `/metrics` shows `trunkline_outbound_reachable` go
//! 1 → 0 when the carrier stops answering (3 probes in a row time out) → 1 when it answers
//! again, and the series go with the trunk.
//!
//! The interval is the CRD's minimum, 5 s (a probe times out after half of it, 2.5 s), so the
//! test takes about 20 s and at most ~30 s: one probe within a second of start, three missed
//! probes (≤ 3 × 5.75 s + 2.5 s), one answered (≤ 5.75 s). Every wait is bounded and the
//! gateway and the responder stop on drop.

mod support;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{Gateway, GatewayOptions, Specs, free_port};

const SERIES: &str = r#"trunkline_outbound_reachable{trunk="voice/carrier-out"}"#;

/// A carrier that answers every OPTIONS with 200 OK until dropped, keeping what it received.
struct Carrier {
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Carrier {
    fn start(port: u16, received: Arc<Mutex<Vec<String>>>) -> Carrier {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the carrier's port");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, log) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_535];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with("OPTIONS ") {
                    let _ = socket.send_to(answer(&text).as_bytes(), from);
                }
                log.lock().unwrap_or_else(PoisonError::into_inner).push(text);
            }
        });
        Carrier { stop, received, thread: Some(thread) }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// 200 OK to an OPTIONS (RFC 3261 §8.2.6): its Via, From, Call-ID and CSeq, To with a tag.
fn answer(request: &str) -> String {
    let h = |name| header(request, name).unwrap_or_default();
    format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=carrier\r\nCall-ID: {}\r\n\
         CSeq: {}\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nContent-Length: 0\r\n\r\n",
        h("Via"),
        h("From"),
        h("To"),
        h("Call-ID"),
        h("CSeq")
    )
}

/// Polls `/metrics` until `sample` has exactly `value` (`None`: no such series), for at most
/// `within`; how long it took.
fn wait_for(gw: &Gateway, value: Option<f64>, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if gw.admin_get("/metrics").is_some_and(|(s, _)| s == 200) && gw.metric(SERIES) == value {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outbound_trunk(port: u16) -> String {
    format!(
        "apiVersion: trunkline.dev/v1alpha1\nkind: OutboundTrunk\n\
         metadata: {{name: carrier-out, namespace: voice}}\n\
         spec:\n  host: 127.0.0.1\n  port: {port}\n  transport: UDP\n  callerId: \"+14155550100\"\n  \
         healthCheck: {{intervalSeconds: 5}}\n"
    )
}

#[test]
fn the_reachable_gauge_follows_a_carrier_that_stops_and_comes_back() {
    let carrier_port = free_port();
    let specs = Specs::new();
    specs.write("carrier-out.yaml", &outbound_trunk(carrier_port));
    let received = Arc::new(Mutex::new(Vec::new()));
    let carrier = Carrier::start(carrier_port, received.clone());
    let gw = Gateway::start(specs.path(), GatewayOptions::default());

    // The first probe goes within a second of start; the carrier answers.
    let up = wait_for(&gw, Some(1.0), Duration::from_secs(5));
    assert!(up.is_some(), "not reachable within 5 s; /metrics has {:?}", gw.metric(SERIES));
    let options = carrier.received();
    let probe = options.first().expect("the carrier got an OPTIONS");
    let first_line = probe.lines().next().unwrap_or_default();
    assert_eq!(first_line, format!("OPTIONS sip:127.0.0.1:{carrier_port} SIP/2.0"));
    assert_eq!(header(probe, "Max-Forwards"), Some("70"));
    let via = header(probe, "Via").unwrap_or_default();
    let ours = format!("SIP/2.0/UDP {};branch=z9hG4bK", gw.udp());
    assert!(via.starts_with(&ours), "Via {via:?}: our carrier-facing address");
    assert!(header(probe, "User-Agent").is_some_and(|ua| ua.starts_with("trunkline/")));
    assert_eq!(header(probe, "CSeq"), Some("1 OPTIONS"));
    let status = gw.admin_get("/v1/status").map(|(_, body)| body).unwrap_or_default();
    assert!(
        status.contains(r#""voice/carrier-out":{"reachable":true"#)
            && status.contains(r#""detail":"200 OK","lastStatus":200"#),
        "{status}"
    );

    // The carrier goes silent: 3 probes time out, and only then the gauge says 0.
    drop(carrier);
    let down = wait_for(&gw, Some(0.0), Duration::from_secs(25));
    assert!(down.is_some(), "not unreachable within 25 s: {:?}", gw.metric(SERIES));
    assert!(down >= Some(Duration::from_secs(8)), "3 misses take two intervals at least: {down:?}");
    let log = gw.log_text();
    assert!(
        log.contains("OutboundTrunk voice/carrier-out is unreachable")
            && log.contains("the last with timeout"),
        "no warning with the reason in the log:\n{log}"
    );

    // It answers again: one answer brings it back.
    let carrier = Carrier::start(carrier_port, received.clone());
    let back = wait_for(&gw, Some(1.0), Duration::from_secs(8));
    assert!(back.is_some(), "not reachable again within 8 s: {:?}", gw.metric(SERIES));
    assert!(gw.log_text().contains("OutboundTrunk voice/carrier-out is reachable again"));
    // Every probe had its own Call-ID and branch (a retransmission shares both).
    let all = carrier.received();
    let ids: std::collections::BTreeSet<(&str, &str)> = all
        .iter()
        .chain(options.iter())
        .filter_map(|r| Some((header(r, "Call-ID")?, header(r, "Via")?)))
        .collect();
    let call_ids: std::collections::BTreeSet<&str> = ids.iter().map(|(c, _)| *c).collect();
    assert!(call_ids.len() >= 2 && call_ids.len() == ids.len(), "{ids:?}");

    // The trunk goes from the specs: its series goes too.
    specs.remove("carrier-out.yaml");
    let gone = wait_for(&gw, None, Duration::from_secs(5));
    assert!(gone.is_some(), "the series stayed: {:?}", gw.metric(SERIES));
    drop(carrier);
}

#[test]
fn run_logs_the_address_outbound_calls_leave_from() {
    let specs = Specs::new();
    specs.write("carrier-out.yaml", &outbound_trunk(free_port()));
    let gw = Gateway::start(specs.path(), GatewayOptions::default());
    let log = gw.log_text();
    // The harness passes --public-address 127.0.0.1: what the carrier sees.
    assert!(
        log.contains("OutboundTrunk voice/carrier-out: calls to 127.0.0.1 leave from 127.0.0.1"),
        "{log}"
    );
}
