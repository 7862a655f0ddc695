//! The four SIP transaction state machines of RFC 3261 §17, with the RFC 6026 correction for
//! 2xx responses to INVITE, and the keys that match messages to them (RFC 3261 §17.1.3,
//! §17.2.3).
//!
//! **Takes** events, each with the current time as an [`Instant`]: a response's status code
//! (client side), a retransmitted request, an ACK or a response from the transaction user
//! (server side), "a timer may be due" and "the transport failed". **Gives** back, for each
//! event, the list of actions the caller must carry out in order ([`ClientAction`],
//! [`ServerAction`]) and, through `next_deadline()`, when it next wants `on_timeout()`.
//!
//! **Who calls it**: the SIP core's tokio driver. It owns the message bytes, the sockets and the
//! clock: it parses a message, finds its transaction with [`server_key`] / [`client_key`], feeds
//! the event in, performs the actions that come out (sending the stored request or last
//! response, building the ACK for a non-2xx final, passing a message up to the transaction user
//! (TU), reporting a timeout), sleeps until the earliest `next_deadline()` of all its
//! transactions and removes a transaction as soon as it returns [`ClientAction::Terminated`] /
//! [`ServerAction::Terminated`] (RFC 3261 §17.1.1.2: "destroyed the instant it enters the
//! Terminated state"). The machines know no SIP syntax: they parse nothing and allocate
//! nothing but the small action list, and a call whose event changes nothing (an absorbed
//! retransmission) returns an empty `Vec`, which does not allocate.
//!
//! # Timers (RFC 3261 §17.1.1.1 and table 4 of appendix A; L and M from RFC 6026)
//!
//! | timer | value | state it runs in, what it does |
//! | --- | --- | --- |
//! | A | T1, doubling, no cap; unreliable only | INVITE client Calling: resend |
//! | B | 64·T1 | INVITE client Calling: `Timeout` (the TU answers 408) |
//! | D | max(32 s, 64·T1); 0 reliable | INVITE client Completed: absorb resent finals |
//! | E | T1 doubling to T2, T2 in Proceeding; unreliable only | non-INVITE client: resend |
//! | F | 64·T1 | non-INVITE client Trying, Proceeding: `Timeout` |
//! | K | T4; 0 reliable | non-INVITE client Completed: absorb resent responses |
//! | G | T1 doubling to T2; unreliable only | INVITE server Completed: resend the final |
//! | H | 64·T1 | INVITE server Completed: no ACK came, `AckTimeout` |
//! | I | T4; 0 reliable | INVITE server Confirmed: absorb ACKs |
//! | J | 64·T1; 0 reliable | non-INVITE server Completed: absorb resent requests |
//! | L | 64·T1, every transport | INVITE server Accepted (RFC 6026 §7.1) |
//! | M | 64·T1, every transport | INVITE client Accepted (RFC 6026 §7.2) |
//!
//! # State machines
//!
//! Under each state are the events it handles, with their actions. Every arrow into
//! `Terminated` also emits `Terminated`, as the last action of that call. Anything not drawn
//! (a response in a state that does not expect it, any event after `Terminated`) changes
//! nothing and returns no action.
//!
//! ## INVITE client, [`ClientInvite`] (RFC 3261 §17.1.1, figure 5; RFC 6026 §7.2)
//!
//! ```text
//!   new: Send; arm A (unreliable) and B
//!    |
//!    v                1xx: Deliver
//!   Calling ------------------------------> Proceeding
//!    |  A: Send, A = 2A                       |  1xx: Deliver
//!    |                                        |
//!    +--- 2xx: Deliver ------+----------------+ 2xx: Deliver
//!    |                       v                |
//!    |                   Accepted             |
//!    |                    2xx: Deliver        |
//!    |                    M ---> Terminated   |
//!    |                                        |
//!    +--- 300-699: SendAck, Deliver --+-------+ 300-699: SendAck, Deliver
//!    |                                v
//!    |                            Completed
//!    |                             300-699: SendAck (a retransmission: not delivered)
//!    |                             D; transport error: TransportError ---> Terminated
//!    |
//!    +--- B: Timeout; transport error: TransportError ---> Terminated
//! ```
//!
//! ## Non-INVITE client, [`ClientNonInvite`] (RFC 3261 §17.1.2, figure 6)
//!
//! ```text
//!   new: Send; arm E (unreliable) and F
//!    |
//!    v            1xx: Deliver
//!   Trying ----------------------> Proceeding
//!    |  E: Send, E = min(2E, T2)    |  1xx: Deliver
//!    |                              |  E: Send, E = T2
//!    |                              |  F; transport error: as from Trying
//!    +--- 200-699: Deliver --+------+ 200-699: Deliver
//!    |                       v
//!    |                   Completed
//!    |                    any response: absorbed
//!    |                    K ---> Terminated
//!    |
//!    +--- F: Timeout; transport error: TransportError ---> Terminated
//! ```
//!
//! ## INVITE server, [`ServerInvite`] (RFC 3261 §17.2.1, figure 7; RFC 6026 §7.1)
//!
//! ```text
//!   new: nothing (the driver has passed the INVITE to the TU)
//!    |
//!    v           2xx from TU: SendLastResponse
//!   Proceeding ------------------------------------> Accepted
//!    |  1xx from TU: SendLastResponse                  INVITE: absorbed
//!    |  INVITE: SendLastResponse, once a 1xx was sent  2xx from TU: SendLastResponse
//!    |                                                 ACK: DeliverAck
//!    |                                                 L ---> Terminated
//!    | 300-699 from TU: SendLastResponse
//!    v
//!   Completed
//!    |  G: SendLastResponse, G = min(2G, T2)
//!    |  INVITE: SendLastResponse
//!    |  H: AckTimeout ---> Terminated
//!    | ACK
//!    v
//!   Confirmed
//!       INVITE, ACK: absorbed
//!       I ---> Terminated
//! ```
//!
//! ## Non-INVITE server, [`ServerNonInvite`] (RFC 3261 §17.2.2, figure 8)
//!
//! ```text
//!   new: nothing (the driver has passed the request to the TU)
//!    |
//!    v            1xx from TU: SendLastResponse
//!   Trying ------------------------------------> Proceeding
//!    |  request: absorbed                          |  request: SendLastResponse
//!    |                                             |  1xx from TU: SendLastResponse
//!    +--- 200-699 from TU: SendLastResponse --+----+ 200-699 from TU: SendLastResponse
//!                                             v
//!                                         Completed
//!                                          request: SendLastResponse
//!                                          TU responses: discarded
//!                                          J ---> Terminated
//! ```
//!
//! Server transactions report a transport error with `TransportError` and stay where they are
//! (RFC 3261 §17.2.4 as updated by RFC 6026 §8.8); their timers end them.
//!
//! # Choices where the RFCs leave room
//!
//! - **Zero-length timers end at once.** Timers D, I, J and K are zero on reliable transports;
//!   instead of arming a timer that is already due, the machine goes to `Terminated` in the same
//!   call (e.g. a 486 over TCP gives `[SendAck, Deliver, Terminated]`).
//! - **Timer D is max(32 s, 64·T1).** RFC 3261 asks for "at least 32 seconds"; with a raised T1
//!   the peer's timer H (64·T1) outlives 32 s, and D must cover the final responses it resends.
//! - **No timer in INVITE Proceeding, nor in server Trying/Proceeding.** The figures draw none:
//!   the client waits for a final response as long as the TU lets it (the TU cancels on its own
//!   ring timeout), and the server waits for the TU's response. There `next_deadline()` is
//!   `None` although the transaction is alive; everywhere else `None` means `Terminated`.
//! - **Late timers.** `on_timeout` fires what is due. If the transaction's end timer (B, D, F,
//!   H, I, J, K, L, M) is due, the transaction ends and a retransmission due at the same time is
//!   dropped: a copy sent the instant we give up helps no one. A retransmission timer is re-armed
//!   from `now`, not from its missed deadline, so a late driver never gets a burst of copies.
//! - **A zero retransmission interval disables retransmission** rather than asking for one at
//!   every call; a timer too far away to be represented as an `Instant` never fires.
//! - **Client transport errors** end the transaction only in the states where it sends
//!   something (INVITE: Calling, Completed; non-INVITE: Trying, Proceeding), as figures 5 and 6
//!   draw them. In INVITE Proceeding and Accepted and in non-INVITE Completed the transaction
//!   sends nothing, so no failed send can be its own: the report is ignored.
//! - **The ACK of a 2xx that matches an Accepted server transaction** (a peer that reused the
//!   INVITE's branch) goes to the TU as [`ServerAction::DeliverAck`], as RFC 6026's redrawn
//!   figure 7 shows it; a well-behaved ACK for 2xx has its own branch and matches no transaction.
//! - **Status codes outside 100..=699** are ignored by every machine.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

/// T1, the round-trip time estimate (RFC 3261 §17.1.1.1, table 4).
pub const T1_DEFAULT: Duration = Duration::from_millis(500);
/// T2, the longest retransmission interval for non-INVITE requests and INVITE responses
/// (RFC 3261 §17.1.2.2, table 4).
pub const T2_DEFAULT: Duration = Duration::from_secs(4);
/// T4, the longest time a message stays in the network (RFC 3261 §17.1.2.2, table 4).
pub const T4_DEFAULT: Duration = Duration::from_secs(5);
/// The least value of timer D on an unreliable transport (RFC 3261 §17.1.1.2).
pub const TIMER_D_MIN: Duration = Duration::from_secs(32);
/// Timers B, F, H, J (unreliable), L and M are this many T1 (RFC 3261 table 4, RFC 6026).
const TRANSACTION_TIMEOUT_T1S: u32 = 64;

/// The magic cookie that starts every RFC 3261 branch (RFC 3261 §8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";
/// Random alphanumerics after the cookie in [`new_branch`]: 62^20 ≈ 2^119 values.
const BRANCH_RANDOM_LEN: usize = 20;

/// The base timer values every other timer derives from (RFC 3261 §17.1.1.1, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate; default [`T1_DEFAULT`] (500 ms).
    pub t1: Duration,
    /// Retransmission interval cap; default [`T2_DEFAULT`] (4 s).
    pub t2: Duration,
    /// Network lifetime of a message; default [`T4_DEFAULT`] (5 s).
    pub t4: Duration,
}

impl Timers {
    /// The RFC 3261 defaults: T1 = 500 ms, T2 = 4 s, T4 = 5 s.
    pub const RFC3261: Timers = Timers { t1: T1_DEFAULT, t2: T2_DEFAULT, t4: T4_DEFAULT };

    /// 64·T1: timers B, F, H, J (unreliable), L and M.
    fn transaction_timeout(&self) -> Duration {
        self.t1.saturating_mul(TRANSACTION_TIMEOUT_T1S)
    }
}

impl Default for Timers {
    fn default() -> Self {
        Timers::RFC3261
    }
}

/// Whether the transport the transaction runs over retransmits for us (RFC 3261 §17.1.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// TCP, TLS: no retransmission timers (A, E, G); timers D, I, J and K are zero.
    Reliable,
    /// UDP: the transaction retransmits.
    Unreliable,
}

impl Reliability {
    /// `value` on an unreliable transport, zero on a reliable one (timers D, I, J, K).
    fn linger(self, value: Duration) -> Duration {
        match self {
            Reliability::Reliable => Duration::ZERO,
            Reliability::Unreliable => value,
        }
    }
}

/// The class of a status code, as the machines see it (RFC 3261 §21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Provisional,
    Success,
    Failure,
}

impl Class {
    fn of(status: u16) -> Option<Class> {
        match status {
            100..=199 => Some(Class::Provisional),
            200..=299 => Some(Class::Success),
            300..=699 => Some(Class::Failure),
            _ => None,
        }
    }
}

/// A retransmission timer (A, E or G): when it fires next and the interval that got it there.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

/// The at most two timers a transaction has armed in any state: one retransmission timer
/// (A, E, G) and one timer that ends the state (B, D, F, H, I, J, K, L, M).
#[derive(Debug, Clone, Copy, Default)]
struct Deadlines {
    retransmit: Option<Retransmit>,
    end: Option<Instant>,
}

/// What `on_timeout` found due.
enum Due {
    End,
    Retransmit(Duration),
    Nothing,
}

impl Deadlines {
    fn next(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.at), self.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn clear(&mut self) {
        *self = Deadlines::default();
    }

    /// Arms the retransmission timer `interval` from `now`; a zero interval disarms it.
    fn arm_retransmit(&mut self, now: Instant, interval: Duration) {
        self.retransmit = if interval.is_zero() {
            None
        } else {
            now.checked_add(interval).map(|at| Retransmit { at, interval })
        };
    }

    fn arm_end(&mut self, now: Instant, after: Duration) {
        self.end = now.checked_add(after);
    }

    /// The end timer wins over a retransmission due at the same call (see the module docs).
    fn due(&self, now: Instant) -> Due {
        if self.end.is_some_and(|at| at <= now) {
            return Due::End;
        }
        match self.retransmit {
            Some(r) if r.at <= now => Due::Retransmit(r.interval),
            _ => Due::Nothing,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client transactions
// ---------------------------------------------------------------------------------------------

/// What the driver must do for a client transaction, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAction {
    /// (Re)transmit the request, byte for byte.
    Send,
    /// Send the ACK for the non-2xx final response just received, built from the request and
    /// that response (RFC 3261 §17.1.1.3). Also for each retransmission of it in Completed.
    SendAck,
    /// Pass the response just received up to the TU.
    Deliver,
    /// Timer B or F fired: tell the TU the request timed out (it acts as if it got a 408,
    /// RFC 3261 §8.1.3.1).
    Timeout,
    /// Tell the TU the transport failed (it acts as if it got a 503, RFC 3261 §8.1.3.1).
    TransportError,
    /// The transaction is over: remove it. Always the last action of its call.
    Terminated,
}

/// The states of an INVITE client transaction (RFC 3261 §17.1.1.2, RFC 6026 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Accepted,
    Completed,
    Terminated,
}

impl ClientInviteState {
    /// A fixed name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientInviteState::Calling => "Calling",
            ClientInviteState::Proceeding => "Proceeding",
            ClientInviteState::Accepted => "Accepted",
            ClientInviteState::Completed => "Completed",
            ClientInviteState::Terminated => "Terminated",
        }
    }
}

/// An INVITE client transaction (RFC 3261 §17.1.1, figure 5; RFC 6026 §7.2). See the module
/// docs for the diagram and the choices made.
#[derive(Debug, Clone)]
pub struct ClientInvite {
    state: ClientInviteState,
    reliability: Reliability,
    timers: Timers,
    deadlines: Deadlines,
}

impl ClientInvite {
    /// Starts the transaction in Calling: the request goes out (`[Send]`), timer A is armed
    /// at T1 on an unreliable transport and timer B at 64·T1 (RFC 3261 §17.1.1.2).
    pub fn new(
        now: Instant,
        reliability: Reliability,
        timers: Timers,
    ) -> (Self, Vec<ClientAction>) {
        let mut deadlines = Deadlines::default();
        if reliability == Reliability::Unreliable {
            deadlines.arm_retransmit(now, timers.t1);
        }
        deadlines.arm_end(now, timers.transaction_timeout());
        let transaction =
            ClientInvite { state: ClientInviteState::Calling, reliability, timers, deadlines };
        (transaction, vec![ClientAction::Send])
    }

    /// A response matching this transaction arrived (RFC 3261 §17.1.1.2, RFC 6026 §7.2).
    pub fn on_response(&mut self, now: Instant, status: u16) -> Vec<ClientAction> {
        use ClientInviteState as S;
        let mut actions = Vec::new();
        let Some(class) = Class::of(status) else { return actions };
        match (self.state, class) {
            (S::Calling | S::Proceeding, Class::Provisional) => {
                // §17.1.1.2: no retransmission in Proceeding; timer B only bounds Calling.
                self.state = S::Proceeding;
                self.deadlines.clear();
                actions.push(ClientAction::Deliver);
            }
            (S::Calling | S::Proceeding, Class::Success) => {
                // RFC 6026 §7.2: Accepted, timer M; the TU sends the ACK for a 2xx.
                self.state = S::Accepted;
                self.deadlines.clear();
                self.deadlines.arm_end(now, self.timers.transaction_timeout());
                actions.push(ClientAction::Deliver);
            }
            (S::Calling | S::Proceeding, Class::Failure) => {
                actions.push(ClientAction::SendAck);
                actions.push(ClientAction::Deliver);
                self.state = S::Completed;
                self.deadlines.clear();
                let timer_d = self.timers.transaction_timeout().max(TIMER_D_MIN);
                self.linger(now, self.reliability.linger(timer_d), &mut actions);
            }
            // RFC 6026 §7.2: each 2xx (retransmitted, or from another fork) goes to the TU.
            (S::Accepted, Class::Success) => actions.push(ClientAction::Deliver),
            // §17.1.1.2: a retransmitted final is ACKed again, not passed up.
            (S::Completed, Class::Failure) => actions.push(ClientAction::SendAck),
            _ => {}
        }
        actions
    }

    /// Fires every timer due at `now` (call it when `now >= next_deadline()`; calling it early
    /// does nothing).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        match self.deadlines.due(now) {
            Due::End => {
                if self.state == ClientInviteState::Calling {
                    // Timer B (§17.1.1.2): no ACK is generated.
                    actions.push(ClientAction::Timeout);
                }
                self.terminate(&mut actions);
            }
            Due::Retransmit(interval) => {
                // Timer A: intervals double without a cap (§17.1.1.2).
                actions.push(ClientAction::Send);
                self.deadlines.arm_retransmit(now, interval.saturating_mul(2));
            }
            Due::Nothing => {}
        }
        actions
    }

    /// The transport failed to send for this transaction (RFC 3261 §17.1.4). Ends it in
    /// Calling and Completed; ignored elsewhere (nothing is sent there).
    pub fn on_transport_error(&mut self, _now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        if matches!(self.state, ClientInviteState::Calling | ClientInviteState::Completed) {
            actions.push(ClientAction::TransportError);
            self.terminate(&mut actions);
        }
        actions
    }

    /// When `on_timeout` is next wanted. `None` once terminated, and in Proceeding, where the
    /// RFC arms no timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    fn linger(&mut self, now: Instant, after: Duration, actions: &mut Vec<ClientAction>) {
        if after.is_zero() {
            self.terminate(actions);
        } else {
            self.deadlines.arm_end(now, after);
        }
    }

    fn terminate(&mut self, actions: &mut Vec<ClientAction>) {
        self.state = ClientInviteState::Terminated;
        self.deadlines.clear();
        actions.push(ClientAction::Terminated);
    }
}

/// The states of a non-INVITE client transaction (RFC 3261 §17.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

impl ClientNonInviteState {
    /// A fixed name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientNonInviteState::Trying => "Trying",
            ClientNonInviteState::Proceeding => "Proceeding",
            ClientNonInviteState::Completed => "Completed",
            ClientNonInviteState::Terminated => "Terminated",
        }
    }
}

/// A non-INVITE client transaction (RFC 3261 §17.1.2, figure 6), CANCEL included.
#[derive(Debug, Clone)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    reliability: Reliability,
    timers: Timers,
    deadlines: Deadlines,
}

impl ClientNonInvite {
    /// Starts the transaction in Trying: the request goes out (`[Send]`), timer E is armed at
    /// T1 on an unreliable transport and timer F at 64·T1 (RFC 3261 §17.1.2.2).
    pub fn new(
        now: Instant,
        reliability: Reliability,
        timers: Timers,
    ) -> (Self, Vec<ClientAction>) {
        let mut deadlines = Deadlines::default();
        if reliability == Reliability::Unreliable {
            deadlines.arm_retransmit(now, timers.t1);
        }
        deadlines.arm_end(now, timers.transaction_timeout());
        let transaction =
            ClientNonInvite { state: ClientNonInviteState::Trying, reliability, timers, deadlines };
        (transaction, vec![ClientAction::Send])
    }

    /// A response matching this transaction arrived (RFC 3261 §17.1.2.2).
    pub fn on_response(&mut self, now: Instant, status: u16) -> Vec<ClientAction> {
        use ClientNonInviteState as S;
        let mut actions = Vec::new();
        let Some(class) = Class::of(status) else { return actions };
        match (self.state, class) {
            (S::Trying | S::Proceeding, Class::Provisional) => {
                // Timers E and F keep running; E's next firing re-arms it at T2.
                self.state = S::Proceeding;
                actions.push(ClientAction::Deliver);
            }
            (S::Trying | S::Proceeding, Class::Success | Class::Failure) => {
                actions.push(ClientAction::Deliver);
                self.state = S::Completed;
                self.deadlines.clear();
                let timer_k = self.reliability.linger(self.timers.t4);
                if timer_k.is_zero() {
                    self.terminate(&mut actions);
                } else {
                    self.deadlines.arm_end(now, timer_k);
                }
            }
            // Completed absorbs retransmitted responses; Terminated absorbs everything.
            _ => {}
        }
        actions
    }

    /// Fires every timer due at `now` (timer E: retransmit; F: `Timeout`; K: end).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        match self.deadlines.due(now) {
            Due::End => {
                if matches!(
                    self.state,
                    ClientNonInviteState::Trying | ClientNonInviteState::Proceeding
                ) {
                    // Timer F (§17.1.2.2).
                    actions.push(ClientAction::Timeout);
                }
                self.terminate(&mut actions);
            }
            Due::Retransmit(interval) => {
                actions.push(ClientAction::Send);
                let next = if self.state == ClientNonInviteState::Proceeding {
                    self.timers.t2
                } else {
                    interval.saturating_mul(2).min(self.timers.t2)
                };
                self.deadlines.arm_retransmit(now, next);
            }
            Due::Nothing => {}
        }
        actions
    }

    /// The transport failed to send for this transaction (RFC 3261 §17.1.4). Ends it in
    /// Trying and Proceeding; ignored in Completed (nothing is sent there).
    pub fn on_transport_error(&mut self, _now: Instant) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        if matches!(self.state, ClientNonInviteState::Trying | ClientNonInviteState::Proceeding) {
            actions.push(ClientAction::TransportError);
            self.terminate(&mut actions);
        }
        actions
    }

    /// When `on_timeout` is next wanted; `None` exactly when terminated (timer F bounds
    /// Trying and Proceeding on every transport).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    fn terminate(&mut self, actions: &mut Vec<ClientAction>) {
        self.state = ClientNonInviteState::Terminated;
        self.deadlines.clear();
        actions.push(ClientAction::Terminated);
    }
}

// ---------------------------------------------------------------------------------------------
// Server transactions
// ---------------------------------------------------------------------------------------------

/// What the driver must do for a server transaction, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerAction {
    /// (Re)send the most recent response the TU gave this transaction, byte for byte.
    SendLastResponse,
    /// Pass the ACK just received up to the TU: an ACK matched an Accepted INVITE transaction
    /// (RFC 6026 §7.1 and its redrawn figure 7).
    DeliverAck,
    /// Timer H fired: no ACK came for the non-2xx final; tell the TU (RFC 3261 §17.2.1).
    AckTimeout,
    /// Tell the TU a response could not be sent (RFC 3261 §17.2.4, RFC 6026 §8.8). The
    /// transaction stays in its state.
    TransportError,
    /// The transaction is over: remove it. Always the last action of its call.
    Terminated,
}

/// The states of an INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerInviteState {
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

impl ServerInviteState {
    /// A fixed name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerInviteState::Proceeding => "Proceeding",
            ServerInviteState::Accepted => "Accepted",
            ServerInviteState::Completed => "Completed",
            ServerInviteState::Confirmed => "Confirmed",
            ServerInviteState::Terminated => "Terminated",
        }
    }
}

/// An INVITE server transaction (RFC 3261 §17.2.1, figure 7; RFC 6026 §7.1).
#[derive(Debug, Clone)]
pub struct ServerInvite {
    state: ServerInviteState,
    reliability: Reliability,
    timers: Timers,
    deadlines: Deadlines,
    /// Whether the TU has given a provisional response that a retransmitted INVITE can get.
    sent_provisional: bool,
}

impl ServerInvite {
    /// Starts the transaction in Proceeding, with no action and no timer: the driver has
    /// passed the INVITE to the TU and sends 100 Trying through [`ServerInvite::on_tu_response`]
    /// at once (RFC 3261 §17.2.1 allows waiting 200 ms; we do not).
    pub fn new(
        _now: Instant,
        reliability: Reliability,
        timers: Timers,
    ) -> (Self, Vec<ServerAction>) {
        let transaction = ServerInvite {
            state: ServerInviteState::Proceeding,
            reliability,
            timers,
            deadlines: Deadlines::default(),
            sent_provisional: false,
        };
        (transaction, Vec::new())
    }

    /// A retransmission of the INVITE arrived: Proceeding resends the last provisional (if the
    /// TU gave one), Completed resends the final, Accepted and Confirmed absorb it.
    pub fn on_request_retransmission(&mut self, _now: Instant) -> Vec<ServerAction> {
        let mut actions = Vec::new();
        let resend = match self.state {
            ServerInviteState::Proceeding => self.sent_provisional,
            ServerInviteState::Completed => true,
            _ => false,
        };
        if resend {
            actions.push(ServerAction::SendLastResponse);
        }
        actions
    }

    /// The TU responds: a 1xx is sent; a 2xx is sent and moves to Accepted (timer L); a
    /// 300-699 is sent and moves to Completed (timer G on an unreliable transport, timer H).
    /// In Accepted a further 2xx (the TU's retransmission, RFC 6026 §7.1) is sent; anything
    /// else is discarded.
    pub fn on_tu_response(&mut self, now: Instant, status: u16) -> Vec<ServerAction> {
        use ServerInviteState as S;
        let mut actions = Vec::new();
        let Some(class) = Class::of(status) else { return actions };
        match (self.state, class) {
            (S::Proceeding, Class::Provisional) => {
                self.sent_provisional = true;
                actions.push(ServerAction::SendLastResponse);
            }
            (S::Proceeding, Class::Success) => {
                actions.push(ServerAction::SendLastResponse);
                self.state = S::Accepted;
                self.deadlines.arm_end(now, self.timers.transaction_timeout());
            }
            (S::Proceeding, Class::Failure) => {
                actions.push(ServerAction::SendLastResponse);
                self.state = S::Completed;
                if self.reliability == Reliability::Unreliable {
                    self.deadlines.arm_retransmit(now, self.timers.t1);
                }
                self.deadlines.arm_end(now, self.timers.transaction_timeout());
            }
            (S::Accepted, Class::Success) => actions.push(ServerAction::SendLastResponse),
            _ => {}
        }
        actions
    }

    /// An ACK matching this transaction arrived. Completed moves to Confirmed (timer I);
    /// Accepted passes it to the TU; elsewhere it is absorbed.
    pub fn on_ack(&mut self, now: Instant) -> Vec<ServerAction> {
        let mut actions = Vec::new();
        match self.state {
            ServerInviteState::Completed => {
                self.state = ServerInviteState::Confirmed;
                self.deadlines.clear();
                let timer_i = self.reliability.linger(self.timers.t4);
                if timer_i.is_zero() {
                    self.terminate(&mut actions);
                } else {
                    self.deadlines.arm_end(now, timer_i);
                }
            }
            ServerInviteState::Accepted => actions.push(ServerAction::DeliverAck),
            _ => {}
        }
        actions
    }

    /// Fires every timer due at `now`: G resends the final (doubling to T2), H gives
    /// `AckTimeout` and ends, I and L end.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<ServerAction> {
        let mut actions = Vec::new();
        match self.deadlines.due(now) {
            Due::End => {
                if self.state == ServerInviteState::Completed {
                    actions.push(ServerAction::AckTimeout);
                }
                self.terminate(&mut actions);
            }
            Due::Retransmit(interval) => {
                actions.push(ServerAction::SendLastResponse);
                let next = interval.saturating_mul(2).min(self.timers.t2);
                self.deadlines.arm_retransmit(now, next);
            }
            Due::Nothing => {}
        }
        actions
    }

    /// A response could not be sent: tell the TU, stay in the state (RFC 6026 §8.8).
    pub fn on_transport_error(&mut self, _now: Instant) -> Vec<ServerAction> {
        if self.is_terminated() { Vec::new() } else { vec![ServerAction::TransportError] }
    }

    /// When `on_timeout` is next wanted. `None` once terminated, and in Proceeding, where the
    /// transaction waits for the TU with no timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    fn terminate(&mut self, actions: &mut Vec<ServerAction>) {
        self.state = ServerInviteState::Terminated;
        self.deadlines.clear();
        actions.push(ServerAction::Terminated);
    }
}

/// The states of a non-INVITE server transaction (RFC 3261 §17.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

impl ServerNonInviteState {
    /// A fixed name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerNonInviteState::Trying => "Trying",
            ServerNonInviteState::Proceeding => "Proceeding",
            ServerNonInviteState::Completed => "Completed",
            ServerNonInviteState::Terminated => "Terminated",
        }
    }
}

/// A non-INVITE server transaction (RFC 3261 §17.2.2, figure 8), CANCEL included.
#[derive(Debug, Clone)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    reliability: Reliability,
    timers: Timers,
    deadlines: Deadlines,
}

impl ServerNonInvite {
    /// Starts the transaction in Trying, with no action and no timer: the driver has passed
    /// the request to the TU.
    pub fn new(
        _now: Instant,
        reliability: Reliability,
        timers: Timers,
    ) -> (Self, Vec<ServerAction>) {
        let transaction = ServerNonInvite {
            state: ServerNonInviteState::Trying,
            reliability,
            timers,
            deadlines: Deadlines::default(),
        };
        (transaction, Vec::new())
    }

    /// A retransmission of the request arrived: absorbed in Trying, answered with the last
    /// response in Proceeding and Completed (RFC 3261 §17.2.2).
    pub fn on_request_retransmission(&mut self, _now: Instant) -> Vec<ServerAction> {
        let mut actions = Vec::new();
        if matches!(self.state, ServerNonInviteState::Proceeding | ServerNonInviteState::Completed)
        {
            actions.push(ServerAction::SendLastResponse);
        }
        actions
    }

    /// The TU responds: a 1xx is sent (Proceeding); a 200-699 is sent and moves to Completed
    /// (timer J). In Completed the TU's responses are discarded (RFC 3261 §17.2.2).
    pub fn on_tu_response(&mut self, now: Instant, status: u16) -> Vec<ServerAction> {
        use ServerNonInviteState as S;
        let mut actions = Vec::new();
        let Some(class) = Class::of(status) else { return actions };
        match (self.state, class) {
            (S::Trying | S::Proceeding, Class::Provisional) => {
                self.state = S::Proceeding;
                actions.push(ServerAction::SendLastResponse);
            }
            (S::Trying | S::Proceeding, Class::Success | Class::Failure) => {
                actions.push(ServerAction::SendLastResponse);
                self.state = S::Completed;
                let timer_j = self.reliability.linger(self.timers.transaction_timeout());
                if timer_j.is_zero() {
                    self.terminate(&mut actions);
                } else {
                    self.deadlines.arm_end(now, timer_j);
                }
            }
            _ => {}
        }
        actions
    }

    /// Fires timer J when due.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<ServerAction> {
        let mut actions = Vec::new();
        if let Due::End = self.deadlines.due(now) {
            self.terminate(&mut actions);
        }
        actions
    }

    /// A response could not be sent: tell the TU, stay in the state (RFC 3261 §17.2.4 as
    /// updated by RFC 6026 §8.8; figure 8 predates that update).
    pub fn on_transport_error(&mut self, _now: Instant) -> Vec<ServerAction> {
        if self.is_terminated() { Vec::new() } else { vec![ServerAction::TransportError] }
    }

    /// When `on_timeout` is next wanted. `None` once terminated, and in Trying and
    /// Proceeding, where the transaction waits for the TU with no timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    fn terminate(&mut self, actions: &mut Vec<ServerAction>) {
        self.state = ServerNonInviteState::Terminated;
        self.deadlines.clear();
        actions.push(ServerAction::Terminated);
    }
}

// ---------------------------------------------------------------------------------------------
// Matching keys
// ---------------------------------------------------------------------------------------------

/// A request method as transaction matching sees it. Methods are case-sensitive
/// (RFC 3261 §25.1 spells them as case-sensitive strings): `invite` is an extension method,
/// not INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyMethod {
    Invite,
    Ack,
    Cancel,
    Other(String),
}

impl KeyMethod {
    pub fn from_method(method: &str) -> KeyMethod {
        match method {
            "INVITE" => KeyMethod::Invite,
            "ACK" => KeyMethod::Ack,
            "CANCEL" => KeyMethod::Cancel,
            other => KeyMethod::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            KeyMethod::Invite => "INVITE",
            KeyMethod::Ack => "ACK",
            KeyMethod::Cancel => "CANCEL",
            KeyMethod::Other(method) => method,
        }
    }
}

/// What a request is matched to its server transaction by (RFC 3261 §17.2.3): the top Via's
/// branch and sent-by, and the method, where an ACK counts as INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    branch: String,
    sent_by: String,
    method: KeyMethod,
}

impl ServerKey {
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The sent-by, with ASCII letters lowercased.
    pub fn sent_by(&self) -> &str {
        &self.sent_by
    }

    /// Never [`KeyMethod::Ack`]: an ACK's key carries INVITE.
    pub fn method(&self) -> &KeyMethod {
        &self.method
    }

    /// For a CANCEL's key, the key of the INVITE transaction it cancels: the same branch and
    /// sent-by with method INVITE (RFC 3261 §9.2). `None` for any other method.
    pub fn cancelled_invite(&self) -> Option<ServerKey> {
        (self.method == KeyMethod::Cancel).then(|| ServerKey {
            branch: self.branch.clone(),
            sent_by: self.sent_by.clone(),
            method: KeyMethod::Invite,
        })
    }
}

/// The server-transaction key of a request (RFC 3261 §17.2.3).
///
/// - `None` when the branch does not start with the magic cookie `z9hG4bK`: the request comes
///   from an RFC 2543 peer, whose matching rules (Request-URI, tags, Call-ID, CSeq, Via) we do
///   not implement. The driver answers such a request 400 and creates no transaction.
/// - The branch is compared exactly, case included. RFC 3261 §7.3.1 would let token parameter
///   values compare case-insensitively, but every copy of the top Via a peer legitimately
///   sends back (a retransmission, the ACK for a non-2xx, a CANCEL: §9.1, §17.1.1.3) repeats
///   it byte for byte, and the cookie check is case-sensitive; the sent-by has its ASCII
///   letters lowercased, as host names compare case-insensitively. The driver passes the sent-by as
///   written (`host[:port]`); a missing port is not filled in with 5060.
/// - ACK maps to INVITE so that the ACK for a non-2xx final matches its INVITE transaction.
///   The ACK for a 2xx carries a new branch (RFC 3261 §17.1.1.3) and so matches nothing: the
///   driver passes it to the dialog layer.
/// - CANCEL keeps its own method: it gets its own non-INVITE transaction, and the TU finds the
///   INVITE it cancels with [`ServerKey::cancelled_invite`].
pub fn server_key(top_via_branch: &str, top_via_sent_by: &str, method: &str) -> Option<ServerKey> {
    if !top_via_branch.starts_with(MAGIC_COOKIE) {
        return None;
    }
    let method = match KeyMethod::from_method(method) {
        KeyMethod::Ack => KeyMethod::Invite,
        method => method,
    };
    Some(ServerKey {
        branch: top_via_branch.to_owned(),
        sent_by: top_via_sent_by.to_ascii_lowercase(),
        method,
    })
}

/// What a response is matched to its client transaction by (RFC 3261 §17.1.3): the branch of
/// its top Via and its CSeq method (a CANCEL shares its INVITE's branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    branch: String,
    method: KeyMethod,
}

impl ClientKey {
    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn method(&self) -> &KeyMethod {
        &self.method
    }
}

/// The client-transaction key of a response, or of a request we send (its own branch and
/// method). The branch is compared exactly; no cookie check is needed, as we chose it.
pub fn client_key(top_via_branch: &str, cseq_method: &str) -> ClientKey {
    ClientKey { branch: top_via_branch.to_owned(), method: KeyMethod::from_method(cseq_method) }
}

/// A fresh branch for a request we send: the magic cookie and 20 random alphanumerics
/// (RFC 3261 §8.1.1.7: unique across space and time).
pub fn new_branch() -> String {
    let mut branch = String::with_capacity(MAGIC_COOKIE.len() + BRANCH_RANDOM_LEN);
    branch.push_str(MAGIC_COOKIE);
    branch.extend(rand::rng().sample_iter(Alphanumeric).take(BRANCH_RANDOM_LEN).map(char::from));
    branch
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientAction as CA;
    use ServerAction as SA;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const UDP: Reliability = Reliability::Unreliable;
    const TCP: Reliability = Reliability::Reliable;

    fn timers() -> Timers {
        Timers::default()
    }

    // ------------------------------------------------------------------ defaults

    #[test]
    fn default_timers_are_the_rfc_3261_values() {
        let t = Timers::default();
        assert_eq!((t.t1, t.t2, t.t4), (ms(500), ms(4000), ms(5000)));
        assert_eq!(t.transaction_timeout(), ms(32_000));
    }

    // ------------------------------------------------------------------ INVITE client

    #[test]
    fn invite_client_sends_at_once_and_delivers_ringing_then_ok_into_accepted() {
        let t0 = Instant::now();
        let (mut tx, actions) = ClientInvite::new(t0, UDP, timers());
        assert_eq!(actions, [CA::Send]);
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));

        assert_eq!(tx.on_response(t0 + ms(100), 100), [CA::Deliver]);
        assert_eq!(tx.on_response(t0 + ms(200), 180), [CA::Deliver]);
        assert_eq!(tx.state(), ClientInviteState::Proceeding);

        assert_eq!(tx.on_response(t0 + ms(5000), 200), [CA::Deliver]);
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(5000 + 32_000)));
    }

    #[test]
    fn timer_a_doubles_from_t1_with_no_cap_until_timer_b_times_out_at_64_t1() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        let mut fired_at = Vec::new();
        while let Some(deadline) = tx.next_deadline() {
            let actions = tx.on_timeout(deadline);
            fired_at.push(((deadline - t0).as_millis(), actions));
        }
        let send = || vec![CA::Send];
        assert_eq!(
            fired_at,
            vec![
                (500, send()),
                (1500, send()),
                (3500, send()),
                (7500, send()),
                (15_500, send()),
                (31_500, send()),
                (32_000, vec![CA::Timeout, CA::Terminated]),
            ]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_client_on_a_reliable_transport_never_retransmits_and_times_out_with_b() {
        let t0 = Instant::now();
        let (mut tx, actions) = ClientInvite::new(t0, TCP, timers());
        assert_eq!(actions, [CA::Send]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert!(tx.on_timeout(t0 + ms(31_999)).is_empty());
        assert_eq!(tx.on_timeout(t0 + ms(32_000)), [CA::Timeout, CA::Terminated]);
    }

    #[test]
    fn a_provisional_response_stops_timers_a_and_b() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        tx.on_response(t0 + ms(100), 183);
        assert_eq!(tx.next_deadline(), None);
        assert!(tx.on_timeout(t0 + ms(600_000)).is_empty());
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
    }

    #[test]
    fn a_non_2xx_final_is_acked_and_delivered_and_timer_d_ends_it_after_32_s() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        tx.on_response(t0 + ms(100), 180);
        assert_eq!(tx.on_response(t0 + ms(1000), 486), [CA::SendAck, CA::Deliver]);
        assert_eq!(tx.state(), ClientInviteState::Completed);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(33_000)));
        assert!(tx.on_timeout(t0 + ms(32_999)).is_empty());
        assert_eq!(tx.on_timeout(t0 + ms(33_000)), [CA::Terminated]);
    }

    #[test]
    fn a_non_2xx_final_straight_from_calling_stops_retransmissions() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        assert_eq!(tx.on_response(t0 + ms(100), 503), [CA::SendAck, CA::Deliver]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_100)));
    }

    #[test]
    fn timer_d_is_never_shorter_than_64_t1() {
        let t0 = Instant::now();
        let slow = Timers { t1: ms(1000), ..Timers::default() };
        let (mut tx, _) = ClientInvite::new(t0, UDP, slow);
        tx.on_response(t0, 404);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(64_000)));
    }

    #[test]
    fn a_non_2xx_final_on_a_reliable_transport_ends_at_once_as_timer_d_is_zero() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, TCP, timers());
        assert_eq!(tx.on_response(t0 + ms(10), 486), [CA::SendAck, CA::Deliver, CA::Terminated]);
        assert!(tx.is_terminated());
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn a_retransmitted_non_2xx_final_in_completed_is_acked_again_but_not_delivered() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        tx.on_response(t0, 486);
        assert_eq!(tx.on_response(t0 + ms(500), 486), [CA::SendAck]);
        assert_eq!(tx.on_response(t0 + ms(1500), 600), [CA::SendAck]);
        assert_eq!(tx.state(), ClientInviteState::Completed);
    }

    #[test]
    fn retransmitted_2xx_in_accepted_are_delivered_to_the_tu_without_an_ack() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        tx.on_response(t0, 200);
        assert_eq!(tx.on_response(t0 + ms(500), 200), [CA::Deliver]);
        assert_eq!(tx.on_response(t0 + ms(1500), 202), [CA::Deliver]);
        assert_eq!(tx.state(), ClientInviteState::Accepted);
    }

    #[test]
    fn timer_m_ends_accepted_after_64_t1_even_on_a_reliable_transport() {
        for reliability in [UDP, TCP] {
            let t0 = Instant::now();
            let (mut tx, _) = ClientInvite::new(t0, reliability, timers());
            tx.on_response(t0 + ms(1000), 200);
            assert_eq!(tx.next_deadline(), Some(t0 + ms(33_000)));
            assert!(tx.on_timeout(t0 + ms(32_999)).is_empty());
            assert_eq!(tx.on_timeout(t0 + ms(33_000)), [CA::Terminated]);
        }
    }

    #[test]
    fn responses_that_accepted_and_completed_do_not_expect_are_ignored() {
        let t0 = Instant::now();
        let (mut accepted, _) = ClientInvite::new(t0, UDP, timers());
        accepted.on_response(t0, 200);
        assert!(accepted.on_response(t0, 180).is_empty());
        assert!(accepted.on_response(t0, 486).is_empty());
        assert_eq!(accepted.state(), ClientInviteState::Accepted);

        let (mut completed, _) = ClientInvite::new(t0, UDP, timers());
        completed.on_response(t0, 486);
        assert!(completed.on_response(t0, 180).is_empty());
        assert!(completed.on_response(t0, 200).is_empty());
        assert_eq!(completed.state(), ClientInviteState::Completed);
    }

    #[test]
    fn invite_client_transport_errors_end_calling_and_completed_only() {
        let t0 = Instant::now();
        let (mut calling, _) = ClientInvite::new(t0, UDP, timers());
        assert_eq!(calling.on_transport_error(t0), [CA::TransportError, CA::Terminated]);
        assert_eq!(calling.next_deadline(), None);

        let (mut completed, _) = ClientInvite::new(t0, UDP, timers());
        completed.on_response(t0, 486);
        assert_eq!(completed.on_transport_error(t0), [CA::TransportError, CA::Terminated]);

        let (mut proceeding, _) = ClientInvite::new(t0, UDP, timers());
        proceeding.on_response(t0, 180);
        assert!(proceeding.on_transport_error(t0).is_empty());
        assert_eq!(proceeding.state(), ClientInviteState::Proceeding);

        let (mut accepted, _) = ClientInvite::new(t0, UDP, timers());
        accepted.on_response(t0, 200);
        assert!(accepted.on_transport_error(t0).is_empty());
        assert_eq!(accepted.state(), ClientInviteState::Accepted);

        assert!(calling.on_transport_error(t0).is_empty());
    }

    #[test]
    fn a_terminated_invite_client_ignores_everything() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, TCP, timers());
        tx.on_response(t0, 486);
        assert!(tx.is_terminated());
        for status in [100, 180, 200, 486] {
            assert!(tx.on_response(t0, status).is_empty());
        }
        assert!(tx.on_timeout(t0 + ms(100_000)).is_empty());
        assert!(tx.on_transport_error(t0).is_empty());
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn a_late_timeout_call_ends_with_timer_b_without_a_last_retransmission() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        assert_eq!(tx.on_timeout(t0 + ms(40_000)), [CA::Timeout, CA::Terminated]);
    }

    #[test]
    fn a_late_timer_a_is_rearmed_from_now_so_no_burst_follows() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        assert_eq!(tx.on_timeout(t0 + ms(5000)), [CA::Send]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(6000)));
    }

    #[test]
    fn status_codes_outside_100_to_699_are_ignored() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientInvite::new(t0, UDP, timers());
        for status in [0, 99, 700, 999, u16::MAX] {
            assert!(tx.on_response(t0, status).is_empty());
        }
        assert_eq!(tx.state(), ClientInviteState::Calling);
        let (mut server, _) = ServerNonInvite::new(t0, UDP, timers());
        assert!(server.on_tu_response(t0, 700).is_empty());
        assert_eq!(server.state(), ServerNonInviteState::Trying);
    }

    #[test]
    fn a_zero_t1_disables_retransmission_instead_of_spinning() {
        let t0 = Instant::now();
        let zero = Timers { t1: Duration::ZERO, ..Timers::default() };
        let (mut tx, _) = ClientNonInvite::new(t0, UDP, zero);
        // Timer F is 64 * 0 = 0: due at once, and it ends the transaction.
        assert_eq!(tx.next_deadline(), Some(t0));
        assert_eq!(tx.on_timeout(t0), [CA::Timeout, CA::Terminated]);
    }

    // ------------------------------------------------------------------ non-INVITE client

    #[test]
    fn non_invite_client_delivers_the_final_and_timer_k_ends_it_after_t4() {
        let t0 = Instant::now();
        let (mut tx, actions) = ClientNonInvite::new(t0, UDP, timers());
        assert_eq!(actions, [CA::Send]);
        assert_eq!(tx.state(), ClientNonInviteState::Trying);
        assert_eq!(tx.on_response(t0 + ms(100), 200), [CA::Deliver]);
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(5100)));
        assert_eq!(tx.on_timeout(t0 + ms(5100)), [CA::Terminated]);
    }

    #[test]
    fn timer_e_doubles_from_t1_up_to_t2_until_timer_f_times_out() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientNonInvite::new(t0, UDP, timers());
        let mut sends = Vec::new();
        let last = loop {
            let Some(deadline) = tx.next_deadline() else { break None };
            let actions = tx.on_timeout(deadline);
            if actions == [CA::Send] {
                sends.push((deadline - t0).as_millis());
            } else {
                break Some(((deadline - t0).as_millis(), actions));
            }
        };
        assert_eq!(sends, [500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
        assert_eq!(last, Some((32_000, vec![CA::Timeout, CA::Terminated])));
    }

    #[test]
    fn timer_e_fires_every_t2_in_proceeding() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientNonInvite::new(t0, UDP, timers());
        assert_eq!(tx.on_response(t0 + ms(200), 100), [CA::Deliver]);
        assert_eq!(tx.state(), ClientNonInviteState::Proceeding);
        // E keeps its schedule, then is re-armed at T2 each time it fires.
        assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));
        assert_eq!(tx.on_timeout(t0 + ms(500)), [CA::Send]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(4500)));
        assert_eq!(tx.on_timeout(t0 + ms(4500)), [CA::Send]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(8500)));
        assert_eq!(tx.on_response(t0 + ms(9000), 180), [CA::Deliver]);
        assert_eq!(tx.on_timeout(t0 + ms(32_000)), [CA::Timeout, CA::Terminated]);
    }

    #[test]
    fn non_invite_client_on_a_reliable_transport_has_no_timer_e_and_a_zero_timer_k() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientNonInvite::new(t0, TCP, timers());
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(tx.on_response(t0 + ms(10), 404), [CA::Deliver, CA::Terminated]);

        let (mut silent, _) = ClientNonInvite::new(t0, TCP, timers());
        assert_eq!(silent.on_timeout(t0 + ms(32_000)), [CA::Timeout, CA::Terminated]);
    }

    #[test]
    fn retransmitted_responses_in_non_invite_completed_are_absorbed() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientNonInvite::new(t0, UDP, timers());
        tx.on_response(t0, 200);
        assert!(tx.on_response(t0 + ms(1), 200).is_empty());
        assert!(tx.on_response(t0 + ms(2), 500).is_empty());
        assert!(tx.on_response(t0 + ms(3), 100).is_empty());
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
    }

    #[test]
    fn non_invite_client_transport_errors_end_trying_and_proceeding_only() {
        let t0 = Instant::now();
        let (mut trying, _) = ClientNonInvite::new(t0, UDP, timers());
        assert_eq!(trying.on_transport_error(t0), [CA::TransportError, CA::Terminated]);

        let (mut proceeding, _) = ClientNonInvite::new(t0, UDP, timers());
        proceeding.on_response(t0, 100);
        assert_eq!(proceeding.on_transport_error(t0), [CA::TransportError, CA::Terminated]);

        let (mut completed, _) = ClientNonInvite::new(t0, UDP, timers());
        completed.on_response(t0, 200);
        assert!(completed.on_transport_error(t0).is_empty());
        assert_eq!(completed.state(), ClientNonInviteState::Completed);

        assert!(trying.on_transport_error(t0).is_empty());
    }

    #[test]
    fn a_terminated_non_invite_client_ignores_everything() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientNonInvite::new(t0, UDP, timers());
        tx.on_response(t0, 200);
        tx.on_timeout(t0 + ms(5000));
        assert!(tx.is_terminated());
        assert!(tx.on_response(t0, 200).is_empty());
        assert!(tx.on_timeout(t0 + ms(99_000)).is_empty());
        assert!(tx.on_transport_error(t0).is_empty());
    }

    // ------------------------------------------------------------------ INVITE server

    #[test]
    fn invite_server_sends_trying_ringing_and_ok_then_timer_l_ends_accepted() {
        let t0 = Instant::now();
        let (mut tx, actions) = ServerInvite::new(t0, UDP, timers());
        assert!(actions.is_empty());
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert_eq!(tx.next_deadline(), None);

        assert_eq!(tx.on_tu_response(t0, 100), [SA::SendLastResponse]);
        assert_eq!(tx.on_tu_response(t0 + ms(100), 180), [SA::SendLastResponse]);
        assert_eq!(tx.on_tu_response(t0 + ms(2000), 200), [SA::SendLastResponse]);
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(34_000)));
        assert_eq!(tx.on_timeout(t0 + ms(34_000)), [SA::Terminated]);
    }

    #[test]
    fn accepted_absorbs_retransmitted_invites_and_sends_the_tus_2xx_retransmissions() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        tx.on_tu_response(t0, 200);
        assert!(tx.on_request_retransmission(t0 + ms(500)).is_empty());
        assert_eq!(tx.on_tu_response(t0 + ms(500), 200), [SA::SendLastResponse]);
        assert!(tx.on_tu_response(t0 + ms(600), 486).is_empty());
        assert!(tx.on_tu_response(t0 + ms(600), 180).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Accepted);
    }

    #[test]
    fn an_ack_matching_accepted_goes_to_the_tu() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        tx.on_tu_response(t0, 200);
        assert_eq!(tx.on_ack(t0 + ms(50)), [SA::DeliverAck]);
        assert_eq!(tx.state(), ServerInviteState::Accepted);
    }

    #[test]
    fn timer_l_is_64_t1_on_a_reliable_transport_too() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, TCP, timers());
        tx.on_tu_response(t0, 200);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
    }

    #[test]
    fn a_retransmitted_invite_in_proceeding_gets_the_last_provisional_once_there_is_one() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        assert!(tx.on_request_retransmission(t0).is_empty());
        tx.on_tu_response(t0, 100);
        assert_eq!(tx.on_request_retransmission(t0 + ms(500)), [SA::SendLastResponse]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
    }

    #[test]
    fn timer_g_resends_the_final_doubling_up_to_t2_until_timer_h_reports_no_ack() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        assert_eq!(tx.on_tu_response(t0, 486), [SA::SendLastResponse]);
        assert_eq!(tx.state(), ServerInviteState::Completed);
        let mut resent = Vec::new();
        let last = loop {
            let Some(deadline) = tx.next_deadline() else { break None };
            let actions = tx.on_timeout(deadline);
            if actions == [SA::SendLastResponse] {
                resent.push((deadline - t0).as_millis());
            } else {
                break Some(((deadline - t0).as_millis(), actions));
            }
        };
        assert_eq!(resent, [500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
        assert_eq!(last, Some((32_000, vec![SA::AckTimeout, SA::Terminated])));
    }

    #[test]
    fn invite_server_on_a_reliable_transport_has_no_timer_g_but_keeps_timer_h() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, TCP, timers());
        tx.on_tu_response(t0, 603);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(tx.on_timeout(t0 + ms(32_000)), [SA::AckTimeout, SA::Terminated]);
    }

    #[test]
    fn a_retransmitted_invite_in_completed_gets_the_final_again() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        tx.on_tu_response(t0, 180);
        tx.on_tu_response(t0, 486);
        assert_eq!(tx.on_request_retransmission(t0 + ms(200)), [SA::SendLastResponse]);
        assert!(tx.on_tu_response(t0 + ms(300), 500).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Completed);
    }

    #[test]
    fn an_ack_in_completed_confirms_and_timer_i_ends_it_after_t4() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        tx.on_tu_response(t0, 486);
        assert!(tx.on_ack(t0 + ms(100)).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        // G and H stop; I is armed.
        assert_eq!(tx.next_deadline(), Some(t0 + ms(5100)));
        assert!(tx.on_ack(t0 + ms(200)).is_empty());
        assert!(tx.on_request_retransmission(t0 + ms(300)).is_empty());
        assert!(tx.on_timeout(t0 + ms(5099)).is_empty());
        assert_eq!(tx.on_timeout(t0 + ms(5100)), [SA::Terminated]);
    }

    #[test]
    fn an_ack_in_completed_on_a_reliable_transport_ends_at_once_as_timer_i_is_zero() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, TCP, timers());
        tx.on_tu_response(t0, 486);
        assert_eq!(tx.on_ack(t0 + ms(100)), [SA::Terminated]);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn an_ack_before_any_final_is_ignored() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        assert!(tx.on_ack(t0).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
    }

    #[test]
    fn invite_server_reports_transport_errors_and_stays_in_every_live_state() {
        let t0 = Instant::now();
        let mut proceeding = ServerInvite::new(t0, UDP, timers()).0;
        let mut accepted = ServerInvite::new(t0, UDP, timers()).0;
        accepted.on_tu_response(t0, 200);
        let mut completed = ServerInvite::new(t0, UDP, timers()).0;
        completed.on_tu_response(t0, 486);
        let mut confirmed = ServerInvite::new(t0, UDP, timers()).0;
        confirmed.on_tu_response(t0, 486);
        confirmed.on_ack(t0);
        for tx in [&mut proceeding, &mut accepted, &mut completed, &mut confirmed] {
            let before = tx.state();
            assert_eq!(tx.on_transport_error(t0), [SA::TransportError]);
            assert_eq!(tx.state(), before);
        }
        // The timers still end them.
        assert_eq!(completed.on_timeout(t0 + ms(32_000)), [SA::AckTimeout, SA::Terminated]);
        assert!(completed.on_transport_error(t0).is_empty());
    }

    #[test]
    fn a_terminated_invite_server_ignores_everything() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerInvite::new(t0, UDP, timers());
        tx.on_tu_response(t0, 200);
        tx.on_timeout(t0 + ms(32_000));
        assert!(tx.is_terminated());
        assert!(tx.on_tu_response(t0, 200).is_empty());
        assert!(tx.on_request_retransmission(t0).is_empty());
        assert!(tx.on_ack(t0).is_empty());
        assert!(tx.on_timeout(t0 + ms(99_000)).is_empty());
        assert!(tx.on_transport_error(t0).is_empty());
    }

    // ------------------------------------------------------------------ non-INVITE server

    #[test]
    fn non_invite_server_sends_the_final_and_timer_j_ends_it_after_64_t1() {
        let t0 = Instant::now();
        let (mut tx, actions) = ServerNonInvite::new(t0, UDP, timers());
        assert!(actions.is_empty());
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(tx.on_tu_response(t0 + ms(10), 200), [SA::SendLastResponse]);
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_010)));
        assert!(tx.on_timeout(t0 + ms(32_009)).is_empty());
        assert_eq!(tx.on_timeout(t0 + ms(32_010)), [SA::Terminated]);
    }

    #[test]
    fn non_invite_server_on_a_reliable_transport_ends_with_its_final_as_timer_j_is_zero() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerNonInvite::new(t0, TCP, timers());
        assert_eq!(tx.on_tu_response(t0, 100), [SA::SendLastResponse]);
        assert_eq!(tx.on_tu_response(t0, 401), [SA::SendLastResponse, SA::Terminated]);
    }

    #[test]
    fn retransmitted_requests_are_absorbed_in_trying_and_answered_with_the_last_response_after() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerNonInvite::new(t0, UDP, timers());
        assert!(tx.on_request_retransmission(t0).is_empty());
        tx.on_tu_response(t0, 100);
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        assert_eq!(tx.on_request_retransmission(t0 + ms(500)), [SA::SendLastResponse]);
        tx.on_tu_response(t0 + ms(600), 200);
        assert_eq!(tx.on_request_retransmission(t0 + ms(1000)), [SA::SendLastResponse]);
        assert!(tx.on_tu_response(t0 + ms(1100), 500).is_empty());
        assert!(tx.on_tu_response(t0 + ms(1100), 100).is_empty());
    }

    #[test]
    fn non_invite_server_reports_transport_errors_and_stays_in_every_live_state() {
        let t0 = Instant::now();
        let mut trying = ServerNonInvite::new(t0, UDP, timers()).0;
        let mut proceeding = ServerNonInvite::new(t0, UDP, timers()).0;
        proceeding.on_tu_response(t0, 100);
        let mut completed = ServerNonInvite::new(t0, UDP, timers()).0;
        completed.on_tu_response(t0, 200);
        for tx in [&mut trying, &mut proceeding, &mut completed] {
            let before = tx.state();
            assert_eq!(tx.on_transport_error(t0), [SA::TransportError]);
            assert_eq!(tx.state(), before);
        }
    }

    #[test]
    fn a_terminated_non_invite_server_ignores_everything() {
        let t0 = Instant::now();
        let (mut tx, _) = ServerNonInvite::new(t0, TCP, timers());
        tx.on_tu_response(t0, 200);
        assert!(tx.is_terminated());
        assert!(tx.on_tu_response(t0, 200).is_empty());
        assert!(tx.on_request_retransmission(t0).is_empty());
        assert!(tx.on_timeout(t0 + ms(99_000)).is_empty());
        assert!(tx.on_transport_error(t0).is_empty());
    }

    // ------------------------------------------------------------------ keys

    #[test]
    fn a_branch_without_the_magic_cookie_gives_no_server_key() {
        assert_eq!(server_key("a1b2c3", "10.0.0.1:5060", "INVITE"), None);
        assert_eq!(server_key("Z9HG4BKabc", "10.0.0.1:5060", "INVITE"), None);
        assert_eq!(server_key("", "10.0.0.1:5060", "INVITE"), None);
        assert!(server_key("z9hG4bKabc", "10.0.0.1:5060", "INVITE").is_some());
    }

    #[test]
    fn an_ack_matches_the_invite_server_transaction_it_acknowledges() {
        let invite = server_key("z9hG4bK776", "pc33.example.com:5060", "INVITE");
        let ack = server_key("z9hG4bK776", "pc33.example.com:5060", "ACK");
        assert!(invite.is_some());
        assert_eq!(invite, ack);
    }

    #[test]
    fn a_cancel_has_its_own_server_key_and_names_the_invite_it_cancels() {
        let invite = server_key("z9hG4bK776", "pc33.example.com", "INVITE").unwrap();
        let cancel = server_key("z9hG4bK776", "pc33.example.com", "CANCEL").unwrap();
        assert_ne!(invite, cancel);
        assert_eq!(cancel.method(), &KeyMethod::Cancel);
        assert_eq!(cancel.cancelled_invite(), Some(invite.clone()));
        assert_eq!(invite.cancelled_invite(), None);
    }

    #[test]
    fn server_keys_differ_by_branch_case_sent_by_and_method() {
        let key = |branch, sent_by, method| server_key(branch, sent_by, method).unwrap();
        let base = key("z9hG4bKabc", "a.example.com:5060", "OPTIONS");
        assert_ne!(base, key("z9hG4bKABC", "a.example.com:5060", "OPTIONS"));
        assert_ne!(base, key("z9hG4bKabc", "b.example.com:5060", "OPTIONS"));
        assert_ne!(base, key("z9hG4bKabc", "a.example.com:5070", "OPTIONS"));
        assert_ne!(base, key("z9hG4bKabc", "a.example.com:5060", "INFO"));
        assert_ne!(base, key("z9hG4bKabc", "a.example.com:5060", "options"));
        assert_eq!(base, key("z9hG4bKabc", "A.Example.COM:5060", "OPTIONS"));
        assert_eq!(base.sent_by(), "a.example.com:5060");
        assert_eq!(base.branch(), "z9hG4bKabc");
        assert_eq!(base.method(), &KeyMethod::Other("OPTIONS".to_owned()));
    }

    #[test]
    fn a_client_key_tells_a_cancel_from_the_invite_sharing_its_branch() {
        let invite = client_key("z9hG4bKx", "INVITE");
        let cancel = client_key("z9hG4bKx", "CANCEL");
        assert_ne!(invite, cancel);
        assert_eq!(invite, client_key("z9hG4bKx", "INVITE"));
        assert_ne!(invite, client_key("z9hG4bKX", "INVITE"));
        assert_eq!(invite.branch(), "z9hG4bKx");
        assert_eq!(cancel.method().as_str(), "CANCEL");
    }

    #[test]
    fn new_branches_carry_the_cookie_and_a_random_alphanumeric_tail() {
        let a = new_branch();
        let b = new_branch();
        assert_ne!(a, b);
        for branch in [&a, &b] {
            let tail = branch.strip_prefix(MAGIC_COOKIE).unwrap();
            assert_eq!(tail.len(), BRANCH_RANDOM_LEN);
            assert!(tail.bytes().all(|c| c.is_ascii_alphanumeric()));
            assert!(server_key(branch, "h", "INVITE").is_some());
        }
    }

    // ------------------------------------------------------------------ properties

    /// One event from the network, the TU or the clock. Each machine takes the ones it has.
    #[derive(Debug, Clone)]
    enum Event {
        /// A response (clients) or a TU response (servers).
        Status(u16),
        Retransmission,
        Ack,
        TransportError,
        /// Time moves on by this many milliseconds, then `on_timeout`.
        Advance(u64),
        /// Time moves to `next_deadline()` (if any), then `on_timeout`.
        ToDeadline,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => (100u16..700).prop_map(Event::Status),
            2 => prop::sample::select(&[100u16, 180, 199, 200, 299, 300, 486, 699][..])
                .prop_map(Event::Status),
            1 => (0u16..1000).prop_map(Event::Status),
            2 => Just(Event::Retransmission),
            2 => Just(Event::Ack),
            1 => Just(Event::TransportError),
            3 => (0u64..40_000).prop_map(Event::Advance),
            3 => Just(Event::ToDeadline),
        ]
    }

    fn reliability() -> impl Strategy<Value = Reliability> {
        prop_oneof![Just(UDP), Just(TCP)]
    }

    fn any_timers() -> impl Strategy<Value = Timers> {
        prop_oneof![
            3 => Just(Timers::default()),
            1 => (0u64..=1000, 1u64..=16, 0u64..=10_000).prop_map(|(t1, t2_t1s, t4)| Timers {
                t1: ms(t1),
                t2: ms(t1.max(1) * t2_t1s),
                t4: ms(t4),
            }),
        ]
    }

    /// The four machines behind one face, for the property test.
    trait Machine {
        type Action: PartialEq + std::fmt::Debug;
        const TERMINATED: Self::Action;
        fn start(
            now: Instant,
            reliability: Reliability,
            timers: Timers,
        ) -> (Self, Vec<Self::Action>)
        where
            Self: Sized;
        fn event(&mut self, now: Instant, event: &Event) -> Vec<Self::Action>;
        fn timeout(&mut self, now: Instant) -> Vec<Self::Action>;
        fn deadline(&self) -> Option<Instant>;
        fn terminated(&self) -> bool;
        /// In a state where the RFC arms no timer and the transaction waits for a message.
        fn waits_without_timer(&self) -> bool;
    }

    impl Machine for ClientInvite {
        type Action = ClientAction;
        const TERMINATED: ClientAction = CA::Terminated;
        fn start(now: Instant, r: Reliability, t: Timers) -> (Self, Vec<ClientAction>) {
            ClientInvite::new(now, r, t)
        }
        fn event(&mut self, now: Instant, event: &Event) -> Vec<ClientAction> {
            match event {
                Event::Status(status) => self.on_response(now, *status),
                Event::TransportError => self.on_transport_error(now),
                _ => Vec::new(),
            }
        }
        fn timeout(&mut self, now: Instant) -> Vec<ClientAction> {
            self.on_timeout(now)
        }
        fn deadline(&self) -> Option<Instant> {
            self.next_deadline()
        }
        fn terminated(&self) -> bool {
            self.is_terminated()
        }
        fn waits_without_timer(&self) -> bool {
            self.state() == ClientInviteState::Proceeding
        }
    }

    impl Machine for ClientNonInvite {
        type Action = ClientAction;
        const TERMINATED: ClientAction = CA::Terminated;
        fn start(now: Instant, r: Reliability, t: Timers) -> (Self, Vec<ClientAction>) {
            ClientNonInvite::new(now, r, t)
        }
        fn event(&mut self, now: Instant, event: &Event) -> Vec<ClientAction> {
            match event {
                Event::Status(status) => self.on_response(now, *status),
                Event::TransportError => self.on_transport_error(now),
                _ => Vec::new(),
            }
        }
        fn timeout(&mut self, now: Instant) -> Vec<ClientAction> {
            self.on_timeout(now)
        }
        fn deadline(&self) -> Option<Instant> {
            self.next_deadline()
        }
        fn terminated(&self) -> bool {
            self.is_terminated()
        }
        fn waits_without_timer(&self) -> bool {
            false
        }
    }

    impl Machine for ServerInvite {
        type Action = ServerAction;
        const TERMINATED: ServerAction = SA::Terminated;
        fn start(now: Instant, r: Reliability, t: Timers) -> (Self, Vec<ServerAction>) {
            ServerInvite::new(now, r, t)
        }
        fn event(&mut self, now: Instant, event: &Event) -> Vec<ServerAction> {
            match event {
                Event::Status(status) => self.on_tu_response(now, *status),
                Event::Retransmission => self.on_request_retransmission(now),
                Event::Ack => self.on_ack(now),
                Event::TransportError => self.on_transport_error(now),
                Event::Advance(_) | Event::ToDeadline => Vec::new(),
            }
        }
        fn timeout(&mut self, now: Instant) -> Vec<ServerAction> {
            self.on_timeout(now)
        }
        fn deadline(&self) -> Option<Instant> {
            self.next_deadline()
        }
        fn terminated(&self) -> bool {
            self.is_terminated()
        }
        fn waits_without_timer(&self) -> bool {
            self.state() == ServerInviteState::Proceeding
        }
    }

    impl Machine for ServerNonInvite {
        type Action = ServerAction;
        const TERMINATED: ServerAction = SA::Terminated;
        fn start(now: Instant, r: Reliability, t: Timers) -> (Self, Vec<ServerAction>) {
            ServerNonInvite::new(now, r, t)
        }
        fn event(&mut self, now: Instant, event: &Event) -> Vec<ServerAction> {
            match event {
                Event::Status(status) => self.on_tu_response(now, *status),
                Event::Retransmission => self.on_request_retransmission(now),
                Event::TransportError => self.on_transport_error(now),
                Event::Ack | Event::Advance(_) | Event::ToDeadline => Vec::new(),
            }
        }
        fn timeout(&mut self, now: Instant) -> Vec<ServerAction> {
            self.on_timeout(now)
        }
        fn deadline(&self) -> Option<Instant> {
            self.next_deadline()
        }
        fn terminated(&self) -> bool {
            self.is_terminated()
        }
        fn waits_without_timer(&self) -> bool {
            matches!(self.state(), ServerNonInviteState::Trying | ServerNonInviteState::Proceeding)
        }
    }

    /// Checks one call's actions against the machine's state before and after it.
    fn check_step<M: Machine>(
        machine: &M,
        was_terminated: bool,
        actions: &[M::Action],
    ) -> Result<(), TestCaseError> {
        if was_terminated {
            prop_assert!(actions.is_empty(), "actions after Terminated: {actions:?}");
        }
        let ends = actions.iter().filter(|a| **a == M::TERMINATED).count();
        prop_assert!(ends <= 1, "Terminated twice: {actions:?}");
        if ends == 1 {
            prop_assert_eq!(actions.last(), Some(&M::TERMINATED), "Terminated not last");
        }
        prop_assert_eq!(machine.terminated(), was_terminated || ends == 1);
        prop_assert_eq!(
            machine.deadline().is_none(),
            machine.terminated() || machine.waits_without_timer(),
            "next_deadline() is None iff terminated or waiting without a timer"
        );
        Ok(())
    }

    fn run<M: Machine>(
        reliability: Reliability,
        timers: Timers,
        events: &[Event],
    ) -> Result<(), TestCaseError> {
        let mut now = Instant::now();
        let (mut machine, actions) = M::start(now, reliability, timers);
        check_step(&machine, false, &actions)?;
        for event in events {
            let was_terminated = machine.terminated();
            let fired = match event {
                Event::Advance(by) => {
                    now += ms(*by);
                    true
                }
                Event::ToDeadline => {
                    now = machine.deadline().map_or(now, |d| d.max(now));
                    true
                }
                _ => false,
            };
            let actions = if fired { machine.timeout(now) } else { machine.event(now, event) };
            check_step(&machine, was_terminated, &actions)?;
            if fired {
                prop_assert!(
                    machine.deadline().is_none_or(|d| d > now),
                    "a timer is still due right after on_timeout"
                );
            }
        }
        // Left to its timers alone, a transaction that has one always ends, and soon.
        for _ in 0..200 {
            let Some(deadline) = machine.deadline() else { break };
            now = deadline.max(now);
            let was_terminated = machine.terminated();
            let actions = machine.timeout(now);
            check_step(&machine, was_terminated, &actions)?;
        }
        prop_assert!(machine.terminated() || machine.waits_without_timer());
        Ok(())
    }

    proptest! {
        #[test]
        fn any_event_sequence_keeps_the_invite_client_consistent(
            r in reliability(), t in any_timers(), events in prop::collection::vec(event(), 0..40)
        ) {
            run::<ClientInvite>(r, t, &events)?;
        }

        #[test]
        fn any_event_sequence_keeps_the_non_invite_client_consistent(
            r in reliability(), t in any_timers(), events in prop::collection::vec(event(), 0..40)
        ) {
            run::<ClientNonInvite>(r, t, &events)?;
        }

        #[test]
        fn any_event_sequence_keeps_the_invite_server_consistent(
            r in reliability(), t in any_timers(), events in prop::collection::vec(event(), 0..40)
        ) {
            run::<ServerInvite>(r, t, &events)?;
        }

        #[test]
        fn any_event_sequence_keeps_the_non_invite_server_consistent(
            r in reliability(), t in any_timers(), events in prop::collection::vec(event(), 0..40)
        ) {
            run::<ServerNonInvite>(r, t, &events)?;
        }
    }
}
