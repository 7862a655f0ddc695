//! `trunkline operator`: the process. Reads the settings file, serves the admin endpoints on
//! every replica, joins the leader election, and while this replica holds the Lease runs what
//! the leader does (`operator::lead`: the fleet loop and the controllers). A replica that loses
//! the Lease stops them at once (`leader::run_while_leader`). `/readyz` is 200 once the API
//! server answered, on standby replicas too (a rollout of two replicas must not wait for the one
//! that cannot lead); `/healthz` is 200 while the process runs. SIGTERM or Ctrl-C stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::observe::admin::{Health, serve_admin};
use crate::operator::lead::lead;
use crate::operator::leader::{self, LeaseSettings};
use crate::operator::metrics::OperatorMetrics;
use crate::operator::settings::{OperatorSettings, SettingsError};

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
    let health = Health::new();
    // Cancelled by SIGTERM/Ctrl-C; `stop`, once the leader's work is over, ends the admin server.
    let shutdown = super::shutdown_on_signal();
    let stop = CancellationToken::new();
    let admin = tokio::net::TcpListener::bind(options.admin)
        .await
        .map_err(|source| OperatorError::Listen { addr: options.admin, source })?;
    let admin_task = tokio::spawn(serve_admin(
        admin,
        metrics.clone(),
        health.clone(),
        None,
        stop.clone().cancelled_owned(),
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
        move || lead(client.clone(), settings.clone(), metrics.clone())
    };
    let leader_gauge = metrics.leader().clone();
    leader::run_while_leader(
        election.is_leader,
        work,
        move |leading| leader_gauge.set(i64::from(leading)),
        shutdown.cancelled_owned(),
    )
    .await;
    tracing::info!("stopping");
    // The election's receiver is gone: its task ends (and gives the Lease up).
    let _ = tokio::time::timeout(Duration::from_secs(5), election.task).await;
    stop.cancel();
    ready_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    Ok(())
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
    use super::*;

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
