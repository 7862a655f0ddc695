//! The controllers of InboundTrunk, OutboundTrunk and TransferDestination: kube-runtime wiring
//! around the pure parts (`status`, `programmed`) and the credentials writers.
//!
//! ```text
//!  watchers ──► index (stores + what each event means) ──► reconcile queues (one per kind)
//!   3 kinds, basic-auth Secrets,     │ compile input changed                │
//!   this fleet's gateway pods        ▼                                      ▼
//!                        compile task: compile once per batch,     kube applier per kind:
//!                        publish, trigger the objects whose        reconcile(object) → status
//!                        verdict changed, apply the gateway        (SSA on /status, only when
//!                        credentials Secret                        changed), events, generated
//!                                                                  credentials
//! ```
//!
//! The appliers are kube's `controller::applier` (the engine under `Controller`: scheduling,
//! deduplication, debounce, error-policy requeues) fed from our own queues, because the
//! triggers here come from the index and the compile diff rather than from one watch per
//! controller; `Controller::for_stream`/`reconcile_on` would do the same but are behind kube's
//! unstable features.
//!
//! - `context`: shared state, the compile step. `index`: watch events → stores and triggers.
//! - `prober`: fetches each gateway pod's `GET /v1/status` report (config hash, advertised
//!   address) on pod changes and every few seconds; a changed report triggers reconciles as a
//!   pod change does. Gateways never write to the API server.
//! - `reconcile`: one object's reconcile, the error policy.
//! - the membership task (`publish_members`): the Ready gateway pods, written into the gateway
//!   credentials Secret when they change, for the gateways to divide the trunks' limits by
//!   (`call::limits`, `source::bundle`).
//!
//! Entry point: [`run_controllers`], polled by the lead's assembly while this replica leads.
//! Watches: the three kinds in `watch_namespace` (all namespaces when unset); Secrets of type
//! `kubernetes.io/basic-auth` only (field selector `type=`: compile reads no other type, and
//! service-account tokens, Helm releases and TLS Secrets stay out of the operator's memory; the
//! price is that a referenced Secret of the wrong type reads as missing); the fleet's gateway
//! pods (label selector, fleet namespace).

mod context;
mod index;
pub mod prober;
mod reconcile;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

pub use context::{
    Clock, CompileView, Context, Reconciled, Trigger, TriggerQueues, changed_objects, system_clock,
};
pub use index::Index;
pub use reconcile::{error_policy, reconcile, retry_after};

use crate::api::{InboundTrunk, Kind, OutboundTrunk, TransferDestination};
use crate::config::secret::BASIC_AUTH_TYPE;
use crate::operator::credentials::CredentialsError;
use crate::operator::metrics::OperatorMetrics;
use crate::operator::programmed::gateway_pod_selector;

/// How long the compile task waits after a change before compiling, so that a burst of changes
/// (an `kubectl apply -f trunks/`, a relist) costs one compile.
pub const COMPILE_DEBOUNCE: Duration = Duration::from_millis(200);

/// How long an applier waits before running a queued reconcile, merging repeated triggers of
/// one object.
pub const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the controllers are told (the lead maps the operator's settings to it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The gateway fleet's name: its pods carry `trunkline.dev/fleet=<fleet_name>`.
    pub fleet_name: String,
    /// The namespace of the gateway pods and of the bundle Secret.
    pub fleet_namespace: String,
    /// The name of the gateway credentials Secret (`bundle`).
    pub bundle_secret: String,
    /// The fleet's region: compile leaves out objects of other regions, as the gateways do.
    pub region: Option<String>,
    /// The carrier-facing SIP address (`publicAddress` or the load balancer's), first of
    /// InboundTrunk `status.endpoints`.
    pub carrier_endpoint: Option<String>,
    /// The fleet's egress addresses written to OutboundTrunk `status.sourceAddresses`; empty:
    /// the gateways' advertised addresses are.
    pub source_addresses: Vec<String>,
    /// The gateways' SIP port, in `status.endpoints`.
    pub sip_port: u16,
    /// The gateways' admin port, where the prober fetches `/v1/status`.
    pub admin_port: u16,
    /// Watch trunkline objects and Secrets in this namespace only; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// The operator's Deployment in the fleet's namespace (`operatorDeployment`): the owner of
    /// the bundle Secret.
    pub owner_deployment: Option<String>,
    /// Which address each gateway may report (`prober`): the trunks' status lists only those.
    pub address_policy: prober::AddressPolicy,
}

/// A reconcile action that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot write the status of {kind} {namespace}/{name}: {source}")]
    PatchStatus {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Creating a generated Secret, reading or applying the gateway credentials Secret.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A status that does not serialise (a bug: status types are plain data).
    #[error("cannot serialise the status of a {kind}: {source}")]
    SerializeStatus {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
    /// The compile task did not finish (it panicked: a bug in compile).
    #[error("the compile task failed: {0}")]
    CompileTask(#[source] tokio::task::JoinError),
}

impl ReconcileError {
    /// A stable name of the failed action, for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::PatchStatus { .. } => "patch_status",
            ReconcileError::Credentials(e) => e.category(),
            ReconcileError::SerializeStatus { .. } => "serialize_status",
            ReconcileError::CompileTask(_) => "compile",
        }
    }
}

/// Runs the three controllers, the index and the compile task until the future is dropped
/// (when this replica stops leading). Never returns on its own: watch errors are retried with
/// backoff, reconcile errors requeued by the error policy.
pub async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<OperatorMetrics>,
) {
    info!(
        fleet = %config.fleet_name,
        namespace = %config.fleet_namespace,
        region = config.region.as_deref().unwrap_or("(all)"),
        watch_namespace = config.watch_namespace.as_deref().unwrap_or("(all)"),
        "starting the trunkline controllers"
    );
    let watched = config.watch_namespace.clone();
    let fleet_namespace = config.fleet_namespace.clone();
    let pod_selector = gateway_pod_selector(&config.fleet_name);
    let (ctx, writers, queues) = Context::new(client.clone(), config, metrics, system_clock());
    let mut index = Index::new(Arc::clone(&ctx), writers);

    let events: BoxStream<'static, Result<Watched, watcher::Error>> = stream::select_all([
        watch::<InboundTrunk>(&client, watched.as_deref(), watcher::Config::default())
            .map(|r| r.map(Watched::Inbound))
            .boxed(),
        watch::<OutboundTrunk>(&client, watched.as_deref(), watcher::Config::default())
            .map(|r| r.map(Watched::Outbound))
            .boxed(),
        watch::<TransferDestination>(&client, watched.as_deref(), watcher::Config::default())
            .map(|r| r.map(Watched::Transfer))
            .boxed(),
        watch::<Secret>(
            &client,
            watched.as_deref(),
            watcher::Config::default().fields(&format!("type={BASIC_AUTH_TYPE}")),
        )
        .map(|r| r.map(Watched::Secret))
        .boxed(),
        watch::<Pod>(
            &client,
            Some(&fleet_namespace),
            watcher::Config::default().labels(&pod_selector),
        )
        .map(|r| r.map(|e| Watched::Pod(Box::new(e))))
        .boxed(),
    ])
    .boxed();
    let index_task = events.for_each(move |event| {
        match event {
            Ok(Watched::Inbound(e)) => index.apply_inbound(&e),
            Ok(Watched::Outbound(e)) => index.apply_outbound(&e),
            Ok(Watched::Transfer(e)) => index.apply_transfer(&e),
            Ok(Watched::Secret(e)) => index.apply_secret(&e),
            Ok(Watched::Pod(e)) => index.apply_pod(&e),
            Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
        }
        std::future::ready(())
    });

    let TriggerQueues { inbound, outbound, transfers } = queues;
    futures::join!(
        index_task,
        run_compiler(Arc::clone(&ctx)),
        guard_bundle(Arc::clone(&ctx)),
        publish_members(Arc::clone(&ctx)),
        prober::run_prober(Arc::clone(&ctx)),
        run_applier::<InboundTrunk>(Arc::clone(&ctx), inbound),
        run_applier::<OutboundTrunk>(Arc::clone(&ctx), outbound),
        run_applier::<TransferDestination>(ctx, transfers),
    );
}

/// One watched event, of whichever collection.
enum Watched {
    Inbound(Event<InboundTrunk>),
    Outbound(Event<OutboundTrunk>),
    Transfer(Event<TransferDestination>),
    Secret(Event<Secret>),
    /// Boxed: a Pod is several times the size of the others.
    Pod(Box<Event<Pod>>),
}

/// A watch of `K` in `namespace` (all namespaces when `None`), retried with kube's default
/// backoff, managed fields dropped (the operator never reads them; they are most of an object's
/// size).
fn watch<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .boxed()
}

/// How often the gateway credentials Secret is compared with what was last applied.
pub const BUNDLE_CHECK: Duration = Duration::from_secs(10);

/// Puts the gateway credentials Secret back when someone deletes or edits it: the operator does
/// not watch it (its Secret watch selects basic-auth Secrets only, and the bundle is Opaque), so
/// every [`BUNDLE_CHECK`] it is read and, when it is not what was applied, the next compile
/// applies it again. Until the first compile applied it there is nothing to compare.
async fn guard_bundle(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(BUNDLE_CHECK).await;
        let intact = {
            let bundle = ctx.bundle.lock().await;
            if !bundle.has_applied() {
                continue;
            }
            bundle.is_intact(&ctx.client).await
        };
        match intact {
            Ok(true) => {}
            Ok(false) => {
                warn!(
                    secret = %format!("{}/{}", ctx.config.fleet_namespace, ctx.config.bundle_secret),
                    "the gateway credentials Secret was deleted or changed: writing it again"
                );
                ctx.bundle.lock().await.forget_applied();
                ctx.compile_needed.notify_one();
            }
            Err(e) => {
                debug!(error = %e, "cannot read the gateway credentials Secret; trying later")
            }
        }
    }
}

/// How long the membership task waits after a pod change before writing, so that a rollout's
/// burst of pod events costs one write.
pub const MEMBERS_DEBOUNCE: Duration = Duration::from_millis(100);

/// Keeps the fleet's membership in the gateway credentials Secret: on every pod change, the
/// Ready gateway pods are written (only when they changed, and without a compile); a failed
/// write is retried with the compile task's backoff.
async fn publish_members(ctx: Arc<Context>) {
    if ctx.stores.pods.wait_until_ready().await.is_err() {
        return;
    }
    let mut failures = 0u32;
    loop {
        let wait = match ctx.publish_members().await {
            Ok(_) => {
                failures = 0;
                None
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = retry_after(failures);
                warn!(error = %e, retry_in_seconds = wait.as_secs(), "cannot write the fleet membership");
                Some(wait)
            }
        };
        match wait {
            None => ctx.members_changed.notified().await,
            Some(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = ctx.members_changed.notified() => {}
            },
        }
        tokio::time::sleep(MEMBERS_DEBOUNCE).await;
    }
}

/// Waits for every store's first list, then compiles once per batch of changes.
async fn run_compiler(ctx: Arc<Context>) {
    let s = &ctx.stores;
    let ready = futures::join!(
        s.inbound.wait_until_ready(),
        s.outbound.wait_until_ready(),
        s.transfers.wait_until_ready(),
        s.secrets.wait_until_ready(),
        s.pods.wait_until_ready(),
    );
    if ready.0.is_err()
        || ready.1.is_err()
        || ready.2.is_err()
        || ready.3.is_err()
        || ready.4.is_err()
    {
        return;
    }
    info!("every store is listed; compiling");
    let mut failures = 0u32;
    loop {
        match ctx.compile_step().await {
            Ok(view) => {
                failures = 0;
                debug!(hash = %view.hash, "compile published");
                ctx.compile_needed.notified().await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = retry_after(failures);
                warn!(error = %e, retry_in_seconds = wait.as_secs(), "compile step failed");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = ctx.compile_needed.notified() => {}
                }
            }
        }
        tokio::time::sleep(COMPILE_DEBOUNCE).await;
    }
}

/// kube's applier for kind `K`, fed from its trigger queue.
async fn run_applier<K: Reconciled>(
    ctx: Arc<Context>,
    queue: futures::channel::mpsc::UnboundedReceiver<Trigger<K>>,
) {
    let store = K::store(&ctx.stores).clone();
    let all = store.clone();
    let requests = queue
        .flat_map(move |t| {
            let refs: Vec<ObjectRef<K>> = match t {
                Trigger::One(r) => vec![r],
                Trigger::All => {
                    all.state().iter().map(|o| ObjectRef::from_obj(o.as_ref())).collect()
                }
            };
            stream::iter(refs)
        })
        .map(Ok::<_, Infallible>);
    applier(
        |obj, ctx| Box::pin(reconcile::<K>(obj, ctx)),
        |obj, error, ctx| -> Action { error_policy::<K>(obj, error, ctx) },
        ctx,
        store,
        requests,
        controller::Config::default().debounce(RECONCILE_DEBOUNCE),
    )
    .for_each(|result| {
        match result {
            Ok(_) => {}
            Err(controller::Error::ObjectNotFound(obj)) => {
                debug!(object = %obj, "queued object is gone");
            }
            // Already logged by the error policy.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!(kind = K::KIND.as_str(), error = %e, "controller error"),
        }
        std::future::ready(())
    })
    .await;
}
