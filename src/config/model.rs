//! The runtime model: what the gateway needs to decide a call, with no Kubernetes type in it.
//! `compile` builds a [`RoutingTable`]; the gateway swaps it atomically (an `Arc`) and calls in
//! progress keep the table they started with. Everything here is immutable once built.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::destination::SipDestination;
use super::number::{self, CallerPattern, E164, NumberFormat, Reading};
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

/// Whether the far end's media is SRTP keyed by SDES (RFC 4568): `spec.media.encryption` of a
/// trunk, `spec.sip.media.encryption` of a SIP transfer destination. It applies to the leg
/// toward that far end only; the agent-facing leg is plain RTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Encryption {
    /// Plain RTP/AVP only: an offer with SRTP only is refused (488).
    #[default]
    Disabled,
    /// SRTP when the far end offers it (inbound) or accepts it (outbound), plain RTP otherwise.
    Optional,
    /// SRTP only: a plain offer or answer is refused.
    Required,
}

impl Encryption {
    pub fn is_disabled(&self) -> bool {
        *self == Encryption::Disabled
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Disabled => "Disabled",
            Encryption::Optional => "Optional",
            Encryption::Required => "Required",
        }
    }
}

/// A trunk's media policy (`spec.media`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaPolicy {
    /// More addresses the carrier's RTP may come from than its SDP's and its SIP's
    /// (`spec.media.allowedAddresses`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_addresses: Vec<IpNet>,
    /// SRTP toward the carrier (`spec.media.encryption`).
    #[serde(skip_serializing_if = "Encryption::is_disabled")]
    pub encryption: Encryption,
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
    /// How the carrier writes numbers without a `+` (`numberFormat`); `None`: as international.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_format: Option<NumberFormat>,
    /// The OutboundTrunk whose registration delivers this trunk's calls (`auth.registration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<ObjectName>,
    pub transports: BTreeSet<Transport>,
    pub codecs: Vec<Codec>,
    pub limits: Limits,
    #[serde(skip_serializing_if = "MediaPolicy::is_default")]
    pub media: MediaPolicy,
}

impl InboundTrunkRoute {
    /// How this trunk reads `dialed` (its `numberFormat`), and the first reading it holds with
    /// its agent. `Err` when no reading is a valid number.
    #[allow(clippy::type_complexity)]
    pub fn held_reading(
        &self,
        dialed: &str,
    ) -> Result<(Vec<(E164, Reading)>, Option<(usize, &str)>), number::NumberError> {
        let found = number::readings(dialed, self.number_format.as_ref())?;
        let held = found
            .iter()
            .enumerate()
            .find_map(|(i, (n, _))| self.numbers.get(n).map(|agent| (i, agent.as_str())));
        Ok((found, held))
    }

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
    /// The carrier's hosts, lowest priority first, the spec's order within a priority. Never
    /// empty: compile refuses a trunk without a host.
    pub hosts: Vec<CarrierHost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<BasicAuth>,
    pub caller_id: E164,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub allowed_caller_ids: BTreeSet<E164>,
    pub leading_plus: bool,
    /// Seconds between OPTIONS probes; `None` when probing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_interval_seconds: Option<u32>,
    /// The binding's lifetime asked of the registrar; `None`: no registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_expires_seconds: Option<u32>,
    pub limits: Limits,
    /// Agents that may dial through this trunk; empty: all.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub agents: BTreeSet<String>,
    pub codecs: Vec<Codec>,
    #[serde(skip_serializing_if = "MediaPolicy::is_default")]
    pub media: MediaPolicy,
}

impl OutboundTrunkRoute {
    /// The first host: the only one of a trunk with `spec.host`, what `explain` and the
    /// listener choice of a transfer go by.
    pub fn primary(&self) -> &CarrierHost {
        self.hosts.first().expect("compile gives every accepted OutboundTrunk a host")
    }
}

/// One host of a carrier (`spec.host`, or an entry of `spec.hosts`), its defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CarrierHost {
    /// A host name (lower case) or an IP address.
    pub host: String,
    /// The port given, or the transport's default (5060, 5061 for TLS) when none was: with
    /// [`CarrierHost::srv`], the port of the A/AAAA fallback only.
    pub port: u16,
    pub transport: Transport,
    pub priority: u16,
    pub weight: u16,
    /// The host is a DNS name and no port was given: calls look its SRV records up first (RFC
    /// 3263 §4.2, [`CarrierHost::srv_name`]), and the Request-URI carries no port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub srv: bool,
}

impl CarrierHost {
    /// A host of priority 0 and weight 1 at a port given: what `spec.host` gives with
    /// `spec.port`.
    pub fn new(host: impl Into<String>, port: u16, transport: Transport) -> CarrierHost {
        CarrierHost { host: host.into(), port, transport, priority: 0, weight: 1, srv: false }
    }

    /// The SRV name of a host looked up by SRV (RFC 3263 §4.2; the transport is known, so no
    /// NAPTR): `_sip._udp.HOST`, `_sip._tcp.HOST`, or `_sips._tcp.HOST` for TLS. `None` for a
    /// host with a port given or an IP address.
    pub fn srv_name(&self) -> Option<String> {
        let service = match self.transport {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        };
        self.srv.then(|| format!("{service}.{}", self.host))
    }

    /// `host:port over UDP`, with an IPv6 address in brackets; `host (DNS SRV) over UDP` for a
    /// host looked up by SRV.
    pub fn describe(&self) -> String {
        if self.srv {
            return format!("{} (DNS SRV) over {}", self.host, self.transport.as_str());
        }
        let host =
            if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{host}:{} over {}", self.port, self.transport.as_str())
    }
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
        /// SRTP toward the destination (`spec.sip.media.encryption`).
        #[serde(skip_serializing_if = "Encryption::is_disabled")]
        encryption: Encryption,
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
    /// Every distinct `numberFormat` of the inbound trunks, `None` (no format) first: the ways
    /// a dialed number may be read when the trunk is not known yet.
    #[serde(skip)]
    formats: Vec<Option<NumberFormat>>,
    /// OutboundTrunk → the InboundTrunk its registration feeds.
    #[serde(skip)]
    registrations: HashMap<ObjectName, usize>,
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
        let mut formats = vec![None];
        let mut registrations = HashMap::new();
        for (i, trunk) in inbound.iter().enumerate() {
            if let Some(outbound) = &trunk.registration {
                registrations.entry(outbound.clone()).or_insert(i);
            }
            if !formats.contains(&trunk.number_format) {
                formats.push(trunk.number_format.clone());
            }
            numbers.reserve(trunk.numbers.len());
            for number in trunk.numbers.keys() {
                numbers.entry(number.clone()).or_insert(NumberOwner { trunk: i });
            }
            match &trunk.digest {
                Some(InboundDigest::Ready { credentials, .. }) => {
                    digest_users.entry(credentials.username.clone()).or_insert(i);
                }
                Some(InboundDigest::Pending { .. }) => {}
                // A trunk fed by a registration with no allowlist of its own is found through
                // the registration only (an empty allowlist would admit every address).
                None if trunk.registration.is_some() && trunk.allowed_addresses.is_empty() => {}
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
            formats,
            registrations,
        }
    }

    /// The InboundTrunk fed by OutboundTrunk `outbound`'s registration.
    pub fn trunk_by_registration(&self, outbound: &ObjectName) -> Option<&Arc<InboundTrunkRoute>> {
        self.registrations.get(outbound).and_then(|&i| self.inbound.get(i))
    }

    /// The trunk holding `number`, and the agent the number goes to.
    pub fn number_owner(&self, number: &E164) -> Option<(&Arc<InboundTrunkRoute>, &str)> {
        let trunk = self.inbound.get(self.numbers.get(number)?.trunk)?;
        Some((trunk, trunk.numbers.get(number)?.as_str()))
    }

    /// The trunk holding the number `dialed` (a Request-URI user, a `tel:` number), each trunk
    /// reading it its own way ([`InboundTrunkRoute::held_reading`]): the number as read, how, the
    /// trunk and the agent. Formats in table order (no format first), readings in order of
    /// preference; the first held one wins. Costs one read per distinct format in the table.
    pub fn dialed_owner(
        &self,
        dialed: &str,
    ) -> Option<(E164, Reading, &Arc<InboundTrunkRoute>, &str)> {
        self.formats.iter().find_map(|format| {
            let found = number::readings(dialed, format.as_ref()).ok()?;
            found.into_iter().find_map(|(number, reading)| {
                let (trunk, agent) = self.number_owner(&number)?;
                (trunk.number_format == *format).then_some((number, reading, trunk, agent))
            })
        })
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
