//! Per-source protection of the carrier-facing listener, before authentication (DESIGN §4 step
//! 1, issue 15 item 3): what a new out-of-dialog request from an address may cost the gateway.
//!
//! Takes: the source address, the kind of request and the time, from the front door
//! (`call::gateway`) for every new out-of-dialog request and every unreadable message on the
//! carrier-facing listener; then the outcome of each digest answer. Gives: admit or
//! [`Dropped`] (the request is dropped unanswered, counted by reason). Pure and sans-IO: no clock
//! (time is passed in), no socket, no logging; one mutex around the state.
//!
//! ```text
//!  request ──► known-good? ──yes──────────────────────────────────────────────► admit
//!                 │no──► locked out? ──► source's bucket ──► global bucket ──► admit
//!                        (LockedOut)      (SourceRate)        (GlobalRate)
//!  credentials for a username under attack, from a source not known-good ──► username bucket
//!  digest answer refused ──► auth_failed: N in the window ─► source locked out for the back-off
//!  call routed (digest verified, or an allowlisted address) ──► trust: known-good source
//! ```
//!
//! - **Token buckets per source**, one per kind ([`RequestKind`]: new INVITEs, OPTIONS, any
//!   other request or unreadable message), each holding two seconds' worth of its rate, refilled
//!   continuously. Over the bucket the request is dropped without an answer: an answer is what a
//!   flood wants from us (reflection, CPU), and a real peer retransmits over UDP.
//! - **A global bucket** for the new requests of every source that is not known-good, so that a
//!   flood spread over many addresses cannot take more than that rate of the front door. A
//!   source spends its own bucket first, so one flooding address never spends the global
//!   tokens the others share.
//! - **Known-good sources skip the buckets** (their trunk's `maxCallsPerSecond` still applies
//!   after routing): a carrier's calls go on during a flood, and a carrier's SBC sending twice
//!   its call rate in INVITEs (the challenge, then the answer) is not held to a per-address
//!   default. Over UDP a source address can be spoofed; a flood that spoofs a carrier's address
//!   skips these limits and meets the trunk's (and its answers go to the carrier).
//! - **The source table is bounded**: an LRU of at most [`GuardSettings::max_sources`]
//!   addresses (the least recently seen is forgotten; a forgotten source starts again with full
//!   buckets, as a new one, which the global cap still bounds). Lockouts and known-good sources
//!   live in tables of their own (bounded too), which an attacker turning the source table over
//!   with many addresses does not touch: it cannot unlock itself that way.
//! - **Lockout**: after [`GuardSettings::auth_failures`] refused digest answers from one address
//!   within [`GuardSettings::auth_window`], every new request from it is dropped unanswered for
//!   [`GuardSettings::auth_lockout`] (silence, not 403: the peer was already told 403 that many
//!   times; silence costs a guessing tool a timeout per try and us nothing). A known-good source
//!   is never locked out: a spoofed UDP source could otherwise lock a carrier out.
//! - **A username under attack**: when [`GuardSettings::username_failures`] answers for one
//!   username fail within the window, from any addresses, answers for it from sources that are
//!   not known-good are verified at most at [`GuardSettings::username_rate`] per second (the
//!   rest dropped unanswered): guessing spread over many addresses is slowed, and the username's
//!   known-good sources go on as before. Only usernames of the routing table are tracked.
//! - **Known-good** sources are those whose call was routed (a verified digest, or an address a
//!   trunk allowlists) within [`TRUST_FOR`].
//!
//! [`LogLimiter`] rate-limits the refusal log lines (one per reason per interval, with the count
//! of what was left out).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a source stays known-good after its last routed call.
pub const TRUST_FOR: Duration = Duration::from_secs(24 * 3600);
/// The most known-good sources remembered (the oldest is forgotten first).
pub const MAX_TRUSTED: usize = 4096;
/// The most usernames tracked for spread guessing (the least recently failed is forgotten).
pub const MAX_USERNAMES: usize = 4096;
/// A bucket holds this many seconds' worth of its rate (the burst it lets through at once).
pub const BURST_SECONDS: u64 = 2;
/// One request's worth of tokens, in billionths.
const TOKEN: u64 = 1_000_000_000;

/// What kind of new request a bucket counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// An INVITE outside a dialog (a new call).
    Invite,
    /// An OPTIONS outside a dialog (a keep-alive, or a scanner's probe).
    Options,
    /// Any other request outside a dialog, or a message that cannot be read.
    Other,
}

/// Why a request was dropped unanswered: the `reason` label of
/// `trunkline_guard_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// The source is over its bucket for this kind.
    SourceRate(RequestKind),
    /// The sources that are not known-good are over the global cap together.
    GlobalRate,
    /// The source is locked out after too many refused digest answers.
    LockedOut,
    /// The username is under attack and its bucket for unknown sources is empty.
    UsernameThrottled,
}

impl Dropped {
    pub const ALL: [Dropped; 6] = [
        Dropped::SourceRate(RequestKind::Invite),
        Dropped::SourceRate(RequestKind::Options),
        Dropped::SourceRate(RequestKind::Other),
        Dropped::GlobalRate,
        Dropped::LockedOut,
        Dropped::UsernameThrottled,
    ];

    /// The metric label and the name in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::SourceRate(RequestKind::Invite) => "source_invite_rate",
            Dropped::SourceRate(RequestKind::Options) => "source_options_rate",
            Dropped::SourceRate(RequestKind::Other) => "source_request_rate",
            Dropped::GlobalRate => "global_rate",
            Dropped::LockedOut => "locked_out",
            Dropped::UsernameThrottled => "username_throttled",
        }
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds (the flags of `trunkline run`/`gateway`; defaults in [`Default`]). A rate of 0
/// turns that bucket off (everything passes); a failure count of 0 turns that lockout off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSettings {
    /// New INVITEs per second per source (`--source-invite-rate`).
    pub invite_rate: u32,
    /// OPTIONS per second per source (`--source-options-rate`).
    pub options_rate: u32,
    /// Other new requests and unreadable messages per second per source
    /// (`--source-request-rate`).
    pub other_rate: u32,
    /// New requests per second from all sources that are not known-good (`--global-request-rate`).
    pub global_rate: u32,
    /// Sources tracked at most (`--max-sources`).
    pub max_sources: usize,
    /// Refused digest answers from one address that lock it out (`--auth-failures`).
    pub auth_failures: u32,
    /// The window those failures are counted in (`--auth-failure-window`).
    pub auth_window: Duration,
    /// How long a locked-out address is ignored (`--auth-lockout`).
    pub auth_lockout: Duration,
    /// Refused answers for one username within the window, from any address, that put it under
    /// attack (`--username-failures`).
    pub username_failures: u32,
    /// Answers per second verified for a username under attack from sources that are not
    /// known-good (`--username-attempt-rate`).
    pub username_rate: u32,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            invite_rate: 50,
            options_rate: 10,
            other_rate: 10,
            global_rate: 2000,
            max_sources: 65_536,
            auth_failures: 5,
            auth_window: Duration::from_secs(60),
            auth_lockout: Duration::from_secs(300),
            username_failures: 20,
            username_rate: 1,
        }
    }
}

/// A source locked out by [`Guard::auth_failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub source: IpAddr,
    pub until: Instant,
}

/// The guard of one gateway, shared by every message the front door handles.
#[derive(Debug)]
pub struct Guard {
    settings: GuardSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    sources: Lru<SourceState>,
    global: Bucket,
    locked: HashMap<IpAddr, Instant>,
    trusted: HashMap<IpAddr, Instant>,
    usernames: HashMap<String, UserState>,
}

#[derive(Debug)]
struct SourceState {
    invite: Bucket,
    options: Bucket,
    other: Bucket,
    failures: Window,
}

impl SourceState {
    fn new(s: &GuardSettings, now: Instant) -> SourceState {
        SourceState {
            invite: Bucket::full(s.invite_rate, now),
            options: Bucket::full(s.options_rate, now),
            other: Bucket::full(s.other_rate, now),
            failures: Window::default(),
        }
    }
}

#[derive(Debug)]
struct UserState {
    failures: Window,
    bucket: Bucket,
}

/// Failures counted from the first one of a window.
#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    count: u32,
}

impl Window {
    /// Counts one failure at `now`; gives the count in the current window.
    fn add(&mut self, now: Instant, window: Duration) -> u32 {
        match self.start {
            Some(start) if now.saturating_duration_since(start) <= window => {
                self.count = self.count.saturating_add(1)
            }
            _ => {
                self.start = Some(now);
                self.count = 1;
            }
        }
        self.count
    }

    fn count(&self, now: Instant, window: Duration) -> u32 {
        match self.start {
            Some(start) if now.saturating_duration_since(start) <= window => self.count,
            _ => 0,
        }
    }

    fn reset(&mut self) {
        *self = Window::default();
    }
}

/// A token bucket of `rate` per second holding [`BURST_SECONDS`] of it, in billionths of a token.
#[derive(Debug)]
struct Bucket {
    rate: u32,
    nanotokens: u64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Bucket {
        Bucket { rate, nanotokens: Bucket::capacity(rate), at: now }
    }

    fn capacity(rate: u32) -> u64 {
        u64::from(rate).saturating_mul(BURST_SECONDS).saturating_mul(TOKEN)
    }

    /// Takes one token if there is one; a rate of 0 is no limit.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at);
        let refill = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.rate));
        self.nanotokens = self.nanotokens.saturating_add(refill).min(Bucket::capacity(self.rate));
        self.at = self.at.max(now);
        if self.nanotokens >= TOKEN {
            self.nanotokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

impl Guard {
    pub fn new(settings: GuardSettings) -> Guard {
        let now = Instant::now();
        let inner = Inner {
            sources: Lru::new(settings.max_sources.max(1)),
            global: Bucket::full(settings.global_rate, now),
            locked: HashMap::new(),
            trusted: HashMap::new(),
            usernames: HashMap::new(),
        };
        Guard { settings, inner: Mutex::new(inner) }
    }

    pub fn settings(&self) -> &GuardSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every statement leaves the tables consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new request of `kind` from `source` at `now`: admitted (a token taken), or dropped.
    pub fn admit(&self, now: Instant, source: IpAddr, kind: RequestKind) -> Result<(), Dropped> {
        let source = source.to_canonical();
        let s = &self.settings;
        let mut inner = self.lock();
        if inner.is_trusted(now, source) {
            return Ok(());
        }
        if inner.is_locked(now, source) {
            return Err(Dropped::LockedOut);
        }
        // The source's own bucket first: a flood from one address spends its own tokens, never
        // the global ones that the other sources share.
        let state = inner.sources.get_or_insert_with(source, || SourceState::new(s, now));
        let bucket = match kind {
            RequestKind::Invite => &mut state.invite,
            RequestKind::Options => &mut state.options,
            RequestKind::Other => &mut state.other,
        };
        if !bucket.take(now) {
            return Err(Dropped::SourceRate(kind));
        }
        if !inner.global.take(now) {
            return Err(Dropped::GlobalRate);
        }
        Ok(())
    }

    /// Digest credentials for `username` (a username of the routing table) from `source`: to be
    /// verified, or dropped because the username is under attack and `source` is not known-good.
    pub fn admit_answer(
        &self,
        now: Instant,
        source: IpAddr,
        username: &str,
    ) -> Result<(), Dropped> {
        let source = source.to_canonical();
        let s = &self.settings;
        let mut inner = self.lock();
        if s.username_failures == 0 || inner.is_trusted(now, source) {
            return Ok(());
        }
        let Some(user) = inner.usernames.get_mut(username) else { return Ok(()) };
        if user.failures.count(now, s.auth_window) < s.username_failures {
            return Ok(());
        }
        if user.bucket.take(now) { Ok(()) } else { Err(Dropped::UsernameThrottled) }
    }

    /// A digest answer from `source` was refused (wrong, replayed, malformed, for an unknown
    /// user or another URI). `username` is given when it is one of the routing table's. Gives
    /// the lockout when this failure locks `source` out.
    pub fn auth_failed(
        &self,
        now: Instant,
        source: IpAddr,
        username: Option<&str>,
    ) -> Option<Lockout> {
        let source = source.to_canonical();
        let s = &self.settings;
        let mut inner = self.lock();
        if let Some(username) = username
            && s.username_failures > 0
        {
            if !inner.usernames.contains_key(username) && inner.usernames.len() >= MAX_USERNAMES {
                let oldest = inner
                    .usernames
                    .iter()
                    .min_by_key(|(_, u)| u.failures.start)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    inner.usernames.remove(&oldest);
                }
            }
            let user = inner.usernames.entry(username.to_string()).or_insert_with(|| UserState {
                failures: Window::default(),
                bucket: Bucket::full(s.username_rate, now),
            });
            user.failures.add(now, s.auth_window);
        }
        if s.auth_failures == 0 || inner.is_trusted(now, source) {
            return None;
        }
        let count = match inner.sources.get_mut(&source) {
            Some(state) => state.failures.add(now, s.auth_window),
            // Forgotten since its request was admitted: count from here.
            None => {
                let mut failures = Window::default();
                let count = failures.add(now, s.auth_window);
                inner.sources.get_or_insert_with(source, || SourceState {
                    failures,
                    ..SourceState::new(s, now)
                });
                count
            }
        };
        if count < s.auth_failures {
            return None;
        }
        if let Some(state) = inner.sources.get_mut(&source) {
            state.failures.reset();
        }
        let until = now + s.auth_lockout;
        inner.lock_out(now, source, until, s.max_sources.max(1));
        Some(Lockout { source, until })
    }

    /// A call from `source` was routed (its digest verified, or a trunk allowlists it): the
    /// source is known-good for [`TRUST_FOR`], its failures are forgotten.
    pub fn trust(&self, now: Instant, source: IpAddr) {
        let source = source.to_canonical();
        let mut inner = self.lock();
        if !inner.trusted.contains_key(&source) && inner.trusted.len() >= MAX_TRUSTED {
            let oldest = inner.trusted.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                inner.trusted.remove(&oldest);
            }
        }
        inner.trusted.insert(source, now);
        inner.locked.remove(&source);
        if let Some(state) = inner.sources.get_mut(&source) {
            state.failures.reset();
        }
    }

    /// Whether `source` is locked out at `now`.
    pub fn is_locked_out(&self, now: Instant, source: IpAddr) -> bool {
        self.lock().is_locked(now, source.to_canonical())
    }

    /// Sources in the table (at most `max_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.lock().sources.len()
    }
}

impl Inner {
    fn is_trusted(&self, now: Instant, source: IpAddr) -> bool {
        self.trusted.get(&source).is_some_and(|at| now.saturating_duration_since(*at) < TRUST_FOR)
    }

    fn is_locked(&self, now: Instant, source: IpAddr) -> bool {
        self.locked.get(&source).is_some_and(|until| now < *until)
    }

    /// Locks `source` out until `until`; a full table first drops the ended lockouts, then the
    /// one ending soonest.
    fn lock_out(&mut self, now: Instant, source: IpAddr, until: Instant, cap: usize) {
        if !self.locked.contains_key(&source) && self.locked.len() >= cap {
            self.locked.retain(|_, end| now < *end);
            if self.locked.len() >= cap {
                let soonest = self.locked.iter().min_by_key(|(_, end)| **end).map(|(ip, _)| *ip);
                if let Some(soonest) = soonest {
                    self.locked.remove(&soonest);
                }
            }
        }
        self.locked.insert(source, until);
    }
}

/// A map of at most `cap` addresses that forgets the least recently used one. Every use pushes
/// a stamp on `order`; stale stamps are skipped when evicting, and `order` is compacted when it
/// grows past four times the cap (amortised O(1) per use).
#[derive(Debug)]
struct Lru<V> {
    cap: usize,
    map: HashMap<IpAddr, (V, u64)>,
    order: VecDeque<(IpAddr, u64)>,
    next: u64,
}

impl<V> Lru<V> {
    fn new(cap: usize) -> Lru<V> {
        Lru { cap, map: HashMap::new(), order: VecDeque::new(), next: 0 }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn stamp(&mut self, key: IpAddr) -> u64 {
        let stamp = self.next;
        self.next += 1;
        self.order.push_back((key, stamp));
        if self.order.len() > self.cap.saturating_mul(4).max(16) {
            let map = &self.map;
            self.order.retain(|(k, s)| {
                (*s == stamp && *k == key) || map.get(k).is_some_and(|e| e.1 == *s)
            });
        }
        stamp
    }

    fn get_mut(&mut self, key: &IpAddr) -> Option<&mut V> {
        if !self.map.contains_key(key) {
            return None;
        }
        let stamp = self.stamp(*key);
        let entry = self.map.get_mut(key)?;
        entry.1 = stamp;
        Some(&mut entry.0)
    }

    fn get_or_insert_with(&mut self, key: IpAddr, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                let Some((old, stamp)) = self.order.pop_front() else { break };
                if self.map.get(&old).is_some_and(|e| e.1 == stamp) {
                    self.map.remove(&old);
                }
            }
            self.map.insert(key, (make(), 0));
        }
        let stamp = self.stamp(key);
        let entry = self.map.get_mut(&key).expect("inserted above when missing");
        entry.1 = stamp;
        &mut entry.0
    }
}

/// At most one log line per reason per interval: [`LogLimiter::allow`] says whether to write
/// one now, and how many were left out since the last.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    lines: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter { every, lines: Mutex::new(HashMap::new()) }
    }

    /// `Some(suppressed)` when a line for `reason` may be written at `now` (the count of lines
    /// left out since the last one); `None` when this one is left out (and counted).
    pub fn allow(&self, now: Instant, reason: &'static str) -> Option<u64> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        match lines.get_mut(reason) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let left_out = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(left_out)
            }
            None => {
                lines.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests;
