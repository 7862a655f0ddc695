//! `Reachable`: does the carrier of an OutboundTrunk answer SIP OPTIONS from the gateways that
//! would send its calls (DESIGN §2, issue 12 item 6)?
//!
//! The gateways probe (`call::health`) and report per trunk in `GET /v1/status`
//! (`observe::admin::OutboundHealth`); they never write to the API server. The operator reads
//! the reports with its prober and decides one condition per fleet, then sums the fleets up as
//! it does `Programmed` (`status::aggregate_reachable`). The rule, per fleet, over its ready pods
//! that report the trunk:
//!
//! - **False**, reason `Unreachable`, when any of them has it unreachable (its last 3 probes in
//!   a row failed). The message names those pods and what failed (`gw-1 (timeout)`): a carrier
//!   that one pod cannot reach fails the calls that pod places, so one is enough.
//! - **True**, reason `Reachable`, when every one of them that has decided has it reachable,
//!   and at least one has.
//! - **Unknown**, reason `NotProbed`, when probing is off (`healthCheck.enabled: false`), the
//!   fleet does not serve the trunk (refused, another region), or no pod has decided yet.
//!
//! Why it does not flap with N pods: each pod already has hysteresis (3 misses to go down, one
//! answer to come back) and its report changes only when its own state flips, not per probe;
//! pods that disagree give False, and stay False while any of them is down, whichever it is; the
//! status is written only when it differs and `lastTransitionTime` moves only when the status
//! does. Pods that have not decided (just started, or their probing just restarted after the
//! target changed) are left out rather than counted either way.
//!
//! Pure; `status` calls it for every OutboundTrunk reconcile.

use crate::observe::admin::OutboundHealth;

/// The condition type.
pub const REACHABLE: &str = "Reachable";

/// Why `Reachable` has its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReachableReason {
    /// Every gateway pod that decided gets answers.
    Reachable,
    /// Some gateway pod missed its last 3 probes.
    Unreachable,
    /// Not probed here, or no gateway pod has decided yet.
    NotProbed,
}

impl ReachableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReachableReason::Reachable => "Reachable",
            ReachableReason::Unreachable => "Unreachable",
            ReachableReason::NotProbed => "NotProbed",
        }
    }
}

/// A condition's status: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// The status written as `text`; anything unexpected is `Unknown`.
    pub fn parse(text: &str) -> ConditionStatus {
        match text {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }
}

/// `Reachable` as decided for one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReachableDecision {
    pub status: ConditionStatus,
    pub reason: ReachableReason,
    pub message: String,
}

/// Whether this fleet probes the trunk at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probing {
    /// Its gateways probe it.
    On,
    /// `healthCheck.enabled: false`.
    Disabled,
    /// This fleet does not serve it (refused, or left out of its region's table).
    NotServed,
}

/// Longest piece of a pod's `detail` put in the condition's message, in characters.
pub const MAX_DETAIL_CHARS: usize = 120;

/// A report's `detail` as it may go into a condition message: printable, short. The report
/// comes over the network from a process that faces the internet: its text is not trusted to
/// be either.
fn sanitized(detail: &str) -> String {
    detail.chars().filter(|c| !c.is_control()).take(MAX_DETAIL_CHARS).collect()
}

/// Decides `Reachable` for one fleet from what its ready pods report on the trunk (pod name,
/// report), in any order.
pub fn decide_reachable(
    probing: Probing,
    reports: &[(String, OutboundHealth)],
) -> ReachableDecision {
    let not_probed = |message: &str| ReachableDecision {
        status: ConditionStatus::Unknown,
        reason: ReachableReason::NotProbed,
        message: message.to_string(),
    };
    match probing {
        Probing::Disabled => return not_probed("healthCheck is disabled: no OPTIONS probes"),
        Probing::NotServed => {
            return not_probed("this gateway fleet does not serve it, so does not probe it");
        }
        Probing::On => {}
    }
    let mut decided: Vec<(&str, bool, String)> = reports
        .iter()
        .filter_map(|(pod, h)| h.reachable.map(|r| (pod.as_str(), r, sanitized(&h.detail))))
        .collect();
    decided.sort_by(|a, b| a.0.cmp(b.0));
    let down: Vec<String> = decided
        .iter()
        .filter(|(_, reachable, _)| !reachable)
        .map(
            |(pod, _, detail)| {
                if detail.is_empty() { pod.to_string() } else { format!("{pod} ({detail})") }
            },
        )
        .collect();
    if !down.is_empty() {
        return ReachableDecision {
            status: ConditionStatus::False,
            reason: ReachableReason::Unreachable,
            message: format!(
                "the carrier missed the last 3 OPTIONS probes from {} of {} gateway pods: {}",
                down.len(),
                decided.len(),
                down.join(", ")
            ),
        };
    }
    match decided.len() {
        0 => not_probed("no gateway pod has an answer or 3 misses from it yet"),
        n => ReachableDecision {
            status: ConditionStatus::True,
            reason: ReachableReason::Reachable,
            message: format!("the carrier answers OPTIONS from all {n} gateway pods that probe it"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(reachable: Option<bool>, detail: &str) -> OutboundHealth {
        OutboundHealth { reachable, since: 1, detail: detail.into(), last_status: None }
    }

    fn reports(items: &[(&str, Option<bool>, &str)]) -> Vec<(String, OutboundHealth)> {
        items.iter().map(|(pod, r, d)| (pod.to_string(), health(*r, d))).collect()
    }

    #[test]
    fn one_pod_that_cannot_reach_the_carrier_makes_it_false_and_is_named() {
        let d = decide_reachable(
            Probing::On,
            &reports(&[
                ("gw-1", Some(false), "503 Service Unavailable"),
                ("gw-0", Some(true), "200 OK"),
                ("gw-2", Some(false), "timeout"),
                ("gw-3", None, ""),
            ]),
        );
        assert_eq!((d.status, d.reason), (ConditionStatus::False, ReachableReason::Unreachable));
        assert_eq!(
            d.message,
            "the carrier missed the last 3 OPTIONS probes from 2 of 3 gateway pods: \
             gw-1 (503 Service Unavailable), gw-2 (timeout)"
        );
    }

    #[test]
    fn every_decided_pod_reachable_is_true_and_undecided_pods_do_not_count() {
        let d = decide_reachable(
            Probing::On,
            &reports(&[
                ("gw-0", Some(true), "200 OK"),
                ("gw-1", None, ""),
                ("gw-2", Some(true), "404 Not Found"),
            ]),
        );
        assert_eq!((d.status, d.reason), (ConditionStatus::True, ReachableReason::Reachable));
        assert_eq!(d.message, "the carrier answers OPTIONS from all 2 gateway pods that probe it");
    }

    #[test]
    fn not_probed_when_off_not_served_or_nobody_decided() {
        for (probing, reports) in [
            (Probing::Disabled, reports(&[("gw-0", Some(false), "timeout")])),
            (Probing::NotServed, reports(&[("gw-0", Some(true), "200 OK")])),
            (Probing::On, reports(&[("gw-0", None, "")])),
            (Probing::On, Vec::new()),
        ] {
            let d = decide_reachable(probing, &reports);
            assert_eq!(
                (d.status, d.reason),
                (ConditionStatus::Unknown, ReachableReason::NotProbed)
            );
        }
    }

    #[test]
    fn a_reported_detail_is_cut_and_stripped_of_control_characters() {
        let long = format!("timeout\r\n{}", "x".repeat(500));
        let d = decide_reachable(Probing::On, &reports(&[("gw-0", Some(false), long.as_str())]));
        assert!(!d.message.contains('\n') && !d.message.contains('\r'), "{}", d.message);
        assert!(
            d.message.ends_with(&format!("gw-0 (timeout{})", "x".repeat(113))),
            "{}",
            d.message
        );
    }

    #[test]
    fn the_decision_does_not_depend_on_the_order_of_the_reports() {
        let mut r = reports(&[
            ("gw-1", Some(false), "timeout"),
            ("gw-0", Some(false), "408 Request Timeout"),
        ]);
        let a = decide_reachable(Probing::On, &r);
        r.reverse();
        assert_eq!(decide_reachable(Probing::On, &r), a);
    }
}
