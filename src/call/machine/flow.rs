//! The INVITE flows of a call: its start, the dialed leg's answers, CANCEL and BYE, failures
//! and timers, and the plumbing between the call and its transactions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::observe::metrics::Outcome;
use crate::sip::digest_client;
use crate::sip::msg::{self, DialogHeaders, Method, NameAddr, Request, Response, name};
use crate::sip::session_timer;
use crate::sip::transaction::{ClientKey, ServerKey, client_key};
use crate::sip::transport::Source;

use ipnet::IpNet;

use super::session::{By, allows_update};

use super::leg::{Dialog, Ids, Leg, LegId, LegInvite, Mismatch, Phase, Role, Side};
use super::tx::{Purpose, ServerMachine, ServerTx, key_of_request, key_of_response, reliability};
use super::{
    ALLOW, Action, Alternate, Call, Destination, FAILOVER_STATUSES, FAILOVER_WITHIN, MAX_ATTEMPTS,
    Origin, Record, Relay, State, map_failure,
};

/// The origin leg, from the INVITE that starts the call.
pub(super) fn origin_leg(ids: &mut Ids, origin: Origin) -> Leg {
    let Origin { role, invite, source, local, trusted, srtp } = origin;
    let from = invite.from().cloned().unwrap_or_else(|| NameAddr {
        display: None,
        uri: "sip:anonymous@anonymous.invalid".into(),
        params: vec![],
    });
    let to = invite.to().cloned().unwrap_or_else(|| NameAddr {
        display: None,
        uri: invite.uri.clone(),
        params: vec![],
    });
    let dialog = Dialog {
        call_id: invite.call_id().unwrap_or_default().to_string(),
        local_tag: ids.token(10),
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
        local,
    };
    let key = key_of_request(&invite);
    let remote_cseq = invite.cseq().map(|(n, _)| n);
    Leg {
        id: Call::ORIGIN,
        role,
        side: Side::Uas,
        phase: Phase::Inviting,
        media: super::relay_side(role),
        origin: ids.origin(),
        dialog,
        invite: key.map(LegInvite::Server).unwrap_or(LegInvite::None),
        invite_request: Some(Arc::new(invite)),
        deadline: None,
        auth: Default::default(),
        invite_headers: Vec::new(),
        remote_cseq,
        trusted,
        srtp,
    }
}

impl Call {
    /// The origin's INVITE transaction and 100 Trying; then the dialed leg.
    pub(super) fn begin(&mut self, now: Instant, destination: Destination) {
        let origin = self.leg(Call::ORIGIN);
        let (LegInvite::Server(key), Some(invite)) = (&origin.invite, &origin.invite_request)
        else {
            // No RFC 3261 branch: no transaction to answer in. The front door refuses these
            // (400); a call made without one ends at once.
            self.end(now);
            return;
        };
        let (key, invite, target) = (key.clone(), Arc::clone(invite), origin.dialog.target);
        let rel = reliability(target.protocol);
        let machine = ServerMachine::new(now, true, rel, self.config.timers);
        let trying = Response::to_request(&invite, 100, "Trying", None);
        self.servers.insert(key.clone(), ServerTx::new(Call::ORIGIN, invite, target, machine));
        self.respond(now, &key, trying);
        let dialed = self.bridge[1];
        self.look_up(now, dialed, destination);
    }

    /// A dialed leg's destination: an address is used at once, a name is looked up (by SRV
    /// first for a carrier host given with no port). The carrier leg's name is kept for the
    /// session record.
    pub(super) fn look_up(&mut self, now: Instant, leg: LegId, destination: Destination) {
        if self.leg(leg).role == Role::Carrier {
            let name = match &destination {
                Destination::Address(address) => address.to_string(),
                Destination::Lookup { host, port } | Destination::Srv { host, port, .. } => {
                    host_port(host, *port)
                }
            };
            self.carrier_host = Some(name.into());
        }
        match destination {
            Destination::Address(address) => self.resolved(now, leg, address),
            Destination::Lookup { host, port } => {
                self.out.push(Action::Resolve { leg, host, port })
            }
            Destination::Srv { service, host, port } => {
                self.out.push(Action::ResolveSrv { leg, service, host, port })
            }
        }
    }

    /// The SRV targets of a dialed leg's host, in the order to try them, and the address of
    /// the first (see [`Call::on_srv_resolved`]): the others go before the leg's other
    /// alternates (RFC 3263 §4.3: the next SRV target is the next hop), with the same
    /// Request-URI and transport.
    pub(super) fn srv_resolved(
        &mut self,
        now: Instant,
        leg: LegId,
        targets: Vec<(String, u16)>,
        address: Result<SocketAddr, String>,
    ) {
        let pending = self.state == State::Setup && self.leg(leg).phase == Phase::Resolving;
        if pending && !self.is_bridging(leg) {
            let mut targets = targets.into_iter();
            if let Some((host, port)) = targets.next()
                && self.leg(leg).role == Role::Carrier
            {
                self.carrier_host = Some(host_port(&host, port).into());
            }
            let l = self.leg(leg);
            let (uri, protocol) = (l.dialog.remote_target.clone(), l.dialog.target.protocol);
            let failover = self.failover.get_or_insert_with(|| super::Failover::empty(leg));
            if failover.leg == leg {
                let rest: Vec<Alternate> = targets
                    .take(MAX_ATTEMPTS - 1)
                    .map(|(host, port)| Alternate {
                        uri: uri.clone(),
                        protocol,
                        destination: Destination::Lookup { host, port },
                    })
                    .collect();
                for alternate in rest.into_iter().rev() {
                    failover.next.push_front(alternate);
                }
            }
        }
        self.resolved_or_failed(now, leg, address);
    }

    /// The carrier host that answered: the dialed carrier leg's name and address, once it is
    /// confirmed.
    fn answered_by(&self) -> Option<super::AnsweredBy> {
        let host = self.carrier_host.as_deref()?;
        let leg = self.legs.iter().find(|l| {
            l.role == Role::Carrier && l.side == Side::Uac && l.phase == Phase::Confirmed
        })?;
        Some(super::AnsweredBy { host: host.to_string(), address: leg.dialog.target.remote })
    }

    /// The dialed leg has an address: its Call-ID is ours, the relay starts (the INVITE waits
    /// for its ports), or the INVITE goes at once. A carrier leg that failed over to another
    /// host while the relay runs moves its side's guard to the new host's address.
    pub(super) fn resolved(&mut self, now: Instant, leg: LegId, address: SocketAddr) {
        if self.state != State::Setup || self.leg(leg).phase != Phase::Resolving {
            return;
        }
        let before = self.leg(leg).dialog.target.remote.ip();
        self.leg_mut(leg).dialog.target.remote = address;
        if self.relay != Relay::None
            && self.faces_carrier(leg)
            && !before.is_unspecified()
            && before != address.ip()
        {
            let side = self.leg(leg).media;
            let ip = self.relay_peer(leg).signalling;
            self.out.push(Action::UpdateRelay(super::RelayUpdate::Signalling { side, ip }));
        }
        let call_id = self.leg(leg).dialog.call_id.clone();
        self.out.push(Action::Listen { call_id });
        if self.offer.is_some() && self.relay == Relay::None {
            let (a, b) = self.relay_binds();
            self.relay = Relay::Starting;
            let (media_timeout, max_hold) = (self.config.media_timeout, self.config.max_hold);
            let peers = self.relay_peers();
            self.out.push(Action::StartRelay { a, b, media_timeout, max_hold, peers });
        } else {
            self.send_invite(now, leg);
        }
    }

    /// The INVITE of a dialed leg, with the origin's offer rewritten to the relay.
    pub(super) fn send_invite(&mut self, now: Instant, leg: LegId) {
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let mut r = self.leg_mut(leg).dialog.request(Method::Invite, &branch, &ua);
        // A transfer's leg is offered its own ports; nothing of the origin's INVITE goes there.
        let transfer = self.is_bridging(leg);
        let offer = match &self.bridging {
            Some(b) if transfer => b.offer.as_ref(),
            _ => self.offer.as_deref(),
        };
        let origin_invite =
            if transfer { None } else { self.leg(Call::ORIGIN).invite_request.as_deref() };
        if let Some(invite) = origin_invite {
            let hops = invite.max_forwards().unwrap_or(70).saturating_sub(1);
            r.headers.set(name::MAX_FORWARDS, hops.to_string());
        }
        for (n, v) in &self.leg(leg).invite_headers {
            r.headers.push(n, v.as_str());
        }
        r.headers.push(name::ALLOW, ALLOW);
        if let Some((header, value)) = &self.leg(leg).auth.header {
            r.headers.push(header, value.as_str());
        }
        match (offer, origin_invite) {
            (Some(offer), _) => {
                r.headers.push(name::CONTENT_TYPE, "application/sdp");
                r.body = offer.sdp.to_bytes().into();
            }
            (None, Some(invite)) => {
                r.body = super::dialog::copy_body(&invite.headers, &invite.body, &mut r.headers)
            }
            (None, None) => {}
        }
        let key = client_key(&branch, "INVITE");
        let deadline = now + self.config.first_response;
        let l = self.leg_mut(leg);
        l.invite = LegInvite::Client(key);
        l.phase = Phase::Inviting;
        l.deadline = Some(deadline);
        self.send_client(now, leg, r, Purpose::Invite);
    }

    /// The dialed carrier leg failed at its host before the callee rang: the INVITE goes to
    /// the next host of the trunk (RFC 3263 §4.3: a new client transaction, here with a new
    /// branch and CSeq + 1 in the same Call-ID and From tag, to the next host's Request-URI),
    /// when one is left, within [`MAX_ATTEMPTS`] and [`FAILOVER_WITHIN`]. The origin is not
    /// told: it had its 100 Trying and keeps waiting. `false`: nothing left to try.
    pub(super) fn fail_over(&mut self, now: Instant, leg: LegId, why: &str) -> bool {
        let within = now.saturating_duration_since(self.started) < FAILOVER_WITHIN;
        let Some(f) = self.failover.as_mut().filter(|f| f.leg == leg) else { return false };
        if f.tried >= MAX_ATTEMPTS || !within {
            return false;
        }
        let Some(next) = f.next.pop_front() else { return false };
        f.tried += 1;
        let tried = f.tried;
        let was = self.leg(leg).dialog.remote_target.clone();
        tracing::info!(
            session = %self.session_id, from = %was, to = %next.uri, reason = %why, attempt = tried,
            "carrier host failed ({why}): trying the next host"
        );
        let l = self.leg_mut(leg);
        l.dialog.remote_uri = NameAddr { display: None, uri: next.uri.clone(), params: vec![] };
        l.dialog.remote_target = next.uri;
        l.dialog.remote_tag = None;
        l.dialog.route_set.clear();
        l.dialog.target.protocol = next.protocol;
        l.dialog.target.connection = None;
        // The next host challenges on its own; what was answered to this one does not travel.
        l.auth.header = None;
        l.auth.answered = 0;
        l.invite = LegInvite::None;
        l.deadline = None;
        l.phase = Phase::Resolving;
        self.look_up(now, leg, next.destination);
        true
    }

    /// The origin's INVITE ends with a failure, and the call with it.
    pub(super) fn fail_origin(&mut self, now: Instant, status: u16, outcome: Outcome) {
        let origin = self.leg(Call::ORIGIN);
        if matches!(origin.phase, Phase::Inviting | Phase::Early)
            && let LegInvite::Server(key) = &origin.invite
        {
            let key = key.clone();
            self.leg_mut(Call::ORIGIN).phase = Phase::Terminated;
            self.respond_status(now, &key, status);
        }
        self.outcome.get_or_insert(outcome);
        self.give_up_dialed(now);
        // A call the gateway placed may have an answered leg while another is still being
        // dialed: it is hung up with the call.
        let answered: Vec<LegId> = self
            .legs
            .iter()
            .filter(|l| l.side == Side::Uac && l.phase == Phase::Confirmed)
            .map(|l| l.id)
            .collect();
        for leg in answered {
            self.bye(now, leg);
        }
        self.end(now);
    }

    /// The call no longer wants the legs it dialed that have not answered: CANCEL where a
    /// provisional came, else wait for one (or for the 2xx that crosses, which gets a BYE).
    pub(super) fn give_up_dialed(&mut self, now: Instant) {
        let pending: Vec<LegId> = self
            .legs
            .iter()
            .filter(|l| l.side == Side::Uac && l.phase.is_pending())
            .map(|l| l.id)
            .collect();
        for leg in pending {
            self.give_up_leg(now, leg);
        }
    }

    /// One dialed leg is no longer wanted (see [`Call::give_up_dialed`]); nothing if it is not
    /// pending.
    pub(super) fn give_up_leg(&mut self, now: Instant, leg: LegId) {
        match self.leg(leg).phase {
            Phase::Resolving => self.leg_mut(leg).phase = Phase::Terminated,
            Phase::Early => self.send_cancel(now, leg),
            Phase::Inviting | Phase::Trying => {
                self.leg_mut(leg).phase = Phase::Cancelling { sent: false }
            }
            _ => {}
        }
    }

    /// CANCEL of a dialed leg's INVITE (RFC 3261 §9.1): once, after a provisional.
    pub(super) fn send_cancel(&mut self, now: Instant, leg: LegId) {
        let LegInvite::Client(key) = &self.leg(leg).invite else { return };
        let Some(tx) = self.clients.get(key) else {
            self.leg_mut(leg).phase = Phase::Terminated;
            return;
        };
        // A final response came already (the leg is no longer pending): nothing to cancel.
        let Some(invite) = &tx.request else { return };
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
        self.leg_mut(leg).phase = Phase::Cancelling { sent: true };
        self.send_client(now, leg, cancel, Purpose::Own);
    }

    /// BYE on one leg, which is over.
    pub(super) fn bye(&mut self, now: Instant, leg: LegId) {
        self.bye_with(now, leg, None);
    }

    /// BYE on one leg, with a `Reason` header (RFC 3326) when given; nothing for a leg that is
    /// over already (an agent that left during a transfer has no dialog to end).
    pub(super) fn bye_with(&mut self, now: Instant, leg: LegId, reason: Option<&str>) {
        if self.leg(leg).phase == Phase::Terminated {
            return;
        }
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let l = self.leg_mut(leg);
        l.phase = Phase::Terminated;
        let mut bye = l.dialog.request(Method::Bye, &branch, &ua);
        if let Some(reason) = reason {
            bye.headers.push("Reason", reason);
        }
        self.send_client(now, leg, bye, Purpose::Own);
    }

    /// The gateway ends an answered call: BYE on both bridged legs.
    pub(super) fn hang_up_both(&mut self, now: Instant) {
        if self.state == State::Answered {
            let [a, b] = self.bridge;
            self.bye(now, a);
            self.bye(now, b);
        }
        self.end(now);
    }

    pub(super) fn ack_2xx(&mut self, leg: LegId, cseq: u32) {
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let d = &mut self.leg_mut(leg).dialog;
        let mut ack = d.request(Method::Ack, &branch, &ua);
        ack.headers.set(name::CSEQ, format!("{cseq} ACK"));
        let target = d.target;
        self.send(leg, target, ack.to_bytes().into(), None);
    }

    /// A dialed leg's 2xx to our INVITE: its dialog (the peer's tag, Contact, Record-Route)
    /// and our ACK.
    pub(super) fn confirm_2xx(&mut self, now: Instant, leg: LegId, resp: &Response) {
        // The session timer the 2xx set up (RFC 4028 §7.2): the peer took the refresher role
        // we asked of it, or named the gateway (`refresher=uac`), which refreshes with UPDATE
        // when the peer takes it (`session`).
        // An interval below our Min-SE is raised to it: a peer must not make the gateway
        // send refreshes as fast as it likes.
        let min_se = self.config.min_session_expires;
        let answered = session_timer::answered(&resp.headers).map(|(i, r)| (i.max(min_se), r));
        match answered {
            Some((interval, session_timer::Refresher::Uas)) => {
                self.session_started(now, leg, interval, By::Peer)
            }
            Some((interval, session_timer::Refresher::Uac)) if allows_update(&resp.headers) => {
                self.session_started(now, leg, interval, By::Gateway)
            }
            Some(_) => {
                tracing::debug!(session = %self.session_id, "the peer wants the gateway to refresh but takes no UPDATE: no session timer on its leg");
            }
            None => {}
        }
        self.leg_mut(leg).dialog.remote_tag = resp.to().and_then(|t| t.tag().map(str::to_string));
        self.learn_target(leg, resp);
        let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(1);
        self.ack_2xx(leg, cseq);
    }

    /// Records the peer's Contact and Record-Route from a 2xx (RFC 3261 §12.1.2).
    pub(super) fn learn_target(&mut self, leg: LegId, resp: &Response) {
        let contact = resp.contact_uri();
        let mut routes: Vec<String> = resp
            .headers
            .get_all(name::RECORD_ROUTE)
            .flat_map(msg::split_list)
            .map(str::to_string)
            .collect();
        routes.reverse();
        let d = &mut self.leg_mut(leg).dialog;
        if let Some(c) = contact {
            d.remote_target = c;
        }
        if !routes.is_empty() {
            d.route_set = routes;
        }
    }

    pub(super) fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(key) = key_of_response(&resp) else { return };
        let Some(tx) = self.clients.get_mut(&key) else {
            // A 2xx retransmission after the INVITE transaction ended: ACK it again.
            if *key.method() == crate::sip::transaction::KeyMethod::Invite
                && (200..300).contains(&resp.status)
                && let Some(leg) = self.legs.iter().find(|l| {
                    l.side == Side::Uac && Some(l.dialog.call_id.as_str()) == resp.call_id()
                })
            {
                let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(1);
                self.ack_2xx(leg.id, cseq);
            }
            return;
        };
        let actions = tx.machine.on_response(now, resp.status);
        self.client_actions(now, &key, actions, Some(&resp));
    }

    pub(super) fn on_client_response(&mut self, now: Instant, key: &ClientKey, resp: &Response) {
        let Some(tx) = self.clients.get(key) else { return };
        let (leg, purpose, method) = (tx.leg, tx.purpose.clone(), tx.method.clone());
        match purpose {
            Purpose::Invite => self.on_invite_response(now, leg, resp),
            Purpose::Relay(server) => self.relay_response(now, leg, &method, &server, resp),
            Purpose::TransferRefer => self.on_refer_answer(now, resp.status),
            Purpose::Refresh => self.refresh_answered(now, leg, resp),
            Purpose::Own => {}
        }
    }

    pub(super) fn on_client_failure(&mut self, now: Instant, key: &ClientKey, transport: bool) {
        let Some(tx) = self.clients.get(key) else { return };
        let (leg, purpose) = (tx.leg, tx.purpose.clone());
        match purpose {
            Purpose::Invite if self.is_bridging(leg) => {
                self.leg_mut(leg).phase = Phase::Terminated;
                let (status, why) = if transport {
                    (503, "the destination cannot be reached")
                } else {
                    (408, "no response from the destination")
                };
                self.bridge_failed(now, status, why);
            }
            Purpose::Invite => {
                let phase = self.leg(leg).phase;
                if matches!(phase, Phase::Inviting | Phase::Trying) && self.state == State::Setup {
                    let why = if transport { "the INVITE could not be sent" } else { "timeout" };
                    if self.fail_over(now, leg, why) {
                        return;
                    }
                }
                if phase.is_pending() || matches!(phase, Phase::Cancelling { .. }) {
                    self.leg_mut(leg).phase = Phase::Terminated;
                    self.leg_mut(leg).deadline = None;
                }
                if self.state == State::Setup {
                    let status = if transport || phase != Phase::Early { 503 } else { 480 };
                    let outcome = if status == 503 { Outcome::Failed } else { Outcome::NoAnswer };
                    self.fail_origin(now, status, outcome);
                }
            }
            Purpose::Relay(server) => {
                self.respond_status(now, &server, if transport { 503 } else { 408 })
            }
            Purpose::TransferRefer => self.on_refer_answer(now, if transport { 503 } else { 408 }),
            Purpose::Refresh => self.refresh_failed(now, leg, transport),
            Purpose::Own => {}
        }
    }

    /// The dialed leg's answers to our INVITE.
    fn on_invite_response(&mut self, now: Instant, leg: LegId, resp: &Response) {
        if self.is_bridging(leg) {
            return self.on_transfer_response(now, leg, resp);
        }
        let status = resp.status;
        let phase = self.leg(leg).phase;
        let ring_deadline = now + self.config.ring_timeout;
        if status < 200 {
            match phase {
                Phase::Inviting | Phase::Trying if status > 100 => {
                    let l = self.leg_mut(leg);
                    l.phase = Phase::Early;
                    l.deadline = Some(ring_deadline);
                }
                Phase::Inviting => {
                    // The peer is there; from now on only the ringing timeout applies.
                    let l = self.leg_mut(leg);
                    l.phase = Phase::Trying;
                    l.deadline = Some(ring_deadline);
                }
                Phase::Cancelling { sent: false } if status > 100 => {
                    self.leg_mut(leg).phase = Phase::Early;
                    self.send_cancel(now, leg);
                    return;
                }
                _ => {}
            }
            if status > 100 && self.state == State::Setup && leg == self.bridge[1] {
                self.provisional_to_origin(now, leg, resp);
            }
            return;
        }
        self.leg_mut(leg).deadline = None;
        if (200..300).contains(&status) {
            self.confirm_2xx(now, leg, resp);
            match phase {
                Phase::Confirmed | Phase::Terminated => {} // a retransmission: ACKed again
                Phase::Cancelling { .. } => {
                    // The 2xx crossed our CANCEL (or the call gave up just as it answered):
                    // the leg is answered and we do not want it.
                    tracing::debug!(session = %self.session_id, "2xx after the call gave up the leg: BYE");
                    self.leg_mut(leg).phase = Phase::Confirmed;
                    self.bye(now, leg);
                }
                _ if self.state != State::Setup => self.bye(now, leg),
                _ => self.answered(now, leg, resp),
            }
            return;
        }
        if matches!(status, 401 | 407) && phase.is_pending() && self.state == State::Setup {
            match self.answer_challenge(now, leg, resp) {
                Ok(()) => return,
                Err(reason) => {
                    let role = self.leg(leg).role;
                    tracing::warn!(session = %self.session_id, peer_status = status, "{} refused the call: {reason}", role.as_str());
                    self.out.push(Action::Record(Record::AuthRefused { role, reason }));
                    if self.leg(leg).auth.credentials.is_some() {
                        // Our credentials are wrong (or the peer's challenge cannot be met):
                        // the agent is told it may not call there, not that it is down.
                        self.leg_mut(leg).phase = Phase::Terminated;
                        self.fail_origin(now, 403, Outcome::Failed);
                        return;
                    }
                }
            }
        }
        let was_wanted = phase.is_pending();
        // A carrier host that is down or overloaded, before the callee rang: the next host.
        if matches!(phase, Phase::Inviting | Phase::Trying)
            && self.state == State::Setup
            && FAILOVER_STATUSES.contains(&status)
            && self.fail_over(now, leg, &format!("{status} {}", msg::reason_phrase(status)))
        {
            return;
        }
        self.leg_mut(leg).phase = Phase::Terminated;
        if !was_wanted || self.state != State::Setup {
            return;
        }
        let (mapped, outcome) = map_failure(status);
        tracing::info!(session = %self.session_id, peer_status = status, status = mapped, "{} refused the call", self.leg(leg).role.as_str());
        self.fail_origin(now, mapped, outcome);
    }

    /// A dialed peer's digest challenge (RFC 3261 §22.2): answered once with the leg's
    /// credentials, the INVITE sent again in the same dialog (CSeq + 1, a new branch, RFC 3261
    /// §8.1.3.5). A second challenge after our answer means the credentials are wrong, unless it
    /// says `stale=true` (the answer was right, its nonce expired): that one is answered once
    /// more. `Err`: why the challenge is not answered.
    pub(super) fn answer_challenge(
        &mut self,
        now: Instant,
        leg: LegId,
        resp: &Response,
    ) -> Result<(), String> {
        let (challenge_header, answer_header) = if resp.status == 401 {
            (name::WWW_AUTHENTICATE, name::AUTHORIZATION)
        } else {
            (name::PROXY_AUTHENTICATE, name::PROXY_AUTHORIZATION)
        };
        let l = self.leg(leg);
        let (answered, uri) = (l.auth.answered, l.dialog.remote_target.clone());
        let Some(credentials) = l.auth.credentials.clone() else {
            return Err("challenged for credentials, and none are configured (an address-\
                        authenticated trunk the carrier does not trust by address)"
                .to_string());
        };
        let challenge = digest_client::pick(resp.headers.get_all(challenge_header))
            .map_err(|e| format!("cannot answer its challenge: {e}"))?;
        let limit = if challenge.stale { 2 } else { 1 };
        if answered >= limit {
            return Err(format!(
                "it challenged our answer again: wrong credentials for username {:?}",
                credentials.username
            ));
        }
        let cnonce = self.ids.token(16);
        let answer = challenge.answer(
            &credentials.username,
            credentials.password.expose(),
            "INVITE",
            &uri,
            1,
            &cnonce,
        );
        let l = self.leg_mut(leg);
        l.auth.answered += 1;
        l.auth.header = Some((answer_header, answer));
        // The challenge's To tag made no dialog (RFC 3261 §12.1.2).
        l.dialog.remote_tag = None;
        self.send_invite(now, leg);
        Ok(())
    }

    /// A provisional response of the dialed leg, passed to the origin (with its early media).
    fn provisional_to_origin(&mut self, now: Instant, leg: LegId, resp: &Response) {
        if let Some(tag) = resp.to().and_then(|t| t.tag().map(str::to_string)) {
            self.leg_mut(leg).dialog.remote_tag = Some(tag);
        }
        let LegInvite::Server(key) = self.leg(Call::ORIGIN).invite.clone() else { return };
        let Some(mut out) = self.response_for(&key, resp.status) else { return };
        self.origin_dialog_headers(&mut out);
        // Early media SDP that breaks the policy is dropped, not relayed.
        if let Ok(Some(body)) = self.answer_from(leg, resp) {
            out.headers.push(name::CONTENT_TYPE, "application/sdp");
            out.body = body;
        }
        self.leg_mut(Call::ORIGIN).phase = Phase::Early;
        self.respond(now, &key, out);
    }

    /// RFC 3261 §12.1.1: a response that makes a dialog copies Record-Route; our Contact.
    fn origin_dialog_headers(&self, out: &mut Response) {
        let origin = self.leg(Call::ORIGIN);
        if let Some(invite) = &origin.invite_request {
            out.headers.copy_from(&invite.headers, name::RECORD_ROUTE);
        }
        out.headers.push(name::CONTACT, origin.dialog.contact());
    }

    /// The dialed leg answered: its SDP checked, the origin gets the 2xx, the call is up.
    fn answered(&mut self, now: Instant, leg: LegId, resp: &Response) {
        if self.then.is_some() && leg == self.bridge[0] {
            return self.first_answered(now, leg, resp);
        }
        let body = match self.answer_from(leg, resp) {
            Ok(body) => body,
            Err(status) => {
                // It answered with what was not offered: end its leg, refuse the call.
                self.leg_mut(leg).phase = Phase::Confirmed;
                self.bye(now, leg);
                self.fail_origin(now, status, Outcome::Failed);
                return;
            }
        };
        self.leg_mut(leg).phase = Phase::Confirmed;
        self.state = State::Answered;
        self.outcome = Some(Outcome::Answered);
        self.ends_at = self.max_duration.map(|d| now + d);
        let codec = self.chosen.as_ref().map(|c| c.codec);
        let setup = now.saturating_duration_since(self.started);
        let srtp = self.bridge.iter().find_map(|l| self.leg(*l).srtp.keys.as_ref());
        let srtp = srtp.map(|keys| keys.local.suite);
        let carrier = self.answered_by();
        self.out.push(Action::Record(Record::Answered { setup, codec, srtp, carrier }));
        let LegInvite::Server(key) = self.leg(Call::ORIGIN).invite.clone() else { return };
        if let Some(request) = &self.leg(Call::ORIGIN).invite_request
            && let session_timer::Ask::Refreshed { interval, refresher } =
                session_timer::ask(&request.headers, self.config.min_session_expires)
        {
            // The carrier names the refresher (RFC 4028 §9): itself, or the gateway when it
            // takes our UPDATE (else it refreshes: the only way its session can be kept).
            let by = match refresher {
                session_timer::Refresher::Uas if allows_update(&request.headers) => By::Gateway,
                _ => By::Peer,
            };
            self.session_started(now, Call::ORIGIN, interval, by);
        }
        if let Some(mut out) = self.response_for(&key, 200) {
            self.origin_dialog_headers(&mut out);
            self.session_refreshed(now, Call::ORIGIN, &mut out);
            out.headers.push(name::ALLOW, super::ALLOW);
            out.headers.push(name::SERVER, self.config.user_agent.as_str());
            if let Some(body) = body {
                out.headers.push(name::CONTENT_TYPE, "application/sdp");
                out.body = body;
            }
            self.leg_mut(Call::ORIGIN).phase = Phase::Confirmed;
            self.respond(now, &key, out);
        }
    }

    /// A placed call's first leg (the carrier) answered: its answer checked, media not owed
    /// yet (held), and the second leg (the agent runtime) dialed with an offer of the codec the
    /// first chose, on the relay's other side.
    fn first_answered(&mut self, now: Instant, leg: LegId, resp: &Response) {
        self.leg_mut(leg).phase = Phase::Confirmed;
        if let Err(status) = self.answer_from(leg, resp) {
            self.bye(now, leg);
            return self.fail_origin(now, status, Outcome::Failed);
        }
        self.out.push(Action::UpdateRelay(super::RelayUpdate::Hold(true)));
        let Some(destination) = self.then.take() else { return };
        let second = self.bridge[1];
        let codec = self.chosen.as_ref().map(|c| c.codec);
        let offer = codec.and_then(|c| crate::media::codec::gateway_offer(&[c]));
        let (Some((mut sdp, negotiated)), Some(port)) =
            (offer, self.relay.port(self.leg(second).media))
        else {
            tracing::warn!(session = %self.session_id, "no codec in the answer to offer the second leg");
            return self.fail_origin(now, 488, Outcome::Failed);
        };
        let (_, advertised) = self.media_ip(second);
        sdp.rewrite_for_relay(
            &mut self.legs[second.0].origin,
            advertised,
            port,
            crate::media::sdp::AudioSecurity::Plain,
        );
        self.offer = Some(Box::new(super::MediaOffer { sdp, negotiated, delayed: false }));
        self.look_up(now, second, destination);
    }

    /// Which leg an in-dialog request belongs to (RFC 3261 §12.2.2): the leg whose Call-ID and
    /// tags it carries ([`Leg::owns`]), if it comes from that leg's zone and peer
    /// ([`Call::check_source`]).
    fn match_dialog(&self, req: &Request, source: &Source) -> Result<LegId, Mismatch> {
        let call_id = req.call_id().ok_or(Mismatch::NoDialog)?;
        let from_tag = req.from().and_then(|f| f.tag().map(str::to_string));
        let to_tag = req.to().and_then(|t| t.tag().map(str::to_string));
        let leg = self
            .legs
            .iter()
            .find(|l| l.owns(call_id, from_tag.as_deref(), to_tag.as_deref()))
            .ok_or(Mismatch::NoDialog)?;
        self.check_source(leg.id, source)?;
        Ok(leg.id)
    }

    /// Whether `source` is where `leg`'s peer signals from ([`Leg::signals_from`]); an agent
    /// leg's peer may also use any address of the agent networks.
    fn check_source(&self, leg: LegId, source: &Source) -> Result<(), Mismatch> {
        let l = self.leg(leg);
        let agents: &[IpNet] =
            if l.role == Role::Agent { &self.config.agent_networks } else { &[] };
        l.signals_from(source, agents)
    }

    /// A request that is not the call's, answered as `mismatch` says (an ACK gets nothing)
    /// and without any other effect.
    fn refuse_request(&mut self, req: &Request, source: &Source, mismatch: Mismatch) {
        tracing::debug!(
            session = %self.session_id,
            method = %req.method,
            remote = %source.remote,
            reason = mismatch.as_str(),
            "an in-dialog request refused"
        );
        self.out.push(Action::Record(Record::DialogRefused(mismatch)));
        if req.method != Method::Ack {
            self.reply_stateless(req, source, mismatch.status_code());
        }
    }

    pub(super) fn on_request(&mut self, now: Instant, req: Request, source: Source) {
        let Some(key) = key_of_request(&req) else {
            if req.method != Method::Ack {
                self.reply_stateless(&req, &source, 400);
            }
            return;
        };
        if req.method == Method::Ack {
            return self.on_ack(now, &key, &req, &source);
        }
        if let Some(leg) = self.servers.get(&key).map(|t| t.leg) {
            // A retransmission, from the peer of the leg its transaction is on.
            if let Err(mismatch) = self.check_source(leg, &source) {
                return self.refuse_request(&req, &source, mismatch);
            }
            if let Some(tx) = self.servers.get_mut(&key) {
                let actions = tx.machine.on_retransmission(now);
                self.server_actions(&key, actions);
            }
            return;
        }
        if req.method == Method::Cancel {
            return self.on_cancel(now, key, req, source);
        }
        let leg = match self.match_dialog(&req, &source) {
            Ok(leg) => leg,
            Err(mismatch) => return self.refuse_request(&req, &source, mismatch),
        };
        let bridged = self.bridge.contains(&leg) || self.is_bridging(leg);
        if !bridged && req.method != Method::Bye {
            // A leg the call has left (an agent after its transfer): its dialog is over.
            return self.reply_stateless(&req, &source, 481);
        }
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or_default();
        if let Err(mismatch) = self.leg_mut(leg).take_cseq(cseq) {
            return self.refuse_request(&req, &source, mismatch);
        }
        self.open_server(now, &key, leg, req.clone(), &source);
        match req.method {
            Method::Bye => self.on_bye(now, &key, leg, &req),
            Method::Options => self.respond_status(now, &key, 200),
            Method::Invite | Method::Update | Method::Info => {
                self.on_in_dialog(now, &key, leg, &req)
            }
            Method::Prack => self.respond_status(now, &key, 481),
            Method::Refer => self.on_refer(now, &key, leg, &req),
            Method::Notify => self.on_notify(now, &key, leg, &req),
            _ => self.respond_status(now, &key, 501),
        }
    }

    /// An ACK: of a final response in its INVITE's transaction, or of a 2xx in the dialog.
    /// Either way it must carry our To tag and come from the leg's peer; one that does not is
    /// absorbed with no effect and no answer (RFC 3261 §17.2.3, §13.3.1.4): it neither stops
    /// our 2xx retransmissions nor brings an SDP answer.
    fn on_ack(&mut self, now: Instant, key: &ServerKey, req: &Request, source: &Source) {
        let invite_tx = self
            .servers
            .get(key)
            .filter(|t| matches!(t.machine, ServerMachine::Invite(_)))
            .map(|t| t.leg);
        if let Some(leg) = invite_tx {
            // Same branch as the INVITE: the ACK of a non-2xx, or of a 2xx by a peer that
            // reuses the branch.
            let call_id = req.call_id().unwrap_or_default();
            let from_tag = req.from().and_then(|f| f.tag().map(str::to_string));
            let to_tag = req.to().and_then(|t| t.tag().map(str::to_string));
            let mismatch = if !self.leg(leg).owns(call_id, from_tag.as_deref(), to_tag.as_deref()) {
                Err(Mismatch::NoDialog)
            } else {
                self.check_source(leg, source)
            };
            if let Err(mismatch) = mismatch {
                return self.refuse_request(req, source, mismatch);
            }
            if let Some(tx) = self.servers.get_mut(key)
                && let ServerMachine::Invite(m) = &mut tx.machine
            {
                let actions = m.on_ack(now);
                self.server_actions(key, actions);
            }
            return;
        }
        // ACK of a 2xx: a new branch, matched by dialog and CSeq.
        let leg = match self.match_dialog(req, source) {
            Ok(leg) => leg,
            Err(mismatch) => return self.refuse_request(req, source, mismatch),
        };
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or_default();
        self.pending_2xx.retain(|p| !(p.leg == leg && p.cseq == cseq));
        let invite_cseq =
            self.leg(leg).invite_request.as_ref().and_then(|i| i.cseq()).map(|(n, _)| n);
        if leg == Call::ORIGIN && Some(cseq) == invite_cseq && self.late_offer.is_some() {
            self.on_late_answer(now, req);
        }
    }

    fn on_bye(&mut self, now: Instant, key: &ServerKey, leg: LegId, req: &Request) {
        self.respond_status(now, key, 200);
        if !self.bridge.contains(&leg) {
            // A leg the call has left (the agent after a transfer, which we sent BYE too), or
            // a transfer leg before it answered: only that leg is over.
            self.leg_mut(leg).phase = Phase::Terminated;
            if self.is_bridging(leg) {
                self.bridge_failed(now, 480, "the destination hung up before answering");
            }
            return;
        }
        if self.state == State::Answered && self.agent_left_bridging(leg) {
            return;
        }
        if self.bye_transfer(now, leg, req) {
            return;
        }
        match self.state {
            State::Answered => {
                tracing::debug!(session = %self.session_id, side = self.leg(leg).role.as_str(), "hang-up");
                self.hung_up_by = Some(self.leg(leg).role);
                self.leg_mut(leg).phase = Phase::Terminated;
                let peer = self.peer(leg);
                self.bye(now, peer);
                self.end(now);
            }
            State::Setup if leg == Call::ORIGIN => {
                if self.leg(leg).side == Side::Uac {
                    // A placed call's first leg hung up while the second was dialed.
                    self.leg_mut(leg).phase = Phase::Terminated;
                }
                self.fail_origin(now, 487, Outcome::Cancelled)
            }
            State::Setup => {
                // The dialed peer gave up before answering: its leg is over, the origin gets 480.
                self.leg_mut(leg).phase = Phase::Terminated;
                self.leg_mut(leg).deadline = None;
                self.fail_origin(now, 480, Outcome::Failed);
            }
            State::Ended => {}
        }
    }

    fn on_cancel(&mut self, now: Instant, key: ServerKey, req: Request, source: Source) {
        let origin = self.leg(Call::ORIGIN);
        let cancels_origin = match (&origin.invite, key.cancelled_invite()) {
            (LegInvite::Server(invite), Some(cancelled)) => {
                *invite == cancelled && self.servers.contains_key(invite)
            }
            _ => false,
        };
        if !cancels_origin {
            return self.reply_stateless(&req, &source, 481);
        }
        if let Err(mismatch) = self.check_source(Call::ORIGIN, &source) {
            return self.refuse_request(&req, &source, mismatch);
        }
        self.open_server(now, &key, Call::ORIGIN, req, &source);
        self.respond_status(now, &key, 200);
        if self.state == State::Setup {
            self.fail_origin(now, 487, Outcome::Cancelled);
        }
    }

    fn open_server(
        &mut self,
        now: Instant,
        key: &ServerKey,
        leg: LegId,
        req: Request,
        source: &Source,
    ) {
        let rel = reliability(source.protocol);
        let machine =
            ServerMachine::new(now, req.method == Method::Invite, rel, self.config.timers);
        let target = source.reply_target();
        self.servers.insert(key.clone(), ServerTx::new(leg, Arc::new(req), target, machine));
    }

    /// A dialed leg's deadline: ringing too long (480, the leg cancelled), or not even a 100
    /// Trying (the peer is not there: 503).
    pub(super) fn dialed_deadline(&mut self, now: Instant, leg: LegId) {
        if self.is_bridging(leg) {
            return self.transfer_deadline(now, leg);
        }
        match self.leg(leg).phase {
            Phase::Early => {
                self.send_cancel(now, leg);
                self.fail_origin(now, 480, Outcome::NoAnswer);
            }
            Phase::Inviting | Phase::Trying => {
                let phase = self.leg(leg).phase;
                if let LegInvite::Client(key) = &self.leg(leg).invite {
                    let key = key.clone();
                    self.clients.remove(&key);
                }
                // No answer at all (not even 100 Trying) from this host: the next one.
                if phase == Phase::Inviting && self.fail_over(now, leg, "no answer") {
                    return;
                }
                self.leg_mut(leg).phase = Phase::Terminated;
                tracing::warn!(session = %self.session_id, "{} did not answer the INVITE", self.leg(leg).role.as_str());
                self.fail_origin(now, 503, Outcome::Failed);
            }
            _ => {}
        }
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
