//! Transfers (issue 13) on the wire, as far as they are built: the built `trunkline run`
//! between sipp as the carrier and sipp as the agent runtime on 127.0.0.1. The agent REFERs the
//! call to a Hangup destination: 202, NOTIFY with `message/sipfrag` 200, then both legs end.

mod support;

use std::time::Duration;

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

const DESTINATIONS: &str = "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {name: end-call, namespace: voice}
spec: {type: Hangup}
";

/// The gateway with an address-only inbound trunk whose calls go to an agent on `agent_port`,
/// and `destinations` (YAML) beside it.
fn start(agent_port: u16, destinations: &str) -> (Gateway, Specs) {
    let specs = Specs::new().with(
        Trunk::new("local-in")
            .number(NUMBER, "support")
            .allow_address("127.0.0.1/32")
            .destination_udp(agent_port),
    );
    specs.write("transfers.yaml", destinations);
    (Gateway::start(specs.path(), GatewayOptions::default()), specs)
}

#[test]
fn an_agents_refer_to_a_hangup_destination_ends_the_call_with_progress_to_the_agent() {
    let agent_port = free_port();
    let (gateway, _specs) = start(agent_port, DESTINATIONS);
    let agent = uas(
        "agent_answer_then_refer.xml",
        agent_port,
        &["-d", "300", "-key", "transfer_to", "end-call", "-timeout", "15"],
    );
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    let counted = r#"trunkline_transfers_total{destination="voice/end-call",mode="Hangup",outcome="completed"}"#;
    assert!(gateway.wait_metric(counted, 1.0, Duration::from_secs(3)), "not counted");
}

#[test]
fn an_agents_refer_to_a_number_that_is_no_destination_is_403_and_the_call_goes_on() {
    let agent_port = free_port();
    let (gateway, _specs) = start(agent_port, DESTINATIONS);
    let agent = uas(
        "agent_refer_refused.xml",
        agent_port,
        &["-d", "300", "-key", "transfer_to", "+19005550100", "-timeout", "15"],
    );
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    let refused =
        r#"trunkline_transfers_total{destination="unknown",mode="none",outcome="refused"}"#;
    assert!(gateway.wait_metric(refused, 1.0, Duration::from_secs(3)), "not counted");
}

#[test]
fn a_refer_mode_transfer_is_passed_to_the_carrier_and_its_notify_reaches_the_agent() {
    let agent_port = free_port();
    let specs = Specs::new()
        .with(
            Trunk::new("local-in")
                .number(NUMBER, "support")
                .allow_address("127.0.0.1/32")
                .destination_udp(agent_port),
        )
        .with_outbound(support::Outbound::new("carrier-out", free_port()));
    specs.write(
        "transfers.yaml",
        "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {name: front-desk, namespace: voice}
spec:
  type: Phone
  phone: {number: \"+14155550188\", outboundTrunkRef: {name: carrier-out}}
  mode: Refer
",
    );
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let agent = uas(
        "agent_refer_mode.xml",
        agent_port,
        &["-d", "300", "-key", "transfer_to", "front-desk", "-timeout", "15"],
    );
    let carrier = uac(
        "carrier_accept_refer.xml",
        gateway.udp(),
        &["-s", NUMBER, "-key", "refer_to_user", "+14155550188", "-timeout", "15"],
    );
    carrier.assert_success();
    agent.wait().assert_success();
    let counted = r#"trunkline_transfers_total{destination="voice/front-desk",mode="Refer",outcome="completed"}"#;
    assert!(gateway.wait_metric(counted, 1.0, Duration::from_secs(3)), "not counted");
}
