//! SDES: SRTP keys carried in the SDP (`a=crypto`, RFC 4568). Pure: no sockets, no clock.
//!
//! Takes the value of one `a=crypto` attribute (what follows `a=crypto:`) and gives a
//! [`Crypto`]: its tag, a suite the relay supports ([`Suite`]) and the master key and salt; or
//! says why the line cannot be used ([`CryptoRefusal`]), so that the answerer can pick another
//! line of the offer (RFC 4568 §7.1.1) or refuse the offer. [`Crypto::generate`] makes our own
//! line for a leg, with a key from a CSPRNG (rand's `ThreadRng`: ChaCha12 seeded and reseeded
//! from the operating system); [`Crypto::to_value`] prints it.
//!
//! Grammar (RFC 4568 §9.1), and what is supported of it:
//! ```text
//! a=crypto:<tag> <crypto-suite> <key-params> *(<SP> <session-param>)
//! key-params = key-param *(";" key-param)     ; exactly one key here (no MKI: see below)
//! key-param  = "inline:" key-salt ["|" lifetime] ["|" mki-value ":" mki-length]
//! ```
//! - suites: `AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2) and
//!   `AEAD_AES_128_GCM` (RFC 7714 §12); any other is [`CryptoRefusal::UnsupportedSuite`];
//! - the key-salt is base64 (RFC 4648 §4, padding as RFC 4568 §6.1 shows it) of exactly the
//!   suite's key and salt lengths (16 + 14 bytes; 16 + 12 for GCM);
//! - a lifetime is read and kept (a decimal or `2^n`, n ≤ 48: RFC 3711 §9.2 bounds SRTP at 2^48
//!   packets), not enforced: calls end long before;
//! - an MKI, or more than one key, is refused: the relay keys each direction with one master key
//!   and does not read the MKI field of packets;
//! - session parameters: `WSH=` (a replay window hint) is taken and ignored (the relay keeps its
//!   own window); `KDR=0` is the default; any other `KDR`, `UNENCRYPTED_SRTP`,
//!   `UNENCRYPTED_SRTCP`, `UNAUTHENTICATED_SRTP`, `FEC_ORDER`, `FEC_KEY` and unknown parameters
//!   are refused (RFC 4568 §6.3: an answerer must not accept what it does not implement).
//!
//! Offer/answer by a leg's policy (`Encryption`): [`answer_offer`] for an offer from the
//! peer, [`offer`] and [`settle_answer`] when we offer; each gives what the leg carries
//! ([`Settled`]) or why the policy refuses it ([`SrtpRefusal`]).
//!
//! Keys never appear in `Debug` output ([`MasterKey`] prints its length only): an SDP kept for
//! logs or records must be printed through [`Crypto::to_value`] on purpose.

use std::fmt;

use crate::config::model::Encryption;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Longest `a=crypto` value read (one key, a lifetime and a few parameters fit well under it).
const MAX_VALUE_CHARS: usize = 512;

/// An SRTP protection profile the relay supports (RFC 4568 §6.2, RFC 7714 §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 in counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// AES-128 in counter mode, HMAC-SHA1 with a 32-bit tag on RTP (80 bits on RTCP).
    AesCm128HmacSha1_32,
    /// AES-128 in Galois/Counter Mode (authenticated encryption, 128-bit tag).
    AeadAes128Gcm,
}

impl Suite {
    /// Our order of preference, for offers (strongest tag first).
    pub const PREFERENCE: [Suite; 3] =
        [Suite::AeadAes128Gcm, Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    pub fn as_str(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite of that name (case-sensitive, as RFC 4568 §9.1 writes them).
    pub fn parse(name: &str) -> Option<Suite> {
        Suite::PREFERENCE.into_iter().find(|s| s.as_str() == name)
    }

    /// Bytes of master key.
    pub fn key_len(self) -> usize {
        16
    }

    /// Bytes of master salt.
    pub fn salt_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => 14,
            Suite::AeadAes128Gcm => 12,
        }
    }
}

/// A master key and salt, concatenated. Its `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(Vec<u8>);

impl MasterKey {
    /// Key then salt.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The master key and the master salt of `suite`.
    pub fn split(&self, suite: Suite) -> (&[u8], &[u8]) {
        self.0.split_at(suite.key_len().min(self.0.len()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(<{} bytes redacted>)", self.0.len())
    }
}

/// One usable `a=crypto` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    /// The tag the answer must repeat (RFC 4568 §5.1): 1 to 9 digits.
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
    /// The key's lifetime in packets, when given (kept, not enforced).
    pub lifetime: Option<u64>,
}

/// Why an `a=crypto` line cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoRefusal {
    #[error("the a=crypto line is malformed")]
    Malformed,
    #[error("the a=crypto suite is not supported")]
    UnsupportedSuite,
    #[error("the a=crypto key is not base64 of the suite's key and salt length")]
    BadKey,
    #[error("the a=crypto line has more than one key or an MKI")]
    MultipleKeys,
    #[error("the a=crypto line has a session parameter the relay does not implement")]
    UnsupportedParameter,
}

impl Crypto {
    /// Reads the value of an `a=crypto` attribute (RFC 4568 §9.1; see the module docs).
    pub fn parse(value: &str) -> Result<Crypto, CryptoRefusal> {
        if value.len() > MAX_VALUE_CHARS {
            return Err(CryptoRefusal::Malformed);
        }
        let mut fields = value.split(' ');
        let (Some(tag), Some(suite), Some(key_params)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CryptoRefusal::Malformed);
        };
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CryptoRefusal::Malformed);
        }
        let tag: u32 = tag.parse().map_err(|_| CryptoRefusal::Malformed)?;
        let suite = Suite::parse(suite).ok_or(CryptoRefusal::UnsupportedSuite)?;
        for param in fields {
            session_param(param)?;
        }
        if key_params.contains(';') {
            return Err(CryptoRefusal::MultipleKeys);
        }
        let info = key_params.strip_prefix("inline:").ok_or(CryptoRefusal::Malformed)?;
        let mut parts = info.split('|');
        let key_salt = parts.next().unwrap_or_default();
        let mut lifetime = None;
        for part in parts {
            if part.contains(':') {
                return Err(CryptoRefusal::MultipleKeys);
            }
            if lifetime.is_some() {
                return Err(CryptoRefusal::Malformed);
            }
            lifetime = Some(parse_lifetime(part)?);
        }
        let key = STANDARD.decode(key_salt).map_err(|_| CryptoRefusal::BadKey)?;
        if key.len() != suite.key_len() + suite.salt_len() {
            return Err(CryptoRefusal::BadKey);
        }
        Ok(Crypto { tag, suite, key: MasterKey(key), lifetime })
    }

    /// A fresh key for `suite` from a CSPRNG (rand's `ThreadRng`, seeded from the OS), under `tag`.
    pub fn generate(tag: u32, suite: Suite) -> Crypto {
        let mut key = vec![0u8; suite.key_len() + suite.salt_len()];
        rand::fill(key.as_mut_slice());
        Crypto { tag, suite, key: MasterKey(key), lifetime: None }
    }

    /// The attribute's value: `<tag> <suite> inline:<base64 key||salt>` (no lifetime: ours is
    /// the default, 2^48 for SRTP, RFC 3711 §9.2).
    pub fn to_value(&self) -> String {
        format!("{} {} inline:{}", self.tag, self.suite.as_str(), STANDARD.encode(&self.key.0))
    }
}

/// A lifetime (RFC 4568 §9.1): decimal digits or `2^` and digits, at most 2^48.
fn parse_lifetime(text: &str) -> Result<u64, CryptoRefusal> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit());
    let value = match text.strip_prefix("2^") {
        Some(exp) if digits(exp) => {
            let exp: u32 = exp.parse().map_err(|_| CryptoRefusal::Malformed)?;
            if exp > 48 {
                return Err(CryptoRefusal::Malformed);
            }
            1u64 << exp
        }
        Some(_) => return Err(CryptoRefusal::Malformed),
        None if digits(text) => text.parse().map_err(|_| CryptoRefusal::Malformed)?,
        None => return Err(CryptoRefusal::Malformed),
    };
    if value == 0 || value > 1 << 48 {
        return Err(CryptoRefusal::Malformed);
    }
    Ok(value)
}

/// A session parameter (RFC 4568 §6.3): `Ok` when it can be ignored.
fn session_param(param: &str) -> Result<(), CryptoRefusal> {
    if param.is_empty() {
        return Err(CryptoRefusal::Malformed);
    }
    if let Some(wsh) = param.strip_prefix("WSH=") {
        return match wsh.parse::<u32>() {
            Ok(_) => Ok(()),
            Err(_) => Err(CryptoRefusal::Malformed),
        };
    }
    if param == "KDR=0" {
        return Ok(());
    }
    Err(CryptoRefusal::UnsupportedParameter)
}

/// Why a leg's SDES offer or answer is refused by its policy (RFC 4568 §7; the 488 of an
/// offer, a failed call for an answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpRefusal {
    /// `Required`, and the SDP is plain RTP/AVP (or, for an answer, has no `a=crypto`).
    #[error("the trunk requires SRTP and the SDP offers plain RTP")]
    Required,
    /// `Disabled`, and the SDP offers SRTP only (RTP/SAVP).
    #[error("the SDP offers SRTP only (RTP/SAVP) and the trunk does not take it")]
    NotEnabled,
    /// SRTP, and no `a=crypto` line the relay can use (or, for an answer, none that answers
    /// one of ours).
    #[error("the SDP has no usable a=crypto line")]
    NoUsableCrypto,
}

/// The rule a refusal is named by (metrics, `Warning`, session records).
impl From<SrtpRefusal> for crate::config::refusal::RefusalRule {
    fn from(refusal: SrtpRefusal) -> Self {
        use crate::config::refusal::RefusalRule;
        match refusal {
            SrtpRefusal::Required => RefusalRule::SrtpRequired,
            SrtpRefusal::NotEnabled => RefusalRule::SrtpNotEnabled,
            SrtpRefusal::NoUsableCrypto => RefusalRule::NoUsableCrypto,
        }
    }
}

/// What a leg's media carries once its offer and answer are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Plain,
    /// SDES: the peer's line (its key: what we decrypt) and ours (what we encrypt).
    Srtp {
        remote: Crypto,
        local: Crypto,
    },
}

/// The answer's side of SDES (RFC 4568 §7.1.2) for an offer that came from a leg's peer, by
/// the leg's policy. `savp`: the offer's audio is RTP/SAVP(F); `offered`: its `a=crypto`
/// lines read ([`Sdp::audio_crypto`](super::sdp::Sdp::audio_crypto)).
/// - `Disabled`: plain; an RTP/SAVP offer is refused; `a=crypto` under RTP/AVP is ignored.
/// - `Optional`: the first usable line of the offer, in the offerer's order of preference,
///   under RTP/SAVP or under RTP/AVP (best-effort SDES, as Asterisk, FreeSWITCH and linphone
///   offer it); plain when the offer has no usable line under RTP/AVP; refused under
///   RTP/SAVP without one.
/// - `Required`: as `Optional`, and only under RTP/SAVP: a plain offer is refused.
///
/// Our line takes the chosen line's tag and suite, with a fresh key.
pub fn answer_offer(
    policy: Encryption,
    savp: bool,
    offered: &[Result<Crypto, CryptoRefusal>],
) -> Result<Settled, SrtpRefusal> {
    let usable = offered.iter().find_map(|c| c.as_ref().ok());
    match (policy, savp, usable) {
        (Encryption::Disabled, true, _) => Err(SrtpRefusal::NotEnabled),
        (Encryption::Disabled, false, _) => Ok(Settled::Plain),
        (Encryption::Required, false, _) => Err(SrtpRefusal::Required),
        (_, true, None) => Err(SrtpRefusal::NoUsableCrypto),
        (_, false, None) => Ok(Settled::Plain),
        (_, _, Some(remote)) => {
            let local = Crypto::generate(remote.tag, remote.suite);
            Ok(Settled::Srtp { remote: remote.clone(), local })
        }
    }
}

/// What we offer toward a leg by its policy (RFC 4568 §7.1.1): `None` for plain RTP/AVP;
/// else whether the profile is RTP/SAVP, and one line per supported suite (tags 1, 2, 3 in
/// [`Suite::PREFERENCE`] order), each with a fresh key. `Required` offers RTP/SAVP; `Optional`
/// offers the lines under RTP/AVP (best-effort SDES): a peer that does not know SDES ignores
/// them and answers plain, where an RTP/SAVP offer would be refused and the call lost
/// (there is no second offer to fall back to in an INVITE transaction).
pub fn offer(policy: Encryption) -> Option<(bool, Vec<Crypto>)> {
    let savp = match policy {
        Encryption::Disabled => return None,
        Encryption::Optional => false,
        Encryption::Required => true,
    };
    let lines = (1..).zip(Suite::PREFERENCE).map(|(tag, suite)| Crypto::generate(tag, suite));
    Some((savp, lines.collect()))
}

/// The offerer's side: the peer's answer to our `offered` lines. `savp`: the answer's audio
/// is RTP/SAVP(F). Exactly one answered line (RFC 4568 §7.1.2) whose tag and suite are one of
/// ours keys the leg (under RTP/AVP too: the media is encrypted all the same, which is what
/// `Required` asks); an answer without `a=crypto` is plain (refused when `Required`, or when
/// it says RTP/SAVP); a line that answers none of ours, or several lines, is refused.
pub fn settle_answer(
    policy: Encryption,
    offered: &[Crypto],
    savp: bool,
    answered: &[Result<Crypto, CryptoRefusal>],
) -> Result<Settled, SrtpRefusal> {
    if offered.is_empty() {
        return if savp { Err(SrtpRefusal::NotEnabled) } else { Ok(Settled::Plain) };
    }
    let [line] = answered else {
        return match (answered.is_empty(), policy, savp) {
            (true, Encryption::Required, _) => Err(SrtpRefusal::Required),
            (true, _, false) => Ok(Settled::Plain),
            _ => Err(SrtpRefusal::NoUsableCrypto),
        };
    };
    let remote = line.as_ref().map_err(|_| SrtpRefusal::NoUsableCrypto)?;
    let local = offered
        .iter()
        .find(|ours| ours.tag == remote.tag && ours.suite == remote.suite)
        .ok_or(SrtpRefusal::NoUsableCrypto)?;
    Ok(Settled::Srtp { remote: remote.clone(), local: local.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 4568 §5.1's example key, a well-formed 30 bytes.
    const KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    #[test]
    fn the_rfc_example_line_is_read() {
        let c = Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4"));
        assert_eq!(c, Err(CryptoRefusal::MultipleKeys), "an MKI is refused");
        let c = Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")).unwrap();
        assert_eq!((c.tag, c.suite, c.lifetime), (1, Suite::AesCm128HmacSha1_80, Some(1 << 20)));
        assert_eq!(c.key.bytes().len(), 30);
        let (key, salt) = c.key.split(c.suite);
        assert_eq!((key.len(), salt.len()), (16, 14));
    }

    #[test]
    fn lines_as_linphone_and_asterisk_write_them_are_read() {
        for value in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"),
            format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2147483648"),
            format!("3 AES_CM_128_HMAC_SHA1_80 inline:{KEY} WSH=64"),
        ] {
            assert!(Crypto::parse(&value).is_ok(), "{value}");
        }
    }

    #[test]
    fn what_the_relay_does_not_implement_is_refused_by_name() {
        let cases = [
            ("1 AES_256_CM_HMAC_SHA1_80 inline:x", CryptoRefusal::UnsupportedSuite),
            ("1 F8_128_HMAC_SHA1_80 inline:x", CryptoRefusal::UnsupportedSuite),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", CryptoRefusal::BadKey),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:%%%%", CryptoRefusal::BadKey),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:a;inline:b", CryptoRefusal::MultipleKeys),
            ("1 AES_CM_128_HMAC_SHA1_80", CryptoRefusal::Malformed),
            ("x AES_CM_128_HMAC_SHA1_80 inline:a", CryptoRefusal::Malformed),
            ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:a", CryptoRefusal::Malformed),
            ("1 AES_CM_128_HMAC_SHA1_80 uri:http://k", CryptoRefusal::Malformed),
        ];
        for (value, refusal) in cases {
            assert_eq!(Crypto::parse(value), Err(refusal), "{value}");
        }
        for param in ["UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP", "KDR=24"] {
            let value = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} {param}");
            assert_eq!(Crypto::parse(&value), Err(CryptoRefusal::UnsupportedParameter), "{param}");
        }
        for lifetime in ["2^49", "2^", "0", "2^99999999999", "99999999999999999999"] {
            let value = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|{lifetime}");
            assert_eq!(Crypto::parse(&value), Err(CryptoRefusal::Malformed), "{lifetime}");
        }
    }

    #[test]
    fn a_generated_line_reads_back_and_keys_differ() {
        for suite in Suite::PREFERENCE {
            let ours = Crypto::generate(7, suite);
            assert_eq!(Crypto::parse(&ours.to_value()), Ok(ours.clone()));
            assert_ne!(ours.key, Crypto::generate(7, suite).key);
        }
        let gcm = Crypto::generate(1, Suite::AeadAes128Gcm);
        assert_eq!(gcm.key.bytes().len(), 28);
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}")).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(KEY) && debug.contains("redacted"), "{debug}");
        let bytes = format!("{:?}", c.key.bytes());
        assert!(!debug.contains(&bytes[1..20]), "{debug}");
    }

    fn line(tag: u32, suite: Suite) -> Result<Crypto, CryptoRefusal> {
        Ok(Crypto::generate(tag, suite))
    }

    #[test]
    fn an_offer_is_answered_by_the_legs_policy() {
        use Encryption::*;
        let srtp = [Err(CryptoRefusal::UnsupportedSuite), line(2, Suite::AesCm128HmacSha1_32)];
        let none: [Result<Crypto, CryptoRefusal>; 0] = [];
        let unusable = [Err(CryptoRefusal::UnsupportedSuite)];

        assert_eq!(answer_offer(Disabled, false, &none), Ok(Settled::Plain));
        assert_eq!(answer_offer(Disabled, false, &srtp), Ok(Settled::Plain), "best-effort ignored");
        assert_eq!(answer_offer(Disabled, true, &srtp), Err(SrtpRefusal::NotEnabled));
        assert_eq!(answer_offer(Required, false, &none), Err(SrtpRefusal::Required));
        assert_eq!(answer_offer(Required, false, &srtp), Err(SrtpRefusal::Required));
        assert_eq!(answer_offer(Required, true, &unusable), Err(SrtpRefusal::NoUsableCrypto));
        assert_eq!(answer_offer(Optional, true, &unusable), Err(SrtpRefusal::NoUsableCrypto));
        assert_eq!(answer_offer(Optional, false, &unusable), Ok(Settled::Plain));
        assert_eq!(answer_offer(Optional, false, &none), Ok(Settled::Plain));
        for (policy, savp) in [(Optional, true), (Optional, false), (Required, true)] {
            let Ok(Settled::Srtp { remote, local }) = answer_offer(policy, savp, &srtp) else {
                panic!("{policy:?} {savp}: not SRTP");
            };
            assert_eq!((remote.tag, remote.suite), (2, Suite::AesCm128HmacSha1_32));
            assert_eq!((local.tag, local.suite), (2, Suite::AesCm128HmacSha1_32));
            assert_ne!(local.key, remote.key, "our own key");
        }
    }

    #[test]
    fn we_offer_every_suite_under_savp_when_required_and_best_effort_when_optional() {
        assert_eq!(offer(Encryption::Disabled), None);
        let (savp, lines) = offer(Encryption::Required).unwrap();
        assert!(savp);
        let tags: Vec<(u32, Suite)> = lines.iter().map(|c| (c.tag, c.suite)).collect();
        assert_eq!(
            tags,
            [
                (1, Suite::AeadAes128Gcm),
                (2, Suite::AesCm128HmacSha1_80),
                (3, Suite::AesCm128HmacSha1_32)
            ]
        );
        assert!(!offer(Encryption::Optional).unwrap().0);
    }

    #[test]
    fn the_answer_keys_the_leg_with_the_line_it_chose() {
        use Encryption::*;
        let (_, ours) = offer(Required).unwrap();
        let chosen = line(2, Suite::AesCm128HmacSha1_80);
        let Ok(Settled::Srtp { local, .. }) = settle_answer(Required, &ours, true, &[chosen])
        else {
            panic!("not keyed");
        };
        assert_eq!(local, ours[1]);
        let none: [Result<Crypto, CryptoRefusal>; 0] = [];
        assert_eq!(settle_answer(Required, &ours, false, &none), Err(SrtpRefusal::Required));
        assert_eq!(settle_answer(Optional, &ours, false, &none), Ok(Settled::Plain));
        assert_eq!(settle_answer(Optional, &ours, true, &none), Err(SrtpRefusal::NoUsableCrypto));
        let wrong_suite = [line(2, Suite::AesCm128HmacSha1_32)];
        assert_eq!(
            settle_answer(Optional, &ours, true, &wrong_suite),
            Err(SrtpRefusal::NoUsableCrypto)
        );
        let two = [line(2, Suite::AesCm128HmacSha1_80), line(3, Suite::AesCm128HmacSha1_32)];
        assert_eq!(settle_answer(Optional, &ours, true, &two), Err(SrtpRefusal::NoUsableCrypto));
        assert_eq!(settle_answer(Disabled, &[], true, &none), Err(SrtpRefusal::NotEnabled));
        assert_eq!(settle_answer(Disabled, &[], false, &none), Ok(Settled::Plain));
    }

    proptest! {
        #[test]
        fn parse_never_panics(value in "[0-9A-Za-z_|:;^= +/\\-]{0,200}") {
            let _ = Crypto::parse(&value);
        }

        #[test]
        fn parse_never_panics_on_near_valid_lines(
            tag in "[0-9]{0,11}",
            suite in prop::sample::select(vec!["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM", "X"]),
            key in "[A-Za-z0-9+/=]{0,60}",
            tail in "(\\|[0-9^:]{0,30}){0,3}( [A-Z_=0-9]{0,12}){0,3}",
        ) {
            let _ = Crypto::parse(&format!("{tag} {suite} inline:{key}{tail}"));
        }
    }
}
