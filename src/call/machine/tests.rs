//! Transcripts: scripted message sequences played against a [`Call`], with the actions it
//! must answer. No sockets and no clock: time is an `Instant` the script moves, ids come from a
//! fixed seed. The sipp suites under `tests/` stay the interop proof on the wire.

use std::time::Duration;

use crate::config::model::Codec;
use crate::media::relay::{Leg as RelaySide, Silent};
use crate::media::sdp::{Direction, Sdp};
use crate::observe::metrics::Outcome;
use crate::sip::msg::{self, DialogHeaders, Message, Method, NameAddr, Response, name};
use crate::sip::transport::{Protocol, Target, Zone};

use super::script::*;
use super::*;

#[test]
fn an_answered_call_relays_ringing_and_the_answer_with_the_sdp_on_the_relay() {
    let (mut s, actions) =
        start_with(Some(&offer_sdp(4000, "sendrecv")), Destination::Address(addr(AGENT)));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![100]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Listen { call_id } if call_id == "agent-call@trunkline"))
    );
    let (a, b) = actions
        .iter()
        .find_map(|a| match a {
            Action::StartRelay { a, b, .. } => Some((*a, *b)),
            _ => None,
        })
        .expect("the relay starts before the INVITE");
    assert_eq!((a.to_string(), b.to_string()), ("198.51.100.1".into(), "127.0.0.1".into()));
    assert!(requests_to(&actions, AGENT_LEG).is_empty(), "the INVITE waits for the relay");

    let actions = s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B });
    assert_eq!(
        relay_updates(&actions),
        vec![
            RelayUpdate::Hold(true),
            RelayUpdate::Remote { side: RelaySide::A, remote: Some(addr("192.0.2.10:4000")) },
        ]
    );
    let invite = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(invite.method, Method::Invite);
    assert_eq!(invite.uri, format!("sip:support@{AGENT}"));
    assert_eq!(invite.headers.get("X-Trunkline-Agent-ID"), Some("support"));
    assert_eq!(invite.max_forwards(), Some(69));
    assert_eq!(invite.call_id(), Some("agent-call@trunkline"));
    assert_eq!(media_of(&invite.body).0, addr(&format!("127.0.0.1:{RELAY_B}")));

    let actions = s.agent_responds(&invite, 180, None);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![180]);
    assert_eq!(s.call.leg(CARRIER_LEG).phase, Phase::Early);
    assert_eq!(s.call.leg(AGENT_LEG).phase, Phase::Early);

    s.at(1500);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack]);
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(ok.status, 200);
    assert_eq!(media_of(&ok.body), (addr(&format!("198.51.100.1:{RELAY_A}")), Direction::SendRecv));
    assert!(ok.headers.get(name::CONTACT).unwrap().contains(GATEWAY_A));
    assert!(relay_updates(&actions).contains(&RelayUpdate::Remote {
        side: RelaySide::B,
        remote: Some(addr("127.0.0.1:7078"))
    }));
    assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(false)));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Record(Record::Answered { setup, codec: Some(Codec::Pcmu), .. }) if *setup == Duration::from_millis(1500)
    )));
    assert_eq!(s.call.state(), State::Answered);
    assert_eq!(s.call.leg(CARRIER_LEG).phase, Phase::Confirmed);
    assert_eq!(s.call.leg(AGENT_LEG).phase, Phase::Confirmed);
}

#[test]
fn a_cancel_that_crosses_the_agents_2xx_gets_the_agent_leg_acked_and_hung_up() {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    s.agent_responds(&invite, 180, None);
    let mut cancel = carrier_invite(None);
    cancel.method = Method::Cancel;
    cancel.headers.set(name::CSEQ, "1 CANCEL");
    let actions = s.carrier_sends(cancel);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200, 487]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Cancelled));

    // The agent answered before our CANCEL reached it.
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack, Method::Bye]);
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "the carrier, cancelled, hears nothing more");
    // Its 2xx retransmitted: ACK again, no second BYE.
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack]);
}

#[test]
fn a_cancel_before_any_provisional_waits_for_one_before_cancelling_the_agent() {
    let (mut s, invite, _) = inviting(None);
    let mut cancel = carrier_invite(None);
    cancel.method = Method::Cancel;
    cancel.headers.set(name::CSEQ, "1 CANCEL");
    let actions = s.carrier_sends(cancel);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200, 487]);
    assert!(
        methods(&actions, AGENT_LEG).is_empty(),
        "no CANCEL before a provisional (RFC 3261 §9.1)"
    );
    let actions = s.agent_responds(&invite, 100, None);
    assert!(methods(&actions, AGENT_LEG).is_empty());
    let actions = s.agent_responds(&invite, 180, None);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
    assert!(sent(&actions, CARRIER_LEG).is_empty());
    let actions = s.agent_responds(&invite, 487, None);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack], "the 487 is acknowledged");
    assert_eq!(s.call.leg(AGENT_LEG).phase, Phase::Terminated);
}

#[test]
fn a_cancel_for_another_invite_gets_481() {
    let (mut s, _, _) = inviting(None);
    let mut cancel = carrier_invite(None);
    cancel.method = Method::Cancel;
    cancel.headers.set(name::CSEQ, "1 CANCEL");
    cancel.headers.set(name::VIA, format!("SIP/2.0/UDP {CARRIER};branch=z9hG4bKother"));
    let actions = s.carrier_sends(cancel);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![481]);
    assert_eq!(s.call.state(), State::Setup);
}

#[test]
fn bye_from_the_carrier_after_the_answer_hangs_up_the_agent() {
    let (mut s, _, ok) = answered();
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKbye"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    let bye = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(bye.method, Method::Bye);
    assert!(bye.headers.get(name::TO).unwrap().contains("tag=agenttag"));
    let e = ended(&actions).unwrap();
    assert_eq!((e.outcome, e.reason), (Some(Outcome::Answered), None));
    assert_eq!(e.hung_up_by, Some(Role::Carrier), "the carrier hung up");
}

#[test]
fn bye_from_the_agent_after_the_answer_hangs_up_the_carrier() {
    let (mut s, invite, _) = answered();
    let actions = s.agent_sends(in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKagentbye"));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    let bye = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri, format!("sip:carrier@{CARRIER}"), "to the carrier's Contact");
    assert!(bye.headers.get(name::FROM).unwrap().contains("tag="));
    assert!(bye.headers.get(name::TO).unwrap().contains("tag=c1"));
    assert!(ended(&actions).is_some());
    // The carrier's 200 ends our BYE's transaction; the call is then done at once.
    s.carrier_responds(&bye, 200, None);
    let later = s.call.next_deadline().unwrap();
    s.call.on_timer(later);
    assert!(s.call.is_done(later + Duration::from_secs(33)));
}

#[test]
fn bye_from_the_carrier_while_the_agent_rings_cancels_the_agent() {
    let (mut s, invite, _) = inviting(None);
    let actions = s.agent_responds(&invite, 180, None);
    // The early dialog our 180 made (RFC 3261 §15): its To tag is ours.
    let ringing = responses_to(&actions, CARRIER_LEG).remove(0);
    let mut bye = carrier_invite(None);
    bye.method = Method::Bye;
    bye.headers.set(name::TO, ringing.headers.get(name::TO).unwrap());
    bye.headers.set(name::CSEQ, "2 BYE");
    bye.headers.set(name::VIA, format!("SIP/2.0/UDP {CARRIER};branch=z9hG4bKearlybye"));
    let actions = s.carrier_sends(bye);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200, 487]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Cancelled));
}

#[test]
fn bye_from_the_agent_while_it_rings_gives_the_carrier_480() {
    let (mut s, invite, _) = inviting(None);
    s.agent_responds(&invite, 180, None);
    let actions = s.agent_sends(in_dialog_from_agent(&invite, "BYE", 1, "z9hG4bKagentearly"));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![480]);
    assert!(methods(&actions, AGENT_LEG).is_empty(), "nothing more to the agent that left");
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Failed));
}

#[test]
fn the_2xx_to_the_carrier_is_retransmitted_until_its_ack() {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    // T1, then 2·T1 later (RFC 3261 §13.3.1.4).
    assert_eq!(statuses(&s.timer(500), CARRIER_LEG), vec![200]);
    assert!(statuses(&s.timer(1000), CARRIER_LEG).is_empty());
    assert_eq!(statuses(&s.timer(1500), CARRIER_LEG), vec![200]);
    s.carrier_sends(ack_for(&ok, 1));
    assert!(statuses(&s.timer(3500), CARRIER_LEG).is_empty(), "no more after the ACK");
    assert!(statuses(&s.timer(40_000), CARRIER_LEG).is_empty());
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_2xx_never_acknowledged_ends_the_call_on_both_legs_after_64_t1() {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let mut actions = Vec::new();
    let mut t = 0;
    while t < 33_000 {
        t += 250;
        actions = s.timer(t);
        if ended(&actions).is_some() {
            break;
        }
    }
    assert_eq!(t, 32_000, "gave up at 64·T1");
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
}

#[test]
fn a_reinvite_before_the_answer_is_glare_and_gets_491() {
    let (mut s, invite, _) = inviting(None);
    let actions = s.agent_responds(&invite, 180, None);
    let ringing = responses_to(&actions, CARRIER_LEG).remove(0);
    let reinvite = in_dialog_from_carrier(&ringing, "INVITE", 2, "z9hG4bKglare");
    let actions = s.carrier_sends(reinvite);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![491]);
    assert!(methods(&actions, AGENT_LEG).is_empty());
    assert_eq!(s.call.state(), State::Setup);
}

#[test]
fn a_reinvite_is_relayed_both_ways_with_the_sdp_on_the_relay_and_hold_suspends_the_timeout() {
    let (mut s, invite, ok) = answered();
    // The carrier puts the call on hold.
    let hold = with_body(
        in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKhold"),
        Some(&offer_sdp(4002, "sendonly")),
    );
    let actions = s.carrier_sends(hold);
    assert!(statuses(&actions, CARRIER_LEG).is_empty(), "answered when the agent answers");
    let relayed = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(relayed.method, Method::Invite);
    assert_eq!(relayed.uri, format!("sip:support@{AGENT}"), "to the agent's Contact");
    assert_eq!(relayed.cseq().map(|(n, _)| n), Some(2));
    assert_eq!(
        media_of(&relayed.body),
        (addr(&format!("127.0.0.1:{RELAY_B}")), Direction::SendOnly)
    );
    let updates = relay_updates(&actions);
    assert!(updates.contains(&RelayUpdate::Hold(true)));
    assert!(updates.contains(&RelayUpdate::Remote {
        side: RelaySide::A,
        remote: Some(addr("192.0.2.10:4002"))
    }));

    let actions = s.agent_responds(&relayed, 200, Some(&answer_sdp(7080, "recvonly")));
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack]);
    let answer = responses_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(answer.status, 200);
    assert_eq!(
        media_of(&answer.body),
        (addr(&format!("198.51.100.1:{RELAY_A}")), Direction::RecvOnly)
    );
    assert!(relay_updates(&actions).contains(&RelayUpdate::Remote {
        side: RelaySide::B,
        remote: Some(addr("127.0.0.1:7080"))
    }));

    // The agent resumes: its re-INVITE reaches the carrier.
    let resume = with_body(
        in_dialog_from_agent(&invite, "INVITE", 1, "z9hG4bKresume"),
        Some(&answer_sdp(7082, "sendrecv").replace("RTP/AVP 0", "RTP/AVP 0 101")),
    );
    let actions = s.agent_sends(resume);
    assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(false)));
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(to_carrier.method, Method::Invite);
    assert_eq!(media_of(&to_carrier.body).0, addr(&format!("198.51.100.1:{RELAY_A}")));
    let actions = s.carrier_responds(&to_carrier, 200, Some(&offer_sdp(4004, "sendrecv")));
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Ack]);
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
}

#[test]
fn a_reinvite_offering_no_allowed_codec_gets_488_and_nothing_is_relayed() {
    let (mut s, _, ok) = answered();
    let g729 = offer_sdp(4002, "sendrecv")
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000");
    let actions = s.carrier_sends(with_body(
        in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKg729"),
        Some(&g729),
    ));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![488]);
    assert!(sent(&actions, AGENT_LEG).is_empty());
}

#[test]
fn an_agent_ringing_past_the_ring_timeout_is_cancelled_and_the_carrier_gets_480() {
    let (mut s, invite, _) = inviting(None);
    s.at(100);
    s.agent_responds(&invite, 180, None);
    assert!(sent(&s.timer(20_000), CARRIER_LEG).is_empty());
    let actions = s.timer(20_100);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![480]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::NoAnswer));
}

#[test]
fn an_agent_that_never_answers_gets_the_carrier_503_after_the_first_response_time() {
    let (mut s, _, _) = inviting(None);
    // UDP: our INVITE is retransmitted meanwhile.
    assert_eq!(methods(&s.timer(500), AGENT_LEG), vec![Method::Invite]);
    assert!(statuses(&s.timer(7_900), CARRIER_LEG).is_empty());
    let actions = s.timer(8_000);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![503]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Failed));
    // No retransmission to the agent after it was given up.
    let later = s.timer(9_000);
    assert!(methods(&later, AGENT_LEG).is_empty());
}

#[test]
fn agent_failures_are_mapped_for_the_carrier() {
    for (agent, carrier, outcome) in [
        (486, 486, Outcome::Busy),
        (600, 486, Outcome::Busy),
        (500, 503, Outcome::Failed),
        (407, 503, Outcome::Failed),
        (404, 404, Outcome::Failed),
        (408, 480, Outcome::NoAnswer),
    ] {
        let (mut s, invite, _) = inviting(None);
        let actions = s.agent_responds(&invite, agent, None);
        assert_eq!(statuses(&actions, CARRIER_LEG), vec![carrier], "agent {agent}");
        assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack], "agent {agent}");
        assert_eq!(ended(&actions).unwrap().outcome, Some(outcome), "agent {agent}");
    }
}

#[test]
fn an_answered_call_without_rtp_is_hung_up_with_the_reason_recorded() {
    let (mut s, _, _) = answered();
    let event =
        MediaEvent::Timeout { silent: Silent::One(RelaySide::B), after: Duration::from_secs(30) };
    let actions = s.call.on_media_event(s.now, event);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).unwrap();
    assert_eq!(e.reason.as_deref(), Some("media timeout: no RTP from agent for 30s"));
    assert_eq!(e.outcome, Some(Outcome::Answered));
}

#[test]
fn an_answered_call_is_hung_up_on_both_legs_at_its_trunks_maximum_duration() {
    let (mut s, _, _) =
        answered_adjusted(|setup, _| setup.max_duration = Some(Duration::from_secs(60)));
    // The driver is woken by then at the latest (transaction timers may come earlier).
    assert!(s.call.next_deadline().is_some_and(|d| d <= s.t0 + Duration::from_secs(60)));
    s.timer(40_000);
    let actions = s.timer(59_999);
    assert!(methods(&actions, CARRIER_LEG).is_empty() && ended(&actions).is_none());
    let actions = s.timer(60_000);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).unwrap();
    assert_eq!(e.reason.as_deref(), Some("maximum call duration reached (60 s)"));
    assert_eq!((e.outcome, e.hung_up_by), (Some(Outcome::Answered), None));
}

#[test]
fn the_gateways_ceiling_and_the_trunks_limit_the_shorter_wins() {
    let secs = |n| Some(Duration::from_secs(n));
    assert_eq!(shorter(secs(14_400), secs(60)), secs(60));
    assert_eq!(shorter(secs(30), secs(60)), secs(30));
    assert_eq!(shorter(None, secs(60)), secs(60));
    assert_eq!(shorter(secs(14_400), None), secs(14_400));
    assert_eq!(shorter(None, None), None);
    // Without a limit an answered call has no deadline of its own once its transactions end.
    let (mut s, _, _) = answered();
    s.timer(40_000);
    assert_eq!(s.call.next_deadline(), None);
}

const ASKS_TIMER: &[(&str, &str)] = &[("Supported", "timer"), ("Session-Expires", "90")];

/// The carrier's INVITE with `headers` too.
fn asking(setup: &mut Setup, headers: &[(&str, &str)]) {
    for (n, v) in headers {
        setup.origin.invite.headers.push(n, *v);
    }
}

#[test]
fn a_carrier_asking_for_session_timers_refreshes_and_one_that_stops_is_hung_up() {
    let (mut s, _, ok) = answered_adjusted(|setup, _| asking(setup, ASKS_TIMER));
    // The 2xx names the carrier as refresher and requires the extension (RFC 4028 §9).
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    // A refresh (UPDATE) at 40 s, relayed and accepted: the session runs another interval.
    s.at(40_000);
    let update = in_dialog_from_carrier(&ok, "UPDATE", 2, "z9hG4bKrefresh1");
    let actions = s.carrier_sends(update);
    let relayed = requests_to(&actions, AGENT_LEG).into_iter().next().expect("relayed UPDATE");
    let actions = s.agent_responds(&relayed, 200, None);
    let answer = responses_to(&actions, CARRIER_LEG).into_iter().next().expect("the 200");
    assert_eq!(answer.headers.get("Session-Expires"), Some("90;refresher=uac"));
    // Without the refresh the session would have ended at 60 s (90 - 30).
    let actions = s.timer(61_000);
    assert!(ended(&actions).is_none(), "refreshed at 40 s: over at 100 s, not 60 s");
    let actions = s.timer(99_999);
    assert!(ended(&actions).is_none());
    let actions = s.timer(100_000);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).unwrap();
    assert_eq!(e.reason.as_deref(), Some("session timer expired: no refresh from carrier in 90 s"));
}

#[test]
fn the_agent_is_asked_to_refresh_and_is_hung_up_when_it_stops() {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    assert_eq!(invite.headers.get("Session-Expires"), Some("1800;refresher=uas"));
    assert!(invite.headers.get_all("Supported").any(|v| v.contains("timer")));
    s.agent_responds(&invite, 180, None);
    // The agent takes the session timer: it refreshes every 1800 s.
    let mut ok = Response::to_request(&invite, 200, "OK", Some("agenttag"));
    ok.headers.push(name::CONTACT, format!("<sip:support@{AGENT}>"));
    ok.headers.push("Session-Expires", "1800;refresher=uas");
    ok.headers.push(name::CONTENT_TYPE, "application/sdp");
    ok.body = answer_sdp(7078, "sendrecv").into_bytes().into();
    let actions = s.deliver(AGENT_LEG, Message::Response(ok));
    let to_carrier = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200);
    let to_carrier = to_carrier.expect("the 200 to the carrier");
    s.carrier_sends(ack_for(&to_carrier, 1));
    // No refresh from the agent: over at 1800 - 32 s.
    assert!(ended(&s.timer(1_767_000)).is_none());
    let actions = s.timer(1_768_000);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).unwrap();
    assert_eq!(e.reason.as_deref(), Some("session timer expired: no refresh from agent in 1800 s"));
}

#[test]
fn no_session_timer_without_the_carriers_support() {
    let (mut s, _, ok) = answered_adjusted(|setup, _| asking(setup, &[("Session-Expires", "90")]));
    assert_eq!(ok.headers.get("Session-Expires"), None);
    assert_eq!(ok.headers.get("Require"), None);
    assert!(ended(&s.timer(600_000)).is_none());
}

#[test]
fn a_media_timeout_before_the_answer_changes_nothing() {
    let (mut s, _, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    let event = MediaEvent::Timeout { silent: Silent::Both, after: Duration::from_secs(30) };
    assert!(s.call.on_media_event(s.now, event).is_empty());
    assert_eq!(s.call.state(), State::Setup);
}

#[test]
fn no_relay_ports_refuses_the_call_with_the_relays_status() {
    let (mut s, actions) =
        start_with(Some(&offer_sdp(4000, "sendrecv")), Destination::Address(addr(AGENT)));
    assert!(actions.iter().any(|a| matches!(a, Action::StartRelay { .. })));
    let failed = MediaEvent::StartFailed { status: 503, reason: "no RTP ports left".into() };
    let actions = s.call.on_media_event(s.now, failed);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![503]);
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert!(ended(&actions).is_some());
}

#[test]
fn a_host_name_is_looked_up_and_a_failed_lookup_is_503() {
    let host = Destination::Lookup { host: "agents.internal".into(), port: 5060 };
    let (mut s, actions) = start_with(None, host);
    let (leg, name) = actions
        .iter()
        .find_map(|a| match a {
            Action::Resolve { leg, host, port } => Some((*leg, format!("{host}:{port}"))),
            _ => None,
        })
        .unwrap();
    assert_eq!((leg, name.as_str()), (AGENT_LEG, "agents.internal:5060"));
    let actions = s.call.on_resolved(s.now, leg, Err("agents.internal: no address".into()));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![503]);

    let host = Destination::Lookup { host: "agents.internal".into(), port: 5060 };
    let (mut s, _) = start_with(None, host);
    let actions = s.call.on_resolved(s.now, AGENT_LEG, Ok(addr(AGENT)));
    assert!(matches!(&actions[..], [Action::Listen { .. }, Action::StartRelay { .. }]));
    let actions = s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B });
    let invite = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(invite.method, Method::Invite);
    assert!(invite.uri.contains(AGENT));
}

#[test]
fn a_delayed_offer_gets_the_gateways_offer_in_the_2xx_and_an_ack_without_answer_ends_the_call() {
    let (mut s, invite, _) = inviting(None);
    assert_eq!(media_of(&invite.body).0, addr(&format!("127.0.0.1:{RELAY_B}")));
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(media_of(&ok.body).0, addr(&format!("198.51.100.1:{RELAY_A}")));
    let actions = s.carrier_sends(ack_for(&ok, 1));
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let reason = ended(&actions).unwrap().reason.unwrap();
    assert!(reason.contains("did not answer the gateway's offer"), "{reason}");
}

#[test]
fn a_delayed_offers_answer_in_the_ack_tells_the_relay_where_the_carrier_is() {
    let (mut s, invite, _) = inviting(None);
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ok = responses_to(&actions, CARRIER_LEG).remove(0);
    // The answer holds what the 2xx offered (the agent's choice, PCMU without DTMF).
    let answer = answer_sdp(4000, "sendrecv").replace("127.0.0.1", "192.0.2.10");
    let actions = s.carrier_sends(with_body(ack_for(&ok, 1), Some(&answer)));
    assert!(sent(&actions, AGENT_LEG).is_empty() && sent(&actions, CARRIER_LEG).is_empty());
    assert!(relay_updates(&actions).contains(&RelayUpdate::Remote {
        side: RelaySide::A,
        remote: Some(addr("192.0.2.10:4000"))
    }));
    assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(false)));
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn requests_outside_the_calls_dialogs_get_481_and_options_in_it_200() {
    let (mut s, _, ok) = answered();
    let mut stray = in_dialog_from_carrier(&ok, "BYE", 3, "z9hG4bKstray");
    stray.headers.set(name::FROM, "<sip:+12025550123@192.0.2.10>;tag=someone-else");
    assert_eq!(statuses(&s.carrier_sends(stray), CARRIER_LEG), vec![481]);
    let options = in_dialog_from_carrier(&ok, "OPTIONS", 3, "z9hG4bKoptions");
    assert_eq!(statuses(&s.carrier_sends(options), CARRIER_LEG), vec![200]);
    // The carrier side can never transfer (see the transfer tests).
    let refer = in_dialog_from_carrier(&ok, "REFER", 4, "z9hG4bKrefer");
    assert_eq!(statuses(&s.carrier_sends(refer), CARRIER_LEG), vec![403]);
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_retransmitted_invite_gets_the_last_response_again() {
    let (mut s, invite, _) = inviting(None);
    s.agent_responds(&invite, 180, None);
    let actions = s.carrier_sends(carrier_invite(None));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![180]);
    assert!(sent(&actions, AGENT_LEG).is_empty());
}

#[test]
fn the_call_is_done_after_the_linger_once_ended() {
    let (mut s, invite, _) = inviting(None);
    let actions = s.agent_responds(&invite, 486, None);
    assert!(ended(&actions).is_some());
    assert!(!s.call.is_done(s.now));
    assert!(s.call.is_done(s.now + LINGER));
}

fn credentials(password: &str) -> crate::config::secret::BasicAuth {
    crate::config::secret::BasicAuth {
        username: "acct-7".into(),
        password: crate::config::secret::Password::new(password),
    }
}

/// The dialed INVITE of a call whose dialed leg has credentials (no SDP: no relay to wait for).
fn inviting_with_credentials() -> (Script, Request) {
    let (s, actions) = start_with_credentials(
        None,
        Destination::Address(addr(AGENT)),
        Some(credentials("s3cret")),
    );
    let (mut s, actions) = {
        let mut s = s;
        let more = if actions.iter().any(|a| matches!(a, Action::StartRelay { .. })) {
            s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B })
        } else {
            actions
        };
        (s, more)
    };
    s.at(0);
    let invite = requests_to(&actions, AGENT_LEG).remove(0);
    (s, invite)
}

#[test]
fn a_challenge_is_answered_once_with_the_legs_credentials_in_the_same_dialog() {
    use crate::sip::digest::{Credentials, DigestServer, NonceKey, Verification};
    let server =
        DigestServer::new("carrier", NonceKey::from_bytes([9; 32]), Duration::from_secs(60));
    let (mut s, invite) = inviting_with_credentials();
    assert!(invite.headers.get(name::AUTHORIZATION).is_none(), "no credentials until asked");
    let challenge = server.challenge(1_000, false).remove(0);
    let actions = s.agent_challenges(&invite, 401, &challenge);
    // The 401 is ACKed by its transaction and the INVITE goes again, answered.
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack, Method::Invite]);
    assert!(responses_to(&actions, CARRIER_LEG).is_empty(), "the origin hears nothing of it");
    let again = requests_to(&actions, AGENT_LEG).remove(1);
    assert_eq!(again.call_id(), invite.call_id());
    assert_eq!(again.from().unwrap().tag(), invite.from().unwrap().tag());
    assert_eq!(again.to().unwrap().tag(), None, "the challenge's To tag made no dialog");
    assert_eq!(again.cseq().unwrap().0, invite.cseq().unwrap().0 + 1);
    assert_ne!(again.top_via().unwrap().branch, invite.top_via().unwrap().branch);
    let answer = Credentials::parse(again.headers.get(name::AUTHORIZATION).unwrap()).unwrap();
    assert_eq!(answer.username, "acct-7");
    assert_eq!(answer.uri, invite.uri);
    assert_eq!(server.verify(&answer, "INVITE", "s3cret", 1_001), Verification::Valid);
    assert!(!format!("{:?}", s.call.leg(AGENT_LEG)).contains("s3cret"), "no password in Debug");

    // The answered INVITE is the one that completes the call.
    let actions = s.agent_responds(&again, 200, None);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_second_challenge_after_our_answer_refuses_the_call_with_403_and_says_why() {
    let (mut s, invite) = inviting_with_credentials();
    let challenge = "Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\"";
    let actions = s.agent_challenges(&invite, 407, challenge);
    let again = requests_to(&actions, AGENT_LEG).remove(1);
    assert!(
        again.headers.get(name::PROXY_AUTHORIZATION).is_some(),
        "407 is answered by Proxy-Authorization"
    );
    let actions =
        s.agent_challenges(&again, 407, "Digest realm=\"carrier\", nonce=\"n2\", qop=\"auth\"");
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack], "no third INVITE");
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![403]);
    let refused = actions.iter().find_map(|a| match a {
        Action::Record(Record::AuthRefused { reason, .. }) => Some(reason.clone()),
        _ => None,
    });
    assert!(refused.unwrap().contains("wrong credentials for username \"acct-7\""));
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Failed));
}

#[test]
fn a_stale_nonce_is_answered_once_more_and_no_more() {
    let (mut s, invite) = inviting_with_credentials();
    let actions = s.agent_challenges(&invite, 401, "Digest realm=\"c\", nonce=\"n1\"");
    let second = requests_to(&actions, AGENT_LEG).remove(1);
    let stale = "Digest realm=\"c\", nonce=\"n2\", stale=true";
    let actions = s.agent_challenges(&second, 401, stale);
    let third = requests_to(&actions, AGENT_LEG).remove(1);
    assert!(third.headers.get(name::AUTHORIZATION).unwrap().contains("nonce=\"n2\""));
    let actions = s.agent_challenges(&third, 401, "Digest realm=\"c\", nonce=\"n3\", stale=true");
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![403]);
}

#[test]
fn a_challenge_to_a_leg_without_credentials_is_a_failure_of_the_peer_as_before() {
    let (mut s, invite, _) = inviting(None);
    let actions = s.agent_challenges(&invite, 401, "Digest realm=\"c\", nonce=\"n1\"");
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![503]);
    assert!(actions.iter().any(|a| matches!(a, Action::Record(Record::AuthRefused { .. }))));
}

/// A call the gateway places: carrier first (leg 0), then the agent (leg 1).
fn placed() -> (Script, Request) {
    let codecs = vec![Codec::Pcmu, Codec::Pcma];
    let (sdp, negotiated) = crate::media::codec::gateway_offer(&codecs).unwrap();
    let dialog = |call_id: &str, local: &str, remote: &str, zone| Dialog {
        call_id: call_id.into(),
        local_tag: "gw".into(),
        remote_tag: None,
        local_uri: NameAddrOf(format!("sip:+14155550100@{local}")).into(),
        remote_uri: NameAddrOf(remote.to_string()).into(),
        remote_target: remote.into(),
        route_set: vec![],
        local_cseq: 0,
        target: crate::sip::transport::Target {
            protocol: crate::sip::transport::Protocol::Udp,
            zone,
            remote: addr(local),
            connection: None,
        },
        local: addr(local),
    };
    use crate::sip::transport::Zone;
    let first = Dial {
        role: Role::Carrier,
        dialog: dialog(
            "carrier-leg@gw",
            GATEWAY_A,
            &format!("sip:+14155550142@{CARRIER}"),
            Zone::Carrier,
        ),
        destination: Destination::Address(addr(CARRIER)),
        headers: vec![],
        credentials: None,
        alternates: Vec::new(),
        encryption: Encryption::Disabled,
    };
    let then = Dial {
        role: Role::Agent,
        dialog: dialog("agent-leg@gw", GATEWAY_B, &format!("sip:support@{AGENT}"), Zone::Internal),
        destination: Destination::Address(addr(AGENT)),
        headers: vec![("X-Trunkline-Agent-ID".into(), "support".into())],
        credentials: None,
        alternates: Vec::new(),
        encryption: Encryption::Disabled,
    };
    let placed = Placed {
        session_id: "api-1".into(),
        first,
        then,
        offer: MediaOffer { sdp, negotiated, delayed: false },
        codecs,
        transfer: None,
        max_duration: None,
    };
    let t0 = std::time::Instant::now();
    let (call, actions) = Call::place(t0, CallConfig::default(), Ids::seeded(3), placed);
    assert!(actions.iter().any(|a| matches!(a, Action::StartRelay { .. })), "the relay first");
    assert!(requests_to(&actions, CARRIER_LEG).is_empty(), "the INVITE waits for the relay");
    let mut s = Script { call, t0, now: t0 };
    let actions = s.call.on_media_event(s.now, MediaEvent::Started { a: RELAY_A, b: RELAY_B });
    let invite = requests_to(&actions, CARRIER_LEG).remove(0);
    assert!(requests_to(&actions, AGENT_LEG).is_empty(), "the agent waits for the carrier");
    (s, invite)
}

struct NameAddrOf(String);

impl From<NameAddrOf> for crate::sip::msg::NameAddr {
    fn from(uri: NameAddrOf) -> Self {
        crate::sip::msg::NameAddr { display: None, uri: uri.0, params: vec![] }
    }
}

fn respond_tagged(
    s: &mut Script,
    leg: LegId,
    to: &Request,
    status: u16,
    sdp: Option<&str>,
) -> Vec<Action> {
    let mut r = crate::sip::msg::Response::to_request(
        to,
        status,
        crate::sip::msg::reason_phrase(status),
        Some("peertag"),
    );
    r.headers.push(
        name::CONTACT,
        format!("<sip:peer@{}>", if leg == CARRIER_LEG { CARRIER } else { AGENT }),
    );
    if let Some(sdp) = sdp {
        r.headers.push(name::CONTENT_TYPE, "application/sdp");
        r.body = sdp.as_bytes().to_vec().into();
    }
    s.deliver(leg, crate::sip::msg::Message::Response(r))
}

fn pcma_answer(port: u16) -> String {
    format!(
        "v=0\r\no=- 7 7 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
}

#[test]
fn a_placed_call_dials_the_carrier_then_the_agent_with_the_codec_the_carrier_chose() {
    let (mut s, invite) = placed();
    assert_eq!(invite.uri, format!("sip:+14155550142@{CARRIER}"));
    let (media, _) = media_of(&invite.body);
    assert_eq!(media, addr(&format!("198.51.100.1:{RELAY_A}")), "the carrier is offered side A");
    let body = String::from_utf8_lossy(&invite.body).to_string();
    assert!(body.contains("RTP/AVP 0 8"), "the trunk's codecs: {body}");

    let actions = respond_tagged(&mut s, CARRIER_LEG, &invite, 180, None);
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert_eq!(s.call.leg(CARRIER_LEG).phase, Phase::Early);
    s.at(2000);
    let actions = respond_tagged(&mut s, CARRIER_LEG, &invite, 200, Some(&pcma_answer(5004)));
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Ack]);
    assert_eq!(
        relay_updates(&actions),
        vec![
            RelayUpdate::Remote { side: RelaySide::A, remote: Some(addr("192.0.2.10:5004")) },
            RelayUpdate::Hold(false),
            RelayUpdate::Hold(true),
        ],
        "the carrier's media is known; none is owed until the agent answers"
    );
    let agent_invite = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(agent_invite.headers.get("X-Trunkline-Agent-ID"), Some("support"));
    let offer = String::from_utf8_lossy(&agent_invite.body).to_string();
    assert!(offer.contains("m=audio 30002 RTP/AVP 8 "), "PCMA alone, on side B: {offer}");
    assert!(!offer.contains("PCMU"), "{offer}");
    assert_eq!(s.call.state(), State::Setup);

    let actions = respond_tagged(
        &mut s,
        AGENT_LEG,
        &agent_invite,
        200,
        Some(&pcma_answer(7078).replace("192.0.2.10", "127.0.0.1")),
    );
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Ack]);
    assert_eq!(s.call.state(), State::Answered);
    assert!(relay_updates(&actions).contains(&RelayUpdate::Hold(false)));
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "no re-INVITE toward the carrier");

    // The API hangs it up: BYE on both legs.
    let actions = s.call.hang_up(s.now, "hung up through the call API");
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    assert_eq!(ended(&actions).unwrap().reason.as_deref(), Some("hung up through the call API"));
}

#[test]
fn a_placed_call_whose_agent_is_busy_hangs_up_the_carrier() {
    let (mut s, invite) = placed();
    let actions = respond_tagged(&mut s, CARRIER_LEG, &invite, 200, Some(&pcma_answer(5004)));
    let agent_invite = requests_to(&actions, AGENT_LEG).remove(0);
    let actions = respond_tagged(&mut s, AGENT_LEG, &agent_invite, 486, None);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Busy));
}

#[test]
fn a_placed_call_hung_up_while_the_carrier_rings_is_cancelled() {
    let (mut s, invite) = placed();
    respond_tagged(&mut s, CARRIER_LEG, &invite, 180, None);
    let actions = s.call.hang_up(s.now, "hung up through the call API");
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Cancel]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Cancelled));
    assert!(sent(&actions, AGENT_LEG).is_empty(), "the agent was never called");
}

#[test]
fn a_placed_call_whose_carrier_hangs_up_before_the_agent_answers_cancels_the_agent() {
    let (mut s, invite) = placed();
    let actions = respond_tagged(&mut s, CARRIER_LEG, &invite, 200, Some(&pcma_answer(5004)));
    let agent_invite = requests_to(&actions, AGENT_LEG).remove(0);
    respond_tagged(&mut s, AGENT_LEG, &agent_invite, 180, None);
    let bye = request(&format!(
        "BYE sip:+14155550100@{GATEWAY_A} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER};branch=z9hG4bKbye1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+14155550142@{CARRIER}>;tag=peertag\r\n\
         To: <sip:+14155550100@{GATEWAY_A}>;tag=gw\r\nCall-ID: carrier-leg@gw\r\nCSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let actions = s.carrier_sends(bye);
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert_eq!(methods(&actions, CARRIER_LEG), Vec::<Method>::new(), "no BYE back to the carrier");
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Cancel]);
}

fn refer(invite: &Request, refer_to: &str, cseq: u32) -> Request {
    let mut r = in_dialog_from_agent(invite, "REFER", cseq, &format!("z9hG4bKrefer{cseq}"));
    r.headers.push("Refer-To", refer_to);
    r
}

fn transfers(actions: &[Action]) -> Vec<TransferRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(Record::Transfer(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refer_to_a_hangup_destination_is_accepted_notified_and_ends_both_legs() {
    let (mut s, invite, _) = answered();
    let actions = s.agent_sends(refer(&invite, "<sip:end-call@gateway.invalid>", 2));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![202]);
    let notify = requests_to(&actions, AGENT_LEG)
        .into_iter()
        .find(|r| r.method == Method::Notify)
        .expect("a NOTIFY to the agent");
    assert_eq!(notify.headers.get("Event"), Some("refer"));
    assert!(notify.headers.get("Subscription-State").unwrap().starts_with("terminated"));
    assert_eq!(notify.headers.get(name::CONTENT_TYPE), Some("message/sipfrag;version=2.0"));
    assert_eq!(&notify.body[..], b"SIP/2.0 200 OK\r\n");
    let bye = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(bye.method, Method::Bye);
    assert!(bye.headers.get("Reason").unwrap().starts_with("SIP;cause=200"));
    assert!(methods(&actions, AGENT_LEG).contains(&Method::Bye));
    // The NOTIFY comes before the agent's BYE.
    let agent_methods = methods(&actions, AGENT_LEG);
    let at = |m: Method| agent_methods.iter().position(|x| *x == m).unwrap();
    assert!(at(Method::Notify) < at(Method::Bye));
    let records = transfers(&actions);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (record.destination.as_str(), record.mode, record.outcome),
        ("voice/end-call", "Hangup", "completed")
    );
    assert_eq!(record.status, Some(200));
    assert_eq!(s.call.transfers(), &records[..], "the call keeps it for its record");
    assert_eq!(s.call.state(), State::Ended);
}

#[test]
fn a_transfer_the_agent_may_not_make_is_403_naming_the_rule_and_the_call_stays_up() {
    let (mut s, invite, _) = answered();
    for (n, (target, status, rule)) in [
        ("<sip:sales-desk@x>", 403, "TransferAgentNotAllowed"),
        ("<tel:+19005550100>", 403, "TransferNotADestination"),
        ("<sip:nobody@x>", 403, "TransferNotADestination"),
    ]
    .into_iter()
    .enumerate()
    {
        let actions = s.agent_sends(refer(&invite, target, 2 + n as u32));
        let answer = responses_to(&actions, AGENT_LEG).remove(0);
        assert_eq!(answer.status, status, "{target}");
        assert!(answer.headers.get(name::WARNING).unwrap().contains(rule), "{target}");
        assert!(sent(&actions, CARRIER_LEG).is_empty(), "{target}: the caller heard something");
    }
    assert_eq!(s.call.state(), State::Answered);
    let refused = s.call.transfers().iter().map(|t| (t.outcome, t.status)).collect::<Vec<_>>();
    assert_eq!(refused, vec![("refused", Some(403)); 3]);
}

#[test]
fn the_carrier_side_can_never_transfer() {
    let (mut s, _, ok) = answered();
    let mut r = in_dialog_from_carrier(&ok, "REFER", 2, "z9hG4bKcarrierrefer");
    r.headers.push("Refer-To", "<sip:end-call@x>");
    let actions = s.carrier_sends(r);
    let answer = responses_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(answer.status, 403);
    assert!(answer.headers.get(name::WARNING).unwrap().contains("TransferFromCarrier"));
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_bye_naming_a_hangup_destination_ends_the_callers_leg_with_a_reason() {
    let (mut s, invite, _) = answered();
    let mut bye = in_dialog_from_agent(&invite, "BYE", 2, "z9hG4bKbyexfer");
    bye.headers.push("X-Trunkline-Transfer-To", "end-call");
    let actions = s.agent_sends(bye);
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(to_carrier.method, Method::Bye);
    assert!(to_carrier.headers.get("Reason").is_some());
    assert!(!methods(&actions, AGENT_LEG).contains(&Method::Bye), "the agent left already");
    assert_eq!(s.call.state(), State::Ended);
}

fn carrier_notify(
    ok: &crate::sip::msg::Response,
    cseq: u32,
    sipfrag: &str,
    state: &str,
) -> Request {
    let mut r = in_dialog_from_carrier(ok, "NOTIFY", cseq, &format!("z9hG4bKnotify{cseq}"));
    r.headers.push("Event", "refer");
    r.headers.push("Subscription-State", state);
    r.headers.set(name::CONTENT_TYPE, "message/sipfrag;version=2.0");
    r.body = format!("{sipfrag}\r\n").into_bytes().into();
    r
}

fn notifies_to_agent(actions: &[Action]) -> Vec<(String, String)> {
    requests_to(actions, AGENT_LEG)
        .into_iter()
        .filter(|r| r.method == Method::Notify)
        .map(|r| {
            let state = r.headers.get("Subscription-State").unwrap_or_default().to_string();
            (String::from_utf8_lossy(&r.body).trim().to_string(), state)
        })
        .collect()
}

#[test]
fn a_refer_mode_transfer_is_passed_to_the_caller_and_its_progress_relayed_to_the_agent() {
    let (mut s, invite, ok) = answered();
    let mut agent_refer = refer(&invite, "<sip:front-desk@x>", 2);
    agent_refer.headers.push("Referred-By", "<sip:support@agents>");
    agent_refer.headers.push("X-Trunkline-Agent-ID", "forged");
    agent_refer.headers.push("X-Ticket", "T-42");
    let actions = s.agent_sends(agent_refer);
    assert_eq!(statuses(&actions, AGENT_LEG), vec![202]);
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 100 Trying".into(), "active;expires=60".into())]
    );
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(to_carrier.method, Method::Refer);
    assert_eq!(
        to_carrier.headers.get("Refer-To"),
        Some("<sip:+14155550188@192.0.2.10:5060;user=phone>")
    );
    assert_eq!(to_carrier.headers.get("Referred-By"), Some("<sip:support@agents>"));
    assert_eq!(to_carrier.headers.get("X-Ticket"), Some("T-42"));
    assert_eq!(to_carrier.headers.get("X-Trunkline-Agent-ID"), None);

    assert!(sent(&s.carrier_responds(&to_carrier, 202, None), AGENT_LEG).is_empty());
    let actions =
        s.carrier_sends(carrier_notify(&ok, 2, "SIP/2.0 180 Ringing", "active;expires=60"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 180 Ringing".into(), "active;expires=60".into())]
    );
    assert_eq!(s.call.state(), State::Answered);

    let actions =
        s.carrier_sends(carrier_notify(&ok, 3, "SIP/2.0 200 OK", "terminated;reason=noresource"));
    assert_eq!(notifies_to_agent(&actions)[0].0, "SIP/2.0 200 OK");
    assert!(notifies_to_agent(&actions)[0].1.starts_with("terminated"));
    assert!(methods(&actions, AGENT_LEG).contains(&Method::Bye));
    assert!(methods(&actions, CARRIER_LEG).contains(&Method::Bye));
    assert_eq!(s.call.state(), State::Ended);
    assert_eq!(transfers(&actions)[0].outcome, "completed");
}

#[test]
fn a_refer_the_caller_refuses_or_that_fails_leaves_the_caller_with_the_agent() {
    let (mut s, invite, ok) = answered();
    let actions = s.agent_sends(refer(&invite, "<sip:front-desk@x>", 2));
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    let actions = s.carrier_responds(&to_carrier, 603, None);
    assert_eq!(notifies_to_agent(&actions)[0].0, "SIP/2.0 603 Decline");
    assert!(notifies_to_agent(&actions)[0].1.starts_with("terminated"));
    assert_eq!(s.call.state(), State::Answered);
    assert_eq!(transfers(&actions)[0].outcome, "failed");

    // Again, accepted this time, and the destination is busy.
    let actions = s.agent_sends(refer(&invite, "<sip:front-desk@x>", 3));
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    s.carrier_responds(&to_carrier, 202, None);
    let actions = s.carrier_sends(carrier_notify(&ok, 2, "SIP/2.0 486 Busy Here", "terminated"));
    assert_eq!(notifies_to_agent(&actions)[0].0, "SIP/2.0 486 Busy Here");
    assert!(methods(&actions, CARRIER_LEG).is_empty(), "no BYE to the caller");
    assert_eq!(s.call.state(), State::Answered);
    // No transfer pending any more: a stray NOTIFY has no subscription.
    let actions = s.carrier_sends(carrier_notify(&ok, 3, "SIP/2.0 200 OK", "terminated"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![481]);
}

// Bridged transfers: the agent transfers to `pbx` (Sip, mode Bridge); the driver's part (the
// leg, its ports) is played by the test.

const TRANSFER_LEG: LegId = LegId(2);
const DESTINATION: &str = "192.0.2.30:5060";
const SPARE: u16 = 30004;

/// The leg the driver would build for `pbx`: from the carrier-facing address, to
/// `destination` (also the transcripts of `media_tests`).
pub(super) fn transfer_dial(
    destination: Destination,
    credentials: Option<crate::config::secret::BasicAuth>,
) -> Dial {
    let uri = "sip:op@pbx.example".to_string();
    Dial {
        role: Role::Transfer,
        dialog: Dialog {
            call_id: "transfer-call@trunkline".into(),
            local_tag: "gwt".into(),
            remote_tag: None,
            local_uri: NameAddr {
                display: None,
                uri: "sip:+12025550123@198.51.100.1".into(),
                params: vec![],
            },
            remote_uri: NameAddr { display: None, uri: uri.clone(), params: vec![] },
            remote_target: uri,
            route_set: vec![],
            local_cseq: 0,
            target: Target {
                protocol: Protocol::Udp,
                zone: Zone::Carrier,
                remote: addr(GATEWAY_A),
                connection: None,
            },
            local: addr(GATEWAY_A),
        },
        destination,
        headers: vec![("Diversion".into(), "<sip:+14155550100@198.51.100.1>".into())],
        credentials,
        alternates: Vec::new(),
        encryption: Encryption::Disabled,
    }
}

/// The destination answers our INVITE.
fn transfer_responds(s: &mut Script, to: &Request, status: u16, sdp: Option<&str>) -> Vec<Action> {
    let mut r = Response::to_request(to, status, msg::reason_phrase(status), Some("desk"));
    r.headers.push(name::CONTACT, format!("<sip:op@{DESTINATION}>"));
    if let Some(sdp) = sdp {
        r.headers.push(name::CONTENT_TYPE, "application/sdp");
        r.body = sdp.as_bytes().to_vec().into();
    }
    s.call.on_message(s.now, Message::Response(r), source(DESTINATION, GATEWAY_A, Zone::Carrier))
}

fn destination_sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 3 3 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

fn prepare_requests(actions: &[Action]) -> Vec<TransferRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PrepareTransfer(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// An answered call whose agent asked (with `ask`) for `pbx`; the leg is built, its ports
/// bound, its INVITE sent. Returns that INVITE and everything the steps produced.
fn bridging_with(
    ask: impl FnOnce(&mut Script, &Request) -> Vec<Action>,
    credentials: Option<crate::config::secret::BasicAuth>,
) -> (Script, Request, Response, Request, Vec<Action>) {
    let (mut s, invite, ok) = answered();
    let mut actions = ask(&mut s, &invite);
    assert_eq!(prepare_requests(&actions).len(), 1, "the driver is asked for the leg");
    let more = s.call.on_transfer_dial(
        s.now,
        Ok(transfer_dial(Destination::Address(addr(DESTINATION)), credentials)),
    );
    assert!(
        more.iter().any(
            |a| matches!(a, Action::Listen { call_id } if call_id == "transfer-call@trunkline")
        )
    );
    let bind = more.iter().find_map(|a| match a {
        Action::StartTransferMedia { bind, .. } => Some(*bind),
        _ => None,
    });
    assert_eq!(bind, Some(addr(GATEWAY_A).ip()), "the spare ports face the carrier side");
    actions.extend(more);
    let more = s.call.on_media_event(s.now, MediaEvent::TransferMediaStarted { port: SPARE });
    let to_destination = requests_to(&more, TRANSFER_LEG).remove(0);
    actions.extend(more);
    (s, invite, ok, to_destination, actions)
}

fn bridging() -> (Script, Request, Response, Request, Vec<Action>) {
    bridging_with(|s, invite| s.agent_sends(refer(invite, "<sip:pbx@x>", 2)), None)
}

#[test]
fn a_bridged_transfer_dials_the_destination_with_the_codec_in_use_while_the_caller_stays() {
    let (mut s, invite, _ok) = answered();
    let mut ask = refer(&invite, "<sip:pbx@x>", 2);
    ask.headers.push("Referred-By", "<sip:support@agents>");
    ask.headers.push("X-Ticket", "T-42");
    ask.headers.push("X-Trunkline-Agent-ID", "forged");
    let actions = s.agent_sends(ask);
    assert_eq!(statuses(&actions, AGENT_LEG), vec![202]);
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 100 Trying".into(), "active;expires=60".into())]
    );
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "the caller hears nothing of it");
    let request = prepare_requests(&actions).remove(0);
    assert_eq!(request.destination.name.to_string(), "voice/pbx");
    assert_eq!(
        (request.caller.as_str(), request.diverter.as_str()),
        ("+12025550123", "+14155550100")
    );
    assert_eq!(request.codec, Codec::Pcmu);
    let travelling: Vec<&str> = request.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(travelling, vec!["Referred-By", "X-Ticket"]);

    let (_, _, _, to_destination, _) = bridging();
    assert_eq!(to_destination.method, Method::Invite);
    assert_eq!(to_destination.uri, "sip:op@pbx.example");
    assert_eq!(to_destination.call_id(), Some("transfer-call@trunkline"));
    assert_eq!(to_destination.headers.get("Diversion"), Some("<sip:+14155550100@198.51.100.1>"));
    let (media, direction) = media_of(&to_destination.body);
    assert_eq!(media, addr("198.51.100.1:30004"), "offered on the spare ports");
    assert_eq!(direction, Direction::SendRecv);
    let sdp = Sdp::parse(&to_destination.body).unwrap();
    assert_eq!(sdp.audio().unwrap().formats()[0], 0, "PCMU, the codec in use, first");
}

#[test]
fn the_destinations_answer_moves_the_caller_to_it_and_ends_the_agents_leg() {
    let (mut s, invite, ok, to_destination, _) = bridging();
    let actions = transfer_responds(&mut s, &to_destination, 180, None);
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 180 Ringing".into(), "active;expires=60".into())]
    );
    assert!(sent(&actions, CARRIER_LEG).is_empty());
    let actions = transfer_responds(&mut s, &to_destination, 183, Some(&destination_sdp(41000)));
    assert_eq!(
        relay_updates(&actions),
        vec![RelayUpdate::SpareRemote(Some(addr("192.0.2.30:41000")))],
        "ringback goes to the agent"
    );
    assert!(notifies_to_agent(&actions).is_empty(), "one NOTIFY for the ringing");

    s.at(4000);
    let actions = transfer_responds(&mut s, &to_destination, 200, Some(&destination_sdp(41000)));
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Ack]);
    let updates = relay_updates(&actions);
    assert!(updates.contains(&RelayUpdate::PromoteSpare(Some(addr("192.0.2.30:41000")))));
    assert!(updates.contains(&RelayUpdate::Hold(false)));
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 200 OK".into(), "terminated;reason=noresource".into())]
    );
    let agent_methods = methods(&actions, AGENT_LEG);
    assert_eq!(agent_methods, vec![Method::Notify, Method::Bye]);
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "no re-INVITE to the caller");
    let record = transfers(&actions).remove(0);
    assert_eq!((record.mode, record.outcome, record.status), ("Bridge", "completed", Some(200)));
    assert_eq!(record.settled - record.asked, Duration::from_secs(4));
    assert_eq!(s.call.state(), State::Answered);

    // The agent hangs up too, as agents do after NOTIFY 200: its leg only.
    let actions = s.agent_sends(in_dialog_from_agent(&invite, "BYE", 5, "z9hG4bKagentbye"));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    assert!(sent(&actions, CARRIER_LEG).is_empty() && sent(&actions, TRANSFER_LEG).is_empty());
    assert_eq!(s.call.state(), State::Answered);

    // The caller's re-INVITE now goes to the destination, with the spare port as ours.
    let mut reinvite = in_dialog_from_carrier(&ok, "INVITE", 2, "z9hG4bKreinv");
    reinvite = with_body(reinvite, Some(&offer_sdp(4000, "sendonly")));
    let actions = s.carrier_sends(reinvite);
    let relayed = requests_to(&actions, TRANSFER_LEG).remove(0);
    assert_eq!(relayed.method, Method::Invite);
    assert_eq!(relayed.call_id(), Some("transfer-call@trunkline"));
    assert_eq!(media_of(&relayed.body).0, addr("198.51.100.1:30004"));

    // The caller hangs up: the destination gets BYE.
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 3, "z9hG4bKcarrierbye"));
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Bye]);
    assert_eq!(s.call.state(), State::Ended);
}

#[test]
fn a_busy_destination_leaves_the_caller_with_the_agent_who_may_try_again() {
    let (mut s, invite, _ok, to_destination, _) = bridging();
    let actions = transfer_responds(&mut s, &to_destination, 486, None);
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Ack]);
    assert_eq!(relay_updates(&actions), vec![RelayUpdate::DropSpare]);
    assert_eq!(
        notifies_to_agent(&actions),
        vec![("SIP/2.0 486 Busy Here".into(), "terminated;reason=noresource".into())]
    );
    assert!(sent(&actions, CARRIER_LEG).is_empty());
    assert!(!methods(&actions, AGENT_LEG).contains(&Method::Bye));
    let record = transfers(&actions).remove(0);
    assert_eq!((record.outcome, record.status), ("failed", Some(486)));
    assert_eq!(s.call.state(), State::Answered);

    // Another try: a new leg.
    let actions = s.agent_sends(refer(&invite, "<sip:pbx@x>", 3));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![202]);
    assert_eq!(prepare_requests(&actions).len(), 1);
    let actions = s.call.on_transfer_dial(s.now, Err((503, "limits".into())));
    assert_eq!(notifies_to_agent(&actions)[0].0, "SIP/2.0 503 Service Unavailable");
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_destination_that_does_not_answer_in_time_is_cancelled_and_the_agent_hears_480() {
    let (mut s, _invite, _ok, to_destination, _) = bridging();
    s.at(1000);
    transfer_responds(&mut s, &to_destination, 180, None);
    let deadline = s.call.leg(TRANSFER_LEG).deadline.unwrap();
    assert_eq!(deadline - s.t0, Duration::from_secs(31), "the transfer timeout, from the ringing");
    let actions = s.timer(31_000);
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Cancel]);
    // (The NOTIFYs the script's agent never answered are retransmitted too.)
    let last = notifies_to_agent(&actions).pop().unwrap();
    assert_eq!(last.0, "SIP/2.0 480 Temporarily Unavailable");
    assert!(last.1.starts_with("terminated"));
    assert_eq!(s.call.state(), State::Answered);
    // Its 487 is absorbed.
    let actions = transfer_responds(&mut s, &to_destination, 487, None);
    assert!(notifies_to_agent(&actions).is_empty());
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_second_transfer_while_one_is_dialed_is_491() {
    let (mut s, invite, _ok, _to_destination, _) = bridging();
    let actions = s.agent_sends(refer(&invite, "<sip:end-call@x>", 3));
    let answer = responses_to(&actions, AGENT_LEG).remove(0);
    assert_eq!(answer.status, 491);
    assert!(answer.headers.get(name::WARNING).unwrap().contains("TransferInProgress"));
}

#[test]
fn the_caller_hanging_up_while_the_destination_rings_cancels_it() {
    let (mut s, _invite, ok, to_destination, _) = bridging();
    transfer_responds(&mut s, &to_destination, 180, None);
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKcarrierbye"));
    assert_eq!(methods(&actions, TRANSFER_LEG), vec![Method::Cancel]);
    assert!(methods(&actions, AGENT_LEG).contains(&Method::Bye));
    assert_eq!(transfers(&actions)[0].outcome, "abandoned");
    assert_eq!(s.call.state(), State::Ended);
}

#[test]
fn an_agent_that_leaves_during_the_transfer_leaves_the_caller_to_the_destination() {
    // The destination answers: the caller talks to it; nobody NOTIFYs or BYEs the agent.
    let (mut s, invite, _ok, to_destination, _) = bridging();
    let actions = s.agent_sends(in_dialog_from_agent(&invite, "BYE", 3, "z9hG4bKagentbye"));
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "the caller stays");
    assert_eq!(
        relay_updates(&actions),
        vec![RelayUpdate::Hold(true)],
        "no media is owed meanwhile"
    );
    let actions = transfer_responds(&mut s, &to_destination, 200, Some(&destination_sdp(41000)));
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert_eq!(transfers(&actions)[0].outcome, "completed");
    assert_eq!(s.call.state(), State::Answered);

    // It fails: the caller is hung up, saying why.
    let (mut s, invite, _ok, to_destination, _) = bridging();
    s.agent_sends(in_dialog_from_agent(&invite, "BYE", 3, "z9hG4bKagentbye"));
    let actions = transfer_responds(&mut s, &to_destination, 486, None);
    let bye = requests_to(&actions, CARRIER_LEG).remove(0);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.headers.get("Reason"), Some("SIP;cause=486;text=\"transfer failed\""));
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert_eq!(s.call.state(), State::Ended);
}

#[test]
fn a_bye_naming_a_bridged_destination_transfers_without_progress_reports() {
    let ask = |s: &mut Script, invite: &Request| {
        let mut bye = in_dialog_from_agent(invite, "BYE", 2, "z9hG4bKbyexfer");
        bye.headers.push("X-Trunkline-Transfer-To", "pbx");
        s.agent_sends(bye)
    };
    let (mut s, _invite, _ok, to_destination, actions) = bridging_with(ask, None);
    assert_eq!(statuses(&actions, AGENT_LEG), vec![200]);
    assert!(notifies_to_agent(&actions).is_empty());
    assert!(sent(&actions, CARRIER_LEG).is_empty());
    let actions = transfer_responds(&mut s, &to_destination, 200, Some(&destination_sdp(41000)));
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert!(
        relay_updates(&actions)
            .contains(&RelayUpdate::PromoteSpare(Some(addr("192.0.2.30:41000"))))
    );
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_destination_that_challenges_gets_the_destinations_credentials_once() {
    let ask = |s: &mut Script, invite: &Request| s.agent_sends(refer(invite, "<sip:pbx@x>", 2));
    let (mut s, _invite, _ok, to_destination, _) =
        bridging_with(ask, Some(credentials("desk-secret")));
    let mut challenge =
        Response::to_request(&to_destination, 401, "Unauthorized", Some("challenger"));
    challenge
        .headers
        .push(name::WWW_AUTHENTICATE, "Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\"");
    let actions = s.call.on_message(
        s.now,
        Message::Response(challenge),
        source(DESTINATION, GATEWAY_A, Zone::Carrier),
    );
    let again = requests_to(&actions, TRANSFER_LEG)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .unwrap();
    assert!(again.headers.get(name::AUTHORIZATION).unwrap().contains("username="));
    assert_eq!(media_of(&again.body).0, addr("198.51.100.1:30004"), "the same offer again");
    // Challenged again: our credentials are wrong; the agent hears 403, the caller stays.
    let mut challenge = Response::to_request(&again, 401, "Unauthorized", Some("challenger"));
    challenge
        .headers
        .push(name::WWW_AUTHENTICATE, "Digest realm=\"pbx\", nonce=\"n2\", qop=\"auth\"");
    let actions = s.call.on_message(
        s.now,
        Message::Response(challenge),
        source(DESTINATION, GATEWAY_A, Zone::Carrier),
    );
    assert_eq!(notifies_to_agent(&actions)[0].0, "SIP/2.0 403 Forbidden");
    assert_eq!(s.call.state(), State::Answered);
}

#[test]
fn a_refer_mode_transfer_without_a_final_notify_fails_with_408_and_the_call_stays() {
    let (mut s, invite, ok) = answered();
    let actions = s.agent_sends(refer(&invite, "<sip:front-desk@x>", 2));
    let to_carrier = requests_to(&actions, CARRIER_LEG).remove(0);
    s.carrier_responds(&to_carrier, 202, None);
    s.at(1000);
    s.carrier_sends(carrier_notify(&ok, 2, "SIP/2.0 180 Ringing", "active;expires=60"));
    // The transfer timeout (30 s) and the grace for the caller's side's own set-up (30 s).
    let actions = s.timer(59_000);
    assert!(transfers(&actions).is_empty(), "not yet");
    let actions = s.timer(60_000);
    let last = notifies_to_agent(&actions).pop().expect("a NOTIFY to the agent");
    assert_eq!(last.0, "SIP/2.0 408 Request Timeout");
    assert!(last.1.starts_with("terminated"));
    assert_eq!(
        (transfers(&actions)[0].outcome, transfers(&actions)[0].status),
        ("failed", Some(408))
    );
    assert_eq!(s.call.state(), State::Answered);
    // A late NOTIFY has no subscription any more.
    let actions = s.carrier_sends(carrier_notify(&ok, 3, "SIP/2.0 200 OK", "terminated"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![481]);
}

#[test]
fn the_caller_hanging_up_after_the_agent_left_a_transfer_sends_no_second_bye_to_the_agent() {
    let (mut s, invite, ok, _to_destination, _) = bridging();
    s.agent_sends(in_dialog_from_agent(&invite, "BYE", 3, "z9hG4bKagentbye"));
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKcarrierbye"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert!(sent(&actions, AGENT_LEG).is_empty(), "the agent's dialog is over already");
    assert_eq!(transfers(&actions)[0].outcome, "abandoned");
    assert_eq!(s.call.state(), State::Ended);
}

#[test]
fn a_held_call_lets_go_of_its_set_up_once_its_transactions_are_over_and_still_hangs_up() {
    let (mut s, _, ok) = answered();
    // The INVITE transactions linger 64·T1 after their 2xx (RFC 6026), then end.
    s.timer(33_000);
    s.timer(40_000);
    assert_eq!(s.call.state(), State::Answered);
    let (servers, clients) = (s.call.servers.capacity(), s.call.clients.capacity());
    assert_eq!((servers, clients, s.call.pending_2xx.capacity()), (0, 0, 0), "no slots kept");
    assert!(s.call.leg(CARRIER_LEG).invite_request.is_none(), "the carrier's INVITE is gone");
    assert!(s.call.offer.is_none(), "and the set-up's offer");
    assert_eq!(
        s.call.leg(AGENT_LEG).invite_headers.capacity(),
        0,
        "and the agent INVITE's headers"
    );
    // What the held call is for still works: the carrier's BYE hangs up the agent.
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKheldbye"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    assert_eq!(ended(&actions).unwrap().outcome, Some(Outcome::Answered));
}

#[test]
fn answered_invites_keep_only_what_their_retransmissions_need() {
    let (mut s, invite, ok) = answered();
    // Both INVITE transactions linger (RFC 6026), without the requests they answered.
    let origin = s.call.servers.values().find(|t| t.leg == CARRIER_LEG).unwrap();
    assert!(origin.request.is_none() && origin.last_response.is_some());
    let dialed = s.call.clients.values().find(|t| t.leg == AGENT_LEG).unwrap();
    assert!(dialed.request.is_none() && dialed.bytes.is_empty());
    // The agent's 2xx again: acknowledged again, from the dialog.
    let actions = s.agent_responds(&invite, 200, Some(&answer_sdp(7078, "sendrecv")));
    let ack = requests_to(&actions, AGENT_LEG).remove(0);
    assert_eq!((ack.method.clone(), ack.cseq().map(|(n, _)| n)), (Method::Ack, Some(1)));
    assert!(sent(&actions, CARRIER_LEG).is_empty(), "nothing new for the carrier");
    // The carrier's INVITE again: the call does not start over.
    let actions = s.carrier_sends(carrier_invite(Some(&offer_sdp(4000, "sendrecv"))));
    assert!(sent(&actions, AGENT_LEG).is_empty());
    assert_eq!(s.call.state(), State::Answered);
    // And the call hangs up as any other.
    let actions = s.carrier_sends(in_dialog_from_carrier(&ok, "BYE", 2, "z9hG4bKbye2"));
    assert_eq!(statuses(&actions, CARRIER_LEG), vec![200]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
}
