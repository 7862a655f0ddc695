//! Transfers asked by the agent (issue 13, DESIGN §4): a REFER in the agent leg's dialog, or a
//! BYE carrying the transfer header. The destination is decided by `config::transfer` against
//! the table the call started with, in the namespace of the call's trunk, for the call's agent:
//! an arbitrary number or URI is never dialed, and the carrier side can never transfer.
//!
//! Built so far: the decision and its refusals (403/485 with a `Warning` naming the rule), the
//! REFER answered `202 Accepted` with RFC 3515 progress (`NOTIFY`, `Event: refer`,
//! `message/sipfrag`, the subscription terminated with the last one), and type `Hangup` (both
//! legs ended, the caller's BYE with a `Reason`). Bridged and referred transfers to `Phone` and
//! `Sip` destinations are refused with 501 and a `Warning` until they are built; the call stays
//! up with the agent.

use std::sync::Arc;
use std::time::Instant;

use crate::config::RoutingTable;
use crate::config::model::{TransferMode, TransferTarget};
use crate::config::transfer::{self, TransferAttempt};
use crate::sip::msg::{Method, Request, name};
use crate::sip::transaction::ServerKey;

use super::leg::{LegId, Role};
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
        let warn = |rule: &str, text: &str| {
            (name::WARNING, format!("399 trunkline \"{rule}: {}\"", text.replace('"', "'")))
        };
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
            TransferTarget::Phone { .. } | TransferTarget::Sip { .. } => {
                let mode = match choice.destination.mode {
                    TransferMode::Bridge => "Bridge",
                    TransferMode::Refer => "Refer",
                };
                tracing::warn!(session = %self.session_id, %destination, mode, "transfer to a Phone or Sip destination: not built yet; the call stays with the agent");
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
