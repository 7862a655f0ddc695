//! Reconcile scenarios against the crate's fake API server (`crate::fixtures`, kube's mock
//! service). The stores are filled through the index, as the watchers would; the compile step
//! and the reconciles are called directly; the state below answers every request and records
//! it, and each scenario asserts the exact requests made (method, path, query, body) and nothing
//! more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::context::{Context, Reconciled, Trigger, TriggerQueues};
use super::index::Index;
use super::reconcile::reconcile;
use super::*;
use crate::api::{InboundTrunk, OutboundTrunk, TransferDestination};
use crate::fixtures::{self, Recorded, Responder, json_response, mock_client, status_body};
use crate::observe::admin::GatewayStatus;
use crate::operator::controller::prober::PodReport;
use crate::operator::metrics::OperatorMetrics;

// ---------------------------------------------------------------------------------------------
// The API server behind the mock service.

/// A server-side apply by the operator's field manager, forced.
fn is_forced_apply(r: &Recorded) -> bool {
    r.query.iter().any(|q| q.starts_with("fieldManager=trunkline-operator"))
        && r.query.iter().any(|q| q == "force=true")
}

#[derive(Default)]
struct ServerState {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    resource_version: u64,
    /// Answer the next request to this (method, path) with this HTTP status.
    fail: Option<(String, String, u16)>,
}

impl ServerState {
    fn stamp(&mut self, mut obj: Value) -> Value {
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        obj
    }

    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        if let Some((m, p, code)) = self.fail.take() {
            if m == method && p == path {
                return (code, status_body(code, "InternalError", "injected failure"));
            }
            self.fail = Some((m, p, code));
        }
        match method {
            "GET" => match self.objects.get(path) {
                Some(obj) => (200, obj.clone()),
                None => (404, status_body(404, "NotFound", "not found")),
            },
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap_or("unnamed").to_string();
                let item = format!("{path}/{name}");
                if self.objects.contains_key(&item) {
                    return (409, status_body(409, "AlreadyExists", "already exists"));
                }
                let obj = self.stamp(body.clone());
                self.objects.insert(item, obj.clone());
                (201, obj)
            }
            "PATCH" => {
                if let Some(object_path) = path.strip_suffix("/status") {
                    let Some(mut obj) = self.objects.get(object_path).cloned() else {
                        return (404, status_body(404, "NotFound", "not found"));
                    };
                    obj["status"] = body["status"].clone();
                    let obj = self.stamp(obj);
                    self.objects.insert(object_path.to_string(), obj.clone());
                    (200, obj)
                } else {
                    let obj = self.stamp(body.clone());
                    self.objects.insert(path.to_string(), obj.clone());
                    (200, obj)
                }
            }
            _ => (405, status_body(405, "MethodNotAllowed", method)),
        }
    }
}

/// Whether the object at `object_path` belongs to the collection at `collection` (all namespaces
/// or one), e.g. `/api/v1/secrets` holds `/api/v1/namespaces/voice/secrets/x`.
fn in_collection(collection: &str, object_path: &str) -> bool {
    let Some((parent, _name)) = object_path.rsplit_once('/') else { return false };
    if parent == collection {
        return true;
    }
    // `<prefix>/namespaces/<ns>/<resource>` against `<prefix>/<resource>`.
    let parts: Vec<&str> = parent.rsplitn(4, '/').collect();
    matches!(parts.as_slice(), [resource, _ns, "namespaces", prefix]
        if collection == format!("{prefix}/{resource}"))
}

impl ServerState {
    /// A LIST of a collection, honouring the one field selector the operator uses.
    fn list(&self, collection: &str, query: &[String]) -> Value {
        let basic_auth_only = query.iter().any(|q| q.starts_with("fieldSelector=type"));
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(path, _)| in_collection(collection, path))
            .filter(|(_, obj)| !basic_auth_only || obj["type"] == "kubernetes.io/basic-auth")
            .map(|(_, obj)| obj.clone())
            .collect();
        json!({"metadata": {"resourceVersion": self.resource_version.to_string()}, "items": items})
    }
}

/// Watches waiting for an answer, by collection path: a test answers one with scripted events
/// (the watch then ends and the watcher opens the next one), the others stay open and quiet.
type HeldWatches = Arc<Mutex<Vec<(String, Responder)>>>;

/// Serves the mock service from `state`: LISTs from its objects, WATCHes held in `held`, every
/// other request answered by [`ServerState::answer`] and recorded.
fn serve(handle: fixtures::MockHandle, state: Arc<Mutex<ServerState>>, held: HeldWatches) {
    fixtures::serve(handle, move |request, send| {
        if request.is_watch() {
            held.lock().unwrap().push((request.path.clone(), send));
            return;
        }
        let mut s = state.lock().unwrap();
        let (method, path) = (request.method.as_str(), request.path.as_str());
        let is_collection = path.ends_with('s') && !s.objects.contains_key(path);
        let (code, answer) = if method == "GET"
            && is_collection
            && request.query.iter().any(|q| q.starts_with("limit="))
        {
            (200, s.list(path, &request.query))
        } else {
            let answer = s.answer(method, path, &request.body);
            s.requests.push(request.clone());
            answer
        };
        send.send_response(json_response(code, &answer));
    });
}

// ---------------------------------------------------------------------------------------------
// The harness: a context, its index, the reconcile queues and the server.

const T0: i64 = 1_700_000_000;
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/voice/events";
const BUNDLE: &str = "/api/v1/namespaces/trunkline/secrets/gw-credentials";

fn path_of(kind: &str, name: &str) -> String {
    match kind {
        "Secret" => format!("/api/v1/namespaces/voice/secrets/{name}"),
        "InboundTrunk" => {
            format!("/apis/trunkline.dev/v1alpha1/namespaces/voice/inboundtrunks/{name}")
        }
        "OutboundTrunk" => {
            format!("/apis/trunkline.dev/v1alpha1/namespaces/voice/outboundtrunks/{name}")
        }
        "TransferDestination" => {
            format!("/apis/trunkline.dev/v1alpha1/namespaces/voice/transferdestinations/{name}")
        }
        other => panic!("no path for {other}"),
    }
}

fn time(second: i64) -> String {
    Timestamp::from_second(T0 + second).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

struct Harness {
    ctx: Arc<Context>,
    index: Index,
    queues: TriggerQueues,
    server: Arc<Mutex<ServerState>>,
    seconds: Arc<AtomicI64>,
    metrics: Arc<OperatorMetrics>,
}

fn config() -> ControllerConfig {
    ControllerConfig {
        fleet_name: "main".into(),
        fleet_namespace: "trunkline".into(),
        bundle_secret: "gw-credentials".into(),
        region: None,
        carrier_endpoint: Some("sip:203.0.113.10:5060".into()),
        source_addresses: vec!["198.51.100.7".into()],
        sip_port: 5060,
        admin_port: 9090,
        watch_namespace: None,
        owner_deployment: None,
        address_policy: Default::default(),
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(config())
    }

    fn with_config(config: ControllerConfig) -> Harness {
        let (client, handle) = mock_client();
        let server = Arc::new(Mutex::new(ServerState::default()));
        serve(handle, Arc::clone(&server), HeldWatches::default());
        let seconds = Arc::new(AtomicI64::new(0));
        let clock_seconds = Arc::clone(&seconds);
        let clock: Clock = Arc::new(move || {
            Timestamp::from_second(T0 + clock_seconds.load(Ordering::SeqCst)).unwrap()
        });
        let metrics = Arc::new(OperatorMetrics::new());
        let (ctx, writers, queues) = Context::new(client, config, Arc::clone(&metrics), clock);
        let mut index = Index::new(Arc::clone(&ctx), writers);
        // Every store listed (empty), as after the watchers' first list.
        index.apply_inbound(&Event::Init);
        index.apply_inbound(&Event::InitDone);
        index.apply_outbound(&Event::Init);
        index.apply_outbound(&Event::InitDone);
        index.apply_transfer(&Event::Init);
        index.apply_transfer(&Event::InitDone);
        index.apply_secret(&Event::Init);
        index.apply_secret(&Event::InitDone);
        index.apply_pod(&Event::Init);
        index.apply_pod(&Event::InitDone);
        let mut h = Harness { ctx, index, queues, server, seconds, metrics };
        h.triggered();
        h
    }

    fn at(&self, second: i64) {
        self.seconds.store(second, Ordering::SeqCst);
    }

    /// Puts an object on the server and shows it to the index, as a watch would.
    fn put(&mut self, obj: Value) {
        let kind = obj["kind"].as_str().unwrap().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let obj = self.server.lock().unwrap().stamp(obj);
        self.server.lock().unwrap().objects.insert(path_of(&kind, &name), obj.clone());
        self.show(&kind, obj);
    }

    /// Shows the index the server's current version of an object (the watch catching up).
    fn watch_back(&mut self, kind: &str, name: &str) {
        let obj = self.server.lock().unwrap().objects.get(&path_of(kind, name)).cloned().unwrap();
        self.show(kind, obj);
    }

    fn show(&mut self, kind: &str, obj: Value) {
        match kind {
            "InboundTrunk" => self.index.apply_inbound(&Event::Apply(from(obj))),
            "OutboundTrunk" => self.index.apply_outbound(&Event::Apply(from(obj))),
            "TransferDestination" => self.index.apply_transfer(&Event::Apply(from(obj))),
            "Secret" => self.index.apply_secret(&Event::Apply(from(obj))),
            other => panic!("cannot show {other}"),
        }
    }

    fn delete_inbound(&mut self, name: &str) {
        let path = path_of("InboundTrunk", name);
        let obj = self.server.lock().unwrap().objects.remove(&path).unwrap();
        self.index.apply_inbound(&Event::Delete(from(obj)));
    }

    fn forget_secret_in_store(&mut self, name: &str) {
        let obj = self.server.lock().unwrap().objects.get(&path_of("Secret", name)).cloned();
        self.index.apply_secret(&Event::Delete(from(obj.unwrap())));
    }

    /// A gateway pod, and the report the prober got from it (`hash`, no address).
    fn pod(&mut self, name: &str, ready: bool, hash: &str) {
        self.pod_at(name, ready, hash, None);
    }

    /// A gateway pod, and the report the prober got from it: `hash` and `address`.
    fn pod_at(&mut self, name: &str, ready: bool, hash: &str, address: Option<&str>) {
        let status = GatewayStatus {
            version: "0.1.0".into(),
            ready,
            config_hash: Some(hash.into()),
            advertised_address: address.map(|a| a.parse().unwrap()),
            outbound: BTreeMap::new(),
            registrations: BTreeMap::new(),
        };
        self.ctx.reports.insert(name, PodReport { uid: format!("uid-{name}"), status });
        let pod: Pod = from(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "trunkline", "uid": format!("uid-{name}"),
                         "labels": {"trunkline.dev/fleet": "main", "app.kubernetes.io/component": "gateway"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }));
        self.index.apply_pod(&Event::Apply(pod));
    }

    async fn compile(&self) -> Arc<CompileView> {
        self.ctx.compile_step().await.unwrap()
    }

    async fn reconcile<K: Reconciled>(&self, name: &str) -> Result<Action, ReconcileError> {
        let obj = K::store(&self.ctx.stores)
            .get(&ObjectRef::new(name).within("voice"))
            .unwrap_or_else(|| panic!("{name} is not in the store"));
        reconcile(obj, Arc::clone(&self.ctx)).await
    }

    /// The requests made since the last call.
    fn requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.server.lock().unwrap().requests)
    }

    /// The reconciles queued since the last call: `kind/name`, or `kind/*` for all.
    fn triggered(&mut self) -> BTreeSet<String> {
        fn drain<K: Reconciled>(
            kind: &str,
            rx: &mut futures::channel::mpsc::UnboundedReceiver<Trigger<K>>,
            out: &mut BTreeSet<String>,
        ) {
            while let Ok(t) = rx.try_recv() {
                out.insert(match t {
                    Trigger::One(r) => format!("{kind}/{}", r.name),
                    Trigger::All => format!("{kind}/*"),
                });
            }
        }
        let mut out = BTreeSet::new();
        drain("InboundTrunk", &mut self.queues.inbound, &mut out);
        drain("OutboundTrunk", &mut self.queues.outbound, &mut out);
        drain("TransferDestination", &mut self.queues.transfers, &mut out);
        out
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Objects.

fn inbound(name: &str, created: i64, generation: i64, numbers: &[&str], auth: Value) -> Value {
    let numbers: Vec<Value> =
        numbers.iter().map(|n| json!({"number": n, "agent": "support"})).collect();
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
        "metadata": {"name": name, "namespace": "voice", "uid": format!("uid-{name}"),
                     "generation": generation, "creationTimestamp": time(created)},
        "spec": {"numbers": numbers, "destination": {"uri": "sip:agents.voice.svc:5070"}, "auth": auth},
    })
}

fn basic_auth(name: &str, username: &str, password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": name, "namespace": "voice"},
        "data": {"username": BASE64.encode(username), "password": BASE64.encode(password)},
    })
}

fn by_address() -> Value {
    json!({"allowedAddresses": ["203.0.113.0/24"]})
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

/// The events published: created (POST), or repeated within kube's dedup window (a PATCH of the
/// same event, with a series count).
fn events(requests: &[Recorded]) -> Vec<(String, String, String)> {
    requests
        .iter()
        .filter(|r| {
            r.is("POST", EVENTS)
                || (r.method == "PATCH" && r.path.starts_with(&format!("{EVENTS}/")))
        })
        .map(|r| {
            (
                r.body["type"].as_str().unwrap().to_string(),
                r.body["reason"].as_str().unwrap().to_string(),
                r.body["regarding"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_patches(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/status")).collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test]
async fn a_valid_trunk_becomes_accepted_and_resolved_in_one_status_patch() {
    let mut h = Harness::new();
    h.put(basic_auth("acme-creds", "acme-user", "pw-acme-1"));
    h.put(inbound(
        "acme-in",
        0,
        1,
        &["+14155550100", "+14155550101"],
        json!({"digest": {"secretRef": {"name": "acme-creds"}}}),
    ));
    h.compile().await;
    assert_eq!(h.triggered(), set(&["InboundTrunk/acme-in"]));
    h.requests();

    h.at(10);
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    let patch = &requests[0];
    assert!(patch.is("PATCH", &format!("{}/status", path_of("InboundTrunk", "acme-in"))));
    assert!(is_forced_apply(patch), "{:?}", patch.query);
    assert_eq!(patch.param("fieldManager").as_deref(), Some("trunkline-operator/main"));
    let at = time(10);
    assert_eq!(
        patch.body,
        json!({
            "apiVersion": "trunkline.dev/v1alpha1",
            "kind": "InboundTrunk",
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted",
                     "message": "the spec is valid", "observedGeneration": 1, "lastTransitionTime": at},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                     "message": "every reference resolves", "observedGeneration": 1, "lastTransitionTime": at},
                    {"type": "Programmed", "status": "False", "reason": "NoGateways",
                     "message": "this fleet has no gateway pod", "observedGeneration": 1, "lastTransitionTime": at},
                ],
                "endpoint": "sip:203.0.113.10:5060",
                "endpoints": ["sip:203.0.113.10:5060"],
                "credentialsSecret": "acme-creds",
                "numbers": {"accepted": 2, "conflicting": 0},
                "fleets": [{
                    "name": "main",
                    "conditions": [
                        {"type": "Programmed", "status": "False", "reason": "NoGateways",
                         "message": "this fleet has no gateway pod", "observedGeneration": 1, "lastTransitionTime": at},
                    ],
                    "endpoints": ["sip:203.0.113.10:5060"],
                }],
            },
        })
    );
    assert_eq!(
        events(&requests[1..]),
        [
            ("Normal".into(), "Accepted".into(), "acme-in".into()),
            ("Normal".into(), "ResolvedRefs".into(), "acme-in".into()),
            ("Warning".into(), "NoGateways".into(), "acme-in".into()),
        ]
    );
    assert_eq!(requests[1].body["note"], "Accepted is True: the spec is valid");
    assert_eq!(requests[1].body["reportingController"], "trunkline-operator");
    assert!(h.metrics.render().contains(
        r#"trunkline_operator_objects{condition="Accepted",kind="InboundTrunk",status="True"} 1"#
    ));
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    h.compile().await;
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    assert_eq!(status_patches(&h.requests()).len(), 1);

    // The watch has not brought the written status back yet: still nothing to write.
    h.at(30);
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    assert!(h.requests().is_empty(), "no request at all");

    // The watch brings it back: the status-only change needs no compile, and the reconcile it
    // queues writes nothing.
    h.watch_back("InboundTrunk", "acme-in");
    assert_eq!(h.triggered(), set(&["InboundTrunk/acme-in"]));
    h.at(60);
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    assert!(h.requests().is_empty(), "no request at all");

    // A compile of the same world changes no verdict: nothing queued, no bundle write.
    h.compile().await;
    assert!(h.triggered().is_empty());
    assert!(h.requests().is_empty());
    let metrics = h.metrics.render();
    assert!(metrics.contains(r#"trunkline_operator_status_writes_total{kind="InboundTrunk"} 1"#));
    assert!(
        metrics
            .contains(r#"trunkline_operator_reconciles_total{kind="InboundTrunk",result="ok"} 3"#)
    );
}

#[tokio::test]
async fn a_number_held_by_an_older_trunk_marks_the_newer_one_and_names_the_holder() {
    let mut h = Harness::new();
    h.put(inbound("first", 0, 1, &["+14155550100"], by_address()));
    h.put(inbound("second", 60, 1, &["+14155550100", "+14155550101"], by_address()));
    h.compile().await;
    h.requests();
    h.triggered();

    h.reconcile::<InboundTrunk>("second").await.unwrap();
    let requests = h.requests();
    let patches = status_patches(&requests);
    assert_eq!(patches.len(), 1);
    let status = &patches[0].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NumberConflict");
    assert_eq!(
        accepted["message"],
        "number +14155550100 is held by InboundTrunk voice/first (older)"
    );
    assert_eq!(status["numbers"], json!({"accepted": 1, "conflicting": 1}));
    assert_eq!(condition(status, "ResolvedRefs")["status"], "True");
    assert_eq!(
        condition(status, "Programmed")["reason"],
        "NoGateways",
        "a degraded trunk still serves its other numbers"
    );
    assert!(events(&requests).contains(&(
        "Warning".into(),
        "NumberConflict".into(),
        "second".into()
    )));
    h.watch_back("InboundTrunk", "second");
    h.triggered();

    // The holder goes: the next compile queues the other trunk, which now holds both numbers.
    h.at(120);
    h.delete_inbound("first");
    h.compile().await;
    assert_eq!(h.triggered(), set(&["InboundTrunk/second"]));
    h.requests();
    h.reconcile::<InboundTrunk>("second").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(
        (accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("True"), Some("Accepted"))
    );
    assert_eq!(accepted["lastTransitionTime"], time(120));
    assert_eq!(condition(status, "ResolvedRefs")["lastTransitionTime"], time(0));
    assert_eq!(status["numbers"], json!({"accepted": 2, "conflicting": 0}));
    assert_eq!(events(&requests), [("Normal".into(), "Accepted".into(), "second".into())]);
}

#[tokio::test]
async fn a_missing_secret_gives_resolved_refs_false_and_heals_when_it_appears() {
    let mut h = Harness::new();
    h.put(inbound(
        "acme-in",
        0,
        1,
        &["+14155550100"],
        json!({"digest": {"secretRef": {"name": "acme-creds"}}}),
    ));
    h.compile().await;
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    assert_eq!(condition(status, "Accepted")["status"], "True");
    let resolved = condition(status, "ResolvedRefs");
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("SecretNotFound"))
    );
    assert_eq!(resolved["message"], "Secret acme-creds does not exist in namespace voice");
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["reason"], "SecretNotFound");
    assert_eq!(status.get("credentialsSecret"), None, "a refused trunk names no Secret");
    h.watch_back("InboundTrunk", "acme-in");
    h.triggered();

    // The Secret is created: its watch event asks for a compile, which queues the trunk.
    h.at(120);
    h.put(basic_auth("acme-creds", "acme-user", "pw-acme-2"));
    assert!(h.triggered().is_empty(), "a Secret event queues nothing by itself");
    h.compile().await;
    assert_eq!(h.triggered(), set(&["InboundTrunk/acme-in"]));
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    let resolved = condition(status, "ResolvedRefs");
    assert_eq!(
        (resolved["status"].as_str(), resolved["lastTransitionTime"].as_str()),
        (Some("True"), Some(time(120).as_str()))
    );
    assert_eq!(condition(status, "Accepted")["lastTransitionTime"], time(0), "kept: still True");
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["reason"], "NoGateways");
    assert_eq!(programmed["lastTransitionTime"], time(0), "kept: still False");
    assert_eq!(status["credentialsSecret"], "acme-creds");
    assert_eq!(
        events(&requests),
        [
            ("Normal".into(), "ResolvedRefs".into(), "acme-in".into()),
            ("Warning".into(), "NoGateways".into(), "acme-in".into()),
        ]
    );
    for r in &requests {
        assert!(!r.body.to_string().contains("pw-acme-2"), "no secret data in {r:?}");
    }
}

#[tokio::test]
async fn generated_credentials_are_created_once_and_not_again_while_the_secret_exists() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], json!({"digest": {}})));
    h.compile().await;
    h.requests();

    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let create = &requests[0];
    assert!(create.is("POST", "/api/v1/namespaces/voice/secrets"), "{create:?}");
    assert_eq!(create.param("fieldManager").as_deref(), Some("trunkline-operator"));
    let secret = &create.body;
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(secret["metadata"]["name"], "acme-in-trunkline-credentials");
    assert_eq!(secret["metadata"]["namespace"], "voice");
    assert_eq!(secret["metadata"]["labels"]["app.kubernetes.io/managed-by"], "trunkline-operator");
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{"apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
                "name": "acme-in", "uid": "uid-acme-in", "controller": true}])
    );
    let decode =
        |v: &Value| String::from_utf8(BASE64.decode(v.as_str().unwrap()).unwrap()).unwrap();
    let username = decode(&secret["data"]["username"]);
    let password = decode(&secret["data"]["password"]);
    assert!(username.starts_with("acme-in-"), "{username}");
    assert_eq!(password.len(), 32);
    assert!(requests[1].is("POST", EVENTS));
    assert_eq!(requests[1].body["reason"], "CredentialsGenerated");
    let patches = status_patches(&requests);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].body["status"]["credentialsSecret"], "acme-in-trunkline-credentials");
    for r in &requests[1..] {
        let text = r.body.to_string();
        assert!(!text.contains(&password), "the password leaked into {r:?}");
    }

    // The watch brings the Secret and the status: the next reconcile makes no request at all.
    h.watch_back("Secret", "acme-in-trunkline-credentials");
    h.watch_back("InboundTrunk", "acme-in");
    h.compile().await;
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    assert!(h.requests().is_empty(), "no request at all");

    // Even if the store has not seen it (a watch lagging), an existing Secret is never
    // overwritten: the create is refused with 409 and the credentials stay.
    h.forget_secret_in_store("acme-in-trunkline-credentials");
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(requests[0].is("POST", "/api/v1/namespaces/voice/secrets"));
    let kept = h.server.lock().unwrap().objects
        [&path_of("Secret", "acme-in-trunkline-credentials")]
        .clone();
    assert_eq!(decode(&kept["data"]["password"]), password);
    assert!(h.metrics.render().contains("trunkline_operator_generated_secrets_total 1"));
}

#[tokio::test]
async fn programmed_follows_the_config_hash_of_the_ready_gateway_pods() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    let first = h.compile().await;
    h.pod("gw-0", true, &first.hash);
    h.pod("gw-1", true, &first.hash);
    h.pod("gw-2", false, "whatever");
    assert!(h.triggered().contains("InboundTrunk/*"), "a pod change queues every object");
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let programmed = condition(&status_patches(&requests)[0].body["status"], "Programmed").clone();
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("True"), Some("Programmed"))
    );
    assert_eq!(programmed["message"], "all 2 ready gateway pods run a config with generation 1");
    h.watch_back("InboundTrunk", "acme-in");

    // A new generation: the pods still run the old table.
    h.at(60);
    let mut changed = inbound("acme-in", 0, 2, &["+14155550100", "+14155550102"], by_address());
    changed["status"] =
        h.server.lock().unwrap().objects[&path_of("InboundTrunk", "acme-in")]["status"].clone();
    h.put(changed);
    let second = h.compile().await;
    assert_ne!(second.hash, first.hash);
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    assert_eq!(status["observedGeneration"], 2);
    let programmed = condition(status, "Programmed");
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("False"), Some("Pending"))
    );
    assert_eq!(
        programmed["message"],
        "2 of 2 ready gateway pods still run a config without generation 2"
    );
    assert_eq!(programmed["observedGeneration"], 2);
    assert_eq!(events(&requests), [("Normal".into(), "Pending".into(), "acme-in".into())]);
    h.watch_back("InboundTrunk", "acme-in");

    // One pod reloads: the message moves, no event.
    h.pod("gw-0", true, &second.hash);
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let programmed = condition(&status_patches(&requests)[0].body["status"], "Programmed").clone();
    assert_eq!(
        programmed["message"],
        "1 of 2 ready gateway pods still run a config without generation 2"
    );
    assert!(events(&requests).is_empty());
    h.watch_back("InboundTrunk", "acme-in");

    // The other one too: programmed, with an event.
    h.at(90);
    h.pod("gw-1", true, &second.hash);
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    let requests = h.requests();
    let programmed = condition(&status_patches(&requests)[0].body["status"], "Programmed").clone();
    assert_eq!(
        (programmed["status"].as_str(), programmed["lastTransitionTime"].as_str()),
        (Some("True"), Some(time(90).as_str()))
    );
    assert_eq!(events(&requests), [("Normal".into(), "Programmed".into(), "acme-in".into())]);
}

#[tokio::test]
async fn an_object_of_another_region_is_not_served_here_and_gets_no_endpoint() {
    let mut h = Harness::with_config(ControllerConfig { region: Some("us".into()), ..config() });
    let mut trunk = inbound("eu-in", 0, 1, &["+14155550100"], by_address());
    trunk["spec"]["regions"] = json!(["eu"]);
    h.put(trunk);
    let view = h.compile().await;
    h.pod("gw-0", true, &view.hash);
    h.requests();
    h.reconcile::<InboundTrunk>("eu-in").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    let programmed = condition(status, "Programmed");
    assert_eq!(programmed["reason"], "NotServedHere");
    assert_eq!(
        programmed["message"],
        "its regions [eu] do not include region us of this gateway fleet"
    );
    assert_eq!(status.get("endpoint"), None);
}

/// A ready gateway pod's report: `hash`, and its probe of voice/carrier-out (`reachable`,
/// `detail`).
fn probing_report(name: &str, hash: &str, reachable: Option<bool>, detail: &str) -> PodReport {
    let health = crate::observe::admin::OutboundHealth {
        reachable,
        since: 1_700_000_000,
        detail: detail.into(),
        last_status: None,
    };
    PodReport {
        uid: format!("uid-{name}"),
        status: GatewayStatus {
            version: "0.1.0".into(),
            ready: true,
            config_hash: Some(hash.into()),
            advertised_address: None,
            outbound: BTreeMap::from([("voice/carrier-out".to_string(), health)]),
            registrations: BTreeMap::new(),
        },
    }
}

fn carrier_out() -> Value {
    json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "OutboundTrunk",
        "metadata": {"name": "carrier-out", "namespace": "voice", "uid": "u", "generation": 1,
                     "creationTimestamp": time(0)},
        "spec": {"host": "sip.carrier.example", "callerId": "+14155550100",
                 "healthCheck": {"intervalSeconds": 30}},
    })
}

#[tokio::test]
async fn reachable_comes_from_the_gateways_probes_and_is_written_only_when_it_flips() {
    let mut h = Harness::new();
    h.put(carrier_out());
    let view = h.compile().await;
    h.pod("gw-0", true, &view.hash);
    h.pod("gw-1", true, &view.hash);
    // What the prober does each round: replace the reports, reconcile all when they changed.
    let round = |h: &mut Harness, reports: [PodReport; 2]| {
        let all: BTreeMap<String, PodReport> =
            ["gw-0", "gw-1"].into_iter().map(str::to_string).zip(reports).collect();
        let changed = h.ctx.reports.replace(all);
        let _ = h.ctx.note_fleet();
        (changed, h.triggered())
    };
    let hash = view.hash.clone();
    let report = |name: &str, reachable: bool, detail: &str| {
        probing_report(name, &hash, Some(reachable), detail)
    };

    // The two pods disagree: gw-0 gets answers, gw-1 missed its last 3 probes.
    h.at(10);
    let (changed, triggered) =
        round(&mut h, [report("gw-0", true, "200 OK"), report("gw-1", false, "timeout")]);
    assert!(changed);
    assert!(triggered.contains("OutboundTrunk/*"), "{triggered:?}");
    h.requests();
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let patches = status_patches(&requests);
    assert_eq!(patches.len(), 1);
    assert!(is_forced_apply(patches[0]));
    let status = &patches[0].body["status"];
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "ResolvedRefs", "Programmed", "Reachable"]);
    let reachable = condition(status, "Reachable");
    assert_eq!(
        (reachable["status"].as_str(), reachable["reason"].as_str()),
        (Some("False"), Some("Unreachable"))
    );
    assert_eq!(
        reachable["message"],
        "the carrier missed the last 3 OPTIONS probes from 1 of 2 gateway pods: gw-1 (timeout)"
    );
    assert_eq!(reachable["lastTransitionTime"], time(10));
    assert_eq!(condition(&status["fleets"][0], "Reachable")["status"], "False");
    assert_eq!(status["sourceAddresses"], json!(["198.51.100.7"]));
    let warnings: Vec<_> = events(&requests).into_iter().filter(|e| e.0 == "Warning").collect();
    assert_eq!(warnings, [("Warning".into(), "Unreachable".into(), "carrier-out".into())]);
    h.watch_back("OutboundTrunk", "carrier-out");
    h.triggered();

    // Later probe rounds with the same results: no reconcile, and a reconcile anyway writes
    // nothing (no status churn).
    for second in [40, 70, 100] {
        h.at(second);
        let (changed, triggered) =
            round(&mut h, [report("gw-0", true, "200 OK"), report("gw-1", false, "timeout")]);
        assert!(!changed, "the same reports");
        assert!(triggered.is_empty(), "{triggered:?}");
        h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
        assert!(h.requests().is_empty(), "nothing written at {second}");
    }

    // They swap (gw-1 recovered, gw-0 lost it): still False since 10, no event.
    h.at(130);
    let (changed, _) = round(
        &mut h,
        [report("gw-0", false, "503 Service Unavailable"), report("gw-1", true, "200 OK")],
    );
    assert!(changed);
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let reachable = condition(&status_patches(&requests)[0].body["status"], "Reachable").clone();
    assert_eq!(
        (reachable["status"].as_str(), reachable["lastTransitionTime"].as_str()),
        (Some("False"), Some(time(10).as_str()))
    );
    assert!(reachable["message"].as_str().unwrap().ends_with("gw-0 (503 Service Unavailable)"));
    assert!(events(&requests).is_empty(), "the same status and reason: no event");
    h.watch_back("OutboundTrunk", "carrier-out");
    h.triggered();

    // Both get answers: True from now on, one event.
    h.at(160);
    round(&mut h, [report("gw-0", true, "200 OK"), report("gw-1", true, "200 OK")]);
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let reachable = condition(&status_patches(&requests)[0].body["status"], "Reachable").clone();
    assert_eq!(
        (reachable["status"].as_str(), reachable["lastTransitionTime"].as_str()),
        (Some("True"), Some(time(160).as_str()))
    );
    assert_eq!(
        reachable["message"],
        "the carrier answers OPTIONS from all 2 gateway pods that probe it"
    );
    assert_eq!(events(&requests), [("Normal".into(), "Reachable".into(), "carrier-out".into())]);
}

#[tokio::test]
async fn an_outbound_trunk_without_probes_is_not_probed_and_gets_source_addresses() {
    let mut h = Harness::new();
    let mut trunk = carrier_out();
    trunk["spec"]["healthCheck"] = json!({"enabled": false});
    h.put(trunk);
    let view = h.compile().await;
    h.pod("gw-0", true, &view.hash);
    h.requests();
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    let reachable = condition(status, "Reachable");
    assert_eq!(
        (reachable["status"].as_str(), reachable["reason"].as_str()),
        (Some("Unknown"), Some("NotProbed"))
    );
    assert_eq!(status["sourceAddresses"], json!(["198.51.100.7"]));
    assert!(
        events(&requests).iter().all(|(type_, _, _)| type_ == "Normal"),
        "not probing is no warning: {:?}",
        events(&requests)
    );
}

#[tokio::test]
async fn the_addresses_in_status_follow_the_gateways_reports_and_pods() {
    let mut h = Harness::with_config(ControllerConfig {
        carrier_endpoint: None,
        source_addresses: Vec::new(),
        ..config()
    });
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    h.put(json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "OutboundTrunk",
        "metadata": {"name": "carrier-out", "namespace": "voice", "uid": "u", "generation": 1,
                     "creationTimestamp": time(0)},
        "spec": {"host": "sip.carrier.example", "callerId": "+14155550100"},
    }));
    let view = h.compile().await;
    h.triggered();
    h.pod_at("gw-1", true, &view.hash, Some("198.51.100.22"));
    h.pod_at("gw-0", true, &view.hash, Some("198.51.100.21"));
    h.pod_at("gw-2", false, &view.hash, Some("198.51.100.23"));
    assert_eq!(h.triggered(), set(&["InboundTrunk/*", "OutboundTrunk/*", "TransferDestination/*"]));
    h.requests();
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let patches = status_patches(&requests);
    let inbound = &patches[0].body["status"];
    assert_eq!(
        inbound["endpoints"],
        json!(["sip:198.51.100.21:5060", "sip:198.51.100.22:5060"]),
        "ready gateways only, sorted"
    );
    assert_eq!(inbound["endpoint"], "sip:198.51.100.21:5060");
    assert_eq!(condition(inbound, "Programmed")["status"], "True");
    let outbound = &patches[1].body["status"];
    assert_eq!(outbound["sourceAddresses"], json!(["198.51.100.21", "198.51.100.22"]));
    assert_eq!(outbound["fleets"][0]["sourceAddresses"], outbound["sourceAddresses"]);

    // gw-1 goes away: its address leaves the status.
    for name in ["acme-in", "carrier-out"] {
        let kind = if name == "acme-in" { "InboundTrunk" } else { "OutboundTrunk" };
        h.watch_back(kind, name);
    }
    h.triggered();
    let gone: Pod = from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gw-1", "namespace": "trunkline", "uid": "uid-gw-1"},
    }));
    h.index.apply_pod(&Event::Delete(gone));
    assert_eq!(h.triggered(), set(&["InboundTrunk/*", "OutboundTrunk/*", "TransferDestination/*"]));
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    h.reconcile::<OutboundTrunk>("carrier-out").await.unwrap();
    let requests = h.requests();
    let patches = status_patches(&requests);
    assert_eq!(patches[0].body["status"]["endpoints"], json!(["sip:198.51.100.21:5060"]));
    assert_eq!(patches[1].body["status"]["sourceAddresses"], json!(["198.51.100.21"]));

    // A report that changes (a new address for gw-0) reconciles everything; the same report
    // again does not.
    let report = |address: &str| PodReport {
        uid: "uid-gw-0".into(),
        status: GatewayStatus {
            version: "0.1.0".into(),
            ready: true,
            config_hash: Some(view.hash.clone()),
            advertised_address: Some(address.parse().unwrap()),
            outbound: BTreeMap::new(),
            registrations: BTreeMap::new(),
        },
    };
    let reports = |address: &str| {
        let mut all = std::collections::BTreeMap::new();
        all.insert("gw-0".to_string(), report(address));
        all
    };
    assert!(h.ctx.reports.replace(reports("198.51.100.30")));
    let _ = h.ctx.note_fleet();
    assert_eq!(h.triggered(), set(&["InboundTrunk/*", "OutboundTrunk/*", "TransferDestination/*"]));
    assert!(!h.ctx.reports.replace(reports("198.51.100.30")));
    let _ = h.ctx.note_fleet();
    assert!(h.triggered().is_empty());
}

#[tokio::test]
async fn a_transfer_destination_heals_with_the_outbound_trunk_it_names() {
    let mut h = Harness::new();
    h.put(json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "OutboundTrunk",
        "metadata": {"name": "carrier-out", "namespace": "voice", "uid": "u1", "generation": 1,
                     "creationTimestamp": time(0)},
        "spec": {"host": "sip.carrier.example", "callerId": "+14155550100",
                 "auth": {"digest": {"secretRef": {"name": "carrier-creds"}}}},
    }));
    h.put(json!({
        "apiVersion": "trunkline.dev/v1alpha1", "kind": "TransferDestination",
        "metadata": {"name": "sales-desk", "namespace": "voice", "uid": "u2", "generation": 1,
                     "creationTimestamp": time(0)},
        "spec": {"type": "Phone", "phone": {"number": "+14155550199",
                 "outboundTrunkRef": {"name": "carrier-out"}}},
    }));
    h.compile().await;
    h.requests();
    h.reconcile::<TransferDestination>("sales-desk").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    assert_eq!(condition(status, "ResolvedRefs")["reason"], "TrunkNotAccepted");
    h.watch_back("TransferDestination", "sales-desk");
    h.triggered();

    h.put(basic_auth("carrier-creds", "us", "pw-carrier"));
    h.compile().await;
    assert_eq!(
        h.triggered(),
        set(&["OutboundTrunk/carrier-out", "TransferDestination/sales-desk"])
    );
    h.requests();
    h.reconcile::<TransferDestination>("sales-desk").await.unwrap();
    let requests = h.requests();
    let status = &status_patches(&requests)[0].body["status"];
    assert_eq!(condition(status, "ResolvedRefs")["status"], "True");
    assert_eq!(
        status.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["conditions", "fleets", "observedGeneration"]
    );
}

#[tokio::test]
async fn a_reconcile_behind_the_compile_waits_for_it() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], json!({"digest": {}})));
    // No compile yet: the stores may still be listing, so not even the generated Secret.
    assert_eq!(h.reconcile::<InboundTrunk>("acme-in").await.unwrap(), Action::await_change());
    assert!(h.requests().is_empty(), "no request before the first compile");
    h.compile().await;
    h.put(basic_auth("acme-in-trunkline-credentials", "u", "p"));
    // A new generation the compile has not seen: no status from an old verdict.
    h.put(inbound("acme-in", 0, 2, &["+14155550101"], json!({"digest": {}})));
    assert_eq!(h.reconcile::<InboundTrunk>("acme-in").await.unwrap(), Action::await_change());
    let requests = h.requests();
    assert!(requests.iter().all(|r| r.path == BUNDLE), "{requests:#?}");
    h.triggered();
    h.compile().await;
    assert_eq!(h.triggered(), set(&["InboundTrunk/acme-in"]));
}

#[tokio::test]
async fn a_failed_status_write_is_an_error_named_for_it_and_counted() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    h.compile().await;
    h.requests();
    let path = format!("{}/status", path_of("InboundTrunk", "acme-in"));
    h.server.lock().unwrap().fail = Some(("PATCH".into(), path, 500));
    let error = h.reconcile::<InboundTrunk>("acme-in").await.unwrap_err();
    assert!(
        matches!(&error, ReconcileError::PatchStatus { kind: Kind::InboundTrunk, name, .. } if name == "acme-in")
    );
    assert!(error.to_string().starts_with("cannot write the status of InboundTrunk voice/acme-in"));
    assert!(events(&h.requests()).is_empty(), "no event for a status that was not written");
    let obj = h.ctx.stores.inbound.get(&ObjectRef::new("acme-in").within("voice")).unwrap();
    assert_eq!(error_policy(obj, &error, Arc::clone(&h.ctx)), Action::requeue(retry_after(1)));
    assert!(h.metrics.render().contains(
        r#"trunkline_operator_reconciles_total{kind="InboundTrunk",result="patch_status"} 1"#
    ));
    // The next attempt writes it.
    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    assert_eq!(status_patches(&h.requests()).len(), 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn the_bundle_carries_the_credentials_is_applied_only_on_change_and_never_logged() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut h = Harness::new();
    h.put(basic_auth("acme-creds", "acme-user", "pw-bundle-7f3a9c"));
    h.put(inbound(
        "acme-in",
        0,
        1,
        &["+14155550100"],
        json!({"digest": {"secretRef": {"name": "acme-creds"}}}),
    ));
    h.requests();
    h.compile().await;
    let requests = h.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests[0].is("GET", BUNDLE), "the nonce key is looked for first");
    let apply = &requests[1];
    assert!(apply.is("PATCH", BUNDLE));
    assert!(is_forced_apply(apply));
    let body = &apply.body;
    assert_eq!((body["apiVersion"].as_str(), body["kind"].as_str()), (Some("v1"), Some("Secret")));
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "trunkline-operator");
    let data = body["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["fleet-members", "nonce-key", "voice.acme-creds"]);
    assert_eq!(
        BASE64.decode(data["fleet-members"].as_str().unwrap()).unwrap(),
        br#"{"members":[]}"#
    );
    let entry: Value =
        serde_json::from_slice(&BASE64.decode(data["voice.acme-creds"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(entry, json!({"username": "acme-user", "password": "pw-bundle-7f3a9c"}));
    let key = data["nonce-key"].clone();
    assert_eq!(BASE64.decode(key.as_str().unwrap()).unwrap().len(), 32);

    // Nothing changed: no request.
    h.compile().await;
    assert!(h.requests().is_empty());

    // The password changes: applied again, same nonce key, no GET.
    h.put(basic_auth("acme-creds", "acme-user", "pw-bundle-rotated"));
    h.compile().await;
    let requests = h.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(requests[0].is("PATCH", BUNDLE));
    assert_eq!(requests[0].body["data"]["nonce-key"], key);
    let entry: Value = serde_json::from_slice(
        &BASE64.decode(requests[0].body["data"]["voice.acme-creds"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(entry["password"], "pw-bundle-rotated");

    h.reconcile::<InboundTrunk>("acme-in").await.unwrap();
    tracing::info!("capture probe");
    let text = logs.text();
    // (Not the operator's own line: tracing's callsite interest cache, shared with tests on
    // other threads that log with no subscriber, drops it now and then.)
    assert!(text.contains("capture probe"), "the capture works: {text}");
    assert!(!text.contains("pw-bundle"), "a password reached the logs:\n{text}");
    assert!(!text.contains(&BASE64.encode("pw-bundle-7f3a9c")), "base64 of it too");
    assert!(
        h.metrics.render().contains(r#"trunkline_operator_bundle_applies_total{result="ok"} 2"#)
    );
}

/// The membership in a bundle PATCH: the names under `fleet-members`.
fn members_in(apply: &Recorded) -> Vec<String> {
    let value = BASE64.decode(apply.body["data"]["fleet-members"].as_str().unwrap()).unwrap();
    let parsed: Value = serde_json::from_slice(&value).unwrap();
    parsed["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_ready_gateway_pods_are_written_into_the_bundle_only_when_they_change() {
    let mut h = Harness::new();
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    // Before the first compile there is no bundle to write the membership into.
    h.pod("gw-b", true, "h");
    h.ctx.publish_members().await.unwrap();
    assert!(h.requests().is_empty());

    h.pod("gw-a", true, "h");
    h.pod("gw-c", false, "h");
    h.compile().await;
    let requests = h.requests();
    let apply = requests.iter().find(|r| r.is("PATCH", BUNDLE)).expect("the bundle applied");
    assert_eq!(members_in(apply), ["gw-a", "gw-b"], "the Ready pods, sorted");
    let first = apply.body["data"].clone();

    // Nothing changed, or a change that is not readiness: no write.
    h.ctx.publish_members().await.unwrap();
    h.pod("gw-c", false, "other-hash");
    h.ctx.publish_members().await.unwrap();
    assert!(h.requests().is_empty());

    // gw-b is no longer Ready: one PATCH of the bundle with the new membership, the rest as it
    // was; no compile (no GET, no status write).
    h.pod("gw-b", false, "h");
    h.ctx.publish_members().await.unwrap();
    let requests = h.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(requests[0].is("PATCH", BUNDLE) && is_forced_apply(&requests[0]));
    assert_eq!(members_in(&requests[0]), ["gw-a"]);
    let mut data = requests[0].body["data"].clone();
    data["fleet-members"] = first["fleet-members"].clone();
    assert_eq!(data, first, "only the membership changed");

    // A compile after that keeps the new membership: nothing to write.
    h.compile().await;
    assert!(h.requests().iter().all(|r| !r.is("PATCH", BUNDLE)));

    // A pod being deleted drains: it is no member even while its Ready condition holds.
    let deleting: Pod = from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gw-a", "namespace": "trunkline", "uid": "uid-gw-a",
                     "deletionTimestamp": time(5),
                     "labels": {"trunkline.dev/fleet": "main", "app.kubernetes.io/component": "gateway"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }));
    h.index.apply_pod(&Event::Apply(deleting));
    h.ctx.publish_members().await.unwrap();
    let requests = h.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(members_in(&requests[0]), Vec::<String>::new());
}

#[tokio::test]
async fn an_existing_nonce_key_is_kept_across_operator_restarts() {
    let mut h = Harness::new();
    let existing = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "gw-credentials", "namespace": "trunkline"},
        "data": {"nonce-key": BASE64.encode([9u8; 32])},
    });
    h.server.lock().unwrap().objects.insert(BUNDLE.to_string(), existing);
    h.put(inbound("acme-in", 0, 1, &["+14155550100"], by_address()));
    h.compile().await;
    let requests = h.requests();
    assert!(requests[0].is("GET", BUNDLE));
    assert!(requests[1].is("PATCH", BUNDLE));
    assert_eq!(
        requests[1].body["data"],
        json!({"nonce-key": BASE64.encode([9u8; 32]), "fleet-members": BASE64.encode(r#"{"members":[]}"#)})
    );
}

#[test]
fn run_controllers_is_a_send_future_the_lead_can_spawn() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, _handle) = mock_client();
        let future = run_controllers(client, config(), Arc::new(OperatorMetrics::new()));
        assert_send(&future);
    });
}

#[tokio::test]
async fn compile_diff_lists_new_and_changed_objects_only() {
    let mut h = Harness::new();
    h.put(inbound("a", 0, 1, &["+14155550100"], by_address()));
    h.put(inbound("b", 1, 1, &["+14155550101"], by_address()));
    let first = h.compile().await;
    assert_eq!(changed_objects(None, &first).len(), 2);
    h.put(inbound("b", 1, 2, &["+14155550102"], by_address()));
    let second = h.compile().await;
    let changed: Vec<String> =
        changed_objects(Some(&first), &second).into_iter().map(|k| k.name).collect();
    assert_eq!(changed, ["b"]);
    // A Secret nobody references changes nothing.
    h.triggered();
    h.put(basic_auth("unrelated", "u", "p"));
    h.compile().await;
    assert!(h.triggered().is_empty());
}

/// Waits (up to 10 s) until the server has recorded a request matching `pick`.
async fn eventually(
    server: &Arc<Mutex<ServerState>>,
    what: &str,
    pick: impl Fn(&Recorded) -> bool,
) -> Recorded {
    for _ in 0..200 {
        if let Some(r) = server.lock().unwrap().requests.iter().find(|r| pick(r)) {
            return r.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never saw {what}: {:#?}", server.lock().unwrap().requests);
}

#[tokio::test]
async fn run_controllers_lists_watches_and_writes_status_and_bundle() {
    let (client, handle) = mock_client();
    let server = Arc::new(Mutex::new(ServerState::default()));
    let held = HeldWatches::default();
    serve(handle, Arc::clone(&server), Arc::clone(&held));
    {
        let mut s = server.lock().unwrap();
        let secret = s.stamp(basic_auth("acme-creds", "acme-user", "pw-e2e"));
        s.objects.insert(path_of("Secret", "acme-creds"), secret);
        let trunk = s.stamp(inbound(
            "acme-in",
            0,
            1,
            &["+14155550100"],
            json!({"digest": {"secretRef": {"name": "acme-creds"}}}),
        ));
        s.objects.insert(path_of("InboundTrunk", "acme-in"), trunk);
        // An Opaque Secret the type selector keeps out of the operator.
        let opaque = s.stamp(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "acme-creds-opaque", "namespace": "voice"}}));
        s.objects.insert(path_of("Secret", "acme-creds-opaque"), opaque);
    }
    let metrics = Arc::new(OperatorMetrics::new());
    let running = tokio::spawn(run_controllers(client, config(), Arc::clone(&metrics)));

    let status_path = format!("{}/status", path_of("InboundTrunk", "acme-in"));
    let patch = eventually(&server, "the trunk's status", |r| r.is("PATCH", &status_path)).await;
    assert!(is_forced_apply(&patch));
    assert_eq!(condition(&patch.body["status"], "Accepted")["status"], "True");
    assert_eq!(condition(&patch.body["status"], "ResolvedRefs")["status"], "True");
    let bundle = eventually(&server, "the bundle", |r| r.is("PATCH", BUNDLE)).await;
    assert!(bundle.body["data"]["voice.acme-creds"].is_string());
    {
        let watched: BTreeSet<String> =
            held.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            watched,
            set(&[
                "/api/v1/namespaces/trunkline/pods",
                "/api/v1/secrets",
                "/apis/trunkline.dev/v1alpha1/inboundtrunks",
                "/apis/trunkline.dev/v1alpha1/outboundtrunks",
                "/apis/trunkline.dev/v1alpha1/transferdestinations",
            ])
        );
    }

    // A watch event: a newer trunk claims the same number.
    let late = {
        let mut s = server.lock().unwrap();
        let late =
            s.stamp(inbound("late-in", 60, 1, &["+14155550100", "+14155550101"], by_address()));
        s.objects.insert(path_of("InboundTrunk", "late-in"), late.clone());
        late
    };
    let responder = {
        let mut held = held.lock().unwrap();
        let i = held
            .iter()
            .position(|(p, _)| p == "/apis/trunkline.dev/v1alpha1/inboundtrunks")
            .unwrap();
        held.remove(i).1
    };
    responder.send_response(fixtures::watch_event("ADDED", &late));
    let late_status = format!("{}/status", path_of("InboundTrunk", "late-in"));
    let patch =
        eventually(&server, "the newer trunk's status", |r| r.is("PATCH", &late_status)).await;
    let accepted = condition(&patch.body["status"], "Accepted");
    assert_eq!(accepted["reason"], "NumberConflict");
    assert_eq!(
        accepted["message"],
        "number +14155550100 is held by InboundTrunk voice/acme-in (older)"
    );

    running.abort();
    let _ = running.await;
    let requests = server.lock().unwrap().requests.clone();
    let count = |method: &str, path: &str| requests.iter().filter(|r| r.is(method, path)).count();
    assert_eq!(count("PATCH", &status_path), 1, "written once: {requests:#?}");
    assert_eq!(count("PATCH", &late_status), 1);
    assert_eq!((count("GET", BUNDLE), count("PATCH", BUNDLE)), (1, 1), "the bundle did not change");
    let text = metrics.render();
    assert!(text.contains("trunkline_operator_compiles_total"), "{text}");
}
