//! Per-trunk call admission: `maxConcurrentCalls` and `maxCallsPerSecond` (DESIGN §4, the
//! "capacity" step: a call over a limit gets `503 Service Unavailable` with `Retry-After`).
//!
//! Takes: a trunk key, the trunk's current [`Limits`] and the time, once per new call (inbound
//! INVITE after the trunk and number checks, or outbound origination). Gives: a [`CallPermit`]
//! that holds one concurrent-call slot until it drops, or [`Refused`] with the limit that was hit
//! and the `Retry-After` to send. The B2BUA keeps the permit in the call task, so a call that ends
//! in any way (BYE, error, panic, task cancelled) frees its slot.
//!
//! - **Concurrency** counts the permits alive on the trunk. Refused at `active >= max`;
//!   `Retry-After` is the fixed [`CONCURRENCY_RETRY_AFTER`] (how long a slot takes to free cannot
//!   be known).
//! - **Calls per second** is a token bucket holding up to one second's worth of calls (so bursts
//!   of up to the limit pass at once), refilled continuously at the limit's rate. Tokens are
//!   counted in billionths, so time arithmetic is exact. `Retry-After` is the time until the next
//!   token, rounded up to whole seconds, at least 1 (with a rate of at least 1/s it is always 1).
//! - A limit of 0 (the CRD schema forbids it, the model type does not) admits nothing; its
//!   `Retry-After` is [`CONCURRENCY_RETRY_AFTER`].
//! - Limits are taken from each call: after a config reload the new ones apply to the next call.
//!   Calls in progress are never cut; when a limit is lowered below the calls up, new calls are
//!   refused until enough end.
//! - A refused call consumes neither a slot nor a token.
//!
//! **Fleet-wide limits: each pod enforces its share.** In a cluster the limits are the fleet's,
//! not each pod's: the operator publishes the names of the gateway pods it sees Ready
//! (`source::bundle`, key `fleet-members` of the credentials Secret every gateway watches), the
//! runtime turns them into this pod's [`FleetPosition`] (its index in the sorted list, and the
//! count) and stores it in the [`FleetShare`] that [`Admission`] reads on every admission. No
//! shared store and no request per call: a call is admitted on local state only.
//! - Pod `i` of `N` gets `⌊L/N⌋`, plus one when its rank is below `L mod N`, so the shares of the
//!   fleet sum to exactly `L` ([`FleetPosition::share`]). The rank is the index rotated by a hash
//!   of the trunk key (FNV-1a, the same on every pod), so which pods hold the remainder differs
//!   from trunk to trunk instead of always being the first pods.
//! - Calls per second likewise: a token bucket refilled at the pod's share of the rate, holding
//!   up to that share (one second's worth).
//! - **`L < N`**: `N − L` pods get a share of 0 and refuse every call of that trunk (503); the
//!   limit is never exceeded. The alternative, a share of at least 1 for everyone, would let the
//!   fleet admit up to `N` calls for a limit of `L`: a `maxConcurrentCalls` that is not a maximum.
//!   Refusing below the limit is the error this scheme already has when traffic is uneven, so
//!   it stays the only one.
//! - A pod missing from the list (it just started, or the operator has not seen it Ready yet)
//!   counts itself as one more, index `N` of `N + 1`. No list at all (`trunkline run`, or an
//!   operator that publishes none) is [`FleetPosition::ALONE`]: the whole limit.
//! - **Error bound.** Over-admission only while the pods disagree on the list: after a pod
//!   joins, until every pod has seen the new list (the operator's pod watch plus the gateways'
//!   Secret watch, normally well under a second), the fleet admits at most `L` plus the
//!   newcomer's share; after a pod leaves, the calls still up on it (at most its share) are on
//!   top of the survivors' new shares until they end. Under-admission when traffic is uneven
//!   across pods: a pod refuses at its share while another has room, so the fleet may refuse
//!   with fewer than `L` calls up (at worst it admits `min(L, share × pods receiving calls)`).
//!
//! When the share changes, a pod with more calls up than its new share refuses new calls until
//! enough end (as for a lowered limit), and its bucket is clamped to the new share.
//!
//! The trunk key must tell trunks apart across kinds: an InboundTrunk and an OutboundTrunk may
//! share a `namespace/name`, so callers that limit both pass e.g. `inbound:ns/name`. State of a
//! trunk with no call up and no attempt for [`IDLE_AFTER`] is dropped (bounded memory); that is
//! invisible, since its bucket is full by then and a new state starts full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::model::Limits;
use crate::config::refusal::RefusalRule;

/// `Retry-After` for a call refused by the concurrency limit (or by a limit of 0).
pub const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A trunk's state is dropped after this long with no call up and no attempt.
pub const IDLE_AFTER: Duration = Duration::from_secs(60);
/// How often idle states are looked for (at most once per this interval, on an admission).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// One call's worth of tokens, in billionths of a token.
const TOKEN: u64 = 1_000_000_000;

/// The limit that refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    ConcurrentCalls,
    CallsPerSecond,
}

impl LimitKind {
    /// The refusal a call gets at this limit (its label: the CRD field's name in snake case).
    pub fn rule(self) -> RefusalRule {
        match self {
            LimitKind::ConcurrentCalls => RefusalRule::ConcurrencyLimit,
            LimitKind::CallsPerSecond => RefusalRule::RateLimit,
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.rule().as_str())
    }
}

/// A call over one of its trunk's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trunk at its {limit} limit, retry after {}s", retry_after.as_secs())]
pub struct Refused {
    pub limit: LimitKind,
    /// Whole seconds, at least one: the value of the `Retry-After` header.
    pub retry_after: Duration,
}

impl Refused {
    /// The SIP answer: `503 Service Unavailable` (with `Retry-After`).
    pub fn status_code(&self) -> u16 {
        503
    }
}

/// Where this pod stands in the fleet the limits are divided over: its index in the sorted
/// member list and the number of members (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetPosition {
    index: u32,
    members: u32,
}

impl FleetPosition {
    /// A process alone (`trunkline run`, or no member list published): the whole limits.
    pub const ALONE: FleetPosition = FleetPosition { index: 0, members: 1 };

    /// Pod `index` of `members`; `None` unless `index < members`.
    pub fn new(index: u32, members: u32) -> Option<FleetPosition> {
        (index < members).then_some(FleetPosition { index, members })
    }

    /// The position of the pod named `me` among `members` (the operator's list: sorted, no
    /// duplicates; sorted again here all the same). Missing from it: one more, last.
    pub fn of(me: &str, members: &[String]) -> FleetPosition {
        let mut sorted: Vec<&str> = members.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match sorted.binary_search(&me) {
            Ok(i) => FleetPosition { index: count(i), members: count(sorted.len()) },
            Err(_) => {
                let members = count(sorted.len()).saturating_add(1);
                FleetPosition { index: members - 1, members }
            }
        }
    }

    /// This pod's index, from 0.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many pods the limits are divided over (at least 1).
    pub fn members(self) -> u32 {
        self.members
    }

    /// This pod's share of `limit` on the trunk `trunk`: `⌊limit/N⌋`, plus one when the pod's
    /// rank (its index rotated by [`trunk_offset`]) is below `limit mod N`. Over the `N`
    /// positions the shares sum to exactly `limit`.
    pub fn share(self, limit: u32, trunk: &str) -> u32 {
        let n = self.members.max(1);
        if n == 1 {
            return limit;
        }
        let (n64, offset) = (u64::from(n), u64::from(trunk_offset(trunk) % n));
        // (index - offset) mod n, in 64 bits: no overflow.
        let rank = (u64::from(self.index) + n64 - offset) % n64;
        limit / n + u32::from(rank < u64::from(limit % n))
    }

    /// `limits` with each call limit cut to this pod's share (the call duration is not shared).
    pub fn limits(self, limits: Limits, trunk: &str) -> Limits {
        Limits {
            max_concurrent_calls: limits.max_concurrent_calls.map(|l| self.share(l, trunk)),
            max_calls_per_second: limits.max_calls_per_second.map(|l| self.share(l, trunk)),
            ..limits
        }
    }
}

impl Default for FleetPosition {
    fn default() -> Self {
        FleetPosition::ALONE
    }
}

impl std::fmt::Display for FleetPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.index, self.members)
    }
}

/// Which pod of the fleet takes the first remainder slot of `trunk`: FNV-1a (64-bit) of the
/// trunk key, so every pod of the fleet, whatever its build, computes the same.
pub fn trunk_offset(trunk: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in trunk.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Folded to 32 bits; truncation is the intent.
    (hash ^ (hash >> 32)) as u32
}

/// This pod's [`FleetPosition`], shared between whoever learns the membership (the runtime,
/// from the spec source) and the [`Admission`] that reads it on every call. One atomic word:
/// a call never waits for a membership change.
#[derive(Debug)]
pub struct FleetShare(AtomicU64);

impl FleetShare {
    pub fn new(position: FleetPosition) -> Arc<FleetShare> {
        Arc::new(FleetShare(AtomicU64::new(pack(position))))
    }

    pub fn set(&self, position: FleetPosition) {
        self.0.store(pack(position), Ordering::Relaxed);
    }

    pub fn get(&self) -> FleetPosition {
        let word = self.0.load(Ordering::Relaxed);
        // Only `pack` writes the word: the halves are a valid position.
        let (index, members) = ((word >> 32) as u32, word as u32);
        FleetPosition::new(index, members).unwrap_or(FleetPosition::ALONE)
    }
}

impl Default for FleetShare {
    fn default() -> Self {
        FleetShare(AtomicU64::new(pack(FleetPosition::ALONE)))
    }
}

fn pack(position: FleetPosition) -> u64 {
    (u64::from(position.index) << 32) | u64::from(position.members)
}

/// Admission state of every trunk seen recently, shared by all call tasks of the gateway.
#[derive(Debug, Default)]
pub struct Admission {
    inner: Mutex<Inner>,
    /// This pod's place in the fleet: the limits of each call are cut to its share.
    fleet: Arc<FleetShare>,
}

#[derive(Debug, Default)]
struct Inner {
    trunks: HashMap<Arc<str>, TrunkState>,
    last_prune: Option<Instant>,
}

#[derive(Debug)]
struct TrunkState {
    /// Permits alive.
    active: u32,
    /// Present while the trunk has a calls-per-second limit.
    bucket: Option<Bucket>,
    /// The last admission attempt.
    last_seen: Instant,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens in billionths, at most `rate × TOKEN`.
    nanotokens: u64,
    /// When `nanotokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Bucket {
        Bucket { nanotokens: capacity(rate), at: now }
    }

    /// Adds the tokens earned since the last update at `rate` per second, up to the capacity
    /// (which also clamps a bucket whose limit was just lowered).
    fn refill(&mut self, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let earned = elapsed.saturating_mul(u128::from(rate));
        let cap = capacity(rate);
        let total = u128::from(self.nanotokens).saturating_add(earned).min(u128::from(cap));
        self.nanotokens = u64::try_from(total).unwrap_or(cap);
        // Never move backwards when an earlier `now` is passed.
        if now > self.at {
            self.at = now;
        }
    }

    /// The time until one whole token is there, at `rate` (> 0) per second.
    fn wait_for_token(&self, rate: u32) -> Duration {
        let missing = TOKEN.saturating_sub(self.nanotokens);
        Duration::from_nanos(missing.div_ceil(u64::from(rate)))
    }
}

/// One second's worth of tokens at `rate`, in billionths (fits: `u32::MAX × 10⁹ < u64::MAX`).
fn capacity(rate: u32) -> u64 {
    u64::from(rate) * TOKEN
}

/// Rounds up to whole seconds, at least one (the `Retry-After` header has second resolution).
fn whole_seconds(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

impl Admission {
    /// Admission for a process alone: the whole limits.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Admission for a pod of a fleet: the limits cut to the share `fleet` says, read on every
    /// call (so a membership change applies to the next call).
    pub fn with_fleet(fleet: Arc<FleetShare>) -> Arc<Self> {
        Arc::new(Admission { inner: Mutex::default(), fleet })
    }

    /// Tries to admit a call on `trunk` under `limits` (the trunk's, for the whole fleet: cut
    /// here to this pod's share) at `now` (monotonic; passed in so tests drive time by hand).
    /// Concurrency is checked first, then the rate; a refused call changes neither.
    pub fn try_admit(
        self: &Arc<Self>,
        trunk: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<CallPermit, Refused> {
        let limits = self.fleet.get().limits(limits, trunk);
        let mut inner = self.lock();
        inner.prune(now);
        let key: Arc<str> = match inner.trunks.get_key_value(trunk) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(trunk),
        };
        let state = inner.trunks.entry(Arc::clone(&key)).or_insert_with(|| TrunkState {
            active: 0,
            bucket: None,
            last_seen: now,
        });
        state.last_seen = now;

        if let Some(max) = limits.max_concurrent_calls
            && state.active >= max
        {
            return Err(Refused {
                limit: LimitKind::ConcurrentCalls,
                retry_after: CONCURRENCY_RETRY_AFTER,
            });
        }

        match limits.max_calls_per_second {
            None => state.bucket = None,
            Some(0) => {
                return Err(Refused {
                    limit: LimitKind::CallsPerSecond,
                    retry_after: CONCURRENCY_RETRY_AFTER,
                });
            }
            Some(rate) => {
                let bucket = state.bucket.get_or_insert_with(|| Bucket::full(rate, now));
                bucket.refill(rate, now);
                if bucket.nanotokens < TOKEN {
                    return Err(Refused {
                        limit: LimitKind::CallsPerSecond,
                        retry_after: whole_seconds(bucket.wait_for_token(rate)),
                    });
                }
                bucket.nanotokens -= TOKEN;
            }
        }

        state.active = state.active.saturating_add(1);
        Ok(CallPermit { admission: Arc::clone(self), trunk: key })
    }

    /// Calls admitted on `trunk` whose permit is still alive.
    pub fn active_calls(&self, trunk: &str) -> u32 {
        self.lock().trunks.get(trunk).map_or(0, |s| s.active)
    }

    fn release(&self, trunk: &str) {
        if let Some(state) = self.lock().trunks.get_mut(trunk) {
            state.active = state.active.saturating_sub(1);
        }
    }

    /// Nothing under this lock can leave the state half-updated (each change is one field
    /// write), so a lock poisoned by a panicking thread is used as is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Drops idle trunks, at most once per [`PRUNE_EVERY`]. A state with calls up is kept.
    fn prune(&mut self, now: Instant) {
        match self.last_prune {
            None => self.last_prune = Some(now),
            Some(last) if now.saturating_duration_since(last) >= PRUNE_EVERY => {
                self.trunks.retain(|_, s| {
                    s.active > 0 || now.saturating_duration_since(s.last_seen) < IDLE_AFTER
                });
                self.last_prune = Some(now);
            }
            Some(_) => {}
        }
    }
}

/// One concurrent-call slot on a trunk, freed when dropped.
#[derive(Debug)]
#[must_use = "the call's slot is freed as soon as the permit drops"]
pub struct CallPermit {
    admission: Arc<Admission>,
    trunk: Arc<str>,
}

impl CallPermit {
    /// The trunk key the permit was taken on.
    pub fn trunk(&self) -> &str {
        &self.trunk
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.admission.release(&self.trunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "default/carrier";

    fn concurrent(n: u32) -> Limits {
        Limits { max_concurrent_calls: Some(n), ..Limits::default() }
    }

    fn per_second(n: u32) -> Limits {
        Limits { max_calls_per_second: Some(n), ..Limits::default() }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn concurrency_limit_refuses_the_next_call_and_admits_again_after_a_permit_drops() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut permits: Vec<_> =
            (0..3).map(|_| a.try_admit(T, concurrent(3), t0).expect("under the limit")).collect();
        let refused = a.try_admit(T, concurrent(3), t0).expect_err("fourth call");
        assert_eq!(refused.limit, LimitKind::ConcurrentCalls);
        assert_eq!(a.active_calls(T), 3);

        permits.pop();
        assert_eq!(a.active_calls(T), 2);
        let again = a.try_admit(T, concurrent(3), t0).expect("a slot is free");
        assert_eq!(again.trunk(), T);
        assert_eq!(a.active_calls(T), 3);
    }

    #[test]
    fn calls_per_second_refuses_the_eleventh_call_at_ten_per_second_and_admits_after_100_ms() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _permits: Vec<_> =
            (0..10).map(|_| a.try_admit(T, per_second(10), t0).expect("the burst")).collect();
        let refused = a.try_admit(T, per_second(10), t0).expect_err("eleventh call");
        assert_eq!(refused.limit, LimitKind::CallsPerSecond);
        assert!(a.try_admit(T, per_second(10), t0 + ms(99)).is_err());
        let _p = a.try_admit(T, per_second(10), t0 + ms(100)).expect("one token refilled");
        assert!(a.try_admit(T, per_second(10), t0 + ms(100)).is_err());
    }

    #[test]
    fn the_bucket_holds_at_most_one_seconds_worth() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _first = a.try_admit(T, per_second(2), t0).expect("first");
        let later = t0 + Duration::from_secs(3600);
        let _burst: Vec<_> =
            (0..2).map(|_| a.try_admit(T, per_second(2), later).expect("refilled")).collect();
        assert!(a.try_admit(T, per_second(2), later).is_err());
    }

    #[test]
    fn retry_after_is_fixed_for_concurrency_and_the_next_token_rounded_up_for_the_rate() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _held = a.try_admit("ns/c", concurrent(1), t0).expect("first");
        let refused = a.try_admit("ns/c", concurrent(1), t0).expect_err("full");
        assert_eq!(refused.retry_after, CONCURRENCY_RETRY_AFTER);
        assert_eq!(refused.status_code(), 503);

        let _p = a.try_admit("ns/r", per_second(1), t0).expect("first");
        // The next token is 1 s away, then 0.5 s: both are sent as one whole second.
        let at_once = a.try_admit("ns/r", per_second(1), t0).expect_err("empty bucket");
        assert_eq!(at_once.retry_after, Duration::from_secs(1));
        let half = a.try_admit("ns/r", per_second(1), t0 + ms(500)).expect_err("half a token");
        assert_eq!(half.retry_after, Duration::from_secs(1));
        assert_eq!(half.to_string(), "trunk at its max_calls_per_second limit, retry after 1s");
    }

    #[test]
    fn whole_seconds_rounds_up_with_a_minimum_of_one() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(whole_seconds(ms(1)), Duration::from_secs(1));
        assert_eq!(whole_seconds(ms(1000)), Duration::from_secs(1));
        assert_eq!(whole_seconds(ms(1001)), Duration::from_secs(2));
    }

    #[test]
    fn with_no_limits_every_call_is_admitted() {
        let a = Admission::new();
        let t0 = Instant::now();
        let permits: Vec<_> =
            (0..10_000).map(|_| a.try_admit(T, Limits::default(), t0).expect("no limit")).collect();
        assert_eq!(a.active_calls(T), 10_000);
        drop(permits);
        assert_eq!(a.active_calls(T), 0);
    }

    #[test]
    fn limits_lowered_while_calls_are_up_refuse_new_calls_until_below() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut permits: Vec<_> =
            (0..5).map(|_| a.try_admit(T, concurrent(5), t0).expect("under 5")).collect();
        assert!(a.try_admit(T, concurrent(2), t0).is_err(), "5 up, limit now 2");
        permits.truncate(2);
        assert!(a.try_admit(T, concurrent(2), t0).is_err(), "2 up is still at the limit");
        permits.pop();
        let _p = a.try_admit(T, concurrent(2), t0).expect("1 up, below 2");
        assert_eq!(a.active_calls(T), 2);
    }

    #[test]
    fn a_lowered_rate_clamps_the_bucket() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _p = a.try_admit(T, per_second(100), t0).expect("first");
        let _q = a.try_admit(T, per_second(2), t0).expect("clamped to 2 tokens, one left");
        let _r = a.try_admit(T, per_second(2), t0).expect("the second token");
        assert!(a.try_admit(T, per_second(2), t0).is_err());
    }

    #[test]
    fn a_refused_call_takes_neither_a_slot_nor_a_token() {
        let a = Admission::new();
        let t0 = Instant::now();
        let both = Limits {
            max_concurrent_calls: Some(1),
            max_calls_per_second: Some(1),
            ..Limits::default()
        };
        let held = a.try_admit(T, both, t0).expect("first");
        let r = a.try_admit(T, both, t0 + Duration::from_secs(2)).expect_err("slot taken");
        assert_eq!(r.limit, LimitKind::ConcurrentCalls);
        drop(held);
        // The refused attempt did not spend the refilled token.
        let _p = a.try_admit(T, both, t0 + Duration::from_secs(2)).expect("token and slot free");

        let rate_only = per_second(1);
        let _x = a.try_admit("ns/other", rate_only, t0).expect("first");
        assert!(a.try_admit("ns/other", rate_only, t0).is_err());
        assert_eq!(a.active_calls("ns/other"), 1);
    }

    #[test]
    fn a_zero_limit_admits_nothing() {
        let a = Admission::new();
        let t0 = Instant::now();
        assert_eq!(
            a.try_admit(T, concurrent(0), t0).expect_err("zero").limit,
            LimitKind::ConcurrentCalls
        );
        let r = a.try_admit(T, per_second(0), t0).expect_err("zero");
        assert_eq!((r.limit, r.retry_after), (LimitKind::CallsPerSecond, CONCURRENCY_RETRY_AFTER));
        assert_eq!(a.active_calls(T), 0);
    }

    #[test]
    fn trunks_are_counted_apart() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _x = a.try_admit("inbound:ns/t", concurrent(1), t0).expect("inbound");
        let _y = a.try_admit("outbound:ns/t", concurrent(1), t0).expect("outbound, same name");
        assert!(a.try_admit("inbound:ns/t", concurrent(1), t0).is_err());
    }

    #[test]
    fn idle_trunks_are_dropped_and_trunks_with_calls_up_are_kept() {
        let a = Admission::new();
        let t0 = Instant::now();
        let held = a.try_admit("ns/busy", concurrent(1), t0).expect("busy");
        drop(a.try_admit("ns/idle", per_second(1), t0).expect("idle"));
        assert_eq!(a.lock().trunks.len(), 2);

        let later = t0 + IDLE_AFTER + PRUNE_EVERY;
        drop(a.try_admit("ns/third", Limits::default(), later).expect("third"));
        let trunks: Vec<String> = a.lock().trunks.keys().map(|k| k.to_string()).collect();
        assert!(trunks.contains(&"ns/busy".to_owned()));
        assert!(!trunks.contains(&"ns/idle".to_owned()));
        assert_eq!(a.active_calls("ns/busy"), 1);
        drop(held);
        assert_eq!(a.active_calls("ns/busy"), 0);
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_pods_position_is_its_place_in_the_sorted_list_and_a_missing_pod_is_one_more() {
        let fleet = members(&["gw-c", "gw-a", "gw-b"]);
        assert_eq!(FleetPosition::of("gw-a", &fleet), FleetPosition::new(0, 3).unwrap());
        assert_eq!(FleetPosition::of("gw-c", &fleet), FleetPosition::new(2, 3).unwrap());
        let newcomer = FleetPosition::of("gw-d", &fleet);
        assert_eq!((newcomer.index(), newcomer.members()), (3, 4));
        assert_eq!(FleetPosition::of("gw-a", &[]), FleetPosition::ALONE);
        assert_eq!(FleetPosition::of("gw-a", &members(&["gw-a", "gw-a"])), FleetPosition::ALONE);
        assert_eq!(FleetPosition::new(2, 2), None);
        assert_eq!(FleetPosition::new(0, 0), None);
    }

    #[test]
    fn alone_a_pod_has_the_whole_limit() {
        for limit in [0, 1, 7, u32::MAX] {
            assert_eq!(FleetPosition::ALONE.share(limit, T), limit);
        }
    }

    #[test]
    fn two_pods_share_a_limit_of_two_one_each_and_of_three_two_and_one() {
        let [a, b] = [0, 1].map(|i| FleetPosition::new(i, 2).unwrap());
        assert_eq!((a.share(2, T), b.share(2, T)), (1, 1));
        let mut three = [a.share(3, T), b.share(3, T)];
        three.sort_unstable();
        assert_eq!(three, [1, 2]);
    }

    #[test]
    fn with_fewer_calls_than_pods_some_pods_get_none_and_which_depends_on_the_trunk() {
        let fleet: Vec<FleetPosition> = (0..5).map(|i| FleetPosition::new(i, 5).unwrap()).collect();
        let holders = |trunk: &str| -> Vec<u32> {
            fleet.iter().filter(|p| p.share(2, trunk) > 0).map(|p| p.index()).collect()
        };
        assert_eq!(holders("inbound:voice/acme").len(), 2);
        assert!(fleet.iter().all(|p| p.share(2, "inbound:voice/acme") <= 1));
        // Not always the first pods: over many trunks, every pod holds some slot.
        let mut held = std::collections::BTreeSet::new();
        for n in 0..50 {
            held.extend(holders(&format!("inbound:voice/trunk-{n}")));
        }
        assert_eq!(held.len(), 5, "{held:?}");
    }

    #[test]
    fn the_trunk_offset_is_fnv1a_so_every_build_agrees() {
        // FNV-1a 64 of "" and "a" (published test vectors), folded to 32 bits.
        let fold = |h: u64| (h ^ (h >> 32)) as u32;
        assert_eq!(trunk_offset(""), fold(0xcbf2_9ce4_8422_2325));
        assert_eq!(trunk_offset("a"), fold(0xaf63_dc4c_8601_ec8c));
    }

    proptest::proptest! {
        #[test]
        fn the_shares_of_a_fleet_sum_to_the_limit(
            limit in 0u32..5000,
            n in 1u32..=50,
            trunk in "[a-z:/-]{0,30}",
        ) {
            let shares: Vec<u32> =
                (0..n).map(|i| FleetPosition::new(i, n).unwrap().share(limit, &trunk)).collect();
            proptest::prop_assert_eq!(shares.iter().map(|s| u64::from(*s)).sum::<u64>(), u64::from(limit));
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            proptest::prop_assert!(max - min <= 1, "{:?}", shares);
        }
    }

    #[test]
    fn every_limit_up_to_50_over_every_fleet_up_to_50_sums_exactly() {
        for trunk in ["", "inbound:voice/acme-in", "outbound:voice/carrier-out"] {
            for n in 1u32..=50 {
                for limit in 0u32..=50 {
                    let sum: u32 =
                        (0..n).map(|i| FleetPosition::new(i, n).unwrap().share(limit, trunk)).sum();
                    assert_eq!(sum, limit, "limit {limit} over {n} pods, trunk {trunk:?}");
                }
            }
        }
    }

    #[test]
    fn a_pod_of_two_admits_its_share_and_the_whole_limit_once_alone() {
        let share = FleetShare::new(FleetPosition::new(0, 2).unwrap());
        let a = Admission::with_fleet(share.clone());
        let t0 = Instant::now();
        let _first = a.try_admit(T, concurrent(2), t0).expect("its one slot");
        let refused = a.try_admit(T, concurrent(2), t0).expect_err("its share is one");
        assert_eq!(refused.limit, LimitKind::ConcurrentCalls);
        assert_eq!(refused.retry_after, CONCURRENCY_RETRY_AFTER);

        // The other pod left: this one has the whole limit from the next call on.
        share.set(FleetPosition::ALONE);
        let _second = a.try_admit(T, concurrent(2), t0).expect("the whole limit");
        assert!(a.try_admit(T, concurrent(2), t0).is_err());
        assert_eq!(a.active_calls(T), 2);

        // A third pod joined: 2 up, share now 1 (or 0): refused until calls end.
        share.set(FleetPosition::new(0, 3).unwrap());
        assert!(a.try_admit(T, concurrent(2), t0).is_err());
    }

    #[test]
    fn the_rate_is_shared_too_with_a_burst_of_the_share() {
        let share = FleetShare::new(FleetPosition::new(1, 2).unwrap());
        let a = Admission::with_fleet(share);
        let t0 = Instant::now();
        let mut admitted = 0;
        while a.try_admit("ns/r", per_second(10), t0).is_ok() {
            admitted += 1;
        }
        assert_eq!(admitted, 5, "half of 10 per second");
        // Refilled at 5 per second: one token after 200 ms.
        assert!(a.try_admit("ns/r", per_second(10), t0 + ms(199)).is_err());
        let _p = a.try_admit("ns/r", per_second(10), t0 + ms(200)).expect("one token");
    }

    #[test]
    fn a_pod_with_a_share_of_zero_refuses_every_call_with_retry_after() {
        let fleet: Vec<FleetPosition> = (0..3).map(|i| FleetPosition::new(i, 3).unwrap()).collect();
        let idle = fleet.iter().find(|p| p.share(1, T) == 0).expect("two of three hold none");
        let a = Admission::with_fleet(FleetShare::new(*idle));
        let t0 = Instant::now();
        let refused = a.try_admit(T, concurrent(1), t0).expect_err("share 0");
        assert_eq!(refused.limit, LimitKind::ConcurrentCalls);
        let rate = a.try_admit(T, per_second(1), t0).expect_err("share 0");
        assert_eq!(
            (rate.limit, rate.retry_after),
            (LimitKind::CallsPerSecond, CONCURRENCY_RETRY_AFTER)
        );
        // Unlimited trunks are not touched by the fleet.
        let _p = a.try_admit(T, Limits::default(), t0).expect("no limit");
    }

    #[test]
    fn the_shared_position_reads_back_what_was_set() {
        let share = FleetShare::default();
        assert_eq!(share.get(), FleetPosition::ALONE);
        let p = FleetPosition::new(41, 50).unwrap();
        share.set(p);
        assert_eq!(share.get(), p);
        assert_eq!(p.to_string(), "41 of 50");
    }

    #[test]
    fn a_permit_dropped_by_a_cancelled_task_frees_its_slot() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        let a = Admission::new();
        let permit = a.try_admit(T, concurrent(1), Instant::now()).expect("first");
        rt.block_on(async {
            let task = tokio::spawn(async move {
                let _permit = permit;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
            task.abort();
            assert!(task.await.expect_err("aborted").is_cancelled());
        });
        assert_eq!(a.active_calls(T), 0);
    }
}
