//! What `trunkline operator` is told about the gateway fleet it runs: one YAML file, filled by
//! the Helm chart from its values, read once at start ([`OperatorSettings::load`]). `fleet`
//! renders the fleet's objects from it; the status controller takes `egressAddresses` (the
//! OutboundTrunk `status.sourceAddresses`) and `credentialsSecret` from it.
//!
//! Every field has a default, so an empty file is a working fleet. A complete file, with the
//! defaults:
//!
//! ```yaml
//! name: trunkline                 # the fleet; names its objects, labels them trunkline.dev/fleet
//! namespace: trunkline            # where the fleet runs
//! image: ghcr.io/trunkline/trunkline:<crate version>
//! imagePullPolicy: IfNotPresent   # Always | IfNotPresent | Never
//! imagePullSecrets: []            # names of docker-registry Secrets in the fleet's namespace
//! mode: Deployment                # Deployment | DaemonSet
//! replicas: 2                     # Deployment mode only
//! hostNetwork: true               # pods on the node's network: SIP and RTP on the node's IPs
//! sipPort: 5060                   # carrier-facing SIP, UDP and TCP
//! tls:
//!   port: 5061                    # carrier-facing SIP over TLS, on when secretName is set
//!   secretName: null              # kubernetes.io/tls Secret: tls.crt, tls.key
//!   caSecret: null                # Secret with ca.crt: CAs trusted toward carriers and agents
//! internalPort: 5080              # agent-facing SIP, UDP and TCP
//! agentNetworks: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fd00::/8, 127.0.0.0/8, ::1/128]
//!                                 # sources the agent-facing listener takes new calls from
//! agentCredentialsSecret: null    # kubernetes.io/basic-auth Secret the agent runtime answers
//! agentUri: null                  # SIP URI of the agent runtime for calls started by the API
//! api: {enabled: false, port: 9091, tokenSecret: null}   # the call API (POST /v1/calls)
//! adminPort: 9090                 # /metrics, /healthz, /readyz (HTTP)
//! rtpPorts: 20000-20999           # UDP ports of the RTP relays, LOW-HIGH
//! publicAddressFrom: Node         # Node | Pod | Fixed: what each gateway advertises (see below)
//! publicAddress: null             # the one address of publicAddressFrom: Fixed
//! nodeAddressAnnotation: trunkline.dev/public-address   # per-node override of Node discovery
//! egressAddresses: []             # the IPs carriers see our calls come from
//! region: null                    # serve only the trunks of this region (and region-less ones)
//! watchNamespace: null            # gateways serve the trunks of this namespace only
//! operatorDeployment: null        # the operator's Deployment: owner of the fleet's objects
//! credentialsSecret: trunkline-gateway-credentials
//! carrierService:
//!   type: LoadBalancer            # ClusterIP | NodePort | LoadBalancer
//!   annotations: {}
//!   loadBalancerSourceRanges: []  # CIDRs; LoadBalancer only
//!   externalTrafficPolicy: Local  # Local | Cluster; NodePort and LoadBalancer only
//!   sessionAffinity: ClientIP     # ClientIP | None
//! internalService:
//!   annotations: {}
//!   sessionAffinity: ClientIP
//! drainSeconds: 30
//! resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 512Mi}}
//! nodeSelector: {}
//! tolerations: []
//! affinity: null                  # Deployment mode: spread over nodes when not set
//! podAnnotations: {}
//! priorityClassName: null
//! podDisruptionBudget: {enabled: true, maxUnavailable: 1}
//! podLabels: {}                   # extra labels of the gateway pods (not in the selector)
//! topologySpreadConstraints: []   # of the gateway pods; labelSelector defaults to the fleet's
//! logLevel: info                  # RUST_LOG of the gateways
//! logFormat: text                 # text | json: the gateways' log lines
//! realm: trunkline                # digest realm of the gateways' challenges
//! digestAlgorithms: [MD5, SHA-256]  # challenges offered to carriers, in this order
//! nonceTtlSeconds: 300            # how long a digest nonce stays valid
//! agentTimeoutSeconds: 60         # how long an agent may ring (480 to the carrier after)
//! mediaTimeoutSeconds: 30         # RTP silence on an answered call before it is hung up
//! transferTimeoutSeconds: 30      # how long a bridged transfer's destination may ring
//! maxCallDurationSeconds: 14400   # an answered call's longest life; 0: no ceiling
//! maxHoldSeconds: 3600            # hold that suspends the media timeout; 0: the whole hold
//! minSessionExpiresSeconds: 90    # RFC 4028 Min-SE, at least 90
//! guard:                          # per-source limits of the carrier-facing listener
//!   sourceInviteRate: 50          # new INVITEs per second per source; 0: no limit
//!   sourceOptionsRate: 10         # OPTIONS per second per source; 0: no limit
//!   sourceRequestRate: 10         # other requests and garbage per second per source; 0: no limit
//!   globalRequestRate: 2000       # from all sources not known-good together; 0: no limit
//!   maxSources: 65536             # source addresses tracked
//!   authFailures: 5               # refused digest answers that lock an address out; 0: never
//!   authFailureWindowSeconds: 60  # the window they are counted in
//!   authLockoutSeconds: 300       # how long a locked-out address is ignored
//!   usernameFailures: 20          # refused answers for one username that slow it down; 0: never
//!   usernameAttemptRate: 1        # answers per second checked for a slowed username
//!   nonceGuesses: 3               # wrong answers one nonce takes
//!   refusalLogIntervalSeconds: 10 # one refusal log line per reason per interval
//! connections:                    # TCP and TLS connections of the SIP listeners
//!   max: 10000                    # open at once, accepted and opened
//!   maxPerAddress: 100            # accepted from one address (IPv6: one /64), at most max
//!   messageTimeoutSeconds: 10     # a message's first byte to the end of its body
//!   idleTimeoutSeconds: 300       # silence between messages
//!   tlsHandshakeTimeoutSeconds: 5 # an accepted TLS connection's handshake
//!   writeTimeoutSeconds: 10       # a write waiting for the peer to read
//! records:                        # session records, one JSON object per admitted call
//!   stdout: true                  # JSON lines on the gateways' stdout, beside their logs
//!   answered: false               # also a first record at each answer (kind answered)
//!   webhook:
//!     url: null                   # http:// or https:// receiver; none: no webhook, no spool
//!     keySecret: {name: null, key: key}      # the HMAC-SHA256 key of the signature header
//!     caSecret: {name: null, key: ca.crt}    # a private CA of an https:// receiver
//!   spool:
//!     maxBytes: 1073741824        # bytes of records waiting for the webhook, at least 1 MiB
//!     volume: {emptyDir: {}}      # or {persistentVolumeClaim: {claimName: NAME}}
//! ```
//!
//! **Outbound calls.** The agent-facing listener (`internalPort`) and the call API (`api`) take
//! new calls only from `agentNetworks` (the gateway's `--agent-networks`); on the host network
//! that is the only guard, since NetworkPolicies do not apply to host-network pods. Secrets the
//! gateway needs for them (`api.tokenSecret`, `tls.caSecret`, `agentCredentialsSecret`) are
//! mounted into its pods as read-only files: its Role still reads one Secret only. With
//! `api.enabled` and no `tokenSecret`, the operator generates `<name>-api-token` (key `token`,
//! [`OperatorSettings::api_token_secret`]) once, and never changes it: delete it to rotate.
//!
//! **The media path.** A carrier sends RTP to the address a gateway writes in its SDP, so that
//! address must reach the very pod that holds the call: Services carry SIP only (see
//! `fleet`). [`OperatorSettings::media_path`] checks the combination and refuses one that cannot
//! carry audio, naming the field:
//!
//! | `publicAddressFrom` | each gateway advertises | needs |
//! | --- | --- | --- |
//! | `Node` (default) | its node's address: annotation `nodeAddressAnnotation`, else ExternalIP, else InternalIP | `hostNetwork: true` |
//! | `Pod` | its pod IP | pod IPs that carriers can route to (VPC-native / BGP-announced pod networks) |
//! | `Fixed` | `publicAddress` | one gateway (`Deployment`, `replicas` ≤ 1); without `hostNetwork` the SIP and RTP ports become host ports of its node |
//!
//! **Session records.** Each gateway writes a record of every call it admitted (DESIGN §5,
//! `observe::record`) to the sinks `records` turns on; [`RecordsSettings`] says what each
//! field gives, `fleet` renders the flags, volumes and mounts:
//!
//! - `stdout` (default on): `--records-file -`. The gateways' log lines go to stdout too, so a
//!   collector tells the two apart by the record's first key: every record line starts with
//!   `{"schema":"trunkline.dev/session-record/v1"`, which no log line does (text lines are not
//!   JSON, JSON lines start with `{"timestamp"`). Stdout rather than a file on a volume because
//!   the log agents clusters already run (Fluent Bit, Vector, Alloy, the clouds' agents) read
//!   container stdout from the node, with the kubelet rotating it; a file would need a sidecar
//!   to ship it. Stdout is the best-effort copy (the kubelet's rotation can outrun a slow
//!   collector): the webhook is the durable one.
//! - `answered` (default off): `--records-file-answered` with stdout and
//!   `--records-webhook-answered` with a webhook: each sink also gets a record at the answer,
//!   `"kind": "answered"`, before the final one (a live view, a CRM that opens the contact).
//! - `webhook.url`: `--records-webhook`, through the on-disk spool (`--records-spool`,
//!   `--records-spool-max-bytes`), with `keySecret` (`--records-webhook-key-file`) and, for an
//!   `https://` receiver with a private CA, `caSecret` (`--records-webhook-ca-file`). Both
//!   Secrets are mounted as read-only files holding the one key each (never an environment
//!   variable or a flag value), like the other Secrets above: neither the gateways' Role nor the
//!   operator's RBAC reads them. The URL itself is in the pod spec: no credential in it.
//! - `spool.volume`: the gateway's root filesystem is read-only, so the spool is on a volume.
//!   An `emptyDir` (the default) is the pod's own: it keeps the records waiting across a restart
//!   of the gateway container (a crash, an OOM kill, SIGKILL), not across the pod's deletion (a
//!   rollout, a node drain, a scale-down), when whatever the webhook has not taken by the end
//!   of the drain is lost. Its `sizeLimit` is `maxBytes` plus [`SPOOL_SIZE_MARGIN_BYTES`]
//!   (the spool's own overshoot is under one 1 MiB segment; going over the limit would evict
//!   the pod and its spool with it). A `persistentVolumeClaim` (ReadWriteMany, one claim the
//!   whole fleet mounts) keeps them across the pod's deletion: each gateway spools into
//!   `<claim>/<pod name>` and, with `--records-spool-adopt`, takes over the spools of pods that
//!   are gone, so a new pod delivers what a deleted one left. The claim's root must be
//!   writable by uid/gid 65532 (NFS-backed claims ignore `fsGroup`).
//!
//! **Security limits.** `guard`, `connections` and the call lifetime (`maxCallDurationSeconds`,
//! `maxHoldSeconds`, `minSessionExpiresSeconds`) are the gateway's flags of the same names
//! (docs/security/per-source.md, streams.md, lifetime.md), with the gateway's defaults:
//! [`SourceGuardSettings`] and [`ConnectionSettings`] name each flag. `fleet` passes every one
//! of them, changed or not, as it passes the other gateway flags: the pod spec then shows what
//! each gateway runs with, and the chart's values, not the built-in defaults of whatever
//! gateway image runs, decide it. [`OperatorSettings::validate`] refuses what the gateway would
//! refuse or could not use: a zero that is no "off" (a window, a back-off, a deadline), a
//! per-address connection cap above the global one, a `Min-SE` below RFC 4028's 90 s, a
//! username slowdown at 0 answers per second (`usernameFailures: 0` turns it off).
//!
//! The file is read through `config::yaml` (the one YAML facade) into a JSON value and then into
//! the struct with `serde_path_to_error`, so that an error names the file and the field path
//! (`settings.yaml: carrierService.type: unknown variant ...`). Checks that involve more than
//! one field (ports that collide, a source range on a ClusterIP Service) run after parsing, in
//! [`OperatorSettings::validate`], with the same kind of error.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::FLEET_LABEL;
use crate::config::destination::SipDestination;
use crate::config::yaml;
use crate::sip::session_timer::RFC_MIN_SE;

/// The image registry and repository of the default gateway image; the tag is the crate's
/// version, so an operator runs gateways of its own release.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/trunkline/trunkline";

/// The node annotation that overrides a node's ExternalIP as the address its gateway
/// advertises (`nodeAddressAnnotation`'s default).
pub const NODE_ADDRESS_ANNOTATION: &str = "trunkline.dev/public-address";

/// The most ports a gateway without `hostNetwork` exposes as host ports (SIP and the RTP range
/// of a `Fixed` single gateway): each is a rule in the node's packet filter.
pub const MAX_HOST_PORTS: u32 = 1024;

/// Seconds added to `drainSeconds` for `terminationGracePeriodSeconds`: the gateway stops at the
/// end of its drain, and this margin lets it flush records and exit before the kubelet kills it.
pub const DRAIN_MARGIN_SECONDS: u32 = 10;

/// The longest suffix `fleet` appends to the fleet's name (`-internal`): a Service name is a
/// DNS label of at most 63 characters.
const LONGEST_NAME_SUFFIX: usize = "-internal".len();

/// Everything `trunkline operator` is told about its gateway fleet. See the module docs for the
/// file format; each field says its unit and default.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperatorSettings {
    /// The fleet's name. Its objects are named after it (`<name>-gateway`, `<name>-carrier`,
    /// `<name>-internal`) and labelled `trunkline.dev/fleet: <name>`; it must be unique in the
    /// cluster (the ClusterRole and ClusterRoleBinding are cluster-wide). A DNS label starting
    /// with a letter, at most 54 characters. Default `trunkline`.
    pub name: String,
    /// The namespace the fleet runs in (and where the credentials Secret lives). Default
    /// `trunkline`.
    pub namespace: String,
    /// The gateway image. Default `ghcr.io/trunkline/trunkline:<version of this operator>`.
    pub image: String,
    /// When the kubelet pulls the image. Default `IfNotPresent`.
    pub image_pull_policy: ImagePullPolicy,
    /// Names of `kubernetes.io/dockerconfigjson` Secrets in the fleet's namespace for a private
    /// registry. Default none.
    pub image_pull_secrets: Vec<String>,
    /// `Deployment` (replicas behind the Services) or `DaemonSet` (one gateway per selected
    /// node, usually with `hostNetwork`). Default `Deployment`.
    pub mode: FleetMode,
    /// Number of gateway pods in `Deployment` mode; ignored in `DaemonSet` mode. Default 2.
    pub replicas: i32,
    /// Run the gateways on the node's network: SIP and RTP use the node's addresses and ports
    /// directly (no Service in the media path), which is how carriers reach RTP without NAT.
    /// Sets `dnsPolicy: ClusterFirstWithHostNet`. One gateway per node. The agent-facing, call
    /// API and admin ports then listen on the node's primary address (the pod IP the kubelet
    /// reports: its `--node-ip`, by default the first InternalIP), carriers' SIP on every
    /// address of the node; NetworkPolicies do not apply to host-network pods, so firewall the
    /// agent-facing and admin ports to the cluster's networks on the nodes, and give a node
    /// whose primary address is public its private one with the kubelet's `--node-ip`.
    /// Default true.
    pub host_network: bool,
    /// Carrier-facing SIP port, UDP and TCP. Default 5060.
    pub sip_port: u16,
    /// Carrier-facing SIP over TLS: on when `secretName` is set. Default off.
    pub tls: TlsSettings,
    /// Agent-facing (internal) SIP port, UDP and TCP: the agent runtime sends outbound calls
    /// and transfers here. Default 5080.
    pub internal_port: u16,
    /// The networks (CIDRs) the agent-facing listener and the call API take new calls from
    /// (the gateway's `--agent-networks`); a new INVITE from anywhere else gets 403. On the host
    /// network this is the guard of those ports (NetworkPolicies do not apply there). Default
    /// the private ranges a cluster's pods and nodes use, and loopback: `10.0.0.0/8`,
    /// `172.16.0.0/12`, `192.168.0.0/16`, `fd00::/8`, `127.0.0.0/8`, `::1/128`.
    pub agent_networks: Vec<Cidr>,
    /// A `kubernetes.io/basic-auth` Secret in the fleet's namespace (keys `username`,
    /// `password`): the agent runtime's new INVITEs must answer a digest challenge with them.
    /// Mounted read-only into the gateways (`--agent-credentials`). Default none: no digest.
    #[serde(deserialize_with = "string_or_empty")]
    pub agent_credentials_secret: Option<String>,
    /// SIP URI of the agent runtime that calls started through the call API are bridged to,
    /// unless the request names its own (`--agent-uri`), e.g.
    /// `sip:agents.voice.svc.cluster.local:5070;transport=tcp`. Default none.
    #[serde(deserialize_with = "string_or_empty")]
    pub agent_uri: Option<String>,
    /// The call API (`POST /v1/calls`, bearer token). Default off.
    pub api: ApiSettings,
    /// HTTP port of `/metrics`, `/healthz` and `/readyz` (the probes use it). Default 9090.
    pub admin_port: u16,
    /// UDP port range of the RTP relays, `LOW-HIGH` inclusive, `LOW` even (RTP on even ports,
    /// RTCP on the next odd one). Default `20000-20999`: 500 RTP/RTCP pairs per gateway.
    pub rtp_ports: PortRange,
    /// What each gateway advertises to carriers in Via, Contact and SDP (see the module docs):
    /// `Node`, `Pod` or `Fixed`. Default `Fixed` when `publicAddress` is set, else `Node`.
    pub public_address_from: Option<AddressSource>,
    /// The one IP address of `publicAddressFrom: Fixed`, which carriers reach the single gateway
    /// at (a node's address, or a 1:1 NAT to it). Default none.
    #[serde(deserialize_with = "ip_or_empty")]
    pub public_address: Option<IpAddr>,
    /// With `publicAddressFrom: Node`, a node annotation whose value (an IP) wins over the
    /// node's ExternalIP: for clouds where the public address is not on the Node object.
    /// Default `trunkline.dev/public-address`.
    pub node_address_annotation: String,
    /// The IP addresses carriers see outbound calls come from (the cluster's NAT or the nodes'
    /// public IPs), published in every OutboundTrunk's `status.sourceAddresses` for the
    /// carrier's allowlist. Default none.
    pub egress_addresses: Vec<IpAddr>,
    /// Serve only the trunks of this region (and trunks without regions). Default none: every
    /// trunk.
    #[serde(deserialize_with = "string_or_empty")]
    pub region: Option<String>,
    /// Serve only the trunks of this namespace (the operator's `--watch-namespace`, passed on
    /// to the gateways, so that they never serve what the operator did not validate). Default
    /// none: every namespace.
    #[serde(deserialize_with = "string_or_empty")]
    pub watch_namespace: Option<String>,
    /// The operator's own Deployment, in the fleet's namespace. Every object of the fleet gets
    /// it as owner, so deleting the operator (`helm uninstall`) deletes the fleet: gateways,
    /// Services (a cloud load balancer) and the credentials Secret. Default none: no owner.
    #[serde(deserialize_with = "string_or_empty")]
    pub operator_deployment: Option<String>,
    /// Name of the Secret, in the fleet's namespace, that the operator writes with the
    /// credentials of the accepted trunks and the gateways read (the only Secret they may read).
    /// Default `trunkline-gateway-credentials`.
    pub credentials_secret: String,
    /// The carrier-facing Service. Default a `LoadBalancer` with `externalTrafficPolicy: Local`.
    pub carrier_service: CarrierServiceSettings,
    /// The agent-facing Service (always `ClusterIP`).
    pub internal_service: InternalServiceSettings,
    /// Seconds a gateway lets calls in progress finish after SIGTERM (new calls get 503), its
    /// `--drain-timeout`. The pod's `terminationGracePeriodSeconds` is this plus 10. Default 30.
    pub drain_seconds: u32,
    /// CPU and memory of the gateway container. Default requests `cpu: 100m, memory: 128Mi`,
    /// limit `memory: 512Mi`, no CPU limit (throttling shows as RTP jitter).
    pub resources: ResourceRequirements,
    /// Node labels the gateway pods must match. Default none.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the gateway pods. Default none.
    pub tolerations: Vec<Toleration>,
    /// Affinity of the gateway pods. Default none, which in `Deployment` mode means a preferred
    /// anti-affinity that spreads the replicas over nodes.
    pub affinity: Option<Affinity>,
    /// Annotations of the gateway pods (for example Prometheus scrape hints). Default none.
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra labels of the gateway pods (not of the selector, which cannot change). Default
    /// none.
    pub pod_labels: BTreeMap<String, String>,
    /// Topology spread constraints of the gateway pods (zones, nodes); a constraint without
    /// `labelSelector` selects the fleet's gateways. Default none.
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the gateway pods. Default none.
    #[serde(deserialize_with = "string_or_empty")]
    pub priority_class_name: Option<String>,
    /// The PodDisruptionBudget of the gateways (`Deployment` mode only: node drains skip
    /// DaemonSet pods anyway). Default on, `maxUnavailable: 1`.
    pub pod_disruption_budget: PodDisruptionBudgetSettings,
    /// The gateways' log filter (`RUST_LOG` syntax: `info`, `trunkline=debug,info`). Default
    /// `info`.
    pub log_level: String,
    /// `text` or `json` (one JSON object a line) log lines of the gateways. Default `text`.
    pub log_format: LogFormat,
    /// Digest realm of the gateways' challenges. Default `trunkline`.
    pub realm: String,
    /// Digest algorithms offered to carriers, one challenge each, in order: `MD5`, `SHA-256`.
    /// Many carriers read only the first challenge. Default `[MD5, SHA-256]`.
    pub digest_algorithms: Vec<DigestAlgorithm>,
    /// Seconds a digest nonce stays valid (then `stale=true`). Default 300.
    pub nonce_ttl_seconds: u32,
    /// Seconds an agent may ring before the call is given up (480 to the carrier). Default 60.
    pub agent_timeout_seconds: u32,
    /// Seconds without RTP on an answered call (not on hold) before both legs are hung up.
    /// Default 30.
    pub media_timeout_seconds: u32,
    /// Seconds a bridged transfer's destination may ring before the transfer fails (the agent
    /// keeps the caller). Default 30.
    pub transfer_timeout_seconds: u32,
    /// Seconds an answered call may last before the gateway hangs up both legs
    /// (`--max-call-duration`): the ceiling of the trunks' `limits.maxCallDurationSeconds`.
    /// `0`: no ceiling. Default 14400 (4 h).
    pub max_call_duration_seconds: u32,
    /// Seconds a call may stay on hold with the media timeout suspended (`--max-hold`); then
    /// `mediaTimeoutSeconds` of silence ends it. `0`: the whole hold. Default 3600.
    pub max_hold_seconds: u32,
    /// The smallest session interval (RFC 4028 `Min-SE`) accepted from a carrier that asks for
    /// session timers (`--min-session-expires`); a smaller `Session-Expires` gets 422. At least
    /// 90 (RFC 4028 §4). Default 90.
    pub min_session_expires_seconds: u32,
    /// Per-source limits of the carrier-facing listener, before authentication (see
    /// [`SourceGuardSettings`]). Default the gateway's own.
    pub guard: SourceGuardSettings,
    /// Limits of the TCP and TLS connections of the SIP listeners (see [`ConnectionSettings`]).
    /// Default the gateway's own.
    pub connections: ConnectionSettings,
    /// The gateways' session records: stdout, a webhook and its spool (see the module docs).
    /// Default: JSON lines on stdout, no webhook.
    pub records: RecordsSettings,
}

/// What a gateway advertises to carriers (Via, Contact, SDP): the address their signalling
/// and media must reach it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum AddressSource {
    /// The address of the node the pod runs on, looked up by the gateway at start (the node
    /// annotation, else its ExternalIP, else its InternalIP). Needs `hostNetwork`.
    Node,
    /// The pod's own IP: for pod networks carriers can route to.
    Pod,
    /// `publicAddress`, for the single gateway of a one-replica fleet.
    Fixed,
}

impl AddressSource {
    /// The value in the settings file.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Node => "Node",
            AddressSource::Pod => "Pod",
            AddressSource::Fixed => "Fixed",
        }
    }
}

/// The gateways' log line format (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for log pipelines.
    Json,
}

impl LogFormat {
    /// The value of `--log-format`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A digest algorithm the gateways may offer (`--digest-algorithms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum DigestAlgorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl DigestAlgorithm {
    /// The token on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }
}

/// How carriers' signalling and media reach the gateway holding a call
/// ([`OperatorSettings::media_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaPath {
    /// Host network; each gateway advertises its node's address.
    NodeAddress,
    /// Each gateway advertises its pod IP, which carriers route to.
    PodAddress,
    /// One gateway advertises `address`; with `host_ports` its SIP and RTP ports are host
    /// ports of its node (no host network).
    Fixed { address: IpAddr, host_ports: bool },
}

/// Where the gateways run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum FleetMode {
    /// A Deployment of `replicas` pods behind the Services, with a PodDisruptionBudget.
    #[default]
    Deployment,
    /// A DaemonSet: one pod on every node that matches `nodeSelector`.
    DaemonSet,
}

/// The container image pull policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Carrier-facing SIP over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The TLS port (TCP). Default 5061.
    pub port: u16,
    /// A `kubernetes.io/tls` Secret in the fleet's namespace (keys `tls.crt`, `tls.key`, as
    /// cert-manager writes them), mounted read-only into the gateways; renewed certificates
    /// are picked up without a restart. Default none: no TLS listener.
    #[serde(deserialize_with = "string_or_empty")]
    pub secret_name: Option<String>,
    /// A Secret in the fleet's namespace whose key `ca.crt` is a PEM bundle of CA certificates
    /// trusted, beside the system's roots, for TLS toward carriers and agent runtimes
    /// (`--tls-ca`); only that key is mounted. Default none: the system's roots only.
    #[serde(deserialize_with = "string_or_empty")]
    pub ca_secret: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { port: 5061, secret_name: None, ca_secret: None }
    }
}

/// The gateways' call API: `POST /v1/calls`, `GET`/`DELETE /v1/calls/{id}`, with a bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Serve it: on `port` of each gateway (the pod's address only, as the agent-facing
    /// listener) and of the agent-facing Service. Default false.
    pub enabled: bool,
    /// Its TCP port. Default 9091.
    pub port: u16,
    /// A Secret in the fleet's namespace whose key `token` is the bearer token, mounted
    /// read-only into the gateways (`--api-token-file`). Default none: the operator generates
    /// `<name>-api-token` with a random token.
    #[serde(deserialize_with = "string_or_empty")]
    pub token_secret: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings { enabled: false, port: 9091, token_secret: None }
    }
}

/// The per-source limits of the carrier-facing listener (`call::guard`,
/// docs/security/per-source.md): each field is the gateway flag of the same name, in seconds
/// where it says so, with the flag's default. They apply per gateway pod: behind a load
/// balancer that spreads one source over N pods, that source gets N times the rates.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SourceGuardSettings {
    /// New INVITEs per second from one source address (bursts of twice that); over it they are
    /// dropped unanswered (`--source-invite-rate`). `0`: no limit. Default 50.
    pub source_invite_rate: u32,
    /// OPTIONS outside a dialog per second from one source (`--source-options-rate`). `0`: no
    /// limit. Default 10.
    pub source_options_rate: u32,
    /// Other out-of-dialog requests and unreadable messages answered per second per source
    /// (`--source-request-rate`). `0`: no limit. Default 10.
    pub source_request_rate: u32,
    /// New out-of-dialog requests per second from all sources together that are not
    /// known-good (`--global-request-rate`). `0`: no limit. Default 2000.
    pub global_request_rate: u32,
    /// Source addresses tracked at most, the least recently seen forgotten first
    /// (`--max-sources`). At least 1. Default 65536.
    pub max_sources: u32,
    /// Refused digest answers from one address within `authFailureWindowSeconds` that lock it
    /// out (`--auth-failures`); known-good sources never are. `0`: no lockout. Default 5.
    pub auth_failures: u32,
    /// The window refused answers are counted in (`--auth-failure-window`). At least 1.
    /// Default 60.
    pub auth_failure_window_seconds: u32,
    /// How long a locked-out address is ignored (`--auth-lockout`). At least 1. Default 300.
    pub auth_lockout_seconds: u32,
    /// Refused answers for one username within the window, from any addresses, that slow it
    /// down (`--username-failures`). `0`: never. Default 20.
    pub username_failures: u32,
    /// Answers per second checked for a slowed username from addresses that are not
    /// known-good (`--username-attempt-rate`). At least 1. Default 1.
    pub username_attempt_rate: u32,
    /// Wrong answers one digest nonce takes; then every answer with it gets 403
    /// (`--nonce-guesses`). At least 1. Default 3.
    pub nonce_guesses: u32,
    /// At most one refusal log line per reason per this many seconds, with the count left out
    /// (`--refusal-log-interval`). At least 1. Default 10.
    pub refusal_log_interval_seconds: u32,
}

impl Default for SourceGuardSettings {
    fn default() -> Self {
        SourceGuardSettings {
            source_invite_rate: 50,
            source_options_rate: 10,
            source_request_rate: 10,
            global_request_rate: 2000,
            max_sources: 65_536,
            auth_failures: 5,
            auth_failure_window_seconds: 60,
            auth_lockout_seconds: 300,
            username_failures: 20,
            username_attempt_rate: 1,
            nonce_guesses: 3,
            refusal_log_interval_seconds: 10,
        }
    }
}

/// The TCP and TLS connections of the gateways' SIP listeners (`sip::transport::Limits`,
/// docs/security/streams.md); each field names its gateway flag and has the flag's default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// Connections open at once: accepted ones (TLS handshakes included) and those the gateway
    /// opens (`--max-connections`). At least 1. Default 10000.
    pub max: u32,
    /// Connections accepted from one address, an IPv6 address counting by its /64
    /// (`--max-connections-per-address`). At least 1 and at most `max`. Default 100.
    pub max_per_address: u32,
    /// Seconds a message may take from its first byte to the end of its body
    /// (`--message-timeout`). At least 1. Default 10.
    pub message_timeout_seconds: u32,
    /// Seconds a connection may stay silent between messages (`--connection-idle-timeout`).
    /// At least 1. Default 300.
    pub idle_timeout_seconds: u32,
    /// Seconds an accepted TLS connection's handshake may take (`--tls-handshake-timeout`).
    /// At least 1. Default 5.
    pub tls_handshake_timeout_seconds: u32,
    /// Seconds a write may wait for the peer to read (`--write-timeout`). At least 1.
    /// Default 10.
    pub write_timeout_seconds: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            max: 10_000,
            max_per_address: 100,
            message_timeout_seconds: 10,
            idle_timeout_seconds: 300,
            tls_handshake_timeout_seconds: 5,
            write_timeout_seconds: 10,
        }
    }
}

/// The smallest `records.spool.maxBytes`: one spool segment (`observe::spool`).
pub const MIN_SPOOL_BYTES: u64 = 1 << 20;

/// What the spool's volume holds beyond `records.spool.maxBytes`: the acknowledged part of the
/// oldest segment (under 1 MiB), the lock and cursor files, block rounding of the segments. An
/// emptyDir's `sizeLimit` is `maxBytes` plus this, with room to spare: a pod over its
/// `sizeLimit` is evicted, and its spool is lost with it.
pub const SPOOL_SIZE_MARGIN_BYTES: u64 = 64 << 20;

/// The key of `records.webhook.keySecret` when none is named.
pub const WEBHOOK_KEY_SECRET_KEY: &str = "key";

/// The key of `records.webhook.caSecret` when none is named.
pub const WEBHOOK_CA_SECRET_KEY: &str = "ca.crt";

/// The gateways' session records (`--records-*`); see the module docs for what each sink
/// gives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RecordsSettings {
    /// Write every record as one JSON line on the gateway's stdout (`--records-file -`), beside
    /// its log lines; a record line starts with `{"schema":"trunkline.dev/session-record/v1"`.
    /// Default true.
    pub stdout: bool,
    /// Also a first record at each answer (`kind: answered`, its own record id) to each sink.
    /// Default false.
    pub answered: bool,
    /// POST every record to a receiver, through the spool. Default: no webhook.
    pub webhook: WebhookSettings,
    /// The on-disk spool records wait in for the webhook (used only with a webhook).
    pub spool: SpoolSettings,
}

impl Default for RecordsSettings {
    fn default() -> Self {
        RecordsSettings {
            stdout: true,
            answered: false,
            webhook: WebhookSettings::default(),
            spool: SpoolSettings::default(),
        }
    }
}

/// The records' webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The receiver, `http://HOST[:PORT][/PATH]` or `https://...`
    /// (`--records-webhook`), e.g. `https://records.example.com/v1/calls`. It is in the pod
    /// spec: put no credential in it. Default none: no webhook.
    #[serde(deserialize_with = "string_or_empty")]
    pub url: Option<String>,
    /// A Secret in the fleet's namespace whose key (default `key`) holds the HMAC-SHA256 key of
    /// the `X-Trunkline-Signature` header, mounted read-only (`--records-webhook-key-file`).
    /// Default none: records are not signed.
    pub key_secret: SecretKeyRef,
    /// A Secret in the fleet's namespace whose key (default `ca.crt`) is a PEM bundle of the CAs
    /// an `https://` receiver's certificate may chain to, beside the system's roots
    /// (`--records-webhook-ca-file`). Default none.
    pub ca_secret: SecretKeyRef,
}

/// One key of a Secret in the fleet's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretKeyRef {
    /// The Secret. Default none.
    #[serde(deserialize_with = "string_or_empty")]
    pub name: Option<String>,
    /// The key in it. Default: the field's own (`key` for the HMAC key, `ca.crt` for a CA).
    #[serde(deserialize_with = "string_or_empty")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The Secret and the key to mount, when a Secret is named.
    pub fn resolve(&self, default_key: &str) -> Option<(String, String)> {
        let name = self.name.clone()?;
        Some((name, self.key.clone().unwrap_or_else(|| default_key.to_string())))
    }
}

/// The spool of the records' webhook.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Bytes of records the spool holds at most (`--records-spool-max-bytes`); a full spool
    /// refuses new records (a log line and `trunkline_session_records_total{result="refused"}`;
    /// stdout still gets them). At least 1 MiB. Default 1 GiB.
    pub max_bytes: u64,
    /// Where the spool is: `{emptyDir: {}}` (default) or `{persistentVolumeClaim: {claimName:
    /// NAME}}`, a ReadWriteMany claim the fleet shares (see the module docs).
    pub volume: SpoolVolume,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings { max_bytes: 1 << 30, volume: SpoolVolume::EmptyDir }
    }
}

impl SpoolSettings {
    /// The `sizeLimit` of an emptyDir spool, in bytes: `maxBytes` plus
    /// [`SPOOL_SIZE_MARGIN_BYTES`], rounded up to a whole MiB.
    pub fn empty_dir_size_limit(&self) -> u64 {
        let bytes = self.max_bytes.saturating_add(SPOOL_SIZE_MARGIN_BYTES);
        bytes.div_ceil(1 << 20).saturating_mul(1 << 20)
    }
}

/// The volume of the records' spool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "SpoolVolumeFields", into = "SpoolVolumeFields")]
pub enum SpoolVolume {
    /// The pod's own emptyDir: survives a container restart, not the pod's deletion.
    #[default]
    EmptyDir,
    /// A claim every gateway of the fleet mounts (ReadWriteMany), one subdirectory per pod.
    PersistentVolumeClaim { claim_name: String },
}

/// [`SpoolVolume`] as written: the Kubernetes volume source fields.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpoolVolumeFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    empty_dir: Option<EmptyDirFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persistent_volume_claim: Option<ClaimFields>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EmptyDirFields {}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimFields {
    #[serde(default)]
    claim_name: String,
}

impl TryFrom<SpoolVolumeFields> for SpoolVolume {
    type Error = String;

    fn try_from(fields: SpoolVolumeFields) -> Result<Self, Self::Error> {
        match (fields.empty_dir, fields.persistent_volume_claim) {
            (Some(_), Some(_)) => Err("emptyDir or persistentVolumeClaim, not both".to_string()),
            (_, Some(claim)) => Ok(SpoolVolume::PersistentVolumeClaim {
                claim_name: claim.claim_name.trim().to_string(),
            }),
            (_, None) => Ok(SpoolVolume::EmptyDir),
        }
    }
}

impl From<SpoolVolume> for SpoolVolumeFields {
    fn from(volume: SpoolVolume) -> Self {
        match volume {
            SpoolVolume::EmptyDir => SpoolVolumeFields {
                empty_dir: Some(EmptyDirFields {}),
                persistent_volume_claim: None,
            },
            SpoolVolume::PersistentVolumeClaim { claim_name } => SpoolVolumeFields {
                empty_dir: None,
                persistent_volume_claim: Some(ClaimFields { claim_name }),
            },
        }
    }
}

/// An IP network written `ADDRESS/PREFIX` (`10.0.0.0/8`, `fd00::/8`), with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: ipnet::IpNet = s.trim().parse().map_err(|_| {
            format!("{s:?} is not a CIDR: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 (one address: 10.1.2.3/32)")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set: the network is {}, one address is {}/{}",
                net.trunc(),
                net.addr(),
                net.max_prefix_len()
            ));
        }
        Ok(Cidr(net))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The default `agentNetworks`: the private ranges pods and nodes of a cluster use, and
/// loopback.
pub const DEFAULT_AGENT_NETWORKS: [&str; 6] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8", "::1/128"];

/// The suffix of the API token Secret the operator generates: `<name>-api-token`.
pub const API_TOKEN_SECRET_SUFFIX: &str = "-api-token";

/// The carrier-facing Service.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CarrierServiceSettings {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`. Default `LoadBalancer`.
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (cloud load-balancer settings). Default none.
    pub annotations: BTreeMap<String, String>,
    /// Source CIDRs the cloud load balancer lets in (`LoadBalancer` only): the carriers'
    /// signalling addresses. Default none: every source (the trunks' own allowlists still
    /// apply).
    pub load_balancer_source_ranges: Vec<String>,
    /// `Local` keeps the carrier's source address visible to the gateway (it is how trunks are
    /// identified), `Cluster` spreads load over nodes but hides it. `NodePort` and
    /// `LoadBalancer` only. Default `Local`.
    pub external_traffic_policy: TrafficPolicy,
    /// `ClientIP` sends a peer's packets to one pod, so the in-dialog requests of a call (BYE,
    /// re-INVITE) reach the gateway that holds it; `None` balances each connection. Default
    /// `ClientIP`.
    pub session_affinity: SessionAffinity,
}

impl Default for CarrierServiceSettings {
    fn default() -> Self {
        CarrierServiceSettings {
            type_: ServiceType::LoadBalancer,
            annotations: BTreeMap::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_policy: TrafficPolicy::Local,
            session_affinity: SessionAffinity::ClientIP,
        }
    }
}

/// The agent-facing Service (`ClusterIP`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InternalServiceSettings {
    /// Annotations of the Service. Default none.
    pub annotations: BTreeMap<String, String>,
    /// As for the carrier Service. Default `ClientIP`.
    pub session_affinity: SessionAffinity,
}

/// A Service type the carrier Service may have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ServiceType {
    /// Reachable inside the cluster only (with `hostNetwork`, carriers reach the nodes).
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    #[default]
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A Service's `externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TrafficPolicy {
    /// Only to pods on the node that got the packet; the source address is kept.
    #[default]
    Local,
    /// To any pod; the source address is replaced by a node's.
    Cluster,
}

impl TrafficPolicy {
    /// The value Kubernetes takes.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Local => "Local",
            TrafficPolicy::Cluster => "Cluster",
        }
    }
}

/// A Service's `sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SessionAffinity {
    /// Every packet of one client address goes to the same pod.
    #[default]
    ClientIP,
    /// No affinity.
    None,
}

impl SessionAffinity {
    /// The value Kubernetes takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::ClientIP => "ClientIP",
            SessionAffinity::None => "None",
        }
    }
}

/// The fleet's PodDisruptionBudget.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodDisruptionBudgetSettings {
    /// Render it (`Deployment` mode). Default true.
    pub enabled: bool,
    /// Pods a voluntary disruption (a node drain) may take down at once: a number or a
    /// percentage (`"25%"`). Default 1.
    pub max_unavailable: IntOrString,
}

impl Default for PodDisruptionBudgetSettings {
    fn default() -> Self {
        PodDisruptionBudgetSettings { enabled: true, max_unavailable: IntOrString::Int(1) }
    }
}

/// An inclusive UDP port range, written `LOW-HIGH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port (even).
    pub low: u16,
    /// Last port.
    pub high: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// A range is never empty (`low < high`); here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Is `port` in the range?
    pub fn contains(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (low, high) = s.split_once('-').ok_or_else(|| {
            format!("{s:?} is not a port range: expected LOW-HIGH, e.g. 20000-20999")
        })?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port"))
        };
        let (low, high) = (port(low)?, port(high)?);
        if low >= high {
            return Err(format!("{s}: LOW must be below HIGH"));
        }
        if low % 2 != 0 {
            return Err(format!("{s}: LOW must be even (RTP on even ports, RTCP on the odd next)"));
        }
        Ok(PortRange { low, high })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(de::Error::custom),
            Raw::Number(n) => Err(de::Error::custom(format!(
                "{n} is one port: expected LOW-HIGH, e.g. 20000-20999"
            ))),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An optional string field where Helm's empty string means "not set".
fn string_or_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    Ok(value.filter(|s| !s.trim().is_empty()))
}

/// An optional IP address where Helm's empty string means "not set".
fn ip_or_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<IpAddr>, D::Error> {
    match string_or_empty(deserializer)? {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{text:?} is not an IP address"))),
    }
}

impl Default for OperatorSettings {
    fn default() -> Self {
        OperatorSettings {
            name: "trunkline".to_string(),
            namespace: "trunkline".to_string(),
            image: format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: ImagePullPolicy::default(),
            image_pull_secrets: Vec::new(),
            mode: FleetMode::default(),
            replicas: 2,
            host_network: true,
            sip_port: 5060,
            tls: TlsSettings::default(),
            internal_port: 5080,
            agent_networks: DEFAULT_AGENT_NETWORKS
                .iter()
                .map(|n| n.parse().expect("the default agent networks are CIDRs"))
                .collect(),
            agent_credentials_secret: None,
            agent_uri: None,
            api: ApiSettings::default(),
            admin_port: 9090,
            rtp_ports: PortRange { low: 20000, high: 20999 },
            public_address_from: None,
            public_address: None,
            node_address_annotation: NODE_ADDRESS_ANNOTATION.to_string(),
            egress_addresses: Vec::new(),
            region: None,
            watch_namespace: None,
            operator_deployment: None,
            credentials_secret: "trunkline-gateway-credentials".to_string(),
            carrier_service: CarrierServiceSettings::default(),
            internal_service: InternalServiceSettings::default(),
            drain_seconds: 30,
            resources: default_resources(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_annotations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            topology_spread_constraints: Vec::new(),
            priority_class_name: None,
            pod_disruption_budget: PodDisruptionBudgetSettings::default(),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            realm: "trunkline".to_string(),
            digest_algorithms: vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256],
            nonce_ttl_seconds: 300,
            agent_timeout_seconds: 60,
            media_timeout_seconds: 30,
            transfer_timeout_seconds: 30,
            max_call_duration_seconds: 14_400,
            max_hold_seconds: 3600,
            min_session_expires_seconds: RFC_MIN_SE,
            guard: SourceGuardSettings::default(),
            connections: ConnectionSettings::default(),
            records: RecordsSettings::default(),
        }
    }
}

fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
        limits: Some(quantities(&[("memory", "512Mi")])),
        ..ResourceRequirements::default()
    }
}

/// Why the operator's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read operator settings {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not YAML.
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: yaml::YamlError },
    /// The file holds more than one YAML document.
    #[error("{}: line {line}: a second YAML document; the settings are one document", path.display())]
    SecondDocument { path: PathBuf, line: usize },
    /// A field is unknown, has the wrong type, or a value that cannot work.
    #[error("{}: {field}: {message}", path.display())]
    Field {
        path: PathBuf,
        /// Path of the field, `carrierService.type`, `tolerations[0].effect`; `.` for the
        /// whole file.
        field: String,
        message: String,
    },
}

impl SettingsError {
    /// The field path of a [`SettingsError::Field`], for tests and messages.
    pub fn field(&self) -> Option<&str> {
        match self {
            SettingsError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A cross-field problem found by [`OperatorSettings::validate`]: the field path and what is
/// wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

impl OperatorSettings {
    /// Reads, parses and validates the settings file at `path`.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates settings from `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SettingsError> {
        let mut documents = yaml::documents(text).into_iter();
        let value = match documents.next() {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(document) => document
                .value
                .map_err(|source| SettingsError::Parse { path: path.to_path_buf(), source })?,
        };
        if let Some(second) = documents.next() {
            return Err(SettingsError::SecondDocument {
                path: path.to_path_buf(),
                line: second.start_line,
            });
        }
        let settings: OperatorSettings =
            serde_path_to_error::deserialize(value).map_err(|e| SettingsError::Field {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        settings.validate().map_err(|Invalid { field, message }| SettingsError::Field {
            path: path.to_path_buf(),
            field,
            message,
        })?;
        Ok(settings)
    }

    /// Checks what types alone cannot: names Kubernetes accepts, ports that do not collide,
    /// Service fields that fit the Service type. The first problem found is returned.
    pub fn validate(&self) -> Result<(), Invalid> {
        let name_limit = 63 - LONGEST_NAME_SUFFIX;
        if !is_dns_label(&self.name, name_limit)
            || !self.name.starts_with(|c: char| c.is_ascii_lowercase())
        {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a fleet name: lowercase letters, digits and '-', starting with a \
                     letter, ending with a letter or digit, at most {name_limit} characters",
                    self.name
                ),
            ));
        }
        if !is_dns_label(&self.namespace, 63) {
            return Err(invalid(
                "namespace",
                format!("{:?} is not a namespace name", self.namespace),
            ));
        }
        if self.image.trim().is_empty() {
            return Err(invalid("image", "the gateway image must be set"));
        }
        for (i, secret) in self.image_pull_secrets.iter().enumerate() {
            if !is_dns_subdomain(secret) {
                return Err(invalid(
                    format!("imagePullSecrets[{i}]"),
                    format!("{secret:?} is not a Secret name"),
                ));
            }
        }
        if self.replicas < 0 {
            return Err(invalid("replicas", "must be 0 or more"));
        }
        if !is_dns_subdomain(&self.credentials_secret) {
            return Err(invalid(
                "credentialsSecret",
                format!("{:?} is not a Secret name", self.credentials_secret),
            ));
        }
        if let Some(secret) = &self.tls.secret_name
            && !is_dns_subdomain(secret)
        {
            return Err(invalid("tls.secretName", format!("{secret:?} is not a Secret name")));
        }
        self.validate_ports()?;
        self.media_path()?;
        self.validate_outbound()?;
        if let Some(namespace) = &self.watch_namespace
            && !is_dns_label(namespace, 63)
        {
            return Err(invalid(
                "watchNamespace",
                format!("{namespace:?} is not a namespace name"),
            ));
        }
        if let Some(deployment) = &self.operator_deployment
            && !is_dns_subdomain(deployment)
        {
            return Err(invalid(
                "operatorDeployment",
                format!("{deployment:?} is not a Deployment name"),
            ));
        }
        if !is_qualified_name(&self.node_address_annotation) {
            return Err(invalid(
                "nodeAddressAnnotation",
                format!(
                    "{:?} is not an annotation key (prefix/name, e.g. trunkline.dev/public-address)",
                    self.node_address_annotation
                ),
            ));
        }
        self.validate_gateway_flags()?;
        self.validate_security()?;
        self.validate_records()?;
        self.validate_pod_labels()?;
        for (i, constraint) in self.topology_spread_constraints.iter().enumerate() {
            if constraint.max_skew < 1 {
                return Err(invalid(
                    format!("topologySpreadConstraints[{i}].maxSkew"),
                    "must be 1 or more",
                ));
            }
            if constraint.topology_key.trim().is_empty() {
                return Err(invalid(
                    format!("topologySpreadConstraints[{i}].topologyKey"),
                    "must be set (e.g. topology.kubernetes.io/zone)",
                ));
            }
            if !matches!(constraint.when_unsatisfiable.as_str(), "DoNotSchedule" | "ScheduleAnyway")
            {
                return Err(invalid(
                    format!("topologySpreadConstraints[{i}].whenUnsatisfiable"),
                    format!(
                        "{:?}: expected DoNotSchedule or ScheduleAnyway",
                        constraint.when_unsatisfiable
                    ),
                ));
            }
        }
        let service = &self.carrier_service;
        for (i, range) in service.load_balancer_source_ranges.iter().enumerate() {
            if range.parse::<ipnet::IpNet>().is_err() {
                return Err(invalid(
                    format!("carrierService.loadBalancerSourceRanges[{i}]"),
                    format!("{range:?} is not a CIDR (203.0.113.0/24)"),
                ));
            }
        }
        if !service.load_balancer_source_ranges.is_empty()
            && service.type_ != ServiceType::LoadBalancer
        {
            return Err(invalid(
                "carrierService.loadBalancerSourceRanges",
                format!(
                    "only a LoadBalancer Service has source ranges, this one is {}",
                    service.type_.as_str()
                ),
            ));
        }
        if let IntOrString::Int(n) = self.pod_disruption_budget.max_unavailable
            && n < 0
        {
            return Err(invalid("podDisruptionBudget.maxUnavailable", "must be 0 or more"));
        }
        if let IntOrString::String(s) = &self.pod_disruption_budget.max_unavailable
            && !s.strip_suffix('%').is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 100))
        {
            return Err(invalid(
                "podDisruptionBudget.maxUnavailable",
                format!("{s:?}: expected a number or a percentage like \"25%\""),
            ));
        }
        if self.log_level.trim().is_empty() {
            return Err(invalid("logLevel", "must be set (e.g. info)"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(invalid(
                "logLevel",
                format!("{:?} is not a log filter: {e}", self.log_level),
            ));
        }
        Ok(())
    }

    /// The address source in force: `publicAddressFrom`, else `Fixed` when `publicAddress` is
    /// set, else `Node`.
    pub fn address_source(&self) -> AddressSource {
        match (self.public_address_from, self.public_address) {
            (Some(source), _) => source,
            (None, Some(_)) => AddressSource::Fixed,
            (None, None) => AddressSource::Node,
        }
    }

    /// How carriers' signalling and media reach the pod holding a call, or why they cannot
    /// (see the module docs): the combination of `publicAddressFrom`, `publicAddress`,
    /// `hostNetwork`, `mode` and `replicas`.
    pub fn media_path(&self) -> Result<MediaPath, Invalid> {
        let source = self.address_source();
        if source != AddressSource::Fixed && self.public_address.is_some() {
            return Err(invalid(
                "publicAddress",
                format!(
                    "one fixed address is advertised only with publicAddressFrom: Fixed, this \
                     fleet advertises each gateway's {} address",
                    source.as_str().to_lowercase()
                ),
            ));
        }
        match source {
            AddressSource::Node if !self.host_network => Err(invalid(
                "publicAddressFrom",
                "Node: a node's address reaches the gateway only on the host network: set \
                 hostNetwork: true, or advertise the pod's address (Pod) where carriers can \
                 route to pod IPs, or run one gateway with a Fixed publicAddress",
            )),
            AddressSource::Node => Ok(MediaPath::NodeAddress),
            AddressSource::Pod => Ok(MediaPath::PodAddress),
            AddressSource::Fixed => {
                let Some(address) = self.public_address else {
                    return Err(invalid(
                        "publicAddress",
                        "publicAddressFrom: Fixed needs the address (an IP)",
                    ));
                };
                let gateways = match self.mode {
                    FleetMode::DaemonSet => "a DaemonSet runs one gateway per node".to_string(),
                    FleetMode::Deployment if self.replicas > 1 => {
                        format!("replicas is {}", self.replicas)
                    }
                    FleetMode::Deployment => String::new(),
                };
                if !gateways.is_empty() {
                    return Err(invalid(
                        "publicAddressFrom",
                        format!(
                            "Fixed: one address reaches one gateway, but {gateways}: a carrier's \
                             RTP would reach a gateway that does not hold its call. Use \
                             mode: Deployment with replicas: 1, or publicAddressFrom: Node with \
                             hostNetwork: true (each gateway advertises its node's address)"
                        ),
                    ));
                }
                if self.host_network {
                    return Ok(MediaPath::Fixed { address, host_ports: false });
                }
                let ports = self.rtp_ports.len() + 3;
                if ports > MAX_HOST_PORTS {
                    return Err(invalid(
                        "rtpPorts",
                        format!(
                            "without hostNetwork the single gateway's SIP and RTP ports are host \
                             ports of its node, at most {MAX_HOST_PORTS}; {} has {} ports: \
                             narrow it or set hostNetwork: true",
                            self.rtp_ports,
                            self.rtp_ports.len()
                        ),
                    ));
                }
                Ok(MediaPath::Fixed { address, host_ports: true })
            }
        }
    }

    fn validate_gateway_flags(&self) -> Result<(), Invalid> {
        if self.realm.trim().is_empty()
            || self.realm.chars().any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(invalid(
                "realm",
                format!(
                    "{:?}: a digest realm is non-empty text without quotes or backslashes",
                    self.realm
                ),
            ));
        }
        if self.digest_algorithms.is_empty() {
            return Err(invalid("digestAlgorithms", "at least one of MD5, SHA-256"));
        }
        for (i, algorithm) in self.digest_algorithms.iter().enumerate() {
            if self.digest_algorithms[..i].contains(algorithm) {
                return Err(invalid(
                    format!("digestAlgorithms[{i}]"),
                    format!("{} is listed twice", algorithm.as_str()),
                ));
            }
        }
        for (field, seconds) in [
            ("nonceTtlSeconds", self.nonce_ttl_seconds),
            ("agentTimeoutSeconds", self.agent_timeout_seconds),
            ("mediaTimeoutSeconds", self.media_timeout_seconds),
            ("transferTimeoutSeconds", self.transfer_timeout_seconds),
        ] {
            if seconds == 0 {
                return Err(invalid(field, "must be 1 or more"));
            }
        }
        Ok(())
    }

    /// The per-source guard, the connection limits and the call lifetime: the values the
    /// gateway refuses or cannot use (see the module docs, "Security limits").
    fn validate_security(&self) -> Result<(), Invalid> {
        if self.min_session_expires_seconds < RFC_MIN_SE {
            return Err(invalid(
                "minSessionExpiresSeconds",
                format!(
                    "{}: RFC 4028 §4 sets the smallest Min-SE at {RFC_MIN_SE} seconds",
                    self.min_session_expires_seconds
                ),
            ));
        }
        let guard = &self.guard;
        let connections = &self.connections;
        let at_least_one = [
            ("guard.maxSources", guard.max_sources, ""),
            ("guard.authFailureWindowSeconds", guard.auth_failure_window_seconds, ""),
            (
                "guard.authLockoutSeconds",
                guard.auth_lockout_seconds,
                " (guard.authFailures: 0 turns the lockout off)",
            ),
            (
                "guard.usernameAttemptRate",
                guard.username_attempt_rate,
                " (guard.usernameFailures: 0 turns the slowdown off)",
            ),
            ("guard.nonceGuesses", guard.nonce_guesses, ""),
            ("guard.refusalLogIntervalSeconds", guard.refusal_log_interval_seconds, ""),
            ("connections.max", connections.max, ""),
            ("connections.maxPerAddress", connections.max_per_address, ""),
            ("connections.messageTimeoutSeconds", connections.message_timeout_seconds, ""),
            ("connections.idleTimeoutSeconds", connections.idle_timeout_seconds, ""),
            (
                "connections.tlsHandshakeTimeoutSeconds",
                connections.tls_handshake_timeout_seconds,
                "",
            ),
            ("connections.writeTimeoutSeconds", connections.write_timeout_seconds, ""),
        ];
        for (field, value, hint) in at_least_one {
            if value == 0 {
                return Err(invalid(field, format!("must be 1 or more{hint}")));
            }
        }
        if connections.max_per_address > connections.max {
            return Err(invalid(
                "connections.maxPerAddress",
                format!(
                    "{} is above connections.max {}: one address could take every connection",
                    connections.max_per_address, connections.max
                ),
            ));
        }
        Ok(())
    }

    /// What outbound calls need: agent networks, the Secrets the gateways mount for them, the
    /// agent runtime's URI.
    fn validate_outbound(&self) -> Result<(), Invalid> {
        if self.agent_networks.is_empty() {
            return Err(invalid(
                "agentNetworks",
                "at least one network (CIDR) the agent runtime calls from, e.g. 10.0.0.0/8: \
                 with none, no agent could place a call",
            ));
        }
        for (i, network) in self.agent_networks.iter().enumerate() {
            if self.agent_networks[..i].contains(network) {
                return Err(invalid(
                    format!("agentNetworks[{i}]"),
                    format!("{network} is listed twice"),
                ));
            }
        }
        let secrets = [
            ("tls.caSecret", &self.tls.ca_secret),
            ("agentCredentialsSecret", &self.agent_credentials_secret),
            ("api.tokenSecret", &self.api.token_secret),
        ];
        for (field, secret) in secrets {
            if let Some(secret) = secret
                && !is_dns_subdomain(secret)
            {
                return Err(invalid(field, format!("{secret:?} is not a Secret name")));
            }
        }
        if let Some(uri) = &self.agent_uri
            && let Err(message) = SipDestination::parse(uri)
        {
            return Err(invalid(
                "agentUri",
                format!("{message} (expected e.g. sip:agents.voice.svc.cluster.local:5070)"),
            ));
        }
        Ok(())
    }

    /// The records' webhook, its Secrets and the spool.
    fn validate_records(&self) -> Result<(), Invalid> {
        let webhook = &self.records.webhook;
        let scheme = match &webhook.url {
            Some(url) => Some(webhook_scheme(url).map_err(|m| invalid("records.webhook.url", m))?),
            None => None,
        };
        for (field, secret) in [
            ("records.webhook.keySecret", &webhook.key_secret),
            ("records.webhook.caSecret", &webhook.ca_secret),
        ] {
            if let Some(name) = &secret.name {
                if !is_dns_subdomain(name) {
                    return Err(invalid(
                        format!("{field}.name"),
                        format!("{name:?} is not a Secret name"),
                    ));
                }
                if scheme.is_none() {
                    return Err(invalid(
                        format!("{field}.name"),
                        "a Secret for no webhook: set records.webhook.url, or leave the name empty",
                    ));
                }
            }
            if let Some(key) = &secret.key
                && !is_secret_key(key)
            {
                return Err(invalid(
                    format!("{field}.key"),
                    format!("{key:?} is not a Secret key (letters, digits, '-', '_' and '.')"),
                ));
            }
        }
        if webhook.ca_secret.name.is_some() && scheme == Some("http") {
            return Err(invalid(
                "records.webhook.caSecret.name",
                "a CA is used only toward an https:// webhook, and records.webhook.url is http://",
            ));
        }
        let spool = &self.records.spool;
        if spool.max_bytes < MIN_SPOOL_BYTES {
            return Err(invalid(
                "records.spool.maxBytes",
                format!(
                    "{} bytes: at least {MIN_SPOOL_BYTES} (1 MiB, one spool segment)",
                    spool.max_bytes
                ),
            ));
        }
        if let SpoolVolume::PersistentVolumeClaim { claim_name } = &spool.volume
            && !is_dns_subdomain(claim_name)
        {
            return Err(invalid(
                "records.spool.volume.persistentVolumeClaim.claimName",
                format!("{claim_name:?} is not a PersistentVolumeClaim name"),
            ));
        }
        Ok(())
    }

    fn validate_pod_labels(&self) -> Result<(), Invalid> {
        for (key, value) in &self.pod_labels {
            let field = format!("podLabels.{key}");
            if !is_qualified_name(key) {
                return Err(invalid(field, format!("{key:?} is not a label key")));
            }
            if key == FLEET_LABEL || key.starts_with("app.kubernetes.io/") {
                return Err(invalid(
                    field,
                    "the fleet sets this label itself (the operator finds its pods by it)",
                ));
            }
            let valid_value = value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && (value.is_empty()
                    || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && value.ends_with(|c: char| c.is_ascii_alphanumeric())));
            if !valid_value {
                return Err(invalid(field, format!("{value:?} is not a label value")));
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), Invalid> {
        let mut ports: Vec<(&str, u16)> = vec![("sipPort", self.sip_port)];
        if self.tls_enabled() {
            ports.push(("tls.port", self.tls.port));
        }
        ports.push(("internalPort", self.internal_port));
        ports.push(("adminPort", self.admin_port));
        if self.api.enabled {
            ports.push(("api.port", self.api.port));
        }
        for (i, (field, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(*field, "port 0 is not a port"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(invalid(*field, format!("port {port} is already {other}")));
            }
        }
        // RTP is UDP: it can only collide with the UDP listeners.
        for (field, port) in [("sipPort", self.sip_port), ("internalPort", self.internal_port)] {
            if self.rtp_ports.contains(port) {
                return Err(invalid(
                    field,
                    format!("port {port} is inside rtpPorts {}", self.rtp_ports),
                ));
            }
        }
        Ok(())
    }

    /// Is the TLS listener on (a certificate Secret is named)?
    pub fn tls_enabled(&self) -> bool {
        self.tls.secret_name.is_some()
    }

    /// The Secret holding the call API's bearer token (key `token`), when the API is enabled:
    /// `api.tokenSecret`, else the one the operator generates, `<name>-api-token`.
    pub fn api_token_secret(&self) -> Option<String> {
        if !self.api.enabled {
            return None;
        }
        Some(
            self.api
                .token_secret
                .clone()
                .unwrap_or_else(|| format!("{}{API_TOKEN_SECRET_SUFFIX}", self.name)),
        )
    }

    /// The API token Secret the operator must generate: the API is enabled and names none.
    pub fn generated_api_token_secret(&self) -> Option<String> {
        if self.api.token_secret.is_some() { None } else { self.api_token_secret() }
    }

    /// `terminationGracePeriodSeconds` of the gateway pods: the drain plus a margin.
    pub fn termination_grace_seconds(&self) -> i64 {
        i64::from(self.drain_seconds) + i64::from(DRAIN_MARGIN_SECONDS)
    }

    /// The ports the gateway container binds, lowest first (RTP counted by its lowest port).
    pub fn bound_ports(&self) -> Vec<u16> {
        let mut ports =
            vec![self.sip_port, self.internal_port, self.admin_port, self.rtp_ports.low];
        if self.tls_enabled() {
            ports.push(self.tls.port);
        }
        if self.api.enabled {
            ports.push(self.api.port);
        }
        ports.sort_unstable();
        ports
    }
}

/// The scheme (`http` or `https`) of a webhook URL a gateway can POST to, or what is wrong
/// with it: an absolute `http://` or `https://` URL with a host, no user info (credentials in
/// the URL would be in the pod spec), no fragment, no whitespace.
fn webhook_scheme(url: &str) -> Result<&'static str, String> {
    let example = "(expected e.g. https://records.example.com/v1/calls)";
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('#') {
        return Err(format!(
            "{url:?}: a URL has no whitespace, control character or '#' {example}"
        ));
    }
    let scheme = if url.starts_with("http://") {
        "http"
    } else if url.starts_with("https://") {
        "https"
    } else {
        return Err(format!("{url:?}: neither http:// nor https:// {example}"));
    };
    let uri: hyper::Uri =
        url.parse().map_err(|e| format!("{url:?} is not a URL: {e} {example}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} has no host {example}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{scheme}://...@{}: no credentials in the URL (it is in the pod spec): the receiver \
             checks the X-Trunkline-Signature made with records.webhook.keySecret",
            authority.host()
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host {example}"));
    }
    Ok(scheme)
}

/// A key of a Secret's `data`: letters, digits, `-`, `_` and `.`, at most 253, not `.` or `..`.
fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A Kubernetes qualified name (label or annotation key): an optional DNS-subdomain prefix and
/// `/`, then at most 63 letters, digits, `-`, `_` or `.`, alphanumeric at both ends.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// An RFC 1123 label: lowercase letters, digits and '-', alphanumeric at both ends.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain (the form of most object names): labels joined by dots, at most 253.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|label| is_dns_label(label, 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OperatorSettings, SettingsError> {
        OperatorSettings::parse(text, Path::new("settings.yaml"))
    }

    fn field_error(text: &str) -> (String, String) {
        match parse(text) {
            Err(SettingsError::Field { field, message, .. }) => (field, message),
            other => panic!("expected a field error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let settings = parse("# nothing set\n").unwrap();
        assert_eq!(settings, OperatorSettings::default());
        assert_eq!(settings.name, "trunkline");
        assert_eq!(settings.namespace, "trunkline");
        assert_eq!(
            settings.image,
            format!("ghcr.io/trunkline/trunkline:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(settings.sip_port, 5060);
        assert_eq!(settings.internal_port, 5080);
        assert_eq!(settings.admin_port, 9090);
        assert_eq!(settings.rtp_ports, PortRange { low: 20000, high: 20999 });
        assert_eq!(settings.credentials_secret, "trunkline-gateway-credentials");
        assert_eq!(settings.carrier_service.type_, ServiceType::LoadBalancer);
        assert_eq!(settings.carrier_service.external_traffic_policy, TrafficPolicy::Local);
        assert!(!settings.tls_enabled());
        assert_eq!(settings.termination_grace_seconds(), 40);
        assert_eq!(settings.pod_disruption_budget.max_unavailable, IntOrString::Int(1));
    }

    #[test]
    fn the_default_settings_are_valid() {
        assert_eq!(OperatorSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_full_file_is_read_field_by_field() {
        let text = r#"
name: edge
namespace: voice
image: registry.example/trunkline:1.2.3
imagePullPolicy: Always
mode: DaemonSet
hostNetwork: true
sipPort: 5070
tls: {secretName: sip-tls, port: 5071}
rtpPorts: 30000-30099
publicAddressFrom: Node
nodeAddressAnnotation: example.com/public-ip
egressAddresses: [198.51.100.7, "2001:db8::7"]
region: eu
watchNamespace: voice
operatorDeployment: trunkline-operator
podLabels: {team: voice}
topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}]
logFormat: json
realm: acme
digestAlgorithms: [SHA-256]
nonceTtlSeconds: 60
agentTimeoutSeconds: 15
mediaTimeoutSeconds: 5
transferTimeoutSeconds: 25
carrierService:
  type: NodePort
  externalTrafficPolicy: Cluster
drainSeconds: 120
tolerations: [{key: dedicated, operator: Equal, value: sip, effect: NoSchedule}]
podDisruptionBudget: {maxUnavailable: "25%"}
logLevel: trunkline=debug,info
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.name, "edge");
        assert_eq!(s.mode, FleetMode::DaemonSet);
        assert!(s.host_network && s.tls_enabled());
        assert_eq!(s.tls.port, 5071);
        assert_eq!(s.rtp_ports.len(), 100);
        assert_eq!(s.address_source(), AddressSource::Node);
        assert_eq!(s.media_path(), Ok(MediaPath::NodeAddress));
        assert_eq!(s.node_address_annotation, "example.com/public-ip");
        assert_eq!(s.watch_namespace.as_deref(), Some("voice"));
        assert_eq!(s.operator_deployment.as_deref(), Some("trunkline-operator"));
        assert_eq!(s.pod_labels["team"], "voice");
        assert_eq!(s.topology_spread_constraints[0].max_skew, 1);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.realm, "acme");
        assert_eq!(s.digest_algorithms, [DigestAlgorithm::Sha256]);
        assert_eq!(
            (
                s.nonce_ttl_seconds,
                s.agent_timeout_seconds,
                s.media_timeout_seconds,
                s.transfer_timeout_seconds
            ),
            (60, 15, 5, 25)
        );
        assert_eq!(s.egress_addresses.len(), 2);
        assert_eq!(s.region.as_deref(), Some("eu"));
        assert_eq!(s.carrier_service.type_, ServiceType::NodePort);
        assert_eq!(s.termination_grace_seconds(), 130);
        assert_eq!(s.tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(s.pod_disruption_budget.max_unavailable, IntOrString::String("25%".into()));
    }

    #[test]
    fn the_default_fleet_advertises_each_nodes_address_on_the_host_network() {
        let s = OperatorSettings::default();
        assert!(s.host_network);
        assert_eq!(s.address_source(), AddressSource::Node);
        assert_eq!(s.media_path(), Ok(MediaPath::NodeAddress));
    }

    #[test]
    fn a_media_path_that_cannot_carry_audio_is_refused_with_the_field_to_change() {
        // (settings, field, words the message must have)
        let cases = [
            // The README's old example: three replicas behind a load balancer, one address.
            (
                "publicAddress: 203.0.113.9\nreplicas: 3\nhostNetwork: false\n",
                "publicAddressFrom",
                "replicas is 3",
            ),
            ("publicAddress: 203.0.113.9\nmode: DaemonSet\n", "publicAddressFrom", "DaemonSet"),
            ("hostNetwork: false\n", "publicAddressFrom", "host network"),
            ("publicAddressFrom: Fixed\nreplicas: 1\n", "publicAddress", "needs the address"),
            (
                "publicAddressFrom: Pod\npublicAddress: 203.0.113.9\n",
                "publicAddress",
                "only with publicAddressFrom: Fixed",
            ),
            (
                "publicAddress: 203.0.113.9\nreplicas: 1\nhostNetwork: false\nrtpPorts: 20000-29999\n",
                "rtpPorts",
                "host ports",
            ),
        ];
        for (text, field, words) in cases {
            let (f, message) = field_error(text);
            assert_eq!(f, field, "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
        }
    }

    #[test]
    fn every_media_path_that_works_is_accepted() {
        let cases = [
            ("", MediaPath::NodeAddress),
            ("mode: DaemonSet\n", MediaPath::NodeAddress),
            ("hostNetwork: false\npublicAddressFrom: Pod\nreplicas: 5\n", MediaPath::PodAddress),
            ("publicAddressFrom: Pod\n", MediaPath::PodAddress),
            (
                "publicAddress: 203.0.113.9\nreplicas: 1\n",
                MediaPath::Fixed { address: "203.0.113.9".parse().unwrap(), host_ports: false },
            ),
            (
                "publicAddress: 203.0.113.9\nreplicas: 1\nhostNetwork: false\n",
                MediaPath::Fixed { address: "203.0.113.9".parse().unwrap(), host_ports: true },
            ),
            (
                "publicAddress: 203.0.113.9\nreplicas: 0\ncarrierService: {type: NodePort}\n",
                MediaPath::Fixed { address: "203.0.113.9".parse().unwrap(), host_ports: false },
            ),
        ];
        for (text, path) in cases {
            assert_eq!(parse(text).unwrap().media_path(), Ok(path), "{text:?}");
        }
    }

    #[test]
    fn gateway_flags_and_pod_labels_are_checked() {
        let cases = [
            ("realm: 'a\"b'\n", "realm"),
            ("realm: ''\n", "realm"),
            ("digestAlgorithms: []\n", "digestAlgorithms"),
            ("digestAlgorithms: [MD5, MD5]\n", "digestAlgorithms[1]"),
            ("digestAlgorithms: [MD5-sess]\n", "digestAlgorithms[0]"),
            ("nonceTtlSeconds: 0\n", "nonceTtlSeconds"),
            ("mediaTimeoutSeconds: 0\n", "mediaTimeoutSeconds"),
            ("transferTimeoutSeconds: 0\n", "transferTimeoutSeconds"),
            ("podLabels: {trunkline.dev/fleet: x}\n", "podLabels.trunkline.dev/fleet"),
            (
                "podLabels: {app.kubernetes.io/instance: x}\n",
                "podLabels.app.kubernetes.io/instance",
            ),
            ("podLabels: {team: 'not a value'}\n", "podLabels.team"),
            ("nodeAddressAnnotation: 'bad key/x/y'\n", "nodeAddressAnnotation"),
            ("watchNamespace: Voice\n", "watchNamespace"),
            ("operatorDeployment: Op_1\n", "operatorDeployment"),
            ("logFormat: yaml\n", "logFormat"),
            (
                "topologySpreadConstraints: [{maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\n",
                "topologySpreadConstraints[0].maxSkew",
            ),
            (
                "topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Maybe}]\n",
                "topologySpreadConstraints[0].whenUnsatisfiable",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(field_error(text).0, field, "{text:?}");
        }
    }

    #[test]
    fn the_security_limits_default_to_the_gateways_flags() {
        let s = OperatorSettings::default();
        assert_eq!(
            (s.max_call_duration_seconds, s.max_hold_seconds, s.min_session_expires_seconds),
            (14_400, 3600, 90)
        );
        let g = &s.guard;
        assert_eq!(
            (g.source_invite_rate, g.source_options_rate, g.source_request_rate),
            (50, 10, 10)
        );
        assert_eq!((g.global_request_rate, g.max_sources), (2000, 65_536));
        assert_eq!(
            (g.auth_failures, g.auth_failure_window_seconds, g.auth_lockout_seconds),
            (5, 60, 300)
        );
        assert_eq!((g.username_failures, g.username_attempt_rate), (20, 1));
        assert_eq!((g.nonce_guesses, g.refusal_log_interval_seconds), (3, 10));
        let c = &s.connections;
        assert_eq!((c.max, c.max_per_address), (10_000, 100));
        assert_eq!(
            (
                c.message_timeout_seconds,
                c.idle_timeout_seconds,
                c.tls_handshake_timeout_seconds,
                c.write_timeout_seconds
            ),
            (10, 300, 5, 10)
        );
        // A section given in part keeps the defaults of the rest.
        let s = parse("guard: {authFailures: 3}\nconnections: {maxPerAddress: 10}\n").unwrap();
        assert_eq!(s.guard, SourceGuardSettings { auth_failures: 3, ..Default::default() });
        assert_eq!(s.connections, ConnectionSettings { max_per_address: 10, ..Default::default() });
    }

    #[test]
    fn the_security_limits_are_read_field_by_field() {
        let s = parse(
            "maxCallDurationSeconds: 0\nmaxHoldSeconds: 600\nminSessionExpiresSeconds: 1800\n\
             guard:\n  sourceInviteRate: 0\n  sourceOptionsRate: 2\n  sourceRequestRate: 3\n\
             \x20 globalRequestRate: 400\n  maxSources: 1024\n  authFailures: 0\n\
             \x20 authFailureWindowSeconds: 120\n  authLockoutSeconds: 3600\n\
             \x20 usernameFailures: 0\n  usernameAttemptRate: 5\n  nonceGuesses: 1\n\
             \x20 refusalLogIntervalSeconds: 30\n\
             connections:\n  max: 500\n  maxPerAddress: 500\n  messageTimeoutSeconds: 2\n\
             \x20 idleTimeoutSeconds: 60\n  tlsHandshakeTimeoutSeconds: 1\n\
             \x20 writeTimeoutSeconds: 4\n",
        )
        .unwrap();
        // 0 is "no ceiling" for the call duration, "off" for the lockout and the slowdown,
        // "no limit" for a rate.
        assert_eq!(
            (s.max_call_duration_seconds, s.max_hold_seconds, s.min_session_expires_seconds),
            (0, 600, 1800)
        );
        assert_eq!(
            s.guard,
            SourceGuardSettings {
                source_invite_rate: 0,
                source_options_rate: 2,
                source_request_rate: 3,
                global_request_rate: 400,
                max_sources: 1024,
                auth_failures: 0,
                auth_failure_window_seconds: 120,
                auth_lockout_seconds: 3600,
                username_failures: 0,
                username_attempt_rate: 5,
                nonce_guesses: 1,
                refusal_log_interval_seconds: 30,
            }
        );
        assert_eq!(
            s.connections,
            ConnectionSettings {
                max: 500,
                max_per_address: 500,
                message_timeout_seconds: 2,
                idle_timeout_seconds: 60,
                tls_handshake_timeout_seconds: 1,
                write_timeout_seconds: 4,
            }
        );
    }

    #[test]
    fn security_limits_the_gateway_cannot_use_are_refused_naming_the_field() {
        // (settings, field, words the message must have)
        let cases = [
            ("minSessionExpiresSeconds: 89\n", "minSessionExpiresSeconds", "RFC 4028"),
            ("minSessionExpiresSeconds: 0\n", "minSessionExpiresSeconds", "90 seconds"),
            ("maxCallDurationSeconds: -1\n", "maxCallDurationSeconds", "invalid value"),
            ("maxHoldSeconds: 1h\n", "maxHoldSeconds", "invalid type"),
            ("guard: {maxSources: 0}\n", "guard.maxSources", "1 or more"),
            (
                "guard: {authFailureWindowSeconds: 0}\n",
                "guard.authFailureWindowSeconds",
                "1 or more",
            ),
            ("guard: {authLockoutSeconds: 0}\n", "guard.authLockoutSeconds", "authFailures: 0"),
            (
                "guard: {usernameAttemptRate: 0}\n",
                "guard.usernameAttemptRate",
                "usernameFailures: 0 turns the slowdown off",
            ),
            ("guard: {nonceGuesses: 0}\n", "guard.nonceGuesses", "1 or more"),
            (
                "guard: {refusalLogIntervalSeconds: 0}\n",
                "guard.refusalLogIntervalSeconds",
                "1 or more",
            ),
            ("guard: {sourceInviteRate: -5}\n", "guard.sourceInviteRate", "invalid value"),
            ("guard: {maxSources: 5000000000}\n", "guard.maxSources", "invalid value"),
            ("guard: {lockoutSeconds: 60}\n", "guard.lockoutSeconds", "unknown field"),
            ("guard: 5\n", "guard", "invalid type"),
            ("connections: {max: 0}\n", "connections.max", "1 or more"),
            ("connections: {maxPerAddress: 0}\n", "connections.maxPerAddress", "1 or more"),
            (
                "connections: {max: 50, maxPerAddress: 100}\n",
                "connections.maxPerAddress",
                "above connections.max 50",
            ),
            (
                "connections: {messageTimeoutSeconds: 0}\n",
                "connections.messageTimeoutSeconds",
                "1 or more",
            ),
            (
                "connections: {idleTimeoutSeconds: 0}\n",
                "connections.idleTimeoutSeconds",
                "1 or more",
            ),
            (
                "connections: {tlsHandshakeTimeoutSeconds: 0}\n",
                "connections.tlsHandshakeTimeoutSeconds",
                "1 or more",
            ),
            (
                "connections: {writeTimeoutSeconds: 0}\n",
                "connections.writeTimeoutSeconds",
                "1 or more",
            ),
            ("connections: {maxPerAdress: 10}\n", "connections.maxPerAdress", "unknown field"),
        ];
        for (text, field, words) in cases {
            let (f, message) = field_error(text);
            assert_eq!(f, field, "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
        }
        let error = parse("guard: {nonceGuesses: 0}\n").unwrap_err();
        assert_eq!(error.to_string(), "settings.yaml: guard.nonceGuesses: must be 1 or more");
    }

    #[test]
    fn helm_empty_strings_mean_not_set() {
        let s = parse("publicAddress: \"\"\nregion: \"\"\ntls: {secretName: \"\"}\n").unwrap();
        assert_eq!(s.public_address, None);
        assert_eq!(s.region, None);
        assert!(!s.tls_enabled());
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let (field, message) = field_error("carrierService:\n  tpye: NodePort\n");
        assert_eq!(field, "carrierService.tpye");
        assert!(message.contains("unknown field `tpye`"), "{message}");
    }

    #[test]
    fn a_wrong_enum_value_names_the_field() {
        let (field, message) = field_error("carrierService: {type: Ingress}\n");
        assert_eq!(field, "carrierService.type");
        assert!(message.contains("Ingress"), "{message}");
    }

    #[test]
    fn a_bad_value_inside_a_list_names_the_index() {
        let (field, _) = field_error("egressAddresses: [198.51.100.7, nowhere]\n");
        assert_eq!(field, "egressAddresses[1]");
        let (field, message) = field_error("publicAddress: gateway.example\n");
        assert_eq!(field, "publicAddress");
        assert!(message.contains("not an IP address"), "{message}");
    }

    #[test]
    fn rtp_ports_need_an_even_low_below_high() {
        let (field, message) = field_error("rtpPorts: 20001-20999\n");
        assert_eq!(field, "rtpPorts");
        assert!(message.contains("even"), "{message}");
        let (_, message) = field_error("rtpPorts: 20000-20000\n");
        assert!(message.contains("below"), "{message}");
        let (_, message) = field_error("rtpPorts: 20000\n");
        assert!(message.contains("LOW-HIGH"), "{message}");
    }

    #[test]
    fn colliding_ports_are_refused() {
        let (field, message) = field_error("adminPort: 5060\n");
        assert_eq!(field, "adminPort");
        assert!(message.contains("sipPort"), "{message}");
        let (field, _) = field_error("tls: {secretName: t, port: 5080}\n");
        assert_eq!(field, "internalPort");
        let (field, message) = field_error("internalPort: 20010\n");
        assert_eq!(field, "internalPort");
        assert!(message.contains("rtpPorts"), "{message}");
        // Without a certificate there is no TLS listener, so its port collides with nothing.
        assert!(parse("tls: {port: 5080}\n").is_ok());
    }

    #[test]
    fn source_ranges_need_a_load_balancer_and_cidrs() {
        let (field, _) =
            field_error("carrierService: {loadBalancerSourceRanges: [203.0.113.0/24, bad]}\n");
        assert_eq!(field, "carrierService.loadBalancerSourceRanges[1]");
        let (field, message) = field_error(
            "carrierService: {type: ClusterIP, loadBalancerSourceRanges: [203.0.113.0/24]}\n",
        );
        assert_eq!(field, "carrierService.loadBalancerSourceRanges");
        assert!(message.contains("ClusterIP"), "{message}");
    }

    #[test]
    fn names_kubernetes_would_refuse_are_refused() {
        assert_eq!(field_error("name: Trunk_Line\n").0, "name");
        assert_eq!(field_error(&format!("name: {}\n", "a".repeat(55))).0, "name");
        assert_eq!(field_error("name: 1fleet\n").0, "name");
        assert_eq!(field_error("namespace: -x\n").0, "namespace");
        assert_eq!(field_error("credentialsSecret: \"\"\n").0, "credentialsSecret");
        assert_eq!(field_error("tls: {secretName: Bad_Name}\n").0, "tls.secretName");
    }

    #[test]
    fn a_bad_log_filter_or_budget_is_refused() {
        assert_eq!(field_error("logLevel: \"trunkline=loud\"\n").0, "logLevel");
        assert_eq!(
            field_error("podDisruptionBudget: {maxUnavailable: half}\n").0,
            "podDisruptionBudget.maxUnavailable"
        );
        assert_eq!(field_error("replicas: -1\n").0, "replicas");
    }

    #[test]
    fn the_defaults_take_new_calls_from_the_private_ranges_and_serve_no_api() {
        let s = OperatorSettings::default();
        let networks: Vec<String> = s.agent_networks.iter().map(Cidr::to_string).collect();
        assert_eq!(networks, DEFAULT_AGENT_NETWORKS);
        assert!(!s.api.enabled);
        assert_eq!(s.api.port, 9091);
        assert_eq!(s.api_token_secret(), None);
        assert_eq!(s.generated_api_token_secret(), None);
        assert_eq!((&s.agent_uri, &s.agent_credentials_secret), (&None, &None));
        assert_eq!(s.tls.ca_secret, None);
    }

    #[test]
    fn the_outbound_settings_are_read_field_by_field() {
        let s = parse(
            "name: edge\nagentNetworks: [10.42.0.0/16, 'fd00:42::/64']\n\
             agentCredentialsSecret: agent-creds\n\
             agentUri: 'sip:agents.voice.svc:5070;transport=tcp'\n\
             tls: {caSecret: carrier-ca}\napi: {enabled: true, port: 9443}\n",
        )
        .unwrap();
        let networks: Vec<String> = s.agent_networks.iter().map(Cidr::to_string).collect();
        assert_eq!(networks, ["10.42.0.0/16", "fd00:42::/64"]);
        assert_eq!(s.agent_credentials_secret.as_deref(), Some("agent-creds"));
        assert_eq!(s.agent_uri.as_deref(), Some("sip:agents.voice.svc:5070;transport=tcp"));
        assert_eq!(s.tls.ca_secret.as_deref(), Some("carrier-ca"));
        assert!(!s.tls_enabled(), "a CA for the client side is no TLS listener");
        assert_eq!(s.api.port, 9443);
        // No Secret named: the operator generates one after the fleet's name.
        assert_eq!(s.api_token_secret().as_deref(), Some("edge-api-token"));
        assert_eq!(s.generated_api_token_secret().as_deref(), Some("edge-api-token"));
        let named = parse("api: {enabled: true, tokenSecret: my-token}\n").unwrap();
        assert_eq!(named.api_token_secret().as_deref(), Some("my-token"));
        assert_eq!(named.generated_api_token_secret(), None);
        // A Secret named for a disabled API is neither mounted nor generated.
        let off = parse("api: {tokenSecret: my-token}\n").unwrap();
        assert_eq!(off.api_token_secret(), None);
        assert_eq!(off.generated_api_token_secret(), None);
        // Helm's empty strings mean "not set".
        let empty = parse(
            "agentUri: ''\nagentCredentialsSecret: ''\ntls: {caSecret: ''}\napi: {tokenSecret: ''}\n",
        )
        .unwrap();
        assert_eq!(empty, OperatorSettings::default());
    }

    #[test]
    fn a_bad_agent_network_is_refused_naming_its_index() {
        let cases = [
            ("agentNetworks: [10.0.0.0/8, not-a-network]\n", "agentNetworks[1]", "not a CIDR"),
            ("agentNetworks: [10.0.0.0/33]\n", "agentNetworks[0]", "not a CIDR"),
            ("agentNetworks: [10.1.2.3]\n", "agentNetworks[0]", "10.1.2.3/32"),
            ("agentNetworks: [192.168.1.5/16]\n", "agentNetworks[0]", "host bits"),
            ("agentNetworks: [10.0.0.0/8, 10.0.0.0/8]\n", "agentNetworks[1]", "twice"),
            ("agentNetworks: []\n", "agentNetworks", "at least one"),
            ("agentNetworks: 10.0.0.0/8\n", "agentNetworks", "sequence"),
        ];
        for (text, field, words) in cases {
            let (f, message) = field_error(text);
            assert_eq!(f, field, "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
        }
        // IPv6 and a whole family are networks too.
        assert!(parse("agentNetworks: ['::/0', 0.0.0.0/0, 'fd00::/8']\n").is_ok());
    }

    #[test]
    fn outbound_secrets_the_api_port_and_the_agent_uri_are_checked() {
        let cases = [
            ("tls: {caSecret: Bad_CA}\n", "tls.caSecret", "not a Secret name"),
            ("agentCredentialsSecret: 'a b'\n", "agentCredentialsSecret", "not a Secret name"),
            ("api: {enabled: true, tokenSecret: Token!}\n", "api.tokenSecret", "not a Secret name"),
            ("api: {enabled: true, port: 9090}\n", "api.port", "already adminPort"),
            ("api: {enabled: true, port: 5080}\n", "api.port", "already internalPort"),
            ("api: {enabled: true, port: 0}\n", "api.port", "port 0"),
            ("api: {enable: true}\n", "api.enable", "unknown field"),
            ("agentUri: agents.voice.svc\n", "agentUri", "not a sip: or sips: URI"),
            ("agentUri: 'sip:'\n", "agentUri", "no host"),
            ("agentUri: 'sip:agents;transport=sctp'\n", "agentUri", "transport"),
        ];
        for (text, field, words) in cases {
            let (f, message) = field_error(text);
            assert_eq!(f, field, "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
        }
        // A disabled API binds nothing, so its port collides with nothing.
        assert!(parse("api: {port: 9090}\n").is_ok());
    }

    #[test]
    fn records_go_to_stdout_without_a_webhook_by_default() {
        let s = OperatorSettings::default();
        assert!(s.records.stdout);
        assert!(!s.records.answered);
        assert_eq!(s.records.webhook, WebhookSettings::default());
        assert_eq!(s.records.webhook.url, None);
        assert_eq!(s.records.spool.max_bytes, 1 << 30);
        assert_eq!(s.records.spool.volume, SpoolVolume::EmptyDir);
        // 1 GiB plus the 64 MiB margin.
        assert_eq!(s.records.spool.empty_dir_size_limit(), 1088 << 20);
    }

    #[test]
    fn the_records_settings_are_read_field_by_field() {
        let s = parse(
            "records:\n  stdout: false\n  webhook:\n    url: https://records.example.com/v1/calls\n\
             \x20   keySecret: {name: records-hmac, key: hmac}\n\
             \x20   caSecret: {name: records-ca}\n\
             \x20 spool: {maxBytes: 2097152, volume: {persistentVolumeClaim: {claimName: spools}}}\n",
        )
        .unwrap();
        let records = &s.records;
        assert!(!records.stdout);
        assert_eq!(records.webhook.url.as_deref(), Some("https://records.example.com/v1/calls"));
        assert_eq!(
            records.webhook.key_secret.resolve(WEBHOOK_KEY_SECRET_KEY),
            Some(("records-hmac".to_string(), "hmac".to_string()))
        );
        // No key named: the field's own default.
        assert_eq!(
            records.webhook.ca_secret.resolve(WEBHOOK_CA_SECRET_KEY),
            Some(("records-ca".to_string(), "ca.crt".to_string()))
        );
        assert_eq!(records.spool.max_bytes, 2 << 20);
        assert_eq!(
            records.spool.volume,
            SpoolVolume::PersistentVolumeClaim { claim_name: "spools".to_string() }
        );
        // The minimum spool, rounded up to whole MiB with its margin.
        assert_eq!(records.spool.empty_dir_size_limit(), 66 << 20);
        let odd = SpoolSettings { max_bytes: (1 << 20) + 1, volume: SpoolVolume::EmptyDir };
        assert_eq!(odd.empty_dir_size_limit(), 66 << 20);
    }

    #[test]
    fn helm_values_for_records_parse_as_the_chart_writes_them() {
        // What charts/trunkline/templates/configmap.yaml writes: empty strings for unset names
        // and URL, the keys always there, the emptyDir as an empty map.
        let s = parse(
            "records:\n  stdout: true\n  webhook:\n    url: ''\n\
             \x20   keySecret: {name: '', key: key}\n    caSecret: {name: '', key: ca.crt}\n\
             \x20 spool: {maxBytes: 1073741824, volume: {emptyDir: {}}}\n",
        )
        .unwrap();
        assert_eq!(s.records.webhook.url, None);
        assert_eq!(s.records.webhook.key_secret.resolve(WEBHOOK_KEY_SECRET_KEY), None);
        assert_eq!(s.records.spool, SpoolSettings::default());
        // An empty volume is the default emptyDir (Helm drops a key set to null).
        let s = parse("records: {spool: {volume: {}}}\n").unwrap();
        assert_eq!(s.records.spool.volume, SpoolVolume::EmptyDir);
        // Written back in the same shape.
        let text = yaml::to_yaml(&SpoolSettings::default()).unwrap();
        assert!(text.contains("emptyDir: {}"), "{text}");
    }

    #[test]
    fn both_webhook_schemes_are_accepted() {
        for url in [
            "http://records.voice.svc:8080/v1/calls",
            "https://records.example.com",
            "https://[2001:db8::7]:8443/in?source=trunkline",
            "http://10.0.0.7/",
        ] {
            let s = parse(&format!("records: {{webhook: {{url: '{url}'}}}}\n"))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(s.records.webhook.url.as_deref(), Some(url));
        }
        // A CA for an https:// receiver; a key for either.
        assert!(
            parse(
                "records: {webhook: {url: 'https://r.example', caSecret: {name: ca}, \
                 keySecret: {name: k}}}\n"
            )
            .is_ok()
        );
        assert!(
            parse("records: {webhook: {url: 'http://r.example', keySecret: {name: k}}}\n").is_ok()
        );
    }

    #[test]
    fn bad_records_settings_are_refused_naming_the_field() {
        // (settings, field, words the message must have)
        let cases = [
            (
                "records: {webhook: {url: 'ftp://r.example/'}}\n",
                "records.webhook.url",
                "neither http:// nor https://",
            ),
            (
                "records: {webhook: {url: 'records.example.com/in'}}\n",
                "records.webhook.url",
                "neither http:// nor https://",
            ),
            ("records: {webhook: {url: 'https://'}}\n", "records.webhook.url", "https://"),
            ("records: {webhook: {url: 'http:///in'}}\n", "records.webhook.url", "http:///in"),
            ("records: {webhook: {url: 'https://:8443/in'}}\n", "records.webhook.url", "no host"),
            (
                "records: {webhook: {url: 'https://user:pw@r.example/'}}\n",
                "records.webhook.url",
                "no credentials",
            ),
            (
                "records: {webhook: {url: 'https://r.example/a b'}}\n",
                "records.webhook.url",
                "whitespace",
            ),
            ("records: {webhook: {url: 'https://r.example/#x'}}\n", "records.webhook.url", "'#'"),
            (
                "records: {webhook: {keySecret: {name: records-hmac}}}\n",
                "records.webhook.keySecret.name",
                "set records.webhook.url",
            ),
            (
                "records: {webhook: {caSecret: {name: records-ca}}}\n",
                "records.webhook.caSecret.name",
                "set records.webhook.url",
            ),
            (
                "records: {webhook: {url: 'http://r.example', caSecret: {name: records-ca}}}\n",
                "records.webhook.caSecret.name",
                "only toward an https:// webhook",
            ),
            (
                "records: {webhook: {url: 'https://r.example', keySecret: {name: Records_Key}}}\n",
                "records.webhook.keySecret.name",
                "not a Secret name",
            ),
            (
                "records: {webhook: {url: 'https://r.example', keySecret: {name: k, key: 'a/b'}}}\n",
                "records.webhook.keySecret.key",
                "not a Secret key",
            ),
            (
                "records: {webhook: {url: 'https://r.example', caSecret: {name: c, key: '..'}}}\n",
                "records.webhook.caSecret.key",
                "not a Secret key",
            ),
            (
                "records: {spool: {maxBytes: 1048575}}\n",
                "records.spool.maxBytes",
                "at least 1048576",
            ),
            ("records: {spool: {maxBytes: -1}}\n", "records.spool.maxBytes", "invalid value"),
            (
                "records: {spool: {volume: {emptyDir: {}, persistentVolumeClaim: {claimName: s}}}}\n",
                "records.spool.volume",
                "not both",
            ),
            (
                "records: {spool: {volume: {persistentVolumeClaim: {claimName: ''}}}}\n",
                "records.spool.volume.persistentVolumeClaim.claimName",
                "not a PersistentVolumeClaim name",
            ),
            (
                "records: {spool: {volume: {hostPath: {path: /var/spool}}}}\n",
                "records.spool.volume.hostPath",
                "unknown field",
            ),
            (
                "records: {spool: {volume: {emptyDir: {medium: Memory}}}}\n",
                "records.spool.volume.emptyDir.medium",
                "unknown field",
            ),
            ("records: {stdout: yes}\n", "records.stdout", "boolean"),
            ("records: {answered: 1}\n", "records.answered", "boolean"),
            ("records: {file: /var/log/records}\n", "records.file", "unknown field"),
        ];
        for (text, field, words) in cases {
            let (f, message) = field_error(text);
            assert_eq!(f, field, "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let error = parse("mode: Sometimes\n").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("settings.yaml: mode: "), "{text}");
        let error = parse("a: [\n").unwrap_err();
        assert!(matches!(error, SettingsError::Parse { .. }), "{error:?}");
        assert!(error.to_string().starts_with("settings.yaml: "), "{error}");
        let error = parse("name: a\n---\nname: b\n").unwrap_err();
        assert!(matches!(error, SettingsError::SecondDocument { line: 3, .. }), "{error:?}");
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_missing() {
        let dir = std::env::temp_dir().join(format!("trunkline-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("operator.yaml");
        std::fs::write(&path, "name: edge\n").unwrap();
        assert_eq!(OperatorSettings::load(&path).unwrap().name, "edge");
        let missing = dir.join("missing.yaml");
        let error = OperatorSettings::load(&missing).unwrap_err();
        assert!(matches!(error, SettingsError::Read { .. }));
        assert!(error.to_string().contains("missing.yaml"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
