//! What every reconcile shares: the stores (read side), the latest compile, the config history
//! `Programmed` is decided from, the trigger channels, and the compile step.
//!
//! **One compile per batch of changes, not per reconcile.** The index (`index.rs`) asks for a
//! compile whenever a compile input changed (a spec, a generation, a Secret's data); the compile
//! task runs [`Context::compile_step`] once per batch (debounced), publishes the result as the
//! latest [`CompileView`], and triggers exactly the objects whose verdict or place in the table
//! changed. Reconciles only read the latest view: with 10k objects, compiling per reconcile would
//! be quadratic. A reconcile that finds the view behind its object (a generation the view has not
//! compiled yet) does nothing: the next compile triggers it.
//!
//! Those verdict-diff triggers are also how cross-object effects reach the right objects: a
//! Secret created heals the trunks that reference it, a trunk deleted frees its numbers for the
//! next-oldest holder, an OutboundTrunk refused refuses the TransferDestinations that name it,
//! all without a hand-written mapping per relation (which would miss the next rule compile
//! learns).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::ControllerConfig;
use super::ReconcileError;
use crate::api::{InboundTrunk, Kind, OutboundTrunk, TransferDestination};
use crate::config::diagnostic::{ObjectKey, Verdict};
use crate::config::secret::SecretStore;
use crate::config::specs::DEFAULT_NAMESPACE;
use crate::config::{CompileOptions, Compiled, Specs, compile};
use crate::operator::FIELD_MANAGER;
use crate::operator::controller::prober::Reports;
use crate::operator::credentials::{BundleOutcome, BundleWriter};
use crate::operator::metrics::OperatorMetrics;
use crate::operator::programmed::{ConfigHistory, GatewayPod, TableGenerations, table_generations};
use crate::operator::status::FleetFacts;

/// The time source: the system clock in production, a hand-moved one in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock, to the second (what the API server keeps of a condition's time).
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let now = Timestamp::now();
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    })
}

/// The read side of every watched collection.
#[derive(Clone)]
pub struct Stores {
    pub inbound: Store<InboundTrunk>,
    pub outbound: Store<OutboundTrunk>,
    pub transfers: Store<TransferDestination>,
    /// `kubernetes.io/basic-auth` Secrets (the watch filters by type).
    pub secrets: Store<Secret>,
    /// This fleet's gateway pods.
    pub pods: Store<Pod>,
}

/// The write side, held by the index.
pub struct Writers {
    pub inbound: Writer<InboundTrunk>,
    pub outbound: Writer<OutboundTrunk>,
    pub transfers: Writer<TransferDestination>,
    pub secrets: Writer<Secret>,
    pub pods: Writer<Pod>,
}

/// A request to reconcile one object of kind `K`, or all of them.
#[derive(Debug)]
pub enum Trigger<K: Resource<DynamicType = ()>> {
    One(ObjectRef<K>),
    All,
}

/// The senders of the three reconcile queues.
pub struct Triggers {
    inbound: UnboundedSender<Trigger<InboundTrunk>>,
    outbound: UnboundedSender<Trigger<OutboundTrunk>>,
    transfers: UnboundedSender<Trigger<TransferDestination>>,
}

impl Triggers {
    pub fn inbound(&self) -> &UnboundedSender<Trigger<InboundTrunk>> {
        &self.inbound
    }
    pub fn outbound(&self) -> &UnboundedSender<Trigger<OutboundTrunk>> {
        &self.outbound
    }
    pub fn transfers(&self) -> &UnboundedSender<Trigger<TransferDestination>> {
        &self.transfers
    }
}

/// The receivers: one queue per kind, consumed by that kind's applier (or a test).
pub struct TriggerQueues {
    pub inbound: UnboundedReceiver<Trigger<InboundTrunk>>,
    pub outbound: UnboundedReceiver<Trigger<OutboundTrunk>>,
    pub transfers: UnboundedReceiver<Trigger<TransferDestination>>,
}

/// One compile of every watched object, as the reconciles read it.
#[derive(Debug)]
pub struct CompileView {
    pub compiled: Compiled,
    /// Which generation of which object the table holds.
    pub served: Arc<TableGenerations>,
    /// `RoutingTable::config_hash` of the table: what a gateway running it reports.
    pub hash: String,
}

impl CompileView {
    pub fn verdict(&self, key: &ObjectKey) -> Option<&Verdict> {
        self.compiled.verdict(key)
    }
}

/// The objects whose verdict or place in the table differs between two compiles (every object
/// of `next` when there is no `previous`). Deleted objects are not listed: nothing is left to
/// reconcile.
pub fn changed_objects(previous: Option<&CompileView>, next: &CompileView) -> Vec<ObjectKey> {
    next.compiled
        .verdicts
        .iter()
        .filter(|v| match previous {
            None => true,
            Some(p) => {
                p.verdict(&v.object) != Some(*v)
                    || p.served.get(&v.object) != next.served.get(&v.object)
            }
        })
        .map(|v| v.object.clone())
        .collect()
}

/// The names of the pods among `pods` that are Ready and not being deleted, sorted: the pods a
/// Service sends calls to (a pod draining gets none, so it holds no share of a limit).
pub fn fleet_members(pods: &[Arc<Pod>]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .map(|p| GatewayPod::from_pod(p, None))
        .filter(|p| p.ready && !p.name.is_empty())
        .map(|p| p.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A status this process wrote, and the `resourceVersion` of the object it was computed from:
/// until the store shows a newer version, the store's status is older than this one.
struct Written {
    resource_version: Option<String>,
    status: serde_json::Value,
}

/// A trunkline kind as the controller handles it.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    type Status: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    fn current_status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    /// `spec.regions`, empty for kinds without them.
    fn regions(&self) -> &[String];
    /// Whether anything compile reads differs (spec, generation, identity, age): a status-only
    /// change does not need a compile.
    fn compile_inputs_differ(&self, other: &Self) -> bool;
    fn desired_status(
        &self,
        verdict: &Verdict,
        programmed: &crate::operator::programmed::ProgrammedDecision,
        current: Option<&Self::Status>,
        fleet: &FleetFacts,
        now: &Time,
    ) -> Self::Status;
    fn store(stores: &Stores) -> &Store<Self>;
    fn sender(triggers: &Triggers) -> &UnboundedSender<Trigger<Self>>;
    /// The name of a Secret the operator must generate for this object, if any.
    fn wants_generated_secret(&self) -> Option<String> {
        None
    }
    /// A fresh generated Secret for this object.
    fn render_generated_secret(&self) -> Option<Secret> {
        None
    }
}

/// The key compile uses for an object; `None` for an object without a name.
pub fn object_key<K: Reconciled>(obj: &K) -> Option<ObjectKey> {
    let meta = obj.meta();
    Some(ObjectKey::new(
        K::KIND,
        meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        meta.name.as_deref()?,
    ))
}

/// Everything the reconciles and the compile task share.
pub struct Context {
    pub(super) client: Client,
    pub(super) config: ControllerConfig,
    pub(super) metrics: Arc<OperatorMetrics>,
    pub(super) recorder: Recorder,
    pub(super) stores: Stores,
    pub(super) clock: Clock,
    triggers: Triggers,
    /// Set by the index when a compile input changed; awaited by the compile task.
    pub(super) compile_needed: Notify,
    latest: RwLock<Option<Arc<CompileView>>>,
    history: Mutex<ConfigHistory>,
    written: Mutex<HashMap<ObjectKey, Written>>,
    failures: Mutex<HashMap<ObjectKey, u32>>,
    pub(super) bundle: tokio::sync::Mutex<BundleWriter>,
    /// The gateways' last status reports, kept by the prober.
    pub(super) reports: Reports,
    /// Set by the index when a gateway pod changed: the prober probes at once.
    pub(super) probe_now: Notify,
    /// The gateway pods as last seen by [`Context::note_fleet`].
    fleet_seen: Mutex<Vec<GatewayPod>>,
    /// Set by the index when a gateway pod changed: the membership in the bundle may have to be
    /// written again ([`Context::publish_members`]).
    pub(super) members_changed: Notify,
}

impl Context {
    /// A context with empty stores, the writers for the index, and the reconcile queues.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        metrics: Arc<OperatorMetrics>,
        clock: Clock,
    ) -> (Arc<Context>, Writers, TriggerQueues) {
        let (inbound_r, inbound_w) = kube::runtime::reflector::store();
        let (outbound_r, outbound_w) = kube::runtime::reflector::store();
        let (transfers_r, transfers_w) = kube::runtime::reflector::store();
        let (secrets_r, secrets_w) = kube::runtime::reflector::store();
        let (pods_r, pods_w) = kube::runtime::reflector::store();
        let (inbound_tx, inbound_rx) = unbounded();
        let (outbound_tx, outbound_rx) = unbounded();
        let (transfers_tx, transfers_rx) = unbounded();
        let reporter = Reporter { controller: FIELD_MANAGER.to_string(), instance: None };
        let ctx = Context {
            recorder: Recorder::new(client.clone(), reporter),
            bundle: tokio::sync::Mutex::new(BundleWriter::new(
                &config.fleet_namespace,
                &config.bundle_secret,
                config.owner_deployment.as_deref(),
            )),
            client,
            config,
            metrics,
            stores: Stores {
                inbound: inbound_r,
                outbound: outbound_r,
                transfers: transfers_r,
                secrets: secrets_r,
                pods: pods_r,
            },
            clock,
            triggers: Triggers {
                inbound: inbound_tx,
                outbound: outbound_tx,
                transfers: transfers_tx,
            },
            compile_needed: Notify::new(),
            latest: RwLock::new(None),
            history: Mutex::new(ConfigHistory::default()),
            written: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            reports: Reports::default(),
            probe_now: Notify::new(),
            fleet_seen: Mutex::new(Vec::new()),
            members_changed: Notify::new(),
        };
        let writers = Writers {
            inbound: inbound_w,
            outbound: outbound_w,
            transfers: transfers_w,
            secrets: secrets_w,
            pods: pods_w,
        };
        let queues =
            TriggerQueues { inbound: inbound_rx, outbound: outbound_rx, transfers: transfers_rx };
        (Arc::new(ctx), writers, queues)
    }

    /// The latest compile, `None` before the first.
    pub fn latest(&self) -> Option<Arc<CompileView>> {
        self.latest.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs `f` with the config history.
    pub fn with_history<T>(&self, f: impl FnOnce(&ConfigHistory) -> T) -> T {
        f(&self.history.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// This fleet's gateway pods with their last reports, by name.
    pub fn gateway_pods(&self) -> Vec<GatewayPod> {
        let mut pods: Vec<GatewayPod> = self
            .stores
            .pods
            .state()
            .iter()
            .map(|p| GatewayPod::from_pod(p, self.reports.get(p).as_ref()))
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    /// Reconciles every object when the gateway pods (readiness, reported hash or address)
    /// differ from when this was last called: `Programmed` and the addresses in every status
    /// depend on every pod. `true` when it did.
    pub fn note_fleet(&self) -> bool {
        let fleet = self.gateway_pods();
        let mut seen = self.fleet_seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *seen == fleet {
            return false;
        }
        *seen = fleet;
        drop(seen);
        self.trigger_everything();
        true
    }

    /// What this fleet puts in the status it writes, from the settings and `pods`.
    pub fn fleet_facts(&self, pods: &[GatewayPod]) -> FleetFacts {
        let c = &self.config;
        FleetFacts::from_pods(
            &c.fleet_name,
            c.region.as_deref(),
            c.carrier_endpoint.as_deref(),
            &c.source_addresses,
            c.sip_port,
            pods,
        )
    }

    /// Everything compile reads, from the stores.
    pub fn specs(&self) -> Specs {
        let mut secrets = SecretStore::default();
        for s in self.stores.secrets.state() {
            secrets.insert_secret(&s);
        }
        Specs {
            inbound: self.stores.inbound.state().iter().map(|o| (**o).clone()).collect(),
            outbound: self.stores.outbound.state().iter().map(|o| (**o).clone()).collect(),
            transfers: self.stores.transfers.state().iter().map(|o| (**o).clone()).collect(),
            secrets,
        }
    }

    /// Compiles every object, publishes the result, triggers the objects whose verdict changed,
    /// and brings the gateway credentials Secret up to date. The compile is published even when
    /// the Secret cannot be written (the error says so; the compile task retries).
    pub async fn compile_step(&self) -> Result<Arc<CompileView>, ReconcileError> {
        let started = Instant::now();
        let specs = self.specs();
        let options = CompileOptions { region: self.config.region.clone() };
        // CPU work off the async workers: the leader lease and the watches keep running while
        // a large compile does.
        let (specs, compiled, hash, served) = tokio::task::spawn_blocking(move || {
            let compiled = compile(&specs, &options);
            let hash = compiled.table.config_hash();
            let served = Arc::new(table_generations(&compiled.table));
            (specs, compiled, hash, served)
        })
        .await
        .map_err(ReconcileError::CompileTask)?;
        self.metrics.compiled(started.elapsed().as_secs_f64());
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(&hash, Arc::clone(&served));
        let view = Arc::new(CompileView { compiled, served, hash });
        let previous =
            self.latest.write().unwrap_or_else(PoisonError::into_inner).replace(Arc::clone(&view));
        let changed = changed_objects(previous.as_deref(), &view);
        tracing::debug!(
            hash = %view.hash,
            objects = view.compiled.verdicts.len(),
            changed = changed.len(),
            "compiled"
        );
        for key in changed {
            self.trigger_key(&key);
        }

        let mut bundle = self.bundle.lock().await;
        bundle.set_members(self.fleet_members());
        let outcome = bundle.apply(&self.client, &specs, &view.compiled).await;
        match &outcome {
            Ok(BundleOutcome::Applied) => {
                self.metrics.bundle_applied(true);
                tracing::info!(
                    secret = %format!("{}/{}", self.config.fleet_namespace, self.config.bundle_secret),
                    hash = %view.hash,
                    "gateway credentials Secret updated"
                );
            }
            Ok(BundleOutcome::Unchanged) => {}
            Err(_) => self.metrics.bundle_applied(false),
        }
        outcome?;
        Ok(view)
    }

    /// The fleet's membership the gateways divide the trunks' limits by: the names of this
    /// fleet's gateway pods that are Ready and not being deleted, sorted.
    pub fn fleet_members(&self) -> Vec<String> {
        fleet_members(&self.stores.pods.state())
    }

    /// Writes the bundle again when the membership changed since it was last applied (no
    /// compile: the last compile's bundle with the new membership). Before the first compile
    /// nothing is written: the first apply carries the membership.
    pub async fn publish_members(&self) -> Result<BundleOutcome, ReconcileError> {
        let members = self.fleet_members();
        let mut bundle = self.bundle.lock().await;
        bundle.set_members(members.clone());
        let outcome = bundle.write_again(&self.client).await;
        match &outcome {
            Ok(BundleOutcome::Applied) => {
                self.metrics.bundle_applied(true);
                tracing::info!(
                    secret = %format!("{}/{}", self.config.fleet_namespace, self.config.bundle_secret),
                    members = members.len(),
                    "gateway fleet membership updated: the trunks' limits are divided by {}",
                    members.len().max(1)
                );
            }
            Ok(BundleOutcome::Unchanged) => {}
            Err(_) => self.metrics.bundle_applied(false),
        }
        outcome.map_err(ReconcileError::from)
    }

    fn send<K: Reconciled>(&self, trigger: Trigger<K>) {
        // The receiver lives as long as the applier; after shutdown there is nothing to do.
        let _ = K::sender(&self.triggers).unbounded_send(trigger);
    }

    /// Queues a reconcile of one object.
    pub fn trigger<K: Reconciled>(&self, obj: ObjectRef<K>) {
        self.send(Trigger::One(obj));
    }

    /// Queues a reconcile of every object of kind `K`.
    pub fn trigger_all<K: Reconciled>(&self) {
        self.send::<K>(Trigger::All);
    }

    /// Queues a reconcile of every object of every kind.
    pub fn trigger_everything(&self) {
        self.trigger_all::<InboundTrunk>();
        self.trigger_all::<OutboundTrunk>();
        self.trigger_all::<TransferDestination>();
    }

    fn trigger_key(&self, key: &ObjectKey) {
        match key.kind {
            Kind::InboundTrunk => {
                self.trigger(ObjectRef::<InboundTrunk>::new(&key.name).within(&key.namespace))
            }
            Kind::OutboundTrunk => {
                self.trigger(ObjectRef::<OutboundTrunk>::new(&key.name).within(&key.namespace))
            }
            Kind::TransferDestination => self
                .trigger(ObjectRef::<TransferDestination>::new(&key.name).within(&key.namespace)),
        }
    }

    /// The status to compare against: the store's, unless this process wrote a newer one that
    /// the watch has not brought back yet.
    pub fn effective_status<K: Reconciled>(&self, key: &ObjectKey, obj: &K) -> Option<K::Status> {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        match written.get(key) {
            Some(w) if w.resource_version == obj.meta().resource_version => {
                serde_json::from_value(w.status.clone()).ok()
            }
            _ => obj.current_status().cloned(),
        }
    }

    /// Remembers a status written for `obj` (as it was in the store).
    pub fn remember_written<K: Reconciled>(&self, key: &ObjectKey, obj: &K, status: &K::Status) {
        if let Ok(status) = serde_json::to_value(status) {
            self.written.lock().unwrap_or_else(PoisonError::into_inner).insert(
                key.clone(),
                Written { resource_version: obj.meta().resource_version.clone(), status },
            );
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, key: &ObjectKey) {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        self.metrics.object_deleted(key);
    }

    /// Forgets every object of kind `K` the store no longer has (after a relist, where deletions
    /// come without events).
    pub fn forget_missing<K: Reconciled>(&self) {
        let present: std::collections::HashSet<ObjectKey> =
            K::store(&self.stores).state().iter().filter_map(|o| object_key(o.as_ref())).collect();
        let keep = |k: &ObjectKey| k.kind != K::KIND || present.contains(k);
        self.written.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep(k));
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep(k));
        self.metrics.objects_retain(keep);
    }

    /// Counts a failed reconcile of `key`; returns how many in a row.
    pub fn record_failure(&self, key: &ObjectKey) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn clear_failures(&self, key: &ObjectKey) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}
