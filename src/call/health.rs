//! OPTIONS health of the OutboundTrunks (DESIGN §2, `healthCheck`): every gateway sends an
//! out-of-dialog `OPTIONS sip:HOST:PORT` to each host of each OutboundTrunk of its table every
//! `healthCheck.intervalSeconds`, from its carrier-facing listener, and keeps one
//! [`Reachability`] per host: any final answer below 500 except 408 (a 401, 403, 404 or 405 too:
//! a carrier that refuses OPTIONS is alive) makes it reachable; [`MISSES_TO_UNREACHABLE`]
//! misses in a row (a 5xx, a 408, no answer, a failed send, a name that does not resolve) make
//! it unreachable. A host that is unreachable is out of the calls' rotation ([`DownHosts`],
//! `config::outbound::rotation`) until a probe succeeds. The trunk is reachable when one of its
//! hosts is, unreachable when all are (a trunk with one host: that host's state, as before);
//! with several hosts the detail says how many answer and which are down. On each flip of the
//! trunk's state or detail, and only then: `trunkline_outbound_reachable{trunk}` (1/0), a
//! log line (`info` on recovery, `warn` with the reason when it goes), and the trunk's entry in
//! the gateway's status report (`observe::admin::OutboundHealth`), from which the operator
//! writes the `Reachable` condition.
//!
//! **Schedule.** The first probe of a trunk goes within [`FIRST_PROBE_WITHIN`] of its arrival
//! (start, reload), at a random moment; then one every interval ± [`JITTER`] (uniform), so
//! that N pods and M trunks started together drift apart instead of beating in step. Probes of
//! one trunk never overlap: the next is scheduled from the start of the previous one and waits
//! for it to finish.
//!
//! **One probe** is a non-INVITE client transaction (`sip::transaction::ClientNonInvite`, RFC
//! 3261 §17.1.2): retransmitted on UDP by timer E, ended by timer F (64·T1 = 32 s). A probe
//! also has its own deadline, [`probe_timeout`]: half the interval when that is shorter than
//! timer F. A probe must be over before the next is due (the next comes at least
//! 0.85 × interval later), and a carrier that takes half the interval to answer an OPTIONS is
//! not one to send calls to. With the default 30 s interval a probe waits 15 s (UDP copies at
//! 0, 0.5, 1.5, 3.5, 7.5 and 11.5 s); with the 5 s minimum, 2.5 s (copies at 0, 0.5, 1.5 s).
//! Each probe has a fresh Call-ID, branch and From tag; its Call-ID is registered with the
//! front door (`CallServices::register_call`) for its life, so the answer comes back here as
//! a call's would, and is unregistered when the probe ends, however it ends.
//!
//! **Follows the table.** [`spawn`] watches the snapshots: a trunk added or with probing turned
//! on starts its task; one removed, turned off or whose target (host, port, transport) or
//! interval changed stops its task and drops its metric series and report entry (a changed
//! target starts again from "unknown": what was known was about another address).
//!
//! **Names** are resolved per probe by the calls' caching resolver (`sip::resolve`, in
//! `CallServices`), and a TLS probe checks the carrier's certificate against the host it is
//! sent to. A host given as a name with no port is probed where its calls go: its DNS SRV
//! targets (RFC 3263 §4.2) in the calls' order, the next one when a target misses, and it is
//! reachable when one of them answers ([`probe_once`]); the OPTIONS' Request-URI is the name
//! (`sip:carrier.example`), as the calls'.
//!
//! Called by `runtime::gateway` once the listeners are bound; also [`announce_source_addresses`]
//! in `trunkline run`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Snapshot;
use crate::config::model::{CarrierHost, ObjectName, OutboundTrunkRoute, RoutingTable};
use crate::observe::admin::{GatewayReport, OutboundHealth};
use crate::sip::msg::{self, Method, Request, name};
use crate::sip::transaction::T1_DEFAULT;
use crate::sip::transport::Protocol;

use super::gateway::Gateway;
use super::machine::Ids;
use super::nict;
use super::services::CallServices;

/// The carrier hosts that are down, by trunk: written by the probes, read by every new
/// outbound call ([`CallServices::rotate`]).
#[derive(Debug, Default)]
pub struct DownHosts(std::sync::RwLock<std::collections::HashSet<(ObjectName, CarrierHost)>>);

impl DownHosts {
    pub fn contains(&self, trunk: &ObjectName, host: &CarrierHost) -> bool {
        let key = (trunk.clone(), host.clone());
        self.0.read().map(|set| set.contains(&key)).unwrap_or(false)
    }

    /// Marks a host down (`true`) or back in rotation.
    pub fn set(&self, trunk: &ObjectName, host: &CarrierHost, down: bool) {
        if let Ok(mut set) = self.0.write() {
            let key = (trunk.clone(), host.clone());
            if down {
                set.insert(key);
            } else {
                set.remove(&key);
            }
        }
    }
}

/// Misses in a row that make a trunk unreachable.
pub const MISSES_TO_UNREACHABLE: u32 = 3;
/// The interval between two probes of a trunk varies by this fraction either way.
pub const JITTER: f64 = 0.15;
/// The first probe of a new trunk goes within this long.
pub const FIRST_PROBE_WITHIN: Duration = Duration::from_secs(1);
/// Timer F of the probe's transaction with RFC 3261's T1 (64·T1 = 32 s).
pub const TIMER_F: Duration = T1_DEFAULT.saturating_mul(64);

/// How one probe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A final response with this status.
    Answered(u16),
    /// No final response before the probe's deadline or timer F.
    Timeout,
    /// The request could not be sent (no listener, connection refused, TLS not available...).
    SendError(String),
    /// The carrier's host name gives no address.
    Unresolved(String),
}

impl ProbeOutcome {
    /// Does the carrier live? Any final answer below 500 except 408 says so: a 401, 403, 404 or
    /// 405 to an OPTIONS comes from a live SIP server. 408 and 5xx (a 503 from an overloaded
    /// carrier or a proxy that could not reach it) are misses, as is no answer at all.
    pub fn is_answer(&self) -> bool {
        matches!(self, ProbeOutcome::Answered(status) if (200..500).contains(status) && *status != 408)
    }

    /// For logs and the status report: `200 OK`, `503 Service Unavailable`, `timeout`,
    /// `send error: ...`, `no address: ...`.
    pub fn detail(&self) -> String {
        match self {
            ProbeOutcome::Answered(status) => format!("{status} {}", msg::reason_phrase(*status)),
            ProbeOutcome::Timeout => "timeout".to_string(),
            ProbeOutcome::SendError(e) => format!("send error: {e}"),
            ProbeOutcome::Unresolved(e) => format!("no address: {e}"),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            ProbeOutcome::Answered(status) => Some(*status),
            _ => None,
        }
    }
}

/// What a trunk's probes have shown so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No answer yet and fewer than [`MISSES_TO_UNREACHABLE`] misses since probing started.
    Unknown,
    Reachable,
    Unreachable,
}

/// The reachability rule of one trunk: pure, fed the outcome of each probe.
#[derive(Clone, Debug)]
pub struct Reachability {
    state: State,
    /// Misses in a row since the last answer.
    misses: u32,
}

impl Default for Reachability {
    fn default() -> Self {
        Reachability::new()
    }
}

impl Reachability {
    /// Unknown, no miss yet.
    pub fn new() -> Reachability {
        Reachability { state: State::Unknown, misses: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Counts one probe; the new state when this probe flips it, else `None`. One answer makes
    /// the trunk reachable; [`MISSES_TO_UNREACHABLE`] misses in a row make it unreachable.
    pub fn record(&mut self, outcome: &ProbeOutcome) -> Option<State> {
        let next = if outcome.is_answer() {
            self.misses = 0;
            State::Reachable
        } else {
            self.misses = self.misses.saturating_add(1);
            if self.misses >= MISSES_TO_UNREACHABLE { State::Unreachable } else { self.state }
        };
        if next == self.state {
            return None;
        }
        self.state = next;
        Some(next)
    }
}

/// The wait from one probe's start to the next: `interval` scaled by `1 ± JITTER`, `unit` (in
/// `[0, 1)`) choosing where in that range.
pub fn next_interval(interval: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
}

/// How long one probe may take: timer F, or half the interval when that is shorter (module
/// docs).
pub fn probe_timeout(interval: Duration) -> Duration {
    TIMER_F.min(interval / 2)
}

/// What one host's probes go to. A change of any of it restarts the host's probing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub trunk: ObjectName,
    pub host: String,
    pub port: u16,
    pub transport: Protocol,
    pub interval: Duration,
    /// The trunk's host this target probes (its rotation entry, [`DownHosts`]).
    pub carrier: CarrierHost,
}

impl ProbeTarget {
    /// The targets of a trunk with probing on, one per host; none when its probing is off.
    pub fn of(route: &OutboundTrunkRoute) -> Vec<ProbeTarget> {
        let Some(seconds) = route.health_check_interval_seconds.filter(|s| *s > 0) else {
            return Vec::new();
        };
        route
            .hosts
            .iter()
            .map(|h| ProbeTarget {
                trunk: route.name.clone(),
                host: h.host.clone(),
                port: h.port,
                transport: h.transport,
                interval: Duration::from_secs(u64::from(seconds)),
                carrier: h.clone(),
            })
            .collect()
    }

    /// `sip:HOST:PORT`, an IPv6 host in brackets, `;transport=tcp|tls` unless UDP; `sip:HOST`
    /// for a host looked up by SRV (as the calls' Request-URI).
    pub fn uri(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        };
        if self.carrier.srv {
            return format!("sip:{host}{}", transport_param(self.transport));
        }
        format!("sip:{host}:{}{}", self.port, transport_param(self.transport))
    }
}

fn transport_param(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "",
        Protocol::Tcp => ";transport=tcp",
        Protocol::Tls => ";transport=tls",
    }
}

/// The identifiers of one probe: fresh for every probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeIds {
    pub call_id: String,
    pub branch: String,
    pub tag: String,
}

impl ProbeIds {
    pub fn new(ids: &mut Ids) -> ProbeIds {
        ProbeIds {
            call_id: format!("{}@trunkline", ids.token(20)),
            branch: ids.branch(),
            tag: ids.token(10),
        }
    }
}

/// The OPTIONS of one probe (RFC 3261 §11.1), sent from `local` (our carrier-facing address).
pub fn options_request(
    target: &ProbeTarget,
    local: SocketAddr,
    ids: &ProbeIds,
    user_agent: &str,
) -> Request {
    let uri = target.uri();
    let protocol = target.transport;
    let mut r = Request::new(Method::Options, uri.clone());
    r.headers.push(
        name::VIA,
        format!("SIP/2.0/{} {local};branch={};rport", protocol.as_str(), ids.branch),
    );
    r.headers.push(name::MAX_FORWARDS, "70");
    r.headers.push(name::FROM, format!("<sip:trunkline@{local}>;tag={}", ids.tag));
    r.headers.push(name::TO, format!("<{uri}>"));
    r.headers.push(name::CALL_ID, ids.call_id.as_str());
    r.headers.push(name::CSEQ, "1 OPTIONS");
    r.headers.push(name::CONTACT, format!("<sip:trunkline@{local}{}>", transport_param(protocol)));
    r.headers.push("Accept", "application/sdp");
    r.headers.push(name::USER_AGENT, user_agent);
    r
}

/// Sends one OPTIONS to `target` and waits for its final answer, at most `timeout`.
///
/// A host looked up by SRV (a name with no port) is probed where its calls go: its SRV
/// targets in the calls' order (RFC 2782), or the name at its default port when it has none.
/// The first target that answers makes the host reachable; a target that misses passes the
/// probe on to the next, each with an equal share of the time left, at most
/// [`MAX_SRV_PROBES`] of them. So the host is down only when no target answers: the calls'
/// failover moves between its targets (`call::machine`), and rotation skips the name only
/// when none of them would take a call.
pub(super) async fn probe_once(
    services: &CallServices,
    target: &ProbeTarget,
    timeout: Duration,
) -> ProbeOutcome {
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(service) = target.carrier.srv_name() else {
        return probe_at(services, target, (&target.host, target.port), deadline).await;
    };
    let lookup = services.srv_targets(&service, &target.host, target.port);
    let Ok(targets) = tokio::time::timeout_at(deadline, lookup).await else {
        return ProbeOutcome::Timeout;
    };
    let targets: Vec<_> = targets.into_iter().take(MAX_SRV_PROBES).collect();
    let mut outcome = ProbeOutcome::Timeout;
    for (i, (host, port)) in targets.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = left / u32::try_from(targets.len() - i).unwrap_or(1);
        let at = tokio::time::Instant::now() + share;
        outcome = probe_at(services, target, (host, *port), at).await;
        if outcome.is_answer() {
            break;
        }
    }
    outcome
}

/// At most this many SRV targets of one host are probed in one probe.
pub const MAX_SRV_PROBES: usize = 3;

/// One OPTIONS of `target`'s probe sent to `host`:`port`, its final answer awaited until
/// `deadline`: a non-INVITE exchange (`call::nict`), as a REGISTER is.
async fn probe_at(
    services: &CallServices,
    target: &ProbeTarget,
    (host, port): (&str, u16),
    deadline: tokio::time::Instant,
) -> ProbeOutcome {
    let peer = nict::Peer { host: host.to_string(), port, transport: target.transport, srv: None };
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let ids = ProbeIds::new(&mut Ids::random());
    let user_agent = services.config.user_agent.as_str();
    let build = |local| options_request(target, local, &ids, user_agent);
    match nict::exchange(services, &peer, timeout, build).await {
        Ok((response, _)) => ProbeOutcome::Answered(response.status),
        Err(nict::Failure::Timeout) => ProbeOutcome::Timeout,
        Err(nict::Failure::SendError(e)) => ProbeOutcome::SendError(e),
        Err(nict::Failure::Unresolved(e)) => ProbeOutcome::Unresolved(e),
    }
}

/// Where a trunk's state goes on each flip of one of its hosts.
struct Publish {
    services: Arc<CallServices>,
    report: Arc<GatewayReport>,
    /// Each probed trunk's hosts, in the trunk's order, and what was last published for it.
    trunks: std::sync::Mutex<HashMap<ObjectName, TrunkHosts>>,
}

/// One trunk's hosts as its probes left them.
#[derive(Debug, Default)]
struct TrunkHosts {
    hosts: Vec<HostState>,
    /// `reachable` and `detail` as last published; `None` before the first flip.
    published: Option<(Option<bool>, String)>,
}

#[derive(Debug)]
struct HostState {
    carrier: CarrierHost,
    state: State,
    detail: String,
}

impl TrunkHosts {
    /// The trunk's `Reachable`: one host answering makes the trunk reachable (calls go there);
    /// every host down makes it unreachable; else not decided yet. With one host, the detail
    /// is its last probe's (`200 OK`, `timeout`); with several, how many answer and which are
    /// down, with why.
    fn summary(&self, last: &ProbeOutcome) -> (Option<bool>, String) {
        let up = self.hosts.iter().filter(|h| h.state == State::Reachable).count();
        let all_down = self.hosts.iter().all(|h| h.state == State::Unreachable);
        let reachable = if up > 0 {
            Some(true)
        } else if all_down && !self.hosts.is_empty() {
            Some(false)
        } else {
            None
        };
        if self.hosts.len() <= 1 {
            return (reachable, last.detail());
        }
        let mut detail = format!("{up} of {} hosts answer OPTIONS", self.hosts.len());
        let down: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.state == State::Unreachable)
            .map(|h| format!("{} ({})", h.carrier.describe(), h.detail))
            .collect();
        if !down.is_empty() {
            detail.push_str("; down: ");
            detail.push_str(&down.join(", "));
        }
        (reachable, detail)
    }
}

impl Publish {
    fn trunks(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectName, TrunkHosts>> {
        self.trunks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn started(&self, target: &ProbeTarget) {
        let mut trunks = self.trunks();
        let entry = trunks.entry(target.trunk.clone()).or_default();
        let first = entry.hosts.is_empty();
        let state = State::Unknown;
        entry.hosts.push(HostState {
            carrier: target.carrier.clone(),
            state,
            detail: String::new(),
        });
        if first {
            let health =
                OutboundHealth { reachable: None, since: unix_now(), ..OutboundHealth::default() };
            self.report.set_outbound(&target.trunk.to_string(), health);
        }
    }

    fn flipped(&self, target: &ProbeTarget, state: State, outcome: &ProbeOutcome, was: State) {
        let trunk = target.trunk.to_string();
        let detail = outcome.detail();
        self.services.hosts_down.set(&target.trunk, &target.carrier, state == State::Unreachable);
        let uri = target.uri();
        // A trunk of one host is named alone, as before hosts lists; a host of several is named.
        let several = self.trunks().get(&target.trunk).is_some_and(|t| t.hosts.len() > 1);
        let (what, out) = if several {
            (format!("OutboundTrunk {trunk}: {uri}"), ", out of rotation")
        } else {
            (format!("OutboundTrunk {trunk}"), "")
        };
        if state == State::Reachable {
            let again = if was == State::Unreachable { " again" } else { "" };
            tracing::info!(
                %trunk, target = %uri, answer = %detail,
                "{what} is reachable{again}: the carrier answers OPTIONS ({detail})"
            );
        } else {
            tracing::warn!(
                %trunk, target = %uri, reason = %detail,
                "{what} is unreachable{out}: {MISSES_TO_UNREACHABLE} OPTIONS probes in a row \
                 failed, the last with {detail}"
            );
        }
        let mut trunks = self.trunks();
        let Some(entry) = trunks.get_mut(&target.trunk) else { return };
        if let Some(h) = entry.hosts.iter_mut().find(|h| h.carrier == target.carrier) {
            h.state = state;
            h.detail = detail;
        }
        let summary = entry.summary(outcome);
        if entry.published.as_ref() == Some(&summary) {
            return;
        }
        let (reachable, detail) = summary.clone();
        entry.published = Some(summary);
        if let Some(reachable) = reachable {
            self.services.metrics.set_outbound_reachable(&trunk, reachable);
        }
        let health =
            OutboundHealth { reachable, since: unix_now(), detail, last_status: outcome.status() };
        self.report.set_outbound(&trunk, health);
    }

    fn stopped(&self, target: &ProbeTarget) {
        self.services.hosts_down.set(&target.trunk, &target.carrier, false);
        let mut trunks = self.trunks();
        let Some(entry) = trunks.get_mut(&target.trunk) else { return };
        entry.hosts.retain(|h| h.carrier != target.carrier);
        if entry.hosts.is_empty() {
            trunks.remove(&target.trunk);
            let trunk = target.trunk.to_string();
            self.services.metrics.forget_outbound(&trunk);
            self.report.remove_outbound(&trunk);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Probes one trunk until `stop`.
async fn probe_trunk(publish: Arc<Publish>, target: ProbeTarget, stop: CancellationToken) {
    publish.started(&target);
    let first = FIRST_PROBE_WITHIN.mul_f64(rand::rng().random::<f64>());
    tracing::debug!(
        trunk = %target.trunk, target = %target.uri(), interval = ?target.interval,
        "OPTIONS probes start"
    );
    tokio::select! {
        () = tokio::time::sleep(first) => {}
        () = stop.cancelled() => return,
    }
    let timeout = probe_timeout(target.interval);
    let mut reachability = Reachability::new();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            outcome = probe_once(&publish.services, &target, timeout) => outcome,
            () = stop.cancelled() => return,
        };
        let was = reachability.state();
        match reachability.record(&outcome) {
            Some(state) => publish.flipped(&target, state, &outcome, was),
            None => tracing::debug!(
                trunk = %target.trunk, outcome = %outcome.detail(), state = ?was, "OPTIONS probe"
            ),
        }
        let next = started + next_interval(target.interval, rand::rng().random::<f64>());
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One trunk's probing task.
struct Running {
    target: ProbeTarget,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts the prober: it probes every OutboundTrunk of the table `snapshots` holds, follows its
/// changes, and stops (every trunk's series and report entry dropped) when `stop` is cancelled.
pub fn spawn(
    gateway: &Gateway,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    report: Arc<GatewayReport>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let publish = Arc::new(Publish {
        services: gateway.services().clone(),
        report,
        trunks: Default::default(),
    });
    tokio::spawn(async move {
        let mut running: HashMap<(ObjectName, CarrierHost), Running> = HashMap::new();
        loop {
            let table = snapshots.borrow_and_update().table.clone();
            follow(&publish, &mut running, &table, &stop).await;
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // The source is gone: the gateway keeps its last table, and so do we.
                        stop.cancelled().await;
                        break;
                    }
                }
                () = stop.cancelled() => break,
            }
        }
        for (_, r) in running.drain() {
            end(&publish, r).await;
        }
    })
}

/// Brings the running tasks in line with `table`.
async fn follow(
    publish: &Arc<Publish>,
    running: &mut HashMap<(ObjectName, CarrierHost), Running>,
    table: &RoutingTable,
    stop: &CancellationToken,
) {
    let wanted: HashMap<(ObjectName, CarrierHost), ProbeTarget> = table
        .outbound
        .values()
        .flat_map(|route| ProbeTarget::of(route))
        .map(|t| ((t.trunk.clone(), t.carrier.clone()), t))
        .collect();
    let stale: Vec<(ObjectName, CarrierHost)> = running
        .iter()
        .filter(|(name, r)| wanted.get(*name) != Some(&r.target))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(r) = running.remove(&name) {
            end(publish, r).await;
        }
    }
    for (name, target) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let token = stop.child_token();
        let task = tokio::spawn(probe_trunk(publish.clone(), target.clone(), token.clone()));
        running.insert(name, Running { target, stop: token, task });
    }
}

/// Stops one trunk's task, then drops what it published (after the task is over, so that it
/// cannot publish again behind us).
async fn end(publish: &Publish, running: Running) {
    running.stop.cancel();
    let _ = running.task.await;
    publish.stopped(&running.target);
}

/// `trunkline run`: logs, for each OutboundTrunk of `table`, the address its calls and probes
/// leave from, for the carrier's allowlist: `public_address` when there is one (the address
/// carriers see through NAT), else the carrier-facing listener's IP of the trunk's transport,
/// else (a wildcard listener) the address this machine would use toward the carrier.
pub async fn announce_source_addresses(
    table: &RoutingTable,
    public_address: Option<IpAddr>,
    carrier_listeners: &[(Protocol, SocketAddr)],
) {
    // The calls' resolver (A/AAAA within its bound); no gateway exists yet to share one with.
    let resolver = crate::sip::resolve::Resolver::system();
    for route in table.outbound.values() {
        let listener = carrier_listeners
            .iter()
            .find(|(p, _)| *p == route.primary().transport)
            .or_else(|| carrier_listeners.first())
            .map(|(_, a)| *a);
        let source = match (public_address, listener) {
            (Some(ip), _) => Ok(ip),
            (None, Some(addr)) if !addr.ip().is_unspecified() => Ok(addr.ip()),
            _ => {
                // A host looked up by SRV: toward its first target (lowest priority), else the
                // name itself, as the calls go.
                let primary = route.primary();
                let mut toward = (primary.host.clone(), primary.port);
                if let Some(service) = primary.srv_name() {
                    let records = resolver.srv(&service).await.unwrap_or_default();
                    if let Some(r) = records.iter().min_by_key(|r| r.priority) {
                        toward = (r.target.clone(), r.port);
                    }
                }
                route_address(&resolver, &toward.0, toward.1).await
            }
        };
        match source {
            Ok(ip) => tracing::info!(
                trunk = %route.name, source = %ip,
                "OutboundTrunk {}: calls to {} leave from {ip}: the carrier's allowlist needs it",
                route.name, route.primary().host
            ),
            Err(e) => tracing::info!(
                trunk = %route.name,
                "OutboundTrunk {}: calls to {} leave from this machine's address toward it \
                 ({e}; --public-address names it)",
                route.name, route.primary().host
            ),
        }
    }
}

/// The local address the kernel picks toward `host` (a UDP socket connected to it: nothing is
/// sent).
async fn route_address(
    resolver: &crate::sip::resolve::Resolver,
    host: &str,
    port: u16,
) -> Result<IpAddr, String> {
    let remote = resolver.lookup(host, port).await?;
    let any: SocketAddr = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = tokio::net::UdpSocket::bind(any).await.map_err(|e| e.to_string())?;
    socket.connect(remote).await.map_err(|e| format!("no route to {remote}: {e}"))?;
    socket.local_addr().map(|a| a.ip()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn misses(r: &mut Reachability, outcome: &ProbeOutcome, n: u32) -> Vec<Option<State>> {
        (0..n).map(|_| r.record(outcome)).collect()
    }

    #[test]
    fn three_misses_in_a_row_make_a_trunk_unreachable_and_one_answer_brings_it_back() {
        let mut r = Reachability::new();
        assert_eq!(r.state(), State::Unknown);
        assert_eq!(misses(&mut r, &ProbeOutcome::Timeout, 2), [None, None]);
        assert_eq!(r.state(), State::Unknown, "two misses decide nothing yet");
        assert_eq!(r.record(&ProbeOutcome::Answered(503)), Some(State::Unreachable));
        assert_eq!(r.record(&ProbeOutcome::Timeout), None, "no flip while it stays down");
        assert_eq!(r.record(&ProbeOutcome::Answered(200)), Some(State::Reachable));
        assert_eq!(r.record(&ProbeOutcome::Answered(200)), None, "no flip on every answer");
    }

    #[test]
    fn misses_must_be_in_a_row() {
        let mut r = Reachability::new();
        assert_eq!(r.record(&ProbeOutcome::Answered(200)), Some(State::Reachable));
        for _ in 0..3 {
            assert_eq!(misses(&mut r, &ProbeOutcome::Timeout, 2), [None, None]);
            assert_eq!(r.record(&ProbeOutcome::Answered(404)), None);
        }
        assert_eq!(r.state(), State::Reachable);
        let send_error = ProbeOutcome::SendError("connection refused".into());
        assert_eq!(misses(&mut r, &send_error, 3), [None, None, Some(State::Unreachable)]);
    }

    #[test]
    fn answers_below_500_but_408_are_reachable_and_the_rest_are_misses() {
        for status in [200, 202, 302, 401, 403, 404, 405, 407, 420, 480, 486, 499] {
            assert!(ProbeOutcome::Answered(status).is_answer(), "{status}");
        }
        for status in [408, 500, 502, 503, 504, 600, 603, 100, 180] {
            assert!(!ProbeOutcome::Answered(status).is_answer(), "{status}");
        }
        assert!(!ProbeOutcome::Timeout.is_answer());
        assert!(!ProbeOutcome::Unresolved("x".into()).is_answer());
        let mut r = Reachability::new();
        let flips = misses(&mut r, &ProbeOutcome::Answered(408), 3);
        assert_eq!(flips, [None, None, Some(State::Unreachable)], "408 is a miss");
        assert_eq!(r.record(&ProbeOutcome::Answered(403)), Some(State::Reachable));
    }

    #[test]
    fn details_name_the_answer_or_what_failed() {
        assert_eq!(ProbeOutcome::Answered(503).detail(), "503 Service Unavailable");
        assert_eq!(ProbeOutcome::Answered(200).detail(), "200 OK");
        assert_eq!(ProbeOutcome::Timeout.detail(), "timeout");
        assert_eq!(
            ProbeOutcome::SendError("connection refused".into()).detail(),
            "send error: connection refused"
        );
    }

    #[test]
    fn intervals_vary_by_fifteen_percent_either_way() {
        let thirty = Duration::from_secs(30);
        assert_eq!(next_interval(thirty, 0.0), Duration::from_millis(25_500));
        assert_eq!(next_interval(thirty, 0.5), thirty);
        assert_eq!(next_interval(thirty, 1.0), Duration::from_millis(34_500));
        assert_eq!(next_interval(thirty, 7.0), Duration::from_millis(34_500), "clamped");
    }

    #[test]
    fn a_probe_ends_before_the_next_is_due() {
        assert_eq!(TIMER_F, Duration::from_secs(32));
        assert_eq!(probe_timeout(Duration::from_secs(5)), Duration::from_millis(2500));
        assert_eq!(probe_timeout(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(probe_timeout(Duration::from_secs(3600)), TIMER_F);
        for seconds in [5, 30, 64, 3600] {
            let interval = Duration::from_secs(seconds);
            assert!(probe_timeout(interval) < next_interval(interval, 0.0));
        }
    }

    fn target(host: &str, transport: Protocol) -> ProbeTarget {
        ProbeTarget {
            trunk: ObjectName::new("voice", "carrier-out"),
            host: host.into(),
            port: 5060,
            transport,
            interval: Duration::from_secs(30),
            carrier: CarrierHost::new(host, 5060, transport),
        }
    }

    #[test]
    fn the_options_request_names_the_carrier_and_comes_from_our_carrier_side() {
        let ids = ProbeIds {
            call_id: "c1@trunkline".into(),
            branch: "z9hG4bKb1".into(),
            tag: "t1".into(),
        };
        let local: SocketAddr = "203.0.113.10:5060".parse().unwrap();
        let r = options_request(&target("sip.carrier.example", Protocol::Udp), local, &ids, "ua/1");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert_eq!(
            text,
            "OPTIONS sip:sip.carrier.example:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKb1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:trunkline@203.0.113.10:5060>;tag=t1\r\n\
             To: <sip:sip.carrier.example:5060>\r\n\
             Call-ID: c1@trunkline\r\n\
             CSeq: 1 OPTIONS\r\n\
             Contact: <sip:trunkline@203.0.113.10:5060>\r\n\
             Accept: application/sdp\r\n\
             User-Agent: ua/1\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // It parses as the carrier will parse it.
        assert!(matches!(msg::parse(text.as_bytes()), Ok(msg::Message::Request(_))));
        let tls = target("2001:db8::5", Protocol::Tls);
        assert_eq!(tls.uri(), "sip:[2001:db8::5]:5060;transport=tls");
    }

    fn hosts(states: &[(&str, State, &str)]) -> TrunkHosts {
        let hosts = states
            .iter()
            .map(|(h, state, detail)| HostState {
                carrier: CarrierHost::new(*h, 5060, Protocol::Udp),
                state: *state,
                detail: detail.to_string(),
            })
            .collect();
        TrunkHosts { hosts, published: None }
    }

    #[test]
    fn a_trunk_is_reachable_while_one_host_answers_and_says_which_are_down() {
        let last = ProbeOutcome::Answered(503);
        let one = hosts(&[("192.0.2.1", State::Unreachable, "503 Service Unavailable")]);
        assert_eq!(one.summary(&last), (Some(false), "503 Service Unavailable".into()));
        let two = hosts(&[
            ("192.0.2.1", State::Unreachable, "timeout"),
            ("192.0.2.2", State::Reachable, "200 OK"),
        ]);
        assert_eq!(
            two.summary(&last),
            (
                Some(true),
                "1 of 2 hosts answer OPTIONS; down: 192.0.2.1:5060 over UDP (timeout)".into()
            )
        );
        let down = hosts(&[
            ("192.0.2.1", State::Unreachable, "timeout"),
            ("192.0.2.2", State::Unreachable, "503 Service Unavailable"),
        ]);
        assert_eq!(down.summary(&last).0, Some(false));
        let undecided = hosts(&[
            ("192.0.2.1", State::Unreachable, "timeout"),
            ("192.0.2.2", State::Unknown, ""),
        ]);
        assert_eq!(undecided.summary(&last).0, None);
    }

    #[test]
    fn probing_follows_the_trunks_setting() {
        let route = |interval: Option<u32>| OutboundTrunkRoute {
            name: ObjectName::new("voice", "out"),
            generation: None,
            hosts: vec![CarrierHost::new("192.0.2.7", 5070, Protocol::Tcp)],
            credentials: None,
            caller_id: crate::config::number::E164::parse_canonical("+14155550100").unwrap(),
            allowed_caller_ids: Default::default(),
            leading_plus: true,
            health_check_interval_seconds: interval,
            registration_expires_seconds: None,
            limits: Default::default(),
            agents: Default::default(),
            codecs: Vec::new(),
            media: Default::default(),
        };
        assert_eq!(ProbeTarget::of(&route(None)), []);
        let t = ProbeTarget::of(&route(Some(5))).remove(0);
        assert_eq!(t.interval, Duration::from_secs(5));
        assert_eq!(t.uri(), "sip:192.0.2.7:5070;transport=tcp");
    }

    #[test]
    fn a_host_looked_up_by_srv_is_probed_with_its_name_and_no_port() {
        let mut t = target("carrier.example", Protocol::Tcp);
        t.carrier.srv = true;
        assert_eq!(t.uri(), "sip:carrier.example;transport=tcp");
        assert_eq!(t.carrier.srv_name().as_deref(), Some("_sip._tcp.carrier.example"));
    }
}
