//! The task that runs one [`Call`] over the world: it feeds the call the messages the gateway
//! routes to it (by Call-ID), the clock and the relay's reports, and carries out the call's
//! actions — sends on the transports, name lookups (`sip::resolve`, cached; the name found is
//! given to the transports for TLS), the RTP relay, metrics and logs, and the call's slot.
//! Everything the call decides is in `call::machine`; this file decides nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::RoutingTable;
use crate::media::relay::{Leg as RelaySide, MediaTimeout, Relay, RelayConfig, SourceGuard};
use crate::observe::metrics::{ActiveCallGuard, Direction};
use crate::sip::msg::Message;

use super::limits::CallPermit;
use super::machine::{Action, Call, Ended, Ids, MediaEvent, Record, RelayUpdate};
use super::placed::PlacedCall;
use super::record;
use super::services::{CallInput, CallServices};
use super::transfer;
use crate::observe::metrics::GatewayMetrics;
use crate::observe::record::{InFlight, KIND_ANSWERED, Outbox, RecordFile, SessionRecord};

/// What the call holds for its life beside the machine: the admission slot, the gauge of
/// active calls, what it is labelled with in metrics and logs, and the table it started with
/// (later reloads do not change a call in progress).
pub struct Held {
    pub permit: CallPermit,
    pub active: ActiveCallGuard,
    pub labels: CallLabels,
    pub table: Arc<RoutingTable>,
    /// A call placed through the call API: its view, refreshed after every step.
    pub watch: Option<Arc<PlacedCall>>,
    /// The call's session record as known at admission; written when the call ends.
    pub record: SessionRecord,
    /// The trunk's media allowlist (`spec.media.allowedAddresses`): more sources the carrier's
    /// side of the relay takes RTP from.
    pub media_allowed: Vec<ipnet::IpNet>,
}

/// What a call is known by in metrics and logs, the same in both directions.
#[derive(Clone, Debug)]
pub struct CallLabels {
    pub direction: Direction,
    /// `namespace/name` of the trunk the call was admitted on.
    pub trunk: String,
    /// The dialed number (E.164).
    pub number: String,
    /// The agent; empty when an outbound call names none.
    pub agent: String,
}

type MediaTimeoutFuture = Pin<Box<dyn Future<Output = MediaTimeout> + Send>>;

struct Driver {
    gw: Arc<CallServices>,
    call: Call,
    rx: mpsc::Receiver<CallInput>,
    tx: mpsc::Sender<CallInput>,
    relay: Option<Relay>,
    media_timeout: Option<MediaTimeoutFuture>,
    permit: Option<CallPermit>,
    active: Option<ActiveCallGuard>,
    labels: CallLabels,
    watch: Option<Arc<PlacedCall>>,
    /// The table the call started with: its transfers are decided and dialed with it.
    table: Arc<RoutingTable>,
    /// A bridged transfer's slot on its destination's trunk, while the transfer is tried and,
    /// once it succeeded, until the call ends.
    transfer_permit: Option<CallPermit>,
    /// The session record, until it is written at the end.
    record: Option<Box<SessionRecord>>,
    /// The Call-IDs registered for this call, unregistered when it is done.
    call_ids: Vec<String>,
    /// See [`Held::media_allowed`].
    media_allowed: Vec<ipnet::IpNet>,
    /// The media allowlist of a bridged transfer's trunk, for its relay ports' guard.
    transfer_media_allowed: Vec<ipnet::IpNet>,
}

/// Runs a call to its end. `first`: the actions [`Call::start`] returned.
///
/// The future is as large as its largest state, and a held call pays for that size the whole
/// time: so the driver's state is built here, outside the future, and kept in it once (an
/// `async fn` would also keep its arguments, the call among them, beside the moved copies);
/// what runs briefly or rarely in [`Driver::perform`] (a send, a name lookup) is boxed there.
/// `held_call_future_stays_small` guards the size.
pub fn run(
    gw: Arc<CallServices>,
    call: Call,
    first: Vec<Action>,
    held: Held,
    (tx, rx): (mpsc::Sender<CallInput>, mpsc::Receiver<CallInput>),
) -> impl Future<Output = ()> + Send + 'static {
    let Held { permit, active, labels, table, watch, record, media_allowed } = held;
    let call_ids = call.call_ids().take(1).map(str::to_string).collect();
    // Without a sink the record is never written: the call need not carry it.
    let wanted = gw.config.records.is_some() || gw.config.outbox.is_some();
    let d = Driver {
        gw,
        call,
        rx,
        tx,
        relay: None,
        media_timeout: None,
        permit: Some(permit),
        active: Some(active),
        labels,
        watch,
        table,
        transfer_permit: None,
        record: wanted.then(|| Box::new(record)),
        call_ids,
        media_allowed,
        transfer_media_allowed: Vec::new(),
    };
    d.run(first)
}

async fn wait_media(timeout: &mut Option<MediaTimeoutFuture>) -> MediaTimeout {
    match timeout {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// The call's loop: what comes in (a message, the clock, the relay's timeout) goes to the
    /// call, and what the call answers is carried out.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` keeps `self` twice")]
    fn run(mut self, first: Vec<Action>) -> impl Future<Output = ()> + Send + 'static {
        // An async block, not an `async fn`: `self` is kept once, in place.
        async move {
            self.perform(first).await;
            self.observe();
            loop {
                if self.call.is_done(Instant::now()) {
                    break;
                }
                let deadline = self.call.next_deadline();
                let wake = tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now));
                let actions = tokio::select! {
                    timeout = wait_media(&mut self.media_timeout) => {
                        self.media_timeout = None;
                        let event =
                            MediaEvent::Timeout { silent: timeout.silent, after: timeout.after };
                        self.call.on_media_event(Instant::now(), event)
                    }
                    input = self.rx.recv() => match input {
                        Some(CallInput::Request(input)) => {
                            let (r, source) = *input;
                            self.call.on_message(Instant::now(), Message::Request(r), source)
                        }
                        Some(CallInput::Response(input)) => {
                            let (r, source) = *input;
                            self.call.on_message(Instant::now(), Message::Response(r), source)
                        }
                        Some(CallInput::HangUp(reason)) => {
                            self.call.hang_up(Instant::now(), reason)
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(wake), if deadline.is_some() => {
                        self.call.on_timer(Instant::now())
                    }
                };
                self.perform(actions).await;
                self.observe();
            }
            if self.permit.is_some() {
                // The task stopped before the call said it ended (its channel closed): free
                // the slot.
                let ended = Ended {
                    outcome: None,
                    duration: Duration::ZERO,
                    reason: None,
                    hung_up_by: None,
                };
                self.ended(ended);
            }
            for call_id in &self.call_ids {
                self.gw.unregister_call(call_id);
            }
        }
    }

    /// A placed call's view follows the call.
    fn observe(&self) {
        if let Some(watch) = &self.watch {
            watch.observe(&self.call);
        }
    }

    /// Carries out actions in order; what the call answers to them is carried out after.
    async fn perform(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let more = match action {
                Action::Send { target, bytes, client, .. } => {
                    let sent = match self.gw.transports.get() {
                        // Boxed: a stream's send (a connection to open, a full queue to wait
                        // on) is a large future, and the call's would be as large for its life.
                        Some(t) => Box::pin(t.send_shared(&target, &bytes)).await,
                        None => Err(std::io::Error::other("transports not attached")),
                    };
                    match (sent, client) {
                        (Err(e), Some(key)) => {
                            tracing::debug!(remote = %target.remote, error = %e, "send failed");
                            self.call.on_send_error(Instant::now(), &key)
                        }
                        _ => Vec::new(),
                    }
                }
                Action::Listen { call_id } => {
                    self.gw.register_call(&call_id, self.tx.clone());
                    self.call_ids.push(call_id);
                    Vec::new()
                }
                Action::Resolve { leg, host, port } => {
                    let address = Box::pin(self.gw.resolver.lookup(&host, port)).await;
                    if let (Ok(address), Some(t)) = (&address, self.gw.transports.get()) {
                        // A TLS connection to it checks the certificate against this name.
                        t.name_peer(*address, &host);
                    }
                    self.call.on_resolved(Instant::now(), leg, address)
                }
                Action::ResolveSrv { leg, service, host, port } => {
                    let targets = Box::pin(self.gw.srv_targets(&service, &host, port)).await;
                    let (first, first_port) =
                        targets.first().cloned().unwrap_or_else(|| (host.clone(), port));
                    let address = Box::pin(self.gw.resolver.lookup(&first, first_port)).await;
                    if let (Ok(address), Some(t)) = (&address, self.gw.transports.get()) {
                        // TLS checks the certificate against the target's name.
                        t.name_peer(*address, &first);
                    }
                    self.call.on_srv_resolved(Instant::now(), leg, targets, address)
                }
                Action::StartRelay { a, b, media_timeout, max_hold, peers } => {
                    let config = RelayConfig { media_timeout, max_hold, ..RelayConfig::default() };
                    let guards = [RelaySide::A, RelaySide::B].map(|side| {
                        let peer = peers[usize::from(side == RelaySide::B)];
                        SourceGuard {
                            strict: peer.carrier,
                            signalling: peer.signalling,
                            allowed: if peer.carrier { self.media_allowed.clone() } else { vec![] },
                            rejected: Some(
                                self.gw.metrics.rtp_rejected(&self.labels.trunk, side.as_str()),
                            ),
                        }
                    });
                    let event = match self.gw.start_relay(a, b, config, guards) {
                        Ok(relay) => {
                            let event = MediaEvent::Started {
                                a: relay.local(RelaySide::A).port(),
                                b: relay.local(RelaySide::B).port(),
                            };
                            self.media_timeout = Some(Box::pin(relay.timeout()));
                            self.relay = Some(relay);
                            event
                        }
                        Err(e) => MediaEvent::StartFailed {
                            status: e.status_code(),
                            reason: e.to_string(),
                        },
                    };
                    self.call.on_media_event(Instant::now(), event)
                }
                Action::UpdateRelay(update) => {
                    if let Some(relay) = &mut self.relay {
                        match update {
                            RelayUpdate::Remote { side, remote } => {
                                relay.update_remote(side, remote)
                            }
                            RelayUpdate::Hold(hold) => relay.set_hold(hold),
                            RelayUpdate::SpareRemote(remote) => relay.update_spare_remote(remote),
                            RelayUpdate::PromoteSpare(remote) => {
                                relay.promote_spare(remote);
                            }
                            RelayUpdate::DropSpare => relay.drop_spare(),
                            RelayUpdate::Srtp { side, keys } => {
                                relay.set_srtp(side, keys.map(|k| *k))
                            }
                            RelayUpdate::SpareSrtp(keys) => relay.set_spare_srtp(keys.map(|k| *k)),
                            RelayUpdate::Signalling { side, ip } => {
                                relay.update_signalling(side, ip)
                            }
                        }
                    }
                    Vec::new()
                }
                Action::PrepareTransfer(request) => {
                    let mut ids = Ids::random();
                    let prepared = transfer::prepare(&self.gw, &self.table, &mut ids, &request);
                    let dial = prepared.map(|p| {
                        self.transfer_permit = p.permit;
                        self.transfer_media_allowed = p.media_allowed;
                        p.dial
                    });
                    if let Err((status, why)) = &dial {
                        tracing::info!(session = %self.call.session_id(), destination = %request.destination.name, status, why = %why, "transfer leg not dialed");
                    }
                    self.call.on_transfer_dial(Instant::now(), dial)
                }
                Action::StartTransferMedia { bind, peer } => {
                    // Counted as the transfer leg's on the call's trunk, before and after the
                    // spare takes side B's place.
                    let guard = SourceGuard {
                        strict: peer.carrier,
                        signalling: peer.signalling,
                        allowed: if peer.carrier {
                            self.transfer_media_allowed.clone()
                        } else {
                            vec![]
                        },
                        rejected: Some(
                            self.gw.metrics.rtp_rejected(&self.labels.trunk, "transfer"),
                        ),
                    };
                    let event = match &mut self.relay {
                        Some(relay) => match self.gw.add_transfer_ports(relay, bind, guard) {
                            Ok(local) => MediaEvent::TransferMediaStarted { port: local.port() },
                            Err(e) => MediaEvent::TransferMediaFailed { reason: e.to_string() },
                        },
                        None => MediaEvent::TransferMediaFailed { reason: "no relay".into() },
                    };
                    self.call.on_media_event(Instant::now(), event)
                }
                Action::Record(Record::Answered { setup, codec, srtp, carrier }) => {
                    if let Some(r) = &mut self.record {
                        let srtp = srtp.map(|s| s.as_str());
                        record::answered(
                            r,
                            setup,
                            codec.map(|c| c.as_str()),
                            srtp,
                            carrier.as_ref(),
                        );
                        let config = &self.gw.config;
                        let wanted = config.records.as_ref().is_some_and(|f| f.answered)
                            || config.outbox.as_ref().is_some_and(|o| o.answered);
                        if wanted {
                            let first = record::at_answer(r, &self.call);
                            let sinks = (config.records.clone(), config.outbox.clone());
                            let in_flight = InFlight::new(&self.gw.records_in_flight);
                            deliver_record(sinks, &self.gw.metrics, &first, in_flight);
                        }
                    }
                    self.gw.metrics.setup_latency(&self.labels.trunk, setup.as_secs_f64());
                    Vec::new()
                }
                Action::Record(Record::AuthRefused { role, .. }) => {
                    self.gw.metrics.peer_auth_refused(&self.labels.trunk, role.as_str());
                    Vec::new()
                }
                Action::Record(Record::DialogRefused(m)) => {
                    self.gw.metrics.dialog_refused(m.label());
                    Vec::new()
                }
                Action::Record(Record::Transfer(t)) => {
                    if t.outcome != "completed" {
                        // A failed transfer gives its trunk slot back.
                        self.transfer_permit = None;
                    }
                    self.gw.metrics.transfer(&t.destination, t.mode, t.outcome);
                    tracing::info!(
                        session = %self.call.session_id(), destination = %t.destination,
                        mode = t.mode, outcome = t.outcome, status = t.status,
                        seconds = t.settled.saturating_sub(t.asked).as_secs_f64(), "transfer"
                    );
                    Vec::new()
                }
                Action::End(ended) => {
                    self.ended(ended);
                    Vec::new()
                }
            };
            queue.extend(more);
        }
    }

    /// The call is over: its slot and gauge go, its outcome is counted, the relay stops (its
    /// ports go back to the pool once the relay task ends).
    fn ended(&mut self, ended: Ended) {
        if let Some(watch) = &self.watch {
            watch.observe(&self.call);
            watch.ended(&ended);
        }
        let wanted = self.gw.config.records.is_some() || self.gw.config.outbox.is_some();
        let mut session_record = self.record.take().filter(|_| wanted).map(|r| *r);
        if let Some(r) = &mut session_record {
            record::ended(r, &self.call, &ended);
        }
        self.permit = None;
        self.transfer_permit = None;
        self.active = None;
        self.media_timeout = None;
        self.gw.call_ended();
        let trunk = self.labels.trunk.clone();
        let session = self.call.session_id().to_string();
        let direction = self.labels.direction.as_str();
        if let Some(outcome) = ended.outcome {
            self.gw.metrics.call_finished(&trunk, self.labels.direction, outcome);
            tracing::info!(
                session = %session, direction, trunk = %trunk, agent = %self.labels.agent,
                number = %self.labels.number, outcome = ?outcome,
                seconds = ended.duration.as_secs_f64(), "call ended"
            );
        }
        let sinks = (self.gw.config.records.clone(), self.gw.config.outbox.clone());
        let record_metrics = self.gw.metrics.clone();
        let in_flight = session_record.as_ref().map(|_| InFlight::new(&self.gw.records_in_flight));
        let write = move |r: Option<SessionRecord>| {
            if let (Some(r), Some(in_flight)) = (r, in_flight) {
                deliver_record(sinks, &record_metrics, &r, in_flight);
            }
        };
        let Some(relay) = self.relay.take() else { return write(session_record) };
        let metrics = self.gw.metrics.clone();
        let reason = ended.reason;
        tokio::spawn(async move {
            let stats = relay.stop().await;
            if let Some(r) = &mut session_record {
                record::rtp(r, &stats);
            }
            write(session_record);
            for side in [RelaySide::A, RelaySide::B] {
                let rtp_in = stats.leg(side).rtp_in;
                metrics.rtp_leg_finished(
                    &trunk,
                    side.as_str(),
                    rtp_in.packets,
                    rtp_in.bytes,
                    rtp_in.lost,
                    rtp_in.jitter_ms / 1000.0,
                );
            }
            // After a bridged transfer, side B is the destination's and the agent's figures
            // are the ones side B had before.
            let agent = stats.replaced.unwrap_or(stats.b);
            let transfer = stats.replaced.map(|_| stats.b.rtp_in.packets);
            tracing::info!(
                session = %session, direction,
                carrier_packets = stats.a.rtp_in.packets, carrier_lost = stats.a.rtp_in.lost,
                carrier_jitter_ms = stats.a.rtp_in.jitter_ms,
                agent_packets = agent.rtp_in.packets, agent_lost = agent.rtp_in.lost,
                agent_jitter_ms = agent.rtp_in.jitter_ms,
                transfer_packets = transfer,
                reason = reason.as_deref().unwrap_or("hang-up"),
                "call media"
            );
        });
    }
}

/// Hands a record to the sinks that take its kind: every sink takes the final record, only the
/// ones that asked for it (`--records-file-answered`, `--records-webhook-answered`) the
/// answered one.
fn deliver_record(
    (file, outbox): (Option<Arc<RecordFile>>, Option<Arc<Outbox>>),
    metrics: &GatewayMetrics,
    r: &SessionRecord,
    in_flight: InFlight,
) {
    let answered = r.kind == KIND_ANSWERED;
    if let Some(sink) = file.filter(|f| !answered || f.answered) {
        match sink.write(r) {
            Ok(()) => metrics.session_record("file", "written"),
            Err(e) => {
                metrics.session_record("file", "failed");
                tracing::warn!(session = %r.session_id, kind = %r.kind, error = %e, "session record not written");
            }
        }
    }
    if let Some(outbox) = outbox.filter(|o| !answered || o.answered) {
        outbox.send(r, in_flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, D, E, F>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn held_call_future_stays_small() {
        // A call task's future is allocated at the size of its largest state for the call's
        // whole life: 12,432 bytes before the set-up's and the sends' states were taken out of
        // it (docs/benchmarks.md, "Concurrent calls and memory per call").
        let size = future_size(run);
        assert!(size <= 2_560, "the call task's future grew to {size} bytes");
    }

    #[test]
    fn a_call_queue_slot_stays_small() {
        // Every call's queue holds 32 slots from its first message on: 104 bytes a slot when
        // the message's source was beside its box.
        let size = std::mem::size_of::<CallInput>();
        assert!(size <= 24, "a call's queue slot grew to {size} bytes");
    }
}
