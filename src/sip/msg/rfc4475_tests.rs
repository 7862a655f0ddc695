//! The valid messages of RFC 4475 §3.1.1 ("SIP Torture Test Messages"), byte for byte as the
//! RFC defines them (tests/fixtures/rfc4475/README.md), each parsed by [`parse`] and checked for
//! what the gateway relies on: the start line, Call-ID, CSeq, the Vias (count, top transport and
//! branch), the From and To tags, the body framed by Content-Length, unknown headers kept. Each
//! must also print and parse again to the same message: that is what the gateway forwards.
//!
//! A few of §3.1.2's invalid messages are checked to stay refused (the end-to-end tests send
//! them to a running gateway: tests/gateway_rfc4475.rs).

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/rfc4475/", $name, ".dat")).as_slice()
    };
}

fn request(bytes: &[u8]) -> Request {
    match parse(bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn response(bytes: &[u8]) -> Response {
    match parse(bytes) {
        Ok(Message::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Every Via entry, in order, across all Via header lines (RFC 3261 §7.3.1: one line with a
/// comma-separated list or several lines are the same).
fn vias(headers: &Headers) -> Vec<Via> {
    headers
        .get_all(name::VIA)
        .flat_map(split_list)
        .map(|v| Via::parse(v).unwrap_or_else(|| panic!("a Via that does not parse: {v}")))
        .collect()
}

fn tag(addr: Option<&NameAddr>) -> Option<&str> {
    addr.and_then(NameAddr::tag)
}

/// The headers other than Content-Length (printing writes its own, last).
fn without_length(headers: &Headers) -> Vec<(&str, &str)> {
    headers.iter().filter(|(n, _)| *n != name::CONTENT_LENGTH).collect()
}

/// What the gateway forwards is what it read: printed and parsed again, the same request.
fn prints_back(r: &Request) {
    let again = request(&r.to_bytes());
    assert_eq!((&again.method, &again.uri, &again.body), (&r.method, &r.uri, &r.body));
    assert_eq!(without_length(&again.headers), without_length(&r.headers));
}

/// The stream framer cuts the message where Content-Length ends it.
fn frames_whole(bytes: &[u8]) {
    assert_eq!(frame(bytes, MAX_MESSAGE_SIZE), Frame::Message(bytes.len()));
}

/// RFC 4475 §3.1.1.1: line folding everywhere, compact and odd-cased names, LWS around `:`,
/// `/`, `;` and `=`, an escaped quote in a display name, unknown headers, an empty Subject.
#[test]
fn wsinv_a_short_tortuous_invite_parses() {
    let bytes = fixture!("wsinv");
    let r = request(bytes);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri, "sip:vivekg@chair-dnrc.example.com;unknownparam");
    assert_eq!(r.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(r.cseq(), Some((9, Method::Invite)));
    assert_eq!(r.max_forwards(), Some(68));
    assert_eq!(tag(r.to()), Some("1918181833n"));
    assert_eq!(r.to().map(|t| t.uri.as_str()), Some("sip:vivekg@chair-dnrc.example.com"));
    assert_eq!(tag(r.from()), Some("98asjd8"));
    // The quoted-string `"J Rosenberg \\\""` is the name `J Rosenberg \"`.
    assert_eq!(r.from().and_then(|f| f.display.as_deref()), Some("J Rosenberg \\\""));
    let vias = vias(&r.headers);
    let read: Vec<_> =
        vias.iter().map(|v| (v.transport.as_str(), v.host.as_str(), v.branch.as_deref())).collect();
    assert_eq!(
        read,
        [
            ("UDP", "192.0.2.2", Some("390skdjuw")),
            ("TCP", "spindle.example.com", Some("z9hG4bK9ikj8")),
            ("UDP", "192.168.255.111", Some("z9hG4bK30239")),
        ]
    );
    assert_eq!(r.top_via(), vias.first());
    // Folded lines are one value, each line break and its indent one space (RFC 3261 §7.3.1).
    assert_eq!(
        r.headers.get("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(r.headers.get("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
    assert_eq!(r.headers.get("Subject"), Some(""), "`s :` is an empty Subject");
    assert_eq!(
        r.headers.get(name::ROUTE),
        Some("<sip:services.example.com;lr;unknownwith=value;unknown-no-value>")
    );
    let contact = r.headers.get(name::CONTACT).and_then(NameAddr::parse).expect("m: is Contact");
    assert_eq!(contact.display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(contact.uri, "sip:jdrosen@example.com");
    assert_eq!(contact.param("newparam"), Some("newvalue"));
    assert_eq!(contact.param("q"), Some("0.33"));
    assert_eq!(r.headers.get(name::CONTENT_TYPE), Some("application/sdp"));
    assert_eq!(r.body.len(), 150);
    assert!(r.body.starts_with(b"v=0\r\n") && r.body.ends_with(b"a=rtpmap:31 LPC\r\n"));
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.2: every character a token, a URI user and password, a quoted string and
/// a word allow; control characters escaped in a display name; UTF-8 in a parameter and in an
/// extension header.
#[test]
fn intmeth_a_wide_range_of_valid_characters_parses() {
    let bytes = fixture!("intmeth");
    let r = request(bytes);
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(r.method, Method::Other(method.to_string()));
    assert_eq!(
        r.uri,
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    );
    assert_eq!(r.call_id(), Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"));
    assert_eq!(r.cseq(), Some((139122385, Method::Other(method.to_string()))));
    assert_eq!(r.max_forwards(), Some(255));
    let via = r.top_via().expect("a Via");
    assert_eq!(via.transport, "TCP");
    assert_eq!(via.branch.as_deref(), Some("z9hG4bK-.!%66*_+`'~"), "as written, not unescaped");
    assert_eq!(vias(&r.headers).len(), 1);
    let from = r.from().expect("From");
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(from.display.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
    assert_eq!(from.uri, "sip:mundane@example.com");
    assert_eq!(from.param("fromparam''~+*_!.-%"), Some("\"работающий\""));
    let to = r.to().expect("To");
    assert_eq!(tag(Some(to)), None);
    assert_eq!(to.display.as_deref(), Some("BEL:\u{7} NUL:\u{0} DEL:\u{7f}"));
    assert_eq!(to.uri, "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com");
    assert_eq!(r.headers.get("extensionHeader-!.%*+_`'~"), Some("\u{feff}大停電"));
    assert!(r.body.is_empty());
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.3: escapes in the Request-URI, To, From and Contact; compact `i` and `c`.
#[test]
fn esc01_valid_percent_escapes_parse() {
    let bytes = fixture!("esc01");
    let r = request(bytes);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri, "sip:sips%3Auser%40example.com@example.net");
    assert_eq!(r.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    assert_eq!(r.to().map(|t| t.uri.as_str()), Some("sip:%75se%72@example.com"));
    assert_eq!(tag(r.to()), None);
    assert_eq!(tag(r.from()), Some("938"));
    assert_eq!(r.from().map(|f| f.uri.as_str()), Some("sip:I%20have%20spaces@example.net"));
    assert_eq!(
        r.contact_uri().as_deref(),
        Some("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    );
    assert_eq!(r.headers.get(name::CONTENT_TYPE), Some("application/sdp"));
    let via = r.top_via().expect("a Via");
    assert_eq!((via.transport.as_str(), via.branch.as_deref()), ("UDP", Some("z9hG4bKkdjuw")));
    assert_eq!(r.body.len(), 150);
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.4: `%00` in URIs, two Contact lines, `L:0`.
#[test]
fn escnull_escaped_nulls_in_uris_parse() {
    let bytes = fixture!("escnull");
    let r = request(bytes);
    assert_eq!(r.method, Method::Register);
    assert_eq!(r.uri, "sip:example.com");
    assert_eq!(r.call_id(), Some("escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd"));
    assert_eq!(r.cseq(), Some((14398234, Method::Register)));
    assert_eq!(r.to().map(|t| t.uri.as_str()), Some("sip:null-%00-null@example.com"));
    assert_eq!(tag(r.from()), Some("839923423"));
    let contacts: Vec<_> = r.headers.get_all(name::CONTACT).collect();
    assert_eq!(contacts, ["<sip:%00@host5.example.com>", "<sip:%00%00@host5.example.com>"]);
    assert_eq!(r.headers.get(name::CONTENT_LENGTH), Some("0"), "`L` is Content-Length");
    assert!(r.body.is_empty());
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.5: `%` that is no escape: an unknown method `RE%47IST%45R` (not REGISTER),
/// a header `C%6Fntact` (not Contact), a branch with `%f`.
#[test]
fn esc02_percent_that_is_not_an_escape_parses() {
    let bytes = fixture!("esc02");
    let r = request(bytes);
    assert_eq!(r.method, Method::Other("RE%47IST%45R".to_string()));
    assert_eq!(r.cseq(), Some((29344, Method::Other("RE%47IST%45R".to_string()))));
    assert_eq!(r.uri, "sip:registrar.example.com");
    assert_eq!(r.call_id(), Some("esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf"));
    assert_eq!(r.to().and_then(|t| t.display.as_deref()), Some("%Z%45"));
    assert_eq!(tag(r.from()), Some("f232jadfj23"));
    let via = r.top_via().expect("a Via");
    assert_eq!(via.transport, "TCP");
    assert_eq!(via.branch.as_deref(), Some("z9hG4bK209%fzsnel234"));
    assert_eq!(r.headers.count(name::CONTACT), 2);
    assert_eq!(r.headers.get("C%6Fntact"), Some("<sip:alias2@host2.example.com>"));
    assert!(r.body.is_empty());
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.6: no space between a display name and `<`.
#[test]
fn lwsdisp_no_space_before_the_angle_bracket_parses() {
    let bytes = fixture!("lwsdisp");
    let r = request(bytes);
    assert_eq!(r.method, Method::Options);
    assert_eq!(r.call_id(), Some("lwsdisp.1234abcd@funky.example.com"));
    let from = r.from().expect("From");
    assert_eq!(
        (from.display.as_deref(), from.uri.as_str()),
        (Some("caller"), "sip:caller@example.com")
    );
    assert_eq!(from.tag(), Some("323"));
    let via = r.top_via().expect("a Via");
    assert_eq!(
        (via.host.as_str(), via.branch.as_deref()),
        ("funky.example.com", Some("z9hG4bKkdjuw"))
    );
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.7: long values everywhere and 34 Vias in 34 lines, the top one without a
/// branch (an RFC 2543 element's: the parser takes it; the gateway decides what to answer).
#[test]
fn longreq_long_values_and_many_vias_parse() {
    let bytes = fixture!("longreq");
    let r = request(bytes);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri, "sip:user@example.com");
    let call_id = format!("longreq.one{}longcallid", "really".repeat(20));
    assert_eq!(r.call_id(), Some(call_id.as_str()));
    assert_eq!(r.cseq(), Some((3882340, Method::Invite)));
    let vias = vias(&r.headers);
    assert_eq!(vias.len(), 34);
    assert_eq!(r.headers.count(name::VIA), 34, "every spelling of Via and v is Via");
    let top = r.top_via().expect("a Via");
    assert_eq!((top.transport.as_str(), top.host.as_str()), ("TCP", "sip33.example.com"));
    assert_eq!(top.branch, None);
    let last = vias.last().expect("34 Vias");
    assert_eq!(last.received.as_deref(), Some("192.0.2.5"));
    let branch = format!("very{}branchvalue", "long".repeat(50));
    assert_eq!(last.branch.as_deref(), Some(branch.as_str()));
    let from_tag = format!("1{}2424", "298".repeat(50));
    assert_eq!(tag(r.from()), Some(from_tag.as_str()));
    let name = "amazinglylongcallername".repeat(5);
    assert_eq!(r.from().map(|f| f.uri.clone()), Some(format!("sip:{name}@example.net")));
    assert_eq!(r.contact_uri(), Some(format!("sip:{name}@host5.example.net")));
    let to = r.to().expect("To");
    let display = format!("I have a user name of {} proportion", "extreme".repeat(10));
    assert_eq!(to.display.as_deref(), Some(display.as_str()));
    assert_eq!(tag(Some(to)), None);
    let unknown = format!("Unknown-{}-Name", "Long".repeat(20));
    let value = r.headers.get(&unknown).expect("the long unknown header is kept");
    assert!(value.starts_with("unknown-longlong") && value.ends_with("long-parameter-value"));
    assert_eq!(r.body.len(), 150);
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.8: a REGISTER with `Content-Length: 0` followed in the same datagram by
/// another message: the extra octets are not part of it.
#[test]
fn dblreq_extra_octets_after_the_body_are_dropped() {
    let bytes = fixture!("dblreq");
    let r = request(bytes);
    assert_eq!(r.method, Method::Register);
    assert_eq!(r.call_id(), Some("dblreq.0ha0isndaksdj99sdfafnl3lk233412"));
    assert_eq!(r.cseq(), Some((8, Method::Register)));
    assert_eq!(tag(r.from()), Some("43251j3j324"));
    let via = r.top_via().expect("a Via");
    assert_eq!(
        (via.host.as_str(), via.branch.as_deref()),
        ("192.0.2.125", Some("z9hG4bKkdjuw23492"))
    );
    assert!(r.body.is_empty());
    assert_eq!(r.headers.get("Content-Type"), None, "the INVITE's headers are not read");
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(frame(bytes, MAX_MESSAGE_SIZE), Frame::Message(head));
    prints_back(&r);
}

/// RFC 4475 §3.1.1.9: `;` and an escaped `@` in a URI's user part; a folded list.
#[test]
fn semiuri_semicolons_in_the_user_part_parse() {
    let bytes = fixture!("semiuri");
    let r = request(bytes);
    assert_eq!(r.method, Method::Options);
    assert_eq!(r.uri, "sip:user;par=u%40example.net@example.com");
    assert_eq!(r.call_id(), Some("semiuri.0ha0isndaksdj"));
    assert_eq!(tag(r.from()), Some("33242"));
    let accept = r.headers.get("Accept").map(split_list).unwrap_or_default();
    assert_eq!(
        accept,
        [
            "application/sdp",
            "application/pkcs7-mime",
            "multipart/mixed",
            "multipart/signed",
            "message/sip",
            "message/sipfrag"
        ]
    );
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.10: Vias of transports the gateway does not speak (SCTP, UNKNOWN).
#[test]
fn transports_varied_and_unknown_transports_parse() {
    let bytes = fixture!("transports");
    let r = request(bytes);
    assert_eq!(r.method, Method::Options);
    assert_eq!(r.call_id(), Some("transports.kijh4akdnaqjkwendsasfdj"));
    let read: Vec<_> =
        vias(&r.headers).into_iter().map(|v| (v.transport, v.host, v.branch)).collect();
    let want = [
        ("UDP", "t1.example.com", "z9hG4bKkdjuw"),
        ("SCTP", "t2.example.com", "z9hG4bKklasjdhf"),
        ("TLS", "t3.example.com", "z9hG4bK2980unddj"),
        ("UNKNOWN", "t4.example.com", "z9hG4bKasd0f3en"),
        ("TCP", "t5.example.com", "z9hG4bK0a9idfnee"),
    ]
    .map(|(t, h, b)| (t.to_string(), h.to_string(), Some(b.to_string())));
    assert_eq!(read, want);
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.11: a multipart/mixed body with a binary part (bytes that are not UTF-8,
/// bare LFs): kept whole, exactly Content-Length bytes. What is inside is not the parser's
/// business.
#[test]
fn mpart01_a_multipart_body_is_kept_whole() {
    let bytes = fixture!("mpart01");
    let r = request(bytes);
    assert_eq!(r.method, Method::Message);
    assert_eq!(r.call_id(), Some("3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.."));
    assert_eq!(tag(r.from()), Some("2fb0dcc9"));
    let via = r.top_via().expect("a Via");
    assert_eq!(via.branch.as_deref(), Some("z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-"));
    assert_eq!(via.rport, Some(None));
    assert_eq!(
        r.headers.get(name::CONTENT_TYPE),
        Some("multipart/mixed;boundary=7a9cbec02ceef655")
    );
    assert!(r.headers.get("Identity").is_some_and(|i| i.ends_with("MWYUA=")));
    assert_eq!(r.body.len(), 553);
    assert_eq!(&r.body[..], &bytes[bytes.len() - 553..]);
    assert!(r.body.starts_with(b"--7a9cbec02ceef655\r\n"));
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
    assert!(std::str::from_utf8(&r.body).is_err(), "a binary part");
    frames_whole(bytes);
    prints_back(&r);
}

/// RFC 4475 §3.1.1.12: a reason phrase of digits, symbols and UTF-8.
#[test]
fn unreason_an_unusual_reason_phrase_parses() {
    let bytes = fixture!("unreason");
    let r = response(bytes);
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "= 2**3 * 5**2 но сто девяносто девять - простое");
    assert_eq!(r.call_id(), Some("unreason.1234ksdfak3j2erwedfsASdf"));
    assert_eq!(r.cseq(), Some((35, Method::Invite)));
    assert_eq!((tag(r.from()), tag(r.to())), (Some("11141343"), Some("2229")));
    assert_eq!(r.top_via().and_then(|v| v.branch.as_deref()), Some("z9hG4bK1324923"));
    assert_eq!(r.body.len(), 154);
    frames_whole(bytes);
    let again = response(&r.to_bytes());
    assert_eq!((again.status, &again.reason, &again.body), (r.status, &r.reason, &r.body));
    assert_eq!(without_length(&again.headers), without_length(&r.headers));
}

/// RFC 4475 §3.1.1.13: an empty reason phrase (the space before it is there).
#[test]
fn noreason_an_empty_reason_phrase_parses() {
    let bytes = fixture!("noreason");
    let r = response(bytes);
    assert_eq!(r.status, 100);
    assert_eq!(r.reason, "");
    assert_eq!(r.call_id(), Some("noreason.asndj203insdf99223ndf"));
    assert_eq!((tag(r.from()), tag(r.to())), (Some("39ansfi3"), Some("902jndnke3")));
    assert!(r.body.is_empty());
    frames_whole(bytes);
    let again = response(&r.to_bytes());
    assert_eq!((again.status, &again.reason), (100, &r.reason));
}

/// RFC 4475 §3.1.2: invalid messages a server must refuse stay refused with 400, and can be
/// answered (they have a Via).
#[test]
fn invalid_torture_messages_are_still_400() {
    let cases = [
        // §3.1.2.1: `;;,;,,` after a Via's sent-by.
        (fixture!("badinv01"), "malformed Via"),
        // §3.1.2.2: Content-Length 9999 on a datagram far shorter.
        (fixture!("clerr"), "body shorter than Content-Length"),
        // §3.1.2.3: Content-Length -999.
        (fixture!("ncl"), "bad Content-Length"),
        // §3.1.2.4: CSeq 36893488147419103232 (and Max-Forwards 300).
        (fixture!("scalar02"), "malformed CSeq"),
        // §3.3.1: no Call-ID, From or To.
        (fixture!("insuf"), "exactly one From is required"),
    ];
    for (bytes, detail) in cases {
        let e = parse(bytes).expect_err("refused");
        assert_eq!((e.status, e.detail), (400, detail));
        assert!(e.partial.is_some(), "{detail}: answerable");
    }
}
