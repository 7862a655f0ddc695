//! The codec policy of a trunk, applied to offers and answers (RFC 3264 §5, §6.1). Pure.
//!
//! Takes a parsed [`Sdp`] and the trunk's ordered `codecs` (`config::model::Codec`); gives the
//! filtered offer to send to the other leg, or the codec the answer chose, plus what the relay and
//! the session record need: payload type → codec, the telephone-event payload type. The call layer
//! calls [`filter_offer`] on an offer received on one leg before it rewrites it for the relay
//! ([`Sdp::rewrite_for_relay`]) and sends it on the other leg, then [`check_answer`] on the answer
//! that comes back. No common codec → 488 to the offerer and nothing sent to the other leg.
//!
//! Codecs are recognised by `a=rtpmap` encoding name (case-insensitive) and clock rate, or, without
//! an rtpmap, by their static payload type (RFC 3551 §6): PCMU 0, PCMA 8, G722 9 (clock rate
//! 8000 in SDP although G.722 samples at 16 kHz, RFC 3551 §4.5.2). telephone-event (RFC 4733) is
//! always allowed, at clock rate 8000 (the rate of every codec we carry), with its fmtp.
//! Payload type numbers are never renumbered, so a packet means the same on both legs and the
//! relay forwards it untouched. Comfort noise (CN), G.729, Opus and the rest are dropped.

use crate::config::model::Codec;

use super::sdp::{Audio, Sdp};

/// What a payload type carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Audio(Codec),
    /// DTMF events, RFC 4733.
    TelephoneEvent,
}

/// A payload type number and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadFormat {
    pub payload_type: u8,
    pub format: Format,
}

/// The formats of a filtered offer, in the order of its `m=` line: audio codecs in the trunk's
/// order of preference, then telephone-event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub formats: Vec<PayloadFormat>,
}

impl Negotiated {
    /// The codec a payload type carries, if it is an audio codec of the offer.
    pub fn codec(&self, payload_type: u8) -> Option<Codec> {
        codec_of(&self.formats, payload_type)
    }

    /// The telephone-event payload type of the offer, if it has one.
    pub fn telephone_event(&self) -> Option<u8> {
        telephone_event_of(&self.formats)
    }

    fn format(&self, payload_type: u8) -> Option<Format> {
        self.formats.iter().find(|f| f.payload_type == payload_type).map(|f| f.format)
    }
}

/// What an answer settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The codec of the call: the first audio format of the answer (RFC 3264 §6.1: the answerer's
    /// preference).
    pub codec: Codec,
    pub payload_type: u8,
    /// The telephone-event payload type, when both sides kept it.
    pub telephone_event: Option<u8>,
    /// Every format of the answer, in its order: either side may switch among them mid-call.
    pub formats: Vec<PayloadFormat>,
}

impl Chosen {
    /// The codec a payload type carries, if it is an audio codec of the answer.
    pub fn codec(&self, payload_type: u8) -> Option<Codec> {
        codec_of(&self.formats, payload_type)
    }
}

/// Why an offer or an answer does not fit the trunk's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the SDP has no audio stream")]
    NoAudio,
    #[error("the offer disables its audio stream (port 0)")]
    AudioDisabled,
    #[error("no codec of the offer ({offered}) is allowed on this trunk ({allowed})")]
    NoCommonCodec { offered: String, allowed: String },
    #[error("the answer rejects the audio stream (port 0)")]
    AudioRejected,
    #[error("the answer has payload type {payload_type}, which the offer did not have")]
    FormatNotOffered { payload_type: u8 },
    #[error("the answer maps payload type {payload_type} to another format than the offer")]
    FormatChanged { payload_type: u8 },
    #[error("the answer has no audio codec")]
    NoCodecInAnswer,
}

impl CodecError {
    /// 488 Not Acceptable Here: toward the offerer for an offer, and toward the first leg when
    /// the other leg's answer is unusable.
    pub fn status_code(&self) -> u16 {
        488
    }
}

/// Filters an offer toward the other leg: keeps only the trunk's codecs, in the trunk's order of
/// preference, plus telephone-event (with its fmtp); keeps the payload type numbers the offerer
/// used; drops every other format with its rtpmap, fmtp and rtcp-fb lines.
pub fn filter_offer(sdp: &mut Sdp, allowed: &[Codec]) -> Result<Negotiated, CodecError> {
    let audio = sdp.audio().ok_or(CodecError::NoAudio)?;
    if audio.port() == 0 {
        return Err(CodecError::AudioDisabled);
    }
    let offered: Vec<(u8, Option<Format>)> =
        audio.formats().iter().map(|&pt| (pt, recognise(&audio, pt))).collect();

    let mut formats: Vec<PayloadFormat> = Vec::new();
    for (i, codec) in allowed.iter().enumerate() {
        if allowed.get(..i).is_some_and(|before| before.contains(codec)) {
            continue;
        }
        for &(payload_type, format) in &offered {
            if format == Some(Format::Audio(*codec)) {
                formats.push(PayloadFormat { payload_type, format: Format::Audio(*codec) });
            }
        }
    }
    if formats.is_empty() {
        return Err(CodecError::NoCommonCodec {
            offered: describe_offer(&audio),
            allowed: allowed.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
        });
    }
    if let Some(&(payload_type, _)) =
        offered.iter().find(|(_, f)| *f == Some(Format::TelephoneEvent))
    {
        formats.push(PayloadFormat { payload_type, format: Format::TelephoneEvent });
    }

    let kept: Vec<u8> = formats.iter().map(|f| f.payload_type).collect();
    sdp.set_audio_formats(&kept);
    Ok(Negotiated { formats })
}

/// The payload type the gateway gives telephone-event in an offer of its own (the usual dynamic
/// number; static types cover the codecs).
pub const GATEWAY_TELEPHONE_EVENT: u8 = 101;

/// The offer the gateway makes itself, for an INVITE that came without one (a delayed offer,
/// RFC 3261 §13.2.1): the trunk's codecs on their static payload types (RFC 3551 §6: PCMU 0,
/// PCMA 8, G722 9) in the trunk's order, telephone-event 0-16, 20 ms packets, sendrecv. The
/// connection address (TEST-NET-1, RFC 5737) and port are placeholders that
/// [`Sdp::rewrite_for_relay`] replaces; not `0.0.0.0`, which that rewrite keeps as a hold
/// (RFC 3264 §8.4).
/// `None` only if the trunk lists no codec (compile never lets that through).
pub fn gateway_offer(allowed: &[Codec]) -> Option<(Sdp, Negotiated)> {
    let mut text = String::from(
        "v=0\r\no=- 0 0 IN IP4 192.0.2.0\r\ns=-\r\nc=IN IP4 192.0.2.0\r\nt=0 0\r\nm=audio 9 RTP/AVP",
    );
    let static_type = |c: Codec| match c {
        Codec::Pcmu => (0, "PCMU/8000"),
        Codec::Pcma => (8, "PCMA/8000"),
        Codec::G722 => (9, "G722/8000"),
    };
    let mut codecs: Vec<Codec> = Vec::new();
    for c in allowed {
        if !codecs.contains(c) {
            codecs.push(*c);
        }
    }
    for c in &codecs {
        text.push_str(&format!(" {}", static_type(*c).0));
    }
    text.push_str(&format!(" {GATEWAY_TELEPHONE_EVENT}\r\n"));
    for c in &codecs {
        let (pt, map) = static_type(*c);
        text.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
    }
    text.push_str(&format!(
        "a=rtpmap:{GATEWAY_TELEPHONE_EVENT} telephone-event/8000\r\na=fmtp:{GATEWAY_TELEPHONE_EVENT} 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    ));
    let mut sdp = Sdp::parse(text.as_bytes()).ok()?;
    let negotiated = filter_offer(&mut sdp, allowed).ok()?;
    Some((sdp, negotiated))
}

/// Checks an answer against the offer it answers (RFC 3264 §6.1: the answer's formats are among
/// the offer's, with the same meaning; at least one audio codec) and returns what it chose.
pub fn check_answer(offer: &Negotiated, answer: &Sdp) -> Result<Chosen, CodecError> {
    let audio = answer.audio().ok_or(CodecError::NoAudio)?;
    if audio.port() == 0 {
        return Err(CodecError::AudioRejected);
    }
    let mut formats = Vec::with_capacity(audio.formats().len());
    for &payload_type in audio.formats() {
        let offered =
            offer.format(payload_type).ok_or(CodecError::FormatNotOffered { payload_type })?;
        // An rtpmap in the answer must say what the offer said; without one, the offer's
        // mapping holds (a dynamic type is bound by the offer, RFC 3264 §6.1).
        if audio.rtpmap(payload_type).is_some() && recognise(&audio, payload_type) != Some(offered)
        {
            return Err(CodecError::FormatChanged { payload_type });
        }
        formats.push(PayloadFormat { payload_type, format: offered });
    }
    let (codec, payload_type) = formats
        .iter()
        .find_map(|f| match f.format {
            Format::Audio(codec) => Some((codec, f.payload_type)),
            Format::TelephoneEvent => None,
        })
        .ok_or(CodecError::NoCodecInAnswer)?;
    Ok(Chosen { codec, payload_type, telephone_event: telephone_event_of(&formats), formats })
}

/// What a payload type of this stream carries, if it is something we relay.
fn recognise(audio: &Audio<'_>, payload_type: u8) -> Option<Format> {
    let Some(map) = audio.rtpmap(payload_type) else {
        return match payload_type {
            0 => Some(Format::Audio(Codec::Pcmu)),
            8 => Some(Format::Audio(Codec::Pcma)),
            9 => Some(Format::Audio(Codec::G722)),
            _ => None,
        };
    };
    let mono = map.channels.is_none_or(|c| c.trim() == "1");
    if map.clock_rate != 8000 || !mono {
        return None;
    }
    let name = map.encoding.trim();
    let is = |expected: &str| name.eq_ignore_ascii_case(expected);
    if is("PCMU") {
        Some(Format::Audio(Codec::Pcmu))
    } else if is("PCMA") {
        Some(Format::Audio(Codec::Pcma))
    } else if is("G722") {
        Some(Format::Audio(Codec::G722))
    } else if is("telephone-event") {
        Some(Format::TelephoneEvent)
    } else {
        None
    }
}

/// `18 G729/8000, 101 telephone-event/8000`-style summary of an offer, for the error and the
/// logs; bounded, as it quotes the offer.
fn describe_offer(audio: &Audio<'_>) -> String {
    const MAX_CHARS: usize = 200;
    let described = audio
        .formats()
        .iter()
        .map(|&pt| match audio.rtpmap(pt) {
            Some(m) => format!("{pt} {}/{}", m.encoding, m.clock_rate),
            None => pt.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    described.chars().take(MAX_CHARS).collect()
}

fn codec_of(formats: &[PayloadFormat], payload_type: u8) -> Option<Codec> {
    formats.iter().find(|f| f.payload_type == payload_type).and_then(|f| match f.format {
        Format::Audio(codec) => Some(codec),
        Format::TelephoneEvent => None,
    })
}

fn telephone_event_of(formats: &[PayloadFormat]) -> Option<u8> {
    formats.iter().find(|f| f.format == Format::TelephoneEvent).map(|f| f.payload_type)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::media::sdp::tests::{CISCO, FREESWITCH, IPV6, SONUS, TWILIO, parse};
    use crate::media::sdp::{AudioSecurity, LegOrigin};

    use Codec::{G722, Pcma, Pcmu};

    /// An offer with this `m=audio` format list and these media-level attribute lines.
    fn offer(formats: &str, attributes: &[&str]) -> Sdp {
        let mut text = format!(
            "v=0\r\no=- 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP {formats}\r\n"
        );
        for a in attributes {
            text.push_str(a);
            text.push_str("\r\n");
        }
        parse(&text)
    }

    #[test]
    fn the_gateways_own_offer_lists_the_trunks_codecs_in_order_with_telephone_event() {
        let (sdp, negotiated) = gateway_offer(&[G722, Pcmu]).unwrap();
        assert_eq!(formats_of(&sdp), vec![9, 0, GATEWAY_TELEPHONE_EVENT]);
        assert_eq!(negotiated.codec(9), Some(G722));
        assert_eq!(negotiated.telephone_event(), Some(GATEWAY_TELEPHONE_EVENT));
        let text = printed(&sdp);
        assert!(text.contains("a=rtpmap:9 G722/8000"), "{text}");
        assert!(!text.contains("PCMA"), "{text}");
        assert!(text.contains("a=fmtp:101 0-16"), "{text}");
        // An agent answering with one of them is accepted by the same check as any answer.
        let answer = offer("0 101", &["a=rtpmap:101 telephone-event/8000"]);
        let chosen = check_answer(&negotiated, &answer).unwrap();
        assert_eq!(chosen.codec, Pcmu);
        assert!(gateway_offer(&[]).is_none());
    }

    fn formats_of(sdp: &Sdp) -> Vec<u8> {
        sdp.audio().unwrap().formats().to_vec()
    }

    fn printed(sdp: &Sdp) -> String {
        String::from_utf8(sdp.to_bytes()).unwrap()
    }

    fn pf(payload_type: u8, format: Format) -> PayloadFormat {
        PayloadFormat { payload_type, format }
    }

    const TE: Format = Format::TelephoneEvent;

    #[test]
    fn offer_of_pcmu_and_g729_on_a_pcmu_only_trunk_keeps_only_pcmu_and_telephone_event() {
        let mut sdp = parse(SONUS);
        let negotiated = filter_offer(&mut sdp, &[Pcmu]).unwrap();
        assert_eq!(formats_of(&sdp), vec![0, 101]);
        assert_eq!(negotiated.formats, vec![pf(0, Format::Audio(Pcmu)), pf(101, TE)]);
        let text = printed(&sdp);
        assert!(!text.contains("G729"), "{text}");
        assert!(!text.contains("annexb"), "{text}");
        assert!(text.contains("m=audio 21086 RTP/AVP 0 101\r\n"), "{text}");
        assert!(text.contains("a=ptime:20\r\na=maxptime:20\r\n"), "{text}");
    }

    #[test]
    fn offer_of_only_g729_has_no_common_codec_and_is_answered_488() {
        let mut sdp =
            offer("18 101", &["a=rtpmap:18 G729/8000", "a=rtpmap:101 telephone-event/8000"]);
        let before = printed(&sdp);
        let e = filter_offer(&mut sdp, &[Pcmu, Pcma]).unwrap_err();
        assert_eq!(
            e,
            CodecError::NoCommonCodec {
                offered: "18 G729/8000, 101 telephone-event/8000".into(),
                allowed: "PCMU,PCMA".into()
            }
        );
        assert_eq!(e.status_code(), 488);
        assert_eq!(printed(&sdp), before, "a refused offer is left as it was");
    }

    #[test]
    fn telephone_event_alone_is_not_a_common_codec() {
        let mut sdp = offer("101", &["a=rtpmap:101 telephone-event/8000"]);
        assert!(matches!(filter_offer(&mut sdp, &[Pcmu]), Err(CodecError::NoCommonCodec { .. })));
    }

    #[test]
    fn g722_offer_on_a_g722_trunk_is_kept_with_its_8000_clock_rate() {
        let mut sdp = parse(FREESWITCH);
        let negotiated = filter_offer(&mut sdp, &[G722]).unwrap();
        assert_eq!(negotiated.formats, vec![pf(9, Format::Audio(G722)), pf(101, TE)]);
        let text = printed(&sdp);
        assert!(text.contains("m=audio 24580 RTP/AVP 9 101\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:9 G722/8000\r\n"), "{text}");
        for gone in ["opus", "PCMU", "CN/8000", "useinbandfec"] {
            assert!(!text.contains(gone), "{gone}: {text}");
        }
    }

    #[test]
    fn g722_at_16000_in_the_rtpmap_is_not_recognised() {
        // RFC 3551 §4.5.2 says 8000; the relay does not guess what such a peer means.
        let mut sdp = offer("9", &["a=rtpmap:9 G722/16000"]);
        assert!(filter_offer(&mut sdp, &[G722]).is_err());
    }

    #[test]
    fn trunk_order_pcma_pcmu_reorders_an_offer_of_pcmu_pcma() {
        let mut sdp = parse(TWILIO);
        let negotiated = filter_offer(&mut sdp, &[Pcma, Pcmu]).unwrap();
        assert_eq!(formats_of(&sdp), vec![8, 0, 101]);
        assert_eq!(negotiated.codec(8), Some(Pcma));
        assert_eq!(negotiated.codec(0), Some(Pcmu));
        assert_eq!(negotiated.codec(101), None);
        assert!(printed(&sdp).contains("m=audio 13398 RTP/AVP 8 0 101\r\n"));
    }

    #[test]
    fn a_codec_listed_twice_in_the_trunk_is_offered_once() {
        let mut sdp = parse(TWILIO);
        filter_offer(&mut sdp, &[Pcmu, Pcmu, Pcma]).unwrap();
        assert_eq!(formats_of(&sdp), vec![0, 8, 101]);
    }

    #[test]
    fn telephone_event_is_kept_with_its_payload_type_and_fmtp() {
        let mut sdp = parse(IPV6);
        let negotiated = filter_offer(&mut sdp, &[Pcmu]).unwrap();
        assert_eq!(negotiated.telephone_event(), Some(96));
        let audio = sdp.audio().unwrap();
        assert_eq!(audio.formats(), &[0, 96]);
        assert_eq!(audio.fmtp(96), Some("0-15"));
        assert_eq!(audio.rtpmap(96).unwrap().encoding, "telephone-event");
    }

    #[test]
    fn telephone_event_at_another_clock_rate_than_the_codecs_is_dropped() {
        let mut sdp = offer(
            "0 110 101",
            &[
                "a=rtpmap:110 telephone-event/48000",
                "a=fmtp:110 0-16",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
            ],
        );
        let negotiated = filter_offer(&mut sdp, &[Pcmu]).unwrap();
        assert_eq!(negotiated.telephone_event(), Some(101));
        assert_eq!(formats_of(&sdp), vec![0, 101]);
        assert!(!printed(&sdp).contains("48000"));
    }

    #[test]
    fn dynamic_payload_type_numbers_are_preserved() {
        let mut sdp = offer(
            "97 98 100",
            &[
                "a=rtpmap:97 pcma/8000",
                "a=rtpmap:98 PCMU/8000/1",
                "a=rtpmap:100 Telephone-Event/8000",
                "a=fmtp:100 0-16",
            ],
        );
        let negotiated = filter_offer(&mut sdp, &[Pcmu, Pcma]).unwrap();
        assert_eq!(
            negotiated.formats,
            vec![pf(98, Format::Audio(Pcmu)), pf(97, Format::Audio(Pcma)), pf(100, TE)]
        );
        let text = printed(&sdp);
        assert!(text.contains("m=audio 4000 RTP/AVP 98 97 100\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:97 pcma/8000\r\n"), "{text}");
        assert!(text.contains("a=fmtp:100 0-16\r\n"), "{text}");
    }

    #[test]
    fn static_payload_types_without_rtpmap_are_recognised() {
        let mut sdp = offer("18 9 8 0", &[]);
        let negotiated = filter_offer(&mut sdp, &[G722, Pcma, Pcmu]).unwrap();
        assert_eq!(formats_of(&sdp), vec![9, 8, 0]);
        assert_eq!(negotiated.codec(9), Some(G722));
    }

    #[test]
    fn comfort_noise_stereo_and_unknown_codecs_are_dropped() {
        let mut sdp = parse(CISCO);
        filter_offer(&mut sdp, &[Pcmu, Pcma]).unwrap();
        assert_eq!(formats_of(&sdp), vec![0, 8, 101]);
        assert!(!printed(&sdp).contains("CN/8000"));

        let mut stereo = offer("96 8", &["a=rtpmap:96 PCMU/8000/2"]);
        filter_offer(&mut stereo, &[Pcmu, Pcma]).unwrap();
        assert_eq!(formats_of(&stereo), vec![8]);
    }

    #[test]
    fn an_offer_with_its_audio_disabled_is_refused() {
        let mut sdp = parse(&TWILIO.replace("m=audio 13398", "m=audio 0"));
        assert_eq!(filter_offer(&mut sdp, &[Pcmu]), Err(CodecError::AudioDisabled));
    }

    #[test]
    fn rtcp_feedback_of_dropped_formats_is_dropped() {
        let mut sdp =
            offer("0 18", &["a=rtcp-fb:18 nack", "a=rtcp-fb:* ccm fir", "a=rtcp-fb:0 nack"]);
        filter_offer(&mut sdp, &[Pcmu]).unwrap();
        let text = printed(&sdp);
        assert!(!text.contains("rtcp-fb:18"), "{text}");
        assert!(
            text.contains("a=rtcp-fb:0 nack") && text.contains("a=rtcp-fb:* ccm fir"),
            "{text}"
        );
    }

    fn negotiated_twilio(allowed: &[Codec]) -> Negotiated {
        filter_offer(&mut parse(TWILIO), allowed).unwrap()
    }

    fn answer(formats: &str, attributes: &[&str]) -> Sdp {
        offer(formats, attributes)
    }

    #[test]
    fn answer_chooses_its_first_audio_codec() {
        let offered = negotiated_twilio(&[Pcma, Pcmu]);
        let chosen = check_answer(
            &offered,
            &answer("101 0 8", &["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]),
        )
        .unwrap();
        assert_eq!((chosen.codec, chosen.payload_type), (Pcmu, 0));
        assert_eq!(chosen.telephone_event, Some(101));
        assert_eq!(chosen.codec(8), Some(Pcma));
        assert_eq!(
            chosen.formats,
            vec![pf(101, TE), pf(0, Format::Audio(Pcmu)), pf(8, Format::Audio(Pcma))]
        );
    }

    #[test]
    fn answer_without_telephone_event_has_none() {
        let chosen = check_answer(&negotiated_twilio(&[Pcmu]), &answer("0", &[])).unwrap();
        assert_eq!(chosen.telephone_event, None);
    }

    #[test]
    fn answer_with_a_format_not_offered_is_rejected() {
        let offered = negotiated_twilio(&[Pcmu]);
        let e = check_answer(&offered, &answer("8", &[])).unwrap_err();
        assert_eq!(e, CodecError::FormatNotOffered { payload_type: 8 });
        assert_eq!(e.status_code(), 488);
        let e = check_answer(&offered, &answer("0 18", &["a=rtpmap:18 G729/8000"])).unwrap_err();
        assert_eq!(e, CodecError::FormatNotOffered { payload_type: 18 });
    }

    #[test]
    fn answer_that_maps_an_offered_payload_type_to_another_codec_is_rejected() {
        let offered = negotiated_twilio(&[Pcmu]);
        let e = check_answer(&offered, &answer("0 101", &["a=rtpmap:101 opus/48000/2"]));
        assert_eq!(e, Err(CodecError::FormatChanged { payload_type: 101 }));
    }

    #[test]
    fn answer_with_only_telephone_event_or_rejected_audio_is_refused() {
        let offered = negotiated_twilio(&[Pcmu]);
        assert_eq!(
            check_answer(&offered, &answer("101", &["a=rtpmap:101 telephone-event/8000"])),
            Err(CodecError::NoCodecInAnswer)
        );
        let rejected =
            parse(&TWILIO.replace("m=audio 13398 RTP/AVP 0 8 101", "m=audio 0 RTP/AVP 0"));
        assert_eq!(check_answer(&offered, &rejected), Err(CodecError::AudioRejected));
    }

    #[test]
    fn filtered_and_rewritten_offer_toward_the_agent() {
        let mut sdp = parse(SONUS);
        filter_offer(&mut sdp, &[Pcma, Pcmu]).unwrap();
        let relay: IpAddr = "10.1.2.3".parse().unwrap();
        sdp.rewrite_for_relay(&mut LegOrigin::new(5), relay, 40000, AudioSecurity::Plain);
        assert_eq!(
            printed(&sdp),
            "v=0\r\n\
o=trunkline 5 1 IN IP4 10.1.2.3\r\n\
s=-\r\n\
c=IN IP4 10.1.2.3\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 101\r\n\
a=sendrecv\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=maxptime:20\r\n"
        );
    }
}
