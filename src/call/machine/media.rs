//! The call's media: the codec policy on every offer and answer, the SDP rewritten so that
//! each leg sees the relay's address, and what the relay is told (where each side's peer
//! wants media, hold, who may send each side's media). The relay itself is the driver's: the
//! call asks with actions.
//!
//! **`c=` rules on what a carrier sends inside the call** (issue 15; the initial offer is the
//! front door's, `call::gateway`): a leg that faces a carrier ([`Call::faces_carrier`]: the
//! carrier's own, or a transfer leg dialed from the carrier-facing listener) must not point
//! the relay at a multicast group or at the gateway itself ([`CallConfig::own_addresses`]).
//! - A re-offer (re-INVITE, UPDATE) that does is answered 488 with
//!   `Warning: 399 trunkline "<Rule>: ..."` and changes nothing; `0.0.0.0` stays allowed
//!   there (RFC 2543 hold, RFC 3264 §8.4).
//! - An answer (the 18x/2xx of a carrier we dialed, the ACK of a delayed offer, the answer to
//!   a relayed re-offer, a transfer destination's 18x/2xx) that does is refused as an answer
//!   breaking the codec policy is: early SDP is dropped, a 2xx gets ACK and BYE and the call
//!   (or the transfer) fails with 488. In an answer `0.0.0.0` is refused too when the stream
//!   receives media (`sendrecv`, `recvonly`: the answerer asks for media at no address) and
//!   taken when it does not (`sendonly`, `inactive`: hold from the start).
//!
//! [`CallConfig::own_addresses`]: super::CallConfig::own_addresses

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::refusal::RefusalRule;
use crate::media::codec::{self, Negotiated};
use crate::media::relay::{Leg as RelaySide, Silent};
use crate::media::sdes::{self, Crypto, Settled, SrtpRefusal};
use crate::media::sdp::{AudioSecurity, ConnectionRefusal, Direction, Sdp, SdpError};
use crate::media::srtp::SrtpKeys;
use crate::sip::body;
use crate::sip::msg::{Request, Response, name};
use crate::sip::transaction::ServerKey;
use crate::sip::transport::Zone;

use super::leg::{LegId, Role};
use super::{Action, Call, Relay, RelayPeer, RelayUpdate, SdpResult, State};

/// An offer inside the call that is refused: the status it is answered with, and for a `c=`
/// rule the `Warning` naming it.
#[derive(Debug)]
pub(super) struct OfferRefused {
    status: u16,
    warning: Option<String>,
    /// A 415: the answer says what the gateway takes (RFC 3261 §21.4.13).
    accept: bool,
}

impl OfferRefused {
    fn status(status: u16) -> OfferRefused {
        OfferRefused { status, warning: None, accept: false }
    }
}

/// SDES in an SDP toward a leg: our `a=crypto` lines and whether the profile is RTP/SAVP, or
/// `None` for plain RTP/AVP (see [`AudioSecurity`]). Owned, so that the leg's origin can be
/// borrowed while the SDP is printed.
pub(super) type Lines = Option<(bool, Vec<Crypto>)>;

pub(super) fn security(lines: &Lines) -> AudioSecurity<'_> {
    match lines {
        Some((savp, crypto)) => AudioSecurity::Sdes { savp: *savp, crypto },
        None => AudioSecurity::Plain,
    }
}

/// A re-offer relayed from one leg to the other, until its answer comes back: the codecs it
/// allows, and the SDES its offerer's offer settled (the offerer, its profile, its keys),
/// applied when the answer is (RFC 4568 §7.1.4: the offerer uses new keys once answered).
#[derive(Clone, Debug)]
pub(super) struct Reoffer {
    negotiated: Negotiated,
    srtp: Option<(LegId, bool, Settled)>,
}

impl Call {
    /// Where the relay binds its two sides.
    pub(super) fn relay_binds(&self) -> (IpAddr, IpAddr) {
        let mut binds = [IpAddr::from([0, 0, 0, 0]); 2];
        for leg in self.bridge {
            let (bind, _) = self.media_ip(leg);
            binds[side_index(self.leg(leg).media)] = bind;
        }
        (binds[0], binds[1])
    }

    /// Who each side of the relay faces (see [`RelayPeer`]).
    pub(super) fn relay_peers(&self) -> [RelayPeer; 2] {
        let mut peers = [RelayPeer::default(); 2];
        for leg in self.bridge {
            peers[side_index(self.leg(leg).media)] = self.relay_peer(leg);
        }
        peers
    }

    /// The SIP peer of `leg` as its relay side's guard sees it: whether it faces a carrier,
    /// and the IP its requests come from (an origin) or ours go to (a dialed leg, once looked
    /// up).
    pub(super) fn relay_peer(&self, leg: LegId) -> RelayPeer {
        let ip = self.leg(leg).dialog.target.remote.ip();
        RelayPeer {
            carrier: self.faces_carrier(leg),
            signalling: (!ip.is_unspecified()).then_some(ip),
        }
    }

    /// Whether `leg`'s peer is outside, as a carrier is: a carrier's leg, or a leg on the
    /// carrier-facing listener (a transfer destination, Phone or Sip).
    pub(super) fn faces_carrier(&self, leg: LegId) -> bool {
        let l = self.leg(leg);
        l.role == Role::Carrier || l.dialog.target.zone == Zone::Carrier
    }

    /// The `c=` rules on an SDP answer that came from `leg` (see the module docs): `None` when
    /// it may be used (or `leg` does not face a carrier).
    pub(super) fn refused_answer(&self, leg: LegId, answer: &Sdp) -> Option<ConnectionRefusal> {
        if !self.faces_carrier(leg) {
            return None;
        }
        let own = &self.config.own_addresses;
        answer.refused_answer_connection(|target| own.contains(target))
    }

    /// The relay runs: no media is owed before the answer (held), the origin's address from
    /// its offer, the offer to the dialed leg rewritten to the relay; then the INVITE.
    pub(super) fn relay_started(&mut self, now: Instant, a: u16, b: u16) {
        if self.relay != Relay::Starting {
            return;
        }
        self.relay = Relay::Running { a, b };
        self.out.push(Action::UpdateRelay(RelayUpdate::Hold(true)));
        let [origin, dialed] = self.bridge;
        // A call the gateway places dials its first leg first; its offer is the gateway's own.
        let placed = self.then.is_some();
        let dialed = if placed { origin } else { dialed };
        // SRTP keys settled before the relay ran: the origin's, on the front door's answer to
        // its offer.
        for leg in self.bridge {
            if let Some(keys) = &self.leg(leg).srtp.keys {
                let (side, keys) = (self.leg(leg).media, Some(Box::new(keys.clone())));
                self.out.push(Action::UpdateRelay(RelayUpdate::Srtp { side, keys }));
            }
        }
        let (_, advertised) = self.media_ip(dialed);
        let origin_side = self.leg(origin).media;
        let dialed_side = self.leg(dialed).media;
        let Some(port) = self.relay.port(dialed_side) else { return };
        let lines = self.open_offer(dialed);
        let Some(offer) = &mut self.offer else { return };
        if !offer.delayed && !placed {
            // (A delayed offer's address is a placeholder: the origin's comes with its ACK.)
            let remote = offer.sdp.audio_endpoint();
            self.out.push(Action::UpdateRelay(RelayUpdate::Remote { side: origin_side, remote }));
        }
        offer.sdp.rewrite_for_relay(
            &mut self.legs[dialed.0].origin,
            advertised,
            port,
            security(&lines),
        );
        self.send_invite(now, dialed);
    }

    /// An SDP that came from `from` and goes to its peer: the relay learns `from`'s address
    /// and the SDP gets ours on the peer's side, with `lines` (SDES toward the peer, or plain).
    /// Without a relay it is left as it is. Gives the SDP as printed for the other leg (printed
    /// as it is when there is no relay port).
    fn rewrite_toward(&mut self, from: LegId, sdp: &mut Sdp, lines: &Lines) -> Vec<u8> {
        let to = self.peer(from);
        let (_, advertised) = self.media_ip(to);
        let Some(port) = self.relay.port(self.leg(to).media) else { return sdp.to_bytes() };
        let side = self.leg(from).media;
        self.out
            .push(Action::UpdateRelay(RelayUpdate::Remote { side, remote: sdp.audio_endpoint() }));
        sdp.rewrite_for_relay(&mut self.legs[to.0].origin, advertised, port, security(lines))
    }

    /// An SDP from `leg`'s peer, read as its SRTP policy allows: RTP/SAVP only when it takes
    /// SRTP.
    pub(super) fn parse_from(&self, leg: LegId, text: &[u8]) -> Result<Sdp, SdpError> {
        if self.leg(leg).srtp.policy.is_disabled() {
            Sdp::parse(text)
        } else {
            Sdp::parse_srtp(text)
        }
    }

    /// Our first offer toward `leg`, by its policy ([`sdes::offer`]): fresh keys, kept until
    /// it answers.
    pub(super) fn open_offer(&mut self, leg: LegId) -> Lines {
        let srtp = &mut self.legs[leg.0].srtp;
        srtp.offered = sdes::offer(srtp.policy);
        srtp.offered.clone()
    }

    /// A re-offer toward `leg`: the key settled with it, again (RFC 4568 §7.1.4 lets it
    /// stay), or plain.
    fn reoffer_to(&mut self, leg: LegId) -> Lines {
        let srtp = &mut self.legs[leg.0].srtp;
        srtp.offered = srtp.settled();
        srtp.offered.clone()
    }

    /// `leg`'s peer answered our offer: SDES settled by its policy ([`sdes::settle_answer`]),
    /// the keys kept and given to the relay.
    pub(super) fn settle_from(&mut self, leg: LegId, answer: &Sdp) -> Result<(), SrtpRefusal> {
        let srtp = &self.leg(leg).srtp;
        if srtp.policy.is_disabled() {
            return Ok(());
        }
        let offered = srtp.offered.as_ref().map_or(&[][..], |(_, lines)| lines.as_slice());
        let savp = answer.audio_is_srtp();
        let settled = sdes::settle_answer(srtp.policy, offered, savp, &answer.audio_crypto())?;
        self.set_keys(leg, savp, settled);
        Ok(())
    }

    /// A re-offer from `leg`'s peer, answered by its policy ([`sdes::answer_offer`]). Our key
    /// stays what it was when the suite does (a re-INVITE for hold need not rekey the relay).
    /// `None`: the leg takes no SRTP.
    fn answer_reoffer(
        &self,
        leg: LegId,
        offer: &Sdp,
    ) -> Result<Option<(bool, Settled)>, SrtpRefusal> {
        let srtp = &self.leg(leg).srtp;
        if srtp.policy.is_disabled() {
            return Ok(None);
        }
        let savp = offer.audio_is_srtp();
        let mut settled = sdes::answer_offer(srtp.policy, savp, &offer.audio_crypto())?;
        if let (Settled::Srtp { remote, local }, Some(keys)) = (&mut settled, &srtp.keys)
            && keys.local.suite == remote.suite
        {
            *local = Crypto { tag: remote.tag, ..keys.local.clone() };
        }
        Ok(Some((savp, settled)))
    }

    /// New SDES state for `leg`: kept on the leg, and given to its relay side when the keys
    /// changed.
    fn set_keys(&mut self, leg: LegId, savp: bool, settled: Settled) {
        let keys = match settled {
            Settled::Plain => None,
            Settled::Srtp { remote, local } => Some(SrtpKeys { remote, local }),
        };
        let running = matches!(self.relay, Relay::Running { .. });
        let l = &mut self.legs[leg.0];
        l.srtp.savp = savp;
        if l.srtp.keys == keys {
            return;
        }
        l.srtp.keys = keys.clone();
        let side = l.media;
        if !running {
            return;
        }
        let keys = keys.map(Box::new);
        // A transfer leg that has not answered yet is on the relay's spare, not on its side.
        let update = if self.is_bridging(leg) {
            RelayUpdate::SpareSrtp(keys)
        } else {
            RelayUpdate::Srtp { side, keys }
        };
        self.out.push(Action::UpdateRelay(update));
    }

    /// Hold (sendonly, recvonly, inactive) suspends the media timeout; sendrecv resumes it.
    fn media_direction(&mut self, direction: Direction) {
        if matches!(self.relay, Relay::Running { .. }) {
            let hold = direction != Direction::SendRecv;
            self.out.push(Action::UpdateRelay(RelayUpdate::Hold(hold)));
        }
    }

    /// The dialed leg's SDP answer in a 18x or 2xx, checked against the offer: what goes to
    /// the origin. `Err` when the answer breaks the policy (a codec that was not offered).
    pub(super) fn answer_from(&mut self, leg: LegId, resp: &Response) -> SdpResult {
        let Some(text) = body::sdp(&resp.headers, &resp.body).map_err(|e| e.status_code())? else {
            return Ok(None);
        };
        let Some(offer) = &self.offer else {
            return Ok(Some(text));
        };
        let final_ = (200..300).contains(&resp.status);
        if offer.delayed && !final_ {
            // The origin's offer will be in the 2xx: a provisional cannot carry it without
            // 100rel (RFC 3262), so early media SDP stays on the dialed leg.
            return Ok(None);
        }
        let delayed = offer.delayed;
        let mut answer = self.parse_from(leg, &text).map_err(|e| e.status_code())?;
        if let Some(refusal) = self.refused_answer(leg, &answer) {
            let (role, rule) = (self.leg(leg).role.as_str(), refusal.rule().as_str());
            tracing::warn!(session = %self.session_id, role, rule, "the SDP answer is refused: {}", refusal.text());
            if final_ {
                self.hangup_reason =
                    Some(format!("the {role}'s SDP answer is refused: {rule}: {}", refusal.text()));
            }
            return Err(488);
        }
        let chosen = codec::check_answer(&offer.negotiated, &answer).map_err(|e| {
            tracing::warn!(session = %self.session_id, error = %e, "the SDP answer breaks the codec policy");
            e.status_code()
        })?;
        tracing::debug!(session = %self.session_id, codec = chosen.codec.as_str(), "codec chosen");
        if let Err(refusal) = self.settle_from(leg, &answer) {
            let (role, rule) = (self.leg(leg).role.as_str(), RefusalRule::from(refusal).as_str());
            tracing::warn!(session = %self.session_id, role, rule, "the SDP answer is refused: {refusal}");
            if final_ {
                self.hangup_reason =
                    Some(format!("the {role}'s SDP answer is refused: {rule}: {refusal}"));
            }
            return Err(488);
        }
        if delayed {
            // What the dialed leg accepted becomes the offer to the origin, whose ACK answers.
            self.late_offer = Some(codec::Negotiated { formats: chosen.formats.clone() });
        }
        self.chosen = Some(chosen);
        // Toward the other leg: our answer to its offer (the keys settled with it), or, for a
        // delayed offer, our offer to it.
        let to = self.peer(leg);
        let lines = if delayed { self.open_offer(to) } else { self.leg(to).srtp.settled() };
        let printed = self.rewrite_toward(leg, &mut answer, &lines);
        if final_ && !delayed {
            // Answered: media is owed from now on, unless the answer puts the call on hold.
            self.media_direction(answer.direction());
        }
        Ok(Some(printed.into()))
    }

    /// A delayed offer's answer, in the origin's ACK of our 2xx: checked against what we
    /// offered and given to the relay. No SDP or an unusable one ends the call on both legs
    /// (RFC 3264 §5: an answer is owed; RFC 3261 §13.2.1: the ACK is the last chance).
    pub(super) fn on_late_answer(&mut self, now: Instant, ack: &Request) {
        let Some(offered) = self.late_offer.take() else { return };
        let did_not_answer = |problem: String| {
            format!("the carrier's ACK did not answer the gateway's offer: {problem}")
        };
        let checked = match body::sdp(&ack.headers, &ack.body) {
            Err(e) => Err(did_not_answer(e.to_string())),
            Ok(None) => Err(did_not_answer("no SDP".to_string())),
            Ok(Some(text)) => self
                .parse_from(Call::ORIGIN, &text)
                .map_err(|e| e.to_string())
                .and_then(|sdp| {
                    codec::check_answer(&offered, &sdp).map(|_| sdp).map_err(|e| e.to_string())
                })
                .map_err(did_not_answer)
                .and_then(|sdp| match self.refused_answer(Call::ORIGIN, &sdp) {
                    Some(refusal) => Err(format!(
                        "the carrier's SDP answer in its ACK is refused: {}: {}",
                        refusal.rule().as_str(),
                        refusal.text()
                    )),
                    None => Ok(sdp),
                }),
        };
        let checked = checked.and_then(|answer| match self.settle_from(Call::ORIGIN, &answer) {
            Ok(()) => Ok(answer),
            Err(refusal) => Err(format!(
                "the carrier's SDP answer in its ACK is refused: {}: {refusal}",
                RefusalRule::from(refusal).as_str()
            )),
        });
        match checked {
            Ok(answer) => {
                let side = self.leg(Call::ORIGIN).media;
                let remote = answer.audio_endpoint();
                self.out.push(Action::UpdateRelay(RelayUpdate::Remote { side, remote }));
                self.media_direction(answer.direction());
            }
            Err(reason) => {
                tracing::warn!(session = %self.session_id, "{reason}; ending the call");
                self.hangup_reason = Some(reason);
                self.hang_up_both(now);
            }
        }
    }

    /// No RTP for the media timeout: both legs are hung up and the reason recorded.
    pub(super) fn media_timeout(&mut self, now: Instant, silent: Silent, after: Duration) {
        if self.state != State::Answered {
            return;
        }
        let name = |side: RelaySide| {
            self.bridge
                .iter()
                .map(|l| self.leg(*l))
                .find(|l| l.media == side)
                .map(|l| l.role.as_str())
                .unwrap_or(side.as_str())
        };
        let silent = match silent {
            Silent::One(side) => name(side),
            Silent::Both => "both sides",
        };
        let reason = format!("media timeout: no RTP from {silent} for {}s", after.as_secs());
        tracing::warn!(session = %self.session_id, "{reason}; ending the call");
        self.hangup_reason = Some(reason);
        self.hang_up_both(now);
    }

    /// A new offer inside the call (re-INVITE, UPDATE) from `from`: the `c=` rules when it
    /// faces a carrier (see the module docs), the codec policy again, the relay told where
    /// `from` wants media now, the SDP rewritten to our side of the other leg, hold or resume.
    /// `Ok(None)`: no SDP, nothing to change. `Err`: nothing changed; answer it with
    /// [`Call::refuse_offer`].
    pub(super) fn relay_offer(
        &mut self,
        key: &ServerKey,
        from: LegId,
        req: &Request,
    ) -> Result<Option<Bytes>, OfferRefused> {
        if req.body.is_empty() || !matches!(self.relay, Relay::Running { .. }) {
            return Ok(None);
        }
        let text = match body::sdp(&req.headers, &req.body) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            Err(e) => {
                let mut refused = OfferRefused::status(e.status_code());
                if let body::BodyError::Unsupported(_) = e {
                    refused.accept = true;
                }
                return Err(refused);
            }
        };
        let mut sdp =
            self.parse_from(from, &text).map_err(|e| OfferRefused::status(e.status_code()))?;
        if self.faces_carrier(from) {
            let own = &self.config.own_addresses;
            if let Some(refusal) = sdp.refused_connection(false, |target| own.contains(target)) {
                let rule = refusal.rule().as_str();
                tracing::info!(session = %self.session_id, rule, "a re-offer is refused: {}", refusal.text());
                let warning = crate::config::refusal::warning(rule, refusal.text());
                return Err(OfferRefused { status: 488, warning: Some(warning), accept: false });
            }
        }
        let srtp = self.answer_reoffer(from, &sdp).map_err(|refusal| {
            let rule = RefusalRule::from(refusal).as_str();
            tracing::info!(session = %self.session_id, rule, "a re-offer is refused: {refusal}");
            let warning = crate::config::refusal::warning(rule, &refusal.to_string());
            OfferRefused { status: 488, warning: Some(warning), accept: false }
        })?;
        let negotiated = codec::filter_offer(&mut sdp, &self.codecs)
            .map_err(|e| OfferRefused::status(e.status_code()))?;
        self.media_direction(sdp.direction());
        let to = self.peer(from);
        let lines = self.reoffer_to(to);
        let printed = self.rewrite_toward(from, &mut sdp, &lines);
        let srtp = srtp.map(|(savp, settled)| (from, savp, settled));
        self.reoffers.insert(key.clone(), Reoffer { negotiated, srtp });
        Ok(Some(printed.into()))
    }

    /// The final answer to an offer [`Call::relay_offer`] refused, with its `Warning` if any.
    pub(super) fn refuse_offer(&mut self, now: Instant, key: &ServerKey, refused: OfferRefused) {
        let Some(mut out) = self.response_for(key, refused.status) else { return };
        out.headers.push(name::SERVER, self.config.user_agent.as_str());
        if let Some(warning) = refused.warning {
            out.headers.push(name::WARNING, warning);
        }
        if refused.accept {
            out.headers.push("Accept", body::ACCEPT);
        }
        self.respond(now, key, out);
    }

    /// The answer to a relayed offer, coming back from `from`: checked, the relay told, the
    /// SDP rewritten for the other leg. Unusable SDP is dropped (the offerer keeps the old
    /// media).
    pub(super) fn relay_answer(
        &mut self,
        key: &ServerKey,
        from: LegId,
        resp: &Response,
    ) -> Option<bytes::Bytes> {
        let Reoffer { negotiated, srtp } = self.reoffers.get(key)?.clone();
        let text = body::sdp(&resp.headers, &resp.body).ok()??;
        let mut sdp = self.parse_from(from, &text).ok()?;
        if let Err(e) = codec::check_answer(&negotiated, &sdp) {
            tracing::warn!(session = %self.session_id, error = %e, "a re-INVITE answer breaks the codec policy; its SDP is dropped");
            return None;
        }
        if let Some(refusal) = self.refused_answer(from, &sdp) {
            let rule = refusal.rule().as_str();
            tracing::warn!(session = %self.session_id, rule, "a re-INVITE answer is refused, its SDP is dropped: {}", refusal.text());
            return None;
        }
        if let Err(refusal) = self.settle_from(from, &sdp) {
            let rule = RefusalRule::from(refusal).as_str();
            tracing::warn!(session = %self.session_id, rule, "a re-INVITE answer is refused, its SDP is dropped: {refusal}");
            return None;
        }
        // The offerer's keys change now that its offer is answered.
        if let Some((offerer, savp, settled)) = srtp {
            self.set_keys(offerer, savp, settled);
        }
        let lines = self.leg(self.peer(from)).srtp.settled();
        Some(self.rewrite_toward(from, &mut sdp, &lines).into())
    }
}

fn side_index(side: RelaySide) -> usize {
    match side {
        RelaySide::A => 0,
        RelaySide::B => 1,
    }
}
