//! Transcripts of in-dialog matching (RFC 3261 §12.2.2, issue 15 item 2): a request is the
//! call's only with its dialog's Call-ID and both tags, a CSeq above the peer's last one, from
//! the leg's zone and the leg's peer; anything else is answered 481 (500 for the CSeq) and
//! changes nothing. An ACK that is not the dialog's is absorbed: no answer, no effect.

use std::time::Duration;

use crate::sip::msg::{self, Message, Method, Request, Response, name};
use crate::sip::transport::{Protocol, Source, Zone};

use super::script::*;
use super::*;

/// The statuses of the responses the call sent to `remote` (stateless answers go to whoever
/// sent the request, whichever leg it named).
fn answers_to(actions: &[Action], remote: &str) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { target, bytes, .. } if target.remote == addr(remote) => {
                match msg::parse(bytes) {
                    Ok(Message::Response(r)) => Some(r.status),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Nothing happened but an answer and the refusal counted: no request to any leg, no relay
/// change, no end, no record but the one refusal.
fn assert_no_effect(actions: &[Action], s: &Script) {
    assert!(requests_to(actions, CARRIER_LEG).is_empty(), "{actions:?}");
    assert!(requests_to(actions, AGENT_LEG).is_empty(), "{actions:?}");
    assert!(relay_updates(actions).is_empty(), "{actions:?}");
    assert!(ended(actions).is_none(), "{actions:?}");
    let records: Vec<&Record> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(matches!(records[..], [Record::DialogRefused(_)]), "{actions:?}");
    assert_eq!(s.call.state(), State::Answered);
}

/// Nothing sent and nothing changed: the one thing done is counting the refusal.
fn absorbed(actions: &[Action]) -> bool {
    matches!(actions, [Action::Record(Record::DialogRefused(_))])
}

fn from(remote: &str, zone: Zone) -> Source {
    let local = if zone == Zone::Carrier { GATEWAY_A } else { GATEWAY_B };
    source(remote, local, zone)
}

fn deliver(s: &mut Script, req: Request, source: Source) -> Vec<Action> {
    s.call.on_message(s.now, Message::Request(req), source)
}

fn to_without_tag() -> String {
    format!("<sip:+14155550100@{GATEWAY_A}>")
}

#[test]
fn a_bye_whose_call_id_or_tags_are_not_the_dialogs_gets_481_and_changes_nothing() {
    let cases: [(&str, &str, String); 5] = [
        ("no To tag", name::TO, to_without_tag()),
        ("a wrong To tag", name::TO, format!("{};tag=guessed", to_without_tag())),
        ("a wrong From tag", name::FROM, "\"Ada\" <sip:+12025550123@192.0.2.10>;tag=c2".into()),
        ("no From tag", name::FROM, "\"Ada\" <sip:+12025550123@192.0.2.10>".into()),
        // The call is found by either of its Call-IDs: the agent leg's with the carrier's tags.
        ("the other leg's Call-ID", name::CALL_ID, "agent-call@trunkline".into()),
    ];
    for (case, header, value) in cases {
        let (mut s, _, ok) = answered();
        let mut bye = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKbadbye");
        bye.headers.set(header, value);
        let actions = s.carrier_sends(bye);
        assert_eq!(answers_to(&actions, CARRIER), vec![481], "{case}");
        assert_no_effect(&actions, &s);
        // The carrier's own BYE, with the same CSeq (the refused one did not take it).
        let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKbye"));
        assert_eq!(answers_to(&actions, CARRIER), vec![200], "{case}");
        assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye], "{case}");
        assert!(ended(&actions).is_some(), "{case}");
    }
}

#[test]
fn a_bye_from_another_address_gets_481_and_changes_nothing() {
    let (mut s, _, ok) = answered();
    let bye = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKspoof");
    let actions = deliver(&mut s, bye, from("203.0.113.66:5060", Zone::Carrier));
    assert_eq!(answers_to(&actions, "203.0.113.66:5060"), vec![481]);
    assert!(answers_to(&actions, CARRIER).is_empty(), "nothing to the carrier");
    assert_no_effect(&actions, &s);
}

#[test]
fn a_bye_from_the_carriers_address_on_another_port_ends_the_call() {
    // NATs and carriers' stacks change ports; the address is what the trunk trusts.
    let (mut s, _, ok) = answered();
    let bye = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKport");
    let actions = deliver(&mut s, bye, from("192.0.2.10:5080", Zone::Carrier));
    assert_eq!(answers_to(&actions, "192.0.2.10:5080"), vec![200]);
    assert!(ended(&actions).is_some());
}

#[test]
fn a_bye_from_another_edge_of_the_trunks_allowed_addresses_ends_the_call() {
    let trunk_networks = |setup: &mut Setup, _: &mut CallConfig| {
        setup.origin.trusted = vec!["192.0.2.0/28".parse().unwrap()];
    };
    let (mut s, _, ok) = answered_adjusted(trunk_networks);
    let outside = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKoutside");
    let actions = deliver(&mut s, outside, from("192.0.2.77:5060", Zone::Carrier));
    assert_eq!(answers_to(&actions, "192.0.2.77:5060"), vec![481]);
    assert_no_effect(&actions, &s);
    let edge = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKedge");
    let actions = deliver(&mut s, edge, from("192.0.2.11:5060", Zone::Carrier));
    assert_eq!(answers_to(&actions, "192.0.2.11:5060"), vec![200]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
}

#[test]
fn requests_from_the_other_zones_listener_get_481_and_change_nothing() {
    let (mut s, invite, ok) = answered();
    // The carrier's BYE on the agent-facing listener, from the carrier's own address.
    let bye = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKzone1");
    let actions = deliver(&mut s, bye, from(CARRIER, Zone::Internal));
    assert_eq!(answers_to(&actions, CARRIER), vec![481]);
    assert_no_effect(&actions, &s);
    // The agent's BYE on the carrier-facing listener, from the agent's own address.
    let bye = in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKzone2");
    let actions = deliver(&mut s, bye, from(AGENT, Zone::Carrier));
    assert_eq!(answers_to(&actions, AGENT), vec![481]);
    assert_no_effect(&actions, &s);
}

#[test]
fn the_agents_requests_come_from_its_address_its_contact_or_the_agent_networks() {
    let (mut s, invite, _) = answered();
    let bye = in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKagentspoof");
    let actions = deliver(&mut s, bye, from("127.0.0.9:7000", Zone::Internal));
    assert_eq!(answers_to(&actions, "127.0.0.9:7000"), vec![481]);
    assert_no_effect(&actions, &s);

    // A pod behind the agent runtime's Service answers from its own address.
    let agent_networks = |_: &mut Setup, config: &mut CallConfig| {
        config.agent_networks = vec!["10.0.0.0/8".parse().unwrap()];
    };
    let (mut s, invite, _) = answered_adjusted(agent_networks);
    let bye = in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKpod");
    let actions = deliver(&mut s, bye, from("10.1.2.3:5060", Zone::Internal));
    assert_eq!(answers_to(&actions, "10.1.2.3:5060"), vec![200]);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
}

#[test]
fn a_dialed_peer_may_send_from_the_address_in_the_contact_of_its_answer() {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    // The 2xx comes back to us (from where we sent), its Contact names another node.
    let mut ok = Response::to_request(&invite, 200, "OK", Some("agenttag"));
    ok.headers.push(name::CONTACT, "<sip:support@127.0.0.44:7000>");
    ok.headers.push(name::CONTENT_TYPE, "application/sdp");
    ok.body = answer_sdp(7078, "sendrecv").into_bytes().into();
    let actions = s.deliver(AGENT_LEG, Message::Response(ok));
    let carrier_ok = responses_to(&actions, CARRIER_LEG).remove(0);
    s.carrier_sends(ack_for(&carrier_ok, 1));
    let bye = in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKnode");
    let actions = deliver(&mut s, bye, from("127.0.0.44:7000", Zone::Internal));
    assert_eq!(answers_to(&actions, "127.0.0.44:7000"), vec![200]);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
}

#[test]
fn a_request_whose_cseq_is_not_above_the_peers_last_gets_500_and_changes_nothing() {
    let (mut s, invite, ok) = answered();
    let options = in_dialog_from_carrier(&ok, "OPTIONS", 2, "z9hG4bKopt2");
    assert_eq!(answers_to(&s.carrier_sends(options.clone()), CARRIER), vec![200]);
    // Its retransmission is absorbed by its transaction: the same 200 again, not a 500.
    assert_eq!(answers_to(&s.carrier_sends(options), CARRIER), vec![200]);
    // A new request with the same CSeq, and one with a lower CSeq.
    for (cseq, branch) in [(2, "z9hG4bKsame"), (1, "z9hG4bKlower")] {
        let bye = in_dialog_from_carrier(&ok, "BYE", cseq, branch);
        let actions = s.carrier_sends(bye);
        assert_eq!(answers_to(&actions, CARRIER), vec![500], "CSeq {cseq}");
        assert_no_effect(&actions, &s);
    }
    // The agent's dialog keeps its own order: its first request sets it.
    let info = in_dialog_from_agent(&invite, "INFO", 5, "z9hG4bKinfo5");
    assert_eq!(methods(&s.agent_sends(info), CARRIER_LEG), vec![Method::Info]);
    let info = in_dialog_from_agent(&invite, "INFO", 4, "z9hG4bKinfo4");
    let actions = s.agent_sends(info);
    assert_eq!(answers_to(&actions, AGENT), vec![500]);
    assert_no_effect(&actions, &s);
    // In order, the carrier's BYE still ends the call.
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 3, "z9hG4bKbye3"));
    assert_eq!(answers_to(&actions, CARRIER), vec![200]);
    assert!(ended(&actions).is_some());
}

#[test]
fn a_new_invite_with_the_calls_call_id_but_no_to_tag_gets_481_and_is_not_relayed() {
    // A re-INVITE would move the agent's media; without our tag it is no request of the dialog.
    let (mut s, _, _) = answered();
    let mut invite = carrier_invite(Some(&offer_sdp(6666, "sendrecv")));
    invite.headers.set(name::VIA, format!("SIP/2.0/UDP {CARRIER};branch=z9hG4bKhijack"));
    invite.headers.set(name::CSEQ, "2 INVITE");
    let actions = s.carrier_sends(invite);
    assert_eq!(answers_to(&actions, CARRIER), vec![481]);
    assert_no_effect(&actions, &s);
}

/// A call whose agent answered and whose carrier has not acknowledged the 2xx yet.
fn answered_unacknowledged(sdp: Option<&str>) -> (Script, Response) {
    let (mut s, invite, _) = inviting(sdp);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    (s, ok)
}

#[test]
fn an_ack_without_our_to_tag_is_absorbed_and_the_2xx_goes_on_until_the_call_is_given_up() {
    let (mut s, ok) = answered_unacknowledged(Some(&offer_sdp(4000, "sendrecv")));
    let mut tagless = ack_for(&ok, 1);
    tagless.headers.set(name::TO, to_without_tag());
    // The same, reusing the INVITE's branch (it reaches the INVITE's transaction).
    let mut same_branch = tagless.clone();
    same_branch.headers.set(name::VIA, format!("SIP/2.0/UDP {CARRIER};branch=z9hG4bKcarrier1"));
    // The right tag, from another address.
    let spoofed = ack_for(&ok, 1);
    for (ack, source) in [
        (tagless, leg_source(CARRIER_LEG)),
        (same_branch, leg_source(CARRIER_LEG)),
        (spoofed, from("203.0.113.66:5060", Zone::Carrier)),
    ] {
        let actions = deliver(&mut s, ack, source);
        assert!(absorbed(&actions), "an ACK not of the dialog is absorbed: {actions:?}");
    }
    // Our 2xx is still owed its ACK: retransmitted (T1 after it was sent)...
    assert_eq!(statuses(&s.timer(500), CARRIER_LEG), vec![200]);
    // ...until 64·T1, when the call is given up on both legs (RFC 3261 §13.3.1.4).
    let actions = s.timer(32_000);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    assert!(ended(&actions).is_some());
}

#[test]
fn a_tagless_ack_carrying_an_answer_to_a_delayed_offer_does_not_set_the_media() {
    let (mut s, ok) = answered_unacknowledged(None);
    let answer = answer_sdp(4000, "sendrecv").replace("127.0.0.1", "203.0.113.66");
    let mut tagless = with_body(ack_for(&ok, 1), Some(&answer));
    tagless.headers.set(name::TO, to_without_tag());
    let actions = s.carrier_sends(tagless);
    assert!(absorbed(&actions), "{actions:?}");
    // The carrier's ACK, with our tag, brings its answer.
    let answer = answer_sdp(4000, "sendrecv").replace("127.0.0.1", "192.0.2.10");
    let actions = s.carrier_sends(with_body(ack_for(&ok, 1), Some(&answer)));
    assert!(relay_updates(&actions).contains(&RelayUpdate::Remote {
        side: crate::media::relay::Leg::A,
        remote: Some(addr("192.0.2.10:4000"))
    }));
}

#[test]
fn a_cancel_from_another_address_gets_481_and_the_call_rings_on() {
    let (mut s, invite, _) = inviting(None);
    s.agent_responds(&invite, 180, None);
    let mut cancel = carrier_invite(None);
    cancel.method = Method::Cancel;
    cancel.headers.set(name::CSEQ, "1 CANCEL");
    let actions = deliver(&mut s, cancel.clone(), from("203.0.113.66:5060", Zone::Carrier));
    assert_eq!(answers_to(&actions, "203.0.113.66:5060"), vec![481]);
    assert!(methods(&actions, AGENT_LEG).is_empty(), "the agent is not cancelled");
    assert_eq!(s.call.state(), State::Setup);
    // The carrier's own CANCEL still works.
    let actions = s.carrier_sends(cancel);
    assert_eq!(answers_to(&actions, CARRIER), vec![200, 487]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
}

#[test]
fn a_retransmission_from_another_address_gets_481_and_not_the_answer() {
    let (mut s, _, ok) = answered();
    let options = in_dialog_from_carrier(&ok, "OPTIONS", 2, "z9hG4bKopt");
    assert_eq!(answers_to(&s.carrier_sends(options.clone()), CARRIER), vec![200]);
    let actions = deliver(&mut s, options, from("203.0.113.66:5060", Zone::Carrier));
    assert_eq!(answers_to(&actions, "203.0.113.66:5060"), vec![481]);
    assert!(answers_to(&actions, CARRIER).is_empty(), "no reflection toward the carrier");
}

/// A call whose carrier came over TCP, on connection 7.
fn answered_over_tcp() -> (Script, Response) {
    let tcp = |setup: &mut Setup, _: &mut CallConfig| {
        setup.origin.source.protocol = Protocol::Tcp;
        setup.origin.source.connection = Some(7);
    };
    let (s, _, ok) = answered_adjusted(tcp);
    (s, ok)
}

fn over(protocol: Protocol, connection: Option<u64>) -> Source {
    Source { protocol, connection, ..from(CARRIER, Zone::Carrier) }
}

#[test]
fn on_a_tcp_leg_a_datagram_from_the_peers_address_gets_481() {
    let (mut s, ok) = answered_over_tcp();
    let bye = in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKudp");
    let actions = deliver(&mut s, bye, over(Protocol::Udp, None));
    assert_eq!(answers_to(&actions, CARRIER), vec![481]);
    assert_no_effect(&actions, &s);
}

#[test]
fn on_a_tcp_leg_the_peer_may_come_back_on_a_new_connection_from_its_address() {
    let (mut s, ok) = answered_over_tcp();
    let options = in_dialog_from_carrier(&ok, "OPTIONS", 2, "z9hG4bKsame");
    let actions = deliver(&mut s, options, over(Protocol::Tcp, Some(7)));
    assert_eq!(answers_to(&actions, CARRIER), vec![200]);
    let bye = in_dialog_from_carrier(&ok, "BYE", 3, "z9hG4bKnewconn");
    let actions = deliver(&mut s, bye, over(Protocol::Tls, Some(9)));
    assert_eq!(answers_to(&actions, CARRIER), vec![200]);
    assert!(ended(&actions).is_some());
    let _ = Duration::ZERO;
}
