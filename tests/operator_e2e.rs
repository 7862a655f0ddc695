//! `trunkline operator` end to end (issue 5): the built binary, given a kubeconfig that points at
//! the in-memory API server of `support::apiserver` (127.0.0.1, plain HTTP), with a small fleet
//! (`edge` in namespace `trunkline`, public address 127.0.0.1) and trunks in namespace `voice`.
//!
//! - `the_leader_applies_the_fleet_writes_trunk_status_credentials_and_the_bundle_and_stops_on_sigterm`:
//!   the Lease taken; the fleet applied with server-side apply and its orphans deleted (another
//!   fleet's objects kept); status written on `/status` (accepted with the carrier endpoint,
//!   generated credentials owned by their trunk, a number conflict) with its events; the gateway
//!   credentials bundle (served trunks only, and the nonce key); deleting a generated Secret
//!   rotates its credentials; a spec change seen through re-opened watches; a deleted trunk
//!   frees its number for the younger one; the metrics;
//!   SIGTERM ends it with 0 and gives the Lease up.
//! - `two_gateways_report_their_config_and_address_and_the_trunks_list_both`: a ready gateway
//!   pod that does not answer the operator's probe keeps `Programmed` False; the real `trunkline
//!   gateway`, run as that pod (admin and SIP on the pod IP 127.0.0.2, `--public-address
//!   127.0.0.2`) against the same API server, reads the bundle and reports its config hash on
//!   `GET /v1/status`, the operator's prober fetches it and sets `Programmed` True; a second
//!   gateway pod on 127.0.0.3 joins: the InboundTrunk's `endpoints` and the OutboundTrunk's
//!   `sourceAddresses` list both; sipp calls through each gateway go through with the
//!   credentials the bundle delivered (a referenced Secret's, and generated ones), each answered
//!   with that gateway's own address in Contact and SDP; the second pod deleted, its address
//!   leaves the status. The gateways' API client never writes.
//! - `two_fleets_share_a_trunk_with_an_entry_each_and_stable_conditions`: operators of fleets
//!   `us` and `eu` (regions) on one API server: a trunk without regions gets both fleets'
//!   entries, a `regions: [us]` trunk an `eu` entry that says NotServedHere; the conditions
//!   settle (no more status writes) and the top-level `Accepted` never flaps.
//! - `a_standby_replica_stays_idle_and_takes_over_when_the_leader_stops`: a second replica is
//!   ready but writes nothing; when the leader stops it takes the Lease and reconciles, keeping
//!   the bundle's nonce key.
//! - `the_fake_api_server_answers_kube_clients_as_an_api_server_would`: the fake itself, through
//!   kube's client (what the others rely on).
//! - `a_deleted_gateway_credentials_secret_is_written_again`: the operator puts its bundle back.
//!
//! The processes must log no WARN or ERROR line, and every request they make must be answered
//! (a 404 only for a GET of what does not exist yet). What the fake approximates is said at the
//! top of `support/apiserver.rs`.

// Harness code is test code (STYLE.md allows unwrap and panic in tests; clippy only knows
// #[test] functions as tests).
#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use support::apiserver::{ApiServer, Logged, WATCH_IDLE};
use support::free_port;
use support::net::{self, LOCALHOST, TempDir};
use support::process::TrunklineProcess;
use support::sipp::{uac, uas};

const FLEET: &str = "edge";
const FLEET_NAMESPACE: &str = "trunkline";
const VOICE: &str = "voice";
const OPERATOR_POD: &str = "trunkline-operator-0";
const LEASE: &str = "edge-operator";
const BUNDLE: &str = "trunkline-gateway-credentials";
const OPERATOR_DEPLOYMENT: &str = "trunkline-operator";
const DEPLOYMENTS: &str = "apps/v1/deployments";
const NODES: &str = "v1/nodes";
const CLUSTER_ROLES: &str = "rbac.authorization.k8s.io/v1/clusterroles";
const CLUSTER_ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/v1/clusterrolebindings";
const GATEWAY_A: &str = "edge-gateway-a";
const GATEWAY_B: &str = "edge-gateway-b";
/// The pod IPs of the two gateway pods (their admin and SIP addresses too).
const IP_A: &str = "127.0.0.2";
const IP_B: &str = "127.0.0.3";
/// The bearer token of the gateways' kubeconfig: how the fake tells their requests apart.
const GATEWAY_USER: &str = "gateway";

const ACME_NUMBER: &str = "+14155550100";
const BETA_NUMBER: &str = "+14155550111";
const ACME_USER: &str = "acme";
const ACME_PASSWORD: &str = "acme-referenced-password";

const TRUNKS: &str = "trunkline.dev/v1alpha1/inboundtrunks";
const OUTBOUND: &str = "trunkline.dev/v1alpha1/outboundtrunks";
const SECRETS: &str = "v1/secrets";
const PODS: &str = "v1/pods";
const LEASES: &str = "coordination.k8s.io/v1/leases";
const DAEMONSETS: &str = "apps/v1/daemonsets";
const SERVICES: &str = "v1/services";
const EVENTS: &str = "events.k8s.io/v1/events";

/// How long any one thing may take to show up.
const WITHIN: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Objects.

fn inbound_trunk(name: &str, number: &str, agent_port: u16, secret: Option<&str>) -> Value {
    let digest = match secret {
        Some(secret) => json!({"secretRef": {"name": secret}}),
        None => json!({}),
    };
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
        "metadata": {"name": name, "namespace": VOICE},
        "spec": {
            "numbers": [{"number": number, "agent": "support"}],
            "destination": {"uri": format!("sip:127.0.0.1:{agent_port}")},
            "auth": {"digest": digest},
            "transports": ["UDP"],
        },
    })
}

fn basic_auth(name: &str, username: &str, password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": name, "namespace": VOICE},
        "stringData": {"username": username, "password": password},
    })
}

/// A gateway pod of the fleet as the kubelet would show it: Ready, with its pod IP, on the node
/// of that address ([`node_name`]).
fn ready_gateway_pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": FLEET_NAMESPACE,
            "labels": {"trunkline.dev/fleet": FLEET, "app.kubernetes.io/component": "gateway"},
        },
        "spec": {"containers": [{"name": "gateway", "image": "trunkline:test"}],
                 "nodeName": node_name(ip)},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// An OutboundTrunk through a carrier on 127.0.0.1.
fn outbound_trunk(name: &str) -> Value {
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "OutboundTrunk",
        "metadata": {"name": name, "namespace": VOICE},
        "spec": {"host": "127.0.0.1", "callerId": ACME_NUMBER},
    })
}

/// An object labelled as owned by the operator of fleet `fleet`.
fn fleet_object(kind: &str, name: &str, fleet: &str) -> Value {
    let api_version = if kind == "DaemonSet" { "apps/v1" } else { "v1" };
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {
            "name": name, "namespace": FLEET_NAMESPACE,
            "labels": {"trunkline.dev/fleet": fleet, "app.kubernetes.io/managed-by": "trunkline-operator"},
        },
        "spec": {},
    })
}

/// One gateway advertising a fixed address; the fleet's objects owned by the operator's
/// Deployment ([`operator_deployment`]).
fn settings() -> String {
    format!(
        "name: {FLEET}\nnamespace: {FLEET_NAMESPACE}\npublicAddress: 127.0.0.1\nreplicas: 1\n\
         operatorDeployment: {OPERATOR_DEPLOYMENT}\n"
    )
}

/// The operator's own Deployment, as Helm installs it: the owner of the fleet's objects.
fn operator_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": FLEET_NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "spec": {},
    })
}

/// A node as the kubelet registers it: an internal address, and an external one unless
/// `external` is empty. The gateway on that node advertises the external one.
fn node(name: &str, external: &str) -> Value {
    let mut addresses = vec![json!({"type": "InternalIP", "address": "10.9.9.9"})];
    if !external.is_empty() {
        addresses.push(json!({"type": "ExternalIP", "address": external}));
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": addresses},
    })
}

/// The node a gateway with pod IP `ip` runs on (one node per address).
fn node_name(ip: &str) -> String {
    format!("node-{}", ip.replace('.', "-"))
}

fn decode(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default()).unwrap()
}

fn text(value: &Value) -> String {
    String::from_utf8(decode(value)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A `trunkline` child process (`support::process`: SIGTERM then SIGKILL on drop, its log
/// printed when the test panics), named for the messages.
struct Process {
    name: String,
    process: TrunklineProcess,
}

impl Process {
    fn spawn(name: &str, dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> Process {
        let log = dir.join(&format!("{name}.log"));
        let process = TrunklineProcess::spawn(name, &log, args, |command| {
            command
                .env("KUBECONFIG", dir.join("kubeconfig"))
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("POD_NAME")
                .env_remove("POD_NAMESPACE")
                .env("RUST_LOG", "info,trunkline=debug");
            for (key, value) in env {
                command.env(key, value);
            }
        });
        Process { name: name.to_string(), process }
    }

    /// Its WARN and ERROR lines: none when every request, reconcile and watch went through.
    fn problems(&self) -> Vec<String> {
        let text = self.process.log_text();
        text.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}

impl std::ops::Deref for Process {
    type Target = TrunklineProcess;
    fn deref(&self) -> &TrunklineProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut TrunklineProcess {
        &mut self.process
    }
}

/// The fake API server, a temp dir with a kubeconfig for it, and the processes of one test
/// (dropped first: the processes stop before the server goes).
struct Cluster {
    processes: Vec<Process>,
    api: ApiServer,
    dir: TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_settings(&settings())
    }

    /// A cluster whose operator reads `settings` (`operator.yaml`).
    fn with_settings(settings: &str) -> Cluster {
        let api = ApiServer::start();
        let dir = TempDir::new("operator-e2e");
        api.write_kubeconfig(&dir.join("kubeconfig"), FLEET_NAMESPACE);
        api.write_kubeconfig_as(&dir.join("kubeconfig-gateway"), FLEET_NAMESPACE, GATEWAY_USER);
        std::fs::write(dir.join("operator.yaml"), settings).unwrap();
        api.put(DEPLOYMENTS, operator_deployment());
        Cluster { processes: Vec::new(), api, dir }
    }

    /// Starts `trunkline operator` as replica `identity`; returns its admin address and its
    /// index in `processes`.
    fn start_operator(&mut self, identity: &str) -> (SocketAddr, usize) {
        self.start_operator_with(identity, "operator.yaml", LEASE)
    }

    /// Starts `trunkline operator` with the settings file `config` (in the cluster's dir) and
    /// the Lease `lease`.
    fn start_operator_with(
        &mut self,
        identity: &str,
        config: &str,
        lease: &str,
    ) -> (SocketAddr, usize) {
        let admin = SocketAddr::from((LOCALHOST, free_port()));
        let args: Vec<String> = [
            "operator",
            "--config",
            self.dir.join(config).to_str().unwrap(),
            "--admin",
            &admin.to_string(),
            "--lease-name",
            lease,
            "--pod-name",
            identity,
            "--pod-namespace",
            FLEET_NAMESPACE,
            "--lease-duration",
            "6",
        ]
        .map(String::from)
        .to_vec();
        self.processes.push(Process::spawn(identity, &self.dir, &args, &[]));
        (admin, self.processes.len() - 1)
    }

    /// Starts `trunkline gateway` as pod `pod` with its SIP (UDP, `sip_port`) and admin
    /// (`admin_port`) listeners on the pod IP `ip`, on a node whose ExternalIP is `ip` (as on
    /// the host network: it finds its address with `--public-address-node`, as the fleet runs
    /// it), and the gateways' kubeconfig ([`GATEWAY_USER`]); returns its carrier-facing and
    /// admin addresses.
    fn start_gateway(
        &mut self,
        pod: &str,
        ip: &str,
        sip_port: u16,
        admin_port: u16,
    ) -> (SocketAddr, SocketAddr) {
        let ip_addr: std::net::IpAddr = ip.parse().unwrap();
        let (sip, admin) =
            (SocketAddr::new(ip_addr, sip_port), SocketAddr::new(ip_addr, admin_port));
        let args: Vec<String> = [
            "gateway".to_string(),
            "--listen".into(),
            format!("udp://{sip}"),
            "--internal-listen".into(),
            format!("udp://{ip}:{}", free_port()),
            "--admin".into(),
            admin.to_string(),
            "--public-address-node".into(),
            node_name(ip),
            "--credentials-secret".into(),
            BUNDLE.into(),
            "--drain-timeout".into(),
            "1s".into(),
        ]
        .to_vec();
        self.api.put(NODES, node(&node_name(ip), ip));
        let kubeconfig = self.dir.join("kubeconfig-gateway");
        let env = [
            ("POD_NAME", pod),
            ("POD_NAMESPACE", FLEET_NAMESPACE),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ];
        self.processes.push(Process::spawn(pod, &self.dir, &args, &env));
        (sip, admin)
    }

    /// Asserts that no process logged a WARN or ERROR line.
    fn assert_quiet(&self) {
        for process in &self.processes {
            assert_eq!(
                process.problems(),
                Vec::<String>::new(),
                "warnings in the {} log",
                process.name
            );
        }
    }

    fn trunk(&self, name: &str) -> Value {
        self.api.get(TRUNKS, VOICE, name).unwrap_or(Value::Null)
    }

    /// Waits until `check` holds, else panics with `what`, the objects' state and the request log.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        if eventually(WITHIN, &mut check) {
            return;
        }
        let trunks: Vec<String> = self
            .api
            .list(TRUNKS, None, "")
            .iter()
            .map(|t| format!("{}: {}", t["metadata"]["name"], t["status"]))
            .collect();
        panic!(
            "not within {WITHIN:?}: {what}\ntrunks:\n{}\nrequests:\n{}",
            trunks.join("\n"),
            self.api.request_log()
        );
    }

    /// Waits until a request matching `check` is in the log (a write is logged just after it
    /// shows in the store).
    fn wait_for_request(&self, what: &str, check: impl Fn(&Logged) -> bool) {
        self.wait_for(what, || self.api.requests().iter().any(&check));
    }

    /// Waits until trunk `name` has condition `type_` with `status` (and `reason`, when given);
    /// returns the trunk.
    fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: Option<&str>) -> Value {
        let what = format!("InboundTrunk {name}: {type_}={status} reason {reason:?}");
        self.wait_for(&what, || {
            condition(&self.trunk(name), type_)
                .is_some_and(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r))
        });
        self.trunk(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Gateways first, then the operator.
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
    }
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
fn eventually(within: Duration, check: &mut impl FnMut() -> bool) -> bool {
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

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn metrics(admin: SocketAddr) -> String {
    net::http_get(admin, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// The value of the sample `name` (with its labels, as printed) on a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One entry of the gateway credentials bundle, parsed; `Null` when absent.
fn bundle_entry(api: &ApiServer, key: &str) -> Value {
    api.get(SECRETS, FLEET_NAMESPACE, BUNDLE)
        .and_then(|b| b["data"].get(key).map(decode))
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

fn names(objects: &[Value]) -> BTreeSet<String> {
    objects.iter().filter_map(|o| o["metadata"]["name"].as_str()).map(str::to_string).collect()
}

/// The requests answered with an error, but for lookups of what did not exist (yet): a path or
/// a method the fake does not serve shows up here.
fn refused_requests(api: &ApiServer) -> Vec<String> {
    let fine =
        |r: &Logged| (200..300).contains(&r.status) || (r.method == "GET" && r.status == 404);
    api.requests().iter().filter(|r| !fine(r)).map(Logged::line).collect()
}

/// A forced server-side apply by field manager `manager`: `trunkline-operator` for the fleet's
/// objects, `trunkline-operator/<fleet>` for status.
fn is_apply_by(request: &Logged, manager: &str) -> bool {
    request.method == "PATCH"
        && request.content_type.as_deref() == Some("application/apply-patch+yaml")
        && request.query.get("fieldManager").map(String::as_str) == Some(manager)
        && request.query.get("force").map(String::as_str) == Some("true")
}

/// The requests of the gateways' client that are not reads.
fn gateway_writes(api: &ApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| r.user.as_deref() == Some(GATEWAY_USER) && r.method != "GET")
        .map(Logged::line)
        .collect()
}

/// A list of strings in a status.
fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// The `Contact` header and the SDP `c=` line of the 200 to the INVITE that sipp received.
fn answer_addresses(carrier: &support::sipp::SippResult) -> (String, String) {
    let ok = carrier
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.text.contains("INVITE"))
        .unwrap_or_else(|| panic!("no 200 to the INVITE\n{}", carrier.report()));
    let line = |prefix: &str| {
        ok.text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(prefix))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {prefix} line in\n{}", ok.text))
    };
    (line("contact:"), line("c="))
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[test]
fn the_leader_applies_the_fleet_writes_trunk_status_credentials_and_the_bundle_and_stops_on_sigterm()
 {
    let mut cluster = Cluster::new();
    let api = &cluster.api;
    api.put(SECRETS, basic_auth("acme-creds", ACME_USER, ACME_PASSWORD));
    api.put(TRUNKS, inbound_trunk("acme-in", ACME_NUMBER, 5070, Some("acme-creds")));
    api.put(TRUNKS, inbound_trunk("beta-in", BETA_NUMBER, 5070, None));
    // Left by an earlier run: this fleet's DaemonSet (it runs as a Deployment now) and an old
    // Service are orphans; another fleet's DaemonSet is not ours.
    api.put(DAEMONSETS, fleet_object("DaemonSet", "edge-gateway", FLEET));
    api.put(SERVICES, fleet_object("Service", "edge-old", FLEET));
    api.put(DAEMONSETS, fleet_object("DaemonSet", "other-gateway", "other"));
    // What a 0.1 operator made cluster-wide (the chart installs the gateways' read access now),
    // and a ClusterRole of the same name that is somebody else's.
    let legacy = |kind: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
               "metadata": {"name": "edge-gateway",
                            "labels": {"trunkline.dev/fleet": FLEET,
                                       "app.kubernetes.io/managed-by": "trunkline-operator"}}})
    };
    api.put(CLUSTER_ROLE_BINDINGS, legacy("ClusterRoleBinding"));
    let mut foreign = legacy("ClusterRole");
    foreign["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "someone-else"});
    api.put(CLUSTER_ROLES, foreign);
    let (admin, operator) = cluster.start_operator(OPERATOR_POD);
    let api = &cluster.api;

    // The Lease, held by this replica.
    cluster.wait_for("the Lease held by the operator pod", || {
        api.get(LEASES, FLEET_NAMESPACE, LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"] == OPERATOR_POD)
    });

    // The fleet, applied with server-side apply and labelled as this fleet's.
    let fleet_label = format!("trunkline.dev/fleet={FLEET}");
    let fleet = |resource: &str, namespace: Option<&str>| {
        names(&api.list(resource, namespace, &fleet_label))
    };
    let one = |name: &str| BTreeSet::from([name.to_string()]);
    let expected: [(&str, Option<&str>, BTreeSet<String>); 6] = [
        ("apps/v1/deployments", Some(FLEET_NAMESPACE), one("edge-gateway")),
        (
            "v1/services",
            Some(FLEET_NAMESPACE),
            BTreeSet::from(["edge-carrier".to_string(), "edge-internal".to_string()]),
        ),
        ("v1/serviceaccounts", Some(FLEET_NAMESPACE), one("edge-gateway")),
        ("rbac.authorization.k8s.io/v1/roles", Some(FLEET_NAMESPACE), one("edge-gateway")),
        ("rbac.authorization.k8s.io/v1/rolebindings", Some(FLEET_NAMESPACE), one("edge-gateway")),
        ("policy/v1/poddisruptionbudgets", Some(FLEET_NAMESPACE), one("edge-gateway")),
    ];
    cluster.wait_for("the fleet applied", || {
        expected.iter().all(|(resource, ns, want)| fleet(resource, *ns) == *want)
    });
    cluster.wait_for("the orphans deleted", || {
        api.get(DAEMONSETS, FLEET_NAMESPACE, "edge-gateway").is_none()
            && api.get(SERVICES, FLEET_NAMESPACE, "edge-old").is_none()
    });
    assert!(api.get(DAEMONSETS, FLEET_NAMESPACE, "other-gateway").is_some(), "not this fleet's");
    // Every object of the fleet is owned by the operator's Deployment (helm uninstall deletes
    // it, and the garbage collector the fleet), and none carries Argo CD's tracking label.
    let owner_uid = api.get(DEPLOYMENTS, FLEET_NAMESPACE, OPERATOR_DEPLOYMENT).unwrap()["metadata"]
        ["uid"]
        .clone();
    for (resource, ns, _) in &expected {
        for object in api.list(resource, *ns, &fleet_label) {
            let owners = &object["metadata"]["ownerReferences"];
            assert_eq!(
                owners,
                &json!([{"apiVersion": "apps/v1", "kind": "Deployment",
                         "name": OPERATOR_DEPLOYMENT, "uid": owner_uid}]),
                "{resource} {}",
                object["metadata"]["name"]
            );
            assert!(
                object["metadata"]["labels"].get("app.kubernetes.io/instance").is_none(),
                "{object}"
            );
        }
    }
    // The operator's cluster-wide leftovers went; the foreign ClusterRole of that name stays.
    cluster.wait_for("the legacy ClusterRoleBinding deleted", || {
        api.get(CLUSTER_ROLE_BINDINGS, "", "edge-gateway").is_none()
    });
    assert!(api.get(CLUSTER_ROLES, "", "edge-gateway").is_some(), "not the operator's");
    let deployment = api.get("apps/v1/deployments", FLEET_NAMESPACE, "edge-gateway").unwrap();
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "trunkline-operator"
    );
    cluster.wait_for_request("the Deployment applied by trunkline-operator (forced)", |r| {
        r.path == "/apis/apps/v1/namespaces/trunkline/deployments/edge-gateway"
            && is_apply_by(r, "trunkline-operator")
    });

    // A trunk with a referenced Secret: accepted, its refs resolved, the carrier endpoint.
    let acme = cluster.wait_condition("acme-in", "Accepted", "True", None);
    let generation = acme["metadata"]["generation"].as_i64().unwrap();
    assert_eq!(condition(&acme, "ResolvedRefs").unwrap()["status"], "True", "{acme}");
    for c in acme["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], generation, "{c}");
    }
    assert_eq!(acme["status"]["endpoint"], "sip:127.0.0.1:5060", "{acme}");
    cluster.wait_for_request("the status applied on /status", |r| {
        r.path == "/apis/trunkline.dev/v1alpha1/namespaces/voice/inboundtrunks/acme-in/status"
            && is_apply_by(r, "trunkline-operator/edge")
    });

    // A trunk without secretRef: a generated basic-auth Secret owned by it, named in its status.
    let generated = "beta-in-trunkline-credentials";
    cluster.wait_for("the generated Secret", || api.get(SECRETS, VOICE, generated).is_some());
    let secret = api.get(SECRETS, VOICE, generated).unwrap();
    let beta = cluster.trunk("beta-in");
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"], &owner["controller"]),
        (&json!("InboundTrunk"), &json!("beta-in"), &beta["metadata"]["uid"], &json!(true)),
        "{secret}"
    );
    let (username, password) =
        (text(&secret["data"]["username"]), text(&secret["data"]["password"]));
    assert!(!username.is_empty() && password.len() >= 24, "random credentials were generated");
    cluster.wait_for_request("the generated Secret created with a POST", |r| {
        r.method == "POST" && r.path == "/api/v1/namespaces/voice/secrets" && r.status == 201
    });
    let beta = cluster.wait_condition("beta-in", "Accepted", "True", None);
    cluster.wait_for("beta-in status.credentialsSecret", || {
        cluster.trunk("beta-in")["status"]["credentialsSecret"] == generated
    });
    assert_eq!(beta["status"]["endpoint"], "sip:127.0.0.1:5060");

    // A younger trunk claiming acme's number: refused, acme keeps it.
    api.put(SECRETS, basic_auth("copycat-creds", "copycat", "copycat-password"));
    api.put(TRUNKS, inbound_trunk("copycat-in", ACME_NUMBER, 5070, Some("copycat-creds")));
    let copycat = cluster.wait_condition("copycat-in", "Accepted", "False", Some("NumberConflict"));
    assert_eq!(copycat["status"]["numbers"], json!({"accepted": 0, "conflicting": 1}));
    assert_eq!(condition(&cluster.trunk("acme-in"), "Accepted").unwrap()["status"], "True");

    // The bundle: the served trunks' credentials, the nonce key and the fleet's membership
    // (tests/fleet_limits.rs), not the refused trunk's credentials.
    let served_keys =
        ["fleet-members", "nonce-key", "voice.acme-creds", "voice.beta-in-trunkline-credentials"];
    cluster.wait_for("the bundle with both served trunks' credentials", || {
        api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).is_some_and(|b| {
            let keys: BTreeSet<&str> =
                b["data"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
            keys == BTreeSet::from(served_keys)
        })
    });
    // The bundle holds every credential the gateways use: it goes with the operator too.
    let bundle = api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).unwrap();
    assert_eq!(bundle["metadata"]["ownerReferences"][0]["uid"], owner_uid, "{bundle}");
    let bundle = api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).unwrap();
    assert_eq!(decode(&bundle["data"]["nonce-key"]).len(), 32);
    assert_eq!(
        bundle_entry(api, "voice.acme-creds"),
        json!({"username": ACME_USER, "password": ACME_PASSWORD})
    );
    assert_eq!(
        bundle_entry(api, "voice.beta-in-trunkline-credentials"),
        json!({"username": username, "password": password})
    );

    // Deleting the generated Secret rotates the credentials: a new Secret, the bundle follows.
    api.delete(SECRETS, VOICE, generated);
    cluster.wait_for("new generated credentials", || {
        api.get(SECRETS, VOICE, generated).is_some_and(|s| text(&s["data"]["password"]) != password)
    });
    let rotated = text(&api.get(SECRETS, VOICE, generated).unwrap()["data"]["password"]);
    cluster.wait_for("the bundle with the new credentials", || {
        bundle_entry(api, "voice.beta-in-trunkline-credentials")["password"] == rotated.as_str()
    });

    // Events on the trunks (published after the status they tell of): the credentials
    // generated, the conflict (a warning).
    let event = |trunk: &str, reason: &str| {
        api.list(EVENTS, Some(VOICE), "")
            .into_iter()
            .find(|e| e["regarding"]["name"] == trunk && e["reason"] == reason)
    };
    cluster.wait_for("the CredentialsGenerated and NumberConflict events", || {
        event("beta-in", "CredentialsGenerated").is_some()
            && event("copycat-in", "NumberConflict").is_some()
    });
    let conflict = event("copycat-in", "NumberConflict").unwrap();
    assert_eq!(conflict["type"], "Warning", "{conflict}");

    // Once every watch body has ended (the fake closes them when idle) and been opened again,
    // a spec change still reaches the operator: the new generation is observed.
    let trunk_watch =
        |r: &Logged| r.is_watch() && r.path == "/apis/trunkline.dev/v1alpha1/inboundtrunks";
    cluster.wait_for("the trunk watch opened again after its body ended", || {
        api.requests().iter().filter(|r| trunk_watch(r)).count() >= 2
    });
    api.update(TRUNKS, VOICE, "acme-in", |t| {
        t["spec"]["numbers"] = json!([
            {"number": ACME_NUMBER, "agent": "support"},
            {"number": "+14155550199", "agent": "support"},
        ]);
    });
    cluster.wait_for("acme-in observed at generation 2", || {
        let acme = cluster.trunk("acme-in");
        acme["metadata"]["generation"] == 2
            && condition(&acme, "Accepted")
                .is_some_and(|c| c["observedGeneration"] == 2 && c["status"] == "True")
    });

    // Deleting the older trunk frees its number: the younger one is accepted, and the bundle
    // trades the deleted trunk's credentials for its own.
    api.delete(TRUNKS, VOICE, "acme-in");
    cluster.wait_condition("copycat-in", "Accepted", "True", None);
    cluster.wait_for("the bundle with copycat's credentials instead of acme's", || {
        bundle_entry(api, "voice.copycat-creds")["username"] == "copycat"
            && bundle_entry(api, "voice.acme-creds").is_null()
    });

    // The operator's metrics: leading, reconciling, the fleet applied.
    let page = metrics(admin);
    assert_eq!(sample(&page, "trunkline_operator_leader"), Some(1.0), "{page}");
    let ok =
        sample(&page, r#"trunkline_operator_reconciles_total{kind="InboundTrunk",result="ok"}"#);
    assert!(ok.is_some_and(|n| n >= 3.0), "{page}");
    // Each reconcile's latency is observed: as many observations as reconciles of the kind.
    let timed = sample(&page, r#"trunkline_operator_reconcile_seconds_count{kind="InboundTrunk"}"#);
    let all: f64 = page
        .lines()
        .filter(|l| l.starts_with(r#"trunkline_operator_reconciles_total{kind="InboundTrunk","#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(timed.is_some_and(|n| n >= 3.0 && n == all), "{timed:?} of {all}: {page}");
    assert!(sample(&page, r#"trunkline_operator_fleet_applies_total{result="ok"}"#) >= Some(1.0));
    assert_eq!(sample(&page, "trunkline_operator_generated_secrets_total"), Some(2.0), "{page}");
    assert!(matches!(net::http_get(admin, "/readyz"), Some((200, _))));

    // Every request the operator made was answered; only lookups of what did not exist yet 404.
    let refused = refused_requests(&cluster.api);
    assert!(
        refused.is_empty(),
        "requests the fake refused:
{}",
        refused.join(
            "
"
        )
    );
    let operator = &mut cluster.processes[operator];
    assert_eq!(operator.problems(), Vec::<String>::new(), "warnings in the operator's log");

    // SIGTERM: exit 0 within a few seconds, the Lease given up.
    operator.sigterm();
    let status = operator.wait_exit(Duration::from_secs(5)).expect("exit within 5 s of SIGTERM");
    assert!(status.success(), "{status}");
    let lease = cluster.api.get(LEASES, FLEET_NAMESPACE, LEASE).unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "the Lease is released on exit: {lease}");
}

#[test]
fn two_gateways_report_their_config_and_address_and_the_trunks_list_both() {
    // Both gateways listen on the same ports, each on its own pod IP: the operator probes
    // <podIP>:<adminPort>, and the trunks' endpoints name <address>:<sipPort>.
    let (sip_port, admin_port) = (free_port(), free_port());
    let mut cluster = Cluster::with_settings(&format!(
        "name: {FLEET}\nnamespace: {FLEET_NAMESPACE}\nsipPort: {sip_port}\nadminPort: {admin_port}\n"
    ));
    let (acme_agent, beta_agent) = (free_port(), free_port());
    let api = &cluster.api;
    api.put(SECRETS, basic_auth("acme-creds", ACME_USER, ACME_PASSWORD));
    api.put(TRUNKS, inbound_trunk("acme-in", ACME_NUMBER, acme_agent, Some("acme-creds")));
    api.put(TRUNKS, inbound_trunk("beta-in", BETA_NUMBER, beta_agent, None));
    api.put(OUTBOUND, outbound_trunk("carrier-out"));
    let (operator_admin, _) = cluster.start_operator(OPERATOR_POD);

    // No gateway pod: accepted, not programmed.
    cluster.wait_condition("acme-in", "Accepted", "True", None);
    cluster.wait_condition("acme-in", "Programmed", "False", Some("NoGateways"));

    // A ready gateway pod that does not answer the probe (nothing runs there yet): no report,
    // so its config is unknown: still not programmed.
    cluster.api.put(PODS, ready_gateway_pod(GATEWAY_A, IP_A));
    let pending = cluster.wait_condition("acme-in", "Programmed", "False", Some("Pending"));
    assert_eq!(condition(&pending, "Accepted").unwrap()["status"], "True");
    cluster.wait_for("the bundle", || {
        cluster.api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).is_some_and(|b| {
            b["data"].get("voice.beta-in-trunkline-credentials").is_some()
                && b["data"].get("voice.acme-creds").is_some()
        })
    });

    // The real gateway as that pod: ready from the bundle, its config hash in its report.
    let (gateway_a, admin_a) = cluster.start_gateway(GATEWAY_A, IP_A, sip_port, admin_port);
    cluster.wait_for("gateway A ready", || {
        matches!(net::http_get(admin_a, "/readyz"), Some((200, _)))
    });
    let (code, body) = net::http_get(admin_a, "/v1/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["advertisedAddress"], IP_A, "{report}");
    let hash = net::http_get(admin_a, "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix("trunkline_config_info{hash=\"")?.split_once('"'))
                .map(|(hash, _)| hash.to_string())
        })
        .expect("trunkline_config_info on the gateway's /metrics");
    assert_eq!(report["configHash"], hash.as_str());

    // The operator probed it and compiled the same config: both trunks programmed, the
    // gateway's address in their status.
    let acme = cluster.wait_condition("acme-in", "Programmed", "True", None);
    let beta = cluster.wait_condition("beta-in", "Programmed", "True", None);
    let endpoint_a = format!("sip:{IP_A}:{sip_port}");
    let endpoint_b = format!("sip:{IP_B}:{sip_port}");
    for trunk in [&acme, &beta] {
        let generation = &trunk["metadata"]["generation"];
        assert_eq!(condition(trunk, "Programmed").unwrap()["observedGeneration"], *generation);
        assert_eq!(trunk["status"]["endpoint"], endpoint_a.as_str(), "{trunk}");
        assert_eq!(strings(&trunk["status"]["endpoints"]), [endpoint_a.as_str()]);
        assert_eq!(trunk["status"]["fleets"][0]["name"], FLEET, "{trunk}");
    }
    assert!(
        sample(&metrics(operator_admin), "trunkline_operator_gateway_probes_total{result=\"ok\"}")
            .is_some_and(|n| n >= 1.0)
    );

    // A second gateway pod on another node: both addresses in the status.
    cluster.api.put(PODS, ready_gateway_pod(GATEWAY_B, IP_B));
    let (gateway_b, admin_b) = cluster.start_gateway(GATEWAY_B, IP_B, sip_port, admin_port);
    cluster.wait_for("gateway B ready", || {
        matches!(net::http_get(admin_b, "/readyz"), Some((200, _)))
    });
    let both_endpoints = vec![endpoint_a.clone(), endpoint_b.clone()];
    cluster.wait_for("both gateways in the InboundTrunks' endpoints, programmed", || {
        ["acme-in", "beta-in"].iter().all(|name| {
            let trunk = cluster.trunk(name);
            strings(&trunk["status"]["endpoints"]) == both_endpoints
                && condition(&trunk, "Programmed").is_some_and(|c| c["status"] == "True")
        })
    });
    cluster.wait_for("both gateways in the OutboundTrunk's sourceAddresses", || {
        let out = cluster.api.get(OUTBOUND, VOICE, "carrier-out").unwrap_or(Value::Null);
        strings(&out["status"]["sourceAddresses"]) == [IP_A, IP_B]
    });

    // A call through each gateway, each with the credentials the bundle delivered (the
    // referenced Secret's, the generated ones), each answered with that gateway's own address.
    let secret = cluster.api.get(SECRETS, VOICE, "beta-in-trunkline-credentials").unwrap();
    let (beta_user, beta_password) =
        (text(&secret["data"]["username"]), text(&secret["data"]["password"]));
    let calls = [
        (
            gateway_a,
            IP_A,
            ACME_NUMBER,
            acme_agent,
            ACME_USER.to_string(),
            ACME_PASSWORD.to_string(),
        ),
        (gateway_b, IP_B, BETA_NUMBER, beta_agent, beta_user, beta_password),
    ];
    for (gateway, ip, number, agent_port, user, password) in &calls {
        let agent = uas("agent_answer.xml", *agent_port, &[]);
        let auth_uri = format!("{number}@{gateway}");
        let args =
            ["-s", number, "-au", user, "-ap", password, "-auth_uri", &auth_uri, "-d", "200"];
        let carrier = uac("carrier_call_digest.xml", *gateway, &args);
        let agent = agent.wait();
        carrier.assert_success();
        agent.assert_success();
        let (contact, c_line) = answer_addresses(&carrier);
        assert!(contact.contains(&format!("@{ip}:{sip_port}")), "gateway {ip}: {contact}");
        assert_eq!(c_line.trim(), format!("c=IN IP4 {ip}"), "gateway {ip}");
    }

    // Gateway B's pod goes away: its address leaves the status.
    cluster.api.delete(PODS, FLEET_NAMESPACE, GATEWAY_B);
    cluster.wait_for("gateway B's address gone from the status", || {
        let out = cluster.api.get(OUTBOUND, VOICE, "carrier-out").unwrap_or(Value::Null);
        strings(&cluster.trunk("acme-in")["status"]["endpoints"]) == [endpoint_a.as_str()]
            && strings(&out["status"]["sourceAddresses"]) == [IP_A]
    });

    assert_eq!(gateway_writes(&cluster.api), Vec::<String>::new(), "the gateways wrote");
    assert!(
        cluster.api.requests().iter().any(|r| r.user.as_deref() == Some(GATEWAY_USER)),
        "the gateways' requests are told apart"
    );
    let refused = refused_requests(&cluster.api);
    assert!(refused.is_empty(), "requests the fake refused:\n{}", refused.join("\n"));

    // Every process stops cleanly, with nothing to warn about.
    cluster.assert_quiet();
    for process in cluster.processes.iter_mut().rev() {
        process.sigterm();
        let status = process.wait_exit(Duration::from_secs(5)).expect("exit within 5 s of SIGTERM");
        assert!(status.success(), "{}: {status}", process.name);
    }
}

#[test]
fn two_fleets_share_a_trunk_with_an_entry_each_and_stable_conditions() {
    let mut cluster = Cluster::new();
    for region in ["us", "eu"] {
        let settings = format!(
            "name: {region}\nnamespace: trunkline-{region}\nregion: {region}\npublicAddress: 127.0.0.1\nreplicas: 1\n"
        );
        std::fs::write(cluster.dir.join(&format!("{region}.yaml")), settings).unwrap();
    }
    let api = &cluster.api;
    api.put(TRUNKS, inbound_trunk("shared-in", ACME_NUMBER, 5070, None));
    let mut us_only = inbound_trunk("us-in", BETA_NUMBER, 5070, None);
    us_only["spec"]["regions"] = json!(["us"]);
    api.put(TRUNKS, us_only);
    cluster.start_operator_with("operator-us", "us.yaml", "us-operator");
    cluster.start_operator_with("operator-eu", "eu.yaml", "eu-operator");

    let fleet_names = |trunk: &Value| -> BTreeSet<String> {
        trunk["status"]["fleets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str().map(str::to_string))
            .collect()
    };
    cluster.wait_for("both fleets' entries on both trunks", || {
        let both: BTreeSet<String> = ["eu".to_string(), "us".to_string()].into();
        ["shared-in", "us-in"].iter().all(|n| fleet_names(&cluster.trunk(n)) == both)
    });

    // The status settles: no status write for a while, the resourceVersion stays.
    let status_writes = |api: &ApiServer| {
        api.requests().iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/status")).count()
    };
    let mut last = (
        status_writes(&cluster.api),
        cluster.trunk("shared-in")["metadata"]["resourceVersion"].clone(),
    );
    let mut accepted_seen = BTreeSet::new();
    let settled = eventually(WITHIN, &mut || {
        std::thread::sleep(Duration::from_secs(3));
        let now = (
            status_writes(&cluster.api),
            cluster.trunk("shared-in")["metadata"]["resourceVersion"].clone(),
        );
        let same = now == last;
        last = now;
        same
    });
    assert!(settled, "status writes go on:\n{}", cluster.api.request_log());
    // And stay settled while watched for a few more seconds.
    let before = last.clone();
    for _ in 0..20 {
        let shared = cluster.trunk("shared-in");
        accepted_seen.insert(condition(&shared, "Accepted").unwrap()["status"].to_string());
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = (
        status_writes(&cluster.api),
        cluster.trunk("shared-in")["metadata"]["resourceVersion"].clone(),
    );
    assert_eq!(before, after, "status written again without a change");
    assert_eq!(accepted_seen.into_iter().collect::<Vec<_>>(), ["\"True\""], "Accepted never flaps");
    for r in cluster.api.requests().iter().filter(|r| r.path.ends_with("/shared-in/status")) {
        let body = r.body.clone().unwrap_or(Value::Null);
        let accepted = condition(&body, "Accepted").map(|c| c["status"].clone());
        assert_eq!(accepted, Some(json!("True")), "every write says Accepted=True: {body}");
    }

    // Both managers wrote the shared trunk's status, each its own entry.
    for fleet in ["us", "eu"] {
        let manager = format!("trunkline-operator/{fleet}");
        assert!(
            cluster.api.requests().iter().any(|r| {
                r.path.ends_with("/inboundtrunks/shared-in/status") && is_apply_by(r, &manager)
            }),
            "no status apply by {manager}"
        );
    }
    let shared = cluster.trunk("shared-in");
    let entry = |trunk: &Value, fleet: &str| -> Value {
        trunk["status"]["fleets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == fleet)
            .cloned()
            .unwrap()
    };
    for fleet in ["us", "eu"] {
        let e = entry(&shared, fleet);
        assert_eq!(e["region"], fleet, "{e}");
        assert_eq!(e["conditions"][0]["reason"], "NoGateways", "{e}");
    }
    let programmed = condition(&shared, "Programmed").unwrap();
    assert_eq!(programmed["reason"], "NoGateways");
    assert_eq!(
        programmed["message"],
        "eu: this fleet has no gateway pod; us: this fleet has no gateway pod"
    );

    // The us-only trunk: eu does not serve it; the aggregate is us's.
    let us_in = cluster.trunk("us-in");
    let eu_entry = entry(&us_in, "eu");
    assert_eq!(eu_entry["conditions"][0]["reason"], "NotServedHere", "{eu_entry}");
    assert!(eu_entry.get("endpoints").is_none(), "{eu_entry}");
    let programmed = condition(&us_in, "Programmed").unwrap();
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("False"), Some("NoGateways"))
    );
    assert_eq!(strings(&us_in["status"]["endpoints"]), ["sip:127.0.0.1:5060"]);
    assert_eq!(condition(&us_in, "Accepted").unwrap()["status"], "True");

    cluster.assert_quiet();
}

#[test]
fn a_standby_replica_stays_idle_and_takes_over_when_the_leader_stops() {
    let mut cluster = Cluster::new();
    cluster.api.put(SECRETS, basic_auth("acme-creds", ACME_USER, ACME_PASSWORD));
    cluster.api.put(TRUNKS, inbound_trunk("acme-in", ACME_NUMBER, 5070, Some("acme-creds")));
    let (_, first) = cluster.start_operator(OPERATOR_POD);
    cluster.wait_condition("acme-in", "Accepted", "True", None);
    let nonce_key =
        cluster.api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).unwrap()["data"]["nonce-key"].clone();

    // A second replica: ready (it reached the API server), but standing by.
    let standby = "trunkline-operator-1";
    let (admin, second) = cluster.start_operator(standby);
    cluster.wait_for("the standby ready", || {
        matches!(net::http_get(admin, "/readyz"), Some((200, _)))
    });
    std::thread::sleep(Duration::from_secs(1));
    let page = metrics(admin);
    assert_eq!(sample(&page, "trunkline_operator_leader"), Some(0.0), "{page}");
    assert_eq!(sample(&page, "trunkline_operator_compiles_total"), Some(0.0), "{page}");
    assert!(!page.contains("trunkline_operator_reconciles_total{"), "{page}");
    let lease = cluster.api.get(LEASES, FLEET_NAMESPACE, LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], OPERATOR_POD, "{lease}");

    // The leader stops and gives the Lease up; the standby takes it (within the lease
    // duration, 6 s) and reconciles: a spec change is observed, the nonce key is kept.
    let leader = &mut cluster.processes[first];
    leader.sigterm();
    let status = leader.wait_exit(Duration::from_secs(5)).expect("exit within 5 s of SIGTERM");
    assert!(status.success(), "{status}");
    cluster.wait_for("the Lease held by the former standby", || {
        cluster
            .api
            .get(LEASES, FLEET_NAMESPACE, LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"] == standby)
    });
    cluster.wait_for("the new leader's gauge", || {
        sample(&metrics(admin), "trunkline_operator_leader") == Some(1.0)
    });
    cluster.api.update(TRUNKS, VOICE, "acme-in", |t| {
        t["spec"]["numbers"][0]["agent"] = json!("sales");
    });
    cluster.wait_for("acme-in observed at generation 2 by the new leader", || {
        condition(&cluster.trunk("acme-in"), "Accepted")
            .is_some_and(|c| c["observedGeneration"] == 2 && c["status"] == "True")
    });
    let bundle = cluster.api.get(SECRETS, FLEET_NAMESPACE, BUNDLE).unwrap();
    assert_eq!(bundle["data"]["nonce-key"], nonce_key, "the gateways' nonces stay valid");
    let new_leader = &cluster.processes[second];
    assert_eq!(new_leader.problems(), Vec::<String>::new(), "warnings in the new leader's log");
}

/// The operator does not watch its own bundle Secret (its Secret watch selects
/// `type=kubernetes.io/basic-auth`; the bundle is `Opaque`): it reads it every `BUNDLE_CHECK`
/// (10 s) and writes it again when it was deleted or edited, or a new gateway pod would never
/// become ready.
#[test]
fn a_deleted_gateway_credentials_secret_is_written_again() {
    let mut cluster = Cluster::new();
    cluster.api.put(SECRETS, basic_auth("acme-creds", ACME_USER, ACME_PASSWORD));
    cluster.api.put(TRUNKS, inbound_trunk("acme-in", ACME_NUMBER, 5070, Some("acme-creds")));
    cluster.start_operator(OPERATOR_POD);
    cluster.wait_for("the bundle", || {
        bundle_entry(&cluster.api, "voice.acme-creds")["username"] == ACME_USER
    });
    cluster.api.delete(SECRETS, FLEET_NAMESPACE, BUNDLE);
    cluster.wait_for("the bundle written again", || {
        bundle_entry(&cluster.api, "voice.acme-creds")["username"] == ACME_USER
    });
}

#[test]
fn renaming_the_fleet_deletes_the_old_one_and_leaves_another_operators_alone() {
    let mut cluster = Cluster::new();
    // Another release's fleet in the same namespace, owned by its own operator.
    let mut other = fleet_object("Service", "other-carrier", "other");
    other["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment",
                                                   "name": "other-operator", "uid": "other-uid"}]);
    cluster.api.put(SERVICES, other);
    let (_, first) = cluster.start_operator(OPERATOR_POD);
    let old = [
        (DEPLOYMENTS, "edge-gateway"),
        (SERVICES, "edge-carrier"),
        (SERVICES, "edge-internal"),
        ("v1/serviceaccounts", "edge-gateway"),
        ("rbac.authorization.k8s.io/v1/roles", "edge-gateway"),
        ("policy/v1/poddisruptionbudgets", "edge-gateway"),
    ];
    cluster.wait_for("the fleet edge applied", || {
        old.iter()
            .all(|(resource, name)| cluster.api.get(resource, FLEET_NAMESPACE, name).is_some())
    });
    cluster.processes[first].sigterm();
    let status = cluster.processes[first].wait_exit(Duration::from_secs(5)).expect("it stops");
    assert!(status.success(), "{status}");

    // The same release, its fleet renamed (gateway.name in the chart).
    std::fs::write(
        cluster.dir.join("operator.yaml"),
        settings().replace("name: edge", "name: sbc"),
    )
    .unwrap();
    cluster.start_operator_with("trunkline-operator-1", "operator.yaml", "sbc-operator");
    let api = &cluster.api;
    cluster.wait_for("the fleet sbc applied and every object of edge deleted", || {
        api.get(DEPLOYMENTS, FLEET_NAMESPACE, "sbc-gateway").is_some()
            && api.get(SERVICES, FLEET_NAMESPACE, "sbc-carrier").is_some()
            && old.iter().all(|(resource, name)| api.get(resource, FLEET_NAMESPACE, name).is_none())
    });
    assert!(api.get(SERVICES, FLEET_NAMESPACE, "other-carrier").is_some(), "another operator's");
    cluster.assert_quiet();
}

/// The fake itself, through kube's own client: what the scenarios above rely on.
#[test]
fn the_fake_api_server_answers_kube_clients_as_an_api_server_would() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
    use kube::core::WatchEvent;

    let fake = ApiServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = kube::Config::new(format!("http://{}", fake.addr()).parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), VOICE);
        let secret = |name: &str, type_: &str, fleet: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"trunkline.dev/fleet": fleet}},
                "type": type_,
            }))
            .unwrap()
        };

        // Create: the server's metadata; a second create: AlreadyExists.
        let pp = PostParams::default();
        let a = secrets.create(&pp, &secret("a", "kubernetes.io/basic-auth", FLEET)).await.unwrap();
        assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
        assert_eq!(a.metadata.generation, Some(1));
        let again = secrets.create(&pp, &secret("a", "Opaque", FLEET)).await.unwrap_err();
        assert!(matches!(again, kube::Error::Api(s) if s.is_already_exists()));
        assert!(secrets.get_opt("absent").await.unwrap().is_none(), "404 is NotFound");
        secrets.create(&pp, &secret("b", "Opaque", FLEET)).await.unwrap();
        secrets.create(&pp, &secret("c", "kubernetes.io/basic-auth", "other")).await.unwrap();

        // Selectors.
        let listed = |params: ListParams| {
            let secrets = secrets.clone();
            async move {
                let list = secrets.list(&params).await.unwrap();
                list.items.iter().filter_map(|s| s.metadata.name.clone()).collect::<Vec<_>>()
            }
        };
        let by_type = ListParams::default().fields("type=kubernetes.io/basic-auth");
        assert_eq!(listed(by_type).await, ["a", "c"]);
        assert_eq!(
            listed(ListParams::default().labels("trunkline.dev/fleet=edge")).await,
            ["a", "b"]
        );
        let by_name = ListParams::default().fields("metadata.name=b");
        assert_eq!(listed(by_name).await, ["b"]);
        let other = ListParams::default().labels("trunkline.dev/fleet notin (edge)");
        assert_eq!(listed(other).await, ["c"]);

        // Server-side apply creates; on /status it merges conditions by type, removes what the
        // same manager applied before and leaves out now, keeps another manager's; a merge
        // patch removes what it nulls; a spec change bumps the generation.
        let pods: Api<Pod> = Api::namespaced(client.clone(), FLEET_NAMESPACE);
        let ssa = PatchParams::apply("test").force();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "p", "annotations": {"x": "1"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let created = pods.patch("p", &ssa, &Patch::Apply(&pod)).await.unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        let status = |conditions: Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                                                "status": {"conditions": conditions}})
        };
        let theirs = json!([{"type": "Theirs", "status": "True"}]);
        let other = PatchParams::apply("other").force();
        pods.patch_status("p", &other, &Patch::Apply(status(theirs))).await.unwrap();
        let ready =
            json!([{"type": "Ready", "status": "False"}, {"type": "Dropped", "status": "True"}]);
        pods.patch_status("p", &ssa, &Patch::Apply(status(ready))).await.unwrap();
        let flipped = json!([{"type": "Ready", "status": "True"}]);
        let p = pods.patch_status("p", &ssa, &Patch::Apply(status(flipped))).await.unwrap();
        let conditions: Vec<(String, String)> = p
            .status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        assert_eq!(conditions, [("Theirs".into(), "True".into()), ("Ready".into(), "True".into())]);
        assert_eq!(p.metadata.generation, Some(1), "status is not the spec");
        let merge = json!({"metadata": {"annotations": {"x": null, "y": "2"}}});
        let p = pods.patch("p", &PatchParams::default(), &Patch::Merge(&merge)).await.unwrap();
        assert_eq!(
            p.metadata.annotations.unwrap().into_iter().collect::<Vec<_>>(),
            [("y".to_string(), "2".to_string())]
        );
        let image = json!({"spec": {"containers": [{"name": "c", "image": "j"}]}});
        let p = pods.patch("p", &PatchParams::default(), &Patch::Merge(&image)).await.unwrap();
        assert_eq!(p.metadata.generation, Some(2));
        assert!(p.status.is_some(), "a write to the object keeps its status");

        // A watch from a version: the events after it, then the body ends when idle.
        let version = secrets.list(&ListParams::default()).await.unwrap().metadata.resource_version;
        let version = version.unwrap();
        secrets.delete("b", &DeleteParams::default()).await.unwrap();
        let gone = secrets.delete("b", &DeleteParams::default()).await.unwrap_err();
        assert!(matches!(gone, kube::Error::Api(s) if s.code == 404));
        let stream = secrets.watch(&WatchParams::default(), &version).await.unwrap();
        let events = tokio::time::timeout(WATCH_IDLE * 3, stream.collect::<Vec<_>>())
            .await
            .expect("the watch body ends when idle");
        let seen: Vec<String> = events
            .into_iter()
            .map(|e| match e.unwrap() {
                WatchEvent::Deleted(s) => format!("DELETED {}", s.metadata.name.unwrap()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(seen, ["DELETED b"]);

        // Nodes: cluster-scoped, GET by name and LIST (node address discovery reads them).
        fake.put(
            "v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                   "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.7"}]}}),
        );
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let node = nodes.get("node-a").await.unwrap();
        let addresses = node.status.unwrap().addresses.unwrap();
        assert_eq!(addresses[0].address, "203.0.113.7");
        let listed = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        assert!(nodes.get_opt("node-b").await.unwrap().is_none());

        // status.fleets is a list map keyed by name: each manager applies its own entry, the
        // other's stays; inside an entry, conditions merge by type, and what a manager stops
        // applying in its own entry goes.
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("trunkline.dev", "v1alpha1", "InboundTrunk"),
            "inboundtrunks",
        );
        let trunks: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), VOICE, &resource);
        fake.put(TRUNKS, inbound_trunk("t", ACME_NUMBER, 5070, None));
        let fleet = |name: &str, reason: &str, endpoints: &[&str]| {
            let mut entry = json!({"name": name, "conditions": [
                {"type": "Programmed", "status": "False", "reason": reason, "message": "m",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
            if !endpoints.is_empty() {
                entry["endpoints"] = json!(endpoints);
            }
            json!({"apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
                   "status": {"fleets": [entry]}})
        };
        let as_us = PatchParams::apply("trunkline-operator/us").force();
        let as_eu = PatchParams::apply("trunkline-operator/eu").force();
        trunks
            .patch_status("t", &as_us, &Patch::Apply(fleet("us", "Pending", &["sip:a"])))
            .await
            .unwrap();
        trunks
            .patch_status("t", &as_eu, &Patch::Apply(fleet("eu", "NotServedHere", &[])))
            .await
            .unwrap();
        trunks
            .patch_status("t", &as_us, &Patch::Apply(fleet("us", "NoGateways", &[])))
            .await
            .unwrap();
        let t = fake.get(TRUNKS, VOICE, "t").unwrap();
        let fleets = t["status"]["fleets"].as_array().unwrap();
        let by_name = |n: &str| fleets.iter().find(|f| f["name"] == n).unwrap().clone();
        assert_eq!(fleets.len(), 2, "{t}");
        assert_eq!(by_name("us")["conditions"][0]["reason"], "NoGateways");
        assert!(by_name("us").get("endpoints").is_none(), "dropped by its manager: {t}");
        assert_eq!(by_name("eu")["conditions"][0]["reason"], "NotServedHere");
    });
}
