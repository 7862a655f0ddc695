//! Bridged transfers (mode `Bridge`, the default; issue 13): the gateway dials the destination
//! itself as a third leg (role [`Role::Transfer`]) while the caller keeps talking to the agent,
//! and when it answers, the caller's media moves to it and the agent's leg ends.
//!
//! ```text
//!   REFER ─► 202, NOTIFY 100 ─► PrepareTransfer ─► on_transfer_dial ─► (Resolve)
//!     ─► StartTransferMedia (guarded for the destination's addresses) ─► TransferMediaStarted
//!     ─► INVITE with the codec in use, on the spare ports
//!     ─► 18x: NOTIFY 18x to the agent (its early media reaches the agent, not the caller)
//!     ─► 2xx: ACK, PromoteSpare (the spare ports become side B), bridge = (caller, transfer),
//!             NOTIFY 200 to the agent, BYE to the agent
//!     ─► failure (4xx-6xx, no answer in `transfer_timeout`, no ports, limits, unreachable):
//!             DropSpare, NOTIFY with the status; the caller stays with the agent
//! ```
//!
//! The leg is built outside the machine ([`Action::PrepareTransfer`]: the destination's trunk,
//! its limits and our addresses are the driver's), so the machine stays free of I/O; what the
//! leg does on the wire is decided here. The caller's side is never re-INVITEd: side A's relay
//! ports stay, and the new leg is offered fresh ports of its own (on the carrier-facing
//! address), which replace side B's when it answers. The destination is looked up before those
//! ports are bound, so that their source guard knows the address our INVITE goes to from the
//! first packet: a destination on the carrier-facing listener is strict as a carrier's side is
//! (issue 15; its SDP's IP, its SIP address and its trunk's media allowlist alone may latch
//! the ports), before and after they become side B. Its SDP answers follow the carrier's `c=`
//! rules (`media.rs`): a 2xx that breaks them fails the transfer as a codec mismatch does.
//!
//! An agent that hangs up while the destination rings (a blind transfer, or a BYE that carried
//! the transfer header) leaves the caller waiting for it: the transfer goes on, and if it fails
//! the caller is hung up with a `Reason` saying so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::model::{Codec, TransferRoute};
use crate::media::codec;
use crate::media::relay::Leg as RelaySide;
use crate::media::sdp::{Direction, Sdp};
use crate::sip::msg::{self, DialogHeaders, Response};

use super::leg::{LegId, LegInvite, Phase, Role};
use super::{Action, Call, Destination, Dial, MediaOffer, Record, Relay, RelayUpdate, State};

/// What the driver is asked to build for a bridged transfer ([`Action::PrepareTransfer`]).
#[derive(Clone, Debug)]
pub struct TransferRequest {
    pub destination: Arc<TransferRoute>,
    /// The caller's number (the user part of the caller leg's remote URI): the new leg's caller
    /// id where the destination's trunk allows it.
    pub caller: String,
    /// Our number on the caller's leg (the number the caller dialed, or the caller id we
    /// presented on an outbound call): the diverting party in `Diversion`.
    pub diverter: String,
    /// `Referred-By` and the agent's `X-*` headers, which travel to the new leg.
    pub headers: Vec<(String, String)>,
    /// The codec in use on the caller's leg: the only one offered to the new leg.
    pub codec: Codec,
}

/// A bridged transfer in progress.
#[derive(Debug)]
pub(super) struct Bridging {
    /// The agent's leg, which asked (and hears the progress while it stays).
    pub agent: LegId,
    /// The caller's leg, which stays.
    pub caller: LegId,
    /// `namespace/name` of the destination.
    pub destination: String,
    /// The agent asked with REFER and hears the progress in NOTIFYs (a BYE transfer does not).
    pub notify: bool,
    pub asked: Instant,
    pub codec: Codec,
    /// The new leg, once the driver built it.
    pub leg: Option<LegId>,
    /// Our RTP port on the new leg's spare relay ports, and the offer made with it.
    pub port: Option<u16>,
    pub offer: Option<MediaOffer>,
}

/// The user part of a SIP or tel URI (`sip:+14155550100@host;user=phone` → `+14155550100`).
pub fn user_of(uri: &str) -> String {
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    let user = match rest.split_once('@') {
        Some((user, _)) => user,
        None if uri.to_ascii_lowercase().starts_with("tel:") => rest,
        None => "",
    };
    user.split(';').next().unwrap_or_default().to_string()
}

impl Call {
    /// Whether `leg` is the leg of the bridged transfer in progress.
    pub(super) fn is_bridging(&self, leg: LegId) -> bool {
        self.bridging.as_ref().is_some_and(|b| b.leg == Some(leg))
    }

    /// The codec a bridged transfer would offer, if the call can be bridged elsewhere: media
    /// flows through the relay and an answer chose a codec.
    pub(super) fn bridgeable(&self) -> Option<Codec> {
        let relayed = matches!(self.relay, Relay::Running { .. });
        self.chosen.as_ref().map(|c| c.codec).filter(|_| relayed)
    }

    /// Starts a bridged transfer to `destination` asked by `agent` (checked: the call is
    /// answered, nothing else is transferring, `codec` is [`Call::bridgeable`]).
    pub(super) fn start_bridge(
        &mut self,
        now: Instant,
        agent: LegId,
        destination: Arc<TransferRoute>,
        headers: Vec<(String, String)>,
        codec: Codec,
    ) {
        let caller = self.peer(agent);
        let notify = self.leg(agent).phase != Phase::Terminated;
        let dialog = &self.leg(caller).dialog;
        let request = TransferRequest {
            caller: user_of(&dialog.remote_uri.uri),
            diverter: user_of(&dialog.local_uri.uri),
            destination: destination.clone(),
            headers,
            codec,
        };
        tracing::info!(session = %self.session_id, destination = %destination.name, "bridged transfer: dialing the destination");
        self.bridging = Some(Box::new(Bridging {
            agent,
            caller,
            destination: destination.name.to_string(),
            notify,
            asked: now,
            codec,
            leg: None,
            port: None,
            offer: None,
        }));
        self.out.push(Action::PrepareTransfer(request));
    }

    /// The driver built the transfer's leg (or could not: a status for the agent and why).
    pub fn on_transfer_dial(
        &mut self,
        now: Instant,
        dial: Result<Dial, (u16, String)>,
    ) -> Vec<Action> {
        let waiting = self.bridging.as_ref().is_some_and(|b| b.leg.is_none());
        if !waiting || self.state != State::Answered {
            return self.take();
        }
        match dial {
            Err((status, reason)) => self.bridge_failed(now, status, &reason),
            Ok(dial) => {
                let id = LegId(self.legs.len());
                let (mut leg, target) = super::dialed_leg(id, dial, &mut self.ids);
                leg.role = Role::Transfer;
                leg.media = RelaySide::B;
                let call_id = leg.dialog.call_id.clone();
                self.legs.push(leg);
                if let Some(b) = self.bridging.as_mut() {
                    b.leg = Some(id);
                }
                self.out.push(Action::Listen { call_id });
                // Its address first: the spare's guard admits it from the first packet.
                match target {
                    Destination::Address(address) => self.transfer_resolved(now, id, Ok(address)),
                    Destination::Lookup { host, port } => {
                        self.out.push(Action::Resolve { leg: id, host, port })
                    }
                    Destination::Srv { service, host, port } => {
                        self.out.push(Action::ResolveSrv { leg: id, service, host, port })
                    }
                }
            }
        }
        self.take()
    }

    /// The spare relay ports are bound: the offer (the codec in use, on them) is made and the
    /// destination invited.
    pub(super) fn transfer_media_started(&mut self, now: Instant, port: u16) {
        let Some((leg, codec)) = self.bridging.as_ref().and_then(|b| Some((b.leg?, b.codec)))
        else {
            return;
        };
        let Some((mut sdp, negotiated)) = codec::gateway_offer(&[codec]) else {
            return self.bridge_failed(now, 488, "no offer for the codec in use");
        };
        let (_, advertised) = self.media_ip(leg);
        // SRTP as the destination's policy says (the offer's keys kept until it answers).
        let lines = self.open_offer(leg);
        sdp.rewrite_for_relay(
            &mut self.legs[leg.0].origin,
            advertised,
            port,
            super::media::security(&lines),
        );
        let Some(b) = self.bridging.as_mut() else { return };
        b.port = Some(port);
        b.offer = Some(MediaOffer { sdp, negotiated, delayed: false });
        if self.leg(leg).phase == Phase::Resolving {
            self.send_invite(now, leg);
        }
    }

    /// The transfer leg's address (or why there is none): its spare relay ports are bound,
    /// guarded for its peer.
    pub(super) fn transfer_resolved(
        &mut self,
        now: Instant,
        leg: LegId,
        address: Result<SocketAddr, String>,
    ) {
        match address {
            Err(why) => {
                tracing::warn!(session = %self.session_id, error = %why, "transfer destination unreachable");
                self.leg_mut(leg).phase = Phase::Terminated;
                self.bridge_failed(now, 503, "the destination cannot be reached");
            }
            Ok(address) if self.leg(leg).phase == Phase::Resolving => {
                self.leg_mut(leg).dialog.target.remote = address;
                let (bind, _) = self.media_ip(leg);
                let peer = self.relay_peer(leg);
                self.out.push(Action::StartTransferMedia { bind, peer });
            }
            Ok(_) => {}
        }
    }

    /// The transfer leg's answers to our INVITE.
    pub(super) fn on_transfer_response(&mut self, now: Instant, leg: LegId, resp: &Response) {
        let status = resp.status;
        let phase = self.leg(leg).phase;
        let ring = now + self.config.transfer_timeout;
        if status < 200 {
            if let Some(tag) = resp.to().and_then(|t| t.tag().map(str::to_string)) {
                self.leg_mut(leg).dialog.remote_tag = Some(tag);
            }
            let first_ring = status > 100 && matches!(phase, Phase::Inviting | Phase::Trying);
            if first_ring || phase == Phase::Inviting {
                let l = self.leg_mut(leg);
                l.phase = if status > 100 { Phase::Early } else { Phase::Trying };
                l.deadline = Some(ring);
            }
            if status > 100 {
                // Early media (ringback, announcements) goes to the agent, never the caller.
                match self.transfer_answer(leg, resp) {
                    Ok(sdp) => {
                        let remote = sdp.audio_endpoint();
                        self.out.push(Action::UpdateRelay(RelayUpdate::SpareRemote(remote)));
                    }
                    Err(why) if !resp.body.is_empty() => {
                        tracing::warn!(session = %self.session_id, "the transfer destination's early SDP is dropped: {why}");
                    }
                    Err(_) => {}
                }
                if first_ring {
                    self.notify_agent(now, &status_line(resp), false);
                }
            }
            return;
        }
        self.leg_mut(leg).deadline = None;
        if (200..300).contains(&status) {
            self.confirm_2xx(now, leg, resp);
            self.leg_mut(leg).phase = Phase::Confirmed;
            return match self.transfer_answer(leg, resp) {
                Ok(answer) => self.bridge_completed(now, leg, &answer),
                Err(why) => {
                    tracing::warn!(session = %self.session_id, "the transfer destination answered without usable SDP: {why}");
                    self.bye(now, leg);
                    self.bridge_failed(now, 488, &format!("the destination's answer: {why}"))
                }
            };
        }
        if matches!(status, 401 | 407) && phase.is_pending() {
            match self.answer_challenge(now, leg, resp) {
                Ok(()) => return,
                Err(reason) => {
                    tracing::warn!(session = %self.session_id, peer_status = status, "transfer destination refused the call: {reason}");
                    let role = Role::Transfer;
                    self.out.push(Action::Record(Record::AuthRefused { role, reason }));
                    self.leg_mut(leg).phase = Phase::Terminated;
                    return self.bridge_failed(now, 403, "the destination refused our credentials");
                }
            }
        }
        self.leg_mut(leg).phase = Phase::Terminated;
        tracing::info!(session = %self.session_id, peer_status = status, "transfer destination did not take the call");
        self.bridge_failed(now, status, "the destination did not take the call");
    }

    /// The SDP of a transfer leg's 18x/2xx, checked against what it was offered and, for a
    /// carrier-facing destination, against the `c=` rules and its SRTP policy (the keys it
    /// settles go to the relay's spare); or why it cannot be used.
    fn transfer_answer(&mut self, leg: LegId, resp: &Response) -> Result<Sdp, String> {
        let offer = self.bridging.as_ref().and_then(|b| b.offer.as_ref());
        let offer = offer.ok_or_else(|| "no offer was made".to_string())?;
        let text = crate::sip::body::sdp(&resp.headers, &resp.body)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no SDP".to_string())?;
        let sdp = self.parse_from(leg, &text).map_err(|e| e.to_string())?;
        codec::check_answer(&offer.negotiated, &sdp)
            .map_err(|e| format!("it breaks the codec policy: {e}"))?;
        if let Some(refusal) = self.refused_answer(leg, &sdp) {
            return Err(format!("{}: {}", refusal.rule().as_str(), refusal.text()));
        }
        self.settle_from(leg, &sdp).map_err(|refusal| {
            let rule = crate::config::refusal::RefusalRule::from(refusal);
            format!("{}: {refusal}", rule.as_str())
        })?;
        Ok(sdp)
    }

    /// The destination answered: the caller's media moves to it (the spare ports become side
    /// B), the bridge joins the caller and the new leg, the agent hears 200 and gets BYE.
    fn bridge_completed(&mut self, now: Instant, leg: LegId, answer: &Sdp) {
        let Some(b) = self.bridging.take() else { return };
        self.out.push(Action::UpdateRelay(RelayUpdate::PromoteSpare(answer.audio_endpoint())));
        if let (Relay::Running { a, .. }, Some(port)) = (self.relay, b.port) {
            self.relay = Relay::Running { a, b: port };
        }
        self.bridge = [b.caller, leg];
        // Media is owed again (a blind transfer held the call while the agent was gone).
        self.out.push(Action::UpdateRelay(RelayUpdate::Hold(
            answer.direction() != Direction::SendRecv,
        )));
        // (Neither goes to an agent that has left: both skip a leg that is over.)
        if b.notify {
            self.notify_refer(now, b.agent, "SIP/2.0 200 OK", true);
        }
        self.bye(now, b.agent);
        tracing::info!(session = %self.session_id, destination = %b.destination, "bridged transfer completed: the caller talks to the destination");
        self.hangup_reason = None;
        self.record_transfer(now, &b.destination, "Bridge", "completed", Some(200), b.asked);
    }

    /// The transfer failed with `status` (the destination's, or ours for no answer, no ports,
    /// limits): the new leg is given up, its ports go, and the agent hears the status. The
    /// caller stays with the agent, or is hung up if the agent has left.
    pub(super) fn bridge_failed(&mut self, now: Instant, status: u16, why: &str) {
        let Some(b) = self.bridging.take() else { return };
        if let Some(leg) = b.leg {
            self.leg_mut(leg).deadline = None;
            self.give_up_leg(now, leg);
            self.out.push(Action::UpdateRelay(RelayUpdate::DropSpare));
        }
        self.record_transfer(now, &b.destination, "Bridge", "failed", Some(status), b.asked);
        let line = format!("SIP/2.0 {status} {}", msg::reason_phrase(status));
        if self.leg(b.agent).phase != Phase::Terminated {
            tracing::info!(session = %self.session_id, destination = %b.destination, status, why, "bridged transfer failed; the caller stays with the agent");
            if b.notify {
                self.notify_refer(now, b.agent, &line, true);
            }
            return;
        }
        tracing::info!(session = %self.session_id, destination = %b.destination, status, why, "bridged transfer failed after the agent left; hanging up the caller");
        self.transfer_abandoned(now, b.caller, &b.destination, status);
    }

    /// A transfer failed after the agent hung up: nobody is left for the caller.
    pub(super) fn transfer_abandoned(
        &mut self,
        now: Instant,
        caller: LegId,
        destination: &str,
        status: u16,
    ) {
        self.hangup_reason =
            Some(format!("transfer to {destination} failed ({status}) after the agent left"));
        let reason = format!("SIP;cause={status};text=\"transfer failed\"");
        self.bye_with(now, caller, Some(&reason));
        self.end(now);
    }

    /// The transfer leg's deadline: no answer in `transfer_timeout` (480, CANCEL), or nothing
    /// at all from it (408).
    pub(super) fn transfer_deadline(&mut self, now: Instant, leg: LegId) {
        match self.leg(leg).phase {
            Phase::Early | Phase::Trying => {
                tracing::info!(session = %self.session_id, "transfer destination did not answer in time");
                self.bridge_failed(now, 480, "no answer")
            }
            Phase::Inviting => {
                if let LegInvite::Client(key) = &self.leg(leg).invite {
                    let key = key.clone();
                    self.clients.remove(&key);
                }
                self.leg_mut(leg).phase = Phase::Terminated;
                self.bridge_failed(now, 408, "no response from the destination")
            }
            _ => {}
        }
    }

    /// The agent hung up while the destination rings: the transfer goes on without it (the
    /// media timeout is held off, the caller hears nothing until the answer).
    pub(super) fn agent_left_bridging(&mut self, leg: LegId) -> bool {
        let Some(b) = self.bridging.as_mut().filter(|b| b.agent == leg) else { return false };
        b.notify = false;
        self.leg_mut(leg).phase = Phase::Terminated;
        tracing::info!(session = %self.session_id, "the agent left during a bridged transfer; the transfer goes on");
        self.out.push(Action::UpdateRelay(RelayUpdate::Hold(true)));
        true
    }

    /// A NOTIFY of the bridged transfer's progress to the agent, if it listens.
    fn notify_agent(&mut self, now: Instant, line: &str, last: bool) {
        let Some(b) = self.bridging.as_ref() else { return };
        // `notify_refer` skips an agent that has left.
        if b.notify {
            let agent = b.agent;
            self.notify_refer(now, agent, line, last);
        }
    }
}

/// `SIP/2.0 180 Ringing`, from a response (its own reason phrase when it has one).
fn status_line(resp: &Response) -> String {
    let reason =
        if resp.reason.is_empty() { msg::reason_phrase(resp.status) } else { &resp.reason };
    format!("SIP/2.0 {} {reason}", resp.status)
}

#[cfg(test)]
mod tests {
    use super::user_of;

    #[test]
    fn the_user_part_of_sip_and_tel_uris() {
        assert_eq!(user_of("sip:+14155550100@192.0.2.1:5060;user=phone"), "+14155550100");
        assert_eq!(user_of("tel:+14155550100;phone-context=x"), "+14155550100");
        assert_eq!(user_of("sips:alice@example.com"), "alice");
        assert_eq!(user_of("sip:example.com"), "");
    }
}
