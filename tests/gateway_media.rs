//! The codec policy on real calls (issue 4, item 2): the offer toward the agent keeps only the
//! trunk's codecs plus telephone-event; no common codec is 488 and nothing reaches the agent.
//! The built `trunkline run` between sipps on 127.0.0.0/8.

mod support;

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

fn pcmu_only_trunk(agent_port: u16) -> Trunk {
    Trunk::new("local-in")
        .number(NUMBER, "support")
        .allow_address("127.0.0.1/32")
        .destination_udp(agent_port)
        .codecs(&["PCMU"])
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
