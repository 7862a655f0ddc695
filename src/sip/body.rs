//! Message bodies: the SDP a request or response carries, whether the body is SDP itself or a
//! `multipart/mixed` (or `multipart/alternative`) body with one `application/sdp` part.
//!
//! SIP-I interconnects (ITU-T Q.1912.5) send the ISUP message that started the call next to the
//! SDP: `multipart/mixed` with an `application/sdp` part and an `application/isup` part
//! (RFC 3204), `Content-Disposition: signal`. The gateway interworks SIP-I to plain SIP, as a
//! profile-C to profile-A interworking does: it takes the SDP and drops the other parts, so the
//! agent runtime (and the carrier on the other leg) never sees ISUP, which is carrier-internal.
//! Every body the gateway sends is its own SDP with `Content-Type: application/sdp`.
//!
//! What is accepted and what is refused (the caller answers with the status):
//! - no body: no SDP (a delayed offer in an INVITE);
//! - no `Content-Type`, or `application/sdp`: the body is the SDP;
//! - `multipart/mixed`, `multipart/alternative` or `multipart/related`: the one
//!   `application/sdp` part (in `multipart/alternative`, the last one: RFC 2046 §5.1.4 orders
//!   alternatives from plainest to richest); a multipart inside it is looked into (at most
//!   [`MAX_MULTIPARTS`] multiparts in all); no SDP part is no SDP; two SDP parts of a `mixed`
//!   body are 400;
//! - more than [`MAX_PARTS`] parts, a missing `boundary`, or parts that do not parse: 400;
//! - any other type: 415, answered with `Accept:` [`ACCEPT`].
//!
//! Parts are read by `mail-parser` (Stalwart's MIME parser, written for hostile mail); the
//! limits above are checked before it runs where they bound its work: a boundary that never
//! comes costs one pass to the end of the body per multipart, so the multiparts are counted
//! first.

use bytes::Bytes;
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::msg::Headers;

/// What the gateway takes as a body, for the `Accept` header of a 415.
pub const ACCEPT: &str = "application/sdp, multipart/mixed, multipart/alternative";

/// Most parts in a multipart body (all levels): SIP-I sends two; a few more leave room for
/// a carrier's extras (a `application/vnd.*` part, a nested alternative).
pub const MAX_PARTS: usize = 8;

/// How many multiparts a body may hold, itself included: SIP-I's one, and one more inside it
/// (an alternative of two SDPs).
pub const MAX_MULTIPARTS: usize = 2;

/// Why a body gives no SDP the gateway can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A type the gateway does not take (415).
    #[error("the body is {0}, not SDP")]
    Unsupported(String),
    /// A multipart body that breaks the rules above (400).
    #[error("the multipart body {0}")]
    Malformed(&'static str),
}

impl BodyError {
    /// The status a request with this body is answered with.
    pub fn status_code(&self) -> u16 {
        match self {
            BodyError::Unsupported(_) => 415,
            BodyError::Malformed(_) => 400,
        }
    }
}

/// The SDP of a message with these `headers` and this `body`: `Ok(None)` when it has none. A
/// slice of `body`, not a copy.
pub fn sdp(headers: &Headers, body: &Bytes) -> Result<Option<Bytes>, BodyError> {
    if body.is_empty() {
        return Ok(None);
    }
    let Some(content_type) = headers.get(super::msg::name::CONTENT_TYPE) else {
        // RFC 3261 §20.15 requires the header with a body; what carriers send without it is SDP.
        return Ok(Some(body.clone()));
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/sdp") {
        return Ok(Some(body.clone()));
    }
    let Some(subtype) = essence
        .split_once('/')
        .filter(|(t, _)| t.trim().eq_ignore_ascii_case("multipart"))
        .map(|(_, s)| s.trim())
    else {
        return Err(BodyError::Unsupported(printable(essence)));
    };
    if !["mixed", "alternative", "related"].iter().any(|s| subtype.eq_ignore_ascii_case(s)) {
        return Err(BodyError::Unsupported(printable(essence)));
    }
    multipart_sdp(content_type, body)
}

/// The SDP part of a multipart body whose `Content-Type` is `content_type`.
fn multipart_sdp(content_type: &str, body: &Bytes) -> Result<Option<Bytes>, BodyError> {
    if count_ignore_case(content_type.as_bytes(), b"boundary") == 0 {
        return Err(BodyError::Malformed("has no boundary"));
    }
    // The body's own multipart, and every one inside it (their parts' Content-Types say so).
    if 1 + count_ignore_case(body, b"multipart/") > MAX_MULTIPARTS {
        return Err(BodyError::Malformed("holds too many multiparts"));
    }
    // mail-parser reads a whole MIME entity: the Content-Type, a blank line, the body.
    let head = format!("Content-Type: {content_type}\r\n\r\n");
    let mut entity = Vec::with_capacity(head.len() + body.len());
    entity.extend_from_slice(head.as_bytes());
    entity.extend_from_slice(body);
    let message = MessageParser::new()
        .with_mime_headers()
        .parse(&entity[..])
        .ok_or(BodyError::Malformed("does not parse"))?;
    let parts = &message.parts;
    if parts.len() > MAX_PARTS + 1 {
        return Err(BodyError::Malformed("has too many parts"));
    }
    let Some(root) = parts.first() else {
        return Err(BodyError::Malformed("does not parse"));
    };
    if !root.is_multipart() || root.sub_parts().is_none_or(<[u32]>::is_empty) {
        return Err(BodyError::Malformed("has no parts"));
    }
    let alternative = root
        .content_type()
        .and_then(|c| c.subtype())
        .is_some_and(|s| s.eq_ignore_ascii_case("alternative"));
    let mut found: Option<Bytes> = None;
    for part in parts.iter().skip(1) {
        let is_sdp = part.content_type().is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("application")
                && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case("sdp"))
        });
        if !is_sdp {
            continue;
        }
        let contents = match &part.body {
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => bytes.as_ref(),
            PartType::Text(text) => text.as_bytes(),
            _ => return Err(BodyError::Malformed("has an SDP part that does not parse")),
        };
        if found.is_some() && !alternative {
            return Err(BodyError::Malformed("has more than one SDP part"));
        }
        found = Some(slice_of(body, contents, head.len(), part.raw_body_offset()));
    }
    Ok(found)
}

/// The SDP part as a slice of `body` when its bytes are there as they are (no transfer
/// encoding: what every SIP peer sends), else a copy of what the parser decoded.
fn slice_of(body: &Bytes, contents: &[u8], head_len: usize, offset: u32) -> Bytes {
    let start = (offset as usize).saturating_sub(head_len);
    match body.get(start..start + contents.len()) {
        Some(raw) if raw == contents => body.slice(start..start + contents.len()),
        _ => Bytes::copy_from_slice(contents),
    }
}

/// How often `needle` (ASCII, lower case) occurs in `haystack`, ignoring case.
fn count_ignore_case(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| w.eq_ignore_ascii_case(needle)).count()
}

/// A media type as it may go into a log line or a Warning: at most 64 token characters.
fn printable(essence: &str) -> String {
    essence.chars().filter(|c| c.is_ascii_alphanumeric() || "/.+-_".contains(*c)).take(64).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SDP: &str = "v=0\r\no=carrier 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n\
                       t=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    /// An IAM, as SIP-I carriers send it: binary octets.
    const ISUP: &[u8] = b"\x01\x00\x60\x00\x0a\x03\x02\x0a\x08\x83\x90\x89\x10\x70\x02\x00\x0f";

    fn headers(content_type: Option<&str>) -> Headers {
        let mut h = Headers::new();
        if let Some(t) = content_type {
            h.push("Content-Type", t);
        }
        h
    }

    fn sip_i(boundary: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/sdp\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(SDP.as_bytes());
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/isup;version=itu-t92+\r\n\
                 Content-Disposition: signal;handling=optional\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(ISUP);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    fn sdp_of(content_type: Option<&str>, body: &[u8]) -> Result<Option<Bytes>, BodyError> {
        sdp(&headers(content_type), &Bytes::copy_from_slice(body))
    }

    #[test]
    fn a_plain_sdp_body_is_the_sdp_with_or_without_a_content_type() {
        for t in [Some("application/sdp"), Some("Application/SDP; charset=utf-8"), None] {
            assert_eq!(sdp_of(t, SDP.as_bytes()), Ok(Some(Bytes::from(SDP))), "{t:?}");
        }
        assert_eq!(sdp_of(Some("application/sdp"), b""), Ok(None));
    }

    #[test]
    fn sip_i_sdp_and_isup_gives_the_sdp_alone_as_a_slice_of_the_body() {
        let body = Bytes::from(sip_i("unique-boundary-1"));
        let t = headers(Some("multipart/mixed;boundary=unique-boundary-1"));
        let found = sdp(&t, &body).expect("parses").expect("an SDP part");
        assert_eq!(&found[..], SDP.as_bytes());
        // Zero-copy: the part points into the message's own bytes.
        let inside = body.as_ptr_range();
        assert!(inside.contains(&found.as_ptr()));
    }

    #[test]
    fn a_quoted_boundary_and_upper_case_types_are_read() {
        let body = sip_i("a b=c");
        let found = sdp_of(Some("Multipart/Mixed; boundary=\"a b=c\""), &body);
        assert_eq!(found, Ok(Some(Bytes::from(SDP))));
    }

    #[test]
    fn in_an_alternative_the_last_sdp_part_wins() {
        let richer = SDP.replace("PCMU", "PCMA");
        let body = format!(
            "--b\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n--b\r\n\
             Content-Type: application/sdp\r\n\r\n{richer}\r\n--b--\r\n"
        );
        assert_eq!(
            sdp_of(Some("multipart/alternative;boundary=b"), body.as_bytes()),
            Ok(Some(Bytes::from(richer.clone())))
        );
        // The same two parts in a mixed body are two offers: refused.
        assert_eq!(
            sdp_of(Some("multipart/mixed;boundary=b"), body.as_bytes()),
            Err(BodyError::Malformed("has more than one SDP part"))
        );
    }

    #[test]
    fn a_multipart_without_sdp_has_no_sdp() {
        let body = "--b\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b--\r\n";
        assert_eq!(sdp_of(Some("multipart/mixed;boundary=b"), body.as_bytes()), Ok(None));
    }

    #[test]
    fn other_types_are_415_with_a_printable_name() {
        let e = sdp_of(Some("application/isup"), ISUP).unwrap_err();
        assert_eq!(e.status_code(), 415);
        assert_eq!(e.to_string(), "the body is application/isup, not SDP");
        let e = sdp_of(Some("multipart/form-data;boundary=b"), b"--b--").unwrap_err();
        assert_eq!(e, BodyError::Unsupported("multipart/form-data".into()));
        let e = sdp_of(Some("text/\u{7}plain\r\nX: y"), b"hi").unwrap_err();
        assert_eq!(e, BodyError::Unsupported("text/plainXy".into()));
    }

    #[test]
    fn broken_multiparts_are_400() {
        let no_boundary = sdp_of(Some("multipart/mixed"), &sip_i("b")).unwrap_err();
        assert_eq!(no_boundary, BodyError::Malformed("has no boundary"));
        assert_eq!(no_boundary.status_code(), 400);
        let many: String = (0..MAX_PARTS + 1)
            .map(|i| format!("--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"))
            .chain(["--b--\r\n".to_string()])
            .collect();
        assert_eq!(
            sdp_of(Some("multipart/mixed;boundary=b"), many.as_bytes()),
            Err(BodyError::Malformed("has too many parts"))
        );
        let nested = "--a\r\nContent-Type: multipart/mixed;boundary=b\r\n\r\n--b\r\n\
                      Content-Type: multipart/mixed;boundary=c\r\n\r\n--c--\r\n--b--\r\n--a--\r\n";
        assert_eq!(
            sdp_of(Some("multipart/mixed;boundary=a"), nested.as_bytes()),
            Err(BodyError::Malformed("holds too many multiparts"))
        );
    }

    #[test]
    fn one_nested_alternative_is_looked_into() {
        let body = format!(
            "--a\r\nContent-Type: multipart/alternative;boundary=b\r\n\r\n--b\r\n\
             Content-Type: application/sdp\r\n\r\n{SDP}\r\n--b--\r\n\r\n--a\r\n\
             Content-Type: application/isup\r\n\r\nxx\r\n--a--\r\n"
        );
        assert_eq!(
            sdp_of(Some("multipart/mixed;boundary=a"), body.as_bytes()),
            Ok(Some(Bytes::from(SDP)))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_multipart_body(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            boundary in "[a-z0-9'()+_,./:=? -]{0,72}",
        ) {
            let _ = sdp_of(Some(&format!("multipart/mixed;boundary=\"{boundary}\"")), &body);
        }

        #[test]
        fn never_panics_on_mutated_sip_i_bodies(
            pos in 0usize..300,
            byte in any::<u8>(),
        ) {
            let mut body = sip_i("b1");
            let at = pos % body.len();
            body[at] = byte;
            let _ = sdp_of(Some("multipart/mixed;boundary=b1"), &body);
        }
    }
}
