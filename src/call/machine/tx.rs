//! The transactions of a call: the sans-IO machines of `sip::transaction` with what the call
//! needs beside them (the request, where responses go, why we sent it), keyed by the typed keys
//! of `sip::transaction`, and the 2xx responses a UAS core retransmits until their ACK; the
//! call's plumbing to them (sending in a new transaction, responding, timers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::msg::{self, DialogHeaders, Method, Request, Response, name};
use crate::sip::transaction::{
    ClientAction, ClientInvite, ClientKey, ClientNonInvite, Reliability, ServerAction,
    ServerInvite, ServerKey, ServerNonInvite, Timers, client_key, server_key,
};
use crate::sip::transport::{Protocol, Source, Target};

use super::Call;
use super::leg::LegId;

pub fn reliability(protocol: Protocol) -> Reliability {
    if protocol.is_reliable() { Reliability::Reliable } else { Reliability::Unreliable }
}

/// The server-transaction key of a request, `None` without an RFC 3261 branch.
pub fn key_of_request(req: &Request) -> Option<ServerKey> {
    let via = req.top_via()?;
    server_key(via.branch.as_deref()?, &via.sent_by, req.method.as_str())
}

/// The client-transaction key of a response or of a request we send.
pub fn key_of_response(resp: &Response) -> Option<ClientKey> {
    let branch = resp.top_via()?.branch.as_deref()?;
    let (_, method) = resp.cseq()?;
    Some(client_key(branch, method.as_str()))
}

/// A request we answer.
#[derive(Debug)]
pub struct ServerTx {
    pub leg: LegId,
    /// The request, until it has its final response (responses are built from it; the
    /// transaction then lingers only to absorb retransmissions). Shared with the leg for the
    /// origin's INVITE (one copy of it, not two).
    pub request: Option<Arc<Request>>,
    /// The request's CSeq number (an ACK that reuses an INVITE's branch is matched by it).
    pub cseq: u32,
    pub target: Target,
    pub machine: ServerMachine,
    /// The last response sent, as sent (retransmitted on a retransmitted request).
    pub last_response: Option<Bytes>,
}

impl ServerTx {
    pub fn new(leg: LegId, request: Arc<Request>, target: Target, machine: ServerMachine) -> Self {
        let cseq = request.cseq().map(|(n, _)| n).unwrap_or_default();
        ServerTx { leg, request: Some(request), cseq, target, machine, last_response: None }
    }
}

#[derive(Debug)]
pub enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerMachine {
    pub fn new(now: Instant, invite: bool, rel: Reliability, timers: Timers) -> ServerMachine {
        if invite {
            ServerMachine::Invite(ServerInvite::new(now, rel, timers).0)
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(now, rel, timers).0)
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            ServerMachine::Invite(m) => m.next_deadline(),
            ServerMachine::NonInvite(m) => m.next_deadline(),
        }
    }

    pub fn on_timeout(&mut self, now: Instant) -> Vec<ServerAction> {
        match self {
            ServerMachine::Invite(m) => m.on_timeout(now),
            ServerMachine::NonInvite(m) => m.on_timeout(now),
        }
    }

    pub fn on_retransmission(&mut self, now: Instant) -> Vec<ServerAction> {
        match self {
            ServerMachine::Invite(m) => m.on_request_retransmission(now),
            ServerMachine::NonInvite(m) => m.on_request_retransmission(now),
        }
    }

    pub fn on_tu_response(&mut self, now: Instant, status: u16) -> Vec<ServerAction> {
        match self {
            ServerMachine::Invite(m) => m.on_tu_response(now, status),
            ServerMachine::NonInvite(m) => m.on_tu_response(now, status),
        }
    }
}

/// Why we sent a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The INVITE that makes a UAC leg.
    Invite,
    /// A request relayed from the other leg's server transaction.
    Relay(ServerKey),
    /// Our own BYE or CANCEL.
    Own,
    /// A transfer passed on to the caller's side (Refer mode): its answer is the agent's news.
    TransferRefer,
    /// The gateway's session refresh (RFC 4028): its answer keeps the leg's session or ends
    /// the call.
    Refresh,
}

/// A request we sent.
#[derive(Debug)]
pub struct ClientTx {
    pub leg: LegId,
    pub method: Method,
    /// The request, until a final response: then only an INVITE's that was refused is kept
    /// (its ACK is built from it, RFC 3261 §17.1.1.3). A 2xx's ACK comes from the dialog.
    pub request: Option<Request>,
    /// The request as sent (and retransmitted), until a final response.
    pub bytes: Bytes,
    pub target: Target,
    pub machine: ClientMachine,
    pub purpose: Purpose,
}

impl ClientTx {
    /// A final response came: the request is not sent again (the transaction lingers only to
    /// absorb the response's retransmissions), so what is not needed for them goes.
    fn answered(&mut self, status: u16) {
        self.bytes = Bytes::new();
        if !(self.method == Method::Invite && status >= 300) {
            self.request = None;
        }
    }
}

#[derive(Debug)]
pub enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientMachine {
    /// The machine for a new request and its first actions.
    pub fn new(
        now: Instant,
        invite: bool,
        rel: Reliability,
        timers: Timers,
    ) -> (ClientMachine, Vec<ClientAction>) {
        if invite {
            let (m, a) = ClientInvite::new(now, rel, timers);
            (ClientMachine::Invite(m), a)
        } else {
            let (m, a) = ClientNonInvite::new(now, rel, timers);
            (ClientMachine::NonInvite(m), a)
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            ClientMachine::Invite(m) => m.next_deadline(),
            ClientMachine::NonInvite(m) => m.next_deadline(),
        }
    }

    pub fn on_timeout(&mut self, now: Instant) -> Vec<ClientAction> {
        match self {
            ClientMachine::Invite(m) => m.on_timeout(now),
            ClientMachine::NonInvite(m) => m.on_timeout(now),
        }
    }

    pub fn on_response(&mut self, now: Instant, status: u16) -> Vec<ClientAction> {
        match self {
            ClientMachine::Invite(m) => m.on_response(now, status),
            ClientMachine::NonInvite(m) => m.on_response(now, status),
        }
    }

    pub fn on_transport_error(&mut self, now: Instant) -> Vec<ClientAction> {
        match self {
            ClientMachine::Invite(m) => m.on_transport_error(now),
            ClientMachine::NonInvite(m) => m.on_transport_error(now),
        }
    }
}

/// A call's transactions (or what it keeps per transaction), by key. A call has a handful at a
/// time (its INVITE's, a BYE, a re-INVITE) and none at all for most of a held call's life, so
/// this is a vector searched in order, grown one slot at a time and let go of when emptied: a
/// hash map's first allocation holds four slots, 1.6-1.8 kB for a call's two INVITEs, and
/// keeps them once they are over.
#[derive(Debug)]
pub struct TxMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for TxMap<K, V> {
    fn default() -> Self {
        TxMap(Vec::new())
    }
}

impl<K: PartialEq, V> TxMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Adds `value` under `key`, or replaces the value there (returned).
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(old) = self.get_mut(&key) {
            return Some(std::mem::replace(old, value));
        }
        self.0.reserve_exact(1);
        self.0.push((key, value));
        None
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        let (_, value) = self.0.remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Slots allocated (the transcript tests check that a held call keeps none).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// A message as sent, kept for its retransmissions: without the spare capacity its printing
/// grew (up to half of it, for the seconds a transaction lasts).
fn kept(mut printed: Vec<u8>) -> Bytes {
    printed.shrink_to_fit();
    Bytes::from(printed)
}

/// The keys of the transactions whose next deadline has come.
fn due<K: Clone + PartialEq, T>(
    map: &TxMap<K, T>,
    now: Instant,
    deadline: impl Fn(&T) -> Option<Instant>,
) -> Vec<K> {
    map.iter()
        .filter(|(_, t)| deadline(t).is_some_and(|d| d <= now))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A 2xx we sent on an INVITE and retransmit until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
pub struct Pending2xx {
    pub leg: LegId,
    pub cseq: u32,
    /// The 2xx as sent.
    pub bytes: Bytes,
    pub target: Target,
    /// Next retransmission (`None` on reliable transports).
    pub next: Option<Instant>,
    pub interval: Duration,
    pub give_up: Instant,
}

impl Call {
    /// Sends a request in a new client transaction.
    pub(super) fn send_client(
        &mut self,
        now: Instant,
        leg: LegId,
        request: Request,
        purpose: Purpose,
    ) {
        let target = self.leg(leg).dialog.target;
        let Some(branch) = request.top_via().and_then(|v| v.branch.as_deref()) else { return };
        let key = client_key(branch, request.method.as_str());
        let invite = request.method == Method::Invite;
        let (machine, actions) =
            ClientMachine::new(now, invite, reliability(target.protocol), self.config.timers);
        let bytes = kept(request.to_bytes());
        let method = request.method.clone();
        let tx = ClientTx { leg, method, request: Some(request), bytes, target, machine, purpose };
        self.clients.insert(key.clone(), tx);
        self.client_actions(now, &key, actions, None);
    }

    pub(super) fn client_actions(
        &mut self,
        now: Instant,
        key: &ClientKey,
        actions: Vec<ClientAction>,
        response: Option<&Response>,
    ) {
        for action in actions {
            match action {
                ClientAction::Send => {
                    if let Some(tx) = self.clients.get(key) {
                        let (leg, target) = (tx.leg, tx.target);
                        let bytes = tx.bytes.clone();
                        self.send(leg, target, bytes, Some(key.clone()));
                    }
                }
                ClientAction::SendAck => {
                    if let (Some(tx), Some(resp)) = (self.clients.get(key), response)
                        && let Some(request) = &tx.request
                    {
                        let ack = non_2xx_ack(request, resp);
                        let (leg, target) = (tx.leg, tx.target);
                        self.send(leg, target, ack.to_bytes().into(), None);
                    }
                }
                ClientAction::Deliver => {
                    if let Some(resp) = response {
                        self.on_client_response(now, key, resp);
                    }
                }
                ClientAction::Timeout => self.on_client_failure(now, key, false),
                ClientAction::TransportError => self.on_client_failure(now, key, true),
                ClientAction::Terminated => {
                    self.clients.remove(key);
                }
            }
        }
        if let Some(resp) = response.filter(|r| r.status >= 200)
            && let Some(tx) = self.clients.get_mut(key)
        {
            tx.answered(resp.status);
        }
    }

    /// Responds in a server transaction; a 2xx to an INVITE is retransmitted until its ACK.
    pub(super) fn respond(&mut self, now: Instant, key: &ServerKey, response: Response) {
        let status = response.status;
        let timers = self.config.timers;
        let Some(tx) = self.servers.get_mut(key) else { return };
        let bytes = kept(response.to_bytes());
        tx.last_response = Some(bytes.clone());
        if status >= 200 {
            tx.request = None;
        }
        let actions = tx.machine.on_tu_response(now, status);
        let is_invite = matches!(tx.machine, ServerMachine::Invite(_));
        if is_invite && (200..300).contains(&status) {
            // RFC 3261 §13.3.1.4: the UAS core retransmits 2xx until the ACK comes.
            let unreliable = !tx.target.protocol.is_reliable();
            let cseq = response.cseq().map(|(n, _)| n).unwrap_or_default();
            self.pending_2xx.push(Pending2xx {
                leg: tx.leg,
                cseq,
                bytes,
                target: tx.target,
                next: unreliable.then(|| now + timers.t1),
                interval: timers.t1,
                give_up: now + timers.t1 * 64,
            });
        }
        self.server_actions(key, actions);
    }

    pub(super) fn server_actions(&mut self, key: &ServerKey, actions: Vec<ServerAction>) {
        for action in actions {
            match action {
                ServerAction::SendLastResponse => {
                    if let Some(tx) = self.servers.get(key)
                        && let Some(bytes) = tx.last_response.clone()
                    {
                        let (leg, target) = (tx.leg, tx.target);
                        self.send(leg, target, bytes, None);
                    }
                }
                ServerAction::DeliverAck => {
                    // An ACK for our 2xx that reused the INVITE's branch.
                    if let Some(tx) = self.servers.get(key) {
                        let (leg, cseq) = (tx.leg, tx.cseq);
                        self.pending_2xx.retain(|p| !(p.leg == leg && p.cseq == cseq));
                    }
                }
                ServerAction::AckTimeout => tracing::debug!("no ACK for a final response"),
                ServerAction::TransportError => tracing::debug!("could not send a response"),
                ServerAction::Terminated => {
                    self.servers.remove(key);
                }
            }
        }
    }

    /// A standard response to the request of server transaction `key`, with our tag.
    pub(super) fn response_for(&self, key: &ServerKey, status: u16) -> Option<Response> {
        let tx = self.servers.get(key)?;
        let request = tx.request.as_ref()?;
        let tag = &self.leg(tx.leg).dialog.local_tag;
        Some(Response::to_request(request, status, msg::reason_phrase(status), Some(tag)))
    }

    pub(super) fn respond_status(&mut self, now: Instant, key: &ServerKey, status: u16) {
        if let Some(mut r) = self.response_for(key, status) {
            r.headers.push(name::SERVER, self.config.user_agent.as_str());
            self.respond(now, key, r);
        }
    }

    /// A stateless answer to a request that has no transaction here.
    pub(super) fn reply_stateless(&mut self, req: &Request, source: &Source, status: u16) {
        let mut r = Response::to_request(req, status, msg::reason_phrase(status), None);
        r.headers.push(name::SERVER, self.config.user_agent.as_str());
        self.send(Call::ORIGIN, source.reply_target(), r.to_bytes().into(), None);
    }

    /// Every timer that is due: transactions, 2xx retransmission, the dialed legs' deadlines.
    pub(super) fn timers_due(&mut self, now: Instant) {
        for key in due(&self.servers, now, |t| t.machine.next_deadline()) {
            if let Some(tx) = self.servers.get_mut(&key) {
                let actions = tx.machine.on_timeout(now);
                self.server_actions(&key, actions);
            }
        }
        for key in due(&self.clients, now, |t| t.machine.next_deadline()) {
            if let Some(tx) = self.clients.get_mut(&key) {
                let actions = tx.machine.on_timeout(now);
                self.client_actions(now, &key, actions, None);
            }
        }
        self.retransmit_2xx(now);
        let due: Vec<LegId> = self
            .legs
            .iter()
            .filter(|l| l.deadline.is_some_and(|d| d <= now))
            .map(|l| l.id)
            .collect();
        for leg in due {
            self.leg_mut(leg).deadline = None;
            self.dialed_deadline(now, leg);
        }
        if self.referring_until().is_some_and(|until| until <= now) {
            self.refer_expired(now);
        }
        if self.state == super::State::Answered && self.ends_at.is_some_and(|end| end <= now) {
            self.duration_reached(now);
        }
        self.sessions_due(now);
    }

    pub(super) fn retransmit_2xx(&mut self, now: Instant) {
        let mut give_up = false;
        let mut resend = Vec::new();
        let t2 = self.config.timers.t2;
        for p in &mut self.pending_2xx {
            if now >= p.give_up {
                give_up = true;
            } else if let Some(next) = p.next
                && now >= next
            {
                resend.push((p.leg, p.target, p.bytes.clone()));
                p.interval = (p.interval * 2).min(t2);
                p.next = Some(now + p.interval);
            }
        }
        for (leg, target, bytes) in resend {
            self.send(leg, target, bytes, None);
        }
        if give_up {
            self.pending_2xx.retain(|p| now < p.give_up);
            tracing::warn!(session = %self.session_id, "no ACK for 2xx: ending the call");
            self.hang_up_both(now);
        }
    }
}

/// The ACK of a non-2xx final response (RFC 3261 §17.1.1.3).
fn non_2xx_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(via) = invite.headers.get(name::VIA) {
        ack.headers.push(name::VIA, msg::split_list(via).first().copied().unwrap_or(via));
    }
    ack.headers.push(name::MAX_FORWARDS, "70");
    ack.headers.copy_from(&invite.headers, name::ROUTE);
    ack.headers.copy_from(&invite.headers, name::FROM);
    match resp.headers.get(name::TO) {
        Some(to) => ack.headers.push(name::TO, to),
        None => ack.headers.copy_from(&invite.headers, name::TO),
    }
    ack.headers.copy_from(&invite.headers, name::CALL_ID);
    let n = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    ack.headers.push(name::CSEQ, format!("{n} ACK"));
    ack
}

#[cfg(test)]
mod tests {
    use super::TxMap;

    #[test]
    fn a_transaction_map_holds_one_slot_per_transaction_and_none_once_empty() {
        let mut map = TxMap::default();
        assert_eq!(map.insert("invite", 1), None);
        assert_eq!(map.insert("bye", 2), None);
        assert_eq!(map.capacity(), 2, "one slot each, not four at once");
        assert_eq!(map.insert("invite", 3), Some(1), "a key again replaces its value");
        assert_eq!((map.get(&"invite"), map.get(&"bye")), (Some(&3), Some(&2)));
        assert_eq!(map.remove(&"bye"), Some(2));
        assert_eq!(map.remove(&"bye"), None);
        assert_eq!(map.values().collect::<Vec<_>>(), vec![&3]);
        assert_eq!(map.remove(&"invite"), Some(3));
        assert!(map.is_empty());
        assert_eq!(map.capacity(), 0, "emptied: its memory goes back");
    }
}
