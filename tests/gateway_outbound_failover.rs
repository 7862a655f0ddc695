//! Failover between an OutboundTrunk's hosts (issue 17, item 4) on the wire: the built
//! `trunkline run` with a trunk of two carrier hosts on 127.0.0.1 (the first of priority 0, the
//! second of priority 1), the agent runtime and the carriers played by sipp. The first host is
//! down — answering 503, or with nothing listening at all — and the agent's call is answered by
//! the second, the agent hearing one 100 Trying and the 200 (never the 503). Every sipp run
//! has its own timeout; the gateway stops on drop. Then, with OPTIONS probes on, a first host
//! that does not answer them is left out of rotation (calls go straight to the second), and
//! calls return to it once its probes succeed again.

mod support;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::sipp::{outbound_agent_args, uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, free_port};

const TO: &str = "+14155550142";

fn agent_args(trunk: &str) -> Vec<&str> {
    outbound_agent_args(TO, trunk, &[])
}

const ANSWERED: &str =
    r#"trunkline_calls_total{direction="outbound",outcome="answered",trunk="voice/carrier-out"}"#;

#[test]
fn a_first_host_answering_503_hands_the_call_to_the_second_host() {
    let (first, second) = (free_port(), free_port());
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", first).also_at(second, 1));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let down = uas("carrier_down_503.xml", first, &["-timeout", "20"]);
    let up = uas("agent_answer_then_hangup.xml", second, &["-d", "300", "-timeout", "20"]);
    uac("agent_outbound_wait_bye.xml", gateway.internal(), &agent_args("carrier-out"))
        .assert_success();
    down.wait().assert_success();
    up.wait().assert_success();
    assert!(gateway.wait_metric(ANSWERED, 1.0, Duration::from_secs(5)), "call not counted");
    let log = gateway.log_text();
    assert!(log.contains("trying the next host"), "the failover is not in the log:\n{log}");
}

#[test]
fn a_first_host_with_nothing_listening_hands_the_call_to_the_second_host() {
    // Nothing listens on `first`: the INVITE gets no answer (or an ICMP refusal) and the
    // call moves on within the first-response time (8 s).
    let (first, second) = (free_port(), free_port());
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", first).also_at(second, 1));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let up = uas("agent_answer_then_hangup.xml", second, &["-d", "300", "-timeout", "20"]);
    uac("agent_outbound_wait_bye.xml", gateway.internal(), &agent_args("carrier-out"))
        .assert_success();
    up.wait().assert_success();
    assert!(gateway.wait_metric(ANSWERED, 1.0, Duration::from_secs(5)), "call not counted");
}

/// A carrier host on 127.0.0.1 that answers everything, as a carrier's SBC would: OPTIONS and
/// BYE with 200, INVITE with 200 and an SDP answer (PCMU); it counts the INVITEs it got.
struct Carrier {
    stop: Arc<AtomicBool>,
    invites: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Carrier {
    fn start(port: u16) -> Carrier {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the carrier's port");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let invites = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), invites.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_535];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let sdp = if text.starts_with("INVITE ") {
                    count.fetch_add(1, Ordering::SeqCst);
                    "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                     t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                } else if text.starts_with("OPTIONS ") || text.starts_with("BYE ") {
                    ""
                } else {
                    continue;
                };
                let _ = socket.send_to(ok(&text, port, sdp).as_bytes(), from);
            }
        });
        Carrier { stop, invites, thread: Some(thread) }
    }

    fn invites(&self) -> usize {
        self.invites.load(Ordering::SeqCst)
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

fn header<'a>(request: &'a str, name: &str) -> &'a str {
    request
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_default()
}

/// 200 OK to `request` (RFC 3261 §8.2.6), with our tag, a Contact, and `sdp` when not empty.
fn ok(request: &str, port: u16, sdp: &str) -> String {
    let body =
        if sdp.is_empty() { String::new() } else { "Content-Type: application/sdp\r\n".into() };
    format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=carrier\r\nCall-ID: {}\r\n\
         CSeq: {}\r\nContact: <sip:carrier@127.0.0.1:{port}>\r\n\
         Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n{body}Content-Length: {}\r\n\r\n{sdp}",
        header(request, "Via"),
        header(request, "From"),
        header(request, "To"),
        header(request, "Call-ID"),
        header(request, "CSeq"),
        sdp.len()
    )
}

/// Waits until the gateway's log holds `text`, at most `within`.
fn wait_log(gateway: &Gateway, text: &str, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if gateway.log_text().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_host_down_on_options_is_skipped_and_calls_return_to_it_when_it_answers_again() {
    // OPTIONS every 5 s (the CRD's minimum): the first host, with nothing listening, is out of
    // rotation after 3 missed probes (under 25 s); back within one interval once it answers.
    let (first, second) = (free_port(), free_port());
    let trunk = Outbound::new("carrier-out", first).also_at(second, 1).health_check(5);
    let specs = Specs::new().with_outbound(trunk);
    let backup = Carrier::start(second);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let down = format!("sip:127.0.0.1:{first} is unreachable, out of rotation");
    assert!(wait_log(&gateway, &down, Duration::from_secs(30)), "{}", gateway.log_text());

    // The call goes straight to the second host: no INVITE waits on the first.
    let args = agent_args("carrier-out");
    let mut call = args.clone();
    call.extend(["-d", "200"]);
    let started = Instant::now();
    uac("agent_outbound_call.xml", gateway.internal(), &call).assert_success();
    assert!(started.elapsed() < Duration::from_secs(5), "it waited on the host that is down");
    assert_eq!(backup.invites(), 1);
    assert!(!gateway.log_text().contains("trying the next host"));

    // The first host comes back: its probes bring it into rotation, and the next call is its.
    let primary = Carrier::start(first);
    let back = format!("sip:127.0.0.1:{first} is reachable again");
    assert!(wait_log(&gateway, &back, Duration::from_secs(15)), "{}", gateway.log_text());
    uac("agent_outbound_call.xml", gateway.internal(), &call).assert_success();
    assert_eq!(primary.invites(), 1, "the call did not return to the first host");
    assert_eq!(backup.invites(), 1);
    assert!(gateway.wait_metric(ANSWERED, 2.0, Duration::from_secs(5)), "calls not counted");
}
