//! The legs of a call: who is on each one (its [`Role`]), who started it ([`Side`]), where its
//! INVITE is ([`Phase`]) and the dialog state needed to send requests in it ([`Dialog`]).

use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::media::relay::Leg as RelaySide;
use crate::media::sdp::LegOrigin;
use crate::sip::msg::{Method, NameAddr, Request, name};
use crate::sip::transaction::{ClientKey, MAGIC_COOKIE, ServerKey};
use crate::sip::transport::{Protocol, Target};

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
    /// (Record-Route, Max-Forwards and `X-*` headers come from it).
    pub invite: LegInvite,
    pub invite_request: Option<Request>,
    /// UAC: no answer of any kind by then (the peer is not there), or ringing too long.
    pub deadline: Option<Instant>,
    /// UAC: the digest credentials this leg answers its peer's 401/407 with.
    pub auth: LegAuth,
    /// UAC: headers of our INVITE beside the dialog's own (session headers, the `X-*` headers
    /// that travel to this peer).
    pub invite_headers: Vec<(String, String)>,
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
    /// Whether a request's dialog identifiers (Call-ID, tags) are this leg's.
    pub fn owns(&self, call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> bool {
        let d = &self.dialog;
        if call_id != d.call_id {
            return false;
        }
        match self.side {
            // The peer's requests carry its From tag; ours in To once we sent one.
            Side::Uas => {
                from_tag == d.remote_tag.as_deref()
                    && (to_tag.is_none() || to_tag == Some(d.local_tag.as_str()))
            }
            Side::Uac => {
                (d.remote_tag.is_none() || from_tag == d.remote_tag.as_deref())
                    && to_tag == Some(d.local_tag.as_str())
            }
        }
    }
}

/// The random identifiers a call makes: tags, Call-IDs, branches, session ids. Seeded once per
/// call (from the thread's generator in production, from a fixed seed in transcript tests, so that
/// a test run is the same every time).
#[derive(Debug)]
pub struct Ids(StdRng);

impl Ids {
    /// Seeded from the thread's generator (itself seeded from the OS), without a system call.
    pub fn random() -> Ids {
        Ids(StdRng::from_rng(&mut rand::rng()))
    }

    pub fn seeded(seed: u64) -> Ids {
        Ids(StdRng::seed_from_u64(seed))
    }

    /// `len` lowercase alphanumerics.
    pub fn token(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| {
                let i = self.0.random_range(0..36u8);
                char::from(if i < 10 { b'0' + i } else { b'a' + i - 10 })
            })
            .collect()
    }

    /// A branch for a request we send (RFC 3261 §8.1.1.7).
    pub fn branch(&mut self) -> String {
        format!("{MAGIC_COOKIE}{}", self.token(20))
    }

    pub fn origin(&mut self) -> LegOrigin {
        LegOrigin::new(self.0.random::<u32>().into())
    }
}
