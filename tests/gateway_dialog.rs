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
