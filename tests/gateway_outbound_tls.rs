//! Outbound calls to a carrier that speaks TLS (issue 12, item 4): an OutboundTrunk with
//! `transport: TLS` and `host: localhost`. The carrier is sipp behind Kamailio, which listens on
//! TLS with a certificate for `localhost` signed by a CA made for the test and relays to sipp
//! over UDP (Debian's sipp has no TLS). The call completes only when the gateway resolved the
//! name, checked the certificate against it and trusted `--tls-ca`; with another CA the agent
//! gets 503, and the log and the metric say why.
//!
//! Also a carrier that challenges with 407 (Kamailio's `auth` module in front of sipp).
//!
//! Peers: sipp, Kamailio (`kamailio`, `kamailio-tls-modules`); tests/run.sh installs them.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::ca::TestCa;
use support::kamailio::TlsFront;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, TempDir, free_port};

fn gateway_trusting(specs: &Specs, ca: &TestCa, dir: &TempDir) -> Gateway {
    let ca_file = ca.write(dir.path(), "ca.pem");
    let options = GatewayOptions::default()
        .arg("--tls-ca")
        .arg(ca_file.to_str().expect("temp paths are UTF-8"));
    Gateway::start(specs.path(), options)
}

fn agent_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "-s",
        "+14155550142",
        "-key",
        "trunk",
        "carrier-tls",
        "-key",
        "agent",
        "support",
        "-key",
        "from_user",
        "bot",
        "-timeout",
        "15",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_outbound_call_reaches_a_tls_carrier_verified_against_the_tls_ca() {
    let ca = TestCa::new("trunkline test carriers CA");
    let carrier_port = free_port();
    let front = TlsFront::start_agent_side(
        &ca.issue(&["localhost"]),
        SocketAddr::from(([127, 0, 0, 1], carrier_port)),
    );
    let dir = TempDir::new("tls-carrier");
    let trunk = Outbound::new("carrier-tls", front.tls().port()).host("localhost").transport("TLS");
    let specs = Specs::new().with_outbound(trunk);
    let gateway = gateway_trusting(&specs, &ca, &dir);
    let carrier = uas("agent_answer.xml", carrier_port, &["-timeout", "15"]);
    uac("agent_outbound_call.xml", gateway.internal(), &agent_args(&["-d", "300"]))
        .assert_success();
    carrier.wait().assert_success();
    assert!(
        front
            .log_text()
            .to_ascii_lowercase()
            .contains(&format!("sent to 127.0.0.1:{carrier_port} over udp")),
        "kamailio relayed nothing from the gateway to the carrier:\n{}",
        front.log_text()
    );
    let failures = r#"trunkline_tls_client_failures_total{reason="unknown_ca"}"#;
    assert_eq!(gateway.metric(failures), Some(0.0));
}

#[test]
fn an_outbound_call_to_a_tls_carrier_with_a_certificate_from_another_ca_gets_503() {
    let trusted = TestCa::new("trunkline test carriers CA");
    let other = TestCa::new("someone else's CA");
    let carrier_port = free_port();
    let front = TlsFront::start_agent_side(
        &other.issue(&["localhost"]),
        SocketAddr::from(([127, 0, 0, 1], carrier_port)),
    );
    let dir = TempDir::new("tls-carrier");
    let trunk = Outbound::new("carrier-tls", front.tls().port()).host("localhost").transport("TLS");
    let specs = Specs::new().with_outbound(trunk);
    let gateway = gateway_trusting(&specs, &trusted, &dir);
    let carrier = uas("agent_answer.xml", carrier_port, &["-timeout", "5"]);
    let agent = uac("agent_outbound_call.xml", gateway.internal(), &agent_args(&[]));
    assert_eq!(agent.received_codes().last().copied(), Some(503), "{}", agent.report());
    let carrier = carrier.kill();
    assert!(
        !carrier.messages().iter().any(|m| m.text.starts_with("INVITE")),
        "the carrier got a call"
    );
    let failures = r#"trunkline_tls_client_failures_total{reason="unknown_ca"}"#;
    assert!(gateway.wait_metric(failures, 1.0, Duration::from_secs(3)), "not counted");
    assert!(gateway.log_text().contains("unknown CA"), "the reason is not in the log");
}

/// A carrier that challenges with 407 (Proxy-Authenticate) rather than 401, verified by a real
/// challenger (Kamailio's `auth` module; sipp's `verifyauth` reads only `Authorization`).
#[test]
fn a_carrier_challenging_with_407_is_answered_and_verified_by_kamailio() {
    let carrier_port = free_port();
    let front = TlsFront::start_digest_proxy(
        SocketAddr::from(([127, 0, 0, 1], carrier_port)),
        "acct-7",
        "carrier-pw",
    );
    let trunk = Outbound::new("carrier-tls", front.udp().port()).digest("acct-7", "carrier-pw");
    let specs = Specs::new().with_outbound(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let carrier = uas("agent_answer.xml", carrier_port, &["-timeout", "15"]);
    uac("agent_outbound_call.xml", gateway.internal(), &agent_args(&["-d", "300"]))
        .assert_success();
    carrier.wait().assert_success();
    let log = front.log_text();
    assert!(log.contains("challenging "), "kamailio never challenged:\n{log}");
    assert!(log.contains("verified the answer of acct-7"), "no answer verified:\n{log}");
}

#[test]
fn a_wrong_password_against_a_407_carrier_is_403_to_the_agent() {
    let carrier_port = free_port();
    let front = TlsFront::start_digest_proxy(
        SocketAddr::from(([127, 0, 0, 1], carrier_port)),
        "acct-7",
        "carrier-pw",
    );
    let trunk = Outbound::new("carrier-tls", front.udp().port()).digest("acct-7", "wrong");
    let specs = Specs::new().with_outbound(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let carrier = uas("agent_answer.xml", carrier_port, &["-timeout", "5"]);
    let agent = uac("agent_outbound_call.xml", gateway.internal(), &agent_args(&[]));
    assert_eq!(agent.received_codes().last().copied(), Some(403), "{}", agent.report());
    let carrier = carrier.kill();
    assert!(
        !carrier.messages().iter().any(|m| m.text.starts_with("INVITE")),
        "the call got through"
    );
    let refused = r#"trunkline_peer_auth_failures_total{peer="carrier",trunk="voice/carrier-tls"}"#;
    assert!(gateway.wait_metric(refused, 1.0, Duration::from_secs(3)), "not counted");
}
