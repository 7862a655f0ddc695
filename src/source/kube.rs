//! The spec source of a gateway pod (`trunkline gateway`): the API server instead of a folder.
//!
//! ```text
//!  API server ──LIST+WATCH──► reflector stores: InboundTrunk, OutboundTrunk, TransferDestination
//!                                               (all namespaces, or --watch-namespace)
//!             ──LIST+WATCH──► reflector store:  the credentials bundle Secret (one name, one
//!                                               namespace: a field selector, so RBAC can
//!                                               restrict the gateway to that resourceName)
//!  any change ─debounce─► Specs from the stores + read_bundle ─► compile(region) ─► Snapshot
//!     published on the tokio watch channel the gateway reads its table from (the same channel
//!     type as the folder source), only when the config hash changed
//! ```
//!
//! The source only reads: a gateway never writes to the API server. The hash of the config it
//! serves is reported on its admin endpoint (`GET /v1/status`, `observe::admin`), where the
//! operator's prober fetches it.
//!
//! Takes a [`kube::Client`] and [`KubeSourceOptions`]; gives, through [`KubeSource::spawn`], a
//! [`Running`] source whose [`Running::ready`] resolves with the first snapshot's channel and the
//! bundle's digest nonce key. `runtime::gateway` calls it for `trunkline gateway`.
//!
//! **When the first snapshot is published.** Only when every store has completed its first
//! list and the bundle Secret exists with a usable nonce key: the bundle holds the credentials
//! of every trunk (compiling without it would refuse every digest trunk) and the nonce key all
//! replicas must share (a challenge from one pod is answered on another). Until then the gateway
//! is not ready, and what is missing is logged every [`WAITING_LOG_INTERVAL`].
//!
//! **After that.** Store events are debounced: a compile runs [`DEBOUNCE`] after the last event
//! of a burst and at most [`MAX_DELAY`] after its first. A compile whose config hash equals the
//! served one publishes nothing. Verdicts are logged when they change, as the folder source does
//! (`warn!` for each diagnostic, `debug!` for a clean object, one `info!` summary per new
//! config). An object the API server gives that does not deserialise (say, stored under an older
//! schema) is refused on its own with a verdict; the others are served. If the bundle disappears
//! the gateway keeps its last table. Watch errors (API server gone, RBAC) are logged and retried
//! with kube's default backoff; the last table stays. A later change of the bundle's nonce key is
//! logged and not applied: the key a pod started with stays until it restarts.
//!
//! **The fleet's membership** (`bundle::FLEET_MEMBERS_KEY`, the Ready gateway pods the operator
//! publishes in the same Secret) is published on its own channel, [`Running::members`], as soon
//! as the Secret's event arrives: the gateway divides the trunks' limits by it
//! (`call::limits`). A change of the Secret that touches only that key compiles nothing. `None`
//! on the channel: the bundle has no membership (each pod has the whole limits). A value that
//! does not parse is logged and the last membership kept; so it is when the Secret is gone.
//!
//! Secret data is never logged: the bundle's keys may be named (`<namespace>.<name>`), never its
//! values, and errors of the Secret watch are logged without their serde detail.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::bundle::{
    Bundle, FLEET_MEMBERS_KEY, Membership, NONCE_KEY, NONCE_KEY_LEN, read_bundle,
    read_fleet_members,
};
use super::debounce::{Burst, sleep_until};
use super::log_verdict;
use super::watch::{ReloadObserver, Retired};
use crate::api::{InboundTrunk, Kind, OutboundTrunk, TransferDestination};
use crate::config::Snapshot;
use crate::config::compile::Compiler;
use crate::config::diagnostic::{ObjectKey, State, Verdict};
use crate::config::manifest;
use crate::config::secret::SecretStore;
use crate::config::specs::DEFAULT_NAMESPACE;
use crate::config::{CompileOptions, Specs};

/// Quiet time after the last store event of a burst before a compile.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest wait between the first event of a burst and its compile.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a gateway without a config yet says what it is waiting for.
pub const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// What the gateway's Kubernetes source is told (the flags of `trunkline gateway`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSourceOptions {
    /// Name of the credentials bundle Secret the operator keeps, in the pod's namespace.
    pub credentials_secret: String,
    /// This pod's namespace (`POD_NAMESPACE`): where the bundle is read.
    /// `None`: the client's default namespace (in a pod, its service account's namespace).
    pub pod_namespace: Option<String>,
    /// Watch the three kinds in this namespace only. `None`: in every namespace.
    pub watch_namespace: Option<String>,
}

/// Why the source gave no config.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source stopped (shutdown, or its task ended) before its first snapshot.
    #[error("the Kubernetes spec source stopped before it had a config")]
    Stopped,
}

/// The first config: where the snapshots come from, and the nonce key of the bundle.
#[derive(Debug)]
pub struct Ready {
    /// The snapshot channel: its current value is the first snapshot; later ones are published
    /// on it. The gateway reads its table from here.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The digest nonce key every replica shares (from the bundle).
    pub nonce_key: [u8; NONCE_KEY_LEN],
}

/// The fleet's membership as the bundle gives it: the sorted names of the Ready gateway pods;
/// `None` when the bundle has none.
pub type Members = Option<Arc<[String]>>;

/// A source started by [`KubeSource::spawn`].
#[derive(Debug)]
pub struct Running {
    ready: Option<oneshot::Receiver<Ready>>,
    task: JoinHandle<()>,
    members: watch::Receiver<Members>,
}

impl Running {
    /// Waits for the first snapshot (the module docs say when it comes). Waits as long as it
    /// takes, logging what is missing; `Err` when the source stopped first, or when called
    /// again after it gave the first snapshot.
    pub async fn ready(&mut self) -> Result<Ready, SourceError> {
        // Cancel-safe: the receiver stays until it gave its answer.
        let rx = self.ready.as_mut().ok_or(SourceError::Stopped)?;
        let ready = rx.await;
        self.ready = None;
        ready.map_err(|_| SourceError::Stopped)
    }

    /// The fleet's membership (module docs), current from before the first snapshot on.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.members.clone()
    }

    /// Stops the source now (reflectors and compile loop).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The gateway's spec source on the API server (module docs).
pub struct KubeSource {
    client: Client,
    options: KubeSourceOptions,
    compile: CompileOptions,
    namespace: String,
    on_reload: Option<ReloadObserver>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("compile", &self.compile)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    pub fn new(client: Client, options: KubeSourceOptions, compile: CompileOptions) -> Self {
        let namespace = options
            .pod_namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string());
        KubeSource { client, options, compile, namespace, on_reload: None }
    }

    /// Calls `observer` with `true` for each changed config published after the first, and
    /// `false` when a change cannot be served (the bundle is gone or unreadable).
    pub fn with_reload_observer(mut self, observer: ReloadObserver) -> Self {
        self.on_reload = Some(observer);
        self
    }

    /// Starts the reflectors and the compile loop on the current tokio runtime; they run until
    /// `shutdown` resolves or [`Running::abort`].
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Running {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (members_tx, members) = watch::channel(None);
        let task = tokio::spawn(self.run(ready_tx, members_tx, shutdown));
        Running { ready: Some(ready_rx), task, members }
    }

    async fn run(
        self,
        ready_tx: oneshot::Sender<Ready>,
        members_tx: watch::Sender<Members>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let stores = self.start_reflectors(&mut tasks, &notes_tx);
        drop(notes_tx);
        let mut engine = Engine {
            source: self,
            stores,
            listed: [false; WATCHED],
            tx: None,
            ready_tx: Some(ready_tx),
            nonce_key: None,
            logged: Logged::default(),
            fleet: Fleet { tx: members_tx, seen: None, unreadable: false },
            incremental: Arc::default(),
            retired: None,
        };
        let mut burst: Option<Burst> = None;
        let started = Instant::now();
        let mut waiting =
            tokio::time::interval_at(Instant::now() + WAITING_LOG_INTERVAL, WAITING_LOG_INTERVAL);
        tokio::pin!(shutdown);
        loop {
            let due = burst.as_ref().map(Burst::due);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                note = notes.recv() => match note {
                    Some(Note::Listed(w)) => {
                        engine.listed[w.index()] = true;
                        let _ = engine.needs_compile(w);
                        burst.get_or_insert_with(|| Burst::new(DEBOUNCE, MAX_DELAY)).extend();
                    }
                    Some(Note::Changed(w)) => if engine.needs_compile(w) {
                        burst.get_or_insert_with(|| Burst::new(DEBOUNCE, MAX_DELAY)).extend();
                    },
                    // Every reflector task ended: nothing will change any more.
                    None => break,
                },
                () = sleep_until(due), if due.is_some() => {
                    burst = None;
                    engine.rebuild().await;
                }
                _ = waiting.tick(), if engine.tx.is_none() => {
                    warn!(
                        waited_s = started.elapsed().as_secs(),
                        "not ready: no config yet, waiting for {}",
                        engine.missing()
                    );
                }
            }
        }
        tasks.abort_all();
    }

    /// One reflector per watched resource, each driven by its own task.
    fn start_reflectors(
        &self,
        tasks: &mut JoinSet<()>,
        notes: &mpsc::UnboundedSender<Note>,
    ) -> Stores {
        let kind_api = |resource: &ApiResource| match &self.options.watch_namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, resource),
            None => Api::<DynamicObject>::all_with(self.client.clone(), resource),
        };
        let mut spawn_kind = |watched: Watched, resource: ApiResource| {
            // DynamicObject's dynamic type is the resource: the writer is given it.
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let stream = watcher(kind_api(&resource), watcher::Config::default())
                .modify(strip_object)
                .default_backoff();
            tasks.spawn(drive(watched, reflector::reflector(writer, stream), notes.clone()));
            store
        };
        let inbound = spawn_kind(Watched::Inbound, ApiResource::erase::<InboundTrunk>(&()));
        let outbound = spawn_kind(Watched::Outbound, ApiResource::erase::<OutboundTrunk>(&()));
        let transfers =
            spawn_kind(Watched::Transfers, ApiResource::erase::<TransferDestination>(&()));

        let (bundle, writer) = reflector::store::<Secret>();
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.options.credentials_secret));
        let stream = watcher(secrets, config)
            .modify(|s: &mut Secret| s.metadata.managed_fields = None)
            .default_backoff();
        tasks.spawn(drive(Watched::Bundle, reflector::reflector(writer, stream), notes.clone()));
        Stores { inbound, outbound, transfers, bundle }
    }

    fn observe(&self, published: bool) {
        if let Some(o) = &self.on_reload {
            (o.0)(published);
        }
    }

    fn bundle_name(&self) -> String {
        format!("{}/{}", self.namespace, self.options.credentials_secret)
    }
}

/// What the watched resources are; the index of each in [`Engine::listed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Inbound,
    Outbound,
    Transfers,
    Bundle,
}

const WATCHED: usize = 4;

impl Watched {
    fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> &'static str {
        match self {
            Watched::Inbound => "InboundTrunks",
            Watched::Outbound => "OutboundTrunks",
            Watched::Transfers => "TransferDestinations",
            Watched::Bundle => "the credentials Secret",
        }
    }
}

/// What a reflector task tells the compile loop.
#[derive(Debug)]
enum Note {
    /// A (re)list completed: the store holds everything the API server listed.
    Listed(Watched),
    /// An object was added, changed or deleted.
    Changed(Watched),
}

/// Drives one reflector: the store is updated by the stream itself; this tells the loop.
async fn drive<K, S>(watched: Watched, stream: S, notes: mpsc::UnboundedSender<Note>)
where
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let note = match event {
            Ok(watcher::Event::InitDone) => Note::Listed(watched),
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Note::Changed(watched),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Err(e) => {
                let error = match (watched, &e) {
                    // A serde message may quote what it could not read: not for a Secret.
                    (Watched::Bundle, watcher::Error::WatchFailed(kube::Error::SerdeError(_)))
                    | (
                        Watched::Bundle,
                        watcher::Error::InitialListFailed(kube::Error::SerdeError(_)),
                    ) => "the Secret did not deserialise".to_string(),
                    _ => e.to_string(),
                };
                if failing {
                    debug!(error, "watch of {} still failing: retrying", watched.describe());
                } else {
                    warn!(
                        error,
                        "watch of {} failed: retrying with backoff, the current config stays",
                        watched.describe()
                    );
                }
                failing = true;
                continue;
            }
        };
        if failing {
            info!("watch of {} works again", watched.describe());
            failing = false;
        }
        if notes.send(note).is_err() {
            return;
        }
    }
}

/// Drops what compile never reads, so the stores hold less: managed fields, annotations
/// (`last-applied-configuration` is a second copy of the spec), labels and status.
fn strip_object(object: &mut DynamicObject) {
    object.metadata.managed_fields = None;
    object.metadata.annotations = None;
    object.metadata.labels = None;
    if let Some(map) = object.data.as_object_mut() {
        map.remove("status");
    }
}

struct Stores {
    inbound: Store<DynamicObject>,
    outbound: Store<DynamicObject>,
    transfers: Store<DynamicObject>,
    bundle: Store<Secret>,
}

/// Why the bundle cannot be used (logged when it changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BundleProblem {
    Missing,
    NoNonceKey,
}

/// What has been logged, so each thing is logged when it changes.
#[derive(Default)]
struct Logged {
    verdicts: BTreeMap<ObjectKey, Verdict>,
    bundle: Option<BundleProblem>,
    bad_keys: Vec<String>,
    nonce_key_changed: bool,
}

struct Engine {
    source: KubeSource,
    stores: Stores,
    listed: [bool; WATCHED],
    tx: Option<watch::Sender<Arc<Snapshot>>>,
    ready_tx: Option<oneshot::Sender<Ready>>,
    /// The nonce key given with the first snapshot.
    nonce_key: Option<[u8; NONCE_KEY_LEN]>,
    logged: Logged,
    fleet: Fleet,
    /// What the last rebuild deserialised and compiled, so the next redoes only what changed.
    incremental: Arc<std::sync::Mutex<Incremental>>,
    /// Where replaced snapshots go (started with the first replacement).
    retired: Option<Retired>,
}

/// The membership side of the bundle (module docs).
struct Fleet {
    tx: watch::Sender<Members>,
    /// The bundle Secret as last seen by [`Engine::needs_compile`].
    seen: Option<Arc<Secret>>,
    /// An unreadable membership was logged (logged once until it reads again).
    unreadable: bool,
}

/// Whether the bundle went from `before` to `now` in a way compile sees: it appeared, went, or
/// any of its data but the membership changed.
fn bundle_needs_compile(before: Option<&Secret>, now: Option<&Secret>) -> bool {
    fn compiled(secret: &Secret) -> impl Iterator<Item = (&String, &k8s_openapi::ByteString)> {
        secret.data.iter().flatten().filter(|(k, _)| k.as_str() != FLEET_MEMBERS_KEY)
    }
    match (before, now) {
        (Some(before), Some(now)) => !compiled(before).eq(compiled(now)),
        (None, None) => false,
        _ => true,
    }
}

impl Engine {
    /// What the first snapshot still waits for, for the log.
    fn missing(&self) -> String {
        let mut missing: Vec<String> = [Watched::Inbound, Watched::Outbound, Watched::Transfers, Watched::Bundle]
            .into_iter()
            .filter(|w| !self.listed[w.index()])
            .map(|w| format!("the first list of {} (is the API server reachable, may this pod's service account list them?)", w.describe()))
            .collect();
        if self.listed[Watched::Bundle.index()] {
            match self.logged.bundle {
                Some(BundleProblem::Missing) => missing.push(format!(
                    "the credentials Secret {} (the operator writes it)",
                    self.source.bundle_name()
                )),
                Some(BundleProblem::NoNonceKey) => missing.push(format!(
                    "a usable {NONCE_KEY} in the credentials Secret {}",
                    self.source.bundle_name()
                )),
                None => {}
            }
        }
        if missing.is_empty() { "the first compile".to_string() } else { missing.join(", ") }
    }

    fn bundle_problem(&mut self, problem: BundleProblem) {
        if self.logged.bundle == Some(problem) {
            return;
        }
        self.logged.bundle = Some(problem);
        let name = self.source.bundle_name();
        let keeping = self.tx.as_ref().map(|tx| tx.borrow().hash.clone());
        match (problem, keeping) {
            (BundleProblem::Missing, None) => warn!(
                "not ready: the credentials Secret {name} does not exist yet (the operator writes it)"
            ),
            (BundleProblem::Missing, Some(hash)) => {
                warn!("the credentials Secret {name} is gone: keeping config {hash}");
                self.source.observe(false);
            }
            (BundleProblem::NoNonceKey, _) => warn!(
                "not ready: the credentials Secret {name} has no usable {NONCE_KEY} ({NONCE_KEY_LEN} bytes)"
            ),
        }
    }

    /// Takes a store event of `watched`: publishes the bundle's membership when it is the
    /// bundle; `true` when a compile is needed (any change but one of the membership alone).
    fn needs_compile(&mut self, watched: Watched) -> bool {
        if watched != Watched::Bundle {
            return true;
        }
        let name = &self.source.options.credentials_secret;
        let current = self
            .stores
            .bundle
            .state()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
        if let Some(secret) = &current {
            self.publish_members(secret);
        }
        let changed = bundle_needs_compile(self.fleet.seen.as_deref(), current.as_deref());
        self.fleet.seen = current;
        changed
    }

    /// Publishes the membership of `bundle` when it differs from the one published.
    fn publish_members(&mut self, bundle: &Secret) {
        let members: Members = match read_fleet_members(bundle) {
            Membership::Unknown => None,
            Membership::Members(m) => Some(m.into()),
            Membership::Unreadable => {
                if !self.fleet.unreadable {
                    warn!(
                        "the {FLEET_MEMBERS_KEY} of the credentials Secret {} does not parse: keeping the fleet membership this pod had",
                        self.source.bundle_name()
                    );
                }
                self.fleet.unreadable = true;
                return;
            }
        };
        self.fleet.unreadable = false;
        self.fleet.tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            match &members {
                Some(m) => info!(members = m.len(), "fleet membership: {} gateway pods", m.len()),
                None => info!(
                    "no fleet membership in the credentials Secret: the limits are this pod's alone"
                ),
            }
            *current = members;
            true
        });
    }

    /// Compiles the stores and publishes the snapshot if its hash is new.
    async fn rebuild(&mut self) {
        if !self.listed.iter().all(|l| *l) {
            return;
        }
        let name = &self.source.options.credentials_secret;
        let Some(secret) = self
            .stores
            .bundle
            .state()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        else {
            self.bundle_problem(BundleProblem::Missing);
            return;
        };
        let bundle = read_bundle(&secret);
        self.log_bundle(&bundle);
        let nonce_key = match (self.nonce_key, bundle.nonce_key) {
            (None, None) => {
                self.bundle_problem(BundleProblem::NoNonceKey);
                return;
            }
            (None, Some(key)) => key,
            (Some(used), found) => {
                if found != Some(used) && !self.logged.nonce_key_changed {
                    warn!(
                        "the {NONCE_KEY} of the credentials Secret {} changed: this pod keeps the key it started with until it restarts",
                        self.source.bundle_name()
                    );
                }
                self.logged.nonce_key_changed = found != Some(used);
                used
            }
        };
        if self.logged.bundle.take().is_some() && self.tx.is_some() {
            info!("the credentials Secret {} is back", self.source.bundle_name());
        }

        let objects = Objects {
            inbound: self.stores.inbound.state(),
            outbound: self.stores.outbound.state(),
            transfers: self.stores.transfers.state(),
        };
        let options = self.source.compile.clone();
        let secrets = bundle.secrets;
        let incremental = Arc::clone(&self.incremental);
        let snapshot = match tokio::task::spawn_blocking(move || {
            // A panic in an earlier rebuild leaves caches that are merely stale: still usable.
            let mut incremental = incremental.lock().unwrap_or_else(|e| e.into_inner());
            build_snapshot(&objects, secrets, &options, &mut incremental)
        })
        .await
        {
            Ok(snapshot) => snapshot,
            Err(e) => {
                error!(error = %e, "compile task failed: keeping the current config");
                return;
            }
        };
        let changed = self.tx.as_ref().is_none_or(|tx| tx.borrow().hash != snapshot.hash);
        self.log_verdicts(&snapshot, changed);
        if !changed {
            debug!(config = %snapshot.hash, "the specs changed, the config did not");
            return;
        }
        let snapshot = Arc::new(snapshot);
        match &self.tx {
            Some(tx) => {
                let old = tx.send_replace(snapshot);
                self.retired.get_or_insert_with(Retired::spawn).retire(old);
                self.source.observe(true);
            }
            None => {
                let (tx, rx) = watch::channel(snapshot);
                self.tx = Some(tx);
                self.nonce_key = Some(nonce_key);
                if let Some(ready) = self.ready_tx.take() {
                    // Nobody waiting: serve gave up; the source still runs until shut down.
                    let _ = ready.send(Ready { snapshots: rx, nonce_key });
                }
            }
        }
    }

    fn log_bundle(&mut self, bundle: &Bundle) {
        if bundle.bad_keys != self.logged.bad_keys {
            for key in &bundle.bad_keys {
                warn!(
                    key,
                    "the credentials Secret {} holds an unreadable entry: the objects using it are refused",
                    self.source.bundle_name()
                );
            }
            self.logged.bad_keys.clone_from(&bundle.bad_keys);
        }
    }

    /// Logs every verdict that is new or changed, and a summary when the config changed.
    fn log_verdicts(&mut self, snapshot: &Snapshot, config_changed: bool) {
        let mut now = BTreeMap::new();
        for verdict in &snapshot.verdicts {
            if self.logged.verdicts.get(&verdict.object) != Some(verdict) {
                log_verdict(verdict, None);
            }
            now.insert(verdict.object.clone(), verdict.clone());
        }
        for gone in self.logged.verdicts.keys().filter(|k| !now.contains_key(*k)) {
            debug!(object = %gone, "deleted");
        }
        self.logged.verdicts = now;
        if config_changed {
            let table = &snapshot.table;
            let refused = snapshot.verdicts.iter().filter(|v| v.state == State::Refused).count();
            info!(
                inbound = table.inbound.len(),
                outbound = table.outbound.len(),
                transfers = table.transfers.len(),
                refused,
                "loaded {} trunks, {} numbers, config {}",
                table.inbound.len() + table.outbound.len(),
                table.number_count(),
                snapshot.hash,
            );
        }
    }
}

/// The objects of the three stores, as listed.
struct Objects {
    inbound: Vec<Arc<DynamicObject>>,
    outbound: Vec<Arc<DynamicObject>>,
    transfers: Vec<Arc<DynamicObject>>,
}

/// What [`build_snapshot`] keeps between rebuilds: each object as deserialised, with the
/// stored object it came from (the reflector's store gives a new `Arc` for every object that
/// changed, and the same one for the others), and the compiler's per-trunk outcomes.
#[derive(Default)]
struct Incremental {
    inbound: TypedCache<InboundTrunk>,
    outbound: TypedCache<OutboundTrunk>,
    transfers: TypedCache<TransferDestination>,
    compiler: Compiler,
}

/// Deserialised objects by namespace and name, with the stored object each came from.
type TypedCache<T> = BTreeMap<(Option<String>, Option<String>), (Arc<DynamicObject>, Typed<T>)>;

type Typed<T> = Result<T, Box<Verdict>>;

/// Deserialises the objects of one store, reusing those whose stored object is the same `Arc`
/// as last time; the cache is left holding this store's objects only.
fn typed_all<T>(
    kind: Kind,
    objects: &[Arc<DynamicObject>],
    cache: &mut TypedCache<T>,
    into: &mut Vec<T>,
    refused: &mut Vec<Verdict>,
) where
    T: DeserializeOwned + kube::Resource + Clone,
{
    let mut kept = TypedCache::new();
    for object in objects {
        let id = (object.metadata.namespace.clone(), object.metadata.name.clone());
        let typed = match cache.remove(&id) {
            Some((stored, typed)) if Arc::ptr_eq(&stored, object) => typed,
            _ => typed::<T>(kind, object),
        };
        match &typed {
            Ok(o) => into.push(o.clone()),
            Err(v) => refused.push((**v).clone()),
        }
        kept.insert(id, (Arc::clone(object), typed));
    }
    *cache = kept;
}

/// Specs from the stores and the bundle's Secrets, compiled. An object that does not
/// deserialise gets a refused verdict of its own and is left out. Pure but for `incremental`,
/// which makes it redo only what changed since the last call and changes nothing in the result.
fn build_snapshot(
    objects: &Objects,
    secrets: SecretStore,
    options: &CompileOptions,
    incremental: &mut Incremental,
) -> Snapshot {
    let started = std::time::Instant::now();
    let mut specs = Specs { secrets, ..Specs::default() };
    let mut refused = Vec::new();
    let cache = &mut *incremental;
    typed_all(
        Kind::InboundTrunk,
        &objects.inbound,
        &mut cache.inbound,
        &mut specs.inbound,
        &mut refused,
    );
    typed_all(
        Kind::OutboundTrunk,
        &objects.outbound,
        &mut cache.outbound,
        &mut specs.outbound,
        &mut refused,
    );
    typed_all(
        Kind::TransferDestination,
        &objects.transfers,
        &mut cache.transfers,
        &mut specs.transfers,
        &mut refused,
    );
    let typed_time = started.elapsed();
    let compiled = cache.compiler.compile(&specs, options);
    let compile_time = started.elapsed();
    let mut verdicts = compiled.verdicts;
    verdicts.extend(refused);
    verdicts.sort_by(|a, b| a.object.cmp(&b.object));
    let hash = compiled.table.config_hash();
    debug!(
        typed_ms = typed_time.as_millis(),
        compile_ms = (compile_time - typed_time).as_millis(),
        hash_ms = (started.elapsed() - compile_time).as_millis(),
        "objects read and compiled"
    );
    Snapshot { hash, table: Arc::new(compiled.table), verdicts, loaded_at: SystemTime::now() }
}

/// A trunkline object from its dynamic form; a refused verdict naming the field when it does
/// not deserialise.
fn typed<T>(kind: Kind, object: &DynamicObject) -> Result<T, Box<Verdict>>
where
    T: DeserializeOwned + kube::Resource,
{
    let namespace =
        object.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let key =
        ObjectKey::new(kind, namespace.clone(), object.metadata.name.clone().unwrap_or_default());
    let refuse = |field: String, message: String| {
        Box::new(Verdict::refused_invalid_spec(
            key.clone(),
            object.metadata.generation,
            field,
            message,
        ))
    };
    let value = serde_json::to_value(object).map_err(|e| refuse(String::new(), e.to_string()))?;
    let mut typed: T =
        manifest::typed(&value).map_err(|(field, message)| refuse(field, message))?;
    typed.meta_mut().namespace = Some(namespace);
    Ok(typed)
}

#[cfg(test)]
mod tests {
    //! The source against kube's mock service: a scripted API server answers each LIST with a
    //! list, holds each WATCH until the test pushes an event (answered as a newline-delimited
    //! JSON body, after which the watcher watches again from that event's resourceVersion), and
    //! records every request (all of them GETs: the source never writes).

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use k8s_openapi::ByteString;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::diagnostic::Reason;
    use crate::config::model::InboundDigest;
    use crate::config::number::E164;
    use crate::fixtures::{
        self, Recorded, Responder, mock_client, ok, status_response, watch_event,
    };

    const NAMESPACE: &str = "trunkline";
    const BUNDLE: &str = "gw-creds";
    const NONCE: [u8; NONCE_KEY_LEN] = [9; NONCE_KEY_LEN];
    /// Longer than a debounce, a compile and a PATCH; bounds every wait for something.
    const SOON: Duration = Duration::from_secs(5);
    /// How long "nothing happens" is watched for: several debounces.
    const QUIET: Duration = Duration::from_millis(1200);

    /// The resources the source asks for, by the path of their collection.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Res {
        Inbound,
        Outbound,
        Transfers,
        Secrets,
    }

    impl Res {
        fn of(path: &str) -> Option<Res> {
            match path {
                "/apis/trunkline.dev/v1alpha1/inboundtrunks" => Some(Res::Inbound),
                "/apis/trunkline.dev/v1alpha1/outboundtrunks" => Some(Res::Outbound),
                "/apis/trunkline.dev/v1alpha1/transferdestinations" => Some(Res::Transfers),
                p if p == format!("/api/v1/namespaces/{NAMESPACE}/secrets") => Some(Res::Secrets),
                _ => None,
            }
        }
    }

    /// What the test tells the scripted API server.
    enum Cmd {
        /// A watch event (`ADDED`, `MODIFIED`, `DELETED`) for the next WATCH of `Res`.
        Event(Res, &'static str, Value),
        /// The next WATCH of `Res` fails with a 500.
        FailWatch(Res),
    }

    /// The scripted API server's state.
    struct ApiServer {
        lists: BTreeMap<Res, Vec<Value>>,
        /// WATCH requests waiting for an event, per resource.
        waiting: BTreeMap<Res, VecDeque<Responder>>,
        /// What the next WATCH of a resource gets, when no WATCH was waiting.
        queued: BTreeMap<Res, VecDeque<Cmd>>,
        /// Every request, as `METHOD /path?query`.
        requests: Vec<String>,
    }

    /// The test's side: the source's client and the server's state.
    struct Fake {
        client: Client,
        server: Arc<Mutex<ApiServer>>,
    }

    impl Fake {
        /// An API server that lists `inbound` trunks and, when given, the bundle Secret.
        fn start(inbound: Vec<Value>, bundle: Option<Value>) -> Fake {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("trunkline=debug")
                .with_test_writer()
                .try_init();
            let (client, handle) = mock_client();
            let mut lists = BTreeMap::new();
            lists.insert(Res::Inbound, inbound);
            lists.insert(Res::Outbound, Vec::new());
            lists.insert(Res::Transfers, Vec::new());
            lists.insert(Res::Secrets, bundle.into_iter().collect());
            let server = Arc::new(Mutex::new(ApiServer {
                lists,
                waiting: BTreeMap::new(),
                queued: BTreeMap::new(),
                requests: Vec::new(),
            }));
            let serving = server.clone();
            fixtures::serve(handle, move |request, send| {
                serving.lock().unwrap().answer(request, send);
            });
            Fake { client, server }
        }

        fn source(&self) -> Running {
            let options = KubeSourceOptions {
                credentials_secret: BUNDLE.into(),
                pod_namespace: Some(NAMESPACE.into()),
                watch_namespace: None,
            };
            KubeSource::new(self.client.clone(), options, CompileOptions::default())
                .spawn(std::future::pending())
        }

        fn event(&self, res: Res, type_: &'static str, object: Value) {
            self.command(Cmd::Event(res, type_, object));
        }

        fn command(&self, cmd: Cmd) {
            self.server.lock().unwrap().command(cmd);
        }

        fn requests(&self) -> Vec<String> {
            self.server.lock().unwrap().requests.clone()
        }
    }

    impl ApiServer {
        fn command(&mut self, cmd: Cmd) {
            let res = match &cmd {
                Cmd::Event(res, ..) | Cmd::FailWatch(res) => *res,
            };
            match self.waiting.get_mut(&res).and_then(VecDeque::pop_front) {
                Some(send) => answer_watch(send, cmd),
                None => self.queued.entry(res).or_default().push_back(cmd),
            }
        }

        fn answer(&mut self, request: &Recorded, send: Responder) {
            self.requests.push(request.line_with_query());
            let Some(res) = Res::of(&request.path).filter(|_| request.method == http::Method::GET)
            else {
                send.send_response(status_response(404, "NotFound", "not scripted"));
                return;
            };
            if request.is_watch() {
                match self.queued.get_mut(&res).and_then(VecDeque::pop_front) {
                    Some(cmd) => answer_watch(send, cmd),
                    None => self.waiting.entry(res).or_default().push_back(send),
                }
            } else {
                let items = self.lists.get(&res).cloned().unwrap_or_default();
                let list = json!({
                    "apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                });
                send.send_response(ok(&list));
            }
        }
    }

    fn answer_watch(send: Responder, cmd: Cmd) {
        match cmd {
            Cmd::Event(_, type_, object) => send.send_response(watch_event(type_, &object)),
            Cmd::FailWatch(_) => send.send_response(status_response(
                500,
                "InternalError",
                "the API server is restarting",
            )),
        }
    }

    /// An InboundTrunk in namespace `voice` with digest credentials from Secret `secret`.
    fn trunk(name: &str, numbers: &[&str], secret: &str, version: u32) -> Value {
        let numbers: Vec<Value> =
            numbers.iter().map(|n| json!({"number": n, "agent": "support"})).collect();
        json!({
            "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
            "metadata": {
                "name": name, "namespace": "voice", "uid": format!("uid-{name}"),
                "resourceVersion": version.to_string(), "generation": version,
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "numbers": numbers,
                "destination": {"uri": "sip:agents.example.com:5070"},
                "auth": {"digest": {"secretRef": {"name": secret}}},
            },
        })
    }

    /// The operator's bundle with `acme-creds` in `voice` and the nonce key.
    fn bundle(version: u32) -> Value {
        let mut data = BTreeMap::new();
        data.insert(NONCE_KEY.to_string(), ByteString(NONCE.to_vec()));
        data.insert(
            "voice.acme-creds".to_string(),
            ByteString(br#"{"username":"acme-user","password":"s3cret-acme"}"#.to_vec()),
        );
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(BUNDLE.into()),
                namespace: Some(NAMESPACE.into()),
                resource_version: Some(version.to_string()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        let mut value = serde_json::to_value(secret).unwrap();
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("Secret");
        value
    }

    fn routes(snapshot: &Snapshot, number: &str) -> bool {
        snapshot.table.number_owner(&E164::parse_canonical(number).unwrap()).is_some()
    }

    async fn ready(running: &mut Running) -> Ready {
        tokio::time::timeout(SOON, running.ready())
            .await
            .expect("a first config within 5 s")
            .unwrap()
    }

    async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
        tokio::time::timeout(SOON, rx.changed()).await.expect("a new snapshot within 5 s").unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn a_listed_trunk_is_served_with_the_bundles_credentials_and_nonce_key() {
        let fake = Fake::start(
            vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)],
            Some(bundle(1)),
        );
        let mut running = fake.source();
        let first = ready(&mut running).await;
        assert_eq!(first.nonce_key, NONCE);
        let snapshot = first.snapshots.borrow().clone();
        assert!(routes(&snapshot, "+14155550100"));
        let trunk = snapshot.table.trunk_by_digest_user("acme-user").expect("the bundle's user");
        match &trunk.digest {
            Some(InboundDigest::Ready { credentials, .. }) => {
                assert_eq!(credentials.password.expose(), "s3cret-acme")
            }
            other => panic!("digest not ready: {other:?}"),
        }
        assert_eq!(snapshot.hash, snapshot.table.config_hash());

        let requests = fake.requests();
        assert!(requests.iter().all(|r| r.starts_with("GET ")), "only reads: {requests:?}");
        let listed = |prefix: &str| {
            requests.iter().any(|r| r.starts_with(prefix) && !r.contains("watch=true"))
        };
        // The three kinds in every namespace; the one Secret by name, in the pod's namespace.
        assert!(listed("GET /apis/trunkline.dev/v1alpha1/inboundtrunks?"), "{requests:?}");
        assert!(listed("GET /apis/trunkline.dev/v1alpha1/outboundtrunks?"), "{requests:?}");
        assert!(listed("GET /apis/trunkline.dev/v1alpha1/transferdestinations?"), "{requests:?}");
        let secrets: Vec<&String> = requests.iter().filter(|r| r.contains("/secrets")).collect();
        assert!(!secrets.is_empty());
        for r in secrets {
            assert!(
                r.starts_with("GET /api/v1/namespaces/trunkline/secrets?")
                    && r.contains("fieldSelector=metadata.name%3Dgw-creds"),
                "{r}"
            );
        }
        running.abort();
    }

    #[tokio::test]
    async fn a_watched_change_publishes_a_new_snapshot() {
        let fake = Fake::start(
            vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)],
            Some(bundle(1)),
        );
        let mut running = fake.source();
        let Ready { mut snapshots, .. } = ready(&mut running).await;
        let first = snapshots.borrow_and_update().clone();

        // A number added to the trunk.
        fake.event(
            Res::Inbound,
            "MODIFIED",
            trunk("acme-in", &["+14155550100", "+14155550101"], "acme-creds", 2),
        );
        let second = next(&mut snapshots).await;
        assert!(routes(&second, "+14155550101") && routes(&second, "+14155550100"));
        assert_ne!(second.hash, first.hash);

        // A new trunk (address-only: it needs no credentials from the bundle).
        let mut other = trunk("other-in", &["+14155550200"], "unused", 3);
        other["spec"]["auth"] = json!({"allowedAddresses": ["203.0.113.0/24"]});
        fake.event(Res::Inbound, "ADDED", other);
        let third = next(&mut snapshots).await;
        assert!(routes(&third, "+14155550200") && routes(&third, "+14155550101"));
        assert_ne!(third.hash, second.hash);

        // A change that changes no table (a label: the generation stays) publishes nothing.
        let mut relabelled = trunk("acme-in", &["+14155550100", "+14155550101"], "acme-creds", 4);
        relabelled["metadata"]["labels"] = json!({"team": "voice"});
        relabelled["metadata"]["generation"] = json!(2);
        fake.event(Res::Inbound, "MODIFIED", relabelled);
        assert!(tokio::time::timeout(QUIET, snapshots.changed()).await.is_err());

        // A deleted trunk leaves the table.
        fake.event(Res::Inbound, "DELETED", trunk("other-in", &["+14155550200"], "unused", 5));
        let fourth = next(&mut snapshots).await;
        assert!(!routes(&fourth, "+14155550200") && routes(&fourth, "+14155550101"));
        running.abort();
    }

    #[tokio::test]
    async fn a_refused_object_does_not_stop_the_others() {
        let mut broken = trunk("broken-in", &["+14155550300"], "acme-creds", 1);
        broken["spec"]["numbers"] = json!("+14155550300");
        let fake = Fake::start(
            vec![
                trunk("acme-in", &["+14155550100"], "acme-creds", 1),
                broken,
                // Its Secret is not in the bundle: refused by compile (ResolvedRefs).
                trunk("orphan-in", &["+14155550400"], "missing-creds", 1),
            ],
            Some(bundle(1)),
        );
        let mut running = fake.source();
        let snapshot = ready(&mut running).await.snapshots.borrow().clone();
        assert!(routes(&snapshot, "+14155550100"));
        assert!(!routes(&snapshot, "+14155550300") && !routes(&snapshot, "+14155550400"));
        let verdict = |name: &str| {
            let key = ObjectKey::new(Kind::InboundTrunk, "voice", name);
            snapshot.verdicts.iter().find(|v| v.object == key).cloned().expect("a verdict")
        };
        assert_eq!(verdict("acme-in").state, State::Accepted);
        let broken = verdict("broken-in");
        assert_eq!(broken.state, State::Refused);
        assert_eq!(broken.diagnostics[0].field, "spec.numbers");
        assert_eq!(broken.diagnostics[0].reason, Reason::InvalidSpec);
        let orphan = verdict("orphan-in");
        assert_eq!(orphan.state, State::Refused);
        assert!(orphan.diagnostics.iter().any(|d| d.message.contains("missing-creds")));
        running.abort();
    }

    #[tokio::test]
    async fn without_the_bundle_there_is_no_config_until_it_appears() {
        let fake = Fake::start(vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)], None);
        let mut running = fake.source();
        let waited = tokio::time::timeout(QUIET, running.ready()).await;
        assert!(waited.is_err(), "ready without the credentials Secret");

        fake.event(Res::Secrets, "ADDED", bundle(2));
        let first = ready(&mut running).await;
        assert_eq!(first.nonce_key, NONCE);
        let snapshot = first.snapshots.borrow().clone();
        assert!(snapshot.table.trunk_by_digest_user("acme-user").is_some());
        running.abort();
    }

    #[tokio::test]
    async fn a_bundle_without_a_nonce_key_is_not_ready() {
        let mut keyless = bundle(1);
        keyless["data"].as_object_mut().unwrap().remove(NONCE_KEY);
        let fake =
            Fake::start(vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)], Some(keyless));
        let mut running = fake.source();
        assert!(tokio::time::timeout(QUIET, running.ready()).await.is_err());
        fake.event(Res::Secrets, "MODIFIED", bundle(2));
        assert_eq!(ready(&mut running).await.nonce_key, NONCE);
        running.abort();
    }

    #[tokio::test]
    async fn a_failing_watch_keeps_the_table_and_recovers() {
        let fake = Fake::start(
            vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)],
            Some(bundle(1)),
        );
        let mut running = fake.source();
        let Ready { mut snapshots, .. } = ready(&mut running).await;
        let first = snapshots.borrow_and_update().clone();

        fake.command(Cmd::FailWatch(Res::Inbound));
        fake.command(Cmd::FailWatch(Res::Secrets));
        assert!(tokio::time::timeout(QUIET, snapshots.changed()).await.is_err());
        assert_eq!(snapshots.borrow().hash, first.hash);

        // Retried after the backoff: the next event gets through.
        fake.event(
            Res::Inbound,
            "MODIFIED",
            trunk("acme-in", &["+14155550100", "+14155550102"], "acme-creds", 2),
        );
        let next = next(&mut snapshots).await;
        assert!(routes(&next, "+14155550102"));
        running.abort();
    }

    /// [`bundle`] with the membership `members` under `fleet-members`.
    fn bundle_with_members(version: u32, members: &[&str]) -> Value {
        let mut value = bundle(version);
        let names: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        let encoded =
            serde_json::to_value(super::super::bundle::render_fleet_members(&names)).unwrap();
        value["data"][FLEET_MEMBERS_KEY] = encoded;
        value
    }

    fn names(members: &Members) -> Option<Vec<String>> {
        members.as_ref().map(|m| m.to_vec())
    }

    #[tokio::test]
    async fn the_fleet_membership_is_published_apart_from_the_config() {
        let fake = Fake::start(
            vec![trunk("acme-in", &["+14155550100"], "acme-creds", 1)],
            Some(bundle_with_members(1, &["gw-b", "gw-a"])),
        );
        let mut running = fake.source();
        let mut members = running.members();
        let Ready { mut snapshots, .. } = ready(&mut running).await;
        let first = snapshots.borrow_and_update().clone();
        assert_eq!(names(&members.borrow_and_update()), Some(vec!["gw-a".into(), "gw-b".into()]));

        // gw-b left: the membership changes, the config does not.
        fake.event(Res::Secrets, "MODIFIED", bundle_with_members(2, &["gw-a"]));
        tokio::time::timeout(SOON, members.changed()).await.expect("within 5 s").unwrap();
        assert_eq!(names(&members.borrow_and_update()), Some(vec!["gw-a".into()]));
        assert!(tokio::time::timeout(QUIET, snapshots.changed()).await.is_err());
        assert_eq!(snapshots.borrow().hash, first.hash);

        // An unreadable membership keeps the last one; a bundle without one: the whole limits.
        let mut broken = bundle(3);
        broken["data"][FLEET_MEMBERS_KEY] = json!(BASE64.encode("not json"));
        fake.event(Res::Secrets, "MODIFIED", broken);
        assert!(tokio::time::timeout(QUIET, members.changed()).await.is_err());
        fake.event(Res::Secrets, "MODIFIED", bundle(4));
        tokio::time::timeout(SOON, members.changed()).await.expect("within 5 s").unwrap();
        assert_eq!(names(&members.borrow_and_update()), None);
        running.abort();
    }

    #[test]
    fn only_a_change_of_the_credentials_or_the_nonce_key_needs_a_compile() {
        let secret = |v: Value| -> Secret { serde_json::from_value(v).unwrap() };
        let a = secret(bundle_with_members(1, &["gw-a", "gw-b"]));
        let fewer = secret(bundle_with_members(2, &["gw-a"]));
        let none = secret(bundle(3));
        assert!(!bundle_needs_compile(Some(&a), Some(&fewer)));
        assert!(!bundle_needs_compile(Some(&a), Some(&none)), "the key removed");
        let mut rotated = bundle_with_members(4, &["gw-a"]);
        rotated["data"]["voice.acme-creds"] =
            json!(BASE64.encode(r#"{"username":"acme-user","password":"rotated"}"#));
        assert!(bundle_needs_compile(Some(&fewer), Some(&secret(rotated))));
        assert!(bundle_needs_compile(None, Some(&a)));
        assert!(bundle_needs_compile(Some(&a), None));
        assert!(!bundle_needs_compile(None, None));
    }

    #[test]
    fn the_stores_lose_what_compile_never_reads() {
        let value = trunk("acme-in", &["+14155550100"], "acme-creds", 1);
        let mut object: DynamicObject = serde_json::from_value(value).unwrap();
        object.metadata.annotations = Some(
            [("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string())]
                .into(),
        );
        object.data["status"] = json!({"conditions": []});
        strip_object(&mut object);
        assert!(object.metadata.managed_fields.is_none() && object.metadata.annotations.is_none());
        assert!(object.data.get("status").is_none() && object.data.get("spec").is_some());
        let typed: InboundTrunk = typed(Kind::InboundTrunk, &object).unwrap();
        assert_eq!(typed.spec.numbers.len(), 1);
    }
}
