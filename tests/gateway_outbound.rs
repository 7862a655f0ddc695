//! Outbound calls (issue 12) on the wire: the built `trunkline run` between an agent runtime on
//! its agent-facing listener and a carrier, both real peers on 127.0.0.1 — sipp, or a
//! hand-driven UDP peer where a test must read exactly what comes back (a refusal's status and
//! `Warning`, RTP).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, free_port};

const TO: &str = "+14155550142";

fn agent_args<'a>(trunk: &'a str, from_user: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-s",
        TO,
        "-key",
        "trunk",
        trunk,
        "-key",
        "agent",
        "support",
        "-key",
        "from_user",
        from_user,
        "-timeout",
        "15",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_agents_call_goes_out_answering_the_carriers_digest_and_the_agent_hangs_up() {
    let carrier_port = free_port();
    let specs = Specs::new()
        .with_outbound(Outbound::new("carrier-out", carrier_port).digest("acct-7", "carrier-pw"));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let carrier = uas(
        "carrier_answer_digest.xml",
        carrier_port,
        &[
            "-key",
            "auth_user",
            "acct-7",
            "-key",
            "auth_pass",
            "carrier-pw",
            "-key",
            "number",
            TO,
            "-key",
            "caller_id",
            "+14155550100",
            "-timeout",
            "15",
        ],
    );
    let args = agent_args("carrier-out", "agent-bot", &["-d", "300"]);
    uac("agent_outbound_call.xml", gateway.internal(), &args).assert_success();
    carrier.wait().assert_success();
    let answered = r#"trunkline_calls_total{direction="outbound",outcome="answered",trunk="voice/carrier-out"}"#;
    assert!(gateway.wait_metric(answered, 1.0, Duration::from_secs(5)), "call not counted");
    let log = gateway.log_text();
    assert!(!log.contains("carrier-pw"), "the carrier's password is in the log");
}

#[test]
fn the_carrier_hangs_up_an_outbound_call_and_the_agent_leg_ends_too() {
    let carrier_port = free_port();
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", carrier_port));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let carrier =
        uas("agent_answer_then_hangup.xml", carrier_port, &["-d", "300", "-timeout", "15"]);
    let args = agent_args("voice/carrier-out", "agent-bot", &[]);
    uac("agent_outbound_wait_bye.xml", gateway.internal(), &args).assert_success();
    carrier.wait().assert_success();
}

#[test]
fn a_wrong_carrier_password_is_403_to_the_agent_after_one_answer() {
    let carrier_port = free_port();
    let specs = Specs::new()
        .with_outbound(Outbound::new("carrier-out", carrier_port).digest("acct-7", "wrong"));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let carrier = uas(
        "carrier_answer_digest.xml",
        carrier_port,
        &[
            "-key",
            "auth_user",
            "acct-7",
            "-key",
            "auth_pass",
            "carrier-pw",
            "-key",
            "number",
            TO,
            "-key",
            "caller_id",
            "+14155550100",
            "-timeout",
            "10",
        ],
    );
    let agent = Agent::new(gateway.internal());
    let answer = agent.invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&answer), 403, "{answer}");
    // The carrier challenged our answer again; it saw no third INVITE (the run fails only
    // by its final wait).
    carrier.wait().assert_calls_failed();
    let refused = r#"trunkline_peer_auth_failures_total{peer="carrier",trunk="voice/carrier-out"}"#;
    assert!(gateway.wait_metric(refused, 1.0, Duration::from_secs(3)), "not counted");
    assert!(gateway.log_text().contains("wrong credentials"), "the reason is not in the log");
}

#[test]
fn rtp_crosses_an_outbound_call_both_ways_through_the_relay() {
    let carrier_port = free_port();
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", carrier_port));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    // The carrier echoes every RTP packet back to where it came from.
    let carrier =
        uas("agent_answer.xml", carrier_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let agent = Agent::new(gateway.internal());
    let ok = agent.invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&ok), 200, "{ok}");
    let relay = relay_of(&ok);
    assert_ne!(relay.port(), carrier_port);
    agent.ack(&ok);
    let echoed = agent.echo_through(relay, 50);
    assert!(echoed >= 45, "only {echoed} of 50 packets came back through the relay");
    agent.bye(&ok);
    carrier.wait().assert_success();
    let agent_packets = r#"trunkline_rtp_packets_total{leg="agent",trunk="voice/carrier-out"}"#;
    assert!(gateway.wait_metric(agent_packets, 45.0, Duration::from_secs(5)), "no RTP stats");
}

#[test]
fn refusals_name_their_rule_and_the_carrier_hears_nothing() {
    let carrier = UdpSocket::bind("127.0.0.1:0").expect("bind the carrier");
    carrier.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let carrier_port = carrier.local_addr().expect("addr").port();
    let specs = Specs::new()
        .with_outbound(
            Outbound::new("carrier-out", carrier_port)
                .agent("support")
                .allow_caller_id("+14155550101")
                .codecs(&["PCMA"]),
        )
        .with_outbound(Outbound::new("shared", carrier_port))
        .with_outbound(Outbound::new("shared", carrier_port).namespace("sales"));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let agent = Agent::new(gateway.internal());
    let pcma = Invite { codecs: "8 101", ..Invite::to("carrier-out") };
    for (invite, status, rule) in [
        (Invite::to("nope"), 404, "UnknownTrunk"),
        (Invite::to("shared"), 485, "AmbiguousTrunk"),
        (Invite { trunk: None, ..pcma.clone() }, 400, "TrunkNotNamed"),
        (Invite { agent: Some("sales"), ..pcma.clone() }, 403, "AgentNotAllowed"),
        (Invite { agent: None, ..pcma.clone() }, 403, "AgentNotAllowed"),
        (Invite { from_user: "+14155550199", ..pcma.clone() }, 403, "CallerIdNotAllowed"),
        (Invite { to: "support-desk", ..pcma.clone() }, 484, "DialedNumberInvalid"),
        (Invite::to("carrier-out"), 488, "NoCommonCodec"),
    ] {
        let answer = agent.invite(&invite);
        assert_eq!(status_of(&answer), status, "{rule}: {answer}");
        let warning = header(&answer, "Warning").unwrap_or_default();
        assert!(warning.starts_with("399 trunkline") && warning.contains(rule), "{answer}");
        let metric =
            format!(r#"trunkline_outbound_refusals_total{{rule="{rule}",status="{status}"}}"#);
        assert!(gateway.metric(&metric).is_some_and(|v| v >= 1.0), "{metric} not counted");
    }
    let mut buf = [0u8; 4096];
    assert!(carrier.recv_from(&mut buf).is_err(), "the carrier got a message");
    // A caller id from the list, the agent on the list, a common codec, a tel: Request-URI:
    // it goes out.
    let allowed = Invite { from_user: "+14155550101", to: "tel:+1-415-555-0142", ..pcma };
    agent.send_invite(&allowed);
    let (n, _) = carrier.recv_from(&mut buf).expect("the allowed call reaches the carrier");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("INVITE sip:+14155550142@127.0.0.1:"), "{text}");
    assert_eq!(
        header(&text, "P-Asserted-Identity").as_deref(),
        Some("<sip:+14155550101@127.0.0.1>")
    );
}

#[test]
fn the_agent_networks_and_the_trunks_limits_are_enforced() {
    let carrier = UdpSocket::bind("127.0.0.1:0").expect("bind the carrier");
    carrier.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let carrier_port = carrier.local_addr().expect("addr").port();
    let specs =
        Specs::new().with_outbound(Outbound::new("carrier-out", carrier_port).limits(1, 100));
    let outside = Gateway::start(
        specs.path(),
        GatewayOptions::default().arg("--agent-networks").arg("10.0.0.0/8,fd00::/8"),
    );
    let answer = Agent::new(outside.internal()).invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(header(&answer, "Warning").unwrap_or_default().contains("AgentNetworkNotAllowed"));
    drop(outside);

    // With --agent-credentials, the agent runtime must answer a challenge first.
    let dir = support::TempDir::new("agent-credentials");
    let credentials = dir.join("agent");
    std::fs::write(&credentials, "bot:bot-password\n").expect("write the credentials");
    let guarded = Gateway::start(
        specs.path(),
        GatewayOptions::default().arg("--agent-credentials").arg(&credentials.to_string_lossy()),
    );
    let answer = Agent::new(guarded.internal()).invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&answer), 407, "{answer}");
    assert!(header(&answer, "Proxy-Authenticate").is_some_and(|c| c.starts_with("Digest ")));
    let mut buf = [0u8; 4096];
    assert!(carrier.recv_from(&mut buf).is_err(), "the carrier got a message");
    drop(guarded);

    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let agent = Agent::new(gateway.internal());
    agent.send_invite(&Invite::to("carrier-out"));
    let mut buf = [0u8; 4096];
    carrier.recv_from(&mut buf).expect("the first call reaches the carrier (and rings there)");
    let second = Agent::new(gateway.internal());
    let answer = second.invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(header(&answer, "Retry-After").is_some(), "no Retry-After: {answer}");
    assert!(header(&answer, "Warning").unwrap_or_default().contains("max_concurrent_calls"));
}

#[test]
fn the_carrier_side_can_never_dial_out() {
    let carrier = UdpSocket::bind("127.0.0.1:0").expect("bind the carrier");
    carrier.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let carrier_port = carrier.local_addr().expect("addr").port();
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", carrier_port));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    // The same INVITE an agent would send, on the carrier-facing listener.
    let answer = Agent::new(gateway.udp()).invite(&Invite::to("carrier-out"));
    assert_eq!(status_of(&answer), 403, "{answer}");
    let mut buf = [0u8; 4096];
    assert!(carrier.recv_from(&mut buf).is_err(), "the carrier got a message");
    let metric = r#"trunkline_inbound_refusals_total{rule="OutboundFromCarrier",status="403"}"#;
    assert_eq!(gateway.metric(metric), Some(1.0));
}

/// What a hand-driven agent's INVITE says.
#[derive(Clone)]
struct Invite<'a> {
    trunk: Option<&'a str>,
    to: &'a str,
    agent: Option<&'a str>,
    from_user: &'a str,
    /// The payload types offered.
    codecs: &'a str,
}

impl<'a> Invite<'a> {
    fn to(trunk: &'a str) -> Invite<'a> {
        let codecs = "0 101";
        Invite { trunk: Some(trunk), to: TO, agent: Some("support"), from_user: "bot", codecs }
    }
}

/// A hand-driven agent runtime over UDP: one call at a time.
struct Agent {
    sip: UdpSocket,
    media: UdpSocket,
    gateway: SocketAddr,
    call: std::cell::Cell<u32>,
}

impl Agent {
    fn new(gateway: SocketAddr) -> Agent {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind SIP");
        let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
        sip.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        media.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Agent { sip, media, gateway, call: std::cell::Cell::new(0) }
    }

    fn call_id(&self) -> String {
        format!(
            "agent-{}-{}@127.0.0.1",
            self.call.get(),
            self.sip.local_addr().expect("addr").port()
        )
    }

    fn send_invite(&self, invite: &Invite) {
        self.call.set(self.call.get() + 1);
        let me = self.sip.local_addr().expect("addr");
        let media = self.media.local_addr().expect("addr").port();
        let rtpmaps: String = invite
            .codecs
            .split(' ')
            .map(|pt| match pt {
                "0" => "a=rtpmap:0 PCMU/8000\r\n",
                "8" => "a=rtpmap:8 PCMA/8000\r\n",
                "101" => "a=rtpmap:101 telephone-event/8000\r\n",
                _ => "",
            })
            .collect();
        let sdp = format!(
            "v=0\r\no=bot 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {media} RTP/AVP {codecs}\r\n{rtpmaps}a=sendrecv\r\n",
            codecs = invite.codecs
        );
        let mut headers = String::new();
        if let Some(t) = invite.trunk {
            headers.push_str(&format!("X-Trunkline-Outbound-Trunk: {t}\r\n"));
        }
        if let Some(a) = invite.agent {
            headers.push_str(&format!("X-Trunkline-Agent-ID: {a}\r\n"));
        }
        let ruri = if invite.to.starts_with("tel:") {
            invite.to.to_string()
        } else {
            format!("sip:{}@{}", invite.to, self.gateway)
        };
        let text = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKinv{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}@{me}>;tag=bot{n}\r\nTo: <{ruri}>\r\n\
             Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:bot@{me}>\r\n{headers}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            n = self.call.get(),
            from = invite.from_user,
            cid = self.call_id(),
            len = sdp.len(),
        );
        self.sip.send_to(text.as_bytes(), self.gateway).expect("send");
    }

    /// Sends the INVITE and returns the first final response (at most 10 s).
    fn invite(&self, invite: &Invite) -> String {
        self.send_invite(invite);
        self.wait_for(|text| status_of(text) >= 200).expect("a final response within 10 s")
    }

    /// The first message that `wanted` accepts, within 10 s.
    fn wait_for(&self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sip.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if wanted(&text) {
                    return Some(text);
                }
            }
        }
        None
    }

    fn in_dialog(&self, method: &str, ok: &str, cseq: u32) {
        let me = self.sip.local_addr().expect("addr");
        let to = header(ok, "To").expect("To");
        let from = header(ok, "From").expect("From");
        let target = header(ok, "Contact")
            .and_then(|c| c.split(['<', '>']).nth(1).map(str::to_string))
            .expect("Contact");
        let text = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            cid = self.call_id(),
        );
        self.sip.send_to(text.as_bytes(), self.gateway).expect("send");
    }

    fn ack(&self, ok: &str) {
        self.in_dialog("ACK", ok, 1);
    }

    fn bye(&self, ok: &str) {
        self.in_dialog("BYE", ok, 2);
        let answer = self.wait_for(|text| text.contains("CSeq: 2 BYE")).expect("an answer to BYE");
        assert_eq!(status_of(&answer), 200, "{answer}");
    }

    /// Sends `count` RTP packets to `relay`, 20 ms apart, through a carrier that echoes them;
    /// returns how many came back intact from the relay's port.
    fn echo_through(&self, relay: SocketAddr, count: u16) -> usize {
        let mut echoed = 0;
        let mut buf = vec![0u8; 2048];
        for seq in 0..count {
            self.media.send_to(&rtp_packet(seq), relay).expect("send RTP");
            if let Ok((n, from)) = self.media.recv_from(&mut buf) {
                assert_eq!(from, relay, "RTP must come back from the relay's port");
                let back_seq = u16::from_be_bytes([buf[2], buf[3]]);
                assert_eq!(&buf[..n], &rtp_packet(back_seq)[..], "payload changed on the way");
                echoed += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        echoed
    }
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    p.extend((0..160u16).map(|i| (seq.wrapping_mul(5).wrapping_add(i) & 0xff) as u8));
    p
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The value of the first header `name` (case-insensitive).
fn header(message: &str, name: &str) -> Option<String> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// The relay's address in the SDP of a 200.
fn relay_of(ok: &str) -> SocketAddr {
    let sdp = ok.split("\r\n\r\n").nth(1).expect("a body");
    let ip = sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c=").trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next())
        .expect("m=");
    format!("{ip}:{port}").parse().expect("relay address")
}
