//! The transfer matcher (issue 13): which TransferDestination an agent's transfer request names,
//! and whether this agent may use it. The gateway will call [`decide`] on every REFER (and BYE
//! with the transfer header) of an agent leg, and `explain --transfer` the same function, so the
//! two never disagree. Pure: no I/O, no clock.
//!
//! An agent names a destination (DESIGN §4, Transfer) by:
//! 1. its name, as the user part of any SIP URI (`<sip:sales-desk@anything>`) or bare
//!    (`X-Trunkline-Transfer-To: sales-desk`), in the namespace of the call's trunk;
//! 2. the exact number of a `Phone` destination of that namespace (`tel:+14155550199`,
//!    `sip:+14155550199@host`, separators allowed);
//! 3. the exact URI of a `Sip` destination of that namespace (scheme and host compared without
//!    case, the user part exactly; parameters and headers ignored).
//!
//! Anything else is refused with 403 and a rule: a name that exists only in another namespace
//! (`TransferOtherNamespace`), nothing at all (`TransferUnknownDestination`), a number or URI that
//! no destination has (`TransferNotADestination`: an arbitrary number is never dialed — toll
//! fraud), a destination whose `agents` list does not hold the call's agent
//! (`TransferAgentNotAllowed`). A number that two destinations of the namespace share is taken
//! only when exactly one of them allows the agent; otherwise `TransferAmbiguous` (485).

use std::sync::Arc;

use serde::Serialize;

use super::lookup::{Refusal, Step, StepKind};
use super::model::{ObjectName, RoutingTable, TransferRoute, TransferTarget};
use super::number;
use super::refusal::RefusalRule;

/// What an agent's transfer request says.
#[derive(Clone, Copy, Debug)]
pub struct TransferAttempt<'a> {
    /// The namespace of the call's trunk: destinations are looked up there only.
    pub namespace: &'a str,
    /// The call's agent (inbound: the agent the call went to; outbound: the agent it named).
    pub agent: &'a str,
    /// The `Refer-To` value (`<sip:NAME@host>`, a `tel:`/`sip:` URI) or a bare name.
    pub target: &'a str,
}

/// How the destination was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MatchedBy {
    Name,
    Number,
    Uri,
}

/// The transfer goes to a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferChoice {
    #[serde(serialize_with = "serialize_name")]
    pub destination: Arc<TransferRoute>,
    pub matched_by: MatchedBy,
}

fn serialize_name<S: serde::Serializer>(d: &Arc<TransferRoute>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&d.name)
}

/// Every check made, in order, and the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferDecision {
    pub steps: Vec<Step>,
    /// The destination the request names, also when the agent may not use it (for explain).
    #[serde(serialize_with = "serialize_opt_name", skip_serializing_if = "Option::is_none")]
    pub destination: Option<Arc<TransferRoute>>,
    pub outcome: Result<TransferChoice, Refusal>,
}

fn serialize_opt_name<S: serde::Serializer>(
    d: &Option<Arc<TransferRoute>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&d.name),
        None => s.serialize_none(),
    }
}

/// Decides an agent's transfer request. See the module docs.
pub fn decide(table: &RoutingTable, attempt: &TransferAttempt) -> TransferDecision {
    let mut steps = Vec::new();
    let mut destination = None;
    let outcome = decide_steps(table, attempt, &mut steps, &mut destination);
    TransferDecision { steps, destination, outcome }
}

/// The parts of a transfer target: scheme (lowercase, `None` for a bare name), user, host.
struct Target<'a> {
    scheme: Option<String>,
    user: &'a str,
    host: Option<&'a str>,
}

fn parse_target(raw: &str) -> Target<'_> {
    let mut t = raw.trim();
    // A name-addr: take what is inside the angle brackets.
    if let (Some(open), Some(close)) = (t.find('<'), t.rfind('>'))
        && open < close
    {
        t = &t[open + 1..close];
    }
    let t = t.split('?').next().unwrap_or(t);
    let Some((scheme, rest)) = t
        .split_once(':')
        .filter(|(s, _)| ["sip", "sips", "tel"].iter().any(|k| s.eq_ignore_ascii_case(k)))
    else {
        return Target { scheme: None, user: t.split(';').next().unwrap_or(t), host: None };
    };
    let scheme = Some(scheme.to_ascii_lowercase());
    if scheme.as_deref() == Some("tel") {
        return Target { scheme, user: rest.split(';').next().unwrap_or(rest), host: None };
    }
    match rest.rsplit_once('@') {
        Some((user, host)) => {
            let host = host.split(';').next().unwrap_or(host);
            Target { scheme, user: user.split(';').next().unwrap_or(user), host: Some(host) }
        }
        None => Target { scheme, user: "", host: Some(rest.split(';').next().unwrap_or(rest)) },
    }
}

fn decide_steps(
    table: &RoutingTable,
    attempt: &TransferAttempt,
    steps: &mut Vec<Step>,
    found: &mut Option<Arc<TransferRoute>>,
) -> Result<TransferChoice, Refusal> {
    let refuse = |steps: &mut Vec<Step>, check, rule: RefusalRule, message: &str, detail| {
        steps.push(Step { check, passed: false, detail });
        Refusal { status: rule.status(), rule, message: message.to_string() }
    };
    let ns = attempt.namespace;
    let target = parse_target(attempt.target);
    let in_namespace = || table.transfers.values().filter(move |d| d.name.namespace == ns);
    // Destinations of other namespaces with the name the request's user part says.
    let elsewhere = |user: &str| -> Vec<String> {
        table
            .transfers
            .values()
            .filter(|d| !user.is_empty() && d.name.name == user && d.name.namespace != ns)
            .map(|d| d.name.to_string())
            .collect()
    };
    let other_namespace = |steps: &mut Vec<Step>, names: Vec<String>| {
        refuse(
            steps,
            StepKind::Destination,
            RefusalRule::TransferOtherNamespace,
            "no such transfer destination",
            format!(
                "{:?} is in another namespace ({}); a call on a trunk of {ns} may use {ns}'s only",
                target.user,
                names.join(", ")
            ),
        )
    };

    // 1. By name.
    let by_name = (!target.user.is_empty())
        .then(|| table.transfers.get(&ObjectName::new(ns, target.user)))
        .flatten();
    let (destination, matched_by) = if let Some(d) = by_name {
        (Arc::clone(d), MatchedBy::Name)
    } else if let Ok(n) = number::normalize(target.user).map_err(|_| ()).and_then(|n| {
        // A bare word that happens to be digits-only is still a number.
        if target.scheme.is_some() || target.user.starts_with('+') { Ok(n) } else { Err(()) }
    }) {
        // 2. By number.
        let holders: Vec<&Arc<TransferRoute>> = in_namespace()
            .filter(|d| matches!(&d.target, TransferTarget::Phone { number, .. } if *number == n))
            .collect();
        let usable: Vec<&&Arc<TransferRoute>> =
            holders.iter().filter(|d| allows(d, attempt.agent)).collect();
        match (holders.as_slice(), usable.as_slice()) {
            ([], _) => {
                return Err(refuse(
                    steps,
                    StepKind::Destination,
                    RefusalRule::TransferNotADestination,
                    "not a transfer destination",
                    format!(
                        "{n} is the number of no TransferDestination in namespace {ns}: it is not dialed"
                    ),
                ));
            }
            (_, [one]) => (Arc::clone(one), MatchedBy::Number),
            ([one], []) => (Arc::clone(one), MatchedBy::Number),
            (several, _) => {
                let names: Vec<String> = several.iter().map(|d| d.name.to_string()).collect();
                return Err(refuse(
                    steps,
                    StepKind::Destination,
                    RefusalRule::TransferAmbiguous,
                    "the number names several destinations: name one",
                    format!("{n} is the number of {}: name the destination", names.join(", ")),
                ));
            }
        }
    } else if let (Some(scheme), Some(host)) = (&target.scheme, target.host) {
        // 3. By SIP URI.
        let same = |uri: &str| {
            let d = parse_target(uri);
            d.scheme.as_deref() == Some(scheme.as_str())
                && d.user == target.user
                && d.host.is_some_and(|h| h.eq_ignore_ascii_case(host))
        };
        match in_namespace()
            .find(|d| matches!(&d.target, TransferTarget::Sip { uri, .. } if same(uri)))
        {
            Some(d) => (Arc::clone(d), MatchedBy::Uri),
            None => {
                // `<sip:NAME@host>` whose NAME is a destination of another namespace.
                let names = elsewhere(target.user);
                if !names.is_empty() {
                    return Err(other_namespace(steps, names));
                }
                return Err(refuse(
                    steps,
                    StepKind::Destination,
                    RefusalRule::TransferNotADestination,
                    "not a transfer destination",
                    format!(
                        "{:?} is neither the name, the number nor the URI of a TransferDestination \
                         in namespace {ns}: it is not dialed",
                        attempt.target
                    ),
                ));
            }
        }
    } else {
        let names = elsewhere(target.user);
        if !names.is_empty() {
            return Err(other_namespace(steps, names));
        }
        return Err(refuse(
            steps,
            StepKind::Destination,
            RefusalRule::TransferUnknownDestination,
            "no such transfer destination",
            format!("no TransferDestination {:?} in namespace {ns}", target.user),
        ));
    };
    steps.push(Step {
        check: StepKind::Destination,
        passed: true,
        detail: format!(
            "{:?} names TransferDestination {} (by {matched_by:?})",
            attempt.target, destination.name
        ),
    });

    *found = Some(Arc::clone(&destination));

    // 4. The agent.
    if !allows(&destination, attempt.agent) {
        return Err(refuse(
            steps,
            StepKind::Agent,
            RefusalRule::TransferAgentNotAllowed,
            "this agent may not use this destination",
            format!("agent {:?} is not in the agents list of {}", attempt.agent, destination.name),
        ));
    }
    let who = if destination.agents.is_empty() { "every agent" } else { "its agents list" };
    steps.push(Step {
        check: StepKind::Agent,
        passed: true,
        detail: format!("{} allows {who}, agent {:?} included", destination.name, attempt.agent),
    });
    // A bridged Phone transfer dials out through an OutboundTrunk: that trunk's agents
    // allowlist applies too, as it does to the agent's own outbound calls. (Refer mode asks the
    // caller's side to place the call; the trunk is not used.)
    if let (TransferTarget::Phone { outbound_trunk, .. }, super::model::TransferMode::Bridge) =
        (&destination.target, destination.mode)
        && let Some(trunk) = table.outbound.get(outbound_trunk)
        && !trunk.agents.is_empty()
        && !trunk.agents.contains(attempt.agent)
    {
        return Err(refuse(
            steps,
            StepKind::Agent,
            RefusalRule::TransferAgentNotAllowed,
            "this agent may not use this destination",
            format!(
                "{} dials through OutboundTrunk {}, whose agents allowlist does not hold agent {:?}",
                destination.name, trunk.name, attempt.agent
            ),
        ));
    }
    Ok(TransferChoice { destination, matched_by })
}

fn allows(destination: &TransferRoute, agent: &str) -> bool {
    destination.agents.is_empty() || destination.agents.contains(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::TransferMode;
    use crate::config::number::E164;

    fn phone(ns: &str, name: &str, number: &str, agents: &[&str]) -> TransferRoute {
        TransferRoute {
            name: ObjectName::new(ns, name),
            generation: None,
            target: TransferTarget::Phone {
                number: E164::parse_canonical(number).unwrap(),
                outbound_trunk: ObjectName::new(ns, "carrier-out"),
            },
            mode: TransferMode::Bridge,
            agents: agents.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn sip(ns: &str, name: &str, uri: &str) -> TransferRoute {
        TransferRoute {
            name: ObjectName::new(ns, name),
            generation: None,
            target: TransferTarget::Sip {
                uri: uri.into(),
                credentials: None,
                encryption: Default::default(),
            },
            mode: TransferMode::Bridge,
            agents: Default::default(),
        }
    }

    fn table() -> RoutingTable {
        RoutingTable::new(
            vec![],
            vec![],
            vec![
                phone("voice", "sales-desk", "+14155550199", &["support"]),
                phone("voice", "night-desk", "+14155550198", &[]),
                phone("sales", "sales-only", "+14155550197", &[]),
                sip("voice", "pbx-operator", "sip:operator@pbx.example.com;transport=tls"),
            ],
        )
    }

    fn try_(target: &str, agent: &str) -> TransferDecision {
        decide(&table(), &TransferAttempt { namespace: "voice", agent, target })
    }

    fn rule(d: &TransferDecision) -> Option<RefusalRule> {
        d.outcome.as_ref().err().map(|r| r.rule)
    }

    fn name(d: &TransferDecision) -> String {
        d.outcome.as_ref().unwrap().destination.name.to_string()
    }

    #[test]
    fn a_destination_is_named_by_name_number_or_uri_of_its_namespace() {
        for (target, by) in [
            ("<sip:sales-desk@anything.example>", MatchedBy::Name),
            ("sales-desk", MatchedBy::Name),
            ("<tel:+1-415-555-0199>", MatchedBy::Number),
            ("sip:+14155550199@gw;user=phone", MatchedBy::Number),
        ] {
            let d = try_(target, "support");
            assert_eq!(name(&d), "voice/sales-desk", "{target}");
            assert_eq!(d.outcome.unwrap().matched_by, by, "{target}");
        }
        let d = try_("<SIP:operator@PBX.example.com;transport=tls?X-A=1>", "bot");
        assert_eq!(name(&d), "voice/pbx-operator");
    }

    #[test]
    fn an_arbitrary_number_or_uri_is_never_dialed() {
        assert_eq!(
            rule(&try_("tel:+19005550100", "support")),
            Some(RefusalRule::TransferNotADestination)
        );
        assert_eq!(
            rule(&try_("sip:someone@evil.example", "support")),
            Some(RefusalRule::TransferNotADestination)
        );
        assert_eq!(
            rule(&try_("sip:other@pbx.example.com", "support")),
            Some(RefusalRule::TransferNotADestination)
        );
        assert_eq!(rule(&try_("nobody", "support")), Some(RefusalRule::TransferUnknownDestination));
        let refused = try_("tel:+19005550100", "support").outcome.unwrap_err();
        assert_eq!(refused.status, 403);
    }

    #[test]
    fn a_destination_of_another_namespace_or_that_excludes_the_agent_is_refused() {
        assert_eq!(rule(&try_("sales-only", "support")), Some(RefusalRule::TransferOtherNamespace));
        // The same name as the user part of a SIP URI, as a REFER writes it.
        for uri in ["<sip:sales-only@127.0.0.1>", "sip:sales-only@agents.example;transport=tcp"] {
            assert_eq!(
                rule(&try_(uri, "support")),
                Some(RefusalRule::TransferOtherNamespace),
                "{uri}"
            );
        }
        assert_eq!(
            rule(&try_("no-such-desk", "support")),
            Some(RefusalRule::TransferUnknownDestination)
        );
        assert_eq!(
            rule(&try_("tel:+14155550197", "support")),
            Some(RefusalRule::TransferNotADestination)
        );
        let refused = try_("sales-desk", "billing");
        assert_eq!(rule(&refused), Some(RefusalRule::TransferAgentNotAllowed));
        assert_eq!(
            refused.destination.map(|d| d.name.to_string()).as_deref(),
            Some("voice/sales-desk"),
            "the destination is kept for explain when the agent may not use it"
        );
        assert_eq!(try_("sales-only", "support").destination, None, "none named: none kept");
        assert_eq!(
            name(&try_("night-desk", "billing")),
            "voice/night-desk",
            "no list: every agent"
        );
    }

    #[test]
    fn a_bridged_phone_transfer_follows_the_agents_allowlist_of_its_outbound_trunk() {
        use crate::config::model::{Limits, OutboundTrunkRoute};
        let trunk = OutboundTrunkRoute {
            name: ObjectName::new("voice", "carrier-out"),
            generation: None,
            hosts: vec![crate::config::model::CarrierHost::new(
                "sip.carrier.example",
                5060,
                crate::api::Transport::Udp,
            )],
            credentials: None,
            caller_id: E164::parse_canonical("+14155550100").unwrap(),
            allowed_caller_ids: Default::default(),
            leading_plus: true,
            health_check_interval_seconds: None,
            registration_expires_seconds: None,
            limits: Limits::default(),
            agents: ["billing".to_string()].into(),
            codecs: vec![],
            media: Default::default(),
        };
        let mut referred = phone("voice", "referred", "+14155550177", &[]);
        referred.mode = TransferMode::Refer;
        let t = RoutingTable::new(
            vec![],
            vec![trunk],
            vec![phone("voice", "desk", "+14155550199", &[]), referred],
        );
        let by = |target, agent| decide(&t, &TransferAttempt { namespace: "voice", agent, target });
        assert_eq!(name(&by("desk", "billing")), "voice/desk");
        let refused = by("desk", "support");
        assert_eq!(rule(&refused), Some(RefusalRule::TransferAgentNotAllowed));
        assert!(refused.steps.last().unwrap().detail.contains("voice/carrier-out"));
        assert_eq!(
            name(&by("referred", "support")),
            "voice/referred",
            "Refer mode: the trunk is not used"
        );
    }

    #[test]
    fn a_number_two_destinations_share_is_taken_only_when_one_allows_the_agent() {
        let t = RoutingTable::new(
            vec![],
            vec![],
            vec![
                phone("voice", "a", "+14155550111", &["support"]),
                phone("voice", "b", "+14155550111", &["billing"]),
                phone("voice", "c", "+14155550122", &[]),
                phone("voice", "d", "+14155550122", &[]),
            ],
        );
        let by = |target, agent| decide(&t, &TransferAttempt { namespace: "voice", agent, target });
        assert_eq!(name(&by("tel:+14155550111", "billing")), "voice/b");
        assert_eq!(rule(&by("tel:+14155550122", "x")), Some(RefusalRule::TransferAmbiguous));
        assert_eq!(rule(&by("tel:+14155550111", "x")), Some(RefusalRule::TransferAmbiguous));
    }
}
