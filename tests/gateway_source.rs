//! `trunkline gateway` end to end (issue 5, item 4): the built binary, given a kubeconfig that
//! points at a scripted API server on 127.0.0.1 (plain HTTP), serves calls from the resources it
//! lists and watches, with the credentials of the operator's bundle Secret, reports the hash of
//! the config it runs on its admin endpoint (`GET /v1/status`), and writes nothing to the API
//! server.
//!
//! The scripted API server keeps an event log per resource: a LIST answers the current objects at
//! the latest resourceVersion, a WATCH from version R answers the events after R as soon as there
//! are any (newline-delimited JSON; the body then ends and the watcher watches again), and any
//! other method is recorded as a write (and refused). Peers: sipp as carrier and agent runtime, as in gateway_inbound.rs.

// Harness code is test code (STYLE.md allows unwrap in tests; clippy only knows #[test] functions).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use support::free_port;
use support::net::{self, LOCALHOST, TempDir};
use support::process::TrunklineProcess;
use support::sipp::{uac, uas};

const NAMESPACE: &str = "trunkline";
const POD: &str = "gw-0";
const BUNDLE: &str = "gw-creds";
const NUMBER: &str = "+14155550100";
const SECOND_NUMBER: &str = "+14155550101";
const USERNAME: &str = "acme";
const PASSWORD: &str = "acme-bundle-password";
const WITHIN: Duration = Duration::from_secs(10);

/// The collection paths the gateway asks for.
fn collection(res: &str) -> String {
    match res {
        "secrets" => format!("/api/v1/namespaces/{NAMESPACE}/secrets"),
        kind => format!("/apis/trunkline.dev/v1alpha1/{kind}"),
    }
}

#[derive(Default)]
struct Objects {
    /// Every event so far: resource, resourceVersion, type, object.
    events: Vec<(String, u64, &'static str, Value)>,
    /// `METHOD path` of every request that is not a GET.
    writes: Vec<String>,
    version: u64,
}

#[derive(Clone)]
struct Api {
    objects: Arc<Mutex<Objects>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Api {
    /// Adds or replaces an object (its `metadata.resourceVersion` is set here).
    fn put(&self, res: &str, mut object: Value) {
        let mut objects = self.objects.lock().unwrap();
        objects.version += 1;
        let version = objects.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let name = object["metadata"]["name"].clone();
        let exists = objects
            .events
            .iter()
            .any(|(r, _, t, o)| r == res && *t != "DELETED" && o["metadata"]["name"] == name);
        let type_ = if exists { "MODIFIED" } else { "ADDED" };
        objects.events.push((res.to_string(), version, type_, object));
        drop(objects);
        self.changed.notify_waiters();
    }

    fn writes(&self) -> Vec<String> {
        self.objects.lock().unwrap().writes.clone()
    }

    fn list(&self, res: &str) -> Value {
        let objects = self.objects.lock().unwrap();
        let mut current: BTreeMap<String, Value> = BTreeMap::new();
        for (r, _, type_, object) in &objects.events {
            if r != res {
                continue;
            }
            let key = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if *type_ == "DELETED" {
                current.remove(&key);
            } else {
                current.insert(key, object.clone());
            }
        }
        json!({
            "apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": objects.version.to_string()},
            "items": current.into_values().collect::<Vec<_>>(),
        })
    }

    fn events_after(&self, res: &str, after: u64) -> String {
        let objects = self.objects.lock().unwrap();
        objects
            .events
            .iter()
            .filter(|(r, v, _, _)| r == res && *v > after)
            .map(|(_, _, type_, object)| format!("{}\n", json!({"type": type_, "object": object})))
            .collect()
    }
}

async fn answer(State(api): State<Api>, method: Method, uri: Uri) -> Response {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if method != Method::GET {
        api.objects.lock().unwrap().writes.push(format!("{method} {path}"));
        return (StatusCode::METHOD_NOT_ALLOWED, "the gateway may not write").into_response();
    }
    let Some(res) = ["inboundtrunks", "outboundtrunks", "transferdestinations", "secrets"]
        .into_iter()
        .find(|r| collection(r) == path)
    else {
        return (StatusCode::NOT_FOUND, "not scripted").into_response();
    };
    if res == "secrets"
        && query.get("fieldSelector").map(String::as_str) != Some("metadata.name%3Dgw-creds")
    {
        return (StatusCode::FORBIDDEN, "only the bundle, by name").into_response();
    }
    if query.get("watch").map(String::as_str) != Some("true") {
        return json_response(&api.list(res));
    }
    let after: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let notified = api.changed.notified();
        let events = api.events_after(res, after);
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return events.into_response();
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

fn json_response(value: &Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

fn trunk(numbers: &[&str], agent_port: u16, generation: u64) -> Value {
    let numbers: Vec<Value> =
        numbers.iter().map(|n| json!({"number": n, "agent": "support"})).collect();
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
        "metadata": {"name": "acme-in", "namespace": "voice", "uid": "uid-acme",
                     "generation": generation, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {
            "numbers": numbers,
            "destination": {"uri": format!("sip:127.0.0.1:{agent_port}")},
            "auth": {"digest": {"secretRef": {"name": "acme-creds"}}},
            "transports": ["UDP"],
        },
    })
}

fn bundle() -> Value {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let entry = json!({"username": USERNAME, "password": PASSWORD}).to_string();
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": BUNDLE, "namespace": NAMESPACE},
        "data": {"nonce-key": b64(&[7; 32]), "voice.acme-creds": b64(entry.as_bytes())},
    })
}

/// `trunkline gateway` as a child process, SIGTERM then SIGKILL on drop; its log printed when the
/// test panics.
struct Gateway {
    process: TrunklineProcess,
    _dir: TempDir,
}

impl Gateway {
    fn start(api: SocketAddr, port: u16, internal: u16, admin: SocketAddr) -> Gateway {
        let dir = TempDir::new("gateway-source");
        let kubeconfig = dir.join("kubeconfig");
        support::apiserver::write_kubeconfig(&kubeconfig, api, NAMESPACE);
        let args = [
            "gateway".to_string(),
            "--listen".into(),
            format!("udp://127.0.0.1:{port}"),
            "--internal-listen".into(),
            format!("udp://127.0.0.1:{internal}"),
            "--admin".into(),
            admin.to_string(),
            "--public-address".into(),
            "127.0.0.1".into(),
            "--credentials-secret".into(),
            BUNDLE.into(),
            "--drain-timeout".into(),
            "1s".into(),
        ];
        let process = TrunklineProcess::spawn("gateway", &dir.join("gateway.log"), &args, |c| {
            c.env("KUBECONFIG", &kubeconfig)
                .env("POD_NAME", POD)
                .env("POD_NAMESPACE", NAMESPACE)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env("RUST_LOG", "info,trunkline=debug");
        });
        Gateway { process, _dir: dir }
    }
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
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

/// The `configHash` of the gateway's `GET /v1/status` report.
fn reported(admin: SocketAddr) -> Option<String> {
    let (status, body) = net::http_get(admin, "/v1/status")?;
    let report: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    report["configHash"].as_str().map(str::to_string)
}

fn config_info(admin: SocketAddr) -> Option<String> {
    let (_, body) = net::http_get(admin, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("trunkline_config_info{hash=\"")?.split_once('"'))
        .map(|(hash, _)| hash.to_string())
}

#[test]
fn the_gateway_serves_the_clusters_trunks_with_the_bundles_credentials_and_reports_its_hash_without_writing()
 {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let api = Api { objects: Arc::default(), changed: Arc::default() };
    let agent_port = free_port();
    api.put("inboundtrunks", trunk(&[NUMBER], agent_port, 1));
    let listener = runtime.block_on(tokio::net::TcpListener::bind((LOCALHOST, 0))).unwrap();
    let api_addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(answer).with_state(api.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });

    let (port, internal) = (free_port(), free_port());
    let admin = SocketAddr::from((LOCALHOST, free_port()));
    let mut gateway = Gateway::start(api_addr, port, internal, admin);

    // Live but not ready while the operator's credentials Secret does not exist.
    assert!(
        eventually(WITHIN, || matches!(net::http_get(admin, "/healthz"), Some((200, _)))),
        "the admin endpoints did not come up"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (status, body) = net::http_get(admin, "/readyz").unwrap();
    assert_eq!((status, body.trim()), (503, "no routing table yet"));
    assert_eq!(reported(admin), None, "a config hash reported before any config");

    api.put("secrets", bundle());
    assert!(
        eventually(WITHIN, || matches!(net::http_get(admin, "/readyz"), Some((200, _)))),
        "not ready within 10 s of the credentials Secret"
    );
    let first = config_info(admin).expect("trunkline_config_info on /metrics");
    assert_eq!(reported(admin).as_deref(), Some(first.as_str()));
    let (_, body) = net::http_get(admin, "/v1/status").unwrap();
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true);
    assert_eq!(report["advertisedAddress"], "127.0.0.1");

    // A call with the bundle's credentials reaches the agent.
    let agent = uas("agent_answer.xml", agent_port, &[]);
    let target = SocketAddr::from((LOCALHOST, port));
    let auth_uri = format!("{NUMBER}@{target}");
    let args =
        ["-s", NUMBER, "-au", USERNAME, "-ap", PASSWORD, "-auth_uri", &auth_uri, "-d", "200"];
    let carrier = uac("carrier_call_digest.xml", target, &args);
    let agent = agent.wait();
    carrier.assert_success();
    agent.assert_success();

    // A number added in the cluster: a new config, reported.
    api.put("inboundtrunks", trunk(&[NUMBER, SECOND_NUMBER], agent_port, 2));
    let mut second = None;
    assert!(eventually(WITHIN, || {
        second = config_info(admin).filter(|h| *h != first);
        second.is_some()
    }));
    let second = second.unwrap_or_default();
    assert!(eventually(WITHIN, || reported(admin).as_deref() == Some(second.as_str())));
    assert_eq!(api.writes(), Vec::<String>::new(), "the gateway wrote to the API server");

    gateway.process.sigterm();
    let status = gateway.process.wait_exit(WITHIN).expect("exit within 10 s of SIGTERM");
    assert!(status.success(), "{status}");
}
