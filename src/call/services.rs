//! What the gateway's front door and its call tasks share: the configuration, the transports and
//! listeners (for sending and for our own Via/Contact), the table of call tasks by Call-ID, the
//! relays' ports and threads, the metrics, and the count of calls in progress. The front door
//! (`gateway`) builds it and hands it to each call task (`inbound`), so neither of the two
//! imports the other's internals: `gateway` → `inbound` → `services`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::lookup;
use crate::media::ports::PortAllocator;
use crate::media::relay::{MediaThreads, Relay, RelayConfig, SourceGuard};
use crate::media::sdp::OwnAddresses;
use crate::observe::metrics::GatewayMetrics;
use crate::sip::msg::{Request, Response};
use crate::sip::resolve::Resolver;
use crate::sip::transport::{Protocol, Source, Target, Transports, Zone};

/// What the gateway is told at start.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The address advertised in Via, Contact and (later) SDP instead of the listener's own.
    pub public_address: Option<IpAddr>,
    /// Prefix of trunkline's own headers.
    pub header_prefix: String,
    /// How long an agent may ring before the call is given up (480 to the carrier).
    pub agent_timeout: Duration,
    /// How long a bridged transfer's destination may ring before the transfer fails.
    pub transfer_timeout: Duration,
    /// The `Server`/`User-Agent` value.
    pub user_agent: String,
    /// No RTP from a leg of an answered call for this long ends the call.
    pub media_timeout: Duration,
    /// How long hold suspends the media timeout; `None`: the whole hold.
    pub max_hold: Option<Duration>,
    /// The ceiling on an answered call's length; `None`: none.
    pub max_call_duration: Option<Duration>,
    /// The smallest session interval accepted (`Min-SE`).
    pub min_session_expires: u32,
    /// Networks the agent-facing listener takes new calls from (`--agent-networks`).
    pub agent_networks: Vec<ipnet::IpNet>,
    /// The agent runtime's digest credentials, when its INVITEs must answer a challenge.
    pub agent_credentials: Option<Arc<super::agent_auth::AgentCredentials>>,
    /// Where calls placed through the call API are bridged to, unless a request names its own.
    pub agent_uri: Option<String>,
    /// Where session records go (`--records-file`); none: no records.
    pub records: Option<Arc<crate::observe::record::RecordFile>>,
    /// This gateway's name in records (the pod's, or the host's).
    pub gateway_name: String,
    /// Where session records wait for the webhook (`--records-webhook`); none: no webhook.
    pub outbox: Option<Arc<crate::observe::record::Outbox>>,
    /// The per-source protection's thresholds (`--source-invite-rate`, `--auth-failures`...).
    pub guard: super::guard::GuardSettings,
    /// At most one refusal log line per reason per this interval (`--refusal-log-interval`).
    pub refusal_log_interval: Duration,
    /// This pod's place in the fleet, which the trunks' limits are divided over
    /// (`call::limits`); the runtime keeps it current. Default: alone, the whole limits.
    pub fleet: Arc<super::limits::FleetShare>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            public_address: None,
            header_prefix: lookup::DEFAULT_HEADER_PREFIX.to_string(),
            agent_timeout: Duration::from_secs(60),
            transfer_timeout: super::machine::TRANSFER_RING,
            user_agent: format!("trunkline/{}", env!("CARGO_PKG_VERSION")),
            media_timeout: Duration::from_secs(30),
            max_hold: None,
            max_call_duration: None,
            min_session_expires: crate::sip::session_timer::RFC_MIN_SE,
            agent_networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            agent_credentials: None,
            agent_uri: None,
            records: None,
            gateway_name: "trunkline".to_string(),
            outbox: None,
            guard: super::guard::GuardSettings::default(),
            refusal_log_interval: Duration::from_secs(10),
            fleet: Arc::default(),
        }
    }
}

/// Where the gateway listens, for Via/Contact/Record-Route.
#[derive(Clone, Copy, Debug)]
pub struct Listener {
    pub zone: Zone,
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

/// Messages for a call task.
///
/// A message is boxed with its source: each call's queue allocates its slots in blocks of 32,
/// held for the call's life, so a slot's size is paid 32 times by every call (an unboxed
/// message made a block 10 KB, the message alone boxed 3.3 KB, with its source 0.8 KB;
/// docs/benchmarks.md).
#[derive(Debug)]
pub enum CallInput {
    Request(Box<(Request, Source)>),
    Response(Box<(Response, Source)>),
    /// End the call (the call API's `DELETE`, the end of a drain), with the reason its record
    /// and log give.
    HangUp(&'static str),
}

use super::machine::CallConfig;
pub use super::machine::{ALLOW, MediaOffer};

/// The gateway's shared state, as its call tasks see it.
pub struct CallServices {
    pub(super) config: GatewayConfig,
    /// What every call is started with, derived once from `config` (calls take it with the
    /// gateway's own addresses from [`CallServices::call_config`]).
    pub(super) call_config: CallConfig,
    /// [`CallServices::call_config`] as of the last listener added, shared by the calls that
    /// start with it (one copy for all of them, not one per call).
    shared_call_config: arc_swap::ArcSwap<CallConfig>,
    pub(super) transports: OnceLock<Arc<Transports>>,
    listeners: Mutex<Vec<Listener>>,
    calls: Mutex<HashMap<String, mpsc::Sender<CallInput>>>,
    pub(super) metrics: Arc<GatewayMetrics>,
    /// RTP ports of the relays (`--rtp-ports`).
    ports: Arc<PortAllocator>,
    /// Threads the relays run on, apart from signalling; `None`: the caller's runtime.
    media: OnceLock<Arc<MediaThreads>>,
    /// Calls admitted and not yet ended (a call lingering for retransmissions is not counted).
    active: AtomicUsize,
    /// Session records handed to their sinks and not yet written or spooled.
    pub(super) records_in_flight: Arc<AtomicUsize>,
    /// Host names of dialed legs to addresses, with a short cache shared by every call.
    pub(super) resolver: Resolver,
    /// Calls placed through the call API, by id.
    pub(super) placed: super::placed::PlacedCalls,
    /// Each trunk's limits, for new calls and for the legs of bridged transfers.
    pub(super) admission: Arc<super::limits::Admission>,
    /// The registrar addresses of live registrations (`call::registration`).
    pub(super) registrations: super::registration::Registrations,
    /// The carrier hosts whose OPTIONS probes say they are down (`call::health`): out of
    /// rotation until a probe succeeds.
    pub(super) hosts_down: super::health::DownHosts,
}

impl CallServices {
    /// Puts an outbound route's hosts in the order this call tries them
    /// (`config::outbound::rotation`): priority, weight, the hosts that are down left out.
    pub(super) fn rotate(&self, route: &mut crate::config::outbound::OutboundRoute) {
        use rand::Rng;
        let trunk = &route.trunk.name;
        let mut rng = rand::rng();
        let order = crate::config::outbound::rotation(
            &route.trunk.hosts,
            |h| !self.hosts_down.contains(trunk, h),
            || rng.random::<f64>(),
        );
        route.hosts = order.into_iter().cloned().collect();
    }

    /// Where a carrier host given as a DNS name with no port is tried, in order: the targets
    /// of its SRV records `service` ([`super::outbound::srv_targets`]); with none, or when the
    /// query fails, `host`:`port`. Never empty.
    pub(super) async fn srv_targets(
        &self,
        service: &str,
        host: &str,
        port: u16,
    ) -> Vec<(String, u16)> {
        use rand::Rng;
        let records = match self.resolver.srv(service).await {
            Ok(records) => records,
            Err(why) => {
                // Per call (a failure is cached 5 s): debug, not info; the A/AAAA lookup that
                // follows warns if the call cannot go anywhere.
                tracing::debug!(%service, error = %why, "SRV lookup failed: trying {host}:{port}");
                Vec::new()
            }
        };
        let mut rng = rand::rng();
        super::outbound::srv_targets(&records, (host, port), || rng.random::<f64>())
    }

    pub(super) fn new(
        config: GatewayConfig,
        metrics: Arc<GatewayMetrics>,
        ports: Arc<PortAllocator>,
    ) -> Arc<CallServices> {
        let admission = super::limits::Admission::with_fleet(config.fleet.clone());
        let call_config = CallConfig {
            user_agent: config.user_agent.clone(),
            ring_timeout: config.agent_timeout,
            transfer_timeout: config.transfer_timeout,
            media_timeout: config.media_timeout,
            max_hold: config.max_hold,
            max_call_duration: config.max_call_duration,
            min_session_expires: config.min_session_expires,
            public_address: config.public_address,
            agent_networks: config.agent_networks.clone(),
            ..CallConfig::default()
        };
        let services = Arc::new(CallServices {
            config,
            shared_call_config: arc_swap::ArcSwap::from_pointee(call_config.clone()),
            call_config,
            transports: OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
            metrics,
            ports,
            media: OnceLock::new(),
            active: AtomicUsize::new(0),
            records_in_flight: Arc::new(AtomicUsize::new(0)),
            resolver: Resolver::system(),
            hosts_down: Default::default(),
            placed: Default::default(),
            admission,
            registrations: Default::default(),
        });
        services.shared_call_config.store(Arc::new(services.call_config()));
        services
    }

    /// Connects the transports (they need the gateway as their sink, so this comes after).
    pub(super) fn attach(&self, transports: Arc<Transports>) {
        let _ = self.transports.set(transports);
    }

    /// Runs the RTP relays of new calls on these threads (media does not queue behind
    /// signalling, and a relay does not pay the multi-thread scheduler's wake-ups).
    pub(super) fn use_media_threads(&self, threads: Arc<MediaThreads>) {
        let _ = self.media.set(threads);
    }

    /// Spare relay ports for a bridged transfer's leg, bound on `ip`, in the call's relay,
    /// guarded by `guard` from the first packet.
    pub(super) fn add_transfer_ports(
        &self,
        relay: &mut Relay,
        ip: IpAddr,
        guard: SourceGuard,
    ) -> Result<SocketAddr, crate::media::relay::StartError> {
        relay.add_spare_guarded(&self.ports, ip, guard)
    }

    /// Starts a relay for a call, on the media threads when there are some.
    pub(super) fn start_relay(
        &self,
        ip_a: IpAddr,
        ip_b: IpAddr,
        config: RelayConfig,
        guards: [crate::media::relay::SourceGuard; 2],
    ) -> Result<Relay, crate::media::relay::StartError> {
        match self.media.get() {
            Some(threads) => threads.start_relay_guarded(&self.ports, (ip_a, ip_b), config, guards),
            None => Relay::start_guarded(&self.ports, (ip_a, ip_b), config, guards),
        }
    }

    /// Whether `target` (a carrier's SDP address) is this gateway ([`OwnAddresses`]). A relay
    /// sending there would loop into itself.
    pub(super) fn is_own_media_target(&self, target: SocketAddr) -> bool {
        self.own_addresses().contains(target)
    }

    /// This gateway's media targets as the `c=` rules see them: the listeners' IPs and ports,
    /// the public address, the RTP range.
    fn own_addresses(&self) -> OwnAddresses {
        let Ok(listeners) = self.listeners.lock() else { return OwnAddresses::default() };
        self.own_addresses_of(&listeners)
    }

    fn own_addresses_of(&self, listeners: &[Listener]) -> OwnAddresses {
        let mut ips: Vec<IpAddr> = listeners.iter().map(|l| l.addr.ip()).collect();
        ips.extend(self.config.public_address);
        OwnAddresses {
            ips,
            rtp_ports: Some(self.ports.range()),
            sip_ports: listeners.iter().map(|l| l.addr.port()).collect(),
        }
    }

    /// What a new call is started with: [`CallServices::call_config`]'s settings and the
    /// gateway's own addresses as of now (the listeners are bound after start).
    pub(super) fn call_config(&self) -> CallConfig {
        CallConfig { own_addresses: self.own_addresses(), ..self.call_config.clone() }
    }

    /// The same, shared: what inbound and outbound calls start with (kept current by
    /// [`CallServices::add_listener`]).
    pub(super) fn shared_call_config(&self) -> Arc<CallConfig> {
        self.shared_call_config.load_full()
    }

    pub(super) fn add_listener(&self, listener: Listener) {
        if let Ok(mut l) = self.listeners.lock() {
            l.push(listener);
            // Under the lock: two listeners added at once cannot leave the older set.
            let own_addresses = self.own_addresses_of(&l);
            let config = CallConfig { own_addresses, ..self.call_config.clone() };
            self.shared_call_config.store(Arc::new(config));
        }
    }

    /// Calls in progress (admitted and not yet ended).
    pub(super) fn active_calls(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// A call was admitted; its task will call [`CallServices::call_ended`].
    pub(super) fn call_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// What a call on a trunk of `namespace` for `agent` decides its transfers with: the
    /// table it started with.
    pub(super) fn transfer_context(
        &self,
        table: &Arc<crate::config::RoutingTable>,
        namespace: &str,
        agent: &str,
    ) -> super::machine::TransferContext {
        super::machine::TransferContext {
            table: table.clone(),
            namespace: namespace.to_string(),
            agent: agent.to_string(),
            bye_header: format!("{}Transfer-To", self.config.header_prefix),
        }
    }

    /// Asks every call in progress to hang up (BYE on both legs, or the caller's INVITE
    /// answered 487); returns how many calls were asked.
    pub(super) fn hang_up_all(&self, reason: &'static str) -> usize {
        let Ok(calls) = self.calls.lock() else { return 0 };
        let mut asked: Vec<&mpsc::Sender<CallInput>> = Vec::new();
        for tx in calls.values() {
            // A call is in the map once per leg: ask each task once.
            if !asked.iter().any(|a| a.same_channel(tx))
                && tx.try_send(CallInput::HangUp(reason)).is_ok()
            {
                asked.push(tx);
            }
        }
        asked.len()
    }

    /// A call task is done with its call (it may still linger for retransmissions).
    pub(super) fn call_ended(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// The address to put in our Via/Contact toward `zone` over `protocol`.
    pub(super) fn local_address(&self, zone: Zone, protocol: Protocol) -> Option<SocketAddr> {
        let listeners = self.listeners.lock().ok()?;
        let found = listeners
            .iter()
            .find(|l| l.zone == zone && l.protocol == protocol)
            .or_else(|| listeners.iter().find(|l| l.protocol == protocol))
            .or_else(|| listeners.iter().find(|l| l.zone == zone))?;
        let mut addr = found.addr;
        match self.config.public_address {
            Some(ip) if zone == Zone::Carrier => addr.set_ip(ip),
            _ if addr.ip().is_unspecified() => addr.set_ip(if addr.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            }),
            _ => {}
        }
        Some(addr)
    }

    pub(super) fn register_call(&self, call_id: &str, tx: mpsc::Sender<CallInput>) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.insert(call_id.to_string(), tx);
        }
    }

    pub(super) fn unregister_call(&self, call_id: &str) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.remove(call_id);
        }
    }

    pub(super) fn call_for(&self, call_id: &str) -> Option<mpsc::Sender<CallInput>> {
        self.calls.lock().ok()?.get(call_id).cloned()
    }

    /// Sends without waiting (stateless answers, ACKs).
    pub(super) fn send_detached(&self, target: Target, bytes: Vec<u8>) {
        if let Some(t) = self.transports.get() {
            let bytes = match t.try_send_now(&target, bytes) {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    return tracing::debug!(remote = %target.remote, error = %e, "send failed");
                }
                Err(bytes) => bytes,
            };
            let t = t.clone();
            tokio::spawn(async move {
                if let Err(e) = t.send(&target, bytes).await {
                    tracing::debug!(remote = %target.remote, error = %e, "send failed");
                }
            });
        }
    }
}
