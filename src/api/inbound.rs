//! `InboundTrunk`: calls from a carrier or PBX to the agents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CallLimits, Codec, DigestAuth, ObjectReference, Transport, TrunkMedia};
use super::rules;

/// Calls from a carrier or PBX to the agents: which numbers (DIDs) the carrier may deliver, who the
/// carrier is (digest credentials, source addresses or both), and which agent answers each number.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "trunkline.dev",
    version = "v1alpha1",
    kind = "InboundTrunk",
    namespaced,
    status = "InboundTrunkStatus",
    shortname = "itrunk",
    category = "trunkline",
    doc = "Calls from a carrier or PBX to the agents: the numbers it may deliver, how it authenticates, and which agent answers each number.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Numbers","type":"integer","jsonPath":".status.numbers.accepted"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"description":"Why Programmed has its status: Programmed, Pending, NoGateways, NotServedHere, or the reason the object is refused","jsonPath":".status.conditions[?(@.type==\"Programmed\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InboundTrunkSpec {
    /// The numbers (DIDs) this trunk delivers, each to exactly one agent. A number may be held by
    /// only one InboundTrunk in the cluster: the older object keeps it. Example:
    /// `[{number: "+14155550100", agent: support}]`.
    #[schemars(length(min = 1, max = 10000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["number"]))]
    pub numbers: Vec<NumberAssignment>,
    /// The agent runtime that answers these calls.
    pub destination: Destination,
    /// May the carrier pick the agent with the `X-Trunkline-Agent-ID` header? `Allow` (default):
    /// the header wins when it names an agent of this trunk. `Ignore`: the number decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_header: Option<AgentHeaderPolicy>,
    /// How the carrier proves who it is: digest credentials, source addresses, or both (then both
    /// must pass).
    pub auth: InboundAuth,
    /// Caller (From) numbers this trunk accepts: E.164 numbers, or prefixes ending in `*` such as
    /// `+1415*`. Empty (default): any caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(pattern(rules::CALLER_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_callers: Vec<String>,
    /// How the carrier writes numbers that have no `+`, in the dialed number (Request-URI) and
    /// the caller (From). Without it, digits without `+` are read as an international number
    /// whose `+` was left out, and `00` as the international prefix. With it, `4155550142` on
    /// `defaultCountryCode: "1"` is `+14155550142`, and `02071230003` on `defaultCountryCode:
    /// "44"` with `nationalPrefix: "0"` is `+442071230003`. Numbers in `numbers` and
    /// `allowedCallers` stay in E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_format: Option<InboundNumberFormat>,
    /// The SIP transports the carrier may use. Default: all three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub transports: Vec<Transport>,
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
    /// Call admission limits. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CallLimits>,
    /// The regions whose gateway fleets serve this trunk. Empty (default): every region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(pattern(rules::REGION_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub regions: Vec<String>,
}

/// How a carrier writes national and international numbers without a `+`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundNumberFormat {
    /// The country code of national numbers (digits, no `+`). Example: `"1"`, `"44"`.
    #[schemars(pattern(rules::COUNTRY_CODE_PATTERN))]
    pub default_country_code: String,
    /// The trunk prefix dialed before a national number, dropped before the country code goes
    /// in front: `"0"` in most of Europe, `"1"` in North America. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(rules::DIAL_PREFIX_PATTERN))]
    pub national_prefix: Option<String>,
    /// The prefix of an international number, read before the national prefix. Default:
    /// `"011"` for country code 1, `"00"` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(rules::DIAL_PREFIX_PATTERN))]
    pub international_prefix: Option<String>,
}

/// One number (DID) of a trunk and the agent that answers it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumberAssignment {
    /// The number in E.164 form: `+` and 8 to 15 digits. Example: `"+14155550100"`.
    #[schemars(pattern(rules::E164_PATTERN))]
    pub number: String,
    /// The agent id that answers calls to this number; it becomes the Request-URI user of the
    /// INVITE sent to the agent runtime. Example: `support`.
    #[schemars(pattern(rules::AGENT_ID_PATTERN))]
    pub agent: String,
}

/// Where the gateway sends the calls of this trunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// SIP URI of the agent runtime; its user part is replaced by the agent id. Example:
    /// `sip:agents.voice.svc.cluster.local:5070;transport=tcp`.
    #[schemars(length(max = 1024), pattern(rules::SIP_URI_PATTERN))]
    pub uri: String,
}

// Whether the `X-Trunkline-Agent-ID` header may pick the agent.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum AgentHeaderPolicy {
    /// The header picks the agent when it names an agent of this trunk.
    #[default]
    Allow,
    /// The header is ignored; the number decides.
    Ignore,
}

/// How an InboundTrunk's carrier is authenticated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::AUTH_REQUIRED.to_rule(), validation = rules::OPEN_TRUNK.to_rule())]
pub struct InboundAuth {
    /// Digest authentication: the carrier answers a `407` challenge with these credentials. Write
    /// `digest: {}` to have credentials generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestAuth>,
    /// Source addresses (IPs or CIDRs) the carrier sends from. With digest, both must pass;
    /// without digest, a call from these addresses is accepted without a challenge. Example:
    /// `["203.0.113.0/24"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = rules::ADDRESS_IS_CIDR.to_rule())]
    pub allowed_addresses: Vec<String>,
    /// The carrier delivers these calls to the binding an OutboundTrunk of this namespace
    /// registers (its `registration`): a call is admitted when it comes from the address the
    /// gateway's registration reached (or from `allowedAddresses`), without a challenge; its
    /// dialed number is the Request-URI's when that is a number, else the To's (carriers send
    /// the registered contact as the Request-URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<InboundRegistration>,
}

/// An InboundTrunk fed by an OutboundTrunk's registration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundRegistration {
    /// The OutboundTrunk whose registration delivers the calls. Example: `{name: carrier-out}`.
    pub outbound_trunk_ref: ObjectReference,
}

/// The observed state of an InboundTrunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundTrunkStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What the carrier points at: the first of `endpoints`. Example: `sip:203.0.113.10:5060`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Every SIP address a carrier may send this trunk's calls to (and allowlist): the carrier
    /// load balancer's (or the fleet's `publicAddress`) first, then each ready gateway pod's
    /// advertised address with the fleet's SIP port, over every fleet that serves the trunk.
    /// Example: `[sip:203.0.113.10:5060, sip:198.51.100.21:5060]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The Secret that holds this trunk's digest credentials, generated or referenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// How many of the trunk's numbers it holds, and how many another trunk holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<NumberCounts>,
    /// One entry per gateway fleet that looked at this trunk, by fleet name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub fleets: Vec<super::FleetStatus>,
}

/// Number counts of an InboundTrunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumberCounts {
    /// Numbers this trunk holds and serves.
    pub accepted: u32,
    /// Numbers an older trunk holds; calls to them go to that trunk.
    pub conflicting: u32,
}
