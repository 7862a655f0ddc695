//! Session timers (RFC 4028): what an INVITE asks for, the `Session-Expires` values the
//! gateway writes, what a 2xx set up, and when a session nobody refreshed is over. Pure: the
//! call machine keeps the deadlines and sends the refreshes (`call::machine::session`), the
//! front door sends the 422.
//!
//! As the UAS of a call's first leg: toward a peer that supports `timer`, the 2xx names the
//! refresher the INVITE asked for (RFC 4028 §9, table 2): the peer (`refresher=uac`, with
//! `Require: timer`; also when the INVITE names nobody) or the gateway (`refresher=uas`, when
//! the INVITE asks for it and the peer takes UPDATE). A peer that does not support `timer`
//! gets no session timer (the media timeout and the maximum call duration still end a call
//! whose peer vanished).
//!
//! As the UAC of the legs it dials, the gateway offers `Supported: timer` and
//! `Session-Expires: 1800;refresher=uas`: a peer that supports the extension refreshes, or
//! answers `refresher=uac` and the gateway refreshes it.

use std::time::Duration;

use super::msg::Headers;

/// `Session-Expires` and its compact form `x`.
pub const SESSION_EXPIRES: &str = "Session-Expires";
/// `Min-SE`.
pub const MIN_SE: &str = "Min-SE";
/// `Supported` and its compact form `k`.
pub const SUPPORTED: &str = "Supported";
/// RFC 4028's own minimum for `Min-SE` (§4): 90 seconds.
pub const RFC_MIN_SE: u32 = 90;
/// The interval the gateway asks of the peers it calls (RFC 4028 §4 recommends 1800 s).
pub const ASKED_INTERVAL: u32 = 1800;

/// What the INVITE's session timer headers ask of the UAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// No session timer (no `Session-Expires`, or the UAC does not support `timer`).
    None,
    /// `Session-Expires` below our `Min-SE`: answer 422 with `Min-SE: min`.
    TooSmall { min: u32 },
    /// A session timer of `interval` seconds, refreshed by the UAC or, when the request
    /// asked for it (`refresher=uas`), by the UAS.
    Refreshed { interval: u32, refresher: Refresher },
}

/// What an INVITE (initial or refresh) asks for, with `min_se` the smallest interval accepted
/// (the larger of ours and the request's own `Min-SE`).
pub fn ask(headers: &Headers, min_se: u32) -> Ask {
    let Some(expires) = header(headers, SESSION_EXPIRES, "x").and_then(parse_delta) else {
        return Ask::None;
    };
    let theirs = header(headers, MIN_SE, MIN_SE).and_then(parse_delta).unwrap_or(0);
    let min = min_se.max(theirs);
    if expires < min {
        return Ask::TooSmall { min };
    }
    let supported = headers
        .get_all(SUPPORTED)
        .chain(headers.get_all("k"))
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("timer"));
    if !supported {
        return Ask::None;
    }
    let value = header(headers, SESSION_EXPIRES, "x").unwrap_or_default();
    let refresher = match refresher_param(value).as_deref() {
        Some("uas") => Refresher::Uas,
        _ => Refresher::Uac,
    };
    Ask::Refreshed { interval: expires, refresher }
}

/// Who refreshes a session, as a 2xx's `Session-Expires` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// What we ask of a peer we call (we are its UAC): that it refreshes (RFC 4028 §7.4 lets the
/// UAC name the refresher), every `interval` seconds.
pub fn offer(interval: u32) -> [(&'static str, String); 2] {
    [(SUPPORTED, "timer".to_string()), (SESSION_EXPIRES, format!("{interval};refresher=uas"))]
}

/// The session timer a 2xx to our INVITE set up, if any: its interval and who refreshes.
pub fn answered(headers: &Headers) -> Option<(u32, Refresher)> {
    let value = header(headers, SESSION_EXPIRES, "x")?;
    let interval = parse_delta(value).filter(|i| *i > 0)?;
    match refresher_param(value).as_deref() {
        Some("uas") => Some((interval, Refresher::Uas)),
        // Without the parameter the UAC refreshes (§7.2 requires it in a 2xx; be strict).
        _ => Some((interval, Refresher::Uac)),
    }
}

/// A `Session-Expires` value naming the refresher in the roles of the transaction it is in.
pub fn answer(interval: u32, refresher: Refresher) -> String {
    let who = match refresher {
        Refresher::Uac => "uac",
        Refresher::Uas => "uas",
    };
    format!("{interval};refresher={who}")
}

/// The `refresher` parameter of a `Session-Expires` value, lower-cased.
fn refresher_param(value: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("refresher").then(|| v.trim().to_ascii_lowercase())
    })
}

/// When a session of `interval` seconds refreshed at `t` is over without another refresh:
/// `interval - min(32, interval / 3)` after it (RFC 4028 §10).
pub fn expiry(interval: u32) -> Duration {
    Duration::from_secs(u64::from(interval - (interval / 3).min(32)))
}

fn header<'a>(headers: &'a Headers, long: &str, compact: &str) -> Option<&'a str> {
    headers.get(long).or_else(|| headers.get(compact))
}

/// `delta-seconds *(;param)`: the delta, when it is one (at most 2^32-1, RFC 4028 §4).
fn parse_delta(value: &str) -> Option<u32> {
    let delta = value.split(';').next()?.trim();
    if delta.is_empty() || !delta.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    delta.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in list {
            h.push(n, *v);
        }
        h
    }

    #[test]
    fn a_uac_that_supports_timer_refreshes_at_the_interval_it_asked() {
        let h =
            headers(&[("Supported", "100rel, timer"), ("Session-Expires", "1800;refresher=uac")]);
        assert_eq!(ask(&h, 90), Ask::Refreshed { interval: 1800, refresher: Refresher::Uac });
        // No refresher named: the UAC (the UAS may choose, §9; the peer that asked refreshes).
        let h = headers(&[("Supported", "timer"), ("Session-Expires", "900")]);
        assert_eq!(ask(&h, 90), Ask::Refreshed { interval: 900, refresher: Refresher::Uac });
        // Compact forms, and the UAS asked to refresh (§9 table 2: the answer keeps it).
        let h = headers(&[("k", "timer"), ("x", "600; Refresher=UAS")]);
        assert_eq!(ask(&h, 90), Ask::Refreshed { interval: 600, refresher: Refresher::Uas });
        assert_eq!(answer(600, Refresher::Uac), "600;refresher=uac");
        assert_eq!(answer(600, Refresher::Uas), "600;refresher=uas");
    }

    #[test]
    fn too_small_an_interval_is_422_with_the_larger_min_se() {
        let h = headers(&[("Supported", "timer"), ("Session-Expires", "60")]);
        assert_eq!(ask(&h, 90), Ask::TooSmall { min: 90 });
        let h = headers(&[("Supported", "timer"), ("Session-Expires", "100"), ("Min-SE", "120")]);
        assert_eq!(ask(&h, 90), Ask::TooSmall { min: 120 });
        // Even without `Supported: timer` the interval is checked (§8.1: a proxy may have
        // inserted it).
        let h = headers(&[("Session-Expires", "30")]);
        assert_eq!(ask(&h, 90), Ask::TooSmall { min: 90 });
    }

    #[test]
    fn no_timer_without_session_expires_or_support_or_with_garbage() {
        assert_eq!(ask(&headers(&[("Supported", "timer")]), 90), Ask::None);
        assert_eq!(ask(&headers(&[("Session-Expires", "1800")]), 90), Ask::None);
        for bad in ["", "abc", "-5", "1e3", "99999999999999999999", " ;refresher=uac"] {
            let h = headers(&[("Supported", "timer"), ("Session-Expires", bad)]);
            assert_eq!(ask(&h, 90), Ask::None, "{bad:?}");
        }
    }

    #[test]
    fn a_2xx_says_who_refreshes() {
        let h = headers(&[("Session-Expires", "1800;refresher=uas")]);
        assert_eq!(answered(&h), Some((1800, Refresher::Uas)));
        let h = headers(&[("x", "900; refresher=UAC")]);
        assert_eq!(answered(&h), Some((900, Refresher::Uac)));
        assert_eq!(answered(&headers(&[("Session-Expires", "900")])), Some((900, Refresher::Uac)));
        assert_eq!(answered(&headers(&[("Session-Expires", "0;refresher=uas")])), None);
        assert_eq!(answered(&headers(&[])), None);
        let [supported, expires] = offer(1800);
        assert_eq!(supported.1, "timer");
        assert_eq!(expires.1, "1800;refresher=uas");
    }

    #[test]
    fn the_session_ends_a_third_before_the_interval_at_most_32_seconds_before() {
        assert_eq!(expiry(90), Duration::from_secs(60));
        assert_eq!(expiry(1800), Duration::from_secs(1768));
        assert_eq!(expiry(3), Duration::from_secs(2));
        assert_eq!(expiry(1), Duration::from_secs(1));
    }
}
