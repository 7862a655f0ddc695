//! The SDP facade: the only module that touches `ezk-sdp-types`.
//!
//! Takes an SDP body (RFC 8866) from an offer or an answer (RFC 3264) received on one call leg and
//! gives an owned [`Sdp`] that the call layer (`call::inbound`) and the codec policy
//! (`media::codec`) read and rewrite before it is printed toward the other leg with
//! [`Sdp::to_bytes`]. Pure: no sockets, no clock.
//!
//! What [`Sdp::parse`] guarantees on success, on top of the crate's parser (its weak spots are
//! covered by our own checks, see below):
//! - the body is at most [`MAX_SDP_BYTES`], UTF-8, starts with `v=0`, and every line is
//!   `<type>=<value>` (CRLF or LF line ends, trailing blanks ignored; RFC 8866 §5);
//! - there is an `m=audio` stream over RTP/AVP or RTP/AVPF ([`Sdp::audio`], the first one; with
//!   [`Sdp::parse_srtp`], RTP/SAVP and RTP/SAVPF too) and, unless
//!   its port is 0, it has a connection address (`c=`, media or session level, RFC 8866 §5.7) that
//!   is an IP address, not a host name;
//! - RTP media lines list payload type numbers 0..=127 (RFC 3551 §3, RFC 8866 §5.14).
//!
//! Errors carry their SIP answer ([`SdpError::status_code`]): 400 for a malformed body, 488 when
//! the body is fine but has no audio stream the relay can carry.
//!
//! `a=crypto` lines (SDES, RFC 4568) never reach the crate: it overflows on some key lifetimes and
//! its types print keys in `Debug`. They are kept apart per stream, read by `media::sdes` when
//! asked ([`Sdp::audio_crypto`]), and replaced by ours or removed when the description is
//! rewritten for the other leg ([`AudioSecurity`]).
//!
//! Media streams the crate cannot model (`m=image` for T.38 fax, `m=message`, non-numeric formats
//! such as `webrtc-datachannel`) are kept as raw lines, printed as they came, and rejected (port 0,
//! RFC 3264 §6) by [`Sdp::rewrite_for_relay`], like every stream other than the relayed audio.
//!
//! Known losses of the crate's printer, harmless for a B2BUA: `i=`, `u=`, `e=`, `p=`, `r=`, `z=`,
//! `k=` lines are dropped; attributes come out in the crate's order (known ones first, then the
//! others such as `a=ptime` in their original order); a direction attribute is written in every
//! media description (`a=sendrecv` when there was none, which is the default anyway; a
//! session-level direction moves into the media descriptions it applied to).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::refusal::RefusalRule;
use crate::media::sdes::{Crypto, CryptoRefusal};
use bytes::Bytes;
use ezk_sdp_types::{
    Connection, Media, MediaDescription, MediaType, Origin, ParseSessionDescriptionError, Rtcp,
    RtcpFeedbackPt, SessionDescription, TaggedAddress, TransportProtocol,
};

/// Why the connection address of a carrier's SDP is refused (issue 15): the relay would send
/// the call's audio there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// A multicast group: the call's audio would go to everyone in it.
    Multicast,
    /// `0.0.0.0` (or `::`) in an initial offer, or in an answer whose stream receives media.
    /// In a re-offer it means hold (RFC 3264 §8.4, the RFC 2543 way) and is taken; an initial
    /// offer has nothing to hold; an answer that says `sendonly` or `inactive` needs no
    /// address, one that receives does.
    Unspecified,
    /// The gateway itself: the relay would loop audio into its own ports (or its SIP port).
    OwnAddress,
}

impl ConnectionRefusal {
    /// The rule's name, in the `Warning` of a 488 and in `trunkline_inbound_refusals_total`.
    pub fn rule(self) -> RefusalRule {
        match self {
            ConnectionRefusal::Multicast => RefusalRule::MulticastMediaAddress,
            ConnectionRefusal::Unspecified => RefusalRule::UnspecifiedMediaAddress,
            ConnectionRefusal::OwnAddress => RefusalRule::OwnMediaAddress,
        }
    }

    /// What is wrong, in words (the `Warning` text, logs, the call's hang-up reason).
    pub fn text(self) -> &'static str {
        match self {
            ConnectionRefusal::Multicast => "the SDP c= address is a multicast group",
            ConnectionRefusal::Unspecified => "the SDP c= address is unspecified (0.0.0.0)",
            ConnectionRefusal::OwnAddress => "the SDP c= address and port are the gateway's own",
        }
    }
}

/// The gateway's own media targets, for the `c=` rules: a relay sending there would loop into
/// itself. An IP of a listener or the public address; on a loopback IP (which a carrier on the
/// same host shares: development, tests) only together with a port of the RTP range or of a
/// listener. Pure data, so that the sans-IO call machine can apply the rules too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    /// The listeners' IPs and `--public-address`.
    pub ips: Vec<IpAddr>,
    /// `--rtp-ports`, first and last.
    pub rtp_ports: Option<(u16, u16)>,
    /// The listeners' ports.
    pub sip_ports: Vec<u16>,
}

impl OwnAddresses {
    /// Whether `target` (IP and port of an SDP's audio) is the gateway's own.
    pub fn contains(&self, target: SocketAddr) -> bool {
        if !self.ips.contains(&target.ip()) {
            return false;
        }
        let port = target.port();
        let own_port = self.rtp_ports.is_some_and(|(low, high)| (low..=high).contains(&port))
            || self.sip_ports.contains(&port);
        !target.ip().is_loopback() || own_port
    }
}

impl Sdp {
    /// The refusal of this offer's audio connection address, if any; `own` says whether an
    /// address (IP and port of the `m=` line) is the gateway's own. `initial`: an initial
    /// offer, where `0.0.0.0` is refused (in a re-offer it is hold). A rejected stream (port 0)
    /// is never refused.
    pub fn refused_connection(
        &self,
        initial: bool,
        own: impl Fn(SocketAddr) -> bool,
    ) -> Option<ConnectionRefusal> {
        self.refused_address(initial, own)
    }

    /// The refusal of this answer's audio connection address, if any (`own` as for
    /// [`Sdp::refused_connection`]): multicast and own addresses are refused; `0.0.0.0` only
    /// when the stream receives media (`sendrecv`, `recvonly`): an answerer that only sends or
    /// is inactive needs no address, one that receives needs one.
    pub fn refused_answer_connection(
        &self,
        own: impl Fn(SocketAddr) -> bool,
    ) -> Option<ConnectionRefusal> {
        let receives = matches!(self.direction(), Direction::SendRecv | Direction::RecvOnly);
        self.refused_address(receives, own)
    }

    fn refused_address(
        &self,
        unspecified_refused: bool,
        own: impl Fn(SocketAddr) -> bool,
    ) -> Option<ConnectionRefusal> {
        let audio = self.audio()?;
        let ip = audio.connection()?;
        if audio.port() == 0 {
            return None;
        }
        if ip.is_multicast() {
            Some(ConnectionRefusal::Multicast)
        } else if ip.is_unspecified() {
            unspecified_refused.then_some(ConnectionRefusal::Unspecified)
        } else if own(SocketAddr::new(ip, audio.port())) {
            Some(ConnectionRefusal::OwnAddress)
        } else {
            None
        }
    }
}

/// Largest SDP body accepted. Carrier offers are well under 2 KiB; a bound keeps a hostile body
/// from costing more than a few microseconds.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// The `o=` username of every description we send (RFC 8866 §5.2).
const ORIGIN_USERNAME: &str = "trunkline";

/// Longest parser message kept in an [`SdpError`]: the message quotes the input.
const MAX_REASON_CHARS: usize = 160;

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body of {size} bytes is larger than {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("SDP body is not UTF-8")]
    NotUtf8,
    #[error("SDP body does not start with v=0")]
    MissingVersion,
    #[error("SDP line {line} is not <type>=<value>")]
    MalformedLine { line: usize },
    #[error("SDP m= line {line} is malformed")]
    MalformedMediaLine { line: usize },
    #[error("SDP c= line {line} is malformed")]
    MalformedConnection { line: usize },
    #[error("SDP has no {field}= line")]
    MissingField { field: char },
    #[error("SDP does not parse: {reason}")]
    Syntax { reason: String },
    #[error("SDP has no audio stream")]
    NoAudio,
    #[error("the SDP audio stream uses {proto}, not RTP/AVP")]
    UnsupportedAudioTransport { proto: String },
    #[error("the SDP audio stream has no connection address (c=)")]
    MissingConnection,
    #[error("the SDP audio connection address {address:?} is not an IP address")]
    ConnectionNotAnAddress { address: String },
}

impl SdpError {
    /// The SIP answer to an offer with this SDP: 400 when the body is malformed, 488 Not
    /// Acceptable Here when it is well formed but has no audio stream the relay can carry.
    pub fn status_code(&self) -> u16 {
        match self {
            SdpError::NoAudio
            | SdpError::UnsupportedAudioTransport { .. }
            | SdpError::ConnectionNotAnAddress { .. } => 488,
            _ => 400,
        }
    }
}

/// The direction of a media stream (RFC 8866 §6.7, RFC 3264 §5.1, §8.4), from the point of view
/// of the side that wrote the description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_ezk(d: ezk_sdp_types::Direction) -> Direction {
        match d {
            ezk_sdp_types::Direction::SendRecv => Direction::SendRecv,
            ezk_sdp_types::Direction::SendOnly => Direction::SendOnly,
            ezk_sdp_types::Direction::RecvOnly => Direction::RecvOnly,
            ezk_sdp_types::Direction::Inactive => Direction::Inactive,
        }
    }
}

/// An `a=rtpmap` entry (RFC 8866 §6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpMapping<'a> {
    /// Encoding name as written (compare case-insensitively).
    pub encoding: &'a str,
    pub clock_rate: u32,
    /// Encoding parameters; for audio the channel count.
    pub channels: Option<&'a str>,
}

/// A parsed session description, owned.
#[derive(Clone, Debug)]
pub struct Sdp {
    /// The session-level part; its `media_descriptions` is always empty (they are in `sections`).
    session: SessionDescription,
    /// Every media stream in order.
    sections: Vec<Section>,
    /// Index in `sections` of the audio stream (the first `m=audio` over RTP/AVP or RTP/AVPF,
    /// or RTP/SAVP or RTP/SAVPF when parsed with [`Sdp::parse_srtp`]).
    audio: usize,
    /// The `a=crypto` values of each section, in `sections`' order: taken out of what the crate
    /// parses (it panics on some lifetimes and would print keys in `Debug`), read with
    /// [`Crypto::parse`] on demand, printed after the section's other lines.
    crypto: Vec<CryptoLines>,
}

/// `a=crypto` values (RFC 4568) as written. `Debug` shows how many, never the keys.
#[derive(Clone, Default)]
struct CryptoLines(Vec<String>);

impl fmt::Debug for CryptoLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CryptoLines(<{} redacted>)", self.0.len())
    }
}

/// What the audio stream says about SRTP toward the leg it is printed for
/// ([`Sdp::rewrite_for_relay`]).
#[derive(Clone, Copy, Debug)]
pub enum AudioSecurity<'a> {
    /// RTP/AVP (or RTP/AVPF), no `a=crypto`.
    Plain,
    /// `a=crypto` lines with our keys (an offer's choices, or an answer's one), under
    /// RTP/SAVP (`savp`) or under RTP/AVP (best-effort SRTP: a peer that does not know SDES
    /// ignores the lines and answers plain).
    Sdes { savp: bool, crypto: &'a [Crypto] },
}

#[derive(Clone, Debug)]
enum Section {
    Parsed(Box<MediaDescription>),
    /// A stream the crate cannot model, kept as its lines (the `m=` line first).
    Raw(RawSection),
}

#[derive(Clone, Debug)]
struct RawSection {
    /// The tokens of the `m=` line: media, port, proto, formats.
    media: String,
    proto: String,
    formats: Vec<String>,
    lines: Vec<String>,
}

impl RawSection {
    /// RFC 3264 §6: a rejected stream keeps its `m=` line, with port 0; nothing else is needed.
    fn reject(&mut self) {
        let mut line = format!("m={} 0 {}", self.media, self.proto);
        for f in &self.formats {
            line.push(' ');
            line.push_str(f);
        }
        self.lines = vec![line];
    }
}

/// A view of the audio stream.
#[derive(Clone, Copy, Debug)]
pub struct Audio<'a> {
    media: &'a MediaDescription,
    session: &'a SessionDescription,
}

impl<'a> Audio<'a> {
    /// The `m=` port; 0 means the stream is rejected or disabled (RFC 3264 §5.1, §6).
    pub fn port(&self) -> u16 {
        self.media.media.port
    }

    /// Payload type numbers of the `m=` line, in the writer's order of preference.
    pub fn formats(&self) -> &'a [u8] {
        &self.media.media.fmts
    }

    /// The `a=rtpmap` of a payload type, if any (static types often have none).
    pub fn rtpmap(&self, payload_type: u8) -> Option<RtpMapping<'a>> {
        self.media.rtpmap.iter().find(|m| m.payload == payload_type).map(|m| RtpMapping {
            encoding: m.encoding.as_str(),
            clock_rate: m.clock_rate,
            channels: m.params.as_ref().map(|p| p.as_str()),
        })
    }

    /// The `a=fmtp` parameters of a payload type, if any.
    pub fn fmtp(&self, payload_type: u8) -> Option<&'a str> {
        self.media.fmtp.iter().find(|f| f.format == payload_type).map(|f| f.params.as_str())
    }

    pub fn direction(&self) -> Direction {
        Direction::from_ezk(self.media.direction)
    }

    /// The value of a media-level attribute the crate does not model (`ptime`, `maxptime`,
    /// `silenceSupp`...); `Some("")` for a flag.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.media
            .attributes
            .iter()
            .find(|a| a.name.as_str() == name)
            .map(|a| a.value.as_ref().map_or("", |v| v.as_str()))
    }

    /// `a=ptime` in milliseconds (RFC 8866 §6.4).
    pub fn ptime(&self) -> Option<u32> {
        self.attribute("ptime").and_then(|v| v.trim().parse().ok())
    }

    /// `a=maxptime` in milliseconds (RFC 8866 §6.5).
    pub fn maxptime(&self) -> Option<u32> {
        self.attribute("maxptime").and_then(|v| v.trim().parse().ok())
    }

    /// The connection address that applies to this stream (media level, else session level).
    pub fn connection(&self) -> Option<IpAddr> {
        let c = self.media.connection.as_ref().or(self.session.connection.as_ref())?;
        match c.address {
            TaggedAddress::IP4(ip) => Some(IpAddr::V4(ip)),
            TaggedAddress::IP6(ip) => Some(IpAddr::V6(ip)),
            TaggedAddress::IP4FQDN(_) | TaggedAddress::IP6FQDN(_) => None,
        }
    }
}

/// An address the parser took as a host name of no characters.
fn has_empty_host(address: &TaggedAddress) -> bool {
    matches!(address, TaggedAddress::IP4FQDN(host) | TaggedAddress::IP6FQDN(host) if host.is_empty())
}

impl Sdp {
    /// Parses an SDP body; see the module docs for what success guarantees. A body that would
    /// not parse again once printed is refused: ezk-sdp-types accepts a few lines it prints
    /// differently (an empty address, `a=group:x=-`), and the gateway sends on what it prints
    /// (found by fuzz/fuzz_targets/sdp_codec.rs).
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        Sdp::parse_as(body, false)
    }

    /// As [`Sdp::parse`], and the audio stream may be SRTP (RTP/SAVP, RTP/SAVPF, RFC 3711 §12):
    /// for a leg whose policy allows SRTP, which then reads [`Sdp::audio_crypto`].
    pub fn parse_srtp(body: &[u8]) -> Result<Sdp, SdpError> {
        Sdp::parse_as(body, true)
    }

    fn parse_as(body: &[u8], srtp: bool) -> Result<Sdp, SdpError> {
        let sdp = Sdp::parse_once(body, srtp)?;
        let printed = sdp.to_bytes();
        // A description printed as it came, line for line, parses again as it did: the
        // second parse (a fifth of a call's SDP work) is only for those printed differently.
        if !prints_as_it_came(body, &printed) && Sdp::parse_once(&printed, srtp).is_err() {
            return Err(SdpError::Syntax { reason: "a line does not survive printing".into() });
        }
        Ok(sdp)
    }

    fn parse_once(body: &[u8], srtp: bool) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge { size: body.len(), max: MAX_SDP_BYTES });
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let lines = split_lines(text)?;
        if lines.first().map(|l| l.text) != Some("v=0") {
            return Err(SdpError::MissingVersion);
        }

        // Session lines, then one group of lines per m= line.
        let mut session_lines: Vec<Line<'_>> = Vec::new();
        let mut groups: Vec<Vec<Line<'_>>> = Vec::new();
        for line in lines {
            if line.text.starts_with("m=") {
                groups.push(vec![line]);
            } else if let Some(group) = groups.last_mut() {
                group.push(line);
            } else {
                session_lines.push(line);
            }
        }
        let session_direction =
            session_lines.iter().rev().find(|l| is_direction_line(l.text)).map(|l| l.text);

        // What the crate parses: the session lines and the streams it can model.
        // `a=crypto` lines are kept apart (a session-level one means nothing, RFC 4568 §9.1:
        // dropped).
        let mut modelled: Vec<&str> = Vec::new();
        let mut kinds: Vec<Option<RawSection>> = Vec::with_capacity(groups.len());
        let mut crypto = Vec::with_capacity(groups.len());
        for line in &session_lines {
            check_line(line)?;
            if crypto_value(line.text).is_none() {
                modelled.push(line.text);
            }
        }
        for group in &groups {
            let Some(m_line) = group.first() else { continue };
            if media_line_is_modelled(m_line)? {
                let mut lines = CryptoLines::default();
                for line in group {
                    check_line(line)?;
                    match crypto_value(line.text) {
                        Some(value) => lines.0.push(value.to_owned()),
                        None => modelled.push(line.text),
                    }
                }
                kinds.push(None);
                crypto.push(lines);
            } else {
                kinds.push(Some(raw_section(group, session_direction)));
                crypto.push(CryptoLines::default());
            }
        }

        let src = modelled.join("\r\n").into();
        let mut session = SessionDescription::parse(&src).map_err(from_ezk_error)?;
        let mut parsed = std::mem::take(&mut session.media_descriptions).into_iter();
        let mut sections = Vec::with_capacity(kinds.len());
        for kind in kinds {
            match kind {
                Some(raw) => sections.push(Section::Raw(raw)),
                None => match parsed.next() {
                    Some(md) => sections.push(Section::Parsed(Box::new(md))),
                    None => {
                        return Err(SdpError::Syntax { reason: "media description lost".into() });
                    }
                },
            }
        }

        // ezk-sdp-types reads `IN IP4 ` followed by no host character (`IN IP4 ,1.2.3.4`) as an
        // empty host name, which prints as a line that no longer parses: refuse it here, as
        // the malformed line it is (found by fuzz/fuzz_targets/sdp_codec.rs).
        let mut addresses = vec![(&session.origin.address, 'o')];
        addresses.extend(session.connection.iter().map(|c| (&c.address, 'c')));
        for section in &sections {
            if let Section::Parsed(md) = section {
                addresses.extend(md.connection.iter().map(|c| (&c.address, 'c')));
            }
        }
        if let Some((_, field)) = addresses.into_iter().find(|(address, _)| has_empty_host(address))
        {
            return Err(SdpError::Syntax { reason: format!("an {field}= line has no address") });
        }

        let audio = find_audio(&sections, srtp)?;
        let sdp = Sdp { session, sections, audio, crypto };
        if let Some(a) = sdp.audio()
            && a.port() != 0
        {
            let c = a
                .media
                .connection
                .as_ref()
                .or(sdp.session.connection.as_ref())
                .ok_or(SdpError::MissingConnection)?;
            if let TaggedAddress::IP4FQDN(host) | TaggedAddress::IP6FQDN(host) = &c.address {
                return Err(SdpError::ConnectionNotAnAddress { address: short(host.as_str()) });
            }
        }
        Ok(sdp)
    }

    /// Prints the description (CRLF line ends, RFC 8866 §5).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// The audio stream: the first `m=audio` over RTP/AVP or RTP/AVPF. Always there after
    /// [`Sdp::parse`]; the port may be 0 (rejected).
    pub fn audio(&self) -> Option<Audio<'_>> {
        match self.sections.get(self.audio) {
            Some(Section::Parsed(media)) => Some(Audio { media, session: &self.session }),
            _ => None,
        }
    }

    /// Whether the audio stream is SRTP (RTP/SAVP or RTP/SAVPF): only after [`Sdp::parse_srtp`].
    pub fn audio_is_srtp(&self) -> bool {
        self.audio().is_some_and(|a| {
            matches!(a.media.media.proto, TransportProtocol::RtpSavp | TransportProtocol::RtpSavpf)
        })
    }

    /// The audio stream's `a=crypto` lines, each read ([`Crypto::parse`]), in the writer's
    /// order of preference (RFC 4568 §7.1.1). Also under RTP/AVP (best-effort SRTP).
    pub fn audio_crypto(&self) -> Vec<Result<Crypto, CryptoRefusal>> {
        self.crypto
            .get(self.audio)
            .map(|lines| lines.0.iter().map(|v| Crypto::parse(v)).collect())
            .unwrap_or_default()
    }

    /// Direction of the audio stream. A legacy hold (RFC 3264 §8.4, `c=0.0.0.0`) keeps the
    /// attribute it came with; [`Sdp::audio_endpoint`] is `None` for it.
    pub fn direction(&self) -> Direction {
        self.audio().map_or(Direction::SendRecv, |a| a.direction())
    }

    /// Where the writer of this description wants to receive RTP: the audio `c=` and `m=` port.
    /// `None` when the stream is rejected (port 0) or on hold with an unspecified address
    /// (`0.0.0.0` or `::`): send nothing then.
    pub fn audio_endpoint(&self) -> Option<SocketAddr> {
        let audio = self.audio()?;
        let ip = audio.connection()?;
        if audio.port() == 0 || ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, audio.port()))
    }

    /// Rewrites the description for the other leg, with the relay in the media path:
    /// - `c=` (session level, added if missing, and the audio stream's if it has one) becomes
    ///   `address`, or stays unspecified when the writer put the stream on hold that way
    ///   (`c=0.0.0.0`, RFC 3264 §8.4) so that the hold reaches the other side;
    /// - the audio port becomes `rtp_port`, its `a=rtcp` (RFC 3605) `rtp_port + 1` (the relay's
    ///   pair) with our address if it had one; `a=rtcp-mux` is removed (the relay uses the pair);
    /// - ICE attributes are removed (they name the writer's addresses: topology hiding, and the
    ///   relay does not do ICE), and so is `a=group` (BUNDLE cannot survive rejected streams);
    /// - every other stream is rejected: port 0 and only its `m=` line (RFC 3264 §6);
    /// - direction, rtpmap, fmtp, ptime, maxptime, `b=` and the other attributes are kept;
    /// - `s=` becomes `-` and `o=` becomes this leg's origin (see [`LegOrigin`]).
    ///
    /// Filter codecs (`media::codec::filter_offer`) before: the origin version is decided here,
    /// from the content. Gives the description as printed (the origin compares prints, so it
    /// is printed here anyway: the caller need not print it again).
    pub fn rewrite_for_relay(
        &mut self,
        origin: &mut LegOrigin,
        address: IpAddr,
        rtp_port: u16,
        security: AudioSecurity<'_>,
    ) -> Vec<u8> {
        let on_hold =
            self.audio().and_then(|a| a.connection()).is_some_and(|ip| ip.is_unspecified());
        let media_address = match (on_hold, address) {
            (false, ip) => ip,
            (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let connection = || Connection { address: media_address.into(), ttl: None, num: None };

        let s = &mut self.session;
        s.name = "-".into();
        s.connection = Some(connection());
        s.group.clear();
        s.ice_lite = false;
        s.ice_options.options.clear();
        s.ice_ufrag = None;
        s.ice_pwd = None;

        for (i, section) in self.sections.iter_mut().enumerate() {
            match section {
                Section::Parsed(md) if i == self.audio => {
                    let (savp, ours) = match security {
                        AudioSecurity::Plain => (false, &[][..]),
                        AudioSecurity::Sdes { savp, crypto } => (savp, crypto),
                    };
                    let feedback = matches!(
                        md.media.proto,
                        TransportProtocol::RtpAvpf | TransportProtocol::RtpSavpf
                    );
                    md.media.proto = match (savp, feedback) {
                        (false, false) => TransportProtocol::RtpAvp,
                        (false, true) => TransportProtocol::RtpAvpf,
                        (true, false) => TransportProtocol::RtpSavp,
                        (true, true) => TransportProtocol::RtpSavpf,
                    };
                    if let Some(lines) = self.crypto.get_mut(i) {
                        lines.0 = ours.iter().map(Crypto::to_value).collect();
                    }
                    if md.media.port != 0 {
                        md.media.port = rtp_port;
                    }
                    md.media.ports_num = None;
                    if md.connection.is_some() {
                        md.connection = Some(connection());
                    }
                    md.rtcp = match (md.rtcp.take(), rtp_port.checked_add(1)) {
                        (Some(rtcp), Some(port)) => {
                            Some(Rtcp { port, address: rtcp.address.map(|_| media_address.into()) })
                        }
                        _ => None,
                    };
                    md.rtcp_mux = false;
                    md.ice_ufrag = None;
                    md.ice_pwd = None;
                    md.ice_candidates.clear();
                    md.ice_end_of_candidates = false;
                }
                Section::Parsed(md) => {
                    if let Some(lines) = self.crypto.get_mut(i) {
                        lines.0.clear();
                    }
                    let mut rejected = MediaDescription::rejected(md.media.media_type);
                    rejected.media.proto = md.media.proto.clone();
                    rejected.media.fmts = std::mem::take(&mut md.media.fmts);
                    **md = rejected;
                }
                Section::Raw(raw) => raw.reject(),
            }
        }
        origin.stamp(self, address)
    }

    /// Sets the audio `m=` formats (a subset of the current ones, in the order to offer them) and
    /// drops the rtpmap, fmtp and rtcp-fb lines of the others. For `media::codec`.
    pub(crate) fn set_audio_formats(&mut self, formats: &[u8]) {
        if let Some(Section::Parsed(md)) = self.sections.get_mut(self.audio) {
            md.media.fmts = formats.to_vec();
            md.rtpmap.retain(|m| formats.contains(&m.payload));
            md.fmtp.retain(|f| formats.contains(&f.format));
            md.rtcp_fb.retain(|fb| match fb.pt {
                RtcpFeedbackPt::Pt(pt) => formats.contains(&pt),
                RtcpFeedbackPt::Any => true,
            });
        }
    }

    fn set_origin(&mut self, session_id: u64, version: u64, address: IpAddr) {
        self.session.origin = Origin {
            username: ORIGIN_USERNAME.into(),
            session_id: session_id.to_string().into(),
            session_version: version.to_string().into(),
            address: address.into(),
        };
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The session part: `session.media_descriptions` is empty.
        write!(f, "{}", self.session)?;
        for (i, section) in self.sections.iter().enumerate() {
            match section {
                Section::Parsed(md) => {
                    write!(f, "{md}")?;
                    for value in self.crypto.get(i).map_or(&[][..], |c| c.0.as_slice()) {
                        write!(f, "a=crypto:{value}\r\n")?;
                    }
                }
                Section::Raw(raw) => {
                    for line in &raw.lines {
                        write!(f, "{line}\r\n")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Our `o=` line toward one leg (RFC 3264 §5, §8): the B2BUA is the offerer or answerer on each
/// leg, so each leg has its own session id and version. The version grows by one each time the
/// description sent on the leg changes, and stays when it does not (a session refresh re-INVITE
/// must repeat the same description with the same version, RFC 3264 §8). Kept by the call leg for
/// the whole call.
#[derive(Clone, Debug)]
pub struct LegOrigin {
    session_id: u64,
    version: u64,
    /// The last description stamped, as printed.
    last: Option<Vec<u8>>,
}

impl LegOrigin {
    /// A new origin; pass a random `session_id`. Its top bit is cleared, so that parsers that
    /// read it as a signed 64-bit number accept it.
    pub fn new(session_id: u64) -> LegOrigin {
        LegOrigin { session_id: session_id & (i64::MAX as u64), version: 1, last: None }
    }

    /// The version of the last description stamped (1 for the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the origin line, with the version moved on if the content changed; gives the print.
    fn stamp(&mut self, sdp: &mut Sdp, address: IpAddr) -> Vec<u8> {
        sdp.set_origin(self.session_id, self.version, address);
        let mut printed = sdp.to_bytes();
        if let Some(last) = &self.last
            && *last != printed
        {
            self.version = self.version.wrapping_add(1);
            sdp.set_origin(self.session_id, self.version, address);
            printed = sdp.to_bytes();
        }
        self.last = Some(printed.clone());
        printed
    }
}

/// One non-empty line of the body, with its 1-based number for error messages.
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    number: usize,
    text: &'a str,
}

/// Splits on LF, drops a CR and trailing blanks (which would otherwise become part of values:
/// the crate reads `a=sendonly ` as an unknown attribute), skips blank lines and checks the
/// `<type>=` shape of the rest (RFC 8866 §5).
fn split_lines(text: &str) -> Result<Vec<Line<'_>>, SdpError> {
    let mut lines = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.trim_end_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        let shaped = matches!(line.as_bytes(), [t, b'=', ..] if t.is_ascii_lowercase());
        if !shaped || line.contains(['\r', '\0']) {
            return Err(SdpError::MalformedLine { line: number });
        }
        lines.push(Line { number, text: line });
    }
    Ok(lines)
}

/// Whether `printed` has the lines of `body` (as [`split_lines`] reads them: line ends and
/// trailing blanks aside), the session's and each `m=` section's, in any order within each:
/// ezk-sdp-types prints a section's attributes in its own order (the direction first, then
/// `rtpmap`s, then `fmtp`s) and adds `a=sendrecv` where no direction was given. Then every
/// printed line is one the parser read in the same place, and the description parses again;
/// any other line is left to a second parse.
fn prints_as_it_came(body: &[u8], printed: &[u8]) -> bool {
    let (Some(came), Some(went)) = (sections_of(body), sections_of(printed)) else {
        return false;
    };
    came.len() == went.len()
        && came.iter().zip(&went).all(|(came, went)| {
            // A section without a direction is printed with `a=sendrecv` (its default).
            let added = usize::from(!came.contains(&SENDRECV) && went.contains(&SENDRECV));
            went.len() == came.len() + added
                && went.iter().filter(|&&l| added == 0 || l != SENDRECV).eq(came.iter())
        })
}

const SENDRECV: &str = "a=sendrecv";

/// The lines of a description by section (the session's, then one per `m=` line), each
/// section's sorted.
fn sections_of(bytes: &[u8]) -> Option<Vec<Vec<&str>>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut sections = vec![Vec::new()];
    for line in split_lines(text).ok()? {
        if line.text.starts_with("m=") {
            sections.push(Vec::new());
        }
        sections.last_mut()?.push(line.text);
    }
    for section in &mut sections {
        section.sort_unstable();
    }
    Some(sections)
}

/// Our checks of lines the crate reads too leniently for what we rely on.
fn check_line(line: &Line<'_>) -> Result<(), SdpError> {
    if let Some(value) = line.text.strip_prefix("c=")
        && !connection_is_well_formed(value)
    {
        return Err(SdpError::MalformedConnection { line: line.number });
    }
    Ok(())
}

/// `IN IP4 <address>[/ttl[/n]]` or `IN IP6 <address>[/n]` (RFC 8866 §5.7), single spaces and
/// nothing after (the crate ignores what follows the address, as in `1.2.3.4:5060`).
fn connection_is_well_formed(value: &str) -> bool {
    let mut parts = value.split(' ');
    let (Some("IN"), Some(addrtype), Some(address), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let mut pieces = address.split('/');
    let host = pieces.next().unwrap_or_default();
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let host_ok = !host.is_empty()
        && match addrtype {
            "IP4" => host.chars().all(host_char),
            "IP6" => host.chars().all(|c| host_char(c) || c == ':'),
            _ => false,
        };
    let suffixes: Vec<&str> = pieces.collect();
    let max_suffixes = if addrtype == "IP4" { 2 } else { 1 };
    host_ok
        && suffixes.len() <= max_suffixes
        && suffixes.iter().all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

fn is_direction_line(text: &str) -> bool {
    matches!(text, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive")
}

/// Checks an `m=` line (RFC 8866 §5.14) and tells whether the crate models it faithfully:
/// `Ok(false)` for a stream kept raw (unknown media type, non-numeric formats, a protocol the
/// crate would misread), an error when the line is malformed or is an RTP audio line the crate
/// cannot carry.
fn media_line_is_modelled(m_line: &Line<'_>) -> Result<bool, SdpError> {
    let malformed = || SdpError::MalformedMediaLine { line: m_line.number };
    let value = m_line.text.get(2..).unwrap_or_default();
    let tokens: Vec<&str> = value.split_ascii_whitespace().collect();
    let [media, port, proto, formats @ ..] = tokens.as_slice() else {
        return Err(malformed());
    };
    let mut port_parts = port.splitn(2, '/');
    let port_ok = port_parts.next().is_some_and(|p| p.parse::<u16>().is_ok())
        && port_parts.next().is_none_or(|n| n.parse::<u32>().is_ok());
    if !port_ok {
        return Err(malformed());
    }
    let rtp = proto.split('/').any(|p| p == "RTP");
    if rtp && !formats.iter().all(|f| f.parse::<u8>().is_ok_and(|pt| pt <= 127)) {
        return Err(malformed());
    }
    // The crate's reading, printed back, must be the line itself.
    // (The crate slices what it keeps out of `src`: `value` must point into it.)
    let src = Bytes::copy_from_slice(value.as_bytes());
    let modelled = std::str::from_utf8(&src).is_ok_and(|value| {
        Media::parse(&src, value).is_ok_and(|(rest, media)| {
            rest.trim().is_empty() && media.to_string() == tokens.join(" ")
        })
    });
    if !modelled && rtp && *media == "audio" {
        return Err(malformed());
    }
    Ok(modelled)
}

fn raw_section(group: &[Line<'_>], session_direction: Option<&str>) -> RawSection {
    let tokens: Vec<String> = group
        .first()
        .map(|m| m.text.get(2..).unwrap_or_default())
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    let mut tokens = tokens.into_iter();
    let media = tokens.next().unwrap_or_default();
    let _port = tokens.next();
    let proto = tokens.next().unwrap_or_default();
    let formats = tokens.collect();
    let mut lines: Vec<String> = group.iter().map(|l| l.text.to_owned()).collect();
    // The crate moves a session-level direction into each media description it parses; do the
    // same here so the raw stream keeps the direction it inherited.
    if let Some(direction) = session_direction
        && !group.iter().any(|l| is_direction_line(l.text))
    {
        lines.push(direction.to_owned());
    }
    RawSection { media, proto, formats, lines }
}

/// The value of an `a=crypto` line.
fn crypto_value(text: &str) -> Option<&str> {
    text.strip_prefix("a=crypto:")
}

/// The first `m=audio` over RTP/AVP or RTP/AVPF, or also RTP/SAVP or RTP/SAVPF (`srtp`).
fn find_audio(sections: &[Section], srtp: bool) -> Result<usize, SdpError> {
    let mut other_proto = None;
    for (i, section) in sections.iter().enumerate() {
        match section {
            Section::Parsed(md) if md.media.media_type == MediaType::Audio => {
                let usable = match md.media.proto {
                    TransportProtocol::RtpAvp | TransportProtocol::RtpAvpf => true,
                    TransportProtocol::RtpSavp | TransportProtocol::RtpSavpf => srtp,
                    _ => false,
                };
                if usable {
                    return Ok(i);
                }
                other_proto.get_or_insert_with(|| md.media.proto.to_string());
            }
            Section::Raw(raw) if raw.media == "audio" => {
                other_proto.get_or_insert_with(|| raw.proto.clone());
            }
            _ => {}
        }
    }
    Err(match other_proto {
        Some(proto) => SdpError::UnsupportedAudioTransport { proto: short(&proto) },
        None => SdpError::NoAudio,
    })
}

fn from_ezk_error(e: ParseSessionDescriptionError) -> SdpError {
    match e {
        ParseSessionDescriptionError::MissingOrigin => SdpError::MissingField { field: 'o' },
        ParseSessionDescriptionError::MissingName => SdpError::MissingField { field: 's' },
        ParseSessionDescriptionError::MissingTime => SdpError::MissingField { field: 't' },
        other => SdpError::Syntax { reason: short(&other.to_string()) },
    }
}

/// Input quoted in an error: no control characters, bounded length.
fn short(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::sdes::Suite;
    use proptest::prelude::*;

    /// Offers as carriers and PBXs send them (addresses from the documentation ranges).
    pub(crate) const TWILIO: &str = "v=0\r\n\
o=root 1586252525 1586252525 IN IP4 54.172.60.1\r\n\
s=Twilio Media Gateway\r\n\
c=IN IP4 54.172.60.1\r\n\
t=0 0\r\n\
m=audio 13398 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n";

    /// Sonus/Ribbon SBC: G.729 first, session name, a=maxptime.
    pub(crate) const SONUS: &str = "v=0\r\n\
o=Sonus_UAC 31377 19565 IN IP4 203.0.113.10\r\n\
s=SIP Media Capabilities\r\n\
c=IN IP4 203.0.113.20\r\n\
t=0 0\r\n\
m=audio 21086 RTP/AVP 18 0 101\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n\
a=ptime:20\r\n\
a=maxptime:20\r\n";

    /// Cisco CUBE: a session and a media c= line, b= lines, CN, a=rtcp with an address.
    pub(crate) const CISCO: &str = "v=0\r\n\
o=CiscoSystemsSIP-GW-UserAgent 2837 1932 IN IP4 192.0.2.10\r\n\
s=SIP Call\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 16504 RTP/AVP 18 0 8 101 19\r\n\
c=IN IP4 192.0.2.11\r\n\
b=AS:64\r\n\
b=TIAS:64000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtpmap:19 CN/8000\r\n\
a=ptime:20\r\n\
a=rtcp:16505 IN IP4 192.0.2.11\r\n";

    /// FreeSWITCH with Opus, G.722, CN and a video stream, LF line ends.
    pub(crate) const FREESWITCH: &str = "v=0\n\
o=FreeSWITCH 1700000000 1700000001 IN IP4 198.51.100.7\n\
s=FreeSWITCH\n\
c=IN IP4 198.51.100.7\n\
t=0 0\n\
m=audio 24580 RTP/AVP 102 9 0 8 101 13\n\
a=rtpmap:102 opus/48000/2\n\
a=fmtp:102 useinbandfec=1; minptime=10\n\
a=rtpmap:9 G722/8000\n\
a=rtpmap:0 PCMU/8000\n\
a=rtpmap:8 PCMA/8000\n\
a=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-16\n\
a=rtpmap:13 CN/8000\n\
a=ptime:20\n\
m=video 24582 RTP/AVP 96\n\
b=AS:512\n\
a=rtpmap:96 H264/90000\n\
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1\n";

    /// Metaswitch-style IPv6 offer with a=rtcp and static payload types without rtpmap.
    pub(crate) const IPV6: &str = "v=0\r\n\
o=- 3900321 3900321 IN IP6 2001:db8::10\r\n\
s=-\r\n\
c=IN IP6 2001:DB8::20\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 96\r\n\
a=rtpmap:96 telephone-event/8000\r\n\
a=fmtp:96 0-15\r\n\
a=rtcp:40001\r\n\
a=ptime:20\r\n";

    /// Audio plus a T.38 fax stream (m=image, which the crate cannot model).
    pub(crate) const AUDIO_AND_FAX: &str = "v=0\r\n\
o=- 7 8 IN IP4 203.0.113.30\r\n\
s=-\r\n\
c=IN IP4 203.0.113.30\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
m=image 30002 udptl t38\r\n\
a=T38FaxVersion:0\r\n\
a=T38MaxBitRate:14400\r\n\
a=T38FaxRateManagement:transferredTCF\r\n\
a=T38FaxUdpEC:t38UDPRedundancy\r\n";

    /// Asterisk hold: a=sendonly.
    pub(crate) const HOLD_SENDONLY: &str = "v=0\r\n\
o=- 1 2 IN IP4 203.0.113.40\r\n\
s=Asterisk\r\n\
c=IN IP4 203.0.113.40\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendonly\r\n";

    /// RFC 2543-style hold: c=0.0.0.0 (RFC 3264 §8.4).
    pub(crate) const HOLD_ZERO_ADDRESS: &str = "v=0\r\n\
o=- 1 3 IN IP4 203.0.113.40\r\n\
s=-\r\n\
c=IN IP4 0.0.0.0\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

    /// Hold with a=inactive at session level.
    pub(crate) const HOLD_INACTIVE: &str = "v=0\r\n\
o=- 1 4 IN IP4 203.0.113.40\r\n\
s=-\r\n\
c=IN IP4 203.0.113.40\r\n\
t=0 0\r\n\
a=inactive\r\n\
m=audio 10000 RTP/AVP 0\r\n";

    pub(crate) const CORPUS: &[&str] = &[
        TWILIO,
        SONUS,
        CISCO,
        FREESWITCH,
        IPV6,
        AUDIO_AND_FAX,
        HOLD_SENDONLY,
        HOLD_ZERO_ADDRESS,
        HOLD_INACTIVE,
    ];

    pub(crate) fn parse(s: &str) -> Sdp {
        match Sdp::parse(s.as_bytes()) {
            Ok(sdp) => sdp,
            Err(e) => panic!("{e}: {s}"),
        }
    }

    fn print(sdp: &Sdp) -> String {
        String::from_utf8(sdp.to_bytes()).unwrap()
    }

    fn relay() -> IpAddr {
        "192.0.2.200".parse().unwrap()
    }

    fn lines(sdp: &Sdp) -> Vec<String> {
        print(sdp).split("\r\n").filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    fn has(sdp: &Sdp, line: &str) -> bool {
        lines(sdp).iter().any(|l| l == line)
    }

    fn error(s: &str) -> SdpError {
        Sdp::parse(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn real_world_offers_parse_print_and_parse_again_to_the_same_text() {
        for text in CORPUS {
            let first = parse(text);
            let printed = print(&first);
            let second = parse(&printed);
            assert_eq!(printed, print(&second), "{text}");
            assert_eq!(first.audio_endpoint(), second.audio_endpoint());
            assert_eq!(first.direction(), second.direction());
            assert_eq!(first.audio().unwrap().formats(), second.audio().unwrap().formats());
        }
    }

    #[test]
    fn an_origin_or_connection_line_without_an_address_is_refused_with_400() {
        // Found by fuzz/fuzz_targets/sdp_codec.rs: `IN IP4 ,27.0.0.2` parsed as an empty host
        // name and printed as `o=... IN IP4 `, which does not parse again.
        let origin = TWILIO.replace("IN IP4 54.172.60.1\r\ns=", "IN IP4 ,27.0.0.2\r\ns=");
        let e = error(&origin);
        assert_eq!(
            (e.status_code(), e.to_string()),
            (400, "SDP does not parse: an o= line has no address".into())
        );
        let connection = SONUS.replace("c=IN IP4 203.0.113.20", "c=IN IP4 ;203.0.113.20");
        assert_eq!(error(&connection).status_code(), 400, "{connection}");
        let ipv6 = IPV6.replacen("IN IP6 ", "IN IP6 ,", 1);
        assert_eq!(error(&ipv6).status_code(), 400, "{ipv6}");
    }

    #[test]
    fn only_descriptions_printed_with_the_lines_they_came_with_skip_the_second_parse() {
        let printed = |body: &str| Sdp::parse(body.as_bytes()).expect("parses").to_bytes();
        // Reordered attributes (the direction first, fmtp after rtpmap) and an added
        // a=sendrecv: the same lines, known to parse.
        for body in [TWILIO, SONUS, CISCO, FREESWITCH] {
            let out = printed(body);
            assert!(prints_as_it_came(body.as_bytes(), &out), "{body}");
            assert!(Sdp::parse_once(&out, false).is_ok());
        }
        // A line printed differently (the address lower-cased) needs the second parse.
        assert!(!prints_as_it_came(IPV6.as_bytes(), &printed(IPV6)));
        // A line moved to another section, dropped or added is not the same description.
        let moved =
            TWILIO.replace("a=ptime:20\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=ptime:20\r\n");
        assert!(!prints_as_it_came(moved.as_bytes(), &printed(TWILIO)));
        let dropped = TWILIO.replace("a=maxptime:150\r\n", "");
        assert!(!prints_as_it_came(TWILIO.as_bytes(), dropped.as_bytes()));
        assert!(!prints_as_it_came(dropped.as_bytes(), TWILIO.as_bytes()));
        let inactive = TWILIO.replace("a=sendrecv", "a=inactive");
        assert!(!prints_as_it_came(inactive.as_bytes(), &printed(TWILIO)));
        // What the fuzzer found: printed as lines that do not parse.
        let body = include_bytes!("../../tests/fixtures/sdp/fuzz-does-not-print-back.sdp");
        let out = Sdp::parse_once(body, false).expect("parses once").to_bytes();
        assert!(!prints_as_it_came(body, &out));
    }

    #[test]
    fn a_line_that_would_not_parse_once_printed_is_refused_with_400() {
        // Found by fuzz/fuzz_targets/sdp_codec.rs (its input, without the target's first byte):
        // the crate reads it, and prints `a=group` and `a=ice-options` lines it cannot read.
        let body = include_bytes!("../../tests/fixtures/sdp/fuzz-does-not-print-back.sdp");
        let e = Sdp::parse(body).unwrap_err();
        assert_eq!(e.status_code(), 400);
        assert_eq!(e.to_string(), "SDP does not parse: a line does not survive printing");
    }

    #[test]
    fn real_world_offers_give_their_audio_endpoint() {
        let endpoint = |s: &str| parse(s).audio_endpoint().map(|a| a.to_string());
        assert_eq!(endpoint(TWILIO).as_deref(), Some("54.172.60.1:13398"));
        assert_eq!(endpoint(SONUS).as_deref(), Some("203.0.113.20:21086"));
        // The media-level c= wins over the session-level one.
        assert_eq!(endpoint(CISCO).as_deref(), Some("192.0.2.11:16504"));
        assert_eq!(endpoint(FREESWITCH).as_deref(), Some("198.51.100.7:24580"));
        assert_eq!(endpoint(IPV6).as_deref(), Some("[2001:db8::20]:40000"));
    }

    #[test]
    fn carrier_attributes_are_read_and_kept_in_print() {
        let sdp = parse(TWILIO);
        let audio = sdp.audio().unwrap();
        assert_eq!(audio.formats(), &[0, 8, 101]);
        assert_eq!(audio.ptime(), Some(20));
        assert_eq!(audio.maxptime(), Some(150));
        assert_eq!(audio.fmtp(101), Some("0-16"));
        let map = audio.rtpmap(101).unwrap();
        assert_eq!((map.encoding, map.clock_rate, map.channels), ("telephone-event", 8000, None));
        for line in ["a=ptime:20", "a=maxptime:150", "a=fmtp:101 0-16", "a=sendrecv"] {
            assert!(has(&sdp, line), "{line}");
        }

        let cisco = parse(CISCO);
        for line in [
            "c=IN IP4 192.0.2.10",
            "c=IN IP4 192.0.2.11",
            "b=AS:64",
            "b=TIAS:64000",
            "a=rtcp:16505 IN IP4 192.0.2.11",
        ] {
            assert!(has(&cisco, line), "{line}");
        }
        let opus = parse(FREESWITCH);
        assert_eq!(opus.audio().unwrap().rtpmap(102).unwrap().channels, Some("2"));
        assert!(has(&opus, "a=fmtp:102 useinbandfec=1; minptime=10"));
    }

    #[test]
    fn lf_and_crlf_line_ends_parse_to_the_same_description() {
        for text in CORPUS {
            let lf = text.replace("\r\n", "\n");
            let crlf = lf.replace('\n', "\r\n");
            assert_eq!(print(&parse(&lf)), print(&parse(&crlf)));
        }
    }

    #[test]
    fn trailing_blanks_and_blank_lines_do_not_change_the_meaning() {
        let text = HOLD_SENDONLY.replace("a=sendonly\r\n", "a=sendonly \t\r\n\r\n  \r\n");
        let sdp = parse(&text);
        assert_eq!(sdp.direction(), Direction::SendOnly);
        assert_eq!(print(&sdp), print(&parse(HOLD_SENDONLY)));
    }

    #[test]
    fn a_stream_the_crate_cannot_model_is_printed_as_it_came() {
        let sdp = parse(AUDIO_AND_FAX);
        let printed = print(&sdp);
        assert!(
            printed.contains(
                "m=image 30002 udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\n"
            )
        );
        assert_eq!(sdp.audio().unwrap().formats(), &[0, 101]);
    }

    #[test]
    fn rewrite_changes_the_connection_and_port_and_keeps_sendonly() {
        let mut sdp = parse(HOLD_SENDONLY);
        sdp.rewrite_for_relay(&mut LegOrigin::new(42), relay(), 20000, AudioSecurity::Plain);
        assert!(has(&sdp, "c=IN IP4 192.0.2.200"));
        assert!(has(&sdp, "m=audio 20000 RTP/AVP 0 101"));
        assert!(has(&sdp, "a=sendonly"));
        assert!(!print(&sdp).contains("203.0.113.40"), "{}", print(&sdp));
        assert_eq!(sdp.direction(), Direction::SendOnly);
        assert_eq!(sdp.audio_endpoint(), Some(SocketAddr::new(relay(), 20000)));
    }

    #[test]
    fn rewrite_replaces_both_connection_lines_and_moves_rtcp_to_the_next_port() {
        let mut sdp = parse(CISCO);
        sdp.rewrite_for_relay(&mut LegOrigin::new(42), relay(), 20000, AudioSecurity::Plain);
        let printed = print(&sdp);
        assert!(!printed.contains("192.0.2.1"), "{printed}");
        assert_eq!(printed.matches("c=IN IP4 192.0.2.200\r\n").count(), 2, "{printed}");
        assert!(has(&sdp, "a=rtcp:20001 IN IP4 192.0.2.200"));
        for kept in ["a=ptime:20", "b=AS:64", "b=TIAS:64000", "a=fmtp:18 annexb=no"] {
            assert!(has(&sdp, kept), "{kept}");
        }

        let mut sdp = parse(IPV6);
        sdp.rewrite_for_relay(&mut LegOrigin::new(42), relay(), 30000, AudioSecurity::Plain);
        assert!(has(&sdp, "a=rtcp:30001"));
        assert!(has(&sdp, "c=IN IP4 192.0.2.200"));
        assert!(has(&sdp, "o=trunkline 42 1 IN IP4 192.0.2.200"));
    }

    #[test]
    fn rewrite_keeps_ptime_and_maxptime() {
        let mut sdp = parse(TWILIO);
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        assert_eq!(sdp.audio().unwrap().ptime(), Some(20));
        assert_eq!(sdp.audio().unwrap().maxptime(), Some(150));
    }

    #[test]
    fn rewrite_gives_the_video_stream_port_zero() {
        let mut sdp = parse(FREESWITCH);
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        let printed = print(&sdp);
        assert!(has(&sdp, "m=video 0 RTP/AVP 96"), "{printed}");
        assert!(!printed.contains("H264"), "{printed}");
        assert!(!printed.contains("b=AS:512"), "{printed}");
        assert!(has(&sdp, "m=audio 20000 RTP/AVP 102 9 0 8 101 13"));
        // Still a valid description.
        assert_eq!(print(&parse(&printed)), printed);
    }

    #[test]
    fn rewrite_rejects_a_fax_stream_and_keeps_only_its_media_line() {
        let mut sdp = parse(AUDIO_AND_FAX);
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        let printed = print(&sdp);
        assert!(printed.ends_with("m=image 0 udptl t38\r\n"), "{printed}");
        assert!(!printed.contains("T38"), "{printed}");
    }

    #[test]
    fn rewrite_rejects_a_second_audio_stream() {
        let text = format!("{TWILIO}m=audio 13400 RTP/AVP 0\r\n");
        let mut sdp = parse(&text);
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        assert!(has(&sdp, "m=audio 20000 RTP/AVP 0 8 101"));
        assert!(has(&sdp, "m=audio 0 RTP/AVP 0"));
    }

    #[test]
    fn rewrite_removes_ice_and_rtcp_mux() {
        let text = TWILIO.replace(
            "a=sendrecv\r\n",
            "a=sendrecv\r\na=rtcp-mux\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n\
a=candidate:1 1 UDP 2130706431 10.0.0.5 13398 typ host\r\n",
        );
        let mut sdp = parse(&text);
        assert!(print(&sdp).contains("a=candidate:1 1 UDP"));
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        let printed = print(&sdp);
        for gone in ["a=rtcp-mux", "ice-ufrag", "ice-pwd", "candidate", "10.0.0.5"] {
            assert!(!printed.contains(gone), "{gone}: {printed}");
        }
    }

    #[test]
    fn hold_descriptions_round_trip() {
        let sendonly = parse(HOLD_SENDONLY);
        assert_eq!(sendonly.direction(), Direction::SendOnly);
        assert!(sendonly.audio_endpoint().is_some());

        let zero = parse(HOLD_ZERO_ADDRESS);
        assert_eq!(zero.direction(), Direction::SendRecv);
        assert_eq!(zero.audio_endpoint(), None);
        assert!(has(&zero, "c=IN IP4 0.0.0.0"));

        let inactive = parse(HOLD_INACTIVE);
        assert_eq!(inactive.direction(), Direction::Inactive);

        for hold in [sendonly, zero, inactive] {
            let again = parse(&print(&hold));
            assert_eq!(again.direction(), hold.direction());
            assert_eq!(again.audio_endpoint(), hold.audio_endpoint());
            assert_eq!(print(&again), print(&hold));
        }
    }

    #[test]
    fn rewrite_keeps_a_hold_by_unspecified_address() {
        let mut sdp = parse(HOLD_ZERO_ADDRESS);
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        assert!(has(&sdp, "c=IN IP4 0.0.0.0"));
        assert!(has(&sdp, "m=audio 20000 RTP/AVP 0"));
        assert_eq!(sdp.audio_endpoint(), None);

        let mut inactive = parse(HOLD_INACTIVE);
        inactive.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        assert!(has(&inactive, "a=inactive"));
    }

    #[test]
    fn origin_version_increments_across_two_rewrites_of_different_descriptions() {
        let mut origin = LegOrigin::new(7);
        let mut first = parse(TWILIO);
        first.rewrite_for_relay(&mut origin, relay(), 20000, AudioSecurity::Plain);
        assert!(has(&first, "o=trunkline 7 1 IN IP4 192.0.2.200"));
        assert!(has(&first, "s=-"));

        let mut hold = parse(HOLD_SENDONLY);
        hold.rewrite_for_relay(&mut origin, relay(), 20000, AudioSecurity::Plain);
        assert!(has(&hold, "o=trunkline 7 2 IN IP4 192.0.2.200"));

        // A refresh with the same description keeps the version (RFC 3264 §8).
        let mut refresh = parse(HOLD_SENDONLY);
        refresh.rewrite_for_relay(&mut origin, relay(), 20000, AudioSecurity::Plain);
        assert!(has(&refresh, "o=trunkline 7 2 IN IP4 192.0.2.200"));
        assert_eq!(print(&refresh), print(&hold));

        let mut resumed = parse(TWILIO);
        resumed.rewrite_for_relay(&mut origin, relay(), 20000, AudioSecurity::Plain);
        assert!(has(&resumed, "o=trunkline 7 3 IN IP4 192.0.2.200"));
        assert_eq!(origin.version(), 3);
    }

    #[test]
    fn each_leg_has_its_own_origin() {
        let mut a = LegOrigin::new(u64::MAX);
        let mut b = LegOrigin::new(99);
        let mut sdp = parse(TWILIO);
        sdp.rewrite_for_relay(&mut a, relay(), 20000, AudioSecurity::Plain);
        assert!(has(&sdp, &format!("o=trunkline {} 1 IN IP4 192.0.2.200", i64::MAX)));
        sdp.rewrite_for_relay(&mut b, relay(), 20002, AudioSecurity::Plain);
        assert!(has(&sdp, "o=trunkline 99 1 IN IP4 192.0.2.200"));
    }

    #[test]
    fn a_rejected_audio_stream_has_no_endpoint() {
        let text = TWILIO.replace("m=audio 13398", "m=audio 0");
        let sdp = parse(&text);
        assert_eq!(sdp.audio().unwrap().port(), 0);
        assert_eq!(sdp.audio_endpoint(), None);
    }

    #[test]
    fn a_body_larger_than_16_kib_is_refused_with_400() {
        let mut text = TWILIO.to_owned();
        while text.len() <= MAX_SDP_BYTES {
            text.push_str("a=x-padding:0123456789012345678901234567890123456789\r\n");
        }
        let e = error(&text);
        assert!(matches!(e, SdpError::TooLarge { .. }), "{e}");
        assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn malformed_bodies_are_refused_with_400() {
        let cases: Vec<(String, SdpError)> = vec![
            ("".into(), SdpError::MissingVersion),
            ("hello".into(), SdpError::MalformedLine { line: 1 }),
            (TWILIO.replace("v=0", "v=1"), SdpError::MissingVersion),
            (
                TWILIO.replace("t=0 0\r\n", "t=0 0\r\ngarbage\r\n"),
                SdpError::MalformedLine { line: 6 },
            ),
            (TWILIO.replace("s=Twilio", "S=Twilio"), SdpError::MalformedLine { line: 3 }),
            (TWILIO.replace("o=root", "x=root"), SdpError::MissingField { field: 'o' }),
            (TWILIO.replace("t=0 0\r\n", ""), SdpError::MissingField { field: 't' }),
            (
                TWILIO.replace("c=IN IP4 54.172.60.1", "c=IN IP4 54.172.60.1:5004"),
                SdpError::MalformedConnection { line: 4 },
            ),
            (
                TWILIO.replace("c=IN IP4 54.172.60.1", "c=IN IP4 54.172.60.1 extra"),
                SdpError::MalformedConnection { line: 4 },
            ),
            (
                TWILIO.replace("c=IN IP4 54.172.60.1", "c=IN IP4  54.172.60.1"),
                SdpError::MalformedConnection { line: 4 },
            ),
            (
                TWILIO.replace("m=audio 13398 RTP/AVP 0 8 101", "m=audio 13398 RTP/AVP 0 8 200"),
                SdpError::MalformedMediaLine { line: 6 },
            ),
            (
                TWILIO.replace("m=audio 13398 RTP/AVP 0 8 101", "m=audio 70000 RTP/AVP 0"),
                SdpError::MalformedMediaLine { line: 6 },
            ),
            (
                TWILIO.replace("m=audio 13398 RTP/AVP 0 8 101", "m=audio 13398"),
                SdpError::MalformedMediaLine { line: 6 },
            ),
            (
                TWILIO.replace("m=audio 13398 RTP/AVP 0 8 101", "m=audio 13398 RTP/AVPX 0"),
                SdpError::MalformedMediaLine { line: 6 },
            ),
            (TWILIO.replace("c=IN IP4 54.172.60.1\r\n", ""), SdpError::MissingConnection),
            ("v=0\0\r\n".into(), SdpError::MalformedLine { line: 1 }),
            ("v=0\ra=x\r\n".into(), SdpError::MalformedLine { line: 1 }),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert_eq!(e, expected, "{text}");
            assert_eq!(e.status_code(), 400, "{e}");
        }
        let e = Sdp::parse(b"v=0\r\ns=\xff\r\n").unwrap_err();
        assert_eq!((e.clone(), e.status_code()), (SdpError::NotUtf8, 400));
        let e = error(&TWILIO.replace("a=rtpmap:101 telephone-event/8000", "a=rtpmap:101 te"));
        assert!(matches!(e, SdpError::Syntax { .. }), "{e}");
    }

    #[test]
    fn a_body_without_usable_audio_is_refused_with_488() {
        let fax_only = "v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\n\
t=0 0\r\nm=image 4000 udptl t38\r\n";
        let video_only = FREESWITCH.split("m=audio").next().unwrap().to_owned()
            + "m=video 4000 RTP/AVP 96\na=rtpmap:96 H264/90000\n";
        let srtp = TWILIO.replace("RTP/AVP", "RTP/SAVP");
        let webrtc = TWILIO.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
        let host_name = TWILIO.replace("c=IN IP4 54.172.60.1", "c=IN IP4 media.example.com");
        let cases: Vec<(&str, SdpError)> = vec![
            (fax_only, SdpError::NoAudio),
            (&video_only, SdpError::NoAudio),
            (&srtp, SdpError::UnsupportedAudioTransport { proto: "RTP/SAVP".into() }),
            (&webrtc, SdpError::UnsupportedAudioTransport { proto: "UDP/TLS/RTP/SAVPF".into() }),
            (&host_name, SdpError::ConnectionNotAnAddress { address: "media.example.com".into() }),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert_eq!(e, expected, "{text}");
            assert_eq!(e.status_code(), 488, "{e}");
        }
    }

    #[test]
    fn the_first_audio_stream_over_plain_rtp_is_the_relayed_one() {
        // Best-effort SRTP offered as two streams: the RTP/AVP one is used.
        let text = TWILIO.replace(
            "m=audio 13398 RTP/AVP 0 8 101",
            "m=audio 13000 RTP/SAVP 0\r\nm=audio 13398 RTP/AVP 0 8 101",
        );
        let sdp = parse(&text);
        assert_eq!(sdp.audio().unwrap().port(), 13398);
        assert_eq!(sdp.audio().unwrap().formats(), &[0, 8, 101]);
    }

    #[test]
    fn session_level_direction_applies_to_a_stream_kept_raw() {
        let text = AUDIO_AND_FAX.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let sdp = parse(&text);
        assert_eq!(sdp.direction(), Direction::SendOnly);
        assert!(print(&sdp).ends_with("a=sendonly\r\n"), "{}", print(&sdp));
        assert_eq!(print(&parse(&print(&sdp))), print(&sdp));
    }

    // Property tests.

    /// Small edits of a real offer: bytes replaced, removed or inserted (mostly characters that
    /// matter to SDP), lines dropped or repeated.
    fn mutated_offer() -> impl Strategy<Value = Vec<u8>> {
        let byte =
            prop_oneof![any::<u8>(), prop::sample::select(b"0123456789 =/:\r\n.-aAmcIP".to_vec()),];
        let edit = prop_oneof![
            (any::<prop::sample::Index>(), 0usize..4, prop::collection::vec(byte, 0..4))
                .prop_map(|(at, remove, insert)| Edit::Bytes { at, remove, insert }),
            any::<prop::sample::Index>().prop_map(Edit::DropLine),
            (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                .prop_map(|(from, to)| Edit::CopyLine { from, to }),
        ];
        (prop::sample::select(CORPUS), prop::collection::vec(edit, 1..4)).prop_map(
            |(text, edits)| {
                let mut bytes = text.as_bytes().to_vec();
                for edit in edits {
                    edit.apply(&mut bytes);
                }
                bytes
            },
        )
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Bytes { at: prop::sample::Index, remove: usize, insert: Vec<u8> },
        DropLine(prop::sample::Index),
        CopyLine { from: prop::sample::Index, to: prop::sample::Index },
    }

    impl Edit {
        fn apply(self, bytes: &mut Vec<u8>) {
            let mut lines: Vec<Vec<u8>> =
                bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            match self {
                Edit::Bytes { at, remove, insert } => {
                    let start = at.index(bytes.len() + 1);
                    let end = (start + remove).min(bytes.len());
                    bytes.splice(start..end, insert);
                    return;
                }
                Edit::DropLine(at) if !lines.is_empty() => {
                    lines.remove(at.index(lines.len()));
                }
                Edit::CopyLine { from, to } if !lines.is_empty() => {
                    let line = lines[from.index(lines.len())].clone();
                    lines.insert(to.index(lines.len() + 1), line);
                }
                _ => {}
            }
            *bytes = lines.concat();
        }
    }

    /// A valid session header, then lines that look like SDP, in any order.
    fn sdp_like() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            1 => Just("v=0".to_owned()),
            1 => Just("o=- 1 1 IN IP4 192.0.2.1".to_owned()),
            1 => Just("s=-".to_owned()),
            1 => Just("t=0 0".to_owned()),
            1 => "c=IN IP[46] [0-9a-f:.]{0,20}(/[0-9]{1,4}){0,3}",
            4 => "c=IN IP4 [0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            1 => "m=(audio|video|image|application|text) [0-9]{1,6}(/[0-9]{1,3})? (RTP/AVP|RTP/SAVP|udptl|[A-Z/]{1,10})( [0-9a-z]{1,4}){0,5}",
            2 => "m=audio [0-9]{1,5} RTP/SAVPF?( [0-9]{1,2}){1,5}",
            2 => "a=crypto:[0-9]{1,3} (AES_CM_128_HMAC_SHA1_80|AEAD_AES_128_GCM|X) inline:[A-Za-z0-9+/=]{0,44}(\\|[0-9^:]{0,30}){0,2}( [A-Z_=0-9]{1,8})?",
            6 => "m=audio [0-9]{1,5} RTP/AVP( [0-9]{1,2}){1,5}",
            2 => "a=(rtpmap|fmtp|rtcp|ptime|sendonly|candidate|crypto|fingerprint|ssrc|extmap|rtcp-fb|imageattr|group|msid|setup|ice-ufrag|ice-pwd|mid):[ -~]{0,30}",
            6 => "a=rtpmap:[0-9]{1,2} (PCMU|PCMA|G722|telephone-event|opus)/[0-9]{1,5}(/[0-9])?",
            3 => "a=fmtp:[0-9]{1,2} [ -~]{1,20}",
            3 => "a=rtcp:[0-9]{1,5}( IN IP4 192\\.0\\.2\\.[0-9])?",
            4 => "a=(sendrecv|sendonly|recvonly|inactive|rtcp-mux|ice-lite|end-of-candidates)",
            2 => "b=[A-Z]{0,4}:[0-9]{0,12}",
            1 => "[a-z]=[ -~]{0,20}",
        ];
        (any::<bool>(), prop::collection::vec(line, 0..12), any::<bool>()).prop_map(
            |(header, lines, crlf)| {
                let mut all = Vec::new();
                if header {
                    all.extend(
                        ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"]
                            .map(str::to_owned),
                    );
                }
                all.extend(lines);
                all.join(if crlf { "\r\n" } else { "\n" }).into_bytes()
            },
        )
    }

    #[derive(Debug, Clone)]
    struct ValidMedia {
        media: &'static str,
        port: u16,
        formats: Vec<u8>,
        connection: Option<String>,
        rtpmaps: Vec<(u8, &'static str, u32)>,
        fmtp: Option<(u8, String)>,
        ptime: Option<u8>,
        direction: Option<&'static str>,
        rtcp: Option<u16>,
        bandwidth: Option<u32>,
    }

    fn address() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| format!("IN IP4 {ip}")),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("IN IP6 {ip}")),
        ]
    }

    fn valid_media(audio: bool) -> impl Strategy<Value = ValidMedia> {
        let media = if audio {
            Just("audio").boxed()
        } else {
            prop::sample::select(vec!["audio", "video", "text", "image"]).boxed()
        };
        (
            media,
            1u16..,
            prop::collection::vec(0u8..128, 1..6),
            prop::option::of(address()),
            prop::collection::vec(
                (
                    96u8..128,
                    prop::sample::select(vec!["PCMU", "telephone-event", "opus", "G722"]),
                    prop::sample::select(vec![8000u32, 16000, 48000]),
                ),
                0..3,
            ),
            prop::option::of((0u8..128, "[a-z]{1,6}=[0-9]{1,3}(;[a-z]{1,6}=[0-9]{1,3})?")),
            prop::option::of(10u8..60),
            prop::option::of(prop::sample::select(vec![
                "sendrecv", "sendonly", "recvonly", "inactive",
            ])),
            prop::option::of(1u16..),
            prop::option::of(0u32..100_000),
        )
            .prop_map(
                |(media, port, formats, connection, rtpmaps, fmtp, ptime, direction, rtcp, bw)| {
                    ValidMedia {
                        media,
                        port,
                        formats,
                        connection,
                        rtpmaps,
                        fmtp,
                        ptime,
                        direction,
                        rtcp,
                        bandwidth: bw,
                    }
                },
            )
    }

    fn valid_sdp() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z0-9_-]{1,12}",
            any::<u32>(),
            any::<u32>(),
            address(),
            "[ -~]{0,20}",
            address(),
            prop::option::of(prop::sample::select(vec!["sendonly", "inactive"])),
            valid_media(true),
            prop::collection::vec(valid_media(false), 0..3),
            any::<bool>(),
        )
            .prop_map(
                |(user, id, version, origin, name, conn, dir, audio, others, crlf)| {
                    let mut out = vec![
                        "v=0".to_owned(),
                        format!("o={user} {id} {version} {origin}"),
                        format!("s={}", name.trim()),
                        format!("c={conn}"),
                        "t=0 0".to_owned(),
                    ];
                    if let Some(d) = dir {
                        out.push(format!("a={d}"));
                    }
                    for m in std::iter::once(audio).chain(others) {
                        if m.media == "image" {
                            out.push(format!("m=image {} udptl t38", m.port));
                            out.push("a=T38FaxVersion:0".to_owned());
                            continue;
                        }
                        let formats: Vec<String> = m.formats.iter().map(u8::to_string).collect();
                        out.push(format!("m={} {} RTP/AVP {}", m.media, m.port, formats.join(" ")));
                        if let Some(c) = m.connection {
                            out.push(format!("c={c}"));
                        }
                        if let Some(b) = m.bandwidth {
                            out.push(format!("b=AS:{b}"));
                        }
                        for (pt, name, rate) in m.rtpmaps {
                            out.push(format!("a=rtpmap:{pt} {name}/{rate}"));
                        }
                        if let Some((pt, params)) = m.fmtp {
                            out.push(format!("a=fmtp:{pt} {params}"));
                        }
                        if let Some(p) = m.ptime {
                            out.push(format!("a=ptime:{p}"));
                        }
                        if let Some(d) = m.direction {
                            out.push(format!("a={d}"));
                        }
                        if let Some(r) = m.rtcp {
                            out.push(format!("a=rtcp:{r}"));
                        }
                    }
                    let end = if crlf { "\r\n" } else { "\n" };
                    out.join(end) + end
                },
            )
    }

    fn exercise(body: &[u8]) {
        if let Ok(mut sdp) = Sdp::parse_srtp(body) {
            let _ = (sdp.audio_is_srtp(), sdp.audio_crypto());
            let ours = [Crypto::generate(1, Suite::AesCm128HmacSha1_80)];
            let security = AudioSecurity::Sdes { savp: true, crypto: &ours };
            sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 65535, security);
            let again = Sdp::parse_srtp(&sdp.to_bytes());
            assert!(again.is_ok(), "{again:?}\n{}", String::from_utf8_lossy(&sdp.to_bytes()));
        }
        if let Ok(mut sdp) = Sdp::parse(body) {
            let printed = sdp.to_bytes();
            let _ = Sdp::parse(&printed);
            let _ = sdp.audio_endpoint();
            let _ = sdp.direction();
            let _ = crate::media::codec::filter_offer(
                &mut sdp,
                &[crate::config::model::Codec::Pcma, crate::config::model::Codec::Pcmu],
            );
            sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 65535, AudioSecurity::Plain);
            let again = Sdp::parse(&sdp.to_bytes());
            assert!(again.is_ok(), "{again:?}\n{}", String::from_utf8_lossy(&sdp.to_bytes()));
        }
    }

    fn offer_at(c: &str, port: u16) -> Sdp {
        let text = format!(
            "v=0\r\no=c 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\n"
        );
        Sdp::parse(text.as_bytes()).expect("an offer")
    }

    #[test]
    fn a_carriers_offer_at_a_multicast_group_nothing_or_the_gateway_is_refused_by_name() {
        let nobody = |_| false;
        let gateway = |a: SocketAddr| a == "192.0.2.10:20000".parse::<SocketAddr>().unwrap();
        assert_eq!(
            offer_at("224.2.1.1/127", 4000).refused_connection(true, nobody),
            Some(ConnectionRefusal::Multicast)
        );
        assert_eq!(
            offer_at("0.0.0.0", 4000).refused_connection(true, nobody),
            Some(ConnectionRefusal::Unspecified)
        );
        // In a re-offer, 0.0.0.0 is hold (RFC 3264 §8.4): taken.
        assert_eq!(offer_at("0.0.0.0", 4000).refused_connection(false, nobody), None);
        assert_eq!(
            offer_at("192.0.2.10", 20000).refused_connection(true, gateway),
            Some(ConnectionRefusal::OwnAddress)
        );
        assert_eq!(offer_at("192.0.2.10", 4000).refused_connection(true, gateway), None);
        assert_eq!(offer_at("198.51.100.7", 4000).refused_connection(true, nobody), None);
        // A rejected stream goes nowhere: nothing to refuse.
        assert_eq!(offer_at("224.2.1.1", 0).refused_connection(true, nobody), None);
    }

    fn answer_at(c: &str, port: u16, direction: &str) -> Sdp {
        let text = format!(
            "v=0\r\no=c 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na={direction}\r\n"
        );
        Sdp::parse(text.as_bytes()).expect("an answer")
    }

    #[test]
    fn a_carriers_answer_at_nothing_is_taken_only_when_it_receives_no_media() {
        let nobody = |_| false;
        for direction in ["sendrecv", "recvonly"] {
            assert_eq!(
                answer_at("0.0.0.0", 4000, direction).refused_answer_connection(nobody),
                Some(ConnectionRefusal::Unspecified),
                "{direction}"
            );
        }
        for direction in ["sendonly", "inactive"] {
            assert_eq!(
                answer_at("0.0.0.0", 4000, direction).refused_answer_connection(nobody),
                None,
                "{direction}"
            );
        }
        // Multicast and the gateway itself, whatever the direction.
        let gateway = |a: SocketAddr| a == "192.0.2.10:20000".parse::<SocketAddr>().unwrap();
        assert_eq!(
            answer_at("239.1.1.1", 4000, "sendonly").refused_answer_connection(nobody),
            Some(ConnectionRefusal::Multicast)
        );
        assert_eq!(
            answer_at("192.0.2.10", 20000, "inactive").refused_answer_connection(gateway),
            Some(ConnectionRefusal::OwnAddress)
        );
        assert_eq!(
            answer_at("192.0.2.10", 4000, "sendrecv").refused_answer_connection(gateway),
            None
        );
    }

    #[test]
    fn own_addresses_are_a_listeners_ip_and_on_loopback_only_with_one_of_our_ports() {
        let own = OwnAddresses {
            ips: vec!["198.51.100.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            rtp_ports: Some((20000, 20999)),
            sip_ports: vec![5060],
        };
        let at = |s: &str| own.contains(s.parse().unwrap());
        assert!(at("198.51.100.1:4000"), "a listener's IP, any port");
        assert!(at("127.0.0.1:20002") && at("127.0.0.1:5060"), "loopback with our ports");
        assert!(!at("127.0.0.1:4000"), "loopback, another program's port");
        assert!(!at("198.51.100.2:20002"), "another IP");
        assert!(!OwnAddresses::default().contains("198.51.100.1:20002".parse().unwrap()));
    }

    /// An SRTP offer as linphone writes it (SDES, RFC 4568), key from RFC 4568 §5.1.
    const LINPHONE_SRTP: &str = "v=0\r\n\
o=alice 1 1 IN IP4 192.0.2.1\r\n\
s=Talk\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 7078 RTP/SAVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

    #[test]
    fn an_srtp_offer_is_refused_unless_the_leg_takes_srtp() {
        let plain = Sdp::parse(LINPHONE_SRTP.as_bytes()).unwrap_err();
        assert_eq!(plain.status_code(), 488, "{plain}");
        let sdp = Sdp::parse_srtp(LINPHONE_SRTP.as_bytes()).unwrap();
        assert!(sdp.audio_is_srtp());
        let crypto = sdp.audio_crypto();
        assert_eq!(crypto.len(), 3);
        let first = crypto[0].as_ref().unwrap();
        assert_eq!((first.tag, first.suite), (1, Suite::AesCm128HmacSha1_80));
        assert_eq!(crypto[1].as_ref().map(|c| c.suite), Ok(Suite::AesCm128HmacSha1_32));
        assert_eq!(crypto[2], Err(CryptoRefusal::UnsupportedSuite));
        // Printed as it came, the crypto lines included.
        assert_eq!(String::from_utf8(sdp.to_bytes()).unwrap().matches("a=crypto:").count(), 3);
        assert!(!Sdp::parse_srtp(TWILIO.as_bytes()).unwrap().audio_is_srtp());
    }

    #[test]
    fn the_keys_of_an_sdp_never_show_in_its_debug_output() {
        let sdp = Sdp::parse_srtp(LINPHONE_SRTP.as_bytes()).unwrap();
        let debug = format!("{sdp:?}");
        assert!(!debug.contains("PS1uQCVeeCFCanVmcjkpPywj"), "{debug}");
        assert!(debug.contains("CryptoLines(<3 redacted>)"), "{debug}");
    }

    #[test]
    fn the_rewrite_sets_the_profile_and_the_crypto_lines_toward_each_leg() {
        // Toward the agent: plain RTP/AVP, none of the carrier's keys.
        let mut sdp = Sdp::parse_srtp(LINPHONE_SRTP.as_bytes()).unwrap();
        sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, AudioSecurity::Plain);
        let text = String::from_utf8(sdp.to_bytes()).unwrap();
        assert!(text.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(!text.contains("a=crypto"), "{text}");

        // Toward an SRTP carrier: our own key, under RTP/SAVP or best-effort under RTP/AVP.
        let ours = [Crypto::generate(1, Suite::AesCm128HmacSha1_80)];
        for (savp, proto) in [(true, "RTP/SAVP"), (false, "RTP/AVP")] {
            let mut sdp = parse(TWILIO);
            let security = AudioSecurity::Sdes { savp, crypto: &ours };
            sdp.rewrite_for_relay(&mut LegOrigin::new(1), relay(), 20000, security);
            let text = String::from_utf8(sdp.to_bytes()).unwrap();
            assert!(text.contains(&format!("m=audio 20000 {proto} 0 8 101\r\n")), "{text}");
            let line = format!("a=crypto:{}\r\n", ours[0].to_value());
            assert_eq!(text.matches("a=crypto:").count(), 1, "{text}");
            assert!(text.contains(&line), "{text}");
            let again = Sdp::parse_srtp(text.as_bytes()).unwrap();
            assert_eq!(again.audio_crypto(), vec![Ok(ours[0].clone())]);
        }
    }

    #[test]
    fn a_hostile_crypto_lifetime_is_refused_not_a_panic() {
        // ezk-sdp-types computes 2^n in a u32 and overflows: the lines never reach it.
        for tail in ["|2^40", "|2^4294967295", "|99999999999999999999"] {
            let body = LINPHONE_SRTP.replace(
                "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
                &format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR{tail}"),
            );
            let sdp = Sdp::parse_srtp(body.as_bytes()).unwrap();
            let read = sdp.audio_crypto()[1].as_ref().map(|c| c.lifetime).map_err(|e| *e);
            let expected =
                if tail == "|2^40" { Ok(Some(1 << 40)) } else { Err(CryptoRefusal::Malformed) };
            assert_eq!(read, expected, "{tail}");
            let plain = body.replace("RTP/SAVP", "RTP/AVP");
            assert!(Sdp::parse(plain.as_bytes()).is_ok(), "{tail}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            exercise(&body);
        }

        #[test]
        fn parse_never_panics_on_sdp_like_lines(body in sdp_like()) {
            exercise(&body);
        }

        #[test]
        fn parse_never_panics_on_mutated_real_offers(body in mutated_offer()) {
            exercise(&body);
        }

        #[test]
        fn parse_print_parse_is_stable_for_valid_descriptions(text in valid_sdp()) {
            let first = Sdp::parse(text.as_bytes());
            prop_assert!(first.is_ok(), "{:?}\n{}", first.err(), text);
            let first = first.unwrap();
            let printed = first.to_bytes();
            let second = Sdp::parse(&printed).unwrap();
            prop_assert_eq!(&printed, &second.to_bytes());
            prop_assert_eq!(first.audio_endpoint(), second.audio_endpoint());
            prop_assert_eq!(first.direction(), second.direction());
            let (a, b) = (first.audio().unwrap(), second.audio().unwrap());
            prop_assert_eq!(a.formats(), b.formats());
            prop_assert_eq!(a.ptime(), b.ptime());
            for &pt in a.formats() {
                prop_assert_eq!(a.rtpmap(pt), b.rtpmap(pt));
                prop_assert_eq!(a.fmtp(pt), b.fmtp(pt));
            }
        }
    }
}
