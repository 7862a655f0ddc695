//! Session records to a webhook (issue 14, item 3) on the wire: the built `trunkline run` with
//! `--records-webhook` takes calls from sipp while the receiver (a small HTTP server in the
//! test) is down, then refuses with 500, then takes them; every record arrives, signed, each
//! id at least once and the set complete. Records spooled by a gateway that was stopped (SIGTERM)
//! or killed (SIGKILL) before delivering them are delivered by the next one on the same spool.
//!
//! Over HTTPS (`https://127.0.0.1:P`, the receiver's certificate from a CA made for the test and
//! given with `--records-webhook-ca-file`): a certificate for another name delivers nothing and
//! the records wait in the spool; once the receiver shows the right one, they arrive. And a
//! gateway with `--records-spool-adopt` delivers what a gone gateway left in a spool beside its
//! own, never what a live one holds.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_rustls::rustls;

use support::ca::TestCa;
use support::net::TempDir;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};
use trunkline::observe::spool::Spool;

const NUMBER: &str = "+14155550100";
const KEY: &str = "webhook-test-key";

/// What the receiver got: record id → (times, body), and whether every signature was right.
#[derive(Default)]
struct Received {
    records: BTreeMap<String, (usize, String)>,
    bad_signatures: usize,
    requests: usize,
    /// TCP connections accepted (with TLS: before the handshake).
    connections: usize,
}

/// The certificate an HTTPS receiver shows, changeable while it runs; `None`: plain HTTP.
type ReceiverTls = Arc<Mutex<Option<Arc<rustls::ServerConfig>>>>;

/// An HTTP/1.1 receiver on `port`: answers 500 to the first `refuse` requests, then 200.
fn receiver(port: u16, refuse: usize) -> Arc<Mutex<Received>> {
    receiver_with(port, refuse, Arc::new(Mutex::new(None)))
}

/// [`receiver`], over TLS with the certificate `tls` holds when a connection comes in.
fn receiver_with(port: u16, refuse: usize, tls: ReceiverTls) -> Arc<Mutex<Received>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
    let received = Arc::new(Mutex::new(Received::default()));
    let shared = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            shared.lock().expect("lock").connections += 1;
            let config = tls.lock().expect("lock").clone();
            match config {
                None => serve_one(stream, &shared, refuse),
                Some(config) => {
                    let tls = rustls::ServerConnection::new(config).expect("a TLS session");
                    // A client that refuses the certificate ends the handshake: reads fail.
                    serve_one(rustls::StreamOwned::new(tls, stream), &shared, refuse);
                }
            }
        }
    });
    received
}

/// Reads one request from `stream` and answers it.
fn serve_one(stream: impl Read + Write, shared: &Mutex<Received>, refuse: usize) {
    let mut reader = BufReader::new(stream);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let status = {
        let mut r = shared.lock().expect("lock");
        r.requests += 1;
        if r.requests <= refuse {
            "500 Internal Server Error"
        } else {
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).expect("key");
            mac.update(&body);
            let hex: String =
                mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            if headers.get("x-trunkline-signature") != Some(&format!("sha256={hex}")) {
                r.bad_signatures += 1;
            }
            let id = headers.get("idempotency-key").cloned().unwrap_or_default();
            let entry = r.records.entry(id).or_default();
            entry.0 += 1;
            entry.1 = String::from_utf8_lossy(&body).into_owned();
            "200 OK"
        }
    };
    let out = reader.get_mut();
    let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = out.flush();
}

/// Waits (bounded) until the receiver holds `count` distinct records.
fn wait_for(received: &Arc<Mutex<Received>>, count: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if received.lock().expect("lock").records.len() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

struct Setup {
    specs: Specs,
    dir: TempDir,
    agent_port: u16,
    hook_port: u16,
}

impl Setup {
    fn new() -> Setup {
        let agent_port = free_port();
        let specs = Specs::new().with(
            Trunk::new("local-in")
                .number(NUMBER, "support")
                .allow_address("127.0.0.1/32")
                .destination_udp(agent_port),
        );
        let dir = TempDir::new("webhook");
        std::fs::write(dir.join("key"), format!("{KEY}\n")).expect("key file");
        Setup { specs, dir, agent_port, hook_port: free_port() }
    }

    fn gateway(&self) -> Gateway {
        let url = format!("http://127.0.0.1:{}/records", self.hook_port);
        self.gateway_with(&url, &self.dir.join("spool"), &[])
    }

    /// A gateway posting to `url`, spooling in `spool`, with `extra` flags.
    fn gateway_with(&self, url: &str, spool: &Path, extra: &[&str]) -> Gateway {
        let key = self.dir.join("key");
        let mut options = GatewayOptions::default()
            .arg("--records-webhook")
            .arg(url)
            .arg("--records-webhook-key-file")
            .arg(key.to_str().expect("path"))
            .arg("--records-spool")
            .arg(spool.to_str().expect("path"));
        for arg in extra {
            options = options.arg(arg);
        }
        Gateway::start(self.specs.path(), options)
    }

    fn calls(&self, gateway: &Gateway, count: usize) {
        let n = count.to_string();
        let agent = uas("agent_answer.xml", self.agent_port, &["-m", &n, "-timeout", "20"]);
        uac(
            "carrier_call.xml",
            gateway.udp(),
            &["-s", NUMBER, "-m", &n, "-d", "100", "-timeout", "20"],
        )
        .assert_success();
        agent.wait().assert_success();
    }
}

#[test]
fn every_record_reaches_a_webhook_that_was_down_then_failing_signed_and_once_or_more() {
    let setup = Setup::new();
    let gateway = setup.gateway();
    // Down: nothing listens on the webhook's port while the calls are made.
    setup.calls(&gateway, 3);
    std::thread::sleep(Duration::from_millis(500));
    let received = receiver(setup.hook_port, 1);
    assert!(
        wait_for(&received, 3, Duration::from_secs(30)),
        "records missing: {:?}",
        received.lock().expect("lock").records.keys()
    );
    let r = received.lock().expect("lock");
    assert_eq!(r.bad_signatures, 0);
    assert!(r.requests > r.records.len(), "the receiver's 500 was not retried: {}", r.requests);
    let log = gateway.log_text();
    assert!(log.contains("Connection refused"), "the webhook was never found down:\n{log}");
    for (id, (_, body)) in &r.records {
        let record: serde_json::Value = serde_json::from_str(body).expect("a JSON record");
        assert_eq!(record["recordId"].as_str(), Some(id.as_str()));
        assert_eq!(record["trunk"], "voice/local-in");
        assert_eq!(record["outcome"], "answered");
    }
    assert!(!gateway.log_text().contains(KEY), "the webhook key is in the log");
    for (result, at_least) in [("spooled", 3.0), ("delivered", 3.0), ("failed", 1.0)] {
        let sample =
            format!(r#"trunkline_session_records_total{{result="{result}",sink="webhook"}}"#);
        assert!(
            gateway.wait_metric(&sample, at_least, Duration::from_secs(3)),
            "{sample}: {:?}",
            gateway.metric(&sample)
        );
    }
}

fn kill(gateway: &Gateway) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -KILL {}", gateway.pid())])
        .stdin(Stdio::null())
        .status();
}

#[test]
fn records_spooled_before_a_sigterm_or_a_sigkill_are_delivered_after_the_restart() {
    for sigkill in [false, true] {
        let setup = Setup::new();
        let mut first = setup.gateway();
        setup.calls(&first, 2);
        // The records are in the spool (the webhook is down); give the batch window its time.
        std::thread::sleep(Duration::from_millis(600));
        if sigkill {
            kill(&first);
        } else {
            first.sigterm();
        }
        assert!(
            first.wait_exit(Duration::from_secs(10)).is_some(),
            "the first gateway did not exit"
        );
        drop(first);
        let received = receiver(setup.hook_port, 0);
        let _second = setup.gateway();
        assert!(
            wait_for(&received, 2, Duration::from_secs(20)),
            "sigkill={sigkill}: records lost across the restart: {:?}",
            received.lock().expect("lock").records.keys()
        );
    }
}

#[test]
fn records_reach_an_https_webhook_only_once_its_certificate_names_the_urls_host() {
    let setup = Setup::new();
    let ca = TestCa::new("trunkline webhook test CA");
    let ca_file = ca.write(setup.dir.path(), "ca.pem");
    // The receiver's certificate is signed by the trusted CA, but for another name.
    let tls: ReceiverTls =
        Arc::new(Mutex::new(Some(ca.issue(&["hooks.other.example"]).server_config())));
    let received = receiver_with(setup.hook_port, 0, tls.clone());
    let url = format!("https://127.0.0.1:{}/records", setup.hook_port);
    let ca_arg = ca_file.to_str().expect("path");
    let gateway =
        setup.gateway_with(&url, &setup.dir.join("spool"), &["--records-webhook-ca-file", ca_arg]);
    setup.calls(&gateway, 2);
    let failed = r#"trunkline_session_records_total{result="failed",sink="webhook"}"#;
    assert!(
        gateway.wait_metric(failed, 2.0, Duration::from_secs(15)),
        "the webhook was not tried twice: {:?}\n{}",
        gateway.metric(failed),
        gateway.log_text()
    );
    {
        let r = received.lock().expect("lock");
        assert!(r.connections >= 2, "the gateway never connected: {}", r.connections);
        assert_eq!((r.requests, r.records.len()), (0, 0), "a record went to the wrong name");
    }
    let log = gateway.log_text();
    assert!(log.contains("name mismatch"), "the failure does not say why:\n{log}");

    // The receiver shows a certificate for its address now: the waiting records arrive.
    *tls.lock().expect("lock") = Some(ca.issue(&["127.0.0.1"]).server_config());
    assert!(
        wait_for(&received, 2, Duration::from_secs(40)),
        "records missing after the certificate was fixed: {:?}\n{}",
        received.lock().expect("lock").records.keys(),
        gateway.log_text()
    );
    let r = received.lock().expect("lock");
    assert_eq!(r.bad_signatures, 0);
    for (id, (_, body)) in &r.records {
        let record: serde_json::Value = serde_json::from_str(body).expect("a JSON record");
        assert_eq!(record["recordId"].as_str(), Some(id.as_str()));
    }
    assert!(!gateway.log_text().contains(KEY), "the webhook key is in the log");
}

#[test]
fn a_gateway_with_spool_adopt_delivers_what_a_gone_gateway_left_beside_its_spool() {
    let setup = Setup::new();
    let spools = setup.dir.join("spools");
    // A gone gateway's spool: records synced, then the spool closed (the pod deleted).
    let gone = spools.join("trunkline-gateway-a");
    let mut left = BTreeMap::new();
    {
        let mut spool = Spool::open(&gone, 1 << 20).expect("the gone gateway's spool");
        for i in 0..3 {
            let id = format!("gone-{i}");
            let body = serde_json::json!({"recordId": id, "kind": "final", "n": i}).to_string();
            spool.push(&id, body.as_bytes()).expect("push");
            left.insert(id, body);
        }
        spool.sync().expect("sync");
    }
    // A live gateway's spool: its lock is held for the whole test, so it is never adopted.
    let live_dir = spools.join("trunkline-gateway-b");
    let mut live = Spool::open(&live_dir, 1 << 20).expect("the live gateway's spool");
    live.push("live-0", br#"{"recordId":"live-0"}"#).expect("push");
    live.sync().expect("sync");

    let received = receiver(setup.hook_port, 0);
    let url = format!("http://127.0.0.1:{}/records", setup.hook_port);
    let gateway =
        setup.gateway_with(&url, &spools.join("trunkline-gateway-c"), &["--records-spool-adopt"]);
    assert!(
        wait_for(&received, 3, Duration::from_secs(20)),
        "the gone gateway's records were not delivered: {:?}\n{}",
        received.lock().expect("lock").records.keys(),
        gateway.log_text()
    );
    // Give a wrong extra delivery (the live spool's record) its chance to show.
    std::thread::sleep(Duration::from_millis(500));
    let r = received.lock().expect("lock");
    let got: BTreeMap<String, String> =
        r.records.iter().map(|(id, (_, body))| (id.clone(), body.clone())).collect();
    assert_eq!(got, left, "not exactly the gone gateway's records, byte for byte");
    assert_eq!(r.bad_signatures, 0);
    assert!(!gone.exists(), "the adopted spool's directory is still there");
    assert_eq!(live.len(), 1);
    assert!(live_dir.join("lock").exists());
    let log = gateway.log_text();
    assert!(
        log.contains("adopted session records") && log.contains("trunkline-gateway-a"),
        "the adoption is not logged with its directory:\n{log}"
    );
}

#[test]
fn a_webhook_ca_file_that_cannot_be_used_stops_the_start_naming_the_flag() {
    let setup = Setup::new();
    let missing = setup.dir.join("no-such-ca.pem");
    let missing = missing.to_str().expect("path");
    let https = format!("https://127.0.0.1:{}/records", setup.hook_port);
    let http = format!("http://127.0.0.1:{}/records", setup.hook_port);
    for (url, expect) in
        [(&https, "cannot read the CA bundle"), (&http, "is for an https:// webhook")]
    {
        let dir = TempDir::new("webhook-ca");
        let options = GatewayOptions::default()
            .arg("--records-spool")
            .arg(dir.join("spool").to_str().expect("path"))
            .arg("--records-webhook")
            .arg(url)
            .arg("--records-webhook-ca-file")
            .arg(missing);
        let log = Gateway::start_refused(setup.specs.path(), options);
        assert!(
            log.contains("--records-webhook-ca-file")
                && log.contains(missing)
                && log.contains(expect),
            "{url}: the error does not name the flag, the file and the reason:\n{log}"
        );
    }
}
