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
//! **Each gateway pod enforces the limits alone.** With N replicas behind a load balancer the
//! fleet admits up to N × the limit unless a trunk's traffic is pinned to one pod; the chart
//! documents this.
//!
//! The trunk key must tell trunks apart across kinds: an InboundTrunk and an OutboundTrunk may
//! share a `namespace/name`, so callers that limit both pass e.g. `inbound:ns/name`. State of a
//! trunk with no call up and no attempt for [`IDLE_AFTER`] is dropped (bounded memory); that is
//! invisible, since its bucket is full by then and a new state starts full.

use std::collections::HashMap;
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

/// Admission state of every trunk seen recently, shared by all call tasks of the gateway.
#[derive(Debug, Default)]
pub struct Admission {
    inner: Mutex<Inner>,
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
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Tries to admit a call on `trunk` under `limits` at `now` (monotonic; passed in so tests
    /// drive time by hand). Concurrency is checked first, then the rate; a refused call changes
    /// neither.
    pub fn try_admit(
        self: &Arc<Self>,
        trunk: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<CallPermit, Refused> {
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
