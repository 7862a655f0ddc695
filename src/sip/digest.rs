//! Server-side SIP digest authentication (RFC 3261 §22.3, RFC 7616, RFC 8760).
//!
//! Takes the value of a `Proxy-Authorization` (or `Authorization`: some carriers answer a 407
//! with it) header, the request method, the password the caller looked up for the username in
//! it, and the current time; gives a [`Verification`]. Also writes the `Proxy-Authenticate`
//! challenge values for a 407. Pure: no I/O, no clock (time is passed in), no logging. Called by
//! the inbound leg of the B2BUA (`call`) when an INVITE names a trunk that uses digest (DESIGN §4).
//!
//! ```text
//!  INVITE, no credentials ──► challenge(now, false) ──► 407, one Proxy-Authenticate per value
//!  INVITE + Proxy-Authorization ──► Credentials::parse ──► (caller: password for username)
//!                               ──► verify(credentials, method, password, now)
//!    Valid ─► go on │ Stale ─► 407 with challenge(now, true) │ Invalid(e) ─► e.status_code()
//! ```
//!
//! - **Challenge** (RFC 7616 §3.3, RFC 8760 §2.4): a SHA-256 challenge first, then MD5 (clients
//!   take the first algorithm they support), both `qop="auth"`, sharing one nonce. No `opaque`
//!   is sent: the nonce authenticates itself, so there is nothing for an opaque to add.
//! - **Stateless nonce**: `base64url(issued (8 bytes, BE) ‖ salt (8 random bytes) ‖
//!   HMAC-SHA256(key, issued ‖ salt ‖ realm)[..16])`, no padding, 43 characters. Any replica
//!   holding the same [`NonceKey`] accepts it; none has to remember it. The salt makes every
//!   challenge's nonce unique, which the per-nonce replay check below needs (without it two
//!   callers challenged in the same second would share a nonce and the second one's `nc=1`
//!   would look like a replay). A nonce older than the ttl is stale (RFC 7616 §3.3: `stale=true`
//!   only when the response was right for the old nonce, so the client knows the password).
//! - **Response** (RFC 7616 §3.4.1, RFC 3261 §22.4): only `qop=auth`, with `cnonce` and `nc`.
//!   `response = KD(H(A1), nonce:nc:cnonce:qop:H(A2))`, `A1 = username:realm:password`, for
//!   `-sess` `H(A1) = H(H(username:realm:password):nonce:cnonce)`, `A2 = method:uri`. MD5,
//!   MD5-sess, SHA-256 and SHA-256-sess are accepted. The `nc`, `qop`, `cnonce` and `uri` values
//!   are hashed exactly as the client sent them. The response is compared in constant time.
//! - **Replay** (RFC 7616 §3.4 `nc`): per nonce, the highest `nc` of a *verified* response is
//!   remembered; a response with an `nc` at or below it is rejected. Only verified responses are
//!   recorded, so nobody without the password can fill the table or block a nonce. Memory is
//!   bounded: entries go when their nonce goes stale, and the table holds at most
//!   [`REPLAY_CAP`] nonces (the oldest issued is evicted first).
//!
//! - **Guesses per nonce**: a nonce takes at most [`DEFAULT_NONCE_GUESSES`] wrong answers
//!   ([`DigestServer::with_guess_limit`]); after them every answer with it is refused unchecked
//!   ([`DigestError::TooManyGuesses`]), so a guesser needs a new challenge every few tries (and
//!   challenges are what the front door's per-source limits count). Bounded as the replay table.
//! - **uri**: [`Credentials::uri_matches`] says whether the digest `uri` is the Request-URI
//!   (the front door refuses the answer with 403 when it is not).
//!
//! Known limits:
//! - Replay detection is **per replica**. Nonces are stateless and valid on every replica that
//!   has the key, so a response replayed to a *different* replica within the ttl is not caught.
//!   Short ttls keep that window small; the digest still binds method, uri and nonce.
//! - Past [`REPLAY_CAP`] live nonces on one replica the oldest are forgotten, and a replay of one
//!   of those would be accepted while its nonce is still fresh.
//! - `nc` must grow strictly per nonce: a client that sends two requests with the same nonce out
//!   of order gets the late one rejected. Call [`DigestServer::verify`] once per server
//!   transaction, not per retransmitted datagram (the transaction layer absorbs those).
//! - The caller compares [`Credentials::uri`] with the Request-URI
//!   ([`Credentials::uri_matches`]: the same text, or the same scheme, user, host, port and
//!   transport; other URI parameters are not compared) and, when a request carries several
//!   credentials, picks the one whose realm is [`DigestServer::realm`].
//! - Not supported (never offered): `qop=auth-int`, `userhash`, `username*` (RFC 7616 §3.4.4),
//!   SHA-512-256.
//!
//! Passwords and responses never appear in errors, `Debug` output or anything else this module
//! writes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The longest `(Proxy-)Authorization` value parsed; longer ones are rejected unread.
pub const MAX_HEADER_LEN: usize = 4096;

/// The most nonces one replica remembers for replay detection (about 40 bytes each).
pub const REPLAY_CAP: usize = 100_000;

/// Wrong answers one nonce takes by default before it is refused whatever the answer
/// ([`DigestServer::with_guess_limit`]).
pub const DEFAULT_NONCE_GUESSES: u32 = 3;

/// Bytes of HMAC kept in a nonce.
const TAG_LEN: usize = 16;
/// `issued ‖ salt`: what identifies a nonce once its tag is checked.
const ID_LEN: usize = 16;
const NONCE_LEN: usize = ID_LEN + TAG_LEN;
/// Characters of base64url (no padding) for [`NONCE_LEN`] bytes.
const NONCE_TEXT_LEN: usize = 43;

/// A digest algorithm (RFC 7616 §3.3 `algorithm`, RFC 8760 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// The token on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// The algorithm named by a wire token (case-insensitive), if supported.
    pub fn from_token(token: &str) -> Option<Algorithm> {
        [Algorithm::Md5, Algorithm::Md5Sess, Algorithm::Sha256, Algorithm::Sha256Sess]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }

    pub(super) fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// `H(p1:p2:...)` as lowercase hex (RFC 7616 §3.4.1).
    pub(super) fn h(self, parts: &[&str]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex_of::<md5::Md5>(parts),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex_of::<Sha256>(parts),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn hex_of<D: sha2::Digest>(parts: &[&str]) -> String {
    let mut hasher = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The secret that signs nonces. Replicas that share it accept each other's nonces.
pub struct NonceKey([u8; 32]);

impl NonceKey {
    /// A fresh random key (rand's thread-local CSPRNG).
    pub fn generate() -> NonceKey {
        NonceKey(rand::random())
    }

    /// A key from stored bytes (e.g. a Secret shared by all replicas).
    pub fn from_bytes(bytes: [u8; 32]) -> NonceKey {
        NonceKey(bytes)
    }

    fn mac(&self, id: &[u8; ID_LEN], realm: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id);
        mac.update(realm.as_bytes());
        mac
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// The parameters of a `Digest` (Proxy-)Authorization header (RFC 7616 §3.4, RFC 3261 §25.1
/// `digest-response`). Quoted values are unescaped. `Debug` leaves out the response.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// `MD5` when the header names none (RFC 7616 §3.4).
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub nc: Option<u32>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
    /// `nc` as sent: it is hashed verbatim (some clients send upper-case hex).
    nc_text: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("uri", &self.uri)
            .field("response", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("cnonce", &self.cnonce)
            .field("nc", &self.nc)
            .field("qop", &self.qop)
            .field("opaque", &self.opaque)
            .finish()
    }
}

impl Credentials {
    /// Parses the value of a (Proxy-)Authorization header: `Digest username="..", realm="..", ...`.
    ///
    /// Accepts quoted strings with escapes or bare tokens as values, spaces around `=` and `,`,
    /// parameter names in any case; ignores unknown parameters. Rejects values over
    /// [`MAX_HEADER_LEN`], control characters, duplicate parameters, a missing `username`,
    /// `realm`, `nonce`, `uri` or `response`, `qop` without `cnonce` and `nc`, an `nc` that is
    /// not 8 hex digits, an unknown algorithm, `userhash=true` and `username*`.
    pub fn parse(header_value: &str) -> Result<Credentials, DigestError> {
        let params = parse_digest_params(header_value)?;

        let mut username = None;
        let mut realm = None;
        let mut nonce = None;
        let mut uri = None;
        let mut response = None;
        let mut algorithm = None;
        let mut cnonce = None;
        let mut nc = None;
        let mut qop = None;
        let mut opaque = None;
        for (name, value) in params {
            let slot = match name.as_str() {
                "username" => &mut username,
                "realm" => &mut realm,
                "nonce" => &mut nonce,
                "uri" => &mut uri,
                "response" => &mut response,
                "algorithm" => &mut algorithm,
                "cnonce" => &mut cnonce,
                "nc" => &mut nc,
                "qop" => &mut qop,
                "opaque" => &mut opaque,
                "username*" => {
                    return Err(DigestError::Malformed(
                        "username* (RFC 7616 §3.4.4) is not supported".into(),
                    ));
                }
                "userhash" if value.eq_ignore_ascii_case("false") => continue,
                "userhash" => {
                    return Err(DigestError::Malformed("userhash was not offered".into()));
                }
                _ => continue,
            };
            *slot = Some(value);
        }

        let algorithm = match algorithm {
            None => Algorithm::Md5,
            Some(token) => Algorithm::from_token(&token)
                .ok_or_else(|| DigestError::UnsupportedAlgorithm(clip(&token)))?,
        };
        let nc_value = match &nc {
            None => None,
            Some(text) => Some(parse_nc(text)?),
        };
        if qop.is_some() {
            if cnonce.is_none() {
                return Err(DigestError::MissingParameter("cnonce"));
            }
            if nc.is_none() {
                return Err(DigestError::MissingParameter("nc"));
            }
        }

        Ok(Credentials {
            username: username.ok_or(DigestError::MissingParameter("username"))?,
            realm: realm.ok_or(DigestError::MissingParameter("realm"))?,
            nonce: nonce.ok_or(DigestError::MissingParameter("nonce"))?,
            uri: uri.ok_or(DigestError::MissingParameter("uri"))?,
            response: response.ok_or(DigestError::MissingParameter("response"))?,
            algorithm,
            cnonce,
            nc: nc_value,
            qop,
            opaque,
            nc_text: nc,
        })
    }
}

impl Credentials {
    /// Whether the digest `uri` names the request's Request-URI (RFC 3261 §22.4: the response
    /// is bound to it, so an answer captured for one request cannot serve another): the same
    /// text, or the same SIP URI (scheme, user, host in any case, port, transport) written
    /// differently.
    pub fn uri_matches(&self, request_uri: &str) -> bool {
        if self.uri == request_uri {
            return true;
        }
        match (super::msg::SipUri::parse(&self.uri), super::msg::SipUri::parse(request_uri)) {
            (Some(a), Some(b)) => {
                a.sips == b.sips
                    && a.user == b.user
                    && a.host.eq_ignore_ascii_case(&b.host)
                    && a.port == b.port
                    && a.transport == b.transport
            }
            _ => false,
        }
    }
}

/// `nc-value = 8LHEX` (RFC 7616 §3.4); upper case is accepted too.
fn parse_nc(text: &str) -> Result<u32, DigestError> {
    let malformed = || DigestError::Malformed("nc must be 8 hex digits".into());
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    let nc = u32::from_str_radix(text, 16).map_err(|_| malformed())?;
    if nc == 0 {
        return Err(DigestError::Malformed("nc starts at 00000001".into()));
    }
    Ok(nc)
}

/// The outcome of [`DigestServer::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Valid,
    /// The nonce is ours and the response right, but the nonce expired: answer with
    /// `challenge(now, true)` (RFC 7616 §3.3 `stale`).
    Stale,
    Invalid(DigestError),
}

/// Why credentials were refused. Messages never hold a password or a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("authorization header of {len} bytes exceeds the {MAX_HEADER_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("malformed digest credentials: {0}")]
    Malformed(String),
    #[error("digest credentials lack the {0} parameter")]
    MissingParameter(&'static str),
    #[error("digest parameter {0} appears more than once")]
    DuplicateParameter(String),
    #[error("digest algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("digest qop {0} is not supported (only auth)")]
    UnsupportedQop(String),
    #[error("nonce was not issued by this gateway")]
    BadNonce,
    #[error("credentials are for another realm")]
    RealmMismatch,
    #[error("digest response does not match")]
    WrongResponse,
    #[error("nonce count was already used with this nonce")]
    NonceCountReplay,
    #[error("the nonce took its {0} wrong answers; ask for a new challenge")]
    TooManyGuesses(u32),
    #[error("the digest uri is not the Request-URI")]
    UriMismatch,
}

impl DigestError {
    /// The SIP answer (RFC 3261 §21, §22.3): 400 for a header we cannot use, 407 (a fresh
    /// challenge) for credentials that are not an answer to one of our challenges, 403 for wrong
    /// credentials or a replay.
    pub fn status_code(&self) -> u16 {
        match self {
            DigestError::TooLong { .. }
            | DigestError::NotDigest
            | DigestError::Malformed(_)
            | DigestError::MissingParameter(_)
            | DigestError::DuplicateParameter(_)
            | DigestError::UnsupportedAlgorithm(_)
            | DigestError::UnsupportedQop(_) => 400,
            // A nonce from a rotated key or a restarted replica, or credentials meant for
            // another proxy's realm (RFC 3261 §22.3): challenge again.
            DigestError::BadNonce | DigestError::RealmMismatch => 407,
            DigestError::WrongResponse
            | DigestError::NonceCountReplay
            | DigestError::TooManyGuesses(_)
            | DigestError::UriMismatch => 403,
        }
    }
}

/// Issues challenges and verifies answers for one realm.
#[derive(Debug)]
pub struct DigestServer {
    realm: String,
    key: NonceKey,
    nonce_ttl: Duration,
    replay: ReplayGuard,
    /// Wrong answers per nonce.
    guesses: GuessCounter,
    /// The algorithms offered, in the order of the challenges.
    algorithms: Vec<Algorithm>,
}

impl DigestServer {
    /// A server for `realm` (a configured name without control characters) signing nonces with
    /// `key`; nonces go stale after `nonce_ttl` (whole seconds). Remembers up to
    /// [`REPLAY_CAP`] nonces for replay detection.
    pub fn new(realm: impl Into<String>, key: NonceKey, nonce_ttl: Duration) -> Self {
        DigestServer {
            realm: realm.into(),
            key,
            nonce_ttl,
            replay: ReplayGuard::new(REPLAY_CAP),
            guesses: GuessCounter::new(REPLAY_CAP, DEFAULT_NONCE_GUESSES),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// A nonce takes at most `limit` wrong answers: after them every answer with it, right or
    /// wrong, is refused with [`DigestError::TooManyGuesses`] (unchecked), so that guessing
    /// needs a new challenge every `limit` tries. 0 keeps [`DEFAULT_NONCE_GUESSES`].
    pub fn with_guess_limit(mut self, limit: u32) -> Self {
        if limit > 0 {
            self.guesses = GuessCounter::new(REPLAY_CAP, limit);
        }
        self
    }

    /// Offers these algorithms, one challenge each in this order (plain `MD5` and `SHA-256`;
    /// a `-sess` answer to an offered family is accepted). An answer with an algorithm of a
    /// family not offered is refused, so offering only SHA-256 prevents a downgrade to MD5.
    /// Many deployed UAs read only the first challenge: put the one every carrier speaks first.
    /// An empty list keeps the default (SHA-256, then MD5).
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        if !algorithms.is_empty() {
            self.algorithms = algorithms.to_vec();
        }
        self
    }

    fn offers(&self, algorithm: Algorithm) -> bool {
        let sha = |a: Algorithm| matches!(a, Algorithm::Sha256 | Algorithm::Sha256Sess);
        self.algorithms.iter().any(|offered| sha(*offered) == sha(algorithm))
    }

    /// Header values for `Proxy-Authenticate` (one header each), one per offered algorithm in
    /// order (by default SHA-256 first, then MD5: RFC 8760 §2.4, clients pick the first they
    /// support), all `qop="auth"` with the same fresh nonce, `stale=true` when asked.
    pub fn challenge(&self, now_unix: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_unix, rand::random());
        let realm = quote(&self.realm);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|algorithm| {
                format!(
                    "Digest realm={realm}, nonce=\"{nonce}\", algorithm={algorithm}, \
                     qop=\"auth\"{stale}"
                )
            })
            .collect()
    }

    /// Checks `credentials` against `password` (the one stored for `credentials.username`) for a
    /// request with `method`. On `Valid`, records the nonce count, so the same answer is refused
    /// next time.
    pub fn verify(
        &self,
        credentials: &Credentials,
        method: &str,
        password: &str,
        now_unix: u64,
    ) -> Verification {
        match self.check(credentials, method, password, now_unix) {
            Ok(verification) => verification,
            Err(error) => Verification::Invalid(error),
        }
    }

    fn check(
        &self,
        credentials: &Credentials,
        method: &str,
        password: &str,
        now_unix: u64,
    ) -> Result<Verification, DigestError> {
        let (id, issued) = self.open_nonce(&credentials.nonce)?;
        if credentials.realm != self.realm {
            return Err(DigestError::RealmMismatch);
        }
        if !self.offers(credentials.algorithm) {
            return Err(DigestError::UnsupportedAlgorithm(
                credentials.algorithm.as_str().to_string(),
            ));
        }
        let qop = credentials.qop.as_deref().ok_or(DigestError::MissingParameter("qop"))?;
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(DigestError::UnsupportedQop(clip(qop)));
        }
        // Credentials::parse guarantees both with qop; hand-built credentials may lack them.
        let (Some(nc), Some(_)) = (credentials.nc, credentials.nc_text.as_deref()) else {
            return Err(DigestError::MissingParameter("nc"));
        };
        if credentials.cnonce.is_none() {
            return Err(DigestError::MissingParameter("cnonce"));
        }

        if self.guesses.exhausted(&id) {
            return Err(DigestError::TooManyGuesses(self.guesses.limit));
        }
        let expected = expected_response(credentials, method, password);
        let received = credentials.response.to_ascii_lowercase();
        if !constant_time_eq(expected.as_bytes(), received.as_bytes()) {
            self.guesses.wrong(id, now_unix, self.nonce_ttl.as_secs());
            return Err(DigestError::WrongResponse);
        }
        if now_unix.saturating_sub(issued) > self.nonce_ttl.as_secs() {
            return Ok(Verification::Stale);
        }
        if !self.replay.accept(id, nc, now_unix, self.nonce_ttl.as_secs()) {
            return Err(DigestError::NonceCountReplay);
        }
        Ok(Verification::Valid)
    }

    fn nonce(&self, now_unix: u64, salt: [u8; 8]) -> String {
        let mut id = [0u8; ID_LEN];
        id[..8].copy_from_slice(&now_unix.to_be_bytes());
        id[8..].copy_from_slice(&salt);
        let tag = self.key.mac(&id, &self.realm).finalize().into_bytes();
        let mut raw = [0u8; NONCE_LEN];
        raw[..ID_LEN].copy_from_slice(&id);
        raw[ID_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce's id and issue time, if this key signed it for this realm.
    fn open_nonce(&self, nonce: &str) -> Result<([u8; ID_LEN], u64), DigestError> {
        if nonce.len() != NONCE_TEXT_LEN {
            return Err(DigestError::BadNonce);
        }
        let raw = URL_SAFE_NO_PAD.decode(nonce).map_err(|_| DigestError::BadNonce)?;
        let raw: [u8; NONCE_LEN] = raw.try_into().map_err(|_| DigestError::BadNonce)?;
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&raw[..ID_LEN]);
        self.key
            .mac(&id, &self.realm)
            .verify_truncated_left(&raw[ID_LEN..])
            .map_err(|_| DigestError::BadNonce)?;
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&id[..8]);
        Ok((id, u64::from_be_bytes(issued)))
    }
}

/// `KD(H(A1), nonce:nc:cnonce:qop:H(A2))` (RFC 7616 §3.4.1), from the values as the client sent
/// them. The caller has checked that qop, nc and cnonce are there (the RFC 2069 form without
/// them is not accepted).
fn expected_response(credentials: &Credentials, method: &str, password: &str) -> String {
    let algorithm = credentials.algorithm;
    let cnonce = credentials.cnonce.as_deref().unwrap_or_default();
    let nc = credentials.nc_text.as_deref().unwrap_or_default();
    let qop = credentials.qop.as_deref().unwrap_or_default();
    let mut ha1 = algorithm.h(&[&credentials.username, &credentials.realm, password]);
    if algorithm.is_sess() {
        ha1 = algorithm.h(&[&ha1, &credentials.nonce, cnonce]);
    }
    let ha2 = algorithm.h(&[method, &credentials.uri]);
    algorithm.h(&[&ha1, &credentials.nonce, nc, cnonce, qop, &ha2])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Per nonce, the highest nonce count of a verified response (RFC 7616 §3.4 `nc`). Keyed by the
/// nonce's `issued ‖ salt`, whose big-endian time prefix orders the map by issue time, so the
/// expired and the oldest entries are the first ones.
struct ReplayGuard {
    cap: usize,
    highest_nc: Mutex<BTreeMap<[u8; ID_LEN], u32>>,
}

impl ReplayGuard {
    fn new(cap: usize) -> Self {
        ReplayGuard { cap: cap.max(1), highest_nc: Mutex::new(BTreeMap::new()) }
    }

    /// Records `nc` for the nonce `id` unless it is not above the highest one seen.
    fn accept(&self, id: [u8; ID_LEN], nc: u32, now_unix: u64, ttl_secs: u64) -> bool {
        // The map is consistent after every statement, so a poisoned lock is still usable.
        let mut seen = self.highest_nc.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(highest) = seen.get_mut(&id) {
            if nc <= *highest {
                return false;
            }
            *highest = nc;
            return true;
        }
        make_room(&mut seen, self.cap, now_unix, ttl_secs);
        seen.insert(id, nc);
        true
    }

    fn len(&self) -> usize {
        self.highest_nc.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard").field("cap", &self.cap).field("nonces", &self.len()).finish()
    }
}

/// Makes room for one more nonce in a table keyed by nonce id (issue time first, so the map's
/// order is issue order): stale nonces go first, then the oldest issued while at `cap`.
fn make_room<V>(map: &mut BTreeMap<[u8; ID_LEN], V>, cap: usize, now_unix: u64, ttl_secs: u64) {
    loop {
        let len = map.len();
        let Some(entry) = map.first_entry() else { break };
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&entry.key()[..8]);
        let expired = u64::from_be_bytes(issued).saturating_add(ttl_secs) < now_unix;
        if !expired && len < cap {
            break;
        }
        entry.remove();
    }
}

/// Wrong answers per nonce (the per-nonce guess limit). Only nonces this key signed get here,
/// so the table holds what our challenges handed out; bounded like [`ReplayGuard`]: stale
/// nonces go first, then the oldest issued.
struct GuessCounter {
    cap: usize,
    limit: u32,
    wrong: Mutex<BTreeMap<[u8; ID_LEN], u32>>,
}

impl GuessCounter {
    fn new(cap: usize, limit: u32) -> Self {
        GuessCounter { cap: cap.max(1), limit: limit.max(1), wrong: Mutex::new(BTreeMap::new()) }
    }

    fn exhausted(&self, id: &[u8; ID_LEN]) -> bool {
        let wrong = self.wrong.lock().unwrap_or_else(PoisonError::into_inner);
        wrong.get(id).is_some_and(|n| *n >= self.limit)
    }

    fn wrong(&self, id: [u8; ID_LEN], now_unix: u64, ttl_secs: u64) {
        // The map is consistent after every statement, so a poisoned lock is still usable.
        let mut wrong = self.wrong.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = wrong.get_mut(&id) {
            *count = count.saturating_add(1);
            return;
        }
        make_room(&mut wrong, self.cap, now_unix, ttl_secs);
        wrong.insert(id, 1);
    }

    fn len(&self) -> usize {
        self.wrong.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl fmt::Debug for GuessCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuessCounter")
            .field("limit", &self.limit)
            .field("nonces", &self.len())
            .finish()
    }
}

/// A quoted-string (RFC 3261 §25.1) holding `value`.
pub(super) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A short, printable copy of a peer's token for an error message.
fn clip(value: &str) -> String {
    value.chars().take(32).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// Splits `Digest name=value, ...` (RFC 3261 §25.1 `credentials`, RFC 7235 §2.1 auth-params)
/// into lower-cased names and unescaped values, in order.
pub(super) fn parse_digest_params(
    header_value: &str,
) -> Result<Vec<(String, String)>, DigestError> {
    if header_value.len() > MAX_HEADER_LEN {
        return Err(DigestError::TooLong { len: header_value.len() });
    }
    if header_value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(DigestError::Malformed("control character".into()));
    }
    let mut cursor = Cursor { rest: header_value.trim_start_matches([' ', '\t']) };
    let scheme = cursor.token();
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    if !cursor.skip_whitespace() {
        return Err(DigestError::Malformed("expected parameters after Digest".into()));
    }

    let mut params: Vec<(String, String)> = Vec::new();
    let mut names = HashSet::new();
    loop {
        let name = cursor.token().to_ascii_lowercase();
        if name.is_empty() {
            return Err(DigestError::Malformed("expected a parameter name".into()));
        }
        cursor.skip_whitespace();
        if !cursor.eat('=') {
            return Err(DigestError::Malformed("expected '=' after a name".into()));
        }
        cursor.skip_whitespace();
        let value = if cursor.rest.starts_with('"') {
            cursor.quoted_string()?
        } else {
            let token = cursor.token();
            if token.is_empty() {
                return Err(DigestError::Malformed("expected a value".into()));
            }
            token.to_owned()
        };
        if !names.insert(name.clone()) {
            return Err(DigestError::DuplicateParameter(clip(&name)));
        }
        params.push((name, value));
        cursor.skip_whitespace();
        if cursor.rest.is_empty() {
            return Ok(params);
        }
        if !cursor.eat(',') {
            return Err(DigestError::Malformed("expected ',' between parameters".into()));
        }
        cursor.skip_whitespace();
    }
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// Skips SP and HTAB; says whether there were any.
    fn skip_whitespace(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// `token` (RFC 3261 §25.1), possibly empty.
    fn token(&mut self) -> &'a str {
        let end = self.rest.find(|c: char| !is_token_char(c)).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    /// `quoted-string` with `quoted-pair` escapes (RFC 3261 §25.1), unescaped.
    fn quoted_string(&mut self) -> Result<String, DigestError> {
        let mut chars = self.rest.char_indices();
        let mut out = String::new();
        chars.next(); // the opening quote
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped)) if escaped.is_ascii() => out.push(escaped),
                    Some(_) => {
                        return Err(DigestError::Malformed(
                            "only ASCII may follow '\\' in a quoted string".into(),
                        ));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(DigestError::Malformed("unterminated quoted string".into()))
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~')
}

#[cfg(test)]
mod algorithm_choice_tests {
    use super::*;

    #[test]
    fn the_challenges_follow_the_configured_order_and_an_unoffered_family_is_refused() {
        let server = DigestServer::new("trunkline", NonceKey::generate(), Duration::from_secs(60))
            .with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
        let c = server.challenge(1_000, false);
        assert!(c[0].contains("algorithm=MD5"), "{c:?}");
        assert!(c[1].contains("algorithm=SHA-256"), "{c:?}");
        let only_sha =
            DigestServer::new("trunkline", NonceKey::generate(), Duration::from_secs(60))
                .with_algorithms(&[Algorithm::Sha256]);
        assert!(only_sha.offers(Algorithm::Sha256Sess));
        assert!(!only_sha.offers(Algorithm::Md5));
        assert!(!only_sha.offers(Algorithm::Md5Sess));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REALM: &str = "trunkline.example.net";
    const USER: &str = "carrier-a";
    const PASSWORD: &str = "s3cret!";
    const NOW: u64 = 1_750_000_000;
    const TTL: Duration = Duration::from_secs(300);

    fn server() -> DigestServer {
        DigestServer::new(REALM, NonceKey::from_bytes([7; 32]), TTL)
    }

    /// The named parameters of one challenge value.
    fn challenge_params(value: &str) -> BTreeMap<String, String> {
        parse_digest_params(value).expect("our own challenge parses").into_iter().collect()
    }

    /// A correct answer to `challenge` built by hand, for the cases a real client cannot make.
    struct Answer<'a> {
        challenge: &'a str,
        algorithm: Algorithm,
        username: &'a str,
        password: &'a str,
        nc: u32,
        cnonce: &'a str,
    }

    impl Answer<'_> {
        fn new(challenge: &str) -> Answer<'_> {
            Answer {
                challenge,
                algorithm: Algorithm::Sha256,
                username: USER,
                password: PASSWORD,
                nc: 1,
                cnonce: "0a4f113b",
            }
        }

        fn header(&self) -> String {
            let params = challenge_params(self.challenge);
            let mut credentials = Credentials {
                username: self.username.into(),
                realm: params["realm"].clone(),
                nonce: params["nonce"].clone(),
                uri: "sip:+15551234567@gw.example.net".into(),
                response: String::new(),
                algorithm: self.algorithm,
                cnonce: Some(self.cnonce.into()),
                nc: Some(self.nc),
                qop: Some("auth".into()),
                opaque: None,
                nc_text: Some(format!("{:08x}", self.nc)),
            };
            credentials.response = expected_response(&credentials, "INVITE", self.password);
            format!(
                "Digest username={}, realm={}, nonce={}, uri={}, response=\"{}\", \
                 algorithm={}, cnonce={}, nc={:08x}, qop=auth",
                quote(&credentials.username),
                quote(&credentials.realm),
                quote(&credentials.nonce),
                quote(&credentials.uri),
                credentials.response,
                self.algorithm,
                quote(self.cnonce),
                self.nc,
            )
        }

        fn credentials(&self) -> Credentials {
            Credentials::parse(&self.header()).expect("a well-formed answer")
        }
    }

    fn first_challenge(server: &DigestServer, now: u64) -> String {
        server.challenge(now, false).remove(0)
    }

    mod ezk_client {
        use super::*;
        use ezk_sip_auth::{
            ClientAuthenticator, DigestAuthenticator, DigestCredentials, DigestUser, RequestParts,
            ResponseParts,
        };
        use ezk_sip_types::msg::{RequestLine, StatusLine};
        use ezk_sip_types::uri::SipUri;
        use ezk_sip_types::{Headers, Method, Name, StatusCode};

        /// ezk-sip-auth's UAC answering `challenges` (407 header values) for an INVITE.
        pub struct Client {
            authenticator: DigestAuthenticator,
        }

        impl Client {
            pub fn answering(challenges: &[String], password: &str) -> Client {
                let mut credentials = DigestCredentials::new();
                credentials.set_default(DigestUser::new(USER, password));
                let mut authenticator = DigestAuthenticator::new(credentials);
                let mut response_headers = Headers::new();
                for challenge in challenges {
                    response_headers.insert(Name::PROXY_AUTHENTICATE, challenge.as_str());
                }
                let line = RequestLine {
                    method: Method::INVITE,
                    uri: "sip:+15551234567@gw.example.net".parse::<SipUri>().unwrap(),
                };
                authenticator
                    .handle_rejection(
                        RequestParts { line: &line, headers: &Headers::new(), body: &[] },
                        ResponseParts {
                            line: &StatusLine {
                                code: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                                reason: None,
                            },
                            headers: &response_headers,
                            body: &[],
                        },
                    )
                    .unwrap();
                Client { authenticator }
            }

            /// The Proxy-Authorization value of the next request (nc grows each time).
            pub fn next_header(&mut self) -> String {
                let mut headers = Headers::new();
                self.authenticator.authorize_request(&mut headers);
                let values: Vec<String> =
                    headers.get_raw(&Name::PROXY_AUTHORIZATION).map(|v| v.to_string()).collect();
                assert_eq!(values.len(), 1, "{values:?}");
                values[0].clone()
            }
        }
    }
    use ezk_client::Client;

    fn verify_header(
        server: &DigestServer,
        header: &str,
        password: &str,
        now: u64,
    ) -> Verification {
        let credentials = Credentials::parse(header).unwrap();
        server.verify(&credentials, "INVITE", password, now)
    }

    // --- RFC 7616 §3.9.1 ---

    fn rfc7616_example(algorithm: &str, response: &str) -> Credentials {
        Credentials::parse(&format!(
            r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html",
               algorithm={algorithm}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001,
               cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="{response}",
               opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#
        )
        .replace('\n', " "))
        .unwrap()
    }

    #[test]
    fn rfc7616_md5_example_gives_the_published_response() {
        let credentials = rfc7616_example("MD5", "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(credentials.algorithm, Algorithm::Md5);
        assert_eq!(expected_response(&credentials, "GET", "Circle of Life"), credentials.response);
    }

    #[test]
    fn rfc7616_sha256_example_gives_the_published_response() {
        let credentials = rfc7616_example(
            "SHA-256",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        assert_eq!(credentials.algorithm, Algorithm::Sha256);
        assert_eq!(
            credentials.opaque.as_deref(),
            Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        );
        assert_eq!(expected_response(&credentials, "GET", "Circle of Life"), credentials.response);
    }

    #[test]
    fn sess_responses_match_an_independent_computation() {
        // RFC 7616 has no -sess vectors; these come from Python's hashlib over the §3.9.1
        // inputs with H(A1) = H(H(user:realm:password):nonce:cnonce).
        for (algorithm, response) in [
            ("MD5-sess", "e783283f46242139c486a698fec7211d"),
            ("SHA-256-sess", "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7"),
        ] {
            let credentials = rfc7616_example(algorithm, response);
            assert_eq!(
                expected_response(&credentials, "GET", "Circle of Life"),
                response,
                "{algorithm}"
            );
        }
    }

    // --- challenge ---

    #[test]
    fn challenge_offers_sha256_then_md5_with_one_nonce_and_qop_auth() {
        let values = server().challenge(NOW, false);
        assert_eq!(values.len(), 2);
        let sha = challenge_params(&values[0]);
        let md5 = challenge_params(&values[1]);
        assert_eq!(sha["algorithm"], "SHA-256");
        assert_eq!(md5["algorithm"], "MD5");
        assert_eq!(sha["nonce"], md5["nonce"]);
        assert_eq!(sha["nonce"].len(), NONCE_TEXT_LEN);
        assert_eq!(sha["qop"], "auth");
        assert_eq!(sha["realm"], REALM);
        assert!(!sha.contains_key("stale"));
        assert!(values[0].starts_with("Digest realm=\""), "{}", values[0]);
    }

    #[test]
    fn challenge_says_stale_when_asked() {
        for value in server().challenge(NOW, true) {
            assert_eq!(challenge_params(&value)["stale"], "true");
        }
    }

    #[test]
    fn every_challenge_has_its_own_nonce_even_within_a_second() {
        let server = server();
        let a = challenge_params(&first_challenge(&server, NOW))["nonce"].clone();
        let b = challenge_params(&first_challenge(&server, NOW))["nonce"].clone();
        assert_ne!(a, b);
    }

    // --- a real client ---

    #[test]
    fn ezk_client_answers_the_sha256_challenge_and_is_valid() {
        let server = server();
        let challenges = server.challenge(NOW, false);
        let mut client = Client::answering(&challenges, PASSWORD);
        let header = client.next_header();
        assert_eq!(Credentials::parse(&header).unwrap().algorithm, Algorithm::Sha256);
        assert_eq!(verify_header(&server, &header, PASSWORD, NOW + 1), Verification::Valid);
    }

    #[test]
    fn ezk_client_answers_the_md5_challenge_and_is_valid() {
        let server = server();
        let md5_only = vec![server.challenge(NOW, false).remove(1)];
        let mut client = Client::answering(&md5_only, PASSWORD);
        let header = client.next_header();
        assert_eq!(Credentials::parse(&header).unwrap().algorithm, Algorithm::Md5);
        assert_eq!(verify_header(&server, &header, PASSWORD, NOW), Verification::Valid);
    }

    #[test]
    fn wrong_password_is_a_wrong_response_answered_403() {
        let server = server();
        let mut client = Client::answering(&server.challenge(NOW, false), "not the password");
        let verification = verify_header(&server, &client.next_header(), PASSWORD, NOW);
        assert_eq!(verification, Verification::Invalid(DigestError::WrongResponse));
        assert_eq!(DigestError::WrongResponse.status_code(), 403);
    }

    #[test]
    fn same_response_twice_is_a_replay_and_the_next_nonce_count_is_valid() {
        let server = server();
        let mut client = Client::answering(&server.challenge(NOW, false), PASSWORD);
        let first = client.next_header();
        assert_eq!(verify_header(&server, &first, PASSWORD, NOW), Verification::Valid);
        assert_eq!(
            verify_header(&server, &first, PASSWORD, NOW),
            Verification::Invalid(DigestError::NonceCountReplay)
        );
        let second = client.next_header();
        assert_eq!(Credentials::parse(&second).unwrap().nc, Some(2));
        assert_eq!(verify_header(&server, &second, PASSWORD, NOW + 2), Verification::Valid);
        assert_eq!(
            verify_header(&server, &first, PASSWORD, NOW + 2),
            Verification::Invalid(DigestError::NonceCountReplay)
        );
    }

    #[test]
    fn upper_case_nonce_count_is_hashed_as_sent() {
        // ezk-sip-auth prints and hashes nc with {:08X}: 0000000A, not 0000000a.
        let server = server();
        let mut client = Client::answering(&server.challenge(NOW, false), PASSWORD);
        for _ in 0..9 {
            client.next_header();
        }
        let tenth = client.next_header();
        assert!(tenth.contains("nc=0000000A"), "{tenth}");
        assert_eq!(verify_header(&server, &tenth, PASSWORD, NOW), Verification::Valid);
    }

    #[test]
    fn failed_response_does_not_burn_the_nonce_count() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let wrong = Answer { password: "guess", nc: 0xffff_ffff, ..Answer::new(&challenge) };
        assert_eq!(
            server.verify(&wrong.credentials(), "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::WrongResponse)
        );
        let right = Answer::new(&challenge);
        assert_eq!(
            server.verify(&right.credentials(), "INVITE", PASSWORD, NOW),
            Verification::Valid
        );
    }

    #[test]
    fn a_nonce_takes_three_wrong_answers_then_refuses_even_the_right_one() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        for guess in ["guess1", "guess2", "guess3"] {
            let wrong = Answer { password: guess, ..Answer::new(&challenge) };
            assert_eq!(
                server.verify(&wrong.credentials(), "INVITE", PASSWORD, NOW),
                Verification::Invalid(DigestError::WrongResponse),
                "{guess}"
            );
        }
        let right = Answer::new(&challenge);
        let refused = server.verify(&right.credentials(), "INVITE", PASSWORD, NOW);
        assert_eq!(refused, Verification::Invalid(DigestError::TooManyGuesses(3)));
        assert_eq!(DigestError::TooManyGuesses(3).status_code(), 403);
        // A new challenge's nonce is not touched by the old one's guesses.
        let fresh = first_challenge(&server, NOW);
        assert_eq!(
            server.verify(&Answer::new(&fresh).credentials(), "INVITE", PASSWORD, NOW),
            Verification::Valid
        );
    }

    #[test]
    fn the_guess_limit_is_configurable() {
        let server = server().with_guess_limit(1);
        let challenge = first_challenge(&server, NOW);
        let wrong = Answer { password: "guess", ..Answer::new(&challenge) };
        let _ = server.verify(&wrong.credentials(), "INVITE", PASSWORD, NOW);
        assert_eq!(
            server.verify(&Answer::new(&challenge).credentials(), "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::TooManyGuesses(1))
        );
    }

    #[test]
    fn the_guess_table_stays_within_its_cap_and_forgets_stale_nonces() {
        let guesses = GuessCounter::new(1000, 3);
        for n in 0..5000 {
            guesses.wrong(id(NOW, n), NOW, 300);
        }
        assert_eq!(guesses.len(), 1000);
        guesses.wrong(id(NOW + 1000, 0), NOW + 1000, 300);
        assert_eq!(guesses.len(), 1, "the stale ones went");
    }

    #[test]
    fn the_digest_uri_must_name_the_request_uri() {
        let answer = |uri: &str| Credentials { uri: uri.into(), ..rfc7616_example("MD5", "x") };
        let request_uri = "sip:+14155550100@gw.example.net;user=phone";
        assert!(answer(request_uri).uri_matches(request_uri));
        assert!(answer("sip:+14155550100@GW.example.net;user=phone").uri_matches(request_uri));
        assert!(!answer("sip:+14155550101@gw.example.net;user=phone").uri_matches(request_uri));
        assert!(!answer("sip:+14155550100@other.example.net").uri_matches(request_uri));
        assert!(!answer("sip:+14155550100@gw.example.net:5070").uri_matches(request_uri));
        assert!(!answer("sips:+14155550100@gw.example.net").uri_matches(request_uri));
        assert!(!answer("not a uri").uri_matches(request_uri));
    }

    #[test]
    fn ezk_client_sess_answers_are_not_rfc7616_and_are_refused() {
        // ezk-sip-auth 0.5 builds the -sess H(A1) as "H(u:r:p):nonce:cnonce" without hashing it
        // again (RFC 7616 §3.4.2 hashes it), so its -sess answers never match a correct server.
        let server = server();
        let nonce = challenge_params(&first_challenge(&server, NOW))["nonce"].clone();
        let challenge = format!(
            "Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=SHA-256-sess, qop=\"auth\""
        );
        let mut client = Client::answering(&[challenge], PASSWORD);
        let header = client.next_header();
        assert_eq!(
            verify_header(&server, &header, PASSWORD, NOW),
            Verification::Invalid(DigestError::WrongResponse)
        );
        // The cause is exactly the missing hash.
        let c = Credentials::parse(&header).unwrap();
        let (cnonce, nc) = (c.cnonce.as_deref().unwrap(), c.nc_text.as_deref().unwrap());
        let h = |parts: &[&str]| Algorithm::Sha256.h(parts);
        let unhashed_a1 = format!("{}:{}:{cnonce}", h(&[USER, REALM, PASSWORD]), c.nonce);
        let ezk = h(&[&unhashed_a1, &c.nonce, nc, cnonce, "auth", &h(&["INVITE", &c.uri])]);
        assert_eq!(c.response, ezk);
    }

    // --- nonces ---

    #[test]
    fn nonce_older_than_the_ttl_is_stale() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let credentials = Answer::new(&challenge).credentials();
        let late = NOW + TTL.as_secs() + 1;
        assert_eq!(server.verify(&credentials, "INVITE", PASSWORD, late), Verification::Stale);
        assert_eq!(
            server.verify(&credentials, "INVITE", PASSWORD, NOW + TTL.as_secs()),
            Verification::Valid
        );
    }

    #[test]
    fn stale_nonce_with_a_wrong_password_is_refused_not_stale() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let credentials = Answer { password: "guess", ..Answer::new(&challenge) }.credentials();
        assert_eq!(
            server.verify(&credentials, "INVITE", PASSWORD, NOW + 10_000),
            Verification::Invalid(DigestError::WrongResponse)
        );
    }

    #[test]
    fn tampered_nonce_is_a_bad_nonce() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let nonce = challenge_params(&challenge)["nonce"].clone();
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 0x01;
            let tampered = URL_SAFE_NO_PAD.encode(&raw);
            raw[i] ^= 0x01;
            let mut credentials = Answer::new(&challenge).credentials();
            credentials.nonce = tampered;
            credentials.response = expected_response(&credentials, "INVITE", PASSWORD);
            assert_eq!(
                server.verify(&credentials, "INVITE", PASSWORD, NOW),
                Verification::Invalid(DigestError::BadNonce),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbled_nonces_are_bad_nonces() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let good = challenge_params(&challenge)["nonce"].clone();
        let mut credentials = Answer::new(&challenge).credentials();
        for nonce in [
            "",
            "abc",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            &format!("{good}="),
            &good[1..],
            &good.replace(|c: char| c.is_ascii_alphanumeric(), "!"),
        ] {
            credentials.nonce = nonce.to_owned();
            assert_eq!(
                server.verify(&credentials, "INVITE", PASSWORD, NOW),
                Verification::Invalid(DigestError::BadNonce),
                "{nonce:?}"
            );
        }
    }

    #[test]
    fn nonce_from_another_key_is_a_bad_nonce_answered_with_a_new_challenge() {
        let other = DigestServer::new(REALM, NonceKey::from_bytes([8; 32]), TTL);
        let challenge = first_challenge(&other, NOW);
        let credentials = Answer::new(&challenge).credentials();
        assert_eq!(other.verify(&credentials, "INVITE", PASSWORD, NOW), Verification::Valid);
        assert_eq!(
            server().verify(&credentials, "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::BadNonce)
        );
        assert_eq!(DigestError::BadNonce.status_code(), 407);
    }

    #[test]
    fn replicas_sharing_a_key_accept_each_others_nonces() {
        let a = server();
        let b = server();
        let credentials = Answer::new(&first_challenge(&a, NOW)).credentials();
        assert_eq!(b.verify(&credentials, "INVITE", PASSWORD, NOW), Verification::Valid);
    }

    // --- the rest of verify ---

    #[test]
    fn credentials_for_another_realm_are_a_realm_mismatch() {
        let server = server();
        let challenge = first_challenge(&server, NOW)
            .replace(&format!("realm=\"{REALM}\""), "realm=\"elsewhere.example\"");
        let credentials = Answer::new(&challenge).credentials();
        assert_eq!(
            server.verify(&credentials, "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::RealmMismatch)
        );
    }

    #[test]
    fn nonce_signed_for_another_realm_is_a_bad_nonce() {
        let key = [9; 32];
        let other = DigestServer::new("other.example", NonceKey::from_bytes(key), TTL);
        let ours = DigestServer::new(REALM, NonceKey::from_bytes(key), TTL);
        let nonce = challenge_params(&first_challenge(&other, NOW))["nonce"].clone();
        let challenge = first_challenge(&ours, NOW);
        let mut credentials = Answer::new(&challenge).credentials();
        credentials.nonce = nonce;
        assert_eq!(
            ours.verify(&credentials, "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::BadNonce)
        );
    }

    #[test]
    fn missing_qop_is_refused() {
        let server = server();
        let header = Answer::new(&first_challenge(&server, NOW)).header().replace(", qop=auth", "");
        let credentials = Credentials::parse(&header).unwrap();
        let verification = server.verify(&credentials, "INVITE", PASSWORD, NOW);
        assert_eq!(verification, Verification::Invalid(DigestError::MissingParameter("qop")));
        assert_eq!(DigestError::MissingParameter("qop").status_code(), 400);
    }

    #[test]
    fn qop_auth_int_is_unsupported() {
        let server = server();
        let header = Answer::new(&first_challenge(&server, NOW))
            .header()
            .replace("qop=auth", "qop=auth-int");
        let credentials = Credentials::parse(&header).unwrap();
        assert_eq!(
            server.verify(&credentials, "INVITE", PASSWORD, NOW),
            Verification::Invalid(DigestError::UnsupportedQop("auth-int".into()))
        );
    }

    #[test]
    fn qop_without_cnonce_or_nc_is_a_missing_parameter() {
        let header = Answer::new(&first_challenge(&server(), NOW)).header();
        let no_cnonce = header.replace(", cnonce=\"0a4f113b\"", "");
        assert_eq!(Credentials::parse(&no_cnonce), Err(DigestError::MissingParameter("cnonce")));
        let no_nc = header.replace(", nc=00000001", "");
        assert_eq!(Credentials::parse(&no_nc), Err(DigestError::MissingParameter("nc")));
    }

    #[test]
    fn unknown_algorithm_is_unsupported() {
        let header = Answer::new(&first_challenge(&server(), NOW))
            .header()
            .replace("algorithm=SHA-256", "algorithm=SHA-512-256");
        let error = Credentials::parse(&header).unwrap_err();
        assert_eq!(error, DigestError::UnsupportedAlgorithm("SHA-512-256".into()));
        assert_eq!(error.status_code(), 400);
    }

    #[test]
    fn sess_variants_are_valid() {
        let server = server();
        for algorithm in [Algorithm::Md5Sess, Algorithm::Sha256Sess] {
            let challenge = first_challenge(&server, NOW);
            let credentials = Answer { algorithm, ..Answer::new(&challenge) }.credentials();
            assert_eq!(credentials.algorithm, algorithm);
            assert_eq!(
                server.verify(&credentials, "INVITE", PASSWORD, NOW),
                Verification::Valid,
                "{algorithm}"
            );
            let wrong = Answer { algorithm, password: "guess", ..Answer::new(&challenge) };
            assert_eq!(
                server.verify(&wrong.credentials(), "INVITE", PASSWORD, NOW),
                Verification::Invalid(DigestError::WrongResponse)
            );
        }
    }

    #[test]
    fn response_for_another_method_is_wrong() {
        let server = server();
        let credentials = Answer::new(&first_challenge(&server, NOW)).credentials();
        assert_eq!(
            server.verify(&credentials, "REGISTER", PASSWORD, NOW),
            Verification::Invalid(DigestError::WrongResponse)
        );
    }

    #[test]
    fn upper_case_response_hex_is_accepted() {
        let server = server();
        let mut credentials = Answer::new(&first_challenge(&server, NOW)).credentials();
        credentials.response = credentials.response.to_ascii_uppercase();
        assert_eq!(server.verify(&credentials, "INVITE", PASSWORD, NOW), Verification::Valid);
    }

    #[test]
    fn hostile_username_parses_verbatim_and_verifies() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        for username in [r#"a"b\c, realm="evil", response="0""#, "日本語 user", "", "%00\\\\", " "]
        {
            let answer = Answer { username, ..Answer::new(&challenge) };
            let credentials = answer.credentials();
            assert_eq!(credentials.username, username);
            assert_eq!(credentials.realm, REALM);
            // Each username needs its own nonce: a verified nc=1 is remembered per nonce.
            let fresh = first_challenge(&server, NOW);
            let credentials = Answer { username, ..Answer::new(&fresh) }.credentials();
            assert_eq!(server.verify(&credentials, "INVITE", PASSWORD, NOW), Verification::Valid);
        }
    }

    // --- parsing ---

    #[test]
    fn parse_takes_tokens_quotes_spaces_and_ignores_unknown_parameters() {
        let credentials = Credentials::parse(
            "digest   USERNAME = \"bob\" ,realm=\"r\\\\x\",\tnonce=abc, uri=\"sip:a@b\" , \
             response=\"00ff\", Algorithm=\"md5-SESS\", cnonce=\"c\\\"n\", nc=0000000f, \
             qop=\"auth\", opaque=\"o\", future-param=\"1, 2\", x=y",
        )
        .unwrap();
        assert_eq!(credentials.username, "bob");
        assert_eq!(credentials.realm, "r\\x");
        assert_eq!(credentials.nonce, "abc");
        assert_eq!(credentials.uri, "sip:a@b");
        assert_eq!(credentials.algorithm, Algorithm::Md5Sess);
        assert_eq!(credentials.cnonce.as_deref(), Some("c\"n"));
        assert_eq!(credentials.nc, Some(15));
        assert_eq!(credentials.qop.as_deref(), Some("auth"));
        assert_eq!(credentials.opaque.as_deref(), Some("o"));
    }

    #[test]
    fn parse_without_algorithm_means_md5() {
        let credentials = Credentials::parse(
            r#"Digest username="u", realm="r", nonce="n", uri="sip:x", response="0""#,
        )
        .unwrap();
        assert_eq!(credentials.algorithm, Algorithm::Md5);
        assert_eq!(credentials.qop, None);
    }

    #[test]
    fn parse_refuses_bad_headers_with_named_errors() {
        let base = r#"username="u", realm="r", nonce="n", uri="sip:x", response="0""#;
        let cases: Vec<(String, DigestError)> = vec![
            (format!("Basic {base}"), DigestError::NotDigest),
            ("Digestusername=\"u\"".into(), DigestError::NotDigest),
            ("".into(), DigestError::NotDigest),
            ("Digest".into(), DigestError::Malformed("expected parameters after Digest".into())),
            (
                format!("Digest {base}, Username=\"v\""),
                DigestError::DuplicateParameter("username".into()),
            ),
            (format!("Digest {base}, x=1, x=2"), DigestError::DuplicateParameter("x".into())),
            (
                r#"Digest realm="r", nonce="n", uri="sip:x", response="0""#.into(),
                DigestError::MissingParameter("username"),
            ),
            (
                r#"Digest username="u", realm="r", nonce="n", uri="sip:x""#.into(),
                DigestError::MissingParameter("response"),
            ),
            (
                format!("Digest {base}, nc=1"),
                DigestError::Malformed("nc must be 8 hex digits".into()),
            ),
            (
                format!("Digest {base}, nc=0000000g"),
                DigestError::Malformed("nc must be 8 hex digits".into()),
            ),
            (
                format!("Digest {base}, nc=00000000"),
                DigestError::Malformed("nc starts at 00000001".into()),
            ),
            (
                format!("Digest {base}, nc=+0000001"),
                DigestError::Malformed("nc must be 8 hex digits".into()),
            ),
            (
                format!("Digest {base}, userhash=true"),
                DigestError::Malformed("userhash was not offered".into()),
            ),
            (
                format!("Digest {base}, username*=UTF-8''x"),
                DigestError::Malformed("username* (RFC 7616 §3.4.4) is not supported".into()),
            ),
            (format!("Digest {base},"), DigestError::Malformed("expected a parameter name".into())),
            (
                format!("Digest {base},, a=b"),
                DigestError::Malformed("expected a parameter name".into()),
            ),
            (
                format!("Digest {base} a=b"),
                DigestError::Malformed("expected ',' between parameters".into()),
            ),
            ("Digest username".into(), DigestError::Malformed("expected '=' after a name".into())),
            ("Digest username=".into(), DigestError::Malformed("expected a value".into())),
            (
                "Digest username=\"u".into(),
                DigestError::Malformed("unterminated quoted string".into()),
            ),
            (
                "Digest username=\"u\\".into(),
                DigestError::Malformed("unterminated quoted string".into()),
            ),
            (
                "Digest username=\"u\\é\"".into(),
                DigestError::Malformed("only ASCII may follow '\\' in a quoted string".into()),
            ),
            (format!("Digest {base}\r\n, x=y"), DigestError::Malformed("control character".into())),
            (
                format!("Digest {base}, x=\"\0\""),
                DigestError::Malformed("control character".into()),
            ),
        ];
        for (header, error) in cases {
            assert_eq!(Credentials::parse(&header), Err(error), "{header:?}");
        }
    }

    #[test]
    fn parse_refuses_values_over_4_kib_unread() {
        let header = format!("Digest username=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(Credentials::parse(&header), Err(DigestError::TooLong { len: header.len() }));
    }

    #[test]
    fn errors_and_debug_never_show_the_password_or_the_response() {
        let server = server();
        let challenge = first_challenge(&server, NOW);
        let credentials = Answer::new(&challenge).credentials();
        let debug = format!("{credentials:?} {server:?}");
        assert!(!debug.contains(&credentials.response), "{debug}");
        assert!(!debug.contains(PASSWORD));
        assert!(debug.contains("<redacted>"));
        assert!(!format!("{:?}", NonceKey::from_bytes([0x41; 32])).contains("65"));

        let wrong = Answer { password: "guess", ..Answer::new(&challenge) }.credentials();
        let Verification::Invalid(error) = server.verify(&wrong, "INVITE", PASSWORD, NOW) else {
            panic!("a wrong password verified");
        };
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(&wrong.response) && !text.contains(PASSWORD), "{text}");
        }
    }

    #[test]
    fn error_text_from_peer_tokens_is_clipped_and_printable() {
        let header = format!(
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"s\", response=\"0\", algorithm=\"{}é\"",
            "x".repeat(500)
        );
        let DigestError::UnsupportedAlgorithm(shown) = Credentials::parse(&header).unwrap_err()
        else {
            panic!("expected UnsupportedAlgorithm");
        };
        assert_eq!(shown.len(), 32);
        assert!(shown.chars().all(|c| c.is_ascii_graphic()));
    }

    // --- replay guard ---

    fn id(issued: u64, n: u64) -> [u8; ID_LEN] {
        let mut id = [0u8; ID_LEN];
        id[..8].copy_from_slice(&issued.to_be_bytes());
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn replay_guard_stays_within_its_cap_under_200000_distinct_nonces() {
        let guard = ReplayGuard::new(REPLAY_CAP);
        for n in 0..200_000u64 {
            assert!(guard.accept(id(NOW + n / 1000, n), 1, NOW + n / 1000, 3600));
            assert!(guard.len() <= REPLAY_CAP);
        }
        assert_eq!(guard.len(), REPLAY_CAP);
        // The newest is still remembered, the oldest was evicted first.
        let last = 199_999;
        assert!(!guard.accept(id(NOW + last / 1000, last), 1, NOW + 200, 3600));
        assert!(guard.accept(id(NOW, 0), 1, NOW + 200, 3600));
    }

    #[test]
    fn replay_guard_forgets_nonces_once_they_are_stale() {
        let guard = ReplayGuard::new(10);
        for n in 0..5 {
            guard.accept(id(NOW, n), 1, NOW, 300);
        }
        assert_eq!(guard.len(), 5);
        guard.accept(id(NOW + 301, 99), 1, NOW + 301, 300);
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn replay_guard_takes_growing_counts_only() {
        let guard = ReplayGuard::new(10);
        assert!(guard.accept(id(NOW, 1), 3, NOW, 300));
        assert!(!guard.accept(id(NOW, 1), 3, NOW, 300));
        assert!(!guard.accept(id(NOW, 1), 2, NOW, 300));
        assert!(guard.accept(id(NOW, 1), 4, NOW, 300));
        assert!(guard.accept(id(NOW, 2), 1, NOW, 300));
    }

    // --- properties ---

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_strings(input in any::<String>()) {
            let _ = Credentials::parse(&input);
        }

        #[test]
        fn parse_never_panics_on_digest_like_strings(
            input in r#"[Dd]igest[ \t]{0,2}([a-zA-Z*]{0,9}[ ]?=?[ ]?("([^"\\]|\\.){0,12}"?|[!-~]{0,10})[ ]?,?[ ]?){0,14}"#
        ) {
            let _ = Credentials::parse(&input);
        }

        #[test]
        fn our_challenge_parses_back_to_its_realm_nonce_and_algorithms(
            realm in r#"[^\p{Cc}]{0,40}"#,
            now in 0u64..u64::MAX,
            stale in any::<bool>(),
        ) {
            let server = DigestServer::new(realm.clone(), NonceKey::generate(), TTL);
            let values = server.challenge(now, stale);
            let params: Vec<_> = values.iter().map(|v| challenge_params(v)).collect();
            prop_assert_eq!(params.len(), 2);
            prop_assert_eq!(&params[0]["algorithm"], "SHA-256");
            prop_assert_eq!(&params[1]["algorithm"], "MD5");
            for p in &params {
                prop_assert_eq!(&p["realm"], &realm);
                prop_assert_eq!(&p["nonce"], &params[0]["nonce"]);
                prop_assert_eq!(p.get("stale").is_some(), stale);
                let (_, issued) = server.open_nonce(&p["nonce"]).unwrap();
                prop_assert_eq!(issued, now);
            }
        }

        #[test]
        fn answers_for_any_username_and_password_verify(
            username in r#"[^\p{Cc}]{0,30}"#,
            password in r#"[^\p{Cc}]{0,30}"#,
        ) {
            let server = server();
            let challenge = first_challenge(&server, NOW);
            let answer =
                Answer { username: &username, password: &password, ..Answer::new(&challenge) };
            let credentials = answer.credentials();
            prop_assert_eq!(&credentials.username, &username);
            let verification = server.verify(&credentials, "INVITE", &password, NOW);
            prop_assert_eq!(verification, Verification::Valid);
        }
    }
}
