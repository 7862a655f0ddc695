//! The session record of a call (`observe::record::SessionRecord`), filled as the call goes:
//! seeded when the front door admits it (who, where, which headers), completed by the driver at
//! the answer and at the end (times, outcome, legs, transfers) and when the relay stops (RTP).

use std::time::Duration;

use crate::config::outbound::OutboundRoute;
use crate::media::relay::RelayStats;
use crate::observe::metrics::Direction;
use crate::observe::record::{
    KIND_ANSWERED, KIND_FINAL, LegRecord, Numbers, RecordWarning, RtpEntry, SCHEMA, SessionRecord,
    TransferEntry,
};
use crate::sip::transport::Source;

use super::headers::Contract;
use super::machine::{AnsweredBy, Call, Ended, Role};

/// What every seed starts from.
pub struct Seed<'a> {
    pub gateway: &'a str,
    pub config: Option<String>,
    pub session_id: &'a str,
    pub direction: Direction,
    pub trunk: String,
    pub numbers: Numbers,
    pub agent: Option<String>,
    pub agent_reason: Option<&'static str>,
    pub transport: &'static str,
    pub source: Option<&'a Source>,
}

/// A record as known at admission, with the header contract's results.
pub fn seed(seed: Seed, contract: Option<&Contract>) -> SessionRecord {
    let mut r = SessionRecord {
        schema: SCHEMA.to_string(),
        record_id: format!("{}-{KIND_FINAL}", seed.session_id),
        kind: KIND_FINAL.to_string(),
        session_id: seed.session_id.to_string(),
        direction: seed.direction.as_str().to_string(),
        trunk: seed.trunk,
        numbers: seed.numbers,
        agent: seed.agent.filter(|a| !a.is_empty()),
        agent_reason: seed.agent_reason.map(str::to_string),
        transport: seed.transport.to_string(),
        source: seed.source.map(|s| s.remote.to_string()),
        offered_at: jiff::Timestamp::now().to_string(),
        gateway: seed.gateway.to_string(),
        config: seed.config,
        ..SessionRecord::default()
    };
    if let Some(c) = contract {
        r.headers = c.stored.iter().cloned().collect();
        r.contact_id = c.contact_id.clone();
        r.contact_custom_data = c.contact_custom_data.clone();
        r.session_custom_data = c.session_custom_data.clone();
        r.languages = c.languages.clone();
        r.instruction_ids = c.instruction_ids.clone();
        r.warnings = c
            .warnings
            .iter()
            .map(|w| RecordWarning { header: w.header.clone(), message: w.message.clone() })
            .collect();
    }
    r
}

/// An outbound call's numbers: what the agent (or the API request) asked for, the caller id
/// presented and the number dialed.
pub fn outbound_numbers(route: &OutboundRoute, from: &str, to: &str) -> Numbers {
    Numbers {
        from: from.to_string(),
        from_e164: Some(route.caller_id.to_string()),
        to: to.to_string(),
        to_e164: route.number.to_string(),
    }
}

/// The answer: when, after how long, with which codec, with which SRTP suite toward the carrier
/// if any, and (an outbound call) the carrier host that answered.
pub fn answered(
    r: &mut SessionRecord,
    setup: Duration,
    codec: Option<&str>,
    srtp: Option<&str>,
    carrier: Option<&AnsweredBy>,
) {
    r.answered_at = Some(jiff::Timestamp::now().to_string());
    r.setup_ms = Some(millis(setup));
    r.codec = codec.map(str::to_string);
    r.srtp = srtp.map(str::to_string);
    if let Some(c) = carrier {
        r.carrier_host = Some(c.host.clone());
        r.carrier_address = Some(c.address.to_string());
    }
}

/// The first record, at the answer, for the sinks that want one: what is known so far, with
/// its own kind and record id (the final record keeps `SESSION-final`).
pub fn at_answer(r: &SessionRecord, call: &Call) -> SessionRecord {
    SessionRecord {
        kind: KIND_ANSWERED.to_string(),
        record_id: format!("{}-{KIND_ANSWERED}", r.session_id),
        legs: legs(call),
        ..r.clone()
    }
}

/// The end: times, outcome, why, the legs and the transfers.
pub fn ended(r: &mut SessionRecord, call: &Call, ended: &Ended) {
    r.ended_at = Some(jiff::Timestamp::now().to_string());
    r.duration_ms = Some(millis(ended.duration));
    if r.outcome.is_none() {
        r.outcome = ended.outcome.map(|o| o.as_str().to_string());
    }
    r.hangup_reason = ended.reason.clone();
    r.hangup_side = match (ended.hung_up_by, r.answered_at.is_some()) {
        (Some(role), _) => Some(role.as_str().to_string()),
        (None, true) => Some("gateway".to_string()),
        (None, false) => None,
    };
    r.legs = legs(call);
    r.transfers = call
        .transfers()
        .iter()
        .map(|t| TransferEntry {
            destination: t.destination.clone(),
            mode: t.mode.to_string(),
            outcome: t.outcome.to_string(),
            status: t.status,
            asked_ms: millis(t.asked),
            settled_ms: millis(t.settled),
        })
        .collect();
}

/// The relay's figures: side A is the carrier's leg, side B the agent's, or after a bridged
/// transfer the destination's (the agent's figures are those side B had before).
pub fn rtp(r: &mut SessionRecord, stats: &RelayStats) {
    let entry = |leg: &str, s: &crate::media::relay::LegStats| RtpEntry {
        leg: leg.to_string(),
        packets: s.rtp_in.packets,
        bytes: s.rtp_in.bytes,
        lost: s.rtp_in.lost,
        jitter_ms: s.rtp_in.jitter_ms,
    };
    r.rtp = vec![entry(Role::Carrier.as_str(), &stats.a)];
    match stats.replaced.as_ref() {
        Some(agent) => {
            r.rtp.push(entry(Role::Agent.as_str(), agent));
            r.rtp.push(entry(Role::Transfer.as_str(), &stats.b));
        }
        None => r.rtp.push(entry(Role::Agent.as_str(), &stats.b)),
    }
}

fn legs(call: &Call) -> Vec<LegRecord> {
    call.legs()
        .map(|l| LegRecord { role: l.role.as_str().to_string(), call_id: l.dialog.call_id.clone() })
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
