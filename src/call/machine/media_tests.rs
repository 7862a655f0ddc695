//! Transcripts of the media rules of issue 15 (item 1): the `c=` rules on a carrier's
//! re-offers and answers (`media.rs`), and the guard of a bridged transfer's relay ports
//! (`bridge.rs`: the destination is looked up before its ports are bound, and the action
//! carries who it is). Played with the harness of `script.rs`.

use std::net::IpAddr;

use crate::config::model::Codec;
use crate::media::codec;
use crate::media::relay::Leg as RelaySide;
use crate::media::sdp::{OwnAddresses, Sdp};
use crate::sip::msg::{self, Message, Method, NameAddr, Request, Response, name};
use crate::sip::transport::{Protocol, Target, Zone};

use super::script::*;
use super::*;

/// The gateway of the script: its listeners' IPs (198.51.100.1 faces carriers, 127.0.0.1 the
/// agents), its SIP ports, its RTP range (the relay's ports 30000 and 30002 are in it).
fn own() -> OwnAddresses {
    OwnAddresses {
        ips: vec![addr(GATEWAY_A).ip(), addr(GATEWAY_B).ip()],
        rtp_ports: Some((30000, 30999)),
        sip_ports: vec![5060, 5070],
    }
}

fn with_own(_: &mut Setup, config: &mut CallConfig) {
    config.own_addresses = own();
}

/// A carrier's SDP: PCMU at `c`:`port`, `direction`.
fn carrier_sdp(c: &str, port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 9 9 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    )
}

/// Where each refused address points, and the rule that names it.
const REFUSED: [(&str, u16, &str, &str); 3] = [
    ("224.2.1.1", 4000, "sendrecv", "MulticastMediaAddress"),
    ("198.51.100.1", 30002, "sendrecv", "OwnMediaAddress"),
    ("0.0.0.0", 4000, "sendrecv", "UnspecifiedMediaAddress"),
];

fn remote_updates(actions: &[Action], side: RelaySide) -> Vec<Option<SocketAddr>> {
    relay_updates(actions)
        .into_iter()
        .filter_map(|u| match u {
            RelayUpdate::Remote { side: s, remote } if s == side => Some(remote),
            _ => None,
        })
        .collect()
}

// Re-offers from the carrier (re-INVITE, UPDATE).

#[test]
fn a_carriers_reoffer_at_a_multicast_group_or_the_gateway_gets_488_naming_the_rule_and_changes_nothing()
 {
    let (mut s, _, ok) = answered_adjusted(with_own);
    let cases = [
        ("INVITE", "224.2.1.1", 4000, "MulticastMediaAddress"),
        ("UPDATE", "224.2.1.1", 4000, "MulticastMediaAddress"),
        ("INVITE", "198.51.100.1", 30002, "OwnMediaAddress"),
        ("UPDATE", "198.51.100.1", 5060, "OwnMediaAddress"),
    ];
    for (cseq, (method, c, port, rule)) in (2u32..).zip(cases) {
        let branch = format!("z9hG4bKreoffer{cseq}");
        let reoffer = in_dialog_from_carrier(&ok, method, cseq, &branch);
        let actions = s.carrier_sends(with_body(reoffer, Some(&carrier_sdp(c, port, "sendrecv"))));
        let refusal = responses_to(&actions, CARRIER_LEG);
        assert_eq!(refusal.iter().map(|r| r.status).collect::<Vec<_>>(), vec![488], "{method} {c}");
        let warning = refusal[0].headers.get(name::WARNING).unwrap_or_default();
        assert!(warning.starts_with("399 trunkline \"") && warning.contains(rule), "{warning}");
        assert!(sent(&actions, AGENT_LEG).is_empty(), "the agent heard of it: {method} {c}");
        assert!(relay_updates(&actions).is_empty(), "the relay was moved: {method} {c}");
    }
    // The call is as it was: the next re-offer goes through.
    let reoffer = in_dialog_from_carrier(&ok, "INVITE", 6, "z9hG4bKreoffer6");
    let actions =
        s.carrier_sends(with_body(reoffer, Some(&carrier_sdp("192.0.2.11", 4002, "sendrecv"))));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Invite]);
    assert_eq!(remote_updates(&actions, RelaySide::A), vec![Some(addr("192.0.2.11:4002"))]);
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_carriers_reoffer_at_0000_is_hold_and_reaches_the_agent() {
    let (mut s, _, ok) = answered_adjusted(with_own);
    let reoffer = in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKhold");
    let actions =
        s.carrier_sends(with_body(reoffer, Some(&carrier_sdp("0.0.0.0", 4000, "sendonly"))));
    assert!(statuses(&actions, CARRIER_LEG).iter().all(|s| *s < 300));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Invite]);
    assert_eq!(remote_updates(&actions, RelaySide::A), vec![None]);
    assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(true)));
}

// Answers from a carrier.

#[test]
fn a_delayed_offers_answer_in_the_ack_at_the_gateway_itself_ends_the_call() {
    let (mut s, invite, _) = inviting_adjusted(None, with_own);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    let answer = carrier_sdp("198.51.100.1", 30000, "sendrecv");
    let actions = s.carrier_sends(with_body(ack_for(&ok, 1), Some(&answer)));
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    assert!(remote_updates(&actions, RelaySide::A).is_empty(), "the relay was pointed at itself");
    let reason = ended(&actions).unwrap().reason.unwrap();
    assert!(reason.contains("OwnMediaAddress"), "{reason}");
}

#[test]
fn a_carriers_answer_to_the_agents_reoffer_at_a_multicast_group_is_dropped() {
    let (mut s, invite, _) = answered_adjusted(with_own);
    let reoffer = in_dialog_from_agent(&invite, "INVITE", 2, "z9hG4bKagentreoffer");
    let actions = s.agent_sends(with_body(reoffer, Some(&answer_sdp(7080, "sendrecv"))));
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(to_carrier.method, Method::Invite);
    let actions =
        s.carrier_responds(&to_carrier, 200, Some(&carrier_sdp("224.2.1.1", 4000, "sendrecv")));
    let to_agent = responses_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(to_agent.status, 200);
    assert!(to_agent.body.is_empty(), "the multicast answer reached the agent");
    assert!(remote_updates(&actions, RelaySide::A).is_empty(), "the relay was moved");
}

/// An outbound call: the agent runtime (leg 0, side B) calls a number through a carrier
/// (leg 1, side A, at CARRIER); the relay runs and the carrier has our INVITE.
fn outbound() -> (Script, Request) {
    outbound_with(Encryption::Disabled)
}

/// [`outbound`] through a trunk whose `media.encryption` is `encryption`.
pub(super) fn outbound_with(encryption: Encryption) -> (Script, Request) {
    let invite = request(&format!(
        "INVITE sip:+14155550142@{GATEWAY_B} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {AGENT};branch=z9hG4bKagent1\r\nMax-Forwards: 70\r\n\
         From: <sip:support@127.0.0.1>;tag=a1\r\nTo: <sip:+14155550142@{GATEWAY_B}>\r\n\
         Call-ID: outbound-call@127.0.0.1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:support@{AGENT}>\r\nContent-Length: 0\r\n\r\n"
    ));
    let agent_offer = answer_sdp(7078, "sendrecv");
    let invite = with_body(invite, Some(&agent_offer));
    let codecs = vec![Codec::Pcmu];
    let mut sdp = Sdp::parse(agent_offer.as_bytes()).unwrap();
    let negotiated = codec::filter_offer(&mut sdp, &codecs).unwrap();
    let carrier = format!("sip:+14155550142@{CARRIER}");
    let dialog = Dialog {
        call_id: "carrier-leg@trunkline".into(),
        local_tag: "gwa".into(),
        remote_tag: None,
        local_uri: NameAddr {
            display: None,
            uri: format!("sip:+14155550100@{GATEWAY_A}"),
            params: vec![],
        },
        remote_uri: NameAddr { display: None, uri: carrier.clone(), params: vec![] },
        remote_target: carrier,
        route_set: vec![],
        local_cseq: 0,
        target: Target {
            protocol: Protocol::Udp,
            zone: Zone::Carrier,
            remote: addr(GATEWAY_A),
            connection: None,
        },
        local: addr(GATEWAY_A),
    };
    let setup = Setup {
        session_id: "outbound-1".into(),
        origin: Origin {
            role: Role::Agent,
            invite,
            source: source(AGENT, GATEWAY_B, Zone::Internal),
            local: addr(GATEWAY_B),
            trusted: vec![],
            srtp: LegSrtp::default(),
        },
        dial: Dial {
            role: Role::Carrier,
            dialog,
            destination: Destination::Address(addr(CARRIER)),
            headers: vec![],
            credentials: None,
            alternates: Vec::new(),
            encryption,
        },
        offer: Some(MediaOffer { sdp, negotiated, delayed: false }),
        codecs,
        transfer: None,
        max_duration: None,
    };
    let t0 = std::time::Instant::now();
    let config = CallConfig { own_addresses: own(), ..CallConfig::default() };
    let (call, _) = Call::start(t0, config, Ids::seeded(9), setup);
    let mut s = Script { call, t0, now: t0 };
    let actions = s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B });
    let to_carrier = requests_to(&actions, LegId(1)).remove(0);
    assert_eq!(to_carrier.method, Method::Invite);
    (s, to_carrier)
}

/// The carrier of [`outbound`] answers our INVITE.
pub(super) fn carrier_answers(
    s: &mut Script,
    invite: &Request,
    status: u16,
    sdp: Option<&str>,
) -> Vec<Action> {
    let mut r =
        Response::to_request(invite, status, msg::reason_phrase(status), Some("carriertag"));
    r.headers.push(name::CONTACT, format!("<sip:+14155550142@{CARRIER}>"));
    if let Some(sdp) = sdp {
        r.headers.push(name::CONTENT_TYPE, "application/sdp");
        r.body = sdp.as_bytes().to_vec().into();
    }
    let from = source(CARRIER, GATEWAY_A, Zone::Carrier);
    s.call.on_message(s.now, Message::Response(r), from)
}

#[test]
fn a_carriers_answer_at_a_multicast_group_the_gateway_or_nothing_fails_the_outbound_call() {
    for (c, port, direction, rule) in REFUSED {
        let (mut s, invite) = outbound();
        let actions = carrier_answers(&mut s, &invite, 200, Some(&carrier_sdp(c, port, direction)));
        assert_eq!(methods(&actions, LegId(1)), vec![Method::Ack, Method::Bye], "{c}");
        assert_eq!(statuses(&actions, LegId(0)), vec![488], "{c}");
        assert!(remote_updates(&actions, RelaySide::A).is_empty(), "the relay was moved: {c}");
        let reason = ended(&actions).expect("the call ends").reason.unwrap_or_default();
        assert!(reason.contains(rule), "{c}: {reason}");
        assert_ne!(s.call.state(), State::Answered);
    }
}

#[test]
fn a_carriers_answer_at_0000_that_only_sends_puts_the_call_on_hold_from_the_start() {
    for direction in ["sendonly", "inactive"] {
        let (mut s, invite) = outbound();
        let sdp = carrier_sdp("0.0.0.0", 4000, direction);
        let actions = carrier_answers(&mut s, &invite, 200, Some(&sdp));
        assert_eq!(methods(&actions, LegId(1)), vec![Method::Ack], "{direction}");
        assert_eq!(statuses(&actions, LegId(0)), vec![200], "{direction}");
        assert_eq!(remote_updates(&actions, RelaySide::A), vec![None], "{direction}");
        assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(true)), "{direction}");
        assert_eq!(s.call.state(), State::Answered);
    }
}

#[test]
fn a_carriers_early_media_at_a_multicast_group_is_dropped_and_the_call_goes_on() {
    let (mut s, invite) = outbound();
    let actions =
        carrier_answers(&mut s, &invite, 183, Some(&carrier_sdp("224.2.1.1", 4000, "sendrecv")));
    let progress = responses_to(&actions, LegId(0));
    assert_eq!(progress.iter().map(|r| r.status).collect::<Vec<_>>(), vec![183]);
    assert!(progress[0].body.is_empty(), "the multicast SDP reached the agent");
    assert!(remote_updates(&actions, RelaySide::A).is_empty());
    let sdp = carrier_sdp("192.0.2.10", 4000, "sendrecv");
    let actions = carrier_answers(&mut s, &invite, 200, Some(&sdp));
    assert_eq!(statuses(&actions, LegId(0)), vec![200]);
    assert_eq!(remote_updates(&actions, RelaySide::A), vec![Some(addr("192.0.2.10:4000"))]);
    assert!(ended(&actions).is_none());
}

// Bridged transfers to a carrier-facing destination.

const TRANSFER_LEG: LegId = LegId(2);
const DESTINATION: &str = "192.0.2.30:5060";

/// An answered call whose agent REFERs it to `pbx`; the driver has built the leg.
fn transfer_dialed(destination: Destination) -> (Script, Request, Vec<Action>) {
    let (mut s, invite, _) = answered_adjusted(with_own);
    let mut refer = in_dialog_from_agent(&invite, "REFER", 2, "z9hG4bKrefer2");
    refer.headers.push("Refer-To", "<sip:pbx@x>");
    let actions = s.agent_sends(refer);
    assert!(actions.iter().any(|a| matches!(a, Action::PrepareTransfer(_))));
    let actions =
        s.call.on_transfer_dial(s.now, Ok(super::tests::transfer_dial(destination, None)));
    (s, invite, actions)
}

fn transfer_media(actions: &[Action]) -> Vec<(IpAddr, RelayPeer)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartTransferMedia { bind, peer } => Some((*bind, *peer)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_carrier_facing_destination_is_looked_up_before_its_ports_are_bound_strict_for_its_address() {
    let lookup = Destination::Lookup { host: "pbx.example".into(), port: 5060 };
    let (mut s, _, actions) = transfer_dialed(lookup);
    assert!(transfer_media(&actions).is_empty(), "ports bound before the address is known");
    assert!(actions.iter().any(|a| matches!(a, Action::Resolve { leg: TRANSFER_LEG, .. })));

    let actions = s.call.on_resolved(s.now, TRANSFER_LEG, Ok(addr(DESTINATION)));
    let strict = RelayPeer { carrier: true, signalling: Some(addr(DESTINATION).ip()) };
    assert_eq!(transfer_media(&actions), vec![(addr(GATEWAY_A).ip(), strict)]);
    assert!(sent(&actions, TRANSFER_LEG).is_empty(), "the INVITE waits for the ports");

    let actions = s.call.on_media_event(s.now, MediaEvent::TransferMediaStarted { port: 30004 });
    let invite = requests_to(&actions, TRANSFER_LEG).remove(0);
    assert_eq!(invite.method, Method::Invite);
    assert_eq!(media_of(&invite.body).0, addr("198.51.100.1:30004"));
}

#[test]
fn a_destination_at_an_address_gets_its_guarded_ports_at_once() {
    let (_, _, actions) = transfer_dialed(Destination::Address(addr(DESTINATION)));
    let strict = RelayPeer { carrier: true, signalling: Some(addr(DESTINATION).ip()) };
    assert_eq!(transfer_media(&actions), vec![(addr(GATEWAY_A).ip(), strict)]);
}

#[test]
fn a_destination_answering_at_a_multicast_group_or_the_gateway_fails_the_transfer_and_the_caller_stays()
 {
    for (c, port, direction, rule) in REFUSED {
        let (mut s, _, _) = transfer_dialed(Destination::Address(addr(DESTINATION)));
        let actions =
            s.call.on_media_event(s.now, MediaEvent::TransferMediaStarted { port: 30004 });
        let invite = requests_to(&actions, TRANSFER_LEG).remove(0);
        let mut ok = Response::to_request(&invite, 200, "OK", Some("desk"));
        ok.headers.push(name::CONTACT, format!("<sip:op@{DESTINATION}>"));
        ok.headers.push(name::CONTENT_TYPE, "application/sdp");
        ok.body = carrier_sdp(c, port, direction).into_bytes().into();
        let from = source(DESTINATION, GATEWAY_A, Zone::Carrier);
        let actions = s.call.on_message(s.now, Message::Response(ok), from);
        assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Ack, Method::Bye], "{rule}");
        let updates = relay_updates(&actions);
        assert!(updates.contains(&RelayUpdate::DropSpare), "{rule}: {updates:?}");
        assert!(!updates.iter().any(|u| matches!(u, RelayUpdate::PromoteSpare(_))), "{rule}");
        let notify = requests_to(&actions, AGENT_LEG)
            .into_iter()
            .find(|r| r.method == Method::Notify)
            .expect("the agent hears how the transfer ended");
        assert!(String::from_utf8_lossy(&notify.body).contains("488"), "{rule}");
        assert!(ended(&actions).is_none(), "{rule}: the caller stays with the agent");
        assert_eq!(s.call.state(), State::Answered);
    }
}
