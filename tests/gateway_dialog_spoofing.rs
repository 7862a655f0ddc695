//! In-dialog requests must be the dialog's (issue 15, item 2): Call-ID, both tags, CSeq order,
//! the leg's signalling source and its trust zone. The built `trunkline run` between a
//! hand-driven carrier at 127.0.0.1, sipp as the agent runtime, and a spoofer at 127.0.0.2 that
//! knows the call's identifiers but not its address; all on 127.0.0.0/8, every wait bounded.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::carrier::{Carrier, line_after};
use support::net::{RawUdp, status_codes};
use support::sipp::uas;
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";
const ACTIVE: &str = r#"trunkline_active_calls{direction="inbound",trunk="voice/local-in"}"#;

/// `trunkline_dialog_refusals_total` of `reason`.
fn refusals(gateway: &Gateway, reason: &str) -> Option<f64> {
    gateway.metric(&format!(r#"trunkline_dialog_refusals_total{{reason="{reason}"}}"#))
}

/// A gateway whose trunk allows callers from 127.0.0.1 only (no digest: the trunk trusts the
/// carrier's address), and the agent runtime answering one call.
fn gateway_and_agent(extra: &[&str]) -> (Gateway, support::sipp::SippHandle, Specs) {
    let agent_port = free_port();
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    let mut options = GatewayOptions::default();
    for arg in extra {
        options = options.arg(arg);
    }
    let gateway = Gateway::start(specs.path(), options);
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "60"]);
    (gateway, agent, specs)
}

fn offer(carrier: &Carrier) -> String {
    let port = carrier.media.local_addr().expect("addr").port();
    format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// The carrier calls and acknowledges the answer; returns the To header of the dialog (with
/// the gateway's tag) once the gateway counts the call.
fn answered_call(gateway: &Gateway, carrier: &Carrier) -> String {
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer(carrier)));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    assert!(to_tagged.contains("tag="), "{ok}");
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));
    assert!(gateway.wait_metric(ACTIVE, 1.0, Duration::from_secs(5)), "the call is not up");
    to_tagged
}

/// Polls the gauge of active calls until it is `value`, for at most `within`.
fn active_calls_become(gateway: &Gateway, value: f64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if gateway.metric(ACTIVE) == Some(value) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The call is still up a moment after a refused request (a BYE taken would end it at once).
fn assert_still_up(gateway: &Gateway, after: &str) {
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gateway.metric(ACTIVE), Some(1.0), "the call ended after {after}");
}

/// The real carrier hangs up: 200, and the call ends on both legs.
fn carrier_hangs_up(gateway: &Gateway, carrier: &Carrier, to: &str, cseq: u32) {
    carrier.send(&carrier.request("BYE", "realbye", cseq, to, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to the BYE");
    assert!(active_calls_become(gateway, 0.0, Duration::from_secs(5)), "the call did not end");
}

#[test]
fn a_bye_from_another_address_with_every_identifier_of_the_call_gets_481_and_the_call_goes_on() {
    let (gateway, agent, _specs) = gateway_and_agent(&[]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = answered_call(&gateway, &carrier);
    // The spoofer learned the Call-ID, both tags and the next CSeq (a leaked trace): only its
    // address differs from the carrier's.
    let spoofer = RawUdp::bind_ip(Ipv4Addr::new(127, 0, 0, 2));
    let bye = carrier.request("BYE", "spoofbye", 2, &to, "");
    let answers = spoofer.exchange(gateway.udp(), bye.as_bytes(), 481, Duration::from_secs(3));
    assert_eq!(status_codes(&answers), [481].into(), "{answers:?}");
    assert_still_up(&gateway, "a BYE from 127.0.0.2");
    // Counted by reason (every reason exported from the start, at 0).
    assert_eq!(refusals(&gateway, "wrong_source"), Some(1.0));
    assert_eq!(refusals(&gateway, "wrong_zone"), Some(0.0));
    carrier_hangs_up(&gateway, &carrier, &to, 3);
    agent.wait().assert_success();
}

#[test]
fn a_bye_with_a_wrong_to_tag_gets_481_and_the_call_goes_on() {
    let (gateway, agent, _specs) = gateway_and_agent(&[]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = answered_call(&gateway, &carrier);
    let wrong = format!("<sip:{NUMBER}@{}>;tag=guessed", gateway.udp());
    carrier.send(&carrier.request("BYE", "wrongtag", 2, &wrong, ""));
    assert!(carrier.response("481", Duration::from_secs(3)).is_some(), "no 481 to the BYE");
    assert_still_up(&gateway, "a BYE with a wrong To tag");
    // Without any To tag it is no request of the dialog either.
    let tagless = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("BYE", "notag", 3, &tagless, ""));
    assert!(carrier.response("481", Duration::from_secs(3)).is_some(), "no 481 to the BYE");
    assert_still_up(&gateway, "a BYE without a To tag");
    assert_eq!(refusals(&gateway, "no_dialog"), Some(2.0));
    carrier_hangs_up(&gateway, &carrier, &to, 4);
    agent.wait().assert_success();
}

#[test]
fn the_carriers_bye_sent_to_the_agent_facing_listener_gets_481_and_the_call_goes_on() {
    let (gateway, agent, _specs) = gateway_and_agent(&[]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = answered_call(&gateway, &carrier);
    // Same peer address, same identifiers: only the listener (the trust zone) is wrong.
    let bye = carrier.request("BYE", "zonebye", 2, &to, "");
    carrier.sip.send_to(bye.as_bytes(), gateway.internal()).expect("send");
    assert!(carrier.response("481", Duration::from_secs(3)).is_some(), "no 481 to the BYE");
    assert_still_up(&gateway, "a BYE on the agent-facing listener");
    assert_eq!(refusals(&gateway, "wrong_zone"), Some(1.0));
    carrier_hangs_up(&gateway, &carrier, &to, 3);
    agent.wait().assert_success();
}

/// The issue's scenario: the trunk admits INVITEs by source address, and UDP source addresses
/// can be forged. A blind attacker sends an INVITE with the carrier's address as its source
/// (here: through the carrier's own socket, which is what a forged source amounts to; the
/// attacker reads nothing) and then an ACK without a To tag, since the gateway's tag went to
/// the carrier in the 200. The gateway must not take that ACK as the call's: it goes on
/// retransmitting its 200 to the carrier's address and, with no ACK after 64·T1 (RFC 3261
/// §13.3.1.4, 32 s), hangs up both legs. Today the tagless ACK confirms the call, which then
/// lasts until the media timeout (set to 120 s here, so the test cannot mistake one for the
/// other).
#[test]
fn a_forged_invite_and_a_tagless_ack_on_an_address_trunk_give_no_call() {
    let (gateway, agent, _specs) = gateway_and_agent(&["--media-timeout", "120"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let attacker_media = "v=0\r\no=x 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n\
                          t=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
                          a=rtpmap:101 telephone-event/8000\r\n";
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    let started = Instant::now();
    carrier.send(&carrier.request("INVITE", "forged", 1, &to, attacker_media));
    // The attacker cannot see the 200; it only has to send its ACK after it. The test waits
    // for the carrier to see the 200 so that the ACK is not early by accident.
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "the agent did not answer");
    carrier.send(&carrier.request("ACK", "forgedack", 1, &to, ""));
    let acked = Instant::now();

    let mut retransmitted = 0;
    let mut bye = None;
    let mut buf = vec![0u8; 65_536];
    while bye.is_none() && started.elapsed() < Duration::from_secs(45) {
        let Ok((n, _)) = carrier.sip.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 200") && acked.elapsed() > Duration::from_millis(300) {
            retransmitted += 1;
        } else if text.starts_with("BYE ") {
            bye = Some(text);
        }
    }
    assert!(retransmitted >= 3, "the 200 stopped after a tagless ACK ({retransmitted} after it)");
    let bye = bye.expect("the gateway did not hang up the unacknowledged call within 45 s");
    assert!(started.elapsed() < Duration::from_secs(45), "{bye}");
    assert!(active_calls_become(&gateway, 0.0, Duration::from_secs(5)), "the call did not end");
    agent.wait().assert_success();
}
