//! Fleet-wide call limits (issue 16, item 4) end to end: the built `trunkline operator` and two
//! `trunkline gateway` processes against the in-memory API server of `support::apiserver`, all
//! on 127.0.0.1.
//!
//! An InboundTrunk with `maxConcurrentCalls: 2` and two Ready gateway pods: the operator writes
//! both pod names into the gateway credentials Secret (`fleet-members`), each gateway takes one
//! call (it reaches the agent runtime, which rings) and refuses the next with 503 and
//! `Retry-After`: the fleet admits 2, not 2 × 2. Then one pod is no longer Ready: the operator
//! rewrites the membership, and the other gateway admits a second call of its own (its share
//! is the whole limit) and refuses the third.
//!
//! The carrier is hand-driven raw UDP (`support::net::RawUdp`), one socket per call; the agent
//! runtime is a UDP socket that answers each INVITE with `100 Trying` and never more, so every
//! admitted call stays up (ringing) for the whole test.

// Harness code is test code (STYLE.md allows unwrap and panic in tests; clippy only knows
// #[test] functions as tests).
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use support::apiserver::ApiServer;
use support::free_port;
use support::net::{self, LOCALHOST, RawUdp, TempDir};
use support::process::TrunklineProcess;

const FLEET: &str = "edge";
const FLEET_NAMESPACE: &str = "trunkline";
const VOICE: &str = "voice";
const BUNDLE: &str = "trunkline-gateway-credentials";
const OPERATOR_DEPLOYMENT: &str = "trunkline-operator";
const GATEWAY_A: &str = "edge-gateway-a";
const GATEWAY_B: &str = "edge-gateway-b";
const NUMBER: &str = "+14155550100";

const DEPLOYMENTS: &str = "apps/v1/deployments";
const TRUNKS: &str = "trunkline.dev/v1alpha1/inboundtrunks";
const SECRETS: &str = "v1/secrets";
const PODS: &str = "v1/pods";

/// How long any one thing may take to show up.
const WITHIN: Duration = Duration::from_secs(15);

/// Address-only (calls from 127.0.0.0/8), two calls at once for the whole fleet.
fn trunk(agent_port: u16) -> Value {
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
        "metadata": {"name": "acme-in", "namespace": VOICE},
        "spec": {
            "numbers": [{"number": NUMBER, "agent": "support"}],
            "destination": {"uri": format!("sip:127.0.0.1:{agent_port}")},
            "auth": {"allowedAddresses": ["127.0.0.0/8"]},
            "transports": ["UDP"],
            "limits": {"maxConcurrentCalls": 2},
        },
    })
}

/// A gateway pod of the fleet as the kubelet shows it: Ready or not. No pod IP: the operator's
/// prober has nothing to probe, and the membership does not depend on it.
fn gateway_pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": FLEET_NAMESPACE,
            "labels": {"trunkline.dev/fleet": FLEET, "app.kubernetes.io/component": "gateway"},
        },
        "spec": {"containers": [{"name": "gateway", "image": "trunkline:test"}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

/// The operator's own Deployment, as Helm installs it: the owner of the fleet's objects.
fn operator_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": FLEET_NAMESPACE},
        "spec": {},
    })
}

/// The membership the operator wrote into the bundle; `None` before it wrote one.
fn members(api: &ApiServer) -> Option<Vec<String>> {
    let bundle = api.get(SECRETS, FLEET_NAMESPACE, BUNDLE)?;
    let encoded = bundle["data"]["fleet-members"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value["members"].as_array()?.iter().map(|m| m.as_str().map(str::to_string)).collect()
}

/// Polls `check` every 50 ms until it holds, for at most [`WITHIN`].
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WITHIN;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `name` on a gateway's `/metrics`.
fn sample(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, page) = net::http_get(admin, "/metrics")?;
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `trunkline` process of the test, its log printed when the test panics.
fn spawn(dir: &TempDir, name: &str, args: &[String], env: &[(&str, &str)]) -> TrunklineProcess {
    TrunklineProcess::spawn(name, &dir.join(&format!("{name}.log")), args, |command| {
        command
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env("RUST_LOG", "info,trunkline=debug");
        for (key, value) in env {
            command.env(key, value);
        }
    })
}

/// A gateway pod's process and its addresses.
struct Gateway {
    process: TrunklineProcess,
    sip: SocketAddr,
    admin: SocketAddr,
}

fn start_gateway(dir: &TempDir, pod: &str) -> Gateway {
    let sip = SocketAddr::from((LOCALHOST, free_port()));
    let admin = SocketAddr::from((LOCALHOST, free_port()));
    let args: Vec<String> = [
        "gateway".to_string(),
        "--listen".into(),
        format!("udp://{sip}"),
        "--internal-listen".into(),
        format!("udp://127.0.0.1:{}", free_port()),
        "--admin".into(),
        admin.to_string(),
        "--public-address".into(),
        "127.0.0.1".into(),
        "--credentials-secret".into(),
        BUNDLE.into(),
        "--agent-timeout".into(),
        "120".into(),
        "--drain-timeout".into(),
        "1s".into(),
    ]
    .to_vec();
    let env = [("POD_NAME", pod), ("POD_NAMESPACE", FLEET_NAMESPACE)];
    Gateway { process: spawn(dir, pod, &args, &env), sip, admin }
}

/// The agent runtime: answers every INVITE with `100 Trying` (so the gateway stops
/// retransmitting and waits for an answer that never comes) and counts the calls by Call-ID.
struct Agent {
    socket: RawUdp,
    calls: BTreeSet<String>,
}

impl Agent {
    /// Takes what arrived for `window`; `true` when a call it had not seen arrived.
    fn new_call_within(&mut self, window: Duration) -> bool {
        let before = self.calls.len();
        let deadline = Instant::now() + window;
        while Instant::now() < deadline && self.calls.len() == before {
            for message in self.socket.receive_for(Duration::from_millis(200)) {
                if !message.starts_with("INVITE ") {
                    continue;
                }
                let Some(call_id) = header(&message, "Call-ID") else { continue };
                self.calls.insert(call_id.to_string());
                let trying = response_to(&message, "100 Trying");
                let via = header(&message, "Via").unwrap_or_default();
                let to = via_address(via);
                self.socket.send(to, trying.as_bytes());
            }
        }
        self.calls.len() > before
    }
}

/// The value of the first header `name` in `message`.
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Where the top Via of a request says to answer: `SIP/2.0/UDP 127.0.0.1:5080;branch=...`.
fn via_address(via: &str) -> SocketAddr {
    let host_port = via.split_whitespace().nth(1).unwrap_or_default();
    let host_port = host_port.split(';').next().unwrap_or_default();
    host_port.parse().unwrap_or_else(|_| panic!("an IP:port Via from the gateway: {via}"))
}

/// A response to `request` with its Via, From, To, Call-ID and CSeq.
fn response_to(request: &str, status: &str) -> String {
    let mut text = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for line in request.lines() {
            if line.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name)) {
                text.push_str(line.trim_end());
                text.push_str("\r\n");
            }
        }
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

/// A carrier's INVITE for [`NUMBER`] from `carrier`, call number `n`, with a PCMU offer.
fn invite(carrier: &RawUdp, gateway: SocketAddr, n: u32) -> String {
    let me = carrier.local_addr();
    let sdp = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        me.port() + 2
    );
    format!(
        "INVITE sip:{NUMBER}@{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfleet{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=fleet{n}\r\nTo: <sip:{NUMBER}@{gateway}>\r\n\
         Call-ID: fleet-limits-{n}@{me}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// Sends call `n` to `gateway` and asserts that the agent runtime gets it (admitted).
fn admitted(gateway: &Gateway, agent: &mut Agent, n: u32) -> RawUdp {
    let carrier = RawUdp::bind();
    carrier.send(gateway.sip, invite(&carrier, gateway.sip, n).as_bytes());
    assert!(
        agent.new_call_within(Duration::from_secs(5)),
        "call {n} through {} did not reach the agent runtime; the carrier got {:?}",
        gateway.sip,
        carrier.receive_for(Duration::from_millis(200))
    );
    // Kept: the call stays up while the socket lives (the gateway's answers go nowhere else).
    carrier
}

/// Sends call `n` to `gateway` and asserts 503 with `Retry-After`, counted as refused by the
/// concurrency limit, and that the agent runtime never hears of it.
fn refused(gateway: &Gateway, agent: &mut Agent, n: u32) {
    let carrier = RawUdp::bind();
    carrier.send(gateway.sip, invite(&carrier, gateway.sip, n).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let answer = loop {
        assert!(
            !agent.new_call_within(Duration::from_millis(100)),
            "call {n} through {} was admitted (it reached the agent runtime): over the limit",
            gateway.sip
        );
        got.extend(carrier.receive_for(Duration::from_millis(100)));
        if let Some(answer) = got.iter().find(|m| m.starts_with("SIP/2.0 503")) {
            break answer.clone();
        }
        assert!(Instant::now() < deadline, "call {n} through {}: no 503, got {got:?}", gateway.sip);
    };
    let retry: u64 = header(&answer, "Retry-After").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(retry >= 1, "a Retry-After of at least 1 s: {answer}");
    let counted = r#"trunkline_inbound_refusals_total{rule="max_concurrent_calls",status="503"}"#;
    assert!(
        sample(gateway.admin, counted).is_some_and(|n| n >= 1.0),
        "{counted} on {}",
        gateway.sip
    );
}

#[test]
fn two_gateways_share_a_trunks_limit_and_one_takes_it_all_when_the_other_leaves() {
    let api = ApiServer::start();
    let dir = TempDir::new("fleet-limits");
    api.write_kubeconfig(&dir.join("kubeconfig"), FLEET_NAMESPACE);
    std::fs::write(
        dir.join("operator.yaml"),
        format!(
            "name: {FLEET}\nnamespace: {FLEET_NAMESPACE}\noperatorDeployment: {OPERATOR_DEPLOYMENT}\n"
        ),
    )
    .unwrap();
    let agent_socket = RawUdp::bind();
    let mut agent = Agent { calls: BTreeSet::new(), socket: agent_socket };
    api.put(DEPLOYMENTS, operator_deployment());
    api.put(TRUNKS, trunk(agent.socket.local_addr().port()));
    api.put(PODS, gateway_pod(GATEWAY_A, true));
    api.put(PODS, gateway_pod(GATEWAY_B, true));

    let operator_admin = SocketAddr::from((LOCALHOST, free_port()));
    let args: Vec<String> = [
        "operator",
        "--config",
        dir.join("operator.yaml").to_str().unwrap(),
        "--admin",
        &operator_admin.to_string(),
        "--pod-name",
        "trunkline-operator-0",
        "--pod-namespace",
        FLEET_NAMESPACE,
    ]
    .map(String::from)
    .to_vec();
    let _operator = spawn(&dir, "operator", &args, &[]);
    assert!(
        eventually(|| members(&api).is_some_and(|m| m == [GATEWAY_A, GATEWAY_B])),
        "the operator did not write both Ready pods into the bundle: {:?}\n{}",
        members(&api),
        api.request_log()
    );

    let gateways = [start_gateway(&dir, GATEWAY_A), start_gateway(&dir, GATEWAY_B)];
    for (index, gateway) in gateways.iter().enumerate() {
        assert!(
            eventually(|| matches!(net::http_get(gateway.admin, "/readyz"), Some((200, _)))),
            "gateway {index} not ready"
        );
        assert_eq!(sample(gateway.admin, "trunkline_fleet_members"), Some(2.0));
        assert_eq!(sample(gateway.admin, "trunkline_fleet_member_index"), Some(index as f64));
    }

    // A limit of 2 over 2 pods: one call each, the next refused on each.
    let [a, b] = &gateways;
    let _call_1 = admitted(a, &mut agent, 1);
    refused(a, &mut agent, 2);
    let _call_3 = admitted(b, &mut agent, 3);
    refused(b, &mut agent, 4);

    // Pod B is no longer Ready: the membership is A alone, and A has the whole limit.
    let changed = Instant::now();
    api.put(PODS, gateway_pod(GATEWAY_B, false));
    assert!(
        eventually(|| members(&api).is_some_and(|m| m == [GATEWAY_A])),
        "the membership did not drop pod B: {:?}",
        members(&api)
    );
    assert!(
        eventually(|| sample(a.admin, "trunkline_fleet_members") == Some(1.0)),
        "gateway A did not take the new membership"
    );
    // Printed, not asserted (no timed assertions): the propagation figure of docs/fleet-limits.md.
    eprintln!(
        "membership change seen by gateway A {} ms after the pod's Ready condition changed",
        changed.elapsed().as_millis()
    );
    let _call_5 = admitted(a, &mut agent, 5);
    refused(a, &mut agent, 6);
    // B, missing from the list, counts itself as one more: still a share of 1, and it holds 1.
    assert_eq!(sample(b.admin, "trunkline_fleet_members"), Some(2.0));
    assert_eq!(sample(b.admin, "trunkline_fleet_member_index"), Some(1.0));
    refused(b, &mut agent, 7);
    assert_eq!(agent.calls.len(), 3, "the fleet admitted {:?}", agent.calls);

    for gateway in gateways {
        let mut process = gateway.process;
        process.sigterm();
        let status = process.wait_exit(Duration::from_secs(10)).expect("exit within 10 s");
        assert!(status.success(), "{status}");
    }
}
