//! The SIP message facade: the only module that touches the message codec (`ezk-sip-types`), so
//! it can be replaced in one file (DESIGN §8). It gives owned [`Request`]s and [`Response`]s with
//! ordered headers, parses them with the gateway's own message-level checks, and prints them.
//!
//! Checks made on every parsed message (DESIGN §8), each with the answer a request gets:
//! - start line: a request line with `SIP/2.0` (another version: 505, RFC 3261 §8.2.2...
//!   §21.5.26) or a status line; anything else: 400;
//! - header lines that parse (name `:` value, folded lines joined): else 400;
//! - framing by `Content-Length` (RFC 3261 §18.3): a body shorter than announced is 400, bytes
//!   after it are dropped; a message over the size limit is 513;
//! - exactly one `From`, `To`, `Call-ID` and `CSeq`, at least one `Via`: else 400. A top `Via`
//!   without a `branch` is an RFC 2543 element's, and valid (RFC 3261 §17.2.3 tells how to match
//!   it; RFC 4475 §3.1.1.7 sends one): what to answer is the gateway's decision, not the parser's;
//! - `CSeq` is a number below 2^31 and its method equals the request method: else 400;
//! - `Max-Forwards`, when present, is 0-255: else 400 (0 on a request to forward is the
//!   B2BUA's 483).
//!
//! Callers: the transports (framing), the SIP core (parse, answer, print), the B2BUA (build).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::OnceLock;

use bytes::Bytes;
use ezk_sip_types::Name;
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::AppendCtx;

/// The largest message the gateway accepts on any transport (RFC 3261 §18.1.1 lets UDP
/// messages reach 65,535 bytes; carriers' INVITEs are a few KiB).
pub const MAX_MESSAGE_SIZE: usize = 65_535;

/// Most header lines in one message: more is an attack, not a call.
const MAX_HEADERS: usize = 256;

/// A SIP method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Update,
    Info,
    Prack,
    Refer,
    Notify,
    Subscribe,
    Message,
    Register,
    Publish,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Register => "REGISTER",
            Method::Publish => "PUBLISH",
            Method::Other(m) => m,
        }
    }

    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "UPDATE" => Method::Update,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "REGISTER" => Method::Register,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names the gateway reads or writes, in their canonical long form.
pub mod name {
    pub const VIA: &str = "Via";
    pub const FROM: &str = "From";
    pub const TO: &str = "To";
    pub const CALL_ID: &str = "Call-ID";
    pub const CSEQ: &str = "CSeq";
    pub const CONTACT: &str = "Contact";
    pub const MAX_FORWARDS: &str = "Max-Forwards";
    pub const CONTENT_LENGTH: &str = "Content-Length";
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const RECORD_ROUTE: &str = "Record-Route";
    pub const ROUTE: &str = "Route";
    pub const USER_AGENT: &str = "User-Agent";
    pub const SERVER: &str = "Server";
    pub const ALLOW: &str = "Allow";
    pub const REQUIRE: &str = "Require";
    pub const RETRY_AFTER: &str = "Retry-After";
    pub const PROXY_AUTHENTICATE: &str = "Proxy-Authenticate";
    pub const PROXY_AUTHORIZATION: &str = "Proxy-Authorization";
    pub const AUTHORIZATION: &str = "Authorization";
    pub const WWW_AUTHENTICATE: &str = "WWW-Authenticate";
    pub const WARNING: &str = "Warning";
    pub const REASON: &str = "Reason";
}

/// Headers in the order they arrived or were added. Names compare case-insensitively and
/// compact forms (`f`, `i`, `v`...) are stored in their long form.
///
/// Values are kept as text. The top `Via` is parsed once, on the first ask (or by the message
/// parser's checks), and kept until a `Via` is changed: the transaction layer, the dialogs and
/// the front door each ask for it, and parsing it on every ask was 15 % of the instructions
/// of a call (docs/benchmarks.md, callgrind).
#[derive(Clone, Default)]
pub struct Headers {
    /// Names of the headers the gateway knows are borrowed from [`KNOWN_NAMES`] (no allocation
    /// for the dozen header names of a common message); others are owned.
    entries: Vec<(Cow<'static, str>, String)>,
    /// Boxed: a message is moved through queues, and an inline `Via` would make every
    /// `Headers` 110 bytes larger.
    top_via: OnceLock<Option<Box<Via>>>,
    /// `From` and `To`, parsed once the same way (each was parsed 18 times per call).
    from: OnceLock<Option<Box<NameAddr>>>,
    to: OnceLock<Option<Box<NameAddr>>>,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Headers").field("entries", &self.entries).finish()
    }
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// Adds a header after the others.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.changed(name);
        self.entries.push((header_name(name), value.into()));
    }

    /// Replaces every value of `name` with one.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.changed(name);
        let value = value.into();
        match self.entries.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(i) => {
                self.entries[i].1 = value;
                let mut j = i + 1;
                while j < self.entries.len() {
                    if self.entries[j].0.eq_ignore_ascii_case(name) {
                        self.entries.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => self.push(name, value),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.changed(name);
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }

    /// Copies every value of `name` from `other`, after the headers already here.
    pub fn copy_from(&mut self, other: &Headers, name: &str) {
        for v in other.get_all(name) {
            self.push(name, v);
        }
    }

    /// The top `Via`, parsed (`None` when there is none or it does not parse).
    pub fn top_via(&self) -> Option<&Via> {
        self.top_via
            .get_or_init(|| {
                self.get(name::VIA)
                    .and_then(|v| split_list(v).first().and_then(|one| Via::parse(one)))
                    .map(Box::new)
            })
            .as_deref()
    }

    /// `From`, parsed (`None` when there is none or it does not parse).
    pub fn from(&self) -> Option<&NameAddr> {
        name_addr(&self.from, self.get(name::FROM))
    }

    /// `To`, parsed (`None` when there is none or it does not parse).
    pub fn to(&self) -> Option<&NameAddr> {
        name_addr(&self.to, self.get(name::TO))
    }

    /// Forgets what was parsed from `name`'s values.
    fn changed(&mut self, name: &str) {
        if name.eq_ignore_ascii_case(self::name::VIA) {
            self.top_via = OnceLock::new();
        } else if name.eq_ignore_ascii_case(self::name::FROM) {
            self.from = OnceLock::new();
        } else if name.eq_ignore_ascii_case(self::name::TO) {
            self.to = OnceLock::new();
        }
    }

    fn print(&self, out: &mut String) {
        for (n, v) in &self.entries {
            if n.eq_ignore_ascii_case(name::CONTENT_LENGTH) {
                continue;
            }
            // push_str rather than write!: core::fmt was 12 % of a call's instructions.
            for part in [n.as_ref(), ": ", v.as_str(), "\r\n"] {
                out.push_str(part);
            }
        }
    }
}

fn name_addr<'a>(
    parsed: &'a OnceLock<Option<Box<NameAddr>>>,
    value: Option<&str>,
) -> Option<&'a NameAddr> {
    parsed.get_or_init(|| value.and_then(NameAddr::parse).map(Box::new)).as_deref()
}

/// A SIP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The Request-URI as written (validated as a SIP, SIPS or tel URI when parsed).
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// A SIP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// A parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why a message was refused, and what a request gets for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {detail}")]
pub struct ParseError {
    /// 400, 505 or 513.
    pub status: u16,
    /// What was wrong, safe to send as a `Warning` text (never echoes the message).
    pub detail: &'static str,
    /// The request as far as it parsed, when it is a request with a `Via` to answer to.
    pub partial: Option<Box<Request>>,
}

impl ParseError {
    fn new(status: u16, detail: &'static str) -> Self {
        ParseError { status, detail, partial: None }
    }
}

/// Parses one message (a UDP datagram, or a frame cut from a stream by [`frame`]).
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::new(513, "message too large"));
    }
    parse_bytes(Bytes::copy_from_slice(buf))
}

/// [`parse`] of bytes already owned (the message keeps slices of them: no copy).
pub fn parse_bytes(bytes: Bytes) -> Result<Message, ParseError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::new(513, "message too large"));
    }
    let mut parser = PullParser::new(&bytes, 0);
    let mut start: Option<Start> = None;
    let mut version_error = false;
    let mut headers = Headers::new();
    let mut bad_header = false;
    for line in &mut parser {
        let line = line.map_err(|_| ParseError::new(400, "incomplete message head"))?;
        let line = std::str::from_utf8(line)
            .map_err(|_| ParseError::new(400, "message head is not UTF-8"))?;
        if start.is_none() {
            match MessageLine::parse(&bytes)(line) {
                Ok((rest, l)) if rest.trim().is_empty() => start = Some(Start::Line(l)),
                _ => match tel_request_line(line) {
                    Some((method, uri)) => start = Some(Start::Tel { method, uri }),
                    None => {
                        version_error = looks_like_other_version(line);
                        break;
                    }
                },
            }
            continue;
        }
        if headers.entries.len() >= MAX_HEADERS {
            return Err(ParseError::new(513, "too many header lines"));
        }
        match Line::parse(&bytes, line) {
            Ok((_, l)) => headers.entries.push((canonical_name(&l.name), unfold(&l.value))),
            Err(_) => bad_header = true,
        }
    }
    let Some(start) = start else {
        return Err(if version_error {
            ParseError::new(505, "SIP version not supported")
        } else {
            ParseError::new(400, "bad start line")
        });
    };
    let head_end = parser.head_end();
    let body = frame_body(&bytes, head_end, &headers);

    let (request_line, response_line) = match start {
        Start::Line(MessageLine::Request(line)) => {
            (Some((line.method.to_string(), line.uri.default_print_ctx().to_string())), None)
        }
        Start::Tel { method, uri } => (Some((method, uri)), None),
        Start::Line(MessageLine::Response(line)) => (None, Some(line)),
    };
    match (request_line, response_line) {
        (Some((method, uri)), _) => {
            let mut request =
                Request { method: Method::parse(&method), uri, headers, body: Bytes::new() };
            let checked = match body {
                Ok(body) => {
                    request.body = body;
                    if bad_header { Err("malformed header line") } else { check_request(&request) }
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => Ok(Message::Request(request)),
                Err(detail) => {
                    let answerable = request.top_via().is_some();
                    Err(ParseError {
                        status: 400,
                        detail,
                        partial: answerable.then(|| Box::new(request)),
                    })
                }
            }
        }
        (None, Some(line)) => {
            let status = line.code.into_u16();
            if !(100..=699).contains(&status) {
                return Err(ParseError::new(400, "status code out of range"));
            }
            let response = Response {
                status,
                reason: line.reason.map(|r| r.to_string()).unwrap_or_default(),
                headers,
                body: body.map_err(|d| ParseError::new(400, d))?,
            };
            if bad_header {
                return Err(ParseError::new(400, "malformed header line"));
            }
            check_common(&response.headers).map_err(|d| ParseError::new(400, d))?;
            Ok(Message::Response(response))
        }
        (None, None) => Err(ParseError::new(400, "bad start line")),
    }
}

/// The start line of a message: what the SIP grammar reads, or a request to a `tel:` URI
/// (RFC 3966, allowed as a Request-URI by RFC 3261 §19.1.6), which it does not.
enum Start {
    Line(MessageLine),
    Tel { method: String, uri: String },
}

/// `METHOD tel:NUMBER[;params] SIP/2.0`: the method (a token) and the URI, or `None`.
fn tel_request_line(line: &str) -> Option<(String, String)> {
    let mut parts = line.trim_end().split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    let scheme = uri.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("tel:"));
    let uri_ok = uri.len() > 4 && uri.chars().all(|c| c.is_ascii_graphic() && c != '<' && c != '>');
    let ok = parts.next().is_none()
        && !method.is_empty()
        && method.chars().all(token)
        && scheme
        && uri_ok
        && version == "SIP/2.0";
    ok.then(|| (method.to_string(), uri.to_string()))
}

/// A header value as one line: trimmed, and each line break of a folded value (RFC 3261
/// §7.3.1: a line starting with SP or HTAB continues the one before) with the whitespace around
/// it replaced by one SP, which the RFC makes equivalent. The codec's line reader keeps the
/// breaks in the value (RFC 4475 §3.1.1.1 folds To, From, CSeq, Via and unknown headers); the
/// rest of the gateway, and every header it copies to the other leg, sees one line.
fn unfold(value: &str) -> String {
    let ws: &[char] = &[' ', '\t', '\r'];
    if !value.contains('\n') {
        return value.trim_matches(ws).to_string();
    }
    let mut out = String::with_capacity(value.len());
    for part in value.split('\n').map(|p| p.trim_matches(ws)).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(part);
    }
    out
}

fn looks_like_other_version(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let first = parts.next().unwrap_or_default();
    if first.starts_with("SIP/") {
        return first != "SIP/2.0";
    }
    parts.nth(1).is_some_and(|v| v.starts_with("SIP/") && v != "SIP/2.0")
}

/// The canonical long form of a header name (compact forms expanded, RFC 3261 §7.3.3).
fn canonical_name(n: &Name) -> Cow<'static, str> {
    header_name(n.as_print_str())
}

/// Header names common enough in the messages the gateway sees to be worth not allocating.
const KNOWN_NAMES: &[&str] = &[
    name::VIA,
    name::FROM,
    name::TO,
    name::CALL_ID,
    name::CSEQ,
    name::CONTACT,
    name::MAX_FORWARDS,
    name::CONTENT_LENGTH,
    name::CONTENT_TYPE,
    name::RECORD_ROUTE,
    name::ROUTE,
    name::USER_AGENT,
    name::SERVER,
    name::ALLOW,
    name::REQUIRE,
    name::RETRY_AFTER,
    name::PROXY_AUTHENTICATE,
    name::PROXY_AUTHORIZATION,
    name::AUTHORIZATION,
    name::WWW_AUTHENTICATE,
    name::WARNING,
    name::REASON,
    "Supported",
    "Session-Expires",
    "Min-SE",
    "Accept",
    "Subject",
    "Date",
    "Expires",
    "Privacy",
    "P-Asserted-Identity",
    "Remote-Party-ID",
    "Diversion",
    "Unsupported",
];

/// `name` as stored: one of [`KNOWN_NAMES`] borrowed when it is one (exact spelling), else a copy.
fn header_name(name: &str) -> Cow<'static, str> {
    match KNOWN_NAMES.iter().find(|k| **k == name) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.to_string()),
    }
}

fn frame_body(bytes: &Bytes, head_end: usize, headers: &Headers) -> Result<Bytes, &'static str> {
    let available = bytes.len().saturating_sub(head_end);
    let declared = match headers.get(name::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(v.trim().parse::<usize>().map_err(|_| "bad Content-Length")?),
    };
    if headers.count(name::CONTENT_LENGTH) > 1 {
        return Err("more than one Content-Length");
    }
    match declared {
        Some(len) if len > available => Err("body shorter than Content-Length"),
        Some(len) => Ok(bytes.slice(head_end..head_end + len)),
        // Without Content-Length (allowed on UDP, RFC 3261 §18.3) the body is the rest.
        None => Ok(bytes.slice(head_end.min(bytes.len())..)),
    }
}

fn check_common(headers: &Headers) -> Result<(), &'static str> {
    for (h, what) in [
        (name::FROM, "exactly one From is required"),
        (name::TO, "exactly one To is required"),
        (name::CALL_ID, "exactly one Call-ID is required"),
        (name::CSEQ, "exactly one CSeq is required"),
    ] {
        if headers.count(h) != 1 {
            return Err(what);
        }
    }
    if headers.get(name::CALL_ID).is_some_and(|c| c.is_empty() || c.len() > 256) {
        return Err("bad Call-ID");
    }
    if headers.get(name::VIA).is_none() {
        return Err("Via is required");
    }
    let mut any = false;
    for v in headers.get_all(name::VIA) {
        for one in split_list(v) {
            let via = Via::parse(one).ok_or("malformed Via")?;
            if !any {
                // The checks parse the top Via anyway: keep it for the later asks.
                let _ = headers.top_via.set(Some(Box::new(via)));
            }
            any = true;
        }
    }
    if !any {
        return Err("Via is required");
    }
    // Parsed here for the checks and kept for the later asks, as the top Via.
    let from = headers.from().ok_or("malformed From")?;
    let to = headers.to().ok_or("malformed To")?;
    if from.uri.is_empty() || to.uri.is_empty() {
        return Err("malformed From or To");
    }
    parse_cseq(headers.get(name::CSEQ).unwrap_or_default()).ok_or("malformed CSeq")?;
    Ok(())
}

fn check_request(r: &Request) -> Result<(), &'static str> {
    check_common(&r.headers)?;
    let (_, method) = r.cseq().ok_or("malformed CSeq")?;
    if method != r.method {
        return Err("CSeq method differs from the request method");
    }
    if let Some(mf) = r.headers.get(name::MAX_FORWARDS)
        && mf.trim().parse::<u8>().is_err()
    {
        return Err("Max-Forwards is not 0-255");
    }
    Ok(())
}

fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let mut parts = v.split_whitespace();
    let n: u32 = parts.next()?.parse().ok()?;
    let method = parts.next()?;
    if parts.next().is_some() || n >= 1 << 31 || !method.bytes().all(is_token_byte) {
        return None;
    }
    Some((n, Method::parse(method)))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The Call-ID of a message not parsed yet, found by a scan of its head: the value of the
/// first `Call-ID` (or compact `i`) header line, trimmed. Only a hint, for choosing where a
/// datagram is parsed (the front door's workers, by Call-ID, so that one call's messages are
/// handled in order); the parser decides what the message is. `None` when there is none
/// before the blank line that ends the head.
pub fn scan_call_id(buf: &[u8]) -> Option<&[u8]> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf, |end| &buf[..end]);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            return Some(line[colon + 1..].trim_ascii());
        }
    }
    None
}

/// Splits a header value on the commas between list elements, not those inside quotes or
/// angle brackets (RFC 3261 §7.3.1).
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// A parsed `Via` value (RFC 3261 §20.42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`...
    pub transport: String,
    /// `host` or `host:port` as written (IPv6 in brackets).
    pub sent_by: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub received: Option<String>,
    /// `Some(None)` for a bare `rport` (RFC 3581), `Some(Some(p))` when filled in.
    pub rport: Option<Option<u16>>,
}

impl Via {
    /// Parses one Via value. The codec checks its syntax and reads the transport and sent-by;
    /// the parameters are read here, as written: the codec percent-decodes parameter values,
    /// but a Via's are tokens, hosts or quoted strings (RFC 3261 §20.42, §25.1), in which `%`
    /// is a plain character. RFC 4475 §3.1.1.2's branch ``z9hG4bK-.!%66*_+`'~`` is that
    /// branch, not ``z9hG4bK-.!f*_+`'~`` (and a branch with `%ff`, not UTF-8 once decoded, is
    /// still a branch).
    pub fn parse(value: &str) -> Option<Via> {
        let src = Bytes::copy_from_slice(value.as_bytes());
        let text = std::str::from_utf8(&src).ok()?;
        let (_, via) =
            <ezk_sip_types::header::typed::Via as ezk_sip_types::header::HeaderParse>::parse(
                &src, text,
            )
            .ok()?;
        // Neither the protocol nor the sent-by (a host, an IPv4 or bracketed IPv6 address,
        // a port) has a `;`: the parameters start at the first one.
        let params = value.find(';').map_or_else(Vec::new, |at| via_params(&value[at + 1..]));
        let param =
            |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| *v);
        let host = match &via.sent_by.host {
            ezk_sip_types::host::Host::IP6(ip) => format!("[{ip}]"),
            h => h.to_string(),
        };
        let sent_by = match via.sent_by.port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let rport = param("rport").map(|v| v.and_then(|v| v.parse().ok()));
        Some(Via {
            transport: via.transport.to_string(),
            sent_by,
            host,
            port: via.sent_by.port,
            branch: param("branch").flatten().map(str::to_string),
            received: param("received").flatten().map(str::to_string),
            rport,
        })
    }
}

/// `name[=value];...` as written, names and values trimmed of the whitespace RFC 3261 lets
/// stand around `;` and `=` (SEMI, EQUAL); a `;` inside a quoted value does not split.
fn via_params(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut pieces = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim_end(), Some(v.trim_start())),
            None => (p, None),
        })
        .collect()
}

/// A `name-addr` or `addr-spec` with its parameters: `From`, `To`, `Contact`, `Record-Route`.
/// Lenient on purpose: any URI scheme, display names quoted or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    /// Header parameters after the address (`;tag=...`, `;expires=...`).
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        let (display, uri, rest) = if let Some(lt) = find_unquoted(value, '<') {
            let gt = value[lt..].find('>')? + lt;
            let display = display_name(value[..lt].trim());
            (display, value[lt + 1..gt].trim().to_string(), &value[gt + 1..])
        } else {
            // addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10).
            let end = value.find(';').unwrap_or(value.len());
            (None, value[..end].trim().to_string(), &value[end..])
        };
        if uri.is_empty() || uri.chars().any(char::is_whitespace) {
            return None;
        }
        let params = rest
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        Some(NameAddr { display, uri, params })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag")
    }

    /// `"Display" <uri>;params`.
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        if let Some(d) = &self.display {
            out.push('"');
            push_quoted(&mut out, d);
            out.push_str("\" ");
        }
        let _ = write!(out, "<{}>", self.uri);
        for (k, v) in &self.params {
            match v {
                Some(v) => {
                    let _ = write!(out, ";{k}={v}");
                }
                None => {
                    let _ = write!(out, ";{k}");
                }
            }
        }
        out
    }
}

/// The display name before a `<`: a quoted string unquoted, its quoted-pairs (`\"`, `\\`,
/// `\` before a control character) read as the character they quote (RFC 3261 §25.1), or
/// tokens as written. RFC 4475 §3.1.1.1's `"J Rosenberg \\\""` is `J Rosenberg \"`.
fn display_name(raw: &str) -> Option<String> {
    let name = match raw.strip_prefix('"') {
        Some(quoted) => {
            let mut name = String::with_capacity(quoted.len());
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => name.extend(chars.next()),
                    c => name.push(c),
                }
            }
            name
        }
        None => raw.to_string(),
    };
    (!name.is_empty()).then_some(name)
}

/// `text` as the inside of a quoted string: `"`, `\` and the control characters a quoted-pair
/// may carry escaped (RFC 3261 §25.1); CR and LF, which nothing can carry, as spaces.
fn push_quoted(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() && c != '\t' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parts of a `sip:`/`sips:` URI the gateway needs: where to send and who it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    pub sips: bool,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// `transport` URI parameter, lower case.
    pub transport: Option<String>,
    /// The `lr` parameter (a loose router, RFC 3261 §19.1.1).
    pub lr: bool,
}

impl SipUri {
    pub fn parse(uri: &str) -> Option<SipUri> {
        let parsed = ezk_sip_types::uri::SipUri::from_str(uri).ok()?;
        let user = match &parsed.user_part {
            ezk_sip_types::uri::SipUriUserPart::Empty => None,
            ezk_sip_types::uri::SipUriUserPart::User(u) => Some(u.to_string()),
            ezk_sip_types::uri::SipUriUserPart::UserPw(up) => Some(up.user.to_string()),
        };
        let host = match &parsed.host_port.host {
            ezk_sip_types::host::Host::IP6(ip) => format!("[{ip}]"),
            h => h.to_string(),
        };
        Some(SipUri {
            sips: parsed.sips,
            user,
            host,
            port: parsed.host_port.port,
            transport: parsed.uri_params.get_val("transport").map(|t| t.to_ascii_lowercase()),
            lr: parsed.uri_params.get("lr").is_some(),
        })
    }
}

impl Request {
    /// A request with no headers yet.
    pub fn new(method: Method, uri: impl Into<String>) -> Request {
        Request { method, uri: uri.into(), headers: Headers::new(), body: Bytes::new() }
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.headers.get(name::MAX_FORWARDS).and_then(|v| v.trim().parse().ok())
    }

    /// Prints the request, with a `Content-Length` of its body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        for part in [self.method.as_str(), " ", self.uri.as_str(), " SIP/2.0\r\n"] {
            out.push_str(part);
        }
        self.headers.print(&mut out);
        finish(out, &self.body)
    }
}

/// The headers that place a message in its dialog and transaction, read on demand; every request
/// and response has them (the parser checks it).
pub trait DialogHeaders {
    fn headers(&self) -> &Headers;

    fn top_via(&self) -> Option<&Via> {
        self.headers().top_via()
    }

    fn from(&self) -> Option<&NameAddr> {
        self.headers().from()
    }

    fn to(&self) -> Option<&NameAddr> {
        self.headers().to()
    }

    fn call_id(&self) -> Option<&str> {
        self.headers().get(name::CALL_ID)
    }

    fn cseq(&self) -> Option<(u32, Method)> {
        self.headers().get(name::CSEQ).and_then(parse_cseq)
    }

    /// The URI of the first `Contact`.
    fn contact_uri(&self) -> Option<String> {
        contact_uri(self.headers())
    }
}

impl DialogHeaders for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl DialogHeaders for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl Response {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        let _ = write!(out, "SIP/2.0 {} {}\r\n", self.status, self.reason);
        self.headers.print(&mut out);
        finish(out, &self.body)
    }

    /// Builds a response to `request` (RFC 3261 §8.2.6): `Via`s, `From`, `To`, `Call-ID` and
    /// `CSeq` copied; `to_tag` added to `To` when it has none (not on 100 Trying).
    pub fn to_request(
        request: &Request,
        status: u16,
        reason: &str,
        to_tag: Option<&str>,
    ) -> Response {
        let mut headers = Headers::new();
        headers.copy_from(&request.headers, name::VIA);
        headers.copy_from(&request.headers, name::FROM);
        match (request.headers.get(name::TO), to_tag) {
            (Some(to), Some(tag)) if status > 100 => {
                let has_tag = NameAddr::parse(to).is_some_and(|t| t.tag().is_some());
                if has_tag {
                    headers.push(name::TO, to);
                } else {
                    headers.push(name::TO, format!("{to};tag={tag}"));
                }
            }
            (Some(to), _) => headers.push(name::TO, to),
            (None, _) => {}
        }
        headers.copy_from(&request.headers, name::CALL_ID);
        headers.copy_from(&request.headers, name::CSEQ);
        Response { status, reason: reason.to_string(), headers, body: Bytes::new() }
    }
}

fn contact_uri(headers: &Headers) -> Option<String> {
    let v = headers.get(name::CONTACT)?;
    let first = split_list(v).into_iter().next()?;
    NameAddr::parse(first).map(|c| c.uri)
}

fn finish(mut head: String, body: &[u8]) -> Vec<u8> {
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// What a stream transport finds at the start of its buffer (RFC 3261 §18.3: on streams the
/// message length is the head plus `Content-Length`, which is mandatory there).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes.
    Message(usize),
    /// CRLF keep-alives (RFC 5626 §3.5.1) of this many bytes: answer a double CRLF with one.
    KeepAlive(usize),
    /// Not enough bytes yet.
    Incomplete,
    /// The stream cannot be framed: close it, after answering with this status if possible.
    Invalid(u16, &'static str),
}

/// Finds the first message in a stream buffer.
pub fn frame(buf: &[u8], max: usize) -> Frame {
    let crlf = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if crlf > 0 {
        return Frame::KeepAlive(crlf);
    }
    let Some(head_end) = find_head_end(buf) else {
        return if buf.len() > max {
            Frame::Invalid(513, "message too large")
        } else {
            Frame::Incomplete
        };
    };
    let head = &buf[..head_end];
    let mut content_length = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii()).ok();
            match value.and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if content_length.is_none() => content_length = Some(n),
                _ => return Frame::Invalid(400, "bad or repeated Content-Length"),
            }
        }
    }
    let Some(len) = content_length else {
        return Frame::Invalid(400, "Content-Length is required on stream transports");
    };
    let total = head_end.saturating_add(len);
    if total > max {
        Frame::Invalid(513, "message too large")
    } else if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The standard reason phrase of a status code (RFC 3261 §21 and later RFCs, as the codec knows
/// them); a generic phrase of its class for codes without one.
pub fn reason_phrase(status: u16) -> &'static str {
    // Codes of later RFCs that ezk's table lacks: REFER's (RFC 3515) and SUBSCRIBE's (RFC 6665).
    match status {
        202 => return "Accepted",
        489 => return "Bad Event",
        _ => {}
    }
    let code = ezk_sip_types::StatusCode::from(status);
    code.text().unwrap_or(match code.kind() {
        ezk_sip_types::CodeKind::Provisional => "Session Progress",
        ezk_sip_types::CodeKind::Success => "OK",
        ezk_sip_types::CodeKind::Redirection => "Redirection",
        ezk_sip_types::CodeKind::RequestFailure => "Request Failure",
        ezk_sip_types::CodeKind::ServerFailure => "Server Failure",
        ezk_sip_types::CodeKind::GlobalFailure | ezk_sip_types::CodeKind::Custom => {
            "Global Failure"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_to_a_tel_uri_parses_and_a_broken_one_is_400() {
        let text = "INVITE tel:+1-415-555-0142;phone-context=+1 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bKtel1\r\nMax-Forwards: 70\r\n\
            From: <sip:bot@127.0.0.1>;tag=1\r\nTo: <tel:+1-415-555-0142>\r\nCall-ID: tel-1\r\n\
            CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(r)) = parse(text.as_bytes()) else { panic!("not parsed") };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "tel:+1-415-555-0142;phone-context=+1");
        for bad in ["INVITE tel: SIP/2.0", "INVITE tel:<+1> SIP/2.0", "INVITE tel:+1 SIP/3.0 x"] {
            let text = text.replacen("INVITE tel:+1-415-555-0142;phone-context=+1 SIP/2.0", bad, 1);
            assert!(parse(text.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn reason_phrases_are_the_standard_ones() {
        let phrase = reason_phrase;
        assert_eq!(phrase(403), "Forbidden");
        assert_eq!(phrase(404), "Not Found");
        assert_eq!(phrase(407), "Proxy Authentication Required");
        assert_eq!(phrase(488), "Not Acceptable Here");
        assert_eq!(phrase(503), "Service Unavailable");
        assert_eq!(phrase(499), "Request Failure");
        assert_eq!(phrase(202), "Accepted", "REFER's answer (RFC 3515)");
    }

    const INVITE: &str = "INVITE sip:+14155550100@gw.example;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+14155550100@gw.example>\r\n\
From: \"Alice\" <sip:+14155551234@carrier.example>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.carrier.example\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@203.0.113.9:5060>\r\n\
X-Foo: bar\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn refusal(text: &str) -> ParseError {
        match parse(text.as_bytes()) {
            Err(e) => e,
            Ok(m) => panic!("expected a refusal, got {m:?}"),
        }
    }

    #[test]
    fn the_call_id_scan_finds_what_the_parser_reads() {
        let scan = |text: &str| scan_call_id(text.as_bytes()).map(|c| c.to_vec());
        let id = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(scan(INVITE), id("a84b4c76e66710@pc33.carrier.example"));
        assert_eq!(
            scan(INVITE),
            request(INVITE).call_id().map(|c| c.as_bytes().to_vec()),
            "the same value as the parser's"
        );
        let compact = INVITE.replace("Call-ID: ", "i:  ");
        assert_eq!(scan(&compact), id("a84b4c76e66710@pc33.carrier.example"));
        let lower = INVITE.replace("Call-ID:", "call-id :");
        assert_eq!(scan(&lower), id("a84b4c76e66710@pc33.carrier.example"));
        // Only the head counts: a Call-ID line in the body is not the message's.
        let none = INVITE.replace("Call-ID: a84b4c76e66710@pc33.carrier.example\r\n", "");
        let in_body = format!("{none}i: not-this-one\r\n");
        assert_eq!(scan(&in_body), None);
        // A continuation line without a colon does not stop the scan.
        let folded = INVITE.replace("To: <sip:", "To:\r\n <sip:");
        assert!(folded.find("\r\n <sip:") < folded.find("Call-ID"));
        assert_eq!(scan(&folded), id("a84b4c76e66710@pc33.carrier.example"));
        assert_eq!(scan("garbage"), None);
        assert_eq!(scan(""), None);
    }

    #[test]
    fn the_top_via_follows_every_change_of_the_via_headers() {
        let mut r = request(INVITE);
        let branch = |r: &Request| r.top_via().and_then(|v| v.branch.clone());
        assert_eq!(branch(&r).as_deref(), Some("z9hG4bK776asdhds"));
        // A proxy's Via pushed on top (as the gateway does toward a peer) is the new top.
        r.headers.set(name::VIA, "SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKours");
        assert_eq!(branch(&r).as_deref(), Some("z9hG4bKours"));
        assert_eq!(r.top_via().map(|v| v.sent_by.as_str()), Some("10.0.0.1:5080"));
        r.headers.remove(name::VIA);
        assert_eq!(r.top_via(), None);
        r.headers.push(name::VIA, "SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKpushed");
        assert_eq!(branch(&r).as_deref(), Some("z9hG4bKpushed"));
        // A clone keeps what was parsed and equals the original; changing it leaves the
        // original alone.
        let mut copy = r.clone();
        assert_eq!(copy, r);
        copy.headers.set(name::VIA, "SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKcopy");
        assert_eq!(branch(&r).as_deref(), Some("z9hG4bKpushed"));
        assert_eq!(branch(&copy).as_deref(), Some("z9hG4bKcopy"));
    }

    #[test]
    fn from_and_to_follow_every_change_of_their_headers() {
        let mut r = request(INVITE);
        let tag = |a: Option<&NameAddr>| a.and_then(|a| a.tag().map(str::to_string));
        let from_tag = tag(r.from()).expect("the INVITE's From has a tag");
        assert_eq!(tag(r.to()), None);
        // The gateway answers with its To tag, and rewrites From toward the other leg.
        r.headers.set(name::TO, "<sip:+14155550100@gw.example>;tag=ours");
        assert_eq!(tag(r.to()).as_deref(), Some("ours"));
        assert_eq!(tag(r.from()), Some(from_tag), "From untouched");
        r.headers.set(name::FROM, "\"Alice\" <sip:alice@a.example>;tag=new");
        assert_eq!(r.from().map(|f| f.uri.as_str()), Some("sip:alice@a.example"));
        assert_eq!(r.from().and_then(|f| f.display.as_deref()), Some("Alice"));
        r.headers.remove(name::TO);
        assert_eq!(r.to(), None);
        r.headers.push(name::TO, "<sip:bob@b.example>");
        assert_eq!(r.to().map(|t| t.uri.as_str()), Some("sip:bob@b.example"));
        let mut copy = r.clone();
        copy.headers.set(name::TO, "<sip:carol@c.example>");
        assert_eq!(r.to().map(|t| t.uri.as_str()), Some("sip:bob@b.example"));
        assert_eq!(copy.to().map(|t| t.uri.as_str()), Some("sip:carol@c.example"));
    }

    #[test]
    fn a_carrier_invite_parses_with_its_headers_and_body() {
        let r = request(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "sip:+14155550100@gw.example;user=phone");
        assert_eq!(r.call_id(), Some("a84b4c76e66710@pc33.carrier.example"));
        assert_eq!(r.cseq(), Some((314159, Method::Invite)));
        assert_eq!(r.max_forwards(), Some(70));
        assert_eq!(
            r.from().and_then(|f| f.tag().map(str::to_string)).as_deref(),
            Some("1928301774")
        );
        assert_eq!(r.headers.get("x-foo"), Some("bar"));
        assert_eq!(&r.body[..], b"v=0\n");
        let via = r.top_via().expect("via");
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.sent_by, "203.0.113.9:5060");
        assert_eq!(via.rport, Some(None));
        assert_eq!(r.contact_uri().as_deref(), Some("sip:alice@203.0.113.9:5060"));
    }

    #[test]
    fn printing_and_parsing_again_gives_the_same_request() {
        let r = request(INVITE);
        let again = request(std::str::from_utf8(&r.to_bytes()).expect("utf8"));
        assert_eq!(r, again);
    }

    #[test]
    fn compact_header_names_are_read_in_their_long_form() {
        let text = "OPTIONS sip:gw.example SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nf: <sip:a@b>;tag=1\r\nt: <sip:gw.example>\r\ni: abc\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        let r = request(text);
        assert_eq!(r.call_id(), Some("abc"));
        assert!(r.top_via().is_some());
    }

    #[test]
    fn a_request_missing_call_id_or_cseq_is_400_and_answerable() {
        let no_call_id = INVITE.replace("Call-ID: a84b4c76e66710@pc33.carrier.example\r\n", "");
        let e = refusal(&no_call_id);
        assert_eq!(e.status, 400);
        assert!(e.partial.is_some(), "a Via is there: the request can be answered");
        let no_cseq = INVITE.replace("CSeq: 314159 INVITE\r\n", "");
        assert_eq!(refusal(&no_cseq).status, 400);
    }

    #[test]
    fn two_call_ids_a_cseq_of_another_method_or_a_bad_max_forwards_are_400() {
        let two = INVITE.replace("Call-ID:", "Call-ID: x\r\nCall-ID:");
        assert_eq!(refusal(&two).detail, "exactly one Call-ID is required");
        let other = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
        assert_eq!(refusal(&other).detail, "CSeq method differs from the request method");
        let mf = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 300");
        assert_eq!(refusal(&mf).detail, "Max-Forwards is not 0-255");
    }

    #[test]
    fn a_body_shorter_than_content_length_is_400_and_extra_bytes_are_dropped() {
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        assert_eq!(refusal(&short).detail, "body shorter than Content-Length");
        let longer = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        assert_eq!(&request(&longer).body[..], b"v=");
    }

    #[test]
    fn another_sip_version_is_505_and_garbage_is_400() {
        let v3 = INVITE.replace("user=phone SIP/2.0", "user=phone SIP/3.0");
        assert_eq!(refusal(&v3).status, 505);
        assert_eq!(refusal("hello there\r\n\r\n").status, 400);
        assert_eq!(refusal("").status, 400);
        assert!(refusal("\u{0}\u{1}\u{2}").partial.is_none());
    }

    #[test]
    fn a_message_over_the_size_limit_is_513() {
        let big = format!("{INVITE}{}", "a".repeat(MAX_MESSAGE_SIZE));
        assert_eq!(refusal(&big).status, 513);
    }

    #[test]
    fn responses_built_for_a_request_copy_the_dialog_headers_and_add_the_tag() {
        let r = request(INVITE);
        let resp = Response::to_request(&r, 486, "Busy Here", Some("gw1"));
        let text = String::from_utf8(resp.to_bytes()).expect("utf8");
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\n"), "{text}");
        assert!(text.contains("To: <sip:+14155550100@gw.example>;tag=gw1\r\n"), "{text}");
        assert!(text.contains("Call-ID: a84b4c76e66710@pc33.carrier.example\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        match parse(text.as_bytes()) {
            Ok(Message::Response(p)) => assert_eq!(p.status, 486),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_framing_uses_content_length() {
        let msg = INVITE.as_bytes();
        assert_eq!(frame(msg, MAX_MESSAGE_SIZE), Frame::Message(msg.len()));
        assert_eq!(frame(&msg[..msg.len() - 1], MAX_MESSAGE_SIZE), Frame::Incomplete);
        assert_eq!(frame(&msg[..20], MAX_MESSAGE_SIZE), Frame::Incomplete);
        let mut two = msg.to_vec();
        two.extend_from_slice(msg);
        assert_eq!(frame(&two, MAX_MESSAGE_SIZE), Frame::Message(msg.len()));
        assert_eq!(frame(b"\r\n\r\nINVITE", MAX_MESSAGE_SIZE), Frame::KeepAlive(4));
        let no_len = INVITE.replace("Content-Length: 4\r\n", "");
        assert!(matches!(frame(no_len.as_bytes(), MAX_MESSAGE_SIZE), Frame::Invalid(400, _)));
        assert!(matches!(frame(msg, 100), Frame::Invalid(513, _)));
    }

    #[test]
    fn name_addr_reads_display_names_uris_and_tags() {
        let n =
            NameAddr::parse("\"Bob, the \\\"boss\\\"\" <sip:bob@b.example;transport=tcp>;tag=xyz")
                .expect("parses");
        assert_eq!(n.uri, "sip:bob@b.example;transport=tcp");
        assert_eq!(n.tag(), Some("xyz"));
        let bare = NameAddr::parse("sip:bob@b.example;tag=1").expect("parses");
        assert_eq!(bare.uri, "sip:bob@b.example");
        assert_eq!(bare.tag(), Some("1"));
        let tel = NameAddr::parse("<tel:+14155550100>;tag=2").expect("parses");
        assert_eq!(tel.uri, "tel:+14155550100");
        assert!(NameAddr::parse("<sip:a@b").is_none());
    }

    #[test]
    fn via_parameters_are_read_as_written() {
        let via = |v: &str| Via::parse(v).expect("parses");
        // A Via's parameters are tokens: `%` is no escape (RFC 3261 §25.1), even when what
        // would follow it is not UTF-8.
        assert_eq!(via("SIP/2.0/UDP h;branch=z9hG4bK%66").branch.as_deref(), Some("z9hG4bK%66"));
        assert_eq!(via("SIP/2.0/UDP h;branch=z9hG4bK%ff").branch.as_deref(), Some("z9hG4bK%ff"));
        // Names compare case-insensitively (RFC 3261 §7.3.1); whitespace around `;` and `=`.
        let odd = via("SIP/2.0/TCP h:5070 ; BRANCH = z9hG4bKx ; Received=192.0.2.1 ;RPORT=5071");
        assert_eq!(odd.branch.as_deref(), Some("z9hG4bKx"));
        assert_eq!(odd.received.as_deref(), Some("192.0.2.1"));
        assert_eq!(odd.rport, Some(Some(5071)));
        assert_eq!(odd.sent_by, "h:5070");
        // A `;` inside a quoted value does not end it.
        let quoted = via("SIP/2.0/UDP [2001:db8::1]:5060;x=\"a;b\";branch=z9hG4bKq");
        assert_eq!(
            (quoted.host.as_str(), quoted.branch.as_deref()),
            ("[2001:db8::1]", Some("z9hG4bKq"))
        );
        assert_eq!(via("SIP/2.0/UDP h").branch, None);
    }

    #[test]
    fn folded_header_values_are_one_line() {
        let folded = INVITE
            .replace("X-Foo: bar", "X-Foo: bar,\r\n\t baz  \r\n  qux")
            .replace("CSeq: 314159 INVITE", "CSeq: 314159\r\n INVITE");
        let r = request(&folded);
        assert_eq!(r.headers.get("X-Foo"), Some("bar, baz qux"));
        assert_eq!(r.cseq(), Some((314159, Method::Invite)));
        let printed = String::from_utf8(r.to_bytes()).expect("utf8");
        assert!(printed.contains("X-Foo: bar, baz qux\r\n"), "{printed}");
    }

    #[test]
    fn quoted_display_names_are_unescaped_and_escaped_again() {
        let read = |v: &str| NameAddr::parse(v).and_then(|n| n.display);
        assert_eq!(read("\"J Rosenberg \\\\\\\"\" <sip:j@a>").as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(
            read("\"Quoted string \\\"\\\"\" <sip:j@a>").as_deref(),
            Some("Quoted string \"\"")
        );
        assert_eq!(read("caller<sip:c@a>").as_deref(), Some("caller"));
        assert_eq!(read("\"\" <sip:c@a>"), None);
        // Whatever a display name holds prints as a quoted string that reads back the same
        // (control characters as quoted-pairs).
        for display in
            ["J Rosenberg \\\"", "BEL:\u{7} NUL:\u{0} DEL:\u{7f}", "Bob, the \"boss\"", "tab\there"]
        {
            let addr = NameAddr {
                display: Some(display.to_string()),
                uri: "sip:a@b".into(),
                params: vec![],
            };
            let printed = addr.to_header();
            assert_eq!(NameAddr::parse(&printed), Some(addr), "{printed:?}");
        }
    }

    #[test]
    fn list_values_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_list("\"a, b\" <sip:x@y>, <sip:z@w;a=1,2>"),
            vec!["\"a, b\" <sip:x@y>", "<sip:z@w;a=1,2>"]
        );
    }

    #[test]
    fn sip_uris_give_host_port_user_and_transport() {
        let u = SipUri::parse("sip:support@agents.voice.svc:5070;transport=TCP").expect("parses");
        assert_eq!(u.user.as_deref(), Some("support"));
        assert_eq!(u.host, "agents.voice.svc");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport.as_deref(), Some("tcp"));
        let v6 = SipUri::parse("sips:[2001:db8::5]:5071").expect("parses");
        assert_eq!(v6.host, "[2001:db8::5]");
        assert!(v6.sips);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
            let _ = frame(&bytes, MAX_MESSAGE_SIZE);
        }

        #[test]
        fn parse_never_panics_on_mutated_invites(pos in 0usize..INVITE.len(), byte in proptest::prelude::any::<u8>()) {
            let mut bytes = INVITE.as_bytes().to_vec();
            bytes[pos] = byte;
            if let Ok(Message::Request(r)) = parse(&bytes) {
                // Whatever parsed prints and parses again.
                let _ = parse(&r.to_bytes());
            }
        }
    }
}

#[cfg(test)]
mod rfc4475_tests;
