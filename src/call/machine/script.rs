//! The harness of the transcript tests: a call between a carrier at 192.0.2.10 and an agent at
//! 127.0.0.1:7000, messages as the peers would write them, and readers of the actions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::model::Codec;
use crate::media::codec;
use crate::media::sdp::{Direction, Sdp};
use crate::sip::msg::{self, Message, Method, NameAddr, Request, Response, name};
use crate::sip::transport::{Protocol, Source, Target, Zone};

use super::*;

pub(super) const CARRIER: &str = "192.0.2.10:5060";
pub(super) const GATEWAY_A: &str = "198.51.100.1:5060";
pub(super) const AGENT: &str = "127.0.0.1:7000";
pub(super) const GATEWAY_B: &str = "127.0.0.1:5070";
pub(super) const RELAY_A: u16 = 30000;
pub(super) const RELAY_B: u16 = 30002;
pub(super) const CARRIER_LEG: LegId = LegId(0);
pub(super) const AGENT_LEG: LegId = LegId(1);

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn offer_sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
}

pub(super) fn answer_sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    )
}

pub(super) fn request(text: &str) -> Request {
    match msg::parse(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

pub(super) fn with_body(mut r: Request, sdp: Option<&str>) -> Request {
    if let Some(sdp) = sdp {
        r.headers.set(name::CONTENT_TYPE, "application/sdp");
        r.body = sdp.as_bytes().to_vec().into();
    }
    r
}

pub(super) fn carrier_invite(sdp: Option<&str>) -> Request {
    let r = request(&format!(
        "INVITE sip:+14155550100@{GATEWAY_A} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CARRIER};branch=z9hG4bKcarrier1\r\nMax-Forwards: 70\r\n\
         From: \"Ada\" <sip:+12025550123@192.0.2.10>;tag=c1\r\n\
         To: <sip:+14155550100@{GATEWAY_A}>\r\nCall-ID: carrier-call@192.0.2.10\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:carrier@{CARRIER}>\r\nContent-Length: 0\r\n\r\n"
    ));
    with_body(r, sdp)
}

pub(super) fn source(remote: &str, local: &str, zone: Zone) -> Source {
    Source {
        protocol: Protocol::Udp,
        zone,
        remote: addr(remote),
        local: addr(local),
        connection: None,
    }
}

/// A call with the actions it has produced so far, at a time the script moves.
pub(super) struct Script {
    pub(super) call: Call,
    pub(super) t0: Instant,
    pub(super) now: Instant,
}

/// Which peer a message goes to or comes from.
pub(super) fn leg_source(leg: LegId) -> Source {
    if leg == CARRIER_LEG {
        source(CARRIER, GATEWAY_A, Zone::Carrier)
    } else {
        source(AGENT, GATEWAY_B, Zone::Internal)
    }
}

pub(super) fn start_with(sdp: Option<&str>, destination: Destination) -> (Script, Vec<Action>) {
    start_with_credentials(sdp, destination, None)
}

/// A call whose dialed leg answers challenges with `credentials`.
pub(super) fn start_with_credentials(
    sdp: Option<&str>,
    destination: Destination,
    credentials: Option<crate::config::secret::BasicAuth>,
) -> (Script, Vec<Action>) {
    start_adjusted(sdp, destination, credentials, |_, _| {})
}

/// A call as [`start_with_credentials`] makes it, with `adjust` changing its set-up and
/// configuration before it starts.
pub(super) fn start_adjusted(
    sdp: Option<&str>,
    destination: Destination,
    credentials: Option<crate::config::secret::BasicAuth>,
    adjust: impl FnOnce(&mut Setup, &mut CallConfig),
) -> (Script, Vec<Action>) {
    let invite = carrier_invite(sdp);
    let codecs = vec![Codec::Pcmu];
    let offer = match sdp {
        Some(text) => {
            let mut sdp = Sdp::parse(text.as_bytes()).unwrap();
            let negotiated = codec::filter_offer(&mut sdp, &codecs).unwrap();
            Some(MediaOffer { sdp, negotiated, delayed: false })
        }
        None => codec::gateway_offer(&codecs).map(|(sdp, negotiated)| MediaOffer {
            sdp,
            negotiated,
            delayed: true,
        }),
    };
    let dialog = Dialog {
        call_id: "agent-call@trunkline".into(),
        local_tag: "gwb".into(),
        remote_tag: None,
        local_uri: NameAddr {
            display: None,
            uri: format!("sip:+12025550123@{GATEWAY_B}"),
            params: vec![],
        },
        remote_uri: NameAddr { display: None, uri: format!("sip:support@{AGENT}"), params: vec![] },
        remote_target: format!("sip:support@{AGENT}"),
        route_set: vec![],
        local_cseq: 0,
        target: Target {
            protocol: Protocol::Udp,
            zone: Zone::Internal,
            remote: addr(GATEWAY_B),
            connection: None,
        },
        local: addr(GATEWAY_B),
    };
    let setup = Setup {
        session_id: "session-1".into(),
        origin: Origin {
            role: Role::Carrier,
            invite,
            source: leg_source(CARRIER_LEG),
            local: addr(GATEWAY_A),
            trusted: vec![],
            srtp: LegSrtp::default(),
        },
        dial: Dial {
            role: Role::Agent,
            dialog,
            destination,
            headers: vec![("X-Trunkline-Agent-ID".into(), "support".into())],
            credentials,
            alternates: Vec::new(),
            encryption: Encryption::Disabled,
        },
        offer,
        codecs,
        transfer: Some(transfer_context()),
        max_duration: None,
    };
    let t0 = Instant::now();
    let mut config = CallConfig { ring_timeout: Duration::from_secs(20), ..CallConfig::default() };
    let mut setup = setup;
    adjust(&mut setup, &mut config);
    let (call, actions) = Call::start(t0, config, Ids::seeded(7), setup);
    (Script { call, t0, now: t0 }, actions)
}

/// A call whose INVITE has reached the agent (relay started when there is an offer).
pub(super) fn inviting(sdp: Option<&str>) -> (Script, Request, Vec<Action>) {
    inviting_adjusted(sdp, |_, _| {})
}

/// [`inviting`], with the set-up and configuration changed by `adjust`.
pub(super) fn inviting_adjusted(
    sdp: Option<&str>,
    adjust: impl FnOnce(&mut Setup, &mut CallConfig),
) -> (Script, Request, Vec<Action>) {
    let (mut s, mut actions) = start_adjusted(sdp, Destination::Address(addr(AGENT)), None, adjust);
    if actions.iter().any(|a| matches!(a, Action::StartRelay { .. })) {
        actions
            .extend(s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B }));
    }
    let invite = requests_to(&actions, AGENT_LEG).into_iter().find(|r| r.method == Method::Invite);
    (s, invite.expect("an INVITE to the agent"), actions)
}

/// A call the agent answered and the carrier acknowledged.
pub(super) fn answered() -> (Script, Request, Response) {
    answered_adjusted(|_, _| {})
}

/// [`answered`], with the set-up and configuration changed by `adjust`.
pub(super) fn answered_adjusted(
    adjust: impl FnOnce(&mut Setup, &mut CallConfig),
) -> (Script, Request, Response) {
    let (mut s, invite, _) = inviting_adjusted(Some(&offer_sdp(4000, "sendrecv")), adjust);
    s.agent_responds(&invite, 180, None);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200).unwrap();
    s.carrier_sends(ack_for(&ok, 1));
    (s, invite, ok)
}

impl Script {
    pub(super) fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    pub(super) fn deliver(&mut self, leg: LegId, message: Message) -> Vec<Action> {
        self.call.on_message(self.now, message, leg_source(leg))
    }

    pub(super) fn carrier_sends(&mut self, r: Request) -> Vec<Action> {
        self.deliver(CARRIER_LEG, Message::Request(r))
    }

    pub(super) fn agent_sends(&mut self, r: Request) -> Vec<Action> {
        self.deliver(AGENT_LEG, Message::Request(r))
    }

    /// The agent answers our INVITE (or any request we sent it) with `status`.
    pub(super) fn agent_responds(
        &mut self,
        to: &Request,
        status: u16,
        sdp: Option<&str>,
    ) -> Vec<Action> {
        let mut r = Response::to_request(to, status, msg::reason_phrase(status), Some("agenttag"));
        r.headers.push(name::CONTACT, format!("<sip:support@{AGENT}>"));
        if let Some(sdp) = sdp {
            r.headers.push(name::CONTENT_TYPE, "application/sdp");
            r.body = sdp.as_bytes().to_vec().into();
        }
        self.deliver(AGENT_LEG, Message::Response(r))
    }

    /// The dialed peer challenges our INVITE: 401 with `WWW-Authenticate`, 407 with
    /// `Proxy-Authenticate`.
    pub(super) fn agent_challenges(
        &mut self,
        to: &Request,
        status: u16,
        challenge: &str,
    ) -> Vec<Action> {
        let mut r =
            Response::to_request(to, status, msg::reason_phrase(status), Some("challenger"));
        let header = if status == 401 { name::WWW_AUTHENTICATE } else { name::PROXY_AUTHENTICATE };
        r.headers.push(header, challenge);
        self.deliver(AGENT_LEG, Message::Response(r))
    }

    /// The carrier answers a request we sent it.
    pub(super) fn carrier_responds(
        &mut self,
        to: &Request,
        status: u16,
        sdp: Option<&str>,
    ) -> Vec<Action> {
        let mut r = Response::to_request(to, status, msg::reason_phrase(status), None);
        if let Some(sdp) = sdp {
            r.headers.push(name::CONTENT_TYPE, "application/sdp");
            r.body = sdp.as_bytes().to_vec().into();
        }
        self.deliver(CARRIER_LEG, Message::Response(r))
    }

    pub(super) fn timer(&mut self, ms: u64) -> Vec<Action> {
        self.at(ms);
        self.call.on_timer(self.now)
    }
}

/// What the call sent to `leg`, parsed back from the bytes it would put on the wire.
pub(super) fn sent(actions: &[Action], leg: LegId) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { leg: l, bytes, .. } if *l == leg => {
                Some(msg::parse(bytes).expect("the call sends what it can parse"))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn requests_to(actions: &[Action], leg: LegId) -> Vec<Request> {
    sent(actions, leg)
        .into_iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        })
        .collect()
}

pub(super) fn responses_to(actions: &[Action], leg: LegId) -> Vec<Response> {
    sent(actions, leg)
        .into_iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        })
        .collect()
}

pub(super) fn statuses(actions: &[Action], leg: LegId) -> Vec<u16> {
    responses_to(actions, leg).iter().map(|r| r.status).collect()
}

pub(super) fn methods(actions: &[Action], leg: LegId) -> Vec<Method> {
    requests_to(actions, leg).into_iter().map(|r| r.method).collect()
}

pub(super) fn ended(actions: &[Action]) -> Option<Ended> {
    actions.iter().find_map(|a| match a {
        Action::End(e) => Some(e.clone()),
        _ => None,
    })
}

pub(super) fn relay_updates(actions: &[Action]) -> Vec<RelayUpdate> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateRelay(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// The audio port and direction of a message's SDP.
pub(super) fn media_of(body: &[u8]) -> (SocketAddr, Direction) {
    let sdp = Sdp::parse(body).unwrap();
    (sdp.audio_endpoint().unwrap(), sdp.direction())
}

/// The carrier's ACK for our 2xx `ok` (a new branch, RFC 3261 §17.1.1.3).
pub(super) fn ack_for(ok: &Response, cseq: u32) -> Request {
    in_dialog_from_carrier(ok, "ACK", cseq, "z9hG4bKcarrierack")
}

/// A request the carrier sends in the dialog our 2xx `ok` made.
pub(super) fn in_dialog_from_carrier(
    ok: &Response,
    method: &str,
    cseq: u32,
    branch: &str,
) -> Request {
    let to = ok.headers.get(name::TO).unwrap();
    request(&format!(
        "{method} sip:trunkline@{GATEWAY_A} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: \"Ada\" <sip:+12025550123@192.0.2.10>;tag=c1\r\nTo: {to}\r\n\
         Call-ID: carrier-call@192.0.2.10\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:carrier@{CARRIER}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// A request the agent sends in the dialog of our INVITE `invite`.
pub(super) fn in_dialog_from_agent(
    invite: &Request,
    method: &str,
    cseq: u32,
    branch: &str,
) -> Request {
    let from = invite.headers.get(name::FROM).unwrap();
    let to = invite.headers.get(name::TO).unwrap();
    request(&format!(
        "{method} sip:trunkline@{GATEWAY_B} SIP/2.0\r\nVia: SIP/2.0/UDP {AGENT};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: {to};tag=agenttag\r\nTo: {from}\r\n\
         Call-ID: agent-call@trunkline\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:support@{AGENT}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// The destinations the agent `support` of namespace `voice` may transfer to: `end-call`
/// (Hangup), `sales-desk` (Phone, only for `billing`), `pbx` (Sip), `front-desk` (Phone, mode
/// Refer).
pub(super) fn transfer_context() -> TransferContext {
    use crate::config::model::{ObjectName, TransferMode, TransferRoute, TransferTarget};
    let route = |name: &str, target, agents: &[&str]| TransferRoute {
        name: ObjectName::new("voice", name),
        generation: None,
        target,
        mode: TransferMode::Bridge,
        agents: agents.iter().map(|a| a.to_string()).collect(),
    };
    let number = crate::config::number::E164::parse_canonical("+14155550199").unwrap();
    let table = crate::config::RoutingTable::new(
        vec![],
        vec![],
        vec![
            route("end-call", TransferTarget::Hangup, &[]),
            route(
                "sales-desk",
                TransferTarget::Phone { number, outbound_trunk: ObjectName::new("voice", "out") },
                &["billing"],
            ),
            route(
                "pbx",
                TransferTarget::Sip {
                    uri: "sip:op@pbx.example".into(),
                    credentials: None,
                    encryption: Default::default(),
                },
                &[],
            ),
            TransferRoute {
                mode: TransferMode::Refer,
                ..route(
                    "front-desk",
                    TransferTarget::Phone {
                        number: crate::config::number::E164::parse_canonical("+14155550188")
                            .unwrap(),
                        outbound_trunk: ObjectName::new("voice", "out"),
                    },
                    &[],
                )
            },
        ],
    );
    TransferContext {
        table: std::sync::Arc::new(table),
        namespace: "voice".into(),
        agent: "support".into(),
        bye_header: "X-Trunkline-Transfer-To".into(),
    }
}
