//! The session records' webhook (`--records-webhook URL`, issue 14): records wait in the
//! on-disk [`Spool`] and are POSTed one by one, oldest first, each acknowledged in the spool
//! only once the receiver answered 2xx. Nothing is lost when the receiver is slow, down, or the
//! gateway restarts (the spool is on disk); a record may arrive twice (a crash between the
//! answer and the acknowledgement), so each carries its id as `Idempotency-Key`.
//!
//! Each POST: `Content-Type: application/json`, `Idempotency-Key: RECORD-ID`, and with a key
//! (`--records-webhook-key-file`) `X-Trunkline-Signature: sha256=HEX`, the HMAC-SHA256 of the
//! body with that key (as GitHub's and Stripe's webhooks do), so the receiver can check the
//! record came from the gateway. A failure (no connection, a timeout, any non-2xx answer) waits
//! 1 s, then twice as long each time, at most 60 s, and tries the same record again.
//!
//! # HTTPS
//!
//! `http://` and `https://` URLs. Over HTTPS the server name (SNI, and the name the receiver's
//! certificate must hold) is the URL's host, an IP literal included (then checked against the
//! certificate's iPAddress names). The certificate must chain to the system's roots or to a
//! CA of `--records-webhook-ca-file` (a PEM bundle, for an in-cluster receiver with a private
//! CA; trusted *beside* the system roots, as `--tls-ca` is for SIP, so one rule holds for both
//! and a receiver can move between a private and a public CA without a flag change; the name
//! check still binds the certificate to the URL). `observe` opens no TLS session of its own:
//! the gateway hands a [`TlsConnect`] over ([`Webhook::with_tls`]), its transports' TLS client
//! (`sip::tls_client`) with that bundle. A failed handshake (unknown CA, name mismatch,
//! expired...) is a failed delivery like any other: the record stays in the spool, the
//! failure is logged with its reason and the same backoff applies. The signing key is never
//! logged.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;

use super::spool::{Adoption, HANDOVER_BATCH, Handover, Spool, sibling_spools};

/// Records taken from the spool per round.
const BATCH: usize = 16;
/// One POST, from connecting to the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Opens the TLS session of an `https://` webhook on a connected stream: SNI and the
/// certificate check use `host` (a name, or an IP address), within `deadline`. The error says
/// what failed (unknown CA, name mismatch...). The gateway implements it with its TLS client.
pub trait TlsConnect: Send + Sync + 'static {
    fn connect<'a>(
        &'a self,
        stream: TcpStream,
        host: &'a str,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, io::Result<TlsStream<TcpStream>>>;
}

/// Where records are POSTed, and the signing key.
#[derive(Clone)]
pub struct Webhook {
    https: bool,
    /// The URL's host: an IP address without brackets, or a name.
    host: String,
    /// `host:port` (`[v6]:port`): where to connect, and the `Host` header.
    authority: String,
    path: String,
    key: Option<Vec<u8>>,
    tls: Option<Arc<dyn TlsConnect>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "Webhook({}://{}{})", self.scheme(), self.authority, self.path)
    }
}

impl Webhook {
    /// `http://host[:port][/path]` or `https://host[:port][/path]` (host: a name, an IPv4
    /// address or a bracketed IPv6 one), and the HMAC key if any. An `https://` webhook needs
    /// [`Webhook::with_tls`] before it can deliver.
    pub fn parse(url: &str, key: Option<Vec<u8>>) -> Result<Webhook, String> {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &url[8..])
        } else if lower.starts_with("http://") {
            (false, &url[7..])
        } else {
            return Err(format!("{url:?}: only http:// and https:// webhooks are supported"));
        };
        // A fragment is never sent.
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(format!("{url:?}: user info is not supported (sign with a key file)"));
        }
        let (host, port) = split_authority(authority).ok_or_else(|| {
            format!("{url:?}: expected a host, an optional :port (1-65535), and a path")
        })?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Webhook { https, host: host.to_string(), authority, path, key, tls: None })
    }

    /// Whether the URL is `https://` (then it needs [`Webhook::with_tls`]).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The TLS client an `https://` webhook opens its sessions with.
    pub fn with_tls(mut self, tls: Arc<dyn TlsConnect>) -> Webhook {
        self.tls = Some(tls);
        self
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// One POST of one record: `Ok` on a 2xx answer.
    pub async fn post(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + POST_TIMEOUT;
        tokio::time::timeout_at(deadline, self.exchange(id, body, deadline))
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn exchange(
        &self,
        id: &str,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let stream =
            TcpStream::connect(&self.authority).await.map_err(|e| format!("connect: {e}"))?;
        if !self.https {
            return self.send(TokioIo::new(stream), id, body).await;
        }
        let Some(tls) = &self.tls else {
            return Err("an https:// webhook without a TLS client".to_string());
        };
        let stream = tls.connect(stream, &self.host, deadline).await.map_err(|e| e.to_string())?;
        self.send(TokioIo::new(stream), id, body).await
    }

    /// The POST on a connected (and, for https, TLS) stream.
    async fn send<T>(&self, io: T, id: &str, body: &[u8]) -> Result<(), String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        let mut request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", id);
        if let Some(key) = &self.key {
            request = request.header(SIGNATURE_HEADER, signature(key, body));
        }
        let request =
            request.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
        // The connection runs beside the exchange (a receiver that answers and closes ends it
        // first); it is dropped, and closed, when the POST is over.
        let connection = tokio::spawn(connection);
        let result = match sender.send_request(request).await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            Err(e) => Err(e.to_string()),
        };
        connection.abort();
        result
    }
}

/// `host[:port]` → (host without brackets, port); `None` when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && (host.contains(':')
            || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if !valid_host {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host, port))
}

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Trunkline-Signature";

/// `sha256=HEX`: the HMAC-SHA256 of `body` with `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What the delivery loop reports, for metrics and logs.
pub trait Report: Send + Sync + 'static {
    fn delivered(&self);
    fn failed(&self, error: &str);
}

/// Delivers what the spool holds, forever: wakes on `wake` (a record was pushed) or every
/// second, POSTs each record in order and acknowledges it on a 2xx.
pub async fn deliver(
    spool: Arc<Mutex<Spool>>,
    hook: Webhook,
    wake: Arc<Notify>,
    report: Arc<dyn Report>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let s = spool.clone();
        let batch = tokio::task::spawn_blocking(move || match s.lock() {
            Ok(spool) => spool.peek(BATCH).unwrap_or_default(),
            Err(_) => Vec::new(),
        })
        .await
        .unwrap_or_default();
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        }
        for (id, body) in batch {
            match hook.post(&id, &body).await {
                Ok(()) => {
                    backoff = BACKOFF_FIRST;
                    let s = spool.clone();
                    let acked = tokio::task::spawn_blocking(move || match s.lock() {
                        Ok(mut spool) => spool.ack(1).map_err(|e| e.to_string()),
                        Err(_) => Err("spool lock poisoned".to_string()),
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    if let Err(e) = acked {
                        tracing::warn!(error = %e, "session record delivered but not acknowledged in the spool");
                    }
                    report.delivered();
                }
                Err(e) => {
                    report.failed(&e);
                    tracing::warn!(record = %id, error = %e, retry_in_s = backoff.as_secs(), "session record webhook failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}

/// How often `--records-spool-adopt` looks for spools left by gone gateways.
pub const ADOPT_EVERY: Duration = Duration::from_secs(30);

/// `--records-spool-adopt`: at once and then every `every`, takes over the records of the
/// spools beside this one whose gateway is gone (the spool's "# Handover"), logging how many
/// from which directory, and wakes the delivery loop when it took any.
pub async fn adopt(spool: Arc<Mutex<Spool>>, wake: Arc<Notify>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = spool.clone();
        let taken = tokio::task::spawn_blocking(move || adopt_round(&s)).await.unwrap_or(0);
        if taken > 0 {
            wake.notify_one();
        }
    }
}

/// One round over the sibling spools; `spool` is locked one batch at a time, so records of
/// calls ending meanwhile wait at most one batch. Says how many records it took.
fn adopt_round(spool: &Mutex<Spool>) -> usize {
    let Ok(own) = spool.lock().map(|s| s.dir().to_path_buf()) else { return 0 };
    let siblings = match sibling_spools(&own) {
        Ok(siblings) => siblings,
        Err(e) => {
            tracing::warn!(spool = %own.display(), error = %e, "cannot look for spools to adopt beside this one");
            return 0;
        }
    };
    let mut taken = 0;
    for dir in siblings {
        let adopted = Handover::open(&dir).and_then(|handover| {
            let Some(handover) = handover else { return Ok(Adoption::Skipped) };
            if handover.skipped() > 0 {
                tracing::warn!(from = %dir.display(), skipped = handover.skipped(), "torn records skipped in an adopted spool (a crash mid-write)");
            }
            handover.run(|h| {
                let mut own = spool.lock().map_err(|_| io::Error::other("spool lock poisoned"))?;
                h.move_into(&mut own, HANDOVER_BATCH)
            })
        });
        match adopted {
            Ok(Adoption::Skipped) => {
                tracing::debug!(from = %dir.display(), "spool in use by a live gateway: not adopted");
            }
            Ok(Adoption::Taken { records, left, removed }) => {
                taken += records;
                if records > 0 || removed {
                    tracing::info!(from = %dir.display(), records, removed, "adopted session records from a gone gateway's spool");
                }
                if left > 0 {
                    tracing::warn!(from = %dir.display(), left, "this gateway's spool is full: records left in the adopted spool for a later round");
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(from = %dir.display(), error = %e, "adopting a gone gateway's spool failed; tried again next round");
            }
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// (https, host, authority, path) of a URL.
    fn parts(url: &str) -> (bool, String, String, String) {
        let w = Webhook::parse(url, None).unwrap();
        (w.https, w.host, w.authority, w.path)
    }

    fn owned(
        https: bool,
        host: &str,
        authority: &str,
        path: &str,
    ) -> (bool, String, String, String) {
        (https, host.into(), authority.into(), path.into())
    }

    #[test]
    fn http_and_https_urls_give_the_host_the_port_and_the_path() {
        assert_eq!(
            parts("http://127.0.0.1:8080/records"),
            owned(false, "127.0.0.1", "127.0.0.1:8080", "/records")
        );
        assert_eq!(
            parts("http://hooks.example"),
            owned(false, "hooks.example", "hooks.example:80", "/")
        );
        assert_eq!(
            parts("https://hooks.example/in?x=1#frag"),
            owned(true, "hooks.example", "hooks.example:443", "/in?x=1")
        );
        assert_eq!(
            parts("HTTPS://hooks.example:8443?x=1"),
            owned(true, "hooks.example", "hooks.example:8443", "/?x=1")
        );
        assert_eq!(parts("https://[::1]:8443/r"), owned(true, "::1", "[::1]:8443", "/r"));
        assert_eq!(parts("https://[::1]"), owned(true, "::1", "[::1]:443", "/"));
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        for url in [
            "ftp://hooks.example",
            "hooks.example/records",
            "http:///x",
            "https://",
            "https://hooks.example:0/",
            "https://hooks.example:99999/",
            "https://hooks.example:port/",
            "https://[::1/",
            "https://[not-v6]:443/",
            "https://::1/",
            "https://bad host/",
        ] {
            assert!(Webhook::parse(url, None).is_err(), "{url} was accepted");
        }
        let err = Webhook::parse("http://user:pw@hooks.example", None).err().unwrap();
        assert!(err.contains("user info"), "{err}");
    }

    #[test]
    fn the_debug_form_shows_the_url_and_never_the_key() {
        let hook = Webhook::parse("https://h/x", Some(b"secret-key".to_vec())).unwrap();
        assert_eq!(format!("{hook:?}"), "Webhook(https://h:443/x)");
    }

    #[tokio::test]
    async fn an_https_webhook_without_a_tls_client_fails_its_post_and_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/r", listener.local_addr().unwrap());
        let hook = Webhook::parse(&url, None).unwrap();
        assert!(hook.is_https());
        let err = hook.post("id", b"{}").await.err().unwrap();
        assert!(err.contains("without a TLS client"), "{err}");
    }
}
