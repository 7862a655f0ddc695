//! Load target for `benches/rtp-relay.sh`: the gateway's RTP relay (`media::relay::Relay`),
//! driven directly rather than through SIP, on the same tokio runtime as `trunkline run` (multi
//! thread, one worker per core).
//!
//! Starts `--calls` relays on 127.0.0.1 with ports from `--ports`; leg A's remote is
//! 127.0.0.1:`--a-port`, leg B's 127.0.0.1:`--b-port` (the load generator's two sockets), as
//! the SDP of a call would say. Writes the flow file that `rtpblast -f` reads: per call
//! `A <leg A RTP port>` (generator A -> relay -> generator B) and `B <leg B RTP port>` (the
//! reverse). Prints `ready` once relaying, runs until SIGTERM/SIGINT or `--duration` seconds
//! (bounded), then stops every relay and prints the totals from their final stats.
//!
//! Each relay has the source guards of a gateway call (`--guard strict`, the default): side A
//! is a carrier's, strict (its SDP's IP, its SIP peer 127.0.0.1, a media allowlist of two
//! networks the generator is not in), side B the agent runtime's, and both count refusals in
//! `RtpRejected` handles; `--guard off`: no guard (any first packet latches), as before issue 15.
//!
//! usage: rtp-relay-bench --calls N --a-port P --b-port P --flows FILE
//!                        [--ports LOW-HIGH] [--duration S] [--workers N] [--media-threads N]
//!                        [--guard strict|off]
//! `--workers 0`: a current-thread runtime; `--media-threads N`: the relays run on N
//! `MediaThreads` instead of the main runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use trunkline::media::ports::PortAllocator;
use trunkline::media::relay::{Leg, MediaThreads, Relay, RelayConfig, SourceGuard};
use trunkline::observe::metrics::RtpRejected;

struct Args {
    calls: usize,
    a_port: u16,
    b_port: u16,
    flows: String,
    ports: (u16, u16),
    duration: u64,
    workers: Option<usize>,
    media_threads: usize,
    guard: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        calls: 2000,
        a_port: 0,
        b_port: 0,
        flows: String::new(),
        ports: (20000, 39999),
        duration: 1800,
        workers: None,
        media_threads: 0,
        guard: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => args.calls = value.parse()?,
            "--a-port" => args.a_port = value.parse()?,
            "--b-port" => args.b_port = value.parse()?,
            "--flows" => args.flows = value,
            "--duration" => args.duration = value.parse()?,
            "--workers" => args.workers = Some(value.parse()?),
            "--media-threads" => args.media_threads = value.parse()?,
            "--guard" => {
                args.guard = match value.as_str() {
                    "strict" => true,
                    "off" => false,
                    other => bail!("--guard strict|off, not {other}"),
                }
            }
            "--ports" => {
                let (low, high) = value.split_once('-').context("--ports LOW-HIGH")?;
                args.ports = (low.parse()?, high.parse()?);
            }
            other => bail!("unknown option {other}"),
        }
    }
    if args.a_port == 0 || args.b_port == 0 || args.flows.is_empty() {
        bail!("usage: rtp-relay-bench --calls N --a-port P --b-port P --flows FILE");
    }
    if args.duration > 3600 {
        bail!("--duration is at most 3600 s");
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let mut builder = match args.workers {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(workers) = args.workers.filter(|&w| w > 0) {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pool = PortAllocator::new(args.ports.0, args.ports.1);
    let config = RelayConfig { media_timeout: Duration::from_secs(3600), ..Default::default() };
    let media = match args.media_threads {
        0 => None,
        n => Some(MediaThreads::start(n)?),
    };
    let mut relays = Vec::with_capacity(args.calls);
    let mut flows = String::new();
    let carrier = SourceGuard {
        strict: true,
        signalling: Some(localhost),
        allowed: vec!["192.0.2.0/24".parse()?, "2001:db8::/32".parse()?],
        rejected: Some(RtpRejected::unregistered()),
    };
    let agent = SourceGuard {
        signalling: Some(localhost),
        rejected: Some(RtpRejected::unregistered()),
        ..SourceGuard::default()
    };
    for _ in 0..args.calls {
        let guards = if args.guard { [carrier.clone(), agent.clone()] } else { Default::default() };
        let ips = (localhost, localhost);
        let relay = match &media {
            Some(media) => media.start_relay_guarded(&pool, ips, config, guards)?,
            None => Relay::start_guarded(&pool, ips, config, guards)?,
        };
        relay.update_remote(Leg::A, Some(SocketAddr::new(localhost, args.a_port)));
        relay.update_remote(Leg::B, Some(SocketAddr::new(localhost, args.b_port)));
        flows.push_str(&format!(
            "A {}\nB {}\n",
            relay.local(Leg::A).port(),
            relay.local(Leg::B).port()
        ));
        relays.push(relay);
    }
    std::fs::write(&args.flows, flows).with_context(|| format!("writing {}", args.flows))?;
    println!("ready calls={} flows={}", args.calls, args.calls * 2);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(args.duration)) => {}
    }

    let (mut relayed, mut lost, mut dropped) = (0u64, 0u64, 0u64);
    for relay in relays {
        let stats = relay.stop().await;
        for leg in [&stats.a, &stats.b] {
            relayed += leg.rtp_out.packets;
            lost += leg.rtp_in.lost;
            let d = leg.dropped;
            dropped += d.foreign + d.no_destination + d.malformed + d.send_failed;
        }
    }
    println!("relayed={relayed} lost_upstream={lost} dropped={dropped}");
    if let Some(media) = media {
        tokio::task::spawn_blocking(move || drop(media)).await?;
    }
    Ok(())
}
