//! Calls the gateway places itself, for the call API (`POST /v1/calls`, DESIGN §4): the
//! carrier is dialed first through the OutboundTrunk (its rules as for an agent's INVITE:
//! `config::outbound`), and on its answer the agent runtime is called with the codec the carrier
//! chose and the session headers, then the two are bridged (`machine::Placed`).
//!
//! This module holds the set-up (pure: [`setup`]) and what the API reads and asks of a call in
//! progress: [`PlacedCall`] keeps the call's [`CallView`], which the driver refreshes after
//! every step, and its task's channel (for `DELETE`). [`PlacedCalls`] finds them by id; an
//! ended call stays there for [`KEEP_ENDED`] so that its outcome can be read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::destination::SipDestination;
use crate::config::model::Encryption;
use crate::config::outbound::OutboundRoute;
use crate::observe::api::{CallState, CallView, LegRole, LegState, LegView, NewCall};
use crate::observe::metrics::Outcome;
use crate::sip::msg::NameAddr;
use crate::sip::transport::{Target, Zone};

use super::machine::{Call, Dial, Dialog, Ended, Ids, LegId, MediaOffer, Phase, Placed, Role};
use super::outbound::{carrier_dial, destination};
use super::services::CallInput;

/// How long an ended call can still be read (`GET /v1/calls/{id}`).
pub const KEEP_ENDED: Duration = Duration::from_secs(600);
/// At most this many calls are kept; the oldest ended ones go first.
pub const MAX_KEPT: usize = 10_000;

/// The set-up of a placed call: pure, from the request, its route and where the agent is.
#[allow(clippy::too_many_arguments)]
pub fn setup(
    ids: &mut Ids,
    prefix: &str,
    request: &NewCall,
    route: &OutboundRoute,
    agent: &SipDestination,
    (agent_local, carrier_local): (SocketAddr, SocketAddr),
    offer: MediaOffer,
) -> (Placed, super::headers::Contract) {
    let session_id = ids.token(16);
    // X-* headers of the request travel on both legs; trunkline's own are the gateway's to set.
    let own = prefix.to_ascii_lowercase();
    let x_headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter(|(n, _)| !n.to_ascii_lowercase().starts_with(&own))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let first = carrier_dial(ids, route, carrier_local, x_headers.clone());
    let mut headers = vec![
        (format!("{prefix}Agent-ID"), request.agent.clone()),
        (format!("{prefix}Trunk"), route.trunk.name.to_string()),
        (format!("{prefix}Number"), route.number.as_str().to_string()),
        (format!("{prefix}Session-ID"), session_id.clone()),
        (format!("{prefix}Direction"), "outbound".to_string()),
    ];
    let asked: Vec<(String, String)> =
        request.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    // The agent runtime gets them under the header contract (first-class headers validated
    // and normalised, copies of the gateway's own removed).
    let contract = super::headers::apply(prefix, &asked, super::headers::Limits::default());
    for w in &contract.warnings {
        tracing::info!(session = %session_id, header = %w.header, warning = %w.message, "API header changed");
    }
    headers.extend(contract.headers.iter().cloned());
    let agent_uri = agent.with_user(&request.agent);
    let dialog = Dialog {
        call_id: format!("{}@trunkline", ids.token(20)),
        local_tag: ids.token(10),
        remote_tag: None,
        local_uri: NameAddr {
            display: None,
            uri: format!("sip:{}@{}", route.number.as_str(), host(agent_local)),
            params: vec![],
        },
        remote_uri: NameAddr { display: None, uri: agent_uri.clone(), params: vec![] },
        remote_target: agent_uri,
        route_set: Vec::new(),
        local_cseq: 0,
        target: Target {
            protocol: agent.transport,
            zone: Zone::Internal,
            remote: agent_local,
            connection: None,
        },
        local: agent_local,
    };
    let then = Dial {
        role: Role::Agent,
        dialog,
        destination: destination(&agent.host, agent.port_or_default()),
        headers,
        credentials: None,
        alternates: Vec::new(),
        encryption: Encryption::Disabled,
    };
    let placed = Placed {
        session_id,
        first,
        then,
        offer,
        codecs: route.trunk.codecs.clone(),
        transfer: None,
        max_duration: route.trunk.limits.max_call_duration(),
    };
    (placed, contract)
}

fn host(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A placed call as the API sees it.
pub struct PlacedCall {
    view: Mutex<CallView>,
    /// The call's task, for `DELETE`.
    tx: mpsc::Sender<CallInput>,
    ended_at: Mutex<Option<Instant>>,
}

impl PlacedCall {
    pub fn new(view: CallView, tx: mpsc::Sender<CallInput>) -> PlacedCall {
        PlacedCall { view: Mutex::new(view), tx, ended_at: Mutex::new(None) }
    }

    pub fn view(&self) -> CallView {
        self.view.lock().map(|v| v.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Asks the call's task to hang up (a task that is gone has ended already).
    pub fn hang_up(&self) {
        let _ = self.tx.try_send(CallInput::HangUp("hung up through the call API"));
    }

    /// Refreshes the view from the call, after a step of its task.
    pub fn observe(&self, call: &Call) {
        let Ok(mut view) = self.view.lock() else { return };
        if view.state == CallState::Ended {
            // Final: the legs' last words were said by `ended` (a leg still cancelling is
            // failed, not dialing).
            return;
        }
        let now = now_rfc3339();
        let carrier = call.leg(LegId::FIRST);
        for (i, leg) in call.legs().enumerate() {
            let role = match (i, leg.role) {
                (0, _) => LegRole::Carrier,
                (_, Role::Transfer) => LegRole::Transfer,
                _ => LegRole::Agent,
            };
            let call_id = leg.dialog.call_id.as_str();
            let before = view.legs.get(i).filter(|l| l.call_id.as_deref() == Some(call_id));
            let before = before.map(|l| l.state);
            let state = match leg.phase {
                Phase::Resolving if before.is_none() && i == 1 => continue,
                Phase::Resolving | Phase::Inviting | Phase::Trying | Phase::Cancelling { .. } => {
                    LegState::Dialing
                }
                Phase::Early => LegState::Ringing,
                Phase::Confirmed => LegState::Answered,
                Phase::Terminated => match before {
                    Some(LegState::Answered | LegState::Ended) => LegState::Ended,
                    _ => LegState::Failed,
                },
            };
            let call_id = Some(call_id.to_string());
            match view.legs.get_mut(i) {
                Some(l) => {
                    l.state = state;
                    l.call_id = call_id;
                }
                None => view.legs.push(LegView { role, state, status: None, call_id }),
            }
        }
        if carrier.phase == Phase::Confirmed && view.answered_at.is_none() {
            view.answered_at = Some(now.clone());
        }
        view.state = match call.state() {
            super::machine::State::Ended => CallState::Ended,
            super::machine::State::Answered => CallState::Answered,
            super::machine::State::Setup => match carrier.phase {
                Phase::Early => CallState::Ringing,
                Phase::Confirmed => CallState::Answered,
                _ => CallState::Dialing,
            },
        };
    }

    /// The call is over: its outcome and reason.
    pub fn ended(&self, ended: &Ended) {
        if let Ok(mut at) = self.ended_at.lock() {
            at.get_or_insert_with(Instant::now);
        }
        let Ok(mut view) = self.view.lock() else { return };
        view.state = CallState::Ended;
        view.ended_at.get_or_insert_with(now_rfc3339);
        let outcome = match ended.outcome {
            Some(Outcome::Answered) => "completed",
            Some(Outcome::Busy) => "busy",
            Some(Outcome::NoAnswer) => "no_answer",
            Some(Outcome::Cancelled) => "cancelled",
            Some(_) | None => "failed",
        };
        view.outcome.get_or_insert_with(|| outcome.to_string());
        if view.reason.is_none() {
            view.reason = Some(ended.reason.clone().unwrap_or_else(|| {
                match ended.outcome {
                    Some(Outcome::Answered) => "hung up",
                    Some(Outcome::Busy) => "busy",
                    Some(Outcome::NoAnswer) => "no answer",
                    Some(Outcome::Cancelled) => "cancelled before the answer",
                    _ => "the call failed",
                }
                .to_string()
            }));
        }
        for leg in &mut view.legs {
            leg.state = match leg.state {
                LegState::Answered | LegState::Ended => LegState::Ended,
                _ => LegState::Failed,
            };
        }
    }

    fn ended_since(&self) -> Option<Instant> {
        self.ended_at.lock().ok().and_then(|a| *a)
    }
}

/// The placed calls, by id.
#[derive(Default)]
pub struct PlacedCalls {
    calls: Mutex<HashMap<String, Arc<PlacedCall>>>,
}

impl PlacedCalls {
    pub fn insert(&self, id: &str, call: Arc<PlacedCall>) {
        let Ok(mut calls) = self.calls.lock() else { return };
        let now = Instant::now();
        calls.retain(|_, c| c.ended_since().is_none_or(|t| now.duration_since(t) < KEEP_ENDED));
        if calls.len() >= MAX_KEPT {
            let oldest = calls
                .iter()
                .filter_map(|(id, c)| c.ended_since().map(|t| (t, id.clone())))
                .min()
                .map(|(_, id)| id);
            if let Some(id) = oldest {
                calls.remove(&id);
            }
        }
        calls.insert(id.to_string(), call);
    }

    pub fn get(&self, id: &str) -> Option<Arc<PlacedCall>> {
        self.calls.lock().ok()?.get(id).cloned()
    }
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_call_keeps_its_outcome_and_its_legs_say_how_far_they_got() {
        let (tx, _rx) = mpsc::channel(1);
        let view = CallView {
            id: "c1".into(),
            state: CallState::Dialing,
            direction: "outbound".into(),
            trunk: "voice/out".into(),
            to: "+14155550142".into(),
            caller_id: "+14155550100".into(),
            agent: "support".into(),
            legs: vec![
                LegView {
                    role: LegRole::Carrier,
                    state: LegState::Answered,
                    status: None,
                    call_id: None,
                },
                LegView {
                    role: LegRole::Agent,
                    state: LegState::Ringing,
                    status: None,
                    call_id: None,
                },
            ],
            created_at: now_rfc3339(),
            answered_at: None,
            ended_at: None,
            outcome: None,
            reason: None,
        };
        let placed = PlacedCall::new(view, tx);
        placed.ended(&Ended {
            outcome: Some(Outcome::Busy),
            duration: Duration::from_secs(3),
            reason: None,
            hung_up_by: None,
        });
        let v = placed.view();
        assert_eq!(v.state, CallState::Ended);
        assert_eq!(v.outcome.as_deref(), Some("busy"));
        assert_eq!(v.legs[0].state, LegState::Ended);
        assert_eq!(v.legs[1].state, LegState::Failed);
        assert!(v.ended_at.unwrap().ends_with('Z'), "RFC 3339 in UTC");
    }
}
