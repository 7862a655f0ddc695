//! `Registered`: do the gateways that would take an OutboundTrunk's calls hold a binding at its
//! carrier's registrar (issue 17, item 5)? Only for trunks with `registration` on; a trunk
//! without has no `Registered` condition (one left from before is dropped).
//!
//! The gateways register (`call::registration`) and report per trunk in `GET /v1/status`
//! (`observe::admin::RegistrationHealth`); they never write to the API server. Per fleet, over
//! its ready pods that report the trunk, the rule is `Reachable`'s (`operator::reachable`):
//!
//! - **False**, reason `NotRegistered`, when any of them failed its last attempt: a pod without
//!   a binding does not get the carrier's calls. The message names those pods and what the
//!   registrar said (`gw-1 (403 Forbidden)`).
//! - **True**, reason `Registered`, when every one of them that has an outcome is registered,
//!   and at least one has.
//! - **Unknown**, reason `Pending`, when no pod has an outcome yet, or `NotServedHere` when the
//!   fleet does not serve the trunk.
//!
//! The fleets' entries are then summed up as `Reachable` is: False when some fleet says False,
//! True when every fleet that decided says True, else Unknown. Pure.

use super::reachable::ConditionStatus;
use crate::api::FleetStatus;
use crate::observe::admin::RegistrationHealth;

/// The condition type.
pub const REGISTERED: &str = "Registered";

/// Longest piece of a pod's `detail` in the message, in characters.
const MAX_DETAIL_CHARS: usize = 120;

/// `Registered` as decided for one fleet or summed up over the fleets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredDecision {
    pub status: ConditionStatus,
    /// `Registered`, `NotRegistered`, `Pending` or `NotServedHere`.
    pub reason: &'static str,
    pub message: String,
}

/// Decides `Registered` for one fleet from what its ready pods report on the trunk (pod name,
/// report), in any order. `served`: the fleet serves the trunk.
pub fn decide_registered(
    served: bool,
    reports: &[(String, RegistrationHealth)],
) -> RegisteredDecision {
    if !served {
        return RegisteredDecision {
            status: ConditionStatus::Unknown,
            reason: "NotServedHere",
            message: "this gateway fleet does not serve it, so does not register it".into(),
        };
    }
    let mut decided: Vec<(&str, bool, String)> = reports
        .iter()
        .filter_map(|(pod, h)| h.registered.map(|r| (pod.as_str(), r, sanitized(&h.detail))))
        .collect();
    decided.sort_by(|a, b| a.0.cmp(b.0));
    let failed: Vec<String> = decided
        .iter()
        .filter(|(_, registered, _)| !registered)
        .map(
            |(pod, _, detail)| {
                if detail.is_empty() { pod.to_string() } else { format!("{pod} ({detail})") }
            },
        )
        .collect();
    if !failed.is_empty() {
        return RegisteredDecision {
            status: ConditionStatus::False,
            reason: "NotRegistered",
            message: format!("not registered from {}", failed.join(", ")),
        };
    }
    match decided.len() {
        0 => RegisteredDecision {
            status: ConditionStatus::Unknown,
            reason: "Pending",
            message: "no gateway pod has registered it yet".into(),
        },
        n => RegisteredDecision {
            status: ConditionStatus::True,
            reason: "Registered",
            message: format!("registered from {n} gateway pod(s)"),
        },
    }
}

/// Sums up the fleets' `Registered`: False when some fleet says False (its reason and
/// message), True when every fleet that decided says True and one did, else Unknown `Pending`.
/// The message is the one entry's, or `name: message` of each entry joined with `; `, in
/// fleet-name order. Entries without the condition are left out.
pub fn aggregate_registered(fleets: &[FleetStatus]) -> RegisteredDecision {
    let (status, message) = super::status::roll_up(fleets, REGISTERED);
    let reason = match status {
        ConditionStatus::False => "NotRegistered",
        ConditionStatus::True => "Registered",
        ConditionStatus::Unknown => "Pending",
    };
    RegisteredDecision { status, reason, message }
}

/// A report's `detail` as it may go into a condition message: printable, short (it comes from
/// a process that faces the internet).
fn sanitized(detail: &str) -> String {
    detail.chars().filter(|c| !c.is_control()).take(MAX_DETAIL_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn report(registered: Option<bool>, detail: &str) -> RegistrationHealth {
        RegistrationHealth { registered, since: 1, detail: detail.into() }
    }

    fn reports(list: &[(&str, Option<bool>, &str)]) -> Vec<(String, RegistrationHealth)> {
        list.iter().map(|(p, r, d)| (p.to_string(), report(*r, d))).collect()
    }

    #[test]
    fn one_pod_without_a_binding_makes_it_false_naming_the_pod_and_the_answer() {
        let d = decide_registered(
            true,
            &reports(&[("gw-0", Some(true), ""), ("gw-1", Some(false), "403 Forbidden\n")]),
        );
        assert_eq!((d.status, d.reason), (ConditionStatus::False, "NotRegistered"));
        assert_eq!(d.message, "not registered from gw-1 (403 Forbidden)");
    }

    #[test]
    fn every_decided_pod_registered_is_true_and_none_decided_is_pending() {
        let d = decide_registered(true, &reports(&[("gw-0", Some(true), ""), ("gw-1", None, "")]));
        assert_eq!((d.status, d.reason), (ConditionStatus::True, "Registered"));
        assert_eq!(d.message, "registered from 1 gateway pod(s)");
        let d = decide_registered(true, &reports(&[("gw-1", None, "")]));
        assert_eq!((d.status, d.reason), (ConditionStatus::Unknown, "Pending"));
        let d = decide_registered(false, &reports(&[("gw-0", Some(true), "")]));
        assert_eq!((d.status, d.reason), (ConditionStatus::Unknown, "NotServedHere"));
    }

    #[test]
    fn fleets_sum_up_false_first_then_true() {
        let entry = |name: &str, status: &str, message: &str| FleetStatus {
            name: name.into(),
            conditions: vec![Condition {
                type_: REGISTERED.into(),
                status: status.into(),
                reason: "x".into(),
                message: message.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..FleetStatus::default()
        };
        let both = [entry("us", "True", "up"), entry("eu", "False", "down")];
        let d = aggregate_registered(&both);
        assert_eq!((d.status, d.reason), (ConditionStatus::False, "NotRegistered"));
        assert_eq!(d.message, "eu: down; us: up");
        let d = aggregate_registered(&[entry("us", "True", "up")]);
        assert_eq!((d.status, d.message.as_str()), (ConditionStatus::True, "up"));
        assert_eq!(aggregate_registered(&[]).status, ConditionStatus::Unknown);
    }
}
