//! The reconcile of one object, the same for the three kinds ([`Reconciled`]):
//!
//! 1. Nothing before the first compile (it runs once every store is listed, so a Secret absent
//!    from the store is really absent).
//! 2. InboundTrunk only: its generated credentials Secret, created when the store has none.
//! 3. Its verdict from the latest compile. A compile that has not seen the object's current
//!    generation yet means: nothing to do now, the next compile triggers it.
//! 4. `Programmed` from the gateway pods and the config history.
//! 5. The desired status; written with server-side apply on `/status` (field manager
//!    `trunkline-operator/<fleet>`, forced; only the conditions the operator owns and this
//!    fleet's `status.fleets` entry, see `status`) only when it differs from the current one,
//!    then one event per condition transition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource};
use tracing::{debug, info, warn};

use super::ReconcileError;
use super::context::{Context, Reconciled, Stores, Trigger, Triggers, object_key};
use crate::api::{
    InboundTrunk, InboundTrunkStatus, Kind, OutboundTrunk, OutboundTrunkStatus,
    TransferDestination, TransferDestinationStatus,
};
use crate::config::diagnostic::Verdict;
use crate::operator::credentials::{
    SecretCreation, create_generated_credentials, render_generated_credentials,
    wants_generated_credentials,
};
use crate::operator::programmed::{ProgrammedDecision, decide_programmed, served};
use crate::operator::status::OWNED_CONDITIONS;
use crate::operator::status::{
    FleetFacts, Transition, changed, desired_inbound_status, desired_outbound_status,
    desired_transfer_status, transitions,
};
use crate::operator::status_field_manager;

/// How often an object is reconciled with no event at all: a safety net for missed watch
/// events, not a mechanism anything relies on.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// First retry after a failed reconcile; doubled per failure in a row.
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait before retry number `failures` (1 = first).
pub fn retry_after(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

/// Reconciles one object and counts it.
pub async fn reconcile<K: Reconciled>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_object(obj.as_ref(), &ctx).await;
    let category = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciled(K::KIND, category, started.elapsed().as_secs_f64());
    if result.is_ok()
        && let Some(key) = object_key(obj.as_ref())
    {
        ctx.clear_failures(&key);
    }
    result
}

/// The error policy: retry with a per-object exponential backoff.
pub fn error_policy<K: Reconciled>(
    obj: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = object_key(obj.as_ref()).map_or(1, |key| ctx.record_failure(&key));
    let wait = retry_after(failures);
    warn!(
        kind = K::KIND.as_str(),
        object = %ObjectRef::from_obj(obj.as_ref()),
        error = %error,
        failures,
        retry_in_seconds = wait.as_secs(),
        "reconcile failed"
    );
    Action::requeue(wait)
}

async fn reconcile_object<K: Reconciled>(obj: &K, ctx: &Context) -> Result<Action, ReconcileError> {
    let Some(key) = object_key(obj) else {
        return Ok(Action::await_change());
    };
    // Before the first compile the stores may still be listing: no Secret is known missing yet.
    let Some(view) = ctx.latest() else {
        debug!(object = %key, "no compile yet");
        return Ok(Action::await_change());
    };
    ensure_generated_secret(obj, ctx).await?;
    let Some(verdict) = view.verdict(&key).filter(|v| v.generation == obj.meta().generation) else {
        debug!(object = %key, "the latest compile has not seen this generation yet");
        return Ok(Action::await_change());
    };

    let pods = ctx.gateway_pods();
    let served = served(&key, obj.regions(), ctx.config.region.as_deref(), &view.served);
    let programmed = ctx.with_history(|h| decide_programmed(verdict, &served, &pods, h));
    let facts = ctx.fleet_facts(&pods);

    let current = ctx.effective_status(&key, obj);
    let now = Time((ctx.clock)());
    let desired = obj.desired_status(verdict, &programmed, current.as_ref(), &facts, &now);
    if changed(current.as_ref(), &desired) {
        write_status(obj, &desired, ctx).await?;
        ctx.remember_written(&key, obj, &desired);
        ctx.metrics.status_written(K::KIND);
        let before = current.as_ref().map(K::conditions).unwrap_or_default();
        for t in transitions(before, K::conditions(&desired)) {
            publish(ctx, obj, &transition_event(&t)).await;
        }
    }
    ctx.metrics.object_conditions(&key, K::conditions(&desired));
    Ok(Action::requeue(RESYNC))
}

/// Creates the object's generated credentials Secret when the store has none.
async fn ensure_generated_secret<K: Reconciled>(
    obj: &K,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let Some(name) = obj.wants_generated_secret() else {
        return Ok(());
    };
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    if ctx.stores.secrets.get(&ObjectRef::new(&name).within(&namespace)).is_some() {
        return Ok(());
    }
    let Some(secret) = obj.render_generated_secret() else {
        return Ok(());
    };
    match create_generated_credentials(&ctx.client, &secret).await? {
        SecretCreation::Created => {
            ctx.metrics.generated_secret_created();
            info!(
                kind = K::KIND.as_str(),
                object = %ObjectRef::from_obj(obj),
                secret = %name,
                "generated digest credentials"
            );
            let event = Event {
                type_: EventType::Normal,
                reason: "CredentialsGenerated".into(),
                note: Some(format!(
                    "generated digest credentials into Secret {name}: give its username and password to the carrier"
                )),
                action: "GenerateCredentials".into(),
                secondary: None,
            };
            publish(ctx, obj, &event).await;
        }
        SecretCreation::AlreadyExists => {
            debug!(secret = %name, "the generated credentials Secret exists already; kept as it is");
        }
    }
    Ok(())
}

async fn write_status<K: Reconciled>(
    obj: &K,
    status: &K::Status,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = serde_json::to_value(status)
        .map_err(|source| ReconcileError::SerializeStatus { kind: K::KIND, source })?;
    // Only the conditions the operator owns are applied: another manager's stay theirs, since `conditions` is a list map keyed by type. Of `fleets` (a list map
    // keyed by name) only this fleet's entry: the other fleets' operators own theirs.
    if let Some(conditions) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        conditions.retain(|c| {
            c.get("type").and_then(|t| t.as_str()).is_some_and(|t| OWNED_CONDITIONS.contains(&t))
        });
    }
    if let Some(fleets) = status.get_mut("fleets").and_then(|c| c.as_array_mut()) {
        let own = ctx.config.fleet_name.as_str();
        fleets.retain(|f| f.get("name").and_then(|n| n.as_str()) == Some(own));
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(&status_field_manager(&ctx.config.fleet_name)).force();
    api.patch_status(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(|source| ReconcileError::PatchStatus { kind: K::KIND, namespace, name, source })?;
    Ok(())
}

/// The event of one condition transition: the reason of the condition, its message. `Normal`
/// when things are fine, progressing or unknown (`Reachable` not probed), `Warning` when an
/// object is refused or not served, or its carrier is unreachable.
pub fn transition_event(t: &Transition) -> Event {
    let fine = t.status != "False" || t.reason == "Pending";
    Event {
        type_: if fine { EventType::Normal } else { EventType::Warning },
        reason: t.reason.clone(),
        note: Some(bounded_note(&format!("{} is {}: {}", t.type_, t.status, t.message))),
        action: t.type_.clone(),
        secondary: None,
    }
}

/// Events notes are at most 1 kB.
fn bounded_note(note: &str) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note.to_string();
    }
    let mut end = MAX;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_string()
}

/// Publishes an event on `obj`. Events are best effort: a failure is logged, never fatal.
async fn publish<K: Reconciled>(ctx: &Context, obj: &K, event: &Event) {
    let reference = obj.object_ref(&());
    if let Err(e) = ctx.recorder.publish(event, &reference).await {
        warn!(
            kind = K::KIND.as_str(),
            object = %ObjectRef::from_obj(obj),
            reason = %event.reason,
            error = %e,
            "cannot publish event"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The three kinds.

fn meta_differs<K: Resource>(a: &K, b: &K) -> bool {
    let (a, b) = (a.meta(), b.meta());
    a.generation != b.generation
        || a.uid != b.uid
        || a.creation_timestamp != b.creation_timestamp
        || a.namespace != b.namespace
        || a.name != b.name
}

impl Reconciled for InboundTrunk {
    const KIND: Kind = Kind::InboundTrunk;
    type Status = InboundTrunkStatus;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions(status: &Self::Status) -> &[Condition] {
        &status.conditions
    }
    fn regions(&self) -> &[String] {
        &self.spec.regions
    }
    fn compile_inputs_differ(&self, other: &Self) -> bool {
        self.spec != other.spec || meta_differs(self, other)
    }
    fn desired_status(
        &self,
        verdict: &Verdict,
        programmed: &ProgrammedDecision,
        current: Option<&Self::Status>,
        fleet: &FleetFacts,
        now: &Time,
    ) -> Self::Status {
        desired_inbound_status(verdict, programmed, current, fleet, now)
    }
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.inbound
    }
    fn sender(triggers: &Triggers) -> &futures::channel::mpsc::UnboundedSender<Trigger<Self>> {
        triggers.inbound()
    }
    fn wants_generated_secret(&self) -> Option<String> {
        wants_generated_credentials(self)
    }
    fn render_generated_secret(&self) -> Option<Secret> {
        render_generated_credentials(self)
    }
}

impl Reconciled for OutboundTrunk {
    const KIND: Kind = Kind::OutboundTrunk;
    type Status = OutboundTrunkStatus;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions(status: &Self::Status) -> &[Condition] {
        &status.conditions
    }
    fn regions(&self) -> &[String] {
        &self.spec.regions
    }
    fn compile_inputs_differ(&self, other: &Self) -> bool {
        self.spec != other.spec || meta_differs(self, other)
    }
    fn desired_status(
        &self,
        verdict: &Verdict,
        programmed: &ProgrammedDecision,
        current: Option<&Self::Status>,
        fleet: &FleetFacts,
        now: &Time,
    ) -> Self::Status {
        let health_check = self.spec.health_check.as_ref().is_none_or(|h| h.enabled);
        let registers = self.spec.registration.as_ref().is_some_and(|r| r.enabled);
        let flags = (health_check, registers);
        let mut status = desired_outbound_status(verdict, programmed, current, fleet, flags, now);
        status.hosts = self.spec.host_summary();
        status
    }
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.outbound
    }
    fn sender(triggers: &Triggers) -> &futures::channel::mpsc::UnboundedSender<Trigger<Self>> {
        triggers.outbound()
    }
}

impl Reconciled for TransferDestination {
    const KIND: Kind = Kind::TransferDestination;
    type Status = TransferDestinationStatus;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions(status: &Self::Status) -> &[Condition] {
        &status.conditions
    }
    fn regions(&self) -> &[String] {
        &[]
    }
    fn compile_inputs_differ(&self, other: &Self) -> bool {
        self.spec != other.spec || meta_differs(self, other)
    }
    fn desired_status(
        &self,
        verdict: &Verdict,
        programmed: &ProgrammedDecision,
        current: Option<&Self::Status>,
        fleet: &FleetFacts,
        now: &Time,
    ) -> Self::Status {
        desired_transfer_status(verdict, programmed, current, fleet, now)
    }
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.transfers
    }
    fn sender(triggers: &Triggers) -> &futures::channel::mpsc::UnboundedSender<Trigger<Self>> {
        triggers.transfers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        assert_eq!(retry_after(1), Duration::from_secs(5));
        assert_eq!(retry_after(2), Duration::from_secs(10));
        assert_eq!(retry_after(4), Duration::from_secs(40));
        assert_eq!(retry_after(7), RETRY_MAX);
        assert_eq!(retry_after(64), RETRY_MAX);
        assert_eq!(retry_after(0), RETRY_BASE);
    }

    #[test]
    fn a_refusal_is_a_warning_event_and_progress_is_normal() {
        let t = |status: &str, reason: &str| Transition {
            type_: "Programmed".into(),
            previous_status: None,
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
        };
        assert_eq!(transition_event(&t("True", "Programmed")).type_, EventType::Normal);
        assert_eq!(transition_event(&t("False", "Pending")).type_, EventType::Normal);
        let refused = transition_event(&t("False", "SecretNotFound"));
        assert_eq!(refused.type_, EventType::Warning);
        assert_eq!(refused.reason, "SecretNotFound");
        assert_eq!(refused.note.as_deref(), Some("Programmed is False: m"));
        assert_eq!(bounded_note(&"x".repeat(5000)).len(), 1024);
    }
}
