//! What the operator's leader does, for as long as it holds the Lease ([`lead`]):
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
//! The process around it (settings, admin endpoints, the election, the stop signal) is
//! `runtime::operator`, which runs [`lead`] under `leader::run_while_leader`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use prometheus::IntCounterVec;
use tokio::sync::watch;

use super::controller::prober::AddressPolicy;
use super::controller::{ControllerConfig, run_controllers};
use super::credentials::create_api_token_secret;
use super::fleet::{carrier_service_name, render_fleet};
use super::metrics::OperatorMetrics;
use super::settings::OperatorSettings;
use super::status::sip_endpoint;
use super::tracker::FleetTracker;

/// How often the fleet is applied again while nothing fails.
pub const FLEET_RESYNC: Duration = Duration::from_secs(60);
/// First and longest wait before applying the fleet again after a failure.
const FLEET_RETRY: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

/// What the leader does: the fleet loop and the controllers, until aborted. The controllers
/// watch `settings.watch_namespace` (all namespaces when `None`).
pub async fn lead(client: Client, settings: Arc<OperatorSettings>, metrics: Arc<OperatorMetrics>) {
    let (endpoint_tx, endpoint_rx) = watch::channel(static_endpoint(&settings));
    let fleet_applies = metrics.fleet_applies().clone();
    let watch_namespace = settings.watch_namespace.clone();
    tokio::select! {
        _ = fleet_loop(client.clone(), settings.clone(), endpoint_tx, fleet_applies) => {}
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
    fleet_applies: IntCounterVec,
) {
    let tracker = FleetTracker::new(client.clone(), &settings);
    let services: Api<Service> = Api::namespaced(client.clone(), &settings.namespace);
    let mut retry = FLEET_RETRY.0;
    loop {
        // The gateways mount the generated API token: it exists before they are rolled out, or
        // the fleet stays as it was until it can be made.
        let applied = match create_api_token_secret(&client, &settings).await {
            Ok(_) => tracker
                .apply(render_fleet(&settings))
                .await
                .map_err(|e| (e.category(), e.to_string())),
            Err(e) => Err((e.category(), e.to_string())),
        };
        let wait = match applied {
            Ok(report) => {
                fleet_applies.with_label_values(&["ok"]).inc();
                if !report.deleted.is_empty() {
                    let deleted: Vec<String> =
                        report.deleted.iter().map(|o| o.to_string()).collect();
                    tracing::info!(deleted = ?deleted, "removed fleet objects the settings no longer call for");
                }
                tracing::debug!(applied = report.applied.len(), "fleet applied");
                retry = FLEET_RETRY.0;
                FLEET_RESYNC
            }
            Err((category, e)) => {
                fleet_applies.with_label_values(&[category]).inc();
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
}
