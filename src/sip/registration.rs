//! Registration to a carrier's registrar (RFC 3261 §10.2), sans-IO like `sip::transaction`: a
//! [`Registration`] builds the REGISTERs of one binding (an address-of-record and our contact)
//! and decides what each response means; its driver sends them in non-INVITE client
//! transactions and keeps time. Issue 17, item 5: an OutboundTrunk with `registration` keeps
//! its carrier's binding fresh so that the carrier delivers calls to the gateway.
//!
//! The rules it follows:
//! - one Call-ID for every REGISTER of the binding, the CSeq one higher each time (§10.2: the
//!   registrar orders them by it), a fresh branch per request, one From tag;
//! - To and From are the address-of-record (`sip:USER@DOMAIN`), the Request-URI the registrar's
//!   domain (`sip:DOMAIN`), the Contact ours with `expires`, and `Expires` asked for;
//! - a 401 or 407 is answered once with digest (`sip::digest_client`); a second challenge
//!   for the same nonce, or one without `stale=true` right after an answer, means the
//!   credentials are refused: [`Outcome::Failed`];
//! - a 423 (Interval Too Brief) asks again with its `Min-Expires` (up to [`MAX_EXPIRES`]);
//! - a 2xx grants the `expires` of our contact in its Contact list (RFC 3261 §10.2.4), else its
//!   `Expires`, else what was asked; the binding is refreshed before it lapses
//!   ([`refresh_after`]);
//! - anything else, or no answer, fails; the next attempt waits [`retry_after`] (exponential
//!   from 30 s to 30 min with jitter, the shape of RFC 5626 §4.5) so that a fleet does not
//!   hammer a registrar that is down.
//!
//! Unregistering (Expires: 0) is [`Registration::unregister`]. Passwords never leave
//! `digest_client`: requests carry only the digest response.

use std::time::Duration;

use super::digest_client::{self, Challenge};
use super::msg::{DialogHeaders, Method, Request, Response, name};

/// The longest binding asked for or accepted from a 423 (one day).
pub const MAX_EXPIRES: u32 = 86_400;
/// The first wait after a failure; it doubles per failure in a row up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(30);
/// The longest wait after failures.
pub const RETRY_MAX: Duration = Duration::from_secs(1_800);

/// Who registers where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The registrar's domain: the Request-URI's host (and the AOR's domain), `host[:port]`.
    pub domain: String,
    /// The account: the AOR's user and the digest username.
    pub username: String,
    /// Our contact URI: where the carrier sends the calls (`sip:USER@OUR-ADDRESS:PORT`).
    pub contact: String,
    /// The binding's lifetime asked for, seconds.
    pub expires: u32,
    /// `;transport=tcp|tls` for the Request-URI, or empty for UDP.
    pub transport_param: &'static str,
}

/// Identifiers the driver makes (random): one Call-ID and From tag per binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub call_id: String,
    pub tag: String,
}

/// What a response meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this REGISTER next (an answer to a challenge, or a longer interval after a 423).
    Send(Request),
    /// Registered for this long (seconds granted).
    Registered { expires: u32 },
    /// Unregistered (a 2xx to Expires: 0).
    Unregistered,
    /// Not registered: why (for the condition and the log; never a credential).
    Failed(String),
    /// Not ours (another CSeq or method): ignore it.
    Ignored,
}

/// One binding's REGISTERs and what their answers mean.
#[derive(Debug)]
pub struct Registration {
    binding: Binding,
    ids: Ids,
    cseq: u32,
    /// The interval asked for now (raised by a 423).
    expires: u32,
    /// The last challenge answered, and how many requests its nonce has answered.
    challenge: Option<(Challenge, u32)>,
    /// The last REGISTER sent already answered a challenge (a new challenge then, unless
    /// stale, means the credentials are wrong).
    answered: bool,
    /// The Expires of the last REGISTER (0: unregistering).
    asked: u32,
}

impl Registration {
    pub fn new(binding: Binding, ids: Ids) -> Registration {
        let expires = binding.expires.min(MAX_EXPIRES);
        Registration {
            binding,
            ids,
            cseq: 0,
            expires,
            challenge: None,
            answered: false,
            asked: expires,
        }
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The next REGISTER (a first one or a refresh), with `branch` and sent from `via` (our
    /// `PROTOCOL HOST:PORT`), answering the last challenge if there was one (registrars keep a
    /// nonce for a while: this saves a round trip; a stale one is challenged again).
    pub fn register(&mut self, via: &str, branch: &str, cnonce: &str, password: &str) -> Request {
        self.asked = self.expires;
        self.request(via, branch, cnonce, password)
    }

    /// A REGISTER that removes our binding (Expires: 0), for a trunk that goes away.
    pub fn unregister(&mut self, via: &str, branch: &str, cnonce: &str, password: &str) -> Request {
        self.asked = 0;
        self.request(via, branch, cnonce, password)
    }

    fn request(&mut self, via: &str, branch: &str, cnonce: &str, password: &str) -> Request {
        self.cseq += 1;
        let b = &self.binding;
        let uri = format!("sip:{}{}", b.domain, b.transport_param);
        let aor = format!("<sip:{}@{}>", b.username, b.domain);
        let mut r = Request::new(Method::Register, uri.clone());
        r.headers.push(name::VIA, format!("SIP/2.0/{via};branch={branch};rport"));
        r.headers.push(name::MAX_FORWARDS, "70");
        r.headers.push(name::FROM, format!("{aor};tag={}", self.ids.tag));
        r.headers.push(name::TO, aor);
        r.headers.push(name::CALL_ID, self.ids.call_id.as_str());
        r.headers.push(name::CSEQ, format!("{} REGISTER", self.cseq));
        r.headers.push(name::CONTACT, format!("<{}>;expires={}", b.contact, self.asked));
        r.headers.push("Expires", self.asked.to_string());
        self.answered = false;
        if let Some((challenge, nc)) = &mut self.challenge {
            *nc += 1;
            let value = challenge.answer(&b.username, password, "REGISTER", &uri, *nc, cnonce);
            r.headers.push("Authorization", value);
            self.answered = true;
        }
        r
    }

    /// What `response` to our last REGISTER means. `next` builds the REGISTER to send after it
    /// when one is due (the driver's branch, cnonce and password go in there).
    pub fn on_response(
        &mut self,
        response: &Response,
        next: impl FnOnce(&mut Registration) -> Request,
    ) -> Outcome {
        let ours = response.cseq().is_some_and(|(n, m)| n == self.cseq && m == Method::Register)
            && response.call_id() == Some(self.ids.call_id.as_str());
        if !ours || response.status < 200 {
            return Outcome::Ignored;
        }
        match response.status {
            200..=299 if self.asked == 0 => Outcome::Unregistered,
            200..=299 => {
                let granted = self.granted(response).unwrap_or(self.asked);
                if granted == 0 {
                    return Outcome::Failed("the registrar granted no binding".into());
                }
                Outcome::Registered { expires: granted.min(MAX_EXPIRES) }
            }
            401 | 407 => {
                let header =
                    if response.status == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
                let challenge = match digest_client::pick(response.headers.get_all(header)) {
                    Ok(challenge) => challenge,
                    Err(e) => {
                        return Outcome::Failed(format!(
                            "{} with a challenge we cannot answer: {e}",
                            response.status
                        ));
                    }
                };
                if self.answered && !challenge.stale {
                    self.challenge = None;
                    return Outcome::Failed(format!(
                        "{} again: the registrar refused the credentials",
                        response.status
                    ));
                }
                self.challenge = Some((challenge, 0));
                Outcome::Send(next(self))
            }
            423 => {
                let min =
                    response.headers.get("Min-Expires").and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(min) if min > self.expires && min <= MAX_EXPIRES => {
                        self.expires = min;
                        Outcome::Send(next(self))
                    }
                    _ => Outcome::Failed(
                        "423 Interval Too Brief without a usable Min-Expires".into(),
                    ),
                }
            }
            status => Outcome::Failed(format!("{status} {}", printable(&response.reason))),
        }
    }

    /// What the registrar granted: the `expires` of our own contact in the 2xx's Contact list,
    /// else its `Expires` header.
    fn granted(&self, response: &Response) -> Option<u32> {
        let ours =
            response.headers.get_all(name::CONTACT).flat_map(super::msg::split_list).find_map(
                |c| {
                    let addr = super::msg::NameAddr::parse(c)?;
                    same_uri(&addr.uri, &self.binding.contact).then(|| {
                        addr.params
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case("expires"))
                            .and_then(|(_, v)| v.as_deref()?.trim().parse().ok())
                    })?
                },
            );
        ours.or_else(|| response.headers.get("Expires").and_then(|v| v.trim().parse().ok()))
    }
}

/// Two contact URIs the same for our purpose: equal ignoring case (registrars echo what they
/// got, sometimes with the scheme or host case changed).
fn same_uri(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// When to refresh a binding granted for `expires` seconds: halfway for short bindings, ten
/// minutes before the end for long ones, never sooner than 5 s.
pub fn refresh_after(expires: u32) -> Duration {
    let expires = u64::from(expires);
    let secs = if expires <= 1_200 { expires / 2 } else { expires - 600 };
    Duration::from_secs(secs.max(5))
}

/// The wait before attempt `failures + 1` after `failures` failures in a row: 30 s doubling up
/// to 30 min, then `unit` (0..1, the driver's random draw) takes it down by up to half, so that
/// a fleet's pods spread out (RFC 5626 §4.5's shape).
pub fn retry_after(failures: u32, unit: f64) -> Duration {
    let doubled = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    let top = doubled.min(RETRY_MAX);
    top.mul_f64(1.0 - 0.5 * unit.clamp(0.0, 1.0))
}

/// A reason phrase fit for a log line and a condition: printable ASCII, at most 64 characters.
fn printable(reason: &str) -> String {
    reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::{self, Message};

    const PASSWORD: &str = "carrier-password";

    fn registration() -> Registration {
        Registration::new(
            Binding {
                domain: "sip.carrier.example".into(),
                username: "acct-1001".into(),
                contact: "sip:acct-1001@198.51.100.7:5060".into(),
                expires: 3600,
                transport_param: "",
            },
            Ids { call_id: "reg-1@trunkline".into(), tag: "t1".into() },
        )
    }

    fn first(r: &mut Registration) -> Request {
        r.register("UDP 198.51.100.7:5060", "z9hG4bK-1", "cn1", PASSWORD)
    }

    fn next(r: &mut Registration) -> Request {
        r.register("UDP 198.51.100.7:5060", "z9hG4bK-2", "cn2", PASSWORD)
    }

    /// The registrar's answer to `request`: its status, then `extra` header lines.
    fn answer(request: &Request, status: u16, extra: &str) -> Response {
        let mut text = format!("SIP/2.0 {status} {}\r\n", msg::reason_phrase(status));
        for h in [name::VIA, name::FROM, name::TO, name::CALL_ID, name::CSEQ] {
            text.push_str(&format!("{h}: {}\r\n", request.headers.get(h).unwrap()));
        }
        text.push_str(extra);
        text.push_str("Content-Length: 0\r\n\r\n");
        match msg::parse(text.as_bytes()) {
            Ok(Message::Response(r)) => r,
            other => panic!("not a response: {other:?}\n{text}"),
        }
    }

    const CHALLENGE: &str =
        "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\", algorithm=MD5\r\n";

    #[test]
    fn the_first_register_names_the_aor_our_contact_and_the_interval() {
        let mut r = registration();
        let req = first(&mut r);
        let text = String::from_utf8(req.to_bytes()).unwrap();
        assert!(text.starts_with("REGISTER sip:sip.carrier.example SIP/2.0\r\n"), "{text}");
        assert!(text.contains("From: <sip:acct-1001@sip.carrier.example>;tag=t1\r\n"), "{text}");
        assert!(text.contains("To: <sip:acct-1001@sip.carrier.example>\r\n"), "{text}");
        assert!(text.contains("Contact: <sip:acct-1001@198.51.100.7:5060>;expires=3600\r\n"));
        assert!(text.contains("Expires: 3600\r\n") && text.contains("CSeq: 1 REGISTER\r\n"));
        assert!(!text.contains("Authorization"), "no challenge yet: {text}");
    }

    #[test]
    fn a_challenge_is_answered_once_and_the_200_grants_our_contacts_expires() {
        let mut r = registration();
        let req = first(&mut r);
        let Outcome::Send(again) = r.on_response(&answer(&req, 401, CHALLENGE), next) else {
            panic!("the challenge is answered")
        };
        let auth = again.headers.get("Authorization").expect("an answer");
        assert!(auth.contains("username=\"acct-1001\"") && auth.contains("nc=00000001"), "{auth}");
        assert!(!auth.contains(PASSWORD), "the password never goes on the wire");
        assert_eq!(again.cseq().map(|(n, _)| n), Some(2), "the CSeq goes up, the Call-ID stays");
        assert_eq!(again.call_id(), req.call_id());
        // The registrar lists every binding of the AOR; ours is granted 1800 s.
        let ok = answer(
            &again,
            200,
            "Contact: <sip:other@203.0.113.1>;expires=60, <sip:ACCT-1001@198.51.100.7:5060>;expires=1800\r\nExpires: 3600\r\n",
        );
        assert_eq!(r.on_response(&ok, next), Outcome::Registered { expires: 1800 });
        // The refresh answers the same nonce with the next nonce count, without a round trip.
        let refresh = next(&mut r);
        let auth = refresh.headers.get("Authorization").expect("the nonce is reused");
        assert!(auth.contains("nc=00000002"), "{auth}");
    }

    #[test]
    fn a_second_challenge_after_an_answer_means_wrong_credentials_unless_stale() {
        let mut r = registration();
        let req = first(&mut r);
        let Outcome::Send(again) = r.on_response(&answer(&req, 401, CHALLENGE), next) else {
            panic!()
        };
        let stale = CHALLENGE.replace("nonce=\"n1\"", "nonce=\"n2\", stale=true");
        let Outcome::Send(third) = r.on_response(&answer(&again, 401, &stale), next) else {
            panic!("a stale nonce is answered again")
        };
        let refused = r.on_response(&answer(&third, 401, CHALLENGE), next);
        assert_eq!(
            refused,
            Outcome::Failed("401 again: the registrar refused the credentials".into())
        );
    }

    #[test]
    fn a_423_raises_the_interval_to_min_expires() {
        let mut r = registration();
        r.expires = 60;
        let req = first(&mut r);
        let Outcome::Send(again) = r.on_response(&answer(&req, 423, "Min-Expires: 600\r\n"), next)
        else {
            panic!()
        };
        assert_eq!(again.headers.get("Expires"), Some("600"));
        let too_long = answer(&again, 423, "Min-Expires: 999999\r\n");
        assert!(matches!(r.on_response(&too_long, next), Outcome::Failed(_)));
    }

    #[test]
    fn other_answers_fail_with_a_printable_reason_and_strays_are_ignored() {
        let mut r = registration();
        let req = first(&mut r);
        let failed = r.on_response(&answer(&req, 403, ""), next);
        assert_eq!(failed, Outcome::Failed("403 Forbidden".into()));
        let mut stray = answer(&req, 200, "");
        stray.headers.remove(name::CSEQ);
        stray.headers.push(name::CSEQ, "99 REGISTER");
        assert_eq!(r.on_response(&stray, next), Outcome::Ignored);
    }

    #[test]
    fn unregistering_asks_for_zero_and_its_200_is_unregistered() {
        let mut r = registration();
        let req = r.unregister("UDP 198.51.100.7:5060", "z9hG4bK-9", "cn", PASSWORD);
        assert_eq!(req.headers.get("Expires"), Some("0"));
        assert_eq!(r.on_response(&answer(&req, 200, ""), next), Outcome::Unregistered);
    }

    #[test]
    fn refreshes_come_before_the_binding_lapses() {
        assert_eq!(refresh_after(3600), Duration::from_secs(3000));
        assert_eq!(refresh_after(600), Duration::from_secs(300));
        assert_eq!(refresh_after(4), Duration::from_secs(5));
        for e in [60, 300, 1200, 1201, 3600, MAX_EXPIRES] {
            assert!(refresh_after(e) < Duration::from_secs(u64::from(e)), "{e}");
        }
    }

    #[test]
    fn retries_back_off_from_30_s_to_30_min_with_jitter_down_to_half() {
        assert_eq!(retry_after(1, 0.0), Duration::from_secs(30));
        assert_eq!(retry_after(2, 0.0), Duration::from_secs(60));
        assert_eq!(retry_after(20, 0.0), RETRY_MAX);
        assert_eq!(retry_after(20, 1.0), RETRY_MAX / 2);
        assert_eq!(retry_after(1, 0.5), Duration::from_secs(22) + Duration::from_millis(500));
    }
}
