//! The gateway fleet as Kubernetes objects: [`render_fleet`] turns the operator's
//! [`OperatorSettings`] into every object the fleet needs. Pure and deterministic (no clock, no
//! client, ordered maps), so an unchanged fleet applies as a no-op and golden files
//! (`tests/golden/fleet/`) pin the output. The tracker (`operator::tracker`) applies the result
//! and deletes what a previous rendering had and this one has not.
//!
//! The objects, in the order they are applied:
//!
//! | object | name | why |
//! | --- | --- | --- |
//! | ServiceAccount | `<name>-gateway` | the gateways' identity |
//! | Role + RoleBinding | `<name>-gateway` | read the one credentials Secret (by name), nothing else: a gateway writes nothing to the API server (it reports on its admin endpoint) |
//! | Service | `<name>-carrier` | carrier-facing SIP: UDP+TCP `sipPort`, TCP `tls.port` with TLS |
//! | Service | `<name>-internal` | agent-facing SIP (ClusterIP): UDP+TCP `internalPort`, TCP `api.port` with the call API |
//! | Deployment or DaemonSet | `<name>-gateway` | the gateway pods |
//! | PodDisruptionBudget | `<name>-gateway` | Deployment mode, when enabled |
//!
//! Every object carries `trunkline.dev/fleet: <name>` and
//! `app.kubernetes.io/managed-by: trunkline-operator` (the tracker finds orphans by them). The
//! operator finds the gateway pods with [`gateway_pod_selector`].
//!
//! **RTP and Services.** A Service cannot hold a port range, and a thousand single-port entries
//! would make every Service update, Endpoints slice and load balancer re-sync heavy (clouds also
//! cap the ports of one load balancer). So the Services carry SIP only: carriers reach RTP at the
//! address the gateway writes into its SDP, which must route to the pod that holds the call. The
//! settings' `media_path` decides which address that is and refuses a combination that cannot
//! work: each node's own address on the host network (the default: the gateway reads its Node,
//! `--public-address-node $(NODE_NAME)`), the pod IP on routable pod networks
//! (`--public-address $(POD_IP)`), or one fixed address for a single gateway (host ports
//! off the host network). The gateways' cluster-wide read access (the three kinds, Nodes) comes
//! with the Helm chart, not from here: the operator creates no cluster-scoped object.
//! The RTP ports are listed as `containerPorts` only when the range is small (at most
//! [`MAX_LISTED_RTP_PORTS`]): they are informational there (with `hostNetwork` they also make
//! the scheduler reserve them as host ports), and a large list only bloats the pod spec.
//!
//! **Zones.** The carrier-facing listeners (SIP, TLS) bind every address of the pod (`0.0.0.0`):
//! carriers reach a node on any of its addresses. The agent-facing listener (`--internal-listen`),
//! the call API (`--api`) and the admin endpoints (`--admin`: metrics, probes, the report the
//! operator reads) bind `$(POD_IP)` only, the pod's `status.podIP` through the downward API
//! ([`POD_IP_REF`]), in every topology: off the host network that is the pod's primary (CNI)
//! address, so a secondary interface (Multus, a public VLAN) and loopback never carry them; on
//! the host network it is the node's primary address as the kubelet reports it (its
//! `--node-ip`, by default the first InternalIP): a cloud node's private VPC address, never the
//! public address that is NATed to it. A bare-metal node whose primary address is public must be
//! given its private one with the kubelet's `--node-ip` (the operator cannot tell the two
//! apart): NetworkPolicies do not apply to host-network pods, so `agentNetworks` and the node's
//! firewall are the guards there. The kubelet's probes, the `-internal` Service and the operator's
//! prober all reach the pod at that address.
//!
//! **Secrets as files.** The other Secrets a gateway uses are volumes, read-only, mode 0440
//! (the pod's group), each with only the keys the gateway reads: the TLS certificate
//! (`tls.secretName`, [`TLS_MOUNT_PATH`]), the CA bundle toward carriers and agents
//! (`tls.caSecret`'s `ca.crt`, [`TLS_CA_MOUNT_PATH`]), the call API's bearer token
//! (`api`'s `token`, [`API_TOKEN_MOUNT_PATH`]) and the agent runtime's digest credentials
//! (`agentCredentialsSecret`'s `username` and `password`, [`AGENT_CREDENTIALS_MOUNT_PATH`]).
//! The kubelet reads them, not the gateway's ServiceAccount, so the gateways' Role keeps its one
//! Secret; a rotated Secret reaches the files without a restart (no `subPath`). The records'
//! webhook Secrets are mounted the same way, each with its one key under a fixed file name
//! (`records.webhook.keySecret` as [`RECORDS_WEBHOOK_KEY_MOUNT_PATH`]`/key`,
//! `records.webhook.caSecret` as [`RECORDS_WEBHOOK_CA_MOUNT_PATH`]`/ca.crt`).
//!
//! **Security limits.** The settings' `guard`, `connections` and call lifetime become the
//! gateway's flags of the same names (`--source-invite-rate`, `--max-connections`,
//! `--max-call-duration`, ...), each passed whether changed or not, like the other gateway
//! flags (settings' module docs, "Security limits").
//!
//! **Session records** ([`records_args`]): `records.stdout` is `--records-file -`. A webhook
//! adds `--records-webhook` and its spool, on a volume since the root filesystem is read-only,
//! at [`RECORDS_SPOOL_MOUNT_PATH`]: an emptyDir (`sizeLimit` from `records.spool.maxBytes`) that
//! is the spool itself, or the fleet's shared claim, in which each pod spools into its own
//! directory `$(POD_NAME)` and adopts the spools of pods that are gone
//! (`--records-spool-adopt`). `settings` says what each gives.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Sysctl, TopologySpreadConstraint, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::settings::{
    AddressSource, FleetMode, MediaPath, OperatorSettings, ServiceType, SpoolVolume,
    WEBHOOK_CA_SECRET_KEY, WEBHOOK_KEY_SECRET_KEY,
};
use super::{FLEET_LABEL, MANAGED_BY};

/// RTP ranges up to this many ports are listed as container ports (see the module docs).
pub const MAX_LISTED_RTP_PORTS: u32 = 100;

/// The uid and gid the gateway runs as (the distroless `nonroot` user).
pub const GATEWAY_UID: i64 = 65532;

/// Where the TLS Secret is mounted in the gateway container.
pub const TLS_MOUNT_PATH: &str = "/etc/trunkline/tls";

/// Where `tls.caSecret` (its `ca.crt`) is mounted: `--tls-ca <this>/ca.crt`.
pub const TLS_CA_MOUNT_PATH: &str = "/etc/trunkline/tls-ca";

/// Where the call API's token Secret (its `token`) is mounted: `--api-token-file <this>/token`.
pub const API_TOKEN_MOUNT_PATH: &str = "/etc/trunkline/api";

/// Where `agentCredentialsSecret` (its `username` and `password`) is mounted: the directory form
/// of `--agent-credentials`.
pub const AGENT_CREDENTIALS_MOUNT_PATH: &str = "/etc/trunkline/agent-credentials";

/// Where `records.webhook.keySecret` is mounted, its key as the file `key`:
/// `--records-webhook-key-file <this>/key`.
pub const RECORDS_WEBHOOK_KEY_MOUNT_PATH: &str = "/etc/trunkline/records-webhook-key";

/// Where `records.webhook.caSecret` is mounted, its key as the file `ca.crt`:
/// `--records-webhook-ca-file <this>/ca.crt`.
pub const RECORDS_WEBHOOK_CA_MOUNT_PATH: &str = "/etc/trunkline/records-webhook-ca";

/// Where the records' spool volume is mounted: the spool itself (emptyDir), or the parent of
/// every gateway's spool (a shared claim).
pub const RECORDS_SPOOL_MOUNT_PATH: &str = "/var/lib/trunkline/records";

/// The volume of the records' spool.
pub const RECORDS_SPOOL_VOLUME: &str = "records-spool";

/// The pod's name in the container's arguments (`metadata.name` through the downward API).
pub const POD_NAME_REF: &str = "$(POD_NAME)";

/// The mode of every Secret file: readable by the owner and the pod's group (`fsGroup`) only.
pub const SECRET_FILE_MODE: i32 = 0o440;

/// `app.kubernetes.io/name` of every fleet object.
pub const APP_NAME: &str = "trunkline";

/// `app.kubernetes.io/component` of every fleet object.
pub const COMPONENT: &str = "gateway";

/// The gateway container's name.
pub const CONTAINER_NAME: &str = "gateway";

/// The pod's IP in the container's arguments: Kubernetes expands `$(POD_IP)` from the
/// container's environment (`status.podIP` through the downward API).
pub const POD_IP_REF: &str = "$(POD_IP)";

/// The node's name in the container's arguments (`spec.nodeName` through the downward API).
pub const NODE_NAME_REF: &str = "$(NODE_NAME)";

/// One rendered object of the fleet. Serialises as the object itself (with `apiVersion` and
/// `kind`), as `kubectl apply` would read it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // a handful of objects per reconcile: boxing buys nothing
pub enum FleetObject {
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    Service(Service),
    Deployment(Deployment),
    DaemonSet(DaemonSet),
    PodDisruptionBudget(PodDisruptionBudget),
}

impl FleetObject {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            FleetObject::ServiceAccount(o) => &o.metadata,
            FleetObject::Role(o) => &o.metadata,
            FleetObject::RoleBinding(o) => &o.metadata,
            FleetObject::Service(o) => &o.metadata,
            FleetObject::Deployment(o) => &o.metadata,
            FleetObject::DaemonSet(o) => &o.metadata,
            FleetObject::PodDisruptionBudget(o) => &o.metadata,
        }
    }

    /// The object's metadata, to change.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            FleetObject::ServiceAccount(o) => &mut o.metadata,
            FleetObject::Role(o) => &mut o.metadata,
            FleetObject::RoleBinding(o) => &mut o.metadata,
            FleetObject::Service(o) => &mut o.metadata,
            FleetObject::Deployment(o) => &mut o.metadata,
            FleetObject::DaemonSet(o) => &mut o.metadata,
            FleetObject::PodDisruptionBudget(o) => &mut o.metadata,
        }
    }

    /// The object's kind, as in its `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetObject::ServiceAccount(_) => kind::<ServiceAccount>(),
            FleetObject::Role(_) => kind::<Role>(),
            FleetObject::RoleBinding(_) => kind::<RoleBinding>(),
            FleetObject::Service(_) => kind::<Service>(),
            FleetObject::Deployment(_) => kind::<Deployment>(),
            FleetObject::DaemonSet(_) => kind::<DaemonSet>(),
            FleetObject::PodDisruptionBudget(_) => kind::<PodDisruptionBudget>(),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }
}

fn kind<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}

/// Name of the ServiceAccount, RBAC objects, workload and PodDisruptionBudget.
pub fn gateway_name(settings: &OperatorSettings) -> String {
    format!("{}-gateway", settings.name)
}

/// Name of the carrier-facing Service (the status controller reads its load-balancer address
/// for InboundTrunk `status.endpoint`).
pub fn carrier_service_name(settings: &OperatorSettings) -> String {
    format!("{}-carrier", settings.name)
}

/// Name of the agent-facing Service: agents reach the gateways at
/// `<name>-internal.<namespace>.svc:<internalPort>` (and the call API at `:<api.port>`).
pub fn internal_service_name(settings: &OperatorSettings) -> String {
    format!("{}-internal", settings.name)
}

/// The label selector of the fleet's gateway pods, as the operator lists them:
/// `trunkline.dev/fleet=<name>,app.kubernetes.io/component=gateway`.
pub fn gateway_pod_selector(settings: &OperatorSettings) -> String {
    format!("{FLEET_LABEL}={},app.kubernetes.io/component={COMPONENT}", settings.name)
}

/// The labels every object of the fleet carries.
pub fn object_labels(settings: &OperatorSettings) -> BTreeMap<String, String> {
    let mut labels = selector_labels(settings);
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
    labels
}

/// The labels that select the gateway pods (Deployment/DaemonSet selector, Services, PDB). A
/// workload's selector cannot change, so nothing that may change (a version) is in here. No
/// `app.kubernetes.io/instance`: Argo CD's label tracking takes that label as its own and would
/// prune the objects the operator makes.
pub fn selector_labels(settings: &OperatorSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/component".to_string(), COMPONENT.to_string()),
        (FLEET_LABEL.to_string(), settings.name.clone()),
    ])
}

/// Every object of the fleet, in apply order (see the module docs).
pub fn render_fleet(settings: &OperatorSettings) -> Vec<FleetObject> {
    let mut objects = vec![
        FleetObject::ServiceAccount(render_service_account(settings)),
        FleetObject::Role(render_role(settings)),
        FleetObject::RoleBinding(render_role_binding(settings)),
        FleetObject::Service(render_carrier_service(settings)),
        FleetObject::Service(render_internal_service(settings)),
    ];
    match settings.mode {
        FleetMode::Deployment => {
            objects.push(FleetObject::Deployment(render_deployment(settings)));
            if settings.pod_disruption_budget.enabled {
                objects.push(FleetObject::PodDisruptionBudget(render_pdb(settings)));
            }
        }
        FleetMode::DaemonSet => objects.push(FleetObject::DaemonSet(render_daemon_set(settings))),
    }
    objects
}

fn meta(settings: &OperatorSettings, name: String, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespaced.then(|| settings.namespace.clone()),
        labels: Some(object_labels(settings)),
        ..ObjectMeta::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn render_service_account(settings: &OperatorSettings) -> ServiceAccount {
    ServiceAccount { metadata: meta(settings, gateway_name(settings), true), ..Default::default() }
}

fn gateway_subject(settings: &OperatorSettings) -> Subject {
    Subject {
        kind: "ServiceAccount".to_string(),
        name: gateway_name(settings),
        namespace: Some(settings.namespace.clone()),
        ..Default::default()
    }
}

fn render_role(settings: &OperatorSettings) -> Role {
    Role {
        metadata: meta(settings, gateway_name(settings), true),
        rules: Some(vec![
            // The one credentials Secret, by name: a gateway never reads any other Secret.
            // (list/watch with resourceNames need the request's fieldSelector
            // metadata.name=<secret>, which is how the gateway's reflector asks.)
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(strings(&["secrets"])),
                resource_names: Some(vec![settings.credentials_secret.clone()]),
                verbs: strings(&["get", "list", "watch"]),
                ..Default::default()
            },
        ]),
    }
}

fn render_role_binding(settings: &OperatorSettings) -> RoleBinding {
    RoleBinding {
        metadata: meta(settings, gateway_name(settings), true),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: gateway_name(settings),
        },
        subjects: Some(vec![gateway_subject(settings)]),
    }
}

fn service_port(name: &str, protocol: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        ..Default::default()
    }
}

fn non_empty<K: Ord, V>(map: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>>
where
    BTreeMap<K, V>: Clone,
{
    (!map.is_empty()).then(|| map.clone())
}

fn render_carrier_service(settings: &OperatorSettings) -> Service {
    let service = &settings.carrier_service;
    let mut ports = vec![
        service_port("sip-udp", "UDP", settings.sip_port),
        service_port("sip-tcp", "TCP", settings.sip_port),
    ];
    if settings.tls_enabled() {
        ports.push(service_port("sip-tls", "TCP", settings.tls.port));
    }
    let external = matches!(service.type_, ServiceType::NodePort | ServiceType::LoadBalancer);
    let load_balancer = service.type_ == ServiceType::LoadBalancer;
    let mut metadata = meta(settings, carrier_service_name(settings), true);
    metadata.annotations = non_empty(&service.annotations);
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(service.type_.as_str().to_string()),
            selector: Some(selector_labels(settings)),
            ports: Some(ports),
            // The API server refuses externalTrafficPolicy on a ClusterIP Service.
            external_traffic_policy: external
                .then(|| service.external_traffic_policy.as_str().to_string()),
            load_balancer_source_ranges: (load_balancer
                && !service.load_balancer_source_ranges.is_empty())
            .then(|| service.load_balancer_source_ranges.clone()),
            session_affinity: Some(service.session_affinity.as_str().to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn render_internal_service(settings: &OperatorSettings) -> Service {
    let service = &settings.internal_service;
    let mut metadata = meta(settings, internal_service_name(settings), true);
    metadata.annotations = non_empty(&service.annotations);
    let mut ports = vec![
        service_port("internal-udp", "UDP", settings.internal_port),
        service_port("internal-tcp", "TCP", settings.internal_port),
    ];
    if settings.api.enabled {
        ports.push(service_port("api", "TCP", settings.api.port));
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(settings)),
            ports: Some(ports),
            session_affinity: Some(service.session_affinity.as_str().to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn render_deployment(settings: &OperatorSettings) -> Deployment {
    Deployment {
        metadata: meta(settings, gateway_name(settings), true),
        spec: Some(DeploymentSpec {
            replicas: Some(settings.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(settings)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(rolling_update(settings)),
            }),
            template: render_pod_template(settings),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In the pod network a new pod is ready before an old one starts draining: capacity never
/// drops. On the host network a surge pod would need a node without a gateway (ports, the
/// required anti-affinity), which a fleet on every eligible node does not have, and the rollout
/// would hang: there one old pod drains at a time instead.
fn rolling_update(settings: &OperatorSettings) -> RollingUpdateDeployment {
    let (surge, unavailable) = if settings.host_network { (0, 1) } else { (1, 0) };
    RollingUpdateDeployment {
        max_surge: Some(IntOrString::Int(surge)),
        max_unavailable: Some(IntOrString::Int(unavailable)),
    }
}

fn render_daemon_set(settings: &OperatorSettings) -> DaemonSet {
    DaemonSet {
        metadata: meta(settings, gateway_name(settings), true),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(settings)),
                ..Default::default()
            },
            template: render_pod_template(settings),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn render_pdb(settings: &OperatorSettings) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(settings, gateway_name(settings), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(settings.pod_disruption_budget.max_unavailable.clone()),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(settings)),
                ..Default::default()
            }),
            // A crash-looping gateway serves nothing: do not let it block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The arguments of the gateway container after `trunkline` (`gateway` first). The flags are
/// those of `trunkline gateway`, in the forms `trunkline run` parses: listeners as
/// `PROTO://IP:PORT`, the RTP range as `LOW-HIGH`, the drain as whole seconds.
pub fn gateway_args(settings: &OperatorSettings) -> Vec<String> {
    let mut args = vec!["gateway".to_string()];
    let mut flag = |name: &str, value: String| {
        args.push(name.to_string());
        args.push(value);
    };
    // Two trust zones (see the module docs, "Zones"): carriers may reach a node on any of its
    // addresses (a cloud's public IP is often NATed to the node's private one), so the
    // carrier-facing listeners take every address; the agent-facing listener, the call API and
    // the admin endpoints bind the pod's address only (on the host network: the node's primary
    // address as the kubelet reports it), never every address: not a secondary (Multus)
    // interface, not loopback, not the node's other (public) addresses.
    let internal_ip = POD_IP_REF;
    flag("--listen", format!("udp://0.0.0.0:{}", settings.sip_port));
    flag("--listen", format!("tcp://0.0.0.0:{}", settings.sip_port));
    if settings.tls_enabled() {
        flag("--listen", format!("tls://0.0.0.0:{}", settings.tls.port));
        flag("--tls-cert", format!("{TLS_MOUNT_PATH}/tls.crt"));
        flag("--tls-key", format!("{TLS_MOUNT_PATH}/tls.key"));
    }
    flag("--internal-listen", format!("udp://{internal_ip}:{}", settings.internal_port));
    flag("--internal-listen", format!("tcp://{internal_ip}:{}", settings.internal_port));
    flag("--admin", format!("{internal_ip}:{}", settings.admin_port));
    // New calls from the agent side (SIP and API) only from these networks: on the host network
    // the gateway's own check is the only one (no NetworkPolicy applies there).
    let networks: Vec<String> = settings.agent_networks.iter().map(|n| n.to_string()).collect();
    flag("--agent-networks", networks.join(","));
    if settings.api.enabled {
        flag("--api", format!("{internal_ip}:{}", settings.api.port));
        flag("--api-token-file", format!("{API_TOKEN_MOUNT_PATH}/token"));
    }
    if let Some(uri) = &settings.agent_uri {
        flag("--agent-uri", uri.clone());
    }
    if settings.agent_credentials_secret.is_some() {
        flag("--agent-credentials", AGENT_CREDENTIALS_MOUNT_PATH.to_string());
    }
    if settings.tls.ca_secret.is_some() {
        flag("--tls-ca", format!("{TLS_CA_MOUNT_PATH}/ca.crt"));
    }
    flag("--rtp-ports", settings.rtp_ports.to_string());
    match settings.address_source() {
        AddressSource::Node => {
            flag("--public-address-node", NODE_NAME_REF.to_string());
            flag("--node-address-annotation", settings.node_address_annotation.clone());
        }
        AddressSource::Pod => flag("--public-address", POD_IP_REF.to_string()),
        AddressSource::Fixed => {
            if let Some(address) = settings.public_address {
                flag("--public-address", address.to_string());
            }
        }
    }
    if let Some(region) = &settings.region {
        flag("--region", region.clone());
    }
    if let Some(namespace) = &settings.watch_namespace {
        flag("--watch-namespace", namespace.clone());
    }
    flag("--credentials-secret", settings.credentials_secret.clone());
    flag("--drain-timeout", settings.drain_seconds.to_string());
    flag("--realm", settings.realm.clone());
    let algorithms: Vec<&str> = settings.digest_algorithms.iter().map(|a| a.as_str()).collect();
    flag("--digest-algorithms", algorithms.join(","));
    flag("--nonce-ttl", settings.nonce_ttl_seconds.to_string());
    flag("--agent-timeout", settings.agent_timeout_seconds.to_string());
    flag("--media-timeout", settings.media_timeout_seconds.to_string());
    flag("--transfer-timeout", settings.transfer_timeout_seconds.to_string());
    flag("--max-call-duration", settings.max_call_duration_seconds.to_string());
    flag("--max-hold", settings.max_hold_seconds.to_string());
    flag("--min-session-expires", settings.min_session_expires_seconds.to_string());
    // Every limit, changed or not (settings' module docs, "Security limits"): the pod spec says
    // what each gateway enforces, whatever the defaults of the image it runs.
    let guard = &settings.guard;
    flag("--source-invite-rate", guard.source_invite_rate.to_string());
    flag("--source-options-rate", guard.source_options_rate.to_string());
    flag("--source-request-rate", guard.source_request_rate.to_string());
    flag("--global-request-rate", guard.global_request_rate.to_string());
    flag("--max-sources", guard.max_sources.to_string());
    flag("--auth-failures", guard.auth_failures.to_string());
    flag("--auth-failure-window", guard.auth_failure_window_seconds.to_string());
    flag("--auth-lockout", guard.auth_lockout_seconds.to_string());
    flag("--username-failures", guard.username_failures.to_string());
    flag("--username-attempt-rate", guard.username_attempt_rate.to_string());
    flag("--nonce-guesses", guard.nonce_guesses.to_string());
    flag("--refusal-log-interval", guard.refusal_log_interval_seconds.to_string());
    let connections = &settings.connections;
    flag("--max-connections", connections.max.to_string());
    flag("--max-connections-per-address", connections.max_per_address.to_string());
    flag("--message-timeout", connections.message_timeout_seconds.to_string());
    flag("--connection-idle-timeout", connections.idle_timeout_seconds.to_string());
    flag("--tls-handshake-timeout", connections.tls_handshake_timeout_seconds.to_string());
    flag("--write-timeout", connections.write_timeout_seconds.to_string());
    flag("--log-format", settings.log_format.as_str().to_string());
    args.extend(records_args(settings));
    args
}

/// The session-record flags of the gateway container (see the module docs): none when
/// `records.stdout` is off and no webhook is set.
pub fn records_args(settings: &OperatorSettings) -> Vec<String> {
    let records = &settings.records;
    let mut args = Vec::new();
    if records.stdout {
        args.extend(strings(&["--records-file", "-"]));
        if records.answered {
            args.push("--records-file-answered".to_string());
        }
    }
    let Some(url) = &records.webhook.url else { return args };
    args.extend(["--records-webhook".to_string(), url.clone()]);
    if records.answered {
        args.push("--records-webhook-answered".to_string());
    }
    if records.webhook.key_secret.name.is_some() {
        args.push("--records-webhook-key-file".to_string());
        args.push(format!("{RECORDS_WEBHOOK_KEY_MOUNT_PATH}/key"));
    }
    if records.webhook.ca_secret.name.is_some() {
        args.push("--records-webhook-ca-file".to_string());
        args.push(format!("{RECORDS_WEBHOOK_CA_MOUNT_PATH}/ca.crt"));
    }
    args.push("--records-spool".to_string());
    match records.spool.volume {
        SpoolVolume::EmptyDir => args.push(RECORDS_SPOOL_MOUNT_PATH.to_string()),
        SpoolVolume::PersistentVolumeClaim { .. } => {
            args.push(format!("{RECORDS_SPOOL_MOUNT_PATH}/{POD_NAME_REF}"));
            args.push("--records-spool-adopt".to_string());
        }
    }
    args.push("--records-spool-max-bytes".to_string());
    args.push(records.spool.max_bytes.to_string());
    args
}

/// The records' spool volume, when a webhook needs one.
fn records_spool_volume(settings: &OperatorSettings) -> Option<Volume> {
    settings.records.webhook.url.as_ref()?;
    let spool = &settings.records.spool;
    let mut volume = Volume { name: RECORDS_SPOOL_VOLUME.to_string(), ..Default::default() };
    match &spool.volume {
        SpoolVolume::EmptyDir => {
            volume.empty_dir = Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(format!("{}Mi", spool.empty_dir_size_limit() >> 20))),
                ..Default::default()
            });
        }
        SpoolVolume::PersistentVolumeClaim { claim_name } => {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name.clone(),
                ..Default::default()
            });
        }
    }
    Some(volume)
}

fn container_port(name: Option<&str>, protocol: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: name.map(str::to_string),
        protocol: Some(protocol.to_string()),
        container_port: i32::from(port),
        ..Default::default()
    }
}

fn host_port(mut port: ContainerPort) -> ContainerPort {
    port.host_port = Some(port.container_port);
    port
}

fn container_ports(settings: &OperatorSettings) -> Vec<ContainerPort> {
    // A single Fixed gateway off the host network is reached through host ports of its node:
    // SIP and the whole RTP range (the settings bound the range to MAX_HOST_PORTS).
    let host_ports = matches!(settings.media_path(), Ok(MediaPath::Fixed { host_ports: true, .. }));
    let carrier = |port: ContainerPort| if host_ports { host_port(port) } else { port };
    let mut ports = vec![
        carrier(container_port(Some("sip-udp"), "UDP", settings.sip_port)),
        carrier(container_port(Some("sip-tcp"), "TCP", settings.sip_port)),
    ];
    if settings.tls_enabled() {
        ports.push(carrier(container_port(Some("sip-tls"), "TCP", settings.tls.port)));
    }
    ports.push(container_port(Some("internal-udp"), "UDP", settings.internal_port));
    ports.push(container_port(Some("internal-tcp"), "TCP", settings.internal_port));
    ports.push(container_port(Some("admin"), "TCP", settings.admin_port));
    if settings.api.enabled {
        ports.push(container_port(Some("api"), "TCP", settings.api.port));
    }
    // Otherwise only a small RTP range is listed (module docs: Services have no ranges, and a
    // long list only bloats the pod spec); the gateway binds the whole range either way.
    if host_ports || settings.rtp_ports.len() <= MAX_LISTED_RTP_PORTS {
        for port in settings.rtp_ports.low..=settings.rtp_ports.high {
            ports.push(carrier(container_port(None, "UDP", port)));
        }
    }
    ports
}

/// Does the gateway bind a privileged port (below 1024)?
pub fn binds_privileged_port(settings: &OperatorSettings) -> bool {
    settings.bound_ports().first().is_some_and(|p| *p < 1024)
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(settings: &OperatorSettings, path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(settings.admin_port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn render_container(settings: &OperatorSettings) -> Container {
    let mut capabilities = Capabilities { drop: Some(strings(&["ALL"])), ..Default::default() };
    if binds_privileged_port(settings) {
        capabilities.add = Some(strings(&["NET_BIND_SERVICE"]));
    }
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..Default::default()
    }];
    for secret in secret_files(settings) {
        mounts.push(VolumeMount {
            name: secret.volume.to_string(),
            mount_path: secret.mount_path.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if records_spool_volume(settings).is_some() {
        // The whole volume (no subPath): with a shared claim the gateway must see the other
        // pods' spools to adopt them.
        mounts.push(VolumeMount {
            name: RECORDS_SPOOL_VOLUME.to_string(),
            mount_path: RECORDS_SPOOL_MOUNT_PATH.to_string(),
            ..Default::default()
        });
    }
    Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.as_str().to_string()),
        command: Some(strings(&["trunkline"])),
        args: Some(gateway_args(settings)),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            field_env("NODE_NAME", "spec.nodeName"),
            EnvVar {
                name: "RUST_LOG".to_string(),
                value: Some(settings.log_level.clone()),
                ..Default::default()
            },
        ]),
        ports: Some(container_ports(settings)),
        readiness_probe: Some(http_probe(settings, "/readyz", 5)),
        liveness_probe: Some(http_probe(settings, "/healthz", 10)),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(GATEWAY_UID),
            run_as_group: Some(GATEWAY_UID),
            capabilities: Some(capabilities),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn render_pod_template(settings: &OperatorSettings) -> PodTemplateSpec {
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }];
    for secret in secret_files(settings) {
        volumes.push(Volume {
            name: secret.volume.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.secret),
                // Only the keys the gateway reads: a Secret made for something else (a
                // cert-manager Secret with its tls.key beside ca.crt) gives nothing more. A
                // missing key keeps the pod from starting, with the key named in its events.
                items: secret.items.map(|items| {
                    items
                        .into_iter()
                        .map(|(key, path)| KeyToPath { key, path, ..Default::default() })
                        .collect()
                }),
                // Readable by the pod's group (fsGroup) only. No subPath: the kubelet then
                // swaps renewed certificates and rotated Secrets in, and the gateway re-reads
                // them.
                default_mode: Some(SECRET_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes.extend(records_spool_volume(settings));
    // A shared claim may be large: the kubelet changes its ownership to fsGroup only when its
    // root does not have it already, not file by file at every start.
    let shared_spool = volumes
        .iter()
        .any(|v| v.name == RECORDS_SPOOL_VOLUME && v.persistent_volume_claim.is_some());
    let fs_group_change_policy = shared_spool.then(|| "OnRootMismatch".to_string());
    // A non-root process gets NET_BIND_SERVICE only from a file capability on the binary; in
    // the pod's own network namespace this sysctl lets it bind the low port without one. With
    // hostNetwork the sysctl would be the node's, so it is not set (the image must carry the
    // file capability then).
    let sysctls = (binds_privileged_port(settings) && !settings.host_network).then(|| {
        vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".to_string(),
            value: settings.bound_ports().first().copied().unwrap_or(1024).to_string(),
        }]
    });
    let affinity = match (&settings.affinity, settings.mode) {
        (Some(affinity), _) => Some(affinity.clone()),
        (None, FleetMode::Deployment) => Some(spread_over_nodes(settings)),
        (None, FleetMode::DaemonSet) => None,
    };
    let spread: Vec<TopologySpreadConstraint> = settings
        .topology_spread_constraints
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.label_selector.is_none() {
                c.label_selector = Some(LabelSelector {
                    match_labels: Some(selector_labels(settings)),
                    ..Default::default()
                });
            }
            c
        })
        .collect();
    let pull_secrets: Vec<LocalObjectReference> = settings
        .image_pull_secrets
        .iter()
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(settings)),
            annotations: non_empty(&settings.pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(gateway_name(settings)),
            automount_service_account_token: Some(true),
            enable_service_links: Some(false),
            host_network: settings.host_network.then_some(true),
            dns_policy: settings.host_network.then(|| "ClusterFirstWithHostNet".to_string()),
            termination_grace_period_seconds: Some(settings.termination_grace_seconds()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(GATEWAY_UID),
                run_as_group: Some(GATEWAY_UID),
                fs_group: Some(GATEWAY_UID),
                fs_group_change_policy,
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..Default::default()
                }),
                sysctls,
                ..Default::default()
            }),
            containers: vec![render_container(settings)],
            volumes: Some(volumes),
            node_selector: non_empty(&settings.node_selector),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            affinity,
            topology_spread_constraints: (!spread.is_empty()).then_some(spread),
            priority_class_name: settings.priority_class_name.clone(),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            ..Default::default()
        }),
    }
}

/// A Secret mounted into the gateway container as files.
struct SecretFiles {
    volume: &'static str,
    secret: String,
    mount_path: &'static str,
    /// The keys mounted and the file each becomes; `None`: every key under its own name (the
    /// TLS Secret, as it always was).
    items: Option<Vec<(String, String)>>,
}

/// Each key mounted under its own name.
fn same_names(keys: &[&str]) -> Option<Vec<(String, String)>> {
    Some(keys.iter().map(|k| (k.to_string(), k.to_string())).collect())
}

/// The Secrets the gateway reads as files, in a fixed order (see the module docs).
fn secret_files(settings: &OperatorSettings) -> Vec<SecretFiles> {
    let mut files = Vec::new();
    if let Some(secret) = &settings.tls.secret_name {
        files.push(SecretFiles {
            volume: "tls",
            secret: secret.clone(),
            mount_path: TLS_MOUNT_PATH,
            items: None,
        });
    }
    if let Some(secret) = &settings.tls.ca_secret {
        files.push(SecretFiles {
            volume: "tls-ca",
            secret: secret.clone(),
            mount_path: TLS_CA_MOUNT_PATH,
            items: same_names(&["ca.crt"]),
        });
    }
    if let Some(secret) = settings.api_token_secret() {
        files.push(SecretFiles {
            volume: "api-token",
            secret,
            mount_path: API_TOKEN_MOUNT_PATH,
            items: same_names(&["token"]),
        });
    }
    if let Some(secret) = &settings.agent_credentials_secret {
        files.push(SecretFiles {
            volume: "agent-credentials",
            secret: secret.clone(),
            mount_path: AGENT_CREDENTIALS_MOUNT_PATH,
            items: same_names(&["username", "password"]),
        });
    }
    // Only with a webhook: a Secret named for none is refused by the settings anyway.
    let webhook = &settings.records.webhook;
    if webhook.url.is_some() {
        if let Some((secret, key)) = webhook.key_secret.resolve(WEBHOOK_KEY_SECRET_KEY) {
            files.push(SecretFiles {
                volume: "records-webhook-key",
                secret,
                mount_path: RECORDS_WEBHOOK_KEY_MOUNT_PATH,
                items: Some(vec![(key, "key".to_string())]),
            });
        }
        if let Some((secret, key)) = webhook.ca_secret.resolve(WEBHOOK_CA_SECRET_KEY) {
            files.push(SecretFiles {
                volume: "records-webhook-ca",
                secret,
                mount_path: RECORDS_WEBHOOK_CA_MOUNT_PATH,
                items: Some(vec![(key, "ca.crt".to_string())]),
            });
        }
    }
    files
}

/// The default affinity of a Deployment: one gateway per node, so a node failure takes down
/// one replica, not all. Preferred in the pod network; required on the host network, where
/// two gateways on one node would want the same ports (and the same node address).
fn spread_over_nodes(settings: &OperatorSettings) -> Affinity {
    let term = PodAffinityTerm {
        topology_key: "kubernetes.io/hostname".to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(settings)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let anti_affinity = if settings.host_network {
        PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..Default::default()
        }
    } else {
        PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm { weight: 100, pod_affinity_term: term },
            ]),
            ..Default::default()
        }
    };
    Affinity { pod_anti_affinity: Some(anti_affinity), ..Default::default() }
}

/// The labels of the gateway pods: the fleet's, then `podLabels` (which may not replace them).
fn pod_labels(settings: &OperatorSettings) -> BTreeMap<String, String> {
    let mut labels = settings.pod_labels.clone();
    labels.extend(object_labels(settings));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(text: &str) -> OperatorSettings {
        OperatorSettings::parse(text, Path::new("test.yaml")).unwrap()
    }

    fn workload_pod(objects: &[FleetObject]) -> &PodSpec {
        objects
            .iter()
            .find_map(|o| match o {
                FleetObject::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
                FleetObject::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
                _ => None,
            })
            .expect("a workload")
    }

    fn container(objects: &[FleetObject]) -> &Container {
        &workload_pod(objects).containers[0]
    }

    fn kinds_and_names(objects: &[FleetObject]) -> Vec<(String, String)> {
        objects.iter().map(|o| (o.kind().to_string(), o.name().to_string())).collect()
    }

    fn added_capabilities(c: &Container) -> Vec<String> {
        c.security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .add
            .clone()
            .unwrap_or_default()
    }

    fn all_container_ports(c: &Container) -> Vec<i32> {
        c.ports.as_ref().unwrap().iter().map(|p| p.container_port).collect()
    }

    #[test]
    fn the_default_fleet_is_a_deployment_with_rbac_services_and_a_budget() {
        let objects = render_fleet(&OperatorSettings::default());
        let expected: Vec<(String, String)> = [
            ("ServiceAccount", "trunkline-gateway"),
            ("Role", "trunkline-gateway"),
            ("RoleBinding", "trunkline-gateway"),
            ("Service", "trunkline-carrier"),
            ("Service", "trunkline-internal"),
            ("Deployment", "trunkline-gateway"),
            ("PodDisruptionBudget", "trunkline-gateway"),
        ]
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
        assert_eq!(kinds_and_names(&objects), expected);
    }

    #[test]
    fn every_object_carries_the_fleet_and_managed_by_labels() {
        for objects in [
            render_fleet(&OperatorSettings::default()),
            render_fleet(&settings("mode: DaemonSet\nhostNetwork: true\n")),
        ] {
            for o in &objects {
                let labels = o.meta().labels.as_ref().unwrap();
                assert_eq!(
                    labels.get(FLEET_LABEL).map(String::as_str),
                    Some("trunkline"),
                    "{}",
                    o.kind()
                );
                assert_eq!(
                    labels.get("app.kubernetes.io/managed-by").map(String::as_str),
                    Some(MANAGED_BY)
                );
                assert_eq!(o.meta().namespace.as_deref(), Some("trunkline"), "{}", o.kind());
                assert!(!labels.contains_key("app.kubernetes.io/instance"), "{}", o.kind());
            }
        }
    }

    #[test]
    fn gateway_pods_match_the_selector_the_operator_uses() {
        let s = OperatorSettings::default();
        assert_eq!(
            gateway_pod_selector(&s),
            "trunkline.dev/fleet=trunkline,app.kubernetes.io/component=gateway"
        );
        let objects = render_fleet(&s);
        let FleetObject::Deployment(d) = &objects[5] else { panic!("not a deployment") };
        let labels =
            d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
        for term in gateway_pod_selector(&s).split(',') {
            let (k, v) = term.split_once('=').unwrap();
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{term}");
        }
        assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("trunkline"));
        // Argo CD's label tracking owns app.kubernetes.io/instance: the operator never sets it.
        assert!(!labels.contains_key("app.kubernetes.io/instance"));
    }

    #[test]
    fn the_role_reads_only_the_credentials_secret_and_writes_nothing() {
        let objects = render_fleet(&settings("credentialsSecret: bundle\n"));
        let FleetObject::Role(role) = &objects[1] else { panic!("not a role") };
        let rules = role.rules.as_ref().unwrap();
        // One rule: the bundle Secret, by name, read-only. No pods, nothing else in the
        // namespace the operator runs in: a compromised gateway can change nothing there.
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
        assert_eq!(rules[0].resources, Some(vec!["secrets".to_string()]));
        assert_eq!(rules[0].resource_names, Some(vec!["bundle".to_string()]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        let FleetObject::RoleBinding(binding) = &objects[2] else { panic!("not a binding") };
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.subjects.as_ref().unwrap()[0].name, "trunkline-gateway");
        assert_eq!(binding.subjects.as_ref().unwrap()[0].namespace.as_deref(), Some("trunkline"));
    }

    #[test]
    fn the_operator_renders_no_cluster_wide_object() {
        // The gateways' cluster-wide read access is installed by the chart, so the operator
        // needs no right to create ClusterRoles or bindings.
        for text in ["", "mode: DaemonSet\n", "watchNamespace: voice\n"] {
            for o in render_fleet(&settings(text)) {
                assert!(o.meta().namespace.is_some(), "{text:?}: {}", o.kind());
            }
        }
    }

    #[test]
    fn probes_use_the_admin_port() {
        let objects = render_fleet(&settings("adminPort: 9191\n"));
        let c = container(&objects);
        let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            (ready.path.as_deref(), &ready.port),
            (Some("/readyz"), &IntOrString::Int(9191))
        );
        assert_eq!((live.path.as_deref(), &live.port), (Some("/healthz"), &IntOrString::Int(9191)));
        let args = c.args.as_ref().unwrap();
        let admin = args.iter().position(|a| a == "--admin").unwrap();
        // On the host network (the default) the admin port is the node's internal address's.
        assert_eq!(args[admin + 1], "$(POD_IP):9191");
    }

    #[test]
    fn the_default_container_drops_every_capability_and_runs_as_nonroot() {
        let objects = render_fleet(&OperatorSettings::default());
        let c = container(&objects);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_string()]));
        assert!(added_capabilities(c).is_empty());
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        let pod = workload_pod(&objects);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(psc.sysctls.is_none());
        assert!(
            pod.volumes.as_ref().unwrap().iter().any(|v| v.name == "tmp" && v.empty_dir.is_some())
        );
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/tmp"));
    }

    #[test]
    fn no_port_below_1024_is_bound_without_net_bind_service() {
        let cases = [
            ("", false),
            ("sipPort: 5060\n", false),
            ("sipPort: 1023\n", true),
            ("tls: {secretName: t, port: 443}\n", true),
            ("tls: {port: 443}\n", false), // no certificate: no TLS listener
            ("adminPort: 80\n", true),
            ("internalPort: 1024\n", false),
            ("rtpPorts: 1000-1099\n", true),
            ("sipPort: 5060\nmode: DaemonSet\n", false),
            ("sipPort: 506\nmode: DaemonSet\n", true),
            ("api: {enabled: true, port: 443}\n", true),
            ("api: {port: 443}\n", false), // no API: nothing binds it
        ];
        for (text, privileged) in cases {
            let objects = render_fleet(&settings(text));
            let c = container(&objects);
            let lowest = *all_container_ports(c).iter().min().unwrap();
            let has_cap = added_capabilities(c) == ["NET_BIND_SERVICE"];
            assert_eq!(has_cap, privileged, "{text:?}");
            assert!(lowest >= 1024 || has_cap, "{text:?}: port {lowest} without NET_BIND_SERVICE");
        }
    }

    #[test]
    fn a_low_port_without_host_network_lowers_the_unprivileged_port_start() {
        let objects =
            render_fleet(&settings("sipPort: 506\nhostNetwork: false\npublicAddressFrom: Pod\n"));
        let sysctls = workload_pod(&objects).security_context.as_ref().unwrap().sysctls.clone();
        assert_eq!(sysctls.unwrap()[0].value, "506");
        let objects = render_fleet(&settings("sipPort: 506\nhostNetwork: true\n"));
        assert!(workload_pod(&objects).security_context.as_ref().unwrap().sysctls.is_none());
    }

    #[test]
    fn the_gateway_flags_follow_the_settings() {
        let s = settings(
            "tls: {secretName: sip-tls}\npublicAddress: 198.51.100.7\nreplicas: 1\nregion: eu\n\
             credentialsSecret: bundle\ndrainSeconds: 45\nrtpPorts: 30000-30999\n\
             watchNamespace: voice\nrealm: acme\ndigestAlgorithms: [SHA-256, MD5]\n\
             nonceTtlSeconds: 120\nagentTimeoutSeconds: 20\nmediaTimeoutSeconds: 10\n\
             transferTimeoutSeconds: 25\nlogFormat: json\n",
        );
        assert_eq!(
            gateway_args(&s).join(" "),
            "gateway --listen udp://0.0.0.0:5060 --listen tcp://0.0.0.0:5060 \
             --listen tls://0.0.0.0:5061 --tls-cert /etc/trunkline/tls/tls.crt \
             --tls-key /etc/trunkline/tls/tls.key --internal-listen udp://$(POD_IP):5080 \
             --internal-listen tcp://$(POD_IP):5080 --admin $(POD_IP):9090 \
             --agent-networks 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.0/8,::1/128 \
             --rtp-ports 30000-30999 --public-address 198.51.100.7 --region eu \
             --watch-namespace voice --credentials-secret bundle --drain-timeout 45 \
             --realm acme --digest-algorithms SHA-256,MD5 --nonce-ttl 120 --agent-timeout 20 \
             --media-timeout 10 --transfer-timeout 25 --max-call-duration 14400 --max-hold 3600 \
             --min-session-expires 90 --source-invite-rate 50 --source-options-rate 10 \
             --source-request-rate 10 --global-request-rate 2000 --max-sources 65536 \
             --auth-failures 5 --auth-failure-window 60 --auth-lockout 300 \
             --username-failures 20 --username-attempt-rate 1 --nonce-guesses 3 \
             --refusal-log-interval 10 --max-connections 10000 \
             --max-connections-per-address 100 --message-timeout 10 \
             --connection-idle-timeout 300 --tls-handshake-timeout 5 --write-timeout 10 \
             --log-format json --records-file -"
        );
        let objects = render_fleet(&s);
        let pod = workload_pod(&objects);
        assert_eq!(pod.termination_grace_period_seconds, Some(55));
        let c = container(&objects);
        assert_eq!(c.command, Some(vec!["trunkline".to_string()]));
        let tls = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "tls").unwrap();
        assert_eq!((tls.mount_path.as_str(), tls.read_only), (TLS_MOUNT_PATH, Some(true)));
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(volume.secret.as_ref().unwrap().secret_name.as_deref(), Some("sip-tls"));
    }

    #[test]
    fn every_security_limit_reaches_the_gateways_flags() {
        // (settings key, value, flag): each changed from its default.
        let cases = [
            ("maxCallDurationSeconds", "3600", "--max-call-duration"),
            ("maxHoldSeconds", "0", "--max-hold"),
            ("minSessionExpiresSeconds", "120", "--min-session-expires"),
            ("guard.sourceInviteRate", "5", "--source-invite-rate"),
            ("guard.sourceOptionsRate", "2", "--source-options-rate"),
            ("guard.sourceRequestRate", "0", "--source-request-rate"),
            ("guard.globalRequestRate", "500", "--global-request-rate"),
            ("guard.maxSources", "1024", "--max-sources"),
            ("guard.authFailures", "3", "--auth-failures"),
            ("guard.authFailureWindowSeconds", "120", "--auth-failure-window"),
            ("guard.authLockoutSeconds", "3600", "--auth-lockout"),
            ("guard.usernameFailures", "0", "--username-failures"),
            ("guard.usernameAttemptRate", "4", "--username-attempt-rate"),
            ("guard.nonceGuesses", "1", "--nonce-guesses"),
            ("guard.refusalLogIntervalSeconds", "60", "--refusal-log-interval"),
            ("connections.max", "2000", "--max-connections"),
            ("connections.maxPerAddress", "8", "--max-connections-per-address"),
            ("connections.messageTimeoutSeconds", "4", "--message-timeout"),
            ("connections.idleTimeoutSeconds", "90", "--connection-idle-timeout"),
            ("connections.tlsHandshakeTimeoutSeconds", "3", "--tls-handshake-timeout"),
            ("connections.writeTimeoutSeconds", "6", "--write-timeout"),
        ];
        let defaults = OperatorSettings::default();
        for (key, value, flag) in cases {
            let text = match key.split_once('.') {
                Some((section, field)) => format!("{section}: {{{field}: {value}}}\n"),
                None => format!("{key}: {value}\n"),
            };
            let before = arg(&defaults, flag);
            assert!(before.is_some(), "{flag} is passed even at its default");
            assert_ne!(before.as_deref(), Some(value), "{key}: pick a value that is no default");
            let s = settings(&text);
            assert_eq!(arg(&s, flag).as_deref(), Some(value), "{key}");
            // Only that flag changed.
            let changed: Vec<(String, String)> = gateway_args(&defaults)
                .into_iter()
                .zip(gateway_args(&s))
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(changed.len(), 1, "{key}: {changed:?}");
        }
    }

    /// The value of `flag` in the gateway's arguments, if it is there.
    fn arg(settings: &OperatorSettings, flag: &str) -> Option<String> {
        let args = gateway_args(settings);
        args.windows(2).find(|pair| pair[0] == flag).map(|pair| pair[1].clone())
    }

    fn volume<'a>(objects: &'a [FleetObject], name: &str) -> Option<&'a Volume> {
        workload_pod(objects).volumes.as_ref().unwrap().iter().find(|v| v.name == name)
    }

    fn mount<'a>(objects: &'a [FleetObject], name: &str) -> Option<&'a VolumeMount> {
        container(objects).volume_mounts.as_ref().unwrap().iter().find(|m| m.name == name)
    }

    /// The Secret, keys and mode of a Secret volume.
    fn secret_of(volume: &Volume) -> (String, Vec<String>, Option<i32>) {
        let secret = volume.secret.as_ref().unwrap();
        let keys = secret.items.iter().flatten().map(|i| i.key.clone()).collect();
        (secret.secret_name.clone().unwrap(), keys, secret.default_mode)
    }

    fn service_ports(object: &FleetObject) -> Vec<(String, String, i32)> {
        let FleetObject::Service(service) = object else { panic!("not a service") };
        let ports = service.spec.as_ref().unwrap().ports.as_ref().unwrap();
        ports
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.protocol.clone().unwrap(), p.port))
            .collect()
    }

    #[test]
    fn the_agent_networks_reach_the_gateway_as_one_flag() {
        assert_eq!(
            arg(&OperatorSettings::default(), "--agent-networks").as_deref(),
            Some("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.0/8,::1/128")
        );
        let s = settings("agentNetworks: [10.42.0.0/16, 'fd00:42::/64']\n");
        assert_eq!(arg(&s, "--agent-networks").as_deref(), Some("10.42.0.0/16,fd00:42::/64"));
    }

    #[test]
    fn the_agent_facing_listener_the_api_and_admin_bind_the_pod_address_in_every_topology() {
        // Zones: the carrier side takes every address; the agent side, the call API and the
        // admin endpoints only the pod's (downward API), whatever the network and media path.
        let topologies = [
            "",
            "mode: DaemonSet\n",
            "hostNetwork: false\npublicAddressFrom: Pod\napi: {enabled: true}\n",
            "hostNetwork: false\npublicAddress: 203.0.113.9\nreplicas: 1\n",
            "api: {enabled: true, port: 9443}\ninternalPort: 5090\nadminPort: 9191\n",
        ];
        for text in topologies {
            let s = settings(text);
            let args = gateway_args(&s);
            let values = |flag: &str| -> Vec<String> {
                args.windows(2).filter(|p| p[0] == flag).map(|p| p[1].clone()).collect()
            };
            let internal = s.internal_port;
            assert_eq!(
                values("--internal-listen"),
                [format!("udp://$(POD_IP):{internal}"), format!("tcp://$(POD_IP):{internal}")],
                "{text:?}"
            );
            assert_eq!(values("--admin"), [format!("$(POD_IP):{}", s.admin_port)], "{text:?}");
            let api = values("--api");
            if s.api.enabled {
                assert_eq!(api, [format!("$(POD_IP):{}", s.api.port)], "{text:?}");
            } else {
                assert!(api.is_empty(), "{text:?}");
            }
            // Carriers still reach every address of the pod (or node).
            assert!(values("--listen").iter().all(|l| l.contains("0.0.0.0")), "{text:?}");
            // $(POD_IP) is expanded only from the container's environment: it must be there.
            let objects = render_fleet(&s);
            let env = container(&objects).env.clone().unwrap_or_default();
            let pod_ip = env.iter().find(|e| e.name == "POD_IP").expect("POD_IP in the env");
            let field = pod_ip.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            assert_eq!(field.map(|f| f.field_path.as_str()), Some("status.podIP"), "{text:?}");
        }
    }

    #[test]
    fn without_the_outbound_settings_no_outbound_flag_or_secret_is_rendered() {
        let s = OperatorSettings::default();
        for flag in ["--api", "--api-token-file", "--agent-uri", "--agent-credentials", "--tls-ca"]
        {
            assert_eq!(arg(&s, flag), None, "{flag}");
        }
        let objects = render_fleet(&s);
        let pod = workload_pod(&objects);
        let volumes: Vec<&str> = pod.volumes.as_ref().unwrap().iter().map(|v| &*v.name).collect();
        assert_eq!(volumes, ["tmp"]);
        assert!(all_container_ports(container(&objects)).iter().all(|p| *p != 9091));
        assert_eq!(service_ports(&objects[4]).len(), 2, "internal SIP over UDP and TCP only");
    }

    #[test]
    fn the_call_api_listens_where_the_agent_listener_does_with_its_token_mounted() {
        let s = settings("api: {enabled: true, port: 9443}\n");
        // On the host network: the pod's (node's internal) address, like the agent listener.
        assert_eq!(arg(&s, "--api").as_deref(), Some("$(POD_IP):9443"));
        assert_eq!(arg(&s, "--api-token-file").as_deref(), Some("/etc/trunkline/api/token"));
        let objects = render_fleet(&s);
        let (secret, keys, mode) = secret_of(volume(&objects, "api-token").unwrap());
        // No Secret named: the one the operator generates.
        assert_eq!(secret, "trunkline-api-token");
        assert_eq!((keys, mode), (vec!["token".to_string()], Some(0o440)));
        let m = mount(&objects, "api-token").unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (API_TOKEN_MOUNT_PATH, Some(true)));
        let ports = container(&objects).ports.clone().unwrap();
        let api = ports.iter().find(|p| p.name.as_deref() == Some("api")).unwrap();
        assert_eq!((api.protocol.as_deref(), api.container_port), (Some("TCP"), 9443));
        // The agent-facing Service carries it; the carrier-facing one never does.
        assert_eq!(service_ports(&objects[4])[2], ("api".into(), "TCP".into(), 9443));
        assert!(service_ports(&objects[3]).iter().all(|p| p.2 != 9443));
        // In the pod network: the pod's address too, never every address of the pod.
        let pod = settings(
            "api: {enabled: true, tokenSecret: my-token}\nhostNetwork: false\n\
             publicAddressFrom: Pod\n",
        );
        assert_eq!(arg(&pod, "--api").as_deref(), Some("$(POD_IP):9091"));
        let objects = render_fleet(&pod);
        assert_eq!(secret_of(volume(&objects, "api-token").unwrap()).0, "my-token");
    }

    #[test]
    fn the_ca_bundle_and_the_agent_credentials_are_mounted_read_only_with_only_their_keys() {
        let s = settings(
            "tls: {caSecret: carrier-ca}\nagentCredentialsSecret: agent-creds\n\
             agentUri: 'sip:agents.voice.svc:5070;transport=tcp'\n",
        );
        assert_eq!(arg(&s, "--tls-ca").as_deref(), Some("/etc/trunkline/tls-ca/ca.crt"));
        assert_eq!(arg(&s, "--agent-credentials").as_deref(), Some(AGENT_CREDENTIALS_MOUNT_PATH));
        assert_eq!(
            arg(&s, "--agent-uri").as_deref(),
            Some("sip:agents.voice.svc:5070;transport=tcp")
        );
        let objects = render_fleet(&s);
        assert_eq!(
            secret_of(volume(&objects, "tls-ca").unwrap()),
            ("carrier-ca".to_string(), vec!["ca.crt".to_string()], Some(0o440))
        );
        assert_eq!(
            secret_of(volume(&objects, "agent-credentials").unwrap()),
            ("agent-creds".to_string(), strings(&["username", "password"]), Some(0o440))
        );
        for (name, path) in
            [("tls-ca", TLS_CA_MOUNT_PATH), ("agent-credentials", AGENT_CREDENTIALS_MOUNT_PATH)]
        {
            let m = mount(&objects, name).unwrap();
            assert_eq!((m.mount_path.as_str(), m.read_only), (path, Some(true)), "{name}");
            assert_eq!(m.sub_path, None, "{name}: a subPath would freeze a rotated Secret");
        }
        // A CA alone opens no TLS listener and mounts no certificate.
        assert!(volume(&objects, "tls").is_none());
        assert!(!gateway_args(&s).iter().any(|a| a.starts_with("tls://")));
    }

    #[test]
    fn the_role_reads_only_the_credentials_secret_whatever_else_is_mounted() {
        let s = settings(
            "tls: {secretName: sip-tls, caSecret: carrier-ca}\n\
             agentCredentialsSecret: agent-creds\napi: {enabled: true}\n",
        );
        let objects = render_fleet(&s);
        let FleetObject::Role(role) = &objects[1] else { panic!("not a role") };
        let rules = role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        let names = rules[0].resource_names.clone().unwrap();
        assert_eq!(names, ["trunkline-gateway-credentials"]);
    }

    #[test]
    fn each_address_source_gives_its_gateway_flag() {
        let args = |text: &str| gateway_args(&settings(text)).join(" ");
        // Node (the default): the gateway reads its node, named by the downward API.
        let node = args("");
        assert!(
            node.contains(
                "--public-address-node $(NODE_NAME) --node-address-annotation trunkline.dev/public-address"
            ),
            "{node}"
        );
        assert!(!node.contains("--public-address "), "{node}");
        let annotated = args("nodeAddressAnnotation: example.com/ip\n");
        assert!(annotated.contains("--node-address-annotation example.com/ip"), "{annotated}");
        // Pod: the pod IP, expanded by Kubernetes; the carrier listeners keep every address,
        // the admin endpoints the pod's only.
        let pod = args("hostNetwork: false\npublicAddressFrom: Pod\n");
        assert!(pod.contains("--public-address $(POD_IP)"), "{pod}");
        assert!(pod.contains("--listen udp://0.0.0.0:5060"), "{pod}");
        assert!(pod.contains("--admin $(POD_IP):9090"), "{pod}");
        assert!(!pod.contains("--public-address-node"), "{pod}");
        // Fixed: the address itself.
        let fixed = args("publicAddress: 203.0.113.9\nreplicas: 1\n");
        assert!(fixed.contains("--public-address 203.0.113.9"), "{fixed}");
    }

    #[test]
    fn the_downward_api_gives_the_pod_ip_and_node_name_the_flags_use() {
        let objects = render_fleet(&OperatorSettings::default());
        let c = container(&objects);
        let env = c.env.clone().unwrap();
        let path = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone())
                .and_then(|v| v.field_ref)
                .map(|f| f.field_path)
        };
        assert_eq!(path("POD_IP").as_deref(), Some("status.podIP"));
        assert_eq!(path("NODE_NAME").as_deref(), Some("spec.nodeName"));
        // Every $(VAR) in the arguments is defined before the container starts (Kubernetes
        // leaves an undefined reference as literal text).
        for arg in c.args.as_ref().unwrap() {
            if let Some(start) = arg.find("$(") {
                let name = &arg[start + 2..start + arg[start..].find(')').unwrap()];
                assert!(env.iter().any(|e| e.name == name), "{arg}");
            }
        }
    }

    #[test]
    fn a_host_network_deployment_keeps_one_gateway_per_node_and_rolls_without_surge() {
        let objects = render_fleet(&OperatorSettings::default());
        let pod = workload_pod(&objects);
        assert_eq!(pod.host_network, Some(true));
        let anti = pod.affinity.as_ref().unwrap().pod_anti_affinity.as_ref().unwrap();
        let required = anti.required_during_scheduling_ignored_during_execution.as_ref().unwrap();
        assert_eq!(required[0].topology_key, "kubernetes.io/hostname");
        assert!(anti.preferred_during_scheduling_ignored_during_execution.is_none());
        let FleetObject::Deployment(d) = &objects[5] else { panic!("not a deployment") };
        let rolling = d.spec.as_ref().unwrap().strategy.as_ref().unwrap().rolling_update.clone();
        let rolling = rolling.unwrap();
        assert_eq!(
            (rolling.max_surge, rolling.max_unavailable),
            (Some(IntOrString::Int(0)), Some(IntOrString::Int(1)))
        );
        // In the pod network the spread is only preferred and a new pod comes up first.
        let objects = render_fleet(&settings("hostNetwork: false\npublicAddressFrom: Pod\n"));
        let anti = workload_pod(&objects).affinity.clone().unwrap().pod_anti_affinity.unwrap();
        assert!(anti.required_during_scheduling_ignored_during_execution.is_none());
        assert!(anti.preferred_during_scheduling_ignored_during_execution.is_some());
    }

    #[test]
    fn a_single_fixed_gateway_off_the_host_network_takes_host_ports() {
        let objects = render_fleet(&settings(
            "hostNetwork: false\npublicAddress: 203.0.113.9\nreplicas: 1\nrtpPorts: 40000-40199\n",
        ));
        let ports = container(&objects).ports.clone().unwrap();
        let host: Vec<i32> = ports.iter().filter_map(|p| p.host_port).collect();
        // SIP over UDP and TCP, and every RTP port: what carriers send to 203.0.113.9.
        assert_eq!(host.len(), 2 + 200);
        assert!(ports.iter().all(|p| p.host_port.is_none_or(|h| h == p.container_port)));
        assert!(
            ports
                .iter()
                .filter(|p| p.name.as_deref() == Some("admin"))
                .all(|p| p.host_port.is_none())
        );
        // On the host network no host port is declared beyond what hostNetwork implies.
        let objects = render_fleet(&settings("publicAddress: 203.0.113.9\nreplicas: 1\n"));
        assert!(container(&objects).ports.clone().unwrap().iter().all(|p| p.host_port.is_none()));
    }

    #[test]
    fn pod_labels_and_spread_constraints_reach_the_pods() {
        let objects = render_fleet(&settings(
            "podLabels: {team: voice}\ntopologySpreadConstraints:\n- {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}\n",
        ));
        let FleetObject::Deployment(d) = &objects[5] else { panic!("not a deployment") };
        let template = &d.spec.as_ref().unwrap().template;
        let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("voice"));
        assert_eq!(labels.get(FLEET_LABEL).map(String::as_str), Some("trunkline"));
        // Not in the selector, which cannot change.
        let selector = d.spec.as_ref().unwrap().selector.match_labels.clone().unwrap();
        assert!(!selector.contains_key("team"));
        let spread = template.spec.as_ref().unwrap().topology_spread_constraints.clone().unwrap();
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(
            spread[0].label_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&selector_labels(&OperatorSettings::default()))
        );
    }

    #[test]
    fn the_listen_flags_parse_as_the_gateway_parses_them() {
        let s = settings("tls: {secretName: sip-tls}\n");
        // Kubernetes expands $(POD_IP) before the gateway parses its flags.
        let args: Vec<String> =
            gateway_args(&s).iter().map(|a| a.replace(POD_IP_REF, "10.0.0.7")).collect();
        for pair in args.windows(2) {
            if pair[0] == "--listen" || pair[0] == "--internal-listen" {
                let parsed: crate::sip::transport::ListenAddr = pair[1].parse().unwrap();
                assert_eq!(parsed.to_string(), pair[1]);
            }
            if pair[0] == "--admin" {
                pair[1].parse::<std::net::SocketAddr>().unwrap();
            }
        }
    }

    #[test]
    fn env_carries_the_pod_identity_and_the_log_filter() {
        let objects = render_fleet(&settings("logLevel: trunkline=debug,info\n"));
        let env = container(&objects).env.clone().unwrap();
        let field = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone())
                .unwrap()
                .field_ref
                .unwrap()
                .field_path
        };
        assert_eq!(field("POD_NAME"), "metadata.name");
        assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
        let log = env.iter().find(|e| e.name == "RUST_LOG").unwrap();
        assert_eq!(log.value.as_deref(), Some("trunkline=debug,info"));
    }

    #[test]
    fn a_daemon_set_on_the_host_network_has_no_budget_and_host_dns() {
        let objects = render_fleet(&settings("mode: DaemonSet\n"));
        assert!(objects.iter().all(|o| !matches!(
            o,
            FleetObject::Deployment(_) | FleetObject::PodDisruptionBudget(_)
        )));
        let pod = workload_pod(&objects);
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert!(pod.affinity.is_none());
    }

    #[test]
    fn a_disabled_budget_is_not_rendered() {
        let objects = render_fleet(&settings("podDisruptionBudget: {enabled: false}\n"));
        assert!(objects.iter().all(|o| !matches!(o, FleetObject::PodDisruptionBudget(_))));
    }

    #[test]
    fn rtp_ports_are_listed_only_for_a_small_range() {
        let big = render_fleet(&OperatorSettings::default());
        assert!(all_container_ports(container(&big)).iter().all(|p| !(20000..=20999).contains(p)));
        let small = render_fleet(&settings("rtpPorts: 40000-40099\n"));
        let ports = all_container_ports(container(&small));
        assert_eq!(ports.iter().filter(|p| (40000..=40099).contains(*p)).count(), 100);
    }

    #[test]
    fn the_carrier_service_keeps_source_addresses_and_takes_tls() {
        let s = settings(
            "tls: {secretName: sip-tls}\ncarrierService:\n  annotations: {a: b}\n  \
             loadBalancerSourceRanges: [203.0.113.0/24]\n",
        );
        let objects = render_fleet(&s);
        let FleetObject::Service(svc) = &objects[3] else { panic!("not a service") };
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.load_balancer_source_ranges, Some(vec!["203.0.113.0/24".to_string()]));
        let ports: Vec<(String, i32)> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.protocol.clone().unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("UDP".to_string(), 5060), ("TCP".to_string(), 5060), ("TCP".to_string(), 5061)]
        );
        assert_eq!(svc.metadata.annotations.as_ref().unwrap()["a"], "b");
    }

    #[test]
    fn a_cluster_ip_carrier_service_has_no_external_traffic_policy() {
        let objects = render_fleet(&settings("carrierService: {type: ClusterIP}\n"));
        let FleetObject::Service(svc) = &objects[3] else { panic!("not a service") };
        assert!(svc.spec.as_ref().unwrap().external_traffic_policy.is_none());
    }

    #[test]
    fn the_internal_service_is_cluster_ip_on_the_internal_port() {
        let objects = render_fleet(&settings("internalPort: 5090\n"));
        let FleetObject::Service(svc) = &objects[4] else { panic!("not a service") };
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let ports: Vec<(Option<String>, i32)> =
            spec.ports.as_ref().unwrap().iter().map(|p| (p.protocol.clone(), p.port)).collect();
        assert_eq!(ports, [(Some("UDP".into()), 5090), (Some("TCP".into()), 5090)]);
    }

    fn flags_from(args: &[String], first: &str) -> Vec<String> {
        let start = args.iter().position(|a| a == first).expect("the flag is there");
        args[start..].to_vec()
    }

    #[test]
    fn by_default_records_go_to_stdout_with_no_spool_or_webhook_secret() {
        let s = OperatorSettings::default();
        let args = gateway_args(&s);
        // Last, after the other flags.
        assert_eq!(flags_from(&args, "--records-file"), ["--records-file", "-"]);
        assert_eq!(records_args(&s), ["--records-file", "-"]);
        let objects = render_fleet(&s);
        assert!(volume(&objects, RECORDS_SPOOL_VOLUME).is_none());
        assert!(mount(&objects, RECORDS_SPOOL_VOLUME).is_none());
        assert!(
            workload_pod(&objects)
                .security_context
                .clone()
                .unwrap()
                .fs_group_change_policy
                .is_none()
        );
        // Off: no record flag at all.
        let off = settings("records: {stdout: false}\n");
        assert!(records_args(&off).is_empty());
        assert!(!gateway_args(&off).iter().any(|a| a.starts_with("--records")));
        // Answered records: to each sink there is.
        let answered = settings("records: {answered: true}\n");
        assert_eq!(records_args(&answered), ["--records-file", "-", "--records-file-answered"]);
        let both = settings("records: {answered: true, webhook: {url: 'http://r.voice.svc/in'}}\n");
        let args = records_args(&both);
        assert!(args.iter().any(|a| a == "--records-file-answered"), "{args:?}");
        assert!(args.iter().any(|a| a == "--records-webhook-answered"), "{args:?}");
    }

    #[test]
    fn a_webhook_spools_on_an_empty_dir_sized_from_max_bytes() {
        let s = settings(
            "records:\n  webhook: {url: 'http://records.voice.svc:8080/in'}\n  \
             spool: {maxBytes: 268435456}\n",
        );
        assert_eq!(
            records_args(&s).join(" "),
            "--records-file - --records-webhook http://records.voice.svc:8080/in \
             --records-spool /var/lib/trunkline/records --records-spool-max-bytes 268435456"
        );
        let objects = render_fleet(&s);
        let v = volume(&objects, RECORDS_SPOOL_VOLUME).unwrap();
        // 256 MiB of records and the 64 MiB margin.
        let size = v.empty_dir.as_ref().unwrap().size_limit.clone().unwrap();
        assert_eq!(size, Quantity("320Mi".to_string()));
        assert!(v.persistent_volume_claim.is_none());
        let m = mount(&objects, RECORDS_SPOOL_VOLUME).unwrap();
        assert_eq!(m.mount_path, RECORDS_SPOOL_MOUNT_PATH);
        // Written by the gateway: not read-only, the whole volume.
        assert_eq!((m.read_only, m.sub_path.as_deref()), (None, None));
        // The root filesystem stays read-only: the spool is on the volume.
        let c = container(&objects);
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        let spool = arg(&s, "--records-spool").unwrap();
        assert!(spool.starts_with(&m.mount_path), "{spool}");
        // No key, no CA: no Secret mounted for them, and no signature flag.
        assert!(volume(&objects, "records-webhook-key").is_none());
        assert!(volume(&objects, "records-webhook-ca").is_none());
        assert_eq!(arg(&s, "--records-webhook-key-file"), None);
        assert!(!gateway_args(&s).contains(&"--records-spool-adopt".to_string()));
    }

    #[test]
    fn the_webhook_key_and_ca_are_files_with_one_key_each_never_values() {
        let s = settings(
            "records:\n  stdout: false\n  webhook:\n    url: https://records.example.com/v1\n\
             \x20   keySecret: {name: records-hmac, key: hmac-sha256}\n\
             \x20   caSecret: {name: records-ca}\n",
        );
        assert_eq!(
            arg(&s, "--records-webhook-key-file").as_deref(),
            Some("/etc/trunkline/records-webhook-key/key")
        );
        assert_eq!(
            arg(&s, "--records-webhook-ca-file").as_deref(),
            Some("/etc/trunkline/records-webhook-ca/ca.crt")
        );
        assert_eq!(arg(&s, "--records-file"), None);
        let objects = render_fleet(&s);
        for (name, secret, key, file, path) in [
            (
                "records-webhook-key",
                "records-hmac",
                "hmac-sha256",
                "key",
                RECORDS_WEBHOOK_KEY_MOUNT_PATH,
            ),
            ("records-webhook-ca", "records-ca", "ca.crt", "ca.crt", RECORDS_WEBHOOK_CA_MOUNT_PATH),
        ] {
            let source = volume(&objects, name).unwrap().secret.clone().unwrap();
            assert_eq!(source.secret_name.as_deref(), Some(secret), "{name}");
            let items: Vec<(String, String)> =
                source.items.unwrap().into_iter().map(|i| (i.key, i.path)).collect();
            assert_eq!(items, [(key.to_string(), file.to_string())], "{name}");
            assert_eq!(source.default_mode, Some(SECRET_FILE_MODE), "{name}");
            let m = mount(&objects, name).unwrap();
            assert_eq!((m.mount_path.as_str(), m.read_only), (path, Some(true)), "{name}");
            assert_eq!(m.sub_path, None, "{name}: a subPath would freeze a rotated Secret");
        }
        // Never in the environment, never read through the API: the Role keeps its one Secret.
        let c = container(&objects);
        assert!(
            c.env
                .iter()
                .flatten()
                .all(|e| e.value_from.as_ref().is_none_or(|v| v.secret_key_ref.is_none()))
        );
        assert!(c.env_from.is_none());
        let FleetObject::Role(role) = &objects[1] else { panic!("not a role") };
        let names = role.rules.as_ref().unwrap()[0].resource_names.clone().unwrap();
        assert_eq!(names, ["trunkline-gateway-credentials"]);
        assert!(!gateway_args(&s).iter().any(|a| a.contains("records-hmac")));
    }

    #[test]
    fn a_shared_claim_gives_each_pod_its_own_spool_and_adopts_the_others() {
        let s = settings(
            "mode: DaemonSet\nrecords:\n  webhook: {url: 'http://records.voice.svc/in'}\n  \
             spool: {volume: {persistentVolumeClaim: {claimName: records-spools}}}\n",
        );
        let args = gateway_args(&s);
        assert_eq!(
            flags_from(&args, "--records-spool"),
            [
                "--records-spool",
                "/var/lib/trunkline/records/$(POD_NAME)",
                "--records-spool-adopt",
                "--records-spool-max-bytes",
                "1073741824"
            ]
        );
        let objects = render_fleet(&s);
        let v = volume(&objects, RECORDS_SPOOL_VOLUME).unwrap();
        assert_eq!(v.persistent_volume_claim.as_ref().unwrap().claim_name, "records-spools");
        assert_eq!(v.persistent_volume_claim.as_ref().unwrap().read_only, None);
        assert!(v.empty_dir.is_none());
        // The whole claim is mounted (the gateway must see the other pods' spools), and the
        // pod name in the flag comes from the downward API.
        let m = mount(&objects, RECORDS_SPOOL_VOLUME).unwrap();
        assert_eq!(
            (m.mount_path.as_str(), m.sub_path.as_deref(), m.sub_path_expr.as_deref()),
            (RECORDS_SPOOL_MOUNT_PATH, None, None)
        );
        let env = container(&objects).env.clone().unwrap();
        let pod_name = env.iter().find(|e| e.name == "POD_NAME").unwrap();
        assert_eq!(
            pod_name.value_from.clone().unwrap().field_ref.unwrap().field_path,
            "metadata.name"
        );
        let psc = workload_pod(&objects).security_context.clone().unwrap();
        assert_eq!(psc.fs_group, Some(GATEWAY_UID));
        assert_eq!(psc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
    }

    #[test]
    fn without_a_webhook_the_spool_settings_render_nothing() {
        let s = settings(
            "records: {spool: {maxBytes: 2097152, volume: {persistentVolumeClaim: {claimName: s}}}}\n",
        );
        assert_eq!(records_args(&s), ["--records-file", "-"]);
        let objects = render_fleet(&s);
        let names: Vec<String> =
            workload_pod(&objects).volumes.iter().flatten().map(|v| v.name.clone()).collect();
        assert_eq!(names, ["tmp"]);
        assert!(
            workload_pod(&objects)
                .security_context
                .clone()
                .unwrap()
                .fs_group_change_policy
                .is_none()
        );
    }

    #[test]
    fn rendering_twice_gives_the_same_objects() {
        let s = settings("tls: {secretName: x}\npodAnnotations: {b: '2', a: '1'}\n");
        assert_eq!(render_fleet(&s), render_fleet(&s));
    }
}
