//! `trunkline operator`: the assembly. Reads the settings file, serves the admin endpoints on
//! every replica, joins the leader election, and while this replica holds the Lease runs:
//!
//! - the fleet loop: renders the gateway fleet from the settings and applies it through the
//!   tracker (owned objects applied, orphans deleted) at start and every [`FLEET_RESYNC`] (drift
//!   is put back), retrying failures with backoff; it also learns the carrier-facing endpoint
//!   (`publicAddress`, else the carrier Service's load-balancer address) for trunk status;
//! - the controllers (`controller::run_controllers`), restarted with the new endpoint when it
//!   changes (rare: the load balancer got or lost its address). Gateway pods that come and go
//!   change the other addresses in trunk status without a restart: the controllers' prober
//!   follows them.
//!
//! A replica that loses the Lease stops both at once (`leader::run_while_leader`). `/readyz` is
//! 200 once the API server answered, on standby replicas too (a rollout of two replicas must not
//! wait for the one that cannot lead); `/healthz` is 200 while the process runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::watch;

use super::controller::prober::AddressPolicy;
use super::controller::{ControllerConfig, run_controllers};
use super::fleet::{carrier_service_name, render_fleet};
use super::leader::{self, LeaseSettings};
use super::metrics::OperatorMetrics;
use super::settings::{OperatorSettings, SettingsError};
use super::status::sip_endpoint;
use super::tracker::FleetTracker;
use crate::call::serve::{shutdown_signal, stopped};
use crate::observe::admin::{Health, MetricsPage, serve_admin};

/// How often the fleet is applied again while nothing fails.
pub const FLEET_RESYNC: Duration = Duration::from_secs(60);
/// First and longest wait before applying the fleet again after a failure.
const FLEET_RETRY: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

/// Everything `trunkline operator` is told on its command line.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// The settings file; `None`: the defaults.
    pub config: Option<PathBuf>,
    pub admin: SocketAddr,
    /// The Lease; default `<fleet>-operator`.
    pub lease_name: Option<String>,
    /// Where the Lease lives (the operator's own namespace); default: the fleet's namespace.
    pub lease_namespace: Option<String>,
    /// This replica, in the Lease; default: the host name.
    pub identity: Option<String>,
    /// Watch the three kinds and Secrets in this namespace only.
    pub watch_namespace: Option<String>,
    pub lease_duration: Duration,
    pub lease_grace: Duration,
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("settings: {field}: {message}")]
    InvalidDefaults { field: String, message: String },
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error(
        "--watch-namespace {flag} and the settings' watchNamespace {settings} differ: the \
         gateways would serve trunks the operator does not validate"
    )]
    WatchNamespaceConflict { flag: String, settings: String },
}

/// The one namespace the operator watches and passes on to the gateways: `--watch-namespace`
/// or the settings' `watchNamespace` (the chart sets both alike); both set and different is
/// refused.
fn watch_namespace(
    flag: Option<&str>,
    settings: Option<&str>,
) -> Result<Option<String>, OperatorError> {
    match (flag, settings) {
        (Some(flag), Some(settings)) if flag != settings => {
            Err(OperatorError::WatchNamespaceConflict {
                flag: flag.to_string(),
                settings: settings.to_string(),
            })
        }
        (flag, settings) => Ok(flag.or(settings).map(str::to_string)),
    }
}

impl MetricsPage for OperatorMetrics {
    fn render(&self) -> String {
        OperatorMetrics::render(self)
    }
}

/// The assembly's own metrics, registered in the operator's registry.
#[derive(Clone)]
struct AssemblyMetrics {
    leader: IntGauge,
    fleet_applies: IntCounterVec,
}

impl AssemblyMetrics {
    fn register(metrics: &OperatorMetrics) -> AssemblyMetrics {
        // Registered with the others (OperatorMetrics::metric_names lists them).
        AssemblyMetrics {
            leader: metrics.leader().clone(),
            fleet_applies: metrics.fleet_applies().clone(),
        }
    }
}

/// Runs the operator until SIGTERM/Ctrl-C.
pub async fn run_operator(options: OperatorOptions) -> Result<(), OperatorError> {
    let settings = match &options.config {
        Some(path) => OperatorSettings::load(path)?,
        None => {
            let s = OperatorSettings::default();
            s.validate().map_err(|e| OperatorError::InvalidDefaults {
                field: e.field.clone(),
                message: e.message.clone(),
            })?;
            s
        }
    };
    let mut settings = settings;
    settings.watch_namespace =
        watch_namespace(options.watch_namespace.as_deref(), settings.watch_namespace.as_deref())?;
    let settings = Arc::new(settings);
    let client = Client::try_default().await.map_err(OperatorError::Client)?;

    let metrics = Arc::new(OperatorMetrics::new());
    let assembly = AssemblyMetrics::register(&metrics);
    let health = Health::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::net::TcpListener::bind(options.admin)
        .await
        .map_err(|source| OperatorError::Listen { addr: options.admin, source })?;
    let admin_task = tokio::spawn(serve_admin(
        admin,
        metrics.clone(),
        health.clone(),
        None,
        stopped(stop_rx.clone()),
    ));
    let ready_task = tokio::spawn(mark_ready_when_connected(client.clone(), health.clone()));

    let lease = LeaseSettings {
        name: options.lease_name.clone().unwrap_or_else(|| format!("{}-operator", settings.name)),
        namespace: options.lease_namespace.clone().unwrap_or_else(|| settings.namespace.clone()),
        identity: options.identity.clone().unwrap_or_else(default_identity),
        duration: options.lease_duration,
        grace: options.lease_grace,
    };
    tracing::info!(
        fleet = %settings.name,
        namespace = %settings.namespace,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        identity = %lease.identity,
        "trunkline operator starting"
    );
    let election = leader::elect(client.clone(), &lease).await?;

    let work = {
        let (client, settings, metrics) = (client.clone(), settings.clone(), metrics.clone());
        let (assembly, watch_namespace) = (assembly.clone(), settings.watch_namespace.clone());
        move || {
            lead(
                client.clone(),
                settings.clone(),
                metrics.clone(),
                assembly.clone(),
                watch_namespace.clone(),
            )
        }
    };
    let leader_gauge = assembly.leader.clone();
    leader::run_while_leader(
        election.is_leader,
        work,
        move |leading| leader_gauge.set(i64::from(leading)),
        shutdown_signal(),
    )
    .await;
    tracing::info!("stopping");
    // The election's receiver is gone: its task ends (and gives the Lease up).
    let _ = tokio::time::timeout(Duration::from_secs(5), election.task).await;
    let _ = stop_tx.send(true);
    ready_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    Ok(())
}

/// What the leader does: the fleet loop and the controllers, until aborted.
async fn lead(
    client: Client,
    settings: Arc<OperatorSettings>,
    metrics: Arc<OperatorMetrics>,
    assembly: AssemblyMetrics,
    watch_namespace: Option<String>,
) {
    let (endpoint_tx, endpoint_rx) = watch::channel(static_endpoint(&settings));
    tokio::select! {
        _ = fleet_loop(client.clone(), settings.clone(), endpoint_tx, assembly) => {}
        _ = controllers_loop(client, settings, metrics, endpoint_rx, watch_namespace) => {}
    }
}

async fn controllers_loop(
    client: Client,
    settings: Arc<OperatorSettings>,
    metrics: Arc<OperatorMetrics>,
    mut endpoint: watch::Receiver<Option<String>>,
    watch_namespace: Option<String>,
) {
    loop {
        let config =
            controller_config(&settings, endpoint.borrow_and_update().clone(), &watch_namespace);
        tokio::select! {
            () = run_controllers(client.clone(), config, metrics.clone()) => {
                tracing::warn!("the controllers stopped; starting them again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            changed = endpoint.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = endpoint.borrow().clone();
                tracing::info!(endpoint = ?now, "the carrier endpoint changed: trunk status follows");
            }
        }
    }
}

/// What the controllers are told, from the settings.
pub fn controller_config(
    settings: &OperatorSettings,
    carrier_endpoint: Option<String>,
    watch_namespace: &Option<String>,
) -> ControllerConfig {
    ControllerConfig {
        fleet_name: settings.name.clone(),
        fleet_namespace: settings.namespace.clone(),
        bundle_secret: settings.credentials_secret.clone(),
        region: settings.region.clone(),
        carrier_endpoint,
        source_addresses: settings.egress_addresses.iter().map(|a| a.to_string()).collect(),
        sip_port: settings.sip_port,
        admin_port: settings.admin_port,
        watch_namespace: watch_namespace.clone(),
        owner_deployment: settings.operator_deployment.clone(),
        address_policy: AddressPolicy::from_settings(settings),
    }
}

/// The carrier endpoint the settings name: `publicAddress` and the SIP port.
pub fn static_endpoint(settings: &OperatorSettings) -> Option<String> {
    settings.public_address.map(|ip| sip_endpoint(&ip.to_string(), settings.sip_port))
}

/// Applies the fleet now and every [`FLEET_RESYNC`]; after each apply, learns the endpoint from
/// the carrier Service when the settings give none.
async fn fleet_loop(
    client: Client,
    settings: Arc<OperatorSettings>,
    endpoint: watch::Sender<Option<String>>,
    metrics: AssemblyMetrics,
) {
    let tracker = FleetTracker::new(client.clone(), &settings);
    let services: Api<Service> = Api::namespaced(client, &settings.namespace);
    let mut retry = FLEET_RETRY.0;
    loop {
        let wait = match tracker.apply(render_fleet(&settings)).await {
            Ok(report) => {
                metrics.fleet_applies.with_label_values(&["ok"]).inc();
                if !report.deleted.is_empty() {
                    let deleted: Vec<String> =
                        report.deleted.iter().map(|o| o.to_string()).collect();
                    tracing::info!(deleted = ?deleted, "removed fleet objects the settings no longer call for");
                }
                tracing::debug!(applied = report.applied.len(), "fleet applied");
                retry = FLEET_RETRY.0;
                FLEET_RESYNC
            }
            Err(e) => {
                metrics.fleet_applies.with_label_values(&[e.category()]).inc();
                tracing::warn!(error = %e, retry_in = ?retry, "applying the gateway fleet failed");
                let wait = retry;
                retry = (retry * 2).min(FLEET_RETRY.1);
                wait
            }
        };
        if settings.public_address.is_none() {
            match services.get_opt(&carrier_service_name(&settings)).await {
                Ok(service) => {
                    let learned =
                        service.as_ref().and_then(|s| load_balancer_endpoint(s, settings.sip_port));
                    endpoint.send_if_modified(|current| {
                        let changed = *current != learned;
                        *current = learned.clone();
                        changed
                    });
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the carrier Service"),
            }
        }
        // Until the load balancer has an address, look again sooner.
        let wait = if settings.public_address.is_none() && endpoint.borrow().is_none() {
            wait.min(Duration::from_secs(10))
        } else {
            wait
        };
        tokio::time::sleep(wait).await;
    }
}

/// `sip:<ingress>:<port>` from a Service's load-balancer status (an IP, else a host name).
pub fn load_balancer_endpoint(service: &Service, port: u16) -> Option<String> {
    let ingress = service.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?;
    let host = ingress.ip.as_deref().or(ingress.hostname.as_deref())?;
    Some(sip_endpoint(host, port))
}

/// Ready once the API server answered: from then on this replica can lead.
async fn mark_ready_when_connected(client: Client, health: Arc<Health>) {
    let mut wait = Duration::from_millis(500);
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "connected to the API server");
                health.set_ready(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "the API server does not answer");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("trunkline-operator-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    use super::*;

    fn settings(text: &str) -> OperatorSettings {
        OperatorSettings::parse(text, Path::new("operator.yaml")).expect("valid settings")
    }

    #[test]
    fn the_endpoint_comes_from_the_public_address_and_the_sip_port() {
        assert_eq!(
            static_endpoint(&settings("publicAddress: 203.0.113.10\nreplicas: 1\nsipPort: 5070\n"))
                .as_deref(),
            Some("sip:203.0.113.10:5070")
        );
        assert_eq!(
            static_endpoint(&settings("publicAddress: 2001:db8::7\nreplicas: 1\n")).as_deref(),
            Some("sip:[2001:db8::7]:5060")
        );
        assert_eq!(static_endpoint(&settings("{}")), None);
    }

    #[test]
    fn a_load_balancer_address_becomes_the_endpoint_when_the_settings_name_none() {
        let service = |ingress: LoadBalancerIngress| Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus { ingress: Some(vec![ingress]) }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        };
        let by_ip =
            service(LoadBalancerIngress { ip: Some("198.51.100.7".into()), ..Default::default() });
        assert_eq!(load_balancer_endpoint(&by_ip, 5060).as_deref(), Some("sip:198.51.100.7:5060"));
        let by_name = service(LoadBalancerIngress {
            hostname: Some("lb.example.com".into()),
            ..Default::default()
        });
        assert_eq!(
            load_balancer_endpoint(&by_name, 5060).as_deref(),
            Some("sip:lb.example.com:5060")
        );
        assert_eq!(load_balancer_endpoint(&Service::default(), 5060), None);
    }

    #[test]
    fn the_controllers_get_the_fleets_names_region_and_egress_addresses() {
        let s = settings(
            "name: edge\nnamespace: voice-gw\nregion: eu\ncredentialsSecret: edge-creds\n\
             egressAddresses: [198.51.100.7, 198.51.100.8]\n",
        );
        let c = controller_config(&s, Some("sip:198.51.100.7:5060".into()), &Some("voice".into()));
        assert_eq!((c.fleet_name.as_str(), c.fleet_namespace.as_str()), ("edge", "voice-gw"));
        assert_eq!(c.bundle_secret, "edge-creds");
        assert_eq!(c.region.as_deref(), Some("eu"));
        assert_eq!(c.source_addresses, vec!["198.51.100.7", "198.51.100.8"]);
        assert_eq!(c.carrier_endpoint.as_deref(), Some("sip:198.51.100.7:5060"));
        assert_eq!(c.watch_namespace.as_deref(), Some("voice"));
        assert_eq!((c.sip_port, c.admin_port), (5060, 9090));
    }

    #[test]
    fn the_watched_namespace_is_the_flags_or_the_settings_and_never_two() {
        assert_eq!(watch_namespace(None, None).unwrap(), None);
        assert_eq!(watch_namespace(Some("voice"), None).unwrap().as_deref(), Some("voice"));
        assert_eq!(watch_namespace(None, Some("voice")).unwrap().as_deref(), Some("voice"));
        assert_eq!(
            watch_namespace(Some("voice"), Some("voice")).unwrap().as_deref(),
            Some("voice")
        );
        let error = watch_namespace(Some("voice"), Some("other")).unwrap_err();
        assert!(error.to_string().contains("--watch-namespace voice"), "{error}");
    }
}
