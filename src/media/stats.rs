//! RTP stream statistics for one direction of one call leg: packets, bytes, packets lost from
//! sequence-number gaps (RFC 3550 §6.4.1 with the algorithms of Appendix A.1 and A.3) and the
//! interarrival jitter (RFC 3550 §6.4.1, Appendix A.8), plus the times of the first and last
//! packet.
//!
//! Pure: the caller gives each packet's arrival time, sequence number, RTP timestamp, length and
//! the clock rate of its payload format; nothing here reads a clock or a socket. The relay
//! (`media::relay`) keeps one [`RtpStats`] per leg for what that leg's peer sends, updates it
//! from the task that owns the sockets, and publishes [`StreamStats`] snapshots for metrics and
//! the session record.
//!
//! Loss is counted as RFC 3550 A.3 does, `expected - received`, where `expected` runs from the
//! first sequence number seen to the highest (extended with the 16-bit wrap count), with two
//! refinements: a duplicate (a sequence number already seen within the last
//! [`DUPLICATE_WINDOW`] packets) is not counted as received, so duplicates never hide a loss;
//! and a late packet from before the first one seen is not counted either, so a reordered start
//! never gives a negative loss. A reordered packet fills its gap when it arrives. A jump of more
//! than [`MAX_DROPOUT`] ahead or [`MAX_MISORDER`] behind is taken for a restarted sender (A.1):
//! the stream re-synchronises on the second consecutive packet of the new sequence, and the
//! loss counted so far is kept.

use std::time::{Duration, Instant};

/// A forward jump larger than this is not a gap but a restarted sequence (RFC 3550 A.1).
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this far behind the highest sequence number is late, not a restart (RFC 3550 A.1).
pub const MAX_MISORDER: u16 = 100;
/// How many sequence numbers back a duplicate is recognised.
pub const DUPLICATE_WINDOW: u16 = 128;
/// RFC 3550 A.8: the jitter estimate moves 1/16 of the way to each new difference.
const JITTER_GAIN: f64 = 1.0 / 16.0;
const SEQ_MOD: u64 = 1 << 16;

/// What is known about one direction of a stream at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamStats {
    /// Every packet counted, duplicates included.
    pub packets: u64,
    /// UDP payload bytes (RTP header included).
    pub bytes: u64,
    /// Packets expected from the sequence numbers (RFC 3550 A.3).
    pub expected: u64,
    /// Packets lost: expected minus received, never negative.
    pub lost: u64,
    /// Interarrival jitter in RTP timestamp units (RFC 3550 A.8).
    pub jitter: f64,
    /// The same in milliseconds, at the clock rate of the last packet (0 before any).
    pub jitter_ms: f64,
    /// Arrival of the first and of the last packet.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl StreamStats {
    /// Time between the first and the last packet.
    pub fn duration(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }
}

/// Sequence-number state of RFC 3550 A.1, with a window of recently seen numbers.
#[derive(Clone, Copy, Debug)]
struct Sequence {
    /// Highest sequence number seen.
    max_seq: u16,
    /// Wraps of the sequence number, times 2^16.
    cycles: u64,
    /// Extended sequence number of the first packet of this run.
    base: u64,
    /// The sequence number that would confirm a restart (after a large jump), if any.
    bad_seq: Option<u16>,
    /// Distinct packets received in this run.
    received: u64,
    /// Bit `i` set: `max_seq - i` has been received.
    window: u128,
}

impl Sequence {
    fn start(seq: u16) -> Sequence {
        Sequence {
            max_seq: seq,
            cycles: 0,
            base: u64::from(seq),
            bad_seq: None,
            received: 1,
            window: 1,
        }
    }

    fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        self.extended_max() + 1 - self.base
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// What one packet did to the sequence state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeqVerdict {
    /// New and counted (in order, after a gap, or late into its gap).
    Counted,
    /// Already seen, or from before the start: not counted.
    Duplicate,
    /// A large jump: held back until the next packet confirms a restart.
    Jump,
    /// The jump was confirmed: the stream starts again at this packet.
    Restarted,
}

/// Statistics of one RTP stream as received (or sent) at one point.
#[derive(Clone, Debug, Default)]
pub struct RtpStats {
    packets: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    seq: Option<Sequence>,
    /// Expected and lost of earlier runs (before restarts).
    expected_before: u64,
    lost_before: u64,
    /// RFC 3550 A.8 state: the estimate, and the previous packet's relative transit time.
    jitter: f64,
    transit: Option<u32>,
    clock_rate: u32,
}

impl RtpStats {
    pub fn new() -> RtpStats {
        RtpStats::default()
    }

    /// Counts one packet that arrived at `now` with this RTP header and UDP payload length.
    /// `clock_rate` is the RTP clock of its payload format (8000 for PCMU, PCMA, G.722 and
    /// telephone-event at 8 kHz).
    pub fn on_packet(
        &mut self,
        now: Instant,
        seq: u16,
        rtp_timestamp: u32,
        len: usize,
        clock_rate: u32,
    ) {
        self.packets += 1;
        self.bytes += len as u64;
        let first = *self.first.get_or_insert(now);
        self.last = Some(now);

        let verdict = match &mut self.seq {
            None => SeqVerdict::Restarted,
            Some(state) => update_seq(state, seq),
        };
        match verdict {
            SeqVerdict::Duplicate | SeqVerdict::Jump => return,
            SeqVerdict::Restarted => {
                self.restart(seq);
                self.transit = None;
            }
            SeqVerdict::Counted => {}
        }
        if clock_rate == 0 {
            return;
        }
        if clock_rate != self.clock_rate {
            // Another time base: the previous transit time means nothing in it.
            self.clock_rate = clock_rate;
            self.transit = None;
        }
        let arrival = arrival_units(now.saturating_duration_since(first), clock_rate);
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            // RFC 3550 A.8: D(i-1, i) = (Rj - Ri) - (Sj - Si), in timestamp units.
            let d = f64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter += JITTER_GAIN * (d - self.jitter);
        }
        self.transit = Some(transit);
    }

    /// Counts one packet of this direction for which only the size matters (RTCP, or what the
    /// relay sent on): packets and bytes and the times, no sequence or jitter.
    pub fn on_datagram(&mut self, now: Instant, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn snapshot(&self) -> StreamStats {
        let (expected, lost) = match &self.seq {
            Some(state) => {
                (self.expected_before + state.expected(), self.lost_before + state.lost())
            }
            None => (self.expected_before, self.lost_before),
        };
        let jitter_ms = if self.clock_rate == 0 {
            0.0
        } else {
            self.jitter * 1000.0 / f64::from(self.clock_rate)
        };
        StreamStats {
            packets: self.packets,
            bytes: self.bytes,
            expected,
            lost,
            jitter: self.jitter,
            jitter_ms,
            first: self.first,
            last: self.last,
        }
    }

    /// Packets lost so far (see the module docs).
    pub fn lost(&self) -> u64 {
        self.snapshot().lost
    }

    /// The jitter estimate in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// A new run of sequence numbers (first packet, or a confirmed restart): what the previous
    /// run expected and lost is kept.
    fn restart(&mut self, seq: u16) {
        if let Some(state) = &self.seq {
            self.expected_before += state.expected();
            self.lost_before += state.lost();
        }
        self.seq = Some(Sequence::start(seq));
    }
}

/// RFC 3550 A.1 `update_seq`, with duplicates recognised in a window.
fn update_seq(state: &mut Sequence, seq: u16) -> SeqVerdict {
    let ahead = seq.wrapping_sub(state.max_seq);
    if ahead == 0 {
        return SeqVerdict::Duplicate;
    }
    if ahead < MAX_DROPOUT {
        // In order, possibly with a gap.
        if seq < state.max_seq {
            state.cycles += SEQ_MOD;
        }
        state.max_seq = seq;
        state.window = if ahead >= DUPLICATE_WINDOW { 1 } else { (state.window << ahead) | 1 };
        state.received += 1;
        state.bad_seq = None;
        return SeqVerdict::Counted;
    }
    let behind = state.max_seq.wrapping_sub(seq);
    if behind <= MAX_MISORDER {
        // Late (reordered) or duplicate.
        let extended = state.extended_max().checked_sub(u64::from(behind));
        if extended.is_none_or(|e| e < state.base) {
            return SeqVerdict::Duplicate;
        }
        let bit = 1u128 << behind;
        if state.window & bit != 0 {
            return SeqVerdict::Duplicate;
        }
        state.window |= bit;
        state.received += 1;
        return SeqVerdict::Counted;
    }
    // A very large jump: a restart if the next packet follows it (RFC 3550 A.1).
    if state.bad_seq == Some(seq) {
        return SeqVerdict::Restarted;
    }
    state.bad_seq = Some(seq.wrapping_add(1));
    SeqVerdict::Jump
}

/// Elapsed time in RTP timestamp units, wrapping like a 32-bit timestamp.
fn arrival_units(elapsed: Duration, clock_rate: u32) -> u32 {
    let units = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    units as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;

    /// Feeds sequence numbers 20 ms apart with timestamps 160 apart.
    fn feed(seqs: &[u16]) -> RtpStats {
        let start = Instant::now();
        let mut stats = RtpStats::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let at = start + Duration::from_millis(20 * i as u64);
            stats.on_packet(at, seq, u32::from(seq).wrapping_mul(160), 172, RATE);
        }
        stats
    }

    #[test]
    fn packets_in_order_lose_nothing() {
        let s = feed(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).snapshot();
        assert_eq!((s.packets, s.bytes, s.expected, s.lost), (10, 1720, 10, 0));
    }

    #[test]
    fn a_gap_of_three_sequence_numbers_is_three_lost() {
        let s = feed(&[1, 2, 3, 7, 8]).snapshot();
        assert_eq!((s.packets, s.expected, s.lost), (5, 8, 3));
    }

    #[test]
    fn the_sequence_number_wraps_at_65535_without_loss() {
        let s = feed(&[65533, 65534, 65535, 0, 1]).snapshot();
        assert_eq!((s.expected, s.lost), (5, 0));
    }

    #[test]
    fn a_gap_across_the_wrap_counts_what_is_missing() {
        // 65534, 65535, [0, 1 missing], 2
        let s = feed(&[65534, 65535, 2]).snapshot();
        assert_eq!((s.expected, s.lost), (5, 2));
    }

    #[test]
    fn a_reordered_packet_is_not_lost() {
        assert_eq!(feed(&[1, 2, 4, 3, 5]).lost(), 0);
        // counted lost while missing, and no longer once it arrives
        assert_eq!(feed(&[1, 2, 4]).lost(), 1);
        assert_eq!(feed(&[1, 2, 4, 3]).lost(), 0);
        // late across the wrap
        assert_eq!(feed(&[65534, 0, 65535, 1]).lost(), 0);
    }

    #[test]
    fn duplicates_do_not_hide_a_loss() {
        let s = feed(&[1, 2, 2, 4]).snapshot();
        assert_eq!((s.packets, s.expected, s.lost), (4, 4, 1));
        let s = feed(&[1, 3, 2, 2, 3]).snapshot();
        assert_eq!((s.packets, s.expected, s.lost), (5, 3, 0));
    }

    #[test]
    fn a_late_packet_from_before_the_first_is_not_counted() {
        let s = feed(&[10, 9, 11]).snapshot();
        assert_eq!((s.packets, s.expected, s.lost), (3, 2, 0));
    }

    #[test]
    fn a_restarted_sender_is_followed_after_two_consecutive_packets() {
        // first run 100..=102 with 101 missing: 1 lost; then a jump to 40000 (held back),
        // 40001 confirms the restart, 40003 after a gap of one.
        let s = feed(&[100, 102, 40000, 40001, 40003]).snapshot();
        assert_eq!(s.packets, 5);
        assert_eq!(s.expected, 3 + 3);
        assert_eq!(s.lost, 1 + 1);
        // a single stray number far away is not a restart
        let s = feed(&[1, 2, 30000, 3, 4]).snapshot();
        assert_eq!((s.expected, s.lost), (4, 0));
    }

    #[test]
    fn regular_spacing_has_no_jitter() {
        let s = feed(&[1, 2, 3, 4, 5, 6, 7, 8]).snapshot();
        assert_eq!(s.jitter, 0.0);
        // timestamps that wrap around 2^32 too
        let start = Instant::now();
        let mut stats = RtpStats::new();
        for i in 0..10u32 {
            let ts = (u32::MAX - 500).wrapping_add(i * 160);
            let at = start + Duration::from_millis(20 * u64::from(i));
            stats.on_packet(at, i as u16, ts, 172, RATE);
        }
        assert_eq!(stats.jitter(), 0.0);
    }

    #[test]
    fn jitter_follows_rfc_3550_a8() {
        // Timestamps 160 apart (20 ms at 8 kHz), arrivals at 0, 30 and 40 ms:
        //   transits 0, 240-160 = 80, 320-320 = 0
        //   J1 = 0 + (80 - 0)/16 = 5;  J2 = 5 + (|0 - 80| - 5)/16 = 9.6875
        let start = Instant::now();
        let mut stats = RtpStats::new();
        stats.on_packet(start, 1, 1000, 172, RATE);
        stats.on_packet(start + Duration::from_millis(30), 2, 1160, 172, RATE);
        assert_eq!(stats.jitter(), 5.0);
        stats.on_packet(start + Duration::from_millis(40), 3, 1320, 172, RATE);
        let s = stats.snapshot();
        assert_eq!(s.jitter, 9.6875);
        assert_eq!(s.jitter_ms, 9.6875 / 8.0);
        assert_eq!(s.first, Some(start));
        assert_eq!(s.last, Some(start + Duration::from_millis(40)));
        assert_eq!(s.duration(), Duration::from_millis(40));
    }

    #[test]
    fn a_duplicate_does_not_move_the_jitter() {
        let start = Instant::now();
        let mut stats = RtpStats::new();
        stats.on_packet(start, 1, 0, 172, RATE);
        stats.on_packet(start + Duration::from_millis(20), 2, 160, 172, RATE);
        stats.on_packet(start + Duration::from_millis(35), 2, 160, 172, RATE);
        stats.on_packet(start + Duration::from_millis(40), 3, 320, 172, RATE);
        assert_eq!(stats.jitter(), 0.0);
    }

    #[test]
    fn datagrams_count_packets_and_bytes_only() {
        let start = Instant::now();
        let mut stats = RtpStats::new();
        stats.on_datagram(start, 80);
        stats.on_datagram(start + Duration::from_secs(5), 60);
        let s = stats.snapshot();
        assert_eq!((s.packets, s.bytes, s.expected, s.lost, s.jitter), (2, 140, 0, 0, 0.0));
        assert_eq!(s.duration(), Duration::from_secs(5));
    }
}
