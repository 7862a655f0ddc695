//! RTP/RTCP port pairs from the `--rtp-ports` range.
//!
//! [`PortAllocator::new`] takes the range; [`PortAllocator::allocate`] binds a pair of UDP
//! sockets on the given IP, RTP on an even port and RTCP on the next (odd) one (RFC 3550 §11),
//! and gives them as a [`PortPair`]. The pair goes back to the pool when the [`PortLease`] in it
//! is dropped, whatever drops it (a call that ends, a relay task that panics or is aborted), so
//! ports cannot leak.
//!
//! A free pair is picked at random among the older half of the free queue (released pairs
//! join at the back): a scanner that sees one call's ports cannot guess the next call's
//! (issue 15: ports handed out in order let anyone spraying the range find live calls), and a
//! port just released is not reused before half the free pairs have been handed out after it
//! (late packets of an ended call do not reach the next one). A pair that fails to bind because
//! something else holds one of its ports is skipped and put at the back of the queue: it is
//! tried again later, not lost. When no pair can be bound the answer is
//! [`PortsError::Exhausted`] at once (the call is refused with 503), never a wait.
//!
//! The pool keeps its metrics current ([`PortAllocator::with_metrics`]): the pairs free and in
//! use after every allocation and release, and one count per `Exhausted` answer (a call refused
//! for want of ports: a call stops at its first failed allocation).
//!
//! The sockets are non-blocking `std` sockets, so allocating needs no runtime and the user
//! registers them with tokio as it needs (`UdpSocket::from_std`). Called by the relay
//! (`media::relay`); the range comes from `trunkline run --rtp-ports`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use crate::observe::metrics::PortPoolMetrics;

/// Why no port pair could be had.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// Every pair of the range is in use (or held by another program).
    #[error("no free RTP port pair in {low}-{high}")]
    Exhausted { low: u16, high: u16 },
    /// Binding failed for a reason that another port would not fix (e.g. the IP is not local).
    #[error("cannot bind RTP port {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

impl PortsError {
    /// The SIP answer to the call that needed the ports.
    pub fn status_code(&self) -> u16 {
        503
    }
}

/// The pool of RTP port pairs. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    low: u16,
    high: u16,
    /// Even RTP ports of the free pairs, oldest release first.
    free: Mutex<VecDeque<u16>>,
    pairs: usize,
    metrics: PortPoolMetrics,
}

impl PortAllocator {
    /// The pool of the pairs (even, even+1) that fit in `low..=high`. An odd `low` starts at
    /// the next even port; an even `high` is left out (its RTCP port would be outside).
    pub fn new(low: u16, high: u16) -> PortAllocator {
        PortAllocator::with_metrics(low, high, PortPoolMetrics::unregistered())
    }

    /// [`PortAllocator::new`], publishing the pool's state to `metrics`.
    pub fn with_metrics(low: u16, high: u16, metrics: PortPoolMetrics) -> PortAllocator {
        let first = u32::from(low) + u32::from(low) % 2;
        let evens: VecDeque<u16> = (first..u32::from(high))
            .step_by(2)
            .filter_map(|port| u16::try_from(port).ok())
            .filter(|&port| port != 0)
            .collect();
        let pairs = evens.len();
        let pool = Pool { low, high, free: Mutex::new(evens), pairs, metrics };
        pool.publish(pairs);
        PortAllocator { inner: Arc::new(pool) }
    }

    /// Binds a free pair on `ip`. Pairs held by another program are skipped (and tried again
    /// on a later call); only when none can be bound is the answer `Exhausted`.
    pub fn allocate(&self, ip: IpAddr) -> Result<PortPair, PortsError> {
        let pool = &self.inner;
        let attempts = pool.lock().len();
        for _ in 0..attempts {
            let Some(rtp_port) = pool.take() else { break };
            match bind_pair(ip, rtp_port) {
                Ok((rtp, rtcp)) => {
                    let lease = PortLease { pool: Arc::clone(pool), rtp_port };
                    return Ok(PortPair { rtp, rtcp, lease, ip });
                }
                Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                    // Someone else holds it: skip, keep it for later.
                    tracing::debug!(port = rtp_port, "RTP port pair in use elsewhere, skipped");
                    pool.give_back(rtp_port, End::Back);
                }
                Err(source) => {
                    pool.give_back(rtp_port, End::Front);
                    return Err(PortsError::Bind { addr: SocketAddr::new(ip, rtp_port), source });
                }
            }
        }
        pool.metrics.exhaustions.inc();
        Err(PortsError::Exhausted { low: pool.low, high: pool.high })
    }

    /// The range, as given: `(low, high)`.
    pub fn range(&self) -> (u16, u16) {
        (self.inner.low, self.inner.high)
    }

    /// Pairs free now.
    pub fn available(&self) -> usize {
        self.inner.lock().len()
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.inner.pairs
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u16>> {
        // The queue is valid after any panic (push and pop are single operations).
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free pair at random among the older half of the queue (at least the oldest), if any.
    fn take(&self) -> Option<u16> {
        use rand::Rng;
        let mut free = self.lock();
        let older_half = free.len().div_ceil(2);
        let port = match older_half {
            0 => None,
            n => free.remove(rand::rng().random_range(0..n)),
        };
        self.publish(free.len());
        port
    }

    /// A pair back in the queue: at the back (used last), or at the front (tried first).
    fn give_back(&self, rtp_port: u16, end: End) {
        let mut free = self.lock();
        match end {
            End::Back => free.push_back(rtp_port),
            End::Front => free.push_front(rtp_port),
        }
        self.publish(free.len());
    }

    /// Sets the gauges; called under the lock, so they follow the queue in order.
    fn publish(&self, free: usize) {
        let free = free.min(self.pairs);
        self.metrics.free.set(i64::try_from(free).unwrap_or(i64::MAX));
        self.metrics.used.set(i64::try_from(self.pairs - free).unwrap_or(i64::MAX));
    }
}

/// Which end of the free queue a pair goes back to.
enum End {
    Front,
    Back,
}

fn bind_pair(ip: IpAddr, rtp_port: u16) -> io::Result<(UdpSocket, UdpSocket)> {
    let rtp = bind(SocketAddr::new(ip, rtp_port))?;
    let rtcp = bind(SocketAddr::new(ip, rtp_port + 1))?;
    Ok((rtp, rtcp))
}

/// A non-blocking UDP socket bound to `addr`, made non-blocking as it is created (no ioctl
/// per socket: four sockets per call).
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A pair's place in the pool: the pair is free again when this is dropped.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<Pool>,
    rtp_port: u16,
}

impl PortLease {
    /// The even (RTP) port of the pair.
    pub fn rtp_port(&self) -> u16 {
        self.rtp_port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.give_back(self.rtp_port, End::Back);
    }
}

/// Two bound non-blocking UDP sockets, RTP on an even port and RTCP on the next one, and their
/// place in the pool. Fields drop in order: the sockets close before the pair is free again.
#[derive(Debug)]
pub struct PortPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub lease: PortLease,
    /// The address both are bound to.
    pub ip: IpAddr,
}

impl PortPair {
    /// The RTP address (what goes into the SDP's `c=` and `m=` lines), as bound: known
    /// without asking the kernel.
    pub fn rtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.rtp_port())
    }

    pub fn rtcp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.rtcp_port())
    }

    pub fn rtp_port(&self) -> u16 {
        self.lease.rtp_port
    }

    pub fn rtcp_port(&self) -> u16 {
        self.lease.rtp_port + 1
    }
}

/// Test helper: a range of `pairs` port pairs that nothing holds now, each call another one,
/// above the kernel's ephemeral range (32768-60999 by default), where the test peers' own
/// sockets land, and above the RTP ranges other programs on a test machine use.
#[cfg(test)]
pub(crate) fn free_test_range(pairs: u16) -> (u16, u16) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU16, Ordering};
    // Above the kernel's ephemeral range (32768-60999), where nothing else binds. nextest runs
    // each test in its own process: each process starts in its own block of 80 ports (by pid),
    // so parallel tests do not probe the same ports at the same time.
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let block = u16::try_from(std::process::id() % 50).unwrap_or(0);
        AtomicU16::new(61_000 + block * 80)
    });
    loop {
        let low = next.fetch_add(pairs * 2, Ordering::Relaxed);
        assert!(u32::from(low) + u32::from(pairs) * 2 < 65535, "test ports ran out");
        let high = low + pairs * 2 - 1;
        let held: Vec<_> = (low..=high)
            .map(|port| UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, port)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return (low, high);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn pairs_are_an_even_rtp_port_and_the_next_for_rtcp() {
        assert_eq!(PortAllocator::new(31001, 31010).capacity(), 4, "31002 to 31008; not 31010");
        assert_eq!(PortAllocator::new(65530, 65535).capacity(), 3, "up to 65534 + 65535");
        let (low, high) = free_test_range(4);
        let pool = PortAllocator::new(low, high);
        assert_eq!(pool.capacity(), 4);
        let pair = pool.allocate(LOCALHOST).expect("a pair");
        assert_eq!(pair.rtp_port() % 2, 0);
        assert_eq!(pair.rtp.local_addr().expect("addr").port(), pair.rtp_port());
        assert_eq!(pair.rtcp.local_addr().expect("addr").port(), pair.rtp_port() + 1);
        assert_eq!(pair.rtcp_port(), pair.rtp_port() + 1);
        assert_eq!(pair.rtp_addr(), SocketAddr::new(LOCALHOST, pair.rtp_port()));
        // What the allocator says is what the kernel bound.
        assert_eq!(pair.rtp.local_addr().expect("addr"), pair.rtp_addr());
        assert_eq!(pair.rtcp.local_addr().expect("addr"), pair.rtcp_addr());
        // Non-blocking, as tokio needs: a read with nothing queued returns at once.
        for socket in [&pair.rtp, &pair.rtcp] {
            let err = socket.recv(&mut [0u8; 16]).expect_err("nothing queued");
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        }
    }

    #[test]
    fn a_range_of_two_pairs_gives_two_then_an_error_then_one_after_a_drop() {
        let (low, high) = free_test_range(2);
        let pool = PortAllocator::new(low, high);
        let first = pool.allocate(LOCALHOST).expect("first pair");
        let second = pool.allocate(LOCALHOST).expect("second pair");
        let started = Instant::now();
        let err = pool.allocate(LOCALHOST).expect_err("the range is exhausted");
        // Not a speed check: an exhausted pool answers at once instead of waiting for a port.
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, PortsError::Exhausted { low: l, high: h } if (l, h) == (low, high)));
        assert_eq!(err.status_code(), 503);
        assert_ne!(first.rtp_port(), second.rtp_port());
        drop(first);
        let third = pool.allocate(LOCALHOST).expect("a pair after the drop");
        assert_eq!(pool.available(), 0);
        drop((second, third));
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn the_gauges_follow_the_pool_and_exhaustion_is_counted() {
        let (low, high) = free_test_range(2);
        let metrics = PortPoolMetrics::unregistered();
        let pool = PortAllocator::with_metrics(low, high, metrics.clone());
        assert_eq!((metrics.free.get(), metrics.used.get()), (2, 0));
        let first = pool.allocate(LOCALHOST).expect("first pair");
        assert_eq!((metrics.free.get(), metrics.used.get()), (1, 1));
        let second = pool.allocate(LOCALHOST).expect("second pair");
        assert_eq!((metrics.free.get(), metrics.used.get()), (0, 2));
        assert!(pool.allocate(LOCALHOST).is_err());
        assert!(pool.allocate(LOCALHOST).is_err());
        assert_eq!(metrics.exhaustions.get(), 2);
        drop((first, second));
        assert_eq!((metrics.free.get(), metrics.used.get()), (2, 0));
        // A bind error is no exhaustion.
        assert!(pool.allocate(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).is_err());
        assert_eq!(metrics.exhaustions.get(), 2);
        assert_eq!((metrics.free.get(), metrics.used.get()), (2, 0));
    }

    #[test]
    fn thousands_of_allocations_and_drops_leave_the_pool_full() {
        let (low, high) = free_test_range(20);
        let pool = PortAllocator::new(low, high);
        assert_eq!(pool.capacity(), 20);
        for round in 0..250 {
            let held: Vec<PortPair> =
                (0..8).map(|_| pool.allocate(LOCALHOST).expect("a pair")).collect();
            assert_eq!(pool.available(), 12, "round {round}");
            drop(held);
        }
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn a_port_held_by_another_program_is_skipped_and_kept_for_later() {
        let (low, high) = free_test_range(2);
        let pool = PortAllocator::new(low, high);
        // Something else holds the RTCP port of the first pair.
        let squatter = UdpSocket::bind((LOCALHOST, low + 1)).expect("squat");
        let pair = pool.allocate(LOCALHOST).expect("the other pair");
        assert_eq!(pair.rtp_port(), low + 2);
        assert!(matches!(pool.allocate(LOCALHOST), Err(PortsError::Exhausted { .. })));
        assert_eq!(pool.available(), 1, "the held pair stays in the pool");
        drop(squatter);
        let again = pool.allocate(LOCALHOST).expect("free again");
        assert_eq!(again.rtp_port(), low);
    }

    #[test]
    fn a_pair_is_returned_when_the_thread_holding_it_panics() {
        let (low, high) = free_test_range(1);
        let pool = PortAllocator::new(low, high);
        let in_thread = pool.clone();
        let result = std::thread::spawn(move || {
            let _pair = in_thread.allocate(LOCALHOST).expect("a pair");
            panic!("the call task fails");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(pool.available(), 1);
        pool.allocate(LOCALHOST).expect("the pair is usable again");
    }

    /// The RTP ports of `count` allocations from a fresh pool of `pairs`.
    fn first_ports(pairs: u16, count: usize) -> (u16, Vec<u16>) {
        let (low, high) = free_test_range(pairs);
        let pool = PortAllocator::new(low, high);
        let held: Vec<PortPair> =
            (0..count).map(|_| pool.allocate(LOCALHOST).expect("a pair")).collect();
        (low, held.iter().map(|p| p.rtp_port() - low).collect())
    }

    #[test]
    fn ports_are_handed_out_in_an_order_nobody_can_predict() {
        // Ten pools of 16 pairs: in order, every pool would start 0, 2, 4, 6 from its low end.
        let orders: BTreeSet<Vec<u16>> = (0..10).map(|_| first_ports(16, 4).1).collect();
        // Eight equally likely first picks, then seven...: ten identical orders would be a
        // one in 10^30 event.
        assert!(orders.len() > 1, "ten pools gave the same order: {orders:?}");
        assert!(orders.iter().any(|o| o[0] != 0), "every pool started at its first pair");
    }

    #[test]
    fn a_pair_just_released_is_not_reused_before_half_the_free_pairs_went_out() {
        let (low, high) = free_test_range(10);
        let pool = PortAllocator::new(low, high);
        for _ in 0..50 {
            let released = pool.allocate(LOCALHOST).expect("a pair");
            let port = released.rtp_port();
            drop(released);
            // 10 free, the released one last: the next 5 picks come from the 9 before it.
            let next: Vec<PortPair> =
                (0..5).map(|_| pool.allocate(LOCALHOST).expect("a pair")).collect();
            assert!(next.iter().all(|p| p.rtp_port() != port), "{port} reused at once");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate,
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => Just(Op::Allocate), 2 => any::<usize>().prop_map(Op::Release)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the order of allocations and releases: every pair in use is distinct, an
        /// even port of the range with its RTCP port next to it, free + in use is the whole
        /// range, exhaustion only when nothing is free, and everything comes back at the end.
        #[test]
        fn the_pool_never_hands_out_a_pair_twice_nor_loses_one(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            // One range for every case (each ends with all pairs back): the process's block of
            // test ports would not hold one per case.
            static RANGE: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();
            let &(low, high) = RANGE.get_or_init(|| free_test_range(6));
            let pool = PortAllocator::new(low, high);
            let mut held: Vec<PortPair> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate => match pool.allocate(LOCALHOST) {
                        Ok(pair) => {
                            prop_assert!(pair.rtp_port() % 2 == 0);
                            prop_assert!(pair.rtp_port() >= low && pair.rtcp_port() <= high);
                            prop_assert!(held.iter().all(|h| h.rtp_port() != pair.rtp_port()));
                            held.push(pair);
                        }
                        Err(PortsError::Exhausted { .. }) => prop_assert_eq!(held.len(), 6),
                        Err(other) => prop_assert!(false, "{other}"),
                    },
                    Op::Release(i) if !held.is_empty() => {
                        let i = i % held.len();
                        held.swap_remove(i);
                    }
                    Op::Release(_) => {}
                }
                prop_assert_eq!(pool.available() + held.len(), pool.capacity());
            }
            drop(held);
            prop_assert_eq!(pool.available(), pool.capacity());
        }
    }

    #[test]
    fn an_address_that_is_not_local_is_an_error_not_exhaustion() {
        let (low, high) = free_test_range(5);
        let pool = PortAllocator::new(low, high);
        // TEST-NET-1 is never a local address.
        let err = pool.allocate(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).expect_err("not local");
        assert!(matches!(err, PortsError::Bind { .. }), "{err}");
        assert_eq!(pool.available(), 5);
    }
}
