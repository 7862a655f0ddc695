//! A small in-memory Kubernetes API server on 127.0.0.1 (plain HTTP), good enough for the kube-rs
//! clients of `trunkline operator` and `trunkline gateway`: no real kube-apiserver can run on
//! these machines (DESIGN §7). [`ApiServer::start`] serves it on a free port from its own tokio
//! runtime; [`ApiServer::write_kubeconfig`] points a process at it; the test reads and writes
//! objects directly ([`ApiServer::put`], [`ApiServer::update`], [`ApiServer::delete`],
//! [`ApiServer::get`], [`ApiServer::list`]) and reads the log of every request
//! ([`ApiServer::requests`]).
//!
//! Objects are JSON values keyed by (resource, namespace, name), where the resource is the URL's
//! `group/version/plural` (`v1/secrets`, `apps/v1/deployments`, `trunkline.dev/v1alpha1/
//! inboundtrunks`) and the namespace is empty for cluster-scoped objects. Any resource is
//! accepted: there is no schema, no discovery document and no CRD registration.
//!
//! What it does like the real one:
//! - GET one (404 `NotFound` Status when absent); LIST, in one namespace or across all, with
//!   `labelSelector` (`k=v`, `k==v`, `k!=v`, `k in (..)`, `k notin (..)`, `k`, `!k`) and
//!   `fieldSelector` (`=`, `==`, `!=` on any dotted path: `metadata.name`, `type`, ...), answering
//!   the current objects at the latest `resourceVersion`;
//! - WATCH (`watch=true&resourceVersion=R`): the events after R that match the selectors, as
//!   newline-delimited JSON, streamed as they happen; the body ends after [`WATCH_IDLE`] without
//!   an event, so clients watch again from their last version. Without R (or R = 0) the current
//!   objects come first as `ADDED`;
//! - POST (201; 409 `AlreadyExists`), PUT (404 when absent; 409 `Conflict` on a stale
//!   `metadata.resourceVersion`), DELETE (404 when absent; the object goes at once);
//! - PATCH: `application/apply-patch+yaml` (server-side apply, creating the object when absent),
//!   `application/merge-patch+json` and `application/strategic-merge-patch+json`, on the object
//!   or on its `/status` subresource;
//! - one global `resourceVersion` counter; `uid`, `creationTimestamp` (whole seconds) and
//!   `generation` (1 at creation, +1 when anything outside `metadata` and `status` changes) set
//!   by the server, whatever a client sends; `stringData` of a Secret folded into `data`;
//! - writes to an object never change its `status`, writes to `/status` change only `status`;
//! - `/version`;
//! - the requests' bearer token, as the [`Logged::user`] (kubeconfigs from
//!   [`ApiServer::write_kubeconfig_as`]), so a test can tell whose client made a request;
//! - cluster-scoped resources such as nodes (`/api/v1/nodes`, `/api/v1/nodes/NAME`) like any
//!   other: put them with an empty namespace.
//!
//! What it approximates (keep these in mind when a test passes here):
//! - server-side apply is a deep merge of the body into the object: maps merge, `null` removes a
//!   field, lists of objects that all carry a `type` (conditions) merge by `type`, a list named
//!   `fleets` whose objects all carry a `name` (trunkline's `status.fleets`) merges by `name`,
//!   other lists are replaced (the real server merges by the CRD's `x-kubernetes-list-map-keys`,
//!   which the fake does not read). Each apply manager's fields are remembered (per object and
//!   subresource), list-map items and the fields inside them included: a field or item it
//!   applied before and leaves out now is removed, unless another apply manager applied it too.
//!   Writes other than apply own nothing, and there are no apply conflicts (a forced apply of
//!   another manager's value simply wins; two replicas racing for a free Lease would both win:
//!   tests start them one after the other);
//! - strategic merge patch is a JSON merge patch (RFC 7386; no `$patch` directives, lists
//!   replaced); JSON patch is refused (415);
//! - a watch sends no `DELETED` when an object stops matching its selector, no bookmarks, never
//!   410 Gone (history is kept whole), and ignores `sendInitialEvents`; `limit` and `continue`
//!   are ignored (one page);
//! - no admission, validation, defaulting, RBAC, finalizers, `deletionTimestamp` or garbage
//!   collection of owned objects; no discovery (`/api`, `/apis` answer 404).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::net::LOCALHOST;

/// How long a watch body stays open without an event before it ends.
pub const WATCH_IDLE: Duration = Duration::from_secs(2);

/// One request, as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body, when it was JSON (or YAML, for apply).
    pub body: Option<Value>,
    /// The status code answered (200 for a watch, whatever its body then streams).
    pub status: u16,
    /// The bearer token the request carried (the kubeconfig's user token), if any.
    pub user: Option<String>,
}

impl Logged {
    /// `METHOD path?query`, for messages.
    pub fn line(&self) -> String {
        let query: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if query.is_empty() {
            format!("{} {} -> {}", self.method, self.path, self.status)
        } else {
            format!("{} {}?{} -> {}", self.method, self.path, query.join("&"), self.status)
        }
    }

    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

type Key = (String, String, String);

struct Recorded {
    version: u64,
    resource: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

/// One step of a field path: a map key, or the item of a list map whose key field (`type` or
/// `name`, [`list_key`]) has this value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    Item(&'static str, String),
}

/// What one field manager last applied to one object (or its `/status`): object key,
/// subresource (`""` for the object), manager.
type Applier = (Key, String, String);

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    /// The field paths each apply manager set with its last apply.
    applied: BTreeMap<Applier, BTreeSet<Vec<Step>>>,
    events: Vec<Recorded>,
    version: u64,
    uids: u64,
    requests: Vec<Logged>,
}

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watches to wait on.
    version: watch::Sender<u64>,
}

/// The server; stopped (its runtime shut down) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Where a request points.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    resource: String,
    /// `None`: cluster-scoped, or a namespaced resource across all namespaces.
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// An answer that is a `Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into() }
    }

    fn not_found(target: &Target, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", target.resource),
        )
    }

    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        });
        (self.code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

impl ApiServer {
    /// Serves an empty server on a free 127.0.0.1 port.
    pub fn start() -> ApiServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("a tokio runtime for the fake API server");
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared { store: Mutex::default(), version });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((LOCALHOST, 0)))
            .expect("bind the fake API server on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        ApiServer { addr, shared, runtime: Some(runtime) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig whose current context points at this server, with `namespace` as default.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) {
        write_kubeconfig(path, self.addr, namespace);
    }

    /// The same, with a bearer token `user`: the server logs it with each request of that
    /// client ([`Logged::user`]).
    pub fn write_kubeconfig_as(&self, path: &Path, namespace: &str, user: &str) {
        let addr = self.addr;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
                 users: [{{name: fake, user: {{token: {user}}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {namespace}}}}}]\n"
            ),
        )
        .expect("write the kubeconfig");
    }

    /// Creates or replaces `object` (its status included) as the test's own write: kept
    /// `uid` and `creationTimestamp`, a new `resourceVersion`, watchers told. Returns the stored
    /// object.
    pub fn put(&self, resource: &str, object: Value) -> Value {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().expect("an object with a name").to_string();
        let mut store = self.shared.store.lock().unwrap();
        let key = (resource.to_string(), namespace, name);
        let old = store.objects.get(&key).cloned();
        let stored = store.commit(key, old.as_ref(), object);
        drop(store);
        self.shared.notify();
        stored
    }

    /// Changes an object in place (through [`ApiServer::put`]); panics when it does not exist.
    pub fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let mut object = self
            .get(resource, namespace, name)
            .unwrap_or_else(|| panic!("no {resource} {namespace}/{name} to update"));
        change(&mut object);
        self.put(resource, object);
    }

    /// Deletes an object as the test's own write (watchers told); returns it, `None` when absent.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let removed = self.shared.store.lock().unwrap().remove(&key);
        self.shared.notify();
        removed
    }

    /// The object, as a GET would answer it.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store.objects.get(&(resource.into(), namespace.into(), name.into())).cloned()
    }

    /// The objects of `resource` in `namespace` (all when `None`) matching `labels`.
    pub fn list(&self, resource: &str, namespace: Option<&str>, labels: &str) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        let selector = Selector::parse(labels, "");
        store
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                r == resource && namespace.is_none_or(|n| n == ns) && selector.matches(o)
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every request so far, in the order they were answered. A request is logged once
    /// answered: a write shows in the store a moment before its request shows here.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// The log as text, one request a line (for failure messages).
    pub fn request_log(&self) -> String {
        self.requests().iter().map(|r| r.line() + "\n").collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn notify(&self) {
        let version = self.store.lock().unwrap().version;
        self.version.send_if_modified(|current| {
            let changed = *current != version;
            *current = version;
            changed
        });
    }
}

impl Store {
    /// Stores `object` under `key` (replacing `old`, or created), with the server's metadata,
    /// and records the event.
    fn commit(&mut self, key: Key, old: Option<&Value>, mut object: Value) -> Value {
        self.version += 1;
        let version = self.version;
        fold_string_data(&mut object);
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if key.1.is_empty() {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
        } else {
            meta["namespace"] = json!(key.1);
        }
        meta["resourceVersion"] = json!(version.to_string());
        match old {
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    meta[field] = old["metadata"][field].clone();
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let bumped = generation + i64::from(beyond_meta(old) != beyond_meta(&object));
                object["metadata"]["generation"] = json!(bumped);
            }
            None => {
                self.uids += 1;
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
                meta["creationTimestamp"] = json!(now());
                meta["generation"] = json!(1);
            }
        }
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("managedFields");
        }
        self.events.push(Recorded {
            version,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            type_: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
        });
        self.objects.insert(key, object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.applied.retain(|(k, _, _), _| k != key);
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.events.push(Recorded {
            version: self.version,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            type_: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }
}

/// Everything but `metadata` and `status`: what a change of bumps `generation`.
fn beyond_meta(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    rest
}

/// A Secret's `stringData` written into `data` (base64), as the API server does.
fn fold_string_data(object: &mut Value) {
    let Some(string_data) = object.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let Value::Object(entries) = string_data else { return };
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (key, value) in entries {
        let text = value.as_str().unwrap_or_default();
        object["data"][key] =
            json!(base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));
    }
}

/// Now, RFC 3339 in whole seconds (the precision of `metav1.Time`).
fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

// ---------------------------------------------------------------------------------------------
// Requests.

fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some(namespace.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (resource, None, None),
        [resource, name] => (resource, Some(name.to_string()), None),
        [resource, name, sub] => (resource, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target { resource: format!("{group_version}/{resource}"), namespace, name, subresource })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default();
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok().or_else(|| serde_yaml::from_slice(&body).ok())
    };
    let mut logged = Logged {
        method: method.to_string(),
        path: uri.path().to_string(),
        query,
        content_type,
        body: parsed,
        status: 0,
        user,
    };
    let response = route(&shared, &method, &logged);
    logged.status = response.status().as_u16();
    shared.store.lock().unwrap().requests.push(logged);
    shared.notify();
    response
}

fn route(shared: &Arc<Shared>, method: &Method, request: &Logged) -> Response {
    if request.path == "/version" && method == Method::GET {
        return json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-trunkline-fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        );
    }
    let Some(target) = parse_target(&request.path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "NotFound", "the fake serves no such path")
            .into_response();
    };
    let result = match (method.clone(), &target.name) {
        (Method::GET, Some(_)) => get(shared, &target),
        (Method::GET, None) if request.is_watch() => {
            return watch_response(shared, &target, request);
        }
        (Method::GET, None) => Ok(list(shared, &target, request)),
        (Method::POST, None) => create(shared, &target, request),
        (Method::PUT, Some(_)) => replace(shared, &target, request),
        (Method::PATCH, Some(_)) => patch(shared, &target, request),
        (Method::DELETE, Some(_)) => delete(shared, &target),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake does not {method} this path"),
        )),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(e) => e.into_response(),
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn key_of(target: &Target, name: &str) -> Key {
    (target.resource.clone(), target.namespace.clone().unwrap_or_default(), name.to_string())
}

fn get(shared: &Shared, target: &Target) -> Result<(StatusCode, Value), ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let store = shared.store.lock().unwrap();
    match store.objects.get(&key_of(target, &name)) {
        Some(object) => Ok((StatusCode::OK, object.clone())),
        None => Err(ApiError::not_found(target, &name)),
    }
}

fn list(shared: &Shared, target: &Target, request: &Logged) -> (StatusCode, Value) {
    let selector = Selector::from_query(&request.query);
    let store = shared.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, ns, _), o)| {
            *r == target.resource
                && target.namespace.as_ref().is_none_or(|n| n == ns)
                && selector.matches(o)
        })
        .map(|(_, o)| o.clone())
        .collect();
    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": store.version.to_string()},
        "items": items,
    });
    (StatusCode::OK, list)
}

fn body_object(request: &Logged) -> Result<Value, ApiError> {
    match &request.body {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "the body is no object")),
    }
}

fn without_status(mut object: Value) -> Value {
    if let Some(m) = object.as_object_mut() {
        m.remove("status");
    }
    object
}

fn create(
    shared: &Shared,
    target: &Target,
    request: &Logged,
) -> Result<(StatusCode, Value), ApiError> {
    let object = without_status(body_object(request)?);
    let mut store = shared.store.lock().unwrap();
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_string(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", store.version + 1),
            None => {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "Invalid", "name is required"));
            }
        },
    };
    let key = key_of(target, &name);
    if store.objects.contains_key(&key) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.resource),
        ));
    }
    let stored = store.commit(key, None, object);
    Ok((StatusCode::CREATED, stored))
}

fn replace(
    shared: &Shared,
    target: &Target,
    request: &Logged,
) -> Result<(StatusCode, Value), ApiError> {
    let body = body_object(request)?;
    let name = target.name.clone().unwrap_or_default();
    let key = key_of(target, &name);
    let mut store = shared.store.lock().unwrap();
    let Some(old) = store.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(target, &name));
    };
    if let Some(expected) = body["metadata"]["resourceVersion"].as_str()
        && Some(expected) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version",
        ));
    }
    let object = if target.subresource.as_deref() == Some("status") {
        let mut object = old.clone();
        object["status"] = body["status"].clone();
        object
    } else {
        let mut object = without_status(body);
        object["status"] = old["status"].clone();
        object
    };
    let stored = store.commit(key, Some(&old), object);
    Ok((StatusCode::OK, stored))
}

fn patch(
    shared: &Shared,
    target: &Target,
    request: &Logged,
) -> Result<(StatusCode, Value), ApiError> {
    let body = body_object(request)?;
    let content_type = request.content_type.as_deref().unwrap_or_default();
    let apply = content_type.starts_with("application/apply-patch");
    if !apply
        && !content_type.starts_with("application/merge-patch+json")
        && !content_type.starts_with("application/strategic-merge-patch+json")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake does not take {content_type:?} patches"),
        ));
    }
    let status_only = target.subresource.as_deref() == Some("status");
    let name = target.name.clone().unwrap_or_default();
    let key = key_of(target, &name);
    let mut store = shared.store.lock().unwrap();
    let old = store.objects.get(&key).cloned();
    let (mut object, created) = match &old {
        Some(old) => (old.clone(), false),
        None if apply && !status_only => {
            let mut fresh = json!({"metadata": {"name": name}});
            for field in ["apiVersion", "kind"] {
                fresh[field] = body[field].clone();
            }
            (fresh, true)
        }
        None => return Err(ApiError::not_found(target, &name)),
    };
    let change = if status_only {
        match body.get("status") {
            Some(status) => json!({ "status": status }),
            None => json!({}),
        }
    } else {
        without_status(body)
    };
    if apply {
        let subresource = target.subresource.clone().unwrap_or_default();
        let manager = request.query.get("fieldManager").cloned().unwrap_or_default();
        let applier = (key.clone(), subresource, manager);
        let now = applied_paths(&change);
        // Fields this manager applied last time and no longer does go, unless another manager
        // applied them too.
        if let Some(before) = store.applied.get(&applier) {
            for path in before.difference(&now) {
                let shared = store.applied.iter().any(|((k, sub, m), paths)| {
                    *k == applier.0 && *sub == applier.1 && *m != applier.2 && paths.contains(path)
                });
                if !shared {
                    remove_path(&mut object, path);
                }
            }
        }
        store.applied.insert(applier, now);
        apply_merge(&mut object, &change);
    } else {
        merge_patch(&mut object, &change)
    }
    let stored = store.commit(key, old.as_ref(), object);
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, stored))
}

fn delete(shared: &Shared, target: &Target) -> Result<(StatusCode, Value), ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let mut store = shared.store.lock().unwrap();
    match store.remove(&key_of(target, &name)) {
        Some(object) => Ok((StatusCode::OK, object)),
        None => Err(ApiError::not_found(target, &name)),
    }
}

// ---------------------------------------------------------------------------------------------
// Merging.

/// Server-side apply, approximated (module docs).
fn apply_merge(target: &mut Value, patch: &Value) {
    let (Value::Object(into), Value::Object(from)) = (&mut *target, patch) else {
        *target = without_nulls(patch);
        return;
    };
    for (key, value) in from {
        if value.is_null() {
            into.remove(key);
            continue;
        }
        match into.get_mut(key) {
            Some(existing) if existing.is_object() && value.is_object() => {
                apply_merge(existing, value);
            }
            Some(existing)
                if list_key(key, existing).is_some()
                    && list_key(key, existing) == list_key(key, value) =>
            {
                let by = list_key(key, value).unwrap_or("type");
                merge_by_key(existing, value, by);
            }
            _ => {
                into.insert(key.clone(), without_nulls(value));
            }
        }
    }
}

/// The field paths an apply body sets: every leaf, and each list-map item (as itself and as the
/// leaves inside it), without the identity fields (`apiVersion`, `kind`, `metadata.name`,
/// `metadata.namespace`).
fn applied_paths(body: &Value) -> BTreeSet<Vec<Step>> {
    fn walk(value: &Value, path: &mut Vec<Step>, out: &mut BTreeSet<Vec<Step>>) {
        let field = match path.last() {
            Some(Step::Field(f)) => f.clone(),
            _ => String::new(),
        };
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(Step::Field(key.clone()));
                    walk(child, path, out);
                    path.pop();
                }
            }
            list if list_key(&field, list).is_some() => {
                let by = list_key(&field, list).unwrap_or("type");
                for item in list.as_array().into_iter().flatten() {
                    path.push(Step::Item(by, item[by].as_str().unwrap_or_default().to_string()));
                    out.insert(path.clone());
                    walk(item, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(body, &mut Vec::new(), &mut out);
    let identity = |p: &Vec<Step>| {
        let field = |i: usize| match p.get(i) {
            Some(Step::Field(f)) => f.as_str(),
            _ => "",
        };
        matches!(field(0), "apiVersion" | "kind")
            || (field(0) == "metadata" && matches!(field(1), "name" | "namespace"))
    };
    out.retain(|p| !identity(p));
    out
}

/// Removes the field (or list item) at `path`, when there.
fn remove_path(object: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = object;
    for step in parents {
        let next = match step {
            Step::Field(f) => at.get_mut(f.as_str()),
            Step::Item(by, t) => {
                at.as_array_mut().and_then(|items| items.iter_mut().find(|i| i[*by] == *t))
            }
        };
        match next {
            Some(next) => at = next,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(map) = at.as_object_mut() {
                map.remove(f);
            }
        }
        Step::Item(by, t) => {
            if let Some(items) = at.as_array_mut() {
                items.retain(|i| i[*by] != *t);
            }
        }
    }
}

/// The key of a list the fake merges item by item (module docs): `name` for a list at field
/// `fleets` of objects that all carry a string `name`; `type` for a list of objects that all
/// carry a string `type` (conditions); `None` for a list that is replaced whole.
fn list_key(field: &str, value: &Value) -> Option<&'static str> {
    let all = |key: &str| {
        value.as_array().is_some_and(|items| {
            !items.is_empty() && items.iter().all(|i| i.get(key).is_some_and(Value::is_string))
        })
    };
    if field == "fleets" && all("name") {
        Some("name")
    } else if all("type") {
        Some("type")
    } else {
        None
    }
}

fn merge_by_key(existing: &mut Value, patch: &Value, by: &str) {
    let (Some(items), Some(new)) = (existing.as_array_mut(), patch.as_array()) else { return };
    for item in new {
        match items.iter_mut().find(|i| i[by] == item[by]) {
            Some(old) => apply_merge(old, item),
            None => items.push(without_nulls(item)),
        }
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

/// JSON merge patch, RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(from) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(into) = target else { return };
    for (key, value) in from {
        if value.is_null() {
            into.remove(key);
        } else {
            merge_patch(into.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors.

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A label selector and a field selector, together.
#[derive(Debug, Default)]
struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    fn from_query(query: &BTreeMap<String, String>) -> Selector {
        let get = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
        Selector::parse(get("labelSelector"), get("fieldSelector"))
    }

    fn parse(labels: &str, fields: &str) -> Selector {
        Selector { labels: requirements(labels), fields: requirements(fields) }
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |path: &str| {
            let mut at = object;
            for part in path.split('.') {
                at = &at[part];
            }
            Some(match at {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
        };
        self.labels.iter().all(|r| holds(r, &label)) && self.fields.iter().all(|r| holds(r, &field))
    }
}

fn holds(requirement: &Requirement, value: &dyn Fn(&str) -> Option<String>) -> bool {
    match requirement {
        Requirement::Equals(k, v) => value(k).as_deref() == Some(v.as_str()),
        Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v.as_str()),
        Requirement::In(k, vs) => value(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => value(k).is_none_or(|x| !vs.contains(&x)),
        Requirement::Exists(k) => value(k).is_some(),
        Requirement::Absent(k) => value(k).is_none(),
    }
}

/// Splits a selector at the commas outside parentheses and parses each term.
fn requirements(selector: &str) -> Vec<Requirement> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).map(requirement).collect()
}

fn requirement(term: &str) -> Requirement {
    let set = |rest: &str| -> Vec<String> {
        rest.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_string())
            .collect()
    };
    if let Some(key) = term.strip_prefix('!') {
        return Requirement::Absent(key.trim().to_string());
    }
    if let Some((key, rest)) = term.split_once(" notin ") {
        return Requirement::NotIn(key.trim().to_string(), set(rest));
    }
    if let Some((key, rest)) = term.split_once(" in ") {
        return Requirement::In(key.trim().to_string(), set(rest));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Requirement::NotEquals(key.trim().to_string(), value.trim().to_string());
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Requirement::Equals(key.trim().to_string(), value.trim().to_string());
    }
    Requirement::Exists(term.to_string())
}

// ---------------------------------------------------------------------------------------------
// Watches.

struct Cursor {
    shared: Arc<Shared>,
    target: Target,
    selector: Selector,
    after: u64,
    changes: watch::Receiver<u64>,
}

impl Cursor {
    /// The matching events after the cursor, as NDJSON lines; moves the cursor past them.
    fn next_lines(&mut self) -> String {
        let store = self.shared.store.lock().unwrap();
        let mut lines = String::new();
        for event in store.events.iter().filter(|e| e.version > self.after) {
            if event.resource == self.target.resource
                && self.target.namespace.as_ref().is_none_or(|n| *n == event.namespace)
                && self.selector.matches(&event.object)
            {
                lines.push_str(&json!({"type": event.type_, "object": event.object}).to_string());
                lines.push('\n');
            }
        }
        self.after = store.version;
        lines
    }
}

fn watch_response(shared: &Arc<Shared>, target: &Target, request: &Logged) -> Response {
    let from: u64 = request.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut initial = String::new();
    let after = if from == 0 {
        // No version: the current objects first, as ADDED.
        let (_, list) = list(shared, target, request);
        for item in list["items"].as_array().into_iter().flatten() {
            initial.push_str(&json!({"type": "ADDED", "object": item}).to_string());
            initial.push('\n');
        }
        list["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
    } else {
        from
    };
    let cursor = Cursor {
        shared: shared.clone(),
        target: target.clone(),
        selector: Selector::from_query(&request.query),
        after,
        changes: shared.version.subscribe(),
    };
    let first = futures::stream::iter(
        (!initial.is_empty()).then(|| Ok::<Bytes, Infallible>(Bytes::from(initial))),
    );
    let rest = futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            cursor.changes.borrow_and_update();
            let lines = cursor.next_lines();
            if !lines.is_empty() {
                return Some((Ok::<Bytes, Infallible>(Bytes::from(lines)), cursor));
            }
            match tokio::time::timeout(WATCH_IDLE, cursor.changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    });
    let body = Body::from_stream(futures::StreamExt::chain(first, rest));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A kubeconfig at `path` for an API server on `addr` over plain HTTP, with `namespace` as the
/// context's default (tests/gateway_source.rs has a scripted server of its own).
pub fn write_kubeconfig(path: &Path, addr: SocketAddr, namespace: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {namespace}}}}}]\n"
        ),
    )
    .expect("write the kubeconfig");
}
