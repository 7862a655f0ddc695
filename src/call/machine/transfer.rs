//! Transfers asked by the agent (issue 13, DESIGN §4): a REFER in the agent leg's dialog, or a
//! BYE carrying the transfer header. The destination is decided by `config::transfer` against
//! the table the call started with, in the namespace of the call's trunk, for the call's agent:
//! an arbitrary number or URI is never dialed, and the carrier side can never transfer.
//!
//! A REFER is refused with 403/485 and a `Warning` naming the rule, or answered `202 Accepted`
//! with RFC 3515 progress (`NOTIFY`, `Event: refer`, `message/sipfrag`, the subscription
//! terminated with the last one). Then, by the destination:
//! - type `Hangup`: both legs ended, the caller's BYE with a `Reason`;
//! - mode `Refer`: the REFER passed on to the caller's side with `Refer-To` written from the
//!   destination; the caller's side's answer and NOTIFYs relayed to the agent; on its final 2xx
//!   both legs are ended, on a failure the call stays up;
//! - mode `Bridge`: the gateway dials the destination itself (`bridge.rs`).
//!
//! A BYE with the transfer header is the same without progress reports: the agent has left, so
//! a transfer that fails ends the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RoutingTable;
use crate::config::model::{TransferMode, TransferTarget};
use crate::config::refusal;
use crate::config::transfer::{self, TransferAttempt, TransferChoice};
use crate::sip::msg::{Method, Request, name};
use crate::sip::transaction::ServerKey;

use super::leg::{LegId, Phase, Role};
use super::tx::Purpose;
use super::{Action, Call, Record, State};

/// What a call knows to decide its transfers.
#[derive(Clone, Debug)]
pub struct TransferContext {
    /// The table the call started with.
    pub table: Arc<RoutingTable>,
    /// The namespace of the call's trunk.
    pub namespace: String,
    /// The call's agent.
    pub agent: String,
    /// The header of a BYE that transfers: `{prefix}Transfer-To`.
    pub bye_header: String,
}

/// A transfer passed on to the caller's side (Refer mode), until it ends.
#[derive(Clone, Debug)]
pub(super) struct Referring {
    /// The agent's leg, which hears the progress (unless it has left: a BYE transfer).
    pub agent: LegId,
    /// The caller's leg, which got the REFER.
    pub caller: LegId,
    pub destination: String,
    pub asked: Instant,
    /// No final NOTIFY by then: the transfer failed (408 to the agent), the call goes on.
    pub until: Instant,
}

/// How much longer than a bridged transfer's ring time the caller's side has to report the end
/// of a transfer passed on to it (it sets its own destination up, then that rings).
const REFER_GRACE: Duration = Duration::from_secs(30);

/// The host (and port) of a SIP URI: what follows `@` (or the scheme) up to parameters.
fn host_of(uri: &str) -> String {
    let rest = uri.split_once('@').map(|(_, h)| h).or_else(|| uri.split_once(':').map(|(_, h)| h));
    rest.unwrap_or(uri).split([';', '>', '?']).next().unwrap_or_default().to_string()
}

/// A transfer the agent asked for and how it ended: logs, metrics and the session record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// `namespace/name` of the destination, or `unknown` when the request named none the agent
    /// may use (what it asked for is in the log line, not in a metric label).
    pub destination: String,
    /// `Bridge`, `Refer`, `Hangup`, or `none` for a refused request.
    pub mode: &'static str,
    /// `completed`, `failed`, `refused`, or `abandoned` (the call ended while it was dialed).
    pub outcome: &'static str,
    /// The SIP status that settled it: the destination's answer (or ours for no answer, no
    /// ports, limits), the caller side's for Refer mode, the refusal's for a refused request.
    pub status: Option<u16>,
    /// When the agent asked and when it was settled, from the start of the call.
    pub asked: Duration,
    pub settled: Duration,
}

impl Call {
    /// A REFER in one of the call's dialogs.
    pub(super) fn on_refer(&mut self, now: Instant, key: &ServerKey, leg: LegId, req: &Request) {
        let warn = |rule: &str, text: &str| (name::WARNING, refusal::warning(rule, text));
        if self.leg(leg).role != Role::Agent {
            // DESIGN §4: the carrier side can never make the gateway dial anything.
            return self.respond_with(
                now,
                key,
                403,
                &[warn("TransferFromCarrier", "only the agent transfers")],
            );
        }
        if self.state != State::Answered {
            return self.respond_with(
                now,
                key,
                403,
                &[warn("TransferBeforeAnswer", "transfer an answered call")],
            );
        }
        let targets: Vec<&str> = req.headers.get_all("Refer-To").collect();
        let [target] = targets.as_slice() else {
            return self.respond_with(now, key, 400, &[warn("BadReferTo", "one Refer-To header")]);
        };
        let Some(context) = self.transfer.clone() else {
            return self.respond_with(
                now,
                key,
                501,
                &[warn("TransferNotEnabled", "no transfers on this call")],
            );
        };
        let choice = match self.decide_transfer(now, &context, target) {
            Ok(choice) => choice,
            Err((status, header)) => return self.respond_with(now, key, status, &[header]),
        };
        if self.referring.is_some() || self.bridging.is_some() {
            let header = warn("TransferInProgress", "a transfer is in progress");
            return self.respond_with(now, key, 491, &[header]);
        }
        let bridged = !matches!(choice.destination.target, TransferTarget::Hangup)
            && choice.destination.mode == TransferMode::Bridge;
        let codec = self.bridgeable();
        if bridged && codec.is_none() {
            let header =
                warn("TransferWithoutMedia", "a call without relayed media cannot be bridged");
            return self.respond_with(now, key, 488, &[header]);
        }
        self.respond_status(now, key, 202);
        // A hang-up is done at once; anything else is being tried.
        let done = matches!(choice.destination.target, TransferTarget::Hangup);
        let first = if done { "SIP/2.0 200 OK" } else { "SIP/2.0 100 Trying" };
        self.notify_refer(now, leg, first, done);
        let headers = travelling_headers(&context, req);
        self.carry_out(now, leg, &choice, headers);
    }

    /// Decides a transfer request with `config::transfer`; a refusal is logged and recorded,
    /// and given back as its status and `Warning`.
    fn decide_transfer(
        &mut self,
        now: Instant,
        context: &TransferContext,
        target: &str,
    ) -> Result<TransferChoice, (u16, (&'static str, String))> {
        let attempt =
            TransferAttempt { namespace: &context.namespace, agent: &context.agent, target };
        let decision = transfer::decide(&context.table, &attempt);
        decision.outcome.map_err(|refusal| {
            let detail = decision.steps.last().map(|s| s.detail.clone()).unwrap_or_default();
            tracing::info!(session = %self.session_id, rule = refusal.rule.as_str(), detail, "transfer refused");
            self.record_transfer(now, "unknown", "none", "refused", Some(refusal.status), now);
            let header = (name::WARNING, refusal::warning(refusal.rule.as_str(), &refusal.message));
            (refusal.status, header)
        })
    }

    /// Carries out a decided transfer for `agent` (answered 202 already, or gone: a BYE
    /// transfer). `headers`: what travels to the destination.
    fn carry_out(
        &mut self,
        now: Instant,
        agent: LegId,
        choice: &TransferChoice,
        headers: Vec<(String, String)>,
    ) {
        let destination = choice.destination.name.to_string();
        let target = &choice.destination.target;
        let caller = self.peer(agent);
        if matches!(target, TransferTarget::Hangup) {
            return self.transfer_hang_up(now, &destination);
        }
        if choice.destination.mode == TransferMode::Bridge {
            return match self.bridgeable() {
                Some(codec) => {
                    self.start_bridge(now, agent, choice.destination.clone(), headers, codec)
                }
                None => {
                    // A BYE transfer of a call without relayed media: nothing to bridge.
                    tracing::info!(session = %self.session_id, %destination, "bridged transfer without relayed media: the caller is hung up");
                    self.record_transfer(now, &destination, "Bridge", "failed", Some(488), now);
                    self.transfer_abandoned(now, caller, &destination, 488)
                }
            };
        }
        let refer_to = match target {
            TransferTarget::Phone { number, .. } => {
                let host = host_of(&self.leg(caller).dialog.remote_target);
                format!("<sip:{}@{host};user=phone>", number.as_str())
            }
            TransferTarget::Sip { uri, .. } => format!("<{uri}>"),
            TransferTarget::Hangup => return,
        };
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let mut out = self.leg_mut(caller).dialog.request(Method::Refer, &branch, &ua);
        out.headers.push("Refer-To", refer_to.as_str());
        for (n, v) in &headers {
            out.headers.push(n, v.as_str());
        }
        tracing::info!(session = %self.session_id, %destination, %refer_to, "transfer passed on to the caller's side (REFER)");
        let until = now + self.config.transfer_timeout + REFER_GRACE;
        self.referring = Some(Referring { agent, caller, destination, asked: now, until });
        self.send_client(now, caller, out, Purpose::TransferRefer);
    }

    /// The caller's side answered the REFER we passed on: a 2xx means it will report in NOTIFYs;
    /// a failure (or none) goes to the agent as the last NOTIFY, and the call stays up.
    pub(super) fn on_refer_answer(&mut self, now: Instant, status: u16) {
        if status < 200 || (200..300).contains(&status) {
            return;
        }
        let Some(r) = self.referring.take() else { return };
        tracing::info!(session = %self.session_id, destination = %r.destination, status, "the caller's side refused the transfer");
        self.refer_failed(now, &r, status);
    }

    /// A NOTIFY in one of the call's dialogs: the progress of a transfer passed on to the
    /// caller's side, relayed to the agent. A final 2xx ends the call (the caller is talking to
    /// the destination now); a final failure leaves it up.
    pub(super) fn on_notify(&mut self, now: Instant, key: &ServerKey, leg: LegId, req: &Request) {
        let Some(r) = self.referring.clone().filter(|r| r.caller == leg) else {
            return self.respond_status(now, key, 481);
        };
        self.respond_status(now, key, 200);
        let body = String::from_utf8_lossy(&req.body);
        let line = body.lines().next().unwrap_or_default().trim().to_string();
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let terminated = req
            .headers
            .get("Subscription-State")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        if !line.starts_with("SIP/2.0 ") || status < 100 {
            tracing::debug!(session = %self.session_id, "a NOTIFY without a sipfrag status line");
            return;
        }
        let last = terminated || status >= 200;
        if !last {
            return self.notify_refer(now, r.agent, &line, false);
        }
        self.referring = None;
        if (200..300).contains(&status) {
            self.notify_refer(now, r.agent, &line, true);
            tracing::info!(session = %self.session_id, destination = %r.destination, "transfer completed by the caller's side");
            self.record_transfer(now, &r.destination, "Refer", "completed", Some(status), r.asked);
            self.hangup_reason = Some(format!("transferred to {} (referred)", r.destination));
            for l in [r.agent, r.caller] {
                self.bye(now, l);
            }
            self.end(now);
        } else {
            tracing::info!(session = %self.session_id, destination = %r.destination, status, "transfer failed at the caller's side");
            // A subscription terminated on a provisional status settled nothing: a failure.
            let status = if status >= 300 { status } else { 503 };
            self.refer_failed(now, &r, status);
        }
    }

    /// The caller's side never said how the transfer passed on to it ended: the agent hears
    /// 408 and keeps the caller (or, if it left, the caller is hung up).
    pub(super) fn refer_expired(&mut self, now: Instant) {
        let Some(r) = self.referring.take() else { return };
        tracing::info!(session = %self.session_id, destination = %r.destination, "the caller's side sent no final NOTIFY in time");
        self.refer_failed(now, &r, 408);
    }

    /// A transfer passed on to the caller's side failed with `status`: the agent hears it and
    /// the call stays up, or, if the agent has left, the caller is hung up.
    fn refer_failed(&mut self, now: Instant, r: &Referring, status: u16) {
        self.record_transfer(now, &r.destination, "Refer", "failed", Some(status), r.asked);
        let line = format!("SIP/2.0 {status} {}", crate::sip::msg::reason_phrase(status));
        if self.leg(r.agent).phase == Phase::Terminated {
            return self.transfer_abandoned(now, r.caller, &r.destination, status);
        }
        self.notify_refer(now, r.agent, &line, true);
    }

    /// Logs, counts and keeps (for the session record) what came of a transfer.
    pub(super) fn record_transfer(
        &mut self,
        now: Instant,
        destination: &str,
        mode: &'static str,
        outcome: &'static str,
        status: Option<u16>,
        asked: Instant,
    ) {
        let record = TransferRecord {
            destination: destination.to_string(),
            mode,
            outcome,
            status,
            asked: asked.saturating_duration_since(self.started),
            settled: now.saturating_duration_since(self.started),
        };
        self.transfers.push(record.clone());
        self.out.push(Action::Record(Record::Transfer(record)));
    }

    /// The agent's BYE names a destination in the transfer header: a blind transfer without
    /// progress reports. The BYE is answered (the agent has left whatever happens); the
    /// transfer is carried out as a REFER's would be; a refused one is an ordinary hang-up,
    /// logged. `false`: not a transfer, the BYE is a hang-up.
    pub(super) fn bye_transfer(&mut self, now: Instant, leg: LegId, req: &Request) -> bool {
        let Some(context) = self.transfer.clone() else { return false };
        if self.leg(leg).role != Role::Agent || self.state != State::Answered {
            return false;
        }
        let Some(target) = req.headers.get(&context.bye_header) else { return false };
        if self.referring.is_some() || self.bridging.is_some() {
            tracing::info!(session = %self.session_id, "BYE transfer while a transfer is in progress: a hang-up");
            return false;
        }
        match self.decide_transfer(now, &context, target) {
            Ok(choice) => {
                self.leg_mut(leg).phase = Phase::Terminated;
                if !matches!(choice.destination.target, TransferTarget::Hangup) {
                    // Nobody is on the agent's side any more: no media is owed until the
                    // transfer is settled.
                    self.out.push(Action::UpdateRelay(super::RelayUpdate::Hold(true)));
                }
                let headers = travelling_headers(&context, req);
                self.carry_out(now, leg, &choice, headers);
                true
            }
            Err(_) => false,
        }
    }

    /// Type Hangup: the caller's leg gets BYE with a `Reason`, the agent's leg BYE; the call ends.
    fn transfer_hang_up(&mut self, now: Instant, destination: &str) {
        tracing::info!(session = %self.session_id, %destination, "transfer to hang-up: ending both legs");
        self.record_transfer(now, destination, "Hangup", "completed", Some(200), now);
        self.hangup_reason = Some(format!("transferred to {destination} (hang-up)"));
        let reason = "SIP;cause=200;text=\"call completed by the agent\"";
        for leg in self.bridge {
            let extra = if self.leg(leg).role == Role::Agent { None } else { Some(reason) };
            self.bye_with(now, leg, extra);
        }
        self.end(now);
    }

    /// RFC 3515 progress to the agent: a NOTIFY in its dialog with the new leg's status line.
    /// Nothing when the agent's leg is over (it left with a BYE transfer, or hung up).
    pub(super) fn notify_refer(&mut self, now: Instant, leg: LegId, status_line: &str, last: bool) {
        if self.leg(leg).phase == Phase::Terminated {
            return;
        }
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let mut notify = self.leg_mut(leg).dialog.request(Method::Notify, &branch, &ua);
        notify.headers.push("Event", "refer");
        let state = if last { "terminated;reason=noresource" } else { "active;expires=60" };
        notify.headers.push("Subscription-State", state);
        notify.headers.push(name::CONTENT_TYPE, "message/sipfrag;version=2.0");
        notify.body = format!("{status_line}\r\n").into_bytes().into();
        self.send_client(now, leg, notify, Purpose::Own);
    }

    fn respond_with(
        &mut self,
        now: Instant,
        key: &ServerKey,
        status: u16,
        extra: &[(&str, String)],
    ) {
        if let Some(mut response) = self.response_for(key, status) {
            for (n, v) in extra {
                response.headers.push(n, v.as_str());
            }
            self.respond(now, key, response);
        }
    }
}

/// What travels from the agent's request (REFER or BYE) to the destination: `Referred-By`
/// and the agent's `X-*` headers, not trunkline's own.
fn travelling_headers(context: &TransferContext, req: &Request) -> Vec<(String, String)> {
    let own = context.bye_header.trim_end_matches("Transfer-To").to_ascii_lowercase();
    req.headers
        .iter()
        .filter(|(n, _)| {
            let lower = n.to_ascii_lowercase();
            lower == "referred-by" || (lower.starts_with("x-") && !lower.starts_with(&own))
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}
