//! An inbound call, set up (DESIGN §4): the carrier's INVITE is the origin leg (we are its
//! UAS), the agent runtime the dialed leg (we are its UAC) with a fresh Call-ID, our own Via,
//! Contact and From tag (topology hiding), the agent in the Request-URI, trunkline's session
//! headers and the caller's `X-*` headers. What happens after is the call machine's
//! (`call::machine`), run by `call::driver`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::RoutingTable;
use crate::config::lookup::Route;
use crate::config::model::Encryption;
use crate::observe::metrics::Direction;
use crate::sip::msg::{DialogHeaders, NameAddr, Request, SipUri};
use crate::sip::transport::{Protocol, Source, Target, Zone};

use super::driver::{self, CallLabels, Held};
use super::headers::Contract;
use super::limits::CallPermit;
use super::machine::{
    Call, Destination, Dial, Dialog, Ids, LegSrtp, MediaOffer, Origin, Role, Setup,
};
use super::services::{CallInput, CallServices};

/// An INVITE the front door admitted, with everything decided about it.
pub struct Admitted {
    pub invite: Request,
    pub source: Source,
    pub route: Route,
    pub permit: CallPermit,
    /// The routing table the call started with.
    pub table: Arc<RoutingTable>,
    pub offer: Option<MediaOffer>,
    /// SDES toward the carrier: the trunk's policy, and the keys settled on its offer.
    pub srtp: LegSrtp,
    /// The hash of the configuration the call started with, for its session record.
    pub config: String,
}

/// Starts the call's task.
pub fn spawn(
    gw: Arc<CallServices>,
    admitted: Admitted,
    channel: (mpsc::Sender<CallInput>, mpsc::Receiver<CallInput>),
) {
    let Admitted { invite, source, route, permit, table, offer, srtp, config } = admitted;
    let transport = source.protocol.as_str();
    let from = invite.from().map(|f| super::machine::user_of(&f.uri)).unwrap_or_default();
    let dialed = super::machine::user_of(&invite.uri);
    let record_source = source;
    let carrier_local = gw.local_address(Zone::Carrier, source.protocol).unwrap_or(source.local);
    let protocol = route.trunk.destination.transport;
    let agent_local = gw
        .local_address(Zone::Internal, protocol)
        .or_else(|| gw.local_address(Zone::Internal, Protocol::Udp))
        .unwrap_or(carrier_local);
    let mut ids = Ids::random();
    let (setup, contract) = setup(
        &mut ids,
        &gw.config.header_prefix,
        invite,
        source,
        (carrier_local, agent_local),
        &route,
        offer,
    );
    let mut setup = setup;
    setup.origin.srtp = srtp;
    let context = gw.transfer_context(&table, &route.trunk.name.namespace, &route.agent);
    setup.transfer = Some(context);
    let session_id = setup.session_id.clone();
    let (call, first) = Call::start(Instant::now(), gw.shared_call_config(), ids, setup);
    let labels = CallLabels {
        direction: Direction::Inbound,
        trunk: route.trunk.name.to_string(),
        number: route.number.to_string(),
        agent: route.agent.clone(),
    };
    let active = gw.metrics.call_started(&labels.trunk, labels.direction);
    let seed = super::record::Seed {
        gateway: &gw.config.gateway_name,
        config: Some(config),
        session_id: &session_id,
        direction: Direction::Inbound,
        trunk: labels.trunk.clone(),
        numbers: crate::observe::record::Numbers {
            from,
            from_e164: route.caller.as_ref().map(|n| n.to_string()),
            to: dialed,
            to_e164: route.number.to_string(),
        },
        agent: Some(route.agent.clone()),
        agent_reason: Some(match route.agent_reason {
            crate::config::lookup::AgentReason::Number => "number",
            crate::config::lookup::AgentReason::Header => "header",
        }),
        transport,
        source: Some(&record_source),
    };
    let record = super::record::seed(seed, Some(&contract));
    let media_allowed = route.trunk.media.allowed_addresses.clone();
    let held = Held { permit, active, labels, table, watch: None, record, media_allowed };
    tokio::spawn(Box::pin(driver::run(gw, call, first, held, channel)));
}

/// The call's set-up: pure, from the admitted INVITE and its route.
pub fn setup(
    ids: &mut Ids,
    prefix: &str,
    invite: Request,
    source: Source,
    (carrier_local, agent_local): (SocketAddr, SocketAddr),
    route: &Route,
    offer: Option<MediaOffer>,
) -> (Setup, Contract) {
    let protocol = route.trunk.destination.transport;
    let session_id = ids.token(16);
    let from = invite.from();
    let display = from.and_then(|f| f.display.clone());
    // The caller's number in E.164 as the trunk reads it (its numberFormat), as the dialed
    // number is; a From that is no number (a name, `anonymous`) as it came, made URI-safe.
    let caller = match &route.caller {
        Some(number) => number.to_string(),
        None => from.map(caller_user).unwrap_or_else(|| "anonymous".to_string()),
    };
    let dialog = Dialog {
        call_id: format!("{}@trunkline", ids.token(20)),
        local_tag: ids.token(10),
        remote_tag: None,
        local_uri: NameAddr { display, uri: format!("sip:{caller}@{agent_local}"), params: vec![] },
        remote_uri: NameAddr { display: None, uri: route.destination.clone(), params: vec![] },
        remote_target: route.destination.clone(),
        route_set: Vec::new(),
        local_cseq: 0,
        target: Target { protocol, zone: Zone::Internal, remote: agent_local, connection: None },
        local: agent_local,
    };
    let (headers, contract) = agent_headers(prefix, &invite, route, &session_id, &caller);
    let setup = Setup {
        session_id,
        origin: Origin {
            role: Role::Carrier,
            invite,
            source,
            local: carrier_local,
            // A carrier with several edge nodes may end the call from another one of them.
            trusted: route.trunk.allowed_addresses.clone(),
            srtp: LegSrtp::new(route.trunk.media.encryption),
        },
        dial: Dial {
            role: Role::Agent,
            dialog,
            destination: destination(route),
            headers,
            credentials: None,
            alternates: Vec::new(),
            encryption: Encryption::Disabled,
        },
        offer,
        codecs: route.trunk.codecs.clone(),
        transfer: None,
        max_duration: route.trunk.limits.max_call_duration(),
    };
    (setup, contract)
}

/// Where the agent runtime is: an address, or a name to look up. The trunk's destination was
/// parsed when its spec was compiled.
fn destination(route: &Route) -> Destination {
    let d = &route.trunk.destination;
    let port = d.port_or_default();
    match d.host.parse::<IpAddr>() {
        Ok(ip) => Destination::Address(SocketAddr::new(ip, port)),
        Err(_) => Destination::Lookup { host: d.host.clone(), port },
    }
}

/// trunkline's session headers, then the caller's `X-*` headers under the header contract
/// (`call::headers`: copies of ours removed, first-class headers validated and normalised).
/// What the contract dropped is logged (the session record will carry it).
fn agent_headers(
    prefix: &str,
    invite: &Request,
    route: &Route,
    session_id: &str,
    caller: &str,
) -> (Vec<(String, String)>, Contract) {
    let mut headers = vec![
        (format!("{prefix}Agent-ID"), route.agent.clone()),
        (format!("{prefix}Trunk"), route.trunk.name.to_string()),
        (format!("{prefix}Number"), route.number.as_str().to_string()),
        (format!("{prefix}Session-ID"), session_id.to_string()),
        (format!("{prefix}Direction"), "inbound".to_string()),
        (format!("{prefix}Caller"), caller.to_string()),
    ];
    let incoming: Vec<(String, String)> =
        invite.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let contract = super::headers::apply(prefix, &incoming, super::headers::Limits::default());
    for w in &contract.warnings {
        tracing::info!(session = %session_id, header = %w.header, warning = %w.message, "caller header changed");
    }
    headers.extend(contract.headers.iter().cloned());
    (headers, contract)
}

/// The user part for the From of the agent leg: the caller's number or name, URI-safe.
fn caller_user(from: &NameAddr) -> String {
    let user = SipUri::parse(&from.uri).and_then(|u| u.user).unwrap_or_else(|| {
        from.uri
            .strip_prefix("tel:")
            .map(|t| t.split(';').next().unwrap_or_default().to_string())
            .unwrap_or_default()
    });
    let safe: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()".contains(*c))
        .take(64)
        .collect();
    if safe.is_empty() { "anonymous".to_string() } else { safe }
}
