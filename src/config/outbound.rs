//! The outbound matcher: which OutboundTrunk an agent's call goes out through, and what the
//! carrier is told. The gateway calls [`decide`] on every new INVITE of the agent-facing
//! listener (and on every `POST /v1/calls`), and `trunkline explain --outbound` calls the same
//! function offline and prints its steps, so the two never disagree. Pure: no I/O, no clock.
//!
//! The checks, in order (DESIGN §4, Outbound):
//! 1. the trunk: named by the trunk header (`X-Trunkline-Outbound-Trunk: NAME` or
//!    `namespace/NAME`) or the Request-URI parameter `trunk=NAME`. No name: 400; a name no
//!    trunk has: 404; a bare name that two namespaces have, or a header and a parameter that
//!    name different trunks: 485 (Ambiguous). The gateway never guesses.
//! 2. the agent: the trunk's `agents` allowlist, when it has one, must hold the agent id
//!    (`X-Trunkline-Agent-ID`); a call that names no agent is then refused too (403).
//! 3. the number: the Request-URI user (E.164, `tel:`, `;user=phone`, visual separators;
//!    the normaliser of inbound numbers): not a number, 484.
//! 4. the caller id: the trunk's `callerId`, unless the agent asked for another (the From user,
//!    when it is a number) that is `callerId` or in `allowedCallerIds`; any other number, 403.
//!    A From user that is not a number (`sip:agent-7@...`) asks for nothing.
//!
//! The carrier then gets `sip:NUMBER@host:port` with the number written per `numberFormat`
//! ([`carrier_user`]), the caller id in From and `P-Asserted-Identity`.

use std::sync::Arc;

use serde::Serialize;

use super::lookup::{Refusal, Step, StepKind};
use super::model::{CarrierHost, ObjectName, OutboundTrunkRoute, RoutingTable};
use super::number::{self, E164};
use super::refusal::RefusalRule;

/// The header naming the trunk, after the prefix of trunkline's headers.
pub const TRUNK_HEADER: &str = "Outbound-Trunk";
/// The Request-URI parameter naming the trunk.
pub const TRUNK_PARAM: &str = "trunk";

/// What the matcher looks at in an agent's request to call out.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboundAttempt<'a> {
    /// The trunk as the trunk header names it.
    pub trunk_header: Option<&'a str>,
    /// The trunk as the Request-URI's `trunk=` parameter names it.
    pub trunk_param: Option<&'a str>,
    /// The number to dial: a Request-URI (`sip:+1415...@gw`, `tel:+1-415-...`) or a number.
    pub to: &'a str,
    /// The agent id the request names, if any.
    pub agent: Option<&'a str>,
    /// The caller id the agent asks for (the From user, or the API's `callerId`), if any.
    pub caller_id: Option<&'a str>,
}

impl<'a> OutboundAttempt<'a> {
    /// The attempt an INVITE makes: its Request-URI, From and headers (names compare
    /// case-insensitively; `prefix` is the prefix of trunkline's headers).
    pub fn from_invite(
        request_uri: &'a str,
        from_uri: &'a str,
        headers: &'a [(String, String)],
        prefix: &str,
    ) -> OutboundAttempt<'a> {
        let header = |suffix: &str| {
            headers.iter().find_map(|(n, v)| {
                let named = n.len() == prefix.len() + suffix.len()
                    && n[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && n[prefix.len()..].eq_ignore_ascii_case(suffix);
                named.then_some(v.trim())
            })
        };
        OutboundAttempt {
            trunk_header: header(TRUNK_HEADER),
            trunk_param: uri_param(request_uri, TRUNK_PARAM),
            to: request_uri,
            agent: header("Agent-ID").filter(|a| !a.is_empty()),
            caller_id: asked_caller_id(from_uri),
        }
    }
}

/// The user part of a From URI when it asks for a caller id: a URI whose user is a number
/// (digits with an optional `+` and visual separators), or a `tel:` URI.
fn asked_caller_id(from_uri: &str) -> Option<&str> {
    let uri = from_uri.trim();
    let rest = ["sip:", "sips:", "tel:"].iter().find_map(|scheme| {
        uri.get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &uri[scheme.len()..])
    })?;
    let user = rest.split(['@', ';', '?']).next().unwrap_or_default();
    let numeric = !user.is_empty()
        && user.chars().any(|c| c.is_ascii_digit())
        && user.chars().all(|c| c.is_ascii_digit() || "+-.() ".contains(c));
    numeric.then_some(user)
}

/// The value of a URI parameter (`;trunk=voice/carrier-out`), before any `?headers`.
fn uri_param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    let uri = uri.split('?').next().unwrap_or(uri);
    // Parameters follow the host part; a `;` in the user part (`;phone-context`) comes
    // before `@`.
    let params = match uri.find('@') {
        Some(at) => &uri[at..],
        None => uri,
    };
    params.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim()).filter(|v| !v.is_empty())
    })
}

/// The call goes out through a trunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundRoute {
    /// Serialised as its namespace/name only: never the whole trunk, never credentials.
    #[serde(serialize_with = "serialize_trunk_name")]
    pub trunk: Arc<OutboundTrunkRoute>,
    pub number: E164,
    pub caller_id: E164,
    /// The agent the request named, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The carrier's hosts in the order this call tries them: the trunk's (priority order)
    /// as [`decide`] gives it; the gateway puts them in [`rotation`] order.
    #[serde(skip)]
    pub hosts: Vec<CarrierHost>,
}

impl OutboundRoute {
    /// The Request-URI toward the carrier's first host: `sip:NUMBER@host:port`, with
    /// `;transport=` for streams.
    pub fn carrier_uri(&self) -> String {
        self.carrier_uri_at(self.first_host())
    }

    /// The host this call tries first.
    pub fn first_host(&self) -> &CarrierHost {
        self.hosts.first().unwrap_or(self.trunk.primary())
    }

    /// The Request-URI toward one of the carrier's hosts: without a port for a host looked up
    /// by SRV (RFC 3263 §4.2: the port comes from the SRV target, the URI keeps the domain).
    pub fn carrier_uri_at(&self, at: &CarrierHost) -> String {
        let host = if at.host.contains(':') { format!("[{}]", at.host) } else { at.host.clone() };
        let transport = match at.transport {
            crate::api::Transport::Udp => "",
            crate::api::Transport::Tcp => ";transport=tcp",
            crate::api::Transport::Tls => ";transport=tls",
        };
        let user = carrier_user(&self.trunk, &self.number);
        if at.srv {
            return format!("sip:{user}@{host}{transport}");
        }
        format!("sip:{user}@{host}:{}{transport}", at.port)
    }
}

fn serialize_trunk_name<S: serde::Serializer>(
    trunk: &Arc<OutboundTrunkRoute>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&trunk.name)
}

/// The order in which a call tries the carrier's hosts (`hosts` is the trunk's list, lowest
/// priority first): each priority in turn, and within one a weighted random order as DNS SRV
/// orders its targets (RFC 2782: pick one with a chance of its weight over the weights left,
/// take it out, again; hosts of weight 0 after the others, in the spec's order). `up` says
/// whether a host's OPTIONS probes let it take calls: hosts that are down are left out, unless
/// every host is, when the call tries them all (what a trunk with one host does today: its
/// `Reachable` never refuses a call). `unit` gives numbers in `[0, 1)`: the gateway's random
/// source, or a fixed sequence in tests.
pub fn rotation(
    hosts: &[CarrierHost],
    up: impl Fn(&CarrierHost) -> bool,
    mut unit: impl FnMut() -> f64,
) -> Vec<&CarrierHost> {
    let mut order = Vec::with_capacity(hosts.len());
    let mut start = 0;
    while start < hosts.len() {
        let priority = hosts[start].priority;
        let end = hosts[start..]
            .iter()
            .position(|h| h.priority != priority)
            .map_or(hosts.len(), |n| start + n);
        let mut left: Vec<&CarrierHost> = hosts[start..end].iter().collect();
        while !left.is_empty() {
            let total: u64 = left.iter().map(|h| u64::from(h.weight)).sum();
            let index = if total == 0 {
                0
            } else {
                // `unit` may give anything; clamped, a pick is always a host of weight > 0.
                let point = (unit().clamp(0.0, 1.0) * total as f64) as u64;
                let point = point.min(total - 1);
                let mut sum = 0;
                left.iter()
                    .position(|h| {
                        sum += u64::from(h.weight);
                        h.weight > 0 && point < sum
                    })
                    .unwrap_or(0)
            };
            order.push(left.remove(index));
        }
        start = end;
    }
    if order.iter().any(|h| up(h)) {
        order.retain(|h| up(h));
    }
    order
}

/// A number as this carrier wants it written: `+14155550142`, or `14155550142` when the trunk's
/// `numberFormat.leadingPlus` is false.
pub fn carrier_user(trunk: &OutboundTrunkRoute, number: &E164) -> String {
    if trunk.leading_plus { number.as_str().to_string() } else { number.digits().to_string() }
}

/// Every check made, in order; the outcome: the route, or the refusal (whose step is the last,
/// the only one with `passed: false`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboundDecision {
    pub steps: Vec<Step>,
    pub outcome: Result<OutboundRoute, Refusal>,
    /// The trunk the request named, once found: also when a later check refused the call, so
    /// that `explain --outbound` can describe it. Not serialised (the route names it).
    #[serde(skip)]
    pub trunk: Option<Arc<OutboundTrunkRoute>>,
}

/// Decides an agent's request to call out. See the module docs for the order of checks.
pub fn decide(table: &RoutingTable, attempt: &OutboundAttempt) -> OutboundDecision {
    let mut steps = Vec::new();
    let mut trunk = None;
    let outcome = decide_steps(table, attempt, &mut steps, &mut trunk);
    OutboundDecision { steps, outcome, trunk }
}

fn decide_steps(
    table: &RoutingTable,
    attempt: &OutboundAttempt,
    steps: &mut Vec<Step>,
    found_trunk: &mut Option<Arc<OutboundTrunkRoute>>,
) -> Result<OutboundRoute, Refusal> {
    let pass = |steps: &mut Vec<Step>, check, detail: String| {
        steps.push(Step { check, passed: true, detail })
    };
    let refuse = |steps: &mut Vec<Step>, check, rule: RefusalRule, message: String, detail| {
        steps.push(Step { check, passed: false, detail });
        Refusal { status: rule.status(), rule, message }
    };

    // 1. The trunk.
    let named = match (attempt.trunk_header, attempt.trunk_param) {
        (None, None) => {
            return Err(refuse(
                steps,
                StepKind::Trunk,
                RefusalRule::TrunkNotNamed,
                "name the OutboundTrunk".into(),
                "the request names no OutboundTrunk (the trunk header or a trunk= Request-URI \
                 parameter)"
                    .into(),
            ));
        }
        (Some(h), Some(p)) if !same_name(h, p) => {
            return Err(refuse(
                steps,
                StepKind::Trunk,
                RefusalRule::AmbiguousTrunk,
                "the trunk header and the trunk= parameter differ".into(),
                format!("the trunk header names {h:?} and the Request-URI trunk={p:?}"),
            ));
        }
        (Some(h), _) => h,
        (None, Some(p)) => p,
    };
    let found: Vec<&Arc<OutboundTrunkRoute>> = match named.split_once('/') {
        Some((namespace, name)) => {
            table.outbound.get(&ObjectName::new(namespace, name)).into_iter().collect()
        }
        None => table.outbound.values().filter(|t| t.name.name == named).collect(),
    };
    let trunk = match found.as_slice() {
        [] => {
            return Err(refuse(
                steps,
                StepKind::Trunk,
                RefusalRule::UnknownTrunk,
                "no such OutboundTrunk".into(),
                format!("no accepted OutboundTrunk is named {named:?}"),
            ));
        }
        [one] => Arc::clone(one),
        several => {
            let names: Vec<String> = several.iter().map(|t| t.name.to_string()).collect();
            return Err(refuse(
                steps,
                StepKind::Trunk,
                RefusalRule::AmbiguousTrunk,
                "the trunk name is ambiguous: name it as namespace/name".into(),
                format!("{named:?} names {}: say which as namespace/name", names.join(", ")),
            ));
        }
    };
    pass(steps, StepKind::Trunk, format!("OutboundTrunk {} (named {named:?})", trunk.name));
    *found_trunk = Some(Arc::clone(&trunk));

    // 2. The agent.
    let agent = attempt.agent.map(str::to_string);
    if trunk.agents.is_empty() {
        let who = agent.as_deref().map_or("a call naming no agent".into(), |a| format!("{a:?}"));
        pass(
            steps,
            StepKind::Agent,
            format!("{} has no agents allowlist: {who} may use it", trunk.name),
        );
    } else {
        match &agent {
            Some(a) if trunk.agents.contains(a) => pass(
                steps,
                StepKind::Agent,
                format!("agent {a:?} is in the agents allowlist of {}", trunk.name),
            ),
            Some(a) => {
                return Err(refuse(
                    steps,
                    StepKind::Agent,
                    RefusalRule::AgentNotAllowed,
                    "this agent may not use this trunk".into(),
                    format!("agent {a:?} is not in the agents allowlist of {}", trunk.name),
                ));
            }
            None => {
                return Err(refuse(
                    steps,
                    StepKind::Agent,
                    RefusalRule::AgentNotAllowed,
                    "name the agent: this trunk allows listed agents only".into(),
                    format!(
                        "the request names no agent and {} allows only its agents list",
                        trunk.name
                    ),
                ));
            }
        }
    }

    // 3. The number.
    let number = match number::normalize(attempt.to) {
        Ok(n) => n,
        Err(e) => {
            return Err(refuse(
                steps,
                StepKind::Number,
                RefusalRule::DialedNumberInvalid,
                "the number to dial is not a phone number".into(),
                format!("{:?} is not a number to dial: {e}", attempt.to),
            ));
        }
    };
    pass(steps, StepKind::Number, format!("dials {number}"));

    // 4. The caller id.
    let caller_id = match attempt.caller_id {
        None => {
            pass(
                steps,
                StepKind::Caller,
                format!("presents the trunk's callerId {}", trunk.caller_id),
            );
            trunk.caller_id.clone()
        }
        Some(asked) => match number::normalize(asked) {
            Ok(n) if n == trunk.caller_id || trunk.allowed_caller_ids.contains(&n) => {
                pass(steps, StepKind::Caller, format!("presents {n}, which the agent asked for"));
                n
            }
            Ok(n) => {
                return Err(refuse(
                    steps,
                    StepKind::Caller,
                    RefusalRule::CallerIdNotAllowed,
                    "this caller id is not allowed on this trunk".into(),
                    format!(
                        "the agent asked for caller id {n}: {} allows {}",
                        trunk.name,
                        allowed_list(&trunk)
                    ),
                ));
            }
            Err(e) => {
                return Err(refuse(
                    steps,
                    StepKind::Caller,
                    RefusalRule::CallerIdNotAllowed,
                    "this caller id is not allowed on this trunk".into(),
                    format!("the caller id {asked:?} is not a number: {e}"),
                ));
            }
        },
    };
    let hosts = trunk.hosts.clone();
    let route = OutboundRoute { trunk, number, caller_id, agent, hosts };
    pass(steps, StepKind::Destination, format!("the call goes to {}", route.carrier_uri()));
    Ok(route)
}

/// `voice/carrier-out` and `carrier-out` name the same trunk when the names agree.
fn same_name(a: &str, b: &str) -> bool {
    let name = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    a == b || (!(a.contains('/') && b.contains('/')) && name(a) == name(b))
}

fn allowed_list(trunk: &OutboundTrunkRoute) -> String {
    let mut all = vec![trunk.caller_id.to_string()];
    all.extend(trunk.allowed_caller_ids.iter().map(|n| n.to_string()));
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Limits;
    use std::collections::BTreeSet;

    fn trunk(ns: &str, name: &str) -> OutboundTrunkRoute {
        OutboundTrunkRoute {
            name: ObjectName::new(ns, name),
            generation: None,
            hosts: vec![crate::config::model::CarrierHost::new(
                "sip.carrier.example",
                5060,
                crate::api::Transport::Udp,
            )],
            credentials: None,
            caller_id: E164::parse_canonical("+14155550100").unwrap(),
            allowed_caller_ids: [E164::parse_canonical("+14155550101").unwrap()].into(),
            leading_plus: true,
            health_check_interval_seconds: None,
            registration_expires_seconds: None,
            limits: Limits::default(),
            agents: BTreeSet::new(),
            codecs: vec![],
            media: Default::default(),
        }
    }

    fn table(trunks: Vec<OutboundTrunkRoute>) -> RoutingTable {
        RoutingTable::new(vec![], trunks, vec![])
    }

    fn attempt<'a>(trunk: &'a str, to: &'a str) -> OutboundAttempt<'a> {
        OutboundAttempt { trunk_header: Some(trunk), to, ..OutboundAttempt::default() }
    }

    fn rule(d: &OutboundDecision) -> Option<RefusalRule> {
        d.outcome.as_ref().err().map(|r| r.rule)
    }

    #[test]
    fn a_trunk_is_found_by_name_or_namespace_and_name_and_never_guessed() {
        let t = table(vec![trunk("voice", "out"), trunk("sales", "out"), trunk("voice", "eu")]);
        let ok = decide(&t, &attempt("eu", "+14155550142"));
        assert_eq!(ok.outcome.unwrap().trunk.name.to_string(), "voice/eu");
        let ok = decide(&t, &attempt("sales/out", "+14155550142"));
        assert_eq!(ok.outcome.unwrap().trunk.name.to_string(), "sales/out");
        let ambiguous = decide(&t, &attempt("out", "+14155550142"));
        assert_eq!(rule(&ambiguous), Some(RefusalRule::AmbiguousTrunk));
        assert!(ambiguous.steps[0].detail.contains("sales/out, voice/out"), "{ambiguous:?}");
        assert_eq!(rule(&decide(&t, &attempt("nope", "+1415"))), Some(RefusalRule::UnknownTrunk));
        assert_eq!(
            rule(&decide(&t, &attempt("other/eu", "+14155550142"))),
            Some(RefusalRule::UnknownTrunk)
        );
        let none = OutboundAttempt { to: "+14155550142", ..OutboundAttempt::default() };
        assert_eq!(rule(&decide(&t, &none)), Some(RefusalRule::TrunkNotNamed));
    }

    #[test]
    fn the_trunk_header_and_uri_parameter_must_agree() {
        let t = table(vec![trunk("voice", "out"), trunk("voice", "eu")]);
        let both = OutboundAttempt {
            trunk_header: Some("voice/out"),
            trunk_param: Some("out"),
            to: "+14155550142",
            ..OutboundAttempt::default()
        };
        assert!(decide(&t, &both).outcome.is_ok());
        let differ = OutboundAttempt { trunk_param: Some("eu"), ..both };
        assert_eq!(rule(&decide(&t, &differ)), Some(RefusalRule::AmbiguousTrunk));
    }

    #[test]
    fn an_invite_names_trunk_number_agent_and_caller_id_in_its_uri_from_and_headers() {
        let headers = vec![
            ("x-trunkline-outbound-trunk".to_string(), " voice/out ".to_string()),
            ("X-Trunkline-Agent-ID".to_string(), "support".to_string()),
        ];
        let a = OutboundAttempt::from_invite(
            "sip:+1-415-555-0142@gw.example;user=phone;trunk=out",
            "sip:+14155550101@agents.example",
            &headers,
            "X-Trunkline-",
        );
        assert_eq!(a.trunk_header, Some("voice/out"));
        assert_eq!(a.trunk_param, Some("out"));
        assert_eq!(a.agent, Some("support"));
        assert_eq!(a.caller_id, Some("+14155550101"));
        let t = table(vec![trunk("voice", "out")]);
        let route = decide(&t, &a).outcome.unwrap();
        assert_eq!(route.number.as_str(), "+14155550142");
        assert_eq!(route.caller_id.as_str(), "+14155550101");
        // A From user that is not a number asks for nothing; a tel: From does.
        let named = OutboundAttempt::from_invite("tel:+14155550142", "sip:agent-7@x", &[], "X-");
        assert_eq!(named.caller_id, None);
        let tel = OutboundAttempt::from_invite("sip:1@x", "tel:+1-415-555-0101", &[], "X-");
        assert_eq!(tel.caller_id, Some("+1-415-555-0101"));
        // A ;phone-context in the user part is not the trunk parameter.
        assert_eq!(uri_param("sip:0142;trunk=x@gw", "trunk"), None);
    }

    #[test]
    fn the_agents_allowlist_refuses_other_agents_and_calls_naming_none() {
        let mut listed = trunk("voice", "out");
        listed.agents = ["support".to_string()].into();
        let t = table(vec![listed]);
        let mut a = attempt("out", "+14155550142");
        assert_eq!(rule(&decide(&t, &a)), Some(RefusalRule::AgentNotAllowed));
        a.agent = Some("sales");
        assert_eq!(rule(&decide(&t, &a)), Some(RefusalRule::AgentNotAllowed));
        a.agent = Some("support");
        assert_eq!(decide(&t, &a).outcome.unwrap().agent.as_deref(), Some("support"));
    }

    #[test]
    fn a_decision_keeps_the_trunk_it_found_even_when_a_later_check_refuses() {
        let mut listed = trunk("voice", "out");
        listed.agents = ["support".to_string()].into();
        let t = table(vec![listed, trunk("sales", "out")]);
        let mut a = attempt("voice/out", "+14155550142");
        a.agent = Some("sales");
        let refused = decide(&t, &a);
        assert_eq!(rule(&refused), Some(RefusalRule::AgentNotAllowed));
        assert_eq!(refused.trunk.map(|t| t.name.to_string()).as_deref(), Some("voice/out"));
        // Found by nothing: no trunk to describe.
        assert_eq!(decide(&t, &attempt("out", "+14155550142")).trunk, None);
        assert_eq!(decide(&t, &attempt("nope", "+14155550142")).trunk, None);
    }

    #[test]
    fn numbers_to_dial_are_normalised_and_refused_when_they_are_not_numbers() {
        let t = table(vec![trunk("voice", "out")]);
        for to in ["tel:+1-415-555-0142", "sip:+14155550142@gw;user=phone", "0014155550142"] {
            let route = decide(&t, &attempt("out", to)).outcome.unwrap();
            assert_eq!(route.number.as_str(), "+14155550142", "{to}");
        }
        for to in ["sip:support@gw", "sip:+1@gw", "tel:abc", ""] {
            assert_eq!(
                rule(&decide(&t, &attempt("out", to))),
                Some(RefusalRule::DialedNumberInvalid),
                "{to:?}"
            );
        }
    }

    #[test]
    fn only_the_trunks_caller_ids_may_be_presented() {
        let t = table(vec![trunk("voice", "out")]);
        let mut a = attempt("out", "+14155550142");
        assert_eq!(decide(&t, &a).outcome.unwrap().caller_id.as_str(), "+14155550100");
        a.caller_id = Some("+14155550101");
        assert_eq!(decide(&t, &a).outcome.unwrap().caller_id.as_str(), "+14155550101");
        a.caller_id = Some("+14155550199");
        let refused = decide(&t, &a);
        assert_eq!(rule(&refused), Some(RefusalRule::CallerIdNotAllowed));
        assert_eq!(refused.outcome.unwrap_err().status, 403);
    }

    fn host(name: &str, priority: u16, weight: u16) -> CarrierHost {
        CarrierHost { priority, weight, ..CarrierHost::new(name, 5060, crate::api::Transport::Udp) }
    }

    fn names(order: &[&CarrierHost]) -> Vec<String> {
        order.iter().map(|h| h.host.clone()).collect()
    }

    #[test]
    fn a_rotation_goes_by_priority_then_by_weight() {
        let hosts = [host("a", 0, 1), host("b", 0, 3), host("c", 1, 1), host("d", 1, 0)];
        // Weights 1 and 3: a point in the first quarter picks a, the rest b.
        let fixed = |units: Vec<f64>| {
            let mut units = units.into_iter();
            move || units.next().unwrap_or(0.0)
        };
        let all_up = |_: &CarrierHost| true;
        assert_eq!(names(&rotation(&hosts, all_up, fixed(vec![0.1]))), ["a", "b", "c", "d"]);
        assert_eq!(names(&rotation(&hosts, all_up, fixed(vec![0.3]))), ["b", "a", "c", "d"]);
        assert_eq!(names(&rotation(&hosts, all_up, fixed(vec![0.99]))), ["b", "a", "c", "d"]);
        // Weight 0 comes after the others of its priority, whatever the draw.
        assert_eq!(
            names(&rotation(&hosts, all_up, fixed(vec![0.9, 0.9, 0.0, 0.0]))),
            ["b", "a", "c", "d"]
        );
        // Out-of-range draws are clamped, never a panic.
        for wild in [f64::NAN, -3.0, 7.0, f64::INFINITY] {
            assert_eq!(rotation(&hosts, all_up, move || wild).len(), 4, "{wild}");
        }
        // Over many draws, b gets about three times a's calls.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let firsts =
            (0..4000).filter(|_| rotation(&hosts, all_up, &mut next)[0].host == "b").count();
        assert!((2800..3200).contains(&firsts), "{firsts}");
    }

    #[test]
    fn hosts_that_are_down_are_left_out_unless_all_are() {
        let hosts = [host("a", 0, 1), host("b", 0, 1), host("c", 1, 1)];
        let first = || 0.0;
        let down_a = |h: &CarrierHost| h.host != "a";
        assert_eq!(names(&rotation(&hosts, down_a, first)), ["b", "c"]);
        let only_c = |h: &CarrierHost| h.host == "c";
        assert_eq!(names(&rotation(&hosts, only_c, first)), ["c"]);
        assert_eq!(names(&rotation(&hosts, |_: &CarrierHost| false, first)), ["a", "b", "c"]);
        assert!(rotation(&[], |_: &CarrierHost| true, first).is_empty());
    }

    #[test]
    fn the_carrier_uri_follows_number_format_transport_and_port() {
        let mut plain = trunk("voice", "out");
        plain.leading_plus = false;
        plain.hosts[0].transport = crate::api::Transport::Tls;
        plain.hosts[0].port = 5061;
        let t = table(vec![plain]);
        let route = decide(&t, &attempt("out", "+14155550142")).outcome.unwrap();
        assert_eq!(route.carrier_uri(), "sip:14155550142@sip.carrier.example:5061;transport=tls");
        let mut v6 = trunk("voice", "v6");
        v6.hosts[0].host = "2001:db8::1".into();
        let t = table(vec![v6]);
        let route = decide(&t, &attempt("v6", "+14155550142")).outcome.unwrap();
        assert_eq!(route.carrier_uri(), "sip:+14155550142@[2001:db8::1]:5060");
    }
}
