//! One inbound call: a B2BUA task that owns both legs (DESIGN §4). Leg A is the carrier's INVITE
//! (we are its UAS), leg B a new INVITE to the agent runtime (we are its UAC) with a fresh
//! Call-ID, our own Via, Contact and From tag (topology hiding), the agent in the Request-URI,
//! trunkline's session headers and the caller's `X-*` headers.
//!
//! What the task relays:
//! - provisional responses (180, 183 with SDP) and the final response of leg B to leg A, with
//!   agent failures mapped: 486/600 relayed, 5xx and auth challenges become 503, no response at
//!   all is an unreachable agent (503), ringing past `agent_timeout` is 480 (leg B cancelled);
//! - ACK for 2xx on each leg (2xx to the carrier retransmitted until its ACK, RFC 3261
//!   §13.3.1.4); CANCEL from the carrier before the answer (200 to the CANCEL, 487 to the
//!   INVITE, CANCEL to the agent once it has sent a provisional, RFC 3261 §9.1);
//! - BYE from either side (200 to it, BYE to the other); re-INVITE, UPDATE and INFO passed to the
//!   other leg and their responses passed back; OPTIONS in the dialog answered here.
//!
//! Transactions are the sans-IO machines of `sip::transaction`; this task feeds them messages and
//! time and carries out their actions. In-dialog requests go to where the peer's INVITE came from
//! (carrier) or to the agent's resolved address (symmetric signalling: NATed carriers' Contacts
//! are often unreachable).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::RoutingTable;
use crate::config::lookup::Route;
use crate::observe::metrics::{ActiveCallGuard, Direction, Outcome as CallOutcome};
use crate::sip::msg::{self, DialogHeaders, Method, NameAddr, Request, Response, SipUri, name};
use crate::sip::transaction::{
    ClientAction, ClientInvite, ClientNonInvite, Reliability, ServerAction, ServerInvite,
    ServerNonInvite, Timers, new_branch,
};
use crate::sip::transport::{Protocol, Source, Target, Zone};

use crate::media::codec::{self, Chosen};
use crate::media::relay::{self as rtp, MediaTimeout, Relay, RelayConfig};
use crate::media::sdp::{Direction as SdpDirection, LegOrigin, Sdp};

use super::limits::CallPermit;
use super::services::{ALLOW, CallInput, CallServices, MediaOffer};

/// No answer of any kind from the agent runtime within this time: it is unreachable.
const AGENT_FIRST_RESPONSE: Duration = Duration::from_secs(8);
/// After the call ends, how long the task stays to absorb retransmissions (64*T1).
const LINGER: Duration = Duration::from_secs(32);

/// Which side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Leg {
    /// The carrier.
    A,
    /// The agent runtime.
    B,
}

impl Leg {
    fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// The dialog state of one leg, as needed to send requests in it.
struct Dialog {
    call_id: String,
    /// Our tag (To tag on leg A, From tag on leg B).
    local_tag: String,
    /// The peer's tag, once known.
    remote_tag: Option<String>,
    /// Our URI in the dialog and the peer's (From/To of our requests).
    local_uri: NameAddr,
    remote_uri: NameAddr,
    /// Request-URI of our in-dialog requests (the peer's Contact).
    remote_target: String,
    /// Route set (RFC 3261 §12.1), in the order of our requests' Route headers.
    route_set: Vec<String>,
    local_cseq: u32,
    /// Where in-dialog requests go.
    target: Target,
    /// Our address on this leg (Via, Contact).
    local: SocketAddr,
}

impl Dialog {
    fn contact(&self) -> String {
        format!("<sip:trunkline@{}{}>", self.local, transport_param(self.target.protocol))
    }

    /// A new request in this dialog (RFC 3261 §12.2.1.1).
    fn request(&mut self, method: Method, user_agent: &str) -> (Request, String) {
        if method != Method::Ack && method != Method::Cancel {
            self.local_cseq += 1;
        }
        let branch = new_branch();
        let mut r = Request::new(method.clone(), self.remote_target.clone());
        r.headers.push(name::VIA, via(self.target.protocol, self.local, &branch));
        r.headers.push(name::MAX_FORWARDS, "70");
        for route in &self.route_set {
            r.headers.push(name::ROUTE, route.as_str());
        }
        let mut from = self.local_uri.clone();
        from.params.retain(|(k, _)| k != "tag");
        from.params.push(("tag".into(), Some(self.local_tag.clone())));
        let mut to = self.remote_uri.clone();
        to.params.retain(|(k, _)| k != "tag");
        if let Some(tag) = &self.remote_tag {
            to.params.push(("tag".into(), Some(tag.clone())));
        }
        r.headers.push(name::FROM, from.to_header());
        r.headers.push(name::TO, to.to_header());
        r.headers.push(name::CALL_ID, self.call_id.as_str());
        r.headers.push(name::CSEQ, format!("{} {}", self.local_cseq, method));
        if matches!(method, Method::Invite | Method::Update) {
            r.headers.push(name::CONTACT, self.contact());
        }
        r.headers.push(name::USER_AGENT, user_agent);
        (r, branch)
    }
}

fn via(protocol: Protocol, local: SocketAddr, branch: &str) -> String {
    format!("SIP/2.0/{} {};branch={branch};rport", protocol.as_str(), local)
}

fn transport_param(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "",
        Protocol::Tcp => ";transport=tcp",
        Protocol::Tls => ";transport=tls",
    }
}

fn reliability(protocol: Protocol) -> Reliability {
    if protocol.is_reliable() { Reliability::Reliable } else { Reliability::Unreliable }
}

/// A server transaction of this call: a request we answer.
struct ServerTx {
    leg: Leg,
    request: Request,
    target: Target,
    machine: ServerMachine,
    last_response: Option<Vec<u8>>,
}

enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

/// Why we sent a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Purpose {
    /// The INVITE to the agent.
    Invite,
    /// A request relayed from the other leg's server transaction (its branch).
    Relay(String),
    /// Our own BYE or CANCEL.
    Own,
}

/// A client transaction of this call: a request we sent.
struct ClientTx {
    leg: Leg,
    request: Request,
    bytes: Vec<u8>,
    target: Target,
    machine: ClientMachine,
    purpose: Purpose,
}

enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// Where the call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// INVITE sent to the agent, no final answer yet.
    Calling,
    /// Both legs answered.
    Answered,
    /// Over on both legs; lingering for retransmissions.
    Ended,
}

/// A call in progress.
pub struct InboundCall {
    gw: Arc<CallServices>,
    /// The table this call started with (later reloads do not change a call in progress).
    _table: Arc<RoutingTable>,
    route: Route,
    permit: Option<CallPermit>,
    active: Option<ActiveCallGuard>,
    rx: mpsc::Receiver<CallInput>,
    self_tx: mpsc::Sender<CallInput>,
    /// The carrier's offer after the codec policy, or the gateway's own for a delayed offer.
    offer: Option<MediaOffer>,
    /// Delayed offer: what the 2xx offered the carrier, until its ACK brings the answer.
    carrier_offer: Option<codec::Negotiated>,
    /// What the agent's answer settled on.
    chosen: Option<Chosen>,
    /// The RTP relay between the legs (calls with an SDP offer).
    relay: Option<Relay>,
    /// The o= line we keep toward each leg (RFC 3264 §8: versions increase per change).
    origins: [LegOrigin; 2],
    /// Offers relayed in re-INVITE/UPDATE, by the server transaction they came in.
    reoffers: HashMap<String, codec::Negotiated>,
    /// Why the call ended, when the gateway ended it (media timeout...).
    hangup_reason: Option<String>,
    timers: Timers,
    session_id: String,
    a_invite: Request,
    a_branch: String,
    a: Dialog,
    b: Dialog,
    b_invite_branch: String,
    servers: HashMap<String, ServerTx>,
    clients: HashMap<String, ClientTx>,
    phase: Phase,
    started: Instant,
    /// Leg B has sent a provisional response (CANCEL may be sent).
    b_provisional: bool,
    /// The carrier cancelled before the agent answered.
    cancelled: bool,
    /// 2xx responses awaiting their ACK.
    pending_2xx: Vec<Pending2xx>,
    /// A final response went to the carrier's INVITE.
    a_final_sent: bool,
    /// CANCEL went to the agent.
    b_cancel_sent: bool,
    /// Ringing or no-answer deadline of leg B.
    b_deadline: Option<Instant>,
    linger_until: Option<Instant>,
    outcome: Option<CallOutcome>,
}

/// An INVITE the front door admitted, with everything decided about it.
pub struct Admitted {
    pub invite: Request,
    pub source: Source,
    pub route: Route,
    pub permit: CallPermit,
    /// The routing table the call started with.
    pub table: Arc<RoutingTable>,
    pub offer: Option<MediaOffer>,
}

impl InboundCall {
    pub fn new(
        gw: Arc<CallServices>,
        admitted: Admitted,
        (self_tx, rx): (mpsc::Sender<CallInput>, mpsc::Receiver<CallInput>),
    ) -> InboundCall {
        let Admitted { invite, source, route, permit, table, offer } = admitted;
        let now = Instant::now();
        let a_local = gw.local_address(Zone::Carrier, source.protocol).unwrap_or(source.local);
        let from = invite.from().unwrap_or_else(|| NameAddr {
            display: None,
            uri: "sip:anonymous@anonymous.invalid".into(),
            params: vec![],
        });
        let to = invite.to().unwrap_or_else(|| NameAddr {
            display: None,
            uri: invite.uri.clone(),
            params: vec![],
        });
        let a = Dialog {
            call_id: invite.call_id().unwrap_or_default().to_string(),
            local_tag: random_token(10),
            remote_tag: from.tag().map(str::to_string),
            local_uri: to,
            remote_uri: from.clone(),
            remote_target: invite.contact_uri().unwrap_or_else(|| from.uri.clone()),
            route_set: invite
                .headers
                .get_all(name::RECORD_ROUTE)
                .flat_map(msg::split_list)
                .map(str::to_string)
                .collect(),
            local_cseq: 0,
            target: source.reply_target(),
            local: a_local,
        };
        let a_branch = invite.top_via().and_then(|v| v.branch).unwrap_or_default();

        // Leg B: its target is resolved when the task starts; until then a placeholder.
        let agent_uri = route.destination.clone();
        let dest = SipUri::parse(&agent_uri);
        let protocol = match dest.as_ref().and_then(|d| d.transport.as_deref()) {
            Some("tcp") => Protocol::Tcp,
            Some("tls") => Protocol::Tls,
            _ if dest.as_ref().is_some_and(|d| d.sips) => Protocol::Tls,
            _ => Protocol::Udp,
        };
        let b_local = gw
            .local_address(Zone::Internal, protocol)
            .or_else(|| gw.local_address(Zone::Internal, Protocol::Udp))
            .unwrap_or(a_local);
        let caller_user = caller_user(&from);
        let b = Dialog {
            call_id: format!("{}@trunkline", random_token(20)),
            local_tag: random_token(10),
            remote_tag: None,
            local_uri: NameAddr {
                display: from.display.clone(),
                uri: format!("sip:{caller_user}@{}", b_local),
                params: vec![],
            },
            remote_uri: NameAddr { display: None, uri: agent_uri.clone(), params: vec![] },
            remote_target: agent_uri,
            route_set: Vec::new(),
            local_cseq: 0,
            target: Target { protocol, zone: Zone::Internal, remote: b_local, connection: None },
            local: b_local,
        };
        let trunk_name = route.trunk.name.to_string();
        let active = gw.metrics.call_started(&trunk_name, Direction::Inbound);
        InboundCall {
            timers: Timers::default(),
            session_id: random_token(16),
            a_invite: invite,
            a_branch,
            a,
            b,
            b_invite_branch: String::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            phase: Phase::Calling,
            started: now,
            b_provisional: false,
            cancelled: false,
            pending_2xx: Vec::new(),
            a_final_sent: false,
            b_cancel_sent: false,
            b_deadline: None,
            linger_until: None,
            outcome: None,
            gw,
            _table: table,
            route,
            permit: Some(permit),
            active: Some(active),
            rx,
            self_tx,
            offer,
            carrier_offer: None,
            chosen: None,
            relay: None,
            origins: [
                LegOrigin::new(rand::random::<u32>().into()),
                LegOrigin::new(rand::random::<u32>().into()),
            ],
            reoffers: HashMap::new(),
            hangup_reason: None,
        }
    }
}

/// The user part for the From of leg B: the caller's number or name, URI-safe.
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

fn random_token(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Runs the call to its end.
pub async fn run(mut call: InboundCall) {
    let b_call_id = call.b.call_id.clone();
    let a_call_id = call.a.call_id.clone();
    call.start().await;
    // The relay's media timeout resolves at most once; a call without a relay never times out.
    let media_timeout = call.relay.as_ref().map(|r| r.timeout());
    let mut media_timeout = std::pin::pin!(async move {
        match media_timeout {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    });
    let mut media_timed_out = false;
    loop {
        if call.is_finished() {
            break;
        }
        let deadline = call.next_deadline();
        tokio::select! {
            timeout = &mut media_timeout, if !media_timed_out => {
                media_timed_out = true;
                call.on_media_timeout(timeout).await;
            }
            input = call.rx.recv() => match input {
                Some(CallInput::Request(r, source)) => call.on_request(r, source).await,
                Some(CallInput::Response(r, source)) => call.on_response(r, source).await,
                None => break,
            },
            _ = sleep_until(deadline) => call.on_timeout().await,
        }
    }
    call.end();
    call.gw.unregister_call(&a_call_id);
    call.gw.unregister_call(&b_call_id);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl InboundCall {
    fn user_agent(&self) -> String {
        self.gw.config.user_agent.clone()
    }

    fn prefix(&self) -> &str {
        &self.gw.config.header_prefix
    }

    async fn start(&mut self) {
        let now = Instant::now();
        // The INVITE server transaction of leg A, and 100 Trying at once.
        let (machine, _) = ServerInvite::new(now, reliability(self.a.target.protocol), self.timers);
        let invite = self.a_invite.clone();
        let key = tx_key(&Method::Invite, &self.a_branch);
        self.servers.insert(
            key.clone(),
            ServerTx {
                leg: Leg::A,
                request: invite,
                target: self.a.target,
                machine: ServerMachine::Invite(machine),
                last_response: None,
            },
        );
        let trying = Response::to_request(&self.a_invite, 100, "Trying", None);
        self.respond(&key, trying).await;

        match self.resolve_agent().await {
            Ok(remote) => self.b.target.remote = remote,
            Err(why) => {
                tracing::warn!(agent = %self.route.destination, error = %why, "agent runtime unreachable");
                self.fail_a(503, CallOutcome::Failed).await;
                return;
            }
        }
        self.gw.register_call(&self.b.call_id, self.gw_sender());
        if let Err(e) = self.start_relay() {
            tracing::warn!(session = %self.session_id, error = %e, "no RTP relay for the call");
            self.fail_a(e.status_code(), CallOutcome::Failed).await;
            return;
        }
        let invite = self.build_agent_invite();
        let branch = self.b_invite_branch.clone();
        self.b_deadline = Some(now + AGENT_FIRST_RESPONSE);
        self.send_client(Leg::B, branch, invite, Purpose::Invite).await;
    }

    /// The sender half registered for leg B's Call-ID: the same channel as leg A's.
    fn gw_sender(&self) -> mpsc::Sender<CallInput> {
        self.self_tx.clone()
    }

    /// Our media address on a leg: the bind address and the one advertised in its SDP.
    fn media_ip(&self, leg: Leg) -> (std::net::IpAddr, std::net::IpAddr) {
        let advertised = self.dialog_ref(leg).local.ip();
        let bind = match (leg, self.gw.config.public_address) {
            // A public address belongs to a NAT or load balancer in front: bind everywhere.
            (Leg::A, Some(_)) => std::net::IpAddr::from([0, 0, 0, 0]),
            _ => advertised,
        };
        (bind, advertised)
    }

    fn dialog_ref(&self, leg: Leg) -> &Dialog {
        match leg {
            Leg::A => &self.a,
            Leg::B => &self.b,
        }
    }

    /// Puts the relay in the media path of a call with an SDP offer: ports on both legs, the
    /// carrier's address from its offer, the offer to the agent rewritten to our B side.
    fn start_relay(&mut self) -> Result<(), rtp::StartError> {
        if self.offer.is_none() {
            return Ok(());
        }
        let (bind_a, _) = self.media_ip(Leg::A);
        let (bind_b, adv_b) = self.media_ip(Leg::B);
        let Some(offer) = &mut self.offer else { return Ok(()) };
        let config =
            RelayConfig { media_timeout: self.gw.config.media_timeout, ..RelayConfig::default() };
        let relay = self.gw.start_relay(bind_a, bind_b, config)?;
        // No media is owed before the answer: the timeout starts with it.
        relay.set_hold(true);
        if !offer.delayed {
            // (A delayed offer's address is a placeholder: the carrier's comes with its ACK.)
            relay.update_remote(rtp::Leg::A, offer.sdp.audio_endpoint());
        }
        offer.sdp.rewrite_for_relay(&mut self.origins[1], adv_b, relay.local(rtp::Leg::B).port());
        self.relay = Some(relay);
        Ok(())
    }

    /// An SDP that came from `from` and goes to the other leg: the relay learns `from`'s
    /// address and the SDP gets ours on the other side. Without a relay it is left as it is.
    fn rewrite_toward(&mut self, from: Leg, sdp: &mut Sdp) {
        let to = from.other();
        let (_, advertised) = self.media_ip(to);
        let Some(relay) = &self.relay else { return };
        relay.update_remote(relay_leg(from), sdp.audio_endpoint());
        let port = relay.local(relay_leg(to)).port();
        sdp.rewrite_for_relay(&mut self.origins[index(to)], advertised, port);
    }

    /// A delayed offer's answer, in the carrier's ACK of our 2xx: checked against what we offered
    /// and given to the relay. No SDP or an unusable one ends the call on both legs (RFC 3264
    /// §5: an answer is owed; RFC 3261 §13.2.1: the ACK is the last chance to give it).
    async fn on_carrier_answer(&mut self, ack: &Request) {
        let Some(offered) = self.carrier_offer.take() else { return };
        let checked = if ack.body.is_empty() {
            Err("no SDP".to_string())
        } else {
            Sdp::parse(&ack.body).map_err(|e| e.to_string()).and_then(|sdp| {
                codec::check_answer(&offered, &sdp).map(|_| sdp).map_err(|e| e.to_string())
            })
        };
        match checked {
            Ok(answer) => {
                if let Some(relay) = &self.relay {
                    relay.update_remote(rtp::Leg::A, answer.audio_endpoint());
                }
                self.media_direction(answer.direction());
            }
            Err(problem) => {
                let reason =
                    format!("the carrier's ACK did not answer the gateway's offer: {problem}");
                tracing::warn!(session = %self.session_id, "{reason}; ending the call");
                self.hangup_reason = Some(reason);
                self.hang_up_both().await;
            }
        }
    }

    /// Hold (sendonly, recvonly, inactive) suspends the media timeout; sendrecv resumes it.
    fn media_direction(&self, direction: SdpDirection) {
        if let Some(relay) = &self.relay {
            relay.set_hold(direction != SdpDirection::SendRecv);
        }
    }

    /// No RTP for the media timeout: both legs are hung up and the reason recorded.
    async fn on_media_timeout(&mut self, timeout: MediaTimeout) {
        if self.phase != Phase::Answered {
            return;
        }
        let silent = match timeout.silent {
            rtp::Silent::One(rtp::Leg::A) => "carrier",
            rtp::Silent::One(rtp::Leg::B) => "agent",
            rtp::Silent::Both => "both sides",
        };
        let reason =
            format!("media timeout: no RTP from {silent} for {}s", timeout.after.as_secs());
        tracing::warn!(session = %self.session_id, "{reason}; ending the call");
        self.hangup_reason = Some(reason);
        self.hang_up_both().await;
    }
}

fn relay_leg(leg: Leg) -> rtp::Leg {
    match leg {
        Leg::A => rtp::Leg::A,
        Leg::B => rtp::Leg::B,
    }
}

fn index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// Key of a transaction in this call: method (ACK folded into INVITE) and Via branch.
fn tx_key(method: &Method, branch: &str) -> String {
    let m = if *method == Method::Ack { "INVITE" } else { method.as_str() };
    format!("{m}:{branch}")
}

/// What an agent's final failure becomes toward the carrier.
fn map_agent_failure(status: u16) -> (u16, CallOutcome) {
    match status {
        486 | 600 => (486, CallOutcome::Busy),
        603 => (603, CallOutcome::Busy),
        480 | 408 => (480, CallOutcome::NoAnswer),
        487 => (487, CallOutcome::Cancelled),
        401 | 407 | 500..=599 => (503, CallOutcome::Failed),
        s @ 300..=499 => (s, CallOutcome::Failed),
        _ => (503, CallOutcome::Failed),
    }
}

/// Headers that travel with a relayed in-dialog request or response body.
const BODY_HEADERS: &[&str] =
    &[name::CONTENT_TYPE, "Content-Disposition", "Info-Package", name::REASON];

fn copy_body(
    from_headers: &msg::Headers,
    body: &bytes::Bytes,
    to: &mut msg::Headers,
) -> bytes::Bytes {
    for h in BODY_HEADERS {
        to.copy_from(from_headers, h);
    }
    body.clone()
}

impl InboundCall {
    fn dialog(&mut self, leg: Leg) -> &mut Dialog {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }

    async fn resolve_agent(&self) -> Result<SocketAddr, String> {
        let uri =
            SipUri::parse(&self.route.destination).ok_or("the destination is not a SIP URI")?;
        let default_port = if self.b.target.protocol == Protocol::Tls { 5061 } else { 5060 };
        let port = uri.port.unwrap_or(default_port);
        let host = uri.host.trim_start_matches('[').trim_end_matches(']').to_string();
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let lookup = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((host.as_str(), port)),
        );
        match lookup.await {
            Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| format!("{host} has no address")),
            Ok(Err(e)) => Err(format!("{host}: {e}")),
            Err(_) => Err(format!("{host}: DNS lookup timed out")),
        }
    }

    fn build_agent_invite(&mut self) -> Request {
        let ua = self.user_agent();
        let (mut r, branch) = self.b.request(Method::Invite, &ua);
        self.b_invite_branch = branch;
        let hops = self.a_invite.max_forwards().unwrap_or(70).saturating_sub(1);
        r.headers.set(name::MAX_FORWARDS, hops.to_string());
        let p = self.prefix().to_string();
        let own = ["Agent-ID", "Trunk", "Number", "Session-ID"];
        r.headers.push(&format!("{p}Agent-ID"), self.route.agent.as_str());
        r.headers.push(&format!("{p}Trunk"), self.route.trunk.name.to_string());
        r.headers.push(&format!("{p}Number"), self.route.number.as_str());
        r.headers.push(&format!("{p}Session-ID"), self.session_id.as_str());
        for (n, v) in self.a_invite.headers.iter() {
            let lower = n.to_ascii_lowercase();
            if !lower.starts_with("x-") {
                continue;
            }
            let ours = own.iter().any(|o| lower == format!("{p}{o}").to_ascii_lowercase());
            if !ours {
                r.headers.push(n, v);
            }
        }
        r.headers.push(name::ALLOW, ALLOW);
        match &self.offer {
            Some(offer) => {
                r.headers.push(name::CONTENT_TYPE, "application/sdp");
                r.body = offer.sdp.to_bytes().into();
            }
            None => r.body = copy_body(&self.a_invite.headers, &self.a_invite.body, &mut r.headers),
        }
        r
    }

    /// The agent's SDP answer in a 18x or 2xx, checked against the offer: what goes to the
    /// carrier. `Err` when the answer breaks the policy (a codec that was not offered).
    fn agent_answer(&mut self, resp: &Response) -> Result<Option<bytes::Bytes>, u16> {
        if resp.body.is_empty() {
            return Ok(None);
        }
        let Some(offer) = &self.offer else {
            return Ok(Some(resp.body.clone()));
        };
        let final_ = (200..300).contains(&resp.status);
        if offer.delayed && !final_ {
            // The carrier's offer will be in the 2xx: a provisional cannot carry it without
            // 100rel (RFC 3262), so early media SDP stays on the agent leg.
            return Ok(None);
        }
        let delayed = offer.delayed;
        let mut answer = Sdp::parse(&resp.body).map_err(|e| e.status_code())?;
        let chosen = codec::check_answer(&offer.negotiated, &answer).map_err(|e| {
            tracing::warn!(session = %self.session_id, error = %e, "the agent's SDP answer breaks the codec policy");
            e.status_code()
        })?;
        tracing::debug!(session = %self.session_id, codec = chosen.codec.as_str(), "codec chosen");
        if delayed {
            // What the agent accepted becomes the offer to the carrier, whose ACK answers it.
            self.carrier_offer = Some(codec::Negotiated { formats: chosen.formats.clone() });
        }
        self.chosen = Some(chosen);
        self.rewrite_toward(Leg::B, &mut answer);
        if final_ && !delayed {
            // Answered: media is owed from now on, unless the answer puts the call on hold.
            self.media_direction(answer.direction());
        }
        Ok(Some(answer.to_bytes().into()))
    }

    async fn send_bytes(&self, target: Target, bytes: Vec<u8>) -> Result<(), std::io::Error> {
        match self.gw.transports.get() {
            Some(t) => t.send(&target, bytes).await,
            None => Err(std::io::Error::other("transports not attached")),
        }
    }

    /// Sends a request in a new client transaction.
    async fn send_client(&mut self, leg: Leg, branch: String, request: Request, purpose: Purpose) {
        let now = Instant::now();
        let target = self.dialog(leg).target;
        let rel = reliability(target.protocol);
        let (machine, actions) = if request.method == Method::Invite {
            let (m, a) = ClientInvite::new(now, rel, self.timers);
            (ClientMachine::Invite(m), a)
        } else {
            let (m, a) = ClientNonInvite::new(now, rel, self.timers);
            (ClientMachine::NonInvite(m), a)
        };
        let key = tx_key(&request.method, &branch);
        let bytes = request.to_bytes();
        self.clients
            .insert(key.clone(), ClientTx { leg, request, bytes, target, machine, purpose });
        self.client_actions(&key, actions, None).await;
    }

    async fn client_actions(
        &mut self,
        key: &str,
        actions: Vec<ClientAction>,
        response: Option<&Response>,
    ) {
        for action in actions {
            match action {
                ClientAction::Send => {
                    if let Some(tx) = self.clients.get(key) {
                        let (target, bytes) = (tx.target, tx.bytes.clone());
                        if let Err(e) = self.send_bytes(target, bytes).await {
                            tracing::debug!(error = %e, "send failed");
                            self.client_transport_error(key).await;
                        }
                    }
                }
                ClientAction::SendAck => {
                    if let (Some(tx), Some(resp)) = (self.clients.get(key), response) {
                        let ack = non_2xx_ack(&tx.request, resp);
                        let target = tx.target;
                        let _ = self.send_bytes(target, ack.to_bytes()).await;
                    }
                }
                // Boxed: handling a response or a failure may send new requests (CANCEL, BYE),
                // which comes back here.
                ClientAction::Deliver => {
                    if let Some(resp) = response {
                        Box::pin(self.on_client_response(key, resp)).await;
                    }
                }
                ClientAction::Timeout => Box::pin(self.on_client_failure(key, false)).await,
                ClientAction::TransportError => Box::pin(self.on_client_failure(key, true)).await,
                ClientAction::Terminated => {
                    self.clients.remove(key);
                }
            }
        }
    }

    async fn client_transport_error(&mut self, key: &str) {
        let now = Instant::now();
        let actions = match self.clients.get_mut(key).map(|t| &mut t.machine) {
            Some(ClientMachine::Invite(m)) => m.on_transport_error(now),
            Some(ClientMachine::NonInvite(m)) => m.on_transport_error(now),
            None => return,
        };
        Box::pin(self.client_actions(key, actions, None)).await;
    }

    /// Responds in a server transaction.
    async fn respond(&mut self, key: &str, response: Response) {
        let now = Instant::now();
        let status = response.status;
        let Some(tx) = self.servers.get_mut(key) else { return };
        let bytes = response.to_bytes();
        tx.last_response = Some(bytes.clone());
        let actions = match &mut tx.machine {
            ServerMachine::Invite(m) => m.on_tu_response(now, status),
            ServerMachine::NonInvite(m) => m.on_tu_response(now, status),
        };
        let (leg, unreliable) = (tx.leg, !tx.target.protocol.is_reliable());
        let is_invite = matches!(tx.machine, ServerMachine::Invite(_));
        if is_invite && (200..300).contains(&status) {
            // RFC 3261 §13.3.1.4: the UAS core retransmits 2xx until the ACK comes.
            let interval = self.timers.t1;
            let resend = unreliable.then(|| now + interval);
            let cseq = response.cseq().map(|(n, _)| n).unwrap_or_default();
            self.pending_2xx.push(Pending2xx {
                leg,
                cseq,
                bytes: bytes.clone(),
                target: tx.target,
                next: resend,
                interval,
                give_up: now + self.timers.t1 * 64,
            });
        }
        self.server_actions(key, actions).await;
    }

    async fn server_actions(&mut self, key: &str, actions: Vec<ServerAction>) {
        for action in actions {
            match action {
                ServerAction::SendLastResponse => {
                    if let Some(tx) = self.servers.get(key)
                        && let Some(bytes) = tx.last_response.clone()
                    {
                        let target = tx.target;
                        let _ = self.send_bytes(target, bytes).await;
                    }
                }
                ServerAction::DeliverAck => {
                    // An ACK for our 2xx that reused the INVITE's branch.
                    if let Some(tx) = self.servers.get(key) {
                        let (leg, cseq) =
                            (tx.leg, tx.request.cseq().map(|(n, _)| n).unwrap_or_default());
                        self.pending_2xx.retain(|p| !(p.leg == leg && p.cseq == cseq));
                    }
                }
                ServerAction::AckTimeout => tracing::debug!("no ACK for a final response"),
                ServerAction::TransportError => tracing::debug!("could not send a response"),
                ServerAction::Terminated => {
                    self.servers.remove(key);
                }
            }
        }
    }

    /// A standard response to a request of this call's server transaction `key`.
    fn response_for(&self, key: &str, status: u16) -> Option<Response> {
        let tx = self.servers.get(key)?;
        let tag = match tx.leg {
            Leg::A => &self.a.local_tag,
            Leg::B => &self.b.local_tag,
        };
        Some(Response::to_request(&tx.request, status, msg::reason_phrase(status), Some(tag)))
    }

    async fn respond_status(&mut self, key: &str, status: u16) {
        if let Some(mut r) = self.response_for(key, status) {
            r.headers.push(name::SERVER, self.user_agent());
            self.respond(key, r).await;
        }
    }

    /// Ends leg A's INVITE with a failure and the call with it.
    async fn fail_a(&mut self, status: u16, outcome: CallOutcome) {
        let key = tx_key(&Method::Invite, &self.a_branch);
        let final_sent = self.a_final_sent;
        if !final_sent {
            self.a_final_sent = true;
            self.respond_status(&key, status).await;
        }
        self.outcome.get_or_insert(outcome);
        self.end();
    }

    /// The call is over: free its slot now; the task stays a while for retransmissions.
    fn end(&mut self) {
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            self.linger_until = Some(Instant::now() + LINGER);
            self.b_deadline = None;
            self.permit = None;
            self.active = None;
            self.gw.call_ended();
            self.finish_metrics();
            if let Some(relay) = self.relay.take() {
                // The ports go back to the pool once the relay task ends.
                let metrics = self.gw.metrics.clone();
                let session = self.session_id.clone();
                let reason = self.hangup_reason.clone();
                let trunk = self.route.trunk.name.to_string();
                tokio::spawn(async move {
                    let stats = relay.stop().await;
                    for (leg, name) in [(rtp::Leg::A, "carrier"), (rtp::Leg::B, "agent")] {
                        let rtp_in = stats.leg(leg).rtp_in;
                        metrics.rtp_leg_finished(
                            &trunk,
                            name,
                            rtp_in.packets,
                            rtp_in.bytes,
                            rtp_in.lost,
                            rtp_in.jitter_ms / 1000.0,
                        );
                    }
                    tracing::info!(
                        session = %session,
                        carrier_packets = stats.a.rtp_in.packets, carrier_lost = stats.a.rtp_in.lost,
                        carrier_jitter_ms = stats.a.rtp_in.jitter_ms,
                        agent_packets = stats.b.rtp_in.packets, agent_lost = stats.b.rtp_in.lost,
                        agent_jitter_ms = stats.b.rtp_in.jitter_ms,
                        reason = reason.as_deref().unwrap_or("hang-up"),
                        "call media"
                    );
                });
            }
        }
    }

    fn finish_metrics(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            self.gw.metrics.call_finished(
                &self.route.trunk.name.to_string(),
                Direction::Inbound,
                outcome,
            );
            tracing::info!(
                session = %self.session_id, trunk = %self.route.trunk.name, agent = %self.route.agent,
                number = %self.route.number, outcome = ?outcome,
                seconds = self.started.elapsed().as_secs_f64(), "call ended"
            );
        }
    }

    fn is_finished(&self) -> bool {
        match (self.phase, self.linger_until) {
            (Phase::Ended, Some(t)) => {
                Instant::now() >= t
                    || (self.servers.is_empty()
                        && self.clients.is_empty()
                        && self.pending_2xx.is_empty())
            }
            _ => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let servers = self.servers.values().filter_map(|t| match &t.machine {
            ServerMachine::Invite(m) => m.next_deadline(),
            ServerMachine::NonInvite(m) => m.next_deadline(),
        });
        let clients = self.clients.values().filter_map(|t| match &t.machine {
            ClientMachine::Invite(m) => m.next_deadline(),
            ClientMachine::NonInvite(m) => m.next_deadline(),
        });
        let pending = self.pending_2xx.iter().flat_map(|p| [p.next, Some(p.give_up)]).flatten();
        servers.chain(clients).chain(pending).chain(self.b_deadline).chain(self.linger_until).min()
    }

    async fn on_timeout(&mut self) {
        let now = Instant::now();
        let due_servers: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, t)| {
                match &t.machine {
                    ServerMachine::Invite(m) => m.next_deadline(),
                    ServerMachine::NonInvite(m) => m.next_deadline(),
                }
                .is_some_and(|d| d <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due_servers {
            let actions = match self.servers.get_mut(&key).map(|t| &mut t.machine) {
                Some(ServerMachine::Invite(m)) => m.on_timeout(now),
                Some(ServerMachine::NonInvite(m)) => m.on_timeout(now),
                None => continue,
            };
            self.server_actions(&key, actions).await;
        }
        let due_clients: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, t)| {
                match &t.machine {
                    ClientMachine::Invite(m) => m.next_deadline(),
                    ClientMachine::NonInvite(m) => m.next_deadline(),
                }
                .is_some_and(|d| d <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due_clients {
            let actions = match self.clients.get_mut(&key).map(|t| &mut t.machine) {
                Some(ClientMachine::Invite(m)) => m.on_timeout(now),
                Some(ClientMachine::NonInvite(m)) => m.on_timeout(now),
                None => continue,
            };
            self.client_actions(&key, actions, None).await;
        }
        // 2xx retransmission and give-up.
        let mut give_up = false;
        let mut resend = Vec::new();
        for p in &mut self.pending_2xx {
            if now >= p.give_up {
                give_up = true;
            } else if let Some(next) = p.next
                && now >= next
            {
                resend.push((p.target, p.bytes.clone()));
                p.interval = (p.interval * 2).min(self.timers.t2);
                p.next = Some(now + p.interval);
            }
        }
        for (target, bytes) in resend {
            let _ = self.send_bytes(target, bytes).await;
        }
        if give_up {
            self.pending_2xx.retain(|p| now < p.give_up);
            tracing::warn!(session = %self.session_id, "no ACK for 2xx: ending the call");
            self.hang_up_both().await;
        }
        if let Some(d) = self.b_deadline
            && now >= d
        {
            self.b_deadline = None;
            let invite_key = tx_key(&Method::Invite, &self.b_invite_branch);
            if self.b_provisional {
                // Ringing too long: give up on the agent.
                self.send_cancel_b().await;
                self.fail_a(480, CallOutcome::NoAnswer).await;
            } else {
                // Not even a 100 Trying: the agent runtime is not there.
                self.clients.remove(&invite_key);
                tracing::warn!(agent = %self.route.destination, "agent runtime did not answer the INVITE");
                self.fail_a(503, CallOutcome::Failed).await;
            }
        }
    }

    async fn on_client_failure(&mut self, key: &str, transport: bool) {
        let Some(tx) = self.clients.get(key) else { return };
        match tx.purpose.clone() {
            Purpose::Invite => {
                if self.phase == Phase::Calling {
                    let status = if transport || !self.b_provisional { 503 } else { 480 };
                    let outcome =
                        if status == 503 { CallOutcome::Failed } else { CallOutcome::NoAnswer };
                    self.fail_a(status, outcome).await;
                }
            }
            Purpose::Relay(server_key) => {
                self.respond_status(&server_key, if transport { 503 } else { 408 }).await
            }
            Purpose::Own => {}
        }
    }

    async fn on_client_response(&mut self, key: &str, resp: &Response) {
        let Some(tx) = self.clients.get(key) else { return };
        let purpose = tx.purpose.clone();
        let leg = tx.leg;
        let method = tx.request.method.clone();
        match purpose {
            Purpose::Invite => self.on_agent_invite_response(resp).await,
            Purpose::Relay(server_key) => {
                if method == Method::Invite && (200..300).contains(&resp.status) {
                    // The B2BUA acknowledges its own leg; the other side's ACK is absorbed.
                    let cseq = resp.cseq().map(|(n, _)| n).unwrap_or_default();
                    self.learn_target(leg, resp);
                    self.send_2xx_ack(leg, cseq).await;
                }
                if resp.status > 100 {
                    let Some(mut out) = self.response_for(&server_key, resp.status) else { return };
                    out.body = copy_body(&resp.headers, &resp.body, &mut out.headers);
                    if !resp.body.is_empty() && self.reoffers.contains_key(&server_key) {
                        match self.relay_answer(&server_key, leg, resp) {
                            Some(body) => out.body = body,
                            None => {
                                out.body = bytes::Bytes::new();
                                out.headers.remove(name::CONTENT_TYPE);
                            }
                        }
                    }
                    if resp.status >= 200 {
                        self.reoffers.remove(&server_key);
                    }
                    if (200..300).contains(&resp.status) || (101..200).contains(&resp.status) {
                        let other =
                            self.servers.get(&server_key).map(|t| t.leg).unwrap_or(leg.other());
                        out.headers.push(name::CONTACT, self.dialog(other).contact());
                    }
                    self.respond(&server_key, out).await;
                }
            }
            Purpose::Own => {}
        }
    }

    /// The agent's answers to our INVITE.
    async fn on_agent_invite_response(&mut self, resp: &Response) {
        let now = Instant::now();
        let status = resp.status;
        if status < 200 {
            if status > 100 && !self.b_provisional {
                self.b_provisional = true;
                self.b_deadline = Some(now + self.gw.config.agent_timeout);
            } else if status == 100 && self.b_deadline.is_some() && !self.b_provisional {
                // The agent is there; from now on only the ringing timeout applies.
                self.b_deadline = Some(now + self.gw.config.agent_timeout);
            }
            if self.cancelled {
                self.send_cancel_b().await;
                return;
            }
            if status > 100 && self.phase == Phase::Calling {
                if resp.to().and_then(|t| t.tag().map(str::to_string)).is_some() {
                    self.b.remote_tag = resp.to().and_then(|t| t.tag().map(str::to_string));
                }
                let key = tx_key(&Method::Invite, &self.a_branch);
                if let Some(mut out) = self.response_for(&key, status) {
                    // RFC 3261 §12.1.1: a response that makes a dialog copies Record-Route.
                    out.headers.copy_from(&self.a_invite.headers, name::RECORD_ROUTE);
                    out.headers.push(name::CONTACT, self.a.contact());
                    // Early media SDP that breaks the policy is dropped, not relayed.
                    if let Ok(Some(body)) = self.agent_answer(resp) {
                        out.headers.push(name::CONTENT_TYPE, "application/sdp");
                        out.body = body;
                    }
                    self.respond(&key, out).await;
                }
            }
            return;
        }
        self.b_deadline = None;
        if (200..300).contains(&status) {
            let first = self.b.remote_tag.is_none() || self.phase == Phase::Calling;
            self.b.remote_tag = resp.to().and_then(|t| t.tag().map(str::to_string));
            self.learn_target(Leg::B, resp);
            let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(1);
            self.send_2xx_ack(Leg::B, cseq).await;
            if !first || self.phase != Phase::Calling {
                return; // a retransmitted 2xx: acknowledged again, nothing else
            }
            if self.cancelled {
                // The carrier gave up just as the agent answered: hang the agent up.
                self.send_bye(Leg::B).await;
                return;
            }
            let body = match self.agent_answer(resp) {
                Ok(body) => body,
                Err(status) => {
                    // The agent answered with what was not offered: end its leg, refuse the call.
                    self.bye(Leg::B).await;
                    self.fail_a(status, CallOutcome::Failed).await;
                    return;
                }
            };
            self.phase = Phase::Answered;
            self.outcome = Some(CallOutcome::Answered);
            self.gw.metrics.setup_latency(
                &self.route.trunk.name.to_string(),
                self.started.elapsed().as_secs_f64(),
            );
            let key = tx_key(&Method::Invite, &self.a_branch);
            if let Some(mut out) = self.response_for(&key, 200) {
                out.headers.copy_from(&self.a_invite.headers, name::RECORD_ROUTE);
                out.headers.push(name::CONTACT, self.a.contact());
                out.headers.push(name::ALLOW, ALLOW);
                out.headers.push(name::SERVER, self.user_agent());
                if let Some(body) = body {
                    out.headers.push(name::CONTENT_TYPE, "application/sdp");
                    out.body = body;
                }
                self.a_final_sent = true;
                self.respond(&key, out).await;
            }
            return;
        }
        if self.cancelled {
            self.end();
            return;
        }
        let (mapped, outcome) = map_agent_failure(status);
        tracing::info!(session = %self.session_id, agent_status = status, status = mapped, "agent refused the call");
        self.fail_a(mapped, outcome).await;
    }

    /// Records the peer's Contact and Record-Route from a 2xx (RFC 3261 §12.1.2).
    fn learn_target(&mut self, leg: Leg, resp: &Response) {
        let contact = resp.contact_uri();
        let mut routes: Vec<String> = resp
            .headers
            .get_all(name::RECORD_ROUTE)
            .flat_map(msg::split_list)
            .map(str::to_string)
            .collect();
        routes.reverse();
        let d = self.dialog(leg);
        if let Some(c) = contact {
            d.remote_target = c;
        }
        if !routes.is_empty() {
            d.route_set = routes;
        }
    }

    async fn send_2xx_ack(&mut self, leg: Leg, cseq: u32) {
        let ua = self.user_agent();
        let d = self.dialog(leg);
        let (mut ack, _) = d.request(Method::Ack, &ua);
        ack.headers.set(name::CSEQ, format!("{cseq} ACK"));
        let target = d.target;
        let _ = self.send_bytes(target, ack.to_bytes()).await;
    }

    /// CANCEL of our INVITE to the agent (RFC 3261 §9.1): once, and only after a provisional.
    async fn send_cancel_b(&mut self) {
        if self.b_cancel_sent || !self.b_provisional {
            return;
        }
        let key = tx_key(&Method::Invite, &self.b_invite_branch);
        let Some(tx) = self.clients.get(&key) else { return };
        let invite = &tx.request;
        let mut cancel = Request::new(Method::Cancel, invite.uri.clone());
        if let Some(via) = invite.headers.get(name::VIA) {
            cancel.headers.push(name::VIA, via);
        }
        cancel.headers.push(name::MAX_FORWARDS, "70");
        cancel.headers.copy_from(&invite.headers, name::ROUTE);
        cancel.headers.copy_from(&invite.headers, name::FROM);
        cancel.headers.copy_from(&invite.headers, name::TO);
        cancel.headers.copy_from(&invite.headers, name::CALL_ID);
        let n = invite.cseq().map(|(n, _)| n).unwrap_or(1);
        cancel.headers.push(name::CSEQ, format!("{n} CANCEL"));
        self.b_cancel_sent = true;
        let branch = self.b_invite_branch.clone();
        self.send_client(Leg::B, branch, cancel, Purpose::Own).await;
    }

    /// BYE on one leg; the call ends.
    async fn send_bye(&mut self, leg: Leg) {
        self.bye(leg).await;
        self.end();
    }

    /// BYE on one leg, leaving the rest of the call to the caller.
    async fn bye(&mut self, leg: Leg) {
        let ua = self.user_agent();
        let (bye, branch) = self.dialog(leg).request(Method::Bye, &ua);
        self.send_client(leg, branch, bye, Purpose::Own).await;
    }

    async fn hang_up_both(&mut self) {
        if self.phase == Phase::Answered {
            self.send_bye(Leg::A).await;
            self.send_bye(Leg::B).await;
        }
        self.end();
    }

    async fn on_response(&mut self, resp: Response, _source: Source) {
        let now = Instant::now();
        let (Some(branch), Some((_, method))) =
            (resp.top_via().and_then(|v| v.branch), resp.cseq())
        else {
            return;
        };
        let key = tx_key(&method, &branch);
        let actions = match self.clients.get_mut(&key).map(|t| &mut t.machine) {
            Some(ClientMachine::Invite(m)) => m.on_response(now, resp.status),
            Some(ClientMachine::NonInvite(m)) => m.on_response(now, resp.status),
            None => {
                // A 2xx retransmission after the INVITE transaction ended: ACK it again.
                if method == Method::Invite
                    && (200..300).contains(&resp.status)
                    && resp.call_id() == Some(self.b.call_id.as_str())
                {
                    let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(1);
                    self.send_2xx_ack(Leg::B, cseq).await;
                }
                return;
            }
        };
        self.client_actions(&key, actions, Some(&resp)).await;
    }

    /// Which leg a request belongs to, if its dialog identifiers are this call's.
    fn leg_of(&self, req: &Request) -> Option<Leg> {
        let call_id = req.call_id()?;
        let from_tag = req.from().and_then(|f| f.tag().map(str::to_string));
        let to_tag = req.to().and_then(|t| t.tag().map(str::to_string));
        if call_id == self.a.call_id {
            // Requests from the carrier: its From tag; ours in To once we sent one.
            let from_ok = from_tag == self.a.remote_tag;
            let to_ok = to_tag.is_none() || to_tag.as_deref() == Some(self.a.local_tag.as_str());
            return (from_ok && to_ok).then_some(Leg::A);
        }
        if call_id == self.b.call_id {
            let from_ok = self.b.remote_tag.is_none() || from_tag == self.b.remote_tag;
            let to_ok = to_tag.as_deref() == Some(self.b.local_tag.as_str());
            return (from_ok && to_ok).then_some(Leg::B);
        }
        None
    }

    async fn on_request(&mut self, req: Request, source: Source) {
        let now = Instant::now();
        let Some(branch) = req.top_via().and_then(|v| v.branch) else { return };
        let key = tx_key(&req.method, &branch);

        if req.method == Method::Ack {
            if let Some(ServerMachine::Invite(m)) =
                self.servers.get_mut(&key).map(|t| &mut t.machine)
            {
                // ACK of a non-2xx final response: same branch as the INVITE.
                let actions = m.on_ack(now);
                self.server_actions(&key, actions).await;
                return;
            }
            // ACK of a 2xx: a new branch, matched by dialog and CSeq.
            if let Some(leg) = self.leg_of(&req) {
                let cseq = req.cseq().map(|(n, _)| n).unwrap_or_default();
                self.pending_2xx.retain(|p| !(p.leg == leg && p.cseq == cseq));
                let invite_cseq = self.a_invite.cseq().map(|(n, _)| n);
                if leg == Leg::A && Some(cseq) == invite_cseq && self.carrier_offer.is_some() {
                    self.on_carrier_answer(&req).await;
                }
            }
            return;
        }

        if let Some(tx) = self.servers.get_mut(&key) {
            // A retransmission.
            let actions = match &mut tx.machine {
                ServerMachine::Invite(m) => m.on_request_retransmission(now),
                ServerMachine::NonInvite(m) => m.on_request_retransmission(now),
            };
            self.server_actions(&key, actions).await;
            return;
        }

        if req.method == Method::Cancel {
            return self.on_cancel(req, source, &branch).await;
        }

        let Some(leg) = self.leg_of(&req) else {
            let mut r = Response::to_request(&req, 481, msg::reason_phrase(481), None);
            r.headers.push(name::SERVER, self.user_agent());
            let _ = self.send_bytes(source.reply_target(), r.to_bytes()).await;
            return;
        };
        self.open_server(&key, leg, req.clone(), source);

        match req.method {
            Method::Bye => {
                self.respond_status(&key, 200).await;
                match self.phase {
                    Phase::Answered => {
                        tracing::debug!(session = %self.session_id, side = ?leg, "hang-up");
                        self.send_bye(leg.other()).await;
                    }
                    Phase::Calling if leg == Leg::A => {
                        self.cancelled = true;
                        self.send_cancel_b().await;
                        self.fail_a(487, CallOutcome::Cancelled).await;
                    }
                    Phase::Calling => self.fail_a(480, CallOutcome::Failed).await,
                    Phase::Ended => {}
                }
            }
            Method::Options => self.respond_status(&key, 200).await,
            Method::Invite | Method::Update | Method::Info => {
                let other = leg.other();
                if self.phase != Phase::Answered && req.method == Method::Invite {
                    self.respond_status(&key, 491).await;
                    return;
                }
                if self.dialog(other).remote_tag.is_none() {
                    self.respond_status(&key, 500).await;
                    return;
                }
                self.relay(&key, other, &req).await;
            }
            Method::Prack => self.respond_status(&key, 481).await,
            Method::Refer => self.respond_status(&key, 501).await,
            _ => self.respond_status(&key, 501).await,
        }
    }

    fn open_server(&mut self, key: &str, leg: Leg, req: Request, source: Source) {
        let now = Instant::now();
        let rel = reliability(source.protocol);
        let machine = if req.method == Method::Invite {
            ServerMachine::Invite(ServerInvite::new(now, rel, self.timers).0)
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(now, rel, self.timers).0)
        };
        self.servers.insert(
            key.to_string(),
            ServerTx {
                leg,
                request: req,
                target: source.reply_target(),
                machine,
                last_response: None,
            },
        );
    }

    /// Passes an in-dialog request to the other leg.
    async fn relay(&mut self, server_key: &str, to: Leg, req: &Request) {
        let ua = self.user_agent();
        let body = match self.relay_offer(server_key, to.other(), req) {
            Ok(body) => body,
            Err(status) => return self.respond_status(server_key, status).await,
        };
        let (mut out, branch) = self.dialog(to).request(req.method.clone(), &ua);
        out.body = copy_body(&req.headers, &req.body, &mut out.headers);
        if let Some(body) = body {
            out.body = body;
        }
        self.send_client(to, branch, out, Purpose::Relay(server_key.to_string())).await;
    }

    /// A new offer inside the call (re-INVITE, UPDATE) from `from`: the codec policy again, the
    /// relay told where `from` wants media now, the SDP rewritten to our side of the other leg,
    /// hold or resume. `Ok(None)`: no SDP, nothing to change.
    fn relay_offer(
        &mut self,
        server_key: &str,
        from: Leg,
        req: &Request,
    ) -> Result<Option<bytes::Bytes>, u16> {
        if req.body.is_empty() || self.relay.is_none() {
            return Ok(None);
        }
        let mut sdp = Sdp::parse(&req.body).map_err(|e| e.status_code())?;
        let negotiated =
            codec::filter_offer(&mut sdp, &self.route.trunk.codecs).map_err(|e| e.status_code())?;
        self.media_direction(sdp.direction());
        self.rewrite_toward(from, &mut sdp);
        self.reoffers.insert(server_key.to_string(), negotiated);
        Ok(Some(sdp.to_bytes().into()))
    }

    /// The answer to a relayed offer, coming back from `from`: checked, the relay told, the SDP
    /// rewritten for the other leg. Unusable SDP is dropped (the offerer keeps the old media).
    fn relay_answer(
        &mut self,
        server_key: &str,
        from: Leg,
        resp: &Response,
    ) -> Option<bytes::Bytes> {
        let negotiated = self.reoffers.get(server_key)?.clone();
        let mut sdp = Sdp::parse(&resp.body).ok()?;
        if let Err(e) = codec::check_answer(&negotiated, &sdp) {
            tracing::warn!(session = %self.session_id, error = %e, "a re-INVITE answer breaks the codec policy; its SDP is dropped");
            return None;
        }
        self.rewrite_toward(from, &mut sdp);
        Some(sdp.to_bytes().into())
    }

    async fn on_cancel(&mut self, req: Request, source: Source, branch: &str) {
        let invite_key = tx_key(&Method::Invite, branch);
        let cancel_key = tx_key(&Method::Cancel, branch);
        if branch != self.a_branch || !self.servers.contains_key(&invite_key) {
            let mut r = Response::to_request(&req, 481, msg::reason_phrase(481), None);
            r.headers.push(name::SERVER, self.user_agent());
            let _ = self.send_bytes(source.reply_target(), r.to_bytes()).await;
            return;
        }
        self.open_server(&cancel_key, Leg::A, req, source);
        self.respond_status(&cancel_key, 200).await;
        if self.phase == Phase::Calling && !self.a_final_sent {
            self.cancelled = true;
            self.send_cancel_b().await;
            self.fail_a(487, CallOutcome::Cancelled).await;
        }
    }
}

/// A 2xx we sent on an INVITE and retransmit until its ACK (RFC 3261 §13.3.1.4).
struct Pending2xx {
    leg: Leg,
    cseq: u32,
    bytes: Vec<u8>,
    target: Target,
    /// Next retransmission (None on reliable transports).
    next: Option<Instant>,
    interval: Duration,
    give_up: Instant,
}

/// The ACK of a non-2xx final response (RFC 3261 §17.1.1.3).
fn non_2xx_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(via) = invite.headers.get(name::VIA) {
        ack.headers.push(name::VIA, msg::split_list(via).first().copied().unwrap_or(via));
    }
    ack.headers.push(name::MAX_FORWARDS, "70");
    ack.headers.copy_from(&invite.headers, name::ROUTE);
    ack.headers.copy_from(&invite.headers, name::FROM);
    match resp.headers.get(name::TO) {
        Some(to) => ack.headers.push(name::TO, to),
        None => ack.headers.copy_from(&invite.headers, name::TO),
    }
    ack.headers.copy_from(&invite.headers, name::CALL_ID);
    let n = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    ack.headers.push(name::CSEQ, format!("{n} ACK"));
    ack
}
