//! The call: a sans-IO back-to-back user agent (DESIGN §4). A [`Call`] owns its legs, their
//! dialogs and transactions, and is driven only by what happens to it — a SIP message
//! ([`Call::on_message`]), the clock ([`Call::on_timer`]), the relay ([`Call::on_media_event`]),
//! a name lookup ([`Call::on_resolved`]), a failed send ([`Call::on_send_error`]) — each of
//! which returns the [`Action`]s the driver carries out, in order. It reads no clock, opens no
//! socket and spawns nothing: the driver (`call::driver`) does, and transcript tests
//! (`tests.rs`) play scripted message sequences against it, as `sip::transaction` is tested.
//!
//! A call is a list of [`Leg`]s with [`Role`]s. The leg whose INVITE starts the call is its
//! origin (we are its UAS); the call dials a second leg (we are its UAC); the two are bridged:
//! requests in one dialog (BYE, re-INVITE, UPDATE, INFO) go to the other, and so do responses.
//! An inbound call starts on a carrier leg and dials the agent; an outbound call is the same
//! machine started on an agent leg; a transfer adds a third leg and moves the bridge.
//!
//! What it relays and decides (the behaviour the sipp suites check on the wire):
//! - provisional responses (180, 183 with SDP) and the final response of the dialed leg to the
//!   origin, failures mapped: 486/600 relayed, 5xx and auth challenges become 503, no response
//!   at all is an unreachable peer (503), ringing past the ring timeout is 480 (leg cancelled);
//! - ACK for 2xx on each leg (a 2xx we send retransmitted until its ACK, RFC 3261 §13.3.1.4);
//!   CANCEL of the origin before the answer (200 to the CANCEL, 487 to the INVITE, CANCEL to
//!   the dialed leg once it sent a provisional, RFC 3261 §9.1; a 2xx that crosses the CANCEL
//!   gets ACK and BYE);
//! - BYE from either side; re-INVITE, UPDATE and INFO passed to the other leg with their SDP
//!   rewritten to the relay, and their responses passed back; glare answered 491; OPTIONS in
//!   the dialog answered here; the media timeout and hold.
//!
//! What it takes as a request of a dialog (RFC 3261 §12.2.2; the front door routes by Call-ID
//! only): the leg's Call-ID with the peer's tag in From and ours in To ([`Leg::owns`]), a CSeq
//! above the peer's last one (else 500), from the leg's zone, over a transport at least as
//! strong as the leg's, from the leg's peer address or the networks it may also use
//! ([`Leg::signals_from`]). Anything else gets 481 and changes nothing; an ACK that is not the
//! dialog's is absorbed without an answer, so our 2xx goes on until its real ACK or 64·T1.

mod bridge;
mod dialog;
mod flow;
pub mod leg;
mod media;
mod session;
mod transfer;
mod tx;

#[cfg(test)]
mod dialog_tests;
#[cfg(test)]
mod media_tests;
#[cfg(test)]
mod script;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;

use crate::config::model::{Codec, Encryption};
use crate::media::codec::{Chosen, Negotiated};
use crate::media::relay::{Leg as RelaySide, Silent};
use crate::media::sdp::{OwnAddresses, Sdp};
use crate::observe::metrics::Outcome;
use crate::sip::msg::{Message, Request};
use crate::sip::transaction::{ClientKey, ServerKey, Timers};
use crate::sip::transport::{Source, Target};

pub use bridge::{TransferRequest, user_of};
use leg::LegInvite;
pub use leg::{Dialog, Ids, Leg, LegAuth, LegId, LegSrtp, Mismatch, Phase, Role, Side};
pub use transfer::{TransferContext, TransferRecord};
use tx::{ClientTx, Pending2xx, ServerTx, TxMap};

/// No answer of any kind from a dialed peer within this time: it is unreachable.
pub const FIRST_RESPONSE: Duration = Duration::from_secs(8);
/// How long a bridged transfer's destination may ring: a little under the 30-35 s after which
/// most phones and PBXs send the call to voicemail, so the agent hears "no answer" instead.
pub const TRANSFER_RING: Duration = Duration::from_secs(30);
/// After the call ends, how long it stays to absorb retransmissions (64·T1).
pub const LINGER: Duration = Duration::from_secs(32);

/// The final answers of a carrier host after which an outbound call tries the trunk's next
/// host (RFC 3263 §4.3 names 503; the others also say "this server, not the callee"): 408
/// Request Timeout, 500 Server Internal Error, 503 Service Unavailable, 504 Server Time-out.
/// 480 Temporarily Unavailable is not on it: it speaks of the callee, whom another edge of the
/// same carrier would not reach either, and trying again would ring them twice.
pub const FAILOVER_STATUSES: [u16; 4] = [408, 500, 503, 504];
/// At most this many hosts are tried for one call, the first included: with the 8 s of
/// [`FIRST_RESPONSE`] each, an agent whose carrier is all down hears so within half a minute.
pub const MAX_ATTEMPTS: usize = 4;
/// No host is tried after this long since the call started: the agent's INVITE has waited long
/// enough, and the agent runtime may give up on it (many do at 30 s).
pub const FAILOVER_WITHIN: Duration = Duration::from_secs(20);

/// Allowed methods, for `Allow` headers (RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REFER, NOTIFY";

/// What a call is told at its start and keeps.
#[derive(Clone, Debug)]
pub struct CallConfig {
    /// The `Server`/`User-Agent` value.
    pub user_agent: String,
    /// How long a dialed leg may ring before it is given up.
    pub ring_timeout: Duration,
    /// How long a bridged transfer's destination may ring before the transfer fails.
    pub transfer_timeout: Duration,
    /// How long a dialed peer has to answer at all (even 100 Trying).
    pub first_response: Duration,
    /// No RTP from a leg of an answered call for this long ends the call (the relay watches).
    pub media_timeout: Duration,
    /// How long hold suspends the media timeout (`--max-hold`); `None`: the whole hold.
    pub max_hold: Option<Duration>,
    /// The smallest session interval accepted (`Min-SE`, RFC 4028; 90 s by the RFC).
    pub min_session_expires: u32,
    /// The longest an answered call may last (`--max-call-duration`), a ceiling for the
    /// trunks' own `limits.maxCallDurationSeconds`; `None`: no ceiling.
    pub max_call_duration: Option<Duration>,
    /// The carrier-facing address is a NAT's or load balancer's: relay ports facing carriers
    /// bind every local address.
    pub public_address: Option<IpAddr>,
    pub timers: Timers,
    pub linger: Duration,
    /// The agent runtime's networks (`--agent-networks`): an agent leg's peer may send its
    /// in-dialog requests from any address in them (the pods behind a Service answer from their
    /// own addresses, not the one we sent to).
    pub agent_networks: Vec<IpNet>,
    /// The gateway's own media targets, for the `c=` rules on a carrier's re-offers and
    /// answers (issue 15): SDP pointing the relay there is refused.
    pub own_addresses: OwnAddresses,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            user_agent: format!("trunkline/{}", env!("CARGO_PKG_VERSION")),
            ring_timeout: Duration::from_secs(60),
            transfer_timeout: TRANSFER_RING,
            first_response: FIRST_RESPONSE,
            media_timeout: Duration::from_secs(30),
            max_hold: None,
            min_session_expires: crate::sip::session_timer::RFC_MIN_SE,
            max_call_duration: None,
            public_address: None,
            timers: Timers::default(),
            linger: LINGER,
            agent_networks: Vec::new(),
            own_addresses: OwnAddresses::default(),
        }
    }
}

/// An offer that passed the codec policy.
#[derive(Clone, Debug)]
pub struct MediaOffer {
    /// The offer as it goes to the dialed leg (codecs filtered; addresses rewritten by the call).
    pub sdp: Sdp,
    pub negotiated: Negotiated,
    /// The origin sent no offer: this one is the gateway's, the origin's answer comes in its
    /// ACK.
    pub delayed: bool,
}

/// Where a dialed leg's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An address: nothing to look up.
    Address(SocketAddr),
    /// A host name: the driver looks it up ([`Action::Resolve`]).
    Lookup { host: String, port: u16 },
    /// A carrier host given as a DNS name with no port (RFC 3263 §4.2): the driver asks DNS
    /// for the SRV records of `service` (`_sip._udp.HOST`) and the address of the first target,
    /// or of `host`:`port` when there are none ([`Action::ResolveSrv`]); the other targets
    /// become the leg's next alternates.
    Srv { service: String, host: String, port: u16 },
}

/// The origin leg of a new call: the INVITE we answer, and our dialog state toward it.
#[derive(Debug)]
pub struct Origin {
    pub role: Role,
    pub invite: Request,
    pub source: Source,
    /// Our address on this leg (Via, Contact, SDP).
    pub local: SocketAddr,
    /// Networks the origin's peer may also send its in-dialog requests from, beside its
    /// INVITE's source address: an inbound trunk's `allowedAddresses` (a carrier with several
    /// edge nodes whose BYE comes from another one).
    pub trusted: Vec<IpNet>,
    /// SDES toward the origin: the trunk's policy and, when its offer was SRTP, the keys the
    /// front door settled (`media::sdes::answer_offer`).
    pub srtp: LegSrtp,
}

/// Another host a dialed leg may be sent to when the first does not answer or answers one of
/// [`FAILOVER_STATUSES`] (RFC 3263 §4.3): the same INVITE (Call-ID, From tag, a CSeq one
/// higher) in a new client transaction to this Request-URI and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternate {
    /// The Request-URI and To of the INVITE toward it.
    pub uri: String,
    pub protocol: crate::sip::transport::Protocol,
    pub destination: Destination,
}

/// What is left to try for the dialed leg: hosts in order, and how many were tried.
#[derive(Debug)]
struct Failover {
    leg: LegId,
    next: std::collections::VecDeque<Alternate>,
    tried: usize,
}

/// The leg a new call dials.
#[derive(Debug)]
pub struct Dial {
    pub role: Role,
    /// Our dialog toward it, before it answers (Call-ID, our tag and URIs, the target's
    /// protocol and our address).
    pub dialog: Dialog,
    pub destination: Destination,
    /// Headers of the INVITE beside the dialog's own (the session headers, the `X-*` headers
    /// that travel).
    pub headers: Vec<(String, String)>,
    /// Digest credentials for the peer's challenges (a carrier's 401/407); `None`: the peer
    /// trusts our address.
    pub credentials: Option<crate::config::secret::BasicAuth>,
    /// Other hosts to try, in order, when `destination` fails (an outbound call through a
    /// trunk with several hosts); empty for every other leg.
    pub alternates: Vec<Alternate>,
    /// SRTP toward the peer (a carrier's trunk `media.encryption`; `Disabled` for agents).
    pub encryption: Encryption,
}

/// Everything decided about a call before it starts.
#[derive(Debug)]
pub struct Setup {
    pub session_id: String,
    pub origin: Origin,
    pub dial: Dial,
    pub offer: Option<MediaOffer>,
    /// The codecs of the trunk, for offers inside the call.
    pub codecs: Vec<Codec>,
    /// What the call's transfers are decided with (`None`: the agent cannot transfer).
    pub transfer: Option<TransferContext>,
    /// The trunk's `limits.maxCallDurationSeconds`: the call is hung up that long after its
    /// answer (or at the gateway's ceiling, whichever is shorter).
    pub max_duration: Option<Duration>,
}

/// A call the gateway places itself (the call API, third-party call control as in RFC 3725
/// flow I): it dials `first` (the carrier) with the gateway's offer on the relay; when that
/// answers, it dials `then` (the agent runtime) offering the codec `first` chose, on the
/// relay's other side, and bridges the two. No re-INVITE is needed: the relay's ports are the
/// ones the first leg was offered.
#[derive(Debug)]
pub struct Placed {
    pub session_id: String,
    pub first: Dial,
    pub then: Dial,
    /// The gateway's offer to `first` (`media::codec::gateway_offer` of the trunk's codecs).
    pub offer: MediaOffer,
    pub codecs: Vec<Codec>,
    pub transfer: Option<TransferContext>,
    /// As [`Setup::max_duration`].
    pub max_duration: Option<Duration>,
}

/// The SIP peer a side of the relay faces: whether it is a carrier, and the IP its requests
/// come from (an origin) or ours go to (a dialed leg), when known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayPeer {
    pub carrier: bool,
    pub signalling: Option<IpAddr>,
}

/// What the driver does for a call, in the order given.
#[derive(Debug)]
pub enum Action {
    /// Send a message (serialised once; retransmissions are the same bytes) on a leg.
    /// `client`: the transaction it belongs to, to report a failed send to
    /// ([`Call::on_send_error`]).
    Send { leg: LegId, target: Target, bytes: Bytes, client: Option<ClientKey> },
    /// Messages with this Call-ID belong to this call from now on.
    Listen { call_id: String },
    /// Look up the address of a dialed leg's host; answer with [`Call::on_resolved`].
    Resolve { leg: LegId, host: String, port: u16 },
    /// Look up the SRV records of a dialed leg's host (RFC 3263 §4.2), order their targets
    /// (RFC 2782), and the address of the first; answer with [`Call::on_srv_resolved`]. With no
    /// records (or a failed query): `host`:`port`, as [`Action::Resolve`].
    ResolveSrv { leg: LegId, service: String, host: String, port: u16 },
    /// Start the RTP relay, its side A bound on `a`, side B on `b`; answer with
    /// [`Call::on_media_event`] (`Started` or `StartFailed`).
    /// `peers`: side A's and side B's SIP peer, for the relay's source guard (a carrier's
    /// side is strict: only its own addresses may latch it). `max_hold`: how long hold
    /// suspends the media timeout.
    StartRelay {
        a: IpAddr,
        b: IpAddr,
        media_timeout: Duration,
        max_hold: Option<Duration>,
        peers: [RelayPeer; 2],
    },
    /// Change the relay.
    UpdateRelay(RelayUpdate),
    /// A bridged transfer: build the leg to its destination (the destination's trunk, its
    /// limits, our addresses); answer with [`Call::on_transfer_dial`].
    PrepareTransfer(TransferRequest),
    /// A bridged transfer's leg needs its own relay ports (a spare beside side B), bound on
    /// `bind`; answer with [`Call::on_media_event`] (`TransferMediaStarted` or
    /// `TransferMediaFailed`). `peer`: the transfer leg's SIP peer, for the spare's source
    /// guard (a carrier-facing destination is strict as a carrier's side is, with its trunk's
    /// media allowlist; side B keeps that guard once the spare takes its place).
    StartTransferMedia { bind: IpAddr, peer: RelayPeer },
    /// Something to count and log.
    Record(Record),
    /// The call is over (once): free its slot and stop the relay. The call stays for
    /// retransmissions until [`Call::is_done`].
    End(Ended),
}

/// A change to the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayUpdate {
    /// Where a side's peer wants media now.
    Remote { side: RelaySide, remote: Option<SocketAddr> },
    /// Hold (no media is owed: the media timeout is suspended) or not.
    Hold(bool),
    /// Where the transfer leg's peer wants media (its early or final SDP answer).
    SpareRemote(Option<SocketAddr>),
    /// The transfer leg answered: its ports take side B's place, with this remote; side B's
    /// old ports (the agent's) close.
    PromoteSpare(Option<SocketAddr>),
    /// The transfer failed: its ports go back.
    DropSpare,
    /// The SRTP keys of a side's peer (SDES, settled or renewed by an offer and its answer),
    /// or `None` for plain RTP. Boxed: most calls never send it.
    Srtp { side: RelaySide, keys: Option<Box<crate::media::srtp::SrtpKeys>> },
    /// The SRTP keys of the transfer leg's peer, while its ports are the relay's spare.
    SpareSrtp(Option<Box<crate::media::srtp::SrtpKeys>>),
    /// A side's SIP peer is now this IP (a carrier leg failed over to another host): the side's
    /// guard admits its media instead of the first host's.
    Signalling { side: RelaySide, ip: Option<IpAddr> },
}

/// The carrier host that answered an outbound call: the name dialed (`host:port`, an SRV
/// target's included; the address itself for a host given as an address) and the address its
/// INVITE went to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnsweredBy {
    pub host: String,
    pub address: SocketAddr,
}

/// A fact about the call for metrics, logs and (later) the session record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The dialed leg answered and the origin got its 2xx; `srtp`: the suite of the leg that
    /// speaks SRTP (the carrier's), if one does; `carrier`: the carrier host that answered (an
    /// outbound call's).
    Answered {
        setup: Duration,
        codec: Option<Codec>,
        srtp: Option<crate::media::sdes::Suite>,
        carrier: Option<AnsweredBy>,
    },
    /// A dialed peer refused our digest answer (it challenged again), or challenged a leg that
    /// has no credentials, or sent a challenge we cannot answer.
    AuthRefused { role: Role, reason: String },
    /// The agent asked for a transfer: where, how, and what came of it.
    Transfer(TransferRecord),
    /// An in-dialog request that is not the dialog's, refused without effect.
    DialogRefused(Mismatch),
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// `None` when the call ended for nothing worth counting twice.
    pub outcome: Option<Outcome>,
    pub duration: Duration,
    /// Why the gateway ended it (media timeout, a bad answer...), `None` for a hang-up.
    pub reason: Option<String>,
    /// Who ended an answered call: the role of the leg whose BYE ended it, or `None` when the
    /// gateway did (a timeout, a transfer, the call API) or the call was never answered.
    pub hung_up_by: Option<Role>,
}

/// What the relay reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The relay runs; its local ports facing side A and side B.
    Started { a: u16, b: u16 },
    /// No relay (no ports left, a bind failed): the call is refused with `status`.
    StartFailed { status: u16, reason: String },
    /// No RTP for `after` from the silent side(s) of an answered call.
    Timeout { silent: Silent, after: Duration },
    /// The transfer leg's ports are bound; our RTP port on them.
    TransferMediaStarted { port: u16 },
    /// No ports for the transfer leg: the transfer fails, the call goes on.
    TransferMediaFailed { reason: String },
}

/// Where the whole call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The origin has no final answer yet.
    Setup,
    /// Both legs answered and bridged.
    Answered,
    /// Over on every leg; lingering for retransmissions.
    Ended,
}

/// The relay, as far as the call knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    /// The call relays no media (no SDP offer).
    None,
    /// Asked for; the dialed leg waits for it.
    Starting,
    /// Running, with its local ports facing side A and side B.
    Running { a: u16, b: u16 },
    /// Stopped with the call.
    Stopped,
}

impl Relay {
    fn port(self, side: RelaySide) -> Option<u16> {
        match (self, side) {
            (Relay::Running { a, .. }, RelaySide::A) => Some(a),
            (Relay::Running { b, .. }, RelaySide::B) => Some(b),
            _ => None,
        }
    }
}

/// A call in progress.
#[derive(Debug)]
pub struct Call {
    /// Shared by the gateway's calls (one copy, not one per call).
    config: Arc<CallConfig>,
    ids: Ids,
    session_id: String,
    legs: Vec<Leg>,
    /// The two legs whose dialogs and media are joined: in-dialog requests of one go to the
    /// other.
    bridge: [LegId; 2],
    servers: TxMap<ServerKey, ServerTx>,
    clients: TxMap<ClientKey, ClientTx>,
    pending_2xx: Vec<Pending2xx>,
    /// A call the gateway places: where its second leg goes, until the first answers.
    then: Option<Destination>,
    /// The dialed carrier leg's other hosts, while the call is being set up.
    failover: Option<Failover>,
    /// The name (`host:port`) of the carrier host the carrier leg was last sent to, for the
    /// session record.
    carrier_host: Option<Box<str>>,
    /// What the agent's transfers are decided with.
    transfer: Option<TransferContext>,
    /// A transfer passed on to the caller's side, until it ends.
    referring: Option<transfer::Referring>,
    /// A bridged transfer in progress: the leg the gateway dials, until it answers or fails.
    /// Boxed, as the other parts only a few calls use: a held call carries a pointer.
    bridging: Option<Box<bridge::Bridging>>,
    /// Every transfer the agent asked for, in order (for the session record).
    transfers: Vec<TransferRecord>,
    codecs: Vec<Codec>,
    /// The origin's offer after the codec policy, or the gateway's own for a delayed offer;
    /// until the call is set up.
    offer: Option<Box<MediaOffer>>,
    /// Delayed offer: what the 2xx offered the origin, until its ACK brings the answer.
    late_offer: Option<Negotiated>,
    /// What the dialed leg's answer settled on.
    chosen: Option<Chosen>,
    relay: Relay,
    /// Offers relayed in re-INVITE/UPDATE, by the server transaction they came in.
    reoffers: TxMap<ServerKey, media::Reoffer>,
    state: State,
    started: Instant,
    /// The trunk's and the gateway's limit on the answered call's length, the shorter.
    max_duration: Option<Duration>,
    /// When the answered call reaches it.
    ends_at: Option<Instant>,
    /// Session timers (RFC 4028), per leg: who refreshes, the interval, when it is over
    /// without another refresh (`session`). Only legs still bridged count.
    sessions: Vec<session::Session>,
    linger_until: Option<Instant>,
    outcome: Option<Outcome>,
    /// Why the call ended, when the gateway ended it.
    hangup_reason: Option<String>,
    /// The role of the leg whose BYE ended the answered call.
    hung_up_by: Option<Role>,
    out: Vec<Action>,
}

impl Call {
    /// The origin leg of every call: the first one.
    const ORIGIN: LegId = LegId(0);

    /// A new call: the origin's INVITE gets its transaction and 100 Trying, the dialed leg is
    /// looked up (or, with an address, set up: relay, then INVITE).
    pub fn start(
        now: Instant,
        config: impl Into<Arc<CallConfig>>,
        mut ids: Ids,
        setup: Setup,
    ) -> (Call, Vec<Action>) {
        let Setup { session_id, origin, mut dial, offer, codecs, transfer, max_duration } = setup;
        let origin_leg = flow::origin_leg(&mut ids, origin);
        let alternates = std::mem::take(&mut dial.alternates);
        let (mut dialed, destination) = dialed_leg(LegId(1), dial, &mut ids);
        ask_session_timer(&mut dialed);
        let legs = [origin_leg, dialed];
        let mut call = Call::assemble(now, config.into(), ids, session_id, legs, offer, codecs);
        call.transfer = transfer;
        call.max_duration = shorter(call.config.max_call_duration, max_duration);
        call.failover = Failover::of(LegId(1), alternates);
        call.begin(now, destination);
        let actions = call.take();
        (call, actions)
    }

    /// A call the gateway places (see [`Placed`]): the first leg is looked up (or, with an
    /// address, the relay starts and it is invited).
    pub fn place(
        now: Instant,
        config: impl Into<Arc<CallConfig>>,
        ids: Ids,
        placed: Placed,
    ) -> (Call, Vec<Action>) {
        let Placed { session_id, mut first, then, offer, codecs, transfer, max_duration } = placed;
        let mut ids = ids;
        let alternates = std::mem::take(&mut first.alternates);
        let (mut first, first_destination) = dialed_leg(LegId(0), first, &mut ids);
        let (mut then, then_destination) = dialed_leg(LegId(1), then, &mut ids);
        ask_session_timer(&mut first);
        ask_session_timer(&mut then);
        let legs = [first, then];
        let mut call =
            Call::assemble(now, config.into(), ids, session_id, legs, Some(offer), codecs);
        call.then = Some(then_destination);
        call.failover = Failover::of(LegId(0), alternates);
        call.transfer = transfer;
        call.max_duration = shorter(call.config.max_call_duration, max_duration);
        call.look_up(now, LegId(0), first_destination);
        let actions = call.take();
        (call, actions)
    }

    /// A call in `Setup` with its two legs bridged, before anything is sent.
    fn assemble(
        now: Instant,
        config: Arc<CallConfig>,
        ids: Ids,
        session_id: String,
        legs: [Leg; 2],
        offer: Option<MediaOffer>,
        codecs: Vec<Codec>,
    ) -> Call {
        Call {
            config,
            ids,
            session_id,
            legs: legs.into(),
            bridge: [LegId(0), LegId(1)],
            servers: TxMap::default(),
            clients: TxMap::default(),
            pending_2xx: Vec::new(),
            then: None,
            failover: None,
            carrier_host: None,
            transfer: None,
            referring: None,
            bridging: None,
            transfers: Vec::new(),
            codecs,
            offer: offer.map(Box::new),
            late_offer: None,
            chosen: None,
            relay: Relay::None,
            reoffers: TxMap::default(),
            state: State::Setup,
            started: now,
            max_duration: None,
            ends_at: None,
            sessions: Vec::new(),
            linger_until: None,
            outcome: None,
            hangup_reason: None,
            hung_up_by: None,
            out: Vec::new(),
        }
    }

    /// Ends the call from outside (the call API's `DELETE`): an answered call gets BYE on both
    /// legs; one being set up has its pending legs cancelled and its answered ones hung up.
    pub fn hang_up(&mut self, now: Instant, reason: &str) -> Vec<Action> {
        match self.state {
            State::Answered => {
                self.hangup_reason = Some(reason.to_string());
                self.hang_up_both(now);
            }
            State::Setup => {
                self.hangup_reason = Some(reason.to_string());
                self.fail_origin(now, 487, Outcome::Cancelled);
            }
            State::Ended => {}
        }
        self.take()
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn leg(&self, id: LegId) -> &Leg {
        &self.legs[id.0]
    }

    /// Every leg, in the order the call made them.
    pub fn legs(&self) -> impl Iterator<Item = &Leg> {
        self.legs.iter()
    }

    /// The transfers the agent asked for so far, in order.
    pub fn transfers(&self) -> &[TransferRecord] {
        &self.transfers
    }

    /// The Call-IDs of the call's legs (the driver routes messages by them).
    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.legs.iter().map(|l| l.dialog.call_id.as_str())
    }

    /// A message for this call (found by its Call-ID), from `source`.
    pub fn on_message(&mut self, now: Instant, message: Message, source: Source) -> Vec<Action> {
        match message {
            Message::Request(r) => self.on_request(now, r, source),
            Message::Response(r) => self.on_response(now, r),
        }
        self.take()
    }

    /// The time came for [`Call::next_deadline`].
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        self.timers_due(now);
        self.take()
    }

    /// The relay reports.
    pub fn on_media_event(&mut self, now: Instant, event: MediaEvent) -> Vec<Action> {
        match event {
            MediaEvent::Started { a, b } => self.relay_started(now, a, b),
            MediaEvent::StartFailed { status, reason } => {
                tracing::warn!(session = %self.session_id, error = %reason, "no RTP relay for the call");
                self.relay = Relay::None;
                self.fail_origin(now, status, Outcome::Failed);
            }
            MediaEvent::Timeout { silent, after } => self.media_timeout(now, silent, after),
            MediaEvent::TransferMediaStarted { port } => self.transfer_media_started(now, port),
            MediaEvent::TransferMediaFailed { reason } => {
                tracing::warn!(session = %self.session_id, error = %reason, "no RTP ports for the transfer leg");
                self.bridge_failed(now, 503, "no RTP ports for the transfer leg");
            }
        }
        self.take()
    }

    /// The address of a dialed leg's host, or why there is none.
    pub fn on_resolved(
        &mut self,
        now: Instant,
        leg: LegId,
        address: Result<SocketAddr, String>,
    ) -> Vec<Action> {
        if self.is_bridging(leg) {
            self.transfer_resolved(now, leg, address);
            return self.take();
        }
        self.resolved_or_failed(now, leg, address);
        self.take()
    }

    /// The SRV targets of a dialed leg's host ([`Action::ResolveSrv`]), in the order to try
    /// them (`host`:`port` alone when it has none), and the address of the first: the leg goes
    /// there, the others are its next alternates (within [`MAX_ATTEMPTS`]).
    pub fn on_srv_resolved(
        &mut self,
        now: Instant,
        leg: LegId,
        targets: Vec<(String, u16)>,
        address: Result<SocketAddr, String>,
    ) -> Vec<Action> {
        if self.is_bridging(leg) {
            self.transfer_resolved(now, leg, address);
            return self.take();
        }
        self.srv_resolved(now, leg, targets, address);
        self.take()
    }

    /// A dialed leg's address, or why there is none: the next host when one is left, else the
    /// call fails.
    fn resolved_or_failed(
        &mut self,
        now: Instant,
        leg: LegId,
        address: Result<SocketAddr, String>,
    ) {
        match address {
            Ok(address) => self.resolved(now, leg, address),
            Err(why) => {
                tracing::warn!(session = %self.session_id, error = %why, "{} unreachable", self.leg(leg).role.as_str());
                if self.state == State::Setup
                    && self.leg(leg).phase == Phase::Resolving
                    && self.fail_over(now, leg, &why)
                {
                    return;
                }
                self.fail_origin(now, 503, Outcome::Failed);
            }
        }
    }

    /// A message of client transaction `key` could not be sent.
    pub fn on_send_error(&mut self, now: Instant, key: &ClientKey) -> Vec<Action> {
        if let Some(tx) = self.clients.get_mut(key) {
            let actions = tx.machine.on_transport_error(now);
            self.client_actions(now, key, actions, None);
        }
        self.take()
    }

    /// When [`Call::on_timer`] is due next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let servers = self.servers.values().filter_map(|t| t.machine.next_deadline());
        let clients = self.clients.values().filter_map(|t| t.machine.next_deadline());
        let pending = self.pending_2xx.iter().flat_map(|p| [p.next, Some(p.give_up)]).flatten();
        let legs = self.legs.iter().filter_map(|l| l.deadline);
        let referring = self.referring_until();
        let sessions = self.session_deadline().map(|s| s.expires).into_iter();
        let ends = self.ends_at.into_iter().chain(sessions).chain(self.refresh_deadline());
        let ends = ends.filter(|_| self.state == State::Answered);
        let all = servers.chain(clients).chain(pending).chain(legs).chain(referring).chain(ends);
        all.chain(self.linger_until).min()
    }

    /// Over, and nothing left to absorb: the driver may drop the call.
    pub fn is_done(&self, now: Instant) -> bool {
        match (self.state, self.linger_until) {
            (State::Ended, Some(t)) => {
                now >= t
                    || (self.servers.is_empty()
                        && self.clients.is_empty()
                        && self.pending_2xx.is_empty())
            }
            _ => false,
        }
    }

    /// When a transfer passed on to the caller's side expires, while the call is up.
    fn referring_until(&self) -> Option<Instant> {
        let up = self.state == State::Answered;
        self.referring.as_ref().filter(|_| up).map(|r| r.until)
    }

    /// The answered call reached its maximum duration: hung up on both legs.
    pub(super) fn duration_reached(&mut self, now: Instant) {
        let Some(max) = self.max_duration else { return };
        tracing::info!(session = %self.session_id, seconds = max.as_secs(), "maximum call duration reached");
        self.hangup_reason = Some(format!("maximum call duration reached ({} s)", max.as_secs()));
        self.hang_up_both(now);
    }

    /// The actions of the step just taken; what the call no longer needs is let go first.
    fn take(&mut self) -> Vec<Action> {
        self.release_idle();
        std::mem::take(&mut self.out)
    }

    /// A held call is most of a gateway's life and memory: what only set-up, a transaction or
    /// a re-offer needed goes once it is over. The 2xx list gives its memory back once empty
    /// (the transaction maps do by themselves, [`TxMap`]); the set-up's offer goes when the
    /// call leaves set-up; the origin's INVITE once its 2xx is acknowledged (its Record-Route,
    /// Max-Forwards, body and session timer were for set-up; a transaction still open shares
    /// it); a dialed leg's INVITE headers once it answered (they were for its INVITE and the
    /// re-sends that answer a challenge).
    fn release_idle(&mut self) {
        if self.pending_2xx.is_empty() && self.pending_2xx.capacity() > 0 {
            self.pending_2xx = Vec::new();
        }
        if self.state != State::Setup {
            // The set-up's offer: what the dialed leg was offered and its answer checked
            // against; re-offers are checked against the trunk's codecs.
            self.offer = None;
        }
        let origin_acked = self.state != State::Setup
            && self.late_offer.is_none()
            && !self.pending_2xx.iter().any(|p| p.leg == Call::ORIGIN);
        for leg in &mut self.legs {
            let answered = matches!(leg.phase, Phase::Confirmed | Phase::Terminated);
            if leg.side == Side::Uas && answered && origin_acked {
                leg.invite_request = None;
            }
            if leg.side == Side::Uac && answered && leg.invite_headers.capacity() > 0 {
                leg.invite_headers = Vec::new();
            }
        }
    }

    fn leg_mut(&mut self, id: LegId) -> &mut Leg {
        &mut self.legs[id.0]
    }

    /// The leg bridged to `leg`.
    fn peer(&self, leg: LegId) -> LegId {
        if self.bridge[0] == leg { self.bridge[1] } else { self.bridge[0] }
    }

    fn send(&mut self, leg: LegId, target: Target, bytes: Bytes, client: Option<ClientKey>) {
        self.out.push(Action::Send { leg, target, bytes, client });
    }

    /// Our media address on a leg: the bind address and the one advertised in its SDP.
    fn media_ip(&self, leg: LegId) -> (IpAddr, IpAddr) {
        let leg = self.leg(leg);
        let advertised = leg.dialog.local.ip();
        let bind = match (leg.role, self.config.public_address) {
            // A public address belongs to a NAT or load balancer in front: bind everywhere.
            // A transfer leg faces the outside too (the carrier-facing listener).
            (Role::Carrier | Role::Transfer, Some(_)) => IpAddr::from([0, 0, 0, 0]),
            _ => advertised,
        };
        (bind, advertised)
    }

    /// The call is over: its slot is freed now; it stays a while for retransmissions.
    fn end(&mut self, now: Instant) {
        if self.state == State::Ended {
            return;
        }
        // A transfer still being dialed is given up with the call.
        if let Some(b) = self.bridging.take() {
            let (dest, asked) = (b.destination, b.asked);
            self.record_transfer(now, &dest, "Bridge", "abandoned", None, asked);
        }
        self.give_up_dialed(now);
        self.state = State::Ended;
        self.linger_until = Some(now + self.config.linger);
        for leg in &mut self.legs {
            leg.deadline = None;
        }
        if self.relay != Relay::None {
            self.relay = Relay::Stopped;
        }
        self.out.push(Action::End(Ended {
            outcome: self.outcome.take(),
            duration: now.saturating_duration_since(self.started),
            reason: self.hangup_reason.clone(),
            hung_up_by: self.hung_up_by,
        }));
    }
}

/// A leg we dial (we are its UAC), not yet looked up, and where it goes.
/// A leg the call dials is asked to refresh a session timer (RFC 4028), so that a peer that
/// vanished is noticed even while RTP flows.
fn ask_session_timer(leg: &mut Leg) {
    let asked = crate::sip::session_timer::offer(crate::sip::session_timer::ASKED_INTERVAL);
    leg.invite_headers.extend(asked.map(|(n, v)| (n.to_string(), v)));
}

fn dialed_leg(id: LegId, dial: Dial, ids: &mut Ids) -> (Leg, Destination) {
    let leg = Leg {
        id,
        role: dial.role,
        side: Side::Uac,
        phase: Phase::Resolving,
        media: relay_side(dial.role),
        origin: ids.origin(),
        dialog: dial.dialog,
        invite: LegInvite::None,
        invite_request: None,
        deadline: None,
        auth: LegAuth { credentials: dial.credentials, ..LegAuth::default() },
        invite_headers: dial.headers,
        remote_cseq: None,
        trusted: Vec::new(),
        srtp: LegSrtp::new(dial.encryption),
    };
    (leg, dial.destination)
}

impl Failover {
    fn of(leg: LegId, alternates: Vec<Alternate>) -> Option<Failover> {
        (!alternates.is_empty()).then(|| Failover { leg, next: alternates.into(), tried: 1 })
    }

    /// Nothing to try after the first host, yet (SRV targets may come).
    fn empty(leg: LegId) -> Failover {
        Failover { leg, next: Default::default(), tried: 1 }
    }
}

/// The relay side that faces a role: carriers on A, the agent (or who takes its place) on B.
fn relay_side(role: Role) -> RelaySide {
    match role {
        Role::Carrier => RelaySide::A,
        Role::Agent | Role::Transfer => RelaySide::B,
    }
}

/// What a dialed leg's final failure becomes toward the origin.
fn map_failure(status: u16) -> (u16, Outcome) {
    match status {
        486 | 600 => (486, Outcome::Busy),
        603 => (603, Outcome::Busy),
        480 | 408 => (480, Outcome::NoAnswer),
        487 => (487, Outcome::Cancelled),
        401 | 407 | 500..=599 => (503, Outcome::Failed),
        s @ 300..=499 => (s, Outcome::Failed),
        _ => (503, Outcome::Failed),
    }
}

/// Our side of a relayed SDP answer or offer: checked and rewritten, or why not.
type SdpResult = Result<Option<bytes::Bytes>, u16>;

/// The shorter of two optional limits (`None` is no limit).
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
