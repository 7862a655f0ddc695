//! The gateway's Prometheus metrics: one [`prometheus::Registry`] owned by [`GatewayMetrics`]
//! (no global registry), with one typed method per event so call sites cannot misspell a metric or
//! invent a label.
//!
//! Takes: events from the SIP transports (`sip_message`), the inbound flow (`auth_failure`,
//! `invite_refused`, `setup_latency`), the B2BUA (`call_started`, `call_finished`) and the config
//! loop (`set_config`, `config_reload`), the webhook's spool (`records_spool`). Gives: the text exposition that `observe::admin` serves
//! at `GET /metrics` ([`GatewayMetrics::render`]). `trunkline run` builds one and shares it as an
//! `Arc<GatewayMetrics>`.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `trunkline_calls_total` | counter | `trunk`, `direction`, `outcome` |
//! | `trunkline_active_calls` | gauge | `trunk`, `direction` |
//! | `trunkline_auth_failures_total` | counter | `reason` |
//! | `trunkline_inbound_refusals_total` | counter | `status`, `rule` |
//! | `trunkline_outbound_refusals_total` | counter | `status`, `rule` |
//! | `trunkline_guard_dropped_total` | counter | `reason` (`call::guard::Dropped`: `source_invite_rate`, `source_options_rate`, `source_request_rate`, `global_rate`, `locked_out`, `username_throttled`) |
//! | `trunkline_guard_lockouts_total` | counter | |
//! | `trunkline_dialog_refusals_total` | counter | `reason` (`call::machine::Mismatch`: `no_dialog`, `wrong_zone`, `weaker_transport`, `wrong_source`, `out_of_order`) |
//! | `trunkline_guard_sources` | gauge | |
//! | `trunkline_peer_auth_failures_total` | counter | `trunk`, `peer` (`carrier`, `agent`, `transfer`) |
//! | `trunkline_transfers_total` | counter | `destination`, `mode`, `outcome` |
//! | `trunkline_session_records_total` | counter | `sink` (`file`, `webhook`), `result` (`written`, `failed`; `spooled`, `refused`, `delivered`, `failed`) |
//! | `trunkline_session_records_spool_records`, `trunkline_session_records_spool_bytes` | gauge | |
//! | `trunkline_session_records_spool_max_bytes` | gauge | |
//! | `trunkline_call_setup_seconds` | histogram | `trunk` |
//! | `trunkline_sip_messages_total` | counter | `transport`, `kind` |
//! | `trunkline_sip_queue_drops_total` | counter | `queue` (`front_door`: a new request its front-door worker had no room for; `call`: a message its call's queue had no room for) |
//! | `trunkline_tls_client_failures_total` | counter | `reason` |
//! | `trunkline_sip_connections_refused_total`, `trunkline_sip_connections_closed_total` | counter | `transport`, `reason` |
//! | `trunkline_rtp_packets_total`, `trunkline_rtp_bytes_total`, `trunkline_rtp_lost_packets_total` | counter | `trunk`, `leg` |
//! | `trunkline_rtp_jitter_seconds` | histogram | `trunk`, `leg` |
//! | `trunkline_rtp_rejected_packets_total` | counter | `trunk`, `leg` (`carrier`, `agent`, `transfer`), `reason` (`not_allowed`, `latched`) |
//! | `trunkline_rtp_port_pairs` | gauge | `state` (`free`, `used`) |
//! | `trunkline_rtp_port_exhaustions_total` | counter | |
//! | `trunkline_config_info` | gauge (always 1) | `hash` |
//! | `trunkline_config_trunks`, `trunkline_config_numbers` | gauge | |
//! | `trunkline_config_reloads_total` | counter | `result` |
//! | `trunkline_config_applied_timestamp_seconds` | gauge | |
//! | `trunkline_outbound_reachable` | gauge (1/0) | `trunk` |
//! | `trunkline_outbound_registered` | gauge (1/0) | `trunk` |
//! | `trunkline_build_info` | gauge (always 1) | `version` |
//! | `trunkline_fleet_members`, `trunkline_fleet_member_index` | gauge | |
//!
//! [`GatewayMetrics::metric_names`] lists every series name the gateway can export (a vec with no
//! child yet included), so that alert rules and dashboards can be checked against it in tests.
//!
//! **Which config, and since when.** DESIGN §5's "config generation" is three series:
//! `trunkline_config_info{hash}` names the table in use (the same hash on every gateway that
//! runs the same specs, so a dashboard can count gateways per config and an alert can see
//! skew); `trunkline_config_reloads_total{result}` counts the tables swapped in after the first
//! (and the edits refused); `trunkline_config_applied_timestamp_seconds` says when the table in
//! use was swapped in (the Unix time, as Prometheus's own
//! `prometheus_config_last_reload_success_timestamp_seconds`), which a dashboard shows as the
//! age of each gateway's config. There is no per-process generation number: it would be
//! `1 + reloads_total{result="ok"}`, and restarts reset it, so two gateways' numbers could not be
//! compared; the hash can.
//!
//! **Label cardinality.** Every label value is either a fixed string from an enum in this module
//! or bounded by the configuration:
//! - `trunk` is the `namespace/name` of an *accepted* trunk. Callers pass [`UNKNOWN_TRUNK`]
//!   (`"unknown"`) when no trunk was identified: never a source address, a username, a number or
//!   anything else taken from the network. Series of trunks removed from the config stay until
//!   the process restarts (bounded by the trunks it has ever served), except
//!   `trunkline_outbound_reachable`, whose series goes with its trunk (a stale 0 would page
//!   someone about a carrier no longer used).
//! - `leg` is `carrier` or `agent`, and for `trunkline_rtp_rejected_packets_total` also
//!   `transfer` (a bridged transfer's relay ports, before and after they take the agent's
//!   place; `trunk` is still the call's); `state` is `free` or `used`; `version` is the
//!   crate's.
//! - `reason` of `trunkline_rtp_rejected_packets_total` is `not_allowed` (RTP/RTCP from an
//!   address that is none of the leg's: its SDP's, its signalling peer's, the trunk's media
//!   allowlist) or `latched` (the leg is latched to another source); never the source itself.
//! - `transport` is `udp`, `tcp` or `tls`; `kind` is `request`, `response` or `malformed`; `rule`
//!   is a fixed rule name of the refusing step; `status` a SIP status code.
//! - `reason` of `trunkline_tls_client_failures_total` is a fixed name of what failed in a TLS
//!   handshake we started (`sip::tls_client::TlsFailure`: `unknown_ca`, `name_mismatch`,
//!   `expired`, `bad_certificate`, `timeout`, `handshake`); never the peer's name or address.
//! - `reason` of the stream connection counters is a fixed name from `sip::transport`
//!   (`Refusal`: `global_limit`, `address_limit`; `CloseReason`: `peer_closed`,
//!   `idle_timeout`, `message_timeout`, `handshake_timeout`, ...); `transport` is `tcp` or `tls`.
//! - No source IP, username, Call-ID or credential ever becomes a label (unbounded, and private).

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, register_gauge_with_registry, register_histogram_vec_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
};

/// The `trunk` label value to use when no trunk was identified (before identification, or when
/// identification failed).
pub const UNKNOWN_TRUNK: &str = "unknown";

/// Upper bounds of `trunkline_call_setup_seconds`: from a fast local answer (5 ms) through
/// typical agent setup (100 ms–2 s) to a long ring (30 s; anything longer lands in `+Inf`).
pub const SETUP_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

/// What a collector exports under its name: series of that name, or a histogram's
/// `_bucket`, `_sum` and `_count` series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Plain,
    Histogram,
}

/// The name of every series `collectors` can export, whether or not a vec has a child yet. Used
/// by the gateway's and the operator's metrics for their `metric_names()`.
pub fn series_names(collectors: &[(&dyn Collector, Shape)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for &(collector, shape) in collectors {
        for desc in collector.desc() {
            match shape {
                Shape::Plain => {
                    names.insert(desc.fq_name.clone());
                }
                Shape::Histogram => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{}{suffix}", desc.fq_name));
                    }
                }
            }
        }
    }
    names
}

/// `trunkline_build_info{version="<crate version>"} 1`: which release a process runs (for
/// version-skew alerts and dashboards). Both the gateway and the operator export it.
pub fn build_info(registry: &Registry) -> prometheus::Result<IntGauge> {
    let gauge = register_int_gauge_with_registry!(
        Opts::new("trunkline_build_info", "The trunkline release this process runs (value 1).")
            .const_label("version", env!("CARGO_PKG_VERSION")),
        registry,
    )?;
    gauge.set(1);
    Ok(gauge)
}

/// The RTP port pool's metrics, kept current by `media::ports::PortAllocator`: pairs free and in
/// use (`trunkline_rtp_port_pairs{state}`) and calls refused because none was free
/// (`trunkline_rtp_port_exhaustions_total`).
#[derive(Clone, Debug)]
pub struct PortPoolMetrics {
    pub free: IntGauge,
    pub used: IntGauge,
    pub exhaustions: IntCounter,
}

impl PortPoolMetrics {
    /// Handles in a registry nobody scrapes: for a pool in tests and benchmarks.
    pub fn unregistered() -> PortPoolMetrics {
        let (pairs, exhaustions) = port_pool_collectors(&Registry::new())
            .expect("static metric definitions are valid and distinct in a fresh registry");
        PortPoolMetrics::of(&pairs, exhaustions)
    }

    fn of(pairs: &IntGaugeVec, exhaustions: IntCounter) -> PortPoolMetrics {
        PortPoolMetrics {
            free: pairs.with_label_values(&["free"]),
            used: pairs.with_label_values(&["used"]),
            exhaustions,
        }
    }
}

fn port_pool_collectors(registry: &Registry) -> prometheus::Result<(IntGaugeVec, IntCounter)> {
    let pairs = register_int_gauge_vec_with_registry!(
        "trunkline_rtp_port_pairs",
        "RTP/RTCP port pairs of the --rtp-ports range, by state (free, used).",
        &["state"],
        registry,
    )?;
    let exhaustions = register_int_counter_with_registry!(
        "trunkline_rtp_port_exhaustions_total",
        "Calls refused (503) because no RTP port pair was free.",
        registry,
    )?;
    Ok((pairs, exhaustions))
}

/// The handles one side of a call's relay counts refused RTP/RTCP packets on
/// (`trunkline_rtp_rejected_packets_total{trunk,leg,reason}`), resolved once per call so that
/// the relay's hot path only adds to an atomic.
#[derive(Clone, Debug)]
pub struct RtpRejected {
    /// From none of the leg's own addresses.
    pub not_allowed: IntCounter,
    /// The leg is latched to another source.
    pub latched: IntCounter,
    /// SRTP/SRTCP that failed authentication or was a replay (an SRTP leg only).
    pub unauthenticated: IntCounter,
}

impl RtpRejected {
    /// Handles in a registry nobody scrapes: for relays in tests and benchmarks.
    pub fn unregistered() -> RtpRejected {
        let vec = rtp_rejected_collector(&Registry::new())
            .expect("a static metric definition is valid in a fresh registry");
        RtpRejected::of(&vec, UNKNOWN_TRUNK, "carrier")
    }

    fn of(vec: &IntCounterVec, trunk: &str, leg: &str) -> RtpRejected {
        RtpRejected {
            not_allowed: vec.with_label_values(&[trunk, leg, "not_allowed"]),
            latched: vec.with_label_values(&[trunk, leg, "latched"]),
            unauthenticated: vec.with_label_values(&[trunk, leg, "unauthenticated"]),
        }
    }
}

fn rtp_rejected_collector(registry: &Registry) -> prometheus::Result<IntCounterVec> {
    register_int_counter_vec_with_registry!(
        "trunkline_rtp_rejected_packets_total",
        "RTP/RTCP packets the relay dropped for their source, by trunk, leg (carrier, agent or transfer) and reason (not_allowed: none of the leg's addresses; latched: the leg is latched to another source; unauthenticated: SRTP that failed authentication or was replayed).",
        &["trunk", "leg", "reason"],
        registry,
    )
}

/// Which side started the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Carrier → agent runtime.
    Inbound,
    /// Agent runtime → carrier.
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// How a call ended, from the B2BUA's point of view. One value per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A 2xx was relayed and the call was bridged (however it ended later).
    Answered,
    /// The called side answered 486/600 Busy.
    Busy,
    /// Nobody answered: 408/480, or the ring timed out.
    NoAnswer,
    /// The caller gave up (CANCEL) before an answer.
    Cancelled,
    /// The gateway refused it by policy: unknown number, no common codec, capacity, transport.
    Refused,
    /// The call could not be set up: agent runtime or carrier error, unreachable, or a 5xx.
    Failed,
    /// Authentication failed (403 after a challenge).
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Answered,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Cancelled,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Why an inbound request failed authentication. Fixed label values: the source address and the
/// username involved go to the log (rate-limited) and never to a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// The digest response did not match the trunk's credentials.
    BadCredentials,
    /// The digest username belongs to no accepted trunk.
    UnknownUser,
    /// The username's trunk does not allowlist the source address.
    AddressNotAllowed,
    /// No credentials, and no trunk allowlists the source address without a digest.
    SourceNotAllowed,
    /// The nonce has expired (the carrier is expected to retry with a fresh one).
    StaleNonce,
    /// A nonce and nonce-count were seen before.
    Replay,
    /// The Authorization/Proxy-Authorization header could not be parsed or names an unsupported
    /// algorithm or qop.
    Malformed,
    /// The trunk's credentials are still being generated; it cannot take calls yet.
    CredentialsPending,
    /// The digest `uri` is not the Request-URI.
    UriMismatch,
    /// The nonce already took its wrong answers (the per-nonce guess limit).
    NonceGuessLimit,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 10] = [
        AuthFailure::BadCredentials,
        AuthFailure::UnknownUser,
        AuthFailure::AddressNotAllowed,
        AuthFailure::SourceNotAllowed,
        AuthFailure::StaleNonce,
        AuthFailure::Replay,
        AuthFailure::Malformed,
        AuthFailure::CredentialsPending,
        AuthFailure::UriMismatch,
        AuthFailure::NonceGuessLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::AddressNotAllowed => "address_not_allowed",
            AuthFailure::SourceNotAllowed => "source_not_allowed",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::Replay => "replay",
            AuthFailure::Malformed => "malformed",
            AuthFailure::CredentialsPending => "credentials_pending",
            AuthFailure::UriMismatch => "uri_mismatch",
            AuthFailure::NonceGuessLimit => "nonce_guess_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// All gateway metrics, registered in one registry.
pub struct GatewayMetrics {
    registry: Registry,
    calls: IntCounterVec,
    active: IntGaugeVec,
    /// One handle per [`AuthFailure`], indexed by its discriminant: resolved once, every series
    /// exported from the start (at 0) so `rate()` works on the first failure.
    auth_failures: Vec<IntCounter>,
    refusals: IntCounterVec,
    outbound_refusals: IntCounterVec,
    guard_dropped: IntCounterVec,
    dialog_refusals: IntCounterVec,
    guard_lockouts: IntCounter,
    guard_sources: IntGauge,
    peer_auth: IntCounterVec,
    transfers: IntCounterVec,
    records: IntCounterVec,
    spool_records: IntGauge,
    spool_bytes: IntGauge,
    spool_max_bytes: IntGauge,
    setup: HistogramVec,
    sip_messages: IntCounterVec,
    sip_queue_drops: IntCounterVec,
    tls_client_failures: IntCounterVec,
    connections_refused: IntCounterVec,
    connections_closed: IntCounterVec,
    config_info: IntGaugeVec,
    /// The hash label currently exported by `config_info` (exactly one series at a time).
    config_hash: Mutex<Option<String>>,
    config_trunks: IntGauge,
    config_numbers: IntGauge,
    config_applied: Gauge,
    fleet_members: IntGauge,
    fleet_member_index: IntGauge,
    reload_ok: IntCounter,
    reload_rejected: IntCounter,
    outbound_reachable: IntGaugeVec,
    outbound_registered: IntGaugeVec,
    rtp_packets: IntCounterVec,
    rtp_bytes: IntCounterVec,
    rtp_lost: IntCounterVec,
    rtp_jitter: HistogramVec,
    rtp_rejected: IntCounterVec,
    port_pool: PortPoolMetrics,
    /// Every series name the registry can export (see [`series_names`]).
    names: BTreeSet<String>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        Self::register(Registry::new())
            .expect("static metric definitions are valid and distinct in a fresh registry")
    }

    fn register(registry: Registry) -> prometheus::Result<Self> {
        let r = &registry;
        let build_info = build_info(r)?;
        let rtp_packets = register_int_counter_vec_with_registry!(
            "trunkline_rtp_packets_total",
            "RTP packets received by the relay from each side of ended calls, by trunk and leg (carrier or agent).",
            &["trunk", "leg"],
            r,
        )?;
        let rtp_bytes = register_int_counter_vec_with_registry!(
            "trunkline_rtp_bytes_total",
            "RTP bytes received by the relay, by trunk and leg.",
            &["trunk", "leg"],
            r,
        )?;
        let rtp_lost = register_int_counter_vec_with_registry!(
            "trunkline_rtp_lost_packets_total",
            "RTP packets lost before reaching the relay (sequence gaps), by trunk and leg.",
            &["trunk", "leg"],
            r,
        )?;
        let rtp_jitter = register_histogram_vec_with_registry!(
            "trunkline_rtp_jitter_seconds",
            "Interarrival jitter (RFC 3550 A.8) of each call leg's RTP at its end.",
            &["trunk", "leg"],
            vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
            r,
        )?;
        let rtp_rejected = rtp_rejected_collector(r)?;
        let calls = register_int_counter_vec_with_registry!(
            "trunkline_calls_total",
            "Calls ended, by trunk, direction and outcome.",
            &["trunk", "direction", "outcome"],
            r,
        )?;
        let active = register_int_gauge_vec_with_registry!(
            "trunkline_active_calls",
            "Calls in progress, by trunk and direction.",
            &["trunk", "direction"],
            r,
        )?;
        let auth = register_int_counter_vec_with_registry!(
            "trunkline_auth_failures_total",
            "Inbound requests that failed authentication, by reason.",
            &["reason"],
            r,
        )?;
        let refusals = register_int_counter_vec_with_registry!(
            "trunkline_inbound_refusals_total",
            "Inbound INVITEs answered with a final error, by SIP status and refusing rule.",
            &["status", "rule"],
            r,
        )?;
        let outbound_refusals = register_int_counter_vec_with_registry!(
            "trunkline_outbound_refusals_total",
            "Outbound calls (agent INVITEs and API requests) refused, by SIP status and refusing rule.",
            &["status", "rule"],
            r,
        )?;
        let guard_dropped = register_int_counter_vec_with_registry!(
            "trunkline_guard_dropped_total",
            "New requests and unreadable messages on the carrier-facing listener dropped unanswered by the per-source protection, by reason.",
            &["reason"],
            r,
        )?;
        let dialog_refusals = register_int_counter_vec_with_registry!(
            "trunkline_dialog_refusals_total",
            "In-dialog requests refused without effect (481, or 500 for a CSeq out of order): no dialog of ours, or not from the dialog's zone, transport, peer, or CSeq order; by reason.",
            &["reason"],
            r,
        )?;
        let guard_lockouts = register_int_counter_with_registry!(
            "trunkline_guard_lockouts_total",
            "Source addresses locked out after too many refused digest answers (--auth-failures).",
            r,
        )?;
        let guard_sources = register_int_gauge_with_registry!(
            "trunkline_guard_sources",
            "Source addresses the per-source protection tracks (at most --max-sources).",
            r,
        )?;
        let peer_auth = register_int_counter_vec_with_registry!(
            "trunkline_peer_auth_failures_total",
            "Calls a dialed peer refused at authentication: our digest answer challenged again, a challenge to a trunk without credentials, or one that cannot be answered.",
            &["trunk", "peer"],
            r,
        )?;
        let transfers = register_int_counter_vec_with_registry!(
            "trunkline_transfers_total",
            "Transfers the agents asked for, by destination (namespace/name, or `unknown` when the request named none), mode (Bridge, Refer, Hangup, none) and outcome.",
            &["destination", "mode", "outcome"],
            r,
        )?;
        let records = register_int_counter_vec_with_registry!(
            "trunkline_session_records_total",
            "Session records by sink (file, webhook) and result: written or failed (file); spooled, refused (spool full or unwritable), delivered or failed (a POST that will be retried) for the webhook.",
            &["sink", "result"],
            r,
        )?;
        let spool_records = register_int_gauge_with_registry!(
            "trunkline_session_records_spool_records",
            "Session records waiting in the webhook's spool (not yet delivered).",
            r,
        )?;
        let spool_bytes = register_int_gauge_with_registry!(
            "trunkline_session_records_spool_bytes",
            "Bytes of the session records waiting in the webhook's spool.",
            r,
        )?;
        let spool_max_bytes = register_int_gauge_with_registry!(
            "trunkline_session_records_spool_max_bytes",
            "The bound of the webhook's spool (--records-spool-max-bytes): records that would pass it are refused.",
            r,
        )?;
        let setup = register_histogram_vec_with_registry!(
            "trunkline_call_setup_seconds",
            "Time from the INVITE received to the final response from the other leg.",
            &["trunk"],
            SETUP_BUCKETS.to_vec(),
            r,
        )?;
        let sip_messages = register_int_counter_vec_with_registry!(
            "trunkline_sip_messages_total",
            "SIP messages received, by transport and kind (request, response, malformed).",
            &["transport", "kind"],
            r,
        )?;
        let sip_queue_drops = register_int_counter_vec_with_registry!(
            "trunkline_sip_queue_drops_total",
            "SIP messages received and dropped because the queue they go to was full (the peer retransmits), by queue (front_door, call).",
            &["queue"],
            r,
        )?;
        for queue in ["front_door", "call"] {
            let _ = sip_queue_drops.with_label_values(&[queue]);
        }
        let config_info = register_int_gauge_vec_with_registry!(
            "trunkline_config_info",
            "The hash of the routing table in use (value 1).",
            &["hash"],
            r,
        )?;
        let config_trunks = register_int_gauge_with_registry!(
            "trunkline_config_trunks",
            "Accepted trunks (inbound and outbound) in the routing table in use.",
            r,
        )?;
        let config_numbers = register_int_gauge_with_registry!(
            "trunkline_config_numbers",
            "Numbers routed by the routing table in use.",
            r,
        )?;
        let config_applied = register_gauge_with_registry!(
            "trunkline_config_applied_timestamp_seconds",
            "When the routing table in use was swapped in (Unix time): at the start, then at each reload that changed it.",
            r,
        )?;
        let fleet_members = register_int_gauge_with_registry!(
            "trunkline_fleet_members",
            "Gateway pods each trunk's maxConcurrentCalls and maxCallsPerSecond are divided over (this pod's share is about 1/N of each limit); 1 for `trunkline run` or without a membership from the operator.",
            r,
        )?;
        let fleet_member_index = register_int_gauge_with_registry!(
            "trunkline_fleet_member_index",
            "This pod's index (from 0) in the fleet's sorted membership; equal to trunkline_fleet_members - 1 when the operator does not list it yet.",
            r,
        )?;
        let tls_client_failures = register_int_counter_vec_with_registry!(
            "trunkline_tls_client_failures_total",
            "TLS handshakes with carriers and agent runtimes that failed, by reason.",
            &["reason"],
            r,
        )?;
        let connections_refused = register_int_counter_vec_with_registry!(
            "trunkline_sip_connections_refused_total",
            "TCP and TLS connections closed at accept, by transport and reason (global_limit: --max-connections are open; address_limit: --max-connections-per-address are open from that address).",
            &["transport", "reason"],
            r,
        )?;
        let connections_closed = register_int_counter_vec_with_registry!(
            "trunkline_sip_connections_closed_total",
            "TCP and TLS connections closed, by transport and reason (peer_closed, idle_timeout, message_timeout, handshake_timeout, handshake_failed, write_timeout, too_large, unframeable, error).",
            &["transport", "reason"],
            r,
        )?;
        let reloads = register_int_counter_vec_with_registry!(
            "trunkline_config_reloads_total",
            "Routing table reloads, by result (ok: swapped in, rejected: the old one kept).",
            &["result"],
            r,
        )?;
        let outbound_reachable = register_int_gauge_vec_with_registry!(
            "trunkline_outbound_reachable",
            "Whether the OutboundTrunk's carrier answers SIP OPTIONS from this gateway (1) or missed the last 3 probes (0); no series until the first answer or the third miss, nor for trunks not probed.",
            &["trunk"],
            r,
        )?;
        let outbound_registered = register_int_gauge_vec_with_registry!(
            "trunkline_outbound_registered",
            "Whether this gateway holds a binding at the OutboundTrunk's registrar (1) or its last attempt failed (0); no series before the first answer, nor for trunks that do not register.",
            &["trunk"],
            r,
        )?;
        let (port_pairs, port_exhaustions) = port_pool_collectors(r)?;

        use Shape::{Histogram as H, Plain as P};
        let names = series_names(&[
            (&build_info, P),
            (&rtp_packets, P),
            (&rtp_bytes, P),
            (&rtp_lost, P),
            (&rtp_jitter, H),
            (&rtp_rejected, P),
            (&port_pairs, P),
            (&port_exhaustions, P),
            (&calls, P),
            (&active, P),
            (&auth, P),
            (&refusals, P),
            (&outbound_refusals, P),
            (&guard_dropped, P),
            (&dialog_refusals, P),
            (&guard_lockouts, P),
            (&guard_sources, P),
            (&peer_auth, P),
            (&transfers, P),
            (&records, P),
            (&spool_records, P),
            (&spool_bytes, P),
            (&spool_max_bytes, P),
            (&setup, H),
            (&sip_messages, P),
            (&sip_queue_drops, P),
            (&tls_client_failures, P),
            (&connections_refused, P),
            (&connections_closed, P),
            (&config_info, P),
            (&config_trunks, P),
            (&config_numbers, P),
            (&config_applied, P),
            (&fleet_members, P),
            (&fleet_member_index, P),
            (&reloads, P),
            (&outbound_reachable, P),
            (&outbound_registered, P),
        ]);
        let port_pool = PortPoolMetrics::of(&port_pairs, port_exhaustions);

        let auth_failures =
            AuthFailure::ALL.iter().map(|r| auth.with_label_values(&[r.as_str()])).collect();

        Ok(GatewayMetrics {
            registry,
            calls,
            active,
            auth_failures,
            refusals,
            outbound_refusals,
            guard_dropped,
            dialog_refusals,
            guard_lockouts,
            guard_sources,
            peer_auth,
            transfers,
            records,
            spool_records,
            spool_bytes,
            spool_max_bytes,
            setup,
            sip_messages,
            sip_queue_drops,
            tls_client_failures,
            connections_refused,
            connections_closed,
            config_info,
            config_hash: Mutex::new(None),
            config_trunks,
            config_numbers,
            config_applied,
            fleet_members,
            fleet_member_index,
            reload_ok: reloads.with_label_values(&["ok"]),
            reload_rejected: reloads.with_label_values(&["rejected"]),
            outbound_reachable,
            outbound_registered,
            rtp_packets,
            rtp_bytes,
            rtp_lost,
            rtp_jitter,
            rtp_rejected,
            port_pool,
            names,
        })
    }

    /// The name of every series a gateway can export, histograms as their `_bucket`, `_sum` and
    /// `_count` series, including vecs that have no child yet.
    pub fn metric_names() -> BTreeSet<String> {
        GatewayMetrics::new().names
    }

    /// The handles the RTP port pool keeps current (`media::ports::PortAllocator::with_metrics`).
    pub fn port_pool(&self) -> PortPoolMetrics {
        self.port_pool.clone()
    }

    /// Adds one call leg's RTP figures when its call ends: what the relay received from that
    /// side (`leg`: `carrier` or `agent`), the packets lost on the way, the final jitter.
    /// `trunk`: as in [`Self::call_finished`].
    pub fn rtp_leg_finished(
        &self,
        trunk: &str,
        leg: &str,
        packets: u64,
        bytes: u64,
        lost: u64,
        jitter_seconds: f64,
    ) {
        let labels = [trunk, leg];
        self.rtp_packets.with_label_values(&labels).inc_by(packets);
        self.rtp_bytes.with_label_values(&labels).inc_by(bytes);
        self.rtp_lost.with_label_values(&labels).inc_by(lost);
        if packets > 0 {
            self.rtp_jitter.with_label_values(&labels).observe(jitter_seconds);
        }
    }

    /// The handles a call's relay counts the packets it refuses on one side with (`leg`:
    /// `carrier` or `agent`; `trunk`: as in [`Self::call_finished`]). Both series exist (at 0)
    /// from the call's start.
    pub fn rtp_rejected(&self, trunk: &str, leg: &str) -> RtpRejected {
        RtpRejected::of(&self.rtp_rejected, trunk, leg)
    }

    /// The registry, for components that keep their own typed metrics (RTP stats, session-record
    /// sinks) and want them on the same `/metrics` page.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one ended call. `trunk`: `namespace/name` of an accepted trunk, or
    /// [`UNKNOWN_TRUNK`].
    pub fn call_finished(&self, trunk: &str, direction: Direction, outcome: Outcome) {
        self.calls.with_label_values(&[trunk, direction.as_str(), outcome.as_str()]).inc();
    }

    /// Counts a call as in progress until the returned guard drops (however the call task ends:
    /// normally, by panic or by cancellation). `trunk`: as in [`Self::call_finished`].
    #[must_use = "the call counts as active only while the guard lives"]
    pub fn call_started(&self, trunk: &str, direction: Direction) -> ActiveCallGuard {
        let gauge = self.active.with_label_values(&[trunk, direction.as_str()]);
        gauge.inc();
        ActiveCallGuard { gauge }
    }

    /// Counts one authentication failure.
    pub fn auth_failure(&self, reason: AuthFailure) {
        if let Some(c) = self.auth_failures.get(reason.index()) {
            c.inc();
        }
    }

    /// Counts one inbound INVITE refused with `status` by `rule` (a fixed name of the refusing
    /// step, e.g. `unknown_number`, `no_common_codec`, `max_concurrent_calls`).
    pub fn invite_refused(&self, status: u16, rule: &str) {
        self.refusals.with_label_values(&[status.to_string().as_str(), rule]).inc();
    }

    /// Counts one outbound call (an agent's INVITE or an API request) refused with `status` by
    /// `rule`.
    pub fn outbound_refused(&self, status: u16, rule: &str) {
        self.outbound_refusals.with_label_values(&[status.to_string().as_str(), rule]).inc();
    }

    /// Counts one call a dialed peer (`carrier`, `agent`, `transfer`) refused at
    /// authentication. `trunk`: as in [`Self::call_finished`].
    /// Exports `trunkline_guard_dropped_total` at 0 for each of these reasons (the fixed labels
    /// of `call::guard::Dropped`), so that `rate()` works from the first drop.
    pub fn export_guard_drops(&self, reasons: &[&str]) {
        for reason in reasons {
            self.guard_dropped.with_label_values(&[reason]);
        }
    }

    /// A request dropped unanswered by the per-source protection; `reason` is a fixed label.
    /// Exports `trunkline_dialog_refusals_total` at 0 for each of these reasons (the fixed
    /// labels of `call::machine::Mismatch`).
    pub fn export_dialog_refusals(&self, reasons: &[&str]) {
        for reason in reasons {
            self.dialog_refusals.with_label_values(&[reason]);
        }
    }

    /// Counts one in-dialog request refused for `reason` (a `Mismatch` label).
    pub fn dialog_refused(&self, reason: &str) {
        self.dialog_refusals.with_label_values(&[reason]).inc();
    }

    pub fn guard_dropped(&self, reason: &str) {
        self.guard_dropped.with_label_values(&[reason]).inc();
    }

    /// A source locked out after too many refused digest answers.
    pub fn guard_lockout(&self) {
        self.guard_lockouts.inc();
    }

    /// How many sources the per-source protection tracks.
    pub fn guard_sources(&self, sources: usize) {
        self.guard_sources.set(i64::try_from(sources).unwrap_or(i64::MAX));
    }

    pub fn peer_auth_refused(&self, trunk: &str, peer: &str) {
        self.peer_auth.with_label_values(&[trunk, peer]).inc();
    }

    /// Counts one transfer. `destination` is `namespace/name`; a request that named no
    /// destination is counted as `unknown` (what it named is in the log, not in a label).
    pub fn transfer(&self, destination: &str, mode: &str, outcome: &str) {
        let destination = if destination.contains('/') && !destination.contains(':') {
            destination
        } else {
            "unknown"
        };
        self.transfers.with_label_values(&[destination, mode, outcome]).inc();
    }

    /// Counts a session record at a sink (`file`, `webhook`) with its result.
    pub fn session_record(&self, sink: &str, result: &str) {
        self.records.with_label_values(&[sink, result]).inc();
    }

    /// Publishes what waits in the webhook's spool: `records` not yet delivered, `bytes` of
    /// them (`observe::spool::Spool::len`, `Spool::bytes`). Called by the spool's sync ticker.
    pub fn records_spool(&self, records: usize, bytes: u64) {
        self.spool_records.set(i64::try_from(records).unwrap_or(i64::MAX));
        self.spool_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Publishes the spool's bound (`--records-spool-max-bytes`), once when it is opened.
    pub fn records_spool_bound(&self, max_bytes: u64) {
        self.spool_max_bytes.set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    }

    /// Observes a call's setup time: INVITE received → final response from the other leg.
    /// `trunk`: as in [`Self::call_finished`].
    pub fn setup_latency(&self, trunk: &str, seconds: f64) {
        let h: Histogram = self.setup.with_label_values(&[trunk]);
        h.observe(seconds);
    }

    /// Counts one SIP message received on `transport` (`udp`, `tcp`, `tls`); `kind` is `request`,
    /// `response` or `malformed` (could not be parsed or failed the message checks).
    pub fn sip_message(&self, transport: &str, kind: &str) {
        self.sip_messages.with_label_values(&[transport, kind]).inc();
    }

    /// Counts one received message dropped because its queue (`front_door` or `call`) was full.
    pub fn sip_queue_drop(&self, queue: &'static str) {
        self.sip_queue_drops.with_label_values(&[queue]).inc();
    }

    /// Exports `trunkline_tls_client_failures_total` at 0 for each of `reasons` (every value
    /// of `sip::tls_client::TlsFailure`), so that `rate()` works from the first failure.
    pub fn export_tls_client_failures(&self, reasons: &[&str]) {
        for reason in reasons {
            let _ = self.tls_client_failures.with_label_values(&[*reason]);
        }
    }

    /// Counts one failed TLS handshake toward a carrier or an agent runtime; `reason` is a fixed
    /// name (`sip::tls_client::TlsFailure::as_str`).
    pub fn tls_client_failure(&self, reason: &str) {
        self.tls_client_failures.with_label_values(&[reason]).inc();
    }

    /// Exports the stream connection counters at 0 for each transport and reason (every value
    /// of `sip::transport::Refusal` and `CloseReason`), so that `rate()` works from the first.
    pub fn export_sip_connections(&self, transports: &[&str], refused: &[&str], closed: &[&str]) {
        for transport in transports {
            for reason in refused {
                let _ = self.connections_refused.with_label_values(&[*transport, *reason]);
            }
            for reason in closed {
                let _ = self.connections_closed.with_label_values(&[*transport, *reason]);
            }
        }
    }

    /// Counts one TCP or TLS connection closed at accept; `reason` is a fixed name
    /// (`sip::transport::Refusal::as_str`).
    pub fn sip_connection_refused(&self, transport: &str, reason: &str) {
        self.connections_refused.with_label_values(&[transport, reason]).inc();
    }

    /// Counts one TCP or TLS connection closed; `reason` is a fixed name
    /// (`sip::transport::CloseReason::as_str`).
    pub fn sip_connection_closed(&self, transport: &str, reason: &str) {
        self.connections_closed.with_label_values(&[transport, reason]).inc();
    }

    /// Publishes this pod's place in the fleet the trunks' limits are divided over.
    pub fn set_fleet(&self, index: u32, members: u32) {
        self.fleet_members.set(i64::from(members));
        self.fleet_member_index.set(i64::from(index));
    }

    /// Publishes the routing table in use: `trunkline_config_info{hash}` = 1 with the previous
    /// hash's series removed, the trunk and number counts, and (when the hash changed) the time
    /// it was swapped in.
    pub fn set_config(&self, hash: &str, trunks: usize, numbers: usize) {
        self.set_config_at(hash, trunks, numbers, SystemTime::now());
    }

    fn set_config_at(&self, hash: &str, trunks: usize, numbers: usize, now: SystemTime) {
        {
            let mut current = self.config_hash.lock().unwrap_or_else(PoisonError::into_inner);
            if current.as_deref() != Some(hash) {
                if let Some(old) = current.take() {
                    // Always present: only this method sets it, under this lock.
                    let _ = self.config_info.remove_label_values(&[old.as_str()]);
                }
                *current = Some(hash.to_owned());
                let unix = now.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                self.config_applied.set(unix);
            }
            self.config_info.with_label_values(&[hash]).set(1);
        }
        self.config_trunks.set(i64::try_from(trunks).unwrap_or(i64::MAX));
        self.config_numbers.set(i64::try_from(numbers).unwrap_or(i64::MAX));
    }

    /// Counts one reload: `ok` when the new table was swapped in, `rejected` when the old one was
    /// kept.
    pub fn config_reload(&self, ok: bool) {
        if ok { &self.reload_ok } else { &self.reload_rejected }.inc();
    }

    /// Publishes an OutboundTrunk's reachability (`trunk`: its `namespace/name`), on each flip.
    pub fn set_outbound_reachable(&self, trunk: &str, reachable: bool) {
        self.outbound_reachable.with_label_values(&[trunk]).set(i64::from(reachable));
    }

    /// Drops the trunk's series: it is no longer probed (removed, probing off, or its state
    /// unknown again after its target changed).
    pub fn forget_outbound(&self, trunk: &str) {
        // Absent when the trunk never got to a state: nothing to remove.
        let _ = self.outbound_reachable.remove_label_values(&[trunk]);
    }

    /// Publishes whether this gateway holds a binding at the trunk's registrar, on each change.
    pub fn set_outbound_registered(&self, trunk: &str, registered: bool) {
        self.outbound_registered.with_label_values(&[trunk]).set(i64::from(registered));
    }

    /// Drops the trunk's registration series: it no longer registers.
    pub fn forget_registration(&self, trunk: &str) {
        let _ = self.outbound_registered.remove_label_values(&[trunk]);
    }

    /// Every metric of the registry in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "rendering metrics failed; the page is incomplete");
        }
        out
    }
}

/// Keeps one call counted in `trunkline_active_calls`; decrements it on drop.
#[derive(Debug)]
pub struct ActiveCallGuard {
    gauge: IntGauge,
}

impl Drop for ActiveCallGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(metric)).collect()
    }

    #[test]
    fn render_shows_calls_with_their_labels() {
        let m = GatewayMetrics::new();
        m.call_finished("default/carrier", Direction::Inbound, Outcome::Answered);
        m.call_finished("default/carrier", Direction::Inbound, Outcome::Answered);
        m.call_finished(UNKNOWN_TRUNK, Direction::Inbound, Outcome::Rejected);
        let text = m.render();
        assert!(text.contains(
            r#"trunkline_calls_total{direction="inbound",outcome="answered",trunk="default/carrier"} 2"#
        ));
        assert!(text.contains(
            r#"trunkline_calls_total{direction="inbound",outcome="rejected",trunk="unknown"} 1"#
        ));
    }

    #[test]
    fn active_gauge_goes_up_with_the_guard_and_back_down_when_it_drops() {
        let m = GatewayMetrics::new();
        let series = r#"trunkline_active_calls{direction="outbound",trunk="ns/out"}"#;
        let a = m.call_started("ns/out", Direction::Outbound);
        let b = m.call_started("ns/out", Direction::Outbound);
        assert!(m.render().contains(&format!("{series} 2")));
        drop(a);
        assert!(m.render().contains(&format!("{series} 1")));
        drop(b);
        assert!(m.render().contains(&format!("{series} 0")));
    }

    #[test]
    fn config_info_keeps_exactly_one_hash_series() {
        let m = GatewayMetrics::new();
        m.set_config("aaaa", 2, 10);
        m.set_config("bbbb", 3, 12);
        m.set_config("bbbb", 3, 12);
        m.config_reload(true);
        m.config_reload(false);
        let text = m.render();
        assert_eq!(
            lines_of(&text, "trunkline_config_info{"),
            vec![r#"trunkline_config_info{hash="bbbb"} 1"#]
        );
        assert!(text.contains("trunkline_config_trunks 3"));
        assert!(text.contains("trunkline_config_numbers 12"));
        assert!(text.contains(r#"trunkline_config_reloads_total{result="ok"} 1"#));
        assert!(text.contains(r#"trunkline_config_reloads_total{result="rejected"} 1"#));
    }

    #[test]
    fn every_auth_failure_reason_is_exported_from_the_start() {
        let m = GatewayMetrics::new();
        m.auth_failure(AuthFailure::Replay);
        let text = m.render();
        for r in AuthFailure::ALL {
            let n = if r == AuthFailure::Replay { 1 } else { 0 };
            let line = format!(r#"trunkline_auth_failures_total{{reason="{}"}} {n}"#, r.as_str());
            assert!(text.contains(&line), "missing {line}");
        }
    }

    #[test]
    fn tls_client_failures_are_exported_at_zero_and_counted_by_reason() {
        let m = GatewayMetrics::new();
        m.export_tls_client_failures(&["unknown_ca", "timeout"]);
        m.tls_client_failure("unknown_ca");
        let text = m.render();
        assert!(text.contains(r#"trunkline_tls_client_failures_total{reason="unknown_ca"} 1"#));
        assert!(text.contains(r#"trunkline_tls_client_failures_total{reason="timeout"} 0"#));
    }

    #[test]
    fn stream_connections_are_exported_at_zero_and_counted_by_transport_and_reason() {
        let m = GatewayMetrics::new();
        m.export_sip_connections(&["tcp", "tls"], &["address_limit"], &["message_timeout"]);
        m.sip_connection_refused("tcp", "address_limit");
        m.sip_connection_closed("tls", "message_timeout");
        let text = m.render();
        for line in [
            r#"trunkline_sip_connections_refused_total{reason="address_limit",transport="tcp"} 1"#,
            r#"trunkline_sip_connections_refused_total{reason="address_limit",transport="tls"} 0"#,
            r#"trunkline_sip_connections_closed_total{reason="message_timeout",transport="tls"} 1"#,
            r#"trunkline_sip_connections_closed_total{reason="message_timeout",transport="tcp"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn refusals_setup_latency_and_sip_messages_are_rendered() {
        let m = GatewayMetrics::new();
        m.invite_refused(404, "unknown_number");
        m.invite_refused(503, "max_concurrent_calls");
        m.setup_latency("ns/in", 0.2);
        m.sip_message("udp", "request");
        m.sip_message("tls", "malformed");
        let text = m.render();
        assert!(
            text.contains(
                r#"trunkline_inbound_refusals_total{rule="unknown_number",status="404"} 1"#
            )
        );
        assert!(text.contains(
            r#"trunkline_inbound_refusals_total{rule="max_concurrent_calls",status="503"} 1"#
        ));
        assert!(text.contains(r#"trunkline_call_setup_seconds_bucket{trunk="ns/in",le="0.25"} 1"#));
        assert!(text.contains(r#"trunkline_call_setup_seconds_bucket{trunk="ns/in",le="0.1"} 0"#));
        assert!(text.contains(r#"trunkline_call_setup_seconds_count{trunk="ns/in"} 1"#));
        assert!(text.contains(r#"trunkline_sip_messages_total{kind="request",transport="udp"} 1"#));
        assert!(
            text.contains(r#"trunkline_sip_messages_total{kind="malformed",transport="tls"} 1"#)
        );
    }

    #[test]
    fn outbound_reachability_is_one_series_per_probed_trunk_gone_with_the_trunk() {
        let m = GatewayMetrics::new();
        m.set_outbound_reachable("voice/carrier-out", true);
        m.set_outbound_reachable("voice/backup", false);
        let text = m.render();
        assert!(text.contains(r#"trunkline_outbound_reachable{trunk="voice/carrier-out"} 1"#));
        assert!(text.contains(r#"trunkline_outbound_reachable{trunk="voice/backup"} 0"#));
        m.set_outbound_reachable("voice/backup", true);
        m.forget_outbound("voice/carrier-out");
        m.forget_outbound("voice/never-probed");
        let text = m.render();
        assert_eq!(
            lines_of(&text, "trunkline_outbound_reachable{"),
            vec![r#"trunkline_outbound_reachable{trunk="voice/backup"} 1"#]
        );
    }

    #[test]
    fn build_info_names_the_crate_version() {
        let text = GatewayMetrics::new().render();
        let line = format!(r#"trunkline_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }

    #[test]
    fn rtp_figures_are_labelled_with_trunk_and_leg() {
        let m = GatewayMetrics::new();
        m.rtp_leg_finished("voice/acme-in", "carrier", 50, 8600, 2, 0.004);
        let text = m.render();
        for line in [
            r#"trunkline_rtp_packets_total{leg="carrier",trunk="voice/acme-in"} 50"#,
            r#"trunkline_rtp_bytes_total{leg="carrier",trunk="voice/acme-in"} 8600"#,
            r#"trunkline_rtp_lost_packets_total{leg="carrier",trunk="voice/acme-in"} 2"#,
            r#"trunkline_rtp_jitter_seconds_count{leg="carrier",trunk="voice/acme-in"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn metric_names_cover_every_series_rendered_and_the_vecs_without_children() {
        let names = GatewayMetrics::metric_names();
        for name in [
            "trunkline_build_info",
            "trunkline_calls_total",
            "trunkline_rtp_port_pairs",
            "trunkline_rtp_port_exhaustions_total",
            "trunkline_rtp_jitter_seconds_bucket",
            "trunkline_rtp_jitter_seconds_sum",
            "trunkline_rtp_rejected_packets_total",
            "trunkline_call_setup_seconds_count",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert!(!names.contains("trunkline_rtp_jitter_seconds"), "a histogram has no bare series");
        // Every method that gives a vec a child, so that each series the page can show is
        // rendered once: a collector left out of `series_names` fails here.
        let m = GatewayMetrics::new();
        m.call_finished("ns/t", Direction::Inbound, Outcome::Answered);
        let _active = m.call_started("ns/t", Direction::Inbound);
        m.auth_failure(AuthFailure::Replay);
        m.invite_refused(404, "NumberNotOnTrunk");
        m.outbound_refused(403, "AgentNotAllowed");
        m.guard_dropped("locked_out");
        m.dialog_refused("wrong_source");
        m.peer_auth_refused("ns/t", "carrier");
        m.transfer("ns/desk", "Bridge", "completed");
        m.session_record("file", "written");
        m.records_spool(1, 100);
        m.records_spool_bound(1000);
        m.setup_latency("ns/t", 0.1);
        m.sip_message("udp", "request");
        m.tls_client_failure("timeout");
        m.sip_connection_refused("tcp", "address_limit");
        m.sip_connection_closed("tls", "write_timeout");
        m.rtp_leg_finished("ns/t", "agent", 1, 1, 0, 0.0);
        m.rtp_rejected("ns/t", "carrier").not_allowed.inc();
        m.set_config("h", 1, 1);
        m.config_reload(true);
        m.set_outbound_reachable("ns/out", true);
        m.set_outbound_registered("ns/out", true);
        m.port_pool().exhaustions.inc();
        let text = m.render();
        let rendered: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
            .collect();
        for name in &rendered {
            assert!(names.contains(*name), "{name} is rendered but not in metric_names()");
        }
        for name in &names {
            assert!(
                rendered.contains(name.as_str()),
                "{name} is in metric_names() but never rendered"
            );
        }
    }

    #[test]
    fn the_spool_gauges_follow_what_waits_and_the_bound() {
        let m = GatewayMetrics::new();
        let text = m.render();
        assert!(text.contains("trunkline_session_records_spool_records 0"), "{text}");
        m.records_spool_bound(64 << 20);
        m.records_spool(3, 1500);
        let text = m.render();
        assert!(text.contains("trunkline_session_records_spool_records 3"), "{text}");
        assert!(text.contains("trunkline_session_records_spool_bytes 1500"), "{text}");
        assert!(text.contains("trunkline_session_records_spool_max_bytes 67108864"), "{text}");
        m.records_spool(0, 0);
        assert!(m.render().contains("trunkline_session_records_spool_bytes 0"));
    }

    #[test]
    fn the_applied_time_moves_only_when_another_table_is_swapped_in() {
        let m = GatewayMetrics::new();
        let at = |s: u64| UNIX_EPOCH + std::time::Duration::from_secs(s);
        let applied = |m: &GatewayMetrics| {
            let text = m.render();
            lines_of(&text, "trunkline_config_applied_timestamp_seconds ")
                .first()
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        m.set_config_at("aaaa", 1, 1, at(1_700_000_000));
        assert_eq!(applied(&m), Some(1_700_000_000.0));
        m.set_config_at("aaaa", 1, 2, at(1_700_000_100));
        assert_eq!(applied(&m), Some(1_700_000_000.0), "the same table again is no new config");
        m.set_config_at("bbbb", 1, 2, at(1_700_000_200));
        assert_eq!(applied(&m), Some(1_700_000_200.0));
        m.set_config("cccc", 1, 2);
        assert!(applied(&m).is_some_and(|t| t > 1_700_000_200.0), "set_config uses the clock");
    }

    #[test]
    fn enum_label_values_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in AuthFailure::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(AuthFailure::ALL[r.index()], r);
        }
        let outcomes: std::collections::HashSet<_> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes.len(), Outcome::ALL.len());
    }
}
