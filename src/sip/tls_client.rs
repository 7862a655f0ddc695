//! The transports' TLS client (RFC 3261 §26.2.1, RFC 5922 §7): what the gateway checks when it
//! opens a TLS connection to a carrier or an agent runtime.
//!
//! Takes: the trusted roots (the system's, read with `rustls-native-certs`, plus an optional PEM
//! bundle, `--tls-ca`, read again when the file changes), the host name each peer address is reached by
//! ([`TlsClient::name_peer`], called by the call driver after it resolves a destination), and an
//! optional hook that counts failures (the gateway's `trunkline_tls_client_failures_total`).
//! Gives: [`TlsClient::handshake`], which `sip::transport` runs on a new TCP connection before
//! it serves it like any other.
//!
//! The server name (SNI, and the name the certificate must hold) is the destination's host
//! name; an address with no known name is checked against the certificate's IP addresses
//! (`subjectAltName` iPAddress). A failed handshake is an `io::Error` that names the peer and
//! what failed ([`TlsFailure`]), a `warn` line, and one count of its reason.
//!
//! The same client serves the session records' webhook (`--records-webhook https://...`):
//! [`TlsClient::load_for`] names its CA flag (`--records-webhook-ca-file`) in its errors, and
//! [`TlsClient::connect`] runs a handshake toward a name given by the caller (the URL's host),
//! neither logged nor counted: the caller reports it as its own failure.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, CertificateError, RootCertStore};

use rustls_pki_types::ServerName;

/// How many peer addresses [`TlsClient::name_peer`] remembers; past that an old one is dropped
/// (a peer whose name was dropped is named again by its next call's lookup).
pub const MAX_NAMED_PEERS: usize = 4096;

/// Why a TLS handshake toward a peer failed: the `reason` label of
/// `trunkline_tls_client_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate does not chain to a trusted root (system roots or `--tls-ca`).
    UnknownCa,
    /// The certificate is not valid for the name (or address) the peer was reached by.
    NameMismatch,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// Any other problem with the certificate (bad signature, bad encoding, revoked...).
    BadCertificate,
    /// The handshake did not finish within `Limits::connect_timeout`.
    Timeout,
    /// Anything else: an alert from the peer, a peer that does not speak TLS, a closed
    /// connection.
    Handshake,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::UnknownCa,
        TlsFailure::NameMismatch,
        TlsFailure::Expired,
        TlsFailure::BadCertificate,
        TlsFailure::Timeout,
        TlsFailure::Handshake,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::NameMismatch => "name_mismatch",
            TlsFailure::Expired => "expired",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Handshake => "handshake",
        }
    }

    /// What a reader of the log needs to act on it; `ca_flag` is the flag that adds CAs.
    fn explain(self, ca_flag: &str) -> String {
        match self {
            TlsFailure::UnknownCa => format!(
                "unknown CA: the certificate is not signed by a trusted CA (system roots or {ca_flag})"
            ),
            TlsFailure::NameMismatch => {
                "name mismatch: the certificate is not valid for the name the peer was reached by"
                    .to_string()
            }
            TlsFailure::Expired => {
                "expired: the certificate has expired or is not valid yet".to_string()
            }
            TlsFailure::BadCertificate => "bad certificate".to_string(),
            TlsFailure::Timeout => "the handshake timed out".to_string(),
            TlsFailure::Handshake => "handshake error".to_string(),
        }
    }

    /// The failure behind a handshake error of `tokio-rustls` (a `rustls::Error` inside an
    /// `io::Error`, or a plain I/O error).
    fn of(error: &io::Error) -> TlsFailure {
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return TlsFailure::Handshake;
        };
        match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                _ => TlsFailure::BadCertificate,
            },
            _ => TlsFailure::Handshake,
        }
    }
}

/// Why the TLS client could not be built (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// `flag` is the option that named the bundle (`--tls-ca`, `--records-webhook-ca-file`).
    #[error("{flag} {path}: cannot read the CA bundle: {source}")]
    ReadCa { flag: &'static str, path: PathBuf, source: io::Error },
    #[error("{flag} {path}: no certificate in the bundle (expected PEM CERTIFICATE blocks)")]
    EmptyCa { flag: &'static str, path: PathBuf },
    #[error("{flag} {path}: certificate {index} cannot be a trust anchor: {reason}")]
    BadCa { flag: &'static str, path: PathBuf, index: usize, reason: String },
    #[error("TLS client configuration: {0}")]
    Config(String),
}

type FailureHook = Arc<dyn Fn(TlsFailure) + Send + Sync>;

/// The TLS client configuration and the names peers are reached by. Shared by every connection
/// the transports open.
pub struct TlsClient {
    /// The option that names the CA bundle, for errors and logs.
    flag: &'static str,
    /// `--tls-ca`, read again when it changes (a renewed Secret is picked up without a
    /// restart); `None`: the roots never change.
    ca: Option<PathBuf>,
    /// The connector in use, and the stamp of the CA bundle it was built from.
    current: Mutex<(Option<FileStamp>, TlsConnector)>,
    names: Mutex<HashMap<SocketAddr, String>>,
    on_failure: Option<FailureHook>,
}

/// What tells a changed file: its modification time and length.
type FileStamp = (std::time::SystemTime, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl TlsClient {
    /// The system's roots (a store that cannot be read is a warning: the CA bundle may be all
    /// that is needed) plus the certificates of `extra_ca`, a PEM bundle that must be readable
    /// and hold at least one certificate. The bundle is read again when it changes; a change
    /// that cannot be used is logged and the previous roots are kept.
    pub fn load(extra_ca: Option<&Path>) -> Result<TlsClient, TlsClientError> {
        TlsClient::load_for("--tls-ca", extra_ca)
    }

    /// [`TlsClient::load`] for a bundle given by the option `flag` (named in errors and logs).
    pub fn load_for(
        flag: &'static str,
        extra_ca: Option<&Path>,
    ) -> Result<TlsClient, TlsClientError> {
        let stamp = extra_ca.and_then(stamp);
        let roots = load_roots(flag, extra_ca)?;
        let mut client = TlsClient::with_roots(roots)?;
        client.flag = flag;
        client.ca = extra_ca.map(Path::to_path_buf);
        if let Ok(mut current) = client.current.lock() {
            current.0 = stamp;
        }
        Ok(client)
    }

    /// A client that trusts exactly `roots`.
    pub fn with_roots(roots: RootCertStore) -> Result<TlsClient, TlsClientError> {
        Ok(TlsClient {
            flag: "--tls-ca",
            ca: None,
            current: Mutex::new((None, connector(roots)?)),
            names: Mutex::new(HashMap::new()),
            on_failure: None,
        })
    }

    /// The connector to use now: rebuilt first when the CA bundle changed since the last use.
    fn connector(&self) -> io::Result<TlsConnector> {
        let mut current =
            self.current.lock().map_err(|_| io::Error::other("TLS client lock poisoned"))?;
        if let Some(path) = &self.ca {
            let now = stamp(path);
            if now != current.0 {
                // Whatever happens, this version of the file is not read again.
                current.0 = now;
                match load_roots(self.flag, Some(path)).and_then(connector) {
                    Ok(fresh) => {
                        tracing::info!(ca = %path.display(), "{} reloaded", self.flag);
                        current.1 = fresh;
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "{} changed and cannot be used; keeping the previous CA certificates",
                        self.flag
                    ),
                }
            }
        }
        Ok(current.1.clone())
    }

    /// Calls `hook` once for each failed handshake, with its reason (to count it).
    pub fn on_failure(mut self, hook: impl Fn(TlsFailure) + Send + Sync + 'static) -> TlsClient {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// `remote` is reached by the name `host`: later handshakes with it send `host` as SNI and
    /// check the certificate against it. The last name given for an address wins.
    pub fn name_peer(&self, remote: SocketAddr, host: &str) {
        let Ok(mut names) = self.names.lock() else { return };
        if names.len() >= MAX_NAMED_PEERS
            && !names.contains_key(&remote)
            && let Some(old) = names.keys().next().copied()
        {
            names.remove(&old);
        }
        names.insert(remote, host.to_ascii_lowercase());
    }

    /// The name a handshake with `remote` checks: the one given by [`TlsClient::name_peer`],
    /// else the address itself.
    pub fn server_name(&self, remote: SocketAddr) -> String {
        self.names
            .lock()
            .ok()
            .and_then(|names| names.get(&remote).cloned())
            .unwrap_or_else(|| remote.ip().to_string())
    }

    /// Runs the client handshake on `stream`, until `deadline` at the latest. A failure is
    /// logged, counted and returned as an error naming the peer and what failed.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = self.server_name(remote);
        match self.connect(stream, &name, deadline).await {
            Ok(tls) => Ok(tls),
            Err(failed) => {
                let reason = failed.reason;
                tracing::warn!(peer = %remote, server_name = %name, reason = reason.as_str(), "{failed}");
                if let Some(hook) = &self.on_failure {
                    hook(reason);
                }
                Err(failed.into())
            }
        }
    }

    /// Runs the client handshake on `stream` toward `name` (a host name, or an IP address
    /// checked against the certificate's iPAddress names), until `deadline` at the latest: SNI
    /// and the certificate check use `name`. A failure names the peer and what failed; it is
    /// neither logged nor counted here.
    pub async fn connect(
        &self,
        stream: TcpStream,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TlsStream<TcpStream>, HandshakeFailed> {
        let peer = stream.peer_addr().ok();
        let failed = |reason: TlsFailure, error: Option<io::Error>| {
            let detail = error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
            let at = peer.map(|p| format!(" ({p})")).unwrap_or_default();
            let message = format!(
                "TLS handshake with {name}{at} failed: {}{detail}",
                reason.explain(self.flag)
            );
            let kind = match reason {
                TlsFailure::Timeout => io::ErrorKind::TimedOut,
                TlsFailure::Handshake => {
                    error.as_ref().map_or(io::ErrorKind::InvalidData, io::Error::kind)
                }
                _ => io::ErrorKind::InvalidData,
            };
            HandshakeFailed { reason, kind, message }
        };
        let Ok(server_name) = ServerName::try_from(name.to_string()) else {
            let at = peer.map(|p| format!("TLS to {p}: ")).unwrap_or_default();
            return Err(HandshakeFailed {
                reason: TlsFailure::Handshake,
                kind: io::ErrorKind::InvalidInput,
                message: format!("{at}{name:?} is not a valid server name"),
            });
        };
        let connector = self.connector().map_err(|e| failed(TlsFailure::Handshake, Some(e)))?;
        match tokio::time::timeout_at(deadline, connector.connect(server_name, stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(failed(TlsFailure::of(&e), Some(e))),
            Err(_) => Err(failed(TlsFailure::Timeout, None)),
        }
    }
}

/// A failed [`TlsClient::connect`]: why (the metric's reason) and a message naming the peer
/// and what failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandshakeFailed {
    pub reason: TlsFailure,
    kind: io::ErrorKind,
    message: String,
}

impl From<HandshakeFailed> for io::Error {
    fn from(failed: HandshakeFailed) -> io::Error {
        io::Error::new(failed.kind, failed.message)
    }
}

/// The system's roots plus those of `extra_ca` (given by the option `flag`).
fn load_roots(
    flag: &'static str,
    extra_ca: Option<&Path>,
) -> Result<RootCertStore, TlsClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system store of CA certificates could not be read");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system CA certificates that cannot be trust anchors");
    }
    let system = roots.len();
    if let Some(path) = extra_ca {
        for (index, cert) in read_ca_bundle(flag, path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsClientError::BadCa {
                flag,
                path: path.to_path_buf(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted CA certificate (no system roots, no {flag}): every TLS connection \
             checked with these roots will fail"
        );
    }
    tracing::debug!(system, total = roots.len(), "TLS client roots loaded");
    Ok(roots)
}

fn connector(roots: RootCertStore) -> Result<TlsConnector, TlsClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The certificates of a PEM bundle; an unreadable file, a PEM error or no certificate at all
/// is an error naming the file.
fn read_ca_bundle(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|source| TlsClientError::ReadCa {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsClientError::ReadCa {
            flag,
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })?;
    if certs.is_empty() {
        return Err(TlsClientError::EmptyCa { flag, path: path.to_path_buf() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_bundle_is_an_error_naming_the_file() {
        let err = TlsClient::load(Some(Path::new("/nonexistent/ca.pem"))).err().expect("error");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/ca.pem") && text.contains("cannot read"), "{text}");
    }

    #[test]
    fn a_ca_bundle_without_a_certificate_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("trunkline-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "# nothing here\n").expect("write");
        let err = TlsClient::load(Some(&path)).err().expect("error");
        assert!(matches!(err, TlsClientError::EmptyCa { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bundle_given_by_another_flag_is_named_by_that_flag() {
        let err = TlsClient::load_for(
            "--records-webhook-ca-file",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .err()
        .expect("error");
        let text = err.to_string();
        assert!(text.starts_with("--records-webhook-ca-file /nonexistent/ca.pem"), "{text}");
    }

    #[test]
    fn an_address_with_no_name_is_checked_as_an_ip_address() {
        let client = TlsClient::with_roots(RootCertStore::empty()).expect("client");
        let peer: SocketAddr = "192.0.2.7:5061".parse().expect("addr");
        assert_eq!(client.server_name(peer), "192.0.2.7");
        client.name_peer(peer, "Carrier.Example");
        assert_eq!(client.server_name(peer), "carrier.example");
    }

    #[test]
    fn the_names_of_peers_are_bounded() {
        let client = TlsClient::with_roots(RootCertStore::empty()).expect("client");
        for i in 0..(MAX_NAMED_PEERS + 10) {
            let port = u16::try_from(1000 + i).expect("port");
            client.name_peer(SocketAddr::from(([192, 0, 2, 1], port)), "x.example");
        }
        assert_eq!(client.names.lock().expect("lock").len(), MAX_NAMED_PEERS);
    }

    #[test]
    fn failure_reasons_are_distinct_label_values() {
        let labels: std::collections::BTreeSet<_> =
            TlsFailure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(labels.len(), TlsFailure::ALL.len());
    }
}
