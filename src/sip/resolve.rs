//! Host names of SIP destinations to addresses: A/AAAA through the system resolver
//! (`getaddrinfo`, so `/etc/hosts` and the cluster's DNS apply), and DNS SRV (RFC 3263 §4.2,
//! RFC 2782) through `hickory-resolver` with the system's configuration (`/etc/resolv.conf`: the
//! cluster's DNS servers and search list), each with a short cache so that a burst of calls to
//! one carrier or agent runtime does not become a burst of lookups.
//!
//! Takes: a host name and a port (of an agent runtime's or a carrier's URI), or an SRV name
//! (`_sip._udp.carrier.example`). Gives: one address (the first the system gives, in its RFC
//! 6724 order), or the SRV records (none when the name has none), or why there is none.
//! A/AAAA answers are kept [`POSITIVE_TTL`]; SRV answers as long as their records' TTL says
//! (between [`MIN_SRV_TTL`] and [`MAX_SRV_TTL`]; a name without SRV records as long as its
//! zone's negative TTL, within the same bounds); failures [`NEGATIVE_TTL`] (a name that does not
//! resolve is not asked again for every call of a burst); each cache keeps at most
//! [`MAX_ENTRIES`] names; a lookup takes at most [`LOOKUP_TIMEOUT`]. The call driver
//! (`call::driver`) asks it for every dialed leg whose host is a name (SRV for a carrier host
//! given as a name with no port); one [`Resolver`] is shared by every call. The order of SRV
//! targets (priority, then weight) is the caller's (`call::services`).
//!
//! Not here: NAPTR (RFC 3263 §4.1: the transport is always known from the spec); concurrent
//! lookups of one name are not merged.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an address found is used without asking again.
pub const POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long a failed lookup (no such name, no address, timeout) is answered from the cache.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The shortest time an SRV answer is kept, whatever its TTL (0 included): a burst of calls
/// asks once.
pub const MIN_SRV_TTL: Duration = Duration::from_secs(1);
/// The longest time an SRV answer is kept, whatever its TTL: a carrier that moves its edges is
/// followed within five minutes.
pub const MAX_SRV_TTL: Duration = Duration::from_secs(300);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many names each cache keeps.
pub const MAX_ENTRIES: usize = 1024;

/// The addresses of a host name, as the system resolver (or a test) gives them.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
type LookupFn = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// One SRV record (RFC 2782): a target host and port, with its priority and weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target's name, lower case, without the trailing dot.
    pub target: String,
}

/// What an SRV query answers: its records (none: the name has no SRV records, which is not an
/// error) and how long they may be kept (the records' smallest TTL, or the zone's negative TTL
/// when there are none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvAnswer {
    pub records: Vec<SrvRecord>,
    pub ttl: Duration,
}

/// The SRV records of a name, as DNS (or a test) gives them.
pub type SrvLookupFuture = Pin<Box<dyn Future<Output = io::Result<SrvAnswer>> + Send>>;
type SrvLookupFn = Arc<dyn Fn(String) -> SrvLookupFuture + Send + Sync>;

/// Looks host names up, through its caches.
pub struct Resolver {
    lookup: LookupFn,
    cache: Mutex<Cache<IpAddr>>,
    srv: SrvLookupFn,
    srv_cache: Mutex<Cache<Vec<SrvRecord>>>,
    timeout: Duration,
}

impl Resolver {
    /// The system resolver (`tokio::net::lookup_host`) for addresses, `hickory-resolver` with
    /// the system's configuration for SRV.
    pub fn system() -> Resolver {
        Resolver::with_lookup(|host| {
            Box::pin(async move {
                let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
                Ok(addrs.map(|a| a.ip()).collect())
            })
        })
        .with_srv_lookup(system_srv())
    }

    /// A resolver that asks `lookup` instead of the system (tests); it knows no SRV records
    /// until [`Resolver::with_srv_lookup`] says otherwise.
    pub fn with_lookup(
        lookup: impl Fn(String) -> LookupFuture + Send + Sync + 'static,
    ) -> Resolver {
        Resolver {
            lookup: Arc::new(lookup),
            cache: Mutex::new(Cache::default()),
            srv: Arc::new(|_| {
                Box::pin(async { Ok(SrvAnswer { records: Vec::new(), ttl: MAX_SRV_TTL }) })
            }),
            srv_cache: Mutex::new(Cache::default()),
            timeout: LOOKUP_TIMEOUT,
        }
    }

    /// This resolver, asking `srv` for SRV records (tests inject fake answers here).
    pub fn with_srv_lookup(
        self,
        srv: impl Fn(String) -> SrvLookupFuture + Send + Sync + 'static,
    ) -> Resolver {
        Resolver { srv: Arc::new(srv), ..self }
    }

    /// The address of `host` (a name or an IP address) at `port`, or why there is none (the
    /// message names the host).
    pub async fn lookup(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        self.lookup_at(Instant::now(), host, port).await
    }

    async fn lookup_at(&self, now: Instant, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = host.to_ascii_lowercase();
        let cached = self.cache.lock().ok().and_then(|c| c.get(now, &key));
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer =
                    match tokio::time::timeout(self.timeout, (self.lookup)(key.clone())).await {
                        Ok(Ok(ips)) => {
                            ips.first().copied().ok_or_else(|| format!("{host} has no address"))
                        }
                        Ok(Err(e)) => Err(format!("{host}: {e}")),
                        Err(_) => Err(self.timed_out(host)),
                    };
                let ttl = if answer.is_ok() { POSITIVE_TTL } else { NEGATIVE_TTL };
                if let Ok(mut cache) = self.cache.lock() {
                    cache.put(now, key, answer.clone(), ttl);
                }
                answer
            }
        };
        answer.map(|ip| SocketAddr::new(ip, port))
    }

    /// The SRV records of `name` (`_sip._udp.carrier.example`, RFC 3263 §4.2), in the order
    /// DNS gave them: empty when the name has none (RFC 3263 then falls back to A/AAAA), or
    /// why the query failed (the message names the name). Targets of `.` ("no such service
    /// here", RFC 2782) are left out.
    pub async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, String> {
        self.srv_at(Instant::now(), name).await
    }

    async fn srv_at(&self, now: Instant, name: &str) -> Result<Vec<SrvRecord>, String> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(answer) = self.srv_cache.lock().ok().and_then(|c| c.get(now, &key)) {
            return answer;
        }
        let (answer, ttl) = match tokio::time::timeout(self.timeout, (self.srv)(key.clone())).await
        {
            Ok(Ok(SrvAnswer { records, ttl })) => {
                let records: Vec<SrvRecord> = records
                    .into_iter()
                    .map(|r| SrvRecord {
                        target: r.target.trim_end_matches('.').to_ascii_lowercase(),
                        ..r
                    })
                    .filter(|r| !r.target.is_empty())
                    .collect();
                (Ok(records), ttl.clamp(MIN_SRV_TTL, MAX_SRV_TTL))
            }
            Ok(Err(e)) => (Err(format!("{name}: SRV: {e}")), NEGATIVE_TTL),
            Err(_) => (Err(self.timed_out(name)), NEGATIVE_TTL),
        };
        if let Ok(mut cache) = self.srv_cache.lock() {
            cache.put(now, key, answer.clone(), ttl);
        }
        answer
    }

    fn timed_out(&self, name: &str) -> String {
        format!("{name}: DNS lookup timed out after {}s", self.timeout.as_secs_f64())
    }
}

/// SRV queries through `hickory-resolver`, configured from `/etc/resolv.conf` on first use (a
/// machine without one gets an error per query, not a gateway that does not start).
fn system_srv() -> impl Fn(String) -> SrvLookupFuture + Send + Sync + 'static {
    use hickory_resolver::TokioResolver;
    let dns: Arc<std::sync::OnceLock<Result<TokioResolver, String>>> = Arc::default();
    move |name| {
        let dns = dns.clone();
        Box::pin(async move {
            let resolver = dns.get_or_init(|| {
                let mut builder = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
                builder.options_mut().timeout = LOOKUP_TIMEOUT;
                builder.build().map_err(|e| e.to_string())
            });
            let resolver = resolver.as_ref().map_err(|e| io::Error::other(e.clone()))?;
            match resolver.srv_lookup(name.as_str()).await {
                Ok(lookup) => {
                    let mut ttl = MAX_SRV_TTL;
                    let mut records = Vec::new();
                    for record in lookup.answers() {
                        if let hickory_resolver::proto::rr::RData::SRV(srv) = &record.data {
                            ttl = ttl.min(Duration::from_secs(u64::from(record.ttl)));
                            records.push(SrvRecord {
                                priority: srv.priority,
                                weight: srv.weight,
                                port: srv.port,
                                target: srv.target.to_ascii(),
                            });
                        }
                    }
                    Ok(SrvAnswer { records, ttl })
                }
                Err(e) if e.is_no_records_found() => {
                    let ttl = match &e {
                        hickory_resolver::net::NetError::Dns(
                            hickory_resolver::net::DnsError::NoRecordsFound(none),
                        ) => none.negative_ttl.map(|s| Duration::from_secs(u64::from(s))),
                        _ => None,
                    };
                    Ok(SrvAnswer { records: Vec::new(), ttl: ttl.unwrap_or(NEGATIVE_TTL) })
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        })
    }
}

/// Answers by lower-case name, each until it expires.
struct Cache<T> {
    entries: HashMap<String, Entry<T>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache { entries: HashMap::new() }
    }
}

struct Entry<T> {
    answer: Result<T, String>,
    expires: Instant,
}

impl<T: Clone> Cache<T> {
    fn get(&self, now: Instant, name: &str) -> Option<Result<T, String>> {
        self.entries.get(name).filter(|e| now < e.expires).map(|e| e.answer.clone())
    }

    fn put(&mut self, now: Instant, name: String, answer: Result<T, String>, ttl: Duration) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&name) {
            self.entries.retain(|_, e| now < e.expires);
            if self.entries.len() >= MAX_ENTRIES
                && let Some(first) =
                    self.entries.iter().min_by_key(|(_, e)| e.expires).map(|(h, _)| h.clone())
            {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(name, Entry { answer, expires: now + ttl });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CARRIER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

    /// A resolver whose lookups are counted: `carrier.example` has one address, `empty.example`
    /// none, `slow.example` never answers, anything else does not exist.
    fn counted() -> (Resolver, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let resolver = Resolver::with_lookup(move |host| {
            count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match host.as_str() {
                    "carrier.example" => Ok(vec![CARRIER, IpAddr::from([192, 0, 2, 11])]),
                    "empty.example" => Ok(vec![]),
                    "slow.example" => std::future::pending().await,
                    _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
                }
            })
        });
        (resolver, asked)
    }

    #[tokio::test]
    async fn an_address_found_is_reused_for_thirty_seconds_with_each_calls_port() {
        let (r, asked) = counted();
        let t0 = Instant::now();
        assert_eq!(r.lookup_at(t0, "carrier.example", 5060).await, Ok((CARRIER, 5060).into()));
        let later = t0 + POSITIVE_TTL - Duration::from_millis(1);
        assert_eq!(r.lookup_at(later, "Carrier.Example", 5061).await, Ok((CARRIER, 5061).into()));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the second lookup came from the cache");
        r.lookup_at(t0 + POSITIVE_TTL, "carrier.example", 5060).await.expect("found");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "an expired answer is asked again");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_remembered_for_five_seconds() {
        let (r, asked) = counted();
        let t0 = Instant::now();
        let first = r.lookup_at(t0, "nowhere.example", 5060).await;
        assert!(first.as_ref().is_err_and(|e| e.contains("nowhere.example")), "{first:?}");
        let again = r.lookup_at(t0 + Duration::from_secs(4), "nowhere.example", 5060).await;
        assert_eq!(again, first);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let _ = r.lookup_at(t0 + NEGATIVE_TTL, "nowhere.example", 5060).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_name_with_no_address_is_an_error_naming_it() {
        let (r, _) = counted();
        let answer = r.lookup("empty.example", 5060).await;
        assert_eq!(answer, Err("empty.example has no address".to_string()));
    }

    #[tokio::test]
    async fn a_lookup_that_does_not_answer_gives_up_and_is_cached_as_a_failure() {
        let (mut r, asked) = counted();
        r.timeout = Duration::from_millis(50);
        let started = Instant::now();
        let answer = r.lookup("slow.example", 5060).await;
        assert!(answer.as_ref().is_err_and(|e| e.contains("timed out")), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let _ = r.lookup("slow.example", 5060).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn ip_addresses_are_not_looked_up() {
        let (r, asked) = counted();
        assert_eq!(r.lookup("192.0.2.1", 5060).await, Ok("192.0.2.1:5060".parse().expect("a")));
        assert_eq!(
            r.lookup("[2001:db8::1]", 5061).await,
            Ok("[2001:db8::1]:5061".parse().expect("a"))
        );
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound_dropping_the_soonest_to_expire() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.put(t0, "failing.example".into(), Err("no".into()), NEGATIVE_TTL);
        for i in 0..MAX_ENTRIES {
            let later = t0 + Duration::from_millis(1);
            cache.put(later, format!("h{i}.example"), Ok(CARRIER), POSITIVE_TTL);
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        assert!(cache.get(t0, "failing.example").is_none(), "the negative entry expires first");
        assert!(cache.get(t0, "h0.example").is_some());
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port, target: target.to_string() }
    }

    /// A resolver whose SRV queries are counted: `_sip._udp.carrier.example` has two records
    /// for 60 s, `_sip._tcp.carrier.example` none (negative TTL 120 s),
    /// `_sip._udp.dot.example` only `.`, `_sip._udp.slow.example` never answers, anything else
    /// fails (SERVFAIL).
    fn counted_srv() -> (Resolver, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let (resolver, _) = counted();
        let resolver = resolver.with_srv_lookup(move |name| {
            count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let ttl = Duration::from_secs(60);
                match name.as_str() {
                    "_sip._udp.carrier.example" => Ok(SrvAnswer {
                        records: vec![
                            srv(10, 1, 5070, "SIP1.Carrier.Example."),
                            srv(20, 1, 5080, "sip2.carrier.example."),
                        ],
                        ttl,
                    }),
                    "_sip._tcp.carrier.example" => {
                        Ok(SrvAnswer { records: vec![], ttl: Duration::from_secs(120) })
                    }
                    "_sip._udp.dot.example" => {
                        Ok(SrvAnswer { records: vec![srv(0, 0, 0, ".")], ttl })
                    }
                    "_sip._udp.slow.example" => std::future::pending().await,
                    _ => Err(io::Error::other("SERVFAIL")),
                }
            })
        });
        (resolver, asked)
    }

    #[tokio::test]
    async fn srv_records_come_with_targets_in_lower_case_and_are_kept_for_their_ttl() {
        let (r, asked) = counted_srv();
        let t0 = Instant::now();
        let records = r.srv_at(t0, "_sip._udp.Carrier.Example.").await.expect("records");
        assert_eq!(
            records,
            [srv(10, 1, 5070, "sip1.carrier.example"), srv(20, 1, 5080, "sip2.carrier.example")]
        );
        let before = t0 + Duration::from_secs(59);
        assert_eq!(r.srv_at(before, "_sip._udp.carrier.example").await, Ok(records));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "answered from the cache within its TTL");
        r.srv_at(t0 + Duration::from_secs(60), "_sip._udp.carrier.example").await.expect("again");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked again once the TTL is over");
    }

    #[tokio::test]
    async fn a_name_without_srv_records_is_an_empty_answer_kept_for_the_negative_ttl() {
        let (r, asked) = counted_srv();
        let t0 = Instant::now();
        assert_eq!(r.srv_at(t0, "_sip._tcp.carrier.example").await, Ok(vec![]));
        let later = t0 + Duration::from_secs(119);
        assert_eq!(r.srv_at(later, "_sip._tcp.carrier.example").await, Ok(vec![]));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(r.srv_at(t0, "_sip._udp.dot.example").await, Ok(vec![]), "`.` is no target");
    }

    #[tokio::test]
    async fn srv_ttls_are_bounded_and_failures_are_kept_for_five_seconds() {
        let (r, asked) = counted_srv();
        let t0 = Instant::now();
        let failed = r.srv_at(t0, "_sip._udp.broken.example").await;
        assert!(failed.as_ref().is_err_and(|e| e.contains("broken.example")), "{failed:?}");
        let _ = r.srv_at(t0 + Duration::from_secs(4), "_sip._udp.broken.example").await;
        assert_eq!(asked.load(Ordering::SeqCst), 1, "a failure is remembered");
        let _ = r.srv_at(t0 + NEGATIVE_TTL, "_sip._udp.broken.example").await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);

        let short =
            Resolver::with_lookup(|_| Box::pin(async { Ok(vec![]) })).with_srv_lookup(|_| {
                Box::pin(async {
                    let records = vec![srv(0, 0, 5060, "a.example")];
                    Ok(SrvAnswer { records, ttl: Duration::ZERO })
                })
            });
        short.srv_at(t0, "_sip._udp.x.example").await.expect("records");
        let cached = short.srv_cache.lock().expect("lock").get(t0, "_sip._udp.x.example");
        assert!(cached.is_some(), "a TTL of 0 is kept for MIN_SRV_TTL");
        let long =
            Resolver::with_lookup(|_| Box::pin(async { Ok(vec![]) })).with_srv_lookup(|_| {
                Box::pin(async {
                    Ok(SrvAnswer { records: vec![], ttl: Duration::from_secs(86_400) })
                })
            });
        long.srv_at(t0, "_sip._udp.x.example").await.expect("empty");
        let cache = long.srv_cache.lock().expect("lock");
        assert!(cache.get(t0 + MAX_SRV_TTL, "_sip._udp.x.example").is_none(), "at most 300 s");
    }

    #[tokio::test]
    async fn an_srv_query_that_does_not_answer_gives_up() {
        let (mut r, _) = counted_srv();
        r.timeout = Duration::from_millis(50);
        let answer = r.srv("_sip._udp.slow.example").await;
        assert!(answer.as_ref().is_err_and(|e| e.contains("timed out")), "{answer:?}");
    }

    #[tokio::test]
    async fn a_test_resolver_knows_no_srv_records_unless_told() {
        let (r, _) = counted();
        assert_eq!(r.srv("_sip._udp.carrier.example").await, Ok(vec![]));
    }
}
