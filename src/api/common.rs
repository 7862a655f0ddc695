//! Types shared by the three kinds: references, transports, codecs, limits, status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::rules;

/// A reference to a Secret of type `kubernetes.io/basic-auth` (keys `username`, `password`) in the
/// same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret, in the same namespace. Example: `acme-in-credentials`.
    #[schemars(length(min = 1, max = 253), pattern(rules::DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A reference to another trunkline object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Name of the object, in the same namespace. Example: `carrier-out`.
    #[schemars(length(min = 1, max = 253), pattern(rules::DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// SIP digest authentication (RFC 3261 §22, RFC 7616).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DigestAuth {
    /// The Secret (type `kubernetes.io/basic-auth`, keys `username` and `password`) that holds the
    /// credentials. On an InboundTrunk it may be omitted: the operator (or `trunkline run`) then
    /// generates credentials and names the Secret in `status.credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

// A SIP transport.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum Transport {
    /// SIP over UDP (RFC 3261 §18).
    #[serde(rename = "UDP")]
    Udp,
    /// SIP over TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2, `sips:` and `transport=tls`).
    #[serde(rename = "TLS")]
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Parses `udp`, `UDP`, `tcp`, `tls`, in any case.
    pub fn parse(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// Streams carry their own retransmission: SIP timers A, E, G are off on them.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

// An audio codec the gateway can relay. `telephone-event` (RFC 4733 DTMF) is always allowed and
// is not listed.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum Codec {
    /// G.711 µ-law, 8 kHz, static payload type 0.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law, 8 kHz, static payload type 8.
    #[serde(rename = "PCMA")]
    Pcma,
    /// G.722 wideband, static payload type 9.
    #[serde(rename = "G722")]
    G722,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];

    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }
}

/// Call admission limits of one trunk, for the whole gateway fleet: each Ready gateway pod
/// enforces its share (`trunkline run`, alone, the whole limit).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallLimits {
    /// Most calls in progress on this trunk at once, across the gateway fleet; the next one
    /// gets `503 Service Unavailable` with `Retry-After`. Each of the N Ready gateway pods admits
    /// its share, `maxConcurrentCalls / N` rounded down or up so that the shares add up to the
    /// limit (below N, some pods admit none). Omit for no limit. Example: `100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_concurrent_calls: Option<u32>,
    /// Most new calls per second on this trunk, across the gateway fleet (each Ready gateway pod
    /// its share, as for `maxConcurrentCalls`); the excess gets `503` with `Retry-After`. Omit
    /// for no limit. Example: `10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_calls_per_second: Option<u32>,
    /// Longest an answered call on this trunk may last, in seconds: then the gateway hangs up
    /// both legs (the record says `maximum call duration reached`). The gateway's own ceiling
    /// (`--max-call-duration`, 4 hours by default) applies when it is shorter. Omit for the
    /// gateway's ceiling only. Example: `3600`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604_800))]
    pub max_call_duration_seconds: Option<u32>,
}

/// The media (RTP/RTCP) settings of one trunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkMedia {
    /// More addresses (IPs or CIDRs) the carrier's RTP may come from, for carriers whose media
    /// servers are other hosts than their SIP proxies. The gateway always takes the carrier's
    /// media from the address in its SDP (`c=`) and from the address its SIP comes from (or,
    /// for an OutboundTrunk, goes to); RTP from anywhere else is dropped and counted in
    /// `trunkline_rtp_rejected_packets_total`. Empty (default): those two only. Example:
    /// `["198.51.100.0/24"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = rules::ADDRESS_IS_CIDR.to_rule())]
    pub allowed_addresses: Vec<String>,
    /// Whether the carrier's media is SRTP, keyed by SDES (RFC 4568 `a=crypto` lines in the SDP).
    /// The gateway decrypts it and relays plain RTP to the agent runtime (the agent-facing leg
    /// is always plain RTP). `Disabled` (default): plain RTP only (an SRTP-only offer gets `488`).
    /// `Optional`: SRTP when the carrier offers it, plain RTP otherwise; toward the carrier the
    /// gateway offers both. `Required`: SRTP only (a plain offer gets `488 Not Acceptable Here`).
    /// SDES keys travel in the SDP: use them with SIP over TLS. Not served yet: `Optional` and
    /// `Required` are refused (`InvalidSpec`) until calls negotiate SDES. Example: `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<MediaEncryption>,
}

// Whether a leg's media is encrypted (SRTP, RFC 3711, keyed by SDES, RFC 4568).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum MediaEncryption {
    /// Plain RTP only.
    #[default]
    Disabled,
    /// SRTP when the far end offers or accepts it, plain RTP otherwise.
    Optional,
    /// SRTP only: a call whose far end does not offer or accept it is refused.
    Required,
}

/// The media settings of a SIP transfer destination.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationMedia {
    /// Whether the destination's media is SRTP keyed by SDES (RFC 4568), as `encryption` of a
    /// trunk's `media`: `Disabled` (default), `Optional` or `Required` (the last two refused
    /// until calls negotiate SDES). Example: `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<MediaEncryption>,
}

/// What one gateway fleet (one `trunkline operator`, often one region) says about an object. Each
/// fleet's operator writes only its own entry; the top-level `Programmed`, `endpoint`,
/// `endpoints` and `sourceAddresses` sum up every entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// The fleet's name (the operator's `name` setting). Example: `us-edge`.
    pub name: String,
    /// The fleet's region, when it has one. Example: `us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// This fleet's `Programmed` condition: `True` when every ready gateway pod of the fleet runs
    /// a config with this generation; reason `NotServedHere` when the fleet does not serve the
    /// object (its regions leave this fleet out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// InboundTrunk only: the SIP addresses of this fleet a carrier may send to (the load
    /// balancer's first, then each ready gateway's). Example: `[sip:203.0.113.10:5060]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// OutboundTrunk only: the addresses this fleet's calls come from (its egress addresses, or
    /// each ready gateway's advertised address). Example: `[198.51.100.7]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_addresses: Vec<String>,
}
