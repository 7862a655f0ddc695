//! The legs of a call: who is on each one (its [`Role`]), who started it ([`Side`]), where its
//! INVITE is ([`Phase`]) and the dialog state needed to send requests in it ([`Dialog`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::model::Encryption;
use crate::media::relay::Leg as RelaySide;
use crate::media::sdes::Crypto;
use crate::media::sdp::LegOrigin;
use crate::media::srtp::SrtpKeys;
use crate::sip::msg::{Method, NameAddr, Request, SipUri, name};
use crate::sip::transaction::{ClientKey, MAGIC_COOKIE, ServerKey};
use crate::sip::transport::{Protocol, Source, Target};

/// A leg of a call: an index into the call's legs, stable for the call's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub(super) usize);

impl LegId {
    /// The first leg of a call: the origin of a call that came in, the first dialed of one the
    /// gateway places.
    pub const FIRST: LegId = LegId(0);
    /// The second leg: the one the call dialed, or the second of one the gateway places.
    pub const SECOND: LegId = LegId(1);
}

/// Who is on the other end of a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The carrier (or PBX) of a trunk: the caller of an inbound call, the called party of an
    /// outbound one.
    Carrier,
    /// The agent runtime.
    Agent,
    /// A transfer target the gateway dials for a bridged transfer.
    Transfer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Carrier => "carrier",
            Role::Agent => "agent",
            Role::Transfer => "transfer",
        }
    }
}

/// Who sent the leg's INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The peer invited us: we are the UAS of the leg (the leg that starts a call).
    Uas,
    /// We invited the peer: we are the UAC (the legs the call adds).
    Uac,
}

/// Where a leg's INVITE transaction and dialog are. One enum per leg, for both sides: a UAS
/// leg moves `Inviting → Early → Confirmed`, a UAC leg `Resolving → Inviting → Trying → Early
/// → Confirmed`; either may end in `Cancelling` (UAC) and `Terminated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// UAC: the target is being resolved, or the relay set up; no INVITE sent yet.
    Resolving,
    /// UAC: INVITE sent, nothing back. UAS: INVITE received, no response beyond 100 sent.
    Inviting,
    /// UAC: 100 Trying received: the peer is there, nothing rings yet.
    Trying,
    /// A provisional response (101–199) received (UAC) or sent (UAS).
    Early,
    /// UAC: the call no longer wants this leg before it answered. `sent`: our CANCEL is out
    /// (it may only go once a provisional came, RFC 3261 §9.1); a 2xx that crosses it gets
    /// ACK and BYE.
    Cancelling { sent: bool },
    /// A 2xx sent or received: the dialog is confirmed.
    Confirmed,
    /// Over: failed, cancelled or hung up.
    Terminated,
}

impl Phase {
    /// A UAC leg that has not answered yet and may still be cancelled or given up on.
    pub fn is_pending(self) -> bool {
        matches!(self, Phase::Resolving | Phase::Inviting | Phase::Trying | Phase::Early)
    }
}

/// The dialog state of one leg, as needed to send requests in it (RFC 3261 §12).
#[derive(Clone, Debug)]
pub struct Dialog {
    pub call_id: String,
    /// Our tag (To tag on a UAS leg, From tag on a UAC leg).
    pub local_tag: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// Our URI in the dialog and the peer's (From/To of our requests).
    pub local_uri: NameAddr,
    pub remote_uri: NameAddr,
    /// Request-URI of our in-dialog requests (the peer's Contact).
    pub remote_target: String,
    /// Route set (RFC 3261 §12.1), in the order of our requests' Route headers.
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    /// Where in-dialog requests go: where the peer's INVITE came from, or the peer's resolved
    /// address (symmetric signalling: NATed carriers' Contacts are often unreachable).
    pub target: Target,
    /// Our address on this leg (Via, Contact).
    pub local: SocketAddr,
}

impl Dialog {
    pub fn contact(&self) -> String {
        format!("<sip:trunkline@{}{}>", self.local, transport_param(self.target.protocol))
    }

    /// A new request in this dialog (RFC 3261 §12.2.1.1), with `branch` in its Via.
    pub fn request(&mut self, method: Method, branch: &str, user_agent: &str) -> Request {
        if method != Method::Ack && method != Method::Cancel {
            self.local_cseq += 1;
        }
        let mut r = Request::new(method.clone(), self.remote_target.clone());
        r.headers.push(name::VIA, via(self.target.protocol, self.local, branch));
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
        r
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

/// The INVITE transaction that made the leg.
#[derive(Clone, Debug)]
pub enum LegInvite {
    /// Not sent yet (a UAC leg resolving its target).
    None,
    /// The peer's INVITE, which we answer.
    Server(ServerKey),
    /// Ours to the peer.
    Client(ClientKey),
}

/// One leg of a call.
#[derive(Debug)]
pub struct Leg {
    pub id: LegId,
    pub role: Role,
    pub side: Side,
    pub phase: Phase,
    pub dialog: Dialog,
    /// The side of the RTP relay that faces this leg, when the call relays media.
    pub media: RelaySide,
    /// The o= line we keep toward this leg (RFC 3264 §8: versions increase per change).
    pub origin: LegOrigin,
    /// The INVITE that made the leg: for a UAS leg the peer's request itself is kept too
    /// (Record-Route, Max-Forwards and `X-*` headers come from it), until its 2xx is
    /// acknowledged.
    pub invite: LegInvite,
    pub invite_request: Option<Arc<Request>>,
    /// UAC: no answer of any kind by then (the peer is not there), or ringing too long.
    pub deadline: Option<Instant>,
    /// UAC: the digest credentials this leg answers its peer's 401/407 with.
    pub auth: LegAuth,
    /// UAC: headers of our INVITE beside the dialog's own (session headers, the `X-*` headers
    /// that travel to this peer), until the peer answers.
    pub invite_headers: Vec<(String, String)>,
    /// The CSeq of the peer's last request in the dialog (RFC 3261 §12.2.2): the INVITE's on a
    /// UAS leg, none on a UAC leg until the peer sends a request.
    pub remote_cseq: Option<u32>,
    /// Networks the peer may also send its in-dialog requests from (see
    /// [`Leg::signals_from`]).
    pub trusted: Vec<IpNet>,
    /// SDES toward the peer: its policy, our open offer, the keys settled.
    pub srtp: LegSrtp,
}

/// SRTP keyed by SDES toward a leg's peer (RFC 4568; `media::sdes` decides, `media::srtp`
/// encrypts). A leg whose policy is `Disabled` (every agent leg) never has keys.
#[derive(Debug, Default)]
pub struct LegSrtp {
    /// The trunk's (or transfer destination's) `media.encryption`.
    pub policy: Encryption,
    /// Our `a=crypto` lines in the offer the peer has not answered yet, and whether that
    /// offer said RTP/SAVP.
    pub offered: Option<(bool, Vec<Crypto>)>,
    /// The peer's audio profile is RTP/SAVP(F): what our answers and re-offers to it say.
    pub savp: bool,
    /// The keys settled with the peer: its side of the relay decrypts with `remote` and
    /// encrypts with `local`.
    pub keys: Option<SrtpKeys>,
}

impl LegSrtp {
    pub fn new(policy: Encryption) -> LegSrtp {
        LegSrtp { policy, ..LegSrtp::default() }
    }

    /// What an SDP toward the peer says once media is settled (answers, re-offers): our one
    /// line under the peer's profile, or `None` for plain RTP.
    pub fn settled(&self) -> Option<(bool, Vec<Crypto>)> {
        self.keys.as_ref().map(|keys| (self.savp, vec![keys.local.clone()]))
    }
}

/// A dialed leg's digest toward its peer (a carrier's 401/407, RFC 3261 §22.2).
#[derive(Debug, Default)]
pub struct LegAuth {
    /// `None`: the peer trusts our address; a challenge then fails the leg.
    pub credentials: Option<crate::config::secret::BasicAuth>,
    /// Challenges answered on this leg.
    pub answered: u8,
    /// The last answer (`Authorization` or `Proxy-Authorization` and its value), sent with
    /// the INVITE again.
    pub header: Option<(&'static str, String)>,
}

impl Leg {
    /// Whether a request's dialog identifiers are this leg's (RFC 3261 §12.2.2): its Call-ID,
    /// the peer's tag in From and ours in To. Both tags are required: a request without our To
    /// tag names no dialog (its sender never saw our answer), and a peer whose tag we do not
    /// know has no dialog with us yet.
    pub fn owns(&self, call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> bool {
        let d = &self.dialog;
        call_id == d.call_id
            && from_tag.is_some()
            && from_tag == d.remote_tag.as_deref()
            && to_tag == Some(d.local_tag.as_str())
    }

    /// Whether `source` is where this leg's peer signals from: the leg's trust zone (the
    /// listener it faces), a transport at least as strong as the leg's (a datagram, whose
    /// source can be forged, never speaks for a TCP or TLS leg), and an address of the peer
    /// ([`Leg::peer_addresses`]) or of `trusted` (the networks the peer may also send from:
    /// an inbound trunk's `allowedAddresses`, the agent networks). On TCP and TLS the address
    /// was proven by the handshake, so a new connection from the peer's address (a carrier
    /// that reconnected) is the peer too.
    pub fn signals_from(&self, source: &Source, trusted: &[IpNet]) -> Result<(), Mismatch> {
        let target = &self.dialog.target;
        if source.zone != target.zone {
            return Err(Mismatch::WrongZone);
        }
        if strength(source.protocol) < strength(target.protocol) {
            return Err(Mismatch::WeakerTransport);
        }
        if source.connection.is_some() && source.connection == target.connection {
            return Ok(());
        }
        let ip = source.remote.ip().to_canonical();
        let known = self.peer_addresses().any(|a| a == ip);
        if known || trusted.iter().chain(&self.trusted).any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(Mismatch::WrongSource)
        }
    }

    /// The addresses the peer of this leg signals from, as the leg knows them: where its
    /// messages go (the source of a UAS leg's INVITE, the resolved address of a UAC leg), and
    /// for a UAC leg the IP addresses in the Contact and first Record-Route of the peer's
    /// answer (a carrier's edge that sends the BYE from the address it put there). A UAS leg's
    /// INVITE Contact and Record-Route are not taken: whoever forged the INVITE wrote them.
    pub fn peer_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let d = &self.dialog;
        let learned = match self.side {
            Side::Uac => Some(
                std::iter::once(d.remote_target.as_str())
                    .chain(d.route_set.first().map(String::as_str))
                    .filter_map(ip_of_uri),
            ),
            Side::Uas => None,
        };
        std::iter::once(d.target.remote.ip().to_canonical()).chain(learned.into_iter().flatten())
    }

    /// Whether a new request's CSeq `cseq` is in order (RFC 3261 §12.2.2: a request with a
    /// lower CSeq than the last one from the peer is out of order; an equal one with a new
    /// branch is not a retransmission, so it is refused too). Records it when it is.
    pub fn take_cseq(&mut self, cseq: u32) -> Result<(), Mismatch> {
        match self.remote_cseq {
            Some(last) if cseq <= last => Err(Mismatch::OutOfOrder),
            _ => {
                self.remote_cseq = Some(cseq);
                Ok(())
            }
        }
    }
}

/// Why an in-dialog request was not taken by the call. Each is answered as RFC 3261 §12.2.2
/// says, and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// No leg has its Call-ID and both tags.
    NoDialog,
    /// It came on the other zone's listener than the leg's (the carrier-facing one for an agent
    /// leg, or the reverse).
    WrongZone,
    /// Over UDP for a TCP or TLS leg.
    WeakerTransport,
    /// Not from the leg's peer: another address, outside the networks it may send from.
    WrongSource,
    /// Its CSeq is not above the last one of the peer.
    OutOfOrder,
}

impl Mismatch {
    /// The answer: 500 for a CSeq out of order, 481 for the rest. A request from the wrong
    /// zone or source gets 481 and not 403: for its sender there is no such dialog, and a 403
    /// would tell a prober that the Call-ID and tags it tried are right.
    pub fn status_code(self) -> u16 {
        match self {
            Mismatch::OutOfOrder => 500,
            _ => 481,
        }
    }

    /// Every mismatch, for metrics that exist from the start.
    pub const ALL: [Mismatch; 5] = [
        Mismatch::NoDialog,
        Mismatch::WrongZone,
        Mismatch::WeakerTransport,
        Mismatch::WrongSource,
        Mismatch::OutOfOrder,
    ];

    /// The metric label (`trunkline_dialog_refusals_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Mismatch::NoDialog => "no_dialog",
            Mismatch::WrongZone => "wrong_zone",
            Mismatch::WeakerTransport => "weaker_transport",
            Mismatch::WrongSource => "wrong_source",
            Mismatch::OutOfOrder => "out_of_order",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::NoDialog => "no such dialog",
            Mismatch::WrongZone => "the other zone's listener",
            Mismatch::WeakerTransport => "a weaker transport than the leg's",
            Mismatch::WrongSource => "not the leg's peer address",
            Mismatch::OutOfOrder => "CSeq out of order",
        }
    }
}

/// UDP < TCP < TLS: what a request's transport proves about its source.
fn strength(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp => 0,
        Protocol::Tcp => 1,
        Protocol::Tls => 2,
    }
}

/// The IP address of a URI's host (`sip:x@192.0.2.1:5060`, `<sip:[2001:db8::1];lr>`), when it
/// is one.
fn ip_of_uri(uri: &str) -> Option<IpAddr> {
    let uri = NameAddr::parse(uri).map(|n| n.uri).unwrap_or_else(|| uri.to_string());
    let host = SipUri::parse(&uri)?.host;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The random identifiers a call makes: tags, Call-IDs, branches, session ids. Drawn from the
/// thread's generator in production (a CSPRNG seeded from the OS, no system call; the call keeps
/// no generator of its own, which would be 320 bytes of every held call), from a generator with
/// a fixed seed in transcript tests, so that a test run is the same every time.
#[derive(Debug)]
pub struct Ids(Option<Box<StdRng>>);

impl Ids {
    /// From the thread's generator.
    pub fn random() -> Ids {
        Ids(None)
    }

    pub fn seeded(seed: u64) -> Ids {
        Ids(Some(Box::new(StdRng::seed_from_u64(seed))))
    }

    fn draw<T>(&mut self, f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
        match &mut self.0 {
            Some(seeded) => f(seeded.as_mut()),
            None => f(&mut rand::rng()),
        }
    }

    /// `len` lowercase alphanumerics.
    pub fn token(&mut self, len: usize) -> String {
        self.draw(|rng| {
            (0..len)
                .map(|_| {
                    let i = rng.random_range(0..36u8);
                    char::from(if i < 10 { b'0' + i } else { b'a' + i - 10 })
                })
                .collect()
        })
    }

    /// A branch for a request we send (RFC 3261 §8.1.1.7).
    pub fn branch(&mut self) -> String {
        format!("{MAGIC_COOKIE}{}", self.token(20))
    }

    pub fn origin(&mut self) -> LegOrigin {
        LegOrigin::new(self.draw(|rng| rng.random::<u32>()).into())
    }
}
