//! Client-side SIP digest (RFC 3261 §22.2, RFC 7616 §3.4, RFC 8760): the answer to a carrier's
//! `401`/`407` challenge, for the calls the gateway sends to carriers (outbound calls, bridged
//! transfers). Pure: the caller passes the challenge header values, the trunk's credentials, the
//! request's method and Request-URI, the nonce count and a client nonce; it gets the value of
//! the `Authorization` (for a 401) or `Proxy-Authorization` (for a 407) header.
//!
//! - **Which challenge** ([`pick`]): a carrier may offer several (RFC 8760 §2.4, one per
//!   algorithm, in its order of preference); the first with an algorithm we support is
//!   answered. MD5, MD5-sess, SHA-256 and SHA-256-sess are supported.
//! - **qop**: `auth` when offered (with `cnonce` and `nc`); without `qop` the RFC 2069 form
//!   (`H(HA1:nonce:HA2)`) that older carriers still send. A challenge that offers only
//!   `auth-int` is refused: the body would have to be hashed and no carrier seen needs it.
//! - **-sess** (RFC 7616 §3.4.2): `HA1 = H(H(user:realm:password):nonce:cnonce)`, computed
//!   with the nonce and cnonce of this answer. (ezk-sip-auth 0.5 hashes it without the inner
//!   `H`, which is why this is our own client.)
//! - Neither the password nor `HA1` leaves this module; the answer holds only the response.

use super::digest::{Algorithm, DigestError, parse_digest_params, quote};

/// A parsed `WWW-Authenticate`/`Proxy-Authenticate` digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    /// `MD5` when the challenge names none (RFC 7616 §3.3).
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    /// The server offered `qop=auth`.
    pub qop_auth: bool,
    /// `stale=true`: the last answer was right but its nonce expired.
    pub stale: bool,
}

impl Challenge {
    /// Parses one challenge value: `Digest realm="..", nonce="..", ...`.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let params = parse_digest_params(value)?;
        let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let realm = get("realm").ok_or(DigestError::MissingParameter("realm"))?;
        let nonce = get("nonce").ok_or(DigestError::MissingParameter("nonce"))?;
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(token) => Algorithm::from_token(token)
                .ok_or_else(|| DigestError::UnsupportedAlgorithm(token.to_string()))?,
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(list) => {
                let offered: Vec<&str> = list.split(',').map(str::trim).collect();
                if !offered.iter().any(|q| q.eq_ignore_ascii_case("auth")) {
                    return Err(DigestError::UnsupportedQop(list.to_string()));
                }
                true
            }
        };
        if algorithm.is_sess() && !qop_auth {
            // RFC 7616 §3.4.2: -sess needs the cnonce, which only a qop answer carries.
            return Err(DigestError::Malformed(format!("{algorithm} without qop")));
        }
        Ok(Challenge {
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            algorithm,
            opaque: get("opaque").map(str::to_string),
            qop_auth,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The header value answering this challenge for a request `method uri`. `nc`: how many
    /// requests this nonce has answered, this one included (1 for the first); `cnonce`: a fresh
    /// random token per answer.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let a = self.algorithm;
        let nc = format!("{nc:08x}");
        let mut ha1 = a.h(&[username, &self.realm, password]);
        if a.is_sess() {
            ha1 = a.h(&[&ha1, &self.nonce, cnonce]);
        }
        let ha2 = a.h(&[method, uri]);
        let response = if self.qop_auth {
            a.h(&[&ha1, &self.nonce, &nc, cnonce, "auth", &ha2])
        } else {
            a.h(&[&ha1, &self.nonce, &ha2])
        };
        let mut value = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={a}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri),
        );
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce={}", quote(cnonce)));
        }
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque={}", quote(opaque)));
        }
        value
    }
}

/// The challenge to answer among a response's challenge values: the first one we can answer,
/// in the server's order. `Err` with the first one's problem when none can be answered.
pub fn pick<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Challenge, DigestError> {
    let mut first_error = None;
    for value in values {
        match Challenge::parse(value) {
            Ok(challenge) => return Ok(challenge),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(DigestError::MissingParameter("challenge")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sip::digest::{Credentials, DigestServer, NonceKey, Verification};

    /// RFC 7616 §3.9.1.
    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616(algorithm: &str) -> Challenge {
        Challenge::parse(&format!(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, nonce="{NONCE}", opaque="{OPAQUE}""#
        ))
        .unwrap()
    }

    fn response_of(answer: &str) -> String {
        Credentials::parse(answer).unwrap().response
    }

    #[test]
    fn the_answers_match_rfc_7616s_examples() {
        for (algorithm, expected) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ] {
            let answer = rfc7616(algorithm).answer(
                "Mufasa",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                1,
                CNONCE,
            );
            assert_eq!(response_of(&answer), expected, "{algorithm}");
            let c = Credentials::parse(&answer).unwrap();
            assert_eq!(c.opaque.as_deref(), Some(OPAQUE));
            assert_eq!(
                (c.nc, c.qop.as_deref(), c.cnonce.as_deref()),
                (Some(1), Some("auth"), Some(CNONCE))
            );
            assert!(!answer.contains("Circle of Life"), "the password never leaves");
        }
    }

    #[test]
    fn every_algorithm_is_accepted_by_our_own_server() {
        let now = 1_800_000_000;
        for algorithm in
            [Algorithm::Sha256, Algorithm::Md5, Algorithm::Sha256Sess, Algorithm::Md5Sess]
        {
            let server = DigestServer::new(
                "carrier.example",
                NonceKey::from_bytes([7; 32]),
                Duration::from_secs(300),
            )
            .with_algorithms(&[algorithm]);
            let challenges = server.challenge(now, false);
            let challenge = pick(challenges.iter().map(String::as_str)).unwrap();
            assert_eq!(challenge.algorithm, algorithm);
            for nc in 1..=2 {
                let answer = challenge.answer(
                    "carrier",
                    "s3cret",
                    "INVITE",
                    "sip:+14155550100@carrier.example",
                    nc,
                    "c-nonce",
                );
                let credentials = Credentials::parse(&answer).unwrap();
                assert_eq!(
                    server.verify(&credentials, "INVITE", "s3cret", now),
                    Verification::Valid,
                    "{algorithm} nc={nc}"
                );
            }
            let wrong = challenge.answer("carrier", "guess", "INVITE", "sip:x@y", 3, "c");
            assert!(matches!(
                server.verify(&Credentials::parse(&wrong).unwrap(), "INVITE", "s3cret", now),
                Verification::Invalid(_)
            ));
        }
    }

    #[test]
    fn a_challenge_without_qop_gets_the_rfc_2069_answer() {
        let c = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        assert_eq!((c.algorithm, c.qop_auth), (Algorithm::Md5, false));
        let answer = c.answer("u", "p", "INVITE", "sip:a@b", 1, "cn");
        let ha1 = Algorithm::Md5.h(&["u", "r", "p"]);
        let ha2 = Algorithm::Md5.h(&["INVITE", "sip:a@b"]);
        assert!(
            answer.contains(&format!("response=\"{}\"", Algorithm::Md5.h(&[&ha1, "n", &ha2]))),
            "{answer}"
        );
        assert!(!answer.contains("qop=") && !answer.contains("cnonce="), "{answer}");
    }

    #[test]
    fn the_first_challenge_we_can_answer_is_picked_in_the_servers_order() {
        let values = [
            r#"Digest realm="r", nonce="n1", algorithm=SHA-512-256, qop="auth""#,
            r#"Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth""#,
            r#"Digest realm="r", nonce="n3", algorithm=MD5, qop="auth""#,
        ];
        let c = pick(values).unwrap();
        assert_eq!((c.algorithm, c.nonce.as_str()), (Algorithm::Sha256, "n2"));
        assert!(matches!(pick([values[0]]), Err(DigestError::UnsupportedAlgorithm(_))));
        assert!(pick([]).is_err());
    }

    #[test]
    fn challenges_we_cannot_answer_are_refused_with_the_reason() {
        type Expect = fn(&DigestError) -> bool;
        let cases: [(&str, Expect); 5] = [
            (r#"Basic realm="r""#, |e| matches!(e, DigestError::NotDigest)),
            (r#"Digest nonce="n""#, |e| matches!(e, DigestError::MissingParameter("realm"))),
            (r#"Digest realm="r""#, |e| matches!(e, DigestError::MissingParameter("nonce"))),
            (r#"Digest realm="r", nonce="n", qop="auth-int""#, |e| {
                matches!(e, DigestError::UnsupportedQop(_))
            }),
            (r#"Digest realm="r", nonce="n", algorithm=MD5-sess"#, |e| {
                matches!(e, DigestError::Malformed(_))
            }),
        ];
        for (value, expected) in cases {
            let e = Challenge::parse(value).unwrap_err();
            assert!(expected(&e), "{value}: {e:?}");
        }
        let long = format!(r#"Digest realm="{}", nonce="n""#, "r".repeat(5000));
        assert!(matches!(Challenge::parse(&long), Err(DigestError::TooLong { .. })));
    }

    #[test]
    fn stale_and_opaque_are_read_and_values_are_quoted_back() {
        let c = Challenge::parse(
            r#"Digest realm="a \"quoted\" realm", nonce="n", qop=auth, stale=TRUE, opaque="o""#,
        )
        .unwrap();
        assert!(c.stale && c.qop_auth);
        let answer = c.answer("us\"er", "p", "INVITE", "sip:a@b", 1, "cn");
        let parsed = Credentials::parse(&answer).unwrap();
        assert_eq!(
            (parsed.username.as_str(), parsed.realm.as_str()),
            ("us\"er", "a \"quoted\" realm")
        );
    }
}
