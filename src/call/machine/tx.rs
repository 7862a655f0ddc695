//! The transactions of a call: the sans-IO machines of `sip::transaction` with what the call
//! needs beside them (the request, where responses go, why we sent it), keyed by the typed keys
//! of `sip::transaction`, and the 2xx responses a UAS core retransmits until their ACK.

use std::time::{Duration, Instant};

use crate::sip::msg::{DialogHeaders, Request, Response};
use crate::sip::transaction::{
    ClientAction, ClientInvite, ClientKey, ClientNonInvite, Reliability, ServerAction,
    ServerInvite, ServerKey, ServerNonInvite, Timers, client_key, server_key,
};
use crate::sip::transport::{Protocol, Target};

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
    let branch = resp.top_via()?.branch?;
    let (_, method) = resp.cseq()?;
    Some(client_key(&branch, method.as_str()))
}

/// A request we answer.
#[derive(Debug)]
pub struct ServerTx {
    pub leg: LegId,
    pub request: Request,
    pub target: Target,
    pub machine: ServerMachine,
    pub last_response: Option<Response>,
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
}

/// A request we sent.
#[derive(Debug)]
pub struct ClientTx {
    pub leg: LegId,
    pub request: Request,
    pub target: Target,
    pub machine: ClientMachine,
    pub purpose: Purpose,
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

/// A 2xx we sent on an INVITE and retransmit until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
pub struct Pending2xx {
    pub leg: LegId,
    pub cseq: u32,
    pub response: Response,
    pub target: Target,
    /// Next retransmission (`None` on reliable transports).
    pub next: Option<Instant>,
    pub interval: Duration,
    pub give_up: Instant,
}
