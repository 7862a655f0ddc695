//! Transfers asked by the agent (issue 13, DESIGN §4): a REFER in the agent leg's dialog, or a
//! BYE carrying the transfer header. The destination is decided by `config::transfer` against
//! the table the call started with, in the namespace of the call's trunk, for the call's agent:
//! an arbitrary number or URI is never dialed, and the carrier side can never transfer.
//!
//! Built so far: the decision and its refusals (403/485 with a `Warning` naming the rule), the
//! REFER answered `202 Accepted` with RFC 3515 progress (`NOTIFY`, `Event: refer`,
//! `message/sipfrag`, the subscription terminated with the last one), type `Hangup` (both legs
//! ended, the caller's BYE with a `Reason`), and mode `Refer` (the REFER passed on to the
//! caller's side with `Refer-To` written from the destination; the caller's side's answer and
//! NOTIFYs relayed to the agent; on its final 2xx both legs are ended, on a failure the call
//! stays up). Bridged transfers (mode `Bridge`) to `Phone` and `Sip` destinations are refused
//! with 501 and a `Warning` until they are built; the call stays up with the agent.

use std::sync::Arc;
use std::time::Instant;

use crate::config::RoutingTable;
use crate::config::model::{TransferMode, TransferTarget};
use crate::config::refusal;
use crate::config::transfer::{self, TransferAttempt};
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
    /// The agent's leg, which hears the progress.
    pub agent: LegId,
    /// The caller's leg, which got the REFER.
    pub caller: LegId,
    pub destination: String,
}

/// The host (and port) of a SIP URI: what follows `@` (or the scheme) up to parameters.
fn host_of(uri: &str) -> String {
    let rest = uri.split_once('@').map(|(_, h)| h).or_else(|| uri.split_once(':').map(|(_, h)| h));
    rest.unwrap_or(uri).split([';', '>', '?']).next().unwrap_or_default().to_string()
}

/// How a transfer ended, for logs, metrics and (later) the session record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// `namespace/name` of the destination, or what the agent asked for when it names none.
    pub destination: String,
    /// `Bridge`, `Refer`, or `Hangup`.
    pub mode: &'static str,
    /// `completed`, `refused` or `not_built`.
    pub outcome: &'static str,
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
        let attempt =
            TransferAttempt { namespace: &context.namespace, agent: &context.agent, target };
        let decision = transfer::decide(&context.table, &attempt);
        let choice = match decision.outcome {
            Ok(choice) => choice,
            Err(refusal) => {
                let detail = decision.steps.last().map(|s| s.detail.clone()).unwrap_or_default();
                tracing::info!(session = %self.session_id, rule = refusal.rule.as_str(), detail, "transfer refused");
                // What was asked is in the log line above, not in a metric label.
                self.out.push(Action::Record(Record::Transfer(TransferRecord {
                    destination: "unknown".to_string(),
                    mode: "none",
                    outcome: "refused",
                })));
                let header = warn(refusal.rule.as_str(), &refusal.message);
                return self.respond_with(now, key, refusal.status, &[header]);
            }
        };
        let destination = choice.destination.name.to_string();
        match &choice.destination.target {
            TransferTarget::Hangup => {
                self.respond_status(now, key, 202);
                self.notify_refer(now, leg, "SIP/2.0 200 OK", true);
                self.transfer_hang_up(now, &destination);
            }
            target @ (TransferTarget::Phone { .. } | TransferTarget::Sip { .. })
                if choice.destination.mode == TransferMode::Refer =>
            {
                if self.referring.is_some() {
                    let header = warn("TransferInProgress", "a transfer is in progress");
                    return self.respond_with(now, key, 491, &[header]);
                }
                let caller = self.peer(leg);
                let refer_to = match target {
                    TransferTarget::Phone { number, .. } => {
                        let host = host_of(&self.leg(caller).dialog.remote_target);
                        format!("<sip:{}@{host};user=phone>", number.as_str())
                    }
                    TransferTarget::Sip { uri, .. } => format!("<{uri}>"),
                    // Matched by the arm above.
                    TransferTarget::Hangup => return,
                };
                self.respond_status(now, key, 202);
                self.notify_refer(now, leg, "SIP/2.0 100 Trying", false);
                let ua = self.config.user_agent.clone();
                let branch = self.ids.branch();
                let mut out = self.leg_mut(caller).dialog.request(Method::Refer, &branch, &ua);
                out.headers.push("Refer-To", refer_to.as_str());
                // `Referred-By` and the agent's `X-*` headers travel; trunkline's own do not.
                let own = context.bye_header.trim_end_matches("Transfer-To").to_ascii_lowercase();
                for (n, v) in req.headers.iter() {
                    let lower = n.to_ascii_lowercase();
                    let x = lower.starts_with("x-") && !lower.starts_with(&own);
                    if lower == "referred-by" || x {
                        out.headers.push(n, v);
                    }
                }
                tracing::info!(session = %self.session_id, %destination, %refer_to, "transfer passed on to the caller's side (REFER)");
                self.referring = Some(Referring { agent: leg, caller, destination });
                self.send_client(now, caller, out, Purpose::TransferRefer);
            }
            TransferTarget::Phone { .. } | TransferTarget::Sip { .. } => {
                let mode = "Bridge";
                tracing::warn!(session = %self.session_id, %destination, mode, "bridged transfer: not built yet; the call stays with the agent");
                self.out.push(Action::Record(Record::Transfer(TransferRecord {
                    destination,
                    mode,
                    outcome: "not_built",
                })));
                let header = warn(
                    "TransferNotBuilt",
                    "transfers to Phone and Sip destinations are not built yet",
                );
                self.respond_with(now, key, 501, &[header]);
            }
        }
    }

    /// The caller's side answered the REFER we passed on: a 2xx means it will report in NOTIFYs;
    /// a failure (or none) goes to the agent as the last NOTIFY, and the call stays up.
    pub(super) fn on_refer_answer(&mut self, now: Instant, status: u16) {
        if status < 200 || (200..300).contains(&status) {
            return;
        }
        let Some(r) = self.referring.take() else { return };
        tracing::info!(session = %self.session_id, destination = %r.destination, status, "the caller's side refused the transfer; the call stays up");
        let line = format!("SIP/2.0 {status} {}", crate::sip::msg::reason_phrase(status));
        self.notify_refer(now, r.agent, &line, true);
        self.record_transfer(&r.destination, "Refer", "failed");
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
        self.notify_refer(now, r.agent, &line, last);
        if !last {
            return;
        }
        self.referring = None;
        if (200..300).contains(&status) {
            tracing::info!(session = %self.session_id, destination = %r.destination, "transfer completed by the caller's side");
            self.record_transfer(&r.destination, "Refer", "completed");
            self.hangup_reason = Some(format!("transferred to {} (referred)", r.destination));
            for l in [r.agent, r.caller] {
                if self.leg(l).phase != Phase::Terminated {
                    self.bye(now, l);
                }
            }
            self.end(now);
        } else {
            tracing::info!(session = %self.session_id, destination = %r.destination, status, "transfer failed at the caller's side; the call stays up");
            self.record_transfer(&r.destination, "Refer", "failed");
        }
    }

    fn record_transfer(&mut self, destination: &str, mode: &'static str, outcome: &'static str) {
        self.out.push(Action::Record(Record::Transfer(TransferRecord {
            destination: destination.to_string(),
            mode,
            outcome,
        })));
    }

    /// The agent's BYE names a destination in the transfer header: a blind transfer without
    /// progress reports. The BYE is answered (the agent has left whatever happens); a Hangup
    /// destination ends the caller's leg with a `Reason`; any other outcome is an ordinary
    /// hang-up, logged.
    pub(super) fn bye_transfer(&mut self, now: Instant, leg: LegId, req: &Request) -> bool {
        let Some(context) = self.transfer.clone() else { return false };
        if self.leg(leg).role != Role::Agent || self.state != State::Answered {
            return false;
        }
        let Some(target) = req.headers.get(&context.bye_header) else { return false };
        let attempt =
            TransferAttempt { namespace: &context.namespace, agent: &context.agent, target };
        let decision = transfer::decide(&context.table, &attempt);
        match decision.outcome {
            Ok(choice) if matches!(choice.destination.target, TransferTarget::Hangup) => {
                self.leg_mut(leg).phase = super::Phase::Terminated;
                self.transfer_hang_up(now, &choice.destination.name.to_string());
                true
            }
            Ok(choice) => {
                tracing::warn!(session = %self.session_id, destination = %choice.destination.name, "BYE transfer to a Phone or Sip destination: not built yet; the call is hung up");
                false
            }
            Err(refusal) => {
                tracing::info!(session = %self.session_id, rule = refusal.rule.as_str(), "BYE transfer refused; the call is hung up");
                false
            }
        }
    }

    /// Type Hangup: the caller's leg gets BYE with a `Reason`, the agent's leg BYE; the call ends.
    fn transfer_hang_up(&mut self, now: Instant, destination: &str) {
        tracing::info!(session = %self.session_id, %destination, "transfer to hang-up: ending both legs");
        self.out.push(Action::Record(Record::Transfer(TransferRecord {
            destination: destination.to_string(),
            mode: "Hangup",
            outcome: "completed",
        })));
        self.hangup_reason = Some(format!("transferred to {destination} (hang-up)"));
        let reason = "SIP;cause=200;text=\"call completed by the agent\"";
        for leg in self.bridge {
            if self.leg(leg).phase == super::Phase::Terminated {
                continue;
            }
            let extra = if self.leg(leg).role == Role::Agent { None } else { Some(reason) };
            self.bye_with(now, leg, extra);
        }
        self.end(now);
    }

    /// RFC 3515 progress to the agent: a NOTIFY in its dialog with the new leg's status line.
    fn notify_refer(&mut self, now: Instant, leg: LegId, status_line: &str, last: bool) {
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
