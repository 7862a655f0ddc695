//! Host names of SIP destinations to addresses: A/AAAA through the system resolver
//! (`getaddrinfo`, so `/etc/hosts` and the cluster's DNS apply), with a short cache so that a
//! burst of calls to one carrier or agent runtime does not become a burst of lookups.
//!
//! Takes: a host name and a port (of an agent runtime's or a carrier's URI). Gives: one address
//! (the first the system gives, in its RFC 6724 order), or why there is none. Positive answers
//! are kept [`POSITIVE_TTL`], failures [`NEGATIVE_TTL`] (a name that does not resolve is not
//! asked again for every call of a burst); at most [`MAX_ENTRIES`] names are kept; a lookup
//! takes at most [`LOOKUP_TIMEOUT`]. The call driver (`call::driver`) asks it for every dialed
//! leg whose host is a name; one [`Resolver`] is shared by every call.
//!
//! Not here yet: SRV and NAPTR (RFC 3263) and failover to the next address; concurrent lookups
//! of one name are not merged.

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
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many names the cache keeps.
pub const MAX_ENTRIES: usize = 1024;

/// The addresses of a host name, as the system resolver (or a test) gives them.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
type LookupFn = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// Looks host names up, through its cache.
pub struct Resolver {
    lookup: LookupFn,
    cache: Mutex<Cache>,
    timeout: Duration,
}

impl Resolver {
    /// The system resolver (`tokio::net::lookup_host`).
    pub fn system() -> Resolver {
        Resolver::with_lookup(|host| {
            Box::pin(async move {
                let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
                Ok(addrs.map(|a| a.ip()).collect())
            })
        })
    }

    /// A resolver that asks `lookup` instead of the system (tests).
    pub fn with_lookup(
        lookup: impl Fn(String) -> LookupFuture + Send + Sync + 'static,
    ) -> Resolver {
        Resolver {
            lookup: Arc::new(lookup),
            cache: Mutex::new(Cache::default()),
            timeout: LOOKUP_TIMEOUT,
        }
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
                        Err(_) => Err(format!(
                            "{host}: DNS lookup timed out after {}s",
                            self.timeout.as_secs_f64()
                        )),
                    };
                if let Ok(mut cache) = self.cache.lock() {
                    cache.put(now, key, answer.clone());
                }
                answer
            }
        };
        answer.map(|ip| SocketAddr::new(ip, port))
    }
}

/// Answers by lower-case host name, each until it expires.
#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
}

struct Entry {
    answer: Result<IpAddr, String>,
    expires: Instant,
}

impl Cache {
    fn get(&self, now: Instant, host: &str) -> Option<Result<IpAddr, String>> {
        self.entries.get(host).filter(|e| now < e.expires).map(|e| e.answer.clone())
    }

    fn put(&mut self, now: Instant, host: String, answer: Result<IpAddr, String>) {
        let ttl = if answer.is_ok() { POSITIVE_TTL } else { NEGATIVE_TTL };
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&host) {
            self.entries.retain(|_, e| now < e.expires);
            if self.entries.len() >= MAX_ENTRIES
                && let Some(first) =
                    self.entries.iter().min_by_key(|(_, e)| e.expires).map(|(h, _)| h.clone())
            {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(host, Entry { answer, expires: now + ttl });
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
        cache.put(t0, "failing.example".into(), Err("no".into()));
        for i in 0..MAX_ENTRIES {
            cache.put(t0 + Duration::from_millis(1), format!("h{i}.example"), Ok(CARRIER));
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        assert!(cache.get(t0, "failing.example").is_none(), "the negative entry expires first");
        assert!(cache.get(t0, "h0.example").is_some());
    }
}
