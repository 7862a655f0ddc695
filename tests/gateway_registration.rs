//! Registration to a carrier on the wire (issue 17, item 5): the built `trunkline run` registers
//! an OutboundTrunk's account with sipp as the carrier's registrar (`registrar.xml`: a 401
//! digest challenge, the answer verified with the account's password, a 10-s binding, then the
//! refresh, verified again), `/metrics` and `/v1/status` say registered, and a call the carrier
//! sends to the registered contact (the account as Request-URI user, the number in To) reaches
//! the agent of the InboundTrunk the registration feeds. A call from the same address before
//! the binding exists is refused: the registration is what admits it.
//!
//! Bounded: the registrar's refresh comes within 5 s of the binding (halfway through 10 s), the
//! sipps have `-timeout`, the gateway stops on drop.

mod support;

use std::time::{Duration, Instant};

use support::sipp::{SippHandle, uac, uas};
use support::specs::Outbound;
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const ACCOUNT: &str = "acct-1001";
const PASSWORD: &str = "registrar-test-password";
const NUMBER: &str = "+14155550150";
const SERIES: &str = r#"trunkline_outbound_registered{trunk="voice/carrier-out"}"#;

/// The value of `series` on the gateway's `/metrics`, if it is there.
fn metric(gateway: &Gateway, series: &str) -> Option<String> {
    let (_, page) = gateway.admin_get("/metrics")?;
    page.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string()))
}

/// OutboundTrunk `carrier-out` registering `ACCOUNT` with `password` at a sipp registrar
/// (which verifies `PASSWORD`, grants 10 s and gives up after `timeout` seconds), and
/// InboundTrunk `reg-in` fed by that registration, `NUMBER` to agent `sales` on the port given.
fn registration_setup(password: &str, timeout: &str) -> (Specs, u16, SippHandle) {
    let (registrar_port, agent_port) = (free_port(), free_port());
    let carrier =
        Outbound::new("carrier-out", registrar_port).digest(ACCOUNT, password).registration(60);
    let fed = Trunk::new("reg-in")
        .number(NUMBER, "sales")
        .fed_by_registration("carrier-out")
        .destination_udp(agent_port);
    let specs = Specs::new().with_outbound(carrier).with(fed);
    let registrar = uas(
        "registrar.xml",
        registrar_port,
        &[
            "-set", "user", ACCOUNT, "-set", "password", PASSWORD, "-set", "granted", "10",
            "-timeout", timeout,
        ],
    );
    (specs, agent_port, registrar)
}

#[test]
fn a_registered_account_is_kept_fresh_and_its_calls_reach_the_agent() {
    let (specs, agent_port, registrar) = registration_setup(PASSWORD, "40");
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let gw = gateway.udp();
    let call_args = |uri: &str| {
        [
            "-set".to_string(),
            "ruri".to_string(),
            uri.to_string(),
            "-set".to_string(),
            "to".to_string(),
            format!("sip:{NUMBER}@{gw}"),
            "-set".to_string(),
            "from".to_string(),
            "sip:+12025550123@carrier.test".to_string(),
            "-d".to_string(),
            "100".to_string(),
            "-timeout".to_string(),
            "10".to_string(),
        ]
    };
    let contact = format!("sip:{ACCOUNT}@{gw}");

    // Registered within a few seconds (the first REGISTER goes within 1 s of start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gateway, SERIES).as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "not registered: {:?}", metric(&gateway, SERIES));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, status) = gateway.admin_get("/v1/status").expect("a status report");
    assert!(
        status.contains(r#""voice/carrier-out":{"registered":true"#),
        "the status report says registered: {status}"
    );

    // The carrier delivers a call to the contact: it reaches agent `sales` as the number.
    let agent = uas(
        "agent_check_numbers.xml",
        agent_port,
        &["-set", "number", NUMBER, "-set", "caller", "+12025550123"],
    );
    let args = call_args(&contact);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let call = uac("carrier_call_written.xml", gw, &args);
    let agent = agent.wait();
    call.assert_success();
    agent.assert_success();

    // The registrar saw the challenge answered, the binding, and the refresh, each verified.
    registrar.wait().assert_success();
    assert_eq!(metric(&gateway, SERIES).as_deref(), Some("1"), "still registered");
}

#[test]
fn without_a_binding_the_registrars_address_is_not_admitted() {
    // The registrar refuses the account: no binding, so nothing admits the carrier's call.
    let (specs, _agent_port, registrar) = registration_setup("wrong-password", "10");
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let gw = gateway.udp();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gateway, SERIES).as_deref() != Some("0") {
        assert!(
            Instant::now() < deadline,
            "no failed registration: {:?}",
            metric(&gateway, SERIES)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = uac(
        "carrier_call_written.xml",
        gw,
        &[
            "-set",
            "ruri",
            &format!("sip:{ACCOUNT}@{gw}"),
            "-set",
            "to",
            &format!("sip:{NUMBER}@{gw}"),
            "-set",
            "from",
            "sip:+12025550123@carrier.test",
            "-timeout",
            "10",
        ],
    );
    assert!(refused.received_codes().contains(&403), "{:?}", refused.received_codes());
    // The registrar's run fails: the wrong answer stopped its scenario.
    assert!(!registrar.wait().success(), "the registrar should have refused the answer");
}
