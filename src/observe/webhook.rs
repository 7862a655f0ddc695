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
//! Plain `http://` only for now: a receiver outside the cluster goes behind a TLS-terminating
//! proxy or a Service mesh until HTTPS is added.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::sync::Notify;

use super::spool::Spool;

/// Records taken from the spool per round.
const BATCH: usize = 16;
/// One POST, from connecting to the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where records are POSTed, and the signing key.
#[derive(Clone)]
pub struct Webhook {
    authority: String,
    path: String,
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "Webhook(http://{}{})", self.authority, self.path)
    }
}

impl Webhook {
    /// `http://host[:port][/path]`, and the HMAC key if any.
    pub fn parse(url: &str, key: Option<Vec<u8>>) -> Result<Webhook, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("{url:?}: only http:// webhooks are supported"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: no host (and no user info)"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Webhook { authority, path: path.to_string(), key })
    }

    /// One POST of one record: `Ok` on a 2xx answer.
    pub async fn post(&self, id: &str, body: &[u8]) -> Result<(), String> {
        tokio::time::timeout(POST_TIMEOUT, self.exchange(id, body))
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn exchange(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
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

    #[test]
    fn urls() {
        let w = Webhook::parse("http://127.0.0.1:8080/records", None).unwrap();
        assert_eq!((w.authority.as_str(), w.path.as_str()), ("127.0.0.1:8080", "/records"));
        let w = Webhook::parse("http://hooks.example", None).unwrap();
        assert_eq!((w.authority.as_str(), w.path.as_str()), ("hooks.example:80", "/"));
        assert!(Webhook::parse("https://hooks.example", None).is_err());
        assert!(Webhook::parse("http://user:pw@hooks.example", None).is_err());
        assert!(Webhook::parse("http:///x", None).is_err());
        assert_eq!(
            format!("{:?}", Webhook::parse("http://h/x", Some(b"k".to_vec())).unwrap()),
            "Webhook(http://h:80/x)"
        );
    }
}
