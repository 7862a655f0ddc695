//! Incremental framing of SIP over a byte stream (RFC 3261 §18.3): bytes in as they are read,
//! whole messages out, each cut by its `Content-Length`.
//!
//! Takes: the bytes of each read ([`Framer::push`]). Gives: [`Framed`] items in stream order
//! ([`Framer::next_frame`]): a whole message, a keep-alive ping (RFC 5626 §3.5.1: a double CRLF,
//! answered with one CRLF), or the reason the stream cannot be framed (the connection is then
//! closed: a stream cannot be re-synchronised). Used by `sip::transport` for every TCP and TLS
//! connection; pure, no I/O.
//!
//! Work per read is proportional to the bytes read: the end of the headers is searched only in
//! the new bytes plus the 3 bytes before them (a `CRLFCRLF` split across two reads), never from
//! the start of the message again; `Content-Length` is read once, when the headers end. A peer
//! that sends a large head one byte at a time costs a constant amount per byte, not the size of
//! what it sent so far.
//!
//! Limits: a head that has not ended after `max` bytes, or a `Content-Length` that would make the
//! message larger than `max`, is refused with 513; a head without exactly one valid
//! `Content-Length` (or its compact form `l`) with 400. What a message's bytes mean is
//! `sip::msg`'s job.

/// One thing cut from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A whole message: its head and exactly `Content-Length` bytes of body.
    Message(Vec<u8>),
    /// A double-CRLF keep-alive ping (RFC 5626 §3.5.1): answer with one CRLF.
    Ping,
    /// The stream cannot be framed: the status to answer (400, 513) and why. The bytes that
    /// could not be framed stay in [`Framer::pending`] (for a best-effort answer).
    Invalid { status: u16, detail: &'static str },
}

/// The framing state of one stream connection.
#[derive(Debug)]
pub struct Framer {
    /// Bytes received and not yet handed out; a message (or keep-alive bytes) starts at 0.
    buf: Vec<u8>,
    /// How far the search for the end of the head has got: every end position up to here was
    /// checked and none matched.
    scanned: usize,
    /// The length of the message being received, once its head has ended and been read.
    total: Option<usize>,
    /// The largest message accepted.
    max: usize,
    /// Set once the stream was found unframeable: nothing more is cut.
    failed: bool,
}

const PING: &[u8] = b"\r\n\r\n";

impl Framer {
    /// A framer for messages of at most `max` bytes (head and body).
    pub fn new(max: usize) -> Framer {
        Framer { buf: Vec::with_capacity(8192), scanned: 0, total: None, max, failed: false }
    }

    /// Appends the bytes of one read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a message has been received and not yet all of it (keep-alive bytes do
    /// not count): the time since its first byte is what the message deadline bounds.
    pub fn in_message(&self) -> bool {
        self.buf.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// The bytes received and not handed out yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// The next item, `None` until more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Framed> {
        if self.failed {
            return None;
        }
        loop {
            let first = *self.buf.first()?;
            if first != b'\r' && first != b'\n' {
                break;
            }
            // Keep-alive bytes between messages: a double CRLF is a ping; any other CR or LF
            // is skipped. Bytes that may still become a ping wait for the next read, so that a
            // ping split across reads is still one ping.
            if self.buf.starts_with(PING) {
                self.buf.drain(..PING.len());
                return Some(Framed::Ping);
            }
            if PING.starts_with(&self.buf) {
                return None;
            }
            self.buf.drain(..1);
        }
        let total = match self.total {
            Some(total) => total,
            None => {
                let Some(head_end) = self.find_head_end() else {
                    return if self.buf.len() > self.max {
                        self.fail(513, "message too large")
                    } else {
                        None
                    };
                };
                let length = match content_length(&self.buf[..head_end]) {
                    Ok(length) => length,
                    Err(detail) => return self.fail(400, detail),
                };
                let total = head_end.saturating_add(length);
                if total > self.max {
                    return self.fail(513, "message too large");
                }
                self.total = Some(total);
                total
            }
        };
        if self.buf.len() < total {
            return None;
        }
        let rest = self.buf.split_off(total);
        let message = std::mem::replace(&mut self.buf, rest);
        self.scanned = 0;
        self.total = None;
        Some(Framed::Message(message))
    }

    fn fail(&mut self, status: u16, detail: &'static str) -> Option<Framed> {
        self.failed = true;
        Some(Framed::Invalid { status, detail })
    }

    /// The end of the head (just past its blank line, `CRLFCRLF` or a bare `LFLF`), searched
    /// only at end positions not checked before: each new byte is looked at with the 3 bytes
    /// before it.
    fn find_head_end(&mut self) -> Option<usize> {
        let from = self.scanned + 1;
        for end in from..=self.buf.len() {
            let seen = &self.buf[end.saturating_sub(4)..end];
            if seen.ends_with(b"\n\n") || seen == PING {
                return Some(end);
            }
        }
        self.scanned = self.buf.len();
        None
    }
}

/// The `Content-Length` of a head (RFC 3261 §20.14, compact form `l`): required on streams,
/// exactly once, a decimal number.
fn content_length(head: &[u8]) -> Result<usize, &'static str> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii()).ok();
            match value.and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if found.is_none() => found = Some(n),
                _ => return Err("bad or repeated Content-Length"),
            }
        }
    }
    found.ok_or("Content-Length is required on stream transports")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::{self, Frame, MAX_MESSAGE_SIZE};
    use proptest::prelude::*;

    const OPTIONS: &str = "OPTIONS sip:gw.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKt1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:gw.example>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    const INVITE: &str = "INVITE sip:+14155550100@gw SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:c@h>;tag=a\r\nTo: <sip:+14155550100@gw>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nl: 12\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=x\r\n\r\n";

    /// Everything a framer cuts from `reads`, in order, up to the first refusal.
    fn frames(reads: &[&[u8]], max: usize) -> Vec<Framed> {
        let mut framer = Framer::new(max);
        let mut out = Vec::new();
        for read in reads {
            framer.push(read);
            while let Some(item) = framer.next_frame() {
                let stop = matches!(item, Framed::Invalid { .. });
                out.push(item);
                if stop {
                    return out;
                }
            }
        }
        out
    }

    fn message(text: &str) -> Framed {
        Framed::Message(text.as_bytes().to_vec())
    }

    #[test]
    fn messages_keep_alives_and_bodies_are_cut_in_order() {
        let stream = format!("{OPTIONS}\r\n\r\n{INVITE}\r\n{OPTIONS}");
        assert_eq!(
            frames(&[stream.as_bytes()], MAX_MESSAGE_SIZE),
            vec![message(OPTIONS), Framed::Ping, message(INVITE), message(OPTIONS)]
        );
    }

    #[test]
    fn a_message_waits_for_its_whole_body() {
        let (head_and_part, rest) = INVITE.split_at(INVITE.len() - 3);
        let mut framer = Framer::new(MAX_MESSAGE_SIZE);
        framer.push(head_and_part.as_bytes());
        assert_eq!(framer.next_frame(), None);
        assert!(framer.in_message());
        framer.push(rest.as_bytes());
        assert_eq!(framer.next_frame(), Some(message(INVITE)));
        assert!(!framer.in_message());
    }

    #[test]
    fn keep_alive_bytes_are_not_a_message_in_progress() {
        let mut framer = Framer::new(MAX_MESSAGE_SIZE);
        framer.push(b"\r\n");
        assert_eq!(framer.next_frame(), None);
        assert!(!framer.in_message());
        framer.push(b"\r\n");
        assert_eq!(framer.next_frame(), Some(Framed::Ping));
    }

    #[test]
    fn unframeable_heads_are_refused_with_their_status() {
        let no_length = OPTIONS.replace("Content-Length: 0\r\n", "");
        let twice = OPTIONS.replace("Content-Length: 0\r\n", "Content-Length: 0\r\nl: 0\r\n");
        let bad = OPTIONS.replace("Content-Length: 0", "Content-Length: -1");
        for text in [no_length, twice, bad] {
            assert!(
                matches!(
                    frames(&[text.as_bytes()], MAX_MESSAGE_SIZE).last(),
                    Some(Framed::Invalid { status: 400, .. })
                ),
                "{text}"
            );
        }
        let huge = OPTIONS.replace("Content-Length: 0", "Content-Length: 70000");
        assert_eq!(
            frames(&[huge.as_bytes()], MAX_MESSAGE_SIZE),
            vec![Framed::Invalid { status: 513, detail: "message too large" }]
        );
        let endless = format!("OPTIONS sip:x SIP/2.0\r\nX: {}", "a".repeat(200));
        assert_eq!(
            frames(&[endless.as_bytes()], 100),
            vec![Framed::Invalid { status: 513, detail: "message too large" }]
        );
        assert_eq!(frames(&[&endless.as_bytes()[..90]], 100), vec![]);
    }

    #[test]
    fn the_head_end_is_searched_only_in_new_bytes() {
        // One byte at a time: every end position is checked once, so the scan position moves
        // with the bytes and never back to the start.
        let mut framer = Framer::new(MAX_MESSAGE_SIZE);
        let head = &OPTIONS.as_bytes()[..OPTIONS.len() - 4];
        for (i, b) in head.iter().enumerate() {
            framer.push(&[*b]);
            assert_eq!(framer.next_frame(), None);
            assert_eq!(framer.scanned, i + 1);
        }
        framer.push(b"\r\n\r\n");
        assert_eq!(framer.next_frame(), Some(message(OPTIONS)));
    }

    #[test]
    fn a_bare_lf_blank_line_ends_the_head_as_msg_frame_does() {
        let lf = OPTIONS.replace("\r\n", "\n");
        assert_eq!(frames(&[lf.as_bytes()], MAX_MESSAGE_SIZE), vec![message(&lf)]);
        assert_eq!(msg::frame(lf.as_bytes(), MAX_MESSAGE_SIZE), Frame::Message(lf.len()));
    }

    /// A stream of SIP messages (some with bodies, some using `\n` line ends), keep-alives and
    /// sometimes a message that cannot be framed.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let item = prop_oneof![
            4 => Just(OPTIONS.to_string()),
            4 => Just(INVITE.to_string()),
            1 => Just(OPTIONS.replace("\r\n", "\n")),
            2 => Just("\r\n\r\n".to_string()),
            1 => Just("\r\n".to_string()),
            1 => Just("\r".to_string()),
            1 => "[a-z]{1,8}".prop_map(|body| {
                OPTIONS.replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{body}", body.len()))
            }),
            1 => Just(OPTIONS.replace("Content-Length: 0\r\n", "")),
            1 => Just(OPTIONS.replace("Content-Length: 0", "Content-Length: 99999")),
        ];
        proptest::collection::vec(item, 1..12).prop_map(|items| items.concat().into_bytes())
    }

    proptest! {
        #[test]
        fn framing_across_any_read_splits_gives_what_one_read_gives(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut reads = Vec::new();
            let mut start = 0;
            for cut in at.into_iter().chain([bytes.len()]) {
                reads.push(&bytes[start..cut]);
                start = cut;
            }
            let whole = frames(&[&bytes], MAX_MESSAGE_SIZE);
            prop_assert_eq!(frames(&reads, MAX_MESSAGE_SIZE), whole.clone());
            let single: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(frames(&single, MAX_MESSAGE_SIZE), whole);
        }

        #[test]
        fn whole_messages_are_cut_where_msg_frame_cuts_them(bytes in stream()) {
            // The incremental framer and the one-shot `msg::frame` agree on every message that
            // starts the stream (keep-alive bytes aside, which only the framer pairs into pings).
            let start = bytes.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            let rest = &bytes[start..];
            let first = frames(&[rest], MAX_MESSAGE_SIZE).into_iter().next();
            match (msg::frame(rest, MAX_MESSAGE_SIZE), first) {
                (Frame::Message(n), Some(Framed::Message(m))) => prop_assert_eq!(&rest[..n], &m[..]),
                (Frame::Invalid(status, _), Some(Framed::Invalid { status: s, .. })) => prop_assert_eq!(status, s),
                (Frame::Incomplete, None) => {}
                (one_shot, incremental) => prop_assert!(false, "msg::frame {:?}, framer {:?}", one_shot, incremental),
            }
        }
    }
}
