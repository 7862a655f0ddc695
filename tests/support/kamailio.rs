//! Kamailio as a TLS front for sipp, whose Debian build has no TLS. Debian packages `kamailio`
//! and `kamailio-tls-modules`. Two ways round:
//!
//! - [`TlsFront::start`] (carrier side): sipp sends its calls over UDP to Kamailio, which relays
//!   them over TLS to the gateway's `tls://` listener (and relays the responses back).
//! - [`TlsFront::start_agent_side`] (agent side): Kamailio listens on TLS with a certificate the
//!   test gives (signed by a test CA) and relays what the gateway sends it over UDP to sipp as
//!   the agent runtime; the gateway is the TLS client.
//!
//! The front does not record-route: requests inside the dialog are relayed to their
//! Request-URI, which is the Contact of the side that did not send them. On the carrier side the
//! gateway's own requests inside the dialog (a BYE from the agent side) go straight to sipp's
//! Contact, over UDP; on the agent side sipp's Contact is UDP and the gateway still sends on the
//! TLS connection it opened. Use either front for calls the carrier hangs up.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ca::ServerCert;
use super::net::{self, LOCALHOST, TempDir};

/// How long `start` waits for Kamailio to bind its UDP port.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// How many times Kamailio is started with fresh ports when another process took one.
const BIND_ATTEMPTS: usize = 3;

/// Why Kamailio did not start.
enum Failed {
    /// A port chosen free was bound by someone else first.
    PortTaken,
    Other(String),
}

pub struct TlsFront {
    child: Child,
    log: PathBuf,
    udp_port: u16,
    tls_port: u16,
    _dir: TempDir,
}

/// Where the front relays new requests.
#[derive(Clone, Copy)]
enum Relay {
    /// From sipp (UDP) to the gateway's TLS listener.
    ToGatewayOverTls(SocketAddr),
    /// From the gateway (TLS) to sipp as the agent runtime (UDP).
    ToAgentOverUdp(SocketAddr),
    /// A carrier that challenges new INVITEs with 407 (Kamailio's `auth` module) and relays
    /// those whose answer verifies with `username`/`password` to sipp at the address (UDP).
    CarrierBehindProxyAuth { carrier: SocketAddr, username: &'static str, password: &'static str },
}

impl TlsFront {
    /// Starts Kamailio relaying what arrives on a free 127.0.0.1 UDP port to `gateway_tls` over
    /// TLS (the gateway's certificate is not verified).
    pub fn start(gateway_tls: SocketAddr) -> TlsFront {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let own = rcgen::generate_simple_self_signed(names).expect("generate a test certificate");
        let cert =
            ServerCert { cert_pem: own.cert.pem(), key_pem: own.signing_key.serialize_pem() };
        TlsFront::start_relay(Relay::ToGatewayOverTls(gateway_tls), &cert)
    }

    /// Starts Kamailio listening on a free 127.0.0.1 TLS port ([`TlsFront::tls`]) with `cert`,
    /// relaying the new requests that arrive there to sipp at `agent` over UDP.
    pub fn start_agent_side(cert: &ServerCert, agent: SocketAddr) -> TlsFront {
        TlsFront::start_relay(Relay::ToAgentOverUdp(agent), cert)
    }

    /// Starts Kamailio as a carrier's edge that challenges every new INVITE with 407
    /// (`proxy_challenge`, MD5, qop=auth), verifies the answer (`pv_proxy_authenticate`) with
    /// `username`/`password` (403 when it is someone else's, a new 407 when it is wrong), and
    /// relays the call to sipp at `carrier` over UDP. Calls arrive on [`TlsFront::udp`].
    pub fn start_digest_proxy(
        carrier: SocketAddr,
        username: &'static str,
        password: &'static str,
    ) -> TlsFront {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let own = rcgen::generate_simple_self_signed(names).expect("generate a test certificate");
        let cert =
            ServerCert { cert_pem: own.cert.pem(), key_pem: own.signing_key.serialize_pem() };
        TlsFront::start_relay(Relay::CarrierBehindProxyAuth { carrier, username, password }, &cert)
    }

    fn start_relay(relay: Relay, cert: &ServerCert) -> TlsFront {
        // The ports are free when chosen, but another test may bind one before Kamailio does:
        // that race gets new ports, any other failure is the test's.
        for _ in 0..BIND_ATTEMPTS - 1 {
            match TlsFront::try_start(relay, cert) {
                Ok(front) => return front,
                Err(Failed::PortTaken) => continue,
                Err(Failed::Other(why)) => panic!("{why}"),
            }
        }
        match TlsFront::try_start(relay, cert) {
            Ok(front) => front,
            Err(Failed::PortTaken) => {
                panic!("kamailio found its ports taken {BIND_ATTEMPTS} times")
            }
            Err(Failed::Other(why)) => panic!("{why}"),
        }
    }

    fn try_start(relay: Relay, own: &ServerCert) -> Result<TlsFront, Failed> {
        let dir = TempDir::new("kamailio");
        let udp_port = net::free_port();
        let tls_port = net::free_port();
        let (cert, key) = (dir.join("kamailio.crt"), dir.join("kamailio.key"));
        std::fs::write(&cert, &own.cert_pem).expect("write the test certificate");
        std::fs::write(&key, &own.key_pem).expect("write the test key");
        let tls_cfg = dir.join("tls.cfg");
        std::fs::write(
            &tls_cfg,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\nprivate_key = {}\ncertificate = {}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                key.display(),
                cert.display()
            ),
        )
        .expect("write tls.cfg");
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, config(udp_port, tls_port, relay, &tls_cfg))
            .expect("write kamailio.cfg");
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("create kamailio's runtime dir");

        let log = dir.join("kamailio.log");
        let out = File::create(&log).expect("create the kamailio log");
        let err = out.try_clone().expect("clone the kamailio log handle");
        let child = Command::new("kamailio")
            .args(["-f", &path(&cfg), "-DD", "-E", "-m", "32", "-M", "4"])
            .args(["-Y", &path(&run), "-P", &path(&run.join("kamailio.pid"))])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run kamailio ({e}): install it with `apt-get install kamailio \
                     kamailio-tls-modules` (tests/run.sh does)"
                )
            });
        let mut front = TlsFront { child, log, udp_port, tls_port, _dir: dir };
        let deadline = Instant::now() + READY_WITHIN;
        while !(net::wait_bound(LOCALHOST, udp_port, false, Duration::from_millis(200))
            && net::wait_bound(LOCALHOST, tls_port, true, Duration::from_millis(200)))
        {
            if let Ok(Some(status)) = front.child.try_wait() {
                if front.log_text().contains("Address already in use") {
                    return Err(Failed::PortTaken);
                }
                return Err(Failed::Other(format!(
                    "kamailio exited ({status}) before it was ready:\n{}",
                    front.log_text()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Failed::Other(format!(
                    "kamailio did not bind 127.0.0.1:{udp_port} (UDP) and 127.0.0.1:{tls_port} \
                     (TLS) within {READY_WITHIN:?}"
                )));
            }
        }
        Ok(front)
    }

    /// Where sipp sends its calls (UDP).
    pub fn udp(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.udp_port))
    }

    /// Where Kamailio takes TLS connections.
    pub fn tls(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.tls_port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- kamailio log ({}) -----\n{}\n----- end of kamailio log -----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_str().expect("temp paths are UTF-8").to_string()
}

/// The relay: new requests to their side (the gateway over TLS, or the agent over UDP),
/// in-dialog requests to their Request-URI, CANCEL and ACK matched to their transactions. Logs
/// every message it sends (`onsend_route`).
fn config(udp_port: u16, tls_port: u16, relay: Relay, tls_cfg: &std::path::Path) -> String {
    let next_hop = match relay {
        Relay::ToGatewayOverTls(gateway) => format!("sip:{gateway};transport=tls"),
        Relay::ToAgentOverUdp(agent) => format!("sip:{agent};transport=udp"),
        Relay::CarrierBehindProxyAuth { carrier, .. } => format!("sip:{carrier};transport=udp"),
    };
    let (auth_module, auth_check) = match relay {
        Relay::CarrierBehindProxyAuth { username, password, .. } => (
            "loadmodule \"auth.so\"\nmodparam(\"auth\", \"nonce_expire\", 60)\n".to_string(),
            format!(
                "if (is_method(\"INVITE\")) {{\n\
                 \t\tif (!pv_proxy_authenticate(\"carrier.example\", \"{password}\", \"0\")) {{ \
                 xlog(\"L_NOTICE\", \"challenging $ci\\n\"); proxy_challenge(\"carrier.example\", \"1\"); exit; }}\n\
                 \t\tif ($au != \"{username}\") {{ sl_send_reply(\"403\", \"Forbidden\"); exit; }}\n\
                 \t\txlog(\"L_NOTICE\", \"verified the answer of $au\\n\");\n\
                 \t\tconsume_credentials();\n\t}}"
            ),
        ),
        _ => (String::new(), String::new()),
    };
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
enable_sctp=no
listen=udp:127.0.0.1:{udp_port}
listen=tls:127.0.0.1:{tls_port}
enable_tls=yes

loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "xlog.so"
{auth_module}modparam("tls", "config", "{tls_cfg}")

request_route {{
	if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
	if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
	if (has_totag()) {{ t_relay(); exit; }}
	{auth_check}
	$du = "{next_hop}";
	t_relay();
}}

onsend_route {{
	xlog("L_NOTICE", "sent to $snd(ip):$snd(port) over $snd(sproto):\n$snd(buf)\n");
}}
"#,
        tls_cfg = tls_cfg.display()
    )
}
