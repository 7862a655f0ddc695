//! `trunkline run`: assembles the gateway on one machine. Loads and compiles the spec folder
//! (with credentials generated into the state folder), binds the carrier-facing and internal
//! listeners and the admin endpoints, watches the folder (a good edit is swapped in, a bad one
//! keeps the last good table; calls in progress keep the table they started with), and drains on
//! SIGTERM or Ctrl-C: new INVITEs get 503 and `/readyz` says draining while calls in progress go
//! on, until they end or the drain deadline passes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::CompileOptions;
use crate::config::source::credentials::StateDir;
use crate::config::source::watch::{FolderSource, ReloadObserver, Snapshot, WatchError};
use crate::media::ports::PortAllocator;
use crate::media::relay::MediaThreads;
use crate::observe::admin::{Health, serve_admin};
use crate::observe::metrics::GatewayMetrics;
use crate::sip::digest::{DigestServer, NonceKey};
use crate::sip::transport::{self, ListenAddr, Protocol, TlsFiles, Transports, Zone};

use super::gateway::{Gateway, GatewayConfig, Listener};

/// Everything `trunkline run` is told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub specs: Vec<PathBuf>,
    pub listen: Vec<ListenAddr>,
    pub internal_listen: Vec<ListenAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub admin: SocketAddr,
    pub public_address: Option<IpAddr>,
    pub rtp_ports: (u16, u16),
    pub header_prefix: String,
    pub state_dir: PathBuf,
    pub region: Option<String>,
    pub realm: String,
    pub agent_timeout: Duration,
    pub drain_timeout: Duration,
    /// No RTP from a leg of an answered call for this long ends the call.
    pub media_timeout: Duration,
    pub nonce_ttl: Duration,
    /// Offered digest algorithms, in challenge order.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Specs(#[from] WatchError),
    #[error("state folder {path}")]
    State { path: PathBuf, source: crate::config::source::credentials::StateError },
    #[error("TLS certificate: {0}")]
    Tls(std::io::Error),
    #[error("cannot start the media threads")]
    MediaThreads(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen { addr: String, source: std::io::Error },
}

fn default_listeners(zone: Zone) -> Vec<ListenAddr> {
    let (ip, port): (IpAddr, u16) = match zone {
        Zone::Carrier => (IpAddr::from([0, 0, 0, 0]), 5060),
        Zone::Internal => (IpAddr::from([127, 0, 0, 1]), 5080),
    };
    [Protocol::Udp, Protocol::Tcp]
        .into_iter()
        .map(|protocol| ListenAddr { protocol, addr: SocketAddr::new(ip, port) })
        .collect()
}

/// Runs the gateway until SIGTERM/Ctrl-C and the drain that follows.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let listen = if options.listen.is_empty() {
        default_listeners(Zone::Carrier)
    } else {
        options.listen.clone()
    };
    let internal = if options.internal_listen.is_empty() {
        default_listeners(Zone::Internal)
    } else {
        options.internal_listen.clone()
    };

    let state = StateDir::open(&options.state_dir)
        .map_err(|source| ServeError::State { path: options.state_dir.clone(), source })?;
    let nonce_key = state
        .nonce_key()
        .map_err(|source| ServeError::State { path: options.state_dir.clone(), source })?;
    let endpoint = listen.first().map(|l| {
        let ip = options.public_address.unwrap_or(l.addr.ip());
        // A wildcard listener says nothing a carrier can use: name the flag that does.
        let host = if ip.is_unspecified() {
            format!("<this machine's public address (--public-address)>:{}", l.addr.port())
        } else {
            SocketAddr::new(ip, l.addr.port()).to_string()
        };
        format!(
            "sip:{}{}",
            host,
            match l.protocol {
                Protocol::Udp => "",
                Protocol::Tcp => ";transport=tcp",
                Protocol::Tls => ";transport=tls",
            }
        )
    });
    let mut source = FolderSource::new(
        options.specs.clone(),
        CompileOptions { region: options.region.clone() },
        Some(state),
    );
    if let Some(endpoint) = &endpoint {
        source = source.with_carrier_endpoint(endpoint.clone());
    }
    let metrics = Arc::new(GatewayMetrics::new());
    let reload_metrics = metrics.clone();
    source = source
        .with_reload_observer(ReloadObserver(Arc::new(move |ok| reload_metrics.config_reload(ok))));
    let first = source.load()?;
    let health = Health::new();
    record_config(&metrics, &first.snapshot);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(first.snapshot));

    let config = GatewayConfig {
        public_address: options.public_address,
        header_prefix: options.header_prefix.clone(),
        agent_timeout: options.agent_timeout,
        media_timeout: options.media_timeout,
        ..GatewayConfig::default()
    };
    let digest = DigestServer::new(
        options.realm.clone(),
        NonceKey::from_bytes(nonce_key),
        options.nonce_ttl,
    )
    .with_algorithms(&options.digest_algorithms);
    let ports = Arc::new(PortAllocator::new(options.rtp_ports.0, options.rtp_ports.1));
    let gateway =
        Gateway::new(config, snapshot_rx.clone(), digest, metrics.clone(), health.clone(), ports);
    // One media thread per core: each a current-thread runtime with its own epoll.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let media = MediaThreads::start(cores).map_err(ServeError::MediaThreads)?;
    gateway.use_media_threads(Arc::new(media));
    let transports = Transports::new(gateway.sink(), transport::Limits::default());
    gateway.attach(transports.clone());

    let tls = match &options.tls {
        Some((cert, key)) => {
            Some(Arc::new(TlsFiles::load(cert.clone(), key.clone()).map_err(ServeError::Tls)?))
        }
        None => None,
    };
    for (zone, addrs) in [(Zone::Carrier, &listen), (Zone::Internal, &internal)] {
        for at in addrs {
            let bound = transports
                .listen(*at, zone, tls.clone())
                .await
                .map_err(|source| ServeError::Listen { addr: at.to_string(), source })?;
            gateway.add_listener(Listener { zone, protocol: at.protocol, addr: bound });
            tracing::info!(zone = ?zone, "listening on {}", ListenAddr { protocol: at.protocol, addr: bound });
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::net::TcpListener::bind(options.admin)
        .await
        .map_err(|source| ServeError::Listen { addr: options.admin.to_string(), source })?;
    tracing::info!("admin endpoints on http://{}", admin.local_addr().unwrap_or(options.admin));
    let admin_task =
        tokio::spawn(serve_admin(admin, metrics.clone(), health.clone(), stopped(stop_rx.clone())));

    // Config reloads: the folder watch publishes snapshots; the gateway reads the latest.
    let watch_task = tokio::spawn(source.watch(snapshot_tx, stopped(stop_rx.clone())));
    let metrics_task = {
        let metrics = metrics.clone();
        let mut rx = snapshot_rx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let snapshot = rx.borrow_and_update().clone();
                record_config(&metrics, &snapshot);
            }
        })
    };

    health.set_ready(true);
    tracing::info!(rtp_ports = ?options.rtp_ports, "trunkline is serving");

    shutdown_signal().await;
    tracing::info!(timeout = ?options.drain_timeout, calls = gateway.active_calls(), "draining: new calls get 503");
    gateway.drain();
    let deadline = tokio::time::Instant::now() + options.drain_timeout;
    while gateway.active_calls() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(calls_left = gateway.active_calls(), "stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    watch_task.abort();
    metrics_task.abort();
    Ok(())
}

fn record_config(metrics: &GatewayMetrics, snapshot: &Snapshot) {
    metrics.set_config(&snapshot.hash, snapshot.table.inbound.len(), snapshot.table.number_count());
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
