//! `TransferDestination`: where an agent may hand a call.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DestinationMedia, DigestAuth, ObjectReference};
use super::rules;

/// Where an agent may hand a call: a phone number through an OutboundTrunk, a SIP URI, or hang-up.
/// Agents can transfer only to destinations named here, never to an arbitrary number.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "trunkline.dev",
    version = "v1alpha1",
    kind = "TransferDestination",
    namespaced,
    status = "TransferDestinationStatus",
    shortname = "xferdest",
    category = "trunkline",
    doc = "Where an agent may hand a call: a phone number through an OutboundTrunk, a SIP URI, or hang-up.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"description":"Why Programmed has its status: Programmed, Pending, NoGateways, NotServedHere, or the reason the object is refused","jsonPath":".status.conditions[?(@.type==\"Programmed\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::TRANSFER_PHONE_MEMBER.to_rule(),
    validation = rules::TRANSFER_SIP_MEMBER.to_rule(),
    validation = rules::TRANSFER_HANGUP_MEMBER.to_rule(),
    validation = rules::TRANSFER_HANGUP_NOT_REFER.to_rule()
)]
pub struct TransferDestinationSpec {
    /// `Phone` (dial `phone.number` through an OutboundTrunk), `Sip` (call `sip.uri`) or `Hangup`
    /// (end the call). The member of the same name must be set, and no other.
    #[serde(rename = "type")]
    pub type_: TransferType,
    /// The number to dial, for `type: Phone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<PhoneTarget>,
    /// The SIP URI to call, for `type: Sip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipTarget>,
    /// `Bridge` (default): the gateway dials the destination and bridges the caller to it.
    /// `Refer`: the gateway passes a REFER on to the caller's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TransferMode>,
    /// Agent ids that may use this destination. Empty (default): every agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(pattern(rules::AGENT_ID_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub agents: Vec<String>,
}

// The kind of transfer target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TransferType {
    /// A phone number dialed through an OutboundTrunk.
    Phone,
    /// A SIP URI.
    Sip,
    /// End the call.
    Hangup,
}

// How a transfer is carried out.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum TransferMode {
    /// The gateway dials the destination and bridges the caller's media to it.
    #[default]
    Bridge,
    /// The gateway passes a REFER on to the caller's side.
    Refer,
}

/// A phone number transfer target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneTarget {
    /// The number to dial, E.164. Example: `"+14155550199"`.
    #[schemars(pattern(rules::E164_PATTERN))]
    pub number: String,
    /// The OutboundTrunk (same namespace) to dial through.
    pub outbound_trunk_ref: ObjectReference,
}

/// A SIP URI transfer target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipTarget {
    /// The URI to call. Example: `sip:sales@pbx.example.com`.
    #[schemars(length(max = 1024), pattern(rules::SIP_URI_PATTERN))]
    pub uri: String,
    /// Credentials for the far end's challenge, if it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SipTargetAuth>,
    /// The destination's media: whether it is SRTP (`encryption`). Omit for plain RTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<DestinationMedia>,
}

/// Credentials toward a SIP transfer target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipTargetAuth {
    /// Digest credentials; `secretRef` is required here.
    #[x_kube(validation = rules::SIP_TARGET_DIGEST_SECRET.to_rule())]
    pub digest: DigestAuth,
}

/// The observed state of a TransferDestination.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferDestinationStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per gateway fleet that looked at this destination, by fleet name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub fleets: Vec<super::FleetStatus>,
}
