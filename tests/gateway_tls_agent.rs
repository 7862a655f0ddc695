//! TLS toward the agent runtime, end to end (issue 12, item 4): an InboundTrunk whose
//! destination is `sip:...@localhost:PORT;transport=tls`. The built `trunkline run` between sipp
//! as the carrier (UDP) and sipp as the agent runtime behind Kamailio, which listens on TLS with a
//! certificate for `localhost` signed by a CA made for the test, and relays to sipp over UDP
//! (Debian's sipp has no TLS).
//!
//! The certificate names only `localhost` (no IP address): the call completes only when the
//! gateway resolved the name, checked the certificate against it and trusted `--tls-ca`. With
//! another CA the call fails with 503 to the carrier and the failure is in the log and the metric.
//!
//! Peers: sipp (`sip-tester`), Kamailio (`kamailio`, `kamailio-tls-modules`); tests/run.sh
//! installs them. Bounded: sipp `-timeout`, `/readyz` within 10 s, the harness's kill deadlines.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::ca::TestCa;
use support::kamailio::TlsFront;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, TempDir, Trunk, free_port};

const NUMBER: &str = "+14155550100";

/// An address-only trunk whose agent runtime is reached over TLS at `localhost:port`.
fn tls_trunk(tls_port: u16) -> Trunk {
    Trunk::new("local-in")
        .number(NUMBER, "support")
        .allow_address("127.0.0.1/32")
        .destination(&format!("sip:agents@localhost:{tls_port};transport=tls"))
        .transports(&["UDP"])
}

fn gateway_trusting(specs: &Specs, ca: &TestCa, dir: &TempDir) -> Gateway {
    let ca_file = ca.write(dir.path(), "ca.pem");
    let options = GatewayOptions::default()
        .arg("--tls-ca")
        .arg(ca_file.to_str().expect("temp paths are UTF-8"));
    Gateway::start(specs.path(), options)
}

#[test]
fn a_call_reaches_an_agent_runtime_over_tls_verified_against_the_tls_ca() {
    let ca = TestCa::new("trunkline test agents CA");
    let agent_port = free_port();
    let front = TlsFront::start_agent_side(
        &ca.issue(&["localhost"]),
        SocketAddr::from(([127, 0, 0, 1], agent_port)),
    );
    let dir = TempDir::new("tls-agent");
    let specs = Specs::new().with(tls_trunk(front.tls().port()));
    let gateway = gateway_trusting(&specs, &ca, &dir);
    let agent = uas("agent_answer.xml", agent_port, &["-timeout", "15"]);

    let carrier =
        uac("carrier_call.xml", gateway.udp(), &["-s", NUMBER, "-d", "300", "-timeout", "15"]);
    let agent = agent.wait();
    carrier.assert_success();
    agent.assert_success();

    let log = front.log_text().to_ascii_lowercase();
    assert!(
        log.contains(&format!("sent to 127.0.0.1:{agent_port} over udp")),
        "kamailio relayed nothing from the gateway to the agent:\n{}",
        front.log_text()
    );
    for reason in ["unknown_ca", "name_mismatch", "expired", "handshake", "timeout"] {
        let sample = format!(r#"trunkline_tls_client_failures_total{{reason="{reason}"}}"#);
        assert_eq!(gateway.metric(&sample), Some(0.0), "{sample}: no handshake may fail");
    }
}

#[test]
fn a_call_to_an_agent_runtime_whose_certificate_is_from_another_ca_gets_503() {
    let trusted = TestCa::new("trunkline test agents CA");
    let other = TestCa::new("someone else's CA");
    let agent_port = free_port();
    let front = TlsFront::start_agent_side(
        &other.issue(&["localhost"]),
        SocketAddr::from(([127, 0, 0, 1], agent_port)),
    );
    let dir = TempDir::new("tls-agent");
    let specs = Specs::new().with(tls_trunk(front.tls().port()));
    let gateway = gateway_trusting(&specs, &trusted, &dir);

    let carrier =
        uac("carrier_unavailable_503.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]);
    carrier.assert_success();

    assert!(
        gateway.wait_metric(
            r#"trunkline_tls_client_failures_total{reason="unknown_ca"}"#,
            1.0,
            Duration::from_secs(3)
        ),
        "the failed handshake was not counted:\n{}",
        gateway.admin_get("/metrics").map(|(_, body)| body).unwrap_or_default()
    );
    let log = gateway.log_text();
    assert!(
        log.contains("TLS handshake with localhost")
            && log.contains(&front.tls().to_string())
            && log.contains("unknown CA"),
        "the log does not say which handshake failed and why:\n{log}"
    );
    assert!(
        !front.log_text().to_ascii_lowercase().contains("over udp"),
        "nothing may reach the agent behind an unverified peer:\n{}",
        front.log_text()
    );
}

#[test]
fn an_unreadable_tls_ca_stops_the_start_with_an_error_naming_the_file() {
    let dir = TempDir::new("tls-agent");
    let missing = dir.join("no-such-ca.pem");
    let missing = missing.to_str().expect("temp paths are UTF-8");
    let specs = Specs::new().with(tls_trunk(free_port()));
    let log = Gateway::start_refused(
        specs.path(),
        GatewayOptions::default().arg("--tls-ca").arg(missing),
    );
    assert!(log.contains(missing), "the error does not name the file:\n{log}");
}
