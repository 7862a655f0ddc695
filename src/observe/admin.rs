//! The admin HTTP endpoints of a gateway or operator pod (an internal port, never exposed to
//! carriers):
//!
//! - `GET /metrics`: 200, `text/plain; version=0.0.4`, the [`MetricsPage`] given
//!   ([`GatewayMetrics`], or the operator's registry).
//! - `GET /healthz`: 200 `ok` while the process runs (the liveness probe). It stays 200 while
//!   draining, so the kubelet does not kill a pod that is finishing its calls.
//! - `GET /readyz`: 200 `ready` when a routing table is loaded, the listeners are up and the pod
//!   is not draining (the operator: when it is connected to the API server); else 503 with a one-line reason ([`NOT_READY`], [`DRAINING`]). Kubernetes
//!   takes a pod that is not ready out of the Service endpoints: that is how a draining pod stops
//!   getting new calls while it finishes the ones it has.
//! - `GET /v1/status` (gateways only; 404 on the operator): 200, `application/json`, the
//!   [`GatewayStatus`] of this pod — crate version, readiness (as `/readyz`), the hash of the
//!   routing table it serves, the address it advertises toward carriers and the reachability of
//!   each OutboundTrunk it probes with OPTIONS ([`OutboundHealth`]). The operator's prober reads
//!   it to decide `Programmed`, `Reachable` and the addresses in trunk status: the gateways
//!   report by answering, and never write to the API server.
//! - Any other path: 404.
//!
//! `HEAD` is answered like `GET` without a body; another method on a known path gets 405.
//! Request bodies are never read.
//!
//! Takes: a bound listener, the shared [`GatewayMetrics`] and [`Health`], the gateway's
//! [`GatewayReport`] (none on the operator), and a shutdown future. `trunkline run` and
//! `trunkline gateway` call [`serve_admin`]; the gateway flips [`Health`] as it loads its table,
//! opens its listeners and receives SIGTERM, and sets the report's config hash on each new table.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::metrics::GatewayMetrics;

/// What `/metrics` serves: Prometheus text.
pub trait MetricsPage: Send + Sync {
    fn render(&self) -> String;
}

impl MetricsPage for GatewayMetrics {
    fn render(&self) -> String {
        GatewayMetrics::render(self)
    }
}

impl MetricsPage for prometheus::Registry {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.gather(), &mut out) {
            tracing::warn!(error = %e, "rendering metrics failed; the page is incomplete");
        }
        out
    }
}

/// Body of `/readyz` before the first routing table is loaded or while the listeners are down.
pub const NOT_READY: &str = "no routing table yet";
/// Body of `/readyz` once draining started.
pub const DRAINING: &str = "draining: not taking new calls";

/// Liveness and readiness of the gateway, shared between the gateway and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Not ready, not draining.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Ready: a routing table is loaded and the SIP listeners are up.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// SIGTERM received: stop taking new calls. One way: a draining pod never becomes ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `Ok` when the pod should get new calls; else the reason it should not.
    fn readiness(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err(DRAINING)
        } else if !self.is_ready() {
            Err(NOT_READY)
        } else {
            Ok(())
        }
    }
}

/// The body of `GET /v1/status`: what a gateway pod says about itself. The gateway writes it;
/// the operator's prober reads it (unknown fields are ignored, missing ones take their default,
/// so either side may be a version ahead).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The crate version of the gateway binary.
    #[serde(default)]
    pub version: String,
    /// Whether it takes new calls (the same answer as `/readyz`).
    #[serde(default)]
    pub ready: bool,
    /// `RoutingTable::config_hash` of the table it serves; `null` before the first.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// The IP it writes in Via, Contact and SDP toward carriers; `null` when it has none to
    /// give (a wildcard listener without `--public-address`).
    #[serde(default)]
    pub advertised_address: Option<IpAddr>,
    /// The OutboundTrunks this gateway probes with OPTIONS, by `namespace/name`, with what it
    /// found. Only trunks with probing on are here; an entry changes only when its trunk flips
    /// (not on every probe), so the operator's reconciles follow flips, not probe rounds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outbound: BTreeMap<String, OutboundHealth>,
    /// The OutboundTrunks this gateway registers with their carrier (`registration`), by
    /// `namespace/name`, with the state of its binding (`call::registration`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registrations: BTreeMap<String, RegistrationHealth>,
}

/// One gateway's binding at one OutboundTrunk's registrar. Set when the state changes (not on
/// every refresh that keeps it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationHealth {
    /// `true`: registered; `false`: the last attempt failed; `null`: the first is under way.
    #[serde(default)]
    pub registered: Option<bool>,
    /// Unix seconds of the change to the current state.
    #[serde(default)]
    pub since: u64,
    /// What the registrar said (`200 OK, 3600 s`, `403 Forbidden`, `timeout`). Never a
    /// credential.
    #[serde(default)]
    pub detail: String,
}

/// What one gateway knows of one OutboundTrunk from its OPTIONS probes (`call::health`).
/// Every field is set when the state flips and stays until the next flip.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutboundHealth {
    /// `true`: the carrier answered the last probe (any status below 500 but 408); `false`: the
    /// last 3 probes in a row got no usable answer; `null`: not decided yet (no answer and fewer
    /// than 3 misses since probing started).
    #[serde(default)]
    pub reachable: Option<bool>,
    /// Unix seconds of the flip to the current state (of the start of probing while `null`).
    #[serde(default)]
    pub since: u64,
    /// What decided the current state: `200 OK`, `timeout`, `503 Service Unavailable`,
    /// `send error: ...`. Empty while `reachable` is `null`.
    #[serde(default)]
    pub detail: String,
    /// The status code of the answer that decided the current state, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
}

/// The gateway's side of [`GatewayStatus`]: readiness from [`Health`], the advertised address
/// known at start (or once the gateway has read its node's), the config hash set by the
/// gateway's config loop on every new table.
#[derive(Debug)]
pub struct GatewayReport {
    health: Arc<Health>,
    advertised_address: RwLock<Option<IpAddr>>,
    config_hash: RwLock<Option<String>>,
    outbound: RwLock<BTreeMap<String, OutboundHealth>>,
    registrations: RwLock<BTreeMap<String, RegistrationHealth>>,
}

impl GatewayReport {
    pub fn new(health: Arc<Health>, advertised_address: Option<IpAddr>) -> Arc<Self> {
        Arc::new(GatewayReport {
            health,
            advertised_address: RwLock::new(advertised_address),
            config_hash: RwLock::new(None),
            outbound: RwLock::new(BTreeMap::new()),
            registrations: RwLock::new(BTreeMap::new()),
        })
    }

    /// The probe state of one OutboundTrunk (`namespace/name`), set on every flip.
    pub fn set_outbound(&self, trunk: &str, health: OutboundHealth) {
        self.outbound
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(trunk.to_string(), health);
    }

    /// The trunk is no longer probed (removed, or its probing turned off).
    pub fn remove_outbound(&self, trunk: &str) {
        self.outbound.write().unwrap_or_else(PoisonError::into_inner).remove(trunk);
    }

    /// An OutboundTrunk's binding changed state.
    pub fn set_registration(&self, trunk: &str, health: RegistrationHealth) {
        self.registrations
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(trunk.to_string(), health);
    }

    /// The trunk no longer registers (removed, or its registration turned off).
    pub fn remove_registration(&self, trunk: &str) {
        self.registrations.write().unwrap_or_else(PoisonError::into_inner).remove(trunk);
    }

    /// The address the gateway advertises, once it is known (`--public-address-node` reads
    /// it from the node after the admin endpoints are up).
    pub fn set_advertised_address(&self, address: Option<IpAddr>) {
        *self.advertised_address.write().unwrap_or_else(PoisonError::into_inner) = address;
    }

    /// The hash of the table now served.
    pub fn set_config_hash(&self, hash: &str) {
        *self.config_hash.write().unwrap_or_else(PoisonError::into_inner) = Some(hash.to_string());
    }

    /// The report as answered now.
    pub fn status(&self) -> GatewayStatus {
        GatewayStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: self.health.readiness().is_ok(),
            config_hash: self.config_hash.read().unwrap_or_else(PoisonError::into_inner).clone(),
            advertised_address: *self
                .advertised_address
                .read()
                .unwrap_or_else(PoisonError::into_inner),
            outbound: self.outbound.read().unwrap_or_else(PoisonError::into_inner).clone(),
            registrations: self
                .registrations
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<dyn MetricsPage>,
    health: Arc<Health>,
    report: Option<Arc<GatewayReport>>,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, then lets requests in
/// flight finish.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<dyn MetricsPage>,
    health: Arc<Health>,
    report: Option<Arc<GatewayReport>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoints listening");
    }
    axum::serve(listener, router(AdminState { metrics, health, report }))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], s.metrics.render())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn status(State(s): State<AdminState>) -> axum::response::Response {
    let Some(report) = &s.report else {
        return not_found().await.into_response();
    };
    match serde_json::to_string(&report.status()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialise the status report");
            (StatusCode::INTERNAL_SERVER_ERROR, "status report unavailable").into_response()
        }
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::{Direction, Outcome};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    struct Running {
        addr: SocketAddr,
        health: Arc<Health>,
        report: Arc<GatewayReport>,
        metrics: Arc<GatewayMetrics>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start() -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Arc::new(GatewayMetrics::new());
        let health = Health::new();
        let report = GatewayReport::new(health.clone(), Some("198.51.100.7".parse().expect("ip")));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_admin(
            listener,
            metrics.clone(),
            health.clone(),
            Some(report.clone()),
            async {
                let _ = stopped.await;
            },
        ));
        Running { addr, health, report, metrics, stop, task }
    }

    /// Sends one raw HTTP/1.1 request; returns (status line, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_owned(), headers.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let r = start().await;
        r.metrics.call_finished("ns/t", Direction::Inbound, Outcome::Busy);
        let (status, headers, body) = request(r.addr, "GET", "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
        assert!(body.contains(
            r#"trunkline_calls_total{direction="inbound",outcome="busy",trunk="ns/t"} 1"#
        ));
    }

    #[tokio::test]
    async fn healthz_is_ok_even_while_draining() {
        let r = start().await;
        assert_eq!(request(r.addr, "GET", "/healthz").await.2, "ok");
        r.health.set_draining();
        let (status, _, body) = request(r.addr, "GET", "/healthz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    }

    #[tokio::test]
    async fn readyz_flips_with_ready_and_draining() {
        let r = start().await;
        let (status, _, body) = request(r.addr, "GET", "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", NOT_READY)
        );

        r.health.set_ready(true);
        let (status, _, body) = request(r.addr, "GET", "/readyz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ready"));

        r.health.set_draining();
        let (status, _, body) = request(r.addr, "GET", "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", DRAINING)
        );
        assert!(r.health.is_ready() && r.health.is_draining());
    }

    #[tokio::test]
    async fn the_status_report_says_version_readiness_config_and_address() {
        let r = start().await;
        let (status, headers, body) = request(r.addr, "GET", "/v1/status").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("content-type: application/json"), "{headers}");
        let expected = format!(
            r#"{{"version":"{}","ready":false,"configHash":null,"advertisedAddress":"198.51.100.7"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(body, expected);

        r.health.set_ready(true);
        r.report.set_config_hash("abc123");
        let body = request(r.addr, "GET", "/v1/status").await.2;
        let parsed: GatewayStatus = serde_json::from_str(&body).expect("a report");
        assert_eq!(
            parsed,
            GatewayStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                ready: true,
                config_hash: Some("abc123".into()),
                advertised_address: Some("198.51.100.7".parse().expect("ip")),
                outbound: BTreeMap::new(),
                registrations: BTreeMap::new(),
            }
        );
        r.health.set_draining();
        assert!(!r.report.status().ready, "draining is not ready, as /readyz says");
    }

    #[tokio::test]
    async fn the_status_report_carries_each_probed_trunk_until_it_goes() {
        let r = start().await;
        let down = OutboundHealth {
            reachable: Some(false),
            since: 1_700_000_000,
            detail: "timeout".into(),
            last_status: None,
        };
        r.report.set_outbound("voice/carrier-out", down.clone());
        r.report.set_outbound("voice/backup", OutboundHealth::default());
        let body = request(r.addr, "GET", "/v1/status").await.2;
        assert!(
            body.contains(
                r#""outbound":{"voice/backup":{"reachable":null,"since":0,"detail":""},"voice/carrier-out":{"reachable":false,"since":1700000000,"detail":"timeout"}}"#
            ),
            "{body}"
        );
        let parsed: GatewayStatus = serde_json::from_str(&body).expect("a report");
        assert_eq!(parsed.outbound.get("voice/carrier-out"), Some(&down));
        r.report.remove_outbound("voice/carrier-out");
        r.report.remove_outbound("voice/backup");
        let body = request(r.addr, "GET", "/v1/status").await.2;
        assert!(!body.contains("outbound"), "no probed trunk, no field: {body}");
    }

    #[tokio::test]
    async fn without_a_report_the_status_path_is_not_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(serve_admin(
            listener,
            Arc::new(GatewayMetrics::new()),
            Health::new(),
            None,
            std::future::pending(),
        ));
        let (status, _, _) = request(addr, "GET", "/v1/status").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        task.abort();
    }

    #[test]
    fn a_report_with_unknown_or_missing_fields_still_parses() {
        let parsed: GatewayStatus = serde_json::from_str(
            r#"{"ready":true,"extra":[1,2],"advertisedAddress":"2001:db8::1"}"#,
        )
        .expect("lenient");
        assert!(parsed.ready && parsed.config_hash.is_none());
        assert_eq!(parsed.advertised_address, Some("2001:db8::1".parse().expect("ip")));
        assert!(serde_json::from_str::<GatewayStatus>(r#"{"ready":"yes"}"#).is_err());
        let newer: GatewayStatus = serde_json::from_str(
            r#"{"outbound":{"ns/t":{"reachable":true,"since":5,"detail":"200 OK","lastStatus":200,"rtt":0.1}}}"#,
        )
        .expect("a newer gateway's report");
        assert_eq!(newer.outbound["ns/t"].last_status, Some(200));
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found_and_the_server_stops_on_shutdown() {
        let r = start().await;
        let (status, _, _) = request(r.addr, "GET", "/").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = request(r.addr, "GET", "/metrics/extra").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = request(r.addr, "POST", "/readyz").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

        r.stop.send(()).expect("server still running");
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), r.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}
