//! Transcripts of SRTP keyed by SDES on a call's legs (issue 17, item 3; `media.rs`): the
//! carrier's leg speaks SRTP as its trunk's `media.encryption` says, the agent's stays plain
//! RTP, and the relay is told each side's keys. Played with the harness of `script.rs`.

use crate::config::model::{Codec, Encryption};
use crate::media::codec;
use crate::media::relay::Leg as RelaySide;
use crate::media::sdes::{self, Crypto, Settled, Suite};
use crate::media::sdp::Sdp;
use crate::media::srtp::SrtpKeys;
use crate::sip::msg::{Message, Method, Request, Response, name};
use crate::sip::transport::Zone;

use super::media_tests::{carrier_answers, outbound_with};
use super::script::*;
use super::*;

/// RFC 4568 §5.1's example key (30 bytes: AES-CM's key and salt).
const KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
/// Another well-formed key.
const OTHER_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";

/// A carrier's SDP: PCMU at 192.0.2.10:4000 under `profile`, with these `a=crypto` values.
fn carrier_sdp(profile: &str, crypto: &[String], direction: &str) -> String {
    let mut sdp = format!(
        "v=0\r\no=- 9 9 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 4000 {profile} 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    for value in crypto {
        sdp.push_str(&format!("a=crypto:{value}\r\n"));
    }
    sdp.push_str(&format!("a={direction}\r\n"));
    sdp
}

fn line(tag: u32, suite: &str, key: &str) -> String {
    format!("{tag} {suite} inline:{key}")
}

/// The profile and the usable `a=crypto` lines of an SDP the gateway sent.
fn security_of(body: &[u8]) -> (bool, Vec<Crypto>) {
    let sdp = Sdp::parse_srtp(body).expect("the gateway sends SDP it can read");
    (sdp.audio_is_srtp(), sdp.audio_crypto().into_iter().map(|c| c.unwrap()).collect())
}

fn srtp_updates(actions: &[Action]) -> Vec<(RelaySide, Option<SrtpKeys>)> {
    relay_updates(actions)
        .into_iter()
        .filter_map(|u| match u {
            RelayUpdate::Srtp { side, keys } => Some((side, keys.map(|k| *k))),
            _ => None,
        })
        .collect()
}

/// The front door's part for a carrier's `offer` on a trunk with `policy` (what
/// `call::gateway::media_offer` does): the offer read with SRTP allowed, SDES answered.
fn front_door(policy: Encryption, offer: &str) -> impl FnOnce(&mut Setup, &mut CallConfig) {
    let offer = offer.to_string();
    move |setup: &mut Setup, _: &mut CallConfig| {
        let mut sdp = Sdp::parse_srtp(offer.as_bytes()).unwrap();
        let mut srtp = LegSrtp::new(policy);
        let savp = sdp.audio_is_srtp();
        let settled = sdes::answer_offer(policy, savp, &sdp.audio_crypto()).unwrap();
        if let Settled::Srtp { remote, local } = settled {
            srtp.savp = savp;
            srtp.keys = Some(SrtpKeys { remote, local });
        }
        let negotiated = codec::filter_offer(&mut sdp, &[Codec::Pcmu]).unwrap();
        setup.offer = Some(MediaOffer { sdp, negotiated, delayed: false });
        setup.origin.invite = with_body(carrier_invite(None), Some(&offer));
        setup.origin.srtp = srtp;
    }
}

/// An SRTP call from a carrier on a `Required` trunk, answered by the agent and acknowledged:
/// the script, our INVITE to the agent, the 200 the carrier got, every action so far.
fn answered_srtp() -> (Script, Request, Response, Vec<Action>) {
    let offer = carrier_sdp("RTP/SAVP", &[line(1, "AES_CM_128_HMAC_SHA1_80", KEY)], "sendrecv");
    let (mut s, invite, mut actions) =
        inviting_adjusted(None, front_door(Encryption::Required, &offer));
    actions.extend(s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv"))));
    let ok = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200).unwrap();
    actions.extend(s.carrier_sends(ack_for(&ok, 1)));
    (s, invite, ok, actions)
}

#[test]
fn an_srtp_offer_reaches_the_agent_as_plain_rtp_and_the_carrier_gets_our_key_in_the_answer() {
    let (_, invite, ok, actions) = answered_srtp();

    let to_agent = String::from_utf8_lossy(&invite.body).into_owned();
    assert!(to_agent.contains("RTP/AVP 0"), "{to_agent}");
    assert!(!to_agent.contains("a=crypto"), "the carrier's key reached the agent: {to_agent}");
    assert!(!to_agent.contains(KEY));

    let (savp, ours) = security_of(&ok.body);
    assert!(savp, "the answer to an RTP/SAVP offer is RTP/SAVP");
    let [ours] = ours.as_slice() else { panic!("one a=crypto line in the answer: {ours:?}") };
    assert_eq!((ours.tag, ours.suite), (1, Suite::AesCm128HmacSha1_80), "the offer's tag");
    assert!(!String::from_utf8_lossy(&ok.body).contains(KEY), "our key is not the carrier's");

    let updates = srtp_updates(&actions);
    let [(RelaySide::A, Some(keys))] = updates.as_slice() else {
        panic!("the carrier's side gets its keys once, the agent's none: {updates:?}")
    };
    assert_eq!(keys.remote, Crypto::parse(&line(1, "AES_CM_128_HMAC_SHA1_80", KEY)).unwrap());
    assert_eq!(&keys.local, ours, "the relay encrypts with the key the answer gave");
    let recorded = actions.iter().find_map(|a| match a {
        Action::Record(Record::Answered { srtp, .. }) => Some(*srtp),
        _ => None,
    });
    assert_eq!(recorded, Some(Some(Suite::AesCm128HmacSha1_80)), "the session record says so");
}

#[test]
fn a_reinvite_with_the_same_key_keeps_ours_and_the_relay_is_not_rekeyed() {
    let (mut s, invite, ok, _) = answered_srtp();
    let (_, first) = security_of(&ok.body);
    let hold = carrier_sdp("RTP/SAVP", &[line(1, "AES_CM_128_HMAC_SHA1_80", KEY)], "sendonly");
    let reinvite = with_body(in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKhold"), Some(&hold));
    let actions = s.carrier_sends(reinvite);
    let to_agent = requests_to(&actions, AGENT_LEG).remove(0);
    assert!(!String::from_utf8_lossy(&to_agent.body).contains("a=crypto"));
    let mut actions = actions;
    actions.extend(s.agent_responds(&to_agent, 200, Some(&answer_sdp(7078, "recvonly"))));
    let answer = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200);
    let (savp, again) = security_of(&answer.expect("the carrier's re-INVITE is answered").body);
    assert!(savp);
    assert_eq!(again, first, "the same line and key as in the first answer");
    assert!(srtp_updates(&actions).is_empty(), "nothing changed: {:?}", srtp_updates(&actions));
    let _ = invite;
}

#[test]
fn a_reinvite_with_a_new_key_rekeys_the_carriers_side_once_the_agent_answers() {
    let (mut s, _, ok, _) = answered_srtp();
    let offer =
        carrier_sdp("RTP/SAVP", &[line(3, "AES_CM_128_HMAC_SHA1_32", OTHER_KEY)], "sendrecv");
    let actions = s.carrier_sends(with_body(
        in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKre"),
        Some(&offer),
    ));
    assert!(srtp_updates(&actions).is_empty(), "rekeyed before the offer was answered");
    let to_agent = requests_to(&actions, AGENT_LEG).remove(0);
    let actions = s.agent_responds(&to_agent, 200, Some(&answer_sdp(7078, "sendrecv")));
    let answer = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200).unwrap();
    let (_, ours) = security_of(&answer.body);
    let [ours] = ours.as_slice() else { panic!("{ours:?}") };
    assert_eq!((ours.tag, ours.suite), (3, Suite::AesCm128HmacSha1_32));
    let updates = srtp_updates(&actions);
    let [(RelaySide::A, Some(keys))] = updates.as_slice() else { panic!("{updates:?}") };
    assert_eq!(keys.remote.suite, Suite::AesCm128HmacSha1_32);
    assert_eq!(&keys.local, ours);
}

#[test]
fn a_plain_reinvite_on_a_trunk_that_requires_srtp_gets_488_naming_the_rule_and_nothing_changes() {
    let (mut s, _, ok, _) = answered_srtp();
    let plain = carrier_sdp("RTP/AVP", &[], "sendrecv");
    let actions = s.carrier_sends(with_body(
        in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKplain"),
        Some(&plain),
    ));
    let refused = responses_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(refused.status, 488);
    let warning = refused.headers.get(name::WARNING).unwrap_or_default();
    assert!(warning.contains("SrtpRequired"), "{warning}");
    assert!(requests_to(&actions, AGENT_LEG).is_empty(), "the agent was asked");
    assert!(srtp_updates(&actions).is_empty());
    assert_eq!(s.call.state(), State::Answered);
}

/// A carrier INVITE without SDP on a `Required` trunk: the agent's answer is our offer to the
/// carrier, in the 200; the ACK answers it.
fn delayed_srtp() -> (Script, Response) {
    let adjust = |setup: &mut Setup, _: &mut CallConfig| {
        setup.origin.srtp = LegSrtp::new(Encryption::Required);
    };
    let (mut s, invite, _) = inviting_adjusted(None, adjust);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200).unwrap();
    (s, ok)
}

#[test]
fn a_delayed_offer_on_an_srtp_trunk_gets_our_srtp_offer_and_the_ack_settles_the_keys() {
    let (mut s, ok) = delayed_srtp();
    let (savp, offered) = security_of(&ok.body);
    assert!(savp, "Required offers RTP/SAVP");
    let suites: Vec<Suite> = offered.iter().map(|c| c.suite).collect();
    assert_eq!(suites, Suite::PREFERENCE.to_vec(), "one line per suite, strongest first");

    let chosen = &offered[1];
    let answer =
        carrier_sdp("RTP/SAVP", &[line(chosen.tag, chosen.suite.as_str(), KEY)], "sendrecv");
    let actions = s.carrier_sends(with_body(ack_for(&ok, 1), Some(&answer)));
    let updates = srtp_updates(&actions);
    let [(RelaySide::A, Some(keys))] = updates.as_slice() else { panic!("{updates:?}") };
    assert_eq!(&keys.local, chosen, "we encrypt with the line the carrier took");
    assert_eq!(keys.remote.suite, chosen.suite);
    assert!(ended(&actions).is_none());
}

#[test]
fn a_delayed_offer_whose_ack_answers_plain_on_a_trunk_that_requires_srtp_ends_the_call() {
    let (mut s, ok) = delayed_srtp();
    let actions =
        s.carrier_sends(with_body(ack_for(&ok, 1), Some(&carrier_sdp("RTP/AVP", &[], "sendrecv"))));
    let reason = ended(&actions).expect("the call ends").reason.unwrap_or_default();
    assert!(reason.contains("SrtpRequired"), "{reason}");
    assert!(srtp_updates(&actions).is_empty());
}

#[test]
fn an_outbound_call_on_a_required_trunk_offers_srtp_and_keys_the_carriers_side_from_its_answer() {
    let (mut s, invite) = outbound_with(Encryption::Required);
    let (savp, offered) = security_of(&invite.body);
    assert!(savp);
    assert_eq!(offered.len(), Suite::PREFERENCE.len());
    let text = String::from_utf8_lossy(&invite.body).into_owned();
    assert!(text.contains("RTP/SAVP"), "{text}");

    let answer = carrier_sdp("RTP/SAVP", &[line(2, "AES_CM_128_HMAC_SHA1_80", KEY)], "sendrecv");
    let actions = carrier_answers(&mut s, &invite, 200, Some(&answer));
    assert_eq!(methods(&actions, LegId(1)), vec![Method::Ack]);
    let to_agent = responses_to(&actions, LegId(0)).remove(0);
    assert_eq!(to_agent.status, 200);
    let plain = String::from_utf8_lossy(&to_agent.body).into_owned();
    assert!(plain.contains("RTP/AVP") && !plain.contains("a=crypto"), "{plain}");
    let updates = srtp_updates(&actions);
    let [(RelaySide::A, Some(keys))] = updates.as_slice() else { panic!("{updates:?}") };
    assert_eq!(keys.local, offered[1], "our tag-2 line");
    assert_eq!(keys.remote, Crypto::parse(&line(2, "AES_CM_128_HMAC_SHA1_80", KEY)).unwrap());
    let recorded = actions.iter().find_map(|a| match a {
        Action::Record(Record::Answered { srtp, .. }) => Some(*srtp),
        _ => None,
    });
    assert_eq!(recorded, Some(Some(Suite::AesCm128HmacSha1_80)));
}

#[test]
fn an_outbound_carrier_answering_plain_rtp_on_a_required_trunk_fails_the_call_with_488() {
    let (mut s, invite) = outbound_with(Encryption::Required);
    let actions =
        carrier_answers(&mut s, &invite, 200, Some(&carrier_sdp("RTP/AVP", &[], "sendrecv")));
    assert_eq!(methods(&actions, LegId(1)), vec![Method::Ack, Method::Bye]);
    assert_eq!(statuses(&actions, LegId(0)), vec![488]);
    let reason = ended(&actions).expect("the call ends").reason.unwrap_or_default();
    assert!(reason.contains("SrtpRequired"), "{reason}");
}

#[test]
fn an_outbound_call_on_an_optional_trunk_offers_sdes_under_rtp_avp_and_takes_a_plain_answer() {
    let (mut s, invite) = outbound_with(Encryption::Optional);
    let (savp, offered) = security_of(&invite.body);
    assert!(!savp, "best-effort SDES: RTP/AVP with a=crypto");
    assert_eq!(offered.len(), Suite::PREFERENCE.len());
    let actions =
        carrier_answers(&mut s, &invite, 200, Some(&carrier_sdp("RTP/AVP", &[], "sendrecv")));
    assert_eq!(methods(&actions, LegId(1)), vec![Method::Ack]);
    assert_eq!(statuses(&actions, LegId(0)), vec![200]);
    assert!(srtp_updates(&actions).is_empty(), "a plain answer keys nothing");
}

#[test]
fn an_outbound_call_on_a_disabled_trunk_offers_plain_rtp() {
    let (_, invite) = outbound_with(Encryption::Disabled);
    let text = String::from_utf8_lossy(&invite.body).into_owned();
    assert!(text.contains("RTP/AVP") && !text.contains("a=crypto"), "{text}");
}

// A bridged transfer to a SIP destination whose `media.encryption` asks for SRTP.

const TRANSFER_LEG: LegId = LegId(2);
const DESTINATION: &str = "192.0.2.30:5060";

/// An answered call whose agent REFERs it to a destination taking SRTP by `policy`; the
/// transfer leg's spare ports are bound. Gives our INVITE to the destination.
fn srtp_transfer(policy: Encryption) -> (Script, Request) {
    let (mut s, invite, _) = answered();
    let mut refer = in_dialog_from_agent(&invite, "REFER", 2, "z9hG4bKrefer2");
    refer.headers.push("Refer-To", "<sip:pbx@x>");
    let actions = s.agent_sends(refer);
    assert!(actions.iter().any(|a| matches!(a, Action::PrepareTransfer(_))));
    let mut dial = super::tests::transfer_dial(Destination::Address(addr(DESTINATION)), None);
    dial.encryption = policy;
    s.call.on_transfer_dial(s.now, Ok(dial));
    let actions = s.call.on_media_event(s.now, MediaEvent::TransferMediaStarted { port: 30004 });
    let invite = requests_to(&actions, TRANSFER_LEG).remove(0);
    assert_eq!(invite.method, Method::Invite);
    (s, invite)
}

fn destination_answers(s: &mut Script, invite: &Request, sdp: &str) -> Vec<Action> {
    let mut ok = Response::to_request(invite, 200, "OK", Some("desk"));
    ok.headers.push(name::CONTACT, format!("<sip:op@{DESTINATION}>"));
    ok.headers.push(name::CONTENT_TYPE, "application/sdp");
    ok.body = sdp.as_bytes().to_vec().into();
    let from = source(DESTINATION, GATEWAY_A, Zone::Carrier);
    s.call.on_message(s.now, Message::Response(ok), from)
}

#[test]
fn a_transfer_to_an_srtp_destination_offers_srtp_and_keys_the_spare_before_it_becomes_side_b() {
    let (mut s, invite) = srtp_transfer(Encryption::Required);
    let (savp, offered) = security_of(&invite.body);
    assert!(savp, "Required offers RTP/SAVP to the destination");
    assert_eq!(offered.len(), Suite::PREFERENCE.len());

    let answer = carrier_sdp("RTP/SAVP", &[line(2, "AES_CM_128_HMAC_SHA1_80", KEY)], "sendrecv");
    let updates = relay_updates(&destination_answers(&mut s, &invite, &answer));
    let spare = updates.iter().position(|u| matches!(u, RelayUpdate::SpareSrtp(Some(_))));
    let promote = updates.iter().position(|u| matches!(u, RelayUpdate::PromoteSpare(_)));
    let (Some(spare), Some(promote)) = (spare, promote) else {
        panic!("the spare is keyed and promoted: {updates:?}")
    };
    assert!(spare < promote, "keyed before it becomes side B: {updates:?}");
    let RelayUpdate::SpareSrtp(Some(keys)) = &updates[spare] else { unreachable!() };
    assert_eq!(keys.local, offered[1], "our tag-2 line");
    assert!(
        !updates.iter().any(|u| matches!(u, RelayUpdate::Srtp { .. })),
        "the agent's side B was keyed: {updates:?}"
    );
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_destination_answering_plain_rtp_where_srtp_is_required_fails_the_transfer_and_the_caller_stays()
 {
    let (mut s, invite) = srtp_transfer(Encryption::Required);
    let actions = destination_answers(&mut s, &invite, &carrier_sdp("RTP/AVP", &[], "sendrecv"));
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Ack, Method::Bye]);
    let updates = relay_updates(&actions);
    assert!(updates.contains(&RelayUpdate::DropSpare), "{updates:?}");
    assert!(!updates.iter().any(|u| matches!(u, RelayUpdate::PromoteSpare(_))));
    let notify = requests_to(&actions, AGENT_LEG)
        .into_iter()
        .find(|r| r.method == Method::Notify)
        .expect("the agent hears how the transfer ended");
    assert!(String::from_utf8_lossy(&notify.body).contains("488"));
    assert!(ended(&actions).is_none(), "the caller stays with the agent");
}
