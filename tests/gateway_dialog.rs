//! Requests inside an answered call (issue 3, item 4): a re-INVITE from the carrier is passed to
//! the agent runtime with its SDP, and the agent's answer comes back; the B2BUA acknowledges each
//! leg itself. The built `trunkline run` between two sipps on 127.0.0.0/8.

mod support;

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

#[test]
fn hold_and_resume_reinvites_from_the_carrier_reach_the_agent_and_their_answers_come_back() {
    let agent_port = free_port();
    let trunk = Trunk::local(NUMBER, agent_port);
    let specs = Specs::new().with(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    // The agent checks the first re-INVITE carries a=sendonly and answers a=recvonly, then the
    // second a=sendrecv; the carrier checks each answer it gets back. The SDP crosses the RTP
    // relay's rewrite both ways.
    let agent = uas("agent_answer_reinvite.xml", agent_port, &["-m", "1", "-timeout", "20"]);
    uac("carrier_reinvite.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
}

#[test]
fn an_invite_requiring_an_extension_we_lack_gets_420_naming_it() {
    use support::net::{RawUdp, status_codes};
    let specs = Specs::new().with(
        Trunk::new("local-in")
            .number(NUMBER, "support")
            .allow_address("127.0.0.1/32")
            .destination_udp(free_port()),
    );
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let socket = RawUdp::bind();
    let me = socket.local_addr();
    let invite = format!(
        "INVITE sip:{NUMBER}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK420a\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=a1\r\nTo: <sip:{NUMBER}@{gw}>\r\n\
         Call-ID: require-420@test\r\nCSeq: 1 INVITE\r\nRequire: 100rel\r\nContent-Length: 0\r\n\r\n",
        gw = gateway.udp()
    );
    socket.send(gateway.udp(), invite.as_bytes());
    let answers = socket.receive_for(std::time::Duration::from_secs(2));
    assert!(status_codes(&answers).contains(&420), "{answers:?}");
    assert!(answers.iter().any(|a| a.contains("Unsupported: 100rel")), "{answers:?}");
}

#[test]
fn an_invite_without_an_rfc_3261_branch_gets_400_and_no_call() {
    use support::net::{RawUdp, status_codes};
    let agent_port = free_port();
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let agent = std::net::UdpSocket::bind(("127.0.0.1", agent_port)).unwrap();
    agent.set_nonblocking(true).unwrap();
    let socket = RawUdp::bind();
    let me = socket.local_addr();
    // An RFC 2543 peer: its branch lacks the z9hG4bK cookie.
    let invite = format!(
        "INVITE sip:{NUMBER}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=2543a\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=a1\r\nTo: <sip:{NUMBER}@{gw}>\r\n\
         Call-ID: rfc2543@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        gw = gateway.udp()
    );
    socket.send(gateway.udp(), invite.as_bytes());
    let answers = socket.receive_for(std::time::Duration::from_secs(2));
    assert_eq!(status_codes(&answers), [400].into(), "{answers:?}");
    let mut buf = [0u8; 2048];
    assert!(agent.recv(&mut buf).is_err(), "nothing reaches the agent");
}

/// Issue 16: new INVITEs are decided by several front-door workers. Copies of one INVITE that
/// arrive together (a carrier's retransmissions, or a duplicating network) must still start one
/// call: the copies of a Call-ID are decided in order by one worker, and the later ones find the
/// call the first started. Several calls, each INVITE sent four times back to back: the agent
/// runtime is offered exactly one call per carrier call.
#[test]
fn copies_of_an_invite_arriving_together_start_one_call() {
    use std::collections::HashSet;
    use support::net::RawUdp;
    const CALLS: usize = 8;
    let agent_port = free_port();
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let agent = std::net::UdpSocket::bind(("127.0.0.1", agent_port)).unwrap();
    let socket = RawUdp::bind();
    let me = socket.local_addr();
    let gw = gateway.udp();
    let invites: Vec<String> = (0..CALLS)
        .map(|i| {
            format!(
                "INVITE sip:{NUMBER}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdup{i}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=d{i}\r\n\
                 To: <sip:{NUMBER}@{gw}>\r\nCall-ID: duplicated-{i}@test\r\nCSeq: 1 INVITE\r\n\
                 Contact: <sip:carrier@{me}>\r\nContent-Length: 0\r\n\r\n"
            )
        })
        .collect();
    for invite in &invites {
        for _ in 0..4 {
            socket.send(gw, invite.as_bytes());
        }
    }
    // What reaches the agent in 3 s: each call's INVITE (and its retransmissions, same
    // Call-ID, since nobody answers).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut call_ids = HashSet::new();
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        agent.set_read_timeout(Some(left.max(std::time::Duration::from_millis(1)))).unwrap();
        let Ok(n) = agent.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("INVITE ") {
            let call_id = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .expect("the gateway's INVITE has a Call-ID");
            call_ids.insert(call_id.to_string());
        }
    }
    assert_eq!(
        call_ids.len(),
        CALLS,
        "one call offered to the agent per carrier call: {call_ids:?}"
    );
}
