//! `trunkline explain --outbound`: what the gateway would do with an agent's request to call out
//! through an OutboundTrunk, worked out by the code the gateway runs. The flags become the INVITE
//! an agent runtime would send to the agent-facing listener; the SIP facade parses it,
//! `OutboundAttempt::from_invite` reads it and `config::outbound::decide` decides it, as the
//! front door does. A call that would go out is then set up by `call::outbound::setup` and
//! started by `Call::start`, and the INVITE the call machine sends toward the carrier is printed.
//! Nothing is sent, looked up or bound. (The inbound explain is in `cli.rs`.)
//!
//! What the printed INVITE cannot know, it says:
//! - our carrier-facing address (in Via, Contact, From and P-Asserted-Identity) is the address of
//!   the gateway's carrier-facing listener, or its `--public-address`: it is shown as
//!   `<carrier-facing address>` unless `--public-address IP[:PORT]` is given here too;
//! - a trunk host that is a name is looked up by the gateway on every call: the Request-URI keeps
//!   the name, and no address is shown;
//! - the body is the agent's SDP offer cut down to the trunk's codecs, with the relay's address:
//!   not printed, its codecs named;
//! - Call-ID, tags and branch are fresh for every call.
//!
//! Credentials: the trunk's digest is described by its Secret's name and username. The password
//! is in no line printed (the first INVITE carries no `Authorization`; the answer to a challenge
//! is never shown).
//!
//! `explain --transfer` is in [`transfer`]; it shares the trunk description.

pub mod transfer;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use trunkline::api::{Kind, Transport};
use trunkline::call::machine::{Action, Call, CallConfig, Ids};
use trunkline::call::outbound::setup;
use trunkline::config::lookup::{Refusal, Step};
use trunkline::config::model::{Codec, Limits, OutboundTrunkRoute};
use trunkline::config::number::E164;
use trunkline::config::outbound::{self, OutboundAttempt, OutboundDecision, OutboundRoute};
use trunkline::config::refusal::RefusalRule;
use trunkline::config::specs::DEFAULT_NAMESPACE;
use trunkline::config::{CompileOptions, Specs, State, Verdict, compile};
use trunkline::sip::msg::{self, DialogHeaders, Message, Request};
use trunkline::sip::transport::{Protocol, Source, Zone};
use trunkline::source::folder::load_paths;

/// What the printed INVITE shows for our carrier-facing address when `--public-address` is not
/// given.
pub const CARRIER_FACING: &str = "<carrier-facing address>";

/// The host of the Request-URI of the agent's INVITE built from the flags (the gateway does not
/// read it).
const GATEWAY_HOST: &str = "trunkline.invalid";
/// Where the agent's INVITE comes from, and the agent-facing listener it reaches.
const AGENT_ADDRESS: &str = "127.0.0.1:5090";
const AGENT_LISTENER: &str = "127.0.0.1:5080";
/// Stands for our carrier-facing address while the call machine writes the INVITE; replaced by
/// [`CARRIER_FACING`] in our own headers. Never a trunk's address: those are in the Request-URI
/// and To, which are left alone.
const UNKNOWN_LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// The headers that carry our carrier-facing address.
const OUR_ADDRESS_HEADERS: [&str; 4] = ["Via", "Contact", "From", "P-Asserted-Identity"];

/// The agent's request to call out, as the flags give it.
#[derive(Debug)]
pub struct OutboundQuery<'a> {
    /// `--trunk`: the trunk header's value (`NAME` or `namespace/NAME`).
    pub trunk: Option<&'a str>,
    /// `--to`: the number (the Request-URI user), or a whole Request-URI.
    pub to: &'a str,
    /// `--agent`: the agent id header's value.
    pub agent: Option<&'a str>,
    /// `--caller-id`: the From user (or a whole From URI).
    pub caller_id: Option<&'a str>,
    /// `-H`: more headers of the agent's INVITE.
    pub headers: &'a [(String, String)],
    pub header_prefix: &'a str,
    /// `--public-address`: our carrier-facing address, when the user says what it is.
    pub public_address: Option<PublicAddress>,
}

/// Our carrier-facing address as `--public-address` gives it: an IP, and the carrier-facing
/// listener's port when given (else 5060, or 5061 toward a TLS trunk: the usual SIP ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl PublicAddress {
    fn toward(self, transport: Transport) -> SocketAddr {
        let default = if transport == Transport::Tls { 5061 } else { 5060 };
        SocketAddr::new(self.ip, self.port.unwrap_or(default))
    }
}

/// Everything `explain --outbound` found out.
#[derive(Debug)]
pub struct OutboundExplanation {
    /// The Request-URI and From URI of the agent's INVITE.
    pub request_uri: String,
    pub from_uri: String,
    pub decision: OutboundDecision,
    /// The Secret with the trunk's digest credentials, `namespace/name`.
    pub secret: Option<String>,
    /// The INVITE toward the carrier, when the call would go out.
    pub carrier_invite: Option<CarrierInvite>,
    /// What else the user should know (why a named trunk is not in the table, a caller id that
    /// asks for nothing).
    pub notes: Vec<String>,
}

/// The first lines of the INVITE the carrier would get.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CarrierInvite {
    /// Where it goes: an address, or the host name the gateway looks up per call.
    pub sent_to: String,
    /// The request line and the headers, as the call machine writes them (without
    /// Content-Length: the body is not shown).
    pub lines: Vec<String>,
    /// What the body is.
    pub body: String,
}

/// `trunkline explain --outbound`: loads and compiles the specs, explains, prints. Exit status
/// 0 when the call would go out to the carrier, 1 when the agent would be refused.
pub fn run(
    specs: &[PathBuf],
    region: Option<String>,
    query: &OutboundQuery,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = load_paths(specs);
    let compiled = compile(&loaded.specs, &CompileOptions { region: region.clone() });
    let verdicts: Vec<&Verdict> = loaded.refused.iter().chain(&compiled.verdicts).collect();
    let explanation = explain(&loaded.specs, &compiled.table, &verdicts, region.as_deref(), query)?;
    let routed = explanation.decision.outcome.is_ok();
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation.to_json())?);
    } else {
        let refused = verdicts.iter().filter(|v| v.state == State::Refused).count();
        let trunks = compiled.table.outbound.len();
        let mut out =
            format!("specs: {trunks} outbound trunk{}", if trunks == 1 { "" } else { "s" });
        out.push_str(&refused_note(refused, verdicts.len(), loaded.problems.len()));
        out.push('\n');
        out.push_str(&explanation.render_text(query));
        print!("{out}");
    }
    Ok(if routed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What the first line of every explain adds when the specs are not all served: how many
/// objects were refused and files could not be read (empty when none).
pub fn refused_note(refused: usize, objects: usize, problems: usize) -> String {
    if refused == 0 && problems == 0 {
        return String::new();
    }
    format!(
        " ({refused} of {objects} objects refused, {problems} file errors: run `trunkline check` \
         for details)"
    )
}

/// Decides the agent's request against `table` and, when it would go out, writes the carrier's
/// INVITE. `verdicts` and `region` explain a named trunk that is not in the table.
pub fn explain(
    specs: &Specs,
    table: &trunkline::config::RoutingTable,
    verdicts: &[&Verdict],
    region: Option<&str>,
    query: &OutboundQuery,
) -> anyhow::Result<OutboundExplanation> {
    let invite = agent_invite(query)?;
    let from_uri = invite.from().map(|f| f.uri.clone()).unwrap_or_default();
    let headers: Vec<(String, String)> =
        invite.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let attempt =
        OutboundAttempt::from_invite(&invite.uri, &from_uri, &headers, query.header_prefix);
    let decision = outbound::decide(table, &attempt);

    let mut notes = Vec::new();
    if let (Some(asked), None) = (query.caller_id, attempt.caller_id) {
        notes.push(format!(
            "--caller-id {asked:?} is not a number: a From user that is not a number asks for \
             no caller id, so the trunk's callerId is presented"
        ));
    }
    if let Err(refusal) = &decision.outcome
        && refusal.rule == RefusalRule::UnknownTrunk
        && let Some(named) = attempt.trunk_header.or(attempt.trunk_param)
    {
        notes.extend(why_not_served(specs, verdicts, region, named));
    }
    let request_uri = invite.uri.clone();
    let secret = decision.trunk.as_deref().and_then(|t| digest_secret(specs, t));
    let carrier_invite = match &decision.outcome {
        Ok(route) => Some(carrier_invite(invite, route, query)?),
        Err(_) => None,
    };
    Ok(OutboundExplanation { request_uri, from_uri, decision, secret, carrier_invite, notes })
}

/// The INVITE an agent runtime would send for these flags, parsed by the gateway's SIP facade.
fn agent_invite(q: &OutboundQuery) -> anyhow::Result<Request> {
    let flags = [("--to", Some(q.to)), ("--trunk", q.trunk), ("--agent", q.agent)];
    let flags = flags.into_iter().chain([("--caller-id", q.caller_id)]);
    let headers = q.headers.iter().flat_map(|(n, v)| [("-H", Some(n.as_str())), ("-H", Some(v))]);
    for (flag, value) in flags.chain(headers) {
        if value.is_some_and(|v| v.chars().any(char::is_control)) {
            bail!("{flag} holds a control character: an INVITE cannot carry it");
        }
    }
    let request_uri =
        if q.to.contains(':') { q.to.to_string() } else { format!("sip:{}@{GATEWAY_HOST}", q.to) };
    let from_uri = match q.caller_id {
        Some(c) if c.contains(':') => c.to_string(),
        Some(c) => format!("sip:{c}@agent.invalid"),
        None => "sip:agent@agent.invalid".to_string(),
    };
    let mut text = format!(
        "INVITE {request_uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {AGENT_ADDRESS};branch=z9hG4bKexplain\r\n\
         Max-Forwards: 70\r\n\
         From: <{from_uri}>;tag=explain\r\n\
         To: <{request_uri}>\r\n\
         Call-ID: explain@agent.invalid\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:agent@{AGENT_ADDRESS}>\r\n"
    );
    let prefix = q.header_prefix;
    if let Some(trunk) = q.trunk {
        let _ = write!(text, "{prefix}{}: {trunk}\r\n", outbound::TRUNK_HEADER);
    }
    if let Some(agent) = q.agent {
        let _ = write!(text, "{prefix}Agent-ID: {agent}\r\n");
    }
    for (name, value) in q.headers {
        let _ = write!(text, "{name}: {value}\r\n");
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    match msg::parse(text.as_bytes()) {
        Ok(Message::Request(r)) => Ok(r),
        Ok(Message::Response(_)) => bail!("the flags made a SIP response, not an INVITE"),
        Err(e) => bail!(
            "the agent's INVITE for these flags (Request-URI {request_uri}, From {from_uri}) \
             does not parse in the gateway's SIP reader ({}): the gateway would answer it {}; \
             check --to, --caller-id and -H",
            e.detail,
            e.status
        ),
    }
}

/// Sets the call up and starts it as the gateway would, and keeps the INVITE the call machine
/// sends toward the carrier.
fn carrier_invite(
    invite: Request,
    route: &OutboundRoute,
    q: &OutboundQuery,
) -> anyhow::Result<CarrierInvite> {
    let agent_listener: SocketAddr = AGENT_LISTENER.parse().context("the agent listener")?;
    let source = Source {
        protocol: Protocol::Udp,
        zone: Zone::Internal,
        remote: AGENT_ADDRESS.parse().context("the agent address")?,
        local: agent_listener,
        connection: None,
    };
    let carrier_local =
        q.public_address.map_or(UNKNOWN_LOCAL, |p| p.toward(route.trunk.primary().transport));
    let mut ids = Ids::random();
    let locals = (agent_listener, carrier_local);
    // No offer: the body is described, not printed.
    let setup = setup(&mut ids, q.header_prefix, invite, source, locals, route, None);
    let now = Instant::now();
    let (mut call, mut actions) = Call::start(now, CallConfig::default(), Ids::random(), setup);
    // A host name: the driver would look it up now (by SRV first for a name with no port).
    // The address given back is never shown.
    let lookup = actions.iter().find_map(|a| match a {
        Action::Resolve { leg, port, .. } | Action::ResolveSrv { leg, port, .. } => {
            Some((*leg, *port))
        }
        _ => None,
    });
    if let Some((leg, port)) = lookup {
        let unresolved = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        actions = call.on_resolved(now, leg, Ok(unresolved));
    }
    let bytes = actions
        .iter()
        .find_map(|a| match a {
            Action::Send { target, bytes, .. } if target.zone == Zone::Carrier => Some(bytes),
            _ => None,
        })
        .context("the call machine sent no INVITE toward the carrier")?;
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let lines = head
        .split("\r\n")
        .filter(|l| header_name(l).is_none_or(|n| !n.eq_ignore_ascii_case("Content-Length")))
        .map(|l| match header_name(l) {
            Some(n) if q.public_address.is_none() && is_our_address_header(n) => mask_local(l),
            _ => l.to_string(),
        })
        .collect();
    Ok(CarrierInvite { sent_to: sent_to(&route.trunk), lines, body: body_note(&route.trunk) })
}

fn header_name(line: &str) -> Option<&str> {
    line.split_once(':').map(|(n, _)| n.trim()).filter(|n| !n.contains(' '))
}

fn is_our_address_header(name: &str) -> bool {
    OUR_ADDRESS_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn mask_local(line: &str) -> String {
    let with_port = UNKNOWN_LOCAL.to_string();
    let ip = UNKNOWN_LOCAL.ip().to_string();
    line.replace(&with_port, CARRIER_FACING).replace(&ip, CARRIER_FACING)
}

/// Where the INVITE goes first: `host:port over TRANSPORT` of the first host.
fn sent_to(trunk: &OutboundTrunkRoute) -> String {
    trunk.primary().describe()
}

/// Each host of the carrier, with what the gateway does about a host name and TLS; for several,
/// their order and when a call moves on to the next.
fn carrier_text(trunk: &OutboundTrunkRoute) -> String {
    let several = trunk.hosts.len() > 1;
    let mut parts = Vec::new();
    for h in &trunk.hosts {
        let mut text = h.describe();
        if several {
            let _ = write!(text, " (priority {}, weight {})", h.priority, h.weight);
        }
        if h.srv {
            let _ = write!(
                text,
                "; a host name with no port: its SRV records ({}) looked up on each call, not \
                 here, their targets tried in order; none: A/AAAA at port {}",
                h.srv_name().unwrap_or_default(),
                h.port
            );
        } else if h.host.parse::<IpAddr>().is_err() {
            text.push_str("; a host name: looked up (A/AAAA) on each call, not here");
        }
        if h.transport == Transport::Tls {
            let _ = write!(
                text,
                "; its certificate must verify for {} against the system's roots and --tls-ca",
                h.host
            );
        }
        parts.push(text);
    }
    if several {
        parts.push(format!(
            "lowest priority first, by weight within a priority, hosts down on OPTIONS skipped; \
             the next host on no answer or {}",
            trunkline::call::machine::FAILOVER_STATUSES
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    parts.join("\n               ")
}

fn body_note(trunk: &OutboundTrunkRoute) -> String {
    format!(
        "the agent's SDP offer cut down to {} (and telephone-event), with the relay's address in \
         place of the agent's; no offer from the agent: the gateway's own offer of these codecs; \
         no common codec: 488 to the agent and nothing to the carrier",
        codec_list(&trunk.codecs)
    )
}

fn codec_list(codecs: &[Codec]) -> String {
    codecs.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

/// The Secret an OutboundTrunk's digest credentials come from, `namespace/name`.
fn digest_secret(specs: &Specs, trunk: &OutboundTrunkRoute) -> Option<String> {
    let spec = specs.outbound.iter().find(|t| {
        t.metadata.name.as_deref() == Some(trunk.name.name.as_str())
            && t.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE) == trunk.name.namespace
    })?;
    let reference = spec.spec.auth.as_ref()?.digest.secret_ref.as_ref()?;
    Some(format!("{}/{}", trunk.name.namespace, reference.name))
}

/// Why a trunk the request names is not in the table although the specs hold it: refused by
/// compile, or left out for the region.
fn why_not_served(
    specs: &Specs,
    verdicts: &[&Verdict],
    region: Option<&str>,
    named: &str,
) -> Vec<String> {
    let matches = |namespace: &str, name: &str| match named.split_once('/') {
        Some((ns, n)) => ns == namespace && n == name,
        None => named == name,
    };
    let mut notes = Vec::new();
    for v in verdicts {
        let o = &v.object;
        if o.kind != Kind::OutboundTrunk || !matches(&o.namespace, &o.name) {
            continue;
        }
        if v.state == State::Refused {
            let why = v
                .diagnostics
                .first()
                .map_or(String::new(), |d| format!(": {} ({})", d.message, d.reason.as_str()));
            notes.push(format!(
                "OutboundTrunk {o} is in the specs but refused{why}; run `trunkline check`",
                o = format_args!("{}/{}", o.namespace, o.name)
            ));
        } else if let Some(region) = region {
            let regions = specs
                .outbound
                .iter()
                .find(|t| {
                    t.metadata.name.as_deref() == Some(o.name.as_str())
                        && t.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
                            == o.namespace
                })
                .map(|t| t.spec.regions.join(", "))
                .unwrap_or_default();
            notes.push(format!(
                "OutboundTrunk {}/{} is not served in region {region} (its regions: {regions})",
                o.namespace, o.name
            ));
        }
    }
    notes
}

impl OutboundExplanation {
    /// The text for people: the agent's request, the steps, the trunk, the outcome and, when
    /// the call goes out, the carrier's INVITE.
    pub fn render_text(&self, q: &OutboundQuery) -> String {
        let mut out = String::new();
        let mut asked = Vec::new();
        if let Some(t) = q.trunk {
            asked.push(format!("{}{}: {t}", q.header_prefix, outbound::TRUNK_HEADER));
        }
        if let Some(a) = q.agent {
            asked.push(format!("{}Agent-ID: {a}", q.header_prefix));
        }
        asked.extend(q.headers.iter().map(|(n, v)| format!("{n}: {v}")));
        let _ = writeln!(
            out,
            "call:  INVITE {} from the agent runtime, From {}{}{}",
            self.request_uri,
            self.from_uri,
            if asked.is_empty() { "" } else { ", " },
            asked.join(", ")
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
        if let Some(trunk) = &self.decision.trunk {
            render_trunk(&mut out, &format!("trunk {}", trunk.name), trunk, self.secret.as_deref());
        }
        match &self.decision.outcome {
            Ok(route) => {
                let _ = writeln!(
                    out,
                    "=> 100 Trying to the agent, then INVITE {} (trunk {}, caller id {}{})",
                    route.carrier_uri(),
                    route.trunk.name,
                    route.caller_id,
                    route.agent.as_ref().map_or(String::new(), |a| format!(", agent {a}"))
                );
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
            }
        }
        if let Some(invite) = &self.carrier_invite {
            let _ = writeln!(out, "\nthe carrier gets, at {}:", invite.sent_to);
            for line in &invite.lines {
                let _ = writeln!(out, "    {line}");
            }
            let _ = writeln!(out, "    (body: {})", invite.body);
            if q.public_address.is_none() {
                let _ = writeln!(
                    out,
                    "{CARRIER_FACING}: the gateway's carrier-facing listener, or its \
                     --public-address (pass --public-address IP[:PORT] to fill it in)."
                );
            }
            let _ = writeln!(out, "Call-ID, tags and branch are fresh for every call.");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The JSON for tools: the decision (steps and outcome, as inbound explain writes them), the
    /// trunk and the carrier's INVITE.
    pub fn to_json(&self) -> JsonExplanation<'_> {
        JsonExplanation {
            direction: "outbound",
            request: JsonRequest { uri: &self.request_uri, from: &self.from_uri },
            steps: &self.decision.steps,
            outcome: match &self.decision.outcome {
                Ok(route) => JsonOutcome::Route(route),
                Err(refusal) => JsonOutcome::Refuse(refusal),
            },
            trunk: self
                .decision
                .trunk
                .as_deref()
                .map(|t| TrunkView::new(t, self.secret.as_deref())),
            carrier_invite: self.carrier_invite.as_ref(),
            notes: &self.notes,
        }
    }
}

/// An OutboundTrunk's policy under `heading` (`trunk NAME`): carrier, auth (by Secret and
/// username, never the password), caller id, number format, codecs, limits, agents, health.
fn render_trunk(out: &mut String, heading: &str, t: &OutboundTrunkRoute, secret: Option<&str>) {
    let _ = writeln!(out, "{heading}:");
    let _ = writeln!(out, "    carrier    {}", carrier_text(t));
    let auth = match (&t.credentials, secret) {
        (Some(c), secret) => format!(
            "answers 401/407 with the credentials of Secret {} (username {:?})",
            secret.unwrap_or("(named in the trunk)"),
            c.username
        ),
        (None, _) => "no digest: the carrier must allowlist the gateway's addresses \
                      (status.sourceAddresses)"
            .to_string(),
    };
    let _ = writeln!(out, "    auth       {auth}");
    let others = if t.allowed_caller_ids.is_empty() {
        "agents may ask for no other".to_string()
    } else {
        let ids: Vec<String> = t.allowed_caller_ids.iter().map(E164::to_string).collect();
        format!("agents may ask for {}", ids.join(", "))
    };
    let _ = writeln!(out, "    caller id  {} (callerId); {others}", t.caller_id);
    let format = if t.leading_plus {
        "written with the leading + (numberFormat.leadingPlus: true)"
    } else {
        "written without the leading + (numberFormat.leadingPlus: false)"
    };
    let _ = writeln!(out, "    numbers    {format}");
    let _ =
        writeln!(out, "    codecs     {} (telephone-event always allowed)", codec_list(&t.codecs));
    let _ = writeln!(out, "    limits     {}", limits_text(&t.limits));
    let agents = if t.agents.is_empty() {
        "any agent (no agents allowlist)".to_string()
    } else {
        let listed: Vec<&str> = t.agents.iter().map(String::as_str).collect();
        format!("only {}", listed.join(", "))
    };
    let _ = writeln!(out, "    agents     {agents}");
    let health = match t.health_check_interval_seconds {
        Some(s) => format!("OPTIONS every {s} s"),
        None => "no OPTIONS probes".to_string(),
    };
    let _ = writeln!(out, "    health     {health}");
}

fn limits_text(limits: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits.max_concurrent_calls {
        parts.push(format!("maxConcurrentCalls {n}"));
    }
    if let Some(n) = limits.max_calls_per_second {
        parts.push(format!("maxCallsPerSecond {n}"));
    }
    if let Some(n) = limits.max_call_duration_seconds {
        parts.push(format!("maxCallDurationSeconds {n}"));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (for the whole fleet, each gateway pod its share; counted as calls come, not evaluated here)",
            parts.join(", ")
        )
    }
}

/// `explain --outbound --output json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonExplanation<'a> {
    direction: &'static str,
    request: JsonRequest<'a>,
    steps: &'a [Step],
    outcome: JsonOutcome<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trunk: Option<TrunkView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    carrier_invite: Option<&'a CarrierInvite>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

#[derive(Serialize)]
struct JsonRequest<'a> {
    uri: &'a str,
    from: &'a str,
}

/// The outcome as inbound explain writes its own: `action` says which.
#[derive(Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
enum JsonOutcome<'a> {
    Route(&'a OutboundRoute),
    Refuse(&'a Refusal),
}

/// A trunk as explain shows it: its policy, and its credentials by Secret and username only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrunkView<'a> {
    name: String,
    host: &'a str,
    port: u16,
    transport: Transport,
    /// Every host, in order (the first is `host`, `port`, `transport`).
    hosts: &'a [trunkline::config::model::CarrierHost],
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<DigestView<'a>>,
    caller_id: &'a E164,
    allowed_caller_ids: Vec<&'a E164>,
    leading_plus: bool,
    codecs: &'a [Codec],
    limits: &'a Limits,
    agents: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_interval_seconds: Option<u32>,
}

#[derive(Serialize)]
struct DigestView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    username: &'a str,
}

impl<'a> TrunkView<'a> {
    fn new(t: &'a OutboundTrunkRoute, secret: Option<&'a str>) -> Self {
        TrunkView {
            name: t.name.to_string(),
            host: &t.primary().host,
            port: t.primary().port,
            transport: t.primary().transport,
            hosts: &t.hosts,
            digest: t.credentials.as_ref().map(|c| DigestView { secret, username: &c.username }),
            caller_id: &t.caller_id,
            allowed_caller_ids: t.allowed_caller_ids.iter().collect(),
            leading_plus: t.leading_plus,
            codecs: &t.codecs,
            limits: &t.limits,
            agents: t.agents.iter().map(String::as_str).collect(),
            health_check_interval_seconds: t.health_check_interval_seconds,
        }
    }
}
