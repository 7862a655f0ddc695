//! Transcripts of the session timers the gateway refreshes itself (RFC 4028 §7.4, §10): a
//! dialed peer that answers `refresher=uac`, a carrier that asks `refresher=uas`; the UPDATE
//! every half interval and what each answer to it does.

use crate::sip::msg::{self, DialogHeaders, Message, Method, Request, Response, name};

use super::script::*;
use super::*;

/// The agent answers our INVITE with a session timer it wants the gateway to refresh, plus
/// `extra` headers; the carrier acknowledges. Returns the call at 0 ms after the answer.
fn agent_wants_refreshes(interval: u32, extra: &[(&str, &str)]) -> Script {
    let (mut s, invite, _) = inviting(Some(&offer_sdp(4000, "sendrecv")));
    let mut ok = Response::to_request(&invite, 200, "OK", Some("agenttag"));
    ok.headers.push(name::CONTACT, format!("<sip:support@{AGENT}>"));
    ok.headers.push("Session-Expires", format!("{interval};refresher=uac"));
    for (n, v) in extra {
        ok.headers.push(n, *v);
    }
    ok.headers.push(name::CONTENT_TYPE, "application/sdp");
    ok.body = answer_sdp(7078, "sendrecv").into_bytes().into();
    let actions = s.deliver(AGENT_LEG, Message::Response(ok));
    let to_carrier = responses_to(&actions, CARRIER_LEG).into_iter().find(|r| r.status == 200);
    s.carrier_sends(ack_for(&to_carrier.expect("the 200 to the carrier"), 1));
    s
}

/// The one UPDATE among `actions` sent to `leg`.
fn update_to(actions: &[Action], leg: LegId) -> Request {
    let updates: Vec<Request> =
        requests_to(actions, leg).into_iter().filter(|r| r.method == Method::Update).collect();
    assert_eq!(updates.len(), 1, "one UPDATE to {leg:?}: {updates:?}");
    updates.into_iter().next().unwrap()
}

fn no_update(actions: &[Action]) -> bool {
    [CARRIER_LEG, AGENT_LEG]
        .iter()
        .all(|leg| requests_to(actions, *leg).iter().all(|r| r.method != Method::Update))
}

/// The agent's answer to our UPDATE, with `headers`.
fn agent_answers(
    s: &mut Script,
    update: &Request,
    status: u16,
    headers: &[(&str, &str)],
) -> Vec<Action> {
    let mut r = Response::to_request(update, status, msg::reason_phrase(status), Some("agenttag"));
    for (n, v) in headers {
        r.headers.push(n, *v);
    }
    s.deliver(AGENT_LEG, Message::Response(r))
}

#[test]
fn an_agent_that_names_the_gateway_refresher_gets_an_update_every_half_interval() {
    let mut s = agent_wants_refreshes(1800, &[]);
    assert!(no_update(&s.timer(899_999)), "nothing before half the interval");
    let actions = s.timer(900_000);
    let update = update_to(&actions, AGENT_LEG);
    // An UPDATE of the agent's dialog without a body (no offer: the media stays as it is),
    // naming the gateway (its UAC) refresher.
    assert_eq!(update.headers.get("Session-Expires"), Some("1800;refresher=uac"));
    assert_eq!(update.headers.get("Supported"), Some("timer"));
    assert!(update.body.is_empty());
    assert_eq!(update.to().and_then(|t| t.tag().map(str::to_string)).as_deref(), Some("agenttag"));
    assert_eq!(update.cseq().map(|(n, _)| n), Some(2), "the INVITE was 1");
    assert!(requests_to(&actions, CARRIER_LEG).is_empty(), "the carrier sees nothing of it");
    // The agent accepts it: the next one is half an interval later, and the session goes on
    // past where it would have ended without the refresh (1800 - 32 s).
    agent_answers(&mut s, &update, 200, &[("Session-Expires", "1800;refresher=uac")]);
    let actions = s.timer(1_768_000);
    assert!(ended(&actions).is_none() && no_update(&actions));
    let second = update_to(&s.timer(1_800_000), AGENT_LEG);
    assert_eq!(second.cseq().map(|(n, _)| n), Some(3));
    // A peer that lost the dialog (481) ends the call on both legs (RFC 4028 §10).
    let actions = agent_answers(&mut s, &second, 481, &[]);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).expect("the call ends");
    assert_eq!(e.reason.as_deref(), Some("session refresh failed: agent answered 481"));
}

#[test]
fn a_refresh_nobody_answers_ends_the_call() {
    let mut s = agent_wants_refreshes(1800, &[]);
    let update = update_to(&s.timer(900_000), AGENT_LEG);
    assert_eq!(update.method, Method::Update);
    // Retransmitted over UDP (Timer E) while nothing comes back...
    let actions = s.timer(900_500);
    assert_eq!(requests_to(&actions, AGENT_LEG).len(), 1, "a retransmission");
    assert!(ended(&actions).is_none());
    // ...and over at Timer F (64·T1 = 32 s), long before the session's own end: the peer is
    // gone (RFC 4028 §10 takes a timeout as a 408).
    let mut over = None;
    for ms in (901_000..=940_000).step_by(500) {
        if let Some(e) = ended(&s.timer(ms)) {
            over = Some((ms, e));
            break;
        }
    }
    let (ms, e) = over.expect("the call ends when the UPDATE times out");
    assert_eq!(ms, 932_000, "Timer F after the UPDATE at 900 s");
    assert_eq!(e.reason.as_deref(), Some("session refresh got no answer from agent"));
}

#[test]
fn the_peer_may_raise_the_interval_or_take_the_refresher_role() {
    let mut s = agent_wants_refreshes(90, &[]);
    let update = update_to(&s.timer(45_000), AGENT_LEG);
    // 422: our interval is below its Min-SE: asked again at once with its minimum (§7.3).
    let actions = agent_answers(&mut s, &update, 422, &[("Min-SE", "600")]);
    let again = update_to(&actions, AGENT_LEG);
    assert_eq!(again.headers.get("Session-Expires"), Some("600;refresher=uac"));
    // Its 2xx names itself refresher: the gateway sends no more refreshes and waits for its.
    agent_answers(&mut s, &again, 200, &[("Session-Expires", "600;refresher=uas")]);
    assert!(no_update(&s.timer(400_000)));
    assert!(ended(&s.timer(612_999)).is_none());
    let actions = s.timer(613_000);
    let e = ended(&actions).expect("over at 45 s + 600 - 32 s without its refresh");
    assert_eq!(e.reason.as_deref(), Some("session timer expired: no refresh from agent in 600 s"));
}

#[test]
fn a_refused_refresh_is_tried_again_and_the_session_ends_when_none_was_accepted() {
    let mut s = agent_wants_refreshes(120, &[]);
    let update = update_to(&s.timer(60_000), AGENT_LEG);
    // 491 (a request of the agent crossed ours): again 2 s later.
    agent_answers(&mut s, &update, 491, &[]);
    assert!(no_update(&s.timer(61_999)));
    let again = update_to(&s.timer(62_000), AGENT_LEG);
    // 500: again a quarter interval later (30 s), but never after the session's end: the last
    // refresh accepted was the 2xx at 0, so it ends at 120 - 32 = 88 s.
    agent_answers(&mut s, &again, 500, &[]);
    let actions = s.timer(87_999);
    assert!(no_update(&actions) && ended(&actions).is_none());
    let actions = s.timer(88_000);
    assert_eq!(methods(&actions, CARRIER_LEG), vec![Method::Bye]);
    assert_eq!(methods(&actions, AGENT_LEG), vec![Method::Bye]);
    let e = ended(&actions).expect("over: no refresh accepted in time");
    assert_eq!(
        e.reason.as_deref(),
        Some("session timer expired: agent accepted no refresh in 120 s")
    );
}

#[test]
fn a_peer_that_takes_no_update_is_not_refreshed_by_the_gateway() {
    // Its Allow lacks UPDATE: the gateway has no way to refresh it without an offer.
    let mut s = agent_wants_refreshes(90, &[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")]);
    let actions = s.timer(4_000_000);
    assert!(no_update(&actions) && ended(&actions).is_none());
    // One that lists it, or says nothing, is refreshed; one that answers 405 after all is no
    // longer refreshed and keeps its call.
    let mut s = agent_wants_refreshes(90, &[("Allow", "INVITE, ACK, BYE, UPDATE")]);
    let update = update_to(&s.timer(45_000), AGENT_LEG);
    let actions = agent_answers(&mut s, &update, 405, &[]);
    assert!(ended(&actions).is_none());
    let actions = s.timer(4_000_000);
    assert!(no_update(&actions) && ended(&actions).is_none());
}

#[test]
fn a_carrier_that_asks_the_gateway_to_refresh_gets_updates() {
    let (mut s, _, ok) = answered_adjusted(|setup, _| {
        setup.origin.invite.headers.push("Supported", "timer");
        setup.origin.invite.headers.push("Session-Expires", "90;refresher=uas");
    });
    // RFC 4028 §9: the 2xx keeps the refresher the INVITE asked for; no Require for it.
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(ok.headers.get("Require"), None);
    let update = update_to(&s.timer(45_000), CARRIER_LEG);
    assert_eq!(update.headers.get("Session-Expires"), Some("90;refresher=uac"));
    // Our UPDATE goes in the carrier's dialog: its tag in To, ours in From.
    assert_eq!(
        update.from().and_then(|f| f.tag().map(str::to_string)),
        ok.to().and_then(|t| t.tag().map(str::to_string))
    );
    s.carrier_responds(&update, 200, None);
    let actions = s.timer(89_999);
    assert!(ended(&actions).is_none() && no_update(&actions), "refreshed at 45 s: next at 90 s");
    let next = update_to(&s.timer(90_000), CARRIER_LEG);
    let actions = s.carrier_responds(&next, 408, None);
    let e = ended(&actions).expect("a 408 to the refresh ends the call");
    assert_eq!(e.reason.as_deref(), Some("session refresh failed: carrier answered 408"));
}

#[test]
fn a_carrier_that_asks_the_gateway_to_refresh_but_takes_no_update_refreshes_itself() {
    let (mut s, _, ok) = answered_adjusted(|setup, _| {
        setup.origin.invite.headers.push("Supported", "timer");
        setup.origin.invite.headers.push("Allow", "INVITE, ACK, BYE, CANCEL");
        setup.origin.invite.headers.push("Session-Expires", "90;refresher=uas");
    });
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    let actions = s.timer(60_000);
    assert!(no_update(&actions));
    let e = ended(&actions).expect("no refresh from the carrier");
    assert_eq!(e.reason.as_deref(), Some("session timer expired: no refresh from carrier in 90 s"));
}
