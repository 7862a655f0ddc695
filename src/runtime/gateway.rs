//! `trunkline run` and `trunkline gateway`: assembles the gateway. Gets its first config from a
//! [`SpecSource`], binds the carrier-facing and internal listeners and the admin endpoints, lets
//! the source publish new configs (a good change is swapped in, a bad one keeps the last good
//! table; calls in progress keep the table they started with), starts the OPTIONS probes of the
//! OutboundTrunks (`call::health`), and drains on SIGTERM or Ctrl-C:
//! new INVITEs get 503 and `/readyz` says draining while calls in progress go on, until they end
//! or the drain deadline passes; then the calls left are hung up (BYE on both legs) and the
//! process exits once their session records are written and the spool synced.
//!
//! With `--api-token-file`, the call API (`observe::api`, `POST /v1/calls`...) listens on
//! `--api`, driven by the gateway's `call_control()`, for clients from `--agent-networks`; it
//! stays up through the drain like the admin endpoints. A token file that cannot be read is an error before anything is bound.
//!
//! The two sources:
//! - [`SpecSource::Folder`] (`run`): loads and compiles the spec folder (with credentials
//!   generated into the state folder, which also keeps the digest nonce key), then watches it.
//!   A folder that cannot be served is an error before anything is bound.
//! - [`SpecSource::Kube`] (`gateway`, in a pod): `source::kube` reflects the three kinds and
//!   the operator's credentials Secret, which also carries the nonce key every replica shares.
//!   The admin endpoints come up first, with `/readyz` not ready until the first config; the
//!   listeners open once it is there. With `--public-address-node`, the node's address is read
//!   first (`source::node`) and advertised as `--public-address` would be.
//!
//! **Fleet-wide limits.** With the Kubernetes source, the fleet's membership that the bundle
//! carries (`source::kube::Running::members`) becomes this pod's `call::limits::FleetPosition`
//! (its name is `POD_NAME`, else `HOSTNAME`), stored in the `FleetShare` the admission of every
//! call reads, before the listeners open and on every change after; `trunkline_fleet_members`
//! and `trunkline_fleet_member_index` show it. `run` is alone: the whole limits.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::call::agent_auth::{AgentCredentials, AgentCredentialsError};
use crate::call::gateway::Gateway;
use crate::call::health as probes;
use crate::call::limits::{FleetPosition, FleetShare};
use crate::call::services::{GatewayConfig, Listener};
use crate::config::CompileOptions;
use crate::config::Snapshot;
use crate::media::ports::PortAllocator;
use crate::media::relay::MediaThreads;
use crate::observe::admin::{GatewayReport, Health, serve_admin};
use crate::observe::api::{TokenFile, TokenFileError, serve_api};
use crate::observe::metrics::GatewayMetrics;
use crate::sip::digest::{DigestServer, NonceKey};
use crate::sip::tls_client::{TlsClient, TlsClientError, TlsFailure};
use crate::sip::transport::{self, ListenAddr, Protocol, TlsFiles, Transports, Zone};
use crate::source::credentials::StateDir;
use crate::source::kube::{KubeSource, KubeSourceOptions, Members, SourceError};
use crate::source::node::{NodeAddressError, Retry, fetch_node_public_address};
use crate::source::watch::{FolderSource, ReloadObserver, WatchError};

/// Where the gateway's specs come from.
pub enum SpecSource {
    /// Spec folders or files, watched; generated credentials and the nonce key in `state_dir`.
    Folder { paths: Vec<PathBuf>, state_dir: PathBuf },
    /// The API server (a gateway pod); `client` is normally `kube::Client::try_default()`.
    /// With `node_address`, the address advertised (as `--public-address` would be) is read
    /// from that Node before the listeners open.
    Kube {
        client: kube::Client,
        options: KubeSourceOptions,
        node_address: Option<Box<NodeAddressOptions>>,
    },
}

/// Which Node's address a gateway advertises (`--public-address-node`), and from which
/// annotation an administrator may set it.
#[derive(Clone, Debug)]
pub struct NodeAddressOptions {
    pub node: String,
    pub annotation: String,
    pub retry: Retry,
}

impl std::fmt::Debug for SpecSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecSource::Folder { paths, state_dir } => f
                .debug_struct("Folder")
                .field("paths", paths)
                .field("state_dir", state_dir)
                .finish(),
            SpecSource::Kube { options, .. } => {
                f.debug_struct("Kube").field("options", options).finish_non_exhaustive()
            }
        }
    }
}

/// Everything the gateway is told, whatever its spec source.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: Vec<ListenAddr>,
    pub internal_listen: Vec<ListenAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub admin: SocketAddr,
    pub public_address: Option<IpAddr>,
    pub rtp_ports: (u16, u16),
    pub header_prefix: String,
    pub region: Option<String>,
    pub realm: String,
    pub agent_timeout: Duration,
    /// How long a bridged transfer's destination may ring.
    pub transfer_timeout: Duration,
    /// Where session records go (`-`: stdout), and when the file rotates.
    pub records_file: Option<String>,
    pub records_rotation: crate::observe::record::Rotation,
    /// Which sinks also get the `answered` record of each call.
    pub records_file_answered: bool,
    pub records_webhook_answered: bool,
    /// The webhook records are POSTed to, the file with its HMAC key, the spool directory and
    /// its bound.
    pub records_webhook: Option<String>,
    pub records_webhook_key_file: Option<PathBuf>,
    pub records_spool: PathBuf,
    pub records_spool_max_bytes: u64,
    /// CA bundle trusted for an `https://` webhook, beside the system roots.
    pub records_webhook_ca_file: Option<PathBuf>,
    /// Take over the spools left beside `records_spool` by gateways that are gone.
    pub records_spool_adopt: bool,
    pub drain_timeout: Duration,
    /// No RTP from a leg of an answered call for this long ends the call.
    pub media_timeout: Duration,
    /// How long hold suspends the media timeout; `None`: the whole hold.
    pub max_hold: Option<Duration>,
    /// The ceiling on an answered call's length; `None`: none.
    pub max_call_duration: Option<Duration>,
    /// The smallest session interval (RFC 4028 `Min-SE`) accepted.
    pub min_session_expires: u32,
    pub nonce_ttl: Duration,
    /// Wrong answers a digest nonce takes before it is refused whatever the answer.
    pub nonce_guesses: u32,
    /// The per-source protection of the carrier-facing listener (issue 15 item 3).
    pub guard: crate::call::guard::GuardSettings,
    /// At most one refusal log line per reason per this interval.
    pub refusal_log_interval: Duration,
    /// Offered digest algorithms, in challenge order.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// Networks the agent-facing listener takes new calls (outbound) from.
    pub agent_networks: Vec<ipnet::IpNet>,
    /// `USERNAME:PASSWORD` the agent runtime must answer a digest challenge with.
    pub agent_credentials: Option<PathBuf>,
    /// CA bundle trusted for TLS toward carriers and agents, beside the system roots.
    pub tls_ca: Option<PathBuf>,
    /// The call API's address (served only with `api_token_file`).
    pub api: SocketAddr,
    pub api_token_file: Option<PathBuf>,
    /// Where API-started calls are bridged to, unless the request names an `agentUri`.
    pub agent_uri: Option<String>,
    /// What a TCP or TLS peer can hold: connection caps and deadlines.
    pub stream_limits: transport::Limits,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Specs(#[from] WatchError),
    #[error(transparent)]
    Kube(#[from] SourceError),
    #[error(transparent)]
    NodeAddress(#[from] NodeAddressError),
    #[error("state folder {path}")]
    State { path: PathBuf, source: crate::source::credentials::StateError },
    #[error("TLS certificate: {0}")]
    Tls(std::io::Error),
    #[error("--agent-credentials {0}")]
    AgentCredentials(#[from] AgentCredentialsError),
    #[error(transparent)]
    TlsClient(#[from] TlsClientError),
    #[error("cannot start the media threads")]
    MediaThreads(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen { addr: String, source: std::io::Error },
    /// `--api-token-file` cannot be read (or holds no usable token).
    #[error(transparent)]
    ApiToken(#[from] TokenFileError),
    #[error("--records-file {path}")]
    Records { path: String, source: std::io::Error },
    #[error("session records' webhook: {0}")]
    Webhook(String),
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

/// The first config of a source, and what keeps the later ones coming.
struct FirstConfig {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    nonce_key: [u8; 32],
    /// Publishes later snapshots until it is stopped or aborted.
    source_task: SourceTask,
    /// The fleet's membership (the Kubernetes source only; `run` is alone).
    members: Option<watch::Receiver<Members>>,
}

enum SourceTask {
    Folder(tokio::task::JoinHandle<Result<(), WatchError>>),
    Kube(crate::source::kube::Running),
}

impl SourceTask {
    fn abort(&self) {
        match self {
            SourceTask::Folder(task) => task.abort(),
            SourceTask::Kube(running) => running.abort(),
        }
    }
}

/// Runs the gateway until SIGTERM/Ctrl-C and the drain that follows.
pub async fn serve(source: SpecSource, options: ServeOptions) -> Result<(), ServeError> {
    serve_until(source, options, super::shutdown_on_signal()).await
}

/// Runs the gateway until `shutdown` is cancelled and the drain that follows.
pub async fn serve_until(
    source: SpecSource,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
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
    // The system roots and --tls-ca: a bundle that cannot be used stops the start here, before
    // anything is bound.
    let tls_client = TlsClient::load(options.tls_ca.as_deref())?;
    // The call API's token is read before anything is bound: a bad file stops the start.
    let api_token = match &options.api_token_file {
        Some(path) => Some(TokenFile::open(path)?),
        None => None,
    };
    let metrics = Arc::new(GatewayMetrics::new());
    let health = Health::new();
    let report =
        GatewayReport::new(health.clone(), advertised_address(&listen, options.public_address));
    let reload_metrics = metrics.clone();
    let observer = ReloadObserver(Arc::new(move |ok| reload_metrics.config_reload(ok)));
    let compile_options = CompileOptions { region: options.region.clone() };
    // Cancelled after the drain: stops the admin endpoints and the spec source.
    let stop = CancellationToken::new();

    let mut public_address = options.public_address;
    let (first, admin_task) = match source {
        SpecSource::Folder { paths, state_dir } => {
            let endpoint = carrier_endpoint(&listen, public_address);
            let first = load_folder(paths, state_dir, compile_options, endpoint, observer, &stop)?;
            (first, None)
        }
        SpecSource::Kube { client, options: kube_options, node_address } => {
            // Up before the first config, so that probes see a live pod that is not ready.
            let admin_task = start_admin(&options, &metrics, &health, &report, &stop).await?;
            if let Some(node) = node_address {
                let fetch = fetch_node_public_address(
                    client.clone(),
                    &node.node,
                    &node.annotation,
                    node.retry,
                );
                tokio::select! {
                    found = fetch => match found {
                        Ok(ip) => {
                            public_address = Some(ip);
                            report.set_advertised_address(advertised_address(&listen, public_address));
                        }
                        Err(e) => {
                            admin_task.abort();
                            return Err(e.into());
                        }
                    },
                    () = shutdown.cancelled() => {
                        tracing::info!("stopping before the node's address was read");
                        stop.cancel();
                        let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
                        return Ok(());
                    }
                }
            }
            let mut running = KubeSource::new(client, kube_options, compile_options)
                .with_reload_observer(observer)
                .spawn(stop.clone().cancelled_owned());
            tracing::info!("waiting for the first config from the API server");
            let ready = tokio::select! {
                ready = running.ready() => ready,
                () = shutdown.cancelled() => {
                    tracing::info!("stopping before the first config");
                    stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
                    running.abort();
                    return Ok(());
                }
            };
            let ready = match ready {
                Ok(ready) => ready,
                Err(e) => {
                    admin_task.abort();
                    return Err(e.into());
                }
            };
            let first = FirstConfig {
                snapshots: ready.snapshots,
                nonce_key: ready.nonce_key,
                members: Some(running.members()),
                source_task: SourceTask::Kube(running),
            };
            (first, Some(admin_task))
        }
    };
    let snapshot_rx = first.snapshots.clone();
    record_config(&metrics, &report, &snapshot_rx.borrow());

    let agent_credentials = match &options.agent_credentials {
        Some(path) => Some(Arc::new(AgentCredentials::load(path)?)),
        None => None,
    };
    let records = match &options.records_file {
        Some(path) => Some(Arc::new(
            crate::observe::record::RecordFile::open(
                path,
                options.records_rotation,
                options.records_file_answered,
            )
            .map_err(|source| ServeError::Records { path: path.clone(), source })?,
        )),
        None => None,
    };
    // The pod's name in a cluster (the Deployment sets POD_NAME), else the host's.
    let gateway_name = ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "trunkline".to_string());
    // The webhook: its spool opened (records a crash left are found again) and its delivery
    // loop started; records are pushed by the call tasks as calls end.
    let outbox = match &options.records_webhook {
        None => None,
        Some(url) => {
            let key = match &options.records_webhook_key_file {
                Some(path) => {
                    Some(std::fs::read(path).map(|k| k.trim_ascii().to_vec()).map_err(|e| {
                        ServeError::Webhook(format!(
                            "--records-webhook-key-file {}: {e}",
                            path.display()
                        ))
                    })?)
                }
                None => None,
            };
            let mut hook =
                crate::observe::webhook::Webhook::parse(url, key).map_err(ServeError::Webhook)?;
            // HTTPS through the transports' TLS client: the system roots and the CA file.
            let ca_file = options.records_webhook_ca_file.as_deref();
            if hook.is_https() {
                let tls = TlsClient::load_for("--records-webhook-ca-file", ca_file)?;
                hook = hook.with_tls(Arc::new(WebhookTls(tls)));
            } else if let Some(path) = ca_file {
                return Err(ServeError::Webhook(format!(
                    "--records-webhook-ca-file {} is for an https:// webhook, not {url}",
                    path.display()
                )));
            }
            let spool = crate::observe::spool::Spool::open(
                &options.records_spool,
                options.records_spool_max_bytes,
            )
            .map_err(|e| {
                ServeError::Webhook(format!(
                    "--records-spool {}: {e}",
                    options.records_spool.display()
                ))
            })?;
            if spool.skipped() > 0 {
                tracing::warn!(
                    skipped = spool.skipped(),
                    "torn records skipped in the spool (a crash mid-write)"
                );
            }
            tracing::info!(waiting = spool.len(), webhook = ?hook, "session records go to the webhook");
            metrics.records_spool_bound(options.records_spool_max_bytes);
            metrics.records_spool(spool.len(), spool.bytes());
            let outbox = Arc::new(crate::observe::record::Outbox {
                spool: Arc::new(std::sync::Mutex::new(spool)),
                wake: Arc::new(tokio::sync::Notify::new()),
                metrics: metrics.clone(),
                answered: options.records_webhook_answered,
            });
            tokio::spawn(crate::observe::webhook::deliver(
                outbox.spool.clone(),
                hook,
                outbox.wake.clone(),
                Arc::new(MetricsReport(metrics.clone())),
            ));
            if options.records_spool_adopt {
                tokio::spawn(crate::observe::webhook::adopt(
                    outbox.spool.clone(),
                    outbox.wake.clone(),
                    crate::observe::webhook::ADOPT_EVERY,
                ));
            }
            // Durable in batches: one fsync per 200 ms window with records in it; what waits
            // is published at the same pace.
            let spool = outbox.spool.clone();
            let spool_metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    let (s, m) = (spool.clone(), spool_metrics.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(mut spool) = s.lock() {
                            // A failed fsync breaks the spool for good: said once.
                            let was_broken = spool.broken().is_some();
                            if let Err(e) = spool.sync()
                                && !was_broken
                            {
                                tracing::error!(error = %e, "the records spool cannot be synced: it takes no more records until the gateway restarts (the records file still gets them)");
                            }
                            m.records_spool(spool.len(), spool.bytes());
                        }
                    })
                    .await;
                }
            });
            Some(outbox)
        }
    };
    // This pod's share of the trunks' limits, current before the first call (module docs).
    let fleet = Arc::new(FleetShare::default());
    let members_task = match first.members.clone() {
        None => {
            metrics.set_fleet(FleetPosition::ALONE.index(), FleetPosition::ALONE.members());
            None
        }
        Some(mut rx) => {
            let current = rx.borrow_and_update().clone();
            take_members(&fleet, &metrics, &gateway_name, current.as_deref());
            let (fleet, metrics, name) = (fleet.clone(), metrics.clone(), gateway_name.clone());
            Some(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let members = rx.borrow_and_update().clone();
                    take_members(&fleet, &metrics, &name, members.as_deref());
                }
            }))
        }
    };
    let config = GatewayConfig {
        fleet,
        records,
        outbox,
        gateway_name,
        public_address,
        header_prefix: options.header_prefix.clone(),
        agent_timeout: options.agent_timeout,
        transfer_timeout: options.transfer_timeout,
        media_timeout: options.media_timeout,
        max_hold: options.max_hold,
        max_call_duration: options.max_call_duration,
        min_session_expires: options.min_session_expires,
        agent_networks: options.agent_networks.clone(),
        agent_credentials,
        agent_uri: options.agent_uri.clone(),
        guard: options.guard.clone(),
        refusal_log_interval: options.refusal_log_interval,
        ..GatewayConfig::default()
    };
    let digest = DigestServer::new(
        options.realm.clone(),
        NonceKey::from_bytes(first.nonce_key),
        options.nonce_ttl,
    )
    .with_algorithms(&options.digest_algorithms)
    .with_guess_limit(options.nonce_guesses);
    let ports = Arc::new(PortAllocator::with_metrics(
        options.rtp_ports.0,
        options.rtp_ports.1,
        metrics.port_pool(),
    ));
    // Each call takes two pairs (a bridged transfer a third while it rings): the range's
    // capacity in calls is logged with the serving line (docs/architecture.md).
    let pairs = ports.capacity();
    let gateway =
        Gateway::new(config, snapshot_rx.clone(), digest, metrics.clone(), health.clone(), ports);
    // One media thread per core: each a current-thread runtime with its own epoll.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let media = MediaThreads::start(cores).map_err(ServeError::MediaThreads)?;
    gateway.use_media_threads(Arc::new(media));
    let transports = Transports::new(gateway.sink(), options.stream_limits);
    gateway.attach(transports.clone());
    metrics.export_sip_connections(
        &transport::StreamEvent::TRANSPORTS,
        &transport::Refusal::ALL.map(transport::Refusal::as_str),
        &transport::CloseReason::ALL.map(transport::CloseReason::as_str),
    );
    let stream_metrics = metrics.clone();
    transports.on_stream_event(move |event| match event {
        transport::StreamEvent::Refused { reason, .. } => {
            stream_metrics.sip_connection_refused(event.transport(), reason.as_str())
        }
        transport::StreamEvent::Closed { reason, .. } => {
            stream_metrics.sip_connection_closed(event.transport(), reason.as_str())
        }
    });
    metrics.export_tls_client_failures(&TlsFailure::ALL.map(TlsFailure::as_str));
    let tls_metrics = metrics.clone();
    transports.use_tls_client(Arc::new(
        tls_client.on_failure(move |reason| tls_metrics.tls_client_failure(reason.as_str())),
    ));

    let tls = match &options.tls {
        Some((cert, key)) => {
            Some(Arc::new(TlsFiles::load(cert.clone(), key.clone()).map_err(ServeError::Tls)?))
        }
        None => None,
    };
    let mut carrier_listeners = Vec::new();
    for (zone, addrs) in [(Zone::Carrier, &listen), (Zone::Internal, &internal)] {
        for at in addrs {
            let bound = transports
                .listen(*at, zone, tls.clone())
                .await
                .map_err(|source| ServeError::Listen { addr: at.to_string(), source })?;
            gateway.add_listener(Listener { zone, protocol: at.protocol, addr: bound });
            if zone == Zone::Carrier {
                carrier_listeners.push((at.protocol, bound));
            }
            tracing::info!(zone = ?zone, "listening on {}", ListenAddr { protocol: at.protocol, addr: bound });
        }
    }

    let admin_task = match admin_task {
        Some(task) => task,
        None => start_admin(&options, &metrics, &health, &report, &stop).await?,
    };
    // The call API (only with a token file); like the admin endpoints it stays up through the
    // drain, so that calls in progress can still be read and hung up (new ones get `draining`).
    let api_task = match api_token {
        Some(token) => {
            let api = tokio::net::TcpListener::bind(options.api)
                .await
                .map_err(|source| ServeError::Listen { addr: options.api.to_string(), source })?;
            Some(tokio::spawn(serve_api(
                api,
                gateway.call_control(),
                token,
                options.agent_networks.clone(),
                stop.clone().cancelled_owned(),
            )))
        }
        None => None,
    };

    // Config reloads: the source publishes snapshots; the gateway reads the latest.
    let metrics_task = {
        let (metrics, report) = (metrics.clone(), report.clone());
        let mut rx = snapshot_rx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let snapshot = rx.borrow_and_update().clone();
                record_config(&metrics, &report, &snapshot);
            }
        })
    };

    if matches!(first.source_task, SourceTask::Folder(_)) {
        // `run` has no status to write them to: the carrier's allowlist is told here.
        let table = snapshot_rx.borrow().table.clone();
        probes::announce_source_addresses(&table, public_address, &carrier_listeners).await;
    }
    // OPTIONS to every OutboundTrunk, following reloads; stopped with the admin endpoints.
    let prober = probes::spawn(&gateway, snapshot_rx.clone(), report.clone(), stop.clone());
    let registrations = crate::call::registration::spawn(
        &gateway,
        snapshot_rx.clone(),
        report.clone(),
        stop.clone(),
    );

    health.set_ready(true);
    tracing::info!(
        rtp_ports = ?options.rtp_ports, rtp_port_pairs = pairs, calls_at_once = pairs / 2,
        "trunkline is serving"
    );

    shutdown.cancelled().await;
    tracing::info!(timeout = ?options.drain_timeout, calls = gateway.active_calls(), "draining: new calls get 503");
    gateway.drain();
    let deadline = tokio::time::Instant::now() + options.drain_timeout;
    while gateway.active_calls() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Calls still up at the deadline are hung up (BYE on both legs) rather than cut off, so
    // that their peers know and their session records are written before the process ends.
    if gateway.active_calls() > 0 {
        let asked = gateway.hang_up_all("the gateway stopped: drain timeout");
        tracing::warn!(calls = asked, "drain timeout: hanging up the calls left");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while gateway.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The records of the calls that just ended: written, spooled, and the spool synced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while gateway.records_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = gateway.sync_records().await {
        tracing::error!(error = %e, "the records spool cannot be synced at stop");
    }
    tracing::info!(
        calls_left = gateway.active_calls(),
        records_left = gateway.records_in_flight(),
        "stopping"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    if let Some(api_task) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), prober).await;
    // Each registration unregisters on the way out (2 s at most each, best effort).
    let _ = tokio::time::timeout(Duration::from_secs(3), registrations).await;
    first.source_task.abort();
    metrics_task.abort();
    if let Some(task) = members_task {
        task.abort();
    }
    Ok(())
}

/// Where the pod `name` stands among `members` (`None`: no membership published, alone), into
/// the admission's share and the metrics.
fn take_members(
    fleet: &FleetShare,
    metrics: &GatewayMetrics,
    name: &str,
    members: Option<&[String]>,
) {
    let position = members.map_or(FleetPosition::ALONE, |m| FleetPosition::of(name, m));
    if fleet.get() != position {
        tracing::info!(
            pod = name,
            index = position.index(),
            members = position.members(),
            "fleet position {position}: each trunk's limits are divided over {} gateway pods",
            position.members()
        );
    }
    fleet.set(position);
    metrics.set_fleet(position.index(), position.members());
}

/// Loads the folder (an error when it cannot be served) and starts its watch.
fn load_folder(
    paths: Vec<PathBuf>,
    state_dir: PathBuf,
    compile_options: CompileOptions,
    endpoint: Option<String>,
    observer: ReloadObserver,
    stop: &CancellationToken,
) -> Result<FirstConfig, ServeError> {
    let state = StateDir::open(&state_dir)
        .map_err(|source| ServeError::State { path: state_dir.clone(), source })?;
    let nonce_key = state
        .nonce_key()
        .map_err(|source| ServeError::State { path: state_dir.clone(), source })?;
    let mut source = FolderSource::new(paths, compile_options, Some(state));
    if let Some(endpoint) = endpoint {
        source = source.with_carrier_endpoint(endpoint);
    }
    let source = source.with_reload_observer(observer);
    let first = source.load()?;
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(first.snapshot));
    let task = tokio::spawn(source.watch(snapshot_tx, stop.clone().cancelled_owned()));
    Ok(FirstConfig { snapshots, nonce_key, source_task: SourceTask::Folder(task), members: None })
}

/// What carriers should point at, as printed next to generated credentials.
fn carrier_endpoint(listen: &[ListenAddr], public_address: Option<IpAddr>) -> Option<String> {
    listen.first().map(|l| {
        let ip = public_address.unwrap_or(l.addr.ip());
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
    })
}

/// The address a gateway advertises toward carriers, for its status report: the public address
/// when it has one, else the first carrier-facing listener's IP unless it is a wildcard.
fn advertised_address(listen: &[ListenAddr], public_address: Option<IpAddr>) -> Option<IpAddr> {
    public_address.or_else(|| listen.first().map(|l| l.addr.ip()).filter(|ip| !ip.is_unspecified()))
}

/// Binds the admin endpoints and serves them until `stop` is cancelled.
async fn start_admin(
    options: &ServeOptions,
    metrics: &Arc<GatewayMetrics>,
    health: &Arc<Health>,
    report: &Arc<GatewayReport>,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, ServeError> {
    let admin = tokio::net::TcpListener::bind(options.admin)
        .await
        .map_err(|source| ServeError::Listen { addr: options.admin.to_string(), source })?;
    tracing::info!("admin endpoints on http://{}", admin.local_addr().unwrap_or(options.admin));
    Ok(tokio::spawn(serve_admin(
        admin,
        metrics.clone(),
        health.clone(),
        Some(report.clone()),
        stop.clone().cancelled_owned(),
    )))
}

/// A new table is served: its hash goes to `/metrics` and to the status report.
fn record_config(metrics: &GatewayMetrics, report: &GatewayReport, snapshot: &Snapshot) {
    report.set_config_hash(&snapshot.hash);
    metrics.set_config(&snapshot.hash, snapshot.table.inbound.len(), snapshot.table.number_count());
}

/// The webhook's TLS sessions, through the transports' TLS client (`observe` does not import
/// `sip`); failures are the webhook's to log, not counted as SIP TLS failures.
struct WebhookTls(TlsClient);

impl crate::observe::webhook::TlsConnect for WebhookTls {
    fn connect<'a>(
        &'a self,
        stream: tokio::net::TcpStream,
        host: &'a str,
        deadline: tokio::time::Instant,
    ) -> futures::future::BoxFuture<
        'a,
        std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    > {
        Box::pin(async move { Ok(self.0.connect(stream, host, deadline).await?) })
    }
}

/// The webhook's deliveries, counted in `trunkline_session_records_total{sink="webhook"}`.
struct MetricsReport(Arc<GatewayMetrics>);

impl crate::observe::webhook::Report for MetricsReport {
    fn delivered(&self) {
        self.0.session_record("webhook", "delivered");
    }

    fn failed(&self, _error: &str) {
        self.0.session_record("webhook", "failed");
    }
}
