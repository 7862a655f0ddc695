//! The prober: the operator's side of the gateways' reports. Gateways never write to the API
//! server; each answers `GET /v1/status` on its admin port (`observe::admin::GatewayStatus`:
//! the hash of the config it serves, the address it advertises, its readiness, and what its
//! OPTIONS probes found of each OutboundTrunk, for `Reachable`: that part changes only when a
//! trunk flips, so probe rounds do not reconcile anything).
//!
//! For every pod in the gateway pod store that has a `status.podIP`, the prober fetches
//! `http://<podIP>:<adminPort>/v1/status` (an IPv6 pod IP in brackets) at most
//! [`PROBE_CONCURRENCY`] at a time, each within [`PROBE_TIMEOUT`]; a round runs when a pod
//! changed (the index wakes it) and every [`PROBE_INTERVAL`]. The last report of each pod is
//! kept with the pod's uid ([`Reports`]), so a pod recreated under the same name is not taken
//! for the old one. A fetch that fails (refused, timed out, not 200, a body over
//! [`MAX_REPORT_BYTES`], not the expected JSON) means no report: the pod's config hash and
//! address are unknown (its objects stay Pending), it is counted in
//! `trunkline_operator_gateway_probes_total{result="error"}` and logged at debug (a pod that is
//! starting does not answer yet: not worth a warning). When the reports differ from the last
//! round, every object is reconciled, exactly as for a pod change.
//!
//! The response body is untrusted input: read up to the cap, parsed with serde (unknown fields
//! ignored), never trusted to be well-formed. Nor is the address in it trusted: it goes into the
//! trunks' status, which carriers build their allowlists from, so a gateway (an internet-facing
//! process) must not be able to put an address of its choosing there. The operator works out
//! the address each pod's gateway must advertise from the fleet's settings ([`AddressPolicy`]):
//! the pod's IP, the fixed `publicAddress`, or what `source::node::node_public_address` picks
//! from the pod's Node (read by the operator itself, once a round per node). A report with any
//! other address keeps its config hash but loses its address, with a warning.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use tracing::{debug, warn};

use super::context::Context;
use crate::observe::admin::GatewayStatus;
use crate::source::node::node_public_address;

/// How often every gateway pod is probed while nothing changes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one fetch (connect, request, whole body) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many fetches run at once.
pub const PROBE_CONCURRENCY: usize = 32;
/// The largest report body read; a longer one is a failed fetch.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// The path of the report on a gateway's admin port.
pub const STATUS_PATH: &str = "/v1/status";

/// A gateway's report, with the uid of the pod that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    pub uid: String,
    pub status: GatewayStatus,
}

/// The last report of each gateway pod, by pod name.
#[derive(Debug, Default)]
pub struct Reports {
    by_pod: Mutex<BTreeMap<String, PodReport>>,
}

impl Reports {
    /// The last report of `pod`, if it came from this very pod (same uid).
    pub fn get(&self, pod: &Pod) -> Option<GatewayStatus> {
        let name = pod.metadata.name.as_deref()?;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let reports = self.by_pod.lock().unwrap_or_else(PoisonError::into_inner);
        reports.get(name).filter(|r| r.uid == uid).map(|r| r.status.clone())
    }

    /// Sets one pod's report (tests stand in for the prober).
    #[cfg(test)]
    pub fn insert(&self, pod: &str, report: PodReport) {
        self.by_pod.lock().unwrap_or_else(PoisonError::into_inner).insert(pod.to_string(), report);
    }

    /// Replaces every report; `true` when anything differs.
    pub fn replace(&self, next: BTreeMap<String, PodReport>) -> bool {
        let mut reports = self.by_pod.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *reports != next;
        *reports = next;
        changed
    }
}

/// One pod to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub uid: String,
    pub addr: SocketAddr,
    /// Every IP of the pod (`status.podIPs`, else `status.podIP`).
    pub pod_ips: Vec<IpAddr>,
    /// The node it runs on (`spec.nodeName`).
    pub node: Option<String>,
}

/// Which address a gateway of this fleet must report (the settings' `publicAddressFrom`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Whatever it reports (no settings to judge by).
    #[default]
    Any,
    /// The fleet's one fixed `publicAddress`.
    Fixed(IpAddr),
    /// The pod's own IP.
    Pod,
    /// Its node's address, chosen as the gateway chooses it (node annotation `annotation`,
    /// else ExternalIP, else InternalIP).
    Node { annotation: String },
}

impl AddressPolicy {
    /// The policy of the settings' address source.
    pub fn from_settings(settings: &crate::operator::settings::OperatorSettings) -> Self {
        use crate::operator::settings::AddressSource;
        match settings.address_source() {
            AddressSource::Node => {
                AddressPolicy::Node { annotation: settings.node_address_annotation.clone() }
            }
            AddressSource::Pod => AddressPolicy::Pod,
            AddressSource::Fixed => {
                settings.public_address.map_or(AddressPolicy::Any, AddressPolicy::Fixed)
            }
        }
    }
}

/// May the gateway on `target` (whose Node is `node`, when the policy needs it and it could be
/// read) advertise `address`?
pub fn address_admitted(
    policy: &AddressPolicy,
    target: &Target,
    node: Option<&Node>,
    address: IpAddr,
) -> bool {
    match policy {
        AddressPolicy::Any => true,
        AddressPolicy::Fixed(fixed) => address == *fixed,
        AddressPolicy::Pod => target.pod_ips.contains(&address),
        AddressPolicy::Node { annotation } => node
            .and_then(|n| node_public_address(n, annotation).ok())
            .is_some_and(|(expected, _)| expected == address),
    }
}

/// The pods to probe: those with a name and a pod IP that parses, on `admin_port`.
pub fn probe_targets(pods: &[Arc<Pod>], admin_port: u16) -> Vec<Target> {
    pods.iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.clone()?;
            let status = pod.status.as_ref()?;
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            let mut pod_ips: Vec<IpAddr> =
                status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
            if !pod_ips.contains(&ip) {
                pod_ips.insert(0, ip);
            }
            Some(Target {
                name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                addr: SocketAddr::new(ip, admin_port),
                pod_ips,
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            })
        })
        .collect()
}

/// The URL of a gateway's report: `http://10.0.0.7:9090/v1/status`, `http://[fd00::7]:9090/...`.
pub fn status_url(addr: SocketAddr) -> String {
    format!("http://{addr}{STATUS_PATH}")
}

/// Why a fetch gave no report.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} s", PROBE_TIMEOUT.as_secs())]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot build the request: {0}")]
    Request(#[source] hyper::http::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("cannot read the body (at most {MAX_REPORT_BYTES} bytes): {0}")]
    Body(String),
    #[error("the connection closed before the answer")]
    Closed,
    #[error("not a status report: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Fetches one gateway's report within [`PROBE_TIMEOUT`].
pub async fn fetch_status(addr: SocketAddr) -> Result<GatewayStatus, ProbeError> {
    tokio::time::timeout(PROBE_TIMEOUT, fetch(addr)).await.map_err(|_| ProbeError::Timeout)?
}

async fn fetch(addr: SocketAddr) -> Result<GatewayStatus, ProbeError> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Http)?;
    let request = hyper::Request::get(STATUS_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Request)?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(ProbeError::Http)?;
        if response.status() != hyper::StatusCode::OK {
            return Err(ProbeError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
            .map_err(|e| ProbeError::Body(e.to_string()))?
            .to_bytes();
        serde_json::from_slice::<GatewayStatus>(&body).map_err(ProbeError::Parse)
    };
    // The connection is driven while the exchange runs, and closed with it.
    tokio::select! {
        result = exchange => result,
        ended = connection => Err(match ended {
            Ok(()) => ProbeError::Closed,
            Err(e) => ProbeError::Http(e),
        }),
    }
}

/// Probes every gateway pod now, then on every pod change and every [`PROBE_INTERVAL`], until
/// the controllers stop.
pub async fn run_prober(ctx: Arc<Context>) {
    if ctx.stores.pods.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        probe_round(&ctx).await;
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = ctx.probe_now.notified() => {}
        }
    }
}

/// One round: every pod with an IP, [`PROBE_CONCURRENCY`] at a time; the reports replaced;
/// every object reconciled when they changed.
async fn probe_round(ctx: &Context) {
    let targets = probe_targets(&ctx.stores.pods.state(), ctx.config.admin_port);
    let results: Vec<(Target, Result<GatewayStatus, ProbeError>)> = futures::stream::iter(targets)
        .map(|target| async move {
            let result = fetch_status(target.addr).await;
            (target, result)
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let nodes = read_nodes(ctx, &results).await;
    let mut reports = BTreeMap::new();
    for (target, result) in results {
        match result {
            Ok(mut status) => {
                ctx.metrics.gateway_probed(true);
                let node = target.node.as_ref().and_then(|n| nodes.get(n));
                if let Some(address) = status.advertised_address
                    && !address_admitted(&ctx.config.address_policy, &target, node, address)
                {
                    warn!(
                        pod = %target.name,
                        node = target.node.as_deref().unwrap_or_default(),
                        %address,
                        policy = ?ctx.config.address_policy,
                        "a gateway reports an address it should not advertise: left out of the \
                         trunks' status"
                    );
                    status.advertised_address = None;
                }
                reports.insert(target.name, PodReport { uid: target.uid, status });
            }
            Err(e) => {
                ctx.metrics.gateway_probed(false);
                debug!(pod = %target.name, url = %status_url(target.addr), error = %e, "no status report from a gateway pod");
            }
        }
    }
    if ctx.reports.replace(reports) {
        debug!("the gateways' reports changed");
        // A change only of what `GatewayPod` does not hold (readiness as reported) still
        // reconciles, as the module docs promise.
        if !ctx.note_fleet() {
            ctx.trigger_everything();
        }
    }
}

/// The Nodes of the pods that reported an address, read once for this round, when the policy
/// judges addresses by the node. A Node that cannot be read is left out (its gateways' addresses
/// are then not admitted this round), with the reason at debug.
async fn read_nodes(
    ctx: &Context,
    results: &[(Target, Result<GatewayStatus, ProbeError>)],
) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    if !matches!(ctx.config.address_policy, AddressPolicy::Node { .. }) {
        return nodes;
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    for (target, result) in results {
        let reported = result.as_ref().is_ok_and(|s| s.advertised_address.is_some());
        let Some(name) = target.node.as_ref().filter(|n| reported && !nodes.contains_key(*n))
        else {
            continue;
        };
        match api.get(name).await {
            Ok(node) => {
                nodes.insert(name.clone(), node);
            }
            Err(e) => debug!(node = %name, error = %e, "cannot read a gateway's node"),
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pod(name: &str, uid: &str, ip: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus { pod_ip: ip.map(str::to_string), ..PodStatus::default() }),
            ..Pod::default()
        })
    }

    fn report(hash: &str) -> GatewayStatus {
        GatewayStatus {
            version: "0.1.0".into(),
            ready: true,
            config_hash: Some(hash.into()),
            advertised_address: None,
            outbound: Default::default(),
            registrations: Default::default(),
        }
    }

    #[test]
    fn pods_with_an_ip_are_probed_on_the_admin_port_ipv6_in_brackets() {
        let pods = [
            pod("gw-0", "u0", Some("10.0.0.7")),
            pod("gw-1", "u1", Some("fd00::7")),
            pod("gw-2", "u2", None),
            pod("gw-3", "u3", Some("not-an-ip")),
        ];
        let targets = probe_targets(&pods, 9090);
        let urls: Vec<String> = targets.iter().map(|t| status_url(t.addr)).collect();
        assert_eq!(urls, ["http://10.0.0.7:9090/v1/status", "http://[fd00::7]:9090/v1/status"]);
        assert_eq!((targets[1].name.as_str(), targets[1].uid.as_str()), ("gw-1", "u1"));
    }

    #[test]
    fn a_report_belongs_to_the_pod_uid_that_gave_it() {
        let reports = Reports::default();
        let mut next = BTreeMap::new();
        next.insert("gw-0".to_string(), PodReport { uid: "old".into(), status: report("h") });
        assert!(reports.replace(next.clone()));
        assert!(!reports.replace(next), "the same reports: no change");
        assert_eq!(reports.get(&pod("gw-0", "old", None)), Some(report("h")));
        assert_eq!(reports.get(&pod("gw-0", "new", None)), None, "recreated under the same name");
        assert_eq!(reports.get(&pod("gw-1", "old", None)), None);
    }

    /// Serves one connection on 127.0.0.1 with `answer` (raw HTTP), after reading the request.
    async fn serve_once(answer: Vec<u8>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&answer).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        addr
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_report_is_fetched_and_unknown_fields_are_ignored() {
        let body = r#"{"version":"9.9.9","ready":true,"configHash":"abc","advertisedAddress":"127.0.0.2","new":1}"#;
        let addr = serve_once(http("200 OK", body)).await;
        let status = fetch_status(addr).await.unwrap();
        assert_eq!(status.config_hash.as_deref(), Some("abc"));
        assert_eq!(status.advertised_address, Some("127.0.0.2".parse().unwrap()));
    }

    #[tokio::test]
    async fn hostile_or_broken_answers_are_no_report() {
        let addr = serve_once(http("503 Service Unavailable", "{}")).await;
        assert!(matches!(fetch_status(addr).await, Err(ProbeError::Status(503))));

        let addr = serve_once(http("200 OK", "[1, 2")).await;
        assert!(matches!(fetch_status(addr).await, Err(ProbeError::Parse(_))));

        let huge = format!(r#"{{"configHash":"{}"}}"#, "x".repeat(MAX_REPORT_BYTES));
        let addr = serve_once(http("200 OK", &huge)).await;
        assert!(matches!(fetch_status(addr).await, Err(ProbeError::Body(_))));

        // Headers and then nothing: the timeout ends it.
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec()).await;
        let started = std::time::Instant::now();
        assert!(matches!(fetch_status(addr).await, Err(ProbeError::Timeout)));
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(1));

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(matches!(fetch_status(addr).await, Err(ProbeError::Connect(_))));
    }

    fn target(pod_ips: &[&str], node: Option<&str>) -> Target {
        Target {
            name: "gw-0".into(),
            uid: "u0".into(),
            addr: "10.0.0.7:9090".parse().unwrap(),
            pod_ips: pod_ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            node: node.map(str::to_string),
        }
    }

    fn node(annotation: Option<&str>, external: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": annotation
                .map(|a| serde_json::json!({"trunkline.dev/public-address": a}))},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.5"},
                                     {"type": "ExternalIP", "address": external}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_reported_address_is_admitted_only_where_the_settings_would_put_the_gateway() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let t = target(&["10.0.0.7", "fd00::7"], Some("n1"));
        // Pod: one of the pod's own IPs.
        assert!(address_admitted(&AddressPolicy::Pod, &t, None, ip("fd00::7")));
        assert!(!address_admitted(&AddressPolicy::Pod, &t, None, ip("203.0.113.66")));
        // Fixed: that address only.
        let fixed = AddressPolicy::Fixed(ip("198.51.100.7"));
        assert!(address_admitted(&fixed, &t, None, ip("198.51.100.7")));
        assert!(!address_admitted(&fixed, &t, None, ip("10.0.0.7")));
        // Node: what the gateway itself must have picked from its node, and nothing else.
        let by_node = AddressPolicy::Node { annotation: "trunkline.dev/public-address".into() };
        let plain = node(None, "203.0.113.7");
        assert!(address_admitted(&by_node, &t, Some(&plain), ip("203.0.113.7")));
        assert!(
            !address_admitted(&by_node, &t, Some(&plain), ip("10.1.0.5")),
            "not the ExternalIP"
        );
        assert!(!address_admitted(&by_node, &t, Some(&plain), ip("192.0.2.1")));
        let annotated = node(Some("198.51.100.9"), "203.0.113.7");
        assert!(address_admitted(&by_node, &t, Some(&annotated), ip("198.51.100.9")));
        assert!(!address_admitted(&by_node, &t, Some(&annotated), ip("203.0.113.7")));
        // A node the operator could not read admits nothing.
        assert!(!address_admitted(&by_node, &t, None, ip("203.0.113.7")));
        assert!(address_admitted(&AddressPolicy::Any, &t, None, ip("192.0.2.1")));
    }

    #[test]
    fn the_policy_follows_the_settings_address_source() {
        let parse = |text: &str| {
            crate::operator::settings::OperatorSettings::parse(text, std::path::Path::new("s"))
                .unwrap()
        };
        assert_eq!(
            AddressPolicy::from_settings(&parse("nodeAddressAnnotation: example.com/ip\n")),
            AddressPolicy::Node { annotation: "example.com/ip".into() }
        );
        assert_eq!(
            AddressPolicy::from_settings(&parse("hostNetwork: false\npublicAddressFrom: Pod\n")),
            AddressPolicy::Pod
        );
        assert_eq!(
            AddressPolicy::from_settings(&parse("publicAddress: 198.51.100.7\nreplicas: 1\n")),
            AddressPolicy::Fixed("198.51.100.7".parse().unwrap())
        );
    }
}
