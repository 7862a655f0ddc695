//! Bridged transfers (issue 13) on the wire, with the caller's RTP checked packet by packet: a
//! hand-driven carrier (it sends RTP and checks what comes back) calls the built `trunkline
//! run`; sipp is the agent runtime, which REFERs the call to a `Phone` destination whose
//! OutboundTrunk points at a third sipp (the person's phone). Only the destination echoes RTP,
//! or only the agent does, so what comes back says who the caller is talking to.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::carrier::{Carrier, echo_through, line_after, relay_of};
use support::net::TempDir;
use support::records::wait_records;
use support::sipp::{SippResult, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";
const DESK: &str = "+14155550199";

/// The gateway: calls to NUMBER go to the agent on `agent_port`; the destination `sales-desk`
/// is DESK through the OutboundTrunk `carrier-out`, whose carrier is at `desk_port`.
fn start(agent_port: u16, desk_port: u16) -> (Gateway, Specs, TempDir) {
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
    // Session records go to records.jsonl in the returned directory.
    let dir = TempDir::new("records");
    let file = dir.join("records.jsonl");
    let options = GatewayOptions::default().arg("--records-file").arg(file.to_str().expect("path"));
    (Gateway::start(specs.path(), options), specs, dir)
}

/// The carrier's call is answered: its dialog's To (with the tag) and the relay's address.
fn call(carrier: &Carrier) -> (String, std::net::SocketAddr) {
    let media_port = carrier.media.local_addr().expect("addr").port();
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    );
    let to = format!("<sip:{NUMBER}@{}>", carrier.gateway);
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));
    (to_tagged, relay_of(&ok).0)
}

/// The counter of bridged transfers to `sales-desk` with this outcome.
fn transfers(outcome: &str) -> String {
    format!(
        r#"trunkline_transfers_total{{destination="voice/sales-desk",mode="Bridge",outcome="{outcome}"}}"#
    )
}

/// The first message of a sipp run whose text starts with `start`.
fn message(run: &SippResult, start: &str) -> String {
    run.messages()
        .into_iter()
        .find(|m| m.text.starts_with(start))
        .map(|m| m.text)
        .expect("the message in the sipp trace (printed with the test's failure)")
}

#[test]
fn a_phone_destination_that_answers_takes_the_callers_rtp_both_ways_and_the_agent_leaves() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let (gateway, _specs, records) = start(agent_port, desk_port);
    // The person's phone echoes RTP; the agent does not.
    let desk = uas("destination_answer.xml", desk_port, &["-rtp_echo", "-timeout", "25"]);
    let agent = uas(
        "agent_refer_mode.xml",
        agent_port,
        &["-d", "1500", "-key", "transfer_to", "sales-desk", "-timeout", "25"],
    );
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let (to_tagged, relay) = call(&carrier);

    assert_eq!(echo_through(&carrier, relay, 3), 0, "the agent does not echo: nothing yet");
    let completed = transfers("completed");
    assert!(gateway.wait_metric(&completed, 1.0, Duration::from_secs(10)), "no completed transfer");
    // From the same relay address: no re-INVITE came, yet the person's phone answers now.
    let echoed = echo_through(&carrier, relay, 50);
    assert!(echoed >= 45, "only {echoed} of 50 packets came back from the destination");
    // The agent heard NOTIFY 100 and 200 and got BYE (its scenario checks them).
    agent.wait().assert_success();

    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to the BYE");
    let desk = desk.wait();
    desk.assert_success();
    let invite = message(&desk, &format!("INVITE sip:{DESK}@127.0.0.1:{desk_port} "));
    // The trunk's caller id (the caller's own number is not one it may present), our number as
    // the diverting party, a Call-ID of the gateway's.
    let from = line_after(&invite, "From:").expect("From");
    assert!(from.contains("sip:+14155550100@"), "From: {from}");
    let diversion = line_after(&invite, "Diversion:").expect("Diversion");
    assert!(diversion.starts_with(&format!("<sip:{NUMBER}@")), "Diversion: {diversion}");
    assert!(!invite.contains("rtp-test@"), "the caller's Call-ID reached the destination");

    // The session record says what happened: three legs, the transfer, RTP per leg.
    let file = records.join("records.jsonl");
    let record = wait_records(&file, 1, Duration::from_secs(5)).remove(0);
    let roles: Vec<&str> = record["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["role"].as_str())
        .collect();
    assert_eq!(roles, ["carrier", "agent", "transfer"], "{record:#}");
    assert_eq!(record["hangupSide"], "carrier", "the caller's BYE ended it");
    let transfer = &record["transfers"][0];
    assert_eq!(
        (&transfer["destination"], &transfer["mode"], &transfer["outcome"], &transfer["status"]),
        (&json!("voice/sales-desk"), &json!("Bridge"), &json!("completed"), &json!(200))
    );
    let rtp: Vec<(&str, u64)> = record["rtp"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["leg"].as_str()?, e["packets"].as_u64()?)))
        .collect();
    assert_eq!(
        rtp.iter().map(|(leg, _)| *leg).collect::<Vec<_>>(),
        ["carrier", "agent", "transfer"]
    );
    assert!(rtp[2].1 >= 45, "the destination's echo: {rtp:?}");
}

#[test]
fn a_busy_destination_leaves_the_caller_talking_to_the_agent() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let (gateway, _specs, _records) = start(agent_port, desk_port);
    let desk = uas("agent_busy.xml", desk_port, &["-timeout", "20"]);
    // The agent echoes RTP; the destination is busy.
    let agent = uas(
        "agent_refer_fails.xml",
        agent_port,
        &["-rtp_echo", "-d", "500", "-key", "transfer_to", "sales-desk", "-timeout", "20"],
    );
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let (to_tagged, relay) = call(&carrier);

    let failed = transfers("failed");
    assert!(gateway.wait_metric(&failed, 1.0, Duration::from_secs(10)), "no failed transfer");
    let after = Instant::now();
    let echoed = echo_through(&carrier, relay, 25);
    assert!(echoed >= 20, "only {echoed} of 25 packets came back from the agent after the failure");
    assert!(after.elapsed() < Duration::from_secs(15));

    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to the BYE");
    let agent = agent.wait();
    agent.assert_success();
    let notify = agent
        .messages()
        .into_iter()
        .filter(|m| !m.sent && m.text.starts_with("NOTIFY "))
        .map(|m| m.text)
        .next_back()
        .expect("a NOTIFY");
    assert!(notify.contains("SIP/2.0 486"), "the agent must hear the destination's 486:\n{notify}");
    desk.wait().assert_success();
}
