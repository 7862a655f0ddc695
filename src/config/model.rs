//! The runtime model: what the gateway needs to decide a call, with no Kubernetes type in it.
//! `compile` builds a [`RoutingTable`]; the gateway swaps it atomically (an `Arc`) and calls in
//! progress keep the table they started with. Everything here is immutable once built.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::destination::SipDestination;
use super::number::{CallerPattern, E164};
use super::secret::{BasicAuth, Password};

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl ObjectName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectName { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A SIP transport: the CRD's enum, the one type every layer uses.
pub use crate::api::Transport;

/// An audio codec the relay supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Codec {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
    #[serde(rename = "G722")]
    G722,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }
}

/// Per-trunk admission limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_calls_per_second: Option<u32>,
    /// Seconds an answered call may last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_call_duration_seconds: Option<u32>,
}

impl Limits {
    /// How long an answered call may last, when the trunk says.
    pub fn max_call_duration(&self) -> Option<std::time::Duration> {
        self.max_call_duration_seconds.map(|s| std::time::Duration::from_secs(s.into()))
    }
}

/// A trunk's media policy (`spec.media`). Room for more (`encryption`) beside the addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaPolicy {
    /// More addresses the carrier's RTP may come from than its SDP's and its SIP's
    /// (`spec.media.allowedAddresses`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_addresses: Vec<IpNet>,
}

impl MediaPolicy {
    /// Nothing set: left out of the table's serialisation (and its hash).
    pub fn is_default(&self) -> bool {
        *self == MediaPolicy::default()
    }
}

/// Whether the agent header may pick the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AgentHeader {
    Allow,
    Ignore,
}

/// The digest an inbound trunk requires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum InboundDigest {
    /// Credentials are known: the carrier must answer the challenge with them.
    Ready {
        secret: String,
        #[serde(flatten)]
        credentials: BasicAuth,
    },
    /// Credentials are to be generated into this Secret and are not there yet: the trunk cannot
    /// take calls until they are.
    Pending { secret: String },
}

/// An accepted InboundTrunk, ready to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundTrunkRoute {
    pub name: ObjectName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The numbers this trunk holds (conflicting ones removed) and their agents.
    pub numbers: BTreeMap<E164, String>,
    /// Every agent id of this trunk: what the agent header may name.
    pub agents: BTreeSet<String>,
    /// SIP URI of the agent runtime.
    pub destination: SipDestination,
    pub agent_header: AgentHeader,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<InboundDigest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_addresses: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_callers: Vec<CallerPattern>,
    pub transports: BTreeSet<Transport>,
    pub codecs: Vec<Codec>,
    pub limits: Limits,
    #[serde(skip_serializing_if = "MediaPolicy::is_default")]
    pub media: MediaPolicy,
}

impl InboundTrunkRoute {
    /// Does the source address pass this trunk's allowlist? A trunk without one admits all.
    pub fn admits_address(&self, ip: std::net::IpAddr) -> bool {
        self.allowed_addresses.is_empty() || self.allowed_addresses.iter().any(|n| n.contains(&ip))
    }
}

/// An accepted OutboundTrunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrunkRoute {
    pub name: ObjectName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<BasicAuth>,
    pub caller_id: E164,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub allowed_caller_ids: BTreeSet<E164>,
    pub leading_plus: bool,
    /// Seconds between OPTIONS probes; `None` when probing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_interval_seconds: Option<u32>,
    pub limits: Limits,
    /// Agents that may dial through this trunk; empty: all.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub agents: BTreeSet<String>,
    pub codecs: Vec<Codec>,
    #[serde(skip_serializing_if = "MediaPolicy::is_default")]
    pub media: MediaPolicy,
}

/// Where an accepted TransferDestination sends the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum TransferTarget {
    Phone {
        number: E164,
        outbound_trunk: ObjectName,
    },
    Sip {
        uri: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        credentials: Option<BasicAuth>,
    },
    Hangup,
}

/// How a transfer is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TransferMode {
    Bridge,
    Refer,
}

/// An accepted TransferDestination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRoute {
    pub name: ObjectName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub target: TransferTarget,
    pub mode: TransferMode,
    /// Agents that may use this destination; empty: all.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub agents: BTreeSet<String>,
}

/// Who holds a number: the index of the trunk in [`RoutingTable::inbound`] (its agent is in the
/// trunk's `numbers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberOwner {
    pub trunk: usize,
}

/// Everything a gateway needs to decide calls, with indexes for the lookups it makes on every
/// INVITE: number → owner, digest username → trunk, and the trunks identified by address alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoutingTable {
    /// Accepted inbound trunks, sorted by namespace/name.
    pub inbound: Vec<Arc<InboundTrunkRoute>>,
    /// Accepted outbound trunks by namespace/name.
    #[serde(serialize_with = "serialize_values")]
    pub outbound: BTreeMap<ObjectName, Arc<OutboundTrunkRoute>>,
    /// Accepted transfer destinations by namespace/name.
    #[serde(serialize_with = "serialize_values")]
    pub transfers: BTreeMap<ObjectName, Arc<TransferRoute>>,
    #[serde(skip)]
    numbers: HashMap<E164, NumberOwner>,
    #[serde(skip)]
    digest_users: HashMap<String, usize>,
    #[serde(skip)]
    address_only: Vec<usize>,
}

impl RoutingTable {
    /// Builds the table and its indexes. `inbound` must hold no number and no digest username
    /// twice (compile resolves conflicts first); a repeat keeps the first holder.
    pub fn new(
        mut inbound: Vec<InboundTrunkRoute>,
        outbound: Vec<OutboundTrunkRoute>,
        transfers: Vec<TransferRoute>,
    ) -> RoutingTable {
        inbound.sort_by(|a, b| a.name.cmp(&b.name));
        let mut numbers = HashMap::new();
        let mut digest_users = HashMap::new();
        let mut address_only = Vec::new();
        for (i, trunk) in inbound.iter().enumerate() {
            numbers.reserve(trunk.numbers.len());
            for number in trunk.numbers.keys() {
                numbers.entry(number.clone()).or_insert(NumberOwner { trunk: i });
            }
            match &trunk.digest {
                Some(InboundDigest::Ready { credentials, .. }) => {
                    digest_users.entry(credentials.username.clone()).or_insert(i);
                }
                Some(InboundDigest::Pending { .. }) => {}
                None => address_only.push(i),
            }
        }
        RoutingTable {
            inbound: inbound.into_iter().map(Arc::new).collect(),
            outbound: outbound.into_iter().map(|o| (o.name.clone(), Arc::new(o))).collect(),
            transfers: transfers.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect(),
            numbers,
            digest_users,
            address_only,
        }
    }

    /// The trunk holding `number`, and the agent the number goes to.
    pub fn number_owner(&self, number: &E164) -> Option<(&Arc<InboundTrunkRoute>, &str)> {
        let trunk = self.inbound.get(self.numbers.get(number)?.trunk)?;
        Some((trunk, trunk.numbers.get(number)?.as_str()))
    }

    /// The trunk whose digest username is `username`.
    pub fn trunk_by_digest_user(&self, username: &str) -> Option<&Arc<InboundTrunkRoute>> {
        self.digest_users.get(username).and_then(|&i| self.inbound.get(i))
    }

    /// Trunks without digest whose allowlist admits `ip`: a call from there is identified by
    /// address alone, without a challenge.
    pub fn address_only_trunks_for(
        &self,
        ip: std::net::IpAddr,
    ) -> impl Iterator<Item = &Arc<InboundTrunkRoute>> {
        self.address_only
            .iter()
            .filter_map(|&i| self.inbound.get(i))
            .filter(move |t| t.admits_address(ip))
    }

    /// Trunks with digest (ready or pending) whose allowlist, if any, admits `ip`: a call from
    /// there without credentials is challenged.
    pub fn digest_trunks_for(
        &self,
        ip: std::net::IpAddr,
    ) -> impl Iterator<Item = &Arc<InboundTrunkRoute>> {
        self.inbound.iter().filter(move |t| t.digest.is_some() && t.admits_address(ip))
    }

    pub fn inbound_trunk(&self, name: &ObjectName) -> Option<&Arc<InboundTrunkRoute>> {
        self.inbound.binary_search_by(|t| t.name.cmp(name)).ok().and_then(|i| self.inbound.get(i))
    }

    /// How many numbers the table routes.
    pub fn number_count(&self) -> usize {
        self.numbers.len()
    }

    /// A hash of everything that changes how calls are handled, passwords included (as
    /// fingerprints). Gateways report it so the operator can tell which config each pod runs.
    pub fn config_hash(&self) -> String {
        let mut hasher = Sha256::new();
        // Serialising the table is deterministic: BTreeMaps, sorted Vecs, passwords redacted.
        // Streamed into the hasher: the same bytes as `to_vec`, without holding them all.
        let _ = serde_json::to_writer(HashWriter(&mut hasher), self);
        let mut fingerprint = |p: &Password| hasher.update(p.fingerprint());
        for t in &self.inbound {
            if let Some(InboundDigest::Ready { credentials, .. }) = &t.digest {
                fingerprint(&credentials.password);
            }
        }
        for o in self.outbound.values() {
            if let Some(c) = &o.credentials {
                fingerprint(&c.password);
            }
        }
        for t in self.transfers.values() {
            if let TransferTarget::Sip { credentials: Some(c), .. } = &t.target {
                fingerprint(&c.password);
            }
        }
        let digest = hasher.finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Feeds what is written to a hash.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Maps keyed by [`ObjectName`] serialise as the list of their values (JSON keys must be strings,
/// and every value carries its name).
fn serialize_values<S, V>(map: &BTreeMap<ObjectName, V>, s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    V: Serialize,
{
    s.collect_seq(map.values())
}
