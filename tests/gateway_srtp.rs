//! SRTP keyed by SDES on inbound and outbound trunks (issue 17, item 3): the built `trunkline
//! run` between a carrier that speaks SRTP and a sipp agent runtime that speaks plain RTP, on
//! 127.0.0.0/8.
//! The carrier is driven by hand (its RTP is encrypted and checked packet by packet) or is
//! linphonec (`linphone-cli`), a real SDES implementation (belle-sip / mediastreamer's libsrtp).

mod support;

use std::time::Duration;

use support::carrier::{Carrier, body_of, line_after, relay_of, rtp_packet};
use support::linphone::LinphoneCall;
use support::sipp::{outbound_agent_args, uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, Trunk, free_port};
use trunkline::media::sdes::{Crypto, Suite};
use trunkline::media::srtp::{SrtpKeys, SrtpSide};

const NUMBER: &str = "+14155550100";

fn trunk(agent_port: u16, encryption: &str) -> Trunk {
    Trunk::local(NUMBER, agent_port).codecs(&["PCMU"]).encryption(encryption)
}

/// The carrier's offer: PCMU at its media socket, `profile`, and `crypto` lines.
fn offer(carrier: &Carrier, profile: &str, crypto: &[&Crypto]) -> String {
    let port = carrier.media.local_addr().expect("addr").port();
    let mut sdp = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} {profile} 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n"
    );
    for c in crypto {
        sdp.push_str(&format!("a=crypto:{}\r\n", c.to_value()));
    }
    sdp.push_str("a=sendrecv\r\n");
    sdp
}

/// The `a=crypto` lines of a message's SDP.
fn crypto_lines(message: &str) -> Vec<Crypto> {
    body_of(message)
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .map(|v| Crypto::parse(v.trim()).expect("the gateway writes a=crypto it can read"))
        .collect()
}

/// Sends `count` RTP packets through `srtp` (the carrier's own keys) to `relay`, 20 ms apart,
/// via an agent that echoes them; each that comes back must decrypt with the gateway's key to
/// the packet sent. Returns how many did.
fn srtp_echo(
    carrier: &Carrier,
    srtp: &mut SrtpSide,
    relay: std::net::SocketAddr,
    count: u16,
) -> usize {
    let mut echoed = 0;
    let mut buf = vec![0u8; 2048];
    for seq in 0..count {
        let plain = rtp_packet(seq);
        let sent = srtp.protect(&plain).expect("encrypt");
        assert_ne!(&sent[12..], &plain[12..], "the carrier sends encrypted payloads");
        carrier.media.send_to(&sent, relay).expect("send SRTP");
        if let Ok((n, from)) = carrier.media.recv_from(&mut buf) {
            assert_eq!(from, relay, "RTP must come back from the relay's port");
            let back = srtp
                .unprotect(&buf[..n])
                .expect("what comes back is SRTP under the key the gateway's answer gave");
            let back_seq = u16::from_be_bytes([back[2], back[3]]);
            assert_eq!(&back[..], &rtp_packet(back_seq)[..], "payload changed on the way");
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    echoed
}

#[test]
fn an_srtp_carriers_audio_reaches_the_agent_decrypted_and_comes_back_under_the_gateways_key() {
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32, Suite::AeadAes128Gcm] {
        let agent_port = free_port();
        let gateway = Gateway::start(
            Specs::new().with(trunk(agent_port, "Required")).path(),
            GatewayOptions::default(),
        );
        // The agent runtime echoes every RTP packet as it got it: if the relay did not decrypt
        // the carrier's, the echo is ciphertext and decrypts to garbage on the way back.
        let agent =
            uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
        let carrier = Carrier::new(gateway.udp(), NUMBER);
        let ours = Crypto::generate(1, suite);
        let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
        let sdp = offer(&carrier, "RTP/SAVP", &[&ours]);
        carrier.send(&carrier.request("INVITE", "srtp1", 1, &to, &sdp));
        let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK");
        assert!(body_of(&ok).contains("RTP/SAVP"), "{suite:?}: {ok}");
        let theirs = crypto_lines(&ok);
        let [gateways] = theirs.as_slice() else { panic!("{suite:?}: one a=crypto: {ok}") };
        assert_eq!((gateways.tag, gateways.suite), (1, suite));
        assert_ne!(gateways.to_value(), ours.to_value(), "the gateway keys its own direction");
        let to_tagged = line_after(&ok, "To:").expect("To").to_string();
        carrier.send(&carrier.request("ACK", "srtpack1", 1, &to_tagged, ""));

        let (relay, _) = relay_of(&ok);
        let mut srtp =
            SrtpSide::new(SrtpKeys { remote: gateways.clone(), local: ours }).expect("keys");
        let echoed = srtp_echo(&carrier, &mut srtp, relay, 50);
        assert!(echoed >= 45, "{suite:?}: only {echoed} of 50 packets came back");

        carrier.send(&carrier.request("BYE", "srtpbye1", 2, &to_tagged, ""));
        assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
        agent.wait().assert_success();
        let dropped = r#"trunkline_rtp_rejected_packets_total{leg="carrier",reason="unauthenticated",trunk="voice/local-in"}"#;
        assert_eq!(gateway.metric(dropped).unwrap_or(0.0), 0.0, "{suite:?}");
    }
}

#[test]
fn packets_that_do_not_authenticate_are_dropped_and_counted_not_relayed() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(trunk(agent_port, "Required")).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let ours = Crypto::generate(1, Suite::AesCm128HmacSha1_80);
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request(
        "INVITE",
        "forged1",
        1,
        &to,
        &offer(&carrier, "RTP/SAVP", &[&ours]),
    ));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    carrier.send(&carrier.request("ACK", "forgedack", 1, &to_tagged, ""));
    let (relay, _) = relay_of(&ok);
    // Plain RTP, and SRTP under a key the carrier never offered: neither may reach the agent.
    let mut stranger = SrtpSide::new(SrtpKeys {
        remote: Crypto::generate(1, Suite::AesCm128HmacSha1_80),
        local: Crypto::generate(1, Suite::AesCm128HmacSha1_80),
    })
    .expect("keys");
    let mut buf = [0u8; 2048];
    for seq in 0..10u16 {
        let forged = if seq % 2 == 0 {
            rtp_packet(seq)
        } else {
            stranger.protect(&rtp_packet(seq)).expect("encrypt").to_vec()
        };
        carrier.media.send_to(&forged, relay).expect("send");
        assert!(carrier.media.recv_from(&mut buf).is_err(), "a forged packet was echoed back");
    }
    let dropped = r#"trunkline_rtp_rejected_packets_total{leg="carrier",reason="unauthenticated",trunk="voice/local-in"}"#;
    assert!(
        gateway.wait_metric(dropped, 10.0, Duration::from_secs(5)),
        "forged packets not counted: {:?}",
        gateway.metric(dropped)
    );
    carrier.send(&carrier.request("BYE", "forgedbye", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
    agent.wait().assert_success();
}

#[test]
fn a_plain_offer_to_a_trunk_that_requires_srtp_gets_488_naming_the_rule_and_the_agent_hears_nothing()
 {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(trunk(agent_port, "Required")).path(),
        GatewayOptions::default(),
    );
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "plain1", 1, &to, &offer(&carrier, "RTP/AVP", &[])));
    let refused = carrier.response("488", Duration::from_secs(5)).expect("488");
    let warning = line_after(&refused, "Warning:").unwrap_or_default();
    assert!(warning.contains("SrtpRequired"), "{refused}");
    let refusals = r#"trunkline_inbound_refusals_total{rule="SrtpRequired",status="488"}"#;
    assert_eq!(gateway.metric(refusals), Some(1.0));
}

#[test]
fn an_optional_trunk_takes_a_plain_offer_plainly_and_an_srtp_offer_with_srtp() {
    let agent_port = free_port();
    let gateway = Gateway::start(
        Specs::new().with(trunk(agent_port, "Optional")).path(),
        GatewayOptions::default(),
    );
    let agent = uas("agent_answer.xml", agent_port, &["-m", "2", "-timeout", "20"]);
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    let ours = Crypto::generate(7, Suite::AesCm128HmacSha1_80);
    for (case, profile, crypto) in
        [("plain", "RTP/AVP", vec![]), ("best-effort", "RTP/AVP", vec![&ours])]
    {
        let carrier = Carrier::new(gateway.udp(), NUMBER);
        let branch = format!("opt-{case}");
        carrier.send(&carrier.request(
            "INVITE",
            &branch,
            1,
            &to,
            &offer(&carrier, profile, &crypto),
        ));
        let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK");
        let answered = crypto_lines(&ok);
        assert!(body_of(&ok).contains("RTP/AVP"), "{case}: the answer keeps the offer's profile");
        assert_eq!(answered.len(), crypto.len(), "{case}: {ok}");
        let to_tagged = line_after(&ok, "To:").expect("To").to_string();
        carrier.send(&carrier.request("ACK", &format!("{branch}-ack"), 1, &to_tagged, ""));
        carrier.send(&carrier.request("BYE", &format!("{branch}-bye"), 2, &to_tagged, ""));
        assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "{case}: BYE");
    }
    agent.wait().assert_success();
}

/// linphonec's `[sip] media_encryption=srtp` (SDES); `mandatory` offers RTP/SAVP, else it
/// offers its keys under RTP/AVP.
fn linphone_srtp(mandatory: bool) -> String {
    format!("media_encryption=srtp\nmedia_encryption_mandatory={}\n", u8::from(mandatory))
}

const TONE_HZ: f64 = 1000.0;

/// A WAV file (PCM, 16-bit, mono, 8 kHz) of a `TONE_HZ` sine lasting `seconds`.
fn tone_wav(seconds: u32) -> Vec<u8> {
    let rate = 8000u32;
    let samples: Vec<i16> = (0..rate * seconds)
        .map(|n| {
            let t = f64::from(n) / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    wav
}

/// The first channel's samples of a 16-bit PCM WAV file, and its sample rate.
fn wav_samples(wav: &[u8]) -> Option<(Vec<f64>, u32)> {
    let mut at = 12;
    let (mut rate, mut channels) = (0u32, 1usize);
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().ok()?) as usize;
        let body = wav.get(at + 8..(at + 8 + len).min(wav.len()))?;
        if id == b"fmt " {
            channels = usize::from(u16::from_le_bytes(body.get(2..4)?.try_into().ok()?)).max(1);
            rate = u32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
        } else if id == b"data" {
            let frame = 2 * channels;
            let samples = body
                .chunks_exact(frame)
                .map(|f| f64::from(i16::from_le_bytes([f[0], f[1]])))
                .collect();
            return Some((samples, rate));
        }
        at += 8 + len + (len & 1);
    }
    None
}

/// The share of the signal's power at `hz` (Goertzel over 20 ms blocks, summed over the
/// blocks that are not silent), and how many such blocks there were.
fn tone_share(samples: &[f64], rate: u32, hz: f64) -> (f64, usize) {
    let block = ((rate / 50) as usize).max(1);
    let (mut at_tone, mut total, mut voiced) = (0.0, 0.0, 0);
    for chunk in samples.chunks_exact(block) {
        let energy: f64 = chunk.iter().map(|x| x * x).sum();
        if energy / (block as f64) < 100.0 * 100.0 {
            continue;
        }
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let (mut s1, mut s2) = (0.0, 0.0);
        for x in chunk {
            let s0 = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        // |X(hz)|² of the block; a pure tone's is N²A²/4 against an energy of N·A²/2.
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        at_tone += 2.0 * power / (block as f64);
        total += energy;
        voiced += 1;
    }
    (if total > 0.0 { at_tone / total } else { 0.0 }, voiced)
}

#[test]
fn the_tone_check_tells_a_tone_from_noise() {
    let (samples, rate) = wav_samples(&tone_wav(1)).expect("a WAV file");
    let (share, voiced) = tone_share(&samples, rate, TONE_HZ);
    assert!(share > 0.9 && voiced == 50, "{share} {voiced}");
    // Ciphertext decoded as audio: uniform bytes, as G.711 of encrypted payloads would be.
    let mut x = 12_345u32;
    let noise: Vec<f64> = (0..8000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            f64::from((x >> 16) as u16 as i16)
        })
        .collect();
    let (share, _) = tone_share(&noise, 8000, TONE_HZ);
    assert!(share < 0.1, "{share}");
}

/// linphonec, a real SDES peer, calls through a trunk with `encryption`: its SRTP audio (a
/// 1 kHz tone) is decrypted toward the agent runtime, which echoes it, and encrypted back
/// toward linphonec with the gateway's key: linphonec hears its tone. Were a direction not
/// decrypted or not encrypted, linphonec would hear noise (ciphertext played as audio) or
/// nothing (its SRTP stack drops what does not authenticate).
#[test]
fn linphone_calls_through_srtp_trunks_and_hears_its_own_tone_back_through_the_agent() {
    let dir = support::net::TempDir::new("tone");
    let tone = dir.join("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("write the tone");
    for (encryption, mandatory) in [("Required", true), ("Optional", false)] {
        let agent_port = free_port();
        let gateway = Gateway::start(
            Specs::new().with(trunk(agent_port, encryption)).path(),
            GatewayOptions::default(),
        );
        let agent =
            uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "30"]);
        let uri = format!("sip:{NUMBER}@{}", gateway.udp());
        let mut call = LinphoneCall::place_with(
            &uri,
            None,
            &linphone_srtp(mandatory),
            Some(&tone),
            Duration::from_secs(3),
        );
        call.assert_connected();
        assert_srtp_tone_came_back(&call, &gateway, "voice/local-in", encryption);
        agent.wait().assert_success();
    }
}

/// What a call with linphonec in file mode must show on the trunk's carrier leg: SRTP
/// settled, linphonec's packets relayed and none refused as unauthenticated, and linphonec's
/// tone heard back (through the echoing agent): decrypted one way, encrypted the other.
#[track_caller]
fn assert_srtp_tone_came_back(call: &LinphoneCall, gateway: &Gateway, trunk: &str, case: &str) {
    assert!(
        call.log.contains("Negotiated media encryption is LinphoneMediaEncryptionSRTP"),
        "{case}: linphonec did not settle on SRTP\n{}",
        call.report()
    );
    let relayed = format!(r#"trunkline_rtp_packets_total{{leg="carrier",trunk="{trunk}"}}"#);
    assert!(
        gateway.wait_metric(&relayed, 50.0, Duration::from_secs(5)),
        "{case}: linphonec's SRTP was not relayed: {:?}\n{}",
        gateway.metric(&relayed),
        call.report()
    );
    let dropped = format!(
        r#"trunkline_rtp_rejected_packets_total{{leg="carrier",reason="unauthenticated",trunk="{trunk}"}}"#
    );
    assert_eq!(gateway.metric(&dropped).unwrap_or(0.0), 0.0, "{case}");
    let recorded = wav_samples(&call.recorded());
    assert!(recorded.is_some(), "{case}: nothing recorded\n{}", call.report());
    let (samples, rate) = recorded.unwrap_or_default();
    let (share, voiced) = tone_share(&samples, rate, TONE_HZ);
    assert!(
        voiced >= 25 && share > 0.5,
        "{case}: linphonec did not hear its tone back ({voiced} blocks with sound, {:.0} % of their power at 1 kHz)",
        share * 100.0
    );
}

/// An agent runtime calls out through a trunk that requires SRTP, to linphonec as the carrier
/// (answering by itself, in file mode): the gateway offers RTP/SAVP with its keys, linphonec
/// takes one, and its tone crosses the relay decrypted to the agent (which echoes it) and comes
/// back encrypted under the key linphonec chose from the gateway's offer.
#[test]
fn an_outbound_call_through_a_trunk_that_requires_srtp_carries_linphones_audio_both_ways() {
    let dir = support::net::TempDir::new("tone");
    let tone = dir.join("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("write the tone");
    let carrier_port = free_port();
    let specs = Specs::new()
        .with_outbound(Outbound::new("carrier-out", carrier_port).encryption("Required"));
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    let internal = gateway.internal();
    let (mut call, agent) = LinphoneCall::answer(
        carrier_port,
        &linphone_srtp(true),
        Some(&tone),
        Duration::from_secs(3),
        move || {
            std::thread::spawn(move || {
                let args = outbound_agent_args("+14155550142", "carrier-out", &["-rtp_echo"]);
                uac("agent_outbound_wait_bye.xml", internal, &args)
            })
        },
    );
    call.assert_connected();
    assert!(call.log.contains("RTP/SAVP"), "the gateway's offer was not RTP/SAVP");
    assert_srtp_tone_came_back(&call, &gateway, "voice/carrier-out", "Required");
    agent.join().expect("the agent's sipp").assert_success();
}
