//! An outbound call, set up (DESIGN §4): the agent runtime's INVITE is the origin leg (we are
//! its UAS), the carrier the dialed leg (we are its UAC). The same call machine as an inbound
//! call, started from the other side; what differs is decided here, once:
//!
//! - the carrier's Request-URI and To are `sip:NUMBER@host:port` with the number written per the
//!   trunk's `numberFormat` (`config::outbound`);
//! - From and `P-Asserted-Identity` carry the caller id the trunk allows (its `callerId`, or the
//!   one the agent asked for when it is listed), at our carrier-facing address;
//! - Via and Contact are ours on the carrier-facing listener (`--public-address` when set), with
//!   a fresh Call-ID and tags: nothing of the agent's dialog reaches the carrier (topology
//!   hiding), and of its headers only the `X-*` ones that are not trunkline's own;
//! - the leg answers the carrier's digest challenges with the trunk's credentials.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::RoutingTable;
use crate::config::model::CarrierHost;
use crate::config::outbound::{OutboundRoute, carrier_user, rotation};
use crate::observe::metrics::Direction;
use crate::sip::msg::{DialogHeaders, NameAddr, Request};
use crate::sip::resolve::SrvRecord;
use crate::sip::transport::{Protocol, Source, Target, Zone};

use super::driver::{self, CallLabels, Held};
use super::limits::CallPermit;
use super::machine::{
    Alternate, Call, Destination, Dial, Dialog, Ids, LegSrtp, MAX_ATTEMPTS, MediaOffer, Origin,
    Role, Setup,
};
use super::services::{CallInput, CallServices};

/// The header `P-Asserted-Identity` (RFC 3325).
pub const P_ASSERTED_IDENTITY: &str = "P-Asserted-Identity";

/// An agent's INVITE the front door admitted, with everything decided about it.
pub struct Admitted {
    pub invite: Request,
    pub source: Source,
    pub route: OutboundRoute,
    pub permit: CallPermit,
    /// The routing table the call started with.
    pub table: Arc<RoutingTable>,
    pub offer: Option<MediaOffer>,
    /// The hash of the configuration the call started with, for its session record.
    pub config: String,
}

/// Our addresses on the two legs of an outbound call: toward the agent (where its INVITE came
/// in) and toward the carrier (the carrier-facing listener of the trunk's transport).
pub fn local_addresses(
    gw: &CallServices,
    source: &Source,
    transport: Protocol,
) -> (SocketAddr, SocketAddr) {
    let agent_local = gw.local_address(Zone::Internal, source.protocol).unwrap_or(source.local);
    let carrier_local = gw
        .local_address(Zone::Carrier, transport)
        .or_else(|| gw.local_address(Zone::Carrier, Protocol::Udp))
        .unwrap_or(agent_local);
    (agent_local, carrier_local)
}

/// Starts the call's task.
pub fn spawn(
    gw: Arc<CallServices>,
    admitted: Admitted,
    channel: (mpsc::Sender<CallInput>, mpsc::Receiver<CallInput>),
) {
    let Admitted { invite, source, route, permit, table, offer, config } = admitted;
    let numbers = super::record::outbound_numbers(
        &route,
        &invite.from().map(|f| super::machine::user_of(&f.uri)).unwrap_or_default(),
        &super::machine::user_of(&invite.uri),
    );
    // The record keeps what the agent asked for, under the same contract as an agent leg.
    let asked: Vec<(String, String)> =
        invite.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let prefix = &gw.config.header_prefix;
    let contract = super::headers::apply(prefix, &asked, super::headers::Limits::default());
    let (transport, record_source) = (source.protocol.as_str(), source);
    let locals = local_addresses(&gw, &source, route.first_host().transport);
    let mut ids = Ids::random();
    let mut setup =
        setup(&mut ids, &gw.config.header_prefix, invite, source, locals, &route, offer);
    let agent = route.agent.clone().unwrap_or_default();
    setup.transfer = Some(gw.transfer_context(&table, &route.trunk.name.namespace, &agent));
    let (call, first) = Call::start(Instant::now(), gw.shared_call_config(), ids, setup);
    let labels = CallLabels {
        direction: Direction::Outbound,
        trunk: route.trunk.name.to_string(),
        number: route.number.to_string(),
        agent: route.agent.clone().unwrap_or_default(),
    };
    let active = gw.metrics.call_started(&labels.trunk, labels.direction);
    let seed = super::record::Seed {
        gateway: &gw.config.gateway_name,
        config: Some(config),
        session_id: call.session_id(),
        direction: Direction::Outbound,
        trunk: labels.trunk.clone(),
        numbers,
        agent: route.agent.clone(),
        agent_reason: route.agent.as_ref().map(|_| "named"),
        transport,
        source: Some(&record_source),
    };
    let record = super::record::seed(seed, Some(&contract));
    let media_allowed = route.trunk.media.allowed_addresses.clone();
    let held = Held { permit, active, labels, table, watch: None, record, media_allowed };
    tokio::spawn(Box::pin(driver::run(gw, call, first, held, channel)));
}

/// The call's set-up: pure, from the admitted INVITE and its route. `explain --outbound` shows
/// what it gives.
pub fn setup(
    ids: &mut Ids,
    prefix: &str,
    invite: Request,
    source: Source,
    (agent_local, carrier_local): (SocketAddr, SocketAddr),
    route: &OutboundRoute,
    offer: Option<MediaOffer>,
) -> Setup {
    let session_id = ids.token(16);
    let dial = carrier_dial(ids, route, carrier_local, agent_x_headers(prefix, &invite));
    Setup {
        session_id,
        // The agent networks are trusted for every agent leg (`CallConfig::agent_networks`).
        origin: Origin {
            role: Role::Agent,
            invite,
            source,
            local: agent_local,
            trusted: vec![],
            srtp: LegSrtp::default(),
        },
        dial,
        offer,
        codecs: route.trunk.codecs.clone(),
        transfer: None,
        max_duration: route.trunk.limits.max_call_duration(),
    }
}

/// The carrier leg of an outbound call (SIP or API): our dialog toward `sip:NUMBER@host:port`
/// of the route's first host with the caller id in From and `P-Asserted-Identity` at our
/// carrier-facing address, the `X-*` headers that travel, the trunk's credentials, and the
/// route's other hosts to fail over to (at most [`MAX_ATTEMPTS`] in all). A host of another
/// transport than the first is sent from the same carrier-facing address.
pub fn carrier_dial(
    ids: &mut Ids,
    route: &OutboundRoute,
    carrier_local: SocketAddr,
    x_headers: Vec<(String, String)>,
) -> Dial {
    let trunk = &route.trunk;
    let first = route.first_host();
    let carrier_uri = route.carrier_uri_at(first);
    let alternates = route
        .hosts
        .iter()
        .skip(1)
        .take(MAX_ATTEMPTS - 1)
        .map(|h| Alternate {
            uri: route.carrier_uri_at(h),
            protocol: h.transport,
            destination: carrier_destination(h),
        })
        .collect();
    let caller = identity(&carrier_user(trunk, &route.caller_id), carrier_local.ip());
    let dialog = Dialog {
        call_id: format!("{}@trunkline", ids.token(20)),
        local_tag: ids.token(10),
        remote_tag: None,
        local_uri: NameAddr { display: None, uri: caller.clone(), params: vec![] },
        remote_uri: NameAddr { display: None, uri: carrier_uri.clone(), params: vec![] },
        remote_target: carrier_uri,
        route_set: Vec::new(),
        local_cseq: 0,
        target: Target {
            protocol: first.transport,
            zone: Zone::Carrier,
            remote: carrier_local,
            connection: None,
        },
        local: carrier_local,
    };
    let mut headers = vec![(P_ASSERTED_IDENTITY.to_string(), format!("<{caller}>"))];
    headers.extend(x_headers);
    Dial {
        role: Role::Carrier,
        dialog,
        destination: carrier_destination(first),
        headers,
        credentials: trunk.credentials.clone(),
        alternates,
        encryption: trunk.media.encryption,
    }
}

/// `sip:USER@host` at our carrier-facing address.
fn identity(user: &str, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("sip:{user}@{v4}"),
        IpAddr::V6(v6) => format!("sip:{user}@[{v6}]"),
    }
}

/// Where a carrier host is: an address, a name to look up, or (a name with no port given) a
/// name whose SRV records are looked up first.
pub(super) fn carrier_destination(h: &CarrierHost) -> Destination {
    match h.srv_name() {
        Some(service) => Destination::Srv { service, host: h.host.clone(), port: h.port },
        None => destination(&h.host, h.port),
    }
}

/// Where a carrier host given as a DNS name with no port is tried, in order (RFC 3263 §4.2):
/// the targets of its SRV records lowest priority first, within a priority in a random order
/// weighted by weight (RFC 2782; `config::outbound::rotation`, the order of a trunk's own
/// hosts); with no records, `fallback` (the host at its transport's default port: A/AAAA, RFC
/// 3263 §4.2 last paragraph). Never empty. `unit` gives numbers in `[0, 1)`.
pub fn srv_targets(
    records: &[SrvRecord],
    fallback: (&str, u16),
    unit: impl FnMut() -> f64,
) -> Vec<(String, u16)> {
    let mut hosts: Vec<CarrierHost> = records
        .iter()
        .map(|r| CarrierHost {
            priority: r.priority,
            weight: r.weight,
            ..CarrierHost::new(r.target.clone(), r.port, crate::api::Transport::Udp)
        })
        .collect();
    hosts.sort_by_key(|h| h.priority);
    let order: Vec<(String, u16)> =
        rotation(&hosts, |_| true, unit).into_iter().map(|h| (h.host.clone(), h.port)).collect();
    if order.is_empty() { vec![(fallback.0.to_string(), fallback.1)] } else { order }
}

/// Where a host is: an address, or a name to look up.
pub(super) fn destination(host: &str, port: u16) -> Destination {
    match host.parse::<IpAddr>() {
        Ok(ip) => Destination::Address(SocketAddr::new(ip, port)),
        Err(_) => Destination::Lookup { host: host.to_string(), port },
    }
}

/// The `X-*` headers the agent sets for the carrier: all of its `X-*` headers except
/// trunkline's own (`X-Trunkline-...`, which instruct the gateway).
fn agent_x_headers(prefix: &str, invite: &Request) -> Vec<(String, String)> {
    let prefix = prefix.to_ascii_lowercase();
    invite
        .headers
        .iter()
        .filter(|(n, _)| {
            let lower = n.to_ascii_lowercase();
            lower.starts_with("x-") && !lower.starts_with(&prefix)
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::machine::CallConfig;
    use crate::config::model::{Limits, ObjectName, OutboundTrunkRoute};
    use crate::config::number::E164;
    use crate::config::outbound::{OutboundAttempt, decide};
    use crate::config::secret::{BasicAuth, Password};
    use crate::sip::msg::{self, DialogHeaders, Message, name};
    use crate::sip::transport::Protocol;

    use super::super::machine::{Action, LegId};

    fn trunk() -> OutboundTrunkRoute {
        OutboundTrunkRoute {
            name: ObjectName::new("voice", "carrier-out"),
            generation: None,
            hosts: vec![crate::config::model::CarrierHost::new("192.0.2.50", 5060, Protocol::Udp)],
            credentials: Some(BasicAuth {
                username: "acct".into(),
                password: Password::new("pw-not-shown"),
            }),
            caller_id: E164::parse_canonical("+14155550100").unwrap(),
            allowed_caller_ids: Default::default(),
            leading_plus: false,
            health_check_interval_seconds: None,
            registration_expires_seconds: None,
            limits: Limits::default(),
            agents: Default::default(),
            codecs: vec![],
            media: Default::default(),
        }
    }

    fn agent_invite() -> Request {
        let text = "INVITE sip:+14155550142@127.0.0.1:5080 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bKagent1\r\nMax-Forwards: 70\r\n\
            From: \"Bot\" <sip:bot@10.0.0.9>;tag=a1\r\nTo: <sip:+14155550142@127.0.0.1>\r\n\
            Call-ID: agent-secret-call-id@10.0.0.9\r\nCSeq: 1 INVITE\r\n\
            Contact: <sip:bot@10.0.0.9:7000>\r\nX-Trunkline-Outbound-Trunk: carrier-out\r\n\
            X-Trunkline-Agent-ID: support\r\nX-Campaign: spring\r\nSubject: internal\r\n\
            Content-Length: 0\r\n\r\n";
        match msg::parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn the_carrier_gets_our_dialog_the_trunks_identity_and_only_the_agents_x_headers() {
        let (_call, actions, _) = agent_calls_through(trunk(), None);
        let sent: Vec<Request> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { bytes, target, .. } if target.zone == Zone::Carrier => {
                    assert_eq!(target.remote, "192.0.2.50:5060".parse().unwrap());
                    match msg::parse(bytes).unwrap() {
                        Message::Request(r) => Some(r),
                        Message::Response(_) => None,
                    }
                }
                _ => None,
            })
            .collect();
        let carrier = &sent[0];
        assert_eq!(carrier.uri, "sip:14155550142@192.0.2.50:5060", "numberFormat: no plus");
        assert_eq!(carrier.to().unwrap().uri, "sip:14155550142@192.0.2.50:5060");
        assert_eq!(carrier.from().unwrap().uri, "sip:14155550100@203.0.113.5");
        assert_eq!(carrier.from().unwrap().display, None, "the agent's display name stays");
        assert_eq!(carrier.headers.get(P_ASSERTED_IDENTITY), Some("<sip:14155550100@203.0.113.5>"));
        assert!(carrier.headers.get(name::VIA).unwrap().contains("203.0.113.5:5060"));
        assert!(carrier.headers.get(name::CONTACT).unwrap().contains("203.0.113.5:5060"));
        assert_ne!(carrier.call_id(), Some("agent-secret-call-id@10.0.0.9"));
        assert_eq!(carrier.headers.get("X-Campaign"), Some("spring"));
        for gone in ["X-Trunkline-Outbound-Trunk", "X-Trunkline-Agent-ID", "Subject"] {
            assert_eq!(carrier.headers.get(gone), None, "{gone}");
        }
        let text = String::from_utf8(carrier.to_bytes()).unwrap();
        assert!(!text.contains("10.0.0.9"), "nothing of the agent's dialog: {text}");
        assert!(!text.contains("pw-not-shown"));
    }

    /// The agent runtime's INVITE (from 127.0.0.1:7000) routed through `t` and the call started
    /// at our addresses (agent side 127.0.0.1:5080, carrier side 203.0.113.5:5060): the call, its
    /// first actions and when it started.
    fn agent_calls_through(
        t: crate::config::model::OutboundTrunkRoute,
        offer: Option<MediaOffer>,
    ) -> (Call, Vec<Action>, Instant) {
        let table = RoutingTable::new(vec![], vec![t], vec![]);
        let invite = agent_invite();
        let from = invite.from().unwrap().uri.clone();
        let headers: Vec<(String, String)> =
            invite.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let attempt = OutboundAttempt::from_invite(&invite.uri, &from, &headers, "X-Trunkline-");
        let route = decide(&table, &attempt).outcome.unwrap();
        let source = Source {
            protocol: Protocol::Udp,
            zone: Zone::Internal,
            remote: "127.0.0.1:7000".parse().unwrap(),
            local: "127.0.0.1:5080".parse().unwrap(),
            connection: None,
        };
        let locals = ("127.0.0.1:5080".parse().unwrap(), "203.0.113.5:5060".parse().unwrap());
        let setup =
            setup(&mut Ids::seeded(1), "X-Trunkline-", invite, source, locals, &route, offer);
        let now = Instant::now();
        let (call, actions) = Call::start(now, CallConfig::default(), Ids::seeded(2), setup);
        (call, actions, now)
    }

    /// The carrier-bound requests and agent-bound responses among `actions`.
    fn split(actions: &[Action]) -> (Vec<(SocketAddr, Request)>, Vec<msg::Response>) {
        let (mut carrier, mut agent) = (Vec::new(), Vec::new());
        for a in actions {
            if let Action::Send { bytes, target, .. } = a {
                match msg::parse(bytes).unwrap() {
                    Message::Request(r) if target.zone == Zone::Carrier => {
                        carrier.push((target.remote, r))
                    }
                    Message::Response(r) if target.zone == Zone::Internal => agent.push(r),
                    _ => {}
                }
            }
        }
        (carrier, agent)
    }

    fn answer(invite: &Request, status: u16) -> Message {
        let mut r = msg::Response::to_request(invite, status, msg::reason_phrase(status), None);
        if let Some(to) = r.headers.get(name::TO).map(str::to_string) {
            r.headers.set(name::TO, format!("{to};tag=carrier1"));
        }
        r.headers.push(name::CONTACT, "<sip:carrier@192.0.2.51:5060>");
        Message::Response(r)
    }

    /// An outbound call through a trunk with hosts `.50` then `.51` (UDP, no offer): the call
    /// and the INVITE sent to `.50`.
    fn two_host_call() -> (Call, Request, Instant) {
        let mut t = trunk();
        t.credentials = None;
        t.hosts.push(crate::config::model::CarrierHost::new("192.0.2.51", 5062, Protocol::Tcp));
        let (call, actions, now) = agent_calls_through(t, None);
        let (carrier, agent) = split(&actions);
        assert_eq!(agent.iter().map(|r| r.status).collect::<Vec<_>>(), [100]);
        assert_eq!(carrier[0].0, "192.0.2.50:5060".parse().unwrap());
        (call, carrier[0].1.clone(), now)
    }

    fn carrier_source() -> Source {
        Source {
            protocol: Protocol::Udp,
            zone: Zone::Carrier,
            remote: "192.0.2.50:5060".parse().unwrap(),
            local: "203.0.113.5:5060".parse().unwrap(),
            connection: None,
        }
    }

    #[test]
    fn a_503_from_the_first_host_sends_the_invite_to_the_next_and_the_agent_waits() {
        let (mut call, first, now) = two_host_call();
        let actions = call.on_message(now, answer(&first, 503), carrier_source());
        let (carrier, agent) = split(&actions);
        assert!(agent.is_empty(), "the agent hears nothing of it: {agent:?}");
        let next: Vec<_> =
            carrier.iter().filter(|(_, r)| r.method == msg::Method::Invite).collect();
        assert_eq!(next.len(), 1, "{carrier:?}");
        let (to, invite) = next[0];
        assert_eq!(*to, "192.0.2.51:5062".parse().unwrap());
        assert_eq!(invite.uri, "sip:14155550142@192.0.2.51:5062;transport=tcp");
        assert_eq!(invite.to().unwrap().uri, invite.uri);
        assert_eq!(invite.call_id(), first.call_id(), "the same request, RFC 3263 §4.3");
        assert_eq!(invite.from().unwrap().tag(), first.from().unwrap().tag());
        assert_eq!(invite.cseq().map(|(n, _)| n), Some(2));
        assert!(invite.headers.get(name::VIA).unwrap().starts_with("SIP/2.0/TCP"));
        assert_ne!(invite.top_via().unwrap().branch, first.top_via().unwrap().branch);
        // The second host answers: the agent gets its 200, and only one 100 in all.
        let actions = call.on_message(now, answer(invite, 200), carrier_source());
        let (_, agent) = split(&actions);
        assert_eq!(agent.iter().map(|r| r.status).collect::<Vec<_>>(), [200]);
    }

    #[test]
    fn no_answer_at_all_from_the_first_host_moves_on_after_the_first_response_time() {
        let (mut call, _first, now) = two_host_call();
        let later =
            now + crate::call::machine::FIRST_RESPONSE + std::time::Duration::from_millis(1);
        let (carrier, agent) = split(&call.on_timer(later));
        assert!(agent.is_empty(), "{agent:?}");
        // (The first host's INVITE may be retransmitted in the same step: its timer A was due.)
        let second: SocketAddr = "192.0.2.51:5062".parse().unwrap();
        let invites: Vec<_> = carrier
            .iter()
            .filter(|(to, r)| r.method == msg::Method::Invite && *to == second)
            .collect();
        assert_eq!(invites.len(), 1, "{carrier:?}");
        // The last host does not answer either: the agent hears 503, once.
        let end = later + crate::call::machine::FIRST_RESPONSE * 2;
        let (_, agent) = split(&call.on_timer(end));
        assert_eq!(agent.iter().map(|r| r.status).collect::<Vec<_>>(), [503]);
    }

    #[test]
    fn a_refusal_that_is_not_on_the_failover_list_ends_the_call_as_before() {
        for status in [404, 480, 486, 603] {
            let (mut call, first, now) = two_host_call();
            let (carrier, agent) =
                split(&call.on_message(now, answer(&first, status), carrier_source()));
            assert!(carrier.iter().all(|(_, r)| r.method != msg::Method::Invite), "{status}");
            assert_eq!(agent.len(), 1, "{status}: {agent:?}");
            assert!(agent[0].status >= 400, "{status}");
        }
        // After 180 Ringing the callee rang: a 503 then is the callee's, not the host's.
        let (mut call, first, now) = two_host_call();
        call.on_message(now, answer(&first, 180), carrier_source());
        let (carrier, agent) = split(&call.on_message(now, answer(&first, 503), carrier_source()));
        assert!(carrier.iter().all(|(_, r)| r.method != msg::Method::Invite));
        assert_eq!(agent.iter().map(|r| r.status).collect::<Vec<_>>(), [503]);
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port, target: target.to_string() }
    }

    fn units(units: Vec<f64>) -> impl FnMut() -> f64 {
        let mut units = units.into_iter();
        move || units.next().unwrap_or(0.0)
    }

    #[test]
    fn srv_targets_go_by_priority_then_by_weight_whatever_order_dns_gives() {
        let records = [
            srv(20, 1, 5060, "backup.carrier.example"),
            srv(10, 1, 5070, "a.carrier.example"),
            srv(10, 3, 5080, "b.carrier.example"),
        ];
        let targets = |draws| srv_targets(&records, ("carrier.example", 5060), units(draws));
        let a = ("a.carrier.example".to_string(), 5070);
        let b = ("b.carrier.example".to_string(), 5080);
        let backup = ("backup.carrier.example".to_string(), 5060);
        // Weights 1 and 3 within priority 10: the first quarter picks a, the rest b.
        assert_eq!(targets(vec![0.1]), [a.clone(), b.clone(), backup.clone()]);
        assert_eq!(targets(vec![0.5]), [b, a, backup]);
    }

    #[test]
    fn a_name_without_srv_records_is_tried_at_its_default_port() {
        let targets = srv_targets(&[], ("carrier.example", 5061), units(vec![]));
        assert_eq!(targets, [("carrier.example".to_string(), 5061)]);
    }

    #[tokio::test]
    async fn the_srv_records_of_an_injected_resolver_become_the_targets_without_any_network() {
        use crate::sip::resolve::{Resolver, SrvAnswer};
        let resolver =
            Resolver::with_lookup(|_| Box::pin(async { Ok(vec![]) })).with_srv_lookup(|name| {
                Box::pin(async move {
                    let records = match name.as_str() {
                        "_sips._tcp.carrier.example" => vec![srv(0, 0, 5071, "edge.example.")],
                        _ => vec![],
                    };
                    Ok(SrvAnswer { records, ttl: std::time::Duration::from_secs(60) })
                })
            });
        let mut tls = CarrierHost::new("carrier.example", 5061, Protocol::Tls);
        tls.srv = true;
        let service = tls.srv_name().unwrap();
        assert_eq!(service, "_sips._tcp.carrier.example");
        let records = resolver.srv(&service).await.unwrap();
        let targets = srv_targets(&records, (&tls.host, tls.port), units(vec![]));
        assert_eq!(targets, [("edge.example".to_string(), 5071)]);
        let udp = CarrierHost { transport: Protocol::Udp, port: 5060, ..tls };
        let records = resolver.srv(&udp.srv_name().unwrap()).await.unwrap();
        let targets = srv_targets(&records, (&udp.host, udp.port), units(vec![]));
        assert_eq!(targets, [("carrier.example".to_string(), 5060)], "A/AAAA fallback");
    }

    /// An outbound call through a trunk whose first host is `carrier.example` with no port
    /// (SRV) and whose second is `192.0.2.51:5062` over TCP; `offer`: an SDP offer (the relay
    /// starts). The call and what it did first.
    /// The carrier host the session record gets at the answer.
    fn answered_by(actions: &[Action]) -> crate::call::machine::AnsweredBy {
        let answered = actions.iter().find_map(|a| match a {
            Action::Record(crate::call::machine::Record::Answered { carrier, .. }) => {
                carrier.clone()
            }
            _ => None,
        });
        answered.expect("the host that answered")
    }

    fn srv_call(offer: bool) -> (Call, Vec<Action>, Instant) {
        let mut t = trunk();
        t.credentials = None;
        t.hosts[0] =
            CarrierHost { srv: true, ..CarrierHost::new("carrier.example", 5060, Protocol::Udp) };
        t.hosts.push(CarrierHost::new("192.0.2.51", 5062, Protocol::Tcp));
        t.codecs = vec![crate::config::model::Codec::Pcmu];
        let offer = offer.then(|| {
            let (sdp, negotiated) =
                crate::media::codec::gateway_offer(&[crate::config::model::Codec::Pcmu]).unwrap();
            MediaOffer { sdp, negotiated, delayed: false }
        });
        agent_calls_through(t, offer)
    }

    fn from(remote: &str) -> Source {
        Source { remote: remote.parse().unwrap(), ..carrier_source() }
    }

    fn invites(actions: &[Action]) -> Vec<(SocketAddr, Request)> {
        let (carrier, _) = split(actions);
        carrier.into_iter().filter(|(_, r)| r.method == msg::Method::Invite).collect()
    }

    #[test]
    fn a_host_with_no_port_is_dialed_at_its_srv_targets_in_order_then_the_next_host() {
        let (mut call, actions, now) = srv_call(false);
        let srv_asked = actions.iter().find_map(|a| match a {
            Action::ResolveSrv { leg, service, host, port } => {
                Some((*leg, service.clone(), host.clone(), *port))
            }
            _ => None,
        });
        let (leg, service, host, port) = srv_asked.expect("an SRV lookup");
        assert_eq!(
            (service.as_str(), host.as_str(), port),
            ("_sip._udp.carrier.example", "carrier.example", 5060)
        );
        let targets = vec![
            ("sip1.carrier.example".to_string(), 5070),
            ("sip2.carrier.example".to_string(), 5080),
        ];
        let actions =
            call.on_srv_resolved(now, leg, targets, Ok("192.0.2.60:5070".parse().unwrap()));
        let sent = invites(&actions);
        assert_eq!(sent[0].0, "192.0.2.60:5070".parse().unwrap());
        assert_eq!(sent[0].1.uri, "sip:14155550142@carrier.example", "the domain, no port");
        // 503: the next SRV target, looked up by name, with the same Request-URI.
        let actions = call.on_message(now, answer(&sent[0].1, 503), from("192.0.2.60:5070"));
        let next = actions.iter().find_map(|a| match a {
            Action::Resolve { host, port, .. } => Some(format!("{host}:{port}")),
            _ => None,
        });
        assert_eq!(next.as_deref(), Some("sip2.carrier.example:5080"));
        let actions = call.on_resolved(now, leg, Ok("192.0.2.61:5080".parse().unwrap()));
        let sent = invites(&actions);
        assert_eq!(sent[0].0, "192.0.2.61:5080".parse().unwrap());
        assert_eq!(sent[0].1.uri, "sip:14155550142@carrier.example");
        // 503 again: the trunk's second host.
        let actions = call.on_message(now, answer(&sent[0].1, 503), from("192.0.2.61:5080"));
        let sent = invites(&actions);
        assert_eq!(sent[0].0, "192.0.2.51:5062".parse().unwrap());
        assert_eq!(sent[0].1.uri, "sip:14155550142@192.0.2.51:5062;transport=tcp");
        let actions = call.on_message(now, answer(&sent[0].1, 200), from("192.0.2.51:5062"));
        let answered = answered_by(&actions);
        assert_eq!(answered.host, "192.0.2.51:5062");
        assert_eq!(answered.address, "192.0.2.51:5062".parse().unwrap());
    }

    #[test]
    fn the_srv_target_that_answered_is_the_host_on_the_record() {
        let (mut call, _, now) = srv_call(false);
        let targets = vec![("sip1.carrier.example".to_string(), 5070)];
        let actions = call.on_srv_resolved(
            now,
            LegId::SECOND,
            targets,
            Ok("192.0.2.60:5070".parse().unwrap()),
        );
        let sent = invites(&actions);
        let actions = call.on_message(now, answer(&sent[0].1, 200), from("192.0.2.60:5070"));
        let answered = answered_by(&actions);
        assert_eq!(answered.host, "sip1.carrier.example:5070");
        assert_eq!(answered.address, "192.0.2.60:5070".parse().unwrap());
    }

    #[test]
    fn srv_targets_count_against_the_attempts_of_a_call() {
        let (mut call, _, now) = srv_call(false);
        let targets: Vec<(String, u16)> =
            (0..8).map(|i| (format!("sip{i}.carrier.example"), 5060)).collect();
        let mut actions = call.on_srv_resolved(
            now,
            LegId::SECOND,
            targets,
            Ok("192.0.2.60:5060".parse().unwrap()),
        );
        let mut tried = 1;
        loop {
            let sent = invites(&actions);
            let Some((to, invite)) = sent.first() else { break };
            let source = Source { remote: *to, ..carrier_source() };
            actions = call.on_message(now, answer(invite, 503), source);
            if actions.iter().any(|a| matches!(a, Action::Resolve { .. })) {
                tried += 1;
                actions = call.on_resolved(
                    now,
                    LegId::SECOND,
                    Ok(format!("192.0.2.{}:5060", 60 + tried).parse().unwrap()),
                );
            }
        }
        assert_eq!(tried, crate::call::machine::MAX_ATTEMPTS);
        let (_, agent) = split(&actions);
        assert_eq!(agent.iter().map(|r| r.status).collect::<Vec<_>>(), [503]);
    }

    #[test]
    fn the_carriers_media_guard_follows_the_host_the_call_failed_over_to() {
        let (mut call, _, now) = srv_call(true);
        let targets = vec![("sip1.carrier.example".to_string(), 5070)];
        let actions = call.on_srv_resolved(
            now,
            LegId::SECOND,
            targets,
            Ok("192.0.2.60:5070".parse().unwrap()),
        );
        let peers = actions.iter().find_map(|a| match a {
            Action::StartRelay { peers, .. } => Some(*peers),
            _ => None,
        });
        let first_ip: IpAddr = "192.0.2.60".parse().unwrap();
        assert_eq!(peers.expect("the relay starts")[0].signalling, Some(first_ip));
        let started = crate::call::machine::MediaEvent::Started { a: 30000, b: 30002 };
        let actions = call.on_media_event(now, started);
        let sent = invites(&actions);
        let actions = call.on_message(now, answer(&sent[0].1, 503), from("192.0.2.60:5070"));
        let moved = actions.iter().find_map(|a| match a {
            Action::UpdateRelay(crate::call::machine::RelayUpdate::Signalling { side, ip }) => {
                Some((*side, *ip))
            }
            _ => None,
        });
        let second_ip: IpAddr = "192.0.2.51".parse().unwrap();
        assert_eq!(moved, Some((crate::media::relay::Leg::A, Some(second_ip))));
    }

    #[test]
    fn a_first_srv_target_without_an_address_passes_the_call_to_the_next_target() {
        let (mut call, _, now) = srv_call(false);
        let targets = vec![
            ("gone.carrier.example".to_string(), 5070),
            ("sip2.carrier.example".to_string(), 5080),
        ];
        let actions = call.on_srv_resolved(now, LegId::SECOND, targets, Err("no address".into()));
        let next = actions.iter().find_map(|a| match a {
            Action::Resolve { host, port, .. } => Some(format!("{host}:{port}")),
            _ => None,
        });
        assert_eq!(next.as_deref(), Some("sip2.carrier.example:5080"));
        let (_, agent) = split(&actions);
        assert!(agent.is_empty(), "the agent waits: {agent:?}");
    }
}
