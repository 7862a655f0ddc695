//! Requests inside an answered call (issue 3, item 4): a re-INVITE from the carrier is passed to
//! the agent runtime with its SDP, and the agent's answer comes back; the B2BUA acknowledges each
//! leg itself. The built `trunkline run` between two sipps on 127.0.0.0/8.

mod support;

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

#[test]
fn a_hold_reinvite_from_the_carrier_reaches_the_agent_and_its_answer_comes_back() {
    let agent_port = free_port();
    let trunk = Trunk::new("local-in")
        .number(NUMBER, "support")
        .allow_address("127.0.0.1/32")
        .destination_udp(agent_port);
    let specs = Specs::new().with(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    // The agent checks the re-INVITE carries a=sendonly and answers a=recvonly; the carrier
    // checks the answer it gets back says a=recvonly.
    let agent = uas("agent_answer_reinvite.xml", agent_port, &["-m", "1", "-timeout", "20"]);
    uac("carrier_reinvite.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
}
