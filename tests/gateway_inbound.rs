//! Inbound calls end to end (issue 3, item 5): the built `trunkline run` between sipp as the
//! carrier and sipp as the agent runtime, over UDP, TCP and (through Kamailio) TLS, on
//! 127.0.0.0/8.
//!
//! Each test writes its own specs folder, starts its own gateway and sipps on free ports, and is
//! bounded in time (sipp `-timeout`, the harness's kill deadline, `/readyz` within 10 s), so
//! nextest runs them in parallel. The `scenarios` module at the end runs the sipp scenarios
//! against each other with no gateway in between: it proves the scenarios themselves right.
//!
//! Flags used beyond the issue's list: `--drain-timeout SECS` (every test, to stop fast),
//! `--agent-timeout SECS` (the no-answer timeout) and `--digest-algorithms SHA-256` (challenge
//! with SHA-256 only: real clients answer the first challenge they support, and the default
//! lists MD5 first because sipp aborts on a SHA-256 first challenge).
//!
//! Peers: sipp (`sip-tester`) everywhere; Kamailio (`kamailio`, `kamailio-tls-modules`) as the TLS
//! front of sipp, which has no TLS; linphonec (`linphone-cli`) for SHA-256, which sipp cannot
//! answer. tests/run.sh installs all three.

mod support;

use std::time::{Duration, Instant};

use support::kamailio::TlsFront;
use support::linphone::LinphoneCall;
use support::net::{self, RawUdp};
use support::sipp::{self, SippResult, uac, uas};
use support::{AgentHeader, Gateway, GatewayOptions, Specs, Trunk, free_port};

/// On trunk acme-in (and on the address-only trunk), answered by agent `support`.
const SUPPORT_NUMBER: &str = "+14155550100";
/// On the same trunks, answered by agent `billing`.
const BILLING_NUMBER: &str = "+14155550101";
/// On no trunk.
const UNKNOWN_NUMBER: &str = "+14155550199";
/// On trunk other-in only.
const OTHER_TRUNK_NUMBER: &str = "+14155550150";

const USERNAME: &str = "acme";
const PASSWORD: &str = "acme-test-password";

/// A digest trunk (no allowlist): the carrier must answer the challenge with acme's credentials.
fn digest_trunk(agent_port: u16) -> Trunk {
    Trunk::new("acme-in")
        .number(SUPPORT_NUMBER, "support")
        .number(BILLING_NUMBER, "billing")
        .digest(USERNAME, PASSWORD)
        .destination_udp(agent_port)
        .transports(&["UDP", "TCP"])
}

/// An address-only trunk: calls from 127.0.0.1 are accepted without a challenge.
fn address_trunk(agent_port: u16) -> Trunk {
    Trunk::new("local-in")
        .number(SUPPORT_NUMBER, "support")
        .number(BILLING_NUMBER, "billing")
        .allow_address("127.0.0.1/32")
        .destination_udp(agent_port)
        .transports(&["UDP", "TCP"])
}

fn start(specs: &Specs) -> Gateway {
    Gateway::start(specs.path(), GatewayOptions::default())
}

/// The sipp digest flags: credentials, and a digest uri equal to the Request-URI (sipp's default
/// is `sip:IP:PORT`, which a strict server refuses).
fn digest_args(number: &str, gateway: &Gateway) -> Vec<String> {
    let auth_uri = format!("{number}@{}", gateway.addr());
    ["-s", number, "-au", USERNAME, "-ap", PASSWORD, "-auth_uri", &auth_uri]
        .map(String::from)
        .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Places the call, then waits for the agent, and fails with both traces when either failed.
fn assert_call(carrier: SippResult, agent: sipp::SippHandle) {
    let agent = agent.wait();
    carrier.assert_success();
    agent.assert_success();
}

/// The agent runtime checking the INVITE it gets: the agent, the trunk, the number.
fn checking_agent(port: u16, agent: &str, trunk: &str, number: &str) -> sipp::SippHandle {
    checking_agent_with(port, (agent, trunk, number), &[])
}

/// [`checking_agent`] with more sipp flags (`-t t1`).
fn checking_agent_with(
    port: u16,
    (agent, trunk, number): (&str, &str, &str),
    extra: &[&str],
) -> sipp::SippHandle {
    let mut args = vec!["-set", "agent", agent, "-set", "trunk", trunk, "-set", "number", number];
    args.extend_from_slice(extra);
    uas("agent_check_invite.xml", port, &args)
}

#[test]
fn md5_digest_answer_is_accepted_and_the_call_reaches_the_agent() {
    let agent_port = free_port();
    let specs = Specs::new().with(digest_trunk(agent_port));
    let gateway = start(&specs);
    let agent = checking_agent(agent_port, "support", "acme-in", SUPPORT_NUMBER);

    let mut args = digest_args(SUPPORT_NUMBER, &gateway);
    args.extend(["-d", "300"].map(String::from));
    let carrier = uac("carrier_call_digest.xml", gateway.udp(), &strs(&args));

    assert!(
        carrier.received_codes().contains(&100),
        "the INVITE got no 100 Trying: {:?}",
        carrier.received_codes()
    );
    assert_call(carrier, agent);
}

#[test]
fn invite_without_credentials_is_challenged_with_md5_and_sha256_then_succeeds() {
    let agent_port = free_port();
    let specs = Specs::new().with(digest_trunk(agent_port));
    let gateway = start(&specs);

    // The challenge alone: 407 with MD5 and SHA-256 challenges, qop=auth; the carrier gives up.
    uac("carrier_challenge.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]).assert_success();

    let agent = uas("agent_answer.xml", agent_port, &[]);
    let mut args = digest_args(SUPPORT_NUMBER, &gateway);
    args.extend(["-d", "200"].map(String::from));
    let carrier = uac("carrier_call_digest.xml", gateway.udp(), &strs(&args));
    assert_call(carrier, agent);
}

#[test]
fn wrong_password_is_refused_with_403() {
    let specs = Specs::new().with(digest_trunk(free_port()));
    let gateway = start(&specs);
    let mut args = digest_args(SUPPORT_NUMBER, &gateway);
    let password = args.iter().position(|a| a == "-ap").expect("digest_args has -ap") + 1;
    args[password] = "not-the-password".to_string();
    args.extend(["-timeout", "10"].map(String::from));
    uac("carrier_auth_refused_403.xml", gateway.udp(), &strs(&args)).assert_success();
}

#[test]
fn allowlisted_source_is_admitted_without_a_challenge() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    let agent = uas("agent_answer.xml", agent_port, &[]);
    // carrier_call.xml fails on a 407: the address alone must admit it.
    let carrier = uac(
        "carrier_call.xml",
        gateway.udp(),
        &["-i", "127.0.0.1", "-s", SUPPORT_NUMBER, "-d", "200"],
    );
    assert_call(carrier, agent);
}

#[test]
fn source_outside_the_allowlist_is_refused_with_403() {
    let specs = Specs::new().with(address_trunk(free_port()));
    let gateway = start(&specs);
    // The whole 127.0.0.0/8 is on loopback; sipp binds 127.0.0.2 (-bind_local).
    uac(
        "carrier_refused_403.xml",
        gateway.udp(),
        &["-i", "127.0.0.2", "-s", SUPPORT_NUMBER, "-timeout", "10"],
    )
    .assert_success();
}

#[test]
fn number_not_on_the_trunk_gets_404() {
    // Another carrier's trunk, which does not admit 127.0.0.1 (a digest trunk that did would
    // get the call challenged instead: the caller may be that trunk's carrier).
    let other = Trunk::new("other-in")
        .number(OTHER_TRUNK_NUMBER, "sales")
        .digest("other", "other-test-password")
        .allow_address("192.0.2.0/24")
        .destination_udp(free_port());
    let specs = Specs::new().with(address_trunk(free_port())).with(other);
    let gateway = start(&specs);
    for number in [UNKNOWN_NUMBER, OTHER_TRUNK_NUMBER] {
        uac("carrier_not_found_404.xml", gateway.udp(), &["-s", number, "-timeout", "10"])
            .assert_success();
    }
}

#[test]
fn agent_comes_from_the_dialled_number() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    let agent = checking_agent(agent_port, "billing", "local-in", BILLING_NUMBER);
    let carrier = uac("carrier_call.xml", gateway.udp(), &["-s", BILLING_NUMBER, "-d", "200"]);
    assert_call(carrier, agent);
}

/// A US carrier and a UK carrier on one gateway, each trunk with its `numberFormat`: the dialed
/// and calling numbers in national, `tel:` and `phone-context` forms reach the agent in E.164
/// (`X-Trunkline-Number`, `X-Trunkline-Caller`), and `allowedCallers` in E.164 admit national
/// callers. The UK carrier sends from 127.0.0.2.
#[test]
fn national_and_tel_numbers_reach_the_agent_in_e164() {
    let agent_port = free_port();
    let us = address_trunk(agent_port).number_format("1", Some("1")).allow_caller("+1202*");
    let uk = Trunk::new("uk-in")
        .number("+442071230003", "london")
        .allow_address("127.0.0.2/32")
        .destination_udp(agent_port)
        .number_format("44", Some("0"))
        .allow_caller("+4420*");
    let specs = Specs::new().with(us).with(uk);
    let gateway = start(&specs);
    let gw = gateway.udp();
    let cases = [
        // (carrier address, Request-URI, From, dialed in E.164, caller in E.164)
        (
            "127.0.0.1",
            format!("sip:4155550100@{gw};user=phone"),
            "sip:2025550123@carrier.example",
            SUPPORT_NUMBER,
            "+12025550123",
        ),
        (
            "127.0.0.1",
            format!("sip:14155550101@{gw}"),
            "sip:12025550123@carrier.example",
            BILLING_NUMBER,
            "+12025550123",
        ),
        (
            "127.0.0.1",
            "tel:415-555-0100;phone-context=+1".to_string(),
            "tel:(202)555-0123",
            SUPPORT_NUMBER,
            "+12025550123",
        ),
        (
            "127.0.0.1",
            format!("sip:555-0101;phone-context=+1-415@{gw};user=phone"),
            "sip:+12025550123@carrier.example",
            BILLING_NUMBER,
            "+12025550123",
        ),
        (
            "127.0.0.2",
            format!("sip:02071230003@{gw}"),
            "sip:02079460000@carrier.example",
            "+442071230003",
            "+442079460000",
        ),
        (
            "127.0.0.2",
            format!("sip:00442071230003@{gw}"),
            "tel:+44-20-7946-0000",
            "+442071230003",
            "+442079460000",
        ),
    ];
    for (source, ruri, from, number, caller) in cases {
        let agent = uas(
            "agent_check_numbers.xml",
            agent_port,
            &["-set", "number", number, "-set", "caller", caller],
        );
        let carrier = uac(
            "carrier_call_written.xml",
            gw,
            &[
                "-i", source, "-set", "ruri", &ruri, "-set", "to", &ruri, "-set", "from", from,
                "-d", "100",
            ],
        );
        assert_call(carrier, agent);
    }
    // A national caller outside allowedCallers is refused, read as the trunk reads it.
    let uk_caller_on_us = uac(
        "carrier_call_written.xml",
        gw,
        &[
            "-set",
            "ruri",
            &format!("sip:4155550100@{gw}"),
            "-set",
            "to",
            &format!("sip:4155550100@{gw}"),
            "-set",
            "from",
            "sip:02079460000@x",
            "-timeout",
            "10",
        ],
    );
    assert!(
        uk_caller_on_us.received_codes().contains(&403),
        "{:?}",
        uk_caller_on_us.received_codes()
    );
}

#[test]
fn agent_header_picks_the_agent_when_the_trunk_allows_it() {
    let agent_port = free_port();
    let trunk = address_trunk(agent_port).agent_header(AgentHeader::Allow);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    // The number says support, the header says billing: billing answers.
    let agent = checking_agent(agent_port, "billing", "local-in", SUPPORT_NUMBER);
    let carrier = uac(
        "carrier_call_headers.xml",
        gateway.udp(),
        &["-s", SUPPORT_NUMBER, "-key", "agent", "billing", "-d", "200"],
    );
    assert_call(carrier, agent);
}

#[test]
fn agent_header_is_ignored_when_the_trunk_says_ignore() {
    let agent_port = free_port();
    let trunk = address_trunk(agent_port).agent_header(AgentHeader::Ignore);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    // The header asks for billing; the trunk ignores it, the number says support. The agent also
    // checks that X-Trunkline-Agent-ID it gets says support (the carrier's is not passed on).
    let agent = checking_agent(agent_port, "support", "local-in", SUPPORT_NUMBER);
    let carrier = uac(
        "carrier_call_headers.xml",
        gateway.udp(),
        &["-s", SUPPORT_NUMBER, "-key", "agent", "billing", "-d", "200"],
    );
    assert_call(carrier, agent);
}

#[test]
fn agent_header_naming_an_agent_not_on_the_trunk_falls_back_to_the_number() {
    let agent_port = free_port();
    let trunk = address_trunk(agent_port).agent_header(AgentHeader::Allow);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    let agent = checking_agent(agent_port, "support", "local-in", SUPPORT_NUMBER);
    let carrier = uac(
        "carrier_call_headers.xml",
        gateway.udp(),
        &["-s", SUPPORT_NUMBER, "-key", "agent", "someone-else", "-d", "200"],
    );
    assert_call(carrier, agent);
}

#[test]
fn caller_hangs_up_and_the_bye_reaches_the_agent() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    // agent_answer.xml ends only on a BYE; carrier_call.xml sends it after 500 ms.
    let agent = uas("agent_answer.xml", agent_port, &[]);
    let carrier = uac("carrier_call.xml", gateway.udp(), &["-s", SUPPORT_NUMBER, "-d", "500"]);
    assert_call(carrier, agent);
}

#[test]
fn agent_hangs_up_and_the_bye_reaches_the_caller() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    let agent = uas("agent_answer_then_hangup.xml", agent_port, &["-d", "500"]);
    let carrier = uac("carrier_wait_bye.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]);
    assert_call(carrier, agent);
}

#[test]
fn caller_cancels_before_answer_and_the_agent_leg_is_cancelled() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    // The agent rings until it gets a CANCEL, then answers it 200 and the INVITE 487.
    let agent = uas("agent_ring_forever.xml", agent_port, &[]);
    let carrier = uac("carrier_cancel.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]);
    assert_call(carrier, agent);
}

#[test]
fn busy_agent_486_is_relayed_to_the_caller() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    let agent = uas("agent_busy.xml", agent_port, &[]);
    let carrier = uac("carrier_busy_486.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]);
    assert_call(carrier, agent);
}

#[test]
fn unanswered_call_ends_with_408_or_480_after_the_agent_timeout() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    // ASSUMED FLAG: the no-answer timeout of the agent leg, in seconds.
    let options = GatewayOptions::default().arg("--agent-timeout").arg("2");
    let gateway = Gateway::start(specs.path(), options);
    let agent = uas("agent_ring_forever.xml", agent_port, &[]);
    let started = Instant::now();
    let carrier = uac("carrier_no_answer.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]);
    let took = started.elapsed();
    // The gateway cancels the ringing agent leg (agent_ring_forever.xml expects the CANCEL).
    assert_call(carrier, agent);
    assert!(
        took >= Duration::from_millis(1500),
        "the call ended after {took:?}, before the 2 s timeout"
    );
}

#[test]
fn unreachable_agent_runtime_gets_503() {
    // Nobody listens on this TCP port: the connection is refused at once.
    let closed = free_port();
    let trunk = address_trunk(closed).destination_tcp(closed);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    uac("carrier_unavailable_503.xml", gateway.udp(), &["-s", SUPPORT_NUMBER]).assert_success();
}

#[test]
fn calls_over_tcp_on_both_legs() {
    let agent_port = free_port();
    let trunk = address_trunk(agent_port).destination_tcp(agent_port);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    let agent =
        checking_agent_with(agent_port, ("support", "local-in", SUPPORT_NUMBER), &["-t", "t1"]);
    let carrier =
        uac("carrier_call.xml", gateway.tcp(), &["-t", "t1", "-s", SUPPORT_NUMBER, "-d", "300"]);
    assert_call(carrier, agent);
}

#[test]
fn hundred_concurrent_calls_all_complete() {
    let agent_port = free_port();
    let trunk = digest_trunk(agent_port).limits(200, 100);
    let specs = Specs::new().with(trunk);
    let gateway = start(&specs);
    let agent = uas("agent_answer.xml", agent_port, &["-m", "100", "-timeout", "40"]);
    // 50 calls/s, each held 3 s: all 100 are up at once around t = 2 s.
    let mut args = digest_args(SUPPORT_NUMBER, &gateway);
    args.extend(
        ["-r", "50", "-l", "100", "-m", "100", "-d", "3000", "-timeout", "40"].map(String::from),
    );
    let carrier = uac("carrier_call_digest.xml", gateway.udp(), &strs(&args));
    assert_call(carrier, agent);
}

#[test]
fn calls_over_tls_through_a_kamailio_front() {
    let agent_port = free_port();
    // TLS only: the call cannot have come in over anything else.
    let trunk = address_trunk(agent_port).transports(&["TLS"]);
    let specs = Specs::new().with(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default().with_tls());
    let front = TlsFront::start(gateway.tls());
    let agent = checking_agent(agent_port, "support", "local-in", SUPPORT_NUMBER);
    let carrier = uac("carrier_call.xml", front.udp(), &["-s", SUPPORT_NUMBER, "-d", "300"]);
    assert_call(carrier, agent);
    assert!(
        front
            .log_text()
            .to_ascii_lowercase()
            .contains(&format!("sent to 127.0.0.1:{} over tls", gateway.tls().port())),
        "kamailio did not relay over TLS:\n{}",
        front.log_text()
    );
}

#[test]
fn sha256_digest_answer_from_linphone_is_accepted() {
    let agent_port = free_port();
    let specs = Specs::new().with(digest_trunk(agent_port));
    // ASSUMED FLAG: challenge with SHA-256 only (clients answer the first algorithm they know).
    let options = GatewayOptions::default().arg("--digest-algorithms").arg("SHA-256");
    let gateway = Gateway::start(specs.path(), options);
    let agent = uas("agent_answer.xml", agent_port, &[]);
    let uri = format!("sip:{SUPPORT_NUMBER}@{}", gateway.udp());
    let mut call =
        LinphoneCall::place(&uri, USERNAME, PASSWORD, "trunkline", Duration::from_millis(500));
    call.assert_connected();
    let answers = call.proxy_authorizations();
    assert!(
        !answers.is_empty() && answers.iter().all(|a| a.contains("algorithm=SHA-256")),
        "linphonec did not answer with SHA-256: {answers:?}"
    );
    agent.wait().assert_success();
}

/// A hand-made INVITE over UDP whose Via points at `from`; `drop_header` leaves one header out
/// and `content_length` replaces the correct value.
fn raw_invite(
    gateway: std::net::SocketAddr,
    from: std::net::SocketAddr,
    case: &str,
    drop_header: Option<&str>,
    content_length: Option<&str>,
) -> Vec<u8> {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    raw_invite_with(gateway, from, case, (drop_header, content_length), ("application/sdp", body))
}

/// [`raw_invite`] with its own `Content-Type` and body.
fn raw_invite_with(
    gateway: std::net::SocketAddr,
    from: std::net::SocketAddr,
    case: &str,
    (drop_header, content_length): (Option<&str>, Option<&str>),
    (content_type, body): (&str, &str),
) -> Vec<u8> {
    let length = body.len().to_string();
    let headers = [
        ("Via", format!("SIP/2.0/UDP {from};branch=z9hG4bK-raw-{case};rport")),
        ("Max-Forwards", "70".to_string()),
        ("From", format!("<sip:+12025550123@127.0.0.1>;tag=raw-{case}")),
        ("To", format!("<sip:{SUPPORT_NUMBER}@{gateway}>")),
        ("Call-ID", format!("raw-{case}@127.0.0.1")),
        ("CSeq", "1 INVITE".to_string()),
        ("Contact", format!("<sip:carrier@{from}>")),
        ("Content-Type", content_type.to_string()),
        ("Content-Length", content_length.unwrap_or(&length).to_string()),
    ];
    let mut text = format!("INVITE sip:{SUPPORT_NUMBER}@{gateway} SIP/2.0\r\n");
    for (name, value) in headers {
        if Some(name) != drop_header {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

#[test]
fn malformed_messages_get_400_and_the_gateway_keeps_serving() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let mut gateway = start(&specs);
    let socket = RawUdp::bind();
    let (to, from) = (gateway.udp(), socket.local_addr());

    // Not SIP at all: nothing to answer to; it must just not hurt.
    socket.send(to, b"\x16\x03\x01\x00\xa5\x01\x00 not SIP \xff\xfe\x00\r\n\r\n");
    socket.send(to, b"\r\n\r\n");
    socket.send(to, &[0xffu8; 1500]);

    let cases: [(&str, Option<&str>, Option<&str>); 4] = [
        ("no-call-id", Some("Call-ID"), None),
        ("no-cseq", Some("CSeq"), None),
        ("content-length-too-big", None, Some("5000")),
        ("content-length-not-a-number", None, Some("twelve")),
    ];
    for (case, drop_header, content_length) in cases {
        let datagram = raw_invite(to, from, case, drop_header, content_length);
        let got = socket.exchange(to, &datagram, 400, Duration::from_secs(3));
        let codes = net::status_codes(&got);
        assert!(
            codes.contains(&400),
            "{case}: expected 400, got {codes:?}\n--- sent ---\n{}\n--- received ---\n{}",
            String::from_utf8_lossy(&datagram),
            got.join("\n---\n")
        );
    }

    assert!(gateway.is_running(), "the gateway exited on malformed input");
    assert_eq!(gateway.admin_get("/readyz").map(|(s, _)| s), Some(200));
    let agent = uas("agent_answer.xml", agent_port, &[]);
    let carrier = uac("carrier_call.xml", gateway.udp(), &["-s", SUPPORT_NUMBER, "-d", "200"]);
    assert_call(carrier, agent);
}

/// A SIP-I interconnect (issue 17, item 2): the INVITE's body is multipart/mixed with the SDP
/// offer and the ISUP IAM. The call completes; the agent runtime gets SDP alone
/// (`Content-Type: application/sdp`, nothing of the multipart or the ISUP). A multipart the
/// gateway cannot read is 400, and a body that is neither SDP nor a multipart is 415 with an
/// `Accept` naming what it takes.
#[test]
fn a_sip_i_invite_completes_and_the_agent_gets_only_its_sdp() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port));
    let gateway = start(&specs);
    let agent = uas("agent_check_sdp_only.xml", agent_port, &[]);
    let carrier =
        uac("carrier_call_sip_i.xml", gateway.udp(), &["-s", SUPPORT_NUMBER, "-d", "200"]);
    assert_call(carrier, agent);

    let socket = RawUdp::bind();
    let (to, from) = (gateway.udp(), socket.local_addr());
    let isup = "--b\r\nContent-Type: application/isup\r\n\r\nIAM\r\n--b--\r\n";
    let cases = [
        ("no-boundary", "multipart/mixed", isup, 400, None),
        ("isup-alone", "application/isup;version=itu-t92+", "IAM", 415, Some(ACCEPT)),
    ];
    for (case, content_type, body, status, accept) in cases {
        let datagram = raw_invite_with(to, from, case, (None, None), (content_type, body));
        let got = socket.exchange(to, &datagram, status, Duration::from_secs(3));
        assert!(net::status_codes(&got).contains(&status), "{case}: {got:?}");
        if let Some(accept) = accept {
            let line = format!("Accept: {accept}\r\n");
            assert!(got.iter().any(|m| m.contains(&line)), "{case}: no {line:?} in {got:?}");
        }
    }
}

/// What a 415 says the gateway takes.
const ACCEPT: &str = "application/sdp, multipart/mixed, multipart/alternative";

/// Calls `number` with carrier_call.xml until a call succeeds, for at most `within` (a failed
/// attempt is a 404 while the gateway has not swapped the new specs in yet).
fn call_until_success(gateway: &Gateway, number: &str, within: Duration) -> SippResult {
    let deadline = Instant::now() + within;
    loop {
        let attempt =
            uac("carrier_call.xml", gateway.udp(), &["-s", number, "-d", "100", "-timeout", "5"]);
        if attempt.success() || Instant::now() >= deadline {
            return attempt;
        }
        drop(attempt);
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn number_added_to_the_folder_while_running_works_on_the_next_call() {
    let agent_port = free_port();
    let before = Trunk::local(SUPPORT_NUMBER, agent_port);
    let specs = Specs::new().with(before.clone());
    let gateway = start(&specs);

    uac("carrier_not_found_404.xml", gateway.udp(), &["-s", BILLING_NUMBER, "-timeout", "10"])
        .assert_success();

    specs.put(&before.number(BILLING_NUMBER, "billing"));
    let agent = checking_agent(agent_port, "billing", "local-in", BILLING_NUMBER);
    let carrier = call_until_success(&gateway, BILLING_NUMBER, Duration::from_secs(5));
    assert_call(carrier, agent);
}

#[test]
fn bad_edit_keeps_the_last_good_specs_serving() {
    let agent_port = free_port();
    let good = Trunk::local(SUPPORT_NUMBER, agent_port);
    let specs = Specs::new().with(good.clone());
    let mut gateway = start(&specs);
    // Three calls reach the agent: before the bad edit, after it, after the fix.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "3", "-timeout", "40"]);
    let udp = gateway.udp();
    let call =
        |number: &str| uac("carrier_call.xml", udp, &["-s", number, "-d", "100", "-timeout", "10"]);
    call(SUPPORT_NUMBER).assert_success();

    specs.write(
        "local-in.yaml",
        "apiVersion: trunkline.dev/v1alpha1\nkind: InboundTrunk\n\
         metadata: {name: local-in, namespace: voice\nspec:\n  numbers: [unclosed\n",
    );
    let rejected = r#"trunkline_config_reloads_total{result="rejected"}"#;
    assert!(
        gateway.wait_metric(rejected, 1.0, Duration::from_secs(5)),
        "the gateway did not reject the bad edit within 5 s (/metrics {rejected}: {:?})",
        gateway.metric(rejected)
    );
    assert!(gateway.is_running(), "the gateway exited on a bad edit");
    assert_eq!(
        gateway.admin_get("/readyz").map(|(s, _)| s),
        Some(200),
        "not ready after a bad edit"
    );
    call(SUPPORT_NUMBER).assert_success();

    // The watcher still works: the fixed file, with one more number, is picked up.
    specs.put(&good.number(BILLING_NUMBER, "billing"));
    call_until_success(&gateway, BILLING_NUMBER, Duration::from_secs(5)).assert_success();
    agent.wait().assert_success();
}

/// The harness's specs folders are what `trunkline check` accepts (passes without the gateway).
#[test]
fn specs_builder_writes_folders_that_check_accepts() {
    let specs = Specs::new()
        .with(digest_trunk(5070).agent_header(AgentHeader::Allow).limits(200, 100))
        .with(
            Trunk::new("local-in")
                .number(UNKNOWN_NUMBER, "support")
                .allow_address("127.0.0.1/32")
                .agent_header(AgentHeader::Ignore)
                .destination_tcp(5070),
        )
        .with(
            Trunk::new("generated-in")
                .number(OTHER_TRUNK_NUMBER, "sales")
                .digest_generated()
                .allow_caller("+1415*")
                .codecs(&["PCMU", "PCMA"])
                .transports(&["UDP"]),
        );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trunkline"))
        .args(["check", "--strict"])
        .arg(specs.path())
        .output()
        .expect("run trunkline check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check refused the harness's specs:\n{text}");
    for object in ["acme-in", "local-in", "generated-in"] {
        assert!(text.contains(&format!("InboundTrunk voice/{object}: accepted")), "{text}");
    }
}

/// The scenarios against each other, no gateway in between: each carrier scenario with the agent
/// (or self-test) scenario that plays its other side. They pass today and keep the scenarios right
/// while the gateway changes.
mod scenarios {
    use super::*;

    fn local(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from((net::LOCALHOST, port))
    }

    #[test]
    fn carrier_call_pairs_with_agent_answer() {
        let port = free_port();
        let agent = uas("agent_answer.xml", port, &[]);
        let carrier = uac("carrier_call.xml", local(port), &["-s", SUPPORT_NUMBER, "-d", "100"]);
        assert_call(carrier, agent);
    }

    #[test]
    fn carrier_call_pairs_with_agent_answer_over_tcp() {
        let port = free_port();
        let agent = uas("agent_answer.xml", port, &["-t", "t1"]);
        let carrier =
            uac("carrier_call.xml", local(port), &["-t", "t1", "-s", SUPPORT_NUMBER, "-d", "100"]);
        assert_call(carrier, agent);
    }

    #[test]
    fn hundred_carrier_calls_at_50_per_second_pair_with_agent_answer() {
        let port = free_port();
        let agent = uas("agent_answer.xml", port, &["-m", "100"]);
        let carrier = uac(
            "carrier_call.xml",
            local(port),
            &["-s", SUPPORT_NUMBER, "-r", "50", "-l", "100", "-m", "100", "-d", "1000"],
        );
        assert_call(carrier, agent);
    }

    #[test]
    fn agent_check_invite_accepts_what_the_gateway_should_send() {
        let port = free_port();
        let agent = checking_agent(port, "support", "acme-in", SUPPORT_NUMBER);
        let carrier = uac(
            "selftest/gateway_like.xml",
            local(port),
            &[
                "-cid_str",
                "gw-%u-%p@%s",
                "-key",
                "agent",
                "support",
                "-key",
                "trunk",
                "acme-in",
                "-key",
                "number",
                SUPPORT_NUMBER,
                "-d",
                "100",
            ],
        );
        assert_call(carrier, agent);
    }

    #[test]
    fn agent_check_invite_fails_on_another_agent() {
        let port = free_port();
        let agent = checking_agent(port, "billing", "acme-in", SUPPORT_NUMBER);
        let carrier = uac(
            "selftest/gateway_like.xml",
            local(port),
            &[
                "-cid_str",
                "gw-%u-%p@%s",
                "-key",
                "agent",
                "support",
                "-key",
                "trunk",
                "acme-in",
                "-key",
                "number",
                SUPPORT_NUMBER,
                "-d",
                "100",
            ],
        );
        carrier.assert_success();
        let agent = agent.wait();
        agent.assert_calls_failed();
        assert!(agent.errors().contains("support=billing"), "{}", agent.errors());
    }

    #[test]
    fn agent_check_invite_fails_on_the_carriers_own_invite() {
        // Straight from the carrier: its Call-ID, its tags, no X-Trunkline-Trunk.
        let port = free_port();
        let agent = checking_agent(port, "support", "acme-in", SUPPORT_NUMBER);
        let carrier = uac(
            "carrier_call_headers.xml",
            local(port),
            &["-s", "support", "-key", "agent", "support", "-d", "100"],
        );
        carrier.assert_success();
        agent.wait().assert_calls_failed();
    }

    #[test]
    fn carrier_call_digest_pairs_with_a_challenger_listing_md5_first() {
        let port = free_port();
        let gateway_like = uas(
            "selftest/challenger.xml",
            port,
            &[
                "-set",
                "accept",
                "1",
                "-key",
                "first_algorithm",
                "MD5",
                "-key",
                "second_algorithm",
                "SHA-256",
            ],
        );
        let auth_uri = format!("{SUPPORT_NUMBER}@{}", local(port));
        let carrier = uac(
            "carrier_call_digest.xml",
            local(port),
            &[
                "-s",
                SUPPORT_NUMBER,
                "-au",
                USERNAME,
                "-ap",
                PASSWORD,
                "-auth_uri",
                &auth_uri,
                "-d",
                "100",
            ],
        );
        assert_call(carrier, gateway_like);
    }

    /// sipp 3.6 reads only the first challenge's algorithm and exits (255) on SHA-256: a gateway
    /// that lists SHA-256 first (RFC 7616 §3.7 preference order) cannot be tested with sipp.
    #[test]
    fn sipp_cannot_answer_a_challenge_listing_sha256_first() {
        let port = free_port();
        let gateway_like = uas(
            "selftest/challenger.xml",
            port,
            &[
                "-set",
                "accept",
                "1",
                "-key",
                "first_algorithm",
                "SHA-256",
                "-key",
                "second_algorithm",
                "MD5",
            ],
        );
        let carrier = uac(
            "carrier_call_digest.xml",
            local(port),
            &["-s", SUPPORT_NUMBER, "-au", USERNAME, "-ap", PASSWORD, "-timeout", "5"],
        );
        assert!(!carrier.success());
        assert!(carrier.errors().contains("authentication must use MD5"), "{}", carrier.errors());
        drop(gateway_like.kill());
    }

    #[test]
    fn carrier_auth_refused_pairs_with_a_refusing_challenger() {
        let port = free_port();
        let gateway_like = uas(
            "selftest/challenger.xml",
            port,
            &[
                "-set",
                "accept",
                "0",
                "-key",
                "first_algorithm",
                "MD5",
                "-key",
                "second_algorithm",
                "SHA-256",
            ],
        );
        let auth_uri = format!("{SUPPORT_NUMBER}@{}", local(port));
        let carrier = uac(
            "carrier_auth_refused_403.xml",
            local(port),
            &["-s", SUPPORT_NUMBER, "-au", USERNAME, "-ap", "wrong", "-auth_uri", &auth_uri],
        );
        assert_call(carrier, gateway_like);
    }

    #[test]
    fn carrier_challenge_checks_both_algorithms() {
        for (second, passes) in [("SHA-256", true), ("MD5", false)] {
            let port = free_port();
            let gateway_like = uas(
                "selftest/challenger.xml",
                port,
                &[
                    "-set",
                    "accept",
                    "1",
                    "-key",
                    "first_algorithm",
                    "MD5",
                    "-key",
                    "second_algorithm",
                    second,
                ],
            );
            let carrier = uac("carrier_challenge.xml", local(port), &["-s", SUPPORT_NUMBER]);
            if passes {
                carrier.assert_success();
            } else {
                carrier.assert_calls_failed();
            }
            // It waits for an answer to its challenge that never comes.
            drop(gateway_like.kill());
        }
    }

    #[test]
    fn carrier_wait_bye_pairs_with_agent_answer_then_hangup() {
        let port = free_port();
        let agent = uas("agent_answer_then_hangup.xml", port, &["-d", "200"]);
        let carrier = uac("carrier_wait_bye.xml", local(port), &["-s", SUPPORT_NUMBER]);
        assert_call(carrier, agent);
    }

    #[test]
    fn carrier_cancel_pairs_with_agent_ring_forever() {
        let port = free_port();
        let agent = uas("agent_ring_forever.xml", port, &[]);
        let carrier = uac("carrier_cancel.xml", local(port), &["-s", SUPPORT_NUMBER]);
        assert_call(carrier, agent);
    }

    #[test]
    fn carrier_busy_pairs_with_agent_busy() {
        let port = free_port();
        let agent = uas("agent_busy.xml", port, &[]);
        let carrier = uac("carrier_busy_486.xml", local(port), &["-s", SUPPORT_NUMBER]);
        assert_call(carrier, agent);
    }

    #[test]
    fn carrier_refusal_scenarios_pair_with_their_codes() {
        for (scenario, refuser) in [
            ("carrier_refused_403.xml", "selftest/reject_403.xml"),
            ("carrier_not_found_404.xml", "selftest/reject_404.xml"),
            ("carrier_no_answer.xml", "selftest/reject_408.xml"),
            ("carrier_no_answer.xml", "selftest/reject_480.xml"),
            ("carrier_unavailable_503.xml", "selftest/reject_503.xml"),
        ] {
            let port = free_port();
            let refuser = uas(refuser, port, &[]);
            let carrier = uac(scenario, local(port), &["-s", SUPPORT_NUMBER]);
            assert_call(carrier, refuser);
        }
    }

    #[test]
    fn carrier_scenarios_fail_on_an_unexpected_answer() {
        // A 404 where a call expects 200, and where a refusal expects 403.
        for scenario in ["carrier_call.xml", "carrier_refused_403.xml"] {
            let port = free_port();
            let refuser = uas("selftest/reject_404.xml", port, &[]);
            let carrier = uac(scenario, local(port), &["-s", SUPPORT_NUMBER, "-timeout", "5"]);
            carrier.assert_calls_failed();
            drop(refuser.kill());
        }
    }

    #[test]
    fn linphone_answers_a_sha256_only_challenge_correctly() {
        let port = free_port();
        let challenger = uas(
            "selftest/challenger.xml",
            port,
            &[
                "-set",
                "accept",
                "1",
                "-key",
                "first_algorithm",
                "SHA-256",
                "-key",
                "second_algorithm",
                "SHA-256",
            ],
        );
        let uri = format!("sip:{SUPPORT_NUMBER}@{}", local(port));
        let mut call =
            LinphoneCall::place(&uri, USERNAME, PASSWORD, "trunkline", Duration::from_millis(300));
        call.assert_connected();
        challenger.wait().assert_success();
        let answers = call.proxy_authorizations();
        assert!(answers.iter().all(|a| a.contains("algorithm=SHA-256")), "{answers:?}");
        // The first answer is the INVITE's.
        let first = answers.first().expect("linphonec answered the challenge");
        let value = first.split_once(':').map(|(_, v)| v).unwrap_or_default();
        assert_eq!(
            support::digest::answer_is_right(value, "INVITE", PASSWORD),
            Ok(true),
            "{value}"
        );
    }

    /// The checker used above, on the example of RFC 7616 §3.9.1.
    #[test]
    fn digest_checker_agrees_with_the_rfc_7616_example() {
        let common = r#"username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", nc=00000001, qop=auth, opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        for (algorithm, response) in [
            ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let value = format!(r#"Digest {common}, algorithm={algorithm}, response="{response}""#);
            assert_eq!(
                support::digest::answer_is_right(&value, "GET", "Circle of Life"),
                Ok(true),
                "{algorithm}"
            );
            let wrong = support::digest::answer_is_right(&value, "GET", "Circle of Death");
            assert_eq!(wrong, Ok(false), "{algorithm}");
        }
    }
}
