//! A carrier driven by hand over UDP, for tests that send and check RTP themselves (sipp's RTP
//! cannot be checked packet by packet): SIP requests written as text, responses waited for by
//! status, and an RTP socket; with the readers of the gateway's SDP.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A hand-driven carrier over UDP: what sipp cannot do here is send and check RTP itself.
pub struct Carrier {
    pub sip: UdpSocket,
    pub media: UdpSocket,
    pub gateway: SocketAddr,
    /// The number dialed (the Request-URI user).
    pub number: String,
}

impl Carrier {
    pub fn new(gateway: SocketAddr, number: &str) -> Carrier {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind SIP");
        let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
        sip.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        media.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Carrier { sip, media, gateway, number: number.to_string() }
    }

    pub fn send(&self, text: &str) {
        self.sip.send_to(text.as_bytes(), self.gateway).expect("send");
    }

    /// Waits for a response whose status line starts with `status`, at most `within`.
    pub fn response(&self, status: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sip.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with(&format!("SIP/2.0 {status}")) {
                    return Some(text);
                }
            }
        }
        None
    }

    pub fn request(&self, method: &str, branch: &str, cseq: u32, to: &str, body: &str) -> String {
        let me = self.sip.local_addr().expect("addr");
        let content = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        format!(
            "{method} sip:{number}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+12025550123@{me}>;tag=rtp-test\r\nTo: {to}\r\n\
             Call-ID: rtp-test@{me}\r\nCSeq: {cseq} {method}\r\nContact: <sip:carrier@{me}>\r\n\
             {content}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            gw = self.gateway,
            number = self.number,
        )
    }
}

/// The value of the first line of `message` starting with `prefix`.
pub fn line_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim)
}

pub fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    // 160 bytes of G.711 payload that says which packet it is.
    p.extend((0..160u16).map(|i| (seq.wrapping_mul(7).wrapping_add(i) & 0xff) as u8));
    p
}

/// Sends `count` RTP packets from the carrier's media socket to `relay`, 20 ms apart, through
/// an agent that echoes them; checks each that comes back (from the relay's port, payload
/// intact) and returns how many did.
pub fn echo_through(carrier: &Carrier, relay: SocketAddr, count: u16) -> usize {
    let mut echoed = 0;
    let mut buf = vec![0u8; 2048];
    for seq in 0..count {
        carrier.media.send_to(&rtp_packet(seq), relay).expect("send RTP");
        if let Ok((n, from)) = carrier.media.recv_from(&mut buf) {
            assert_eq!(from, relay, "RTP must come back from the relay's port");
            let back = &buf[..n];
            let back_seq = u16::from_be_bytes([back[2], back[3]]);
            assert_eq!(back, &rtp_packet(back_seq)[..], "payload changed on the way");
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    echoed
}

/// The SDP of a SIP message: everything after the blank line.
pub fn body_of(message: &str) -> &str {
    message.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()
}

/// The relay's address and the formats in the SDP of a message (the gateway's answer or offer).
pub fn relay_of(ok: &str) -> (SocketAddr, Vec<String>) {
    let sdp = body_of(ok);
    let ip = line_after(sdp, "c=IN IP4").expect("c= in the 200's SDP");
    let m = line_after(sdp, "m=audio").expect("m=audio in the 200's SDP");
    let mut fields = m.split_whitespace();
    let port = fields.next().and_then(|p| p.parse::<u16>().ok()).expect("m= port");
    let formats = fields.skip(1).map(str::to_string).collect();
    (format!("{ip}:{port}").parse().expect("relay address"), formats)
}
