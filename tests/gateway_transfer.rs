//! Transfers (issue 13) on the wire: the built `trunkline run` between sipp as the carrier, sipp
//! as the agent runtime and, for bridged transfers, sipp as the destination, all on 127.0.0.1.
//! Hangup and Refer mode; bridged transfers to `Sip` destinations (digest, wrong credentials, no
//! answer, a BYE with the transfer header) and of an outbound call to a `Phone` destination;
//! the refusals a user meets on the wire. The bridged transfers' media (RTP) is checked in
//! `gateway_transfer_bridge.rs`.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::net::{RawUdp, status_codes};
use support::sipp::{SippResult, uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";
/// The caller's number: the From user of every carrier scenario.
const CALLER: &str = "+12025550123";

const DESTINATIONS: &str = "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {name: end-call, namespace: voice}
spec: {type: Hangup}
";

/// The gateway with an address-only inbound trunk whose calls go to an agent on `agent_port`,
/// and `destinations` (YAML) beside it.
fn start(agent_port: u16, destinations: &str) -> (Gateway, Specs) {
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
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
        .with(Trunk::local(NUMBER, agent_port))
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

// ---- Bridged transfers (mode Bridge, the default) ----

/// A `Sip` TransferDestination `namespace/name` to `sip:desk@127.0.0.1:port`, with digest
/// credentials from a basic-auth Secret `name-credentials` when given, and an `agents` list.
fn sip_destination(
    namespace: &str,
    name: &str,
    port: u16,
    digest: Option<(&str, &str)>,
    agents: &[&str],
) -> String {
    let auth = match digest {
        Some(_) => format!("\n    auth: {{digest: {{secretRef: {{name: {name}-credentials}}}}}}"),
        None => String::new(),
    };
    let agents = match agents {
        [] => String::new(),
        some => format!("\n  agents: [{}]", some.join(", ")),
    };
    let mut yaml = format!(
        "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  type: Sip
  sip:
    uri: \"sip:desk@127.0.0.1:{port}\"{auth}{agents}
"
    );
    if let Some((username, password)) = digest {
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-credentials, namespace: {namespace}}}
type: kubernetes.io/basic-auth
stringData: {{username: {username}, password: {password}}}
"
        ));
    }
    yaml
}

/// What `transfer_dest_answer.xml` checks in the gateway's INVITE and how the test wants it to
/// end.
struct Desk<'a> {
    /// Answer 401 first and check the digest answer against `desk`/`desk-pw`.
    challenge: bool,
    /// `answered` or `refused` (our credentials, wrong).
    expect: &'a str,
    /// The Request-URI user.
    number: &'a str,
    /// The From user.
    caller_id: &'a str,
    /// The user of `Diversion`.
    diverter: &'a str,
}

const DESK_USER: &str = "desk";
const DESK_PASSWORD: &str = "desk-pw";

impl Desk<'_> {
    /// Starts the destination on `port`.
    fn start(&self, port: u16) -> support::sipp::SippHandle {
        let args = [
            "-key",
            "challenge",
            if self.challenge { "yes" } else { "no" },
            "-key",
            "expect",
            self.expect,
            "-key",
            "auth_user",
            DESK_USER,
            "-key",
            "auth_pass",
            DESK_PASSWORD,
            "-key",
            "number",
            self.number,
            "-key",
            "caller_id",
            self.caller_id,
            "-key",
            "diverter",
            self.diverter,
            "-timeout",
            "15",
        ];
        uas("transfer_dest_answer.xml", port, &args)
    }
}

/// The first INVITE a sipp run received, as text.
fn first_invite(run: &SippResult) -> String {
    let invite = run.received().into_iter().find(|m| m.first_line().starts_with("INVITE "));
    invite.map(|m| m.text).expect("the destination received an INVITE")
}

/// The value of header `name` in `message` (the first one; names compared without case).
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A UDP socket on a destination's port that must hear nothing: nothing was dialed.
struct Silent(UdpSocket);

impl Silent {
    fn bind(port: u16) -> Silent {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the destination's port");
        Silent(socket)
    }

    #[track_caller]
    fn assert_nothing_within(&self, window: Duration) {
        self.0.set_read_timeout(Some(window)).expect("set a read timeout");
        let mut buf = [0u8; 4096];
        let heard = self
            .0
            .recv_from(&mut buf)
            .ok()
            .map(|(n, from)| format!("from {from}:\n{}", String::from_utf8_lossy(&buf[..n])));
        assert!(heard.is_none(), "the destination was dialed {}", heard.unwrap_or_default());
    }
}

fn transfers(destination: &str, outcome: &str) -> String {
    format!(
        r#"trunkline_transfers_total{{destination="voice/{destination}",mode="Bridge",outcome="{outcome}"}}"#
    )
}

#[test]
fn a_refer_to_a_sip_destination_answers_its_digest_challenge_and_the_caller_ends_up_with_it() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let destination =
        sip_destination("voice", "desk", desk_port, Some((DESK_USER, DESK_PASSWORD)), &[]);
    let (gateway, _specs) = start(agent_port, &destination);
    let desk = Desk {
        challenge: true,
        expect: "answered",
        number: "desk",
        caller_id: CALLER,
        diverter: NUMBER,
    }
    .start(desk_port);
    let agent = uas(
        "agent_refer_bridge.xml",
        agent_port,
        &[
            "-d",
            "300",
            "-key",
            "transfer_to",
            "desk",
            "-key",
            "notify",
            "100:active,180:active,200:terminated,",
            "-timeout",
            "15",
        ],
    );
    // The caller hangs up once it talks to the desk: its BYE must reach the desk.
    uac("carrier_call.xml", gateway.udp(), &["-s", NUMBER, "-d", "2500", "-timeout", "15"])
        .assert_success();
    agent.wait().assert_success();
    let desk = desk.wait();
    desk.assert_success();
    let invite = first_invite(&desk);
    assert_eq!(header(&invite, "Referred-By"), Some("<sip:agent@127.0.0.1>"), "{invite}");
    assert!(gateway.wait_metric(&transfers("desk", "completed"), 1.0, Duration::from_secs(3)));
    assert!(!gateway.log_text().contains(DESK_PASSWORD), "the desk's password is in the log");
}

#[test]
fn a_sip_destination_that_refuses_our_credentials_is_notify_403_and_the_caller_stays_with_the_agent()
 {
    let (agent_port, desk_port) = (free_port(), free_port());
    let destination =
        sip_destination("voice", "desk", desk_port, Some((DESK_USER, "not-the-password")), &[]);
    let (gateway, _specs) = start(agent_port, &destination);
    let desk = Desk {
        challenge: true,
        expect: "refused",
        number: "desk",
        caller_id: CALLER,
        diverter: NUMBER,
    }
    .start(desk_port);
    let agent = uas(
        "agent_refer_bridge.xml",
        agent_port,
        &[
            "-d",
            "300",
            "-key",
            "transfer_to",
            "desk",
            "-key",
            "notify",
            "100:active,403:terminated,",
            "-timeout",
            "15",
        ],
    );
    // The agent hangs up after the failure: the caller, still with it, gets the BYE.
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    let desk = desk.wait();
    desk.assert_success();
    let invites = desk.received().iter().filter(|m| m.first_line().starts_with("INVITE ")).count();
    assert_eq!(invites, 2, "one INVITE, one answer to the challenge, then nothing");
    assert!(gateway.wait_metric(&transfers("desk", "failed"), 1.0, Duration::from_secs(3)));
    assert!(!gateway.log_text().contains("not-the-password"), "the password is in the log");
}

#[test]
fn a_destination_that_does_not_answer_within_the_transfer_timeout_is_cancelled_and_notify_480() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    specs.write("transfers.yaml", &sip_destination("voice", "desk", desk_port, None, &[]));
    let options = GatewayOptions::default().arg("--transfer-timeout").arg("2");
    let gateway = Gateway::start(specs.path(), options);
    let desk = uas("agent_ring_forever.xml", desk_port, &["-timeout", "15"]);
    let agent = uas(
        "agent_refer_bridge.xml",
        agent_port,
        &[
            "-d",
            "300",
            "-key",
            "transfer_to",
            "desk",
            "-key",
            "notify",
            "100:active,180:active,480:terminated,",
            "-timeout",
            "15",
        ],
    );
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    desk.wait().assert_success();
    assert!(gateway.wait_metric(&transfers("desk", "failed"), 1.0, Duration::from_secs(3)));
}

#[test]
fn a_bye_with_the_transfer_header_is_200_and_the_caller_ends_up_with_the_destination() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let (gateway, _specs) =
        start(agent_port, &sip_destination("voice", "desk", desk_port, None, &[]));
    let desk = Desk {
        challenge: false,
        expect: "answered",
        number: "desk",
        caller_id: CALLER,
        diverter: NUMBER,
    }
    .start(desk_port);
    let agent = uas(
        "agent_bye_transfer.xml",
        agent_port,
        &["-d", "300", "-key", "transfer_to", "desk", "-timeout", "15"],
    );
    uac("carrier_call.xml", gateway.udp(), &["-s", NUMBER, "-d", "2500", "-timeout", "15"])
        .assert_success();
    agent.wait().assert_success();
    desk.wait().assert_success();
    assert!(gateway.wait_metric(&transfers("desk", "completed"), 1.0, Duration::from_secs(3)));
}

#[test]
fn an_outbound_call_is_transferred_to_a_phone_destination_through_its_trunk() {
    let (carrier_port, desk_port) = (free_port(), free_port());
    const DIALED: &str = "+14155550142";
    const DESK_NUMBER: &str = "+14155550177";
    let specs = Specs::new()
        .with_outbound(Outbound::new("carrier-out", carrier_port))
        // The desk's trunk may present the dialed person's number: the desk sees who it is.
        .with_outbound(Outbound::new("desk-out", desk_port).allow_caller_id(DIALED));
    specs.write(
        "transfers.yaml",
        &format!(
            "apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {{name: desk-phone, namespace: voice}}
spec:
  type: Phone
  phone: {{number: \"{DESK_NUMBER}\", outboundTrunkRef: {{name: desk-out}}}}
"
        ),
    );
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    // The dialed person talks to the desk for a while, then hangs up: the desk gets the BYE.
    let carrier =
        uas("agent_answer_then_hangup.xml", carrier_port, &["-d", "3000", "-timeout", "15"]);
    let desk = Desk {
        challenge: false,
        expect: "answered",
        number: DESK_NUMBER,
        caller_id: DIALED,
        diverter: "+14155550100",
    }
    .start(desk_port);
    uac(
        "agent_outbound_refer.xml",
        gateway.internal(),
        &[
            "-s",
            DIALED,
            "-key",
            "trunk",
            "carrier-out",
            "-key",
            "agent",
            "support",
            "-key",
            "from_user",
            "agent-bot",
            "-key",
            "transfer_to",
            "desk-phone",
            "-key",
            "notify",
            "100:active,180:active,200:terminated,",
            "-d",
            "300",
            "-timeout",
            "15",
        ],
    )
    .assert_success();
    carrier.wait().assert_success();
    let desk = desk.wait();
    desk.assert_success();
    let invite = first_invite(&desk);
    assert_eq!(header(&invite, "Referred-By"), Some("<sip:agent-bot@127.0.0.1>"), "{invite}");
    assert!(gateway.wait_metric(
        &transfers("desk-phone", "completed"),
        1.0,
        Duration::from_secs(3)
    ));
}

// ---- Refusals on the wire ----

/// The agent REFERs to `desk`, which it may not use: 403 with `rule` in the Warning; the call
/// stays up (the agent hangs up itself, the carrier gets the BYE) and nothing is dialed.
fn refused_by_rule(destinations: &str, desk: &Silent, rule: &str) -> Gateway {
    let agent_port = free_port();
    let (gateway, specs) = start(agent_port, destinations);
    let agent = uas(
        "agent_refer_refused_rule.xml",
        agent_port,
        &["-d", "300", "-key", "transfer_to", "desk", "-key", "rule", rule, "-timeout", "15"],
    );
    uac("carrier_wait_bye.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();
    desk.assert_nothing_within(Duration::from_millis(300));
    let refused =
        r#"trunkline_transfers_total{destination="unknown",mode="none",outcome="refused"}"#;
    assert!(gateway.wait_metric(refused, 1.0, Duration::from_secs(3)), "not counted");
    drop(specs);
    gateway
}

#[test]
fn a_refer_to_a_destination_of_another_namespace_is_403_transfer_other_namespace() {
    let desk_port = free_port();
    let desk = Silent::bind(desk_port);
    let destinations = sip_destination("other", "desk", desk_port, None, &[]);
    refused_by_rule(&destinations, &desk, "TransferOtherNamespace");
}

#[test]
fn a_refer_to_a_destination_whose_agents_list_lacks_the_calls_agent_is_403() {
    let desk_port = free_port();
    let desk = Silent::bind(desk_port);
    let destinations = sip_destination("voice", "desk", desk_port, None, &["billing"]);
    refused_by_rule(&destinations, &desk, "TransferAgentNotAllowed");
}

#[test]
fn a_refer_from_the_carrier_is_403_transfer_from_carrier_and_nothing_is_dialed() {
    let (agent_port, desk_port) = (free_port(), free_port());
    let desk = Silent::bind(desk_port);
    let (gateway, _specs) =
        start(agent_port, &sip_destination("voice", "desk", desk_port, None, &[]));
    let agent = uas("agent_answer.xml", agent_port, &["-timeout", "15"]);
    uac(
        "carrier_refer_refused.xml",
        gateway.udp(),
        &["-s", NUMBER, "-d", "300", "-key", "transfer_to", "desk", "-timeout", "15"],
    )
    .assert_success();
    agent.wait().assert_success();
    desk.assert_nothing_within(Duration::from_millis(300));
}

/// A REFER that belongs to no call: with a To tag (a dialog we do not have) or without one (a
/// REFER outside any dialog, which transfers nothing).
fn refer_outside_any_dialog(socket: &RawUdp, gw: std::net::SocketAddr, tag: &str) -> Vec<String> {
    let me = socket.local_addr();
    let port = gw.port();
    let refer = format!(
        "REFER sip:trunkline@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-refer-{port}-{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:agent@{me}>;tag=a1\r\n\
         To: <sip:trunkline@{gw}>{tag}\r\nCall-ID: no-such-call-{port}@test\r\n\
         CSeq: 7 REFER\r\nContact: <sip:agent@{me}>\r\nRefer-To: <sip:desk@{gw}>\r\n\
         Content-Length: 0\r\n\r\n",
        tag.len()
    );
    socket.send(gw, refer.as_bytes());
    socket.receive_for(Duration::from_secs(1))
}

#[test]
fn a_refer_outside_any_call_is_481_or_403_on_either_listener_and_nothing_is_dialed() {
    let desk_port = free_port();
    let desk = Silent::bind(desk_port);
    let (gateway, _specs) =
        start(free_port(), &sip_destination("voice", "desk", desk_port, None, &[]));
    let socket = RawUdp::bind();
    for (listener, gw) in [("carrier-facing", gateway.udp()), ("agent-facing", gateway.internal())]
    {
        // A dialog we do not have (RFC 3261 §12.2.2).
        let answers = refer_outside_any_dialog(&socket, gw, ";tag=no-such-dialog");
        assert_eq!(status_codes(&answers), [481].into(), "{listener}: {answers:?}");
        // No dialog at all: transfers are asked inside a call.
        let answers = refer_outside_any_dialog(&socket, gw, "");
        assert_eq!(status_codes(&answers), [403].into(), "{listener}: {answers:?}");
        let warning = answers.iter().find_map(|a| header(a, "Warning")).unwrap_or_default();
        assert!(warning.contains("TransferOutsideCall"), "{listener}: {answers:?}");
    }
    desk.assert_nothing_within(Duration::from_millis(300));
}
