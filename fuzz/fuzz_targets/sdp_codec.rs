//! SDP from a peer (`media::sdp`) and the codec policy (`media::codec`): parse, filter the
//! offer by a trunk's codecs, rewrite it for the relay, print it, check an answer. Never
//! panics; what the gateway prints after its rewrite parses again, points at the relay and
//! still offers the codecs the filter kept.
//!
//! The first byte picks the trunk's codec list and the relay address family, the rest is the
//! SDP body.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use trunkline::config::model::Codec;
use trunkline::media::codec::{check_answer, filter_offer, gateway_offer};
use trunkline::media::sdes::{Crypto, Suite};
use trunkline::media::sdp::{AudioSecurity, LegOrigin, Sdp};

const CODEC_LISTS: [&[Codec]; 8] = [
    &[Codec::Pcmu],
    &[Codec::Pcma],
    &[Codec::G722],
    &[Codec::Pcmu, Codec::Pcma],
    &[Codec::Pcma, Codec::Pcmu],
    &[Codec::G722, Codec::Pcmu, Codec::Pcma],
    &[Codec::Pcmu, Codec::Pcma, Codec::G722],
    &[Codec::Pcma, Codec::G722],
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let allowed = CODEC_LISTS[usize::from(choice) % CODEC_LISTS.len()];
    let relay = if choice & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10))
    };
    // Bit 6: as for a leg that takes SRTP (RTP/SAVP, a=crypto).
    let srtp = choice & 0x40 != 0;
    let parse = |body: &[u8]| if srtp { Sdp::parse_srtp(body) } else { Sdp::parse(body) };
    let Ok(sdp) = parse(body) else { return };
    let _ = sdp.direction();
    let _ = (sdp.audio_is_srtp(), sdp.audio_crypto());
    let _ = sdp.audio_endpoint();
    if let Some(audio) = sdp.audio() {
        let _ = (audio.port(), audio.direction(), audio.ptime(), audio.maxptime());
        let _ = audio.connection();
        for &pt in audio.formats() {
            let _ = (audio.rtpmap(pt), audio.fmtp(pt));
        }
    }
    let printed = sdp.to_bytes();
    if let Err(error) = parse(&printed) {
        panic!(
            "a parsed SDP printed as something unparsable ({error}):\n{}",
            String::from_utf8_lossy(&printed)
        );
    }

    // As an offer from a carrier: filtered, rewritten, sent to the agent.
    let mut offer = sdp.clone();
    if let Ok(negotiated) = filter_offer(&mut offer, allowed) {
        let mut origin = LegOrigin::new(7);
        let ours = [Crypto::generate(1, Suite::AesCm128HmacSha1_80)];
        let security = if srtp {
            AudioSecurity::Sdes { savp: true, crypto: &ours }
        } else {
            AudioSecurity::Plain
        };
        offer.rewrite_for_relay(&mut origin, relay, 40_000, security);
        let sent = offer.to_bytes();
        let again = match parse(&sent) {
            Ok(again) => again,
            Err(error) => panic!("the rewritten offer does not parse: {error}"),
        };
        let audio = again.audio().expect("the rewritten offer keeps its audio stream");
        assert_eq!(audio.port(), 40_000);
        // The relay's address, or the hold address the writer put.
        let connection = audio.connection();
        assert!(
            connection == Some(relay) || connection.is_some_and(|c| c.is_unspecified()),
            "{connection:?}"
        );
        // The same body as the answer to this offer: a peer may answer anything.
        let _ = check_answer(&negotiated, &sdp);
        let _ = check_answer(&negotiated, &again);
    }

    // As an answer to the gateway's own offer (a call placed by the API).
    if let Some((_, negotiated)) = gateway_offer(allowed) {
        let _ = check_answer(&negotiated, &sdp);
    }
});
