//! The leg a bridged transfer dials (issue 13), built when the call machine asks
//! ([`Action::PrepareTransfer`](super::machine::Action::PrepareTransfer)); the machine decides
//! what the leg does on the wire, this decides where it goes and as whom:
//!
//! - **`Phone`**: through the destination's `outboundTrunkRef`, with that trunk's rules, as an
//!   outbound call's carrier leg is built (`outbound::carrier_dial`): its host, port, transport
//!   and number format, its digest credentials, its limits (the leg takes one of the trunk's
//!   call slots, kept until the call ends; none left: the transfer fails with 503), its codecs
//!   (the codec in use must be one of them, or 488). The caller id is the caller's own number
//!   when the trunk lists it (`callerId` or `allowedCallerIds`), else the trunk's `callerId`;
//!   `Diversion` (RFC 5806) names our number on the caller's leg, which is how carriers learn
//!   that a forwarded call presents a number that is not the trunk's.
//! - **`Sip`**: straight to the URI: its host and port (5060, or 5061 for `sips:` and
//!   `;transport=tls`), TLS for `sips:`, TCP or TLS by `;transport=`, the digest credentials of
//!   the destination's Secret; the caller's number in From (a PBX shows who is calling) and the
//!   same `Diversion`.
//!
//! Either way the leg leaves from the carrier-facing listener: a transfer destination is
//! outside, like a carrier.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::config::RoutingTable;
use crate::config::destination::SipDestination;
use crate::config::model::TransferTarget;
use crate::config::number;
use crate::config::outbound::{OutboundRoute, carrier_user};
use crate::sip::msg::NameAddr;
use crate::sip::transport::{Protocol, Target, Zone};

use super::limits::CallPermit;
use super::machine::{Dial, Dialog, Ids, Role, TransferRequest};
use super::outbound;
use super::services::CallServices;

/// A transfer leg, ready to dial, and the trunk slot it holds.
#[derive(Debug)]
pub struct Prepared {
    pub dial: Dial,
    /// A `Phone` destination's call slot on its trunk, held until the call ends.
    pub permit: Option<CallPermit>,
    /// A `Phone` destination's trunk's `spec.media.allowedAddresses`: more sources its media
    /// may come from (the leg's relay ports are guarded as a carrier's side is).
    pub media_allowed: Vec<ipnet::IpNet>,
}

/// Why a transfer leg cannot be dialed: the status the agent hears, and why (for the log).
pub type Failure = (u16, String);

/// Builds the leg of a bridged transfer (see the module docs).
pub fn prepare(
    gw: &CallServices,
    table: &RoutingTable,
    ids: &mut Ids,
    request: &TransferRequest,
) -> Result<Prepared, Failure> {
    let local = |protocol| {
        gw.local_address(Zone::Carrier, protocol)
            .or_else(|| gw.local_address(Zone::Carrier, Protocol::Udp))
    };
    match &request.destination.target {
        TransferTarget::Phone { number, outbound_trunk } => {
            let Some(trunk) = table.outbound.get(outbound_trunk) else {
                return Err((503, format!("its OutboundTrunk {outbound_trunk} is not accepted")));
            };
            if !trunk.codecs.contains(&request.codec) {
                return Err((
                    488,
                    format!(
                        "{} does not allow {}, the codec in use",
                        trunk.name,
                        request.codec.as_str()
                    ),
                ));
            }
            let key = format!("outbound:{}", trunk.name);
            let permit =
                gw.admission.try_admit(&key, trunk.limits, Instant::now()).map_err(|refused| {
                    (503, format!("{}: {}", trunk.name, refused.limit.rule().as_str()))
                })?;
            let local = local(trunk.primary().transport)
                .ok_or((503, "no carrier-facing listener".into()))?;
            let media_allowed = trunk.media.allowed_addresses.clone();
            let dial = phone_dial(ids, trunk.clone(), number.clone(), request, local);
            Ok(Prepared { dial, permit: Some(permit), media_allowed })
        }
        TransferTarget::Sip { uri, credentials, encryption } => {
            // Checked when the spec was compiled; parsed again here, once per transfer.
            let target = SipDestination::parse(uri).map_err(|why| (503, why))?;
            let (host, port, protocol) =
                (target.host.clone(), target.port_or_default(), target.transport);
            let local = local(protocol).ok_or((503, "no carrier-facing listener".into()))?;
            let caller = if request.caller.is_empty() { "anonymous" } else { &request.caller };
            let mut headers = diversion(&request.diverter, local.ip());
            headers.extend(request.headers.iter().cloned());
            let dialog = dialog(ids, identity(caller, local.ip()), uri.clone(), protocol, local);
            let dial = Dial {
                role: Role::Transfer,
                dialog,
                destination: outbound::destination(&host, port),
                headers,
                credentials: credentials.clone(),
                alternates: Vec::new(),
                encryption: *encryption,
            };
            Ok(Prepared { dial, permit: None, media_allowed: Vec::new() })
        }
        TransferTarget::Hangup => Err((500, "a hang-up is not dialed".into())),
    }
}

/// A `Phone` destination's leg: the carrier leg of an outbound call through its trunk, from
/// the caller's number when the trunk allows it.
fn phone_dial(
    ids: &mut Ids,
    trunk: Arc<crate::config::model::OutboundTrunkRoute>,
    number: number::E164,
    request: &TransferRequest,
    local: SocketAddr,
) -> Dial {
    let caller_id = number::normalize(&request.caller)
        .ok()
        .filter(|n| *n == trunk.caller_id || trunk.allowed_caller_ids.contains(n))
        .unwrap_or_else(|| trunk.caller_id.clone());
    let diverter = match number::normalize(&request.diverter) {
        Ok(n) => carrier_user(&trunk, &n),
        Err(_) => request.diverter.clone(),
    };
    let hosts = trunk.hosts.clone();
    let route = OutboundRoute { trunk, number, caller_id, agent: None, hosts };
    let mut headers = diversion(&diverter, local.ip());
    headers.extend(request.headers.iter().cloned());
    let mut dial = outbound::carrier_dial(ids, &route, local, headers);
    dial.role = Role::Transfer;
    // A bridged transfer goes to the trunk's first host only: failover is the call set-up's.
    dial.alternates.clear();
    dial
}

/// `Diversion: <sip:NUMBER@our-address>;reason=deflection;counter=1` (RFC 5806: the agent
/// deflected the call), or nothing without a number.
fn diversion(diverter: &str, ip: IpAddr) -> Vec<(String, String)> {
    if diverter.is_empty() {
        return Vec::new();
    }
    let value = format!("<{}>;reason=deflection;counter=1", identity(diverter, ip));
    vec![("Diversion".to_string(), value)]
}

fn identity(user: &str, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("sip:{user}@{v4}"),
        IpAddr::V6(v6) => format!("sip:{user}@[{v6}]"),
    }
}

fn dialog(
    ids: &mut Ids,
    from: String,
    to: String,
    protocol: Protocol,
    local: SocketAddr,
) -> Dialog {
    Dialog {
        call_id: format!("{}@trunkline", ids.token(20)),
        local_tag: ids.token(10),
        remote_tag: None,
        local_uri: NameAddr { display: None, uri: from, params: vec![] },
        remote_uri: NameAddr { display: None, uri: to.clone(), params: vec![] },
        remote_target: to,
        route_set: Vec::new(),
        local_cseq: 0,
        target: Target { protocol, zone: Zone::Carrier, remote: local, connection: None },
        local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diversion_names_our_number_at_our_address() {
        assert_eq!(
            diversion("+14155550100", "203.0.113.5".parse().unwrap()),
            vec![(
                "Diversion".to_string(),
                "<sip:+14155550100@203.0.113.5>;reason=deflection;counter=1".to_string()
            )]
        );
        assert!(diversion("", "203.0.113.5".parse().unwrap()).is_empty());
    }
}
