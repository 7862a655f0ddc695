//! One out-of-dialog non-INVITE request from the gateway's carrier side and its final response:
//! a REGISTER of `call::registration` (and the shape of an OPTIONS probe of `call::health`).
//! The request goes in a non-INVITE client transaction (`sip::transaction::ClientNonInvite`,
//! RFC 3261 §17.1.2: retransmitted on UDP by timer E, ended by timer F), its Call-ID registered
//! with the front door for the exchange's life so that the response comes back here as a call's
//! would, and unregistered when it ends, however it ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::sip::msg::{DialogHeaders, Request, Response};
use crate::sip::transaction::{ClientAction, ClientNonInvite, Reliability, Timers};
use crate::sip::transport::{Protocol, Target, Zone};

use super::services::{CallInput, CallServices};

/// Where the request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub port: u16,
    pub transport: Protocol,
    /// The SRV name to look up first (a carrier host given as a name with no port, RFC 3263
    /// §4.2): the request goes to its first target in SRV order, or to `host`:`port` when it
    /// has none.
    pub srv: Option<String>,
}

/// How an exchange ended without a final response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No final response before the deadline or timer F.
    Timeout,
    /// The request could not be sent.
    SendError(String),
    /// The host name gives no address.
    Unresolved(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::SendError(e) => write!(f, "send error: {e}"),
            Failure::Unresolved(e) => write!(f, "unresolved: {e}"),
        }
    }
}

/// What the exchange is sent with: our carrier-side address and the peer's resolved one.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Resolves `peer`, builds the request with `build` (given our carrier-side address, the one
/// for Via and Contact), sends it and waits for its final response, at most `timeout`. The
/// response must carry the request's branch and method. Returns it with the addresses used.
pub async fn exchange(
    services: &CallServices,
    peer: &Peer,
    timeout: Duration,
    build: impl FnOnce(SocketAddr) -> Request,
) -> Result<(Response, Addresses), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (host, port) = match &peer.srv {
        Some(service) => {
            let targets = services.srv_targets(service, &peer.host, peer.port);
            match tokio::time::timeout_at(deadline, targets).await {
                Ok(targets) => {
                    targets.into_iter().next().unwrap_or_else(|| (peer.host.clone(), peer.port))
                }
                Err(_) => return Err(Failure::Timeout),
            }
        }
        None => (peer.host.clone(), peer.port),
    };
    let lookup = services.resolver.lookup(&host, port);
    let remote = match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(remote)) => remote,
        Ok(Err(e)) => return Err(Failure::Unresolved(e)),
        Err(_) => return Err(Failure::Timeout),
    };
    let local = services
        .local_address(Zone::Carrier, peer.transport)
        .ok_or_else(|| Failure::SendError("no carrier-facing listener".to_string()))?;
    let transports = services
        .transports
        .get()
        .cloned()
        .ok_or_else(|| Failure::SendError("transports not attached".to_string()))?;
    let request = build(local);
    let call_id = request.call_id().unwrap_or_default().to_string();
    let branch = request.top_via().and_then(|v| v.branch.clone()).unwrap_or_default();
    let method = request.method.clone();
    let bytes = request.to_bytes();
    let send_to =
        Target { protocol: peer.transport, zone: Zone::Carrier, remote, connection: None };
    // A TLS connection to it checks the certificate against the host's name (an SRV
    // target's, as for calls).
    transports.name_peer(remote, &host);

    let (tx, mut rx) = mpsc::channel::<CallInput>(8);
    services.register_call(&call_id, tx);
    let _registered = Registered { services, call_id };

    let reliability = match peer.transport {
        Protocol::Udp => Reliability::Unreliable,
        Protocol::Tcp | Protocol::Tls => Reliability::Reliable,
    };
    let (mut transaction, mut actions) =
        ClientNonInvite::new(Instant::now(), reliability, Timers::RFC3261);
    let mut answer: Option<Response> = None;
    let addresses = Addresses { local, remote };
    loop {
        let mut more = Vec::new();
        for action in actions.drain(..) {
            match action {
                ClientAction::Send => {
                    let sent =
                        tokio::time::timeout_at(deadline, transports.send(&send_to, bytes.clone()))
                            .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            more.extend(transaction.on_transport_error(Instant::now()));
                            if more.contains(&ClientAction::TransportError) {
                                return Err(Failure::SendError(e.to_string()));
                            }
                        }
                        Err(_) => return Err(Failure::Timeout),
                    }
                }
                ClientAction::Deliver => {
                    if let Some(response) = answer.take().filter(|r| r.status >= 200) {
                        return Ok((response, addresses));
                    }
                }
                ClientAction::Timeout => return Err(Failure::Timeout),
                ClientAction::TransportError => {
                    return Err(Failure::SendError("transport error".to_string()));
                }
                ClientAction::SendAck | ClientAction::Terminated => {}
            }
        }
        actions = more;
        if !actions.is_empty() {
            continue;
        }
        if transaction.is_terminated() {
            return Err(Failure::Timeout);
        }
        let wake = transaction
            .next_deadline()
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            input = rx.recv() => match input {
                Some(CallInput::Response(input)) if answers(&input.0, &branch, &method) => {
                    let status = input.0.status;
                    answer = Some(input.0);
                    actions = transaction.on_response(Instant::now(), status);
                }
                Some(_) => {}
                None => return Err(Failure::SendError("the gateway stopped".to_string())),
            },
            () = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Failure::Timeout);
                }
                actions = transaction.on_timeout(Instant::now());
            }
        }
    }
}

/// Is `response` the answer to the request with this branch and method?
fn answers(response: &Response, branch: &str, method: &crate::sip::msg::Method) -> bool {
    let got = response.top_via().and_then(|v| v.branch.as_deref());
    got == Some(branch) && response.cseq().is_some_and(|(_, m)| m == *method)
}

/// Unregisters the exchange's Call-ID when it ends, however it ends (cancelled included).
struct Registered<'a> {
    services: &'a CallServices,
    call_id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.services.unregister_call(&self.call_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::{self, Method};

    #[test]
    fn a_response_answers_only_the_request_with_its_branch_and_method() {
        let response = |branch: &str, method: &str| {
            let text = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
                 From: <sip:a@b>;tag=t\r\nTo: <sip:c@d>;tag=x\r\nCall-ID: c1\r\n\
                 CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            );
            match msg::parse(text.as_bytes()) {
                Ok(msg::Message::Response(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        assert!(answers(&response("z9hG4bKb1", "OPTIONS"), "z9hG4bKb1", &Method::Options));
        assert!(!answers(&response("z9hG4bKother", "OPTIONS"), "z9hG4bKb1", &Method::Options));
        assert!(!answers(&response("z9hG4bKb1", "INVITE"), "z9hG4bKb1", &Method::Options));
    }
}
