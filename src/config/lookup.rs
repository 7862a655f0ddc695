//! The inbound matcher: which trunk an INVITE belongs to, whether it may pass, and which agent
//! answers it. The gateway calls [`lookup`] on every inbound INVITE (after rate limits and after
//! verifying any digest response), and `trunkline explain` calls the same function offline and
//! prints its [`Decision`] step by step, so the two never disagree.
//!
//! It takes a [`RoutingTable`] and a [`CallAttempt`] (transport, source address, the verified
//! digest username if any, Request-URI, From and headers) and gives a [`Decision`]: every check
//! made, in order, with a sentence for a person, and the [`Outcome`]: route the call, challenge
//! it (407), or refuse it with a SIP status and a typed [`RefusalRule`]. Pure: no I/O, no clock.
//!
//! The checks follow the inbound flow of DESIGN §4:
//! 1. identify the trunk: by digest username when the INVITE carries verified credentials; else by
//!    source address among the trunks without digest; else challenge if a digest trunk admits the
//!    source; else refuse;
//! 2. a digest trunk with an address allowlist must also admit the source (DESIGN §2: "with
//!    digest, both must pass");
//! 3. the transport must be one the trunk allows;
//! 4. the dialed number (Request-URI user, normalised) must be held by this trunk;
//! 5. the caller (From) must match `allowedCallers` when the trunk has any;
//! 6. the agent: from the `Agent-ID` header when the trunk allows it and names a known agent,
//!    else the number's; the destination is the trunk's URI with the agent as user part.
//!
//! Two cases DESIGN §4 leaves open:
//! - a source that an address-only trunk admits, dialing a number held by a digest trunk that
//!   also admits the source (one carrier shared by two tenants), is challenged rather than
//!   refused with 404, so the digest tenant's calls are not lost to the address match;
//! - a source admitted only by trunks whose generated credentials are not there yet gets 503
//!   `CredentialsPending`, not a 407 it could never answer (a failed answer counts against it).
//!
//! DESIGN §4 lists "transport and codec policy" after the number; codecs are the SDP's business
//! (media), and the transport is checked before the number because it needs no parsing and tells
//! a misconfigured carrier the real problem first. Capacity (503) is stateful and not decided here.
//!
//! [`Refusal::message`] may be sent to the carrier as the SIP reason phrase: it never names
//! another tenant's trunk and never echoes raw header values. [`Step::detail`] is for operators
//! (`explain`) and may name both; raw input in it is quoted with Rust's `{:?}` escaping.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::model::{
    AgentHeader, InboundDigest, InboundTrunkRoute, ObjectName, RoutingTable, Transport,
};
use super::number::{self, E164, NumberError, Reading};
pub use super::refusal::RefusalRule;

/// The prefix of trunkline's first-class headers (DESIGN §5).
pub const DEFAULT_HEADER_PREFIX: &str = "X-Trunkline-";

/// What the matcher looks at in an inbound INVITE.
#[derive(Clone, Copy, Debug)]
pub struct CallAttempt<'a> {
    pub transport: Transport,
    pub source: IpAddr,
    /// Some when the INVITE carries an Authorization/Proxy-Authorization whose response the
    /// caller has already verified (`explain`: assumed valid).
    pub digest_username: Option<&'a str>,
    /// `sip:+14155550100@gw.example;user=phone`, `tel:+1-415-555-0100`, or a bare number.
    pub request_uri: &'a str,
    /// The From URI or number; a display name and angle brackets are tolerated.
    pub from: &'a str,
    /// The To URI: the dialed number of a call delivered through a registration, whose
    /// Request-URI is the registered contact.
    pub to: &'a str,
    /// The OutboundTrunk whose live registration reached the address this INVITE comes from
    /// (the gateway knows; `explain --registered`): the call may be one the carrier delivers
    /// to that binding.
    pub registration: Option<&'a ObjectName>,
    /// Every header of the INVITE; names compare case-insensitively.
    pub headers: &'a [(String, String)],
}

/// How the matcher is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOptions {
    /// Prefix of the first-class headers; the agent header is `{prefix}Agent-ID`.
    pub header_prefix: String,
}

impl Default for LookupOptions {
    fn default() -> Self {
        LookupOptions { header_prefix: DEFAULT_HEADER_PREFIX.to_string() }
    }
}

/// Every check made, in order, and what came of it. When the outcome is not a route, the last
/// step is the one that decided it and is the only one with `passed: false`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

/// One check of the matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub check: StepKind,
    pub passed: bool,
    /// A sentence for an operator; may name trunks and Secrets (never their contents).
    pub detail: String,
}

/// What a step checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Trunk,
    Address,
    Transport,
    Number,
    Caller,
    Agent,
    Destination,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Trunk => "trunk",
            StepKind::Address => "address",
            StepKind::Transport => "transport",
            StepKind::Number => "number",
            StepKind::Caller => "caller",
            StepKind::Agent => "agent",
            StepKind::Destination => "destination",
        }
    }
}

/// What to do with the INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Outcome {
    Route(Route),
    Challenge(Challenge),
    Refuse(Refusal),
}

/// The call goes to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Serialised as its namespace/name only: never the whole trunk, never credentials.
    #[serde(serialize_with = "serialize_trunk_name")]
    pub trunk: Arc<InboundTrunkRoute>,
    pub identified_by: IdentifiedBy,
    pub number: E164,
    /// The From number, normalised, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<E164>,
    pub agent: String,
    pub agent_reason: AgentReason,
    /// The Request-URI of the INVITE toward the agent runtime.
    pub destination: String,
}

/// How the trunk of a routed call was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum IdentifiedBy {
    DigestUsername,
    SourceAddress,
    /// It came from the registrar of the OutboundTrunk whose registration feeds the trunk.
    Registration,
}

/// Why the agent was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum AgentReason {
    /// The agent the dialed number goes to.
    Number,
    /// The agent the `Agent-ID` header named.
    Header,
}

impl AgentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentReason::Number => "Number",
            AgentReason::Header => "Header",
        }
    }
}

/// Answer 407: the INVITE has no credentials and a trunk with ready digest credentials admits
/// this source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Challenge {
    /// How many trunks with ready credentials admit the source.
    pub candidates: usize,
}

impl Challenge {
    /// RFC 3261 §22.3: a proxy-style challenge.
    pub const STATUS: u16 = 407;
}

/// Answer with a final error status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub status: u16,
    pub rule: RefusalRule,
    /// A sentence safe to send to the caller (as the reason phrase or a Warning): it names no
    /// other trunk and echoes no raw header.
    pub message: String,
}

/// Decides an inbound INVITE against the table. See the module docs for the order of checks.
pub fn lookup(table: &RoutingTable, attempt: &CallAttempt, options: &LookupOptions) -> Decision {
    let mut steps = Steps::default();
    let outcome = match decide(table, attempt, options, &mut steps) {
        Ok(route) => Outcome::Route(route),
        Err(outcome) => outcome,
    };
    Decision { steps: steps.0, outcome }
}

/// The steps recorded so far.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    fn pass(&mut self, check: StepKind, detail: String) {
        self.0.push(Step { check, passed: true, detail });
    }

    /// Records the failing step and gives the refusal, to be returned as `Err`.
    fn refuse(
        &mut self,
        check: StepKind,
        rule: RefusalRule,
        message: String,
        detail: String,
    ) -> Outcome {
        self.0.push(Step { check, passed: false, detail });
        Outcome::Refuse(Refusal { status: rule.status(), rule, message })
    }
}

fn decide(
    table: &RoutingTable,
    attempt: &CallAttempt,
    options: &LookupOptions,
    steps: &mut Steps,
) -> Result<Route, Outcome> {
    let dialed = number_part(attempt.request_uri);
    let (trunk, identified_by) = identify(table, attempt, dialed, steps)?;
    check_transport(&trunk, attempt.transport, steps)?;
    // A registration delivers to the registered contact: the number is then the To's.
    let dialed = match identified_by {
        IdentifiedBy::Registration if !holds(&trunk, dialed) => number_part(attempt.to),
        _ => dialed,
    };
    let (number, number_agent) = check_number(table, &trunk, attempt, dialed, steps)?;
    let caller = check_caller(&trunk, attempt.from, steps)?;
    let (agent, agent_reason) = choose_agent(&trunk, number_agent, attempt, options, steps);
    let destination = trunk.destination.with_user(&agent);
    steps.pass(StepKind::Destination, format!("the call goes to {destination}"));
    Ok(Route { trunk, identified_by, number, caller, agent, agent_reason, destination })
}

/// Rules 1 and 2: the trunk, and how it was found.
fn identify(
    table: &RoutingTable,
    attempt: &CallAttempt,
    dialed: Result<&str, &'static str>,
    steps: &mut Steps,
) -> Result<(Arc<InboundTrunkRoute>, IdentifiedBy), Outcome> {
    let source = attempt.source;
    if let Some(username) = attempt.digest_username {
        let Some(trunk) = table.trunk_by_digest_user(username) else {
            return Err(steps.refuse(
                StepKind::Trunk,
                RefusalRule::UnknownUser,
                "unknown digest username".to_string(),
                format!("no InboundTrunk has the digest username {username:?}"),
            ));
        };
        steps.pass(
            StepKind::Trunk,
            format!("identified InboundTrunk {} by digest username {username:?}", trunk.name),
        );
        if trunk.allowed_addresses.is_empty() {
            steps.pass(
                StepKind::Address,
                format!("{} has no address allowlist: its credentials suffice", trunk.name),
            );
        } else if trunk.admits_address(source) {
            steps.pass(
                StepKind::Address,
                format!(
                    "{source} is in the allowlist of {} ({})",
                    trunk.name,
                    list(&trunk.allowed_addresses)
                ),
            );
        } else {
            return Err(steps.refuse(
                StepKind::Address,
                RefusalRule::AddressNotAllowed,
                format!("{source} is not allowed on this trunk"),
                format!(
                    "{source} is not in the allowlist of {} ({}); with digest, both must pass",
                    trunk.name,
                    list(&trunk.allowed_addresses)
                ),
            ));
        }
        return Ok((Arc::clone(trunk), IdentifiedBy::DigestUsername));
    }

    if let Some(trunk) = attempt.registration.and_then(|o| table.trunk_by_registration(o)) {
        let outbound = attempt.registration.map(ToString::to_string).unwrap_or_default();
        steps.pass(
            StepKind::Trunk,
            format!(
                "identified InboundTrunk {} by the registration of OutboundTrunk {outbound}: \
                 {source} is the registrar that binding reached",
                trunk.name
            ),
        );
        return Ok((Arc::clone(trunk), IdentifiedBy::Registration));
    }

    let by_address: Vec<&Arc<InboundTrunkRoute>> = table.address_only_trunks_for(source).collect();
    // Each trunk reads the number its own way (its numberFormat).
    let owner = dialed.ok().and_then(|d| table.dialed_owner(d)).map(|(n, _, t, _)| (n, t));
    // A source both address-allowlisted for one trunk and using digest for another (a carrier
    // shared by tenants): a number the address trunks do not hold but a digest trunk admitting
    // this source does is challenged, so that trunk's calls are not lost to the address match.
    let owner_behind_digest = owner.as_ref().filter(|(_, holder)| {
        holder.digest.is_some()
            && holder.admits_address(source)
            && !by_address.iter().any(|t| t.name == holder.name)
    });
    match by_address.as_slice() {
        [] => {}
        [trunk] if owner_behind_digest.is_none() => {
            steps.pass(
                StepKind::Trunk,
                format!(
                    "identified InboundTrunk {} by source address {source} (allowlist {}; the \
                     trunk has no digest)",
                    trunk.name,
                    list(&trunk.allowed_addresses)
                ),
            );
            return Ok((Arc::clone(trunk), IdentifiedBy::SourceAddress));
        }
        [_] => {}
        several => {
            let names = names(several);
            // Each trunk reads the number its own way: the first that holds it is the one.
            let holder_among = several.iter().find_map(|t| {
                let (mut found, held) = t.held_reading(dialed.ok()?).ok()?;
                held.map(|(i, _)| (found.swap_remove(i).0, t))
            });
            if let Some((number, trunk)) = holder_among {
                steps.pass(
                    StepKind::Trunk,
                    format!(
                        "identified InboundTrunk {} by source address {source} and number \
                         {number}: {} InboundTrunks without digest allow this address ({names})",
                        trunk.name,
                        several.len()
                    ),
                );
                return Ok((Arc::clone(trunk), IdentifiedBy::SourceAddress));
            }
            // None holds it: the number as the first of them that can read it reads it.
            let number = dialed.map_err(DialedError::Uri).and_then(|d| {
                let mut first_error = None;
                for t in several.iter() {
                    match t.held_reading(d) {
                        Ok((mut found, _)) => return Ok(found.swap_remove(0).0),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                Err(DialedError::Number(first_error.unwrap_or(NumberError::Empty)))
            });
            let number = match number {
                Ok(number) => number,
                Err(e) => {
                    let context = format!(
                        "; {} InboundTrunks without digest allow {source} ({names}) and only the \
                         number could tell them apart",
                        several.len()
                    );
                    return Err(number_invalid(steps, &e, attempt.request_uri, &context));
                }
            };
            if owner_behind_digest.is_none() {
                let holder = match owner {
                    Some((_, holder)) => format!("it is held by InboundTrunk {}", holder.name),
                    None => "no InboundTrunk holds it".to_string(),
                };
                return Err(steps.refuse(
                    StepKind::Number,
                    RefusalRule::NumberNotOnTrunk,
                    format!(
                        "{number} is not on any of the {} trunks that allow this address",
                        several.len()
                    ),
                    format!(
                        "{} InboundTrunks without digest allow {source} ({names}) but none holds \
                         {number}: {holder}",
                        several.len()
                    ),
                ));
            }
        }
    }

    let digest: Vec<&Arc<InboundTrunkRoute>> = table.digest_trunks_for(source).collect();
    if digest.is_empty() {
        return Err(steps.refuse(
            StepKind::Trunk,
            RefusalRule::SourceNotAllowed,
            format!("no InboundTrunk allows {source}"),
            format!("no InboundTrunk allows {source}, by address or with digest"),
        ));
    }
    let (ready, pending): (Vec<_>, Vec<_>) =
        digest.into_iter().partition(|t| matches!(t.digest, Some(InboundDigest::Ready { .. })));
    let why = match (owner_behind_digest, by_address.is_empty()) {
        (Some((number, holder)), false) => format!(
            "{source} is allowed by address on {} but {number} is held by InboundTrunk {}, which \
             requires digest; ",
            names(&by_address),
            holder.name
        ),
        _ => format!("no InboundTrunk allows {source} without digest; "),
    };
    if ready.is_empty() {
        let secrets: Vec<String> = pending
            .iter()
            .filter_map(|t| match &t.digest {
                Some(InboundDigest::Pending { secret }) => {
                    Some(format!("{} (Secret {secret})", t.name))
                }
                _ => None,
            })
            .collect();
        return Err(steps.refuse(
            StepKind::Trunk,
            RefusalRule::CredentialsPending,
            "the trunk's credentials are not ready yet".to_string(),
            format!(
                "{why}the trunks with digest that admit it wait for generated credentials: {}",
                secrets.join(", ")
            ),
        ));
    }
    let mut detail = format!(
        "{why}the INVITE has no credentials and {} InboundTrunk(s) with digest admit it ({}): \
         challenge with {}",
        ready.len(),
        names(&ready),
        Challenge::STATUS
    );
    if !pending.is_empty() {
        detail.push_str(&format!(
            "; {} more wait for generated credentials ({})",
            pending.len(),
            names(&pending)
        ));
    }
    steps.0.push(Step { check: StepKind::Trunk, passed: false, detail });
    Err(Outcome::Challenge(Challenge { candidates: ready.len() }))
}

/// Rule 3.
fn check_transport(
    trunk: &InboundTrunkRoute,
    transport: Transport,
    steps: &mut Steps,
) -> Result<(), Outcome> {
    let allowed: Vec<&str> = trunk.transports.iter().map(|t| t.as_str()).collect();
    let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
    if trunk.transports.contains(&transport) {
        steps.pass(
            StepKind::Transport,
            format!("{} is allowed on {} ({allowed})", transport.as_str(), trunk.name),
        );
        Ok(())
    } else {
        Err(steps.refuse(
            StepKind::Transport,
            RefusalRule::TransportNotAllowed,
            format!(
                "transport {} is not allowed on this trunk; it allows {allowed}",
                transport.as_str()
            ),
            format!("{} allows {allowed}, not {}", trunk.name, transport.as_str()),
        ))
    }
}

/// Rule 4: the dialed number, as this trunk reads it (its `numberFormat`), and the agent it
/// goes to.
fn check_number(
    table: &RoutingTable,
    trunk: &InboundTrunkRoute,
    attempt: &CallAttempt,
    dialed: Result<&str, &'static str>,
    steps: &mut Steps,
) -> Result<(E164, String), Outcome> {
    let read = dialed
        .map_err(DialedError::Uri)
        .and_then(|d| trunk.held_reading(d).map_err(DialedError::Number));
    let (mut found, held) = match read {
        Ok(read) => read,
        Err(e) => {
            return Err(number_invalid(steps, &e, attempt.request_uri, ""));
        }
    };
    if let Some((i, agent)) = held {
        let agent = agent.to_string();
        let (number, reading) = found.swap_remove(i);
        steps.pass(
            StepKind::Number,
            format!(
                "{number} (from the Request-URI {:?}{}) is held by {}, for agent {agent:?}",
                attempt.request_uri,
                read_as(&reading),
                trunk.name
            ),
        );
        return Ok((number, agent));
    }
    // Not on this trunk: say who holds the first reading, if anyone does.
    let read = read_as_either(&found);
    let number = found.swap_remove(0).0;
    match table.number_owner(&number) {
        Some((holder, _)) => Err(steps.refuse(
            StepKind::Number,
            RefusalRule::NumberNotOnTrunk,
            // The caller hears the same as for an unknown number: whether another tenant holds
            // it is not the carrier's business (the step names the holder for operators).
            format!("{number} is not on this trunk"),
            format!(
                "{number}{read} is held by InboundTrunk {}, not by {}",
                holder.name, trunk.name
            ),
        )),
        None => Err(steps.refuse(
            StepKind::Number,
            RefusalRule::NumberNotOnTrunk,
            format!("{number} is not on this trunk"),
            format!("no InboundTrunk holds {number}{read} (the call came in on {})", trunk.name),
        )),
    }
}

/// ` (read as +1… or +4…)` for a number that reads several ways; nothing for one way.
fn read_as_either(found: &[(E164, Reading)]) -> String {
    match found {
        [_] => String::new(),
        several => {
            let numbers: Vec<&str> = several.iter().map(|(n, _)| n.as_str()).collect();
            format!(" (read as {})", numbers.join(" or "))
        }
    }
}

/// Whether `trunk` holds the number `dialed` reads as.
fn holds(trunk: &InboundTrunkRoute, dialed: Result<&str, &'static str>) -> bool {
    dialed.is_ok_and(|d| trunk.held_reading(d).is_ok_and(|(_, held)| held.is_some()))
}

/// `, read as …` for a number that was not written in E.164; nothing for one that was.
fn read_as(reading: &Reading) -> String {
    match reading {
        Reading::Global => String::new(),
        reading => format!(", read as {reading}"),
    }
}

fn number_invalid(steps: &mut Steps, e: &DialedError, request_uri: &str, context: &str) -> Outcome {
    steps.refuse(
        StepKind::Number,
        RefusalRule::NumberInvalid,
        format!("the dialed number {e}"),
        format!("the dialed number in the Request-URI {request_uri:?} {e}{context}"),
    )
}

/// Rule 5: the caller, when the From is a number, and whether the trunk admits it.
fn check_caller(
    trunk: &InboundTrunkRoute,
    from: &str,
    steps: &mut Steps,
) -> Result<Option<E164>, Outcome> {
    // Read as the trunk reads numbers (its numberFormat), as the dialed number is.
    let caller = number_part(from).map_err(DialedError::Uri).and_then(|part| {
        number::readings(part, trunk.number_format.as_ref()).map_err(DialedError::Number)
    });
    if trunk.allowed_callers.is_empty() {
        let (who, caller) = match caller {
            Ok(mut found) => {
                let (n, reading) = found.swap_remove(0);
                (format!("caller {n}{}", read_as(&reading)), Some(n))
            }
            Err(_) => (format!("caller {from:?}"), None),
        };
        steps.pass(StepKind::Caller, format!("{} admits any caller ({who})", trunk.name));
        return Ok(caller);
    }
    let patterns =
        list(&trunk.allowed_callers.iter().cloned().map(String::from).collect::<Vec<_>>());
    match caller {
        Ok(mut found) => match found.iter().enumerate().find_map(|(i, (n, _))| {
            trunk.allowed_callers.iter().find(|p| p.matches(n)).map(|p| (i, p))
        }) {
            Some((i, p)) => {
                let (n, reading) = found.swap_remove(i);
                steps.pass(
                    StepKind::Caller,
                    format!(
                        "caller {n}{} matches {} in the allowedCallers of {}",
                        read_as(&reading),
                        String::from(p.clone()),
                        trunk.name
                    ),
                );
                Ok(Some(n))
            }
            None => {
                let n = &found[0].0;
                let read = read_as_either(&found);
                Err(steps.refuse(
                    StepKind::Caller,
                    RefusalRule::CallerNotAllowed,
                    format!("caller {n} is not allowed on this trunk"),
                    format!(
                        "caller {n}{read} matches none of the allowedCallers of {} ({patterns})",
                        trunk.name
                    ),
                ))
            }
        },
        Err(e) => Err(steps.refuse(
            StepKind::Caller,
            RefusalRule::CallerNotAllowed,
            "the caller is not a number this trunk allows".to_string(),
            format!(
                "the From {from:?} is not a number ({e}), and {} admits only listed callers \
                 ({patterns})",
                trunk.name
            ),
        )),
    }
}

/// Rule 6: the agent and why.
fn choose_agent(
    trunk: &InboundTrunkRoute,
    number_agent: String,
    attempt: &CallAttempt,
    options: &LookupOptions,
    steps: &mut Steps,
) -> (String, AgentReason) {
    let header_name = format!("{}Agent-ID", options.header_prefix);
    let header = attempt
        .headers
        .iter()
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(&header_name))
        .map(|(_, value)| value.trim());
    let detail = match (header, trunk.agent_header) {
        (None, _) => format!("no {header_name} header: agent {number_agent:?} of the number"),
        (Some(""), _) => {
            format!("the {header_name} header is empty: agent {number_agent:?} of the number")
        }
        (Some(named), AgentHeader::Ignore) => format!(
            "{header_name} named {named:?}, ignored: {} has agentHeader Ignore; agent \
             {number_agent:?} of the number",
            trunk.name
        ),
        (Some(named), AgentHeader::Allow) if trunk.agents.contains(named) => {
            steps.pass(
                StepKind::Agent,
                format!("{header_name} named agent {named:?}, which {} has", trunk.name),
            );
            return (named.to_string(), AgentReason::Header);
        }
        (Some(named), AgentHeader::Allow) => format!(
            "{header_name} named {named:?}, which is not an agent of {}: agent \
             {number_agent:?} of the number",
            trunk.name
        ),
    };
    steps.pass(StepKind::Agent, detail);
    (number_agent, AgentReason::Number)
}

/// Why the Request-URI or From does not give a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum DialedError {
    #[error("{0}")]
    Uri(&'static str),
    #[error("{0}")]
    Number(NumberError),
}

/// The part of a URI that carries a number: the user of a `sip:`/`sips:` URI, everything after
/// `tel:`, or the whole string when it has no scheme. Angle brackets (and a display name before
/// them) are dropped.
fn number_part(uri: &str) -> Result<&str, &'static str> {
    let mut s = uri.trim();
    if let Some(open) = s.find('<') {
        let inner = &s[open + 1..];
        s = inner.find('>').map_or(inner, |close| &inner[..close]).trim();
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return Ok(s);
    };
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        match rest.split_once('@') {
            Some((user, _)) => Ok(user),
            None => Err("is missing: the URI has no user part"),
        }
    } else if scheme.eq_ignore_ascii_case("tel") {
        Ok(rest)
    } else {
        Err("is missing: the URI is not a sip:, sips: or tel: URI")
    }
}

fn serialize_trunk_name<S: Serializer>(
    trunk: &Arc<InboundTrunkRoute>,
    s: S,
) -> Result<S::Ok, S::Error> {
    trunk.name.serialize(s)
}

fn names(trunks: &[&Arc<InboundTrunkRoute>]) -> String {
    list(&trunks.iter().map(|t| &t.name).collect::<Vec<_>>())
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::destination::SipDestination;
    use crate::config::model::{Codec, Limits, ObjectName};
    use crate::config::number::{CallerPattern, NumberFormat};
    use crate::config::secret::{BasicAuth, Password};

    const CARRIER: &str = "203.0.113.9";
    const STRANGER: &str = "198.51.100.7";
    const DEST: &str = "sip:agents.voice.svc.cluster.local:5070;transport=tcp";

    /// An InboundTrunk in namespace `voice` with every transport, no auth, no number.
    struct Trunk(InboundTrunkRoute);

    fn trunk(name: &str) -> Trunk {
        Trunk(InboundTrunkRoute {
            name: ObjectName::new("voice", name),
            generation: Some(1),
            numbers: BTreeMap::new(),
            agents: BTreeSet::new(),
            destination: SipDestination::parse(DEST).unwrap(),
            agent_header: AgentHeader::Allow,
            digest: None,
            allowed_addresses: vec![],
            allowed_callers: vec![],
            number_format: None,
            registration: None,
            transports: Transport::ALL.into(),
            codecs: vec![Codec::Pcmu],
            media: Default::default(),
            limits: Limits::default(),
        })
    }

    impl Trunk {
        fn number(mut self, number: &str, agent: &str) -> Self {
            let n = E164::parse_canonical(number).expect("a canonical number");
            self.0.numbers.insert(n, agent.to_string());
            self.0.agents.insert(agent.to_string());
            self
        }
        fn digest(mut self, username: &str) -> Self {
            self.0.digest = Some(InboundDigest::Ready {
                secret: format!("{}-credentials", self.0.name.name),
                credentials: BasicAuth {
                    username: username.to_string(),
                    password: Password::new("s3cret-password"),
                },
            });
            self
        }
        fn pending(mut self) -> Self {
            self.0.digest = Some(InboundDigest::Pending {
                secret: format!("{}-credentials", self.0.name.name),
            });
            self
        }
        fn addresses(mut self, cidrs: &[&str]) -> Self {
            self.0.allowed_addresses = cidrs.iter().map(|c| c.parse().expect("a CIDR")).collect();
            self
        }
        fn callers(mut self, patterns: &[&str]) -> Self {
            self.0.allowed_callers =
                patterns.iter().map(|p| CallerPattern::parse(p).expect("a pattern")).collect();
            self
        }
        fn transports(mut self, transports: &[Transport]) -> Self {
            self.0.transports = transports.iter().copied().collect();
            self
        }
        fn ignore_header(mut self) -> Self {
            self.0.agent_header = AgentHeader::Ignore;
            self
        }
        fn destination(mut self, uri: &str) -> Self {
            self.0.destination = SipDestination::parse(uri).unwrap();
            self
        }
        fn fed_by(mut self, outbound: &str) -> Self {
            self.0.registration = Some(ObjectName::new("voice", outbound));
            self
        }
        fn national(mut self, country_code: &str, national_prefix: Option<&str>) -> Self {
            self.0.number_format = Some(NumberFormat {
                country_code: country_code.to_string(),
                national_prefix: national_prefix.map(str::to_string),
                international_prefix: NumberFormat::default_international_prefix(country_code)
                    .to_string(),
            });
            self
        }
    }

    fn table(trunks: Vec<Trunk>) -> RoutingTable {
        RoutingTable::new(trunks.into_iter().map(|t| t.0).collect(), vec![], vec![])
    }

    /// An INVITE, owned, from the carrier over UDP to +14155550100.
    struct Invite {
        transport: Transport,
        source: IpAddr,
        username: Option<String>,
        request_uri: String,
        from: String,
        to: String,
        registration: Option<ObjectName>,
        headers: Vec<(String, String)>,
    }

    fn invite() -> Invite {
        Invite {
            transport: Transport::Udp,
            source: CARRIER.parse().expect("an address"),
            username: None,
            request_uri: "sip:+14155550100@gw.example;user=phone".to_string(),
            from: "sip:+14155551234@carrier.example".to_string(),
            to: "sip:+14155550100@gw.example".to_string(),
            registration: None,
            headers: vec![],
        }
    }

    impl Invite {
        fn sent_from(mut self, ip: &str) -> Self {
            self.source = ip.parse().expect("an address");
            self
        }
        fn username(mut self, user: &str) -> Self {
            self.username = Some(user.to_string());
            self
        }
        fn to(mut self, request_uri: &str) -> Self {
            self.request_uri = request_uri.to_string();
            self
        }
        /// Delivered through OutboundTrunk voice/`outbound`'s registration, to the contact
        /// `request_uri`, the number in To.
        fn registered(mut self, outbound: &str, request_uri: &str, to: &str) -> Self {
            self.registration = Some(ObjectName::new("voice", outbound));
            self.request_uri = request_uri.to_string();
            self.to = to.to_string();
            self
        }
        fn caller(mut self, from: &str) -> Self {
            self.from = from.to_string();
            self
        }
        fn over(mut self, transport: Transport) -> Self {
            self.transport = transport;
            self
        }
        fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }
        fn lookup_with(&self, table: &RoutingTable, options: &LookupOptions) -> Decision {
            let attempt = CallAttempt {
                transport: self.transport,
                source: self.source,
                digest_username: self.username.as_deref(),
                request_uri: &self.request_uri,
                from: &self.from,
                to: &self.to,
                registration: self.registration.as_ref(),
                headers: &self.headers,
            };
            let decision = lookup(table, &attempt, options);
            assert_steps_are_consistent(&decision);
            decision
        }
        fn lookup(&self, table: &RoutingTable) -> Decision {
            self.lookup_with(table, &LookupOptions::default())
        }
    }

    /// Every step but the last passed; the last failed exactly when the call is not routed.
    fn assert_steps_are_consistent(decision: &Decision) {
        let (last, before) = decision.steps.split_last().expect("at least one step");
        assert!(before.iter().all(|s| s.passed), "{:#?}", decision.steps);
        assert_eq!(last.passed, matches!(decision.outcome, Outcome::Route(_)), "{decision:#?}");
    }

    fn route(decision: &Decision) -> &Route {
        match &decision.outcome {
            Outcome::Route(r) => r,
            other => panic!("expected a route, got {other:#?}\n{:#?}", decision.steps),
        }
    }

    fn refusal(decision: &Decision) -> &Refusal {
        match &decision.outcome {
            Outcome::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:#?}\n{:#?}", decision.steps),
        }
    }

    fn last_detail(decision: &Decision) -> &str {
        decision.steps.last().map(|s| s.detail.as_str()).unwrap_or_default()
    }

    fn acme() -> Trunk {
        trunk("acme-in")
            .number("+14155550100", "support")
            .number("+14155550101", "billing")
            .addresses(&["203.0.113.0/24"])
    }

    // Rule 1: identifying the trunk.

    #[test]
    fn digest_username_identifies_the_trunk() {
        let table = table(vec![trunk("acme-in").number("+14155550100", "support").digest("acme")]);
        let d = invite().username("acme").lookup(&table);
        let r = route(&d);
        assert_eq!(r.trunk.name, ObjectName::new("voice", "acme-in"));
        assert_eq!(r.identified_by, IdentifiedBy::DigestUsername);
        assert_eq!(
            d.steps[0],
            Step {
                check: StepKind::Trunk,
                passed: true,
                detail: "identified InboundTrunk voice/acme-in by digest username \"acme\""
                    .to_string()
            }
        );
    }

    #[test]
    fn unknown_digest_username_is_403_without_echoing_it() {
        let table = table(vec![trunk("acme-in").number("+14155550100", "support").digest("acme")]);
        let d = invite().username("mallory\r\nX-Evil: 1").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (403, RefusalRule::UnknownUser));
        assert!(!r.message.contains("mallory"), "{}", r.message);
        assert!(last_detail(&d).contains(r#""mallory\r\nX-Evil: 1""#), "{}", last_detail(&d));
    }

    #[test]
    fn credentials_identify_the_trunk_even_when_an_address_trunk_admits_the_source() {
        let table =
            table(vec![acme(), trunk("other-in").number("+14155550199", "sales").digest("other")]);
        let d = invite().username("other").to("sip:+14155550199@gw").lookup(&table);
        assert_eq!(route(&d).trunk.name.name, "other-in");
    }

    #[test]
    fn one_address_trunk_identifies_the_call_without_a_challenge() {
        let table = table(vec![acme()]);
        let d = invite().lookup(&table);
        let r = route(&d);
        assert_eq!(r.identified_by, IdentifiedBy::SourceAddress);
        assert_eq!(r.number.as_str(), "+14155550100");
        assert!(d.steps[0].detail.contains("by source address 203.0.113.9"), "{:?}", d.steps[0]);
    }

    #[test]
    fn two_address_trunks_are_told_apart_by_the_number() {
        let table = table(vec![
            acme(),
            trunk("beta-in").number("+14155550200", "sales").addresses(&["203.0.113.0/28"]),
        ]);
        let d = invite().to("tel:+1-415-555-0200").lookup(&table);
        assert_eq!(route(&d).trunk.name.name, "beta-in");
        assert_eq!(route(&d).agent, "sales");
        let d = invite().lookup(&table);
        assert_eq!(route(&d).trunk.name.name, "acme-in");
    }

    #[test]
    fn two_address_trunks_and_a_number_on_neither_is_404_naming_how_many() {
        let table = table(vec![
            acme(),
            trunk("beta-in").number("+14155550200", "sales").addresses(&["203.0.113.0/28"]),
            trunk("gamma-in")
                .number("+14155550300", "x")
                .digest("gamma")
                .addresses(&["10.0.0.0/8"]),
        ]);
        let d = invite().to("sip:+14155550300@gw").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (404, RefusalRule::NumberNotOnTrunk));
        assert_eq!(r.message, "+14155550300 is not on any of the 2 trunks that allow this address");
        assert!(!r.message.contains("gamma"));
        assert!(last_detail(&d).contains("voice/gamma-in"), "{}", last_detail(&d));
    }

    #[test]
    fn two_address_trunks_and_an_unparsable_number_is_404_number_invalid() {
        let table = table(vec![
            acme(),
            trunk("beta-in").number("+14155550200", "sales").addresses(&["203.0.113.0/28"]),
        ]);
        let d = invite().to("sip:support@gw").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (404, RefusalRule::NumberInvalid));
    }

    #[test]
    fn source_admitted_only_by_a_digest_trunk_is_challenged() {
        let table = table(vec![
            trunk("acme-in").number("+14155550100", "support").digest("acme"),
            trunk("beta-in")
                .number("+14155550200", "sales")
                .digest("beta")
                .addresses(&["10.0.0.0/8"]),
        ]);
        let d = invite().lookup(&table);
        assert_eq!(d.outcome, Outcome::Challenge(Challenge { candidates: 1 }));
        assert_eq!(d.steps.len(), 1);
        assert!(last_detail(&d).contains("voice/acme-in"), "{}", last_detail(&d));
    }

    #[test]
    fn a_challenge_counts_only_trunks_with_ready_credentials() {
        let table = table(vec![
            trunk("acme-in").number("+14155550100", "support").digest("acme"),
            trunk("beta-in").number("+14155550200", "sales").digest("beta"),
            trunk("new-in").number("+14155550300", "x").pending(),
        ]);
        let d = invite().lookup(&table);
        assert_eq!(d.outcome, Outcome::Challenge(Challenge { candidates: 2 }));
        assert!(last_detail(&d).contains("1 more wait for generated credentials (voice/new-in)"));
    }

    #[test]
    fn source_admitted_only_by_a_pending_trunk_is_503_credentials_pending() {
        let table = table(vec![trunk("new-in").number("+14155550100", "support").pending()]);
        let d = invite().lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (503, RefusalRule::CredentialsPending));
        assert!(last_detail(&d).contains("voice/new-in (Secret new-in-credentials)"));
    }

    #[test]
    fn source_no_trunk_admits_is_403_naming_the_address() {
        let table = table(vec![
            acme(),
            trunk("beta-in")
                .number("+14155550200", "sales")
                .digest("beta")
                .addresses(&["10.0.0.0/8"]),
        ]);
        let d = invite().sent_from(STRANGER).lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (403, RefusalRule::SourceNotAllowed));
        assert_eq!(r.message, "no InboundTrunk allows 198.51.100.7");
    }

    #[test]
    fn an_empty_table_refuses_every_source() {
        let d = invite().lookup(&RoutingTable::default());
        assert_eq!(refusal(&d).rule, RefusalRule::SourceNotAllowed);
    }

    #[test]
    fn a_number_on_a_digest_trunk_is_challenged_even_when_an_address_trunk_admits_the_source() {
        // A carrier shared by two tenants: one allowlists its addresses, the other uses digest.
        let table =
            table(vec![acme(), trunk("beta-in").number("+14155550200", "sales").digest("beta")]);
        let d = invite().to("sip:+14155550200@gw").lookup(&table);
        assert_eq!(d.outcome, Outcome::Challenge(Challenge { candidates: 1 }));
        assert!(last_detail(&d).contains("held by InboundTrunk voice/beta-in"));
        // The address trunk's own numbers still go through without a challenge.
        assert_eq!(route(&invite().lookup(&table)).trunk.name.name, "acme-in");
    }

    #[test]
    fn a_number_on_a_digest_trunk_that_refuses_the_source_is_not_challenged() {
        let table = table(vec![
            acme(),
            trunk("beta-in")
                .number("+14155550200", "sales")
                .digest("beta")
                .addresses(&["10.0.0.0/8"]),
        ]);
        let d = invite().to("sip:+14155550200@gw").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (404, RefusalRule::NumberNotOnTrunk));
        assert_eq!(
            route(
                &invite()
                    .username("beta")
                    .sent_from("10.1.2.3")
                    .to("sip:+14155550200@gw")
                    .lookup(&table)
            )
            .agent,
            "sales"
        );
    }

    // Rule 2: digest and address both.

    #[test]
    fn digest_trunk_with_an_allowlist_refuses_other_sources() {
        let table = table(vec![acme().digest("acme")]);
        let d = invite().username("acme").sent_from(STRANGER).lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (403, RefusalRule::AddressNotAllowed));
        assert_eq!(d.steps.last().map(|s| s.check), Some(StepKind::Address));
        let d = invite().username("acme").lookup(&table);
        assert_eq!(route(&d).identified_by, IdentifiedBy::DigestUsername);
    }

    #[test]
    fn digest_trunk_without_an_allowlist_admits_any_source() {
        let table = table(vec![trunk("acme-in").number("+14155550100", "support").digest("acme")]);
        let d = invite().username("acme").sent_from("2001:db8::7").lookup(&table);
        assert!(matches!(d.outcome, Outcome::Route(_)));
        assert!(d.steps[1].detail.contains("no address allowlist"));
    }

    // Rule 3: transport.

    #[test]
    fn transport_not_on_the_trunk_is_403_naming_the_allowed_ones() {
        let table = table(vec![acme().transports(&[Transport::Tcp, Transport::Tls])]);
        let d = invite().over(Transport::Udp).lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (403, RefusalRule::TransportNotAllowed));
        assert_eq!(r.message, "transport UDP is not allowed on this trunk; it allows TCP, TLS");
        assert!(matches!(invite().over(Transport::Tls).lookup(&table).outcome, Outcome::Route(_)));
    }

    #[test]
    fn transport_is_checked_before_the_number() {
        let table = table(vec![acme().transports(&[Transport::Tcp])]);
        let d = invite().to("sip:nobody@gw").lookup(&table);
        assert_eq!(refusal(&d).rule, RefusalRule::TransportNotAllowed);
    }

    // Rule 4: the dialed number.

    #[test]
    fn the_number_is_found_however_the_carrier_writes_it() {
        let table = table(vec![acme()]);
        for uri in [
            "sip:+14155550100@gw.example;user=phone",
            "sip:+14155550100;user=phone@gw.example",
            "tel:+1-415-555-0100",
            "sip:0014155550100@1.2.3.4:5060",
            "sip:14155550100@[2001:db8::1]:5060",
            "sips:%2B14155550100@gw.example",
            "<sip:+14155550100@gw.example>",
            "SIP:+14155550100@GW.EXAMPLE",
            "+1 (415) 555-0100",
        ] {
            let d = invite().to(uri).lookup(&table);
            assert_eq!(route(&d).number.as_str(), "+14155550100", "{uri}");
        }
    }

    #[test]
    fn a_us_national_number_reaches_a_trunk_with_country_code_1() {
        let routes = table(vec![acme().national("1", Some("1"))]);
        for uri in [
            "sip:4155550100@gw.example",
            "sip:14155550100@gw.example",
            "tel:(415) 555-0100",
            "sip:+14155550100@gw.example",
            "sip:01114155550100@gw.example",
        ] {
            let d = invite().to(uri).lookup(&routes);
            assert_eq!(route(&d).number.as_str(), "+14155550100", "{uri}");
        }
        let d = invite().to("sip:4155550100@gw.example").lookup(&routes);
        assert!(
            last_detail_of(&d, StepKind::Number).contains("read as a national number of +1"),
            "{d:?}"
        );
        // Without numberFormat the same 10 digits are an international number nobody holds.
        let d = invite().to("sip:4155550100@gw.example").lookup(&table(vec![acme()]));
        assert_eq!(refusal(&d).rule, RefusalRule::NumberNotOnTrunk);
    }

    #[test]
    fn a_uk_national_number_with_its_0_reaches_a_trunk_with_country_code_44() {
        let uk = trunk("uk-in")
            .number("+442071230003", "london")
            .addresses(&["203.0.113.0/28"])
            .national("44", Some("0"));
        let table = table(vec![uk]);
        for uri in ["sip:02071230003@gw.example", "sip:00442071230003@gw.example", "442071230003"] {
            let d = invite().to(uri).lookup(&table);
            assert_eq!(route(&d).number.as_str(), "+442071230003", "{uri}");
            assert_eq!(route(&d).agent, "london");
        }
    }

    #[test]
    fn a_number_on_no_trunk_names_every_reading_for_the_operator() {
        let table = table(vec![acme().national("44", Some("0"))]);
        let d = invite().to("sip:2071230003@gw.example").lookup(&table);
        assert_eq!(refusal(&d).status, 404);
        assert_eq!(refusal(&d).message, "+442071230003 is not on this trunk");
        assert!(last_detail(&d).contains("(read as +442071230003 or +2071230003)"), "{d:?}");
    }

    #[test]
    fn address_trunks_each_read_the_number_their_own_way() {
        // One carrier, two tenants: a US trunk and a UK trunk, both by address.
        let table = table(vec![
            acme().national("1", Some("1")),
            trunk("uk-in")
                .number("+442071230003", "london")
                .addresses(&["203.0.113.0/28"])
                .national("44", Some("0")),
        ]);
        let d = invite().to("sip:02071230003@gw.example").lookup(&table);
        assert_eq!(route(&d).trunk.name.name, "uk-in");
        let d = invite().to("sip:4155550100@gw.example").lookup(&table);
        assert_eq!(route(&d).trunk.name.name, "acme-in");
    }

    #[test]
    fn a_national_number_held_behind_digest_is_challenged() {
        // The address trunk does not hold the number; the digest trunk reads it as its own.
        let table = table(vec![
            acme(),
            trunk("uk-in")
                .number("+442071230003", "london")
                .digest("uk-user")
                .national("44", Some("0")),
        ]);
        let d = invite().to("sip:02071230003@gw.example").lookup(&table);
        assert!(matches!(d.outcome, Outcome::Challenge(_)), "{d:?}");
    }

    #[test]
    fn a_national_caller_matches_allowed_callers_in_e164() {
        let routes = table(vec![acme().national("1", Some("1")).callers(&["+1415*"])]);
        let d = invite().caller("<sip:4155551234@carrier.example>").lookup(&routes);
        assert_eq!(route(&d).caller.as_ref().map(E164::as_str), Some("+14155551234"));
        let d = invite().caller("<sip:2125551234@carrier.example>").lookup(&routes);
        assert_eq!(refusal(&d).rule, RefusalRule::CallerNotAllowed);
        assert!(last_detail(&d).contains("(read as +12125551234 or +2125551234)"), "{d:?}");
        // Either reading may be the one listed.
        let uk_callers = table(vec![acme().national("1", Some("1")).callers(&["+4420*"])]);
        let d = invite().caller("<sip:442071230003@carrier.example>").lookup(&uk_callers);
        assert_eq!(route(&d).caller.as_ref().map(E164::as_str), Some("+442071230003"));
    }

    #[test]
    fn a_call_through_a_registration_takes_its_number_from_to_when_the_uri_is_the_contact() {
        // No allowlist: the trunk is found through the registration only.
        let fed = trunk("reg-in").number("+14155550150", "sales").fed_by("carrier-out");
        let table = table(vec![acme(), fed]);
        let d = invite()
            .registered("carrier-out", "sip:acct-1001@198.51.100.7:5060", "<sip:+14155550150@x>")
            .lookup(&table);
        let r = route(&d);
        assert_eq!((r.trunk.name.name.as_str(), r.number.as_str()), ("reg-in", "+14155550150"));
        assert_eq!(r.identified_by, IdentifiedBy::Registration);
        // A carrier that puts the number in the Request-URI: that one.
        let d = invite()
            .registered("carrier-out", "sip:+14155550150@198.51.100.7", "<sip:acct-1001@x>")
            .lookup(&table);
        assert_eq!(route(&d).number.as_str(), "+14155550150");
        // Not held: 404, as for any other trunk.
        let d = invite()
            .registered("carrier-out", "sip:acct-1001@198.51.100.7", "<sip:+14155550199@x>")
            .lookup(&table);
        assert_eq!(refusal(&d).rule, RefusalRule::NumberNotOnTrunk);
    }

    #[test]
    fn a_trunk_fed_by_a_registration_is_not_open_to_other_sources() {
        let fed = trunk("reg-in").number("+14155550150", "sales").fed_by("carrier-out");
        let table = table(vec![fed]);
        // From an address no registration reached: no trunk allows it.
        let d = invite().to("sip:+14155550150@gw").sent_from(STRANGER).lookup(&table);
        assert_eq!(refusal(&d).rule, RefusalRule::SourceNotAllowed);
        // Another OutboundTrunk's registration feeds no trunk here.
        let d = invite()
            .registered("other-out", "sip:acct@198.51.100.7", "<sip:+14155550150@x>")
            .lookup(&table);
        assert_eq!(refusal(&d).rule, RefusalRule::SourceNotAllowed);
    }

    #[test]
    fn a_request_uri_without_a_user_is_404_number_invalid() {
        let table = table(vec![acme()]);
        let d = invite().to("sip:gw.example").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (404, RefusalRule::NumberInvalid));
        assert_eq!(r.message, "the dialed number is missing: the URI has no user part");
    }

    #[test]
    fn letters_in_the_dialed_number_are_404_number_invalid_with_why() {
        let table = table(vec![acme()]);
        let d = invite().to("sip:support@gw.example").lookup(&table);
        let r = refusal(&d);
        assert_eq!(r.rule, RefusalRule::NumberInvalid);
        assert!(r.message.contains("has the character 's'"), "{}", r.message);
        let d = invite().to("sip:+1415555@gw.example").lookup(&table);
        assert!(refusal(&d).message.contains("has 7 digits"));
        let d = invite().to("mailto:+14155550100@gw.example").lookup(&table);
        assert!(refusal(&d).message.contains("not a sip:, sips: or tel: URI"));
    }

    #[test]
    fn number_on_another_trunk_is_404_without_naming_it() {
        let table = table(vec![
            acme(),
            trunk("secret-tenant-in").number("+14155550200", "x").addresses(&["10.0.0.0/8"]),
        ]);
        let d = invite().to("sip:+14155550200@gw").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (404, RefusalRule::NumberNotOnTrunk));
        assert_eq!(r.message, "+14155550200 is not on this trunk");
        assert!(!r.message.contains("secret-tenant"));
        assert!(last_detail(&d).contains("voice/secret-tenant-in"), "{}", last_detail(&d));
    }

    #[test]
    fn number_on_no_trunk_is_404() {
        let table = table(vec![acme()]);
        let d = invite().to("sip:+14155559999@gw").lookup(&table);
        let r = refusal(&d);
        assert_eq!(r.rule, RefusalRule::NumberNotOnTrunk);
        assert_eq!(r.message, "+14155559999 is not on this trunk");
    }

    // Rule 5: allowed callers.

    #[test]
    fn caller_matching_a_prefix_is_allowed_and_recorded() {
        let table = table(vec![acme().callers(&["+1415*"])]);
        let d = invite().caller("<tel:+1-415-555-1234>").lookup(&table);
        assert_eq!(route(&d).caller.as_ref().map(E164::as_str), Some("+14155551234"));
    }

    #[test]
    fn caller_matching_no_pattern_is_403() {
        let table = table(vec![acme().callers(&["+1415*", "+442079460958"])]);
        let d = invite().caller("sip:+12125550100@carrier.example").lookup(&table);
        let r = refusal(&d);
        assert_eq!((r.status, r.rule), (403, RefusalRule::CallerNotAllowed));
        assert_eq!(r.message, "caller +12125550100 is not allowed on this trunk");
        assert!(matches!(
            invite().caller("+442079460958").lookup(&table).outcome,
            Outcome::Route(_)
        ));
    }

    #[test]
    fn anonymous_caller_is_refused_when_callers_are_listed() {
        let table = table(vec![acme().callers(&["*"])]);
        for from in ["sip:anonymous@anonymous.invalid", "\"Anonymous\" <sip:anonymous@x>", ""] {
            let d = invite().caller(from).lookup(&table);
            assert_eq!(refusal(&d).rule, RefusalRule::CallerNotAllowed, "{from:?}");
        }
    }

    #[test]
    fn any_caller_is_allowed_when_none_are_listed() {
        let table = table(vec![acme()]);
        let d = invite().caller("sip:anonymous@anonymous.invalid").lookup(&table);
        assert_eq!(route(&d).caller, None);
    }

    // Rule 6: the agent.

    #[test]
    fn number_agent_is_used_without_a_header() {
        let table = table(vec![acme()]);
        let r = invite().to("sip:+14155550101@gw").lookup(&table);
        assert_eq!(
            (route(&r).agent.as_str(), route(&r).agent_reason),
            ("billing", AgentReason::Number)
        );
    }

    #[test]
    fn header_agent_wins_when_allowed_and_known() {
        let table = table(vec![acme()]);
        let d = invite().header("X-Trunkline-Agent-ID", "billing").lookup(&table);
        let r = route(&d);
        assert_eq!((r.agent.as_str(), r.agent_reason), ("billing", AgentReason::Header));
        assert_eq!(r.destination, "sip:billing@agents.voice.svc.cluster.local:5070;transport=tcp");
    }

    #[test]
    fn header_name_is_case_insensitive_and_its_value_trimmed() {
        let table = table(vec![acme()]);
        let d = invite().header("x-trunkline-agent-id", "  billing ").lookup(&table);
        assert_eq!(route(&d).agent_reason, AgentReason::Header);
    }

    #[test]
    fn header_naming_an_unknown_agent_falls_back_to_the_number_agent() {
        let table = table(vec![
            acme(),
            trunk("beta-in").number("+14155550200", "sales").addresses(&["10.0.0.0/8"]),
        ]);
        // `sales` is an agent, but of another trunk.
        let d = invite().header("X-Trunkline-Agent-ID", "sales").lookup(&table);
        let r = route(&d);
        assert_eq!((r.agent.as_str(), r.agent_reason), ("support", AgentReason::Number));
        assert!(last_detail_of(&d, StepKind::Agent).contains("not an agent of voice/acme-in"));
    }

    #[test]
    fn header_is_ignored_when_the_trunk_says_ignore() {
        let table = table(vec![acme().ignore_header()]);
        let d = invite().header("X-Trunkline-Agent-ID", "billing").lookup(&table);
        let r = route(&d);
        assert_eq!((r.agent.as_str(), r.agent_reason), ("support", AgentReason::Number));
        assert!(last_detail_of(&d, StepKind::Agent).contains("ignored"));
    }

    #[test]
    fn an_empty_header_is_no_header() {
        let table = table(vec![acme()]);
        let d = invite().header("X-Trunkline-Agent-ID", "  ").lookup(&table);
        assert_eq!(route(&d).agent_reason, AgentReason::Number);
    }

    #[test]
    fn the_header_prefix_is_configurable() {
        let table = table(vec![acme()]);
        let options = LookupOptions { header_prefix: "X-Acme-".to_string() };
        let d = invite().header("X-Acme-Agent-ID", "billing").lookup_with(&table, &options);
        assert_eq!(route(&d).agent_reason, AgentReason::Header);
        let d = invite().header("X-Trunkline-Agent-ID", "billing").lookup_with(&table, &options);
        assert_eq!(route(&d).agent_reason, AgentReason::Number);
    }

    fn last_detail_of(decision: &Decision, kind: StepKind) -> &str {
        decision.steps.iter().rev().find(|s| s.check == kind).map_or("", |s| s.detail.as_str())
    }

    // The destination.

    #[test]
    fn the_destination_user_part_is_replaced_by_the_agent() {
        let table = table(vec![acme().destination("sips:runtime@[2001:db8::5]:5071")]);
        let d = invite().lookup(&table);
        assert_eq!(route(&d).destination, "sips:support@[2001:db8::5]:5071");
    }

    // Output.

    #[test]
    fn a_route_serialises_the_trunk_name_and_never_credentials() {
        let table = table(vec![acme().digest("acme")]);
        let d = invite().username("acme").lookup(&table);
        let json = serde_json::to_value(&d).expect("serialisable");
        assert_eq!(json["outcome"]["action"], "route");
        assert_eq!(
            json["outcome"]["trunk"],
            serde_json::json!({"namespace": "voice", "name": "acme-in"})
        );
        assert_eq!(json["outcome"]["identifiedBy"], "DigestUsername");
        assert_eq!(json["outcome"]["agentReason"], "Number");
        assert_eq!(json["steps"][0]["check"], "trunk");
        let text = json.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("password"), "{text}");
    }

    #[test]
    fn refusals_and_challenges_serialise_with_their_action() {
        let table = table(vec![trunk("acme-in").number("+14155550100", "support").digest("acme")]);
        let json = serde_json::to_value(invite().lookup(&table)).expect("serialisable");
        assert_eq!(json["outcome"], serde_json::json!({"action": "challenge", "candidates": 1}));
        let json =
            serde_json::to_value(invite().username("x").lookup(&table)).expect("serialisable");
        assert_eq!(json["outcome"]["action"], "refuse");
        assert_eq!(json["outcome"]["rule"], "UnknownUser");
        assert_eq!(json["outcome"]["status"], 403);
    }

    #[test]
    fn every_rule_answers_with_its_status() {
        for rule in [
            RefusalRule::SourceNotAllowed,
            RefusalRule::UnknownUser,
            RefusalRule::AddressNotAllowed,
            RefusalRule::TransportNotAllowed,
            RefusalRule::NumberInvalid,
            RefusalRule::NumberNotOnTrunk,
            RefusalRule::CallerNotAllowed,
            RefusalRule::CredentialsPending,
        ] {
            let json = serde_json::to_value(rule).expect("serialisable");
            assert_eq!(json, rule.as_str());
            assert!(matches!(rule.status(), 403 | 404 | 503), "{rule}");
        }
    }

    #[test]
    fn a_routed_call_records_every_check_in_order() {
        let table = table(vec![acme().digest("acme").callers(&["*"])]);
        let d = invite().username("acme").lookup(&table);
        let kinds: Vec<StepKind> = d.steps.iter().map(|s| s.check).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Trunk,
                StepKind::Address,
                StepKind::Transport,
                StepKind::Number,
                StepKind::Caller,
                StepKind::Agent,
                StepKind::Destination
            ]
        );
    }
}
