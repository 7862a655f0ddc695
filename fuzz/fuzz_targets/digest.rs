//! Digest authentication (`sip::digest`, `sip::digest_client`), both ways.
//!
//! - Any `Authorization` value a peer sends: `Credentials::parse` never panics, and
//!   `DigestServer::verify` of what parses never panics and never accepts it (the nonce is not
//!   one this server issued, unless the input copied it, which it cannot know).
//! - Any challenge a carrier sends: `Challenge::parse`/`pick` never panic.
//! - The round trip: the server's own challenge, answered by the client with fuzzed username,
//!   password, URI and cnonce, parses back and verifies as `Valid` with that password, and as
//!   invalid with another one.
//!
//! Input: fields separated by 0x00; the first byte picks the algorithms offered.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use trunkline::sip::digest::{
    Algorithm, Credentials, DigestServer, MAX_HEADER_LEN, NonceKey, Verification,
};
use trunkline::sip::digest_client::{Challenge, pick};

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let fields: Vec<&str> = text.split('\0').collect();
    let algorithms: &[Algorithm] = match choice % 3 {
        0 => &[Algorithm::Md5],
        1 => &[Algorithm::Sha256],
        _ => &[Algorithm::Md5, Algorithm::Sha256],
    };
    let server =
        DigestServer::new("trunkline", NonceKey::from_bytes([7; 32]), Duration::from_secs(300))
            .with_algorithms(algorithms);

    // Hostile input on both sides.
    for field in &fields {
        if let Ok(credentials) = Credentials::parse(field) {
            let _ = format!("{credentials:?}");
            let verdict = server.verify(&credentials, "INVITE", "secret", NOW);
            assert_ne!(verdict, Verification::Valid, "a forged answer was accepted");
        }
        let _ = Challenge::parse(field);
    }
    let _ = pick(fields.iter().copied());

    // The round trip with fuzzed values (what a real client may put in them: no control
    // characters, within the header limit).
    let [username, password, uri, cnonce, ..] = fields[..] else { return };
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    if ![username, uri, cnonce].into_iter().all(printable) || password.chars().any(char::is_control)
    {
        return;
    }
    // One nonce for every algorithm offered: each answer counts one more use of it (nc).
    for (nc, value) in (1..).zip(server.challenge(NOW, false)) {
        let challenge = Challenge::parse(&value).expect("our own challenge parses");
        let answer = challenge.answer(username, password, "INVITE", uri, nc, cnonce);
        if answer.len() > MAX_HEADER_LEN {
            continue;
        }
        let credentials = match Credentials::parse(&answer) {
            Ok(credentials) => credentials,
            Err(error) => panic!("the client's answer does not parse: {error}"),
        };
        assert_eq!(credentials.username, username);
        assert_eq!(credentials.uri, uri);
        let wrong = format!("{password}x");
        assert_ne!(
            server.verify(&credentials, "INVITE", &wrong, NOW),
            Verification::Valid,
            "a wrong password was accepted"
        );
        assert_eq!(server.verify(&credentials, "INVITE", password, NOW), Verification::Valid);
    }
});
