//! SRTP and SRTCP (RFC 3711) for one relay side, keyed by SDES (`media::sdes`).
//!
//! Takes the two `a=crypto` keys of a leg: the peer's (from its SDP: what it encrypts with, so
//! what we decrypt with, RFC 4568 §6.1) and ours (from the SDP we sent it: what we encrypt
//! with). Gives [`SrtpSide`]: [`SrtpSide::unprotect`] checks and decrypts what the peer sends
//! (RTP or RTCP), with replay protection (RFC 3711 §3.3.2, a window of [`REPLAY_WINDOW`]
//! packets); [`SrtpSide::protect`] encrypts what goes to it. The relay holds one, boxed, per
//! side that faces an SRTP peer; a plain side holds none and pays nothing.
//!
//! The crypto is webrtc-rs' `webrtc-srtp` (pure Rust: RustCrypto's AES-CTR, HMAC-SHA1 and
//! AES-GCM): AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32 and AEAD_AES_128_GCM (RFC 7714).
//! Its contexts keep one state per SSRC, created before a packet is authenticated; so that a
//! peer spraying forged SSRCs cannot grow them without bound, a side whose inbound context
//! has seen more than [`MAX_INBOUND_SSRCS`] SSRCs that never authenticated starts a fresh
//! context (the authenticated streams lose nothing but their replay window's history).
//!
//! Keys never leave this module but into the crate's contexts: nothing here is `Debug` beyond
//! the suite names.

use std::collections::HashSet;

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

use super::sdes::{Crypto, Suite};

/// Packets of the replay window (RFC 3711 §3.3.2 asks for at least 64).
pub const REPLAY_WINDOW: usize = 128;

/// SSRCs that failed to authenticate, per side, before its inbound context is started over.
pub const MAX_INBOUND_SSRCS: usize = 64;

/// Why a packet was not protected or unprotected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Too short, not RTP/RTCP, a bad tag, a replay: dropped and counted as `auth_failed`.
    #[error("the packet does not authenticate (or is a replay)")]
    Unauthenticated,
    /// Our side could not encrypt (a packet too short to be RTP): dropped.
    #[error("the packet cannot be protected")]
    Protect,
    /// The key does not fit the suite (cannot happen with a parsed or generated key).
    #[error("the SRTP key does not fit its suite")]
    Key,
}

/// The keys of one side: the peer's (to decrypt) and ours (to encrypt).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub remote: Crypto,
    pub local: Crypto,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpKeys({}, {})", self.remote.suite.as_str(), self.local.suite.as_str())
    }
}

/// SRTP state of one relay side.
pub struct SrtpSide {
    keys: SrtpKeys,
    inbound: Context,
    outbound: Context,
    /// SSRCs seen inbound that never authenticated (bounded, see the module docs).
    unauthenticated: HashSet<u32>,
    authenticated: HashSet<u32>,
}

fn profile(suite: Suite) -> ProtectionProfile {
    match suite {
        Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    }
}

fn inbound_context(remote: &Crypto) -> Result<Context, SrtpError> {
    let (key, salt) = remote.key.split(remote.suite);
    Context::new(
        key,
        salt,
        profile(remote.suite),
        Some(srtp_replay_protection(REPLAY_WINDOW)),
        Some(srtcp_replay_protection(REPLAY_WINDOW)),
    )
    .map_err(|_| SrtpError::Key)
}

fn outbound_context(local: &Crypto) -> Result<Context, SrtpError> {
    let (key, salt) = local.key.split(local.suite);
    Context::new(key, salt, profile(local.suite), None, None).map_err(|_| SrtpError::Key)
}

/// Bytes of the SRTCP authentication tag (RFC 3711 §3.4: 80 bits for both HMAC-SHA1 suites;
/// RFC 7714 §9: GCM's 16-byte tag).
fn srtcp_tag_len(suite: Suite) -> usize {
    match suite {
        Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => 10,
        Suite::AeadAes128Gcm => 16,
    }
}

/// RTCP (RFC 5761 §4: payload types 192..=223 in the second byte), else RTP.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|pt| (192..=223).contains(pt))
}

fn ssrc(packet: &[u8], rtcp: bool) -> Option<u32> {
    let at = if rtcp { 4 } else { 8 };
    let b = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl SrtpSide {
    pub fn new(keys: SrtpKeys) -> Result<SrtpSide, SrtpError> {
        Ok(SrtpSide {
            inbound: inbound_context(&keys.remote)?,
            outbound: outbound_context(&keys.local)?,
            keys,
            unauthenticated: HashSet::new(),
            authenticated: HashSet::new(),
        })
    }

    /// New keys after a re-offer or re-answer: a context whose key is the same is kept (its
    /// rollover counters and replay window go on), a new key starts a new one.
    pub fn rekey(&mut self, keys: SrtpKeys) -> Result<(), SrtpError> {
        if keys.remote != self.keys.remote {
            self.inbound = inbound_context(&keys.remote)?;
            self.unauthenticated.clear();
            self.authenticated.clear();
        }
        if keys.local != self.keys.local {
            self.outbound = outbound_context(&keys.local)?;
        }
        self.keys = keys;
        Ok(())
    }

    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }

    /// Checks and decrypts an SRTP or SRTCP packet from the peer (RTCP told apart by its
    /// payload type, so muxed RTCP works too).
    pub fn unprotect(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        let rtcp = is_rtcp(packet);
        let ssrc = ssrc(packet, rtcp).ok_or(SrtpError::Unauthenticated)?;
        // webrtc-srtp 0.17 reads the SRTCP index from the packet's tail before it checks the
        // length (a panic on a short packet): the header, the index and the tag must be there.
        if rtcp && packet.len() < 8 + 4 + srtcp_tag_len(self.keys.remote.suite) {
            return Err(SrtpError::Unauthenticated);
        }
        let result =
            if rtcp { self.inbound.decrypt_rtcp(packet) } else { self.inbound.decrypt_rtp(packet) };
        match result {
            Ok(plain) => {
                if self.authenticated.len() < MAX_INBOUND_SSRCS {
                    self.authenticated.insert(ssrc);
                }
                Ok(plain)
            }
            Err(_) => {
                if !self.authenticated.contains(&ssrc) {
                    self.unauthenticated.insert(ssrc);
                    if self.unauthenticated.len() > MAX_INBOUND_SSRCS {
                        // Forged SSRCs: start over rather than keep a state for each.
                        if let Ok(fresh) = inbound_context(&self.keys.remote) {
                            self.inbound = fresh;
                        }
                        self.unauthenticated.clear();
                        self.authenticated.clear();
                    }
                }
                Err(SrtpError::Unauthenticated)
            }
        }
    }

    /// Encrypts an RTP or RTCP packet for the peer.
    pub fn protect(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        let result = if is_rtcp(packet) {
            self.outbound.encrypt_rtcp(packet)
        } else {
            self.outbound.encrypt_rtp(packet)
        };
        result.map_err(|_| SrtpError::Protect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x11, 0x22, 0x33, 0x44];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// A receiver report with no blocks (RFC 3550 §6.4.2), SSRC 0x11223344.
    fn rtcp() -> Vec<u8> {
        vec![0x80, 201, 0, 1, 0x11, 0x22, 0x33, 0x44]
    }

    /// The peer, as the crate would be on the other end.
    fn peer(suite: Suite) -> (Crypto, Context, Crypto, Context) {
        let theirs = Crypto::generate(1, suite);
        let ours = Crypto::generate(1, suite);
        let (k, s) = theirs.key.split(suite);
        let sender = Context::new(k, s, profile(suite), None, None).unwrap();
        let (k, s) = ours.key.split(suite);
        let receiver = Context::new(k, s, profile(suite), None, None).unwrap();
        (theirs, sender, ours, receiver)
    }

    #[test]
    fn what_the_peer_encrypts_decrypts_and_what_we_encrypt_the_peer_decrypts_in_every_suite() {
        for suite in Suite::PREFERENCE {
            let (theirs, mut sender, ours, mut receiver) = peer(suite);
            let mut side = SrtpSide::new(SrtpKeys { remote: theirs, local: ours }).unwrap();
            for seq in 0..5 {
                let packet = rtp(seq, &[0xff; 160]);
                let protected = sender.encrypt_rtp(&packet).unwrap();
                assert_ne!(
                    &protected[12..172],
                    &packet[12..],
                    "{suite:?}: the payload is ciphertext"
                );
                assert_eq!(side.unprotect(&protected).unwrap(), packet, "{suite:?}");
                let back = side.protect(&packet).unwrap();
                assert_eq!(receiver.decrypt_rtp(&back).unwrap(), packet, "{suite:?}");
            }
            let report = sender.encrypt_rtcp(&rtcp()).unwrap();
            assert_eq!(side.unprotect(&report).unwrap(), rtcp(), "{suite:?}");
            let back = side.protect(&rtcp()).unwrap();
            assert_eq!(receiver.decrypt_rtcp(&back).unwrap(), rtcp(), "{suite:?}");
        }
    }

    #[test]
    fn a_tampered_packet_a_replay_and_a_stranger_key_are_refused() {
        let (theirs, mut sender, ours, _) = peer(Suite::AesCm128HmacSha1_80);
        let mut side = SrtpSide::new(SrtpKeys { remote: theirs, local: ours }).unwrap();
        let protected = sender.encrypt_rtp(&rtp(1, &[1; 160])).unwrap();
        let mut tampered = protected.to_vec();
        tampered[20] ^= 1;
        assert_eq!(side.unprotect(&tampered), Err(SrtpError::Unauthenticated));
        assert!(side.unprotect(&protected).is_ok(), "the genuine one still passes");
        assert_eq!(side.unprotect(&protected), Err(SrtpError::Unauthenticated), "a replay");
        let (_, mut stranger, _, _) = peer(Suite::AesCm128HmacSha1_80);
        let forged = stranger.encrypt_rtp(&rtp(2, &[1; 160])).unwrap();
        assert_eq!(side.unprotect(&forged), Err(SrtpError::Unauthenticated));
        assert_eq!(side.unprotect(&rtp(3, &[1; 160])), Err(SrtpError::Unauthenticated), "plain");
    }

    #[test]
    fn a_new_peer_key_rekeys_inbound_and_the_same_keys_keep_the_replay_window() {
        let (theirs, mut sender, ours, _) = peer(Suite::AesCm128HmacSha1_32);
        let keys = SrtpKeys { remote: theirs, local: ours.clone() };
        let mut side = SrtpSide::new(keys.clone()).unwrap();
        let first = sender.encrypt_rtp(&rtp(1, &[2; 20])).unwrap();
        assert!(side.unprotect(&first).is_ok());
        side.rekey(keys).unwrap();
        assert!(side.unprotect(&first).is_err(), "same keys: still a replay");

        let (renewed, mut renewed_sender, _, _) = peer(Suite::AesCm128HmacSha1_32);
        side.rekey(SrtpKeys { remote: renewed, local: ours }).unwrap();
        let old = sender.encrypt_rtp(&rtp(2, &[2; 20])).unwrap();
        assert!(side.unprotect(&old).is_err(), "the old key no longer decrypts");
        let new = renewed_sender.encrypt_rtp(&rtp(2, &[2; 20])).unwrap();
        assert!(side.unprotect(&new).is_ok());
    }

    #[test]
    fn forged_ssrcs_do_not_grow_the_state_and_the_genuine_stream_goes_on() {
        let (theirs, mut sender, ours, _) = peer(Suite::AesCm128HmacSha1_80);
        let mut side = SrtpSide::new(SrtpKeys { remote: theirs, local: ours }).unwrap();
        assert!(side.unprotect(&sender.encrypt_rtp(&rtp(1, &[0; 20])).unwrap()).is_ok());
        for ssrc in 0..1000u32 {
            let mut forged = rtp(1, &[0; 30]);
            forged[8..12].copy_from_slice(&ssrc.wrapping_add(7).to_be_bytes());
            assert!(side.unprotect(&forged).is_err());
            assert!(side.unauthenticated.len() <= MAX_INBOUND_SSRCS);
        }
        assert!(side.unprotect(&sender.encrypt_rtp(&rtp(2, &[0; 20])).unwrap()).is_ok());
    }

    #[test]
    fn the_keys_debug_output_names_suites_only() {
        let keys = SrtpKeys {
            remote: Crypto::generate(1, Suite::AeadAes128Gcm),
            local: Crypto::generate(1, Suite::AesCm128HmacSha1_80),
        };
        assert_eq!(format!("{keys:?}"), "SrtpKeys(AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80)");
    }

    #[test]
    fn short_srtcp_is_refused_not_a_panic_of_the_crate() {
        // The crate indexes the packet's tail before it checks the length (proptest found it).
        for suite in Suite::PREFERENCE {
            let (theirs, _, ours, _) = peer(suite);
            let mut side = SrtpSide::new(SrtpKeys { remote: theirs, local: ours }).unwrap();
            for len in 0..40 {
                let mut packet = vec![0x80, 200, 0, 0, 1, 2, 3, 4];
                packet.resize(len.max(8), 0xff);
                packet.truncate(len);
                assert!(side.unprotect(&packet).is_err(), "{suite:?} {len}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn unprotect_never_panics_on_hostile_datagrams(
            head in prop::sample::select(vec![0x80u8, 0x90, 0xa0, 0xbf, 0x00]),
            pt in prop::sample::select(vec![0u8, 8, 96, 192, 200, 201, 223, 255]),
            tail in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut packet = vec![head, pt];
            packet.extend(tail);
            for suite in Suite::PREFERENCE {
                let (theirs, _, ours, _) = peer(suite);
                let mut side = SrtpSide::new(SrtpKeys { remote: theirs, local: ours }).unwrap();
                let _ = side.unprotect(&packet);
                let _ = side.protect(&packet);
            }
        }
    }
}
