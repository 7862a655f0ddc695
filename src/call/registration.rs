//! Registrations to carriers (issue 17, item 5): every gateway keeps a binding at the registrar
//! of each OutboundTrunk with `registration`, so that the carrier delivers calls to it. The
//! REGISTERs and what their answers mean are `sip::registration`'s; this module sends them
//! (`call::nict`, one non-INVITE transaction each), keeps time, and publishes the state.
//!
//! **Each gateway registers its own contact**, `sip:USER@ADDRESS:PORT` with the address it
//! advertises (`--public-address`, else its carrier-facing listener) and the account as user:
//! behind one public address (a load balancer) every pod refreshes the same binding, which is
//! harmless; with an address per pod the carrier holds one binding per pod and delivers to any
//! of them (a pod that goes stops refreshing and its binding lapses). No leader is needed.
//!
//! **Which calls are the registration's.** When a binding is made, the address the registrar
//! answered from is remembered for that trunk ([`Registrations::via`]); an INVITE from that
//! address is offered to the matcher as one the registration may deliver (`CallAttempt::
//! registration`), and the InboundTrunk whose `auth.registration` names the OutboundTrunk
//! takes it. The address is kept while the binding the registrar granted lasts: a failed
//! refresh does not forget it (the carrier may go on delivering until the binding lapses), a
//! stopped registration (the trunk removed or its registration turned off) forgets it at once.
//!
//! **State** goes, on each change only: `trunkline_outbound_registered{trunk}` (1/0), a log
//! line, and the trunk's entry in the gateway's status report (`RegistrationHealth`), from which
//! the operator writes the `Registered` condition. A trunk removed or whose registration is
//! turned off is unregistered (Expires: 0, best effort, 2 s) and its series and entry dropped.
//!
//! **Timing** ([`sip::registration::refresh_after`], [`sip::registration::retry_after`]): the
//! first REGISTER within a second of the trunk's arrival (random, so pods started together
//! spread out); a refresh before the binding lapses; after a failure an exponential wait from
//! 30 s to 30 min with jitter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Snapshot;
use crate::config::model::{ObjectName, OutboundTrunkRoute, RoutingTable};
use crate::config::secret::BasicAuth;
use crate::observe::admin::{GatewayReport, RegistrationHealth};
use crate::sip::msg::Request;
use crate::sip::registration::{self as reg, Binding, Outcome, Registration};
use crate::sip::transport::Protocol;

use super::gateway::Gateway;
use super::machine::Ids;
use super::nict::{self, Peer};
use super::services::CallServices;

/// How long one REGISTER waits for its final answer (timer F is 32 s; a registrar that takes
/// longer is down for our purpose).
const ANSWER_WITHIN: Duration = Duration::from_secs(16);
/// How long an unregister on the way out may take.
const UNREGISTER_WITHIN: Duration = Duration::from_secs(2);
/// The most REGISTERs in one attempt: the first, its challenge's answer, a stale nonce's, a 423's.
const SENDS_PER_ATTEMPT: usize = 4;

/// The registrar addresses of live bindings: which OutboundTrunk's registration an INVITE from
/// an address may come through, and until when the binding the registrar granted lasts.
#[derive(Debug, Default)]
pub struct Registrations {
    by_address: RwLock<HashMap<IpAddr, (ObjectName, Instant)>>,
}

impl Registrations {
    /// The OutboundTrunk whose binding's registrar is `ip`, while that binding lasts.
    pub fn via(&self, ip: IpAddr) -> Option<ObjectName> {
        self.via_at(ip, Instant::now())
    }

    fn via_at(&self, ip: IpAddr, now: Instant) -> Option<ObjectName> {
        let by_address = self.by_address.read().unwrap_or_else(PoisonError::into_inner);
        by_address.get(&ip).filter(|(_, until)| now < *until).map(|(trunk, _)| trunk.clone())
    }

    /// `trunk`'s binding at the registrar `ip` lasts until `until`.
    fn bound(&self, ip: IpAddr, trunk: &ObjectName, until: Instant) {
        let mut by_address = self.by_address.write().unwrap_or_else(PoisonError::into_inner);
        // One registrar address per trunk: the registrar may answer from another after a DNS
        // change, and the old one is not its any more.
        by_address.retain(|_, (t, _)| t != trunk);
        by_address.insert(ip, (trunk.clone(), until));
    }

    fn forget(&self, trunk: &ObjectName) {
        let mut by_address = self.by_address.write().unwrap_or_else(PoisonError::into_inner);
        by_address.retain(|_, (t, _)| t != trunk);
    }
}

/// What one trunk's registration needs; a change of any of it starts the binding again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    trunk: ObjectName,
    peer: Peer,
    credentials: BasicAuth,
    expires: u32,
}

impl Wanted {
    /// The trunk's registration, to its first host (lowest priority): carriers name one
    /// registrar per account, and the other hosts of `hosts` are call-failover targets.
    fn of(route: &OutboundTrunkRoute) -> Option<Wanted> {
        let first = route.hosts.first()?;
        Some(Wanted {
            trunk: route.name.clone(),
            peer: Peer {
                host: first.host.clone(),
                port: first.port,
                transport: first.transport,
                srv: first.srv_name(),
            },
            credentials: route.credentials.clone()?,
            expires: route.registration_expires_seconds?,
        })
    }

    /// The registrar's domain as the Request-URI and AOR carry it: the host, with the port
    /// unless it is the transport's default (never for a host looked up by SRV).
    fn domain(&self) -> String {
        let default = if self.peer.transport == Protocol::Tls { 5061 } else { 5060 };
        let host = match self.peer.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.peer.host.clone(),
        };
        if self.peer.port == default { host } else { format!("{host}:{}", self.peer.port) }
    }
}

fn transport_param(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "",
        Protocol::Tcp => ";transport=tcp",
        Protocol::Tls => ";transport=tls",
    }
}

/// Where each trunk's state goes on each change.
struct Publish {
    services: Arc<CallServices>,
    report: Arc<GatewayReport>,
}

impl Publish {
    /// `registrar`: the registrar's address and until when its binding lasts, once
    /// registered; `None` after a failure, when the address is kept until then anyway.
    fn changed(
        &self,
        trunk: &ObjectName,
        registered: bool,
        detail: &str,
        registrar: Option<(IpAddr, Instant)>,
    ) {
        let name = trunk.to_string();
        self.services.metrics.set_outbound_registered(&name, registered);
        self.report.set_registration(
            &name,
            RegistrationHealth {
                registered: Some(registered),
                since: unix_now(),
                detail: detail.into(),
            },
        );
        match registrar {
            Some((ip, until)) => {
                self.services.registrations.bound(ip, trunk, until);
                tracing::info!(trunk = %name, registrar = %ip, answer = %detail, "OutboundTrunk {name} is registered ({detail})");
            }
            None => {
                tracing::warn!(trunk = %name, reason = %detail, "OutboundTrunk {name} is not registered: {detail}");
            }
        }
    }

    fn stopped(&self, trunk: &ObjectName) {
        let name = trunk.to_string();
        self.services.registrations.forget(trunk);
        self.services.metrics.forget_registration(&name);
        self.report.remove_registration(&name);
    }
}

/// Starts the registrations: one task per OutboundTrunk of the table with `registration`, which
/// follow the table's changes, and stop (unregistering) when `stop` is cancelled.
pub fn spawn(
    gateway: &Gateway,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    report: Arc<GatewayReport>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let publish = Arc::new(Publish { services: gateway.services().clone(), report });
    tokio::spawn(async move {
        let mut running: HashMap<ObjectName, Running> = HashMap::new();
        loop {
            let table = snapshots.borrow_and_update().table.clone();
            follow(&publish, &mut running, &table, &stop).await;
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
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

struct Running {
    wanted: Wanted,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn follow(
    publish: &Arc<Publish>,
    running: &mut HashMap<ObjectName, Running>,
    table: &RoutingTable,
    stop: &CancellationToken,
) {
    let wanted: HashMap<ObjectName, Wanted> = table
        .outbound
        .values()
        .filter_map(|r| Wanted::of(r))
        .map(|w| (w.trunk.clone(), w))
        .collect();
    let stale: Vec<ObjectName> = running
        .iter()
        .filter(|(name, r)| wanted.get(*name) != Some(&r.wanted))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(r) = running.remove(&name) {
            end(publish, r).await;
        }
    }
    for (name, w) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let token = stop.child_token();
        let task = tokio::spawn(keep(publish.clone(), w.clone(), token.clone()));
        running.insert(name, Running { wanted: w, stop: token, task });
    }
}

/// Stops one trunk's task (which unregisters), then drops what it published.
async fn end(publish: &Publish, running: Running) {
    running.stop.cancel();
    let _ = running.task.await;
    publish.stopped(&running.wanted.trunk);
}

/// Keeps one trunk's binding fresh until `stop`; then unregisters.
async fn keep(publish: Arc<Publish>, wanted: Wanted, stop: CancellationToken) {
    let services = &publish.services;
    let mut ids = Ids::random();
    let binding_ids =
        reg::Ids { call_id: format!("{}@trunkline", ids.token(20)), tag: ids.token(10) };
    let mut registration: Option<Registration> = None;
    let mut failures = 0u32;
    let mut state: Option<(bool, String)> = None;
    let first = Duration::from_millis(rand::rng().random_range(0..1_000));
    let mut wait = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => break,
        }
        let result = attempt(services, &wanted, &binding_ids, &mut registration, &mut ids).await;
        let (registered, detail, registrar) = match result {
            Ok((expires, registrar)) => {
                failures = 0;
                wait = reg::refresh_after(expires);
                let until = Instant::now() + Duration::from_secs(u64::from(expires));
                (true, format!("registered for {expires} s"), Some((registrar.ip(), until)))
            }
            Err(why) => {
                failures += 1;
                wait = reg::retry_after(failures, rand::rng().random());
                (false, why, None)
            }
        };
        // Published on a change of state or reason only, not on every refresh.
        let now = (registered, if registered { String::new() } else { detail.clone() });
        if state.as_ref() != Some(&now) {
            publish.changed(&wanted.trunk, registered, &detail, registrar);
            state = Some(now);
        } else if let Some((ip, until)) = registrar {
            // A refresh: the binding lasts longer (and the registrar may answer from another
            // address after a DNS change).
            services.registrations.bound(ip, &wanted.trunk, until);
        }
    }
    if let (Some(mut r), Some((true, _))) = (registration, state) {
        let password = wanted.credentials.password.expose().to_string();
        let cnonce = ids.token(16);
        let _ = nict::exchange(services, &wanted.peer, UNREGISTER_WITHIN, |local| {
            let branch = ids.branch();
            r.unregister(&via(wanted.peer.transport, local), &branch, &cnonce, &password)
        })
        .await;
    }
}

/// One registration attempt: the REGISTER and what its answers ask for, until registered or
/// failed. Ok: the seconds granted and the registrar's address.
async fn attempt(
    services: &CallServices,
    wanted: &Wanted,
    binding_ids: &reg::Ids,
    registration: &mut Option<Registration>,
    ids: &mut Ids,
) -> Result<(u32, SocketAddr), String> {
    let password = wanted.credentials.password.expose().to_string();
    let mut next: Option<Request> = None;
    for _ in 0..SENDS_PER_ATTEMPT {
        let (branch, cnonce) = (ids.branch(), ids.token(16));
        let prepared = next.take();
        let r = &mut *registration;
        let (response, addresses) =
            nict::exchange(services, &wanted.peer, ANSWER_WITHIN, |local| match prepared {
                Some(request) => request,
                None => {
                    let contact = contact(services, wanted, local);
                    let registration = r.get_or_insert_with(|| {
                        Registration::new(
                            Binding {
                                domain: wanted.domain(),
                                username: wanted.credentials.username.clone(),
                                contact,
                                expires: wanted.expires,
                                transport_param: transport_param(wanted.peer.transport),
                            },
                            binding_ids.clone(),
                        )
                    });
                    registration.register(
                        &via(wanted.peer.transport, local),
                        &branch,
                        &cnonce,
                        &password,
                    )
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(reg) = registration.as_mut() else {
            return Err("no registration".to_string());
        };
        let via_of = via(wanted.peer.transport, addresses.local);
        let (branch, cnonce) = (ids.branch(), ids.token(16));
        match reg.on_response(&response, |r| r.register(&via_of, &branch, &cnonce, &password)) {
            Outcome::Registered { expires } => return Ok((expires, addresses.remote)),
            Outcome::Send(request) => next = Some(request),
            Outcome::Failed(why) => return Err(why),
            Outcome::Unregistered | Outcome::Ignored => {
                return Err(format!("unexpected answer {}", response.status));
            }
        }
    }
    Err("the registrar kept asking again".to_string())
}

/// `PROTOCOL HOST:PORT` of our Via.
fn via(protocol: Protocol, local: SocketAddr) -> String {
    format!("{} {local}", protocol.as_str())
}

/// Our contact: the account at the address the carrier can reach (the advertised one, else the
/// carrier-facing listener's).
fn contact(services: &CallServices, wanted: &Wanted, local: SocketAddr) -> String {
    let ip = services.config.public_address.unwrap_or(local.ip());
    let addr = SocketAddr::new(ip, local.port());
    format!("sip:{}@{addr}{}", wanted.credentials.username, transport_param(wanted.peer.transport))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registrars_address_delivers_calls_while_the_binding_lasts_refreshed_or_not() {
        let registrations = Registrations::default();
        let trunk = ObjectName::new("voice", "carrier-reg");
        let (ip, other) = ("192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap());
        let t0 = Instant::now();
        registrations.bound(ip, &trunk, t0 + Duration::from_secs(60));
        assert_eq!(registrations.via_at(ip, t0), Some(trunk.clone()));
        // A failed refresh forgets nothing: the carrier may deliver until the binding lapses.
        assert_eq!(registrations.via_at(ip, t0 + Duration::from_secs(59)), Some(trunk.clone()));
        assert_eq!(registrations.via_at(ip, t0 + Duration::from_secs(60)), None, "lapsed");
        assert_eq!(registrations.via_at(other, t0), None);
        // The registrar answers from another address: the old one is not its any more.
        registrations.bound(other, &trunk, t0 + Duration::from_secs(120));
        assert_eq!(registrations.via_at(ip, t0), None);
        assert_eq!(registrations.via_at(other, t0 + Duration::from_secs(90)), Some(trunk.clone()));
        // A stopped registration (trunk removed, registration off) forgets at once.
        registrations.forget(&trunk);
        assert_eq!(registrations.via_at(other, t0), None);
    }
}
