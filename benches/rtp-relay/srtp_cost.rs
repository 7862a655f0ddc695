//! CPU per packet of the relay's SRTP work (`media::srtp::SrtpSide`, issue 17 item 3), for
//! `benches/srtp-cost.sh`: what a packet relayed between an SRTP leg (a carrier on a trunk with
//! `media.encryption`) and a plain leg (the agent runtime) costs on top of plain relaying.
//!
//! Per suite, per round: `--packets` RTP packets of 172 bytes (12-byte header + 160 bytes of
//! G.711, one SSRC, sequence numbers in order as a carrier sends them) are encrypted by a
//! "carrier" context beforehand (not timed); then the relay side's `unprotect` (authenticate,
//! replay check, decrypt: carrier -> agent) of each, and its `protect` (encrypt, tag: agent ->
//! carrier) of the plain packet, are timed with the thread's CPU clock. Prints one line per
//! suite and round, then the medians:
//!   `SUITE unprotect_ns=.. protect_ns=.. both_ns=..`
//! Pure computation: no sockets, so the figure does not move with the load of the shared
//! machine as a relay's does (it measures CPU time, not wall time).
//!
//! usage: srtp-cost [--packets N] [--rounds N]

use std::time::Duration;

use anyhow::Context;
use trunkline::media::sdes::{Crypto, Suite};
use trunkline::media::srtp::{SrtpKeys, SrtpSide};

fn thread_cpu() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::from(ts)
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend((0..160u16).map(|i| (seq.wrapping_add(i) & 0xff) as u8));
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let (mut packets, mut rounds) = (100_000usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--packets" => packets = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    // Sequence numbers wrap at 65,536: more packets than that exercise the rollover counter.
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32, Suite::AeadAes128Gcm] {
        let (mut un, mut pr) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let carrier = Crypto::generate(1, suite);
            let ours = Crypto::generate(1, suite);
            let mut sender =
                SrtpSide::new(SrtpKeys { remote: ours.clone(), local: carrier.clone() })
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut relay = SrtpSide::new(SrtpKeys { remote: carrier, local: ours })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let plain: Vec<Vec<u8>> = (0..packets).map(|n| rtp(n as u16)).collect();
            let sent: Vec<_> = plain.iter().map(|p| sender.protect(p).expect("encrypt")).collect();

            let start = thread_cpu();
            let mut ok = 0usize;
            for p in &sent {
                ok += usize::from(relay.unprotect(p).is_ok());
            }
            let unprotect = thread_cpu() - start;
            anyhow::ensure!(ok == packets, "{suite:?}: {ok} of {packets} authenticated");

            let start = thread_cpu();
            let mut bytes = 0usize;
            for p in &plain {
                bytes += relay.protect(p).expect("encrypt").len();
            }
            let protect = thread_cpu() - start;
            std::hint::black_box(bytes);

            let per = |d: Duration| d.as_nanos() as f64 / packets as f64;
            let (u, p) = (per(unprotect), per(protect));
            println!(
                "{} round={round} unprotect_ns={u:.0} protect_ns={p:.0} both_ns={:.0}",
                suite.as_str(),
                u + p
            );
            un.push(u);
            pr.push(p);
        }
        let (u, p) = (median(un), median(pr));
        println!(
            "MEDIAN {} unprotect_ns={u:.0} protect_ns={p:.0} both_ns={:.0}",
            suite.as_str(),
            u + p
        );
    }
    Ok(())
}
