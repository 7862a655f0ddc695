//! The status the operator wants each object to have: pure, from the compile verdict, the
//! `Programmed` decision, the fleet's facts and the object's current status.
//!
//! - Conditions `Accepted` and `ResolvedRefs` come from the verdict, `Programmed` from
//!   `programmed::decide_programmed` summed up over the fleets (below). Each carries
//!   `observedGeneration`; `lastTransitionTime` is kept from the current status when the
//!   condition's status did not change, and is `now` otherwise (the caller passes the time: no
//!   clock here).
//! - An OutboundTrunk's `Reachable` comes from the gateways' OPTIONS reports
//!   (`reachable::decide_reachable` per fleet, summed up over the fleets by
//!   [`aggregate_reachable`]), with the same rule for `lastTransitionTime`.
//! - Any other condition already there is kept untouched, and the order of the current list is
//!   kept, so that an unchanged status compares equal ([`changed`]) and is not written again.
//! - Per kind (DESIGN §2): InboundTrunk `endpoints` (every SIP address a carrier may use: the
//!   load balancer's or `publicAddress` first, then each ready gateway's advertised address) and
//!   `endpoint` (the first of them), `credentialsSecret`, `numbers`; OutboundTrunk
//!   `sourceAddresses` (the fleet's `egressAddresses`, else each ready gateway's advertised
//!   address). A fleet that does not serve the object gives none: its addresses would be the
//!   wrong ones to give a carrier.
//! - [`transitions`]: the conditions whose status or reason changed, for events.
//!
//! **Several fleets in one cluster.** Two operators with different fleet names (say regions `us`
//! and `eu`) both see a trunk without regions, and both write its status. Each writes with its
//! own field manager (`trunkline-operator/<fleet>`, [`super::status_field_manager`]), so
//! server-side apply keeps what each one owns:
//! - `status.fleets` is a list map keyed by `name`: each operator applies only its own entry
//!   (its `Programmed`, its addresses) and the other fleets' entries stay theirs.
//! - `Accepted` and `ResolvedRefs` come from a compile whose verdicts do not depend on the region
//!   (the region only decides what a fleet's table serves), so both operators apply identical
//!   values: co-owned, no conflict, no flapping.
//! - The top-level `Programmed`, `endpoint`, `endpoints` and `sourceAddresses` are the sum of
//!   the entries ([`aggregate_programmed`]): each operator computes it from its own fresh entry
//!   and the others' entries as it observes them on the object, the same function of the same
//!   entries, so once each has seen the other's write they apply identical values. Programmed is
//!   True when at least one fleet serves the object and every fleet that serves it (reason other
//!   than `NotServedHere`) says True; an entry written for an older generation counts as
//!   Pending. Addresses are the union, in fleet-name order. With one fleet the top level equals
//!   that fleet's entry, as before fleets existed. An OutboundTrunk's entry also holds the
//!   fleet's `Reachable`; the top level is False when any fleet says False, True when every
//!   fleet that decided says True, else Unknown (`NotProbed`).
//! - A fleet that is removed leaves its entry behind (nobody owns deleting it): remove it by
//!   hand (`kubectl edit --subresource=status`) if it holds the aggregate back.
//!
//! Called by the controller's reconcile.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use std::collections::BTreeMap;

use super::programmed::{GatewayPod, PROGRAMMED, ProgrammedDecision, ProgrammedReason};
pub use super::reachable::REACHABLE;
use super::reachable::{
    ConditionStatus, Probing, ReachableDecision, ReachableReason, decide_reachable,
};
use super::registered::{REGISTERED, RegisteredDecision, aggregate_registered, decide_registered};
use crate::api::{
    FleetStatus, InboundTrunkStatus, NumberCounts, OutboundTrunkStatus, TransferDestinationStatus,
};
use crate::config::diagnostic::Verdict;
use crate::observe::admin::{OutboundHealth, RegistrationHealth};

/// The condition types the operator owns. A current condition of one of these types that the
/// operator no longer decides is dropped; any other type is kept as it is. `Reachable` is
/// decided for OutboundTrunks only (from the gateways' reports), and so is `Registered` (for
/// those with `registration` on).
pub const OWNED_CONDITIONS: [&str; 5] =
    ["Accepted", "ResolvedRefs", PROGRAMMED, REACHABLE, REGISTERED];

/// Longest condition message the API server accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// What this operator knows about its own gateway fleet, for the status it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetFacts {
    /// The fleet's name: the key of its `status.fleets` entry.
    pub name: String,
    pub region: Option<String>,
    /// The carrier-facing SIP addresses, `sip:203.0.113.10:5060`: the load balancer's first,
    /// then each ready gateway's.
    pub endpoints: Vec<String>,
    /// The addresses calls leave from, for carriers' allowlists.
    pub source_addresses: Vec<String>,
    /// What the ready gateway pods report of their OPTIONS probes, by OutboundTrunk
    /// (`namespace/name`): (pod name, report), by pod name.
    pub outbound: BTreeMap<String, Vec<(String, OutboundHealth)>>,
    /// What the ready gateway pods report of their registrations, by OutboundTrunk, likewise.
    pub registrations: BTreeMap<String, Vec<(String, RegistrationHealth)>>,
}

impl FleetFacts {
    /// The facts from the settings and the gateway pods: `carrier_endpoint` (the load
    /// balancer's or `publicAddress`) first, then `sip:<address>:<sip_port>` of every ready pod
    /// that reports an address, sorted, without repeats; source addresses are `egress` when
    /// given, else every ready pod's address, sorted, without repeats.
    pub fn from_pods(
        name: &str,
        region: Option<&str>,
        carrier_endpoint: Option<&str>,
        egress: &[String],
        sip_port: u16,
        pods: &[GatewayPod],
    ) -> FleetFacts {
        let mut addresses: Vec<IpAddr> =
            pods.iter().filter(|p| p.ready).filter_map(|p| p.advertised_address).collect();
        addresses.sort();
        addresses.dedup();
        let mut endpoints: Vec<String> = carrier_endpoint.map(str::to_string).into_iter().collect();
        for ip in &addresses {
            let endpoint = sip_endpoint(&ip.to_string(), sip_port);
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        let source_addresses = if egress.is_empty() {
            addresses.iter().map(IpAddr::to_string).collect()
        } else {
            egress.to_vec()
        };
        let mut outbound: BTreeMap<String, Vec<(String, OutboundHealth)>> = BTreeMap::new();
        for pod in pods.iter().filter(|p| p.ready) {
            for (trunk, health) in &pod.outbound {
                outbound.entry(trunk.clone()).or_default().push((pod.name.clone(), health.clone()));
            }
        }
        for reports in outbound.values_mut() {
            reports.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut registrations: BTreeMap<String, Vec<(String, RegistrationHealth)>> =
            BTreeMap::new();
        for pod in pods.iter().filter(|p| p.ready) {
            for (trunk, health) in &pod.registrations {
                registrations
                    .entry(trunk.clone())
                    .or_default()
                    .push((pod.name.clone(), health.clone()));
            }
        }
        FleetFacts {
            name: name.to_string(),
            region: region.map(str::to_string),
            endpoints,
            source_addresses,
            outbound,
            registrations,
        }
    }
}

/// `sip:<host>:<port>`, an IPv6 host in brackets.
pub fn sip_endpoint(host: &str, port: u16) -> String {
    if host.contains(':') { format!("sip:[{host}]:{port}") } else { format!("sip:{host}:{port}") }
}

/// A condition whose status or reason changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: String,
    /// `None` when the condition is new.
    pub previous_status: Option<String>,
    pub status: String,
    pub reason: String,
    pub message: String,
}

fn status_text(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Cuts a message to what the API server accepts, on a character boundary.
fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// One condition as decided, with the transition time kept when its status did not change.
fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    current: &[Condition],
    now: &Time,
) -> Condition {
    let last_transition_time = match current.iter().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: bounded(message),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The top-level `Programmed` as summed up over the fleets' entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateProgrammed {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// Sums up the fleets' `Programmed` (module docs): True when some fleet serves the object and
/// every fleet that serves it says True. Otherwise the reason is the first (in fleet-name order)
/// of the serving fleets' non-True reasons other than `Pending`, else `Pending`; with no fleet
/// serving it, `NotServedHere`. The message is the one fleet's message, or `name: message` of
/// each fleet joined with `; `, in fleet-name order. An entry for another generation than
/// `generation` counts as Pending. The order of `fleets` does not matter.
pub fn aggregate_programmed(
    generation: Option<i64>,
    fleets: &[FleetStatus],
) -> AggregateProgrammed {
    let pending = ProgrammedReason::Pending.as_str();
    let entries: Vec<(&str, bool, String, String)> = by_name(fleets)
        .into_iter()
        .map(|f| match f.conditions.iter().find(|c| c.type_ == PROGRAMMED) {
            Some(c) if c.observed_generation == generation => {
                (f.name.as_str(), c.status == "True", c.reason.clone(), c.message.clone())
            }
            _ => (
                f.name.as_str(),
                false,
                pending.to_string(),
                format!("has not reported on {} yet", generation_text(generation)),
            ),
        })
        .collect();
    let not_served = ProgrammedReason::NotServedHere.as_str();
    let serving: Vec<&(&str, bool, String, String)> =
        entries.iter().filter(|e| e.2 != not_served).collect();
    let status = !serving.is_empty() && serving.iter().all(|e| e.1);
    let reason = if status {
        ProgrammedReason::Programmed.as_str().to_string()
    } else if serving.is_empty() {
        not_served.to_string()
    } else {
        serving
            .iter()
            .find(|e| !e.1 && e.2 != pending)
            .map_or_else(|| pending.to_string(), |e| e.2.clone())
    };
    let message = match entries.as_slice() {
        [(_, _, _, message)] => message.clone(),
        _ => entries
            .iter()
            .map(|(name, _, _, message)| format!("{name}: {message}"))
            .collect::<Vec<_>>()
            .join("; "),
    };
    AggregateProgrammed { status, reason, message }
}

fn generation_text(generation: Option<i64>) -> String {
    match generation {
        Some(g) => format!("generation {g}"),
        None => "the current version".to_string(),
    }
}

/// The conditions an object should have: the verdict's, `Programmed`, `Reachable` when given,
/// and every condition of another type from `current`, in the order of `current` (new ones
/// appended).
pub fn desired_conditions(
    verdict: &Verdict,
    programmed: &AggregateProgrammed,
    (reachable, registered): (Option<&ReachableDecision>, Option<&RegisteredDecision>),
    current: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let generation = verdict.generation;
    let mut decided: Vec<Condition> = verdict
        .conditions
        .iter()
        .map(|c| {
            condition(
                c.type_.as_str(),
                status_text(c.status),
                c.reason.as_str(),
                &c.message,
                generation,
                current,
                now,
            )
        })
        .collect();
    decided.push(condition(
        PROGRAMMED,
        status_text(programmed.status),
        &programmed.reason,
        &programmed.message,
        generation,
        current,
        now,
    ));
    if let Some(r) = reachable {
        decided.push(reachable_condition(r, generation, current, now));
    }
    if let Some(r) = registered {
        decided.push(registered_condition(r, generation, current, now));
    }

    let mut out = Vec::with_capacity(decided.len() + current.len());
    for c in current {
        if let Some(i) = decided.iter().position(|d| d.type_ == c.type_) {
            out.push(decided.remove(i));
        } else if !OWNED_CONDITIONS.contains(&c.type_.as_str()) {
            out.push(c.clone());
        }
    }
    out.append(&mut decided);
    out
}

fn reachable_condition(
    r: &ReachableDecision,
    generation: Option<i64>,
    current: &[Condition],
    now: &Time,
) -> Condition {
    condition(REACHABLE, r.status.as_str(), r.reason.as_str(), &r.message, generation, current, now)
}

fn registered_condition(
    r: &RegisteredDecision,
    generation: Option<i64>,
    current: &[Condition],
    now: &Time,
) -> Condition {
    condition(REGISTERED, r.status.as_str(), r.reason, &r.message, generation, current, now)
}

fn served_here(programmed: &ProgrammedDecision) -> bool {
    programmed.reason != ProgrammedReason::NotServedHere
}

/// Sums up the fleets' `Reachable` (module docs): False when some fleet says False (its reason),
/// True when every fleet that decided says True and one did, else Unknown `NotProbed`. The
/// message is the one deciding fleet's, or `name: message` of each entry with a `Reachable`
/// joined with `; `, in fleet-name order. Entries without a `Reachable` (other kinds, older
/// operators) are left out. The order of `fleets` does not matter.
pub fn aggregate_reachable(fleets: &[FleetStatus]) -> ReachableDecision {
    let (status, message) = roll_up(fleets, REACHABLE);
    let reason = match status {
        ConditionStatus::False => ReachableReason::Unreachable,
        ConditionStatus::True => ReachableReason::Reachable,
        ConditionStatus::Unknown => ReachableReason::NotProbed,
    };
    ReachableDecision { status, reason, message }
}

/// One condition that each fleet writes from its pods' reports (`Reachable`, `Registered`),
/// rolled up over the fleets: `False` when any fleet's is, else `True` when any fleet's is, else
/// `Unknown`; the message is the only fleet's, or each fleet's after its name (name order).
pub(super) fn roll_up(fleets: &[FleetStatus], type_: &str) -> (ConditionStatus, String) {
    let entries: Vec<(&str, &Condition)> = by_name(fleets)
        .into_iter()
        .filter_map(|f| {
            f.conditions.iter().find(|c| c.type_ == type_).map(|c| (f.name.as_str(), c))
        })
        .collect();
    let status_of = |c: &Condition| ConditionStatus::parse(&c.status);
    let down = entries.iter().any(|(_, c)| status_of(c) == ConditionStatus::False);
    let up = entries.iter().any(|(_, c)| status_of(c) == ConditionStatus::True);
    let status = match (down, up) {
        (true, _) => ConditionStatus::False,
        (false, true) => ConditionStatus::True,
        (false, false) => ConditionStatus::Unknown,
    };
    let message = match entries.as_slice() {
        [] => "no gateway fleet has reported on it yet".to_string(),
        [(_, c)] => c.message.clone(),
        _ => entries
            .iter()
            .map(|(name, c)| format!("{name}: {}", c.message))
            .collect::<Vec<_>>()
            .join("; "),
    };
    (status, message)
}

/// Which addresses go into a fleet entry.
enum Addresses {
    Endpoints,
    Sources,
    None,
}

/// The others' entries as found and this fleet's fresh one, in the order of the current list
/// (its own entry in its place, or appended): the API server keeps a list map in the order
/// its items were added, and a reordered list would compare unequal and be written forever.
fn fleet_entries(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    (reachable, registered): (Option<&ReachableDecision>, Option<&RegisteredDecision>),
    current: &[FleetStatus],
    fleet: &FleetFacts,
    addresses: Addresses,
    now: &Time,
) -> Vec<FleetStatus> {
    let own_current: &[Condition] = current
        .iter()
        .find(|f| f.name == fleet.name)
        .map(|f| f.conditions.as_slice())
        .unwrap_or_default();
    let served = served_here(programmed);
    let mut conditions = vec![condition(
        PROGRAMMED,
        status_text(programmed.status),
        programmed.reason.as_str(),
        &programmed.message,
        verdict.generation,
        own_current,
        now,
    )];
    if let Some(r) = reachable {
        conditions.push(reachable_condition(r, verdict.generation, own_current, now));
    }
    if let Some(r) = registered {
        conditions.push(registered_condition(r, verdict.generation, own_current, now));
    }
    let own = FleetStatus {
        name: fleet.name.clone(),
        region: fleet.region.clone(),
        conditions,
        endpoints: match addresses {
            Addresses::Endpoints if served => fleet.endpoints.clone(),
            _ => Vec::new(),
        },
        source_addresses: match addresses {
            Addresses::Sources if served => fleet.source_addresses.clone(),
            _ => Vec::new(),
        },
    };
    let mut entries: Vec<FleetStatus> = current.to_vec();
    match entries.iter_mut().find(|f| f.name == fleet.name) {
        Some(entry) => *entry = own,
        None => entries.push(own),
    }
    entries
}

/// The entries by fleet name: what is summed up does not depend on the list's order.
fn by_name(fleets: &[FleetStatus]) -> Vec<&FleetStatus> {
    let mut sorted: Vec<&FleetStatus> = fleets.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
}

/// The union of one list of every serving entry, in fleet-name order, without repeats.
fn union(entries: &[FleetStatus], list: impl Fn(&FleetStatus) -> &[String]) -> Vec<String> {
    let not_served = ProgrammedReason::NotServedHere.as_str();
    let mut out: Vec<String> = Vec::new();
    for entry in by_name(entries) {
        let serves =
            entry.conditions.iter().any(|c| c.type_ == PROGRAMMED && c.reason != not_served);
        for item in list(entry).iter().filter(|_| serves) {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
    }
    out
}

/// The status an InboundTrunk should have.
pub fn desired_inbound_status(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    current: Option<&InboundTrunkStatus>,
    fleet: &FleetFacts,
    now: &Time,
) -> InboundTrunkStatus {
    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let current_fleets = current.map(|s| s.fleets.as_slice()).unwrap_or_default();
    let fleets = fleet_entries(
        verdict,
        programmed,
        (None, None),
        current_fleets,
        fleet,
        Addresses::Endpoints,
        now,
    );
    let aggregate = aggregate_programmed(verdict.generation, &fleets);
    let endpoints = union(&fleets, |f| &f.endpoints);
    InboundTrunkStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(verdict, &aggregate, (None, None), current_conditions, now),
        endpoint: endpoints.first().cloned(),
        endpoints,
        credentials_secret: verdict.credentials_secret.clone(),
        numbers: verdict
            .numbers
            .map(|t| NumberCounts { accepted: t.accepted, conflicting: t.conflicting }),
        fleets,
    }
}

/// The status an OutboundTrunk should have. `health_check_enabled`: its spec's
/// `healthCheck.enabled` (probing is on by default); `registers`: its `registration` is on.
pub fn desired_outbound_status(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    current: Option<&OutboundTrunkStatus>,
    fleet: &FleetFacts,
    (health_check_enabled, registers): (bool, bool),
    now: &Time,
) -> OutboundTrunkStatus {
    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let current_fleets = current.map(|s| s.fleets.as_slice()).unwrap_or_default();
    let probing = if matches!(
        programmed.reason,
        ProgrammedReason::NotServedHere | ProgrammedReason::Refused(_)
    ) {
        Probing::NotServed
    } else if health_check_enabled {
        Probing::On
    } else {
        Probing::Disabled
    };
    let trunk = format!("{}/{}", verdict.object.namespace, verdict.object.name);
    let reports = fleet.outbound.get(&trunk).map(Vec::as_slice).unwrap_or_default();
    let own_reachable = decide_reachable(probing, reports);
    let own_registered = registers.then(|| {
        let reports = fleet.registrations.get(&trunk).map(Vec::as_slice).unwrap_or_default();
        decide_registered(probing != Probing::NotServed, reports)
    });
    let fleets = fleet_entries(
        verdict,
        programmed,
        (Some(&own_reachable), own_registered.as_ref()),
        current_fleets,
        fleet,
        Addresses::Sources,
        now,
    );
    let aggregate = aggregate_programmed(verdict.generation, &fleets);
    let reachable = aggregate_reachable(&fleets);
    let registered = registers.then(|| aggregate_registered(&fleets));
    OutboundTrunkStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(
            verdict,
            &aggregate,
            (Some(&reachable), registered.as_ref()),
            current_conditions,
            now,
        ),
        source_addresses: union(&fleets, |f| &f.source_addresses),
        // The spec's, set by the reconciler (`OutboundTrunkSpec::host_summary`).
        hosts: None,
        fleets,
    }
}

/// The status a TransferDestination should have.
pub fn desired_transfer_status(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    current: Option<&TransferDestinationStatus>,
    fleet: &FleetFacts,
    now: &Time,
) -> TransferDestinationStatus {
    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let current_fleets = current.map(|s| s.fleets.as_slice()).unwrap_or_default();
    let fleets = fleet_entries(
        verdict,
        programmed,
        (None, None),
        current_fleets,
        fleet,
        Addresses::None,
        now,
    );
    let aggregate = aggregate_programmed(verdict.generation, &fleets);
    TransferDestinationStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(verdict, &aggregate, (None, None), current_conditions, now),
        fleets,
    }
}

/// Whether `desired` differs from `current` in anything at all: the status is written exactly
/// when this is true.
pub fn changed<S: PartialEq>(current: Option<&S>, desired: &S) -> bool {
    current != Some(desired)
}

/// The owned conditions of `desired` whose status or reason differs from `current` (or that are
/// new): what deserves an event. A message-only change (`2 of 3 pods` → `1 of 3 pods`) is not a
/// transition.
pub fn transitions(current: &[Condition], desired: &[Condition]) -> Vec<Transition> {
    desired
        .iter()
        .filter(|d| OWNED_CONDITIONS.contains(&d.type_.as_str()))
        .filter_map(|d| {
            let previous = current.iter().find(|c| c.type_ == d.type_);
            let moved = previous.is_none_or(|p| p.status != d.status || p.reason != d.reason);
            moved.then(|| Transition {
                type_: d.type_.clone(),
                previous_status: previous.map(|p| p.status.clone()),
                status: d.status.clone(),
                reason: d.reason.clone(),
                message: d.message.clone(),
            })
        })
        .collect()
}

/// The status (`True`/`False`) of one condition type, for metrics.
pub fn condition_status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::Kind;
    use crate::config::diagnostic::{
        ConditionType, Diagnostic, NumberTally, ObjectKey, Reason, Severity,
    };

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + second).unwrap())
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::InboundTrunk, "voice", "acme-in")
    }

    fn accepted(generation: i64) -> Verdict {
        let mut v = Verdict::from_diagnostics(key(), Some(generation), Vec::new());
        v.numbers = Some(NumberTally { accepted: 2, conflicting: 0 });
        v.credentials_secret = Some("acme-in-credentials".into());
        v
    }

    fn missing_secret(generation: i64) -> Verdict {
        Verdict::from_diagnostics(
            key(),
            Some(generation),
            vec![Diagnostic {
                object: key(),
                field: "spec.auth.digest.secretRef.name".into(),
                severity: Severity::Fatal,
                reason: Reason::SecretNotFound,
                message: "Secret acme-in-credentials does not exist in namespace voice".into(),
            }],
        )
    }

    fn programmed(status: bool, reason: ProgrammedReason) -> ProgrammedDecision {
        ProgrammedDecision { status, reason, message: format!("{reason:?}") }
    }

    fn fleet() -> FleetFacts {
        FleetFacts {
            name: "edge".into(),
            region: None,
            endpoints: vec!["sip:203.0.113.10:5060".into()],
            source_addresses: vec!["198.51.100.7".into()],
            outbound: BTreeMap::new(),
            registrations: BTreeMap::new(),
        }
    }

    fn fleet_named(name: &str, region: &str) -> FleetFacts {
        FleetFacts { name: name.into(), region: Some(region.into()), ..fleet() }
    }

    fn ready_pod(name: &str, address: Option<&str>) -> GatewayPod {
        GatewayPod {
            name: name.into(),
            ready: true,
            config_hash: None,
            advertised_address: address.map(|a| a.parse().unwrap()),
            outbound: BTreeMap::new(),
            registrations: BTreeMap::new(),
        }
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_first_status_has_three_conditions_with_the_generation_and_now() {
        let s = desired_inbound_status(
            &accepted(4),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &fleet(),
            &at(0),
        );
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Accepted", "ResolvedRefs", "Programmed"]);
        for c in &s.conditions {
            assert_eq!((c.status.as_str(), c.observed_generation), ("True", Some(4)));
            assert_eq!(c.last_transition_time, at(0));
        }
        assert_eq!(find(&s.conditions, "Accepted").reason, "Accepted");
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.endpoint.as_deref(), Some("sip:203.0.113.10:5060"));
        assert_eq!(s.endpoints, ["sip:203.0.113.10:5060"]);
        assert_eq!(s.fleets.len(), 1, "this fleet's entry");
        assert_eq!(s.fleets[0].name, "edge");
        assert_eq!(s.fleets[0].endpoints, s.endpoints);
        assert_eq!(s.fleets[0].conditions, [find(&s.conditions, "Programmed").clone()]);
        assert_eq!(s.credentials_secret.as_deref(), Some("acme-in-credentials"));
        assert_eq!(s.numbers, Some(NumberCounts { accepted: 2, conflicting: 0 }));
    }

    #[test]
    fn the_transition_time_is_kept_while_the_status_stays_and_moves_when_it_flips() {
        let first = desired_inbound_status(
            &missing_secret(1),
            &programmed(false, ProgrammedReason::Refused(Reason::SecretNotFound)),
            None,
            &fleet(),
            &at(0),
        );
        assert_eq!(find(&first.conditions, "ResolvedRefs").status, "False");
        // The Secret appears: ResolvedRefs and Programmed flip, Accepted stays True.
        let second = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&first),
            &fleet(),
            &at(60),
        );
        assert_eq!(find(&second.conditions, "Accepted").last_transition_time, at(0));
        assert_eq!(find(&second.conditions, "ResolvedRefs").last_transition_time, at(60));
        assert_eq!(find(&second.conditions, "Programmed").last_transition_time, at(60));
        // Nothing changes: the same status, equal, not written again.
        let third = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&second),
            &fleet(),
            &at(120),
        );
        assert_eq!(third, second);
        assert!(!changed(Some(&second), &third));
        assert!(changed(Some(&first), &second));
        assert!(changed(None, &third));
    }

    #[test]
    fn a_new_generation_changes_the_status_without_a_transition() {
        let first = desired_transfer_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &fleet(),
            &at(0),
        );
        let second = desired_transfer_status(
            &accepted(2),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&first),
            &fleet(),
            &at(5),
        );
        assert!(changed(Some(&first), &second));
        assert!(second.conditions.iter().all(|c| c.observed_generation == Some(2)));
        assert!(second.conditions.iter().all(|c| c.last_transition_time == at(0)));
        assert!(transitions(&first.conditions, &second.conditions).is_empty());
    }

    /// This fleet, with what its ready pods report of voice/acme-in's probes.
    fn probed(reports: &[(&str, Option<bool>, &str)]) -> FleetFacts {
        let reports = reports
            .iter()
            .map(|(pod, reachable, detail)| {
                let health = OutboundHealth {
                    reachable: *reachable,
                    since: 1,
                    detail: detail.to_string(),
                    last_status: None,
                };
                (pod.to_string(), health)
            })
            .collect();
        FleetFacts { outbound: BTreeMap::from([("voice/acme-in".to_string(), reports)]), ..fleet() }
    }

    fn outbound(
        facts: &FleetFacts,
        current: Option<&OutboundTrunkStatus>,
        second: i64,
    ) -> OutboundTrunkStatus {
        desired_outbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            current,
            facts,
            (true, false),
            &at(second),
        )
    }

    #[test]
    fn reachable_keeps_its_place_and_its_transition_time_until_it_flips() {
        let reachable = Condition {
            type_: REACHABLE.into(),
            status: "False".into(),
            reason: "Unreachable".into(),
            message: "an older message".into(),
            observed_generation: Some(1),
            last_transition_time: at(-30),
        };
        let current = OutboundTrunkStatus {
            observed_generation: Some(1),
            conditions: vec![reachable.clone()],
            source_addresses: Vec::new(),
            hosts: None,
            fleets: Vec::new(),
        };
        let down = probed(&[("gw-0", Some(false), "timeout")]);
        let s = outbound(&down, Some(&current), 0);
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Reachable", "Accepted", "ResolvedRefs", "Programmed"]);
        let r = &s.conditions[0];
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", "Unreachable"));
        assert_eq!(r.last_transition_time, at(-30), "still False: the time stays");
        assert_eq!(
            r.message,
            "the carrier missed the last 3 OPTIONS probes from 1 of 1 gateway pods: gw-0 (timeout)"
        );
        assert_eq!(
            s.fleets[0].conditions[1],
            Condition { last_transition_time: at(0), ..r.clone() }
        );
        assert_eq!(s.source_addresses, ["198.51.100.7"]);
        // Written again with the same inputs: equal, including the order.
        assert_eq!(outbound(&down, Some(&s), 9), s);
        // The pod gets an answer: True from now, an event's worth of transition.
        let up = outbound(&probed(&[("gw-0", Some(true), "200 OK")]), Some(&s), 20);
        let r = find(&up.conditions, REACHABLE);
        assert_eq!((r.status.as_str(), r.last_transition_time.clone()), ("True", at(20)));
        let t = transitions(&s.conditions, &up.conditions);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].type_.as_str(), t[0].reason.as_str()), ("Reachable", "Reachable"));
    }

    #[test]
    fn two_pods_that_disagree_or_alternate_give_one_stable_condition() {
        let first = outbound(
            &probed(&[("gw-0", Some(true), "200 OK"), ("gw-1", Some(false), "timeout")]),
            None,
            0,
        );
        let r = find(&first.conditions, REACHABLE).clone();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", "Unreachable"));
        // The same reports on the next probe rounds: nothing to write.
        let facts = probed(&[("gw-0", Some(true), "200 OK"), ("gw-1", Some(false), "timeout")]);
        assert!(!changed(Some(&first), &outbound(&facts, Some(&first), 5)));
        // They swap: still False from the first time on, no transition (only the message moves).
        let swapped = outbound(
            &probed(&[
                ("gw-0", Some(false), "503 Service Unavailable"),
                ("gw-1", Some(true), "200 OK"),
            ]),
            Some(&first),
            10,
        );
        let r = find(&swapped.conditions, REACHABLE);
        assert_eq!((r.status.as_str(), r.last_transition_time.clone()), ("False", at(0)));
        assert!(r.message.ends_with("gw-0 (503 Service Unavailable)"), "{}", r.message);
        assert!(transitions(&first.conditions, &swapped.conditions).is_empty());
        // A pod that has not decided yet (it just started) changes nothing.
        let joined = outbound(
            &probed(&[
                ("gw-0", Some(false), "503 Service Unavailable"),
                ("gw-1", Some(true), "200 OK"),
                ("gw-2", None, ""),
            ]),
            Some(&swapped),
            15,
        );
        assert!(!changed(Some(&swapped), &joined));
    }

    #[test]
    fn reachable_is_unknown_when_not_probed() {
        let off = desired_outbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &probed(&[("gw-0", Some(false), "timeout")]),
            (false, false),
            &at(0),
        );
        let r = find(&off.conditions, REACHABLE);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("Unknown", "NotProbed"));
        assert_eq!(r.message, "healthCheck is disabled: no OPTIONS probes");
        let nobody = outbound(&fleet(), None, 0);
        assert_eq!(find(&nobody.conditions, REACHABLE).status, "Unknown");
        // Inbound trunks and transfer destinations have no Reachable.
        let inbound = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &fleet(),
            &at(0),
        );
        assert!(inbound.conditions.iter().all(|c| c.type_ != REACHABLE));
    }

    #[test]
    fn fleets_sum_up_to_false_when_one_is_false_and_true_when_every_decided_one_is() {
        let entry = |name: &str, status: &str, message: &str| FleetStatus {
            name: name.into(),
            conditions: vec![Condition {
                type_: REACHABLE.into(),
                status: status.into(),
                reason: "r".into(),
                message: message.into(),
                observed_generation: Some(1),
                last_transition_time: at(0),
            }],
            ..FleetStatus::default()
        };
        let a = aggregate_reachable(&[entry("us", "True", "up"), entry("eu", "False", "down")]);
        assert_eq!((a.status, a.reason), (ConditionStatus::False, ReachableReason::Unreachable));
        assert_eq!(a.message, "eu: down; us: up");
        let a = aggregate_reachable(&[entry("us", "True", "up"), entry("eu", "Unknown", "off")]);
        assert_eq!((a.status, a.reason), (ConditionStatus::True, ReachableReason::Reachable));
        let a = aggregate_reachable(&[entry("us", "Unknown", "x"), FleetStatus::default()]);
        assert_eq!((a.status, a.message.as_str()), (ConditionStatus::Unknown, "x"));
    }

    #[test]
    fn an_owned_condition_no_longer_decided_is_dropped() {
        let stale = Condition {
            type_: "ResolvedRefs".into(),
            status: "True".into(),
            reason: "ResolvedRefs".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at(0),
        };
        let mut verdict = accepted(1);
        verdict.conditions.retain(|c| c.type_ == ConditionType::Accepted);
        let aggregate = AggregateProgrammed {
            status: true,
            reason: "Programmed".into(),
            message: String::new(),
        };
        let conditions = desired_conditions(&verdict, &aggregate, (None, None), &[stale], &at(1));
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Accepted", "Programmed"]);
    }

    #[test]
    fn a_registering_trunk_gets_registered_from_its_pods_and_others_get_none() {
        let mut facts = fleet();
        facts.registrations.insert(
            "voice/acme-in".to_string(),
            vec![(
                "gw-0".to_string(),
                RegistrationHealth {
                    registered: Some(false),
                    since: 1,
                    detail: "403 Forbidden".into(),
                },
            )],
        );
        let status = desired_outbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &facts,
            (true, true),
            &at(0),
        );
        let registered = find(&status.conditions, "Registered");
        assert_eq!(
            (registered.status.as_str(), registered.reason.as_str()),
            ("False", "NotRegistered")
        );
        assert_eq!(registered.message, "not registered from gw-0 (403 Forbidden)");
        // Registration turned off: the condition goes.
        let off = desired_outbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&status),
            &facts,
            (true, false),
            &at(1),
        );
        assert!(off.conditions.iter().all(|c| c.type_ != "Registered"), "{:?}", off.conditions);
    }

    #[test]
    fn an_object_served_by_another_fleet_gets_no_address_of_this_one() {
        let not_here = programmed(false, ProgrammedReason::NotServedHere);
        let inbound = desired_inbound_status(&accepted(1), &not_here, None, &fleet(), &at(0));
        assert_eq!(inbound.endpoint, None);
        assert!(inbound.endpoints.is_empty() && inbound.fleets[0].endpoints.is_empty());
        let outbound =
            desired_outbound_status(&accepted(1), &not_here, None, &fleet(), (true, false), &at(0));
        assert!(outbound.source_addresses.is_empty());
        assert_eq!(find(&outbound.conditions, "Programmed").reason, "NotServedHere");
    }

    #[test]
    fn transitions_are_status_or_reason_changes_only() {
        let pending = desired_inbound_status(
            &accepted(1),
            &ProgrammedDecision {
                status: false,
                reason: ProgrammedReason::Pending,
                message: "2 of 3".into(),
            },
            None,
            &fleet(),
            &at(0),
        );
        let all: Vec<String> =
            transitions(&[], &pending.conditions).into_iter().map(|t| t.type_).collect();
        assert_eq!(all, ["Accepted", "ResolvedRefs", "Programmed"], "a first status: all new");

        let fewer = desired_inbound_status(
            &accepted(1),
            &ProgrammedDecision {
                status: false,
                reason: ProgrammedReason::Pending,
                message: "1 of 3".into(),
            },
            Some(&pending),
            &fleet(),
            &at(1),
        );
        assert!(changed(Some(&pending), &fewer));
        assert!(transitions(&pending.conditions, &fewer.conditions).is_empty());

        let done = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&fewer),
            &fleet(),
            &at(2),
        );
        let t = transitions(&fewer.conditions, &done.conditions);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].type_, "Programmed");
        assert_eq!(t[0].previous_status.as_deref(), Some("False"));
        assert_eq!((t[0].status.as_str(), t[0].reason.as_str()), ("True", "Programmed"));
    }

    #[test]
    fn the_endpoints_are_the_load_balancer_then_every_ready_gateway_sorted_once() {
        let pods = [
            ready_pod("gw-2", Some("2001:db8::9")),
            ready_pod("gw-1", Some("198.51.100.22")),
            ready_pod("gw-0", Some("198.51.100.21")),
            ready_pod("gw-3", Some("198.51.100.21")),
            ready_pod("gw-4", None),
            GatewayPod { ready: false, ..ready_pod("gw-5", Some("198.51.100.99")) },
        ];
        let facts = FleetFacts::from_pods(
            "edge",
            Some("us"),
            Some("sip:lb.example:5060"),
            &[],
            5070,
            &pods,
        );
        assert_eq!(
            facts.endpoints,
            [
                "sip:lb.example:5060",
                "sip:198.51.100.21:5070",
                "sip:198.51.100.22:5070",
                "sip:[2001:db8::9]:5070"
            ]
        );
        assert_eq!(facts.source_addresses, ["198.51.100.21", "198.51.100.22", "2001:db8::9"]);
        let egress = ["203.0.113.5".to_string()];
        let facts = FleetFacts::from_pods("edge", None, None, &egress, 5060, &pods);
        assert_eq!(facts.endpoints[0], "sip:198.51.100.21:5060", "no load balancer: a gateway");
        assert_eq!(facts.source_addresses, egress, "the settings' egress addresses win");
        assert_eq!(FleetFacts::from_pods("edge", None, None, &[], 5060, &[]).endpoints.len(), 0);
    }

    #[test]
    fn two_fleets_keep_each_others_entry_and_agree_on_the_aggregate() {
        let now = at(0);
        // us writes first: programmed on its gateways.
        let us = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            None,
            &FleetFacts {
                endpoints: vec!["sip:198.51.100.1:5060".into()],
                ..fleet_named("us", "us")
            },
            &now,
        );
        assert!(find(&us.conditions, "Programmed").status == "True");
        // eu sees it and adds its own entry: pending there, so the aggregate is not programmed.
        let eu_facts = FleetFacts {
            endpoints: vec!["sip:198.51.100.2:5060".into()],
            ..fleet_named("eu", "eu")
        };
        let eu = desired_inbound_status(
            &accepted(1),
            &ProgrammedDecision {
                status: false,
                reason: ProgrammedReason::Pending,
                message: "1 of 2 ready gateway pods still run a config without generation 1".into(),
            },
            Some(&us),
            &eu_facts,
            &at(5),
        );
        let names: Vec<&str> = eu.fleets.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["us", "eu"], "the list keeps its order; eu's entry is appended");
        assert_eq!(eu.fleets[0], us.fleets[0], "us's entry kept as it was");
        let top = find(&eu.conditions, "Programmed");
        assert_eq!((top.status.as_str(), top.reason.as_str()), ("False", "Pending"));
        assert_eq!(
            top.message,
            "eu: 1 of 2 ready gateway pods still run a config without generation 1; \
             us: Programmed"
        );
        assert_eq!(eu.endpoints, ["sip:198.51.100.2:5060", "sip:198.51.100.1:5060"]);
        assert_eq!(eu.endpoint.as_deref(), Some("sip:198.51.100.2:5060"));
        // us reconciles again with the same own decision: it computes what eu wrote, nothing to
        // write (no flapping).
        let us_again = desired_inbound_status(
            &accepted(1),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&eu),
            &FleetFacts {
                endpoints: vec!["sip:198.51.100.1:5060".into()],
                ..fleet_named("us", "us")
            },
            &at(9),
        );
        assert!(!changed(Some(&eu), &us_again), "{us_again:#?}");
    }

    #[test]
    fn a_fleet_that_does_not_serve_the_object_leaves_the_aggregate_to_the_others() {
        let fleets = |eu: (&str, &str), us: (&str, &str), us_generation: i64| {
            let entry = |name: &str, (status, reason): (&str, &str), generation: i64| FleetStatus {
                name: name.into(),
                conditions: vec![Condition {
                    type_: PROGRAMMED.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message: format!("{reason} here"),
                    observed_generation: Some(generation),
                    last_transition_time: at(0),
                }],
                ..FleetStatus::default()
            };
            vec![entry("eu", eu, 2), entry("us", us, us_generation)]
        };
        let a = aggregate_programmed(
            Some(2),
            &fleets(("False", "NotServedHere"), ("True", "Programmed"), 2),
        );
        let mut reversed = fleets(("False", "NotServedHere"), ("True", "Programmed"), 2);
        reversed.reverse();
        assert_eq!(aggregate_programmed(Some(2), &reversed), a, "the list's order does not matter");
        assert_eq!((a.status, a.reason.as_str()), (true, "Programmed"));
        assert_eq!(a.message, "eu: NotServedHere here; us: Programmed here");
        let a = aggregate_programmed(
            Some(2),
            &fleets(("False", "NotServedHere"), ("False", "NoGateways"), 2),
        );
        assert_eq!((a.status, a.reason.as_str()), (false, "NoGateways"));
        let a = aggregate_programmed(
            Some(2),
            &fleets(("False", "NotServedHere"), ("False", "NotServedHere"), 2),
        );
        assert_eq!((a.status, a.reason.as_str()), (false, "NotServedHere"));
        // An entry for an older generation is pending, whatever it said then.
        let a = aggregate_programmed(
            Some(2),
            &fleets(("True", "Programmed"), ("True", "Programmed"), 1),
        );
        assert_eq!((a.status, a.reason.as_str()), (false, "Pending"));
        assert!(a.message.contains("us: has not reported on generation 2 yet"), "{}", a.message);
        // A refusal wins over pending, whichever fleet says it.
        let a = aggregate_programmed(
            Some(2),
            &fleets(("False", "Pending"), ("False", "SecretNotFound"), 2),
        );
        assert_eq!(a.reason, "SecretNotFound");
    }

    #[test]
    fn a_huge_message_is_cut_to_what_the_api_server_takes() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() > MAX_MESSAGE_BYTES - 2);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(condition_status(&[], "Accepted"), None);
    }
}
