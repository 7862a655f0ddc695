//! The guard's rules, driven with a made-up clock.

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn settings() -> GuardSettings {
    GuardSettings {
        invite_rate: 5,
        options_rate: 2,
        other_rate: 1,
        global_rate: 100,
        max_sources: 1000,
        auth_failures: 3,
        auth_window: Duration::from_secs(60),
        auth_lockout: Duration::from_secs(300),
        username_failures: 10,
        username_rate: 1,
    }
}

/// How many of `n` requests at `now` are admitted.
fn admitted(guard: &Guard, now: Instant, source: IpAddr, kind: RequestKind, n: usize) -> usize {
    (0..n).filter(|_| guard.admit(now, source, kind).is_ok()).count()
}

#[test]
fn a_source_over_its_invite_bucket_is_dropped_and_another_source_is_not() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    // Two seconds' worth of 5/s.
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Invite, 100), 10);
    assert_eq!(
        guard.admit(now, ip(2), RequestKind::Invite),
        Err(Dropped::SourceRate(RequestKind::Invite))
    );
    assert_eq!(admitted(&guard, now, ip(3), RequestKind::Invite, 10), 10);
}

#[test]
fn a_bucket_refills_at_its_rate() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Invite, 100), 10);
    let later = now + Duration::from_millis(1000);
    assert_eq!(admitted(&guard, later, ip(2), RequestKind::Invite, 100), 5);
    let much_later = now + Duration::from_secs(3600);
    assert_eq!(admitted(&guard, much_later, ip(2), RequestKind::Invite, 100), 10, "capped");
}

#[test]
fn invites_options_and_other_requests_have_their_own_buckets() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Options, 100), 4);
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Other, 100), 2);
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Invite, 100), 10);
    assert_eq!(
        guard.admit(now, ip(2), RequestKind::Options),
        Err(Dropped::SourceRate(RequestKind::Options))
    );
    assert_eq!(
        guard.admit(now, ip(2), RequestKind::Other),
        Err(Dropped::SourceRate(RequestKind::Other))
    );
}

#[test]
fn a_rate_of_zero_is_no_limit() {
    let guard = Guard::new(GuardSettings { invite_rate: 0, global_rate: 0, ..settings() });
    assert_eq!(admitted(&guard, Instant::now(), ip(2), RequestKind::Invite, 10_000), 10_000);
}

#[test]
fn the_global_cap_bounds_many_sources_but_a_known_good_source_skips_it() {
    let guard = Guard::new(GuardSettings { global_rate: 10, ..settings() });
    let now = Instant::now();
    guard.trust(now, ip(1));
    let spread: usize = (0..200u8)
        .map(|i| admitted(&guard, now, IpAddr::from([10, 0, 0, i]), RequestKind::Invite, 1))
        .sum();
    assert_eq!(spread, 20, "two seconds of the global rate");
    assert_eq!(
        guard.admit(now, IpAddr::from([10, 0, 1, 1]), RequestKind::Invite),
        Err(Dropped::GlobalRate)
    );
    assert_eq!(admitted(&guard, now, ip(1), RequestKind::Invite, 10), 10, "the carrier goes on");
}

#[test]
fn a_known_good_source_skips_its_own_buckets() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    guard.trust(now, ip(1));
    assert_eq!(admitted(&guard, now, ip(1), RequestKind::Invite, 1000), 1000);
    assert_eq!(admitted(&guard, now, ip(1), RequestKind::Options, 1000), 1000);
}

#[test]
fn one_flooding_source_does_not_spend_the_tokens_the_others_share() {
    let guard = Guard::new(GuardSettings { global_rate: 20, ..settings() });
    let now = Instant::now();
    assert_eq!(admitted(&guard, now, ip(9), RequestKind::Invite, 100_000), 10);
    assert_eq!(admitted(&guard, now, ip(2), RequestKind::Invite, 10), 10);
}

#[test]
fn failures_up_to_the_threshold_lock_the_source_out_for_the_back_off_then_let_it_go() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    assert_eq!(guard.auth_failed(now, ip(5), None), None);
    assert_eq!(guard.auth_failed(now, ip(5), None), None);
    let lockout = guard.auth_failed(now, ip(5), None).expect("the third failure locks it out");
    assert_eq!(lockout, Lockout { source: ip(5), until: now + Duration::from_secs(300) });
    assert_eq!(guard.admit(now, ip(5), RequestKind::Invite), Err(Dropped::LockedOut));
    assert_eq!(guard.admit(now, ip(5), RequestKind::Options), Err(Dropped::LockedOut));
    let almost = now + Duration::from_secs(299);
    assert_eq!(guard.admit(almost, ip(5), RequestKind::Invite), Err(Dropped::LockedOut));
    assert!(guard.admit(now, ip(6), RequestKind::Invite).is_ok(), "others are not locked out");
    let after = now + Duration::from_secs(300);
    assert!(guard.admit(after, ip(5), RequestKind::Invite).is_ok());
    // Its count started again: one failure does not lock it out at once.
    assert_eq!(guard.auth_failed(after, ip(5), None), None);
}

#[test]
fn failures_further_apart_than_the_window_do_not_lock_out() {
    let guard = Guard::new(settings());
    let start = Instant::now();
    for i in 0..10 {
        let at = start + Duration::from_secs(61) * i;
        assert_eq!(guard.auth_failed(at, ip(5), None), None, "failure {i}");
        assert_eq!(guard.auth_failed(at, ip(5), None), None, "failure {i}");
    }
}

#[test]
fn a_known_good_source_is_never_locked_out() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    guard.trust(now, ip(1));
    for _ in 0..100 {
        assert_eq!(guard.auth_failed(now, ip(1), Some("acme")), None);
    }
    assert!(guard.admit(now, ip(1), RequestKind::Invite).is_ok());
}

#[test]
fn a_routed_call_lifts_a_lockout_and_forgets_the_failures() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    guard.auth_failed(now, ip(5), None);
    guard.auth_failed(now, ip(5), None);
    guard.trust(now, ip(5));
    assert!(!guard.is_locked_out(now, ip(5)));
}

#[test]
fn guessing_one_username_from_many_addresses_is_slowed_but_its_known_good_source_is_not() {
    let guard = Guard::new(GuardSettings { auth_failures: 1000, ..settings() });
    let now = Instant::now();
    guard.trust(now, ip(1));
    // Before the attack, every address may answer.
    assert!(guard.admit_answer(now, ip(2), "acme").is_ok());
    for i in 0..10u8 {
        guard.auth_failed(now, IpAddr::from([10, 0, 0, i]), Some("acme"));
    }
    // Under attack: two seconds' worth of 1/s for all the unknown addresses together.
    let passed = (0..50u8)
        .filter(|i| guard.admit_answer(now, IpAddr::from([10, 0, 1, *i]), "acme").is_ok())
        .count();
    assert_eq!(passed, 2);
    assert_eq!(guard.admit_answer(now, ip(3), "acme"), Err(Dropped::UsernameThrottled));
    for _ in 0..100 {
        assert!(guard.admit_answer(now, ip(1), "acme").is_ok(), "the carrier is never slowed");
    }
    assert!(guard.admit_answer(now, ip(3), "other").is_ok(), "other usernames are not");
    // The window passes: the username is no longer under attack.
    let later = now + Duration::from_secs(61);
    assert!((0..10).all(|_| guard.admit_answer(later, ip(3), "acme").is_ok()));
}

#[test]
fn the_source_table_stays_within_its_cap_under_many_addresses() {
    let guard = Guard::new(GuardSettings { max_sources: 1000, global_rate: 0, ..settings() });
    let now = Instant::now();
    for i in 0..200_000u32 {
        let _ = guard.admit(now, IpAddr::from(i.to_be_bytes()), RequestKind::Invite);
    }
    assert_eq!(guard.tracked_sources(), 1000);
    let inner = guard.lock();
    assert!(inner.sources.order.len() <= 4000, "{}", inner.sources.order.len());
}

#[test]
fn the_table_forgets_the_least_recently_seen_source() {
    let mut lru: Lru<u32> = Lru::new(3);
    *lru.get_or_insert_with(ip(1), || 1) += 0;
    lru.get_or_insert_with(ip(2), || 2);
    lru.get_or_insert_with(ip(3), || 3);
    assert!(lru.get_mut(&ip(1)).is_some(), "1 is used again");
    lru.get_or_insert_with(ip(4), || 4);
    assert!(lru.get_mut(&ip(2)).is_none(), "2 was the least recently used");
    for n in [1, 3, 4] {
        assert!(lru.get_mut(&ip(n)).is_some(), "{n} is kept");
    }
}

#[test]
fn a_locked_out_source_cannot_free_itself_by_turning_the_source_table_over() {
    let guard = Guard::new(GuardSettings { max_sources: 100, global_rate: 0, ..settings() });
    let now = Instant::now();
    for _ in 0..3 {
        guard.auth_failed(now, ip(5), None);
    }
    for i in 0..10_000u32 {
        let _ =
            guard.admit(now, IpAddr::from((0x0a00_0000 + i).to_be_bytes()), RequestKind::Invite);
    }
    assert_eq!(guard.admit(now, ip(5), RequestKind::Invite), Err(Dropped::LockedOut));
}

#[test]
fn ipv4_mapped_ipv6_sources_are_the_ipv4_address() {
    let guard = Guard::new(settings());
    let now = Instant::now();
    for _ in 0..3 {
        guard.auth_failed(now, ip(5), None);
    }
    let mapped: IpAddr = "::ffff:127.0.0.5".parse().unwrap();
    assert_eq!(guard.admit(now, mapped, RequestKind::Invite), Err(Dropped::LockedOut));
}

#[test]
fn the_log_limiter_lets_one_line_per_reason_per_interval_and_counts_the_rest() {
    let log = LogLimiter::new(Duration::from_secs(10));
    let now = Instant::now();
    assert_eq!(log.allow(now, "a"), Some(0));
    for _ in 0..41 {
        assert_eq!(log.allow(now + Duration::from_secs(5), "a"), None);
    }
    assert_eq!(log.allow(now, "b"), Some(0), "each reason has its own");
    assert_eq!(log.allow(now + Duration::from_secs(10), "a"), Some(41));
    assert_eq!(log.allow(now + Duration::from_secs(11), "a"), None);
}

#[test]
fn drop_labels_are_distinct_and_fixed() {
    let labels: std::collections::BTreeSet<_> = Dropped::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(labels.len(), Dropped::ALL.len());
}
