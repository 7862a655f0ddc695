//! `trunkline gateway --public-address-node` end to end: the built binary, given a kubeconfig
//! for the in-memory API server of `support::apiserver`, reads its Node before it opens its
//! listeners and advertises that node's address (here the node's `trunkline.dev/public-address`
//! annotation, 127.0.0.7) where `--public-address` would go: the Contact and the SDP of the 200
//! a carrier gets. A node without any address stops the gateway with a message naming it.

// Harness code is test code (STYLE.md allows unwrap and panics in tests; clippy only knows
// #[test] functions).
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use support::apiserver::ApiServer;
use support::free_port;
use support::net::{self, LOCALHOST, TempDir};
use support::process::TrunklineProcess;
use support::sipp::{uac, uas};

const NAMESPACE: &str = "trunkline";
const VOICE: &str = "voice";
const NODE: &str = "edge-1";
const BUNDLE: &str = "gw-creds";
const NUMBER: &str = "+14155550100";
/// The node's annotated address: a loopback address other than the listeners' 127.0.0.1, so
/// that what the gateway advertises can only have come from the node.
const NODE_ADDRESS: &str = "127.0.0.7";
const WITHIN: Duration = Duration::from_secs(10);

fn node(annotations: Value, addresses: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "annotations": annotations},
        "status": {"addresses": addresses},
    })
}

/// What the gateway needs to be ready: an address-only trunk, and the operator's bundle Secret
/// with the nonce key (no credentials: the trunk has none).
fn put_config(api: &ApiServer, agent_port: u16) {
    api.put(
        "trunkline.dev/v1alpha1/inboundtrunks",
        json!({
            "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
            "metadata": {"name": "local-in", "namespace": VOICE},
            "spec": {
                "numbers": [{"number": NUMBER, "agent": "support"}],
                "destination": {"uri": format!("sip:127.0.0.1:{agent_port}")},
                "auth": {"allowedAddresses": ["127.0.0.1/32"]},
                "transports": ["UDP"],
            },
        }),
    );
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    api.put(
        "v1/secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": BUNDLE, "namespace": NAMESPACE},
            "data": {"nonce-key": key},
        }),
    );
}

struct Started {
    process: TrunklineProcess,
    udp: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

/// Starts `trunkline gateway` with the node's name from NODE_NAME, as the fleet's pods get it.
fn start_gateway(api: &ApiServer) -> Started {
    let dir = TempDir::new("gateway-node");
    api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE);
    let (port, internal) = (free_port(), free_port());
    let admin = SocketAddr::from((LOCALHOST, free_port()));
    let args: Vec<String> = vec![
        "gateway".into(),
        "--listen".into(),
        format!("udp://127.0.0.1:{port}"),
        "--internal-listen".into(),
        format!("udp://127.0.0.1:{internal}"),
        "--admin".into(),
        admin.to_string(),
        "--credentials-secret".into(),
        BUNDLE.into(),
        "--drain-timeout".into(),
        "1".into(),
    ];
    let kubeconfig = dir.join("kubeconfig");
    let process = TrunklineProcess::spawn("gateway", &dir.join("gateway.log"), &args, |c| {
        c.env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAME")
            .env("POD_NAMESPACE", NAMESPACE)
            .env("NODE_NAME", NODE);
    });
    Started { process, udp: SocketAddr::from((LOCALHOST, port)), admin, _dir: dir }
}

#[test]
fn the_gateway_advertises_the_address_its_node_is_annotated_with() {
    let api = ApiServer::start();
    api.put(
        "v1/nodes",
        node(
            json!({"trunkline.dev/public-address": NODE_ADDRESS}),
            json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
        ),
    );
    let agent_port = free_port();
    put_config(&api, agent_port);
    let mut gateway = start_gateway(&api);
    let deadline = Instant::now() + WITHIN;
    while net::http_get(gateway.admin, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(
            gateway.process.is_running(),
            "the gateway exited:\n{}",
            gateway.process.log_text()
        );
        assert!(Instant::now() < deadline, "not ready:\n{}", gateway.process.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        api.requests().iter().any(|r| r.method == "GET" && r.path == "/api/v1/nodes/edge-1"),
        "the node was not read:\n{}",
        api.request_log()
    );
    let log = gateway.process.log_text();
    assert!(log.contains("advertising 127.0.0.7, the address of node edge-1"), "{log}");
    // Reading the node is no problem worth a warning (e2e runs require no WARN lines).
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("node"))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");

    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    let carrier = uac("carrier_call.xml", gateway.udp, &["-s", NUMBER, "-timeout", "15"]);
    carrier.assert_success();
    agent.wait().assert_success();
    let ok = carrier
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.text.contains("INVITE"))
        .unwrap_or_else(|| panic!("no 200 to the INVITE:\n{}", carrier.report()));
    assert!(ok.text.contains(&format!("@{NODE_ADDRESS}:")), "Contact:\n{}", ok.text);
    assert!(ok.text.contains(&format!("c=IN IP4 {NODE_ADDRESS}")), "SDP:\n{}", ok.text);
}

#[test]
fn a_node_without_any_address_stops_the_gateway_with_a_message_naming_it() {
    let api = ApiServer::start();
    api.put("v1/nodes", node(json!({}), json!([{"type": "Hostname", "address": NODE}])));
    put_config(&api, free_port());
    let mut gateway = start_gateway(&api);
    let status = gateway.process.wait_exit(WITHIN).expect("the gateway exits");
    assert!(!status.success());
    let log = gateway.process.log_text();
    assert!(log.contains("node edge-1 has no trunkline.dev/public-address annotation"), "{log}");
    // It stopped before opening its SIP listeners.
    assert!(!log.contains("listening on"), "{log}");
}
