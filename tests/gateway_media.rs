//! The codec policy on real calls (issue 4, item 2): the offer toward the agent keeps only the
//! trunk's codecs plus telephone-event; no common codec is 488 and nothing reaches the agent.
//! The built `trunkline run` between sipps on 127.0.0.0/8.

mod support;

use support::carrier::{Carrier, body_of, echo_through, line_after, relay_of};
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

fn pcmu_only_trunk(agent_port: u16) -> Trunk {
    Trunk::local(NUMBER, agent_port).codecs(&["PCMU"])
}

#[test]
fn an_offer_of_g729_and_pcmu_reaches_a_pcmu_only_trunks_agent_as_pcmu_alone() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_check_codecs.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    uac("carrier_offer_g729_pcmu.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"])
        .assert_success();
    agent.wait().assert_success();
}

#[test]
fn an_offer_of_g729_alone_is_refused_with_488_and_the_agent_hears_nothing() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "5"]);
    uac("carrier_offer_g729_only.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "10"])
        .assert_success();
    let agent = agent.kill();
    assert!(!agent.messages().iter().any(|m| m.text.starts_with("INVITE")), "the agent got a call");
    assert!(
        gateway.metric(r#"trunkline_inbound_refusals_total{rule="NoCommonCodec",status="488"}"#)
            == Some(1.0),
        "488 not counted"
    );
}

#[test]
fn rtp_crosses_the_relay_both_ways_with_the_payload_intact() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    // The agent runtime echoes every RTP packet back to where it came from.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let media_port = carrier.media.local_addr().expect("addr").port();
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    );
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer));
    let ok = carrier
        .response("200", std::time::Duration::from_secs(5))
        .expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let (relay, _) = relay_of(&ok);
    assert_ne!(relay.port(), agent_port, "the answer must name the relay, not the agent");
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));

    let echoed = echo_through(&carrier, relay, 50);
    assert!(echoed >= 45, "only {echoed} of 50 packets came back through the relay");

    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", std::time::Duration::from_secs(5)).is_some(), "no 200 to BYE");
    agent.wait().assert_success();
    let carrier_packets = r#"trunkline_rtp_packets_total{leg="carrier",trunk="voice/local-in"}"#;
    assert!(
        gateway.wait_metric(carrier_packets, 45.0, std::time::Duration::from_secs(5)),
        "RTP stats not in /metrics: {:?}",
        gateway.metric(carrier_packets)
    );
}

#[test]
fn an_answered_call_without_rtp_is_hung_up_on_both_legs_after_the_media_timeout() {
    let agent_port = free_port();
    let options = GatewayOptions::default().arg("--media-timeout").arg("1");
    let gateway = Gateway::start(Specs::new().with(pcmu_only_trunk(agent_port)).path(), options);
    // Neither sipp sends RTP: both wait for the gateway's BYE.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    assert!(
        gateway.log_text().contains("media timeout"),
        "the reason is not recorded:\n{}",
        gateway.log_text()
    );
}

#[test]
fn a_call_that_finds_no_rtp_ports_left_gets_503_and_the_next_one_gets_them_back() {
    // Four ports: two RTP/RTCP pairs, one call's worth (a pair per leg).
    let base = (40_000 + (std::process::id() % 5_000) as u16 * 4) & !1;
    let range = format!("{base}-{}", base + 3);
    let agent_port = free_port();
    let options = GatewayOptions::default().arg("--rtp-ports").arg(&range);
    let gateway = Gateway::start(Specs::new().with(pcmu_only_trunk(agent_port)).path(), options);
    let agent = uas("agent_answer.xml", agent_port, &["-m", "2", "-timeout", "20"]);
    let udp = gateway.udp();
    let first = std::thread::spawn(move || {
        uac("carrier_call.xml", udp, &["-s", NUMBER, "-d", "2000", "-timeout", "15"])
    });
    assert_eq!(gateway.metric(r#"trunkline_rtp_port_pairs{state="free"}"#), Some(2.0));
    let active = r#"trunkline_active_calls{direction="inbound",trunk="voice/local-in"}"#;
    assert!(gateway.wait_metric(active, 1.0, std::time::Duration::from_secs(5)), "no first call");
    assert_eq!(gateway.metric(r#"trunkline_rtp_port_pairs{state="used"}"#), Some(2.0));
    uac("carrier_unavailable_503.xml", udp, &["-s", NUMBER, "-timeout", "10"]).assert_success();
    assert_eq!(gateway.metric("trunkline_rtp_port_exhaustions_total"), Some(1.0));
    assert!(
        gateway.log_text().contains("no RTP relay"),
        "503 for another reason:\n{}",
        gateway.log_text()
    );
    first.join().expect("first call").assert_success();
    // The first call's ports are back: a new call is relayed again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    uac("carrier_call.xml", udp, &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
}

#[test]
fn a_g722_call_on_a_g722_trunk_offers_and_answers_g722() {
    let agent_port = free_port();
    let trunk = Trunk::local(NUMBER, agent_port).codecs(&["G722"]);
    let gateway = Gateway::start(Specs::new().with(trunk).path(), GatewayOptions::default());
    let agent = uas("agent_answer_g722.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    uac("carrier_offer_g722.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"])
        .assert_success();
    agent.wait().assert_success();
}

#[test]
fn a_delayed_offer_gets_the_gateways_offer_in_the_200_and_media_flows_after_the_ack_answers() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    // RFC 3261 §13.2.1: an INVITE without a body; the offer is owed in the 2xx.
    carrier.send(&carrier.request("INVITE", "dinv1", 1, &to, ""));
    let ok = carrier
        .response("200", std::time::Duration::from_secs(5))
        .expect("200 OK from the gateway");
    let (relay, formats) = relay_of(&ok);
    assert_eq!(formats, vec!["0", "101"], "the offer must hold the trunk's PCMU and DTMF:\n{ok}");
    assert_ne!(relay.port(), agent_port, "the offer must name the relay, not the agent");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let media_port = carrier.media.local_addr().expect("addr").port();
    let answer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    );
    carrier.send(&carrier.request("ACK", "dack1", 1, &to_tagged, &answer));

    let echoed = echo_through(&carrier, relay, 50);
    assert!(echoed >= 45, "only {echoed} of 50 packets came back through the relay");

    carrier.send(&carrier.request("BYE", "dbye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", std::time::Duration::from_secs(5)).is_some(), "no 200 to BYE");
    let agent = agent.wait();
    agent.assert_success();
    // The agent runtime was offered media in the INVITE itself: the trunk's codec and DTMF,
    // on the relay's agent-side port.
    let invite = agent
        .received()
        .into_iter()
        .find(|m| m.text.starts_with("INVITE"))
        .expect("the agent got the INVITE");
    let (agent_side, agent_formats) = relay_of(&invite.text);
    assert_eq!(agent_formats, vec!["0", "101"], "{}", invite.text);
    assert_ne!(agent_side.port(), 0);
    // An address to send to, not a hold (c=0.0.0.0, RFC 3264 §8.4).
    assert_eq!(agent_side.ip().to_string(), "127.0.0.1", "{}", invite.text);
}

#[test]
fn a_delayed_offer_whose_ack_brings_no_answer_is_hung_up_on_both_legs() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "ninv1", 1, &to, ""));
    let ok = carrier
        .response("200", std::time::Duration::from_secs(5))
        .expect("200 OK from the gateway");
    assert!(body_of(&ok).contains("m=audio"), "the 200 must carry the offer:\n{ok}");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    carrier.send(&carrier.request("ACK", "nack1", 1, &to_tagged, ""));

    // The gateway ends the call: a BYE to the carrier, and the agent's scenario (which waits
    // for a BYE) completes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    let mut bye = None;
    while bye.is_none() && std::time::Instant::now() < deadline {
        if let Ok((n, _)) = carrier.sip.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("BYE ") {
                bye = Some(text);
            }
        }
    }
    assert!(bye.is_some(), "no BYE to the carrier");
    agent.wait().assert_success();
    assert!(
        gateway.log_text().contains("did not answer the gateway's offer"),
        "the reason is not recorded:\n{}",
        gateway.log_text()
    );
}

/// Issue 15, item 1: an attacker spraying the relay's carrier-side port from another address
/// (127.0.0.2; Linux routes all of 127/8 to lo) before and during a call is neither heard by
/// the agent nor able to take the leg; the carrier's RTP flows, and the refusals are counted.
#[test]
fn rtp_from_an_address_that_is_not_the_carriers_is_dropped_and_counted_before_and_during_a_call() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default(),
    );
    // The agent echoes whatever reaches it back through the relay to the carrier's side.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let media_port = carrier.media.local_addr().expect("addr").port();
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    );
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let (relay, _) = relay_of(&ok);
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));

    let attacker = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    attacker.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let spray = |from_seq: u16| {
        for seq in from_seq..from_seq + 20 {
            attacker.send_to(&support::carrier::rtp_packet(seq), relay).expect("spray");
        }
    };
    // Before the carrier's first packet: nothing latched yet.
    spray(60_000);
    std::thread::sleep(Duration::from_millis(200));
    // During the call: the carrier talks, the attacker keeps spraying.
    let mut echoed = 0;
    let mut buf = vec![0u8; 2048];
    for seq in 0..30u16 {
        carrier.media.send_to(&support::carrier::rtp_packet(seq), relay).expect("send RTP");
        if seq % 10 == 5 {
            spray(61_000 + seq * 20);
        }
        if let Ok((_, from)) = carrier.media.recv_from(&mut buf) {
            assert_eq!(from, relay);
            let back = u16::from_be_bytes([buf[2], buf[3]]);
            assert!(back < 60_000, "the agent heard the attacker (packet {back} came back)");
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(echoed >= 25, "only {echoed} of 30 carrier packets came back through the relay");
    let mut heard = 0;
    while attacker.recv_from(&mut buf).is_ok() {
        heard += 1;
    }
    assert_eq!(heard, 0, "the attacker took the leg and heard the call");

    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
    agent.wait().assert_success();
    // Before the latch, none of the carrier's addresses; after it, not the latched source.
    let series = |reason: &str| {
        format!(
            r#"trunkline_rtp_rejected_packets_total{{leg="carrier",reason="{reason}",trunk="voice/local-in"}}"#
        )
    };
    let (not_allowed, latched) = (series("not_allowed"), series("latched"));
    assert!(gateway.wait_metric(&not_allowed, 20.0, Duration::from_secs(5)), "not counted");
    let counted =
        gateway.metric(&not_allowed).unwrap_or(0.0) + gateway.metric(&latched).unwrap_or(0.0);
    assert_eq!(counted, 80.0, "every one of the attacker's 80 packets is counted once");
}

/// Issue 15, item 1: a carrier's initial offer whose audio `c=` is a multicast group, the
/// unspecified address, or the gateway itself (its IP and a port of its RTP range) is refused
/// with 488 and a Warning naming the rule, before any RTP port is bound or the agent is called.
#[test]
fn an_offer_at_a_multicast_group_nothing_or_the_gateway_itself_gets_488_naming_the_rule() {
    use std::time::Duration;
    use support::net::RawUdp;
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default().arg("--rtp-ports").arg("20000-20999"),
    );
    let socket = RawUdp::bind();
    let me = socket.local_addr();
    for (i, (c, port, rule)) in [
        ("224.2.1.1", 4000, "MulticastMediaAddress"),
        ("0.0.0.0", 4000, "UnspecifiedMediaAddress"),
        ("127.0.0.1", 20_002, "OwnMediaAddress"),
    ]
    .into_iter()
    .enumerate()
    {
        let sdp = format!(
            "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let invite = format!(
            "INVITE sip:{NUMBER}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmedia{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=m{i}\r\nTo: <sip:{NUMBER}@{gw}>\r\n\
             Call-ID: media-{i}@{me}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{me}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            gw = gateway.udp(),
        );
        let got = socket.exchange(gateway.udp(), invite.as_bytes(), 488, Duration::from_secs(3));
        let refusal = got.iter().find(|m| m.starts_with("SIP/2.0 488")).unwrap_or_else(|| {
            panic!("no 488 for c={c} port {port}: {got:?}");
        });
        assert!(
            refusal.lines().any(|l| l.starts_with("Warning:") && l.contains(rule)),
            "no Warning naming {rule}:\n{refusal}"
        );
        let counted = format!(r#"trunkline_inbound_refusals_total{{rule="{rule}",status="488"}}"#);
        assert_eq!(gateway.metric(&counted), Some(1.0), "{rule} not counted");
    }
    assert_eq!(gateway.metric(r#"trunkline_rtp_port_pairs{state="used"}"#), Some(0.0));
    assert_eq!(gateway.metric(r#"trunkline_rtp_port_exhaustions_total"#), Some(0.0));
}

/// Issue 15, item 1: a re-INVITE from the carrier that would point the relay at a multicast
/// group or at the gateway itself is answered 488 with a Warning naming the rule, and the
/// call goes on as it was (the carrier's RTP still comes back through the echoing agent).
#[test]
fn a_carriers_reinvite_at_a_multicast_group_or_the_gateway_gets_488_and_the_call_goes_on() {
    use std::time::Duration;
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(pcmu_only_trunk(agent_port)).path(),
        GatewayOptions::default().arg("--rtp-ports").arg("21000-21999"),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let media_port = carrier.media.local_addr().expect("addr").port();
    let sdp = |c: &str, port: u16| {
        format!(
            "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        )
    };
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &sdp("127.0.0.1", media_port)));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let (relay, _) = relay_of(&ok);
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));

    for (cseq, (c, port, rule)) in (2u32..).zip([
        ("224.2.1.1", 4000, "MulticastMediaAddress"),
        ("127.0.0.1", 21_010, "OwnMediaAddress"),
    ]) {
        let branch = format!("reinv{cseq}");
        carrier.send(&carrier.request("INVITE", &branch, cseq, &to_tagged, &sdp(c, port)));
        let refusal = carrier
            .response("488", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no 488 to a re-INVITE at {c}:{port}"));
        assert!(
            refusal.lines().any(|l| l.starts_with("Warning:") && l.contains(rule)),
            "no Warning naming {rule}:\n{refusal}"
        );
        // A non-2xx final response is acknowledged in its transaction (RFC 3261 §17.1.1.3).
        let ack = carrier.request("ACK", &branch, cseq, &to_tagged, "");
        carrier.send(&ack);
    }
    let echoed = echo_through(&carrier, relay, 20);
    assert!(echoed >= 16, "only {echoed} of 20 packets came back: the relay moved");

    carrier.send(&carrier.request("BYE", "bye1", 4, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
    agent.wait().assert_success();
}

/// A transfer destination driven by hand over UDP (the person's phone behind an
/// OutboundTrunk): it answers the gateway's INVITE and echoes the RTP it gets.
struct Desk {
    sip: std::net::UdpSocket,
    media: std::net::UdpSocket,
}

impl Desk {
    fn bind(port: u16) -> Desk {
        let sip = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind the desk's SIP");
        let media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the desk's media");
        let wait = Some(std::time::Duration::from_millis(100));
        sip.set_read_timeout(wait).expect("timeout");
        media.set_read_timeout(wait).expect("timeout");
        Desk { sip, media }
    }

    /// The next request whose method is `method`, and where it came from, within `within`.
    fn request(
        &self,
        method: &str,
        within: std::time::Duration,
    ) -> Option<(String, std::net::SocketAddr)> {
        let deadline = std::time::Instant::now() + within;
        let mut buf = vec![0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok((n, from)) = self.sip.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with(&format!("{method} ")) {
                    return Some((text, from));
                }
            }
        }
        None
    }

    /// Answers `request` (from `to`) with `status`, a To tag, and `sdp` if any.
    fn answer(&self, request: &str, to: std::net::SocketAddr, status: &str, sdp: &str) {
        let mut head = format!("SIP/2.0 {status}\r\n");
        for line in request.lines() {
            let copied = ["Via:", "From:", "Call-ID:", "CSeq:"];
            if copied.iter().any(|h| line.starts_with(h)) {
                head.push_str(line);
                head.push_str("\r\n");
            } else if line.starts_with("To:") {
                let tagged = if line.contains("tag=") {
                    line.to_string()
                } else {
                    format!("{line};tag=desk")
                };
                head.push_str(&tagged);
                head.push_str("\r\n");
            }
        }
        let me = self.sip.local_addr().expect("addr");
        let content = if sdp.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        let text = format!(
            "{head}Contact: <sip:desk@{me}>\r\n{content}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        self.sip.send_to(text.as_bytes(), to).expect("send");
    }
}

/// Issue 15, item 1: the relay ports of a bridged transfer to a carrier (a `Phone` destination
/// through an OutboundTrunk) take media only from that carrier's addresses: an attacker on
/// 127.0.0.2 spraying them while the destination rings and once it answered is never heard by
/// anyone, hears nothing, and is counted as the transfer leg's.
#[test]
fn rtp_sprayed_at_a_transfer_destinations_ports_is_dropped_and_counted_before_and_after_it_answers()
{
    use std::net::UdpSocket;
    use std::time::Duration;
    use support::Outbound;
    const DESK: &str = "+14155550199";
    let (agent_port, desk_port) = (free_port(), free_port());
    let specs = Specs::new()
        .with(Trunk::local(NUMBER, agent_port))
        .with_outbound(Outbound::new("carrier-out", desk_port));
    specs.write(
        "transfers.yaml",
        &format!(
            "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {{name: sales-desk, namespace: voice}}
spec:
  type: Phone
  phone: {{number: \"{DESK}\", outboundTrunkRef: {{name: carrier-out}}}}
"
        ),
    );
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let desk = Desk::bind(desk_port);
    // The agent answers, then REFERs the call to sales-desk; it does not echo.
    let agent = uas(
        "agent_refer_mode.xml",
        agent_port,
        &["-d", "1000", "-key", "transfer_to", "sales-desk", "-timeout", "25"],
    );
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let media_port = carrier.media.local_addr().expect("addr").port();
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    );
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let (relay, _) = relay_of(&ok);
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));

    // The gateway dials the destination: its INVITE names the transfer leg's relay ports.
    let (invite, gateway_sip) =
        desk.request("INVITE", Duration::from_secs(10)).expect("an INVITE to the destination");
    let (spare, _) = relay_of(&invite);
    let attacker = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    attacker.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let spray = |from_seq: u16| {
        for seq in from_seq..from_seq + 20 {
            attacker.send_to(&support::carrier::rtp_packet(seq), spare).expect("spray");
        }
    };
    // While it rings: nothing latched yet.
    spray(60_000);
    std::thread::sleep(Duration::from_millis(200));

    let desk_media = desk.media.local_addr().expect("addr").port();
    let answer = format!(
        "v=0\r\no=desk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {desk_media} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    );
    desk.answer(&invite, gateway_sip, "200 OK", &answer);
    desk.request("ACK", Duration::from_secs(5)).expect("the gateway's ACK");
    let completed = r#"trunkline_transfers_total{destination="voice/sales-desk",mode="Bridge",outcome="completed"}"#;
    assert!(gateway.wait_metric(completed, 1.0, Duration::from_secs(10)), "no completed transfer");
    // Answered, before the destination's first packet: the ports are side B's now.
    spray(61_000);
    std::thread::sleep(Duration::from_millis(200));

    // The caller talks; the destination echoes; the attacker keeps spraying.
    let (mut echoed, mut buf) = (0, vec![0u8; 2048]);
    for seq in 0..30u16 {
        carrier.media.send_to(&support::carrier::rtp_packet(seq), relay).expect("send RTP");
        if let Ok((n, from)) = desk.media.recv_from(&mut buf) {
            let heard = u16::from_be_bytes([buf[2], buf[3]]);
            assert!(heard < 60_000, "the destination heard the attacker (packet {heard})");
            desk.media.send_to(&buf[..n], from).expect("echo");
        }
        if seq % 10 == 5 {
            spray(62_000 + seq * 20);
        }
        if let Ok((_, from)) = carrier.media.recv_from(&mut buf) {
            assert_eq!(from, relay);
            let back = u16::from_be_bytes([buf[2], buf[3]]);
            assert!(back < 60_000, "the caller heard the attacker (packet {back} came back)");
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(echoed >= 25, "only {echoed} of 30 packets came back from the destination");
    let mut heard = 0;
    while attacker.recv_from(&mut buf).is_ok() {
        heard += 1;
    }
    assert_eq!(heard, 0, "the attacker took the transfer leg's ports and heard the call");

    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
    let (bye, from) =
        desk.request("BYE", Duration::from_secs(5)).expect("a BYE to the destination");
    desk.answer(&bye, from, "200 OK", "");
    agent.wait().assert_success();
    let series = |reason: &str| {
        format!(
            r#"trunkline_rtp_rejected_packets_total{{leg="transfer",reason="{reason}",trunk="voice/local-in"}}"#
        )
    };
    let (not_allowed, latched) = (series("not_allowed"), series("latched"));
    assert!(gateway.wait_metric(&not_allowed, 40.0, Duration::from_secs(5)), "not counted");
    let counted =
        gateway.metric(&not_allowed).unwrap_or(0.0) + gateway.metric(&latched).unwrap_or(0.0);
    assert_eq!(counted, 100.0, "every one of the attacker's 100 packets is counted once");
}
