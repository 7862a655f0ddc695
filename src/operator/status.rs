//! The status the operator wants each object to have: pure, from the compile verdict, the
//! `Programmed` decision, the fleet's facts and the object's current status.
//!
//! - Conditions `Accepted` and `ResolvedRefs` come from the verdict, `Programmed` from
//!   `programmed::decide_programmed`. Each carries `observedGeneration`; `lastTransitionTime` is
//!   kept from the current status when the condition's status did not change, and is `now`
//!   otherwise (the caller passes the time: no clock here).
//! - Any other condition already there (an OutboundTrunk's `Reachable`, written by the gateways'
//!   health checks) is kept untouched, and the order of the current list is kept, so that an
//!   unchanged status compares equal ([`changed`]) and is not written again.
//! - Per kind (DESIGN §2): InboundTrunk `endpoint` (the fleet's carrier-facing address),
//!   `credentialsSecret`, `numbers`; OutboundTrunk `sourceAddresses` (the fleet's egress
//!   addresses). Both are left out when this fleet does not serve the object: its address would
//!   be the wrong one to give a carrier.
//! - [`transitions`]: the conditions whose status or reason changed, for events.
//!
//! Called by the controller's reconcile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::programmed::{PROGRAMMED, ProgrammedDecision, ProgrammedReason};
use crate::api::{
    InboundTrunkStatus, NumberCounts, OutboundTrunkStatus, TransferDestinationStatus,
};
use crate::config::diagnostic::Verdict;

/// The condition the gateways write on an OutboundTrunk.
pub const REACHABLE: &str = "Reachable";

/// The condition types the operator owns. A current condition of one of these types that the
/// operator no longer decides is dropped; any other type is kept as it is.
pub const OWNED_CONDITIONS: [&str; 3] = ["Accepted", "ResolvedRefs", PROGRAMMED];

/// Longest condition message the API server accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// What the operator's configuration says about its gateway fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetFacts {
    /// The carrier-facing SIP address, `sip:203.0.113.10:5060`.
    pub endpoint: Option<String>,
    /// The fleet's egress addresses, for carriers' allowlists.
    pub source_addresses: Vec<String>,
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
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    current: &[Condition],
    now: &Time,
) -> Condition {
    let status = status_text(status);
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

/// The conditions an object should have: the verdict's, `Programmed`, and every condition of
/// another type from `current`, in the order of `current` (new ones appended).
pub fn desired_conditions(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
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
                c.status,
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
        programmed.status,
        programmed.reason.as_str(),
        &programmed.message,
        generation,
        current,
        now,
    ));

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

fn served_here(programmed: &ProgrammedDecision) -> bool {
    programmed.reason != ProgrammedReason::NotServedHere
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
    InboundTrunkStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(verdict, programmed, current_conditions, now),
        endpoint: fleet.endpoint.clone().filter(|_| served_here(programmed)),
        credentials_secret: verdict.credentials_secret.clone(),
        numbers: verdict
            .numbers
            .map(|t| NumberCounts { accepted: t.accepted, conflicting: t.conflicting }),
    }
}

/// The status an OutboundTrunk should have. `Reachable` is the gateways' and stays as it is.
pub fn desired_outbound_status(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    current: Option<&OutboundTrunkStatus>,
    fleet: &FleetFacts,
    now: &Time,
) -> OutboundTrunkStatus {
    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    OutboundTrunkStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(verdict, programmed, current_conditions, now),
        source_addresses: if served_here(programmed) {
            fleet.source_addresses.clone()
        } else {
            Vec::new()
        },
    }
}

/// The status a TransferDestination should have.
pub fn desired_transfer_status(
    verdict: &Verdict,
    programmed: &ProgrammedDecision,
    current: Option<&TransferDestinationStatus>,
    now: &Time,
) -> TransferDestinationStatus {
    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    TransferDestinationStatus {
        observed_generation: verdict.generation,
        conditions: desired_conditions(verdict, programmed, current_conditions, now),
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
            endpoint: Some("sip:203.0.113.10:5060".into()),
            source_addresses: vec!["198.51.100.7".into()],
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
            &at(0),
        );
        let second = desired_transfer_status(
            &accepted(2),
            &programmed(true, ProgrammedReason::Programmed),
            Some(&first),
            &at(5),
        );
        assert!(changed(Some(&first), &second));
        assert!(second.conditions.iter().all(|c| c.observed_generation == Some(2)));
        assert!(second.conditions.iter().all(|c| c.last_transition_time == at(0)));
        assert!(transitions(&first.conditions, &second.conditions).is_empty());
    }

    #[test]
    fn reachable_is_kept_untouched_in_its_place() {
        let reachable = Condition {
            type_: REACHABLE.into(),
            status: "False".into(),
            reason: "NoAnswer".into(),
            message: "OPTIONS timed out".into(),
            observed_generation: Some(1),
            last_transition_time: at(-30),
        };
        let current = OutboundTrunkStatus {
            observed_generation: Some(1),
            conditions: vec![reachable.clone()],
            source_addresses: Vec::new(),
        };
        let s = desired_outbound_status(
            &accepted(2),
            &programmed(false, ProgrammedReason::Pending),
            Some(&current),
            &fleet(),
            &at(0),
        );
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Reachable", "Accepted", "ResolvedRefs", "Programmed"]);
        assert_eq!(s.conditions[0], reachable);
        assert_eq!(s.source_addresses, ["198.51.100.7"]);
        // Written again with the same inputs: equal, including the order.
        let again = desired_outbound_status(
            &accepted(2),
            &programmed(false, ProgrammedReason::Pending),
            Some(&s),
            &fleet(),
            &at(9),
        );
        assert_eq!(again, s);
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
        let conditions = desired_conditions(
            &verdict,
            &programmed(true, ProgrammedReason::Programmed),
            &[stale],
            &at(1),
        );
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Accepted", "Programmed"]);
    }

    #[test]
    fn an_object_served_by_another_fleet_gets_no_address_of_this_one() {
        let not_here = programmed(false, ProgrammedReason::NotServedHere);
        let inbound = desired_inbound_status(&accepted(1), &not_here, None, &fleet(), &at(0));
        assert_eq!(inbound.endpoint, None);
        let outbound = desired_outbound_status(&accepted(1), &not_here, None, &fleet(), &at(0));
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
    fn a_huge_message_is_cut_to_what_the_api_server_takes() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() > MAX_MESSAGE_BYTES - 2);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(condition_status(&[], "Accepted"), None);
    }
}
