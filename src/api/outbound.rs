//! `OutboundTrunk`: calls from the agents out through a carrier.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CallLimits, Codec, DigestAuth, Transport, TrunkMedia};
use super::rules;

/// Calls from the agents out through a carrier: where the carrier is, how we authenticate to it,
/// and which caller ids the agents may present.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "trunkline.dev",
    version = "v1alpha1",
    kind = "OutboundTrunk",
    namespaced,
    status = "OutboundTrunkStatus",
    shortname = "otrunk",
    category = "trunkline",
    doc = "Calls from the agents out through a carrier: its address, our credentials, and the caller ids agents may present.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Host","type":"string","description":"The carrier's first host, and +N for its other hosts","jsonPath":".status.hosts"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"description":"Why Programmed has its status: Programmed, Pending, NoGateways, NotServedHere, or the reason the object is refused","jsonPath":".status.conditions[?(@.type==\"Programmed\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::HOST_OR_HOSTS.to_rule())]
pub struct OutboundTrunkSpec {
    /// The carrier's SIP host: a host name or an IP address only. A `sip:` URI, a port or a path
    /// here is an error. Example: `sip.carrier.example`. Give `host` or `hosts`, not both: `host`
    /// is a list of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::HOST_NOT_URI.to_rule())]
    pub host: Option<String>,
    /// The carrier's hosts, for a carrier with several edges: calls go to the lowest `priority`
    /// first, to a host picked by `weight` among hosts of the same priority, and on to the next
    /// host when one does not answer or answers 408, 500, 503 or 504 (the agent is not asked
    /// again). A host whose OPTIONS probes fail is skipped until a probe succeeds. Give `host`
    /// or `hosts`, not both. Example: `[{host: 198.51.100.10}, {host: 198.51.100.11, priority: 1}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hosts: Vec<CarrierHost>,
    /// The carrier's SIP port (of `host`, and the default of `hosts`). Default: a host name is
    /// looked up by DNS SRV (`_sip._udp.`, `_sip._tcp.` or `_sips._tcp.` + the name, RFC 3263),
    /// and at 5060 (5061 for TLS) when it has no SRV records; an IP address at 5060 (5061 for
    /// TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The transport toward the carrier (of `host`, and the default of `hosts`). Default: `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// How we authenticate to the carrier. Omit when the carrier allowlists the fleet's addresses
    /// (see `status.sourceAddresses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<OutboundAuth>,
    /// The caller id presented in `From` and `P-Asserted-Identity` unless the agent asks for one
    /// of `allowedCallerIds`. E.164. Example: `"+14155550100"`.
    #[schemars(pattern(rules::E164_PATTERN))]
    pub caller_id: String,
    /// Other caller ids an agent may ask for. E.164.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(pattern(rules::E164_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_caller_ids: Vec<String>,
    /// How the dialed number is written toward this carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_format: Option<NumberFormat>,
    /// Register with the carrier (REGISTER, RFC 3261 §10) with the trunk's digest credentials,
    /// so that it delivers calls to the gateway: every gateway pod keeps its binding fresh and
    /// reports it in the `Registered` condition. The calls arrive as inbound calls on the
    /// InboundTrunk whose `auth.registration` names this trunk. Needs `auth.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// SIP OPTIONS probes to the carrier; they drive the `Reachable` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Call admission limits. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CallLimits>,
    /// Agent ids that may dial out through this trunk. Empty (default): every agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(pattern(rules::AGENT_ID_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub agents: Vec<String>,
    /// Audio codecs, in order of preference; `telephone-event` is always allowed. Default:
    /// `[PCMU, PCMA, G722]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub codecs: Vec<Codec>,
    /// Media (RTP) settings: where the carrier's media may come from. Default: its SDP's and
    /// its SIP's addresses only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<TrunkMedia>,
    /// The regions whose gateway fleets use this trunk. Empty (default): every region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(pattern(rules::REGION_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub regions: Vec<String>,
}

/// One of the carrier's hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CarrierHost {
    /// A host name or an IP address only, as `spec.host`. Example: `sip1.carrier.example`.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::HOST_NOT_URI.to_rule())]
    pub host: String,
    /// The host's SIP port. Default: `spec.port`, else (a host name) its DNS SRV targets, or
    /// 5060 (5061 for TLS) when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The transport toward this host. Default: `spec.transport`, else `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Lower goes first, as in DNS SRV (RFC 2782): hosts of priority 1 get calls only when
    /// every host of priority 0 failed or is down. Default: 0, so that a list without
    /// priorities spreads calls over all its hosts.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub priority: u16,
    /// The share of calls among the hosts of one priority, as in DNS SRV: weight 3 gets three
    /// times the calls of weight 1; 0 only when the others of its priority fail. Default: 1,
    /// so that hosts without weights share calls evenly (SRV's 0 would make them a last
    /// resort).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 65535))]
    pub weight: u16,
}

fn default_weight() -> u16 {
    1
}

impl OutboundTrunkSpec {
    /// The first host with `+N` for the others (`status.hosts`): `sip.carrier.example`,
    /// `198.51.100.10 +1`; `None` without a host.
    pub fn host_summary(&self) -> Option<String> {
        let first = self.host.as_deref().or(self.hosts.first().map(|h| h.host.as_str()))?;
        let others = if self.host.is_some() { self.hosts.len() } else { self.hosts.len() - 1 };
        Some(if others == 0 { first.to_string() } else { format!("{first} +{others}") })
    }
}

/// How we authenticate to the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundAuth {
    /// Digest credentials we answer the carrier's challenge with; `secretRef` is required here.
    #[x_kube(validation = rules::OUTBOUND_DIGEST_SECRET.to_rule())]
    pub digest: DigestAuth,
}

/// How the dialed number is written toward the carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumberFormat {
    /// Write the leading `+` of E.164 (`+14155550100`); `false` writes digits only
    /// (`14155550100`). Default: `true`.
    #[serde(default = "default_true")]
    pub leading_plus: bool,
}

/// Registration to the carrier's registrar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// Keep the registration. Default: `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The binding's lifetime asked of the registrar, in seconds; the registrar may grant less,
    /// or ask for more (423). Refreshed halfway (ten minutes early for long ones). Default:
    /// 3600.
    #[serde(default = "default_expires")]
    #[schemars(range(min = 60, max = 86400))]
    pub expires_seconds: u32,
}

fn default_expires() -> u32 {
    3600
}

/// SIP OPTIONS health probes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Seconds between probes. Default: 30. Example: `30`.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 5, max = 3600))]
    pub interval_seconds: u32,
    /// Send probes at all. Default: `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

fn default_interval() -> u32 {
    30
}

/// The observed state of an OutboundTrunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrunkStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed` and `Reachable` (the carrier answers OPTIONS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The addresses calls through this trunk come from: give these to the carrier for its
    /// allowlist. Each fleet's `egressAddresses` setting when it has one, else the advertised
    /// address of each of its ready gateway pods, over every fleet that serves the trunk.
    /// Example: `[198.51.100.7, 198.51.100.8]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_addresses: Vec<String>,
    /// The carrier's first host (`spec.host`, or the first of `spec.hosts`) with `+N` for the
    /// other hosts, for `kubectl get`'s Host column. Example: `sip1.carrier.example +2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// One entry per gateway fleet that looked at this trunk, by fleet name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub fleets: Vec<super::FleetStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_column_shows_the_first_host_and_how_many_others() {
        let spec = |host: Option<&str>, hosts: &[&str]| {
            let mut spec: OutboundTrunkSpec =
                serde_json::from_value(serde_json::json!({"callerId": "+14155550100"}))
                    .expect("a spec");
            spec.host = host.map(str::to_string);
            spec.hosts = hosts
                .iter()
                .map(|h| CarrierHost {
                    host: h.to_string(),
                    port: None,
                    transport: None,
                    priority: 0,
                    weight: 1,
                })
                .collect();
            spec
        };
        assert_eq!(
            spec(Some("sip.carrier.example"), &[]).host_summary().as_deref(),
            Some("sip.carrier.example")
        );
        let three = spec(None, &["sip1.carrier.example", "sip2", "sip3"]);
        assert_eq!(three.host_summary().as_deref(), Some("sip1.carrier.example +2"));
        assert_eq!(spec(None, &["198.51.100.10"]).host_summary().as_deref(), Some("198.51.100.10"));
        assert_eq!(spec(None, &[]).host_summary(), None);
    }
}
