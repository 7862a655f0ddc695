//! `compile`: specs → (RoutingTable, a verdict for every object). Pure and deterministic: no I/O,
//! no clock; objects are considered oldest first (creation time, then namespace/name), which is
//! how every conflict is settled. One bad object never blocks the others.
//!
//! The rules (DESIGN §2), in the order they run:
//! 1. OutboundTrunks: credentials Secret resolved (missing or unusable: refused, `ResolvedRefs`).
//! 2. InboundTrunks, each on its own: authentication present and not open to everyone, addresses
//!    parse, destination URI parses, credentials resolved (referenced or generated).
//! 3. InboundTrunks together, oldest first: a digest username already used by an older trunk
//!    refuses the newer one; a number already held by an older trunk is taken from the newer one
//!    (degraded), and a trunk left with no number is refused.
//! 4. TransferDestinations: the OutboundTrunk or Secret they name must exist and be accepted.
//!
//! Callers: `check` and `explain` (offline), the operator (status), the gateway (its table).
//!
//! **Recompiling after an edit.** A source that compiles again and again (the folder watch, the
//! gateway's API-server source) keeps a [`Compiler`]: step 2 is the only one whose cost grows
//! with every number of every trunk, and it depends on nothing but the trunk itself and the
//! Secrets it looks up, so the Compiler keeps its outcome per trunk and reuses it while the
//! trunk and every Secret it looked up are unchanged. Steps 1, 3 and 4, where one object's
//! verdict depends on the others (age order, usernames, numbers, references), run in full every
//! time, so the result is the one [`compile`] gives; a property test holds them equal.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{self, InboundTrunk, Kind, OutboundTrunk, TransferDestination, rules};

use super::destination::{SipDestination, check_host};
use super::diagnostic::{Diagnostic, NumberTally, ObjectKey, Reason, Severity, Verdict};
use super::model::{
    AgentHeader, CarrierHost, Codec, Encryption, InboundDigest, InboundTrunkRoute, Limits,
    MediaPolicy, ObjectName, OutboundTrunkRoute, RoutingTable, TransferMode, TransferRoute,
    TransferTarget, Transport,
};
use super::number::{CallerPattern, E164, NumberFormat};
use super::secret::{BasicAuth, SecretEntry, SecretStore, generated_credentials_secret_name};
use super::specs::{CompileOptions, DEFAULT_NAMESPACE, Specs};

/// The result of a compile: the table to serve and what was decided about every object.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub table: RoutingTable,
    /// One verdict per object, sorted by kind, namespace and name.
    pub verdicts: Vec<Verdict>,
}

impl Compiled {
    pub fn verdict(&self, key: &ObjectKey) -> Option<&Verdict> {
        self.verdicts.binary_search_by(|v| v.object.cmp(key)).ok().map(|i| &self.verdicts[i])
    }
}

/// Default codecs, in order of preference, when a trunk lists none.
const DEFAULT_CODECS: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];

/// An IPv4 allowlist entry shorter than this, without digest, admits a large part of the
/// Internet: a lint.
const BROAD_IPV4_PREFIX: u8 = 8;
/// The same for IPv6.
const BROAD_IPV6_PREFIX: u8 = 32;

/// Compiles every object. See the module docs for the rules.
pub fn compile(specs: &Specs, options: &CompileOptions) -> Compiled {
    compile_with(specs, options, None)
}

/// [`compile`] for a source that compiles again after each change: it keeps the outcome of
/// each InboundTrunk's own checks (step 2 of the module docs) and reuses it while the trunk and
/// the Secrets it looked up are unchanged. Gives exactly what [`compile`] gives.
#[derive(Debug, Default)]
pub struct Compiler {
    inbound: HashMap<ObjectName, Box<CachedInbound>>,
}

/// What step 2 decided about one InboundTrunk, and what it was decided from.
#[derive(Debug)]
struct CachedInbound {
    trunk: InboundTrunk,
    /// Every Secret looked up, and what was found.
    lookups: Vec<SecretLookup>,
    diagnostics: Vec<Diagnostic>,
    route: Option<InboundTrunkRoute>,
}

impl Compiler {
    pub fn compile(&mut self, specs: &Specs, options: &CompileOptions) -> Compiled {
        compile_with(specs, options, Some(&mut self.inbound))
    }
}

fn compile_with(
    specs: &Specs,
    options: &CompileOptions,
    cache: Option<&mut HashMap<ObjectName, Box<CachedInbound>>>,
) -> Compiled {
    let mut verdicts = Vec::new();

    let outbound = compile_outbound_trunks(&specs.outbound, &specs.secrets, &mut verdicts);
    let registering: BTreeSet<ObjectName> = outbound
        .values()
        .filter(|o| o.route.registration_expires_seconds.is_some())
        .map(|o| o.route.name.clone())
        .collect();
    let inbound = compile_inbound_trunks(
        &specs.inbound,
        &specs.secrets,
        (cache, &registering),
        &mut verdicts,
    );
    let transfers = compile_transfers(&specs.transfers, &specs.secrets, &outbound, &mut verdicts);

    let in_region = |regions: &[String]| match &options.region {
        None => true,
        Some(r) => regions.is_empty() || regions.iter().any(|x| x == r),
    };
    let outbound_routes: Vec<OutboundTrunkRoute> =
        outbound.into_values().filter(|o| in_region(&o.regions)).map(|o| o.route).collect();
    let served_outbound: BTreeSet<ObjectName> =
        outbound_routes.iter().map(|o| o.name.clone()).collect();
    let inbound_routes =
        inbound.into_iter().filter(|t| in_region(&t.regions)).map(|t| t.route).collect();
    let transfer_routes = transfers
        .into_iter()
        .filter(|t| match &t.target {
            TransferTarget::Phone { outbound_trunk, .. } => {
                served_outbound.contains(outbound_trunk)
            }
            _ => true,
        })
        .collect();

    verdicts.sort_by(|a, b| a.object.cmp(&b.object));
    Compiled {
        table: RoutingTable::new(inbound_routes, outbound_routes, transfer_routes),
        verdicts,
    }
}

/// Collects the diagnostics of one object.
struct Problems {
    key: ObjectKey,
    list: Vec<Diagnostic>,
}

impl Problems {
    fn new(key: ObjectKey) -> Self {
        Problems { key, list: Vec::new() }
    }

    fn add(&mut self, severity: Severity, reason: Reason, field: &str, message: String) {
        self.list.push(Diagnostic {
            object: self.key.clone(),
            field: field.to_string(),
            severity,
            reason,
            message,
        });
    }

    fn fatal(&mut self, reason: Reason, field: &str, message: String) {
        self.add(Severity::Fatal, reason, field, message);
    }

    fn is_fatal(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Fatal)
    }

    fn into_verdict(self, generation: Option<i64>) -> Verdict {
        Verdict::from_diagnostics(self.key, generation, self.list)
    }
}

/// Namespace, name, generation and age of an object, and the order compile considers them in.
struct Meta<'a> {
    namespace: &'a str,
    name: &'a str,
    generation: Option<i64>,
}

fn meta_of(m: &ObjectMeta) -> Meta<'_> {
    Meta {
        namespace: m.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        name: m.name.as_deref().unwrap_or_default(),
        generation: m.generation,
    }
}

/// Oldest first: objects with a creation time before those without, then namespace/name.
fn age_order<T: kube::Resource>(objects: &[T]) -> Vec<&T> {
    let mut sorted: Vec<&T> = objects.iter().collect();
    // Stable, as `sort_by`; the key is made once per object, not once per comparison.
    sorted.sort_by_cached_key(|o| {
        let m = o.meta();
        (
            m.creation_timestamp.as_ref().map(|t| t.0).is_none(),
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            m.name.clone().unwrap_or_default(),
        )
    });
    sorted
}

/// Refuses a second object with the namespace and name of one already seen.
fn first_of_its_name(seen: &mut BTreeSet<ObjectName>, problems: &mut Problems) -> bool {
    let name = ObjectName::new(problems.key.namespace.clone(), problems.key.name.clone());
    if seen.insert(name) {
        return true;
    }
    problems.fatal(
        Reason::DuplicateObject,
        "metadata.name",
        format!("another {} named {} came first", problems.key.kind, problems.key.name),
    );
    false
}

/// A Secret looked up by namespace and name, and what was found.
#[derive(Debug)]
struct SecretLookup {
    namespace: String,
    name: String,
    found: Option<SecretEntry>,
}

/// Where compile looks Secrets up: the store, or the store with a record of each look-up (for
/// the [`Compiler`]'s cache).
trait Secrets {
    fn lookup(&mut self, namespace: &str, name: &str) -> Option<&SecretEntry>;
}

impl Secrets for &SecretStore {
    fn lookup(&mut self, namespace: &str, name: &str) -> Option<&SecretEntry> {
        self.get(namespace, name)
    }
}

/// The store, recording every look-up.
struct RecordedSecrets<'a> {
    store: &'a SecretStore,
    lookups: Vec<SecretLookup>,
}

impl Secrets for RecordedSecrets<'_> {
    fn lookup(&mut self, namespace: &str, name: &str) -> Option<&SecretEntry> {
        let found = self.store.get(namespace, name);
        self.lookups.push(SecretLookup {
            namespace: namespace.to_string(),
            name: name.to_string(),
            found: found.cloned(),
        });
        found
    }
}

/// Resolves a basic-auth Secret reference, recording why it does not resolve.
fn resolve_secret(
    secrets: &mut impl Secrets,
    namespace: &str,
    secret: &str,
    field: &str,
    problems: &mut Problems,
) -> Option<BasicAuth> {
    match secrets.lookup(namespace, secret) {
        Some(SecretEntry::BasicAuth(auth)) => Some(auth.clone()),
        Some(SecretEntry::Invalid(why)) => {
            problems.fatal(Reason::InvalidSecret, field, format!("Secret {secret} {why}"));
            None
        }
        None => {
            problems.fatal(
                Reason::SecretNotFound,
                field,
                format!("Secret {secret} does not exist in namespace {namespace}"),
            );
            None
        }
    }
}

fn codecs_of(codecs: &[api::Codec]) -> Vec<Codec> {
    if codecs.is_empty() {
        return DEFAULT_CODECS.to_vec();
    }
    let mut out = Vec::with_capacity(codecs.len());
    for c in codecs {
        let c = match c {
            api::Codec::Pcmu => Codec::Pcmu,
            api::Codec::Pcma => Codec::Pcma,
            api::Codec::G722 => Codec::G722,
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn limits_of(l: Option<&api::CallLimits>) -> Limits {
    l.map(|l| Limits {
        max_concurrent_calls: l.max_concurrent_calls,
        max_calls_per_second: l.max_calls_per_second,
        max_call_duration_seconds: l.max_call_duration_seconds,
    })
    .unwrap_or_default()
}

/// Parses a canonical E.164 field, recording a fatal problem when it is not one.
fn canonical_number(value: &str, field: &str, problems: &mut Problems) -> Option<E164> {
    match E164::parse_canonical(value) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.fatal(Reason::InvalidSpec, field, format!("{value:?} {e}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OutboundTrunk

/// An accepted OutboundTrunk and the regions it serves.
struct CompiledOutbound {
    route: OutboundTrunkRoute,
    regions: Vec<String>,
}

fn compile_outbound_trunks(
    trunks: &[OutboundTrunk],
    secrets: &SecretStore,
    verdicts: &mut Vec<Verdict>,
) -> BTreeMap<ObjectName, CompiledOutbound> {
    let mut accepted = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for trunk in age_order(trunks) {
        let meta = meta_of(&trunk.metadata);
        let mut problems =
            Problems::new(ObjectKey::new(Kind::OutboundTrunk, meta.namespace, meta.name));
        if !first_of_its_name(&mut seen, &mut problems) {
            verdicts.push(problems.into_verdict(meta.generation));
            continue;
        }
        let route = compile_outbound_trunk(trunk, &meta, &mut { secrets }, &mut problems);
        if let (Some(route), false) = (route, problems.is_fatal()) {
            accepted.insert(
                route.name.clone(),
                CompiledOutbound { route, regions: trunk.spec.regions.clone() },
            );
        }
        verdicts.push(problems.into_verdict(meta.generation));
    }
    accepted
}

fn compile_outbound_trunk(
    trunk: &OutboundTrunk,
    meta: &Meta,
    secrets: &mut impl Secrets,
    problems: &mut Problems,
) -> Option<OutboundTrunkRoute> {
    let spec = &trunk.spec;
    let hosts = compile_carrier_hosts(spec, problems);
    let credentials = match spec.auth.as_ref().map(|a| a.digest.secret_ref.as_ref()) {
        None => None,
        Some(None) => {
            problems.fatal(
                Reason::InvalidSpec,
                "spec.auth.digest.secretRef",
                "an OutboundTrunk's digest needs secretRef: the carrier issues the credentials"
                    .into(),
            );
            None
        }
        Some(Some(r)) => resolve_secret(
            secrets,
            meta.namespace,
            &r.name,
            "spec.auth.digest.secretRef.name",
            problems,
        ),
    };
    let caller_id = canonical_number(&spec.caller_id, "spec.callerId", problems);
    let mut allowed_caller_ids = BTreeSet::new();
    for (i, n) in spec.allowed_caller_ids.iter().enumerate() {
        if let Some(n) = canonical_number(n, &format!("spec.allowedCallerIds[{i}]"), problems) {
            if Some(&n) == caller_id.as_ref() {
                problems.add(
                    Severity::Warning,
                    Reason::Suspicious,
                    &format!("spec.allowedCallerIds[{i}]"),
                    format!("{n} is already the default callerId"),
                );
            }
            allowed_caller_ids.insert(n);
        }
    }
    let health_check_interval_seconds = match &spec.health_check {
        None => Some(30),
        Some(h) if h.enabled => Some(h.interval_seconds),
        Some(_) => None,
    };
    let registration_expires_seconds =
        spec.registration.as_ref().filter(|r| r.enabled).map(|r| r.expires_seconds);
    if registration_expires_seconds.is_some() && spec.auth.is_none() {
        problems.fatal(
            Reason::InvalidSpec,
            "spec.registration",
            "registration needs auth.digest: the registrar challenges for the account's \
             credentials"
                .into(),
        );
    }
    // SDES keys travel in the SDP: only a trunk whose every host is on TLS keeps them secret.
    let tls_only = !hosts.is_empty() && hosts.iter().all(|h| h.transport == Transport::Tls);
    let media = compile_media(spec.media.as_ref(), tls_only, problems);
    Some(OutboundTrunkRoute {
        name: ObjectName::new(meta.namespace, meta.name),
        generation: meta.generation,
        hosts,
        credentials,
        caller_id: caller_id?,
        allowed_caller_ids,
        leading_plus: spec.number_format.as_ref().is_none_or(|f| f.leading_plus),
        health_check_interval_seconds,
        registration_expires_seconds,
        limits: limits_of(spec.limits.as_ref()),
        agents: spec.agents.iter().cloned().collect(),
        codecs: codecs_of(&spec.codecs),
        media,
    })
}

/// `spec.host` (a list of one) or `spec.hosts`, with the trunk's port and transport as their
/// defaults (a DNS name with no port given anywhere is marked for SRV, RFC 3263 §4.2), ordered
/// by priority (a stable sort: the spec's order within a priority). Both, or
/// neither, is fatal (`HostOrHosts`, as the schema's rule says); so is a bad host or port 0.
fn compile_carrier_hosts(
    spec: &api::OutboundTrunkSpec,
    problems: &mut Problems,
) -> Vec<CarrierHost> {
    let transport = spec.transport.unwrap_or(Transport::Udp);
    let default_port = |t: Transport| if t == Transport::Tls { 5061 } else { 5060 };
    if spec.port == Some(0) {
        problems.fatal(Reason::InvalidSpec, "spec.port", "port 0 is not a port".into());
    }
    let mut hosts = Vec::new();
    match (&spec.host, spec.hosts.is_empty()) {
        (Some(_), false) | (None, true) => {
            problems.fatal(Reason::HostOrHosts, "spec", rules::HOST_OR_HOSTS.message.into());
        }
        (Some(host), true) => {
            if let Err(why) = check_host(host) {
                problems.fatal(Reason::InvalidHost, "spec.host", why);
            }
            let port = spec.port.unwrap_or(default_port(transport));
            let mut carrier = CarrierHost::new(host.to_ascii_lowercase(), port, transport);
            carrier.srv = spec.port.is_none() && is_name(host);
            hosts.push(carrier);
        }
        (None, false) => {
            for (i, h) in spec.hosts.iter().enumerate() {
                if let Err(why) = check_host(&h.host) {
                    problems.fatal(Reason::InvalidHost, &format!("spec.hosts[{i}].host"), why);
                }
                if h.port == Some(0) {
                    let field = format!("spec.hosts[{i}].port");
                    problems.fatal(Reason::InvalidSpec, &field, "port 0 is not a port".into());
                }
                let transport = h.transport.unwrap_or(transport);
                let given = h.port.or(spec.port);
                hosts.push(CarrierHost {
                    host: h.host.to_ascii_lowercase(),
                    port: given.unwrap_or(default_port(transport)),
                    transport,
                    priority: h.priority,
                    weight: h.weight,
                    srv: given.is_none() && is_name(&h.host),
                });
            }
        }
    }
    hosts.sort_by_key(|h| h.priority);
    hosts
}

/// Whether a host is a DNS name, not an IP address (`[::1]` included).
fn is_name(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_err()
}

/// `spec.media` of either trunk kind: the media allowlist parsed (a bad entry is fatal, as in
/// `auth.allowedAddresses`; one open to everyone is a warning: it turns the hijack guard off).
///
/// `tls_only`: the trunk's SIP runs over TLS only, so the SDES keys in its SDP are not sent in the
/// clear (a lint otherwise).
fn compile_media(
    media: Option<&api::TrunkMedia>,
    tls_only: bool,
    problems: &mut Problems,
) -> MediaPolicy {
    let mut policy = MediaPolicy::default();
    let Some(media) = media else { return policy };
    policy.encryption =
        compile_encryption(media.encryption, "spec.media.encryption", tls_only, problems);
    for (i, a) in media.allowed_addresses.iter().enumerate() {
        let field = format!("spec.media.allowedAddresses[{i}]");
        let parsed = a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(|n| n.trunc());
        match parsed {
            Ok(net) => {
                if net.prefix_len() == 0 {
                    problems.add(
                        Severity::Warning,
                        Reason::BroadAllowlist,
                        &field,
                        format!(
                            "{net} takes the carrier's RTP from anywhere: anyone who finds the call's port can take its media"
                        ),
                    );
                }
                policy.allowed_addresses.push(net);
            }
            Err(_) => problems.fatal(
                Reason::InvalidAddress,
                &field,
                format!("{a:?} is not an IP address or a CIDR such as 198.51.100.0/24"),
            ),
        }
    }
    policy
}

/// `encryption` of a trunk's or a SIP destination's media. SDES (RFC 4568 §8.3) keys travel in
/// the SDP: over SIP that is not TLS, anyone on the path reads them, so SRTP without TLS is a
/// warning (allowed: some carriers ask for it, and it still keeps passive RTP taps out).
fn compile_encryption(
    encryption: Option<api::MediaEncryption>,
    field: &str,
    tls_only: bool,
    problems: &mut Problems,
) -> Encryption {
    let encryption = match encryption.unwrap_or_default() {
        api::MediaEncryption::Disabled => Encryption::Disabled,
        api::MediaEncryption::Optional => Encryption::Optional,
        api::MediaEncryption::Required => Encryption::Required,
    };
    if !encryption.is_disabled() && !tls_only {
        problems.add(
            Severity::Warning,
            Reason::Suspicious,
            field,
            format!(
                "encryption {} sends the SRTP keys in the SDP, in the clear over SIP that is not TLS: anyone on the path can decrypt the media",
                encryption.as_str()
            ),
        );
    }
    encryption
}

// ---------------------------------------------------------------------------------------------
// InboundTrunk

/// An InboundTrunk that passed its own checks, before numbers are shared out.
struct InboundCandidate<'a> {
    trunk: &'a InboundTrunk,
    problems: Problems,
    generation: Option<i64>,
    route: Option<InboundTrunkRoute>,
    credentials_secret: Option<String>,
}

/// An accepted InboundTrunk and the regions it serves.
struct CompiledInbound {
    route: InboundTrunkRoute,
    regions: Vec<String>,
}

fn compile_inbound_trunks(
    trunks: &[InboundTrunk],
    secrets: &SecretStore,
    (mut cache, registering): (
        Option<&mut HashMap<ObjectName, Box<CachedInbound>>>,
        &BTreeSet<ObjectName>,
    ),
    verdicts: &mut Vec<Verdict>,
) -> Vec<CompiledInbound> {
    let mut seen = BTreeSet::new();
    let mut candidates = Vec::new();
    let mut kept = HashMap::new();
    for trunk in age_order(trunks) {
        let meta = meta_of(&trunk.metadata);
        let mut problems =
            Problems::new(ObjectKey::new(Kind::InboundTrunk, meta.namespace, meta.name));
        let route = if !first_of_its_name(&mut seen, &mut problems) {
            None
        } else if let Some(cache) = cache.as_deref_mut() {
            let name = ObjectName::new(meta.namespace, meta.name);
            let cached = match cache.remove(&name) {
                Some(c) if c.is_for(trunk, secrets) => c,
                _ => {
                    let mut recorded = RecordedSecrets { store: secrets, lookups: Vec::new() };
                    let route = compile_inbound_trunk(trunk, &meta, &mut recorded, &mut problems);
                    Box::new(CachedInbound {
                        trunk: trunk.clone(),
                        lookups: recorded.lookups,
                        diagnostics: std::mem::take(&mut problems.list),
                        route,
                    })
                }
            };
            problems.list.clone_from(&cached.diagnostics);
            let route = cached.route.clone();
            kept.insert(name, cached);
            route
        } else {
            compile_inbound_trunk(trunk, &meta, &mut { secrets }, &mut problems)
        };
        let credentials_secret = route.as_ref().and_then(|r| match &r.digest {
            Some(InboundDigest::Ready { secret, .. } | InboundDigest::Pending { secret }) => {
                Some(secret.clone())
            }
            None => None,
        });
        candidates.push(InboundCandidate {
            trunk,
            problems,
            generation: meta.generation,
            route,
            credentials_secret,
        });
    }

    if let Some(cache) = cache {
        // Trunks gone or renamed since the last compile are forgotten.
        *cache = kept;
    }

    // Oldest first: digest usernames and numbers go to the first trunk that claims them. A
    // number is held by the index of its holder in `claimants`, keyed by its text in the spec
    // (a canonical number is its own text).
    let claimants: Vec<&InboundTrunk> = candidates.iter().map(|c| c.trunk).collect();
    let mut usernames: HashMap<String, ObjectName> = HashMap::new();
    let mut registrations: HashMap<ObjectName, ObjectName> = HashMap::new();
    let mut holders: HashMap<&str, usize> = HashMap::new();
    let mut accepted = Vec::new();
    for (index, mut c) in candidates.into_iter().enumerate() {
        let mut tally = None;
        if let (Some(mut route), false) = (c.route.take(), c.problems.is_fatal()) {
            claim_username(&route, &mut usernames, &mut c.problems);
            claim_registration(&route, registering, &mut registrations, &mut c.problems);
            if !c.problems.is_fatal() {
                let claim = Claim { index, claimants: &claimants, holders: &mut holders };
                let counts = claim_numbers(&mut route, c.trunk, claim, &mut c.problems);
                tally = Some(counts);
                if !c.problems.is_fatal() {
                    accepted.push(CompiledInbound { route, regions: c.trunk.spec.regions.clone() });
                }
            }
        }
        let mut verdict = c.problems.into_verdict(c.generation);
        verdict.numbers = Some(tally.unwrap_or_default());
        verdict.credentials_secret = c.credentials_secret;
        verdicts.push(verdict);
    }
    accepted
}

impl CachedInbound {
    /// Whether this is what step 2 decides about `trunk` with `secrets`: the same object, and
    /// the same answer to every Secret look-up it made.
    fn is_for(&self, trunk: &InboundTrunk, secrets: &SecretStore) -> bool {
        self.trunk.spec == trunk.spec
            && self.trunk.metadata == trunk.metadata
            && self.lookups.iter().all(|l| secrets.get(&l.namespace, &l.name) == l.found.as_ref())
    }
}

/// Records this trunk's digest username, refusing the trunk if an older one uses it: calls are
/// told apart by that username.
fn claim_username(
    route: &InboundTrunkRoute,
    usernames: &mut HashMap<String, ObjectName>,
    problems: &mut Problems,
) {
    let Some(InboundDigest::Ready { credentials, secret }) = &route.digest else {
        return;
    };
    match usernames.get(&credentials.username) {
        Some(holder) => problems.fatal(
            Reason::CredentialConflict,
            "spec.auth.digest.secretRef.name",
            format!(
                "the digest username in Secret {secret} is already used by InboundTrunk {holder} (older); every trunk needs its own username"
            ),
        ),
        None => {
            usernames.insert(credentials.username.clone(), route.name.clone());
        }
    }
}

/// The OutboundTrunk whose registration delivers this trunk's calls must register (exist, be
/// accepted, have `registration` on), and feed no older InboundTrunk: its calls are told apart
/// by the registration they come through.
fn claim_registration(
    route: &InboundTrunkRoute,
    registering: &BTreeSet<ObjectName>,
    claimed: &mut HashMap<ObjectName, ObjectName>,
    problems: &mut Problems,
) {
    let Some(outbound) = &route.registration else { return };
    let field = "spec.auth.registration.outboundTrunkRef.name";
    if !registering.contains(outbound) {
        problems.fatal(
            Reason::TrunkNotFound,
            field,
            format!("OutboundTrunk {outbound} does not exist, is refused, or does not register"),
        );
        return;
    }
    match claimed.get(outbound) {
        Some(holder) => problems.fatal(
            Reason::CredentialConflict,
            field,
            format!(
                "OutboundTrunk {outbound}'s registration already feeds InboundTrunk {holder} \
                 (older)"
            ),
        ),
        None => {
            claimed.insert(outbound.clone(), route.name.clone());
        }
    }
}

/// Who holds which number so far: `claimants` in age order, `holders` the index of the holder
/// of each number, `index` the trunk claiming now.
struct Claim<'a, 'b> {
    index: usize,
    claimants: &'b [&'a InboundTrunk],
    holders: &'b mut HashMap<&'a str, usize>,
}

/// Takes from `route` the numbers an older trunk holds, and claims the rest.
fn claim_numbers<'a>(
    route: &mut InboundTrunkRoute,
    trunk: &'a InboundTrunk,
    claim: Claim<'a, '_>,
    problems: &mut Problems,
) -> NumberTally {
    let mut tally = NumberTally::default();
    for (i, assignment) in trunk.spec.numbers.iter().enumerate() {
        let text = assignment.number.as_str();
        if !E164::is_canonical(text) {
            continue; // already reported by compile_inbound_trunk
        }
        match claim.holders.get(text) {
            Some(&holder) if holder != claim.index => {
                let Ok(number) = E164::parse_canonical(text) else { continue };
                route.numbers.remove(&number);
                tally.conflicting += 1;
                let meta = claim.claimants.get(holder).map(|t| meta_of(&t.metadata));
                let holder = meta
                    .map(|m| ObjectName::new(m.namespace, m.name).to_string())
                    .unwrap_or_default();
                problems.add(
                    Severity::Degraded,
                    Reason::NumberConflict,
                    &format!("spec.numbers[{i}].number"),
                    format!("number {number} is held by InboundTrunk {holder} (older)"),
                );
            }
            Some(_) => {}
            None => {
                claim.holders.insert(text, claim.index);
            }
        }
    }
    tally.accepted = u32::try_from(route.numbers.len()).unwrap_or(u32::MAX);
    if route.numbers.is_empty() {
        problems.fatal(
            Reason::NumberConflict,
            "spec.numbers",
            "every number of this trunk is held by an older InboundTrunk: it has nothing to serve"
                .into(),
        );
    }
    if tally.conflicting > 0 {
        // Otherwise they are still those of every number, as compile_inbound_trunk made them.
        route.agents = route.numbers.values().cloned().collect();
    }
    tally
}

fn compile_inbound_trunk(
    trunk: &InboundTrunk,
    meta: &Meta,
    secrets: &mut impl Secrets,
    problems: &mut Problems,
) -> Option<InboundTrunkRoute> {
    let spec = &trunk.spec;

    let mut numbers = BTreeMap::new();
    for (i, a) in spec.numbers.iter().enumerate() {
        let field = format!("spec.numbers[{i}].number");
        let Some(n) = canonical_number(&a.number, &field, problems) else { continue };
        if let Some(previous) = numbers.insert(n.clone(), a.agent.clone()) {
            problems.fatal(
                Reason::InvalidSpec,
                &field,
                format!("number {n} is listed twice (agents {previous} and {})", a.agent),
            );
        }
    }
    if spec.numbers.is_empty() {
        problems.fatal(
            Reason::InvalidSpec,
            "spec.numbers",
            "a trunk needs at least one number".into(),
        );
    }

    let allowed_addresses = compile_allowlist(&spec.auth, problems);
    let tls_only =
        !spec.transports.is_empty() && spec.transports.iter().all(|t| *t == Transport::Tls);
    let media = compile_media(spec.media.as_ref(), tls_only, problems);

    let digest = match &spec.auth.digest {
        None => None,
        Some(d) => match &d.secret_ref {
            Some(r) => resolve_secret(
                secrets,
                meta.namespace,
                &r.name,
                "spec.auth.digest.secretRef.name",
                problems,
            )
            .map(|credentials| InboundDigest::Ready { secret: r.name.clone(), credentials }),
            None => {
                let secret = generated_credentials_secret_name(meta.name);
                match secrets.lookup(meta.namespace, &secret) {
                    Some(SecretEntry::BasicAuth(credentials)) => {
                        Some(InboundDigest::Ready { secret, credentials: credentials.clone() })
                    }
                    Some(SecretEntry::Invalid(why)) => {
                        problems.fatal(
                            Reason::InvalidSecret,
                            "spec.auth.digest",
                            format!("generated Secret {secret} {why}"),
                        );
                        None
                    }
                    None => {
                        problems.add(
                            Severity::Warning,
                            Reason::CredentialsPending,
                            "spec.auth.digest",
                            format!(
                                "no secretRef: credentials are generated into Secret {secret} by the operator (or trunkline run); until then its calls are refused with 503"
                            ),
                        );
                        Some(InboundDigest::Pending { secret })
                    }
                }
            }
        },
    };

    let destination = SipDestination::parse(&spec.destination.uri);
    if let Err(why) = &destination {
        problems.fatal(Reason::InvalidUri, "spec.destination.uri", why.clone());
    }

    let mut allowed_callers = Vec::new();
    for (i, p) in spec.allowed_callers.iter().enumerate() {
        let field = format!("spec.allowedCallers[{i}]");
        match CallerPattern::parse(p) {
            Some(CallerPattern::Prefix(prefix)) if prefix.is_empty() => problems.add(
                Severity::Warning,
                Reason::Suspicious,
                &field,
                "\"*\" admits every caller, the same as leaving allowedCallers empty".into(),
            ),
            Some(pattern) => allowed_callers.push(pattern),
            None => problems.fatal(
                Reason::InvalidSpec,
                &field,
                format!("{p:?} is neither an E.164 number nor a prefix such as +1415*"),
            ),
        }
    }

    let number_format = spec
        .number_format
        .as_ref()
        .and_then(|f| compile_number_format(f, numbers.keys(), problems));

    let transports: BTreeSet<Transport> = if spec.transports.is_empty() {
        Transport::ALL.into()
    } else {
        spec.transports.iter().copied().collect()
    };

    if problems.is_fatal() {
        return None;
    }
    Some(InboundTrunkRoute {
        name: ObjectName::new(meta.namespace, meta.name),
        generation: meta.generation,
        agents: numbers.values().cloned().collect(),
        numbers,
        destination: destination.ok()?,
        agent_header: match spec.agent_header.unwrap_or_default() {
            api::AgentHeaderPolicy::Allow => AgentHeader::Allow,
            api::AgentHeaderPolicy::Ignore => AgentHeader::Ignore,
        },
        digest,
        allowed_addresses,
        allowed_callers,
        number_format,
        registration: spec
            .auth
            .registration
            .as_ref()
            .map(|r| ObjectName::new(meta.namespace, r.outbound_trunk_ref.name.clone())),
        transports,
        codecs: codecs_of(&spec.codecs),
        limits: limits_of(spec.limits.as_ref()),
        media,
    })
}

/// `numberFormat`, with its international prefix defaulted. The two prefixes may not be the
/// same (a number after it would be both national and international); a country code none of
/// the trunk's numbers has is a warning (its national numbers would never be held).
fn compile_number_format<'a>(
    format: &api::InboundNumberFormat,
    mut numbers: impl Iterator<Item = &'a E164>,
    problems: &mut Problems,
) -> Option<NumberFormat> {
    let country_code = format.default_country_code.clone();
    let international_prefix = format
        .international_prefix
        .clone()
        .unwrap_or_else(|| NumberFormat::default_international_prefix(&country_code).to_string());
    if format.national_prefix.as_ref() == Some(&international_prefix) {
        problems.fatal(
            Reason::InvalidSpec,
            "spec.numberFormat.nationalPrefix",
            format!(
                "the national prefix {international_prefix:?} is also the international prefix: \
                 a number after it could be either"
            ),
        );
        return None;
    }
    if !numbers.any(|n| n.digits().starts_with(&country_code)) {
        problems.add(
            Severity::Warning,
            Reason::Suspicious,
            "spec.numberFormat.defaultCountryCode",
            format!(
                "none of the trunk's numbers starts with +{country_code}: national numbers the \
                 carrier sends would not be held by this trunk"
            ),
        );
    }
    Some(NumberFormat {
        country_code,
        national_prefix: format.national_prefix.clone(),
        international_prefix,
    })
}

/// Parses the address allowlist and applies the authentication rules: digest or addresses, and
/// no allowlist open to everyone without digest.
fn compile_allowlist(auth: &api::InboundAuth, problems: &mut Problems) -> Vec<IpNet> {
    let has_digest = auth.digest.is_some();
    let mut nets = Vec::new();
    for (i, a) in auth.allowed_addresses.iter().enumerate() {
        let field = format!("spec.auth.allowedAddresses[{i}]");
        let parsed = a
            .parse::<IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(|n| n.trunc());
        let Ok(net) = parsed else {
            problems.fatal(
                Reason::InvalidAddress,
                &field,
                format!("{a:?} is not an IP address or a CIDR such as 203.0.113.0/24"),
            );
            continue;
        };
        if !has_digest {
            let broad_limit = match net {
                IpNet::V4(_) => BROAD_IPV4_PREFIX,
                IpNet::V6(_) => BROAD_IPV6_PREFIX,
            };
            if net.prefix_len() == 0 {
                problems.fatal(
                    Reason::OpenTrunk,
                    &field,
                    format!(
                        "{a} without digest would let anyone in: add auth.digest or list the carrier's addresses"
                    ),
                );
            } else if net.prefix_len() < broad_limit {
                problems.add(
                    Severity::Warning,
                    Reason::BroadAllowlist,
                    &field,
                    format!(
                        "{net} admits {} addresses without digest; carriers publish much narrower ranges",
                        describe_size(net)
                    ),
                );
            }
        }
        nets.push(net);
    }
    if !has_digest && auth.allowed_addresses.is_empty() && auth.registration.is_none() {
        problems.fatal(
            Reason::NoAuthentication,
            "spec.auth",
            "a trunk needs digest, allowedAddresses or registration".into(),
        );
    }
    nets
}

fn describe_size(net: IpNet) -> String {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    match 2u128.checked_pow(host_bits) {
        Some(n) if n < 1_000_000_000_000 => format!("{n}"),
        _ => format!("2^{host_bits}"),
    }
}

// ---------------------------------------------------------------------------------------------
// TransferDestination

fn compile_transfers(
    transfers: &[TransferDestination],
    secrets: &SecretStore,
    outbound: &BTreeMap<ObjectName, CompiledOutbound>,
    verdicts: &mut Vec<Verdict>,
) -> Vec<TransferRoute> {
    let mut accepted = Vec::new();
    let mut seen = BTreeSet::new();
    let refused_outbound: BTreeSet<ObjectName> = verdicts
        .iter()
        .filter(|v| v.object.kind == Kind::OutboundTrunk)
        .map(|v| ObjectName::new(v.object.namespace.clone(), v.object.name.clone()))
        .filter(|n| !outbound.contains_key(n))
        .collect();
    for t in age_order(transfers) {
        let meta = meta_of(&t.metadata);
        let mut problems =
            Problems::new(ObjectKey::new(Kind::TransferDestination, meta.namespace, meta.name));
        if first_of_its_name(&mut seen, &mut problems) {
            let target = compile_transfer_target(
                t,
                &meta,
                secrets,
                outbound,
                &refused_outbound,
                &mut problems,
            );
            if let (Some(target), false) = (target, problems.is_fatal()) {
                accepted.push(TransferRoute {
                    name: ObjectName::new(meta.namespace, meta.name),
                    generation: meta.generation,
                    target,
                    mode: match t.spec.mode.unwrap_or_default() {
                        api::TransferMode::Bridge => TransferMode::Bridge,
                        api::TransferMode::Refer => TransferMode::Refer,
                    },
                    agents: t.spec.agents.iter().cloned().collect(),
                });
            }
        }
        verdicts.push(problems.into_verdict(meta.generation));
    }
    accepted
}

fn compile_transfer_target(
    t: &TransferDestination,
    meta: &Meta,
    secrets: &SecretStore,
    outbound: &BTreeMap<ObjectName, CompiledOutbound>,
    refused_outbound: &BTreeSet<ObjectName>,
    problems: &mut Problems,
) -> Option<TransferTarget> {
    let spec = &t.spec;
    let members = (spec.phone.is_some(), spec.sip.is_some());
    match (spec.type_, members) {
        (api::TransferType::Phone, (true, false))
        | (api::TransferType::Sip, (false, true))
        | (api::TransferType::Hangup, (false, false)) => {}
        (type_, _) => {
            let want = match type_ {
                api::TransferType::Phone => "type Phone needs spec.phone and no spec.sip",
                api::TransferType::Sip => "type Sip needs spec.sip and no spec.phone",
                api::TransferType::Hangup => "type Hangup takes neither spec.phone nor spec.sip",
            };
            problems.fatal(Reason::TypeMismatch, "spec", want.into());
            return None;
        }
    }
    match spec.type_ {
        api::TransferType::Hangup => {
            if spec.mode == Some(api::TransferMode::Refer) {
                problems.fatal(
                    Reason::TypeMismatch,
                    "spec.mode",
                    "type Hangup cannot use mode Refer: there is nobody to refer the caller to"
                        .into(),
                );
            }
            Some(TransferTarget::Hangup)
        }
        api::TransferType::Phone => {
            let phone = spec.phone.as_ref()?;
            let number = canonical_number(&phone.number, "spec.phone.number", problems);
            let trunk = ObjectName::new(meta.namespace, phone.outbound_trunk_ref.name.clone());
            let field = "spec.phone.outboundTrunkRef.name";
            match outbound.get(&trunk) {
                Some(o) => warn_agent_mismatch(&spec.agents, &o.route, problems),
                None if refused_outbound.contains(&trunk) => problems.fatal(
                    Reason::TrunkNotAccepted,
                    field,
                    format!("OutboundTrunk {} is not accepted (see its status)", trunk.name),
                ),
                None => problems.fatal(
                    Reason::TrunkNotFound,
                    field,
                    format!(
                        "OutboundTrunk {} does not exist in namespace {}",
                        trunk.name, trunk.namespace
                    ),
                ),
            }
            Some(TransferTarget::Phone { number: number?, outbound_trunk: trunk })
        }
        api::TransferType::Sip => {
            let sip = spec.sip.as_ref()?;
            if let Err(why) = SipDestination::parse(&sip.uri) {
                problems.fatal(Reason::InvalidUri, "spec.sip.uri", why);
            }
            let credentials = match sip.auth.as_ref().map(|a| a.digest.secret_ref.as_ref()) {
                None => None,
                Some(None) => {
                    problems.fatal(
                        Reason::InvalidSpec,
                        "spec.sip.auth.digest.secretRef",
                        "digest toward a SIP destination needs secretRef".into(),
                    );
                    None
                }
                Some(Some(r)) => resolve_secret(
                    &mut { secrets },
                    meta.namespace,
                    &r.name,
                    "spec.sip.auth.digest.secretRef.name",
                    problems,
                ),
            };
            let field = "spec.sip.media.encryption";
            let encryption = compile_encryption(
                sip.media.as_ref().and_then(|m| m.encryption),
                field,
                SipDestination::parse(&sip.uri).is_ok_and(|d| d.transport == Transport::Tls),
                problems,
            );
            Some(TransferTarget::Sip { uri: sip.uri.clone(), credentials, encryption })
        }
    }
}

/// A lint: agents allowed to use a phone destination whose OutboundTrunk would refuse them.
fn warn_agent_mismatch(agents: &[String], trunk: &OutboundTrunkRoute, problems: &mut Problems) {
    if trunk.agents.is_empty() {
        return;
    }
    let refused: Vec<&str> =
        agents.iter().filter(|a| !trunk.agents.contains(*a)).map(String::as_str).collect();
    if agents.is_empty() {
        problems.add(
            Severity::Warning,
            Reason::Suspicious,
            "spec.agents",
            format!(
                "every agent may use this destination, but OutboundTrunk {} allows only {}",
                trunk.name.name,
                trunk.agents.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    } else if !refused.is_empty() {
        problems.add(
            Severity::Warning,
            Reason::Suspicious,
            "spec.agents",
            format!(
                "agents {} may use this destination, but OutboundTrunk {} does not allow them",
                refused.join(", "),
                trunk.name.name
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    //! The [`Compiler`] against [`compile`]: random specs, random edit sequences, the same
    //! result after every edit (table, hash and every verdict).

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    use super::*;
    use crate::config::secret::Password;

    const NAMESPACES: [&str; 2] = ["voice", "sales"];
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    /// An InboundTrunk drawn from a small world, so that names, numbers, usernames and Secrets
    /// collide often.
    #[derive(Clone, Debug)]
    struct TrunkModel {
        namespace: usize,
        name: usize,
        created: Option<u8>,
        generation: Option<i64>,
        numbers: Vec<(u8, u8)>,
        /// None: no digest; Some(None): generated credentials; Some(Some(i)): secret `s{i}`.
        digest: Option<Option<u8>>,
        addresses: Vec<u8>,
        bad_destination: bool,
        regions: Vec<u8>,
    }

    /// A Secret `s{i}` or a generated one, as compile sees it: usable (with a username from a
    /// small pool), unusable, or missing (not in the map).
    type SecretsModel = BTreeMap<(usize, String), Option<u8>>;

    fn trunk_model() -> impl Strategy<Value = TrunkModel> {
        (
            0..NAMESPACES.len(),
            0..NAMES.len(),
            proptest::option::of(0u8..3),
            proptest::option::of(1i64..3),
            proptest::collection::vec((0u8..6, 0u8..2), 0..4),
            proptest::option::of(proptest::option::of(0u8..3)),
            proptest::collection::vec(0u8..4, 0..3),
            proptest::bool::weighted(0.1),
            proptest::collection::vec(0u8..2, 0..2),
        )
            .prop_map(
                |(
                    namespace,
                    name,
                    created,
                    generation,
                    numbers,
                    digest,
                    addresses,
                    bad_destination,
                    regions,
                )| TrunkModel {
                    namespace,
                    name,
                    created,
                    generation,
                    numbers,
                    digest,
                    addresses,
                    bad_destination,
                    regions,
                },
            )
    }

    fn secret_name() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..3).prop_map(|i| format!("s{i}")),
            (0..NAMES.len()).prop_map(|n| generated_credentials_secret_name(NAMES[n])),
        ]
    }

    /// One edit: a trunk replaced, added or removed, a Secret set or removed.
    #[derive(Clone, Debug)]
    enum Edit {
        Replace(usize, TrunkModel),
        Add(TrunkModel),
        Remove(usize),
        SetSecret(usize, String, Option<u8>),
        RemoveSecret(usize, String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            3 => (0usize..8, trunk_model()).prop_map(|(i, t)| Edit::Replace(i, t)),
            2 => trunk_model().prop_map(Edit::Add),
            1 => (0usize..8).prop_map(Edit::Remove),
            2 => (0..NAMESPACES.len(), secret_name(), proptest::option::of(0u8..2))
                .prop_map(|(ns, n, u)| Edit::SetSecret(ns, n, u)),
            1 => (0..NAMESPACES.len(), secret_name()).prop_map(|(ns, n)| Edit::RemoveSecret(ns, n)),
        ]
    }

    fn inbound(m: &TrunkModel) -> InboundTrunk {
        let numbers: Vec<_> = m
            .numbers
            .iter()
            .map(|(n, a)| serde_json::json!({"number": format!("+1415555010{n}"), "agent": format!("agent-{a}")}))
            .collect();
        let mut auth = serde_json::json!({});
        if let Some(digest) = m.digest {
            auth["digest"] = match digest {
                Some(i) => serde_json::json!({"secretRef": {"name": format!("s{i}")}}),
                None => serde_json::json!({}),
            };
        }
        let addresses: Vec<&str> = m
            .addresses
            .iter()
            .map(|a| ["203.0.113.0/24", "198.51.100.7", "0.0.0.0/0", "not-an-address"][*a as usize])
            .collect();
        auth["allowedAddresses"] = serde_json::json!(addresses);
        let spec = serde_json::json!({
            "numbers": numbers,
            "destination": {"uri": if m.bad_destination { "http://nope" } else { "sip:agents.example.com:5070" }},
            "auth": auth,
            "regions": m.regions.iter().map(|r| ["us", "eu"][*r as usize]).collect::<Vec<_>>(),
        });
        let mut trunk = InboundTrunk::new(
            NAMES[m.name],
            serde_json::from_value(spec).expect("a valid InboundTrunkSpec"),
        );
        trunk.metadata.namespace = Some(NAMESPACES[m.namespace].to_string());
        trunk.metadata.generation = m.generation;
        trunk.metadata.creation_timestamp = m.created.map(|c| {
            Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i64::from(c)).unwrap())
        });
        trunk
    }

    fn specs(trunks: &[TrunkModel], secrets: &SecretsModel) -> Specs {
        let mut specs = Specs { inbound: trunks.iter().map(inbound).collect(), ..Specs::default() };
        for ((ns, name), user) in secrets {
            let entry = match user {
                Some(u) => SecretEntry::BasicAuth(BasicAuth {
                    username: format!("user-{u}"),
                    password: Password::new(format!("pw-{name}")),
                }),
                None => SecretEntry::Invalid("has no key password".into()),
            };
            specs.secrets.insert(NAMESPACES[*ns], name, entry);
        }
        specs
    }

    fn apply(edit: &Edit, trunks: &mut Vec<TrunkModel>, secrets: &mut SecretsModel) {
        match edit.clone() {
            Edit::Replace(i, t) if !trunks.is_empty() => {
                let i = i % trunks.len();
                trunks[i] = t;
            }
            Edit::Replace(_, t) | Edit::Add(t) => trunks.push(t),
            Edit::Remove(i) if !trunks.is_empty() => {
                let i = i % trunks.len();
                trunks.remove(i);
            }
            Edit::Remove(_) => {}
            Edit::SetSecret(ns, name, user) => {
                secrets.insert((ns, name), user);
            }
            Edit::RemoveSecret(ns, name) => {
                secrets.remove(&(ns, name));
            }
        }
    }

    fn assert_same(incremental: &Compiled, full: &Compiled) {
        assert_eq!(incremental.verdicts, full.verdicts);
        assert_eq!(incremental.table, full.table);
        assert_eq!(incremental.table.config_hash(), full.table.config_hash());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn the_compiler_after_any_edits_gives_what_a_full_compile_gives(
            start in proptest::collection::vec(trunk_model(), 0..6),
            edits in proptest::collection::vec(edit(), 1..12),
            region in proptest::option::of(prop_oneof![Just("us"), Just("eu")]),
        ) {
            let options = CompileOptions { region: region.map(str::to_string) };
            let mut trunks = start;
            let mut secrets = SecretsModel::new();
            secrets.insert((0, "s0".into()), Some(0));
            secrets.insert((0, "s1".into()), Some(0));
            let mut compiler = Compiler::default();
            let first = specs(&trunks, &secrets);
            assert_same(&compiler.compile(&first, &options), &compile(&first, &options));
            for edit in &edits {
                apply(edit, &mut trunks, &mut secrets);
                let now = specs(&trunks, &secrets);
                assert_same(&compiler.compile(&now, &options), &compile(&now, &options));
            }
        }
    }
}
