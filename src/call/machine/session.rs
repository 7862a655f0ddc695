//! Session timers (RFC 4028) on the call's legs: who refreshes each leg's session, when the
//! gateway sends its own refreshes, and what ends a session nobody refreshed.
//!
//! A leg's session is refreshed either by its peer (it is the refresher: its re-INVITE or
//! UPDATE, relayed as any other, starts another interval when our 2xx goes back) or by the
//! gateway (the peer named us: `refresher=uac` in the 2xx to an INVITE we sent, or
//! `refresher=uas` in an INVITE we answer). The gateway refreshes with an UPDATE without a
//! body (RFC 4028 §7.4, RFC 3311: no offer, so the media and the other leg are untouched) at
//! half the interval (§10); its 2xx starts another interval (it may change the interval or hand
//! the refresher role to the peer); a 422 raises the interval to the peer's `Min-SE` and is
//! retried at once; a 408, a 481, no answer at all or a transport failure end the call (§10);
//! a 491 (the peer's own request crossed ours) is retried two seconds later; any other failure
//! is retried at a quarter of the interval, so a peer that keeps refusing is hung up at the
//! session's end as one that never refreshed. A peer that does not take UPDATE (its `Allow`
//! lacks it) is never made to refresh by the gateway: that leg gets no session timer, and the
//! media timeout and the maximum call duration bound it instead.
//!
//! Without a refresh by `interval - min(32, interval / 3)` (§10) both legs get a BYE. Only
//! bridged legs count: a transfer's promoted leg takes over the session of the leg it replaced
//! only once it has one of its own.

use std::time::{Duration, Instant};

use crate::sip::msg::{Headers, Method, Response, name};
use crate::sip::session_timer::{self, Refresher};

use super::leg::LegId;
use super::tx::Purpose;
use super::{Call, State};

/// After a 491 to our refresh (a request of the peer crossed it), how long until we try again
/// (RFC 3261 §14.1 asks the owner of the Call-ID for 2.1-4 s; 2 s is within what either side
/// would wait).
const GLARE_RETRY: Duration = Duration::from_secs(2);

/// Who refreshes a leg's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// The peer: its refreshes are what keeps the session.
    Peer,
    /// The gateway: it sends an UPDATE every half interval.
    Gateway,
}

/// A leg's session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub leg: LegId,
    /// The session interval, in seconds.
    pub interval: u32,
    pub by: By,
    /// When the session is over without another refresh.
    pub expires: Instant,
    /// The gateway refreshes: when its next UPDATE goes (`None` while one is out).
    pub refresh_at: Option<Instant>,
}

/// Whether a peer takes UPDATE, as the `Allow` of its INVITE or 2xx says (no `Allow`: assumed,
/// as RFC 3311 peers that omit it mostly do; a 405 or 501 then ends the gateway's refreshing).
pub(super) fn allows_update(headers: &Headers) -> bool {
    let mut allow = headers.get_all(name::ALLOW).flat_map(|v| v.split(',')).peekable();
    allow.peek().is_none() || allow.any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

impl Call {
    /// A session of `interval` seconds on `leg`, refreshed by `by`, runs from `now`.
    pub(super) fn session_started(&mut self, now: Instant, leg: LegId, interval: u32, by: By) {
        self.sessions.retain(|s| s.leg != leg);
        let refresh_at = (by == By::Gateway).then(|| now + half(interval));
        let expires = now + session_timer::expiry(interval);
        self.sessions.push(Session { leg, interval, by, expires, refresh_at });
    }

    /// The first session of a bridged leg to run out.
    pub(super) fn session_deadline(&self) -> Option<Session> {
        self.sessions
            .iter()
            .filter(|s| self.bridge.contains(&s.leg))
            .min_by_key(|s| s.expires)
            .copied()
    }

    /// When the gateway's next refresh of a bridged leg is due.
    pub(super) fn refresh_deadline(&self) -> Option<Instant> {
        let bridged = self.sessions.iter().filter(|s| self.bridge.contains(&s.leg));
        bridged.filter_map(|s| s.refresh_at).min()
    }

    /// A 2xx we send `leg` that answers its INVITE or its refresh: the session timer's headers
    /// (who refreshes, in the roles of this transaction: the peer sent it, so it is `uac`, the
    /// gateway `uas`) and another interval. Nothing when the leg has no session timer.
    pub(super) fn session_refreshed(&mut self, now: Instant, leg: LegId, out: &mut Response) {
        let Some(&Session { interval, by, .. }) = self.sessions.iter().find(|s| s.leg == leg)
        else {
            return;
        };
        let refresher = match by {
            By::Peer => Refresher::Uac,
            By::Gateway => Refresher::Uas,
        };
        out.headers
            .push(session_timer::SESSION_EXPIRES, session_timer::answer(interval, refresher));
        if by == By::Peer {
            // RFC 4028 §9: a 2xx that names the UAC refresher requires the extension.
            out.headers.push(name::REQUIRE, "timer");
        } else {
            out.headers.push(session_timer::SUPPORTED, "timer");
        }
        self.session_started(now, leg, interval, by);
    }

    /// Session timers that are due: a leg's session over (both legs hung up), or the gateway's
    /// refresh of a leg to send.
    pub(super) fn sessions_due(&mut self, now: Instant) {
        if self.state != State::Answered {
            return;
        }
        if let Some(s) = self.session_deadline().filter(|s| s.expires <= now) {
            return self.session_expired(now, s);
        }
        let due: Vec<LegId> = self
            .sessions
            .iter()
            .filter(|s| self.bridge.contains(&s.leg) && s.refresh_at.is_some_and(|at| at <= now))
            .map(|s| s.leg)
            .collect();
        for leg in due {
            self.send_refresh(now, leg);
        }
    }

    /// A leg's session ran out (RFC 4028 §10): hung up on both legs.
    fn session_expired(&mut self, now: Instant, s: Session) {
        self.sessions.clear();
        let role = self.leg(s.leg).role.as_str();
        let interval = s.interval;
        tracing::info!(session = %self.session_id, role, interval, "session timer expired: no refresh");
        self.hangup_reason = Some(match s.by {
            By::Peer => format!("session timer expired: no refresh from {role} in {interval} s"),
            By::Gateway => {
                format!("session timer expired: {role} accepted no refresh in {interval} s")
            }
        });
        self.hang_up_both(now);
    }

    /// The gateway's refresh of `leg`: an UPDATE without a body naming us the refresher.
    fn send_refresh(&mut self, now: Instant, leg: LegId) {
        let Some(s) = self.sessions.iter_mut().find(|s| s.leg == leg) else { return };
        s.refresh_at = None;
        let interval = s.interval;
        let ua = self.config.user_agent.clone();
        let min_se = self.config.min_session_expires;
        let branch = self.ids.branch();
        let mut update = self.leg_mut(leg).dialog.request(Method::Update, &branch, &ua);
        update.headers.push(session_timer::SUPPORTED, "timer");
        update
            .headers
            .push(session_timer::SESSION_EXPIRES, session_timer::answer(interval, Refresher::Uac));
        update.headers.push(session_timer::MIN_SE, min_se.to_string());
        self.send_client(now, leg, update, Purpose::Refresh);
    }

    /// The answer to the gateway's refresh of `leg`.
    pub(super) fn refresh_answered(&mut self, now: Instant, leg: LegId, resp: &Response) {
        let Some(s) = self.sessions.iter().find(|s| s.leg == leg).copied() else { return };
        let role = self.leg(leg).role.as_str();
        match resp.status {
            100..=199 => {}
            200..=299 => {
                // The peer may change the interval, or take the refresher role (RFC 4028 §7.2).
                let (interval, by) = match session_timer::answered(&resp.headers) {
                    Some((interval, Refresher::Uas)) => (interval, By::Peer),
                    Some((interval, Refresher::Uac)) => (interval, By::Gateway),
                    None => (s.interval, By::Gateway),
                };
                self.session_started(now, leg, interval, by);
            }
            422 => {
                // Our interval is below the peer's Min-SE (§7.3): again at once, with its own.
                let min =
                    resp.headers.get(session_timer::MIN_SE).and_then(|v| v.trim().parse().ok());
                match min.filter(|m: &u32| *m > s.interval) {
                    Some(min) => {
                        self.set_session(leg, |s| s.interval = min);
                        self.send_refresh(now, leg);
                    }
                    None => self.retry_refresh(now, leg, s.interval / 4),
                }
            }
            408 | 481 => {
                tracing::info!(session = %self.session_id, role, status = resp.status, "session refresh failed");
                self.hangup_reason =
                    Some(format!("session refresh failed: {role} answered {}", resp.status));
                self.hang_up_both(now);
            }
            405 | 501 => {
                // The peer takes no UPDATE after all: nothing the gateway can refresh it with.
                tracing::warn!(session = %self.session_id, role, status = resp.status, "the peer refuses UPDATE: no session timer on its leg");
                self.sessions.retain(|s| s.leg != leg);
            }
            491 => self.retry_refresh(now, leg, GLARE_RETRY.as_secs() as u32),
            _ => self.retry_refresh(now, leg, s.interval / 4),
        }
    }

    /// No answer to the gateway's refresh of `leg`, or it could not be sent: the peer is gone
    /// (RFC 4028 §10 treats a timeout as a 408).
    pub(super) fn refresh_failed(&mut self, now: Instant, leg: LegId, transport: bool) {
        if self.state != State::Answered || !self.sessions.iter().any(|s| s.leg == leg) {
            return;
        }
        let role = self.leg(leg).role.as_str();
        let why = if transport { "could not be sent to" } else { "got no answer from" };
        tracing::info!(session = %self.session_id, role, "session refresh {why} the peer");
        self.hangup_reason = Some(format!("session refresh {why} {role}"));
        self.hang_up_both(now);
    }

    fn retry_refresh(&mut self, now: Instant, leg: LegId, after_secs: u32) {
        let at = now + Duration::from_secs(u64::from(after_secs.max(1)));
        self.set_session(leg, |s| s.refresh_at = Some(at.min(s.expires)));
    }

    fn set_session(&mut self, leg: LegId, change: impl FnOnce(&mut Session)) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.leg == leg) {
            change(s);
        }
    }
}

/// Half a session interval: when the refresher refreshes (RFC 4028 §10).
fn half(interval: u32) -> Duration {
    Duration::from_millis(u64::from(interval) * 500)
}
