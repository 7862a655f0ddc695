//! `trunkline explain --transfer`: what the gateway would do when an agent asks to hand a call to
//! a TransferDestination, worked out by the code the gateway runs (`config::transfer::decide`,
//! on the table `compile` builds). The flags say which call (`--trunk`: the InboundTrunk or
//! OutboundTrunk the call came on or went out through; its namespace is where destinations are
//! looked up), which agent (`--agent`) and what the agent would put in `Refer-To` (`--to`).
//! Nothing is sent, looked up or bound.
//!
//! `--trunk` is resolved against every trunk in the specs, served or not (a trunk refused by
//! compile or left out by `--region` still has a namespace; a note says no call is on it). A name
//! of no trunk, or one that names trunks in two namespaces, is the user's error (exit 2), as any
//! other flag error: the gateway always knows the namespace of a call's trunk, so there is no SIP
//! answer to show.
//!
//! Credentials (the OutboundTrunk's of a Phone destination, a Sip destination's digest) are
//! described by their Secret's name and username; the password is in no line printed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use serde::Serialize;

use trunkline::api::{Kind, Transport};
use trunkline::config::destination::SipDestination;
use trunkline::config::lookup::{Refusal, Step};
use trunkline::config::model::{
    ObjectName, RoutingTable, TransferMode, TransferRoute, TransferTarget,
};
use trunkline::config::number::E164;
use trunkline::config::outbound::OutboundRoute;
use trunkline::config::refusal::RefusalRule;
use trunkline::config::specs::DEFAULT_NAMESPACE;
use trunkline::config::transfer::{self, TransferAttempt, TransferChoice, TransferDecision};
use trunkline::config::{CompileOptions, Specs, State, Verdict, compile};
use trunkline::source::folder::load_paths;

use super::{TrunkView, render_trunk};

/// The transfer request, as the flags give it.
#[derive(Debug)]
pub struct TransferQuery<'a> {
    /// `--trunk`: the call's trunk, `NAME` or `namespace/NAME`.
    pub trunk: &'a str,
    /// `--agent`: the call's agent.
    pub agent: &'a str,
    /// `--to`: what the agent puts in `Refer-To` (or `X-Trunkline-Transfer-To`).
    pub to: &'a str,
}

/// The trunk a call is on, as `--trunk` names it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallTrunk {
    /// `InboundTrunk`, `OutboundTrunk`, or both when both kinds have this name in the namespace.
    #[serde(serialize_with = "kind_names")]
    pub kinds: Vec<Kind>,
    #[serde(serialize_with = "display")]
    pub name: ObjectName,
    /// In the table the gateway serves (accepted, and of this region).
    pub served: bool,
}

/// What the gateway would do once the transfer is allowed.
#[derive(Debug)]
pub enum Dial {
    /// Dial a number through an OutboundTrunk (in Bridge mode; in Refer mode the carrier does).
    Phone {
        number: E164,
        trunk_name: ObjectName,
        /// The call through the OutboundTrunk; `None` when the trunk is not served (compile then
        /// leaves the destination out, so this is not expected).
        route: Option<OutboundRoute>,
        /// The Secret with the OutboundTrunk's digest credentials, `namespace/name`.
        secret: Option<String>,
    },
    /// Call a SIP URI.
    Sip {
        uri: String,
        /// Host, port and transport of the URI; `None` when it does not parse (compile checks it).
        target: Option<SipDestination>,
        /// The Secret and username of its digest credentials.
        digest: Option<DigestUse>,
    },
    /// End both legs.
    Hangup,
}

/// Everything `explain --transfer` found out.
#[derive(Debug)]
pub struct TransferExplanation {
    pub trunk: CallTrunk,
    pub agent: String,
    pub refer_to: String,
    pub decision: TransferDecision,
    /// What the named destination dials (also when the agent may not use it: then nothing is).
    pub dial: Option<Dial>,
    pub notes: Vec<String>,
}

/// `trunkline explain --transfer`: loads and compiles the specs, explains, prints. Exit status 0
/// when the transfer would be carried out, 1 when the agent would be refused; a `--trunk` that
/// names no trunk or trunks of two namespaces is an error (exit 2, from `main`).
pub fn run(
    specs: &[PathBuf],
    region: Option<String>,
    query: &TransferQuery,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = load_paths(specs);
    let compiled = compile(&loaded.specs, &CompileOptions { region: region.clone() });
    let verdicts: Vec<&Verdict> = loaded.refused.iter().chain(&compiled.verdicts).collect();
    let explanation = explain(&loaded.specs, &compiled.table, &verdicts, region.as_deref(), query)?;
    let allowed = explanation.decision.outcome.is_ok();
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation.to_json())?);
    } else {
        let refused = verdicts.iter().filter(|v| v.state == State::Refused).count();
        let n = compiled.table.transfers.len();
        let mut out = format!("specs: {n} transfer destination{}", if n == 1 { "" } else { "s" });
        out.push_str(&super::refused_note(refused, verdicts.len(), loaded.problems.len()));
        out.push('\n');
        out.push_str(&explanation.render_text());
        print!("{out}");
    }
    Ok(if allowed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Resolves the call's trunk, decides the transfer against `table` and, when it is allowed,
/// describes what would be dialed. `verdicts` and `region` explain objects of the specs that are
/// not in the table.
pub fn explain(
    specs: &Specs,
    table: &RoutingTable,
    verdicts: &[&Verdict],
    region: Option<&str>,
    query: &TransferQuery,
) -> anyhow::Result<TransferExplanation> {
    for (flag, value) in [("--trunk", query.trunk), ("--agent", query.agent), ("--to", query.to)] {
        if value.chars().any(char::is_control) {
            bail!("{flag} holds a control character: a SIP header cannot carry it");
        }
    }
    let trunk = call_trunk(specs, table, query.trunk)?;
    let ns = trunk.name.namespace.as_str();
    let attempt = TransferAttempt { namespace: ns, agent: query.agent, target: query.to };
    let decision = transfer::decide(table, &attempt);

    let mut notes = Vec::new();
    if !trunk.served {
        for kind in &trunk.kinds {
            let why = not_served(verdicts, *kind, &trunk.name, region);
            notes.push(format!(
                "{} {} {why}: no call is on it; its namespace is used all the same",
                kind.as_str(),
                trunk.name
            ));
        }
    }
    notes.extend(agent_of_trunk(table, &trunk, query.agent));
    if let Err(r) = &decision.outcome
        && matches!(
            r.rule,
            RefusalRule::TransferUnknownDestination | RefusalRule::TransferNotADestination
        )
    {
        notes.extend(unserved_destinations(specs, table, verdicts, ns, region));
    }
    let dial = decision.destination.as_deref().map(|d| dial(specs, table, d));
    Ok(TransferExplanation {
        trunk,
        agent: query.agent.to_string(),
        refer_to: query.to.to_string(),
        decision,
        dial,
        notes,
    })
}

/// An object's namespace as compile reads it (none: the default namespace).
fn namespace_of(namespace: &Option<String>) -> &str {
    namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// The trunk `--trunk` names among every InboundTrunk and OutboundTrunk of the specs.
fn call_trunk(specs: &Specs, table: &RoutingTable, named: &str) -> anyhow::Result<CallTrunk> {
    let matches = |namespace: &str, name: &str| match named.split_once('/') {
        Some((ns, n)) => ns == namespace && n == name,
        None => named == name,
    };
    let inbound = specs.inbound.iter().map(|t| (Kind::InboundTrunk, &t.metadata));
    let outbound = specs.outbound.iter().map(|t| (Kind::OutboundTrunk, &t.metadata));
    let mut found: Vec<(Kind, ObjectName)> = inbound
        .chain(outbound)
        .filter_map(|(kind, meta)| {
            let name = meta.name.as_deref()?;
            let ns = namespace_of(&meta.namespace);
            matches(ns, name).then(|| (kind, ObjectName::new(ns, name)))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found.dedup();
    let mut names: Vec<String> = found.iter().map(|(_, n)| n.to_string()).collect();
    names.dedup();
    let Some((_, name)) = found.first() else {
        bail!(
            "--trunk {named:?}: no InboundTrunk or OutboundTrunk of that name in the specs; \
             run `trunkline check` to list them"
        );
    };
    if names.len() > 1 {
        bail!(
            "--trunk {named:?} names trunks in several namespaces ({}): write namespace/NAME",
            names.join(", ")
        );
    }
    let name = name.clone();
    let kinds: Vec<Kind> = found.iter().map(|(k, _)| *k).collect();
    let served = kinds.iter().any(|k| match k {
        Kind::InboundTrunk => table.inbound.iter().any(|t| t.name == name),
        Kind::OutboundTrunk => table.outbound.contains_key(&name),
        _ => false,
    });
    Ok(CallTrunk { kinds, name, served })
}

/// Why an object of the specs is not in the table: refused by compile, or left out for the
/// region.
fn not_served(
    verdicts: &[&Verdict],
    kind: Kind,
    name: &ObjectName,
    region: Option<&str>,
) -> String {
    let verdict = verdicts.iter().find(|v| {
        v.object.kind == kind && v.object.namespace == name.namespace && v.object.name == name.name
    });
    match verdict {
        Some(v) if v.state == State::Refused => {
            let why = v
                .diagnostics
                .first()
                .map_or(String::new(), |d| format!(": {} ({})", d.message, d.reason.as_str()));
            format!("is in the specs but refused{why}")
        }
        _ => match region {
            Some(r) => format!("is not served in region {r}"),
            None => "is in the specs but not served".to_string(),
        },
    }
}

/// A note when the agent is not one the trunk's calls can have: such a call does not exist.
fn agent_of_trunk(table: &RoutingTable, trunk: &CallTrunk, agent: &str) -> Option<String> {
    let inbound = table.inbound.iter().find(|t| t.name == trunk.name);
    let outbound = table.outbound.get(&trunk.name);
    let fits_inbound = inbound.is_some_and(|t| t.agents.contains(agent));
    let fits_outbound = outbound.is_some_and(|t| t.agents.is_empty() || t.agents.contains(agent));
    if fits_inbound || fits_outbound || (inbound.is_none() && outbound.is_none()) {
        return None;
    }
    let mut lists = Vec::new();
    if let Some(t) = inbound {
        let agents: Vec<&str> = t.agents.iter().map(String::as_str).collect();
        lists.push(format!("InboundTrunk {} sends calls to {}", t.name, agents.join(", ")));
    }
    if let Some(t) = outbound {
        let agents: Vec<&str> = t.agents.iter().map(String::as_str).collect();
        lists.push(format!("OutboundTrunk {} takes calls of {} only", t.name, agents.join(", ")));
    }
    Some(format!(
        "agent {agent:?} has no call on this trunk ({}); the decision is shown all the same",
        lists.join("; ")
    ))
}

/// The TransferDestinations of `ns` in the specs that are not in the table, and why: a request
/// that names one is refused as if it did not exist.
fn unserved_destinations(
    specs: &Specs,
    table: &RoutingTable,
    verdicts: &[&Verdict],
    ns: &str,
    region: Option<&str>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for t in &specs.transfers {
        let Some(name) = t.metadata.name.as_deref() else { continue };
        let name = ObjectName::new(namespace_of(&t.metadata.namespace), name);
        if name.namespace != ns || table.transfers.contains_key(&name) {
            continue;
        }
        let trunk = t.spec.phone.as_ref().map(|p| ObjectName::new(ns, &p.outbound_trunk_ref.name));
        let refused = verdicts.iter().any(|v| {
            v.object.kind == Kind::TransferDestination
                && v.object.namespace == name.namespace
                && v.object.name == name.name
                && v.state == State::Refused
        });
        let why = match trunk {
            Some(trunk) if !refused => format!(
                "its OutboundTrunk {trunk} {}",
                not_served(verdicts, Kind::OutboundTrunk, &trunk, region)
            ),
            _ => not_served(verdicts, Kind::TransferDestination, &name, region),
        };
        notes.push(format!(
            "TransferDestination {name} is in the specs but not served ({why}): no agent can use it"
        ));
    }
    notes
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn kind_names<S: serde::Serializer>(kinds: &[Kind], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(kinds.iter().map(|k| k.as_str()))
}

/// What a destination would dial.
fn dial(specs: &Specs, table: &RoutingTable, d: &TransferRoute) -> Dial {
    match &d.target {
        TransferTarget::Phone { number, outbound_trunk } => Dial::Phone {
            number: number.clone(),
            trunk_name: outbound_trunk.clone(),
            route: table.outbound.get(outbound_trunk).map(|trunk| OutboundRoute {
                trunk: Arc::clone(trunk),
                number: number.clone(),
                caller_id: trunk.caller_id.clone(),
                agent: None,
                hosts: trunk.hosts.clone(),
            }),
            secret: table.outbound.get(outbound_trunk).and_then(|t| super::digest_secret(specs, t)),
        },
        TransferTarget::Sip { uri, credentials, .. } => {
            let secret = specs
                .transfers
                .iter()
                .find(|t| {
                    t.metadata.name.as_deref() == Some(d.name.name.as_str())
                        && namespace_of(&t.metadata.namespace) == d.name.namespace
                })
                .and_then(|t| t.spec.sip.as_ref()?.auth.as_ref()?.digest.secret_ref.as_ref())
                .map(|r| format!("{}/{}", d.name.namespace, r.name));
            Dial::Sip {
                uri: uri.clone(),
                target: SipDestination::parse(uri).ok(),
                digest: credentials.as_ref().map(|c| DigestUse {
                    secret: secret.unwrap_or_else(|| "(named in the spec)".into()),
                    username: c.username.clone(),
                }),
            }
        }
        TransferTarget::Hangup => Dial::Hangup,
    }
}

/// One line on what the mode does.
fn mode_text(d: &TransferRoute) -> &'static str {
    match (&d.target, d.mode) {
        (TransferTarget::Hangup, _) => {
            "the only mode of a Hangup destination: there is no one to bridge or refer the \
             caller to"
        }
        (_, TransferMode::Bridge) => {
            "the gateway dials the destination itself; the caller keeps talking to the agent \
             until it answers, then the caller's media moves to the new leg and the agent leg is \
             ended; on failure (busy, no answer, 4xx/5xx) the caller stays with the agent, who \
             gets the status in a NOTIFY"
        }
        (_, TransferMode::Refer) => {
            "the gateway passes a REFER to the caller's side (the carrier leg) with Refer-To \
             written from the destination; the carrier places the new call and the gateway dials \
             nothing; the carrier's NOTIFYs reach the agent, whose leg is ended on success"
        }
    }
}

fn mode_name(d: &TransferRoute) -> &'static str {
    match d.mode {
        TransferMode::Bridge => "Bridge",
        TransferMode::Refer => "Refer",
    }
}

fn type_name(d: &TransferRoute) -> &'static str {
    match d.target {
        TransferTarget::Phone { .. } => "Phone",
        TransferTarget::Sip { .. } => "Sip",
        TransferTarget::Hangup => "Hangup",
    }
}

/// The `Warning` the agent's refused REFER gets, as the gateway writes it toward an agent
/// (`399 trunkline "RULE: message"`).
fn warning(r: &Refusal) -> String {
    trunkline::config::refusal::warning(r.rule.as_str(), &r.message)
}

/// A Sip target's host, port and transport: `host:port over UDP`.
fn sip_target_text(target: &SipDestination) -> String {
    let default_port = if target.transport == Transport::Tls { 5061 } else { 5060 };
    let host =
        if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
    let mut text = format!(
        "{host}:{} over {}",
        target.port.unwrap_or(default_port),
        target.transport.as_str()
    );
    if target.host.parse::<std::net::IpAddr>().is_err() {
        text.push_str("; a host name: looked up on each transfer, not here");
    }
    text
}

impl TransferExplanation {
    /// The text for people: the request, the steps, the destination and what it dials, the
    /// answer the agent gets.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let kinds: Vec<&str> = self.trunk.kinds.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(
            out,
            "call:  a call on {} {} with agent {:?}; the agent sends REFER, Refer-To: {}",
            kinds.join("/"),
            self.trunk.name,
            self.agent,
            self.refer_to
        );
        let _ = writeln!(
            out,
            "       (destinations are looked up in namespace {})",
            self.trunk.name.namespace
        );
        for (i, step) in self.decision.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>2}. {:<11} {} {}",
                i + 1,
                step.check.as_str(),
                if step.passed { "ok  " } else { "FAIL" },
                step.detail
            );
        }
        if let (Some(d), Some(dial)) = (&self.decision.destination, &self.dial) {
            render_destination(&mut out, d, dial);
        }
        match &self.decision.outcome {
            Ok(choice) => {
                let d = &choice.destination;
                let offer = "offering the codec in use on the caller's leg";
                let then = match (self.dial.as_ref(), d.mode) {
                    (Some(Dial::Hangup) | None, _) => {
                        let _ = writeln!(
                            out,
                            "=> 202 Accepted and NOTIFY 200 to the agent, then BYE to the \
                             caller's side and to the agent: both legs are hung up"
                        );
                        return self.with_notes(out);
                    }
                    (Some(Dial::Phone { route: Some(route), .. }), TransferMode::Bridge) => {
                        format!(
                            "INVITE {} through {} (caller id {}, or the caller's own number when \
                             the trunk lists it; Diversion naming the number called), {offer}",
                            route.carrier_uri(),
                            route.trunk.name,
                            route.caller_id
                        )
                    }
                    (Some(Dial::Phone { number, .. }), _) => {
                        format!("REFER to the caller's side, Refer-To naming {number}")
                    }
                    (Some(Dial::Sip { uri, .. }), TransferMode::Bridge) => {
                        format!("INVITE {uri}, {offer}")
                    }
                    (Some(Dial::Sip { uri, .. }), TransferMode::Refer) => {
                        format!("REFER to the caller's side, Refer-To <{uri}>")
                    }
                };
                if d.mode == TransferMode::Refer {
                    let _ = writeln!(
                        out,
                        "=> 202 Accepted to the agent, NOTIFY 100 Trying, then {then}; the caller's \
                         side's NOTIFYs are relayed to the agent, and on its 200 both legs end"
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "=> 202 Accepted to the agent, NOTIFY 100 Trying, then {then}; its 18x and \
                         final status reach the agent in NOTIFYs; on its 200 the caller's media \
                         moves to it (no re-INVITE to the caller) and the agent gets BYE; busy, \
                         refused or no answer within --transfer-timeout: the caller stays with \
                         the agent"
                    );
                }
            }
            Err(r) => {
                let _ = writeln!(
                    out,
                    "=> {} {} ({}): {}",
                    r.status,
                    trunkline::sip::msg::reason_phrase(r.status),
                    r.rule,
                    r.message
                );
                let _ = writeln!(out, "   Warning: {}", warning(r));
                let _ = writeln!(out, "   nothing is dialed; the caller stays with the agent");
            }
        }
        self.with_notes(out)
    }

    fn with_notes(&self, mut out: String) -> String {
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The JSON for tools: the request, the steps and outcome (as `config::transfer` writes
    /// them), the destination and what it dials.
    pub fn to_json(&self) -> JsonExplanation<'_> {
        JsonExplanation {
            direction: "transfer",
            request: JsonRequest {
                trunk: &self.trunk,
                agent: &self.agent,
                refer_to: &self.refer_to,
            },
            steps: &self.decision.steps,
            outcome: match &self.decision.outcome {
                Ok(choice) => JsonOutcome::Transfer(choice),
                Err(refusal) => JsonOutcome::Refuse { refusal, warning: warning(refusal) },
            },
            destination: match (&self.decision.destination, &self.dial) {
                (Some(d), Some(dial)) => Some(DestinationView::new(d, dial)),
                _ => None,
            },
            notes: &self.notes,
        }
    }
}

fn render_destination(out: &mut String, d: &TransferRoute, dial: &Dial) {
    let _ = writeln!(out, "destination {}:", d.name);
    match dial {
        Dial::Phone { number, trunk_name, .. } => {
            let _ =
                writeln!(out, "    type       Phone: {number} through OutboundTrunk {trunk_name}");
        }
        Dial::Sip { uri, target, digest } => {
            let at =
                target.as_ref().map_or(String::new(), |t| format!(" ({})", sip_target_text(t)));
            let _ = writeln!(out, "    type       Sip: {uri}{at}");
            let auth = match (digest, d.mode) {
                (Some(c), TransferMode::Bridge) => format!(
                    "answers 401/407 with the credentials of Secret {} (username {:?})",
                    c.secret, c.username
                ),
                (Some(c), TransferMode::Refer) => format!(
                    "Secret {} (username {:?}) is not used in Refer mode: the carrier places the call",
                    c.secret, c.username
                ),
                (None, _) => "no digest: a challenge from it fails the transfer".to_string(),
            };
            let _ = writeln!(out, "    auth       {auth}");
        }
        Dial::Hangup => {
            let _ = writeln!(
                out,
                "    type       Hangup: the gateway ends the call on both legs (BYE to the \
                 caller's side with a Reason header, and to the agent)"
            );
        }
    }
    let _ = writeln!(out, "    mode       {}: {}", mode_name(d), mode_text(d));
    let agents = if d.agents.is_empty() {
        "any agent (no agents list)".to_string()
    } else {
        let listed: Vec<&str> = d.agents.iter().map(String::as_str).collect();
        format!("only {}", listed.join(", "))
    };
    let _ = writeln!(out, "    agents     {agents}");
    if let Dial::Phone { route, secret, trunk_name, .. } = dial {
        match route {
            Some(route) => {
                let heading = format!("trunk {} (accepted and served)", route.trunk.name);
                render_trunk(out, &heading, &route.trunk, secret.as_deref());
                if d.mode == TransferMode::Refer {
                    let _ = writeln!(
                        out,
                        "    (in Refer mode the carrier of the call dials: this trunk is not used)"
                    );
                }
            }
            None => {
                let _ = writeln!(out, "trunk {trunk_name}: not served");
            }
        }
    }
}

/// The credentials a Sip destination answers a challenge with: named, never shown.
#[derive(Debug, Serialize)]
pub struct DigestUse {
    pub secret: String,
    pub username: String,
}

/// `explain --transfer --output json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonExplanation<'a> {
    direction: &'static str,
    request: JsonRequest<'a>,
    steps: &'a [Step],
    outcome: JsonOutcome<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<DestinationView<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRequest<'a> {
    trunk: &'a CallTrunk,
    agent: &'a str,
    refer_to: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
enum JsonOutcome<'a> {
    Transfer(&'a TransferChoice),
    Refuse {
        #[serde(flatten)]
        refusal: &'a Refusal,
        warning: String,
    },
}

/// A destination as explain shows it; credentials by Secret and username only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DestinationView<'a> {
    name: String,
    #[serde(rename = "type")]
    type_: &'static str,
    mode: &'static str,
    mode_does: &'static str,
    agents: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<&'a E164>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_trunk: Option<PhoneTrunkView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<Transport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a DigestUse>,
}

/// The OutboundTrunk of a Phone destination.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhoneTrunkView<'a> {
    served: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_uri: Option<String>,
    #[serde(flatten)]
    trunk: Option<TrunkView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl<'a> DestinationView<'a> {
    fn new(d: &'a TransferRoute, dial: &'a Dial) -> Self {
        let mut view = DestinationView {
            name: d.name.to_string(),
            type_: type_name(d),
            mode: mode_name(d),
            mode_does: mode_text(d),
            agents: d.agents.iter().map(String::as_str).collect(),
            number: None,
            outbound_trunk: None,
            uri: None,
            transport: None,
            digest: None,
        };
        match dial {
            Dial::Phone { number, trunk_name, route, secret } => {
                view.number = Some(number);
                view.outbound_trunk = Some(PhoneTrunkView {
                    served: route.is_some(),
                    request_uri: route.as_ref().map(OutboundRoute::carrier_uri),
                    trunk: route.as_ref().map(|r| TrunkView::new(&r.trunk, secret.as_deref())),
                    name: route.is_none().then(|| trunk_name.to_string()),
                });
            }
            Dial::Sip { uri, target, digest } => {
                view.uri = Some(uri);
                view.transport = target.as_ref().map(|t| t.transport);
                view.digest = digest.as_ref();
            }
            Dial::Hangup => {}
        }
        view
    }
}
