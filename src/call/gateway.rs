//! The gateway's front door: every message the transports receive comes here. Messages of a
//! call in progress go to that call's task (found by Call-ID), which takes a request only if it
//! is one of its dialogs' (both tags, CSeq order, the leg's zone and peer address: see
//! `machine::Leg::owns` and `Leg::signals_from`) and answers the rest 481; a new INVITE is
//! decided here, statelessly until it is admitted (DESIGN §4): draining, authentication (407
//! challenge, 403), the matcher (`config::lookup`: trunk, address, transport, number, caller,
//! agent), admission limits (503 + Retry-After). Only an admitted INVITE gets a call task and a
//! transaction, so a flood of unauthenticated INVITEs costs a hash and a stateless answer each,
//! as in Kamailio's `sl_send_reply`. OPTIONS outside a dialog are answered here (carriers'
//! keep-alives).
//!
//! Before any of that, on the carrier-facing listener, the per-source protection
//! (`call::guard`) decides whether a new out-of-dialog request (or an unreadable message) is
//! answered at all: over its source's bucket, over the global cap, or from a source locked out
//! after refused digest answers, it is dropped unanswered and counted. Refusals are logged at
//! most once per reason per `--refusal-log-interval`, with the count of the lines left out.
//!
//! Called by the transports (as their [`Sink`]); `trunkline run` builds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::config::Snapshot;
use crate::config::lookup::{self, CallAttempt, LookupOptions, Outcome, RefusalRule};
use crate::config::model::{Encryption, InboundDigest, InboundTrunkRoute, RoutingTable};
use crate::observe::admin::Health;
use crate::observe::metrics::{AuthFailure, GatewayMetrics};
use crate::sip::body;
use crate::sip::digest::{Credentials, DigestError, DigestServer, Verification};
use crate::sip::msg::{self, DialogHeaders, Message, Method, Request, Response, name};
use crate::sip::session_timer;
use crate::sip::transaction::MAGIC_COOKIE;
use crate::sip::transport::{Incoming, Sink, Source, Transports, Zone};

use crate::media::codec;
use crate::media::ports::PortAllocator;
use crate::media::relay::MediaThreads;
use crate::media::sdes::{self, Settled};
use crate::media::sdp::Sdp;
use crate::media::srtp::SrtpKeys;

use super::driver::{self, CallLabels, Held};
use super::guard::{Dropped, Guard, LogLimiter, RequestKind};
use super::inbound::{self, Admitted};
use super::machine::{Call, Ids, LegSrtp, Mismatch};
use super::outbound as outbound_call;
use super::placed::{self, PlacedCall};
use super::services::{ALLOW, CallInput, CallServices, GatewayConfig, Listener, MediaOffer};
use crate::config::destination::SipDestination;
use crate::config::outbound::{self, OutboundAttempt};
use crate::observe::api::{ApiError, CallControl, CallState, CallView, ErrorCode, NewCall};
use crate::observe::metrics::Direction;
use crate::sip::transport::Protocol;

/// The gateway: routing of messages to calls, and the decision on new INVITEs.
pub struct Gateway {
    /// What the gateway shares with its call tasks.
    services: Arc<CallServices>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    digest: DigestServer,
    health: Arc<Health>,
    draining: AtomicBool,
    /// The per-source protection of the carrier-facing listener.
    guard: Guard,
    /// Rate-limits the refusal log lines.
    log: LogLimiter,
    /// The front-door workers (started with the sink): they decide new requests.
    workers: std::sync::OnceLock<Workers>,
}

/// What a front-door worker is given.
enum Work {
    /// A datagram whose Call-ID no call has (by a scan of its head), to parse and decide.
    Datagram(bytes::Bytes, Source),
    /// A request no call has, parsed on its connection, its source admitted by the guard.
    Request(Box<Request>, Source),
}

/// A front-door worker's queue.
type WorkQueue = mpsc::Sender<Work>;

/// The front door's workers, one per core. A UDP receive loop scans each datagram's head for
/// its Call-ID (`msg::scan_call_id`): a call's message is parsed there and handed to the call;
/// any other datagram goes unparsed to the worker its Call-ID hashes to, which parses it, asks
/// the per-source guard and decides it (digest, routing, the offer, admission, the call's
/// start). Stream connections parse on their own tasks and hand new requests over the same
/// way. Parsing and deciding the requests of new calls was 60 % of a call's instructions and ran
/// on the receive loop, which made one core the ceiling of the whole gateway
/// (docs/benchmarks.md).
///
/// By Call-ID, so the messages of one call that come before it is registered (an INVITE, its
/// retransmission, a CANCEL) are decided in order by one worker, and the second finds the call
/// the first started instead of starting another. A datagram with no Call-ID to be found goes
/// by its source address (a flood of garbage from one address lands on one worker).
struct Workers {
    queues: Vec<WorkQueue>,
    hasher: std::hash::RandomState,
}

/// Requests one worker may have waiting; past that, new requests are dropped (the peer
/// retransmits), like datagrams a full socket buffer drops.
const WORK_QUEUE: usize = 4096;

impl Workers {
    fn queue(&self, key: impl std::hash::Hash) -> &WorkQueue {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(key) % self.queues.len() as u64) as usize;
        &self.queues[i]
    }
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        digest: DigestServer,
        metrics: Arc<GatewayMetrics>,
        health: Arc<Health>,
        ports: Arc<PortAllocator>,
    ) -> Arc<Gateway> {
        let guard = Guard::new(config.guard.clone());
        let log = LogLimiter::new(config.refusal_log_interval);
        metrics.export_guard_drops(&Dropped::ALL.map(Dropped::as_str));
        metrics.export_dialog_refusals(&Mismatch::ALL.map(Mismatch::label));
        Arc::new(Gateway {
            services: CallServices::new(config, metrics, ports),
            snapshot,
            digest,
            health,
            draining: AtomicBool::new(false),
            guard,
            log,
            workers: std::sync::OnceLock::new(),
        })
    }

    /// Whether a new request (or an unreadable message) of `kind` from `source` gets an answer:
    /// always on the agent-facing listener; on the carrier-facing one, what `call::guard` says.
    fn admitted(&self, source: &Source, kind: RequestKind) -> bool {
        if source.zone != Zone::Carrier {
            return true;
        }
        let now = Instant::now();
        let verdict = self.guard.admit(now, source.remote.ip(), kind);
        self.services.metrics.guard_sources(self.guard.tracked_sources());
        match verdict {
            Ok(()) => true,
            Err(drop) => {
                self.dropped(now, source, drop);
                false
            }
        }
    }

    fn dropped(&self, now: Instant, source: &Source, drop: Dropped) {
        self.services.metrics.guard_dropped(drop.as_str());
        if let Some(suppressed) = self.log.allow(now, drop.as_str()) {
            tracing::info!(
                source = %source.remote, reason = drop.as_str(), suppressed,
                "request dropped unanswered by the per-source protection (one line per reason per --refusal-log-interval; suppressed: lines left out since the last)"
            );
        }
    }

    /// A refused digest answer from `source` (`username` when the routing table has it): counted
    /// towards its lockout, and the lockout logged and counted when this one starts it.
    fn auth_failed(&self, source: &Source, username: Option<&str>) {
        let now = Instant::now();
        if let Some(lockout) = self.guard.auth_failed(now, source.remote.ip(), username) {
            self.services.metrics.guard_lockout();
            if let Some(suppressed) = self.log.allow(now, "lockout") {
                tracing::warn!(
                    source = %lockout.source,
                    seconds = self.guard.settings().auth_lockout.as_secs(), suppressed,
                    "source locked out after too many refused digest answers: its requests are dropped unanswered"
                );
            }
        }
    }

    /// Whether a refusal line for `rule` may be written now; gives the count left out before it.
    fn log_refusal(&self, rule: &'static str) -> Option<u64> {
        self.log.allow(Instant::now(), rule)
    }

    /// Connects the transports (they need the gateway as their sink, so this comes after).
    pub fn attach(&self, transports: Arc<Transports>) {
        self.services.attach(transports);
    }

    /// Runs the RTP relays of new calls on these threads (media does not queue behind
    /// signalling, and a relay does not pay the multi-thread scheduler's wake-ups).
    pub fn use_media_threads(&self, threads: Arc<MediaThreads>) {
        self.services.use_media_threads(threads);
    }

    pub fn add_listener(&self, listener: Listener) {
        self.services.add_listener(listener);
    }

    /// What the gateway shares with its call tasks (the OPTIONS prober, `health`, sends
    /// through it).
    pub(super) fn services(&self) -> &Arc<CallServices> {
        &self.services
    }

    /// Stop taking calls: new INVITEs get 503, calls in progress go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.health.set_draining();
    }

    /// Hangs up every call in progress, with `reason` on their records (the end of a drain
    /// that ran out of time); returns how many calls were asked.
    pub fn hang_up_all(&self, reason: &'static str) -> usize {
        self.services.hang_up_all(reason)
    }

    /// Session records of ended calls not yet written to their file or put in the spool.
    pub fn records_in_flight(&self) -> usize {
        self.services.records_in_flight.load(Ordering::SeqCst)
    }

    /// Makes every record in the webhook's spool durable (fsync), on a blocking thread: the
    /// last step of a stop, after the last call's record was spooled.
    pub async fn sync_records(&self) -> std::io::Result<()> {
        let Some(outbox) = self.services.config.outbox.clone() else { return Ok(()) };
        let spool = outbox.spool.clone();
        tokio::task::spawn_blocking(move || match spool.lock() {
            Ok(mut spool) => spool.sync(),
            Err(_) => Err(std::io::Error::other("the spool's lock is poisoned")),
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Calls in progress (admitted and not yet ended).
    pub fn active_calls(&self) -> usize {
        self.services.active_calls()
    }

    fn reply(&self, source: &Source, mut response: Response) {
        response.headers.push(name::SERVER, self.services.config.user_agent.as_str());
        self.services.send_detached(source.reply_target(), response.to_bytes());
    }

    fn reply_status(
        &self,
        request: &Request,
        source: &Source,
        status: u16,
        extra: &[(&str, String)],
    ) {
        let mut response = Response::to_request(
            request,
            status,
            msg::reason_phrase(status),
            Some(&stateless_tag(request)),
        );
        for (n, v) in extra {
            response.headers.push(n, v.as_str());
        }
        self.reply(source, response);
    }

    /// A request no call takes, its source admitted by the guard.
    fn handle_new_request(self: &Arc<Self>, request: Request, source: Source) {
        match request.method {
            Method::Ack => {} // the ACK of a stateless non-2xx answer, or of a call long gone
            Method::Options => {
                let status = if self.draining.load(Ordering::Relaxed) { 503 } else { 200 };
                self.reply_status(
                    &request,
                    &source,
                    status,
                    &[(name::ALLOW, ALLOW.to_string()), ("Accept", "application/sdp".to_string())],
                );
            }
            Method::Invite => self.handle_new_invite(request, source),
            // A To tag names a dialog, and none of ours has it (RFC 3261 §12.2.2).
            Method::Refer | Method::Notify if request.to().is_some_and(|t| t.tag().is_some()) => {
                self.no_dialog(&request, &source)
            }
            Method::Refer => {
                // Transfers are asked inside a call (DESIGN §4): a REFER outside one names
                // nothing to transfer, and the gateway dials nothing for it.
                let warning = crate::config::refusal::warning(
                    "TransferOutsideCall",
                    "REFER inside a call's dialog",
                );
                self.reply_status(&request, &source, 403, &[(name::WARNING, warning)]);
            }
            Method::Register
            | Method::Subscribe
            | Method::Publish
            | Method::Message
            | Method::Notify => {
                self.reply_status(&request, &source, 405, &[(name::ALLOW, ALLOW.to_string())]);
            }
            Method::Other(_) => {
                self.reply_status(&request, &source, 501, &[(name::ALLOW, ALLOW.to_string())])
            }
            // BYE, CANCEL, UPDATE, INFO, PRACK for no call we know.
            _ => self.no_dialog(&request, &source),
        }
    }

    /// A stateless refusal, counted under its rule.
    /// A request of a dialog the gateway does not have (RFC 3261 §12.2.2): 481, counted.
    fn no_dialog(&self, request: &Request, source: &Source) {
        self.services.metrics.dialog_refused(Mismatch::NoDialog.label());
        self.reply_status(request, source, 481, &[]);
    }

    fn refuse(
        &self,
        request: &Request,
        source: &Source,
        rule: RefusalRule,
        extra: &[(&str, String)],
    ) {
        self.services.metrics.invite_refused(rule.status(), rule.as_str());
        self.reply_status(request, source, rule.status(), extra);
    }

    /// A refusal of a new call in `zone`, counted under its rule and direction. Outbound
    /// refusals carry a `Warning` with the reason (the agent runtime is ours to help).
    fn refuse_in(
        &self,
        zone: Zone,
        request: &Request,
        source: &Source,
        rule: RefusalRule,
        warning: Option<&str>,
        extra: &[(&str, String)],
    ) {
        match zone {
            Zone::Carrier => self.refuse(request, source, rule, extra),
            Zone::Internal => {
                self.services.metrics.outbound_refused(rule.status(), rule.as_str());
                let mut extra = extra.to_vec();
                let text = warning.unwrap_or(rule.as_str());
                extra.push((name::WARNING, crate::config::refusal::warning(rule.as_str(), text)));
                self.reply_status(request, source, rule.status(), &extra);
            }
        }
    }

    fn handle_new_invite(self: &Arc<Self>, request: Request, source: Source) {
        let zone = source.zone;
        // The agent-facing listener takes new calls from the agent networks only; anyone else
        // learns nothing more (not even that the gateway is draining).
        let ip = source.remote.ip().to_canonical();
        if zone == Zone::Internal
            && !self.services.config.agent_networks.iter().any(|n| n.contains(&ip))
        {
            tracing::debug!(source = %source.remote, "a new call on the agent-facing listener from outside --agent-networks: refused");
            let rule = RefusalRule::AgentNetworkNotAllowed;
            return self.refuse_in(zone, &request, &source, rule, None, &[]);
        }
        if self.draining.load(Ordering::Relaxed) {
            let retry = [(name::RETRY_AFTER, "30".to_string())];
            return self.refuse_in(zone, &request, &source, RefusalRule::Draining, None, &retry);
        }
        if request.to().is_some_and(|t| t.tag().is_some()) {
            // A re-INVITE for a dialog we do not have.
            return self.no_dialog(&request, &source);
        }
        if request.max_forwards() == Some(0) {
            return self.refuse_in(zone, &request, &source, RefusalRule::TooManyHops, None, &[]);
        }
        // RFC 3261 §8.2.2.3: extensions the caller requires and we do not support (we support
        // `timer`, RFC 4028, and no other, not even 100rel) are named in Unsupported with a 420.
        let required: Vec<&str> = request
            .headers
            .get_all(name::REQUIRE)
            .chain(request.headers.get_all("Proxy-Require"))
            .flat_map(msg::split_list)
            .filter(|o| !o.eq_ignore_ascii_case("timer"))
            .collect();
        if !required.is_empty() {
            let unsupported = required.join(", ");
            let unsupported = [("Unsupported", unsupported)];
            let rule = RefusalRule::BadExtension;
            return self.refuse_in(zone, &request, &source, rule, None, &unsupported);
        }
        // RFC 4028 §8.1: a session interval below ours is 422 with our Min-SE.
        let min_se = self.services.call_config.min_session_expires;
        if let session_timer::Ask::TooSmall { min } = session_timer::ask(&request.headers, min_se) {
            let extra = [(session_timer::MIN_SE, min.to_string())];
            return self.reply_status(&request, &source, 422, &extra);
        }
        let (table, config) = {
            let snapshot = self.snapshot.borrow();
            (snapshot.table.clone(), snapshot.hash.clone())
        };
        let now_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if zone == Zone::Internal {
            return self.handle_outbound_invite(request, source, (table, config), now_unix);
        }
        // DESIGN §3: the carrier side can never originate. An INVITE naming an outbound trunk
        // there is refused before anything else is said about it.
        let trunk_header =
            format!("{}{}", self.services.config.header_prefix, outbound::TRUNK_HEADER);
        if request.headers.get(&trunk_header).is_some() {
            if let Some(suppressed) = self.log_refusal(RefusalRule::OutboundFromCarrier.as_str()) {
                tracing::info!(source = %source.remote, suppressed, "an INVITE on the carrier side named an outbound trunk: refused");
            }
            return self.refuse(&request, &source, RefusalRule::OutboundFromCarrier, &[]);
        }

        // Credentials are checked before anything about numbers is said, so that a known
        // username without its password learns nothing.
        let auth_header = request
            .headers
            .get(name::PROXY_AUTHORIZATION)
            .or_else(|| request.headers.get(name::AUTHORIZATION));
        let credentials = match auth_header.map(Credentials::parse) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                self.services.metrics.auth_failure(AuthFailure::Malformed);
                tracing::debug!(error = %e, "unreadable credentials");
                self.auth_failed(&source, None);
                return self.refuse(&request, &source, RefusalRule::MalformedCredentials, &[]);
            }
        };
        if let Some(c) = &credentials {
            // Only usernames of the table are tracked for spread guessing (a bounded set).
            let known = table.trunk_by_digest_user(&c.username).map(|_| c.username.as_str());
            if let Some(username) = known {
                let now = Instant::now();
                if let Err(drop) = self.guard.admit_answer(now, source.remote.ip(), username) {
                    return self.dropped(now, &source, drop);
                }
            }
            // RFC 3261 §22.4: the answer is bound to the Request-URI; one made for another
            // request (another number) is refused, and counts as a failed answer.
            if !c.uri_matches(&request.uri) {
                self.services.metrics.auth_failure(AuthFailure::UriMismatch);
                self.auth_failed(&source, known);
                let rule = RefusalRule::DigestUriMismatch;
                if let Some(suppressed) = self.log_refusal(rule.as_str()) {
                    tracing::info!(source = %source.remote, username = %c.username, suppressed, "digest uri is not the Request-URI: refused");
                }
                let warning = crate::config::refusal::warning(
                    rule.as_str(),
                    "the digest uri must be the Request-URI",
                );
                return self.refuse(&request, &source, rule, &[(name::WARNING, warning)]);
            }
            match self.verify(&table, c, now_unix, &source) {
                Ok(()) => {}
                Err(Verdict::Stale) => {
                    self.services.metrics.auth_failure(AuthFailure::StaleNonce);
                    let challenges = self.digest.challenge(now_unix, true);
                    return self.challenge(&request, &source, challenges);
                }
                Err(Verdict::Refused(failure)) => {
                    self.services.metrics.auth_failure(failure);
                    self.auth_failed(&source, known);
                    return self.refuse(&request, &source, RefusalRule::BadCredentials, &[]);
                }
            }
        }

        let transport = source.protocol;
        let from = request.from().map(|f| f.uri.clone()).unwrap_or_default();
        let to = request.to().map(|t| t.uri.clone()).unwrap_or_default();
        let headers: Vec<(String, String)> =
            request.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let registration = self.services.registrations.via(source.remote.ip());
        let attempt = CallAttempt {
            transport,
            source: source.remote.ip(),
            digest_username: credentials.as_ref().map(|c| c.username.as_str()),
            request_uri: &request.uri,
            from: &from,
            to: &to,
            registration: registration.as_ref(),
            headers: &headers,
        };
        let options = LookupOptions { header_prefix: self.services.config.header_prefix.clone() };
        let decision = lookup::lookup(&table, &attempt, &options);
        let route = match decision.outcome {
            Outcome::Route(route) => {
                // A verified digest, or an address a trunk allowlists: a known-good source.
                self.guard.trust(Instant::now(), source.remote.ip());
                route
            }
            Outcome::Challenge(_) => {
                let challenges = self.digest.challenge(now_unix, false);
                return self.challenge(&request, &source, challenges);
            }
            Outcome::Refuse(refusal) => {
                if let Some(failure) = auth_failure_of(refusal.rule) {
                    self.services.metrics.auth_failure(failure);
                }
                if let Some(suppressed) = self.log_refusal(refusal.rule.as_str()) {
                    tracing::info!(
                        source = %source.remote, status = refusal.status, rule = refusal.rule.as_str(),
                        detail = decision.steps.last().map(|s| s.detail.as_str()).unwrap_or_default(),
                        suppressed, "INVITE refused"
                    );
                }
                return self.refuse(&request, &source, refusal.rule, &[]);
            }
        };
        // DESIGN §4: transport and codec policy before capacity. No common codec: 488, and
        // nothing reaches the agent.
        let (offer, srtp) =
            match media_offer(&request, &route.trunk.codecs, route.trunk.media.encryption) {
                Ok(offer) => offer,
                Err(rule) => {
                    let extra = media_refusal_headers(rule);
                    return self.refuse(&request, &source, rule, &extra);
                }
            };
        // Issue 15: a carrier's offer must not point the relay at a multicast group, at
        // nothing, or at the gateway itself; checked before any port is bound.
        let own = |target| self.services.is_own_media_target(target);
        let refused =
            offer.as_ref().filter(|o| !o.delayed).and_then(|o| o.sdp.refused_connection(true, own));
        if let Some(refusal) = refused {
            let rule = refusal.rule();
            tracing::debug!(source = %source.remote, rule = rule.as_str(), "offer refused");
            let warning =
                [(name::WARNING, crate::config::refusal::warning(rule.as_str(), refusal.text()))];
            return self.refuse(&request, &source, rule, &warning);
        }
        if !has_rfc3261_branch(&request) {
            return self.refuse(&request, &source, RefusalRule::NoRfc3261Branch, &[]);
        }
        let trunk_key = format!("inbound:{}", route.trunk.name);
        let permit =
            match self.services.admission.try_admit(&trunk_key, route.trunk.limits, Instant::now())
            {
                Ok(permit) => permit,
                Err(refused) => {
                    let retry =
                        [(name::RETRY_AFTER, refused.retry_after.as_secs().max(1).to_string())];
                    return self.refuse(&request, &source, refused.limit.rule(), &retry);
                }
            };
        let Some(call_id) = request.call_id().map(str::to_string) else { return };
        self.services.call_started();
        let (tx, rx) = mpsc::channel(64);
        self.services.register_call(&call_id, tx.clone());
        let admitted =
            Admitted { invite: request, source, route, permit, table, offer, srtp, config };
        inbound::spawn(self.services.clone(), admitted, (tx, rx));
    }

    /// A new INVITE from the agent runtime: an outbound call (DESIGN §4). Checked in order:
    /// the agent networks, the agent runtime's digest when configured, the outbound matcher
    /// (`config::outbound`: trunk, agent, number, caller id), the trunk's codecs (488: nothing
    /// is sent to the carrier), the trunk's limits (503 + Retry-After).
    fn handle_outbound_invite(
        self: &Arc<Self>,
        request: Request,
        source: Source,
        (table, config_hash): (Arc<RoutingTable>, String),
        now_unix: u64,
    ) {
        let zone = Zone::Internal;
        let config = &self.services.config;
        if let Some(agent) = config.agent_credentials.as_ref().and_then(|a| a.current()) {
            let answer = request.headers.get(name::PROXY_AUTHORIZATION).map(Credentials::parse);
            match answer {
                None => {
                    let challenges = self.digest.challenge(now_unix, false);
                    return self.challenge_in(zone, &request, &source, challenges);
                }
                Some(Err(_)) => {
                    let rule = RefusalRule::MalformedCredentials;
                    return self.refuse_in(zone, &request, &source, rule, None, &[]);
                }
                Some(Ok(c)) => {
                    let verified = if c.username == agent.username {
                        self.digest.verify(&c, "INVITE", agent.password.expose(), now_unix)
                    } else {
                        Verification::Invalid(crate::sip::digest::DigestError::Malformed(
                            "unknown username".into(),
                        ))
                    };
                    match verified {
                        Verification::Valid => {}
                        Verification::Stale => {
                            let challenges = self.digest.challenge(now_unix, true);
                            return self.challenge_in(zone, &request, &source, challenges);
                        }
                        Verification::Invalid(e) => {
                            let rule = RefusalRule::BadCredentials;
                            if let Some(suppressed) = self.log_refusal("AgentBadCredentials") {
                                tracing::info!(source = %source.remote, error = %e, suppressed, "agent digest refused");
                            }
                            return self.refuse_in(zone, &request, &source, rule, None, &[]);
                        }
                    }
                }
            }
        }
        let from = request.from().map(|f| f.uri.clone()).unwrap_or_default();
        let headers: Vec<(String, String)> =
            request.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let attempt =
            OutboundAttempt::from_invite(&request.uri, &from, &headers, &config.header_prefix);
        let decision = outbound::decide(&table, &attempt);
        let mut route = match decision.outcome {
            Ok(route) => route,
            Err(refusal) => {
                if let Some(suppressed) = self.log_refusal(refusal.rule.as_str()) {
                    tracing::info!(
                        source = %source.remote, status = refusal.status, rule = refusal.rule.as_str(),
                        detail = decision.steps.last().map(|s| s.detail.as_str()).unwrap_or_default(),
                        suppressed, "outbound INVITE refused"
                    );
                }
                let warning = Some(refusal.message.as_str());
                return self.refuse_in(zone, &request, &source, refusal.rule, warning, &[]);
            }
        };
        // The agent's offer: plain RTP (agents are on the internal network; the carrier leg's
        // SRTP is the outbound trunk's, offered by the call).
        let offer = match media_offer(&request, &route.trunk.codecs, Encryption::Disabled) {
            Ok((offer, _)) => offer,
            Err(rule) => {
                let extra = media_refusal_headers(rule);
                return self.refuse_in(zone, &request, &source, rule, None, &extra);
            }
        };
        if !has_rfc3261_branch(&request) {
            let rule = RefusalRule::NoRfc3261Branch;
            return self.refuse_in(zone, &request, &source, rule, None, &[]);
        }
        let trunk_key = format!("outbound:{}", route.trunk.name);
        let permit =
            match self.services.admission.try_admit(&trunk_key, route.trunk.limits, Instant::now())
            {
                Ok(permit) => permit,
                Err(refused) => {
                    let retry =
                        [(name::RETRY_AFTER, refused.retry_after.as_secs().max(1).to_string())];
                    let rule = refused.limit.rule();
                    return self.refuse_in(zone, &request, &source, rule, None, &retry);
                }
            };
        let Some(call_id) = request.call_id().map(str::to_string) else { return };
        self.services.rotate(&mut route);
        self.services.call_started();
        let (tx, rx) = mpsc::channel(64);
        self.services.register_call(&call_id, tx.clone());
        let admitted = outbound_call::Admitted {
            invite: request,
            source,
            route,
            permit,
            table,
            offer,
            config: config_hash,
        };
        outbound_call::spawn(self.services.clone(), admitted, (tx, rx));
    }

    fn challenge_in(
        &self,
        zone: Zone,
        request: &Request,
        source: &Source,
        challenges: Vec<String>,
    ) {
        if zone == Zone::Carrier {
            return self.challenge(request, source, challenges);
        }
        self.services.metrics.outbound_refused(407, "Challenge");
        let extra: Vec<(&str, String)> =
            challenges.into_iter().map(|c| (name::PROXY_AUTHENTICATE, c)).collect();
        self.reply_status(request, source, 407, &extra);
    }

    fn verify(
        &self,
        table: &RoutingTable,
        c: &Credentials,
        now_unix: u64,
        source: &Source,
    ) -> Result<(), Verdict> {
        let Some(trunk) = table.trunk_by_digest_user(&c.username) else {
            return Err(Verdict::Refused(AuthFailure::UnknownUser));
        };
        let Some(password) = trunk_password(trunk) else {
            return Err(Verdict::Refused(AuthFailure::CredentialsPending));
        };
        match self.digest.verify(c, "INVITE", password, now_unix) {
            Verification::Valid => Ok(()),
            Verification::Stale => Err(Verdict::Stale),
            Verification::Invalid(e) => {
                if let Some(suppressed) = self.log_refusal(RefusalRule::BadCredentials.as_str()) {
                    tracing::info!(source = %source.remote, username = %c.username, error = %e, suppressed, "digest refused");
                }
                Err(Verdict::Refused(match e {
                    DigestError::NonceCountReplay => AuthFailure::Replay,
                    DigestError::TooManyGuesses(_) => AuthFailure::NonceGuessLimit,
                    _ => AuthFailure::BadCredentials,
                }))
            }
        }
    }

    fn challenge(&self, request: &Request, source: &Source, challenges: Vec<String>) {
        self.services.metrics.invite_refused(407, "Challenge");
        let extra: Vec<(&str, String)> =
            challenges.into_iter().map(|c| (name::PROXY_AUTHENTICATE, c)).collect();
        self.reply_status(request, source, 407, &extra);
    }
}

/// The carrier's SDP offer, filtered to the trunk's codecs, and SDES decided by the trunk's
/// `media.encryption` (`media::sdes::answer_offer`: the keys the origin leg's side of the relay
/// will use, our answer's `a=crypto` line among them). An INVITE without a body (a delayed
/// offer, RFC 3261 §13.2.1) gets the gateway's own offer with the trunk's codecs
/// ([`codec::gateway_offer`]): the agent always sees an offer in the INVITE, and the carrier
/// gets the offer in the 2xx (SRTP as its policy says) and answers in its ACK. A multipart body
/// (SIP-I's SDP + ISUP) gives its SDP part, the rest is dropped (`sip::body`). Refusals: 415 for
/// a body that is not SDP or a multipart, 400 for a multipart that cannot be read or SDP that
/// does not parse, 488 for no usable audio, an SRTP offer the policy refuses (or plain RTP where
/// it requires SRTP), or no common codec.
fn media_offer(
    request: &Request,
    codecs: &[crate::config::model::Codec],
    encryption: Encryption,
) -> Result<(Option<MediaOffer>, LegSrtp), RefusalRule> {
    let mut srtp = LegSrtp::new(encryption);
    let text = body::sdp(&request.headers, &request.body).map_err(|e| match e {
        body::BodyError::Unsupported(_) => RefusalRule::UnsupportedBody,
        body::BodyError::Malformed(_) => RefusalRule::BadBody,
    })?;
    // No body, or a multipart without SDP (an ISUP alone): a delayed offer.
    let Some(text) = text else {
        let offer = codec::gateway_offer(codecs).map(|(sdp, negotiated)| MediaOffer {
            sdp,
            negotiated,
            delayed: true,
        });
        return Ok((offer, srtp));
    };
    let mut sdp = parse_offer(&text, encryption)?;
    if !encryption.is_disabled() {
        let savp = sdp.audio_is_srtp();
        if let Settled::Srtp { remote, local } =
            sdes::answer_offer(encryption, savp, &sdp.audio_crypto())?
        {
            srtp.savp = savp;
            srtp.keys = Some(SrtpKeys { remote, local });
        }
    }
    let negotiated = codec::filter_offer(&mut sdp, codecs).map_err(|e| {
        // Counted by rule and answered with a Warning; a line per offer would let an
        // offerer flood the log.
        tracing::debug!(error = %e, "no common codec");
        RefusalRule::NoCommonCodec
    })?;
    Ok((Some(MediaOffer { sdp, negotiated, delayed: false }), srtp))
}

/// An offer's SDP, read as the leg's SRTP policy allows: RTP/SAVP only when it takes SRTP. On
/// a trunk that does not, an offer whose only audio is RTP/SAVP is named as such.
fn parse_offer(text: &[u8], encryption: Encryption) -> Result<Sdp, RefusalRule> {
    let rule = |e: crate::media::sdp::SdpError| {
        if e.status_code() == 488 { RefusalRule::NoUsableAudio } else { RefusalRule::BadSdp }
    };
    if !encryption.is_disabled() {
        return Sdp::parse_srtp(text).map_err(rule);
    }
    Sdp::parse(text).map_err(|e| {
        let srtp_only =
            e.status_code() == 488 && Sdp::parse_srtp(text).is_ok_and(|sdp| sdp.audio_is_srtp());
        if srtp_only { RefusalRule::SrtpNotEnabled } else { rule(e) }
    })
}

/// What a media refusal tells the caller beside its status: a body that is not SDP gets the
/// type that is (RFC 3261 §21.4.13); an SRTP refusal says what the trunk takes in a `Warning`
/// (a carrier's engineer reads it in a trace; a 488 alone says only "not acceptable here").
fn media_refusal_headers(rule: RefusalRule) -> Vec<(&'static str, String)> {
    let srtp =
        |text: &str| vec![(name::WARNING, crate::config::refusal::warning(rule.as_str(), text))];
    match rule {
        RefusalRule::UnsupportedBody => vec![("Accept", body::ACCEPT.to_string())],
        RefusalRule::SrtpRequired => {
            srtp("the trunk requires SRTP (SDES: a=crypto, RFC 4568) and the offer is plain RTP")
        }
        RefusalRule::SrtpNotEnabled => {
            srtp("the offer is SRTP only (RTP/SAVP) and the trunk takes plain RTP")
        }
        RefusalRule::NoUsableCrypto => srtp(
            "no a=crypto line the gateway can use: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32 or AEAD_AES_128_GCM, one key, no MKI",
        ),
        _ => Vec::new(),
    }
}

enum Verdict {
    Stale,
    Refused(AuthFailure),
}

fn trunk_password(trunk: &InboundTrunkRoute) -> Option<&str> {
    match &trunk.digest {
        Some(InboundDigest::Ready { credentials, .. }) => Some(credentials.password.expose()),
        _ => None,
    }
}

fn auth_failure_of(rule: RefusalRule) -> Option<AuthFailure> {
    use RefusalRule as R;
    match rule {
        R::SourceNotAllowed => Some(AuthFailure::SourceNotAllowed),
        R::UnknownUser => Some(AuthFailure::UnknownUser),
        R::AddressNotAllowed => Some(AuthFailure::AddressNotAllowed),
        R::CredentialsPending => Some(AuthFailure::CredentialsPending),
        _ => None,
    }
}

/// Whether the top Via's branch has the RFC 3261 magic cookie, which a new call needs: its
/// INVITE transaction is keyed by that branch, and the matching of an RFC 2543 element's requests
/// (by Request-URI, tags, Call-ID, CSeq and Via, RFC 3261 §17.2.3) is not implemented
/// (`sip::transaction::server_key`). Such an INVITE is valid (RFC 4475 §3.1.1.7 sends one), so
/// it is asked only of one that would become a call, just before admission: the stateless
/// answers before that (403, 404, 407, 420, 422, 483, 488, 503 while draining...) need no
/// transaction, and tell its sender the real reason.
fn has_rfc3261_branch(request: &Request) -> bool {
    let branch = request.top_via().and_then(|v| v.branch.as_deref());
    branch.is_some_and(|b| b.starts_with(MAGIC_COOKIE))
}

/// The To tag of a stateless answer: the same for every retransmission of the request
/// (RFC 3261 §8.2.6.2), derived from its branch.
fn stateless_tag(request: &Request) -> String {
    use sha2::{Digest, Sha256};
    let branch = request.top_via().and_then(|v| v.branch.as_deref()).unwrap_or_default();
    let digest = Sha256::digest(branch.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// What the guard counts a new request as.
fn request_kind(request: &Request) -> RequestKind {
    match request.method {
        Method::Invite => RequestKind::Invite,
        Method::Options => RequestKind::Options,
        _ => RequestKind::Other,
    }
}

/// One front-door worker: decides the work of its queue until the gateway is gone.
async fn work(gateway: std::sync::Weak<Gateway>, mut queue: mpsc::Receiver<Work>) {
    while let Some(work) = queue.recv().await {
        let Some(gateway) = gateway.upgrade() else { return };
        match work {
            Work::Datagram(bytes, source) => {
                let incoming = Incoming { message: msg::parse_bytes(bytes), source };
                gateway.on_incoming(incoming, Turn::Worker);
            }
            Work::Request(request, source) => gateway.decide(*request, source),
        }
    }
}

/// Where a message is being handled: a receive loop or connection task hands the requests of
/// new calls to a worker; a worker decides them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Receiver,
    Worker,
}

/// The transports' sink: a weak handle, so that the gateway (which owns the transports) can be
/// dropped.
struct Front(std::sync::Weak<Gateway>);

impl Sink for Front {
    fn deliver(&self, incoming: Incoming) {
        if let Some(gateway) = self.0.upgrade() {
            gateway.on_incoming(incoming, Turn::Receiver);
        }
    }

    fn deliver_datagram(&self, data: &[u8], source: Source) {
        if let Some(gateway) = self.0.upgrade() {
            gateway.on_datagram(data, source);
        }
    }
}

impl Gateway {
    /// The sink to build the transports with. Starts the front-door workers: call it inside
    /// the runtime.
    pub fn sink(self: &Arc<Self>) -> Arc<dyn Sink> {
        self.workers.get_or_init(|| {
            let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
            let queues = (0..n)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(WORK_QUEUE);
                    tokio::spawn(work(Arc::downgrade(self), rx));
                    tx
                })
                .collect();
            Workers { queues, hasher: std::hash::RandomState::new() }
        });
        Arc::new(Front(Arc::downgrade(self)))
    }

    /// A request whose Call-ID no call has, in its receive loop: to its worker, if it gets an
    /// answer at all (the per-source guard is asked here, so a flood is dropped before it
    /// queues).
    fn to_worker(self: &Arc<Self>, request: Request, source: Source) {
        if !self.answerable(&request, &source) {
            return;
        }
        let (Some(workers), Some(call_id)) = (self.workers.get(), request.call_id()) else {
            return self.decide(request, source);
        };
        if workers
            .queue(call_id.as_bytes())
            .try_send(Work::Request(Box::new(request), source))
            .is_err()
        {
            self.services.metrics.sip_queue_drop("front_door");
            tracing::debug!("front-door queue full; dropping a request (the peer retransmits)");
        }
    }

    /// Whether a request no call has is taken at all: an ACK always (it is never answered: it
    /// costs nothing), anything else when the per-source guard admits its source.
    fn answerable(&self, request: &Request, source: &Source) -> bool {
        request.method == Method::Ack || self.admitted(source, request_kind(request))
    }

    /// Hands a request to its call's queue; a full queue drops it (the peer retransmits).
    fn to_call(&self, tx: &mpsc::Sender<CallInput>, request: Request, source: Source) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            tx.try_send(CallInput::Request(Box::new((request, source))))
        {
            self.services.metrics.sip_queue_drop("call");
            tracing::debug!("call queue full; dropping a request (the peer retransmits)");
        }
    }

    /// A worker's turn at a request: to its call if one started meanwhile (an earlier message
    /// of the same Call-ID, decided just before), else decided.
    fn decide(self: &Arc<Self>, request: Request, source: Source) {
        match request.call_id().and_then(|c| self.services.call_for(c)) {
            Some(tx) => self.to_call(&tx, request, source),
            None => self.handle_new_request(request, source),
        }
    }

    /// A datagram in its receive loop: parsed here when a call has its Call-ID, else handed
    /// to a worker unparsed (see [`Workers`]).
    fn on_datagram(self: &Arc<Self>, data: &[u8], source: Source) {
        let call_id = msg::scan_call_id(data);
        let known = call_id
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| self.services.call_for(c));
        let workers = match (known, self.workers.get()) {
            (None, Some(workers)) if data.len() <= msg::MAX_MESSAGE_SIZE => workers,
            _ => {
                return self
                    .on_incoming(Incoming { message: msg::parse(data), source }, Turn::Receiver);
            }
        };
        let queue = match call_id {
            Some(call_id) => workers.queue(call_id),
            None => workers.queue(source.remote),
        };
        if queue.try_send(Work::Datagram(bytes::Bytes::copy_from_slice(data), source)).is_err() {
            self.services.metrics.sip_queue_drop("front_door");
            tracing::debug!("front-door queue full; dropping a datagram (the peer retransmits)");
        }
    }

    fn on_incoming(self: &Arc<Self>, incoming: Incoming, turn: Turn) {
        let this = self;
        let Incoming { message, source } = incoming;
        let transport = source.protocol.as_str();
        match message {
            Err(e) => {
                this.services.metrics.sip_message(transport, "malformed");
                tracing::debug!(remote = %source.remote, status = e.status, detail = e.detail, "malformed message");
                if let Some(partial) = e.partial
                    && partial.method != Method::Ack
                    && this.admitted(&source, RequestKind::Other)
                {
                    let mut response = Response::to_request(
                        &partial,
                        e.status,
                        msg::reason_phrase(e.status),
                        Some(&stateless_tag(&partial)),
                    );
                    response.headers.push(name::WARNING, format!("399 trunkline \"{}\"", e.detail));
                    this.reply(&source, response);
                }
            }
            Ok(Message::Request(request)) => {
                this.services.metrics.sip_message(transport, "request");
                let call = request.call_id().and_then(|c| this.services.call_for(c));
                match call {
                    Some(tx) => this.to_call(&tx, request, source),
                    None if turn == Turn::Receiver => this.to_worker(request, source),
                    None if this.answerable(&request, &source) => {
                        this.handle_new_request(request, source)
                    }
                    None => {}
                }
            }
            Ok(Message::Response(response)) => {
                this.services.metrics.sip_message(transport, "response");
                if let Some(tx) = response.call_id().and_then(|c| this.services.call_for(c)) {
                    let _ = tx.try_send(CallInput::Response(Box::new((response, source))));
                }
            }
        }
    }
}

/// The call API's side of the gateway (`observe::api::CallControl`): calls placed by
/// `POST /v1/calls` go through the same checks as an agent's INVITE (`config::outbound`, the
/// trunk's codecs and limits), then `call::placed` dials the carrier and, on its answer, the
/// agent runtime.
struct PlacedCallControl(Arc<Gateway>);

impl Gateway {
    /// What the call API (`observe::api`) drives.
    pub fn call_control(self: &Arc<Self>) -> Arc<dyn CallControl> {
        Arc::new(PlacedCallControl(self.clone()))
    }

    /// `POST /v1/calls`: checked, admitted and started, or refused with a stable code.
    fn place(self: &Arc<Self>, request: NewCall) -> Result<CallView, ApiError> {
        let refused = |rule: RefusalRule, error: ApiError| {
            self.services.metrics.outbound_refused(rule.status(), rule.as_str());
            Err(error)
        };
        if self.draining.load(Ordering::Relaxed) {
            let error = ApiError::new(ErrorCode::Draining, "the gateway is shutting down")
                .with_retry_after(30);
            return refused(RefusalRule::Draining, error);
        }
        let config = &self.services.config;
        let (table, config_hash) = {
            let snapshot = self.snapshot.borrow();
            (snapshot.table.clone(), snapshot.hash.clone())
        };
        let attempt = OutboundAttempt {
            trunk_header: Some(request.trunk.as_str()),
            trunk_param: None,
            to: &request.to,
            agent: Some(request.agent.as_str()),
            caller_id: request.caller_id.as_deref(),
        };
        let decision = outbound::decide(&table, &attempt);
        let mut route = match decision.outcome {
            Ok(route) => route,
            Err(refusal) => {
                let code = match refusal.rule {
                    RefusalRule::UnknownTrunk => ErrorCode::UnknownTrunk,
                    RefusalRule::AmbiguousTrunk => ErrorCode::AmbiguousTrunk,
                    RefusalRule::AgentNotAllowed => ErrorCode::AgentNotAllowed,
                    RefusalRule::CallerIdNotAllowed => ErrorCode::CallerIdNotAllowed,
                    RefusalRule::DialedNumberInvalid => ErrorCode::BadNumber,
                    _ => ErrorCode::BadRequest,
                };
                let error = ApiError::new(code, refusal.message.clone());
                return refused(refusal.rule, error);
            }
        };
        let Some(agent_uri) = request.agent_uri.clone().or_else(|| config.agent_uri.clone()) else {
            return Err(ApiError::new(
                ErrorCode::NoAgentUri,
                "name the agent runtime: agentUri, or the gateway's --agent-uri",
            ));
        };
        let agent = match SipDestination::parse(&agent_uri) {
            Ok(agent) => agent,
            Err(e) => return Err(ApiError::new(ErrorCode::BadRequest, format!("agentUri: {e}"))),
        };
        let Some((sdp, negotiated)) = codec::gateway_offer(&route.trunk.codecs) else {
            let error = ApiError::new(ErrorCode::NoCommonCodec, "the trunk allows no codec");
            return refused(RefusalRule::NoCommonCodec, error);
        };
        let offer = MediaOffer { sdp, negotiated, delayed: false };
        let trunk_key = format!("outbound:{}", route.trunk.name);
        let permit =
            match self.services.admission.try_admit(&trunk_key, route.trunk.limits, Instant::now())
            {
                Ok(permit) => permit,
                Err(over) => {
                    let seconds = u32::try_from(over.retry_after.as_secs().max(1)).unwrap_or(1);
                    let error = ApiError::new(
                        ErrorCode::LimitReached,
                        format!("the trunk is at its {}", over.limit.rule().as_str()),
                    )
                    .with_retry_after(seconds);
                    return refused(over.limit.rule(), error);
                }
            };
        let services = &self.services;
        services.rotate(&mut route);
        let agent_local = services
            .local_address(Zone::Internal, agent.transport)
            .or_else(|| services.local_address(Zone::Internal, Protocol::Udp));
        let carrier_local = services
            .local_address(Zone::Carrier, route.first_host().transport)
            .or_else(|| services.local_address(Zone::Carrier, Protocol::Udp));
        let (Some(agent_local), Some(carrier_local)) = (agent_local, carrier_local) else {
            return Err(ApiError::new(ErrorCode::Unavailable, "the gateway has no listeners yet"));
        };
        let mut ids = Ids::random();
        let (placed, contract) = placed::setup(
            &mut ids,
            &config.header_prefix,
            &request,
            &route,
            &agent,
            (agent_local, carrier_local),
            offer,
        );
        let mut placed = placed;
        let context =
            services.transfer_context(&table, &route.trunk.name.namespace, &request.agent);
        placed.transfer = Some(context);
        let id = placed.session_id.clone();
        let view = CallView {
            id: id.clone(),
            state: CallState::Dialing,
            direction: Direction::Outbound.as_str().to_string(),
            trunk: route.trunk.name.to_string(),
            to: route.number.to_string(),
            caller_id: route.caller_id.to_string(),
            agent: request.agent.clone(),
            legs: Vec::new(),
            created_at: placed::now_rfc3339(),
            answered_at: None,
            ended_at: None,
            outcome: None,
            reason: None,
        };
        let mut call_config = services.call_config();
        if let Some(seconds) = request.ring_timeout_seconds {
            call_config.ring_timeout = std::time::Duration::from_secs(u64::from(seconds));
        }
        let (call, first) = Call::place(Instant::now(), call_config, ids, placed);
        let (tx, rx) = mpsc::channel(64);
        let watch = Arc::new(PlacedCall::new(view, tx.clone()));
        watch.observe(&call);
        services.placed.insert(&id, watch.clone());
        services.call_started();
        let labels = CallLabels {
            direction: Direction::Outbound,
            trunk: route.trunk.name.to_string(),
            number: route.number.to_string(),
            agent: request.agent.clone(),
        };
        let active = services.metrics.call_started(&labels.trunk, labels.direction);
        tracing::info!(session = %id, trunk = %labels.trunk, number = %labels.number, agent = %labels.agent, "placing a call for the call API");
        let seed = super::record::Seed {
            gateway: &config.gateway_name,
            config: Some(config_hash),
            session_id: &id,
            direction: Direction::Outbound,
            trunk: labels.trunk.clone(),
            numbers: super::record::outbound_numbers(
                &route,
                request.caller_id.as_deref().unwrap_or_default(),
                &request.to,
            ),
            agent: Some(request.agent.clone()),
            agent_reason: Some("named"),
            transport: route.first_host().transport.as_str(),
            source: None,
        };
        let record = super::record::seed(seed, Some(&contract));
        let media_allowed = route.trunk.media.allowed_addresses.clone();
        let placed = Some(watch.clone());
        let held = Held { permit, active, labels, table, watch: placed, record, media_allowed };
        tokio::spawn(Box::pin(driver::run(services.clone(), call, first, held, (tx, rx))));
        Ok(watch.view())
    }
}

impl CallControl for PlacedCallControl {
    fn originate(&self, request: NewCall) -> Result<CallView, ApiError> {
        self.0.place(request)
    }

    fn get(&self, id: &str) -> Option<CallView> {
        self.0.services.placed.get(id).map(|c| c.view())
    }

    fn hang_up(&self, id: &str) -> Result<CallView, ApiError> {
        let call = self
            .0
            .services
            .placed
            .get(id)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no call {id}")))?;
        call.hang_up();
        Ok(call.view())
    }
}
